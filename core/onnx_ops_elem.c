/* onnx_ops_elem.c: elementwise operators (activations, broadcasting arithmetic, Cast), batch and
 * layer normalization, Softmax and ReduceMean for the ONNX runtime (onnx_ops.h). */
#include <math.h>
#include <string.h>

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

static int unary_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    enum unary u = unary_of(nd->op_type);
    double a, b;
    int rc = unary_params(nd, u, &a, &b, err);
    if (rc)
        return rc;
    const double *x = in[0]->data;
    double *y = out[0]->data;
    for (uint64_t i = 0; i < in[0]->numel; i++)
        y[i] = unary_apply(u, x[i], a, b);
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
    const struct tpv_onnx_tensor *tm = IN(2);
    if (tm && (!tm->data || tm->numel != 1 || tpv_onnx_get_f(tm, 0) != 0))
        return tpv_err_set(err, TPV_EINVAL, nd->name,
                           "node '%s' (Dropout): only inference (training_mode false) is "
                           "supported",
                           nd->name);
    return same_shape_infer(nd, in, out, err);
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
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT32: *dt = TPV_ONNX_I64; return TPV_OK;
    default:
        return tpv_onnx_attr_unsupported(err, nd, "to",
                                         "element type %lld (float, double, float16, bfloat16, "
                                         "int32 and int64 are supported)",
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
    int rc = cast_target(nd, &dt, &f32, err);
    if (rc)
        return rc;
    for (uint64_t i = 0; i < in[0]->numel; i++) {
        if (dt == TPV_ONNX_I64)
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

/* ---- BatchNormalization (inference) ---- */

static int bn_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    int64_t tm;
    double eps;
    int rc = tpv_onnx_attr_int(nd, "training_mode", 0, &tm, err);
    if (!rc && tm != 0)
        rc = tpv_onnx_attr_unsupported(err, nd, "training_mode",
                                       "%lld (only inference, 0, is supported)", (long long)tm);
    return rc ? rc : tpv_onnx_attr_float(nd, "epsilon", 1e-5, &eps, err);
}

static int bn_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                    struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    if (in[0]->rank < 2)
        return tpv_onnx_shape_error(nd, err, "input of rank %d (at least 2)", in[0]->rank);
    for (unsigned k = 1; k < 5; k++) {
        int rc = need_f64(nd, in[k], k, err);
        if (rc)
            return rc;
        if (in[k]->rank != 1 || in[k]->shape[0] != in[0]->shape[1])
            return tpv_onnx_shape_error(nd, err, "input %u must have %lld entries (the channels)",
                                        k, (long long)in[0]->shape[1]);
    }
    return float_infer(nd, in, out, err);
}

static int bn_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    double eps;
    int rc = tpv_onnx_attr_float(nd, "epsilon", 1e-5, &eps, err);
    if (rc)
        return rc;
    const double *x = in[0]->data, *sc = in[1]->data, *bi = in[2]->data, *mu = in[3]->data,
                 *var = in[4]->data;
    double *y = out[0]->data;
    int64_t N = in[0]->shape[0], C = in[0]->shape[1];
    int64_t NC = N * C, S = NC ? (int64_t)in[0]->numel / NC : 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            double g = sc[c] / sqrt(var[c] + eps), h = bi[c] - mu[c] * g;
            const double *xp = x + (n * C + c) * S;
            double *yp = y + (n * C + c) * S;
            for (int64_t s = 0; s < S; s++)
                yp[s] = xp[s] * g + h;
        }
    return TPV_OK;
}

/* ---- Softmax (opset 13: one axis) ---- */

static void split_axis(const struct tpv_onnx_tensor *t, int axis, int64_t *outer, int64_t *len,
                       int64_t *inner)
{
    *outer = *inner = 1;
    for (int i = 0; i < axis; i++)
        *outer *= t->shape[i];
    *len = t->shape[axis];
    for (int i = axis + 1; i < t->rank; i++)
        *inner *= t->shape[i];
}

