/* store_sqlite_studies.c: studies, input sets, candidates and ranking rows of the SQLite backend
 * (see store.h).  Read views fill the row and page structs of store_types.h (api/render.c makes
 * the API shapes) with a constant number of queries per call. */
#include "storage/sqlite_int.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A text column that is never NULL in the schema: a copy ("" for NULL); NULL only when out of
 * memory. */
static char *col_dup(sqlite3_stmt *s, int i)
{
    return strdup(col_text(s, i));
}

static double col_real_or_nan(sqlite3_stmt *s, int i)
{
    return sqlite3_column_type(s, i) == SQLITE_NULL ? NAN : sqlite3_column_double(s, i);
}

static void input_from_row(sqlite3_stmt *s, int digest_col, int n_col, struct store_input *in)
{
    snprintf(in->digest, sizeof in->digest, "%s", col_text(s, digest_col));
    in->n = sqlite3_column_type(s, n_col) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, n_col);
}

/* Columns of STUDY_GET / STUDY_LIST into *o (zeroed first); false when out of memory (*o is
 * then freed). */
static bool study_from_row(sqlite3_stmt *s, struct store_study *o)
{
    memset(o, 0, sizeof *o);
    o->seq = sqlite3_column_int64(s, 0);
    snprintf(o->id, sizeof o->id, "%s", col_text(s, 1));
    o->name = col_dup(s, 2);
    o->description = col_dup(s, 3);
    o->noise_models = col_dup(s, 4);
    o->rank_by = col_dup(s, 5);
    bool ok = col_strdup_or_null(s, 6, &o->webhook_url);
    o->metadata = col_dup(s, 7);
    o->version = sqlite3_column_int64(s, 8);
    snprintf(o->created_at, sizeof o->created_at, "%s", col_text(s, 9));
    input_from_row(s, 10, 11, &o->fit);
    input_from_row(s, 12, 13, &o->probe);
    o->has_probe_dumps = sqlite3_column_int(s, 14) != 0;
    if (ok && o->name && o->description && o->noise_models && o->rank_by && o->metadata)
        return true;
    store_study_free(o);
    return false;
}

/* Inside a write's transaction and before any uniqueness rule: whether the idempotency key is
 * still free.  Writers are serialised (BEGIN IMMEDIATE), so a key found here was committed by a
 * concurrent request: TPV_EEXIST with field "Idempotency-Key" (the caller replays that answer),
 * TPV_EPRECONDITION when it came with another body. */
static int idem_unused(struct store_conn *c, const struct store_idem *idem, struct tpv_err *err)
{
    if (!idem)
        return TPV_OK;
    struct store_replay r;
    int rc = idem_lookup_conn(c, idem, &r, err);
    store_replay_free(&r);
    if (rc == TPV_ENOTFOUND)
        return TPV_OK;
    if (rc == TPV_OK)
        return tpv_err_set(err, TPV_EEXIST, "Idempotency-Key", "Idempotency-Key '%s' is in use",
                           idem->key);
    return rc;
}

/* Bytes of a text as a JSON string body, escaped the way jansson writes it. */
static uint64_t escaped_bytes(const unsigned char *t, int len)
{
    uint64_t n = 0;
    for (int i = 0; i < len; i++)
        n += t[i] == '"' || t[i] == '\\' || t[i] == '\b' || t[i] == '\f' || t[i] == '\n' ||
                     t[i] == '\r' || t[i] == '\t'
                 ? 2
             : t[i] < 0x20 ? 6
                           : 1;
    return n;
}

/* An upper bound of the JSON bytes a list row becomes, for the page byte bound: columns whose
 * bit is set in json_cols hold JSON text, sent at most as long as stored (compact, reals only
 * get shorter); other text is escaped as a string; numbers take at most 24 bytes; overhead
 * covers the keys and punctuation of the row's shape. */
#define ROW_OVERHEAD_BYTES 320
static uint64_t row_bytes(sqlite3_stmt *s, unsigned json_cols)
{
    uint64_t n = ROW_OVERHEAD_BYTES;
    for (int i = 0, cols = sqlite3_column_count(s); i < cols; i++) {
        if (sqlite3_column_type(s, i) != SQLITE_TEXT)
            n += 24;
        else if (i < 32 && (json_cols >> i & 1u))
            n += (uint64_t)sqlite3_column_bytes(s, i);
        else
            n += 2 + escaped_bytes(sqlite3_column_text(s, i), sqlite3_column_bytes(s, i));
    }
    return n;
}

/* Whether a page of `count` items taking `used` bytes is full before an item of `more` bytes:
 * a page always holds at least one item, whatever its size. */
static bool page_full(int count, uint64_t used, uint64_t more, uint64_t max_bytes)
{
    return count > 0 && max_bytes > 0 && (more > max_bytes || used > max_bytes - more);
}

/* Makes room for item `n` in the array *items of *cap items (doubling); false when out of
 * memory (the array is unchanged). */
static bool grow(void *items, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return true;
    size_t want = *cap ? *cap * 2 : 16;
    void *p = want <= SIZE_MAX / size ? realloc(*(void **)items, want * size) : NULL;
    if (!p)
        return false;
    *(void **)items = p;
    *cap = want;
    return true;
}

