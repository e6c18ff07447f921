/* estimate.c: noise models, estimators, memory plan and stability over Jacobian sources (see
 * estimate.h; formulas: DESIGN.md section 3).
 *
 * One job runs in phases: sqdiag per split, then (only if label or sgd_curvature is declared) the
 * fit Gram G, K_X = J_probe J_fit^T, the eigendecomposition of G, then every model reads what it
 * needs.  All sums run in a fixed order; BLAS/LAPACK calls have fixed shapes, so the same inputs,
 * seed and thread count give bit-identical numbers. */
#include "core/estimate.h"

#include <cblas.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/empirical.h"
#include "core/krylov.h"
#include "core/linalg.h"
#include "core/rng.h"

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int oom(struct tpv_err *err)
{
    return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
}

/* ---- progress slices ------------------------------------------------------------------------
 * The job's phases get shares of [0, 1] proportional to a rough cost; each phase sees its own
 * 0..1 through a slice. */
struct prog {
    const struct tpv_progress *outer;
    double total, done;
};

struct slice {
    const struct tpv_progress *outer;
    double lo, hi;
};

static int slice_fn(void *ctx, double f)
{
    struct slice *s = ctx;
    if (!s->outer || !s->outer->fn)
        return 0;
    if (f < 0)
        f = 0;
    if (f > 1)
        f = 1;
    return s->outer->fn(s->outer->ctx, s->lo + (s->hi - s->lo) * f);
}

static struct tpv_progress slice_make(struct slice *sl, struct prog *pr, double cost)
{
    sl->outer = pr->outer;
    sl->lo = pr->total > 0 ? pr->done / pr->total : 0;
    pr->done += cost;
    sl->hi = pr->total > 0 ? pr->done / pr->total : 1;
    if (sl->hi > 1)
        sl->hi = 1;
    return (struct tpv_progress){ slice_fn, sl };
}

/* ---- pairing -------------------------------------------------------------------------------- */

int tpv_jsrc_check_pair(const struct tpv_jsrc *fit, const struct tpv_jsrc *probe,
                        struct tpv_err *err)
{
    if (fit->p != probe->p)
        return tpv_err_set(err, TPV_EINVAL, "jacobian.probe",
                           "the probe dump has p = %llu parameters, the fit dump %llu",
                           (unsigned long long)probe->p, (unsigned long long)fit->p);
    if (fit->K != probe->K)
        return tpv_err_set(err, TPV_EINVAL, "jacobian.probe",
                           "the probe dump has K = %llu outputs, the fit dump %llu",
                           (unsigned long long)probe->K, (unsigned long long)fit->K);
    if (fit->ops != probe->ops)
        return tpv_err_set(err, TPV_EINVAL, "jacobian.probe",
                           "fit and probe sources are of different kinds");
    const struct tpv_layout *a = &fit->layout, *b = &probe->layout;
    if (a->nblocks != b->nblocks)
        return tpv_err_set(err, TPV_EINVAL, "jacobian.probe",
                           "the probe dump has %zu named tensors, the fit dump %zu", b->nblocks,
                           a->nblocks);
    for (size_t i = 0; i < a->nblocks; i++) {
        const struct tpv_block *x = &a->blocks[i], *y = &b->blocks[i];
        bool same = strcmp(x->name, y->name) == 0 && x->rank == y->rank &&
                    x->offset == y->offset && x->count == y->count;
        for (int k = 0; same && k < x->rank; k++)
            same = x->shape[k] == y->shape[k];
        if (!same)
            return tpv_err_set(err, TPV_EINVAL, "jacobian.probe",
                               "the probe dump's tensor %zu ('%s') does not match the fit dump's "
                               "('%s') in name or shape", i, y->name, x->name);
    }
    return TPV_OK;
}

/* ---- what a model needs, and the estimator it will use -------------------------------------- */

static bool diag_family(enum tpv_noise_kind k)
{
    return k == TPV_NOISE_ISOTROPIC || k == TPV_NOISE_SGD || k == TPV_NOISE_QUANTIZATION ||
           k == TPV_NOISE_DIAGONAL;
}

static int model_field_err(struct tpv_err *err, size_t i, const struct tpv_noise *nm,
                           const char *what)
{
    char field[48];
    snprintf(field, sizeof field, "noise_models[%zu]", i);
    return tpv_err_set(err, TPV_EINVAL, field, "noise model '%s' (%s) %s", nm->name,
                       tpv_noise_kind_name(nm->kind), what);
}

static int check_servable(const struct tpv_est_inputs *in, struct tpv_err *err)
{
    bool named = in->fit->layout.nblocks > 0;
    for (size_t i = 0; i < in->nmodels; i++) {
        const struct tpv_noise *nm = &in->models[i];
        const struct tpv_model_inputs *ex = in->extra ? &in->extra[i] : NULL;
        switch (nm->kind) {
        case TPV_NOISE_QUANTIZATION:
            if (nm->scope != TPV_SCOPE_GLOBAL && !named)
                return model_field_err(err, i, nm, "needs tensor names: give the flat dump a "
                                       "layout");
            if (!in->weights && !(nm->scope == TPV_SCOPE_GLOBAL && in->has_wrange))
                return model_field_err(err, i, nm, "needs the candidate's weights");
            break;
        case TPV_NOISE_DIAGONAL:
            if (!named)
                return model_field_err(err, i, nm, "needs tensor names: give the flat dump a "
                                       "layout");
            if (!ex || !ex->variances)
                return model_field_err(err, i, nm, "needs its variances");
            break;
        case TPV_NOISE_PRUNE:
            if (!named)
                return model_field_err(err, i, nm, "needs tensor names: give the flat dump a "
                                       "layout");
            if (!in->weights)
                return model_field_err(err, i, nm, "needs the candidate's weights");
            if (!nm->prune_rule_magnitude && (!ex || !ex->mask))
                return model_field_err(err, i, nm, "needs its mask");
            break;
        default:
            break;
        }
    }
    return TPV_OK;
}

/* Chosen estimator of a model and why (a static string). */
/* Rows of K_X multiplied by Q at a time in the label phase. */
static uint64_t label_chunk_rows(uint64_t M, uint64_t N)
{
    uint64_t r = (32ull << 20) / 8 / (N ? N : 1);
    r = r ? r : 1;
    return r < M ? r : M;
}

/* Checked byte arithmetic for the plan (__builtin_*_overflow): UINT64_MAX marks a size that does
 * not fit in 64 bits and stays so through later steps, so that the plan can refuse the job
 * whatever the memory limit (a saturated sum that is later added to could wrap). */
static uint64_t pl_mul(uint64_t a, uint64_t b)
{
    uint64_t r;
    if (a == UINT64_MAX || b == UINT64_MAX || __builtin_mul_overflow(a, b, &r))
        return UINT64_MAX;
    return r;
}

static uint64_t pl_add(uint64_t a, uint64_t b)
{
    uint64_t r;
    if (a == UINT64_MAX || b == UINT64_MAX || __builtin_add_overflow(a, b, &r))
        return UINT64_MAX;
    return r;
}

/* The three paths of label and sgd_curvature (DESIGN.md section 3). */
enum gram_path {
    GP_EIGEN,   /* the Gram matrices; for label also the eigendecomposition ("exact") */
    GP_BLOCKED, /* label with a ridge: Cholesky of G + rho I in tiles ("blocked_exact") */
    GP_MF,      /* matrix-free Krylov + Hutchinson ("matrix_free") */
};

static const char *gram_path_name(enum gram_path g)
{
    switch (g) {
    case GP_EIGEN:
        return "exact";
    case GP_BLOCKED:
        return "blocked_exact";
    case GP_MF:
        return "matrix_free";
    }
    return "exact";
}

struct plan {
    enum tpv_estimator est;
    const char *reason;
    bool outputs; /* hutchinson over output projections */
    bool mf;      /* label / sgd_curvature: matrix-free (krylov.h) */
    enum gram_path path; /* label / sgd_curvature */
    char why[256];       /* label / sgd_curvature: the reason, with the numbers */
};

/* Estimated flops of the exact diagonals (all splits) and of one output-projected probe. */
static void diag_costs(const struct tpv_est_inputs *in, double *exact, double *probe)
{
    const struct tpv_jsrc *src[2] = { in->fit, in->probe };
    *exact = *probe = 0;
    for (int s = 0; s < 2 && src[s]; s++) {
        double e = (double)src[s]->n * (double)src[s]->K * (double)src[s]->p, q = e;
        if (src[s]->ops->costs)
            src[s]->ops->costs(src[s], &e, &q);
        *exact += e;
        *probe += q;
    }
}

/* True when `auto` should not compute exact diagonals: they exceed the job's flop budget and
 * output-projected probes are available (a structured model with K > 1 outputs, where one probe
 * costs about 1/K of the exact pass). */
static bool diag_over_budget(const struct tpv_est_inputs *in, const struct tpv_run_options *opts)
{
    if (!opts || opts->flop_budget <= 0 || in->fit->K < 2 || !in->fit->ops->sqdiag_projected ||
        (in->probe && !in->probe->ops->sqdiag_projected))
        return false;
    double exact, probe;
    diag_costs(in, &exact, &probe);
    return exact > opts->flop_budget && probe < exact;
}

/* Bytes and flops of the Gram phase: G, K_X and the per-input sums; with `eig` the
 * eigendecomposition and its per-input rows (the exact label path); with `blocked` label models
 * on the blocked path, one solve panel of TPV_CHOL_TILE columns and, when G has more than one
 * consumer (the eigendecomposition and blocked models each overwrite their copy), one working
 * copy of G.  Flops count one eigendecomposition and `blocked` factorisations. */
static void gram_phase_costs(const struct tpv_est_inputs *in, bool eig, uint64_t blocked,
                             uint64_t *bytes, double *flops)
{
    const struct tpv_jsrc *f = in->fit, *pr = in->probe;
    uint64_t N = pl_mul(f->n, f->K), M = pr ? pl_mul(pr->n, pr->K) : 0;
    uint64_t g = pl_mul(pl_mul(N, N), 8);
    uint64_t b = pl_add(g, pl_mul(pl_mul(M, N), 8));
    uint64_t inputs = pl_add(f->n, pr ? pr->n : 0);
    b = pl_add(b, pl_mul(inputs, 24)); /* per-input row sums (g_rows, g_self, kx_rows) */
    if (eig) {
        b = pl_add(b, pl_add(tpv_syevd_work_bytes(N), pl_mul(N, 16)));
        b = pl_add(b, pl_mul(pl_mul(inputs, N), 8)); /* q_fit, t_probe */
        if (pr)
            b = pl_add(b, pl_mul(pl_mul(label_chunk_rows(M, N), N), 8));
    }
    if (blocked) {
        /* the solve panel, LAPACKE's transposed diagonal tile, per-input contributions */
        uint64_t t = N < TPV_CHOL_TILE ? N : TPV_CHOL_TILE;
        b = pl_add(b, pl_mul(pl_mul(N, t), 8));
        b = pl_add(b, pl_add(pl_mul(pl_mul(t, t), 8), pl_mul(inputs, 8)));
    }
    if ((eig ? 1 : 0) + blocked > 1)
        b = pl_add(b, g);
    *bytes = b;
    double dN = (double)N, dM = (double)M, dp = (double)f->p;
    *flops = dN * dN * dp + dM * dN * dp + (eig ? 4.0 * dN * dN * dN + 2 * dM * dN * dN : 0) +
             (double)blocked * (5.0 / 3.0 * dN * dN * dN + 2 * dM * dN * dN);
}

/* What every job holds whatever its models: the diagonals, the caller's buffers and the
 * sources' own scratch. */
static uint64_t base_bytes(const struct tpv_est_inputs *in)
{
    const struct tpv_jsrc *f = in->fit, *pr = in->probe;
    uint64_t scratch = f->ops->scratch_bytes ? f->ops->scratch_bytes(f) : 0;
    if (pr && pr->ops->scratch_bytes)
        scratch = pl_add(scratch, pr->ops->scratch_bytes(pr));
    return pl_add(pl_add(pl_mul(pl_mul(f->p, 8), pr ? 2 : 1), in->caller_bytes), scratch);
}

/* "3.2 GB" / "640 MB" / "12 kB" for the reasons of `auto`. */
static void fmt_bytes(char *buf, size_t n, uint64_t b)
{
    if (b == UINT64_MAX)
        snprintf(buf, n, "more than 2^64 bytes");
    else if (b >= 1000000000ull)
        snprintf(buf, n, "%.1f GB", (double)b / 1e9);
    else if (b >= 1000000ull)
        snprintf(buf, n, "%.0f MB", (double)b / 1e6);
    else
        snprintf(buf, n, "%.0f kB", (double)b / 1e3);
}

/* One candidate path of a Gram model against the job's budgets. */
struct gram_fit {
    uint64_t bytes; /* with the job's base */
    double flops;
    bool mem_ok, flop_ok;
};

