/* store_sqlite.c: SQLite backend of storage/: opening (the folder lock), the connection pool,
 * schema migrations, idempotency keys and statistics (schema design: DESIGN.md sections 2, 5, 6).
 * Studies and candidates live in store_sqlite_studies.c, the job queue in store_sqlite_queue.c,
 * the outbox in store_sqlite_outbox.c, tokens in store_sqlite_tokens.c, blob rows in
 * store_sqlite_blobs.c; store_sqlite_ops.c is the ops table the dispatcher (store.c) calls. */
#include "storage/sqlite_int.h"
#include "storage/store_ops.h" /* compiled here until the dispatcher uses it (phase 2 step 3) */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "storage/schema_steps.h"

static const char *const stmt_sql[STMT_COUNT] = {
#define STORE_SQL_TEXT_(id, sql) [STMT_##id] = sql,
    STORE_SQL(STORE_SQL_TEXT_)
#undef STORE_SQL_TEXT_
};

/* ---- small helpers shared by the backend ---- */

int db_fail(struct store_conn *c, int sqlite_rc, const char *what, struct tpv_err *err)
{
    int code;
    switch (sqlite_rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: code = TPV_EUNAVAILABLE; break;
    case SQLITE_FULL: code = TPV_ENOSPACE; break;
    case SQLITE_CONSTRAINT: code = TPV_EEXIST; break;
    case SQLITE_NOMEM: code = TPV_ENOMEM; break;
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN: code = TPV_EIO; break;
    default: code = TPV_EINTERNAL; break;
    }
    return tpv_err_set(err, code, NULL, "database: %s: %s", what,
                       c && c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(sqlite_rc));
}

sqlite3_stmt *conn_stmt(struct store_conn *c, enum store_stmt id, struct tpv_err *err)
{
    if (!c->stmts[id]) {
        int rc = sqlite3_prepare_v3(c->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                    &c->stmts[id], NULL);
        if (rc != SQLITE_OK) {
            db_fail(c, rc, "prepare", err);
            c->stmts[id] = NULL;
            return NULL;
        }
    }
    return c->stmts[id];
}

void stmt_done(sqlite3_stmt *s)
{
    if (s) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    }
}

int stmt_exec(struct store_conn *c, sqlite3_stmt *s, struct tpv_err *err)
{
    int rc = sqlite3_step(s);
    while (rc == SQLITE_ROW)
        rc = sqlite3_step(s);
    int out = rc == SQLITE_DONE ? TPV_OK : db_fail(c, rc, "write", err);
    stmt_done(s);
    return out;
}

static int run_simple(struct store_conn *c, enum store_stmt id, struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, id, err);
    return s ? stmt_exec(c, s, err) : err ? err->code : TPV_EINTERNAL;
}

int tx_begin(struct store_conn *c, struct tpv_err *err)
{
    return run_simple(c, STMT_BEGIN, err);
}

int tx_begin_read(struct store_conn *c, struct tpv_err *err)
{
    return run_simple(c, STMT_BEGIN_READ, err);
}

int tx_commit(struct store_conn *c, struct tpv_err *err)
{
    int rc = run_simple(c, STMT_COMMIT, err);
    if (rc != TPV_OK)
        tx_rollback(c);
    return rc;
}

void tx_rollback(struct store_conn *c)
{
    if (!sqlite3_get_autocommit(c->db))
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
}

/* SQLITE_STATIC: a copy (SQLITE_TRANSIENT) allocates, and a failed bind left the parameter NULL
 * without a word: the row was stored without the value, or refused by a NOT NULL constraint
 * that read as "already exists".  Without the copy a bind of valid text cannot fail. */
void bind_text(sqlite3_stmt *s, int i, const char *text)
{
    if (text)
        sqlite3_bind_text(s, i, text, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, i);
}

const char *col_text(sqlite3_stmt *s, int i)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    return t ? (const char *)t : "";
}

char *col_strdup(sqlite3_stmt *s, int i)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    return t ? strdup((const char *)t) : NULL;
}

bool col_strdup_or_null(sqlite3_stmt *s, int i, char **out)
{
    *out = NULL;
    if (sqlite3_column_type(s, i) == SQLITE_NULL)
        return true;
    *out = col_strdup(s, i);
    return *out != NULL;
}

