/* test_onnx_ghost.c: per-sample squared weight-gradient norms of Conv (core/onnx_ghost.h) by the
 * im2col form and the ghost-norm form, on single-Conv graphs of several shapes (stride, padding,
 * groups incl. depthwise, dilation, 1-D, stride 1 on 64 positions or more;
 * tests/torch/onnx_ghost_convs.py): both equal, to 1e-12 relative, the squared norm of the weight gradient a batch-1 reverse pass gives per sample; the
 * flop rule picks ghost on a small-spatial layer and im2col on a large-spatial one.  The float32
 * input adjoint (tpv_onnx_conv_input_adjoint_f32, an executor's narrow_products) on the same
 * graphs: no bit changes while the weight is float64; with the weight marked float32, within
 * the bound onnx_ghost.h derives of the float64 adjoint, overwriting equal to accumulating. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/onnx_exec.h"
#include "core/onnx_ghost.h"
#include "tests/unit/torch_fixture.h"

#define TOL 1e-12
#define N 3

static char tmpdir[256];

static struct tpv_onnx_model *load(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s.onnx", tmpdir, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    struct tpv_onnx_model *m = NULL;
    struct tpv_err err;
    if (tpv_onnx_model_load(&m, buf, (size_t)n, NULL, 0, &err))
        fail_msg("%s: %s", name, err.message);
    free(buf);
    return m;
}

static void open_at(const struct tpv_onnx_model *m, int rank, const int64_t *shape, int64_t b,
                    struct tpv_onnx_plan **plan, struct tpv_onnx_exec **ex)
{
    struct tpv_onnx_tensor in = {.dtype = TPV_ONNX_F64, .rank = rank};
    memcpy(in.shape, shape, (size_t)rank * sizeof *shape);
    in.shape[0] = b;
    struct tpv_err err;
    if (tpv_onnx_plan_new(plan, m, &in, &err) || tpv_onnx_exec_new(ex, *plan, &err))
        fail_msg("plan: %s", err.message);
}

static double lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*s >> 11) / 9007199254740992.0 - 0.5;
}

static void check_case(const char *name, int64_t C, int64_t H, int64_t W)
{
    struct tpv_onnx_model *m = load(name);
    int64_t shape[4] = { N, C, H, W };
    int rank = W ? 4 : 3;
    struct tpv_onnx_plan *plan, *p1;
    struct tpv_onnx_exec *ex, *e1;
    open_at(m, rank, shape, N, &plan, &ex);
    open_at(m, rank, shape, 1, &p1, &e1);
    const struct tpv_onnx_node *nd = &m->nodes[0];
    uint64_t per = (uint64_t)(C * H * (W ? W : 1)), s = 42;
    double *x = malloc(N * per * sizeof *x);
    assert_non_null(x);
    for (uint64_t i = 0; i < N * per; i++)
        x[i] = lcg(&s);
    struct tpv_err err;
    const double *xp = x;
    assert_int_equal(tpv_onnx_exec_forward(ex, &xp, &err), TPV_OK);
    const struct tpv_onnx_tensor *y = tpv_onnx_exec_value(ex, nd->out[0]);
    double *gy = malloc(y->numel * sizeof *gy);
    assert_non_null(gy);
    for (uint64_t i = 0; i < y->numel; i++)
        gy[i] = lcg(&s);
    const struct tpv_onnx_tensor *xv = tpv_onnx_exec_value(ex, nd->in[0]);
    const struct tpv_onnx_tensor *wv = tpv_onnx_exec_value(ex, nd->in[1]);
    double ic[N], gh[N];
    assert_int_equal(tpv_onnx_conv_weight_sqnorms(nd, xv, wv, gy, TPV_ONNX_SQNORM_IM2COL, ic,
                                                  &err), TPV_OK);
    assert_int_equal(tpv_onnx_conv_weight_sqnorms(nd, xv, wv, gy, TPV_ONNX_SQNORM_GHOST, gh,
                                                  &err), TPV_OK);
    uint64_t per_y = y->numel / N;
    for (int t = 0; t < N; t++) {
        /* the reference: one sample's reverse pass, its weight gradient squared */
        const double *xt = x + (uint64_t)t * per;
        assert_int_equal(tpv_onnx_exec_forward(e1, &xt, &err), TPV_OK);
        assert_int_equal(tpv_onnx_exec_vjp(e1, m->outputs[0], gy + t * per_y, &err), TPV_OK);
        const double *g = tpv_onnx_exec_grad(e1, nd->in[1]);
        double want = 0;
        for (uint64_t i = 0; i < wv->numel; i++)
            want += g[i] * g[i];
        assert_true(want > 0);
        if (!(fabs(ic[t] - want) <= TOL * want) || !(fabs(gh[t] - want) <= TOL * want))
            fail_msg("%s sample %d: im2col %.17g ghost %.17g reverse pass %.17g", name, t, ic[t],
                     gh[t], want);
    }
    free(x);
    free(gy);
    tpv_onnx_exec_free(ex);
    tpv_onnx_exec_free(e1);
    tpv_onnx_plan_free(plan);
    tpv_onnx_plan_free(p1);
    tpv_onnx_model_free(m);
}