/* The path's bytes count the job's base and the model's own buffers (the fit outputs of
 * sigma_rel), so that a path `auto` takes fits the job's memory plan when the model is alone. */
static struct gram_fit gram_fit_check(const struct tpv_est_inputs *in,
                                      const struct tpv_run_options *opts,
                                      const struct tpv_noise *nm, bool eig, uint64_t blocked)
{
    struct gram_fit g;
    gram_phase_costs(in, eig, blocked, &g.bytes, &g.flops);
    g.bytes = pl_add(g.bytes, base_bytes(in));
    if (tpv_noise_needs_outputs(nm))
        g.bytes = pl_add(g.bytes, pl_mul(pl_mul(in->fit->n, in->fit->K), 8));
    g.mem_ok = g.bytes != UINT64_MAX && !(opts && opts->max_memory && g.bytes > opts->max_memory);
    g.flop_ok = !(opts && opts->flop_budget > 0 && g.flops > opts->flop_budget);
    return g;
}

/* Why a path was left: "gram and eigendecomposition 9.6 GB > budget 2.0 GB" or the flops. */
static void over_what(char *buf, size_t n, const char *what, const struct gram_fit *g,
                      const struct tpv_run_options *opts)
{
    char a[32], b[32];
    fmt_bytes(a, sizeof a, g->bytes);
    if (!g->mem_ok && opts && opts->max_memory) {
        fmt_bytes(b, sizeof b, opts->max_memory);
        snprintf(buf, n, "%s %s > memory budget %s", what, a, b);
    } else if (!g->mem_ok) {
        snprintf(buf, n, "%s %s does not fit in 64-bit sizes", what, a);
    } else {
        snprintf(buf, n, "%s %.2g flops > flop budget %.2g", what, g->flops,
                 opts ? opts->flop_budget : 0);
    }
}

static void plan_set(struct plan *p, enum gram_path path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void plan_set(struct plan *p, enum gram_path path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->why, sizeof p->why, fmt, ap);
    va_end(ap);
    p->path = path;
    p->mf = path == GP_MF;
    p->est = p->mf ? TPV_EST_HUTCHINSON : TPV_EST_EXACT;
}

/* Label and sgd_curvature: the exact path (Gram and, for label, its eigendecomposition), the
 * blocked exact path (label with a ridge: Cholesky of G + rho I in tiles, no eigenvalues) or
 * matrix-free (krylov.h).  `auto` takes the first that fits the memory and flop budgets, in
 * that order (exact keeps the spectrum's details); an explicit `exact` takes the blocked path
 * only when the eigendecomposition does not fit the memory budget. */
static struct plan plan_gram_model(const struct tpv_est_inputs *in,
                                   const struct tpv_run_options *opts,
                                   const struct tpv_noise *nm)
{
    struct plan p = { TPV_EST_EXACT, "requested", false, false, GP_EIGEN, "" };
    bool label = nm->kind == TPV_NOISE_LABEL;
    bool ridged = label && (nm->ridge > 0 || nm->ridge_rel > 0);
    bool mf_ok = tpv_mf_supported(in->fit) && (!in->probe || tpv_mf_supported(in->probe));
    const char *ename = label ? "gram and eigendecomposition" : "gram";
    struct gram_fit ex = gram_fit_check(in, opts, nm, label, 0);
    struct gram_fit bl = gram_fit_check(in, opts, nm, false, ridged ? 1 : 0);
    char e[160], b[160];
    over_what(e, sizeof e, ename, &ex, opts);
    over_what(b, sizeof b, "blocked gram", &bl, opts);
    if (nm->estimator == TPV_EST_EXACT) {
        if (ridged && !ex.mem_ok && bl.mem_ok)
            plan_set(&p, GP_BLOCKED, "requested exact: %s -> blocked_exact (Cholesky of G + rho "
                     "I, %llu bytes)", e, (unsigned long long)bl.bytes);
        else
            plan_set(&p, GP_EIGEN, "requested exact");
        return p;
    }
    if (nm->estimator == TPV_EST_HUTCHINSON || nm->estimator == TPV_EST_HUTCHPP) {
        if (!mf_ok) {
            plan_set(&p, ridged && !ex.mem_ok && bl.mem_ok ? GP_BLOCKED : GP_EIGEN,
                     "matrix-free estimation needs J^T u, which this source lacks; computed "
                     "exactly");
            return p;
        }
        plan_set(&p, GP_MF, "%s", nm->estimator == TPV_EST_HUTCHPP
                                      ? "hutchpp: matrix-free Hutchinson over output projections "
                                        "(no low-rank sketch for this model)"
                                      : "requested: matrix-free Hutchinson over output projections");
        return p;
    }
    char eb[32];
    fmt_bytes(eb, sizeof eb, ex.bytes);
    if (ex.mem_ok && ex.flop_ok) {
        plan_set(&p, GP_EIGEN, "auto: %s %s and %.2g flops fit the budgets -> exact", ename, eb,
                 ex.flops);
        return p;
    }
    if (ridged && bl.mem_ok && bl.flop_ok) {
        char bb[32];
        fmt_bytes(bb, sizeof bb, bl.bytes);
        plan_set(&p, GP_BLOCKED, "auto: %s; blocked gram %s and %.2g flops fit -> blocked_exact",
                 e, bb, bl.flops);
        return p;
    }
    if (mf_ok) {
        plan_set(&p, GP_MF, "auto: %s%s%s -> matrix_free", e, ridged ? "; " : "",
                 ridged ? b : "");
        return p;
    }
    if (ridged && bl.mem_ok)
        plan_set(&p, GP_BLOCKED, "auto: %s; this source has no J^T u -> blocked_exact", e);
    else
        plan_set(&p, GP_EIGEN, "auto: this source has no J^T u, so only the exact Gram path "
                 "exists -> exact");
    return p;
}

static struct plan plan_model(const struct tpv_est_inputs *in, const struct tpv_run_options *opts,
                              const struct tpv_noise *nm)
{
    struct plan p = { TPV_EST_EXACT, "requested", false, false };
    const struct tpv_jsrc *f = in->fit;
    if (nm->estimator == TPV_EST_EMPIRICAL) { /* core/empirical.c: forward passes only */
        p.est = TPV_EST_EMPIRICAL;
        return p;
    }
    if (nm->kind == TPV_NOISE_LABEL || nm->kind == TPV_NOISE_SGD_CURVATURE)
        return plan_gram_model(in, opts, nm);
    if (!diag_family(nm->kind)) {
        if (nm->estimator == TPV_EST_AUTO)
            p.reason = "auto: a fixed perturbation costs one JVP per sample";
        else if (nm->estimator != TPV_EST_EXACT)
            p.reason = "a fixed perturbation has no stochastic estimator; computed exactly";
        return p;
    }
    switch (nm->estimator) {
    case TPV_EST_AUTO:
        if (diag_over_budget(in, opts)) {
            p.est = TPV_EST_HUTCHINSON;
            p.outputs = true;
            p.reason = "auto: the exact diagonal exceeds the job's flop budget (details: "
                       "exact_flops, flop_budget); Hutchinson over output projections";
            return p;
        }
        /* Otherwise sqdiag is computed for every split anyway (stability report), so the exact
         * diagonal is the cheapest answer once it fits the memory plan. */
        p.reason = "auto: the exact diagonal costs one pass and is computed for the stability "
                   "report anyway";
        return p;
    case TPV_EST_EXACT:
    case TPV_EST_EMPIRICAL: /* answered above */
        return p;
    case TPV_EST_HUTCHPP:
        if (f->ops->vjp) {
            p.est = TPV_EST_HUTCHPP;
            return p;
        }
        p.reason = "hutchpp needs J^T u, which this source lacks: used hutchinson";
        __attribute__((fallthrough));
    case TPV_EST_HUTCHINSON:
        p.est = TPV_EST_HUTCHINSON;
        p.outputs = f->K > 1 && f->ops->sqdiag_projected;
        return p;
    }
    return p;
}

/* Hutch++ sketch size for a cap of m probes over p parameters. */
static uint64_t hpp_sketch(uint64_t m, uint64_t p)
{
    uint64_t s = m / 3 ? m / 3 : 1;
    return s < p ? s : p;
}

static uint64_t mf_budget(const struct tpv_est_inputs *in, const struct tpv_run_options *opts);

/* Options of one matrix-free run of model `nm` on split `s` (rho resolved by the caller). */
static struct tpv_mf_opts mf_opts(const struct tpv_noise *nm, int s, double rho, uint64_t budget)
{
    return (struct tpv_mf_opts){ .seed = nm->seed, .stream = (uint64_t)s,
                                 .target_rel_error = nm->target_rel_error,
                                 .max_samples = nm->max_samples, .rho = rho, .rcond = nm->rcond,
                                 .max_bytes = budget,
                                 /* sgd_curvature solves nothing: no preconditioner to plan,
                                  * and its probes go one at a time (no rounds to hold) */
                                 .plain_cg = nm->kind != TPV_NOISE_LABEL,
                                 .block = nm->kind == TPV_NOISE_LABEL ? 0 : 1 };
}

/* Largest working set of a matrix-free model over the job's splits. */
static uint64_t mf_bytes(const struct tpv_est_inputs *in, const struct tpv_noise *nm,
                         uint64_t budget)
{
    /* ridge_rel's rho is only known at run time: any positive value plans the same buffers */
    double rho = nm->kind == TPV_NOISE_LABEL ? (nm->ridge > 0 || nm->ridge_rel > 0 ? 1 : 0) : 1;
    struct tpv_mf_opts o = mf_opts(nm, 0, rho, budget);
    uint64_t b = tpv_mf_work_bytes(in->fit, NULL, &o);
    if (in->probe) {
        uint64_t bp = tpv_mf_work_bytes(in->fit, in->probe, &o);
        b = bp > b ? bp : b;
    }
    return b;
}

struct mem_plan {
    uint64_t total;
    uint64_t base, gram, transient;
};

/* The Gram phase's bytes (G, K_X, the eigendecomposition, the blocked copies) for the paths the
 * models take. */
static uint64_t gram_bytes(const struct tpv_est_inputs *in, const struct tpv_run_options *opts)
{
    bool label = false, sgdc = false;
    uint64_t blocked = 0, g = 0;
    for (size_t i = 0; i < in->nmodels; i++) {
        const struct tpv_noise *nm = &in->models[i];
        struct plan pl = plan_model(in, opts, nm);
        label |= nm->kind == TPV_NOISE_LABEL && !pl.mf && pl.path == GP_EIGEN;
        sgdc |= nm->kind == TPV_NOISE_SGD_CURVATURE && !pl.mf;
        blocked += nm->kind == TPV_NOISE_LABEL && pl.path == GP_BLOCKED;
    }
    if (label || sgdc || blocked) {
        double unused;
        gram_phase_costs(in, label, blocked, &g, &unused);
    }
    return g;
}

/* The matrix-free runs' budget (krylov.h max_bytes: the Jacobian copies, the preconditioner and
 * the rounds' width shrink to fit it): the run's memory limit less what lives beside them (the
 * diagonals and panels, the Gram phase of the other models, the fit outputs); krylov's default
 * without a limit.  At least 1: then the smallest plan is planned, and refused if over. */
static uint64_t mf_budget(const struct tpv_est_inputs *in, const struct tpv_run_options *opts)
{
    if (!opts || !opts->max_memory)
        return 0;
    uint64_t n = pl_add(in->fit->n, in->probe ? in->probe->n : 0);
    uint64_t side = pl_add(pl_add(base_bytes(in), gram_bytes(in, opts)),
                           pl_add(pl_mul(pl_mul(in->fit->n, in->fit->K), 8),
                                  pl_mul(pl_mul(n, 8), in->nmodels)));
    return opts->max_memory > side ? opts->max_memory - side : 1;
}

