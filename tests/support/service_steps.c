/* service_steps.c: see service_steps.h. */
#include "tests/support/service_steps.h"

#include "tests/support/npy.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

double test_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void test_put_blob(const struct test_daemon *d, const void *buf, size_t len, char digest[80])
{
    char url[256];
    struct http_result r;
    snprintf(url, sizeof url, "%s/v1/blobs", d->base_url);
    assert_int_equal(http_request("PUT", url, buf, len, NULL, &r), 0);
    if (r.status != 201 && r.status != 200)
        fail_msg("PUT /v1/blobs: %ld %s", r.status, r.body);
    const char *dig = http_json_str(&r, "digest");
    assert_non_null(dig);
    snprintf(digest, 80, "%s", dig);
    http_result_free(&r);
}

void test_create_study(const struct test_daemon *d, const char *body, char sid[64])
{
    struct http_result r;
    assert_int_equal(http_json(d->base_url, "POST", "/v1/studies", body, NULL, &r), 0);
    if (r.status != 201)
        fail_msg("POST /v1/studies: %ld %s", r.status, r.body);
    snprintf(sid, 64, "%s", http_json_str(&r, "id"));
    http_result_free(&r);
}

void test_create_iso_study(const struct test_daemon *d, const char *name, char sid[64])
{
    char buf[256];
    snprintf(buf, sizeof buf, "{\"name\":\"%s\",\"noise_models\":[{\"name\":\"iso\","
             "\"kind\":\"isotropic\",\"sigma\":0.1}]}", name);
    test_create_study(d, buf, sid);
}

void test_put_small_dump(const struct test_daemon *d, double scale, bool nan, char digest[80])
{
    double v[12];
    for (int i = 0; i < 12; i++)
        v[i] = scale * (0.1 * i + 0.05);
    if (nan)
        v[7] = NAN;
    uint64_t shape[2] = { 4, 3 };
    size_t len;
    unsigned char *b = test_npy_f64(shape, 2, v, &len);
    assert_non_null(b);
    test_put_blob(d, b, len, digest);
    free(b);
}

void test_submit(const struct test_daemon *d, const char *sid, const char *body, char cid[64],
                 char jid[64])
{
    struct http_result r;
    char path[160];
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    assert_int_equal(http_json(d->base_url, "POST", path, body, NULL, &r), 0);
    if (r.status != 202)
        fail_msg("POST %s: %ld %s", path, r.status, r.body);
    const char *j = http_json_str(&r, "job.id"), *c = http_json_str(&r, "candidate.id");
    assert_non_null(j);
    snprintf(jid, 64, "%s", j);
    if (cid) {
        assert_non_null(c);
        snprintf(cid, 64, "%s", c);
    }
    http_result_free(&r);
}

static bool terminal(const char *state)
{
    return state && (strcmp(state, "succeeded") == 0 || strcmp(state, "failed") == 0 ||
                     strcmp(state, "canceled") == 0);
}

void test_wait_job(const struct test_daemon *d, const char *jid, double timeout_s,
                   struct http_result *r)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%.64s", jid);
    for (double t0 = test_now_s(); test_now_s() - t0 < timeout_s;) {
        assert_int_equal(http_json(d->base_url, "GET", path, NULL, NULL, r), 0);
        if (r->status != 200)
            fail_msg("GET %s: %ld %s", path, r->status, r->body);
        if (terminal(http_json_str(r, "state")))
            return;
        http_result_free(r);
        usleep(20 * 1000);
    }
    test_daemon_dump_log(d);
    fail_msg("job %s did not end within %.0f s", jid, timeout_s);
}

void test_wait_succeeded(const struct test_daemon *d, const char *jid, double timeout_s)
{
    struct http_result r;
    test_wait_job(d, jid, timeout_s, &r);
    if (strcmp(http_json_str(&r, "state"), "succeeded") != 0)
        fail_msg("job %s: %s", jid, r.body);
    http_result_free(&r);
}

void test_expect_error(const struct http_result *r, long status, const char *code,
                       const char *field)
{
    if (r->status != status)
        fail_msg("want %ld, got %ld: %s", status, r->status, r->body);
    const char *got = http_json_str(r, "error.code");
    if (!got || strcmp(got, code) != 0)
        fail_msg("want error.code %s: %s", code, r->body);
    if (field) {
        const char *f = http_json_str(r, "error.details.field");
        if (!f || strcmp(f, field) != 0)
            fail_msg("want error.details.field %s: %s", field, r->body);
    }
}

json_int_t test_study_version(const struct test_daemon *d, const char *sid)
{
    struct http_result r;
    char path[128];
    snprintf(path, sizeof path, "/v1/studies/%s", sid);
    assert_int_equal(http_json(d->base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    json_int_t v = json_integer_value(json_object_get(r.json, "version"));
    http_result_free(&r);
    return v;
}
