/* test_blocked.c: the blocked exact label path (core/estimate.c: tiled Cholesky of G + rho I,
 * core/linalg.c) against the eigendecomposition path on a Jacobian dump and an MLP where both
 * run (values, per-input contributions and effective rank within 1e-10), the tiled kernels
 * against their definitions, cancels at every progress point, and `auto` choosing among exact,
 * blocked exact and matrix-free at the exact byte and flop boundaries of each path. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <math.h>

#include "core/dump.h"
#include "core/estimate.h"
#include "core/linalg.h"
#include "core/mlp_source.h"
#include "num_helpers.h"
#include "tests/unit/mlp_testnet.h"

static struct tpv_noise mk(enum tpv_noise_kind kind, const char *name, enum tpv_estimator est)
{
    struct tpv_noise nm;
    memset(&nm, 0, sizeof nm);
    snprintf(nm.name, sizeof nm.name, "%s", name);
    nm.kind = kind;
    nm.residual_variance = 1.0;
    nm.rcond = 1e-10;
    nm.target_rel_error = 0.05;
    nm.max_samples = 200;
    nm.estimator = est;
    nm.sigma = 0.5;
    nm.lr = 0.1;
    nm.batch_size = 8;
    return nm;
}

static const struct tpv_score *find(const struct tpv_score *sc, size_t ns, const char *name,
                                    enum tpv_split split)
{
    for (size_t i = 0; i < ns; i++)
        if (strcmp(sc[i].noise, name) == 0 && sc[i].split == split)
            return &sc[i];
    fail_msg("no score %s/%d", name, (int)split);
    return NULL;
}

static double detail(const struct tpv_score *s, const char *key)
{
    json_t *v = json_object_get(s->details, key);
    if (!v)
        fail_msg("%s: no detail %s", s->noise, key);
    return json_number_value(v);
}

static const char *sdetail(const struct tpv_score *s, const char *key)
{
    const char *v = json_string_value(json_object_get(s->details, key));
    if (!v)
        fail_msg("%s: no string detail %s", s->noise, key);
    return v;
}

/* ---- the tiled kernels -------------------------------------------------------------------- */

/* A = B B^T / n + I (n x n, well conditioned). */
static double *spd(uint64_t n, uint64_t seed)
{
    double *B = malloc(n * n * sizeof *B), *A = malloc(n * n * sizeof *A);
    fill_normal(B, n * n, seed);
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t j = 0; j <= i; j++) {
            double t = 0;
            for (uint64_t k = 0; k < n; k++)
                t += B[i * n + k] * B[j * n + k];
            A[i * n + j] = A[j * n + i] = t / (double)n + (i == j);
        }
    free(B);
    return A;
}

static int polls;
static int count_poll(void *ctx, double f)
{
    (void)ctx;
    assert_true(f >= 0 && f <= 1);
    polls++;
    return 0;
}

static int stop_at;
static int stop_poll(void *ctx, double f)
{
    (void)ctx;
    (void)f;
    return --stop_at < 0;
}

/* L L^T X = B: the residual ||A X - B|| / ||B|| below 1e-12 for orders below, at and across
 * tile boundaries, with general right-hand sides and with identity columns past zero_rows. */
static void test_chol_solve_residual(void **state)
{
    (void)state;
    uint64_t orders[] = { 1, 7, TPV_CHOL_TILE, TPV_CHOL_TILE + 1, 2 * TPV_CHOL_TILE + 88 };
    for (size_t t = 0; t < sizeof orders / sizeof orders[0]; t++) {
        uint64_t n = orders[t], r = 5;
        double *A = spd(n, 100 + t), *L = malloc(n * n * sizeof *L);
        memcpy(L, A, n * n * sizeof *L);
        struct tpv_err err;
        polls = 0;
        assert_int_equal(tpv_chol_tiled(n, L, n, count_poll, NULL, &err), TPV_OK);
        assert_true(n <= TPV_CHOL_TILE || polls >= 2);
        for (int ident = 0; ident < 2; ident++) {
            uint64_t z = ident ? n / 2 : 0;
            double *B = calloc(n * r, sizeof *B), *X = malloc(n * r * sizeof *X);
            if (ident) {
                for (uint64_t j = 0; j < r && z + j < n; j++)
                    B[(z + j) * r + j] = 1.0;
            } else {
                fill_normal(B, n * r, 7 + t);
            }
            memcpy(X, B, n * r * sizeof *X);
            assert_int_equal(tpv_chol_solve_tiled(n, L, n, r, X, r, z, count_poll, NULL, &err),
                             TPV_OK);
            double res = 0, nb = 0;
            for (uint64_t i = 0; i < n; i++)
                for (uint64_t j = 0; j < r; j++) {
                    double ax = 0;
                    for (uint64_t k = 0; k < n; k++)
                        ax += A[i * n + k] * X[k * r + j];
                    res += (ax - B[i * r + j]) * (ax - B[i * r + j]);
                    nb += B[i * r + j] * B[i * r + j];
                }
            if (nb > 0 && !(sqrt(res / nb) < 1e-12))
                fail_msg("order %llu, identity %d: residual %.3g", (unsigned long long)n, ident,
                         sqrt(res / nb));
            free(B);
            free(X);
        }
        free(A);
        free(L);
    }
}