static int softmax_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int64_t axis;
    int ax;
    int rc = tpv_onnx_attr_int(nd, "axis", -1, &axis, err);
    if (!rc)
        rc = tpv_onnx_axis(nd, axis, in[0]->rank, "axis", &ax, err);
    return rc ? rc : float_infer(nd, in, out, err);
}

static int softmax_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                           struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int64_t axis, outer, len, inner;
    int ax;
    int rc = tpv_onnx_attr_int(nd, "axis", -1, &axis, err);
    if (!rc)
        rc = tpv_onnx_axis(nd, axis, in[0]->rank, "axis", &ax, err);
    if (rc)
        return rc;
    split_axis(in[0], ax, &outer, &len, &inner);
    const double *x = in[0]->data;
    double *y = out[0]->data;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            const double *xp = x + o * len * inner + i;
            double *yp = y + o * len * inner + i;
            double mx = -INFINITY, s = 0;
            for (int64_t k = 0; k < len; k++)
                mx = fmax(mx, xp[k * inner]);
            for (int64_t k = 0; k < len; k++)
                s += (yp[k * inner] = exp(xp[k * inner] - mx));
            for (int64_t k = 0; k < len; k++)
                yp[k * inner] /= s;
        }
    return TPV_OK;
}

/* ---- LayerNormalization (opset 17) ---- */

static int ln_axis(const struct tpv_onnx_node *nd, int rank, int *ax, double *eps,
                   struct tpv_err *err)
{
    int64_t axis;
    int rc = tpv_onnx_attr_int(nd, "axis", -1, &axis, err);
    if (!rc)
        rc = tpv_onnx_attr_float(nd, "epsilon", 1e-5, eps, err);
    return rc ? rc : tpv_onnx_axis(nd, axis, rank, "axis", ax, err);
}

/* The normalized dims' element count, checking that t broadcasts onto them. */
static int ln_param_ok(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *x, int ax,
                       const struct tpv_onnx_tensor *t, unsigned k, struct tpv_err *err)
{
    int rc = need_f64(nd, t, k, err);
    if (rc)
        return rc;
    int nr = x->rank - ax;
    if (t->rank > nr)
        return tpv_onnx_shape_error(nd, err, "input %u has rank %d (at most %d)", k, t->rank, nr);
    for (int i = 0; i < t->rank; i++) {
        int64_t want = x->shape[x->rank - t->rank + i];
        if (t->shape[i] != want && t->shape[i] != 1)
            return tpv_onnx_shape_error(nd, err, "input %u does not broadcast onto the normalized "
                                        "dimensions", k);
    }
    return TPV_OK;
}

static int ln_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                    struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int ax;
    double eps;
    int rc = need_f64(nd, in[0], 0, err);
    if (!rc)
        rc = ln_axis(nd, in[0]->rank, &ax, &eps, err);
    if (!rc)
        rc = ln_param_ok(nd, in[0], ax, in[1], 1, err);
    if (!rc && IN(2))
        rc = ln_param_ok(nd, in[0], ax, in[2], 2, err);
    if (!rc)
        rc = float_infer(nd, in, out, err);
    int64_t s[TPV_MAX_RANK];
    for (int i = 0; i < in[0]->rank; i++)
        s[i] = i < ax ? in[0]->shape[i] : 1;
    for (unsigned k = 1; !rc && k < nd->nout; k++)
        if (out[k]) {
            out[k]->dtype = TPV_ONNX_F64;
            rc = tpv_onnx_set_shape(nd, out[k], in[0]->rank, s, err);
        }
    return rc;
}

/* Element j of the normalized block from a parameter broadcast onto it (trailing alignment). */
static double ln_param(const struct tpv_onnx_tensor *x, int ax, const struct tpv_onnx_tensor *t,
                       int64_t j)
{
    if (t->numel == 1)
        return ((const double *)t->data)[0];
    int64_t off = 0, mul = 1;
    for (int i = x->rank - 1, ti = t->rank - 1; i >= ax; i--, ti--) {
        int64_t d = x->shape[i], c = j % d;
        j /= d;
        if (ti >= 0 && t->shape[ti] != 1) {
            off += c * mul;
            mul *= t->shape[ti];
        }
    }
    return ((const double *)t->data)[off];
}

