/* onnx_check.h: checks shared by the ONNX runtime's tests (tests/unit/test_onnx_torch.c,
 * test_onnx_node.c) and the torchvision sweep (tests/tools/onnx_sweep_check.c): a file read
 * whole, the max-norm relative error of two arrays, and a graph's derivatives against central
 * differences and the dot test.  The callers decide what error is acceptable. */
#ifndef TPV_TEST_ONNX_CHECK_H
#define TPV_TEST_ONNX_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/onnx_exec.h"

/* The whole file, malloc'd and NUL-terminated (so JSON text can be parsed in place); its
 * length in *len.  NULL when it cannot be opened, read or allocated. */
void *tpv_test_read_file(const char *path, size_t *len);

/* max_i |got_i - want_i| / max_i |want_i| (the absolute maximum when want is all zero). */
double tpv_test_max_relerr(const double *got, const double *want, uint64_t n);

/* What tpv_test_onnx_derivatives measured, raw, for the caller's tolerance. */
struct tpv_test_derivs {
    double lhs, rhs, scale;    /* <VJP(u), t>, <u, JVP(t)>, sum_i |u_i JVP(t)_i| */
    double fd_emax, fd_jmax;   /* max |central difference - JVP|, max |JVP| */
    size_t params_without_adjoint; /* parameters the VJP left without an adjoint */
};

/* Derivatives of the graph's output through ex (open on m, for nx input values x) with
 * respect to the input and every parameter at once: the JVP along random tangents t against
 * central differences of step h, and <VJP(u), t> against <u, JVP(t)> for a random u.  Tangents
 * and u are uniform in [-1, 1) from `seed`; with relative_tangents a parameter's tangent is
 * scaled by |w| + 1e-3 (weights of any scale).  The parameters are restored exactly.  Returns
 * TPV_OK, or the executor's error (or TPV_ENOMEM) in err. */
int tpv_test_onnx_derivatives(struct tpv_onnx_model *m, struct tpv_onnx_exec *ex,
                              const double *x, uint64_t nx, double h, bool relative_tangents,
                              uint64_t seed, struct tpv_test_derivs *out, struct tpv_err *err);

#endif
