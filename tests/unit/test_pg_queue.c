/* test_pg_queue.c: the PostgreSQL job queue (storage/pg_queue.h) on the real test server, with
 * three claimers on connections of their own standing for three nodes: every job claimed exactly
 * once, an expired lease re-queued and run by another claimer while the first owner can no longer
 * renew or finish, the attempts limit ending in "failed" with a clear error, release, candidate
 * state and study version (with its NOTIFY) following each transition; and the claim latency with
 * three competing claimers (median and p99, printed). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "storage/pg_conn.h"
#include "storage/pg_notify.h"
#include "storage/pg_queue.h"
#include "storage/schema_pg.h"
#include "storage/store.h"
#include "tests/support/pg_test.h"

struct fixture {
    char *db;
    struct pg_pool *pool;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sql_ok(const char *db, const char *sql)
{
    char *r = pg_test_sql(db, sql);
    if (!r)
        fail_msg("set-up SQL failed: %s", sql);
    free(r);
}

static int64_t sql_int(const char *db, const char *sql)
{
    char *r = pg_test_sql(db, sql);
    if (!r)
        fail_msg("SQL failed: %s", sql);
    int64_t v = strtoll(r, NULL, 10);
    free(r);
    return v;
}

/* One study st_q with n candidates cd_<i>, each with its queued score job jb_<i> (seq order =
 * i order). */
static void make_jobs(const char *db, int n)
{
    char sql[1024];
    sql_ok(db, "INSERT INTO studies (id, name, description, noise_models, rank_by, metadata, "
               "created_at) VALUES ('st_q', 'q', '', '[{\"name\":\"iso\"}]', 'iso', '{}', 't') "
               "ON CONFLICT DO NOTHING");
    snprintf(sql, sizeof sql,
             "INSERT INTO candidates (id, study_id, name, metadata, source_kind, source, state, "
             "job_id, created_at) SELECT 'cd_' || i, 'st_q', 'c' || i, '{}', 'model', "
             "'{\"i\":' || i || '}', 'queued', 'jb_' || i, 't' FROM generate_series(1, %d) i; "
             "INSERT INTO jobs (id, kind, study_id, candidate_id, state, created_at) "
             "SELECT 'jb_' || i, 'score', 'st_q', 'cd_' || i, 'queued', 't' "
             "FROM generate_series(1, %d) i ORDER BY i", n, n);
    sql_ok(db, sql);
}

static int setup(void **state)
{
    char *db = pg_test_db_create("queue"); /* first: it leaves the test when there is no server */
    struct fixture *f = calloc(1, sizeof *f);
    f->db = db;
    struct tpv_err err;
    if (pg_pool_open(&f->pool, f->db, NULL, &err) != TPV_OK ||
        schema_pg_migrate(f->pool, NULL, NULL, &err) != TPV_OK) {
        fprintf(stderr, "set-up: %s\n", err.message);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    pg_pool_close(f->pool);
    pg_test_db_drop(f->db);
    free(f);
    return 0;
}

/* ---- three claimers ---- */

#define MAX_JOBS 400

struct claimer {
    const char *db;
    char owner[32];
    pthread_barrier_t *start;
    bool finish_later; /* claim only; finish every job once the queue is drained */
    int got;
    char ids[MAX_JOBS][PG_QUEUE_ID_MAX];
    double latency[MAX_JOBS]; /* seconds per successful claim */
    int rc;
};

static void finish(struct claimer *cl, struct pg_pool *pool, const char *id)
{
    struct tpv_err err;
    int rc = pg_queue_finish(pool, id, cl->owner, "succeeded", NULL, NULL, NULL, &err);
    if (rc != TPV_OK) {
        fprintf(stderr, "%s: finish: %s\n", cl->owner, err.message);
        cl->rc = rc;
    }
}

static void *claimer_main(void *arg)
{
    struct claimer *cl = arg;
    struct pg_pool *pool = NULL;
    struct tpv_err err;
    struct pg_pool_options o = { .size = 2 };
    cl->rc = pg_pool_open(&pool, cl->db, &o, &err);
    pthread_barrier_wait(cl->start);
    while (cl->rc == TPV_OK && cl->got < MAX_JOBS) {
        struct pg_job_claim job;
        double t0 = now_s();
        int rc = pg_queue_claim(pool, cl->owner, 30, &job, &err);
        double t1 = now_s();
        if (rc == TPV_ENOTFOUND)
            break;
        if (rc != TPV_OK) {
            fprintf(stderr, "%s: claim: %s\n", cl->owner, err.message);
            cl->rc = rc;
            break;
        }
        cl->latency[cl->got] = t1 - t0;
        snprintf(cl->ids[cl->got++], PG_QUEUE_ID_MAX, "%s", job.id);
        if (job.attempts != 1 || !job.source || strstr(job.source, "\"i\"") == NULL)
            cl->rc = TPV_EINTERNAL;
        if (!cl->finish_later)
            finish(cl, pool, job.id);
        pg_job_claim_free(&job);
    }
    for (int k = 0; cl->finish_later && cl->rc == TPV_OK && k < cl->got; k++)
        finish(cl, pool, cl->ids[k]);
    pg_pool_close(pool);
    return NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(a, b);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Runs three claimers over the queue until it is empty; checks every job went to exactly one. */
static void run_three(const char *db, int njobs, bool finish_later, struct claimer cl[3])
{
    pthread_barrier_t b;
    pthread_barrier_init(&b, NULL, 3);
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        memset(&cl[i], 0, sizeof cl[i]);
        cl[i].db = db;
        cl[i].start = &b;
        cl[i].finish_later = finish_later;
        snprintf(cl[i].owner, sizeof cl[i].owner, "node-%c/0", 'a' + i);
        assert_int_equal(pthread_create(&th[i], NULL, claimer_main, &cl[i]), 0);
    }
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&b);
    static char all[3 * MAX_JOBS][PG_QUEUE_ID_MAX];
    int total = 0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(cl[i].rc, TPV_OK);
        for (int k = 0; k < cl[i].got; k++)
            memcpy(all[total++], cl[i].ids[k], PG_QUEUE_ID_MAX);
    }
    assert_int_equal(total, njobs);
    qsort(all, (size_t)total, PG_QUEUE_ID_MAX, cmp_str);
    for (int k = 1; k < total; k++)
        if (strcmp(all[k - 1], all[k]) == 0)
            fail_msg("job %s was claimed twice", all[k]);
}

