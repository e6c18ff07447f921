/* test_rank_stats.c: core/rank_stats against hand-worked examples (ties in one variable, in
 * both, none: then the closed form 1 - 6 sum d^2 / (n (n^2 - 1))), against values from a plain
 * Python implementation of the textbook definitions (no scipy: pairwise counts for tau-b, Pearson
 * of average ranks for rho), and the bootstrap against a plain-Python percentile bootstrap with
 * 20000 resamples of another generator (the two intervals agree to within resampling error). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "core/rank_stats.h"
#include "core/rng.h"

#define TOL 1e-12

static double spearman_of(size_t n, const double *x, const double *y, int *rc)
{
    double work[128], r = NAN;
    size_t order[64];
    assert_true(n <= 64);
    *rc = tpv_spearman(n, x, y, work, order, &r);
    return r;
}

static void test_average_ranks(void **state)
{
    (void)state;
    const double x[] = { 7, 5, 7, 1, 7, 5 };
    const double want[] = { 5, 2.5, 5, 1, 5, 2.5 }; /* 1 | 5,5 -> 2,3 | 7,7,7 -> 4,5,6 */
    double r[6];
    size_t order[6];
    tpv_rank_average(6, x, r, order);
    for (int i = 0; i < 6; i++)
        assert_float_equal(r[i], want[i], 0);
}

/* y ties at 7: ranks (1, 2, 3.5, 5, 3.5); sxy = 8, sxx = 10, syy = 9.5, rho = 8 / sqrt(95).
 * Pairs: 8 concordant, 1 discordant, 1 tied in y: tau-b = 7 / sqrt(10 * 9). */
static void test_ties_in_one(void **state)
{
    (void)state;
    const double x[] = { 1, 2, 3, 4, 5 }, y[] = { 5, 6, 7, 8, 7 };
    int rc;
    double rho = spearman_of(5, x, y, &rc), tau = NAN;
    assert_int_equal(rc, TPV_OK);
    assert_float_equal(rho, 8 / sqrt(95), TOL);
    assert_float_equal(rho, 0.8207826816681233, TOL); /* plain Python */
    assert_int_equal(tpv_kendall_tau_b(5, x, y, &tau), TPV_OK);
    assert_float_equal(tau, 7 / sqrt(90), TOL);
}

/* Without ties Spearman is 1 - 6 sum d^2 / (n (n^2 - 1)): d = +-1 six times, 1 - 36/210; three
 * discordant pairs of fifteen: tau = (12 - 3) / 15. */
static void test_no_ties_closed_form(void **state)
{
    (void)state;
    const double x[] = { 10, 20, 30, 40, 50, 60 }, y[] = { 0.2, 0.1, 0.4, 0.3, 0.6, 0.5 };
    int rc;
    double tau = NAN;
    assert_float_equal(spearman_of(6, x, y, &rc), 1 - 36.0 / 210.0, TOL);
    assert_int_equal(rc, TPV_OK);
    assert_int_equal(tpv_kendall_tau_b(6, x, y, &tau), TPV_OK);
    assert_float_equal(tau, 0.6, TOL);
}

/* Ties in both variables, one pair tied in both (it counts in Tx and in Ty): C = 7, D = 0,
 * Tx = 2, Ty = 2 over 10 pairs: tau-b = 7 / 8.  rho from plain Python: 0.9166666666666666. */
static void test_ties_in_both(void **state)
{
    (void)state;
    const double x[] = { 1, 1, 2, 2, 3 }, y[] = { 1, 1, 2, 3, 3 };
    int rc;
    double tau = NAN;
    assert_float_equal(spearman_of(5, x, y, &rc), 0.9166666666666666, TOL);
    assert_int_equal(rc, TPV_OK);
    assert_int_equal(tpv_kendall_tau_b(5, x, y, &tau), TPV_OK);
    assert_float_equal(tau, 0.875, TOL);
}

/* 40 pairs, weakly related, with ties in y (one decimal). */
static const double sx[40] = {
    -0.256, 0.511, -0.226, -0.315, -0.93, -0.213, 1.112, 0.424, 1.037, 0.249, 0.395, 0.185,
    -1.666, 0.855, 0.506, 0.499, -1.691, -1.744, -0.89, -0.468, 0.305, -0.046, 0.521, -0.642,
    0.309, 0.394, -0.661, 1.718, 0.557, 1.197, -0.62, -0.74, -0.344, -0.106, 0.632, 0.248,
    -0.447, -0.957, -0.521, 1.221 };
static const double sy[40] = {
    -0.9, 0.5, 0.3, -1.6, -0.4, 1.2, -1.5, -0.1, 0.4, -0.7, 0.7, 0.0, -2.3, 1.3, 0.9, 1.2, 0.6,
    -0.5, -0.3, -1.5, 0.8, -0.6, -0.2, -1.6, -0.8, -0.3, 1.0, -1.2, -1.2, 0.8, 1.1, 0.2, -2.1,
    -2.6, 0.7, -0.6, -1.3, 0.5, 0.8, 0.8 };

static void test_reference_sample(void **state)
{
    (void)state;
    int rc;
    double tau = NAN;
    assert_float_equal(spearman_of(40, sx, sy, &rc), 0.19857297484423073, TOL);
    assert_int_equal(rc, TPV_OK);
    assert_int_equal(tpv_kendall_tau_b(40, sx, sy, &tau), TPV_OK);
    assert_float_equal(tau, 0.14748340819873412, TOL);
    /* Negating one variable negates both. */
    double neg[40], r2 = NAN;
    for (int i = 0; i < 40; i++)
        neg[i] = -sy[i];
    assert_float_equal(spearman_of(40, sx, neg, &rc), -0.19857297484423073, TOL);
    assert_int_equal(tpv_kendall_tau_b(40, sx, neg, &r2), TPV_OK);
    assert_float_equal(r2, -0.14748340819873412, TOL);
}

