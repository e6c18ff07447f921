/* mlp_source.c: the Jacobian source ops (core/jacobian.h) over a sequential MLP, by structured
 * per-layer products (DESIGN.md section 3, estimators; mlp_source.h).
 *
 * Notation: layers l = 0..L-1, z_l = W_l a_{l-1} + b_l (a_{-1} = the input after any leading
 * activations), a_l = phi_l(z_l), f = a_{L-1}.  For output k, delta_l^k = dF_k/dz_l is
 * e_k .* phi'_{L-1} at the last layer and (delta_{l+1} W_{l+1}) .* phi'_l below it.  The
 * all-outputs products keep delta for every hidden layer as a (rows*K x out_l) matrix, rows
 * ordered (sample, output); the last layer's delta is diagonal per sample and never stored. */
#include "core/mlp_source.h"

#include "core/linalg.h"

#include <cblas.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_MAX 256          /* samples per batch */
#define DELTA_BUDGET (1u << 22) /* doubles of stored deltas per batch (32 MiB) */
#define ROWS_MAX 2048           /* batch * K bound for the all-outputs products */

struct msrc {
    const struct tpv_mlp *m;
    struct tpv_tensor inputs; /* a copy of the view; the data must outlive the source */
    size_t ball;              /* samples per batch, all-outputs products (sqdiag, gram) */
    size_t bone;              /* samples per batch, one-seed products (jvp, projected) */
    uint64_t maxw;            /* widest layer output */
    uint64_t maxin;           /* widest layer input */
    uint64_t sum_out, sum_in; /* layer outputs and inputs, summed over layers */
    size_t bproj;             /* samples per batch of the one-seed backward (<= bone) */
};

static const struct tpv_jsrc_ops mlp_source_ops;

static size_t min_sz(size_t a, size_t b)
{
    return a < b ? a : b;
}

static int canceled(struct tpv_err *err)
{
    return tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
}

static int nomem(struct tpv_err *err)
{
    return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
}

/* Byte counts of the work buffers: checked products and sums where UINT64_MAX marks "does not
 * fit in 64 bits" and stays so through every later step (the memory plan refuses it). */
static uint64_t ck_mul(uint64_t a, uint64_t b)
{
    uint64_t r;
    if (a == UINT64_MAX || b == UINT64_MAX || __builtin_mul_overflow(a, b, &r))
        return UINT64_MAX;
    return r;
}

static uint64_t ck_add(uint64_t a, uint64_t b)
{
    uint64_t r;
    if (a == UINT64_MAX || b == UINT64_MAX || __builtin_add_overflow(a, b, &r))
        return UINT64_MAX;
    return r;
}

/* malloc of a * b doubles, NULL when the size overflows. */
static double *alloc_doubles(uint64_t a, uint64_t b)
{
    uint64_t bytes = ck_mul(ck_mul(a, b), sizeof(double));
    if (bytes == UINT64_MAX || bytes > SIZE_MAX)
        return NULL;
    return malloc(bytes ? (size_t)bytes : 1);
}

/* ---- all-outputs backward of one batch ---- */

struct kback {
    struct tpv_mlp_ws ws;
    double *x;       /* cap x d */
    double **delta;  /* hidden layers l < L-1: (cap*K x out_l) */
    size_t nhidden;
};

static void kback_free(struct kback *kb)
{
    tpv_mlp_ws_free(&kb->ws);
    free(kb->x);
    for (size_t l = 0; kb->delta && l < kb->nhidden; l++)
        free(kb->delta[l]);
    free(kb->delta);
    memset(kb, 0, sizeof *kb);
}

static uint64_t kback_bytes(const struct tpv_mlp *m, size_t cap)
{
    uint64_t b = ck_add(tpv_mlp_ws_bytes(m, cap), ck_mul(ck_mul(cap, m->d), sizeof(double)));
    for (size_t l = 0; l + 1 < m->L; l++)
        b = ck_add(b, ck_mul(ck_mul(ck_mul(cap, m->K), m->layers[l].out), sizeof(double)));
    return b;
}

static int kback_init(struct kback *kb, const struct tpv_mlp *m, size_t cap, struct tpv_err *err)
{
    memset(kb, 0, sizeof *kb);
    int rc = tpv_mlp_ws_init(&kb->ws, m, cap, err);
    if (rc)
        return rc;
    kb->nhidden = m->L - 1;
    kb->x = alloc_doubles(cap, m->d);
    kb->delta = calloc(kb->nhidden ? kb->nhidden : 1, sizeof *kb->delta);
    bool ok = kb->x && kb->delta;
    for (size_t l = 0; ok && l < kb->nhidden; l++)
        ok = (kb->delta[l] = alloc_doubles(ck_mul(cap, m->K), m->layers[l].out)) != NULL;
    if (!ok) {
        kback_free(kb);
        return nomem(err);
    }
    return TPV_OK;
}

/* Flops per sample of kback_part: the forward pass and K deltas through every hidden layer. */
static double kback_sample_flops(const struct tpv_mlp *m)
{
    double f = tpv_mlp_sample_flops(m);
    for (size_t l = 0; l + 1 < m->L; l++)
        f += (double)m->K * (2.0 * (double)m->layers[l + 1].in * (double)m->layers[l + 1].out +
                             2.0 * (double)m->layers[l].out);
    return f;
}

/* Threads for `rows` samples of `per_sample` flops each (never more than the samples). */
static int sample_threads(size_t rows, double per_sample)
{
    int nt = tpv_split_threads((double)rows * per_sample);
    return (size_t)nt > rows ? (int)(rows ? rows : 1) : nt;
}

