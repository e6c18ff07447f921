/* test_http_reply.c: struct api_response to MHD response (server/http_reply.c): all headers or no
 * response at all, never a reply with a header silently missing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "server/http_reply.h"

static void test_all_headers_are_sent(void **state)
{
    (void)state;
    struct api_response resp = { 0 };
    api_reply_json(&resp, 201, json_pack("{s:s}", "id", "st_1"));
    assert_int_equal(api_response_add_header(&resp, "Location", "/v1/studies/st_1"), TPV_OK);
    struct MHD_Response *mr = srv_http_reply_build(&resp, "rid1", false);
    assert_non_null(mr);
    assert_null(resp.body); /* taken by MHD */
    assert_string_equal(MHD_get_response_header(mr, "Location"), "/v1/studies/st_1");
    assert_string_equal(MHD_get_response_header(mr, "X-Request-Id"), "rid1");
    assert_string_equal(MHD_get_response_header(mr, "Content-Type"), "application/json");
    assert_null(MHD_get_response_header(mr, "Connection"));
    MHD_destroy_response(mr);
    api_response_free(&resp);

    api_reply_errorf(&resp, TPV_EINVAL, "Content-Length", "twice");
    mr = srv_http_reply_build(&resp, "rid2", true);
    assert_non_null(mr);
    assert_string_equal(MHD_get_response_header(mr, "Connection"), "close");
    MHD_destroy_response(mr);
    api_response_free(&resp);
}

/* MHD refuses a header value with a line break; the old code ignored that and sent the reply
 * without the header.  Now there is no response: the caller answers 500 instead. */
static void test_refused_header_means_no_response(void **state)
{
    (void)state;
    struct api_response resp = { 0 };
    api_reply_json(&resp, 201, json_pack("{s:s}", "id", "st_1"));
    assert_int_equal(api_response_add_header(&resp, "Location", "/v1/x\r\nSet-Cookie: a=b"), TPV_OK);
    assert_null(srv_http_reply_build(&resp, "rid3", false));
    assert_null(resp.body); /* freed with the refused response, not leaked */
    api_response_free(&resp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_headers_are_sent),
        cmocka_unit_test(test_refused_header_means_no_response),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
