/* onnx_sweep_check.c: the ONNX runtime against what tests/torch/onnx_sweep.py exported (issue 11,
 * "networks you have not seen"), through the entry points a job uses.  Per manifest line:
 *  - load: tpv_onnx_model_load with the default parameter rule (no metadata), which must find
 *    named_parameters() (a constant-folding export renames them: reported, traces skipped);
 *  - forward: the fit inputs as one batch (a fixed-batch-1 graph: one sample at a time) against
 *    torch's float64 output, max relative error;
 *  - derivatives: JVP against central differences and the VJP dot test, on one plan;
 *  - traces (small models, parameters found): tpv_candidate_check and tpv_candidate_score with
 *    every noise model of ref.json on the fit and probe splits against float64 autograd.
 * One line a case on stdout; exit status 1 when any case failed.
 *
 *     build/tests/tools/onnx_sweep_check DIR [MODEL ...] */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/noise.h"
#include "core/onnx_exec.h"
#include "core/score.h"
#include "core/tensor.h"
#include "tests/support/onnx_check.h"

static const char *dir;

static const char *path_of(char *buf, size_t cap, const char *model, const char *suffix)
{
    snprintf(buf, cap, "%s/%s.%s", dir, model, suffix);
    return buf;
}

/* "" when the default rule found exactly params.txt, else why not (in msg). */
static void check_params(const char *model, const struct tpv_onnx_model *m, char *msg,
                         size_t cap)
{
    char path[600];
    size_t len, want = 0;
    char *text = tpv_test_read_file(path_of(path, sizeof path, model, "params.txt"), &len);
    msg[0] = 0;
    if (!text) {
        snprintf(msg, cap, "no params.txt");
        return;
    }
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        long v = tpv_onnx_model_find(m, line);
        if ((v < 0 || !m->values[v].param) && !msg[0])
            snprintf(msg, cap, "parameter %s not found", line);
        want++;
    }
    if (!msg[0] && m->nparams != want)
        snprintf(msg, cap, "%zu parameters found, named_parameters() has %zu", m->nparams, want);
    free(text);
}

static int forward(const struct tpv_onnx_model *m, const struct tpv_tensor *x, const double *xd,
                   uint64_t first, uint64_t count, double *out, uint64_t K, char *msg, size_t cap)
{
    struct tpv_err err;
    struct tpv_onnx_plan *plan;
    struct tpv_onnx_exec *ex;
    if (tpv_onnx_exec_open(m, x, count, &plan, &ex, &err)) {
        snprintf(msg, cap, "plan: %s", err.message);
        return -1;
    }
    uint64_t per = x->numel / x->shape[0];
    const double *xp = xd + first * per;
    int rc = 0;
    if (tpv_onnx_exec_forward(ex, &xp, &err)) {
        snprintf(msg, cap, "forward: %s", err.message);
        rc = -1;
    } else {
        const struct tpv_onnx_tensor *y = tpv_onnx_exec_value(ex, m->outputs[0]);
        if (y->numel != count * K) {
            snprintf(msg, cap, "output has %llu values, torch %llu",
                     (unsigned long long)y->numel, (unsigned long long)(count * K));
            rc = -1;
        } else {
            memcpy(out, y->data, count * K * sizeof *out);
        }
    }
    tpv_onnx_exec_free(ex);
    tpv_onnx_plan_free(plan);
    return rc;
}

/* JVP (input and every parameter) against central differences at h, and the VJP dot test, on
 * the first `b` samples; *fd and *dot get the relative errors.  -1 with msg on an error. */
static int derivatives(struct tpv_onnx_model *m, const struct tpv_tensor *x, const double *xd,
                       uint64_t b, double *fd, double *dot, char *msg, size_t cap)
{
    struct tpv_err err;
    struct tpv_onnx_plan *plan;
    struct tpv_onnx_exec *ex;
    if (tpv_onnx_exec_open(m, x, b, &plan, &ex, &err)) {
        snprintf(msg, cap, "plan: %s", err.message);
        return -1;
    }
    /* SWEEP_FD_H: a smaller step for networks with millions of ReLU kinks (VGG-11 at 224: at
     * 1e-7 about one of them lies within h |t| of its crossing) */
    const double h = getenv("SWEEP_FD_H") ? atof(getenv("SWEEP_FD_H")) : 1e-7;
    struct tpv_test_derivs d;
    int rc = tpv_test_onnx_derivatives(m, ex, xd, x->numel / x->shape[0] * b, h, true, 11, &d,
                                       &err);
    if (rc) {
        snprintf(msg, cap, "derivatives: %s", err.message);
    } else {
        *dot = fabs(d.lhs - d.rhs) / d.scale;
        *fd = d.fd_jmax > 0 ? d.fd_emax / d.fd_jmax : d.fd_emax;
    }
    tpv_onnx_exec_free(ex);
    tpv_onnx_plan_free(plan);
    return rc ? -1 : 0;
}

