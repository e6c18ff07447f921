/* bench_mlp.c: exact per-tensor block traces of a sequential MLP through the structured MLP source
 * (core/mlp_source.c), against PyTorch on the same model and inputs (bench/bench_mlp_torch.py
 * writes them and its own timings to DIR).  Also times the other source products.
 *
 *     /usr/bin/python3 bench/bench_mlp_torch.py DIR --threads 1
 *     OPENBLAS_NUM_THREADS=1 build/bench/bench_mlp DIR [reps]
 *
 * Prints the median of `reps` runs (default 5) of each product, the traces' relative difference
 * from torch's exact loop, and the speed ratios. */
#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/mlp_source.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static const struct tpv_tensor *st_find(void *ctx, const char *name)
{
    return tpv_tensor_file_find(ctx, name);
}

static void die(const char *what, const struct tpv_err *err)
{
    fprintf(stderr, "bench_mlp: %s: %s %s\n", what, err->field, err->message);
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [reps]   (DIR from bench/bench_mlp_torch.py)\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (reps < 1 || reps > 100)
        reps = 5;
    char path[1024];
    struct tpv_err err;
    snprintf(path, sizeof path, "%s/spec.json", dir);
    json_t *spec = json_load_file(path, 0, NULL);
    if (!spec) {
        fprintf(stderr, "bench_mlp: cannot read %s\n", path);
        return 1;
    }
    struct tpv_tensor_file *wf, *xf;
    snprintf(path, sizeof path, "%s/weights.safetensors", dir);
    if (tpv_tensor_file_open(&wf, path, &err))
        die(path, &err);
    snprintf(path, sizeof path, "%s/x.npy", dir);
    if (tpv_tensor_file_open(&xf, path, &err))
        die(path, &err);
    struct tpv_mlp *m;
    if (tpv_mlp_bind(&m, spec, st_find, wf, &err))
        die("bind", &err);
    const struct tpv_tensor *x = tpv_tensor_file_at(xf, 0);
    struct tpv_jsrc *s;
    if (tpv_mlp_source_open(&s, m, x, &err))
        die("source", &err);
    const uint64_t n = s->n, K = s->K, p = s->p;
    const struct tpv_layout *lo = &s->layout;
    printf("model: d=%llu, %zu linear layers, K=%llu, p=%llu; n=%llu; BLAS threads %d; "
           "scratch %.1f MiB\n", (unsigned long long)m->d, m->L, (unsigned long long)K,
           (unsigned long long)p, (unsigned long long)n, openblas_get_num_threads(),
           (double)s->ops->scratch_bytes(s) / 1048576.0);

    double *diag = malloc(p * sizeof *diag), t[100];
    double *traces = calloc(lo->nblocks, sizeof *traces);
    for (int r = 0; r < reps; r++) {
        memset(diag, 0, p * sizeof *diag);
        double t0 = now();
        if (s->ops->sqdiag(s, diag, NULL, &err))
            die("sqdiag", &err);
        memset(traces, 0, lo->nblocks * sizeof *traces);
        for (size_t b = 0; b < lo->nblocks; b++)
            for (uint64_t j = 0; j < lo->blocks[b].count; j++)
                traces[b] += diag[lo->blocks[b].offset + j];
        t[r] = now() - t0;
    }
    const double t_exact = median(t, reps);
    printf("tpvd exact block traces (sqdiag, all %llu outputs): %8.4f s\n", (unsigned long long)K,
           t_exact);

    double *xd = malloc(n * m->d * sizeof *xd), *fo = malloc(n * K * sizeof *fo);
    tpv_mlp_read_inputs(m, x, 0, n, xd);
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        tpv_mlp_forward(m, xd, n, fo);
        t[r] = now() - t0;
    }
    printf("  forward:                                 %8.4f s\n", median(t, reps));
    double *R = malloc(n * K * sizeof *R), *pd = calloc(p, sizeof *pd);
    uint64_t seed = 1;
    for (uint64_t i = 0; i < n * K; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        R[i] = (seed >> 63) ? 1.0 : -1.0;
    }
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        s->ops->sqdiag_projected(s, R, pd, NULL, NULL, &err);
        t[r] = now() - t0;
    }
    printf("  sqdiag_projected (1 Rademacher probe):   %8.4f s\n", median(t, reps));
    double *v = malloc(p * sizeof *v), *jv = malloc(n * K * sizeof *jv);
    for (uint64_t j = 0; j < p; j++)
        v[j] = (double)(j % 7) - 3.0;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        s->ops->jvp(s, v, jv, NULL, &err);
        t[r] = now() - t0;
    }
    printf("  jvp:                                     %8.4f s\n", median(t, reps));
    struct tpv_tensor sub = *x;
    sub.shape[0] = n < 200 ? n : 200;
    sub.numel = sub.shape[0] * m->d;
    struct tpv_jsrc *ss;
    if (tpv_mlp_source_open(&ss, m, &sub, &err))
        die("source", &err);
    double *G = malloc(sub.shape[0] * K * sub.shape[0] * K * sizeof *G);
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        ss->ops->gram(ss, ss, G, NULL, &err);
        t[r] = now() - t0;
    }
    printf("  gram (%llu x %llu, first %llu samples):   %8.4f s\n",
           (unsigned long long)(sub.shape[0] * K), (unsigned long long)(sub.shape[0] * K),
           (unsigned long long)sub.shape[0], median(t, reps));

    printf("block traces (sums over samples):\n");
    for (size_t b = 0; b < lo->nblocks; b++)
        printf("  %-14s %.10e\n", lo->blocks[b].name, traces[b]);

    snprintf(path, sizeof path, "%s/torch_results.json", dir);
    json_t *tr = json_load_file(path, 0, NULL);
    if (tr) {
        printf("PyTorch %s, %lld thread(s):\n", json_string_value(json_object_get(tr, "torch")),
               json_integer_value(json_object_get(tr, "threads")));
        static const char *methods[] = { "loop", "vmap", "hutch200" };
        for (size_t k = 0; k < 3; k++) {
            const json_t *mres = json_object_get(tr, methods[k]);
            if (!mres)
                continue;
            double secs = json_number_value(json_object_get(mres, "seconds"));
            const json_t *tt = json_object_get(mres, "traces");
            double maxrel = 0;
            for (size_t b = 0; b < lo->nblocks && b < json_array_size(tt); b++) {
                double ref = json_number_value(json_array_get(tt, b));
                maxrel = fmax(maxrel, fabs(traces[b] - ref) / fabs(ref));
            }
            printf("  %-9s %9.3f s   tpvd is %7.1fx faster   max rel diff of traces %.2e\n",
                   methods[k], secs, secs / t_exact, maxrel);
        }
        json_decref(tr);
    }
    free(G), free(v), free(jv), free(R), free(pd), free(xd), free(fo), free(diag), free(traces);
    tpv_jsrc_free(ss);
    tpv_jsrc_free(s);
    tpv_mlp_free(m);
    tpv_tensor_file_close(wf);
    tpv_tensor_file_close(xf);
    json_decref(spec);
    return 0;
}
