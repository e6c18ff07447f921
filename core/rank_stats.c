/* rank_stats.c: Spearman (average ranks), Kendall tau-b and the percentile bootstrap of Spearman
 * for the agreement report (see rank_stats.h; DESIGN.md section 5). */
#include "core/rank_stats.h"

#include <math.h>
#include <stdlib.h>

#include "core/rng.h"

/* Heap sort of the index array by key[idx]: in place, O(n log n) without extra space or a sort
 * context (qsort has none for the keys).  Stability does not matter: ties get average ranks. */
static void sift_down(size_t *idx, const double *key, size_t root, size_t end)
{
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= end)
            return;
        if (child + 1 < end && key[idx[child + 1]] > key[idx[child]])
            child++;
        if (!(key[idx[child]] > key[idx[root]]))
            return;
        size_t t = idx[root];
        idx[root] = idx[child];
        idx[child] = t;
        root = child;
    }
}

static void sort_indices(size_t n, const double *key, size_t *idx)
{
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    if (n < 2)
        return;
    for (size_t i = n / 2; i-- > 0;)
        sift_down(idx, key, i, n);
    for (size_t end = n - 1; end > 0; end--) {
        size_t t = idx[0];
        idx[0] = idx[end];
        idx[end] = t;
        sift_down(idx, key, 0, end);
    }
}

void tpv_rank_average(size_t n, const double *x, double *ranks, size_t *order)
{
    sort_indices(n, x, order);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && x[order[j]] == x[order[i]])
            j++;
        /* Positions i..j-1 (0-based) share the mean of the 1-based ranks i+1..j. */
        double r = 0.5 * (double)(i + 1 + j);
        for (size_t k = i; k < j; k++)
            ranks[order[k]] = r;
        i = j;
    }
}

