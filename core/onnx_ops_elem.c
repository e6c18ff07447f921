/* onnx_ops_elem.c: elementwise operators for the ONNX runtime (onnx_ops.h): activations, Clip,
 * Identity, Dropout, Cast, broadcasting arithmetic, Mod, Expand, Where, comparisons and logic,
 * forward and derivatives.  Normalization and reductions are in core/onnx_ops_norm.c.  The pointwise loops run on the job's threads
 * (tpv_parallel_for) when the tensor is large enough to pay; every element is computed alone, so
 * the results do not depend on the split. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/linalg.h"
#include "core/onnx_attr.h"
#include "core/onnx_kernels.h"
#include "onnx.pb-c.h"

#define IN(k) (k < nd->nin ? in[k] : NULL)

static int need_f64(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *t,
                    unsigned k, struct tpv_err *err)
{
    if (t->dtype != TPV_ONNX_F64)
        return tpv_err_set(err, TPV_EINVAL, nd->name,
                           "node '%s' (%s): input %u must be a float tensor", nd->name,
                           nd->op_type, k);
    return TPV_OK;
}

/* ---- unary ---- */

static int same_shape_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                            struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_set_shape(nd, out[0], in[0]->rank, in[0]->shape, err);
}

static int float_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int rc = need_f64(nd, in[0], 0, err);
    return rc ? rc : same_shape_infer(nd, in, out, err);
}

static int copy_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    memcpy(out[0]->data, in[0]->data, in[0]->numel * 8);
    return TPV_OK;
}

/* Pointwise maps with up to two float attributes. */
enum unary { U_RELU, U_LEAKY, U_SIGMOID, U_TANH, U_SOFTPLUS, U_ELU, U_HSIG, U_HSWISH, U_SQRT,
             U_ERF, U_NEG, U_EXP, U_ABS };

static double softplus(double x)
{
    return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x));
}

static double sigmoid(double x)
{
    return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
}

static enum unary unary_of(const char *op)
{
    static const struct { const char *name; enum unary u; } t[] = {
        {"Relu", U_RELU},     {"LeakyRelu", U_LEAKY},   {"Sigmoid", U_SIGMOID},
        {"Tanh", U_TANH},     {"Softplus", U_SOFTPLUS}, {"Elu", U_ELU},
        {"HardSigmoid", U_HSIG}, {"HardSwish", U_HSWISH}, {"Sqrt", U_SQRT},
        {"Erf", U_ERF},       {"Neg", U_NEG},           {"Exp", U_EXP},
        {"Abs", U_ABS},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(t[i].name, op) == 0)
            return t[i].u;
    return U_RELU;
}

static int unary_params(const struct tpv_onnx_node *nd, enum unary u, double *a, double *b,
                        struct tpv_err *err)
{
    *a = *b = 0;
    switch (u) {
    case U_LEAKY: return tpv_onnx_attr_float(nd, "alpha", 0.01, a, err);
    case U_ELU: return tpv_onnx_attr_float(nd, "alpha", 1.0, a, err);
    case U_HSIG: {
        int rc = tpv_onnx_attr_float(nd, "alpha", 0.2, a, err);
        return rc ? rc : tpv_onnx_attr_float(nd, "beta", 0.5, b, err);
    }
    default: return TPV_OK;
    }
}

static int unary_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    double a, b;
    return unary_params(nd, unary_of(nd->op_type), &a, &b, err);
}

static double unary_apply(enum unary u, double x, double a, double b)
{
    switch (u) {
    case U_RELU: return x > 0 ? x : 0;
    case U_LEAKY: return x >= 0 ? x : a * x;
    case U_SIGMOID: return sigmoid(x);
    case U_TANH: return tanh(x);
    case U_SOFTPLUS: return softplus(x);
    case U_ELU: return x >= 0 ? x : a * expm1(x);
    case U_HSIG: return fmax(0.0, fmin(1.0, a * x + b));
    case U_HSWISH: return x * fmax(0.0, fmin(1.0, x / 6.0 + 0.5));
    case U_SQRT: return sqrt(x);
    case U_ERF: return erf(x);
    case U_NEG: return -x;
    case U_EXP: return exp(x);
    case U_ABS: return fabs(x);
    }
    return x;
}

static double unary_deriv(enum unary u, double x, double y, double a, double b);

/* Flops-equivalent cost of one element of u (the split threshold's unit): transcendental maps
 * cost about ten times the piecewise-linear ones. */
static double unary_cost(enum unary u)
{
    switch (u) {
    case U_RELU: case U_LEAKY: case U_HSIG: case U_HSWISH: case U_NEG: case U_ABS:
        return 2.0;
    case U_SIGMOID: case U_TANH: case U_SOFTPLUS: case U_ELU: case U_SQRT: case U_ERF:
    case U_EXP:
        return 20.0;
    }
    return 20.0;
}

/* One pointwise pass over a range: forward (y = f(x)), reverse (g_in += g_out f'(x), or = for a
 * fresh g_in) or forward mode (t_out = t_in f'(x), 0 without t_in). */
enum upass { UP_FORWARD, UP_VJP, UP_VJP_SET, UP_JVP };

struct unary_job {
    enum unary u;
    enum upass pass;
    double a, b;
    const double *x, *y, *g; /* g: g_out or t_in (may be NULL for UP_JVP) */
    double *dst;
};

