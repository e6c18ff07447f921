/* bench_sqdiag.c: exact Tr(H_eff) (the dump's sqdiag) over a float32 .npy dump of >= 1 GiB on
 * disk, against a plain vectorised multi-accumulator sum of squares over the same mapped bytes in
 * the same run (one thread and two threads; the best baseline counts).  Target: ratio >= 0.70.
 *
 * Usage: bench_sqdiag [path (default /tmp/tpv_bench_sqdiag.npy)] [repeats (5)]
 * The file (n = 2000, K = 1, p = 140000 float32 = 1.04 GiB) is created when missing. */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/dump.h"
#include "core/linalg.h"

#define N_ROWS 2000ull
#define P_COLS 140000ull

typedef float v4f __attribute__((vector_size(16)));

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int make_file(const char *path)
{
    char hdr[128];
    int len = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%llu, %llu), }",
                       (unsigned long long)N_ROWS, (unsigned long long)P_COLS);
    int total = 10 + len + 1;
    int pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    unsigned char magic[10] = { 0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0 };
    uint16_t hl = (uint16_t)(len + pad + 1);
    memcpy(magic + 8, &hl, 2);
    fwrite(magic, 1, 10, f);
    fwrite(hdr, 1, (size_t)len, f);
    for (int i = 0; i < pad; i++)
        fputc(' ', f);
    fputc('\n', f);
    float *row = malloc(P_COLS * sizeof *row);
    uint64_t s = 88172645463325252ull;
    for (uint64_t r = 0; r < N_ROWS; r++) {
        for (uint64_t c = 0; c < P_COLS; c++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            row[c] = (float)((double)(s >> 11) * 0x1.0p-53 - 0.5);
        }
        fwrite(row, sizeof *row, P_COLS, f);
    }
    free(row);
    return fclose(f);
}

struct base_job {
    const float *x;
    uint64_t n;
    double out;
};

/* Plain sum of squares with four vector accumulators (what a careful programmer writes). */
static void *base_sum(void *p)
{
    struct base_job *j = p;
    v4f a = { 0, 0, 0, 0 }, b = a, c = a, d = a;
    uint64_t i = 0;
    const float *x = j->x;
    /* Flush into double every 64 elements per lane so the float sums stay short. */
    double acc = 0;
    for (; i + 16 * 16 <= j->n;) {
        for (int k = 0; k < 16; k++, i += 16) {
            v4f v0, v1, v2, v3;
            memcpy(&v0, x + i, 16);
            memcpy(&v1, x + i + 4, 16);
            memcpy(&v2, x + i + 8, 16);
            memcpy(&v3, x + i + 12, 16);
            a += v0 * v0, b += v1 * v1, c += v2 * v2, d += v3 * v3;
        }
        v4f s = (a + b) + (c + d);
        acc += (double)s[0] + (double)s[1] + (double)s[2] + (double)s[3];
        a = b = c = d = (v4f){ 0, 0, 0, 0 };
    }
    for (; i < j->n; i++)
        acc += (double)x[i] * x[i];
    j->out = acc;
    return NULL;
}

static double baseline(const float *x, uint64_t n, int threads, double *sum)
{
    struct base_job jobs[2] = { { x, threads == 2 ? n / 2 : n, 0 },
                                { x + n / 2, n - n / 2, 0 } };
    double t0 = now();
    if (threads == 2) {
        pthread_t th;
        pthread_create(&th, NULL, base_sum, &jobs[1]);
        base_sum(&jobs[0]);
        pthread_join(th, NULL);
        *sum = jobs[0].out + jobs[1].out;
    } else {
        base_sum(&jobs[0]);
        *sum = jobs[0].out;
    }
    return now() - t0;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "/tmp/tpv_bench_sqdiag.npy";
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (reps < 1 || reps > 50)
        reps = 5;
    struct stat st;
    if (stat(path, &st) != 0 || (uint64_t)st.st_size < N_ROWS * P_COLS * 4) {
        fprintf(stderr, "creating %s ...\n", path);
        if (make_file(path) != 0) {
            perror(path);
            return 1;
        }
        stat(path, &st);
    }
    struct tpv_jsrc *s;
    struct tpv_err err;
    double t0 = now();
    if (tpv_dump_open(&s, path, NULL, 0, NULL, &err) != 0) {
        fprintf(stderr, "open: %s\n", err.message);
        return 1;
    }
    double t_open = now() - t0;
    struct tpv_tensor_file *f;
    tpv_tensor_file_open(&f, path, &err);
    const struct tpv_tensor *t = tpv_tensor_file_at(f, 0);
    const float *x = t->data;
    uint64_t n = t->numel;
    double bytes = (double)n * 4;
    double *diag = malloc(s->p * sizeof *diag);
    double ts[50], b1[50], b2[50], sum1 = 0, sum2 = 0, tr = 0;
    baseline(x, n, 2, &sum2); /* warm the page cache */
    for (int r = 0; r < reps; r++) {
        b1[r] = baseline(x, n, 1, &sum1);
        b2[r] = baseline(x, n, 2, &sum2);
        memset(diag, 0, s->p * sizeof *diag);
        double a = now();
        s->ops->sqdiag(s, diag, NULL, &err);
        tr = 0;
        for (uint64_t j = 0; j < s->p; j++)
            tr += diag[j];
        ts[r] = now() - a;
    }
    qsort(ts, (size_t)reps, sizeof *ts, cmp_d);
    qsort(b1, (size_t)reps, sizeof *b1, cmp_d);
    qsort(b2, (size_t)reps, sizeof *b2, cmp_d);
    double m = ts[reps / 2], m1 = b1[reps / 2], m2 = b2[reps / 2];
    double best = m1 < m2 ? m1 : m2;
    printf("sqdiag: file %s, %.2f GiB, n=%llu K=%llu p=%llu, threads %d, open+validate %.3f s\n",
           path, (double)st.st_size / (1u << 30), (unsigned long long)s->n,
           (unsigned long long)s->K, (unsigned long long)s->p, tpv_linalg_threads(), t_open);
    printf("  exact Tr(H_eff) sqdiag : %.4f s  %.1f GB/s  (trace %.9g)\n", m, bytes / m / 1e9, tr);
    printf("  baseline sum, 1 thread : %.4f s  %.1f GB/s  (sum %.9g)\n", m1, bytes / m1 / 1e9, sum1);
    printf("  baseline sum, 2 threads: %.4f s  %.1f GB/s\n", m2, bytes / m2 / 1e9);
    printf("  RATIO sqdiag / best baseline bandwidth = %.3f (target >= 0.70); medians of %d\n",
           best / m, reps);
    printf("  relative difference of the two sums: %.2e\n", (tr - sum1) / sum1);
    free(diag);
    tpv_tensor_file_close(f);
    tpv_jsrc_free(s);
    return 0;
}
