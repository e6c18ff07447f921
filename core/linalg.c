/* linalg.c: conversion, blocked sum-of-squares and LAPACKE wrappers (see linalg.h).
 *
 * The sum-of-squares kernel is the hot loop of exact Tr(H_eff) over a dump: it streams the mapped
 * file once, keeps 8 rows in flight (16 streams measured much slower), squares and sums them in
 * float (SIMD via GCC/clang vector extensions, no -march needed) and adds into float64. */
#include "core/linalg.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef float v4f __attribute__((vector_size(16)));
typedef double v2d __attribute__((vector_size(16)));

static inline v4f load4f(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline v2d load2d(const double *p)
{
    v2d v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store2d(double *p, v2d v)
{
    memcpy(p, &v, sizeof v);
}

/* acc[c] += sum over nr <= 16 rows of x^2, float32 rows at x + r * ld. */
static void sq_rows_f32(const float *x, size_t nr, size_t ld, size_t w, double *acc)
{
    size_t c = 0;
    if (nr == 16) {
#define SQ(r) ({ v4f v_ = load4f(x + (r) * ld + c); v_ * v_; })
        for (; c + 4 <= w; c += 4) {
            v4f s1 = ((SQ(0) + SQ(1)) + (SQ(2) + SQ(3))) + ((SQ(4) + SQ(5)) + (SQ(6) + SQ(7)));
            v4f s2 = ((SQ(8) + SQ(9)) + (SQ(10) + SQ(11))) +
                     ((SQ(12) + SQ(13)) + (SQ(14) + SQ(15)));
            v2d lo = { (double)s1[0] + (double)s2[0], (double)s1[1] + (double)s2[1] };
            v2d hi = { (double)s1[2] + (double)s2[2], (double)s1[3] + (double)s2[3] };
            store2d(acc + c, load2d(acc + c) + lo);
            store2d(acc + c + 2, load2d(acc + c + 2) + hi);
        }
#undef SQ
    } else if (nr == 8) {
#define SQ(r) ({ v4f v_ = load4f(x + (r) * ld + c); v_ * v_; })
        for (; c + 4 <= w; c += 4) {
            v4f s1 = ((SQ(0) + SQ(1)) + (SQ(2) + SQ(3))) + ((SQ(4) + SQ(5)) + (SQ(6) + SQ(7)));
            v2d lo = { (double)s1[0], (double)s1[1] };
            v2d hi = { (double)s1[2], (double)s1[3] };
            store2d(acc + c, load2d(acc + c) + lo);
            store2d(acc + c + 2, load2d(acc + c + 2) + hi);
        }
    } else if (nr == 4) {
        for (; c + 4 <= w; c += 4) {
            v4f s1 = (SQ(0) + SQ(1)) + (SQ(2) + SQ(3));
            v2d lo = { (double)s1[0], (double)s1[1] };
            v2d hi = { (double)s1[2], (double)s1[3] };
            store2d(acc + c, load2d(acc + c) + lo);
            store2d(acc + c + 2, load2d(acc + c + 2) + hi);
        }
#undef SQ
    } else {
        for (; c + 4 <= w; c += 4) {
            v4f s1 = { 0, 0, 0, 0 }, s2 = { 0, 0, 0, 0 };
            for (size_t r = 0; r < nr && r < 8; r++) {
                v4f v = load4f(x + r * ld + c);
                s1 += v * v;
            }
            for (size_t r = 8; r < nr; r++) {
                v4f v = load4f(x + r * ld + c);
                s2 += v * v;
            }
            v2d lo = { (double)s1[0] + (double)s2[0], (double)s1[1] + (double)s2[1] };
            v2d hi = { (double)s1[2] + (double)s2[2], (double)s1[3] + (double)s2[3] };
            store2d(acc + c, load2d(acc + c) + lo);
            store2d(acc + c + 2, load2d(acc + c + 2) + hi);
        }
    }
    for (; c < w; c++) {
        float s1 = 0, s2 = 0;
        for (size_t r = 0; r < nr && r < 8; r++)
            s1 += x[r * ld + c] * x[r * ld + c];
        for (size_t r = 8; r < nr; r++)
            s2 += x[r * ld + c] * x[r * ld + c];
        acc[c] += (double)s1 + (double)s2;
    }
}

static void sq_rows_f64(const double *x, size_t nr, size_t ld, size_t w, double *acc)
{
    size_t c = 0;
    for (; c + 2 <= w; c += 2) {
        v2d s1 = { 0, 0 }, s2 = { 0, 0 };
        size_t r = 0;
        for (; r + 2 <= nr; r += 2) {
            v2d a = load2d(x + r * ld + c), b = load2d(x + (r + 1) * ld + c);
            s1 += a * a;
            s2 += b * b;
        }
        if (r < nr) {
            v2d a = load2d(x + r * ld + c);
            s1 += a * a;
        }
        store2d(acc + c, load2d(acc + c) + (s1 + s2));
    }
    for (; c < w; c++) {
        double s = 0;
        for (size_t r = 0; r < nr; r++)
            s += x[r * ld + c] * x[r * ld + c];
        acc[c] += s;
    }
}

#ifndef SQ_GROUP
#define SQ_GROUP 8
#endif

void tpv_sqsum_cols(enum tpv_dtype dtype, const void *x, uint64_t rows, uint64_t cols,
                    uint64_t ld, double *acc, float *tmp)
{
    size_t es = tpv_dtype_size(dtype);
    const unsigned char *base = x;
    for (uint64_t r0 = 0; r0 < rows; r0 += SQ_GROUP) {
        size_t nr = rows - r0 < SQ_GROUP ? (size_t)(rows - r0) : SQ_GROUP;
        const unsigned char *row = base + r0 * ld * es;
        if (dtype == TPV_DTYPE_F32) {
            sq_rows_f32((const float *)(const void *)row, nr, ld, cols, acc);
        } else if (dtype == TPV_DTYPE_F64) {
            sq_rows_f64((const double *)(const void *)row, nr, ld, cols, acc);
        } else {
            /* Half precision: convert a chunk of up to 16 rows to float first. */
            for (uint64_t c0 = 0; c0 < cols; c0 += TPV_SQSUM_CHUNK) {
                size_t w = cols - c0 < TPV_SQSUM_CHUNK ? (size_t)(cols - c0) : TPV_SQSUM_CHUNK;
                for (size_t r = 0; r < nr; r++)
                    tpv_convert_f32(dtype, row + (r * ld + c0) * es, w, tmp + r * TPV_SQSUM_CHUNK);
                sq_rows_f32(tmp, nr, TPV_SQSUM_CHUNK, w, acc + c0);
            }
        }
    }
}

bool tpv_all_finite(enum tpv_dtype dtype, const void *x, uint64_t count, uint64_t *first_bad)
{
    const unsigned char *s = x;
    bool ok = true;
    if (dtype == TPV_DTYPE_F32) {
        /* x * 0 is NaN exactly for Inf/NaN: a cheap vectorisable screen, then locate. */
        v4f a = { 0, 0, 0, 0 }, b = a;
        uint64_t i = 0;
        for (; i + 8 <= count; i += 8) {
            a += load4f((const float *)(const void *)(s + 4 * i)) * 0.0f;
            b += load4f((const float *)(const void *)(s + 4 * i + 16)) * 0.0f;
        }
        v4f t = a + b;
        float f = t[0] + t[1] + t[2] + t[3];
        for (; i < count; i++) {
            float v;
            memcpy(&v, s + 4 * i, 4);
            f += v * 0.0f;
        }
        ok = f == 0.0f;
    } else if (dtype == TPV_DTYPE_F64) {
        v2d a = { 0, 0 }, b = a;
        uint64_t i = 0;
        for (; i + 4 <= count; i += 4) {
            a += load2d((const double *)(const void *)(s + 8 * i)) * 0.0;
            b += load2d((const double *)(const void *)(s + 8 * i + 16)) * 0.0;
        }
        v2d t = a + b;
        double f = t[0] + t[1];
        for (; i < count; i++) {
            double v;
            memcpy(&v, s + 8 * i, 8);
            f += v * 0.0;
        }
        ok = f == 0.0;
    } else if (dtype == TPV_DTYPE_F16 || dtype == TPV_DTYPE_BF16) {
        uint16_t mask = dtype == TPV_DTYPE_F16 ? 0x7c00 : 0x7f80;
        for (uint64_t i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            if ((h & mask) == mask) {
                *first_bad = i;
                return false;
            }
        }
        return true;
    } else {
        return true;
    }
    if (ok)
        return true;
    size_t es = tpv_dtype_size(dtype);
    for (uint64_t i = 0; i < count; i++) {
        double v;
        if (es == 4) {
            float f;
            memcpy(&f, s + 4 * i, 4);
            v = f;
        } else {
            memcpy(&v, s + 8 * i, 8);
        }
        if (!isfinite(v)) {
            *first_bad = i;
            return false;
        }
    }
    return true;
}

uint64_t tpv_syevd_work_bytes(uint64_t n)
{
    /* LAPACK's documented minimum for JOBZ = 'V': lwork = 1 + 6n + 2n^2, liwork = 3 + 5n. */
    uint64_t lw = tpv_sat_add(tpv_sat_add(1, tpv_sat_mul(6, n)), tpv_sat_mul(2, tpv_sat_mul(n, n)));
    return tpv_sat_add(tpv_sat_mul(lw, sizeof(double)),
                       tpv_sat_mul(tpv_sat_add(3, tpv_sat_mul(5, n)), sizeof(lapack_int)));
}

int tpv_syevd(uint64_t n, double *A, double *w, struct tpv_err *err)
{
    if (n == 0)
        return TPV_OK;
    if (n > (uint64_t)INT32_MAX / 8)
        return tpv_err_set(err, TPV_ENOSPACE, NULL, "matrix of order %llu is too large for LAPACK",
                           (unsigned long long)n);
    lapack_int ln = (lapack_int)n;
    /* A row-major matrix with its upper triangle is the column-major matrix with the lower
     * one; calling the column-major routine avoids LAPACKE's transposed copy.  The eigenvectors
     * come back as columns of the column-major result, i.e. rows of A as seen row-major; we
     * transpose in place afterwards so that the interface stays "columns". */
    double wq;
    lapack_int iwq;
    lapack_int info = LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'L', ln, A, ln, w, &wq, -1, &iwq, -1);
    if (info != 0)
        return tpv_err_set(err, TPV_ENUMERIC, NULL, "dsyevd workspace query failed (info %d)",
                           (int)info);
    size_t lwork = (size_t)wq, liwork = (size_t)iwq;
    double *work = malloc(lwork * sizeof *work);
    lapack_int *iwork = malloc(liwork * sizeof *iwork);
    if (!work || !iwork) {
        free(work);
        free(iwork);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory for the eigendecomposition");
    }
    info = LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'L', ln, A, ln, w, work, (lapack_int)lwork,
                               iwork, (lapack_int)liwork);
    free(work);
    free(iwork);
    if (info != 0)
        return tpv_err_set(err, TPV_ENUMERIC, NULL,
                           "symmetric eigendecomposition failed to converge (info %d)", (int)info);
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t j = i + 1; j < n; j++) {
            double t = A[i * n + j];
            A[i * n + j] = A[j * n + i];
            A[j * n + i] = t;
        }
    return TPV_OK;
}

