/* scores.c: closed-form scores for the integration tests (see scores.h). */
#include "tests/support/scores.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

void test_closed_forms(const double *J, uint64_t n, uint64_t p, double *iso, double *curv)
{
    double fro = 0, off = 0;
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t j = 0; j < n; j++) {
            double g = 0;
            for (uint64_t c = 0; c < p; c++)
                g += J[i * p + c] * J[j * p + c];
            if (i == j)
                fro += g;
            else
                off += g * g;
        }
    *iso = 0.01 * fro / (double)n;
    *curv = 0.1 / (2 * 8) * off / ((double)n * (double)(n - 1));
}

void test_check_fit_score(const json_t *scores, const char *noise, double want)
{
    size_t i, seen = 0;
    json_t *s;
    json_array_foreach(scores, i, s) {
        if (strcmp(json_string_value(json_object_get(s, "noise")), noise) != 0)
            continue;
        seen++;
        assert_string_equal(json_string_value(json_object_get(s, "split")), "fit");
        double v = json_number_value(json_object_get(s, "value"));
        if (!(fabs(v - want) <= 1e-9 * fabs(want)))
            fail_msg("%s: %.17g, want %.17g", noise, v, want);
    }
    if (seen != 1)
        fail_msg("%zu scores named %s", seen, noise);
}
