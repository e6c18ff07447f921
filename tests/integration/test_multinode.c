/* test_multinode.c: three tpvd nodes on one PostgreSQL database and one blob dir (DESIGN.md
 * section 7, issue #13).  Candidates are submitted through node A; node B is killed with SIGKILL
 * while it holds a running job; then every job succeeded exactly once (one success line over all
 * node logs, one score per noise model and split at its closed form), jobs ran on more than one
 * node, A and C answer the same ranking, a long-poll on C is woken by a write on A, an
 * Idempotency-Key replayed on C answers A's candidate, and the database goes down and up under the
 * running nodes: 503 while it is down (answered quickly, no crash), 200 again by themselves, and a
 * candidate submitted afterwards is scored.  Needs TPV_TEST_PG_URI: fails without it. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <curl/curl.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"
#include "tests/support/npy.h"
#include "tests/support/scores.h"
#include "tests/support/pg_test.h"

#define NCAND 18
#define NNODES 3

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct test_daemon nodes[NNODES];

static void dump_logs(void)
{
    for (int i = 0; i < NNODES; i++)
        test_daemon_dump_log(&nodes[i]);
}

/* Lines of node `d`'s log containing both `a` and `b`. */
static int log_count2(const struct test_daemon *d, const char *a, const char *b)
{
    FILE *fp = fopen(d->log_path, "r");
    char line[4096];
    int n = 0;
    while (fp && fgets(line, sizeof line, fp))
        if (strstr(line, a) && strstr(line, b))
            n++;
    if (fp)
        fclose(fp);
    return n;
}

/* The id of the last job node `d` logged as running, copied to out; false when there is none. */
static bool last_running_job(const struct test_daemon *d, char *out, size_t cap)
{
    FILE *fp = fopen(d->log_path, "r");
    char line[4096];
    bool found = false;
    while (fp && fgets(line, sizeof line, fp)) {
        const char *p = strstr(line, "job id=");
        if (!p || !strstr(line, "state=running"))
            continue;
        p += 7;
        size_t n = strcspn(p, " \n");
        snprintf(out, cap, "%.*s", (int)n, p);
        found = true;
    }
    if (fp)
        fclose(fp);
    return found;
}

/* Polls job `jid` on node `d` until it leaves queued/running (`limit` s), through 503s of a
 * node that is reconnecting; returns its JSON (owned by the caller) and fails the test when it
 * did not succeed. */
static json_t *wait_job(const struct test_daemon *d, const char *jid, double limit)
{
    char jp[128];
    struct http_result r;
    snprintf(jp, sizeof jp, "/v1/jobs/%.64s", jid);
    for (double t0 = now_s();;) {
        assert_int_equal(http_json(d->base_url, "GET", jp, NULL, NULL, &r), 0);
        /* Right after a database restart a node may still be inside its reconnect back-off: a
         * 503 "unavailable" there is the contract (it recovers by itself), so poll on. */
        const char *code = r.status == 503 ? http_json_str(&r, "error.code") : NULL;
        if (code && strcmp(code, "unavailable") == 0 && now_s() - t0 <= limit) {
            http_result_free(&r);
            usleep(100 * 1000);
            continue;
        }
        if (r.status != 200) {
            dump_logs();
            fail_msg("GET %s on %s: %ld %s", jp, d->base_url, r.status, r.body);
        }
        const char *st = http_json_str(&r, "state");
        if (strcmp(st, "queued") != 0 && strcmp(st, "running") != 0) {
            if (strcmp(st, "succeeded") != 0) {
                dump_logs();
                fail_msg("job %s: %s", jid, r.body);
            }
            json_t *j = json_incref(r.json);
            http_result_free(&r);
            return j;
        }
        http_result_free(&r);
        if (now_s() - t0 > limit) {
            dump_logs();
            fail_msg("job %s still %s after %.0f s", jid, st, limit);
        }
        usleep(50 * 1000);
    }
}

