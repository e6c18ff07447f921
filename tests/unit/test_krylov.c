/* test_krylov.c: matrix-free label and sgd_curvature (core/krylov.c) against the exact Gram path
 * of core/estimate.c on a Jacobian dump and on an MLP where both fit: within 4 reported standard
 * errors over several seeds, every CG solve below its tolerance, `auto` choosing matrix-free past
 * the budgets and saying why, and a cancel from inside the Krylov loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <math.h>
#include <time.h>
#include <unistd.h>

#include "core/dump.h"
#include "core/estimate.h"
#include "core/krylov.h"
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
    nm.target_rel_error = 0.02;
    nm.max_samples = 3000;
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

/* Exact and matrix-free copies of one model, scored together; checks agreement on every split
 * within 4 stderr (plus 1e-9 relative for a zero-variance estimate) and the solver details. */
static void compare(const struct tpv_jsrc *fit, const struct tpv_jsrc *probe,
                    struct tpv_noise base, uint64_t seed)
{
    struct tpv_noise m[2] = { base, base };
    snprintf(m[0].name, sizeof m[0].name, "exact");
    m[0].estimator = TPV_EST_EXACT;
    snprintf(m[1].name, sizeof m[1].name, "mf");
    m[1].estimator = TPV_EST_HUTCHINSON;
    m[1].seed = seed;
    struct tpv_est_inputs in = { .fit = fit, .probe = probe, .models = m, .nmodels = 2 };
    struct tpv_run_options opts = { 0, 0 };
    struct tpv_score *sc;
    size_t ns;
    json_t *st;
    struct tpv_err err;
    int rc = tpv_estimate_scores(&in, &opts, &sc, &ns, &st, NULL, &err);
    if (rc)
        fail_msg("estimate: %d %s", rc, err.message);
    for (int s = 0; s < (probe ? 2 : 1); s++) {
        const struct tpv_score *e = find(sc, ns, "exact", (enum tpv_split)s);
        const struct tpv_score *h = find(sc, ns, "mf", (enum tpv_split)s);
        assert_string_equal(e->estimator, "exact");
        assert_string_equal(h->estimator, "hutchinson");
        assert_true(h->samples >= 2);
        assert_true(h->stderr_value > 0 || fabs(h->value - e->value) <= 1e-9 * fabs(e->value));
        double z = fabs(h->value - e->value) / (h->stderr_value + 1e-12 * fabs(e->value));
        if (z > 4)
            fail_msg("%s split %d seed %llu: matrix-free %.8g +- %.3g vs exact %.8g (%.1f se)",
                     tpv_noise_kind_name(base.kind), s, (unsigned long long)seed, h->value,
                     h->stderr_value, e->value, z);
        /* the reported error bar is honest: about the requested relative error, not far wider */
        assert_true(h->stderr_value <= 2.0 * base.target_rel_error * fabs(h->value) + 1e-12);
        if (base.kind == TPV_NOISE_LABEL) {
            assert_true(json_is_true(json_object_get(h->details, "solver_converged")));
            assert_true(detail(h, "solver_residual") <= detail(h, "solver_tol"));
            assert_true(detail(h, "solver_iterations") >= 1);
        }
        assert_true(detail(h, "gram_products") >= (double)h->samples);
    }
    json_decref(st);
    tpv_scores_free(sc, ns);
}

/* A dump of random Jacobians: fit n = 12, probe m = 9, K = 3, p = 70 (G has full rank 36). */
enum { DN = 12, DM = 9, DK = 3, DP = 70 };

struct dumps {
    double Jf[DN * DK * DP], Jp[DM * DK * DP];
    struct tpv_tensor t[2];
    const struct tpv_tensor *ts[2];
    uint64_t sf[3], sp[3];
    struct tpv_jsrc *fit, *probe;
};

