/* queue.c: the durable job queue of the SQLite backend (see store.h): claims with leases inside
 * BEGIN IMMEDIATE transactions (SQLite has one writer at a time, so two claims never return the
 * same job), progress and lease renewal, terminal transitions that write scores and bump the study
 * version in one transaction, and crash recovery. */
#include "storage/store_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json_alloc.h"

static json_t *col_json_or_null(sqlite3_stmt *s, int i)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    json_t *j = t ? json_loads((const char *)t, JSON_DECODE_ANY, NULL) : NULL;
    return j ? j : json_null();
}

static json_t *col_str_or_null(sqlite3_stmt *s, int i)
{
    return sqlite3_column_type(s, i) == SQLITE_NULL ? json_null() : json_string(col_text(s, i));
}

/* Columns of JOB_GET. */
static json_t *job_row_json(sqlite3_stmt *s)
{
    json_t *error = json_null();
    if (sqlite3_column_type(s, 6) != SQLITE_NULL)
        error = json_pack("{s:s,s:s}", "code", col_text(s, 6), "message", col_text(s, 7));
    json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:f,s:i,s:o,s:s,s:o,s:o,s:b}",
                          "id", col_text(s, 0), "kind", col_text(s, 1), "study_id", col_text(s, 13),
                          "candidate_id", col_text(s, 2), "state", col_text(s, 3),
                          "progress", sqlite3_column_double(s, 4),
                          "attempts", sqlite3_column_int(s, 5), "error", error ? error : json_null(),
                          "created_at", col_text(s, 8), "started_at", col_str_or_null(s, 9),
                          "finished_at", col_str_or_null(s, 10),
                          "cancel_requested", sqlite3_column_int(s, 12) != 0);
    if (j && sqlite3_column_type(s, 11) != SQLITE_NULL)
        json_object_set_new(j, "result", col_json_or_null(s, 11));
    return j;
}

static int job_get_conn(struct store_conn *c, const char *id, json_t **out, char state[16],
                        struct tpv_err *err)
{
    if (out)
        *out = NULL;
    sqlite3_stmt *s = conn_stmt(c, STMT_JOB_GET, err);
    if (!s)
        return err->code;
    bind_text(s, 1, id);
    int step = sqlite3_step(s), rc = TPV_OK;
    if (step == SQLITE_ROW) {
        if (state)
            snprintf(state, 16, "%s", col_text(s, 3));
        if (out && !(*out = job_row_json(s)))
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    } else if (step == SQLITE_DONE) {
        rc = tpv_err_set(err, TPV_ENOTFOUND, "job_id", "job %s not found", id);
    } else {
        rc = db_fail(c, step, "read job", err);
    }
    stmt_done(s);
    return rc;
}

int store_job_get(struct store *st, const char *id, json_t **out, struct tpv_err *err)
{
    struct store_conn *c = conn_get(st);
    int rc = job_get_conn(c, id, out, NULL, err);
    conn_put(st, c);
    return rc;
}

/* Ids of a job row needed for side effects of its transitions. */
struct job_ref {
    char study_id[STORE_ID_MAX];
    char candidate_id[STORE_ID_MAX];
    char kind[16];
};

static int job_ref_any(struct store_conn *c, const char *id, struct job_ref *ref,
                       struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, STMT_JOB_GET, err);
    if (!s)
        return err->code;
    bind_text(s, 1, id);
    int step = sqlite3_step(s), rc = TPV_OK;
    if (step == SQLITE_ROW) {
        snprintf(ref->study_id, sizeof ref->study_id, "%s", col_text(s, 13));
        snprintf(ref->candidate_id, sizeof ref->candidate_id, "%s", col_text(s, 2));
        snprintf(ref->kind, sizeof ref->kind, "%s", col_text(s, 1));
    } else {
        rc = step == SQLITE_DONE ? tpv_err_set(err, TPV_ENOTFOUND, "job_id", "job %s not found", id)
                                 : db_fail(c, step, "read job", err);
    }
    stmt_done(s);
    return rc;
}

