/* test_router.c: routing, 404/405 with Allow, the JSON error shape, and the reply contract of
 * handlers (a handler that returns without replying gets 500), without any socket.
 *
 * The link wraps api_handle_metrics (meson: -Wl,--wrap=api_handle_metrics): the route table's
 * GET /metrics then runs the stub below, which can misbehave on demand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "api/api.h"
#include "api/handlers.h"

/* What the stub handler of GET /metrics does. */
enum stub_mode { STUB_REAL, STUB_SILENT, STUB_HALF, STUB_LOST_HEADER };
static enum stub_mode stub_mode = STUB_REAL;

void __real_api_handle_metrics(const struct api_env *env, struct api_request *req,
                               struct api_response *resp);
void __wrap_api_handle_metrics(const struct api_env *env, struct api_request *req,
                               struct api_response *resp);

void __wrap_api_handle_metrics(const struct api_env *env, struct api_request *req,
                               struct api_response *resp)
{
    switch (stub_mode) {
    case STUB_REAL:
        __real_api_handle_metrics(env, req, resp);
        return;
    case STUB_SILENT: /* returns as a handler that lost an allocation might */
        return;
    case STUB_HALF: { /* a header and a body, but no status */
        api_response_add_header(resp, "Location", "/nowhere");
        static const char partial[] = "{\"half\":";
        resp->body = strdup(partial);
        resp->body_len = resp->body ? sizeof partial - 1 : 0;
        return;
    }
    case STUB_LOST_HEADER: /* a full reply whose last header did not fit (or lost its copy) */
        api_reply_errorf(resp, TPV_EBUSY, NULL, "busy");
        for (int i = 0; i <= API_MAX_HEADERS; i++)
            api_response_add_header(resp, "Retry-After", "1");
        return;
    }
}

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

/* A handler that returns without a reply: the router answers 500 internal (the transport would
 * otherwise queue status 0), and nothing the handler left behind goes out with it. */
static void test_handler_without_reply_is_500(void **state)
{
    (void)state;
    struct api_response resp;
    stub_mode = STUB_SILENT;
    run("GET", "/metrics", &resp);
    assert_error(&resp, 500, "internal");
    assert_int_equal(resp.nheaders, 0);
    assert_int_equal(resp.hold_seconds, 0);
    api_response_free(&resp);

    stub_mode = STUB_HALF;
    run("GET", "/metrics", &resp);
    assert_error(&resp, 500, "internal");
    assert_int_equal(resp.nheaders, 0);
    assert_null(strstr(resp.body, "half"));
    api_response_free(&resp);

    stub_mode = STUB_LOST_HEADER; /* never the reply without the header it meant to carry */
    run("GET", "/metrics", &resp);
    assert_error(&resp, 500, "internal");
    assert_int_equal(resp.nheaders, 0);
    assert_false(resp.incomplete);
    api_response_free(&resp);

    stub_mode = STUB_REAL; /* the real handler still answers through the wrap */
    run("GET", "/metrics", &resp);
    assert_int_equal(resp.status, 200);
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
        cmocka_unit_test(test_handler_without_reply_is_500),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
