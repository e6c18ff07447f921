/* krylov.c: matrix-free label and sgd_curvature TPV (see krylov.h). */
#include "core/krylov.h"

#include <cblas.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/linalg.h"
#include "core/rng.h"

/* Lanczos steps of the lambda_max pre-run (extreme Ritz values converge first). */
#define LMAX_STEPS 40
/* Most probes of one round (the per-column state of a round is on the stack). */
#define TPV_MF_BLOCK_MAX 64

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
    /* Block products: J_fit (N x p) and J_X (rows x p), row-major, computed once when they fit
     * the budget (NULL: every product runs the source's ops), and their scratch. */
    double *Jf, *Jx;
    bool Jf_borrowed;          /* Jf is tpv_mf_opts.jacobian_fit */
    double *bin, *bout, *bpv;  /* packed block: max(N, rows) x B in, N x B out, p x B */
    uint64_t B;                /* probes per round */
    /* One round of PCG solves, column-major N x B each: right-hand sides, solutions,
     * residuals, preconditioned residuals, directions, products; probes (rows x B). */
    double *T, *Y, *R, *Z, *D, *Q, *P;
    /* Nystrom preconditioner (ridge only): U (N x ell, column-major, orthonormal) and the
     * approximate eigenvalues lam (descending); ell == 0: none. */
    uint64_t ell;
    double *U, *lam, *pw;      /* pw: ell x B scratch */
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

/* Below this many vectors a block op costs more than the per-vector ones (an ONNX block pass
 * computes all K gradient rows of each sample). */
#define BLOCK_MIN 4

/* out (N x b, column-major) = J_fit J_src^T U with U (src rows x b, column-major), through the
 * cached Jacobians (two GEMMs), the source's block ops, or one VJP + one JVP per column.
 * Counts b products. */
static int cross_block(struct mf *m, const struct tpv_jsrc *src, const double *U, uint64_t b,
                       double *out, struct tpv_err *err)
{
    struct tpv_progress in = { inner_fn, m };
    const double *Js = src == m->fit ? m->Jf : m->Jx;
    uint64_t N = m->N, p = m->p, rs = src->n * src->K;
    int rc = TPV_OK;
    if (m->Jf && Js) {
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, (int)p, (int)b, (int)rs, 1.0, Js,
                    (int)p, U, (int)rs, 0.0, m->bpv, (int)p);
        cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, (int)N, (int)b, (int)p, 1.0, m->Jf,
                    (int)p, m->bpv, (int)p, 0.0, out, (int)N);
    } else if (b >= BLOCK_MIN && src->ops->vjp_block && m->fit->ops->jvp_block) {
        for (uint64_t j = 0; j < b; j++) /* pack: the block ops take row-major blocks */
            for (uint64_t i = 0; i < rs; i++)
                m->bin[i * b + j] = U[j * rs + i];
        rc = src->ops->vjp_block(src, m->bin, b, m->bpv, &in, err);
        if (rc == TPV_OK)
            rc = m->fit->ops->jvp_block(m->fit, m->bpv, b, m->bout, &in, err);
        for (uint64_t j = 0; rc == TPV_OK && j < b; j++)
            for (uint64_t i = 0; i < N; i++)
                out[j * N + i] = m->bout[i * b + j];
    } else {
        for (uint64_t j = 0; rc == TPV_OK && j < b; j++) {
            rc = src->ops->vjp(src, U + j * rs, m->pv, &in, err);
            if (rc == TPV_OK)
                rc = m->fit->ops->jvp(m->fit, m->pv, out + j * N, &in, err);
        }
    }
    if (rc == TPV_OK)
        m->res->gram_products += b;
    if (rc == TPV_OK && m->pg && m->pg->fn && m->pg->fn(m->pg->ctx, m->frac))
        rc = canceled(err);
    return rc;
}

