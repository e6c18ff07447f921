/* onnx_source.c: the Jacobian source ops (core/jacobian.h) over an ONNX graph (onnx_source.h). */
#include "core/onnx_source.h"

#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/onnx_attr.h"
#include "core/linalg.h"
#include "core/onnx_exec.h"
#include "core/onnx_persample.h"

#define BATCH 32                     /* samples per batched jvp / vjp pass */
#define PANEL_BYTES (32u << 20)      /* per-sample gradient panels of gram */
/* Activations and adjoints of one batched per-sample pass: past a few MiB a batch spills out of
 * cache, and Conv's kernels loop over samples anyway, so the batch only pays for small
 * activations (measured on ResNet-20, 5 MiB per sample: CPU time 1.07 s at 1 sample per pass,
 * 1.15 at 2, 1.31 at 4, 1.54 at 8; the reference path 1.0) */
#define ACT_BUDGET (8u << 20)
/* Per thread, the values and adjoints of one shared pass (R copies of one sample, one row per
 * output) plus its R gradient rows: the copies leave the cache past a few samples' worth
 * (ResNet-20, 5 MiB per copy, CPU s of sqdiag over 16 samples at 1 thread with R outputs per
 * pass: 1.87 at R = 1, 1.80 at 2, 1.84 at 5, 2.42 at 10; the reference path 1.7-2.4, load 10-16) */
#define ROWS_BUDGET (32u << 20)
#define THREADS_MAX 64

struct osrc {
    const struct tpv_onnx_model *m;
    struct tpv_tensor inputs;
    uint64_t per;   /* input elements per sample */
    size_t batch;   /* samples per batched pass (1 for a fixed-batch graph) */
    struct tpv_onnx_plan *plan1;
    struct tpv_onnx_exec *ex1;  /* one sample: per-sample gradients */
    double *x1;                 /* one sample's input */
    struct tpv_onnx_persample *ps; /* batched per-sample gradients; NULL: the graph does not
                                    * qualify (core/onnx_persample.h), one sample at a time */
    uint64_t *offset;           /* per parameter: its first column */
    bool reference;             /* force one reverse pass per (sample, output) */
    bool force_batched;         /* batched path even at one sample per pass (tests, benchmarks) */
    uint64_t panel_bytes;       /* budget of the batched path's gradient rows (PANEL_BYTES) */
    uint64_t rows;              /* outputs per shared pass (rows_open); 0: the graph's values
                                 * cannot be replicated, no shared pass of several outputs */
    bool force_rows;            /* shared path even where the batched one would run (tests) */
    bool float64;               /* the shared path's products in float64 for float32 weights
                                 * too (tests, benchmarks) */
};

static const struct tpv_jsrc_ops onnx_source_ops;

static int nomem(struct tpv_err *err)
{
    return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
}

static int canceled(struct tpv_err *err)
{
    return tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
}

/* A plan and executor for `b` samples. */
static int open_batch(const struct osrc *o, size_t b, struct tpv_onnx_plan **plan,
                      struct tpv_onnx_exec **ex, struct tpv_err *err)
{
    return tpv_onnx_exec_open(o->m, &o->inputs, b, plan, ex, err);
}

static int forward_rows(const struct osrc *o, struct tpv_onnx_exec *ex, uint64_t first,
                        uint64_t count, double *x, struct tpv_err *err)
{
    tpv_tensor_read_f64(&o->inputs, first * o->per, count * o->per, x);
    const double *xp = x;
    return tpv_onnx_exec_forward(ex, &xp, err);
}

/* Gradient of sum_k r_k f_k(x) for sample x w.r.t. all parameters, into g (p). */
static int sample_grad(const struct tpv_jsrc *s, uint64_t x, const double *r, double *g,
                       bool forward, struct tpv_err *err)
{
    const struct osrc *o = s->impl;
    int rc = forward ? forward_rows(o, o->ex1, x, 1, o->x1, err) : TPV_OK;
    if (!rc)
        rc = tpv_onnx_exec_vjp(o->ex1, o->m->outputs[0], r, err);
    if (rc)
        return rc;
    for (size_t j = 0; j < s->layout.nblocks; j++) {
        const struct tpv_block *bl = &s->layout.blocks[j];
        memcpy(g + bl->offset, tpv_onnx_exec_grad(o->ex1, o->m->params[j]),
               bl->count * sizeof *g);
    }
    return TPV_OK;
}

/* The per-sample parts of nc weighted traces that sqdiag_samples asks for beside the diagonal
 * (jacobian.h): out[m * n + x] += sum_j c[m][j] g_j^2 for each gradient row g of sample x. */
struct sample_parts {
    size_t nc;
    const double *const *c; /* c[m] NULL: all ones */
    double *out;
    uint64_t n;
};

static void add_parts(const struct sample_parts *sp, uint64_t x, const double *g, uint64_t p,
                      double sumsq)
{
    for (size_t m = 0; sp && m < sp->nc; m++) {
        const double *c = sp->c[m];
        double t = 0;
        if (!c) {
            t = sumsq;
        } else {
            for (uint64_t j = 0; j < p; j++)
                t += c[j] * g[j] * g[j];
        }
        sp->out[m * sp->n + x] += t;
    }
}

static int sq_accumulate(const struct tpv_jsrc *s, const double *r_all, bool one_hot,
                         double *diag, double *total, const struct sample_parts *sp,
                         const struct tpv_progress *pg, struct tpv_err *err)
{
    uint64_t K = s->K, p = s->p;
    double *g = malloc(p * sizeof *g), *r = calloc(K, sizeof *r);
    int rc = g && r ? TPV_OK : nomem(err);
    for (uint64_t x = 0; !rc && x < s->n; x++) {
        for (uint64_t k = 0; !rc && k < (one_hot ? K : 1); k++) {
            if (one_hot) {
                memset(r, 0, K * sizeof *r);
                r[k] = 1.0;
            }
            rc = sample_grad(s, x, one_hot ? r : r_all + x * K, g, k == 0, err);
            double t = 0;
            for (uint64_t j = 0; !rc && j < p; j++) {
                diag[j] += g[j] * g[j];
                t += g[j] * g[j];
            }
            if (total && !one_hot)
                total[x] = t;
            if (!rc)
                add_parts(sp, x, g, p, t);
        }
        if (!rc && tpv_progress_report(pg, 0, 1, x + 1, s->n))
            rc = canceled(err);
    }
    free(g);
    free(r);
    return rc;
}