/* Rows [r0, r0 + nr) of the batch of samples from `first`: inputs, forward pass and the delta of
 * every hidden layer for all K outputs.  Per sample, so any split of a batch gives the same. */
static void kback_part(const struct msrc *s, struct kback *kb, uint64_t first, size_t r0,
                       size_t nr)
{
    const struct tpv_mlp *m = s->m;
    const size_t L = m->L, K = m->K;
    tpv_mlp_read_inputs(m, &s->inputs, first + r0, nr, kb->x + r0 * m->d);
    tpv_mlp_ws_forward_part(m, &kb->ws, kb->x, r0, nr);
    if (L < 2)
        return;
    /* Layer L-2: row (x,k) = phi'_{L-1}(x)_k * W_{L-1}[k,:] .* phi'_{L-2}(x). */
    const struct tpv_mlp_layer *last = &m->layers[L - 1];
    const size_t w = last->in;
    const double *dl = kb->ws.dphi[L - 1], *dh = kb->ws.dphi[L - 2];
    double *D = kb->delta[L - 2];
    for (size_t x = r0; x < r0 + nr; x++)
        for (size_t k = 0; k < K; k++) {
            double c = dl[x * K + k];
            const double *wr = last->W + k * w, *dp = dh + x * w;
            double *row = D + (x * K + k) * w;
            for (size_t i = 0; i < w; i++)
                row[i] = c * wr[i] * dp[i];
        }
    for (size_t l = L - 2; l >= 1; l--) {
        const struct tpv_mlp_layer *ml = &m->layers[l];
        const size_t in = ml->in, out = ml->out;
        double *Dp = kb->delta[l - 1];
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(nr * K), (int)in, (int)out,
                    1.0, kb->delta[l] + r0 * K * out, (int)out, ml->W, (int)in, 0.0,
                    Dp + r0 * K * in, (int)in);
        const double *dp = kb->ws.dphi[l - 1];
        for (size_t x = r0; x < r0 + nr; x++)
            for (size_t k = 0; k < K; k++) {
                double *row = Dp + (x * K + k) * in;
                for (size_t i = 0; i < in; i++)
                    row[i] *= dp[x * in + i];
            }
    }
}

struct kback_split {
    const struct msrc *s;
    struct kback *kb;
    uint64_t first;
    size_t rows;
};

static void kback_split_part(void *ctx, int t, int nt)
{
    const struct kback_split *k = ctx;
    uint64_t r0, nr;
    tpv_split_range(k->rows, TPV_SPLIT_ALIGN, t, nt, &r0, &nr);
    if (nr)
        kback_part(k->s, k->kb, k->first, (size_t)r0, (size_t)nr);
}

/* kback_part of samples [first, first + rows), split over the samples on the job's threads. */
static void kback_run(const struct msrc *s, struct kback *kb, uint64_t first, size_t rows)
{
    struct kback_split k = { s, kb, first, rows };
    kb->ws.rows = rows;
    tpv_parallel_run(sample_threads(rows, kback_sample_flops(s->m)), kback_split_part, &k);
}

static const double *layer_input(const struct tpv_mlp_ws *ws, size_t l)
{
    return l == 0 ? ws->a0 : ws->a[l - 1];
}

static void square_into(const double *a, double *a2, size_t count)
{
    for (size_t i = 0; i < count; i++)
        a2[i] = a[i] * a[i];
}

/* Output units [o0, o0 + no) of layer l: diag over those rows of W_l += S^T A and over those
 * entries of b_l += column sums of S, with S (rows x out) and A (rows x in).  Every sum runs
 * over all rows of the batch in order, so a split over units gives the values of the whole. */
static void units_accumulate(const struct tpv_mlp_layer *ml, const double *S, const double *A,
                             size_t rows, size_t o0, size_t no, double *diag)
{
    const size_t in = ml->in, out = ml->out;
    if (no == 0)
        return;
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)no, (int)in, (int)rows, 1.0,
                S + o0, (int)out, A, (int)in, 1.0, diag + ml->w_off + o0 * in, (int)in);
    if (ml->b) {
        double *db = diag + ml->b_off;
        for (size_t x = 0; x < rows; x++)
            for (size_t i = o0; i < o0 + no; i++)
                db[i] += S[x * out + i];
    }
}

/* The reduction over a batch's samples into the parameter vector, split over output units:
 * per layer l, acc[W_l] += S_l^T A_l and acc[b_l] += column sums of S_l, with S_l and A_l the
 * layer's blocks (rows x out_l at S + cap * soff_l, rows x in_l at A[l]). */
struct units_split {
    const struct tpv_mlp *m;
    const double *S;         /* per layer, blocks of cap x out_l */
    const double *const *A;  /* per layer, rows x in_l */
    size_t cap, rows;
    double *acc;
};

static void units_split_part(void *ctx, int t, int nt)
{
    const struct units_split *u = ctx;
    size_t soff = 0;
    for (size_t l = 0; l < u->m->L; l++) {
        const struct tpv_mlp_layer *ml = &u->m->layers[l];
        uint64_t o0, no;
        tpv_split_range(ml->out, TPV_SPLIT_ALIGN, t, nt, &o0, &no);
        units_accumulate(ml, u->S + u->cap * soff, u->A[l], u->rows, (size_t)o0, (size_t)no,
                         u->acc);
        soff += ml->out;
    }
}

static void units_run(const struct tpv_mlp *m, const double *S, const double *const *A,
                      size_t cap, size_t rows, double *acc)
{
    double flops = 0;
    for (size_t l = 0; l < m->L; l++)
        flops += 2.0 * (double)rows * (double)m->layers[l].in * (double)m->layers[l].out;
    struct units_split u = { m, S, A, cap, rows, acc };
    tpv_parallel_run(tpv_split_threads(flops), units_split_part, &u);
}