struct blobs {
    char var[600], mask[600];
};

static const char *blob_path(void *ctx, const char *digest)
{
    struct blobs *b = ctx;
    if (strcmp(digest + 7, "1111111111111111111111111111111111111111111111111111111111111111") ==
        0)
        return b->var;
    return b->mask;
}

/* Every noise model of ref.json on both splits: *worst gets the largest relative error and
 * worst_name its model and split.  -1 with msg on an error. */
static int traces(const char *model, const char *onnx, double *worst, char *worst_name,
                  size_t wcap, char *msg, size_t cap)
{
    char path[600], fit[600], probe[600];
    json_error_t jerr;
    json_t *ref = json_load_file(path_of(path, sizeof path, model, "ref.json"), 0, &jerr);
    if (!ref) {
        snprintf(msg, cap, "ref.json: %s", jerr.text);
        return -1;
    }
    json_t *models = json_object_get(ref, "models"), *arr = json_array();
    const char *key;
    json_t *val;
    json_object_foreach(models, key, val) {
        json_t *o = json_deep_copy(val);
        json_object_set_new(o, "name", json_string(key));
        json_object_set_new(o, "estimator", json_string("exact"));
        json_array_append_new(arr, o);
    }
    char *text = json_dumps(arr, 0);
    json_decref(arr);
    struct tpv_noise *nm = NULL;
    size_t n = 0;
    struct tpv_err err;
    int rc = -1;
    struct tpv_score *sc = NULL;
    size_t ns = 0;
    json_t *stab = NULL;
    if (tpv_noise_list_load(text, &nm, &n, &err)) {
        snprintf(msg, cap, "noise models: %s", err.message);
        goto out;
    }
    struct blobs b;
    path_of(b.var, sizeof b.var, model, "variances.safetensors");
    path_of(b.mask, sizeof b.mask, model, "mask.safetensors");
    struct tpv_candidate_files c = {.source = TPV_SOURCE_ONNX, .onnx = onnx,
                                    .fit_inputs = path_of(fit, sizeof fit, model, "fit.npy"),
                                    .probe_inputs = path_of(probe, sizeof probe, model,
                                                            "probe.npy"),
                                    .blob_path = blob_path, .blob_ctx = &b};
    struct tpv_run_options opts = {0};
    uint64_t mem;
    if (tpv_candidate_check(&c, nm, n, &opts, &mem, &err) ||
        tpv_candidate_score(&c, nm, n, &opts, &sc, &ns, &stab, NULL, &err)) {
        snprintf(msg, cap, "score: %s%s%s", err.message, err.field[0] ? " field " : "",
                 err.field);
        goto out;
    }
    *worst = 0;
    for (size_t i = 0; i < ns; i++) {
        const char *split = tpv_split_name(sc[i].split);
        json_t *r = json_object_get(json_object_get(json_object_get(ref, "ref"), sc[i].noise),
                                    split);
        double want = json_number_value(r), e = fabs(sc[i].value - want) / fabs(want);
        if (getenv("SWEEP_VERBOSE"))
            printf("    %s %s %.12g vs %.12g: %.2g\n", sc[i].noise, split, sc[i].value, want, e);
        if (!(e <= *worst)) {
            *worst = e;
            snprintf(worst_name, wcap, "%s/%s", sc[i].noise, split);
        }
    }
    rc = ns == 2 * n ? 0 : -1;
    if (rc)
        snprintf(msg, cap, "%zu scores for %zu models", ns, n);
out:
    tpv_scores_free(sc, ns);
    json_decref(stab);
    free(nm);
    free(text);
    json_decref(ref);
    return rc;
}

