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
 * least MIN_RUN must run, so the test cannot pass by skipping everything. */
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

#include "core/onnx_exec.h"
#include "core/onnx_ops.h"
#include "onnx.pb-c.h"

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
};

/* Tests at opsets 6-12 (all of pytorch-converted, part of node) run when every operator is one
 * whose semantics there are those we implement. */
static const char *const stable_ops[] = {
    "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "LeakyRelu", "Sigmoid",
    "Tanh", "Softplus", "Elu", "MatMul", "Transpose", "Reshape", "Flatten", "Identity",
    "BatchNormalization", "Gemm", "Concat", "Constant", "Sqrt", "Neg", "Exp", "Abs",
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

static void *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
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

/* Runs one test directory; returns 0 on a match, -1 with msg set. */
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
        void *buf = read_file(path, &len);
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
        void *buf = read_file(path, &len);
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
        void *model = read_file(path, &len);
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

static void test_conformance(void **state)
{
    (void)state;
    struct tally t = {0, 0, 0};
    run_suite("node", &t);
    run_suite("pytorch-converted", &t);
    run_suite("pytorch-operator", &t);
    printf("onnx conformance: %d passed, %d skipped, %d failed\n", t.run, t.skipped, t.failed);
    assert_int_equal(t.failed, 0);
    assert_true(t.run >= MIN_RUN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conformance),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
