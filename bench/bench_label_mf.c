/* bench_label_mf.c: label TPV with ridge_rel 0.1 on a tanh MLP, matrix-free (CG + Hutchinson over
 * output projections, core/krylov.c) at a target relative error against the exact Gram +
 * eigendecomposition path and the blocked exact path (tiled Cholesky of G + rho I, forced by a
 * memory limit one byte under the eigendecomposition's plan) in the same run; also
 * sgd_curvature exact and matrix-free.  Prints the values, the matrix-free stderr, the agreement
 * in stderr units and the time ratios.
 *
 * Usage: bench_label_mf [n_fit (200)] [K (10)] [width (128)] [n_probe (100)] [target (0.01)]
 *        [exact (1: run the eigendecomposition path; 0: skip it)] [kinds (2: label and
 *        sgd_curvature; 1: label only)] [blocked (1: run the blocked path; 0: skip it)]
 *        bench_label_mf --onnx DIR [target (0.01)] [exact] [kinds] [blocked] [mf (1)]
 * The --onnx form reads DIR/cnn.onnx, DIR/fit.npy and DIR/probe.npy (bench/make_cnn_label.py
 * writes them: the CNN of the ONNX tests with K = 10).
 * Times are process CPU seconds (see now()) and wall seconds. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/estimate.h"
#include "core/mlp_source.h"
#include "core/onnx_model.h"
#include "core/onnx_source.h"
#include "core/tensor.h"
#include "tests/unit/mlp_testnet.h"

static double now(void)
{
    struct timespec ts;
    /* process CPU time: on a shared, overloaded machine (load 20+) wall time measures the other
     * tenants; run with OPENBLAS_NUM_THREADS=1 so that CPU time is the work done */
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double wall_secs; /* of the last run() */

/* blocked: run exact one byte under the eigendecomposition's memory plan (the blocked path). */
static int run(const struct tpv_jsrc *fit, const struct tpv_jsrc *probe, enum tpv_estimator est,
               enum tpv_noise_kind kind, double target, bool blocked, double *value, double *se,
               double *secs, uint64_t *samples, json_t **details)
{
    struct tpv_noise nm;
    memset(&nm, 0, sizeof nm);
    snprintf(nm.name, sizeof nm.name, "m");
    nm.kind = kind;
    nm.sigma = 1;
    nm.ridge_rel = kind == TPV_NOISE_LABEL ? 0.1 : 0;
    nm.rcond = 1e-10;
    nm.lr = 0.1;
    nm.batch_size = 32;
    nm.estimator = est;
    nm.target_rel_error = target;
    nm.max_samples = 100000;
    nm.seed = 1;
    struct tpv_est_inputs in = { .fit = fit, .probe = probe, .models = &nm, .nmodels = 1 };
    struct tpv_run_options opts = { 0, 0 };
    struct tpv_score *sc;
    size_t ns;
    json_t *st;
    struct tpv_err err;
    if (blocked) {
        uint64_t need;
        if (tpv_estimate_plan(&in, &opts, &need, &err) != TPV_OK) {
            fprintf(stderr, "bench_label_mf: %s\n", err.message);
            return 1;
        }
        opts.max_memory = need - 1;
    }
    double t0 = now(), w0 = wall();
    if (tpv_estimate_scores(&in, &opts, &sc, &ns, &st, NULL, &err) != TPV_OK) {
        fprintf(stderr, "bench_label_mf: %s\n", err.message);
        return 1;
    }
    *secs = now() - t0;
    wall_secs = wall() - w0;
    *value = sc[1].value;
    *se = sc[1].stderr_value;
    *samples = sc[1].samples;
    *details = json_incref(sc[1].details);
    tpv_scores_free(sc, ns);
    json_decref(st);
    return 0;
}

static void *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* The ONNX CNN's fit and probe sources (bench/make_cnn_label.py). */
struct onnx_sets {
    struct tpv_onnx_model *m;
    struct tpv_tensor_file *ff, *fp;
};