/* out = J_fit J_src^T u (u has src's rows). */
static int cross_apply(struct mf *m, const struct tpv_jsrc *src, const double *u, double *out,
                       struct tpv_err *err)
{
    return cross_block(m, src, u, 1, out, err);
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

static uint64_t min64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* What one run allocates: the round width, whether the Jacobians are copied, the Nystrom rank's
 * cap, and the bytes of it all. */
struct mf_plan {
    uint64_t B, ell_cap, bytes;
    bool cache;
};

/* A source worth copying: it has block products and runs a model for each (a dump, whose costs
 * are NULL, is a stored matrix already). */
static bool copyable(const struct tpv_jsrc *s)
{
    return s->ops->jvp_block && s->ops->costs;
}

static struct mf_plan mf_plan(const struct tpv_jsrc *fit, const struct tpv_jsrc *x,
                              const struct tpv_mf_opts *o)
{
    struct mf_plan pl = { 0 };
    uint64_t N = tpv_sat_mul(fit->n, fit->K), rows = x ? tpv_sat_mul(x->n, x->K) : N;
    uint64_t p = fit->p, big = rows > N ? rows : N, limit = o->max_bytes ? o->max_bytes : TPV_MF_BYTES;
    pl.B = min64(min64(o->block ? o->block : TPV_MF_BLOCK, TPV_MF_BLOCK_MAX),
                 o->max_samples ? o->max_samples : 1);
    /* single vectors (sgd_curvature, Lanczos, the right-hand side of one probe) */
    uint64_t b = tpv_sat_mul(tpv_sat_add(tpv_sat_mul(N, 5), tpv_sat_add(rows, p)), 8);
    if (o->rho <= 0) {
        uint64_t k = iter_cap(o, N) + 1;
        b = tpv_sat_add(b, tpv_sat_mul(tpv_sat_mul(k, N), 8));
        b = tpv_sat_add(b, tpv_sat_mul(tpv_sat_add(tpv_sat_mul(k, k), tpv_sat_mul(k, 4)), 8));
    }
    /* one round: T Y R Z D Q (N x B), the probes (rows x B), the packed blocks; the round
     * narrows (to one probe) before the budget is exceeded */
    uint64_t round = tpv_sat_mul(tpv_sat_add(tpv_sat_add(tpv_sat_mul(N, 7), big),
                                             tpv_sat_add(rows, p)), 8);
    while (pl.B > 1 && tpv_sat_add(b, tpv_sat_mul(round, pl.B)) > limit)
        pl.B /= 2;
    b = tpv_sat_add(b, tpv_sat_mul(round, pl.B));
    uint64_t cache = tpv_sat_mul(tpv_sat_mul(tpv_sat_add(N, x ? rows : 0), p), 8);
    uint64_t chunk = tpv_sat_mul(tpv_sat_mul(p, min64(p, 256)), 8); /* an identity chunk */
    cache = tpv_sat_add(cache, tpv_sat_add(chunk, tpv_sat_mul(tpv_sat_mul(N, min64(p, 256)), 8)));
    pl.cache = !o->no_cache && copyable(fit) && (!x || copyable(x)) && tpv_sat_add(b, cache) <= limit;
    if (pl.cache)
        b = tpv_sat_add(b, cache);
    if (o->rho > 0 && !o->plain_cg) {
        /* the sketch, its image and U (N x ell each), two ell x ell, ell x B */
        uint64_t cap = min64(min64(o->precond_rank ? o->precond_rank : TPV_NYSTROM_MAX, N), p);
        while (cap > 0) {
            uint64_t nb = tpv_sat_mul(tpv_sat_add(tpv_sat_mul(N, 3 * cap),
                                                  tpv_sat_add(tpv_sat_mul(cap, 2 * cap + 2),
                                                              tpv_sat_mul(cap, pl.B))), 8);
            if (tpv_sat_add(b, nb) <= limit) {
                b = tpv_sat_add(b, nb);
                break;
            }
            cap /= 2;
        }
        pl.ell_cap = cap;
    }
    pl.bytes = b;
    return pl;
}

uint64_t tpv_mf_work_bytes(const struct tpv_jsrc *fit, const struct tpv_jsrc *x,
                           const struct tpv_mf_opts *o)
{
    return mf_plan(fit, x, o).bytes;
}

/* J_s (rows x p, row-major) = J_s I by block products, up to 256 identity columns a pass. */
static int copy_jacobian(const struct tpv_jsrc *s, double *J, const struct tpv_progress *in,
                         struct tpv_err *err)
{
    uint64_t p = s->p, rows = s->n * s->K, w = min64(p, 256);
    double *eye = calloc((size_t)(p * w), sizeof *eye);
    double *out = w < p ? malloc((size_t)(rows * w) * sizeof *out) : J;
    int rc = eye && out ? TPV_OK : tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    for (uint64_t c0 = 0; rc == TPV_OK && c0 < p; c0 += w) {
        uint64_t cw = min64(w, p - c0);
        memset(eye, 0, (size_t)(p * cw) * sizeof *eye);
        for (uint64_t j = 0; j < cw; j++)
            eye[(c0 + j) * cw + j] = 1.0;
        rc = s->ops->jvp_block(s, eye, cw, out, in, err);
        for (uint64_t i = 0; rc == TPV_OK && out != J && i < rows; i++)
            memcpy(J + i * p + c0, out + i * cw, (size_t)cw * sizeof *J);
    }
    free(eye);
    if (out != J)
        free(out);
    return rc;
}

bool tpv_mf_copies_fit(const struct tpv_jsrc *fit, const struct tpv_jsrc *x,
                       const struct tpv_mf_opts *o)
{
    return mf_plan(fit, x, o).cache;
}

int tpv_mf_copy_fit(const struct tpv_jsrc *fit, double **J, const struct tpv_progress *pg,
                    struct tpv_err *err)
{
    *J = NULL;
    if (!fit->ops->jvp_block)
        return tpv_err_set(err, TPV_EUNIMPLEMENTED, NULL, "this source has no block products");
    uint64_t cells = fit->n * fit->K * fit->p;
    double *c = malloc((size_t)(cells ? cells : 1) * sizeof *c);
    if (!c)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    int rc = copy_jacobian(fit, c, pg, err);
    if (rc != TPV_OK) {
        free(c);
        return rc;
    }
    *J = c;
    return TPV_OK;
}

static int poll(struct mf *m, struct tpv_err *err);

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
    struct mf_plan pl = mf_plan(fit, x, o);
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
    m->B = pl.B;
    m->ell = pl.ell_cap; /* the cap until nystrom() sets the rank */
    size_t N = (size_t)(m->N ? m->N : 1), R = (size_t)(m->rows ? m->rows : 1);
    size_t P = (size_t)(m->p ? m->p : 1), B = (size_t)m->B, big = N > R ? N : R;
    m->pv = malloc(P * sizeof(double));
    m->t = malloc(N * sizeof(double));
    m->y = malloc(N * sizeof(double));
    m->r = malloc(N * sizeof(double));
    m->d = malloc(N * sizeof(double));
    m->q = malloc(N * sizeof(double));
    m->probe = malloc(R * sizeof(double));
    m->bin = malloc(big * B * sizeof(double));
    m->bout = malloc(N * B * sizeof(double));
    m->bpv = malloc(P * B * sizeof(double));
    m->T = malloc(N * B * sizeof(double));
    m->Y = malloc(N * B * sizeof(double));
    m->R = malloc(N * B * sizeof(double));
    m->Z = malloc(N * B * sizeof(double));
    m->D = malloc(N * B * sizeof(double));
    m->Q = malloc(N * B * sizeof(double));
    m->P = malloc(R * B * sizeof(double));
    bool ok = m->pv && m->t && m->y && m->r && m->d && m->q && m->probe && m->bin && m->bout &&
              m->bpv && m->T && m->Y && m->R && m->Z && m->D && m->Q && m->P;
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
    if (ok && pl.cache) {
        m->Jf_borrowed = o->jacobian_fit != NULL;
        m->Jf = m->Jf_borrowed ? (double *)o->jacobian_fit : malloc(N * P * sizeof(double));
        m->Jx = x ? malloc(R * P * sizeof(double)) : NULL;
        ok = m->Jf && (!x || m->Jx);
    }
    if (!ok)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    if (!pl.cache)
        return TPV_OK;
    /* J_fit and J_X once: every later product is two GEMMs instead of a pass over the model */
    struct tpv_progress in = { inner_fn, m };
    int rc = m->Jf_borrowed ? TPV_OK : copy_jacobian(fit, m->Jf, &in, err);
    if (rc == TPV_OK && x)
        rc = copy_jacobian(x, m->Jx, &in, err);
    if (rc == TPV_OK)
        rc = poll(m, err);
    out->jacobian_cached = rc == TPV_OK;
    return rc;
}

