/* test_onnx_torch.c: whole networks exported by torch.onnx.export (tests/torch/onnx_networks.py,
 * run with Debian's /usr/bin/python3 into a temporary directory) against PyTorch's float64
 * outputs: a CNN with batch norm (fresh: the exporter's Identity aliases; trained-looking), a
 * residual MLP with LayerNorm and GELU at opsets 15 and 17, a Conv1d net, a model exported with a
 * fixed batch of 1, torchvision ResNet-18 and MobileNetV2 at 3x32x32, and small torchvision
 * transformers (VisionTransformer, SwinTransformer, MaxVit at 3x16x16: Expand, Where, Mod,
 * Range, ScatterND, Einsum and Dropout's mask among their operators).  Each model is loaded with
 * the scored-model rules and the default parameter rule (no metadata), which must find exactly
 * named_parameters(); the forward pass must match to 1e-8 relative.  The float32 weights are
 * exact in float64, but the exporter writes float32 constants and attributes (GELU's sqrt(2),
 * LayerNorm's epsilon) where PyTorch's float64 model uses doubles: 1.2e-9 measured on resmlp,
 * below 1e-13 on the networks without them.
 *
 * On the small networks the Jacobian source over the graph (core/onnx_source.h) is compared with
 * float64 autograd references from per-sample, per-output gradients: the squared diagonal per
 * parameter, the isotropic and the per-channel 8-bit quantization traces, the Gram matrix, J w
 * (prune) and J^T u, to 1e-7 relative; the projected diagonal summed over one-hot projections
 * must equal the diagonal.  The shared path takes float32 products for float32 Conv weights: it
 * is checked against the reference path with float64 products (1e-10) and with its float32 ones
 * (F32_TOL), and cnn_f64 (the CNN exported with float64 weights) must keep float64 products. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cblas.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/onnx_exec.h"
#include "core/onnx_source.h"
#include "core/tensor.h"
#include "tests/support/onnx_check.h"
#include "tests/unit/torch_fixture.h"

#define TOL 1e-8

static char tmpdir[256];

static double *npy_f64(const char *path, struct tpv_tensor *shape_out,
                       struct tpv_tensor_file **file)
{
    struct tpv_err err;
    if (tpv_tensor_file_open(file, path, &err))
        fail_msg("%s: %s", path, err.message);
    const struct tpv_tensor *t = tpv_tensor_file_at(*file, 0);
    *shape_out = *t;
    double *v = malloc(t->numel * sizeof *v);
    assert_non_null(v);
    tpv_tensor_read_f64(t, 0, t->numel, v);
    return v;
}

/* The default parameter rule must find exactly the names in params.txt. */
static void check_params(const char *name, const struct tpv_onnx_model *m)
{
    char path[512];
    size_t len;
    snprintf(path, sizeof path, "%s/%s.params.txt", tmpdir, name);
    char *text = torch_fixture_slurp(path, &len);
    size_t want = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        long v = tpv_onnx_model_find(m, line);
        if (v < 0 || !m->values[v].param)
            fail_msg("%s: parameter %s not found by the default rule", name, line);
        want++;
    }
    if (m->nparams != want) {
        for (size_t i = 0; i < m->nparams; i++)
            print_message("  found %s\n", m->values[m->params[i]].name);
        fail_msg("%s: %zu parameters found, named_parameters() has %zu", name, m->nparams, want);
    }
    free(text);
}