int study_bump(struct store_conn *c, const char *study_id, int64_t *version, struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, STMT_STUDY_BUMP, err);
    if (!s)
        return err->code;
    bind_text(s, 1, study_id);
    int rc = sqlite3_step(s);
    int out = TPV_OK;
    if (rc == SQLITE_ROW)
        *version = sqlite3_column_int64(s, 0);
    else if (rc == SQLITE_DONE)
        out = tpv_err_set(err, TPV_ENOTFOUND, "study", "study %s not found", study_id);
    else
        out = db_fail(c, rc, "bump study version", err);
    stmt_done(s);
    return out;
}

void notify_study(struct sq_store *st, const char *study_id, int64_t version)
{
    if (st->sink.study_changed)
        st->sink.study_changed(st->sink.ctx, study_id, version);
}

void notify_job(struct sq_store *st)
{
    if (st->sink.job_queued)
        st->sink.job_queued(st->sink.ctx);
}

/* ---- pool ---- */

struct store_conn *conn_get(struct sq_store *st)
{
    pthread_mutex_lock(&st->lock);
    while (st->nfree == 0)
        pthread_cond_wait(&st->cond, &st->lock);
    struct store_conn *c = &st->conns[st->free_list[--st->nfree]];
    pthread_mutex_unlock(&st->lock);
    return c;
}

void conn_put(struct sq_store *st, struct store_conn *c)
{
    if (!sqlite3_get_autocommit(c->db)) /* a forgotten transaction must not leak to the next user */
        tx_rollback(c);
    pthread_mutex_lock(&st->lock);
    st->free_list[st->nfree++] = (int)(c - st->conns);
    pthread_cond_signal(&st->cond);
    pthread_mutex_unlock(&st->lock);
}

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

/* The schema is storage/schema_steps.c's one list for both backends: step i brings PRAGMA
 * user_version from i - 1 to i.  Each step runs in its own transaction together with its
 * user_version bump, so a crash leaves the schema at a whole version. */
static int migrate(sqlite3 *db, struct tpv_err *err)
{
    size_t nsteps;
    const struct schema_step *steps = schema_steps(&nsteps);
    const int count = (int)nsteps;
    int version = read_user_version(db);
    if (version < 0)
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "cannot read schema version");
    if (version > count)
        return tpv_err_set(err, TPV_EPRECONDITION, "data_dir",
                           "database schema version %d is newer than this tpvd (%d)", version,
                           count);
    for (; version < count; version++) {
        char bump[64];
        snprintf(bump, sizeof bump, "PRAGMA user_version = %d;", version + 1);
        int rc = exec_sql(db, "BEGIN IMMEDIATE;", err);
        if (rc == TPV_OK)
            rc = exec_sql(db, steps[version].sqlite, err);
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

/* Called by SQLite after each commit in WAL mode, once the new data is visible to readers: the
 * version cache's generation moves.  Registering a WAL hook replaces SQLite's own automatic
 * checkpoint hook, so the default (checkpoint past 1000 WAL pages) is done here too. */
static int on_wal_commit(void *ctx, sqlite3 *db, const char *schema, int wal_pages)
{
    struct sq_store *st = ctx;
    if (st->sink.committed)
        st->sink.committed(st->sink.ctx);
    if (wal_pages >= 1000)
        sqlite3_wal_checkpoint_v2(db, schema, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    return SQLITE_OK;
}

/* What an operator should do with a database tpvd will not open (start-up log, never a client). */
#define DB_RESCUE_ADVICE                                                                          \
    "tpvd will not start on it. Keep a copy of the whole data dir first, then restore tpvd.db "  \
    "from a backup, or salvage what is readable with `sqlite3 tpvd.db .recover | sqlite3 "       \
    "recovered.db` and put recovered.db in its place"

static int db_damaged(const char *path, const char *detail, struct tpv_err *err)
{
    char one_line[121]; /* quick_check's report spans lines: keep the log line one line */
    size_t n = 0;
    for (; detail[n] && n < sizeof one_line - 1; n++)
        one_line[n] = detail[n] == '\n' || detail[n] == '\r' ? ' ' : detail[n];
    one_line[n] = '\0';
    return tpv_err_set(err, TPV_EIO, "data_dir", "database %s is damaged (%s); " DB_RESCUE_ADVICE,
                       path, one_line);
}

/* An existing 0-byte tpvd.db is never a database tpvd wrote (the first start writes its header
 * before anything else): SQLite would take it for a new empty one, and a data dir whose tokens
 * vanished silently opens loopback access.  A missing file is a new data dir. */
static int check_not_empty(const char *path, bool *exists, struct tpv_err *err)
{
    struct stat sb;
    *exists = stat(path, &sb) == 0;
    if (!*exists)
        return errno == ENOENT ? TPV_OK
                               : tpv_err_set(err, TPV_EIO, "data_dir", "cannot stat %s: %s", path,
                                             strerror(errno));
    if (S_ISREG(sb.st_mode) && sb.st_size == 0)
        return tpv_err_set(err, TPV_EPRECONDITION, "data_dir",
                           "database %s exists but is empty (0 bytes): tpvd will not create a new "
                           "database over it (its tokens and studies would be gone). Restore "
                           "tpvd.db from a backup; remove the file only if this data dir is new",
                           path);
    return TPV_OK;
}

/* SQLite creates tpvd.db when it opens it and writes the header only with the journal-mode
 * switch: an open that fails in between (out of memory, a full disk) leaves a 0-byte file, which
 * the next start would refuse as above.  A file this open created and never wrote goes. */
static void remove_unwritten(const char *path, bool existed)
{
    struct stat sb;
    if (!existed && stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == 0)
        unlink(path);
}

/* PRAGMA quick_check (b-tree structure of every page, not index contents): a file with damaged
 * pages otherwise opens, answers SELECT 1 (so /readyz said ready) and fails every real query.
 * It reads the whole file once, at start only. */
static int check_integrity(sqlite3 *db, const char *path, struct tpv_err *err)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA quick_check(1)", -1, &s, NULL);
    int step = rc == SQLITE_OK ? sqlite3_step(s) : rc;
    int out = TPV_OK;
    if (step == SQLITE_ROW) {
        const char *verdict = col_text(s, 0);
        if (strcmp(verdict, "ok") != 0)
            out = db_damaged(path, verdict, err);
    } else {
        int code = step & 0xff;
        if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB)
            out = db_damaged(path, sqlite3_errmsg(db), err);
        else
            out = db_fail(NULL, step, "integrity check", err);
    }
    sqlite3_finalize(s);
    return out;
}