/* Not positive definite: TPV_ENUMERIC naming the minor; a poll that says stop: TPV_ECANCELED
 * from the factorisation and from the solve. */
static void test_chol_refusals(void **state)
{
    (void)state;
    uint64_t n = 2 * TPV_CHOL_TILE + 10;
    double *A = spd(n, 5), *L = malloc(n * n * sizeof *L);
    memcpy(L, A, n * n * sizeof *L);
    L[400 * n + 400] = -1.0;
    struct tpv_err err;
    assert_int_equal(tpv_chol_tiled(n, L, n, NULL, NULL, &err), TPV_ENUMERIC);
    assert_non_null(strstr(err.message, "leading minor"));
    for (int k = 0; k < 3; k++) {
        memcpy(L, A, n * n * sizeof *L);
        stop_at = k;
        assert_int_equal(tpv_chol_tiled(n, L, n, stop_poll, NULL, &err), TPV_ECANCELED);
    }
    memcpy(L, A, n * n * sizeof *L);
    assert_int_equal(tpv_chol_tiled(n, L, n, NULL, NULL, &err), TPV_OK);
    double *X = calloc(n * 3, sizeof *X);
    stop_at = 1;
    assert_int_equal(tpv_chol_solve_tiled(n, L, n, 3, X, 3, 0, stop_poll, NULL, &err),
                     TPV_ECANCELED);
    free(X);
    free(A);
    free(L);
}

/* ---- blocked against eigen ------------------------------------------------------------------ */

/* Fit n = 150, probe m = 40, K = 3, p = 200: N = 450 spans two tiles, one partial. */
enum { BN = 150, BM = 40, BK = 3, BP = 200 };

struct dumps {
    double *Jf, *Jp;
    struct tpv_jsrc *fit, *probe;
};

static void open_dumps(struct dumps *d, uint64_t seed)
{
    d->Jf = malloc((size_t)BN * BK * BP * sizeof *d->Jf);
    d->Jp = malloc((size_t)BM * BK * BP * sizeof *d->Jp);
    fill_normal(d->Jf, (size_t)BN * BK * BP, seed);
    fill_normal(d->Jp, (size_t)BM * BK * BP, seed + 1);
    for (uint64_t r = 0; r < BN * BK; r++) /* a decaying spectrum, not a multiple of I */
        for (uint64_t j = 0; j < BP; j++)
            d->Jf[r * BP + j] *= exp(-0.02 * (double)j);
    for (uint64_t r = 0; r < BM * BK; r++)
        for (uint64_t j = 0; j < BP; j++)
            d->Jp[r * BP + j] *= exp(-0.02 * (double)j);
    uint64_t sf[3] = { BN, BK, BP }, sp[3] = { BM, BK, BP };
    struct tpv_tensor tf = tview("", TPV_DTYPE_F64, d->Jf, 3, sf);
    struct tpv_tensor tp = tview("", TPV_DTYPE_F64, d->Jp, 3, sp);
    const struct tpv_tensor *a[1] = { &tf }, *b[1] = { &tp };
    struct tpv_err err;
    if (tpv_dump_from_tensors(&d->fit, a, 1, NULL, 0, NULL, 0, &err) ||
        tpv_dump_from_tensors(&d->probe, b, 1, NULL, 0, NULL, 0, &err))
        fail_msg("dump: %s", err.message);
}

