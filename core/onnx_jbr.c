/* onnx_jbr.c: JBR scores over an ONNX graph (see onnx_jbr.h).  Load: the unit layers, their
 * channel layouts and the values in_j is read at, traced on the plan of one sample.  Run: batched
 * forward passes, one reverse pass seeded with the cross-entropy against the pseudo-labels (zero
 * rows for dropped samples), then every kept sample's per-channel products into core/jbr.h's
 * running mini-batch, in input order. */
#include "core/onnx_jbr.h"

#include <stdlib.h>
#include <string.h>

#include "core/jbr.h"
#include "core/onnx_exec.h"

#define BATCH 32 /* samples per pass (1 for a graph with a fixed batch of 1) */

/* Where a layer's channels sit in one sample's elements: index o C inner + j inner + i. */
struct chan {
    long v;
    uint64_t outer, C, inner;
};

struct ulayer {
    const char *name; /* the weight's value name */
    const char *op;
    struct chan z;    /* the output (pre-activation) */
    struct chan *in;  /* the values in_j is read at */
    size_t nin;
    size_t first;     /* its first unit */
};

struct consumer {
    size_t node;
    size_t k; /* input position */
};

struct jbr_graph {
    const struct tpv_onnx_model *m;
    const struct tpv_onnx_plan *plan1;
    struct consumer **cons; /* per value: the running nodes that read it */
    size_t *ncons;
    struct ulayer *layers;
    size_t nlayers, H;
};

static int nomem(struct tpv_err *err)
{
    return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
}

static bool op_is(const struct tpv_onnx_node *nd, const char *const *names)
{
    for (; *names; names++)
        if (strcmp(nd->op_type, *names) == 0)
            return true;
    return false;
}

/* Conv, Gemm or MatMul whose B input is a parameter. */
static bool weighted(const struct tpv_onnx_model *m, const struct tpv_onnx_node *nd)
{
    static const char *const ops[] = { "Conv", "Gemm", "MatMul", NULL };
    return op_is(nd, ops) && nd->nin >= 2 && nd->in[1] >= 0 && m->values[nd->in[1]].param;
}

static uint64_t per_sample(const struct jbr_graph *g, long v)
{
    const struct tpv_onnx_tensor *t = &g->plan1->vals[v];
    return t->rank >= 1 && t->shape[0] == 1 ? t->numel : 0;
}

static int consumers_build(struct jbr_graph *g, struct tpv_err *err)
{
    const struct tpv_onnx_model *m = g->m;
    g->cons = calloc(m->nvalues ? m->nvalues : 1, sizeof *g->cons);
    g->ncons = calloc(m->nvalues ? m->nvalues : 1, sizeof *g->ncons);
    if (!g->cons || !g->ncons)
        return nomem(err);
    for (size_t i = 0; i < m->nnodes; i++)
        for (size_t k = 0; g->plan1->run[i] && k < m->nodes[i].nin; k++) {
            long v = m->nodes[i].in[k];
            if (v < 0)
                continue;
            struct consumer *c = realloc(g->cons[v], (g->ncons[v] + 1) * sizeof *c);
            if (!c)
                return nomem(err);
            c[g->ncons[v]++] = (struct consumer){ i, k };
            g->cons[v] = c;
        }
    return TPV_OK;
}

/* Whether a weighted node reads a value computed from v (any path). */
static bool feeds_weighted(const struct jbr_graph *g, long v, size_t from)
{
    const struct tpv_onnx_model *m = g->m;
    bool *reach = calloc(m->nvalues, sizeof *reach), found = false;
    if (!reach)
        return true; /* keep the layer; the trace then runs out of memory visibly */
    reach[v] = true;
    for (size_t i = from + 1; i < m->nnodes && !found; i++) {
        const struct tpv_onnx_node *nd = &m->nodes[i];
        bool hit = false;
        for (size_t k = 0; g->plan1->run[i] && k < nd->nin; k++)
            hit = hit || (nd->in[k] >= 0 && reach[nd->in[k]]);
        if (!hit)
            continue;
        if (weighted(m, nd))
            found = true;
        for (size_t k = 0; k < nd->nout; k++)
            if (nd->out[k] >= 0)
                reach[nd->out[k]] = true;
    }
    free(reach);
    return found;
}

/* The layout of a weighted node's output: channels at dimension 1 (Conv, Gemm) or last (MatMul). */
static bool output_chan(const struct jbr_graph *g, const struct tpv_onnx_node *nd, struct chan *c)
{
    const struct tpv_onnx_tensor *y = &g->plan1->vals[nd->out[0]];
    uint64_t per = per_sample(g, nd->out[0]);
    if (y->rank < 2 || per == 0)
        return false;
    c->v = nd->out[0];
    if (strcmp(nd->op_type, "MatMul") == 0) {
        c->C = (uint64_t)y->shape[y->rank - 1];
        c->outer = per / c->C;
        c->inner = 1;
    } else {
        c->C = (uint64_t)y->shape[1];
        c->outer = 1;
        c->inner = per / c->C;
    }
    return c->C > 0;
}

