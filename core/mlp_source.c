/* mlp_source.c: the Jacobian source ops (core/jacobian.h) over a sequential MLP, by structured
 * per-layer products (DESIGN.md section 3, estimators; mlp_source.h).
 *
 * Notation: layers l = 0..L-1, z_l = W_l a_{l-1} + b_l (a_{-1} = the input after any leading
 * activations), a_l = phi_l(z_l), f = a_{L-1}.  For output k, delta_l^k = dF_k/dz_l is
 * e_k .* phi'_{L-1} at the last layer and (delta_{l+1} W_{l+1}) .* phi'_l below it.  The
 * all-outputs products keep delta for every hidden layer as a (rows*K x out_l) matrix, rows
 * ordered (sample, output); the last layer's delta is diagonal per sample and never stored. */
#include "core/mlp_source.h"

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

/* Forward of samples [first, first + rows) and delta of every hidden layer for all K outputs. */
static void kback_run(const struct msrc *s, struct kback *kb, uint64_t first, size_t rows)
{
    const struct tpv_mlp *m = s->m;
    const size_t L = m->L, K = m->K;
    tpv_mlp_read_inputs(m, &s->inputs, first, rows, kb->x);
    tpv_mlp_ws_forward(m, &kb->ws, kb->x, rows);
    if (L < 2)
        return;
    /* Layer L-2: row (x,k) = phi'_{L-1}(x)_k * W_{L-1}[k,:] .* phi'_{L-2}(x). */
    const struct tpv_mlp_layer *last = &m->layers[L - 1];
    const size_t w = last->in;
    const double *dl = kb->ws.dphi[L - 1], *dh = kb->ws.dphi[L - 2];
    double *D = kb->delta[L - 2];
    for (size_t x = 0; x < rows; x++)
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
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(rows * K), (int)in, (int)out,
                    1.0, kb->delta[l], (int)out, ml->W, (int)in, 0.0, Dp, (int)in);
        const double *dp = kb->ws.dphi[l - 1];
        for (size_t x = 0; x < rows; x++)
            for (size_t k = 0; k < K; k++) {
                double *row = Dp + (x * K + k) * in;
                for (size_t i = 0; i < in; i++)
                    row[i] *= dp[x * in + i];
            }
    }
}

static const double *layer_input(const struct tpv_mlp_ws *ws, size_t l)
{
    return l == 0 ? ws->a0 : ws->a[l - 1];
}

/* diag over W_l += S^T (A.^2), over b_l += column sums of S, with S (rows x out). */
static void diag_accumulate(const struct tpv_mlp_layer *ml, const double *S, const double *A,
                            double *A2, size_t rows, double *diag)
{
    const size_t in = ml->in, out = ml->out;
    for (size_t i = 0; i < rows * in; i++)
        A2[i] = A[i] * A[i];
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)out, (int)in, (int)rows, 1.0, S,
                (int)out, A2, (int)in, 1.0, diag + ml->w_off, (int)in);
    if (ml->b) {
        double *db = diag + ml->b_off;
        for (size_t x = 0; x < rows; x++)
            for (size_t i = 0; i < out; i++)
                db[i] += S[x * out + i];
    }
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