int tpv_pearson(size_t n, const double *x, const double *y, double *out)
{
    if (n < 2)
        return TPV_EINVAL;
    double mx = 0, my = 0;
    for (size_t i = 0; i < n; i++) {
        mx += x[i];
        my += y[i];
    }
    mx /= (double)n;
    my /= (double)n;
    double sxy = 0, sxx = 0, syy = 0;
    for (size_t i = 0; i < n; i++) {
        double dx = x[i] - mx, dy = y[i] - my;
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if (!(sxx > 0) || !(syy > 0))
        return TPV_EINVAL;
    double r = sxy / sqrt(sxx * syy);
    /* Rounding may step just outside [-1, 1]; a correlation never does. */
    *out = r > 1 ? 1 : r < -1 ? -1 : r;
    return TPV_OK;
}

int tpv_spearman(size_t n, const double *x, const double *y, double *work, size_t *order,
                 double *out)
{
    if (n < 2)
        return TPV_EINVAL;
    double *rx = work, *ry = work + n;
    tpv_rank_average(n, x, rx, order);
    tpv_rank_average(n, y, ry, order);
    return tpv_pearson(n, rx, ry, out);
}

static int sign_of(double d)
{
    return (d > 0) - (d < 0);
}

int tpv_kendall_tau_b(size_t n, const double *x, const double *y, double *out)
{
    if (n < 2)
        return TPV_EINVAL;
    /* Counts stay exact in int64 up to n of about 4e9; the caller's n is a candidate count. */
    int64_t conc = 0, disc = 0, tie_x = 0, tie_y = 0;
    for (size_t i = 0; i + 1 < n; i++)
        for (size_t j = i + 1; j < n; j++) {
            int sx = sign_of(x[i] - x[j]), sy = sign_of(y[i] - y[j]);
            if (sx == 0)
                tie_x++;
            if (sy == 0)
                tie_y++;
            if (sx != 0 && sy != 0) {
                if (sx == sy)
                    conc++;
                else
                    disc++;
            }
        }
    double pairs = 0.5 * (double)n * (double)(n - 1);
    double denom = (pairs - (double)tie_x) * (pairs - (double)tie_y);
    if (!(denom > 0))
        return TPV_EINVAL;
    double t = (double)(conc - disc) / sqrt(denom);
    *out = t > 1 ? 1 : t < -1 ? -1 : t;
    return TPV_OK;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Linear interpolation between the order statistics of sorted v[0..m) at probability p. */
static double quantile_sorted(const double *v, size_t m, double p)
{
    double h = (double)(m - 1) * p;
    size_t lo = (size_t)floor(h);
    if (lo + 1 >= m)
        return v[m - 1];
    return v[lo] + (h - (double)lo) * (v[lo + 1] - v[lo]);
}

/* Average ranks, within one resample, of the originals that were drawn (counts[k] times each):
 * walking the originals in sorted order (sorted, from tpv_rank_average's order), a tie group of
 * G draws in all takes the ranks cum+1 .. cum+G, whose mean every member gets.  O(n), where
 * sorting the resample would be O(n log n). */
static void resample_ranks(size_t n, const double *v, const size_t *sorted, const double *counts,
                           double *ranks)
{
    double cum = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        double g = 0;
        while (j < n && v[sorted[j]] == v[sorted[i]])
            g += counts[sorted[j++]];
        double r = cum + 0.5 * (g + 1);
        for (size_t k = i; k < j; k++)
            ranks[sorted[k]] = r;
        cum += g;
        i = j;
    }
}

/* Spearman of one resample given by its draw counts: the Pearson correlation of the resample's
 * average ranks, each original weighted by how often it was drawn.  Average ranks of n draws
 * always have the mean (n + 1) / 2.  TPV_EINVAL when a variable is constant in the resample. */
static int resample_spearman(size_t n, const double *x, const double *y, const size_t *ox,
                             const size_t *oy, const double *counts, double *rx, double *ry,
                             double *out)
{
    resample_ranks(n, x, ox, counts, rx);
    resample_ranks(n, y, oy, counts, ry);
    double m = 0.5 * ((double)n + 1), sxy = 0, sxx = 0, syy = 0;
    for (size_t k = 0; k < n; k++) {
        if (counts[k] == 0)
            continue;
        double dx = rx[k] - m, dy = ry[k] - m;
        sxy += counts[k] * dx * dy;
        sxx += counts[k] * dx * dx;
        syy += counts[k] * dy * dy;
    }
    if (!(sxx > 0) || !(syy > 0))
        return TPV_EINVAL;
    double r = sxy / sqrt(sxx * syy);
    *out = r > 1 ? 1 : r < -1 ? -1 : r;
    return TPV_OK;
}

int tpv_spearman_bootstrap(size_t n, const double *x, const double *y, size_t resamples,
                           uint64_t seed, double level, double *work, size_t *order, double *lo,
                           double *hi)
{
    if (n < 2 || resamples < 2 || !(level > 0 && level < 1))
        return TPV_EINVAL;
    double *counts = work, *rx = work + n, *ry = work + 2 * n, *rhos = work + 3 * n;
    size_t *ox = order, *oy = order + n;
    /* The originals' sorted orders, once: every resample's ranks follow from its counts. */
    tpv_rank_average(n, x, rx, ox);
    tpv_rank_average(n, y, ry, oy);
    size_t m = 0;
    struct tpv_rng rng;
    tpv_rng_init(&rng, seed, 0);
    for (size_t b = 0; b < resamples; b++) {
        for (size_t i = 0; i < n; i++)
            counts[i] = 0;
        for (size_t i = 0; i < n; i++) {
            /* 53 random bits scaled to [0, n): a bias below n / 2^53, nothing for a bootstrap. */
            size_t k = (size_t)(tpv_rng_uniform(&rng) * (double)n);
            counts[k < n ? k : n - 1] += 1;
        }
        double r;
        if (resample_spearman(n, x, y, ox, oy, counts, rx, ry, &r) == TPV_OK)
            rhos[m++] = r;
    }
    if (m < 2 || 2 * m < resamples)
        return TPV_EINVAL;
    qsort(rhos, m, sizeof *rhos, cmp_double);
    double tail = 0.5 * (1 - level);
    *lo = quantile_sorted(rhos, m, tail);
    *hi = quantile_sorted(rhos, m, 1 - tail);
    return TPV_OK;
}
