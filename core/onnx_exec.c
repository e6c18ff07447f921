/* onnx_exec.c: the float64 forward pass over a planned graph (onnx_exec.h). */
#include "core/onnx_exec.h"

#include <stdlib.h>
#include <string.h>

#include "core/onnx_ops.h"

#define ARGS_MAX 257

int tpv_onnx_exec_new(struct tpv_onnx_exec **out, const struct tpv_onnx_plan *plan,
                      struct tpv_err *err)
{
    *out = NULL;
    const struct tpv_onnx_model *m = plan->m;
    struct tpv_onnx_exec *ex = calloc(1, sizeof *ex);
    if (!ex)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    ex->plan = plan;
    size_t nv = m->nvalues ? m->nvalues : 1;
    ex->vals = calloc(nv, sizeof *ex->vals);
    ex->owned = calloc(nv, sizeof *ex->owned);
    int rc = ex->vals && ex->owned ? TPV_OK : TPV_ENOMEM;
    for (size_t v = 0; !rc && v < m->nvalues; v++) {
        ex->vals[v] = plan->vals[v];
        bool computed = m->values[v].kind == TPV_ONNX_VINPUT ||
                        (m->values[v].kind == TPV_ONNX_VNODE && !plan->known[v]);
        if (!computed || plan->known[v])
            continue;
        ex->vals[v].data = malloc((size_t)(ex->vals[v].numel ? ex->vals[v].numel : 1) * 8);
        if (!ex->vals[v].data)
            rc = TPV_ENOMEM;
        else
            ex->owned[v] = true;
    }
    if (rc) {
        tpv_onnx_exec_free(ex);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    *out = ex;
    return TPV_OK;
}

void tpv_onnx_exec_free(struct tpv_onnx_exec *ex)
{
    if (!ex)
        return;
    for (size_t v = 0; ex->vals && ex->owned && v < ex->plan->m->nvalues; v++)
        if (ex->owned[v])
            free(ex->vals[v].data);
    for (size_t v = 0; v < ex->plan->m->nvalues; v++) {
        if (ex->grad)
            free(ex->grad[v]);
        if (ex->tan)
            free(ex->tan[v]);
    }
    for (size_t i = 0; ex->narrow_w && i < ex->plan->m->nnodes; i++)
        free(ex->narrow_w[i]);
    free(ex->narrow_w);
    tpv_onnx_scratch_release(&ex->ws);
    free(ex->grad);
    free(ex->grad_ready);
    free(ex->grad_zero);
    free(ex->tan);
    free(ex->vals);
    free(ex->owned);
    free(ex);
}

int tpv_onnx_exec_open(const struct tpv_onnx_model *m, const struct tpv_tensor *inputs, size_t b,
                       struct tpv_onnx_plan **plan, struct tpv_onnx_exec **ex,
                       struct tpv_err *err)
{
    struct tpv_onnx_tensor in = {.dtype = TPV_ONNX_F64, .rank = inputs->rank};
    for (int i = 0; i < inputs->rank; i++)
        in.shape[i] = (int64_t)inputs->shape[i];
    in.shape[0] = (int64_t)b;
    *ex = NULL;
    int rc = tpv_onnx_plan_new(plan, m, &in, err);
    if (!rc)
        rc = tpv_onnx_exec_new(ex, *plan, err);
    if (rc) {
        tpv_onnx_plan_free(*plan);
        *plan = NULL;
    }
    return rc;
}

int tpv_onnx_exec_forward(struct tpv_onnx_exec *ex, const double *const *inputs,
                          struct tpv_err *err)
{
    const struct tpv_onnx_model *m = ex->plan->m;
    for (size_t k = 0; k < m->ninputs; k++) {
        struct tpv_onnx_tensor *t = &ex->vals[m->inputs[k]];
        if (t->dtype == TPV_ONNX_F64)
            memcpy(t->data, inputs[k], t->numel * sizeof(double));
    }
    for (size_t i = 0; i < m->nnodes; i++) {
        if (!ex->plan->run[i])
            continue;
        const struct tpv_onnx_node *nd = &m->nodes[i];
        struct tpv_onnx_tensor *in[ARGS_MAX], *out[ARGS_MAX];
        tpv_onnx_node_args(ex->vals, nd, in, out);
        int rc = tpv_onnx_op_get(nd->op)->forward(nd, (const struct tpv_onnx_tensor *const *)in,
                                                  out, err);
        if (rc)
            return rc;
    }
    return TPV_OK;
}

const struct tpv_onnx_tensor *tpv_onnx_exec_value(const struct tpv_onnx_exec *ex, long v)
{
    return &ex->vals[v];
}

/* Float values that carry derivatives: not known at load, not int64. */
static bool differentiable(const struct tpv_onnx_exec *ex, long v)
{
    return v >= 0 && !ex->plan->known[v] && ex->vals[v].dtype == TPV_ONNX_F64;
}

/* Per-value buffers for the differentiable values (allocated once, reused), zeroed unless
 * `lazy` (the reverse pass zeroes its adjoints as it first writes them, grad_zero). */
static int deriv_buffers(struct tpv_onnx_exec *ex, double ***bufs, bool lazy, struct tpv_err *err)
{
    size_t nv = ex->plan->m->nvalues;
    if (!*bufs) {
        *bufs = calloc(nv ? nv : 1, sizeof **bufs);
        if (!*bufs)
            return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    for (size_t v = 0; v < nv; v++) {
        if (!differentiable(ex, (long)v))
            continue;
        uint64_t n = ex->vals[v].numel;
        if (!(*bufs)[v]) {
            (*bufs)[v] = calloc(n ? n : 1, sizeof(double));
            if (!(*bufs)[v])
                return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        } else if (!lazy) {
            memset((*bufs)[v], 0, n * sizeof(double));
        }
    }
    return TPV_OK;
}

/* The reverse pass's zeroing: an adjoint is zeroed just before its first write of the pass (its
 * memory then in cache for the accumulation that follows, not zeroed tens of megabytes earlier),
 * and not at all when it still holds the zeros of a former pass: parameter adjoints under
 * skip_leaves are never written.  grad_ready[v]: v's adjoint holds this pass's partial sum;
 * grad_zero[v]: its buffer is known to be all zeros. */
static void grad_touch(struct tpv_onnx_exec *ex, long v)
{
    if (ex->grad_ready[v])
        return;
    if (!ex->grad_zero[v])
        memset(ex->grad[v], 0, ex->vals[v].numel * sizeof(double));
    ex->grad_ready[v] = true;
    ex->grad_zero[v] = false; /* about to be written (or read as the zeros it now holds) */
}

static int grad_state(struct tpv_onnx_exec *ex, struct tpv_err *err)
{
    size_t nv = ex->plan->m->nvalues ? ex->plan->m->nvalues : 1;
    if (!ex->grad_ready) {
        ex->grad_ready = calloc(nv, sizeof *ex->grad_ready);
        ex->grad_zero = malloc(nv * sizeof *ex->grad_zero);
        if (!ex->grad_ready || !ex->grad_zero)
            return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        memset(ex->grad_zero, 1, nv * sizeof *ex->grad_zero); /* calloc'd by deriv_buffers */
    }
    memset(ex->grad_ready, 0, nv * sizeof *ex->grad_ready);
    return TPV_OK;
}

/* An adjoint the reverse pass computes: every differentiable value, but only computed ones when
 * skip_leaves is set. */
static bool wanted_adjoint(const struct tpv_onnx_exec *ex, long v)
{
    return differentiable(ex, v) &&
           !(ex->skip_leaves && ex->plan->m->values[v].kind != TPV_ONNX_VNODE);
}

static int no_derivative(const struct tpv_onnx_node *nd, const char *mode, struct tpv_err *err)
{
    return tpv_err_set(err, TPV_EUNIMPLEMENTED, nd->name, "node '%s' (%s): no %s", nd->name,
                       nd->op_type, mode);
}

/* Whether node nd's input adjoint runs with float32 products (narrow_conv): narrow_products, a
 * Conv with a float32 initializer weight, its input's adjoint wanted. */
static bool narrow_node(const struct tpv_onnx_exec *ex, const struct tpv_onnx_node *nd,
                        double *const *gin, const double *const *gout)
{
    const struct tpv_onnx_model *m = ex->plan->m;
    return ex->narrow_products && strcmp(nd->op_type, "Conv") == 0 && nd->nin >= 2 && gin[0] &&
           gout[0] && nd->in[1] >= 0 && m->values[nd->in[1]].kind == TPV_ONNX_VINIT &&
           tpv_onnx_value_narrow(m, nd->in[1]);
}

/* Conv node i's input adjoint with float32 products (overwriting it when `set`), then its other
 * adjoints (if wanted) by its VJP. */
static int narrow_conv(struct tpv_onnx_exec *ex, size_t i, const struct tpv_onnx_tensor *const *in,
                       const struct tpv_onnx_tensor *const *out, const double *const *gout,
                       double **gin, bool set, struct tpv_err *err)
{
    const struct tpv_onnx_model *m = ex->plan->m;
    const struct tpv_onnx_node *nd = &m->nodes[i];
    if (!ex->narrow_w) {
        ex->narrow_w = calloc(m->nnodes ? m->nnodes : 1, sizeof *ex->narrow_w);
        if (!ex->narrow_w)
            return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    int rc = TPV_OK;
    if (!ex->narrow_w[i])
        rc = tpv_onnx_conv_adjoint_weight_f32(nd, in[0], in[1], &ex->narrow_w[i], err);
    if (!rc)
        rc = tpv_onnx_conv_input_adjoint_f32(nd, in[0], in[1], ex->narrow_w[i], gout[0], gin[0],
                                             set, &ex->ws, err);
    bool rest = false;
    for (size_t k = 1; k < nd->nin; k++)
        rest = rest || gin[k];
    if (rc || !rest)
        return rc;
    double *g0 = gin[0];
    gin[0] = NULL;
    rc = tpv_onnx_op_get(nd->op)->vjp(nd, in, out, gout, gin, err);
    gin[0] = g0;
    return rc;
}

/* Whether input slot k of nd shares its value with another slot whose adjoint is written. */
static bool shared_slot(const struct tpv_onnx_node *nd, double *const *gin, size_t k)
{
    for (size_t j = 0; j < nd->nin; j++)
        if (j != k && gin[j] && nd->in[j] == nd->in[k])
            return true;
    return false;
}

int tpv_onnx_exec_vjp(struct tpv_onnx_exec *ex, long v, const double *gy, struct tpv_err *err)
{
    const struct tpv_onnx_model *m = ex->plan->m;
    if (!differentiable(ex, v))
        return tpv_err_set(err, TPV_EINVAL, m->values[v].name, "value '%s' is not differentiable",
                           m->values[v].name);
    int rc = deriv_buffers(ex, &ex->grad, true, err);
    if (!rc)
        rc = grad_state(ex, err);
    if (rc)
        return rc;
    memcpy(ex->grad[v], gy, ex->vals[v].numel * sizeof(double));
    ex->grad_ready[v] = true;
    ex->grad_zero[v] = false;
    for (size_t i = m->nnodes; i-- > 0;) {
        if (!ex->plan->run[i])
            continue;
        const struct tpv_onnx_node *nd = &m->nodes[i];
        struct tpv_onnx_tensor *in[ARGS_MAX], *out[ARGS_MAX];
        const double *gout[ARGS_MAX];
        double *gin[ARGS_MAX];
        bool fresh[ARGS_MAX];
        tpv_onnx_node_args(ex->vals, nd, in, out);
        bool any = false;
        for (size_t k = 0; k < nd->nout; k++) {
            gout[k] = differentiable(ex, nd->out[k]) ? ex->grad[nd->out[k]] : NULL;
            any = any || gout[k];
        }
        if (!any)
            continue;
        any = false;
        for (size_t k = 0; k < nd->nin; k++) {
            gin[k] = wanted_adjoint(ex, nd->in[k]) ? ex->grad[nd->in[k]] : NULL;
            any = any || gin[k];
        }
        if (!any)
            continue;
        const struct tpv_onnx_op *op = tpv_onnx_op_get(nd->op);
        if (!op->vjp)
            return no_derivative(nd, "reverse mode", err);
        for (size_t k = 0; k < nd->nout; k++)
            if (gout[k])
                grad_touch(ex, nd->out[k]); /* no consumer wrote it: zeros */
        /* an adjoint's first writer overwrites it where the kernel can (no zeroing pass) */
        bool narrow = narrow_node(ex, nd, gin, gout);
        for (size_t k = 0; k < nd->nin; k++) {
            fresh[k] = false;
            if (!gin[k])
                continue;
            long u = nd->in[k];
            if ((narrow ? k == 0 : op->vjp_set != NULL) && !ex->grad_ready[u] &&
                !shared_slot(nd, gin, k)) {
                fresh[k] = true;
                ex->grad_ready[u] = true;
                ex->grad_zero[u] = false;
            } else {
                grad_touch(ex, u);
            }
        }
        const struct tpv_onnx_tensor *const *cin = (const struct tpv_onnx_tensor *const *)in;
        const struct tpv_onnx_tensor *const *cout = (const struct tpv_onnx_tensor *const *)out;
        if (narrow)
            rc = narrow_conv(ex, i, cin, cout, gout, gin, fresh[0], err);
        else if (op->vjp_set)
            rc = op->vjp_set(nd, cin, cout, gout, gin, fresh, err);
        else
            rc = op->vjp(nd, cin, cout, gout, gin, err);
        if (rc)
            return rc;
    }
    for (size_t u = 0; u < m->nvalues; u++) /* what the pass did not reach: zeros */
        if (differentiable(ex, (long)u) && !ex->grad_ready[u] && !ex->grad_zero[u]) {
            memset(ex->grad[u], 0, ex->vals[u].numel * sizeof(double));
            ex->grad_zero[u] = true;
        }
    return TPV_OK;
}

const double *tpv_onnx_exec_grad(const struct tpv_onnx_exec *ex, long v)
{
    return ex->grad && differentiable(ex, v) ? ex->grad[v] : NULL;
}

int tpv_onnx_exec_jvp(struct tpv_onnx_exec *ex, const double *const *seed, struct tpv_err *err)
{
    const struct tpv_onnx_model *m = ex->plan->m;
    int rc = deriv_buffers(ex, &ex->tan, false, err);
    if (rc)
        return rc;
    for (size_t v = 0; seed && v < m->nvalues; v++)
        if (seed[v] && differentiable(ex, (long)v) && m->values[v].kind != TPV_ONNX_VNODE)
            memcpy(ex->tan[v], seed[v], ex->vals[v].numel * sizeof(double));
    for (size_t i = 0; i < m->nnodes; i++) {
        if (!ex->plan->run[i])
            continue;
        const struct tpv_onnx_node *nd = &m->nodes[i];
        struct tpv_onnx_tensor *in[ARGS_MAX], *out[ARGS_MAX];
        const double *tin[ARGS_MAX];
        double *tout[ARGS_MAX];
        tpv_onnx_node_args(ex->vals, nd, in, out);
        bool any = false;
        for (size_t k = 0; k < nd->nout; k++) {
            tout[k] = differentiable(ex, nd->out[k]) ? ex->tan[nd->out[k]] : NULL;
            any = any || tout[k];
        }
        if (!any)
            continue;
        for (size_t k = 0; k < nd->nin; k++)
            tin[k] = differentiable(ex, nd->in[k]) ? ex->tan[nd->in[k]] : NULL;
        const struct tpv_onnx_op *op = tpv_onnx_op_get(nd->op);
        if (!op->jvp)
            return no_derivative(nd, "forward mode", err);
        rc = op->jvp(nd, (const struct tpv_onnx_tensor *const *)in,
                     (const struct tpv_onnx_tensor *const *)out, tin, tout, err);
        if (rc)
            return rc;
    }
    return TPV_OK;
}

const double *tpv_onnx_exec_tangent(const struct tpv_onnx_exec *ex, long v)
{
    return ex->tan && differentiable(ex, v) ? ex->tan[v] : NULL;
}
