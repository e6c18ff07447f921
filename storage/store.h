/* store.h: the whole interface of storage/ (SQLite database, blob store, durable job queue).
 *
 * Nothing outside storage/ sees SQL or sqlite3 types: callers hold an opaque `struct store` so that
 * a PostgreSQL backend can be added behind the same functions (DESIGN.md section 7).  Read views
 * come back as the plain structs of store_types.h (one query, or a constant number, per call:
 * never one per row; JSON columns as text), which api/render.c turns into the API shapes of
 * DESIGN.md section 5; writes take plain C values.  No jansson, sqlite3 or libpq type here.
 *
 * Threads: every function is safe to call from any thread.  The SQLite backend keeps a small pool
 * of connections (WAL lets readers run beside the one writer); each write is one transaction. */
#ifndef TPV_STORE_H
#define TPV_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tpv_error.h"
#include "storage/store_types.h"

struct store;



/* Opens the database of a --database URL: "sqlite:PATH" (the database file, created if needed:
 * WAL, foreign keys, busy timeout, synchronous; an exclusive lock on its folder, one daemon per
 * database) or "postgresql://..." / "postgres://..." (libpq; TPV_EUNAVAILABLE, field
 * "database", while the server cannot be reached), and the blob store at opts->blob_dir (default: "blobs" beside a SQLite file),
 * whose stale upload temporaries go; migrates the schema.  `opts` may be NULL for the defaults.
 * On success *out owns the handle (free with store_close).  Errors: TPV_EINVAL (field
 * "database" or "blob_dir"), TPV_EIO, TPV_EINTERNAL, TPV_EPRECONDITION (newer schema, folder in
 * use). */
int store_open_url(struct store **out, const char *url, const struct store_options *opts,
                   struct tpv_err *err);

/* store_open_url("sqlite:<data_dir>/tpvd.db") with the blob store in <data_dir>/blobs. */
int store_open(struct store **out, const char *data_dir, struct tpv_err *err);
int store_open_with(struct store **out, const char *data_dir, const struct store_options *opts,
                    struct tpv_err *err);

/* "sqlite" or "postgresql" (logs, /metrics). */
const char *store_backend_name(const struct store *st);

/* Closes every connection and releases the lock; NULL is a no-op. */
void store_close(struct store *st);

/* Cheap liveness probe for /readyz: runs a trivial query.  0 or TPV_EUNAVAILABLE. */
int store_ping(struct store *st, struct tpv_err *err);

/* The schema version the database is at (PRAGMA user_version); -1 on error. */
int store_schema_version(struct store *st);

/* Fresh opaque id "<prefix>_<16 hex>" from the kernel's random source. */
void store_id_new(char out[STORE_ID_MAX], const char *prefix);

/* Seconds since the epoch, sub-second (the clock of leases and outbox times). */
double store_clock_now(void);

/* The current time, RFC 3339 UTC with milliseconds. */
void store_now_rfc3339(char out[STORE_TIME_MAX]);

/* Notifications, called after the transaction that caused them committed (from the writing
 * thread; keep them short).  `study_changed` gets the study whose version was bumped, or
 * version 0 when one of its jobs changed state without a bump (a JBR job ended: no candidate
 * or ranking moved, but a GET /v1/jobs/{jid}?wait held on that study must wake);
 * `job_queued` fires when a job became claimable.  Set before serving; not thread-safe. */
struct store_hooks {
    void (*study_changed)(void *ctx, const char *study_id, int64_t version);
    void (*job_queued)(void *ctx);
    void *ctx;
};
void store_set_hooks(struct store *st, const struct store_hooks *hooks);

/* The renderer of webhook event payloads (the daemon's: srv_webhook_render_event).  Set it right
 * after opening, before anything that may end a job (start-up recovery does); without one, a
 * write that owes a study's webhook an event fails (rolled back, nothing lost silently).  Not
 * thread-safe. */
void store_set_event_renderer(struct store *st, store_event_render_fn render);

/* ---- page tokens (keyset pagination on creation order) ---- */

