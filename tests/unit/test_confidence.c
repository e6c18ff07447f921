/* test_confidence.c: per-input contributions of every exact score (DESIGN.md section 5,
 * Confidence) over Jacobian dumps and MLP sources: their mean is the score to 1e-12, each
 * contribution equals the score of a one-input subset (probe split: every model; fit split: the
 * diagonal family and prune, whose operators do not depend on the fit set) or a naive loop
 * (sgd_curvature's leave-self-out fit rows), stderr_inputs is their standard error, and the
 * paired comparison tpv_p_lower against closed forms. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/confidence.h"
#include "core/dump.h"
#include "core/estimate.h"
#include "core/mlp_source.h"
#include "num_helpers.h"
#include "tests/unit/mlp_testnet.h"

static struct tpv_noise mk(enum tpv_noise_kind kind, const char *name)
{
    struct tpv_noise nm;
    memset(&nm, 0, sizeof nm);
    snprintf(nm.name, sizeof nm.name, "%s", name);
    nm.kind = kind;
    nm.residual_variance = 1.0;
    nm.rcond = 1e-10;
    nm.target_rel_error = 0.01;
    nm.max_samples = 1000;
    nm.sigma = 0.3;
    nm.lr = 0.5;
    nm.batch_size = 4;
    nm.bits = 4;
    return nm;
}

/* Every exact model of DESIGN.md section 3 (variances for "diag" in extra[5]). */
enum { NM = 11 };
static void all_models(struct tpv_noise *m, struct tpv_model_inputs *extra, const double *var)
{
    m[0] = mk(TPV_NOISE_ISOTROPIC, "iso");
    m[1] = mk(TPV_NOISE_SGD, "sgd");
    m[2] = mk(TPV_NOISE_QUANTIZATION, "qg");
    m[3] = mk(TPV_NOISE_QUANTIZATION, "qt");
    m[3].scope = TPV_SCOPE_PER_TENSOR;
    m[4] = mk(TPV_NOISE_QUANTIZATION, "qc");
    m[4].scope = TPV_SCOPE_PER_CHANNEL;
    m[5] = mk(TPV_NOISE_DIAGONAL, "diag");
    m[6] = mk(TPV_NOISE_LABEL, "label");
    m[7] = mk(TPV_NOISE_LABEL, "ridge");
    m[7].ridge = 0.05;
    m[8] = mk(TPV_NOISE_LABEL, "ridge_rel");
    m[8].ridge_rel = 0.1;
    m[9] = mk(TPV_NOISE_SGD_CURVATURE, "sgdc");
    m[10] = mk(TPV_NOISE_PRUNE, "prune");
    m[10].prune_rule_magnitude = true, m[10].fraction = 0.3;
    memset(extra, 0, NM * sizeof *extra);
    extra[5].variances = var;
}

static bool fit_operator_free(enum tpv_noise_kind k)
{
    return k != TPV_NOISE_LABEL && k != TPV_NOISE_SGD_CURVATURE;
}

