/* store_ops.h: the table of operations a storage backend fills (storage/DESIGN-phase2.md section
 * 1): storage/store_sqlite*.c (`store_sqlite_ops`) and storage/store_pg*.c (`store_pg_ops`).
 * store.c is the dispatcher: `store_study_get(st, ...)` -> `st->ops->study_get(st->impl, ...)`,
 * after the backend-neutral argument checks; it owns ids, times, page tokens, the version cache
 * and the hooks (the backend reports commits and changes through `struct store_sink`).
 *
 * Every member has the contract of the store.h function of the same name (errors, ownership,
 * transactions), minus `struct store *`; `impl` is what `open` returned.  Members are called
 * from any thread.  Seen only by storage/ (store.c and the backends). */
#ifndef TPV_STORE_OPS_H
#define TPV_STORE_OPS_H

#include "core/tpv_error.h"
#include "storage/store_types.h"

#define STORE_VERSION_CACHE_FOREVER INT64_MAX

/* What a backend tells the dispatcher (store.c), always after the transaction committed, from
 * the thread that noticed it; keep the calls short. */
struct store_sink {
    void *ctx;
    /* A study's version was bumped (by this node, or by another one, seen by notification), or
     * version 0 when one of its jobs changed state without a bump (a JBR job ended): the holds
     * on the study must wake either way. */
    void (*study_changed)(void *ctx, const char *study_id, int64_t version);
    /* A job became claimable. */
    void (*job_queued)(void *ctx);
    /* Some write committed: versions read before may be stale (the version cache's generation). */
    void (*committed)(void *ctx);
    /* Renders an outbox event inside the writing transaction (a NULL answer fails the write
     * with TPV_ENOMEM; no renderer set fails it with TPV_EINTERNAL).  Never NULL itself. */
    char *(*render_event)(void *ctx, const struct store_event *ev, const char *event_id);
};

/* Appends a JBR job to c->jbr_jobs (capacity *cap, 0 for an empty list): how both backends
 * fill a candidate's list from their rows, which come newest first.  false when out of memory
 * (nothing appended; the list stays the caller's to free with the candidate).
 * storage/store_types.c. */
bool store_candidate_add_jbr(struct store_candidate *c, size_t *cap, const char *id,
                             const char *state, const char *created_at);

struct store_ops {
    const char *name; /* "sqlite" | "postgresql", for logs and /metrics */

    /* ---- handle ---- */
    /* `target` is the URL after the scheme for SQLite (the database file's path) and the whole
     * libpq URI for PostgreSQL.  *impl owns the backend's state (close frees it).  The sink is
     * copied.  Errors: TPV_EIO, TPV_EINTERNAL, TPV_EUNAVAILABLE, TPV_EPRECONDITION (newer
     * schema, folder in use). */
    int (*open)(void **impl, const char *target, const struct store_options *o,
                const struct store_sink *sink, struct tpv_err *err);
    void (*close)(void *impl); /* NULL is a no-op */
    int (*ping)(void *impl, struct tpv_err *err);
    int (*schema_version)(void *impl, int *version, struct tpv_err *err);
    /* How long a study version read now may be served from the dispatcher's cache while the
     * commit generation does not move, in ms: STORE_VERSION_CACHE_FOREVER (SQLite's exclusive
     * handle: its WAL hook sees every commit), 0 = not at all (a shared SQLite file; PostgreSQL
     * while its listener is disconnected), or a bound on what a lost notification can cost
     * (PostgreSQL while the listener is connected: other nodes' commits arrive as notifications,
     * and one lost to a silent network failure is outlived by the bound). */
    int64_t (*version_cache_ms)(void *impl);
    /* Appended to the ranking's ETag so that a version number reused after a crash is not
     * taken for one a client saw ("" for SQLite; the server start time for PostgreSQL). */
    const char *(*version_epoch)(void *impl);

    /* ---- idempotency keys ---- */
    int (*idem_lookup)(void *impl, const struct store_idem *idem, struct store_replay *out,
                       struct tpv_err *err);
    int (*idem_expire)(void *impl, const char *before /* RFC 3339 */, int *removed,
                       struct tpv_err *err);

    /* ---- studies ---- */
    int (*study_create)(void *impl, const struct store_study_new *s, const struct store_idem *idem,
                        const struct store_reply *reply, struct tpv_err *err);
    int (*study_get)(void *impl, const char *id, struct store_study *out, struct tpv_err *err);
    int (*study_version)(void *impl, const char *id, int64_t *version, struct tpv_err *err);
    int (*study_info)(void *impl, const char *id, struct store_study_info *out,
                      struct tpv_err *err);
    int (*study_list)(void *impl, int64_t after_seq, int limit, uint64_t max_bytes,
                      struct store_study_page *out, struct tpv_err *err);
    int (*study_delete)(void *impl, const char *id, const char *now, struct tpv_err *err);
    int (*input_set)(void *impl, const char *study_id, const char *split, const char *digest,
                     int64_t n, const char *now, struct tpv_err *err);

    /* ---- candidates ---- */
    int (*candidate_create)(void *impl, const struct store_candidate_new *c, int64_t max_queued,
                            const struct store_idem *idem, const struct store_reply *reply,
                            struct tpv_err *err);
    int (*candidate_get)(void *impl, const char *study_id, const char *id,
                         struct store_candidate *out, struct tpv_err *err);
    int (*candidate_source)(void *impl, const char *study_id, const char *id, char **source,
                            char kind[STORE_KIND_MAX], struct tpv_err *err);
    int (*candidate_list)(void *impl, const char *study_id, int64_t after_seq, int limit,
                          uint64_t max_bytes, struct store_candidate_page *out,
                          struct tpv_err *err);
    int (*candidate_delete)(void *impl, const char *study_id, const char *id, const char *now,
                            struct tpv_err *err);
    int (*candidate_retry)(void *impl, const char *study_id, const char *id, const char *job_id,
                           int64_t max_queued, const char *now, struct tpv_err *err);
    int (*jbr_create)(void *impl, const char *study_id, const char *candidate_id,
                      const char *job_id, const char *params, int64_t max_queued,
                      const char *now, struct tpv_err *err);

