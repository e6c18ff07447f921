/* bench_empirical.c: the nonlinear check (core/empirical.h) on the CIFAR ResNet-20 of
 * bench/bench_empirical_torch.py: the isotropic empirical TPV (sigma 1e-3) with a fixed number of
 * draws, through the ONNX source's outputs_perturbed, against the same number of perturbed
 * forward passes in PyTorch on the same threads (same-run ratio, wall and CPU seconds), and the
 * two Monte-Carlo values with their standard errors.
 *
 *     /usr/bin/python3 bench/bench_empirical_torch.py DIR --n 256 --threads 2 --draws 100
 *     OPENBLAS_NUM_THREADS=2 build/bench/bench_empirical DIR [draws] */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/empirical.h"
#include "core/onnx_source.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what, const struct tpv_err *err)
{
    fprintf(stderr, "bench_empirical: %s: %s\n", what, err->message);
    exit(1);
}

static void *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_empirical: cannot open %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n)
        exit(1);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* The graph's parameters in column order (the weights a job hands the estimator). */
static double *gather(const struct tpv_onnx_model *m, const struct tpv_jsrc *s)
{
    double *w = malloc(s->p * sizeof *w);
    if (!w)
        exit(1);
    for (size_t j = 0; j < s->layout.nblocks; j++)
        memcpy(w + s->layout.blocks[j].offset, m->values[m->params[j]].t.data,
               s->layout.blocks[j].count * sizeof *w);
    return w;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [draws]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    long draws = argc > 2 ? atol(argv[2]) : 100;
    char path[1024];
    struct tpv_err err;
    size_t len;
    snprintf(path, sizeof path, "%s/resnet20.onnx", dir);
    void *buf = slurp(path, &len);
    struct tpv_onnx_model *m;
    if (tpv_onnx_model_load(&m, buf, len, NULL, 0, &err))
        die("load", &err);
    free(buf);
    struct tpv_tensor_file *xf;
    snprintf(path, sizeof path, "%s/x.npy", dir);
    if (tpv_tensor_file_open(&xf, path, &err))
        die(path, &err);
    struct tpv_jsrc *s;
    if (tpv_onnx_source_new(&s, m, tpv_tensor_file_at(xf, 0), &err))
        die("source", &err);
    double *w = gather(m, s);
    printf("resnet20: n=%llu K=%llu p=%llu, %ld draws\n", (unsigned long long)s->n,
           (unsigned long long)s->K, (unsigned long long)s->p, draws);

    struct tpv_noise nm = { .kind = TPV_NOISE_ISOTROPIC, .sigma = 1e-3,
                            .estimator = TPV_EST_EMPIRICAL, .max_samples = (unsigned long)draws,
                            .target_rel_error = 0, .seed = 0 };
    snprintf(nm.name, sizeof nm.name, "iso");
    struct tpv_empirical_result r;
    double t0 = now(), c0 = cpu();
    if (tpv_empirical_run(s, w, &nm, NULL, 0, &r, NULL, &err))
        die("empirical", &err);
    double t = now() - t0, c = cpu() - c0;

    snprintf(path, sizeof path, "%s/torch_empirical.json", dir);
    json_t *tr = json_load_file(path, 0, NULL);
    double tt = json_number_value(json_object_get(tr, "seconds"));
    double tc = json_number_value(json_object_get(tr, "cpu_seconds"));
    double tv = json_number_value(json_object_get(tr, "value"));
    double ts = json_number_value(json_object_get(tr, "stderr"));
    printf("empirical isotropic (sigma 1e-3): %.6g +- %.2g over %llu draws; torch %.6g +- %.2g "
           "(%.1f combined stderr apart)\n", r.value, r.stderr_value,
           (unsigned long long)r.samples, tv, ts,
           fabs(r.value - tv) / sqrt(r.stderr_value * r.stderr_value + ts * ts));
    printf("tpvd %.2f s wall, %.2f s cpu; torch %.2f s wall, %.2f s cpu -> tpvd / torch %.2fx "
           "(wall), %.2fx (cpu)\n", t, c, tt, tc, t / tt, c / tc);
    json_decref(tr);
    free(r.per_input);
    free(w);
    tpv_jsrc_free(s);
    tpv_tensor_file_close(xf);
    tpv_onnx_model_free(m);
    return 0;
}
