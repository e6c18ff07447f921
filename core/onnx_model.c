/* onnx_model.c: ModelProto parsing and validation for the graph runtime (onnx_model.h; DESIGN.md
 * section 4, "ONNX models"). */
#include "core/onnx_model.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/onnx_ops.h"
#include "onnx.pb-c.h"

/* Values and nodes are bounded by the protobuf's size; this bounds the quadratic name lookups
 * and the per-node arrays against a crafted file. */
#define NODES_MAX 100000
#define VALUES_MAX 400000

static int nomem(struct tpv_err *err)
{
    return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
}

int64_t tpv_onnx_numel(int rank, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(n, shape[i], &n) || n > (INT64_C(1) << 40))
            return -1;
    }
    return n;
}

/* ---- tensors ---- */

static bool is_float_type(int32_t t)
{
    return t == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT || t == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE ||
           t == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16 ||
           t == ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16;
}

/* Bytes per element in raw_data for the integer types we read as int64, or 0. */
static size_t int_raw_size(int32_t t)
{
    switch (t) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT64: return 8;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT32: return 4;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT16:
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT16: return 2;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT8:
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT8:
    case ONNX__TENSOR_PROTO__DATA_TYPE__BOOL: return 1;
    default: return 0;
    }
}

static int64_t read_int_le(int32_t t, const uint8_t *p)
{
    uint64_t u = 0;
    size_t sz = int_raw_size(t);
    for (size_t i = 0; i < sz; i++)
        u |= (uint64_t)p[i] << (8 * i);
    switch (t) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT32: return (int32_t)(uint32_t)u;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT16: return (int16_t)(uint16_t)u;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT8: return (int8_t)(uint8_t)u;
    default: return (int64_t)u;
    }
}

static int count_error(const char *what, const char *field, size_t got, int64_t want,
                       struct tpv_err *err)
{
    return tpv_err_set(err, TPV_EFORMAT, what,
                       "tensor '%s': %s holds %zu values but its shape has %lld elements", what,
                       field, got, (long long)want);
}

static int read_float_data(const Onnx__TensorProto *tp, int64_t n, double *dst, const char *what,
                           struct tpv_err *err)
{
    int32_t t = tp->data_type;
    enum tpv_dtype dt = t == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT    ? TPV_DTYPE_F32
                        : t == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE ? TPV_DTYPE_F64
                        : t == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16 ? TPV_DTYPE_F16
                                                                      : TPV_DTYPE_BF16;
    if (tp->has_raw_data) {
        size_t esz = tpv_dtype_size(dt);
        if (tp->raw_data.len % esz || tp->raw_data.len / esz != (uint64_t)n)
            return count_error(what, "raw_data", tp->raw_data.len / esz, n, err);
        tpv_convert_f64(dt, tp->raw_data.data, (uint64_t)n, dst);
        return TPV_OK;
    }
    if (dt == TPV_DTYPE_F32) {
        if (tp->n_float_data != (uint64_t)n)
            return count_error(what, "float_data", tp->n_float_data, n, err);
        for (int64_t i = 0; i < n; i++)
            dst[i] = tp->float_data[i];
    } else if (dt == TPV_DTYPE_F64) {
        if (tp->n_double_data != (uint64_t)n)
            return count_error(what, "double_data", tp->n_double_data, n, err);
        memcpy(dst, tp->double_data, (size_t)n * sizeof *dst);
    } else {
        /* FLOAT16 and BFLOAT16 in int32_data: the 16 bits of each value, low half. */
        if (tp->n_int32_data != (uint64_t)n)
            return count_error(what, "int32_data", tp->n_int32_data, n, err);
        for (int64_t i = 0; i < n; i++) {
            uint8_t le[2] = {(uint8_t)(tp->int32_data[i] & 0xff),
                             (uint8_t)((tp->int32_data[i] >> 8) & 0xff)};
            tpv_convert_f64(dt, le, 1, dst + i);
        }
    }
    return TPV_OK;
}

