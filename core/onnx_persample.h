/* onnx_persample.h: exact per-sample parameter gradients from one batched reverse pass over an
 * ONNX graph (DESIGN.md section 3, "exact"; issue #11).
 *
 * A batched reverse pass (tpv_onnx_exec_vjp with one seed row per sample) leaves, at every node,
 * the per-sample activations a (the node's inputs) and output adjoints d (rows of the batch).
 * Every parameter of a scored graph is consumed directly by a node whose rows are independent
 * samples (Conv, Gemm, MatMul, the normalizations, elementwise bias/scale), so sample t's
 * gradient of that parameter is the node's own VJP applied to row t alone: Conv's per-sample
 * weight gradient is im2col + GEMM of that sample, Gemm's d_t a_t^T, BatchNorm's scale and bias
 * sums over that sample's positions.  Per parameter, never summed over samples: sqdiag needs the
 * diagonal itself (per-channel quantization sums it per output channel), so the squared norms of
 * the ghost-norm identity would not do.
 *
 * A graph qualifies when every node that runs has an input computed from the graph input (no
 * computation on parameters alone, such as a transposed weight), every such value has the batch
 * first with the same per-sample shape at batch 1 and batch 2, and every node that reads a
 * parameter is one of the operators above (LayerNormalization not over the batch axis).  Like the
 * batched jvp and vjp of core/onnx_source.h, it assumes the samples of a batch do not interact
 * (inference-mode normalization). */
#ifndef TPV_ONNX_PERSAMPLE_H
#define TPV_ONNX_PERSAMPLE_H

#include "core/onnx_exec.h"
#include "core/onnx_ghost.h"

struct tpv_onnx_persample;

/* Checks the graph on its plans at batch 1 (`one`) and batch 2 (`two`) and lists the nodes that
 * read parameters.  *out is owned by the caller (tpv_onnx_persample_free).  Errors:
 * TPV_EUNIMPLEMENTED naming the first node that does not qualify (callers fall back to one
 * reverse pass per sample), TPV_ENOMEM. */
int tpv_onnx_persample_new(struct tpv_onnx_persample **out, const struct tpv_onnx_model *m,
                           const struct tpv_onnx_plan *one, const struct tpv_onnx_plan *two,
                           struct tpv_err *err);
void tpv_onnx_persample_free(struct tpv_onnx_persample *ps);

/* After tpv_onnx_exec_vjp on `ex` (batch b, its plan of the same model): G (b x p, row-major,
 * overwritten) gets row t = the gradient of sample t's seeded output w.r.t. every parameter,
 * parameter j (m->params order) at columns [offset[j], offset[j] + numel).  Errors from the
 * kernels (TPV_ENOMEM). */
int tpv_onnx_persample_grads(const struct tpv_onnx_persample *ps, const struct tpv_onnx_exec *ex,
                             const uint64_t *offset, uint64_t p, double *G, struct tpv_err *err);

/* As tpv_onnx_persample_grads when every row of `ex` is the same sample (row t seeded with its own
 * output vector, e.g. e_k): each Conv's im2col of that sample is formed once for all rows
 * (tpv_onnx_conv_rows_grads in core/onnx_ghost.h).  `single`: a Conv weight the graph stores in
 * float32 (or float16, bfloat16) gets its per-sample gradient products in float32, summed in
 * float64 (tpv_onnx_conv_rows_grads); false keeps every product in float64.  ws: the calling
 * thread's scratch (core/onnx_ghost.h). */
int tpv_onnx_persample_grads_shared(const struct tpv_onnx_persample *ps,
                                    const struct tpv_onnx_exec *ex, const uint64_t *offset,
                                    uint64_t p, bool single, struct tpv_onnx_scratch *ws,
                                    double *G, struct tpv_err *err);

#endif