/* ---- ops ---- */

/* Layer l's part of the per-sample weighted traces of a batch: with S (rows x out) the squared
 * deltas summed over outputs and A2 (rows x in) the squared inputs, sample x gets
 * sum_{o,i} C_oi S_xo A2_xi (+ sum_o c_b,o S_xo for the bias); C = ones reduces to
 * (sum_o S_xo)(sum_i A2_xi + 1).  P is rows x out scratch. */
static void samples_accumulate(const struct tpv_mlp_layer *ml, const double *S, const double *A2,
                               size_t rows, size_t nc, const double *const *c, double *P,
                               double *out, uint64_t n, uint64_t first)
{
    const size_t in = ml->in, o = ml->out;
    for (size_t m = 0; m < nc; m++) {
        double *dst = out + m * n + first;
        if (!c[m]) {
            for (size_t x = 0; x < rows; x++) {
                double ss = 0, sa = ml->b ? 1.0 : 0.0;
                for (size_t i = 0; i < o; i++)
                    ss += S[x * o + i];
                for (size_t i = 0; i < in; i++)
                    sa += A2[x * in + i];
                dst[x] += ss * sa;
            }
            continue;
        }
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)o, (int)in, 1.0, A2,
                    (int)in, c[m] + ml->w_off, (int)in, 0.0, P, (int)o);
        for (size_t x = 0; x < rows; x++) {
            double t = 0;
            for (size_t i = 0; i < o; i++)
                t += S[x * o + i] * (P[x * o + i] + (ml->b ? c[m][ml->b_off + i] : 0.0));
            dst[x] += t;
        }
    }
}

/* One batch of sqdiag_run, the per-sample part: kback, then per layer the squared deltas summed
 * over outputs (S_l) and the squared inputs (A2_l), and the per-sample traces. */
struct sq_split {
    const struct msrc *s;
    struct kback *kb;
    uint64_t first;
    size_t rows, cap;
    double *S, *A2, *P; /* per layer blocks of cap x out_l, cap x in_l; P cap x maxw */
    size_t nc;
    const double *const *c;
    double *per;
    uint64_t n;
};

static void sq_split_part(void *ctx, int t, int nt)
{
    const struct sq_split *q = ctx;
    const struct tpv_mlp *m = q->s->m;
    const size_t K = m->K;
    uint64_t r0_, nr_;
    tpv_split_range(q->rows, TPV_SPLIT_ALIGN, t, nt, &r0_, &nr_);
    const size_t r0 = (size_t)r0_, nr = (size_t)nr_;
    if (nr == 0)
        return;
    kback_part(q->s, q->kb, q->first, r0, nr);
    size_t soff = 0, aoff = 0;
    for (size_t l = 0; l < m->L; l++) {
        const struct tpv_mlp_layer *ml = &m->layers[l];
        const size_t out = ml->out, in = ml->in;
        double *S = q->S + q->cap * soff + r0 * out, *A2 = q->A2 + q->cap * aoff + r0 * in;
        if (l + 1 == m->L) {
            square_into(q->kb->ws.dphi[l] + r0 * out, S, nr * out);
        } else {
            const double *D = q->kb->delta[l];
            for (size_t x = r0; x < r0 + nr; x++) {
                double *srow = S + (x - r0) * out;
                memset(srow, 0, out * sizeof *srow);
                for (size_t k = 0; k < K; k++) {
                    const double *row = D + (x * K + k) * out;
                    for (size_t i = 0; i < out; i++)
                        srow[i] += row[i] * row[i];
                }
            }
        }
        square_into(layer_input(&q->kb->ws, l) + r0 * in, A2, nr * in);
        if (q->nc)
            samples_accumulate(ml, S, A2, nr, q->nc, q->c, q->P + r0 * q->s->maxw, q->per,
                               q->n, q->first + r0);
        soff += out;
        aoff += in;
    }
}

static int sqdiag_run(const struct tpv_jsrc *src, double *diag, size_t nc, const double *const *c,
                      double *per, const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct msrc *s = src->impl;
    const struct tpv_mlp *m = s->m;
    const size_t cap = s->ball;
    struct kback kb;
    int rc = kback_init(&kb, m, cap, err);
    if (rc)
        return rc;
    double *S = alloc_doubles(cap, s->sum_out), *A2 = alloc_doubles(cap, s->sum_in);
    double *P = nc ? alloc_doubles(cap, s->maxw) : NULL;
    const double **A = calloc(m->L, sizeof *A);
    if (!S || !A2 || (nc && !P) || !A) {
        rc = nomem(err);
        goto out;
    }
    for (size_t l = 0, aoff = 0; l < m->L; aoff += m->layers[l].in, l++)
        A[l] = A2 + cap * aoff;
    const double per_sample = kback_sample_flops(m) + 2.0 * (double)(s->sum_out * (m->K + 1));
    uint64_t nb = (src->n + cap - 1) / cap;
    for (uint64_t b = 0; b < nb; b++) {
        uint64_t first = b * cap;
        size_t rows = (size_t)min_sz(cap, src->n - first);
        struct sq_split q = { s, &kb, first, rows, cap, S, A2, P, nc, c, per, src->n };
        kb.ws.rows = rows;
        tpv_parallel_run(sample_threads(rows, per_sample), sq_split_part, &q);
        units_run(m, S, A, cap, rows, diag);
        if (tpv_progress_report(pg, 0, 1, b + 1, nb)) {
            rc = canceled(err);
            goto out;
        }
    }
out:
    free(S);
    free(A2);
    free(P);
    free(A);
    kback_free(&kb);
    return rc;
}

