/* noise.h: the noise models of a study (DESIGN.md section 3 table): kinds, parameters, parsing
 * from and writing to the JSON of the REST API.  What each computes lives in core/estimate.c
 * (core/score.c opens a candidate's files and hands them to it; core/job.c parses a stored job). */
#ifndef TPV_NOISE_H
#define TPV_NOISE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/tpv_error.h"

enum tpv_noise_kind {
    TPV_NOISE_ISOTROPIC = 0,
    TPV_NOISE_QUANTIZATION,
    TPV_NOISE_SGD,
    TPV_NOISE_SGD_CURVATURE,
    TPV_NOISE_LABEL,
    TPV_NOISE_DIAGONAL,
    TPV_NOISE_PRUNE,
};

/* Grouping for quantization (global | per_tensor | per_channel) and for the magnitude prune rule
 * (global | per_tensor). */
enum tpv_scope { TPV_SCOPE_GLOBAL = 0, TPV_SCOPE_PER_TENSOR, TPV_SCOPE_PER_CHANNEL };

enum tpv_estimator {
    TPV_EST_AUTO = 0, /* exact when it fits the memory/flop budget, else hutchinson */
    TPV_EST_EXACT,
    TPV_EST_HUTCHINSON,
    TPV_EST_HUTCHPP,
    TPV_EST_EMPIRICAL, /* the nonlinear value: forward passes of the perturbed model
                        * (core/empirical.h); isotropic, quantization, prune, sgd, models only */
};

#define TPV_NOISE_NAME_MAX 64
#define TPV_DIGEST_MAX 72 /* "sha256:" + 64 hex + NUL */
#define TPV_NOISE_MODELS_MAX 32

struct tpv_noise {
    char name[TPV_NOISE_NAME_MAX];
    enum tpv_noise_kind kind;
    double sigma;             /* isotropic, label (absolute) */
    double sigma_rel;         /* label: sigma = sigma_rel * mean |f(x)| over the fit set (0 = use sigma) */
    int bits;                 /* quantization */
    enum tpv_scope scope;     /* quantization; prune rule */
    double lr;                /* sgd, sgd_curvature */
    double batch_size;        /* sgd, sgd_curvature */
    double residual_variance; /* sgd (default 1) */
    double rcond;             /* label (default 1e-10) */
    double ridge;             /* label: absolute ridge rho (0 = none) */
    double ridge_rel;         /* label: rho = ridge_rel * mean eigenvalue (0 = none) */
    char variances[TPV_DIGEST_MAX]; /* diagonal: blob digest "sha256:<hex>" */
    char mask[TPV_DIGEST_MAX];      /* prune: mask blob digest, or "" when rule is used */
    bool prune_rule_magnitude;      /* prune: {rule: magnitude, fraction, scope} */
    double fraction;                /* prune rule */
    /* Estimator settings (optional in JSON): */
    enum tpv_estimator estimator;
    double target_rel_error;  /* hutchinson adaptive stop (default 0.01) */
    unsigned long max_samples; /* hutchinson/hutchpp cap (default 1000) */
    unsigned long long seed;   /* default 0 */
    /* "check": "empirical": the first-order score plus the empirical one beside it (details
     * empirical, ratio; the candidate's flag nonlinear).  Same kinds as TPV_EST_EMPIRICAL. */
    bool check_empirical;
};

const char *tpv_noise_kind_name(enum tpv_noise_kind kind);
const char *tpv_estimator_name(enum tpv_estimator est);

/* Parses one noise model object; `field` is its JSON path for messages ("noise_models[1]").
 * Integers (bits, batch_size, max_samples, seed) are numbers without a fractional part.
 * Unknown keys, wrong types, out-of-range values and missing required parameters are
 * TPV_EINVAL with err->field set to the offending path (e.g. "noise_models[1].sigma"). */
int tpv_noise_parse(struct tpv_noise *out, const json_t *obj, const char *field,
                    struct tpv_err *err);

/* Parses the study's "noise_models" array (1..TPV_NOISE_MODELS_MAX entries, unique names).
 * On success *out is a malloc'd array of *count models (free()). */
int tpv_noise_list_parse(const json_t *array, struct tpv_noise **out, size_t *count,
                         struct tpv_err *err);

/* The same for the stored text of that array (duplicate keys refused, as in every request
 * body).  TPV_EINVAL for text that is not JSON. */
int tpv_noise_list_load(const char *text, struct tpv_noise **out, size_t *count,
                        struct tpv_err *err);

/* The model called `name` among n, or NULL. */
const struct tpv_noise *tpv_noise_find(const struct tpv_noise *models, size_t n, const char *name);

/* Whether s is a blob digest "sha256:<64 lowercase hex>". */
bool tpv_digest_valid(const char *s);

/* The canonical JSON of a model: {"name","kind",...its parameters...}.  New reference. */
json_t *tpv_noise_to_json(const struct tpv_noise *nm);

/* What a kind needs from a candidate beyond a Jacobian source. */
bool tpv_noise_needs_outputs(const struct tpv_noise *nm);  /* label with sigma_rel: f(x) on the fit set */
bool tpv_noise_needs_weights(const struct tpv_noise *nm);  /* quantization, prune by rule or mask */
bool tpv_noise_needs_names(const struct tpv_noise *nm);    /* diagonal, prune, per_tensor/channel */
/* The estimator empirical or the check empirical: forward passes of the model itself (a spec or
 * an ONNX graph; a Jacobian dump cannot serve it). */
bool tpv_noise_needs_model(const struct tpv_noise *nm);
/* Whether a kind has an empirical (perturbed-forward) value: isotropic, quantization, prune,
 * sgd.  label, sgd_curvature and diagonal have none. */
bool tpv_noise_kind_has_empirical(enum tpv_noise_kind kind);

#endif
