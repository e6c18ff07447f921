/* bench_mlp.c: exact per-tensor block traces of a sequential MLP through the structured MLP source
 * (core/mlp_source.c), against PyTorch on the same model and inputs (bench/bench_mlp_torch.py
 * writes them and its own timings to DIR).  Also times the other source products, each at 1 and
 * at 2 job threads in the same run (the runtime's loops and BLAS, core/linalg.h), and prints the
 * ratio.
 *
 *     /usr/bin/python3 bench/bench_mlp_torch.py DIR --threads 1
 *     OPENBLAS_NUM_THREADS=1 build/bench/bench_mlp DIR [reps]
 *
 * Prints the median of `reps` runs (default 5) of each product (1 and 2 threads alternate, so
 * both see the same machine load), wall and process CPU seconds, the 1-thread CPU time over the
 * calling thread's CPU time at 2 threads (its critical path, which a loaded machine's wall
 * clock hides: thread 0 runs its share and every serial part), the largest relative difference
 * between the two thread counts' results, the traces' relative difference from torch's exact
 * loop, and the speed ratios. */
#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/linalg.h"
#include "core/mlp_source.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double thread_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
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

/* The exact paths timed at 1 and 2 threads. */
enum { OP_SQDIAG, OP_SAMPLES, OP_PROJECTED, OP_GRAM, OP_JVP, OP_VJP, OP_OUTPUTS, NOPS };
static const char *const op_names[NOPS] = {
    "sqdiag (all K outputs)", "sqdiag_samples (+ per-sample traces)",
    "sqdiag_projected (1 probe, + totals)", "gram (first 200 samples)", "jvp", "vjp",
    "outputs (forward)",
};

struct bench_ctx {
    struct tpv_jsrc *s, *ss; /* all samples; the first 200 for the Gram */
    const struct tpv_mlp *m;
    const struct tpv_tensor *x;
    uint64_t nsub;
    double *res[2], *res2[2]; /* per thread count: the op's outputs (two of them for some) */
    double *v, *R;
    uint64_t len, len2;
};

static int bench_alloc(struct bench_ctx *b)
{
    const uint64_t n = b->s->n, K = b->s->K, p = b->s->p, g = b->nsub * K;
    b->len = p > g * g ? p : g * g;
    b->len = b->len > n * K ? b->len : n * K;
    b->len2 = n;
    for (int i = 0; i < 2; i++) {
        b->res[i] = malloc(b->len * sizeof(double));
        b->res2[i] = malloc(b->len2 * sizeof(double));
    }
    b->v = malloc(p * sizeof *b->v);
    b->R = malloc(n * K * sizeof *b->R);
    if (!b->res[0] || !b->res[1] || !b->res2[0] || !b->res2[1] || !b->v || !b->R)
        return -1;
    for (uint64_t j = 0; j < p; j++)
        b->v[j] = (double)(j % 7) - 3.0;
    uint64_t seed = 1;
    for (uint64_t i = 0; i < n * K; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        b->R[i] = (seed >> 63) ? 1.0 : -1.0;
    }
    return 0;
}

static void bench_free(struct bench_ctx *b)
{
    for (int i = 0; i < 2; i++)
        free(b->res[i]), free(b->res2[i]);
    free(b->v), free(b->R);
}

/* Runs op once into slot i; returns the lengths of its outputs. */
static void run_op(struct bench_ctx *b, int op, int i, uint64_t *l1, uint64_t *l2)
{
    const struct tpv_jsrc *s = b->s;
    const uint64_t n = s->n, K = s->K, p = s->p;
    double *o = b->res[i], *o2 = b->res2[i];
    const double *none[1] = { NULL };
    struct tpv_err err;
    int rc = 0;
    *l2 = 0;
    switch (op) {
    case OP_SQDIAG:
        memset(o, 0, p * sizeof *o);
        rc = s->ops->sqdiag(s, o, NULL, &err);
        *l1 = p;
        break;
    case OP_SAMPLES:
        memset(o, 0, p * sizeof *o);
        memset(o2, 0, n * sizeof *o2);
        rc = s->ops->sqdiag_samples(s, o, 1, none, o2, NULL, &err);
        *l1 = p, *l2 = n;
        break;
    case OP_PROJECTED:
        memset(o, 0, p * sizeof *o);
        rc = s->ops->sqdiag_projected(s, b->R, o, o2, NULL, &err);
        *l1 = p, *l2 = n;
        break;
    case OP_GRAM:
        rc = b->ss->ops->gram(b->ss, b->ss, o, NULL, &err);
        *l1 = b->nsub * K * b->nsub * K;
        break;
    case OP_JVP:
        rc = s->ops->jvp(s, b->v, o, NULL, &err);
        *l1 = n * K;
        break;
    case OP_VJP:
        rc = s->ops->vjp(s, b->R, o, NULL, &err);
        *l1 = p;
        break;
    case OP_OUTPUTS:
        rc = s->ops->outputs(s, o, NULL, &err);
        *l1 = n * K;
        break;
    }
    if (rc)
        die(op_names[op], &err);
}