/* Encodes the position after row `seq`; decodes a client's token (TPV_EINVAL when garbled). */
void store_page_token_encode(int64_t seq, char out[STORE_TOKEN_MAX]);
int store_page_token_decode(const char *token, int64_t *seq);

/* ---- idempotency keys ---- */


/* Forgets idempotency keys recorded more than `max_age_s` seconds ago: a retry after that is a
 * new request.  *removed gets how many went.  TPV_OK or a storage error. */
int store_idempotency_expire(struct store *st, double max_age_s, int *removed,
                             struct tpv_err *err);

/* Looks a key up.  TPV_OK with *out filled when it was seen with the same request hash,
 * TPV_ENOTFOUND when new, TPV_EPRECONDITION when it was used with a different body. */
int store_idem_lookup(struct store *st, const struct store_idem *idem, struct store_replay *out,
                      struct tpv_err *err);


/* ---- studies ---- */


/* Creates a study (and, when idem is not NULL, remembers `reply` under its key in the same
 * transaction).  The key is checked inside that transaction first: TPV_EEXIST with field
 * "Idempotency-Key" if a concurrent request took it (look it up again and replay),
 * TPV_EPRECONDITION if it was used with another body. */
int store_study_create(struct store *st, const struct store_study_new *s,
                       const struct store_idem *idem, const struct store_reply *reply,
                       struct tpv_err *err);

/* The study (*out owns its strings: store_study_free; zeroed on error).  TPV_ENOTFOUND. */
int store_study_get(struct store *st, const char *id, struct store_study *out,
                    struct tpv_err *err);

/* The study's version only (the ranking's ETag): one indexed read.  TPV_ENOTFOUND. */
int store_study_version(struct store *st, const char *id, int64_t *version, struct tpv_err *err);


/* What ranking and submission need to know about a study, without JSON (free with
 * store_study_info_free).  TPV_ENOTFOUND. */
int store_study_info(struct store *st, const char *id, struct store_study_info *out,
                     struct tpv_err *err);

/* A page of studies in creation order after `after_seq` (0 = from the start): at most `limit`
 * items, and no more than fit in about `max_bytes` bytes of JSON (0 = no byte bound; a page
 * always holds at least one item).  *page owns its items (store_study_page_free; zeroed on
 * error); page->next_seq is the position for the next page, 0 when this was the last.
 * TPV_EINVAL (field "limit") unless 1 <= limit < INT_MAX. */
int store_study_list(struct store *st, int64_t after_seq, int limit, uint64_t max_bytes,
                     struct store_study_page *page, struct tpv_err *err);

/* Deletes a study with its input sets, candidates, scores and jobs in one transaction (running
 * jobs stop at their next progress report, as for store_candidate_delete); when it has a webhook
 * a "study.deleted" event is appended, and its pending events keep the URL and secret so that
 * they are still delivered.  Holds on the study are woken.  TPV_ENOTFOUND (field "study_id"). */
int store_study_delete(struct store *st, const char *id, struct tpv_err *err);

/* Sets the study's fit or probe input set ("fit"/"probe") to a blob; n < 0 records null.
 * Bumps the version.  The same digest again is a no-op (TPV_OK, no bump).  TPV_ENOTFOUND for the
 * study; TPV_EPRECONDITION (field "inputs.<split>") for another digest once the study has
 * candidates: they were scored on the current inputs. */
int store_input_set(struct store *st, const char *study_id, const char *split, const char *digest,
                    int64_t n, struct tpv_err *err);

/* ---- candidates and jobs ---- */


/* Creates the candidate and its queued score job in one transaction, bumps the study version
 * and remembers `reply` under the idempotency key when idem is not NULL.  The key is checked
 * first in that transaction, so that a concurrent replay is never taken for a duplicate name.
 * Errors: TPV_ENOTFOUND (study), TPV_EEXIST with field "Idempotency-Key" (the key was taken
 * meanwhile: replay its answer) or field "name" (a candidate of that name exists),
 * TPV_EPRECONDITION (the key was used with another body), TPV_EBUSY when `max_queued` jobs are
 * already queued. */
