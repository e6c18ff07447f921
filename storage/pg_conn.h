/* pg_conn.h: the PostgreSQL connection pool of storage/ (DESIGN.md section 7): a fixed number of
 * libpq connections lent out with a timeout, broken connections replaced (PQreset) with an
 * exponential backoff while the database is down, parameterised statements only, and
 * transactions retried on serialization failures and deadlocks.
 *
 * No libpq type appears here: the rest of storage/ (and its tests) hold opaque handles, so that
 * only pg_*.c include libpq-fe.h.  Internal to storage/: the service code reaches the database
 * through store.h only.
 *
 * Errors: every function returns TPV_OK or a negative tpv_code with details in `err`.  While the
 * server cannot be reached the code is TPV_EUNAVAILABLE (HTTP 503); the pool then tries again by
 * itself, at most once per backoff interval, so a request during an outage fails fast instead of
 * waiting for a connect timeout. */
#ifndef TPV_PG_CONN_H
#define TPV_PG_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tpv_error.h"

struct pg_pool;
struct pg_conn;   /* a connection lent by the pool */
struct pg_result; /* the rows of one statement */

struct pg_pool_options {
    int size;               /* connections; 0 = 4 (at most 256) */
    int acquire_timeout_ms; /* wait for an idle connection; 0 = 5000 */
    int connect_timeout_s;  /* libpq connect_timeout unless the conninfo sets one; 0 = 5 */
    int backoff_min_ms;     /* first wait after a failed connect; 0 = 100 */
    int backoff_max_ms;     /* the wait doubles up to this; 0 = 5000 */
    int tx_attempts;        /* runs of a transaction body on 40001/40P01/lost connection; 0 = 8 */
};

/* Counters for tests and /metrics. */
struct pg_pool_stats {
    uint64_t connects;        /* successful (re)connections */
    uint64_t connect_failures;
    uint64_t tx_retries;      /* transaction bodies run again */
    bool down;                /* the last connect attempt failed */
};

/* Opens a pool on `conninfo` (a libpq URI "postgresql://..." or "key=value" string).  The first
 * connection is made now so that a wrong URI is reported at start (TPV_EINVAL for a malformed
 * conninfo, TPV_EUNAVAILABLE when the server refuses or is down); the others on first use.
 * `opts` may be NULL.  On success *out owns the pool (pg_pool_close). */
int pg_pool_open(struct pg_pool **out, const char *conninfo, const struct pg_pool_options *opts,
                 struct tpv_err *err);

/* Closes every connection; no connection may still be lent out.  NULL is a no-op. */
void pg_pool_close(struct pg_pool *p);

void pg_pool_stats(struct pg_pool *p, struct pg_pool_stats *out);

/* Lends a working connection: waits up to acquire_timeout_ms for an idle one (TPV_EUNAVAILABLE
 * "no database connection free"), checks that the server did not close it while it was idle and
 * reconnects it if so (TPV_EUNAVAILABLE while the database is down).  Give it back with
 * pg_pool_release. */
int pg_pool_acquire(struct pg_pool *p, struct pg_conn **out, struct tpv_err *err);

/* Returns a connection; an open transaction is rolled back first, so that no later user
 * inherits it.  NULL is a no-op. */
void pg_pool_release(struct pg_pool *p, struct pg_conn *c);

/* Runs one statement with text parameters (PQexecParams; params[i] NULL is SQL NULL).  `sql` is
 * a constant: values only ever travel as parameters.  When `res` is not NULL it receives the
 * rows (free with pg_result_free), else they are dropped.
 * Errors by SQLSTATE: 23505 TPV_EEXIST, 23503 TPV_ENOTFOUND, other 23xxx TPV_EINVAL, 40001/40P01
 * and lost connections TPV_EUNAVAILABLE, 53100 TPV_ENOSPACE, else TPV_EINTERNAL; the SQLSTATE is
 * kept (pg_conn_sqlstate). */
int pg_exec(struct pg_conn *c, const char *sql, int nparams, const char *const *params,
            struct pg_result **res, struct tpv_err *err);

/* Runs constant SQL text that may hold several statements (schema steps).  Never give it text
 * built from data: it has no parameters. */
