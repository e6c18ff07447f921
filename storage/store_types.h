/* store_types.h: the plain C structs that cross the storage interface (storage/DESIGN-phase2.md
 * section 2): what callers pass in (`*_new`, options, idempotency) and the rows, lists and pages
 * the backends give back.  No sqlite3, libpq or jansson type: JSON columns stay JSON *text*
 * (api/ parses them once when it renders).
 *
 * Ownership: a struct a backend fills owns its strings (malloc'd); one `*_free` per type frees
 * what it holds (not the struct itself, unless said) and accepts NULL and zeroed structs. */
#ifndef TPV_STORE_TYPES_H
#define TPV_STORE_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_ID_MAX 32         /* "st_" + 16 hex + NUL, with room */
#define STORE_DIGEST_MAX 72     /* "sha256:" + 64 hex + NUL */
#define STORE_TIME_MAX 32       /* "2026-01-02T03:04:05.678Z" */
#define STORE_TOKEN_MAX 40      /* opaque page token */
#define STORE_TOKEN_NAME_MAX 64 /* bytes of a token name, [A-Za-z0-9._-] */
#define STORE_KIND_MAX 16       /* job kind, job/candidate state, source kind */

struct store_options {
    int pool_size;         /* connections; 0 = 8 */
    bool synchronous_full; /* SQLite: PRAGMA synchronous=FULL (else NORMAL); the default is FULL */
    int busy_timeout_ms;   /* 0 = 5000 */
    /* Open beside a running daemon (the `tpvd token` commands): no folder lock, no clean-up of
     * upload temporaries; the handle is for token functions and reads.  WAL makes the two
     * processes' transactions safe. */
    bool shared;
    /* The blob folder (--blob-dir); NULL = "blobs" beside a SQLite database file.  A
     * PostgreSQL database needs one (every node shares it). */
    const char *blob_dir;
    /* PostgreSQL: how long a study version may be served from memory at most, when no
     * notification says it moved (0 = 1000 ms; see store_pg.c). */
    int version_cache_ms;
};

/* ---- idempotency ---- */

/* A request that carries an Idempotency-Key.  `scope` binds the key to a route ("POST /v1/...");
 * `request_hash` is a digest of the body: a retry with another body is refused. */
struct store_idem {
    const char *scope;
    const char *key;
    const char *request_hash;
};

/* The response stored for a replayed request; free with store_replay_free. */
struct store_replay {
    int status;
    char *body;
    char *location; /* may be NULL */
};
void store_replay_free(struct store_replay *r);

/* The response to remember with a write (stored in the write's transaction). */
struct store_reply {
    int status;
    const char *body;
    const char *location; /* may be NULL */
};

/* ---- studies ---- */

struct store_study_new {
    const char *id;
    const char *name;
    const char *description;
    const char *noise_models;   /* JSON array text (canonical, from tpv_noise_to_json) */
    const char *rank_by;
    const char *webhook_url;    /* may be NULL */
    const char *metadata;       /* JSON object text */
    const char *created_at;
    const char *webhook_secret; /* signs webhook deliveries; stored only with a webhook_url */
};

/* One input set of a study: digest "" when unset (JSON null); n < 0 when its n is null. */
struct store_input {
    char digest[STORE_DIGEST_MAX];
    int64_t n;
};

/* A study row (the API's study shape, JSON columns as text). */
struct store_study {
    int64_t seq; /* creation order: the page position */
    char id[STORE_ID_MAX];
    char *name;
    char *description;
    char *noise_models; /* JSON array text */
    char *rank_by;
    char *webhook_url;  /* NULL when none */
    char *metadata;     /* JSON object text */
    int64_t version;
    char created_at[STORE_TIME_MAX];
    struct store_input fit, probe;
    bool has_probe_dumps;
};
void store_study_free(struct store_study *s); /* the strings */

/* What ranking and submission need to know about a study.  Free with store_study_info_free. */
struct store_study_info {
    char *noise_models; /* JSON text */
    char *rank_by;
    char fit_digest[STORE_DIGEST_MAX];   /* "" when unset */
    char probe_digest[STORE_DIGEST_MAX]; /* "" when unset */
    bool has_probe_dumps; /* some candidate brought a probe Jacobian */
    int64_t version;
};
void store_study_info_free(struct store_study_info *info);

/* ---- candidates ---- */

struct store_candidate_new {
    const char *id;
    const char *study_id;
    const char *name;
    const char *metadata;    /* JSON object text */
    const char *source_kind; /* "model" | "jacobian" */
    const char *source;      /* JSON text: everything the worker needs to find the files */
    bool has_train_loss;
    double train_loss;
    bool has_epoch;
    double epoch;
    const char *run;         /* metadata.run, or NULL */
    bool has_probe_dump;
    const char *job_id;
    const char *created_at;
};

