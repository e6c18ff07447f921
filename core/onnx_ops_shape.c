/* onnx_ops_shape.c: shape and data-movement operators for the ONNX runtime (onnx_ops.h): Reshape,
 * Flatten, Transpose, Squeeze, Unsqueeze, Concat, Slice, Split, Gather, Shape, Pad,
 * ConstantOfShape, Range, ScatterND.  Elements are 8 bytes whatever their type, so these run on float64 data and
 * on int64 shape tensors alike. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/onnx_attr.h"
#include "core/onnx_kernels.h"

#define IN(k) (k < nd->nin ? in[k] : NULL)

typedef uint64_t elem; /* one 8-byte element, double or int64 */

/* An int64 input whose values decide a shape: must be known at load. */
static int static_ints(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *t, unsigned k,
                       struct tpv_err *err)
{
    if (!t->data)
        return tpv_onnx_need_static(nd, k, err);
    if (t->dtype != TPV_ONNX_I64)
        return tpv_err_set(err, TPV_EINVAL, nd->name,
                           "node '%s' (%s): input %u must be an int64 tensor", nd->name,
                           nd->op_type, k);
    return TPV_OK;
}

/* out[i] = in[base + sum_d idx_d * st[d]] over the output's index space (st may be negative). */
static void strided_copy(elem *out, const elem *in, int rank, const int64_t *shape,
                         const int64_t *st, int64_t base, uint64_t numel)
{
    int64_t idx[TPV_MAX_RANK] = {0}, off = base;
    for (uint64_t i = 0; i < numel; i++) {
        out[i] = in[off];
        for (int d = rank - 1; d >= 0; d--) {
            idx[d]++;
            off += st[d];
            if (idx[d] < shape[d])
                break;
            off -= st[d] * idx[d];
            idx[d] = 0;
        }
    }
}

static int copy_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    memcpy(out[0]->data, in[0]->data, in[0]->numel * sizeof(elem));
    return TPV_OK;
}

/* ---- Reshape ---- */

static int reshape_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int rc = static_ints(nd, in[1], 1, err);
    if (rc)
        return rc;
    int64_t allowzero;
    rc = tpv_onnx_attr_int(nd, "allowzero", 0, &allowzero, err);
    if (rc)
        return rc;
    const struct tpv_onnx_tensor *s = in[1];
    if (s->rank != 1 || s->numel > TPV_MAX_RANK)
        return tpv_onnx_shape_error(nd, err, "the shape input must be a list of at most %d dims",
                                    TPV_MAX_RANK);
    int64_t shape[TPV_MAX_RANK], known = 1;
    int infer_at = -1;
    for (int i = 0; i < (int)s->numel; i++) {
        int64_t d = ((const int64_t *)s->data)[i];
        if (d == 0 && !allowzero) {
            if (i >= in[0]->rank)
                return tpv_onnx_shape_error(nd, err, "dim %d is 0 (copy) beyond the input's rank",
                                            i);
            d = in[0]->shape[i];
        }
        if (d == -1) {
            if (infer_at >= 0)
                return tpv_onnx_shape_error(nd, err, "more than one -1 in the shape");
            infer_at = i;
            d = 1;
        } else if (d < 0) {
            return tpv_onnx_shape_error(nd, err, "dim %d is %lld", i, (long long)d);
        }
        shape[i] = d;
        if (__builtin_mul_overflow(known, d, &known))
            return tpv_onnx_shape_error(nd, err, "the shape overflows");
    }
    int64_t total = (int64_t)in[0]->numel;
    if (infer_at >= 0) {
        if (known == 0 || total % known)
            return tpv_onnx_shape_error(nd, err, "cannot reshape %lld elements with a -1 dim",
                                        (long long)total);
        shape[infer_at] = total / known;
    } else if (known != total) {
        return tpv_onnx_shape_error(nd, err, "cannot reshape %lld elements into %lld",
                                    (long long)total, (long long)known);
    }
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_set_shape(nd, out[0], (int)s->numel, shape, err);
}

/* ---- Flatten ---- */

static int flatten_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int64_t axis;
    int rc = tpv_onnx_attr_int(nd, "axis", 1, &axis, err);
    if (rc)
        return rc;
    int r = in[0]->rank;
    if (axis < -r || axis > r)
        return tpv_onnx_shape_error(nd, err, "axis %lld for rank %d", (long long)axis, r);
    if (axis < 0)
        axis += r;
    int64_t s[2] = {1, 1};
    for (int i = 0; i < r; i++)
        s[i < axis ? 0 : 1] *= in[0]->shape[i];
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_set_shape(nd, out[0], 2, s, err);
}

/* ---- Transpose ---- */

static int perm_of(const struct tpv_onnx_node *nd, int rank, int *perm, struct tpv_err *err)
{
    int64_t p[TPV_MAX_RANK];
    size_t n;
    int rc = tpv_onnx_attr_ints(nd, "perm", p, TPV_MAX_RANK, &n, err);
    if (rc)
        return rc;
    if (n == 0) {
        for (int i = 0; i < rank; i++)
            perm[i] = rank - 1 - i;
        return TPV_OK;
    }
    if ((int)n != rank)
        return tpv_onnx_shape_error(nd, err, "perm has %zu entries for rank %d", n, rank);
    bool seen[TPV_MAX_RANK] = {false};
    for (int i = 0; i < rank; i++) {
        if (p[i] < 0 || p[i] >= rank || seen[p[i]])
            return tpv_onnx_attr_unsupported(err, nd, "perm", "not a permutation");
        seen[p[i]] = true;
        perm[i] = (int)p[i];
    }
    return TPV_OK;
}