static int op_sqdiag(const struct tpv_jsrc *src, double *diag, const struct tpv_progress *pg,
                     struct tpv_err *err)
{
    return sqdiag_run(src, diag, 0, NULL, NULL, pg, err);
}

static int op_sqdiag_samples(const struct tpv_jsrc *src, double *diag, size_t nc,
                             const double *const *c, double *out, const struct tpv_progress *pg,
                             struct tpv_err *err)
{
    return sqdiag_run(src, diag, nc, c, out, pg, err);
}

static bool same_structure(const struct tpv_mlp *a, const struct tpv_mlp *b)
{
    if (a == b)
        return true;
    if (a->L != b->L || a->K != b->K || a->d != b->d || a->layout.p != b->layout.p)
        return false;
    for (size_t l = 0; l < a->L; l++)
        if (a->layers[l].in != b->layers[l].in || a->layers[l].out != b->layers[l].out ||
            !a->layers[l].b != !b->layers[l].b)
            return false;
    return true;
}

/* out block (rows ra of A from xa0, rows rb of B from yb0) = sum over layers of
 * (delta_A delta_B^T) .* (a_A a_B^T + 1), for A's samples [x0, x0 + nx) (their rows of GA, GD
 * and out: each entry is computed by one part, in the same order whatever the split).
 * ldo = n_B * K. */
static void gram_block_rows(const struct tpv_mlp *m, const struct kback *A, size_t x0, size_t nx,
                            const struct kback *B, size_t rb, double *GD, double *GA, double *out,
                            size_t ldo)
{
    const size_t K = m->K, L = m->L;
    for (size_t r = x0 * K; r < (x0 + nx) * K; r++)
        memset(out + r * ldo, 0, rb * K * sizeof *out);
    for (size_t l = 0; l < L; l++) {
        const struct tpv_mlp_layer *ml = &m->layers[l];
        const size_t in = ml->in, out_w = ml->out;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nx, (int)rb, (int)in, 1.0,
                    layer_input(&A->ws, l) + x0 * in, (int)in, layer_input(&B->ws, l), (int)in,
                    0.0, GA + x0 * rb, (int)rb);
        if (ml->b)
            for (size_t i = x0 * rb; i < (x0 + nx) * rb; i++)
                GA[i] += 1.0;
        if (l + 1 == L) { /* delta is e_k phi'_k: only k == k' terms */
            const double *pa = A->ws.dphi[l], *pb = B->ws.dphi[l];
            for (size_t x = x0; x < x0 + nx; x++)
                for (size_t k = 0; k < K; k++) {
                    double *orow = out + (x * K + k) * ldo;
                    double c = pa[x * K + k];
                    for (size_t y = 0; y < rb; y++)
                        orow[y * K + k] += c * pb[y * K + k] * GA[x * rb + y];
                }
            continue;
        }
        const size_t rk = rb * K;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(nx * K), (int)rk, (int)out_w,
                    1.0, A->delta[l] + x0 * K * out_w, (int)out_w, B->delta[l], (int)out_w, 0.0,
                    GD + x0 * K * rk, (int)rk);
        for (size_t x = x0; x < x0 + nx; x++)
            for (size_t k = 0; k < K; k++) {
                double *orow = out + (x * K + k) * ldo;
                const double *grow = GD + (x * K + k) * rk, *garow = GA + x * rb;
                for (size_t y = 0; y < rb; y++)
                    for (size_t k2 = 0; k2 < K; k2++)
                        orow[y * K + k2] += grow[y * K + k2] * garow[y];
            }
    }
}

/* One Gram block on the job's threads: its rows, then (for the Gram of a source with itself)
 * the exact symmetry of a diagonal block or the mirror of an off-diagonal one. */
struct gram_split {
    const struct tpv_mlp *m;
    const struct kback *A, *B;
    size_t ra, rb, ldo;
    double *GD, *GA, *blk, *mir; /* mir: the mirrored block, NULL if none */
    bool diag_block;
};

static void gram_split_rows(void *ctx, int t, int nt)
{
    const struct gram_split *g = ctx;
    uint64_t x0, nx;
    tpv_split_range(g->ra, TPV_SPLIT_ALIGN, t, nt, &x0, &nx);
    if (nx)
        gram_block_rows(g->m, g->A, (size_t)x0, (size_t)nx, g->B, g->rb, g->GD, g->GA, g->blk,
                        g->ldo);
}

/* Part t symmetrises the rows r = t mod nt of a diagonal block: it alone writes row r's upper
 * part and column r's lower part, and reads nothing another part writes. */
static void gram_split_mirror(void *ctx, int t, int nt)
{
    const struct gram_split *g = ctx;
    const size_t K = g->m->K, ldo = g->ldo;
    double *blk = g->blk;
    if (g->diag_block) {
        for (size_t r = (size_t)t; r < g->ra * K; r += (size_t)nt)
            for (size_t c = r + 1; c < g->ra * K; c++) {
                double v = 0.5 * (blk[r * ldo + c] + blk[c * ldo + r]);
                blk[r * ldo + c] = blk[c * ldo + r] = v;
            }
        return;
    }
    uint64_t r0, nr;
    tpv_split_range(g->ra * K, TPV_SPLIT_ALIGN, t, nt, &r0, &nr);
    for (size_t r = (size_t)r0; r < r0 + nr; r++)
        for (size_t c = 0; c < g->rb * K; c++)
            g->mir[c * ldo + r] = blk[r * ldo + c];
}