/* A MatMul's bias: its one consumer an Add of a parameter of C entries, same shape out. */
static void fold_bias(const struct jbr_graph *g, struct chan *z)
{
    if (g->ncons[z->v] != 1)
        return;
    const struct tpv_onnx_node *nd = &g->m->nodes[g->cons[z->v][0].node];
    if (strcmp(nd->op_type, "Add") != 0 || nd->nin != 2)
        return;
    long b = nd->in[1 - g->cons[z->v][0].k];
    if (b >= 0 && g->m->values[b].param && g->plan1->vals[b].numel == z->C &&
        per_sample(g, nd->out[0]) == per_sample(g, z->v))
        z->v = nd->out[0];
}

static bool same_shape(const struct tpv_onnx_tensor *a, const struct tpv_onnx_tensor *b)
{
    if (a->rank != b->rank)
        return false;
    for (int i = 0; i < a->rank; i++)
        if (a->shape[i] != b->shape[i])
            return false;
    return true;
}

/* How channel layout c of value v comes out of node nd reading it at input k: false when the
 * operator mixes or moves channels (the path ends). */
static bool pass_through(const struct jbr_graph *g, const struct tpv_onnx_node *nd, size_t k,
                         const struct chan *c, struct chan *out)
{
    static const char *const unary[] = { "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus",
                                         "Elu", "Clip", "HardSigmoid", "HardSwish", "Erf",
                                         "Sqrt", "Identity", "Dropout", "BatchNormalization",
                                         "Pow", "Cast", NULL };
    static const char *const binary[] = { "Add", "Sub", "Mul", "Div", NULL };
    static const char *const pools[] = { "MaxPool", "AveragePool", "GlobalAveragePool", NULL };
    static const char *const reshapes[] = { "Flatten", "Reshape", "Squeeze", "Unsqueeze", NULL };
    long y = nd->out[0];
    if (y < 0 || g->plan1->known[y] || g->plan1->vals[y].dtype != TPV_ONNX_F64)
        return false;
    const struct tpv_onnx_tensor *ty = &g->plan1->vals[y], *tv = &g->plan1->vals[c->v];
    uint64_t per = per_sample(g, y);
    *out = *c;
    out->v = y;
    if (op_is(nd, unary))
        return k == 0 && per == per_sample(g, c->v);
    if (op_is(nd, binary))
        return same_shape(ty, tv);
    if (op_is(nd, pools)) {
        out->inner = c->C ? per / c->C : 0;
        return k == 0 && c->outer == 1 && ty->rank >= 2 && (uint64_t)ty->shape[1] == c->C;
    }
    if (op_is(nd, reshapes))
        return k == 0 && c->outer == 1 && per == per_sample(g, c->v);
    return false;
}

static int add_site(struct ulayer *L, const struct chan *c, struct tpv_err *err)
{
    for (size_t i = 0; i < L->nin; i++)
        if (L->in[i].v == c->v)
            return TPV_OK;
    struct chan *n = realloc(L->in, (L->nin + 1) * sizeof *n);
    if (!n)
        return nomem(err);
    n[L->nin++] = *c;
    L->in = n;
    return TPV_OK;
}

/* Follows layer L's output through per-channel operators to the weighted nodes' inputs. */
static int trace(const struct jbr_graph *g, struct ulayer *L, struct tpv_err *err)
{
    const struct tpv_onnx_model *m = g->m;
    struct chan *work = malloc((m->nvalues + 1) * sizeof *work);
    bool *seen = calloc(m->nvalues, sizeof *seen);
    int rc = work && seen ? TPV_OK : nomem(err);
    size_t top = 0;
    if (!rc) {
        work[top++] = L->z;
        seen[L->z.v] = true;
    }
    while (!rc && top > 0) {
        struct chan c = work[--top];
        for (size_t i = 0; !rc && i < g->ncons[c.v]; i++) {
            const struct consumer *cs = &g->cons[c.v][i];
            const struct tpv_onnx_node *nd = &m->nodes[cs->node];
            struct chan next;
            if (weighted(m, nd)) {
                if (cs->k == 0)
                    rc = add_site(L, &c, err);
            } else if (pass_through(g, nd, cs->k, &c, &next) && !seen[next.v]) {
                seen[next.v] = true;
                work[top++] = next;
            }
        }
    }
    free(work);
    free(seen);
    return rc;
}

