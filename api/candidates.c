/* candidates.c: POST/GET /v1/studies/{sid}/candidates, GET .../candidates/{cid} and POST
 * .../candidates/{cid}/jbr (DESIGN.md section 5).  Submission validates the JSON shapes and that
 * every referenced blob exists, parses the stored form with the job module (core/job.h) as the
 * worker will, asks the core (tpv_candidate_check: headers, shapes and names, no scan of the
 * data) whether the candidate can be served and how much memory it needs, then writes candidate
 * + job in one transaction before the 202. */
#include "api/handlers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/job.h"
#include "core/noise.h"
#include "core/score.h"
#include "core/tpv_log.h"
#include "api/render.h"
#include "storage/store.h"

#define NAME_MAX_BYTES 128
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

/* The study's fit set, which model and ONNX candidates are scored on. */
static bool need_fit(const struct store_study_info *info, struct api_response *resp)
{
    if (info->fit_digest[0])
        return true;
    api_reply_errorf(resp, TPV_EPRECONDITION, "inputs.fit",
                     "the study has no fit input set: PUT /v1/studies/{sid}/inputs/fit "
                     "before submitting model candidates");
    return false;
}

/* The draft of an ONNX candidate: {"onnx": digest, "parameters"?: [names]} (the names are
 * checked by tpv_job_source_parse, the graph by the core). */
static json_t *parse_onnx(const struct api_env *env, const json_t *body, const json_t *model,
                          const struct store_study_info *info, struct api_response *resp)
{
    const char *onnx = NULL;
    if (json_object_get(model, "spec") || json_object_get(model, "weights")) {
        api_reply_errorf(resp, TPV_EINVAL, "model.onnx",
                         "an ONNX model carries its weights: give model.onnx without model.spec "
                         "and model.weights");
        return NULL;
    }
    if (json_object_get(body, "weights")) {
        api_reply_errorf(resp, TPV_EINVAL, "weights",
                         "an ONNX model carries its weights (its initializers)");
        return NULL;
    }
    if (!get_blob(env, model, "onnx", "model.onnx", true, &onnx, resp) || !need_fit(info, resp))
        return NULL;
    json_t *src = json_pack("{s:s,s:s,s:{s:s,s:s?}}", "kind", "onnx", "onnx", onnx, "inputs",
                            "fit", info->fit_digest, "probe",
                            info->probe_digest[0] ? info->probe_digest : NULL);
    json_t *params = json_object_get(model, "parameters");
    if (src && params && json_object_set(src, "parameters", params) != 0) {
        json_decref(src);
        src = NULL;
    }
    if (!src)
        api_reply_errorf(resp, TPV_ENOMEM, NULL, "out of memory");
    return src;
}

/* A draft of the stored source from the request's model or jacobian member, after the checks
 * that need the store (blobs exist, the study's input sets); absent members may be null here.
 * make_source turns it into the stored form. */
static json_t *parse_source(const struct api_env *env, const json_t *body,
                            const struct store_study_info *info, struct api_response *resp)
{
    static const char *const model_keys[] = { "spec", "weights", "onnx", "parameters", NULL };
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
        if (!api_check_keys(model, model_keys, "model.", resp))
            return NULL;
        if (json_object_get(model, "onnx"))
            return parse_onnx(env, body, model, info, resp);
        if (json_object_get(model, "parameters")) {
            api_reply_errorf(resp, TPV_EINVAL, "model.parameters",
                             "model.parameters belongs to an ONNX model (model.onnx)");
            return NULL;
        }
        if (!get_blob(env, model, "weights", "model.weights", true, &weights, resp))
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
        if (!need_fit(info, resp))
            return NULL;
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
    json_t *layout = json_object_get(jac, "layout"); /* checked by tpv_job_source_parse */
    json_t *src = json_pack("{s:s,s:s,s:s?,s:s?}", "kind", "jacobian", "fit", d1, "probe", d2,
                            "weights", weights);
    if (src && layout)
        json_object_set(src, "layout", layout);
    return src;
}