static int sqdiag_run(const struct tpv_jsrc *src, double *diag, size_t nc, const double *const *c,
                      double *per, const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct msrc *s = src->impl;
    const struct tpv_mlp *m = s->m;
    const size_t K = m->K, cap = s->ball;
    struct kback kb;
    int rc = kback_init(&kb, m, cap, err);
    if (rc)
        return rc;
    double *S = alloc_doubles(cap, s->maxw), *A2 = alloc_doubles(cap, s->maxin);
    double *P = nc ? alloc_doubles(cap, s->maxw) : NULL;
    if (!S || !A2 || (nc && !P)) {
        rc = nomem(err);
        goto out;
    }
    uint64_t nb = (src->n + cap - 1) / cap;
    for (uint64_t b = 0; b < nb; b++) {
        uint64_t first = b * cap;
        size_t rows = (size_t)min_sz(cap, src->n - first);
        kback_run(s, &kb, first, rows);
        for (size_t l = 0; l < m->L; l++) {
            const struct tpv_mlp_layer *ml = &m->layers[l];
            const size_t out = ml->out;
            if (l + 1 == m->L) {
                const double *dp = kb.ws.dphi[l];
                for (size_t i = 0; i < rows * out; i++)
                    S[i] = dp[i] * dp[i];
            } else {
                const double *D = kb.delta[l];
                for (size_t x = 0; x < rows; x++) {
                    double *srow = S + x * out;
                    memset(srow, 0, out * sizeof *srow);
                    for (size_t k = 0; k < K; k++) {
                        const double *row = D + (x * K + k) * out;
                        for (size_t i = 0; i < out; i++)
                            srow[i] += row[i] * row[i];
                    }
                }
            }
            diag_accumulate(ml, S, layer_input(&kb.ws, l), A2, rows, diag);
            if (nc)
                samples_accumulate(ml, S, A2, rows, nc, c, P, per, src->n, first);
        }
        if (tpv_progress_report(pg, 0, 1, b + 1, nb)) {
            rc = canceled(err);
            goto out;
        }
    }
out:
    free(S);
    free(A2);
    free(P);
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
 * (delta_A delta_B^T) .* (a_A a_B^T + 1).  ldo = n_B * K. */
static void gram_block(const struct tpv_mlp *m, const struct kback *A, size_t ra,
                       const struct kback *B, size_t rb, double *GD, double *GA, double *out,
                       size_t ldo)
{
    const size_t K = m->K, L = m->L;
    for (size_t r = 0; r < ra * K; r++)
        memset(out + r * ldo, 0, rb * K * sizeof *out);
    for (size_t l = 0; l < L; l++) {
        const struct tpv_mlp_layer *ml = &m->layers[l];
        const size_t in = ml->in, out_w = ml->out;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)ra, (int)rb, (int)in, 1.0,
                    layer_input(&A->ws, l), (int)in, layer_input(&B->ws, l), (int)in, 0.0, GA,
                    (int)rb);
        if (ml->b)
            for (size_t i = 0; i < ra * rb; i++)
                GA[i] += 1.0;
        if (l + 1 == L) { /* delta is e_k phi'_k: only k == k' terms */
            const double *pa = A->ws.dphi[l], *pb = B->ws.dphi[l];
            for (size_t x = 0; x < ra; x++)
                for (size_t k = 0; k < K; k++) {
                    double *orow = out + (x * K + k) * ldo;
                    double c = pa[x * K + k];
                    for (size_t y = 0; y < rb; y++)
                        orow[y * K + k] += c * pb[y * K + k] * GA[x * rb + y];
                }
            continue;
        }
        const size_t rk = rb * K;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(ra * K), (int)rk, (int)out_w,
                    1.0, A->delta[l], (int)out_w, B->delta[l], (int)out_w, 0.0, GD, (int)rk);
        for (size_t x = 0; x < ra; x++)
            for (size_t k = 0; k < K; k++) {
                double *orow = out + (x * K + k) * ldo;
                const double *grow = GD + (x * K + k) * rk, *garow = GA + x * rb;
                for (size_t y = 0; y < rb; y++)
                    for (size_t k2 = 0; k2 < K; k2++)
                        orow[y * K + k2] += grow[y * K + k2] * garow[y];
            }
    }
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
            double *blk = out + xa0 * K * ldo + yb0 * K;
            gram_block(m, &ka, ra, B, rb, GD, GA, blk, ldo);
            if (same && ib == ia) { /* exact symmetry for eigensolvers */
                for (size_t r = 0; r < ra * K; r++)
                    for (size_t c = r + 1; c < ra * K; c++) {
                        double v = 0.5 * (blk[r * ldo + c] + blk[c * ldo + r]);
                        blk[r * ldo + c] = blk[c * ldo + r] = v;
                    }
            } else if (same) {
                double *mir = out + yb0 * K * ldo + xa0 * K;
                for (size_t r = 0; r < ra * K; r++)
                    for (size_t c = 0; c < rb * K; c++)
                        mir[c * ldo + r] = blk[r * ldo + c];
            }
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

