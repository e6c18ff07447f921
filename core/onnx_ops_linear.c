/* onnx_ops_linear.c: Conv (1-D and 2-D, strides, pads, dilations, groups; im2col + dgemm),
 * MaxPool, AveragePool, GlobalAveragePool, Gemm and MatMul (batched, broadcasting) for the ONNX
 * runtime (onnx_ops.h), and the per-sample squared weight-gradient norms of Conv by im2col or
 * the ghost norm (onnx_ghost.h).  A 1-D operator is the 2-D one with a height of 1. */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/onnx_attr.h"
#include "core/onnx_ghost.h"
#include "core/onnx_kernels.h"

#define IN(k) (k < nd->nin ? in[k] : NULL)

/* Geometry of a sliding-window operator over (N, C, H, W). */
struct win {
    int nsp;                      /* spatial dims in the tensor: 1 or 2 */
    int64_t N, C, H, W;
    int64_t kh, kw, sh, sw, dh, dw;
    int64_t ph0, pw0, ph1, pw1;   /* pads at the beginning / end */
    int64_t oh, ow;
};

enum autopad { AP_NOTSET, AP_VALID, AP_SAME_UPPER, AP_SAME_LOWER };

static int autopad_of(const struct tpv_onnx_node *nd, enum autopad *ap, struct tpv_err *err)
{
    static const char *names[] = {"NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"};
    *ap = AP_NOTSET;
    if (!tpv_onnx_attr_has(nd, "auto_pad"))
        return TPV_OK;
    for (int i = 0; i < 4; i++) {
        bool eq;
        int rc = tpv_onnx_attr_str_is(nd, "auto_pad", names[i], false, &eq, err);
        if (rc)
            return rc;
        if (eq) {
            *ap = (enum autopad)i;
            return TPV_OK;
        }
    }
    return tpv_onnx_attr_unsupported(err, nd, "auto_pad", "not one of NOTSET, VALID, SAME_UPPER, "
                                                          "SAME_LOWER");
}

/* One spatial dimension: output size and pads. */
static int win_dim(const struct tpv_onnx_node *nd, enum autopad ap, bool ceil_mode, int64_t in,
                   int64_t k, int64_t s, int64_t d, int64_t *p0, int64_t *p1, int64_t *out,
                   struct tpv_err *err)
{
    if (k < 1 || s < 1 || d < 1)
        return tpv_onnx_attr_unsupported(err, nd, "kernel_shape", "kernel, stride and dilation "
                                                                 "must be positive");
    int64_t ext = d * (k - 1) + 1;
    if (ap == AP_VALID) {
        *p0 = *p1 = 0;
    } else if (ap == AP_SAME_UPPER || ap == AP_SAME_LOWER) {
        int64_t o = (in + s - 1) / s, total = (o - 1) * s + ext - in;
        if (total < 0)
            total = 0;
        *p0 = ap == AP_SAME_UPPER ? total / 2 : total - total / 2;
        *p1 = total - *p0;
    }
    int64_t span = in + *p0 + *p1 - ext;
    if (span < 0)
        return tpv_onnx_shape_error(nd, err, "the window (%lld) is larger than the padded input "
                                    "(%lld)", (long long)ext, (long long)(in + *p0 + *p1));
    *out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
    /* ceil mode: a last window that starts in the end padding is dropped (as PyTorch does) */
    if (ceil_mode && (*out - 1) * s >= in + *p0)
        (*out)--;
    return TPV_OK;
}

/* Reads the window attributes for input x; kernel (kh, kw) given by the caller for Conv (from
 * the weight) or read from kernel_shape for pools. */
static int win_geom(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *x, bool pool,
                    const int64_t *wkernel, struct win *g, struct tpv_err *err)
{
    memset(g, 0, sizeof *g);
    if (x->rank != 3 && x->rank != 4)
        return tpv_onnx_shape_error(nd, err, "input of rank %d (1-D and 2-D operators take rank 3 "
                                    "or 4)", x->rank);
    int ns = x->rank - 2;
    g->nsp = ns;
    g->N = x->shape[0];
    g->C = x->shape[1];
    g->H = ns == 2 ? x->shape[2] : 1;
    g->W = x->shape[x->rank - 1];
    int64_t k[2] = {1, 1}, s[2] = {1, 1}, d[2] = {1, 1}, p[4] = {0, 0, 0, 0}, v[4];
    size_t n;
    int rc = tpv_onnx_attr_ints(nd, "kernel_shape", v, 2, &n, err);
    if (rc)
        return rc;
    if (n == 0 && pool)
        return tpv_onnx_attr_unsupported(err, nd, "kernel_shape", "missing (required)");
    if (n && (int)n != ns)
        return tpv_onnx_shape_error(nd, err, "kernel_shape has %zu entries for %d spatial dims", n,
                                    ns);
    for (int i = 0; i < ns; i++)
        k[2 - ns + i] = n ? v[i] : wkernel[i];
    if (!pool && n)
        for (int i = 0; i < ns; i++)
            if (v[i] != wkernel[i])
                return tpv_onnx_shape_error(nd, err, "kernel_shape differs from the weight's");
    static const char *names[] = {"strides", "dilations"};
    int64_t *dst[] = {s, d};
    for (int a = 0; a < 2; a++) {
        rc = tpv_onnx_attr_ints(nd, names[a], v, 2, &n, err);
        if (rc)
            return rc;
        if (n && (int)n != ns)
            return tpv_onnx_shape_error(nd, err, "%s has %zu entries", names[a], n);
        for (size_t i = 0; i < n; i++)
            dst[a][2 - ns + i] = v[i];
    }
    rc = tpv_onnx_attr_ints(nd, "pads", v, 4, &n, err);
    if (rc)
        return rc;
    if (n && (int)n != 2 * ns)
        return tpv_onnx_shape_error(nd, err, "pads has %zu entries", n);
    for (int i = 0; i < ns && n; i++) {
        p[2 - ns + i] = v[i];          /* begin */
        p[2 + 2 - ns + i] = v[ns + i]; /* end */
    }
    for (int i = 0; i < 4; i++)
        if (p[i] < 0)
            return tpv_onnx_attr_unsupported(err, nd, "pads", "negative pads");
    enum autopad ap;
    int64_t ceil_mode = 0;
    rc = autopad_of(nd, &ap, err);
    if (!rc && pool)
        rc = tpv_onnx_attr_int(nd, "ceil_mode", 0, &ceil_mode, err);
    if (rc)
        return rc;
    g->kh = k[0], g->kw = k[1], g->sh = s[0], g->sw = s[1], g->dh = d[0], g->dw = d[1];
    g->ph0 = p[0], g->pw0 = p[1], g->ph1 = p[2], g->pw1 = p[3];
    rc = win_dim(nd, ap, ceil_mode != 0, g->H, g->kh, g->sh, g->dh, &g->ph0, &g->ph1, &g->oh, err);
    return rc ? rc
              : win_dim(nd, ap, ceil_mode != 0, g->W, g->kw, g->sw, g->dw, &g->pw0, &g->pw1,
                        &g->ow, err);
}

static int win_out_shape(const struct tpv_onnx_node *nd, const struct win *g, int64_t channels,
                         struct tpv_onnx_tensor *out, struct tpv_err *err)
{
    int64_t s[4] = {g->N, channels, g->oh, g->ow};
    if (g->nsp == 1)
        s[2] = g->ow;
    out->dtype = TPV_ONNX_F64;
    return tpv_onnx_set_shape(nd, out, 2 + g->nsp, s, err);
}

/* ---- Conv ---- */

static int conv_geom(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     struct win *g, int64_t *groups, struct tpv_err *err)
{
    const struct tpv_onnx_tensor *x = in[0], *w = in[1];
    if (x->dtype != TPV_ONNX_F64 || w->dtype != TPV_ONNX_F64 || w->rank != x->rank)
        return tpv_onnx_shape_error(nd, err, "the weight must be a float tensor of the input's "
                                    "rank");
    int rc = tpv_onnx_attr_int(nd, "group", 1, groups, err);
    if (rc)
        return rc;
    rc = win_geom(nd, x, false, w->shape + 2, g, err);
    if (rc)
        return rc;
    int64_t gr = *groups;
    if (gr < 1 || g->C % gr || w->shape[0] % gr || w->shape[1] * gr != g->C)
        return tpv_onnx_shape_error(nd, err, "%lld input channels, weight %lld x %lld, group %lld",
                                    (long long)g->C, (long long)w->shape[0],
                                    (long long)w->shape[1], (long long)gr);
    if (IN(2) && (IN(2)->rank != 1 || IN(2)->shape[0] != w->shape[0]))
        return tpv_onnx_shape_error(nd, err, "the bias must have %lld entries",
                                    (long long)w->shape[0]);
    /* BLAS takes int dimensions: the im2col panel (C/g kh kw) x (oh ow) must fit */
    int64_t kk = w->shape[1] * g->kh * g->kw, P = g->oh * g->ow;
    if (kk > INT_MAX / (P ? P : 1) || w->shape[0] > INT_MAX)
        return tpv_onnx_shape_error(nd, err, "the convolution is too large");
    return TPV_OK;
}