static int ln_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int ax;
    double eps;
    int rc = ln_axis(nd, in[0]->rank, &ax, &eps, err);
    if (rc)
        return rc;
    int64_t outer = 1, len = 1;
    for (int i = 0; i < in[0]->rank; i++)
        *(i < ax ? &outer : &len) *= in[0]->shape[i];
    const double *x = in[0]->data;
    double *y = out[0]->data;
    for (int64_t o = 0; o < outer; o++) {
        const double *xp = x + o * len;
        double mu = 0, var = 0;
        for (int64_t j = 0; j < len; j++)
            mu += xp[j];
        mu /= (double)len;
        for (int64_t j = 0; j < len; j++)
            var += (xp[j] - mu) * (xp[j] - mu);
        var /= (double)len;
        double is = 1.0 / sqrt(var + eps);
        for (int64_t j = 0; j < len; j++) {
            double v = (xp[j] - mu) * is * ln_param(in[0], ax, in[1], j);
            y[o * len + j] = IN(2) ? v + ln_param(in[0], ax, in[2], j) : v;
        }
        if (nd->nout > 1 && out[1])
            ((double *)out[1]->data)[o] = mu;
        if (nd->nout > 2 && out[2])
            ((double *)out[2]->data)[o] = is;
    }
    return TPV_OK;
}

/* ---- ReduceMean (opset 13: axes attribute) ---- */

static int reduce_axes(const struct tpv_onnx_node *nd, int rank, bool *red, bool *keep,
                       struct tpv_err *err)
{
    int64_t axes[TPV_MAX_RANK], kd;
    size_t n;
    int rc = tpv_onnx_attr_ints(nd, "axes", axes, TPV_MAX_RANK, &n, err);
    if (!rc)
        rc = tpv_onnx_attr_int(nd, "keepdims", 1, &kd, err);
    if (rc)
        return rc;
    *keep = kd != 0;
    for (int i = 0; i < rank; i++)
        red[i] = n == 0;
    for (size_t i = 0; i < n; i++) {
        int a;
        rc = tpv_onnx_axis(nd, axes[i], rank, "axes", &a, err);
        if (rc)
            return rc;
        red[a] = true;
    }
    return TPV_OK;
}

static int reduce_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    bool red[TPV_MAX_RANK], keep;
    int rc = need_f64(nd, in[0], 0, err);
    if (!rc)
        rc = reduce_axes(nd, in[0]->rank, red, &keep, err);
    if (rc)
        return rc;
    int64_t s[TPV_MAX_RANK];
    int r = 0;
    for (int i = 0; i < in[0]->rank; i++)
        if (!red[i])
            s[r++] = in[0]->shape[i];
        else if (keep)
            s[r++] = 1;
    out[0]->dtype = TPV_ONNX_F64;
    return tpv_onnx_set_shape(nd, out[0], r, s, err);
}

static int reduce_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                          struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    bool red[TPV_MAX_RANK], keep;
    int rc = reduce_axes(nd, in[0]->rank, red, &keep, err);
    if (rc)
        return rc;
    const struct tpv_onnx_tensor *x = in[0];
    /* output stride of each input dimension (0 along reduced ones) */
    int64_t ost[TPV_MAX_RANK], s = 1, idx[TPV_MAX_RANK] = {0};
    for (int i = x->rank - 1; i >= 0; i--) {
        ost[i] = red[i] ? 0 : s;
        s *= red[i] ? 1 : x->shape[i];
    }
    double *y = out[0]->data;
    memset(y, 0, out[0]->numel * sizeof *y);
    const double *xp = x->data;
    uint64_t o = 0;
    for (uint64_t i = 0; i < x->numel; i++) {
        y[o] += xp[i];
        for (int d = x->rank - 1; d >= 0; d--) {
            idx[d]++;
            o += (uint64_t)ost[d];
            if (idx[d] < x->shape[d])
                break;
            o -= (uint64_t)(ost[d] * idx[d]);
            idx[d] = 0;
        }
    }
    double cnt = out[0]->numel ? (double)x->numel / (double)out[0]->numel : 1;
    for (uint64_t i = 0; i < out[0]->numel; i++)
        y[i] /= cnt;
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