static int read_int_data(const Onnx__TensorProto *tp, int64_t n, int64_t *dst, const char *what,
                         struct tpv_err *err)
{
    int32_t t = tp->data_type;
    if (tp->has_raw_data) {
        size_t esz = int_raw_size(t);
        if (tp->raw_data.len % esz || tp->raw_data.len / esz != (uint64_t)n)
            return count_error(what, "raw_data", tp->raw_data.len / esz, n, err);
        for (int64_t i = 0; i < n; i++)
            dst[i] = read_int_le(t, tp->raw_data.data + (size_t)i * esz);
        return TPV_OK;
    }
    if (t == ONNX__TENSOR_PROTO__DATA_TYPE__INT64) {
        if (tp->n_int64_data != (uint64_t)n)
            return count_error(what, "int64_data", tp->n_int64_data, n, err);
        memcpy(dst, tp->int64_data, (size_t)n * sizeof *dst);
    } else {
        if (tp->n_int32_data != (uint64_t)n)
            return count_error(what, "int32_data", tp->n_int32_data, n, err);
        for (int64_t i = 0; i < n; i++)
            dst[i] = tp->int32_data[i];
    }
    return TPV_OK;
}

/* Converts a TensorProto into t (owned data).  `what` names it in messages. */
static int tensor_from_proto(struct tpv_onnx_tensor *t, const Onnx__TensorProto *tp,
                             const char *what, struct tpv_err *err)
{
    memset(t, 0, sizeof *t);
    if ((tp->has_data_location &&
         tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) ||
        tp->n_external_data > 0)
        return tpv_err_set(err, TPV_EFORMAT, what,
                           "tensor '%s' keeps its data in an external file, which is not "
                           "supported: export the model with the weights inside it "
                           "(save_as_external_data=False)",
                           what);
    if (tp->segment)
        return tpv_err_set(err, TPV_EFORMAT, what, "tensor '%s' is segmented (not supported)",
                           what);
    if (tp->n_dims > TPV_MAX_RANK)
        return tpv_err_set(err, TPV_EINVAL, what, "tensor '%s' has rank %zu (at most %d)", what,
                           tp->n_dims, TPV_MAX_RANK);
    int32_t ty = tp->has_data_type ? tp->data_type : 0;
    bool fl = is_float_type(ty);
    if (!fl && !int_raw_size(ty))
        return tpv_err_set(err, TPV_EINVAL, what,
                           "tensor '%s' has data type %d; supported: float, double, float16, "
                           "bfloat16 and integer or bool (for shapes and indices)",
                           what, (int)ty);
    t->rank = (int)tp->n_dims;
    for (size_t i = 0; i < tp->n_dims; i++)
        t->shape[i] = tp->dims[i];
    int64_t n = tpv_onnx_numel(t->rank, t->shape);
    if (n < 0)
        return tpv_err_set(err, TPV_EFORMAT, what, "tensor '%s' has an invalid shape", what);
    t->numel = (uint64_t)n;
    t->dtype = fl ? TPV_ONNX_F64 : TPV_ONNX_I64;
    t->data = malloc((size_t)(n ? n : 1) * 8);
    if (!t->data)
        return nomem(err);
    int rc = fl ? read_float_data(tp, n, t->data, what, err)
                : read_int_data(tp, n, t->data, what, err);
    if (rc == TPV_OK && fl) {
        const double *d = t->data;
        for (int64_t i = 0; i < n; i++)
            if (!isfinite(d[i])) {
                rc = tpv_err_set(err, TPV_EINVAL, what,
                                 "tensor '%s' has a non-finite value (%g) at index %lld", what,
                                 d[i], (long long)i);
                break;
            }
    }
    if (rc) {
        free(t->data);
        t->data = NULL;
    }
    return rc;
}

int tpv_onnx_tensor_parse(struct tpv_onnx_tensor *t, int *elem_type, const void *buf, size_t len,
                          const char *what, struct tpv_err *err)
{
    Onnx__TensorProto *tp = onnx__tensor_proto__unpack(NULL, len, buf);
    if (!tp)
        return tpv_err_set(err, TPV_EFORMAT, what, "%s is not a serialized ONNX TensorProto",
                           what);
    int rc = tensor_from_proto(t, tp, what, err);
    if (elem_type)
        *elem_type = tp->has_data_type ? tp->data_type : 0;
    onnx__tensor_proto__free_unpacked(tp, NULL);
    return rc;
}

int tpv_onnx_tensor_from_attr(struct tpv_onnx_tensor *t, const void *tensor_proto,
                              const char *what, struct tpv_err *err)
{
    return tensor_from_proto(t, tensor_proto, what, err);
}

/* ---- model building ---- */

struct builder {
    struct tpv_onnx_model *m;
    size_t vcap, ncap;
};

