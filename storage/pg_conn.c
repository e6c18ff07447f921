/* pg_conn.c: libpq connection pool, statements, error mapping and retried transactions (see
 * pg_conn.h; DESIGN.md section 7).  The only file besides pg_notify.c that includes libpq. */
#include "storage/pg_conn.h"

#include <errno.h>
#include <libpq-fe.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

struct pg_conn {
    PGconn *pc;
    char sqlstate[6];
    bool lost_in_commit; /* the connection died while COMMIT was in flight */
    bool lent;
};

struct pg_pool {
    char *conninfo;
    struct pg_pool_options o;
    struct pg_conn *conns;
    int n;
    int *idle; /* indices of idle connections (a stack) */
    int nidle;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* CLOCK_MONOTONIC: an idle connection came back */
    /* Reconnect backoff, shared by every connection: while the server is down one attempt per
     * interval is made, whichever thread asks; the others fail fast with the last error. */
    int64_t next_try_ms;
    int backoff_ms;
    char last_error[256];
    struct pg_pool_stats stats;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* libpq messages end with a newline (sometimes two lines): keep the first line. */
static void first_line(char *dst, size_t cap, const char *msg)
{
    snprintf(dst, cap, "%s", msg && *msg ? msg : "unknown error");
    dst[strcspn(dst, "\n")] = '\0';
}

/* ---- connecting ---- */

/* PQconnectdbParams with our connect_timeout and keepalives placed before the user's conninfo,
 * so that values the conninfo gives win (libpq keeps the last value of a repeated keyword). */
/* Server notices (and the FATAL a shutting-down server sends to idle sessions) are not errors of
 * any request: libpq would print them on stderr. */
static void notice_drop(void *ctx, const char *message)
{
    (void)ctx;
    (void)message;
}

static PGconn *connect_raw(const char *conninfo, int connect_timeout_s)
{
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", connect_timeout_s);
    const char *const keys[] = { "connect_timeout", "keepalives", "keepalives_idle",
                                 "keepalives_interval", "keepalives_count", "application_name",
                                 "dbname", NULL };
    const char *const vals[] = { timeout, "1", "10", "5", "3", "tpvd", conninfo, NULL };
    PGconn *pc = PQconnectdbParams(keys, vals, 1);
    if (pc)
        PQsetNoticeProcessor(pc, notice_drop, NULL);
    return pc;
}

static int conn_fail_unavailable(PGconn *pc, struct tpv_err *err)
{
    char line[256];
    first_line(line, sizeof line, pc ? PQerrorMessage(pc) : "out of memory");
    return tpv_err_set(err, TPV_EUNAVAILABLE, NULL, "database unavailable: %s", line);
}

struct pg_conn *pg_conn_open(const char *conninfo, int connect_timeout_s, struct tpv_err *err)
{
    struct pg_conn *c = calloc(1, sizeof *c);
    if (!c) {
        tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        return NULL;
    }
    c->pc = connect_raw(conninfo, connect_timeout_s > 0 ? connect_timeout_s : 5);
    if (!c->pc || PQstatus(c->pc) != CONNECTION_OK) {
        conn_fail_unavailable(c->pc, err);
        pg_conn_close(c);
        return NULL;
    }
    return c;
}

void pg_conn_close(struct pg_conn *c)
{
    if (!c)
        return;
    PQfinish(c->pc);
    free(c);
}

int pg_conn_socket(const struct pg_conn *c)
{
    return c && c->pc ? PQsocket(c->pc) : -1;
}

int pg_conn_reset(struct pg_conn *c, struct tpv_err *err)
{
    PQreset(c->pc);
    if (PQstatus(c->pc) != CONNECTION_OK)
        return conn_fail_unavailable(c->pc, err);
    c->sqlstate[0] = '\0';
    c->lost_in_commit = false;
    return TPV_OK;
}

/* Whether an idle connection still works.  A server that shut down or terminated the backend
 * sent a FATAL message and closed the socket while nobody was reading: that shows as a readable
 * socket, and reading it moves libpq to CONNECTION_BAD.  One poll(), no round trip. */
static bool conn_alive(struct pg_conn *c)
{
    if (!c->pc || PQstatus(c->pc) != CONNECTION_OK ||
        PQtransactionStatus(c->pc) != PQTRANS_IDLE)
        return false;
    struct pollfd pfd = { .fd = PQsocket(c->pc), .events = POLLIN };
    if (pfd.fd < 0)
        return false;
    if (poll(&pfd, 1, 0) > 0) {
        if (!PQconsumeInput(c->pc))
            return false;
        PGnotify *n;
        while ((n = PQnotifies(c->pc))) /* pooled connections LISTEN to nothing: drop */
            PQfreemem(n);
    }
    return PQstatus(c->pc) == CONNECTION_OK;
}

/* ---- pool ---- */

int pg_pool_open(struct pg_pool **out, const char *conninfo, const struct pg_pool_options *opts,
                 struct tpv_err *err)
{
    *out = NULL;
    char *perr = NULL;
    PQconninfoOption *parsed = PQconninfoParse(conninfo ? conninfo : "", &perr);
    if (!parsed) {
        char line[256];
        first_line(line, sizeof line, perr ? perr : "out of memory");
        PQfreemem(perr);
        return tpv_err_set(err, TPV_EINVAL, "database", "invalid database URL: %s", line);
    }
    PQconninfoFree(parsed);