/* Per-sample products: forward storage, input buffer and two work matrices. */
struct onebuf {
    struct tpv_mlp_ws ws;
    double *x, *t0, *t1, *A2;
};

static void onebuf_free(struct onebuf *ob)
{
    tpv_mlp_ws_free(&ob->ws);
    free(ob->x);
    free(ob->t0);
    free(ob->t1);
    free(ob->A2);
}

static uint64_t onebuf_bytes(const struct msrc *s)
{
    uint64_t per = ck_add(ck_add(s->m->d, ck_mul(2, s->maxw)), s->maxin);
    return ck_add(tpv_mlp_ws_bytes(s->m, s->bone), ck_mul(ck_mul(s->bone, per), sizeof(double)));
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
    ob->A2 = alloc_doubles(cap, s->maxin);
    if (!ob->x || !ob->t0 || !ob->t1 || !ob->A2) {
        onebuf_free(ob);
        return nomem(err);
    }
    return TPV_OK;
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
        const size_t rows = min_sz(cap, src->n - first);
        tpv_mlp_read_inputs(m, &s->inputs, first, rows, ob.x);
        tpv_mlp_ws_forward(m, &ob.ws, ob.x, rows);
        double *t = ob.t0, *tn = ob.t1; /* tangent of the previous layer's output */
        for (size_t l = 0; l < m->L; l++) {
            const struct tpv_mlp_layer *ml = &m->layers[l];
            const int in = (int)ml->in, outw = (int)ml->out;
            if (ml->b)
                for (size_t x = 0; x < rows; x++)
                    memcpy(tn + x * ml->out, v + ml->b_off, ml->out * sizeof *tn);
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, outw, in, 1.0,
                        layer_input(&ob.ws, l), in, v + ml->w_off, in, ml->b ? 1.0 : 0.0, tn,
                        outw);
            if (l > 0)
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, outw, in, 1.0, t,
                            in, ml->W, in, 1.0, tn, outw);
            const double *dp = ob.ws.dphi[l];
            for (size_t i = 0; i < rows * ml->out; i++)
                tn[i] *= dp[i];
            double *tmp = t;
            t = tn;
            tn = tmp;
        }
        memcpy(out + first * m->K, t, rows * m->K * sizeof *out);
        if (tpv_progress_report(pg, 0, 1, b + 1, nb)) {
            rc = canceled(err);
            break;
        }
    }
    onebuf_free(&ob);
    return rc;
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
        const size_t rows = min_sz(cap, src->n - first);
        tpv_mlp_read_inputs(m, &s->inputs, first, rows, ob.x);
        tpv_mlp_ws_forward(m, &ob.ws, ob.x, rows);
        memcpy(out + first * m->K, ob.ws.a[m->L - 1], rows * m->K * sizeof *out);
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

