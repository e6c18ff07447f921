/* onnx_ops.h: the operator table of the ONNX runtime (DESIGN.md section 4 lists the operators).
 *
 * Each operator has three functions:
 *  - check: attribute values at load (unsupported ones are a 400 naming the node);
 *  - infer: output dtypes and shapes from the inputs' (run at plan time, core/onnx_plan.h); an
 *    input's data is there (non-NULL) when it is known at load (initializers, constants, shape
 *    sub-graphs), which shape-determining inputs (Reshape's shape, Slice's starts...) must be;
 *  - forward: the outputs' data (allocated by the caller with numel elements) from the inputs'.
 * in[i] / out[i] are NULL for omitted optional inputs / outputs.  Kernels compute in float64 on
 * F64 tensors; the shape operators also run on I64 tensors. */
#ifndef TPV_ONNX_OPS_H
#define TPV_ONNX_OPS_H

#include "core/onnx_model.h"

typedef int (*tpv_onnx_check_fn)(const struct tpv_onnx_node *nd, struct tpv_err *err);
typedef int (*tpv_onnx_infer_fn)(const struct tpv_onnx_node *nd,
                                 const struct tpv_onnx_tensor *const *in,
                                 struct tpv_onnx_tensor *const *out, struct tpv_err *err);
typedef int (*tpv_onnx_forward_fn)(const struct tpv_onnx_node *nd,
                                   const struct tpv_onnx_tensor *const *in,
                                   struct tpv_onnx_tensor *const *out, struct tpv_err *err);

/* Reverse mode: gin[k] += (d out / d in[k])^T gout for every float input k with gin[k] != NULL
 * (accumulated: a value may feed several nodes); gout[k] is NULL for an output nothing
 * differentiates.  in and out hold the forward pass's values. */
typedef int (*tpv_onnx_vjp_fn)(const struct tpv_onnx_node *nd,
                               const struct tpv_onnx_tensor *const *in,
                               const struct tpv_onnx_tensor *const *out,
                               const double *const *gout, double *const *gin,
                               struct tpv_err *err);
/* Reverse mode that may overwrite: as tpv_onnx_vjp_fn, but gin[k] with fresh[k] true holds
 * garbage (no other writer came first) and must be overwritten in full, every entry (zeros where
 * in[k] has no influence), so that the caller need not zero it; fresh NULL: every gin[k] is
 * accumulated into, as the plain VJP.  The caller sets fresh[k] only for an input whose value no
 * other input slot of the node shares. */
typedef int (*tpv_onnx_vjp_set_fn)(const struct tpv_onnx_node *nd,
                                   const struct tpv_onnx_tensor *const *in,
                                   const struct tpv_onnx_tensor *const *out,
                                   const double *const *gout, double *const *gin,
                                   const bool *fresh, struct tpv_err *err);
/* Forward mode: tout[k] = sum_j (d out[k] / d in[j]) tin[j] (overwritten) for outputs with
 * tout[k] != NULL; tin[j] NULL is a zero tangent. */
typedef int (*tpv_onnx_jvp_fn)(const struct tpv_onnx_node *nd,
                               const struct tpv_onnx_tensor *const *in,
                               const struct tpv_onnx_tensor *const *out,
                               const double *const *tin, double *const *tout,
                               struct tpv_err *err);

struct tpv_onnx_op {
    const char *name;
    unsigned min_in, max_in, min_out, max_out;
    tpv_onnx_check_fn check;     /* NULL: no attributes to check */
    tpv_onnx_infer_fn infer;
    tpv_onnx_forward_fn forward;
    tpv_onnx_vjp_fn vjp;
    tpv_onnx_jvp_fn jvp;
    tpv_onnx_vjp_set_fn vjp_set; /* NULL: only vjp (the reverse pass zeroes gin first) */
};

/* JVP of an operator linear in its float inputs: the forward pass applied to the tangents (zero
 * for NULL ones); non-float inputs are passed through (Pad's constant becomes its tangent). */
int tpv_onnx_jvp_linear(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                        const struct tpv_onnx_tensor *const *out, const double *const *tin,
                        double *const *tout, struct tpv_err *err);

/* The operator called `op_type` (default domain), or -1. */
int tpv_onnx_op_find(const char *op_type);
const struct tpv_onnx_op *tpv_onnx_op_get(int op);
/* Number of operators in the table, and the table itself (for listing what is supported). */
size_t tpv_onnx_op_count(void);

/* ---- helpers shared by the kernels ---- */

/* Sets t's rank and shape (dtype unchanged) and its numel; TPV_EINVAL naming the node when a
 * dimension is negative or the element count overflows. */
int tpv_onnx_set_shape(const struct tpv_onnx_node *nd, struct tpv_onnx_tensor *t, int rank,
                       const int64_t *shape, struct tpv_err *err);
/* Normalizes axis (negative counts from the end) into [0, rank); error naming the node if out of
 * range.  `what` names the attribute or input. */
int tpv_onnx_axis(const struct tpv_onnx_node *nd, int64_t axis, int rank, const char *what,
                  int *out, struct tpv_err *err);
/* Multidirectional (NumPy) broadcast of two shapes into out (rank max of both). */
int tpv_onnx_broadcast(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *a,
                       const struct tpv_onnx_tensor *b, struct tpv_onnx_tensor *out,
                       struct tpv_err *err);
/* The error for a shape that does not chain (names the node). */
int tpv_onnx_shape_error(const struct tpv_onnx_node *nd, struct tpv_err *err, const char *fmt,
                         ...) __attribute__((format(printf, 3, 4)));
/* The error for an input whose data must be known at load but is computed from the input. */
int tpv_onnx_need_static(const struct tpv_onnx_node *nd, unsigned input, struct tpv_err *err);
/* Element i of an I64 or F64 tensor as int64 / double. */
int64_t tpv_onnx_get_i(const struct tpv_onnx_tensor *t, uint64_t i);
double tpv_onnx_get_f(const struct tpv_onnx_tensor *t, uint64_t i);

/* JVP of an operator bilinear in (input 0) x (inputs 1, 2...), such as Conv, Gemm and MatMul:
 * forward(t0, x1, without input 2) + forward(x0, t1, t2), NULL tangents being zero. */
int tpv_onnx_jvp_bilinear(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *const *in,
                          const struct tpv_onnx_tensor *const *out, const double *const *tin,
                          double *const *tout, struct tpv_err *err);

#endif
