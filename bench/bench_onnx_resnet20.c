/* bench_onnx_resnet20.c: exact isotropic, 8-bit per-channel quantization and sgd traces of a
 * CIFAR ResNet-20 exported to ONNX, through the graph source (core/onnx_source.h), against PyTorch
 * on the same model and inputs (bench/bench_onnx_resnet20_torch.py writes them and its timings to
 * DIR).
 *
 *     /usr/bin/python3 bench/bench_onnx_resnet20_torch.py DIR --n 256 --threads 2
 *     OPENBLAS_NUM_THREADS=2 build/bench/bench_onnx_resnet20 DIR [ref_samples]
 *
 * Times one exact sqdiag (all three traces follow from it) on the batched per-sample path, and on
 * the reference path (one reverse pass per (sample, output)) over the first ref_samples samples
 * (default 4, extrapolated linearly to n); prints the traces' relative difference from torch's,
 * the same-run ratios against torch's vmap(jacrev) and the reference estimator to a 1 % standard
 * error, and achieved GFLOP/s: a batched forward pass (Conv flops by their products, as the
 * source's cost model counts them) and the whole sqdiag, against dgemm and sgemm of 512^3 on the
 * same threads. */
#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/linalg.h"
#include "core/onnx_ghost.h"
#include "core/onnx_plan.h"
#include "core/onnx_exec.h"
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
    fprintf(stderr, "bench_onnx_resnet20: %s: %s\n", what, err->message);
    exit(1);
}

static void *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_onnx_resnet20: cannot open %s\n", path);
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

/* Isotropic and 8-bit per-channel traces per sample from a squared diagonal. */
static void traces(const struct tpv_onnx_model *m, const struct tpv_jsrc *s, const double *diag,
                   double *iso, double *q)
{
    *iso = 0;
    *q = 0;
    for (size_t j = 0; j < s->layout.nblocks; j++) {
        const struct tpv_block *b = &s->layout.blocks[j];
        const double *w = m->values[m->params[j]].t.data;
        uint64_t rows = b->rank >= 2 ? b->shape[0] : 1, cols = b->count / rows;
        for (uint64_t r = 0; r < rows; r++) {
            double lo = w[r * cols], hi = lo, t = 0;
            for (uint64_t c = 0; c < cols; c++) {
                lo = fmin(lo, w[r * cols + c]);
                hi = fmax(hi, w[r * cols + c]);
                t += diag[b->offset + r * cols + c];
            }
            double delta = (hi - lo) / 255.0;
            *q += delta * delta / 12.0 * t;
            *iso += t;
        }
    }
    *iso /= (double)s->n;
    *q /= (double)s->n;
}

/* GFLOP/s of one 512^3 dgemm and sgemm (best of 3). */
static void gemm_rates(double *dg, double *sg)
{
    const int N = 512;
    double *a = malloc((size_t)N * N * sizeof *a), *c = malloc((size_t)N * N * sizeof *c);
    float *fa = malloc((size_t)N * N * sizeof *fa), *fc = malloc((size_t)N * N * sizeof *fc);
    if (!a || !c || !fa || !fc)
        exit(1);
    for (int i = 0; i < N * N; i++) {
        a[i] = (double)(i % 17) / 17.0;
        fa[i] = (float)a[i];
    }
    double best_d = 1e30, best_s = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = now();
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0, a, N, a, N, 0.0, c,
                    N);
        double t1 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, fa, N, fa, N, 0.0f,
                    fc, N);
        double t2 = now();
        best_d = fmin(best_d, t1 - t0);
        best_s = fmin(best_s, t2 - t1);
    }
    *dg = 2.0 * N * N * (double)N / best_d * 1e-9;
    *sg = 2.0 * N * N * (double)N / best_s * 1e-9;
    free(a);
    free(c);
    free(fa);
    free(fc);
}