/* The job if it is still running under `owner`; TPV_EPRECONDITION otherwise (lease lost). */
static int job_ref_owned(struct store_conn *c, const char *id, const char *owner,
                         struct job_ref *ref, struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, STMT_JOB_OWNED, err);
    if (!s)
        return err->code;
    bind_text(s, 1, id);
    bind_text(s, 2, owner);
    int step = sqlite3_step(s), rc = TPV_OK;
    if (step == SQLITE_ROW) {
        snprintf(ref->study_id, sizeof ref->study_id, "%s", col_text(s, 0));
        snprintf(ref->candidate_id, sizeof ref->candidate_id, "%s", col_text(s, 1));
        snprintf(ref->kind, sizeof ref->kind, "%s", col_text(s, 2));
    } else {
        rc = step == SQLITE_DONE
                 ? tpv_err_set(err, TPV_EPRECONDITION, "job_id",
                               "job %s is no longer held by %s", id, owner)
                 : db_fail(c, step, "read job", err);
    }
    stmt_done(s);
    return rc;
}

/* Mirrors a score job's state onto its candidate and bumps the study version (what the candidate
 * list and ranking show changed).  JBR jobs change neither. */
static int candidate_follow(struct store_conn *c, const char *job_id, const struct job_ref *ref,
                            const char *state, int64_t *version, struct tpv_err *err)
{
    *version = 0;
    if (strcmp(ref->kind, "score") != 0)
        return TPV_OK;
    sqlite3_stmt *s = conn_stmt(c, STMT_CAND_STATE, err);
    if (!s)
        return err->code;
    bind_text(s, 1, ref->candidate_id);
    bind_text(s, 2, state);
    bind_text(s, 3, job_id);
    int rc = stmt_exec(c, s, err);
    return rc == TPV_OK ? study_bump(c, ref->study_id, version, err) : rc;
}

static int job_end(struct store_conn *c, const char *id, const char *state, double progress,
                   const char *code, const char *message, const char *result, struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    sqlite3_stmt *s = conn_stmt(c, STMT_JOB_END, err);
    if (!s)
        return err->code;
    bind_text(s, 1, id);
    bind_text(s, 2, state);
    sqlite3_bind_double(s, 3, progress);
    bind_text(s, 4, code);
    bind_text(s, 5, message);
    bind_text(s, 6, result);
    bind_text(s, 7, now);
    return stmt_exec(c, s, err);
}

/* Whether the study has a webhook_url (events are only written for those). */
int study_has_hook(struct store_conn *c, const char *study_id, bool *has,
                          struct tpv_err *err)
{
    sqlite3_stmt *s = conn_stmt(c, STMT_STUDY_WEBHOOK, err);
    if (!s)
        return err->code;
    bind_text(s, 1, study_id);
    int step = sqlite3_step(s), rc = TPV_OK;
    *has = step == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL;
    if (step != SQLITE_ROW && step != SQLITE_DONE) /* not "no webhook": the event would be lost */
        rc = db_fail(c, step, "read study webhook", err);
    stmt_done(s);
    return rc;
}

/* Appends an event to the outbox in the caller's transaction; steals `payload`.  The webhook
 * sender (server/webhook.c) delivers it later, at least once. */
int outbox_put(struct store_conn *c, const char *study_id, const char *event, json_t *payload,
               const char *now, struct tpv_err *err)
{
    char id[STORE_ID_MAX];
    store_id_new(id, "ev"); /* the event id receivers dedup on, the same for every attempt */
    /* Without its id the event would go out with nothing for the receiver to dedup on. */
    char *text = payload && json_object_set_new(payload, "id", json_string(id)) == 0
                     ? tpv_json_dump(payload, JSON_COMPACT)
                     : NULL;
    json_decref(payload);
    if (!text)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    int rc;
    sqlite3_stmt *s = conn_stmt(c, STMT_OUTBOX_PUT, err);
    if (!s) {
        rc = err->code;
    } else {
        bind_text(s, 1, study_id);
        bind_text(s, 2, event);
        bind_text(s, 3, text);
        sqlite3_bind_double(s, 4, store_clock_now());
        bind_text(s, 5, now);
        rc = stmt_exec(c, s, err);
    }
    free(text);
    return rc;
}