static int conn_open(struct sq_store *st, struct store_conn *c, const char *path,
                     const struct store_options *o, bool first, struct tpv_err *err)
{
    c->st = st;
    if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                        SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK)
        return tpv_err_set(err, TPV_EIO, "data_dir", "cannot open %s: %s", path,
                           c->db ? sqlite3_errmsg(c->db) : "out of memory");
    sqlite3_busy_timeout(c->db, o->busy_timeout_ms);
    /* Checked before the journal-mode switch, the first write to the file. */
    int rc = first ? check_integrity(c->db, path, err) : TPV_OK;
    if (rc != TPV_OK)
        return rc;
    char pragmas[160];
    snprintf(pragmas, sizeof pragmas, "%s PRAGMA synchronous=%s; PRAGMA foreign_keys=ON;",
             first ? "PRAGMA journal_mode=WAL;" : "", o->synchronous_full ? "FULL" : "NORMAL");
    rc = exec_sql(c->db, pragmas, err);
    if (rc == TPV_OK && first)
        rc = migrate(c->db, err);
    sqlite3_wal_hook(c->db, on_wal_commit, st);
    return rc;
}

/* The folder of the database file `path` into out (where the lock file lives). */
static int path_folder(const char *path, char *out, size_t cap, struct tpv_err *err)
{
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 1;
    if (slash == path)
        n = 1;
    if (n + 1 > cap)
        return tpv_err_set(err, TPV_EINVAL, "database", "database path too long");
    memcpy(out, slash ? path : ".", n);
    out[n] = '\0';
    return TPV_OK;
}