/* A score as read back (the candidate shape's "scores" items).  NaN value/stderr = null. */
struct store_score_row {
    char *noise;
    char *kind;
    char *split;
    char *estimator;
    char *details; /* JSON object text */
    double value;
    double stderr_value;
    double wall_seconds;
    uint64_t samples;
    uint64_t seed;
    double stderr_inputs; /* NaN: none (written before contributions were stored, or absent) */
};

/* One of a candidate's JBR jobs as its candidate shows it (the candidate shape's "jbr_jobs"):
 * enough to find the job (GET /v1/jobs/{id}) and tell whether it is worth reading. */
struct store_job_ref {
    char id[STORE_ID_MAX];
    char state[STORE_KIND_MAX];
    char created_at[STORE_TIME_MAX];
};

/* A candidate row with its scores in write order and its JBR jobs, newest first. */
struct store_candidate {
    int64_t seq;
    char id[STORE_ID_MAX];
    char study_id[STORE_ID_MAX];
    char job_id[STORE_ID_MAX];
    char *name;
    char *metadata;     /* JSON object text */
    char *source_kind;  /* "model" | "jacobian" | "onnx" */
    char *state;
    char *stability;    /* JSON text, NULL when none */
    double progress;    /* of its current job; 0 when none */
    char *error_code;   /* NULL when no error */
    char *error_message;
    char created_at[STORE_TIME_MAX];
    char *metrics;      /* JSON object text of its labelled metrics, NULL when it has none */
    struct store_score_row *scores; /* malloc'd array */
    size_t nscores;
    struct store_job_ref *jbr_jobs; /* malloc'd array, newest first (never its score job) */
    size_t njbr_jobs;
};
void store_candidate_free(struct store_candidate *c); /* the strings, scores and JBR jobs */

/* ---- jobs ---- */

/* A job row (the API's job shape).  Times "" when null. */
struct store_job {
    char id[STORE_ID_MAX];
    char kind[STORE_KIND_MAX]; /* "score" | "jbr" */
    char study_id[STORE_ID_MAX];
    char candidate_id[STORE_ID_MAX];
    char state[STORE_KIND_MAX];
    double progress;
    int attempts;
    bool cancel_requested;
    char *error_code;    /* NULL when no error */
    char *error_message;
    char *result;        /* JSON text, NULL when none */
    char created_at[STORE_TIME_MAX];
    char started_at[STORE_TIME_MAX];
    char finished_at[STORE_TIME_MAX];
};
void store_job_free(struct store_job *j); /* the strings */

/* A claimed job and what the worker needs to run it; free with store_claim_free. */
struct store_claim {
    char id[STORE_ID_MAX];
    char kind[STORE_KIND_MAX]; /* "score" | "jbr" */
    char study_id[STORE_ID_MAX];
    char candidate_id[STORE_ID_MAX];
    int attempts;        /* including this one */
    char *source;        /* candidate source JSON */
    char *noise_models;  /* study noise models JSON */
    char *params;        /* job params JSON or NULL */
};
void store_claim_free(struct store_claim *c);

/* A score to write with a job's success (store_job_succeed).  NaN value/stderr store null. */
struct store_score {
    const char *noise;
    const char *kind;
    const char *split; /* "fit" | "probe" */
    double value;
    double stderr_value;
    const char *estimator;
    uint64_t samples;
    uint64_t seed;
    double wall_seconds;
    const char *details; /* JSON text */
    /* Per-input contributions (DESIGN.md section 5), borrowed; NULL/0 = none (stored NULL) */
    const double *per_input;
    size_t n_inputs;
    double stderr_inputs; /* NaN = none */
};

/* ---- pages (keyset pagination on creation order) ---- */

/* Items plus the position of the next page (0 = this was the last).  Free with *_page_free. */
struct store_study_page {
    struct store_study *items;
    size_t n;
    int64_t next_seq;
};
void store_study_page_free(struct store_study_page *p);

struct store_candidate_page {
    struct store_candidate *items;
    size_t n;
    int64_t next_seq;
};
void store_candidate_page_free(struct store_candidate_page *p);

/* ---- candidate metrics and the agreement report (storage/metrics.h) ---- */

#define STORE_METRICS_MAX 64     /* keys a candidate may hold, after a merge */
#define STORE_METRIC_NAME_MAX 64 /* bytes of a key */
#define STORE_NOISE_NAME_MAX 64  /* = TPV_NOISE_NAME_MAX (checked where both are seen) */

/* One score of a candidate (value NaN when it is null). */
struct store_agree_score {
    char noise[STORE_NOISE_NAME_MAX];
    char split[8]; /* "fit" | "probe" */
    double value;
};

/* A candidate: its asked metric (has_metric false when it lacks it) and its scores
 * scores[first .. first + nscores). */
struct store_agree_cand {
    char id[STORE_ID_MAX];
    bool has_metric;
    double metric;
    size_t first, nscores;
};

