/* empirical.c: the empirical TPV by forward passes of the perturbed model (empirical.h). */
#include "core/empirical.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rng.h"

#define MIN_DRAWS 8
/* Streams of the empirical draws: apart from the Hutchinson probes' (split index, small) so that
 * one seed gives unrelated vectors to both. */
#define STREAM_BASE 0x656d7069ull /* "empi" */

static int oom(struct tpv_err *err)
{
    return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void set_real(json_t *o, const char *k, double v)
{
    json_object_set_new(o, k, isfinite(v) ? json_real(v) : json_null());
}

/* ---- quantization groups -------------------------------------------------------------------- */

static void group_range(const double *w, uint64_t count, double *lo, double *hi)
{
    *lo = INFINITY;
    *hi = -INFINITY;
    for (uint64_t e = 0; e < count; e++) {
        *lo = w[e] < *lo ? w[e] : *lo;
        *hi = w[e] > *hi ? w[e] : *hi;
    }
}

static void fill_group(double *delta, double *lo, uint64_t off, uint64_t count, double d,
                       double l)
{
    for (uint64_t e = 0; e < count; e++) {
        delta[off + e] = d;
        if (lo)
            lo[off + e] = l;
    }
}

int tpv_quant_steps(const struct tpv_layout *layout, const double *w, uint64_t p, int bits,
                    enum tpv_scope scope, double *delta, double *lo, uint64_t *groups,
                    double *delta_max, struct tpv_err *err)
{
    const double levels = ldexp(1.0, bits) - 1.0;
    double l, h;
    *groups = 0;
    *delta_max = 0;
    if (scope == TPV_SCOPE_GLOBAL) {
        group_range(w, p, &l, &h);
        *delta_max = p ? (h - l) / levels : 0;
        fill_group(delta, lo, 0, p, *delta_max, l);
        *groups = 1;
        return TPV_OK;
    }
    if (layout->nblocks == 0)
        return tpv_err_set(err, TPV_EINVAL, "scope", "per-tensor quantization needs names");
    for (size_t b = 0; b < layout->nblocks; b++) {
        const struct tpv_block *bl = &layout->blocks[b];
        uint64_t ng = scope == TPV_SCOPE_PER_CHANNEL && bl->rank >= 2 ? bl->shape[0] : 1;
        uint64_t per = ng ? bl->count / ng : 0;
        for (uint64_t g = 0; g < ng; g++) {
            uint64_t off = bl->offset + g * per;
            group_range(w + off, per, &l, &h);
            double d = per ? (h - l) / levels : 0;
            *delta_max = d > *delta_max ? d : *delta_max;
            fill_group(delta, lo, off, per, d, l);
            (*groups)++;
        }
    }
    return TPV_OK;
}

/* ---- one law of dw -------------------------------------------------------------------------- */

enum law { LAW_GAUSSIAN, LAW_UNIFORM, LAW_FIXED };

struct perturbation {
    enum law law;
    double sd;        /* LAW_GAUSSIAN: standard deviation of every entry */
    double *delta;    /* LAW_UNIFORM: per-entry width (owned) */
    double *lo;       /* quantization: per-entry group minimum (owned), for round-to-nearest */
    double *fixed;    /* LAW_FIXED: dw (owned) */
    uint64_t groups, pruned;
    double delta_max;
};

static void perturbation_free(struct perturbation *pt)
{
    free(pt->delta);
    free(pt->lo);
    free(pt->fixed);
}

static int prune_dw(struct perturbation *pt, const struct tpv_jsrc *s, const double *w,
                    const struct tpv_noise *nm, const double *mask, struct tpv_err *err)
{
    uint64_t p = s->p;
    double *m = NULL;
    pt->fixed = malloc((p ? p : 1) * sizeof *pt->fixed);
    if (!pt->fixed)
        return oom(err);
    if (nm->prune_rule_magnitude) {
        m = malloc((p ? p : 1) * sizeof *m);
        if (!m)
            return oom(err);
        int rc = tpv_prune_magnitude_mask(&s->layout, w, nm->fraction, nm->scope, m,
                                          &pt->pruned, err);
        if (rc != TPV_OK) {
            free(m);
            return rc;
        }
        mask = m;
    } else if (!mask) {
        return tpv_err_set(err, TPV_EINVAL, "mask", "noise model '%s' needs its mask", nm->name);
    }
    for (uint64_t j = 0; j < p; j++) {
        pt->fixed[j] = -(mask[j] * w[j]);
        if (!nm->prune_rule_magnitude && mask[j] != 0)
            pt->pruned++;
    }
    free(m);
    return TPV_OK;
}

static int perturbation_init(struct perturbation *pt, const struct tpv_jsrc *s, const double *w,
                             const struct tpv_noise *nm, const double *mask, struct tpv_err *err)
{
    memset(pt, 0, sizeof *pt);
    switch (nm->kind) {
    case TPV_NOISE_ISOTROPIC:
        pt->law = LAW_GAUSSIAN;
        pt->sd = nm->sigma;
        return TPV_OK;
    case TPV_NOISE_SGD:
        pt->law = LAW_GAUSSIAN;
        pt->sd = sqrt(nm->lr * nm->residual_variance / (2.0 * nm->batch_size));
        return TPV_OK;
    case TPV_NOISE_QUANTIZATION:
        pt->law = LAW_UNIFORM;
        pt->delta = malloc((s->p ? s->p : 1) * sizeof *pt->delta);
        pt->lo = malloc((s->p ? s->p : 1) * sizeof *pt->lo);
        if (!pt->delta || !pt->lo)
            return oom(err);
        return tpv_quant_steps(&s->layout, w, s->p, nm->bits, nm->scope, pt->delta, pt->lo,
                               &pt->groups, &pt->delta_max, err);
    case TPV_NOISE_PRUNE:
        pt->law = LAW_FIXED;
        return prune_dw(pt, s, w, nm, mask, err);
    default:
        return tpv_err_set(err, TPV_EINVAL, "estimator",
                           "noise model '%s' (%s) has no empirical value", nm->name,
                           tpv_noise_kind_name(nm->kind));
    }
}

static void draw(const struct perturbation *pt, uint64_t seed, uint64_t stream, double *dw,
                 uint64_t p)
{
    struct tpv_rng r;
    tpv_rng_init(&r, seed, stream);
    for (uint64_t j = 0; j < p; j++)
        dw[j] = pt->law == LAW_GAUSSIAN ? pt->sd * tpv_rng_normal(&r)
                                        : pt->delta[j] * (tpv_rng_uniform(&r) - 0.5);
}

/* ---- the passes ----------------------------------------------------------------------------- */

/* Progress of draw i of `total` (each a forward pass that reports its own batches). */
struct draw_progress {
    const struct tpv_progress *outer;
    uint64_t i, total;
};

static int draw_progress_fn(void *ctx, double f)
{
    const struct draw_progress *d = ctx;
    if (!d->outer || !d->outer->fn)
        return 0;
    return d->outer->fn(d->outer->ctx, ((double)d->i + (f > 1 ? 1 : f)) / (double)d->total);
}

/* out[x] = ||y_x - base_x||^2 over the K outputs of each input; returns their mean. */
static double squared_change(const double *y, const double *base, uint64_t n, uint64_t K,
                             double *out)
{
    double t = 0;
    for (uint64_t x = 0; x < n; x++) {
        double tx = 0;
        for (uint64_t k = 0; k < K; k++) {
            double d = y[x * K + k] - base[x * K + k];
            tx += d * d;
        }
        out[x] = tx;
        t += tx;
    }
    return t / (double)n;
}

struct passes {
    const struct tpv_jsrc *s;
    double *base, *y, *dw, *cx;
};

static int one_pass(struct passes *ps, const double *dw, uint64_t i, uint64_t total,
                    const struct tpv_progress *pg, double *v, struct tpv_err *err)
{
    struct draw_progress dp = { pg, i, total };
    struct tpv_progress sub = { draw_progress_fn, &dp };
    int rc = ps->s->ops->outputs_perturbed(ps->s, dw, ps->y, &sub, err);
    if (rc == TPV_OK)
        *v = squared_change(ps->y, ps->base, ps->s->n, ps->s->K, ps->cx);
    return rc;
}

static void round_to_nearest(const struct perturbation *pt, const double *w, double *dw,
                             uint64_t p)
{
    for (uint64_t j = 0; j < p; j++) {
        double d = pt->delta[j];
        dw[j] = d > 0 ? pt->lo[j] + d * round((w[j] - pt->lo[j]) / d) - w[j] : 0;
    }
}

static int run_draws(struct passes *ps, const struct perturbation *pt, const double *w,
                     const struct tpv_noise *nm, uint64_t split, struct tpv_empirical_result *out,
                     const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct tpv_jsrc *s = ps->s;
    bool fixed = pt->law == LAW_FIXED;
    uint64_t cap = fixed ? 1 : (nm->max_samples ? nm->max_samples : 1);
    uint64_t total = cap + (pt->law == LAW_UNIFORM ? 1 : 0), min = cap < MIN_DRAWS ? cap : MIN_DRAWS;
    double mean = 0, m2 = 0, v = 0;
    int rc = TPV_OK;
    for (uint64_t i = 0; rc == TPV_OK && i < cap; i++) {
        const double *dw = pt->fixed;
        if (!fixed) {
            draw(pt, nm->seed, STREAM_BASE + (split << 40) + i, ps->dw, s->p);
            dw = ps->dw;
        }
        rc = one_pass(ps, dw, i, total, pg, &v, err);
        if (rc != TPV_OK)
            break;
        for (uint64_t x = 0; x < s->n; x++)
            out->per_input[x] += ps->cx[x];
        out->samples = i + 1;
        double d = v - mean; /* Welford */
        mean += d / (double)out->samples;
        m2 += d * (v - mean);
        double se = out->samples > 1 ? sqrt(m2 / (double)(out->samples - 1) /
                                            (double)out->samples) : 0;
        out->value = mean;
        out->stderr_value = fixed ? 0 : se;
        if (!fixed && out->samples >= min && out->samples > 1 && nm->target_rel_error > 0 &&
            se <= nm->target_rel_error * fabs(mean)) {
            out->converged = true;
            break;
        }
    }
    out->converged |= fixed;
    for (uint64_t x = 0; rc == TPV_OK && x < s->n; x++)
        out->per_input[x] /= (double)out->samples;
    if (rc == TPV_OK && pt->law == LAW_UNIFORM) {
        round_to_nearest(pt, w, ps->dw, s->p);
        rc = one_pass(ps, ps->dw, total - 1, total, pg, &out->rtn, err);
        out->has_rtn = rc == TPV_OK;
    }
    return rc;
}

static int run_with(const struct tpv_jsrc *s, const double *w, const struct tpv_noise *nm,
                    const struct perturbation *pt, uint64_t split,
                    struct tpv_empirical_result *out, const struct tpv_progress *pg,
                    struct tpv_err *err)
{
    uint64_t nK = s->n * s->K;
    struct passes ps = { s, malloc((nK ? nK : 1) * sizeof(double)),
                         malloc((nK ? nK : 1) * sizeof(double)),
                         malloc((s->p ? s->p : 1) * sizeof(double)),
                         malloc((s->n ? s->n : 1) * sizeof(double)) };
    out->per_input = calloc(s->n ? s->n : 1, sizeof *out->per_input);
    int rc = ps.base && ps.y && ps.dw && ps.cx && out->per_input ? TPV_OK : oom(err);
    if (rc == TPV_OK)
        rc = s->ops->outputs(s, ps.base, NULL, err);
    if (rc == TPV_OK)
        rc = run_draws(&ps, pt, w, nm, split, out, pg, err);
    free(ps.base);
    free(ps.y);
    free(ps.dw);
    free(ps.cx);
    if (rc != TPV_OK) {
        free(out->per_input);
        out->per_input = NULL;
    }
    return rc;
}

static int check_runnable(const struct tpv_jsrc *s, const double *w, const struct tpv_noise *nm,
                          struct tpv_err *err)
{
    if (!s->ops->outputs_perturbed || !s->ops->outputs)
        return tpv_err_set(err, TPV_EINVAL, "estimator",
                           "noise model '%s': the empirical check runs the model itself, so it "
                           "needs a model candidate (a spec and weights, or an ONNX graph); a "
                           "Jacobian dump has none", nm->name);
    if (!w)
        return tpv_err_set(err, TPV_EINVAL, "weights",
                           "noise model '%s': the empirical check needs the model's weights",
                           nm->name);
    if (s->n == 0)
        return tpv_err_set(err, TPV_EINVAL, "inputs", "the empirical check needs inputs");
    return TPV_OK;
}

int tpv_empirical_run(const struct tpv_jsrc *s, const double *w, const struct tpv_noise *nm,
                      const double *mask, uint64_t split, struct tpv_empirical_result *out,
                      const struct tpv_progress *pg, struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    int rc = check_runnable(s, w, nm, err);
    if (rc != TPV_OK)
        return rc;
    struct perturbation pt;
    rc = perturbation_init(&pt, s, w, nm, mask, err);
    if (rc == TPV_OK)
        rc = run_with(s, w, nm, &pt, split, out, pg, err);
    perturbation_free(&pt);
    return rc;
}

/* ---- scores and details --------------------------------------------------------------------- */

static const char *law_name(const struct tpv_noise *nm)
{
    return nm->kind == TPV_NOISE_PRUNE          ? "masked_network"
           : nm->kind == TPV_NOISE_QUANTIZATION ? "uniform"
                                                : "gaussian";
}

/* What every empirical result reports beside its value. */
static void result_details(json_t *d, const struct tpv_noise *nm,
                           const struct tpv_empirical_result *r)
{
    json_object_set_new(d, "distribution", json_string(law_name(nm)));
    json_object_set_new(d, "converged", json_boolean(r->converged));
    if (r->has_rtn)
        set_real(d, "round_to_nearest", r->rtn);
}

/* The check: first_order / empirical with a 95 % interval from the empirical stderr (the
 * first-order value taken as given), and the nonlinear flag. */
static int check_details(struct tpv_score *sc, const struct tpv_noise *nm,
                         const struct tpv_empirical_result *r, struct tpv_err *err)
{
    json_t *emp = json_pack("{s:f,s:f,s:I}", "value", r->value, "stderr", r->stderr_value,
                            "samples", (json_int_t)r->samples);
    json_t *ratio = json_object(), *ci = json_array();
    if (!emp || !ratio || !ci) {
        json_decref(emp);
        json_decref(ratio);
        json_decref(ci);
        return oom(err);
    }
    result_details(emp, nm, r);
    double fo = sc->value, e = r->value, half = 1.959963984540054 * r->stderr_value;
    double q = e > 0 ? fo / e : NAN;
    double lo = e + half > 0 ? fo / (e + half) : NAN, hi = e - half > 0 ? fo / (e - half) : NAN;
    set_real(ratio, "value", q);
    json_array_append_new(ci, isfinite(lo) ? json_real(lo) : json_null());
    json_array_append_new(ci, isfinite(hi) ? json_real(hi) : json_null());
    json_object_set_new(ratio, "ci", ci);
    bool nonlinear = isfinite(q) ? (q < TPV_NONLINEAR_LO || q > TPV_NONLINEAR_HI) : fo > 0;
    json_object_set_new(sc->details, "empirical", emp);
    json_object_set_new(sc->details, "ratio", ratio);
    json_object_set_new(sc->details, "nonlinear", json_boolean(nonlinear));
    return TPV_OK;
}

/* The estimator empirical: the result is the score. */
static void score_from(struct tpv_score *sc, const struct tpv_noise *nm,
                       struct tpv_empirical_result *r, uint64_t n)
{
    sc->value = r->value;
    sc->stderr_value = r->stderr_value;
    sc->samples = r->samples;
    result_details(sc->details, nm, r);
    set_real(sc->details, "target_rel_error", nm->target_rel_error);
    json_object_set_new(sc->details, "max_samples", json_integer((json_int_t)nm->max_samples));
    tpv_score_set_contributions(sc, r->per_input, (size_t)n);
    r->per_input = NULL;
}

int tpv_empirical_scores(const struct tpv_est_inputs *in, size_t mi, struct tpv_score *sc,
                         int nsplit, const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct tpv_noise *nm = &in->models[mi];
    const double *mask = in->extra ? in->extra[mi].mask : NULL;
    const struct tpv_jsrc *src[2] = { in->fit, in->probe };
    int rc = TPV_OK;
    for (int s = 0; rc == TPV_OK && s < nsplit; s++) {
        double t0 = now_seconds();
        struct tpv_empirical_result r;
        rc = tpv_empirical_run(src[s], in->weights, nm, mask, (uint64_t)s, &r, &pg[s], err);
        if (rc != TPV_OK)
            break;
        double dt = now_seconds() - t0;
        if (nm->estimator == TPV_EST_EMPIRICAL) {
            score_from(&sc[s], nm, &r, src[s]->n);
            sc[s].wall_seconds = dt;
        } else {
            rc = check_details(&sc[s], nm, &r, err);
            set_real(sc[s].details, "empirical_seconds", dt);
        }
        free(r.per_input);
    }
    return rc;
}

/* a * b + c, UINT64_MAX when it does not fit (the memory plan refuses such a job) */
static uint64_t mul_add(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t r;
    if (a == UINT64_MAX || c == UINT64_MAX || __builtin_mul_overflow(a, b, &r) ||
        __builtin_add_overflow(r, c, &r))
        return UINT64_MAX;
    return r;
}

uint64_t tpv_empirical_bytes(const struct tpv_est_inputs *in)
{
    uint64_t rows = mul_add(in->fit->n, in->fit->K, 0), n = in->fit->n;
    if (in->probe && mul_add(in->probe->n, in->probe->K, 0) > rows)
        rows = mul_add(in->probe->n, in->probe->K, 0);
    if (in->probe && in->probe->n > n)
        n = in->probe->n;
    /* base and perturbed outputs, per-input sums twice; dw, the steps and group minima (or the
     * prune mask and dw), and the source's perturbed copy of the weights */
    uint64_t doubles = mul_add(rows, 2, mul_add(n, 2, mul_add(in->fit->p, 4, 0)));
    return mul_add(doubles, sizeof(double), 0);
}

double tpv_empirical_passes(const struct tpv_noise *nm, uint64_t K)
{
    if (!tpv_noise_needs_model(nm))
        return 0;
    double draws = nm->kind == TPV_NOISE_PRUNE ? 1 : (double)nm->max_samples + 1;
    return (draws + 1) / (double)(K ? K : 1);
}
