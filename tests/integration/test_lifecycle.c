/* test_lifecycle.c: lifecycle routes against the real tpvd (DESIGN.md section 5): DELETE of a
 * candidate (404 afterwards, job gone, version bumped, name free again), retry of a failed
 * candidate (202, a new job with fresh attempts; 409 otherwise), GET /v1/jobs/{jid}?wait=s held
 * until the job ends, and unknown query parameters refused naming the parameter on every route. */
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
#include <unistd.h>
#include <cmocka.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"
#include "tests/support/npy.h"
#include "tests/support/service_steps.h"

/* Submits a Jacobian candidate; its id and job id go to cid / jid. */
static void submit(const struct test_daemon *d, const char *sid, const char *name,
                   const char *digest, char cid[64], char jid[64])
{
    char body[256];
    snprintf(body, sizeof body, "{\"name\":\"%s\",\"jacobian\":{\"fit\":\"%s\"}}", name, digest);
    test_submit(d, sid, body, cid, jid);
}

static void get_status(const struct test_daemon *d, const char *method, const char *path,
                       long want)
{
    struct http_result r;
    assert_int_equal(http_json(d->base_url, method, path, NULL, NULL, &r), 0);
    if (r.status != want)
        fail_msg("%s %s: want %ld, got %ld: %s", method, path, want, r.status, r.body);
    http_result_free(&r);
}

/* DELETE of a candidate: 204, then 404 for it and its job, the version bumped, the ranking
 * without it, and its name free for a new candidate; a second DELETE is 404. */
static void test_candidate_delete(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char sid[64], cid[64], jid[64], cid2[64], jid2[64], dig[80], path[256];
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "del", sid);
    test_put_small_dump(&d, 1.0, false, dig);
    submit(&d, sid, "a", dig, cid, jid);
    test_wait_job(&d, jid, 20, &r);
    assert_string_equal(http_json_str(&r, "state"), "succeeded");
    http_result_free(&r);
    json_int_t v0 = test_study_version(&d, sid);

    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", sid, cid);
    get_status(&d, "DELETE", path, 204);
    get_status(&d, "GET", path, 404);
    get_status(&d, "DELETE", path, 404);
    snprintf(path, sizeof path, "/v1/jobs/%s", jid);
    get_status(&d, "GET", path, 404);
    assert_true(test_study_version(&d, sid) > v0);
    snprintf(path, sizeof path, "/v1/studies/%s/ranking", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "items")), 0);
    http_result_free(&r);

    /* The name is free again, and the new candidate is scored. */
    submit(&d, sid, "a", dig, cid2, jid2);
    assert_string_not_equal(cid, cid2);
    test_wait_job(&d, jid2, 20, &r);
    assert_string_equal(http_json_str(&r, "state"), "succeeded");
    http_result_free(&r);

    /* Deleted right after submission, its job queued or running: the worker goes on with the
     * next job, which succeeds. */
    char cid3[64], jid3[64], cid4[64], jid4[64];
    submit(&d, sid, "b", dig, cid3, jid3);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", sid, cid3);
    get_status(&d, "DELETE", path, 204);
    submit(&d, sid, "c", dig, cid4, jid4);
    test_wait_job(&d, jid4, 20, &r);
    assert_string_equal(http_json_str(&r, "state"), "succeeded");
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/jobs/%s", jid3);
    get_status(&d, "GET", path, 404);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", "st_0000000000000000", cid4);
    get_status(&d, "DELETE", path, 404); /* not in that study */
    /* The candidate list of a study that does not exist is a 404, not an empty page (the
     * PostgreSQL backend answered 200 [] before its fix). */
    get_status(&d, "GET", "/v1/studies/st_0000000000000000/candidates", 404);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* DELETE of a study: 204, then 404 for it, its candidates, ranking and jobs; other studies
 * untouched; a second DELETE is 404. */
