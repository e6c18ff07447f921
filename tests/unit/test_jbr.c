/* test_jbr.c: JBR scores against a naive computation that uses only the forward pass: the
 * per-sample products are parameter sums, out_j(x) = sum over row j of (W_l, b_l) of
 * w * dCE/dw and in_j(x) = sum over column j of W_{l+1} of w * dCE/dw, with dCE/dw from central
 * differences of the cross-entropy against the fixed pseudo-label.  Also: batching with a short
 * last batch, confidence filtering, ordering with ties, and the errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/jbr.h"
#include "tests/unit/mlp_testnet.h"

/* CE of each sample against labels y (n x K logits in f). */
static void ce(const double *f, const int *y, size_t n, size_t K, double *out)
{
    for (size_t x = 0; x < n; x++) {
        double mx = f[x * K];
        for (size_t k = 1; k < K; k++)
            mx = fmax(mx, f[x * K + k]);
        double s = 0;
        for (size_t k = 0; k < K; k++)
            s += exp(f[x * K + k] - mx);
        out[x] = -(f[x * K + y[x]] - mx - log(s));
    }
}

struct naive {
    size_t H;
    double *score;
    uint64_t kept, batches;
};

/* Naive JBR for a net whose linear layers are tensors (2i, 2i+1) = (weight, bias) of tnet n. */
static void naive_jbr(struct tnet *n, const double *x, size_t ns, double conf, size_t B,
                      struct naive *out)
{
    struct tpv_mlp *m = tnet_bind(n);
    const size_t K = m->K, L = m->L, p = m->layout.p;
    double *f = malloc(ns * K * sizeof *f), *cp = malloc(ns * sizeof *cp),
           *cm = malloc(ns * sizeof *cm), *grad = malloc(ns * p * sizeof *grad);
    int *y = malloc(ns * sizeof *y), *keep = malloc(ns * sizeof *keep);
    tpv_mlp_forward(m, x, ns, f);
    for (size_t s = 0; s < ns; s++) {
        size_t a = 0;
        double sum = 0;
        for (size_t k = 1; k < K; k++)
            if (f[s * K + k] > f[s * K + a])
                a = k;
        for (size_t k = 0; k < K; k++)
            sum += exp(f[s * K + k] - f[s * K + a]);
        y[s] = (int)a;
        keep[s] = 1.0 / sum > conf;
    }
    /* grad[s*p + j] = dCE_s/dw_j */
    for (size_t j = 0; j < p; j++) {
        double *w = tnet_param(n, j), w0 = *w, h = 1e-5 * fmax(1, fabs(w0));
        *w = w0 + h;
        struct tpv_mlp *mp = tnet_bind(n);
        tpv_mlp_forward(mp, x, ns, f);
        ce(f, y, ns, K, cp);
        tpv_mlp_free(mp);
        *w = w0 - h;
        mp = tnet_bind(n);
        tpv_mlp_forward(mp, x, ns, f);
        ce(f, y, ns, K, cm);
        tpv_mlp_free(mp);
        *w = w0;
        for (size_t s = 0; s < ns; s++)
            grad[s * p + j] = (cp[s] - cm[s]) / ((w0 + h) - (w0 - h));
    }
    const double *pv = tpv_mlp_param_values(m);
    out->H = 0;
    for (size_t l = 0; l + 1 < L; l++)
        out->H += m->layers[l].out;
    out->score = calloc(out->H, sizeof *out->score);
    double *ao = calloc(out->H, sizeof *ao), *ai = calloc(out->H, sizeof *ai);
    size_t cnt = 0;
    out->kept = out->batches = 0;
    for (size_t s = 0; s <= ns; s++) {
        if (s < ns && keep[s]) {
            const double *gs = grad + s * p;
            size_t u = 0;
            for (size_t l = 0; l + 1 < L; l++) {
                const struct tpv_mlp_layer *ml = &m->layers[l], *nx = &m->layers[l + 1];
                for (size_t j = 0; j < ml->out; j++, u++) {
                    double o = 0, i = 0;
                    for (size_t c = 0; c < ml->in; c++)
                        o += pv[ml->w_off + j * ml->in + c] * gs[ml->w_off + j * ml->in + c];
                    if (ml->b)
                        o += pv[ml->b_off + j] * gs[ml->b_off + j];
                    for (size_t r = 0; r < nx->out; r++)
                        i += pv[nx->w_off + r * nx->in + j] * gs[nx->w_off + r * nx->in + j];
                    ao[u] += o;
                    ai[u] += i;
                }
            }
            cnt++;
            out->kept++;
        }
        if (cnt > 0 && (cnt == B || s == ns)) {
            for (size_t u = 0; u < out->H; u++)
                out->score[u] += (ao[u] / cnt) * (ao[u] / cnt) + (ai[u] / cnt) * (ai[u] / cnt);
            memset(ao, 0, out->H * sizeof *ao);
            memset(ai, 0, out->H * sizeof *ai);
            cnt = 0;
            out->batches++;
        }
    }
    free(ao), free(ai), free(f), free(cp), free(cm), free(grad), free(y), free(keep);
    tpv_mlp_free(m);
}

