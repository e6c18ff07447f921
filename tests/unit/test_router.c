/* test_router.c: routing, 404/405 with Allow, and the JSON error shape, without any socket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "api/api.h"

static void run(const char *method, const char *path, struct api_response *resp)
{
    struct api_env env = { .store = NULL, .version = "test" };
    struct api_request req = { .method = method, .path = path, .request_id = "t", .body = "" };
    memset(resp, 0, sizeof *resp);
    api_dispatch(&env, &req, resp);
}

static json_t *body_json(const struct api_response *resp)
{
    json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
    assert_non_null(j);
    return j;
}

static void test_healthz(void **state)
{
    (void)state;
    struct api_response resp;
    run("GET", "/healthz", &resp);
    assert_int_equal(resp.status, 200);
    json_t *j = body_json(&resp);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "ok");
    json_decref(j);
    api_response_free(&resp);
}

static void assert_error(const struct api_response *resp, int status, const char *code)
{
    assert_int_equal(resp->status, status);
    assert_string_equal(resp->content_type, "application/json");
    json_t *j = body_json(resp);
    json_t *e = json_object_get(j, "error");
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    assert_true(json_is_string(json_object_get(e, "message")));
    assert_true(json_is_object(json_object_get(e, "details")));
    json_decref(j);
}

static void test_unknown_route_is_404_json(void **state)
{
    (void)state;
    struct api_response resp;
    run("GET", "/v1/nothing/here", &resp);
    assert_error(&resp, 404, "not_found");
    api_response_free(&resp);
    run("GET", "/healthz/extra", &resp); /* a prefix is not a match */
    assert_error(&resp, 404, "not_found");
    api_response_free(&resp);
}

static void test_wrong_method_is_405_with_allow(void **state)
{
    (void)state;
    struct api_response resp;
    run("DELETE", "/healthz", &resp);
    assert_error(&resp, 405, "method_not_allowed");
    assert_int_equal(resp.nheaders, 1);
    assert_string_equal(resp.headers[0].name, "Allow");
    assert_string_equal(resp.headers[0].value, "GET");
    api_response_free(&resp);
}

static void test_readyz_without_store_is_503(void **state)
{
    (void)state;
    struct api_response resp;
    run("GET", "/readyz", &resp);
    assert_error(&resp, 503, "unavailable");
    api_response_free(&resp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_healthz),
        cmocka_unit_test(test_unknown_route_is_404_json),
        cmocka_unit_test(test_wrong_method_is_405_with_allow),
        cmocka_unit_test(test_readyz_without_store_is_503),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