/* The events of a job's end: "job.<state>" always, and "ranking.changed" when a score job wrote
 * scores (version = the study version after the change). */
static int outbox_event(struct store_conn *c, const struct job_ref *ref, const char *job_id,
                        const char *state, int64_t version, struct tpv_err *err)
{
    bool has_hook = false;
    int rc = study_has_hook(c, ref->study_id, &has_hook, err);
    if (rc != TPV_OK || !has_hook)
        return rc;
    char event[32], now[STORE_TIME_MAX];
    snprintf(event, sizeof event, "job.%s", state);
    store_now_rfc3339(now);
    rc = outbox_put(c, ref->study_id, event,
                    json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "event", event, "study_id",
                              ref->study_id, "candidate_id", ref->candidate_id, "job_id", job_id,
                              "kind", ref->kind, "state", state, "at", now),
                    now, err);
    if (rc == TPV_OK && version > 0 && strcmp(state, "succeeded") == 0 &&
        strcmp(ref->kind, "score") == 0)
        rc = outbox_put(c, ref->study_id, "ranking.changed",
                        json_pack("{s:s,s:s,s:I,s:s,s:s,s:s}", "event", "ranking.changed",
                                  "study_id", ref->study_id, "version", (json_int_t)version,
                                  "candidate_id", ref->candidate_id, "job_id", job_id, "at", now),
                        now, err);
    return rc;
}

int store_job_cancel(struct store *st, const char *id, json_t **out, struct tpv_err *err)
{
    *out = NULL;
    char state[16] = "";
    struct job_ref ref;
    int64_t version = 0;
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    if (rc == TPV_OK)
        rc = job_get_conn(c, id, NULL, state, err);
    if (rc == TPV_OK)
        rc = job_ref_any(c, id, &ref, err);
    if (rc == TPV_OK) {
        if (strcmp(state, "queued") == 0) {
            rc = job_end(c, id, "canceled", 0, "canceled", "canceled by request", NULL, err);
            if (rc == TPV_OK)
                rc = candidate_follow(c, id, &ref, "canceled", &version, err);
            if (rc == TPV_OK)
                rc = outbox_event(c, &ref, id, "canceled", version, err);
        } else if (strcmp(state, "running") == 0) {
            sqlite3_stmt *s = conn_stmt(c, STMT_JOB_CANCEL_ASK, err);
            if (!s) {
                rc = err->code;
            } else {
                bind_text(s, 1, id);
                rc = stmt_exec(c, s, err);
            }
        } else if (strcmp(state, "canceled") != 0) {
            rc = tpv_err_set(err, TPV_EPRECONDITION, "job_id", "job %s already %s", id, state);
        }
    }
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    if (rc == TPV_OK)
        rc = job_get_conn(c, id, out, NULL, err);
    conn_put(st, c);
    if (rc == TPV_OK)
        notify_study(st, ref.study_id, version); /* 0: a JBR job, wakes its waiters */
    return rc;
}

void store_claim_free(struct store_claim *cl)
{
    if (!cl)
        return;
    free(cl->source);
    free(cl->noise_models);
    free(cl->params);
    memset(cl, 0, sizeof *cl);
}