static void unary_range(void *ctx, uint64_t first, uint64_t count)
{
    const struct unary_job *j = ctx;
    const double *x = j->x, *y = j->y, *g = j->g;
    double *d = j->dst;
    for (uint64_t i = first; i < first + count; i++)
        switch (j->pass) {
        case UP_FORWARD:
            d[i] = unary_apply(j->u, x[i], j->a, j->b);
            break;
        case UP_VJP:
            d[i] += g[i] * unary_deriv(j->u, x[i], y[i], j->a, j->b);
            break;
        case UP_VJP_SET:
            d[i] = g[i] * unary_deriv(j->u, x[i], y[i], j->a, j->b);
            break;
        case UP_JVP:
            d[i] = g ? g[i] * unary_deriv(j->u, x[i], y[i], j->a, j->b) : 0.0;
            break;
        }
}

/* Relu's reverse pass as one branch-free loop (the per-element switches of unary_range hoisted):
 * g_out times the 0 / 1 unary_deriv gives, the same products. */
static void relu_vjp_range(void *ctx, uint64_t first, uint64_t count)
{
    const struct unary_job *j = ctx;
    const double *x = j->x, *g = j->g;
    double *d = j->dst;
    if (j->pass == UP_VJP_SET)
        for (uint64_t i = first; i < first + count; i++)
            d[i] = g[i] * (x[i] > 0 ? 1.0 : 0.0);
    else
        for (uint64_t i = first; i < first + count; i++)
            d[i] += g[i] * (x[i] > 0 ? 1.0 : 0.0);
}

static void unary_run(struct unary_job *j, uint64_t numel)
{
    if (j->u == U_RELU && (j->pass == UP_VJP || j->pass == UP_VJP_SET)) {
        tpv_parallel_for(numel, unary_cost(j->u), relu_vjp_range, j);
        return;
    }
    tpv_parallel_for(numel, unary_cost(j->u), unary_range, j);
}

static int unary_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    enum unary u = unary_of(nd->op_type);
    double a, b;
    int rc = unary_params(nd, u, &a, &b, err);
    if (rc)
        return rc;
    struct unary_job j = { u, UP_FORWARD, a, b, in[0]->data, NULL, NULL, out[0]->data };
    unary_run(&j, in[0]->numel);
    return TPV_OK;
}

static int clip_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    for (unsigned k = 1; k < 3; k++)
        if (IN(k) && IN(k)->numel != 1)
            return tpv_onnx_shape_error(nd, err, "Clip bound %u must be a scalar", k);
    return float_infer(nd, in, out, err);
}

static int clip_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)err;
    double lo = IN(1) ? tpv_onnx_get_f(IN(1), 0) : -INFINITY;
    double hi = IN(2) ? tpv_onnx_get_f(IN(2), 0) : INFINITY;
    const double *x = in[0]->data;
    double *y = out[0]->data;
    for (uint64_t i = 0; i < in[0]->numel; i++)
        y[i] = x[i] < lo ? lo : x[i] > hi ? hi : x[i];
    return TPV_OK;
}

static int dropout_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    /* training mode with a ratio of 0 (torchvision's Swin passes training=True to a dropout of
     * p 0) drops nothing: the identity too */
    const struct tpv_onnx_tensor *tm = IN(2), *ratio = IN(1);
    bool train = tm && (!tm->data || tm->numel != 1 || tpv_onnx_get_f(tm, 0) != 0);
    bool zero = ratio && ratio->data && ratio->numel == 1 && tpv_onnx_get_f(ratio, 0) == 0;
    if (train && !zero)
        return tpv_err_set(err, TPV_EINVAL, nd->name,
                           "node '%s' (Dropout): only inference (training_mode false, or a "
                           "ratio of 0) is supported",
                           nd->name);
    int rc = same_shape_infer(nd, in, out, err);
    if (!rc && nd->nout > 1 && out[1]) { /* the mask (bool) */
        out[1]->dtype = TPV_ONNX_I64;
        rc = tpv_onnx_set_shape(nd, out[1], in[0]->rank, in[0]->shape, err);
    }
    return rc;
}

/* Inference: the input passes, and the mask (torch exports it for a functional dropout) keeps
 * every element. */
static int dropout_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                           struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)err;
    memcpy(out[0]->data, in[0]->data, in[0]->numel * 8);
    for (uint64_t i = 0; nd->nout > 1 && out[1] && i < out[1]->numel; i++)
        ((int64_t *)out[1]->data)[i] = 1;
    return TPV_OK;
}

/* ---- Cast ---- */

static int cast_target(const struct tpv_onnx_node *nd, enum tpv_onnx_dtype *dt, bool *to_f32,
                       struct tpv_err *err)
{
    int64_t to;
    *dt = TPV_ONNX_F64;
    int rc = tpv_onnx_attr_int(nd, "to", 0, &to, err);
    if (rc)
        return rc;
    *to_f32 = to == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    switch (to) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT:
    case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE:
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16:
    case ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16: *dt = TPV_ONNX_F64; return TPV_OK;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT64:
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT32:
    case ONNX__TENSOR_PROTO__DATA_TYPE__BOOL: *dt = TPV_ONNX_I64; return TPV_OK;
    default:
        return tpv_onnx_attr_unsupported(err, nd, "to",
                                         "element type %lld (float, double, float16, bfloat16, "
                                         "int32, int64 and bool are supported)",
                                         (long long)to);
    }
}

static int cast_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    enum tpv_onnx_dtype dt;
    bool f32;
    return cast_target(nd, &dt, &f32, err);
}

static int cast_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    bool f32;
    int rc = cast_target(nd, &out[0]->dtype, &f32, err);
    return rc ? rc : tpv_onnx_set_shape(nd, out[0], in[0]->rank, in[0]->shape, err);
}

/* Float targets keep float64: the runtime computes every float tensor in float64 (a Cast to
 * float in the data path would otherwise inject float32 rounding into the float64 pass). */
