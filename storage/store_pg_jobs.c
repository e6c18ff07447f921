/* store_pg_jobs.c: the PostgreSQL backend's jobs and webhook outbox (see store_pg.h).
 *
 * Claims are pg_queue's (FOR UPDATE SKIP LOCKED under a lease on the database clock); the ends of
 * a job (success with its scores, failure, cancel, expiry) run here because they also write the
 * scores, the stability and the outbox events in the same transaction.  Only the lease's owner
 * may end or renew a job; every node re-queues expired leases, each expired job by one node
 * (SKIP LOCKED).  Outbox rows are claimed the same way: `due` moves the claimed rows' next
 * attempt one lease ahead, so a sender on another node skips them, and a sender that dies leaves
 * them due again when the lease runs out. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "storage/pg_queue.h"
#include "storage/store.h"
#include "storage/store_pg_int.h"

#define DB_NOW "extract(epoch FROM clock_timestamp())"
/* A sender's hold on the rows it claimed: past it another node may send a row again (delivery
 * is at least once; receivers dedup on the event id), so longer than a delivery's timeout. */
#define OUTBOX_LEASE_S 30.0

double pgs_clock_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- job rows ---- */

static int job_from_row(const struct pg_result *r, struct store_job *o, struct tpv_err *err)
{
    memset(o, 0, sizeof *o);
    pgs_copy(o->id, sizeof o->id, r, 0, 0);
    pgs_copy(o->kind, sizeof o->kind, r, 0, 1);
    pgs_copy(o->candidate_id, sizeof o->candidate_id, r, 0, 2);
    pgs_copy(o->state, sizeof o->state, r, 0, 3);
    o->progress = pg_result_double(r, 0, 4);
    o->attempts = (int)pg_result_int64(r, 0, 5);
    o->error_code = pg_result_strdup(r, 0, 6);
    o->error_message = pg_result_strdup(r, 0, 7);
    pgs_copy(o->created_at, sizeof o->created_at, r, 0, 8);
    pgs_copy(o->started_at, sizeof o->started_at, r, 0, 9);
    pgs_copy(o->finished_at, sizeof o->finished_at, r, 0, 10);
    o->result = pg_result_strdup(r, 0, 11);
    o->cancel_requested = pg_result_int64(r, 0, 12) != 0;
    pgs_copy(o->study_id, sizeof o->study_id, r, 0, 13);
    if ((!o->error_code && !pg_result_null(r, 0, 6)) ||
        (!o->error_message && !pg_result_null(r, 0, 7)) ||
        (!o->result && !pg_result_null(r, 0, 11))) {
        store_job_free(o);
        return pgs_oom(err);
    }
    return TPV_OK;
}

static int job_get_conn(struct pg_conn *c, const char *id, bool lock, struct store_job *out,
                        struct tpv_err *err)
{
    const char *p[] = { id };
    struct pg_result *r;
    int rc = pg_exec(c,
                     lock ? "SELECT id, kind, candidate_id, state, progress, attempts, error_code, "
                            "error_message, created_at, started_at, finished_at, result, "
                            "cancel_requested, study_id FROM jobs WHERE id = $1 FOR UPDATE"
                          : "SELECT id, kind, candidate_id, state, progress, attempts, error_code, "
                            "error_message, created_at, started_at, finished_at, result, "
                            "cancel_requested, study_id FROM jobs WHERE id = $1",
                     1, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0)
        rc = tpv_err_set(err, TPV_ENOTFOUND, "job_id", "job %s not found", id);
    else
        rc = job_from_row(r, out, err);
    pg_result_free(r);
    return rc;
}

int pgs_job_get(void *impl, const char *id, struct store_job *out, struct tpv_err *err)
{
    struct pgs *s = impl;
    memset(out, 0, sizeof *out);
    struct pg_conn *c;
    int rc = pg_pool_acquire(s->pool, &c, err);
    if (rc != TPV_OK)
        return rc;
    rc = job_get_conn(c, id, false, out, err);
    pg_pool_release(s->pool, c);
    return rc;
}

/* A job's identity for what follows its end. */
struct job_ref {
    char study_id[STORE_ID_MAX], candidate_id[STORE_ID_MAX], kind[STORE_KIND_MAX];
};

/* A JBR job's state changes no version, but job waits on other nodes must wake: a NOTIFY with
 * the current version (taken as no change by every node's cache). */
