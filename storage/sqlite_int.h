/* sqlite_int.h: internals shared by the SQLite backend's files (store_sqlite*.c): the connection
 * pool, the prepared statement table, small binding helpers and the sq_* operations.  Included
 * by nothing else (the dispatcher store.c sees only store_sqlite.h). */
#ifndef TPV_SQLITE_INT_H
#define TPV_SQLITE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sqlite3.h>

#include "storage/store.h"
#include "storage/store_ops.h"

/* Every statement the backend runs, prepared once per connection on first use.
 *        id                     SQL */
#define STORE_SQL(X)                                                                             \
    X(BEGIN,            "BEGIN IMMEDIATE")                                                        \
    X(BEGIN_READ,       "BEGIN")                                                                  \
    X(COMMIT,           "COMMIT")                                                                 \
    X(ROLLBACK,         "ROLLBACK")                                                               \
    X(PING,             "SELECT 1")                                                               \
    X(USER_VERSION,     "PRAGMA user_version")                                                    \
    X(IDEM_GET,         "SELECT request_hash, status, body, location FROM idempotency_keys "       \
                        "WHERE scope = ?1 AND key = ?2")                                          \
    X(IDEM_PUT,         "INSERT INTO idempotency_keys (scope, key, request_hash, status, body, "  \
                        "location, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")              \
    X(IDEM_EXPIRE,      "DELETE FROM idempotency_keys WHERE created_at < ?1")                      \
    X(STUDY_INSERT,     "INSERT INTO studies (id, name, description, noise_models, rank_by, "     \
                        "webhook_url, metadata, created_at, webhook_secret) "                     \
                        "VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)")                                    \
    X(STUDY_GET,        "SELECT s.seq, s.id, s.name, s.description, s.noise_models, s.rank_by, "  \
                        "s.webhook_url, s.metadata, s.version, s.created_at, "                    \
                        "f.digest, f.n, p.digest, p.n, s.has_probe_dumps FROM studies s "         \
                        "LEFT JOIN input_sets f ON f.study_id = s.id AND f.split = 'fit' "        \
                        "LEFT JOIN input_sets p ON p.study_id = s.id AND p.split = 'probe' "      \
                        "WHERE s.id = ?1")                                                        \
    X(STUDY_LIST,       "SELECT s.seq, s.id, s.name, s.description, s.noise_models, s.rank_by, "  \
                        "s.webhook_url, s.metadata, s.version, s.created_at, "                    \
                        "f.digest, f.n, p.digest, p.n, s.has_probe_dumps FROM studies s "         \
                        "LEFT JOIN input_sets f ON f.study_id = s.id AND f.split = 'fit' "        \
                        "LEFT JOIN input_sets p ON p.study_id = s.id AND p.split = 'probe' "      \
                        "WHERE s.seq > ?1 ORDER BY s.seq LIMIT ?2")                               \
    X(STUDY_VERSION,    "SELECT version FROM studies WHERE id = ?1")                              \
    X(STUDY_BUMP,       "UPDATE studies SET version = version + 1 WHERE id = ?1 "                 \
                        "RETURNING version")                                                      \
    X(STUDY_PROBE_DUMP, "UPDATE studies SET has_probe_dumps = 1 WHERE id = ?1")                   \
    X(STUDY_WEBHOOK,    "SELECT webhook_url FROM studies WHERE id = ?1")                          \
    X(INPUT_PUT,        "INSERT INTO input_sets (study_id, split, digest, n, updated_at) "        \
                        "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (study_id, split) DO UPDATE "    \
                        "SET digest = excluded.digest, n = excluded.n, "                          \
                        "updated_at = excluded.updated_at")                                      \
    X(INPUT_DIGEST,     "SELECT digest FROM input_sets WHERE study_id = ?1 AND split = ?2")       \
    X(CAND_COUNT,       "SELECT count(*) FROM candidates WHERE study_id = ?1")                    \
    X(JOBS_QUEUED,      "SELECT count(*) FROM jobs WHERE state = 'queued'")                       \
    X(CAND_INSERT,      "INSERT INTO candidates (id, study_id, name, metadata, source_kind, "     \
                        "source, train_loss, epoch, run, state, job_id, created_at) "             \
                        "VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,'queued',?10,?11)")                   \
    X(CAND_BY_NAME,     "SELECT 1 FROM candidates WHERE study_id = ?1 AND name = ?2")             \
    X(CAND_GET,         "SELECT c.seq, c.id, c.study_id, c.name, c.metadata, "                    \
                        "CASE WHEN json_extract(c.source, '$.kind') = 'onnx' THEN 'onnx' "     \
                        "ELSE c.source_kind END, "                                                \
                        "c.state, c.stability, c.job_id, c.created_at, j.progress, "              \
                        "j.error_code, j.error_message, c.metrics FROM candidates c "             \
                        "LEFT JOIN jobs j ON j.id = c.job_id "                                    \
                        "WHERE c.study_id = ?1 AND c.id = ?2")                                    \
    X(CAND_LIST,        "SELECT c.seq, c.id, c.study_id, c.name, c.metadata, "                    \
                        "CASE WHEN json_extract(c.source, '$.kind') = 'onnx' THEN 'onnx' "     \
                        "ELSE c.source_kind END, "                                                \
                        "c.state, c.stability, c.job_id, c.created_at, j.progress, "              \
                        "j.error_code, j.error_message, "                                          \
                        "(SELECT coalesce(sum(coalesce(length(CAST(details AS BLOB)), 0) + "      \
                        "2 * length(CAST(noise AS BLOB)) + 384), 0) "                             \
                        "FROM scores WHERE candidate_id = c.id) + (SELECT 96 * count(*) "         \
                        "FROM jobs WHERE candidate_id = c.id AND kind = 'jbr'), c.metrics "       \
                        "FROM candidates c LEFT JOIN jobs j ON j.id = c.job_id "                  \
                        "WHERE c.study_id = ?1 AND c.seq > ?2 ORDER BY c.seq LIMIT ?3")           \
    X(CAND_SCORES,      "SELECT candidate_id, noise, kind, split, value, stderr, estimator, "     \
                        "samples, seed, wall_seconds, details, stderr_inputs FROM scores "      \
                        "WHERE candidate_id = ?1 "                                                \
                        "ORDER BY rowid")                                                         \
    X(CAND_LIST_SCORES, "SELECT s.candidate_id, s.noise, s.kind, s.split, s.value, s.stderr, "    \
                        "s.estimator, s.samples, s.seed, s.wall_seconds, s.details, "           \
                        "s.stderr_inputs FROM scores s "                                          \
                        "WHERE s.candidate_id IN (SELECT id FROM candidates WHERE study_id = ?1 " \
                        "AND seq > ?2 ORDER BY seq LIMIT ?3) ORDER BY s.rowid")                   \
    /* A candidate's JBR jobs, newest first (jbr_jobs), of one candidate or of a page. */       \
    X(CAND_JBR,         "SELECT candidate_id, id, state, created_at FROM jobs "                   \
                        "WHERE candidate_id = ?1 AND kind = 'jbr' ORDER BY seq DESC")             \
    X(CAND_LIST_JBR,    "SELECT j.candidate_id, j.id, j.state, j.created_at FROM jobs j "         \
                        "WHERE j.kind = 'jbr' AND j.candidate_id IN (SELECT id FROM candidates "  \
                        "WHERE study_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3) "                \
                        "ORDER BY j.seq DESC")                                                    \
    X(CAND_SOURCE,      "SELECT c.source, "                                                        \
                        "CASE WHEN json_extract(c.source, '$.kind') = 'onnx' THEN 'onnx' "     \
                        "ELSE c.source_kind END "                                                 \
                        "FROM candidates c WHERE c.study_id = ?1 AND c.id = ?2")                  \
    /* storage/metrics.c.  The agreement's one read: the study row, then every candidate with   \
     * the asked metric (NULL when it lacks it) and each of its scores, in creation order. */     \
    X(METRICS_OLD,      "SELECT coalesce(metrics, '{}') FROM candidates "                         \
                        "WHERE study_id = ?1 AND id = ?2")                                        \
    X(METRICS_PATCH,    "SELECT json_patch(?1, ?2), (SELECT count(*) FROM json_each("             \
                        "json_patch(?1, ?2)))")                                                   \
    X(METRICS_SET,      "UPDATE candidates SET metrics = ?2 WHERE id = ?1")                       \
    X(METRICS_NAMES,    "SELECT DISTINCT j.key FROM candidates c, json_each(c.metrics) j "        \
                        "WHERE c.study_id = ?1 AND c.metrics IS NOT NULL ORDER BY j.key LIMIT ?2") \
    X(AGREE_ROWS,       "SELECT s.noise_models, s.version, c.id, "                                \
                        "(SELECT j.value FROM json_each(c.metrics) j WHERE j.key = ?2 AND "       \
                        "j.type IN ('integer', 'real')), sc.noise, sc.split, sc.value "           \
                        "FROM studies s LEFT JOIN candidates c ON c.study_id = s.id "             \
                        "LEFT JOIN scores sc ON sc.candidate_id = c.id WHERE s.id = ?1 "          \
                        "ORDER BY c.seq, sc.rowid")                                               \
    X(STUDY_DELETE,     "DELETE FROM studies WHERE id = ?1")                                      \
    X(OUTBOX_DETACH,    "UPDATE webhook_outbox SET "                                              \
                        "url = (SELECT webhook_url FROM studies WHERE id = ?1), "                 \
                        "secret = (SELECT webhook_secret FROM studies WHERE id = ?1) "            \
                        "WHERE study_id = ?1 AND url IS NULL AND delivered_at IS NULL AND "       \
                        "failed_at IS NULL")                                                      \
    X(BLOB_RELEASE_STUDY, "UPDATE blobs SET released_at = ?2 WHERE EXISTS (SELECT 1 FROM "        \
                        "input_sets i WHERE i.study_id = ?1 AND i.digest = blobs.digest) OR "     \
                        "EXISTS (SELECT 1 FROM candidates c WHERE c.study_id = ?1 AND "           \
                        "instr(c.source, blobs.digest) > 0) OR EXISTS (SELECT 1 FROM studies s "  \
                        "WHERE s.id = ?1 AND instr(s.noise_models, blobs.digest) > 0)")           \
    X(BLOB_RELEASE_CAND, "UPDATE blobs SET released_at = ?2 WHERE EXISTS (SELECT 1 FROM "         \
                        "candidates c WHERE c.id = ?1 AND instr(c.source, blobs.digest) > 0)")    \
    X(CAND_STATE_GET,   "SELECT state, job_id FROM candidates WHERE study_id = ?1 AND id = ?2")   \
    X(CAND_DELETE,      "DELETE FROM candidates WHERE study_id = ?1 AND id = ?2")                 \
    X(CAND_REQUEUE,     "UPDATE candidates SET state = 'queued', job_id = ?2 WHERE id = ?1")      \
    X(CAND_STATE,       "UPDATE candidates SET state = ?2 WHERE id = ?1 AND job_id = ?3")          \
    X(CAND_STABILITY,   "UPDATE candidates SET stability = ?2 WHERE id = ?1")                     \
    X(JOB_INSERT,       "INSERT INTO jobs (id, kind, study_id, candidate_id, state, params, "     \
                        "created_at) VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6)")                  \
    X(JOB_GET,          "SELECT id, kind, candidate_id, state, progress, attempts, error_code, "  \
                        "error_message, created_at, started_at, finished_at, result, "            \
                        "cancel_requested, study_id FROM jobs WHERE id = ?1")                     \
    X(JOB_NEXT,         "SELECT j.id, j.kind, j.study_id, j.candidate_id, j.attempts, c.source, " \
                        "s.noise_models, j.params FROM jobs j "                                   \
                        "JOIN candidates c ON c.id = j.candidate_id "                             \
                        "JOIN studies s ON s.id = j.study_id "                                    \
                        "WHERE j.state = 'queued' ORDER BY j.seq LIMIT 1")                        \
    X(JOB_START,        "UPDATE jobs SET state = 'running', attempts = attempts + 1, "            \
                        "lease_owner = ?2, lease_expires = ?3, progress = 0, "                    \
                        "started_at = ?4 WHERE id = ?1 AND state = 'queued'")                     \
    X(JOB_PROGRESS,     "UPDATE jobs SET progress = ?3, lease_expires = ?4 WHERE id = ?1 AND "    \
                        "lease_owner = ?2 AND state = 'running' RETURNING cancel_requested")      \
    X(JOB_OWNED,        "SELECT study_id, candidate_id, kind FROM jobs WHERE id = ?1 AND "        \
                        "lease_owner = ?2 AND state = 'running'")                                 \
    X(JOB_END,          "UPDATE jobs SET state = ?2, progress = ?3, error_code = ?4, "            \
                        "error_message = ?5, result = ?6, finished_at = ?7, lease_owner = NULL, " \
                        "lease_expires = NULL WHERE id = ?1")                                     \
    X(JOB_RELEASE,      "UPDATE jobs SET state = 'queued', attempts = max(attempts - 1, 0), "     \
                        "lease_owner = NULL, lease_expires = NULL, progress = 0 WHERE id = ?1")   \
    X(JOB_CANCEL_ASK,   "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1")                     \
    X(JOBS_STALE,       "SELECT id, study_id, candidate_id, kind, attempts FROM jobs "            \
                        "WHERE state = 'running' AND (?1 = 0 OR lease_expires < ?2)")             \
    X(JOB_REQUEUE,      "UPDATE jobs SET state = 'queued', lease_owner = NULL, "                  \
                        "lease_expires = NULL, progress = 0 WHERE id = ?1")                       \
    X(SCORE_DELETE,     "DELETE FROM scores WHERE candidate_id = ?1")                             \
    X(SCORE_INSERT,     "INSERT INTO scores (candidate_id, noise, kind, split, value, stderr, "   \
                        "estimator, samples, seed, wall_seconds, details, stderr_inputs, "        \
                        "contributions) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)")     \
    X(OUTBOX_PUT,       "INSERT INTO webhook_outbox (study_id, event, payload, next_attempt_at, " \
                        "created_at) VALUES (?1, ?2, ?3, ?4, ?5)")                                \
    X(OUTBOX_DUE,       "SELECT o.seq, o.study_id, o.event, o.payload, o.attempts, "              \
                        "coalesce(o.url, s.webhook_url), coalesce(o.secret, s.webhook_secret) "   \
                        "FROM webhook_outbox o LEFT JOIN studies s ON s.id = o.study_id "         \
                        "WHERE o.delivered_at IS NULL AND o.failed_at IS NULL AND "               \
                        "o.next_attempt_at <= ?1 ORDER BY o.next_attempt_at, o.seq LIMIT ?2")     \
    X(OUTBOX_NEXT,      "SELECT min(next_attempt_at) FROM webhook_outbox "                        \
                        "WHERE delivered_at IS NULL AND failed_at IS NULL")                       \
    X(OUTBOX_DONE,      "UPDATE webhook_outbox SET attempts = attempts + 1, delivered_at = ?2, "  \
                        "last_error = NULL WHERE seq = ?1")                                       \
    X(OUTBOX_RETRY,     "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ?2, " \
                        "last_error = ?3 WHERE seq = ?1")                                         \
    X(OUTBOX_FAIL,      "UPDATE webhook_outbox SET attempts = attempts + 1, failed_at = ?2, "     \
                        "last_error = ?3 WHERE seq = ?1")                                         \
    X(OUTBOX_STATS,     "SELECT count(*) FILTER (WHERE delivered_at IS NULL AND failed_at IS NULL), " \
                        "count(*) FILTER (WHERE delivered_at IS NOT NULL), "                      \
                        "count(*) FILTER (WHERE failed_at IS NOT NULL) FROM webhook_outbox")      \
    X(RANK_ROWS,        "SELECT c.id, c.name, c.metadata, c.state, c.train_loss, c.epoch, c.run, " \
                        "s.value, s.stderr, s.stderr_inputs, "                                    \
                        "coalesce(json_extract(s.details, '$.nonlinear'), 0) FROM candidates c "  \
                        "LEFT JOIN scores s ON "                                                  \
                        "s.candidate_id = c.id AND s.noise = ?2 AND s.split = ?3 "                \
                        "WHERE c.study_id = ?1 ORDER BY (s.value IS NULL), s.value, c.seq")       \
    X(RANK_CONTRIB,     "SELECT s.candidate_id, s.contributions FROM scores s "                   \
                        "JOIN candidates c ON c.id = s.candidate_id WHERE c.study_id = ?1 AND "   \
                        "s.noise = ?2 AND s.split = ?3 AND "                                      \
                        "s.candidate_id IN (SELECT value FROM json_each(?4))")                    \
    X(STATS_JOBS,       "SELECT state, count(*) FROM jobs GROUP BY state")                        \
    X(STATS_BLOBS,      "SELECT count(*), coalesce(sum(size), 0) FROM blobs")                     \
    X(STATS_COUNTS,     "SELECT (SELECT count(*) FROM studies), (SELECT count(*) FROM candidates)") \
    X(TOKEN_BY_NAME,    "SELECT 1 FROM tokens WHERE name = ?1")                                   \
    X(TOKEN_INSERT,     "INSERT INTO tokens (id, name, hash, role, created_at) "                  \
                        "VALUES (?1, ?2, ?3, ?4, ?5)")                                            \
    X(TOKEN_BY_HASH,    "SELECT hash, role, revoked_at IS NOT NULL, name FROM tokens "            \
                        "WHERE hash = ?1")                                                        \
    X(TOKEN_LIST,       "SELECT name, role, created_at, revoked_at FROM tokens "                  \
                        "ORDER BY created_at, name")                                              \
    X(TOKEN_REVOKE,     "UPDATE tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL") \
    X(TOKEN_COUNT,      "SELECT count(*) FROM tokens")                                            \
    X(BLOB_PUT,         "INSERT INTO blobs (digest, size, created_at) VALUES (?1, ?2, ?3) "       \
                        "ON CONFLICT (digest) DO UPDATE SET released_at = excluded.created_at")   \
    X(BLOB_REFS,        "SELECT 'study', study_id FROM input_sets WHERE digest = ?1 UNION ALL "   \
                        "SELECT 'study', id FROM studies WHERE instr(noise_models, ?1) > 0 "      \
                        "UNION ALL SELECT 'candidate', id FROM candidates "                      \
                        "WHERE instr(source, ?1) > 0 UNION ALL SELECT 'job', id FROM jobs "       \
                        "WHERE instr(coalesce(params, ''), ?1) > 0 LIMIT 1")                      \
    X(BLOB_DELETE,      "DELETE FROM blobs WHERE digest = ?1")                                    \
    X(BLOB_GC_DUE,      "SELECT digest FROM blobs b WHERE "                                       \
                        "max(b.created_at, coalesce(b.released_at, '')) < ?1 AND NOT EXISTS "     \
                        "(SELECT 1 FROM input_sets i WHERE i.digest = b.digest) AND NOT EXISTS "  \
                        "(SELECT 1 FROM studies s WHERE instr(s.noise_models, b.digest) > 0) "    \
                        "AND NOT EXISTS (SELECT 1 FROM candidates c "                             \
                        "WHERE instr(c.source, b.digest) > 0) AND NOT EXISTS (SELECT 1 FROM "     \
                        "jobs j WHERE instr(coalesce(j.params, ''), b.digest) > 0) LIMIT ?2")

