/* test_estimate.c: noise models and estimators against closed forms and naive implementations:
 * a linear model f(x) = W x (J is the data matrix), random Jacobians against O(p^2) loops, the
 * kernel form of label TPV against Theorem 4.2's SVD form, Hutchinson / Hutch++ against the exact
 * trace, determinism, cancellation and the memory limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <lapacke.h>

#include "core/dump.h"
#include "core/estimate.h"
#include "core/mlp_source.h"
#include "num_helpers.h"

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
    return nm;
}

/* A dump over a row-major (n K) x p double matrix, with an optional layout. */
struct fixture {
    struct tpv_tensor t;
    const struct tpv_tensor *ts[1];
    uint64_t shape[3];
    struct tpv_jsrc *src;
};

static void open_dump(struct fixture *f, const double *J, uint64_t n, uint64_t K, uint64_t p,
                      const char *const *layout, size_t nl, const struct tpv_tensor *const *ws,
                      size_t nw)
{
    f->shape[0] = n, f->shape[1] = K, f->shape[2] = p;
    f->t = tview("", TPV_DTYPE_F64, J, 3, f->shape);
    f->ts[0] = &f->t;
    struct tpv_err err;
    int rc = tpv_dump_from_tensors(&f->src, f->ts, 1, layout, nl, ws, nw, &err);
    if (rc)
        fail_msg("dump: %s", err.message);
}

/* H = J^T J / n (p x p). */
static double *naive_H(const double *J, uint64_t rows, uint64_t n, uint64_t p)
{
    double *H = calloc(p * p, 8);
    for (uint64_t r = 0; r < rows; r++)
        for (uint64_t a = 0; a < p; a++)
            for (uint64_t b = 0; b < p; b++)
                H[a * p + b] += J[r * p + a] * J[r * p + b] / (double)n;
    return H;
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

static void run(const struct tpv_est_inputs *in, struct tpv_score **sc, size_t *ns, json_t **st)
{
    struct tpv_err err;
    struct tpv_run_options opts = { 0, 0 };
    int rc = tpv_estimate_scores(in, &opts, sc, ns, st, NULL, &err);
    if (rc)
        fail_msg("estimate: %d %s", rc, err.message);
}

/* Gauss-Jordan inverse of a small SPD matrix (naive, for the closed forms). */
static void naive_inverse(double *A, uint64_t n, double *inv)
{
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t j = 0; j < n; j++)
            inv[i * n + j] = i == j;
    for (uint64_t c = 0; c < n; c++) {
        double piv = A[c * n + c];
        for (uint64_t j = 0; j < n; j++) {
            A[c * n + j] /= piv;
            inv[c * n + j] /= piv;
        }
        for (uint64_t r = 0; r < n; r++) {
            if (r == c)
                continue;
            double f = A[r * n + c];
            for (uint64_t j = 0; j < n; j++) {
                A[r * n + j] -= f * A[c * n + j];
                inv[r * n + j] -= f * inv[c * n + j];
            }
        }
    }
}

/* f(x) = W x with W (K x d): J(x)[k, k*d + i] = x_i. */
static double *linear_J(const double *X, uint64_t n, uint64_t K, uint64_t d)
{
    uint64_t p = K * d;
    double *J = calloc(n * K * p, 8);
    for (uint64_t x = 0; x < n; x++)
        for (uint64_t k = 0; k < K; k++)
            for (uint64_t i = 0; i < d; i++)
                J[(x * K + k) * p + k * d + i] = X[x * d + i];
    return J;
}

