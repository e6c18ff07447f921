/* onnx_exec.h: the forward pass of a planned ONNX graph in float64 (DESIGN.md section 4).
 *
 * An executor holds one buffer per value the forward pass computes (all activations are kept:
 * the reverse pass reads them).  Known values (initializers, constants, shape sub-graphs) are the
 * plan's and the model's, never copied. */
#ifndef TPV_ONNX_EXEC_H
#define TPV_ONNX_EXEC_H

#include "core/onnx_ghost.h"
#include "core/onnx_plan.h"

struct tpv_onnx_exec {
    const struct tpv_onnx_plan *plan; /* borrowed */
    struct tpv_onnx_tensor *vals;     /* per value: the plan's shape with data pointing at the
                                       * executor's buffer or at the known data */
    bool *owned;
    double **grad;                    /* per float value: reverse-mode adjoint (lazily allocated) */
    bool *grad_ready, *grad_zero;     /* per value: the reverse pass's zeroing (onnx_exec.c) */
    double **tan;                     /* per float value: forward-mode tangent (lazily allocated) */
    bool skip_leaves;                 /* set by per-sample users (core/onnx_persample.h): the
                                       * reverse pass leaves the adjoints of graph inputs and
                                       * initializers at zero (their batch sums are not needed,
                                       * and cost as much as the rest of the pass) */
    bool narrow_products;             /* set by the shared per-sample rows path
                                       * (core/onnx_source.c): the reverse pass's Conv input
                                       * adjoints run float32 products where the graph stores the
                                       * weight in float32 (tpv_onnx_conv_input_adjoint_f32);
                                       * false (the default) keeps float64 everywhere, as the
                                       * Krylov and label paths' products need */
    float **narrow_w;                 /* per node: its weight's float32 copy (lazily made) */
    struct tpv_onnx_scratch ws;       /* the float32 input adjoints' buffers */
};

/* Allocates the buffers for `plan` (plan->act_bytes plus the float inputs).  *out is owned by
 * the caller (tpv_onnx_exec_free).  Errors: TPV_ENOMEM. */
int tpv_onnx_exec_new(struct tpv_onnx_exec **out, const struct tpv_onnx_plan *plan,
                      struct tpv_err *err);
void tpv_onnx_exec_free(struct tpv_onnx_exec *ex);

/* A plan and an executor of a scored model for `b` samples of the per-sample shape of `inputs`
 * (its first dimension replaced by b).  On success both are the caller's (free the executor
 * first); on failure both are NULL.  Errors as tpv_onnx_plan_new and tpv_onnx_exec_new. */
int tpv_onnx_exec_open(const struct tpv_onnx_model *m, const struct tpv_tensor *inputs, size_t b,
                       struct tpv_onnx_plan **plan, struct tpv_onnx_exec **ex,
                       struct tpv_err *err);

/* Runs the graph: `inputs[k]` is the float64 data of graph input k (m->inputs order; ignored for
 * int64 inputs, which the plan holds), copied in.  Values are then in ex->vals. */
int tpv_onnx_exec_forward(struct tpv_onnx_exec *ex, const double *const *inputs,
                          struct tpv_err *err);

/* The tensor of value v after a forward pass. */
const struct tpv_onnx_tensor *tpv_onnx_exec_value(const struct tpv_onnx_exec *ex, long v);

/* Reverse mode after a forward pass: the adjoints of every float value that is not a load-time
 * constant (graph inputs, float initializers, computed values) for the seed `gy` on value `v`
 * (v's numel entries), i.e. J^T gy summed over the batch for initializers.  Read them with
 * tpv_onnx_exec_grad.  Errors: TPV_ENOMEM, TPV_EUNIMPLEMENTED naming a node without a VJP. */
int tpv_onnx_exec_vjp(struct tpv_onnx_exec *ex, long v, const double *gy, struct tpv_err *err);
/* The adjoint of value v after tpv_onnx_exec_vjp, or NULL (a constant or an int64 value). */
const double *tpv_onnx_exec_grad(const struct tpv_onnx_exec *ex, long v);

/* Forward mode after a forward pass: seed[v] is the tangent of graph input or initializer v
 * (NULL entries and a NULL array are zero; seed has m->nvalues entries); the tangent of every
 * computed float value follows (tpv_onnx_exec_tangent).  Errors as for the VJP. */
int tpv_onnx_exec_jvp(struct tpv_onnx_exec *ex, const double *const *seed, struct tpv_err *err);
const double *tpv_onnx_exec_tangent(const struct tpv_onnx_exec *ex, long v);

#endif
