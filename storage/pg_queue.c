/* pg_queue.c: the PostgreSQL job queue (see pg_queue.h).  Each operation is one short
 * READ COMMITTED transaction run by pg_tx_run: the job row's own lock (FOR UPDATE SKIP LOCKED on
 * claim and expiry, the UPDATE's row lock elsewhere) is all the isolation it needs. */
#include "storage/pg_queue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "storage/pg_notify.h"

#define DB_NOW "extract(epoch FROM clock_timestamp())"

static const char sql_claim[] =
    "WITH next AS (SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1 "
    "              FOR UPDATE SKIP LOCKED) "
    "UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, lease_owner = $1, "
    "  lease_expires = " DB_NOW " + $2::float8, progress = 0, started_at = $3 "
    "FROM next, candidates c, studies s "
    "WHERE j.id = next.id AND c.id = j.candidate_id AND s.id = j.study_id "
    "RETURNING j.id, j.kind, j.study_id, j.candidate_id, j.attempts, j.lease_expires, "
    "  c.source, s.noise_models, j.params";

static const char sql_renew[] =
    "UPDATE jobs SET progress = $3::float8, lease_expires = " DB_NOW " + $4::float8 "
    "WHERE id = $1 AND lease_owner = $2 AND state = 'running' RETURNING cancel_requested";

static const char sql_finish[] =
    "UPDATE jobs SET state = $3, progress = $4::float8, error_code = $5, error_message = $6, "
    "  result = $7, finished_at = $8, lease_owner = NULL, lease_expires = NULL "
    "WHERE id = $1 AND lease_owner = $2 AND state = 'running' "
    "RETURNING kind, study_id, candidate_id";

static const char sql_release[] =
    "UPDATE jobs SET state = 'queued', attempts = greatest(attempts - 1, 0), lease_owner = NULL, "
    "  lease_expires = NULL, progress = 0 "
    "WHERE id = $1 AND lease_owner = $2 AND state = 'running' "
    "RETURNING kind, study_id, candidate_id";

static void now_rfc3339(char out[32])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03ldZ", ts.tv_nsec / 1000000L);
}

/* A score job's state shows on its candidate, and the study's version moves with its NOTIFY
 * (what the candidate list and ranking show changed), in one round trip.  JBR jobs change
 * neither. */
static const char sql_follow[] =
    "WITH cand AS (UPDATE candidates SET state = $2 WHERE id = $1 AND job_id = $3), "
    "st AS (UPDATE studies SET version = version + 1 WHERE id = $4 RETURNING id, version) "
    "SELECT pg_notify('" PG_NOTIFY_CHANNEL "', st.id || ':' || st.version) FROM st";

static int candidate_follow(struct pg_conn *c, const char *kind, const char *study_id,
                            const char *candidate_id, const char *job_id, const char *state,
                            struct tpv_err *err)
{
    if (strcmp(kind, "score") != 0)
        return TPV_OK;
    const char *params[] = { candidate_id, state, job_id, study_id };
    return pg_exec(c, sql_follow, 4, params, NULL, err);
}

/* Follows every row of a RETURNING kind, study_id, candidate_id[, job id, state] result. */
static int follow_rows(struct pg_conn *c, struct pg_result *r, const char *job_id,
                       const char *state, struct tpv_err *err)
{
    int rc = TPV_OK;
    for (int i = 0; rc == TPV_OK && i < pg_result_rows(r); i++)
        rc = candidate_follow(c, pg_result_text(r, i, 0), pg_result_text(r, i, 1),
                              pg_result_text(r, i, 2), job_id ? job_id : pg_result_text(r, i, 3),
                              state ? state : pg_result_text(r, i, 4), err);
    return rc;
}

static int not_held(const char *id, const char *owner, struct tpv_err *err)
{
    return tpv_err_set(err, TPV_EPRECONDITION, "job_id", "job %s is no longer held by %s", id,
                       owner);
}

/* ---- claim ---- */

void pg_job_claim_free(struct pg_job_claim *cl)
{
    if (!cl)
        return;
    free(cl->source);
    free(cl->noise_models);
    free(cl->params);
    memset(cl, 0, sizeof *cl);
}

struct claim_ctx {
    const char *owner;
    char lease[32];
    struct pg_job_claim *out;
};