static void memory_plan(const struct tpv_est_inputs *in, const struct tpv_run_options *opts,
                        struct mem_plan *mp)
{
    uint64_t budget = mf_budget(in, opts);
    const struct tpv_jsrc *f = in->fit, *pr = in->probe;
    uint64_t p = f->p, N = pl_mul(f->n, f->K), M = pr ? pl_mul(pr->n, pr->K) : 0;
    uint64_t rows = N > M ? N : M;
    bool label = false, sgdc = false;
    uint64_t trans = 0, percol = 0, blocked = 0;
    for (size_t i = 0; i < in->nmodels; i++) {
        const struct tpv_noise *nm = &in->models[i];
        struct plan pl = plan_model(in, opts, nm);
        uint64_t t = 0;
        label |= nm->kind == TPV_NOISE_LABEL && !pl.mf && pl.path == GP_EIGEN;
        sgdc |= nm->kind == TPV_NOISE_SGD_CURVATURE && !pl.mf;
        blocked += nm->kind == TPV_NOISE_LABEL && pl.path == GP_BLOCKED;
        if (pl.mf)
            t = mf_bytes(in, nm, budget);
        if (tpv_noise_needs_outputs(nm)) /* the fit set's outputs, before the Gram phase */
            t = pl_add(t, pl_mul(N, 8));
        if (nm->kind == TPV_NOISE_QUANTIZATION && nm->scope != TPV_SCOPE_GLOBAL)
            t = pl_mul(p, 8);
        if (nm->kind == TPV_NOISE_PRUNE) {
            t = pl_add(pl_mul(p, 16), pl_mul(rows, 8));
            if (nm->prune_rule_magnitude) /* sort keys */
                t = pl_add(t, pl_mul(p, 24));
        }
        if (pl.est == TPV_EST_HUTCHINSON && !pl.mf) /* struct hutch_ws: two p-vectors, one rows-vector */
            t = pl_add(t, pl_add(pl_mul(p, 16), pl_mul(rows, 8)));
        if (diag_family(nm->kind) && pl.est == TPV_EST_EXACT) /* a per_sample column */
            percol = pl_add(percol, pl_mul(pl_add(f->n, pr ? pr->n : 0), 8));
        if (pl.est == TPV_EST_HUTCHPP) {
            uint64_t s = hpp_sketch(nm->max_samples, p);
            /* sketch (p x s), LAPACKE's transposed copy, tau, vectors */
            t = pl_add(t, pl_add(pl_mul(pl_mul(p, s), 16),
                                           pl_add(pl_mul(p, 24), pl_mul(rows, 8))));
        }
        if (tpv_noise_needs_model(nm))
            t = pl_add(t, tpv_empirical_bytes(in));
        trans = t > trans ? t : trans;
    }
    mp->base = pl_add(base_bytes(in), percol);
    mp->gram = 0;
    if (label || sgdc || blocked) {
        double unused;
        gram_phase_costs(in, label, blocked, &mp->gram, &unused);
    }
    mp->transient = trans;
    mp->total = pl_add(pl_add(mp->base, mp->gram), mp->transient);
}

int tpv_estimate_memory(const struct tpv_est_inputs *in, const struct tpv_run_options *opts,
                        uint64_t *bytes, struct tpv_err *err)
{
    *bytes = 0;
    if (!in->fit)
        return tpv_err_set(err, TPV_EINVAL, "jacobian.fit", "a fit source is required");
    int rc = check_servable(in, err);
    if (rc != TPV_OK)
        return rc;
    return tpv_estimate_plan(in, opts, bytes, err);
}

int tpv_estimate_plan(const struct tpv_est_inputs *in, const struct tpv_run_options *opts,
                      uint64_t *bytes, struct tpv_err *err)
{
    *bytes = 0;
    if (!in->fit)
        return tpv_err_set(err, TPV_EINVAL, "jacobian.fit", "a fit source is required");
    if (in->probe) {
        int rc = tpv_jsrc_check_pair(in->fit, in->probe, err);
        if (rc != TPV_OK)
            return rc;
    }
    struct mem_plan mp;
    memory_plan(in, opts, &mp);
    *bytes = mp.total;
    if (mp.total == UINT64_MAX)
        return tpv_err_set(err, TPV_ENOSPACE, NULL,
                           "the job's working set does not fit in 64-bit sizes (%llu rows of %llu "
                           "parameters on the fit split, %llu on the probe split): it cannot run",
                           (unsigned long long)in->fit->n, (unsigned long long)in->fit->p,
                           in->probe ? (unsigned long long)in->probe->n : 0ull);
    if (opts && opts->max_memory && mp.total > opts->max_memory)
        return tpv_err_set(err, TPV_ENOSPACE, "max_memory",
                           "scoring needs %llu bytes (%llu for the diagonals and panels, %llu for "
                           "Gram matrices and the eigendecomposition, %llu for the largest "
                           "per-model buffer) but the limit is %llu bytes",
                           (unsigned long long)mp.total, (unsigned long long)mp.base,
                           (unsigned long long)mp.gram, (unsigned long long)mp.transient,
                           (unsigned long long)opts->max_memory);
    return TPV_OK;
}

/* ---- stochastic trace estimators ------------------------------------------------------------ */

struct welford {
    uint64_t n;
    double mean, m2;
};

static void welford_add(struct welford *w, double x)
{
    w->n++;
    double d = x - w->mean;
    w->mean += d / (double)w->n;
    w->m2 += d * (x - w->mean);
}

static double welford_stderr(const struct welford *w)
{
    return w->n > 1 ? sqrt(w->m2 / (double)(w->n - 1) / (double)w->n) : 0.0;
}

static uint64_t stream_id(const struct tpv_trace_opts *o, uint64_t i)
{
    return (o->stream << 40) ^ i;
}

static bool should_stop(const struct tpv_trace_opts *o, const struct welford *w, double offset)
{
    uint64_t minn = o->min_samples ? o->min_samples : 8;
    if (w->n < minn || w->n < 2 || o->target_rel_error <= 0)
        return false;
    double mean = fabs(offset + w->mean);
    return welford_stderr(w) <= o->target_rel_error * mean;
}

/* ||J (sqrt(c) . v)||^2, with `u` a p scratch and `y` a rows scratch. */
static int quad_form(const struct tpv_jsrc *s, const double *c, const double *v, double *u,
                     double *y, double *out, struct tpv_err *err)
{
    for (uint64_t j = 0; j < s->p; j++)
        u[j] = c ? sqrt(c[j]) * v[j] : v[j];
    int rc = s->ops->jvp(s, u, y, NULL, err);
    if (rc != TPV_OK)
        return rc;
    double t = 0;
    for (uint64_t r = 0; r < s->n * s->K; r++)
        t += y[r] * y[r];
    *out = t;
    return TPV_OK;
}

static int check_trace_args(const struct tpv_jsrc *s, const struct tpv_trace_opts *o,
                            struct tpv_err *err)
{
    if (!o || o->max_samples < 1)
        return tpv_err_set(err, TPV_EINVAL, "max_samples", "max_samples must be at least 1");
    if (!s->ops->jvp)
        return tpv_err_set(err, TPV_EUNIMPLEMENTED, NULL, "this source has no JVP");
    return TPV_OK;
}

/* Scratch of one Hutchinson run: two p-vectors and one (n K)-vector, whatever the probe kind;
 * tot (n) receives a probe's per-sample parts when the caller wants them (NULL otherwise). */
struct hutch_ws {
    double *p1, *p2, *rows, *tot;
    bool tot_set;
};

/* One probe's quadratic form: `i` numbers the probe (its random stream). */
typedef int (*hutch_probe_fn)(const struct tpv_jsrc *s, const double *c,
                              const struct tpv_trace_opts *o, uint64_t i, struct hutch_ws *ws,
                              double *q, struct tpv_err *err);

/* Parameter-space probe z in {+-1}^p: ||J (sqrt(c) . z)||^2, one JVP. */
static int probe_parameters(const struct tpv_jsrc *s, const double *c,
                            const struct tpv_trace_opts *o, uint64_t i, struct hutch_ws *ws,
                            double *q, struct tpv_err *err)
{
    struct tpv_rng r;
    tpv_rng_init(&r, o->seed, stream_id(o, i));
    tpv_rng_rademacher(&r, ws->p1, (size_t)s->p);
    int rc = quad_form(s, c, ws->p1, ws->p2, ws->rows, q, err);
    for (uint64_t x = 0; rc == TPV_OK && ws->tot && x < s->n; x++) {
        double t = 0;
        for (uint64_t k = 0; k < s->K; k++)
            t += ws->rows[x * s->K + k] * ws->rows[x * s->K + k];
        ws->tot[x] = t;
    }
    ws->tot_set = ws->tot != NULL;
    return rc;
}

/* Output-space probe r_x in {+-1}^K per sample: sum_j c_j (r_x^T J(x))_j^2, one backward pass
 * per sample instead of K. */
static int probe_outputs(const struct tpv_jsrc *s, const double *c, const struct tpv_trace_opts *o,
                         uint64_t i, struct hutch_ws *ws, double *q, struct tpv_err *err)
{
    struct tpv_rng g;
    tpv_rng_init(&g, o->seed, stream_id(o, i));
    tpv_rng_rademacher(&g, ws->rows, (size_t)(s->n * s->K));
    memset(ws->p1, 0, (size_t)s->p * sizeof *ws->p1);
    /* The per-sample totals are the parts of the unweighted form only. */
    double *tot = c ? NULL : ws->tot;
    int rc = s->ops->sqdiag_projected(s, ws->rows, ws->p1, tot, NULL, err);
    if (rc != TPV_OK)
        return rc;
    ws->tot_set = tot != NULL;
    double t = 0;
    for (uint64_t j = 0; j < s->p; j++)
        t += c ? c[j] * ws->p1[j] : ws->p1[j];
    *q = t;
    return TPV_OK;
}

/* The Hutchinson loop shared by both probe kinds: running mean and standard error, stopping at
 * the target relative error or max_samples, progress and cancellation per probe. */
static int hutchinson_run(const struct tpv_jsrc *s, const double *c,
                          const struct tpv_trace_opts *o, hutch_probe_fn probe,
                          struct tpv_trace_result *out, const struct tpv_progress *pg,
                          struct tpv_err *err)
{
    uint64_t rows = s->n * s->K;
    struct hutch_ws ws = { malloc((size_t)s->p * sizeof(double)),
                           malloc((size_t)s->p * sizeof(double)),
                           malloc((size_t)(rows ? rows : 1) * sizeof(double)),
                           o->per_sample ? malloc((size_t)(s->n ? s->n : 1) * sizeof(double))
                                         : NULL, false };
    int rc = ws.p1 && ws.p2 && ws.rows && (!o->per_sample || ws.tot) ? TPV_OK : oom(err);
    bool split = o->per_sample != NULL;
    if (split)
        memset(o->per_sample, 0, (size_t)s->n * sizeof *o->per_sample);
    struct welford w = { 0 };
    for (uint64_t i = 0; rc == TPV_OK && i < o->max_samples; i++) {
        double q;
        rc = probe(s, c, o, i, &ws, &q, err);
        if (rc != TPV_OK)
            break;
        split = split && ws.tot_set;
        for (uint64_t x = 0; split && x < s->n; x++)
            o->per_sample[x] += ws.tot[x];
        welford_add(&w, q);
        if (should_stop(o, &w, 0)) {
            out->converged = true;
            break;
        }
        if (tpv_progress_report(pg, 0, 1, i + 1, o->max_samples) != TPV_OK)
            rc = tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
    }
    free(ws.p1);
    free(ws.p2);
    free(ws.rows);
    free(ws.tot);
    if (rc != TPV_OK)
        return rc;
    for (uint64_t x = 0; split && w.n && x < s->n; x++)
        o->per_sample[x] /= (double)w.n;
    out->per_sample_set = split && w.n > 0;
    out->value = w.mean;
    out->stderr_value = welford_stderr(&w);
    out->samples = w.n;
    return TPV_OK;
}

int tpv_trace_hutchinson(const struct tpv_jsrc *s, const double *c, const struct tpv_trace_opts *o,
                         struct tpv_trace_result *out, const struct tpv_progress *pg,
                         struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    int rc = check_trace_args(s, o, err);
    return rc == TPV_OK ? hutchinson_run(s, c, o, probe_parameters, out, pg, err) : rc;
}

int tpv_trace_hutchinson_outputs(const struct tpv_jsrc *s, const double *c,
                                 const struct tpv_trace_opts *o, struct tpv_trace_result *out,
                                 const struct tpv_progress *pg, struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    if (!o || o->max_samples < 1)
        return tpv_err_set(err, TPV_EINVAL, "max_samples", "max_samples must be at least 1");
    if (!s->ops->sqdiag_projected)
        return tpv_err_set(err, TPV_EUNIMPLEMENTED, NULL, "this source has no projected sqdiag");
    return hutchinson_run(s, c, o, probe_outputs, out, pg, err);
}