static int cast_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    enum tpv_onnx_dtype dt = TPV_ONNX_F64;
    bool f32 = false;
    int64_t to = 0;
    int rc = cast_target(nd, &dt, &f32, err);
    if (!rc)
        rc = tpv_onnx_attr_int(nd, "to", 0, &to, err);
    if (rc)
        return rc;
    bool to_bool = to == ONNX__TENSOR_PROTO__DATA_TYPE__BOOL;
    for (uint64_t i = 0; i < in[0]->numel; i++) {
        if (to_bool)
            ((int64_t *)out[0]->data)[i] = tpv_onnx_get_f(in[0], i) != 0;
        else if (dt == TPV_ONNX_I64)
            ((int64_t *)out[0]->data)[i] = tpv_onnx_get_i(in[0], i);
        else
            ((double *)out[0]->data)[i] = tpv_onnx_get_f(in[0], i);
    }
    return TPV_OK;
}

/* ---- broadcasting binary arithmetic ---- */

static int binary_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    bool is_pow = strcmp(nd->op_type, "Pow") == 0;
    if (!is_pow && in[0]->dtype != in[1]->dtype)
        return tpv_err_set(err, TPV_EINVAL, nd->name,
                           "node '%s' (%s): inputs of different element types", nd->name,
                           nd->op_type);
    if (is_pow) {
        int rc = need_f64(nd, in[0], 0, err);
        if (rc)
            return rc;
    }
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_broadcast(nd, in[0], in[1], out[0], err);
}

/* Strides of x seen through the broadcast output shape (0 along broadcast dimensions). */
static void bcast_strides(const struct tpv_onnx_tensor *x, const struct tpv_onnx_tensor *o,
                          int64_t *st)
{
    int64_t s = 1;
    for (int i = o->rank - 1; i >= 0; i--) {
        int ix = i - (o->rank - x->rank);
        int64_t d = ix >= 0 ? x->shape[ix] : 1;
        st[i] = d == 1 ? 0 : s;
        s *= d;
    }
}

enum binop { B_ADD, B_SUB, B_MUL, B_DIV, B_POW };

static double fop(enum binop op, double a, double b)
{
    switch (op) {
    case B_ADD: return a + b;
    case B_SUB: return a - b;
    case B_MUL: return a * b;
    case B_DIV: return a / b;
    case B_POW: return pow(a, b);
    }
    return 0;
}

static int64_t iop(enum binop op, int64_t a, int64_t b)
{
    switch (op) {
    case B_ADD: return (int64_t)((uint64_t)a + (uint64_t)b);
    case B_SUB: return (int64_t)((uint64_t)a - (uint64_t)b);
    case B_MUL: return (int64_t)((uint64_t)a * (uint64_t)b);
    case B_DIV: return b == 0 ? 0 : a / b;
    case B_POW: return 0;
    }
    return 0;
}

static int binary_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                          struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)err;
    static const char *names[] = {"Add", "Sub", "Mul", "Div", "Pow"};
    enum binop op = B_ADD;
    for (int i = 0; i < 5; i++)
        if (strcmp(nd->op_type, names[i]) == 0)
            op = (enum binop)i;
    const struct tpv_onnx_tensor *a = in[0], *b = in[1], *o = out[0];
    int64_t sa[TPV_MAX_RANK], sb[TPV_MAX_RANK], idx[TPV_MAX_RANK] = {0};
    bcast_strides(a, o, sa);
    bcast_strides(b, o, sb);
    int r = o->rank;
    int64_t inner = r ? o->shape[r - 1] : 1, ia = r ? sa[r - 1] : 0, ib = r ? sb[r - 1] : 0;
    uint64_t oa = 0, ob = 0;
    bool fl = o->dtype == TPV_ONNX_F64;
    for (uint64_t base = 0; base < o->numel; base += (uint64_t)inner) {
        for (int64_t j = 0; j < inner; j++) {
            uint64_t pa = oa + (uint64_t)(j * ia), pb = ob + (uint64_t)(j * ib);
            if (fl)
                ((double *)o->data)[base + j] =
                    fop(op, ((const double *)a->data)[pa], tpv_onnx_get_f(b, pb));
            else
                ((int64_t *)o->data)[base + j] =
                    iop(op, ((const int64_t *)a->data)[pa], ((const int64_t *)b->data)[pb]);
        }
        /* advance the outer counters (dimensions r-2 .. 0) */
        for (int d = r - 2; d >= 0; d--) {
            idx[d]++;
            oa += (uint64_t)sa[d];
            ob += (uint64_t)sb[d];
            if (idx[d] < o->shape[d])
                break;
            oa -= (uint64_t)(sa[d] * idx[d]);
            ob -= (uint64_t)(sb[d] * idx[d]);
            idx[d] = 0;
        }
    }
    return TPV_OK;
}

/* ---- Expand, Where, Equal (broadcast selection; torchvision's exports need them: a ViT's class
 * token expanded to the batch, masked_fill of a Swin attention mask) ---- */

/* Walks the broadcast output o giving each element's offsets into up to three inputs. */
struct bwalk3 {
    int r, n;
    int64_t st[3][TPV_MAX_RANK], idx[TPV_MAX_RANK];
    uint64_t off[3];
    const struct tpv_onnx_tensor *o;
};

static void bwalk3_init(struct bwalk3 *w, const struct tpv_onnx_tensor *const *x, int n,
                        const struct tpv_onnx_tensor *o)
{
    memset(w, 0, sizeof *w);
    w->r = o->rank;
    w->n = n;
    w->o = o;
    for (int k = 0; k < n; k++)
        bcast_strides(x[k], o, w->st[k]);
}