static void test_linear_closed_forms(void **state)
{
    (void)state;
    enum { n = 5, m = 4, K = 3, d = 6, p = K * d };
    double Xf[n * d], Xp[m * d], W[p], C[p];
    fill_normal(Xf, n * d, 1);
    fill_normal(Xp, m * d, 2);
    fill_normal(W, p, 3);
    for (int j = 0; j < p; j++)
        C[j] = 0.1 + fabs(W[j]) * 0.01;
    double *Jf = linear_J(Xf, n, K, d), *Jp = linear_J(Xp, m, K, d);
    uint64_t wshape[2] = { K, d };
    struct tpv_tensor wv = tview("W", TPV_DTYPE_F64, W, 2, wshape);
    const struct tpv_tensor *ws[1] = { &wv };
    const char *lay[1] = { "W" };
    struct fixture ff, fp;
    open_dump(&ff, Jf, n, K, p, lay, 1, ws, 1);
    open_dump(&fp, Jp, m, K, p, lay, 1, ws, 1);

    struct tpv_noise models[9];
    models[0] = mk(TPV_NOISE_ISOTROPIC, "iso");
    models[0].sigma = 0.1;
    models[1] = mk(TPV_NOISE_SGD, "sgd");
    models[1].lr = 0.1, models[1].batch_size = 32, models[1].residual_variance = 2;
    models[2] = mk(TPV_NOISE_QUANTIZATION, "qch");
    models[2].bits = 4, models[2].scope = TPV_SCOPE_PER_CHANNEL;
    models[3] = mk(TPV_NOISE_QUANTIZATION, "qt");
    models[3].bits = 8, models[3].scope = TPV_SCOPE_PER_TENSOR;
    models[4] = mk(TPV_NOISE_DIAGONAL, "diag");
    models[5] = mk(TPV_NOISE_LABEL, "label");
    models[5].sigma = 0.5;
    models[6] = mk(TPV_NOISE_SGD_CURVATURE, "sgdc");
    models[6].lr = 0.2, models[6].batch_size = 8;
    models[7] = mk(TPV_NOISE_PRUNE, "prune");
    models[7].prune_rule_magnitude = true, models[7].fraction = 0.25;
    models[8] = mk(TPV_NOISE_QUANTIZATION, "qg");
    models[8].bits = 8, models[8].scope = TPV_SCOPE_GLOBAL;
    struct tpv_model_inputs extra[9] = { { 0 } };
    extra[4].variances = C;
    struct tpv_est_inputs in = { ff.src, fp.src, W, false, 0, 0, models, 9, extra, 0 };
    struct tpv_score *sc;
    size_t ns;
    json_t *st;
    run(&in, &sc, &ns, &st);
    assert_int_equal(ns, 18);

    double mxf = 0, mxp = 0; /* mean ||x||^2 */
    for (int i = 0; i < n * d; i++)
        mxf += Xf[i] * Xf[i] / n;
    for (int i = 0; i < m * d; i++)
        mxp += Xp[i] * Xp[i] / m;
    assert_rel(find(sc, ns, "iso", TPV_SPLIT_FIT)->value, 0.01 * K * mxf, 1e-12);
    assert_rel(find(sc, ns, "iso", TPV_SPLIT_PROBE)->value, 0.01 * K * mxp, 1e-12);
    assert_rel(find(sc, ns, "sgd", TPV_SPLIT_FIT)->value, 0.1 * 2 / 64 * K * mxf, 1e-12);
    /* quantization per channel: each row k of W is a channel */
    double q = 0, lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < K; k++) {
        double a = INFINITY, b = -INFINITY;
        for (int i = 0; i < d; i++) {
            a = fmin(a, W[k * d + i]), b = fmax(b, W[k * d + i]);
            lo = fmin(lo, W[k * d + i]), hi = fmax(hi, W[k * d + i]);
        }
        q += pow((b - a) / 15, 2) / 12 * mxf;
    }
    assert_rel(find(sc, ns, "qch", TPV_SPLIT_FIT)->value, q, 1e-12);
    assert_rel(find(sc, ns, "qt", TPV_SPLIT_FIT)->value, pow((hi - lo) / 255, 2) / 12 * K * mxf,
               1e-12);
    assert_rel(find(sc, ns, "qg", TPV_SPLIT_PROBE)->value, pow((hi - lo) / 255, 2) / 12 * K * mxp,
               1e-12);
    /* diagonal: sum_{k,i} c_ki mean x_i^2 */
    double dg = 0;
    for (int k = 0; k < K; k++)
        for (int i = 0; i < d; i++)
            for (int x = 0; x < n; x++)
                dg += C[k * d + i] * Xf[x * d + i] * Xf[x * d + i] / n;
    assert_rel(find(sc, ns, "diag", TPV_SPLIT_FIT)->value, dg, 1e-12);
    /* label: fit = sigma^2 rank / n with rank = K n; probe = sigma^2/m K ||Xp Xf^T (Xf Xf^T)^-1||^2 */
    const struct tpv_score *lf = find(sc, ns, "label", TPV_SPLIT_FIT);
    assert_rel(lf->value, 0.25 * (K * n) / n, 1e-9);
    assert_int_equal(json_integer_value(json_object_get(lf->details, "rank")), K * n);
    double G[n * n], Gi[n * n], KX[m * n];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            G[i * n + j] = 0;
            for (int c = 0; c < d; c++)
                G[i * n + j] += Xf[i * d + c] * Xf[j * d + c];
        }
    naive_inverse(G, n, Gi);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            KX[i * n + j] = 0;
            for (int c = 0; c < d; c++)
                KX[i * n + j] += Xp[i * d + c] * Xf[j * d + c];
        }
    double lp = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double t = 0;
            for (int l = 0; l < n; l++)
                t += KX[i * n + l] * Gi[l * n + j];
            lp += t * t;
        }
    assert_rel(find(sc, ns, "label", TPV_SPLIT_PROBE)->value, 0.25 / m * K * lp, 1e-8);
    /* sgd_curvature */
    double a = 0.2 / 16, tr = 0, lso = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            tr += KX[i * n + j] * KX[i * n + j];
    assert_rel(find(sc, ns, "sgdc", TPV_SPLIT_PROBE)->value, a * K * tr / (m * n), 1e-12);
    double Gf[n * n];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            Gf[i * n + j] = 0;
            for (int c = 0; c < d; c++)
                Gf[i * n + j] += Xf[i * d + c] * Xf[j * d + c];
            if (i != j)
                lso += K * Gf[i * n + j] * Gf[i * n + j];
        }
    const struct tpv_score *sf = find(sc, ns, "sgdc", TPV_SPLIT_FIT);
    assert_rel(sf->value, a * lso / (n * (n - 1)), 1e-12);
    assert_true(json_real_value(json_object_get(sf->details, "with_self")) > sf->value);
    /* prune: floor(0.25 * 18) = 4 smallest |W| (all distinct here) */
    int idx[p];
    for (int j = 0; j < p; j++)
        idx[j] = j;
    for (int i = 1; i < p; i++)
        for (int j = i; j > 0 && fabs(W[idx[j]]) < fabs(W[idx[j - 1]]); j--) {
            int t = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = t;
        }
    double dw[p] = { 0 };
    for (int i = 0; i < 4; i++)
        dw[idx[i]] = -W[idx[i]];
    double pr = 0;
    for (int x = 0; x < m; x++)
        for (int k = 0; k < K; k++) {
            double t = 0;
            for (int i = 0; i < d; i++)
                t += dw[k * d + i] * Xp[x * d + i];
            pr += t * t / m;
        }
    const struct tpv_score *pp = find(sc, ns, "prune", TPV_SPLIT_PROBE);
    assert_rel(pp->value, pr, 1e-12);
    assert_int_equal(json_integer_value(json_object_get(pp->details, "pruned")), 4);
    /* every score: exact, seed, details */
    for (size_t i = 0; i < ns; i++) {
        assert_string_equal(sc[i].estimator, "exact");
        assert_true(sc[i].stderr_value == 0);
        assert_non_null(json_object_get(sc[i].details, "estimator_reason"));
    }
    /* stability: sigma-free ratio of traces */
    assert_rel(json_real_value(json_object_get(st, "isotropic_ratio")), mxp / mxf, 1e-12);
    assert_int_equal(json_integer_value(json_object_get(st, "n_fit")), n);
    assert_int_equal(json_integer_value(json_object_get(st, "n_probe")), m);
    assert_true(json_is_true(json_object_get(st, "small_n_warning")));
    tpv_scores_free(sc, ns);
    json_decref(st);
    tpv_jsrc_free(ff.src);
    tpv_jsrc_free(fp.src);
    free(Jf), free(Jp);
}