static void close_dumps(struct dumps *d)
{
    tpv_jsrc_free(d->fit);
    tpv_jsrc_free(d->probe);
    free(d->Jf);
    free(d->Jp);
}

static void run(const struct tpv_est_inputs *in, const struct tpv_run_options *opts,
                struct tpv_score **sc, size_t *ns)
{
    json_t *st;
    struct tpv_err err;
    int rc = tpv_estimate_scores(in, opts, sc, ns, &st, NULL, &err);
    if (rc)
        fail_msg("estimate: %d %s", rc, err.message);
    json_decref(st);
}

/* The models of `in`, exact: once with no limit (the eigendecomposition) and once with a memory
 * limit one byte under that plan (the blocked path for every ridged label model); values,
 * contributions and the effective rank agree within 1e-10 relative. */
static void compare_paths(const struct tpv_est_inputs *in, int nlabel)
{
    struct tpv_run_options none = { 0, 0 };
    uint64_t need;
    struct tpv_err err;
    assert_int_equal(tpv_estimate_plan(in, &none, &need, &err), TPV_OK);
    struct tpv_run_options lim = { need - 1, 0 };
    uint64_t need_blk;
    if (tpv_estimate_plan(in, &lim, &need_blk, &err) != TPV_OK)
        fail_msg("blocked plan: %s", err.message);
    assert_true(need_blk < need);
    struct tpv_score *a, *b;
    size_t na, nb;
    run(in, &none, &a, &na);
    run(in, &lim, &b, &nb);
    assert_int_equal(na, nb);
    int blocked = 0;
    for (size_t i = 0; i < na; i++) {
        assert_string_equal(a[i].noise, b[i].noise);
        assert_string_equal(a[i].estimator, "exact");
        assert_string_equal(b[i].estimator, "exact");
        assert_string_equal(sdetail(&a[i], "path"), "exact");
        if (a[i].kind != TPV_NOISE_LABEL) {
            assert_true(a[i].value == b[i].value);
            continue;
        }
        blocked++;
        assert_string_equal(sdetail(&b[i], "path"), "blocked_exact");
        assert_string_equal(sdetail(&b[i], "solver"), "cholesky");
        assert_non_null(strstr(sdetail(&b[i], "reason"), "memory budget"));
        assert_rel(b[i].value, a[i].value, 1e-10);
        assert_rel(detail(&b[i], "effective_rank"), detail(&a[i], "effective_rank"), 1e-10);
        assert_rel(detail(&b[i], "rho"), detail(&a[i], "rho"), 1e-13);
        assert_int_equal(b[i].n_inputs, a[i].n_inputs);
        assert_true(a[i].n_inputs > 0);
        double mean = fabs(a[i].value);
        for (size_t x = 0; x < a[i].n_inputs; x++)
            if (fabs(b[i].per_input[x] - a[i].per_input[x]) > 1e-10 * mean)
                fail_msg("%s/%s input %zu: %.17g vs %.17g", a[i].noise,
                         tpv_split_name(a[i].split), x, b[i].per_input[x], a[i].per_input[x]);
    }
    assert_int_equal(blocked, nlabel * (in->probe ? 2 : 1));
    tpv_scores_free(a, na);
    tpv_scores_free(b, nb);
}

static void test_dump_blocked_matches_eigen(void **state)
{
    (void)state;
    struct dumps d;
    open_dumps(&d, 11);
    /* two ridged label models (the first factors a copy of G, the last G itself) and an
     * sgd_curvature model sharing the Gram phase */
    struct tpv_noise m[3] = { mk(TPV_NOISE_LABEL, "rel", TPV_EST_EXACT),
                              mk(TPV_NOISE_SGD_CURVATURE, "curv", TPV_EST_EXACT),
                              mk(TPV_NOISE_LABEL, "ridge", TPV_EST_EXACT) };
    m[0].ridge_rel = 0.1;
    m[2].ridge = 0.3;
    m[2].sigma = 1.7;
    struct tpv_est_inputs in = { .fit = d.fit, .probe = d.probe, .models = m, .nmodels = 3 };
    compare_paths(&in, 2);
    in.probe = NULL; /* the fit split alone */
    in.nmodels = 1;
    compare_paths(&in, 1);
    close_dumps(&d);
}

