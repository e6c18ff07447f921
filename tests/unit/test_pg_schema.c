/* test_pg_schema.c: the one list of schema steps (storage/schema_steps.h) and the PostgreSQL
 * migrator (storage/schema_pg.h).  The SQLite texts give exactly the schema store.c's migrations
 * give (while both lists exist); the PostgreSQL texts give the same tables with the same columns
 * in the same order; migrating twice is a no-op; four migrators started at once apply each step
 * once; a database newer than this tpvd is refused; the constraints the service relies on hold. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <sqlite3.h>

#include "storage/pg_conn.h"
#include "storage/schema_pg.h"
#include "storage/schema_steps.h"
#include "storage/store.h"
#include "tests/support/pg_test.h"

/* ---- SQLite side ---- */

/* A temp dir with a database made by store_open (store.c's migrations) at <dir>/data/tpvd.db,
 * and an empty sqlite file to apply the steps to. */
struct sqlite_pair {
    char dir[64];
    sqlite3 *from_store, *from_steps;
};

static void sqlite_pair_open(struct sqlite_pair *p)
{
    snprintf(p->dir, sizeof p->dir, "/tmp/tpvd-schema-XXXXXX");
    assert_non_null(mkdtemp(p->dir));
    char data[96], path[128];
    snprintf(data, sizeof data, "%s/data", p->dir);
    struct store *st;
    struct tpv_err err;
    assert_int_equal(store_open(&st, data, &err), TPV_OK);
    size_t n;
    schema_steps(&n);
    /* Every step store.c knows is in the list (and no more). */
    assert_int_equal(store_schema_version(st), (int)n);
    store_close(st);
    snprintf(path, sizeof path, "%s/tpvd.db", data);
    assert_int_equal(sqlite3_open(path, &p->from_store), SQLITE_OK);
    snprintf(path, sizeof path, "%s/steps.db", p->dir);
    assert_int_equal(sqlite3_open(path, &p->from_steps), SQLITE_OK);
    const struct schema_step *steps = schema_steps(&n);
    for (size_t i = 0; i < n; i++) {
        char *msg = NULL;
        if (sqlite3_exec(p->from_steps, steps[i].sqlite, NULL, NULL, &msg) != SQLITE_OK)
            fail_msg("sqlite step %d: %s", steps[i].version, msg);
    }
}

static void sqlite_pair_close(struct sqlite_pair *p)
{
    sqlite3_close(p->from_store);
    sqlite3_close(p->from_steps);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", p->dir);
    assert_int_equal(system(cmd), 0);
}

/* All rows of a one-column query joined by '\n' into buf. */
static void sqlite_lines(sqlite3 *db, const char *sql, const char *param, char *buf, size_t cap)
{
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    if (param)
        sqlite3_bind_text(s, 1, param, -1, SQLITE_TRANSIENT);
    size_t len = 0;
    buf[0] = '\0';
    while (sqlite3_step(s) == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(s, 0);
        int k = snprintf(buf + len, cap - len, "%s\n", t ? t : "NULL");
        assert_true(k > 0 && (size_t)k < cap - len);
        len += (size_t)k;
    }
    sqlite3_finalize(s);
}

static void test_steps_well_formed(void **state)
{
    (void)state;
    size_t n;
    const struct schema_step *steps = schema_steps(&n);
    assert_true(n >= 3);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(steps[i].version, (int)i + 1);
        assert_true(steps[i].what && *steps[i].what);
        assert_true(steps[i].sqlite && *steps[i].sqlite);
        assert_true(steps[i].postgres && *steps[i].postgres);
    }
}

static void test_sqlite_steps_equal_store_migrations(void **state)
{
    (void)state;
    struct sqlite_pair p;
    sqlite_pair_open(&p);
    static char a[65536], b[65536];
    const char *q = "SELECT type || ' ' || name || ': ' || coalesce(sql, '') FROM sqlite_master "
                    "ORDER BY type, name";
    sqlite_lines(p.from_store, q, NULL, a, sizeof a);
    sqlite_lines(p.from_steps, q, NULL, b, sizeof b);
    assert_true(strlen(a) > 1000);
    assert_string_equal(a, b);
    sqlite_pair_close(&p);
}

/* ---- PostgreSQL side ---- */

struct pg_fixture {
    char *db;
    struct pg_pool *pool;
};

static int pg_setup(void **state)
{
    char *db = pg_test_db_create("schema"); /* first: it leaves the test when there is no server */
    struct pg_fixture *f = calloc(1, sizeof *f);
    f->db = db;
    struct tpv_err err;
    if (pg_pool_open(&f->pool, f->db, NULL, &err) != TPV_OK) {
        fprintf(stderr, "pg_pool_open: %s\n", err.message);
        return -1;
    }
    *state = f;
    return 0;
}