int sq_study_create(struct sq_store *st, const struct store_study_new *in,
                       const struct store_idem *idem, const struct store_reply *reply,
                       struct tpv_err *err)
{
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    if (rc == TPV_OK)
        rc = idem_unused(c, idem, err);
    if (rc != TPV_OK)
        goto out;
    sqlite3_stmt *s = conn_stmt(c, STMT_STUDY_INSERT, err);
    if (!s) {
        rc = err->code;
        goto out;
    }
    bind_text(s, 1, in->id);
    bind_text(s, 2, in->name);
    bind_text(s, 3, in->description ? in->description : "");
    bind_text(s, 4, in->noise_models);
    bind_text(s, 5, in->rank_by);
    bind_text(s, 6, in->webhook_url);
    bind_text(s, 7, in->metadata ? in->metadata : "{}");
    bind_text(s, 8, in->created_at);
    bind_text(s, 9, in->webhook_url ? in->webhook_secret : NULL);
    rc = stmt_exec(c, s, err);
    if (rc == TPV_OK && idem)
        rc = idem_store_conn(c, idem, reply, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
out:
    tx_rollback(c);
    conn_put(st, c);
    return rc;
}

int sq_study_get(struct sq_store *st, const char *id, struct store_study *out,
                    struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    struct store_conn *c = conn_get(st);
    int rc;
    sqlite3_stmt *s = conn_stmt(c, STMT_STUDY_GET, err);
    if (!s) {
        rc = err->code;
    } else {
        bind_text(s, 1, id);
        int step = sqlite3_step(s);
        if (step == SQLITE_ROW)
            rc = study_from_row(s, out) ? TPV_OK
                                        : tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        else if (step == SQLITE_DONE)
            rc = tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", id);
        else
            rc = db_fail(c, step, "read study", err);
    }
    stmt_done(s);
    conn_put(st, c);
    return rc;
}

/* One indexed read; the dispatcher (store.c) caches the answer between commits. */
int sq_study_version(struct sq_store *st, const char *id, int64_t *version, struct tpv_err *err)
{
    struct store_conn *c = conn_get(st);
    int rc;
    sqlite3_stmt *s = conn_stmt(c, STMT_STUDY_VERSION, err);
    if (!s) {
        rc = err->code;
    } else {
        bind_text(s, 1, id);
        int step = sqlite3_step(s);
        if (step == SQLITE_ROW) {
            *version = sqlite3_column_int64(s, 0);
            rc = TPV_OK;
        } else if (step == SQLITE_DONE) {
            rc = tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", id);
        } else {
            rc = db_fail(c, step, "read study version", err);
        }
    }
    stmt_done(s);
    conn_put(st, c);
    return rc;
}

void store_study_info_free(struct store_study_info *info)
{
    if (!info)
        return;
    free(info->noise_models);
    free(info->rank_by);
    memset(info, 0, sizeof *info);
}

int sq_study_info(struct sq_store *st, const char *id, struct store_study_info *out,
                     struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    struct store_conn *c = conn_get(st);
    int rc;
    sqlite3_stmt *s = conn_stmt(c, STMT_STUDY_GET, err);
    if (!s) {
        rc = err->code;
    } else {
        bind_text(s, 1, id);
        int step = sqlite3_step(s);
        if (step == SQLITE_ROW) {
            out->noise_models = col_strdup(s, 4);
            out->rank_by = col_strdup(s, 5);
            out->version = sqlite3_column_int64(s, 8);
            snprintf(out->fit_digest, sizeof out->fit_digest, "%s", col_text(s, 10));
            snprintf(out->probe_digest, sizeof out->probe_digest, "%s", col_text(s, 12));
            out->has_probe_dumps = sqlite3_column_int(s, 14) != 0;
            rc = out->noise_models && out->rank_by
                     ? TPV_OK
                     : tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        } else if (step == SQLITE_DONE) {
            rc = tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", id);
        } else {
            rc = db_fail(c, step, "read study", err);
        }
    }
    stmt_done(s);
    conn_put(st, c);
    if (rc != TPV_OK)
        store_study_info_free(out);
    return rc;
}

int sq_study_list(struct sq_store *st, int64_t after_seq, int limit, uint64_t max_bytes,
                     struct store_study_page *page, struct tpv_err *err)
{
    memset(page, 0, sizeof *page);
    if (limit < 1 || limit == INT_MAX) /* limit + 1 rows are read */
        return tpv_err_set(err, TPV_EINVAL, "limit", "limit must be in [1, %d)", INT_MAX);
    struct store_conn *c = conn_get(st);
    int rc = TPV_OK, step;
    uint64_t used = 0;
    size_t cap = 0;
    sqlite3_stmt *s = conn_stmt(c, STMT_STUDY_LIST, err);
    if (!s) {
        rc = err->code;
        goto out;
    }
    sqlite3_bind_int64(s, 1, after_seq);
    sqlite3_bind_int(s, 2, limit + 1); /* one extra row tells whether a next page exists */
    while ((step = sqlite3_step(s)) == SQLITE_ROW) {
        uint64_t more = row_bytes(s, 1u << 4 | 1u << 7); /* noise_models, metadata */
        if (page->n == (size_t)limit || page_full((int)page->n, used, more, max_bytes)) {
            page->next_seq = page->items[page->n - 1].seq;
            break;
        }
        used += more;
        if (!grow(&page->items, &cap, page->n, sizeof *page->items) ||
            !study_from_row(s, &page->items[page->n])) {
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
            break;
        }
        page->n++;
    }
    if (rc == TPV_OK && step != SQLITE_ROW && step != SQLITE_DONE)
        rc = db_fail(c, step, "list studies", err);
out:
    stmt_done(s);
    conn_put(st, c);
    if (rc != TPV_OK)
        store_study_page_free(page);
    return rc;
}

/* The digest of a study's input set into out ("" when unset) and its number of candidates. */
static int input_state(struct store_conn *c, const char *study_id, const char *split,
                       char out[STORE_DIGEST_MAX], int64_t *candidates, struct tpv_err *err)
{
    out[0] = '\0';
    sqlite3_stmt *s = conn_stmt(c, STMT_INPUT_DIGEST, err);
    if (!s)
        return err->code;
    bind_text(s, 1, study_id);
    bind_text(s, 2, split);
    int step = sqlite3_step(s);
    if (step == SQLITE_ROW)
        snprintf(out, STORE_DIGEST_MAX, "%s", col_text(s, 0));
    stmt_done(s);
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        return db_fail(c, step, "read input set", err);
    if (!(s = conn_stmt(c, STMT_CAND_COUNT, err)))
        return err->code;
    bind_text(s, 1, study_id);
    step = sqlite3_step(s);
    *candidates = step == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    stmt_done(s);
    return step == SQLITE_ROW ? TPV_OK : db_fail(c, step, "count candidates", err);
}

int sq_input_set(struct sq_store *st, const char *study_id, const char *split, const char *digest,
                    int64_t n, struct tpv_err *err)
{
    char now[STORE_TIME_MAX], current[STORE_DIGEST_MAX];
    int64_t version = 0, candidates = 0;
    bool same = false;
    store_now_rfc3339(now);
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    if (rc == TPV_OK)
        rc = input_state(c, study_id, split, current, &candidates, err);
    /* Candidates are scored on the inputs of their time: new inputs beside them would mix two
     * input sets in one ranking.  The same digest again changes nothing. */
    if (rc == TPV_OK && !(same = strcmp(current, digest) == 0) && candidates > 0)
        rc = tpv_err_set(err, TPV_EPRECONDITION, strcmp(split, "fit") == 0 ? "inputs.fit"
                                                                            : "inputs.probe",
                         "study %s has %lld candidate(s), so its %s input set is fixed: they "
                         "were scored on the current inputs and a ranking must not mix two "
                         "input sets; create a new study for other inputs",
                         study_id, (long long)candidates, split);
    if (rc == TPV_OK && same) {
        tx_rollback(c); /* nothing to write */
        conn_put(st, c);
        return TPV_OK;
    }
    if (rc == TPV_OK)
        rc = study_bump(c, study_id, &version, err); /* also: the study exists */
    if (rc == TPV_OK) {
        sqlite3_stmt *s = conn_stmt(c, STMT_INPUT_PUT, err);
        if (!s) {
            rc = err->code;
        } else {
            bind_text(s, 1, study_id);
            bind_text(s, 2, split);
            bind_text(s, 3, digest);
            if (n >= 0)
                sqlite3_bind_int64(s, 4, n);
            bind_text(s, 5, now);
            rc = stmt_exec(c, s, err);
        }
    }
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    if (rc == TPV_OK)
        notify_study(st, study_id, version);
    return rc;
}

/* ---- candidates ---- */

static int queue_room(struct store_conn *c, int64_t max_queued, struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, STMT_JOBS_QUEUED, err);
    if (!s)
        return err->code;
    int rc = TPV_OK;
    if (sqlite3_step(s) != SQLITE_ROW)
        rc = db_fail(c, SQLITE_ERROR, "count queued jobs", err);
    else if (max_queued > 0 && sqlite3_column_int64(s, 0) >= max_queued)
        rc = tpv_err_set(err, TPV_EBUSY, NULL,
                         "the job queue is full (%lld queued jobs, limit --max-queued-jobs)",
                         (long long)sqlite3_column_int64(s, 0));
    stmt_done(s);
    return rc;
}