/* Rows [row0, row0 + rows) of the per-sample gradient matrix (rows = (sample, output)). */
static int grad_panel(const struct tpv_jsrc *s, uint64_t row0, uint64_t rows, double *panel,
                      struct tpv_err *err)
{
    double *r = calloc(s->K, sizeof *r);
    if (!r)
        return nomem(err);
    int rc = TPV_OK;
    uint64_t last = UINT64_MAX;
    for (uint64_t i = 0; !rc && i < rows; i++) {
        uint64_t x = (row0 + i) / s->K, k = (row0 + i) % s->K;
        memset(r, 0, s->K * sizeof *r);
        r[k] = 1.0;
        rc = sample_grad(s, x, r, panel + i * s->p, x != last, err);
        last = x;
    }
    free(r);
    return rc;
}

static int ref_gram(const struct tpv_jsrc *a, const struct tpv_jsrc *b, double *out,
                   const struct tpv_progress *pg, struct tpv_err *err)
{
    uint64_t p = a->p, ra = a->n * a->K, rb = b->n * b->K;
    uint64_t rows = PANEL_BYTES / 2 / (p * sizeof(double));
    if (rows < 1)
        rows = 1;
    double *pa = malloc(rows * p * sizeof *pa), *pb = malloc(rows * p * sizeof *pb);
    int rc = pa && pb ? TPV_OK : nomem(err);
    uint64_t steps = ((ra + rows - 1) / rows) * ((rb + rows - 1) / rows), done = 0;
    for (uint64_t i0 = 0; !rc && i0 < ra; i0 += rows) {
        uint64_t ni = ra - i0 < rows ? ra - i0 : rows;
        rc = grad_panel(a, i0, ni, pa, err);
        for (uint64_t j0 = 0; !rc && j0 < rb; j0 += rows) {
            uint64_t nj = rb - j0 < rows ? rb - j0 : rows;
            rc = grad_panel(b, j0, nj, pb, err);
            if (rc)
                break;
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)ni, (int)nj, (int)p, 1.0,
                        pa, (int)p, pb, (int)p, 0.0, out + i0 * rb + j0, (int)rb);
            if (tpv_progress_report(pg, 0, 1, ++done, steps))
                rc = canceled(err);
        }
    }
    free(pa);
    free(pb);
    return rc;
}

/* ---- batched per-sample gradients (core/onnx_persample.h) ---- */

/* A batched executor that skips the leaves' adjoints, reopened when the batch size changes. */
struct pass {
    struct tpv_onnx_plan *plan;
    struct tpv_onnx_exec *ex;
    size_t open;
    double *x;  /* the batch's inputs */
};

static void pass_close(struct pass *ps)
{
    tpv_onnx_exec_free(ps->ex);
    tpv_onnx_plan_free(ps->plan);
    free(ps->x);
    memset(ps, 0, sizeof *ps);
}

/* Forward pass of samples [x0, x0 + b). */
static int pass_forward(const struct osrc *o, struct pass *ps, uint64_t x0, size_t b,
                        struct tpv_err *err)
{
    if (b != ps->open) {
        tpv_onnx_exec_free(ps->ex);
        tpv_onnx_plan_free(ps->plan);
        free(ps->x);
        ps->ex = NULL;
        ps->plan = NULL;
        ps->open = 0;
        ps->x = malloc(b * o->per * sizeof *ps->x);
        if (!ps->x)
            return nomem(err);
        int rc = open_batch(o, b, &ps->plan, &ps->ex, err);
        if (rc)
            return rc;
        ps->ex->skip_leaves = true;
        ps->open = b;
    }
    return forward_rows(o, ps->ex, x0, b, ps->x, err);
}

/* After pass_forward: G (b x p) = per-sample gradients of sum_k seed[t K + k] f_k(x_t). */
static int pass_grads(const struct tpv_jsrc *s, struct pass *ps, const double *seed, double *G,
                      struct tpv_err *err)
{
    const struct osrc *o = s->impl;
    int rc = tpv_onnx_exec_vjp(ps->ex, o->m->outputs[0], seed, err);
    return rc ? rc : tpv_onnx_persample_grads(o->ps, ps->ex, o->offset, s->p, G, err);
}

/* One-hot seeds e_k for b samples. */
static void one_hot(double *seed, size_t b, uint64_t K, uint64_t k)
{
    memset(seed, 0, b * K * sizeof *seed);
    for (size_t t = 0; t < b; t++)
        seed[t * K + k] = 1.0;
}

/* Samples whose activations and adjoints fit ACT_BUDGET (at most o->batch, at least 1). */
static uint64_t act_batch(const struct osrc *o)
{
    uint64_t per = 2 * o->plan1->act_bytes;
    uint64_t b = per ? ACT_BUDGET / per : o->batch;
    return b < 1 ? 1 : b > o->batch ? o->batch : b;
}

/* Samples per batch when each sample needs `rows` gradient rows of p doubles within `bytes`. */
static size_t samples_within(const struct tpv_jsrc *s, uint64_t rows, uint64_t bytes)
{
    const struct osrc *o = s->impl;
    uint64_t per = rows * s->p * sizeof(double);
    uint64_t b = per ? bytes / per : o->batch;
    uint64_t fit = act_batch(o);
    if (b > fit)
        b = fit;
    return b ? (size_t)b : 1;
}

/* diag += squares of G's rows; total[t] = row t's squared norm if total is not NULL. */
static void add_squares(const double *G, size_t b, uint64_t p, double *diag, double *total,
                        const struct sample_parts *sp, uint64_t x0)
{
    for (size_t t = 0; t < b; t++) {
        const double *g = G + t * p;
        double sum = 0;
        for (uint64_t j = 0; j < p; j++) {
            diag[j] += g[j] * g[j];
            sum += g[j] * g[j];
        }
        if (total)
            total[t] = sum;
        add_parts(sp, x0 + t, g, p, sum);
    }
}

