/* test_onnx_node.c: the forward pass of every supported operator against the ONNX conformance
 * data that Debian's libonnx-testdata ships (/usr/share/libonnx-testdata/data; TPV_ONNX_TESTDATA
 * overrides it).
 *
 * Every node test whose opset is 13-17 and whose operators are all supported is run: model.onnx
 * is loaded with tpv_onnx_model_parse, the test_data_set_0 inputs are read as TensorProtos,
 * the graph is planned and run, and every output is compared with output_k.pb within a
 * per-precision tolerance.  The pytorch-converted tests (opset 6) are run for the operators whose
 * semantics have not changed since.  A supported test that fails is a failure unless it is in
 * `skips` below with the reason.  Every test run or skipped is printed with the reason, and at
 * least MIN_RUN must run, so the test cannot pass by skipping everything.  The suite runs at 1, 2
 * and 3 job threads with every loop split however small; above 1 thread every forward pass must
 * also give the 1-thread outputs bit for bit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "core/linalg.h"
#include "core/onnx_exec.h"
#include "core/onnx_ops.h"
#include "onnx.pb-c.h"
#include "tests/support/onnx_check.h"

#define DEFAULT_DIR "/usr/share/libonnx-testdata/data"
#define MIN_RUN 150
#define MAX_IO 16

/* Tests of supported operators that we do not run (glob patterns), and why.  Nothing numerical
 * is here: each is a type or mode outside DESIGN.md section 4. */
static const struct {
    const char *pattern;
    const char *why;
} skips[] = {
    {"test_batchnorm_*_training_mode", "training mode (batch statistics) is not supported"},
    {"test_dropout_default_mask*", "the mask output (bool) is not supported"},
    {"test_training_dropout*", "training mode is not supported"},
    {"test_maxpool_with_argmax_*", "the Indices output is not supported"},
    {"test_cast*_BFLOAT16_to_FLOAT*", "NaN/inf test values (tensors must be finite)"},
    {"test_cast*_FLOAT_to_BFLOAT16*", "NaN/inf test values (tensors must be finite)"},
    {"test_cast*STRING*", "string tensors"},
    {"test_clip_default_int8_*", "integer Clip (float only)"},
    {"test_pow_types_int*", "integer Pow (float only)"},
    {"test_pow_types_float", "integer Pow (float only)"},
    {"test_maxpool_2d_uint8", "integer MaxPool (float only)"},
    {"test_operator_sqrt", "NaN/inf test values (tensors must be finite)"},
    {"test_pow_types_float32_uint*", "unsigned 32/64-bit tensors"},
    {"test_edge_pad", "Pad modes other than constant"},
    {"test_reflect_pad", "Pad modes other than constant"},
    {"test_identity_opt", "optional types"},
    {"test_identity_sequence", "sequence types"},
    {"test_*3d*", "3-D convolutions and pools (1-D and 2-D are supported)"},
    {"test_*3D*", "3-D convolutions and pools (1-D and 2-D are supported)"},
    {"test_scatternd_add", "ScatterND reductions (only 'none' is supported)"},
    {"test_scatternd_multiply", "ScatterND reductions (only 'none' is supported)"},
    {"test_range_float_type_positive_delta", "a Range of float graph inputs (its length is a "
                                             "shape: the bounds must be known at load)"},
    {"test_mod_uint32", "unsigned 32/64-bit tensors"},
    {"test_mod_uint64", "unsigned 32/64-bit tensors"},
    {"test_einsum_batch_diagonal", "an ellipsis in an Einsum equation (not supported)"},
};

/* Tests at opsets 6-12 (all of pytorch-converted, part of node) run when every operator is one
 * whose semantics there are those we implement. */