static int job_insert(struct store_conn *c, const char *id, const char *kind, const char *study_id,
                      const char *candidate_id, const char *params, const char *now,
                      struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, STMT_JOB_INSERT, err);
    if (!s)
        return err->code;
    bind_text(s, 1, id);
    bind_text(s, 2, kind);
    bind_text(s, 3, study_id);
    bind_text(s, 4, candidate_id);
    bind_text(s, 5, params);
    bind_text(s, 6, now);
    return stmt_exec(c, s, err);
}

int sq_candidate_create(struct sq_store *st, const struct store_candidate_new *in,
                           int64_t max_queued, const struct store_idem *idem,
                           const struct store_reply *reply, struct tpv_err *err)
{
    int64_t version = 0;
    struct store_conn *c = conn_get(st);
    sqlite3_stmt *s;
    int rc = tx_begin(c, err);
    if (rc == TPV_OK)
        rc = idem_unused(c, idem, err); /* before the name rule: a replay is no duplicate */
    if (rc == TPV_OK)
        rc = study_bump(c, in->study_id, &version, err);
    if (rc == TPV_OK && (s = conn_stmt(c, STMT_CAND_BY_NAME, err))) {
        bind_text(s, 1, in->study_id);
        bind_text(s, 2, in->name);
        int step = sqlite3_step(s);
        if (step == SQLITE_ROW)
            rc = tpv_err_set(err, TPV_EEXIST, "name",
                             "a candidate named '%s' already exists in study %s", in->name,
                             in->study_id);
        else if (step != SQLITE_DONE)
            rc = db_fail(c, step, "check candidate name", err);
        stmt_done(s);
    } else if (rc == TPV_OK) {
        rc = err->code;
    }
    if (rc == TPV_OK)
        rc = queue_room(c, max_queued, err);
    if (rc == TPV_OK && (s = conn_stmt(c, STMT_CAND_INSERT, err))) {
        bind_text(s, 1, in->id);
        bind_text(s, 2, in->study_id);
        bind_text(s, 3, in->name);
        bind_text(s, 4, in->metadata ? in->metadata : "{}");
        bind_text(s, 5, in->source_kind);
        bind_text(s, 6, in->source);
        if (in->has_train_loss)
            sqlite3_bind_double(s, 7, in->train_loss);
        if (in->has_epoch)
            sqlite3_bind_double(s, 8, in->epoch);
        bind_text(s, 9, in->run);
        bind_text(s, 10, in->job_id);
        bind_text(s, 11, in->created_at);
        rc = stmt_exec(c, s, err);
    } else if (rc == TPV_OK) {
        rc = err->code;
    }
    if (rc == TPV_OK)
        rc = job_insert(c, in->job_id, "score", in->study_id, in->id, NULL, in->created_at, err);
    if (rc == TPV_OK && in->has_probe_dump && (s = conn_stmt(c, STMT_STUDY_PROBE_DUMP, err))) {
        bind_text(s, 1, in->study_id);
        rc = stmt_exec(c, s, err);
    }
    if (rc == TPV_OK && idem)
        rc = idem_store_conn(c, idem, reply, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    if (rc == TPV_OK) {
        notify_study(st, in->study_id, version);
        notify_job(st);
    }
    return rc;
}

/* Columns of CAND_SCORES / CAND_LIST_SCORES (from 1) into *o; false when out of memory. */
static bool score_from_row(sqlite3_stmt *s, struct store_score_row *o)
{
    memset(o, 0, sizeof *o);
    o->noise = col_dup(s, 1);
    o->kind = col_dup(s, 2);
    o->split = col_dup(s, 3);
    o->value = col_real_or_nan(s, 4);
    o->stderr_value = col_real_or_nan(s, 5);
    o->estimator = col_dup(s, 6);
    o->samples = (uint64_t)sqlite3_column_int64(s, 7);
    o->seed = (uint64_t)sqlite3_column_int64(s, 8);
    o->wall_seconds = sqlite3_column_double(s, 9);
    o->stderr_inputs = col_real_or_nan(s, 11); /* NULL before contributions were stored */
    bool ok = col_strdup_or_null(s, 10, &o->details);
    if (ok && o->noise && o->kind && o->split && o->estimator)
        return true;
    free(o->noise);
    free(o->kind);
    free(o->split);
    free(o->estimator);
    free(o->details);
    memset(o, 0, sizeof *o);
    return false;
}

/* Appends a score row to a candidate; false when out of memory (never a score short). */
static bool candidate_add_score(struct store_candidate *cand, size_t *cap, sqlite3_stmt *s)
{
    if (!grow(&cand->scores, cap, cand->nscores, sizeof *cand->scores) ||
        !score_from_row(s, &cand->scores[cand->nscores]))
        return false;
    cand->nscores++;
    return true;
}

/* Columns of CAND_GET / CAND_LIST into *o, without scores, with the metrics (storage/
 * store_sqlite_metrics.c) in column `metrics_col`; false when out of memory. */
static bool candidate_from_row(sqlite3_stmt *s, struct store_candidate *o, int metrics_col)
{
    memset(o, 0, sizeof *o);
    o->seq = sqlite3_column_int64(s, 0);
    snprintf(o->id, sizeof o->id, "%s", col_text(s, 1));
    snprintf(o->study_id, sizeof o->study_id, "%s", col_text(s, 2));
    o->name = col_dup(s, 3);
    o->metadata = col_dup(s, 4);
    o->source_kind = col_dup(s, 5);
    o->state = col_dup(s, 6);
    bool ok = col_strdup_or_null(s, 7, &o->stability);
    snprintf(o->job_id, sizeof o->job_id, "%s", col_text(s, 8));
    snprintf(o->created_at, sizeof o->created_at, "%s", col_text(s, 9));
    o->progress = sqlite3_column_double(s, 10);
    ok = col_strdup_or_null(s, metrics_col, &o->metrics) && ok;
    if (sqlite3_column_type(s, 11) != SQLITE_NULL) {
        o->error_code = col_dup(s, 11);
        o->error_message = col_dup(s, 12);
        ok = ok && o->error_code && o->error_message;
    }
    if (ok && o->name && o->metadata && o->source_kind && o->state)
        return true;
    store_candidate_free(o);
    return false;
}

/* The page's candidate of id `id` (items are in seq order, ids unordered: a sorted index). */
struct cand_index {
    const char *id;
    size_t at;
};

static int cand_index_cmp(const void *a, const void *b)
{
    return strcmp(((const struct cand_index *)a)->id, ((const struct cand_index *)b)->id);
}

static struct store_candidate *cand_find(struct store_candidate_page *page,
                                         const struct cand_index *index, const char *id)
{
    struct cand_index key = { .id = id };
    const struct cand_index *hit = bsearch(&key, index, page->n, sizeof *index, cand_index_cmp);
    return hit ? &page->items[hit->at] : NULL;
}

/* Steps `s` (bound: STMT_CAND_JBR or STMT_CAND_LIST_JBR, rows newest first, column 0 the
 * candidate, then id, state, created_at) into the jbr_jobs of the page's candidates; `index` is
 * the page's id index.  Rows of candidates outside the page (cut by the byte bound) are skipped.
 * Resets s. */
static int page_jbr_jobs(struct store_conn *c, sqlite3_stmt *s, struct store_candidate_page *page,
                         const struct cand_index *index, struct tpv_err *err)
{
    size_t *caps = calloc(page->n ? page->n : 1, sizeof *caps);
    int rc = TPV_OK, step = SQLITE_DONE;
    if (!caps)
        rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    while (rc == TPV_OK && (step = sqlite3_step(s)) == SQLITE_ROW) {
        struct store_candidate *cand = cand_find(page, index, col_text(s, 0));
        if (cand && !store_candidate_add_jbr(cand, &caps[cand - page->items], col_text(s, 1),
                                             col_text(s, 2), col_text(s, 3)))
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    if (rc == TPV_OK && step != SQLITE_DONE)
        rc = db_fail(c, step, "read JBR jobs", err);
    stmt_done(s);
    free(caps);
    return rc;
}

/* The candidate's JBR jobs (a page of one). */
static int candidate_jbr_jobs(struct store_conn *c, struct store_candidate *cand,
                              struct tpv_err *err)
{
    struct store_candidate_page one = { .items = cand, .n = 1 };
    const struct cand_index index = { .id = cand->id, .at = 0 };
    sqlite3_stmt *s = conn_stmt(c, STMT_CAND_JBR, err);
    if (!s)
        return err->code;
    bind_text(s, 1, cand->id);
    return page_jbr_jobs(c, s, &one, &index, err);
}

int sq_candidate_get(struct sq_store *st, const char *study_id, const char *id,
                        struct store_candidate *out, struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    struct store_conn *c = conn_get(st);
    int rc, step;
    size_t cap = 0;
    sqlite3_stmt *s = NULL;
    /* One snapshot for the row, its scores and its JBR jobs. */
    if ((rc = tx_begin_read(c, err)) != TPV_OK)
        goto out;
    if (!(s = conn_stmt(c, STMT_CAND_GET, err))) {
        rc = err->code;
        goto out;
    }
    bind_text(s, 1, study_id);
    bind_text(s, 2, id);
    step = sqlite3_step(s);
    if (step == SQLITE_ROW)
        rc = candidate_from_row(s, out, 13) ? TPV_OK
                                            : tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    else if (step == SQLITE_DONE)
        rc = tpv_err_set(err, TPV_ENOTFOUND, "candidate_id", "candidate %s not found in study %s",
                         id, study_id);
    else
        rc = db_fail(c, step, "read candidate", err);
    stmt_done(s);
    if (rc != TPV_OK)
        goto out;
    s = conn_stmt(c, STMT_CAND_SCORES, err);
    if (!s) {
        rc = err->code;
        goto out;
    }
    bind_text(s, 1, id);
    while ((step = sqlite3_step(s)) == SQLITE_ROW)
        if (!candidate_add_score(out, &cap, s)) {
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
            break;
        }
    if (rc == TPV_OK && step != SQLITE_DONE)
        rc = db_fail(c, step, "read scores", err);
    stmt_done(s);
    if (rc == TPV_OK)
        rc = candidate_jbr_jobs(c, out, err);
out:
    tx_rollback(c); /* the read's snapshot */
    conn_put(st, c);
    if (rc != TPV_OK)
        store_candidate_free(out);
    return rc;
}

int sq_candidate_source(struct sq_store *st, const char *study_id, const char *id, char **source,
                           char kind[16], struct tpv_err *err)
{
    *source = NULL;
    struct store_conn *c = conn_get(st);
    int rc;
    sqlite3_stmt *s = conn_stmt(c, STMT_CAND_SOURCE, err);
    if (!s) {
        rc = err->code;
    } else {
        bind_text(s, 1, study_id);
        bind_text(s, 2, id);
        int step = sqlite3_step(s);
        if (step == SQLITE_ROW) {
            *source = col_strdup(s, 0);
            snprintf(kind, 16, "%s", col_text(s, 1));
            rc = *source ? TPV_OK : tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        } else if (step == SQLITE_DONE) {
            rc = tpv_err_set(err, TPV_ENOTFOUND, "candidate_id",
                             "candidate %s not found in study %s", id, study_id);
        } else {
            rc = db_fail(c, step, "read candidate", err);
        }
    }
    stmt_done(s);
    conn_put(st, c);
    return rc;
}

/* The page's candidates by id (`index`, sorted; free it), NULL when out of memory. */
static struct cand_index *page_index(const struct store_candidate_page *page)
{
    struct cand_index *index = calloc(page->n, sizeof *index);
    if (!index)
        return NULL;
    for (size_t i = 0; i < page->n; i++)
        index[i] = (struct cand_index){ .id = page->items[i].id, .at = i };
    qsort(index, page->n, sizeof *index, cand_index_cmp);
    return index;
}

/* Second query of a page: the scores of exactly its candidates. */
static int page_scores(struct store_conn *c, const char *study_id, int64_t after_seq,
                       struct store_candidate_page *page, const struct cand_index *index,
                       struct tpv_err *err)
{
    size_t *caps = calloc(page->n, sizeof *caps);
    int rc = TPV_OK, step;
    sqlite3_stmt *s = NULL;
    if (!caps) {
        rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        goto out;
    }
    if (!(s = conn_stmt(c, STMT_CAND_LIST_SCORES, err))) {
        rc = err->code;
        goto out;
    }
    bind_text(s, 1, study_id);
    sqlite3_bind_int64(s, 2, after_seq);
    sqlite3_bind_int64(s, 3, (int64_t)page->n);
    while ((step = sqlite3_step(s)) == SQLITE_ROW) {
        struct store_candidate *cand = cand_find(page, index, col_text(s, 0));
        if (cand && !candidate_add_score(cand, &caps[cand - page->items], s)) {
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
            break;
        }
    }
    if (rc == TPV_OK && step != SQLITE_DONE)
        rc = db_fail(c, step, "list scores", err);
out:
    stmt_done(s);
    free(caps);
    return rc;
}

/* Third and last query of a page: the JBR jobs of exactly its candidates. */
static int page_jbr(struct store_conn *c, const char *study_id, int64_t after_seq,
                    struct store_candidate_page *page, const struct cand_index *index,
                    struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, STMT_CAND_LIST_JBR, err);
    if (!s)
        return err->code;
    bind_text(s, 1, study_id);
    sqlite3_bind_int64(s, 2, after_seq);
    sqlite3_bind_int64(s, 3, (int64_t)page->n);
    return page_jbr_jobs(c, s, page, index, err);
}

int sq_candidate_list(struct sq_store *st, const char *study_id, int64_t after_seq, int limit,
                         uint64_t max_bytes, struct store_candidate_page *page,
                         struct tpv_err *err)
{
    memset(page, 0, sizeof *page);
    if (limit < 1 || limit == INT_MAX) /* limit + 1 rows are read */
        return tpv_err_set(err, TPV_EINVAL, "limit", "limit must be in [1, %d)", INT_MAX);
    struct store_conn *c = conn_get(st);
    int rc = TPV_OK, step;
    uint64_t used = 0;
    size_t cap = 0;
    sqlite3_stmt *s;
    /* One snapshot for the rows, their scores and their JBR jobs. */
    if ((rc = tx_begin_read(c, err)) != TPV_OK)
        goto out;
    /* The study must exist (an empty page of a missing study would hide a typo). */
    s = conn_stmt(c, STMT_STUDY_VERSION, err);
    if (!s) {
        rc = err->code;
        goto out;
    }
    bind_text(s, 1, study_id);
    step = sqlite3_step(s);
    stmt_done(s);
    if (step != SQLITE_ROW) {
        rc = step == SQLITE_DONE
                 ? tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", study_id)
                 : db_fail(c, step, "read study", err);
        goto out;
    }
    s = conn_stmt(c, STMT_CAND_LIST, err);
    if (!s) {
        rc = err->code;
        goto out;
    }
    bind_text(s, 1, study_id);
    sqlite3_bind_int64(s, 2, after_seq);
    sqlite3_bind_int(s, 3, limit + 1);
    while ((step = sqlite3_step(s)) == SQLITE_ROW) {
        /* Column 13 estimates the candidate's scores and JBR jobs (second and third queries)
         * in bytes; the JSON columns are metadata, stability and metrics. */
        uint64_t more = row_bytes(s, 1u << 4 | 1u << 7 | 1u << 14) +
                        (uint64_t)sqlite3_column_int64(s, 13);
        if (page->n == (size_t)limit || page_full((int)page->n, used, more, max_bytes)) {
            page->next_seq = page->items[page->n - 1].seq;
            break;
        }
        used += more;
        if (!grow(&page->items, &cap, page->n, sizeof *page->items) ||
            !candidate_from_row(s, &page->items[page->n], 14)) {
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
            break;
        }
        page->n++;
    }
    if (rc == TPV_OK && step != SQLITE_ROW && step != SQLITE_DONE)
        rc = db_fail(c, step, "list candidates", err);
    stmt_done(s);
    struct cand_index *index = NULL;
    if (rc == TPV_OK && page->n > 0 && !(index = page_index(page)))
        rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    if (rc == TPV_OK && page->n > 0)
        rc = page_scores(c, study_id, after_seq, page, index, err);
    if (rc == TPV_OK && page->n > 0)
        rc = page_jbr(c, study_id, after_seq, page, index, err);
    free(index);
out:
    tx_rollback(c); /* the read's snapshot */
    conn_put(st, c);
    if (rc != TPV_OK)
        store_candidate_page_free(page);
    return rc;
}

int sq_jbr_create(struct sq_store *st, const char *study_id, const char *candidate_id,
                     const char *job_id, const char *params, int64_t max_queued,
                     struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    if (rc == TPV_OK) {
        sqlite3_stmt *s = conn_stmt(c, STMT_CAND_SOURCE, err);
        if (!s) {
            rc = err->code;
        } else {
            bind_text(s, 1, study_id);
            bind_text(s, 2, candidate_id);
            int step = sqlite3_step(s);
            if (step == SQLITE_DONE)
                rc = tpv_err_set(err, TPV_ENOTFOUND, "candidate_id",
                                 "candidate %s not found in study %s", candidate_id, study_id);
            else if (step != SQLITE_ROW)
                rc = db_fail(c, step, "read candidate", err);
            stmt_done(s);
        }
    }
    if (rc == TPV_OK)
        rc = queue_room(c, max_queued, err);
    if (rc == TPV_OK)
        rc = job_insert(c, job_id, "jbr", study_id, candidate_id, params, now, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    if (rc == TPV_OK)
        notify_job(st);
    return rc;
}

/* The candidate's state into state[16] (TPV_ENOTFOUND when it is not the study's). */
static int candidate_state(struct store_conn *c, const char *study_id, const char *id,
                           char state[16], struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, STMT_CAND_STATE_GET, err);
    if (!s)
        return err->code;
    bind_text(s, 1, study_id);
    bind_text(s, 2, id);
    int step = sqlite3_step(s), rc = TPV_OK;
    if (step == SQLITE_ROW)
        snprintf(state, 16, "%s", col_text(s, 0));
    else if (step == SQLITE_DONE)
        rc = tpv_err_set(err, TPV_ENOTFOUND, "candidate_id", "candidate %s not found in study %s",
                         id, study_id);
    else
        rc = db_fail(c, step, "read candidate", err);
    stmt_done(s);
    return rc;
}

/* Runs a two-text statement (?1 study or candidate id, ?2 id or NULL) inside the caller's
 * transaction. */
static int exec_ids(struct store_conn *c, enum store_stmt id, const char *a, const char *b,
                    struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, id, err);
    if (!s)
        return err->code;
    bind_text(s, 1, a);
    if (b)
        bind_text(s, 2, b);
    return stmt_exec(c, s, err);
}

