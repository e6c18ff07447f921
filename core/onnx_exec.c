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
    free(ex->vals);
    free(ex->owned);
    free(ex);
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