static int jbr_notify(struct pg_conn *c, const char *study_id, struct tpv_err *err)
{
    const char *p[] = { study_id };
    struct pg_result *r;
    int rc = pg_exec(c, "SELECT version FROM studies WHERE id = $1", 1, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    int64_t v = pg_result_rows(r) ? pg_result_int64(r, 0, 0) : 0;
    pg_result_free(r);
    return v > 0 ? pg_notify_study(c, study_id, v, err) : TPV_OK;
}

/* Mirrors a score job's state onto its candidate and bumps the study version (with its NOTIFY).
 * JBR jobs change neither. */
static int candidate_follow(struct pg_conn *c, const char *job_id, const struct job_ref *ref,
                            const char *state, int64_t *version, struct tpv_err *err)
{
    *version = 0;
    if (strcmp(ref->kind, "score") != 0)
        return jbr_notify(c, ref->study_id, err);
    const char *p[] = { ref->candidate_id, state, job_id };
    int rc = pg_exec(c, "UPDATE candidates SET state = $2 WHERE id = $1 AND job_id = $3", 3, p,
                     NULL, err);
    return rc == TPV_OK ? pgs_bump(c, ref->study_id, version, err) : rc;
}

/* "job.<state>" always, and "ranking.changed" when a score job wrote scores. */
static int outbox_event(struct pgs *s, struct pg_conn *c, const struct job_ref *ref,
                        const char *job_id, const char *state, int64_t version,
                        struct tpv_err *err)
{
    bool hook = false;
    int rc = pgs_has_hook(c, ref->study_id, &hook, err);
    if (rc != TPV_OK || !hook)
        return rc;
    struct store_event ev = { 0 };
    snprintf(ev.event, sizeof ev.event, "job.%s", state);
    snprintf(ev.study_id, sizeof ev.study_id, "%s", ref->study_id);
    snprintf(ev.candidate_id, sizeof ev.candidate_id, "%s", ref->candidate_id);
    snprintf(ev.job_id, sizeof ev.job_id, "%s", job_id);
    snprintf(ev.kind, sizeof ev.kind, "%s", ref->kind);
    snprintf(ev.state, sizeof ev.state, "%s", state);
    store_now_rfc3339(ev.at);
    rc = pgs_outbox_put(s, c, &ev, err);
    if (rc == TPV_OK && version > 0 && strcmp(state, "succeeded") == 0 &&
        strcmp(ref->kind, "score") == 0) {
        snprintf(ev.event, sizeof ev.event, "ranking.changed");
        ev.kind[0] = ev.state[0] = '\0';
        ev.version = version;
        rc = pgs_outbox_put(s, c, &ev, err);
    }
    return rc;
}

static int job_end(struct pg_conn *c, const char *id, const char *state, const char *progress,
                   const char *code, const char *message, const char *result, const char *now,
                   struct tpv_err *err)
{
    const char *p[] = { id, state, progress, code, message, result, now };
    return pg_exec(c,
                   "UPDATE jobs SET state = $2, progress = $3::float8, error_code = $4, "
                   "error_message = $5, result = $6, finished_at = $7, lease_owner = NULL, "
                   "lease_expires = NULL WHERE id = $1",
                   7, p, NULL, err);
}

/* The job held by `owner`, its row locked.  TPV_EPRECONDITION when the lease was lost. */
static int job_owned(struct pg_conn *c, const char *id, const char *owner, struct job_ref *ref,
                     struct tpv_err *err)
{
    const char *p[] = { id, owner };
    struct pg_result *r;
    int rc = pg_exec(c,
                     "SELECT study_id, candidate_id, kind FROM jobs WHERE id = $1 AND "
                     "lease_owner = $2 AND state = 'running' FOR UPDATE",
                     2, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0) {
        rc = tpv_err_set(err, TPV_EPRECONDITION, "job_id", "job %s is no longer held by %s", id,
                         owner);
    } else {
        pgs_copy(ref->study_id, sizeof ref->study_id, r, 0, 0);
        pgs_copy(ref->candidate_id, sizeof ref->candidate_id, r, 0, 1);
        pgs_copy(ref->kind, sizeof ref->kind, r, 0, 2);
    }
    pg_result_free(r);
    return rc;
}

/* ---- cancel ---- */

struct cancel_ctx {
    struct pgs *s;
    const char *id, *now;
    struct job_ref ref;
    int64_t version;
};

static int cancel_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct cancel_ctx *x = arg;
    x->version = 0;
    struct store_job j;
    int rc = job_get_conn(c, x->id, true, &j, err);
    if (rc != TPV_OK)
        return rc;
    snprintf(x->ref.study_id, sizeof x->ref.study_id, "%s", j.study_id);
    snprintf(x->ref.candidate_id, sizeof x->ref.candidate_id, "%s", j.candidate_id);
    snprintf(x->ref.kind, sizeof x->ref.kind, "%s", j.kind);
    char state[STORE_KIND_MAX];
    snprintf(state, sizeof state, "%s", j.state);
    store_job_free(&j);
    const char *p[] = { x->id };
    if (strcmp(state, "queued") == 0) {
        rc = job_end(c, x->id, "canceled", "0", "canceled", "canceled by request", NULL, x->now,
                     err);
        if (rc == TPV_OK)
            rc = candidate_follow(c, x->id, &x->ref, "canceled", &x->version, err);
        if (rc == TPV_OK)
            rc = outbox_event(x->s, c, &x->ref, x->id, "canceled", x->version, err);
    } else if (strcmp(state, "running") == 0) { /* the owner sees it at its next renewal */
        rc = pg_exec(c, "UPDATE jobs SET cancel_requested = 1 WHERE id = $1", 1, p, NULL, err);
    } else if (strcmp(state, "canceled") != 0) {
        rc = tpv_err_set(err, TPV_EPRECONDITION, "job_id", "job %s already %s", x->id, state);
    }
    return rc;
}