static void test_study_delete(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char sid[64], other[64], cid[2][64], jid[2][64], ocid[64], ojid[64], dig[80], path[256];
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "gone", sid);
    test_create_iso_study(&d, "kept", other);
    test_put_small_dump(&d, 1.0, false, dig);
    submit(&d, sid, "a", dig, cid[0], jid[0]);
    submit(&d, other, "a", dig, ocid, ojid);
    submit(&d, sid, "b", dig, cid[1], jid[1]);
    test_wait_job(&d, jid[0], 20, &r);
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s", sid);
    get_status(&d, "DELETE", path, 204);
    get_status(&d, "GET", path, 404);
    get_status(&d, "DELETE", path, 404);
    snprintf(path, sizeof path, "/v1/studies/%s/ranking", sid);
    get_status(&d, "GET", path, 404);
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", sid, cid[i]);
        get_status(&d, "GET", path, 404);
        snprintf(path, sizeof path, "/v1/jobs/%s", jid[i]);
        get_status(&d, "GET", path, 404);
    }
    test_wait_job(&d, ojid, 20, &r);
    assert_string_equal(http_json_str(&r, "state"), "succeeded");
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", other, ocid);
    get_status(&d, "GET", path, 200);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* Retry: a failed candidate gets a new job (202, attempts fresh, Location); a succeeded one is
 * 409 failed_precondition; an unknown one 404. */
static void test_candidate_retry(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char sid[64], cid[64], jid[64], okc[64], okj[64], bad[80], good[80], path[256], loc[128];
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "retry", sid);
    test_put_small_dump(&d, 1.0, true, bad);
    test_put_small_dump(&d, 2.0, false, good);
    submit(&d, sid, "bad", bad, cid, jid);
    submit(&d, sid, "good", good, okc, okj);
    test_wait_job(&d, jid, 20, &r);
    assert_string_equal(http_json_str(&r, "state"), "failed");
    http_result_free(&r);
    test_wait_job(&d, okj, 20, &r);
    assert_string_equal(http_json_str(&r, "state"), "succeeded");
    http_result_free(&r);
    json_int_t v0 = test_study_version(&d, sid);

    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s/retry", sid, cid);
    assert_int_equal(http_json(d.base_url, "POST", path, NULL, NULL, &r), 0);
    if (r.status != 202)
        fail_msg("retry: %ld %s", r.status, r.body);
    char njid[64];
    snprintf(njid, sizeof njid, "%s", http_json_str(&r, "job.id"));
    assert_string_not_equal(njid, jid);
    /* The answer is the job as read after the commit: the worker may have claimed it (and
     * even finished it) already, and then it counts that one attempt; never the old job's. */
    const char *nstate = http_json_str(&r, "job.state");
    json_int_t nattempts = json_integer_value(json_object_get(json_object_get(r.json, "job"),
                                                              "attempts"));
    assert_non_null(nstate);
    assert_int_equal(nattempts, strcmp(nstate, "queued") == 0 ? 0 : 1);
    assert_non_null(http_result_header(&r, "Location", loc, sizeof loc));
    http_result_free(&r);
    assert_true(test_study_version(&d, sid) > v0);
    test_wait_job(&d, njid, 20, &r);
    assert_string_equal(http_json_str(&r, "state"), "failed"); /* the same bad dump */
    assert_int_equal(json_integer_value(json_object_get(r.json, "attempts")), 1);
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", sid, cid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_string_equal(http_json_str(&r, "job_id"), njid);
    http_result_free(&r);

    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s/retry", sid, okc);
    assert_int_equal(http_json(d.base_url, "POST", path, NULL, NULL, &r), 0);
    test_expect_error(&r, 409, "failed_precondition", "state");
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/cd_0000000000000000/retry", sid);
    get_status(&d, "POST", path, 404);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s/retry", sid, cid);
    assert_int_equal(http_json(d.base_url, "POST", path, "{\"force\":true}", NULL, &r), 0);
    test_expect_error(&r, 400, "invalid_argument", "force");
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* GET /v1/jobs/{jid}?wait=s: a job that ends while the request is held is answered at once
 * with its terminal state; a terminal job is answered without waiting. */