bool tpv_onnx_value_narrow(const struct tpv_onnx_model *m, long v)
{
    if (v < 0 || (size_t)v >= m->nvalues || m->values[v].kind == TPV_ONNX_VNODE)
        return false;
    int t = m->values[v].elem_type;
    return t == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT ||
           t == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16 ||
           t == ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16;
}

long tpv_onnx_model_find(const struct tpv_onnx_model *m, const char *name)
{
    for (size_t i = m->nvalues; i-- > 0;)
        if (strcmp(m->values[i].name, name) == 0)
            return (long)i;
    return -1;
}

static int add_value(struct builder *b, const char *name, enum tpv_onnx_vkind kind, long *idx,
                     struct tpv_err *err)
{
    struct tpv_onnx_model *m = b->m;
    if (tpv_onnx_model_find(m, name) >= 0)
        return tpv_err_set(err, TPV_EINVAL, name, "value '%s' is defined twice", name);
    if (m->nvalues == VALUES_MAX)
        return tpv_err_set(err, TPV_EINVAL, NULL, "the graph has more than %d values",
                           VALUES_MAX);
    if (m->nvalues == b->vcap) {
        size_t cap = b->vcap ? 2 * b->vcap : 64;
        void *p = realloc(m->values, cap * sizeof *m->values);
        if (!p)
            return nomem(err);
        m->values = p;
        b->vcap = cap;
    }
    struct tpv_onnx_value *v = &m->values[m->nvalues];
    memset(v, 0, sizeof *v);
    v->name = name;
    v->kind = kind;
    v->producer = -1;
    *idx = (long)m->nvalues++;
    return TPV_OK;
}

static int check_opset(const Onnx__ModelProto *mp, int64_t lo, int64_t hi, int64_t *opset,
                       struct tpv_err *err)
{
    *opset = -1;
    for (size_t i = 0; i < mp->n_opset_import; i++) {
        const Onnx__OperatorSetIdProto *o = mp->opset_import[i];
        if (!o->domain || !o->domain[0] || strcmp(o->domain, "ai.onnx") == 0)
            *opset = o->has_version ? o->version : 1;
    }
    if (*opset < 0)
        return tpv_err_set(err, TPV_EINVAL, "opset_import",
                           "the model imports no default-domain opset");
    if (*opset < lo || *opset > hi)
        return tpv_err_set(err, TPV_EINVAL, "opset_import",
                           "opset %lld is not supported (opsets %lld to %lld are): export with "
                           "opset_version between them",
                           (long long)*opset, (long long)lo, (long long)hi);
    return TPV_OK;
}

static int add_initializers(struct builder *b, const Onnx__GraphProto *g, struct tpv_err *err)
{
    if (g->n_sparse_initializer)
        return tpv_err_set(err, TPV_EINVAL, "sparse_initializer",
                           "sparse initializers are not supported");
    for (size_t i = 0; i < g->n_initializer; i++) {
        const Onnx__TensorProto *tp = g->initializer[i];
        if (!tp->name || !tp->name[0])
            return tpv_err_set(err, TPV_EFORMAT, "initializer",
                               "initializer %zu has no name", i);
        long idx;
        int rc = add_value(b, tp->name, TPV_ONNX_VINIT, &idx, err);
        if (rc)
            return rc;
        struct tpv_onnx_value *v = &b->m->values[idx];
        v->elem_type = tp->data_type;
        rc = tensor_from_proto(&v->t, tp, tp->name, err);
        if (rc)
            return rc;
    }
    return TPV_OK;
}

