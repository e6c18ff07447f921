/* store_sqlite_queue.c: the durable job queue of the SQLite backend (see store.h): claims with
 * leases inside BEGIN IMMEDIATE transactions (SQLite has one writer at a time, so two claims
 * never return the same job), progress and lease renewal, terminal transitions that write scores
 * and bump the study version in one transaction, and crash recovery. */
#include "storage/sqlite_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* Columns of JOB_GET into *o (zeroed first); false when out of memory (*o is then freed). */
static bool job_from_row(sqlite3_stmt *s, struct store_job *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->id, sizeof o->id, "%s", col_text(s, 0));
    snprintf(o->kind, sizeof o->kind, "%s", col_text(s, 1));
    snprintf(o->candidate_id, sizeof o->candidate_id, "%s", col_text(s, 2));
    snprintf(o->state, sizeof o->state, "%s", col_text(s, 3));
    o->progress = sqlite3_column_double(s, 4);
    o->attempts = sqlite3_column_int(s, 5);
    bool ok = true;
    if (sqlite3_column_type(s, 6) != SQLITE_NULL) {
        o->error_code = strdup(col_text(s, 6));
        o->error_message = strdup(col_text(s, 7));
        ok = o->error_code && o->error_message;
    }
    snprintf(o->created_at, sizeof o->created_at, "%s", col_text(s, 8));
    snprintf(o->started_at, sizeof o->started_at, "%s", col_text(s, 9));
    snprintf(o->finished_at, sizeof o->finished_at, "%s", col_text(s, 10));
    ok = col_strdup_or_null(s, 11, &o->result) && ok;
    o->cancel_requested = sqlite3_column_int(s, 12) != 0;
    snprintf(o->study_id, sizeof o->study_id, "%s", col_text(s, 13));
    if (!ok)
        store_job_free(o);
    return ok;
}

static int job_get_conn(struct store_conn *c, const char *id, struct store_job *out,
                        char state[16], struct tpv_err *err)
{
    if (out)
        memset(out, 0, sizeof *out);
    sqlite3_stmt *s = conn_stmt(c, STMT_JOB_GET, err);
    if (!s)
        return err->code;
    bind_text(s, 1, id);
    int step = sqlite3_step(s), rc = TPV_OK;
    if (step == SQLITE_ROW) {
        if (state)
            snprintf(state, 16, "%s", col_text(s, 3));
        if (out && !job_from_row(s, out))
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    } else if (step == SQLITE_DONE) {
        rc = tpv_err_set(err, TPV_ENOTFOUND, "job_id", "job %s not found", id);
    } else {
        rc = db_fail(c, step, "read job", err);
    }
    stmt_done(s);
    return rc;
}

int sq_job_get(struct sq_store *st, const char *id, struct store_job *out, struct tpv_err *err)
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

/* Appends an event to the outbox in the caller's transaction, its payload rendered by the
 * store's renderer (server/webhook.c) and stored as text, so every attempt sends the same bytes.
 * The webhook sender delivers it later, at least once. */
int outbox_put(struct store_conn *c, const struct store_event *ev, struct tpv_err *err)
{
    if (!c->st->sink.render_event)
        return tpv_err_set(err, TPV_EINTERNAL, NULL,
                           "no webhook event renderer set (store_set_event_renderer)");
    char id[STORE_ID_MAX];
    store_id_new(id, "ev"); /* the event id receivers dedup on, the same for every attempt */
    char *text = c->st->sink.render_event(c->st->sink.ctx, ev, id);
    if (!text) /* the dispatcher's renderer answers NULL too when none was set */
        return tpv_err_set(err, TPV_ENOMEM, NULL,
                           "cannot render the webhook event (out of memory, or no renderer set "
                           "with store_set_event_renderer)");
    int rc;
    sqlite3_stmt *s = conn_stmt(c, STMT_OUTBOX_PUT, err);
    if (!s) {
        rc = err->code;
    } else {
        bind_text(s, 1, ev->study_id);
        bind_text(s, 2, ev->event);
        bind_text(s, 3, text);
        sqlite3_bind_double(s, 4, store_clock_now());
        bind_text(s, 5, ev->at);
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
    struct store_event ev = { 0 };
    snprintf(ev.event, sizeof ev.event, "job.%s", state);
    snprintf(ev.study_id, sizeof ev.study_id, "%s", ref->study_id);
    snprintf(ev.candidate_id, sizeof ev.candidate_id, "%s", ref->candidate_id);
    snprintf(ev.job_id, sizeof ev.job_id, "%s", job_id);
    snprintf(ev.kind, sizeof ev.kind, "%s", ref->kind);
    snprintf(ev.state, sizeof ev.state, "%s", state);
    store_now_rfc3339(ev.at);
    rc = outbox_put(c, &ev, err);
    if (rc == TPV_OK && version > 0 && strcmp(state, "succeeded") == 0 &&
        strcmp(ref->kind, "score") == 0) {
        snprintf(ev.event, sizeof ev.event, "ranking.changed");
        ev.kind[0] = ev.state[0] = '\0';
        ev.version = version;
        rc = outbox_put(c, &ev, err);
    }
    return rc;
}

int sq_job_cancel(struct sq_store *st, const char *id, struct store_job *out,
                     struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
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

int sq_job_claim(struct sq_store *st, const char *owner, double lease_s, struct store_claim *out,
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

int sq_job_progress(struct sq_store *st, const char *id, const char *owner, double progress,
                    double lease_expires, bool *cancel, struct tpv_err *err)
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
        sqlite3_bind_double(s, 4, lease_expires);
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

int sq_job_succeed(struct sq_store *st, const char *id, const char *owner,
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
            rc = stmt_exec(c, s, err);
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

int sq_job_finish(struct sq_store *st, const char *id, const char *owner, const char *state,
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

int sq_job_release(struct sq_store *st, const char *id, const char *owner, struct tpv_err *err)
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
static int recover(struct sq_store *st, bool all, double now, int max_attempts, int *requeued,
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

int sq_jobs_recover(struct sq_store *st, int max_attempts, int *requeued, int *failed,
                       struct tpv_err *err)
{
    return recover(st, true, 0, max_attempts, requeued, failed, err);
}

int sq_jobs_requeue_expired(struct sq_store *st, int max_attempts, double now, int *requeued,
                               int *failed, struct tpv_err *err)
{
    return recover(st, false, now > 0 ? now : store_clock_now(), max_attempts, requeued, failed,
                   err);
}