static void test_undefined(void **state)
{
    (void)state;
    const double x[] = { 1, 2, 3 }, c[] = { 4, 4, 4 };
    int rc;
    double tau = 42;
    spearman_of(1, x, x, &rc);
    assert_int_equal(rc, TPV_EINVAL);
    spearman_of(3, x, c, &rc);
    assert_int_equal(rc, TPV_EINVAL);
    assert_int_equal(tpv_kendall_tau_b(3, c, x, &tau), TPV_EINVAL);
    assert_int_equal(tpv_kendall_tau_b(1, x, x, &tau), TPV_EINVAL);
    assert_float_equal(tau, 42, 0); /* untouched */
    double work[TPV_BOOT_WORK(3, 10)], lo, hi;
    size_t order[TPV_BOOT_ORDER(3)];
    assert_int_equal(tpv_spearman_bootstrap(3, x, c, 10, 1, 0.95, work, order, &lo, &hi),
                     TPV_EINVAL);
    assert_int_equal(tpv_spearman_bootstrap(3, x, x, 1, 1, 0.95, work, order, &lo, &hi),
                     TPV_EINVAL);
    assert_int_equal(tpv_spearman_bootstrap(3, x, x, 10, 1, 1.0, work, order, &lo, &hi),
                     TPV_EINVAL);
}

/* The same seed gives the same interval; a plain-Python bootstrap of 20000 resamples gives
 * [-0.1123, 0.4867] on the reference sample: 2000 resamples land within 0.05 of both ends. */
static void test_bootstrap_reference(void **state)
{
    (void)state;
    enum { B = 2000 };
    double *work = malloc(sizeof(double) * TPV_BOOT_WORK(40, B));
    size_t order[TPV_BOOT_ORDER(40)];
    double lo = NAN, hi = NAN, lo2 = NAN, hi2 = NAN;
    assert_non_null(work);
    assert_int_equal(tpv_spearman_bootstrap(40, sx, sy, B, 7, 0.95, work, order, &lo, &hi),
                     TPV_OK);
    assert_int_equal(tpv_spearman_bootstrap(40, sx, sy, B, 7, 0.95, work, order, &lo2, &hi2),
                     TPV_OK);
    assert_float_equal(lo, lo2, 0);
    assert_float_equal(hi, hi2, 0);
    assert_true(lo < 0.19857297484423073 && 0.19857297484423073 < hi);
    assert_float_equal(lo, -0.11226620695885133, 0.05);
    assert_float_equal(hi, 0.4866692024786761, 0.05);
    /* Another seed moves the ends a little, not much. */
    assert_int_equal(tpv_spearman_bootstrap(40, sx, sy, B, 8, 0.95, work, order, &lo2, &hi2),
                     TPV_OK);
    assert_true(lo2 != lo || hi2 != hi);
    assert_float_equal(lo2, lo, 0.05);
    /* A perfectly monotone sample resamples to rho = 1 every time (ties from repeats included). */
    double mono[40];
    for (int i = 0; i < 40; i++)
        mono[i] = exp(sx[i]);
    assert_int_equal(tpv_spearman_bootstrap(40, sx, mono, B, 7, 0.95, work, order, &lo, &hi),
                     TPV_OK);
    assert_float_equal(lo, 1, TOL);
    assert_float_equal(hi, 1, TOL);
    free(work);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The O(n) rank update of each resample against the direct way: draw the same indices (stream 0
 * of the seed, k = floor(u n)), build each resample, rank it from scratch with tpv_spearman, take
 * the same quantiles.  The two must agree to rounding. */
static void test_bootstrap_against_direct(void **state)
{
    (void)state;
    enum { N = 40, B = 500 };
    double work[TPV_BOOT_WORK(N, B)], bx[N], by[N], rw[2 * N], rhos[B], lo, hi;
    size_t order[TPV_BOOT_ORDER(N)], ro[N], m = 0;
    assert_int_equal(tpv_spearman_bootstrap(N, sx, sy, B, 11, 0.9, work, order, &lo, &hi),
                     TPV_OK);
    struct tpv_rng rng;
    tpv_rng_init(&rng, 11, 0);
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < N; i++) {
            size_t k = (size_t)(tpv_rng_uniform(&rng) * N);
            bx[i] = sx[k];
            by[i] = sy[k];
        }
        double r;
        if (tpv_spearman(N, bx, by, rw, ro, &r) == TPV_OK)
            rhos[m++] = r;
    }
    assert_int_equal(m, B);
    qsort(rhos, m, sizeof *rhos, cmp_d);
    double h = (m - 1) * 0.05, h2 = (m - 1) * 0.95;
    size_t i = (size_t)h, i2 = (size_t)h2;
    assert_float_equal(lo, rhos[i] + (h - (double)i) * (rhos[i + 1] - rhos[i]), 1e-12);
    assert_float_equal(hi, rhos[i2] + (h2 - (double)i2) * (rhos[i2 + 1] - rhos[i2]), 1e-12);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_average_ranks),
        cmocka_unit_test(test_ties_in_one),
        cmocka_unit_test(test_no_ties_closed_form),
        cmocka_unit_test(test_ties_in_both),
        cmocka_unit_test(test_reference_sample),
        cmocka_unit_test(test_undefined),
        cmocka_unit_test(test_bootstrap_reference),
        cmocka_unit_test(test_bootstrap_against_direct),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