/* Seconds of one batched forward pass of `b` samples; flops of Conv nodes into *conv. */
static double forward_time(const struct tpv_onnx_model *m, const struct tpv_tensor *x, int64_t b,
                           double *conv)
{
    struct tpv_err err;
    struct tpv_onnx_tensor in = {.dtype = TPV_ONNX_F64, .rank = x->rank};
    for (int i = 0; i < x->rank; i++)
        in.shape[i] = (int64_t)x->shape[i];
    in.shape[0] = b;
    struct tpv_onnx_plan *plan;
    struct tpv_onnx_exec *ex;
    if (tpv_onnx_plan_new(&plan, m, &in, &err) || tpv_onnx_exec_new(&ex, plan, &err))
        die("plan", &err);
    uint64_t per = x->numel / x->shape[0];
    double *xd = malloc((size_t)b * per * sizeof *xd);
    if (!xd)
        exit(1);
    tpv_tensor_read_f64(x, 0, (uint64_t)b * per, xd);
    *conv = 0;
    for (size_t i = 0; i < m->nnodes; i++) {
        const struct tpv_onnx_node *nd = &m->nodes[i];
        if (!plan->run[i] || strcmp(nd->op_type, "Conv") != 0)
            continue;
        const struct tpv_onnx_tensor *w = &plan->vals[nd->in[1]], *y = &plan->vals[nd->out[0]];
        *conv += 2.0 * (double)w->numel / (double)w->shape[0] * (double)y->numel;
    }
    printf("activations: %.2f MiB per sample\n", (double)plan->act_bytes / (double)b / 1048576.0);
    const double *xp = xd;
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = now();
        if (tpv_onnx_exec_forward(ex, &xp, &err))
            die("forward", &err);
        best = fmin(best, now() - t0);
    }
    free(xd);
    tpv_onnx_exec_free(ex);
    tpv_onnx_plan_free(plan);
    return best;
}

/* GFLOP/s of the shared path's per-sample weight-gradient kernel (tpv_onnx_conv_rows_grads, R
 * rows of one sample, as a reverse pass calls it) over every Conv node of the graph at its own
 * shapes, with float32 (`single`) or float64 products: flops 2 R M kk P per call, im2col and the
 * conversions included in the time (best of 3 sweeps over the nodes). */
