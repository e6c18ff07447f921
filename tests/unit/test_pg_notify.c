/* test_pg_notify.c: study-version notifications (storage/pg_notify.h) on the real test server: a
 * NOTIFY committed on another connection reaches the callback, a rolled-back one never does,
 * malformed payloads are dropped, and after `pg_ctl restart` the listener re-subscribes by itself
 * (resubscribed hook) and notifications arrive again.
 * Restarts the shared test server: meson runs it alone (is_parallel: false). */
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
#include "tests/support/pg_test.h"

struct seen {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    char last_sid[64];
    int64_t last_version;
    int count;
    int resubscribed;
};

static void on_study(void *ctx, const char *sid, int64_t version)
{
    struct seen *s = ctx;
    pthread_mutex_lock(&s->lock);
    snprintf(s->last_sid, sizeof s->last_sid, "%s", sid);
    s->last_version = version;
    s->count++;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void on_resubscribed(void *ctx)
{
    struct seen *s = ctx;
    pthread_mutex_lock(&s->lock);
    s->resubscribed++;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* Waits until *field reaches `want` or `seconds` pass; returns the value then. */
static int wait_for(struct seen *s, const int *field, int want, double seconds)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)seconds;
    until.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->lock);
    while (*field < want && pthread_cond_timedwait(&s->cond, &s->lock, &until) == 0) {
    }
    int v = *field;
    pthread_mutex_unlock(&s->lock);
    return v;
}

struct note {
    const char *sid;
    int64_t version;
    bool commit;
};

static int notify_body(struct pg_conn *c, void *ctx, struct tpv_err *err)
{
    const struct note *n = ctx;
    int rc = pg_notify_study(c, n->sid, n->version, err);
    return rc != TPV_OK ? rc : n->commit ? TPV_OK : TPV_ECANCELED;
}

static void send_note(struct pg_pool *p, const char *sid, int64_t version, bool commit)
{
    struct note n = { sid, version, commit };
    struct tpv_err err;
    int rc = pg_tx_run(p, PG_READ_COMMITTED, notify_body, &n, &err);
    if (rc != (commit ? TPV_OK : TPV_ECANCELED))
        fail_msg("notify: %s", err.message);
}

static void test_parse(void **state)
{
    (void)state;
    char sid[32];
    int64_t v;
    assert_int_equal(pg_notify_parse("st_0123456789abcdef:42", sid, sizeof sid, &v), TPV_OK);
    assert_string_equal(sid, "st_0123456789abcdef");
    assert_int_equal(v, 42);
    const char *bad[] = { "", ":1", "st_x:", "st_x:0", "st_x:-3", "st_x:1a", "st x:1",
                          "st_x", "st_x:99999999999999999999",
                          "a_very_long_study_identifier_that_does_not_fit:1", NULL };
    for (int i = 0; bad[i]; i++)
        assert_int_equal(pg_notify_parse(bad[i], sid, sizeof sid, &v), TPV_EINVAL);
}

static void test_notify_reaches_listener_and_survives_restart(void **state)
{
    (void)state;
    char *db = pg_test_db_create("notify");
    struct seen s = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
    struct pg_listener_hooks hooks = { .study_changed = on_study,
                                       .resubscribed = on_resubscribed, .ctx = &s };
    struct pg_listener *l;
    struct pg_pool *p;
    struct tpv_err err;
    assert_int_equal(pg_listener_start(&l, db, &hooks, 50, 500, &err), TPV_OK);
    struct pg_pool_options o = { .size = 2, .backoff_min_ms = 50, .backoff_max_ms = 500 };
    assert_int_equal(pg_pool_open(&p, db, &o, &err), TPV_OK);

    send_note(p, "st_aaaa", 7, true);
    assert_int_equal(wait_for(&s, &s.count, 1, 5), 1);
    assert_string_equal(s.last_sid, "st_aaaa");
    assert_int_equal(s.last_version, 7);

    /* A rolled-back transaction notifies nobody; a malformed payload is counted, not passed. */
    send_note(p, "st_bbbb", 8, false);
    struct pg_conn *c;
    assert_int_equal(pg_pool_acquire(p, &c, &err), TPV_OK);
    assert_int_equal(pg_notify_send(c, PG_NOTIFY_CHANNEL, "garbage", &err), TPV_OK);
    pg_pool_release(p, c);
    send_note(p, "st_cccc", 9, true);
    assert_int_equal(wait_for(&s, &s.count, 2, 5), 2);
    assert_string_equal(s.last_sid, "st_cccc");
    struct pg_listener_stats ls;
    pg_listener_stats(l, &ls);
    assert_int_equal(ls.received, 2);
    assert_int_equal(ls.malformed, 1);

    /* The server restarts under the listener: it reconnects, LISTENs again, says so. */
    assert_int_equal(pg_test_server("restart"), 0);
    assert_int_equal(wait_for(&s, &s.resubscribed, 1, 10), 1);
    send_note(p, "st_dddd", 10, true);
    assert_int_equal(wait_for(&s, &s.count, 3, 5), 3);
    assert_string_equal(s.last_sid, "st_dddd");
    assert_int_equal(s.last_version, 10);
    pg_listener_stats(l, &ls);
    assert_int_equal(ls.reconnects, 1);

    pg_pool_close(p);
    pg_listener_stop(l);
    pg_test_db_drop(db);
}

static void test_listener_needs_a_server(void **state)
{
    (void)state;
    struct pg_listener *l = NULL;
    struct tpv_err err;
    assert_int_equal(pg_listener_start(&l, "postgresql:///x?host=/nonexistent-dir", NULL, 0, 0,
                                       &err), TPV_EUNAVAILABLE);
    assert_null(l);
    pg_listener_stop(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_notify_reaches_listener_and_survives_restart),
        cmocka_unit_test(test_listener_needs_a_server),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