static void start_nodes(void)
{
    static char blob_arg[340];
    const char *args_a[] = { "--workers", "1", "--max-attempts", "3", NULL };
    if (test_daemon_start(&nodes[0], args_a) != 0)
        fail_msg("node A did not start (this test needs PostgreSQL: TPV_TEST_PG_URI)");
    /* B and C: A's database and A's blob dir (the last --blob-dir wins), their own data dirs. */
    snprintf(blob_arg, sizeof blob_arg, "--blob-dir=%s/blobs", nodes[0].data_dir);
    const char *args_bc[] = { "--workers", "1", "--max-attempts", "3", blob_arg, NULL };
    for (int i = 1; i < NNODES; i++) {
        snprintf(nodes[i].db_url, sizeof nodes[i].db_url, "%s", nodes[0].db_url);
        if (test_daemon_start(&nodes[i], args_bc) != 0)
            fail_msg("node %c did not start", 'A' + i);
    }
}

/* Uploads the shared dump on A; its digest to `digest`, the closed forms to iso/curv. */
static void upload_dump(char *digest, size_t cap, double *iso, double *curv)
{
    uint64_t n = 128, p = 20000; /* about 0.3-1 s a job: B is caught holding one */
    double *v = malloc(n * p * sizeof *v);
    assert_non_null(v);
    for (uint64_t i = 0; i < n * p; i++)
        v[i] = (double)((i * 2654435761u) % 1000) / 1000.0 - 0.5;
    uint64_t shape[2] = { n, p };
    size_t len;
    unsigned char *dump = test_npy_f64(shape, 2, v, &len);
    assert_non_null(dump);
    test_closed_forms(v, n, p, iso, curv);
    free(v);
    char url[300];
    struct http_result r;
    snprintf(url, sizeof url, "%s/v1/blobs", nodes[0].base_url);
    assert_int_equal(http_request("PUT", url, dump, len, NULL, &r), 0);
    assert_int_equal(r.status, 201);
    snprintf(digest, cap, "%s", http_json_str(&r, "digest"));
    http_result_free(&r);
    free(dump);
}

/* POST a candidate through node `d`; the job id and candidate id are copied out.  `key` is an
 * Idempotency-Key or NULL.  Returns the status. */
static long post_candidate(const struct test_daemon *d, const char *sid, const char *name,
                           const char *digest, const char *key, char *jid, char *cid)
{
    char path[128], body[256], hdr[128];
    const char *hdrs[] = { hdr, NULL };
    struct http_result r;
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    snprintf(body, sizeof body, "{\"name\":\"%s\",\"jacobian\":{\"fit\":\"%s\"}}", name, digest);
    snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", key ? key : "");
    assert_int_equal(http_json(d->base_url, "POST", path, body, key ? hdrs : NULL, &r), 0);
    long st = r.status;
    if (st == 200 || st == 201 || st == 202) {
        snprintf(jid, 64, "%s", http_json_str(&r, "job.id") ? http_json_str(&r, "job.id") : "");
        snprintf(cid, 64, "%s", http_json_str(&r, "candidate.id") ? http_json_str(&r, "candidate.id") : "");
    } else {
        fprintf(stderr, "POST candidate %s on %s: %ld %s\n", name, d->base_url, st, r.body);
    }
    http_result_free(&r);
    return st;
}

/* SIGKILL node B once it holds a running job; that job's id goes to `held`. */
static void kill_b_while_running(char *held, size_t cap)
{
    struct http_result r;
    for (double t0 = now_s(); now_s() - t0 < 40; usleep(20 * 1000)) {
        if (!last_running_job(&nodes[1], held, cap))
            continue;
        char jp[128];
        snprintf(jp, sizeof jp, "/v1/jobs/%.64s", held);
        assert_int_equal(http_json(nodes[0].base_url, "GET", jp, NULL, NULL, &r), 0);
        bool running = r.status == 200 && strcmp(http_json_str(&r, "state"), "running") == 0;
        http_result_free(&r);
        if (running && log_count2(&nodes[1], held, "state=succeeded") == 0) {
            assert_int_equal(test_daemon_stop(&nodes[1], SIGKILL), 128 + SIGKILL);
            return;
        }
    }
    dump_logs();
    fail_msg("node B never held a running job");
}

