/* bench_onnx_ghost: the two exact forms of per-sample squared Conv weight-gradient norms
 * (core/onnx_ghost.h), im2col + GEMM and the ghost norm, on a small-spatial and a large-spatial
 * layer, against PyTorch doing the same (bench/bench_onnx_ghost_torch.py writes the layers, the
 * inputs, the adjoints and its times; see there and bench/RESULTS.md).
 *
 *     OPENBLAS_NUM_THREADS=2 build/bench/bench_onnx_ghost DIR [reps]
 *
 * Prints per layer: the flop rule's choice, best-of-reps seconds of each form, the ratio
 * ghost / im2col, the ratios to PyTorch's vmap(grad) and to its own factored forms, and that the
 * norms' checksums agree with PyTorch's. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/onnx_exec.h"
#include "core/onnx_ghost.h"
#include "core/tensor.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what, const struct tpv_err *err)
{
    fprintf(stderr, "bench_onnx_ghost: %s: %s\n", what, err ? err->message : "failed");
    exit(1);
}

static const struct tpv_tensor *npy(const char *dir, const char *layer, const char *what,
                                    struct tpv_tensor_file **f)
{
    char path[1024];
    struct tpv_err err;
    snprintf(path, sizeof path, "%s/%s.%s.npy", dir, layer, what);
    if (tpv_tensor_file_open(f, path, &err))
        die(path, &err);
    return tpv_tensor_file_at(*f, 0);
}

static struct tpv_onnx_model *load(const char *dir, const char *layer)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.onnx", dir, layer);
    FILE *f = fopen(path, "rb");
    if (!f)
        die(path, NULL);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n)
        die(path, NULL);
    fclose(f);
    struct tpv_onnx_model *m;
    struct tpv_err err;
    if (tpv_onnx_model_load(&m, buf, (size_t)n, NULL, 0, &err))
        die(path, &err);
    free(buf);
    return m;
}

static double torch_s(json_t *tr, const char *layer, const char *form, double *checksum)
{
    json_t *r = json_object_get(json_object_get(tr, layer), form);
    if (checksum)
        *checksum = json_number_value(json_object_get(r, "checksum"));
    return json_number_value(json_object_get(r, "seconds"));
}

static void bench_layer(const char *dir, const char *layer, int reps, json_t *tr)
{
    struct tpv_onnx_model *m = load(dir, layer);
    struct tpv_tensor_file *xf, *gf;
    const struct tpv_tensor *xt = npy(dir, layer, "x", &xf), *gt = npy(dir, layer, "gy", &gf);
    uint64_t n = xt->shape[0];
    struct tpv_onnx_tensor x = {.dtype = TPV_ONNX_F64, .rank = xt->rank, .numel = xt->numel};
    for (int i = 0; i < xt->rank; i++)
        x.shape[i] = (int64_t)xt->shape[i];
    x.data = malloc(xt->numel * sizeof(double));
    double *gy = malloc(gt->numel * sizeof *gy), *out[2];
    out[0] = malloc(n * sizeof(double));
    out[1] = malloc(n * sizeof(double));
    if (!x.data || !gy || !out[0] || !out[1])
        die("out of memory", NULL);
    tpv_tensor_read_f64(xt, 0, xt->numel, x.data);
    tpv_tensor_read_f64(gt, 0, gt->numel, gy);
    const struct tpv_onnx_node *nd = &m->nodes[0];
    const struct tpv_onnx_tensor *w = &m->values[nd->in[1]].t;
    double secs[2], sum[2];
    struct tpv_err err;
    for (int f = 0; f < 2; f++) {
        secs[f] = INFINITY;
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            if (tpv_onnx_conv_weight_sqnorms(nd, &x, w, gy, (enum tpv_onnx_sqnorm_form)f, out[f],
                                             &err))
                die(layer, &err);
            double t = now() - t0;
            secs[f] = t < secs[f] ? t : secs[f];
        }
        sum[f] = 0;
        for (uint64_t t = 0; t < n; t++)
            sum[f] += out[f][t];
    }
    double tsum, tv = torch_s(tr, layer, "vmap", &tsum), ti = torch_s(tr, layer, "im2col", NULL);
    double tg = torch_s(tr, layer, "ghost", NULL);
    enum tpv_onnx_sqnorm_form pick = tpv_onnx_conv_sqnorm_choose(nd, &x, w);
    printf("%s: C %lld -> %lld, %lldx%lld, n %llu; rule picks %s (flops im2col %.3g ghost %.3g)\n",
           layer, (long long)x.shape[1], (long long)w->shape[0], (long long)x.shape[2],
           (long long)x.shape[3], (unsigned long long)n, tpv_onnx_sqnorm_form_name(pick),
           tpv_onnx_conv_sqnorm_flops(nd, &x, w, TPV_ONNX_SQNORM_IM2COL),
           tpv_onnx_conv_sqnorm_flops(nd, &x, w, TPV_ONNX_SQNORM_GHOST));
    printf("  tpvd  im2col %.5f s  ghost %.5f s  ghost/im2col %.3f\n", secs[0], secs[1],
           secs[1] / secs[0]);
    printf("  torch vmap(grad) %.5f s  im2col %.5f s  ghost %.5f s\n", tv, ti, tg);
    printf("  tpvd chosen (%s) %.5f s: vs torch vmap %.1fx, vs torch's same form %.2fx, vs "
           "torch's best factored %.2fx\n", tpv_onnx_sqnorm_form_name(pick), secs[pick],
           tv / secs[pick], (pick ? tg : ti) / secs[pick], (ti < tg ? ti : tg) / secs[pick]);
    printf("  checksums: im2col %.12g ghost %.12g torch %.12g (rel %.1e)\n", sum[0], sum[1], tsum,
           fabs(sum[pick] - tsum) / fabs(tsum));
    free(x.data);
    free(gy);
    free(out[0]);
    free(out[1]);
    tpv_tensor_file_close(xf);
    tpv_tensor_file_close(gf);
    tpv_onnx_model_free(m);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_onnx_ghost DIR [reps]\n");
        return 2;
    }
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    char path[1024];
    snprintf(path, sizeof path, "%s/torch_results.json", argv[1]);
    json_error_t je;
    json_t *tr = json_load_file(path, 0, &je);
    if (!tr) {
        fprintf(stderr, "bench_onnx_ghost: %s: %s\n", path, je.text);
        return 1;
    }
    bench_layer(argv[1], "small", reps < 1 ? 1 : reps, tr);
    bench_layer(argv[1], "large", reps < 1 ? 1 : reps, tr);
    json_decref(tr);
    return 0;
}