int tpv_orth(uint64_t m, uint64_t k, double *A, struct tpv_err *err)
{
    if (k == 0)
        return TPV_OK;
    if (m < k || m > (uint64_t)INT32_MAX || k > (uint64_t)INT32_MAX)
        return tpv_err_set(err, TPV_EINVAL, NULL, "orthonormalisation needs rows >= columns");
    double *tau = malloc(k * sizeof *tau);
    if (!tau)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    lapack_int info = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, (lapack_int)m, (lapack_int)k, A,
                                     (lapack_int)k, tau);
    if (info == 0)
        info = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, (lapack_int)m, (lapack_int)k, (lapack_int)k, A,
                              (lapack_int)k, tau);
    free(tau);
    if (info < 0)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "QR factorisation failed (info %d)", (int)info);
    if (info != 0)
        return tpv_err_set(err, TPV_ENUMERIC, NULL, "QR factorisation failed (info %d)", (int)info);
    return TPV_OK;
}

/* ---- tiled Cholesky -------------------------------------------------------------------------- */

static int chol_poll(tpv_poll_fn poll, void *ctx, double done, double total, struct tpv_err *err)
{
    double f = total > 0 ? done / total : 1;
    if (poll && poll(ctx, f < 1 ? f : 1))
        return tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
    return TPV_OK;
}