/* Random Jacobians with three blocks whose column order is not lexicographic, weights with ties,
 * against naive p x p matrices. */
enum { RN = 6, RM = 5, RK = 2, RP = 30 };
static const char *const rlay[3] = { "b.w", "a.weight", "a.bias" }; /* 6 + 20 + 4 columns */

static void random_setup(double *Jf, double *Jp, double *w, struct tpv_tensor *wv)
{
    fill_normal(Jf, RN * RK * RP, 21);
    fill_normal(Jp, RM * RK * RP, 22);
    fill_normal(w, RP, 23);
    for (int j = 0; j < RP; j++) /* many ties in |w| */
        w[j] = round(w[j] * 2) / 2 + (j % 7 == 0 ? 0.25 : 0);
    static uint64_t sbw[2] = { 2, 3 }, saw[2] = { 4, 5 }, sab[1] = { 4 };
    wv[0] = tview("b.w", TPV_DTYPE_F64, w, 2, sbw);
    wv[1] = tview("a.weight", TPV_DTYPE_F64, w + 6, 2, saw);
    wv[2] = tview("a.bias", TPV_DTYPE_F64, w + 26, 1, sab);
}

static double tr_HC(const double *H, const double *c, uint64_t p)
{
    double t = 0;
    for (uint64_t j = 0; j < p; j++)
        t += H[j * p + j] * c[j];
    return t;
}