int pgs_job_cancel(void *impl, const char *id, const char *now, struct store_job *out,
                   struct tpv_err *err)
{
    struct pgs *s = impl;
    memset(out, 0, sizeof *out);
    struct cancel_ctx x = { .s = s, .id = id, .now = now };
    int rc = pg_tx_run(s->pool, PG_READ_COMMITTED, cancel_body, &x, err);
    if (rc != TPV_OK)
        return rc;
    pgs_changed(s, x.ref.study_id, x.version);
    return pgs_job_get(impl, id, out, err);
}

/* ---- claim, renew, release ---- */

int pgs_job_claim(void *impl, const char *owner, double lease_s, double now,
                  const char *now_text, struct store_claim *out, struct tpv_err *err)
{
    (void)now;
    (void)now_text; /* the lease runs on the database clock (pg_queue.h) */
    struct pgs *s = impl;
    memset(out, 0, sizeof *out);
    struct pg_job_claim cl;
    int rc = pg_queue_claim(s->pool, owner, lease_s, &cl, err);
    if (rc != TPV_OK)
        return rc;
    snprintf(out->id, sizeof out->id, "%s", cl.id);
    snprintf(out->kind, sizeof out->kind, "%s", cl.kind);
    snprintf(out->study_id, sizeof out->study_id, "%s", cl.study_id);
    snprintf(out->candidate_id, sizeof out->candidate_id, "%s", cl.candidate_id);
    out->attempts = cl.attempts;
    out->source = cl.source;
    out->noise_models = cl.noise_models;
    out->params = cl.params;
    cl.source = cl.noise_models = cl.params = NULL; /* moved */
    pg_job_claim_free(&cl);
    /* The claim's version bump reaches this node's cache and long-polls through the listener. */
    pgs_changed(s, out->study_id, 0);
    return TPV_OK;
}

/* `lease_expires` is on the caller's clock; the database keeps leases on its own, so the lease
 * is renewed for the same length from the database's now. */
int pgs_job_renew(void *impl, const char *id, const char *owner, double progress,
                  double lease_expires, bool *cancel, struct tpv_err *err)
{
    struct pgs *s = impl;
    double lease_s = lease_expires - pgs_clock_now();
    return pg_queue_renew(s->pool, id, owner, progress, lease_s > 0.5 ? lease_s : 0.5, cancel,
                          err);
}

int pgs_job_release(void *impl, const char *id, const char *owner, struct tpv_err *err)
{
    struct pgs *s = impl;
    int rc = pg_queue_release(s->pool, id, owner, err);
    if (rc == TPV_OK) {
        pgs_changed(s, "", 0);
        pgs_job_queued(s);
    }
    return rc;
}

/* ---- ends ---- */