static bool chol_dims_ok(uint64_t n, uint64_t ld, uint64_t r)
{
    return n <= (uint64_t)INT32_MAX && ld <= (uint64_t)INT32_MAX && r <= (uint64_t)INT32_MAX &&
           ld >= n;
}

int tpv_chol_tiled(uint64_t n, double *A, uint64_t lda, tpv_poll_fn poll, void *ctx,
                   struct tpv_err *err)
{
    if (!chol_dims_ok(n, lda, 0))
        return tpv_err_set(err, TPV_ENOSPACE, NULL, "matrix of order %llu is too large for BLAS",
                           (unsigned long long)n);
    const uint64_t b = TPV_CHOL_TILE;
    double dn = (double)n, total = dn * dn * dn / 3 + 1, done = 0;
    /* Right-looking: factor the diagonal tile, solve the panel below it, then update the
     * trailing lower triangle one tile row at a time (one GEMM per tile row, which also writes
     * the strict upper half of the row's diagonal tile: scratch, never read). */
    for (uint64_t k0 = 0; k0 < n; k0 += b) {
        uint64_t kb = n - k0 < b ? n - k0 : b, k1 = k0 + kb, rest = n - k1;
        double *Akk = A + k0 * lda + k0;
        lapack_int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', (lapack_int)kb, Akk,
                                         (lapack_int)lda);
        if (info < 0)
            return tpv_err_set(err, TPV_ENOMEM, NULL, "Cholesky factorisation failed (info %d)",
                               (int)info);
        if (info > 0)
            return tpv_err_set(err, TPV_ENUMERIC, NULL,
                               "the regularised Gram matrix is not positive definite in floating "
                               "point (leading minor %llu of %llu): use a larger ridge",
                               (unsigned long long)(k0 + (uint64_t)info), (unsigned long long)n);
        done += (double)kb * (double)kb * (double)kb / 3;
        if (rest == 0)
            break;
        double *P = A + k1 * lda + k0;
        cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit,
                    (blasint)rest, (blasint)kb, 1.0, Akk, (blasint)lda, P, (blasint)lda);
        done += (double)rest * (double)kb * (double)kb;
        int rc = chol_poll(poll, ctx, done, total, err);
        for (uint64_t i0 = k1; rc == TPV_OK && i0 < n; i0 += b) {
            uint64_t ib = n - i0 < b ? n - i0 : b, cols = i0 + ib - k1;
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)ib, (blasint)cols,
                        (blasint)kb, -1.0, A + i0 * lda + k0, (blasint)lda, P, (blasint)lda, 1.0,
                        A + i0 * lda + k1, (blasint)lda);
            done += (double)ib * (double)cols * (double)kb;
            rc = chol_poll(poll, ctx, done, total, err);
        }
        if (rc != TPV_OK)
            return rc;
    }
    return TPV_OK;
}