static const char *const stable_ops[] = {
    "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "LeakyRelu", "Sigmoid",
    "Tanh", "Softplus", "Elu", "MatMul", "Transpose", "Reshape", "Flatten", "Identity",
    "BatchNormalization", "Gemm", "Concat", "Constant", "Sqrt", "Neg", "Exp", "Abs",
    /* one version each up to opset 17: Einsum 12, ConstantOfShape 9, Range 11, Not 1, And, Or
     * and Xor 7 (NumPy broadcasting) */
    "Einsum", "ConstantOfShape", "Range", "Not", "And", "Or", "Xor",
};

static const char *const bcast_ops[] = {"Add", "Sub", "Mul", "Div", "Pow"};

struct tally {
    int run, skipped, failed;
};

static const char *skip_reason(const char *name)
{
    for (size_t i = 0; i < sizeof skips / sizeof skips[0]; i++)
        if (fnmatch(skips[i].pattern, name, 0) == 0)
            return skips[i].why;
    return NULL;
}

/* Why the test cannot run (an unsupported operator or opset), or NULL. */
static const char *unsupported(const Onnx__ModelProto *mp, char *why, size_t cap)
{
    int64_t opset = -1;
    for (size_t i = 0; i < mp->n_opset_import; i++)
        if (!mp->opset_import[i]->domain || !mp->opset_import[i]->domain[0])
            opset = mp->opset_import[i]->version;
    if (opset > TPV_ONNX_OPSET_MAX || opset < 6) {
        snprintf(why, cap, "opset %lld", (long long)opset);
        return why;
    }
    /* older opsets: only operators whose semantics are unchanged (numpy broadcasting from 7) */
    bool old = opset < TPV_ONNX_OPSET_MIN;
    const Onnx__GraphProto *g = mp->graph;
    for (size_t i = 0; g && i < g->n_node; i++) {
        const char *op = g->node[i]->op_type;
        bool ok = strcmp(op, "Constant") == 0 || tpv_onnx_op_find(op) >= 0;
        if (ok && old) {
            ok = false;
            for (size_t k = 0; k < sizeof stable_ops / sizeof stable_ops[0]; k++)
                ok = ok || strcmp(op, stable_ops[k]) == 0;
            for (size_t k = 0; opset >= 7 && k < sizeof bcast_ops / sizeof bcast_ops[0]; k++)
                ok = ok || strcmp(op, bcast_ops[k]) == 0;
        }
        if (!ok) {
            snprintf(why, cap, "operator %s%s", op, old ? " (older opset semantics)" : "");
            return why;
        }
    }
    return NULL;
}

static double tol_abs(int elem_type)
{
    switch (elem_type) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE: return 1e-12;
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16:
    case ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16: return 1e-3;
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT: return 1e-5;
    default: return 0;
    }
}

static double tol_rel(int elem_type)
{
    switch (elem_type) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE: return 1e-10;
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16:
    case ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16: return 1e-2;
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT: return 1e-4;
    default: return 0;
    }
}

static int compare(const struct tpv_onnx_tensor *got, const struct tpv_onnx_tensor *want,
                   int elem_type, char *msg, size_t cap)
{
    if (got->rank != want->rank || memcmp(got->shape, want->shape,
                                          (size_t)got->rank * sizeof got->shape[0])) {
        snprintf(msg, cap, "shape differs (rank %d vs %d)", got->rank, want->rank);
        return -1;
    }
    if (got->dtype != want->dtype) {
        snprintf(msg, cap, "element type differs");
        return -1;
    }
    for (uint64_t i = 0; i < got->numel; i++) {
        if (got->dtype == TPV_ONNX_I64) {
            if (((int64_t *)got->data)[i] != ((int64_t *)want->data)[i]) {
                snprintf(msg, cap, "int element %llu differs", (unsigned long long)i);
                return -1;
            }
            continue;
        }
        double a = ((double *)got->data)[i], b = ((double *)want->data)[i];
        if (isnan(a) && isnan(b))
            continue;
        if (!(fabs(a - b) <= tol_abs(elem_type) + tol_rel(elem_type) * fabs(b)) &&
            !(a == b)) {
            snprintf(msg, cap, "element %llu: %.9g vs %.9g", (unsigned long long)i, a, b);
            return -1;
        }
    }
    return 0;
}

