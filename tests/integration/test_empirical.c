/* test_empirical.c: the nonlinear check through the real tpvd (issue #12): a study whose noise
 * models ask for "check": "empirical" (a small and a large sigma on a tanh network) and for the
 * estimator empirical, a model candidate scored by a job: the first-order scores keep their
 * estimator and gain details.empirical {value, stderr, samples}, details.ratio {value, ci} and
 * details.nonlinear; the large sigma flags the candidate and its ranking item `nonlinear`, the
 * small one does not; the estimator empirical is the score itself.  Refusals: a check on a kind
 * without an empirical value is a 400 at study creation naming the field, a Jacobian dump in a
 * study with the check is a 400 naming the noise model.  SQLite and (the -pg variant)
 * PostgreSQL. */
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"
#include "tests/support/service_steps.h"
#include "tests/support/npy.h"

#define N_FIT 16

static const json_t *fit_score(const json_t *cand, const char *noise)
{
    size_t i;
    const json_t *s;
    json_array_foreach(json_object_get(cand, "scores"), i, s) {
        if (strcmp(json_string_value(json_object_get(s, "noise")), noise) == 0 &&
            strcmp(json_string_value(json_object_get(s, "split")), "fit") == 0)
            return s;
    }
    fail_msg("no fit score for %s", noise);
    return NULL;
}

static double num_at(const json_t *o, const char *a, const char *b)
{
    const json_t *v = json_object_get(o, a);
    if (b)
        v = json_object_get(v, b);
    if (!json_is_number(v))
        fail_msg("%s.%s is not a number", a, b ? b : "");
    return json_number_value(v);
}

static bool has_flag(const json_t *flags, const char *flag)
{
    size_t i;
    const json_t *f;
    json_array_foreach(flags, i, f)
        if (strcmp(json_string_value(f), flag) == 0)
            return true;
    return false;
}

/* Checks the details of a first-order score with the check. */
static void check_details(const json_t *s, bool want_nonlinear)
{
    const json_t *d = json_object_get(s, "details");
    assert_string_equal(json_string_value(json_object_get(s, "estimator")), "exact");
    double fo = num_at(s, "value", NULL), e = num_at(d, "empirical", "value");
    double se = num_at(d, "empirical", "stderr"), r = num_at(d, "ratio", "value");
    assert_int_equal((int)num_at(d, "empirical", "samples"), 64);
    assert_true(e > 0 && se > 0 && se < e);
    assert_true(fabs(r - fo / e) <= 1e-12 * r);
    const json_t *ci = json_object_get(json_object_get(d, "ratio"), "ci");
    assert_int_equal(json_array_size(ci), 2);
    assert_true(json_number_value(json_array_get(ci, 0)) < r);
    assert_true(json_number_value(json_array_get(ci, 1)) > r);
    assert_true(json_is_boolean(json_object_get(d, "nonlinear")));
    assert_int_equal(json_is_true(json_object_get(d, "nonlinear")), want_nonlinear);
    if (want_nonlinear)
        assert_true(r < 0.8 || r > 1.25);
    else
        assert_true(r > 0.9 && r < 1.1);
}

static void upload_model(const struct test_daemon *d, char dig_x[80], char dig_w[80])
{
    double x[N_FIT * 3], w1[8 * 3], b1[8], w2[2 * 8];
    for (int i = 0; i < N_FIT * 3; i++)
        x[i] = sin(0.7 * i + 0.3);
    for (int i = 0; i < 24; i++)
        w1[i] = 0.6 * cos(1.3 * i);
    for (int i = 0; i < 8; i++)
        b1[i] = 0.05 * (i - 4);
    for (int i = 0; i < 16; i++)
        w2[i] = 0.4 * sin(0.9 * i + 1.0);
    size_t len;
    uint64_t xs[2] = { N_FIT, 3 };
    unsigned char *b = test_npy_f64(xs, 2, x, &len);
    assert_non_null(b);
    test_put_blob(d, b, len, dig_x);
    free(b);
    struct test_st_tensor t[3] = { { "l0.weight", 2, { 8, 3 }, w1 }, { "l0.bias", 1, { 8 }, b1 },
                                   { "l2.weight", 2, { 2, 8 }, w2 } };
    b = test_safetensors_f64(t, 3, &len);
    assert_non_null(b);
    test_put_blob(d, b, len, dig_w);
    free(b);
}