static int conv_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    enum autopad ap;
    return autopad_of(nd, &ap, err);
}

static int conv_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct win g;
    int64_t groups;
    int rc = conv_geom(nd, in, &g, &groups, err);
    return rc ? rc : win_out_shape(nd, &g, in[1]->shape[0], out[0], err);
}

/* The output columns [*lo, *hi) whose input column ox s - p0 + j d lies inside [0, W): a window
 * tap reads a contiguous run of each input row (a strided one at stride s), zeros on both sides. */
static void tap_span(int64_t ow, int64_t W, int64_t s, int64_t p0, int64_t jd, int64_t *lo,
                     int64_t *hi)
{
    int64_t first = p0 - jd;            /* ox s >= first */
    int64_t last = W - 1 + p0 - jd;     /* ox s <= last */
    *lo = first <= 0 ? 0 : (first + s - 1) / s;
    *hi = last < 0 ? 0 : last / s + 1;
    if (*hi > ow)
        *hi = ow;
    if (*lo > *hi)
        *lo = *hi;
}

/* col ((C kh kw) x (oh ow)) for channels [c0, c0 + cn) of one sample x (C x H x W), in T (double,
 * or float for the float32 weight gradients): per kernel tap and output row, zeros, one run of
 * the input row, zeros (the run a memcpy at stride 1), the same values as an element-wise loop. */
#define IM2COL_BODY(T)                                                                          \
    int64_t P = g->oh * g->ow;                                                                 \
    for (int64_t c = 0; c < cn; c++)                                                           \
        for (int64_t i = 0; i < g->kh; i++)                                                    \
            for (int64_t j = 0; j < g->kw; j++) {                                              \
                T *row = col + ((c * g->kh + i) * g->kw + j) * P;                              \
                const double *xc = x + (c0 + c) * g->H * g->W;                                 \
                int64_t lo, hi, jd = j * g->dw;                                                \
                tap_span(g->ow, g->W, g->sw, g->pw0, jd, &lo, &hi);                            \
                for (int64_t oy = 0; oy < g->oh; oy++) {                                       \
                    int64_t iy = oy * g->sh - g->ph0 + i * g->dh;                              \
                    T *r = row + oy * g->ow;                                                   \
                    if (iy < 0 || iy >= g->H) {                                                \
                        memset(r, 0, (size_t)g->ow * sizeof *r);                               \
                        continue;                                                              \
                    }                                                                          \
                    int64_t base = iy * g->W - g->pw0 + jd; /* input of ox = 0, maybe < 0 */   \
                    for (int64_t ox = 0; ox < lo; ox++)                                        \
                        r[ox] = 0;                                                             \
                    IM2COL_RUN(T)                                                              \
                    for (int64_t ox = hi; ox < g->ow; ox++)                                    \
                        r[ox] = 0;                                                             \
                }                                                                              \
            }

static void im2col(const struct win *g, const double *x, int64_t c0, int64_t cn, double *col)
{
#define IM2COL_RUN(T)                                                                           \
    if (g->sw == 1)                                                                            \
        memcpy(r + lo, xc + base + lo, (size_t)(hi - lo) * sizeof *r);                         \
    else                                                                                       \
        for (int64_t ox = lo; ox < hi; ox++)                                                   \
            r[ox] = xc[base + ox * g->sw];
    IM2COL_BODY(double)
#undef IM2COL_RUN
}

static void im2col_f32(const struct win *g, const double *x, int64_t c0, int64_t cn,
                       float *col)
{
#define IM2COL_RUN(T)                                                                           \
    for (int64_t ox = lo; ox < hi; ox++)                                                       \
        r[ox] = (T)xc[base + ox * g->sw];
    IM2COL_BODY(float)
#undef IM2COL_RUN
}

static int conv_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct win g;
    int64_t gr;
    int rc = conv_geom(nd, in, &g, &gr, err);
    if (rc)
        return rc;
    int64_t M = in[1]->shape[0], Mg = M / gr, Cg = g.C / gr, P = g.oh * g.ow;
    int64_t kk = Cg * g.kh * g.kw;
    int64_t ncol = kk * P;
    double *col = malloc((size_t)(ncol > 0 ? ncol : 1) * sizeof *col);
    if (!col)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    const double *x = in[0]->data, *w = in[1]->data, *b = IN(2) ? IN(2)->data : NULL;
    double *y = out[0]->data;
    for (int64_t n = 0; n < g.N; n++) {
        const double *xn = x + n * g.C * g.H * g.W;
        for (int64_t q = 0; q < gr; q++) {
            double *yq = y + (n * M + q * Mg) * P;
            for (int64_t m = 0; b && m < Mg; m++)
                for (int64_t t = 0; t < P; t++)
                    yq[m * P + t] = b[q * Mg + m];
            if (!b && (!kk || !P)) /* the GEMM with beta 0 writes nothing then */
                memset(yq, 0, (size_t)(Mg * P) * sizeof *yq);
            im2col(&g, xn, q * Cg, Cg, col);
            /* no bias: beta 0 instead of a pass of zeros (0 + the sum is the sum, same bits) */
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Mg, (int)P, (int)kk, 1.0,
                        w + q * Mg * kk, (int)kk, col, (int)P, b ? 1.0 : 0.0, yq, (int)P);
        }
    }
    free(col);
    return TPV_OK;
}

/* ---- pools ---- */

static int pool_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    enum autopad ap;
    int64_t v;
    int rc = autopad_of(nd, &ap, err);
    if (!rc)
        rc = tpv_onnx_attr_int(nd, "storage_order", 0, &v, err);
    if (!rc && v != 0)
        rc = tpv_onnx_attr_unsupported(err, nd, "storage_order", "only 0 (row major)");
    if (!rc)
        rc = tpv_onnx_attr_int(nd, "count_include_pad", 0, &v, err);
    return rc;
}

static int pool_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct win g;
    if (in[0]->dtype != TPV_ONNX_F64)
        return tpv_onnx_shape_error(nd, err, "the input must be a float tensor");
    int rc = win_geom(nd, in[0], true, NULL, &g, err);
    return rc ? rc : win_out_shape(nd, &g, g.C, out[0], err);
}

static int pool_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct win g;
    int64_t cip;
    int rc = win_geom(nd, in[0], true, NULL, &g, err);
    if (!rc)
        rc = tpv_onnx_attr_int(nd, "count_include_pad", 0, &cip, err);
    if (rc)
        return rc;
    bool is_max = strcmp(nd->op_type, "MaxPool") == 0;
    const double *x = in[0]->data;
    double *y = out[0]->data;
    for (int64_t nc = 0; nc < g.N * g.C; nc++) {
        const double *xc = x + nc * g.H * g.W;
        double *yc = y + nc * g.oh * g.ow;
        for (int64_t oy = 0; oy < g.oh; oy++)
            for (int64_t ox = 0; ox < g.ow; ox++) {
                double acc = is_max ? -INFINITY : 0.0;
                int64_t cnt = 0, padcnt = 0;
                for (int64_t i = 0; i < g.kh; i++) {
                    int64_t iy = oy * g.sh - g.ph0 + i * g.dh;
                    for (int64_t j = 0; j < g.kw; j++) {
                        int64_t ix = ox * g.sw - g.pw0 + j * g.dw;
                        if (iy >= -g.ph0 && iy < g.H + g.ph1 && ix >= -g.pw0 && ix < g.W + g.pw1)
                            padcnt++;
                        if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W)
                            continue;
                        double v = xc[iy * g.W + ix];
                        acc = is_max ? fmax(acc, v) : acc + v;
                        cnt++;
                    }
                }
                if (!is_max)
                    acc /= (double)(cip ? padcnt : cnt ? cnt : 1);
                yc[oy * g.ow + ox] = acc;
            }
    }
    return TPV_OK;
}

static int gap_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    if (in[0]->rank < 3 || in[0]->dtype != TPV_ONNX_F64)
        return tpv_onnx_shape_error(nd, err, "input of rank %d (at least 3)", in[0]->rank);
    int64_t s[TPV_MAX_RANK];
    for (int i = 0; i < in[0]->rank; i++)
        s[i] = i < 2 ? in[0]->shape[i] : 1;
    out[0]->dtype = TPV_ONNX_F64;
    return tpv_onnx_set_shape(nd, out[0], in[0]->rank, s, err);
}

static int gap_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    uint64_t nc = out[0]->numel, S = nc ? in[0]->numel / nc : 0;
    const double *x = in[0]->data;
    double *y = out[0]->data;
    for (uint64_t i = 0; i < nc; i++) {
        double s = 0;
        for (uint64_t j = 0; j < S; j++)
            s += x[i * S + j];
        y[i] = S ? s / (double)S : 0.0;
    }
    return TPV_OK;
}

/* ---- Gemm ---- */

struct gemm_attr {
    double alpha, beta;
    int64_t ta, tb;
};