static void row_strides(const struct tpv_onnx_tensor *t, int64_t *st)
{
    int64_t s = 1;
    for (int i = t->rank - 1; i >= 0; i--) {
        st[i] = s;
        s *= t->shape[i];
    }
}

static int transpose_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                           struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int perm[TPV_MAX_RANK];
    int rc = perm_of(nd, in[0]->rank, perm, err);
    if (rc)
        return rc;
    int64_t s[TPV_MAX_RANK];
    for (int i = 0; i < in[0]->rank; i++)
        s[i] = in[0]->shape[perm[i]];
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_set_shape(nd, out[0], in[0]->rank, s, err);
}

static int transpose_forward(const struct tpv_onnx_node *nd,
                             const struct tpv_onnx_tensor *const *in,
                             struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int perm[TPV_MAX_RANK];
    int rc = perm_of(nd, in[0]->rank, perm, err);
    if (rc)
        return rc;
    int64_t ist[TPV_MAX_RANK], st[TPV_MAX_RANK];
    row_strides(in[0], ist);
    for (int i = 0; i < in[0]->rank; i++)
        st[i] = ist[perm[i]];
    strided_copy(out[0]->data, in[0]->data, out[0]->rank, out[0]->shape, st, 0, out[0]->numel);
    return TPV_OK;
}

/* ---- Squeeze / Unsqueeze (opset 13: axes as an input) ---- */

static int squeeze_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int r = in[0]->rank;
    bool drop[TPV_MAX_RANK];
    for (int i = 0; i < r; i++)
        drop[i] = IN(1) == NULL && in[0]->shape[i] == 1;
    if (IN(1)) {
        int rc = static_ints(nd, in[1], 1, err);
        for (uint64_t k = 0; !rc && k < in[1]->numel; k++) {
            int a;
            rc = tpv_onnx_axis(nd, ((const int64_t *)in[1]->data)[k], r, "axes", &a, err);
            if (!rc && in[0]->shape[a] != 1)
                rc = tpv_onnx_shape_error(nd, err, "axis %d has size %lld, not 1", a,
                                          (long long)in[0]->shape[a]);
            if (!rc)
                drop[a] = true;
        }
        if (rc)
            return rc;
    }
    int64_t s[TPV_MAX_RANK];
    int n = 0;
    for (int i = 0; i < r; i++)
        if (!drop[i])
            s[n++] = in[0]->shape[i];
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_set_shape(nd, out[0], n, s, err);
}

static int unsqueeze_infer(const struct tpv_onnx_node *nd,
                           const struct tpv_onnx_tensor *const *in,
                           struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int rc = static_ints(nd, in[1], 1, err);
    if (rc)
        return rc;
    int r = in[0]->rank + (int)in[1]->numel;
    if (r > TPV_MAX_RANK)
        return tpv_onnx_shape_error(nd, err, "rank %d (at most %d)", r, TPV_MAX_RANK);
    bool ins[TPV_MAX_RANK] = {false};
    for (uint64_t k = 0; k < in[1]->numel; k++) {
        int a;
        rc = tpv_onnx_axis(nd, ((const int64_t *)in[1]->data)[k], r, "axes", &a, err);
        if (rc)
            return rc;
        if (ins[a])
            return tpv_onnx_shape_error(nd, err, "axis %d repeated", a);
        ins[a] = true;
    }
    int64_t s[TPV_MAX_RANK];
    for (int i = 0, j = 0; i < r; i++)
        s[i] = ins[i] ? 1 : in[0]->shape[j++];
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_set_shape(nd, out[0], r, s, err);
}

/* ---- Concat ---- */

/* Concat's axis has no default. */
static int concat_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    if (!tpv_onnx_attr_has(nd, "axis"))
        return tpv_onnx_attr_unsupported(err, nd, "axis", "missing (required)");
    return TPV_OK;
}

/* The one reading of an "axis" attribute (default 0) for Concat, Split and Gather: checked
 * against a tensor of rank `rank` and made non-negative (Flatten's, whose range includes the
 * rank, is its own). */
static int axis_attr(const struct tpv_onnx_node *nd, int rank, int *ax, struct tpv_err *err)
{
    int64_t axis;
    int rc = tpv_onnx_attr_int(nd, "axis", 0, &axis, err);
    return rc ? rc : tpv_onnx_axis(nd, axis, rank, "axis", ax, err);
}

static int concat_axis(const struct tpv_onnx_node *nd, int rank, int *ax, struct tpv_err *err)
{
    int rc = concat_check(nd, err);
    return rc ? rc : axis_attr(nd, rank, ax, err);
}

static int concat_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int ax;
    int r = in[0]->rank;
    int rc = concat_axis(nd, r, &ax, err);
    if (rc)
        return rc;
    int64_t s[TPV_MAX_RANK];
    memcpy(s, in[0]->shape, sizeof s);
    s[ax] = 0;
    for (size_t k = 0; k < nd->nin; k++) {
        if (!in[k] || in[k]->rank != r || in[k]->dtype != in[0]->dtype)
            return tpv_onnx_shape_error(nd, err, "input %zu has another rank or type", k);
        for (int i = 0; i < r; i++)
            if (i != ax && in[k]->shape[i] != in[0]->shape[i])
                return tpv_onnx_shape_error(nd, err, "input %zu differs in dimension %d", k, i);
        s[ax] += in[k]->shape[ax];
    }
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_set_shape(nd, out[0], r, s, err);
}

