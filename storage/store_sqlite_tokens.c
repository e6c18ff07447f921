/* store_sqlite_tokens.c: API bearer tokens of the SQLite backend (see store.h): create, find by
 * hash (the tokens.hash column is UNIQUE, hence indexed: one read per lookup), list, revoke, count.
 * Secrets never reach storage: callers hand in the hex SHA-256 (api/auth.c). */
#include "storage/sqlite_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool store_token_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    return n > 0 && n <= STORE_TOKEN_NAME_MAX &&
           strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

static bool role_valid(const char *role)
{
    return role && (strcmp(role, "read") == 0 || strcmp(role, "write") == 0 ||
                    strcmp(role, "admin") == 0);
}

static bool hash_valid(const char *hex)
{
    return hex && strlen(hex) == 64 && strspn(hex, "0123456789abcdef") == 64;
}

int sq_token_create(struct sq_store *st, const char *name, const char *role, const char *hash_hex,
                       struct tpv_err *err)
{
    if (!store_token_name_valid(name))
        return tpv_err_set(err, TPV_EINVAL, "name",
                           "a token name is 1 to %d characters of A-Z a-z 0-9 . _ -",
                           STORE_TOKEN_NAME_MAX);
    if (!role_valid(role))
        return tpv_err_set(err, TPV_EINVAL, "role", "role is read, write or admin");
    if (!hash_valid(hash_hex))
        return tpv_err_set(err, TPV_EINVAL, "hash", "token hash is 64 lowercase hex digits");
    char id[STORE_ID_MAX], now[STORE_TIME_MAX];
    store_id_new(id, "tok");
    store_now_rfc3339(now);

    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    if (rc != TPV_OK)
        goto out;
    /* Under BEGIN IMMEDIATE no other writer runs between the check and the insert. */
    sqlite3_stmt *s = conn_stmt(c, STMT_TOKEN_BY_NAME, err);
    if (!s) {
        rc = err->code;
        goto out;
    }
    bind_text(s, 1, name);
    int step = sqlite3_step(s);
    stmt_done(s);
    if (step == SQLITE_ROW) {
        rc = tpv_err_set(err, TPV_EEXIST, "name", "a token named '%s' already exists", name);
        goto out;
    }
    if (step != SQLITE_DONE) {
        rc = db_fail(c, step, "read tokens", err);
        goto out;
    }
    s = conn_stmt(c, STMT_TOKEN_INSERT, err);
    if (!s) {
        rc = err->code;
        goto out;
    }
    bind_text(s, 1, id);
    bind_text(s, 2, name);
    bind_text(s, 3, hash_hex);
    bind_text(s, 4, role);
    bind_text(s, 5, now);
    rc = stmt_exec(c, s, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
out:
    tx_rollback(c);
    conn_put(st, c);
    return rc;
}

int sq_token_find(struct sq_store *st, const char *hash_hex, struct store_token *out,
                     struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    if (!hash_valid(hash_hex))
        return tpv_err_set(err, TPV_ENOTFOUND, "token", "no such token");
    struct store_conn *c = conn_get(st);
    int rc;
    sqlite3_stmt *s = conn_stmt(c, STMT_TOKEN_BY_HASH, err);
    if (!s) {
        rc = err->code;
    } else {
        bind_text(s, 1, hash_hex);
        int step = sqlite3_step(s);
        if (step == SQLITE_ROW) {
            snprintf(out->hash, sizeof out->hash, "%s", col_text(s, 0));
            snprintf(out->role, sizeof out->role, "%s", col_text(s, 1));
            out->revoked = sqlite3_column_int(s, 2) != 0;
            snprintf(out->name, sizeof out->name, "%s", col_text(s, 3));
            rc = TPV_OK;
        } else if (step == SQLITE_DONE) {
            rc = tpv_err_set(err, TPV_ENOTFOUND, "token", "no such token");
        } else {
            rc = db_fail(c, step, "read token", err);
        }
    }
    stmt_done(s);
    conn_put(st, c);
    return rc;
}

int sq_token_list(struct sq_store *st, struct store_token_row **rows, size_t *n,
                     struct tpv_err *err)
{
    *rows = NULL;
    *n = 0;
    struct store_conn *c = conn_get(st);
    int rc = TPV_OK, step;
    size_t cap = 0;
    struct store_token_row *out = NULL;
    sqlite3_stmt *s = conn_stmt(c, STMT_TOKEN_LIST, err);
    if (!s) {
        rc = err->code;
        goto out;
    }
    while ((step = sqlite3_step(s)) == SQLITE_ROW) {
        if (*n == cap) {
            size_t want = cap ? cap * 2 : 16;
            struct store_token_row *p = realloc(out, want * sizeof *out);
            if (!p) {
                rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
                goto out;
            }
            out = p;
            cap = want;
        }
        struct store_token_row *r = &out[(*n)++];
        snprintf(r->name, sizeof r->name, "%s", col_text(s, 0));
        snprintf(r->role, sizeof r->role, "%s", col_text(s, 1));
        snprintf(r->created_at, sizeof r->created_at, "%s", col_text(s, 2));
        snprintf(r->revoked_at, sizeof r->revoked_at, "%s", col_text(s, 3));
    }
    if (step != SQLITE_DONE)
        rc = db_fail(c, step, "list tokens", err);
out:
    stmt_done(s);
    conn_put(st, c);
    if (rc == TPV_OK && *n > 0) {
        *rows = out;
    } else {
        free(out);
        *n = 0;
    }
    return rc;
}

int sq_token_revoke(struct sq_store *st, const char *name, struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    if (rc != TPV_OK)
        goto out;
    sqlite3_stmt *s = conn_stmt(c, STMT_TOKEN_REVOKE, err);
    if (!s) {
        rc = err->code;
        goto out;
    }
    bind_text(s, 1, name);
    bind_text(s, 2, now);
    rc = stmt_exec(c, s, err);
    if (rc != TPV_OK)
        goto out;
    if (sqlite3_changes(c->db) == 0) {
        /* Nothing changed: an unknown name, or one revoked before. */
        s = conn_stmt(c, STMT_TOKEN_BY_NAME, err);
        if (!s) {
            rc = err->code;
            goto out;
        }
        bind_text(s, 1, name);
        int step = sqlite3_step(s);
        stmt_done(s);
        if (step == SQLITE_ROW)
            rc = tpv_err_set(err, TPV_EPRECONDITION, "name", "token '%s' was already revoked",
                             name);
        else if (step == SQLITE_DONE)
            rc = tpv_err_set(err, TPV_ENOTFOUND, "name", "no token named '%s'", name);
        else
            rc = db_fail(c, step, "read tokens", err);
        goto out;
    }
    rc = tx_commit(c, err);
out:
    tx_rollback(c);
    conn_put(st, c);
    return rc;
}

int sq_token_count(struct sq_store *st, int64_t *n, struct tpv_err *err)
{
    struct store_conn *c = conn_get(st);
    int rc = TPV_OK;
    sqlite3_stmt *s = conn_stmt(c, STMT_TOKEN_COUNT, err);
    if (!s)
        rc = err->code;
    else if (sqlite3_step(s) == SQLITE_ROW)
        *n = sqlite3_column_int64(s, 0);
    else
        rc = db_fail(c, SQLITE_ERROR, "count tokens", err);
    stmt_done(s);
    conn_put(st, c);
    return rc;
}