/* sqdiag (r NULL: every one-hot output) or sqdiag_projected (r: one seed row per sample). */
static int fast_squares(const struct tpv_jsrc *s, const double *r, double *diag, double *total,
                        const struct sample_parts *sp, const struct tpv_progress *pg,
                        struct tpv_err *err)
{
    uint64_t K = s->K, p = s->p;
    size_t bmax = samples_within(s, 1, ((const struct osrc *)s->impl)->panel_bytes);
    struct pass ps = {0};
    double *G = malloc(bmax * p * sizeof *G), *seed = malloc(bmax * K * sizeof *seed);
    int rc = G && seed ? TPV_OK : nomem(err);
    for (uint64_t x0 = 0; !rc && x0 < s->n; x0 += bmax) {
        size_t b = s->n - x0 < bmax ? (size_t)(s->n - x0) : bmax;
        rc = pass_forward(s->impl, &ps, x0, b, err);
        for (uint64_t k = 0; !rc && k < (r ? 1 : K); k++) {
            if (!r)
                one_hot(seed, b, K, k);
            rc = pass_grads(s, &ps, r ? r + x0 * K : seed, G, err);
            if (!rc)
                add_squares(G, b, p, diag, total ? total + x0 : NULL, sp, x0);
        }
        if (!rc && tpv_progress_report(pg, 0, 1, x0 + b, s->n))
            rc = canceled(err);
    }
    pass_close(&ps);
    free(G);
    free(seed);
    return rc;
}

/* Gradient rows (sample, output) of samples [x0, x0 + b) into panel (b K x p), G scratch. */
static int fast_panel(const struct tpv_jsrc *s, struct pass *ps, uint64_t x0, size_t b,
                      double *seed, double *G, double *panel, struct tpv_err *err)
{
    uint64_t K = s->K, p = s->p;
    int rc = pass_forward(s->impl, ps, x0, b, err);
    for (uint64_t k = 0; !rc && k < K; k++) {
        one_hot(seed, b, K, k);
        rc = pass_grads(s, ps, seed, G, err);
        for (size_t t = 0; !rc && t < b; t++)
            memcpy(panel + (t * K + k) * p, G + t * p, p * sizeof *G);
    }
    return rc;
}

/* Gram of panels of whole samples; a == b computes each off-diagonal block once. */
static int fast_gram(const struct tpv_jsrc *a, const struct tpv_jsrc *b, double *out,
                     const struct tpv_progress *pg, struct tpv_err *err)
{
    uint64_t K = a->K, p = a->p, rb = b->n * K;
    size_t bs = samples_within(a, K, ((const struct osrc *)a->impl)->panel_bytes / 3);
    struct pass psa = {0}, psb = {0};
    double *pa = malloc(bs * K * p * sizeof *pa), *pb = malloc(bs * K * p * sizeof *pb);
    double *G = malloc(bs * p * sizeof *G), *seed = malloc(bs * K * sizeof *seed);
    int rc = pa && pb && G && seed ? TPV_OK : nomem(err);
    uint64_t steps = ((a->n + bs - 1) / bs) * ((b->n + bs - 1) / bs), done = 0;
    for (uint64_t i0 = 0; !rc && i0 < a->n; i0 += bs) {
        size_t ni = a->n - i0 < bs ? (size_t)(a->n - i0) : bs;
        rc = fast_panel(a, &psa, i0, ni, seed, G, pa, err);
        for (uint64_t j0 = 0; !rc && j0 < b->n; j0 += bs) {
            size_t nj = b->n - j0 < bs ? (size_t)(b->n - j0) : bs;
            double *blk = out + i0 * K * rb + j0 * K;
            if (a == b && j0 < i0) {
                /* the mirror of block (j0, i0), computed earlier */
                for (uint64_t r = 0; r < ni * K; r++)
                    for (uint64_t c = 0; c < nj * K; c++)
                        blk[r * rb + c] = out[(j0 * K + c) * rb + i0 * K + r];
            } else {
                const double *pj = pa;
                if (a != b || j0 != i0) {
                    rc = fast_panel(b, &psb, j0, nj, seed, G, pb, err);
                    pj = pb;
                }
                if (rc)
                    break;
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(ni * K),
                            (int)(nj * K), (int)p, 1.0, pa, (int)p, pj, (int)p, 0.0, blk,
                            (int)rb);
            }
            if (tpv_progress_report(pg, 0, 1, ++done, steps))
                rc = canceled(err);
        }
    }
    pass_close(&psa);
    pass_close(&psb);
    free(pa);
    free(pb);
    free(G);
    free(seed);
    return rc;
}

/* ---- one sample at a time, its outputs sharing a pass, samples split over the threads ---- */

/* A value of the same size at batch 1 and batch R: not per-sample (an initializer, a parameter,
 * a load-time constant), shared by every row and never copied. */
static bool same_size(const struct tpv_onnx_plan *one, const struct tpv_onnx_tensor *b, size_t v)
{
    return one->known[v] || one->vals[v].numel == 0 || one->vals[v].numel == b->numel;
}

/* Whether every per-sample value is `R` rows of the batch-1 value (then a batch of R copies of
 * one sample is the batch-1 pass replicated, not recomputed). */
static bool replicable(const struct tpv_onnx_plan *one, const struct tpv_onnx_plan *R_plan,
                       uint64_t R, size_t nvalues)
{
    for (size_t v = 0; v < nvalues; v++) {
        const struct tpv_onnx_tensor *a = &one->vals[v], *b = &R_plan->vals[v];
        if (same_size(one, b, v))
            continue;
        if (b->numel != R * a->numel || a->rank < 1 || a->shape[0] != 1 ||
            b->shape[0] != (int64_t)R) {
            return false;
        }
    }
    return true;
}

/* One thread's executors: ex1 for the sample's forward pass, exR (R copies of it, ex1 itself
 * when R is 1) for the reverse pass of R outputs at once. */
struct rows_pass {
    struct tpv_onnx_plan *plan1, *planR;
    struct tpv_onnx_exec *ex1, *exR;
    uint64_t R;
    double *x, *G, *seed;
    struct tpv_onnx_scratch ws; /* the Conv kernels' buffers, reused over the thread's passes */
};

