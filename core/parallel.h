/* parallel.h: the deterministic thread split under the numerical kernels (the job's threads).
 *
 * A loop is cut into parts by sizes only (never by timing), part t always runs the same range,
 * and parts are combined by the caller in order: a result depends on its inputs and the thread
 * count, not on scheduling. */
#ifndef TPV_PARALLEL_H
#define TPV_PARALLEL_H

#include <stdint.h>

/* Threads the numerical kernels use: the job's threads, which are OpenBLAS's setting (the
 * daemon sets it from --threads-per-job), at least 1. */
int tpv_linalg_threads(void);

/* Runs fn(ctx, t, nthreads) for t < nthreads, t = 0 on the calling thread and the others on
 * helper threads of the calling thread (started on its first split, kept parked between splits,
 * ended when it exits); falls back to running parts one after another if a helper cannot be
 * created.  Deterministic as long as fn's result for each t does not depend on the others.
 * While the parts run, BLAS is single-threaded (the split is the parallelism; OpenBLAS's setting
 * is restored afterwards), so fn may call BLAS on its share of the data.  Called from inside a part, it runs the parts one after another on that thread. */
void tpv_parallel_run(int nthreads, void (*fn)(void *ctx, int t, int nthreads), void *ctx);

/* Part t of nthreads of [0, n): contiguous ranges in order, each starting at a multiple of
 * `align` (>= 1), their sizes differing by at most `align` except the last, which also takes the
 * n % align remainder.  A BLAS call on a part then sees the same column blocks as the call on the
 * whole (OpenBLAS's kernels treat the edge columns of a product differently, so an unaligned
 * split changes the rounding of those; TPV_SPLIT_ALIGN is a multiple of their unroll). */
#define TPV_SPLIT_ALIGN 8
void tpv_split_range(uint64_t n, uint64_t align, int t, int nthreads, uint64_t *first,
                     uint64_t *count);

/* The threads a loop of `flops` should use: tpv_linalg_threads(), fewer when a thread would get
 * less than the minimum share (TPV_SPLIT_MIN_FLOPS, ~100 us of work: a helper that has gone to
 * sleep takes up to tens of microseconds to wake), at least 1.  Depends on the sizes only, so a result stays a function of the
 * inputs and the thread count. */
#define TPV_SPLIT_MIN_FLOPS 5e5
int tpv_split_threads(double flops);
/* Sets that minimum share (0: every loop uses all threads).  For tests, which split small models,
 * and for tuning. */
void tpv_split_set_min_flops(double flops);

/* fn(ctx, first, count) over contiguous ranges covering [0, n) on the threads that
 * tpv_split_threads gives n * flops_per_item (one call on the calling thread when that is 1).
 * For loops whose items are independent: the results are then those of one call over [0, n). */
void tpv_parallel_for(uint64_t n, double flops_per_item,
                      void (*fn)(void *ctx, uint64_t first, uint64_t count), void *ctx);

#endif
