/* onnx_source.h: a Jacobian source (core/jacobian.h) over an ONNX graph and an input set, so
 * every estimator works on graphs (DESIGN.md section 3, "exact"; section 4, "ONNX models").
 *
 * Columns are the model's parameters in m->params order, each flattened row-major (PyTorch's
 * layout).  Products:
 *  - jvp and vjp: batched forward-mode / reverse-mode passes (BATCH samples at a time);
 *  - jvp_block and vjp_block (b vectors at once, the Krylov solvers' products): the gradient
 *    rows of each batch of samples as gram builds them, then one GEMM with the block;
 *  - sqdiag, sqdiag_projected, gram: exact per-sample, per-output gradients from batched reverse
 *    passes (core/onnx_persample.h): per batch one forward pass, then per output k one reverse
 *    pass seeded with e_k in every row (one seeded with r for the projected form), each node
 *    that reads a parameter giving every sample's gradient of it; squared and summed per
 *    parameter or paired in (rows x p) panels bounded by PANEL_BYTES: never an n x K x p array.
 *    Where one sample's activations fill the cache (ResNet-20: 5 MiB), sqdiag takes the shared
 *    path instead (tpv_onnx_source_set_rows): one sample at a time on each of the job's threads,
 *    R of its outputs per reverse pass over R copies of its forward pass; there a Conv weight
 *    the graph stores in float32 (as PyTorch exports) gets its per-sample gradient products in
 *    float32 with float64 sums (core/onnx_persample.h; within 1e-4 of float64 autograd, the
 *    tolerance of a float32 model), a float64 weight float64 products.
 *    A graph that does not qualify, or one exported with a fixed batch of 1, runs one sample at a
 *    time (the reference path: K reverse passes of one sample).  costs: one
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

/* For tests and benchmarks: `on` forces the reference path (one reverse pass per (sample,
 * output)) of sqdiag, sqdiag_projected and gram. */
void tpv_onnx_source_set_reference(struct tpv_jsrc *s, bool on);
/* For tests and benchmarks: the memory budget of the batched path's gradient rows (default
 * 32 MiB), which then runs whenever the graph qualifies, even at one sample per pass; a small
 * budget exercises the blocking (one sample per batch and per Gram panel). */
void tpv_onnx_source_set_panel_bytes(struct tpv_jsrc *s, uint64_t bytes);
/* Whether sqdiag, sqdiag_projected and gram take the batched per-sample path: the graph qualifies
 * and more than one sample's activations and adjoints fit 8 MiB (otherwise the batch spills out
 * of cache and sqdiag takes the shared path, gram the reference one), and the shared path is not
 * forced. */
bool tpv_onnx_source_batched(const struct tpv_jsrc *s);
/* For tests and benchmarks: `on` forces the shared path (one sample at a time, up to all K of
 * its outputs in one reverse pass over copies of its forward pass, every Conv's im2col shared by
 * them, the samples split over tpv_linalg_threads() threads with BLAS single-threaded inside)
 * wherever the graph qualifies; it is the default where the batched path does not run. */
void tpv_onnx_source_set_rows(struct tpv_jsrc *s, bool on);
/* Whether sqdiag takes the shared path. */
bool tpv_onnx_source_rows(const struct tpv_jsrc *s);
/* For tests and benchmarks: `on` keeps the shared path's products in float64 for float32 weights
 * too (the default takes float32 products for them). */
void tpv_onnx_source_set_float64(struct tpv_jsrc *s, bool on);

#endif
