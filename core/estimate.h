/* estimate.h: the noise models of DESIGN.md section 3 evaluated over Jacobian sources, with the
 * exact, Hutchinson and Hutch++ estimators, the memory estimate that runs before any allocation,
 * and the stability report.  Written once against struct tpv_jsrc (dumps and models alike).
 *
 * Work is shared: sqdiag is computed once per split (isotropic, quantization, sgd and diagonal
 * and the stability ratio all read it), the fit Gram once (label and sgd_curvature), K_X once per
 * probe split.  Every result depends only on inputs, seeds and the thread count. */
#ifndef TPV_ESTIMATE_H
#define TPV_ESTIMATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/jacobian.h"
#include "core/noise.h"
#include "core/score.h"

/* Stability: n_fit below this gets small_n_warning (the paper sees the fit/probe agreement of
 * Theorem 3.1 break at n = 10 and hold at n = 1000; 100 is where we start trusting it). */
#define TPV_SMALL_N 100

/* Per noise model inputs resolved by the caller, in the fit source's column order. */
struct tpv_model_inputs {
    const double *variances; /* diagonal: p variances (>= 0) */
    const double *mask;      /* prune with a mask blob: p values m_j (dw = -(m . w)) */
};

struct tpv_est_inputs {
    const struct tpv_jsrc *fit;   /* required */
    const struct tpv_jsrc *probe; /* NULL: fit-split scores only */
    const double *weights;        /* p weights in column order, or NULL */
    /* Global quantization range when `weights` is NULL (a flat dump without layout: the range
     * of every tensor of the weights file, biases included). */
    bool has_wrange;
    double wmin, wmax;
    const struct tpv_noise *models;
    size_t nmodels;
    const struct tpv_model_inputs *extra; /* nmodels entries, or NULL */
    /* Bytes the caller holds for the job (converted weights, the arrays above, copies of
     * misaligned data): counted in the memory estimate.  UINT64_MAX = does not fit. */
    uint64_t caller_bytes;
};

/* Checks that a probe source matches the fit source: same p, K and layout (names, shapes,
 * offsets).  TPV_EINVAL naming the first difference. */
int tpv_jsrc_check_pair(const struct tpv_jsrc *fit, const struct tpv_jsrc *probe,
                        struct tpv_err *err);

/* Working-set estimate of tpv_estimate_scores for these inputs (no allocation). When
 * opts->max_memory is set and exceeded, returns TPV_ENOSPACE with needed vs limit in the message
 * (and *bytes still set); also TPV_ENOSPACE when the plan's sizes overflow 64 bits, whatever the
 * limit.  Also fails (TPV_EINVAL naming the model) when a model cannot be served
 * by the inputs (weights, names, variances, masks missing). */
int tpv_estimate_memory(const struct tpv_est_inputs *in, const struct tpv_run_options *opts,
                        uint64_t *bytes, struct tpv_err *err);

/* The memory plan of tpv_estimate_memory without the servability check, for a job whose sources
 * were opened for their headers only (submission: weights, variances and masks are not read, so
 * the arrays are NULL; caller_bytes must still count what the job will hold).  TPV_ENOSPACE over
 * opts->max_memory, and always when the working set does not fit in 64-bit sizes (checked
 * arithmetic; the message names the sizes). */
int tpv_estimate_plan(const struct tpv_est_inputs *in, const struct tpv_run_options *opts,
                      uint64_t *bytes, struct tpv_err *err);

/* Scores every model on the fit split and, with a probe source, the probe split: *scores
 * (tpv_scores_free) in model order, fit before probe; *stability (new reference) as in score.h.
 * TPV_ECANCELED through the progress callback, TPV_ENOSPACE as tpv_estimate_memory. */
int tpv_estimate_scores(const struct tpv_est_inputs *in, const struct tpv_run_options *opts,
                        struct tpv_score **scores, size_t *nscores, json_t **stability,
                        const struct tpv_progress *pg, struct tpv_err *err);

/* ---- stochastic trace estimators (exported for tests and benchmarks) -------------------------
 * They estimate T = Tr(D J^T J) = sum_j c_j sum_x ||J(x) e_j||^2 (a sum over samples, not a
 * mean), D = diag(c) with c >= 0 (c == NULL means the identity). */
struct tpv_trace_result {
    double value;
    double stderr_value;
    uint64_t samples;       /* probe vectors used */
    uint64_t sketch;        /* Hutch++: sketch size (0 otherwise) */
    bool converged;         /* target relative error reached before max_samples */
    bool per_sample_set;    /* opts->per_sample was filled */
};

struct tpv_trace_opts {
    uint64_t seed;
    uint64_t stream;          /* distinguishes splits/uses of one seed */
    double target_rel_error;  /* stop once stderr <= target * |mean| (0 = never) */
    uint64_t max_samples;     /* cap (>= 1) */
    uint64_t min_samples;     /* before the stopping test (default 8 when 0) */
    /* Optional, caller-owned, n entries: each sample's part of the estimate averaged over the
     * probes (sum_x per_sample[x] = value), when the probe kind can split it (parameter probes;
     * output probes with c == NULL); out->per_sample_set says whether it did. */
    double *per_sample;
};

/* Parameter-space Hutchinson: samples ||J (sqrt(c) . z)||^2, z Rademacher in R^p (one jvp each). */
int tpv_trace_hutchinson(const struct tpv_jsrc *s, const double *c, const struct tpv_trace_opts *o,
                         struct tpv_trace_result *out, const struct tpv_progress *pg,
                         struct tpv_err *err);
/* Output-space Hutchinson: samples sum_j c_j sum_x (r_x^T J(x))_j^2, r Rademacher in R^{n K}
 * (one sqdiag_projected each; exact when K = 1). */
int tpv_trace_hutchinson_outputs(const struct tpv_jsrc *s, const double *c,
                                 const struct tpv_trace_opts *o, struct tpv_trace_result *out,
                                 const struct tpv_progress *pg, struct tpv_err *err);
/* Hutch++ (Meyer, Musco, Musco, Tropp 2021) on A = D^1/2 J^T J D^1/2: sketch of
 * s = min(p, max(1, max_samples / 3)) Rademacher columns, Q = orth(A S), T = tr(Q^T A Q) +
 * Hutchinson on (I - QQ^T) A (I - QQ^T) with up to max_samples - 2 s probes (adaptive as above;
 * stderr is the remainder's).  Needs the optional vjp op (TPV_EUNIMPLEMENTED without it). */
int tpv_trace_hutchpp(const struct tpv_jsrc *s, const double *c, const struct tpv_trace_opts *o,
                      struct tpv_trace_result *out, const struct tpv_progress *pg,
                      struct tpv_err *err);

/* The magnitude prune rule of DESIGN.md section 3 over the weights in column order: mask[j] = 1
 * for the floor(fraction * N) smallest |w| among tensors of rank >= 2 (global or per tensor),
 * ties broken by position with tensors in lexicographic name order, entries row-major.  mask
 * has p entries (0/1).  Needs a named layout.  *pruned = number of ones. */
int tpv_prune_magnitude_mask(const struct tpv_layout *layout, const double *w, double fraction,
                             enum tpv_scope scope, double *mask, uint64_t *pruned,
                             struct tpv_err *err);

#endif
