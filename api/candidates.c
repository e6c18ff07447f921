/* candidates.c: POST/GET /v1/studies/{sid}/candidates, GET .../candidates/{cid} and POST
 * .../candidates/{cid}/jbr (DESIGN.md section 5).  Submission validates the JSON shapes and that
 * every referenced blob exists, asks the core (tpv_candidate_check) whether the candidate can be
 * served and how much memory it needs, then writes candidate + job in one transaction before the
 * 202. */
#include "api/handlers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/noise.h"
#include "core/score.h"
#include "core/tpv_log.h"
#include "storage/store.h"

#define NAME_MAX_BYTES 128
#define LAYOUT_MAX 100000
#define RETRY_AFTER_S "5"

/* A digest member that must name an existing blob; required or optional. */
static bool get_blob(const struct api_env *env, const json_t *obj, const char *key,
                     const char *field, bool required, const char **out, struct api_response *resp)
{
    if (!api_get_string(obj, key, field, required, STORE_DIGEST_MAX, out, resp))
        return false;
    if (!*out)
        return true;
    if (!store_digest_valid(*out)) {
        api_reply_errorf(resp, TPV_EINVAL, field, "%s must be a digest sha256:<64 lowercase hex>",
                         field);
        return false;
    }
    struct tpv_err err;
    if (store_blob_stat(env->store, *out, NULL, &err) != TPV_OK) {
        api_reply_errorf(resp, TPV_EINVAL, field,
                         "%s: blob %s not found (upload it with PUT /v1/blobs first)", field, *out);
        return false;
    }
    return true;
}

/* metadata: an object within --max-metadata-bytes; train_loss and epoch numbers when present,
 * run a string. */
static bool check_metadata(const struct api_env *env, const json_t *meta,
                           struct store_candidate_new *c, struct api_response *resp)
{
    if (!meta)
        return true;
    if (!json_is_object(meta)) {
        api_reply_errorf(resp, TPV_EINVAL, "metadata", "metadata must be an object");
        return false;
    }
    if (!api_check_metadata_size(env, meta, "metadata", resp))
        return false;
    json_t *tl = json_object_get(meta, "train_loss"), *ep = json_object_get(meta, "epoch"),
           *run = json_object_get(meta, "run");
    if (tl && !json_is_null(tl)) {
        if (!json_is_number(tl) || !isfinite(json_number_value(tl))) {
            api_reply_errorf(resp, TPV_EINVAL, "metadata.train_loss",
                             "metadata.train_loss must be a finite number");
            return false;
        }
        c->has_train_loss = true;
        c->train_loss = json_number_value(tl);
    }
    if (ep && !json_is_null(ep)) {
        if (!json_is_number(ep) || !isfinite(json_number_value(ep))) {
            api_reply_errorf(resp, TPV_EINVAL, "metadata.epoch", "metadata.epoch must be a number");
            return false;
        }
        c->has_epoch = true;
        c->epoch = json_number_value(ep);
    }
    if (run && !json_is_null(run)) {
        if (!json_is_string(run) || json_string_length(run) == 0 ||
            json_string_length(run) > NAME_MAX_BYTES) {
            api_reply_errorf(resp, TPV_EINVAL, "metadata.run",
                             "metadata.run must be a string of 1 to %d bytes", NAME_MAX_BYTES);
            return false;
        }
        c->run = json_string_value(run);
    }
    return true;
}

