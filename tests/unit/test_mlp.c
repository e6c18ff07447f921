/* test_mlp.c: tpv.sequential/v1 spec errors (code, field, message), binding (layout, dtypes),
 * input checks, and the batched forward pass against a naive per-sample loop over the spec. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/unit/mlp_testnet.h"

/* ---- spec errors ---- */

struct bad_case {
    const char *spec;
    int code;
    const char *field;
    const char *msg;
};

/* Tensors available to the error cases: a (4x3), ab (4), b (2x4), b5 (2x5), v (3), m3 (2x2x2),
 * nan (4x3 with a NaN), u8 (4x3 of U8). */
static struct tnet err_net;

static int err_setup(void **state)
{
    (void)state;
    tnet_init(&err_net, "[3]", 1);
    tnet_tensor(&err_net, "a", 2, 4, 3, 1.0);
    tnet_tensor(&err_net, "ab", 1, 4, 0, 1.0);
    tnet_tensor(&err_net, "b", 2, 2, 4, 1.0);
    tnet_tensor(&err_net, "b5", 2, 2, 5, 1.0);
    tnet_tensor(&err_net, "v", 1, 3, 0, 1.0);
    tnet_tensor(&err_net, "nan", 2, 4, 3, 1.0);
    err_net.vals[5][7] = NAN;
    tnet_tensor(&err_net, "u8", 2, 4, 3, 1.0);
    err_net.t[6].dtype = TPV_DTYPE_U8;
    err_net.t[6].nbytes = 12;
    return 0;
}

static int err_teardown(void **state)
{
    (void)state;
    tnet_free(&err_net);
    return 0;
}

#define L0 "{\"type\":\"linear\",\"weight\":\"a\",\"bias\":\"ab\"}"
#define HEAD "{\"format\":\"tpv.sequential/v1\",\"input_shape\":[3],\"layers\":["