static int open_onnx(const char *dir, struct onnx_sets *o, struct tpv_jsrc **fit,
                     struct tpv_jsrc **probe)
{
    char path[1024];
    size_t len;
    struct tpv_err err;
    snprintf(path, sizeof path, "%s/cnn.onnx", dir);
    void *buf = slurp(path, &len);
    if (!buf || tpv_onnx_model_load(&o->m, buf, len, NULL, 0, &err)) {
        fprintf(stderr, "bench_label_mf: cannot load %s\n", path);
        free(buf);
        return 1;
    }
    free(buf);
    snprintf(path, sizeof path, "%s/fit.npy", dir);
    if (tpv_tensor_file_open(&o->ff, path, &err) ||
        tpv_onnx_source_new(fit, o->m, tpv_tensor_file_at(o->ff, 0), &err))
        return fprintf(stderr, "bench_label_mf: %s: %s\n", path, err.message), 1;
    snprintf(path, sizeof path, "%s/probe.npy", dir);
    if (tpv_tensor_file_open(&o->fp, path, &err) ||
        tpv_onnx_source_new(probe, o->m, tpv_tensor_file_at(o->fp, 0), &err))
        return fprintf(stderr, "bench_label_mf: %s: %s\n", path, err.message), 1;
    printf("ONNX CNN %s: p = %llu, K = %llu, n_fit = %llu (nK = %llu), n_probe = %llu\n", dir,
           (unsigned long long)(*fit)->p, (unsigned long long)(*fit)->K,
           (unsigned long long)(*fit)->n, (unsigned long long)((*fit)->n * (*fit)->K),
           (unsigned long long)(*probe)->n);
    return 0;
}

/* The three paths on one noise kind, printed with their ratios. */
static int bench_kind(const struct tpv_jsrc *fit, const struct tpv_jsrc *probe,
                      enum tpv_noise_kind kind, double target, int exact, int blocked, int mf)
{
    double ve = NAN, se_e, te = NAN, we = NAN, vm = NAN, sm = NAN, tm = NAN, wm = NAN, vb = NAN,
           se_b, tb = NAN, wb = NAN;
    uint64_t s_e, s_m = 0, s_b;
    json_t *de = NULL, *dm = NULL, *db = NULL;
    const char *name = tpv_noise_kind_name(kind);
    if (exact) {
        if (run(fit, probe, TPV_EST_EXACT, kind, target, false, &ve, &se_e, &te, &s_e, &de))
            return 1;
        we = wall_secs;
        printf("%s probe: exact (eigen) %.10g in %.2f cpu-s, %.2f wall-s\n", name, ve, te, we);
    }
    if (blocked && kind == TPV_NOISE_LABEL) {
        if (run(fit, probe, TPV_EST_EXACT, kind, target, true, &vb, &se_b, &tb, &s_b, &db))
            return 1;
        wb = wall_secs;
        printf("%s probe: blocked exact (%s) %.10g in %.2f cpu-s, %.2f wall-s; eigen / blocked = "
               "%.2fx, |blocked - eigen| / eigen = %.2g\n", name,
               json_string_value(json_object_get(db, "path")), vb, tb, wb, te / tb,
               fabs(vb - ve) / fabs(ve));
    }
    if (mf) {
        if (run(fit, probe, TPV_EST_HUTCHINSON, kind, target, false, &vm, &sm, &tm, &s_m, &dm))
            return 1;
        wm = wall_secs;
        json_t *pr = json_object_get(dm, "preconditioner_rank");
        printf("%s probe: matrix-free %.6g +- %.2g (%.2f %%, %llu samples, %lld products, CG max "
               "%lld it, total %lld, preconditioner rank %lld) in %.2f cpu-s, %.2f wall-s\n",
               name, vm, sm, 100 * sm / vm, (unsigned long long)s_m,
               (long long)json_integer_value(json_object_get(dm, "gram_products")),
               (long long)json_integer_value(json_object_get(dm, "solver_iterations")),
               (long long)json_integer_value(json_object_get(dm, "solver_iterations_total")),
               pr ? (long long)json_integer_value(pr) : 0LL, tm, wm);
    }
    if (mf && exact)
        printf("%s probe: |mf - eigen| = %.2f stderr; eigen / mf = %.2fx cpu, %.2fx wall\n", name,
               fabs(vm - ve) / sm, te / tm, we / wm);
    if (mf && db)
        printf("%s probe: |mf - blocked| = %.2f stderr; blocked / mf = %.2fx cpu, %.2fx wall\n",
               name, fabs(vm - vb) / sm, tb / tm, wb / wm);
    json_decref(de);
    json_decref(db);
    json_decref(dm);
    return 0;
}