int tpv_chol_solve_tiled(uint64_t n, const double *L, uint64_t lda, uint64_t r, double *B,
                         uint64_t ldb, uint64_t zero_rows, tpv_poll_fn poll, void *ctx,
                         struct tpv_err *err)
{
    if (!chol_dims_ok(n, lda, r) || ldb > (uint64_t)INT32_MAX || ldb < r)
        return tpv_err_set(err, TPV_ENOSPACE, NULL, "system of order %llu is too large for BLAS",
                           (unsigned long long)n);
    if (n == 0 || r == 0)
        return TPV_OK;
    const uint64_t b = TPV_CHOL_TILE;
    uint64_t t0 = zero_rows < n ? zero_rows / b * b : n;
    double dn = (double)n, dz = (double)(n - t0), dr = (double)r;
    double total = (dz * dz + dn * dn) * dr + 1, done = 0;
    int rc = TPV_OK;
    /* Forward: L Y = B, tile row by tile row (rows before t0 stay zero). */
    for (uint64_t i0 = t0; rc == TPV_OK && i0 < n; i0 += b) {
        uint64_t ib = n - i0 < b ? n - i0 : b;
        if (i0 > t0)
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)ib, (blasint)r,
                        (blasint)(i0 - t0), -1.0, L + i0 * lda + t0, (blasint)lda, B + t0 * ldb,
                        (blasint)ldb, 1.0, B + i0 * ldb, (blasint)ldb);
        cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, (blasint)ib,
                    (blasint)r, 1.0, L + i0 * lda + i0, (blasint)lda, B + i0 * ldb, (blasint)ldb);
        done += 2.0 * (double)ib * (double)(i0 + ib - t0) * dr;
        rc = chol_poll(poll, ctx, done, total, err);
    }
    /* Backward: L^T X = Y from the last tile row up. */
    uint64_t last = n ? (n - 1) / b * b : 0;
    for (uint64_t i0 = last; rc == TPV_OK;) {
        uint64_t ib = n - i0 < b ? n - i0 : b, i1 = i0 + ib;
        if (i1 < n)
            cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)ib, (blasint)r,
                        (blasint)(n - i1), -1.0, L + i1 * lda + i0, (blasint)lda, B + i1 * ldb,
                        (blasint)ldb, 1.0, B + i0 * ldb, (blasint)ldb);
        cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit, (blasint)ib,
                    (blasint)r, 1.0, L + i0 * lda + i0, (blasint)lda, B + i0 * ldb, (blasint)ldb);
        done += 2.0 * (double)ib * (double)(n - i0) * dr;
        rc = chol_poll(poll, ctx, done, total, err);
        if (i0 == 0)
            break;
        i0 -= b;
    }
    return rc;
}

