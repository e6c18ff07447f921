/* test_onnx_model.c: the ONNX loader's refusals and conversions (core/onnx_model.h) and shape
 * planning (core/onnx_plan.h) on ModelProtos built here with protobuf-c: every refusal names the
 * node or tensor; initializer types convert exactly; the parameter rules; shape sub-graphs are
 * folded at load and follow the batch size. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/onnx_exec.h"
#include "core/onnx_source.h"
#include "onnx.pb-c.h"

/* ---- a tiny ModelProto builder (all storage static per test; freed by mb_reset) ---- */

#define MAXN 16

struct mb {
    Onnx__ModelProto model;
    Onnx__GraphProto graph;
    Onnx__OperatorSetIdProto opset;
    Onnx__OperatorSetIdProto *opsets[1];
    Onnx__NodeProto nodes[MAXN], *pnodes[MAXN];
    Onnx__AttributeProto attrs[MAXN], *pattrs[MAXN][1];
    Onnx__TensorProto inits[MAXN], *pinits[MAXN];
    Onnx__ValueInfoProto vis[2], *pin[1], *pout[1];
    Onnx__TypeProto types[2];
    Onnx__TypeProto__Tensor ttypes[2];
    Onnx__TensorShapeProto shapes[2];
    Onnx__TensorShapeProto__Dimension dims[2][4], *pdims[2][4];
    Onnx__StringStringEntryProto meta, *pmeta[1];
    char *ins[MAXN][5], *outs[MAXN][1];
};

static struct mb B;

static void mb_reset(int64_t opset)
{
    memset(&B, 0, sizeof B);
    onnx__model_proto__init(&B.model);
    onnx__graph_proto__init(&B.graph);
    onnx__operator_set_id_proto__init(&B.opset);
    B.opset.domain = "";
    B.opset.has_version = 1;
    B.opset.version = opset;
    B.opsets[0] = &B.opset;
    B.model.n_opset_import = 1;
    B.model.opset_import = B.opsets;
    B.model.graph = &B.graph;
    B.graph.node = B.pnodes;
    B.graph.initializer = B.pinits;
}

/* Graph input (k = 0) or output (k = 1) of FLOAT with dims (-1 = symbolic). */
static void mb_io(int k, const char *name, int rank, const int64_t *dims)
{
    Onnx__ValueInfoProto *vi = &B.vis[k];
    onnx__value_info_proto__init(vi);
    onnx__type_proto__init(&B.types[k]);
    onnx__type_proto__tensor__init(&B.ttypes[k]);
    onnx__tensor_shape_proto__init(&B.shapes[k]);
    vi->name = (char *)name;
    vi->type = &B.types[k];
    B.types[k].value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    B.types[k].tensor_type = &B.ttypes[k];
    B.ttypes[k].has_elem_type = 1;
    B.ttypes[k].elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    B.ttypes[k].shape = &B.shapes[k];
    for (int i = 0; i < rank; i++) {
        Onnx__TensorShapeProto__Dimension *d = &B.dims[k][i];
        onnx__tensor_shape_proto__dimension__init(d);
        if (dims[i] >= 0) {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            d->dim_value = dims[i];
        } else {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            d->dim_param = "batch";
        }
        B.pdims[k][i] = d;
    }
    B.shapes[k].n_dim = (size_t)rank;
    B.shapes[k].dim = B.pdims[k];
    if (k == 0) {
        B.pin[0] = vi;
        B.graph.n_input = 1;
        B.graph.input = B.pin;
    } else {
        B.pout[0] = vi;
        B.graph.n_output = 1;
        B.graph.output = B.pout;
    }
}

static Onnx__NodeProto *mb_node(const char *op, const char *name, const char *in0,
                                const char *in1, const char *in2, const char *out)
{
    size_t i = B.graph.n_node++;
    Onnx__NodeProto *n = &B.nodes[i];
    onnx__node_proto__init(n);
    n->op_type = (char *)op;
    n->name = (char *)name;
    const char *in[3] = {in0, in1, in2};
    for (int k = 0; k < 3 && in[k]; k++)
        B.ins[i][n->n_input++] = (char *)in[k];
    n->input = B.ins[i];
    B.outs[i][0] = (char *)out;
    n->n_output = 1;
    n->output = B.outs[i];
    B.pnodes[i] = n;
    return n;
}