struct end_ctx {
    struct pgs *s;
    const char *id, *owner, *state, *code, *message, *stability, *result, *now;
    const struct store_score *scores;
    size_t nscores;
    struct job_ref ref;
    int64_t version;
};

static int score_insert(struct pg_conn *c, const char *candidate_id, const struct store_score *sc,
                        struct tpv_err *err)
{
    char v[PGS_NUM_MAX], se[PGS_NUM_MAX], sa[PGS_NUM_MAX], sd[PGS_NUM_MAX], ws[PGS_NUM_MAX],
        si[PGS_NUM_MAX];
    const char *vp, *sep, *wsp, *sip;
    pgs_fmt_double(v, sc->value, &vp);
    pgs_fmt_double(se, sc->stderr_value, &sep);
    pgs_fmt_double(ws, sc->wall_seconds, &wsp);
    /* Without contributions there is no stderr_inputs (as on SQLite: a zeroed row is none). */
    pgs_fmt_double(si, sc->per_input ? sc->stderr_inputs : NAN, &sip);
    /* seeds are uint64: stored as the same 64 bits, as SQLite does */
    pgs_fmt_int(sa, (int64_t)sc->samples);
    pgs_fmt_int(sd, (int64_t)sc->seed);
    char *hex = NULL;
    int rc = pgs_contrib_hex(sc->per_input, sc->n_inputs, &hex, err);
    if (rc != TPV_OK)
        return rc;
    const char *p[] = { candidate_id, sc->noise, sc->kind, sc->split, vp, sep,
                        sc->estimator ? sc->estimator : "exact", sa, sd, wsp,
                        sc->details ? sc->details : "{}", sip, hex };
    rc = pg_exec(c,
                 "INSERT INTO scores (candidate_id, noise, kind, split, value, stderr, "
                 "estimator, samples, seed, wall_seconds, details, stderr_inputs, contributions) "
                 "VALUES ($1, $2, $3, $4, $5::float8, $6::float8, $7, $8::bigint, $9::bigint, "
                 "$10::float8, $11, $12::float8, decode($13, 'hex'))",
                 13, p, NULL, err);
    free(hex);
    return rc;
}

static int end_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct end_ctx *x = arg;
    x->version = 0;
    int rc = job_owned(c, x->id, x->owner, &x->ref, err);
    bool succeeded = strcmp(x->state, "succeeded") == 0;
    if (rc == TPV_OK && succeeded && strcmp(x->ref.kind, "score") == 0) {
        const char *p[] = { x->ref.candidate_id, x->stability };
        rc = pg_exec(c, "DELETE FROM scores WHERE candidate_id = $1", 1, p, NULL, err);
        for (size_t i = 0; rc == TPV_OK && i < x->nscores; i++)
            rc = score_insert(c, x->ref.candidate_id, &x->scores[i], err);
        if (rc == TPV_OK && x->stability)
            rc = pg_exec(c, "UPDATE candidates SET stability = $2 WHERE id = $1", 2, p, NULL,
                         err);
    }
    if (rc == TPV_OK)
        rc = job_end(c, x->id, x->state, succeeded ? "1" : "0", x->code, x->message, x->result,
                     x->now, err);
    if (rc == TPV_OK)
        rc = candidate_follow(c, x->id, &x->ref, x->state, &x->version, err);
    if (rc == TPV_OK)
        rc = outbox_event(x->s, c, &x->ref, x->id, x->state, x->version, err);
    return rc;
}

static int run_end(struct end_ctx *x, struct tpv_err *err)
{
    int rc = pg_tx_run(x->s->pool, PG_READ_COMMITTED, end_body, x, err);
    if (rc == TPV_OK)
        pgs_changed(x->s, x->ref.study_id, x->version);
    return rc;
}

int pgs_job_succeed(void *impl, const char *id, const char *owner,
                    const struct store_score *scores, size_t nscores, const char *stability,
                    const char *result, const char *now, struct tpv_err *err)
{
    struct end_ctx x = { .s = impl, .id = id, .owner = owner, .state = "succeeded",
                         .stability = stability, .result = result, .now = now, .scores = scores,
                         .nscores = nscores };
    return run_end(&x, err);
}

