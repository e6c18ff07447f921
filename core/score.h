/* score.h: the core's entry points for the service: validate a candidate at submission, score it
 * under a study's noise models on the fit and probe splits, and JBR pruning scores.
 *
 * The service resolves blob digests to local file paths and hands them in; the core opens, maps,
 * validates and computes, with progress and cancellation, and returns plain values plus a JSON
 * details object per score (DESIGN.md section 5, candidate.scores). */
#ifndef TPV_SCORE_H
#define TPV_SCORE_H

#include <jansson.h>
#include <stdint.h>

#include "core/jacobian.h"
#include "core/noise.h"

enum tpv_split { TPV_SPLIT_FIT = 0, TPV_SPLIT_PROBE = 1 };
const char *tpv_split_name(enum tpv_split split);

enum tpv_source_kind { TPV_SOURCE_MODEL = 0, TPV_SOURCE_JACOBIAN = 1, TPV_SOURCE_ONNX = 2 };

/* The stored and reported name of a source kind: "model", "jacobian", "onnx". */
const char *tpv_source_kind_name(enum tpv_source_kind kind);

/* One candidate as local files.  Unused members are NULL. */
struct tpv_candidate_files {
    enum tpv_source_kind source;
    /* source = model: the tpv.sequential/v1 spec, its weights and the study's input sets */
    const json_t *spec;
    const char *fit_inputs;   /* required (model and onnx) */
    const char *probe_inputs; /* optional (model and onnx) */
    /* source = onnx: the serialized ModelProto and the parameter names the request gave
     * (nparams == 0: the model's metadata or the default rule, core/onnx_model.h) */
    const char *onnx;
    const char *const *params;
    size_t nparams;
    /* source = jacobian: the dumps; `layout` names the columns of a flat .npy dump */
    const char *jac_fit;      /* required */
    const char *jac_probe;    /* optional */
    const char *const *layout;
    size_t nlayout;
    /* weights: required for model; optional for jacobian (quantization, prune) */
    const char *weights;
    /* Resolves a noise model's blob digest (variances, masks) to a local path, or NULL. */
    const char *(*blob_path)(void *ctx, const char *digest);
    void *blob_ctx;
};

struct tpv_run_options {
    uint64_t max_memory;   /* bytes a job may use; 0 = unlimited */
    double flop_budget;    /* auto picks exact below this many flops; 0 = always exact */
};

struct tpv_score {
    char noise[TPV_NOISE_NAME_MAX];
    enum tpv_noise_kind kind;
    enum tpv_split split;
    double value;
    double stderr_value;   /* 0 for exact */
    const char *estimator; /* static: "exact", "hutchinson", "hutchpp" */
    uint64_t samples;      /* probes used (0 for exact) */
    uint64_t seed;
    double wall_seconds;
    json_t *details;       /* owned; never NULL after a successful score */
    /* The score is the mean over the split's inputs of per-input contributions (DESIGN.md
     * section 5, Confidence): per_input[i] is input i's (owned, n_inputs entries; NULL with
     * n_inputs 0 where a path cannot split its sum) and stderr_inputs the standard error of
     * their mean (sample std / sqrt(n), 0 when n == 1; NAN without contributions). */
    double *per_input;
    size_t n_inputs;
    double stderr_inputs;
};

/* Takes ownership of `contrib` (n malloc'd doubles, may be NULL) as sc's per-input
 * contributions and sets sc->stderr_inputs from them (NAN when contrib is NULL). */
void tpv_score_set_contributions(struct tpv_score *sc, double *contrib, size_t n);

/* Validation at submission, cheap enough for an HTTP thread: opens every file for its headers,
 * binds the spec to the weights by names, dtypes and shapes (an ONNX graph is loaded and
 * planned over each input set, initializers included: core/onnx_model.h), checks shapes agree
 * with the inputs
 * and that every noise model can be served (weights present, names and shapes of variances and
 * masks match).  No value is read: non-finite values, negative variances and masks other than
 * 0/1 are found by tpv_candidate_score / tpv_jbr_run, which fail naming the tensor and the
 * index.  Sets *memory_needed to the working set a job will need (every copy it makes included);
 * TPV_ENOSPACE above opts->max_memory or when it does not fit in 64 bits.  TPV_EINVAL/TPV_EFORMAT
 * with err->field naming the input or noise model. */
int tpv_candidate_check(const struct tpv_candidate_files *c, const struct tpv_noise *models,
                        size_t nmodels, const struct tpv_run_options *opts,
                        uint64_t *memory_needed, struct tpv_err *err);

/* Scores every model on the fit split and, when a probe set exists, the probe split, after a full
 * open: every value of the dumps, weights, input sets, variances and masks is checked once.
 * *scores (malloc'd, free with tpv_scores_free) gets the scores in model order, fit before probe;
 * *stability (new reference) gets {"isotropic_ratio"?, "n_fit", "n_probe"?, "small_n_warning"}.
 * TPV_ECANCELED when the progress callback asked to stop; TPV_ENOSPACE when the job does not fit
 * opts->max_memory (message gives both numbers). */
int tpv_candidate_score(const struct tpv_candidate_files *c, const struct tpv_noise *models,
                        size_t nmodels, const struct tpv_run_options *opts,
                        struct tpv_score **scores, size_t *nscores, json_t **stability,
                        const struct tpv_progress *pg, struct tpv_err *err);

void tpv_scores_free(struct tpv_score *scores, size_t n);

/* JBR pruning scores for a model candidate over its fit set (DESIGN.md section 3):
 * *result = {"units":[{"layer","index","score"}],"order":[...]} (new reference). */
int tpv_jbr_run(const struct tpv_candidate_files *c, double confidence, uint64_t batch_size,
                json_t **result, const struct tpv_progress *pg, struct tpv_err *err);

#endif