static int gemm_attrs(const struct tpv_onnx_node *nd, struct gemm_attr *a, struct tpv_err *err)
{
    int rc = tpv_onnx_attr_float(nd, "alpha", 1.0, &a->alpha, err);
    if (!rc)
        rc = tpv_onnx_attr_float(nd, "beta", 1.0, &a->beta, err);
    if (!rc)
        rc = tpv_onnx_attr_int(nd, "transA", 0, &a->ta, err);
    if (!rc)
        rc = tpv_onnx_attr_int(nd, "transB", 0, &a->tb, err);
    return rc;
}

static int gemm_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    struct gemm_attr a;
    return gemm_attrs(nd, &a, err);
}

static int gemm_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct gemm_attr a;
    int rc = gemm_attrs(nd, &a, err);
    if (rc)
        return rc;
    const struct tpv_onnx_tensor *A = in[0], *B = in[1];
    if (A->rank != 2 || B->rank != 2 || A->dtype != TPV_ONNX_F64 || B->dtype != TPV_ONNX_F64)
        return tpv_onnx_shape_error(nd, err, "Gemm takes two float matrices");
    int64_t M = a.ta ? A->shape[1] : A->shape[0], K = a.ta ? A->shape[0] : A->shape[1];
    int64_t K2 = a.tb ? B->shape[1] : B->shape[0], N = a.tb ? B->shape[0] : B->shape[1];
    if (K != K2)
        return tpv_onnx_shape_error(nd, err, "inner dimensions %lld and %lld", (long long)K,
                                    (long long)K2);
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX)
        return tpv_onnx_shape_error(nd, err, "the matrices are too large");
    int64_t s[2] = {M, N};
    out[0]->dtype = TPV_ONNX_F64;
    rc = tpv_onnx_set_shape(nd, out[0], 2, s, err);
    if (!rc && IN(2)) {
        struct tpv_onnx_tensor tmp;
        rc = tpv_onnx_broadcast(nd, out[0], IN(2), &tmp, err);
        if (!rc && (tmp.rank != 2 || tmp.shape[0] != M || tmp.shape[1] != N))
            rc = tpv_onnx_shape_error(nd, err, "C does not broadcast to %lld x %lld",
                                      (long long)M, (long long)N);
    }
    return rc;
}

/* Element (i, j) of a tensor broadcast to (M, N) (rank 0, 1 or 2). */
static double bcast2(const struct tpv_onnx_tensor *c, int64_t i, int64_t j)
{
    const double *d = c->data;
    if (c->rank == 0)
        return d[0];
    if (c->rank == 1)
        return d[c->shape[0] == 1 ? 0 : j];
    return d[(c->shape[0] == 1 ? 0 : i) * c->shape[1] + (c->shape[1] == 1 ? 0 : j)];
}

static int gemm_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct gemm_attr a;
    int rc = gemm_attrs(nd, &a, err);
    if (rc)
        return rc;
    int64_t M = out[0]->shape[0], N = out[0]->shape[1];
    int64_t K = a.ta ? in[0]->shape[0] : in[0]->shape[1];
    double *y = out[0]->data;
    const struct tpv_onnx_tensor *C = IN(2);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++)
            y[i * N + j] = C ? a.beta * bcast2(C, i, j) : 0.0;
    if (M && N && K)
        cblas_dgemm(CblasRowMajor, a.ta ? CblasTrans : CblasNoTrans,
                    a.tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, a.alpha,
                    in[0]->data, (int)in[0]->shape[1], in[1]->data, (int)in[1]->shape[1], 1.0, y,
                    (int)N);
    return TPV_OK;
}

/* ---- MatMul (NumPy semantics) ---- */

struct mm {
    int64_t M, K, N;
    int br;                   /* batch rank of the output */
    int64_t bshape[TPV_MAX_RANK];
    int64_t sa[TPV_MAX_RANK]; /* matrix strides per batch dim (0 = broadcast) */
    int64_t sb[TPV_MAX_RANK];
};

static int mm_geom(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *a,
                   const struct tpv_onnx_tensor *b, struct mm *g, int64_t *oshape, int *orank,
                   struct tpv_err *err)
{
    if (a->rank < 1 || b->rank < 1 || a->dtype != TPV_ONNX_F64 || b->dtype != TPV_ONNX_F64)
        return tpv_onnx_shape_error(nd, err, "MatMul takes float tensors of rank >= 1");
    g->M = a->rank == 1 ? 1 : a->shape[a->rank - 2];
    g->K = a->shape[a->rank - 1];
    int64_t K2 = b->rank == 1 ? b->shape[0] : b->shape[b->rank - 2];
    g->N = b->rank == 1 ? 1 : b->shape[b->rank - 1];
    if (g->K != K2)
        return tpv_onnx_shape_error(nd, err, "inner dimensions %lld and %lld", (long long)g->K,
                                    (long long)K2);
    if (g->M > INT_MAX || g->N > INT_MAX || g->K > INT_MAX)
        return tpv_onnx_shape_error(nd, err, "the matrices are too large");
    int ra = a->rank > 2 ? a->rank - 2 : 0, rb = b->rank > 2 ? b->rank - 2 : 0;
    g->br = ra > rb ? ra : rb;
    int64_t stra = g->M * g->K, strb = g->K * g->N;
    for (int i = g->br - 1; i >= 0; i--) {
        int ia = i - (g->br - ra), ib = i - (g->br - rb);
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        if (da != db && da != 1 && db != 1)
            return tpv_onnx_shape_error(nd, err, "batch dimensions %lld and %lld", (long long)da,
                                        (long long)db);
        g->bshape[i] = da == 1 ? db : da;
        g->sa[i] = da == 1 ? 0 : stra;
        g->sb[i] = db == 1 ? 0 : strb;
        stra *= da;
        strb *= db;
    }
    int r = 0;
    for (int i = 0; i < g->br; i++)
        oshape[r++] = g->bshape[i];
    if (a->rank > 1)
        oshape[r++] = g->M;
    if (b->rank > 1)
        oshape[r++] = g->N;
    *orank = r;
    return TPV_OK;
}

static int matmul_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct mm g;
    int64_t s[TPV_MAX_RANK + 2];
    int r = 0; /* set by mm_geom on success; gcc -O3 cannot see that */
    int rc = mm_geom(nd, in[0], in[1], &g, s, &r, err);
    if (rc)
        return rc;
    out[0]->dtype = TPV_ONNX_F64;
    return tpv_onnx_set_shape(nd, out[0], r, s, err);
}

static int matmul_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                          struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct mm g;
    int64_t s[TPV_MAX_RANK + 2], idx[TPV_MAX_RANK] = {0};
    int r;
    int rc = mm_geom(nd, in[0], in[1], &g, s, &r, err);
    if (rc)
        return rc;
    int64_t nb = 1;
    for (int i = 0; i < g.br; i++)
        nb *= g.bshape[i];
    const double *A = in[0]->data, *B = in[1]->data;
    double *Y = out[0]->data;
    int64_t oa = 0, ob = 0;
    for (int64_t t = 0; t < nb; t++) {
        if (g.M && g.N) {
            if (g.K)
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g.M, (int)g.N,
                            (int)g.K, 1.0, A + oa, (int)g.K, B + ob, (int)g.N, 0.0,
                            Y + t * g.M * g.N, (int)g.N);
            else
                memset(Y + t * g.M * g.N, 0, (size_t)(g.M * g.N) * sizeof *Y);
        }
        for (int d = g.br - 1; d >= 0; d--) {
            idx[d]++;
            oa += g.sa[d];
            ob += g.sb[d];
            if (idx[d] < g.bshape[d])
                break;
            oa -= g.sa[d] * idx[d];
            ob -= g.sb[d] * idx[d];
            idx[d] = 0;
        }
    }
    return TPV_OK;
}

/* ==== reverse and forward mode ==== */

/* Adds col ((C kh kw) x (oh ow), of T: double, or float for the float32 input adjoint) back into
 * channels [c0, c0 + cn) of gx: the adjoint of im2col. */
#define COL2IM_BODY(T)                                                                          \
    int64_t P = g->oh * g->ow;                                                                 \
    for (int64_t c = 0; c < cn; c++)                                                           \
        for (int64_t i = 0; i < g->kh; i++)                                                    \
            for (int64_t j = 0; j < g->kw; j++) {                                              \
                const T *row = col + ((c * g->kh + i) * g->kw + j) * P;                        \
                double *gc = gx + (c0 + c) * g->H * g->W;                                      \
                for (int64_t oy = 0; oy < g->oh; oy++) {                                       \
                    int64_t iy = oy * g->sh - g->ph0 + i * g->dh;                              \
                    if (iy < 0 || iy >= g->H)                                                  \
                        continue;                                                              \
                    for (int64_t ox = 0; ox < g->ow; ox++) {                                   \
                        int64_t ix = ox * g->sw - g->pw0 + j * g->dw;                          \
                        if (ix >= 0 && ix < g->W)                                              \
                            gc[iy * g->W + ix] += (double)row[oy * g->ow + ox];                \
                    }                                                                          \
                }                                                                              \
            }