static void open_dumps(struct dumps *d, uint64_t seed)
{
    fill_normal(d->Jf, DN * DK * DP, seed);
    fill_normal(d->Jp, DM * DK * DP, seed + 1);
    /* a decaying column scale so that G is not nearly a multiple of the identity */
    for (uint64_t r = 0; r < DN * DK; r++)
        for (uint64_t j = 0; j < DP; j++)
            d->Jf[r * DP + j] *= exp(-0.05 * (double)j);
    for (uint64_t r = 0; r < DM * DK; r++)
        for (uint64_t j = 0; j < DP; j++)
            d->Jp[r * DP + j] *= exp(-0.05 * (double)j);
    d->sf[0] = DN, d->sf[1] = DK, d->sf[2] = DP;
    d->sp[0] = DM, d->sp[1] = DK, d->sp[2] = DP;
    d->t[0] = tview("", TPV_DTYPE_F64, d->Jf, 3, d->sf);
    d->t[1] = tview("", TPV_DTYPE_F64, d->Jp, 3, d->sp);
    struct tpv_err err;
    d->ts[0] = &d->t[0];
    if (tpv_dump_from_tensors(&d->fit, d->ts, 1, NULL, 0, NULL, 0, &err))
        fail_msg("dump: %s", err.message);
    d->ts[0] = &d->t[1];
    if (tpv_dump_from_tensors(&d->probe, d->ts, 1, NULL, 0, NULL, 0, &err))
        fail_msg("dump: %s", err.message);
}

static void test_dump_matches_exact(void **state)
{
    (void)state;
    struct dumps *d = calloc(1, sizeof *d);
    open_dumps(d, 31);
    for (uint64_t seed = 1; seed <= 4; seed++) {
        struct tpv_noise rr = mk(TPV_NOISE_LABEL, "x", TPV_EST_EXACT);
        rr.ridge_rel = 0.1;
        compare(d->fit, d->probe, rr, seed);
        struct tpv_noise ra = mk(TPV_NOISE_LABEL, "x", TPV_EST_EXACT);
        ra.ridge = 2.0;
        compare(d->fit, d->probe, ra, seed);
        struct tpv_noise un = mk(TPV_NOISE_LABEL, "x", TPV_EST_EXACT); /* Lanczos + rcond */
        compare(d->fit, d->probe, un, seed);
        compare(d->fit, d->probe, mk(TPV_NOISE_SGD_CURVATURE, "x", TPV_EST_EXACT), seed);
    }
    tpv_jsrc_free(d->fit);
    tpv_jsrc_free(d->probe);
    free(d);
}

/* A rank-deficient fit (p = 20 < nK = 36): the unridged form keeps 20 eigenvalues, and the
 * fit-split value is sigma^2 rank / n, which Lanczos must find through the rcond cut. */
static void test_rank_deficient_cut(void **state)
{
    (void)state;
    enum { P = 20 };
    double *Jf = malloc(DN * DK * P * sizeof *Jf), *Jp = malloc(DM * DK * P * sizeof *Jp);
    fill_normal(Jf, DN * DK * P, 5);
    fill_normal(Jp, DM * DK * P, 6);
    uint64_t sf[3] = { DN, DK, P }, sp[3] = { DM, DK, P };
    struct tpv_tensor tf = tview("", TPV_DTYPE_F64, Jf, 3, sf), tp = tview("", TPV_DTYPE_F64, Jp, 3, sp);
    const struct tpv_tensor *a[1] = { &tf }, *b[1] = { &tp };
    struct tpv_jsrc *fit, *probe;
    struct tpv_err err;
    assert_int_equal(tpv_dump_from_tensors(&fit, a, 1, NULL, 0, NULL, 0, &err), TPV_OK);
    assert_int_equal(tpv_dump_from_tensors(&probe, b, 1, NULL, 0, NULL, 0, &err), TPV_OK);
    struct tpv_mf_opts o = { .seed = 3, .target_rel_error = 0.01, .max_samples = 2000,
                             .rcond = 1e-10 };
    struct tpv_mf_result r;
    assert_int_equal(tpv_label_mf(fit, NULL, &o, &r, NULL, &err), TPV_OK);
    /* ||G G^+||_F^2 = rank = 20 */
    assert_true(fabs(r.value - P) <= 4 * r.stderr_value + 1e-8 * P);
    assert_true(r.solver_converged);
    assert_true(r.iterations_max <= P + 1); /* an invariant subspace after rank steps */
    for (uint64_t seed = 1; seed <= 3; seed++) {
        struct tpv_noise un = mk(TPV_NOISE_LABEL, "x", TPV_EST_EXACT);
        compare(fit, probe, un, seed);
    }
    tpv_jsrc_free(fit);
    tpv_jsrc_free(probe);
    free(Jf);
    free(Jp);
}