/* ---- derivatives: JVP against central differences, VJP against the JVP ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double urand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static int deriv_cases, deriv_checks;

#define FD_H 1e-6
#define FD_TOL 1e-6
#define DOT_TOL 1e-9

static int forward_outputs(const struct tpv_onnx_model *m, struct tpv_onnx_exec *ex,
                           const double *const *x, double **y, struct tpv_err *err)
{
    int rc = tpv_onnx_exec_forward(ex, x, err);
    for (size_t k = 0; !rc && k < m->noutputs; k++)
        if (y[k]) {
            const struct tpv_onnx_tensor *t = tpv_onnx_exec_value(ex, m->outputs[k]);
            memcpy(y[k], t->data, t->numel * sizeof(double));
        }
    return rc;
}

/* At a point moved off the test's exact values (kinks of Relu, Clip, MaxPool ties sit on
 * integers in the examples): the JVP along a random direction t of all float inputs against
 * (f(x + h t) - f(x - h t)) / 2h, and for each float output k and random u, <VJP(u), t> against
 * <u, JVP(t)>. */
static int check_derivatives(const struct tpv_onnx_model *m, struct tpv_onnx_exec *ex,
                             const struct tpv_onnx_tensor *ins, char *msg, size_t cap)
{
    struct tpv_err err;
    size_t nin = m->ninputs, nout = m->noutputs;
    double *x[MAX_IO] = {NULL}, *t[MAX_IO] = {NULL}, *xp[MAX_IO] = {NULL}, *jv[MAX_IO] = {NULL};
    double *yp[MAX_IO] = {NULL}, *ym[MAX_IO] = {NULL}, *u[MAX_IO] = {NULL};
    const double *seed_buf[4096] = {NULL};
    int rc = 0, nf = 0, ny = 0;
    if (m->nvalues > 4096)
        return 0;
    for (size_t k = 0; k < nin; k++) {
        if (ins[k].dtype != TPV_ONNX_F64)
            continue;
        uint64_t n = ins[k].numel;
        x[k] = malloc((n + 1) * sizeof(double));
        t[k] = malloc((n + 1) * sizeof(double));
        xp[k] = malloc((n + 1) * sizeof(double));
        for (uint64_t i = 0; i < n; i++) {
            double v = ((double *)ins[k].data)[i];
            x[k][i] = v != 0 ? v * (1.0 + 0.01 * urand()) : 0.001 + 0.0005 * urand();
            t[k][i] = urand();
        }
        seed_buf[m->inputs[k]] = t[k];
        nf++;
    }
    for (size_t k = 0; k < nout; k++) {
        const struct tpv_onnx_tensor *o = tpv_onnx_exec_value(ex, m->outputs[k]);
        size_t n = o->numel + 1;
        jv[k] = malloc(n * sizeof(double));
        yp[k] = malloc(n * sizeof(double));
        ym[k] = malloc(n * sizeof(double));
        u[k] = malloc(n * sizeof(double));
        for (size_t i = 0; i + 1 < n; i++)
            u[k][i] = urand();
    }
    if (nf == 0)
        goto done;
    const double *cx[MAX_IO];
    for (size_t k = 0; k < nin; k++)
        cx[k] = x[k] ? x[k] : ins[k].data;
    if (forward_outputs(m, ex, cx, yp, &err) || tpv_onnx_exec_jvp(ex, seed_buf, &err)) {
        snprintf(msg, cap, "jvp: %s", err.message);
        rc = -1;
        goto done;
    }
    for (size_t k = 0; k < nout; k++) {
        const double *tg = tpv_onnx_exec_tangent(ex, m->outputs[k]);
        if (tg) {
            memcpy(jv[k], tg, tpv_onnx_exec_value(ex, m->outputs[k])->numel * sizeof(double));
            ny++;
        } else {
            free(jv[k]);
            jv[k] = NULL;
        }
    }
    /* VJP dot tests */
    for (size_t k = 0; k < nout && rc == 0; k++) {
        if (!jv[k])
            continue;
        if (tpv_onnx_exec_vjp(ex, m->outputs[k], u[k], &err)) {
            snprintf(msg, cap, "vjp: %s", err.message);
            rc = -1;
            break;
        }
        double lhs = 0, rhs = 0, scale = 0;
        uint64_t no = tpv_onnx_exec_value(ex, m->outputs[k])->numel;
        for (uint64_t i = 0; i < no; i++) {
            rhs += u[k][i] * jv[k][i];
            scale += fabs(u[k][i] * jv[k][i]);
        }
        for (size_t j = 0; j < nin; j++) {
            const double *g = t[j] ? tpv_onnx_exec_grad(ex, m->inputs[j]) : NULL;
            for (uint64_t i = 0; g && i < ins[j].numel; i++)
                lhs += g[i] * t[j][i];
        }
        if (!(fabs(lhs - rhs) <= DOT_TOL * (scale + 1e-300))) {
            snprintf(msg, cap, "output %zu: <VJP(u), t> = %.12g but <u, JVP(t)> = %.12g", k, lhs,
                     rhs);
            rc = -1;
        }
    }
    /* central differences */
    for (int sign = 1; sign >= -1 && rc == 0; sign -= 2) {
        for (size_t k = 0; k < nin; k++)
            if (x[k]) {
                for (uint64_t i = 0; i < ins[k].numel; i++)
                    xp[k][i] = x[k][i] + sign * FD_H * t[k][i];
                cx[k] = xp[k];
            }
        if (forward_outputs(m, ex, cx, sign > 0 ? yp : ym, &err)) {
            snprintf(msg, cap, "fd: %s", err.message);
            rc = -1;
        }
    }
    for (size_t k = 0; k < nout && rc == 0; k++) {
        if (!jv[k])
            continue;
        uint64_t no = tpv_onnx_exec_value(ex, m->outputs[k])->numel;
        double emax = 0, jmax = 0;
        uint64_t at = 0;
        for (uint64_t i = 0; i < no; i++) {
            double fd = (yp[k][i] - ym[k][i]) / (2 * FD_H);
            if (fabs(fd - jv[k][i]) > emax) {
                emax = fabs(fd - jv[k][i]);
                at = i;
            }
            jmax = fmax(jmax, fabs(jv[k][i]));
        }
        if (!(emax <= FD_TOL * fmax(jmax, 1e-3))) {
            snprintf(msg, cap, "output %zu: JVP differs from central differences by %.3g at %llu "
                     "(max |JVP| %.3g)", k, emax, (unsigned long long)at, jmax);
            rc = -1;
        }
    }
    if (rc == 0 && ny > 0) {
        deriv_cases++;
        deriv_checks += ny;
    }
done:
    for (size_t k = 0; k < MAX_IO; k++) {
        free(x[k]);
        free(t[k]);
        free(xp[k]);
        free(jv[k]);
        free(yp[k]);
        free(ym[k]);
        free(u[k]);
    }
    return rc;
}

