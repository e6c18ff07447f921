/* onnx_ghost.h: per-sample squared norms of a Conv node's weight gradient by the cheaper of two
 * exact forms (issue #11; Li et al. 2022, "ghost norm"; Opacus' per_sample_gradient_norms).
 *
 * For sample t with im2col patches a_p (kk = C/g kh kw entries per output position p, P
 * positions) and output adjoints d_p (the group's Mg channels), dW_t = sum_p d_p a_p^T per group:
 *  - IM2COL: form dW_t by one GEMM (2 Mg kk P flops per group) and square it;
 *  - GHOST:  ||dW_t||^2 = sum_{p,p'} (d_p . d_p') (a_p . a_p'), two P x P Gram matrices by SYRK
 *            (P^2 (kk + Mg) flops per group): cheaper when P < 2 kk Mg / (kk + Mg), i.e. when the
 *            spatial size is small next to the channel product (late layers of a ResNet).
 * Both give the same numbers up to rounding. */
#ifndef TPV_ONNX_GHOST_H
#define TPV_ONNX_GHOST_H

#include "core/onnx_model.h"

enum tpv_onnx_sqnorm_form {
    TPV_ONNX_SQNORM_IM2COL = 0,
    TPV_ONNX_SQNORM_GHOST = 1,
};

/* "im2col" or "ghost" (what score details say). */
const char *tpv_onnx_sqnorm_form_name(enum tpv_onnx_sqnorm_form f);

/* Flops of form f for the Conv node nd on input x (N samples) and weight w; -1 when the shapes
 * do not make a convolution. */
double tpv_onnx_conv_sqnorm_flops(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *x,
                                  const struct tpv_onnx_tensor *w, enum tpv_onnx_sqnorm_form f);

/* The form of fewer flops (IM2COL on a tie). */
enum tpv_onnx_sqnorm_form tpv_onnx_conv_sqnorm_choose(const struct tpv_onnx_node *nd,
                                                      const struct tpv_onnx_tensor *x,
                                                      const struct tpv_onnx_tensor *w);

/* out[t] = ||dW_t||_F^2 for the N samples of x, gy the adjoint of the node's output (N x M x
 * positions, as a batched reverse pass leaves it), by form f.  Errors: TPV_EINVAL naming the node
 * (shapes), TPV_ENOMEM. */
int tpv_onnx_conv_weight_sqnorms(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *x,
                                 const struct tpv_onnx_tensor *w, const double *gy,
                                 enum tpv_onnx_sqnorm_form f, double *out, struct tpv_err *err);

/* Scratch memory a caller keeps across calls of tpv_onnx_conv_rows_grads, one per thread (a
 * reverse pass calls it once per Conv node: a fresh buffer per call cost page faults and
 * zeroing).  Zero-initialized by the caller, grown on demand, released by
 * tpv_onnx_scratch_release (which leaves it empty and reusable). */
struct tpv_onnx_scratch {
    void *p;
    size_t bytes;
};

void tpv_onnx_scratch_release(struct tpv_onnx_scratch *s);

/* Per-sample gradients of one sample's Conv weight (and bias) for R output adjoints of the same
 * sample, e.g. the K seeds e_k of one reverse pass over a batch of R copies of the sample: x is
 * that one sample (batch 1), gy its R adjoints (R x M x positions).  The sample's im2col is
 * formed once and shared by the R rows: one (R M) x kk x P GEMM when group = 1 instead of R thin
 * M x kk x P ones.  Row r of the gradient adds into G + r ldg (weight at woff, bias at boff, no
 * bias when boff is UINT64_MAX); `set`: the weight's block of each row is overwritten instead
 * (the caller need not zero it; the bias is still added).  `single`: the weight's products may run in float32 (the
 * caller's rule, core/onnx_persample.h: the graph stores the weight in float32 or narrower);
 * the products are then summed in float32 over at most TPV_ONNX_F32_SPAN output positions and
 * the partial sums and the bias in float64.  ws: the caller's scratch.  Errors: TPV_EINVAL
 * naming the node (shapes), TPV_ENOMEM. */
#define TPV_ONNX_F32_SPAN 1024
int tpv_onnx_conv_rows_grads(const struct tpv_onnx_node *nd, const struct tpv_onnx_tensor *x,
                             const struct tpv_onnx_tensor *w, const double *gy, uint64_t R,
                             double *G, uint64_t ldg, uint64_t woff, uint64_t boff, bool single,
                             bool set, struct tpv_onnx_scratch *ws, struct tpv_err *err);

/* The float32 input adjoint of a Conv node whose weight the graph stores in float32 (the caller's
 * rule: tpv_onnx_value_narrow, and an executor that asks for it, core/onnx_exec.h
 * narrow_products).  tpv_onnx_conv_adjoint_weight_f32 makes the weight's float32 copy in the
 * layout the input adjoint's GEMM reads for input x's geometry (*out the caller's, free());
 * tpv_onnx_conv_input_adjoint_f32 then adds into gx (x's shape; overwrites it when `set`) the
 * adjoint of x for the output adjoint gy, as the node's VJP does, with float32 products: the weight and gy rounded to float32
 * (relative 6e-8 each), each sum over at most TPV_ONNX_F32_SPAN terms (Mg kh kw at stride 1
 * where the deep form runs, Mg otherwise) in float32 and added into gx in float64, so that
 * |gx_32 - gx_64| <= (span + 3) 2^-24 (|W|^T |gy|) entrywise.  ws: the caller's scratch.
 * Errors: TPV_EINVAL naming the node (shapes), TPV_ENOMEM. */
int tpv_onnx_conv_adjoint_weight_f32(const struct tpv_onnx_node *nd,
                                     const struct tpv_onnx_tensor *x,
                                     const struct tpv_onnx_tensor *w, float **out,
                                     struct tpv_err *err);
int tpv_onnx_conv_input_adjoint_f32(const struct tpv_onnx_node *nd,
                                    const struct tpv_onnx_tensor *x,
                                    const struct tpv_onnx_tensor *w, const float *wf,
                                    const double *gy, double *gx, bool set,
                                    struct tpv_onnx_scratch *ws, struct tpv_err *err);

#endif
