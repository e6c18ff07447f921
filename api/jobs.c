/* jobs.c: GET /v1/jobs/{jid} and DELETE /v1/jobs/{jid} (cancel), DESIGN.md section 5. */
#include "api/handlers.h"

#include "storage/store.h"

void api_handle_job_get(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    json_t *job = NULL;
    tpv_err_clear(&err);
    if (!api_id_valid(req->params[0])) {
        api_reply_errorf(resp, TPV_ENOTFOUND, "job_id", "job %.64s not found", req->params[0]);
        return;
    }
    if (store_job_get(env->store, req->params[0], &job, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    api_reply_json(resp, 200, job);
}

void api_handle_job_cancel(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    json_t *job = NULL;
    tpv_err_clear(&err);
    if (!api_id_valid(req->params[0])) {
        api_reply_errorf(resp, TPV_ENOTFOUND, "job_id", "job %.64s not found", req->params[0]);
        return;
    }
    if (store_job_cancel(env->store, req->params[0], &job, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    api_reply_json(resp, 200, job);
}