static void test_random_vs_naive(void **state)
{
    (void)state;
    double Jf[RN * RK * RP], Jp[RM * RK * RP], w[RP], var[RP];
    struct tpv_tensor wv[3];
    random_setup(Jf, Jp, w, wv);
    for (int j = 0; j < RP; j++)
        var[j] = 0.01 * (j + 1);
    const struct tpv_tensor *ws[3] = { &wv[0], &wv[1], &wv[2] };
    struct fixture ff, fp;
    open_dump(&ff, Jf, RN, RK, RP, rlay, 3, ws, 3);
    open_dump(&fp, Jp, RM, RK, RP, rlay, 3, ws, 3);
    struct tpv_noise models[8];
    models[0] = mk(TPV_NOISE_QUANTIZATION, "qg");
    models[0].bits = 3;
    models[1] = mk(TPV_NOISE_QUANTIZATION, "qt");
    models[1].bits = 3, models[1].scope = TPV_SCOPE_PER_TENSOR;
    models[2] = mk(TPV_NOISE_QUANTIZATION, "qc");
    models[2].bits = 3, models[2].scope = TPV_SCOPE_PER_CHANNEL;
    models[3] = mk(TPV_NOISE_DIAGONAL, "diag");
    models[4] = mk(TPV_NOISE_SGD_CURVATURE, "sgdc");
    models[4].lr = 1, models[4].batch_size = 0.5;
    models[5] = mk(TPV_NOISE_PRUNE, "pg");
    models[5].prune_rule_magnitude = true, models[5].fraction = 0.4;
    models[6] = mk(TPV_NOISE_PRUNE, "pt");
    models[6].prune_rule_magnitude = true, models[6].fraction = 0.4;
    models[6].scope = TPV_SCOPE_PER_TENSOR;
    models[7] = mk(TPV_NOISE_PRUNE, "pm");
    double mask[RP] = { 0 };
    mask[1] = 1, mask[29] = 1, mask[10] = 0.5;
    struct tpv_model_inputs extra[8] = { { 0 } };
    extra[3].variances = var;
    extra[7].mask = mask;
    struct tpv_est_inputs in = { ff.src, fp.src, w, false, 0, 0, models, 8, extra, 0 };
    struct tpv_score *sc;
    size_t ns;
    json_t *st;
    run(&in, &sc, &ns, &st);
    double *Hf = naive_H(Jf, RN * RK, RN, RP), *Hp = naive_H(Jp, RM * RK, RM, RP);
    /* quantization groups, naive */
    double cg[RP], ct[RP], cc[RP];
    struct { int off, count, rows; } blk[3] = { { 0, 6, 2 }, { 6, 20, 4 }, { 26, 4, 1 } };
    double glo = INFINITY, ghi = -INFINITY;
    for (int j = 0; j < RP; j++)
        glo = fmin(glo, w[j]), ghi = fmax(ghi, w[j]);
    for (int b = 0; b < 3; b++) {
        double lo = INFINITY, hi = -INFINITY;
        for (int e = 0; e < blk[b].count; e++)
            lo = fmin(lo, w[blk[b].off + e]), hi = fmax(hi, w[blk[b].off + e]);
        int per = blk[b].count / blk[b].rows;
        for (int r = 0; r < blk[b].rows; r++) {
            double clo = INFINITY, chi = -INFINITY;
            for (int e = 0; e < per; e++)
                clo = fmin(clo, w[blk[b].off + r * per + e]), chi = fmax(chi, w[blk[b].off + r * per + e]);
            for (int e = 0; e < per; e++)
                cc[blk[b].off + r * per + e] = pow((chi - clo) / 7, 2) / 12;
        }
        for (int e = 0; e < blk[b].count; e++) {
            ct[blk[b].off + e] = pow((hi - lo) / 7, 2) / 12;
            cg[blk[b].off + e] = pow((ghi - glo) / 7, 2) / 12;
        }
    }
    assert_rel(find(sc, ns, "qg", TPV_SPLIT_FIT)->value, tr_HC(Hf, cg, RP), 1e-12);
    assert_rel(find(sc, ns, "qt", TPV_SPLIT_PROBE)->value, tr_HC(Hp, ct, RP), 1e-12);
    assert_rel(find(sc, ns, "qc", TPV_SPLIT_FIT)->value, tr_HC(Hf, cc, RP), 1e-12);
    assert_rel(find(sc, ns, "qc", TPV_SPLIT_PROBE)->value, tr_HC(Hp, cc, RP), 1e-12);
    assert_rel(find(sc, ns, "diag", TPV_SPLIT_PROBE)->value, tr_HC(Hp, var, RP), 1e-12);
    /* sgd_curvature probe = lr/(2B) Tr(H_p H_f) */
    double thh = 0;
    for (int a = 0; a < RP; a++)
        for (int b = 0; b < RP; b++)
            thh += Hp[a * RP + b] * Hf[b * RP + a];
    assert_rel(find(sc, ns, "sgdc", TPV_SPLIT_PROBE)->value, thh, 1e-12);
    /* fit: leave-self-out over sample pairs, naive loop */
    double lso = 0;
    for (int i = 0; i < RN; i++)
        for (int j = 0; j < RN; j++) {
            if (i == j)
                continue;
            for (int k = 0; k < RK; k++)
                for (int l = 0; l < RK; l++) {
                    double g = 0;
                    for (int c = 0; c < RP; c++)
                        g += Jf[(i * RK + k) * RP + c] * Jf[(j * RK + l) * RP + c];
                    lso += g * g;
                }
        }
    assert_rel(find(sc, ns, "sgdc", TPV_SPLIT_FIT)->value, lso / (RN * (RN - 1)), 1e-12);
    /* prune, naive rule: candidates in lexicographic tensor order (a.weight, then b.w), entries
     * row-major, stable-sorted by |w| */
    for (int variant = 0; variant < 3; variant++) {
        double dw[RP] = { 0 };
        if (variant == 2) {
            for (int j = 0; j < RP; j++)
                dw[j] = -mask[j] * w[j];
        } else {
            int cand[26], nc = 0;
            int order[2] = { 1, 0 }; /* a.weight, b.w */
            for (int bi = 0; bi < 2; bi++) {
                int b = order[bi], start = nc;
                for (int e = 0; e < blk[b].count; e++)
                    cand[nc++] = blk[b].off + e;
                if (variant == 1) { /* per tensor */
                    for (int i = start + 1; i < nc; i++)
                        for (int j = i; j > start && fabs(w[cand[j]]) < fabs(w[cand[j - 1]]); j--) {
                            int t = cand[j];
                            cand[j] = cand[j - 1];
                            cand[j - 1] = t;
                        }
                    int take = (int)floor(0.4 * blk[b].count);
                    for (int i = 0; i < take; i++)
                        dw[cand[start + i]] = -w[cand[start + i]];
                }
            }
            if (variant == 0) {
                for (int i = 1; i < nc; i++)
                    for (int j = i; j > 0 && fabs(w[cand[j]]) < fabs(w[cand[j - 1]]); j--) {
                        int t = cand[j];
                        cand[j] = cand[j - 1];
                        cand[j - 1] = t;
                    }
                for (int i = 0; i < (int)floor(0.4 * nc); i++)
                    dw[cand[i]] = -w[cand[i]];
            }
        }
        double v = 0;
        for (int a = 0; a < RP; a++)
            for (int b = 0; b < RP; b++)
                v += dw[a] * Hf[a * RP + b] * dw[b];
        const char *nm = variant == 0 ? "pg" : variant == 1 ? "pt" : "pm";
        assert_rel(find(sc, ns, nm, TPV_SPLIT_FIT)->value, v, 1e-12);
    }
    /* the mask function directly: exact tie handling */
    double mk1[RP];
    uint64_t pruned;
    struct tpv_err err;
    assert_int_equal(tpv_prune_magnitude_mask(&ff.src->layout, w, 0.4, TPV_SCOPE_GLOBAL, mk1,
                                              &pruned, &err), 0);
    assert_int_equal(pruned, 10);
    for (int j = 26; j < RP; j++)
        assert_true(mk1[j] == 0); /* biases never pruned */
    tpv_scores_free(sc, ns);
    json_decref(st);
    free(Hf), free(Hp);
    tpv_jsrc_free(ff.src);
    tpv_jsrc_free(fp.src);
}