struct poll_arg {
    const struct test_daemon *d;
    char path[200];
    char etag[128];
    long status;
    double seconds;
};

static void *long_poll(void *p)
{
    struct poll_arg *a = p;
    char hdr[160];
    const char *hdrs[] = { hdr, NULL };
    struct http_result r;
    snprintf(hdr, sizeof hdr, "If-None-Match: %s", a->etag);
    double t0 = now_s();
    a->status = http_json(a->d->base_url, "GET", a->path, NULL, hdrs, &r) == 0 ? r.status : -1;
    a->seconds = now_s() - t0;
    if (a->status >= 0)
        http_result_free(&r);
    return NULL;
}

/* GET ranking on `d`: status, and the body's JSON (owned) and ETag. */
static json_t *get_ranking(const struct test_daemon *d, const char *sid, char *etag, size_t cap)
{
    char path[128];
    struct http_result r;
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?by=iso", sid);
    assert_int_equal(http_json(d->base_url, "GET", path, NULL, NULL, &r), 0);
    if (r.status != 200) {
        dump_logs();
        fail_msg("ranking on %s: %ld %s", d->base_url, r.status, r.body);
    }
    if (etag && !http_result_header(&r, "ETag", etag, cap))
        fail_msg("ranking without an ETag");
    json_t *j = json_incref(r.json);
    http_result_free(&r);
    return j;
}

/* A GET on every surviving node answers 503 quickly while the database is down, then 200 again
 * by itself once it is back. */
static void database_outage(const char *sid)
{
    char path[128];
    struct http_result r;
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?by=iso", sid);
    assert_int_equal(pg_test_server("down"), 0);
    for (int i = 0; i < NNODES; i += 2) {
        double t0 = now_s();
        assert_int_equal(http_json(nodes[i].base_url, "GET", path, NULL, NULL, &r), 0);
        double dt = now_s() - t0;
        long st = r.status;
        http_result_free(&r);
        if (st != 503 || dt > 15) {
            pg_test_server("up");
            dump_logs();
            fail_msg("node %c with the database down: %ld after %.1f s", 'A' + i, st, dt);
        }
    }
    assert_int_equal(pg_test_server("up"), 0);
    for (int i = 0; i < NNODES; i += 2) {
        long st = -1;
        for (double t0 = now_s(); now_s() - t0 < 30 && st != 200; usleep(200 * 1000)) {
            assert_int_equal(http_json(nodes[i].base_url, "GET", path, NULL, NULL, &r), 0);
            st = r.status;
            http_result_free(&r);
        }
        if (st != 200) {
            dump_logs();
            fail_msg("node %c after the database came back: %ld", 'A' + i, st);
        }
    }
    /* And a plain restart under the running nodes. */
    assert_int_equal(pg_test_server("restart"), 0);
}

/* With a token in force, a token lookup that the database cannot answer is a 503 as well (not a
 * 401 that would tell the client its token is bad), and the token works again afterwards. */
