/* test_pg_conn.c: the PostgreSQL connection pool (storage/pg_conn.h) against the real test server:
 * parameters stay values, SQLSTATEs map to tpv codes, acquire times out, a forgotten transaction
 * is rolled back on release, serialization failures and deadlocks are retried, a server restart
 * is invisible to the next transaction, and while the server is down every call fails fast with
 * TPV_EUNAVAILABLE and the pool recovers by itself once it is back.
 * Stops and restarts the shared test server: meson runs it alone (is_parallel: false). */
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

static int setup(void **state)
{
    char *db = pg_test_db_create("conn"); /* first: it leaves the test when there is no server */
    struct fixture *f = calloc(1, sizeof *f);
    f->db = db;
    struct pg_pool_options o = { .size = 4, .acquire_timeout_ms = 2000, .backoff_min_ms = 50,
                                 .backoff_max_ms = 400 };
    struct tpv_err err;
    if (pg_pool_open(&f->pool, f->db, &o, &err) != TPV_OK) {
        fprintf(stderr, "pg_pool_open: %s\n", err.message);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    /* Whatever a test did to the shared server, the next tests find it running. */
    if (pg_test_server("up") != 0)
        return -1;
    pg_pool_close(f->pool);
    pg_test_db_drop(f->db);
    free(f);
    return 0;
}

/* Runs sql (no parameters) on a lent connection; asserts success. */
static void exec_ok(struct pg_pool *p, const char *sql)
{
    struct pg_conn *c;
    struct tpv_err err;
    assert_int_equal(pg_pool_acquire(p, &c, &err), TPV_OK);
    if (pg_exec(c, sql, 0, NULL, NULL, &err) != TPV_OK)
        fail_msg("%s: %s", sql, err.message);
    pg_pool_release(p, c);
}

static int64_t query_int(struct pg_pool *p, const char *sql)
{
    struct pg_conn *c;
    struct pg_result *r;
    struct tpv_err err;
    assert_int_equal(pg_pool_acquire(p, &c, &err), TPV_OK);
    if (pg_exec(c, sql, 0, NULL, &r, &err) != TPV_OK)
        fail_msg("%s: %s", sql, err.message);
    assert_int_equal(pg_result_rows(r), 1);
    int64_t v = pg_result_int64(r, 0, 0);
    pg_result_free(r);
    pg_pool_release(p, c);
    return v;
}

static void test_parameters_are_values(void **state)
{
    struct fixture *f = *state;
    struct pg_conn *c;
    struct pg_result *r;
    struct tpv_err err;
    assert_int_equal(pg_pool_acquire(f->pool, &c, &err), TPV_OK);
    const char *evil = "x'); DROP TABLE IF EXISTS t; --";
    const char *params[] = { evil, "41", NULL };
    assert_int_equal(pg_exec(c, "SELECT $1::text, $2::bigint + 1, $3::text IS NULL, 0.25::float8",
                             3, params, &r, &err), TPV_OK);
    assert_int_equal(pg_result_rows(r), 1);
    assert_string_equal(pg_result_text(r, 0, 0), evil);
    assert_int_equal(pg_result_int64(r, 0, 1), 42);
    assert_string_equal(pg_result_text(r, 0, 2), "t");
    assert_true(pg_result_double(r, 0, 3) == 0.25);
    pg_result_free(r);
    /* NULL comes back as NULL, not as "". */
    assert_int_equal(pg_exec(c, "SELECT NULL::text", 0, NULL, &r, &err), TPV_OK);
    assert_true(pg_result_null(r, 0, 0));
    assert_null(pg_result_strdup(r, 0, 0));
    pg_result_free(r);
    pg_pool_release(f->pool, c);
}

static void test_sqlstate_mapping(void **state)
{
    struct fixture *f = *state;
    exec_ok(f->pool, "CREATE TABLE u (k text PRIMARY KEY, v int CHECK (v > 0))");
    exec_ok(f->pool, "CREATE TABLE child (k text REFERENCES u(k))");
    struct pg_conn *c;
    struct pg_result *r;
    struct tpv_err err;
    assert_int_equal(pg_pool_acquire(f->pool, &c, &err), TPV_OK);
    const char *p1[] = { "a", "1" };
    assert_int_equal(pg_exec(c, "INSERT INTO u VALUES ($1, $2)", 2, p1, &r, &err), TPV_OK);
    assert_int_equal(pg_result_affected(r), 1);
    pg_result_free(r);
    assert_int_equal(pg_exec(c, "INSERT INTO u VALUES ($1, $2)", 2, p1, NULL, &err), TPV_EEXIST);
    assert_string_equal(pg_conn_sqlstate(c), "23505");
    const char *p2[] = { "b", "-1" };
    assert_int_equal(pg_exec(c, "INSERT INTO u VALUES ($1, $2)", 2, p2, NULL, &err), TPV_EINVAL);
    assert_string_equal(pg_conn_sqlstate(c), "23514");
    assert_int_equal(pg_exec(c, "INSERT INTO child VALUES ($1)", 1, p2, NULL, &err),
                     TPV_ENOTFOUND);
    assert_int_equal(pg_exec(c, "SELEC 1", 0, NULL, NULL, &err), TPV_EINTERNAL);
    assert_string_equal(pg_conn_sqlstate(c), "42601");
    assert_non_null(strstr(err.message, "syntax error"));
    assert_false(pg_conn_retryable(c));
    /* A success clears the state. */
    assert_int_equal(pg_exec(c, "SELECT 1", 0, NULL, NULL, &err), TPV_OK);
    assert_string_equal(pg_conn_sqlstate(c), "");
    pg_pool_release(f->pool, c);
}

static void test_open_refusals(void **state)
{
    (void)state;
    struct pg_pool *p = NULL;
    struct tpv_err err;
    assert_int_equal(pg_pool_open(&p, "postgresql://[bad", NULL, &err), TPV_EINVAL);
    assert_null(p);
    assert_string_equal(err.field, "database");
    assert_int_equal(pg_pool_open(&p, "postgresql:///x?host=/nonexistent-dir", NULL, &err),
                     TPV_EUNAVAILABLE);
    assert_null(p);
    assert_non_null(strstr(err.message, "database unavailable"));
}

/* The pool's connect defaults (application_name, connect_timeout, keepalives) yield to what the
 * conninfo says. */
static void test_conninfo_settings_win(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    struct pg_conn *c;
    struct pg_result *r;
    assert_int_equal(pg_pool_acquire(f->pool, &c, &err), TPV_OK);
    assert_int_equal(pg_exec(c, "SHOW application_name", 0, NULL, &r, &err), TPV_OK);
    assert_string_equal(pg_result_text(r, 0, 0), "tpvd");
    pg_result_free(r);
    pg_pool_release(f->pool, c);

    char conninfo[1200];
    snprintf(conninfo, sizeof conninfo, "%s application_name='mine'", f->db);
    struct pg_pool *p;
    assert_int_equal(pg_pool_open(&p, conninfo, NULL, &err), TPV_OK);
    assert_int_equal(pg_pool_acquire(p, &c, &err), TPV_OK);
    assert_int_equal(pg_exec(c, "SHOW application_name", 0, NULL, &r, &err), TPV_OK);
    assert_string_equal(pg_result_text(r, 0, 0), "mine");
    pg_result_free(r);
    pg_pool_release(p, c);
    pg_pool_close(p);
}

static void test_acquire_timeout(void **state)
{
    struct fixture *f = *state;
    struct pg_pool *p;
    struct tpv_err err;
    struct pg_pool_options o = { .size = 1, .acquire_timeout_ms = 200 };
    assert_int_equal(pg_pool_open(&p, f->db, &o, &err), TPV_OK);
    struct pg_conn *c1, *c2;
    assert_int_equal(pg_pool_acquire(p, &c1, &err), TPV_OK);
    double t0 = now_s();
    assert_int_equal(pg_pool_acquire(p, &c2, &err), TPV_EUNAVAILABLE);
    double waited = now_s() - t0;
    assert_true(waited >= 0.18 && waited < 2.0);
    assert_non_null(strstr(err.message, "no database connection free"));
    pg_pool_release(p, c1);
    assert_int_equal(pg_pool_acquire(p, &c2, &err), TPV_OK);
    pg_pool_release(p, c2);
    pg_pool_close(p);
}

static void test_release_rolls_back(void **state)
{
    struct fixture *f = *state;
    exec_ok(f->pool, "CREATE TABLE r (k int)");
    struct pg_pool *p;
    struct tpv_err err;
    struct pg_pool_options o = { .size = 1 };
    assert_int_equal(pg_pool_open(&p, f->db, &o, &err), TPV_OK);
    struct pg_conn *c;
    assert_int_equal(pg_pool_acquire(p, &c, &err), TPV_OK);
    assert_int_equal(pg_tx_begin(c, PG_READ_COMMITTED, &err), TPV_OK);
    assert_int_equal(pg_exec(c, "INSERT INTO r VALUES (1)", 0, NULL, NULL, &err), TPV_OK);
    pg_pool_release(p, c); /* no commit */
    assert_int_equal(query_int(p, "SELECT count(*) FROM r"), 0);
    pg_pool_close(p);
}

/* ---- retried transactions ---- */

struct rmw {
    pthread_barrier_t *barrier; /* met once, on the first run of each body */
    int runs;
};

/* Read-modify-write of one counter: two of these meeting at the barrier conflict. */
static int increment_body(struct pg_conn *c, void *ctx, struct tpv_err *err)
{
    struct rmw *m = ctx;
    struct pg_result *r;
    int rc = pg_exec(c, "SELECT n FROM counter WHERE id = 1", 0, NULL, &r, err);
    if (rc != TPV_OK)
        return rc;
    char next[32];
    snprintf(next, sizeof next, "%lld", (long long)pg_result_int64(r, 0, 0) + 1);
    pg_result_free(r);
    if (m->barrier && m->runs++ == 0)
        pthread_barrier_wait(m->barrier);
    const char *params[] = { next };
    return pg_exec(c, "UPDATE counter SET n = $1 WHERE id = 1", 1, params, NULL, err);
}

struct tx_thread {
    struct pg_pool *pool;
    enum pg_isolation iso;
    pg_tx_fn fn;
    struct rmw m;
    int loops;
    int rc;
};

static void *tx_thread_main(void *arg)
{
    struct tx_thread *t = arg;
    struct tpv_err err;
    t->rc = TPV_OK;
    for (int i = 0; i < t->loops && t->rc == TPV_OK; i++) {
        t->rc = pg_tx_run(t->pool, t->iso, t->fn, &t->m, &err);
        if (t->rc != TPV_OK)
            fprintf(stderr, "pg_tx_run: %s\n", err.message);
    }
    return NULL;
}

static void run_threads(struct tx_thread *t, int n)
{
    pthread_t th[8];
    for (int i = 0; i < n; i++)
        assert_int_equal(pthread_create(&th[i], NULL, tx_thread_main, &t[i]), 0);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < n; i++) /* after every join: a failed assert leaves the function */
        assert_int_equal(t[i].rc, TPV_OK);
}