int store_candidate_create(struct store *st, const struct store_candidate_new *c,
                           int64_t max_queued, const struct store_idem *idem,
                           const struct store_reply *reply, struct tpv_err *err);

/* The candidate with its scores in write order (*out: store_candidate_free; zeroed on error).
 * TPV_ENOTFOUND; `study_id` must match. */
int store_candidate_get(struct store *st, const char *study_id, const char *id,
                        struct store_candidate *out, struct tpv_err *err);

/* The stored source JSON of a candidate (malloc'd text in *source, *kind "model"/"jacobian"). */
int store_candidate_source(struct store *st, const char *study_id, const char *id, char **source,
                           char kind[16], struct tpv_err *err);

/* A page of a study's candidates with their scores (two queries whatever the page size), bounded
 * by `limit` items and about `max_bytes` bytes like store_study_list. */
int store_candidate_list(struct store *st, const char *study_id, int64_t after_seq, int limit,
                         uint64_t max_bytes, struct store_candidate_page *page,
                         struct tpv_err *err);

/* Queues a JBR job for a candidate ("params" JSON text).  TPV_ENOTFOUND, TPV_EBUSY. */
int store_jbr_create(struct store *st, const char *study_id, const char *candidate_id,
                     const char *job_id, const char *params, int64_t max_queued,
                     struct tpv_err *err);

/* Deletes a candidate with its scores and jobs in one transaction, bumps the study version and,
 * when the study has a webhook, appends a "candidate.deleted" event.  A running job's row goes
 * with it: its worker's next progress report (at most every half second) finds the lease lost
 * and stops.  The name is free again afterwards.  TPV_ENOTFOUND (field "candidate_id"). */
int store_candidate_delete(struct store *st, const char *study_id, const char *id,
                           struct tpv_err *err);

/* Gives a failed or canceled candidate a new queued score job `job_id` (attempts start at 0),
 * removes scores it may have, bumps the study version.  TPV_ENOTFOUND; TPV_EPRECONDITION (field
 * "state") for any other state; TPV_EBUSY when `max_queued` jobs are queued. */
int store_candidate_retry(struct store *st, const char *study_id, const char *id,
                          const char *job_id, int64_t max_queued, struct tpv_err *err);

/* The job (*out: store_job_free; zeroed on error).  TPV_ENOTFOUND. */
int store_job_get(struct store *st, const char *id, struct store_job *out, struct tpv_err *err);

/* Cancels a job: a queued job becomes canceled at once, a running one is asked to stop (its
 * worker sees it at the next progress report).  *out gets the job afterwards.  TPV_ENOTFOUND;
 * TPV_EPRECONDITION when it already succeeded or failed. */
int store_job_cancel(struct store *st, const char *id, struct store_job *out,
                     struct tpv_err *err);


/* Claims the oldest queued job for `owner` with a lease of `lease_s` seconds: state running,
 * attempts + 1, in one transaction (two workers never get the same job).  TPV_ENOTFOUND when
 * nothing is queued. */
int store_job_claim(struct store *st, const char *owner, double lease_s, struct store_claim *out,
                    struct tpv_err *err);

/* Records progress (0..1) and renews the lease; *cancel tells whether a cancel was asked.
 * TPV_EPRECONDITION when the job is no longer this owner's (the lease was lost). */
int store_job_progress(struct store *st, const char *id, const char *owner, double progress,
                       double lease_s, bool *cancel, struct tpv_err *err);


/* Finishes a job as succeeded: writes its scores (score jobs), the candidate's stability, the job
 * result (jbr), the state, and bumps the study version, all in one transaction.
 * TPV_EPRECONDITION when the job is no longer this owner's. */
int store_job_succeed(struct store *st, const char *id, const char *owner,
                      const struct store_score *scores, size_t nscores, const char *stability,
                      const char *result, struct tpv_err *err);

/* Finishes a job as "failed" or "canceled" with an error {code, message}. */
int store_job_finish(struct store *st, const char *id, const char *owner, const char *state,
                     const char *code, const char *message, struct tpv_err *err);