int tpv_trace_hutchpp(const struct tpv_jsrc *s, const double *c, const struct tpv_trace_opts *o,
                      struct tpv_trace_result *out, const struct tpv_progress *pg,
                      struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    int rc = check_trace_args(s, o, err);
    if (rc != TPV_OK)
        return rc;
    if (!s->ops->vjp)
        return tpv_err_set(err, TPV_EUNIMPLEMENTED, NULL, "hutchpp needs the vjp operation");
    uint64_t p = s->p, rows = s->n * s->K, sk = hpp_sketch(o->max_samples, p);
    uint64_t cells;
    if (!tpv_mul3(p, sk, sizeof(double), &cells) || cells > SIZE_MAX)
        return tpv_err_set(err, TPV_ENOSPACE, NULL, "hutchpp sketch is too large");
    double *Y = malloc((size_t)cells), *z = malloc((size_t)p * sizeof *z);
    double *u = malloc((size_t)p * sizeof *u), *y = malloc((size_t)rows * sizeof *y);
    double *h = malloc((size_t)sk * sizeof *h);
    if (!Y || !z || !u || !y || !h)
        rc = oom(err);
    uint64_t total_steps = 2 * sk + (o->max_samples > 2 * sk ? o->max_samples - 2 * sk : 0);
    uint64_t step = 0;
    /* 1. Y = A S, column i from probe i: A z = D^1/2 J^T J D^1/2 z. */
    for (uint64_t i = 0; rc == TPV_OK && i < sk; i++) {
        struct tpv_rng g;
        tpv_rng_init(&g, o->seed, stream_id(o, i));
        tpv_rng_rademacher(&g, z, (size_t)p);
        for (uint64_t j = 0; j < p; j++)
            u[j] = c ? sqrt(c[j]) * z[j] : z[j];
        rc = s->ops->jvp(s, u, y, NULL, err);
        if (rc == TPV_OK)
            rc = s->ops->vjp(s, y, u, NULL, err);
        for (uint64_t j = 0; rc == TPV_OK && j < p; j++)
            Y[j * sk + i] = c ? sqrt(c[j]) * u[j] : u[j];
        if (rc == TPV_OK && tpv_progress_report(pg, 0, 1, ++step, total_steps) != TPV_OK)
            rc = tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
    }
    /* 2. Q = orth(Y); 3. tr(Q^T A Q) = sum_i ||J D^1/2 q_i||^2. */
    if (rc == TPV_OK)
        rc = tpv_orth(p, sk, Y, err);
    double t1 = 0;
    for (uint64_t i = 0; rc == TPV_OK && i < sk; i++) {
        double q;
        for (uint64_t j = 0; j < p; j++)
            z[j] = Y[j * sk + i];
        rc = quad_form(s, c, z, u, y, &q, err);
        t1 += q;
        if (rc == TPV_OK && tpv_progress_report(pg, 0, 1, ++step, total_steps) != TPV_OK)
            rc = tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
    }
    /* 4. Hutchinson on the deflated operator with g' = (I - QQ^T) g. */
    struct welford w = { 0 };
    uint64_t rem = o->max_samples > 2 * sk ? o->max_samples - 2 * sk : 1;
    if (sk == p)
        rem = 0; /* Q spans R^p: the first term is the whole trace */
    for (uint64_t i = 0; rc == TPV_OK && i < rem; i++) {
        struct tpv_rng g;
        double q;
        tpv_rng_init(&g, o->seed, stream_id(o, sk + i));
        tpv_rng_rademacher(&g, z, (size_t)p);
        cblas_dgemv(CblasRowMajor, CblasTrans, (blasint)p, (blasint)sk, 1.0, Y, (blasint)sk, z, 1,
                    0.0, h, 1);
        cblas_dgemv(CblasRowMajor, CblasNoTrans, (blasint)p, (blasint)sk, -1.0, Y, (blasint)sk, h,
                    1, 1.0, z, 1);
        rc = quad_form(s, c, z, u, y, &q, err);
        if (rc != TPV_OK)
            break;
        welford_add(&w, q);
        if (should_stop(o, &w, t1)) {
            out->converged = true;
            break;
        }
        if (tpv_progress_report(pg, 0, 1, ++step, total_steps) != TPV_OK)
            rc = tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
    }
    free(Y);
    free(z);
    free(u);
    free(y);
    free(h);
    if (rc != TPV_OK)
        return rc;
    out->value = t1 + w.mean;
    out->stderr_value = welford_stderr(&w);
    out->samples = sk + w.n;
    out->sketch = sk;
    if (rem == 0)
        out->converged = true;
    return TPV_OK;
}

/* ---- magnitude prune rule ------------------------------------------------------------------- */

struct prune_key {
    double a;      /* |w| */
    uint64_t lex;  /* rank of the block in lexicographic name order */
    uint64_t idx;  /* row-major index inside the block */
    uint64_t col;  /* column in the source */
};

static int cmp_key(const void *x, const void *y)
{
    const struct prune_key *a = x, *b = y;
    if (a->a != b->a)
        return a->a < b->a ? -1 : 1;
    if (a->lex != b->lex)
        return a->lex < b->lex ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

struct name_ref {
    const char *name;
    size_t index;
};

static int cmp_name_ref(const void *x, const void *y)
{
    const struct name_ref *a = x, *b = y;
    return strcmp(a->name, b->name);
}

int tpv_prune_magnitude_mask(const struct tpv_layout *layout, const double *w, double fraction,
                             enum tpv_scope scope, double *mask, uint64_t *pruned,
                             struct tpv_err *err)
{
    *pruned = 0;
    if (layout->nblocks == 0)
        return tpv_err_set(err, TPV_EINVAL, NULL, "the magnitude rule needs tensor names");
    if (!(fraction >= 0 && fraction <= 1))
        return tpv_err_set(err, TPV_EINVAL, "fraction", "fraction must be in [0, 1]");
    memset(mask, 0, (size_t)layout->p * sizeof *mask);
    size_t nb = layout->nblocks;
    /* Blocks in lexicographic name order (no global comparator context: jobs run in parallel). */
    struct name_ref *refs = malloc(nb * sizeof *refs);
    size_t *order = malloc(nb * sizeof *order);
    uint64_t *lex = malloc(nb * sizeof *lex);
    if (!refs || !order || !lex) {
        free(refs);
        free(order);
        free(lex);
        return oom(err);
    }
    for (size_t i = 0; i < nb; i++)
        refs[i] = (struct name_ref){ layout->blocks[i].name, i };
    qsort(refs, nb, sizeof *refs, cmp_name_ref);
    for (size_t i = 0; i < nb; i++)
        order[i] = refs[i].index;
    free(refs);
    for (size_t i = 0; i < nb; i++)
        lex[order[i]] = i;
    uint64_t N = 0;
    for (size_t i = 0; i < nb; i++)
        if (layout->blocks[i].rank >= 2)
            N += layout->blocks[i].count;
    struct prune_key *keys = malloc((size_t)(N ? N : 1) * sizeof *keys);
    if (!keys) {
        free(order);
        free(lex);
        return oom(err);
    }
    /* Keys in lexicographic block order, entries row-major (the tie order). */
    uint64_t k = 0;
    for (size_t oi = 0; oi < nb; oi++) {
        const struct tpv_block *b = &layout->blocks[order[oi]];
        if (b->rank < 2)
            continue;
        uint64_t start = k;
        for (uint64_t e = 0; e < b->count; e++, k++)
            keys[k] = (struct prune_key){ fabs(w[b->offset + e]), oi, e, b->offset + e };
        if (scope == TPV_SCOPE_PER_TENSOR) {
            uint64_t take = (uint64_t)floor(fraction * (double)b->count);
            qsort(keys + start, (size_t)b->count, sizeof *keys, cmp_key);
            for (uint64_t e = 0; e < take; e++)
                mask[keys[start + e].col] = 1.0;
            *pruned += take;
        }
    }
    if (scope != TPV_SCOPE_PER_TENSOR) {
        uint64_t take = (uint64_t)floor(fraction * (double)N);
        qsort(keys, (size_t)N, sizeof *keys, cmp_key);
        for (uint64_t e = 0; e < take; e++)
            mask[keys[e].col] = 1.0;
        *pruned = take;
    }
    free(keys);
    free(order);
    free(lex);
    return TPV_OK;
}

/* ---- per-model evaluation ------------------------------------------------------------------- */

/* Shared state of one job. */
struct job {
    const struct tpv_est_inputs *in;
    const struct tpv_jsrc *src[2];
    int nsplit;
    double *diag[2];
    bool have_diag;       /* diag and trace are exact (else trace is a Hutchinson estimate) */
    double trace[2];      /* sum_j diag_j = ||J||_F^2 */
    double trace_stderr[2];
    uint64_t trace_samples[2];
    double t_sqdiag[2];   /* seconds */
    /* Gram phase */
    bool have_gram, have_eig;
    double t_gram;        /* G, K_X, eigendecomposition */
    double trG;           /* Tr G */
    double sgdc_F, sgdc_S; /* ||G||_F^2 and its diagonal K x K blocks */
    double kx_F;          /* ||K_X||_F^2 */
    double *lambda;       /* N eigenvalues (ascending) */
    double *proj;         /* N: ||K_X q_i||^2 */
    /* Per-input parts of the sums above (the rows of each input: DESIGN.md section 5): */
    double *g_rows;       /* n_fit: sum over input x's K rows of G of the squared entries */
    double *g_self;       /* n_fit: the same over x's own K x K block */
    double *kx_rows;      /* n_probe: the same over x's K rows of K_X */
    double *q_fit;        /* n_fit x N: sum over x's rows of Q_ri^2 (label) */
    /* Exact diagonal family: each model's coefficients, formed before the diagonal pass so
     * that the pass also splits each weighted trace by sample (sqdiag_samples). */
    struct diag_coef *coef; /* nmodels entries (have = false for the other models) */
    size_t ncols;           /* weighted traces formed per sample */
    double *per_sample[2];  /* ncols x n of each split, or NULL */
    double *t_probe;      /* n_probe x N: sum over x's rows of (K_X Q)_ri^2 (label) */
    double out_scale;     /* mean |f(x)| over the fit set's n K outputs (sigma_rel), else 0 */
    /* Blocked exact label: G and K_X kept from the Gram phase, and the number of blocked models
     * still to run (the last one factors G in place, the others a copy in Gw). */
    double *G, *KX, *Gw;
    uint64_t blocked_left;
    uint64_t mf_budget;   /* krylov.h max_bytes of the matrix-free models (mf_budget) */
};

struct diag_coef {
    bool have;
    double scale;
    double *c;   /* NULL = ones */
    bool owned;
    size_t col;  /* column of per_sample */
};

static void set_real(json_t *o, const char *k, double v)
{
    json_object_set_new(o, k, isfinite(v) ? json_real(v) : json_null());
}

/* Weights of the diagonal family: value = scale * sum_j c_j diag_j / |X| (c NULL = ones). */
static int diag_coeffs(const struct job *jb, size_t mi, double *scale, double **c, bool *owned,
                       json_t *details, struct tpv_err *err)
{
    const struct tpv_est_inputs *in = jb->in;
    const struct tpv_noise *nm = &in->models[mi];
    const struct tpv_layout *L = &in->fit->layout;
    *c = NULL;
    *owned = false;
    switch (nm->kind) {
    case TPV_NOISE_ISOTROPIC:
        *scale = nm->sigma * nm->sigma;
        return TPV_OK;
    case TPV_NOISE_SGD:
        *scale = nm->lr * nm->residual_variance / (2.0 * nm->batch_size);
        return TPV_OK;
    case TPV_NOISE_DIAGONAL:
        *scale = 1.0;
        *c = (double *)in->extra[mi].variances;
        return TPV_OK;
    case TPV_NOISE_QUANTIZATION: {
        double levels = ldexp(1.0, nm->bits) - 1.0;
        uint64_t p = in->fit->p;
        if (nm->scope == TPV_SCOPE_GLOBAL) {
            double lo = in->wmin, hi = in->wmax;
            if (in->weights) {
                lo = INFINITY, hi = -INFINITY;
                for (uint64_t j = 0; j < p; j++) {
                    lo = in->weights[j] < lo ? in->weights[j] : lo;
                    hi = in->weights[j] > hi ? in->weights[j] : hi;
                }
            }
            double delta = (hi - lo) / levels;
            *scale = delta * delta / 12.0;
            json_object_set_new(details, "groups", json_integer(1));
            set_real(details, "delta_max", delta);
            return TPV_OK;
        }
        double *cc = malloc((size_t)p * sizeof *cc);
        if (!cc)
            return oom(err);
        uint64_t groups = 0;
        double dmax = 0;
        int rc = tpv_quant_steps(L, in->weights, p, nm->bits, nm->scope, cc, NULL, &groups, &dmax,
                                 err);
        if (rc != TPV_OK) {
            free(cc);
            return rc;
        }
        for (uint64_t j = 0; j < p; j++)
            cc[j] = cc[j] * cc[j] / 12.0; /* uniform rounding noise of width delta_g */
        *scale = 1.0;
        *c = cc;
        *owned = true;
        json_object_set_new(details, "groups", json_integer((json_int_t)groups));
        set_real(details, "delta_max", dmax);
        return TPV_OK;
    }
    default:
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "not a diagonal model");
    }
}

