/* bench_gram.c: Gram matrix J J^T of a float32 dump (nK = 4000, p = 50000) against cblas_sgemm on
 * the same shape in the same run.  Both are timed for the same product; the dump's gram converts
 * panels to float64 and runs dsyrk (half the multiply-adds of a GEMM, in double precision), so
 * the ratio below is t_sgemm / t_gram, i.e. effective GEMM-equivalent GFLOP/s over sgemm's.
 * Target: ratio >= 0.60.
 *
 * Usage: bench_gram [rows (4000)] [p (50000)] [repeats (3)] */
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/dump.h"
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

int main(int argc, char **argv)
{
    uint64_t N = argc > 1 ? strtoull(argv[1], NULL, 10) : 4000;
    uint64_t p = argc > 2 ? strtoull(argv[2], NULL, 10) : 50000;
    int reps = argc > 3 ? atoi(argv[3]) : 3;
    if (reps < 1 || reps > 20)
        reps = 3;
    float *J = malloc(N * p * sizeof *J), *C = malloc(N * N * sizeof *C);
    double *G = malloc(N * N * sizeof *G);
    if (!J || !C || !G)
        return 1;
    uint64_t s = 88172645463325252ull;
    for (uint64_t i = 0; i < N * p; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        J[i] = (float)((double)(s >> 11) * 0x1.0p-53 - 0.5);
    }
    uint64_t shape[2] = { N, p };
    struct tpv_tensor t = { "", TPV_DTYPE_F32, 2, { N, p }, N * p, N * p * 4, J };
    (void)shape;
    const struct tpv_tensor *ts[1] = { &t };
    struct tpv_jsrc *src;
    struct tpv_err err;
    if (tpv_dump_from_tensors(&src, ts, 1, NULL, 0, NULL, 0, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    double tg[20], tsg[20], tsy[20];
    double flops = 2.0 * (double)N * (double)N * (double)p;
    for (int r = 0; r < reps; r++) {
        double a = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)N, (blasint)N, (blasint)p,
                    1.0f, J, (blasint)p, J, (blasint)p, 0.0f, C, (blasint)N);
        tsg[r] = now() - a;
        a = now();
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, (blasint)N, (blasint)p, 1.0f, J,
                    (blasint)p, 0.0f, C, (blasint)N);
        tsy[r] = now() - a;
        a = now();
        src->ops->gram(src, src, G, NULL, &err);
        tg[r] = now() - a;
    }
    double maxrel = 0; /* float32 sgemm vs our float64-accumulated Gram */
    for (uint64_t i = 0; i < N; i += 97)
        for (uint64_t j = i; j < N; j += 89) {
            double d = (C[i * N + j] - G[i * N + j]) / G[i * N + i];
            maxrel = d < 0 ? (-d > maxrel ? -d : maxrel) : (d > maxrel ? d : maxrel);
        }
    qsort(tg, (size_t)reps, sizeof *tg, cmp_d);
    qsort(tsg, (size_t)reps, sizeof *tsg, cmp_d);
    qsort(tsy, (size_t)reps, sizeof *tsy, cmp_d);
    double mg = tg[reps / 2], ms = tsg[reps / 2], my = tsy[reps / 2];
    printf("gram: float32 dump, nK=%llu p=%llu, threads %d, panels of <= %llu MiB\n",
           (unsigned long long)N, (unsigned long long)p, tpv_linalg_threads(),
           (unsigned long long)(TPV_DUMP_PANEL_BYTES >> 20));
    printf("  sgemm  A A^T          : %.3f s  %.1f GFLOP/s\n", ms, flops / ms / 1e9);
    printf("  ssyrk  (info)         : %.3f s  %.1f GFLOP/s (counting N^2 p)\n", my,
           flops / 2 / my / 1e9);
    printf("  dump gram (dsyrk f64) : %.3f s  %.1f GEMM-equivalent GFLOP/s, %.1f GFLOP/s done\n",
           mg, flops / mg / 1e9, flops / 2 / mg / 1e9);
    printf("  RATIO gram / sgemm = %.3f (target >= 0.60); medians of %d\n", ms / mg, reps);
    printf("  max |sgemm - gram| / G_ii (float32 accumulation error of sgemm): %.2e\n", maxrel);
    tpv_jsrc_free(src);
    free(J), free(C), free(G);
    return 0;
}
