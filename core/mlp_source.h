/* mlp_source.h: a Jacobian source (core/jacobian.h) over a bound sequential MLP and an input set.
 *
 * Every product is structured per dense layer (DESIGN.md section 3, estimators): with
 * delta = dF/dz the backpropagated output sensitivities and a the layer input, dF_k/dW = delta_k
 * a^T, so squared diagonals are GEMMs of squared matrices, Gram entries are
 * (delta . delta')(a . a' + 1) summed over layers, JVPs are tangent propagation and VJPs one
 * backward per sample; the (nK x p) Jacobian is never formed.  Samples are processed in
 * fixed-size batches in input order; within a batch the per-sample work is split over samples and
 * the reductions over samples are split over output units on the job's threads (core/linalg.h),
 * every sum in the order of the unsplit loop, so the results are bitwise reproducible and, with
 * OpenBLAS's kernels (splits aligned to their column blocks), the same for every thread count. */
#ifndef TPV_MLP_SOURCE_H
#define TPV_MLP_SOURCE_H

#include "core/jacobian.h"
#include "core/mlp.h"

/* Opens a source over `model` and `inputs` (shape (n, *input_shape)).  Only the dtype and shape
 * are checked here (tpv_mlp_check_input_shape): the caller scans the values once with
 * tpv_mlp_check_inputs before computing, and may open a source over a model bound with
 * tpv_mlp_bind_shapes to plan a job (scratch_bytes, costs) without running it.  The source
 * keeps pointers to the model and to the input data (the tensor struct itself is copied): both
 * must outlive it.  On success *out is owned by the caller (tpv_jsrc_free).  Errors: those of
 * tpv_mlp_check_input_shape, TPV_ENOMEM.  scratch_bytes answers UINT64_MAX when the work
 * buffers' sizes overflow 64 bits (the memory plan refuses such a job). */
int tpv_mlp_source_open(struct tpv_jsrc **out, const struct tpv_mlp *model,
                        const struct tpv_tensor *inputs, struct tpv_err *err);

/* Same with explicit batch sizes (samples per batch for the all-outputs products and for the
 * per-sample ones); 0 picks the default.  For tests of batching and for tuning. */
int tpv_mlp_source_open_batched(struct tpv_jsrc **out, const struct tpv_mlp *model,
                                const struct tpv_tensor *inputs, size_t batch_all,
                                size_t batch_one, struct tpv_err *err);

#endif
