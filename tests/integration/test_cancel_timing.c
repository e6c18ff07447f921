/* test_cancel_timing.c: cancels and shutdown against running label jobs on the real tpvd (issue
 * 12: "a cancel lands within 1 s of the DELETE at any point of any job, and a shutdown waits for
 * no job longer than that").  A Jacobian dump with n = 1500, K = 4 (nK = 6000) and ridge_rel
 * 0.1 takes well over 5 s on either exact path here (measured by hand: the eigendecomposition
 * path about 40 s, the blocked Cholesky path about 12 s on two shared cores); each job is
 * canceled early (Gram phase) and late (inside the factorisation), and the job must read
 * "canceled" within 1 s of the DELETE.  Then SIGTERM under a running job with
 * --shutdown-grace 0: the daemon exits within about 1 s plus its own shutdown work. */
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
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"
#include "tests/support/service_steps.h"
#include "tests/support/npy.h"

enum { DN = 1500, DK = 4, DP = 150 };

/* The bounds hold for optimised builds.  Under AddressSanitizer the daemon's own loops (value
 * checks, Gram sums, mirrors) run several times slower between cancel points, so the sanitizer
 * build checks that the cancel and the shutdown happen with a looser bound. */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifdef SANITIZED
#define CANCEL_LIMIT_S 3.0
#define SHUTDOWN_LIMIT_S 5.0
#else
#define CANCEL_LIMIT_S 1.0
#define SHUTDOWN_LIMIT_S 2.0
#endif

/* A (DN, DK, DP) dump of reproducible pseudo-random values in [-1, 1). */
static void upload_dump(const struct test_daemon *d, char out[80])
{
    size_t count = (size_t)DN * DK * DP, len;
    double *v = malloc(count * sizeof *v);
    assert_non_null(v);
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < count; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        v[i] = (double)(s >> 11) / 4503599627370496.0 - 1.0;
    }
    uint64_t shape[3] = { DN, DK, DP };
    unsigned char *b = test_npy_f64(shape, 3, v, &len);
    free(v);
    test_put_blob(d, b, len, out);
    free(b);
}

static void make_study(const struct test_daemon *d, const char *name, const char *estimator,
                       char sid[64])
{
    char buf[512];
    snprintf(buf, sizeof buf, "{\"name\":\"%s\",\"noise_models\":[{\"name\":\"label\","
             "\"kind\":\"label\",\"sigma\":0.1,\"ridge_rel\":0.1,\"estimator\":\"%s\"}]}", name,
             estimator);
    test_create_study(d, buf, sid);
}

static void submit(const struct test_daemon *d, const char *sid, const char *name,
                   const char *digest, char jid[64])
{
    char body[256];
    snprintf(body, sizeof body, "{\"name\":\"%s\",\"jacobian\":{\"fit\":\"%s\"}}", name, digest);
    test_submit(d, sid, body, NULL, jid);
}

/* The job's state ("" when the request fails). */
static void job_state(const struct test_daemon *d, const char *jid, char st[32], double *progress)
{
    char path[128];
    struct http_result r;
    snprintf(path, sizeof path, "/v1/jobs/%.64s", jid);
    st[0] = '\0';
    if (http_json(d->base_url, "GET", path, NULL, NULL, &r) == 0 && r.status == 200) {
        const char *s = http_json_str(&r, "state");
        snprintf(st, 32, "%s", s ? s : "");
        if (progress)
            *progress = json_number_value(json_object_get(r.json, "progress"));
    }
    http_result_free(&r);
}

/* Waits (60 s at most) until the job runs; returns when it started (monotonic seconds). */
static double wait_running(const struct test_daemon *d, const char *jid)
{
    char st[32];
    for (double t0 = test_now_s(); test_now_s() - t0 < 60; usleep(10 * 1000)) {
        job_state(d, jid, st, NULL);
        if (strcmp(st, "running") == 0)
            return test_now_s();
        if (strcmp(st, "queued") != 0) {
            test_daemon_dump_log(d);
            fail_msg("job %s is %s before it ran", jid, st);
        }
    }
    fail_msg("job %s did not start", jid);
    return 0;
}

/* Cancels the job once it has run `delay` seconds and reported at least `min_progress` (the
 * phase to hit: the job's progress shares put the eigendecomposition past 0.0025 and the
 * Cholesky past 0.0133 at this size), then 0.3 s more; it must still be running then and read
 * "canceled" within 1 s of the DELETE. */