enum store_stmt {
#define STORE_SQL_ENUM_(id, sql) STMT_##id,
    STORE_SQL(STORE_SQL_ENUM_)
#undef STORE_SQL_ENUM_
    STMT_COUNT
};

struct store_conn {
    struct sq_store *st; /* the handle this connection belongs to */
    sqlite3 *db;
    sqlite3_stmt *stmts[STMT_COUNT];
};

/* The SQLite backend's handle (the `impl` of store_sqlite_ops). */
struct sq_store {
    char *data_dir; /* the database file's folder: the lock lives there */
    bool shared;    /* opened beside a running daemon: no lock, versions not cacheable */
    struct store_conn *conns;
    int nconns;
    int *free_list; /* indices of idle connections */
    int nfree;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int lock_fd;
    struct store_sink sink; /* hooks, commits and the event renderer of the dispatcher */
};

/* Takes an idle connection, waiting for one if all are busy; give it back with conn_put. */
struct store_conn *conn_get(struct sq_store *st);
void conn_put(struct sq_store *st, struct store_conn *c);

/* The prepared statement `id` of connection c, reset and ready to bind; NULL with err set when
 * it cannot be prepared.  Call stmt_done after use. */
sqlite3_stmt *conn_stmt(struct store_conn *c, enum store_stmt id, struct tpv_err *err);
void stmt_done(sqlite3_stmt *s);