static void mf_close(struct mf *m)
{
    if (m->Jf_borrowed)
        m->Jf = NULL;
    double *bufs[] = { m->pv, m->t, m->y, m->r, m->d, m->q, m->probe,
                       m->V, m->alpha, m->beta, m->dd, m->ee, m->z,
                       m->Jf, m->Jx, m->bin, m->bout, m->bpv,
                       m->T, m->Y, m->R, m->Z, m->D, m->Q, m->P, m->U, m->lam, m->pw };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
}

/* ---- Nystrom preconditioner ---------------------------------------------------------------- */

/* First sketch width and the stopping ratio of the doubling: once the smallest sketched
 * eigenvalue is at most NYS_RATIO rho, what is left of G + rho I after preconditioning has a
 * condition number of at most about 1 + NYS_RATIO. */
#define NYS_START 64
#define NYS_RATIO 1.0

/* Swaps columns a and b of the column-major A with N rows. */
static void swap_col(double *A, uint64_t N, uint64_t a, uint64_t b)
{
    for (uint64_t i = 0; i < N; i++) {
        double t = A[a * N + i];
        A[a * N + i] = A[b * N + i];
        A[b * N + i] = t;
    }
}

/* Rows of one chunk of the preconditioner's N-row products: about 1e8 flops per chunk
 * against l columns, so that a cancel is seen between chunks (LAPACK on all N rows at once
 * took seconds at N = 20,000). */