/* Declared dims of a graph input: -1 for a symbolic or missing dimension. */
static int input_shape(struct tpv_onnx_value *v, const Onnx__ValueInfoProto *vi,
                       struct tpv_err *err)
{
    const Onnx__TypeProto *ty = vi->type;
    if (!ty || ty->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !ty->tensor_type)
        return tpv_err_set(err, TPV_EINVAL, vi->name, "graph input '%s' is not a tensor",
                           vi->name);
    const Onnx__TypeProto__Tensor *tt = ty->tensor_type;
    v->elem_type = tt->elem_type;
    if (!is_float_type(tt->elem_type) && !int_raw_size(tt->elem_type))
        return tpv_err_set(err, TPV_EINVAL, vi->name,
                           "graph input '%s' has element type %d (not supported)", vi->name,
                           (int)tt->elem_type);
    v->t.dtype = is_float_type(tt->elem_type) ? TPV_ONNX_F64 : TPV_ONNX_I64;
    if (!tt->shape) {
        v->t.rank = -1; /* unknown rank */
        return TPV_OK;
    }
    if (tt->shape->n_dim > TPV_MAX_RANK)
        return tpv_err_set(err, TPV_EINVAL, vi->name, "graph input '%s' has rank %zu (at most %d)",
                           vi->name, tt->shape->n_dim, TPV_MAX_RANK);
    v->t.rank = (int)tt->shape->n_dim;
    for (size_t i = 0; i < tt->shape->n_dim; i++) {
        const Onnx__TensorShapeProto__Dimension *d = tt->shape->dim[i];
        v->t.shape[i] = d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE &&
                                d->dim_value >= 0
                            ? d->dim_value
                            : -1;
    }
    return TPV_OK;
}

static int add_inputs(struct builder *b, const Onnx__GraphProto *g, struct tpv_err *err)
{
    struct tpv_onnx_model *m = b->m;
    m->inputs = calloc(g->n_input ? g->n_input : 1, sizeof *m->inputs);
    if (!m->inputs)
        return nomem(err);
    for (size_t i = 0; i < g->n_input; i++) {
        const Onnx__ValueInfoProto *vi = g->input[i];
        if (!vi->name || !vi->name[0])
            return tpv_err_set(err, TPV_EFORMAT, "input", "graph input %zu has no name", i);
        if (tpv_onnx_model_find(m, vi->name) >= 0)
            continue; /* older exporters list initializers among the inputs */
        long idx;
        int rc = add_value(b, vi->name, TPV_ONNX_VINPUT, &idx, err);
        if (rc)
            return rc;
        rc = input_shape(&m->values[idx], vi, err);
        if (rc)
            return rc;
        m->inputs[m->ninputs++] = idx;
    }
    return TPV_OK;
}

static int node_error(const Onnx__NodeProto *np, size_t i, struct tpv_err *err, const char *what)
{
    const char *name = np->name && np->name[0] ? np->name : "";
    return tpv_err_set(err, TPV_EINVAL, name, "node %zu '%s' (%s): %s", i, name,
                       np->op_type ? np->op_type : "?", what);
}

/* A Constant node becomes a constant value (its only output). */
static int add_constant(struct builder *b, const Onnx__NodeProto *np, size_t i,
                        struct tpv_err *err)
{
    if (np->n_output != 1 || np->n_attribute != 1)
        return node_error(np, i, err, "a Constant needs one output and one attribute");
    const Onnx__AttributeProto *a = np->attribute[0];
    long idx;
    int rc = add_value(b, np->output[0], TPV_ONNX_VCONST, &idx, err);
    if (rc)
        return rc;
    struct tpv_onnx_value *v = &b->m->values[idx];
    struct tpv_onnx_tensor *t = &v->t;
    const char *an = a->name ? a->name : "";
    if (strcmp(an, "value") == 0 && a->t) {
        v->elem_type = a->t->data_type;
        return tensor_from_proto(t, a->t, np->output[0], err);
    }
    bool isf = strcmp(an, "value_float") == 0 || strcmp(an, "value_floats") == 0;
    bool isi = strcmp(an, "value_int") == 0 || strcmp(an, "value_ints") == 0;
    if (!isf && !isi)
        return node_error(np, i, err, "unsupported Constant attribute (value, value_float(s) "
                                      "and value_int(s) are supported)");
    bool list = strcmp(an, "value_floats") == 0 || strcmp(an, "value_ints") == 0;
    size_t n = list ? (isf ? a->n_floats : a->n_ints) : 1;
    t->dtype = isf ? TPV_ONNX_F64 : TPV_ONNX_I64;
    v->elem_type = isf ? ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT : ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
    t->rank = list ? 1 : 0;
    t->shape[0] = (int64_t)n;
    t->numel = n;
    t->data = malloc((n ? n : 1) * 8);
    if (!t->data)
        return nomem(err);
    for (size_t k = 0; k < n; k++) {
        if (isf) {
            double x = list ? a->floats[k] : a->f;
            if (!isfinite(x))
                return node_error(np, i, err, "non-finite constant");
            ((double *)t->data)[k] = x;
        } else {
            ((int64_t *)t->data)[k] = list ? a->ints[k] : a->i;
        }
    }
    return TPV_OK;
}