static int op_gram(const struct tpv_jsrc *a, const struct tpv_jsrc *b, double *out,
                   const struct tpv_progress *pg, struct tpv_err *err)
{
    if (b->ops != a->ops || b->K != a->K || b->p != a->p)
        return tpv_err_set(err, TPV_EINVAL, NULL, "gram: the two sources are not the same model");
    const struct msrc *sa = a->impl, *sb = b->impl;
    const struct tpv_mlp *m = sa->m;
    if (!same_structure(m, sb->m))
        return tpv_err_set(err, TPV_EINVAL, NULL, "gram: the two models differ in structure");
    const bool same = a == b;
    const size_t K = m->K, cap = sa->ball < sb->ball ? sa->ball : sb->ball;
    const size_t ldo = (size_t)b->n * K;
    struct kback ka, kb;
    memset(&kb, 0, sizeof kb);
    int rc = kback_init(&ka, m, cap, err);
    if (rc)
        return rc;
    if (!same && (rc = kback_init(&kb, sb->m, cap, err))) {
        kback_free(&ka);
        return rc;
    }
    if (same && (rc = kback_init(&kb, m, cap, err))) {
        kback_free(&ka);
        return rc;
    }
    double *GD = alloc_doubles(ck_mul(cap, K), ck_mul(cap, K)), *GA = alloc_doubles(cap, cap);
    if (!GD || !GA) {
        rc = nomem(err);
        goto out;
    }
    double pair_flops = 0; /* per (sample of A, sample of B) */
    for (size_t l = 0; l < m->L; l++)
        pair_flops += 2.0 * (double)m->layers[l].in +
                      2.0 * (double)(K * K) * ((double)m->layers[l].out + 1.0);
    const uint64_t nca = (a->n + cap - 1) / cap, ncb = (b->n + cap - 1) / cap;
    const uint64_t total = same ? nca * (nca + 1) / 2 : nca * ncb;
    uint64_t done = 0;
    for (uint64_t ia = 0; ia < nca; ia++) {
        const uint64_t xa0 = ia * cap;
        const size_t ra = min_sz(cap, a->n - xa0);
        kback_run(sa, &ka, xa0, ra);
        for (uint64_t ib = same ? ia : 0; ib < ncb; ib++) {
            const uint64_t yb0 = ib * cap;
            const size_t rb = min_sz(cap, b->n - yb0);
            const struct kback *B = &kb;
            if (same && ib == ia)
                B = &ka;
            else
                kback_run(sb, &kb, yb0, rb);
            struct gram_split g = { m, &ka, B, ra, rb, ldo, GD, GA, out + xa0 * K * ldo + yb0 * K,
                                    NULL, same && ib == ia };
            if (same && ib != ia)
                g.mir = out + yb0 * K * ldo + xa0 * K;
            int nt = sample_threads(ra, (double)rb * pair_flops);
            tpv_parallel_run(nt, gram_split_rows, &g);
            if (same) /* exact symmetry for eigensolvers */
                tpv_parallel_run(nt, gram_split_mirror, &g);
            if (tpv_progress_report(pg, 0, 1, ++done, total)) {
                rc = canceled(err);
                goto out;
            }
        }
    }
out:
    free(GD);
    free(GA);
    kback_free(&ka);
    kback_free(&kb);
    return rc;
}

/* Per-sample products: forward storage, input buffer, two work matrices for the tangents and,
 * for the one-seed backward (s->bproj samples), every layer's delta and squared input. */
struct onebuf {
    struct tpv_mlp_ws ws;
    double *x, *t0, *t1, *A2;
    double *dl; /* per layer, blocks of bproj x out_l */
};

static void onebuf_free(struct onebuf *ob)
{
    tpv_mlp_ws_free(&ob->ws);
    free(ob->x);
    free(ob->t0);
    free(ob->t1);
    free(ob->A2);
    free(ob->dl);
}

static uint64_t onebuf_bytes(const struct msrc *s)
{
    uint64_t per = ck_add(s->m->d, ck_mul(2, s->maxw));
    uint64_t back = ck_mul(s->bproj, ck_add(s->sum_in, s->sum_out));
    return ck_add(tpv_mlp_ws_bytes(s->m, s->bone),
                  ck_mul(ck_add(ck_mul(s->bone, per), back), sizeof(double)));
}

static int onebuf_init(struct onebuf *ob, const struct msrc *s, struct tpv_err *err)
{
    const size_t cap = s->bone;
    memset(ob, 0, sizeof *ob);
    int rc = tpv_mlp_ws_init(&ob->ws, s->m, cap, err);
    if (rc)
        return rc;
    ob->x = alloc_doubles(cap, s->m->d);
    ob->t0 = alloc_doubles(cap, s->maxw);
    ob->t1 = alloc_doubles(cap, s->maxw);
    ob->A2 = alloc_doubles(s->bproj, s->sum_in);
    ob->dl = alloc_doubles(s->bproj, s->sum_out);
    if (!ob->x || !ob->t0 || !ob->t1 || !ob->A2 || !ob->dl) {
        onebuf_free(ob);
        return nomem(err);
    }
    return TPV_OK;
}

/* One batch of a per-sample op: samples [first, first + rows), split over them. */
struct one_split {
    const struct msrc *s;
    struct onebuf *ob;
    uint64_t first;
    size_t rows;
    const double *v; /* jvp: tangent; projected / vjp: output-space seeds (n x K) */
    double *out;     /* jvp, outputs: n x K results */
    double *tot;     /* projected: per-sample totals of the batch, NULL if not asked */
    bool square;     /* projected: square the deltas and inputs for the reduction */
    const struct tpv_mlp *model; /* outputs: the model to run (same shapes), NULL = s->m */
};

