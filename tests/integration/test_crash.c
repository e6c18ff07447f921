/* test_crash.c: durability (DESIGN.md section 6) against the real tpvd: kill -9 right after a
 * burst of 202s (jobs queued and running) and in the middle of a blob upload, then a restart on the
 * same data dir: every acknowledged job ends succeeded with both scores at their closed forms (the
 * same dump everywhere, so the same numbers), no upload temporaries remain and every stored blob
 * hashes to its name. */
#include <arpa/inet.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
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
#include <curl/curl.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"
#include "tests/support/npy.h"
#include "tests/support/scores.h"

#define NCAND 24

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int count_lines(const char *cmd)
{
    FILE *p = popen(cmd, "r");
    int n = 0;
    char line[512];
    while (p && fgets(line, sizeof line, p))
        n++;
    if (p)
        pclose(p);
    return n;
}

/* Starts an upload that never finishes: headers and part of the body, then the socket stays open
 * until the daemon dies.  Returns the socket. */
static int start_partial_upload(const struct test_daemon *d)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(d->port) };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    char head[256];
    int n = snprintf(head, sizeof head, "PUT /v1/blobs HTTP/1.1\r\nHost: x\r\n"
                     "Content-Length: 1048576\r\n\r\n");
    assert_int_equal(write(fd, head, (size_t)n), n);
    char chunk[65536];
    memset(chunk, 'z', sizeof chunk);
    assert_int_equal(write(fd, chunk, sizeof chunk), (ssize_t)sizeof chunk);
    return fd;
}

static void test_kill9_then_restart(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", "--max-attempts", "3", NULL };
    struct http_result r;
    char buf[512], path[256], cmd[700];
    assert_int_equal(test_daemon_start(&d, args), 0);

    /* A dump big enough that scoring takes a moment (isotropic + sgd_curvature Gram). */
    uint64_t n = 48, p = 20000;
    double *v = malloc(n * p * sizeof *v);
    assert_non_null(v);
    for (uint64_t i = 0; i < n * p; i++)
        v[i] = (double)((i * 2654435761u) % 1000) / 1000.0 - 0.5;
    uint64_t shape[2] = { n, p };
    size_t len;
    unsigned char *dump = test_npy_f64(shape, 2, v, &len);
    double want_iso, want_curv;
    test_closed_forms(v, n, p, &want_iso, &want_curv);
    free(v);
    char url[300];
    snprintf(url, sizeof url, "%s/v1/blobs", d.base_url);
    assert_int_equal(http_request("PUT", url, dump, len, NULL, &r), 0);
    assert_int_equal(r.status, 201);
    char digest[80];
    snprintf(digest, sizeof digest, "%s", http_json_str(&r, "digest"));
    http_result_free(&r);
    free(dump);

    assert_int_equal(http_json(d.base_url, "POST", "/v1/studies",
        "{\"name\":\"crash\",\"noise_models\":[{\"name\":\"iso\",\"kind\":\"isotropic\","
        "\"sigma\":0.1},{\"name\":\"curv\",\"kind\":\"sgd_curvature\",\"lr\":0.1,"
        "\"batch_size\":8}]}", NULL, &r), 0);
    assert_int_equal(r.status, 201);
    char sid[64];
    snprintf(sid, sizeof sid, "%s", http_json_str(&r, "id"));
    http_result_free(&r);

    /* A burst of acknowledged submissions, then kill -9 at once. */
    char jids[NCAND][64];
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    for (int i = 0; i < NCAND; i++) {
        snprintf(buf, sizeof buf, "{\"name\":\"c%02d\",\"jacobian\":{\"fit\":\"%s\"}}", i, digest);
        assert_int_equal(http_json(d.base_url, "POST", path, buf, NULL, &r), 0);
        if (r.status != 202) {
            test_daemon_dump_log(&d);
            fail_msg("candidate %d: %ld %s", i, r.status, r.body);
        }
        snprintf(jids[i], sizeof jids[i], "%s", http_json_str(&r, "job.id"));
        http_result_free(&r);
    }
    int sock = start_partial_upload(&d);
    usleep(100 * 1000);
    snprintf(cmd, sizeof cmd, "ls -A '%s/blobs/tmp'", d.data_dir);
    assert_int_equal(count_lines(cmd), 1); /* the upload in progress */
    assert_int_equal(test_daemon_stop(&d, SIGKILL), 128 + SIGKILL);
    close(sock);

    /* Restart on the same data dir. */
    assert_int_equal(test_daemon_start(&d, args), 0);
    /* Stale temporaries removed at start; a blob folder shared by PostgreSQL nodes keeps them
     * until they are older than any upload (another node may be writing one). */
    assert_int_equal(count_lines(cmd), test_daemon_on_pg() ? 1 : 0);

    for (int i = 0; i < NCAND; i++) {
        char jp[128];
        snprintf(jp, sizeof jp, "/v1/jobs/%.64s", jids[i]);
        const char *st = NULL;
        for (double t0 = now_s(); now_s() - t0 < 60;) {
            assert_int_equal(http_json(d.base_url, "GET", jp, NULL, NULL, &r), 0);
            assert_int_equal(r.status, 200); /* every acknowledged job exists */
            st = http_json_str(&r, "state");
            if (strcmp(st, "queued") != 0 && strcmp(st, "running") != 0)
                break;
            http_result_free(&r);
            usleep(20 * 1000);
        }
        if (strcmp(st, "succeeded") != 0) {
            test_daemon_dump_log(&d);
            fail_msg("job %d: %s", i, r.body);
        }
        char cp[200];
        snprintf(cp, sizeof cp, "/v1/studies/%s/candidates/%s", sid,
                 http_json_str(&r, "candidate_id"));
        http_result_free(&r);
        assert_int_equal(http_json(d.base_url, "GET", cp, NULL, NULL, &r), 0);
        assert_int_equal(r.status, 200);
        json_t *scores = json_object_get(r.json, "scores");
        assert_int_equal(json_array_size(scores), 2); /* iso and curv on fit; no probe set */
        test_check_fit_score(scores, "iso", want_iso);
        test_check_fit_score(scores, "curv", want_curv);
        http_result_free(&r);
    }

    /* Every stored blob hashes to its name; nothing half-written. */
    snprintf(cmd, sizeof cmd,
             "cd '%s/blobs/sha256' && for f in */*; do h=$(sha256sum \"$f\" | cut -c1-64); "
             "[ \"$h\" = \"$(basename $f)\" ] || echo bad $f; done", d.data_dir);
    assert_int_equal(count_lines(cmd), 0);
    snprintf(cmd, sizeof cmd, "ls '%s/blobs/sha256'/*/*", d.data_dir);
    assert_int_equal(count_lines(cmd), 1);

    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* SIGTERM of an idle daemon: quick exit 0 (the shutdown grace only waits for running jobs). */
static void test_sigterm_with_queue_exits_zero(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", "--shutdown-grace", "1", NULL };
    struct http_result r;
    assert_int_equal(test_daemon_start(&d, args), 0);
    assert_int_equal(http_json(d.base_url, "GET", "/readyz", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    double t0 = now_s();
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    assert_true(now_s() - t0 < 5);
    test_daemon_cleanup(&d);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill9_then_restart),
        cmocka_unit_test(test_sigterm_with_queue_exits_zero),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