/* Runs a statement without rows to completion.  Returns TPV_OK or an error from db_fail. */
int stmt_exec(struct store_conn *c, sqlite3_stmt *s, struct tpv_err *err);

/* Maps the connection's last SQLite error: busy/locked -> TPV_EUNAVAILABLE, full -> ENOSPACE,
 * constraint -> TPV_EEXIST, else TPV_EINTERNAL; `what` prefixes the message. */
int db_fail(struct store_conn *c, int sqlite_rc, const char *what, struct tpv_err *err);

/* Transactions: BEGIN IMMEDIATE (writers), BEGIN (a read of several statements from one
 * snapshot, taken at its first read; end it with tx_rollback), COMMIT, ROLLBACK (never fails
 * loudly). */
int tx_begin(struct store_conn *c, struct tpv_err *err);
int tx_begin_read(struct store_conn *c, struct tpv_err *err);
int tx_commit(struct store_conn *c, struct tpv_err *err);
void tx_rollback(struct store_conn *c);

/* Binding helpers: NULL text binds SQL NULL.  bind_text does not copy: the text must stay valid
 * until the statement has been stepped and reset (stmt_done), as it is in every caller. */
void bind_text(sqlite3_stmt *s, int i, const char *text);
const char *col_text(sqlite3_stmt *s, int i); /* "" for NULL */
char *col_strdup(sqlite3_stmt *s, int i);      /* NULL for NULL (or OOM) */
/* For a column that may be NULL: *out gets a copy, or NULL for SQL NULL; false when the copy
 * failed (out of memory), which col_strdup cannot tell from NULL. */