/* The model a part runs: the source's, or the perturbed copy outputs_perturbed gives. */
static const struct tpv_mlp *split_model(const struct one_split *o)
{
    return o->model ? o->model : o->s->m;
}

/* Inputs and forward pass of part t's samples; false when the part has none. */
static bool one_forward(const struct one_split *o, int t, int nt, size_t *r0, size_t *nr)
{
    uint64_t a, b;
    tpv_split_range(o->rows, TPV_SPLIT_ALIGN, t, nt, &a, &b);
    *r0 = (size_t)a;
    *nr = (size_t)b;
    if (b == 0)
        return false;
    const struct tpv_mlp *m = split_model(o);
    tpv_mlp_read_inputs(m, &o->s->inputs, o->first + a, (size_t)b, o->ob->x + a * m->d);
    tpv_mlp_ws_forward_part(m, &o->ob->ws, o->ob->x, (size_t)a, (size_t)b);
    return true;
}

static void one_run(void (*part)(void *, int, int), struct one_split *o, double per_sample)
{
    o->ob->ws.rows = o->rows;
    tpv_parallel_run(sample_threads(o->rows, per_sample), part, o);
}

static void jvp_part(void *ctx, int t, int nt)
{
    const struct one_split *o = ctx;
    const struct tpv_mlp *m = o->s->m;
    const struct onebuf *ob = o->ob;
    size_t r0, rows;
    if (!one_forward(o, t, nt, &r0, &rows))
        return;
    /* Tangent of the previous layer's output; each part ping-pongs in its own rows of t0/t1. */
    double *t_ = ob->t0 + r0 * o->s->maxw, *tn = ob->t1 + r0 * o->s->maxw;
    const double *v = o->v;
    for (size_t l = 0; l < m->L; l++) {
        const struct tpv_mlp_layer *ml = &m->layers[l];
        const int in = (int)ml->in, outw = (int)ml->out;
        if (ml->b)
            for (size_t x = 0; x < rows; x++)
                memcpy(tn + x * ml->out, v + ml->b_off, ml->out * sizeof *tn);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, outw, in, 1.0,
                    layer_input(&ob->ws, l) + r0 * ml->in, in, v + ml->w_off, in,
                    ml->b ? 1.0 : 0.0, tn, outw);
        if (l > 0)
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, outw, in, 1.0, t_,
                        in, ml->W, in, 1.0, tn, outw);
        const double *dp = ob->ws.dphi[l] + r0 * ml->out;
        for (size_t i = 0; i < rows * ml->out; i++)
            tn[i] *= dp[i];
        double *tmp = t_;
        t_ = tn;
        tn = tmp;
    }
    memcpy(o->out + (o->first + r0) * m->K, t_, rows * m->K * sizeof *o->out);
}

static int op_jvp(const struct tpv_jsrc *src, const double *v, double *out,
                  const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct msrc *s = src->impl;
    const struct tpv_mlp *m = s->m;
    const size_t cap = s->bone;
    struct onebuf ob;
    int rc = onebuf_init(&ob, s, err);
    if (rc)
        return rc;
    uint64_t nb = (src->n + cap - 1) / cap;
    for (uint64_t b = 0; b < nb; b++) {
        const uint64_t first = b * cap;
        struct one_split o = { s, &ob, first, min_sz(cap, src->n - first), v, out, NULL, false };
        one_run(jvp_part, &o, 3.0 * tpv_mlp_sample_flops(m));
        if (tpv_progress_report(pg, 0, 1, b + 1, nb)) {
            rc = canceled(err);
            break;
        }
    }
    onebuf_free(&ob);
    return rc;
}

static void outputs_part(void *ctx, int t, int nt)
{
    const struct one_split *o = ctx;
    const struct tpv_mlp *m = split_model(o);
    size_t r0, rows;
    if (one_forward(o, t, nt, &r0, &rows))
        memcpy(o->out + (o->first + r0) * m->K, o->ob->ws.a[m->L - 1] + r0 * m->K,
               rows * m->K * sizeof *o->out);
}

/* The outputs of `m` (the source's model or a perturbed copy of it: same shapes) over the
 * source's inputs. */
static int outputs_of(const struct tpv_jsrc *src, const struct tpv_mlp *m, double *out,
                      const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct msrc *s = src->impl;
    const size_t cap = s->bone;
    struct onebuf ob;
    int rc = onebuf_init(&ob, s, err);
    if (rc)
        return rc;
    uint64_t nb = (src->n + cap - 1) / cap;
    for (uint64_t b = 0; b < nb; b++) {
        const uint64_t first = b * cap;
        struct one_split o = { s, &ob, first, min_sz(cap, src->n - first), NULL, out, NULL,
                               false, m };
        one_run(outputs_part, &o, tpv_mlp_sample_flops(m));
        if (tpv_progress_report(pg, 0, 1, b + 1, nb)) {
            rc = canceled(err);
            break;
        }
    }
    onebuf_free(&ob);
    return rc;
}

static int op_outputs(const struct tpv_jsrc *src, double *out, const struct tpv_progress *pg,
                      struct tpv_err *err)
{
    const struct msrc *s = src->impl;
    return outputs_of(src, s->m, out, pg, err);
}

/* The model with parameters w + dw: a shallow copy of the struct whose layers point into its own
 * parameter vector (activation chains and names stay the model's, read-only). */
struct shifted_mlp {
    struct tpv_mlp m;
    struct tpv_mlp_layer *layers;
    double *params;
};