/* A tanh MLP 4 -> 12 -> 12 -> 3, fit n = 14, probe m = 10. */
static void test_mlp_matches_exact(void **state)
{
    (void)state;
    struct tnet net;
    tnet_init(&net, "[4]", 77);
    tnet_linear(&net, 12, 4, 1);
    tnet_layer(&net, "{\"type\":\"tanh\"}");
    tnet_linear(&net, 12, 12, 1);
    tnet_layer(&net, "{\"type\":\"tanh\"}");
    tnet_linear(&net, 3, 12, 1);
    struct tpv_mlp *m = tnet_bind(&net);
    assert_non_null(m);
    double *xf = tnet_inputs(14, 4, 8), *xp = tnet_inputs(10, 4, 9);
    struct tpv_tensor tf = tnet_input_tensor(xf, 14, m->input_rank, m->input_shape);
    struct tpv_tensor tp = tnet_input_tensor(xp, 10, m->input_rank, m->input_shape);
    struct tpv_jsrc *fit, *probe;
    struct tpv_err err;
    assert_int_equal(tpv_mlp_source_open(&fit, m, &tf, &err), TPV_OK);
    assert_int_equal(tpv_mlp_source_open(&probe, m, &tp, &err), TPV_OK);
    for (uint64_t seed = 1; seed <= 4; seed++) {
        struct tpv_noise rr = mk(TPV_NOISE_LABEL, "x", TPV_EST_EXACT);
        rr.ridge_rel = 0.05;
        compare(fit, probe, rr, seed);
        compare(fit, probe, mk(TPV_NOISE_SGD_CURVATURE, "x", TPV_EST_EXACT), seed);
    }
    tpv_jsrc_free(fit);
    tpv_jsrc_free(probe);
    tpv_mlp_free(m);
    tnet_free(&net);
    free(xf);
    free(xp);
}

/* Plain CG (no preconditioner): below the tolerance for a solve of one right-hand side
 * (max_samples 1, G explicit from the dump), one product per iteration. */
static void test_cg_residual(void **state)
{
    (void)state;
    struct dumps *d = calloc(1, sizeof *d);
    open_dumps(d, 41);
    struct tpv_mf_opts o = { .seed = 9, .max_samples = 1, .rho = 0.3, .tol = 1e-10,
                             .plain_cg = true };
    struct tpv_mf_result r;
    struct tpv_err err;
    assert_int_equal(tpv_label_mf(d->fit, NULL, &o, &r, NULL, &err), TPV_OK);
    assert_true(r.solver_converged);
    assert_true(r.residual_max <= 1e-10);
    assert_true(r.iterations_max >= 2 && r.iterations_max <= 2 * DN * DK);
    /* 1 product for the right-hand side, one per CG iteration */
    assert_int_equal(r.gram_products, 1 + r.iterations_total);
    tpv_jsrc_free(d->fit);
    tpv_jsrc_free(d->probe);
    free(d);
}

/* The dump's block products against 5 calls of its jvp / vjp. */
static void test_dump_block_ops(void **state)
{
    (void)state;
    enum { B = 5, N = DN * DK };
    struct dumps *d = calloc(1, sizeof *d);
    open_dumps(d, 47);
    const struct tpv_jsrc *s = d->fit;
    assert_non_null(s->ops->jvp_block);
    double V[DP * B], U[N * B], ob[N * B], pb[DP * B], v[DP], u[N], t[(int)DP > (int)N ? (int)DP : (int)N];
    fill_normal(V, DP * B, 5);
    fill_normal(U, N * B, 6);
    struct tpv_err err;
    assert_int_equal(s->ops->jvp_block(s, V, B, ob, NULL, &err), TPV_OK);
    assert_int_equal(s->ops->vjp_block(s, U, B, pb, NULL, &err), TPV_OK);
    for (int j = 0; j < B; j++) {
        for (int i = 0; i < DP; i++)
            v[i] = V[i * B + j];
        for (int i = 0; i < N; i++)
            u[i] = U[i * B + j];
        assert_int_equal(s->ops->jvp(s, v, t, NULL, &err), TPV_OK);
        for (int i = 0; i < N; i++)
            assert_true(fabs(ob[i * B + j] - t[i]) <= 1e-12 * (1 + fabs(t[i])));
        assert_int_equal(s->ops->vjp(s, u, t, NULL, &err), TPV_OK);
        for (int i = 0; i < DP; i++)
            assert_true(fabs(pb[i * B + j] - t[i]) <= 1e-12 * (1 + fabs(t[i])));
    }
    tpv_jsrc_free(d->fit);
    tpv_jsrc_free(d->probe);
    free(d);
}