/* Label TPV: kernel form vs Theorem 4.2 (sigma^2 sum_i B_ii / s_i^2, B = V^T H_eff(X) V). */
static void test_label_svd_form(void **state)
{
    (void)state;
    enum { n = 7, m = 9, K = 2, p = 40, N = n * K };
    double Jf[N * p], Jp[m * K * p];
    fill_normal(Jf, N * p, 31);
    fill_normal(Jp, m * K * p, 32);
    struct fixture ff, fp;
    open_dump(&ff, Jf, n, K, p, NULL, 0, NULL, 0);
    open_dump(&fp, Jp, m, K, p, NULL, 0, NULL, 0);
    struct tpv_noise models[3];
    models[0] = mk(TPV_NOISE_LABEL, "plain");
    models[0].sigma = 0.3;
    models[1] = mk(TPV_NOISE_LABEL, "ridge");
    models[1].sigma = 0.3, models[1].ridge = 2.5;
    models[2] = mk(TPV_NOISE_LABEL, "rel");
    models[2].sigma = 0.3, models[2].ridge_rel = 0.05;
    struct tpv_est_inputs in = { ff.src, fp.src, NULL, false, 0, 0, models, 3, NULL, 0 };
    struct tpv_score *sc;
    size_t ns;
    json_t *st;
    run(&in, &sc, &ns, &st);
    double A[N * p], s[N], U[N * N], Vt[N * p], superb[N];
    memcpy(A, Jf, sizeof A);
    assert_int_equal(LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'S', N, p, A, p, s, U, N, Vt, p, superb), 0);
    double trG = 0;
    for (int i = 0; i < N; i++)
        trG += s[i] * s[i];
    double rhos[3] = { 0, 2.5, 0.05 * trG / N };
    for (int v = 0; v < 3; v++) {
        double t = 0;
        for (int i = 0; i < N; i++) {
            double b = 0; /* B_ii = (1/m) ||J_p v_i||^2 */
            for (int r = 0; r < m * K; r++) {
                double y = 0;
                for (int c = 0; c < p; c++)
                    y += Jp[r * p + c] * Vt[i * p + c];
                b += y * y / m;
            }
            double l = s[i] * s[i];
            t += v == 0 ? b / l : b * l / ((l + rhos[v]) * (l + rhos[v]));
        }
        const char *nm = v == 0 ? "plain" : v == 1 ? "ridge" : "rel";
        const struct tpv_score *x = find(sc, ns, nm, TPV_SPLIT_PROBE);
        assert_rel(x->value, 0.09 * t, 1e-9);
        assert_rel(json_real_value(json_object_get(x->details, "rho")), rhos[v], 1e-12);
        assert_rel(json_real_value(json_object_get(x->details, "lambda_max")), s[0] * s[0], 1e-10);
    }
    assert_rel(find(sc, ns, "plain", TPV_SPLIT_FIT)->value, 0.09 * N / n, 1e-9);
    tpv_scores_free(sc, ns);
    json_decref(st);
    tpv_jsrc_free(ff.src);
    tpv_jsrc_free(fp.src);
}

static double exact_trace(const struct tpv_jsrc *s, const double *c)
{
    double *d = calloc(s->p, 8), t = 0;
    struct tpv_err err;
    assert_int_equal(s->ops->sqdiag(s, d, NULL, &err), 0);
    for (uint64_t j = 0; j < s->p; j++)
        t += c ? c[j] * d[j] : d[j];
    free(d);
    return t;
}

static void test_hutchinson_converges(void **state)
{
    (void)state;
    enum { n = 20, K = 3, p = 200 };
    double *J = malloc(n * K * p * 8), c[p];
    fill_normal(J, n * K * p, 41);
    for (int j = 0; j < p; j++)
        c[j] = 0.5 + (j % 5);
    struct fixture f;
    open_dump(&f, J, n, K, p, NULL, 0, NULL, 0);
    double ex = exact_trace(f.src, NULL), exc = exact_trace(f.src, c);
    struct tpv_err err;
    for (uint64_t seed = 1; seed <= 6; seed++) {
        struct tpv_trace_opts o = { seed, 0, 0.02, 2000, 0 };
        struct tpv_trace_result r;
        assert_int_equal(tpv_trace_hutchinson(f.src, NULL, &o, &r, NULL, &err), 0);
        assert_true(r.converged);
        assert_true(r.stderr_value > 0);
        assert_true(fabs(r.value - ex) < 4 * r.stderr_value);
        assert_int_equal(tpv_trace_hutchinson(f.src, c, &o, &r, NULL, &err), 0);
        assert_true(fabs(r.value - exc) < 4 * r.stderr_value);
        assert_int_equal(tpv_trace_hutchinson_outputs(f.src, c, &o, &r, NULL, &err), 0);
        assert_true(r.converged);
        assert_true(fabs(r.value - exc) < 4 * r.stderr_value);
        o.max_samples = 300;
        o.target_rel_error = 0.005;
        assert_int_equal(tpv_trace_hutchpp(f.src, c, &o, &r, NULL, &err), 0);
        assert_int_equal(r.sketch, 100);
        assert_true(fabs(r.value - exc) < 4 * r.stderr_value + 1e-12 * exc);
    }
    /* through the scoring pipeline */
    struct tpv_noise models[2];
    models[0] = mk(TPV_NOISE_ISOTROPIC, "iso");
    models[0].sigma = 2, models[0].estimator = TPV_EST_HUTCHINSON, models[0].seed = 9;
    models[1] = mk(TPV_NOISE_SGD, "sgd");
    models[1].lr = 0.5, models[1].batch_size = 4, models[1].estimator = TPV_EST_HUTCHPP;
    models[1].max_samples = 60;
    struct tpv_est_inputs in = { f.src, NULL, NULL, false, 0, 0, models, 2, NULL, 0 };
    struct tpv_score *sc;
    size_t ns;
    json_t *st;
    run(&in, &sc, &ns, &st);
    assert_string_equal(sc[0].estimator, "hutchinson");
    assert_true(sc[0].samples >= 8 && sc[0].stderr_value > 0);
    assert_int_equal(sc[0].seed, 9);
    assert_string_equal(json_string_value(json_object_get(sc[0].details, "probes")), "outputs");
    assert_true(fabs(sc[0].value - 4 * ex / n) < 4 * sc[0].stderr_value);
    assert_string_equal(sc[1].estimator, "hutchpp");
    assert_true(fabs(sc[1].value - 0.0625 * ex / n) < 4 * sc[1].stderr_value);
    tpv_scores_free(sc, ns);
    json_decref(st);
    tpv_jsrc_free(f.src);
    free(J);
}