static void rows_close(struct rows_pass *rp)
{
    if (rp->exR != rp->ex1)
        tpv_onnx_exec_free(rp->exR);
    tpv_onnx_exec_free(rp->ex1);
    tpv_onnx_plan_free(rp->planR);
    tpv_onnx_plan_free(rp->plan1);
    free(rp->x);
    free(rp->G);
    free(rp->seed);
    tpv_onnx_scratch_release(&rp->ws);
    memset(rp, 0, sizeof *rp);
}

static int rows_open(const struct tpv_jsrc *s, uint64_t R, struct rows_pass *rp,
                     struct tpv_err *err)
{
    const struct osrc *o = s->impl;
    memset(rp, 0, sizeof *rp);
    rp->R = R;
    int rc = open_batch(o, 1, &rp->plan1, &rp->ex1, err);
    if (!rc && R > 1)
        rc = open_batch(o, R, &rp->planR, &rp->exR, err);
    else
        rp->exR = rp->ex1;
    if (rc)
        return rc;
    rp->exR->skip_leaves = true;
    rp->exR->narrow_products = !o->float64; /* as the weight gradients' products (single) */
    rp->x = malloc(o->per * sizeof *rp->x);
    rp->G = malloc(R * s->p * sizeof *rp->G);
    rp->seed = malloc(R * s->K * sizeof *rp->seed);
    return rp->x && rp->G && rp->seed ? TPV_OK : nomem(err);
}

/* exR's values = R copies of ex1's (replicable() holds). */
static void replicate(const struct tpv_onnx_model *m, struct rows_pass *rp)
{
    for (size_t v = 0; v < m->nvalues; v++) {
        const struct tpv_onnx_tensor *a = &rp->ex1->vals[v];
        char *dst = rp->exR->vals[v].data;
        if (same_size(rp->plan1, &rp->exR->vals[v], v) || !a->data || !dst)
            continue;
        size_t bytes = a->numel * 8; /* both dtypes are 8 bytes */
        for (uint64_t r = 0; r < rp->R; r++)
            memcpy(dst + r * bytes, a->data, bytes);
    }
}

struct rows_job {
    const struct tpv_jsrc *s;
    const double *r;               /* sqdiag_projected's seeds, or NULL: every one-hot output */
    double *diag;                  /* nthreads x p, each thread's own sums */
    double *total;
    const struct sample_parts *sp;
    const struct tpv_progress *pg;
    atomic_uint_fast64_t done;     /* samples finished, over all threads */
    atomic_int stop;               /* an error or a cancel: every thread ends */
    int rc[THREADS_MAX];
    struct tpv_err err[THREADS_MAX];
};

/* Gradient rows [0, nr) of one sample x: squared into diag, total and the parts. */
static void rows_squares(const struct rows_job *j, const double *G, uint64_t nr, uint64_t x,
                         double *diag)
{
    uint64_t p = j->s->p;
    for (uint64_t i = 0; i < nr; i++) {
        const double *g = G + i * p;
        double sum = 0;
        for (uint64_t c = 0; c < p; c++) {
            diag[c] += g[c] * g[c];
            sum += g[c] * g[c];
        }
        if (j->total)
            j->total[x] = sum;
        add_parts(j->sp, x, g, p, sum);
    }
}

/* Sample x: one forward pass, then its K outputs R at a time (one pass seeded r_x if projected). */
static int rows_sample(struct rows_job *j, struct rows_pass *rp, uint64_t x, double *diag,
                       struct tpv_err *err)
{
    const struct tpv_jsrc *s = j->s;
    const struct osrc *o = s->impl;
    uint64_t K = s->K, R = rp->R;
    int rc = forward_rows(o, rp->ex1, x, 1, rp->x, err);
    if (!rc && R > 1)
        replicate(o->m, rp);
    for (uint64_t k0 = 0; !rc && k0 < (j->r ? 1 : K); k0 += R) {
        uint64_t nr = j->r ? 1 : (K - k0 < R ? K - k0 : R);
        memset(rp->seed, 0, R * K * sizeof *rp->seed);
        if (j->r)
            memcpy(rp->seed, j->r + x * K, K * sizeof *rp->seed);
        for (uint64_t i = 0; !j->r && i < nr; i++)
            rp->seed[i * K + k0 + i] = 1.0;
        rc = tpv_onnx_exec_vjp(rp->exR, o->m->outputs[0], rp->seed, err);
        if (!rc)
            rc = tpv_onnx_persample_grads_shared(o->ps, rp->exR, o->offset, s->p, !o->float64,
                                                 &rp->ws, rp->G, err);
        if (!rc)
            rows_squares(j, rp->G, nr, x, diag);
    }
    return rc;
}

/* Thread t of nt: samples [n t / nt, n (t + 1) / nt); thread 0 (the caller's) reports. */
static void rows_main(void *ctx, int t, int nt)
{
    struct rows_job *j = ctx;
    const struct tpv_jsrc *s = j->s;
    const struct osrc *o = s->impl;
    struct tpv_err *err = &j->err[t];
    uint64_t x0 = s->n * (uint64_t)t / (uint64_t)nt, x1 = s->n * (uint64_t)(t + 1) / (uint64_t)nt;
    struct rows_pass rp;
    int rc = rows_open(s, j->r ? 1 : o->rows, &rp, err);
    for (uint64_t x = x0; !rc && x < x1 && !atomic_load(&j->stop); x++) {
        rc = rows_sample(j, &rp, x, j->diag + (uint64_t)t * s->p, err);
        uint64_t done = atomic_fetch_add(&j->done, 1) + 1;
        if (!rc && t == 0 && tpv_progress_report(j->pg, 0, 1, done, s->n))
            rc = canceled(err);
    }
    if (rc)
        atomic_store(&j->stop, 1);
    rows_close(&rp);
    j->rc[t] = rc;
}

static int rows_threads(const struct tpv_jsrc *s)
{
    int nt = tpv_linalg_threads();
    if (nt > THREADS_MAX)
        nt = THREADS_MAX;
    return (uint64_t)nt > s->n ? (int)s->n : nt;
}

/* sqdiag (r NULL) or sqdiag_projected (r) one sample at a time, its outputs sharing passes
 * (tpv_onnx_persample_grads_shared), the samples split over the job's threads; each thread sums
 * its own diagonal, added in thread order (the result depends on the thread count only). */