/* Identity of an initializer: a copy under the output's name (PyTorch's deduplicated parameters;
 * each alias is its own parameter). */
static int add_alias(struct builder *b, const Onnx__NodeProto *np, long src, struct tpv_err *err)
{
    long idx;
    int rc = add_value(b, np->output[0], TPV_ONNX_VINIT, &idx, err);
    if (rc)
        return rc;
    struct tpv_onnx_value *v = &b->m->values[idx];
    const struct tpv_onnx_value *s = &b->m->values[src];
    v->t = s->t;
    v->elem_type = s->elem_type;
    v->t.data = malloc((s->t.numel ? s->t.numel : 1) * 8);
    if (!v->t.data)
        return nomem(err);
    memcpy(v->t.data, s->t.data, s->t.numel * 8);
    return TPV_OK;
}

static int add_node(struct builder *b, const Onnx__NodeProto *np, size_t i, struct tpv_err *err)
{
    struct tpv_onnx_model *m = b->m;
    if (np->domain && np->domain[0] && strcmp(np->domain, "ai.onnx") != 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "operator domain '%s' is not supported", np->domain);
        return node_error(np, i, err, msg);
    }
    if (!np->op_type)
        return node_error(np, i, err, "no op_type");
    for (size_t k = 0; k < np->n_output; k++)
        if (!np->output[k])
            return node_error(np, i, err, "an output has no name");
    if (strcmp(np->op_type, "Constant") == 0)
        return add_constant(b, np, i, err);
    if (strcmp(np->op_type, "Identity") == 0 && np->n_input == 1 && np->n_output == 1) {
        long src = tpv_onnx_model_find(m, np->input[0]);
        if (src >= 0 && m->values[src].kind == TPV_ONNX_VINIT)
            return add_alias(b, np, src, err);
    }
    int op = tpv_onnx_op_find(np->op_type);
    if (op < 0) {
        const char *name = np->name && np->name[0] ? np->name : "";
        return tpv_err_set(err, TPV_EINVAL, name,
                           "unknown operator '%s' at node '%s' (see the list of supported "
                           "operators)",
                           np->op_type, name);
    }
    const struct tpv_onnx_op *o = tpv_onnx_op_get(op);
    if (np->n_input < o->min_in || np->n_input > o->max_in || np->n_output < o->min_out ||
        np->n_output > o->max_out) {
        char msg[160];
        snprintf(msg, sizeof msg, "%zu inputs and %zu outputs (expected %u-%u and %u-%u)",
                 np->n_input, np->n_output, o->min_in, o->max_in, o->min_out, o->max_out);
        return node_error(np, i, err, msg);
    }
    if (m->nnodes == b->ncap) {
        size_t cap = b->ncap ? 2 * b->ncap : 64;
        void *p = realloc(m->nodes, cap * sizeof *m->nodes);
        if (!p)
            return nomem(err);
        m->nodes = p;
        b->ncap = cap;
    }
    struct tpv_onnx_node *nd = &m->nodes[m->nnodes];
    memset(nd, 0, sizeof *nd);
    nd->proto = np;
    nd->op = op;
    nd->op_type = np->op_type;
    nd->name = np->name && np->name[0] ? np->name : (np->n_output ? np->output[0] : "");
    nd->in = calloc(np->n_input + 1, sizeof *nd->in);
    nd->out = calloc(np->n_output + 1, sizeof *nd->out);
    m->nnodes++; /* owns in/out from here, for model_free */
    if (!nd->in || !nd->out)
        return nomem(err);
    nd->nin = np->n_input;
    nd->nout = np->n_output;
    for (size_t k = 0; k < np->n_input; k++) {
        const char *in = np->input[k];
        nd->in[k] = -1;
        if (!in || !in[0])
            continue;
        nd->in[k] = tpv_onnx_model_find(m, in);
        if (nd->in[k] < 0)
            return tpv_err_set(err, TPV_EINVAL, nd->name,
                               "node '%s' (%s): input '%s' is not defined before the node", nd->name,
                               nd->op_type, in);
    }
    for (size_t k = 0; k < np->n_output; k++) {
        nd->out[k] = -1;
        if (!np->output[k][0])
            continue;
        int rc = add_value(b, np->output[k], TPV_ONNX_VNODE, &nd->out[k], err);
        if (rc)
            return rc;
        m->values[nd->out[k]].producer = (long)(m->nnodes - 1);
    }
    return o->check ? o->check(nd, err) : TPV_OK;
}