int pg_exec_script(struct pg_conn *c, const char *sql, struct tpv_err *err);

/* The SQLSTATE of the connection's last failed statement ("" after a success); "08006" when the
 * connection was lost. */
const char *pg_conn_sqlstate(const struct pg_conn *c);

/* Whether the last failure is worth running the transaction again: serialization failure,
 * deadlock, or a connection lost before COMMIT was sent. */
bool pg_conn_retryable(const struct pg_conn *c);

/* ---- results ---- */

int pg_result_rows(const struct pg_result *r);
/* Rows an INSERT/UPDATE/DELETE touched. */
int64_t pg_result_affected(const struct pg_result *r);
bool pg_result_null(const struct pg_result *r, int row, int col);
/* Text of a value; "" for NULL.  Valid until pg_result_free. */
const char *pg_result_text(const struct pg_result *r, int row, int col);
int64_t pg_result_int64(const struct pg_result *r, int row, int col);  /* 0 for NULL */
double pg_result_double(const struct pg_result *r, int row, int col);  /* NaN for NULL */
/* malloc'd copy of a value, NULL for SQL NULL (or out of memory). */
char *pg_result_strdup(const struct pg_result *r, int row, int col);
void pg_result_free(struct pg_result *r);

/* ---- transactions ---- */

enum pg_isolation {
    PG_READ_COMMITTED,
    PG_REPEATABLE_READ,
    PG_SERIALIZABLE,
};

/* BEGIN / COMMIT / ROLLBACK on a lent connection.  ROLLBACK never fails loudly. */
int pg_tx_begin(struct pg_conn *c, enum pg_isolation iso, struct tpv_err *err);
int pg_tx_commit(struct pg_conn *c, struct tpv_err *err);
void pg_tx_rollback(struct pg_conn *c);

/* A transaction body: runs its statements on c and returns TPV_OK to commit, or an error to roll
 * back.  It may run several times (see pg_tx_run), so it must only change `ctx` in ways a rerun
 * resets. */
typedef int (*pg_tx_fn)(struct pg_conn *c, void *ctx, struct tpv_err *err);

/* Acquires a connection, runs `fn` in a transaction at `iso` and commits.  A serialization
 * failure or deadlock (40001/40P01), in the body or at COMMIT, or a connection lost before
 * COMMIT was sent, rolls back and runs the body again after a short random pause, up to
 * tx_attempts times (then TPV_EUNAVAILABLE).  A connection lost while COMMIT was in flight is
 * TPV_EUNAVAILABLE with "outcome unknown": the body is not run again, since it may have
 * committed. */
int pg_tx_run(struct pg_pool *p, enum pg_isolation iso, pg_tx_fn fn, void *ctx,
              struct tpv_err *err);

/* ---- notifications ---- */

/* Queues `NOTIFY channel, payload` in the caller's transaction (pg_notify() with parameters): it is
 * delivered to every listener when that transaction commits, and never if it rolls back. */
int pg_notify_send(struct pg_conn *c, const char *channel, const char *payload,
                   struct tpv_err *err);

/* ---- used by pg_notify.c ---- */

/* One libpq connection outside the pool (the listener's), made with the pool's connect options.
 * Returns NULL with err set (TPV_EUNAVAILABLE / TPV_EINVAL / TPV_ENOMEM). */
struct pg_conn *pg_conn_open(const char *conninfo, int connect_timeout_s, struct tpv_err *err);
void pg_conn_close(struct pg_conn *c);
/* The connection's socket, -1 when it has none. */
int pg_conn_socket(const struct pg_conn *c);
/* Reads what arrived on the socket and hands each NOTIFY to `fn`.  TPV_EUNAVAILABLE when the
 * connection was lost (reconnect it). */
int pg_conn_consume(struct pg_conn *c, void (*fn)(void *ctx, const char *channel,
                                                  const char *payload), void *ctx,
                    struct tpv_err *err);
/* Re-establishes a lost connection (PQreset).  TPV_EUNAVAILABLE when the server is still down. */
int pg_conn_reset(struct pg_conn *c, struct tpv_err *err);

#endif