static int pg_teardown(void **state)
{
    struct pg_fixture *f = *state;
    pg_pool_close(f->pool);
    pg_test_db_drop(f->db);
    free(f);
    return 0;
}

/* All rows of a one-column PostgreSQL query with one parameter joined by '\n'. */
static void pg_lines(struct pg_pool *pool, const char *sql, const char *param, char *buf,
                     size_t cap)
{
    struct pg_conn *c;
    struct pg_result *r;
    struct tpv_err err;
    assert_int_equal(pg_pool_acquire(pool, &c, &err), TPV_OK);
    const char *params[] = { param };
    if (pg_exec(c, sql, param ? 1 : 0, params, &r, &err) != TPV_OK)
        fail_msg("%s: %s", sql, err.message);
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < pg_result_rows(r); i++) {
        int k = snprintf(buf + len, cap - len, "%s\n", pg_result_text(r, i, 0));
        assert_true(k > 0 && (size_t)k < cap - len);
        len += (size_t)k;
    }
    pg_result_free(r);
    pg_pool_release(pool, c);
}

static void test_pg_migrate_then_noop(void **state)
{
    struct pg_fixture *f = *state;
    size_t n;
    schema_steps(&n);
    int applied = -1, version = -1;
    struct tpv_err err;
    assert_int_equal(schema_pg_version(f->pool, &version, &err), TPV_OK);
    assert_int_equal(version, 0);
    if (schema_pg_migrate(f->pool, &applied, &version, &err) != TPV_OK)
        fail_msg("migrate: %s", err.message);
    assert_int_equal(applied, (int)n);
    assert_int_equal(version, (int)n);
    assert_int_equal(schema_pg_migrate(f->pool, &applied, &version, &err), TPV_OK);
    assert_int_equal(applied, 0);
    assert_int_equal(version, (int)n);
    assert_int_equal(schema_pg_version(f->pool, &version, &err), TPV_OK);
    assert_int_equal(version, (int)n);
}

/* Same tables, same columns in the same order, on both backends. */
static void test_pg_tables_match_sqlite(void **state)
{
    struct pg_fixture *f = *state;
    struct tpv_err err;
    assert_int_equal(schema_pg_migrate(f->pool, NULL, NULL, &err), TPV_OK);
    struct sqlite_pair p;
    sqlite_pair_open(&p);
    static char lite[8192], pg[8192], lcols[4096], pcols[4096];
    sqlite_lines(p.from_steps, "SELECT name FROM sqlite_master WHERE type = 'table' AND name "
                 "NOT LIKE 'sqlite_%' ORDER BY name", NULL, lite, sizeof lite);
    pg_lines(f->pool, "SELECT table_name FROM information_schema.tables WHERE table_schema = "
             "'public' AND table_name <> 'schema_version' ORDER BY table_name COLLATE \"C\"",
             NULL, pg, sizeof pg);
    assert_string_equal(lite, pg);
    for (char *t = lite, *nl; (nl = strchr(t, '\n')); t = nl + 1) {
        *nl = '\0';
        sqlite_lines(p.from_steps, "SELECT name FROM pragma_table_info(?1) ORDER BY cid", t,
                     lcols, sizeof lcols);
        pg_lines(f->pool, "SELECT column_name FROM information_schema.columns WHERE "
                 "table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position", t,
                 pcols, sizeof pcols);
        if (strcmp(lcols, pcols) != 0)
            fail_msg("table %s: sqlite columns\n%s differ from postgres\n%s", t, lcols, pcols);
    }
    sqlite_pair_close(&p);
}

struct migrator {
    const char *db;
    pthread_barrier_t *barrier;
    int applied, version, rc;
};

static void *migrator_main(void *arg)
{
    struct migrator *m = arg;
    struct pg_pool *pool;
    struct tpv_err err;
    struct pg_pool_options o = { .size = 1 };
    m->rc = pg_pool_open(&pool, m->db, &o, &err);
    pthread_barrier_wait(m->barrier);
    if (m->rc == TPV_OK)
        m->rc = schema_pg_migrate(pool, &m->applied, &m->version, &err);
    if (m->rc != TPV_OK)
        fprintf(stderr, "migrator: %s\n", err.message);
    pg_pool_close(pool);
    return NULL;
}

