/* store_pg_int.h: what store_pg.c and store_pg_jobs.c share (the PostgreSQL backend's state and
 * helpers).  Seen only by store_pg*.c. */
#ifndef TPV_STORE_PG_INT_H
#define TPV_STORE_PG_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "storage/pg_conn.h"
#include "storage/pg_notify.h"
#include "storage/store_ops.h"

#define PGS_NUM_MAX 32
#define PGS_HELD_MAX 64

struct pgs {
    struct pg_pool *pool;
    struct pg_listener *listener;
    struct store_sink sink;
    int64_t version_cache_ms;          /* bound on a cached version while the listener is up */
    char epoch[32];                    /* pg_postmaster_start_time() at open, seconds */
    /* Outbox rows this node claimed and has not ended: its senders are offered them again
     * (they pick one row of a batch at a time), other nodes skip them until the lease ends. */
    pthread_mutex_t held_lock;
    int64_t held[PGS_HELD_MAX];
    size_t nheld;
};

double pgs_clock_now(void);
void pgs_fmt_double(char out[PGS_NUM_MAX], double v, const char **param); /* NaN -> NULL */
void pgs_fmt_int(char out[PGS_NUM_MAX], int64_t v);
void pgs_copy(char *dst, size_t cap, const struct pg_result *r, int row, int col);
int pgs_oom(struct tpv_err *err);
int pgs_read(struct pgs *s, const char *sql, int n, const char *const *params,
             struct pg_result **res, struct tpv_err *err);
int pgs_bump(struct pg_conn *c, const char *study_id, int64_t *version, struct tpv_err *err);
void pgs_changed(struct pgs *s, const char *study_id, int64_t version);
void pgs_job_queued(struct pgs *s);
int pgs_has_hook(struct pg_conn *c, const char *study_id, bool *has, struct tpv_err *err);
int pgs_outbox_put(struct pgs *s, struct pg_conn *c, const struct store_event *ev,
                   struct tpv_err *err);
uint64_t pgs_row_bytes(const struct pg_result *r, int row, int ncols, unsigned json_cols);
bool pgs_page_full(size_t count, uint64_t used, uint64_t more, uint64_t max_bytes);
int pgs_queue_room(struct pg_conn *c, int64_t max_queued, struct tpv_err *err);
int pgs_job_insert(struct pg_conn *c, const char *id, const char *kind, const char *study_id,
                   const char *candidate_id, const char *params, const char *now,
                   struct tpv_err *err);

/* store_pg_metrics.c */
int pgs_metrics_merge(void *impl, const char *study_id, const char *candidate_id,
                      const char *patch, int64_t *version, struct tpv_err *err);
int pgs_metric_names(void *impl, const char *study_id, char *names, size_t cap,
                     struct tpv_err *err);
int pgs_agree_rows(void *impl, const char *study_id, const char *metric,
                   struct store_agree_rows *out, struct tpv_err *err);

/* store_pg_contrib.c: per-input contributions as the hex text of their stored BYTEA (*hex NULL,
 * a SQL NULL, when there are none; malloc'd), and the ranking's one-query load. */
int pgs_contrib_hex(const double *v, size_t n, char **hex, struct tpv_err *err);
int pgs_rank_contributions(void *impl, const char *study_id, const char *noise,
                           const char *split, const char *const *ids, size_t n,
                           struct store_contrib **out, struct tpv_err *err);

/* store_pg_jobs.c: the job and outbox ops. */
int pgs_job_get(void *impl, const char *id, struct store_job *out, struct tpv_err *err);
int pgs_job_cancel(void *impl, const char *id, const char *now, struct store_job *out,
                   struct tpv_err *err);
int pgs_job_claim(void *impl, const char *owner, double lease_s, double now,
                  const char *now_text, struct store_claim *out, struct tpv_err *err);
int pgs_job_renew(void *impl, const char *id, const char *owner, double progress,
                  double lease_expires, bool *cancel, struct tpv_err *err);
int pgs_job_succeed(void *impl, const char *id, const char *owner,
                    const struct store_score *scores, size_t nscores, const char *stability,
                    const char *result, const char *now, struct tpv_err *err);
int pgs_job_finish(void *impl, const char *id, const char *owner, const char *state,
                   const char *code, const char *message, const char *now, struct tpv_err *err);
int pgs_job_release(void *impl, const char *id, const char *owner, struct tpv_err *err);
int pgs_jobs_recover(void *impl, int max_attempts, const char *now, int *requeued, int *failed,
                     struct tpv_err *err);
int pgs_jobs_requeue_expired(void *impl, int max_attempts, double now, const char *now_text,
                             int *requeued, int *failed, struct tpv_err *err);
int pgs_outbox_due(void *impl, double now, int limit, struct store_outbox_item **items,
                   size_t *n, struct tpv_err *err);
int pgs_outbox_next_due(void *impl, double *at, struct tpv_err *err);
void pgs_outbox_release_held(struct pgs *s);
int pgs_outbox_delivered(void *impl, int64_t seq, const char *now, struct tpv_err *err);
int pgs_outbox_retry(void *impl, int64_t seq, double next_at, const char *error,
                     struct tpv_err *err);
int pgs_outbox_fail(void *impl, int64_t seq, const char *error, const char *now,
                    struct tpv_err *err);
int pgs_outbox_stats(void *impl, int64_t *pending, int64_t *delivered, int64_t *failed,
                     struct tpv_err *err);

#endif
