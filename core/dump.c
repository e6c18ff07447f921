/* dump.c: a Jacobian dump as a struct tpv_jsrc (see dump.h for formats and column order).
 *
 * The dump is a list of parts: one per tensor, each a row-major (n K) x cols matrix whose columns
 * are [col0, col0 + cols) of J.  Every operation walks global column panels that never cross a
 * part boundary of either operand, so each panel is either used in place (F64) or converted once
 * into a float64 buffer, and handed to BLAS. */
#include "core/dump.h"

#include <cblas.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/linalg.h"


struct part {
    const unsigned char *data;
    enum tpv_dtype dtype;
    size_t es;
    uint64_t col0, cols;
    void *owned; /* aligned copy when the mapped data was misaligned for its dtype */
    uint64_t copy_bytes; /* size of that copy (made, or planned for a headers-only source) */
};

struct dump {
    bool headers_only; /* opened to plan a job: no values read, misaligned data not copied */
    uint64_t rows; /* n K */
    size_t nparts;
    struct part *parts;
    struct tpv_tensor_file *file; /* owned when opened from a path */
};

static const struct tpv_jsrc_ops dump_ops;

bool tpv_jsrc_is_dump(const struct tpv_jsrc *s)
{
    return s && s->ops == &dump_ops;
}

static void dump_free(struct tpv_jsrc *s)
{
    if (!s)
        return;
    struct dump *d = s->impl;
    if (d) {
        for (size_t i = 0; i < d->nparts; i++)
            free(d->parts[i].owned);
        free(d->parts);
        if (d->file)
            tpv_tensor_file_close(d->file);
        free(d);
    }
    tpv_layout_free(&s->layout);
    free(s);
}

/* A headers-only source answers its structure and scratch_bytes; its products refuse to run. */
static int refuse_headers_only(const struct dump *d, struct tpv_err *err)
{
    if (!d->headers_only)
        return TPV_OK;
    return tpv_err_set(err, TPV_EINTERNAL, NULL,
                       "a Jacobian dump opened for its headers cannot be computed with");
}

/* ---- panels ------------------------------------------------------------------------------ */

static const struct part *part_of(const struct dump *d, uint64_t col)
{
    size_t lo = 0, hi = d->nparts;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (d->parts[mid].col0 <= col)
            lo = mid;
        else
            hi = mid;
    }
    return &d->parts[lo];
}

/* Width of the next panel at column c0: at most `maxw`, not crossing a part boundary. */
static uint64_t panel_width(const struct dump *d, uint64_t c0, uint64_t maxw)
{
    const struct part *pt = part_of(d, c0);
    uint64_t left = pt->col0 + pt->cols - c0;
    return left < maxw ? left : maxw;
}

struct conv_job {
    const struct part *pt;
    uint64_t rows, c, w;
    double *buf;
};

static void conv_rows(void *ctx, int t, int nt)
{
    struct conv_job *j = ctx;
    uint64_t r0 = j->rows * (uint64_t)t / (uint64_t)nt, r1 = j->rows * (uint64_t)(t + 1) / (uint64_t)nt;
    for (uint64_t r = r0; r < r1; r++)
        tpv_convert_f64(j->pt->dtype, j->pt->data + (r * j->pt->cols + j->c) * j->pt->es,
                        (size_t)j->w, j->buf + r * j->w);
}

/* The rows x w panel at global column c0 as float64: in place for F64 data, else converted into
 * buf (rows * w doubles).  *ld receives the leading dimension. */
static const double *panel_get(const struct dump *d, uint64_t c0, uint64_t w, double *buf,
                               uint64_t *ld)
{
    const struct part *pt = part_of(d, c0);
    uint64_t c = c0 - pt->col0;
    if (pt->dtype == TPV_DTYPE_F64) {
        *ld = pt->cols;
        return (const double *)(const void *)pt->data + c;
    }
    struct conv_job job = { pt, d->rows, c, w, buf };
    uint64_t bytes = d->rows * w * 8;
    tpv_parallel_run(bytes >= (4u << 20) ? tpv_linalg_threads() : 1, conv_rows, &job);
    *ld = w;
    return buf;
}

/* Panel width so that panels of all `rows_total` rows fit the panel budget. */
static uint64_t panel_max_width(uint64_t rows_total, uint64_t p)
{
    uint64_t w = TPV_DUMP_PANEL_BYTES / 8 / (rows_total ? rows_total : 1);
    if (w < 16)
        w = 16;
    if (w > 64)
        w -= w % 64;
    return w < p ? w : p;
}