bool col_strdup_or_null(sqlite3_stmt *s, int i, char **out);

/* Binds per-input contributions as a little-endian float64 BLOB (SQL NULL when v is NULL or
 * n is 0); TPV_ENOMEM / TPV_ENOSPACE (a size that does not fit) otherwise TPV_OK.
 * storage/contrib.c. */
int bind_contributions(sqlite3_stmt *s, int i, const double *v, size_t n, struct tpv_err *err);

/* Bumps a study's version inside the caller's transaction; *version gets the new value. */
int study_bump(struct store_conn *c, const char *study_id, int64_t *version, struct tpv_err *err);

/* Fires the study_changed hook (after commit). */
void notify_study(struct sq_store *st, const char *study_id, int64_t version);
void notify_job(struct sq_store *st);


/* Idempotency rows on connection c (inside the caller's transaction when there is one). */
int idem_lookup_conn(struct store_conn *c, const struct store_idem *idem, struct store_replay *out,
                     struct tpv_err *err);
int idem_store_conn(struct store_conn *c, const struct store_idem *idem,
                    const struct store_reply *reply, struct tpv_err *err);

/* Webhook outbox rows in the caller's transaction (storage/queue.c): whether the study has a
 * webhook_url, and appending an event (its payload rendered by the store's event renderer). */