/* Everything the agreement of one metric needs, from one query: the study's noise models (JSON
 * text, the order items follow) and version, every candidate in creation order with its scores.
 * Owns its arrays; free with store_agree_rows_free (NULL-safe, and safe on a zeroed struct). */
struct store_agree_rows {
    char *noise_models;
    int64_t version;
    struct store_agree_cand *cands;
    size_t ncands;
    struct store_agree_score *scores;
    size_t nscores;
};
void store_agree_rows_free(struct store_agree_rows *rows);

/* ---- ranking ---- */

struct store_rank_row {
    char id[STORE_ID_MAX];
    char *name;
    char *metadata; /* JSON text */
    char state[STORE_KIND_MAX];
    bool has_train_loss, has_epoch, has_value;
    double train_loss, epoch, value, stderr_value;
    bool has_stderr_inputs; /* false for scores written before contributions were stored */
    double stderr_inputs;
    char *run; /* NULL when absent */
    bool nonlinear; /* the score's details say nonlinear (the empirical check, core/empirical.h) */
};
void store_rank_rows_free(struct store_rank_row *rows, size_t n); /* and the array */

/* One candidate's stored per-input contributions under a (noise, split) (DESIGN.md section 5):
 * values[n] (malloc'd), or values NULL / n 0 when the score has none (written before they were
 * stored, or absent). */
struct store_contrib {
    char id[STORE_ID_MAX];
    double *values;
    size_t n;
};
void store_contribs_free(struct store_contrib *c, size_t n); /* and the array */

/* The stored form of contributions, little-endian float64 whatever the host's byte order (both
 * backends): enc gets 8 n bytes; decode reads n values from 8 n bytes. */
void store_contrib_encode(const double *v, size_t n, unsigned char *enc);
void store_contrib_decode(const unsigned char *enc, size_t n, double *v);

/* ids[0..n) as the text of a JSON array of strings, for a query that takes the ids of a page or
 * ranking in one parameter (SQLite json_each, PostgreSQL json_array_elements_text).  malloc'd;
 * NULL with TPV_EINVAL (field "candidate_id") for an id that is not a plain identifier
 * ([A-Za-z0-9_-], shorter than STORE_ID_MAX) or TPV_ENOMEM. */
struct tpv_err;
char *store_ids_json(const char *const *ids, size_t n, struct tpv_err *err);

/* ---- webhook outbox ---- */

/* An event appended to the outbox in the transaction that caused it (DESIGN-phase2.md section
 * 3): data, not an API shape; server/webhook.c renders the payload.  Empty strings and
 * version 0 are absent from the payload. */
struct store_event {
    char event[32]; /* "job.succeeded", "ranking.changed", "candidate.deleted", ... */
    char study_id[STORE_ID_MAX];
    char candidate_id[STORE_ID_MAX];
    char job_id[STORE_ID_MAX];
    char kind[STORE_KIND_MAX];
    char state[STORE_KIND_MAX];
    int64_t version;
    char at[STORE_TIME_MAX];
};

/* Renders an event's payload: malloc'd JSON object text with "id" = event_id (the id receivers
 * dedup on), or NULL when out of memory.  The daemon's is srv_webhook_render_event
 * (server/webhook.c); the text is stored, so every attempt sends the same bytes. */
typedef char *(*store_event_render_fn)(const struct store_event *ev, const char *event_id);

struct store_outbox_item {
    int64_t seq;          /* row number; the event id ("ev_...") is the payload's "id" */
    char study_id[STORE_ID_MAX];
    char event[32];
    char *payload;        /* JSON object text */
    char *url;            /* the study's webhook_url */
    char *secret;         /* the study's signing secret (never log it) */
    int attempts;         /* made so far */
};
void store_outbox_items_free(struct store_outbox_item *items, size_t n); /* and the array */

/* ---- API tokens: only SHA-256 hashes of the secrets are stored ---- */

/* A token found by the hash of its secret (one indexed read). */
struct store_token {
    char hash[65];                      /* as stored: the caller compares it in constant time */
    char role[8];
    char name[STORE_TOKEN_NAME_MAX + 1];
    bool revoked;
};

/* A token as listed (never the hash).  revoked_at "" when not revoked. */
struct store_token_row {
    char name[STORE_TOKEN_NAME_MAX + 1];
    char role[8];
    char created_at[STORE_TIME_MAX];
    char revoked_at[STORE_TIME_MAX];
};

/* ---- statistics for /metrics ---- */

struct store_stats {
    int64_t jobs_queued, jobs_running, jobs_succeeded, jobs_failed, jobs_canceled;
    int64_t blobs, blob_bytes;
    int64_t studies, candidates;
};

/* ---- blob rows (the files themselves are storage/blobs.h's) ---- */

/* Removes a blob's file inside the backend's transaction that deletes its row, so that no
 * reference commits between the check and the unlink.  TPV_OK or an error that rolls back. */
struct tpv_err;
typedef int (*store_blob_remove_fn)(void *ctx, const char *digest, struct tpv_err *err);

#endif
