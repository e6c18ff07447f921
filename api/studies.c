/* studies.c: POST/GET /v1/studies, GET /v1/studies/{sid}, PUT /v1/studies/{sid}/inputs/{split}
 * (DESIGN.md section 5).  Noise models are validated by the core's parser (core/noise.h). */
#include "api/handlers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json_alloc.h"
#include "core/noise.h"
#include "core/tensor.h"
#include "api/render.h"
#include "storage/store.h"

#define NAME_MAX_BYTES 128
#define DESCRIPTION_MAX_BYTES 4096
#define URL_MAX_BYTES 2048

/* A required (or optional) string member with a length cap and no control characters. */
bool api_get_string(const json_t *obj, const char *key, const char *field, bool required,
                    size_t max, const char **out, struct api_response *resp)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required) {
            api_reply_errorf(resp, TPV_EINVAL, field, "%s is required", field);
            return false;
        }
        return true;
    }
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (!s) {
        api_reply_errorf(resp, TPV_EINVAL, field, "%s must be a string", field);
        return false;
    }
    if ((required && len == 0) || len > max || strlen(s) != len) {
        api_reply_errorf(resp, TPV_EINVAL, field, "%s must be 1 to %zu bytes without NUL", field,
                         max);
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)s[i] < 0x20 && key[0] == 'n') { /* names: no control characters */
            api_reply_errorf(resp, TPV_EINVAL, field, "%s must not contain control characters",
                             field);
            return false;
        }
    }
    *out = s;
    return true;
}

/* Blobs a noise model refers to (diagonal variances, prune mask) must exist already. */
static bool noise_blobs_exist(const struct api_env *env, const struct tpv_noise *m, size_t n,
                              struct api_response *resp)
{
    for (size_t i = 0; i < n; i++) {
        const char *digest = m[i].kind == TPV_NOISE_DIAGONAL ? m[i].variances
                             : m[i].kind == TPV_NOISE_PRUNE  ? m[i].mask
                                                             : "";
        if (!digest[0])
            continue;
        struct tpv_err err;
        if (store_blob_stat(env->store, digest, NULL, &err) != TPV_OK) {
            char field[64];
            snprintf(field, sizeof field, "noise_models[%zu].%s", i,
                     m[i].kind == TPV_NOISE_DIAGONAL ? "variances" : "mask");
            api_reply_errorf(resp, TPV_EINVAL, field,
                             "%s: blob %s not found (upload it with PUT /v1/blobs first)", field,
                             digest);
            return false;
        }
    }
    return true;
}

static void replay(struct api_response *resp, struct store_replay *r)
{
    api_reply_json(resp, r->status, json_loads(r->body, 0, NULL));
    if (r->location)
        api_response_add_header(resp, "Location", r->location);
}

/* Idempotency-Key handling shared by the POST handlers: returns true when the request was
 * answered (a replay or an error); otherwise *idem is set up (or left unused without a key). */
bool api_idem_begin(const struct api_env *env, struct api_request *req, struct api_response *resp,
                    const char *scope, char hash[65], struct store_idem *idem, bool *use)
{
    const char *key = api_header(req, "Idempotency-Key");
    *use = false;
    if (!key)
        return false;
    size_t len = strlen(key);
    if (len == 0 || len > 200) {
        api_reply_errorf(resp, TPV_EINVAL, "Idempotency-Key",
                         "Idempotency-Key must be 1 to 200 characters");
        return true;
    }
    struct store_replay r;
    struct tpv_err err;
    tpv_err_clear(&err);
    if (api_body_hash(req, hash, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err); /* 500: a key without its hash cannot be kept */
        return true;
    }
    idem->scope = scope;
    idem->key = key;
    idem->request_hash = hash;
    int rc = store_idem_lookup(env->store, idem, &r, &err);
    if (rc == TPV_OK) {
        replay(resp, &r);
        store_replay_free(&r);
        return true;
    }
    if (rc != TPV_ENOTFOUND) {
        api_reply_store_error(req, resp, &err);
        return true;
    }
    *use = true;
    return false;
}

/* After a write found its key taken by a concurrent request (the store checks the key inside
 * the write's transaction, before any uniqueness rule): answer as that one did, or refuse a
 * different body under the same key. */
void api_idem_race(const struct api_env *env, struct api_request *req, struct api_response *resp,
                   const struct store_idem *idem, const struct tpv_err *werr)
{
    struct store_replay r;
    struct tpv_err err;
    tpv_err_clear(&err);
    int rc = store_idem_lookup(env->store, idem, &r, &err);
    if (rc == TPV_OK) {
        replay(resp, &r);
        store_replay_free(&r);
        return;
    }
    api_reply_store_error(req, resp, rc == TPV_EPRECONDITION ? &err : werr);
}