static void mb_attr_int(Onnx__NodeProto *n, const char *name, int64_t v)
{
    size_t i = (size_t)(n - B.nodes);
    Onnx__AttributeProto *a = &B.attrs[i];
    onnx__attribute_proto__init(a);
    a->name = (char *)name;
    a->has_type = 1;
    a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
    a->has_i = 1;
    a->i = v;
    B.pattrs[i][0] = a;
    n->n_attribute = 1;
    n->attribute = B.pattrs[i];
}

static void mb_attr_str(Onnx__NodeProto *n, const char *name, const char *v)
{
    size_t i = (size_t)(n - B.nodes);
    Onnx__AttributeProto *a = &B.attrs[i];
    onnx__attribute_proto__init(a);
    a->name = (char *)name;
    a->has_type = 1;
    a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING;
    a->has_s = 1;
    a->s.data = (uint8_t *)v;
    a->s.len = strlen(v);
    B.pattrs[i][0] = a;
    n->n_attribute = 1;
    n->attribute = B.pattrs[i];
}

/* A float initializer with typed float_data. */
static Onnx__TensorProto *mb_init(const char *name, int rank, const int64_t *dims, float *vals)
{
    size_t i = B.graph.n_initializer++;
    Onnx__TensorProto *t = &B.inits[i];
    onnx__tensor_proto__init(t);
    t->name = (char *)name;
    t->n_dims = (size_t)rank;
    t->dims = (int64_t *)dims;
    t->has_data_type = 1;
    t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    int64_t n = 1;
    for (int k = 0; k < rank; k++)
        n *= dims[k];
    t->n_float_data = (size_t)n;
    t->float_data = vals;
    B.pinits[i] = t;
    return t;
}

static uint8_t *mb_pack(size_t *len)
{
    *len = onnx__model_proto__get_packed_size(&B.model);
    uint8_t *buf = malloc(*len ? *len : 1);
    assert_non_null(buf);
    onnx__model_proto__pack(&B.model, buf);
    return buf;
}

/* x (batch, 3) -> Gemm(W 2x3, b 2, transB) -> y (batch, 2) */
static float W[6] = {1, 2, 3, -1, 0.5f, 0.25f}, Bv[2] = {0.5f, -0.5f};
static const int64_t Wd[2] = {2, 3}, Bd[1] = {2};
static const int64_t xdims[2] = {-1, 3}, ydims[2] = {-1, 2};

static Onnx__NodeProto *mb_gemm_model(int64_t opset)
{
    mb_reset(opset);
    mb_io(0, "x", 2, xdims);
    mb_io(1, "y", 2, ydims);
    mb_init("fc.weight", 2, Wd, W);
    mb_init("fc.bias", 1, Bd, Bv);
    Onnx__NodeProto *n = mb_node("Gemm", "gemm0", "x", "fc.weight", "fc.bias", "y");
    mb_attr_int(n, "transB", 1);
    return n;
}

static int load(struct tpv_onnx_model **m, struct tpv_err *err)
{
    size_t len;
    uint8_t *buf = mb_pack(&len);
    int rc = tpv_onnx_model_load(m, buf, len, NULL, 0, err);
    free(buf);
    return rc;
}

static void expect_refusal(int want_code, const char *needle1, const char *needle2)
{
    struct tpv_onnx_model *m = NULL;
    struct tpv_err err;
    tpv_err_clear(&err);
    int rc = load(&m, &err);
    if (rc != want_code)
        fail_msg("code %d, expected %d (%s)", rc, want_code, err.message);
    assert_null(m);
    if (!strstr(err.message, needle1) || (needle2 && !strstr(err.message, needle2)))
        fail_msg("message '%s' lacks '%s' / '%s'", err.message, needle1, needle2 ? needle2 : "");
}

/* ---- tests ---- */