static int unary_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     const struct tpv_onnx_tensor *const *out, const double *const *gout,
                     double *const *gin, struct tpv_err *err)
{
    enum unary u = unary_of(nd->op_type);
    double a, b;
    int rc = unary_params(nd, u, &a, &b, err);
    if (rc || !gin[0] || !gout[0])
        return rc;
    const double *x = in[0]->data, *y = out[0]->data;
    for (uint64_t i = 0; i < in[0]->numel; i++)
        gin[0][i] += gout[0][i] * unary_deriv(u, x[i], y[i], a, b);
    return TPV_OK;
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
    const double *x = in[0]->data, *y = out[0]->data;
    for (uint64_t i = 0; i < in[0]->numel; i++)
        tout[0][i] = tin[0] ? tin[0][i] * unary_deriv(u, x[i], y[i], a, b) : 0.0;
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

static int binary_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      const struct tpv_onnx_tensor *const *out, const double *const *gout,
                      double *const *gin, struct tpv_err *err)
{
    (void)err;
    const struct tpv_onnx_tensor *a = in[0], *b = in[1], *o = out[0];
    if (o->dtype != TPV_ONNX_F64 || !gout[0])
        return TPV_OK;
    double *ga = a->dtype == TPV_ONNX_F64 ? gin[0] : NULL;
    double *gb = b->dtype == TPV_ONNX_F64 ? gin[1] : NULL;
    enum binop op = binop_of(nd->op_type);
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

/* BatchNormalization: y = (x - mu) g + B with g = s / sqrt(var + eps). */
static int bn_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                  const struct tpv_onnx_tensor *const *out, const double *const *gout,
                  double *const *gin, struct tpv_err *err)
{
    (void)out;
    double eps;
    int rc = tpv_onnx_attr_float(nd, "epsilon", 1e-5, &eps, err);
    if (rc || !gout[0])
        return rc;
    const double *x = in[0]->data, *sc = in[1]->data, *mu = in[3]->data, *var = in[4]->data;
    int64_t N = in[0]->shape[0], C = in[0]->shape[1], NC = N * C;
    int64_t S = NC ? (int64_t)in[0]->numel / NC : 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            double is = 1.0 / sqrt(var[c] + eps), g = sc[c] * is;
            const double *xp = x + (n * C + c) * S, *gp = gout[0] + (n * C + c) * S;
            double sg = 0, sgx = 0;
            for (int64_t s = 0; s < S; s++) {
                sg += gp[s];
                sgx += gp[s] * (xp[s] - mu[c]);
                if (gin[0])
                    gin[0][(n * C + c) * S + s] += gp[s] * g;
            }
            if (gin[1])
                gin[1][c] += sgx * is;
            if (gin[2])
                gin[2][c] += sg;
            if (gin[3])
                gin[3][c] -= sg * g;
            if (gin[4])
                gin[4][c] -= 0.5 * sgx * sc[c] * is * is * is;
        }
    return TPV_OK;
}

static int bn_jvp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                  const struct tpv_onnx_tensor *const *out, const double *const *tin,
                  double *const *tout, struct tpv_err *err)
{
    (void)out;
    double eps;
    int rc = tpv_onnx_attr_float(nd, "epsilon", 1e-5, &eps, err);
    if (rc || !tout[0])
        return rc;
    const double *x = in[0]->data, *sc = in[1]->data, *mu = in[3]->data, *var = in[4]->data;
    int64_t N = in[0]->shape[0], C = in[0]->shape[1], NC = N * C;
    int64_t S = NC ? (int64_t)in[0]->numel / NC : 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            double is = 1.0 / sqrt(var[c] + eps), g = sc[c] * is;
            double dg = (tin[1] ? tin[1][c] * is : 0.0) -
                        (tin[4] ? 0.5 * tin[4][c] * sc[c] * is * is * is : 0.0);
            double dh = (tin[2] ? tin[2][c] : 0.0) - (tin[3] ? tin[3][c] * g : 0.0);
            for (int64_t s = 0; s < S; s++) {
                int64_t i = (n * C + c) * S + s;
                tout[0][i] = (tin[0] ? tin[0][i] * g : 0.0) + (x[i] - mu[c]) * dg + dh;
            }
        }
    return TPV_OK;
}

