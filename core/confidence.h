/* confidence.h: what a ranking says about its own order (DESIGN.md section 5, Confidence):
 * every score is the mean of per-input contributions, so two candidates scored on the same
 * inputs compare through their paired per-input differences. */
#ifndef TPV_CONFIDENCE_H
#define TPV_CONFIDENCE_H

#include <stddef.h>

/* P(TPV_a < TPV_b) from the paired differences d_i = a[i] - b[i], i < n, under a normal
 * approximation of their mean: Phi(-mean(d) / (sd(d) / sqrt(n))), sd the sample standard
 * deviation.  sd == 0 gives 1, 0 or 0.5 by the sign of mean(d) (-, +, 0).  NAN when n < 2 (no
 * spread to judge from) or a difference is not finite.  Pure; a and b are read only. */
double tpv_p_lower(const double *a, const double *b, size_t n);

#endif
