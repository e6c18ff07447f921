/* store.c: SQLite-backed storage: connection setup and schema migrations (see store.h). */
#include "storage/store.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct store {
    sqlite3 *db;
    pthread_mutex_t lock; /* one connection, serialised; see store_open */
};

/* Migration i brings the schema from user_version i to i+1.  Append only, never edit. */
static const char *const migrations[] = {
    /* 0 -> 1: bookkeeping table; the service tables arrive with the service issue. */
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;",
};
#define MIGRATION_COUNT ((int)(sizeof migrations / sizeof migrations[0]))

static int make_dir(const char *path, struct tpv_err *err)
{
    if (mkdir(path, 0750) == 0 || errno == EEXIST)
        return TPV_OK;
    return tpv_err_set(err, TPV_EIO, "data_dir", "cannot create %s: %s", path, strerror(errno));
}

static int exec_sql(sqlite3 *db, const char *sql, struct tpv_err *err)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        tpv_err_set(err, TPV_EINTERNAL, NULL, "sqlite: %s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return TPV_EINTERNAL;
    }
    return TPV_OK;
}

static int read_user_version(sqlite3 *db)
{
    sqlite3_stmt *stmt = NULL;
    int version = -1;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
        version = sqlite3_column_int(stmt, 0);
    sqlite3_finalize(stmt);
    return version;
}

/* Each step runs in its own transaction together with its user_version bump, so a crash leaves
 * the schema at a whole version. */
static int migrate(sqlite3 *db, struct tpv_err *err)
{
    int version = read_user_version(db);
    if (version < 0)
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "cannot read schema version");
    if (version > MIGRATION_COUNT)
        return tpv_err_set(err, TPV_EPRECONDITION, "data_dir",
                           "database schema version %d is newer than this tpvd (%d)", version,
                           MIGRATION_COUNT);
    for (; version < MIGRATION_COUNT; version++) {
        char bump[64];
        snprintf(bump, sizeof bump, "PRAGMA user_version = %d;", version + 1);
        int rc = exec_sql(db, "BEGIN IMMEDIATE;", err);
        if (rc == TPV_OK)
            rc = exec_sql(db, migrations[version], err);
        if (rc == TPV_OK)
            rc = exec_sql(db, bump, err);
        if (rc == TPV_OK)
            rc = exec_sql(db, "COMMIT;", err);
        if (rc != TPV_OK) {
            sqlite3_exec(db, "ROLLBACK;", NULL, NULL, NULL);
            tpv_err_prefix(err, "migration to schema version %d", version + 1);
            return rc;
        }
    }
    return TPV_OK;
}

int store_open(struct store **out, const char *data_dir, struct tpv_err *err)
{
    char path[PATH_MAX];
    struct store *st;
    int rc;

    *out = NULL;
    rc = make_dir(data_dir, err);
    if (rc != TPV_OK)
        return rc;
    if ((size_t)snprintf(path, sizeof path, "%s/tpvd.db", data_dir) >= sizeof path)
        return tpv_err_set(err, TPV_EINVAL, "data_dir", "data directory path too long");

    st = calloc(1, sizeof *st);
    if (!st)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    pthread_mutex_init(&st->lock, NULL);
    if (sqlite3_open_v2(path, &st->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK) {
        rc = tpv_err_set(err, TPV_EIO, "data_dir", "cannot open %s: %s", path,
                         st->db ? sqlite3_errmsg(st->db) : "out of memory");
        store_close(st);
        return rc;
    }
    sqlite3_busy_timeout(st->db, 5000);
    rc = exec_sql(st->db,
                  "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;", err);
    if (rc == TPV_OK)
        rc = migrate(st->db, err);
    if (rc != TPV_OK) {
        store_close(st);
        return rc;
    }
    *out = st;
    return TPV_OK;
}

void store_close(struct store *st)
{
    if (!st)
        return;
    sqlite3_close(st->db);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

int store_ping(struct store *st, struct tpv_err *err)
{
    int rc = TPV_OK;
    pthread_mutex_lock(&st->lock);
    if (read_user_version(st->db) < 0)
        rc = tpv_err_set(err, TPV_EUNAVAILABLE, NULL, "database not reachable");
    pthread_mutex_unlock(&st->lock);
    return rc;
}

int store_schema_version(struct store *st)
{
    pthread_mutex_lock(&st->lock);
    int v = read_user_version(st->db);
    pthread_mutex_unlock(&st->lock);
    return v;
}