/* Builds the stored source JSON from the request's model or jacobian member. */
static json_t *parse_source(const struct api_env *env, const json_t *body,
                            const struct store_study_info *info, struct api_response *resp)
{
    static const char *const model_keys[] = { "spec", "weights", NULL };
    static const char *const jac_keys[] = { "fit", "probe", "layout", NULL };
    json_t *model = json_object_get(body, "model"), *jac = json_object_get(body, "jacobian");
    const char *weights = NULL, *d1 = NULL, *d2 = NULL;
    if (model && jac) {
        api_reply_errorf(resp, TPV_EINVAL, "model", "give either model or jacobian, not both");
        return NULL;
    }
    if (!model && !jac) {
        api_reply_errorf(resp, TPV_EINVAL, "model",
                         "a candidate needs a model {spec, weights} or a jacobian {fit, probe?}");
        return NULL;
    }
    if (model) {
        if (!json_is_object(model)) {
            api_reply_errorf(resp, TPV_EINVAL, "model", "model must be an object");
            return NULL;
        }
        if (!api_check_keys(model, model_keys, "model.", resp) ||
            !get_blob(env, model, "weights", "model.weights", true, &weights, resp))
            return NULL;
        if (json_object_get(body, "weights")) {
            api_reply_errorf(resp, TPV_EINVAL, "weights",
                             "weights belongs inside model for a model candidate");
            return NULL;
        }
        json_t *spec = json_object_get(model, "spec");
        if (!spec) {
            api_reply_errorf(resp, TPV_EINVAL, "model.spec", "model.spec is required");
            return NULL;
        }
        if (!json_is_object(spec) && !get_blob(env, model, "spec", "model.spec", true, &d1, resp))
            return NULL;
        if (!info->fit_digest[0]) {
            api_reply_errorf(resp, TPV_EPRECONDITION, "inputs.fit",
                             "the study has no fit input set: PUT /v1/studies/{sid}/inputs/fit "
                             "before submitting model candidates");
            return NULL;
        }
        return json_pack("{s:s,s:O,s:s,s:{s:s,s:s?}}", "kind", "model", "spec", spec, "weights",
                         weights, "inputs", "fit", info->fit_digest, "probe",
                         info->probe_digest[0] ? info->probe_digest : NULL);
    }
    if (!json_is_object(jac)) {
        api_reply_errorf(resp, TPV_EINVAL, "jacobian", "jacobian must be an object");
        return NULL;
    }
    if (!api_check_keys(jac, jac_keys, "jacobian.", resp) ||
        !get_blob(env, jac, "fit", "jacobian.fit", true, &d1, resp) ||
        !get_blob(env, jac, "probe", "jacobian.probe", false, &d2, resp) ||
        !get_blob(env, body, "weights", "weights", false, &weights, resp))
        return NULL;
    json_t *layout = json_object_get(jac, "layout");
    if (layout) {
        size_t n = json_array_size(layout);
        if (!json_is_array(layout) || n == 0 || n > LAYOUT_MAX) {
            api_reply_errorf(resp, TPV_EINVAL, "jacobian.layout",
                             "jacobian.layout must be an array of 1 to %d tensor names", LAYOUT_MAX);
            return NULL;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *v = json_array_get(layout, i);
            if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 256) {
                api_reply_errorf(resp, TPV_EINVAL, "jacobian.layout",
                                 "jacobian.layout[%zu] must be a tensor name (1 to 256 bytes)", i);
                return NULL;
            }
        }
    }
    json_t *src = json_pack("{s:s,s:s,s:s?,s:s?}", "kind", "jacobian", "fit", d1, "probe", d2,
                            "weights", weights);
    if (src && layout)
        json_object_set(src, "layout", layout);
    return src;
}

/* Noise models that need weights cannot be served by a dump without them (DESIGN.md section 3). */
static bool check_noise_needs(const struct tpv_noise *m, size_t n, const json_t *source,
                              struct api_response *resp)
{
    if (strcmp(json_string_value(json_object_get(source, "kind")), "jacobian") != 0 ||
        json_object_get(source, "weights"))
        return true;
    for (size_t i = 0; i < n; i++) {
        if (tpv_noise_needs_weights(&m[i])) {
            char field[48];
            snprintf(field, sizeof field, "noise_models[%zu]", i);
            api_reply_errorf(resp, TPV_EINVAL, field,
                             "noise model '%s' (%s) needs the weights: give \"weights\" with the "
                             "Jacobian dump", m[i].name, tpv_noise_kind_name(m[i].kind));
            return false;
        }
    }
    return true;
}

/* The core's verdict on the candidate's files against the study's noise models, and the job's
 * memory estimate against --max-job-memory. */
static bool core_check(const struct api_env *env, struct api_request *req, const json_t *source,
                       const struct tpv_noise *m, size_t n, struct api_response *resp)
{
    struct api_cand_files cf;
    struct tpv_err err;
    uint64_t need = 0;
    tpv_err_clear(&err);
    int rc = api_cand_files_load(&cf, env->store, source, env->limits.max_body, &err);
    if (rc == TPV_OK) {
        struct tpv_run_options opts = { .max_memory = env->limits.max_job_memory,
                                        .flop_budget = env->limits.job_flop_budget };
        rc = tpv_candidate_check(&cf.files, m, n, &opts, &need, &err);
        if (rc != TPV_OK)
            api_cand_files_explain(&cf, &err);
    }
    api_cand_files_free(&cf);
    if (rc == TPV_OK && env->limits.max_job_memory && need > env->limits.max_job_memory)
        rc = tpv_err_set(&err, TPV_ENOSPACE, "model",
                         "the job needs %llu bytes of memory, more than --max-job-memory "
                         "(%llu bytes)", (unsigned long long)need,
                         (unsigned long long)env->limits.max_job_memory);
    if (rc == TPV_OK)
        return true;
    if (rc == TPV_EIO || rc == TPV_EINTERNAL)
        api_reply_store_error(req, resp, &err);
    else
        api_reply_error(resp, &err);
    return false;
}

