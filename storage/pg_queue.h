/* pg_queue.h: the durable job queue on PostgreSQL (DESIGN.md section 7), for several tpvd nodes
 * on one database.  A claim takes the oldest queued job with `FOR UPDATE SKIP LOCKED` (claimers
 * never wait for each other and never get the same job) and gives it a lease (owner,
 * lease_expires) that the running worker renews; a node killed with SIGKILL stops renewing, and
 * any node's store_jobs_requeue_expired (storage/store_pg_jobs.c, which also tells the outbox)
 * puts its jobs back in the queue, or fails them with a clear error past the attempts limit.
 * Only the current owner may renew, finish or release a job.
 *
 * Lease times are the database server's clock (clock_timestamp()), never a node's, so that nodes
 * whose clocks disagree still agree on which lease expired.  Every transition of a score job
 * mirrors the state onto its candidate, bumps the study version and queues
 * `NOTIFY tpv_study, '<sid>:<version>'` in the same transaction (pg_notify.h).
 *
 * Phase 2 (storage/DESIGN-phase2.md) puts these behind the store ops table; scores, the webhook
 * outbox events and JBR results of store_job_succeed are written there. */
#ifndef TPV_PG_QUEUE_H
#define TPV_PG_QUEUE_H

#include <stdbool.h>

#include "core/tpv_error.h"
#include "storage/pg_conn.h"

#define PG_QUEUE_ID_MAX 32

/* A claimed job and what the worker needs to run it; free with pg_job_claim_free. */
struct pg_job_claim {
    char id[PG_QUEUE_ID_MAX];
    char kind[16]; /* "score" | "jbr" */
    char study_id[PG_QUEUE_ID_MAX];
    char candidate_id[PG_QUEUE_ID_MAX];
    int attempts;        /* including this one */
    double lease_until;  /* seconds since the epoch, database clock */
    char *source;        /* candidate source JSON */
    char *noise_models;  /* study noise models JSON */
    char *params;        /* job params JSON or NULL */
};
void pg_job_claim_free(struct pg_job_claim *c);

/* Claims the oldest queued job for `owner` (a node-unique worker name) with a lease of `lease_s`
 * seconds: running, attempts + 1, in one transaction.  TPV_ENOTFOUND when nothing is claimable. */
int pg_queue_claim(struct pg_pool *p, const char *owner, double lease_s, struct pg_job_claim *out,
                   struct tpv_err *err);

/* Records progress (0..1) and extends the lease to now + lease_s; *cancel tells whether a cancel
 * was asked.  TPV_EPRECONDITION when the job is no longer this owner's (the lease was lost). */
int pg_queue_renew(struct pg_pool *p, const char *id, const char *owner, double progress,
                   double lease_s, bool *cancel, struct tpv_err *err);

/* Ends a job held by `owner` as "succeeded", "failed" or "canceled" with an optional error
 * {code, message} and result JSON.  TPV_EPRECONDITION when the job is no longer this owner's,
 * TPV_EINVAL for another state. */
int pg_queue_finish(struct pg_pool *p, const char *id, const char *owner, const char *state,
                    const char *code, const char *message, const char *result,
                    struct tpv_err *err);

/* Gives a job held by `owner` back to the queue (shutdown); the attempt is not counted. */
int pg_queue_release(struct pg_pool *p, const char *id, const char *owner, struct tpv_err *err);

#endif