int study_has_hook(struct store_conn *c, const char *study_id, bool *has, struct tpv_err *err);
int outbox_put(struct store_conn *c, const struct store_event *ev, struct tpv_err *err);


/* The operations (store_sqlite.c puts them in store_sqlite_ops; contracts in store.h). */
int sq_open_with(struct sq_store **out, const char *path, const struct store_options *opts,
                 const struct store_sink *sink, struct tpv_err *err);
void sq_close(struct sq_store *st);
int sq_ping(struct sq_store *st, struct tpv_err *err);
int sq_schema_version(struct sq_store *st);
int sq_idempotency_expire(struct sq_store *st, const char *cutoff, int *removed,
                          struct tpv_err *err);
int sq_idem_lookup(struct sq_store *st, const struct store_idem *idem, struct store_replay *out,
                      struct tpv_err *err);
int sq_stats(struct sq_store *st, struct store_stats *out, struct tpv_err *err);
int sq_jobs_queued(struct sq_store *st, int64_t *n, struct tpv_err *err);
int sq_blob_record(struct sq_store *st, const char *digest, uint64_t size, const char *now,
                   struct tpv_err *err);
int sq_blob_delete(struct sq_store *st, const char *digest, store_blob_remove_fn rm, void *ctx,
                   struct tpv_err *err);