/* The Nystrom preconditioner: on G of rank 36, a full sketch (rank 36) and a partial one (rank
 * 8) both give every solve below its tolerance, in fewer iterations than plain CG (the full one
 * in at most 2), and the same value as plain CG on the same probes; the sketch's products are
 * counted.  Solving the probes one at a time or 16 per round gives the same samples and value. */
static void test_pcg(void **state)
{
    (void)state;
    struct dumps *d = calloc(1, sizeof *d);
    open_dumps(d, 43);
    struct tpv_mf_opts base = { .seed = 4, .max_samples = 20, .rho = 0.05, .tol = 1e-11 };
    struct tpv_mf_opts o[4] = { base, base, base, base };
    o[0].plain_cg = true;
    o[2].precond_rank = 8;
    o[3].block = 1;
    struct tpv_mf_result r[4];
    struct tpv_err err;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(tpv_label_mf(d->fit, d->probe, &o[i], &r[i], NULL, &err), TPV_OK);
        print_message("pcg %d: rank %llu (lambda_min %.3g), CG max %llu, residual %.2g, "
                      "%llu products, value %.14g\n", i, (unsigned long long)r[i].precond_rank,
                      r[i].precond_lambda_min, (unsigned long long)r[i].iterations_max,
                      r[i].residual_max, (unsigned long long)r[i].gram_products, r[i].value);
        assert_true(r[i].solver_converged);
        assert_true(r[i].residual_max <= 1e-11);
        assert_int_equal(r[i].samples, 20);
        assert_true(fabs(r[i].value - r[0].value) <= 1e-9 * r[0].value);
    }
    assert_int_equal(r[0].precond_rank, 0);
    assert_int_equal(r[1].precond_rank, DN * DK);
    assert_int_equal(r[2].precond_rank, 8);
    assert_true(r[1].iterations_max <= 2);
    assert_true(r[2].iterations_max < r[0].iterations_max);
    /* plain CG: 20 right-hand sides and one product per iteration; preconditioned: the sketch's
     * columns on top */
    assert_int_equal(r[0].gram_products, 20 + r[0].iterations_total);
    assert_int_equal(r[1].gram_products, 20 + r[1].iterations_total + DN * DK);
    assert_true(fabs(r[3].value - r[1].value) <= 1e-12 * r[1].value); /* GEMM widths round */
    tpv_jsrc_free(d->fit);
    tpv_jsrc_free(d->probe);
    free(d);
}

/* auto: exact without budgets, matrix-free past the flop budget, blocked exact (ridged label)
 * or matrix-free (unridged) one byte under the exact plan, with the reason and the exact path's
 * costs in details. */