int pgs_job_finish(void *impl, const char *id, const char *owner, const char *state,
                   const char *code, const char *message, const char *now, struct tpv_err *err)
{
    if (!state || (strcmp(state, "failed") != 0 && strcmp(state, "canceled") != 0 &&
                   strcmp(state, "succeeded") != 0))
        return tpv_err_set(err, TPV_EINVAL, "state", "a job ends succeeded, failed or canceled");
    struct end_ctx x = { .s = impl, .id = id, .owner = owner, .state = state, .code = code,
                         .message = message, .now = now };
    return run_end(&x, err);
}

/* ---- expired leases ---- */

/* $1 max_attempts, $2 now (RFC 3339).  Rows in study order, so that concurrent runs on several
 * nodes lock studies in one order (DESIGN-phase2.md notes). */
static const char sql_expire[] =
    "WITH stale AS (SELECT id FROM jobs WHERE state = 'running' AND lease_expires < " DB_NOW
    "               ORDER BY study_id FOR UPDATE SKIP LOCKED) "
    "UPDATE jobs j SET "
    "  state = CASE WHEN j.attempts >= $1::int THEN 'failed' ELSE 'queued' END, "
    "  error_code = CASE WHEN j.attempts >= $1::int THEN 'aborted' END, "
    "  error_message = CASE WHEN j.attempts >= $1::int THEN 'the job was interrupted ' || "
    "    j.attempts || ' times (a node stopped or its lease expired while it ran); giving up "
    "after --max-attempts=' || $1 END, "
    "  finished_at = CASE WHEN j.attempts >= $1::int THEN $2 END, "
    "  lease_owner = NULL, lease_expires = NULL, progress = 0 "
    "FROM stale WHERE j.id = stale.id "
    "RETURNING j.id, j.kind, j.study_id, j.candidate_id, j.state";

struct expire_ctx {
    struct pgs *s;
    char max[PGS_NUM_MAX];
    const char *now;
    int requeued, failed;
};

static int expire_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct expire_ctx *x = arg;
    x->requeued = x->failed = 0;
    const char *p[] = { x->max, x->now };
    struct pg_result *r;
    int rc = pg_exec(c, sql_expire, 2, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    for (int i = 0; rc == TPV_OK && i < pg_result_rows(r); i++) {
        struct job_ref ref;
        pgs_copy(ref.kind, sizeof ref.kind, r, i, 1);
        pgs_copy(ref.study_id, sizeof ref.study_id, r, i, 2);
        pgs_copy(ref.candidate_id, sizeof ref.candidate_id, r, i, 3);
        const char *id = pg_result_text(r, i, 0), *state = pg_result_text(r, i, 4);
        int64_t version = 0;
        rc = candidate_follow(c, id, &ref, state, &version, err);
        if (strcmp(state, "failed") == 0) {
            x->failed++;
            if (rc == TPV_OK)
                rc = outbox_event(x->s, c, &ref, id, "failed", version, err);
        } else {
            x->requeued++;
        }
    }
    pg_result_free(r);
    if (rc == TPV_OK && x->requeued)
        rc = pg_notify_jobs(c, err);
    return rc;
}

static int expire(struct pgs *s, int max_attempts, const char *now, int *requeued, int *failed,
                  struct tpv_err *err)
{
    struct expire_ctx x = { .s = s, .now = now };
    pgs_fmt_int(x.max, max_attempts > 0 ? max_attempts : 1);
    *requeued = *failed = 0;
    int rc = pg_tx_run(s->pool, PG_READ_COMMITTED, expire_body, &x, err);
    if (rc != TPV_OK)
        return rc;
    *requeued = x.requeued;
    *failed = x.failed;
    if (x.requeued || x.failed) /* the versions arrive through the listener */
        pgs_changed(s, "", 0);
    if (x.requeued)
        pgs_job_queued(s);
    return TPV_OK;
}

/* Start-up recovery on a shared database: only expired leases (other nodes' jobs are alive). */
int pgs_jobs_recover(void *impl, int max_attempts, const char *now, int *requeued, int *failed,
                     struct tpv_err *err)
{
    return expire(impl, max_attempts, now, requeued, failed, err);
}

int pgs_jobs_requeue_expired(void *impl, int max_attempts, double now, const char *now_text,
                             int *requeued, int *failed, struct tpv_err *err)
{
    (void)now; /* leases are compared with the database clock */
    return expire(impl, max_attempts, now_text, requeued, failed, err);
}

/* ---- webhook outbox ---- */

