/* test_ui.c: the dashboard routes (api/ui.c and the tail capture of api/router.c), without any
 * socket: every path under /ui/ answers the page with its Content-Security-Policy, /ui/assets/
 * its files with their types, an unknown asset a JSON 404, other methods 405; the routes are
 * open (the page must load to ask for a token) and need no store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "api/api.h"
#include "api/handlers.h"
#include "api/ui.h"

static void run(const char *method, const char *path, struct api_response *resp)
{
    struct api_env env = { .store = NULL, .version = "test" };
    struct api_request req = { .method = method, .path = path, .request_id = "t", .body = "" };
    memset(resp, 0, sizeof *resp);
    api_dispatch(&env, &req, resp);
}

static const char *header(const struct api_response *resp, const char *name)
{
    for (int i = 0; i < resp->nheaders; i++)
        if (strcmp(resp->headers[i].name, name) == 0)
            return resp->headers[i].value;
    return NULL;
}

static bool body_has(const struct api_response *resp, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= resp->body_len; i++)
        if (memcmp(resp->body + i, needle, n) == 0)
            return true;
    return false;
}

static void assert_page(const char *path)
{
    struct api_response resp;
    run("GET", path, &resp);
    assert_int_equal(resp.status, 200);
    assert_string_equal(resp.content_type, "text/html; charset=utf-8");
    assert_true(body_has(&resp, "<script src=\"/ui/assets/app.js\"></script>"));
    const char *csp = header(&resp, "Content-Security-Policy");
    assert_non_null(csp);
    assert_non_null(strstr(csp, "default-src 'self'"));
    assert_non_null(strstr(csp, "script-src 'self';"));
    assert_null(strstr(csp, "unsafe-inline"));
    assert_string_equal(header(&resp, "X-Content-Type-Options"), "nosniff");
    api_response_free(&resp);
}

static void test_every_ui_path_is_the_page(void **state)
{
    (void)state;
    assert_page("/ui/");
    assert_page("/ui/studies/st_0123");
    assert_page("/ui/studies/st_0123/");
    assert_page("/ui/anything/at/all/depth");
    /* A path longer than a capture holds still reaches the page (the capture is cut). */
    char longp[600] = "/ui/";
    memset(longp + 4, 'a', sizeof longp - 5);
    longp[sizeof longp - 1] = '\0';
    assert_page(longp);
}

static void test_assets_are_served_with_their_types(void **state)
{
    (void)state;
    static const char *const files[][2] = {
        { "/ui/assets/app.js", "text/javascript; charset=utf-8" },
        { "/ui/assets/app.css", "text/css; charset=utf-8" },
    };
    for (size_t i = 0; i < 2; i++) {
        struct api_response resp;
        run("GET", files[i][0], &resp);
        assert_int_equal(resp.status, 200);
        assert_string_equal(resp.content_type, files[i][1]);
        const struct ui_asset *a = ui_asset_find(files[i][0] + strlen("/ui/assets/"));
        assert_non_null(a);
        assert_int_equal(resp.body_len, a->len);
        assert_true(a->len > 100);
        assert_memory_equal(resp.body, a->data, a->len);
        api_response_free(&resp);
    }
}

static void test_unknown_asset_is_404_json(void **state)
{
    (void)state;
    static const char *const paths[] = { "/ui/assets/nope.js", "/ui/assets/",
                                         "/ui/assets/index.html", "/ui/assets/../app.js" };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        struct api_response resp;
        run("GET", paths[i], &resp);
        assert_int_equal(resp.status, 404);
        assert_string_equal(resp.content_type, "application/json");
        api_response_free(&resp);
    }
}

static void test_other_methods_are_405(void **state)
{
    (void)state;
    struct api_response resp;
    run("POST", "/ui/studies/x", &resp);
    assert_int_equal(resp.status, 405);
    api_response_free(&resp);
    run("DELETE", "/ui/", &resp);
    assert_int_equal(resp.status, 405);
    api_response_free(&resp);
    /* /ui without the slash is no dashboard path. */
    run("GET", "/ui", &resp);
    assert_int_equal(resp.status, 404);
    api_response_free(&resp);
    /* HEAD is answered by the GET route. */
    run("HEAD", "/ui/studies/x", &resp);
    assert_int_equal(resp.status, 200);
    api_response_free(&resp);
}

static void test_ui_routes_are_open(void **state)
{
    (void)state;
    assert_int_equal(api_route_role_of("GET", "/ui/"), API_ROLE_OPEN);
    assert_int_equal(api_route_role_of("GET", "/ui/{page}"), API_ROLE_OPEN);
    struct api_request req = { .method = "GET", .path = "/ui/studies/s1", .request_id = "t" };
    assert_int_equal(api_route_role(&req), API_ROLE_OPEN);
    /* The tail capture does not open anything else. */
    struct api_request v1 = { .method = "GET", .path = "/v1/studies", .request_id = "t" };
    assert_int_equal(api_route_role(&v1), API_ROLE_READ);
    struct api_request uix = { .method = "GET", .path = "/uix/studies", .request_id = "t" };
    assert_int_equal(api_route_role(&uix), API_ROLE_READ);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_ui_path_is_the_page),
        cmocka_unit_test(test_assets_are_served_with_their_types),
        cmocka_unit_test(test_unknown_asset_is_404_json),
        cmocka_unit_test(test_other_methods_are_405),
        cmocka_unit_test(test_ui_routes_are_open),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