static int shifted_init(struct shifted_mlp *sh, const struct tpv_mlp *m, const double *dw,
                        struct tpv_err *err)
{
    const uint64_t p = m->layout.p;
    sh->m = *m;
    sh->layers = malloc((m->L ? m->L : 1) * sizeof *sh->layers);
    sh->params = alloc_doubles(p ? p : 1, 1);
    if (!sh->layers || !sh->params) {
        free(sh->layers);
        free(sh->params);
        return nomem(err);
    }
    for (uint64_t j = 0; j < p; j++)
        sh->params[j] = m->params[j] + dw[j];
    for (size_t l = 0; l < m->L; l++) {
        sh->layers[l] = m->layers[l];
        sh->layers[l].W = sh->params + m->layers[l].w_off;
        if (m->layers[l].b)
            sh->layers[l].b = sh->params + m->layers[l].b_off;
    }
    sh->m.layers = sh->layers;
    sh->m.params = sh->params;
    return TPV_OK;
}

static int op_outputs_perturbed(const struct tpv_jsrc *src, const double *dw, double *out,
                                const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct msrc *s = src->impl;
    struct shifted_mlp sh;
    int rc = shifted_init(&sh, s->m, dw, err);
    if (rc)
        return rc;
    rc = outputs_of(src, &sh.m, out, pg, err);
    free(sh.layers);
    free(sh.params);
    return rc;
}

/* The one-seed backward of part t's samples: delta_l = dF/dz_l . seed for every layer into its
 * block of ob->dl; for sqdiag_projected also the per-sample totals and, in place, the squares of
 * the deltas and (into ob->A2) of the layer inputs that the reduction over samples needs. */
static void back_part(void *ctx, int t, int nt)
{
    const struct one_split *o = ctx;
    const struct msrc *s = o->s;
    const struct tpv_mlp *m = s->m;
    const struct onebuf *ob = o->ob;
    const size_t cap = s->bproj, K = m->K;
    size_t r0, rows;
    if (!one_forward(o, t, nt, &r0, &rows))
        return;
    size_t soff = s->sum_out, aoff = s->sum_in; /* block offsets of layer l + 1 */
    double *dnext = NULL;
    for (size_t l = m->L; l-- > 0;) {
        const struct tpv_mlp_layer *ml = &m->layers[l];
        const size_t in = ml->in, out = ml->out;
        soff -= out;
        aoff -= in;
        double *dl = ob->dl + cap * soff + r0 * out;
        const double *A = layer_input(&ob->ws, l) + r0 * in;
        if (l + 1 == m->L) {
            const double *dp = ob->ws.dphi[l] + r0 * K, *rr = o->v + (o->first + r0) * K;
            for (size_t i = 0; i < rows * K; i++)
                dl[i] = rr[i] * dp[i];
        } else {
            const struct tpv_mlp_layer *up = &m->layers[l + 1];
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)up->in,
                        (int)up->out, 1.0, dnext, (int)up->out, up->W, (int)up->in, 0.0, dl,
                        (int)up->in);
            const double *dph = ob->ws.dphi[l] + r0 * out;
            for (size_t i = 0; i < rows * out; i++)
                dl[i] *= dph[i];
            if (o->square) /* the layer above is done with its delta */
                square_into(dnext, dnext, rows * up->out);
        }
        if (o->tot)
            for (size_t x = 0; x < rows; x++) {
                double dd = 0, aa = ml->b ? 1.0 : 0.0;
                for (size_t i = 0; i < out; i++)
                    dd += dl[x * out + i] * dl[x * out + i];
                for (size_t j = 0; j < in; j++)
                    aa += A[x * in + j] * A[x * in + j];
                o->tot[r0 + x] += dd * aa;
            }
        if (o->square)
            square_into(A, ob->A2 + cap * aoff + r0 * in, rows * in);
        dnext = dl;
    }
    if (o->square)
        square_into(dnext, dnext, rows * m->layers[0].out);
}

/* The one-seed ops' batches: per batch the per-sample backward on the job's threads, then the
 * reduction over the batch's samples into acc, split over output units. */
static int back_batches(const struct tpv_jsrc *src, const double *seed, double *acc,
                        double *total, bool square, const struct tpv_progress *pg,
                        struct tpv_err *err)
{
    const struct msrc *s = src->impl;
    const struct tpv_mlp *m = s->m;
    const size_t cap = s->bproj;
    struct onebuf ob;
    int rc = onebuf_init(&ob, s, err);
    if (rc)
        return rc;
    const double **A = calloc(m->L, sizeof *A);
    if (!A) {
        onebuf_free(&ob);
        return nomem(err);
    }
    double per_sample = 3.0 * tpv_mlp_sample_flops(m), tot[BATCH_MAX];
    uint64_t nb = (src->n + cap - 1) / cap;
    for (uint64_t b = 0; b < nb; b++) {
        const uint64_t first = b * cap;
        const size_t rows = min_sz(cap, src->n - first);
        memset(tot, 0, sizeof tot);
        struct one_split o = { s, &ob, first, rows, seed, NULL, total ? tot : NULL, square };
        one_run(back_part, &o, per_sample);
        for (size_t l = 0, aoff = 0; l < m->L; aoff += m->layers[l].in, l++)
            A[l] = square ? ob.A2 + cap * aoff : layer_input(&ob.ws, l);
        units_run(m, ob.dl, A, cap, rows, acc);
        if (total)
            memcpy(total + first, tot, rows * sizeof *total);
        if (tpv_progress_report(pg, 0, 1, b + 1, nb)) {
            rc = canceled(err);
            break;
        }
    }
    free(A);
    onebuf_free(&ob);
    return rc;
}