/* Softmax: dy = y (t - <t, y>) along the axis; the VJP has the same form. */
static int softmax_lin(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       const struct tpv_onnx_tensor *const *out, const double *t, double *res,
                       bool accumulate, struct tpv_err *err)
{
    int64_t axis, outer, len, inner;
    int ax;
    int rc = tpv_onnx_attr_int(nd, "axis", -1, &axis, err);
    if (!rc)
        rc = tpv_onnx_axis(nd, axis, in[0]->rank, "axis", &ax, err);
    if (rc)
        return rc;
    split_axis(in[0], ax, &outer, &len, &inner);
    const double *y = out[0]->data;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            int64_t base = o * len * inner + i;
            double dot = 0;
            for (int64_t k = 0; k < len; k++)
                dot += (t ? t[base + k * inner] : 0.0) * y[base + k * inner];
            for (int64_t k = 0; k < len; k++) {
                int64_t j = base + k * inner;
                double v = y[j] * ((t ? t[j] : 0.0) - dot);
                res[j] = accumulate ? res[j] + v : v;
            }
        }
    return TPV_OK;
}

static int softmax_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       const struct tpv_onnx_tensor *const *out, const double *const *gout,
                       double *const *gin, struct tpv_err *err)
{
    if (!gin[0] || !gout[0])
        return TPV_OK;
    return softmax_lin(nd, in, out, gout[0], gin[0], true, err);
}

static int softmax_jvp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       const struct tpv_onnx_tensor *const *out, const double *const *tin,
                       double *const *tout, struct tpv_err *err)
{
    if (!tout[0])
        return TPV_OK;
    return softmax_lin(nd, in, out, tin[0], tout[0], false, err);
}

/* Offset into a LayerNorm parameter broadcast onto the normalized block, for element j. */
static int64_t ln_off(const struct tpv_onnx_tensor *x, int ax, const struct tpv_onnx_tensor *t,
                      int64_t j)
{
    if (t->numel == 1)
        return 0;
    int64_t off = 0, mul = 1;
    for (int i = x->rank - 1, ti = t->rank - 1; i >= ax; i--, ti--) {
        int64_t d = x->shape[i], c = j % d;
        j /= d;
        if (ti >= 0 && t->shape[ti] != 1) {
            off += c * mul;
            mul *= t->shape[ti];
        }
    }
    return off;
}

struct ln_row {
    int64_t outer, len;
    int ax;
    double eps;
};

static int ln_rows(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *x,
                   struct ln_row *r, struct tpv_err *err)
{
    int rc = ln_axis(nd, x->rank, &r->ax, &r->eps, err);
    r->outer = r->len = 1;
    for (int i = 0; i < x->rank; i++)
        *(i < r->ax ? &r->outer : &r->len) *= x->shape[i];
    return rc;
}

static void ln_stats(const double *xp, int64_t len, double eps, double *mu, double *is)
{
    double m = 0, v = 0;
    for (int64_t j = 0; j < len; j++)
        m += xp[j];
    m /= (double)len;
    for (int64_t j = 0; j < len; j++)
        v += (xp[j] - m) * (xp[j] - m);
    v /= (double)len;
    *mu = m;
    *is = 1.0 / sqrt(v + eps);
}

