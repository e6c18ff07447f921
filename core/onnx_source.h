/* onnx_source.h: a Jacobian source (core/jacobian.h) over an ONNX graph and an input set, so
 * every estimator works on graphs (DESIGN.md section 3, "exact"; section 4, "ONNX models").
 *
 * Columns are the model's parameters in m->params order, each flattened row-major (PyTorch's
 * layout).  Products:
 *  - jvp and vjp: batched forward-mode / reverse-mode passes (BATCH samples at a time);
 *  - sqdiag, sqdiag_projected, gram: per-sample, per-output gradients from reverse passes of one
 *    sample at a time (K passes per sample, one for the projected form), squared and summed per
 *    parameter or paired in (rows x p) panels bounded by PANEL_BYTES: never an n x K x p array.
 * A graph exported with a fixed batch of 1 always runs one sample at a time.  costs: one
 * sample's forward pass F (Conv, Gemm, MatMul by their products, other nodes by their output
 * size), a reverse pass 2F; sqdiag n (F + 2 K F) + n K p, projected n 3F + n p. */
#ifndef TPV_ONNX_SOURCE_H
#define TPV_ONNX_SOURCE_H

#include "core/jacobian.h"
#include "core/onnx_model.h"

/* A source over `m` (borrowed; must outlive the source) and `inputs` (n x per-sample shape, any
 * float dtype; the view is copied, its data must outlive the source).  The per-sample shape must
 * match the graph input's declared one and the output must be (n, ...), K = its per-sample size.
 * Errors: TPV_EINVAL naming the input or the node whose shapes do not chain, TPV_ENOMEM.  On
 * success *out is owned by the caller (tpv_jsrc_free). */
int tpv_onnx_source_new(struct tpv_jsrc **out, const struct tpv_onnx_model *m,
                        const struct tpv_tensor *inputs, struct tpv_err *err);

#endif