static void col2im(const struct win *g, const double *col, int64_t c0, int64_t cn, double *gx)
{
    COL2IM_BODY(double)
}

static void col2im_f32(const struct win *g, const float *col, int64_t c0, int64_t cn,
                       double *gx)
{
    COL2IM_BODY(float)
}

/* The deep form of the input adjoint pays where its GEMM's inner dimension Mg is thin and the
 * positions many; with many channels on few positions (a ResNet's last stage at 2 x 2) the
 * weight's transposition per call would cost a fair share of the product itself. */
static bool deep_adjoint(const struct win *g, int64_t Mg)
{
    return g->sh == 1 && g->sw == 1 && Mg <= 64 && g->H * g->W >= 64;
}

/* The output adjoint gy (Mg x oh x ow) of one sample and group, laid out for its input adjoint
 * at stride 1: row (m, i, j) of col (Mg kh kw x H W) holds at input position (iy, ix) the adjoint
 * of the output that kernel tap (i, j) of channel m read it into (zero where none did). */
static void adjoint_col(const struct win *g, const double *gy, int64_t Mg, double *col)
{
    int64_t HW = g->H * g->W;
    for (int64_t m = 0; m < Mg; m++)
        for (int64_t i = 0; i < g->kh; i++)
            for (int64_t j = 0; j < g->kw; j++) {
                double *row = col + ((m * g->kh + i) * g->kw + j) * HW;
                const double *d = gy + m * g->oh * g->ow;
                /* input columns ix whose output column ix + pw0 - j dw lies in [0, ow): one
                 * run per row, copied, zeros on both sides */
                int64_t shift = g->pw0 - j * g->dw;
                int64_t lo = shift >= 0 ? 0 : -shift, hi = g->ow - shift;
                hi = hi < 0 ? 0 : hi > g->W ? g->W : hi;
                if (lo > hi)
                    lo = hi;
                for (int64_t iy = 0; iy < g->H; iy++) {
                    int64_t oy = iy + g->ph0 - i * g->dh;
                    double *r = row + iy * g->W;
                    if (oy < 0 || oy >= g->oh) {
                        memset(r, 0, (size_t)g->W * sizeof *r);
                        continue;
                    }
                    memset(r, 0, (size_t)lo * sizeof *r);
                    memcpy(r + lo, d + oy * g->ow + lo + shift, (size_t)(hi - lo) * sizeof *r);
                    memset(r + hi, 0, (size_t)(g->W - hi) * sizeof *r);
                }
            }
}

/* The float32 deep form works on a widened grid: input rows of Wp = W + (kw - 1) dw columns (the
 * last Wp - W of each row junk, never read back), so that kernel tap (i, j) of channel m reads
 * one contiguous run of H Wp entries of the zero-padded output adjoint (Hp = H + (kh - 1) dh
 * rows of Wp, plus (kw - 1) dw entries of slack a plane) at offset (kh-1-i) dh Wp + (kw-1-j) dw:
 * adjoint_col's rows are then each one memcpy. */
struct wide {
    int64_t Hp, Wp, plane, HWp;
};

static struct wide wide_of(const struct win *g)
{
    struct wide w;
    w.Hp = g->H + (g->kh - 1) * g->dh;
    w.Wp = g->W + (g->kw - 1) * g->dw;
    w.plane = w.Hp * w.Wp + (g->kw - 1) * g->dw;
    w.HWp = g->H * w.Wp;
    return w;
}

/* pad (Mg planes of wd->plane): padded row r, column c of plane m holds gy[m][oy][ox] at
 * oy = r + ph0 - (kh - 1) dh, ox = c + pw0 - (kw - 1) dw when inside the output, else 0. */
static void adjoint_pad_f32(const struct win *g, const struct wide *wd, const double *gy,
                            int64_t Mg, float *pad)
{
    int64_t y0 = g->ph0 - (g->kh - 1) * g->dh, x0 = g->pw0 - (g->kw - 1) * g->dw;
    int64_t lo = x0 >= 0 ? 0 : -x0, hi = g->ow - x0; /* columns c with ox in [0, ow) */
    hi = hi < 0 ? 0 : hi > wd->Wp ? wd->Wp : hi;
    if (lo > hi)
        lo = hi;
    for (int64_t m = 0; m < Mg; m++) {
        float *pm = pad + m * wd->plane;
        const double *d = gy + m * g->oh * g->ow;
        for (int64_t r = 0; r < wd->Hp; r++) {
            float *row = pm + r * wd->Wp;
            int64_t oy = r + y0;
            if (oy < 0 || oy >= g->oh) {
                memset(row, 0, (size_t)wd->Wp * sizeof *row);
                continue;
            }
            const double *src = d + oy * g->ow + x0;
            for (int64_t c = 0; c < lo; c++)
                row[c] = 0;
            for (int64_t c = lo; c < hi; c++)
                row[c] = (float)src[c];
            for (int64_t c = hi; c < wd->Wp; c++)
                row[c] = 0;
        }
        memset(pm + wd->Hp * wd->Wp, 0, (size_t)(wd->plane - wd->Hp * wd->Wp) * sizeof *pm);
    }
}

/* col ((Mg kh kw) x (H Wp)): row (m, i, j) the run of plane m that tap (i, j) reads. */
static void adjoint_col_f32(const struct win *g, const struct wide *wd, const float *pad,
                            int64_t Mg, float *col)
{
    for (int64_t m = 0; m < Mg; m++)
        for (int64_t i = 0; i < g->kh; i++)
            for (int64_t j = 0; j < g->kw; j++) {
                float *row = col + ((m * g->kh + i) * g->kw + j) * wd->HWp;
                const float *src = pad + m * wd->plane + (g->kh - 1 - i) * g->dh * wd->Wp +
                                   (g->kw - 1 - j) * g->dw;
                memcpy(row, src, (size_t)wd->HWp * sizeof *row);
            }
}

/* wt, per group q: the Cg x (Mg kh kw) matrix wt[c][(m, i, j)] = w[q Mg + m][c][i][j], the
 * weight of the input adjoint's GEMM on adjoint_col's rows (wt of T: double or float). */
#define TRANSPOSE_GROUPS_BODY                                                                   \
    int64_t Mg = M / gr, Cg = g->C / gr, taps = g->kh * g->kw, kk = Cg * taps;                 \
    for (int64_t q = 0; q < gr; q++)                                                           \
        for (int64_t m = 0; m < Mg; m++)                                                       \
            for (int64_t c = 0; c < Cg; c++)                                                   \
                for (int64_t ij = 0; ij < taps; ij++)                                          \
                    wt[q * Cg * Mg * taps + c * Mg * taps + m * taps + ij] =                   \
                        w[(q * Mg + m) * kk + c * taps + ij];

static void transpose_groups(const struct win *g, const double *w, int64_t M, int64_t gr,
                             double *wt)
{
    TRANSPOSE_GROUPS_BODY
}

static void transpose_groups_f32(const struct win *g, const double *w, int64_t M, int64_t gr,
                                 float *wt)
{
    TRANSPOSE_GROUPS_BODY
}

/* The input adjoint at stride 1 is itself a convolution of the output adjoint (adjoint_col, one
 * GEMM with inner dimension Mg kh kw, no scatter) where deep_adjoint says so; otherwise the GEMM
 * of inner dimension Mg and col2im. */
static int conv_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                    const struct tpv_onnx_tensor *const *out, const double *const *gout,
                    double *const *gin, struct tpv_err *err)
{
    (void)out;
    struct win g;
    int64_t gr;
    int rc = conv_geom(nd, in, &g, &gr, err);
    if (rc || !gout[0])
        return rc;
    int64_t M = in[1]->shape[0], Mg = M / gr, Cg = g.C / gr, P = g.oh * g.ow;
    int64_t kk = Cg * g.kh * g.kw, ncol = kk * P;
    bool deep = gin[0] && deep_adjoint(&g, Mg) && Mg && kk && P;
    if (deep && Mg * g.kh * g.kw * g.H * g.W > ncol)
        ncol = Mg * g.kh * g.kw * g.H * g.W;
    double *col = malloc((size_t)(ncol > 0 ? ncol : 1) * sizeof *col);
    double *wt = deep ? malloc((size_t)(M * kk) * sizeof *wt) : NULL;
    if (!col || (deep && !wt)) {
        free(col);
        free(wt);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    const double *x = in[0]->data, *w = in[1]->data;
    double *gb = nd->nin > 2 && in[2] ? gin[2] : NULL;
    if (deep)
        transpose_groups(&g, w, M, gr, wt);
    for (int64_t n = 0; n < g.N; n++) {
        const double *xn = x + n * g.C * g.H * g.W;
        for (int64_t q = 0; q < gr; q++) {
            const double *gy = gout[0] + (n * M + q * Mg) * P;
            if (gb)
                for (int64_t m = 0; m < Mg; m++)
                    for (int64_t t = 0; t < P; t++)
                        gb[q * Mg + m] += gy[m * P + t];
            if (gin[1] && Mg && kk && P) {
                im2col(&g, xn, q * Cg, Cg, col);
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Mg, (int)kk, (int)P,
                            1.0, gy, (int)P, col, (int)P, 1.0, gin[1] + q * Mg * kk, (int)kk);
            }
            if (deep) {
                int64_t HW = g.H * g.W, inner = Mg * g.kh * g.kw;
                adjoint_col(&g, gy, Mg, col);
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Cg, (int)HW,
                            (int)inner, 1.0, wt + q * Cg * inner, (int)inner, col, (int)HW, 1.0,
                            gin[0] + n * g.C * HW + q * Cg * HW, (int)HW);
            } else if (gin[0] && Mg && kk && P) {
                cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)kk, (int)P, (int)Mg,
                            1.0, w + q * Mg * kk, (int)kk, gy, (int)P, 0.0, col, (int)P);
                col2im(&g, col, q * Cg, Cg, gin[0] + n * g.C * g.H * g.W);
            }
        }
    }
    free(col);
    free(wt);
    return TPV_OK;
}