static int rows_squares_all(const struct tpv_jsrc *s, const double *r, double *diag,
                            double *total, const struct sample_parts *sp,
                            const struct tpv_progress *pg, struct tpv_err *err)
{
    int nt = rows_threads(s);
    struct rows_job *j = calloc(1, sizeof *j);
    double *d = j ? calloc((size_t)nt * s->p, sizeof *d) : NULL;
    if (!d) {
        free(j);
        return nomem(err);
    }
    j->s = s;
    j->r = r;
    j->diag = d;
    j->total = total;
    j->sp = sp;
    j->pg = pg;
    tpv_parallel_run(nt, rows_main, j); /* BLAS single-threaded inside, restored after */
    int rc = TPV_OK;
    for (int t = 0; t < nt && !rc; t++)
        if (j->rc[t]) {
            rc = j->rc[t];
            *err = j->err[t];
        }
    for (int t = 0; !rc && t < nt; t++)
        for (uint64_t c = 0; c < s->p; c++)
            diag[c] += d[(uint64_t)t * s->p + c];
    free(d);
    free(j);
    return rc;
}

/* The batched path when the graph qualifies and more than one sample fits a pass: at one sample
 * per pass it does the reference path's work with a second walk over the graph (8 % slower on
 * ResNet-20). */
static bool use_batched(const struct tpv_jsrc *s)
{
    const struct osrc *o = s->impl;
    return o->ps && !o->reference && (o->force_batched || act_batch(o) > 1);
}

/* The shared path of one sample at a time: the graph qualifies for per-sample gradients and the
 * batched path does not run (projected: one output per pass, no replication needed). */
static bool use_rows(const struct tpv_jsrc *s, bool projected)
{
    const struct osrc *o = s->impl;
    if (!o->ps || o->reference || (!projected && !o->rows))
        return false;
    return o->force_rows || !use_batched(s);
}

static int os_sqdiag(const struct tpv_jsrc *s, double *diag, const struct tpv_progress *pg,
                     struct tpv_err *err)
{
    if (use_rows(s, false))
        return rows_squares_all(s, NULL, diag, NULL, NULL, pg, err);
    if (use_batched(s))
        return fast_squares(s, NULL, diag, NULL, NULL, pg, err);
    return sq_accumulate(s, NULL, true, diag, NULL, NULL, pg, err);
}

/* sqdiag with the per-sample parts of nc weighted traces, from the same gradient rows. */
static int os_sqdiag_samples(const struct tpv_jsrc *s, double *diag, size_t nc,
                             const double *const *c, double *out, const struct tpv_progress *pg,
                             struct tpv_err *err)
{
    struct sample_parts sp = { nc, c, out, s->n };
    if (use_rows(s, false))
        return rows_squares_all(s, NULL, diag, NULL, &sp, pg, err);
    if (use_batched(s))
        return fast_squares(s, NULL, diag, NULL, &sp, pg, err);
    return sq_accumulate(s, NULL, true, diag, NULL, &sp, pg, err);
}

static int os_sqdiag_projected(const struct tpv_jsrc *s, const double *r, double *diag,
                               double *total, const struct tpv_progress *pg, struct tpv_err *err)
{
    if (use_rows(s, true))
        return rows_squares_all(s, r, diag, total, NULL, pg, err);
    if (use_batched(s))
        return fast_squares(s, r, diag, total, NULL, pg, err);
    return sq_accumulate(s, r, false, diag, total, NULL, pg, err);
}

static int os_gram(const struct tpv_jsrc *a, const struct tpv_jsrc *b, double *out,
                   const struct tpv_progress *pg, struct tpv_err *err)
{
    if (use_batched(a) && use_batched(b))
        return fast_gram(a, b, out, pg, err);
    return ref_gram(a, b, out, pg, err);
}

void tpv_onnx_source_set_reference(struct tpv_jsrc *s, bool on)
{
    ((struct osrc *)s->impl)->reference = on;
}

void tpv_onnx_source_set_panel_bytes(struct tpv_jsrc *s, uint64_t bytes)
{
    ((struct osrc *)s->impl)->panel_bytes = bytes;
    ((struct osrc *)s->impl)->force_batched = true;
}

bool tpv_onnx_source_batched(const struct tpv_jsrc *s)
{
    return !use_rows(s, false) && use_batched(s);
}

void tpv_onnx_source_set_rows(struct tpv_jsrc *s, bool on)
{
    ((struct osrc *)s->impl)->force_rows = on;
}

bool tpv_onnx_source_rows(const struct tpv_jsrc *s)
{
    return use_rows(s, false);
}

void tpv_onnx_source_set_float64(struct tpv_jsrc *s, bool on)
{
    ((struct osrc *)s->impl)->float64 = on;
}

/* What one batched pass does after its forward pass: samples [x0, x0 + b) are in ex. */
typedef int (*batch_fn)(const struct tpv_jsrc *s, struct tpv_onnx_exec *ex, uint64_t x0,
                        size_t b, void *ctx, struct tpv_err *err);

/* Batched forward passes over every sample (o->batch at a time; the executor reopened when the
 * last batch is shorter), each followed by fn.  `params` (NULL: the model's) are the parameter
 * values in column order the executors read instead of the initializers (an executor's values
 * are its own; the plan's and the model's are not written). */
static int for_batches_with(const struct tpv_jsrc *s, double *params, batch_fn fn,
                            void *ctx, const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct osrc *o = s->impl;
    double *x = malloc(o->batch * o->per * sizeof *x);
    int rc = x ? TPV_OK : nomem(err);
    struct tpv_onnx_plan *plan = NULL;
    struct tpv_onnx_exec *ex = NULL;
    size_t open = 0;
    for (uint64_t x0 = 0; !rc && x0 < s->n; x0 += o->batch) {
        size_t b = s->n - x0 < o->batch ? (size_t)(s->n - x0) : o->batch;
        if (b != open) {
            tpv_onnx_exec_free(ex);
            tpv_onnx_plan_free(plan);
            rc = open_batch(o, b, &plan, &ex, err);
            open = b;
            for (size_t j = 0; params && !rc && j < s->layout.nblocks; j++)
                ex->vals[o->m->params[j]].data = params + s->layout.blocks[j].offset;
        }
        if (!rc)
            rc = forward_rows(o, ex, x0, b, x, err);
        if (!rc)
            rc = fn(s, ex, x0, b, ctx, err);
        if (!rc && tpv_progress_report(pg, 0, 1, x0 + b, s->n))
            rc = canceled(err);
    }
    tpv_onnx_exec_free(ex);
    tpv_onnx_plan_free(plan);
    free(x);
    return rc;
}