/* "{1,2,3}": the rows this node holds, as a bigint[] parameter. */
static void held_text(struct pgs *s, char *out, size_t cap)
{
    size_t len = 0;
    out[len++] = '{';
    pthread_mutex_lock(&s->held_lock);
    for (size_t i = 0; i < s->nheld && len + 24 < cap; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%lld", i ? "," : "",
                                (long long)s->held[i]);
    pthread_mutex_unlock(&s->held_lock);
    snprintf(out + len, cap - len, "}");
}

static void held_add(struct pgs *s, int64_t seq)
{
    pthread_mutex_lock(&s->held_lock);
    bool have = false;
    for (size_t i = 0; i < s->nheld && !have; i++)
        have = s->held[i] == seq;
    if (!have && s->nheld < PGS_HELD_MAX)
        s->held[s->nheld++] = seq;
    pthread_mutex_unlock(&s->held_lock);
}

static void held_drop(struct pgs *s, int64_t seq)
{
    pthread_mutex_lock(&s->held_lock);
    for (size_t i = 0; i < s->nheld; i++)
        if (s->held[i] == seq) {
            s->held[i] = s->held[--s->nheld];
            break;
        }
    pthread_mutex_unlock(&s->held_lock);
}

int pgs_outbox_due(void *impl, double now, int limit, struct store_outbox_item **items,
                   size_t *n, struct tpv_err *err)
{
    struct pgs *s = impl;
    *items = NULL;
    *n = 0;
    char nw[PGS_NUM_MAX], until[PGS_NUM_MAX], lim[PGS_NUM_MAX], held[PGS_HELD_MAX * 24 + 4];
    const char *nwp, *untilp;
    pgs_fmt_double(nw, now, &nwp);
    pgs_fmt_double(until, now + OUTBOX_LEASE_S, &untilp);
    pgs_fmt_int(lim, limit > 0 ? limit : 1);
    held_text(s, held, sizeof held);
    const char *p[] = { nwp, lim, untilp, held };
    struct pg_result *r;
    /* One statement is one transaction: the claim (next attempt moved a lease ahead) commits
     * with the read, and other nodes' senders skip the locked and claimed rows.  This node's
     * held rows come first, so that its senders, which take one row of a batch each, get back
     * the ones they have not sent yet. */
    int rc = pgs_read(impl,
                      "WITH due AS (SELECT seq FROM webhook_outbox WHERE delivered_at IS NULL AND "
                      "failed_at IS NULL AND (next_attempt_at <= $1::float8 OR "
                      "seq = ANY($4::bigint[])) ORDER BY seq = ANY($4::bigint[]) DESC, "
                      "next_attempt_at, seq LIMIT $2::int FOR UPDATE SKIP LOCKED) "
                      "UPDATE webhook_outbox o SET next_attempt_at = $3::float8 FROM due "
                      "WHERE o.seq = due.seq RETURNING o.seq, o.study_id, o.event, o.payload, "
                      "o.attempts, coalesce(o.url, (SELECT webhook_url FROM studies s WHERE "
                      "s.id = o.study_id)), coalesce(o.secret, (SELECT webhook_secret FROM "
                      "studies s WHERE s.id = o.study_id))",
                      4, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    int k = pg_result_rows(r);
    struct store_outbox_item *out = k ? calloc((size_t)k, sizeof *out) : NULL;
    if (k && !out)
        rc = pgs_oom(err);
    for (int i = 0; rc == TPV_OK && i < k; i++) {
        struct store_outbox_item *o = &out[i];
        o->seq = pg_result_int64(r, i, 0);
        held_add(s, o->seq);
        pgs_copy(o->study_id, sizeof o->study_id, r, i, 1);
        pgs_copy(o->event, sizeof o->event, r, i, 2);
        o->payload = pg_result_strdup(r, i, 3);
        o->attempts = (int)pg_result_int64(r, i, 4);
        o->url = pg_result_strdup(r, i, 5);
        o->secret = pg_result_strdup(r, i, 6);
        *n = (size_t)i + 1;
        if (!o->payload || (!o->url && !pg_result_null(r, i, 5)) ||
            (!o->secret && !pg_result_null(r, i, 6)))
            rc = pgs_oom(err);
    }
    pg_result_free(r);
    if (rc != TPV_OK) {
        store_outbox_items_free(out, *n);
        *n = 0;
        return rc;
    }
    /* Results sorted as the sender expects them: by when they were due, oldest first. */
    *items = out;
    return TPV_OK;
}

/* The earliest due row; this node's held rows are due now (its senders still owe them). */
/* At close: rows this node claimed and did not end are due again now, for the next start or
 * another node, instead of after the lease (a shutdown aborts deliveries in flight). */
void pgs_outbox_release_held(struct pgs *s)
{
    char held[PGS_HELD_MAX * 24 + 4], now[PGS_NUM_MAX];
    const char *nowp;
    held_text(s, held, sizeof held);
    if (strcmp(held, "{}") == 0)
        return;
    pgs_fmt_double(now, pgs_clock_now(), &nowp);
    const char *p[] = { held, nowp };
    struct tpv_err err;
    (void)pgs_read(s,
                   "UPDATE webhook_outbox SET next_attempt_at = least(next_attempt_at, $2::float8) "
                   "WHERE seq = ANY($1::bigint[]) AND delivered_at IS NULL AND failed_at IS NULL",
                   2, p, NULL, &err); /* best effort: else the lease runs out */
}

int pgs_outbox_next_due(void *impl, double *at, struct tpv_err *err)
{
    struct pgs *s = impl;
    pthread_mutex_lock(&s->held_lock);
    size_t held = s->nheld;
    pthread_mutex_unlock(&s->held_lock);
    if (held) {
        *at = pgs_clock_now();
        return TPV_OK;
    }
    struct pg_result *r;
    int rc = pgs_read(impl,
                      "SELECT min(next_attempt_at) FROM webhook_outbox "
                      "WHERE delivered_at IS NULL AND failed_at IS NULL",
                      0, NULL, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_null(r, 0, 0))
        rc = tpv_err_set(err, TPV_ENOTFOUND, NULL, "no pending webhook event");
    else
        *at = pg_result_double(r, 0, 0);
    pg_result_free(r);
    return rc;
}

static int outbox_update(void *impl, const char *sql, int64_t seq, const char *a, const char *b,
                         struct tpv_err *err)
{
    char sq[PGS_NUM_MAX];
    pgs_fmt_int(sq, seq);
    const char *p[] = { sq, a, b };
    held_drop(impl, seq); /* ended by this node, or given up to the lease on failure */
    return pgs_read(impl, sql, 3, p, NULL, err);
}

int pgs_outbox_delivered(void *impl, int64_t seq, const char *now, struct tpv_err *err)
{
    return outbox_update(impl,
                         "UPDATE webhook_outbox SET attempts = attempts + 1, delivered_at = $2, "
                         "last_error = $3 WHERE seq = $1::bigint",
                         seq, now, NULL, err);
}

int pgs_outbox_retry(void *impl, int64_t seq, double next_at, const char *error,
                     struct tpv_err *err)
{
    char at[PGS_NUM_MAX];
    const char *atp;
    pgs_fmt_double(at, next_at, &atp);
    return outbox_update(impl,
                         "UPDATE webhook_outbox SET attempts = attempts + 1, "
                         "next_attempt_at = $2::float8, last_error = $3 WHERE seq = $1::bigint",
                         seq, atp, error, err);
}

int pgs_outbox_fail(void *impl, int64_t seq, const char *error, const char *now,
                    struct tpv_err *err)
{
    return outbox_update(impl,
                         "UPDATE webhook_outbox SET attempts = attempts + 1, failed_at = $2, "
                         "last_error = $3 WHERE seq = $1::bigint",
                         seq, now, error, err);
}

int pgs_outbox_stats(void *impl, int64_t *pending, int64_t *delivered, int64_t *failed,
                     struct tpv_err *err)
{
    struct pg_result *r;
    int rc = pgs_read(impl,
                      "SELECT count(*) FILTER (WHERE delivered_at IS NULL AND failed_at IS NULL), "
                      "count(*) FILTER (WHERE delivered_at IS NOT NULL), "
                      "count(*) FILTER (WHERE failed_at IS NOT NULL) FROM webhook_outbox",
                      0, NULL, &r, err);
    if (rc != TPV_OK)
        return rc;
    *pending = pg_result_int64(r, 0, 0);
    *delivered = pg_result_int64(r, 0, 1);
    *failed = pg_result_int64(r, 0, 2);
    pg_result_free(r);
    return TPV_OK;
}