static void test_job_wait(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char sid[64], cid[64], jid[64], dig[80], path[256];
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "wait", sid);
    test_put_small_dump(&d, 1.0, false, dig);
    submit(&d, sid, "a", dig, cid, jid);
    snprintf(path, sizeof path, "/v1/jobs/%s?wait=20", jid);
    double t0 = test_now_s();
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    double took = test_now_s() - t0;
    assert_int_equal(r.status, 200);
    assert_string_equal(http_json_str(&r, "state"), "succeeded");
    http_result_free(&r);
    assert_true(took < 10);
    t0 = test_now_s();
    get_status(&d, "GET", path, 200);
    assert_true(test_now_s() - t0 < 2);
    snprintf(path, sizeof path, "/v1/jobs/%s?wait=soon", jid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    test_expect_error(&r, 400, "invalid_argument", "wait");
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* A model candidate (a 3-4-2 ReLU MLP on 6 fit inputs) for JBR; its id and job id go to cid /
 * jid.  The study's fit set is set first (input sets are frozen once candidates exist). */
static void submit_mlp(const struct test_daemon *d, const char *sid, char cid[64], char jid[64])
{
    double w1[12], b1[4], w2[8], x[18];
    for (int i = 0; i < 12; i++)
        w1[i] = 0.3 * sin(1.0 + i);
    for (int i = 0; i < 4; i++)
        b1[i] = 0.1 * i;
    for (int i = 0; i < 8; i++)
        w2[i] = 0.5 * cos(2.0 + i);
    for (int i = 0; i < 18; i++)
        x[i] = sin(0.7 * i);
    struct test_st_tensor t[3] = { { "l0.weight", 2, { 4, 3 }, w1 }, { "l0.bias", 1, { 4 }, b1 },
                                   { "l2.weight", 2, { 2, 4 }, w2 } };
    size_t len;
    unsigned char *b = test_safetensors_f64(t, 3, &len);
    assert_non_null(b);
    char dw[80], dx[80], dspec[80], path[160], body[512];
    test_put_blob(d, b, len, dw);
    free(b);
    uint64_t xs[2] = { 6, 3 };
    b = test_npy_f64(xs, 2, x, &len);
    assert_non_null(b);
    test_put_blob(d, b, len, dx);
    free(b);
    const char *spec = "{\"format\":\"tpv.sequential/v1\",\"input_shape\":[3],\"layers\":["
                       "{\"type\":\"linear\",\"weight\":\"l0.weight\",\"bias\":\"l0.bias\"},"
                       "{\"type\":\"relu\"},{\"type\":\"linear\",\"weight\":\"l2.weight\"}]}";
    test_put_blob(d, spec, strlen(spec), dspec);
    struct http_result r;
    snprintf(path, sizeof path, "/v1/studies/%s/inputs/fit", sid);
    snprintf(body, sizeof body, "{\"blob\":\"%s\"}", dx);
    assert_int_equal(http_json(d->base_url, "PUT", path, body, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    snprintf(body, sizeof body, "{\"name\":\"mlp\",\"model\":{\"spec\":\"%s\",\"weights\":\"%s\"}}",
             dspec, dw);
    assert_int_equal(http_json(d->base_url, "POST", path, body, NULL, &r), 0);
    if (r.status != 202)
        fail_msg("POST %s: %ld %s", path, r.status, r.body);
    snprintf(cid, 64, "%s", http_json_str(&r, "candidate.id"));
    snprintf(jid, 64, "%s", http_json_str(&r, "job.id"));
    http_result_free(&r);
}

/* GET /v1/jobs/{jid}?wait=s on a JBR job: JBR jobs change no candidate or ranking (no version
 * bump), yet their end must still wake the held request rather than leave it to time out.  The
 * candidate then lists them (jbr_jobs, newest first, never its score job). */
static void test_jbr_job_wait(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char sid[64], cid[64], jid[64], jbr[64], path[256], jbrs[2][64];
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "jbr-wait", sid);
    submit_mlp(&d, sid, cid, jid);
    test_wait_job(&d, jid, 20, &r);
    assert_string_equal(http_json_str(&r, "state"), "succeeded");
    http_result_free(&r);
    json_int_t version = test_study_version(&d, sid);
    /* Confidence 0.9 keeps none of these inputs (the job fails), 0 keeps them all. */
    struct {
        const char *body, *state;
    } runs[] = { { "{}", "failed" }, { "{\"confidence\":0}", "succeeded" } };
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s/jbr", sid, cid);
        assert_int_equal(http_json(d.base_url, "POST", path, runs[i].body, NULL, &r), 0);
        if (r.status != 202)
            fail_msg("POST %s: %ld %s", path, r.status, r.body);
        snprintf(jbr, sizeof jbr, "%s", http_json_str(&r, "job.id"));
        snprintf(jbrs[i], sizeof jbrs[i], "%s", jbr);
        http_result_free(&r);
        snprintf(path, sizeof path, "/v1/jobs/%s?wait=20", jbr);
        double t0 = test_now_s();
        assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
        double took = test_now_s() - t0;
        assert_int_equal(r.status, 200);
        if (strcmp(http_json_str(&r, "state"), runs[i].state) != 0)
            fail_msg("JBR job, want %s: %s", runs[i].state, r.body);
        if (strcmp(runs[i].state, "succeeded") == 0)
            assert_non_null(json_object_get(json_object_get(r.json, "result"), "units"));
        http_result_free(&r);
        if (took >= 10)
            fail_msg("the held GET was answered after %.1f s, not when the job ended", took);
    }
    /* ...and the ranking's version did not move (a JBR changes no ranking). */
    assert_int_equal(test_study_version(&d, sid), version);
    /* The candidate lists its JBR jobs, newest first, and not its score job: in its GET and in
     * the study's list. */
    const char *want[2][2] = { { jbrs[1], "succeeded" }, { jbrs[0], "failed" } };
    for (int list = 0; list < 2; list++) {
        if (list)
            snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
        else
            snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", sid, cid);
        assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
        assert_int_equal(r.status, 200);
        json_t *cand = list ? json_array_get(json_object_get(r.json, "items"), 0) : r.json;
        assert_string_equal(json_string_value(json_object_get(cand, "id")), cid);
        assert_string_equal(json_string_value(json_object_get(cand, "job_id")), jid);
        json_t *jobs = json_object_get(cand, "jbr_jobs");
        if (json_array_size(jobs) != 2)
            fail_msg("GET %s: want 2 JBR jobs: %s", path, r.body);
        for (size_t k = 0; k < 2; k++) {
            json_t *it = json_array_get(jobs, k);
            assert_string_equal(json_string_value(json_object_get(it, "id")), want[k][0]);
            assert_string_equal(json_string_value(json_object_get(it, "state")), want[k][1]);
            assert_non_null(json_string_value(json_object_get(it, "created_at")));
        }
        http_result_free(&r);
    }
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

static long blob_status(const struct test_daemon *d, const char *method, const char *digest,
                        struct http_result *r)
{
    char url[256];
    snprintf(url, sizeof url, "%s/v1/blobs/%s", d->base_url, digest);
    assert_int_equal(http_request(method, url, NULL, 0, NULL, r), 0);
    return r->status;
}

/* Waits up to `seconds` for HEAD of the blob to answer `want`; returns whether it did. */
static bool blob_becomes(const struct test_daemon *d, const char *digest, long want,
                         double seconds)
{
    struct http_result r;
    for (double t0 = test_now_s(); test_now_s() - t0 < seconds; usleep(100 * 1000)) {
        long st = blob_status(d, "HEAD", digest, &r);
        http_result_free(&r);
        if (st == want)
            return true;
    }
    return false;
}

/* DELETE of a blob: 409 naming the candidate that references it, 204 once nothing does, 404
 * unknown, 400 malformed.  Garbage collection with --blob-gc-grace 2: an unreferenced upload
 * goes after the grace; a referenced one stays however long; once its candidate is deleted it
 * goes a grace later. */
static void test_blob_delete_and_gc(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", "--blob-gc-grace", "2", NULL };
    struct http_result r;
    char sid[64], cid[64], jid[64], used[80], loose[80], spare[80], path[256];
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "blobs", sid);
    test_put_small_dump(&d, 1.0, false, used);
    submit(&d, sid, "a", used, cid, jid); /* right after the upload: never raced by the GC */
    test_put_small_dump(&d, 3.0, false, loose);
    test_put_small_dump(&d, 5.0, false, spare);

    assert_int_equal(blob_status(&d, "DELETE", used, &r), 409);
    test_expect_error(&r, 409, "failed_precondition", "digest");
    assert_non_null(strstr(http_json_str(&r, "error.message"), cid));
    http_result_free(&r);
    assert_int_equal(blob_status(&d, "DELETE", spare, &r), 204);
    http_result_free(&r);
    assert_int_equal(blob_status(&d, "HEAD", spare, &r), 404);
    http_result_free(&r);
    assert_int_equal(blob_status(&d, "DELETE", spare, &r), 404);
    http_result_free(&r);
    assert_int_equal(blob_status(&d, "DELETE", "sha256:xyz", &r), 400);
    http_result_free(&r);

    /* The loose upload is collected after the grace; the referenced one stays. */
    if (!blob_becomes(&d, loose, 404, 10)) {
        test_daemon_dump_log(&d);
        fail_msg("unreferenced blob not collected");
    }
    assert_int_equal(blob_status(&d, "HEAD", used, &r), 200);
    http_result_free(&r);
    test_wait_job(&d, jid, 20, &r);
    assert_string_equal(http_json_str(&r, "state"), "succeeded");
    http_result_free(&r);

    /* Released by the candidate's deletion: still there within the grace, gone after it. */
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", sid, cid);
    get_status(&d, "DELETE", path, 204);
    assert_int_equal(blob_status(&d, "HEAD", used, &r), 200);
    http_result_free(&r);
    assert_true(blob_becomes(&d, used, 404, 10));
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* GET ranking with Accept: text/csv: a header row with the fixed columns then the metadata keys,
 * one row per ranked item in rank order, RFC 4180 quoting, CRLF line ends, its own ETag and 304
 * with it. */
static void test_ranking_csv(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char sid[64], dig[2][80], path[256], body[512], jid[2][64], etag[96], jetag[96], hdr[128];
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "csv", sid);
    const char *meta[2] = { "{\"lr\":0.1,\"note\":\"a,\\\"b\\\"\"}", "{\"epochs\":3}" };
    for (int i = 0; i < 2; i++) {
        test_put_small_dump(&d, 1.0 + 2.0 * i, false, dig[i]);
        snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
        snprintf(body, sizeof body, "{\"name\":\"c%d\",\"metadata\":%s,"
                 "\"jacobian\":{\"fit\":\"%s\"}}", i, meta[i], dig[i]);
        assert_int_equal(http_json(d.base_url, "POST", path, body, NULL, &r), 0);
        if (r.status != 202)
            fail_msg("POST: %ld %s", r.status, r.body);
        snprintf(jid[i], 64, "%s", http_json_str(&r, "job.id"));
        http_result_free(&r);
    }
    for (int i = 0; i < 2; i++) {
        test_wait_job(&d, jid[i], 20, &r);
        assert_string_equal(http_json_str(&r, "state"), "succeeded");
        http_result_free(&r);
    }
    snprintf(path, sizeof path, "/v1/studies/%s/ranking", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(http_result_header(&r, "ETag", jetag, sizeof jetag));
    http_result_free(&r);
    const char *accept[] = { "Accept: text/csv", NULL };
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, accept, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(http_result_header(&r, "Content-Type", hdr, sizeof hdr));
    assert_int_equal(strncmp(hdr, "text/csv", 8), 0);
    assert_non_null(http_result_header(&r, "ETag", etag, sizeof etag));
    assert_string_not_equal(etag, jetag);
    /* The smaller dump has the lower TPV: c0 first.  Metadata keys in byte order (as tpvctl
     * writes them). */
    const char *want_head = "rank,candidate_id,name,value,stderr,stderr_inputs,"
                            "p_lower_than_next,flags,epochs,lr,note\r\n";
    if (strncmp(r.body, want_head, strlen(want_head)) != 0)
        fail_msg("CSV header: %s", r.body);
    const char *row1 = r.body + strlen(want_head);
    assert_int_equal(strncmp(row1, "1,", 2), 0);
    assert_non_null(strstr(row1, ",c0,"));
    assert_non_null(strstr(row1, ",,0.1,\"a,\"\"b\"\"\"\r\n")); /* no epochs, lr, quoted note */
    const char *row2 = strstr(row1, "\r\n") + 2;
    assert_int_equal(strncmp(row2, "2,", 2), 0);
    assert_non_null(strstr(row2, ",c1,"));
    assert_non_null(strstr(row2, ",3,,\r\n"));
    assert_string_equal(strstr(row2, "\r\n"), "\r\n"); /* two rows, nothing after */
    http_result_free(&r);
    snprintf(hdr, sizeof hdr, "If-None-Match: %s", etag);
    const char *inm[] = { "Accept: text/csv", hdr, NULL };
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, inm, &r), 0);
    assert_int_equal(r.status, 304);
    http_result_free(&r);
    snprintf(hdr, sizeof hdr, "If-None-Match: %s", jetag); /* the JSON tag is not the CSV's */
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, inm, &r), 0);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* Unknown query parameters: 400 naming the parameter, on the ranking (the typo of the issue),
 * lists, plain gets, writes and blob uploads; known ones still work. */