/* For each output element of a pool, calls back with the input offsets of its window and the
 * weight: MaxPool the first maximum with weight 1, AveragePool every element with 1/count. */
static int pool_adjoint(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *x,
                        const double *src, double *dst, bool reverse, struct tpv_err *err)
{
    struct win g;
    int64_t cip;
    int rc = win_geom(nd, x, true, NULL, &g, err);
    if (!rc)
        rc = tpv_onnx_attr_int(nd, "count_include_pad", 0, &cip, err);
    if (rc)
        return rc;
    bool is_max = strcmp(nd->op_type, "MaxPool") == 0;
    const double *xd = x->data;
    for (int64_t nc = 0; nc < g.N * g.C; nc++) {
        const double *xc = xd + nc * g.H * g.W;
        for (int64_t oy = 0; oy < g.oh; oy++)
            for (int64_t ox = 0; ox < g.ow; ox++) {
                int64_t o = nc * g.oh * g.ow + oy * g.ow + ox, best = -1, cnt = 0, padcnt = 0;
                double mx = -INFINITY, acc = 0;
                for (int pass = 0; pass < 2; pass++)
                    for (int64_t i = 0; i < g.kh; i++) {
                        int64_t iy = oy * g.sh - g.ph0 + i * g.dh;
                        for (int64_t j = 0; j < g.kw; j++) {
                            int64_t ix = ox * g.sw - g.pw0 + j * g.dw;
                            bool inpad = iy >= -g.ph0 && iy < g.H + g.ph1 && ix >= -g.pw0 &&
                                         ix < g.W + g.pw1;
                            if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) {
                                padcnt += pass == 0 && inpad;
                                continue;
                            }
                            int64_t off = nc * g.H * g.W + iy * g.W + ix;
                            if (pass == 0) {
                                padcnt++;
                                cnt++;
                                if (xc[iy * g.W + ix] > mx || best < 0) {
                                    mx = xc[iy * g.W + ix];
                                    best = off;
                                }
                            } else if (!is_max) {
                                double wgt = 1.0 / (double)(cip ? padcnt : cnt ? cnt : 1);
                                if (reverse)
                                    dst[off] += src[o] * wgt;
                                else
                                    acc += src[off] * wgt;
                            }
                        }
                    }
                if (is_max && best >= 0) {
                    if (reverse)
                        dst[best] += src[o];
                    else
                        acc = src[best];
                }
                if (!reverse)
                    dst[o] = acc;
            }
    }
    return TPV_OK;
}

static int pool_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                    const struct tpv_onnx_tensor *const *out, const double *const *gout,
                    double *const *gin, struct tpv_err *err)
{
    (void)out;
    if (!gin[0] || !gout[0])
        return TPV_OK;
    return pool_adjoint(nd, in[0], gout[0], gin[0], true, err);
}

static int pool_jvp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                    const struct tpv_onnx_tensor *const *out, const double *const *tin,
                    double *const *tout, struct tpv_err *err)
{
    if (!tout[0])
        return TPV_OK;
    if (!tin[0]) {
        memset(tout[0], 0, out[0]->numel * sizeof(double));
        return TPV_OK;
    }
    return pool_adjoint(nd, in[0], tin[0], tout[0], false, err);
}

static int gap_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                   const struct tpv_onnx_tensor *const *out, const double *const *gout,
                   double *const *gin, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    if (!gin[0] || !gout[0])
        return TPV_OK;
    uint64_t nc = out[0]->numel, S = nc ? in[0]->numel / nc : 0;
    for (uint64_t i = 0; i < nc; i++)
        for (uint64_t j = 0; j < S; j++)
            gin[0][i * S + j] += gout[0][i] / (double)S;
    return TPV_OK;
}

static int gemm_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                    const struct tpv_onnx_tensor *const *out, const double *const *gout,
                    double *const *gin, struct tpv_err *err)
{
    struct gemm_attr a;
    int rc = gemm_attrs(nd, &a, err);
    if (rc || !gout[0])
        return rc;
    int M = (int)out[0]->shape[0], N = (int)out[0]->shape[1];
    int K = (int)(a.ta ? in[0]->shape[0] : in[0]->shape[1]);
    int lda = (int)in[0]->shape[1], ldb = (int)in[1]->shape[1];
    const double *A = in[0]->data, *B = in[1]->data, *G = gout[0];
    if (M && N && K) {
        if (gin[0] && !a.ta)
            cblas_dgemm(CblasRowMajor, CblasNoTrans, a.tb ? CblasNoTrans : CblasTrans, M, K, N,
                        a.alpha, G, N, B, ldb, 1.0, gin[0], K);
        else if (gin[0])
            cblas_dgemm(CblasRowMajor, a.tb ? CblasTrans : CblasNoTrans, CblasTrans, K, M, N,
                        a.alpha, B, ldb, G, N, 1.0, gin[0], M);
        if (gin[1] && !a.tb)
            cblas_dgemm(CblasRowMajor, a.ta ? CblasNoTrans : CblasTrans, CblasNoTrans, K, N, M,
                        a.alpha, A, lda, G, N, 1.0, gin[1], N);
        else if (gin[1])
            cblas_dgemm(CblasRowMajor, CblasTrans, a.ta ? CblasTrans : CblasNoTrans, N, K, M,
                        a.alpha, G, N, A, lda, 1.0, gin[1], K);
    }
    const struct tpv_onnx_tensor *C = IN(2);
    if (C && gin[2])
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                int64_t off = C->rank == 0   ? 0
                              : C->rank == 1 ? (C->shape[0] == 1 ? 0 : j)
                                             : (C->shape[0] == 1 ? 0 : i) * C->shape[1] +
                                                   (C->shape[1] == 1 ? 0 : j);
                gin[2][off] += a.beta * G[i * N + j];
            }
    return TPV_OK;
}

static int matmul_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      const struct tpv_onnx_tensor *const *out, const double *const *gout,
                      double *const *gin, struct tpv_err *err)
{
    (void)out;
    struct mm g;
    int64_t s[TPV_MAX_RANK + 2], idx[TPV_MAX_RANK] = {0};
    int r;
    int rc = mm_geom(nd, in[0], in[1], &g, s, &r, err);
    if (rc || !gout[0] || !g.M || !g.N || !g.K)
        return rc;
    int64_t nb = 1;
    for (int i = 0; i < g.br; i++)
        nb *= g.bshape[i];
    const double *A = in[0]->data, *B = in[1]->data;
    int64_t oa = 0, ob = 0;
    for (int64_t t = 0; t < nb; t++) {
        const double *G = gout[0] + t * g.M * g.N;
        if (gin[0])
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)g.M, (int)g.K, (int)g.N,
                        1.0, G, (int)g.N, B + ob, (int)g.N, 1.0, gin[0] + oa, (int)g.K);
        if (gin[1])
            cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)g.K, (int)g.N, (int)g.M,
                        1.0, A + oa, (int)g.K, G, (int)g.N, 1.0, gin[1] + ob, (int)g.N);
        for (int d = g.br - 1; d >= 0; d--) {
            idx[d]++;
            oa += g.sa[d];
            ob += g.sb[d];
            if (idx[d] < g.bshape[d])
                break;
            oa -= g.sa[d] * idx[d];
            ob -= g.sb[d] * idx[d];
            idx[d] = 0;
        }
    }
    return TPV_OK;
}

/* ---- Einsum (explicit or implicit output, one or two operands, no ellipsis) ----
 * MaxViT's attention is exported as Einsum ("B G H I D, B G H J D -> B G H I J").  Evaluated as
 * one odometer over every label of the equation: out[o] += prod_k in_k[off_k], so a repeated
 * label (a diagonal) and a summed one need no special case; its VJP walks the same indices. */

#define EIN_LABELS 52
#define EIN_EQ_MAX 256

struct ein {
    int nin, nl;                       /* operands, distinct labels */
    int64_t dim[EIN_LABELS];           /* size of label l */
    int64_t st[3][EIN_LABELS];         /* stride of label l in operand k (the output is k = 2) */
    int orank, olab[TPV_MAX_RANK];     /* the output's labels */
};