/* ---- cancellable eigendecomposition ---------------------------------------------------------- */

struct eig_task {
    uint64_t n;
    double *A, *w;
    int rc;
    struct tpv_err err;
    bool done, abandoned;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static pthread_mutex_t abandoned_mu = PTHREAD_MUTEX_INITIALIZER;
static int abandoned_count;

int tpv_syevd_abandoned(void)
{
    pthread_mutex_lock(&abandoned_mu);
    int c = abandoned_count;
    pthread_mutex_unlock(&abandoned_mu);
    return c;
}

static void eig_task_free(struct eig_task *t)
{
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t);
}

static void *eig_main(void *arg)
{
    struct eig_task *t = arg;
    int rc = tpv_syevd(t->n, t->A, t->w, &t->err);
    pthread_mutex_lock(&t->mu);
    t->rc = rc;
    t->done = true;
    bool orphan = t->abandoned;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    if (orphan) { /* the caller returned on a cancel and left the buffers to us */
        free(t->A);
        free(t->w);
        eig_task_free(t);
        pthread_mutex_lock(&abandoned_mu);
        abandoned_count--;
        pthread_mutex_unlock(&abandoned_mu);
    }
    return NULL;
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int tpv_syevd_cancellable(uint64_t n, double **A, double **w, double expected_seconds,
                          int (*poll)(void *ctx, double fraction), void *ctx,
                          struct tpv_err *err)
{
    struct eig_task *t = calloc(1, sizeof *t);
    if (!t)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    *t = (struct eig_task){ .n = n, .A = *A, .w = *w };
    tpv_err_clear(&t->err);
    pthread_t th;
    pthread_attr_t at;
    bool started = false;
    if (pthread_mutex_init(&t->mu, NULL) != 0) {
        free(t);
        return tpv_syevd(n, *A, *w, err);
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int crc = pthread_cond_init(&t->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (crc != 0) {
        pthread_mutex_destroy(&t->mu);
        free(t);
        return tpv_syevd(n, *A, *w, err);
    }
    if (pthread_attr_init(&at) == 0) {
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        started = pthread_create(&th, &at, eig_main, t) == 0;
        pthread_attr_destroy(&at);
    }
    if (!started) {
        eig_task_free(t);
        return tpv_syevd(n, *A, *w, err);
    }
    double t0 = mono_now();
    pthread_mutex_lock(&t->mu);
    while (!t->done) {
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_nsec += 50 * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&t->cv, &t->mu, &dl);
        if (t->done)
            break;
        pthread_mutex_unlock(&t->mu);
        double f = expected_seconds > 0 ? (mono_now() - t0) / expected_seconds : 0;
        int stop = poll ? poll(ctx, f < 0.95 ? f : 0.95) : 0;
        pthread_mutex_lock(&t->mu);
        if (stop && !t->done) {
            t->abandoned = true;
            pthread_mutex_lock(&abandoned_mu);
            abandoned_count++;
            pthread_mutex_unlock(&abandoned_mu);
            pthread_mutex_unlock(&t->mu);
            *A = NULL;
            *w = NULL;
            return tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
        }
    }
    pthread_mutex_unlock(&t->mu);
    int rc = t->rc;
    if (rc != TPV_OK && err)
        *err = t->err;
    eig_task_free(t);
    return rc;
}