static uint64_t chunk_rows(uint64_t l)
{
    uint64_t r = 50000000 / (l * l + 1);
    return r < 256 ? 256 : r;
}

static int poll(struct mf *m, struct tpv_err *err)
{
    return m->pg && m->pg->fn && m->pg->fn(m->pg->ctx, m->frac) ? canceled(err) : TPV_OK;
}

/* C (la x lb, column-major) = A^T B for column-major N x la and N x lb, over row chunks. */
static int tgemm(struct mf *m, const double *A, uint64_t la, const double *Bm, uint64_t lb,
                 double *C, struct tpv_err *err)
{
    uint64_t N = m->N, step = chunk_rows(la > lb ? la : lb);
    int rc = TPV_OK;
    for (uint64_t r0 = 0; rc == TPV_OK && r0 < N; r0 += step) {
        uint64_t nr = min64(step, N - r0);
        cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, (int)la, (int)lb, (int)nr, 1.0,
                    A + r0, (int)N, Bm + r0, (int)N, r0 ? 1.0 : 0.0, C, (int)la);
        rc = poll(m, err);
    }
    return rc;
}

/* A (N x w) += alpha X C with X (N x l), C (l x w), over row chunks. */
static int ngemm(struct mf *m, double alpha, const double *X, uint64_t l, const double *C,
                 uint64_t w, double *A, struct tpv_err *err)
{
    uint64_t N = m->N, step = chunk_rows(l > w ? l : w);
    int rc = TPV_OK;
    for (uint64_t r0 = 0; rc == TPV_OK && r0 < N; r0 += step) {
        uint64_t nr = min64(step, N - r0);
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)w, (int)l, alpha,
                    X + r0, (int)N, C, (int)l, 1.0, A + r0, (int)N);
        rc = poll(m, err);
    }
    return rc;
}