/* check(name, C, H, W) on every Conv case of the fixture's manifest (all 11 of them). */
static void each_case(void (*check)(const char *name, int64_t C, int64_t H, int64_t W))
{
    char path[512], name[64];
    snprintf(path, sizeof path, "%s/manifest.txt", tmpdir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    long long C, H, W;
    int cases = 0;
    while (fscanf(f, "%63s %lld %lld %lld", name, &C, &H, &W) == 4) {
        check(name, (int64_t)C, (int64_t)H, (int64_t)W);
        cases++;
    }
    fclose(f);
    assert_int_equal(cases, 11);
}

static void test_forms_agree(void **state)
{
    (void)state;
    each_case(check_case);
}

/* 16 -> 24 channels 3x3 at 2x2: P = 4 < 2 kk Mg / (kk + Mg) = 41; 4 -> 6 at 7x6: P = 42 > 8.3. */
static void test_choice_by_flops(void **state)
{
    (void)state;
    static const struct { const char *name; int64_t C, H, W; enum tpv_onnx_sqnorm_form f; } c[] = {
        { "small_spatial", 16, 2, 2, TPV_ONNX_SQNORM_GHOST },
        { "plain3x3", 4, 7, 6, TPV_ONNX_SQNORM_IM2COL },
    };
    for (size_t i = 0; i < 2; i++) {
        struct tpv_onnx_model *m = load(c[i].name);
        int64_t shape[4] = { N, c[i].C, c[i].H, c[i].W };
        struct tpv_onnx_plan *plan;
        struct tpv_onnx_exec *ex;
        open_at(m, 4, shape, N, &plan, &ex);
        const struct tpv_onnx_node *nd = &m->nodes[0];
        const struct tpv_onnx_tensor *x = &plan->vals[nd->in[0]], *w = &plan->vals[nd->in[1]];
        assert_int_equal(tpv_onnx_conv_sqnorm_choose(nd, x, w), c[i].f);
        assert_true(tpv_onnx_conv_sqnorm_flops(nd, x, w, TPV_ONNX_SQNORM_GHOST) > 0);
        tpv_onnx_exec_free(ex);
        tpv_onnx_plan_free(plan);
        tpv_onnx_model_free(m);
    }
    assert_string_equal(tpv_onnx_sqnorm_form_name(TPV_ONNX_SQNORM_GHOST), "ghost");
}

/* Reverse pass of ex for gy, the adjoints of x and w copied into gx and gw. */
static void vjp_into(struct tpv_onnx_exec *ex, const struct tpv_onnx_model *m,
                     const struct tpv_onnx_node *nd, const double *gy, double *gx, double *gw)
{
    struct tpv_err err;
    if (tpv_onnx_exec_vjp(ex, m->outputs[0], gy, &err))
        fail_msg("vjp: %s", err.message);
    const struct tpv_onnx_tensor *xv = tpv_onnx_exec_value(ex, nd->in[0]);
    const struct tpv_onnx_tensor *wv = tpv_onnx_exec_value(ex, nd->in[1]);
    memcpy(gx, tpv_onnx_exec_grad(ex, nd->in[0]), xv->numel * sizeof *gx);
    memcpy(gw, tpv_onnx_exec_grad(ex, nd->in[1]), wv->numel * sizeof *gw);
}

static void check_narrow(const char *name, int64_t C, int64_t H, int64_t W)
{
    struct tpv_onnx_model *m = load(name);
    int64_t shape[4] = { N, C, H, W };
    struct tpv_onnx_plan *plan;
    struct tpv_onnx_exec *ex;
    open_at(m, W ? 4 : 3, shape, N, &plan, &ex);
    const struct tpv_onnx_node *nd = &m->nodes[0];
    long wi = nd->in[1];
    const struct tpv_onnx_tensor *xv = tpv_onnx_exec_value(ex, nd->in[0]);
    const struct tpv_onnx_tensor *wv = tpv_onnx_exec_value(ex, wi);
    const struct tpv_onnx_tensor *yv = tpv_onnx_exec_value(ex, nd->out[0]);
    uint64_t nx = xv->numel, nw = wv->numel, s = 7;
    double *x = malloc(nx * sizeof *x), *gy = malloc(yv->numel * sizeof *gy);
    double *g64 = malloc(nx * sizeof *g64), *g = malloc(nx * sizeof *g);
    double *A = malloc(nx * sizeof *A), *w64 = malloc(nw * sizeof *w64);
    double *gw64 = malloc(nw * sizeof *gw64), *gw = malloc(nw * sizeof *gw);
    assert_true(x && gy && g64 && g && A && w64 && gw64 && gw);
    for (uint64_t i = 0; i < nx; i++)
        x[i] = lcg(&s);
    for (uint64_t i = 0; i < yv->numel; i++)
        gy[i] = lcg(&s);
    struct tpv_err err;
    const double *xp = x;
    assert_int_equal(tpv_onnx_exec_forward(ex, &xp, &err), TPV_OK);
    vjp_into(ex, m, nd, gy, g64, gw64);
    /* a float64 weight: narrow_products changes nothing */
    ex->narrow_products = true;
    vjp_into(ex, m, nd, gy, g, gw);
    if (memcmp(g, g64, nx * sizeof *g) || memcmp(gw, gw64, nw * sizeof *gw))
        fail_msg("%s: narrow_products changed a float64 weight's adjoints", name);
    /* A = |W|^T |gy| (the bound's scale): the same pass on |w| and |gy| */
    double *wd = (double *)wv->data;
    memcpy(w64, wd, nw * sizeof *w64);
    double *agy = malloc(yv->numel * sizeof *agy);
    assert_non_null(agy);
    for (uint64_t i = 0; i < nw; i++)
        wd[i] = fabs(wd[i]);
    for (uint64_t i = 0; i < yv->numel; i++)
        agy[i] = fabs(gy[i]);
    ex->narrow_products = false;
    vjp_into(ex, m, nd, agy, A, gw);
    memcpy(wd, w64, nw * sizeof *wd);
    /* the weight marked float32: the input adjoint's products run in float32 (the weight's
     * adjoint keeps float64 ones) */
    int saved = m->values[wi].elem_type;
    m->values[wi].elem_type = 1; /* TensorProto.FLOAT */
    ex->narrow_products = true;
    vjp_into(ex, m, nd, gy, g, gw);
    if (memcmp(gw, gw64, nw * sizeof *gw))
        fail_msg("%s: the weight's adjoint changed under narrow_products", name);
    /* Mg kh kw bounds the float32 sums of either form, and the span cuts them */
    int64_t inner = wv->shape[0] / (C / wv->shape[1]);
    for (int d = 2; d < wv->rank; d++)
        inner *= wv->shape[d];
    if (inner > TPV_ONNX_F32_SPAN)
        inner = TPV_ONNX_F32_SPAN;
    double u = ldexp(1.0, -24), worst = 0;
    bool differs = false;
    for (uint64_t i = 0; i < nx; i++) {
        double bound = ((double)inner + 3.0) * u * A[i] + 1e-13 * A[i];
        double e = fabs(g[i] - g64[i]);
        differs = differs || g[i] != g64[i];
        if (!(e <= bound))
            fail_msg("%s: float32 input adjoint entry %llu: %.17g vs %.17g, bound %.3g", name,
                     (unsigned long long)i, g[i], g64[i], bound);
        if (A[i] > 0 && e / A[i] > worst)
            worst = e / A[i];
    }
    if (!differs)
        fail_msg("%s: the float32 input adjoint did not run", name);
    if (getenv("TPV_TEST_VERBOSE"))
        print_message("%s: float32 input adjoint, worst error %.3g of |W|^T|gy| (bound %.3g)\n",
                      name, worst, ((double)inner + 3.0) * u);
    /* the kernel itself: overwriting garbage equals adding into zeros */
    float *wf = NULL;
    struct tpv_onnx_scratch ws = { 0 };
    assert_int_equal(tpv_onnx_conv_adjoint_weight_f32(nd, xv, wv, &wf, &err), TPV_OK);
    memset(A, 0, nx * sizeof *A);
    for (uint64_t i = 0; i < nx; i++)
        g[i] = NAN;
    assert_int_equal(tpv_onnx_conv_input_adjoint_f32(nd, xv, wv, wf, gy, A, false, &ws, &err),
                     TPV_OK);
    assert_int_equal(tpv_onnx_conv_input_adjoint_f32(nd, xv, wv, wf, gy, g, true, &ws, &err),
                     TPV_OK);
    for (uint64_t i = 0; i < nx; i++)
        if (!(g[i] == A[i]))
            fail_msg("%s: overwriting entry %llu: %.17g, accumulating %.17g", name,
                     (unsigned long long)i, g[i], A[i]);
    m->values[wi].elem_type = saved;
    free(wf);
    tpv_onnx_scratch_release(&ws);
    free(x);
    free(gy);
    free(agy);
    free(g64);
    free(g);
    free(A);
    free(w64);
    free(gw64);
    free(gw);
    tpv_onnx_exec_free(ex);
    tpv_onnx_plan_free(plan);
    tpv_onnx_model_free(m);
}

static void test_narrow_input_adjoint(void **state)
{
    (void)state;
    each_case(check_narrow);
}

static int setup(void **state)
{
    (void)state;
    return torch_fixture_make(tmpdir, sizeof tmpdir, "onnx-ghost", "onnx_ghost_convs.py");
}

static int teardown(void **state)
{
    (void)state;
    return torch_fixture_remove(tmpdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forms_agree),
        cmocka_unit_test(test_choice_by_flops),
        cmocka_unit_test(test_narrow_input_adjoint),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