static bool needs_buffer(const struct dump *d)
{
    for (size_t i = 0; i < d->nparts; i++)
        if (d->parts[i].dtype != TPV_DTYPE_F64)
            return true;
    return false;
}

static int alloc_panel(const struct dump *d, uint64_t rows, uint64_t w, double **buf,
                       struct tpv_err *err)
{
    *buf = NULL;
    if (!needs_buffer(d))
        return TPV_OK;
    *buf = malloc((size_t)(rows * w) * sizeof(double));
    return *buf ? TPV_OK : tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory for a Jacobian panel");
}

/* ---- sqdiag ------------------------------------------------------------------------------ */

struct sq_job {
    const struct part *pt;
    uint64_t r0, nr;
    double *diag;
    float *tmp; /* nthreads * TPV_SQSUM_TMP */
};

static void sq_cols(void *ctx, int t, int nt)
{
    struct sq_job *j = ctx;
    uint64_t cols = j->pt->cols;
    uint64_t c0 = cols * (uint64_t)t / (uint64_t)nt, c1 = cols * (uint64_t)(t + 1) / (uint64_t)nt;
    if (c1 <= c0)
        return;
    tpv_sqsum_cols(j->pt->dtype, j->pt->data + (j->r0 * cols + c0) * j->pt->es, j->nr, c1 - c0,
                   cols, j->diag + j->pt->col0 + c0, j->tmp ? j->tmp + (size_t)t * TPV_SQSUM_TMP : NULL);
}

static int dump_sqdiag(const struct tpv_jsrc *s, double *diag, const struct tpv_progress *pg,
                       struct tpv_err *err)
{
    const struct dump *d = s->impl;
    if (refuse_headers_only(d, err) != TPV_OK)
        return TPV_EINTERNAL;
    int nt = tpv_linalg_threads();
    float *tmp = NULL;
    bool half = false;
    for (size_t i = 0; i < d->nparts; i++)
        half |= d->parts[i].dtype == TPV_DTYPE_F16 || d->parts[i].dtype == TPV_DTYPE_BF16;
    if (half && !(tmp = malloc((size_t)nt * TPV_SQSUM_TMP * sizeof(float))))
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    uint64_t total = d->rows * s->p, done = 0;
    int rc = tpv_progress_report(pg, 0, 1, 0, total);
    for (size_t i = 0; rc == TPV_OK && i < d->nparts; i++) {
        const struct part *pt = &d->parts[i];
        /* Row blocks of about 64 MiB (a multiple of 16 rows, the kernel's grouping) between
         * progress reports. */
        uint64_t rb = (64ull << 20) / (pt->cols * pt->es);
        rb = rb < 16 ? 16 : rb - rb % 16;
        int use = pt->cols >= 4096 ? nt : 1;
        for (uint64_t r0 = 0; rc == TPV_OK && r0 < d->rows; r0 += rb) {
            struct sq_job job = { pt, r0, d->rows - r0 < rb ? d->rows - r0 : rb, diag, tmp };
            tpv_parallel_run(use, sq_cols, &job);
            done += job.nr * pt->cols;
            rc = tpv_progress_report(pg, 0, 1, done, total);
        }
    }
    free(tmp);
    if (rc != TPV_OK)
        return tpv_err_set(err, rc, NULL, "canceled");
    return TPV_OK;
}

/* sqdiag with the per-sample weighted parts, one pass over float64 panels (rows x w): each
 * squared entry goes to its column of diag and, weighted, to its sample's nc sums. */
static int dump_sqdiag_samples(const struct tpv_jsrc *s, double *diag, size_t nc,
                               const double *const *c, double *out,
                               const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct dump *d = s->impl;
    if (refuse_headers_only(d, err) != TPV_OK)
        return TPV_EINTERNAL;
    uint64_t maxw = panel_max_width(d->rows, s->p), K = s->K ? s->K : 1;
    double *buf;
    int rc = alloc_panel(d, d->rows, maxw, &buf, err);
    if (rc != TPV_OK)
        return rc;
    for (uint64_t c0 = 0; rc == TPV_OK && c0 < s->p;) {
        uint64_t w = panel_width(d, c0, maxw), ld;
        const double *P = panel_get(d, c0, w, buf, &ld);
        for (uint64_t r = 0; r < d->rows; r++) {
            const double *row = P + r * ld;
            double t = 0;
            for (uint64_t j = 0; j < w; j++) {
                double v2 = row[j] * row[j];
                diag[c0 + j] += v2;
                t += v2;
            }
            for (size_t m = 0; m < nc; m++) {
                double acc = t;
                if (c[m]) {
                    acc = 0;
                    for (uint64_t j = 0; j < w; j++)
                        acc += c[m][c0 + j] * row[j] * row[j];
                }
                out[m * s->n + r / K] += acc;
            }
        }
        c0 += w;
        rc = tpv_progress_report(pg, 0, 1, c0, s->p);
    }
    free(buf);
    return rc == TPV_OK ? TPV_OK : tpv_err_set(err, rc, NULL, "canceled");
}