/* On a low-rank-plus-small operator Hutch++ beats Hutchinson at the same number of probes. */
static void test_hutchpp_beats_hutchinson(void **state)
{
    (void)state;
    enum { rows = 40, p = 300, r = 5 };
    double *J = malloc(rows * p * 8), U[rows * r], V[r * p];
    fill_normal(U, rows * r, 51);
    fill_normal(V, r * p, 52);
    fill_normal(J, rows * p, 53);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < p; j++) {
            double t = 0;
            for (int k = 0; k < r; k++)
                t += U[i * r + k] * V[k * p + j] * (k + 1);
            J[i * p + j] = t + 0.01 * J[i * p + j];
        }
    struct fixture f;
    open_dump(&f, J, rows, 1, p, NULL, 0, NULL, 0);
    double ex = exact_trace(f.src, NULL), eh = 0, epp = 0;
    struct tpv_err err;
    for (uint64_t seed = 1; seed <= 8; seed++) {
        struct tpv_trace_opts o = { seed, 0, 0, 30, 0 };
        struct tpv_trace_result a, b;
        assert_int_equal(tpv_trace_hutchinson(f.src, NULL, &o, &a, NULL, &err), 0);
        assert_int_equal(tpv_trace_hutchpp(f.src, NULL, &o, &b, NULL, &err), 0);
        assert_int_equal(a.samples, 30);
        assert_int_equal(b.samples, 20); /* sketch 10 + 10 remainder probes (+10 sketch matvecs) */
        eh += fabs(a.value - ex);
        epp += fabs(b.value - ex);
    }
    print_message("mean abs error: hutchinson %.3g, hutch++ %.3g (trace %.3g)\n", eh / 8, epp / 8, ex);
    assert_true(epp < 0.1 * eh);
    tpv_jsrc_free(f.src);
    free(J);
}

static struct tpv_noise all_models[9];
static double all_var[RP], all_mask[RP];

static void all_setup(struct tpv_noise *models, struct tpv_model_inputs *extra)
{
    models[0] = mk(TPV_NOISE_ISOTROPIC, "iso");
    models[0].sigma = 1;
    models[1] = mk(TPV_NOISE_ISOTROPIC, "iso_h");
    models[1].sigma = 1, models[1].estimator = TPV_EST_HUTCHINSON, models[1].max_samples = 50;
    models[1].seed = 77;
    models[2] = mk(TPV_NOISE_QUANTIZATION, "q");
    models[2].bits = 8, models[2].scope = TPV_SCOPE_PER_CHANNEL;
    models[3] = mk(TPV_NOISE_SGD, "sgd");
    models[3].lr = 0.1, models[3].batch_size = 16, models[3].estimator = TPV_EST_HUTCHPP;
    models[3].max_samples = 30;
    models[4] = mk(TPV_NOISE_SGD_CURVATURE, "sgdc");
    models[4].lr = 0.1, models[4].batch_size = 16;
    models[5] = mk(TPV_NOISE_LABEL, "label");
    models[5].sigma = 0.1, models[5].ridge_rel = 0.1;
    models[6] = mk(TPV_NOISE_DIAGONAL, "diag");
    models[7] = mk(TPV_NOISE_PRUNE, "prune");
    models[7].prune_rule_magnitude = true, models[7].fraction = 0.3;
    models[8] = mk(TPV_NOISE_PRUNE, "mask");
    for (int j = 0; j < RP; j++)
        all_var[j] = 1e-3 * j, all_mask[j] = j % 3 == 0;
    memset(extra, 0, 9 * sizeof *extra);
    extra[6].variances = all_var;
    extra[8].mask = all_mask;
}

static void test_determinism(void **state)
{
    (void)state;
    double Jf[RN * RK * RP], Jp[RM * RK * RP], w[RP];
    struct tpv_tensor wv[3];
    random_setup(Jf, Jp, w, wv);
    const struct tpv_tensor *ws[3] = { &wv[0], &wv[1], &wv[2] };
    struct fixture ff, fp;
    open_dump(&ff, Jf, RN, RK, RP, rlay, 3, ws, 3);
    open_dump(&fp, Jp, RM, RK, RP, rlay, 3, ws, 3);
    struct tpv_model_inputs extra[9];
    all_setup(all_models, extra);
    struct tpv_est_inputs in = { ff.src, fp.src, w, false, 0, 0, all_models, 9, extra, 0 };
    struct tpv_score *a, *b;
    size_t na, nb;
    json_t *sa, *sb;
    run(&in, &a, &na, &sa);
    run(&in, &b, &nb, &sb);
    assert_int_equal(na, 18);
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_memory_equal(&a[i].value, &b[i].value, sizeof(double));
        assert_memory_equal(&a[i].stderr_value, &b[i].stderr_value, sizeof(double));
        assert_int_equal(a[i].samples, b[i].samples);
        assert_true(isfinite(a[i].value) && a[i].value >= 0);
        assert_true(a[i].wall_seconds >= 0);
        /* fit before probe, model order */
        assert_int_equal(a[i].split, i % 2);
        assert_string_equal(a[i].noise, all_models[i / 2].name);
    }
    assert_true(json_equal(sa, sb));
    tpv_scores_free(a, na);
    tpv_scores_free(b, nb);
    json_decref(sa);
    json_decref(sb);
    tpv_jsrc_free(ff.src);
    tpv_jsrc_free(fp.src);
}

