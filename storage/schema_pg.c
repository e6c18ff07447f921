/* schema_pg.c: the PostgreSQL migrator (see schema_pg.h): advisory lock, one transaction per
 * step with its version bump. */
#include "storage/schema_pg.h"

#include <stdio.h>
#include <stdlib.h>

#include "storage/schema_steps.h"

static const char version_table[] =
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  version INTEGER NOT NULL);"
    "INSERT INTO schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;";

static int read_version(struct pg_conn *c, int *version, struct tpv_err *err)
{
    struct pg_result *r;
    int rc = pg_exec(c, "SELECT version FROM schema_version WHERE id = 1", 0, NULL, &r, err);
    if (rc != TPV_OK)
        return rc;
    *version = pg_result_rows(r) == 1 ? (int)pg_result_int64(r, 0, 0) : 0;
    pg_result_free(r);
    return TPV_OK;
}

static int apply_step(struct pg_conn *c, const struct schema_step *s, struct tpv_err *err)
{
    char v[16];
    snprintf(v, sizeof v, "%d", s->version);
    const char *params[] = { v };
    int rc = pg_tx_begin(c, PG_READ_COMMITTED, err);
    if (rc == TPV_OK)
        rc = pg_exec_script(c, s->postgres, err);
    if (rc == TPV_OK)
        rc = pg_exec(c, "UPDATE schema_version SET version = $1 WHERE id = 1", 1, params, NULL,
                     err);
    if (rc == TPV_OK)
        rc = pg_tx_commit(c, err);
    if (rc != TPV_OK) {
        pg_tx_rollback(c);
        tpv_err_prefix(err, "schema step %d (%s)", s->version, s->what);
    }
    return rc;
}

/* Under the advisory lock: version table, then every missing step. */
static int migrate_locked(struct pg_conn *c, int *applied, int *version, struct tpv_err *err)
{
    size_t n;
    const struct schema_step *steps = schema_steps(&n);
    int rc = pg_exec_script(c, version_table, err);
    if (rc == TPV_OK)
        rc = read_version(c, version, err);
    if (rc != TPV_OK)
        return rc;
    if (*version > (int)n)
        return tpv_err_set(err, TPV_EPRECONDITION, "database",
                           "database schema version %d is newer than this tpvd (%zu)", *version,
                           n);
    for (size_t i = (size_t)*version; i < n; i++) {
        rc = apply_step(c, &steps[i], err);
        if (rc != TPV_OK)
            return rc;
        *version = steps[i].version;
        ++*applied;
    }
    return TPV_OK;
}

int schema_pg_migrate(struct pg_pool *pool, int *applied, int *version, struct tpv_err *err)
{
    int napplied = 0, v = 0;
    struct pg_conn *c;
    int rc = pg_pool_acquire(pool, &c, err);
    if (rc != TPV_OK)
        return rc;
    const char *key[] = { PG_SCHEMA_LOCK_KEY };
    rc = pg_exec(c, "SELECT pg_advisory_lock($1::bigint)", 1, key, NULL, err);
    if (rc == TPV_OK) {
        rc = migrate_locked(c, &napplied, &v, err);
        struct tpv_err ignored;
        pg_exec(c, "SELECT pg_advisory_unlock($1::bigint)", 1, key, NULL, &ignored);
    }
    pg_pool_release(pool, c);
    if (applied)
        *applied = napplied;
    if (version)
        *version = v;
    return rc;
}

int schema_pg_version(struct pg_pool *pool, int *version, struct tpv_err *err)
{
    *version = 0;
    struct pg_conn *c;
    int rc = pg_pool_acquire(pool, &c, err);
    if (rc != TPV_OK)
        return rc;
    struct pg_result *r;
    rc = pg_exec(c, "SELECT to_regclass('schema_version') IS NOT NULL", 0, NULL, &r, err);
    bool exists = rc == TPV_OK && pg_result_rows(r) == 1 &&
                  pg_result_text(r, 0, 0)[0] == 't';
    pg_result_free(r);
    if (rc == TPV_OK && exists)
        rc = read_version(c, version, err);
    pg_pool_release(pool, c);
    return rc;
}