/* ---- gram -------------------------------------------------------------------------------- */

/* Flops of one BLAS call of the Gram (~0.1 s on one core), so that a cancel is seen soon. */
#define GRAM_CALL_FLOPS 400000000ull

static int dump_gram(const struct tpv_jsrc *a, const struct tpv_jsrc *b, double *out,
                     const struct tpv_progress *pg, struct tpv_err *err)
{
    if (b->ops != &dump_ops || a->p != b->p || a->K != b->K)
        return tpv_err_set(err, TPV_EINVAL, NULL, "gram of sources with different parameters");
    const struct dump *da = a->impl, *db = b->impl;
    if (refuse_headers_only(da, err) != TPV_OK || refuse_headers_only(db, err) != TPV_OK)
        return TPV_EINTERNAL;
    bool self = a == b;
    uint64_t NA = da->rows, NB = db->rows, p = a->p;
    uint64_t maxw = panel_max_width(self ? NA : NA + NB, p);
    double *bufa = NULL, *bufb = NULL;
    int rc = alloc_panel(da, NA, maxw, &bufa, err);
    if (rc == TPV_OK && !self)
        rc = alloc_panel(db, NB, maxw, &bufb, err);
    if (rc != TPV_OK) {
        free(bufa);
        return rc;
    }
    /* No memset of `out`: the first panel's calls write it with beta = 0, so that the first
     * touch of its pages (seconds for a few hundred MB on some VMs) is spread over calls that
     * each report progress. */
    if (p == 0)
        memset(out, 0, (size_t)(NA * NB) * sizeof *out);
    rc = tpv_progress_report(pg, 0, 1, 0, p);
    for (uint64_t c0 = 0; rc == TPV_OK && c0 < p;) {
        double beta = c0 == 0 ? 0.0 : 1.0;
        uint64_t w = panel_width(da, c0, maxw);
        if (!self)
            w = panel_width(db, c0, w);
        uint64_t lda, ldb = 0;
        const double *A = panel_get(da, c0, w, bufa, &lda);
        const double *B = self ? NULL : panel_get(db, c0, w, bufb, &ldb);
        /* Row blocks of about GRAM_CALL_FLOPS each, with a progress report (and cancel point)
         * after every one: one call over the whole panel ran for seconds at nK = 6000. */
        uint64_t rb = GRAM_CALL_FLOPS / (2 * (NB ? NB : 1) * (w ? w : 1));
        rb = rb < 16 ? 16 : rb;
        for (uint64_t i0 = 0; rc == TPV_OK && i0 < NA; i0 += rb) {
            uint64_t ib = NA - i0 < rb ? NA - i0 : rb, i1 = i0 + ib;
            if (self) {
                cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, (blasint)ib, (blasint)w,
                            1.0, A + i0 * lda, (blasint)lda, beta, out + i0 * NA + i0,
                            (blasint)NA);
                if (i1 < NA)
                    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)ib,
                                (blasint)(NA - i1), (blasint)w, 1.0, A + i0 * lda, (blasint)lda,
                                A + i1 * lda, (blasint)lda, beta, out + i0 * NA + i1,
                                (blasint)NA);
            } else {
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)ib, (blasint)NB,
                            (blasint)w, 1.0, A + i0 * lda, (blasint)lda, B, (blasint)ldb, beta,
                            out + i0 * NB, (blasint)NB);
            }
            rc = tpv_progress_report(pg, 0, 1, c0 * NA + w * i1, p * NA);
        }
        c0 += w;
    }
    free(bufa);
    free(bufb);
    /* The lower triangle's first touch, a cancel point every 256 rows. */
    for (uint64_t i = 0; rc == TPV_OK && self && i < NA; i++) {
        for (uint64_t j = 0; j < i; j++)
            out[i * NA + j] = out[j * NA + i];
        if (i % 256 == 255)
            rc = tpv_progress_report(pg, 0, 1, 1, 1);
    }
    if (rc != TPV_OK)
        return tpv_err_set(err, rc, NULL, "canceled");
    return TPV_OK;
}