static int score_diag_family(const struct job *jb, size_t mi, const struct plan *pl,
                             struct tpv_score *sc, const struct tpv_progress *pg,
                             struct tpv_err *err)
{
    double scale = 1.0, *c = NULL;
    bool owned = false;
    const struct diag_coef *dc = jb->coef ? &jb->coef[mi] : NULL;
    int rc = TPV_OK;
    if (dc && dc->have) { /* formed before the diagonal pass; freed with the job */
        scale = dc->scale;
        c = dc->c;
    } else {
        rc = diag_coeffs(jb, mi, &scale, &c, &owned, sc[0].details, err);
    }
    if (rc == TPV_OK && jb->nsplit > 1)
        json_object_update(sc[1].details, sc[0].details);
    const struct tpv_noise *nm = &jb->in->models[mi];
    for (int s = 0; rc == TPV_OK && s < jb->nsplit; s++) {
        const struct tpv_jsrc *src = jb->src[s];
        double t0 = now_seconds(), nX = (double)src->n;
        if (pl->est == TPV_EST_EXACT) {
            double T = 0;
            if (c)
                for (uint64_t j = 0; j < src->p; j++)
                    T += c[j] * jb->diag[s][j];
            else
                T = jb->trace[s];
            sc[s].value = scale * T / nX;
            if (dc && dc->have && jb->per_sample[s]) {
                double *ci = malloc((size_t)src->n * sizeof *ci);
                if (!ci) {
                    rc = oom(err);
                    break;
                }
                for (uint64_t x = 0; x < src->n; x++)
                    ci[x] = scale * jb->per_sample[s][dc->col * src->n + x];
                tpv_score_set_contributions(&sc[s], ci, (size_t)src->n);
            }
            sc[s].wall_seconds = jb->t_sqdiag[s];
            set_real(sc[s].details, "shared_seconds", jb->t_sqdiag[s]);
        } else {
            double *ps = pl->est == TPV_EST_HUTCHPP ? NULL
                                                    : malloc((size_t)src->n * sizeof *ps);
            if (pl->est != TPV_EST_HUTCHPP && !ps) {
                rc = oom(err);
                break;
            }
            struct tpv_trace_opts o = { nm->seed, (uint64_t)s, nm->target_rel_error,
                                        nm->max_samples, 0, ps };
            struct tpv_trace_result r;
            struct tpv_progress sub = pg[s];
            if (pl->est == TPV_EST_HUTCHPP)
                rc = tpv_trace_hutchpp(src, c, &o, &r, &sub, err);
            else if (pl->outputs)
                rc = tpv_trace_hutchinson_outputs(src, c, &o, &r, &sub, err);
            else
                rc = tpv_trace_hutchinson(src, c, &o, &r, &sub, err);
            if (rc == TPV_OK && ps && r.per_sample_set) {
                for (uint64_t x = 0; x < src->n; x++)
                    ps[x] *= scale;
                tpv_score_set_contributions(&sc[s], ps, (size_t)src->n);
            } else {
                free(ps);
            }
            if (rc != TPV_OK)
                break;
            sc[s].value = scale * r.value / nX;
            sc[s].stderr_value = fabs(scale) * r.stderr_value / nX;
            sc[s].samples = r.samples;
            sc[s].wall_seconds = now_seconds() - t0;
            json_object_set_new(sc[s].details, "probes",
                                json_string(pl->est == TPV_EST_HUTCHPP ? "parameters"
                                            : pl->outputs              ? "outputs"
                                                                       : "parameters"));
            json_object_set_new(sc[s].details, "converged", json_boolean(r.converged));
            set_real(sc[s].details, "target_rel_error", nm->target_rel_error);
            json_object_set_new(sc[s].details, "max_samples",
                                json_integer((json_int_t)nm->max_samples));
            if (pl->est == TPV_EST_HUTCHPP)
                json_object_set_new(sc[s].details, "sketch", json_integer((json_int_t)r.sketch));
            if (!c && jb->have_diag)
                set_real(sc[s].details, "exact_trace_value", scale * jb->trace[s] / nX);
        }
    }
    if (owned)
        free(c);
    return rc;
}

static int score_prune(const struct job *jb, size_t mi, struct tpv_score *sc,
                       const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct tpv_est_inputs *in = jb->in;
    const struct tpv_noise *nm = &in->models[mi];
    uint64_t p = in->fit->p, rows = 0;
    for (int s = 0; s < jb->nsplit; s++)
        rows = jb->src[s]->n * jb->src[s]->K > rows ? jb->src[s]->n * jb->src[s]->K : rows;
    double *dw = malloc((size_t)p * sizeof *dw), *y = malloc((size_t)rows * sizeof *y);
    double *mask = NULL;
    int rc = dw && y ? TPV_OK : oom(err);
    double t0 = now_seconds();
    uint64_t pruned = 0;
    if (rc == TPV_OK && nm->prune_rule_magnitude) {
        mask = malloc((size_t)p * sizeof *mask);
        rc = mask ? tpv_prune_magnitude_mask(&in->fit->layout, in->weights, nm->fraction,
                                             nm->scope, mask, &pruned, err)
                  : oom(err);
    }
    const double *m = nm->prune_rule_magnitude ? mask : in->extra[mi].mask;
    double dwn = 0;
    for (uint64_t j = 0; rc == TPV_OK && j < p; j++) {
        dw[j] = -(m[j] * in->weights[j]);
        dwn += dw[j] * dw[j];
        if (!nm->prune_rule_magnitude && m[j] != 0)
            pruned++;
    }
    double t_mask = now_seconds() - t0;
    for (int s = 0; rc == TPV_OK && s < jb->nsplit; s++) {
        const struct tpv_jsrc *src = jb->src[s];
        double t1 = now_seconds();
        struct tpv_progress sub = pg[s];
        rc = src->ops->jvp(src, dw, y, &sub, err);
        if (rc != TPV_OK)
            break;
        double t = 0, *ci = malloc((size_t)(src->n ? src->n : 1) * sizeof *ci);
        if (!ci) {
            rc = oom(err);
            break;
        }
        for (uint64_t x = 0; x < src->n; x++) {
            double tx = 0;
            for (uint64_t k = 0; k < src->K; k++)
                tx += y[x * src->K + k] * y[x * src->K + k];
            ci[x] = tx;
            t += tx;
        }
        sc[s].value = t / (double)src->n;
        tpv_score_set_contributions(&sc[s], ci, (size_t)src->n);
        sc[s].wall_seconds = now_seconds() - t1 + t_mask;
        json_object_set_new(sc[s].details, "pruned", json_integer((json_int_t)pruned));
        set_real(sc[s].details, "dw_norm", sqrt(dwn));
    }
    free(dw);
    free(y);
    free(mask);
    return rc;
}

/* Input x's part of the label sums: s2 * sum_i W[x,i] w_i with w_i = lambda_i^2 / den_i on the
 * fit split (W = q_fit) and 1 / den_i on the probe split (W = t_probe), kept i only.
 * TPV_ENOMEM when the arrays cannot be made (a job never answers with fewer outputs). */
static int label_contributions(const struct job *jb, const struct tpv_noise *nm, double lmax,
                               double rho, double s2, struct tpv_score *sc, struct tpv_err *err)
{
    const struct tpv_jsrc *f = jb->in->fit;
    uint64_t N = f->n * f->K;
    double *w = malloc((size_t)(N ? N : 1) * 2 * sizeof *w);
    if (!w)
        return oom(err);
    for (uint64_t i = 0; i < N; i++) {
        double l = jb->lambda[i] > 0 ? jb->lambda[i] : 0;
        bool keep = rho > 0 ? true : l > nm->rcond * lmax && l > 0;
        double den = (l + rho) * (l + rho);
        bool use = keep && den > 0;
        w[i] = use ? s2 * l * l / den : 0;
        w[N + i] = use ? s2 / den : 0;
    }
    for (int s = 0; s < jb->nsplit; s++) {
        const double *W = s == 0 ? jb->q_fit : jb->t_probe;
        uint64_t n = jb->src[s]->n;
        double *ci = malloc((size_t)(n ? n : 1) * sizeof *ci);
        if (!ci) {
            free(w);
            return oom(err);
        }
        cblas_dgemv(CblasRowMajor, CblasNoTrans, (blasint)n, (blasint)N, 1.0, W, (blasint)N,
                    w + (s == 0 ? 0 : N), 1, 0.0, ci, 1);
        tpv_score_set_contributions(&sc[s], ci, (size_t)n);
    }
    free(w);
    return TPV_OK;
}

static int score_label(const struct job *jb, size_t mi, struct tpv_score *sc, struct tpv_err *err)
{
    const struct tpv_noise *nm = &jb->in->models[mi];
    const struct tpv_jsrc *f = jb->in->fit;
    uint64_t N = f->n * f->K;
    const double *lam = jb->lambda;
    double lmax = N ? (lam[N - 1] > 0 ? lam[N - 1] : 0) : 0;
    double rho = nm->ridge > 0 ? nm->ridge : nm->ridge_rel > 0 ? nm->ridge_rel * jb->trG / (double)N : 0;
    double sigma = nm->sigma_rel > 0 ? nm->sigma_rel * jb->out_scale : nm->sigma;
    double s2 = sigma * sigma;
    double fitsum = 0, probesum = 0, eff = 0, lmin_kept = NAN;
    uint64_t kept = 0;
    for (uint64_t i = N; i-- > 0;) { /* descending: largest terms first */
        double l = lam[i] > 0 ? lam[i] : 0;
        bool keep = rho > 0 ? true : l > nm->rcond * lmax && l > 0;
        if (!keep)
            continue;
        double den = (l + rho) * (l + rho);
        if (den <= 0)
            continue;
        kept++;
        lmin_kept = l;
        fitsum += l * l / den;
        eff += rho > 0 ? l / (l + rho) : 1.0;
        if (jb->proj)
            probesum += jb->proj[i] / den;
    }
    int rc = label_contributions(jb, nm, lmax, rho, s2, sc, err);
    if (rc != TPV_OK)
        return rc;
    for (int s = 0; s < jb->nsplit; s++) {
        sc[s].value = s2 * (s == 0 ? fitsum : probesum) / (double)jb->src[s]->n;
        sc[s].wall_seconds = jb->t_gram;
        json_object_set_new(sc[s].details, "rank", json_integer((json_int_t)kept));
        set_real(sc[s].details, "effective_rank", eff);
        set_real(sc[s].details, "lambda_max", lmax);
        set_real(sc[s].details, "lambda_min_kept", lmin_kept);
        set_real(sc[s].details, "rho", rho);
        set_real(sc[s].details, "sigma", sigma);
        if (nm->sigma_rel > 0)
            set_real(sc[s].details, "mean_abs_output", jb->out_scale);
        set_real(sc[s].details, "shared_seconds", jb->t_gram);
    }
    return TPV_OK;
}

/* memcpy of n doubles in 1M-double pieces with a cancel point (reporting fraction `at` of pg)
 * after each: copying a Gram matrix of a few hundred MB takes seconds where first touches are
 * slow. */
static int copy_checked(double *dst, const double *src, uint64_t n, const struct tpv_progress *pg,
                        double at, struct tpv_err *err)
{
    const uint64_t piece = 1u << 20;
    for (uint64_t i = 0; i < n; i += piece) {
        memcpy(dst + i, src + i, (size_t)(n - i < piece ? n - i : piece) * sizeof *dst);
        if (pg && pg->fn && pg->fn(pg->ctx, at))
            return tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
    }
    return TPV_OK;
}

/* ---- blocked exact label ----------------------------------------------------------------------
 * With H = (G + rho I)^-1 (rho > 0), G H = I - rho H, so the eigen path's sums are
 *   fit:   sum_i lambda_i^2 / (lambda_i + rho)^2 = ||I - rho H||_F^2   (rows: per-input parts)
 *   probe: sum_i ||K_X q_i||^2 / (lambda_i + rho)^2 = ||K_X H||_F^2
 *   effective rank: sum_i lambda_i / (lambda_i + rho) = N - rho Tr H,
 * from a tiled Cholesky of G + rho I and solves against TPV_CHOL_TILE columns of the identity
 * and of K_X^T at a time: no eigenvalues, N^2 + one panel of memory, about 5/3 N^3 + 2 M N^2
 * flops against the eigendecomposition's ~9 N^3, and a progress report every tile. */

/* Progress of one step of the blocked path, mapped into [lo, hi] of the model's slice. */
struct blk_poll {
    const struct tpv_progress *pg;
    double lo, hi;
};

static int blk_poll_fn(void *ctx, double f)
{
    const struct blk_poll *b = ctx;
    if (!b->pg || !b->pg->fn)
        return 0;
    return b->pg->fn(b->pg->ctx, b->lo + (b->hi - b->lo) * f);
}

/* Solves H X = columns [c0, c0 + r) of the identity (probe == NULL) or of K_X^T (rows [c0, c0 +
 * r) of KX), then adds each column's squared norm (of I - rho H, or of H K_X^T) to the part of
 * its input (column / K) in ci and to *sum; *trH += the diagonal of H for the identity. */
static int blk_panel(uint64_t N, uint64_t K, const double *L, const double *KX, double rho,
                     uint64_t c0, uint64_t r, double *X, double *ci, double *sum, double *trH,
                     struct blk_poll *bp, struct tpv_err *err)
{
    memset(X, 0, (size_t)(N * r) * sizeof *X);
    for (uint64_t j = 0; j < r; j++) {
        if (KX)
            for (uint64_t i = 0; i < N; i++)
                X[i * r + j] = KX[(c0 + j) * N + i];
        else
            X[(c0 + j) * r + j] = 1.0;
    }
    int rc = tpv_chol_solve_tiled(N, L, N, r, X, r, KX ? 0 : c0, blk_poll_fn, bp, err);
    if (rc != TPV_OK)
        return rc;
    for (uint64_t j = 0; j < r; j++) {
        uint64_t c = c0 + j;
        double t = 0;
        for (uint64_t i = 0; i < N; i++) {
            double v = KX ? X[i * r + j] : (i == c ? 1.0 : 0.0) - rho * X[i * r + j];
            t += v * v;
        }
        if (!KX)
            *trH += X[c * r + j];
        ci[c / K] += t;
        *sum += t;
    }
    return TPV_OK;
}