static void test_every_job_claimed_exactly_once(void **state)
{
    struct fixture *f = *state;
    enum { N = 90 };
    make_jobs(f->db, N);
    struct claimer *cl = calloc(3, sizeof *cl);
    run_three(f->db, N, false, cl);
    /* Everybody got work (SKIP LOCKED lets claimers pass each other rather than queue up). */
    int busy = 0;
    for (int i = 0; i < 3; i++)
        busy += cl[i].got > 0;
    assert_true(busy >= 2);
    free(cl);
    assert_int_equal(sql_int(f->db, "SELECT count(*) FROM jobs WHERE state = 'succeeded' AND "
                                    "attempts = 1 AND lease_owner IS NULL"), N);
    assert_int_equal(sql_int(f->db, "SELECT count(*) FROM candidates WHERE state = "
                                    "'succeeded'"), N);
    /* Two version bumps per job (claimed, succeeded) on a study that started at 1. */
    assert_int_equal(sql_int(f->db, "SELECT version FROM studies WHERE id = 'st_q'"), 1 + 2 * N);
}

/* Claim latency of three claimers draining a queue: `finish_later` false is the worst case (jobs
 * that take no time, so claims compete with durable finishes); true has claims compete only with
 * claims, as with jobs that run for a while. */
static void measure_claims(const char *db, int n_jobs, bool finish_later)
{
    make_jobs(db, n_jobs);
    struct claimer *cl = calloc(3, sizeof *cl);
    run_three(db, n_jobs, finish_later, cl);
    static double lat[3 * MAX_JOBS];
    int n = 0;
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < cl[i].got; k++)
            lat[n++] = cl[i].latency[k];
    qsort(lat, (size_t)n, sizeof lat[0], cmp_double);
    double median = lat[n / 2], p99 = lat[(n * 99) / 100];
    printf("pg_queue_claim, 3 competing claimers, %d jobs, %s: median %.3f ms, p99 %.3f ms, "
           "max %.3f ms (claims per claimer %d / %d / %d)\n", n,
           finish_later ? "claims only" : "claim + finish each", median * 1e3, p99 * 1e3,
           lat[n - 1] * 1e3, cl[0].got, cl[1].got, cl[2].got);
    free(cl);
    /* A loose bound: this machine is shared; the figures are for the report. */
    assert_true(median < 0.1);
}

static void test_claim_latency_three_claimers(void **state)
{
    struct fixture *f = *state;
    measure_claims(f->db, 300, true);
    sql_ok(f->db, "DELETE FROM studies");
    measure_claims(f->db, 300, false);
}

/* Another node's store on the fixture's database, for lease expiry as the daemon runs it
 * (store_jobs_requeue_expired, storage/store_pg_jobs.c: the candidate follows, the outbox hears
 * of failures).  Opened before the timed steps: opening migrates and starts a listener. */