/* Gives a running job back to the queue (shutdown); the attempt is not counted. */
int store_job_release(struct store *st, const char *id, const char *owner, struct tpv_err *err);

/* Start-up recovery: jobs left running by a crash are re-queued, or failed with a clear error
 * when they already had `max_attempts` attempts.  Counts go to *requeued / *failed. */
int store_jobs_recover(struct store *st, int max_attempts, int *requeued, int *failed,
                       struct tpv_err *err);

/* Same for running jobs whose lease expired before `now` (seconds since the epoch; pass 0 for
 * the current time). */
int store_jobs_requeue_expired(struct store *st, int max_attempts, double now, int *requeued,
                               int *failed, struct tpv_err *err);

/* ---- ranking ---- */


/* Every candidate of a study with its score under (noise, split), scored ones first in
 * ascending value, in one query.  *rows is malloc'd; free with store_rank_rows_free. */
int store_rank_rows(struct store *st, const char *study_id, const char *noise, const char *split,
                    struct store_rank_row **rows, size_t *nrows, struct tpv_err *err);

/* ---- per-input contributions (struct store_contrib in store_types.h) ---- */

/* The contributions of the candidates ids[0..n) of a study under (noise, split), in ONE query
 * (no query per candidate).  *out gets n entries in the order of ids (malloc'd; free with
 * store_contribs_free); an id without a stored score gets values NULL.  TPV_EINVAL for more ids
 * than STORE_CONTRIB_IDS_MAX or an id that is not a plain identifier. */
#define STORE_CONTRIB_IDS_MAX 100000
int store_rank_contributions(struct store *st, const char *study_id, const char *noise,
                             const char *split, const char *const *ids, size_t n,
                             struct store_contrib **out, struct tpv_err *err);

/* ---- webhook outbox (storage/outbox.c) ---- */

/* Job ends ("job.succeeded|failed|canceled") and ranking changes ("ranking.changed") of studies
 * with a webhook_url are appended to the outbox in the transaction that caused them; a row stays
 * pending until it is delivered or has failed for good, so delivery survives restarts. */

/* Up to `limit` pending rows due at `now` (seconds since the epoch), oldest due first.  *items is
 * malloc'd (NULL when none); free with store_outbox_items_free. */
int store_outbox_due(struct store *st, double now, int limit, struct store_outbox_item **items,
                     size_t *n, struct tpv_err *err);

/* When the next pending row is due (seconds since the epoch); TPV_ENOTFOUND when none is. */
int store_outbox_next_due(struct store *st, double *at, struct tpv_err *err);

/* Outcome of one delivery attempt (each counts one attempt): delivered; to be retried at
 * `next_at` with the error kept; or failed for good. */
int store_outbox_delivered(struct store *st, int64_t seq, struct tpv_err *err);
int store_outbox_retry(struct store *st, int64_t seq, double next_at, const char *error,
                       struct tpv_err *err);
int store_outbox_fail(struct store *st, int64_t seq, const char *error, struct tpv_err *err);

/* Row counts: pending, delivered, failed. */
int store_outbox_stats(struct store *st, int64_t *pending, int64_t *delivered, int64_t *failed,
                       struct tpv_err *err);

/* ---- API tokens (storage/tokens.c): only SHA-256 hashes of the secrets are stored ---- */


/* Whether `name` is a usable token name (1..STORE_TOKEN_NAME_MAX bytes of [A-Za-z0-9._-]). */
bool store_token_name_valid(const char *name);

/* Records a token: `hash_hex` is the lowercase hex SHA-256 of the secret, `role` "read", "write"
 * or "admin".  Names are unique over every token ever created (revoked ones included), so that a
 * name always means one secret.  TPV_EINVAL (field "name"/"role"), TPV_EEXIST (field "name"). */
int store_token_create(struct store *st, const char *name, const char *role, const char *hash_hex,
                       struct tpv_err *err);