static void test_gemm_loads_and_runs(void **state)
{
    (void)state;
    mb_gemm_model(17);
    struct tpv_onnx_model *m;
    struct tpv_err err;
    assert_int_equal(load(&m, &err), TPV_OK);
    assert_int_equal(m->nparams, 2);
    struct tpv_onnx_tensor in = {.dtype = TPV_ONNX_F64, .rank = 2, .shape = {2, 3}};
    struct tpv_onnx_plan *p;
    struct tpv_onnx_exec *ex;
    assert_int_equal(tpv_onnx_plan_new(&p, m, &in, &err), TPV_OK);
    assert_int_equal(tpv_onnx_exec_new(&ex, p, &err), TPV_OK);
    const double x[6] = {1, 0, 0, 1, 1, 1};
    const double *xp = x;
    assert_int_equal(tpv_onnx_exec_forward(ex, &xp, &err), TPV_OK);
    const double *y = tpv_onnx_exec_value(ex, m->outputs[0])->data;
    const double want[4] = {1.5, -1.5, 6.5, -0.75};
    for (int i = 0; i < 4; i++)
        assert_true(fabs(y[i] - want[i]) < 1e-15);
    tpv_onnx_exec_free(ex);
    tpv_onnx_plan_free(p);
    tpv_onnx_model_free(m);
}

/* The Jacobian source over x (2, 3) -> Gemm(W 2x3, transB) -> y: closed-form products and the
 * cost model (forward F = 2 * 2 * 3 = 12 per sample). */
static void test_source_gemm(void **state)
{
    (void)state;
    mb_gemm_model(17);
    struct tpv_onnx_model *m;
    struct tpv_err err;
    assert_int_equal(load(&m, &err), TPV_OK);
    static const double x[6] = {1, 2, 3, -1, 0, 2};
    struct tpv_tensor xs = {.name = "", .dtype = TPV_DTYPE_F64, .rank = 2, .shape = {2, 3},
                            .numel = 6, .nbytes = 48, .data = x};
    struct tpv_jsrc *s;
    assert_int_equal(tpv_onnx_source_new(&s, m, &xs, &err), TPV_OK);
    assert_int_equal(s->n, 2);
    assert_int_equal(s->K, 2);
    assert_int_equal(s->p, 8);
    /* dy_k/dW_kj = x_j, dy_k/db_k = 1: diag(W row k) = sum_x x_j^2, diag(b) = n */
    double diag[8] = {0}, want[8] = {2, 4, 13, 2, 4, 13, 2, 2};
    assert_int_equal(s->ops->sqdiag(s, diag, NULL, &err), TPV_OK);
    for (int j = 0; j < 8; j++)
        assert_true(fabs(diag[j] - want[j]) < 1e-14);
    double fs, fp;
    s->ops->costs(s, &fs, &fp);
    assert_true(fabs(fs - 152) < 1e-9); /* 2 (12 + 2 * 2 * 12) + 2 * 2 * 8 */
    assert_true(fabs(fp - 88) < 1e-9);  /* 2 * 36 + 2 * 8 */
    tpv_jsrc_free(s);
    /* a per-sample shape that contradicts the graph names the input */
    struct tpv_tensor bad = xs;
    bad.shape[1] = 2;
    bad.numel = 4;
    assert_int_equal(tpv_onnx_source_new(&s, m, &bad, &err), TPV_EINVAL);
    assert_non_null(strstr(err.message, "'x'"));
    tpv_onnx_model_free(m);
}

static void test_not_a_model(void **state)
{
    (void)state;
    struct tpv_onnx_model *m = NULL;
    struct tpv_err err;
    const char junk[] = "\xff\xff\xff\xff not a protobuf";
    assert_int_equal(tpv_onnx_model_parse(&m, junk, sizeof junk, &err), TPV_EFORMAT);
    assert_null(m);
}

static void test_opset_range(void **state)
{
    (void)state;
    mb_gemm_model(12);
    expect_refusal(TPV_EINVAL, "opset 12", "13");
    mb_gemm_model(18);
    expect_refusal(TPV_EINVAL, "opset 18", NULL);
    for (int64_t o = 13; o <= 17; o++) {
        mb_gemm_model(o);
        struct tpv_onnx_model *m;
        struct tpv_err err;
        assert_int_equal(load(&m, &err), TPV_OK);
        tpv_onnx_model_free(m);
    }
}

static void test_unknown_operator(void **state)
{
    (void)state;
    mb_gemm_model(17);
    B.nodes[0].op_type = "FancyConv";
    expect_refusal(TPV_EINVAL, "FancyConv", "gemm0");
}