static void test_spec_errors(void **state)
{
    (void)state;
    static const struct bad_case cases[] = {
        { "[]", TPV_EINVAL, "spec", "JSON object" },
        { "{\"format\":\"tpv.sequential/v2\",\"input_shape\":[3],\"layers\":[" L0 "]}", TPV_EINVAL,
          "format", "tpv.sequential/v1" },
        { HEAD L0 "],\"extra\":1}", TPV_EINVAL, "extra", "unknown key" },
        { "{\"format\":\"tpv.sequential/v1\",\"input_shape\":[],\"layers\":[" L0 "]}", TPV_EINVAL,
          "input_shape", "positive integers" },
        { "{\"format\":\"tpv.sequential/v1\",\"input_shape\":[3,0],\"layers\":[" L0 "]}",
          TPV_EINVAL, "input_shape[1]", "positive integer" },
        { HEAD "]}", TPV_EINVAL, "layers", "array of 1 to" },
        { HEAD L0 ",{\"type\":\"relu\"},{\"type\":\"conv2d\"}]}", TPV_EINVAL, "layers[2].type",
          "unknown layer type 'conv2d'" },
        { HEAD "{\"weight\":\"a\"}]}", TPV_EINVAL, "layers[0].type", "is required" },
        { HEAD L0 ",{\"type\":\"relu\",\"inplace\":true}]}", TPV_EINVAL, "layers[1].inplace",
          "unknown key" },
        { HEAD "{\"type\":\"linear\",\"weight\":\"missing\"}]}", TPV_EINVAL, "layers[0].weight",
          "tensor 'missing'" },
        { HEAD "{\"type\":\"linear\"}]}", TPV_EINVAL, "layers[0].weight", "required" },
        { HEAD "{\"type\":\"linear\",\"weight\":\"a\",\"bias\":\"nobias\"}]}", TPV_EINVAL,
          "layers[0].bias", "tensor 'nobias'" },
        { HEAD "{\"type\":\"linear\",\"weight\":\"v\"}]}", TPV_EINVAL, "layers[0].weight",
          "rank 2" },
        { HEAD "{\"type\":\"linear\",\"weight\":\"a\",\"bias\":\"a\"}]}", TPV_EINVAL,
          "layers[0].bias", "must have shape [4]" },
        { HEAD "{\"type\":\"linear\",\"weight\":\"a\",\"bias\":\"v\"}]}", TPV_EINVAL,
          "layers[0].bias", "not [3]" },
        { HEAD L0 ",{\"type\":\"tanh\"},{\"type\":\"linear\",\"weight\":\"b5\"}]}", TPV_EINVAL,
          "layers[2].weight", "in_features 5 but the previous width is 4" },
        { HEAD "{\"type\":\"linear\",\"weight\":\"b\"}]}", TPV_EINVAL, "layers[0].weight",
          "in_features 4 but the previous width is 3" },
        { "{\"format\":\"tpv.sequential/v1\",\"input_shape\":[1,3],\"layers\":[" L0 "]}",
          TPV_EINVAL, "layers[0].weight", "add a flatten layer" },
        { HEAD L0 ",{\"type\":\"leaky_relu\",\"negative_slope\":\"x\"}]}", TPV_EINVAL,
          "layers[1].negative_slope", "finite number" },
        { HEAD L0 ",{\"type\":\"softplus\",\"beta\":0}]}", TPV_EINVAL, "layers[1].beta",
          "> 0" },
        { HEAD "{\"type\":\"relu\"}]}", TPV_EINVAL, "layers", "no linear layer" },
        { HEAD "{\"type\":\"linear\",\"weight\":\"nan\"}]}", TPV_EFORMAT, "layers[0].weight",
          "non-finite value (nan) at index 7" },
        { HEAD "{\"type\":\"linear\",\"weight\":\"u8\"}]}", TPV_EINVAL, "layers[0].weight",
          "dtype U8" },
        { HEAD L0 ",{\"type\":\"linear\",\"weight\":\"a\"}]}", TPV_EINVAL, "layers[1].weight",
          "in_features 3 but the previous width is 4" },
        { HEAD "{\"type\":\"linear\",\"weight\":\"a\",\"bias\":\"ab\"},{\"type\":\"linear\","
               "\"weight\":\"b\",\"bias\":\"ab\"}]}", TPV_EINVAL, "layers[1].bias",
          "must have shape [2]" },
        { HEAD "{\"type\":\"linear\",\"weight\":\"a\",\"bias\":\"ab\"},{\"type\":\"linear\","
               "\"weight\":\"b\"},{\"type\":\"linear\",\"weight\":\"b\"}]}", TPV_EINVAL,
          "layers[2].weight", "in_features 4 but the previous width is 2" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_error_t jerr;
        json_t *spec = json_loads(cases[i].spec, 0, &jerr);
        assert_non_null(spec);
        struct tpv_mlp *m = (struct tpv_mlp *)0x1;
        struct tpv_err err;
        tpv_err_clear(&err);
        int rc = tpv_mlp_bind(&m, spec, tnet_find, &err_net, &err);
        if (rc != cases[i].code || strcmp(err.field, cases[i].field) != 0 ||
            !strstr(err.message, cases[i].msg))
            fail_msg("case %zu: rc %d field '%s' message '%s'", i, rc, err.field, err.message);
        assert_null(m);
        json_decref(spec);
    }
}

static void test_shared_weights_refused(void **state)
{
    (void)state;
    struct tnet n;
    tnet_init(&n, "[3]", 2);
    tnet_tensor(&n, "sq", 2, 3, 3, 1.0);
    tnet_layer(&n, "{\"type\":\"linear\",\"weight\":\"sq\"}");
    tnet_layer(&n, "{\"type\":\"linear\",\"weight\":\"sq\"}");
    struct tpv_mlp *m;
    struct tpv_err err;
    assert_int_equal(tpv_mlp_bind(&m, n.spec, tnet_find, &n, &err), TPV_EINVAL);
    assert_string_equal(err.field, "layers[1].weight");
    assert_non_null(strstr(err.message, "used twice"));
    tnet_free(&n);
}

static void test_check_inputs(void **state)
{
    (void)state;
    struct tnet n;
    tnet_init(&n, "[2, 3]", 3);
    tnet_layer(&n, "{\"type\":\"flatten\"}");
    tnet_linear(&n, 4, 6, 1);
    struct tpv_mlp *m = tnet_bind(&n);
    assert_non_null(m);
    double x[5 * 6] = { 0 };
    uint64_t good[2] = { 2, 3 }, bad[2] = { 3, 2 }, flat[1] = { 6 };
    struct tpv_err err;
    struct tpv_tensor t = tnet_input_tensor(x, 5, 2, good);
    assert_int_equal(tpv_mlp_check_inputs(m, &t, &err), TPV_OK);
    t = tnet_input_tensor(x, 5, 2, bad);
    assert_int_equal(tpv_mlp_check_inputs(m, &t, &err), TPV_EINVAL);
    assert_string_equal(err.field, "inputs");
    assert_non_null(strstr(err.message, "[5, 3, 2]"));
    assert_non_null(strstr(err.message, "(n, 2, 3)"));
    t = tnet_input_tensor(x, 5, 1, flat);
    assert_int_equal(tpv_mlp_check_inputs(m, &t, &err), TPV_EINVAL);
    t = tnet_input_tensor(x, 5, 2, good);
    t.dtype = TPV_DTYPE_BOOL;
    assert_int_equal(tpv_mlp_check_inputs(m, &t, &err), TPV_EINVAL);
    assert_non_null(strstr(err.message, "BOOL"));
    t = tnet_input_tensor(x, 5, 2, good);
    x[2 * 6 + 4] = INFINITY;
    assert_int_equal(tpv_mlp_check_inputs(m, &t, &err), TPV_EFORMAT);
    assert_non_null(strstr(err.message, "sample 2 element 4"));
    tpv_mlp_free(m);
    tnet_free(&n);
}

/* ---- layout and dtypes ---- */

static void test_layout(void **state)
{
    (void)state;
    struct tnet n;
    tnet_init(&n, "[3]", 4);
    tnet_linear(&n, 4, 3, 1);
    tnet_layer(&n, "{\"type\":\"relu\"}");
    tnet_linear(&n, 2, 4, 0);
    tnet_linear(&n, 5, 2, 1);
    struct tpv_mlp *m = tnet_bind(&n);
    assert_non_null(m);
    const struct tpv_layout *lo = tpv_mlp_layout(m);
    assert_int_equal(lo->nblocks, 5);
    assert_int_equal(lo->p, 12 + 4 + 8 + 10 + 5);
    static const char *names[] = { "l0.weight", "l0.bias", "l2.weight", "l3.weight", "l3.bias" };
    static const uint64_t offs[] = { 0, 12, 16, 24, 34 };
    for (size_t b = 0; b < 5; b++) {
        assert_string_equal(lo->blocks[b].name, names[b]);
        assert_int_equal(lo->blocks[b].offset, offs[b]);
    }
    assert_int_equal(lo->blocks[2].rank, 2);
    assert_int_equal(lo->blocks[2].shape[0], 2);
    assert_int_equal(lo->blocks[2].shape[1], 4);
    assert_int_equal(lo->blocks[4].rank, 1);
    assert_int_equal(m->K, 5);
    assert_int_equal(m->d, 3);
    const double *pv = tpv_mlp_param_values(m);
    for (uint64_t j = 0; j < lo->p; j++)
        assert_true(pv[j] == *tnet_param(&n, j));
    tpv_mlp_free(m);
    tnet_free(&n);
}

static void test_weight_dtypes(void **state)
{
    (void)state;
    /* 1.5, -2, 0.099975586 (F16 0x2E66), 65504, 2^-24 (subnormal) */
    const uint16_t f16[5] = { 0x3E00, 0xC000, 0x2E66, 0x7BFF, 0x0001 };
    const double f16v[5] = { 1.5, -2.0, 0.0999755859375, 65504.0, 0x1p-24 };
    const uint16_t bf16[5] = { 0x3FC0, 0xC000, 0x3DCD, 0x4780, 0x0000 };
    const double bf16v[5] = { 1.5, -2.0, 0.10009765625, 65536.0, 0.0 };
    const float f32[5] = { 1.5f, -2.0f, 0.1f, 3e38f, -1e-40f };
    const void *data[3] = { f16, bf16, f32 };
    const enum tpv_dtype dts[3] = { TPV_DTYPE_F16, TPV_DTYPE_BF16, TPV_DTYPE_F32 };
    for (int c = 0; c < 3; c++) {
        struct tpv_tensor w;
        memset(&w, 0, sizeof w);
        w.name = "w";
        w.dtype = dts[c];
        w.rank = 2;
        w.shape[0] = 1;
        w.shape[1] = 5;
        w.numel = 5;
        w.data = data[c];
        struct tnet n;
        tnet_init(&n, "[5]", 5);
        n.t[0] = w;
        snprintf(n.names[0], sizeof n.names[0], "w");
        n.nt = 1;
        tnet_layer(&n, "{\"type\":\"linear\",\"weight\":\"w\"}");
        struct tpv_mlp *m = tnet_bind(&n);
        assert_non_null(m);
        const double *pv = tpv_mlp_param_values(m);
        for (int j = 0; j < 5; j++) {
            double want = c == 0 ? f16v[j] : c == 1 ? bf16v[j] : (double)f32[j];
            if (pv[j] != want)
                fail_msg("dtype %d entry %d: %.17g != %.17g", c, j, pv[j], want);
        }
        tpv_mlp_free(m);
        n.nt = 0;
        tnet_free(&n);
    }
}

/* ---- forward vs a naive loop ---- */

static double naive_act(const char *type, double slope, double x)
{
    if (!strcmp(type, "relu"))
        return x > 0 ? x : 0;
    if (!strcmp(type, "leaky_relu"))
        return x > 0 ? x : slope * x;
    if (!strcmp(type, "tanh"))
        return tanh(x);
    if (!strcmp(type, "sigmoid"))
        return 1 / (1 + exp(-x));
    if (!strcmp(type, "gelu"))
        return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    if (!strcmp(type, "softplus"))
        return x > 20 ? x : log(1 + exp(x));
    return x; /* identity, flatten */
}

/* Evaluates one sample by walking the spec JSON directly. */
static void naive_forward(struct tnet *n, const double *x, uint64_t d, double *out, uint64_t *K)
{
    double cur[64], nxt[64];
    uint64_t w = d;
    memcpy(cur, x, d * sizeof *cur);
    const json_t *layers = json_object_get(n->spec, "layers");
    for (size_t i = 0; i < json_array_size(layers); i++) {
        const json_t *ly = json_array_get(layers, i);
        const char *type = json_string_value(json_object_get(ly, "type"));
        if (!strcmp(type, "linear")) {
            const struct tpv_tensor *W = tnet_find(n, json_string_value(json_object_get(ly, "weight")));
            const json_t *bn = json_object_get(ly, "bias");
            const struct tpv_tensor *B = bn ? tnet_find(n, json_string_value(bn)) : NULL;
            const double *wv = W->data;
            for (uint64_t o = 0; o < W->shape[0]; o++) {
                double s = B ? ((const double *)B->data)[o] : 0;
                for (uint64_t j = 0; j < w; j++)
                    s += wv[o * w + j] * cur[j];
                nxt[o] = s;
            }
            w = W->shape[0];
            memcpy(cur, nxt, w * sizeof *cur);
        } else {
            const json_t *sl = json_object_get(ly, "negative_slope");
            double slope = sl ? json_number_value(sl) : 0.01;
            for (uint64_t j = 0; j < w; j++)
                cur[j] = naive_act(type, slope, cur[j]);
        }
    }
    memcpy(out, cur, w * sizeof *out);
    *K = w;
}

static void test_forward_naive(void **state)
{
    (void)state;
    struct tnet n;
    tnet_init(&n, "[2, 3]", 6);
    tnet_layer(&n, "{\"type\":\"tanh\"}");
    tnet_layer(&n, "{\"type\":\"flatten\"}");
    tnet_linear(&n, 7, 6, 1);
    tnet_layer(&n, "{\"type\":\"relu\"}");
    tnet_linear(&n, 6, 7, 1);
    tnet_layer(&n, "{\"type\":\"leaky_relu\",\"negative_slope\":0.2}");
    tnet_linear(&n, 6, 6, 0);
    tnet_layer(&n, "{\"type\":\"sigmoid\"}");
    tnet_layer(&n, "{\"type\":\"identity\"}");
    tnet_linear(&n, 5, 6, 1);
    tnet_layer(&n, "{\"type\":\"gelu\"}");
    tnet_linear(&n, 5, 5, 1);
    tnet_layer(&n, "{\"type\":\"softplus\"}");
    tnet_layer(&n, "{\"type\":\"tanh\"}");
    tnet_linear(&n, 3, 5, 1);
    tnet_layer(&n, "{\"type\":\"leaky_relu\"}");
    struct tpv_mlp *m = tnet_bind(&n);
    assert_non_null(m);
    assert_int_equal(m->K, 3);
    /* 600 samples: several forward batches with a short last one. */
    size_t ns = 600;
    double *x = tnet_inputs(ns, 6, 77);
    for (size_t i = 0; i < 6; i++)
        x[i] = 30.0 * (i % 2 ? 1 : -1); /* saturating values on sample 0 */
    double *out = malloc(ns * 3 * sizeof *out), *ref = malloc(ns * 3 * sizeof *ref);
    assert_int_equal(tpv_mlp_forward(m, x, ns, out), TPV_OK);
    for (size_t s = 0; s < ns; s++) {
        uint64_t K;
        naive_forward(&n, x + s * 6, 6, ref + s * 3, &K);
        assert_int_equal(K, 3);
    }
    double e = tnet_relerr(out, ref, ns * 3);
    if (e > 1e-13)
        fail_msg("forward relerr %g", e);
    free(x);
    free(out);
    free(ref);
    tpv_mlp_free(m);
    tnet_free(&n);
}

/* The activation derivatives against central differences, including the softplus threshold and
 * the extremes of sigmoid. */
static void test_activation_derivatives(void **state)
{
    (void)state;
    const struct tpv_act acts[] = {
        { TPV_ACT_RELU, 0, 0 },    { TPV_ACT_LEAKY_RELU, 0.1, 0 }, { TPV_ACT_TANH, 0, 0 },
        { TPV_ACT_SIGMOID, 0, 0 }, { TPV_ACT_GELU, 0, 0 },         { TPV_ACT_SOFTPLUS, 1, 20 },
        { TPV_ACT_SOFTPLUS, 2, 5 },
    };
    const double xs[] = { -40, -3.1, -0.7, -0.01, 0.013, 0.4, 1.9, 2.4, 19.5, 25, 700 };
    for (size_t a = 0; a < sizeof acts / sizeof acts[0]; a++) {
        for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
            double x = xs[i], y, dy, yp, ym, h = 1e-6 * fmax(1, fabs(x));
            double xp = x + h, xm = x - h;
            tpv_act_chain(&acts[a], 1, &x, &y, &dy, 1);
            tpv_act_chain(&acts[a], 1, &xp, &yp, NULL, 1);
            tpv_act_chain(&acts[a], 1, &xm, &ym, NULL, 1);
            double fd = (yp - ym) / (xp - xm);
            assert_true(isfinite(y));
            if (fabs(fd - dy) > 1e-7 * fmax(1, fabs(dy)))
                fail_msg("act %zu at %g: derivative %.12g vs fd %.12g", a, x, dy, fd);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_spec_errors, err_setup, err_teardown),
        cmocka_unit_test(test_shared_weights_refused),
        cmocka_unit_test(test_check_inputs),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_weight_dtypes),
        cmocka_unit_test(test_forward_naive),
        cmocka_unit_test(test_activation_derivatives),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