    struct pg_pool_options o = { 0 };
    if (opts)
        o = *opts;
    o.size = o.size <= 0 ? 4 : o.size > 256 ? 256 : o.size;
    o.acquire_timeout_ms = o.acquire_timeout_ms <= 0 ? 5000 : o.acquire_timeout_ms;
    o.connect_timeout_s = o.connect_timeout_s <= 0 ? 5 : o.connect_timeout_s;
    o.backoff_min_ms = o.backoff_min_ms <= 0 ? 100 : o.backoff_min_ms;
    o.backoff_max_ms = o.backoff_max_ms < o.backoff_min_ms ? 5000 : o.backoff_max_ms;
    if (o.backoff_max_ms < o.backoff_min_ms)
        o.backoff_max_ms = o.backoff_min_ms;
    o.tx_attempts = o.tx_attempts <= 0 ? 8 : o.tx_attempts;

    struct pg_pool *p = calloc(1, sizeof *p);
    if (!p)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    p->o = o;
    p->n = o.size;
    p->conninfo = strdup(conninfo);
    p->conns = calloc((size_t)p->n, sizeof *p->conns);
    p->idle = calloc((size_t)p->n, sizeof *p->idle);
    pthread_mutex_init(&p->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (!p->conninfo || !p->conns || !p->idle) {
        pg_pool_close(p);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    /* Slot 0 is pushed last so that it is lent first: it is the one connected now. */
    for (int i = p->n - 1; i >= 0; i--)
        p->idle[p->nidle++] = i;
    p->conns[0].pc = connect_raw(p->conninfo, o.connect_timeout_s);
    if (!p->conns[0].pc || PQstatus(p->conns[0].pc) != CONNECTION_OK) {
        int rc = conn_fail_unavailable(p->conns[0].pc, err);
        pg_pool_close(p);
        return rc;
    }
    p->stats.connects = 1;
    *out = p;
    return TPV_OK;
}

void pg_pool_close(struct pg_pool *p)
{
    if (!p)
        return;
    for (int i = 0; p->conns && i < p->n; i++)
        PQfinish(p->conns[i].pc);
    free(p->conns);
    free(p->idle);
    free(p->conninfo);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

void pg_pool_stats(struct pg_pool *p, struct pg_pool_stats *out)
{
    pthread_mutex_lock(&p->lock);
    *out = p->stats;
    pthread_mutex_unlock(&p->lock);
}

static void idle_push(struct pg_pool *p, struct pg_conn *c)
{
    pthread_mutex_lock(&p->lock);
    c->lent = false;
    p->idle[p->nidle++] = (int)(c - p->conns);
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

/* Takes an idle slot, waiting until `deadline_ms`.  NULL on timeout. */
static struct pg_conn *idle_pop(struct pg_pool *p, int64_t deadline_ms)
{
    struct timespec until = { .tv_sec = deadline_ms / 1000,
                              .tv_nsec = (long)(deadline_ms % 1000) * 1000000L };
    struct pg_conn *c = NULL;
    pthread_mutex_lock(&p->lock);
    while (p->nidle == 0) {
        int rc = pthread_cond_timedwait(&p->cond, &p->lock, &until);
        if (rc == ETIMEDOUT && p->nidle == 0)
            break;
    }
    if (p->nidle > 0) {
        c = &p->conns[p->idle[--p->nidle]];
        c->lent = true;
    }
    pthread_mutex_unlock(&p->lock);
    return c;
}

/* (Re)connects slot c unless the backoff says the server was down a moment ago. */
static int slot_connect(struct pg_pool *p, struct pg_conn *c, struct tpv_err *err)
{
    pthread_mutex_lock(&p->lock);
    int64_t now = mono_ms();
    if (p->stats.down && now < p->next_try_ms) {
        int rc = tpv_err_set(err, TPV_EUNAVAILABLE, NULL,
                             "database unavailable (next attempt in %lld ms): %s",
                             (long long)(p->next_try_ms - now), p->last_error);
        pthread_mutex_unlock(&p->lock);
        return rc;
    }
    pthread_mutex_unlock(&p->lock);

    if (c->pc)
        PQreset(c->pc);
    else
        c->pc = connect_raw(p->conninfo, p->o.connect_timeout_s);
    bool ok = c->pc && PQstatus(c->pc) == CONNECTION_OK;
    int rc = ok ? TPV_OK : conn_fail_unavailable(c->pc, err);

    pthread_mutex_lock(&p->lock);
    if (ok) {
        p->stats.connects++;
        p->stats.down = false;
        p->backoff_ms = 0;
    } else {
        p->stats.connect_failures++;
        p->stats.down = true;
        /* Doubling up to the cap, without overflow for any configured cap. */
        p->backoff_ms = !p->backoff_ms ? p->o.backoff_min_ms
                        : p->backoff_ms > p->o.backoff_max_ms / 2 ? p->o.backoff_max_ms
                                                                  : p->backoff_ms * 2;
        p->next_try_ms = mono_ms() + p->backoff_ms;
        first_line(p->last_error, sizeof p->last_error, c->pc ? PQerrorMessage(c->pc) : NULL);
    }
    pthread_mutex_unlock(&p->lock);
    c->sqlstate[0] = '\0';
    c->lost_in_commit = false;
    return rc;
}

int pg_pool_acquire(struct pg_pool *p, struct pg_conn **out, struct tpv_err *err)
{
    *out = NULL;
    struct pg_conn *c = idle_pop(p, mono_ms() + p->o.acquire_timeout_ms);
    if (!c)
        return tpv_err_set(err, TPV_EUNAVAILABLE, NULL,
                           "no database connection free within %d ms (pool of %d)",
                           p->o.acquire_timeout_ms, p->n);
    if (!conn_alive(c)) {
        int rc = slot_connect(p, c, err);
        if (rc != TPV_OK) {
            idle_push(p, c);
            return rc;
        }
    }
    c->sqlstate[0] = '\0';
    *out = c;
    return TPV_OK;
}

void pg_pool_release(struct pg_pool *p, struct pg_conn *c)
{
    if (!c)
        return;
    if (c->pc && PQstatus(c->pc) == CONNECTION_OK &&
        PQtransactionStatus(c->pc) != PQTRANS_IDLE)
        pg_tx_rollback(c);
    idle_push(p, c);
}

/* ---- statements ---- */

const char *pg_conn_sqlstate(const struct pg_conn *c)
{
    return c->sqlstate;
}

bool pg_conn_retryable(const struct pg_conn *c)
{
    if (c->lost_in_commit)
        return false;
    return strcmp(c->sqlstate, "40001") == 0 || strcmp(c->sqlstate, "40P01") == 0 ||
           strcmp(c->sqlstate, "08006") == 0;
}

static int code_of_sqlstate(const char *state)
{
    if (strcmp(state, "23505") == 0)
        return TPV_EEXIST;
    if (strcmp(state, "23503") == 0)
        return TPV_ENOTFOUND;
    if (strncmp(state, "23", 2) == 0)
        return TPV_EINVAL;
    if (strncmp(state, "40", 2) == 0 || strncmp(state, "08", 2) == 0 ||
        strncmp(state, "57P", 3) == 0 || strcmp(state, "53300") == 0)
        return TPV_EUNAVAILABLE;
    if (strcmp(state, "53100") == 0)
        return TPV_ENOSPACE;
    if (strcmp(state, "53200") == 0)
        return TPV_ENOMEM;
    return TPV_EINTERNAL;
}

/* Records why `r` (may be NULL) failed and maps it to a tpv_code. */
static int stmt_fail(struct pg_conn *c, PGresult *r, struct tpv_err *err)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (PQstatus(c->pc) != CONNECTION_OK)
        state = "08006"; /* connection_failure: whatever the last message said */
    snprintf(c->sqlstate, sizeof c->sqlstate, "%s", state ? state : "XX000");
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char line[256];
    first_line(line, sizeof line, msg ? msg : PQerrorMessage(c->pc));
    int code = code_of_sqlstate(c->sqlstate);
    if (strcmp(c->sqlstate, "08006") == 0)
        return tpv_err_set(err, code, NULL, "database connection lost: %s", line);
    return tpv_err_set(err, code, NULL, "database: %s (SQLSTATE %s)", line, c->sqlstate);
}

int pg_exec(struct pg_conn *c, const char *sql, int nparams, const char *const *params,
            struct pg_result **res, struct tpv_err *err)
{
    if (res)
        *res = NULL;
    PGresult *r = PQexecParams(c->pc, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        int rc = stmt_fail(c, r, err);
        PQclear(r);
        return rc;
    }
    c->sqlstate[0] = '\0';
    if (res)
        *res = (struct pg_result *)r;
    else
        PQclear(r);
    return TPV_OK;
}

int pg_exec_script(struct pg_conn *c, const char *sql, struct tpv_err *err)
{
    PGresult *r = PQexec(c->pc, sql);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    int rc = TPV_OK;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        rc = stmt_fail(c, r, err);
    else
        c->sqlstate[0] = '\0';
    PQclear(r);
    return rc;
}

/* ---- results: a struct pg_result is a PGresult under another name ---- */

static const PGresult *R(const struct pg_result *r)
{
    return (const PGresult *)r;
}

int pg_result_rows(const struct pg_result *r)
{
    return r ? PQntuples(R(r)) : 0;
}

int64_t pg_result_affected(const struct pg_result *r)
{
    const char *n = r ? PQcmdTuples((PGresult *)r) : "";
    return *n ? strtoll(n, NULL, 10) : 0;
}

bool pg_result_null(const struct pg_result *r, int row, int col)
{
    return PQgetisnull(R(r), row, col) != 0;
}

const char *pg_result_text(const struct pg_result *r, int row, int col)
{
    return PQgetisnull(R(r), row, col) ? "" : PQgetvalue(R(r), row, col);
}

int64_t pg_result_int64(const struct pg_result *r, int row, int col)
{
    return PQgetisnull(R(r), row, col) ? 0 : strtoll(PQgetvalue(R(r), row, col), NULL, 10);
}

double pg_result_double(const struct pg_result *r, int row, int col)
{
    return PQgetisnull(R(r), row, col) ? NAN : strtod(PQgetvalue(R(r), row, col), NULL);
}

char *pg_result_strdup(const struct pg_result *r, int row, int col)
{
    return PQgetisnull(R(r), row, col) ? NULL : strdup(PQgetvalue(R(r), row, col));
}

void pg_result_free(struct pg_result *r)
{
    PQclear((PGresult *)r);
}

/* ---- transactions ---- */

int pg_tx_begin(struct pg_conn *c, enum pg_isolation iso, struct tpv_err *err)
{
    static const char *const begin[] = {
        [PG_READ_COMMITTED] = "BEGIN ISOLATION LEVEL READ COMMITTED",
        [PG_REPEATABLE_READ] = "BEGIN ISOLATION LEVEL REPEATABLE READ",
        [PG_SERIALIZABLE] = "BEGIN ISOLATION LEVEL SERIALIZABLE",
    };
    c->lost_in_commit = false;
    return pg_exec(c, begin[iso], 0, NULL, NULL, err);
}

int pg_tx_commit(struct pg_conn *c, struct tpv_err *err)
{
    PGresult *r = PQexec(c->pc, "COMMIT");
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    int rc = TPV_OK;
    if (st != PGRES_COMMAND_OK) {
        rc = stmt_fail(c, r, err);
        if (strcmp(c->sqlstate, "08006") == 0) {
            /* The server may have committed before the connection died: never run the body
             * again on our own. */
            c->lost_in_commit = true;
            tpv_err_prefix(err, "commit outcome unknown");
        }
    } else if (strcmp(PQcmdStatus(r), "ROLLBACK") == 0) {
        /* COMMIT of a transaction that had already failed answers ROLLBACK. */
        snprintf(c->sqlstate, sizeof c->sqlstate, "25P02");
        rc = tpv_err_set(err, TPV_EINTERNAL, NULL, "database: transaction was rolled back");
    } else {
        c->sqlstate[0] = '\0';
    }
    PQclear(r);
    return rc;
}

void pg_tx_rollback(struct pg_conn *c)
{
    if (c->pc && PQstatus(c->pc) == CONNECTION_OK &&
        PQtransactionStatus(c->pc) != PQTRANS_IDLE)
        PQclear(PQexec(c->pc, "ROLLBACK"));
}

/* A random pause of 1..(2^(attempt+1)) ms, at most 256 ms, so that transactions that conflicted
 * do not meet again at once (full jitter: hot rows under several writers settle quickly). */
static void retry_pause(int attempt)
{
    unsigned r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
        r = (unsigned)mono_ms();
    unsigned span = 2u << (attempt < 7 ? attempt : 7);
    long ms = 1 + (long)(r % span);
    struct timespec ts = { .tv_sec = 0, .tv_nsec = ms * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int pg_tx_run(struct pg_pool *p, enum pg_isolation iso, pg_tx_fn fn, void *ctx,
              struct tpv_err *err)
{
    int rc = TPV_OK;
    for (int attempt = 1; attempt <= p->o.tx_attempts; attempt++) {
        struct pg_conn *c;
        rc = pg_pool_acquire(p, &c, err);
        if (rc != TPV_OK)
            return rc; /* the database is down or the pool busy: nothing ran */
        rc = pg_tx_begin(c, iso, err);
        if (rc == TPV_OK)
            rc = fn(c, ctx, err);
        if (rc == TPV_OK)
            rc = pg_tx_commit(c, err);
        bool again = rc == TPV_EUNAVAILABLE && pg_conn_retryable(c);
        pg_tx_rollback(c);
        pg_pool_release(p, c);
        if (!again)
            return rc;
        pthread_mutex_lock(&p->lock);
        p->stats.tx_retries++;
        pthread_mutex_unlock(&p->lock);
        retry_pause(attempt);
    }
    /* Only TPV_EUNAVAILABLE failures are retried, so that is what the last attempt left. */
    if (err)
        tpv_err_prefix(err, "gave up after %d attempts", p->o.tx_attempts);
    return rc;
}

/* ---- notifications ---- */

int pg_notify_send(struct pg_conn *c, const char *channel, const char *payload,
                   struct tpv_err *err)
{
    const char *params[] = { channel, payload };
    return pg_exec(c, "SELECT pg_notify($1, $2)", 2, params, NULL, err);
}

int pg_conn_consume(struct pg_conn *c,
                    void (*fn)(void *ctx, const char *channel, const char *payload), void *ctx,
                    struct tpv_err *err)
{
    if (!PQconsumeInput(c->pc) || PQstatus(c->pc) != CONNECTION_OK) {
        char line[256];
        first_line(line, sizeof line, PQerrorMessage(c->pc));
        snprintf(c->sqlstate, sizeof c->sqlstate, "08006");
        return tpv_err_set(err, TPV_EUNAVAILABLE, NULL, "database connection lost: %s", line);
    }
    PGnotify *n;
    while ((n = PQnotifies(c->pc))) {
        fn(ctx, n->relname, n->extra);
        PQfreemem(n);
    }
    return TPV_OK;
}