void api_handle_study_create(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    static const char *const keys[] = { "name", "description", "noise_models", "rank_by",
                                        "webhook_url", "metadata", NULL };
    struct tpv_err err;
    struct tpv_noise *models = NULL;
    size_t nmodels = 0;
    json_t *body = NULL, *noise_json = NULL, *out = NULL;
    char *noise_text = NULL, *meta_text = NULL, *out_text = NULL;
    const char *name, *description, *rank_by, *webhook;
    char hash[65], id[STORE_ID_MAX], now[STORE_TIME_MAX], location[96];
    struct store_idem idem;
    bool use_idem;
    tpv_err_clear(&err);

    if (api_idem_begin(env, req, resp, "POST /v1/studies", hash, &idem, &use_idem))
        return;
    if (!api_body_object(req, resp, &body) || !api_check_keys(body, keys, "", resp))
        goto out;
    if (!api_get_string(body, "name", "name", true, NAME_MAX_BYTES, &name, resp) ||
        !api_get_string(body, "description", "description", false, DESCRIPTION_MAX_BYTES,
                        &description, resp) ||
        !api_get_string(body, "rank_by", "rank_by", false, TPV_NOISE_NAME_MAX, &rank_by, resp) ||
        !api_get_string(body, "webhook_url", "webhook_url", false, URL_MAX_BYTES, &webhook, resp))
        goto out;
    if (webhook && !api_url_valid(webhook)) {
        api_reply_errorf(resp, TPV_EINVAL, "webhook_url",
                         "webhook_url must be an absolute http:// or https:// URL");
        goto out;
    }
    json_t *meta = json_object_get(body, "metadata");
    if (meta && !json_is_object(meta) && !json_is_null(meta)) {
        api_reply_errorf(resp, TPV_EINVAL, "metadata", "metadata must be an object");
        goto out;
    }
    if (!api_check_metadata_size(env, meta, "metadata", resp))
        goto out;
    if (!api_resolve_refs(env, req, body, API_REFS_STUDY, resp))
        goto out;
    if (!json_object_get(body, "noise_models")) {
        api_reply_errorf(resp, TPV_EINVAL, "noise_models", "noise_models is required");
        goto out;
    }
    if (tpv_noise_list_parse(json_object_get(body, "noise_models"), &models, &nmodels, &err) !=
        TPV_OK) {
        api_reply_error(resp, &err);
        goto out;
    }
    if (!noise_blobs_exist(env, models, nmodels, resp))
        goto out;
    if (!rank_by)
        rank_by = models[0].name;
    bool found = false;
    noise_json = json_array();
    for (size_t i = 0; i < nmodels; i++) {
        found |= strcmp(models[i].name, rank_by) == 0;
        json_array_append_new(noise_json, tpv_noise_to_json(&models[i]));
    }
    if (!found) {
        api_reply_errorf(resp, TPV_EINVAL, "rank_by", "rank_by '%s' is not one of the noise models",
                         rank_by);
        goto out;
    }

    char secret[API_WEBHOOK_SECRET_MAX] = "";
    if (webhook && api_webhook_secret_new(secret) != TPV_OK) {
        api_reply_errorf(resp, TPV_EINTERNAL, NULL, "no random bytes for the webhook secret");
        goto out;
    }
    store_id_new(id, "st");
    store_now_rfc3339(now);
    snprintf(location, sizeof location, "/v1/studies/%s", id);
    out = json_pack("{s:s,s:s,s:s,s:O,s:s,s:s?,s:{s:n,s:n},s:i,s:s,s:o}", "id", id, "name", name,
                    "description", description ? description : "", "noise_models", noise_json,
                    "rank_by", rank_by, "webhook_url", webhook, "inputs", "fit", "probe",
                    "version", 1, "created_at", now, "metadata",
                    json_is_object(meta) ? json_incref(meta) : json_object());
    /* The secret is shown once, here (and in an Idempotency-Key replay of this response). */
    if (out && webhook)
        json_object_set_new(out, "webhook_secret", json_string(secret));
    noise_text = tpv_json_dump(noise_json, JSON_COMPACT);
    meta_text = out ? tpv_json_dump(json_object_get(out, "metadata"), JSON_COMPACT) : NULL;
    out_text = out ? tpv_json_dump(out, JSON_COMPACT) : NULL;
    if (!noise_text || !meta_text || !out_text) {
        api_reply_errorf(resp, TPV_ENOMEM, NULL, "out of memory");
        goto out;
    }
    struct store_study_new s = { .id = id, .name = name, .description = description,
                                 .noise_models = noise_text, .rank_by = rank_by,
                                 .webhook_url = webhook, .metadata = meta_text, .created_at = now,
                                 .webhook_secret = webhook ? secret : NULL };
    struct store_reply reply = { .status = 201, .body = out_text, .location = location };
    int rc = store_study_create(env->store, &s, use_idem ? &idem : NULL, &reply, &err);
    if (rc == TPV_EEXIST && use_idem && strcmp(err.field, "Idempotency-Key") == 0) {
        api_idem_race(env, req, resp, &idem, &err);
        goto out;
    }
    if (rc != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        goto out;
    }
    api_reply_json(resp, 201, out);
    out = NULL;
    api_response_add_header(resp, "Location", location);
out:
    free(models);
    free(noise_text);
    free(meta_text);
    free(out_text);
    json_decref(out);
    json_decref(noise_json);
    json_decref(body);
}