static void reply_busy(struct api_response *resp, const struct tpv_err *err)
{
    api_reply_error(resp, err);
    api_response_add_header(resp, "Retry-After", RETRY_AFTER_S);
}

void api_handle_candidate_create(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    static const char *const keys[] = { "name", "metadata", "model", "jacobian", "weights", NULL };
    struct tpv_err err;
    struct store_study_info info = { 0 };
    struct tpv_noise *models = NULL;
    size_t nmodels = 0;
    json_t *body = NULL, *source = NULL, *out = NULL, *noise = NULL;
    char *source_text = NULL, *meta_text = NULL, *out_text = NULL;
    char hash[65], scope[192], cid[STORE_ID_MAX], jid[STORE_ID_MAX], now[STORE_TIME_MAX];
    char location[224];
    struct store_idem idem;
    struct store_candidate_new c = { 0 };
    bool use_idem;
    const char *sid = req->params[0];
    tpv_err_clear(&err);

    if (!api_study_param(req, resp))
        return;
    snprintf(scope, sizeof scope, "POST /v1/studies/%s/candidates", sid);
    if (api_idem_begin(env, req, resp, scope, hash, &idem, &use_idem))
        return;
    if (!api_body_object(req, resp, &body) || !api_check_keys(body, keys, "", resp) ||
        !api_get_string(body, "name", "name", true, NAME_MAX_BYTES, &c.name, resp) ||
        !api_resolve_refs(env, req, body, API_REFS_CANDIDATE, resp) ||
        !check_metadata(env, json_object_get(body, "metadata"), &c, resp))
        goto out;
    if (store_study_info(env->store, sid, &info, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        goto out;
    }
    if (!(source = parse_source(env, body, &info, resp)))
        goto out;
    noise = json_loads(info.noise_models, 0, NULL);
    if (tpv_noise_list_parse(noise, &models, &nmodels, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err); /* stored models always parse */
        goto out;
    }
    if (!check_noise_needs(models, nmodels, source, resp) ||
        !core_check(env, req, source, models, nmodels, resp))
        goto out;

    store_id_new(cid, "cd");
    store_id_new(jid, "jb");
    store_now_rfc3339(now);
    snprintf(location, sizeof location, "/v1/studies/%s/candidates/%s", sid, cid);
    json_t *meta = json_object_get(body, "metadata");
    const char *kind = json_string_value(json_object_get(source, "kind"));
    out = json_pack("{s:{s:s,s:s,s:s,s:o,s:s,s:s,s:[],s:n,s:s,s:f,s:n,s:s},"
                    "s:{s:s,s:s,s:s,s:s,s:f,s:i}}",
                    "candidate", "id", cid, "study_id", sid, "name", c.name, "metadata",
                    json_is_object(meta) ? json_incref(meta) : json_object(), "source", kind,
                    "state", "queued", "scores", "stability", "job_id", jid, "progress", 0.0,
                    "error", "created_at", now,
                    "job", "id", jid, "kind", "score", "candidate_id", cid, "state", "queued",
                    "progress", 0.0, "attempts", 0);
    source_text = json_dumps(source, JSON_COMPACT);
    meta_text = out ? json_dumps(json_object_get(json_object_get(out, "candidate"), "metadata"),
                                 JSON_COMPACT) : NULL;
    out_text = out ? json_dumps(out, JSON_COMPACT) : NULL;
    if (!source_text || !meta_text || !out_text) {
        api_reply_errorf(resp, TPV_ENOMEM, NULL, "out of memory");
        goto out;
    }
    c.id = cid;
    c.study_id = sid;
    c.metadata = meta_text;
    c.source_kind = kind;
    c.source = source_text;
    c.has_probe_dump = json_object_get(source, "probe") != NULL;
    c.job_id = jid;
    c.created_at = now;
    struct store_reply reply = { .status = 202, .body = out_text, .location = location };
    int rc = store_candidate_create(env->store, &c, env->limits.max_queued_jobs,
                                    use_idem ? &idem : NULL, &reply, &err);
    if (rc == TPV_EEXIST && use_idem && strcmp(err.field, "Idempotency-Key") == 0) {
        api_idem_race(env, req, resp, &idem, &err);
        goto out;
    }
    if (rc == TPV_EBUSY) {
        reply_busy(resp, &err);
        goto out;
    }
    if (rc != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        goto out;
    }
    log_info("rid=%s candidate=%s study=%s job=%s state=queued", req->request_id, cid,
             tpv_log_token(sid, API_PARAM_MAX), jid);
    api_reply_json(resp, 202, out);
    out = NULL;
    api_response_add_header(resp, "Location", location);
out:
    free(models);
    free(source_text);
    free(meta_text);
    free(out_text);
    json_decref(noise);
    json_decref(source);
    json_decref(out);
    json_decref(body);
    store_study_info_free(&info);
}

void api_handle_candidate_list(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    json_t *items = NULL;
    int64_t after, next;
    int limit;
    tpv_err_clear(&err);
    if (!api_study_param(req, resp) || !api_page_params(env, req, resp, &after, &limit))
        return;
    if (store_candidate_list(env->store, req->params[0], after, limit, env->limits.max_page_bytes,
                             &items, &next, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    api_reply_json(resp, 200, api_page_json(items, next));
}

void api_handle_candidate_get(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    json_t *cand = NULL;
    tpv_err_clear(&err);
    if (!api_study_param(req, resp))
        return;
    if (!api_id_valid(req->params[1])) {
        api_reply_errorf(resp, TPV_ENOTFOUND, "candidate_id", "candidate %.64s not found",
                         req->params[1]);
        return;
    }
    if (store_candidate_get(env->store, req->params[0], req->params[1], &cand, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    api_reply_json(resp, 200, cand);
}

void api_handle_jbr_create(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    static const char *const keys[] = { "confidence", "batch_size", NULL };
    struct tpv_err err;
    json_t *body = NULL;
    char *source = NULL, kind[16], jid[STORE_ID_MAX], now[STORE_TIME_MAX], location[96];
    double confidence = 0.9;
    json_int_t batch = 128;
    tpv_err_clear(&err);
    if (!api_study_param(req, resp))
        return;
    if (!api_id_valid(req->params[1])) {
        api_reply_errorf(resp, TPV_ENOTFOUND, "candidate_id", "candidate %.64s not found",
                         req->params[1]);
        return;
    }
    if (req->body_len > 0) {
        if (!api_body_object(req, resp, &body) || !api_check_keys(body, keys, "", resp))
            goto out;
        json_t *cv = json_object_get(body, "confidence"), *bv = json_object_get(body, "batch_size");
        if (cv) {
            confidence = json_number_value(cv);
            if (!json_is_number(cv) || !(confidence > 0 && confidence <= 1)) {
                api_reply_errorf(resp, TPV_EINVAL, "confidence", "confidence must be in (0, 1]");
                goto out;
            }
        }
        if (bv) {
            batch = json_integer_value(bv);
            if (!json_is_integer(bv) || batch < 1 || batch > 1000000) {
                api_reply_errorf(resp, TPV_EINVAL, "batch_size",
                                 "batch_size must be an integer in [1, 1000000]");
                goto out;
            }
        }
    }
    if (store_candidate_source(env->store, req->params[0], req->params[1], &source, kind, &err) !=
        TPV_OK) {
        api_reply_store_error(req, resp, &err);
        goto out;
    }
    if (strcmp(kind, "model") != 0) {
        api_reply_errorf(resp, TPV_EPRECONDITION, "candidate_id",
                         "JBR needs a model candidate (spec + weights), not a Jacobian dump");
        goto out;
    }
    char params[96];
    snprintf(params, sizeof params, "{\"confidence\":%.17g,\"batch_size\":%lld}", confidence,
             (long long)batch);
    store_id_new(jid, "jb");
    store_now_rfc3339(now);
    int rc = store_jbr_create(env->store, req->params[0], req->params[1], jid, params,
                              env->limits.max_queued_jobs, &err);
    if (rc == TPV_EBUSY) {
        reply_busy(resp, &err);
        goto out;
    }
    if (rc != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        goto out;
    }
    json_t *job = NULL;
    if (store_job_get(env->store, jid, &job, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        goto out;
    }
    snprintf(location, sizeof location, "/v1/jobs/%s", jid);
    api_reply_json(resp, 202, json_pack("{s:o}", "job", job));
    api_response_add_header(resp, "Location", location);
out:
    free(source);
    json_decref(body);
}
