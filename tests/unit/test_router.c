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

/* Every route of the router appears in the OpenAPI document with its method, and the document
 * lists no route the router lacks. */
static void test_openapi_matches_routes(void **state)
{
    (void)state;
    json_t *doc = api_openapi_document();
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "openapi")), "3.1.0");
    json_t *paths = json_object_get(doc, "paths");
    size_t documented = 0;
    const char *p;
    json_t *item;
    json_object_foreach(paths, p, item)
        documented += json_object_size(item);
    assert_int_equal(documented, api_route_count());
    for (size_t i = 0; i < api_route_count(); i++) {
        char method[16];
        size_t n = strlen(api_route_method(i));
        for (size_t k = 0; k <= n; k++)
            method[k] = (char)(api_route_method(i)[k] | (k < n ? 0x20 : 0)); /* lower case */
        json_t *op = json_object_get(json_object_get(paths, api_route_pattern(i)), method);
        if (!op)
            fail_msg("route %s %s is not in the OpenAPI document", api_route_method(i),
                     api_route_pattern(i));
        assert_non_null(json_object_get(op, "responses"));
    }
    json_decref(doc);
}

static void test_service_routes_without_store_are_503(void **state)
{
    (void)state;
    struct api_response resp;
    run("GET", "/v1/studies", &resp);
    assert_error(&resp, 503, "unavailable");
    api_response_free(&resp);
    run("HEAD", "/v1/blobs/sha256:00", &resp);
    assert_int_equal(resp.status, 503);
    api_response_free(&resp);
    run("PATCH", "/v1/jobs/jb_1", &resp);
    assert_error(&resp, 405, "method_not_allowed");
    assert_string_equal(resp.headers[0].value, "GET, DELETE");
    api_response_free(&resp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_healthz),
        cmocka_unit_test(test_unknown_route_is_404_json),
        cmocka_unit_test(test_wrong_method_is_405_with_allow),
        cmocka_unit_test(test_readyz_without_store_is_503),
        cmocka_unit_test(test_openapi_matches_routes),
        cmocka_unit_test(test_service_routes_without_store_are_503),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