struct node_store {
    struct store *st;
    char blobs[32];
};

static void node_store_open(struct node_store *n, const char *db)
{
    char url[512];
    struct tpv_err err;
    snprintf(n->blobs, sizeof n->blobs, "/tmp/tpvd-pgq-XXXXXX");
    assert_non_null(mkdtemp(n->blobs));
    pg_test_db_url(db, url, sizeof url);
    struct store_options o = { .blob_dir = n->blobs };
    if (store_open_url(&n->st, url, &o, &err) != TPV_OK)
        fail_msg("store_open_url: %s", err.message);
}

static void node_store_close(struct node_store *n)
{
    char cmd[64];
    store_close(n->st);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", n->blobs);
    assert_int_equal(system(cmd), 0);
}

static void requeue_expired(struct node_store *n, int max_attempts, int *requeued, int *failed)
{
    struct tpv_err err;
    *requeued = *failed = -1;
    if (store_jobs_requeue_expired(n->st, max_attempts, 0, requeued, failed, &err) != TPV_OK)
        fail_msg("store_jobs_requeue_expired: %s", err.message);
}

static void test_expired_lease_requeued_and_run_elsewhere(void **state)
{
    struct fixture *f = *state;
    make_jobs(f->db, 1);
    struct tpv_err err;
    struct pg_pool *node_b;
    struct node_store nb;
    assert_int_equal(pg_pool_open(&node_b, f->db, NULL, &err), TPV_OK);
    node_store_open(&nb, f->db);

    struct pg_job_claim a, b;
    assert_int_equal(pg_queue_claim(f->pool, "node-a/0", 0.3, &a, &err), TPV_OK);
    assert_string_equal(a.id, "jb_1");
    assert_int_equal(a.attempts, 1);
    /* Claimed: nothing left for node b. */
    assert_int_equal(pg_queue_claim(node_b, "node-b/0", 0.3, &b, &err), TPV_ENOTFOUND);
    bool cancel = true;
    /* Renewed for 1.5 s: long enough that the check below runs inside it on a loaded machine. */
    assert_int_equal(pg_queue_renew(f->pool, a.id, "node-a/0", 0.5, 1.5, &cancel, &err), TPV_OK);
    assert_false(cancel);
    /* Not expired yet: nothing to re-queue. */
    int requeued = -1, failed = -1;
    requeue_expired(&nb, 3, &requeued, &failed);
    assert_int_equal(requeued, 0);
    assert_int_equal(failed, 0);

    /* Node a stops renewing (killed); its lease runs out and node b re-queues and runs it. */
    usleep(1700000);
    requeue_expired(&nb, 3, &requeued, &failed);
    assert_int_equal(requeued, 1);
    assert_int_equal(failed, 0);
    assert_int_equal(sql_int(f->db, "SELECT count(*) FROM candidates WHERE state = 'queued'"), 1);
    assert_int_equal(pg_queue_claim(node_b, "node-b/0", 30, &b, &err), TPV_OK);
    assert_string_equal(b.id, "jb_1");
    assert_int_equal(b.attempts, 2);
    /* The first owner lost it: no renew, no finish, no release. */
    assert_int_equal(pg_queue_renew(f->pool, a.id, "node-a/0", 0.9, 30, &cancel, &err),
                     TPV_EPRECONDITION);
    assert_string_equal(err.field, "job_id");
    assert_int_equal(pg_queue_finish(f->pool, a.id, "node-a/0", "succeeded", NULL, NULL, NULL,
                                     &err), TPV_EPRECONDITION);
    assert_int_equal(pg_queue_release(f->pool, a.id, "node-a/0", &err), TPV_EPRECONDITION);
    assert_int_equal(pg_queue_finish(node_b, b.id, "node-b/0", "succeeded", NULL, NULL,
                                     "{\"ok\":true}", &err), TPV_OK);
    assert_int_equal(sql_int(f->db, "SELECT count(*) FROM jobs WHERE state = 'succeeded' AND "
                                    "attempts = 2 AND result = '{\"ok\":true}'"), 1);
    /* Finished once: a second finish is refused too. */
    assert_int_equal(pg_queue_finish(node_b, b.id, "node-b/0", "failed", "x", "y", NULL, &err),
                     TPV_EPRECONDITION);
    assert_int_equal(pg_queue_finish(node_b, b.id, "node-b/0", "done", NULL, NULL, NULL, &err),
                     TPV_EINVAL);
    pg_job_claim_free(&a);
    pg_job_claim_free(&b);
    pg_pool_close(node_b);
    node_store_close(&nb);
}

