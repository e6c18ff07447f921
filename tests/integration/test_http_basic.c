/* test_http_basic.c: the real tpvd binary on a free loopback port: /healthz, JSON errors for
 * unknown routes and methods, the body-size limit, keep-alive, and a clean exit on SIGTERM and
 * SIGINT. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>
#include <curl/curl.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"

static void get(const struct test_daemon *d, const char *method, const char *path,
                struct http_result *r)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", d->base_url, path);
    if (http_request(method, url, NULL, 0, NULL, r) != 0) {
        test_daemon_dump_log(d);
        fail_msg("%s %s: no response", method, path);
    }
}

static void assert_json_error(const struct http_result *r, long status, const char *code)
{
    assert_int_equal(r->status, status);
    assert_non_null(r->json);
    json_t *e = json_object_get(r->json, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    assert_true(strlen(json_string_value(json_object_get(e, "message"))) > 0);
}

static void test_healthz_errors_and_sigterm(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    struct http_result r;
    char buf[128];
    assert_int_equal(test_daemon_start(&d, NULL), 0);

    get(&d, "GET", "/healthz", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "ok");
    assert_non_null(http_result_header(&r, "Content-Type", buf, sizeof buf));
    assert_string_equal(buf, "application/json");
    assert_non_null(http_result_header(&r, "X-Request-Id", buf, sizeof buf));
    http_result_free(&r);

    get(&d, "GET", "/readyz", &r);
    assert_int_equal(r.status, 200);
    http_result_free(&r);

    get(&d, "GET", "/v1/does-not-exist", &r);
    assert_json_error(&r, 404, "not_found");
    http_result_free(&r);

    get(&d, "POST", "/healthz", &r);
    assert_json_error(&r, 405, "method_not_allowed");
    http_result_free(&r);

    /* The data dir holds a real SQLite database (none with --database=postgresql://...). */
    char db[400];
    struct stat sb;
    snprintf(db, sizeof db, "%s/tpvd.db", d.data_dir);
    assert_int_equal(stat(db, &sb), test_daemon_on_pg() ? -1 : 0);

    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    /* The log has one line per request, each with a request id. */
    assert_int_equal(test_daemon_log_count(&d, "request rid=", false), 4);
    test_daemon_cleanup(&d);
}

static void test_body_limit_is_413(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--max-body", "4K", NULL };
    assert_int_equal(test_daemon_start(&d, args), 0);
    size_t len = 64 * 1024;
    char *big = malloc(len);
    memset(big, 'x', len);
    char url[256];
    snprintf(url, sizeof url, "%s/v1/studies", d.base_url);
    struct http_result r;
    /* Declared length over the limit: refused before the body is sent. */
    const char *expect[] = { "Expect: 100-continue", NULL };
    assert_int_equal(http_request("POST", url, big, len, expect, &r), 0);
    assert_json_error(&r, 413, "payload_too_large");
    http_result_free(&r);
    /* Chunked body without a length: refused once it passes the limit. */
    const char *chunked[] = { "Transfer-Encoding: chunked", NULL };
    assert_int_equal(http_request("POST", url, big, len, chunked, &r), 0);
    assert_json_error(&r, 413, "payload_too_large");
    http_result_free(&r);
    free(big);
    /* Still serving. */
    get(&d, "GET", "/healthz", &r);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGINT), 0);
    test_daemon_cleanup(&d);
}

static size_t discard(char *p, size_t s, size_t n, void *u)
{
    (void)p;
    (void)u;
    return s * n;
}

/* Several requests on one curl handle must reuse one connection (DESIGN.md section 8). */
static void test_keep_alive(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    assert_int_equal(test_daemon_start(&d, NULL), 0);
    char url[256];
    snprintf(url, sizeof url, "%s/healthz", d.base_url);
    CURL *curl = curl_easy_init();
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
    long total_connects = 0;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(curl_easy_perform(curl), CURLE_OK);
        long n = 0;
        curl_easy_getinfo(curl, CURLINFO_NUM_CONNECTS, &n);
        total_connects += n;
    }
    curl_easy_cleanup(curl);
    assert_int_equal(total_connects, 1);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

static void test_bad_listen_address_fails_fast(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--listen", "not-an-address:80:90", NULL };
    /* The later --listen wins; the daemon must exit non-zero with a message, not hang. */
    assert_int_equal(test_daemon_start(&d, args), -1);
    FILE *fp = fopen(d.log_path, "r");
    assert_non_null(fp);
    char line[512] = "";
    assert_non_null(fgets(line, sizeof line, fp));
    fclose(fp);
    assert_non_null(strstr(line, "cannot resolve 'not-an-address:80'"));
    test_daemon_cleanup(&d);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_healthz_errors_and_sigterm),
        cmocka_unit_test(test_body_limit_is_413),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_bad_listen_address_fails_fast),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