int main(int argc, char **argv)
{
    enum tpv_noise_kind kinds[2] = { TPV_NOISE_LABEL, TPV_NOISE_SGD_CURVATURE };
    if (argc > 2 && strcmp(argv[1], "--onnx") == 0) {
        double target = argc > 3 ? atof(argv[3]) : 0.01;
        int exact = argc > 4 ? atoi(argv[4]) : 1;
        int nkinds = argc > 5 && atoi(argv[5]) == 1 ? 1 : 2;
        int blocked = argc > 6 ? atoi(argv[6]) : 1;
        int mf = argc > 7 ? atoi(argv[7]) : 1;
        struct onnx_sets o = { 0 };
        struct tpv_jsrc *fit = NULL, *probe = NULL;
        int rc = open_onnx(argv[2], &o, &fit, &probe);
        for (int k = 0; !rc && k < nkinds; k++)
            rc = bench_kind(fit, probe, kinds[k], target, exact, blocked, mf);
        tpv_jsrc_free(fit);
        tpv_jsrc_free(probe);
        tpv_tensor_file_close(o.ff);
        tpv_tensor_file_close(o.fp);
        tpv_onnx_model_free(o.m);
        return rc;
    }
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 200;
    uint64_t K = argc > 2 ? strtoull(argv[2], NULL, 10) : 10;
    uint64_t w = argc > 3 ? strtoull(argv[3], NULL, 10) : 128;
    uint64_t m = argc > 4 ? strtoull(argv[4], NULL, 10) : 100;
    double target = argc > 5 ? atof(argv[5]) : 0.01;
    int exact = argc > 6 ? atoi(argv[6]) : 1;
    int nkinds = argc > 7 && atoi(argv[7]) == 1 ? 1 : 2;
    int blocked = argc > 8 ? atoi(argv[8]) : 1;
    enum { D = 32 };
    struct tnet net;
    tnet_init(&net, "[32]", 7);
    tnet_linear(&net, w, D, 1);
    tnet_layer(&net, "{\"type\":\"tanh\"}");
    tnet_linear(&net, w, w, 1);
    tnet_layer(&net, "{\"type\":\"tanh\"}");
    tnet_linear(&net, K, w, 1);
    struct tpv_mlp *mlp = tnet_bind(&net);
    double *xf = tnet_inputs(n, D, 8), *xp = tnet_inputs(m, D, 9);
    struct tpv_tensor tf = tnet_input_tensor(xf, n, mlp->input_rank, mlp->input_shape);
    struct tpv_tensor tp = tnet_input_tensor(xp, m, mlp->input_rank, mlp->input_shape);
    struct tpv_jsrc *fit, *probe;
    struct tpv_err err;
    if (!mlp || tpv_mlp_source_open(&fit, mlp, &tf, &err) ||
        tpv_mlp_source_open(&probe, mlp, &tp, &err)) {
        fprintf(stderr, "bench_label_mf: cannot open the MLP\n");
        return 1;
    }
    printf("MLP 32 -> %llu -> %llu -> %llu tanh, p = %llu, n_fit = %llu (nK = %llu), n_probe = %llu\n",
           (unsigned long long)w, (unsigned long long)w, (unsigned long long)K,
           (unsigned long long)fit->p, (unsigned long long)n, (unsigned long long)(n * K),
           (unsigned long long)m);
    int rc = 0;
    for (int k = 0; !rc && k < nkinds; k++)
        rc = bench_kind(fit, probe, kinds[k], target, exact, blocked, 1);
    tpv_jsrc_free(fit);
    tpv_jsrc_free(probe);
    tpv_mlp_free(mlp);
    tnet_free(&net);
    free(xf);
    free(xp);
    return rc;
}
