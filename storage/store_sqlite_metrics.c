/* store_sqlite_metrics.c: candidate metrics (merged on PUT) and the one read of the agreement
 * report, on the SQLite backend (see metrics.h).  Plain C values in and out, JSON only as text:
 * the merge is SQLite's json_patch (RFC 7396: a null removes a key), which keeps each number's spelling.
 *
 * PostgreSQL, for the backend of storage/DESIGN-phase2.md: the merge is
 *   jsonb_strip_nulls(coalesce(metrics, '{}')::jsonb || $patch::jsonb)
 * (values are numbers, so stripping nulls touches nothing but the removed keys), the key count
 * jsonb_object_keys, and the metric of a row (c.metrics::jsonb -> $m) where its jsonb_typeof is
 * 'number'. */
#include "storage/sqlite_int.h"


#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The merged text and its key count, without writing. */
static int metrics_patched(struct store_conn *c, const char *old, const char *patch,
                           char **merged, int64_t *nkeys, struct tpv_err *err)
{
    *merged = NULL;
    sqlite3_stmt *s = conn_stmt(c, STMT_METRICS_PATCH, err);
    if (!s)
        return err->code;
    bind_text(s, 1, old);
    bind_text(s, 2, patch);
    int rc = TPV_OK, step = sqlite3_step(s);
    if (step == SQLITE_ROW && sqlite3_column_type(s, 0) == SQLITE_TEXT) {
        *nkeys = sqlite3_column_int64(s, 1);
        if (!(*merged = col_strdup(s, 0)))
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    } else if (step == SQLITE_ROW) { /* json_patch gives NULL only for text that is not JSON */
        rc = tpv_err_set(err, TPV_EINVAL, "metrics", "metrics must be a JSON object");
    } else {
        rc = db_fail(c, step, "merge metrics", err);
    }
    stmt_done(s);
    return rc;
}

/* The candidate's metrics text ("{}" when it has none) into *old.  TPV_ENOTFOUND. */
static int metrics_old(struct store_conn *c, const char *study_id, const char *id, char **old,
                       struct tpv_err *err)
{
    *old = NULL;
    sqlite3_stmt *s = conn_stmt(c, STMT_METRICS_OLD, err);
    if (!s)
        return err->code;
    bind_text(s, 1, study_id);
    bind_text(s, 2, id);
    int rc = TPV_OK, step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        if (!(*old = col_strdup(s, 0)))
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    } else if (step == SQLITE_DONE) {
        rc = tpv_err_set(err, TPV_ENOTFOUND, "candidate_id", "candidate %s not found in study %s",
                         id, study_id);
    } else {
        rc = db_fail(c, step, "read metrics", err);
    }
    stmt_done(s);
    return rc;
}

/* Stores the merged text (SQL NULL when no key is left: the candidate shape then shows none). */
static int metrics_set(struct store_conn *c, const char *id, const char *merged, int64_t nkeys,
                       struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, STMT_METRICS_SET, err);
    if (!s)
        return err->code;
    bind_text(s, 1, id);
    bind_text(s, 2, nkeys > 0 ? merged : NULL);
    return stmt_exec(c, s, err);
}

static int study_version_read(struct store_conn *c, const char *study_id, int64_t *version,
                              struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, STMT_STUDY_VERSION, err);
    if (!s)
        return err->code;
    bind_text(s, 1, study_id);
    int rc = TPV_OK, step = sqlite3_step(s);
    if (step == SQLITE_ROW)
        *version = sqlite3_column_int64(s, 0);
    else if (step == SQLITE_DONE)
        rc = tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", study_id);
    else
        rc = db_fail(c, step, "read study", err);
    stmt_done(s);
    return rc;
}