/* Runs one test directory; returns 0 on a match, -1 with msg set. */
static int g_threads = 1; /* the job threads of the running test (setup) */

/* Above 1 thread: the outputs of the forward pass just run must be those of 1 thread, bitwise. */
static int same_at_one_thread(const struct tpv_onnx_model *m, struct tpv_onnx_exec *ex,
                              const double *const *data, char *msg, size_t cap)
{
    if (g_threads == 1)
        return 0;
    struct tpv_err err;
    double *keep[MAX_IO] = {NULL};
    int rc = 0;
    for (size_t k = 0; k < m->noutputs && !rc; k++) {
        const struct tpv_onnx_tensor *o = tpv_onnx_exec_value(ex, m->outputs[k]);
        keep[k] = malloc(o->numel * 8 + 8);
        if (!keep[k])
            rc = -1;
        else
            memcpy(keep[k], o->data, o->numel * 8);
    }
    openblas_set_num_threads(1);
    if (!rc && tpv_onnx_exec_forward(ex, data, &err)) {
        snprintf(msg, cap, "forward at 1 thread: %s", err.message);
        rc = -1;
    }
    openblas_set_num_threads(g_threads);
    for (size_t k = 0; k < m->noutputs && !rc; k++) {
        const struct tpv_onnx_tensor *o = tpv_onnx_exec_value(ex, m->outputs[k]);
        if (memcmp(keep[k], o->data, o->numel * 8) != 0) {
            snprintf(msg, cap, "output %zu differs between %d threads and 1", k, g_threads);
            rc = -1;
        }
    }
    for (size_t k = 0; k < m->noutputs; k++)
        free(keep[k]);
    return rc;
}