static int claim_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct claim_ctx *x = arg;
    pg_job_claim_free(x->out); /* a rerun starts afresh */
    char now[32];
    now_rfc3339(now);
    /* A claim need not wait for its WAL flush: if the database server crashes before the flush,
     * the claim is forgotten and the job is queued again; the worker that had started it then
     * fails to renew or finish (owner check) and its result is dropped, so the job still
     * succeeds exactly once.  Not waiting releases the row locks, and the NOTIFY commit lock, an
     * fsync sooner: what other claimers of the same study would otherwise queue behind (median
     * claim 18.6 -> 4.7 ms with three claimers here).  The cost: after a server crash the study
     * version can fall back by the lost bumps and a version number be used twice, so phase 2
     * derives the ETag from the version and the server's start time (DESIGN-phase2.md). */
    int rc = pg_exec(c, "SET LOCAL synchronous_commit = off", 0, NULL, NULL, err);
    if (rc != TPV_OK)
        return rc;
    const char *params[] = { x->owner, x->lease, now };
    struct pg_result *r;
    rc = pg_exec(c, sql_claim, 3, params, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0) {
        pg_result_free(r);
        return TPV_ENOTFOUND;
    }
    struct pg_job_claim *o = x->out;
    snprintf(o->id, sizeof o->id, "%s", pg_result_text(r, 0, 0));
    snprintf(o->kind, sizeof o->kind, "%s", pg_result_text(r, 0, 1));
    snprintf(o->study_id, sizeof o->study_id, "%s", pg_result_text(r, 0, 2));
    snprintf(o->candidate_id, sizeof o->candidate_id, "%s", pg_result_text(r, 0, 3));
    o->attempts = (int)pg_result_int64(r, 0, 4);
    o->lease_until = pg_result_double(r, 0, 5);
    o->source = pg_result_strdup(r, 0, 6);
    o->noise_models = pg_result_strdup(r, 0, 7);
    o->params = pg_result_strdup(r, 0, 8);
    bool oom = !o->source || !o->noise_models || (!o->params && !pg_result_null(r, 0, 8));
    pg_result_free(r);
    if (oom)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    return candidate_follow(c, o->kind, o->study_id, o->candidate_id, o->id, "running", err);
}

int pg_queue_claim(struct pg_pool *p, const char *owner, double lease_s, struct pg_job_claim *out,
                   struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    struct claim_ctx x = { .owner = owner, .out = out };
    snprintf(x.lease, sizeof x.lease, "%.3f", lease_s);
    int rc = pg_tx_run(p, PG_READ_COMMITTED, claim_body, &x, err);
    if (rc != TPV_OK)
        pg_job_claim_free(out);
    return rc;
}

/* ---- renew ---- */

int pg_queue_renew(struct pg_pool *p, const char *id, const char *owner, double progress,
                   double lease_s, bool *cancel, struct tpv_err *err)
{
    *cancel = false;
    char prog[32], lease[32];
    snprintf(prog, sizeof prog, "%.6f", progress < 0 ? 0 : progress > 1 ? 1 : progress);
    snprintf(lease, sizeof lease, "%.3f", lease_s);
    const char *params[] = { id, owner, prog, lease };
    struct pg_conn *c;
    int rc = pg_pool_acquire(p, &c, err);
    if (rc != TPV_OK)
        return rc;
    struct pg_result *r;
    rc = pg_exec(c, sql_renew, 4, params, &r, err);
    if (rc == TPV_OK) {
        if (pg_result_rows(r) == 1)
            *cancel = pg_result_int64(r, 0, 0) != 0;
        else
            rc = not_held(id, owner, err);
        pg_result_free(r);
    }
    pg_pool_release(p, c);
    return rc;
}

/* ---- finish / release ---- */

struct end_ctx {
    const char *const *params;
    int nparams;
    const char *sql;
    const char *id, *owner, *state;
};

static int end_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct end_ctx *x = arg;
    struct pg_result *r;
    int rc = pg_exec(c, x->sql, x->nparams, x->params, &r, err);
    if (rc != TPV_OK)
        return rc;
    rc = pg_result_rows(r) == 1 ? follow_rows(c, r, x->id, x->state, err)
                                : not_held(x->id, x->owner, err);
    pg_result_free(r);
    if (rc == TPV_OK && strcmp(x->state, "queued") == 0) /* released: claimable again */
        rc = pg_notify_jobs(c, err);
    return rc;
}

int pg_queue_finish(struct pg_pool *p, const char *id, const char *owner, const char *state,
                    const char *code, const char *message, const char *result,
                    struct tpv_err *err)
{
    if (!state || (strcmp(state, "succeeded") != 0 && strcmp(state, "failed") != 0 &&
                   strcmp(state, "canceled") != 0))
        return tpv_err_set(err, TPV_EINVAL, "state", "a job ends succeeded, failed or canceled");
    char now[32];
    now_rfc3339(now);
    const char *progress = strcmp(state, "succeeded") == 0 ? "1" : "0";
    const char *params[] = { id, owner, state, progress, code, message, result, now };
    struct end_ctx x = { params, 8, sql_finish, id, owner, state };
    return pg_tx_run(p, PG_READ_COMMITTED, end_body, &x, err);
}

int pg_queue_release(struct pg_pool *p, const char *id, const char *owner, struct tpv_err *err)
{
    const char *params[] = { id, owner };
    struct end_ctx x = { params, 2, sql_release, id, owner, "queued" };
    return pg_tx_run(p, PG_READ_COMMITTED, end_body, &x, err);
}
