/* handlers.h: request handlers and the helpers they share, internal to api/.  Each handler fills
 * *resp, success or error (errors only through api_reply_error*). */
#ifndef TPV_API_HANDLERS_H
#define TPV_API_HANDLERS_H

#include "api/api.h"

typedef void (*api_handler_fn)(const struct api_env *env, struct api_request *req,
                               struct api_response *resp);

/* A streaming route's body sink (see api_stream_begin). */
struct api_stream_ops {
    /* Opens the sink into req->stream; on refusal fills resp and returns its error code. */
    int (*open)(const struct api_env *env, struct api_request *req, struct api_response *resp);
    int (*write)(void *stream, const void *data, size_t len, struct tpv_err *err);
    void (*close)(void *stream);
};

void api_handle_healthz(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_readyz(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_metrics(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_openapi(const struct api_env *env, struct api_request *req, struct api_response *resp);

extern const struct api_stream_ops api_blob_stream;
void api_handle_blob_put(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_blob_head(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_blob_delete(const struct api_env *env, struct api_request *req, struct api_response *resp);

void api_handle_study_create(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_study_list(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_study_get(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_study_delete(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_inputs_put(const struct api_env *env, struct api_request *req, struct api_response *resp);

void api_handle_candidate_create(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_candidate_list(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_candidate_get(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_candidate_delete(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_candidate_retry(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_jbr_create(const struct api_env *env, struct api_request *req, struct api_response *resp);

void api_handle_job_get(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_job_cancel(const struct api_env *env, struct api_request *req, struct api_response *resp);

void api_handle_ranking(const struct api_env *env, struct api_request *req, struct api_response *resp);

/* api/agreement.c */
void api_handle_metrics_put(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_agreement(const struct api_env *env, struct api_request *req, struct api_response *resp);

void api_handle_token_create(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_token_list(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_token_revoke(const struct api_env *env, struct api_request *req, struct api_response *resp);

/* The dashboard (api/ui.c): /ui/assets/<name> its files, every other path under /ui/ its page. */
void api_handle_ui(const struct api_env *env, struct api_request *req, struct api_response *resp);

/* ---- helpers (api/util.c, except where a comment names api/studies.c) ---- */

/* Header / query value, NULL when absent or when the request has no transport (unit tests). */
const char *api_header(const struct api_request *req, const char *name);
const char *api_query(const struct api_request *req, const char *name);

/* wait= in whole seconds, capped by --max-wait (60 when unset); 0 when absent.  Replies 400
 * naming it and returns false when it is not a whole non-negative number. */
bool api_wait_param(const struct api_env *env, const struct api_request *req, int *out,
                    struct api_response *resp);

/* Parses the body as a JSON object into *out (new reference).  Replies 400 (field "body", with the
 * parser's line and column) and returns false when it is not one. */
bool api_body_object(const struct api_request *req, struct api_response *resp, json_t **out);

/* Refuses keys of obj not in the NULL-terminated `allowed` list: 400 naming "<prefix><key>". */
bool api_check_keys(const json_t *obj, const char *const *allowed, const char *prefix,
                    struct api_response *resp);

/* page_size (1..max_page_size, default 50) and page_token of a list request; replies 400. */
bool api_page_params(const struct api_env *env, const struct api_request *req,
                     struct api_response *resp, int64_t *after, int *limit);

/* A store error to the client, store failures logged with the request id. */
void api_reply_store_error(const struct api_request *req, struct api_response *resp,
                           const struct tpv_err *err);

/* Hex SHA-256 of the body (idempotency request hash); out has 65 bytes.  TPV_OK, or
 * TPV_EINTERNAL when libcrypto fails (out is then "", never a partial hash). */
int api_body_hash(const struct api_request *req, char out[65], struct tpv_err *err);

/* Refuses metadata whose compact JSON is larger than --max-metadata-bytes: 413 naming `field`.
 * Counts without building the text and stops at the limit. */
bool api_check_metadata_size(const struct api_env *env, const json_t *meta, const char *field,
                             struct api_response *resp);

/* Replaces every occurrence of the server path `path` in err's message by `shown` (what the
 * client knows the file as, e.g. "blob sha256:..."): no server path reaches a client. */
void api_err_hide_path(struct tpv_err *err, const char *path, const char *shown);

/* Whether an id path parameter looks like one of ours (short, [A-Za-z0-9_-]). */
bool api_id_valid(const char *id);

/* (api/studies.c) A string member with a length cap (names also refuse control characters):
 * replies 400 naming `field` and returns false when it is missing (if required), not a string or
 * too long. */
bool api_get_string(const json_t *obj, const char *key, const char *field, bool required,
                    size_t max, const char **out, struct api_response *resp);

/* Idempotency-Key handling of the POST handlers (api/studies.c): returns true when the request
 * was answered (a replay or an error); otherwise *use tells whether *idem (scope, key, hash) is to
 * be stored with the write. */
struct store_idem;
bool api_idem_begin(const struct api_env *env, struct api_request *req, struct api_response *resp,
                    const char *scope, char hash[65], struct store_idem *idem, bool *use);

/* After a write failed because a concurrent request took the key: answers as that one did. */
void api_idem_race(const struct api_env *env, struct api_request *req, struct api_response *resp,
                   const struct store_idem *idem, const struct tpv_err *werr);

/* ---- URL blob references and webhooks (api/refs.c) ---- */

/* Where a request body carries blob references that may be {"url":"http(s)://...",
 * "digest"?:"sha256:..."} instead of a digest. */
enum api_ref_site {
    API_REFS_INPUTS,    /* {"blob": ref} (or the body itself {"url": ...}) */
    API_REFS_CANDIDATE, /* model.spec, model.weights, jacobian.fit, jacobian.probe, weights */
    API_REFS_STUDY,     /* noise_models[i].variances, noise_models[i].mask */
};

/* Fetches every URL reference of `body` (through env->fetch, synchronously) and replaces it by
 * the digest of the stored blob, so that the handler then sees digests only.  Replies (400 bad
 * reference, 403 host not allowed, 413, 503 fetch failed) and returns false on failure. */
bool api_resolve_refs(const struct api_env *env, struct api_request *req, json_t *body,
                      enum api_ref_site site, struct api_response *resp);

/* Whether `url` is an absolute http:// or https:// URL with a host and no spaces or control
 * characters. */
bool api_url_valid(const char *url);

/* A fresh webhook signing secret "whsec_" + 64 hex digits from the kernel's random source. */
#define API_WEBHOOK_SECRET_MAX 72
int api_webhook_secret_new(char out[API_WEBHOOK_SECRET_MAX]);

/* (api/studies.c) {sid} (params[0]) is well-formed, else a 404 was sent. */
bool api_study_param(const struct api_request *req, struct api_response *resp);

#endif
