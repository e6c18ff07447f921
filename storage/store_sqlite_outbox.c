/* store_sqlite_outbox.c: the webhook outbox of the SQLite backend (see store.h): pending events
 * with their study's URL and secret, and the outcome of each delivery attempt.  Rows are written
 * by the job transitions in store_sqlite_queue.c; server/webhook.c delivers them. */
#include "storage/sqlite_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void store_outbox_items_free(struct store_outbox_item *items, size_t n)
{
    for (size_t i = 0; items && i < n; i++) {
        free(items[i].payload);
        free(items[i].url);
        if (items[i].secret) {
            memset(items[i].secret, 0, strlen(items[i].secret));
            free(items[i].secret);
        }
    }
    free(items);
}

int sq_outbox_due(struct sq_store *st, double now, int limit, struct store_outbox_item **items,
                     size_t *n, struct tpv_err *err)
{
    *items = NULL;
    *n = 0;
    if (limit <= 0)
        return TPV_OK;
    struct store_outbox_item *out = calloc((size_t)limit, sizeof *out);
    if (!out)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    struct store_conn *c = conn_get(st);
    int rc = TPV_OK, step;
    size_t k = 0;
    sqlite3_stmt *s = conn_stmt(c, STMT_OUTBOX_DUE, err);
    if (!s) {
        rc = err->code;
        goto out;
    }
    sqlite3_bind_double(s, 1, now);
    sqlite3_bind_int(s, 2, limit);
    while ((step = sqlite3_step(s)) == SQLITE_ROW && k < (size_t)limit) {
        struct store_outbox_item *it = &out[k++];
        it->seq = sqlite3_column_int64(s, 0);
        snprintf(it->study_id, sizeof it->study_id, "%s", col_text(s, 1));
        snprintf(it->event, sizeof it->event, "%s", col_text(s, 2));
        it->payload = col_strdup(s, 3);
        it->attempts = sqlite3_column_int(s, 4);
        bool url_ok = col_strdup_or_null(s, 5, &it->url);
        bool secret_ok = col_strdup_or_null(s, 6, &it->secret);
        if (!it->payload || !url_ok || !secret_ok) { /* never an event without its URL or key */
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
            break;
        }
    }
    if (rc == TPV_OK && step != SQLITE_DONE && step != SQLITE_ROW)
        rc = db_fail(c, step, "read webhook outbox", err);
    stmt_done(s);
out:
    conn_put(st, c);
    if (rc != TPV_OK) {
        store_outbox_items_free(out, k);
        return rc;
    }
    if (k == 0) {
        free(out);
        out = NULL;
    }
    *items = out;
    *n = k;
    return TPV_OK;
}

int sq_outbox_next_due(struct sq_store *st, double *at, struct tpv_err *err)
{
    struct store_conn *c = conn_get(st);
    int rc;
    sqlite3_stmt *s = conn_stmt(c, STMT_OUTBOX_NEXT, err);
    if (!s) {
        rc = err->code;
    } else {
        int step = sqlite3_step(s);
        if (step == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL) {
            *at = sqlite3_column_double(s, 0);
            rc = TPV_OK;
        } else if (step == SQLITE_ROW || step == SQLITE_DONE) {
            rc = tpv_err_set(err, TPV_ENOTFOUND, NULL, "no pending webhook event");
        } else {
            rc = db_fail(c, step, "read webhook outbox", err);
        }
        stmt_done(s);
    }
    conn_put(st, c);
    return rc;
}

/* One UPDATE of a row by seq: `id` with ?2 text or double and ?3 error text. */
static int outbox_update(struct sq_store *st, enum store_stmt id, int64_t seq, double next_at,
                         const char *error, struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    struct store_conn *c = conn_get(st);
    int rc;
    sqlite3_stmt *s = conn_stmt(c, id, err);
    if (!s) {
        rc = err->code;
    } else {
        sqlite3_bind_int64(s, 1, seq);
        if (id == STMT_OUTBOX_RETRY) {
            sqlite3_bind_double(s, 2, next_at);
        } else {
            store_now_rfc3339(now);
            bind_text(s, 2, now);
        }
        if (id != STMT_OUTBOX_DONE)
            bind_text(s, 3, error);
        rc = stmt_exec(c, s, err);
    }
    conn_put(st, c);
    return rc;
}

int sq_outbox_delivered(struct sq_store *st, int64_t seq, struct tpv_err *err)
{
    return outbox_update(st, STMT_OUTBOX_DONE, seq, 0, NULL, err);
}

int sq_outbox_retry(struct sq_store *st, int64_t seq, double next_at, const char *error,
                       struct tpv_err *err)
{
    return outbox_update(st, STMT_OUTBOX_RETRY, seq, next_at, error, err);
}

int sq_outbox_fail(struct sq_store *st, int64_t seq, const char *error, struct tpv_err *err)
{
    return outbox_update(st, STMT_OUTBOX_FAIL, seq, 0, error, err);
}

int sq_outbox_stats(struct sq_store *st, int64_t *pending, int64_t *delivered, int64_t *failed,
                       struct tpv_err *err)
{
    struct store_conn *c = conn_get(st);
    int rc;
    sqlite3_stmt *s = conn_stmt(c, STMT_OUTBOX_STATS, err);
    if (!s) {
        rc = err->code;
    } else {
        int step = sqlite3_step(s);
        if (step == SQLITE_ROW) {
            *pending = sqlite3_column_int64(s, 0);
            *delivered = sqlite3_column_int64(s, 1);
            *failed = sqlite3_column_int64(s, 2);
            rc = TPV_OK;
        } else {
            rc = db_fail(c, step, "count webhook outbox", err);
        }
        stmt_done(s);
    }
    conn_put(st, c);
    return rc;
}
