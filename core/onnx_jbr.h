/* onnx_jbr.h: JBR pruning scores for the units of an ONNX graph (DESIGN.md section 3, "JBR
 * pruning scores"; issue #11), the same scores as core/jbr.h computes for a sequential MLP.
 *
 * Units are the output channels of every Conv and the output features of every Gemm / MatMul
 * whose weight (input B) is a parameter, except the layers no other weighted node is reached
 * from (the network's last).  `layer` is the weight tensor's name, `index` the channel.  For unit
 * j with z_j the node's output channel (the bias of a MatMul's following Add included: PyTorch
 * writes Linear on batched sequences as MatMul + Add):
 *   out_j = mean over the mini-batch of sum over positions of delta_j z_j, delta = dCE/dz;
 *   in_j  = the same of a_j g_j (g = dCE/da) summed over every value a where the channel enters
 *           a later weighted node, following it through per-channel operators only: activations
 *           and other elementwise ones (Add/Sub/Mul/Div whose output has the value's shape, so a
 *           residual Add passes it on and its other branch joins), BatchNormalization, pools,
 *           Dropout/Identity and the reshapes that keep the channel blocks contiguous (Flatten,
 *           Reshape, Squeeze, Unsqueeze of a channel-first value).  A path through any other
 *           operator (LayerNormalization, Softmax, Transpose, Concat, a product of two
 *           activations) adds nothing to in_j; the result's "layers" list names, per layer, the
 *           values in_j is read at ("in").  For an MLP graph these are the sequential spec's
 *           scores exactly (a_j = the activation after z_j, the next linear layer's input).
 * Mini-batches, pseudo-labels and the score are core/jbr.h's. */
#ifndef TPV_ONNX_JBR_H
#define TPV_ONNX_JBR_H

#include <jansson.h>

#include "core/jacobian.h"
#include "core/onnx_model.h"

/* JBR over `inputs` (n x the graph input's per-sample shape, any float dtype) with a scored
 * model `m` (tpv_onnx_model_load).  *result (new reference) is tpv_jbr_compute's object plus
 * "layers": [{"layer", "op", "units", "in": [value names]}].  Errors: TPV_EINVAL (parameters,
 * field "confidence"/"batch_size"; inputs not matching the graph, field "inputs");
 * TPV_EPRECONDITION (fewer than 2 outputs, no scored unit, no sample above the confidence);
 * TPV_ECANCELED; TPV_ENOMEM. */
int tpv_onnx_jbr_compute(const struct tpv_onnx_model *m, const struct tpv_tensor *inputs,
                         double confidence, uint64_t batch_size, json_t **result,
                         const struct tpv_progress *pg, struct tpv_err *err);

#endif