/* TPV_OK with *out filled, TPV_ENOTFOUND when no token has this hash. */
int store_token_find(struct store *st, const char *hash_hex, struct store_token *out,
                     struct tpv_err *err);

/* Every token, oldest first, never the hashes: *rows is malloc'd (free(); NULL when none). */
int store_token_list(struct store *st, struct store_token_row **rows, size_t *n,
                     struct tpv_err *err);

/* Revokes the token called `name` (it stays listed).  TPV_ENOTFOUND; TPV_EPRECONDITION when it was
 * already revoked. */
int store_token_revoke(struct store *st, const char *name, struct tpv_err *err);

/* Tokens ever created, revoked ones included (auth stays on once one existed). */
int store_token_count(struct store *st, int64_t *n, struct tpv_err *err);

/* ---- statistics for /metrics ---- */

int store_stats(struct store *st, struct store_stats *out, struct tpv_err *err);

/* Number of queued jobs (the queue depth). */
int store_jobs_queued(struct store *st, int64_t *n, struct tpv_err *err);

/* ---- content-addressed blob store: files in storage/blobs.h's store, rows in the backend ---- */

/* True for "sha256:" followed by 64 lowercase hex digits. */
bool store_digest_valid(const char *digest);

/* An upload in progress: bytes go to a temporary file under <data>/blobs/tmp while being hashed;
 * commit makes the blob appear atomically at <data>/blobs/sha256/ab/<hex>. */
struct store_blob_writer;

/* Starts an upload.  `expect` is the digest the body must hash to, or NULL; `max_size` bounds
 * the body.  On success *out owns the temporary file (store_blob_writer_free removes it unless
 * committed). */
int store_blob_writer_open(struct store *st, const char *expect, uint64_t max_size,
                           struct store_blob_writer **out, struct tpv_err *err);

/* Appends bytes.  TPV_ETOOLARGE past max_size, TPV_EIO/TPV_ENOSPACE when the disk refuses. */
int store_blob_writer_write(struct store_blob_writer *w, const void *data, size_t len,
                            struct tpv_err *err);

/* Finishes: fsync, verify against `expect` (TPV_EINVAL, field "digest", when it differs), rename
 * into place, fsync the folder and record the blob.  *existed tells whether the blob was already
 * there.  The writer must still be freed. */
int store_blob_writer_commit(struct store_blob_writer *w, char digest[STORE_DIGEST_MAX],
                             uint64_t *size, bool *existed, struct tpv_err *err);

/* Bytes received so far. */
uint64_t store_blob_writer_size(const struct store_blob_writer *w);

/* Removes the temporary file unless committed, frees; NULL is a no-op. */
void store_blob_writer_free(struct store_blob_writer *w);

/* Whether a blob is present (TPV_OK with *size) or not (TPV_ENOTFOUND); TPV_EINVAL for a
 * malformed digest. */
int store_blob_stat(struct store *st, const char *digest, uint64_t *size, struct tpv_err *err);

/* The local path of a blob (whether or not it exists).  TPV_EINVAL for a malformed digest. */
int store_blob_path(struct store *st, const char *digest, char *buf, size_t cap,
                    struct tpv_err *err);

/* Deletes a blob that nothing references.  TPV_EINVAL for a malformed digest, TPV_ENOTFOUND
 * when absent, TPV_EPRECONDITION (field "digest") naming a study, candidate or job that
 * references it.  The check and the removal happen under the write lock, so a reference
 * committed meanwhile is seen. */
int store_blob_delete(struct store *st, const char *digest, struct tpv_err *err);

/* Garbage collection: deletes up to `limit` blobs that no study, candidate or job references
 * and that have been unreferenced for `grace_s` seconds, counted from the later of their last
 * upload (a re-upload of a present blob counts) and the deletion that released them, so that an
 * upload followed by the POST that uses it is never raced.  *removed gets how many went. */
int store_blob_gc(struct store *st, double grace_s, int limit, int *removed,
                  struct tpv_err *err);

/* Number of temporaries left in blobs/tmp (tests check that aborted uploads leave none). */
int store_blob_temp_count(struct store *st);

#endif