static bool selected(const char *model, int argc, char **argv)
{
    if (argc <= 2)
        return true;
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], model) == 0)
            return true;
    return false;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One case; returns 0 when it passed (forward to 1e-6, derivatives to 1e-5, traces to 1e-6). */
static int check_case(const char *model, const char *variant, int batch1, int has_ref)
{
    char onnx[600], path[600], msg[1200] = "", pmsg[400];
    size_t len;
    struct tpv_err err;
    double t0 = now();
    snprintf(onnx, sizeof onnx, "%s/%s.%s.onnx", dir, model, variant);
    printf("%-22s %-7s ", model, variant);
    void *buf = tpv_test_read_file(onnx, &len);
    struct tpv_onnx_model *m = NULL;
    if (!buf || tpv_onnx_model_load(&m, buf, len, NULL, 0, &err)) {
        printf("LOAD FAIL: %s\n", buf ? err.message : "unreadable");
        free(buf);
        return 1;
    }
    free(buf);
    check_params(model, m, pmsg, sizeof pmsg);
    struct tpv_tensor_file *fx = NULL, *fy = NULL;
    int bad = 0;
    if (tpv_tensor_file_open(&fx, path_of(path, sizeof path, model, "fit.npy"), &err) ||
        tpv_tensor_file_open(&fy, path_of(path, sizeof path, model, "out.npy"), &err)) {
        printf("INPUT FAIL: %s\n", err.message);
        tpv_tensor_file_close(fx);
        tpv_onnx_model_free(m);
        return 1;
    }
    const struct tpv_tensor *x = tpv_tensor_file_at(fx, 0), *y = tpv_tensor_file_at(fy, 0);
    uint64_t n = x->shape[0], K = y->shape[1];
    double *xd = malloc(x->numel * sizeof *xd), *want = malloc(y->numel * sizeof *want);
    double *got = malloc(n * K * sizeof *got);
    tpv_tensor_read_f64(x, 0, x->numel, xd);
    tpv_tensor_read_f64(y, 0, y->numel, want);
    int rc = 0;
    for (uint64_t i = 0; !rc && i < (batch1 ? n : 1); i++)
        rc = batch1 ? forward(m, x, xd, i, 1, got + i * K, K, msg, sizeof msg)
                    : forward(m, x, xd, 0, n, got, K, msg, sizeof msg);
    if (rc) {
        printf("FORWARD FAIL: %s\n", msg);
        bad = 1;
        goto done;
    }
    double fe = tpv_test_max_relerr(got, want, n * K), fd = 0, dot = 0;
    printf("fwd %.1e ", fe);
    bad |= !(fe <= 1e-6);
    if (derivatives(m, x, xd, batch1 ? 1 : n, &fd, &dot, msg, sizeof msg)) {
        printf("DERIV FAIL: %s\n", msg);
        bad = 1;
        goto done;
    }
    printf("fd %.1e dot %.1e ", fd, dot);
    bad |= !(fd <= 1e-5) || !(dot <= 1e-9);
    if (pmsg[0]) {
        printf("params: %s ", pmsg);
    } else if (has_ref) {
        double worst = 0;
        char wname[160] = "";
        if (traces(model, onnx, &worst, wname, sizeof wname, msg, sizeof msg)) {
            printf("TRACES FAIL: %s\n", msg);
            bad = 1;
            goto done;
        }
        printf("traces %.1e (%s) ", worst, wname);
        bad |= !(worst <= 1e-6);
    }
    printf("[%zu nodes, %zu params, %.1f s]%s\n", m->nnodes, m->nparams, now() - t0,
           bad ? " BAD" : "");
done:
    fflush(stdout);
    free(xd);
    free(want);
    free(got);
    tpv_tensor_file_close(fx);
    tpv_tensor_file_close(fy);
    tpv_onnx_model_free(m);
    return bad;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [MODEL ...]\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    char path[600], model[128], variant[32];
    snprintf(path, sizeof path, "%s/manifest.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        return 2;
    }
    int batch1, has_ref, failed = 0;
    while (fscanf(f, "%127s %31s %d %d", model, variant, &batch1, &has_ref) == 4)
        if (selected(model, argc, argv))
            failed += check_case(model, variant, batch1, has_ref);
    fclose(f);
    printf("%d case(s) failed\n", failed);
    return failed ? 1 : 0;
}