static void test_unsupported_attribute(void **state)
{
    (void)state;
    mb_reset(17);
    mb_io(0, "x", 2, xdims);
    mb_io(1, "y", 2, ydims);
    mb_init("fc.weight", 2, Wd, W);
    static const int64_t pd[1] = {4};
    Onnx__NodeProto *n = mb_node("Gemm", "g", "x", "fc.weight", NULL, "h");
    mb_attr_int(n, "transB", 1);
    /* the pads are an int64 initializer */
    Onnx__TensorProto *t = mb_init("pads", 1, pd, NULL);
    static int64_t pv[4] = {0, 1, 0, 1};
    t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
    t->n_float_data = 0;
    t->n_int64_data = 4;
    t->int64_data = pv;
    Onnx__NodeProto *pad = mb_node("Pad", "pad_reflect", "h", "pads", NULL, "y");
    mb_attr_str(pad, "mode", "reflect");
    expect_refusal(TPV_EINVAL, "pad_reflect", "mode");
    /* BatchNormalization in training mode */
    static const int64_t x2[2] = {-1, 2}, c2[1] = {2};
    static float ones[2] = {1, 1};
    mb_reset(17);
    mb_io(0, "x", 2, x2);
    mb_io(1, "y", 2, x2);
    mb_init("s", 1, c2, ones);
    n = mb_node("BatchNormalization", "bn7", "x", "s", "s", "y");
    B.ins[0][3] = "s";
    B.ins[0][4] = "s";
    n->n_input = 5;
    mb_attr_int(n, "training_mode", 1);
    expect_refusal(TPV_EINVAL, "bn7", "training_mode");
    /* an Einsum with an ellipsis (issue 11: torchvision's MaxViT writes explicit labels) */
    mb_reset(17);
    mb_io(0, "x", 2, x2);
    mb_io(1, "y", 2, x2);
    n = mb_node("Einsum", "ein", "x", "x", NULL, "y");
    mb_attr_str(n, "equation", "...i,...i->...i");
    expect_refusal(TPV_EINVAL, "ein", "equation");
}

static void test_external_data(void **state)
{
    (void)state;
    mb_gemm_model(17);
    B.inits[0].has_data_location = 1;
    B.inits[0].data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
    expect_refusal(TPV_EFORMAT, "fc.weight", "external");
}

static void test_non_finite(void **state)
{
    (void)state;
    static float bad[6] = {1, 2, 3, 4, 0, 6};
    bad[4] = NAN;
    mb_gemm_model(17);
    B.inits[0].float_data = bad;
    expect_refusal(TPV_EINVAL, "fc.weight", "index 4");
    bad[4] = INFINITY;
    mb_gemm_model(17);
    B.inits[0].float_data = bad;
    expect_refusal(TPV_EINVAL, "fc.weight", "index 4");
}

static void test_wrong_count(void **state)
{
    (void)state;
    mb_gemm_model(17);
    B.inits[0].n_float_data = 5;
    expect_refusal(TPV_EFORMAT, "fc.weight", "6 elements");
}