static int run_case(const char *dir, const void *model, size_t mlen, char *msg, size_t cap)
{
    struct tpv_err err;
    struct tpv_onnx_model *m = NULL;
    struct tpv_onnx_plan *plan = NULL;
    struct tpv_onnx_exec *ex = NULL;
    struct tpv_onnx_tensor ins[MAX_IO], outs[MAX_IO];
    int out_types[MAX_IO];
    size_t nin = 0, nout = 0;
    int rc = -1;
    memset(ins, 0, sizeof ins);
    memset(outs, 0, sizeof outs);
    int orc = tpv_onnx_model_parse_opsets(&m, model, mlen, 6, TPV_ONNX_OPSET_MAX, &err);
    if (orc) {
        snprintf(msg, cap, "load: %s", err.message);
        goto out;
    }
    if (m->ninputs > MAX_IO || m->noutputs > MAX_IO) {
        snprintf(msg, cap, "too many inputs/outputs");
        goto out;
    }
    for (; nin < m->ninputs; nin++) {
        char path[1200];
        size_t len;
        snprintf(path, sizeof path, "%s/test_data_set_0/input_%zu.pb", dir, nin);
        void *buf = tpv_test_read_file(path, &len);
        if (!buf) {
            snprintf(msg, cap, "missing %.300s", path);
            goto out;
        }
        orc = tpv_onnx_tensor_parse(&ins[nin], NULL, buf, len, "input", &err);
        free(buf);
        if (orc) {
            snprintf(msg, cap, "input %zu: %s", nin, err.message);
            goto out;
        }
    }
    for (; nout < m->noutputs; nout++) {
        char path[1200];
        size_t len;
        snprintf(path, sizeof path, "%s/test_data_set_0/output_%zu.pb", dir, nout);
        void *buf = tpv_test_read_file(path, &len);
        if (!buf) {
            snprintf(msg, cap, "missing %.300s", path);
            goto out;
        }
        orc = tpv_onnx_tensor_parse(&outs[nout], &out_types[nout], buf, len, "output", &err);
        free(buf);
        if (orc) {
            snprintf(msg, cap, "output %zu: %s", nout, err.message);
            goto out;
        }
    }
    if (tpv_onnx_plan_new(&plan, m, ins, &err) || tpv_onnx_exec_new(&ex, plan, &err)) {
        snprintf(msg, cap, "plan: %s", err.message);
        goto out;
    }
    const double *data[MAX_IO];
    for (size_t k = 0; k < nin; k++)
        data[k] = ins[k].data;
    if (tpv_onnx_exec_forward(ex, data, &err)) {
        snprintf(msg, cap, "forward: %s", err.message);
        goto out;
    }
    rc = 0;
    for (size_t k = 0; k < nout && rc == 0; k++) {
        char what[200];
        rc = compare(tpv_onnx_exec_value(ex, m->outputs[k]), &outs[k], out_types[k], what,
                     sizeof what);
        if (rc)
            snprintf(msg, cap, "output %zu: %s", k, what);
    }
    if (rc == 0)
        rc = same_at_one_thread(m, ex, data, msg, cap);
    if (rc == 0)
        rc = check_derivatives(m, ex, ins, msg, cap);
out:
    for (size_t k = 0; k < nin; k++)
        free(ins[k].data);
    for (size_t k = 0; k < nout; k++)
        free(outs[k].data);
    tpv_onnx_exec_free(ex);
    tpv_onnx_plan_free(plan);
    tpv_onnx_model_free(m);
    return rc;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void run_suite(const char *suite, struct tally *t)
{
    const char *root = getenv("TPV_ONNX_TESTDATA") ? getenv("TPV_ONNX_TESTDATA") : DEFAULT_DIR;
    char base[512];
    snprintf(base, sizeof base, "%s/%s", root, suite);
    DIR *d = opendir(base);
    if (!d)
        fail_msg("%s: not found (install libonnx-testdata)", base);
    char *names[2048];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 2048)
        if (strncmp(e->d_name, "test_", 5) == 0)
            names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof names[0], cmp_names);
    for (size_t i = 0; i < n; i++) {
        char dir[1024], path[1100], why[200], msg[600];
        size_t len;
        snprintf(dir, sizeof dir, "%s/%s", base, names[i]);
        snprintf(path, sizeof path, "%s/model.onnx", dir);
        void *model = tpv_test_read_file(path, &len);
        Onnx__ModelProto *mp = model ? onnx__model_proto__unpack(NULL, len, model) : NULL;
        const char *reason = mp ? unsupported(mp, why, sizeof why) : "unreadable";
        if (!reason)
            reason = skip_reason(names[i]);
        if (mp)
            onnx__model_proto__free_unpacked(mp, NULL);
        if (reason) {
            printf("SKIP %s/%s: %s\n", suite, names[i], reason);
            t->skipped++;
        } else if (run_case(dir, model, len, msg, sizeof msg) == 0) {
            printf("PASS %s/%s\n", suite, names[i]);
            t->run++;
        } else {
            printf("FAIL %s/%s: %s\n", suite, names[i], msg);
            t->failed++;
        }
        free(model);
        free(names[i]);
    }
}

