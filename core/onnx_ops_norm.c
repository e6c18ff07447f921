/* onnx_ops_norm.c: BatchNormalization (inference), Softmax, LayerNormalization and ReduceMean
 * for the ONNX runtime (onnx_ops.h), forward and derivatives. */
#include <math.h>
#include <string.h>

#include "core/linalg.h"
#include "core/onnx_attr.h"
#include "core/onnx_kernels.h"

#define IN(k) (k < nd->nin ? in[k] : NULL)
#define TIN(k) (k < nd->nin ? tin[k] : NULL)
#define GIN(k) (k < nd->nin ? gin[k] : NULL)

static int need_f64(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *t,
                    unsigned k, struct tpv_err *err)
{
    if (t->dtype != TPV_ONNX_F64)
        return tpv_err_set(err, TPV_EINVAL, nd->name,
                           "node '%s' (%s): input %u must be a float tensor", nd->name,
                           nd->op_type, k);
    return TPV_OK;
}

static int float_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int rc = need_f64(nd, in[0], 0, err);
    if (rc)
        return rc;
    out[0]->dtype = TPV_ONNX_F64;
    return tpv_onnx_set_shape(nd, out[0], in[0]->rank, in[0]->shape, err);
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

/* What BatchNormalization's passes share: epsilon and the (N, C, positions) geometry. */
struct bn_geom {
    double eps;
    int64_t N, C, S;
};

static int bn_geom(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *x,
                   struct bn_geom *g, struct tpv_err *err)
{
    g->N = x->shape[0];
    g->C = x->shape[1];
    int64_t NC = g->N * g->C;
    g->S = NC ? (int64_t)x->numel / NC : 0;
    return tpv_onnx_attr_float(nd, "epsilon", 1e-5, &g->eps, err);
}

/* BatchNormalization's passes on the job's threads: forward and forward mode per (n, c) plane,
 * reverse mode per channel (its sums over n and positions run in the sequential order, so the
 * split changes no bit). */
struct bn_job {
    struct bn_geom g;
    const struct tpv_onnx_tensor *const *in;
    const double *const *io; /* gout (vjp) or tin (jvp) */
    double *const *dst;      /* gin (vjp) or tout (jvp); y for the forward pass */
    bool set0;               /* vjp: gin[0] is overwritten, not accumulated into */
};

static void bn_forward_planes(void *ctx, uint64_t first, uint64_t count)
{
    const struct bn_job *j = ctx;
    const double *x = j->in[0]->data, *sc = j->in[1]->data, *bi = j->in[2]->data,
                 *mu = j->in[3]->data, *var = j->in[4]->data;
    double *y = j->dst[0];
    const int64_t C = j->g.C, S = j->g.S;
    for (int64_t p = (int64_t)first; p < (int64_t)(first + count); p++) {
        int64_t c = p % C;
        double g = sc[c] / sqrt(var[c] + j->g.eps), h = bi[c] - mu[c] * g;
        const double *xp = x + p * S;
        double *yp = y + p * S;
        for (int64_t s = 0; s < S; s++)
            yp[s] = xp[s] * g + h;
    }
}

static int bn_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct bn_job j = { .in = in };
    int rc = bn_geom(nd, in[0], &j.g, err);
    if (rc)
        return rc;
    double *y = out[0]->data;
    j.dst = &y;
    tpv_parallel_for((uint64_t)(j.g.N * j.g.C), 2.0 * (double)j.g.S, bn_forward_planes, &j);
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
/* The entry of scale or bias t (broadcast over the normalized axes) for element j of a row. */
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