static void graph_free(struct jbr_graph *g)
{
    for (size_t v = 0; g->cons && v < g->m->nvalues; v++)
        free(g->cons[v]);
    free(g->cons);
    free(g->ncons);
    for (size_t l = 0; l < g->nlayers; l++)
        free(g->layers[l].in);
    free(g->layers);
}

static int graph_build(struct jbr_graph *g, struct tpv_err *err)
{
    const struct tpv_onnx_model *m = g->m;
    int rc = consumers_build(g, err);
    g->layers = calloc(m->nnodes ? m->nnodes : 1, sizeof *g->layers);
    if (!rc && !g->layers)
        rc = nomem(err);
    for (size_t i = 0; !rc && i < m->nnodes; i++) {
        const struct tpv_onnx_node *nd = &m->nodes[i];
        struct ulayer L = {0};
        if (!g->plan1->run[i] || !weighted(m, nd) || !output_chan(g, nd, &L.z) ||
            !feeds_weighted(g, nd->out[0], i))
            continue;
        if (strcmp(nd->op_type, "MatMul") == 0)
            fold_bias(g, &L.z);
        L.name = m->values[nd->in[1]].name;
        L.op = nd->op_type;
        L.first = g->H;
        g->layers[g->nlayers++] = L;
        g->H += L.z.C;
        rc = trace(g, &g->layers[g->nlayers - 1], err);
    }
    return rc;
}

/* One kept sample t of a pass: its products into the running batch. */
static void add_sample(const struct jbr_graph *g, const struct tpv_onnx_exec *ex, size_t t,
                       struct tpv_jbr_acc *acc)
{
    for (size_t l = 0; l < g->nlayers; l++) {
        const struct ulayer *L = &g->layers[l];
        for (size_t s = 0; s <= L->nin; s++) {
            const struct chan *c = s == 0 ? &L->z : &L->in[s - 1];
            double *dst = (s == 0 ? acc->out : acc->in) + L->first;
            uint64_t per = c->outer * c->C * c->inner;
            const double *a = (const double *)tpv_onnx_exec_value(ex, c->v)->data + t * per;
            const double *d = tpv_onnx_exec_grad(ex, c->v) + t * per;
            for (uint64_t o = 0; o < c->outer; o++)
                for (uint64_t j = 0; j < c->C; j++) {
                    const uint64_t at = (o * c->C + j) * c->inner;
                    double sum = 0;
                    for (uint64_t i = 0; i < c->inner; i++)
                        sum += a[at + i] * d[at + i];
                    dst[j] += sum;
                }
        }
    }
}

/* The batched passes over all inputs. */
static int run_passes(const struct jbr_graph *g, const struct tpv_tensor *inputs, size_t bmax,
                      uint64_t K, double confidence, struct tpv_jbr_acc *acc,
                      const struct tpv_progress *pg, struct tpv_err *err)
{
    const uint64_t n = inputs->shape[0], per = inputs->numel / n;
    const long y = g->m->outputs[0];
    double *x = malloc(bmax * per * sizeof *x), *seed = malloc(bmax * K * sizeof *seed);
    bool *kept = malloc(bmax * sizeof *kept);
    int rc = x && seed && kept ? TPV_OK : nomem(err);
    struct tpv_onnx_plan *plan = NULL;
    struct tpv_onnx_exec *ex = NULL;
    size_t open = 0;
    for (uint64_t x0 = 0; !rc && x0 < n; x0 += bmax) {
        size_t b = n - x0 < bmax ? (size_t)(n - x0) : bmax;
        if (b != open) {
            tpv_onnx_exec_free(ex);
            tpv_onnx_plan_free(plan);
            rc = tpv_onnx_exec_open(g->m, inputs, b, &plan, &ex, err);
            open = b;
            if (rc)
                break;
        }
        tpv_tensor_read_f64(inputs, x0 * per, b * per, x);
        const double *xp = x;
        rc = tpv_onnx_exec_forward(ex, &xp, err);
        const double *f = rc ? NULL : tpv_onnx_exec_value(ex, y)->data;
        for (size_t t = 0; !rc && t < b; t++)
            kept[t] = tpv_jbr_seed(f + t * K, K, confidence, seed + t * K);
        if (!rc)
            rc = tpv_onnx_exec_vjp(ex, y, seed, err);
        for (size_t t = 0; !rc && t < b; t++)
            if (kept[t]) {
                add_sample(g, ex, t, acc);
                tpv_jbr_acc_sample(acc);
            }
        if (!rc && tpv_progress_report(pg, 0, 1, x0 + b, n))
            rc = tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
    }
    tpv_onnx_exec_free(ex);
    tpv_onnx_plan_free(plan);
    free(x);
    free(seed);
    free(kept);
    return rc;
}