/* ---- jvp / vjp / projected sqdiag -------------------------------------------------------- */

/* What a product does with one column panel P (rows x w, row stride ld) at column c0. */
struct panel_job {
    const struct tpv_jsrc *s;
    const double *in; /* v, u, V, U or r, as the product reads it */
    double *out, *out2;
    double *y;        /* scratch of the projected sqdiag: one row of w */
    uint64_t b;       /* block width of the block products */
    void (*apply)(const struct panel_job *j, const double *P, uint64_t ld, uint64_t c0,
                  uint64_t w);
};

/* Runs j->apply over the dump's column panels in order, with progress and cancel between
 * panels: the one loop of every product, so that they read the dump the same way. */
static int each_panel(const struct panel_job *j, const struct tpv_progress *pg,
                      struct tpv_err *err)
{
    const struct tpv_jsrc *s = j->s;
    const struct dump *d = s->impl;
    if (refuse_headers_only(d, err) != TPV_OK)
        return TPV_EINTERNAL;
    uint64_t maxw = panel_max_width(d->rows, s->p);
    double *buf;
    int rc = alloc_panel(d, d->rows, maxw, &buf, err);
    if (rc != TPV_OK)
        return rc;
    for (uint64_t c0 = 0; rc == TPV_OK && c0 < s->p;) {
        uint64_t w = panel_width(d, c0, maxw), ld;
        const double *P = panel_get(d, c0, w, buf, &ld);
        j->apply(j, P, ld, c0, w);
        c0 += w;
        rc = tpv_progress_report(pg, 0, 1, c0, s->p);
    }
    free(buf);
    return rc == TPV_OK ? TPV_OK : tpv_err_set(err, rc, NULL, "canceled");
}

static blasint rows_of(const struct panel_job *j)
{
    return (blasint)((const struct dump *)j->s->impl)->rows;
}

static void jvp_panel(const struct panel_job *j, const double *P, uint64_t ld, uint64_t c0,
                      uint64_t w)
{
    cblas_dgemv(CblasRowMajor, CblasNoTrans, rows_of(j), (blasint)w, 1.0, P, (blasint)ld,
                j->in + c0, 1, 1.0, j->out, 1);
}

static void vjp_panel(const struct panel_job *j, const double *P, uint64_t ld, uint64_t c0,
                      uint64_t w)
{
    cblas_dgemv(CblasRowMajor, CblasTrans, rows_of(j), (blasint)w, 1.0, P, (blasint)ld, j->in,
                1, 0.0, j->out + c0, 1);
}

static void jvp_block_panel(const struct panel_job *j, const double *P, uint64_t ld,
                            uint64_t c0, uint64_t w)
{
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows_of(j), (blasint)j->b,
                (blasint)w, 1.0, P, (blasint)ld, j->in + c0 * j->b, (blasint)j->b, 1.0, j->out,
                (blasint)j->b);
}

static void vjp_block_panel(const struct panel_job *j, const double *P, uint64_t ld,
                            uint64_t c0, uint64_t w)
{
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)w, (blasint)j->b, rows_of(j),
                1.0, P, (blasint)ld, j->in, (blasint)j->b, 0.0, j->out + c0 * j->b,
                (blasint)j->b);
}

/* diag[c] += sum_x (r_x . J_x[:, c])^2 over the panel's columns; total[x] += the row's sum. */
static void projected_panel(const struct panel_job *j, const double *P, uint64_t ld,
                            uint64_t c0, uint64_t w)
{
    const struct tpv_jsrc *s = j->s;
    double *diag = j->out, *total = j->out2, *y = j->y;
    for (uint64_t x = 0; x < s->n; x++) {
        cblas_dgemv(CblasRowMajor, CblasTrans, (blasint)s->K, (blasint)w, 1.0,
                    P + x * s->K * ld, (blasint)ld, j->in + x * s->K, 1, 0.0, y, 1);
        double t = 0;
        for (uint64_t c = 0; c < w; c++) {
            diag[c0 + c] += y[c] * y[c];
            t += y[c] * y[c];
        }
        if (total)
            total[x] += t;
    }
}

static int dump_jvp(const struct tpv_jsrc *s, const double *v, double *out,
                    const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct dump *d = s->impl;
    memset(out, 0, (size_t)d->rows * sizeof *out);
    struct panel_job j = { .s = s, .in = v, .out = out, .apply = jvp_panel };
    return each_panel(&j, pg, err);
}