static void bwalk3_next(struct bwalk3 *w)
{
    for (int d = w->r - 1; d >= 0; d--) {
        w->idx[d]++;
        for (int k = 0; k < w->n; k++)
            w->off[k] += (uint64_t)w->st[k][d];
        if (w->idx[d] < w->o->shape[d])
            return;
        for (int k = 0; k < w->n; k++)
            w->off[k] -= (uint64_t)(w->st[k][d] * w->idx[d]);
        w->idx[d] = 0;
    }
}

static int expand_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    const struct tpv_onnx_tensor *s = in[1];
    if (!s->data)
        return tpv_onnx_need_static(nd, 1, err);
    if (s->dtype != TPV_ONNX_I64 || s->rank != 1 || s->numel > TPV_MAX_RANK)
        return tpv_onnx_shape_error(nd, err, "the shape input must be an int64 list of at most "
                                    "%d dims", TPV_MAX_RANK);
    struct tpv_onnx_tensor want = {.dtype = in[0]->dtype, .rank = (int)s->numel};
    for (uint64_t i = 0; i < s->numel; i++)
        want.shape[i] = ((const int64_t *)s->data)[i];
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_broadcast(nd, in[0], &want, out[0], err);
}

/* Expand and its tangent: each output element is its broadcast input's (8-byte elements). */
static int expand_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                          struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    struct bwalk3 w;
    bwalk3_init(&w, in, 1, out[0]);
    const uint64_t *x = in[0]->data;
    uint64_t *y = out[0]->data;
    for (uint64_t i = 0; i < out[0]->numel; i++, bwalk3_next(&w))
        y[i] = x[w.off[0]];
    return TPV_OK;
}

static int expand_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      const struct tpv_onnx_tensor *const *out, const double *const *gout,
                      double *const *gin, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    if (!gin[0] || !gout[0] || in[0]->dtype != TPV_ONNX_F64)
        return TPV_OK;
    struct bwalk3 w;
    bwalk3_init(&w, in, 1, out[0]);
    for (uint64_t i = 0; i < out[0]->numel; i++, bwalk3_next(&w))
        gin[0][w.off[0]] += gout[0][i];
    return TPV_OK;
}

static int where_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    if (in[0]->dtype != TPV_ONNX_I64 || in[1]->dtype != in[2]->dtype)
        return tpv_err_set(err, TPV_EINVAL, nd->name,
                           "node '%s' (Where): the condition must be bool and X, Y of one type",
                           nd->name);
    struct tpv_onnx_tensor xy;
    int rc = tpv_onnx_broadcast(nd, in[1], in[2], &xy, err);
    if (!rc)
        rc = tpv_onnx_broadcast(nd, in[0], &xy, out[0], err);
    out[0]->dtype = in[1]->dtype;
    return rc;
}

static int where_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    struct bwalk3 w;
    bwalk3_init(&w, in, 3, out[0]);
    const int64_t *c = in[0]->data;
    const uint64_t *x = in[1]->data, *y = in[2]->data;
    uint64_t *o = out[0]->data;
    for (uint64_t i = 0; i < out[0]->numel; i++, bwalk3_next(&w))
        o[i] = c[w.off[0]] ? x[w.off[1]] : y[w.off[2]];
    return TPV_OK;
}

/* Where passes the adjoint to X where the condition holds, to Y elsewhere (a broadcast input
 * collects the entries it was read into). */
static int where_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     const struct tpv_onnx_tensor *const *out, const double *const *gout,
                     double *const *gin, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    if (!gout[0] || out[0]->dtype != TPV_ONNX_F64 || (!gin[1] && !gin[2]))
        return TPV_OK;
    struct bwalk3 w;
    bwalk3_init(&w, in, 3, out[0]);
    const int64_t *c = in[0]->data;
    for (uint64_t i = 0; i < out[0]->numel; i++, bwalk3_next(&w)) {
        double *g = c[w.off[0]] ? gin[1] : gin[2];
        if (g)
            g[w.off[c[w.off[0]] ? 1 : 2]] += gout[0][i];
    }
    return TPV_OK;
}

static int where_jvp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     const struct tpv_onnx_tensor *const *out, const double *const *tin,
                     double *const *tout, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    if (!tout[0] || out[0]->dtype != TPV_ONNX_F64)
        return TPV_OK;
    struct bwalk3 w;
    bwalk3_init(&w, in, 3, out[0]);
    const int64_t *c = in[0]->data;
    for (uint64_t i = 0; i < out[0]->numel; i++, bwalk3_next(&w)) {
        const double *t = c[w.off[0]] ? tin[1] : tin[2];
        tout[0][i] = t ? t[w.off[c[w.off[0]] ? 1 : 2]] : 0.0;
    }
    return TPV_OK;
}

/* ---- comparisons and logic (bool results, as int64 0 / 1): the integer arithmetic torch
 * writes for shapes (floor division: Div, Less, Xor, Not, Equal, And) and masks ---- */

enum cmp { C_EQ, C_LT, C_GT, C_LE, C_GE, C_AND, C_OR, C_XOR };

static enum cmp cmp_of(const char *op)
{
    static const char *names[] = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
                                  "And", "Or", "Xor"};
    for (int i = 0; i < 8; i++)
        if (strcmp(op, names[i]) == 0)
            return (enum cmp)i;
    return C_EQ;
}

static int cmp_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    if (in[0]->dtype != in[1]->dtype || (cmp_of(nd->op_type) >= C_AND &&
                                         in[0]->dtype != TPV_ONNX_I64))
        return tpv_err_set(err, TPV_EINVAL, nd->name,
                           "node '%s' (%s): inputs of different element types (or a float "
                           "input to a logical operator)",
                           nd->name, nd->op_type);
    out[0]->dtype = TPV_ONNX_I64; /* bool */
    return tpv_onnx_broadcast(nd, in[0], in[1], out[0], err);
}