/* Finite Jacobian entries whose squares overflow (a model that blows up on its inputs) are a
 * numerical error naming the noise model, never a stored inf/NaN. */
static void test_overflow_is_a_numeric_error(void **state)
{
    (void)state;
    double Jf[RN * RK * RP], Jp[RM * RK * RP], w[RP];
    struct tpv_tensor wv[3];
    random_setup(Jf, Jp, w, wv);
    for (size_t i = 0; i < RN * RK * RP; i++)
        Jf[i] *= 1e200;
    const struct tpv_tensor *ws[3] = { &wv[0], &wv[1], &wv[2] };
    struct fixture ff;
    open_dump(&ff, Jf, RN, RK, RP, rlay, 3, ws, 3);
    struct tpv_model_inputs extra[9];
    all_setup(all_models, extra);
    struct tpv_est_inputs in = { ff.src, NULL, w, false, 0, 0, all_models, 1, extra, 0 };
    struct tpv_score *sc = NULL;
    size_t ns = 0;
    json_t *st = NULL;
    struct tpv_err err;
    assert_int_equal(tpv_estimate_scores(&in, NULL, &sc, &ns, &st, NULL, &err), TPV_ENUMERIC);
    assert_non_null(strstr(err.message, all_models[0].name));
    assert_non_null(strstr(err.message, "not finite"));
    assert_null(sc);
    assert_null(st);
    tpv_jsrc_free(ff.src);
}

static int calls_left, calls_seen;
static double last_fraction;
static int cancel_cb(void *ctx, double f)
{
    (void)ctx;
    assert_true(f >= 0 && f <= 1 + 1e-12);
    assert_true(f >= last_fraction - 1e-12); /* monotone */
    last_fraction = f;
    calls_seen++;
    return calls_left-- <= 0;
}

static void test_cancel_and_memory(void **state)
{
    (void)state;
    double Jf[RN * RK * RP], Jp[RM * RK * RP], w[RP];
    struct tpv_tensor wv[3];
    random_setup(Jf, Jp, w, wv);
    const struct tpv_tensor *ws[3] = { &wv[0], &wv[1], &wv[2] };
    struct fixture ff, fp;
    open_dump(&ff, Jf, RN, RK, RP, rlay, 3, ws, 3);
    open_dump(&fp, Jp, RM, RK, RP, rlay, 3, ws, 3);
    struct tpv_model_inputs extra[9];
    all_setup(all_models, extra);
    struct tpv_est_inputs in = { ff.src, fp.src, w, false, 0, 0, all_models, 9, extra, 0 };
    struct tpv_score *sc;
    size_t ns;
    json_t *st;
    struct tpv_err err;
    struct tpv_run_options opts = { 0, 0 };
    struct tpv_progress pg = { cancel_cb, NULL };
    /* count the calls of a full run, then cancel at every point */
    calls_left = 1 << 30, calls_seen = 0, last_fraction = 0;
    assert_int_equal(tpv_estimate_scores(&in, &opts, &sc, &ns, &st, &pg, &err), 0);
    tpv_scores_free(sc, ns);
    json_decref(st);
    int total = calls_seen;
    assert_true(total > 10);
    assert_true(last_fraction > 0.99);
    for (int k = 0; k < total; k += 1 + total / 25) {
        calls_left = k, last_fraction = 0;
        assert_int_equal(tpv_estimate_scores(&in, &opts, &sc, &ns, &st, &pg, &err), TPV_ECANCELED);
        assert_null(sc);
        assert_null(st);
    }
    /* memory: the estimate covers the Gram and eigen workspace, the limit is refused */
    uint64_t bytes;
    assert_int_equal(tpv_estimate_memory(&in, &opts, &bytes, &err), 0);
    uint64_t N = RN * RK;
    assert_true(bytes >= N * N * 8 * 3);
    opts.max_memory = 1000;
    /* under a limit `auto` plans label and sgd_curvature matrix-free: the message gives that
     * plan's size, smaller than the exact one but still over 1000 bytes */
    uint64_t exact_bytes = bytes;
    assert_int_equal(tpv_estimate_plan(&in, &opts, &bytes, &err), TPV_ENOSPACE);
    assert_true(bytes < exact_bytes && bytes > 1000);
    assert_int_equal(tpv_estimate_scores(&in, &opts, &sc, &ns, &st, NULL, &err), TPV_ENOSPACE);
    char expect[64];
    snprintf(expect, sizeof expect, "scoring needs %llu bytes", (unsigned long long)bytes);
    assert_non_null(strstr(err.message, expect));
    assert_non_null(strstr(err.message, "the limit is 1000 bytes"));
    /* servability: missing weights / names / variances name the model */
    in.weights = NULL;
    assert_int_equal(tpv_estimate_memory(&in, NULL, &bytes, &err), TPV_EINVAL);
    assert_string_equal(err.field, "noise_models[2]");
    assert_non_null(strstr(err.message, "'q'"));
    in.weights = w;
    in.extra = NULL;
    assert_int_equal(tpv_estimate_memory(&in, NULL, &bytes, &err), TPV_EINVAL);
    assert_string_equal(err.field, "noise_models[6]");
    tpv_jsrc_free(ff.src);
    tpv_jsrc_free(fp.src);
    /* a flat dump without layout cannot serve per-channel quantization or diagonal */
    open_dump(&ff, Jf, RN, RK, RP, NULL, 0, NULL, 0);
    in.fit = ff.src, in.probe = NULL, in.extra = extra;
    assert_int_equal(tpv_estimate_memory(&in, NULL, &bytes, &err), TPV_EINVAL);
    assert_non_null(strstr(err.message, "layout"));
    /* ... but global quantization with only a weight range can */
    struct tpv_noise q = mk(TPV_NOISE_QUANTIZATION, "qg");
    q.bits = 4;
    struct tpv_est_inputs in2 = { ff.src, NULL, NULL, true, -1, 2, &q, 1, NULL, 0 };
    run(&in2, &sc, &ns, &st);
    assert_rel(sc[0].value, pow(3.0 / 15, 2) / 12 * exact_trace(ff.src, NULL) / RN, 1e-12);
    assert_true(json_object_get(st, "isotropic_ratio") == NULL);
    tpv_scores_free(sc, ns);
    json_decref(st);
    tpv_jsrc_free(ff.src);
    /* probe with other p is refused */
    open_dump(&ff, Jf, RN, RK, RP, NULL, 0, NULL, 0);
    open_dump(&fp, Jp, RM, RK * RP / 10, 10, NULL, 0, NULL, 0);
    assert_int_equal(tpv_jsrc_check_pair(ff.src, fp.src, &err), TPV_EINVAL);
    tpv_jsrc_free(ff.src);
    tpv_jsrc_free(fp.src);
}