int store_job_claim(struct store *st, const char *owner, double lease_s, struct store_claim *out,
                    struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    struct job_ref ref;
    int64_t version = 0;
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    sqlite3_stmt *s = NULL;
    if (rc == TPV_OK && !(s = conn_stmt(c, STMT_JOB_NEXT, err)))
        rc = err->code;
    if (rc == TPV_OK) {
        int step = sqlite3_step(s);
        if (step == SQLITE_ROW) {
            snprintf(out->id, sizeof out->id, "%s", col_text(s, 0));
            snprintf(out->kind, sizeof out->kind, "%s", col_text(s, 1));
            snprintf(out->study_id, sizeof out->study_id, "%s", col_text(s, 2));
            snprintf(out->candidate_id, sizeof out->candidate_id, "%s", col_text(s, 3));
            out->attempts = sqlite3_column_int(s, 4) + 1;
            out->source = col_strdup(s, 5);
            out->noise_models = col_strdup(s, 6);
            bool params_ok = col_strdup_or_null(s, 7, &out->params);
            if (!out->source || !out->noise_models || !params_ok)
                rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        } else if (step == SQLITE_DONE) {
            rc = TPV_ENOTFOUND;
        } else {
            rc = db_fail(c, step, "claim job", err);
        }
        stmt_done(s);
    }
    if (rc == TPV_OK && !(s = conn_stmt(c, STMT_JOB_START, err)))
        rc = err->code;
    if (rc == TPV_OK) {
        bind_text(s, 1, out->id);
        bind_text(s, 2, owner);
        sqlite3_bind_double(s, 3, store_clock_now() + lease_s);
        bind_text(s, 4, now);
        rc = stmt_exec(c, s, err);
    }
    if (rc == TPV_OK) {
        snprintf(ref.study_id, sizeof ref.study_id, "%s", out->study_id);
        snprintf(ref.candidate_id, sizeof ref.candidate_id, "%s", out->candidate_id);
        snprintf(ref.kind, sizeof ref.kind, "%s", out->kind);
        rc = candidate_follow(c, out->id, &ref, "running", &version, err);
    }
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    if (rc != TPV_OK) {
        store_claim_free(out);
        return rc;
    }
    if (version)
        notify_study(st, out->study_id, version);
    return TPV_OK;
}

int store_job_progress(struct store *st, const char *id, const char *owner, double progress,
                       double lease_s, bool *cancel, struct tpv_err *err)
{
    *cancel = false;
    struct store_conn *c = conn_get(st);
    int rc;
    sqlite3_stmt *s = conn_stmt(c, STMT_JOB_PROGRESS, err);
    if (!s) {
        rc = err->code;
    } else {
        bind_text(s, 1, id);
        bind_text(s, 2, owner);
        sqlite3_bind_double(s, 3, progress < 0 ? 0 : progress > 1 ? 1 : progress);
        sqlite3_bind_double(s, 4, store_clock_now() + lease_s);
        int step = sqlite3_step(s);
        if (step == SQLITE_ROW) {
            *cancel = sqlite3_column_int(s, 0) != 0;
            rc = TPV_OK;
        } else if (step == SQLITE_DONE) {
            rc = tpv_err_set(err, TPV_EPRECONDITION, "job_id", "job %s is no longer held by %s",
                             id, owner);
        } else {
            rc = db_fail(c, step, "job progress", err);
        }
        stmt_done(s);
    }
    conn_put(st, c);
    return rc;
}