static void test_serialization_failure_retried(void **state)
{
    struct fixture *f = *state;
    exec_ok(f->pool, "CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL)");
    exec_ok(f->pool, "INSERT INTO counter VALUES (1, 0)");
    pthread_barrier_t b;
    pthread_barrier_init(&b, NULL, 2);
    struct tx_thread t[2] = {
        { .pool = f->pool, .iso = PG_SERIALIZABLE, .fn = increment_body, .m = { &b, 0 },
          .loops = 1 },
        { .pool = f->pool, .iso = PG_SERIALIZABLE, .fn = increment_body, .m = { &b, 0 },
          .loops = 1 },
    };
    struct pg_pool_stats before, after;
    pg_pool_stats(f->pool, &before);
    run_threads(t, 2);
    pthread_barrier_destroy(&b);
    pg_pool_stats(f->pool, &after);
    /* Both read 0 and wrote 1: the second writer got 40001 and ran again on the new value. */
    assert_int_equal(query_int(f->pool, "SELECT n FROM counter"), 2);
    assert_true(after.tx_retries - before.tx_retries >= 1);
    assert_int_equal(t[0].m.runs + t[1].m.runs, 3);

    /* Many competing increments of one hot row, none lost.  Four writers on one row conflict on
     * nearly every run (more so under sanitizers): the attempt budget is raised for this pool. */
    struct pg_pool *hot;
    struct tpv_err err;
    struct pg_pool_options o = { .size = 4, .tx_attempts = 200 };
    assert_int_equal(pg_pool_open(&hot, f->db, &o, &err), TPV_OK);
    struct tx_thread many[4];
    for (int i = 0; i < 4; i++)
        many[i] = (struct tx_thread){ .pool = hot, .iso = PG_SERIALIZABLE,
                                      .fn = increment_body, .loops = 10 };
    run_threads(many, 4);
    pg_pool_close(hot);
    assert_int_equal(query_int(f->pool, "SELECT n FROM counter"), 2 + 4 * 10);
}

