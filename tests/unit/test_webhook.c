/* test_webhook.c: the pure parts of URL fetching and webhook delivery: the --fetch-allow host
 * matching, the X-TPV-Signature value (RFC 4231 HMAC-SHA256 vectors), the backoff schedule with
 * its jitter bounds, the API's URL check and the secret format.  The network parts are tested
 * end to end by tests/integration/test_fetch_webhook.c. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "api/handlers.h"
#include "server/fetch.h"
#include "server/webhook.h"
#include "storage/store_types.h"

static void test_host_allowed(void **state)
{
    (void)state;
    assert_false(srv_fetch_host_allowed("", "example.com", 443));
    assert_false(srv_fetch_host_allowed(NULL, "example.com", 443));
    assert_true(srv_fetch_host_allowed("example.com", "example.com", 443));
    assert_true(srv_fetch_host_allowed("a.org, Example.COM", "example.com", 80));
    assert_false(srv_fetch_host_allowed("example.com", "evil-example.com", 443));
    assert_false(srv_fetch_host_allowed("example.com", "example.com.evil.org", 443));
    assert_false(srv_fetch_host_allowed("example.co", "example.com", 443));
    assert_true(srv_fetch_host_allowed("127.0.0.1:9000", "127.0.0.1", 9000));
    assert_false(srv_fetch_host_allowed("127.0.0.1:9000", "127.0.0.1", 9001));
    assert_true(srv_fetch_host_allowed("[::1]", "[::1]", 8080));
    assert_true(srv_fetch_host_allowed("x,[::1]:8080", "[::1]", 8080));
    assert_false(srv_fetch_host_allowed("[::1]:8080", "[::1]", 80));
    assert_false(srv_fetch_host_allowed("127.0.0.1:90x", "127.0.0.1", 90));
    assert_false(srv_fetch_host_allowed(",,", "", 80));
}

static void test_signature(void **state)
{
    (void)state;
    char sig[SRV_WEBHOOK_SIG_MAX];
    /* RFC 4231 test case 2. */
    const char *data = "what do ya want for nothing?";
    srv_webhook_sign("Jefe", data, strlen(data), sig);
    assert_string_equal(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    /* The exact bytes: one more space is another signature. */
    char other[SRV_WEBHOOK_SIG_MAX];
    srv_webhook_sign("Jefe", "what do ya want for nothing? ", 29, other);
    assert_string_not_equal(sig, other);
}

static void test_backoff(void **state)
{
    (void)state;
    for (int a = 1; a <= 12; a++) {
        double full = 1.0 * ldexp(1.0, a - 1);
        if (full > 3600)
            full = 3600;
        assert_true(fabs(srv_webhook_backoff(a, 1000, 0.0) - full / 2) < 1e-9);
        double hi = srv_webhook_backoff(a, 1000, 0.999999);
        assert_true(hi < full && hi > full * 0.99);
    }
    assert_true(srv_webhook_backoff(100, 1000, 0.5) <= 3600);
    assert_true(fabs(srv_webhook_backoff(1, 100, 0.0) - 0.05) < 1e-12);
}

static void test_url_valid_and_secret(void **state)
{
    (void)state;
    assert_true(api_url_valid("https://example.com/x.npy"));
    assert_true(api_url_valid("http://127.0.0.1:8000"));
    assert_true(api_url_valid("HTTPS://user:pw@host:1/p?q=1#f"));
    assert_true(api_url_valid("http://[::1]:9/h"));
    assert_false(api_url_valid("ftp://example.com/x"));
    assert_false(api_url_valid("http://"));
    assert_false(api_url_valid("http:///path"));
    assert_false(api_url_valid("http://:80/"));
    assert_false(api_url_valid("http://[]/"));
    assert_false(api_url_valid("http://a b/"));
    assert_false(api_url_valid("http://host/\x01"));
    assert_false(api_url_valid("example.com/x"));

    char a[API_WEBHOOK_SECRET_MAX], b[API_WEBHOOK_SECRET_MAX];
    assert_int_equal(api_webhook_secret_new(a), TPV_OK);
    assert_int_equal(api_webhook_secret_new(b), TPV_OK);
    assert_int_equal(strlen(a), 6 + 64);
    assert_int_equal(strncmp(a, "whsec_", 6), 0);
    assert_int_equal(strspn(a + 6, "0123456789abcdef"), 64);
    assert_string_not_equal(a, b);
}

/* The payloads receivers have always got, byte for byte (they were built in storage before
 * phase 2 moved the rendering here): keys in this order, absent fields left out. */
static void check_render(const struct store_event *ev, const char *want)
{
    char *text = srv_webhook_render_event(ev, "ev_0123456789abcdef");
    assert_non_null(text);
    assert_string_equal(text, want);
    free(text);
}

static void test_render_event(void **state)
{
    (void)state;
    struct store_event job = { .event = "job.succeeded", .study_id = "st_1", .candidate_id = "cd_2",
                               .job_id = "jb_3", .kind = "score", .state = "succeeded",
                               .at = "2026-01-02T03:04:05.678Z" };
    check_render(&job, "{\"event\":\"job.succeeded\",\"study_id\":\"st_1\",\"candidate_id\":\"cd_2\","
                       "\"job_id\":\"jb_3\",\"kind\":\"score\",\"state\":\"succeeded\","
                       "\"at\":\"2026-01-02T03:04:05.678Z\",\"id\":\"ev_0123456789abcdef\"}");
    struct store_event rank = { .event = "ranking.changed", .study_id = "st_1",
                                .candidate_id = "cd_2", .job_id = "jb_3", .version = 7,
                                .at = "2026-01-02T03:04:05.678Z" };
    check_render(&rank, "{\"event\":\"ranking.changed\",\"study_id\":\"st_1\",\"version\":7,"
                        "\"candidate_id\":\"cd_2\",\"job_id\":\"jb_3\","
                        "\"at\":\"2026-01-02T03:04:05.678Z\",\"id\":\"ev_0123456789abcdef\"}");
    struct store_event cand = { .event = "candidate.deleted", .study_id = "st_1",
                                .candidate_id = "cd_2", .state = "queued", .version = 3,
                                .at = "2026-01-02T03:04:05.678Z" };
    check_render(&cand, "{\"event\":\"candidate.deleted\",\"study_id\":\"st_1\","
                        "\"candidate_id\":\"cd_2\",\"state\":\"queued\",\"version\":3,"
                        "\"at\":\"2026-01-02T03:04:05.678Z\",\"id\":\"ev_0123456789abcdef\"}");
    struct store_event study = { .event = "study.deleted", .study_id = "st_1", .version = 4,
                                 .at = "2026-01-02T03:04:05.678Z" };
    check_render(&study, "{\"event\":\"study.deleted\",\"study_id\":\"st_1\",\"version\":4,"
                         "\"at\":\"2026-01-02T03:04:05.678Z\",\"id\":\"ev_0123456789abcdef\"}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_allowed),
        cmocka_unit_test(test_signature),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_url_valid_and_secret),
        cmocka_unit_test(test_render_event),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