static int score_label_blocked(struct job *jb, size_t mi, struct tpv_score *sc,
                               const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct tpv_noise *nm = &jb->in->models[mi];
    const struct tpv_jsrc *f = jb->in->fit;
    uint64_t N = f->n * f->K, K = f->K, M = jb->nsplit > 1 ? jb->in->probe->n * K : 0;
    double rho = nm->ridge > 0 ? nm->ridge : nm->ridge_rel * jb->trG / (double)N;
    double sigma = nm->sigma_rel > 0 ? nm->sigma_rel * jb->out_scale : nm->sigma;
    double s2 = sigma * sigma, t0 = now_seconds();
    if (!(rho > 0))
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "blocked label path without a ridge");
    /* The last blocked model factors G itself; the others a copy. */
    double *L = jb->G;
    if (--jb->blocked_left > 0) {
        if (!jb->Gw)
            jb->Gw = calloc((size_t)(N * N), sizeof *jb->Gw); /* untouched pages, as G */
        if (!jb->Gw)
            return oom(err);
        int rc = copy_checked(jb->Gw, jb->G, N * N, &pg[0], 0, err);
        if (rc != TPV_OK)
            return rc;
        L = jb->Gw;
    }
    for (uint64_t i = 0; i < N; i++)
        L[i * N + i] += rho;
    uint64_t R = N < TPV_CHOL_TILE ? N : TPV_CHOL_TILE;
    double *X = malloc((size_t)(N * (R ? R : 1)) * sizeof *X);
    double *ci[2] = { calloc((size_t)(f->n ? f->n : 1), sizeof(double)),
                      M ? calloc((size_t)jb->in->probe->n, sizeof(double)) : NULL };
    int rc = X && ci[0] && (!M || ci[1]) ? TPV_OK : oom(err);
    /* progress: the factorisation is about a fifth of the fit split's work */
    struct blk_poll bp = { &pg[0], 0, 0.2 };
    if (rc == TPV_OK)
        rc = tpv_chol_tiled(N, L, N, blk_poll_fn, &bp, err);
    double fitsum = 0, probesum = 0, trH = 0;
    for (uint64_t c0 = 0; rc == TPV_OK && c0 < N; c0 += R) {
        uint64_t r = N - c0 < R ? N - c0 : R;
        bp = (struct blk_poll){ &pg[0], 0.2 + 0.8 * (double)c0 / (double)N,
                                0.2 + 0.8 * (double)(c0 + r) / (double)N };
        rc = blk_panel(N, K, L, NULL, rho, c0, r, X, ci[0], &fitsum, &trH, &bp, err);
    }
    for (uint64_t r0 = 0; rc == TPV_OK && r0 < M; r0 += R) {
        uint64_t r = M - r0 < R ? M - r0 : R;
        bp = (struct blk_poll){ &pg[1], (double)r0 / (double)M, (double)(r0 + r) / (double)M };
        rc = blk_panel(N, K, L, jb->KX, rho, r0, r, X, ci[1], &probesum, &trH, &bp, err);
    }
    free(X);
    if (L == jb->G) { /* G is spent: nothing reads it after the last blocked model */
        free(jb->G);
        jb->G = NULL;
    }
    for (int s = 0; rc == TPV_OK && s < jb->nsplit; s++) {
        uint64_t n = jb->src[s]->n;
        for (uint64_t x = 0; x < n; x++)
            ci[s][x] *= s2;
        tpv_score_set_contributions(&sc[s], ci[s], (size_t)n);
        ci[s] = NULL;
        sc[s].value = s2 * (s == 0 ? fitsum : probesum) / (double)n;
        sc[s].wall_seconds = now_seconds() - t0 + jb->t_gram;
        json_object_set_new(sc[s].details, "rank", json_integer((json_int_t)N));
        set_real(sc[s].details, "effective_rank", (double)N - rho * trH);
        set_real(sc[s].details, "rho", rho);
        set_real(sc[s].details, "sigma", sigma);
        json_object_set_new(sc[s].details, "solver", json_string("cholesky"));
        if (nm->sigma_rel > 0)
            set_real(sc[s].details, "mean_abs_output", jb->out_scale);
        set_real(sc[s].details, "shared_seconds", jb->t_gram);
    }
    free(ci[0]);
    free(ci[1]);
    return rc;
}

static int score_sgdc(const struct job *jb, size_t mi, struct tpv_score *sc, struct tpv_err *err)
{
    const struct tpv_noise *nm = &jb->in->models[mi];
    double a = nm->lr / (2.0 * nm->batch_size);
    double n = (double)jb->in->fit->n;
    double with_self = a * jb->sgdc_F / (n * n);
    uint64_t nf = jb->in->fit->n;
    double *cf = malloc((size_t)nf * sizeof *cf);
    if (!cf)
        return oom(err);
    for (uint64_t x = 0; x < nf; x++)
        cf[x] = nf > 1 ? a * (jb->g_rows[x] - jb->g_self[x]) / (n - 1) : a * jb->g_rows[x] / n;
    tpv_score_set_contributions(&sc[0], cf, (size_t)nf);
    if (jb->nsplit > 1) {
        uint64_t np = jb->in->probe->n;
        double *cp = malloc((size_t)(np ? np : 1) * sizeof *cp);
        if (!cp)
            return oom(err);
        for (uint64_t x = 0; x < np; x++)
            cp[x] = a * jb->kx_rows[x] / n;
        tpv_score_set_contributions(&sc[1], cp, (size_t)np);
    }
    if (jb->in->fit->n > 1) {
        sc[0].value = a * (jb->sgdc_F - jb->sgdc_S) / (n * (n - 1));
    } else {
        sc[0].value = with_self;
        json_object_set_new(sc[0].details, "note",
                            json_string("n = 1: leave-self-out undefined, value includes self"));
    }
    set_real(sc[0].details, "with_self", with_self);
    sc[0].wall_seconds = jb->t_gram;
    if (jb->nsplit > 1) {
        sc[1].value = a * jb->kx_F / ((double)jb->in->probe->n * n);
        sc[1].wall_seconds = jb->t_gram;
    }
    return TPV_OK;
}

/* Solver and sampling details of a matrix-free score. */
static void mf_details(json_t *d, const struct tpv_noise *nm, const struct tpv_mf_result *r,
                       const char *solver)
{
    json_object_set_new(d, "probes", json_string("outputs"));
    json_object_set_new(d, "converged", json_boolean(r->converged));
    set_real(d, "target_rel_error", nm->target_rel_error);
    json_object_set_new(d, "max_samples", json_integer((json_int_t)nm->max_samples));
    json_object_set_new(d, "gram_products", json_integer((json_int_t)r->gram_products));
    if (!solver)
        return;
    json_object_set_new(d, "solver", json_string(solver));
    set_real(d, "solver_tol", TPV_KRYLOV_TOL);
    set_real(d, "solver_residual", r->residual_max);
    json_object_set_new(d, "solver_iterations", json_integer((json_int_t)r->iterations_max));
    json_object_set_new(d, "solver_iterations_total",
                        json_integer((json_int_t)r->iterations_total));
    json_object_set_new(d, "solver_converged", json_boolean(r->solver_converged));
    json_object_set_new(d, "jacobian_cached", json_boolean(r->jacobian_cached));
    if (nm->kind == TPV_NOISE_LABEL && r->precond_rank) {
        json_object_set_new(d, "preconditioner", json_string("nystrom"));
        json_object_set_new(d, "preconditioner_rank", json_integer((json_int_t)r->precond_rank));
        set_real(d, "preconditioner_lambda_min", r->precond_lambda_min);
    }
}

/* Tr G = ||J_fit||_F^2 by one exact sqdiag pass: when the job's traces were estimated (over the
 * flop budget), ridge_rel must not inherit their error as a bias; one pass is cheap beside the
 * Krylov solves. */
static int fit_trace_exact(const struct tpv_jsrc *f, double *tr, struct tpv_err *err)
{
    double *d = calloc((size_t)(f->p ? f->p : 1), sizeof *d);
    if (!d)
        return oom(err);
    int rc = f->ops->sqdiag(f, d, NULL, err);
    double t = 0;
    for (uint64_t j = 0; rc == TPV_OK && j < f->p; j++)
        t += d[j];
    free(d);
    *tr = t;
    return rc;
}

/* Matrix-free label TPV (krylov.h): ridge_rel's rho from Tr G = ||J_fit||_F^2, the sqdiag
 * trace already computed (estimated when the diagonals were over the flop budget). */
static int score_label_mf(const struct job *jb, size_t mi, struct tpv_score *sc,
                          const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct tpv_noise *nm = &jb->in->models[mi];
    const struct tpv_jsrc *f = jb->in->fit;
    double N = (double)(f->n * f->K), trG = jb->trace[0];
    if (nm->ridge_rel > 0 && !jb->have_diag) {
        int rc = fit_trace_exact(f, &trG, err);
        if (rc != TPV_OK)
            return rc;
    }
    double rho = nm->ridge > 0 ? nm->ridge : nm->ridge_rel > 0 ? nm->ridge_rel * trG / N : 0;
    double sigma = nm->sigma_rel > 0 ? nm->sigma_rel * jb->out_scale : nm->sigma, s2 = sigma * sigma;
    /* J_fit copied once for both splits where every split's run would copy it */
    double *jf = NULL;
    bool share = true;
    for (int s = 0; s < jb->nsplit; s++) {
        struct tpv_mf_opts o = mf_opts(nm, s, rho, jb->mf_budget);
        share = share && tpv_mf_copies_fit(f, s ? jb->src[s] : NULL, &o);
    }
    if (share && jb->nsplit > 1) {
        struct tpv_progress sub = pg[0];
        int rc = tpv_mf_copy_fit(f, &jf, &sub, err);
        if (rc != TPV_OK)
            return rc;
    }
    for (int s = 0; s < jb->nsplit; s++) {
        struct tpv_mf_opts o = mf_opts(nm, s, rho, jb->mf_budget);
        o.jacobian_fit = jf;
        struct tpv_mf_result r;
        double t0 = now_seconds();
        struct tpv_progress sub = pg[s];
        int rc = tpv_label_mf(f, s ? jb->src[s] : NULL, &o, &r, &sub, err);
        if (rc != TPV_OK) {
            free(jf);
            return rc;
        }
        double nX = (double)jb->src[s]->n;
        sc[s].value = s2 * r.value / nX;
        sc[s].stderr_value = s2 * r.stderr_value / nX;
        sc[s].samples = r.samples;
        sc[s].wall_seconds = now_seconds() - t0;
        mf_details(sc[s].details, nm, &r, rho > 0 ? "cg" : "lanczos");
        set_real(sc[s].details, "rho", rho);
        set_real(sc[s].details, "sigma", sigma);
        if (rho <= 0) {
            set_real(sc[s].details, "lambda_max", r.lambda_max);
            set_real(sc[s].details, "rcond", nm->rcond);
        }
        if (nm->sigma_rel > 0)
            set_real(sc[s].details, "mean_abs_output", jb->out_scale);
    }
    free(jf);
    return TPV_OK;
}

/* Matrix-free sgd_curvature (krylov.h). */
static int score_sgdc_mf(const struct job *jb, size_t mi, struct tpv_score *sc,
                         const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct tpv_noise *nm = &jb->in->models[mi];
    const struct tpv_jsrc *f = jb->in->fit;
    double a = nm->lr / (2.0 * nm->batch_size), n = (double)f->n;
    for (int s = 0; s < jb->nsplit; s++) {
        struct tpv_mf_opts o = mf_opts(nm, s, 1, jb->mf_budget);
        struct tpv_mf_result r;
        double t0 = now_seconds();
        struct tpv_progress sub = pg[s];
        int rc = tpv_sgdc_mf(f, s ? jb->src[s] : NULL, &o, &r, &sub, err);
        if (rc != TPV_OK)
            return rc;
        double den = s ? (double)jb->src[s]->n * n : (f->n > 1 ? n * (n - 1) : 1);
        sc[s].value = a * r.value / den;
        sc[s].stderr_value = a * r.stderr_value / den;
        if (s == 0 && f->n <= 1) {
            sc[s].value = a * r.with_self / (n * n);
            sc[s].stderr_value = a * r.with_self_stderr / (n * n);
            json_object_set_new(sc[s].details, "note",
                                json_string("n = 1: leave-self-out undefined, value includes self"));
        }
        if (s == 0) {
            set_real(sc[s].details, "with_self", a * r.with_self / (n * n));
            set_real(sc[s].details, "with_self_stderr", a * r.with_self_stderr / (n * n));
        }
        sc[s].samples = r.samples;
        sc[s].wall_seconds = now_seconds() - t0;
        mf_details(sc[s].details, nm, &r, NULL);
    }
    return TPV_OK;
}