/* An MLP source (structured products, sigma_rel from its outputs), N = 130 * 3 = 390. */
static void test_mlp_blocked_matches_eigen(void **state)
{
    (void)state;
    struct tnet net;
    tnet_init(&net, "[5]", 31);
    tnet_linear(&net, 16, 5, 1);
    tnet_layer(&net, "{\"type\":\"tanh\"}");
    tnet_linear(&net, 3, 16, 1);
    struct tpv_mlp *mlp = tnet_bind(&net);
    assert_non_null(mlp);
    double *xf = tnet_inputs(130, 5, 3), *xp = tnet_inputs(30, 5, 4);
    struct tpv_tensor tf = tnet_input_tensor(xf, 130, mlp->input_rank, mlp->input_shape);
    struct tpv_tensor tp = tnet_input_tensor(xp, 30, mlp->input_rank, mlp->input_shape);
    struct tpv_jsrc *fit, *probe;
    struct tpv_err err;
    assert_int_equal(tpv_mlp_source_open(&fit, mlp, &tf, &err), TPV_OK);
    assert_int_equal(tpv_mlp_source_open(&probe, mlp, &tp, &err), TPV_OK);
    struct tpv_noise m = mk(TPV_NOISE_LABEL, "rel", TPV_EST_EXACT);
    m.ridge_rel = 0.1;
    m.sigma = 0;
    m.sigma_rel = 0.2;
    struct tpv_est_inputs in = { .fit = fit, .probe = probe, .models = &m, .nmodels = 1 };
    compare_paths(&in, 1);
    tpv_jsrc_free(fit);
    tpv_jsrc_free(probe);
    tpv_mlp_free(mlp);
    tnet_free(&net);
    free(xf);
    free(xp);
}

static int calls_left, calls_seen;
static int cancel_cb(void *ctx, double f)
{
    (void)ctx;
    (void)f;
    calls_seen++;
    return --calls_left < 0;
}

/* A cancel at any progress call of a blocked job returns TPV_ECANCELED with nothing left
 * allocated (the sanitizer build checks the leaks); the calls cover the factorisation and the
 * solves, so the progress moves inside them. */
static void test_blocked_cancel_everywhere(void **state)
{
    (void)state;
    struct dumps d;
    open_dumps(&d, 21);
    struct tpv_noise m[2] = { mk(TPV_NOISE_LABEL, "a", TPV_EST_EXACT),
                              mk(TPV_NOISE_LABEL, "b", TPV_EST_EXACT) };
    m[0].ridge_rel = 0.1;
    m[1].ridge = 1;
    struct tpv_est_inputs in = { .fit = d.fit, .probe = d.probe, .models = m, .nmodels = 2 };
    struct tpv_run_options none = { 0, 0 };
    uint64_t need;
    struct tpv_err err;
    assert_int_equal(tpv_estimate_plan(&in, &none, &need, &err), TPV_OK);
    struct tpv_run_options lim = { need - 1, 0 };
    struct tpv_progress pg = { cancel_cb, NULL };
    struct tpv_score *sc;
    size_t ns;
    json_t *st;
    calls_left = 1 << 30, calls_seen = 0;
    assert_int_equal(tpv_estimate_scores(&in, &lim, &sc, &ns, &st, &pg, &err), TPV_OK);
    assert_string_equal(sdetail(&sc[0], "path"), "blocked_exact");
    tpv_scores_free(sc, ns);
    json_decref(st);
    int total = calls_seen;
    /* per model: the factorisation polls per tile row, and one solve per panel of columns */
    assert_true(total > 20);
    for (int k = 0; k < total; k += 1 + total / 40) {
        calls_left = k;
        assert_int_equal(tpv_estimate_scores(&in, &lim, &sc, &ns, &st, &pg, &err),
                         TPV_ECANCELED);
        assert_null(sc);
    }
    close_dumps(&d);
}

/* ---- auto at the boundaries ----------------------------------------------------------------- */