static int ln_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                  const struct tpv_onnx_tensor *const *out, const double *const *gout,
                  double *const *gin, struct tpv_err *err)
{
    (void)out;
    struct ln_row r;
    int rc = ln_rows(nd, in[0], &r, err);
    if (rc)
        return rc;
    const double *gm = nd->nout > 1 ? gout[1] : NULL, *gs = nd->nout > 2 ? gout[2] : NULL;
    const double *x = in[0]->data, *s = in[1]->data;
    for (int64_t o = 0; o < r.outer; o++) {
        const double *xp = x + o * r.len, *gp = gout[0] ? gout[0] + o * r.len : NULL;
        double mu, is, m1 = 0, m2 = 0, L = (double)r.len;
        ln_stats(xp, r.len, r.eps, &mu, &is);
        for (int64_t j = 0; gp && j < r.len; j++) {
            double xh = (xp[j] - mu) * is, gx = gp[j] * s[ln_off(in[0], r.ax, in[1], j)];
            m1 += gx;
            m2 += gx * xh;
            if (GIN(1))
                gin[1][ln_off(in[0], r.ax, in[1], j)] += gp[j] * xh;
            if (GIN(2) && IN(2))
                gin[2][ln_off(in[0], r.ax, in[2], j)] += gp[j];
        }
        if (!gin[0])
            continue;
        m1 /= L;
        m2 /= L;
        double gmu = gm ? gm[o] : 0.0, gis = gs ? gs[o] : 0.0;
        for (int64_t j = 0; j < r.len; j++) {
            double xh = (xp[j] - mu) * is;
            double v = gp ? is * (gp[j] * s[ln_off(in[0], r.ax, in[1], j)] - m1 - xh * m2) : 0.0;
            /* the Mean and InvStdDev outputs, when something differentiates them */
            v += gmu / L - gis * is * is * xh / L;
            gin[0][o * r.len + j] += v;
        }
    }
    return TPV_OK;
}

static int ln_jvp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                  const struct tpv_onnx_tensor *const *out, const double *const *tin,
                  double *const *tout, struct tpv_err *err)
{
    (void)out;
    struct ln_row r;
    int rc = ln_rows(nd, in[0], &r, err);
    if (rc)
        return rc;
    const double *x = in[0]->data, *s = in[1]->data;
    const double *tx = tin[0], *ts = tin[1], *tb = TIN(2);
    for (int64_t o = 0; o < r.outer; o++) {
        const double *xp = x + o * r.len;
        double mu, is, m1 = 0, m2 = 0, L = (double)r.len;
        ln_stats(xp, r.len, r.eps, &mu, &is);
        for (int64_t j = 0; tx && j < r.len; j++) {
            m1 += tx[o * r.len + j];
            m2 += tx[o * r.len + j] * (xp[j] - mu) * is;
        }
        m1 /= L;
        m2 /= L;
        for (int64_t j = 0; tout[0] && j < r.len; j++) {
            double xh = (xp[j] - mu) * is;
            double txh = tx ? is * (tx[o * r.len + j] - m1 - xh * m2) : 0.0;
            double v = txh * s[ln_off(in[0], r.ax, in[1], j)];
            if (ts)
                v += xh * ts[ln_off(in[0], r.ax, in[1], j)];
            if (tb && IN(2))
                v += tb[ln_off(in[0], r.ax, in[2], j)];
            tout[0][o * r.len + j] = v;
        }
        if (nd->nout > 1 && tout[1])
            tout[1][o] = m1;
        if (nd->nout > 2 && tout[2])
            tout[2][o] = -is * is * m2;
    }
    return TPV_OK;
}

static int reduce_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      const struct tpv_onnx_tensor *const *out, const double *const *gout,
                      double *const *gin, struct tpv_err *err)
{
    bool red[TPV_MAX_RANK], keep;
    int rc = reduce_axes(nd, in[0]->rank, red, &keep, err);
    if (rc || !gin[0] || !gout[0])
        return rc;
    const struct tpv_onnx_tensor *x = in[0];
    int64_t ost[TPV_MAX_RANK], s = 1, idx[TPV_MAX_RANK] = {0};
    for (int i = x->rank - 1; i >= 0; i--) {
        ost[i] = red[i] ? 0 : s;
        s *= red[i] ? 1 : x->shape[i];
    }
    double cnt = out[0]->numel ? (double)x->numel / (double)out[0]->numel : 1;
    uint64_t o = 0;
    for (uint64_t i = 0; i < x->numel; i++) {
        gin[0][i] += gout[0][o] / cnt;
        for (int d = x->rank - 1; d >= 0; d--) {
            idx[d]++;
            o += (uint64_t)ost[d];
            if (idx[d] < x->shape[d])
                break;
            o -= (uint64_t)(ost[d] * idx[d]);
            idx[d] = 0;
        }
    }
    return TPV_OK;
}

