/* jbr.h: label-free JBR pruning scores for the hidden units of a sequential MLP (DESIGN.md
 * section 3, "JBR pruning scores"; the paper's Sec. 6.1 and the reference benchmark_pruning.py,
 * with mini-batches taken in input order so that scores are reproducible). */
#ifndef TPV_JBR_H
#define TPV_JBR_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/jacobian.h"
#include "core/mlp.h"

/* The one place for JBR's defaults and limits (the API, the stored job and the core use them). */
#define TPV_JBR_DEFAULT_CONFIDENCE 0.9
#define TPV_JBR_DEFAULT_BATCH 128
#define TPV_JBR_BATCH_MAX 1000000

/* A JBR job's parameters.  confidence is a max-softmax threshold in [0, 1): a sample is kept when
 * its max softmax probability is strictly above it, so 0 keeps every sample and 1 would keep
 * none (max softmax never exceeds 1). */
struct tpv_jbr_params {
    double confidence;
    uint64_t batch_size; /* 1..TPV_JBR_BATCH_MAX */
};

/* The rule for both members, checked wherever parameters enter: TPV_EINVAL with err->field
 * "confidence" or "batch_size". */
int tpv_jbr_params_check(const struct tpv_jbr_params *p, struct tpv_err *err);

/* Reads {"confidence"?, "batch_size"?} (obj NULL: the defaults).  batch_size is a number without
 * a fractional part (128 or 128.0; 1.5 is refused); unknown keys are refused.  TPV_EINVAL naming
 * the field. */
int tpv_jbr_params_parse(const json_t *obj, struct tpv_jbr_params *out, struct tpv_err *err);

/* {"confidence":c,"batch_size":B} (new reference, NULL on allocation failure). */
json_t *tpv_jbr_params_json(const struct tpv_jbr_params *p);

/* Computes JBR scores over `inputs` (shape (n, *input_shape)).
 *
 * Pseudo-labels y*(x) = argmax_k f(x) (first maximum on ties), kept where max softmax(f(x)) >
 * confidence; mini-batches are consecutive runs of batch_size kept samples in input order (the last
 * may be shorter).  For unit j of every linear layer but the last, with z_j its pre-activation,
 * a_j the output of the activations that follow it (z_j if none), delta_j = dCE/dz_j and
 * g_j = dCE/da_j: out_j = mean_b delta_j z_j, in_j = mean_b a_j g_j, score_j = sum_b out_j^2 +
 * sum_b in_j^2.
 *
 * *result (new reference) = {"units":[{"layer":<weight tensor name>,"index":j,"score":s}],
 * "order":[unit indices, lowest score first, ties by position], "kept_samples":n_kept,
 * "batches":nb, "confidence":c, "batch_size":B}.
 * The input values must have been checked (tpv_mlp_check_inputs); their shape is checked here.
 * Errors: TPV_EINVAL (parameters outside tpv_jbr_params_check, inputs not matching the spec;
 * err->field "confidence", "batch_size", "inputs"); TPV_EPRECONDITION when the model has fewer than
 * 2 outputs or no hidden linear layer, or when no sample passes the confidence threshold;
 * TPV_ECANCELED; TPV_ENOMEM. */
int tpv_jbr_compute(const struct tpv_mlp *m, const struct tpv_tensor *inputs, double confidence,
                    uint64_t batch_size, json_t **result, const struct tpv_progress *pg,
                    struct tpv_err *err);

/* ---- Pieces shared by the front ends (this file's MLP, core/onnx_jbr.h's graphs) ---- */

/* The running mini-batch over H units: a front end adds a kept sample's per-unit products
 * delta_j z_j into out[j] and a_j g_j into in[j], then calls tpv_jbr_acc_sample, which closes the
 * batch (squared means into score) when it holds batch_size samples. */
struct tpv_jbr_acc {
    size_t H;
    uint64_t batch_size, count, nb, nkept;
    double *out, *in, *score; /* H each, owned */
};

/* Errors: TPV_ENOMEM.  tpv_jbr_acc_free releases it (also after a failed init). */
int tpv_jbr_acc_init(struct tpv_jbr_acc *a, size_t H, uint64_t batch_size, struct tpv_err *err);
void tpv_jbr_acc_sample(struct tpv_jbr_acc *a);
/* Closes the last, shorter batch; TPV_EPRECONDITION (field "confidence") when no sample of the
 * n was kept. */
int tpv_jbr_acc_finish(struct tpv_jbr_acc *a, uint64_t n, double confidence, struct tpv_err *err);
void tpv_jbr_acc_free(struct tpv_jbr_acc *a);

/* The cross-entropy seed of one sample's logits f (K): pseudo-label y = argmax f (first maximum),
 * seed = softmax(f) - e_y when max softmax > confidence (returns true), else zeros (false). */
bool tpv_jbr_seed(const double *f, size_t K, double confidence, double *seed);

/* The result object of tpv_jbr_compute for layers names[l] with units[l] units each, in order
 * (new reference, NULL on allocation failure). */
json_t *tpv_jbr_result_json(const char *const *names, const uint64_t *units, size_t nlayers,
                            const struct tpv_jbr_acc *a, double confidence);

#endif