static int add_outputs(struct builder *b, const Onnx__GraphProto *g, struct tpv_err *err)
{
    struct tpv_onnx_model *m = b->m;
    m->outputs = calloc(g->n_output ? g->n_output : 1, sizeof *m->outputs);
    if (!m->outputs)
        return nomem(err);
    for (size_t i = 0; i < g->n_output; i++) {
        const char *name = g->output[i]->name ? g->output[i]->name : "";
        long idx = tpv_onnx_model_find(m, name);
        if (idx < 0)
            return tpv_err_set(err, TPV_EINVAL, name, "graph output '%s' is never computed",
                               name);
        m->outputs[m->noutputs++] = idx;
    }
    return TPV_OK;
}

int tpv_onnx_model_parse(struct tpv_onnx_model **out, const void *buf, size_t len,
                         struct tpv_err *err)
{
    return tpv_onnx_model_parse_opsets(out, buf, len, TPV_ONNX_OPSET_MIN, TPV_ONNX_OPSET_MAX, err);
}

int tpv_onnx_model_parse_opsets(struct tpv_onnx_model **out, const void *buf, size_t len,
                                int64_t opset_min, int64_t opset_max, struct tpv_err *err)
{
    *out = NULL;
    struct tpv_onnx_model *m = calloc(1, sizeof *m);
    if (!m)
        return nomem(err);
    struct builder b = {.m = m};
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, len, buf);
    int rc;
    if (!mp) {
        rc = tpv_err_set(err, TPV_EFORMAT, "model", "the model is not a serialized ONNX "
                                                     "ModelProto");
        goto fail;
    }
    m->proto = mp;
    rc = check_opset(mp, opset_min, opset_max, &m->opset, err);
    if (rc)
        goto fail;
    const Onnx__GraphProto *g = mp->graph;
    if (!g) {
        rc = tpv_err_set(err, TPV_EFORMAT, "graph", "the model has no graph");
        goto fail;
    }
    if (g->n_node > NODES_MAX) {
        rc = tpv_err_set(err, TPV_EINVAL, "graph", "the graph has %zu nodes (at most %d)",
                         g->n_node, NODES_MAX);
        goto fail;
    }
    rc = add_initializers(&b, g, err);
    if (!rc)
        rc = add_inputs(&b, g, err);
    for (size_t i = 0; !rc && i < g->n_node; i++)
        rc = add_node(&b, g->node[i], i, err);
    if (!rc)
        rc = add_outputs(&b, g, err);
    if (rc)
        goto fail;
    *out = m;
    return TPV_OK;
fail:
    tpv_onnx_model_free(m);
    return rc;
}

/* ---- scored-model rules and parameters ---- */

static int check_io(const struct tpv_onnx_model *m, struct tpv_err *err)
{
    if (m->ninputs != 1)
        return tpv_err_set(err, TPV_EINVAL, "input",
                           "the graph has %zu inputs besides its initializers; a scored model "
                           "has exactly one (the batch of samples)",
                           m->ninputs);
    const struct tpv_onnx_value *in = &m->values[m->inputs[0]];
    if (!is_float_type(in->elem_type))
        return tpv_err_set(err, TPV_EINVAL, in->name, "graph input '%s' is not a float tensor",
                           in->name);
    if (in->t.rank < 1 || (in->t.shape[0] != -1 && in->t.shape[0] != 1))
        return tpv_err_set(err, TPV_EINVAL, in->name,
                           "graph input '%s': its first dimension must be the batch (dynamic, "
                           "or fixed at 1)",
                           in->name);
    if (m->noutputs != 1)
        return tpv_err_set(err, TPV_EINVAL, "output",
                           "the graph has %zu outputs; a scored model has exactly one",
                           m->noutputs);
    const struct tpv_onnx_value *o = &m->values[m->outputs[0]];
    if (o->kind != TPV_ONNX_VNODE)
        return tpv_err_set(err, TPV_EINVAL, o->name, "graph output '%s' is not computed by a node",
                           o->name);
    return TPV_OK;
}

