/* onnx_persample.c: per-sample parameter gradients from a batched reverse pass
 * (onnx_persample.h), split over the samples on the job's threads. */
#include "core/onnx_persample.h"

#include <stdlib.h>
#include <string.h>

#include "core/linalg.h"
#include "core/onnx_attr.h"
#include "core/onnx_ghost.h"
#include "core/onnx_ops.h"

#define ARGS_MAX 257

struct tpv_onnx_persample {
    const struct tpv_onnx_model *m;
    size_t nnodes;
    size_t *nodes;   /* nodes reading a parameter, in graph order */
    bool *batched;   /* per value: computed from the graph input (rows are samples) */
    long *pidx;      /* per value: its index in m->params, or -1 */
    bool *sole;      /* per parameter: the weight of one conv_rows node and read nowhere else, so
                      * that node overwrites its block of G (grads_shared zeroes the others) */
};

/* Operators whose rows are independent samples and whose VJP on one row is that sample's
 * parameter gradient. */
static bool rowwise_op(const struct tpv_onnx_node *nd)
{
    static const char *ok[] = {"Conv", "Gemm", "MatMul", "BatchNormalization",
                               "LayerNormalization", "Add", "Sub", "Mul", "Div"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (strcmp(nd->op_type, ok[i]) == 0)
            return true;
    return false;
}

static int unqualified(const struct tpv_onnx_node *nd, const char *why, struct tpv_err *err)
{
    return tpv_err_set(err, TPV_EUNIMPLEMENTED, nd->name,
                       "node '%s' (%s): no batched per-sample gradients (%s)", nd->name,
                       nd->op_type, why);
}

/* Same per-sample shape at batch 1 and 2, batch first. */
static bool batch_first(const struct tpv_onnx_tensor *a, const struct tpv_onnx_tensor *b)
{
    if (a->rank < 1 || a->rank != b->rank || a->shape[0] != 1 || b->shape[0] != 2)
        return false;
    for (int i = 1; i < a->rank; i++)
        if (a->shape[i] != b->shape[i])
            return false;
    return true;
}

static int check_node(struct tpv_onnx_persample *ps, const struct tpv_onnx_plan *one,
                      const struct tpv_onnx_plan *two, size_t i, bool *reads_param,
                      struct tpv_err *err)
{
    const struct tpv_onnx_node *nd = &ps->m->nodes[i];
    bool any = false;
    *reads_param = false;
    for (size_t k = 0; k < nd->nin; k++) {
        long v = nd->in[k];
        if (v < 0)
            continue;
        any = any || ps->batched[v];
        *reads_param = *reads_param || ps->pidx[v] >= 0;
    }
    if (!any)
        return unqualified(nd, "computed from parameters alone", err);
    for (size_t k = 0; k < nd->nout; k++) {
        long v = nd->out[k];
        if (v < 0)
            continue;
        ps->batched[v] = true;
        if (one->vals[v].dtype == TPV_ONNX_F64 && !batch_first(&one->vals[v], &two->vals[v]))
            return unqualified(nd, "the batch is not the first dimension", err);
    }
    if (*reads_param && !rowwise_op(nd))
        return unqualified(nd, "reads a parameter", err);
    if (*reads_param && strcmp(nd->op_type, "LayerNormalization") == 0) {
        int64_t axis = -1;
        int ax = 0;
        int rc = tpv_onnx_attr_int(nd, "axis", -1, &axis, err);
        if (!rc)
            rc = tpv_onnx_axis(nd, axis, one->vals[nd->in[0]].rank, "axis", &ax, err);
        if (rc)
            return rc;
        if (ax == 0)
            return unqualified(nd, "normalizes over the batch", err);
    }
    return TPV_OK;
}

/* A Conv node with a parameter weight on a batched input (and no batched weight or bias):
 * tpv_onnx_persample_grads_shared gives its rows by tpv_onnx_conv_rows_grads. */
static bool conv_rows_node(const struct tpv_onnx_persample *ps, const struct tpv_onnx_node *nd)
{
    long x = nd->nin > 0 ? nd->in[0] : -1, w = nd->nin > 1 ? nd->in[1] : -1;
    long b = nd->nin > 2 ? nd->in[2] : -1;
    return strcmp(nd->op_type, "Conv") == 0 && x >= 0 && w >= 0 && ps->batched[x] &&
           !ps->batched[w] && ps->pidx[w] >= 0 && (b < 0 || !ps->batched[b]);
}

/* ps->sole: parameters read by exactly one input slot of the nodes, the weight slot of a
 * conv_rows_node (a weight shared by two nodes accumulates, so it is zeroed first). */
static void sole_weights(struct tpv_onnx_persample *ps)
{
    const struct tpv_onnx_model *m = ps->m;
    for (size_t j = 0; j < m->nparams; j++) {
        int reads = 0;
        bool conv = false;
        for (size_t i = 0; i < ps->nnodes; i++) {
            const struct tpv_onnx_node *nd = &m->nodes[ps->nodes[i]];
            for (size_t k = 0; k < nd->nin; k++)
                if (nd->in[k] == m->params[j]) {
                    reads++;
                    conv = k == 1 && conv_rows_node(ps, nd);
                }
        }
        ps->sole[j] = reads == 1 && conv;
    }
}

int tpv_onnx_persample_new(struct tpv_onnx_persample **out, const struct tpv_onnx_model *m,
                           const struct tpv_onnx_plan *one, const struct tpv_onnx_plan *two,
                           struct tpv_err *err)
{
    *out = NULL;
    struct tpv_onnx_persample *ps = calloc(1, sizeof *ps);
    size_t nv = m->nvalues ? m->nvalues : 1;
    if (!ps)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    ps->m = m;
    ps->nodes = calloc(m->nnodes ? m->nnodes : 1, sizeof *ps->nodes);
    ps->batched = calloc(nv, sizeof *ps->batched);
    ps->pidx = malloc(nv * sizeof *ps->pidx);
    ps->sole = calloc(m->nparams ? m->nparams : 1, sizeof *ps->sole);
    if (!ps->nodes || !ps->batched || !ps->pidx || !ps->sole) {
        tpv_onnx_persample_free(ps);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    for (size_t v = 0; v < m->nvalues; v++)
        ps->pidx[v] = -1;
    for (size_t j = 0; j < m->nparams; j++)
        ps->pidx[m->params[j]] = (long)j;
    for (size_t k = 0; k < m->ninputs; k++)
        ps->batched[m->inputs[k]] = true;
    int rc = TPV_OK;
    for (size_t i = 0; !rc && i < m->nnodes; i++) {
        bool reads = false;
        if (!one->run[i])
            continue;
        rc = check_node(ps, one, two, i, &reads, err);
        if (!rc && reads)
            ps->nodes[ps->nnodes++] = i;
    }
    if (rc) {
        tpv_onnx_persample_free(ps);
        return rc;
    }
    sole_weights(ps);
    *out = ps;
    return TPV_OK;
}

void tpv_onnx_persample_free(struct tpv_onnx_persample *ps)
{
    if (!ps)
        return;
    free(ps->nodes);
    free(ps->batched);
    free(ps->pidx);
    free(ps->sole);
    free(ps);
}

/* Row t of a batched tensor (a view), or the tensor itself when it is not batched. */
static void row_view(const struct tpv_onnx_persample *ps, const struct tpv_onnx_exec *ex, long v,
                     uint64_t t, struct tpv_onnx_tensor *view)
{
    *view = ex->vals[v];
    if (!ps->batched[v] || view->shape[0] <= 0)
        return;
    uint64_t per = view->numel / (uint64_t)view->shape[0];
    view->shape[0] = 1;
    view->numel = per;
    view->data = (char *)view->data + t * per * 8; /* both dtypes are 8 bytes */
}

static const double *row_grad(const struct tpv_onnx_persample *ps,
                              const struct tpv_onnx_exec *ex, long v, uint64_t t)
{
    const double *g = v >= 0 && ps->batched[v] ? tpv_onnx_exec_grad(ex, v) : NULL;
    if (!g || ex->vals[v].shape[0] <= 0)
        return NULL;
    return g + t * (ex->vals[v].numel / (uint64_t)ex->vals[v].shape[0]);
}

/* Sample t's gradients of the parameters node nd reads, added into its row g. */
static int node_row(const struct tpv_onnx_persample *ps, const struct tpv_onnx_exec *ex,
                    const struct tpv_onnx_node *nd, uint64_t t, const uint64_t *offset,
                    double *g, struct tpv_err *err)
{
    struct tpv_onnx_tensor vin[ARGS_MAX], vout[ARGS_MAX];
    const struct tpv_onnx_tensor *in[ARGS_MAX], *out[ARGS_MAX];
    const double *gout[ARGS_MAX];
    double *gin[ARGS_MAX];
    bool any = false;
    for (size_t k = 0; k < nd->nout; k++) {
        out[k] = NULL;
        gout[k] = row_grad(ps, ex, nd->out[k], t);
        any = any || gout[k];
        if (nd->out[k] >= 0) {
            row_view(ps, ex, nd->out[k], t, &vout[k]);
            out[k] = &vout[k];
        }
    }
    if (!any)
        return TPV_OK;
    for (size_t k = 0; k < nd->nin; k++) {
        long v = nd->in[k];
        in[k] = NULL;
        gin[k] = NULL;
        if (v < 0)
            continue;
        row_view(ps, ex, v, t, &vin[k]);
        in[k] = &vin[k];
        if (ps->pidx[v] >= 0)
            gin[k] = g + offset[ps->pidx[v]];
    }
    return tpv_onnx_op_get(nd->op)->vjp(nd, in, out, gout, gin, err);
}

/* Samples [first, first + count) of tpv_onnx_persample_grads: each sample's row collects the
 * nodes in graph order, as in the sequential loop, so a split over samples changes no bit. */
struct grads_job {
    const struct tpv_onnx_persample *ps;
    const struct tpv_onnx_exec *ex;
    const uint64_t *offset;
    uint64_t p, b;
    double *G;
    int rc[64];
    struct tpv_err err[64];
};

static void grads_part(void *ctx, int t, int nt)
{
    struct grads_job *j = ctx;
    const struct tpv_onnx_model *m = j->ps->m;
    uint64_t first, count;
    tpv_split_range(j->b, 1, t, nt, &first, &count);
    tpv_err_clear(&j->err[t]);
    j->rc[t] = TPV_OK;
    for (uint64_t s = first; s < first + count && !j->rc[t]; s++)
        for (size_t i = 0; i < j->ps->nnodes && !j->rc[t]; i++)
            j->rc[t] = node_row(j->ps, j->ex, &m->nodes[j->ps->nodes[i]], s, j->offset,
                                j->G + s * j->p, &j->err[t]);
}

int tpv_onnx_persample_grads(const struct tpv_onnx_persample *ps, const struct tpv_onnx_exec *ex,
                             const uint64_t *offset, uint64_t p, double *G, struct tpv_err *err)
{
    const struct tpv_onnx_model *m = ps->m;
    uint64_t b = (uint64_t)ex->vals[m->inputs[0]].shape[0];
    memset(G, 0, b * p * sizeof *G);
    struct grads_job *j = malloc(sizeof *j);
    if (!j)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    *j = (struct grads_job){ .ps = ps, .ex = ex, .offset = offset, .p = p, .b = b, .G = G };
    /* A sample's gradients cost about the parameters they fill times a few flops. */
    int nt = tpv_split_threads((double)b * 4.0 * (double)p);
    if ((uint64_t)nt > b)
        nt = b ? (int)b : 1;
    if (nt > 64)
        nt = 64;
    tpv_parallel_run(nt, grads_part, j);
    int rc = TPV_OK;
    for (int t = 0; t < nt && !rc; t++) /* the first failing sample's error, as sequentially */
        if ((rc = j->rc[t]) != TPV_OK && err)
            *err = j->err[t];
    free(j);
    return rc;
}

/* A Conv node nd with a parameter weight on a batched input: every row's weight (and bias)
 * gradient by one shared im2col (onnx_ghost.h).  *done false: not such a node. */
static int conv_rows(const struct tpv_onnx_persample *ps, const struct tpv_onnx_exec *ex,
                     const struct tpv_onnx_node *nd, const uint64_t *offset, uint64_t p,
                     bool single, struct tpv_onnx_scratch *ws, double *G, bool *done,
                     struct tpv_err *err)
{
    *done = false;
    if (!conv_rows_node(ps, nd))
        return TPV_OK;
    *done = true;
    long x = nd->in[0], w = nd->in[1], b = nd->nin > 2 ? nd->in[2] : -1;
    uint64_t rows = (uint64_t)ex->vals[x].shape[0], woff = offset[ps->pidx[w]];
    bool set = ps->sole[ps->pidx[w]];
    const double *gy = row_grad(ps, ex, nd->out[0], 0);
    if (!gy) {
        for (uint64_t r = 0; set && r < rows; r++) /* no adjoint: a zero gradient */
            memset(G + r * p + woff, 0, ex->vals[w].numel * sizeof *G);
        return TPV_OK;
    }
    struct tpv_onnx_tensor x0;
    row_view(ps, ex, x, 0, &x0);
    uint64_t boff = b >= 0 && ps->pidx[b] >= 0 ? offset[ps->pidx[b]] : UINT64_MAX;
    return tpv_onnx_conv_rows_grads(nd, &x0, &ex->vals[w], gy, rows, G, p, woff, boff,
                                    single && tpv_onnx_value_narrow(ps->m, w), set, ws, err);
}

int tpv_onnx_persample_grads_shared(const struct tpv_onnx_persample *ps,
                                    const struct tpv_onnx_exec *ex, const uint64_t *offset,
                                    uint64_t p, bool single, struct tpv_onnx_scratch *ws,
                                    double *G, struct tpv_err *err)
{
    const struct tpv_onnx_model *m = ps->m;
    uint64_t b = (uint64_t)ex->vals[m->inputs[0]].shape[0];
    /* zeros where no kernel overwrites: every column but the sole Conv weights' blocks (with
     * the blocks in column order, as the source lays them out; else all of G) */
    bool ordered = true;
    for (size_t j = 0, end = 0; j < m->nparams; j++) {
        ordered = ordered && offset[j] >= end;
        end = offset[j] + m->values[m->params[j]].t.numel;
        ordered = ordered && end <= p;
    }
    if (!ordered)
        memset(G, 0, b * p * sizeof *G);
    for (uint64_t t = 0; ordered && t < b; t++) {
        double *g = G + t * p;
        uint64_t c = 0; /* columns [0, c) handled */
        for (size_t j = 0; j < m->nparams; j++) {
            if (!ps->sole[j])
                continue;
            memset(g + c, 0, (offset[j] - c) * sizeof *g);
            c = offset[j] + m->values[m->params[j]].t.numel;
        }
        memset(g + c, 0, (p - c) * sizeof *g);
    }
    for (size_t i = 0; i < ps->nnodes; i++) {
        const struct tpv_onnx_node *nd = &m->nodes[ps->nodes[i]];
        bool done;
        int rc = conv_rows(ps, ex, nd, offset, p, single, ws, G, &done, err);
        for (uint64_t t = 0; !rc && !done && t < b; t++)
            rc = node_row(ps, ex, nd, t, offset, G + t * p, err);
        if (rc)
            return rc;
    }
    return TPV_OK;
}