/* A "candidate.deleted" / "study.deleted" event in the caller's transaction ("" = absent). */
static int deleted_event(struct store_conn *c, const char *event, const char *study_id,
                         const char *candidate_id, const char *state, int64_t version,
                         const char *now, struct tpv_err *err)
{
    struct store_event ev = { .version = version };
    snprintf(ev.event, sizeof ev.event, "%s", event);
    snprintf(ev.study_id, sizeof ev.study_id, "%s", study_id);
    snprintf(ev.candidate_id, sizeof ev.candidate_id, "%s", candidate_id);
    snprintf(ev.state, sizeof ev.state, "%s", state);
    snprintf(ev.at, sizeof ev.at, "%s", now);
    return outbox_put(c, &ev, err);
}

int sq_candidate_delete(struct sq_store *st, const char *study_id, const char *id,
                           struct tpv_err *err)
{
    char state[16] = "", now[STORE_TIME_MAX];
    int64_t version = 0;
    bool hook = false;
    store_now_rfc3339(now);
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    if (rc == TPV_OK)
        rc = candidate_state(c, study_id, id, state, err);
    if (rc == TPV_OK) /* the grace of blob garbage collection starts now */
        rc = exec_ids(c, STMT_BLOB_RELEASE_CAND, id, now, err);
    if (rc == TPV_OK) /* scores and jobs go by ON DELETE CASCADE */
        rc = exec_ids(c, STMT_CAND_DELETE, study_id, id, err);
    if (rc == TPV_OK)
        rc = study_bump(c, study_id, &version, err);
    if (rc == TPV_OK)
        rc = study_has_hook(c, study_id, &hook, err);
    if (rc == TPV_OK && hook)
        rc = deleted_event(c, "candidate.deleted", study_id, id, state, version, now, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    if (rc == TPV_OK)
        notify_study(st, study_id, version);
    return rc;
}

/* The study's version inside the caller's transaction (TPV_ENOTFOUND naming study_id). */
static int study_version_conn(struct store_conn *c, const char *id, int64_t *version,
                              struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, STMT_STUDY_VERSION, err);
    if (!s)
        return err->code;
    bind_text(s, 1, id);
    int step = sqlite3_step(s), rc = TPV_OK;
    if (step == SQLITE_ROW)
        *version = sqlite3_column_int64(s, 0);
    else if (step == SQLITE_DONE)
        rc = tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", id);
    else
        rc = db_fail(c, step, "read study", err);
    stmt_done(s);
    return rc;
}

