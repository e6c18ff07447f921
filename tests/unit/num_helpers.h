/* num_helpers.h: shared helpers of the numerics tests (dump, estimate, score): tensor views over
 * in-memory arrays, a seeded random fill, and relative-error checks. */
#ifndef TPV_TEST_NUM_HELPERS_H
#define TPV_TEST_NUM_HELPERS_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "core/linalg.h"
#include "core/rng.h"
#include "core/tensor.h"

static inline struct tpv_tensor tview(const char *name, enum tpv_dtype dt, const void *data,
                                      int rank, const uint64_t *shape)
{
    struct tpv_tensor t;
    memset(&t, 0, sizeof t);
    t.name = name;
    t.dtype = dt;
    t.rank = rank;
    t.numel = 1;
    for (int i = 0; i < rank; i++) {
        t.shape[i] = shape[i];
        t.numel *= shape[i];
    }
    t.nbytes = t.numel * tpv_dtype_size(dt);
    t.data = data;
    return t;
}

static inline void fill_normal(double *x, size_t n, uint64_t seed)
{
    struct tpv_rng r;
    tpv_rng_init(&r, seed, 7);
    for (size_t i = 0; i < n; i++)
        x[i] = tpv_rng_normal(&r);
}

static inline double relerr(double a, double b)
{
    double d = fabs(a - b), s = fabs(b) > 1e-300 ? fabs(b) : 1.0;
    return d / s;
}

#define assert_rel(a, b, tol)                                                                   \
    do {                                                                                        \
        double a_ = (a), b_ = (b);                                                              \
        if (!(relerr(a_, b_) <= (tol)))                                                         \
            fail_msg("%s = %.17g vs %s = %.17g: relative error %.3g > %.3g", #a, a_, #b, b_,   \
                     relerr(a_, b_), (double)(tol));                                            \
    } while (0)

#endif
