/* test_krylov_onnx.c: matrix-free label TPV (core/krylov.c) on the ONNX graph source, the CNN of
 * the ONNX tests with K = 10 (tests/torch/cnn_label_small.py, exported by PyTorch into a fresh
 * folder): the block products jvp_block / vjp_block against the per-vector jvp / vjp on both
 * per-sample paths (batched and reference), the three ways krylov.c applies G (Jacobians copied
 * once, the source's block ops, one product per vector) and plain CG giving the same value, and
 * the whole matrix-free job within 4 reported standard errors of the exact one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/estimate.h"
#include "core/krylov.h"
#include "core/onnx_model.h"
#include "core/onnx_source.h"
#include "core/tensor.h"
#include "num_helpers.h"
#include "tests/unit/torch_fixture.h"

static char tmpdir[256];

struct sets {
    struct tpv_onnx_model *m;
    struct tpv_tensor_file *ff, *fp;
    struct tpv_jsrc *fit, *probe;
};

static void open_sets(struct sets *s)
{
    char path[512];
    size_t len;
    struct tpv_err err;
    snprintf(path, sizeof path, "%s/cnn.onnx", tmpdir);
    void *buf = torch_fixture_slurp(path, &len);
    if (tpv_onnx_model_load(&s->m, buf, len, NULL, 0, &err))
        fail_msg("load: %s", err.message);
    free(buf);
    snprintf(path, sizeof path, "%s/fit.npy", tmpdir);
    if (tpv_tensor_file_open(&s->ff, path, &err) ||
        tpv_onnx_source_new(&s->fit, s->m, tpv_tensor_file_at(s->ff, 0), &err))
        fail_msg("%s: %s", path, err.message);
    snprintf(path, sizeof path, "%s/probe.npy", tmpdir);
    if (tpv_tensor_file_open(&s->fp, path, &err) ||
        tpv_onnx_source_new(&s->probe, s->m, tpv_tensor_file_at(s->fp, 0), &err))
        fail_msg("%s: %s", path, err.message);
    assert_int_equal(s->fit->K, 10);
    assert_non_null(s->fit->ops->jvp_block);
    assert_non_null(s->fit->ops->vjp_block);
}

static void close_sets(struct sets *s)
{
    tpv_jsrc_free(s->fit);
    tpv_jsrc_free(s->probe);
    tpv_tensor_file_close(s->ff);
    tpv_tensor_file_close(s->fp);
    tpv_onnx_model_free(s->m);
}

static double max_rel(const double *a, const double *b, size_t n)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs(a[i] - b[i]));
        s = fmax(s, fabs(b[i]));
    }
    return d / s;
}

/* J V and J^T U for 5 vectors at once against 5 calls of jvp / vjp. */
static void check_block_ops(const struct tpv_jsrc *s)
{
    enum { B = 5 };
    uint64_t N = s->n * s->K, p = s->p;
    double *V = malloc(p * B * sizeof *V), *U = malloc(N * B * sizeof *U);
    double *ob = malloc(N * B * sizeof *ob), *pb = malloc(p * B * sizeof *pb);
    double *v = malloc(p * sizeof *v), *u = malloc(N * sizeof *u);
    double *o1 = malloc(N * B * sizeof *o1), *p1 = malloc(p * B * sizeof *p1);
    double *t = malloc((N > p ? N : p) * sizeof *t);
    fill_normal(V, p * B, 3);
    fill_normal(U, N * B, 4);
    struct tpv_err err;
    assert_int_equal(s->ops->jvp_block(s, V, B, ob, NULL, &err), TPV_OK);
    assert_int_equal(s->ops->vjp_block(s, U, B, pb, NULL, &err), TPV_OK);
    for (uint64_t j = 0; j < B; j++) {
        for (uint64_t i = 0; i < p; i++)
            v[i] = V[i * B + j];
        for (uint64_t i = 0; i < N; i++)
            u[i] = U[i * B + j];
        assert_int_equal(s->ops->jvp(s, v, t, NULL, &err), TPV_OK);
        for (uint64_t i = 0; i < N; i++)
            o1[i * B + j] = t[i];
        assert_int_equal(s->ops->vjp(s, u, t, NULL, &err), TPV_OK);
        for (uint64_t i = 0; i < p; i++)
            p1[i * B + j] = t[i];
    }
    double ej = max_rel(ob, o1, N * B), ev = max_rel(pb, p1, p * B);
    print_message("block ops: jvp %.2g, vjp %.2g relative\n", ej, ev);
    assert_true(ej < 1e-12);
    assert_true(ev < 1e-12);
    free(V), free(U), free(ob), free(pb), free(v), free(u), free(o1), free(p1), free(t);
}

static void test_block_ops(void **state)
{
    (void)state;
    struct sets s;
    open_sets(&s);
    assert_true(tpv_onnx_source_batched(s.fit));
    check_block_ops(s.fit);
    tpv_onnx_source_set_reference(s.fit, true); /* one reverse pass per (sample, output) */
    check_block_ops(s.fit);
    close_sets(&s);
}