/* One model scored alone under `opts`: its path and reason on the probe split. */
static void path_of(struct tpv_est_inputs *in, const struct tpv_run_options *opts,
                    const char *expect_path, const char *expect_reason)
{
    struct tpv_score *sc;
    size_t ns;
    run(in, opts, &sc, &ns);
    const struct tpv_score *s = find(sc, ns, in->models[0].name, TPV_SPLIT_PROBE);
    if (strcmp(sdetail(s, "path"), expect_path) != 0)
        fail_msg("%s at memory %llu, flops %.17g: path %s (%s), expected %s", s->noise,
                 (unsigned long long)opts->max_memory, opts->flop_budget, sdetail(s, "path"),
                 sdetail(s, "reason"), expect_path);
    assert_string_equal(s->estimator, strcmp(expect_path, "matrix_free") ? "exact" : "hutchinson");
    if (!strstr(sdetail(s, "reason"), expect_reason))
        fail_msg("%s: reason '%s' lacks '%s'", s->noise, sdetail(s, "reason"), expect_reason);
    assert_string_equal(sdetail(s, "reason"), sdetail(s, "estimator_reason"));
    tpv_scores_free(sc, ns);
}

static void test_auto_boundaries(void **state)
{
    (void)state;
    struct dumps d;
    open_dumps(&d, 31);
    struct tpv_noise m = mk(TPV_NOISE_LABEL, "label", TPV_EST_AUTO);
    m.ridge_rel = 0.1;
    struct tpv_est_inputs in = { .fit = d.fit, .probe = d.probe, .models = &m, .nmodels = 1 };
    struct tpv_run_options none = { 0, 0 };
    struct tpv_score *sc;
    size_t ns;
    run(&in, &none, &sc, &ns);
    const struct tpv_score *s = find(sc, ns, "label", TPV_SPLIT_PROBE);
    uint64_t eb = (uint64_t)detail(s, "exact_bytes"), bb = (uint64_t)detail(s, "blocked_bytes");
    double ef = detail(s, "exact_flops"), bf = detail(s, "blocked_flops");
    assert_string_equal(sdetail(s, "path"), "exact");
    tpv_scores_free(sc, ns);
    /* the eigendecomposition's workspace (2 N^2) and per-input rows against one solve panel
     * make the exact path the larger; the blocked path does a third of its flops */
    uint64_t N = BN * BK;
    assert_true(eb > bb + N * N * 8);
    assert_true(bf < ef / 1.5);

    path_of(&in, &(struct tpv_run_options){ eb, 0 }, "exact", "fit the budgets -> exact");
    path_of(&in, &(struct tpv_run_options){ eb - 1, 0 }, "blocked_exact",
            "memory budget");
    path_of(&in, &(struct tpv_run_options){ bb, 0 }, "blocked_exact", "-> blocked_exact");
    path_of(&in, &(struct tpv_run_options){ bb - 1, 0 }, "matrix_free", "-> matrix_free");
    path_of(&in, &(struct tpv_run_options){ 0, ef }, "exact", "-> exact");
    path_of(&in, &(struct tpv_run_options){ 0, nextafter(ef, 0) }, "blocked_exact",
            "flop budget");
    path_of(&in, &(struct tpv_run_options){ 0, bf }, "blocked_exact", "-> blocked_exact");
    path_of(&in, &(struct tpv_run_options){ 0, nextafter(bf, 0) }, "matrix_free",
            "-> matrix_free");

    /* unridged label: no blocked path (the rcond cut needs the eigenvalues) */
    m.ridge_rel = 0;
    path_of(&in, &(struct tpv_run_options){ eb, 0 }, "exact", "-> exact");
    path_of(&in, &(struct tpv_run_options){ eb - 1, 0 }, "matrix_free", "memory budget");
    /* sgd_curvature: the Gram sums or matrix-free */
    struct tpv_noise c = mk(TPV_NOISE_SGD_CURVATURE, "curv", TPV_EST_AUTO);
    in.models = &c;
    run(&in, &none, &sc, &ns);
    uint64_t cb = (uint64_t)detail(find(sc, ns, "curv", TPV_SPLIT_PROBE), "exact_bytes");
    tpv_scores_free(sc, ns);
    assert_true(cb < bb);
    path_of(&in, &(struct tpv_run_options){ cb, 0 }, "exact", "-> exact");
    path_of(&in, &(struct tpv_run_options){ cb - 1, 0 }, "matrix_free", "gram ");
    close_dumps(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chol_solve_residual),
        cmocka_unit_test(test_chol_refusals),
        cmocka_unit_test(test_dump_blocked_matches_eigen),
        cmocka_unit_test(test_mlp_blocked_matches_eigen),
        cmocka_unit_test(test_blocked_cancel_everywhere),
        cmocka_unit_test(test_auto_boundaries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
