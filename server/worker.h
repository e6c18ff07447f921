/* worker.h: the job worker pool: threads that claim jobs from the durable queue (storage/),
 * run them through the core (core/score.h) with progress and cancellation, and write the outcome
 * in one transaction (DESIGN.md sections 2 and 6). */
#ifndef TPV_SRV_WORKER_H
#define TPV_SRV_WORKER_H

#include <stdbool.h>

#include "api/api.h"
#include "server/config.h"

struct store;
struct srv_workers;
struct store_score;

/* A score job's outcome encoded for store_job_succeed: one row per score with its details as
 * JSON text, and the stability report's text (NULL without one).  Owns every string. */
struct srv_score_rows {
    struct store_score *rows;
    char **details;
    size_t n;
    char *stability;
};

/* Encodes n scores and the stability report.  TPV_EINTERNAL naming the score when a details
 * object cannot be encoded (the job then fails: scores are never written without their
 * details), TPV_ENOMEM.  Release with srv_score_rows_free on any return (it is a no-op on a
 * zeroed or failed *out). */
int srv_score_rows_encode(struct srv_score_rows *out, const struct tpv_score *sc, size_t n,
                          const json_t *stability, struct tpv_err *err);
void srv_score_rows_free(struct srv_score_rows *r);

/* Starts the effective number of workers (srv_config_effective_threads) and sets the BLAS thread
 * count per job.  `st` and `metrics` (may be NULL) must outlive the pool.  Errors: TPV_ENOMEM,
 * TPV_EINTERNAL (thread creation). */
int srv_workers_start(struct srv_workers **out, const struct srv_config *cfg, struct store *st,
                      struct api_metrics *metrics, struct tpv_err *err);

/* Wakes an idle worker: a job was queued.  Thread-safe; w may be NULL. */
void srv_workers_notify(struct srv_workers *w);

/* True while every worker thread is in its loop (for /readyz). */
bool srv_workers_alive(void *w);

/* Stops claiming, lets running jobs finish for up to grace_s seconds, then asks them to stop and
 * gives them back to the queue (they run again at the next start), joins the threads and frees
 * the pool.  NULL is a no-op. */
void srv_workers_stop(struct srv_workers *w, int grace_s);

#endif