static void test_attempts_limit(void **state)
{
    struct fixture *f = *state;
    make_jobs(f->db, 1);
    struct tpv_err err;
    struct pg_job_claim j;
    struct node_store nb;
    int requeued, failed;
    node_store_open(&nb, f->db);
    for (int attempt = 1; attempt <= 2; attempt++) {
        assert_int_equal(pg_queue_claim(f->pool, "node-a/0", 0.2, &j, &err), TPV_OK);
        assert_int_equal(j.attempts, attempt);
        pg_job_claim_free(&j);
        usleep(350000);
        requeue_expired(&nb, 2, &requeued, &failed);
        assert_int_equal(requeued, attempt == 1 ? 1 : 0);
        assert_int_equal(failed, attempt == 2 ? 1 : 0);
    }
    assert_int_equal(pg_queue_claim(f->pool, "node-a/0", 0.2, &j, &err), TPV_ENOTFOUND);
    char *msg = pg_test_sql(f->db, "SELECT state || ' ' || error_code || ': ' || error_message "
                                   "FROM jobs WHERE id = 'jb_1'");
    assert_non_null(msg);
    assert_non_null(strstr(msg, "failed aborted: the job was interrupted 2 times"));
    assert_non_null(strstr(msg, "--max-attempts=2"));
    free(msg);
    assert_int_equal(sql_int(f->db, "SELECT count(*) FROM candidates WHERE state = 'failed'"), 1);
    node_store_close(&nb);
}

static void test_release_and_cancel_flag(void **state)
{
    struct fixture *f = *state;
    make_jobs(f->db, 1);
    struct tpv_err err;
    struct pg_job_claim j;
    assert_int_equal(pg_queue_claim(f->pool, "node-a/0", 30, &j, &err), TPV_OK);
    assert_int_equal(pg_queue_release(f->pool, j.id, "node-a/0", &err), TPV_OK);
    pg_job_claim_free(&j);
    /* The released attempt does not count. */
    assert_int_equal(pg_queue_claim(f->pool, "node-b/0", 30, &j, &err), TPV_OK);
    assert_int_equal(j.attempts, 1);
    sql_ok(f->db, "UPDATE jobs SET cancel_requested = 1 WHERE id = 'jb_1'");
    bool cancel = false;
    assert_int_equal(pg_queue_renew(f->pool, j.id, "node-b/0", 0.2, 30, &cancel, &err), TPV_OK);
    assert_true(cancel);
    assert_int_equal(pg_queue_finish(f->pool, j.id, "node-b/0", "canceled", "canceled",
                                     "canceled by request", NULL, &err), TPV_OK);
    assert_int_equal(sql_int(f->db, "SELECT count(*) FROM candidates WHERE state = 'canceled'"),
                     1);
    pg_job_claim_free(&j);
}

/* ---- every transition reaches the other nodes' listeners ---- */

struct versions {
    pthread_mutex_t lock;
    int64_t last;
    int count;
};

static void on_study(void *ctx, const char *sid, int64_t version)
{
    struct versions *v = ctx;
    if (strcmp(sid, "st_q") != 0)
        return;
    pthread_mutex_lock(&v->lock);
    v->last = version;
    v->count++;
    pthread_mutex_unlock(&v->lock);
}

static void test_transitions_notify(void **state)
{
    struct fixture *f = *state;
    make_jobs(f->db, 1);
    struct versions v = { .lock = PTHREAD_MUTEX_INITIALIZER };
    struct pg_listener_hooks hooks = { .study_changed = on_study, .ctx = &v };
    struct pg_listener *l;
    struct tpv_err err;
    assert_int_equal(pg_listener_start(&l, f->db, &hooks, 0, 0, &err), TPV_OK);
    struct pg_job_claim j;
    assert_int_equal(pg_queue_claim(f->pool, "node-a/0", 30, &j, &err), TPV_OK);
    assert_int_equal(pg_queue_finish(f->pool, j.id, "node-a/0", "succeeded", NULL, NULL, NULL,
                                     &err), TPV_OK);
    pg_job_claim_free(&j);
    for (int i = 0; i < 100; i++) {
        pthread_mutex_lock(&v.lock);
        int n = v.count;
        pthread_mutex_unlock(&v.lock);
        if (n >= 2)
            break;
        usleep(20000);
    }
    pg_listener_stop(l);
    assert_int_equal(v.count, 2);
    assert_int_equal(v.last, 3);
    assert_int_equal(sql_int(f->db, "SELECT version FROM studies WHERE id = 'st_q'"), 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_job_claimed_exactly_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expired_lease_requeued_and_run_elsewhere, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_attempts_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_and_cancel_flag, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transitions_notify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_latency_three_claimers, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
