/* test_http_hardening.c: the HTTP front against requests an attacker writes by hand, over raw
 * TCP to the real tpvd:
 *  - ambiguous framing (two Content-Length headers, Content-Length with Transfer-Encoding, two
 *    Transfer-Encoding headers, white space before the colon) is refused with our 400 JSON error
 *    naming the header, before any handler runs, and the connection closes: the request smuggled
 *    in the body is never executed and only one response comes back;
 *  - control bytes in the path (%0a, %0d, %1b) and in a header cannot forge a log line;
 *  - plain requests still share one kept-alive connection (DESIGN.md section 8). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"

static struct test_daemon D;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Sends `len` bytes on a fresh connection and reads until the server closes it or `limit`
 * seconds pass.  Returns the bytes read (NUL-terminated in out); *closed tells whether the server
 * closed the connection. */
static size_t raw_exchange(const void *req, size_t len, char *out, size_t cap, double limit,
                           bool *closed)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(D.port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(send(fd, req, len, MSG_NOSIGNAL), (ssize_t)len);
    size_t got = 0;
    *closed = false;
    double t0 = now_s();
    while (now_s() - t0 < limit && got + 1 < cap) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        ssize_t n = recv(fd, out + got, cap - 1 - got, 0);
        if (n <= 0) {
            *closed = true;
            break;
        }
        got += (size_t)n;
    }
    out[got] = '\0';
    close(fd);
    return got;
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* The number of studies the daemon lists. */
static size_t study_count(void)
{
    struct http_result r;
    assert_int_equal(http_json(D.base_url, "GET", "/v1/studies", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    size_t n = json_array_size(json_object_get(r.json, "items"));
    http_result_free(&r);
    return n;
}

/* A request that creates a study, to be hidden in the body of another. */
static const char SMUGGLED_BODY[] =
    "{\"name\":\"smuggled\",\"noise_models\":[{\"name\":\"i\",\"kind\":\"isotropic\",\"sigma\":0.1}]}";

static size_t smuggled_request(char *out, size_t cap)
{
    int n = snprintf(out, cap,
                     "POST /v1/studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s", strlen(SMUGGLED_BODY), SMUGGLED_BODY);
    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

/* Bytes of a body made of `prefix` and the smuggled request. */
static size_t body_len(const char *prefix)
{
    char inner[512];
    return strlen(prefix) + smuggled_request(inner, sizeof inner);
}

/* Sends GET /healthz with the framing headers (printf format) and `prefix` + the smuggled POST as
 * its body; checks the one 400 answer naming `field`, the closed connection, and that no study
 * appeared. */
__attribute__((format(printf, 3, 4)))
static void check_refused(const char *prefix, const char *field, const char *framing, ...)
{
    char inner[512], req[2048], resp[8192];
    smuggled_request(inner, sizeof inner);
    char hdrs[256];
    va_list ap;
    va_start(ap, framing);
    vsnprintf(hdrs, sizeof hdrs, framing, ap);
    va_end(ap);
    int n = snprintf(req, sizeof req, "GET /healthz HTTP/1.1\r\nHost: x\r\n%s\r\n%s%s", hdrs, prefix,
                     inner);
    assert_true(n > 0 && (size_t)n < sizeof req);
    bool closed;
    raw_exchange(req, (size_t)n, resp, sizeof resp, 3.0, &closed);
    if (count_of(resp, "HTTP/1.1 ") != 1 || !strstr(resp, "HTTP/1.1 400 ")) {
        test_daemon_dump_log(&D);
        fail_msg("framing %s: want exactly one 400, got:\n%s", hdrs, resp);
    }
    assert_true(closed);
    const char *body = strstr(resp, "\r\n\r\n");
    assert_non_null(body);
    json_t *j = json_loads(body + 4, 0, NULL);
    if (!j)
        fail_msg("not JSON: %s", body + 4);
    json_t *e = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "invalid_argument");
    assert_string_equal(json_string_value(json_object_get(json_object_get(e, "details"), "field")),
                        field);
    json_decref(j);
    assert_int_equal(study_count(), 0);
    assert_int_equal(test_daemon_log_count(&D, "method=POST", false), 0);
}

static void test_smuggling_refused(void **state)
{
    (void)state;
    /* The first length (0) would end the request and the body would be the next request. */
    check_refused("", "Content-Length", "Content-Length: 0\r\nContent-Length: %zu\r\n",
                  body_len(""));
    /* MHD reads the chunked body (ending at 0), a proxy the length: they disagree. */
    check_refused("0\r\n\r\n", "Transfer-Encoding",
                  "Content-Length: %zu\r\nTransfer-Encoding: chunked\r\n", body_len("0\r\n\r\n"));
    check_refused("0\r\n\r\n", "Transfer-Encoding",
                  "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n%s", "");
    /* A lenient proxy takes "Content-Length :" as the length; MHD does not. */
    check_refused("", "Content-Length", "Content-Length : %zu\r\n", body_len(""));
    /* The same smuggled request sent on its own is executed: the check above can fail. */
    char inner[512], resp[8192];
    size_t ilen = smuggled_request(inner, sizeof inner);
    bool closed;
    raw_exchange(inner, ilen, resp, sizeof resp, 1.0, &closed);
    assert_non_null(strstr(resp, "HTTP/1.1 201 "));
    assert_int_equal(study_count(), 1);
}

/* Plain requests keep the connection: two pipelined GETs, two answers, no Connection: close. */
static void test_keep_alive_kept(void **state)
{
    (void)state;
    static const char two[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                              "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    char resp[8192];
    bool closed;
    raw_exchange(two, sizeof two - 1, resp, sizeof resp, 1.0, &closed);
    assert_int_equal(count_of(resp, "HTTP/1.1 200 "), 2);
    assert_null(strstr(resp, "Connection: close"));
    assert_false(closed);
}

/* Whether every line of the daemon log starts with the logger's own timestamp and none with the
 * one forged below. */
static void check_log_lines(const char *forged_ts)
{
    FILE *fp = fopen(D.log_path, "r");
    assert_non_null(fp);
    char line[8192];
    while (fgets(line, sizeof line, fp)) {
        bool stamped = strlen(line) > 25 && line[4] == '-' && line[10] == 'T' && line[23] == 'Z';
        if (!stamped || strncmp(line, forged_ts, strlen(forged_ts)) == 0) {
            fclose(fp);
            test_daemon_dump_log(&D);
            fail_msg("a log line not written by the logger: %s", line);
        }
    }
    fclose(fp);
}

static void wait_log(const char *needle, int want)
{
    for (int i = 0; i < 40 && test_daemon_log_count(&D, needle, false) < want; i++)
        usleep(50 * 1000);
}

static void test_log_injection(void **state)
{
    (void)state;
    static const char forged_ts[] = "2001-01-01T00:00:00.000Z";
    /* %0a ends a line, %0d returns the cursor, %1b starts a terminal escape. */
    static const char path_req[] =
        "GET /v1/studies/x%0a2001-01-01T00:00:00.000Z%20INFO%20%20request%20rid=forged1%0d%1b[2K"
        " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    char resp[8192];
    bool closed;
    raw_exchange(path_req, sizeof path_req - 1, resp, sizeof resp, 3.0, &closed);
    assert_non_null(strstr(resp, "HTTP/1.1 404 "));
    /* Headers cannot carry a raw newline, but they can carry ESC and text that looks escaped. */
    static const char idem_req[] =
        "POST /v1/studies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n"
        "Idempotency-Key: k%0a2001-01-01T00:00:00.000Z rid=forged2\x1b[2K\r\n\r\n{}";
    raw_exchange(idem_req, sizeof idem_req - 1, resp, sizeof resp, 3.0, &closed);
    assert_non_null(strstr(resp, "HTTP/1.1 400 "));
    wait_log("method=POST", 1);

    check_log_lines(forged_ts);
    /* One line for the path request, holding the escaped path. */
    assert_int_equal(test_daemon_log_count(&D, "forged1", false), 1);
    assert_int_equal(test_daemon_log_count(&D, "path=/v1/studies/x\\x0a2001-01-01T00:00:00.000Z"
                                           "\\x20INFO\\x20\\x20request\\x20rid=forged1\\x0d\\x1b[2K "
                                           "status=404", false), 1);
    assert_int_equal(test_daemon_log_count(&D, "\x1b", false), 0);
    assert_int_equal(test_daemon_log_count(&D, "method=POST path=/v1/studies status=400", false), 1);
}

static int setup(void **state)
{
    (void)state;
    memset(&D, 0, sizeof D);
    return test_daemon_start(&D, NULL);
}

static int teardown(void **state)
{
    (void)state;
    int rc = test_daemon_stop(&D, SIGTERM);
    test_daemon_cleanup(&D);
    return rc == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_smuggling_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_alive_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_injection, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