static int for_batches(const struct tpv_jsrc *s, batch_fn fn, void *ctx,
                       const struct tpv_progress *pg, struct tpv_err *err)
{
    return for_batches_with(s, NULL, fn, ctx, pg, err);
}

struct jvp_ctx {
    const double **seed; /* per value: the tangent of a parameter, else NULL */
    double *out;
};

static int jvp_batch(const struct tpv_jsrc *s, struct tpv_onnx_exec *ex, uint64_t x0, size_t b,
                     void *ctx, struct tpv_err *err)
{
    const struct osrc *o = s->impl;
    struct jvp_ctx *c = ctx;
    int rc = tpv_onnx_exec_jvp(ex, c->seed, err);
    if (!rc)
        memcpy(c->out + x0 * s->K, tpv_onnx_exec_tangent(ex, o->m->outputs[0]),
               b * s->K * sizeof *c->out);
    return rc;
}

static int os_jvp(const struct tpv_jsrc *s, const double *v, double *out,
                  const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct osrc *o = s->impl;
    struct jvp_ctx c = { calloc(o->m->nvalues, sizeof *c.seed), out };
    if (!c.seed)
        return nomem(err);
    for (size_t j = 0; j < s->layout.nblocks; j++)
        c.seed[o->m->params[j]] = v + s->layout.blocks[j].offset;
    int rc = for_batches(s, jvp_batch, &c, pg, err);
    free(c.seed);
    return rc;
}

struct vjp_ctx {
    const double *u;
    double *out;
};

static int vjp_batch(const struct tpv_jsrc *s, struct tpv_onnx_exec *ex, uint64_t x0, size_t b,
                     void *ctx, struct tpv_err *err)
{
    (void)b;
    const struct osrc *o = s->impl;
    struct vjp_ctx *c = ctx;
    int rc = tpv_onnx_exec_vjp(ex, o->m->outputs[0], c->u + x0 * s->K, err);
    for (size_t j = 0; !rc && j < s->layout.nblocks; j++) {
        const struct tpv_block *bl = &s->layout.blocks[j];
        const double *g = tpv_onnx_exec_grad(ex, o->m->params[j]);
        for (uint64_t i = 0; i < bl->count; i++)
            c->out[bl->offset + i] += g[i];
    }
    return rc;
}

static int os_vjp(const struct tpv_jsrc *s, const double *u, double *out,
                  const struct tpv_progress *pg, struct tpv_err *err)
{
    memset(out, 0, s->p * sizeof *out);
    struct vjp_ctx c = { u, out };
    return for_batches(s, vjp_batch, &c, pg, err);
}

/* ---- block products (jacobian.h jvp_block / vjp_block) ---- */

/* One pass of block products: per batch of samples their gradient rows (b K x p), then a GEMM
 * with the block, so that a block of vectors costs one pass of K reverse passes per sample
 * instead of one forward and one tangent or reverse pass per vector. */
struct block_pass {
    struct pass ps;
    double *seed, *G, *panel;
    size_t bs; /* samples per panel */
};

static int block_open(const struct tpv_jsrc *s, struct block_pass *bp, struct tpv_err *err)
{
    const struct osrc *o = s->impl;
    memset(bp, 0, sizeof *bp);
    bp->bs = samples_within(s, s->K, o->panel_bytes);
    bp->seed = malloc(bp->bs * s->K * sizeof *bp->seed);
    bp->G = malloc(bp->bs * s->p * sizeof *bp->G);
    bp->panel = malloc(bp->bs * s->K * s->p * sizeof *bp->panel);
    return bp->seed && bp->G && bp->panel ? TPV_OK : nomem(err);
}

static void block_close(struct block_pass *bp)
{
    pass_close(&bp->ps);
    free(bp->seed);
    free(bp->G);
    free(bp->panel);
}

/* Gradient rows of samples [x0, x0 + b) into bp->panel: the batched per-sample path where it
 * runs, else one reverse pass per (sample, output). */
static int block_panel(const struct tpv_jsrc *s, struct block_pass *bp, uint64_t x0, size_t b,
                       struct tpv_err *err)
{
    if (use_batched(s))
        return fast_panel(s, &bp->ps, x0, b, bp->seed, bp->G, bp->panel, err);
    return grad_panel(s, x0 * s->K, b * s->K, bp->panel, err);
}

/* out (n K x nb) = J V, V (p x nb): one gradient panel per batch of samples, then a GEMM. */
static int os_jvp_block(const struct tpv_jsrc *s, const double *V, uint64_t nb, double *out,
                        const struct tpv_progress *pg, struct tpv_err *err)
{
    struct block_pass bp;
    int rc = block_open(s, &bp, err);
    for (uint64_t x0 = 0; !rc && x0 < s->n; x0 += bp.bs) {
        size_t b = s->n - x0 < bp.bs ? (size_t)(s->n - x0) : bp.bs;
        rc = block_panel(s, &bp, x0, b, err);
        if (!rc)
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(b * s->K), (int)nb,
                        (int)s->p, 1.0, bp.panel, (int)s->p, V, (int)nb, 0.0,
                        out + x0 * s->K * nb, (int)nb);
        if (!rc && tpv_progress_report(pg, 0, 1, x0 + b, s->n))
            rc = canceled(err);
    }
    block_close(&bp);
    return rc;
}

