/* store_sqlite_blobs.c: the blob rows of the SQLite backend (uploads recorded for /metrics and
 * garbage collection; references checked before a delete).  The files are storage/blobs.c's:
 * the dispatcher passes a callback that removes one inside the transaction. */
#include "storage/sqlite_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sq_blob_record(struct sq_store *st, const char *digest, uint64_t size, const char *now,
                   struct tpv_err *err)
{
    struct store_conn *c = conn_get(st);
    int rc;
    sqlite3_stmt *s = conn_stmt(c, STMT_BLOB_PUT, err);
    if (!s) {
        rc = err->code;
    } else {
        bind_text(s, 1, digest);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)size);
        bind_text(s, 3, now);
        rc = stmt_exec(c, s, err);
    }
    conn_put(st, c);
    return rc;
}

/* What references `digest`, if anything: "study st_..." / "candidate cd_..." / "job jb_..." into
 * what (cap bytes), "" when nothing does.  Inside the caller's transaction. */
static int blob_referrer(struct store_conn *c, const char *digest, char *what, size_t cap,
                         struct tpv_err *err)
{
    what[0] = '\0';
    sqlite3_stmt *s = conn_stmt(c, STMT_BLOB_REFS, err);
    if (!s)
        return err->code;
    bind_text(s, 1, digest);
    int step = sqlite3_step(s), rc = TPV_OK;
    if (step == SQLITE_ROW)
        snprintf(what, cap, "%s %s", col_text(s, 0), col_text(s, 1));
    else if (step != SQLITE_DONE)
        rc = db_fail(c, step, "read blob references", err);
    stmt_done(s);
    return rc;
}

/* Removes the blob's row (inside the caller's transaction), then its file through rm. */
static int blob_remove(struct store_conn *c, const char *digest, store_blob_remove_fn rm,
                       void *ctx, struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, STMT_BLOB_DELETE, err);
    if (!s)
        return err->code;
    bind_text(s, 1, digest);
    int rc = stmt_exec(c, s, err);
    if (rc == TPV_OK)
        rc = rm(ctx, digest, err);
    return rc;
}

int sq_blob_delete(struct sq_store *st, const char *digest, store_blob_remove_fn rm, void *ctx,
                   struct tpv_err *err)
{
    char what[96];
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err); /* the write lock: no reference commits between check and unlink */
    if (rc == TPV_OK)
        rc = blob_referrer(c, digest, what, sizeof what, err);
    if (rc == TPV_OK && what[0])
        rc = tpv_err_set(err, TPV_EPRECONDITION, "digest", "blob %s is referenced by %s",
                         digest, what);
    if (rc == TPV_OK)
        rc = blob_remove(c, digest, rm, ctx, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    return rc;
}

int sq_blob_gc(struct sq_store *st, const char *cutoff, int limit, store_blob_remove_fn rm,
               void *ctx, int *removed, struct tpv_err *err)
{
    *removed = 0;
    if (limit <= 0)
        return TPV_OK;
    char (*due)[STORE_DIGEST_MAX] = calloc((size_t)limit, sizeof *due);
    if (!due)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    int n = 0, step;
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    sqlite3_stmt *s = NULL;
    if (rc == TPV_OK && !(s = conn_stmt(c, STMT_BLOB_GC_DUE, err)))
        rc = err->code;
    if (rc == TPV_OK) {
        bind_text(s, 1, cutoff);
        sqlite3_bind_int(s, 2, limit);
        while ((step = sqlite3_step(s)) == SQLITE_ROW && n < limit)
            snprintf(due[n++], STORE_DIGEST_MAX, "%s", col_text(s, 0));
        if (step != SQLITE_ROW && step != SQLITE_DONE)
            rc = db_fail(c, step, "find unreferenced blobs", err);
        stmt_done(s);
    }
    for (int i = 0; rc == TPV_OK && i < n; i++)
        rc = blob_remove(c, due[i], rm, ctx, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    free(due);
    if (rc == TPV_OK)
        *removed = n;
    return rc;
}