/* A (N x w) = A R^-1 for upper triangular R (w x w), over row chunks. */
static int rtrsm(struct mf *m, double *A, uint64_t w, const double *R, struct tpv_err *err)
{
    uint64_t N = m->N, step = chunk_rows(w);
    int rc = TPV_OK;
    for (uint64_t r0 = 0; rc == TPV_OK && r0 < N; r0 += step) {
        cblas_dtrsm(CblasColMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit,
                    (int)min64(step, N - r0), (int)w, 1.0, R, (int)w, A + r0, (int)N);
        rc = poll(m, err);
    }
    return rc;
}

/* Columns [l0, l) of Om (N x l, column-major): Gaussian, then orthonormal against [0, l0)
 * (two projection passes) and each other (CholeskyQR twice: a Gaussian block is well
 * conditioned, and its Gram products are chunked where a Householder QR is not).  C scratch
 * holds l x l. */
static int sketch_columns(struct mf *m, double *Om, uint64_t l0, uint64_t l, double *C,
                          struct tpv_err *err)
{
    uint64_t N = m->N, w = l - l0;
    struct tpv_rng g;
    tpv_rng_init(&g, m->o->seed, ((m->o->stream * 4 + 2) << 40) ^ l0);
    double *A = Om + l0 * N;
    for (uint64_t i = 0; i < w * N; i++)
        A[i] = tpv_rng_normal(&g);
    int rc = TPV_OK;
    for (int pass = 0; rc == TPV_OK && pass < 2; pass++) {
        if (l0 > 0) {
            rc = tgemm(m, Om, l0, A, w, C, err);
            if (rc == TPV_OK)
                rc = ngemm(m, -1.0, Om, l0, C, w, A, err);
        }
        if (rc == TPV_OK)
            rc = tgemm(m, A, w, A, w, C, err);
        if (rc != TPV_OK)
            break;
        lapack_int info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', (lapack_int)w, C, (lapack_int)w);
        if (info != 0)
            return tpv_err_set(err, TPV_ENUMERIC, NULL,
                               "Nystrom sketch: its columns are not independent (%d)", (int)info);
        rc = rtrsm(m, A, w, C, err);
    }
    return rc;
}

/* From the sketch Om (orthonormal) and Y = G Om, both N x l: U (into W, N x l) and lam
 * (descending) of the Nystrom approximation G Om (Om^T G Om)^+ Om^T G, shifted by nu for
 * stability (Tropp et al. 2017, algorithm 3), with the SVD of B = W C^-1 from the eigenvectors
 * of the l x l B^T B.  Directions whose eigenvalue is 0 after the shift, or below 1e-8 of the
 * largest (where U from B^T B loses orthogonality), are dropped: *l shrinks to the kept rank,
 * 0 when the shifted core is not positive definite (then no preconditioner). */
