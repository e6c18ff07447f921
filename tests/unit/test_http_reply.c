/* test_http_reply.c: struct api_response to MHD response (server/http_reply.c): all headers or no
 * response at all, never a reply with a header silently missing; over a real connection (an MHD
 * server in the test, a libcurl client) a reply that cannot be built arrives as a 500. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <curl/curl.h>

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

static int queued_status = -1;

/* Answers every request with a 201 whose Location MHD refuses, on the second call (keep-alive). */
static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    static int first;
    (void)cls, (void)url, (void)method, (void)version, (void)upload_data, (void)upload_data_size;
    if (!*con_cls) {
        *con_cls = &first;
        return MHD_YES;
    }
    struct api_response resp = { 0 };
    api_reply_json(&resp, 201, json_pack("{s:s}", "id", "st_1"));
    api_response_add_header(&resp, "Location", "/v1/x\nSet-Cookie: a=b");
    enum MHD_Result ok = srv_http_reply_queue(conn, &resp, "rid4", false, &queued_status);
    api_response_free(&resp);
    return ok;
}

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    char *buf = userdata;
    size_t used = strlen(buf), n = size * nmemb;
    if (used + n < 4096) {
        memcpy(buf + used, ptr, n);
        buf[used + n] = '\0';
    }
    return n;
}

static void test_unbuildable_reply_arrives_as_500(void **state)
{
    (void)state;
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL,
                                            on_access, NULL, MHD_OPTION_END);
    assert_non_null(d);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    assert_non_null(di);
    char url[64], body[4096] = "", headers[4096] = "";
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", di->port);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, headers);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    MHD_stop_daemon(d);
    assert_int_equal(status, 500);
    assert_int_equal(queued_status, 500);
    assert_non_null(strstr(headers, "X-Request-Id: rid4"));
    assert_null(strstr(headers, "Location"));
    assert_null(strstr(headers, "Set-Cookie"));
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                        "internal");
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_headers_are_sent),
        cmocka_unit_test(test_refused_header_means_no_response),
        cmocka_unit_test(test_unbuildable_reply_arrives_as_500),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