static int ein_label(char c)
{
    return c >= 'a' && c <= 'z' ? c - 'a' : c >= 'A' && c <= 'Z' ? 26 + c - 'A' : -1;
}

/* Parses the equation into per-operand label lists (terms[k], lens[k]) and the output's. */
static int ein_parse(const struct tpv_onnx_node *nd, int nin, int terms[3][TPV_MAX_RANK],
                     int *lens, struct tpv_err *err)
{
    char eq[EIN_EQ_MAX];
    int rc = tpv_onnx_attr_str(nd, "equation", eq, sizeof eq, err);
    if (rc)
        return rc;
    if (!eq[0])
        return tpv_onnx_attr_unsupported(err, nd, "equation", "missing (required)");
    int k = 0, count[EIN_LABELS] = {0}, nops = 1;
    bool arrow = false;
    lens[0] = lens[1] = lens[2] = 0;
    for (const char *c = eq; *c; c++) {
        if (*c == ' ')
            continue;
        if (*c == ',' && !arrow && k + 1 < 2) {
            k++;
            nops++;
            continue;
        }
        if (c[0] == '-' && c[1] == '>' && !arrow) {
            arrow = true;
            k = 2;
            c++;
            continue;
        }
        int l = ein_label(*c);
        if (l < 0)
            return tpv_onnx_attr_unsupported(err, nd, "equation",
                                             "'%s' (letters, ',' and '->' are supported; no "
                                             "ellipsis)", eq);
        if (lens[k] == TPV_MAX_RANK)
            return tpv_onnx_attr_unsupported(err, nd, "equation", "a term of rank above %d",
                                             TPV_MAX_RANK);
        terms[k][lens[k]++] = l;
        if (k < 2)
            count[l]++;
    }
    if (nops != nin)
        return tpv_onnx_attr_unsupported(err, nd, "equation", "'%s' does not have %d operand(s)",
                                         eq, nin);
    if (!arrow) /* implicit output: the labels seen once, in alphabetical order */
        for (int l = 0; l < EIN_LABELS; l++)
            if (count[l] == 1) {
                if (lens[2] == TPV_MAX_RANK)
                    return tpv_onnx_attr_unsupported(err, nd, "equation", "output rank");
                terms[2][lens[2]++] = l;
            }
    for (int i = 0; i < lens[2]; i++) {
        if (!count[terms[2][i]])
            return tpv_onnx_attr_unsupported(err, nd, "equation",
                                             "'%s': an output label no operand has", eq);
        for (int j = 0; j < i; j++)
            if (terms[2][j] == terms[2][i])
                return tpv_onnx_attr_unsupported(err, nd, "equation",
                                                 "'%s': an output label repeated", eq);
    }
    return TPV_OK;
}

static int ein_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    int terms[3][TPV_MAX_RANK], lens[3];
    if (nd->nin < 1 || nd->nin > 2)
        return tpv_onnx_attr_unsupported(err, nd, "inputs", "%zu operands (1 or 2)", nd->nin);
    return ein_parse(nd, (int)nd->nin, terms, lens, err);
}

/* The geometry for inputs in (and the output's shape): label sizes must agree. */
static int ein_geom(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                    struct ein *e, struct tpv_err *err)
{
    int terms[3][TPV_MAX_RANK], lens[3], slot[EIN_LABELS];
    memset(e, 0, sizeof *e);
    e->nin = (int)nd->nin;
    int rc = ein_parse(nd, e->nin, terms, lens, err);
    if (rc)
        return rc;
    for (int l = 0; l < EIN_LABELS; l++)
        slot[l] = -1;
    for (int k = 0; k < e->nin; k++) {
        if (in[k]->dtype != TPV_ONNX_F64 || in[k]->rank != lens[k])
            return tpv_onnx_shape_error(nd, err, "operand %d: a float tensor of rank %d expected",
                                        k, lens[k]);
        for (int i = 0; i < lens[k]; i++) {
            int l = terms[k][i];
            if (slot[l] < 0) {
                slot[l] = e->nl++;
                e->dim[slot[l]] = in[k]->shape[i];
            } else if (e->dim[slot[l]] != in[k]->shape[i]) {
                return tpv_onnx_shape_error(nd, err, "label '%c' has sizes %lld and %lld",
                                            l < 26 ? 'a' + l : 'A' + l - 26,
                                            (long long)e->dim[slot[l]],
                                            (long long)in[k]->shape[i]);
            }
        }
    }
    for (int k = 0; k < 3; k++) {
        int64_t s = 1;
        for (int i = lens[k] - 1; i >= 0; i--) {
            int64_t d = k < 2 ? in[k]->shape[i] : e->dim[slot[terms[2][i]]];
            e->st[k][slot[terms[k][i]]] += s; /* a repeated label: its diagonal */
            s *= d;
        }
    }
    e->orank = lens[2];
    for (int i = 0; i < lens[2]; i++)
        e->olab[i] = slot[terms[2][i]];
    int64_t total = tpv_onnx_numel(e->nl, e->dim);
    if (total < 0)
        return tpv_onnx_shape_error(nd, err, "the index space is too large");
    return TPV_OK;
}

static int ein_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct ein e;
    int rc = ein_geom(nd, in, &e, err);
    if (rc)
        return rc;
    int64_t shape[TPV_MAX_RANK];
    for (int i = 0; i < e.orank; i++)
        shape[i] = e.dim[e.olab[i]];
    out[0]->dtype = TPV_ONNX_F64;
    return tpv_onnx_set_shape(nd, out[0], e.orank, shape, err);
}

/* One pass over every label combination.  mode 0: y += a b (forward); mode 1: ga += gy b;
 * mode 2: gb += gy a (operand 1 of two).  With one operand b is 1. */
static void ein_walk(const struct ein *e, int mode, const double *a, const double *b, double *y,
                     double *ga, double *gb)
{
    int64_t idx[EIN_LABELS] = {0};
    uint64_t off[3] = {0, 0, 0};
    uint64_t total = (uint64_t)tpv_onnx_numel(e->nl, e->dim);
    for (uint64_t t = 0; t < total; t++) {
        double vb = e->nin == 2 ? b[off[1]] : 1.0;
        if (mode == 0)
            y[off[2]] += a[off[0]] * vb;
        else if (mode == 1)
            ga[off[0]] += y[off[2]] * vb;
        else
            gb[off[1]] += y[off[2]] * a[off[0]];
        for (int l = e->nl - 1; l >= 0; l--) {
            idx[l]++;
            for (int k = 0; k < 3; k++)
                off[k] += (uint64_t)e->st[k][l];
            if (idx[l] < e->dim[l])
                break;
            for (int k = 0; k < 3; k++)
                off[k] -= (uint64_t)(e->st[k][l] * idx[l]);
            idx[l] = 0;
        }
    }
}

static int ein_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct ein e;
    int rc = ein_geom(nd, in, &e, err);
    if (rc)
        return rc;
    memset(out[0]->data, 0, out[0]->numel * sizeof(double));
    ein_walk(&e, 0, in[0]->data, e.nin == 2 ? in[1]->data : NULL, out[0]->data, NULL, NULL);
    return TPV_OK;
}

static int ein_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                   const struct tpv_onnx_tensor *const *out, const double *const *gout,
                   double *const *gin, struct tpv_err *err)
{
    (void)out;
    struct ein e;
    int rc = ein_geom(nd, in, &e, err);
    if (rc || !gout[0])
        return rc;
    const double *b = e.nin == 2 ? in[1]->data : NULL;
    /* the walk reads gy through y's offsets */
    if (gin[0])
        ein_walk(&e, 1, in[0]->data, b, (double *)gout[0], gin[0], NULL);
    if (e.nin == 2 && gin[1])
        ein_walk(&e, 2, in[0]->data, b, (double *)gout[0], NULL, gin[1]);
    return TPV_OK;
}

/* Linear in its operand with one, bilinear in (operand 0) x (operand 1) with two. */
static int ein_jvp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                   const struct tpv_onnx_tensor *const *out, const double *const *tin,
                   double *const *tout, struct tpv_err *err)
{
    return nd->nin == 1 ? tpv_onnx_jvp_linear(nd, in, out, tin, tout, err)
                        : tpv_onnx_jvp_bilinear(nd, in, out, tin, tout, err);
}

#define BIL tpv_onnx_jvp_bilinear

const struct tpv_onnx_op tpv_onnx_ops_linear[] = {
    {"Conv", 2, 3, 1, 1, conv_check, conv_infer, conv_forward, conv_vjp, BIL},
    {"MaxPool", 1, 1, 1, 1, pool_check, pool_infer, pool_forward, pool_vjp, pool_jvp},
    {"AveragePool", 1, 1, 1, 1, pool_check, pool_infer, pool_forward, pool_vjp, pool_jvp},
    {"GlobalAveragePool", 1, 1, 1, 1, NULL, gap_infer, gap_forward, gap_vjp, tpv_onnx_jvp_linear},
    {"Gemm", 2, 3, 1, 1, gemm_check, gemm_infer, gemm_forward, gemm_vjp, BIL},
    {"MatMul", 2, 2, 1, 1, NULL, matmul_infer, matmul_forward, matmul_vjp, BIL},
    {"Einsum", 1, 2, 1, 1, ein_check, ein_infer, ein_forward, ein_vjp, ein_jvp},
};
const size_t tpv_onnx_ops_linear_n = sizeof tpv_onnx_ops_linear / sizeof tpv_onnx_ops_linear[0];

