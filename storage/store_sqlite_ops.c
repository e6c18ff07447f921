/* store_sqlite_ops.c: the SQLite backend's table of operations (store_ops.h).  Each member
 * adapts `void *impl` to the backend's handle; where the dispatcher passes the current time the
 * SQLite code takes its own clock reading in the transaction (the same clock, read a moment
 * later), as it always has. */
#include "storage/sqlite_int.h"
#include "storage/store_sqlite.h"

static int op_open(void **impl, const char *target, const struct store_options *o,
                   const struct store_sink *sink, struct tpv_err *err)
{
    struct sq_store *st = NULL;
    int rc = sq_open_with(&st, target, o, sink, err);
    *impl = st;
    return rc;
}

static void op_close(void *impl)
{
    sq_close(impl);
}

static int op_ping(void *impl, struct tpv_err *err)
{
    return sq_ping(impl, err);
}

static int op_schema_version(void *impl, int *version, struct tpv_err *err)
{
    *version = sq_schema_version(impl);
    return *version >= 0 ? TPV_OK
                         : tpv_err_set(err, TPV_EINTERNAL, NULL, "cannot read the schema version");
}

/* Only an exclusive handle: no other process writes its studies, and every commit of this one
 * is seen by the WAL hook. */
static int64_t op_version_cache_ms(void *impl)
{
    return ((struct sq_store *)impl)->shared ? 0 : STORE_VERSION_CACHE_FOREVER;
}

static const char *op_version_epoch(void *impl)
{
    (void)impl;
    return "";
}

static int op_idem_lookup(void *impl, const struct store_idem *idem, struct store_replay *out,
                          struct tpv_err *err)
{
    return sq_idem_lookup(impl, idem, out, err);
}

static int op_idem_expire(void *impl, const char *before, int *removed, struct tpv_err *err)
{
    return sq_idempotency_expire(impl, before, removed, err);
}

static int op_study_create(void *impl, const struct store_study_new *s,
                           const struct store_idem *idem, const struct store_reply *reply,
                           struct tpv_err *err)
{
    return sq_study_create(impl, s, idem, reply, err);
}

static int op_study_get(void *impl, const char *id, struct store_study *out, struct tpv_err *err)
{
    return sq_study_get(impl, id, out, err);
}

static int op_study_version(void *impl, const char *id, int64_t *version, struct tpv_err *err)
{
    return sq_study_version(impl, id, version, err);
}

static int op_study_info(void *impl, const char *id, struct store_study_info *out,
                         struct tpv_err *err)
{
    return sq_study_info(impl, id, out, err);
}

static int op_study_list(void *impl, int64_t after_seq, int limit, uint64_t max_bytes,
                         struct store_study_page *out, struct tpv_err *err)
{
    return sq_study_list(impl, after_seq, limit, max_bytes, out, err);
}

static int op_study_delete(void *impl, const char *id, const char *now, struct tpv_err *err)
{
    (void)now;
    return sq_study_delete(impl, id, err);
}

static int op_input_set(void *impl, const char *study_id, const char *split, const char *digest,
                        int64_t n, const char *now, struct tpv_err *err)
{
    (void)now;
    return sq_input_set(impl, study_id, split, digest, n, err);
}

static int op_candidate_create(void *impl, const struct store_candidate_new *c,
                               int64_t max_queued, const struct store_idem *idem,
                               const struct store_reply *reply, struct tpv_err *err)
{
    return sq_candidate_create(impl, c, max_queued, idem, reply, err);
}

static int op_candidate_get(void *impl, const char *study_id, const char *id,
                            struct store_candidate *out, struct tpv_err *err)
{
    return sq_candidate_get(impl, study_id, id, out, err);
}

static int op_candidate_source(void *impl, const char *study_id, const char *id, char **source,
                               char kind[STORE_KIND_MAX], struct tpv_err *err)
{
    return sq_candidate_source(impl, study_id, id, source, kind, err);
}

static int op_candidate_list(void *impl, const char *study_id, int64_t after_seq, int limit,
                             uint64_t max_bytes, struct store_candidate_page *out,
                             struct tpv_err *err)
{
    return sq_candidate_list(impl, study_id, after_seq, limit, max_bytes, out, err);
}

static int op_candidate_delete(void *impl, const char *study_id, const char *id,
                               const char *now, struct tpv_err *err)
{
    (void)now;
    return sq_candidate_delete(impl, study_id, id, err);
}

