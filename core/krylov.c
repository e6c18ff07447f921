/* krylov.c: matrix-free label and sgd_curvature TPV (see krylov.h). */
#include "core/krylov.h"

#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/linalg.h"
#include "core/rng.h"

/* Lanczos steps of the lambda_max pre-run (extreme Ritz values converge first). */
#define LMAX_STEPS 40

/* One run: the sources, options and scratch shared by every sample. */
struct mf {
    const struct tpv_jsrc *fit, *x;
    const struct tpv_mf_opts *o;
    const struct tpv_progress *pg;
    uint64_t N, rows, p, max_iter;
    double tol;
    double frac;            /* progress reported at the next product */
    double *pv;             /* p: J^T u */
    double *t, *y, *r, *d, *q; /* N-vectors (CG / right-hand side) */
    double *probe;          /* rows of x (or N): the projection r */
    double *V;              /* Lanczos basis (max_iter + 1) x N, unridged label only */
    double *alpha, *beta, *dd, *ee, *z; /* tridiagonal and its eigenvectors */
    struct tpv_mf_result *res;
};

/* Forwards cancellation from inside one product at the run's current fraction. */
static int inner_fn(void *ctx, double f)
{
    (void)f;
    const struct mf *m = ctx;
    return m->pg && m->pg->fn ? m->pg->fn(m->pg->ctx, m->frac) : 0;
}

static int canceled(struct tpv_err *err)
{
    return tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
}