    /* ---- jobs ---- */
    int (*job_get)(void *impl, const char *id, struct store_job *out, struct tpv_err *err);
    int (*job_cancel)(void *impl, const char *id, const char *now, struct store_job *out,
                      struct tpv_err *err);
    /* `now` is seconds since the epoch (lease arithmetic); `now_text` the same as RFC 3339. */
    int (*job_claim)(void *impl, const char *owner, double lease_s, double now,
                     const char *now_text, struct store_claim *out, struct tpv_err *err);
    int (*job_renew)(void *impl, const char *id, const char *owner, double progress,
                     double lease_expires, bool *cancel, struct tpv_err *err);
    int (*job_succeed)(void *impl, const char *id, const char *owner,
                       const struct store_score *scores, size_t nscores, const char *stability,
                       const char *result, const char *now, struct tpv_err *err);
    int (*job_finish)(void *impl, const char *id, const char *owner, const char *state,
                      const char *code, const char *message, const char *now,
                      struct tpv_err *err);
    int (*job_release)(void *impl, const char *id, const char *owner, struct tpv_err *err);
    /* Start-up recovery (SQLite: every running job; PostgreSQL: expired leases only, other
     * nodes' jobs are alive) and the periodic re-queue of expired leases (`now` > 0). */
    int (*jobs_recover)(void *impl, int max_attempts, const char *now, int *requeued,
                        int *failed, struct tpv_err *err);
    int (*jobs_requeue_expired)(void *impl, int max_attempts, double now, const char *now_text,
                                int *requeued, int *failed, struct tpv_err *err);
    int (*jobs_queued)(void *impl, int64_t *n, struct tpv_err *err);

    /* ---- candidate metrics (storage/metrics.h; the version bump is in the merge's tx) ---- */
    int (*metrics_merge)(void *impl, const char *study_id, const char *candidate_id,
                         const char *patch, int64_t *version, struct tpv_err *err);
    int (*metric_names)(void *impl, const char *study_id, char *names, size_t cap,
                        struct tpv_err *err);
    int (*agree_rows)(void *impl, const char *study_id, const char *metric,
                      struct store_agree_rows *out, struct tpv_err *err);

    /* ---- ranking ---- */
    int (*rank_rows)(void *impl, const char *study_id, const char *noise, const char *split,
                     struct store_rank_row **rows, size_t *nrows, struct tpv_err *err);
    /* ids: n <= STORE_CONTRIB_IDS_MAX (checked by the dispatcher); one query */
    int (*rank_contributions)(void *impl, const char *study_id, const char *noise,
                              const char *split, const char *const *ids, size_t n,
                              struct store_contrib **out, struct tpv_err *err);

    /* ---- webhook outbox (PostgreSQL: `due` claims rows under a short lease, SKIP LOCKED) ---- */
    int (*outbox_due)(void *impl, double now, int limit, struct store_outbox_item **items,
                      size_t *n, struct tpv_err *err);
    int (*outbox_next_due)(void *impl, double *at, struct tpv_err *err);
    int (*outbox_delivered)(void *impl, int64_t seq, const char *now, struct tpv_err *err);
    int (*outbox_retry)(void *impl, int64_t seq, double next_at, const char *error,
                        struct tpv_err *err);
    int (*outbox_fail)(void *impl, int64_t seq, const char *error, const char *now,
                       struct tpv_err *err);
    int (*outbox_stats)(void *impl, int64_t *pending, int64_t *delivered, int64_t *failed,
                        struct tpv_err *err);

    /* ---- API tokens ---- */
    int (*token_create)(void *impl, const char *id, const char *name, const char *role,
                        const char *hash_hex, const char *now, struct tpv_err *err);
    int (*token_find)(void *impl, const char *hash_hex, struct store_token *out,
                      struct tpv_err *err);
    /* *rows is malloc'd (NULL when none; free()), oldest first. */
    int (*token_list)(void *impl, struct store_token_row **rows, size_t *n, struct tpv_err *err);
    int (*token_revoke)(void *impl, const char *name, const char *now, struct tpv_err *err);
    int (*token_count)(void *impl, int64_t *n, struct tpv_err *err);

    /* ---- statistics ---- */
    int (*stats)(void *impl, struct store_stats *out, struct tpv_err *err);

    /* ---- blob rows (for stats and GC; the files are storage/blobs.h's) ---- */
    /* Records an uploaded blob (a re-upload of a present one restarts its GC grace). */
    int (*blob_record)(void *impl, const char *digest, uint64_t size, const char *now,
                       struct tpv_err *err);
    /* In one transaction: TPV_EPRECONDITION (field "digest") naming a study, candidate or job
     * that references the blob, else its row goes and rm(ctx, digest) removes the file before
     * the commit. */
    int (*blob_delete)(void *impl, const char *digest, store_blob_remove_fn rm, void *ctx,
                       struct tpv_err *err);
    /* Up to `limit` unreferenced blobs whose later of upload and release is before `cutoff`
     * (RFC 3339): rows deleted and rm() called for each, in one transaction. */
    int (*blob_gc)(void *impl, const char *cutoff, int limit, store_blob_remove_fn rm,
                   void *ctx, int *removed, struct tpv_err *err);
};

#endif
