/* lifecycle.c: removing and retrying what a study holds (DESIGN.md section 5): DELETE of a
 * study or a candidate, POST .../retry of a failed or canceled one. */
#include "api/handlers.h"

#include <stdio.h>

#include "api/render.h"
#include "storage/store.h"

/* {sid} and {cid} (params[0], params[1]) are well-formed, else a 404 was sent. */
static bool candidate_params(const struct api_request *req, struct api_response *resp)
{
    if (!api_study_param(req, resp))
        return false;
    if (api_id_valid(req->params[1]))
        return true;
    api_reply_errorf(resp, TPV_ENOTFOUND, "candidate_id", "candidate %.64s not found",
                     req->params[1]);
    return false;
}

void api_handle_study_delete(const struct api_env *env, struct api_request *req,
                             struct api_response *resp)
{
    struct tpv_err err;
    tpv_err_clear(&err);
    if (!api_study_param(req, resp))
        return;
    if (store_study_delete(env->store, req->params[0], &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    api_reply_empty(resp, 204);
}

void api_handle_candidate_delete(const struct api_env *env, struct api_request *req,
                                 struct api_response *resp)
{
    struct tpv_err err;
    tpv_err_clear(&err);
    if (!candidate_params(req, resp))
        return;
    if (store_candidate_delete(env->store, req->params[0], req->params[1], &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    api_reply_empty(resp, 204);
}

void api_handle_candidate_retry(const struct api_env *env, struct api_request *req,
                                struct api_response *resp)
{
    struct tpv_err err;
    char jid[STORE_ID_MAX], location[96];
    struct store_job job;
    tpv_err_clear(&err);
    if (!candidate_params(req, resp))
        return;
    if (req->body_len > 0) { /* nothing to say in a body, but a typo there must not pass */
        static const char *const none[] = { NULL };
        json_t *body = NULL;
        if (!api_body_object(req, resp, &body))
            return;
        bool ok = api_check_keys(body, none, "", resp);
        json_decref(body);
        if (!ok)
            return;
    }
    store_id_new(jid, "jb");
    int rc = store_candidate_retry(env->store, req->params[0], req->params[1], jid,
                                   env->limits.max_queued_jobs, &err);
    if (rc != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        if (rc == TPV_EBUSY)
            api_response_add_header(resp, "Retry-After", "5");
        return;
    }
    if (store_job_get(env->store, jid, &job, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    snprintf(location, sizeof location, "/v1/jobs/%s", jid);
    api_reply_json(resp, 202, json_pack("{s:o}", "job", api_job_json(&job)));
    store_job_free(&job);
    api_response_add_header(resp, "Location", location);
}
