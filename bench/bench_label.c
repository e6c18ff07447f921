/* bench_label.c: label TPV (fit Gram, K_X, eigendecomposition, projections) with nK = 3000 against
 * LAPACKE_dsyevd alone on the same Gram in the same run.  Target: label / dsyevd <= 1.5.
 *
 * Usage: bench_label [nK (3000)] [p (3000)] [probe rows (300)] [repeats (3)] */
#include <lapacke.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/dump.h"
#include "core/estimate.h"
#include "core/linalg.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static float *rnd(uint64_t n, uint64_t seed)
{
    float *x = malloc(n * sizeof *x);
    uint64_t s = seed * 2654435761ull + 1;
    for (uint64_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = (float)((double)(s >> 11) * 0x1.0p-53 - 0.5);
    }
    return x;
}

int main(int argc, char **argv)
{
    uint64_t N = argc > 1 ? strtoull(argv[1], NULL, 10) : 3000;
    uint64_t p = argc > 2 ? strtoull(argv[2], NULL, 10) : 3000;
    uint64_t M = argc > 3 ? strtoull(argv[3], NULL, 10) : 300;
    int reps = argc > 4 ? atoi(argv[4]) : 3;
    if (reps < 1 || reps > 20)
        reps = 3;
    float *Jf = rnd(N * p, 1), *Jp = rnd(M * p, 2);
    struct tpv_tensor tf = { "", TPV_DTYPE_F32, 2, { N, p }, N * p, N * p * 4, Jf };
    struct tpv_tensor tp = { "", TPV_DTYPE_F32, 2, { M, p }, M * p, M * p * 4, Jp };
    const struct tpv_tensor *a[1] = { &tf }, *b[1] = { &tp };
    struct tpv_jsrc *fit, *probe;
    struct tpv_err err;
    if (tpv_dump_from_tensors(&fit, a, 1, NULL, 0, NULL, 0, &err) ||
        tpv_dump_from_tensors(&probe, b, 1, NULL, 0, NULL, 0, &err)) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    struct tpv_noise nm;
    memset(&nm, 0, sizeof nm);
    snprintf(nm.name, sizeof nm.name, "label");
    nm.kind = TPV_NOISE_LABEL;
    nm.sigma = 1;
    nm.rcond = 1e-10;
    nm.max_samples = 1;
    struct tpv_est_inputs in = { fit, probe, NULL, false, 0, 0, &nm, 1, NULL, 0 };
    struct tpv_run_options opts = { 0, 0 };
    double *G = malloc(N * N * sizeof *G), *w = malloc(N * sizeof *w);
    double tl[20], te[20], value = 0;
    for (int r = 0; r < reps; r++) {
        struct tpv_score *sc;
        size_t ns;
        json_t *st;
        double t0 = now();
        if (tpv_estimate_scores(&in, &opts, &sc, &ns, &st, NULL, &err) != 0) {
            fprintf(stderr, "%s\n", err.message);
            return 1;
        }
        tl[r] = now() - t0;
        value = sc[1].value;
        tpv_scores_free(sc, ns);
        json_decref(st);
        fit->ops->gram(fit, fit, G, NULL, &err);
        t0 = now();
        LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'L', (lapack_int)N, G, (lapack_int)N, w);
        te[r] = now() - t0;
    }
    qsort(tl, (size_t)reps, sizeof *tl, cmp_d);
    qsort(te, (size_t)reps, sizeof *te, cmp_d);
    double ml = tl[reps / 2], me = te[reps / 2];
    printf("label: float32 dumps, fit nK=%llu, probe rows %llu, p=%llu, threads %d\n",
           (unsigned long long)N, (unsigned long long)M, (unsigned long long)p,
           tpv_linalg_threads());
    printf("  label TPV, whole job (sqdiag x2, G, K_X, dsyevd, K_X Q): %.3f s (probe value %.6g)\n",
           ml, value);
    printf("  LAPACKE_dsyevd alone on the same Gram                  : %.3f s\n", me);
    printf("  RATIO label / dsyevd = %.3f (target <= 1.5); medians of %d\n", ml / me, reps);
    tpv_jsrc_free(fit);
    tpv_jsrc_free(probe);
    free(Jf), free(Jp), free(G), free(w);
    return 0;
}