static void test_pg_concurrent_migrators_apply_once(void **state)
{
    struct pg_fixture *f = *state;
    size_t n;
    schema_steps(&n);
    enum { K = 4 };
    pthread_barrier_t b;
    pthread_barrier_init(&b, NULL, K);
    struct migrator m[K];
    pthread_t th[K];
    for (int i = 0; i < K; i++) {
        m[i] = (struct migrator){ .db = f->db, .barrier = &b };
        assert_int_equal(pthread_create(&th[i], NULL, migrator_main, &m[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < K; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(m[i].rc, TPV_OK);
        assert_int_equal(m[i].version, (int)n);
        total += m[i].applied;
    }
    pthread_barrier_destroy(&b);
    assert_int_equal(total, (int)n);
}

static void test_pg_newer_schema_refused(void **state)
{
    struct pg_fixture *f = *state;
    struct tpv_err err;
    assert_int_equal(schema_pg_migrate(f->pool, NULL, NULL, &err), TPV_OK);
    char *r = pg_test_sql(f->db, "UPDATE schema_version SET version = version + 1");
    assert_non_null(r);
    free(r);
    int applied = -1;
    assert_int_equal(schema_pg_migrate(f->pool, &applied, NULL, &err), TPV_EPRECONDITION);
    assert_string_equal(err.field, "database");
    assert_non_null(strstr(err.message, "newer than this tpvd"));
    assert_int_equal(applied, 0);
}

static int exec_params(struct pg_pool *pool, const char *sql, int n, const char *const *params)
{
    struct pg_conn *c;
    struct tpv_err err;
    assert_int_equal(pg_pool_acquire(pool, &c, &err), TPV_OK);
    int rc = pg_exec(c, sql, n, params, NULL, &err);
    pg_pool_release(pool, c);
    return rc;
}

/* The translated constraints: unique candidate names per study, checks, cascades, seq order. */
static void test_pg_constraints_hold(void **state)
{
    struct pg_fixture *f = *state;
    struct tpv_err err;
    assert_int_equal(schema_pg_migrate(f->pool, NULL, NULL, &err), TPV_OK);
    const char *study = "INSERT INTO studies (id, name, description, noise_models, rank_by, "
                        "metadata, created_at) VALUES ($1, 'n', '', '[]', 'iso', '{}', 't')";
    const char *s1[] = { "st_1" }, *s2[] = { "st_2" };
    assert_int_equal(exec_params(f->pool, study, 1, s1), TPV_OK);
    assert_int_equal(exec_params(f->pool, study, 1, s2), TPV_OK);
    assert_int_equal(exec_params(f->pool, study, 1, s1), TPV_EEXIST);
    const char *cand = "INSERT INTO candidates (id, study_id, name, metadata, source_kind, source, "
                       "state, created_at) VALUES ($1, $2, $3, '{}', $4, '{}', 'queued', 't')";
    const char *c1[] = { "cd_1", "st_1", "a", "model" }, *c2[] = { "cd_2", "st_1", "a", "model" },
               *c3[] = { "cd_3", "st_2", "a", "jacobian" }, *c4[] = { "cd_4", "st_2", "b", "x" },
               *c5[] = { "cd_5", "st_9", "c", "model" };
    assert_int_equal(exec_params(f->pool, cand, 4, c1), TPV_OK);
    assert_int_equal(exec_params(f->pool, cand, 4, c2), TPV_EEXIST);   /* name taken */
    assert_int_equal(exec_params(f->pool, cand, 4, c3), TPV_OK);       /* other study */
    assert_int_equal(exec_params(f->pool, cand, 4, c4), TPV_EINVAL);   /* source_kind check */
    assert_int_equal(exec_params(f->pool, cand, 4, c5), TPV_ENOTFOUND); /* no such study */
    static char buf[256];
    pg_lines(f->pool, "SELECT string_agg(id, ',' ORDER BY seq) FROM candidates", NULL, buf,
             sizeof buf);
    assert_string_equal(buf, "cd_1,cd_3\n");
    const char *job = "INSERT INTO jobs (id, kind, study_id, candidate_id, state, created_at) "
                      "VALUES ('jb_1', 'score', 'st_1', 'cd_1', 'queued', 't')";
    assert_int_equal(exec_params(f->pool, job, 0, NULL), TPV_OK);
    assert_int_equal(exec_params(f->pool, "DELETE FROM studies WHERE id = $1", 1, s1), TPV_OK);
    pg_lines(f->pool, "SELECT (SELECT count(*) FROM candidates) || ' ' || "
             "(SELECT count(*) FROM jobs)", NULL, buf, sizeof buf);
    assert_string_equal(buf, "1 0\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_steps_well_formed),
        cmocka_unit_test(test_sqlite_steps_equal_store_migrations),
        cmocka_unit_test_setup_teardown(test_pg_migrate_then_noop, pg_setup, pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_tables_match_sqlite, pg_setup, pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_concurrent_migrators_apply_once, pg_setup,
                                        pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_newer_schema_refused, pg_setup, pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_constraints_hold, pg_setup, pg_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