/* out (p x nb) = J^T U, U (n K x nb): the panels of os_jvp_block, transposed. */
static int os_vjp_block(const struct tpv_jsrc *s, const double *U, uint64_t nb, double *out,
                        const struct tpv_progress *pg, struct tpv_err *err)
{
    struct block_pass bp;
    int rc = block_open(s, &bp, err);
    if (!rc)
        memset(out, 0, s->p * nb * sizeof *out);
    for (uint64_t x0 = 0; !rc && x0 < s->n; x0 += bp.bs) {
        size_t b = s->n - x0 < bp.bs ? (size_t)(s->n - x0) : bp.bs;
        rc = block_panel(s, &bp, x0, b, err);
        if (!rc)
            cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)s->p, (int)nb,
                        (int)(b * s->K), 1.0, bp.panel, (int)s->p, U + x0 * s->K * nb, (int)nb,
                        1.0, out, (int)nb);
        if (!rc && tpv_progress_report(pg, 0, 1, x0 + b, s->n))
            rc = canceled(err);
    }
    block_close(&bp);
    return rc;
}

static int outputs_batch(const struct tpv_jsrc *s, struct tpv_onnx_exec *ex, uint64_t x0,
                         size_t b, void *ctx, struct tpv_err *err)
{
    (void)err;
    const struct osrc *o = s->impl;
    double *out = ctx;
    memcpy(out + x0 * s->K, tpv_onnx_exec_value(ex, o->m->outputs[0])->data,
           b * s->K * sizeof *out);
    return TPV_OK;
}

/* The model's outputs over the inputs: batched forward passes only. */
static int os_outputs(const struct tpv_jsrc *s, double *out, const struct tpv_progress *pg,
                      struct tpv_err *err)
{
    return for_batches(s, outputs_batch, out, pg, err);
}

/* The parameters w + dw in column order: a copy, the model's initializers stay untouched (other
 * jobs' threads read them). */
static double *shifted_params(const struct tpv_jsrc *s, const double *dw)
{
    const struct osrc *o = s->impl;
    double *w = malloc((s->p ? s->p : 1) * sizeof *w);
    for (size_t j = 0; w && j < s->layout.nblocks; j++) {
        const struct tpv_block *bl = &s->layout.blocks[j];
        const double *w0 = o->m->values[o->m->params[j]].t.data;
        for (uint64_t i = 0; i < bl->count; i++)
            w[bl->offset + i] = w0[i] + dw[bl->offset + i];
    }
    return w;
}

/* Outputs of the graph with parameters w + dw: batched forward passes whose executors read the
 * parameters from a copy. */
static int os_outputs_perturbed(const struct tpv_jsrc *s, const double *dw, double *out,
                                const struct tpv_progress *pg, struct tpv_err *err)
{
    double *w = shifted_params(s, dw);
    int rc = w ? for_batches_with(s, w, outputs_batch, out, pg, err) : nomem(err);
    free(w);
    return rc;
}

static uint64_t os_scratch_bytes(const struct tpv_jsrc *s)
{
    const struct osrc *o = s->impl;
    /* one batched executor (values, adjoints, tangents) plus the gram panels */
    uint64_t act = o->plan1->act_bytes * o->batch * 3;
    uint64_t batched = act + PANEL_BYTES + s->p * sizeof(double) * 2;
    /* the shared path, per thread: a batch-1 and an R-row executor (values and adjoints), R
     * gradient rows and a diagonal */
    uint64_t R = o->rows ? o->rows : 1, a1 = o->plan1->act_bytes;
    uint64_t per = tpv_sat_add(tpv_sat_mul(2 * (R + 1), a1),
                               tpv_sat_mul((R + 1) * sizeof(double), s->p));
    uint64_t rows = tpv_sat_mul((uint64_t)rows_threads(s), per);
    return rows > batched ? rows : batched;
}

/* Multiply-adds x 2 of one sample's forward pass: Conv, Gemm and MatMul by their products, every
 * other node by its output size. */
static double forward_flops(const struct osrc *o)
{
    const struct tpv_onnx_model *m = o->m;
    const struct tpv_onnx_plan *p = o->plan1;
    double f = 0;
    for (size_t i = 0; i < m->nnodes; i++) {
        if (!p->run[i])
            continue;
        const struct tpv_onnx_node *nd = &m->nodes[i];
        const struct tpv_onnx_tensor *y = &p->vals[nd->out[0]];
        const struct tpv_onnx_tensor *a = &p->vals[nd->in[0]];
        const struct tpv_onnx_tensor *w = nd->nin > 1 && nd->in[1] >= 0 ? &p->vals[nd->in[1]] : a;
        double per_out = 1;
        if (strcmp(nd->op_type, "Conv") == 0 && w->shape[0] > 0)
            per_out = 2.0 * (double)w->numel / (double)w->shape[0];
        else if (strcmp(nd->op_type, "Gemm") == 0 || strcmp(nd->op_type, "MatMul") == 0)
            per_out = 2.0 * (double)(w->rank >= 2 ? w->shape[w->rank - 2] : w->shape[0]);
        if (strcmp(nd->op_type, "Gemm") == 0) {
            int64_t tb = 0;
            struct tpv_err ignore;
            /* Gemm's inner dimension is B's second one when transB */
            if (tpv_onnx_attr_int(nd, "transB", 0, &tb, &ignore) == TPV_OK && tb)
                per_out = 2.0 * (double)w->shape[1];
        }
        f += per_out * (double)y->numel;
    }
    return f;
}

/* A reverse pass costs about twice the forward one (input and weight adjoints). */
static void os_costs(const struct tpv_jsrc *s, double *sqdiag_flops, double *projected_flops)
{
    double f = forward_flops(s->impl), n = (double)s->n, K = (double)s->K, p = (double)s->p;
    *sqdiag_flops = n * (f + K * 2.0 * f) + n * K * p;
    *projected_flops = n * 3.0 * f + n * p;
}

static void os_free(struct tpv_jsrc *s)
{
    struct osrc *o = s->impl;
    if (o) {
        tpv_onnx_exec_free(o->ex1);
        tpv_onnx_plan_free(o->plan1);
        tpv_onnx_persample_free(o->ps);
        free(o->offset);
        free(o->x1);
        free(o);
    }
    tpv_layout_free(&s->layout);
    free(s);
}