int sq_open_with(struct sq_store **out, const char *path, const struct store_options *opts,
                 const struct store_sink *sink, struct tpv_err *err)
{
    char folder[PATH_MAX];
    struct store_options o = { .pool_size = 8, .synchronous_full = true, .busy_timeout_ms = 5000 };
    int rc;

    *out = NULL;
    if (opts) {
        o = *opts;
        if (o.pool_size <= 0)
            o.pool_size = 8;
        if (o.busy_timeout_ms <= 0)
            o.busy_timeout_ms = 5000;
    }
    if (o.pool_size > 256)
        o.pool_size = 256;
    if (!path[0] || strlen(path) >= sizeof folder - 64)
        return tpv_err_set(err, TPV_EINVAL, "database", "database path empty or too long");
    rc = path_folder(path, folder, sizeof folder, err);
    if (rc == TPV_OK)
        rc = make_dir(folder, err);
    if (rc != TPV_OK)
        return rc;

    struct sq_store *st = calloc(1, sizeof *st);
    if (!st)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    st->lock_fd = -1;
    pthread_mutex_init(&st->lock, NULL);
    st->shared = o.shared;
    if (sink)
        st->sink = *sink;
    pthread_cond_init(&st->cond, NULL);
    st->data_dir = strdup(folder);
    st->conns = calloc((size_t)o.pool_size, sizeof *st->conns);
    st->free_list = calloc((size_t)o.pool_size, sizeof *st->free_list);
    if (!st->data_dir || !st->conns || !st->free_list) {
        sq_close(st);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    st->nconns = o.pool_size;

    /* One daemon per database: a second one would break the queue's crash recovery (it re-queues
     * every running job) and the blob store's temp cleanup.  flock is released by the kernel when
     * a process dies.  SQLite only: PostgreSQL nodes share a database by design. */
    char lock_path[PATH_MAX + 8];
    snprintf(lock_path, sizeof lock_path, "%s/lock", folder);
    if (!o.shared)
        st->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (!o.shared && (st->lock_fd < 0 || flock(st->lock_fd, LOCK_EX | LOCK_NB) != 0)) {
        rc = tpv_err_set(err, st->lock_fd < 0 ? TPV_EIO : TPV_EPRECONDITION, "data_dir",
                         "data dir %s is in use by another tpvd (%s)", folder, strerror(errno));
        sq_close(st);
        return rc;
    }
    bool existed = false;
    rc = check_not_empty(path, &existed, err);
    if (rc != TPV_OK) {
        sq_close(st);
        return rc;
    }
    for (int i = 0; i < st->nconns; i++) {
        rc = conn_open(st, &st->conns[i], path, &o, i == 0, err);
        if (rc != TPV_OK) {
            sq_close(st);
            remove_unwritten(path, existed);
            return rc;
        }
        st->free_list[st->nfree++] = i;
    }
    *out = st;
    return TPV_OK;
}

void sq_close(struct sq_store *st)
{
    if (!st)
        return;
    for (int i = 0; st->conns && i < st->nconns; i++) {
        for (int j = 0; j < STMT_COUNT; j++)
            sqlite3_finalize(st->conns[i].stmts[j]);
        if (st->conns[i].db)
            sqlite3_close(st->conns[i].db);
    }
    if (st->lock_fd >= 0)
        close(st->lock_fd); /* releases the flock */
    free(st->conns);
    free(st->free_list);
    free(st->data_dir);
    pthread_cond_destroy(&st->cond);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

int sq_ping(struct sq_store *st, struct tpv_err *err)
{
    struct store_conn *c = conn_get(st);
    int rc = TPV_OK;
    sqlite3_stmt *s = conn_stmt(c, STMT_PING, err);
    if (!s || sqlite3_step(s) != SQLITE_ROW)
        rc = tpv_err_set(err, TPV_EUNAVAILABLE, NULL, "database not reachable");
    stmt_done(s);
    conn_put(st, c);
    return rc;
}

int sq_schema_version(struct sq_store *st)
{
    struct store_conn *c = conn_get(st);
    int v = read_user_version(c->db);
    conn_put(st, c);
    return v;
}

/* ---- idempotency ---- */

int sq_idempotency_expire(struct sq_store *st, const char *cutoff, int *removed,
                          struct tpv_err *err)
{
    /* Times are stored as fixed-width RFC 3339 UTC strings, which sort like the times. */
    *removed = 0;
    struct store_conn *c = conn_get(st);
    sqlite3_stmt *s = conn_stmt(c, STMT_IDEM_EXPIRE, err);
    int rc = s ? TPV_OK : err->code;
    if (s) {
        bind_text(s, 1, cutoff);
        rc = stmt_exec(c, s, err);
        if (rc == TPV_OK)
            *removed = sqlite3_changes(c->db);
    }
    stmt_done(s);
    conn_put(st, c);
    return rc;
}

int idem_lookup_conn(struct store_conn *c, const struct store_idem *idem, struct store_replay *out,
                     struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *s = conn_stmt(c, STMT_IDEM_GET, err);
    if (!s)
        return err->code;
    bind_text(s, 1, idem->scope);
    bind_text(s, 2, idem->key);
    int rc = sqlite3_step(s), out_rc;
    if (rc == SQLITE_ROW) {
        if (strcmp(col_text(s, 0), idem->request_hash) != 0) {
            out_rc = tpv_err_set(err, TPV_EPRECONDITION, "Idempotency-Key",
                                 "Idempotency-Key '%s' was already used with a different request",
                                 idem->key);
        } else {
            out->status = sqlite3_column_int(s, 1);
            out->body = col_strdup(s, 2);
            out->location = col_strdup(s, 3);
            out_rc = out->body ? TPV_OK : tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        }
    } else if (rc == SQLITE_DONE) {
        out_rc = TPV_ENOTFOUND;
    } else {
        out_rc = db_fail(c, rc, "idempotency lookup", err);
    }
    stmt_done(s);
    return out_rc;
}

int idem_store_conn(struct store_conn *c, const struct store_idem *idem,
                    const struct store_reply *reply, struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    sqlite3_stmt *s = conn_stmt(c, STMT_IDEM_PUT, err);
    if (!s)
        return err->code;
    bind_text(s, 1, idem->scope);
    bind_text(s, 2, idem->key);
    bind_text(s, 3, idem->request_hash);
    sqlite3_bind_int(s, 4, reply->status);
    bind_text(s, 5, reply->body);
    bind_text(s, 6, reply->location);
    bind_text(s, 7, now);
    int rc = stmt_exec(c, s, err);
    if (rc == TPV_EEXIST)
        tpv_err_set(err, TPV_EEXIST, "Idempotency-Key", "Idempotency-Key '%s' is in use",
                    idem->key);
    return rc;
}

int sq_idem_lookup(struct sq_store *st, const struct store_idem *idem, struct store_replay *out,
                      struct tpv_err *err)
{
    struct store_conn *c = conn_get(st);
    int rc = idem_lookup_conn(c, idem, out, err);
    conn_put(st, c);
    return rc;
}

/* ---- statistics ---- */

int sq_stats(struct sq_store *st, struct store_stats *out, struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    struct store_conn *c = conn_get(st);
    int rc = TPV_OK, step;
    sqlite3_stmt *s = conn_stmt(c, STMT_STATS_JOBS, err);
    if (!s) {
        rc = err->code;
        goto done;
    }
    while ((step = sqlite3_step(s)) == SQLITE_ROW) {
        const char *state = col_text(s, 0);
        int64_t n = sqlite3_column_int64(s, 1);
        if (strcmp(state, "queued") == 0)
            out->jobs_queued = n;
        else if (strcmp(state, "running") == 0)
            out->jobs_running = n;
        else if (strcmp(state, "succeeded") == 0)
            out->jobs_succeeded = n;
        else if (strcmp(state, "failed") == 0)
            out->jobs_failed = n;
        else if (strcmp(state, "canceled") == 0)
            out->jobs_canceled = n;
    }
    stmt_done(s);
    if (step != SQLITE_DONE) {
        rc = db_fail(c, step, "stats", err);
        goto done;
    }
    s = conn_stmt(c, STMT_STATS_BLOBS, err);
    if (!s || sqlite3_step(s) != SQLITE_ROW) {
        rc = s ? db_fail(c, SQLITE_ERROR, "stats", err) : err->code;
        stmt_done(s);
        goto done;
    }
    out->blobs = sqlite3_column_int64(s, 0);
    out->blob_bytes = sqlite3_column_int64(s, 1);
    stmt_done(s);
    s = conn_stmt(c, STMT_STATS_COUNTS, err);
    if (!s || sqlite3_step(s) != SQLITE_ROW) {
        rc = s ? db_fail(c, SQLITE_ERROR, "stats", err) : err->code;
        stmt_done(s);
        goto done;
    }
    out->studies = sqlite3_column_int64(s, 0);
    out->candidates = sqlite3_column_int64(s, 1);
    stmt_done(s);
done:
    conn_put(st, c);
    return rc;
}

int sq_jobs_queued(struct sq_store *st, int64_t *n, struct tpv_err *err)
{
    struct store_conn *c = conn_get(st);
    int rc = TPV_OK;
    sqlite3_stmt *s = conn_stmt(c, STMT_JOBS_QUEUED, err);
    if (!s)
        rc = err->code;
    else if (sqlite3_step(s) == SQLITE_ROW)
        *n = sqlite3_column_int64(s, 0);
    else
        rc = db_fail(c, SQLITE_ERROR, "count queued jobs", err);
    stmt_done(s);
    conn_put(st, c);
    return rc;
}
