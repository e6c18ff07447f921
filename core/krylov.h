/* krylov.h: matrix-free label and sgd_curvature TPV (DESIGN.md section 3) over a Jacobian source,
 * never forming the nK x nK Gram G = J_fit J_fit^T.
 *
 * Every product with G is one VJP then one JVP over the fit set.  Both scores are squared
 * Frobenius norms estimated by Hutchinson over output projections r in {+-1}^rows:
 *   label, probe X:  ||K_X (G + rho)^-1||_F^2 = E ||(G + rho)^-1 J_fit J_X^T r||^2
 *   label, fit set:  ||G (G + rho)^-1||_F^2   = E ||(G + rho)^-1 G r||^2
 * with (G + rho)^-1 t by conjugate gradients when rho > 0 (preconditioned by a randomized Nystrom
 * approximation of G, Frangella, Tropp and Udell 2023, the probes of a round solved together so
 * that each step is one block product), and for the unridged form (the
 * pseudo-inverse with the rcond cut) t^T G^+2 t by Lanczos quadrature (full reorthogonalisation,
 * Ritz values below rcond * lambda_max dropped, as the exact path drops eigenvalues);
 *   sgd_curvature, probe: ||J_fit J_X^T||_F^2 = E ||J_fit J_X^T r||^2
 *   sgd_curvature, fit:   ||G||_F^2 minus its diagonal K x K blocks, unbiased from
 *                         ||G r||^2 - sum_a eps_a (G r)_a (G (eps . r))_a, eps one sign per sample.
 * Values are sums (callers scale by sigma^2 / |X| etc.).  Results depend only on the inputs,
 * seed, stream and thread count. */
#ifndef TPV_KRYLOV_H
#define TPV_KRYLOV_H

#include <stdbool.h>
#include <stdint.h>

#include "core/jacobian.h"
#include "core/tpv_error.h"

/* Default relative residual of one CG solve / relative change that ends a Lanczos run. */
#define TPV_KRYLOV_TOL 1e-8

struct tpv_mf_opts {
    uint64_t seed, stream;
    double target_rel_error; /* Hutchinson stop: stderr <= target * |mean| (0 = never) */
    uint64_t max_samples;    /* >= 1 */
    uint64_t min_samples;    /* before the stopping test (default 8 when 0) */
    double rho;              /* label: > 0 ridge (CG), 0 unridged (Lanczos with rcond) */
    double rcond;            /* label, unridged: Ritz values <= rcond * lambda_max are dropped */
    double tol;              /* Krylov tolerance (0 = TPV_KRYLOV_TOL) */
    uint64_t max_iter;       /* Krylov iterations per solve (0 = min(rows, 500)) */
    /* Working-memory budget (0 = TPV_MF_BYTES) for the Jacobian copies and the preconditioner,
     * which are left out (slower, same values within their tolerances) when over it. */
    uint64_t max_bytes;
    uint64_t block;          /* probes solved together per round (0 = TPV_MF_BLOCK) */
    uint64_t precond_rank;   /* largest Nystrom rank (0 = TPV_NYSTROM_MAX) */
    bool plain_cg;           /* no preconditioner (tests, comparisons) */
    bool no_cache;           /* never copy the Jacobians: every product runs the source's ops */
    /* Borrowed: J_fit (n K x p, row-major) from tpv_mf_copy_fit, shared by the runs over one fit
     * set (the job's two splits) where tpv_mf_copies_fit; NULL: a run copies its own. */
    const double *jacobian_fit;
};

/* Default budget of tpv_mf_opts.max_bytes. */
#define TPV_MF_BYTES (2ull << 30)
/* Default probes per round: the products of a round are one block product (GEMMs on the copied
 * Jacobians, one pass of the source's block ops, or one product per vector without them). */
#define TPV_MF_BLOCK 16
/* Default largest rank of the randomized Nystrom preconditioner of G + rho I (ridge only): the
 * sketch doubles from 64 columns until its smallest eigenvalue is below rho, this rank, N or p
 * (G = J J^T has rank at most p: a larger sketch finds nothing more). */
#define TPV_NYSTROM_MAX 768

struct tpv_mf_result {
    double value, stderr_value;
    uint64_t samples;
    bool converged;          /* target_rel_error reached before max_samples */
    /* sgd_curvature on the fit set: the with-self value ||G||_F^2 and its stderr. */
    double with_self, with_self_stderr;
    /* Krylov solver: total and largest iteration count over the solves, the largest final
     * relative residual (CG) or relative change (Lanczos), and whether every solve met tol. */
    uint64_t iterations_total, iterations_max;
    double residual_max;
    bool solver_converged;
    double lambda_max;       /* unridged label: the largest Ritz value seen (the cut's scale) */
    uint64_t gram_products;  /* products with G (each one VJP + one JVP over the fit set) */
    uint64_t precond_rank;   /* Nystrom preconditioner's rank (0: plain CG) */
    double precond_lambda_min; /* its smallest eigenvalue (what is left of G for CG) */
    bool jacobian_cached;    /* J_fit (and J_X) were copied once and products ran as GEMMs */
};

/* True when `s` has the products matrix-free estimation needs (jvp and vjp). */
bool tpv_mf_supported(const struct tpv_jsrc *s);

/* Working bytes of tpv_label_mf / tpv_sgdc_mf for these sources (saturating). */
uint64_t tpv_mf_work_bytes(const struct tpv_jsrc *fit, const struct tpv_jsrc *x,
                           const struct tpv_mf_opts *o);

/* Whether runs with these options copy J_fit (and J_X) and apply G as GEMMs: the sources have
 * block products and run a model for each (a dump is a stored matrix already), and the copies
 * fit max_bytes beside the rest of the plan. */
bool tpv_mf_copies_fit(const struct tpv_jsrc *fit, const struct tpv_jsrc *x,
                       const struct tpv_mf_opts *o);
/* *J (owned by the caller, free()) = J_fit, n K x p row-major, by fit's block products.
 * TPV_EUNIMPLEMENTED without them, TPV_ENOMEM, TPV_ECANCELED through pg. */
int tpv_mf_copy_fit(const struct tpv_jsrc *fit, double **J, const struct tpv_progress *pg,
                    struct tpv_err *err);

/* Label TPV sum on X (x == NULL: the fit set itself); see the header comment.  TPV_ECANCELED
 * through pg (checked at every product), TPV_EINVAL for bad options, TPV_EUNIMPLEMENTED when the
 * sources lack vjp/jvp. */
int tpv_label_mf(const struct tpv_jsrc *fit, const struct tpv_jsrc *x, const struct tpv_mf_opts *o,
                 struct tpv_mf_result *out, const struct tpv_progress *pg, struct tpv_err *err);

/* sgd_curvature Frobenius sum on X (x == NULL: the fit set, leave-self-out in value and with-self
 * in with_self). */
int tpv_sgdc_mf(const struct tpv_jsrc *fit, const struct tpv_jsrc *x, const struct tpv_mf_opts *o,
                struct tpv_mf_result *out, const struct tpv_progress *pg, struct tpv_err *err);

#endif