static void build(struct tnet *n, uint64_t seed, double logit_scale)
{
    tnet_init(n, "[3]", seed);
    tnet_linear(n, 5, 3, 1);
    tnet_layer(n, "{\"type\":\"tanh\"}");
    tnet_linear(n, 4, 5, 0); /* no bias, no activation: a = z */
    tnet_linear(n, 4, 4, 1);
    tnet_layer(n, "{\"type\":\"gelu\"}");
    tnet_linear(n, 3, 4, 1);
    for (uint64_t j = 0; j < n->t[n->nt - 2].numel; j++)
        n->vals[n->nt - 2][j] *= logit_scale;
}

static json_t *run(struct tnet *n, const double *x, size_t ns, double conf, uint64_t B, int *rc,
                   struct tpv_err *err)
{
    struct tpv_mlp *m = tnet_bind(n);
    struct tpv_tensor t = tnet_input_tensor(x, ns, 1, m->input_shape);
    json_t *res = NULL;
    *rc = tpv_jbr_compute(m, &t, conf, B, &res, NULL, err);
    tpv_mlp_free(m);
    return res;
}

static void compare(json_t *res, const struct naive *nv, struct tnet *n)
{
    const json_t *units = json_object_get(res, "units"), *order = json_object_get(res, "order");
    assert_int_equal(json_array_size(units), nv->H);
    assert_int_equal(json_array_size(order), nv->H);
    assert_int_equal(json_integer_value(json_object_get(res, "kept_samples")), nv->kept);
    assert_int_equal(json_integer_value(json_object_get(res, "batches")), nv->batches);
    double *got = malloc(nv->H * sizeof *got);
    for (size_t u = 0; u < nv->H; u++)
        got[u] = json_real_value(json_object_get(json_array_get(units, u), "score"));
    double e = tnet_relerr(got, nv->score, nv->H);
    if (!(e < 1e-6))
        fail_msg("JBR scores relative error %g", e);
    /* layer names and indices */
    const char *l0 = json_string_value(json_object_get(json_array_get(units, 0), "layer"));
    assert_string_equal(l0, n->names[0]);
    const json_t *u5 = json_array_get(units, 5);
    assert_string_equal(json_string_value(json_object_get(u5, "layer")), "l2.weight");
    assert_int_equal(json_integer_value(json_object_get(u5, "index")), 0);
    /* order: ascending, ties by position */
    for (size_t i = 1; i < nv->H; i++) {
        size_t a = (size_t)json_integer_value(json_array_get(order, i - 1));
        size_t b = (size_t)json_integer_value(json_array_get(order, i));
        assert_true(got[a] < got[b] || (got[a] == got[b] && a < b));
    }
    free(got);
}

static void test_vs_naive(void **state)
{
    (void)state;
    static const struct { double conf; uint64_t B; size_t ns; } runs[] = {
        { 0.0, 128, 37 },  /* everything kept, one short batch */
        { 0.0, 5, 37 },    /* 7 full batches + a short one */
        { 0.45, 4, 60 },   /* some dropped: batches are runs of the kept ones */
        { 0.45, 1, 60 },
    };
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        struct tnet n;
        build(&n, runs[r].conf > 0 ? 42 : 40 + r, 3.0);
        double *x = tnet_inputs(runs[r].ns, 3, runs[r].conf > 0 ? 92 : 90 + r);
        struct naive nv;
        naive_jbr(&n, x, runs[r].ns, runs[r].conf, runs[r].B, &nv);
        if (runs[r].conf > 0)
            if (!(nv.kept > 0 && nv.kept < runs[r].ns)) /* the filter matters */
                fail_msg("run %zu: %llu of %zu kept", r, (unsigned long long)nv.kept, runs[r].ns);
        int rc;
        struct tpv_err err;
        json_t *res = run(&n, x, runs[r].ns, runs[r].conf, runs[r].B, &rc, &err);
        if (rc)
            fail_msg("run %zu: %s", r, err.message);
        compare(res, &nv, &n);
        json_decref(res);
        free(nv.score);
        free(x);
        tnet_free(&n);
    }
}