static void test_auto_choice(void **state)
{
    (void)state;
    struct dumps *d = calloc(1, sizeof *d);
    open_dumps(d, 51);
    struct tpv_noise m[2] = { mk(TPV_NOISE_LABEL, "label", TPV_EST_AUTO),
                              mk(TPV_NOISE_SGD_CURVATURE, "sgdc", TPV_EST_AUTO) };
    m[0].ridge = 1.0;
    struct tpv_est_inputs in = { .fit = d->fit, .probe = d->probe, .models = m, .nmodels = 2 };
    struct tpv_score *sc;
    size_t ns;
    json_t *st;
    struct tpv_err err;
    struct tpv_run_options none = { 0, 0 };
    assert_int_equal(tpv_estimate_scores(&in, &none, &sc, &ns, &st, NULL, &err), TPV_OK);
    assert_string_equal(find(sc, ns, "label", TPV_SPLIT_PROBE)->estimator, "exact");
    assert_true(detail(find(sc, ns, "label", TPV_SPLIT_PROBE), "exact_bytes") > 0);
    json_decref(st);
    tpv_scores_free(sc, ns);

    struct tpv_run_options tight = { 0, 1e3 };
    assert_int_equal(tpv_estimate_scores(&in, &tight, &sc, &ns, &st, NULL, &err), TPV_OK);
    for (int k = 0; k < 2; k++) {
        const struct tpv_score *s = find(sc, ns, k ? "sgdc" : "label", TPV_SPLIT_PROBE);
        assert_string_equal(s->estimator, "hutchinson");
        const char *why = json_string_value(json_object_get(s->details, "estimator_reason"));
        assert_non_null(strstr(why, "flop budget"));
        assert_true(detail(s, "exact_flops") > 1e3);
    }
    json_decref(st);
    tpv_scores_free(sc, ns);

    uint64_t need_exact;
    assert_int_equal(tpv_estimate_plan(&in, &none, &need_exact, &err), TPV_OK);
    /* a limit one byte short of the exact plan: the matrix-free plan fits */
    struct tpv_run_options mem = { need_exact - 1, 0 };
    uint64_t need_mf;
    if (tpv_estimate_plan(&in, &mem, &need_mf, &err) != TPV_OK)
        fail_msg("plan: %s (exact %llu)", err.message, (unsigned long long)need_exact);
    assert_true(need_mf < need_exact);
    assert_int_equal(tpv_estimate_scores(&in, &mem, &sc, &ns, &st, NULL, &err), TPV_OK);
    /* ridged label: the eigendecomposition no longer fits, the blocked Cholesky path does (it
     * is still exact); the sgd_curvature Gram sums fit (test_blocked.c has the boundaries) */
    const struct tpv_score *s = find(sc, ns, "label", TPV_SPLIT_PROBE);
    assert_string_equal(s->estimator, "exact");
    assert_string_equal(json_string_value(json_object_get(s->details, "path")), "blocked_exact");
    assert_non_null(strstr(json_string_value(json_object_get(s->details, "estimator_reason")),
                           "memory budget"));
    assert_string_equal(find(sc, ns, "sgdc", TPV_SPLIT_PROBE)->estimator, "exact");
    json_decref(st);
    tpv_scores_free(sc, ns);
    /* unridged label: only the eigendecomposition is exact, so past it matrix-free */
    m[0].ridge = 0;
    assert_int_equal(tpv_estimate_plan(&in, &none, &need_exact, &err), TPV_OK);
    mem.max_memory = need_exact - 1;
    if (tpv_estimate_scores(&in, &mem, &sc, &ns, &st, NULL, &err)) fail_msg("%s", err.message);
    s = find(sc, ns, "label", TPV_SPLIT_PROBE);
    assert_string_equal(s->estimator, "hutchinson");
    assert_string_equal(json_string_value(json_object_get(s->details, "path")), "matrix_free");
    assert_non_null(strstr(json_string_value(json_object_get(s->details, "estimator_reason")),
                           "memory"));
    json_decref(st);
    tpv_scores_free(sc, ns);
    tpv_jsrc_free(d->fit);
    tpv_jsrc_free(d->probe);
    free(d);
}

static int calls_left;
static int cancel_cb(void *ctx, double f)
{
    (void)ctx;
    (void)f;
    return --calls_left < 0;
}