static void test_unknown_query_parameters(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char sid[64], path[256], url[300];
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "query", sid);
    struct {
        const char *method;
        const char *before, *after; /* the path is before + sid + after, or before alone */
        const char *param;
    } cases[] = {
        { "GET", "/v1/studies/", "/ranking?max_train_los=0.05", "max_train_los" },
        { "GET", "/v1/studies/", "/ranking?by=iso&Split=probe", "Split" },
        { "GET", "/v1/studies?page_size=2&pagesize=3", NULL, "pagesize" },
        { "GET", "/v1/studies/", "?verbose=1", "verbose" },
        { "GET", "/v1/studies/", "/candidates?limit=3", "limit" },
        { "POST", "/v1/studies/", "/candidates?dry_run=1", "dry_run" },
        { "GET", "/healthz?probe=1", NULL, "probe" },
        { "GET", "/v1/jobs/jb_0000000000000000?timeout=3", NULL, "timeout" },
        { "GET", "/ui/studies/", "?candidat=cd_0000000000000000", "candidat" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(path, sizeof path, "%s%s%s", cases[i].before, cases[i].after ? sid : "",
                 cases[i].after ? cases[i].after : "");
        assert_int_equal(http_json(d.base_url, cases[i].method, path,
                                   strcmp(cases[i].method, "POST") == 0 ? "{}" : NULL, NULL, &r),
                         0);
        if (r.status != 400)
            fail_msg("%s %s: %ld %s", cases[i].method, path, r.status, r.body);
        test_expect_error(&r, 400, "invalid_argument", cases[i].param);
        assert_non_null(strstr(http_json_str(&r, "error.message"), cases[i].param));
        http_result_free(&r);
    }
    snprintf(url, sizeof url, "%s/v1/blobs?compress=1", d.base_url);
    assert_int_equal(http_request("PUT", url, "abc", 3, NULL, &r), 0);
    test_expect_error(&r, 400, "invalid_argument", "compress");
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?by=iso&split=fit&max_train_loss=1&wait=0",
             sid);
    get_status(&d, "GET", path, 200);
    get_status(&d, "GET", "/v1/studies?page_size=2", 200);
    /* The dashboard's own address keeps its view (a reload, a shared link): the page. */
    snprintf(path, sizeof path,
             "/ui/studies/%s?by=iso&split=fit&max_train_loss=0.1&candidate=cd_0000000000000000"
             "&metric=val_loss", sid);
    get_status(&d, "GET", path, 200);
    get_status(&d, "GET", "/ui/?by=iso", 200);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_query_parameters),
        cmocka_unit_test(test_candidate_delete),
        cmocka_unit_test(test_study_delete),
        cmocka_unit_test(test_candidate_retry),
        cmocka_unit_test(test_job_wait),
        cmocka_unit_test(test_jbr_job_wait),
        cmocka_unit_test(test_blob_delete_and_gc),
        cmocka_unit_test(test_ranking_csv),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