static int op_sqdiag_projected(const struct tpv_jsrc *src, const double *r, double *diag,
                               double *total, const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct msrc *s = src->impl;
    const struct tpv_mlp *m = s->m;
    const size_t cap = s->bone, K = m->K;
    struct onebuf ob;
    int rc = onebuf_init(&ob, s, err);
    if (rc)
        return rc;
    double tot[BATCH_MAX];
    uint64_t nb = (src->n + cap - 1) / cap;
    for (uint64_t b = 0; b < nb; b++) {
        const uint64_t first = b * cap;
        const size_t rows = min_sz(cap, src->n - first);
        tpv_mlp_read_inputs(m, &s->inputs, first, rows, ob.x);
        tpv_mlp_ws_forward(m, &ob.ws, ob.x, rows);
        double *dl = ob.t0, *dn = ob.t1;
        const double *dp = ob.ws.dphi[m->L - 1], *rr = r + first * K;
        for (size_t i = 0; i < rows * K; i++)
            dl[i] = rr[i] * dp[i];
        memset(tot, 0, sizeof tot);
        for (size_t l = m->L; l-- > 0;) {
            const struct tpv_mlp_layer *ml = &m->layers[l];
            const size_t in = ml->in, out = ml->out;
            const double *A = layer_input(&ob.ws, l);
            if (total)
                for (size_t x = 0; x < rows; x++) {
                    double dd = 0, aa = ml->b ? 1.0 : 0.0;
                    for (size_t i = 0; i < out; i++)
                        dd += dl[x * out + i] * dl[x * out + i];
                    for (size_t j = 0; j < in; j++)
                        aa += A[x * in + j] * A[x * in + j];
                    tot[x] += dd * aa;
                }
            if (l > 0) { /* next delta before dl is squared in place */
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)in,
                            (int)out, 1.0, dl, (int)out, ml->W, (int)in, 0.0, dn, (int)in);
                const double *dph = ob.ws.dphi[l - 1];
                for (size_t i = 0; i < rows * in; i++)
                    dn[i] *= dph[i];
            }
            for (size_t i = 0; i < rows * out; i++)
                dl[i] *= dl[i];
            diag_accumulate(ml, dl, A, ob.A2, rows, diag);
            double *tmp = dl;
            dl = dn;
            dn = tmp;
        }
        if (total)
            memcpy(total + first, tot, rows * sizeof *total);
        if (tpv_progress_report(pg, 0, 1, b + 1, nb)) {
            rc = canceled(err);
            break;
        }
    }
    onebuf_free(&ob);
    return rc;
}

/* out = J^T u: the one-seed backward of op_sqdiag_projected with plain (unsquared) products. */
static int op_vjp(const struct tpv_jsrc *src, const double *u, double *out,
                  const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct msrc *s = src->impl;
    const struct tpv_mlp *m = s->m;
    const size_t cap = s->bone, K = m->K;
    struct onebuf ob;
    int rc = onebuf_init(&ob, s, err);
    if (rc)
        return rc;
    memset(out, 0, src->p * sizeof *out);
    uint64_t nb = (src->n + cap - 1) / cap;
    for (uint64_t b = 0; b < nb; b++) {
        const uint64_t first = b * cap;
        const size_t rows = min_sz(cap, src->n - first);
        tpv_mlp_read_inputs(m, &s->inputs, first, rows, ob.x);
        tpv_mlp_ws_forward(m, &ob.ws, ob.x, rows);
        double *dl = ob.t0, *dn = ob.t1;
        const double *dp = ob.ws.dphi[m->L - 1], *uu = u + first * K;
        for (size_t i = 0; i < rows * K; i++)
            dl[i] = uu[i] * dp[i];
        for (size_t l = m->L; l-- > 0;) {
            const struct tpv_mlp_layer *ml = &m->layers[l];
            const size_t in = ml->in, outw = ml->out;
            cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)outw, (int)in, (int)rows,
                        1.0, dl, (int)outw, layer_input(&ob.ws, l), (int)in, 1.0,
                        out + ml->w_off, (int)in);
            if (ml->b)
                for (size_t x = 0; x < rows; x++)
                    for (size_t i = 0; i < outw; i++)
                        out[ml->b_off + i] += dl[x * outw + i];
            if (l > 0) {
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)in,
                            (int)outw, 1.0, dl, (int)outw, ml->W, (int)in, 0.0, dn, (int)in);
                const double *dph = ob.ws.dphi[l - 1];
                for (size_t i = 0; i < rows * in; i++)
                    dn[i] *= dph[i];
                double *tmp = dl;
                dl = dn;
                dn = tmp;
            }
        }
        if (tpv_progress_report(pg, 0, 1, b + 1, nb)) {
            rc = canceled(err);
            break;
        }
    }
    onebuf_free(&ob);
    return rc;
}

static uint64_t op_scratch_bytes(const struct tpv_jsrc *src)
{
    const struct msrc *s = src->impl;
    const uint64_t cap = s->ball, K = s->m->K, kb = kback_bytes(s->m, s->ball);
    uint64_t sq = ck_add(kb, ck_mul(ck_mul(cap, ck_add(s->maxw, s->maxin)), sizeof(double)));
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