int store_job_succeed(struct store *st, const char *id, const char *owner,
                      const struct store_score *scores, size_t nscores, const char *stability,
                      const char *result, struct tpv_err *err)
{
    struct job_ref ref;
    int64_t version = 0;
    struct store_conn *c = conn_get(st);
    sqlite3_stmt *s;
    int rc = tx_begin(c, err);
    if (rc == TPV_OK)
        rc = job_ref_owned(c, id, owner, &ref, err);
    bool score_job = rc == TPV_OK && strcmp(ref.kind, "score") == 0;
    if (score_job) {
        if ((s = conn_stmt(c, STMT_SCORE_DELETE, err))) {
            bind_text(s, 1, ref.candidate_id);
            rc = stmt_exec(c, s, err);
        } else {
            rc = err->code;
        }
        for (size_t i = 0; rc == TPV_OK && i < nscores; i++) {
            const struct store_score *sc = &scores[i];
            if (!(s = conn_stmt(c, STMT_SCORE_INSERT, err))) {
                rc = err->code;
                break;
            }
            bind_text(s, 1, ref.candidate_id);
            bind_text(s, 2, sc->noise);
            bind_text(s, 3, sc->kind);
            bind_text(s, 4, sc->split);
            sqlite3_bind_double(s, 5, sc->value); /* NaN binds as NULL */
            sqlite3_bind_double(s, 6, sc->stderr_value);
            bind_text(s, 7, sc->estimator ? sc->estimator : "exact");
            sqlite3_bind_int64(s, 8, (sqlite3_int64)sc->samples);
            sqlite3_bind_int64(s, 9, (sqlite3_int64)sc->seed);
            sqlite3_bind_double(s, 10, sc->wall_seconds);
            bind_text(s, 11, sc->details ? sc->details : "{}");
            /* Without contributions there is no stderr_inputs (a zero-initialised row must
             * not claim a zero error); NaN binds as NULL too. */
            if (sc->per_input && sc->n_inputs)
                sqlite3_bind_double(s, 12, sc->stderr_inputs);
            else
                sqlite3_bind_null(s, 12);
            rc = bind_contributions(s, 13, sc->per_input, sc->n_inputs, err);
            if (rc == TPV_OK)
                rc = stmt_exec(c, s, err);
            else
                stmt_done(s);
        }
        if (rc == TPV_OK && stability && (s = conn_stmt(c, STMT_CAND_STABILITY, err))) {
            bind_text(s, 1, ref.candidate_id);
            bind_text(s, 2, stability);
            rc = stmt_exec(c, s, err);
        } else if (rc == TPV_OK && stability) {
            rc = err->code;
        }
    }
    if (rc == TPV_OK)
        rc = job_end(c, id, "succeeded", 1.0, NULL, NULL, result, err);
    if (rc == TPV_OK)
        rc = candidate_follow(c, id, &ref, "succeeded", &version, err);
    if (rc == TPV_OK)
        rc = outbox_event(c, &ref, id, "succeeded", version, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    if (rc == TPV_OK)
        notify_study(st, ref.study_id, version); /* 0: a JBR job, wakes its waiters */
    return rc;
}

int store_job_finish(struct store *st, const char *id, const char *owner, const char *state,
                     const char *code, const char *message, struct tpv_err *err)
{
    struct job_ref ref;
    int64_t version = 0;
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    if (rc == TPV_OK)
        rc = job_ref_owned(c, id, owner, &ref, err);
    if (rc == TPV_OK)
        rc = job_end(c, id, state, 0, code, message, NULL, err);
    if (rc == TPV_OK)
        rc = candidate_follow(c, id, &ref, state, &version, err);
    if (rc == TPV_OK)
        rc = outbox_event(c, &ref, id, state, version, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    if (rc == TPV_OK)
        notify_study(st, ref.study_id, version); /* 0: a JBR job, wakes its waiters */
    return rc;
}

int store_job_release(struct store *st, const char *id, const char *owner, struct tpv_err *err)
{
    struct job_ref ref;
    int64_t version = 0;
    struct store_conn *c = conn_get(st);
    sqlite3_stmt *s;
    int rc = tx_begin(c, err);
    if (rc == TPV_OK)
        rc = job_ref_owned(c, id, owner, &ref, err);
    if (rc == TPV_OK && (s = conn_stmt(c, STMT_JOB_RELEASE, err))) {
        bind_text(s, 1, id);
        rc = stmt_exec(c, s, err);
    } else if (rc == TPV_OK) {
        rc = err->code;
    }
    if (rc == TPV_OK)
        rc = candidate_follow(c, id, &ref, "queued", &version, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    if (rc == TPV_OK) {
        if (version)
            notify_study(st, ref.study_id, version);
        notify_job(st);
    }
    return rc;
}

struct stale_job {
    char id[STORE_ID_MAX];
    struct job_ref ref;
    int attempts;
};

/* Re-queues (or fails, past max_attempts) the running jobs selected by JOBS_STALE. */
static int recover(struct store *st, bool all, double now, int max_attempts, int *requeued,
                   int *failed, struct tpv_err *err)
{
    struct stale_job *jobs = NULL;
    size_t n = 0, cap = 0;
    int step;
    *requeued = *failed = 0;
    struct store_conn *c = conn_get(st);
    sqlite3_stmt *s = NULL;
    int rc = tx_begin(c, err);
    if (rc == TPV_OK && !(s = conn_stmt(c, STMT_JOBS_STALE, err)))
        rc = err->code;
    if (rc == TPV_OK) {
        sqlite3_bind_int(s, 1, all ? 0 : 1);
        sqlite3_bind_double(s, 2, now);
        while ((step = sqlite3_step(s)) == SQLITE_ROW) {
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                struct stale_job *grown = realloc(jobs, ncap * sizeof *jobs);
                if (!grown) {
                    rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
                    break;
                }
                jobs = grown;
                cap = ncap;
            }
            struct stale_job *j = &jobs[n++];
            snprintf(j->id, sizeof j->id, "%s", col_text(s, 0));
            snprintf(j->ref.study_id, sizeof j->ref.study_id, "%s", col_text(s, 1));
            snprintf(j->ref.candidate_id, sizeof j->ref.candidate_id, "%s", col_text(s, 2));
            snprintf(j->ref.kind, sizeof j->ref.kind, "%s", col_text(s, 3));
            j->attempts = sqlite3_column_int(s, 4);
        }
        if (rc == TPV_OK && step != SQLITE_DONE)
            rc = db_fail(c, step, "find interrupted jobs", err);
        stmt_done(s);
    }
    int64_t *versions = n ? calloc(n, sizeof *versions) : NULL;
    if (rc == TPV_OK && n && !versions)
        rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    for (size_t i = 0; rc == TPV_OK && i < n; i++) {
        struct stale_job *j = &jobs[i];
        if (j->attempts >= max_attempts) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "the job was interrupted %d times (daemon stopped or lease expired while it "
                     "ran); giving up after --max-attempts=%d", j->attempts, max_attempts);
            rc = job_end(c, j->id, "failed", 0, "aborted", msg, NULL, err);
            if (rc == TPV_OK)
                rc = candidate_follow(c, j->id, &j->ref, "failed", &versions[i], err);
            if (rc == TPV_OK)
                rc = outbox_event(c, &j->ref, j->id, "failed", versions[i], err);
            ++*failed;
        } else {
            if (!(s = conn_stmt(c, STMT_JOB_REQUEUE, err))) {
                rc = err->code;
                break;
            }
            bind_text(s, 1, j->id);
            rc = stmt_exec(c, s, err);
            if (rc == TPV_OK)
                rc = candidate_follow(c, j->id, &j->ref, "queued", &versions[i], err);
            ++*requeued;
        }
    }
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    if (rc == TPV_OK) {
        for (size_t i = 0; i < n; i++)
            if (versions[i])
                notify_study(st, jobs[i].ref.study_id, versions[i]);
        if (*requeued)
            notify_job(st);
    } else {
        *requeued = *failed = 0;
    }
    free(versions);
    free(jobs);
    return rc;
}

int store_jobs_recover(struct store *st, int max_attempts, int *requeued, int *failed,
                       struct tpv_err *err)
{
    return recover(st, true, 0, max_attempts, requeued, failed, err);
}

int store_jobs_requeue_expired(struct store *st, int max_attempts, double now, int *requeued,
                               int *failed, struct tpv_err *err)
{
    return recover(st, false, now > 0 ? now : store_clock_now(), max_attempts, requeued, failed,
                   err);
}
