/* scores.h: closed-form TPV values of the integration tests' study (isotropic sigma 0.1 and
 * sgd_curvature lr 0.1, batch 8, on the fit split of a K = 1 dump) and the check of a
 * candidate's scores against them.  Shared by the crash and multi-node tests. */
#ifndef TPV_TEST_SCORES_H
#define TPV_TEST_SCORES_H

#include <stdint.h>
#include <jansson.h>

/* For an (n, p) dump J: isotropic sigma 0.1 is 0.01/n ||J||_F^2; sgd_curvature lr 0.1, batch 8
 * is the leave-self-out lr/(2 batch) / (n(n-1)) sum_{i != j} (J_i . J_j)^2 (DESIGN.md
 * section 3). */
void test_closed_forms(const double *J, uint64_t n, uint64_t p, double *iso, double *curv);

/* Fails the cmocka test unless exactly one score named `noise` is in `scores`, on split fit,
 * equal to `want` to 1e-9 relative. */
void test_check_fit_score(const json_t *scores, const char *noise, double want);

#endif