static int nystrom_factor(struct mf *m, const double *Om, const double *Yk, uint64_t *l,
                          double *W, double *M, double *sv, struct tpv_err *err)
{
    uint64_t N = m->N, k = *l;
    double fro = 0;
    for (uint64_t i = 0; i < N * k; i++)
        fro += Yk[i] * Yk[i];
    double nu = sqrt((double)N) * DBL_EPSILON * sqrt(fro);
    for (uint64_t i = 0; i < N * k; i++)
        W[i] = Yk[i] + nu * Om[i];
    int rc = tgemm(m, Om, k, W, k, M, err);
    if (rc != TPV_OK)
        return rc;
    for (uint64_t i = 0; i < k; i++) /* symmetrise: the core is symmetric up to rounding */
        for (uint64_t j = 0; j < i; j++)
            M[j * k + i] = M[i * k + j] = 0.5 * (M[j * k + i] + M[i * k + j]);
    *l = 0;
    if (LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', (lapack_int)k, M, (lapack_int)k) != 0)
        return TPV_OK;
    rc = rtrsm(m, W, k, M, err); /* W = B */
    if (rc == TPV_OK)
        rc = tgemm(m, W, k, W, k, M, err); /* M = B^T B = V S^2 V^T */
    if (rc != TPV_OK)
        return rc;
    if (LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'U', (lapack_int)k, M, (lapack_int)k, sv) != 0)
        return TPV_OK;
    /* ascending from dsyevd: reverse into descending, V's columns with them */
    for (uint64_t i = 0; i < k / 2; i++) {
        double t = sv[i];
        sv[i] = sv[k - 1 - i];
        sv[k - 1 - i] = t;
        swap_col(M, k, i, k - 1 - i);
    }
    uint64_t keep = 0;
    while (keep < k && sv[keep] > nu && sv[keep] > 1e-8 * sv[0])
        keep++;
    /* M's first keep columns become V_keep S^-1, so that U = B M (the caller forms it) */
    for (uint64_t j = 0; j < keep; j++) {
        double sc = 1 / sqrt(sv[j]);
        for (uint64_t i = 0; i < k; i++)
            M[j * k + i] *= sc;
        sv[j] -= nu;
    }
    *l = keep;
    return TPV_OK;
}

/* The preconditioner of G + rho I: a sketch of G that doubles from NYS_START columns until its
 * smallest eigenvalue is at most NYS_RATIO rho, the sketch finds G's rank, or the cap (m->ell)
 * is reached.  Its products count in gram_products.  A core that is not positive definite
 * leaves plain CG (ell 0). */
static int nystrom(struct mf *m, struct tpv_err *err)
{
    uint64_t cap = m->ell, N = m->N;
    m->ell = 0;
    if (cap == 0)
        return TPV_OK;
    size_t nc = (size_t)(N * cap);
    double *Om = malloc(nc * sizeof *Om), *Yk = malloc(nc * sizeof *Yk), *W = malloc(nc * sizeof *W);
    double *M = malloc((size_t)(cap * cap) * sizeof *M), *sv = malloc((size_t)cap * sizeof *sv);
    m->pw = malloc((size_t)(cap * (cap > m->B ? cap : m->B)) * sizeof *m->pw);
    int rc = Om && Yk && W && M && sv && m->pw
                 ? TPV_OK
                 : tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    uint64_t l0 = 0, l = min64(NYS_START, cap), keep = 0;
    m->frac = 0;
    while (rc == TPV_OK) {
        rc = sketch_columns(m, Om, l0, l, M, err);
        for (uint64_t c = l0; rc == TPV_OK && c < l; c += m->B)
            rc = cross_block(m, m->fit, Om + c * N, min64(m->B, l - c), Yk + c * N, err);
        keep = l;
        if (rc == TPV_OK)
            rc = nystrom_factor(m, Om, Yk, &keep, W, M, sv, err);
        if (rc != TPV_OK || keep == 0 || keep < l || l == cap || sv[keep - 1] <= NYS_RATIO * m->o->rho)
            break;
        l0 = l;
        l = min64(2 * l, cap);
    }
    if (rc == TPV_OK && keep > 0) { /* U = B V_keep S^-1 into Yk, spent */
        memset(Yk, 0, (size_t)(N * keep) * sizeof *Yk);
        rc = ngemm(m, 1.0, W, l, M, keep, Yk, err);
    }
    free(Om);
    free(W);
    free(M);
    if (rc == TPV_OK && keep > 0) {
        m->U = Yk;
        m->lam = sv;
        m->ell = keep;
        m->res->precond_rank = keep;
        m->res->precond_lambda_min = sv[keep - 1];
    } else {
        free(Yk);
        free(sv);
    }
    return rc;
}