static int concat_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                          struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int ax;
    int rc = concat_axis(nd, in[0]->rank, &ax, err);
    if (rc)
        return rc;
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < ax; i++)
        outer *= out[0]->shape[i];
    for (int i = ax + 1; i < out[0]->rank; i++)
        inner *= out[0]->shape[i];
    int64_t orow = out[0]->shape[ax] * inner, at = 0;
    elem *y = out[0]->data;
    for (size_t k = 0; k < nd->nin; k++) {
        int64_t row = in[k]->shape[ax] * inner;
        const elem *x = in[k]->data;
        for (int64_t o = 0; o < outer; o++)
            memcpy(y + o * orow + at, x + o * row, (size_t)row * sizeof *y);
        at += row;
    }
    return TPV_OK;
}

/* ---- Slice (opset 13: starts, ends, axes, steps as inputs) ---- */

struct slice_geom {
    int64_t start[TPV_MAX_RANK], step[TPV_MAX_RANK], len[TPV_MAX_RANK];
};

static int slice_geom(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      struct slice_geom *g, struct tpv_err *err)
{
    int r = in[0]->rank;
    for (int i = 0; i < r; i++) {
        g->start[i] = 0;
        g->step[i] = 1;
        g->len[i] = in[0]->shape[i];
    }
    for (unsigned k = 1; k < 5; k++) {
        if (!IN(k))
            continue;
        int rc = static_ints(nd, in[k], k, err);
        if (rc)
            return rc;
        if (in[k]->numel != in[1]->numel)
            return tpv_onnx_shape_error(nd, err, "input %u has %llu entries, starts has %llu", k,
                                        (unsigned long long)in[k]->numel,
                                        (unsigned long long)in[1]->numel);
    }
    if (!IN(2))
        return tpv_onnx_shape_error(nd, err, "ends is required");
    bool seen[TPV_MAX_RANK] = {false};
    for (uint64_t j = 0; j < in[1]->numel; j++) {
        const int64_t *st = in[1]->data, *en = in[2]->data;
        int a = (int)j;
        if (IN(3)) {
            int rc = tpv_onnx_axis(nd, ((const int64_t *)in[3]->data)[j], r, "axes", &a, err);
            if (rc)
                return rc;
        } else if ((int)j >= r) {
            return tpv_onnx_shape_error(nd, err, "more starts than dimensions");
        }
        if (seen[a])
            return tpv_onnx_shape_error(nd, err, "axis %d repeated", a);
        seen[a] = true;
        int64_t step = IN(4) ? ((const int64_t *)in[4]->data)[j] : 1;
        if (step == 0)
            return tpv_onnx_shape_error(nd, err, "step 0");
        int64_t d = in[0]->shape[a], s = st[j], e = en[j];
        if (s < 0)
            s += d;
        if (e < 0 && e > INT64_MIN / 2)
            e += d;
        if (step > 0) {
            s = s < 0 ? 0 : s > d ? d : s;
            e = e < 0 ? 0 : e > d ? d : e;
            g->len[a] = e > s ? (e - s + step - 1) / step : 0;
        } else {
            s = s < 0 ? -1 : s > d - 1 ? d - 1 : s;
            e = e < -1 ? -1 : e > d - 1 ? d - 1 : e;
            g->len[a] = s > e ? (s - e + (-step) - 1) / (-step) : 0;
        }
        g->start[a] = s;
        g->step[a] = step;
    }
    return TPV_OK;
}

static int slice_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct slice_geom g;
    int rc = slice_geom(nd, in, &g, err);
    if (rc)
        return rc;
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_set_shape(nd, out[0], in[0]->rank, g.len, err);
}

static int slice_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct slice_geom g;
    int rc = slice_geom(nd, in, &g, err);
    if (rc)
        return rc;
    int64_t ist[TPV_MAX_RANK], st[TPV_MAX_RANK], base = 0;
    row_strides(in[0], ist);
    for (int i = 0; i < in[0]->rank; i++) {
        st[i] = ist[i] * g.step[i];
        base += ist[i] * g.start[i];
    }
    if (out[0]->numel)
        strided_copy(out[0]->data, in[0]->data, out[0]->rank, out[0]->shape, st, base,
                     out[0]->numel);
    return TPV_OK;
}

/* ---- Split (opset 13: sizes as an optional input) ---- */

static int split_sizes(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       int *ax, int64_t *sizes, struct tpv_err *err)
{
    int rc = axis_attr(nd, in[0]->rank, ax, err);
    if (rc)
        return rc;
    int64_t d = in[0]->shape[*ax], sum = 0, n = (int64_t)nd->nout;
    if (IN(1)) {
        rc = static_ints(nd, in[1], 1, err);
        if (rc)
            return rc;
        if ((int64_t)in[1]->numel != n)
            return tpv_onnx_shape_error(nd, err, "split has %llu sizes for %lld outputs",
                                        (unsigned long long)in[1]->numel, (long long)n);
        for (int64_t k = 0; k < n; k++) {
            sizes[k] = ((const int64_t *)in[1]->data)[k];
            if (sizes[k] < 0)
                return tpv_onnx_shape_error(nd, err, "negative split size");
            sum += sizes[k];
        }
        if (sum != d)
            return tpv_onnx_shape_error(nd, err, "split sizes sum to %lld, dimension is %lld",
                                        (long long)sum, (long long)d);
        return TPV_OK;
    }
    int64_t chunk = (d + n - 1) / n; /* opset 18's rule for uneven splits; even ones agree */
    for (int64_t k = 0; k < n; k++) {
        int64_t left = d - sum;
        sizes[k] = left < chunk ? left : chunk;
        sum += sizes[k];
    }
    return TPV_OK;
}