/* Initializer types: DOUBLE raw, FLOAT16 raw and int32_data, BFLOAT16 raw; values exact. */
static void test_initializer_types(void **state)
{
    (void)state;
    struct {
        int32_t type;
        uint8_t raw[16];
        size_t rawlen;
        double want[2];
    } cases[] = {
        {ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16, {0x00, 0x3c, 0x00, 0xc0}, 4, {1.0, -2.0}},
        {ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16, {0x80, 0x3f, 0x40, 0xc0}, 4, {1.0, -3.0}},
        {ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, {0, 0, 0x80, 0x3f, 0, 0, 0, 0x40}, 8, {1.0, 2.0}},
        {ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE,
         {0x9a, 0x99, 0x99, 0x99, 0x99, 0x99, 0xb9, 0x3f, 0, 0, 0, 0, 0, 0, 0xf0, 0xbf},
         16,
         {0.1, -1.0}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        mb_gemm_model(17);
        Onnx__TensorProto *t = &B.inits[1];
        t->data_type = cases[c].type;
        t->n_float_data = 0;
        t->has_raw_data = 1;
        t->raw_data.data = cases[c].raw;
        t->raw_data.len = cases[c].rawlen;
        struct tpv_onnx_model *m;
        struct tpv_err err;
        if (load(&m, &err))
            fail_msg("case %zu: %s", c, err.message);
        const double *b = m->values[tpv_onnx_model_find(m, "fc.bias")].t.data;
        assert_true(b[0] == cases[c].want[0] && b[1] == cases[c].want[1]);
        tpv_onnx_model_free(m);
    }
    /* FLOAT16 in int32_data (the low 16 bits of each entry) */
    mb_gemm_model(17);
    static int32_t h[2] = {0x3800, 0xbc00}; /* 0.5, -1 */
    B.inits[1].data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16;
    B.inits[1].n_float_data = 0;
    B.inits[1].n_int32_data = 2;
    B.inits[1].int32_data = h;
    struct tpv_onnx_model *m;
    struct tpv_err err;
    assert_int_equal(load(&m, &err), TPV_OK);
    const double *b = m->values[tpv_onnx_model_find(m, "fc.bias")].t.data;
    assert_true(b[0] == 0.5 && b[1] == -1.0);
    tpv_onnx_model_free(m);
}

static void test_io_rules(void **state)
{
    (void)state;
    static const int64_t fixed2[2] = {2, 3};
    mb_gemm_model(17);
    mb_io(0, "x", 2, fixed2);
    expect_refusal(TPV_EINVAL, "'x'", "batch");
    static const int64_t fixed1[2] = {1, 3};
    mb_gemm_model(17);
    mb_io(0, "x", 2, fixed1);
    struct tpv_onnx_model *m;
    struct tpv_err err;
    assert_int_equal(load(&m, &err), TPV_OK);
    tpv_onnx_model_free(m);
}

static void test_use_before_definition(void **state)
{
    (void)state;
    mb_gemm_model(17);
    B.nodes[0].input[2] = "later";
    expect_refusal(TPV_EINVAL, "later", "gemm0");
}

static void test_shapes_do_not_chain(void **state)
{
    (void)state;
    static const int64_t x4[2] = {-1, 4};
    mb_gemm_model(17);
    mb_io(0, "x", 2, x4);
    struct tpv_onnx_model *m;
    struct tpv_err err;
    assert_int_equal(load(&m, &err), TPV_OK);
    struct tpv_onnx_tensor in = {.dtype = TPV_ONNX_F64, .rank = 2, .shape = {3, 4}};
    struct tpv_onnx_plan *p = NULL;
    assert_int_equal(tpv_onnx_plan_new(&p, m, &in, &err), TPV_EINVAL);
    assert_null(p);
    assert_non_null(strstr(err.message, "gemm0"));
    assert_non_null(strstr(err.message, "do not chain"));
    /* an input set shape that contradicts the declared one names the input */
    in.shape[1] = 5;
    assert_int_equal(tpv_onnx_plan_new(&p, m, &in, &err), TPV_EINVAL);
    assert_non_null(strstr(err.message, "'x'"));
    tpv_onnx_model_free(m);
}

/* An omitted ("") required input is refused at planning, naming the node (was a NULL
 * dereference in BatchNormalization's shape inference: seen crashing before the fix). */
static void test_omitted_required_input(void **state)
{
    (void)state;
    static const int64_t x2[2] = {-1, 2}, c2[1] = {2};
    static float ones[2] = {1, 1};
    mb_reset(17);
    mb_io(0, "x", 2, x2);
    mb_io(1, "y", 2, x2);
    mb_init("s", 1, c2, ones);
    Onnx__NodeProto *n = mb_node("BatchNormalization", "bn_hole", "x", "s", "s", "y");
    B.ins[0][3] = "";
    B.ins[0][4] = "s";
    n->n_input = 5;
    struct tpv_onnx_model *m;
    struct tpv_err err;
    if (load(&m, &err))
        fail_msg("%s", err.message);
    /* "s" is both a scale and a variance: a parameter through its scale (was "no parameters") */
    assert_int_equal(m->nparams, 1);
    struct tpv_onnx_tensor in = {.dtype = TPV_ONNX_F64, .rank = 2, .shape = {3, 2}};
    struct tpv_onnx_plan *p = NULL;
    assert_int_equal(tpv_onnx_plan_new(&p, m, &in, &err), TPV_EINVAL);
    assert_non_null(strstr(err.message, "bn_hole"));
    assert_non_null(strstr(err.message, "input 3"));
    tpv_onnx_model_free(m);
}

/* Parameters: request list, metadata, default without BN statistics, Identity aliases. */
static void test_parameters(void **state)
{
    (void)state;
    struct tpv_onnx_model *m;
    struct tpv_err err;
    size_t len;
    uint8_t *buf;

    mb_gemm_model(17);
    buf = mb_pack(&len);
    const char *one[] = {"fc.weight"};
    assert_int_equal(tpv_onnx_model_load(&m, buf, len, one, 1, &err), TPV_OK);
    assert_int_equal(m->nparams, 1);
    assert_true(m->values[m->params[0]].param);
    assert_false(m->values[tpv_onnx_model_find(m, "fc.bias")].param);
    tpv_onnx_model_free(m);
    const char *bad[] = {"fc.nothing"};
    assert_int_equal(tpv_onnx_model_load(&m, buf, len, bad, 1, &err), TPV_EINVAL);
    assert_non_null(strstr(err.message, "fc.nothing"));
    const char *twice[] = {"fc.bias", "fc.bias"};
    assert_int_equal(tpv_onnx_model_load(&m, buf, len, twice, 2, &err), TPV_EINVAL);
    free(buf);

    mb_gemm_model(17);
    onnx__string_string_entry_proto__init(&B.meta);
    B.meta.key = "tpv.parameters";
    B.meta.value = "[\"fc.bias\"]";
    B.pmeta[0] = &B.meta;
    B.model.n_metadata_props = 1;
    B.model.metadata_props = B.pmeta;
    assert_int_equal(load(&m, &err), TPV_OK);
    assert_int_equal(m->nparams, 1);
    assert_string_equal(m->values[m->params[0]].name, "fc.bias");
    tpv_onnx_model_free(m);
    B.meta.value = "{\"fc.bias\": 1}";
    expect_refusal(TPV_EINVAL, "tpv.parameters", NULL);

    /* x -> BatchNormalization(scale, bias, mean, var), where bn2.weight aliases bn.weight */
    static const int64_t x2[2] = {-1, 2}, c2[1] = {2};
    static float ones[2] = {1, 1}, zeros[2] = {0, 0};
    mb_reset(17);
    mb_io(0, "x", 2, x2);
    mb_io(1, "y", 2, x2);
    mb_init("bn.weight", 1, c2, ones);
    mb_init("bn.bias", 1, c2, zeros);
    mb_node("Identity", "", "bn.weight", NULL, NULL, "bn.running_var");
    mb_node("Identity", "", "bn.bias", NULL, NULL, "bn.running_mean");
    mb_node("Identity", "", "bn.weight", NULL, NULL, "bn2.weight");
    Onnx__NodeProto *n = mb_node("BatchNormalization", "bn", "x", "bn.weight", "bn.bias", "h");
    B.ins[n - B.nodes][3] = "bn.running_mean";
    B.ins[n - B.nodes][4] = "bn.running_var";
    n->n_input = 5;
    mb_node("Mul", "scale2", "h", "bn2.weight", NULL, "y");
    assert_int_equal(load(&m, &err), TPV_OK);
    assert_int_equal(m->nnodes, 2); /* the aliases became initializers */
    const char *want[] = {"bn.weight", "bn.bias", "bn2.weight"};
    assert_int_equal(m->nparams, 3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(m->values[m->params[i]].name, want[i]);
    tpv_onnx_model_free(m);
}

/* y = Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])): folded at load, per batch. */
static void test_shape_subgraph(void **state)
{
    (void)state;
    static const int64_t x3[3] = {-1, 2, 2}, y2[2] = {-1, 4}, one[1] = {1};
    mb_reset(17);
    mb_io(0, "x", 3, x3);
    mb_io(1, "y", 2, y2);
    Onnx__TensorProto *t;
    static int64_t zero_v[1] = {0}, minus1_v[1] = {-1};
    t = mb_init("zero", 0, one, NULL);
    t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
    t->n_float_data = 0;
    t->n_int64_data = 1;
    t->int64_data = zero_v;
    t = mb_init("minus1", 1, one, NULL);
    t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
    t->n_float_data = 0;
    t->n_int64_data = 1;
    t->int64_data = minus1_v;
    static int64_t axes_v[1] = {0};
    t = mb_init("axes", 1, one, NULL);
    t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
    t->n_float_data = 0;
    t->n_int64_data = 1;
    t->int64_data = axes_v;
    mb_node("Shape", "shape", "x", NULL, NULL, "s");
    mb_node("Gather", "gather", "s", "zero", NULL, "n");
    mb_node("Unsqueeze", "unsq", "n", "axes", NULL, "n1");
    Onnx__NodeProto *c = mb_node("Concat", "concat", "n1", "minus1", NULL, "shp");
    mb_attr_int(c, "axis", 0);
    mb_node("Reshape", "reshape", "x", "shp", NULL, "y");
    size_t len;
    uint8_t *buf = mb_pack(&len);
    struct tpv_onnx_model *m;
    struct tpv_err err;
    assert_int_equal(tpv_onnx_model_parse(&m, buf, len, &err), TPV_OK);
    free(buf);
    for (int64_t batch = 1; batch <= 3; batch++) {
        struct tpv_onnx_tensor in = {.dtype = TPV_ONNX_F64, .rank = 3, .shape = {batch, 2, 2}};
        struct tpv_onnx_plan *p;
        assert_int_equal(tpv_onnx_plan_new(&p, m, &in, &err), TPV_OK);
        for (size_t i = 0; i < 4; i++)
            assert_false(p->run[i]); /* the shape sub-graph is folded */
        assert_true(p->run[4]);
        const struct tpv_onnx_tensor *y = &p->vals[m->outputs[0]];
        assert_int_equal(y->rank, 2);
        assert_int_equal(y->shape[0], batch);
        assert_int_equal(y->shape[1], 4);
        tpv_onnx_plan_free(p);
    }
    tpv_onnx_model_free(m);
}

/* Every truncation and many single-byte corruptions of a valid model: parsing, loading and
 * planning either succeed or fail with a code, never crash or leak (run under ASan in CI). */
static void test_corrupted_bytes(void **state)
{
    (void)state;
    mb_gemm_model(17);
    size_t len;
    uint8_t *good = mb_pack(&len);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    static const uint8_t vals[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x08, 0x12, 0x3a};
    int loaded = 0, refused = 0;
    for (size_t cut = 0; cut <= len; cut++)
        for (size_t at = 0; at < len; at++)
            for (size_t v = 0; v < (cut == len ? sizeof vals : 1); v++) {
                memcpy(buf, good, len);
                if (cut == len)
                    buf[at] = vals[v];
                else if (at > 0)
                    break; /* truncations: one case per length */
                struct tpv_onnx_model *m = NULL;
                struct tpv_err err;
                if (tpv_onnx_model_load(&m, buf, cut, NULL, 0, &err) != TPV_OK) {
                    assert_null(m);
                    refused++;
                    continue;
                }
                loaded++;
                const struct tpv_onnx_value *x = &m->values[m->inputs[0]];
                struct tpv_onnx_tensor in = {.dtype = TPV_ONNX_F64, .rank = x->t.rank};
                for (int i = 0; i < x->t.rank; i++)
                    in.shape[i] = x->t.shape[i] < 0 ? 2 : x->t.shape[i];
                struct tpv_onnx_plan *p = NULL;
                struct tpv_onnx_exec *ex = NULL;
                if (in.rank >= 0 && tpv_onnx_numel(in.rank, in.shape) >= 0 &&
                    tpv_onnx_numel(in.rank, in.shape) < 4096 &&
                    tpv_onnx_plan_new(&p, m, &in, &err) == TPV_OK &&
                    tpv_onnx_exec_new(&ex, p, &err) == TPV_OK) {
                    double xin[4096] = {0};
                    const double *xp = xin;
                    (void)tpv_onnx_exec_forward(ex, &xp, &err);
                }
                tpv_onnx_exec_free(ex);
                tpv_onnx_plan_free(p);
                tpv_onnx_model_free(m);
            }
    assert_true(loaded > 0 && refused > 0);
    free(buf);
    free(good);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_loads_and_runs),
        cmocka_unit_test(test_source_gemm),
        cmocka_unit_test(test_not_a_model),
        cmocka_unit_test(test_opset_range),
        cmocka_unit_test(test_unknown_operator),
        cmocka_unit_test(test_unsupported_attribute),
        cmocka_unit_test(test_external_data),
        cmocka_unit_test(test_non_finite),
        cmocka_unit_test(test_wrong_count),
        cmocka_unit_test(test_initializer_types),
        cmocka_unit_test(test_io_rules),
        cmocka_unit_test(test_use_before_definition),
        cmocka_unit_test(test_shapes_do_not_chain),
        cmocka_unit_test(test_parameters),
        cmocka_unit_test(test_omitted_required_input),
        cmocka_unit_test(test_shape_subgraph),
        cmocka_unit_test(test_corrupted_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