static bool cmp_apply(enum cmp c, double a, double b)
{
    switch (c) {
    case C_EQ: return a == b;
    case C_LT: return a < b;
    case C_GT: return a > b;
    case C_LE: return a <= b;
    case C_GE: return a >= b;
    case C_AND: return a != 0 && b != 0;
    case C_OR: return a != 0 || b != 0;
    case C_XOR: return (a != 0) != (b != 0);
    }
    return false;
}

static bool cmp_apply_i(enum cmp c, int64_t a, int64_t b)
{
    switch (c) {
    case C_EQ: return a == b;
    case C_LT: return a < b;
    case C_GT: return a > b;
    case C_LE: return a <= b;
    case C_GE: return a >= b;
    default: return cmp_apply(c, (double)(a != 0), (double)(b != 0));
    }
}

/* Floats compare as their float64 values (a float32 input's are exact in them). */
static int cmp_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)err;
    enum cmp c = cmp_of(nd->op_type);
    struct bwalk3 w;
    bwalk3_init(&w, in, 2, out[0]);
    bool fl = in[0]->dtype == TPV_ONNX_F64;
    int64_t *o = out[0]->data;
    for (uint64_t i = 0; i < out[0]->numel; i++, bwalk3_next(&w))
        o[i] = fl ? cmp_apply(c, ((const double *)in[0]->data)[w.off[0]],
                              ((const double *)in[1]->data)[w.off[1]])
                  : cmp_apply_i(c, ((const int64_t *)in[0]->data)[w.off[0]],
                                ((const int64_t *)in[1]->data)[w.off[1]]);
    return TPV_OK;
}

static int not_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    if (in[0]->dtype != TPV_ONNX_I64)
        return tpv_err_set(err, TPV_EINVAL, nd->name, "node '%s' (Not): a bool input expected",
                           nd->name);
    return same_shape_infer(nd, in, out, err);
}

static int not_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    for (uint64_t i = 0; i < in[0]->numel; i++)
        ((int64_t *)out[0]->data)[i] = ((const int64_t *)in[0]->data)[i] == 0;
    return TPV_OK;
}

/* ---- Mod (torch's % on shapes; fmod 0: the sign of the divisor, as Python) ---- */

static int mod_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    int64_t f;
    int rc = tpv_onnx_attr_int(nd, "fmod", 0, &f, err);
    if (!rc && f != 0 && f != 1)
        rc = tpv_onnx_attr_unsupported(err, nd, "fmod", "%lld (0 or 1)", (long long)f);
    return rc;
}

static int mod_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int64_t f = 0;
    int rc = tpv_onnx_attr_int(nd, "fmod", 0, &f, err);
    if (rc)
        return rc;
    if (in[0]->dtype != in[1]->dtype || (in[0]->dtype == TPV_ONNX_F64 && !f))
        return tpv_err_set(err, TPV_EINVAL, nd->name,
                           "node '%s' (Mod): inputs of different element types, or float inputs "
                           "without fmod=1", nd->name);
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_broadcast(nd, in[0], in[1], out[0], err);
}

static int64_t mod_i(int64_t a, int64_t b, bool f)
{
    if (b == 0 || (b == -1 && a == INT64_MIN))
        return 0;
    int64_t r = a % b;
    return !f && r != 0 && ((r < 0) != (b < 0)) ? r + b : r;
}

static int mod_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int64_t f = 0;
    int rc = tpv_onnx_attr_int(nd, "fmod", 0, &f, err);
    if (rc)
        return rc;
    struct bwalk3 w;
    bwalk3_init(&w, in, 2, out[0]);
    for (uint64_t i = 0; i < out[0]->numel; i++, bwalk3_next(&w)) {
        if (out[0]->dtype == TPV_ONNX_F64)
            ((double *)out[0]->data)[i] = fmod(((const double *)in[0]->data)[w.off[0]],
                                               ((const double *)in[1]->data)[w.off[1]]);
        else
            ((int64_t *)out[0]->data)[i] = mod_i(((const int64_t *)in[0]->data)[w.off[0]],
                                                 ((const int64_t *)in[1]->data)[w.off[1]], f);
    }
    return TPV_OK;
}

/* fmod(a, b) = a - q b with q = trunc(a / b) piecewise constant: d/da 1, d/db -q. */
static int mod_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                   const struct tpv_onnx_tensor *const *out, const double *const *gout,
                   double *const *gin, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    if (!gout[0] || out[0]->dtype != TPV_ONNX_F64)
        return TPV_OK;
    struct bwalk3 w;
    bwalk3_init(&w, in, 2, out[0]);
    const double *a = in[0]->data, *b = in[1]->data, *y = out[0]->data;
    for (uint64_t i = 0; i < out[0]->numel; i++, bwalk3_next(&w)) {
        if (gin[0])
            gin[0][w.off[0]] += gout[0][i];
        if (gin[1])
            gin[1][w.off[1]] -= gout[0][i] * trunc((a[w.off[0]] - y[i]) / b[w.off[1]]);
    }
    return TPV_OK;
}

static int mod_jvp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                   const struct tpv_onnx_tensor *const *out, const double *const *tin,
                   double *const *tout, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    if (!tout[0] || out[0]->dtype != TPV_ONNX_F64)
        return TPV_OK;
    struct bwalk3 w;
    bwalk3_init(&w, in, 2, out[0]);
    const double *a = in[0]->data, *b = in[1]->data, *y = out[0]->data;
    for (uint64_t i = 0; i < out[0]->numel; i++, bwalk3_next(&w)) {
        double q = trunc((a[w.off[0]] - y[i]) / b[w.off[1]]);
        tout[0][i] = (tin[0] ? tin[0][w.off[0]] : 0.0) - (tin[1] ? q * tin[1][w.off[1]] : 0.0);
    }
    return TPV_OK;
}