#define SPLIT_MAX 64

static int split_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int ax;
    int64_t sizes[SPLIT_MAX];
    int rc = split_sizes(nd, in, &ax, sizes, err);
    for (size_t k = 0; !rc && k < nd->nout; k++) {
        if (!out[k])
            continue;
        int64_t s[TPV_MAX_RANK];
        memcpy(s, in[0]->shape, sizeof s);
        s[ax] = sizes[k];
        out[k]->dtype = in[0]->dtype;
        rc = tpv_onnx_set_shape(nd, out[k], in[0]->rank, s, err);
    }
    return rc;
}

static int split_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int ax;
    int64_t sizes[SPLIT_MAX];
    int rc = split_sizes(nd, in, &ax, sizes, err);
    if (rc)
        return rc;
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < ax; i++)
        outer *= in[0]->shape[i];
    for (int i = ax + 1; i < in[0]->rank; i++)
        inner *= in[0]->shape[i];
    int64_t irow = in[0]->shape[ax] * inner, at = 0;
    const elem *x = in[0]->data;
    for (size_t k = 0; k < nd->nout; k++) {
        int64_t row = sizes[k] * inner;
        if (out[k])
            for (int64_t o = 0; o < outer; o++)
                memcpy((elem *)out[k]->data + o * row, x + o * irow + at,
                       (size_t)row * sizeof *x);
        at += row;
    }
    return TPV_OK;
}

static int split_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    if (nd->nout > SPLIT_MAX)
        return tpv_onnx_attr_unsupported(err, nd, "outputs", "%zu (at most %d)", nd->nout,
                                         SPLIT_MAX);
    return TPV_OK;
}

/* ---- Gather ---- */

static int gather_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int ax;
    int rc = axis_attr(nd, in[0]->rank, &ax, err);
    if (!rc)
        rc = static_ints(nd, in[1], 1, err);
    if (rc)
        return rc;
    int64_t d = in[0]->shape[ax];
    for (uint64_t i = 0; i < in[1]->numel; i++) {
        int64_t v = ((const int64_t *)in[1]->data)[i];
        if (v < -d || v >= d)
            return tpv_onnx_shape_error(nd, err, "index %lld out of range for a dimension of %lld",
                                        (long long)v, (long long)d);
    }
    int r = in[0]->rank - 1 + in[1]->rank;
    if (r > TPV_MAX_RANK)
        return tpv_onnx_shape_error(nd, err, "rank %d", r);
    int64_t s[TPV_MAX_RANK];
    int n = 0;
    for (int i = 0; i < ax; i++)
        s[n++] = in[0]->shape[i];
    for (int i = 0; i < in[1]->rank; i++)
        s[n++] = in[1]->shape[i];
    for (int i = ax + 1; i < in[0]->rank; i++)
        s[n++] = in[0]->shape[i];
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_set_shape(nd, out[0], r, s, err);
}

static int gather_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                          struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int ax;
    int rc = axis_attr(nd, in[0]->rank, &ax, err);
    if (rc)
        return rc;
    int64_t outer = 1, inner = 1, d = in[0]->shape[ax];
    for (int i = 0; i < ax; i++)
        outer *= in[0]->shape[i];
    for (int i = ax + 1; i < in[0]->rank; i++)
        inner *= in[0]->shape[i];
    const elem *x = in[0]->data;
    const int64_t *ix = in[1]->data;
    elem *y = out[0]->data;
    uint64_t ni = in[1]->numel;
    for (int64_t o = 0; o < outer; o++)
        for (uint64_t j = 0; j < ni; j++) {
            int64_t v = ix[j] < 0 ? ix[j] + d : ix[j];
            memcpy(y + ((uint64_t)o * ni + j) * (uint64_t)inner, x + (o * d + v) * inner,
                   (size_t)inner * sizeof *y);
        }
    return TPV_OK;
}

/* ---- Shape (opset 15: start, end) ---- */

static void shape_range(const struct tpv_onnx_node *nd, int rank, int64_t *s, int64_t *e)
{
    struct tpv_err ignore;
    if (tpv_onnx_attr_int(nd, "start", 0, s, &ignore) ||
        tpv_onnx_attr_int(nd, "end", rank, e, &ignore)) {
        *s = 0;
        *e = rank;
    }
    if (*s < 0)
        *s += rank;
    if (*e < 0)
        *e += rank;
    *s = *s < 0 ? 0 : *s > rank ? rank : *s;
    *e = *e < *s ? *s : *e > rank ? rank : *e;
}

static int shape_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    int64_t v;
    int rc = tpv_onnx_attr_int(nd, "start", 0, &v, err);
    return rc ? rc : tpv_onnx_attr_int(nd, "end", 0, &v, err);
}

static int shape_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int64_t s, e;
    shape_range(nd, in[0]->rank, &s, &e);
    int64_t n = e - s;
    out[0]->dtype = TPV_ONNX_I64;
    return tpv_onnx_set_shape(nd, out[0], 1, &n, err);
}