static void run(const struct tpv_est_inputs *in, struct tpv_score **sc, size_t *ns)
{
    struct tpv_err err;
    json_t *st = NULL;
    int rc = tpv_estimate_scores(in, NULL, sc, ns, &st, NULL, &err);
    if (rc)
        fail_msg("estimate: %d %s", rc, err.message);
    json_decref(st);
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

/* The invariants of one score: n contributions, mean = value (1e-12 relative), stderr. */
static void check_mean(const struct tpv_score *s, size_t n)
{
    if (!s->per_input)
        fail_msg("%s/%s has no contributions", s->noise, tpv_split_name(s->split));
    assert_int_equal(s->n_inputs, n);
    double mean = 0, ss = 0;
    for (size_t i = 0; i < n; i++)
        mean += s->per_input[i];
    mean /= (double)n;
    if (relerr(mean, s->value) > 1e-12)
        fail_msg("%s/%s: mean %.17g vs value %.17g", s->noise, tpv_split_name(s->split), mean,
                 s->value);
    for (size_t i = 0; i < n; i++)
        ss += (s->per_input[i] - mean) * (s->per_input[i] - mean);
    double se = n > 1 ? sqrt(ss / (double)(n - 1) / (double)n) : 0;
    assert_true(fabs(s->stderr_inputs - se) <= 1e-12 * (se + fabs(mean)));
    assert_true(s->stderr_inputs > 0); /* the inputs of these tests all differ */
}

/* ---- dumps ---- */

enum { RN = 6, RM = 5, RK = 2, RP = 30 };
static const char *const rlay[3] = { "b.w", "a.weight", "a.bias" }; /* 6 + 20 + 4 columns */

struct dsrc {
    struct tpv_tensor t;
    const struct tpv_tensor *ts[1];
    uint64_t shape[3];
    struct tpv_jsrc *src;
};

static void open_dump(struct dsrc *f, const double *J, uint64_t n, const struct tpv_tensor *const *ws)
{
    f->shape[0] = n, f->shape[1] = RK, f->shape[2] = RP;
    f->t = tview("", TPV_DTYPE_F64, J, 3, f->shape);
    f->ts[0] = &f->t;
    struct tpv_err err;
    if (tpv_dump_from_tensors(&f->src, f->ts, 1, rlay, 3, ws, 3, &err))
        fail_msg("dump: %s", err.message);
}

/* sgd_curvature's fit row x, leave-self-out: a/(n-1) sum_{j != x} ||J_x J_j^T||_F^2. */
static double naive_sgdc_fit(const double *J, uint64_t n, uint64_t x, double a)
{
    double t = 0;
    for (uint64_t j = 0; j < n; j++) {
        if (j == x)
            continue;
        for (uint64_t k = 0; k < RK; k++)
            for (uint64_t k2 = 0; k2 < RK; k2++) {
                double g = 0;
                for (uint64_t c = 0; c < RP; c++)
                    g += J[(x * RK + k) * RP + c] * J[(j * RK + k2) * RP + c];
                t += g * g;
            }
    }
    return a * t / (double)(n - 1);
}

static void test_dump_contributions(void **state)
{
    (void)state;
    double Jf[RN * RK * RP], Jp[RM * RK * RP], w[RP], var[RP];
    fill_normal(Jf, RN * RK * RP, 31);
    fill_normal(Jp, RM * RK * RP, 32);
    fill_normal(w, RP, 33);
    for (int j = 0; j < RP; j++)
        var[j] = 0.01 * (j + 1);
    static uint64_t sbw[2] = { 2, 3 }, saw[2] = { 4, 5 }, sab[1] = { 4 };
    struct tpv_tensor wv[3] = { tview("b.w", TPV_DTYPE_F64, w, 2, sbw),
                                tview("a.weight", TPV_DTYPE_F64, w + 6, 2, saw),
                                tview("a.bias", TPV_DTYPE_F64, w + 26, 1, sab) };
    const struct tpv_tensor *ws[3] = { &wv[0], &wv[1], &wv[2] };
    struct tpv_noise models[NM];
    struct tpv_model_inputs extra[NM];
    all_models(models, extra, var);
    struct dsrc ff, fp;
    open_dump(&ff, Jf, RN, ws);
    open_dump(&fp, Jp, RM, ws);
    struct tpv_est_inputs in = { ff.src, fp.src, w, false, 0, 0, models, NM, extra, 0 };
    struct tpv_score *sc;
    size_t ns;
    run(&in, &sc, &ns);
    assert_int_equal(ns, 2 * NM);
    for (size_t i = 0; i < ns; i++)
        check_mean(&sc[i], sc[i].split == TPV_SPLIT_FIT ? RN : RM);
    /* Probe split: contribution x is the score of probe = {x}. */
    for (uint64_t x = 0; x < RM; x++) {
        struct dsrc one;
        open_dump(&one, Jp + x * RK * RP, 1, ws);
        struct tpv_est_inputs in1 = in;
        in1.probe = one.src;
        struct tpv_score *s1;
        size_t n1;
        run(&in1, &s1, &n1);
        for (size_t m = 0; m < NM; m++) {
            const struct tpv_score *a = find(sc, ns, models[m].name, TPV_SPLIT_PROBE);
            const struct tpv_score *b = find(s1, n1, models[m].name, TPV_SPLIT_PROBE);
            if (relerr(a->per_input[x], b->value) > 1e-10)
                fail_msg("%s probe input %llu: %.17g vs subset %.17g", models[m].name,
                         (unsigned long long)x, a->per_input[x], b->value);
        }
        tpv_scores_free(s1, n1);
        tpv_jsrc_free(one.src);
    }
    /* Fit split: the models whose operator does not depend on the fit set, by subsets; the
     * leave-self-out sgd_curvature rows by a naive loop. */
    for (uint64_t x = 0; x < RN; x++) {
        struct dsrc one;
        open_dump(&one, Jf + x * RK * RP, 1, ws);
        struct tpv_est_inputs in1 = in;
        in1.fit = one.src;
        in1.probe = NULL;
        struct tpv_score *s1;
        size_t n1;
        run(&in1, &s1, &n1);
        for (size_t m = 0; m < NM; m++) {
            if (!fit_operator_free(models[m].kind))
                continue;
            const struct tpv_score *a = find(sc, ns, models[m].name, TPV_SPLIT_FIT);
            const struct tpv_score *b = find(s1, n1, models[m].name, TPV_SPLIT_FIT);
            if (relerr(a->per_input[x], b->value) > 1e-10)
                fail_msg("%s fit input %llu: %.17g vs subset %.17g", models[m].name,
                         (unsigned long long)x, a->per_input[x], b->value);
        }
        tpv_scores_free(s1, n1);
        tpv_jsrc_free(one.src);
        const struct tpv_score *g = find(sc, ns, "sgdc", TPV_SPLIT_FIT);
        double a = models[9].lr / (2.0 * models[9].batch_size);
        assert_true(relerr(g->per_input[x], naive_sgdc_fit(Jf, RN, x, a)) < 1e-10);
    }
    tpv_scores_free(sc, ns);
    tpv_jsrc_free(ff.src);
    tpv_jsrc_free(fp.src);
}


/* Hutchinson over output projections (K = 2 on these dumps): each sample's part of every probe's
 * form averaged over the probes, for the unweighted form (isotropic); the weighted form
 * (diagonal) cannot be split from sqdiag_projected's sums and reports none (NAN), never a
 * wrong value. */
static void test_hutchinson_contributions(void **state)
{
    (void)state;
    double Jf[RN * RK * RP], Jp[RM * RK * RP], w[RP], var[RP];
    fill_normal(Jf, RN * RK * RP, 41);
    fill_normal(Jp, RM * RK * RP, 42);
    fill_normal(w, RP, 43);
    for (int j = 0; j < RP; j++)
        var[j] = 0.02 * (j % 4 + 1);
    static uint64_t sbw[2] = { 2, 3 }, saw[2] = { 4, 5 }, sab[1] = { 4 };
    struct tpv_tensor wv[3] = { tview("b.w", TPV_DTYPE_F64, w, 2, sbw),
                                tview("a.weight", TPV_DTYPE_F64, w + 6, 2, saw),
                                tview("a.bias", TPV_DTYPE_F64, w + 26, 1, sab) };
    const struct tpv_tensor *ws[3] = { &wv[0], &wv[1], &wv[2] };
    struct tpv_noise models[2] = { mk(TPV_NOISE_ISOTROPIC, "iso"), mk(TPV_NOISE_DIAGONAL, "diag") };
    struct tpv_model_inputs extra[2] = { { 0 }, { .variances = var } };
    for (int i = 0; i < 2; i++) {
        models[i].estimator = TPV_EST_HUTCHINSON;
        models[i].target_rel_error = 0;
        models[i].max_samples = 40;
        models[i].seed = 7;
    }
    struct dsrc ff, fp;
    open_dump(&ff, Jf, RN, ws);
    open_dump(&fp, Jp, RM, ws);
    struct tpv_est_inputs in = { ff.src, fp.src, w, false, 0, 0, models, 2, extra, 0 };
    struct tpv_score *sc;
    size_t ns;
    run(&in, &sc, &ns);
    for (size_t i = 0; i < ns; i++) {
        assert_string_equal(sc[i].estimator, "hutchinson");
        assert_string_equal(json_string_value(json_object_get(sc[i].details, "probes")),
                            "outputs");
        if (strcmp(sc[i].noise, "iso") == 0) {
            check_mean(&sc[i], sc[i].split == TPV_SPLIT_FIT ? RN : RM);
        } else {
            assert_null(sc[i].per_input);
            assert_true(isnan(sc[i].stderr_inputs));
        }
    }
    tpv_scores_free(sc, ns);
    tpv_jsrc_free(ff.src);
    tpv_jsrc_free(fp.src);
}

/* ---- MLP sources ---- */

static void test_mlp_contributions(void **state)
{
    (void)state;
    struct tnet net;
    tnet_init(&net, "[4]", 91);
    tnet_linear(&net, 7, 4, 1);
    tnet_layer(&net, "{\"type\":\"tanh\"}");
    tnet_linear(&net, 3, 7, 1);
    struct tpv_mlp *m = tnet_bind(&net);
    assert_non_null(m);
    const uint64_t nf = 8, np = 5, p = m->layout.p;
    double *xf = tnet_inputs(nf, 4, 5), *xp = tnet_inputs(np, 4, 6);
    double *w = malloc(p * sizeof *w), *var = malloc(p * sizeof *var);
    for (uint64_t j = 0; j < p; j++) {
        w[j] = *tnet_param(&net, j);
        var[j] = 0.02 * (double)(j % 5 + 1);
    }
    struct tpv_tensor tf = tnet_input_tensor(xf, nf, m->input_rank, m->input_shape);
    struct tpv_tensor tp = tnet_input_tensor(xp, np, m->input_rank, m->input_shape);
    struct tpv_jsrc *sf, *sp;
    struct tpv_err err;
    assert_int_equal(tpv_mlp_source_open(&sf, m, &tf, &err), TPV_OK);
    assert_int_equal(tpv_mlp_source_open(&sp, m, &tp, &err), TPV_OK);
    struct tpv_noise models[NM];
    struct tpv_model_inputs extra[NM];
    all_models(models, extra, var);
    struct tpv_est_inputs in = { sf, sp, w, false, 0, 0, models, NM, extra, 0 };
    struct tpv_score *sc;
    size_t ns;
    run(&in, &sc, &ns);
    for (size_t i = 0; i < ns; i++)
        check_mean(&sc[i], sc[i].split == TPV_SPLIT_FIT ? nf : np);
    for (uint64_t x = 0; x < np; x++) {
        struct tpv_tensor t1 = tnet_input_tensor(xp + x * 4, 1, m->input_rank, m->input_shape);
        struct tpv_jsrc *s1src;
        assert_int_equal(tpv_mlp_source_open(&s1src, m, &t1, &err), TPV_OK);
        struct tpv_est_inputs in1 = in;
        in1.probe = s1src;
        struct tpv_score *s1;
        size_t n1;
        run(&in1, &s1, &n1);
        for (size_t k = 0; k < NM; k++) {
            const struct tpv_score *a = find(sc, ns, models[k].name, TPV_SPLIT_PROBE);
            const struct tpv_score *b = find(s1, n1, models[k].name, TPV_SPLIT_PROBE);
            if (relerr(a->per_input[x], b->value) > 1e-10)
                fail_msg("mlp %s probe input %llu: %.17g vs subset %.17g", models[k].name,
                         (unsigned long long)x, a->per_input[x], b->value);
        }
        tpv_scores_free(s1, n1);
        tpv_jsrc_free(s1src);
    }
    tpv_scores_free(sc, ns);
    tpv_jsrc_free(sf);
    tpv_jsrc_free(sp);
    tpv_mlp_free(m);
    tnet_free(&net);
    free(xf);
    free(xp);
    free(w);
    free(var);
}

/* ---- the paired comparison ---- */

static void test_p_lower(void **state)
{
    (void)state;
    double a[4] = { 1, 2, 3, 4 }, b[4] = { 2, 3, 4, 5 };
    assert_true(tpv_p_lower(a, b, 4) == 1.0);  /* d = -1 everywhere: no spread, a below */
    assert_true(tpv_p_lower(b, a, 4) == 0.0);
    assert_true(tpv_p_lower(a, a, 4) == 0.5);
    assert_true(isnan(tpv_p_lower(a, b, 1)));   /* one input: no spread to judge from */
    /* d = {-1, 1, -2, 0}: mean -0.5, sd sqrt(5/3), se sqrt(5/3)/2; P = Phi(0.5 / se). */
    double c[4] = { 0, 2, 0, 1 }, e[4] = { 1, 1, 2, 1 };
    double se = sqrt(5.0 / 3.0) / 2.0, want = 0.5 * erfc(-(0.5 / se) / sqrt(2.0));
    assert_true(fabs(tpv_p_lower(c, e, 4) - want) < 1e-15);
    assert_true(fabs(tpv_p_lower(e, c, 4) - (1 - want)) < 1e-15);
    assert_true(want > 0.7 && want < 0.8); /* 0.7340: within sampling error */
}

static void test_contributions_free(void **state)
{
    (void)state;
    struct tpv_score s;
    memset(&s, 0, sizeof s);
    tpv_score_set_contributions(&s, NULL, 3);
    assert_true(isnan(s.stderr_inputs));
    assert_int_equal(s.n_inputs, 0);
    double *one = malloc(sizeof *one);
    one[0] = 2.5;
    tpv_score_set_contributions(&s, one, 1);
    assert_true(s.stderr_inputs == 0); /* n == 1 */
    free(s.per_input);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_p_lower),
        cmocka_unit_test(test_contributions_free),
        cmocka_unit_test(test_dump_contributions),
        cmocka_unit_test(test_mlp_contributions),
        cmocka_unit_test(test_hutchinson_contributions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
