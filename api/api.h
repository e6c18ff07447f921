/* api.h: the whole interface of api/: routes, request and response values, JSON error replies,
 * streamed request bodies, long-poll holds, metrics and the OpenAPI document.
 *
 * api/ knows nothing of libmicrohttpd: server/http.c turns each HTTP request into a struct
 * api_request, calls api_dispatch and sends the struct api_response back.  Handlers never format
 * error JSON by hand: they call api_reply_error*() and return. */
#ifndef TPV_API_H
#define TPV_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/score.h"
#include "core/tpv_error.h"

struct store;
struct api_metrics;
struct api_cache;
struct api_auth;

/* Roles of bearer tokens, each implying the ones before it; API_ROLE_OPEN marks routes that need
 * no token at all (/healthz, /readyz, /openapi.json). */
enum api_role { API_ROLE_OPEN = 0, API_ROLE_READ, API_ROLE_WRITE, API_ROLE_ADMIN };

/* Limits from the config table that handlers enforce. */
struct api_limits {
    uint64_t max_body;       /* JSON bodies */
    uint64_t max_blob;       /* streamed blob uploads */
    uint64_t max_job_memory; /* a job whose estimate is larger is refused with 507 */
    double job_flop_budget;  /* auto estimator budget, as the workers use it */
    int64_t max_queued_jobs; /* beyond: 429 with Retry-After */
    int max_wait_s;          /* cap of the ranking's wait= */
    int max_page_size;       /* cap of page_size */
    uint64_t max_page_bytes; /* a list page stops once its items take this much; 0 = no bound */
    uint64_t max_metadata_bytes; /* serialised metadata of one study or candidate; 0 = no bound */
};

/* What handlers may use; owned by the server, read-only for the api. */
struct api_env {
    struct store *store;
    const char *version; /* tpvd version string */
    struct api_auth *auth; /* access control; NULL: none (unit tests) */
    struct api_limits limits;
    struct api_metrics *metrics;          /* may be NULL */
    struct api_cache *cache;              /* rendered rankings; may be NULL */
    bool (*workers_alive)(void *ctx);     /* may be NULL: no workers to check */
    void *workers_ctx;
    /* Fetches the blob at `url` into the store (server/fetch.c), blocking for at most the
     * configured timeouts; `expect` is a digest the body must hash to, or NULL.  Writes
     * "sha256:<hex>" into digest (cap >= 72).  Errors name `field`: TPV_EINVAL (bad URL),
     * TPV_EPERM (host not allowed), TPV_ETOOLARGE, TPV_EUNAVAILABLE (the fetch failed).  NULL:
     * URL references are refused with 403. */
    int (*fetch)(void *ctx, const char *url, const char *expect, const char *field, char *digest,
                 size_t cap, struct tpv_err *err);
    void *fetch_ctx;
};

/* Path parameters captured by a route pattern ("{sid}" segments), in order. */
#define API_MAX_PARAMS 4
#define API_PARAM_MAX 128

struct api_stream_ops;

struct api_request {
    const char *method;
    const char *path;
    const char *request_id;
    const char *body; /* NUL-terminated copy of the request body (may be empty), or NULL */
    size_t body_len;
    /* Accessors into the transport's request; return NULL when absent. */
    const char *(*header)(void *transport, const char *name);
    const char *(*query)(void *transport, const char *name);
    /* Calls fn with the name of every query parameter, in order, until it returns false; NULL
     * when the transport cannot list them (unit tests: then nothing is refused). */
    void (*query_each)(void *transport, bool (*fn)(void *ctx, const char *name), void *ctx);
    void *transport;
    /* Filled by api_dispatch from the matched route. */
    int nparams;
    char params[API_MAX_PARAMS][API_PARAM_MAX];
    int route; /* index of the matched route (api_route_*), -1 when none matched */
    /* Streamed body of a streaming route: state opened by api_stream_begin. */
    void *stream;
    const struct api_stream_ops *stream_ops;
    /* Set by the transport when a held request (see api_response.hold_seconds) ran out of time:
     * the handler must answer now. */
    bool hold_expired;
};

#define API_MAX_HEADERS 8
struct api_response {
    int status;
    char *body; /* malloc'd, owned by the response */
    size_t body_len;
    const char *content_type; /* static string */
    int nheaders;
    struct {
        const char *name; /* static string */
        char *value;      /* malloc'd */
    } headers[API_MAX_HEADERS];
    /* Long-poll: when hold_seconds > 0 the handler sent nothing; the transport holds the request
     * without blocking a thread and dispatches it again when study `hold_study` changes (the
     * store's study_changed hook) or hold_seconds pass (then with req->hold_expired set). */
    int hold_seconds;
    char hold_study[API_PARAM_MAX];
    /* Set when a header could not be added: the reply the handler built is not the one it meant
     * (an ETag, Location or Retry-After missing), so the router answers 500 instead. */
    bool incomplete;
};