void api_handle_study_list(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    struct store_study_page page;
    int64_t after;
    int limit;
    tpv_err_clear(&err);
    if (!api_page_params(env, req, resp, &after, &limit))
        return;
    if (store_study_list(env->store, after, limit, env->limits.max_page_bytes, &page, &err) !=
        TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    api_reply_json(resp, 200, api_study_page_json(&page));
    store_study_page_free(&page);
}

/* {sid} of the route, or a 404 when it cannot be one of ours. */
bool api_study_param(const struct api_request *req, struct api_response *resp)
{
    if (api_id_valid(req->params[0]))
        return true;
    api_reply_errorf(resp, TPV_ENOTFOUND, "study_id", "study %.64s not found", req->params[0]);
    return false;
}

void api_handle_study_get(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    struct store_study study;
    tpv_err_clear(&err);
    if (!api_study_param(req, resp))
        return;
    if (store_study_get(env->store, req->params[0], &study, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    api_reply_json(resp, 200, api_study_json(&study));
    store_study_free(&study);
}

/* The number of samples of an input set: the first dimension of its (first) tensor, whose
 * values must all be finite (DESIGN.md section 4; the error names the first bad index). */
static int input_count(const char *path, int64_t *n, struct tpv_err *err)
{
    struct tpv_tensor_file *f = NULL;
    int rc = tpv_tensor_file_open(&f, path, err);
    if (rc != TPV_OK)
        return rc;
    const struct tpv_tensor *t = tpv_tensor_file_count(f) ? tpv_tensor_file_at(f, 0) : NULL;
    if (!t || t->rank < 1 || t->shape[0] == 0 || t->shape[0] > INT64_MAX)
        rc = tpv_err_set(err, TPV_EFORMAT, "blob",
                         "an input set needs a tensor of shape (n, ...) with n >= 1");
    else
        rc = tpv_tensor_check_finite(t, err);
    if (rc == TPV_OK)
        *n = (int64_t)t->shape[0];
    tpv_tensor_file_close(f);
    return rc;
}

void api_handle_inputs_put(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    static const char *const keys[] = { "blob", NULL };
    struct tpv_err err;
    json_t *body = NULL;
    struct store_study study = { 0 };
    const char *digest, *split = req->params[1];
    char path[4096];
    int64_t n = -1;
    tpv_err_clear(&err);
    if (!api_study_param(req, resp))
        return;
    if (strcmp(split, "fit") != 0 && strcmp(split, "probe") != 0) {
        api_reply_errorf(resp, TPV_EINVAL, "split", "the input set is 'fit' or 'probe', not '%.40s'",
                         split);
        return;
    }
    if (!api_body_object(req, resp, &body) ||
        !api_resolve_refs(env, req, body, API_REFS_INPUTS, resp) ||
        !api_check_keys(body, keys, "", resp) ||
        !api_get_string(body, "blob", "blob", true, STORE_DIGEST_MAX, &digest, resp))
        goto out;
    if (!store_digest_valid(digest)) {
        api_reply_errorf(resp, TPV_EINVAL, "blob", "blob must be a digest sha256:<64 lowercase hex>");
        goto out;
    }
    if (store_blob_stat(env->store, digest, NULL, &err) != TPV_OK ||
        store_blob_path(env->store, digest, path, sizeof path, &err) != TPV_OK) {
        api_reply_errorf(resp, TPV_EINVAL, "blob",
                         "blob %s not found (upload it with PUT /v1/blobs first)", digest);
        goto out;
    }
    if (input_count(path, &n, &err) != TPV_OK) {
        if (err.code == TPV_ENOMEM || err.code == TPV_EIO) {
            api_reply_store_error(req, resp, &err); /* the path goes to the log only */
            goto out;
        }
        /* The file's fault: the client knows it by its digest, never by our path. */
        char shown[STORE_DIGEST_MAX + 8];
        snprintf(shown, sizeof shown, "blob %s", digest);
        api_err_hide_path(&err, path, shown);
        if (!strstr(err.message, shown))
            tpv_err_prefix(&err, "%s", shown);
        snprintf(err.field, sizeof err.field, "blob");
        err.code = TPV_EINVAL;
        api_reply_error(resp, &err);
        goto out;
    }
    if (store_input_set(env->store, req->params[0], split, digest, n, &err) != TPV_OK ||
        store_study_get(env->store, req->params[0], &study, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        goto out;
    }
    api_reply_json(resp, 200, api_study_json(&study));
out:
    store_study_free(&study);
    json_decref(body);
}