/* 300 samples: more than one internal chunk; a batch straddles the chunk boundary. */
static void test_across_chunks(void **state)
{
    (void)state;
    struct tnet n;
    build(&n, 5, 3.0);
    size_t ns = 300;
    double *x = tnet_inputs(ns, 3, 6);
    struct naive nv;
    naive_jbr(&n, x, ns, 0.3, 7, &nv);
    int rc;
    struct tpv_err err;
    json_t *res = run(&n, x, ns, 0.3, 7, &rc, &err);
    assert_int_equal(rc, TPV_OK);
    compare(res, &nv, &n);
    json_decref(res);
    free(nv.score);
    free(x);
    tnet_free(&n);
}

/* Dead ReLU units score exactly 0 and come first, in position order. */
static void test_dead_units_order(void **state)
{
    (void)state;
    struct tnet n;
    tnet_init(&n, "[3]", 8);
    tnet_linear(&n, 6, 3, 1);
    tnet_layer(&n, "{\"type\":\"relu\"}");
    tnet_linear(&n, 3, 6, 1);
    n.vals[1][1] = -100.0; /* units 1 and 4 of layer 0 never fire */
    n.vals[1][4] = -100.0;
    double *x = tnet_inputs(50, 3, 9);
    int rc;
    struct tpv_err err;
    json_t *res = run(&n, x, 50, 0.0, 16, &rc, &err);
    assert_int_equal(rc, TPV_OK);
    const json_t *order = json_object_get(res, "order"), *units = json_object_get(res, "units");
    assert_int_equal(json_integer_value(json_array_get(order, 0)), 1);
    assert_int_equal(json_integer_value(json_array_get(order, 1)), 4);
    assert_true(json_real_value(json_object_get(json_array_get(units, 1), "score")) == 0.0);
    assert_true(json_real_value(json_object_get(json_array_get(units, 0), "score")) > 0.0);
    json_decref(res);
    free(x);
    tnet_free(&n);
}

static void test_errors(void **state)
{
    (void)state;
    struct tnet n;
    build(&n, 3, 0.01); /* near-uniform softmax: max prob ~ 1/3 */
    double *x = tnet_inputs(20, 3, 4);
    int rc;
    struct tpv_err err;
    json_t *res = run(&n, x, 20, 0.9, 8, &rc, &err);
    assert_int_equal(rc, TPV_EPRECONDITION);
    assert_null(res);
    assert_non_null(strstr(err.message, "confidence 0.9"));
    res = run(&n, x, 20, 1.0, 8, &rc, &err);
    assert_int_equal(rc, TPV_EINVAL);
    assert_string_equal(err.field, "confidence");
    res = run(&n, x, 20, NAN, 8, &rc, &err);
    assert_int_equal(rc, TPV_EINVAL);
    res = run(&n, x, 20, 0.5, 0, &rc, &err);
    assert_int_equal(rc, TPV_EINVAL);
    assert_string_equal(err.field, "batch_size");
    tnet_free(&n);

    tnet_init(&n, "[3]", 3); /* K = 1 */
    tnet_linear(&n, 4, 3, 1);
    tnet_layer(&n, "{\"type\":\"relu\"}");
    tnet_linear(&n, 1, 4, 1);
    res = run(&n, x, 20, 0.5, 8, &rc, &err);
    assert_int_equal(rc, TPV_EPRECONDITION);
    assert_non_null(strstr(err.message, "2 outputs"));
    tnet_free(&n);

    tnet_init(&n, "[3]", 3); /* no hidden layer */
    tnet_linear(&n, 4, 3, 1);
    res = run(&n, x, 20, 0.0, 8, &rc, &err);
    assert_int_equal(rc, TPV_EPRECONDITION);
    assert_non_null(strstr(err.message, "single linear layer"));
    tnet_free(&n);
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vs_naive),
        cmocka_unit_test(test_across_chunks),
        cmocka_unit_test(test_dead_units_order),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