int sq_blob_gc(struct sq_store *st, const char *cutoff, int limit, store_blob_remove_fn rm,
               void *ctx, int *removed, struct tpv_err *err);
int sq_outbox_due(struct sq_store *st, double now, int limit, struct store_outbox_item **items,
                     size_t *n, struct tpv_err *err);
int sq_outbox_next_due(struct sq_store *st, double *at, struct tpv_err *err);
int sq_outbox_delivered(struct sq_store *st, int64_t seq, struct tpv_err *err);
int sq_outbox_retry(struct sq_store *st, int64_t seq, double next_at, const char *error,
                       struct tpv_err *err);
int sq_outbox_fail(struct sq_store *st, int64_t seq, const char *error, struct tpv_err *err);
int sq_outbox_stats(struct sq_store *st, int64_t *pending, int64_t *delivered, int64_t *failed,
                       struct tpv_err *err);
int sq_job_get(struct sq_store *st, const char *id, struct store_job *out, struct tpv_err *err);
int sq_job_cancel(struct sq_store *st, const char *id, struct store_job *out,
                     struct tpv_err *err);
int sq_job_claim(struct sq_store *st, const char *owner, double lease_s, struct store_claim *out,
                    struct tpv_err *err);
int sq_job_progress(struct sq_store *st, const char *id, const char *owner, double progress,
                    double lease_expires, bool *cancel, struct tpv_err *err);
