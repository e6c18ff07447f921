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

static int cast_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    enum tpv_onnx_dtype dt = TPV_ONNX_F64;
    bool f32 = false;
    int rc = cast_target(nd, &dt, &f32, err);
    if (rc)
        return rc;
    for (uint64_t i = 0; i < in[0]->numel; i++) {
        if (dt == TPV_ONNX_I64) {
            ((int64_t *)out[0]->data)[i] = tpv_onnx_get_i(in[0], i);
        } else {
            double x = tpv_onnx_get_f(in[0], i);
            /* Cast to float rounds as ONNX does; wider float targets keep float64. */
            ((double *)out[0]->data)[i] = f32 && in[0]->dtype == TPV_ONNX_F64 ? (float)x : x;
        }
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

const struct tpv_onnx_op tpv_onnx_ops_elem[] = {
    {"Relu", 1, 1, 1, 1, NULL, float_infer, unary_forward},
    {"LeakyRelu", 1, 1, 1, 1, unary_check, float_infer, unary_forward},
    {"Sigmoid", 1, 1, 1, 1, NULL, float_infer, unary_forward},
    {"Tanh", 1, 1, 1, 1, NULL, float_infer, unary_forward},
    {"Softplus", 1, 1, 1, 1, NULL, float_infer, unary_forward},
    {"Elu", 1, 1, 1, 1, unary_check, float_infer, unary_forward},
    {"HardSigmoid", 1, 1, 1, 1, unary_check, float_infer, unary_forward},
    {"HardSwish", 1, 1, 1, 1, NULL, float_infer, unary_forward},
    {"Sqrt", 1, 1, 1, 1, NULL, float_infer, unary_forward},
    {"Erf", 1, 1, 1, 1, NULL, float_infer, unary_forward},
    {"Neg", 1, 1, 1, 1, NULL, float_infer, unary_forward},
    {"Exp", 1, 1, 1, 1, NULL, float_infer, unary_forward},
    {"Abs", 1, 1, 1, 1, NULL, float_infer, unary_forward},
    {"Identity", 1, 1, 1, 1, NULL, same_shape_infer, copy_forward},
    {"Dropout", 1, 3, 1, 1, NULL, dropout_infer, copy_forward},
    {"Clip", 1, 3, 1, 1, NULL, clip_infer, clip_forward},
    {"Cast", 1, 1, 1, 1, cast_check, cast_infer, cast_forward},
    {"Add", 2, 2, 1, 1, NULL, binary_infer, binary_forward},
    {"Sub", 2, 2, 1, 1, NULL, binary_infer, binary_forward},
    {"Mul", 2, 2, 1, 1, NULL, binary_infer, binary_forward},
    {"Div", 2, 2, 1, 1, NULL, binary_infer, binary_forward},
    {"Pow", 2, 2, 1, 1, NULL, binary_infer, binary_forward},
    {"BatchNormalization", 5, 5, 1, 1, bn_check, bn_infer, bn_forward},
    {"Softmax", 1, 1, 1, 1, NULL, softmax_infer, softmax_forward},
    {"LayerNormalization", 2, 3, 1, 3, NULL, ln_infer, ln_forward},
    {"ReduceMean", 1, 1, 1, 1, NULL, reduce_infer, reduce_forward},
};
const size_t tpv_onnx_ops_elem_n = sizeof tpv_onnx_ops_elem / sizeof tpv_onnx_ops_elem[0];