static int shape_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)err;
    int64_t s, e;
    shape_range(nd, in[0]->rank, &s, &e);
    for (int64_t i = s; i < e; i++)
        ((int64_t *)out[0]->data)[i - s] = in[0]->shape[i];
    return TPV_OK;
}

/* ---- Pad (opset 13: constant mode) ---- */

static int pad_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    bool constant;
    int rc = tpv_onnx_attr_str_is(nd, "mode", "constant", true, &constant, err);
    if (!rc && !constant)
        rc = tpv_onnx_attr_unsupported(err, nd, "mode", "only 'constant' is supported");
    return rc;
}

static int pad_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int rc = static_ints(nd, in[1], 1, err);
    if (rc)
        return rc;
    int r = in[0]->rank;
    if ((int64_t)in[1]->numel != 2 * r)
        return tpv_onnx_shape_error(nd, err, "pads has %llu entries for rank %d",
                                    (unsigned long long)in[1]->numel, r);
    if (IN(2) && IN(2)->numel != 1)
        return tpv_onnx_shape_error(nd, err, "constant_value must be a scalar");
    const int64_t *p = in[1]->data;
    int64_t s[TPV_MAX_RANK];
    for (int i = 0; i < r; i++) {
        s[i] = in[0]->shape[i] + p[i] + p[i + r];
        if (s[i] < 0)
            return tpv_onnx_shape_error(nd, err, "pads crop dimension %d below zero", i);
    }
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_set_shape(nd, out[0], r, s, err);
}

static int pad_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)err;
    int r = in[0]->rank;
    const int64_t *p = in[1]->data;
    elem fill = 0;
    if (IN(2)) {
        if (in[0]->dtype == TPV_ONNX_F64) {
            double v = tpv_onnx_get_f(IN(2), 0);
            memcpy(&fill, &v, sizeof fill);
        } else {
            int64_t v = tpv_onnx_get_i(IN(2), 0);
            memcpy(&fill, &v, sizeof fill);
        }
    }
    int64_t ist[TPV_MAX_RANK], idx[TPV_MAX_RANK] = {0};
    row_strides(in[0], ist);
    const elem *x = in[0]->data;
    elem *y = out[0]->data;
    for (uint64_t i = 0; i < out[0]->numel; i++) {
        int64_t off = 0;
        bool inside = true;
        for (int d = 0; d < r; d++) {
            int64_t c = idx[d] - p[d];
            if (c < 0 || c >= in[0]->shape[d]) {
                inside = false;
                break;
            }
            off += c * ist[d];
        }
        y[i] = inside ? x[off] : fill;
        for (int d = r - 1; d >= 0; d--) {
            if (++idx[d] < out[0]->shape[d])
                break;
            idx[d] = 0;
        }
    }
    return TPV_OK;
}

/* ---- ConstantOfShape (a static shape: evaluated at load, never differentiated) ---- */

static int cos_value(const struct tpv_onnx_node *nd, struct tpv_onnx_tensor *v, struct tpv_err *err)
{
    const void *tp = tpv_onnx_attr_tensor(nd, "value");
    memset(v, 0, sizeof *v);
    if (!tp) { /* the default: float 0 */
        static double zero = 0;
        v->dtype = TPV_ONNX_F64;
        v->numel = 1;
        v->data = &zero;
        return TPV_OK;
    }
    int rc = tpv_onnx_tensor_from_attr(v, tp, nd->name, err);
    if (!rc && v->numel != 1) {
        free(v->data);
        v->data = NULL;
        rc = tpv_onnx_attr_unsupported(err, nd, "value", "must hold one element");
    }
    return rc;
}

static void cos_release(const struct tpv_onnx_node *nd, struct tpv_onnx_tensor *v)
{
    if (tpv_onnx_attr_tensor(nd, "value"))
        free(v->data);
}

static int cos_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    struct tpv_onnx_tensor v;
    int rc = cos_value(nd, &v, err);
    if (!rc)
        cos_release(nd, &v);
    return rc;
}

static int cos_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    int rc = static_ints(nd, in[0], 0, err);
    if (rc)
        return rc;
    if (in[0]->rank != 1 || in[0]->numel > TPV_MAX_RANK)
        return tpv_onnx_shape_error(nd, err, "the shape input must be a list of at most %d dims",
                                    TPV_MAX_RANK);
    struct tpv_onnx_tensor v;
    rc = cos_value(nd, &v, err);
    if (rc)
        return rc;
    out[0]->dtype = v.dtype;
    cos_release(nd, &v);
    return tpv_onnx_set_shape(nd, out[0], (int)in[0]->numel, in[0]->data, err);
}

static int cos_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)in;
    struct tpv_onnx_tensor v;
    int rc = cos_value(nd, &v, err);
    if (rc)
        return rc;
    elem fill;
    memcpy(&fill, v.data, sizeof fill);
    for (uint64_t i = 0; i < out[0]->numel; i++)
        ((elem *)out[0]->data)[i] = fill;
    cos_release(nd, &v);
    return TPV_OK;
}

/* ---- Range (bounds known at load: its length is a shape) ---- */