/* True when dispatching this buffered request may block on a remote server (a blob given by URL
 * is fetched during the request): the transport then runs it off its own threads. */
bool api_request_may_fetch(const struct api_env *env, const struct api_request *req);

/* Routes the request and runs its handler; always leaves a complete response in *resp
 * (404/405 JSON errors for unknown routes and methods) or a hold.  resp must be zero-initialised;
 * release it with api_response_free. */
void api_dispatch(const struct api_env *env, struct api_request *req, struct api_response *resp);

/* ---- streamed request bodies ---- */

/* Whether METHOD PATH is a route whose body streams to a sink (blob uploads) instead of being
 * buffered; when it is, opens the sink into req->stream and returns true.  A refusal (bad digest,
 * no store) leaves an error in *resp (status != 0): the transport drops the body and sends it. */
bool api_stream_begin(const struct api_env *env, struct api_request *req,
                      struct api_response *resp);

/* Hands a chunk of the body to the sink.  On failure (too large, disk full) fills *resp with the
 * error and returns its code; the transport drops the rest of the body and sends *resp. */
int api_stream_write(struct api_request *req, const void *data, size_t len,
                     struct api_response *resp);

/* Releases the sink (an upload not committed by its handler is discarded).  Safe to call twice
 * and on requests without a stream. */
void api_stream_end(struct api_request *req);

/* ---- responses ---- */

/* Releases what a response owns; the struct itself is the caller's.  NULL is a no-op. */
void api_response_free(struct api_response *resp);

/* JSON text of `json` exactly as json_dumps(json, flags) writes it, except that every real has
 * the shortest spelling that strtod reads back exactly ("0.1", not "0.10000000000000001").
 * Every JSON response goes through it.  Returns malloc'd text (free), NULL when out of memory. */
char *api_json_dumps(const json_t *json, size_t flags);

/* Replies with `body` serialised as JSON (compact, api_json_dumps).  Steals the reference to
 * body. */
void api_reply_json(struct api_response *resp, int status, json_t *body);

/* Replies with a status and no body (304, HEAD answers). */
void api_reply_empty(struct api_response *resp, int status);

/* Replies with the error shape of DESIGN.md section 5:
 * {"error":{"code":<wire name>,"message":...,"details":{"field":...}}} and the catalogue's status. */