static int dump_vjp(const struct tpv_jsrc *s, const double *u, double *out,
                    const struct tpv_progress *pg, struct tpv_err *err)
{
    struct panel_job j = { .s = s, .in = u, .out = out, .apply = vjp_panel };
    return each_panel(&j, pg, err);
}

/* out (rows x b) = J V (V: p x b), the GEMM form of dump_jvp over the same column panels. */
static int dump_jvp_block(const struct tpv_jsrc *s, const double *V, uint64_t b, double *out,
                          const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct dump *d = s->impl;
    memset(out, 0, (size_t)(d->rows * b) * sizeof *out);
    struct panel_job j = { .s = s, .in = V, .out = out, .b = b, .apply = jvp_block_panel };
    return each_panel(&j, pg, err);
}

/* out (p x b) = J^T U (U: rows x b), the GEMM form of dump_vjp. */
static int dump_vjp_block(const struct tpv_jsrc *s, const double *U, uint64_t b, double *out,
                          const struct tpv_progress *pg, struct tpv_err *err)
{
    struct panel_job j = { .s = s, .in = U, .out = out, .b = b, .apply = vjp_block_panel };
    return each_panel(&j, pg, err);
}

static int dump_sqdiag_projected(const struct tpv_jsrc *s, const double *r, double *diag,
                                 double *total, const struct tpv_progress *pg,
                                 struct tpv_err *err)
{
    const struct dump *d = s->impl;
    double *y = malloc((size_t)panel_max_width(d->rows, s->p) * sizeof *y);
    if (!y)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    if (total)
        memset(total, 0, (size_t)s->n * sizeof *total);
    struct panel_job j = { .s = s, .in = r, .out = diag, .out2 = total, .y = y,
                           .apply = projected_panel };
    int rc = each_panel(&j, pg, err);
    free(y);
    return rc;
}

static uint64_t dump_scratch_bytes(const struct tpv_jsrc *s)
{
    const struct dump *d = s->impl;
    uint64_t panel = needs_buffer(d) ? tpv_sat_mul(tpv_sat_mul(d->rows, s->p), 8) : 0;
    if (panel > TPV_DUMP_PANEL_BYTES)
        panel = TPV_DUMP_PANEL_BYTES;
    uint64_t b = tpv_sat_add(panel, (uint64_t)tpv_linalg_threads() * TPV_SQSUM_TMP * sizeof(float));
    for (size_t i = 0; i < d->nparts; i++)
        b = tpv_sat_add(b, d->parts[i].copy_bytes);
    return b;
}

static const struct tpv_jsrc_ops dump_ops = {
    .sqdiag = dump_sqdiag,
    .sqdiag_samples = dump_sqdiag_samples,
    .gram = dump_gram,
    .jvp = dump_jvp,
    .sqdiag_projected = dump_sqdiag_projected,
    .scratch_bytes = dump_scratch_bytes,
    .free = dump_free,
    .vjp = dump_vjp,
    .jvp_block = dump_jvp_block,
    .vjp_block = dump_vjp_block,
};

/* ---- construction ------------------------------------------------------------------------ */

static bool is_float(enum tpv_dtype t)
{
    return t == TPV_DTYPE_F16 || t == TPV_DTYPE_BF16 || t == TPV_DTYPE_F32 || t == TPV_DTYPE_F64;
}

static const struct tpv_tensor *find_weight(const struct tpv_tensor *const *w, size_t nw,
                                            const char *name)
{
    for (size_t i = 0; i < nw; i++)
        if (w[i]->name && strcmp(w[i]->name, name) == 0)
            return w[i];
    return NULL;
}