/* Z = P^-1 R for na columns (N x na, column-major):
 * P^-1 = (lam_l + rho) U (Lam + rho)^-1 U^T + (I - U U^T); Z = R without a preconditioner. */
static void precondition(const struct mf *m, const double *R, uint64_t na, double *Z)
{
    uint64_t N = m->N, l = m->ell;
    memcpy(Z, R, (size_t)(N * na) * sizeof *Z);
    if (l == 0)
        return;
    double rho = m->o->rho, top = m->lam[l - 1] + rho;
    cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, (int)l, (int)na, (int)N, 1.0, m->U,
                (int)N, R, (int)N, 0.0, m->pw, (int)l);
    for (uint64_t j = 0; j < na; j++)
        for (uint64_t i = 0; i < l; i++)
            m->pw[j * l + i] *= top / (m->lam[i] + rho) - 1;
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)na, (int)l, 1.0, m->U,
                (int)N, m->pw, (int)l, 1.0, Z, (int)N);
}

/* ---- one round of preconditioned CG solves ------------------------------------------------- */

/* Per-column state of a round, kept in the order of the active columns [0, na). */
struct round {
    double rz[TPV_MF_BLOCK_MAX], bn[TPV_MF_BLOCK_MAX], rel[TPV_MF_BLOCK_MAX];
    uint64_t idx[TPV_MF_BLOCK_MAX];
};

/* Retires active column a (its ||y||^2 into q, its solve noted) by moving the last active one
 * into its place. */
static void retire(struct mf *m, struct round *st, uint64_t a, uint64_t *na, uint64_t it,
                   bool ok, double *q)
{
    uint64_t N = m->N, last = *na - 1;
    q[st->idx[a]] = dot(m->Y + a * N, m->Y + a * N, N);
    note_solve(m, it, st->rel[a], ok);
    if (a != last) {
        double *sets[] = { m->Y, m->R, m->D, m->Q };
        for (size_t s = 0; s < sizeof sets / sizeof sets[0]; s++)
            swap_col(sets[s], N, a, last);
        st->rz[a] = st->rz[last];
        st->bn[a] = st->bn[last];
        st->rel[a] = st->rel[last];
        st->idx[a] = st->idx[last];
    }
    *na = last;
}

/* Solves (G + rho) Y = T for the b right-hand sides in m->T (samples first .. first + b - 1),
 * q[j] = ||y_j||^2.  Each step is one block product over the columns not yet converged. */