static int ln_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct ln_row r;
    int rc = ln_rows(nd, in[0], &r, err);
    if (rc)
        return rc;
    const double *x = in[0]->data, *s = in[1]->data, *b = IN(2) ? IN(2)->data : NULL;
    double *y = out[0]->data;
    for (int64_t o = 0; o < r.outer; o++) {
        const double *xp = x + o * r.len;
        double mu, is;
        ln_stats(xp, r.len, r.eps, &mu, &is);
        for (int64_t j = 0; j < r.len; j++) {
            double v = (xp[j] - mu) * is * s[ln_off(in[0], r.ax, in[1], j)];
            y[o * r.len + j] = b ? v + b[ln_off(in[0], r.ax, in[2], j)] : v;
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

/* BatchNormalization: y = (x - mu) g + B with g = s / sqrt(var + eps). */
/* Per channel and sample: the input's adjoint as one loop (g_out times the channel's scale), and
 * only when a statistic or parameter adjoint is wanted the two sums they need (a second loop, the
 * sums in the same order as before). */
static void bn_vjp_channels(void *ctx, uint64_t first, uint64_t count)
{
    const struct bn_job *j = ctx;
    const double *x = j->in[0]->data, *sc = j->in[1]->data, *mu = j->in[3]->data,
                 *var = j->in[4]->data;
    double *const *gin = j->dst;
    const int64_t N = j->g.N, C = j->g.C, S = j->g.S;
    bool sums = gin[1] || gin[2] || gin[3] || gin[4];
    for (int64_t c = (int64_t)first; c < (int64_t)(first + count); c++)
        for (int64_t n = 0; n < N; n++) {
            double is = 1.0 / sqrt(var[c] + j->g.eps), g = sc[c] * is;
            const double *xp = x + (n * C + c) * S, *gp = j->io[0] + (n * C + c) * S;
            double *d = gin[0] ? gin[0] + (n * C + c) * S : NULL;
            if (d && j->set0)
                for (int64_t s = 0; s < S; s++)
                    d[s] = gp[s] * g;
            else if (d)
                for (int64_t s = 0; s < S; s++)
                    d[s] += gp[s] * g;
            if (!sums)
                continue;
            double sg = 0, sgx = 0;
            for (int64_t s = 0; s < S; s++) {
                sg += gp[s];
                sgx += gp[s] * (xp[s] - mu[c]);
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
}

/* BatchNormalization: y = (x - mu) g + B with g = s / sqrt(var + eps).  Only input 0 may be
 * fresh: the others are per-channel sums over the batch. */
static int bn_vjp_set(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      const struct tpv_onnx_tensor *const *out, const double *const *gout,
                      double *const *gin, const bool *fresh, struct tpv_err *err)
{
    (void)out;
    struct bn_job j = { .in = in, .io = gout, .dst = gin, .set0 = fresh && fresh[0] };
    for (size_t k = 1; fresh && k < nd->nin && k < 5; k++)
        if (fresh[k] && gin[k])
            memset(gin[k], 0, in[k]->numel * sizeof *gin[k]);
    int rc = bn_geom(nd, in[0], &j.g, err);
    if (!rc && !gout[0] && j.set0 && gin[0])
        memset(gin[0], 0, in[0]->numel * sizeof *gin[0]);
    if (rc || !gout[0])
        return rc;
    tpv_parallel_for((uint64_t)j.g.C, 6.0 * (double)(j.g.N * j.g.S), bn_vjp_channels, &j);
    return TPV_OK;
}

static int bn_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                  const struct tpv_onnx_tensor *const *out, const double *const *gout,
                  double *const *gin, struct tpv_err *err)
{
    return bn_vjp_set(nd, in, out, gout, gin, NULL, err);
}

static void bn_jvp_planes(void *ctx, uint64_t first, uint64_t count)
{
    const struct bn_job *j = ctx;
    const double *x = j->in[0]->data, *sc = j->in[1]->data, *mu = j->in[3]->data,
                 *var = j->in[4]->data;
    const double *const *tin = j->io;
    double *t0 = j->dst[0];
    const int64_t C = j->g.C, S = j->g.S;
    for (int64_t p = (int64_t)first; p < (int64_t)(first + count); p++) {
        int64_t c = p % C;
        double is = 1.0 / sqrt(var[c] + j->g.eps), g = sc[c] * is;
        double dg = (tin[1] ? tin[1][c] * is : 0.0) -
                    (tin[4] ? 0.5 * tin[4][c] * sc[c] * is * is * is : 0.0);
        double dh = (tin[2] ? tin[2][c] : 0.0) - (tin[3] ? tin[3][c] * g : 0.0);
        for (int64_t s = 0; s < S; s++) {
            int64_t i = p * S + s;
            t0[i] = (tin[0] ? tin[0][i] * g : 0.0) + (x[i] - mu[c]) * dg + dh;
        }
    }
}

static int bn_jvp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                  const struct tpv_onnx_tensor *const *out, const double *const *tin,
                  double *const *tout, struct tpv_err *err)
{
    (void)out;
    struct bn_job j = { .in = in, .io = tin, .dst = tout };
    int rc = bn_geom(nd, in[0], &j.g, err);
    if (rc || !tout[0])
        return rc;
    tpv_parallel_for((uint64_t)(j.g.N * j.g.C), 5.0 * (double)j.g.S, bn_jvp_planes, &j);
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

const struct tpv_onnx_op tpv_onnx_ops_norm[] = {
    {"BatchNormalization", 5, 5, 1, 1, bn_check, bn_infer, bn_forward, bn_vjp, bn_jvp,
     bn_vjp_set},
    {"Softmax", 1, 1, 1, 1, NULL, softmax_infer, softmax_forward, softmax_vjp, softmax_jvp},
    {"LayerNormalization", 2, 3, 1, 3, NULL, ln_infer, ln_forward, ln_vjp, ln_jvp},
    {"ReduceMean", 1, 1, 1, 1, NULL, reduce_infer, reduce_forward, reduce_vjp, tpv_onnx_jvp_linear},
};
const size_t tpv_onnx_ops_norm_n = sizeof tpv_onnx_ops_norm / sizeof tpv_onnx_ops_norm[0];