static int range_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                       struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    for (unsigned k = 0; k < 3; k++) {
        if (!in[k]->data)
            return tpv_onnx_need_static(nd, k, err);
        if (in[k]->numel != 1 || in[k]->dtype != in[0]->dtype)
            return tpv_onnx_shape_error(nd, err, "start, limit and delta must be scalars of one "
                                        "type");
    }
    double start = tpv_onnx_get_f(in[0], 0), limit = tpv_onnx_get_f(in[1], 0);
    double delta = tpv_onnx_get_f(in[2], 0);
    if (delta == 0)
        return tpv_onnx_shape_error(nd, err, "delta 0");
    double n = ceil((limit - start) / delta);
    if (!(n <= (double)(INT64_C(1) << 40)))
        return tpv_onnx_shape_error(nd, err, "too many elements");
    int64_t len = n > 0 ? (int64_t)n : 0;
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_set_shape(nd, out[0], 1, &len, err);
}

static int range_forward(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    for (uint64_t i = 0; i < out[0]->numel; i++) {
        if (out[0]->dtype == TPV_ONNX_I64)
            ((int64_t *)out[0]->data)[i] =
                tpv_onnx_get_i(in[0], 0) + (int64_t)i * tpv_onnx_get_i(in[2], 0);
        else
            ((double *)out[0]->data)[i] =
                tpv_onnx_get_f(in[0], 0) + (double)i * tpv_onnx_get_f(in[2], 0);
    }
    return TPV_OK;
}

/* ---- ScatterND (reduction none: torch's slice assignment, e.g. a Swin attention mask) ---- */

static int scatternd_check(const struct tpv_onnx_node *nd, struct tpv_err *err)
{
    bool none;
    int rc = tpv_onnx_attr_str_is(nd, "reduction", "none", true, &none, err);
    if (!rc && !none)
        rc = tpv_onnx_attr_unsupported(err, nd, "reduction", "only 'none' is supported");
    return rc;
}

/* The geometry: q index tuples of length r into data's leading dims, each a slice of `inner`. */
struct scat {
    uint64_t q, inner;
    int r;
};

static int scat_geom(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     struct scat *g, struct tpv_err *err)
{
    const struct tpv_onnx_tensor *x = in[0], *ix = in[1], *u = in[2];
    int rc = static_ints(nd, ix, 1, err);
    if (rc)
        return rc;
    if (ix->rank < 1 || ix->shape[ix->rank - 1] > x->rank)
        return tpv_onnx_shape_error(nd, err, "the indices' last dimension exceeds the rank");
    g->r = (int)ix->shape[ix->rank - 1];
    g->q = ix->numel / (uint64_t)(g->r ? g->r : 1);
    g->inner = 1;
    for (int i = g->r; i < x->rank; i++)
        g->inner *= (uint64_t)x->shape[i];
    /* updates: indices.shape[:-1] + data.shape[r:] */
    int ur = ix->rank - 1 + x->rank - g->r;
    bool ok = u->rank == ur && u->dtype == x->dtype;
    for (int i = 0; ok && i < ix->rank - 1; i++)
        ok = u->shape[i] == ix->shape[i];
    for (int i = g->r; ok && i < x->rank; i++)
        ok = u->shape[ix->rank - 1 + i - g->r] == x->shape[i];
    if (!ok)
        return tpv_onnx_shape_error(nd, err, "updates do not have the shape the indices select");
    const int64_t *iv = ix->data;
    for (uint64_t j = 0; j < g->q * (uint64_t)g->r; j++) {
        int64_t d = x->shape[j % (uint64_t)g->r];
        if (iv[j] < -d || iv[j] >= d)
            return tpv_onnx_shape_error(nd, err, "index %lld out of range", (long long)iv[j]);
    }
    return TPV_OK;
}

/* The offset in data of index tuple j's slice. */
static uint64_t scat_offset(const struct tpv_onnx_tensor *x, const struct scat *g,
                            const int64_t *iv, uint64_t j)
{
    uint64_t off = 0;
    for (int d = 0; d < g->r; d++) {
        int64_t v = iv[j * (uint64_t)g->r + (uint64_t)d];
        off = off * (uint64_t)x->shape[d] + (uint64_t)(v < 0 ? v + x->shape[d] : v);
    }
    return off * g->inner;
}

static int scatternd_infer(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                           struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct scat g;
    int rc = scat_geom(nd, in, &g, err);
    if (rc)
        return rc;
    out[0]->dtype = in[0]->dtype;
    return tpv_onnx_set_shape(nd, out[0], in[0]->rank, in[0]->shape, err);
}

static int scatternd_forward(const struct tpv_onnx_node *nd,
                             const struct tpv_onnx_tensor *const *in,
                             struct tpv_onnx_tensor *const *out, struct tpv_err *err)
{
    struct scat g;
    int rc = scat_geom(nd, in, &g, err);
    if (rc)
        return rc;
    elem *y = out[0]->data;
    memcpy(y, in[0]->data, in[0]->numel * sizeof *y);
    for (uint64_t j = 0; j < g.q; j++)
        memcpy(y + scat_offset(in[0], &g, in[1]->data, j), (const elem *)in[2]->data + j * g.inner,
               g.inner * sizeof *y);
    return TPV_OK;
}

/* ==== reverse mode (forward mode: all of these are linear, tpv_onnx_jvp_linear) ==== */

/* g[base + sum_d idx_d * st[d]] += gout[i] over the output's index space: the adjoint of
 * strided_copy. */
static void strided_accum(double *g, const double *gout, int rank, const int64_t *shape,
                          const int64_t *st, int64_t base, uint64_t numel)
{
    int64_t idx[TPV_MAX_RANK] = {0}, off = base;
    for (uint64_t i = 0; i < numel; i++) {
        g[off] += gout[i];
        for (int d = rank - 1; d >= 0; d--) {
            idx[d]++;
            off += st[d];
            if (idx[d] < shape[d])
                break;
            off -= st[d] * idx[d];
            idx[d] = 0;
        }
    }
}