static const struct tpv_jsrc_ops onnx_source_ops = {
    .sqdiag = os_sqdiag,
    .sqdiag_samples = os_sqdiag_samples,
    .gram = os_gram,
    .jvp = os_jvp,
    .sqdiag_projected = os_sqdiag_projected,
    .scratch_bytes = os_scratch_bytes,
    .free = os_free,
    .vjp = os_vjp,
    .costs = os_costs,
    .outputs = os_outputs,
    .outputs_perturbed = os_outputs_perturbed,
    .jvp_block = os_jvp_block,
    .vjp_block = os_vjp_block,
};

static int make_layout(struct tpv_jsrc *s, const struct tpv_onnx_model *m, struct tpv_err *err)
{
    s->layout.blocks = calloc(m->nparams ? m->nparams : 1, sizeof *s->layout.blocks);
    if (!s->layout.blocks)
        return nomem(err);
    uint64_t off = 0;
    for (size_t j = 0; j < m->nparams; j++) {
        const struct tpv_onnx_value *v = &m->values[m->params[j]];
        struct tpv_block *b = &s->layout.blocks[j];
        b->name = strdup(v->name);
        s->layout.nblocks = j + 1;
        if (!b->name)
            return nomem(err);
        b->rank = v->t.rank;
        for (int i = 0; i < v->t.rank; i++)
            b->shape[i] = (uint64_t)v->t.shape[i];
        b->offset = off;
        b->count = v->t.numel;
        off += v->t.numel;
    }
    s->layout.p = off;
    s->p = off;
    return TPV_OK;
}

/* Outputs per shared pass: all K if their executor and gradient rows fit ROWS_BUDGET, else as
 * few passes as fit, of equal size; o->rows stays 0 when the values cannot be replicated. */
static int open_rows(struct tpv_jsrc *s, struct tpv_onnx_tensor *in, struct tpv_err *err)
{
    struct osrc *o = s->impl;
    uint64_t per = tpv_sat_add(tpv_sat_mul(2, o->plan1->act_bytes), s->p * sizeof(double));
    uint64_t fit = per ? ROWS_BUDGET / per : s->K;
    if (fit < 1)
        fit = 1;
    uint64_t passes = (s->K + fit - 1) / fit, R = (s->K + passes - 1) / passes;
    if (R <= 1) {
        o->rows = 1;
        return TPV_OK;
    }
    struct tpv_onnx_plan *plan = NULL;
    in->shape[0] = (int64_t)R;
    struct tpv_err ignore;
    int rc = tpv_onnx_plan_new(&plan, o->m, in, &ignore);
    if (rc == TPV_ENOMEM)
        return nomem(err);
    o->rows = !rc && replicable(o->plan1, plan, R, o->m->nvalues) ? R : 0;
    tpv_onnx_plan_free(plan);
    return TPV_OK;
}

/* The batched per-sample path when the graph qualifies (checked on a plan at batch 2); a graph
 * that does not, or one with a fixed batch of 1, keeps one reverse pass per sample. */
static int open_persample(struct tpv_jsrc *s, struct tpv_err *err)
{
    struct osrc *o = s->impl;
    o->panel_bytes = PANEL_BYTES;
    o->offset = malloc((s->layout.nblocks ? s->layout.nblocks : 1) * sizeof *o->offset);
    if (!o->offset)
        return nomem(err);
    for (size_t j = 0; j < s->layout.nblocks; j++)
        o->offset[j] = s->layout.blocks[j].offset;
    if (o->batch == 1)
        return TPV_OK;
    struct tpv_onnx_plan *two = NULL;
    struct tpv_onnx_tensor in = {.dtype = TPV_ONNX_F64, .rank = o->inputs.rank};
    for (int i = 0; i < o->inputs.rank; i++)
        in.shape[i] = (int64_t)o->inputs.shape[i];
    in.shape[0] = 2;
    struct tpv_err ignore;
    int rc = tpv_onnx_plan_new(&two, o->m, &in, err);
    if (!rc && tpv_onnx_persample_new(&o->ps, o->m, o->plan1, two, &ignore) == TPV_ENOMEM)
        rc = nomem(err);
    tpv_onnx_plan_free(two);
    return rc || !o->ps ? rc : open_rows(s, &in, err);
}

int tpv_onnx_source_new(struct tpv_jsrc **out, const struct tpv_onnx_model *m,
                        const struct tpv_tensor *inputs, struct tpv_err *err)
{
    *out = NULL;
    if (m->ninputs != 1 || m->noutputs != 1 || inputs->rank < 1 || inputs->shape[0] == 0)
        return tpv_err_set(err, TPV_EINVAL, "inputs",
                           "a scored model and a non-empty input set are required");
    if (inputs->dtype != TPV_DTYPE_F16 && inputs->dtype != TPV_DTYPE_BF16 &&
        inputs->dtype != TPV_DTYPE_F32 && inputs->dtype != TPV_DTYPE_F64)
        return tpv_err_set(err, TPV_EINVAL, "inputs", "the input set must be a float tensor");
    struct tpv_jsrc *s = calloc(1, sizeof *s);
    struct osrc *o = calloc(1, sizeof *o);
    if (!s || !o) {
        free(s);
        free(o);
        return nomem(err);
    }
    s->ops = &onnx_source_ops;
    s->impl = o;
    s->n = inputs->shape[0];
    o->m = m;
    o->inputs = *inputs;
    o->per = inputs->numel / inputs->shape[0];
    o->batch = m->values[m->inputs[0]].t.shape[0] == 1 ? 1 : BATCH;
    int rc = make_layout(s, m, err);
    if (!rc)
        rc = open_batch(o, 1, &o->plan1, &o->ex1, err);
    if (!rc) {
        const struct tpv_onnx_tensor *y = &o->plan1->vals[m->outputs[0]];
        if (y->rank < 1 || y->shape[0] != 1 || y->dtype != TPV_ONNX_F64 ||
            o->plan1->known[m->outputs[0]])
            rc = tpv_err_set(err, TPV_EINVAL, "output",
                             "the graph output must be a float tensor (batch, ...) computed "
                             "from the input");
        s->K = y->numel;
        o->x1 = malloc(o->per * sizeof *o->x1);
        if (!rc && !o->x1)
            rc = nomem(err);
    }
    if (!rc)
        rc = open_persample(s, err);
    if (rc) {
        os_free(s);
        return rc;
    }
    *out = s;
    return TPV_OK;
}