static void token_outage(const char *sid)
{
    char token[128], hdr[200], path[128];
    const char *hdrs[] = { hdr, NULL };
    struct http_result r;
    assert_int_equal(test_daemon_token(&nodes[0], "create --name mn --role read", token,
                                       sizeof token), 0);
    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s", token);
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?by=iso", sid);
    usleep(1500 * 1000); /* open access ends and cached lookups expire within a second */
    assert_int_equal(http_json(nodes[2].base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 401);
    http_result_free(&r);
    assert_int_equal(pg_test_server("down"), 0);
    usleep(1200 * 1000);
    assert_int_equal(http_json(nodes[2].base_url, "GET", path, NULL, hdrs, &r), 0);
    long st = r.status;
    http_result_free(&r);
    assert_int_equal(pg_test_server("up"), 0);
    if (st != 503) {
        dump_logs();
        fail_msg("a token lookup with the database down: %ld", st);
    }
    st = -1;
    for (double t0 = now_s(); now_s() - t0 < 30 && st != 200; usleep(200 * 1000)) {
        assert_int_equal(http_json(nodes[2].base_url, "GET", path, NULL, hdrs, &r), 0);
        st = r.status;
        http_result_free(&r);
    }
    assert_int_equal(st, 200);
}

static void test_three_nodes(void **state)
{
    (void)state;
    struct http_result r;
    char digest[80], sid[64], held[64];
    static char jids[NCAND + 2][64], cids[NCAND + 2][64];
    double want_iso, want_curv;
    start_nodes();
    upload_dump(digest, sizeof digest, &want_iso, &want_curv);

    assert_int_equal(http_json(nodes[0].base_url, "POST", "/v1/studies",
        "{\"name\":\"multinode\",\"noise_models\":[{\"name\":\"iso\",\"kind\":\"isotropic\","
        "\"sigma\":0.1},{\"name\":\"curv\",\"kind\":\"sgd_curvature\",\"lr\":0.1,"
        "\"batch_size\":8}]}", NULL, &r), 0);
    assert_int_equal(r.status, 201);
    snprintf(sid, sizeof sid, "%s", http_json_str(&r, "id"));
    http_result_free(&r);

    for (int i = 0; i < NCAND; i++) {
        char name[32];
        snprintf(name, sizeof name, "c%02d", i);
        long st = post_candidate(&nodes[0], sid, name, digest, i == 0 ? "mn-key-0" : NULL,
                                 jids[i], cids[i]);
        assert_int_equal(st, 202);
    }
    kill_b_while_running(held, sizeof held);

    /* The Idempotency-Key replayed on C: A's candidate, no new one. */
    char jid_r[64], cid_r[64];
    long st = post_candidate(&nodes[2], sid, "c00", digest, "mn-key-0", jid_r, cid_r);
    assert_true(st == 202 || st == 200 || st == 201);
    assert_string_equal(cid_r, cids[0]);
    assert_string_equal(jid_r, jids[0]);

    /* Every job succeeded exactly once, with one score per noise model and split. */
    int ran_on[NNODES] = { 0 };
    for (int i = 0; i < NCAND; i++) {
        json_t *job = wait_job(&nodes[i % 2 ? 2 : 0], jids[i], 90);
        json_int_t attempts = json_integer_value(json_object_get(job, "attempts"));
        json_decref(job);
        /* A node writes its success line after the commit that the API shows, so the line may
         * trail the answer by a moment: look again for up to 3 s before counting. */
        int successes = 0, per_node[NNODES] = { 0 };
        for (int tries = 0; tries < 30; tries++) {
            successes = 0;
            for (int k = 0; k < NNODES; k++)
                successes += per_node[k] = log_count2(&nodes[k], jids[i], "state=succeeded");
            if (successes > 0)
                break;
            usleep(100 * 1000);
        }
        for (int k = 0; k < NNODES; k++)
            ran_on[k] += per_node[k];
        /* B may have committed its job and died before writing the line: one attempt, done. */
        if (successes == 0 && strcmp(jids[i], held) == 0 && attempts == 1)
            successes = 1;
        if (successes != 1) {
            dump_logs();
            fail_msg("job %s succeeded %d times in the node logs", jids[i], successes);
        }
        assert_true(attempts >= 1 && attempts <= 3);
        bool b_finished = per_node[0] + per_node[1] + per_node[2] == 0 || per_node[1] > 0;
        if (strcmp(jids[i], held) == 0 && !b_finished) {
            /* B's job ran again elsewhere after its lease expired: a second attempt. */
            if (attempts < 2)
                fail_msg("the job B held (%s) ran again with attempts %lld", held,
                         (long long)attempts);
        }
        char cp[200];
        snprintf(cp, sizeof cp, "/v1/studies/%.64s/candidates/%.64s", sid, cids[i]);
        assert_int_equal(http_json(nodes[2].base_url, "GET", cp, NULL, NULL, &r), 0);
        assert_int_equal(r.status, 200);
        json_t *scores = json_object_get(r.json, "scores");
        assert_int_equal(json_array_size(scores), 2);
        test_check_fit_score(scores, "iso", want_iso);
        test_check_fit_score(scores, "curv", want_curv);
        http_result_free(&r);
    }
    int nodes_used = 0;
    for (int k = 0; k < NNODES; k++)
        nodes_used += ran_on[k] > 0;
    fprintf(stderr, "successes per node: A %d, B %d, C %d; B held %s when killed\n", ran_on[0],
            ran_on[1], ran_on[2], held);
    assert_true(nodes_used >= 2);
    assert_int_equal(log_count2(&nodes[1], held, "state=running") >= 1, 1);

    /* The same ranking (items, order, values) from both surviving nodes. */
    char etag_a[128], etag_c[128];
    json_t *ra = get_ranking(&nodes[0], sid, etag_a, sizeof etag_a);
    json_t *rc = get_ranking(&nodes[2], sid, etag_c, sizeof etag_c);
    assert_int_equal(json_array_size(json_object_get(ra, "items")), NCAND);
    assert_true(json_equal(json_object_get(ra, "items"), json_object_get(rc, "items")));
    assert_true(json_equal(json_object_get(ra, "version"), json_object_get(rc, "version")));
    assert_string_equal(etag_a, etag_c);
    json_decref(ra);
    json_decref(rc);

    /* A long-poll on C woken by a write on A (a new candidate, scored on some node). */
    struct poll_arg pa = { .d = &nodes[2] };
    snprintf(pa.path, sizeof pa.path, "/v1/studies/%s/ranking?by=iso&wait=30", sid);
    snprintf(pa.etag, sizeof pa.etag, "%s", etag_c);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, long_poll, &pa), 0);
    usleep(1000 * 1000);
    double t_write = now_s();
    assert_int_equal(post_candidate(&nodes[0], sid, "late", digest, NULL, jids[NCAND],
                                    cids[NCAND]), 202);
    assert_int_equal(pthread_join(th, NULL), 0);
    double woken = now_s() - t_write;
    fprintf(stderr, "long-poll on C answered %.2f s after the write on A (held %.2f s)\n", woken,
            pa.seconds);
    assert_int_equal(pa.status, 200);
    assert_true(woken < 10);
    json_decref(wait_job(&nodes[2], jids[NCAND], 60));

    /* The database down and up, then restarted, under the running nodes; then a new candidate is
     * scored. */
    database_outage(sid);
    long pst = -1;
    for (double t0 = now_s(); now_s() - t0 < 30 && pst != 202; usleep(200 * 1000))
        pst = post_candidate(&nodes[2], sid, "after", digest, NULL, jids[NCAND + 1],
                             cids[NCAND + 1]);
    assert_int_equal(pst, 202);
    json_decref(wait_job(&nodes[0], jids[NCAND + 1], 60));
    char cp[200];
    snprintf(cp, sizeof cp, "/v1/studies/%.64s/candidates/%.64s", sid, cids[NCAND + 1]);
    assert_int_equal(http_json(nodes[0].base_url, "GET", cp, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "scores")), 2);
    test_check_fit_score(json_object_get(r.json, "scores"), "iso", want_iso);
    http_result_free(&r);

    token_outage(sid);

    for (int i = 0; i < NNODES; i += 2)
        assert_int_equal(test_daemon_stop(&nodes[i], SIGTERM), 0);
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < NNODES; i++) {
        if (nodes[i].pid > 0)
            test_daemon_stop(&nodes[i], SIGKILL);
        test_daemon_cleanup(&nodes[i]);
    }
    return 0;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_three_nodes, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