/* ==== reverse and forward mode ==== */

#define TIN(k) (k < nd->nin ? tin[k] : NULL)
#define GIN(k) (k < nd->nin ? gin[k] : NULL)

static int pass_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                    const struct tpv_onnx_tensor *const *out, const double *const *gout,
                    double *const *gin, struct tpv_err *err)
{
    (void)nd;
    (void)out;
    (void)err;
    if (!gin[0] || !gout[0] || in[0]->dtype != TPV_ONNX_F64 || out[0]->dtype != TPV_ONNX_F64)
        return TPV_OK;
    for (uint64_t i = 0; i < in[0]->numel; i++)
        gin[0][i] += gout[0][i];
    return TPV_OK;
}

/* d f / d x for the pointwise maps, from x and y = f(x). */
static double unary_deriv(enum unary u, double x, double y, double a, double b)
{
    switch (u) {
    case U_RELU: return x > 0 ? 1.0 : 0.0;
    case U_LEAKY: return x >= 0 ? 1.0 : a;
    case U_SIGMOID: return y * (1.0 - y);
    case U_TANH: return 1.0 - y * y;
    case U_SOFTPLUS: return sigmoid(x);
    case U_ELU: return x >= 0 ? 1.0 : a * exp(x);
    case U_HSIG: {
        double z = a * x + b;
        return z > 0 && z < 1 ? a : 0.0;
    }
    case U_HSWISH: return x < -3 ? 0.0 : x > 3 ? 1.0 : (2.0 * x + 3.0) / 6.0;
    case U_SQRT: return 0.5 / y;
    case U_ERF: return 1.1283791670955126 * exp(-x * x); /* 2 / sqrt(pi) */
    case U_NEG: return -1.0;
    case U_EXP: return y;
    case U_ABS: return x > 0 ? 1.0 : x < 0 ? -1.0 : 0.0;
    }
    return 0.0;
}

static int unary_vjp_set(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         const struct tpv_onnx_tensor *const *out, const double *const *gout,
                         double *const *gin, const bool *fresh, struct tpv_err *err)
{
    enum unary u = unary_of(nd->op_type);
    double a, b;
    int rc = unary_params(nd, u, &a, &b, err);
    bool set = fresh && fresh[0];
    if (!rc && gin[0] && !gout[0] && set)
        memset(gin[0], 0, in[0]->numel * sizeof *gin[0]);
    if (rc || !gin[0] || !gout[0])
        return rc;
    struct unary_job j = { u, set ? UP_VJP_SET : UP_VJP, a, b, in[0]->data, out[0]->data,
                           gout[0], gin[0] };
    unary_run(&j, in[0]->numel);
    return TPV_OK;
}

static int unary_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     const struct tpv_onnx_tensor *const *out, const double *const *gout,
                     double *const *gin, struct tpv_err *err)
{
    return unary_vjp_set(nd, in, out, gout, gin, NULL, err);
}

static int unary_jvp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     const struct tpv_onnx_tensor *const *out, const double *const *tin,
                     double *const *tout, struct tpv_err *err)
{
    enum unary u = unary_of(nd->op_type);
    double a, b;
    int rc = unary_params(nd, u, &a, &b, err);
    if (rc || !tout[0])
        return rc;
    struct unary_job j = { u, UP_JVP, a, b, in[0]->data, out[0]->data, tin[0], tout[0] };
    unary_run(&j, in[0]->numel);
    return TPV_OK;
}

/* Clip passes the gradient where lo <= x <= hi (PyTorch's clamp); below and above, y is the
 * bound, whose gradient (when it is a float input) collects it. */
static int clip_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                    const struct tpv_onnx_tensor *const *out, const double *const *gout,
                    double *const *gin, struct tpv_err *err)
{
    (void)out;
    (void)err;
    double lo = IN(1) ? tpv_onnx_get_f(IN(1), 0) : -INFINITY;
    double hi = IN(2) ? tpv_onnx_get_f(IN(2), 0) : INFINITY;
    double *glo = IN(1) && IN(1)->dtype == TPV_ONNX_F64 ? gin[1] : NULL;
    double *ghi = IN(2) && IN(2)->dtype == TPV_ONNX_F64 ? gin[2] : NULL;
    const double *x = in[0]->data;
    if (!gout[0])
        return TPV_OK;
    for (uint64_t i = 0; i < in[0]->numel; i++) {
        if (x[i] < lo) {
            if (glo)
                *glo += gout[0][i];
        } else if (x[i] > hi) {
            if (ghi)
                *ghi += gout[0][i];
        } else if (gin[0]) {
            gin[0][i] += gout[0][i];
        }
    }
    return TPV_OK;
}

static int clip_jvp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                    const struct tpv_onnx_tensor *const *out, const double *const *tin,
                    double *const *tout, struct tpv_err *err)
{
    (void)out;
    (void)err;
    double lo = IN(1) ? tpv_onnx_get_f(IN(1), 0) : -INFINITY;
    double hi = IN(2) ? tpv_onnx_get_f(IN(2), 0) : INFINITY;
    const double *tlo = IN(1) && IN(1)->dtype == TPV_ONNX_F64 ? tin[1] : NULL;
    const double *thi = IN(2) && IN(2)->dtype == TPV_ONNX_F64 ? tin[2] : NULL;
    const double *x = in[0]->data;
    if (!tout[0])
        return TPV_OK;
    for (uint64_t i = 0; i < in[0]->numel; i++)
        tout[0][i] = x[i] < lo   ? (tlo ? tlo[0] : 0.0)
                     : x[i] > hi ? (thi ? thi[0] : 0.0)
                                 : (tin[0] ? tin[0][i] : 0.0);
    return TPV_OK;
}