int sq_metrics_merge(struct sq_store *st, const char *study_id, const char *candidate_id,
                        const char *patch, int64_t *version, struct tpv_err *err)
{
    char *old = NULL, *merged = NULL;
    int64_t nkeys = 0;
    bool changed = false;
    *version = 0;
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    if (rc == TPV_OK)
        rc = metrics_old(c, study_id, candidate_id, &old, err);
    if (rc == TPV_OK)
        rc = metrics_patched(c, old, patch, &merged, &nkeys, err);
    if (rc == TPV_OK && nkeys > STORE_METRICS_MAX)
        rc = tpv_err_set(err, TPV_EINVAL, "metrics",
                         "a candidate holds at most %d metrics; this would make %lld (remove "
                         "some with null)", STORE_METRICS_MAX, (long long)nkeys);
    if (rc == TPV_OK)
        changed = strcmp(old, merged) != 0;
    if (rc == TPV_OK && changed)
        rc = metrics_set(c, candidate_id, merged, nkeys, err);
    /* A change shows in the candidate list, so it moves the ETag; a PUT that changes nothing
     * (a retry) does not. */
    if (rc == TPV_OK)
        rc = changed ? study_bump(c, study_id, version, err)
                     : study_version_read(c, study_id, version, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    if (rc == TPV_OK && changed)
        notify_study(st, study_id, *version);
    free(old);
    free(merged);
    return rc;
}

#define METRIC_NAMES_SHOWN 16

int sq_metric_names(struct sq_store *st, const char *study_id, char *names, size_t cap,
                       struct tpv_err *err)
{
    if (cap == 0)
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "no room for metric names");
    names[0] = '\0';
    struct store_conn *c = conn_get(st);
    int rc = TPV_OK, step;
    size_t used = 0;
    sqlite3_stmt *s = conn_stmt(c, STMT_METRICS_NAMES, err);
    if (!s) {
        rc = err->code;
        goto out;
    }
    bind_text(s, 1, study_id);
    sqlite3_bind_int(s, 2, METRIC_NAMES_SHOWN + 1);
    for (int count = 0; (step = sqlite3_step(s)) == SQLITE_ROW; count++) {
        int n = snprintf(names + used, cap - used, "%s%s", used ? ", " : "",
                         count < METRIC_NAMES_SHOWN ? col_text(s, 0) : "...");
        if (n < 0 || (size_t)n >= cap - used) { /* cut: keep whole names only */
            names[used] = '\0';
            break;
        }
        used += (size_t)n;
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        rc = db_fail(c, step, "read metric names", err);
    stmt_done(s);
out:
    conn_put(st, c);
    return rc;
}

void store_agree_rows_free(struct store_agree_rows *rows)
{
    if (!rows)
        return;
    free(rows->noise_models);
    free(rows->cands);
    free(rows->scores);
    memset(rows, 0, sizeof *rows);
}

/* Room for one more element in a growing array of `size`-byte elements (doubling, checked
 * against overflow). */
static bool grow(void **items, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return true;
    size_t next = 16, bytes;
    if ((*cap && __builtin_mul_overflow(*cap, (size_t)2, &next)) ||
        __builtin_mul_overflow(next, size, &bytes))
        return false;
    void *p = realloc(*items, bytes);
    if (!p)
        return false;
    *items = p;
    *cap = next;
    return true;
}

/* Columns of AGREE_ROWS: 0 noise_models, 1 version, 2 candidate id, 3 metric, 4 noise,
 * 5 split, 6 value.  A candidate's rows are consecutive (ORDER BY c.seq). */
static int agree_row(sqlite3_stmt *s, struct store_agree_rows *out, size_t *ccap, size_t *scap,
                     struct tpv_err *err)
{
    if (!out->noise_models) {
        out->version = sqlite3_column_int64(s, 1);
        if (!(out->noise_models = col_strdup(s, 0)))
            return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    if (sqlite3_column_type(s, 2) == SQLITE_NULL)
        return TPV_OK; /* the study has no candidate */
    const char *id = col_text(s, 2);
    struct store_agree_cand *last = out->ncands ? &out->cands[out->ncands - 1] : NULL;
    if (!last || strcmp(last->id, id) != 0) {
        if (!grow((void **)&out->cands, ccap, out->ncands, sizeof *out->cands))
            return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        last = &out->cands[out->ncands++];
        memset(last, 0, sizeof *last);
        snprintf(last->id, sizeof last->id, "%s", id);
        last->has_metric = sqlite3_column_type(s, 3) != SQLITE_NULL;
        last->metric = last->has_metric ? sqlite3_column_double(s, 3) : NAN;
        last->first = out->nscores;
    }
    if (sqlite3_column_type(s, 4) == SQLITE_NULL)
        return TPV_OK; /* a candidate without scores (queued, failed) */
    if (!grow((void **)&out->scores, scap, out->nscores, sizeof *out->scores))
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    struct store_agree_score *sc = &out->scores[out->nscores++];
    snprintf(sc->noise, sizeof sc->noise, "%s", col_text(s, 4));
    snprintf(sc->split, sizeof sc->split, "%s", col_text(s, 5));
    sc->value = sqlite3_column_type(s, 6) == SQLITE_NULL ? NAN : sqlite3_column_double(s, 6);
    last->nscores++;
    return TPV_OK;
}

int sq_agree_rows(struct sq_store *st, const char *study_id, const char *metric,
                     struct store_agree_rows *out, struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    size_t ccap = 0, scap = 0;
    struct store_conn *c = conn_get(st);
    int rc = TPV_OK, step = SQLITE_DONE;
    sqlite3_stmt *s = conn_stmt(c, STMT_AGREE_ROWS, err);
    if (!s) {
        rc = err->code;
    } else {
        bind_text(s, 1, study_id);
        bind_text(s, 2, metric);
        while (rc == TPV_OK && (step = sqlite3_step(s)) == SQLITE_ROW)
            rc = agree_row(s, out, &ccap, &scap, err);
        if (rc == TPV_OK && step != SQLITE_DONE)
            rc = db_fail(c, step, "read agreement rows", err);
    }
    stmt_done(s);
    conn_put(st, c);
    if (rc == TPV_OK && !out->noise_models)
        rc = tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", study_id);
    if (rc != TPV_OK)
        store_agree_rows_free(out);
    return rc;
}