/* A cancel asked at the k-th progress call returns TPV_ECANCELED from inside the Krylov loop. */
static void test_cancel_inside(void **state)
{
    (void)state;
    struct dumps *d = calloc(1, sizeof *d);
    open_dumps(d, 61);
    struct tpv_progress pg = { cancel_cb, NULL };
    int ks[] = { 0, 1, 5, 40 };
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        for (int ridge = 0; ridge < 2; ridge++) {
            struct tpv_mf_opts o = { .seed = 1, .max_samples = 100, .rho = ridge ? 0.5 : 0,
                                     .rcond = 1e-10 };
            struct tpv_mf_result r;
            struct tpv_err err;
            calls_left = ks[i];
            assert_int_equal(tpv_label_mf(d->fit, d->probe, &o, &r, &pg, &err), TPV_ECANCELED);
            calls_left = ks[i];
            assert_int_equal(tpv_sgdc_mf(d->fit, NULL, &o, &r, &pg, &err), TPV_ECANCELED);
        }
    }
    tpv_jsrc_free(d->fit);
    tpv_jsrc_free(d->probe);
    free(d);
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Asks for a cancel `delay` seconds of wall time after the reported fraction first reaches `at`
 * (a user's DELETE arriving while the job runs): the callback says "stop" from then on, and the
 * lag is measured from that moment, not from the callback's next call, so a phase that does not
 * call back (LAPACK) shows up as lag. */
struct timed_cancel {
    double at, delay, reached, deadline;
    int calls;
};

static int timed_cb(void *ctx, double f)
{
    struct timed_cancel *c = ctx;
    c->calls++;
    double t = mono();
    if (f >= c->at && c->reached == 0) {
        c->reached = t;
        c->deadline = t + c->delay;
    }
    return c->reached != 0 && t >= c->deadline;
}

/* A label job on a dump with nK = 2100 (the exact path's eigendecomposition takes seconds here)
 * canceled in the Gram phase, 0.2 s and 0.6 s into the eigendecomposition (which the job's cost
 * model puts at fraction eig0), and twice in the matrix-free Krylov loop: each returns
 * TPV_ECANCELED within 1 s of the cancel request.  Before the eigendecomposition ran on a helper
 * thread, the two mid-eigendecomposition cancels waited for LAPACK to finish. */
static void test_cancel_lands_within_a_second(void **state)
{
    (void)state;
    enum { N = 700, M = 100, K = 3, P = 250 };
    double *Jf = malloc((size_t)N * K * P * sizeof *Jf), *Jp = malloc((size_t)M * K * P * sizeof *Jp);
    fill_normal(Jf, (size_t)N * K * P, 71);
    fill_normal(Jp, (size_t)M * K * P, 72);
    uint64_t sf[3] = { N, K, P }, sp[3] = { M, K, P };
    struct tpv_tensor tf = tview("", TPV_DTYPE_F64, Jf, 3, sf), tp = tview("", TPV_DTYPE_F64, Jp, 3, sp);
    const struct tpv_tensor *a[1] = { &tf }, *b[1] = { &tp };
    struct tpv_jsrc *fit, *probe;
    struct tpv_err err;
    assert_int_equal(tpv_dump_from_tensors(&fit, a, 1, NULL, 0, NULL, 0, &err), TPV_OK);
    assert_int_equal(tpv_dump_from_tensors(&probe, b, 1, NULL, 0, NULL, 0, &err), TPV_OK);
    /* the job's progress shares (estimate.c): sqdiag N p + M p, Gram N^2 p / 10, K_X M N p / 5,
     * then the eigendecomposition */
    double rn = (double)N * K, rm = (double)M * K, p = P;
    double before = rn * p + rm * p + rn * rn * p / 10 + rm * rn * p / 5;
    double eig0 = before / (before + rn * rn * rn);
    struct {
        enum tpv_estimator est;
        double at, delay;
    } pts[] = { { TPV_EST_EXACT, 1e-6, 0 },       { TPV_EST_EXACT, eig0, 0.2 },
                { TPV_EST_EXACT, eig0, 0.6 },     { TPV_EST_HUTCHINSON, 0.001, 0.1 },
                { TPV_EST_HUTCHINSON, 0.001, 0.5 } };
    for (size_t i = 0; i < sizeof pts / sizeof pts[0]; i++) {
        struct tpv_noise m = mk(TPV_NOISE_LABEL, "label", pts[i].est);
        m.ridge_rel = 0.1;
        m.target_rel_error = 0.0001;
        struct tpv_est_inputs in = { .fit = fit, .probe = probe, .models = &m, .nmodels = 1 };
        struct tpv_run_options opts = { 0, 0 };
        struct timed_cancel c = { .at = pts[i].at, .delay = pts[i].delay };
        struct tpv_progress pg = { timed_cb, &c };
        struct tpv_score *sc;
        size_t ns;
        json_t *st;
        int rc = tpv_estimate_scores(&in, &opts, &sc, &ns, &st, &pg, &err);
        double lag = mono() - c.deadline;
        print_message("cancel %.2f s after fraction %.4g (%s): %d progress calls, returned %.3f s "
                      "after the request\n", pts[i].delay, pts[i].at,
                      tpv_estimator_name(pts[i].est), c.calls, lag);
        if (rc == TPV_OK)
            fail_msg("the job finished before its cancel point");
        assert_int_equal(rc, TPV_ECANCELED);
        assert_true(lag < 1.0);
    }
    /* the abandoned eigendecompositions finish and free their buffers */
    for (int t = 0; t < 1200 && tpv_syevd_abandoned() > 0; t++)
        usleep(100000);
    assert_int_equal(tpv_syevd_abandoned(), 0);
    tpv_jsrc_free(fit);
    tpv_jsrc_free(probe);
    free(Jf);
    free(Jp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cg_residual),        cmocka_unit_test(test_pcg),
        cmocka_unit_test(test_dump_block_ops),        cmocka_unit_test(test_dump_matches_exact),
        cmocka_unit_test(test_rank_deficient_cut), cmocka_unit_test(test_mlp_matches_exact),
        cmocka_unit_test(test_auto_choice),        cmocka_unit_test(test_cancel_inside),
        cmocka_unit_test(test_cancel_lands_within_a_second),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