/* Cast between float types: derivative 1 (the rounding of a cast to float is not differentiated). */
static int cast_jvp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                    const struct tpv_onnx_tensor *const *out, const double *const *tin,
                    double *const *tout, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    if (!tout[0] || out[0]->dtype != TPV_ONNX_F64)
        return TPV_OK;
    for (uint64_t i = 0; i < out[0]->numel; i++)
        tout[0][i] = in[0]->dtype == TPV_ONNX_F64 && tin[0] ? tin[0][i] : 0.0;
    return TPV_OK;
}

/* Walks a broadcast output, giving each element's offsets into a and b. */
struct bwalk {
    int r;
    int64_t sa[TPV_MAX_RANK], sb[TPV_MAX_RANK], idx[TPV_MAX_RANK];
    uint64_t pa, pb;
    const struct tpv_onnx_tensor *o;
};

static void bwalk_init(struct bwalk *w, const struct tpv_onnx_tensor *a,
                       const struct tpv_onnx_tensor *b, const struct tpv_onnx_tensor *o)
{
    memset(w, 0, sizeof *w);
    w->r = o->rank;
    w->o = o;
    bcast_strides(a, o, w->sa);
    bcast_strides(b, o, w->sb);
}

static void bwalk_next(struct bwalk *w)
{
    for (int d = w->r - 1; d >= 0; d--) {
        w->idx[d]++;
        w->pa += (uint64_t)w->sa[d];
        w->pb += (uint64_t)w->sb[d];
        if (w->idx[d] < w->o->shape[d])
            return;
        w->pa -= (uint64_t)(w->sa[d] * w->idx[d]);
        w->pb -= (uint64_t)(w->sb[d] * w->idx[d]);
        w->idx[d] = 0;
    }
}

/* Partial derivatives of a op b. */
static void bin_deriv(enum binop op, double a, double b, double y, double *da, double *db)
{
    switch (op) {
    case B_ADD: *da = 1, *db = 1; return;
    case B_SUB: *da = 1, *db = -1; return;
    case B_MUL: *da = b, *db = a; return;
    case B_DIV: *da = 1 / b, *db = -a / (b * b); return;
    case B_POW:
        *da = b == 0 ? 0.0 : b * pow(a, b - 1);
        *db = a > 0 ? log(a) * y : 0.0;
        return;
    }
}

static enum binop binop_of(const char *op)
{
    static const char *names[] = {"Add", "Sub", "Mul", "Div", "Pow"};
    for (int i = 0; i < 5; i++)
        if (strcmp(op, names[i]) == 0)
            return (enum binop)i;
    return B_ADD;
}

/* g (+)= s gy over n entries: the products gy 1 and gy (-1) are exact, so Add's and Sub's
 * adjoints are these plain loops, the same bits as bin_deriv's. */
static void add_scaled(double *g, const double *gy, double s, uint64_t n, bool set)
{
    if (set)
        for (uint64_t i = 0; i < n; i++)
            g[i] = gy[i] * s;
    else
        for (uint64_t i = 0; i < n; i++)
            g[i] += gy[i] * s;
}

/* g (+)= gy f elementwise (Mul's adjoints). */
static void add_product(double *g, const double *gy, const double *f, uint64_t n, bool set)
{
    if (set)
        for (uint64_t i = 0; i < n; i++)
            g[i] = gy[i] * f[i];
    else
        for (uint64_t i = 0; i < n; i++)
            g[i] += gy[i] * f[i];
}

/* Both operands of the output's shape (no broadcast): Add, Sub and Mul as plain loops, the
 * others by bin_deriv without the broadcast walk; the same products and sums as the walk. */
static void binary_vjp_same(enum binop op, const double *a, const double *b, const double *y,
                            const double *gy, uint64_t n, double *ga, double *gb, bool seta,
                            bool setb)
{
    switch (op) {
    case B_ADD: case B_SUB:
        if (ga)
            add_scaled(ga, gy, 1.0, n, seta);
        if (gb)
            add_scaled(gb, gy, op == B_ADD ? 1.0 : -1.0, n, setb);
        return;
    case B_MUL:
        if (ga)
            add_product(ga, gy, b, n, seta);
        if (gb)
            add_product(gb, gy, a, n, setb);
        return;
    case B_DIV: case B_POW:
        for (uint64_t i = 0; i < n; i++) {
            double da, db;
            bin_deriv(op, a[i], b[i], y[i], &da, &db);
            if (ga)
                ga[i] = (seta ? 0.0 : ga[i]) + gy[i] * da;
            if (gb)
                gb[i] = (setb ? 0.0 : gb[i]) + gy[i] * db;
        }
        return;
    }
}