/* The same probes through the copied Jacobians, the block ops, one product per vector and
 * plain CG: every solve to 1e-10, so the values agree to ~1e-9 and the sample counts exactly. */
static void test_paths_agree(void **state)
{
    (void)state;
    struct sets s;
    open_sets(&s);
    struct tpv_mf_opts base = { .seed = 5, .target_rel_error = 0.05, .max_samples = 200,
                                .rho = 0.05, .tol = 1e-10, .precond_rank = 40 };
    struct tpv_mf_opts o[4] = { base, base, base, base };
    o[1].no_cache = true;
    o[2].no_cache = true;
    o[2].block = 1;
    o[3].plain_cg = true;
    struct tpv_mf_result r[4];
    struct tpv_err err;
    for (int i = 0; i < 4; i++) {
        if (tpv_label_mf(s.fit, s.probe, &o[i], &r[i], NULL, &err))
            fail_msg("path %d: %s", i, err.message);
        print_message("path %d: %.12g +- %.3g, %llu samples, %llu products, CG max %llu, rank "
                      "%llu, cached %d\n", i, r[i].value, r[i].stderr_value,
                      (unsigned long long)r[i].samples, (unsigned long long)r[i].gram_products,
                      (unsigned long long)r[i].iterations_max,
                      (unsigned long long)r[i].precond_rank, (int)r[i].jacobian_cached);
        assert_true(r[i].solver_converged);
        assert_true(r[i].residual_max <= 1e-10);
        assert_int_equal(r[i].samples, r[0].samples);
        assert_true(fabs(r[i].value - r[0].value) <= 1e-8 * fabs(r[0].value));
    }
    assert_true(r[0].jacobian_cached);
    assert_false(r[1].jacobian_cached);
    assert_false(r[2].jacobian_cached);
    for (int i = 0; i < 3; i++)
        assert_int_equal(r[i].precond_rank, 40);
    assert_int_equal(r[3].precond_rank, 0);
    assert_true(r[0].iterations_max < r[3].iterations_max);
    close_sets(&s);
}

/* The job: matrix-free within 4 stderr of exact on both splits (ridge_rel 0.1, 1 % target). */
static void test_matches_exact(void **state)
{
    (void)state;
    struct sets s;
    open_sets(&s);
    struct tpv_noise m[2];
    memset(m, 0, sizeof m);
    for (int i = 0; i < 2; i++) {
        snprintf(m[i].name, sizeof m[i].name, i ? "mf" : "exact");
        m[i].kind = TPV_NOISE_LABEL;
        m[i].sigma = 1;
        m[i].ridge_rel = 0.1;
        m[i].rcond = 1e-10;
        m[i].estimator = i ? TPV_EST_HUTCHINSON : TPV_EST_EXACT;
        m[i].target_rel_error = 0.01;
        m[i].max_samples = 5000;
        m[i].seed = 11;
    }
    struct tpv_est_inputs in = { .fit = s.fit, .probe = s.probe, .models = m, .nmodels = 2 };
    struct tpv_run_options opts = { 0, 0 };
    struct tpv_score *sc;
    size_t ns;
    json_t *st;
    struct tpv_err err;
    if (tpv_estimate_scores(&in, &opts, &sc, &ns, &st, NULL, &err))
        fail_msg("estimate: %s", err.message);
    assert_int_equal(ns, 4);
    for (size_t i = 0; i < ns; i++) {
        if (strcmp(sc[i].noise, "mf") != 0)
            continue;
        const struct tpv_score *e = NULL;
        for (size_t j = 0; j < ns; j++)
            if (strcmp(sc[j].noise, "exact") == 0 && sc[j].split == sc[i].split)
                e = &sc[j];
        assert_non_null(e);
        double z = fabs(sc[i].value - e->value) / sc[i].stderr_value;
        print_message("split %d: exact %.8g, matrix-free %.8g +- %.2g (%.2f stderr)\n",
                      (int)sc[i].split, e->value, sc[i].value, sc[i].stderr_value, z);
        assert_true(z < 4);
        assert_true(json_is_true(json_object_get(sc[i].details, "jacobian_cached")));
        assert_true(json_integer_value(json_object_get(sc[i].details, "preconditioner_rank")) > 0);
    }
    tpv_scores_free(sc, ns);
    json_decref(st);
    close_sets(&s);
}

static int setup(void **state)
{
    (void)state;
    return torch_fixture_make(tmpdir, sizeof tmpdir, "krylov-onnx", "cnn_label_small.py");
}

static int teardown(void **state)
{
    (void)state;
    return torch_fixture_remove(tmpdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block_ops),
        cmocka_unit_test(test_paths_agree),
        cmocka_unit_test(test_matches_exact),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