/* Forward of `count` samples starting at `first` as one batch; out gets count * K values. */
static void run_batch(const struct tpv_onnx_model *m, const struct tpv_tensor *xs,
                      const double *x, uint64_t first, uint64_t count, double *out, uint64_t K)
{
    struct tpv_err err;
    struct tpv_onnx_tensor in = {.dtype = TPV_ONNX_F64, .rank = xs->rank};
    for (int i = 0; i < xs->rank; i++)
        in.shape[i] = (int64_t)xs->shape[i];
    in.shape[0] = (int64_t)count;
    struct tpv_onnx_plan *plan;
    struct tpv_onnx_exec *ex;
    if (tpv_onnx_plan_new(&plan, m, &in, &err))
        fail_msg("plan: %s", err.message);
    if (tpv_onnx_exec_new(&ex, plan, &err))
        fail_msg("exec: %s", err.message);
    uint64_t per = xs->numel / xs->shape[0];
    const double *xp = x + first * per;
    if (tpv_onnx_exec_forward(ex, &xp, &err))
        fail_msg("forward: %s", err.message);
    const struct tpv_onnx_tensor *y = tpv_onnx_exec_value(ex, m->outputs[0]);
    assert_int_equal(y->shape[0], (int64_t)count);
    assert_int_equal(y->numel, count * K);
    memcpy(out, y->data, count * K * sizeof *out);
    tpv_onnx_exec_free(ex);
    tpv_onnx_plan_free(plan);
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static double urand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* Derivatives through the whole graph w.r.t. the input and every parameter: the JVP along a
 * random direction against central differences, and <VJP(u), t> = <u, JVP(t)>, where the VJP's
 * parameter adjoints are summed over the batch. */
static void check_derivatives(const char *name, struct tpv_onnx_model *m,
                              const struct tpv_tensor *xs, const double *x)
{
    struct tpv_err err;
    struct tpv_onnx_tensor in = {.dtype = TPV_ONNX_F64, .rank = xs->rank};
    for (int i = 0; i < xs->rank; i++)
        in.shape[i] = (int64_t)xs->shape[i];
    struct tpv_onnx_plan *plan = NULL;
    struct tpv_onnx_exec *ex = NULL;
    if (tpv_onnx_plan_new(&plan, m, &in, &err) || tpv_onnx_exec_new(&ex, plan, &err))
        fail_msg("%s: %s", name, err.message);
    /* small: ResNet-18 has ~10^5 ReLU and max-pool kinks, some within h * |t| of a crossing */
    const double h = 1e-8;
    struct tpv_test_derivs d;
    if (tpv_test_onnx_derivatives(m, ex, x, xs->numel, h, false, 11, &d, &err))
        fail_msg("%s: %s", name, err.message);
    assert_int_equal(d.params_without_adjoint, 0);
    if (!(fabs(d.lhs - d.rhs) <= 1e-10 * d.scale))
        fail_msg("%s: <VJP(u), t> = %.15g, <u, JVP(t)> = %.15g", name, d.lhs, d.rhs);
    if (getenv("TPV_TEST_VERBOSE"))
        print_message("%s: JVP vs central differences %.3g relative, dot test %.3g\n", name,
                      d.fd_emax / d.fd_jmax, fabs(d.lhs - d.rhs) / d.scale);
    if (!(d.fd_emax <= 1e-6 * d.fd_jmax))
        fail_msg("%s: JVP differs from central differences: %.3g (max |JVP| %.3g)", name,
                 d.fd_emax, d.fd_jmax);
    tpv_onnx_exec_free(ex);
    tpv_onnx_plan_free(plan);
}

static const double *ref_get(struct tpv_tensor_file *ref, const char *key, uint64_t numel,
                             double *buf)
{
    const struct tpv_tensor *t = tpv_tensor_file_find(ref, key);
    if (!t || t->numel != numel)
        fail_msg("reference %s missing or of the wrong size", key);
    tpv_tensor_read_f64(t, 0, numel, buf);
    return buf;
}

/* 1e-7: the float32 constants of the exported graph (see TOL) give 5e-9 on resmlp; DESIGN.md asks
 * 1e-6 for float64 references */
#define SRC_TOL 1e-7

static void expect_close(const char *name, const char *what, const double *got,
                         const double *want, uint64_t n)
{
    double e = tpv_test_max_relerr(got, want, n);
    if (getenv("TPV_TEST_VERBOSE"))
        print_message("%s: source %s rel err %.3g\n", name, what, e);
    if (!(e <= SRC_TOL))
        fail_msg("%s: %s differs from autograd: %.3g relative", name, what, e);
}

/* Per-channel quantization trace from a squared diagonal (DESIGN.md section 3). */
static double quant_per_channel(const struct tpv_onnx_model *m, const struct tpv_jsrc *s,
                                const double *diag, int bits)
{
    double total = 0;
    for (size_t j = 0; j < s->layout.nblocks; j++) {
        const struct tpv_block *b = &s->layout.blocks[j];
        const double *w = m->values[m->params[j]].t.data;
        uint64_t rows = b->rank >= 2 ? b->shape[0] : 1, cols = b->count / rows;
        for (uint64_t r = 0; r < rows; r++) {
            double lo = w[r * cols], hi = lo, t = 0;
            for (uint64_t c = 0; c < cols; c++) {
                lo = fmin(lo, w[r * cols + c]);
                hi = fmax(hi, w[r * cols + c]);
                t += diag[b->offset + r * cols + c];
            }
            double delta = (hi - lo) / (double)((1 << bits) - 1);
            total += delta * delta / 12.0 * t;
        }
    }
    return total;
}

/* The batched per-sample path against the reference path (one reverse pass per (sample,
 * output)): the same sums in another order, so 1e-10 relative. */
#define PATH_TOL 1e-10

static void expect_same_path(const char *name, const char *what, const double *got,
                             const double *want, uint64_t n)
{
    double e = tpv_test_max_relerr(got, want, n);
    if (getenv("TPV_TEST_VERBOSE"))
        print_message("%s: batched %s vs reference path %.3g\n", name, what, e);
    if (!(e <= PATH_TOL))
        fail_msg("%s: batched %s differs from the reference path: %.3g relative", name, what, e);
}

/* The shared path (one sample at a time, its K outputs in one reverse pass, the samples split
 * over the threads) at `threads` threads, its weight-gradient products in float64 or (where the
 * graph stores a Conv weight in float32) float32: sqdiag and the projected diagonal and totals. */
static void shared_run(struct tpv_jsrc *s, int threads, bool float64, const double *r, double *d,
                       double *pd, double *tot)
{
    struct tpv_err err;
    int saved = openblas_get_num_threads();
    openblas_set_num_threads(threads);
    tpv_onnx_source_set_rows(s, true);
    tpv_onnx_source_set_float64(s, float64);
    memset(d, 0, s->p * sizeof *d);
    memset(pd, 0, s->p * sizeof *pd);
    assert_int_equal(s->ops->sqdiag(s, d, NULL, &err), TPV_OK);
    assert_int_equal(s->ops->sqdiag_projected(s, r, pd, tot, NULL, &err), TPV_OK);
    tpv_onnx_source_set_rows(s, false);
    tpv_onnx_source_set_float64(s, false);
    openblas_set_num_threads(saved);
}

/* Whether a Conv weight of the graph is a float32 parameter (its products may be float32). */
static bool float32_conv(const struct tpv_onnx_model *m)
{
    for (size_t i = 0; i < m->nnodes; i++) {
        const struct tpv_onnx_node *nd = &m->nodes[i];
        if (strcmp(nd->op_type, "Conv") == 0 && nd->in[1] >= 0 && m->values[nd->in[1]].param &&
            m->values[nd->in[1]].elem_type == 1 /* TensorProto.FLOAT */)
            return true;
    }
    return false;
}

/* The shared path's float32 products against the float64 reference path: measured 4.6e-10 to
 * 2.9e-9 relative on cnn_trained and conv1d (sqdiag, projected diagonal and totals; 2026-12-02)
 * and 5e-10 on the ResNet-20 benchmark's isotropic trace; the issue allows a float32 model 1e-4
 * against float64 autograd, this bound keeps a margin of 300 over what was measured. */
#define F32_TOL 1e-6

static void expect_f32_path(const char *name, const char *what, const double *got,
                            const double *want, const double *f64, uint64_t n, bool f32)
{
    double e = tpv_test_max_relerr(got, want, n);
    if (getenv("TPV_TEST_VERBOSE"))
        print_message("%s: %s with float32 products vs reference path %.3g\n", name, what, e);
    if (!(e <= F32_TOL))
        fail_msg("%s: %s with float32 products differs from the reference path: %.3g relative",
                 name, what, e);
    /* float32 weights: the float32 products ran (not the float64 ones); float64 weights: they
     * must not have, the same bits as float64 products */
    bool same = memcmp(got, f64, n * sizeof *got) == 0;
    if (f32 && same)
        fail_msg("%s: %s: float32 Conv weights but the float64 products ran", name, what);
    if (!f32 && !same)
        fail_msg("%s: %s: no float32 Conv weight but the products were not float64", name, what);
}

/* The shared path at 1 and 2 threads against the reference path's diagonal (want) and projected
 * diagonal and totals (pwant, twant), with float64 products (to PATH_TOL) and with the default
 * ones (float32 for float32 Conv weights, to F32_TOL); 2 threads again gives the same bits (the
 * split is deterministic) for both. */
static void check_shared(const char *name, const struct tpv_onnx_model *m, struct tpv_jsrc *s,
                         const double *r, const double *want, const double *pwant,
                         const double *twant)
{
    uint64_t p = s->p, n = s->n;
    double *d[5], *pd[5], *tot[5];
    for (int k = 0; k < 5; k++) {
        d[k] = malloc(p * sizeof *d[k]);
        pd[k] = malloc(p * sizeof *pd[k]);
        tot[k] = malloc(n * sizeof *tot[k]);
        assert_true(d[k] && pd[k] && tot[k]);
    }
    tpv_onnx_source_set_rows(s, true);
    if (!tpv_onnx_source_rows(s))
        fail_msg("%s: the shared path does not run", name);
    tpv_onnx_source_set_rows(s, false);
    /* 0, 1, 2: float64 products at 1, 2, 2 threads; 3, 4: the default at 1, 2 threads */
    for (int k = 0; k < 5; k++)
        shared_run(s, k == 0 || k == 3 ? 1 : 2, k < 3, r, d[k], pd[k], tot[k]);
    for (int k = 0; k < 2; k++) {
        char what[64];
        snprintf(what, sizeof what, "shared sqdiag, %d thread(s)", k + 1);
        expect_same_path(name, what, d[k], want, p);
        snprintf(what, sizeof what, "shared projected diagonal, %d thread(s)", k + 1);
        expect_same_path(name, what, pd[k], pwant, p);
        snprintf(what, sizeof what, "shared projected totals, %d thread(s)", k + 1);
        expect_same_path(name, what, tot[k], twant, n);
    }
    bool f32 = float32_conv(m);
    for (int k = 3; k < 5; k++) {
        char what[64];
        snprintf(what, sizeof what, "shared sqdiag, %d thread(s)", k - 2);
        expect_f32_path(name, what, d[k], want, d[k - 3], p, f32);
        snprintf(what, sizeof what, "shared projected diagonal, %d thread(s)", k - 2);
        expect_f32_path(name, what, pd[k], pwant, pd[k - 3], p, f32);
        snprintf(what, sizeof what, "shared projected totals, %d thread(s)", k - 2);
        expect_f32_path(name, what, tot[k], twant, tot[k - 3], n, f32);
    }
    if (memcmp(d[1], d[2], p * sizeof *d[1]) || memcmp(pd[1], pd[2], p * sizeof *pd[1]) ||
        memcmp(tot[1], tot[2], n * sizeof *tot[1]))
        fail_msg("%s: the shared path at 2 threads differs between two runs", name);
    /* float32 products: the sums still per thread in sample order, at 1 and 2 threads equal up
     * to the order of the threads' diagonals only */
    double e = tpv_test_max_relerr(d[4], d[3], p);
    if (!(e <= PATH_TOL))
        fail_msg("%s: float32 products at 2 threads differ from 1 thread by %.3g", name, e);
    for (int k = 0; k < 5; k++) {
        free(d[k]);
        free(pd[k]);
        free(tot[k]);
    }
}

static void check_paths(const char *name, const struct tpv_onnx_model *m, struct tpv_jsrc *s,
                        const double *diag,
                        const double *gram, uint64_t rows)
{
    struct tpv_err err;
    uint64_t p = s->p, n = s->n;
    double *d = calloc(p, sizeof *d), *g = malloc(rows * rows * sizeof *g);
    double *r = malloc(rows * sizeof *r), *pd[2], *tot[2];
    assert_true(d && g && r);
    for (int k = 0; k < 2; k++) {
        pd[k] = calloc(p, sizeof *pd[k]);
        tot[k] = malloc(n * sizeof *tot[k]);
        assert_true(pd[k] && tot[k]);
    }
    for (uint64_t i = 0; i < rows; i++)
        r[i] = urand();
    for (int k = 0; k < 2; k++) {
        tpv_onnx_source_set_reference(s, k == 1);
        assert_int_equal(s->ops->sqdiag_projected(s, r, pd[k], tot[k], NULL, &err), TPV_OK);
    }
    assert_int_equal(s->ops->sqdiag(s, d, NULL, &err), TPV_OK);
    assert_int_equal(s->ops->gram(s, s, g, NULL, &err), TPV_OK);
    tpv_onnx_source_set_reference(s, false);
    expect_same_path(name, "sqdiag", diag, d, p);
    expect_same_path(name, "gram", gram, g, rows * rows);
    /* one sample per batch and per panel: the mirrored blocks of a Gram with itself */
    tpv_onnx_source_set_panel_bytes(s, 1);
    memset(d, 0, p * sizeof *d);
    assert_int_equal(s->ops->sqdiag(s, d, NULL, &err), TPV_OK);
    assert_int_equal(s->ops->gram(s, s, g, NULL, &err), TPV_OK);
    tpv_onnx_source_set_panel_bytes(s, 32u << 20);
    expect_same_path(name, "sqdiag in batches of 1", diag, d, p);
    expect_same_path(name, "gram in panels of 1 sample", gram, g, rows * rows);
    expect_same_path(name, "projected diagonal", pd[0], pd[1], p);
    expect_same_path(name, "projected totals", tot[0], tot[1], n);
    check_shared(name, m, s, r, diag, pd[1], tot[1]);
    for (int k = 0; k < 2; k++) {
        free(pd[k]);
        free(tot[k]);
    }
    free(d);
    free(g);
    free(r);
}

static void check_source(const char *name, const struct tpv_onnx_model *m,
                         const struct tpv_tensor *xs, int batch1)
{
    char path[512];
    struct tpv_err err;
    struct tpv_tensor_file *ref;
    snprintf(path, sizeof path, "%s/%s.ref.safetensors", tmpdir, name);
    if (tpv_tensor_file_open(&ref, path, &err))
        fail_msg("%s: %s", path, err.message);
    struct tpv_jsrc *s;
    if (tpv_onnx_source_new(&s, m, xs, &err))
        fail_msg("%s: source: %s", name, err.message);
    uint64_t n = s->n, K = s->K, p = s->p, rows = n * K;
    double *diag = calloc(p, sizeof *diag), *want = malloc((rows * rows + p + 1) * sizeof *want);
    double *gram = malloc(rows * rows * sizeof *gram), *w = malloc(p * sizeof *w);
    double *jw = malloc(rows * sizeof *jw), *u = malloc(rows * sizeof *u);
    double *vjp = malloc(p * sizeof *vjp), *proj = calloc(p, sizeof *proj);
    double *r = calloc(rows, sizeof *r), *tot = malloc(n * sizeof *tot);
    assert_true(diag && want && gram && w && jw && u && vjp && proj && r && tot);
    assert_int_equal(s->ops->sqdiag(s, diag, NULL, &err), TPV_OK);
    for (size_t j = 0; j < s->layout.nblocks; j++) {
        const struct tpv_block *b = &s->layout.blocks[j];
        char key[200];
        snprintf(key, sizeof key, "diag/%s", b->name);
        ref_get(ref, key, b->count, want + b->offset);
        memcpy(w + b->offset, m->values[m->params[j]].t.data, b->count * sizeof *w);
    }
    expect_close(name, "sqdiag", diag, want, p);
    double iso = 0, iso_want;
    for (uint64_t j = 0; j < p; j++)
        iso += diag[j] / (double)n;
    ref_get(ref, "iso", 1, &iso_want);
    expect_close(name, "isotropic trace", &iso, &iso_want, 1);
    double q = quant_per_channel(m, s, diag, 8) / (double)n, q_want;
    ref_get(ref, "qpc8", 1, &q_want);
    expect_close(name, "per-channel quantization trace", &q, &q_want, 1);

    assert_int_equal(s->ops->gram(s, s, gram, NULL, &err), TPV_OK);
    expect_close(name, "gram", gram, ref_get(ref, "gram", rows * rows, want), rows * rows);
    assert_int_equal(s->ops->jvp(s, w, jw, NULL, &err), TPV_OK);
    expect_close(name, "J w", jw, ref_get(ref, "w_jvp", rows, want), rows);
    ref_get(ref, "u", rows, u);
    assert_int_equal(s->ops->vjp(s, u, vjp, NULL, &err), TPV_OK);
    for (size_t j = 0; j < s->layout.nblocks; j++) {
        const struct tpv_block *b = &s->layout.blocks[j];
        char key[200];
        snprintf(key, sizeof key, "vjp/%s", b->name);
        ref_get(ref, key, b->count, want + b->offset);
    }
    expect_close(name, "J^T u", vjp, want, p);
    for (uint64_t k = 0; k < K; k++) {
        memset(r, 0, rows * sizeof *r);
        for (uint64_t x = 0; x < n; x++)
            r[x * K + k] = 1.0;
        assert_int_equal(s->ops->sqdiag_projected(s, r, proj, tot, NULL, &err), TPV_OK);
    }
    expect_close(name, "sum of one-hot projected diagonals", proj, diag, p);
    /* every network but the fixed-batch one and the transformers qualifies for the batched
     * path; the transformers compute on parameters alone (a ViT's class token expanded to the
     * batch, Swin's and MaxViT's relative position biases gathered from their tables) and their
     * attention has the batch second, so they take the reference path (core/onnx_persample.h) */
    bool transformer = strcmp(name, "vit") == 0 || strcmp(name, "swin") == 0 ||
                       strcmp(name, "maxvit") == 0;
    assert_int_equal(tpv_onnx_source_batched(s), !batch1 && !transformer);
    if (!batch1 && !transformer)
        check_paths(name, m, s, diag, gram, rows);
    free(diag);
    free(want);
    free(gram);
    free(w);
    free(jw);
    free(u);
    free(vjp);
    free(proj);
    free(r);
    free(tot);
    tpv_jsrc_free(s);
    tpv_tensor_file_close(ref);
}

static void check_case(const char *name, int batch1, int has_ref)
{
    char path[512];
    size_t len;
    struct tpv_err err;
    snprintf(path, sizeof path, "%s/%s.onnx", tmpdir, name);
    void *buf = torch_fixture_slurp(path, &len);
    struct tpv_onnx_model *m;
    if (tpv_onnx_model_load(&m, buf, len, NULL, 0, &err))
        fail_msg("%s: load: %s", name, err.message);
    free(buf);
    check_params(name, m);

    struct tpv_tensor xs, ys;
    struct tpv_tensor_file *fx, *fy;
    snprintf(path, sizeof path, "%s/%s.input.npy", tmpdir, name);
    double *x = npy_f64(path, &xs, &fx);
    snprintf(path, sizeof path, "%s/%s.output.npy", tmpdir, name);
    double *want = npy_f64(path, &ys, &fy);
    uint64_t n = xs.shape[0], K = ys.shape[1];
    double *got = malloc(n * K * sizeof *got);
    assert_non_null(got);
    if (batch1)
        for (uint64_t i = 0; i < n; i++)
            run_batch(m, &xs, x, i, 1, got + i * K, K);
    else
        run_batch(m, &xs, x, 0, n, got, K);
    double num = 0, den = 0;
    for (uint64_t i = 0; i < n * K; i++) {
        num = fmax(num, fabs(got[i] - want[i]));
        den = fmax(den, fabs(want[i]));
    }
    if (getenv("TPV_TEST_VERBOSE"))
        print_message("%s: %zu nodes, %zu parameters, rel err %.3g\n", name, m->nnodes,
                      m->nparams, num / den);
    if (!(num <= TOL * den))
        fail_msg("%s: forward differs from PyTorch: max err %.3g, max |y| %.3g", name, num, den);
    if (!batch1)
        check_derivatives(name, m, &xs, x);
    if (has_ref)
        check_source(name, m, &xs, batch1);
    free(got);
    free(x);
    free(want);
    tpv_tensor_file_close(fx);
    tpv_tensor_file_close(fy);
    tpv_onnx_model_free(m);
}

static void test_networks(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/manifest.txt", tmpdir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char name[128];
    int batch1, has_ref, cases = 0;
    while (fscanf(f, "%127s %d %d", name, &batch1, &has_ref) == 3) {
        check_case(name, batch1, has_ref);
        cases++;
    }
    fclose(f);
    assert_int_equal(cases, 13);
}

static int setup(void **state)
{
    (void)state;
    return torch_fixture_make(tmpdir, sizeof tmpdir, "onnx-torch", "onnx_networks.py");
}

static int teardown(void **state)
{
    (void)state;
    return torch_fixture_remove(tmpdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_networks),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