static int pcg_round(struct mf *m, uint64_t first, uint64_t b, double *q, struct tpv_err *err)
{
    uint64_t N = m->N, na = b, it = 0;
    double rho = m->o->rho;
    struct round st;
    memcpy(m->R, m->T, (size_t)(N * b) * sizeof *m->R);
    memset(m->Y, 0, (size_t)(N * b) * sizeof *m->Y);
    precondition(m, m->R, b, m->D);
    for (uint64_t j = 0; j < b; j++) {
        st.idx[j] = j;
        st.rz[j] = dot(m->R + j * N, m->D + j * N, N);
        st.bn[j] = sqrt(dot(m->T + j * N, m->T + j * N, N));
        st.rel[j] = 0;
    }
    for (uint64_t a = na; a-- > 0;)
        if (st.bn[a] == 0)
            retire(m, &st, a, &na, 0, true, q);
    int rc = TPV_OK;
    while (na > 0 && it < m->max_iter) {
        set_frac(m, first, it);
        rc = cross_block(m, m->fit, m->D, na, m->Q, err);
        if (rc != TPV_OK)
            return rc;
        it++;
        for (uint64_t i = 0; i < N * na; i++)
            m->Q[i] += rho * m->D[i];
        for (uint64_t a = na; a-- > 0;) {
            double *y = m->Y + a * N, *r = m->R + a * N, *d = m->D + a * N, *qq = m->Q + a * N;
            double dq = dot(d, qq, N);
            if (!(dq > 0)) { /* breakdown: only when G + rho is not positive definite numerically */
                retire(m, &st, a, &na, it, false, q);
                continue;
            }
            double al = st.rz[a] / dq;
            for (uint64_t i = 0; i < N; i++) {
                y[i] += al * d[i];
                r[i] -= al * qq[i];
            }
            st.rel[a] = sqrt(dot(r, r, N)) / st.bn[a];
            if (st.rel[a] <= m->tol)
                retire(m, &st, a, &na, it, true, q);
        }
        if (na == 0)
            break;
        precondition(m, m->R, na, m->Z);
        for (uint64_t a = 0; a < na; a++) {
            double *z = m->Z + a * N, *d = m->D + a * N;
            double rzn = dot(m->R + a * N, z, N), be = rzn / st.rz[a];
            for (uint64_t i = 0; i < N; i++)
                d[i] = z[i] + be * d[i];
            st.rz[a] = rzn;
        }
    }
    while (na > 0) /* out of iterations */
        retire(m, &st, na - 1, &na, it, false, q);
    return rc;
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

/* One round of label samples [i, i + b): m->P the probes, m->T = J_fit J_X^T P, then q[j] from
 * PCG (ridge) or Lanczos quadrature with the cut (unridged). */
static int label_round(struct mf *m, uint64_t i, uint64_t b, double cut, double *q,
                       struct tpv_err *err)
{
    for (uint64_t j = 0; j < b; j++)
        draw(m, i + j, 0, m->P + j * m->rows, m->rows);
    set_frac(m, i, 0);
    int rc = cross_block(m, m->x ? m->x : m->fit, m->P, b, m->T, err);
    if (rc != TPV_OK)
        return rc;
    if (m->o->rho > 0)
        return pcg_round(m, i, b, q, err);
    for (uint64_t j = 0; rc == TPV_OK && j < b; j++)
        rc = lanczos(m, m->T + j * m->N, m->max_iter, cut, i + j, &q[j], err);
    return rc;
}

int tpv_label_mf(const struct tpv_jsrc *fit, const struct tpv_jsrc *x, const struct tpv_mf_opts *o,
                 struct tpv_mf_result *out, const struct tpv_progress *pg, struct tpv_err *err)
{
    struct mf m;
    bool ridge = o && o->rho > 0;
    int rc = o && o->rho < 0 ? tpv_err_set(err, TPV_EINVAL, "ridge", "the ridge must be >= 0")
                             : mf_open(&m, fit, x, o, !ridge, out, pg, err);
    if (o && o->rho < 0) {
        memset(out, 0, sizeof *out);
        return rc;
    }
    double cut = 0;
    if (rc == TPV_OK && !ridge) {
        rc = lambda_max(&m, err);
        cut = o->rcond * out->lambda_max;
    }
    if (rc == TPV_OK && ridge)
        rc = nystrom(&m, err);
    struct welford w = { 0 };
    double q[TPV_MF_BLOCK_MAX];
    bool stop = false;
    for (uint64_t i = 0; rc == TPV_OK && !stop && i < o->max_samples; i += m.B) {
        uint64_t b = min64(m.B, o->max_samples - i);
        rc = label_round(&m, i, b, cut, q, err);
        /* samples in order, the stopping test after each: the same samples and value as one
         * probe at a time (the rest of a stopped round is dropped) */
        for (uint64_t j = 0; rc == TPV_OK && !stop && j < b; j++) {
            welford_add(&w, q[j]);
            if (should_stop(o, &w)) {
                out->converged = true;
                stop = true;
            }
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
    /* one probe at a time (single-vector products): rounds of several would only hold memory */
    struct tpv_mf_opts one = o ? *o : (struct tpv_mf_opts){ 0 };
    one.block = 1;
    o = &one;
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