/* ---- shared phases -------------------------------------------------------------------------- */

/* The output scale of sigma_rel: mean |f_k(x)| over the fit set's n K outputs (the reference
 * code draws its logit noise relative to it), from one forward pass. */
static int phase_output_scale(struct job *jb, const struct tpv_progress *pg, struct tpv_err *err)
{
    const struct tpv_jsrc *f = jb->in->fit;
    uint64_t N = f->n * f->K;
    double *y = calloc(N ? (size_t)N : 1, sizeof *y);
    if (!y)
        return oom(err);
    int rc = f->ops->outputs(f, y, pg, err);
    double sum = 0;
    for (uint64_t i = 0; rc == TPV_OK && i < N; i++)
        sum += fabs(y[i]);
    free(y);
    if (rc == TPV_OK && !(isfinite(sum) && sum > 0))
        rc = tpv_err_set(err, TPV_ENUMERIC, "noise_models",
                         "sigma_rel: the model's mean |output| over the fit set is %g, so label "
                         "noise relative to it is undefined (give sigma)", N ? sum / (double)N : 0);
    if (rc == TPV_OK)
        jb->out_scale = sum / (double)N;
    return rc;
}

/* Rough wall time of a dense symmetric eigendecomposition of order N (about 9 N^3 flops at
 * 2 Gflop/s): only the pace of the progress bar during LAPACK depends on it. */
static double eig_seconds(uint64_t N)
{
    double n = (double)N;
    return 9 * n * n * n / 2e9 / tpv_linalg_threads();
}

/* G, K_X and their sums; with `label` the eigendecomposition; with `blocked` label models on
 * the blocked path, G and K_X stay in the job for them (jb->G, jb->KX), and the
 * eigendecomposition works on a copy. */
static int phase_gram(struct job *jb, bool label, uint64_t blocked, struct prog *pr,
                      double c_gram, double c_kx, double c_eig, struct tpv_err *err)
{
    const struct tpv_jsrc *f = jb->in->fit, *pb = jb->in->probe;
    uint64_t N, M = 0, K = f->K, gbytes, kbytes = 0;
    double t0 = now_seconds();
    /* The memory plan refused sizes that overflow; checked again where the buffers are made. */
    if (__builtin_mul_overflow(f->n, f->K, &N) ||
        (pb && __builtin_mul_overflow(pb->n, pb->K, &M)) ||
        __builtin_mul_overflow(N, N, &gbytes) || __builtin_mul_overflow(gbytes, 8, &gbytes) ||
        __builtin_mul_overflow(M, N, &kbytes) || __builtin_mul_overflow(kbytes, 8, &kbytes) ||
        gbytes > SIZE_MAX || kbytes > SIZE_MAX)
        return tpv_err_set(err, TPV_ENOSPACE, NULL,
                           "the Gram matrices of this job do not fit in 64-bit sizes");
    /* calloc, not malloc: fresh pages stay untouched until the Gram writes them in calls that
     * report progress (malloc fills them first when MALLOC_PERTURB_ is set, seconds at nK =
     * 6000 before any cancel point) */
    double *G = calloc(gbytes ? (size_t)gbytes : 1, 1);
    double *KX = M ? calloc((size_t)kbytes, 1) : NULL;
    if (!G || (M && !KX)) {
        free(G);
        free(KX);
        return oom(err);
    }
    struct slice sl;
    struct tpv_progress sub = slice_make(&sl, pr, c_gram);
    int rc = f->ops->gram(f, f, G, &sub, err);
    if (rc == TPV_OK && M) {
        sub = slice_make(&sl, pr, c_kx);
        rc = pb->ops->gram(pb, f, KX, &sub, err);
    } else {
        pr->done += c_kx;
    }
    if (rc == TPV_OK) {
        jb->g_rows = calloc((size_t)(f->n ? f->n : 1), sizeof *jb->g_rows);
        jb->g_self = calloc((size_t)(f->n ? f->n : 1), sizeof *jb->g_self);
        jb->kx_rows = M ? calloc((size_t)pb->n, sizeof *jb->kx_rows) : NULL;
        if (!jb->g_rows || !jb->g_self || (M && !jb->kx_rows))
            rc = oom(err);
    }
    if (rc == TPV_OK) {
        double F = 0, S = 0, tr = 0, kf = 0;
        for (uint64_t i = 0; i < N; i++) {
            double rf = 0, rs = 0;
            tr += G[i * N + i];
            for (uint64_t j = 0; j < N; j++) {
                double g2 = G[i * N + j] * G[i * N + j];
                rf += g2;
                if (i / K == j / K)
                    rs += g2;
            }
            F += rf;
            S += rs;
            jb->g_rows[i / K] += rf;
            jb->g_self[i / K] += rs;
        }
        for (uint64_t i = 0; i < M; i++) {
            double rk = 0;
            for (uint64_t j = 0; j < N; j++)
                rk += KX[i * N + j] * KX[i * N + j];
            kf += rk;
            jb->kx_rows[i / K] += rk;
        }
        jb->sgdc_F = F;
        jb->sgdc_S = S;
        jb->trG = tr;
        jb->kx_F = kf;
        jb->have_gram = true;
    }
    if (rc == TPV_OK && label) {
        if (tpv_progress_report(&sub, 0, 1, 1, 1) != TPV_OK)
            rc = tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
        jb->lambda = malloc((size_t)(N ? N : 1) * sizeof *jb->lambda);
        jb->proj = M ? calloc((size_t)N, sizeof *jb->proj) : NULL;
        jb->q_fit = calloc((size_t)(f->n ? f->n : 1) * (size_t)(N ? N : 1), sizeof *jb->q_fit);
        jb->t_probe = M ? calloc((size_t)pb->n * (size_t)N, sizeof *jb->t_probe) : NULL;
        if (rc == TPV_OK && (!jb->lambda || (M && !jb->proj) || !jb->q_fit ||
                             (M && !jb->t_probe)))
            rc = oom(err);
        if (rc == TPV_OK && blocked) { /* the blocked models read G after this */
            jb->G = G;
            G = calloc((size_t)gbytes ? (size_t)gbytes : 1, 1);
            rc = G ? copy_checked(G, jb->G, N * N, &sub, 1, err) : oom(err);
        }
        /* G now holds Q (eigenvectors as columns).  LAPACK cannot be interrupted, so it runs on
         * a helper thread while this one reports elapsed time against the expected time and
         * returns on a cancel (the helper then owns and frees G and lambda). */
        struct slice esl;
        struct tpv_progress esub = slice_make(&esl, pr, c_eig / 2);
        if (rc == TPV_OK)
            rc = tpv_syevd_cancellable(N, &G, &jb->lambda, eig_seconds(N), esub.fn, esub.ctx,
                                       err);
        /* Per-input rows of Q for the label contributions (none without their memory); a cancel
         * point every 256 rows (the first touch of q_fit takes seconds at nK = 6000). */
        for (uint64_t r = 0; rc == TPV_OK && r < N; r++) {
            for (uint64_t i = 0; i < N; i++)
                jb->q_fit[(r / K) * N + i] += G[r * N + i] * G[r * N + i];
            if (r % 256 == 255 && tpv_progress_report(&esub, 0, 1, 1, 1) != TPV_OK)
                rc = tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
        }
        sub = slice_make(&sl, pr, c_eig / 2);
        uint64_t R = M ? label_chunk_rows(M, N) : 0;
        double *T = M && rc == TPV_OK ? malloc((size_t)(R * N) * sizeof *T) : NULL;
        if (rc == TPV_OK && M && !T)
            rc = oom(err);
        for (uint64_t r0 = 0; rc == TPV_OK && r0 < M; r0 += R) {
            uint64_t nr = M - r0 < R ? M - r0 : R;
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)nr, (blasint)N,
                        (blasint)N, 1.0, KX + r0 * N, (blasint)N, G, (blasint)N, 0.0, T,
                        (blasint)N);
            for (uint64_t r = 0; r < nr; r++) {
                double *tp = jb->t_probe ? jb->t_probe + ((r0 + r) / K) * N : NULL;
                for (uint64_t i = 0; i < N; i++) {
                    double t2 = T[r * N + i] * T[r * N + i];
                    jb->proj[i] += t2;
                    if (tp)
                        tp[i] += t2;
                }
            }
            if (tpv_progress_report(&sub, 0, 1, r0 + nr, M) != TPV_OK)
                rc = tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
        }
        free(T);
        jb->have_eig = rc == TPV_OK;
    } else {
        pr->done += c_eig;
    }
    if (blocked && rc == TPV_OK && !jb->G) {
        jb->G = G;
        G = NULL;
    }
    if (blocked && rc == TPV_OK) {
        jb->KX = KX;
        KX = NULL;
    }
    free(G);
    free(KX);
    jb->t_gram = now_seconds() - t0;
    return rc;
}

/* The coefficients of every exact diagonal-family model, before the diagonal pass, and the
 * weight vectors of the per-sample traces that pass forms: one shared column for the models
 * without coefficients (isotropic, sgd, global quantization), one per model with them.
 * *cols (malloc'd) gets jb->ncols pointers into jb->coef. */
static int diag_coefs_prepare(struct job *jb, const struct plan *plans, struct tpv_score *sc,
                              const double ***cols, struct tpv_err *err)
{
    const struct tpv_est_inputs *in = jb->in;
    *cols = NULL;
    jb->coef = calloc(in->nmodels ? in->nmodels : 1, sizeof *jb->coef);
    const double **cv = malloc((in->nmodels + 1) * sizeof *cv);
    if (!jb->coef || !cv) {
        free(cv);
        return oom(err);
    }
    bool ones = false;
    size_t ones_col = 0;
    for (size_t i = 0; i < in->nmodels; i++) {
        struct diag_coef *dc = &jb->coef[i];
        if (!diag_family(in->models[i].kind) || plans[i].est != TPV_EST_EXACT)
            continue;
        int rc = diag_coeffs(jb, i, &dc->scale, &dc->c, &dc->owned,
                             sc[i * (size_t)jb->nsplit].details, err);
        if (rc != TPV_OK) {
            free(cv);
            return rc;
        }
        dc->have = true;
        if (!dc->c && ones) {
            dc->col = ones_col;
            continue;
        }
        if (!dc->c) {
            ones = true;
            ones_col = jb->ncols;
        }
        dc->col = jb->ncols;
        cv[jb->ncols++] = dc->c;
    }
    *cols = cv;
    return TPV_OK;
}

/* ---- the job -------------------------------------------------------------------------------- */