int sq_job_succeed(struct sq_store *st, const char *id, const char *owner,
                      const struct store_score *scores, size_t nscores, const char *stability,
                      const char *result, struct tpv_err *err);
int sq_job_finish(struct sq_store *st, const char *id, const char *owner, const char *state,
                     const char *code, const char *message, struct tpv_err *err);
int sq_job_release(struct sq_store *st, const char *id, const char *owner, struct tpv_err *err);
int sq_jobs_recover(struct sq_store *st, int max_attempts, int *requeued, int *failed,
                       struct tpv_err *err);
int sq_jobs_requeue_expired(struct sq_store *st, int max_attempts, double now, int *requeued,
                               int *failed, struct tpv_err *err);
int sq_study_create(struct sq_store *st, const struct store_study_new *in,
                       const struct store_idem *idem, const struct store_reply *reply,
                       struct tpv_err *err);
int sq_study_get(struct sq_store *st, const char *id, struct store_study *out,
                    struct tpv_err *err);
int sq_study_version(struct sq_store *st, const char *id, int64_t *version, struct tpv_err *err);
int sq_study_info(struct sq_store *st, const char *id, struct store_study_info *out,
                     struct tpv_err *err);
int sq_study_list(struct sq_store *st, int64_t after_seq, int limit, uint64_t max_bytes,
                     struct store_study_page *page, struct tpv_err *err);