/* ---- per-sample squared weight-gradient norms (core/onnx_ghost.h) ---- */

const char *tpv_onnx_sqnorm_form_name(enum tpv_onnx_sqnorm_form f)
{
    return f == TPV_ONNX_SQNORM_GHOST ? "ghost" : "im2col";
}

/* The geometry of nd on (x, w); the bias is not needed for the weight's gradient. */
static int sqnorm_geom(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *x,
                       const struct tpv_onnx_tensor *w, struct win *g, int64_t *gr,
                       struct tpv_err *err)
{
    const struct tpv_onnx_tensor *in[3] = { x, w, NULL }; /* no bias: IN(2) is NULL */
    return conv_geom(nd, in, g, gr, err);
}

double tpv_onnx_conv_sqnorm_flops(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *x,
                                  const struct tpv_onnx_tensor *w, enum tpv_onnx_sqnorm_form f)
{
    struct win g;
    int64_t gr;
    struct tpv_err ignore;
    if (sqnorm_geom(nd, x, w, &g, &gr, &ignore))
        return -1;
    double P = (double)(g.oh * g.ow), Mg = (double)(w->shape[0] / gr);
    double kk = (double)(g.C / gr * g.kh * g.kw), per_group;
    if (f == TPV_ONNX_SQNORM_GHOST)
        per_group = P * P * (kk + Mg) + 2 * P * P; /* two SYRKs, the paired sum */
    else
        per_group = 2 * Mg * kk * P + 2 * Mg * kk; /* the GEMM, the squares */
    return (double)g.N * (double)gr * (per_group + kk * P /* im2col */);
}

enum tpv_onnx_sqnorm_form tpv_onnx_conv_sqnorm_choose(const struct tpv_onnx_node *nd,
                                                      const struct tpv_onnx_tensor *x,
                                                      const struct tpv_onnx_tensor *w)
{
    double gh = tpv_onnx_conv_sqnorm_flops(nd, x, w, TPV_ONNX_SQNORM_GHOST);
    double ic = tpv_onnx_conv_sqnorm_flops(nd, x, w, TPV_ONNX_SQNORM_IM2COL);
    return gh >= 0 && gh < ic ? TPV_ONNX_SQNORM_GHOST : TPV_ONNX_SQNORM_IM2COL;
}

/* sum_{p,p'} A_pp' D_pp' from the upper triangles SYRK leaves (both P x P, symmetric). */
static double paired_sum(const double *A, const double *D, int64_t P)
{
    double s = 0;
    for (int64_t i = 0; i < P; i++) {
        s += A[i * P + i] * D[i * P + i];
        double off = 0;
        for (int64_t j = i + 1; j < P; j++)
            off += A[i * P + j] * D[i * P + j];
        s += 2 * off;
    }
    return s;
}

int tpv_onnx_conv_weight_sqnorms(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *x,
                                 const struct tpv_onnx_tensor *w, const double *gy,
                                 enum tpv_onnx_sqnorm_form f, double *out, struct tpv_err *err)
{
    struct win g;
    int64_t gr;
    int rc = sqnorm_geom(nd, x, w, &g, &gr, err);
    if (rc)
        return rc;
    int64_t M = w->shape[0], Mg = M / gr, Cg = g.C / gr, P = g.oh * g.ow, kk = Cg * g.kh * g.kw;
    bool ghost = f == TPV_ONNX_SQNORM_GHOST;
    size_t ncol = (size_t)(kk * P), nwork = ghost ? (size_t)(2 * P * P) : (size_t)(Mg * kk);
    double *col = malloc((ncol ? ncol : 1) * sizeof *col);
    double *work = malloc((nwork ? nwork : 1) * sizeof *work);
    if (!col || !work) {
        free(col);
        free(work);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    for (int64_t n = 0; n < g.N; n++) {
        const double *xn = (const double *)x->data + n * g.C * g.H * g.W;
        double s = 0;
        for (int64_t q = 0; q < gr && Mg && kk && P; q++) {
            const double *d = gy + (n * M + q * Mg) * P; /* Mg x P */
            im2col(&g, xn, q * Cg, Cg, col);              /* kk x P */
            if (ghost) {
                double *A = work, *D = work + P * P;
                cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)P, (int)kk, 1.0, col,
                            (int)P, 0.0, A, (int)P);
                cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)P, (int)Mg, 1.0, d,
                            (int)P, 0.0, D, (int)P);
                s += paired_sum(A, D, P);
            } else {
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Mg, (int)kk, (int)P,
                            1.0, d, (int)P, col, (int)P, 0.0, work, (int)kk);
                for (size_t i = 0; i < (size_t)(Mg * kk); i++)
                    s += work[i] * work[i];
            }
        }
        out[n] = s;
    }
    free(col);
    free(work);
    return TPV_OK;
}

void tpv_onnx_scratch_release(struct tpv_onnx_scratch *s)
{
    free(s->p);
    s->p = NULL;
    s->bytes = 0;
}

/* At least `bytes` of s (its contents not kept), or NULL. */
static void *scratch_get(struct tpv_onnx_scratch *s, size_t bytes)
{
    if (bytes > s->bytes) {
        free(s->p);
        s->p = malloc(bytes);
        s->bytes = s->p ? bytes : 0;
    }
    return s->p;
}

/* The shapes of one rows_grads call. */
struct rows_geom {
    const struct win *g;
    uint64_t R;
    int64_t M, gr, kk, P;
};

/* Float64 products: one im2col of all C channels (group q's patches are rows [q kk, (q + 1) kk)),
 * the R adjoints R M consecutive rows of P sharing it in one GEMM when group = 1. */
static int rows_grads_f64(const struct rows_geom *rg, const double *x, const double *gy,
                          double *G, uint64_t ldg, uint64_t woff, bool set,
                          struct tpv_onnx_scratch *ws)
{
    uint64_t R = rg->R;
    int64_t M = rg->M, gr = rg->gr, Mg = M / gr, kk = rg->kk, P = rg->P;
    bool stacked = gr == 1 && R > 1;
    size_t ncol = (size_t)(gr * kk * P), ntmp = stacked ? (size_t)R * (size_t)(M * kk) : 0;
    double *col = scratch_get(ws, (ncol + ntmp) * sizeof *col), *tmp = col + ncol;
    if (!col)
        return TPV_ENOMEM;
    im2col(rg->g, x, 0, rg->g->C, col);
    if (stacked) {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(R * (uint64_t)M), (int)kk,
                    (int)P, 1.0, gy, (int)P, col, (int)P, 0.0, tmp, (int)kk);
        uint64_t per = (uint64_t)(M * kk);
        for (uint64_t r = 0; r < R; r++) {
            double *dst = G + r * ldg + woff;
            const double *src = tmp + r * per;
            if (set)
                memcpy(dst, src, per * sizeof *dst);
            else
                for (uint64_t i = 0; i < per; i++)
                    dst[i] += src[i];
        }
        return TPV_OK;
    }
    /* one row or groups: a GEMM per row and group straight into G (no staging copy) */
    for (uint64_t r = 0; r < R; r++)
        for (int64_t q = 0; q < gr; q++)
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Mg, (int)kk, (int)P, 1.0,
                        gy + (r * (uint64_t)M + (uint64_t)(q * Mg)) * (uint64_t)P, (int)P,
                        col + q * kk * P, (int)P, set ? 0.0 : 1.0,
                        G + r * ldg + woff + (uint64_t)(q * Mg * kk), (int)kk);
    return TPV_OK;
}

/* Float32 products (sgemm, twice dgemm's rate) for a weight the graph stores in float32: its
 * inputs rounded to float32 (relative 6e-8 each), each product summed in float32 over a span of
 * at most TPV_ONNX_F32_SPAN positions (a worst-case relative error of span x 6e-8 = 6e-5 per
 * gradient entry, typically sqrt(span) x 6e-8 = 2e-6), the spans and the rows' squares in
 * float64.  Measured against float64 products: 5e-10 to 3e-9 relative on the test networks
 * (tests/unit/test_onnx_torch.c, F32_TOL) and 5e-10 on ResNet-20's isotropic trace, far inside
 * the 1e-4 the issue allows a float32 model against float64 autograd. */
