/* onnx_plan.c: shape evaluation and static folding of shape sub-graphs (onnx_plan.h). */
#include "core/onnx_plan.h"

#include <stdlib.h>
#include <string.h>

#include "core/onnx_ops.h"

#define ARGS_MAX 257 /* Concat's 256 inputs + 1 */

static int nomem(struct tpv_err *err)
{
    return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
}

void tpv_onnx_node_args(struct tpv_onnx_tensor *vals, const struct tpv_onnx_node *nd,
                        struct tpv_onnx_tensor **in, struct tpv_onnx_tensor **out)
{
    for (size_t k = 0; k < nd->nin; k++)
        in[k] = nd->in[k] >= 0 ? &vals[nd->in[k]] : NULL;
    for (size_t k = 0; k < nd->nout; k++)
        out[k] = nd->out[k] >= 0 ? &vals[nd->out[k]] : NULL;
}

static int set_input(struct tpv_onnx_plan *p, long v, const struct tpv_onnx_tensor *given,
                     struct tpv_err *err)
{
    const struct tpv_onnx_value *val = &p->m->values[v];
    struct tpv_onnx_tensor *t = &p->vals[v];
    if (given->dtype != val->t.dtype)
        return tpv_err_set(err, TPV_EINVAL, val->name, "input '%s': wrong element type",
                           val->name);
    if (val->t.rank >= 0) {
        bool ok = given->rank == val->t.rank;
        for (int i = 0; ok && i < given->rank; i++)
            ok = val->t.shape[i] < 0 || val->t.shape[i] == given->shape[i];
        if (!ok)
            return tpv_err_set(err, TPV_EINVAL, val->name,
                               "input '%s': the shape given does not match the graph's", val->name);
    }
    int64_t n = tpv_onnx_numel(given->rank, given->shape);
    if (given->rank < 0 || given->rank > TPV_MAX_RANK || n < 0)
        return tpv_err_set(err, TPV_EINVAL, val->name, "input '%s': invalid shape", val->name);
    t->dtype = given->dtype;
    t->rank = given->rank;
    memcpy(t->shape, given->shape, sizeof t->shape);
    t->numel = (uint64_t)n;
    if (t->dtype == TPV_ONNX_I64) {
        if (!given->data)
            return tpv_err_set(err, TPV_EINVAL, val->name, "input '%s': int64 data missing",
                               val->name);
        t->data = malloc((size_t)(n ? n : 1) * 8);
        if (!t->data)
            return nomem(err);
        memcpy(t->data, given->data, (size_t)n * 8);
        p->owned[v] = p->known[v] = true;
    }
    return TPV_OK;
}

static int plan_node(struct tpv_onnx_plan *p, size_t i, struct tpv_err *err)
{
    const struct tpv_onnx_node *nd = &p->m->nodes[i];
    const struct tpv_onnx_op *op = tpv_onnx_op_get(nd->op);
    struct tpv_onnx_tensor *in[ARGS_MAX], *out[ARGS_MAX];
    tpv_onnx_node_args(p->vals, nd, in, out);
    /* inputs and outputs the operator requires may not be omitted ("" names) */
    for (size_t k = 0; k < nd->nin && k < op->min_in; k++)
        if (!in[k])
            return tpv_err_set(err, TPV_EINVAL, nd->name,
                               "node '%s' (%s): required input %zu is omitted", nd->name,
                               nd->op_type, k);
    for (size_t k = 0; k < nd->nout && k < op->min_out; k++)
        if (!out[k])
            return tpv_err_set(err, TPV_EINVAL, nd->name,
                               "node '%s' (%s): required output %zu is omitted", nd->name,
                               nd->op_type, k);
    bool all_known = strcmp(op->name, "Shape") == 0;
    if (!all_known) {
        all_known = true;
        for (size_t k = 0; k < nd->nin; k++)
            if (nd->in[k] >= 0 && !p->known[nd->in[k]])
                all_known = false;
    }
    int rc = op->infer(nd, (const struct tpv_onnx_tensor *const *)in, out, err);
    if (rc)
        return rc;
    p->run[i] = !all_known;
    for (size_t k = 0; k < nd->nout; k++) {
        if (!out[k])
            continue;
        if (p->run[i]) {
            p->act_bytes += out[k]->numel * 8;
            continue;
        }
        out[k]->data = malloc((size_t)(out[k]->numel ? out[k]->numel : 1) * 8);
        if (!out[k]->data)
            return nomem(err);
        p->owned[nd->out[k]] = p->known[nd->out[k]] = true;
    }
    return p->run[i] ? TPV_OK
                     : op->forward(nd, (const struct tpv_onnx_tensor *const *)in, out, err);
}

int tpv_onnx_plan_new(struct tpv_onnx_plan **out, const struct tpv_onnx_model *m,
                      const struct tpv_onnx_tensor *inputs, struct tpv_err *err)
{
    *out = NULL;
    struct tpv_onnx_plan *p = calloc(1, sizeof *p);
    if (!p)
        return nomem(err);
    p->m = m;
    size_t nv = m->nvalues ? m->nvalues : 1;
    p->vals = calloc(nv, sizeof *p->vals);
    p->owned = calloc(nv, sizeof *p->owned);
    p->known = calloc(nv, sizeof *p->known);
    p->run = calloc(m->nnodes ? m->nnodes : 1, sizeof *p->run);
    int rc = TPV_OK;
    if (!p->vals || !p->owned || !p->known || !p->run)
        rc = nomem(err);
    for (size_t v = 0; !rc && v < m->nvalues; v++) {
        const struct tpv_onnx_value *val = &m->values[v];
        if (val->kind == TPV_ONNX_VINIT || val->kind == TPV_ONNX_VCONST) {
            p->vals[v] = val->t; /* data borrowed from the model */
            /* float initializers may be parameters: never folded into constants */
            p->known[v] = val->kind == TPV_ONNX_VCONST || val->t.dtype == TPV_ONNX_I64;
        }
    }
    for (size_t k = 0; !rc && k < m->ninputs; k++)
        rc = set_input(p, m->inputs[k], &inputs[k], err);
    for (size_t i = 0; !rc && i < m->nnodes; i++)
        rc = plan_node(p, i, err);
    if (rc) {
        tpv_onnx_plan_free(p);
        return rc;
    }
    *out = p;
    return TPV_OK;
}

void tpv_onnx_plan_free(struct tpv_onnx_plan *p)
{
    if (!p)
        return;
    for (size_t v = 0; p->vals && p->owned && v < p->m->nvalues; v++)
        if (p->owned[v])
            free(p->vals[v].data);
    free(p->vals);
    free(p->owned);
    free(p->known);
    free(p->run);
    free(p);
}