/* Noise models that need weights cannot be served by a dump without them (DESIGN.md section 3). */
static bool check_noise_needs(const struct tpv_job *job, struct api_response *resp)
{
    const struct tpv_noise *m = job->models;
    if (job->src.kind != TPV_SOURCE_JACOBIAN || job->src.weights[0])
        return true;
    for (size_t i = 0; i < job->nmodels; i++) {
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

/* The core's verdict on the candidate's files against the study's noise models (headers, shapes
 * and names: no pass over the data on this HTTP thread; the worker scans the values), and the
 * job's memory plan against --max-job-memory. */
static bool core_check(const struct api_env *env, struct api_request *req,
                       const struct tpv_job *job, struct api_response *resp)
{
    struct api_cand_files cf;
    struct tpv_err err;
    uint64_t need = 0;
    tpv_err_clear(&err);
    int rc = api_cand_files_load(&cf, env->store, &job->src, env->limits.max_body, &err);
    if (rc == TPV_OK) {
        struct tpv_run_options opts = { .max_memory = env->limits.max_job_memory,
                                        .flop_budget = env->limits.job_flop_budget };
        rc = tpv_candidate_check(&cf.files, job->models, job->nmodels, &opts, &need, &err);
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

/* The stored source text of a draft: parsed by the job module (400 naming the member), written
 * back in its canonical form (absent members left out, never null), then parsed once more with
 * the study's noise models by tpv_job_parse, exactly as the worker will parse it. */
static bool make_source(const struct api_request *req, const json_t *draft,
                        const struct store_study_info *info, char **text, struct tpv_job *job,
                        struct api_response *resp)
{
    struct tpv_job_source src;
    struct tpv_err err;
    tpv_err_clear(&err);
    *text = NULL;
    int rc = tpv_job_source_parse(&src, draft, &err);
    json_t *canon = rc == TPV_OK ? tpv_job_source_json(&src) : NULL;
    tpv_job_source_free(&src);
    if (rc != TPV_OK) {
        api_reply_error(resp, &err);
        return false;
    }
    *text = canon ? json_dumps(canon, JSON_COMPACT) : NULL;
    json_decref(canon);
    if (!*text) {
        api_reply_errorf(resp, TPV_ENOMEM, NULL, "out of memory");
        return false;
    }
    rc = tpv_job_parse(job, *text, info->noise_models, "score", NULL, &err);
    if (rc == TPV_OK)
        return true;
    if (strncmp(err.field, "noise_models", 12) == 0 || rc != TPV_EINVAL)
        api_reply_store_error(req, resp, &err); /* stored models always parse */
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
    struct tpv_job job;
    json_t *body = NULL, *source = NULL, *out = NULL;
    char *source_text = NULL, *meta_text = NULL, *out_text = NULL;
    char hash[65], scope[192], cid[STORE_ID_MAX], jid[STORE_ID_MAX], now[STORE_TIME_MAX];
    char location[224];
    struct store_idem idem;
    struct store_candidate_new c = { 0 };
    bool use_idem;
    const char *sid = req->params[0];
    tpv_err_clear(&err);
    memset(&job, 0, sizeof job);

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
    if (!(source = parse_source(env, body, &info, resp)) ||
        !make_source(req, source, &info, &source_text, &job, resp) ||
        !check_noise_needs(&job, resp) || !core_check(env, req, &job, resp))
        goto out;

    store_id_new(cid, "cd");
    store_id_new(jid, "jb");
    store_now_rfc3339(now);
    snprintf(location, sizeof location, "/v1/studies/%s/candidates/%s", sid, cid);
    json_t *meta = json_object_get(body, "metadata");
    const char *kind = tpv_source_kind_name(job.src.kind);
    meta_text = json_is_object(meta) ? json_dumps(meta, JSON_COMPACT) : strdup("{}");
    /* The candidate as it is stored, in the one candidate shape (api/render.c). */
    struct store_candidate shown = { .name = (char *)c.name, .metadata = meta_text,
                                     .source_kind = (char *)kind, .state = (char *)"queued" };
    snprintf(shown.id, sizeof shown.id, "%s", cid);
    snprintf(shown.study_id, sizeof shown.study_id, "%.*s", (int)sizeof shown.study_id - 1, sid);
    snprintf(shown.job_id, sizeof shown.job_id, "%s", jid);
    snprintf(shown.created_at, sizeof shown.created_at, "%s", now);
    out = meta_text ? json_pack("{s:o,s:{s:s,s:s,s:s,s:s,s:f,s:i}}",
                                "candidate", api_candidate_json(&shown),
                                "job", "id", jid, "kind", "score", "candidate_id", cid, "state",
                                "queued", "progress", 0.0, "attempts", 0)
                    : NULL;
    out_text = out ? json_dumps(out, JSON_COMPACT) : NULL;
    if (!source_text || !meta_text || !out_text) {
        api_reply_errorf(resp, TPV_ENOMEM, NULL, "out of memory");
        goto out;
    }
    c.id = cid;
    c.study_id = sid;
    c.metadata = meta_text;
    /* The column's CHECK predates graphs: an ONNX candidate is stored as a model and read back
     * as "onnx" from its source's kind (storage/store_int.h). */
    c.source_kind = job.src.kind == TPV_SOURCE_ONNX ? "model" : kind;
    c.source = source_text;
    c.has_probe_dump = tpv_job_source_has_probe_dump(&job.src);
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
    tpv_job_free(&job);
    free(source_text);
    free(meta_text);
    free(out_text);
    json_decref(source);
    json_decref(out);
    json_decref(body);
    store_study_info_free(&info);
}

void api_handle_candidate_list(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    struct store_candidate_page page;
    int64_t after;
    int limit;
    tpv_err_clear(&err);
    if (!api_study_param(req, resp) || !api_page_params(env, req, resp, &after, &limit))
        return;
    if (store_candidate_list(env->store, req->params[0], after, limit, env->limits.max_page_bytes,
                             &page, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    api_reply_json(resp, 200, api_candidate_page_json(&page));
    store_candidate_page_free(&page);
}

void api_handle_candidate_get(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    struct store_candidate cand;
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
    api_reply_json(resp, 200, api_candidate_json(&cand));
    store_candidate_free(&cand);
}

void api_handle_jbr_create(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    json_t *body = NULL, *pj = NULL;
    char *source = NULL, *params = NULL, kind[16], jid[STORE_ID_MAX], now[STORE_TIME_MAX];
    char location[96];
    struct tpv_jbr_params jp;
    tpv_err_clear(&err);
    if (!api_study_param(req, resp))
        return;
    if (!api_id_valid(req->params[1])) {
        api_reply_errorf(resp, TPV_ENOTFOUND, "candidate_id", "candidate %.64s not found",
                         req->params[1]);
        return;
    }
    /* The one rule for JBR parameters (core/jbr.h), here at submission; the worker reads the
     * stored params back through the same parser. */
    if (req->body_len > 0 && !api_body_object(req, resp, &body))
        goto out;
    if (tpv_jbr_params_parse(body, &jp, &err) != TPV_OK) {
        api_reply_error(resp, &err);
        goto out;
    }
    pj = tpv_jbr_params_json(&jp);
    if (!pj || !(params = json_dumps(pj, JSON_COMPACT))) {
        api_reply_errorf(resp, TPV_ENOMEM, NULL, "out of memory");
        goto out;
    }
    if (store_candidate_source(env->store, req->params[0], req->params[1], &source, kind, &err) !=
        TPV_OK) {
        api_reply_store_error(req, resp, &err);
        goto out;
    }
    if (strcmp(kind, "model") != 0 && strcmp(kind, "onnx") != 0) {
        api_reply_errorf(resp, TPV_EPRECONDITION, "candidate_id",
                         "JBR needs a model candidate (spec + weights, or an ONNX graph), not a "
                         "Jacobian dump");
        goto out;
    }
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
    struct store_job job;
    if (store_job_get(env->store, jid, &job, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        goto out;
    }
    snprintf(location, sizeof location, "/v1/jobs/%s", jid);
    api_reply_json(resp, 202, json_pack("{s:o}", "job", api_job_json(&job)));
    store_job_free(&job);
    api_response_add_header(resp, "Location", location);
out:
    free(source);
    free(params);
    json_decref(pj);
    json_decref(body);
}