int tpv_estimate_scores(const struct tpv_est_inputs *in, const struct tpv_run_options *opts,
                        struct tpv_score **scores, size_t *nscores, json_t **stability,
                        const struct tpv_progress *pg, struct tpv_err *err)
{
    *scores = NULL;
    *nscores = 0;
    *stability = NULL;
    uint64_t need;
    int rc = tpv_estimate_memory(in, opts, &need, err);
    if (rc != TPV_OK)
        return rc;
    struct job jb = { .in = in, .src = { in->fit, in->probe }, .nsplit = in->probe ? 2 : 1,
                      .mf_budget = mf_budget(in, opts) };
    size_t ns = in->nmodels * (size_t)jb.nsplit;
    struct tpv_score *sc = calloc(ns ? ns : 1, sizeof *sc);
    struct plan *plans = calloc(in->nmodels ? in->nmodels : 1, sizeof *plans);
    if (!sc || !plans) {
        free(sc);
        free(plans);
        return oom(err);
    }
    uint64_t p = in->fit->p, N = in->fit->n * in->fit->K, M = in->probe ? in->probe->n * in->probe->K : 0;
    bool label = false, sgdc = false;
    /* Costs in "element passes" (one read of one Jacobian entry ~ 10 flops of BLAS-3). */
    struct prog pr = { pg, 0, 0 };
    double c_sq[2] = { (double)N * (double)p, (double)M * (double)p };
    double c_gram = (double)N * (double)N * (double)p / 10, c_kx = (double)M * (double)N * (double)p / 5;
    double c_eig = (double)N * (double)N * (double)N;
    double *c_model = calloc(in->nmodels ? in->nmodels : 1, sizeof *c_model);
    if (!c_model)
        rc = oom(err);
    for (size_t i = 0; rc == TPV_OK && i < in->nmodels; i++) {
        const struct tpv_noise *nm = &in->models[i];
        plans[i] = plan_model(in, opts, nm);
        bool gram_model = nm->kind == TPV_NOISE_LABEL || nm->kind == TPV_NOISE_SGD_CURVATURE;
        bool blk = nm->kind == TPV_NOISE_LABEL && plans[i].path == GP_BLOCKED;
        label |= nm->kind == TPV_NOISE_LABEL && !plans[i].mf && !blk;
        sgdc |= nm->kind == TPV_NOISE_SGD_CURVATURE && !plans[i].mf;
        jb.blocked_left += blk;
        /* matrix-free: a few tens of products per sample, each about one K-th of an exact
         * diagonal pass (a rough share; progress inside the model reports per product) */
        double mf_passes = (double)(nm->max_samples < 64 ? nm->max_samples : 64) *
                           (nm->kind == TPV_NOISE_LABEL ? 20.0 : 2.0) /
                           (double)(in->fit->K ? in->fit->K : 1);
        /* blocked: 5/3 N^3 + 2 M N^2 flops, in the units of c_eig (N^3 for ~9 N^3 flops) */
        double blk_passes = ((double)N * (double)N * (double)N * 5 / 3 +
                             2 * (double)M * (double)N * (double)N) / 9;
        double passes = blk ? 0 : plans[i].mf ? mf_passes
                        : nm->kind == TPV_NOISE_PRUNE ? 1
                        : plans[i].est == TPV_EST_HUTCHINSON ? (double)nm->max_samples
                        : plans[i].est == TPV_EST_HUTCHPP ? (double)nm->max_samples * 1.7
                                                           : 0;
        passes = plans[i].est == TPV_EST_EMPIRICAL ? 0 : passes;
        c_model[i] = blk ? blk_passes
                         : (passes + tpv_empirical_passes(nm, in->fit->K)) * (c_sq[0] + c_sq[1]);
        for (int s = 0; s < jb.nsplit; s++) {
            struct tpv_score *x = &sc[i * (size_t)jb.nsplit + (size_t)s];
            snprintf(x->noise, sizeof x->noise, "%s", nm->name);
            x->kind = nm->kind;
            x->split = (enum tpv_split)s;
            x->estimator = tpv_estimator_name(plans[i].est);
            x->seed = nm->seed;
            x->stderr_inputs = NAN;
            x->details = json_object();
            if (!x->details) {
                rc = oom(err);
                break;
            }
            json_object_set_new(x->details, "estimator_requested",
                                json_string(tpv_estimator_name(nm->estimator)));
            json_object_set_new(x->details, "estimator_reason",
                                json_string(gram_model ? plans[i].why : plans[i].reason));
            if (gram_model) {
                json_object_set_new(x->details, "path",
                                    json_string(gram_path_name(plans[i].path)));
                json_object_set_new(x->details, "reason", json_string(plans[i].why));
            }
            if (nm->estimator == TPV_EST_AUTO && !diag_family(nm->kind) &&
                nm->kind != TPV_NOISE_PRUNE) {
                /* the numbers `auto` compared: each path's bytes with the job's base */
                bool lab = nm->kind == TPV_NOISE_LABEL;
                struct gram_fit ex = gram_fit_check(in, opts, nm, lab, 0);
                json_object_set_new(x->details, "exact_bytes", json_integer((json_int_t)(
                                                    ex.bytes > INT64_MAX ? INT64_MAX : ex.bytes)));
                set_real(x->details, "exact_flops", ex.flops);
                if (lab && (nm->ridge > 0 || nm->ridge_rel > 0)) {
                    struct gram_fit bl = gram_fit_check(in, opts, nm, false, 1);
                    json_object_set_new(x->details, "blocked_bytes",
                                        json_integer((json_int_t)(bl.bytes > INT64_MAX
                                                                      ? INT64_MAX : bl.bytes)));
                    set_real(x->details, "blocked_flops", bl.flops);
                }
                if (opts && opts->flop_budget > 0)
                    set_real(x->details, "flop_budget", opts->flop_budget);
                if (opts && opts->max_memory)
                    json_object_set_new(x->details, "max_memory",
                                        json_integer((json_int_t)opts->max_memory));
            }
            if (nm->estimator == TPV_EST_AUTO && diag_family(nm->kind) && opts &&
                opts->flop_budget > 0) {
                double exact, probe;
                diag_costs(in, &exact, &probe);
                set_real(x->details, "exact_flops", exact);
                set_real(x->details, "flop_budget", opts->flop_budget);
            }
        }
    }
    /* A forward pass over the fit set costs about one K-th of its exact diagonal. */
    double c_fwd = 0;
    for (size_t i = 0; i < in->nmodels; i++)
        if (tpv_noise_needs_outputs(&in->models[i]))
            c_fwd = c_sq[0] / (double)(in->fit->K ? in->fit->K : 1);
    pr.total = c_sq[0] + c_sq[1] + c_fwd + ((label || sgdc || jb.blocked_left) ? c_gram + c_kx : 0) +
               (label ? c_eig : 0);
    for (size_t i = 0; c_model && i < in->nmodels; i++) /* NULL after a failed calloc */
        pr.total += c_model[i];

    /* Phase 1: sqdiag per split (the stability report needs both traces), unless no model needs
     * exact diagonals and they exceed the flop budget: then the traces are estimated. */
    jb.have_diag = !diag_over_budget(in, opts);
    for (size_t i = 0; !jb.have_diag && i < in->nmodels; i++)
        jb.have_diag = diag_family(in->models[i].kind) && plans[i].est == TPV_EST_EXACT;

    const double **cols = NULL;
    if (rc == TPV_OK && jb.have_diag)
        rc = diag_coefs_prepare(&jb, plans, sc, &cols, err);
    for (int s = 0; rc == TPV_OK && s < jb.nsplit; s++) {
        struct slice sl;
        struct tpv_progress sub = slice_make(&sl, &pr, c_sq[s]);
        double t0 = now_seconds();
        const struct tpv_jsrc *src = jb.src[s];
        if (jb.have_diag) {
            jb.diag[s] = calloc((size_t)p, sizeof(double));
            if (jb.ncols && src->ops->sqdiag_samples)
                jb.per_sample[s] = calloc((size_t)(jb.ncols * src->n), sizeof(double));
            if (!jb.diag[s] || (jb.ncols && src->ops->sqdiag_samples && !jb.per_sample[s]))
                rc = oom(err);
            else if (jb.per_sample[s])
                rc = src->ops->sqdiag_samples(src, jb.diag[s], jb.ncols, cols, jb.per_sample[s],
                                              &sub, err);
            else
                rc = src->ops->sqdiag(src, jb.diag[s], &sub, err);
            double tr = 0;
            for (uint64_t j = 0; rc == TPV_OK && j < p; j++)
                tr += jb.diag[s][j];
            jb.trace[s] = tr;
        } else {
            struct tpv_trace_opts o = { 0, (uint64_t)s, 0.01, 200, 0 };
            struct tpv_trace_result r;
            rc = tpv_trace_hutchinson_outputs(jb.src[s], NULL, &o, &r, &sub, err);
            jb.trace[s] = r.value;
            jb.trace_stderr[s] = r.stderr_value;
            jb.trace_samples[s] = r.samples;
        }
        jb.t_sqdiag[s] = now_seconds() - t0;
    }
    /* Phase 1b: the fit outputs' scale, once, for label noise given by sigma_rel (a forward
     * pass: costed as one read of the fit split's diagonal work). */
    if (rc == TPV_OK && c_fwd > 0) {
        struct slice sl;
        struct tpv_progress sub = slice_make(&sl, &pr, c_fwd);
        rc = phase_output_scale(&jb, &sub, err);
    }
    /* Phase 2: Gram matrices once for label and sgd_curvature. */
    if (rc == TPV_OK && (label || sgdc || jb.blocked_left))
        rc = phase_gram(&jb, label, jb.blocked_left, &pr, c_gram, c_kx, label ? c_eig : 0, err);
    /* Phase 3: every model. */
    for (size_t i = 0; rc == TPV_OK && i < in->nmodels; i++) {
        const struct tpv_noise *nm = &in->models[i];
        struct tpv_score *x = &sc[i * (size_t)jb.nsplit];
        struct slice sl[2];
        struct tpv_progress sub[2];
        double share = c_sq[0] + c_sq[1] > 0 ? c_sq[0] / (c_sq[0] + c_sq[1]) : 1;
        double c_emp = tpv_empirical_passes(nm, in->fit->K) * (c_sq[0] + c_sq[1]);
        sub[0] = slice_make(&sl[0], &pr, (c_model[i] - c_emp) * share);
        sub[1] = slice_make(&sl[1], &pr, (c_model[i] - c_emp) * (1 - share));
        if (plans[i].est == TPV_EST_EMPIRICAL)
            rc = TPV_OK; /* the empirical passes below are the score */
        else if (diag_family(nm->kind))
            rc = score_diag_family(&jb, i, &plans[i], x, sub, err);
        else if (nm->kind == TPV_NOISE_PRUNE)
            rc = score_prune(&jb, i, x, sub, err);
        else if (nm->kind == TPV_NOISE_LABEL && plans[i].mf)
            rc = score_label_mf(&jb, i, x, sub, err);
        else if (nm->kind == TPV_NOISE_LABEL && plans[i].path == GP_BLOCKED)
            rc = score_label_blocked(&jb, i, x, sub, err);
        else if (nm->kind == TPV_NOISE_LABEL)
            rc = score_label(&jb, i, x, err);
        else if (plans[i].mf)
            rc = score_sgdc_mf(&jb, i, x, sub, err);
        else
            rc = score_sgdc(&jb, i, x, err);
        if (rc == TPV_OK && tpv_noise_needs_model(nm)) { /* the estimator or the check */
            sub[0] = slice_make(&sl[0], &pr, c_emp * share);
            sub[1] = slice_make(&sl[1], &pr, c_emp * (1 - share));
            rc = tpv_empirical_scores(in, i, x, jb.nsplit, sub, err);
        }
        if (rc == TPV_OK && pg && pg->fn && pg->fn(pg->ctx, pr.total > 0 ? pr.done / pr.total : 1))
            rc = tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
    }
    /* Overflowing models (a forward pass that reaches inf) must fail loudly, not store NaNs. */
    for (size_t i = 0; rc == TPV_OK && i < ns; i++)
        if (!isfinite(sc[i].value) || !isfinite(sc[i].stderr_value))
            rc = tpv_err_set(err, TPV_ENUMERIC, "noise_models",
                             "noise model '%s' on the %s split is not finite (%g): the model's "
                             "outputs or gradients overflow on these inputs", sc[i].noise,
                             tpv_split_name(sc[i].split), sc[i].value);
    for (int s = 0; rc == TPV_OK && s < jb.nsplit; s++)
        if (!isfinite(jb.trace[s]))
            rc = tpv_err_set(err, TPV_ENUMERIC, "inputs",
                             "the Jacobian trace on the %s split is not finite: the model's "
                             "outputs or gradients overflow on these inputs",
                             tpv_split_name((enum tpv_split)s));
    if (rc == TPV_OK) {
        json_t *st = json_object();
        if (!st) {
            rc = oom(err);
        } else {
            double hf = jb.trace[0] / (double)in->fit->n;
            set_real(st, "trace_fit", hf);
            if (in->probe) {
                double hp = jb.trace[1] / (double)in->probe->n;
                set_real(st, "trace_probe", hp);
                set_real(st, "isotropic_ratio", hf > 0 ? hp / hf : NAN);
                json_object_set_new(st, "n_probe", json_integer((json_int_t)in->probe->n));
            }
            json_object_set_new(st, "trace_estimator",
                                json_string(jb.have_diag ? "exact" : "hutchinson"));
            if (!jb.have_diag) {
                set_real(st, "trace_fit_stderr", jb.trace_stderr[0] / (double)in->fit->n);
                json_object_set_new(st, "trace_samples",
                                    json_integer((json_int_t)jb.trace_samples[0]));
                if (in->probe)
                    set_real(st, "trace_probe_stderr",
                             jb.trace_stderr[1] / (double)in->probe->n);
            }
            json_object_set_new(st, "n_fit", json_integer((json_int_t)in->fit->n));
            json_object_set_new(st, "small_n_warning", json_boolean(in->fit->n < TPV_SMALL_N));
            json_object_set_new(st, "small_n_threshold", json_integer(TPV_SMALL_N));
            json_object_set_new(st, "memory_bytes", json_integer((json_int_t)need));
            *stability = st;
        }
    }
    for (int s = 0; s < 2; s++) {
        free(jb.diag[s]);
        free(jb.per_sample[s]);
    }
    for (size_t i = 0; jb.coef && i < in->nmodels; i++)
        if (jb.coef[i].owned)
            free(jb.coef[i].c);
    free(jb.coef);
    free(cols);
    free(jb.lambda);
    free(jb.proj);
    free(jb.g_rows);
    free(jb.g_self);
    free(jb.kx_rows);
    free(jb.q_fit);
    free(jb.t_probe);
    free(jb.G);
    free(jb.KX);
    free(jb.Gw);
    free(plans);
    free(c_model);
    if (rc != TPV_OK) {
        tpv_scores_free(sc, ns);
        return rc;
    }
    *scores = sc;
    *nscores = ns;
    return TPV_OK;
}