void api_reply_error(struct api_response *resp, const struct tpv_err *err);
void api_reply_errorf(struct api_response *resp, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Adds a response header (value copied).  Returns 0 or TPV_ENOMEM/TPV_EINVAL when full. */
int api_response_add_header(struct api_response *resp, const char *name, const char *value);

/* ---- access control (api/auth.c; DESIGN.md section 6) ---- */

/* Bearer tokens: "tpv_" + 43 base64url characters (32 random bytes). */
#define API_TOKEN_MAX 64

/* Token checks against the store.  `open_without_tokens`: while no token was ever created, every
 * request is let through (the daemon allows that on a loopback bind or with --insecure-no-auth);
 * as soon as one exists (created by `tpvd token create` while running, noticed within a second)
 * every non-open route needs one.  Found tokens are cached for at most a second, so a revocation
 * takes effect within a second.  *out owns the checker (api_auth_free; NULL is a no-op). */
int api_auth_new(struct api_auth **out, struct store *st, bool open_without_tokens);
void api_auth_free(struct api_auth *a);

/* Whether open access is in force right now (no token exists and open access is allowed). */
bool api_auth_is_open(struct api_auth *a);

/* Checks the Authorization header of METHOD PATH against the route's role (env->auth NULL lets
 * everything through).  Returns true when the request may proceed; otherwise fills *resp with
 * 401 unauthenticated (with WWW-Authenticate: Bearer), 403 permission_denied, or 503 unavailable
 * when the store cannot tell (the database is down), and returns
 * false.  Costs at most one indexed read; meant for the transport's first look at a request,
 * before any body is read. */
bool api_authorize(const struct api_env *env, struct api_request *req, struct api_response *resp);

/* A fresh random token (from getrandom) into out; TPV_OK or TPV_EIO. */
int api_token_generate(char out[API_TOKEN_MAX]);

/* Lowercase hex SHA-256 of a token (what the store keeps).  TPV_OK, or TPV_EINTERNAL when
 * libcrypto fails (hex is then unset). */
int api_token_hash(const char *token, char hex[65]);

/* The role a route needs (API_ROLE_READ for unknown paths: they are answered only to callers
 * that may read). */
enum api_role api_route_role(struct api_request *req);
/* The same for a route of the table given by method and pattern ("GET", "/v1/jobs/{jid}"). */
enum api_role api_route_role_of(const char *method, const char *pattern);

/* "read" / "write" / "admin" and back; api_role_parse returns -1 for anything else. */
const char *api_role_name(enum api_role role);
int api_role_parse(const char *name);

/* ---- route table (for metrics labels, the OpenAPI test) ---- */

size_t api_route_count(void);
const char *api_route_method(size_t i);
const char *api_route_pattern(size_t i);

/* The OpenAPI 3.1 document of every route (new reference). */
json_t *api_openapi_document(void);

/* ---- candidate files (api/candidate_files.c; shared by submission and the worker) ---- */

/* A candidate's parsed source (core/job.h) resolved to local files for the core.  Owns every
 * path the embedded tpv_candidate_files points to; the layout names stay the source's. */
#define API_CAND_MAX_PATHS 40
struct api_cand_files {
    struct tpv_candidate_files files;
    json_t *spec;   /* the model spec (loaded from its blob when given as a digest) */
    struct store *store;
    char *paths[API_CAND_MAX_PATHS]; /* owned path strings */
    const char *fields[API_CAND_MAX_PATHS]; /* the request field each path came from */
    int npaths;
};

/* Resolves src (from tpv_job_parse; it must outlive cf) into files.  A spec given as a digest is
 * read from its blob (at most max_spec bytes; duplicate keys refused).  Errors name the field; on
 * any return release with api_cand_files_free. */
struct tpv_job_source;
int api_cand_files_load(struct api_cand_files *cf, struct store *st,
                        const struct tpv_job_source *src, uint64_t max_spec, struct tpv_err *err);
void api_cand_files_free(struct api_cand_files *cf);

/* Rewrites a core error about one of cf's files for a client: local paths become the request
 * field they came from ("jacobian.fit"), which also becomes err->field unless the core already
 * named a noise model. */
void api_cand_files_explain(const struct api_cand_files *cf, struct tpv_err *err);

/* ---- response cache (api/cache.c) ---- */

#define API_ETAG_MAX 64

/* A cache of `entries` rendered bodies of at most max_body bytes each.  Thread-safe. */
int api_cache_new(struct api_cache **out, size_t entries, uint64_t max_body);
void api_cache_free(struct api_cache *c); /* NULL is a no-op */

/* One representation of a cached rendering: its ETag, and when asked for, a malloc'd copy of its
 * bytes (NUL-terminated when not gzip). */
struct api_cached {
    char etag[API_ETAG_MAX];
    char *body;
    size_t len;
    bool gzip; /* the bytes are the gzip coding of the rendering */
};

/* Bodies shorter than this go out as they are: below a packet gzip saves nothing. */
#define API_GZIP_MIN 1024

/* The rendering cached for `key` at exactly `version`: true with the representation a client
 * takes (gzip when accept_gzip and the body is at least API_GZIP_MIN bytes; the gzip coding is
 * made on its first use and kept with the entry) and, when want_body, its bytes in out->body. */
bool api_cache_get(struct api_cache *c, const char *key, int64_t version, bool accept_gzip,
                   bool want_body, struct api_cached *out);

/* Remembers a rendering (copied); keeps a newer version already cached for the key. */
void api_cache_put(struct api_cache *c, const char *key, int64_t version, const char *etag,
                   const char *body, size_t len);

/* ---- content coding (api/encoding.c) ---- */

/* Whether the request's Accept-Encoding takes gzip (named with a non-zero weight, or "*"). */
bool api_accepts_gzip(const struct api_request *req);

/* The gzip coding (RFC 1952) of body into a malloc'd *out.  TPV_ENOMEM when zlib fails. */
int api_gzip(const char *body, size_t len, char **out, size_t *out_len);

/* A variant's ETag: the rendering's tag with `mark` before its closing quote (a different strong
 * tag per representation: CSV 'c', gzip 'z'). */
void api_etag_variant(char *etag, size_t cap, char mark);

/* The ETag of a representation's gzip coding: api_etag_variant with 'z'. */
void api_etag_for_gzip(char *etag, size_t cap);

/* ---- metrics (api/metrics.c) ---- */

/* Counters and histograms for /metrics.  Updated lock-free from any thread. */
int api_metrics_new(struct api_metrics **out);
void api_metrics_free(struct api_metrics *m); /* NULL is a no-op */

/* One finished request: route index (-1 = unmatched), status, seconds from arrival to reply. */
void api_metrics_request(struct api_metrics *m, int route, int status, double seconds);

/* One finished job: kind "score"|"jbr", final state, seconds it ran. */
void api_metrics_job(struct api_metrics *m, const char *kind, const char *state, double seconds);

/* Bytes received by blob uploads (committed ones). */
void api_metrics_blob_bytes(struct api_metrics *m, uint64_t bytes);

/* Workers' liveness for /readyz: the number of worker threads in their loop. */
void api_metrics_workers(struct api_metrics *m, int alive, int total);

#endif