static int binary_vjp_set(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                          const struct tpv_onnx_tensor *const *out, const double *const *gout,
                          double *const *gin, const bool *fresh, struct tpv_err *err)
{
    (void)err;
    const struct tpv_onnx_tensor *a = in[0], *b = in[1], *o = out[0];
    double *ga = a->dtype == TPV_ONNX_F64 ? gin[0] : NULL;
    double *gb = b->dtype == TPV_ONNX_F64 ? gin[1] : NULL;
    bool seta = fresh && fresh[0] && ga, setb = fresh && fresh[1] && gb;
    if (o->dtype != TPV_ONNX_F64 || !gout[0]) {
        if (seta)
            memset(ga, 0, a->numel * sizeof *ga);
        if (setb)
            memset(gb, 0, b->numel * sizeof *gb);
        return TPV_OK;
    }
    enum binop op = binop_of(nd->op_type);
    if (a->dtype == TPV_ONNX_F64 && b->dtype == TPV_ONNX_F64 && a->numel == o->numel &&
        b->numel == o->numel) {
        binary_vjp_same(op, a->data, b->data, o->data, gout[0], o->numel, ga, gb, seta, setb);
        return TPV_OK;
    }
    if (seta) /* broadcast: an input entry collects several outputs' terms */
        memset(ga, 0, a->numel * sizeof *ga);
    if (setb)
        memset(gb, 0, b->numel * sizeof *gb);
    struct bwalk w;
    bwalk_init(&w, a, b, o);
    const double *y = o->data;
    for (uint64_t i = 0; i < o->numel; i++, bwalk_next(&w)) {
        double da, db;
        bin_deriv(op, ((const double *)a->data)[w.pa], tpv_onnx_get_f(b, w.pb), y[i], &da, &db);
        if (ga)
            ga[w.pa] += gout[0][i] * da;
        if (gb)
            gb[w.pb] += gout[0][i] * db;
    }
    return TPV_OK;
}

static int binary_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      const struct tpv_onnx_tensor *const *out, const double *const *gout,
                      double *const *gin, struct tpv_err *err)
{
    return binary_vjp_set(nd, in, out, gout, gin, NULL, err);
}

static int binary_jvp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      const struct tpv_onnx_tensor *const *out, const double *const *tin,
                      double *const *tout, struct tpv_err *err)
{
    (void)err;
    const struct tpv_onnx_tensor *a = in[0], *b = in[1], *o = out[0];
    if (!tout[0])
        return TPV_OK;
    const double *ta = a->dtype == TPV_ONNX_F64 ? tin[0] : NULL;
    const double *tb = b->dtype == TPV_ONNX_F64 ? tin[1] : NULL;
    enum binop op = binop_of(nd->op_type);
    struct bwalk w;
    bwalk_init(&w, a, b, o);
    const double *y = o->data;
    for (uint64_t i = 0; i < o->numel; i++, bwalk_next(&w)) {
        double da, db;
        bin_deriv(op, ((const double *)a->data)[w.pa], tpv_onnx_get_f(b, w.pb), y[i], &da, &db);
        tout[0][i] = (ta ? da * ta[w.pa] : 0.0) + (tb ? db * tb[w.pb] : 0.0);
    }
    return TPV_OK;
}

/* The pointwise families' rows: every unary and binary operator shares its kernels (the op is
 * told apart by its op_type inside them). */
#define UNARY_OP(name, check)                                                                   \
    { name, 1, 1, 1, 1, check, float_infer, unary_forward, unary_vjp, unary_jvp, unary_vjp_set }
#define BINARY_OP(name)                                                                         \
    { name, 2, 2, 1, 1, NULL, binary_infer, binary_forward, binary_vjp, binary_jvp,            \
      binary_vjp_set }

const struct tpv_onnx_op tpv_onnx_ops_elem[] = {
    UNARY_OP("Relu", NULL),
    UNARY_OP("LeakyRelu", unary_check),
    UNARY_OP("Sigmoid", NULL),
    UNARY_OP("Tanh", NULL),
    UNARY_OP("Softplus", NULL),
    UNARY_OP("Elu", unary_check),
    UNARY_OP("HardSigmoid", unary_check),
    UNARY_OP("HardSwish", NULL),
    UNARY_OP("Sqrt", NULL),
    UNARY_OP("Erf", NULL),
    UNARY_OP("Neg", NULL),
    UNARY_OP("Exp", NULL),
    UNARY_OP("Abs", NULL),
    {"Identity", 1, 1, 1, 1, NULL, same_shape_infer, copy_forward, pass_vjp, tpv_onnx_jvp_linear},
    {"Dropout", 1, 3, 1, 2, NULL, dropout_infer, dropout_forward, pass_vjp, tpv_onnx_jvp_linear},
    {"Clip", 1, 3, 1, 1, NULL, clip_infer, clip_forward, clip_vjp, clip_jvp},
    {"Cast", 1, 1, 1, 1, cast_check, cast_infer, cast_forward, pass_vjp, cast_jvp},
    BINARY_OP("Add"),
    BINARY_OP("Sub"),
    BINARY_OP("Mul"),
    BINARY_OP("Div"),
    BINARY_OP("Pow"),
    {"Expand", 2, 2, 1, 1, NULL, expand_infer, expand_forward, expand_vjp, tpv_onnx_jvp_linear},
    {"Where", 3, 3, 1, 1, NULL, where_infer, where_forward, where_vjp, where_jvp},
#define CMP_OP(name) { name, 2, 2, 1, 1, NULL, cmp_infer, cmp_forward, NULL, NULL }
    CMP_OP("Equal"),
    CMP_OP("Less"),
    CMP_OP("Greater"),
    CMP_OP("LessOrEqual"),
    CMP_OP("GreaterOrEqual"),
    CMP_OP("And"),
    CMP_OP("Or"),
    CMP_OP("Xor"),
    {"Not", 1, 1, 1, 1, NULL, not_infer, not_forward, NULL, NULL},
    {"Mod", 2, 2, 1, 1, mod_check, mod_infer, mod_forward, mod_vjp, mod_jvp},
};
const size_t tpv_onnx_ops_elem_n = sizeof tpv_onnx_ops_elem / sizeof tpv_onnx_ops_elem[0];