int sq_study_delete(struct sq_store *st, const char *id, struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    int64_t version = 0;
    bool hook = false;
    store_now_rfc3339(now);
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    if (rc == TPV_OK)
        rc = study_version_conn(c, id, &version, err);
    if (rc == TPV_OK)
        rc = study_has_hook(c, id, &hook, err);
    if (rc == TPV_OK && hook)
        rc = deleted_event(c, "study.deleted", id, "", "", version + 1, now, err);
    if (rc == TPV_OK && hook) /* pending events keep where to go once the study row is gone */
        rc = exec_ids(c, STMT_OUTBOX_DETACH, id, NULL, err);
    if (rc == TPV_OK)
        rc = exec_ids(c, STMT_BLOB_RELEASE_STUDY, id, now, err);
    if (rc == TPV_OK) /* input sets, candidates, scores and jobs go by ON DELETE CASCADE */
        rc = exec_ids(c, STMT_STUDY_DELETE, id, NULL, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    if (rc == TPV_OK) /* held long-polls come back and find it gone */
        notify_study(st, id, version + 1);
    return rc;
}

int sq_candidate_retry(struct sq_store *st, const char *study_id, const char *id,
                          const char *job_id, int64_t max_queued, struct tpv_err *err)
{
    char state[16] = "", now[STORE_TIME_MAX];
    int64_t version = 0;
    store_now_rfc3339(now);
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    if (rc == TPV_OK)
        rc = candidate_state(c, study_id, id, state, err);
    if (rc == TPV_OK && strcmp(state, "failed") != 0 && strcmp(state, "canceled") != 0)
        rc = tpv_err_set(err, TPV_EPRECONDITION, "state",
                         "candidate %s is %s: only a failed or canceled candidate can be retried",
                         id, state);
    if (rc == TPV_OK)
        rc = queue_room(c, max_queued, err);
    if (rc == TPV_OK)
        rc = job_insert(c, job_id, "score", study_id, id, NULL, now, err);
    if (rc == TPV_OK)
        rc = exec_ids(c, STMT_CAND_REQUEUE, id, job_id, err);
    if (rc == TPV_OK)
        rc = exec_ids(c, STMT_SCORE_DELETE, id, NULL, err);
    if (rc == TPV_OK)
        rc = study_bump(c, study_id, &version, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    if (rc == TPV_OK) {
        notify_study(st, study_id, version);
        notify_job(st);
    }
    return rc;
}

/* ---- ranking ---- */

void store_rank_rows_free(struct store_rank_row *rows, size_t n)
{
    for (size_t i = 0; rows && i < n; i++) {
        free(rows[i].name);
        free(rows[i].metadata);
        free(rows[i].run);
    }
    free(rows);
}

int sq_rank_rows(struct sq_store *st, const char *study_id, const char *noise, const char *split,
                    struct store_rank_row **rows, size_t *nrows, struct tpv_err *err)
{
    *rows = NULL;
    *nrows = 0;
    size_t n = 0, cap = 0;
    struct store_rank_row *v = NULL;
    struct store_conn *c = conn_get(st);
    int rc = TPV_OK, step;
    sqlite3_stmt *s = conn_stmt(c, STMT_RANK_ROWS, err);
    if (!s) {
        rc = err->code;
        goto out;
    }
    bind_text(s, 1, study_id);
    bind_text(s, 2, noise);
    bind_text(s, 3, split);
    while ((step = sqlite3_step(s)) == SQLITE_ROW) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            struct store_rank_row *grown = realloc(v, ncap * sizeof *v);
            if (!grown) {
                rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
                break;
            }
            v = grown;
            cap = ncap;
        }
        struct store_rank_row *r = &v[n];
        memset(r, 0, sizeof *r);
        snprintf(r->id, sizeof r->id, "%s", col_text(s, 0));
        r->name = col_strdup(s, 1);
        r->metadata = col_strdup(s, 2);
        n++;
        if (!r->name || !r->metadata) {
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
            break;
        }
        snprintf(r->state, sizeof r->state, "%s", col_text(s, 3));
        r->has_train_loss = sqlite3_column_type(s, 4) != SQLITE_NULL;
        r->train_loss = sqlite3_column_double(s, 4);
        r->has_epoch = sqlite3_column_type(s, 5) != SQLITE_NULL;
        r->epoch = sqlite3_column_double(s, 5);
        if (!col_strdup_or_null(s, 6, &r->run)) {
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
            break;
        }
        r->has_value = sqlite3_column_type(s, 7) != SQLITE_NULL;
        r->value = sqlite3_column_double(s, 7);
        r->stderr_value = sqlite3_column_double(s, 8);
        r->has_stderr_inputs = sqlite3_column_type(s, 9) != SQLITE_NULL;
        r->stderr_inputs = sqlite3_column_double(s, 9);
        r->nonlinear = sqlite3_column_int(s, 10) != 0;
    }
    if (rc == TPV_OK && step != SQLITE_DONE)
        rc = db_fail(c, step, "ranking", err);
out:
    stmt_done(s);
    conn_put(st, c);
    if (rc != TPV_OK) {
        store_rank_rows_free(v, n);
        return rc;
    }
    *rows = v;
    *nrows = n;
    return TPV_OK;
}