static double dot(const double *a, const double *b, uint64_t n)
{
    double s = 0;
    for (uint64_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* out = J_fit J_src^T u (u has src's rows): one VJP over src, one JVP over the fit set. */
static int cross_apply(struct mf *m, const struct tpv_jsrc *src, const double *u, double *out,
                       struct tpv_err *err)
{
    struct tpv_progress in = { inner_fn, m };
    int rc = src->ops->vjp(src, u, m->pv, &in, err);
    if (rc == TPV_OK)
        rc = m->fit->ops->jvp(m->fit, m->pv, out, &in, err);
    if (rc == TPV_OK)
        m->res->gram_products++;
    if (rc == TPV_OK && m->pg && m->pg->fn && m->pg->fn(m->pg->ctx, m->frac))
        rc = canceled(err);
    return rc;
}

/* out = (G + rho) v. */
static int gram_apply(struct mf *m, const double *v, double rho, double *out, struct tpv_err *err)
{
    int rc = cross_apply(m, m->fit, v, out, err);
    if (rc == TPV_OK && rho != 0)
        for (uint64_t i = 0; i < m->N; i++)
            out[i] += rho * v[i];
    return rc;
}

static void set_frac(struct mf *m, uint64_t sample, uint64_t it)
{
    double f = ((double)sample + (double)it / (double)(m->max_iter + 1)) /
               (double)m->o->max_samples;
    m->frac = f < 1 ? f : 1;
}

static void note_solve(struct mf *m, uint64_t it, double resid, bool ok)
{
    m->res->iterations_total += it;
    m->res->iterations_max = it > m->res->iterations_max ? it : m->res->iterations_max;
    m->res->residual_max = resid > m->res->residual_max ? resid : m->res->residual_max;
    if (!ok)
        m->res->solver_converged = false;
}

/* m->y = (G + rho)^-1 m->t by conjugate gradients (G + rho is SPD for rho > 0). */
static int cg_solve(struct mf *m, uint64_t sample, struct tpv_err *err)
{
    uint64_t N = m->N, it = 0;
    double rho = m->o->rho;
    memset(m->y, 0, (size_t)N * sizeof *m->y);
    memcpy(m->r, m->t, (size_t)N * sizeof *m->r);
    memcpy(m->d, m->t, (size_t)N * sizeof *m->d);
    double rs = dot(m->r, m->r, N), bnorm = sqrt(rs), rel = 0;
    bool ok = bnorm == 0;
    int rc = TPV_OK;
    while (!ok && it < m->max_iter) {
        set_frac(m, sample, it);
        rc = gram_apply(m, m->d, rho, m->q, err);
        if (rc != TPV_OK)
            return rc;
        it++;
        double dq = dot(m->d, m->q, N);
        if (!(dq > 0))
            break; /* breakdown: only when G + rho is not positive definite numerically */
        double a = rs / dq;
        for (uint64_t i = 0; i < N; i++) {
            m->y[i] += a * m->d[i];
            m->r[i] -= a * m->q[i];
        }
        double rsn = dot(m->r, m->r, N);
        rel = sqrt(rsn) / bnorm;
        if (rel <= m->tol) {
            ok = true;
            break;
        }
        double b = rsn / rs;
        for (uint64_t i = 0; i < N; i++)
            m->d[i] = m->r[i] + b * m->d[i];
        rs = rsn;
    }
    note_solve(m, it, rel, ok);
    return rc;
}

/* Eigen-decomposition of the k x k Lanczos tridiagonal (alpha, beta) into dd (Ritz values) and
 * z (eigenvectors, row-major). */
static int ritz(struct mf *m, uint64_t k, struct tpv_err *err)
{
    memcpy(m->dd, m->alpha, (size_t)k * sizeof *m->dd);
    if (k > 1)
        memcpy(m->ee, m->beta, (size_t)(k - 1) * sizeof *m->ee);
    lapack_int info = LAPACKE_dstev(LAPACK_ROW_MAJOR, 'V', (lapack_int)k, m->dd, m->ee, m->z,
                                    (lapack_int)k);
    if (info != 0)
        return tpv_err_set(err, TPV_ENUMERIC, NULL,
                           "Lanczos: the tridiagonal eigensolver failed (info %d)", (int)info);
    return TPV_OK;
}

/* Gauss quadrature of ||t||^2 e1^T f(T_k) e1 with f(l) = 1/l^2 above `cut`, else 0. */
static double quadrature(const struct mf *m, uint64_t k, double tn2, double cut)
{
    double s = 0;
    for (uint64_t i = 0; i < k; i++) {
        double l = m->dd[i];
        if (l > cut && l > 0)
            s += m->z[i] * m->z[i] / (l * l); /* z[0 * k + i]: first component of vector i */
    }
    return tn2 * s;
}

static bool check_step(uint64_t k)
{
    return k < 20 || k % 10 == 0;
}

/* Lanczos on G from v0 = start / ||start|| with full reorthogonalisation.  With cut < 0 it only
 * tracks the largest Ritz value (the lambda_max pre-run); else *est = start^T G^+2 start with
 * the rcond cut.  Stops on an invariant subspace (exact), on a relative change <= tol between
 * checks, or at `steps`. */
static int lanczos(struct mf *m, const double *start, uint64_t steps, double cut, uint64_t sample,
                   double *est, struct tpv_err *err)
{
    uint64_t N = m->N, k = 0;
    double tn2 = dot(start, start, N), prev = NAN, rel = INFINITY;
    bool ok = false;
    *est = 0;
    if (tn2 == 0) {
        note_solve(m, 0, 0, true);
        return TPV_OK;
    }
    double inv = 1 / sqrt(tn2);
    for (uint64_t i = 0; i < N; i++)
        m->V[i] = start[i] * inv;
    int rc = TPV_OK;
    for (k = 0; k < steps;) {
        double *v = m->V + k * N, *w = m->V + (k + 1) * N;
        set_frac(m, sample, k);
        rc = gram_apply(m, v, 0, w, err);
        if (rc != TPV_OK)
            return rc;
        m->alpha[k] = dot(w, v, N);
        for (int pass = 0; pass < 2; pass++) /* twice is enough (Parlett's "twice is enough") */
            for (uint64_t j = 0; j <= k; j++) {
                double c = dot(w, m->V + j * N, N);
                for (uint64_t i = 0; i < N; i++)
                    w[i] -= c * m->V[j * N + i];
            }
        double b = sqrt(dot(w, w, N));
        k++;
        bool invariant = b <= 1e-12 * (m->res->lambda_max > 0 ? m->res->lambda_max
                                                               : fabs(m->alpha[0]) + 1e-300);
        if (invariant || k == steps || check_step(k)) {
            rc = ritz(m, k, err);
            if (rc != TPV_OK)
                return rc;
            if (m->dd[k - 1] > m->res->lambda_max)
                m->res->lambda_max = m->dd[k - 1];
            if (cut >= 0) {
                *est = quadrature(m, k, tn2, cut);
                rel = isnan(prev) ? INFINITY
                                  : fabs(*est - prev) / (fabs(*est) > 0 ? fabs(*est) : 1);
                prev = *est;
                if (invariant || rel <= m->tol) {
                    ok = true;
                    if (invariant)
                        rel = 0;
                    break;
                }
            } else if (invariant) {
                break;
            }
        }
        if (invariant)
            break;
        m->beta[k - 1] = b;
        for (uint64_t i = 0; i < N; i++)
            w[i] /= b;
    }
    if (cut >= 0)
        note_solve(m, k, rel, ok);
    return TPV_OK;
}

struct welford {
    uint64_t n;
    double mean, m2;
};

static void welford_add(struct welford *w, double x)
{
    w->n++;
    double d = x - w->mean;
    w->mean += d / (double)w->n;
    w->m2 += d * (x - w->mean);
}

static double welford_stderr(const struct welford *w)
{
    return w->n > 1 ? sqrt(w->m2 / (double)(w->n - 1) / (double)w->n) : 0.0;
}

static bool should_stop(const struct tpv_mf_opts *o, const struct welford *w)
{
    uint64_t minn = o->min_samples ? o->min_samples : 8;
    if (w->n < minn || w->n < 2 || o->target_rel_error <= 0)
        return false;
    return welford_stderr(w) <= o->target_rel_error * fabs(w->mean);
}

bool tpv_mf_supported(const struct tpv_jsrc *s)
{
    return s && s->ops->jvp && s->ops->vjp;
}

/* Krylov iterations per solve: CG may need more than N steps in floating point; a Lanczos basis
 * cannot grow past N vectors. */
static uint64_t iter_cap(const struct tpv_mf_opts *o, uint64_t N)
{
    uint64_t c = o->max_iter ? o->max_iter : 500;
    if (o->rho > 0)
        return c;
    return c < N ? c : (N ? N : 1);
}

uint64_t tpv_mf_work_bytes(const struct tpv_jsrc *fit, const struct tpv_jsrc *x,
                           const struct tpv_mf_opts *o)
{
    uint64_t N = tpv_sat_mul(fit->n, fit->K), rows = x ? tpv_sat_mul(x->n, x->K) : N;
    uint64_t b = tpv_sat_mul(tpv_sat_add(tpv_sat_mul(N, 5), tpv_sat_add(rows, fit->p)), 8);
    if (o->rho <= 0) {
        uint64_t k = iter_cap(o, N) + 1;
        b = tpv_sat_add(b, tpv_sat_mul(tpv_sat_mul(k, N), 8));
        b = tpv_sat_add(b, tpv_sat_mul(tpv_sat_add(tpv_sat_mul(k, k), tpv_sat_mul(k, 4)), 8));
    }
    return b;
}

static int mf_open(struct mf *m, const struct tpv_jsrc *fit, const struct tpv_jsrc *x,
                   const struct tpv_mf_opts *o, bool lanczos_basis, struct tpv_mf_result *out,
                   const struct tpv_progress *pg, struct tpv_err *err)
{
    memset(m, 0, sizeof *m);
    memset(out, 0, sizeof *out);
    out->solver_converged = true;
    if (!o || o->max_samples < 1)
        return tpv_err_set(err, TPV_EINVAL, "max_samples", "max_samples must be at least 1");
    if (!tpv_mf_supported(fit) || (x && !tpv_mf_supported(x)))
        return tpv_err_set(err, TPV_EUNIMPLEMENTED, "estimator",
                           "matrix-free estimation needs J v and J^T u, which this source lacks");
    if (x && (x->p != fit->p || x->K != fit->K))
        return tpv_err_set(err, TPV_EINVAL, NULL, "fit and probe sources differ in shape");
    m->fit = fit;
    m->x = x;
    m->o = o;
    m->pg = pg;
    m->res = out;
    m->p = fit->p;
    m->N = fit->n * fit->K;
    m->rows = x ? x->n * x->K : m->N;
    m->tol = o->tol > 0 ? o->tol : TPV_KRYLOV_TOL;
    m->max_iter = iter_cap(o, m->N);
    size_t N = (size_t)(m->N ? m->N : 1), R = (size_t)(m->rows ? m->rows : 1);
    m->pv = malloc((size_t)(m->p ? m->p : 1) * sizeof(double));
    m->t = malloc(N * sizeof(double));
    m->y = malloc(N * sizeof(double));
    m->r = malloc(N * sizeof(double));
    m->d = malloc(N * sizeof(double));
    m->q = malloc(N * sizeof(double));
    m->probe = malloc(R * sizeof(double));
    bool ok = m->pv && m->t && m->y && m->r && m->d && m->q && m->probe;
    if (ok && lanczos_basis) {
        size_t k = (size_t)(m->max_iter > LMAX_STEPS ? m->max_iter : LMAX_STEPS) + 1;
        m->V = malloc(k * N * sizeof(double));
        m->alpha = malloc(k * sizeof(double));
        m->beta = malloc(k * sizeof(double));
        m->dd = malloc(k * sizeof(double));
        m->ee = malloc(k * sizeof(double));
        m->z = malloc(k * k * sizeof(double));
        ok = m->V && m->alpha && m->beta && m->dd && m->ee && m->z;
    }
    return ok ? TPV_OK : tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
}

static void mf_close(struct mf *m)
{
    double *bufs[] = { m->pv, m->t, m->y, m->r, m->d, m->q, m->probe,
                       m->V, m->alpha, m->beta, m->dd, m->ee, m->z };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
}

static void draw(const struct mf *m, uint64_t i, uint64_t salt, double *v, uint64_t n)
{
    struct tpv_rng g;
    tpv_rng_init(&g, m->o->seed, ((m->o->stream * 4 + salt) << 40) ^ i);
    tpv_rng_rademacher(&g, v, (size_t)n);
}

/* m->t = J_fit J_X^T r for this sample's r (x NULL: G r). */
static int right_hand_side(struct mf *m, uint64_t i, struct tpv_err *err)
{
    draw(m, i, 0, m->probe, m->rows);
    set_frac(m, i, 0);
    return cross_apply(m, m->x ? m->x : m->fit, m->probe, m->t, err);
}

/* lambda_max of G from a short Lanczos run on a random start (for the rcond cut). */
static int lambda_max(struct mf *m, struct tpv_err *err)
{
    draw(m, 0, 3, m->t, m->N);
    uint64_t steps = LMAX_STEPS < m->N ? LMAX_STEPS : m->N;
    double unused;
    m->frac = 0;
    return lanczos(m, m->t, steps, -1, 0, &unused, err);
}

int tpv_label_mf(const struct tpv_jsrc *fit, const struct tpv_jsrc *x, const struct tpv_mf_opts *o,
                 struct tpv_mf_result *out, const struct tpv_progress *pg, struct tpv_err *err)
{
    struct mf m;
    bool ridge = o && o->rho > 0;
    int rc = mf_open(&m, fit, x, o, !ridge, out, pg, err);
    if (rc == TPV_OK && o->rho < 0)
        rc = tpv_err_set(err, TPV_EINVAL, "ridge", "the ridge must be >= 0");
    double cut = 0;
    if (rc == TPV_OK && !ridge) {
        rc = lambda_max(&m, err);
        cut = o->rcond * out->lambda_max;
    }
    struct welford w = { 0 };
    for (uint64_t i = 0; rc == TPV_OK && i < o->max_samples; i++) {
        rc = right_hand_side(&m, i, err);
        double q = 0;
        if (rc == TPV_OK && ridge) {
            rc = cg_solve(&m, i, err);
            q = dot(m.y, m.y, m.N);
        } else if (rc == TPV_OK) {
            rc = lanczos(&m, m.t, m.max_iter, cut, i, &q, err);
        }
        if (rc != TPV_OK)
            break;
        welford_add(&w, q);
        if (should_stop(o, &w)) {
            out->converged = true;
            break;
        }
    }
    mf_close(&m);
    if (rc != TPV_OK)
        return rc;
    out->value = w.mean;
    out->stderr_value = welford_stderr(&w);
    out->samples = w.n;
    return TPV_OK;
}

/* One fit-split sgd_curvature sample: with-self ||G r||^2 and the leave-self-out value
 * ||G r||^2 - sum_a eps_a (G r)_a (G (eps . r))_a (eps one sign per sample: in expectation the
 * cross term keeps exactly the diagonal K x K blocks of G). */
static int sgdc_fit_sample(struct mf *m, uint64_t i, double *self, double *off,
                           struct tpv_err *err)
{
    uint64_t K = m->fit->K, n = m->fit->n;
    int rc = right_hand_side(m, i, err); /* t = G r */
    if (rc != TPV_OK)
        return rc;
    draw(m, i, 1, m->y, n); /* eps, one per sample */
    for (uint64_t a = 0; a < m->N; a++)
        m->r[a] = m->y[a / K] * m->probe[a];
    rc = gram_apply(m, m->r, 0, m->q, err);
    if (rc != TPV_OK)
        return rc;
    double s = dot(m->t, m->t, m->N), c = 0;
    for (uint64_t a = 0; a < m->N; a++)
        c += m->y[a / K] * m->t[a] * m->q[a];
    *self = s;
    *off = s - c;
    return TPV_OK;
}

int tpv_sgdc_mf(const struct tpv_jsrc *fit, const struct tpv_jsrc *x, const struct tpv_mf_opts *o,
                struct tpv_mf_result *out, const struct tpv_progress *pg, struct tpv_err *err)
{
    struct mf m;
    int rc = mf_open(&m, fit, x, o, false, out, pg, err);
    struct welford w = { 0 }, ws = { 0 };
    for (uint64_t i = 0; rc == TPV_OK && i < o->max_samples; i++) {
        double self = 0, q = 0;
        if (x) {
            rc = right_hand_side(&m, i, err);
            q = self = rc == TPV_OK ? dot(m.t, m.t, m.N) : 0;
        } else {
            rc = sgdc_fit_sample(&m, i, &self, &q, err);
        }
        if (rc != TPV_OK)
            break;
        welford_add(&w, q);
        welford_add(&ws, self);
        if (should_stop(o, &w)) {
            out->converged = true;
            break;
        }
    }
    mf_close(&m);
    if (rc != TPV_OK)
        return rc;
    out->value = w.mean;
    out->stderr_value = welford_stderr(&w);
    out->with_self = ws.mean;
    out->with_self_stderr = welford_stderr(&ws);
    out->samples = w.n;
    return TPV_OK;
}
