/* linalg.h: the small numerical kernels under the Jacobian sources and estimators: dtype
 * conversion of panels, blocked column sums of squares, and thin checked wrappers over LAPACKE
 * (symmetric eigendecomposition, QR orthonormalisation); the thread split is core/parallel.h.
 *
 * Every kernel gives results that depend only on its inputs and the thread count passed in: work
 * is split by columns, never by reductions whose order depends on timing. */
#ifndef TPV_LINALG_H
#define TPV_LINALG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/parallel.h"
#include "core/tensor.h"
#include "core/tpv_error.h"

/* acc[c] += sum_{r < rows} x[r * ld + c]^2 for c < cols, over an F32/F64/F16/BF16 row-major
 * matrix with leading dimension `ld` (elements).  Squares are summed in float for at most 8 rows
 * at a time (relative error <= 8 * 2^-24) and accumulated in float64.  `tmp` is scratch of
 * TPV_SQSUM_TMP floats, needed only for F16/BF16 (may be NULL otherwise). */
#define TPV_SQSUM_CHUNK 512
#define TPV_SQSUM_TMP (8 * TPV_SQSUM_CHUNK)
void tpv_sqsum_cols(enum tpv_dtype dtype, const void *x, uint64_t rows, uint64_t cols,
                    uint64_t ld, double *acc, float *tmp);

/* True when every value of the `count` elements is finite; else *first_bad = its index. */
bool tpv_all_finite(enum tpv_dtype dtype, const void *x, uint64_t count, uint64_t *first_bad);

/* Symmetric eigendecomposition of the n x n row-major matrix A (upper triangle read): on success
 * A holds the eigenvectors as columns and w the ascending eigenvalues.  TPV_ENOMEM, or
 * TPV_ENUMERIC when LAPACK fails to converge. */
int tpv_syevd(uint64_t n, double *A, double *w, struct tpv_err *err);
/* Workspace bytes tpv_syevd allocates for order n (saturates at UINT64_MAX). */
uint64_t tpv_syevd_work_bytes(uint64_t n);

/* tpv_syevd on a helper thread, so that a long eigendecomposition (LAPACK has no cancel point)
 * can still be reported and canceled: every ~50 ms poll(ctx, f) gets f, the elapsed share of
 * `expected_seconds` (capped at 0.95), and a non-zero return cancels.  On TPV_ECANCELED the call
 * returns at once and *A and *w have been handed to the helper, which frees them when LAPACK
 * finishes (both pointers are set to NULL); otherwise it behaves as tpv_syevd.  A and w must be
 * malloc'ed.  Runs inline when no thread can be created. */
int tpv_syevd_cancellable(uint64_t n, double **A, double **w, double expected_seconds,
                          int (*poll)(void *ctx, double fraction), void *ctx,
                          struct tpv_err *err);
/* Eigendecompositions abandoned by a cancel and still running (tests and shutdown wait on it). */
int tpv_syevd_abandoned(void);

/* Tiled Cholesky for the blocked exact label path: every BLAS/LAPACK call works on at most
 * TPV_CHOL_TILE rows (about 2 n TPV_CHOL_TILE^2 flops), and poll(ctx, f) runs after each with f
 * the share of the kernel's flops done, so that a factorisation of any order can be reported and
 * canceled within one such call (LAPACK's dpotrf cannot).  A non-zero poll returns TPV_ECANCELED. */
#define TPV_CHOL_TILE 256
typedef int (*tpv_poll_fn)(void *ctx, double fraction);

/* A = L L^T in place for the n x n row-major symmetric positive definite A (leading dimension
 * lda, lower triangle read).  On success the lower triangle holds L; the strict upper triangle
 * is scratch afterwards.  TPV_ENUMERIC (naming the leading minor) when A is not positive
 * definite in floating point, TPV_ENOSPACE for orders LAPACK cannot take. */
int tpv_chol_tiled(uint64_t n, double *A, uint64_t lda, tpv_poll_fn poll, void *ctx,
                   struct tpv_err *err);

/* Solves L L^T X = B in place for the n x r row-major B (leading dimension ldb), L from
 * tpv_chol_tiled.  B's rows before `zero_rows` must be zero: the forward substitution starts at
 * the tile holding that row (columns of the identity cost a third less).  Polls as above. */
int tpv_chol_solve_tiled(uint64_t n, const double *L, uint64_t lda, uint64_t r, double *B,
                         uint64_t ldb, uint64_t zero_rows, tpv_poll_fn poll, void *ctx,
                         struct tpv_err *err);

/* Orthonormalises the k columns of the row-major m x k matrix A in place (Householder QR,
 * Q returned in A).  Requires m >= k. */
int tpv_orth(uint64_t m, uint64_t k, double *A, struct tpv_err *err);

/* Checked size arithmetic: false on overflow. */
static inline bool tpv_mul3(uint64_t a, uint64_t b, uint64_t c, uint64_t *out)
{
    uint64_t t;
    return !__builtin_mul_overflow(a, b, &t) && !__builtin_mul_overflow(t, c, out);
}
static inline uint64_t tpv_sat_add(uint64_t a, uint64_t b)
{
    uint64_t s;
    return __builtin_add_overflow(a, b, &s) ? UINT64_MAX : s;
}
static inline uint64_t tpv_sat_mul(uint64_t a, uint64_t b)
{
    uint64_t s;
    return __builtin_mul_overflow(a, b, &s) ? UINT64_MAX : s;
}

#endif