struct lock_order {
    pthread_barrier_t *barrier;
    int first, second;
    int runs;
};

static int two_rows_body(struct pg_conn *c, void *ctx, struct tpv_err *err)
{
    struct lock_order *o = ctx;
    char a[8], b[8];
    snprintf(a, sizeof a, "%d", o->first);
    snprintf(b, sizeof b, "%d", o->second);
    const char *pa[] = { a }, *pb[] = { b };
    int rc = pg_exec(c, "UPDATE counter SET n = n + 1 WHERE id = $1", 1, pa, NULL, err);
    if (rc == TPV_OK && o->runs++ == 0)
        pthread_barrier_wait(o->barrier);
    if (rc == TPV_OK)
        rc = pg_exec(c, "UPDATE counter SET n = n + 1 WHERE id = $1", 1, pb, NULL, err);
    return rc;
}

struct deadlock_thread {
    struct pg_pool *pool;
    struct lock_order o;
    int rc;
};

static void *deadlock_main(void *arg)
{
    struct deadlock_thread *t = arg;
    struct tpv_err err;
    t->rc = pg_tx_run(t->pool, PG_READ_COMMITTED, two_rows_body, &t->o, &err);
    return NULL;
}

static void test_deadlock_retried(void **state)
{
    struct fixture *f = *state;
    exec_ok(f->pool, "CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL)");
    exec_ok(f->pool, "INSERT INTO counter VALUES (1, 0), (2, 0)");
    pthread_barrier_t b;
    pthread_barrier_init(&b, NULL, 2);
    struct deadlock_thread t[2] = {
        { .pool = f->pool, .o = { &b, 1, 2, 0 } },
        { .pool = f->pool, .o = { &b, 2, 1, 0 } },
    };
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, deadlock_main, &t[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&b);
    assert_int_equal(t[0].rc, TPV_OK);
    assert_int_equal(t[1].rc, TPV_OK);
    /* One of them was the deadlock victim (40P01) and ran again: each row got both increments. */
    assert_int_equal(t[0].o.runs + t[1].o.runs, 3);
    assert_int_equal(query_int(f->pool, "SELECT sum(n) FROM counter WHERE n = 2"), 4);
}