static double rows_kernel_rate(const struct tpv_onnx_model *m, const struct tpv_tensor *x,
                               uint64_t R, bool single)
{
    struct tpv_err err;
    struct tpv_onnx_tensor in = {.dtype = TPV_ONNX_F64, .rank = x->rank};
    for (int i = 0; i < x->rank; i++)
        in.shape[i] = (int64_t)x->shape[i];
    in.shape[0] = 1;
    struct tpv_onnx_plan *plan;
    if (tpv_onnx_plan_new(&plan, m, &in, &err))
        die("plan", &err);
    struct tpv_onnx_scratch ws = {0};
    double flops = 0, best = 1e30;
    for (int sweep = 0; sweep < 3; sweep++) {
        double t = 0;
        flops = 0;
        for (size_t i = 0; i < m->nnodes; i++) {
            const struct tpv_onnx_node *nd = &m->nodes[i];
            if (!plan->run[i] || strcmp(nd->op_type, "Conv") != 0)
                continue;
            struct tpv_onnx_tensor xv = plan->vals[nd->in[0]];
            const struct tpv_onnx_tensor *w = &plan->vals[nd->in[1]], *y = &plan->vals[nd->out[0]];
            uint64_t ny = R * y->numel, nw = w->numel;
            double *xd = malloc(xv.numel * sizeof *xd), *gy = malloc(ny * sizeof *gy);
            double *G = malloc(R * nw * sizeof *G);
            if (!xd || !gy || !G)
                exit(1);
            memset(G, 0, R * nw * sizeof *G); /* its pages touched outside the timing */
            for (uint64_t k = 0; k < xv.numel; k++)
                xd[k] = (double)(k % 13) / 13.0 - 0.5;
            for (uint64_t k = 0; k < ny; k++)
                gy[k] = (double)(k % 7) / 7.0 - 0.5;
            xv.data = xd;
            double t0 = now();
            if (tpv_onnx_conv_rows_grads(nd, &xv, w, gy, R, G, nw, 0, UINT64_MAX, single, false,
                                         &ws, &err))
                die("rows_grads", &err);
            t += now() - t0;
            flops += 2.0 * (double)R * (double)nw * (double)(y->numel / (uint64_t)y->shape[1]);
            free(xd);
            free(gy);
            free(G);
        }
        best = fmin(best, t);
    }
    tpv_onnx_scratch_release(&ws);
    tpv_onnx_plan_free(plan);
    return flops / best * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [ref_samples]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    long nref = argc > 2 ? atol(argv[2]) : 4;
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
    const struct tpv_tensor *x = tpv_tensor_file_at(xf, 0);
    struct tpv_jsrc *s;
    if (tpv_onnx_source_new(&s, m, x, &err))
        die("source", &err);
    if (argc > 3) /* gradient-row budget in MiB (batch size of the batched path) */
        tpv_onnx_source_set_panel_bytes(s, (uint64_t)atol(argv[3]) << 20);
    const char *f64 = getenv("TPV_BENCH_FLOAT64");
    bool float64 = f64 && strcmp(f64, "1") == 0;
    tpv_onnx_source_set_float64(s, float64);
    printf("resnet20: n=%llu K=%llu p=%llu, %d threads, batched path %s, shared path %s, "
           "weight-gradient products in %s\n",
           (unsigned long long)s->n, (unsigned long long)s->K, (unsigned long long)s->p,
           tpv_linalg_threads(), tpv_onnx_source_batched(s) ? "on" : "OFF",
           tpv_onnx_source_rows(s) ? "on" : "OFF",
           float64 ? "float64 (TPV_BENCH_FLOAT64=1)" : "float32 for the float32 weights");

    double dg, sg;
    gemm_rates(&dg, &sg);
    int64_t bf = x->shape[0] < 32 ? (int64_t)x->shape[0] : 32;
    double conv_flops, t_fwd = forward_time(m, x, bf, &conv_flops);
    /* the Conv flops of the exact sqdiag: per sample one forward pass and K reverse passes of
     * two products each (input and weight adjoints; the first Conv's input adjoint skipped, so
     * this slightly overcounts) */
    double conv_sq = conv_flops / (double)bf * (double)s->n * (1.0 + 2.0 * (double)s->K);

    /* the kernels on one thread, as each of the shared path's threads runs them (BLAS inside
     * single-threaded), against 1-thread dgemm and sgemm */
    int blas = openblas_get_num_threads();
    openblas_set_num_threads(1);
    double dg1, sg1;
    gemm_rates(&dg1, &sg1);
    double rk32 = rows_kernel_rate(m, x, 2, true), rk64 = rows_kernel_rate(m, x, 2, false);
    openblas_set_num_threads(blas);

    double *diag = calloc(s->p, sizeof *diag);
    if (!diag)
        return 1;
    double t0 = now(), c0 = cpu();
    if (s->ops->sqdiag(s, diag, NULL, &err))
        die("sqdiag", &err);
    double t_exact = now() - t0, c_exact = cpu() - c0, iso, q;
    traces(m, s, diag, &iso, &q);
    double fl_sq, fl_pr;
    s->ops->costs(s, &fl_sq, &fl_pr);

    /* the reference path over the first nref samples, extrapolated */
    struct tpv_tensor sub = *x;
    if (nref > 0 && (uint64_t)nref < x->shape[0]) {
        sub.shape[0] = (uint64_t)nref;
        sub.numel = x->numel / x->shape[0] * (uint64_t)nref;
    }
    struct tpv_jsrc *sr;
    if (tpv_onnx_source_new(&sr, m, &sub, &err))
        die("source", &err);
    tpv_onnx_source_set_reference(sr, true);
    memset(diag, 0, s->p * sizeof *diag);
    t0 = now();
    c0 = cpu();
    if (sr->ops->sqdiag(sr, diag, NULL, &err))
        die("reference sqdiag", &err);
    double t_ref = (now() - t0) * (double)s->n / (double)sr->n;
    double c_ref = (cpu() - c0) * (double)s->n / (double)sr->n;

    snprintf(path, sizeof path, "%s/torch_results.json", dir);
    json_t *tr = json_load_file(path, 0, NULL);
    double t_vmap = json_real_value(json_object_get(tr, "vmap_seconds"));
    double t_hutch = json_real_value(json_object_get(tr, "hutch_seconds_to_1pct"));
    double c_vmap = json_real_value(json_object_get(tr, "vmap_cpu_seconds"));
    double c_hutch = json_real_value(json_object_get(tr, "hutch_cpu_seconds_to_1pct"));
    double iso_t = json_real_value(json_object_get(tr, "iso"));
    double q_t = json_real_value(json_object_get(tr, "qpc8"));
    const char *path_name = tpv_onnx_source_rows(s)      ? "shared"
                            : tpv_onnx_source_batched(s) ? "batched"
                                                         : "reference";
    printf("exact sqdiag (iso + per-channel q8 + sgd): %.2f s default (%s) path, %.2f s reference "
           "path (%ld samples x %.0f), ratio %.2fx\n",
           t_exact, path_name, t_ref, (long)sr->n, (double)s->n / (double)sr->n, t_ref / t_exact);
    printf("  cpu seconds: %.2f default (%s) path, %.2f reference path\n", c_exact, path_name,
           c_ref);
    if (json_real_value(json_object_get(tr, "n")) == (double)s->n ||
        json_integer_value(json_object_get(tr, "n")) == (json_int_t)s->n)
        printf("traces: iso %.10g (torch %.10g, rel %.2g)  qpc8 %.10g (torch %.10g, rel %.2g)\n",
               iso, iso_t, fabs(iso - iso_t) / fabs(iso_t), q, q_t, fabs(q - q_t) / fabs(q_t));
    else
        printf("traces: iso %.10g  qpc8 %.10g (torch's are of other inputs, not compared)\n", iso,
               q);
    /* torch measured at another n (a quicker run): vmap is linear in n; the estimator's draws
     * to 1 % come from the variance of one draw, which does not grow with n, so its time to 1 %
     * is taken as measured */
    double n_t = json_real_value(json_object_get(tr, "n"));
    if (!(n_t > 0))
        n_t = json_integer_value(json_object_get(tr, "n"));
    double scale = n_t > 0 ? (double)s->n / n_t : 1.0;
    if (scale != 1.0) {
        printf("torch measured at n = %.0f: vmap scaled by %.2f (linear in n), the estimator's "
               "time to 1 %% s.e. as measured (its draws do not grow with n)\n",
               n_t, scale);
        t_vmap *= scale;
        c_vmap *= scale;
    }
    printf("torch vmap(jacrev) exact: %.2f s wall, %.2f s cpu -> tpvd %.2fx (wall), %.2fx (cpu)\n",
           t_vmap, c_vmap, t_vmap / t_exact, c_vmap / c_exact);
    printf("reference estimator to 1%% s.e.: %.2f s cpu -> tpvd %.2fx (cpu)\n", c_hutch,
           c_hutch / c_exact);
    double c_hutch32 = json_real_value(json_object_get(tr, "hutch_float32_cpu_seconds_to_1pct"));
    if (c_hutch32 > 0)
        printf("reference estimator to 1%% s.e., float32 model (as the reference code runs): "
               "%.2f s cpu -> tpvd %.2fx (cpu)\n",
               c_hutch32, c_hutch32 / c_exact);
    /* The reference code's QuantizationTPV and SgdTPV each run their own estimate of Tr H_eff
     * (and an isotropic score is a third call); the ratios above give it one shared set of draws,
     * the best a user of it could write. */
    if (c_hutch32 > 0)
        printf("  the reference as written (one estimate per noise model, 3 here, float32): "
               "%.2f s cpu -> tpvd %.2fx (cpu)\n",
               3 * c_hutch32, 3 * c_hutch32 / c_exact);
    /* The exact traces take n K reverse passes (one per sample and output), the estimator one per
     * draw: the ratio above is bounded by (its draws / n K) times the per-pass cost ratio. */
    double draws = json_real_value(json_object_get(tr, "hutch_draws_for_1pct"));
    if (draws > 0)
        printf("per reverse pass: tpvd %.2f ms cpu (%llu passes), the estimator %.2f ms cpu per "
               "draw (%.0f draws) -> %.1fx\n",
               1e3 * c_exact / (double)(s->n * s->K), (unsigned long long)(s->n * s->K),
               1e3 * c_hutch / draws, draws, (c_hutch / draws) / (c_exact / (double)(s->n * s->K)));
    printf("reference estimator to 1%% s.e.: %.2f s (%.0f draws) -> tpvd %.2fx faster\n",
           t_hutch, json_real_value(json_object_get(tr, "hutch_draws_for_1pct")),
           t_hutch / t_exact);
    printf("GFLOP/s: dgemm 512^3 %.2f, sgemm 512^3 %.2f; batched forward Conv %.2f (%.0f%% of "
           "dgemm, %.0f%% of sgemm); exact sqdiag by the cost model %.2f\n",
           dg, sg, conv_flops / t_fwd * 1e-9, 100 * conv_flops / t_fwd * 1e-9 / dg,
           100 * conv_flops / t_fwd * 1e-9 / sg, fl_sq / t_exact * 1e-9);
    printf("GFLOP/s of the exact sqdiag's Conv work over its whole wall time (a lower bound on "
           "its Conv kernels): %.2f (%.0f%% of dgemm, %.0f%% of sgemm)\n",
           conv_sq / t_exact * 1e-9, 100 * conv_sq / t_exact * 1e-9 / dg,
           100 * conv_sq / t_exact * 1e-9 / sg);
    printf("per-sample weight-gradient kernel (2 rows, every Conv at its shapes, 1 thread): "
           "float32 products %.2f GFLOP/s (%.0f%% of sgemm 512^3 %.2f), float64 %.2f (%.0f%% of "
           "dgemm 512^3 %.2f)\n",
           rk32, 100 * rk32 / sg1, sg1, rk64, 100 * rk64 / dg1, dg1);
    json_decref(tr);
    free(diag);
    tpv_jsrc_free(sr);
    tpv_jsrc_free(s);
    tpv_tensor_file_close(xf);
    tpv_onnx_model_free(m);
    return 0;
}