static bool no_grad(const struct tpv_onnx_tensor *const *in, const double *const *gout,
                    double *const *gin)
{
    return !gin[0] || !gout[0] || in[0]->dtype != TPV_ONNX_F64;
}

static int pass_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                    const struct tpv_onnx_tensor *const *out, const double *const *gout,
                    double *const *gin, struct tpv_err *err)
{
    (void)nd;
    (void)out;
    (void)err;
    if (no_grad(in, gout, gin))
        return TPV_OK;
    for (uint64_t i = 0; i < in[0]->numel; i++)
        gin[0][i] += gout[0][i];
    return TPV_OK;
}

static int transpose_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         const struct tpv_onnx_tensor *const *out, const double *const *gout,
                         double *const *gin, struct tpv_err *err)
{
    int perm[TPV_MAX_RANK];
    int rc = perm_of(nd, in[0]->rank, perm, err);
    if (rc || no_grad(in, gout, gin))
        return rc;
    int64_t ist[TPV_MAX_RANK], st[TPV_MAX_RANK];
    row_strides(in[0], ist);
    for (int i = 0; i < in[0]->rank; i++)
        st[i] = ist[perm[i]];
    strided_accum(gin[0], gout[0], out[0]->rank, out[0]->shape, st, 0, out[0]->numel);
    return TPV_OK;
}

static int slice_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     const struct tpv_onnx_tensor *const *out, const double *const *gout,
                     double *const *gin, struct tpv_err *err)
{
    struct slice_geom g;
    int rc = slice_geom(nd, in, &g, err);
    if (rc || no_grad(in, gout, gin) || out[0]->numel == 0)
        return rc;
    int64_t ist[TPV_MAX_RANK], st[TPV_MAX_RANK], base = 0;
    row_strides(in[0], ist);
    for (int i = 0; i < in[0]->rank; i++) {
        st[i] = ist[i] * g.step[i];
        base += ist[i] * g.start[i];
    }
    strided_accum(gin[0], gout[0], out[0]->rank, out[0]->shape, st, base, out[0]->numel);
    return TPV_OK;
}

static int concat_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      const struct tpv_onnx_tensor *const *out, const double *const *gout,
                      double *const *gin, struct tpv_err *err)
{
    int ax;
    int rc = concat_axis(nd, in[0]->rank, &ax, err);
    if (rc || !gout[0] || out[0]->dtype != TPV_ONNX_F64)
        return rc;
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < ax; i++)
        outer *= out[0]->shape[i];
    for (int i = ax + 1; i < out[0]->rank; i++)
        inner *= out[0]->shape[i];
    int64_t orow = out[0]->shape[ax] * inner, at = 0;
    for (size_t k = 0; k < nd->nin; k++) {
        int64_t row = in[k]->shape[ax] * inner;
        if (gin[k])
            for (int64_t o = 0; o < outer; o++)
                for (int64_t j = 0; j < row; j++)
                    gin[k][o * row + j] += gout[0][o * orow + at + j];
        at += row;
    }
    return TPV_OK;
}

static int split_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     const struct tpv_onnx_tensor *const *out, const double *const *gout,
                     double *const *gin, struct tpv_err *err)
{
    (void)out;
    int ax;
    int64_t sizes[SPLIT_MAX];
    int rc = split_sizes(nd, in, &ax, sizes, err);
    if (rc || !gin[0] || in[0]->dtype != TPV_ONNX_F64)
        return rc;
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < ax; i++)
        outer *= in[0]->shape[i];
    for (int i = ax + 1; i < in[0]->rank; i++)
        inner *= in[0]->shape[i];
    int64_t irow = in[0]->shape[ax] * inner, at = 0;
    for (size_t k = 0; k < nd->nout; k++) {
        int64_t row = sizes[k] * inner;
        if (gout[k])
            for (int64_t o = 0; o < outer; o++)
                for (int64_t j = 0; j < row; j++)
                    gin[0][o * irow + at + j] += gout[k][o * row + j];
        at += row;
    }
    return TPV_OK;
}

static int gather_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                      const struct tpv_onnx_tensor *const *out, const double *const *gout,
                      double *const *gin, struct tpv_err *err)
{
    (void)out;
    int ax;
    int rc = axis_attr(nd, in[0]->rank, &ax, err);
    if (rc || no_grad(in, gout, gin))
        return rc;
    int64_t outer = 1, inner = 1, d = in[0]->shape[ax];
    for (int i = 0; i < ax; i++)
        outer *= in[0]->shape[i];
    for (int i = ax + 1; i < in[0]->rank; i++)
        inner *= in[0]->shape[i];
    const int64_t *ix = in[1]->data;
    uint64_t ni = in[1]->numel;
    for (int64_t o = 0; o < outer; o++)
        for (uint64_t j = 0; j < ni; j++) {
            int64_t v = ix[j] < 0 ? ix[j] + d : ix[j];
            const double *src = gout[0] + ((uint64_t)o * ni + j) * (uint64_t)inner;
            double *dst = gin[0] + (o * d + v) * inner;
            for (int64_t t = 0; t < inner; t++)
                dst[t] += src[t];
        }
    return TPV_OK;
}

