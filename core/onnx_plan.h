/* onnx_plan.h: shape evaluation of an ONNX graph for given input shapes (DESIGN.md section 4).
 *
 * For the shapes of the graph inputs (for a scored model: the batch size and the per-sample
 * shape), every value's element type and shape is inferred node by node, and the shape
 * sub-graphs (Shape, and every node whose inputs are all known: Gather, Unsqueeze, Concat, Cast,
 * Slice on int64, Constant...) are evaluated once, so the forward pass only runs the float nodes.
 * A shape that does not chain is an error naming the node. */
#ifndef TPV_ONNX_PLAN_H
#define TPV_ONNX_PLAN_H

#include "core/onnx_model.h"

struct tpv_onnx_plan {
    const struct tpv_onnx_model *m; /* borrowed; must outlive the plan */
    struct tpv_onnx_tensor *vals;   /* per value: dtype and shape; data when known at load
                                     * (initializers and constants: the model's; evaluated shape
                                     * sub-graphs: the plan's own) */
    bool *owned;                    /* per value: vals[v].data belongs to the plan */
    bool *known;                    /* per value: evaluated at load (static) */
    bool *run;                      /* per node: runs in the forward pass */
    uint64_t act_bytes;             /* bytes of the values computed in a forward pass */
};

/* Plans `m` for input tensors `inputs` (m->ninputs of them, in m->inputs order): each gives its
 * dtype and shape; int64 inputs also their data (copied), float inputs' data is ignored.  Shapes
 * are checked against the declared ones (error naming the input).  *out is owned by the caller
 * (tpv_onnx_plan_free).  Errors: TPV_EINVAL naming the node or input, TPV_ENOMEM. */
int tpv_onnx_plan_new(struct tpv_onnx_plan **out, const struct tpv_onnx_model *m,
                      const struct tpv_onnx_tensor *inputs, struct tpv_err *err);

/* NULL is a no-op. */
void tpv_onnx_plan_free(struct tpv_onnx_plan *p);

/* Pointers to the node's input / output tensors in vals (NULL for omitted ones); `in` and `out`
 * must have room for nd->nin / nd->nout entries.  Shared with the executor. */
void tpv_onnx_node_args(struct tpv_onnx_tensor *vals, const struct tpv_onnx_node *nd,
                        struct tpv_onnx_tensor **in, struct tpv_onnx_tensor **out);

#endif
