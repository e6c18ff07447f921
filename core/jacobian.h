/* jacobian.h: a Jacobian source: the per-sample Jacobians J(x) (K x p) of one model over one
 * input set, seen only through the few products the noise models need (DESIGN.md section 3).
 *
 * Two implementations: a Jacobian dump (core/dump.c, BLAS over the mapped file) and a sequential
 * MLP over an input set (core/mlp_source.c, structured per-layer products that never materialise
 * J).  Noise models and estimators are written once against this interface.
 *
 * Conventions: all outputs are float64 and are *sums over samples* (not means); callers divide by
 * n.  Parameters are numbered 0..p-1 in the source's column order; `layout` says which named
 * tensor (block) each range of columns belongs to. */
#ifndef TPV_JACOBIAN_H
#define TPV_JACOBIAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tensor.h"
#include "core/tpv_error.h"

/* Progress and cancellation for long computations: `fn` gets the fraction done (0..1) and returns
 * non-zero to ask the computation to stop, which then returns TPV_ECANCELED.  fn may be NULL. */
struct tpv_progress {
    int (*fn)(void *ctx, double fraction);
    void *ctx;
};

/* Reports `done` out of `total` steps scaled into [lo, hi]; returns TPV_ECANCELED if asked. */
int tpv_progress_report(const struct tpv_progress *pg, double lo, double hi, uint64_t done,
                        uint64_t total);

/* One named parameter tensor: columns [offset, offset + count) in row-major order of `shape`. */
struct tpv_block {
    char *name;
    int rank;
    uint64_t shape[TPV_MAX_RANK];
    uint64_t offset;
    uint64_t count;
};

/* The parameter layout of a source.  nblocks == 0 means an anonymous flat dump (no names). */
struct tpv_layout {
    size_t nblocks;
    struct tpv_block *blocks;
    uint64_t p;
};

/* Deep copy / release of a layout (names are owned).  free(NULL) is a no-op. */
int tpv_layout_copy(struct tpv_layout *dst, const struct tpv_layout *src, struct tpv_err *err);
void tpv_layout_free(struct tpv_layout *layout);
/* Index of the block called `name`, or -1. */
long tpv_layout_find(const struct tpv_layout *layout, const char *name);

struct tpv_jsrc;

struct tpv_jsrc_ops {
    /* diag[j] += sum_x sum_k J_kj(x)^2 for j < p.  diag has p entries. */
    int (*sqdiag)(const struct tpv_jsrc *s, double *diag, const struct tpv_progress *pg,
                  struct tpv_err *err);
    /* out = J_A J_B^T, (n_A K) x (n_B K) row-major, rows ordered (sample, output).  a and b are
     * sources of the same model (same ops, same p); a == b is allowed and may use syrk. */
    int (*gram)(const struct tpv_jsrc *a, const struct tpv_jsrc *b, double *out,
                const struct tpv_progress *pg, struct tpv_err *err);
    /* out[x*K + k] = sum_j J_kj(x) v[j]  (one JVP per sample). */
    int (*jvp)(const struct tpv_jsrc *s, const double *v, double *out,
               const struct tpv_progress *pg, struct tpv_err *err);
    /* Output-projected squared diagonal: diag[j] += sum_x (r_x^T J(x))_j^2 with r (n x K,
     * row-major) one projection vector per sample; also total[x] = ||r_x^T J(x)||^2 if total is
     * not NULL.  With Rademacher r this is an unbiased estimate of sqdiag (Hutchinson over
     * outputs: one backward pass per sample instead of K). */
    int (*sqdiag_projected)(const struct tpv_jsrc *s, const double *r, double *diag,
                            double *total, const struct tpv_progress *pg, struct tpv_err *err);
    /* Bytes of working memory `gram`/`sqdiag` will allocate beyond their outputs, plus any copy of
     * the data the source holds (a dump copies misaligned tensors). */
    uint64_t (*scratch_bytes)(const struct tpv_jsrc *s);
    void (*free)(struct tpv_jsrc *s);
    /* Optional (NULL = unsupported): out[j] = sum_x sum_k u[x*K + k] J_kj(x) for j < p, i.e.
     * J^T u (one VJP per sample); out is overwritten.  Hutch++ needs it to apply J^T J. */
    int (*vjp)(const struct tpv_jsrc *s, const double *u, double *out,
               const struct tpv_progress *pg, struct tpv_err *err);
    /* Optional: estimated flops of one exact `sqdiag` and of one `sqdiag_projected` probe, for
     * the `auto` estimator's budget.  NULL means both cost one pass over n K p entries (a dump,
     * where the exact diagonal is always the cheaper answer). */
    void (*costs)(const struct tpv_jsrc *s, double *sqdiag_flops, double *projected_flops);
    /* Optional: the model's outputs out[x*K + k] = f_k(x) over the source's inputs (a forward
     * pass).  Label noise relative to the output scale (sigma_rel) needs it; a Jacobian dump has
     * no outputs and leaves it NULL. */
    int (*outputs)(const struct tpv_jsrc *s, double *out, const struct tpv_progress *pg,
                   struct tpv_err *err);
    /* Optional (NULL: the diagonal family has no per-input contributions on this source):
     * sqdiag (diag[j] += ...) and, in the same pass, the per-sample parts of nc weighted traces,
     * out[m * n + x] += sum_j c[m][j] sum_k J_kj(x)^2 (c[m] NULL: all ones), so that
     * sum_x out[m * n + x] = sum_j c[m][j] diag_j (DESIGN.md section 5, Confidence). */
    int (*sqdiag_samples)(const struct tpv_jsrc *s, double *diag, size_t nc,
                          const double *const *c, double *out, const struct tpv_progress *pg,
                          struct tpv_err *err);
    /* Optional (NULL: a Jacobian dump, which has no model to run): the outputs
     * out[x*K + k] = f_k(w + dw, x) of the model with its parameters moved by dw (p entries, in
     * the column order), by batched forward passes only (the nonlinear check, core/empirical.h).
     * The perturbed weights are a copy made by the call: the source's weights, which other
     * threads may be reading, are never written. */
    int (*outputs_perturbed)(const struct tpv_jsrc *s, const double *dw, double *out,
                             const struct tpv_progress *pg, struct tpv_err *err);
    /* Optional (NULL: callers loop jvp / vjp over the columns): block products for b vectors at
     * once, so that the Krylov solvers (core/krylov.h) pay one pass over the data per block
     * instead of one per vector.  jvp_block: out (n K x b, row-major) = J V with V (p x b,
     * row-major); vjp_block: out (p x b, row-major, overwritten) = J^T U with U (n K x b). */
    int (*jvp_block)(const struct tpv_jsrc *s, const double *V, uint64_t b, double *out,
                     const struct tpv_progress *pg, struct tpv_err *err);
    int (*vjp_block)(const struct tpv_jsrc *s, const double *U, uint64_t b, double *out,
                     const struct tpv_progress *pg, struct tpv_err *err);
};

/* A source: fields are read-only for users; `impl` is the implementation's state. */
struct tpv_jsrc {
    const struct tpv_jsrc_ops *ops;
    uint64_t n; /* samples */
    uint64_t K; /* outputs per sample */
    uint64_t p; /* parameters */
    struct tpv_layout layout;
    void *impl;
};

/* Releases a source through its ops; NULL is a no-op. */
void tpv_jsrc_free(struct tpv_jsrc *s);

#endif