static void test_check_empirical(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char sid[64], path[256], body[2048], dig_x[80], dig_w[80], jid[64], cid[64];
    assert_int_equal(test_daemon_start(&d, args), 0);

    /* A check on a kind without an empirical value: 400 naming the field. */
    assert_int_equal(http_json(d.base_url, "POST", "/v1/studies",
                               "{\"name\":\"bad\",\"noise_models\":[{\"name\":\"l\",\"kind\":"
                               "\"label\",\"sigma\":0.1,\"check\":\"empirical\"}]}", NULL, &r), 0);
    assert_int_equal(r.status, 400);
    assert_string_equal(http_json_str(&r, "error.code"), "invalid_argument");
    assert_non_null(strstr(r.body, "noise_models[0].check"));
    http_result_free(&r);

    assert_int_equal(http_json(d.base_url, "POST", "/v1/studies",
                               "{\"name\":\"emp\",\"rank_by\":\"large\",\"noise_models\":["
                               "{\"name\":\"small\",\"kind\":\"isotropic\",\"sigma\":0.001,"
                               "\"check\":\"empirical\",\"max_samples\":64,\"target_rel_error\":"
                               "1e-9,\"seed\":3},"
                               "{\"name\":\"large\",\"kind\":\"isotropic\",\"sigma\":2,"
                               "\"check\":\"empirical\",\"max_samples\":64,\"target_rel_error\":"
                               "1e-9,\"seed\":3},"
                               "{\"name\":\"emp\",\"kind\":\"isotropic\",\"sigma\":0.01,"
                               "\"estimator\":\"empirical\",\"max_samples\":32}]}", NULL, &r), 0);
    if (r.status != 201)
        fail_msg("POST /v1/studies: %ld %s", r.status, r.body);
    snprintf(sid, sizeof sid, "%s", http_json_str(&r, "id"));
    assert_non_null(strstr(r.body, "\"check\":\"empirical\""));
    http_result_free(&r);

    upload_model(&d, dig_x, dig_w);
    snprintf(path, sizeof path, "/v1/studies/%s/inputs/fit", sid);
    snprintf(body, sizeof body, "{\"blob\":\"%s\"}", dig_x);
    assert_int_equal(http_json(d.base_url, "PUT", path, body, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    http_result_free(&r);

    /* A dump cannot run the check: refused at submission, naming the noise model. */
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    snprintf(body, sizeof body, "{\"name\":\"dump\",\"jacobian\":{\"fit\":\"%s\"}}", dig_x);
    assert_int_equal(http_json(d.base_url, "POST", path, body, NULL, &r), 0);
    if (r.status != 400 || !strstr(r.body, "needs a model (a spec or an ONNX graph)"))
        fail_msg("dump with the check: %ld %s", r.status, r.body);
    assert_non_null(strstr(r.body, "noise_models[0]"));
    http_result_free(&r);

    snprintf(body, sizeof body,
             "{\"name\":\"tanh\",\"model\":{\"spec\":{\"format\":\"tpv.sequential/v1\","
             "\"input_shape\":[3],\"layers\":[{\"type\":\"linear\",\"weight\":\"l0.weight\","
             "\"bias\":\"l0.bias\"},{\"type\":\"tanh\"},{\"type\":\"linear\",\"weight\":"
             "\"l2.weight\"}]},\"weights\":\"%s\"}}", dig_w);
    assert_int_equal(http_json(d.base_url, "POST", path, body, NULL, &r), 0);
    if (r.status != 202)
        fail_msg("POST %s: %ld %s", path, r.status, r.body);
    snprintf(jid, sizeof jid, "%s", http_json_str(&r, "job.id"));
    snprintf(cid, sizeof cid, "%s", http_json_str(&r, "candidate.id"));
    http_result_free(&r);
    test_wait_succeeded(&d, jid, 60);

    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", sid, cid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    check_details(fit_score(r.json, "small"), false);
    check_details(fit_score(r.json, "large"), true);
    const json_t *emp = fit_score(r.json, "emp");
    assert_string_equal(json_string_value(json_object_get(emp, "estimator")), "empirical");
    assert_int_equal(json_integer_value(json_object_get(emp, "samples")), 32);
    assert_true(num_at(emp, "value", NULL) > 0 && num_at(emp, "stderr", NULL) > 0);
    assert_true(json_is_number(json_object_get(emp, "stderr_inputs")));
    assert_true(has_flag(json_object_get(r.json, "flags"), "nonlinear"));
    http_result_free(&r);

    /* The ranking item of the flagged score carries the flag; the small sigma's does not. */
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?by=large&split=fit", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    const json_t *item = json_array_get(json_object_get(r.json, "items"), 0);
    assert_non_null(item);
    assert_true(has_flag(json_object_get(item, "flags"), "nonlinear"));
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?by=small&split=fit", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    item = json_array_get(json_object_get(r.json, "items"), 0);
    assert_non_null(item);
    assert_false(has_flag(json_object_get(item, "flags"), "nonlinear"));
    http_result_free(&r);
    /* CSV keeps the flag in its flags column. */
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?by=large&split=fit", sid);
    const char *accept[] = { "Accept: text/csv", NULL };
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, accept, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "nonlinear"));
    http_result_free(&r);

    /* The contract documents the field, the estimator and the flag. */
    assert_int_equal(http_json(d.base_url, "GET", "/openapi.json", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    const json_t *schemas = json_object_get(json_object_get(r.json, "components"), "schemas");
    const json_t *nmp = json_object_get(json_object_get(schemas, "NoiseModel"), "properties");
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(json_object_get(nmp, "check"), "enum"), 0)),
                        "empirical");
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(json_object_get(nmp, "estimator"), "enum"), 4)),
                        "empirical");
    const json_t *cf = json_object_get(
        json_object_get(json_object_get(schemas, "Candidate"), "properties"), "flags");
    assert_non_null(strstr(json_string_value(json_object_get(cf, "description")), "nonlinear"));
    http_result_free(&r);

    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_empirical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