static int pad_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                   const struct tpv_onnx_tensor *const *out, const double *const *gout,
                   double *const *gin, struct tpv_err *err)
{
    (void)err;
    /* the constant, when it is a float input, collects the gradient of the padding */
    double *gconst = nd->nin > 2 && in[2] && in[2]->dtype == TPV_ONNX_F64 ? gin[2] : NULL;
    if (!gout[0] || (!gin[0] && !gconst))
        return TPV_OK;
    int r = in[0]->rank;
    const int64_t *p = in[1]->data;
    int64_t ist[TPV_MAX_RANK], idx[TPV_MAX_RANK] = {0};
    row_strides(in[0], ist);
    for (uint64_t i = 0; i < out[0]->numel; i++) {
        int64_t off = 0;
        bool inside = true;
        for (int d = 0; d < r && inside; d++) {
            int64_t c = idx[d] - p[d];
            inside = c >= 0 && c < in[0]->shape[d];
            off += c * ist[d];
        }
        if (inside && gin[0])
            gin[0][off] += gout[0][i];
        else if (!inside && gconst)
            *gconst += gout[0][i];
        for (int d = r - 1; d >= 0; d--) {
            if (++idx[d] < out[0]->shape[d])
                break;
            idx[d] = 0;
        }
    }
    return TPV_OK;
}

/* ScatterND: the data's adjoint is the output's where nothing was written, the updates' is the
 * output's at the slices they were written to (duplicate indices: ONNX leaves the order open). */
static int scatternd_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                         const struct tpv_onnx_tensor *const *out, const double *const *gout,
                         double *const *gin, struct tpv_err *err)
{
    (void)out;
    struct scat g;
    int rc = scat_geom(nd, in, &g, err);
    if (rc || !gout[0] || in[0]->dtype != TPV_ONNX_F64 || (!gin[0] && !gin[2]))
        return rc;
    bool *hit = calloc(in[0]->numel ? in[0]->numel : 1, sizeof *hit);
    if (!hit)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    for (uint64_t j = 0; j < g.q; j++) {
        uint64_t off = scat_offset(in[0], &g, in[1]->data, j);
        for (uint64_t t = 0; t < g.inner; t++) {
            hit[off + t] = true;
            if (gin[2])
                gin[2][j * g.inner + t] += gout[0][off + t];
        }
    }
    for (uint64_t i = 0; gin[0] && i < in[0]->numel; i++)
        if (!hit[i])
            gin[0][i] += gout[0][i];
    free(hit);
    return TPV_OK;
}

/* Range: out[i] = start + i delta. */
static int range_vjp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     const struct tpv_onnx_tensor *const *out, const double *const *gout,
                     double *const *gin, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    if (!gout[0] || in[0]->dtype != TPV_ONNX_F64)
        return TPV_OK;
    for (uint64_t i = 0; i < out[0]->numel; i++) {
        if (gin[0])
            gin[0][0] += gout[0][i];
        if (gin[2])
            gin[2][0] += (double)i * gout[0][i];
    }
    return TPV_OK;
}

static int range_jvp(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                     const struct tpv_onnx_tensor *const *out, const double *const *tin,
                     double *const *tout, struct tpv_err *err)
{
    (void)nd;
    (void)err;
    if (!tout[0] || in[0]->dtype != TPV_ONNX_F64)
        return TPV_OK;
    for (uint64_t i = 0; i < out[0]->numel; i++)
        tout[0][i] = (tin[0] ? tin[0][0] : 0.0) + (tin[2] ? (double)i * tin[2][0] : 0.0);
    return TPV_OK;
}

#define LIN tpv_onnx_jvp_linear

const struct tpv_onnx_op tpv_onnx_ops_shape[] = {
    {"Reshape", 2, 2, 1, 1, NULL, reshape_infer, copy_forward, pass_vjp, LIN},
    {"Flatten", 1, 1, 1, 1, NULL, flatten_infer, copy_forward, pass_vjp, LIN},
    {"Transpose", 1, 1, 1, 1, NULL, transpose_infer, transpose_forward, transpose_vjp, LIN},
    {"Squeeze", 1, 2, 1, 1, NULL, squeeze_infer, copy_forward, pass_vjp, LIN},
    {"Unsqueeze", 2, 2, 1, 1, NULL, unsqueeze_infer, copy_forward, pass_vjp, LIN},
    {"Concat", 1, 256, 1, 1, concat_check, concat_infer, concat_forward, concat_vjp, LIN},
    {"Slice", 3, 5, 1, 1, NULL, slice_infer, slice_forward, slice_vjp, LIN},
    {"Split", 1, 2, 1, SPLIT_MAX, split_check, split_infer, split_forward, split_vjp, LIN},
    {"Gather", 2, 2, 1, 1, NULL, gather_infer, gather_forward, gather_vjp, LIN},
    {"Shape", 1, 1, 1, 1, shape_check, shape_infer, shape_forward, NULL, NULL},
    {"Pad", 2, 3, 1, 1, pad_check, pad_infer, pad_forward, pad_vjp, LIN},
    {"ConstantOfShape", 1, 1, 1, 1, cos_check, cos_infer, cos_forward, NULL, NULL},
    {"Range", 3, 3, 1, 1, NULL, range_infer, range_forward, range_vjp, range_jvp},
    {"ScatterND", 3, 3, 1, 1, scatternd_check, scatternd_infer, scatternd_forward,
     scatternd_vjp, LIN},
};
const size_t tpv_onnx_ops_shape_n = sizeof tpv_onnx_ops_shape / sizeof tpv_onnx_ops_shape[0];