static int op_candidate_retry(void *impl, const char *study_id, const char *id,
                              const char *job_id, int64_t max_queued, const char *now,
                              struct tpv_err *err)
{
    (void)now;
    return sq_candidate_retry(impl, study_id, id, job_id, max_queued, err);
}

static int op_jbr_create(void *impl, const char *study_id, const char *candidate_id,
                         const char *job_id, const char *params, int64_t max_queued,
                         const char *now, struct tpv_err *err)
{
    (void)now;
    return sq_jbr_create(impl, study_id, candidate_id, job_id, params, max_queued, err);
}

static int op_job_get(void *impl, const char *id, struct store_job *out, struct tpv_err *err)
{
    return sq_job_get(impl, id, out, err);
}

static int op_job_cancel(void *impl, const char *id, const char *now, struct store_job *out,
                         struct tpv_err *err)
{
    (void)now;
    return sq_job_cancel(impl, id, out, err);
}

static int op_job_claim(void *impl, const char *owner, double lease_s, double now,
                        const char *now_text, struct store_claim *out, struct tpv_err *err)
{
    (void)now;
    (void)now_text;
    return sq_job_claim(impl, owner, lease_s, out, err);
}

static int op_job_renew(void *impl, const char *id, const char *owner, double progress,
                        double lease_expires, bool *cancel, struct tpv_err *err)
{
    return sq_job_progress(impl, id, owner, progress, lease_expires, cancel, err);
}

static int op_job_succeed(void *impl, const char *id, const char *owner,
                          const struct store_score *scores, size_t nscores,
                          const char *stability, const char *result, const char *now,
                          struct tpv_err *err)
{
    (void)now;
    return sq_job_succeed(impl, id, owner, scores, nscores, stability, result, err);
}

static int op_job_finish(void *impl, const char *id, const char *owner, const char *state,
                         const char *code, const char *message, const char *now,
                         struct tpv_err *err)
{
    (void)now;
    return sq_job_finish(impl, id, owner, state, code, message, err);
}

static int op_job_release(void *impl, const char *id, const char *owner, struct tpv_err *err)
{
    return sq_job_release(impl, id, owner, err);
}

static int op_jobs_recover(void *impl, int max_attempts, const char *now, int *requeued,
                           int *failed, struct tpv_err *err)
{
    (void)now;
    return sq_jobs_recover(impl, max_attempts, requeued, failed, err);
}

static int op_jobs_requeue_expired(void *impl, int max_attempts, double now,
                                   const char *now_text, int *requeued, int *failed,
                                   struct tpv_err *err)
{
    (void)now_text;
    return sq_jobs_requeue_expired(impl, max_attempts, now, requeued, failed, err);
}

static int op_jobs_queued(void *impl, int64_t *n, struct tpv_err *err)
{
    return sq_jobs_queued(impl, n, err);
}

static int op_rank_rows(void *impl, const char *study_id, const char *noise, const char *split,
                        struct store_rank_row **rows, size_t *nrows, struct tpv_err *err)
{
    return sq_rank_rows(impl, study_id, noise, split, rows, nrows, err);
}

static int op_outbox_due(void *impl, double now, int limit, struct store_outbox_item **items,
                         size_t *n, struct tpv_err *err)
{
    return sq_outbox_due(impl, now, limit, items, n, err);
}

static int op_outbox_next_due(void *impl, double *at, struct tpv_err *err)
{
    return sq_outbox_next_due(impl, at, err);
}

static int op_outbox_delivered(void *impl, int64_t seq, const char *now, struct tpv_err *err)
{
    (void)now;
    return sq_outbox_delivered(impl, seq, err);
}

static int op_outbox_retry(void *impl, int64_t seq, double next_at, const char *error,
                           struct tpv_err *err)
{
    return sq_outbox_retry(impl, seq, next_at, error, err);
}

static int op_outbox_fail(void *impl, int64_t seq, const char *error, const char *now,
                          struct tpv_err *err)
{
    (void)now;
    return sq_outbox_fail(impl, seq, error, err);
}

static int op_outbox_stats(void *impl, int64_t *pending, int64_t *delivered, int64_t *failed,
                           struct tpv_err *err)
{
    return sq_outbox_stats(impl, pending, delivered, failed, err);
}

static int op_token_create(void *impl, const char *id, const char *name, const char *role,
                           const char *hash_hex, const char *now, struct tpv_err *err)
{
    (void)id; /* the SQLite rows keep the id and time they always took */
    (void)now;
    return sq_token_create(impl, name, role, hash_hex, err);
}