int sq_input_set(struct sq_store *st, const char *study_id, const char *split, const char *digest,
                    int64_t n, struct tpv_err *err);
int sq_candidate_create(struct sq_store *st, const struct store_candidate_new *in,
                           int64_t max_queued, const struct store_idem *idem,
                           const struct store_reply *reply, struct tpv_err *err);
int sq_candidate_get(struct sq_store *st, const char *study_id, const char *id,
                        struct store_candidate *out, struct tpv_err *err);
int sq_candidate_source(struct sq_store *st, const char *study_id, const char *id, char **source,
                           char kind[16], struct tpv_err *err);
int sq_candidate_list(struct sq_store *st, const char *study_id, int64_t after_seq, int limit,
                         uint64_t max_bytes, struct store_candidate_page *page,
                         struct tpv_err *err);
int sq_jbr_create(struct sq_store *st, const char *study_id, const char *candidate_id,
                     const char *job_id, const char *params, int64_t max_queued,
                     struct tpv_err *err);
int sq_candidate_delete(struct sq_store *st, const char *study_id, const char *id,
                           struct tpv_err *err);
int sq_study_delete(struct sq_store *st, const char *id, struct tpv_err *err);
int sq_candidate_retry(struct sq_store *st, const char *study_id, const char *id,
                          const char *job_id, int64_t max_queued, struct tpv_err *err);
int sq_rank_rows(struct sq_store *st, const char *study_id, const char *noise, const char *split,
                    struct store_rank_row **rows, size_t *nrows, struct tpv_err *err);
int sq_token_create(struct sq_store *st, const char *name, const char *role, const char *hash_hex,
                       struct tpv_err *err);
int sq_token_find(struct sq_store *st, const char *hash_hex, struct store_token *out,
                     struct tpv_err *err);
int sq_token_list(struct sq_store *st, struct store_token_row **rows, size_t *n,
                     struct tpv_err *err);
int sq_token_revoke(struct sq_store *st, const char *name, struct tpv_err *err);
int sq_token_count(struct sq_store *st, int64_t *n, struct tpv_err *err);
int sq_metrics_merge(struct sq_store *st, const char *study_id, const char *candidate_id,
                     const char *patch, int64_t *version, struct tpv_err *err);
int sq_metric_names(struct sq_store *st, const char *study_id, char *names, size_t cap,
                    struct tpv_err *err);
int sq_rank_contributions(struct sq_store *st, const char *study_id, const char *noise,
                          const char *split, const char *const *ids, size_t n,
                          struct store_contrib **out, struct tpv_err *err);
int sq_agree_rows(struct sq_store *st, const char *study_id, const char *metric,
                  struct store_agree_rows *out, struct tpv_err *err);

#endif