/* ---- sizes that overflow 64 bits: refused by the plan whatever the limit ------------------- */

static int never_sqdiag(const struct tpv_jsrc *s, double *diag, const struct tpv_progress *pg,
                        struct tpv_err *err)
{
    (void)s, (void)diag, (void)pg, (void)err;
    fail_msg("a job whose plan overflows must not run");
    return TPV_EINTERNAL;
}

static int never_gram(const struct tpv_jsrc *a, const struct tpv_jsrc *b, double *out,
                      const struct tpv_progress *pg, struct tpv_err *err)
{
    (void)a, (void)b, (void)out, (void)pg, (void)err;
    fail_msg("a job whose plan overflows must not run");
    return TPV_EINTERNAL;
}

static uint64_t no_scratch(const struct tpv_jsrc *s)
{
    (void)s;
    return 0;
}

static void test_plan_overflow(void **state)
{
    (void)state;
    /* A source of n K = 2^33 rows: its Gram matrix has 2^66 entries.  With max_memory 0
     * (unlimited) a saturated plan used to pass and the job then allocated N*N wrapped. */
    static const struct tpv_jsrc_ops fake_ops = { .sqdiag = never_sqdiag, .gram = never_gram,
                                                  .scratch_bytes = no_scratch };
    struct tpv_jsrc big = { .ops = &fake_ops, .n = 1ull << 33, .K = 1, .p = 4 };
    big.layout.p = 4;
    struct tpv_noise lab;
    memset(&lab, 0, sizeof lab);
    snprintf(lab.name, sizeof lab.name, "lab");
    lab.kind = TPV_NOISE_LABEL;
    lab.sigma = 0.1;
    lab.rcond = 1e-10;
    struct tpv_est_inputs in = { .fit = &big, .models = &lab, .nmodels = 1 };
    struct tpv_run_options unlimited = { 0 };
    struct tpv_err err;
    uint64_t need = 0;
    assert_int_equal(tpv_estimate_memory(&in, &unlimited, &need, &err), TPV_ENOSPACE);
    assert_non_null(strstr(err.message, "does not fit in 64-bit sizes"));
    struct tpv_score *sc = NULL;
    size_t ns = 0;
    json_t *st = NULL;
    assert_int_equal(tpv_estimate_scores(&in, &unlimited, &sc, &ns, &st, NULL, &err),
                     TPV_ENOSPACE);
    assert_null(sc);

    /* A model whose work buffers overflow: K = 2^33 outputs after a 2^33-wide hidden layer
     * (built by hand: only the structure is read).  mlp_source's sums used to add to a
     * saturated workspace size and wrap. */
    struct tpv_mlp_layer layers[2];
    memset(layers, 0, sizeof layers);
    layers[0].in = 1;
    layers[0].out = 1ull << 33;
    layers[1].in = 1ull << 33;
    layers[1].out = 1ull << 33;
    struct tpv_mlp m;
    memset(&m, 0, sizeof m);
    m.input_rank = 1;
    m.input_shape[0] = 1;
    m.d = 1;
    m.K = 1ull << 33;
    m.layers = layers;
    m.L = 2;
    m.layout.p = 4;
    double x = 0.5;
    struct tpv_tensor inputs = { .name = "", .dtype = TPV_DTYPE_F64, .rank = 2,
                                 .shape = { 1, 1 }, .numel = 1, .nbytes = 8, .data = &x };
    struct tpv_jsrc *src = NULL;
    assert_int_equal(tpv_mlp_source_open(&src, &m, &inputs, &err), TPV_OK);
    assert_true(src->ops->scratch_bytes(src) == UINT64_MAX);
    struct tpv_noise iso;
    memset(&iso, 0, sizeof iso);
    snprintf(iso.name, sizeof iso.name, "iso");
    iso.kind = TPV_NOISE_ISOTROPIC;
    iso.sigma = 0.1;
    struct tpv_est_inputs min = { .fit = src, .models = &iso, .nmodels = 1 };
    assert_int_equal(tpv_estimate_memory(&min, &unlimited, &need, &err), TPV_ENOSPACE);
    assert_non_null(strstr(err.message, "does not fit in 64-bit sizes"));
    tpv_jsrc_free(src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_closed_forms),   cmocka_unit_test(test_random_vs_naive),
        cmocka_unit_test(test_label_svd_form),        cmocka_unit_test(test_hutchinson_converges),
        cmocka_unit_test(test_hutchpp_beats_hutchinson), cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_cancel_and_memory),
        cmocka_unit_test(test_overflow_is_a_numeric_error),
        cmocka_unit_test(test_plan_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
