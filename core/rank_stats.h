/* rank_stats.h: rank correlations for the agreement report (DESIGN.md section 5, "Agreement"):
 * Spearman's rho with average ranks for ties, Kendall's tau-b, and a percentile bootstrap interval
 * of Spearman's rho that resamples the paired observations.  Pure functions of their inputs (the
 * bootstrap's stream is fixed by its seed), float64 throughout, no allocation except the named
 * work buffers the caller passes in.
 *
 * A correlation is undefined when n < 2 or when either variable is constant over the sample: the
 * functions then return TPV_EINVAL and leave *out untouched, so the caller can report null. */
#ifndef TPV_RANK_STATS_H
#define TPV_RANK_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "core/tpv_error.h"

/* Average ranks (1-based; tied values share the mean of their positions) of x[0..n) into
 * ranks[0..n).  `order` is caller-owned work space of n entries.  x must hold no NaN. */
void tpv_rank_average(size_t n, const double *x, double *ranks, size_t *order);

/* Pearson correlation of x and y (float64, two-pass).  TPV_EINVAL when n < 2 or a variable has
 * zero variance. */
int tpv_pearson(size_t n, const double *x, const double *y, double *out);

/* Spearman's rho: the Pearson correlation of the average ranks (the definition that stays right
 * under ties; 1 - 6 sum d^2 / (n (n^2 - 1)) only holds without them).  `work` is caller-owned
 * space of 2n doubles and `order` of n entries.  TPV_EINVAL as tpv_pearson. */
int tpv_spearman(size_t n, const double *x, const double *y, double *work, size_t *order,
                 double *out);

/* Kendall's tau-b = (C - D) / sqrt((P - Tx) (P - Ty)) over the P = n(n-1)/2 pairs: C concordant,
 * D discordant, Tx / Ty pairs tied in x / in y (pairs tied in both count in both).  O(n^2), no
 * work space.  TPV_EINVAL when n < 2 or a variable is constant. */
int tpv_kendall_tau_b(size_t n, const double *x, const double *y, double *out);

/* The two-sided percentile bootstrap interval of Spearman's rho at level `level` (0.95): `resamples`
 * samples of n pairs drawn with replacement from (x, y) through core/rng.h stream 0 of `seed`, so
 * the same seed and n draw the same index sets whatever the data (intervals of several items over
 * the same candidates are then paired).  A resample's rho is that of its average ranks (ties from
 * repeated draws included), computed in O(n) from its draw counts and the originals' sorted order.
 * Resamples whose rho is undefined (every draw tied in a variable) are left out; the quantiles are
 * the linear interpolation of the sorted rhos (numpy's default rule).  Work space: `work` of
 * TPV_BOOT_WORK(n, resamples) doubles, `order` of TPV_BOOT_ORDER(n) entries.  TPV_EINVAL when
 * n < 2, resamples < 2, level outside (0, 1), or fewer than half the resamples gave a defined
 * rho. */
#define TPV_BOOT_WORK(n, resamples) (3 * (size_t)(n) + (size_t)(resamples))
#define TPV_BOOT_ORDER(n) (2 * (size_t)(n))
int tpv_spearman_bootstrap(size_t n, const double *x, const double *y, size_t resamples,
                           uint64_t seed, double level, double *work, size_t *order, double *lo,
                           double *hi);

#endif