static json_t *layers_json(const struct jbr_graph *g)
{
    json_t *arr = json_array();
    for (size_t l = 0; arr && l < g->nlayers; l++) {
        const struct ulayer *L = &g->layers[l];
        json_t *in = json_array();
        for (size_t s = 0; in && s < L->nin; s++)
            if (json_array_append_new(in, json_string(g->m->values[L->in[s].v].name))) {
                json_decref(in);
                in = NULL;
            }
        if (!in || json_array_append_new(arr, json_pack("{s:s, s:s, s:I, s:o}", "layer", L->name,
                                                        "op", L->op, "units",
                                                        (json_int_t)L->z.C, "in", in))) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return arr;
}

static json_t *result_json(const struct jbr_graph *g, const struct tpv_jbr_acc *acc,
                           double confidence)
{
    const char **names = malloc((g->nlayers ? g->nlayers : 1) * sizeof *names);
    uint64_t *units = malloc((g->nlayers ? g->nlayers : 1) * sizeof *units);
    json_t *res = NULL;
    if (names && units) {
        for (size_t l = 0; l < g->nlayers; l++) {
            names[l] = g->layers[l].name;
            units[l] = g->layers[l].z.C;
        }
        res = tpv_jbr_result_json(names, units, g->nlayers, acc, confidence);
        json_t *layers = res ? layers_json(g) : NULL;
        if (res && (!layers || json_object_set_new(res, "layers", layers))) {
            json_decref(res);
            res = NULL;
        }
    }
    free(names);
    free(units);
    return res;
}

static int check_inputs(const struct tpv_onnx_model *m, const struct tpv_tensor *inputs,
                        struct tpv_err *err)
{
    if (m->ninputs != 1 || m->noutputs != 1 || inputs->rank < 1 || inputs->shape[0] == 0)
        return tpv_err_set(err, TPV_EINVAL, "inputs",
                           "a scored model and a non-empty input set are required");
    if (inputs->dtype != TPV_DTYPE_F16 && inputs->dtype != TPV_DTYPE_BF16 &&
        inputs->dtype != TPV_DTYPE_F32 && inputs->dtype != TPV_DTYPE_F64)
        return tpv_err_set(err, TPV_EINVAL, "inputs", "the input set must be a float tensor");
    return TPV_OK;
}

int tpv_onnx_jbr_compute(const struct tpv_onnx_model *m, const struct tpv_tensor *inputs,
                         double confidence, uint64_t batch_size, json_t **result,
                         const struct tpv_progress *pg, struct tpv_err *err)
{
    *result = NULL;
    const struct tpv_jbr_params params = { confidence, batch_size };
    int rc = tpv_jbr_params_check(&params, err);
    if (!rc)
        rc = check_inputs(m, inputs, err);
    if (rc)
        return rc;
    struct tpv_onnx_plan *plan1 = NULL;
    struct tpv_onnx_exec *ex1 = NULL;
    if ((rc = tpv_onnx_exec_open(m, inputs, 1, &plan1, &ex1, err)))
        return rc;
    tpv_onnx_exec_free(ex1);
    struct jbr_graph g = { .m = m, .plan1 = plan1 };
    struct tpv_jbr_acc acc = {0};
    const uint64_t K = plan1->vals[m->outputs[0]].numel;
    if (plan1->known[m->outputs[0]] || plan1->vals[m->outputs[0]].dtype != TPV_ONNX_F64)
        rc = tpv_err_set(err, TPV_EINVAL, "output", "the graph output must be a float tensor "
                         "computed from the input");
    else if (K < 2)
        rc = tpv_err_set(err, TPV_EPRECONDITION, NULL, "JBR needs a classifier with at least 2 "
                         "outputs; the model has %llu", (unsigned long long)K);
    if (!rc)
        rc = graph_build(&g, err);
    if (!rc && g.H == 0)
        rc = tpv_err_set(err, TPV_EPRECONDITION, NULL, "JBR scores hidden units: the graph has no "
                         "Conv, Gemm or MatMul with a parameter weight that feeds another one");
    if (!rc)
        rc = tpv_jbr_acc_init(&acc, g.H, batch_size, err);
    const size_t bmax = m->values[m->inputs[0]].t.shape[0] == 1 ? 1 : BATCH;
    if (!rc)
        rc = run_passes(&g, inputs, bmax, K, confidence, &acc, pg, err);
    if (!rc)
        rc = tpv_jbr_acc_finish(&acc, inputs->shape[0], confidence, err);
    if (!rc && !(*result = result_json(&g, &acc, confidence)))
        rc = nomem(err);
    tpv_jbr_acc_free(&acc);
    graph_free(&g);
    tpv_onnx_plan_free(plan1);
    return rc;
}
