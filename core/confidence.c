/* confidence.c: the paired comparison of two scores through their per-input contributions
 * (DESIGN.md section 5; core/confidence.h). */
#include "core/confidence.h"

#include <math.h>

double tpv_p_lower(const double *a, const double *b, size_t n)
{
    if (n < 2)
        return NAN;
    double mean = 0, ss = 0;
    for (size_t i = 0; i < n; i++)
        mean += a[i] - b[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++) {
        double d = (a[i] - b[i]) - mean;
        ss += d * d;
    }
    if (!isfinite(mean) || !isfinite(ss))
        return NAN;
    double se = sqrt(ss / (double)(n - 1) / (double)n);
    /* A spread below rounding of the mean is no spread: the order is the sign's. */
    if (se == 0 || se <= 1e-15 * fabs(mean))
        return mean < 0 ? 1.0 : mean > 0 ? 0.0 : 0.5;
    return 0.5 * erfc(mean / se / sqrt(2.0)); /* Phi(-mean/se) */
}