static int mark_param(struct tpv_onnx_model *m, const char *name, struct tpv_err *err)
{
    long idx = tpv_onnx_model_find(m, name);
    if (idx < 0 || m->values[idx].kind != TPV_ONNX_VINIT ||
        m->values[idx].t.dtype != TPV_ONNX_F64)
        return tpv_err_set(err, TPV_EINVAL, "parameters",
                           "parameter '%s' is not a float initializer of the graph", name);
    if (m->values[idx].param)
        return tpv_err_set(err, TPV_EINVAL, "parameters", "parameter '%s' is named twice", name);
    m->values[idx].param = true;
    m->params[m->nparams++] = idx;
    return TPV_OK;
}

static int params_from_json(struct tpv_onnx_model *m, const char *text, struct tpv_err *err)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    int rc = TPV_OK;
    if (!j || !json_is_array(j)) {
        rc = tpv_err_set(err, TPV_EINVAL, "tpv.parameters",
                         "metadata 'tpv.parameters' must be a JSON list of parameter names");
        goto out;
    }
    for (size_t i = 0; !rc && i < json_array_size(j); i++) {
        const char *s = json_string_value(json_array_get(j, i));
        if (!s) {
            rc = tpv_err_set(err, TPV_EINVAL, "tpv.parameters",
                             "metadata 'tpv.parameters' entry %zu is not a string", i);
            break;
        }
        rc = mark_param(m, s, err);
    }
out:
    json_decref(j);
    return rc;
}

/* Every float initializer a node reads outside BatchNormalization's mean and variance inputs
 * (an initializer shared by a scale and a variance, as a deduplicating exporter may write for
 * fresh ones, is a parameter through its scale). */
static void params_default(struct tpv_onnx_model *m)
{
    bool *used = calloc(m->nvalues ? m->nvalues : 1, sizeof *used);
    if (!used)
        return;
    int bn = tpv_onnx_op_find("BatchNormalization");
    for (size_t i = 0; i < m->nnodes; i++) {
        const struct tpv_onnx_node *nd = &m->nodes[i];
        for (size_t k = 0; k < nd->nin; k++)
            if (nd->in[k] >= 0 && !(nd->op == bn && (k == 3 || k == 4)))
                used[nd->in[k]] = true;
    }
    for (size_t v = 0; v < m->nvalues; v++) {
        const struct tpv_onnx_value *val = &m->values[v];
        if (val->kind == TPV_ONNX_VINIT && val->t.dtype == TPV_ONNX_F64 && used[v]) {
            m->values[v].param = true;
            m->params[m->nparams++] = (long)v;
        }
    }
    free(used);
}

static int choose_params(struct tpv_onnx_model *m, const char *const *names, size_t n,
                         struct tpv_err *err)
{
    m->params = calloc(m->nvalues + 1, sizeof *m->params);
    if (!m->params)
        return nomem(err);
    if (names) {
        for (size_t i = 0; i < n; i++) {
            int rc = mark_param(m, names[i], err);
            if (rc)
                return rc;
        }
        return TPV_OK;
    }
    const Onnx__ModelProto *mp = m->proto;
    for (size_t i = 0; i < mp->n_metadata_props; i++) {
        const Onnx__StringStringEntryProto *e = mp->metadata_props[i];
        if (e->key && strcmp(e->key, "tpv.parameters") == 0)
            return params_from_json(m, e->value ? e->value : "", err);
    }
    params_default(m);
    return TPV_OK;
}

int tpv_onnx_model_load(struct tpv_onnx_model **out, const void *buf, size_t len,
                        const char *const *params, size_t nparams, struct tpv_err *err)
{
    struct tpv_onnx_model *m;
    int rc = tpv_onnx_model_parse(&m, buf, len, err);
    if (rc)
        return rc;
    rc = check_io(m, err);
    if (!rc)
        rc = choose_params(m, params, nparams, err);
    if (!rc && m->nparams == 0)
        rc = tpv_err_set(err, TPV_EINVAL, "parameters", "the model has no parameters");
    if (rc) {
        tpv_onnx_model_free(m);
        *out = NULL;
        return rc;
    }
    *out = m;
    return TPV_OK;
}

void tpv_onnx_model_free(struct tpv_onnx_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nvalues; i++)
        free(m->values[i].t.data);
    for (size_t i = 0; i < m->nnodes; i++) {
        free(m->nodes[i].in);
        free(m->nodes[i].out);
    }
    free(m->values);
    free(m->nodes);
    free(m->inputs);
    free(m->outputs);
    free(m->params);
    if (m->proto)
        onnx__model_proto__free_unpacked(m->proto, NULL);
    free(m);
}