/* ---- the server goes away ---- */

static int select_one_body(struct pg_conn *c, void *ctx, struct tpv_err *err)
{
    (void)ctx;
    return pg_exec(c, "SELECT 1", 0, NULL, NULL, err);
}

/* First run: insert, then the backend dies (terminated) before COMMIT; the rerun commits. */
static int dies_once_body(struct pg_conn *c, void *ctx, struct tpv_err *err)
{
    int *runs = ctx;
    int rc = pg_exec(c, "INSERT INTO once VALUES (1)", 0, NULL, NULL, err);
    if (rc == TPV_OK && (*runs)++ == 0)
        rc = pg_exec(c, "SELECT pg_terminate_backend(pg_backend_pid())", 0, NULL, NULL, err);
    return rc;
}

static void test_connection_lost_before_commit_is_retried(void **state)
{
    struct fixture *f = *state;
    exec_ok(f->pool, "CREATE TABLE once (k int)");
    struct tpv_err err;
    int runs = 0;
    int rc = pg_tx_run(f->pool, PG_READ_COMMITTED, dies_once_body, &runs, &err);
    if (rc != TPV_OK)
        fail_msg("pg_tx_run: %s", err.message);
    assert_int_equal(runs, 2);
    /* The first run's insert died with its session: one row. */
    assert_int_equal(query_int(f->pool, "SELECT count(*) FROM once"), 1);
}

static void test_restart_is_invisible(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    /* Every pooled connection is open and idle when the server goes away. */
    struct pg_conn *c[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pg_pool_acquire(f->pool, &c[i], &err), TPV_OK);
    for (int i = 0; i < 4; i++)
        pg_pool_release(f->pool, c[i]);
    assert_int_equal(pg_test_server("restart"), 0);
    for (int i = 0; i < 8; i++) {
        int rc = pg_tx_run(f->pool, PG_READ_COMMITTED, select_one_body, NULL, &err);
        if (rc != TPV_OK)
            fail_msg("transaction %d after a restart: %s", i, err.message);
    }
}

static void test_outage_fails_fast_and_recovers(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    exec_ok(f->pool, "SELECT 1");
    assert_int_equal(pg_test_server("down"), 0);
    for (int i = 0; i < 20; i++) {
        double t0 = now_s();
        int rc = pg_tx_run(f->pool, PG_READ_COMMITTED, select_one_body, NULL, &err);
        double took = now_s() - t0;
        if (rc != TPV_EUNAVAILABLE)
            fail_msg("call %d while the server is down: rc %d (%s)", i, rc, err.message);
        assert_true(took < 1.5);
        usleep(20000);
    }
    assert_non_null(strstr(err.message, "database"));
    struct pg_pool_stats st;
    pg_pool_stats(f->pool, &st);
    assert_true(st.down);
    assert_true(st.connect_failures >= 2);
    uint64_t connects = st.connects;

    assert_int_equal(pg_test_server("up"), 0);
    double t0 = now_s();
    int rc;
    while ((rc = pg_tx_run(f->pool, PG_READ_COMMITTED, select_one_body, NULL, &err)) != TPV_OK &&
           now_s() - t0 < 10)
        usleep(50000);
    if (rc != TPV_OK)
        fail_msg("no recovery within 10 s of the server coming back: %s", err.message);
    /* Within the backoff cap of the server being back. */
    assert_true(now_s() - t0 < 2.0);
    pg_pool_stats(f->pool, &st);
    assert_false(st.down);
    assert_true(st.connects > connects);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_parameters_are_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sqlstate_mapping, setup, teardown),
        cmocka_unit_test(test_open_refusals),
        cmocka_unit_test_setup_teardown(test_conninfo_settings_win, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acquire_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_rolls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_serialization_failure_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadlock_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_lost_before_commit_is_retried, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_restart_is_invisible, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outage_fails_fast_and_recovers, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