/* max |a - b| / max |b|: normwise, so that entries near zero do not dominate. */
static double normwise_diff(const double *a, const double *b, uint64_t len)
{
    double d = 0, scale = 0;
    for (uint64_t i = 0; i < len; i++) {
        d = fmax(d, fabs(a[i] - b[i]));
        scale = fmax(scale, fabs(b[i]));
    }
    return scale > 0 ? d / scale : d;
}

static void bench_op(struct bench_ctx *b, int op, int reps)
{
    double wall[2][100], cpu[2][100], main_cpu[100];
    uint64_t l1 = 0, l2 = 0;
    for (int r = 0; r < reps; r++)
        for (int i = 0; i < 2; i++) {
            openblas_set_num_threads(i + 1);
            double w0 = now(), c0 = cpu_now(), m0 = thread_cpu_now();
            run_op(b, op, i, &l1, &l2);
            wall[i][r] = now() - w0;
            cpu[i][r] = cpu_now() - c0;
            if (i == 1)
                main_cpu[r] = thread_cpu_now() - m0;
        }
    double diff = normwise_diff(b->res[1], b->res[0], l1);
    if (l2)
        diff = fmax(diff, normwise_diff(b->res2[1], b->res2[0], l2));
    double w1 = median(wall[0], reps), w2 = median(wall[1], reps), c1 = median(cpu[0], reps);
    printf("  %-36s %8.4fs %8.4fs %8.4fs %8.4fs %6.2fx %6.2fx %9.1e\n", op_names[op], w1, w2, c1,
           median(cpu[1], reps), w1 / w2, c1 / median(main_cpu, reps), diff);
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
    const int preset = openblas_get_num_threads();
    const struct tpv_layout *lo = &s->layout;
    printf("model: d=%llu, %zu linear layers, K=%llu, p=%llu; n=%llu; BLAS threads %d; "
           "scratch %.1f MiB\n", (unsigned long long)m->d, m->L, (unsigned long long)K,
           (unsigned long long)p, (unsigned long long)n, openblas_get_num_threads(),
           (double)s->ops->scratch_bytes(s) / 1048576.0);

    double *diag = malloc(p * sizeof *diag);
    double *traces = calloc(lo->nblocks, sizeof *traces);
    memset(diag, 0, p * sizeof *diag);
    double t0 = now();
    if (s->ops->sqdiag(s, diag, NULL, &err))
        die("sqdiag", &err);
    for (size_t b = 0; b < lo->nblocks; b++)
        for (uint64_t j = 0; j < lo->blocks[b].count; j++)
            traces[b] += diag[lo->blocks[b].offset + j];
    const double t_exact = now() - t0;
    printf("tpvd exact block traces (sqdiag, all %llu outputs, 1 run at the preset threads): "
           "%8.4f s\n", (unsigned long long)K, t_exact);

    struct tpv_tensor sub = *x;
    sub.shape[0] = n < 200 ? n : 200;
    sub.numel = sub.shape[0] * m->d;
    struct tpv_jsrc *ss;
    if (tpv_mlp_source_open(&ss, m, &sub, &err))
        die("source", &err);
    struct bench_ctx bc = { s, ss, m, x, sub.shape[0] };
    if (bench_alloc(&bc))
        die("bench", &(struct tpv_err){ .message = "out of memory" });
    printf("exact paths at 1 and 2 job threads (median of %d, alternating).  ratio: 1-thread / "
           "2-thread wall time;\n  cpu ratio: 1-thread CPU / the calling thread's CPU at 2 "
           "threads (the critical path: what the ratio\n  is on two idle cores); max rel: "
           "normwise difference of the two results\n", reps);
    printf("  %-36s %9s %9s %9s %9s %7s %7s %9s\n", "", "wall 1", "wall 2", "cpu 1", "cpu 2",
           "ratio", "cpu", "max rel");
    for (int op = 0; op < NOPS; op++)
        bench_op(&bc, op, reps);
    bench_free(&bc);
    openblas_set_num_threads(preset);

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
    free(diag), free(traces);
    tpv_jsrc_free(ss);
    tpv_jsrc_free(s);
    tpv_mlp_free(m);
    tpv_tensor_file_close(wf);
    tpv_tensor_file_close(xf);
    json_decref(spec);
    return 0;
}