static int cmp_name(const void *a, const void *b)
{
    const struct tpv_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Checks a tensor's data: float dtype, shape product == numel, finite values. */
static int check_data(const struct dump *d, const struct tpv_tensor *t, uint64_t rows,
                      uint64_t cols, struct tpv_err *err)
{
    const char *nm = t->name && *t->name ? t->name : "dump";
    if (!is_float(t->dtype))
        return tpv_err_set(err, TPV_EFORMAT, nm, "tensor '%s': Jacobian dumps must be F16, BF16, "
                           "F32 or F64", nm);
    uint64_t numel, bytes;
    if (__builtin_mul_overflow(rows, cols, &numel) ||
        __builtin_mul_overflow(numel, (uint64_t)tpv_dtype_size(t->dtype), &bytes) ||
        numel != t->numel || (t->nbytes && bytes != t->nbytes) || (numel && !t->data))
        return tpv_err_set(err, TPV_EFORMAT, nm, "tensor '%s': shape does not match its data", nm);
    uint64_t bad;
    if (!d->headers_only && !tpv_all_finite(t->dtype, t->data, numel, &bad))
        return tpv_err_set(err, TPV_EFORMAT, nm, "tensor '%s': non-finite value at index %llu",
                           nm, (unsigned long long)bad);
    return TPV_OK;
}

static int shape_equal(const struct tpv_tensor *w, int rank, const uint64_t *shape)
{
    if (w->rank != rank)
        return 0;
    for (int i = 0; i < rank; i++)
        if (w->shape[i] != shape[i])
            return 0;
    return 1;
}

static void shape_str(char *buf, size_t len, int rank, const uint64_t *shape)
{
    size_t used = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < rank && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%llu", i ? ", " : "",
                                 (unsigned long long)shape[i]);
    if (used < len)
        snprintf(buf + used, len - used, ")");
}

static int add_part(struct dump *d, const struct tpv_tensor *t, uint64_t col0, uint64_t cols,
                    struct tpv_err *err)
{
    struct part *pt = &d->parts[d->nparts++];
    pt->dtype = t->dtype;
    pt->es = tpv_dtype_size(t->dtype);
    pt->col0 = col0;
    pt->cols = cols;
    pt->data = t->data;
    if ((uintptr_t)t->data % pt->es != 0) {
        /* safetensors does not promise aligned tensors; copy the rare misaligned one (the memory
         * plan counts it through scratch_bytes). */
        pt->copy_bytes = t->numel * pt->es; /* check_data bounded it by the tensor's bytes */
        if (d->headers_only) {
            pt->data = NULL;
            return TPV_OK;
        }
        pt->owned = malloc((size_t)t->numel * pt->es);
        if (!pt->owned)
            return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        memcpy(pt->owned, t->data, (size_t)t->numel * pt->es);
        pt->data = pt->owned;
    }
    return TPV_OK;
}

static int set_block(struct tpv_block *b, const char *name, int rank, const uint64_t *shape,
                     uint64_t offset, uint64_t count, struct tpv_err *err)
{
    b->name = strdup(name);
    if (!b->name)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    b->rank = rank;
    memset(b->shape, 0, sizeof b->shape);
    memcpy(b->shape, shape, (size_t)rank * sizeof *shape);
    b->offset = offset;
    b->count = count;
    return TPV_OK;
}

static int build_flat(struct tpv_jsrc *s, struct dump *d, const struct tpv_tensor *t,
                      const char *const *layout, size_t nlayout,
                      const struct tpv_tensor *const *weights, size_t nweights, struct tpv_err *err)
{
    if (t->rank != 2 && t->rank != 3)
        return tpv_err_set(err, TPV_EFORMAT, "dump",
                           "a .npy Jacobian dump must have shape (n, K, p) or (n, p), got rank %d",
                           t->rank);
    s->n = t->shape[0];
    s->K = t->rank == 3 ? t->shape[1] : 1;
    s->p = t->shape[t->rank - 1];
    if (s->n == 0 || s->K == 0 || s->p == 0)
        return tpv_err_set(err, TPV_EFORMAT, "dump", "the Jacobian dump is empty");
    if (__builtin_mul_overflow(s->n, s->K, &d->rows))
        return tpv_err_set(err, TPV_EFORMAT, "dump", "dump shape overflows");
    int rc = check_data(d, t, d->rows, s->p, err);
    if (rc != TPV_OK)
        return rc;
    d->parts = calloc(1, sizeof *d->parts);
    if (!d->parts)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    rc = add_part(d, t, 0, s->p, err);
    s->layout.p = s->p;
    if (rc != TPV_OK || nlayout == 0)
        return rc;
    if (nweights == 0)
        return tpv_err_set(err, TPV_EINVAL, "layout",
                           "a layout needs the weights to know the shapes of its tensors");
    s->layout.blocks = calloc(nlayout, sizeof *s->layout.blocks);
    if (!s->layout.blocks)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    uint64_t off = 0;
    for (size_t i = 0; i < nlayout; i++) {
        for (size_t j = 0; j < i; j++)
            if (strcmp(layout[i], layout[j]) == 0)
                return tpv_err_set(err, TPV_EINVAL, "layout", "layout names '%s' twice",
                                   layout[i]);
        const struct tpv_tensor *w = find_weight(weights, nweights, layout[i]);
        if (!w)
            return tpv_err_set(err, TPV_EINVAL, "layout",
                               "layout tensor '%s' is not in the weights", layout[i]);
        rc = set_block(&s->layout.blocks[i], layout[i], w->rank, w->shape, off, w->numel, err);
        s->layout.nblocks = i + 1;
        if (rc != TPV_OK)
            return rc;
        if (__builtin_add_overflow(off, w->numel, &off))
            return tpv_err_set(err, TPV_EINVAL, "layout", "layout sizes overflow");
    }
    if (off != s->p)
        return tpv_err_set(err, TPV_EINVAL, "layout",
                           "the layout covers %llu parameters but the dump has p = %llu columns",
                           (unsigned long long)off, (unsigned long long)s->p);
    return TPV_OK;
}