static int rows_grads_f32(const struct rows_geom *rg, const double *x, const double *gy,
                          double *G, uint64_t ldg, uint64_t woff, bool set,
                          struct tpv_onnx_scratch *ws)
{
    uint64_t R = rg->R;
    int64_t M = rg->M, gr = rg->gr, Mg = M / gr, kk = rg->kk, P = rg->P;
    size_t ncol = (size_t)(gr * kk * P), ngy = (size_t)R * (size_t)(M * P);
    size_t ntmp = (size_t)R * (size_t)(M * kk);
    float *col = scratch_get(ws, (ncol + ngy + ntmp) * sizeof *col);
    if (!col)
        return TPV_ENOMEM;
    float *gyf = col + ncol, *tmp = gyf + ngy;
    im2col_f32(rg->g, x, 0, rg->g->C, col);
    for (size_t i = 0; i < ngy; i++)
        gyf[i] = (float)gy[i];
    uint64_t per = (uint64_t)(M * kk);
    for (int64_t p0 = 0; p0 < P; p0 += TPV_ONNX_F32_SPAN) {
        int np = (int)(P - p0 < TPV_ONNX_F32_SPAN ? P - p0 : TPV_ONNX_F32_SPAN);
        if (gr == 1)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(R * (uint64_t)M), (int)kk,
                        np, 1.0f, gyf + p0, (int)P, col + p0, (int)P, 0.0f, tmp, (int)kk);
        else
            for (uint64_t r = 0; r < R; r++)
                for (int64_t q = 0; q < gr; q++) {
                    size_t row = r * (uint64_t)M + (uint64_t)(q * Mg);
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Mg, (int)kk, np,
                                1.0f, gyf + row * (size_t)P + (size_t)p0, (int)P,
                                col + q * kk * P + p0, (int)P, 0.0f, tmp + row * (size_t)kk,
                                (int)kk);
                }
        for (uint64_t r = 0; r < R; r++) {
            double *dst = G + r * ldg + woff;
            const float *src = tmp + r * per;
            if (set && p0 == 0)
                for (uint64_t i = 0; i < per; i++)
                    dst[i] = (double)src[i];
            else
                for (uint64_t i = 0; i < per; i++)
                    dst[i] += (double)src[i];
        }
    }
    return TPV_OK;
}

int tpv_onnx_conv_rows_grads(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *x,
                             const struct tpv_onnx_tensor *w, const double *gy, uint64_t R,
                             double *G, uint64_t ldg, uint64_t woff, uint64_t boff, bool single,
                             bool set, struct tpv_onnx_scratch *ws, struct tpv_err *err)
{
    struct win g;
    int64_t gr;
    int rc = sqnorm_geom(nd, x, w, &g, &gr, err);
    if (rc)
        return rc;
    int64_t M = w->shape[0], Mg = M / gr, Cg = g.C / gr, P = g.oh * g.ow, kk = Cg * g.kh * g.kw;
    if (g.N != 1 || R > (uint64_t)(INT_MAX / (M ? M : 1)))
        return tpv_onnx_shape_error(nd, err, "shared-input gradients take one sample and at "
                                    "most %lld rows", (long long)(INT_MAX / (M ? M : 1)));
    if (boff != UINT64_MAX)
        for (uint64_t r = 0; r < R; r++)
            for (int64_t m = 0; m < M; m++) {
                const double *d = gy + (r * (uint64_t)M + (uint64_t)m) * (uint64_t)P;
                double s = 0;
                for (int64_t t = 0; t < P; t++)
                    s += d[t];
                G[r * ldg + boff + (uint64_t)m] += s;
            }
    if (!Mg || !kk || !P || !R) {
        for (uint64_t r = 0; set && r < R; r++) /* no products: a zero gradient */
            memset(G + r * ldg + woff, 0, (size_t)(M * kk) * sizeof *G);
        return TPV_OK;
    }
    struct rows_geom rg = { &g, R, M, gr, kk, P };
    rc = single ? rows_grads_f32(&rg, x->data, gy, G, ldg, woff, set, ws)
                : rows_grads_f64(&rg, x->data, gy, G, ldg, woff, set, ws);
    return rc ? tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory") : TPV_OK;
}

/* ---- the float32 input adjoint (onnx_ghost.h) ---- */

int tpv_onnx_conv_adjoint_weight_f32(const struct tpv_onnx_node *nd,
                                     const struct tpv_onnx_tensor *x,
                                     const struct tpv_onnx_tensor *w, float **out,
                                     struct tpv_err *err)
{
    *out = NULL;
    struct win g;
    int64_t gr;
    int rc = sqnorm_geom(nd, x, w, &g, &gr, err);
    if (rc)
        return rc;
    int64_t M = w->shape[0];
    const double *wd = w->data;
    float *wf = malloc((size_t)(w->numel ? w->numel : 1) * sizeof *wf);
    if (!wf)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    if (deep_adjoint(&g, M / gr))
        transpose_groups_f32(&g, wd, M, gr, wf);
    else
        for (uint64_t i = 0; i < w->numel; i++)
            wf[i] = (float)wd[i];
    *out = wf;
    return TPV_OK;
}

/* The forms of conv_vjp's input adjoint with float32 products: the deep form's GEMM (inner
 * dimension Mg kh kw) on adjoint_col_f32's rows, or the GEMM of inner dimension Mg and
 * col2im_f32; either inner dimension cut into spans of at most TPV_ONNX_F32_SPAN, each span's
 * float32 result added into gx in float64. */
int tpv_onnx_conv_input_adjoint_f32(const struct tpv_onnx_node *nd,
                                    const struct tpv_onnx_tensor *x,
                                    const struct tpv_onnx_tensor *w, const float *wf,
                                    const double *gy, double *gx, bool set,
                                    struct tpv_onnx_scratch *ws, struct tpv_err *err)
{
    struct win g;
    int64_t gr;
    int rc = sqnorm_geom(nd, x, w, &g, &gr, err);
    if (rc)
        return rc;
    int64_t M = w->shape[0], Mg = M / gr, Cg = g.C / gr, P = g.oh * g.ow;
    int64_t kk = Cg * g.kh * g.kw, HW = g.H * g.W;
    bool deep = deep_adjoint(&g, Mg) && Mg && kk && P && HW;
    /* the deep form writes every entry of gx once per span; col2im leaves the inputs no window
     * reads (a 1 x 1 kernel at stride 2) untouched */
    if (set && !deep)
        memset(gx, 0, x->numel * sizeof *gx);
    set = set && deep;
    if (!Mg || !kk || !P || !HW)
        return TPV_OK;
    struct wide wd = wide_of(&g);
    int64_t inner = deep ? Mg * g.kh * g.kw : Mg;
    if (deep && (inner > INT_MAX / wd.HWp || Cg > INT_MAX / wd.HWp || Mg > INT_MAX / wd.plane))
        return tpv_onnx_shape_error(nd, err, "the convolution is too large");
    size_t npad = (size_t)(deep ? Mg * wd.plane : 0);
    size_t ncol = (size_t)(deep ? inner * wd.HWp : Mg * P);
    size_t nout = (size_t)(deep ? Cg * wd.HWp : kk * P);
    float *pad = scratch_get(ws, (npad + ncol + nout) * sizeof *pad);
    if (!pad)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    float *col = pad + npad, *tmp = col + ncol;
    for (int64_t n = 0; n < g.N; n++)
        for (int64_t q = 0; q < gr; q++) {
            const double *d = gy + (n * M + q * Mg) * P;
            if (deep) {
                double *gq = gx + (n * g.C + q * Cg) * HW;
                adjoint_pad_f32(&g, &wd, d, Mg, pad);
                adjoint_col_f32(&g, &wd, pad, Mg, col);
                for (int64_t i0 = 0; i0 < inner; i0 += TPV_ONNX_F32_SPAN) {
                    int64_t ni = inner - i0 < TPV_ONNX_F32_SPAN ? inner - i0 : TPV_ONNX_F32_SPAN;
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Cg, (int)wd.HWp,
                                (int)ni, 1.0f, wf + q * Cg * inner + i0, (int)inner,
                                col + i0 * wd.HWp, (int)wd.HWp, 0.0f, tmp, (int)wd.HWp);
                    for (int64_t c = 0; c < Cg; c++)
                        for (int64_t iy = 0; iy < g.H; iy++) {
                            double *dst = gq + c * HW + iy * g.W;
                            const float *src = tmp + c * wd.HWp + iy * wd.Wp;
                            if (set && i0 == 0)
                                for (int64_t ix = 0; ix < g.W; ix++)
                                    dst[ix] = (double)src[ix];
                            else
                                for (int64_t ix = 0; ix < g.W; ix++)
                                    dst[ix] += (double)src[ix];
                        }
                }
            } else {
                for (size_t i = 0; i < ncol; i++)
                    col[i] = (float)d[i];
                for (int64_t i0 = 0; i0 < Mg; i0 += TPV_ONNX_F32_SPAN) {
                    int64_t ni = Mg - i0 < TPV_ONNX_F32_SPAN ? Mg - i0 : TPV_ONNX_F32_SPAN;
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)kk, (int)P,
                                (int)ni, 1.0f, wf + (q * Mg + i0) * kk, (int)kk, col + i0 * P,
                                (int)P, 0.0f, tmp, (int)P);
                    col2im_f32(&g, tmp, q * Cg, Cg, gx + n * g.C * HW);
                }
            }
        }
    return TPV_OK;
}