static int threads_setup(void **state)
{
    g_threads = *(int *)*state;
    openblas_set_num_threads(g_threads);
    tpv_split_set_min_flops(0);
    return 0;
}

static int threads_teardown(void **state)
{
    (void)state;
    g_threads = 1;
    openblas_set_num_threads(1);
    tpv_split_set_min_flops(TPV_SPLIT_MIN_FLOPS);
    return 0;
}

static void test_conformance(void **state)
{
    (void)state;
    deriv_cases = deriv_checks = 0;
    struct tally t = {0, 0, 0};
    run_suite("node", &t);
    run_suite("pytorch-converted", &t);
    run_suite("pytorch-operator", &t);
    printf("onnx conformance: %d passed, %d skipped, %d failed; derivatives checked on %d cases "
           "(%d outputs)\n",
           t.run, t.skipped, t.failed, deriv_cases, deriv_checks);
    assert_int_equal(t.failed, 0);
    assert_true(t.run >= MIN_RUN);
    assert_true(deriv_cases >= MIN_RUN - 30); /* cases with float inputs and outputs */
}

int main(void)
{
    static int threads[3] = { 1, 2, 3 };
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate_setup_teardown(test_conformance, threads_setup,
                                                 threads_teardown, &threads[0]),
        cmocka_unit_test_prestate_setup_teardown(test_conformance, threads_setup,
                                                 threads_teardown, &threads[1]),
        cmocka_unit_test_prestate_setup_teardown(test_conformance, threads_setup,
                                                 threads_teardown, &threads[2]),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