const struct tpv_onnx_op tpv_onnx_ops_elem[] = {
    {"Relu", 1, 1, 1, 1, NULL, float_infer, unary_forward, unary_vjp, unary_jvp},
    {"LeakyRelu", 1, 1, 1, 1, unary_check, float_infer, unary_forward, unary_vjp, unary_jvp},
    {"Sigmoid", 1, 1, 1, 1, NULL, float_infer, unary_forward, unary_vjp, unary_jvp},
    {"Tanh", 1, 1, 1, 1, NULL, float_infer, unary_forward, unary_vjp, unary_jvp},
    {"Softplus", 1, 1, 1, 1, NULL, float_infer, unary_forward, unary_vjp, unary_jvp},
    {"Elu", 1, 1, 1, 1, unary_check, float_infer, unary_forward, unary_vjp, unary_jvp},
    {"HardSigmoid", 1, 1, 1, 1, unary_check, float_infer, unary_forward, unary_vjp, unary_jvp},
    {"HardSwish", 1, 1, 1, 1, NULL, float_infer, unary_forward, unary_vjp, unary_jvp},
    {"Sqrt", 1, 1, 1, 1, NULL, float_infer, unary_forward, unary_vjp, unary_jvp},
    {"Erf", 1, 1, 1, 1, NULL, float_infer, unary_forward, unary_vjp, unary_jvp},
    {"Neg", 1, 1, 1, 1, NULL, float_infer, unary_forward, unary_vjp, unary_jvp},
    {"Exp", 1, 1, 1, 1, NULL, float_infer, unary_forward, unary_vjp, unary_jvp},
    {"Abs", 1, 1, 1, 1, NULL, float_infer, unary_forward, unary_vjp, unary_jvp},
    {"Identity", 1, 1, 1, 1, NULL, same_shape_infer, copy_forward, pass_vjp, tpv_onnx_jvp_linear},
    {"Dropout", 1, 3, 1, 1, NULL, dropout_infer, copy_forward, pass_vjp, tpv_onnx_jvp_linear},
    {"Clip", 1, 3, 1, 1, NULL, clip_infer, clip_forward, clip_vjp, clip_jvp},
    {"Cast", 1, 1, 1, 1, cast_check, cast_infer, cast_forward, pass_vjp, cast_jvp},
    {"Add", 2, 2, 1, 1, NULL, binary_infer, binary_forward, binary_vjp, binary_jvp},
    {"Sub", 2, 2, 1, 1, NULL, binary_infer, binary_forward, binary_vjp, binary_jvp},
    {"Mul", 2, 2, 1, 1, NULL, binary_infer, binary_forward, binary_vjp, binary_jvp},
    {"Div", 2, 2, 1, 1, NULL, binary_infer, binary_forward, binary_vjp, binary_jvp},
    {"Pow", 2, 2, 1, 1, NULL, binary_infer, binary_forward, binary_vjp, binary_jvp},
    {"BatchNormalization", 5, 5, 1, 1, bn_check, bn_infer, bn_forward, bn_vjp, bn_jvp},
    {"Softmax", 1, 1, 1, 1, NULL, softmax_infer, softmax_forward, softmax_vjp, softmax_jvp},
    {"LayerNormalization", 2, 3, 1, 3, NULL, ln_infer, ln_forward, ln_vjp, ln_jvp},
    {"ReduceMean", 1, 1, 1, 1, NULL, reduce_infer, reduce_forward, reduce_vjp, tpv_onnx_jvp_linear},
};
const size_t tpv_onnx_ops_elem_n = sizeof tpv_onnx_ops_elem / sizeof tpv_onnx_ops_elem[0];