static int op_sqdiag_projected(const struct tpv_jsrc *src, const double *r, double *diag,
                               double *total, const struct tpv_progress *pg, struct tpv_err *err)
{
    return back_batches(src, r, diag, total, true, pg, err);
}

/* out = J^T u: the one-seed backward of op_sqdiag_projected with plain (unsquared) products. */
static int op_vjp(const struct tpv_jsrc *src, const double *u, double *out,
                  const struct tpv_progress *pg, struct tpv_err *err)
{
    memset(out, 0, src->p * sizeof *out);
    return back_batches(src, u, out, NULL, false, pg, err);
}

static uint64_t op_scratch_bytes(const struct tpv_jsrc *src)
{
    const struct msrc *s = src->impl;
    const uint64_t cap = s->ball, K = s->m->K, kb = kback_bytes(s->m, s->ball);
    uint64_t sq = ck_add(kb, ck_mul(ck_mul(cap, ck_add(ck_add(s->sum_out, s->sum_in), s->maxw)),
                                    sizeof(double)));
    uint64_t gk = ck_mul(cap, K);
    uint64_t gram = ck_add(ck_mul(2, kb),
                           ck_mul(ck_add(ck_mul(gk, gk), ck_mul(cap, cap)), sizeof(double)));
    uint64_t one = onebuf_bytes(s);
    uint64_t mx = sq > gram ? sq : gram;
    return mx > one ? mx : one;
}

/* The all-outputs products propagate K deltas through every layer and form a GEMM of squares
 * per layer (about 4 K flops per weight and sample, on top of the forward pass); a projected
 * probe propagates one. */
static void op_costs(const struct tpv_jsrc *src, double *sqdiag_flops, double *projected_flops)
{
    const struct msrc *s = src->impl;
    double per_sample = 0; /* multiply-adds of one forward pass */
    for (size_t l = 0; l < s->m->L; l++)
        per_sample += (double)s->m->layers[l].in * (double)s->m->layers[l].out;
    double n = (double)src->n, K = (double)src->K;
    *sqdiag_flops = 2 * n * per_sample * (1 + 2 * K);
    *projected_flops = 2 * n * per_sample * 3;
}

static void op_free(struct tpv_jsrc *src)
{
    if (!src)
        return;
    free(src->impl);
    tpv_layout_free(&src->layout);
    free(src);
}

static const struct tpv_jsrc_ops mlp_source_ops = {
    .sqdiag = op_sqdiag,
    .sqdiag_samples = op_sqdiag_samples,
    .gram = op_gram,
    .jvp = op_jvp,
    .sqdiag_projected = op_sqdiag_projected,
    .scratch_bytes = op_scratch_bytes,
    .free = op_free,
    .vjp = op_vjp,
    .costs = op_costs,
    .outputs = op_outputs,
    .outputs_perturbed = op_outputs_perturbed,
};

int tpv_mlp_source_open_batched(struct tpv_jsrc **out, const struct tpv_mlp *model,
                                const struct tpv_tensor *inputs, size_t batch_all,
                                size_t batch_one, struct tpv_err *err)
{
    *out = NULL;
    int rc = tpv_mlp_check_input_shape(model, inputs, err);
    if (rc)
        return rc;
    struct tpv_jsrc *src = calloc(1, sizeof *src);
    struct msrc *s = calloc(1, sizeof *s);
    if (!src || !s) {
        free(src);
        free(s);
        return nomem(err);
    }
    s->m = model;
    s->inputs = *inputs;
    for (size_t l = 0; l < model->L; l++) {
        if (model->layers[l].out > s->maxw)
            s->maxw = model->layers[l].out;
        if (model->layers[l].in > s->maxin)
            s->maxin = model->layers[l].in;
        s->sum_out = ck_add(s->sum_out, model->layers[l].out);
        s->sum_in = ck_add(s->sum_in, model->layers[l].in);
    }
    uint64_t hidden = 0;
    for (size_t l = 0; l + 1 < model->L; l++)
        hidden = ck_add(hidden, model->layers[l].out);
    uint64_t per = ck_mul(model->K, ck_add(hidden, 1));
    uint64_t ball = DELTA_BUDGET / per;
    if (ball > ROWS_MAX / model->K)
        ball = ROWS_MAX / model->K;
    if (ball > BATCH_MAX)
        ball = BATCH_MAX;
    if (ball < 1)
        ball = 1;
    s->ball = batch_all ? min_sz(batch_all, BATCH_MAX) : (size_t)ball;
    s->bone = batch_one ? min_sz(batch_one, BATCH_MAX) : BATCH_MAX;
    /* The one-seed backward keeps every layer's delta and squared input of a batch (so that the
     * reduction over samples runs once per batch, split over units): bounded like the deltas. */
    uint64_t bproj = DELTA_BUDGET / ck_add(ck_add(s->sum_out, s->sum_in), 1);
    s->bproj = bproj < 1 ? 1 : bproj < s->bone ? (size_t)bproj : s->bone;
    src->ops = &mlp_source_ops;
    src->n = inputs->shape[0];
    src->K = model->K;
    src->p = model->layout.p;
    src->impl = s;
    if ((rc = tpv_layout_copy(&src->layout, &model->layout, err))) {
        free(s);
        free(src);
        return rc;
    }
    *out = src;
    return TPV_OK;
}

int tpv_mlp_source_open(struct tpv_jsrc **out, const struct tpv_mlp *model,
                        const struct tpv_tensor *inputs, struct tpv_err *err)
{
    return tpv_mlp_source_open_batched(out, model, inputs, 0, 0, err);
}