static int op_token_find(void *impl, const char *hash_hex, struct store_token *out,
                         struct tpv_err *err)
{
    return sq_token_find(impl, hash_hex, out, err);
}

static int op_token_list(void *impl, struct store_token_row **rows, size_t *n,
                         struct tpv_err *err)
{
    return sq_token_list(impl, rows, n, err);
}

static int op_token_revoke(void *impl, const char *name, const char *now, struct tpv_err *err)
{
    (void)now;
    return sq_token_revoke(impl, name, err);
}

static int op_token_count(void *impl, int64_t *n, struct tpv_err *err)
{
    return sq_token_count(impl, n, err);
}

static int op_stats(void *impl, struct store_stats *out, struct tpv_err *err)
{
    return sq_stats(impl, out, err);
}

static int op_blob_record(void *impl, const char *digest, uint64_t size, const char *now,
                          struct tpv_err *err)
{
    return sq_blob_record(impl, digest, size, now, err);
}

static int op_blob_delete(void *impl, const char *digest, store_blob_remove_fn rm, void *ctx,
                          struct tpv_err *err)
{
    return sq_blob_delete(impl, digest, rm, ctx, err);
}

static int op_blob_gc(void *impl, const char *cutoff, int limit, store_blob_remove_fn rm,
                      void *ctx, int *removed, struct tpv_err *err)
{
    return sq_blob_gc(impl, cutoff, limit, rm, ctx, removed, err);
}

static int op_metrics_merge(void *impl, const char *study_id, const char *candidate_id,
                            const char *patch, int64_t *version, struct tpv_err *err)
{
    return sq_metrics_merge(impl, study_id, candidate_id, patch, version, err);
}

static int op_metric_names(void *impl, const char *study_id, char *names, size_t cap,
                           struct tpv_err *err)
{
    return sq_metric_names(impl, study_id, names, cap, err);
}

static int op_rank_contributions(void *impl, const char *study_id, const char *noise,
                                 const char *split, const char *const *ids, size_t n,
                                 struct store_contrib **out, struct tpv_err *err)
{
    return sq_rank_contributions(impl, study_id, noise, split, ids, n, out, err);
}

static int op_agree_rows(void *impl, const char *study_id, const char *metric,
                         struct store_agree_rows *out, struct tpv_err *err)
{
    return sq_agree_rows(impl, study_id, metric, out, err);
}

const struct store_ops store_sqlite_ops = {
    .name = "sqlite",
    .open = op_open,
    .close = op_close,
    .ping = op_ping,
    .schema_version = op_schema_version,
    .version_cache_ms = op_version_cache_ms,
    .version_epoch = op_version_epoch,
    .idem_lookup = op_idem_lookup,
    .idem_expire = op_idem_expire,
    .study_create = op_study_create,
    .study_get = op_study_get,
    .study_version = op_study_version,
    .study_info = op_study_info,
    .study_list = op_study_list,
    .study_delete = op_study_delete,
    .input_set = op_input_set,
    .candidate_create = op_candidate_create,
    .candidate_get = op_candidate_get,
    .candidate_source = op_candidate_source,
    .candidate_list = op_candidate_list,
    .candidate_delete = op_candidate_delete,
    .candidate_retry = op_candidate_retry,
    .jbr_create = op_jbr_create,
    .job_get = op_job_get,
    .job_cancel = op_job_cancel,
    .job_claim = op_job_claim,
    .job_renew = op_job_renew,
    .job_succeed = op_job_succeed,
    .job_finish = op_job_finish,
    .job_release = op_job_release,
    .jobs_recover = op_jobs_recover,
    .jobs_requeue_expired = op_jobs_requeue_expired,
    .jobs_queued = op_jobs_queued,
    .metrics_merge = op_metrics_merge,
    .metric_names = op_metric_names,
    .agree_rows = op_agree_rows,
    .rank_rows = op_rank_rows,
    .rank_contributions = op_rank_contributions,
    .outbox_due = op_outbox_due,
    .outbox_next_due = op_outbox_next_due,
    .outbox_delivered = op_outbox_delivered,
    .outbox_retry = op_outbox_retry,
    .outbox_fail = op_outbox_fail,
    .outbox_stats = op_outbox_stats,
    .token_create = op_token_create,
    .token_find = op_token_find,
    .token_list = op_token_list,
    .token_revoke = op_token_revoke,
    .token_count = op_token_count,
    .stats = op_stats,
    .blob_record = op_blob_record,
    .blob_delete = op_blob_delete,
    .blob_gc = op_blob_gc,
};