static void cancel_after(const struct test_daemon *d, const char *jid, double delay,
                         double min_progress, const char *what)
{
    double started = wait_running(d, jid);
    char st[32], path[128];
    double progress = 0;
    for (;;) {
        job_state(d, jid, st, &progress);
        if (strcmp(st, "running") != 0 || (test_now_s() - started >= delay && progress >= min_progress))
            break;
        if (test_now_s() - started > 120)
            fail_msg("%s: job %s at progress %.4f after 120 s", what, jid, progress);
        usleep(20 * 1000);
    }
    usleep(300 * 1000);
    job_state(d, jid, st, &progress);
    if (strcmp(st, "running") != 0)
        fail_msg("%s: job %s is %s %.1f s after it started: the size no longer runs long "
                 "enough to time a cancel", what, jid, st, delay);
    snprintf(path, sizeof path, "/v1/jobs/%.64s", jid);
    struct http_result r;
    double t0 = test_now_s();
    assert_int_equal(http_json(d->base_url, "DELETE", path, NULL, NULL, &r), 0);
    if (r.status != 200)
        fail_msg("DELETE %s: %ld %s", path, r.status, r.body);
    http_result_free(&r);
    double lag = -1;
    while (test_now_s() - t0 < 30) {
        job_state(d, jid, st, NULL);
        if (strcmp(st, "canceled") == 0) {
            lag = test_now_s() - t0;
            break;
        }
        if (strcmp(st, "running") != 0)
            fail_msg("%s: job %s became %s after the DELETE", what, jid, st);
        usleep(5 * 1000);
    }
    print_message("%s: DELETE %.1f s into the job (progress %.4f): canceled after %.3f s\n",
                  what, test_now_s() - started, progress, lag);
    if (!(lag >= 0 && lag < CANCEL_LIMIT_S)) {
        test_daemon_dump_log(d);
        fail_msg("%s: the cancel took %.3f s (limit %.1f s)", what, lag, CANCEL_LIMIT_S);
    }
}

static void test_cancel_and_shutdown(void **state)
{
    (void)state;
    struct test_daemon d;
    memset(&d, 0, sizeof d);
    /* one worker; a flop budget between the blocked path's (~3.7e11) and the
     * eigendecomposition's (~8.7e11) so that `auto` takes the blocked path */
    const char *args[] = { "--workers", "1", "--max-body", "64M", "--job-flop-budget", "600G",
                           "--shutdown-grace", "0", NULL };
    /* meson sets MALLOC_PERTURB_, which makes glibc fill every allocation: a few hundred MB of
     * Gram matrix then take seconds inside malloc, where no code can look at a cancel.  The
     * daemon runs as in production, without it. */
    unsetenv("MALLOC_PERTURB_");
    assert_int_equal(test_daemon_start(&d, args), 0);
    char dig[80], eig[64], blk[64], jid[64];
    upload_dump(&d, dig);
    make_study(&d, "eigen", "exact", eig);
    make_study(&d, "blocked", "auto", blk);
    const struct {
        const char *study, *what;
        double delay, progress;
    } pts[] = { { blk, "blocked, Gram phase", 0.0, 0 },
                { blk, "blocked, Cholesky", 0.0, 0.0134 },
                { eig, "eigen, Gram phase", 0.0, 0 },
                { eig, "eigen, eigendecomposition", 0.0, 0.0026 } };
    for (size_t i = 0; i < sizeof pts / sizeof pts[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "c%zu", i);
        submit(&d, pts[i].study, name, dig, jid);
        cancel_after(&d, jid, pts[i].delay, pts[i].progress, pts[i].what);
    }
    /* SIGTERM under a running job: no grace, so the job goes back to the queue at once; the
     * eigendecomposition canceled above still runs on its helper thread (minutes at this size),
     * and the exit must not wait for it either */
    submit(&d, blk, "term", dig, jid);
    double started = wait_running(&d, jid);
    while (test_now_s() - started < 2.0)
        usleep(10 * 1000);
    double t0 = test_now_s();
    int rc = test_daemon_stop(&d, SIGTERM);
    double took = test_now_s() - t0;
    print_message("SIGTERM 2.0 s into a blocked label job: exited %d after %.3f s\n", rc, took);
    assert_int_equal(rc, 0);
    if (!(took < SHUTDOWN_LIMIT_S)) {
        test_daemon_dump_log(&d);
        fail_msg("shutdown took %.3f s under a running job (limit %.1f s: ~1 s + shutdown work)",
                 took, SHUTDOWN_LIMIT_S);
    }
    assert_true(test_daemon_log_count(&d, "go back to the queue", false) >= 1);
    test_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cancel_and_shutdown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
