/* onnx_ops.c: the operator table (the union of the kernel files' tables) and the helpers the
 * kernels share (onnx_ops.h). */
#include "core/onnx_ops.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/onnx_kernels.h"

struct part {
    const struct tpv_onnx_op *ops;
    const size_t *n;
};

static const struct part parts[] = {
    {tpv_onnx_ops_elem, &tpv_onnx_ops_elem_n},
    {tpv_onnx_ops_norm, &tpv_onnx_ops_norm_n},
    {tpv_onnx_ops_shape, &tpv_onnx_ops_shape_n},
    {tpv_onnx_ops_linear, &tpv_onnx_ops_linear_n},
};

size_t tpv_onnx_op_count(void)
{
    size_t n = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        n += *parts[i].n;
    return n;
}

const struct tpv_onnx_op *tpv_onnx_op_get(int op)
{
    size_t k = (size_t)op;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (k < *parts[i].n)
            return &parts[i].ops[k];
        k -= *parts[i].n;
    }
    return NULL;
}

int tpv_onnx_op_find(const char *op_type)
{
    int n = (int)tpv_onnx_op_count();
    for (int i = 0; i < n; i++)
        if (strcmp(tpv_onnx_op_get(i)->name, op_type) == 0)
            return i;
    return -1;
}

int tpv_onnx_shape_error(const struct tpv_onnx_node *nd, struct tpv_err *err, const char *fmt,
                         ...)
{
    char what[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return tpv_err_set(err, TPV_EINVAL, nd->name, "node '%s' (%s): shapes do not chain: %s",
                       nd->name, nd->op_type, what);
}

int tpv_onnx_need_static(const struct tpv_onnx_node *nd, unsigned input, struct tpv_err *err)
{
    return tpv_err_set(err, TPV_EINVAL, nd->name,
                       "node '%s' (%s): input %u must be known when the model is loaded (a "
                       "constant, an initializer or computed from shapes)",
                       nd->name, nd->op_type, input);
}

int tpv_onnx_set_shape(const struct tpv_onnx_node *nd, struct tpv_onnx_tensor *t, int rank,
                       const int64_t *shape, struct tpv_err *err)
{
    if (rank < 0 || rank > TPV_MAX_RANK)
        return tpv_onnx_shape_error(nd, err, "rank %d (at most %d)", rank, TPV_MAX_RANK);
    int64_t n = tpv_onnx_numel(rank, shape);
    if (n < 0)
        return tpv_onnx_shape_error(nd, err, "negative dimension or too many elements");
    memmove(t->shape, shape, (size_t)rank * sizeof *shape);
    t->rank = rank;
    t->numel = (uint64_t)n;
    return TPV_OK;
}

int tpv_onnx_axis(const struct tpv_onnx_node *nd, int64_t axis, int rank, const char *what,
                  int *out, struct tpv_err *err)
{
    if (axis < -rank || axis >= rank)
        return tpv_err_set(err, TPV_EINVAL, nd->name,
                           "node '%s' (%s): %s %lld is out of range for rank %d", nd->name,
                           nd->op_type, what, (long long)axis, rank);
    *out = (int)(axis < 0 ? axis + rank : axis);
    return TPV_OK;
}

int tpv_onnx_broadcast(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *a,
                       const struct tpv_onnx_tensor *b, struct tpv_onnx_tensor *out,
                       struct tpv_err *err)
{
    int r = a->rank > b->rank ? a->rank : b->rank;
    int64_t s[TPV_MAX_RANK];
    for (int i = 0; i < r; i++) {
        int ia = i - (r - a->rank), ib = i - (r - b->rank);
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        if (da != db && da != 1 && db != 1)
            return tpv_onnx_shape_error(nd, err, "cannot broadcast dimension %d: %lld vs %lld", i,
                                        (long long)da, (long long)db);
        s[i] = da == 1 ? db : da;
    }
    return tpv_onnx_set_shape(nd, out, r, s, err);
}

int64_t tpv_onnx_get_i(const struct tpv_onnx_tensor *t, uint64_t i)
{
    if (t->dtype == TPV_ONNX_I64)
        return ((const int64_t *)t->data)[i];
    return (int64_t)((const double *)t->data)[i];
}

double tpv_onnx_get_f(const struct tpv_onnx_tensor *t, uint64_t i)
{
    if (t->dtype == TPV_ONNX_I64)
        return (double)((const int64_t *)t->data)[i];
    return ((const double *)t->data)[i];
}

#define ARGS_MAX 257

int tpv_onnx_jvp_linear(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        const struct tpv_onnx_tensor *const *out, const double *const *tin,
                        double *const *tout, struct tpv_err *err)
{
    struct tpv_onnx_tensor tins[ARGS_MAX], touts[ARGS_MAX];
    const struct tpv_onnx_tensor *pin[ARGS_MAX];
    struct tpv_onnx_tensor *pout[ARGS_MAX];
    double *zeros[ARGS_MAX] = {NULL};
    int rc = TPV_OK;
    for (size_t k = 0; k < nd->nin; k++) {
        pin[k] = in[k];
        if (!in[k] || in[k]->dtype != TPV_ONNX_F64)
            continue;
        tins[k] = *in[k];
        if (tin[k]) {
            tins[k].data = (void *)tin[k];
        } else {
            zeros[k] = calloc(in[k]->numel ? in[k]->numel : 1, sizeof(double));
            if (!zeros[k]) {
                rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
                goto out;
            }
            tins[k].data = zeros[k];
        }
        pin[k] = &tins[k];
    }
    double *scratch[ARGS_MAX] = {NULL};
    for (size_t k = 0; k < nd->nout; k++) {
        pout[k] = NULL;
        if (!out[k])
            continue;
        touts[k] = *out[k];
        if (tout[k]) {
            touts[k].data = tout[k];
        } else {
            scratch[k] = malloc((out[k]->numel ? out[k]->numel : 1) * sizeof(double));
            if (!scratch[k]) {
                rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
                break;
            }
            touts[k].data = scratch[k];
        }
        pout[k] = &touts[k];
    }
    if (!rc)
        rc = tpv_onnx_op_get(nd->op)->forward(nd, pin, pout, err);
    for (size_t k = 0; k < nd->nout; k++)
        free(scratch[k]);
out:
    for (size_t k = 0; k < nd->nin; k++)
        free(zeros[k]);
    return rc;
}

int tpv_onnx_jvp_bilinear(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                          const struct tpv_onnx_tensor *const *out, const double *const *tin,
                          double *const *tout, struct tpv_err *err)
{
    if (!tout[0])
        return TPV_OK;
    const struct tpv_onnx_op *op = tpv_onnx_op_get(nd->op);
    uint64_t n = out[0]->numel;
    struct tpv_onnx_tensor t[3], o = *out[0];
    const struct tpv_onnx_tensor *pin[3] = {NULL, NULL, NULL};
    struct tpv_onnx_tensor *pout[1] = {&o};
    double *zero[3] = {NULL, NULL, NULL}, *second = NULL;
    int rc = TPV_OK;
    size_t nin = nd->nin < 3 ? nd->nin : 3;
    for (size_t k = 0; k < nin; k++) {
        if (!in[k] || tin[k])
            continue;
        zero[k] = calloc(in[k]->numel ? in[k]->numel : 1, sizeof(double));
        if (!zero[k]) {
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
            goto out;
        }
    }
    /* forward(t0, x1): input 2 (a bias) left out */
    t[0] = *in[0];
    t[0].data = tin[0] ? (void *)tin[0] : zero[0];
    pin[0] = &t[0];
    pin[1] = in[1];
    o.data = tout[0];
    rc = op->forward(nd, pin, pout, err);
    if (rc)
        goto out;
    /* + forward(x0, t1, t2) */
    second = malloc((n ? n : 1) * sizeof *second);
    if (!second) {
        rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        goto out;
    }
    pin[0] = in[0];
    for (size_t k = 1; k < nin; k++) {
        pin[k] = NULL;
        if (!in[k])
            continue;
        t[k] = *in[k];
        t[k].data = tin[k] ? (void *)tin[k] : zero[k];
        pin[k] = &t[k];
    }
    o.data = second;
    rc = op->forward(nd, pin, pout, err);
    for (uint64_t i = 0; !rc && i < n; i++)
        tout[0][i] += second[i];
out:
    free(second);
    for (int k = 0; k < 3; k++)
        free(zero[k]);
    return rc;
}