static int build_named(struct tpv_jsrc *s, struct dump *d, const struct tpv_tensor *const *tensors,
                       size_t nt, const char *const *layout, size_t nlayout,
                       const struct tpv_tensor *const *weights, size_t nweights,
                       struct tpv_err *err)
{
    const struct tpv_tensor **sorted = malloc(nt * sizeof *sorted);
    d->parts = calloc(nt, sizeof *d->parts);
    s->layout.blocks = calloc(nt, sizeof *s->layout.blocks);
    if (!sorted || !d->parts || !s->layout.blocks) {
        free(sorted);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    memcpy(sorted, tensors, nt * sizeof *sorted);
    for (size_t i = 0; i < nt; i++)
        if (!sorted[i]->name || !*sorted[i]->name) {
            free(sorted);
            return tpv_err_set(err, TPV_EFORMAT, "dump", "dump tensors must be named");
        }
    qsort(sorted, nt, sizeof *sorted, cmp_name);
    int rc = TPV_OK;
    uint64_t off = 0;
    for (size_t i = 0; rc == TPV_OK && i < nt; i++) {
        const struct tpv_tensor *t = sorted[i];
        char exp[160], got[160];
        if (i > 0 && strcmp(t->name, sorted[i - 1]->name) == 0) {
            rc = tpv_err_set(err, TPV_EFORMAT, t->name, "tensor '%s' appears twice", t->name);
            break;
        }
        if (t->rank < 2) {
            rc = tpv_err_set(err, TPV_EFORMAT, t->name,
                             "dump tensor '%s' must have shape (n, K, *param_shape)", t->name);
            break;
        }
        if (i == 0) {
            s->n = t->shape[0];
            s->K = t->shape[1];
            if (s->n == 0 || s->K == 0 || __builtin_mul_overflow(s->n, s->K, &d->rows)) {
                rc = tpv_err_set(err, TPV_EFORMAT, t->name, "dump tensor '%s' has no samples",
                                 t->name);
                break;
            }
        } else if (t->shape[0] != s->n || t->shape[1] != s->K) {
            rc = tpv_err_set(err, TPV_EFORMAT, t->name,
                             "dump tensor '%s' has (n, K) = (%llu, %llu), others (%llu, %llu)",
                             t->name, (unsigned long long)t->shape[0],
                             (unsigned long long)t->shape[1], (unsigned long long)s->n,
                             (unsigned long long)s->K);
            break;
        }
        uint64_t cols = 1;
        for (int k = 2; k < t->rank; k++)
            if (__builtin_mul_overflow(cols, t->shape[k], &cols))
                cols = 0;
        if (cols == 0) {
            rc = tpv_err_set(err, TPV_EFORMAT, t->name, "dump tensor '%s' has an empty or "
                             "overflowing parameter shape", t->name);
            break;
        }
        if (weights && nweights) {
            const struct tpv_tensor *w = find_weight(weights, nweights, t->name);
            shape_str(exp, sizeof exp, t->rank - 2, t->shape + 2);
            if (!w) {
                rc = tpv_err_set(err, TPV_EINVAL, t->name,
                                 "dump tensor '%s' has no weight of that name", t->name);
                break;
            }
            if (!shape_equal(w, t->rank - 2, t->shape + 2)) {
                shape_str(got, sizeof got, w->rank, w->shape);
                rc = tpv_err_set(err, TPV_EINVAL, t->name,
                                 "dump tensor '%s' has parameter shape %s but the weight is %s",
                                 t->name, exp, got);
                break;
            }
        }
        rc = check_data(d, t, d->rows, cols, err);
        if (rc == TPV_OK)
            rc = add_part(d, t, off, cols, err);
        if (rc == TPV_OK)
            rc = set_block(&s->layout.blocks[i], t->name, t->rank - 2, t->shape + 2, off, cols,
                           err);
        s->layout.nblocks = i + 1;
        if (rc == TPV_OK && __builtin_add_overflow(off, cols, &off))
            rc = tpv_err_set(err, TPV_EFORMAT, "dump", "dump size overflows");
    }
    free(sorted);
    if (rc != TPV_OK)
        return rc;
    s->p = s->layout.p = off;
    if (nlayout) {
        bool same = nlayout == nt;
        for (size_t i = 0; same && i < nlayout; i++)
            same = tpv_layout_find(&s->layout, layout[i]) >= 0;
        if (!same)
            return tpv_err_set(err, TPV_EINVAL, "layout",
                               "the layout does not list the dump's tensors (a safetensors dump "
                               "names its own columns)");
    }
    return TPV_OK;
}

static int from_tensors(struct tpv_jsrc **out, const struct tpv_tensor *const *tensors,
                        size_t ntensors, const char *const *layout_names, size_t nlayout,
                        const struct tpv_tensor *const *weights, size_t nweights,
                        bool headers_only, struct tpv_err *err)
{
    *out = NULL;
    if (ntensors == 0)
        return tpv_err_set(err, TPV_EFORMAT, "dump", "the Jacobian dump has no tensors");
    struct tpv_jsrc *s = calloc(1, sizeof *s);
    struct dump *d = calloc(1, sizeof *d);
    if (!s || !d) {
        free(s);
        free(d);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    s->ops = &dump_ops;
    s->impl = d;
    d->headers_only = headers_only;
    bool flat = ntensors == 1 && (!tensors[0]->name || !*tensors[0]->name);
    int rc = flat ? build_flat(s, d, tensors[0], layout_names, nlayout, weights, nweights, err)
                  : build_named(s, d, tensors, ntensors, layout_names, nlayout, weights, nweights,
                                err);
    if (rc != TPV_OK) {
        dump_free(s);
        return rc;
    }
    *out = s;
    return TPV_OK;
}

int tpv_dump_from_tensors(struct tpv_jsrc **out, const struct tpv_tensor *const *tensors,
                          size_t ntensors, const char *const *layout_names, size_t nlayout,
                          const struct tpv_tensor *const *weights, size_t nweights,
                          struct tpv_err *err)
{
    return from_tensors(out, tensors, ntensors, layout_names, nlayout, weights, nweights, false,
                        err);
}

static int open_file(struct tpv_jsrc **out, const char *path, const char *const *layout_names,
                     size_t nlayout, const struct tpv_tensor_file *weights, bool headers_only,
                     struct tpv_err *err)
{
    *out = NULL;
    struct tpv_tensor_file *f;
    int rc = tpv_tensor_file_open(&f, path, err);
    if (rc != TPV_OK)
        return rc;
    size_t nt = tpv_tensor_file_count(f), nw = weights ? tpv_tensor_file_count(weights) : 0;
    const struct tpv_tensor **ts = calloc(nt ? nt : 1, sizeof *ts);
    const struct tpv_tensor **ws = calloc(nw ? nw : 1, sizeof *ws);
    if (!ts || !ws) {
        rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    } else {
        for (size_t i = 0; i < nt; i++)
            ts[i] = tpv_tensor_file_at(f, i);
        for (size_t i = 0; i < nw; i++)
            ws[i] = tpv_tensor_file_at(weights, i);
        rc = from_tensors(out, ts, nt, layout_names, nlayout, ws, nw, headers_only, err);
    }
    free(ts);
    free(ws);
    if (rc != TPV_OK) {
        tpv_tensor_file_close(f);
        return rc;
    }
    ((struct dump *)(*out)->impl)->file = f;
    return TPV_OK;
}

int tpv_dump_open(struct tpv_jsrc **out, const char *path, const char *const *layout_names,
                  size_t nlayout, const struct tpv_tensor_file *weights, struct tpv_err *err)
{
    return open_file(out, path, layout_names, nlayout, weights, false, err);
}

int tpv_dump_open_headers(struct tpv_jsrc **out, const char *path,
                          const char *const *layout_names, size_t nlayout,
                          const struct tpv_tensor_file *weights, struct tpv_err *err)
{
    return open_file(out, path, layout_names, nlayout, weights, true, err);
}
