/* empirical.h: the nonlinear check (issue #12): the empirical TPV of a noise model, i.e. the
 * mean over inputs and draws of ||f(w + dw, x) - f(w, x)||^2 with dw drawn from the model's
 * perturbation, by forward passes of the perturbed model only (the source's outputs_perturbed
 * op, core/jacobian.h).  It is what the first-order scores of core/estimate.c approximate, so
 * their ratio says where the approximation holds (the paper sees it fail at large sigma).
 *
 * Perturbations (DESIGN.md section 3 table, same parameters as the first-order path):
 *  - isotropic: dw ~ N(0, sigma^2 I);
 *  - sgd: dw ~ N(0, s I), s = lr * residual_variance / (2 batch_size) (the trace form's C);
 *  - quantization: dw_j ~ U[-delta_g/2, delta_g/2] independently, delta_g of j's group as the
 *    first-order path defines it (variance delta_g^2/12); the deterministic round-to-nearest grid
 *    w_q = lo_g + delta_g round((w - lo_g)/delta_g) (lo_g the group's minimum) is a second number;
 *  - prune: the masked network itself, dw = -(m . w), one deterministic pass.
 * Draw i of split s uses the stream (s, i) of the model's seed: results depend on the seed only.
 * The value has a standard error over draws and stops early once stderr <= target_rel_error x
 * value (after at least 8 draws), else after max_samples draws. */
#ifndef TPV_EMPIRICAL_H
#define TPV_EMPIRICAL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/estimate.h"
#include "core/jacobian.h"
#include "core/noise.h"
#include "core/score.h"

/* The ratio first_order / empirical outside [LO, HI] flags the score (and its candidate)
 * `nonlinear` (issue #12). */
#define TPV_NONLINEAR_LO 0.8
#define TPV_NONLINEAR_HI 1.25

struct tpv_empirical_result {
    double value;        /* mean over draws of (1/n) sum_x ||f(w + dw, x) - f(w, x)||^2 */
    double stderr_value; /* standard error over draws (0 for prune) */
    uint64_t samples;    /* draws */
    bool converged;      /* the target relative error was reached before max_samples */
    bool has_rtn;        /* quantization: rtn is set */
    double rtn;          /* the round-to-nearest grid's value (deterministic) */
    double *per_input;   /* n entries (malloc'd, the caller's): input x's part, mean over draws */
};

/* The empirical value of model `nm` on source `s` with weights `w` (p, column order; required)
 * and, for prune with a mask blob, `mask` (p values; NULL for the magnitude rule).  `split`
 * selects the streams.  TPV_EINVAL when the source has no model to run (a Jacobian dump) or the
 * kind has no empirical value; TPV_ECANCELED, TPV_ENOMEM. */
int tpv_empirical_run(const struct tpv_jsrc *s, const double *w, const struct tpv_noise *nm,
                      const double *mask, uint64_t split, struct tpv_empirical_result *out,
                      const struct tpv_progress *pg, struct tpv_err *err);

/* The per-parameter quantization step delta_g and group minimum lo_g (p entries each; lo may be
 * NULL) of the groups (global, per_tensor, per_channel): the one definition the first-order
 * path (core/estimate.c, variance delta_g^2 / 12) and the empirical draws share.  *groups and
 * *delta_max as the details report them.  TPV_EINVAL for a grouped scope without names. */
int tpv_quant_steps(const struct tpv_layout *layout, const double *w, uint64_t p, int bits,
                    enum tpv_scope scope, double *delta, double *lo, uint64_t *groups,
                    double *delta_max, struct tpv_err *err);

/* The estimator empirical (sc[s].value, stderr, samples, contributions) or, with the check, the
 * first-order score's details gain empirical {value, stderr, samples, ...}, ratio {value, ci}
 * and nonlinear (the ratio outside [TPV_NONLINEAR_LO, TPV_NONLINEAR_HI]).  Model mi of `in`,
 * its nsplit scores sc (fit, then probe), one progress slice per split. */
int tpv_empirical_scores(const struct tpv_est_inputs *in, size_t mi, struct tpv_score *sc,
                         int nsplit, const struct tpv_progress *pg, struct tpv_err *err);

/* Working memory of tpv_empirical_scores beyond the sources' own (outputs, dw, steps). */
uint64_t tpv_empirical_bytes(const struct tpv_est_inputs *in);

/* Rough cost of a model's empirical passes in exact-diagonal passes over both splits (one
 * forward pass is about one K-th of a diagonal pass), for progress shares. */
double tpv_empirical_passes(const struct tpv_noise *nm, uint64_t K);

#endif
