/* jobs.c: GET /v1/jobs/{jid} (with wait=s: held until the job is terminal) and DELETE
 * /v1/jobs/{jid} (cancel), DESIGN.md section 5. */
#include "api/handlers.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/render.h"
#include "storage/store.h"

static bool job_terminal(const struct store_job *job)
{
    const char *st = job->state;
    return strcmp(st, "succeeded") == 0 || strcmp(st, "failed") == 0 ||
           strcmp(st, "canceled") == 0;
}

void api_handle_job_get(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    struct store_job job;
    int wait = 0;
    tpv_err_clear(&err);
    if (!api_id_valid(req->params[0])) {
        api_reply_errorf(resp, TPV_ENOTFOUND, "job_id", "job %.64s not found", req->params[0]);
        return;
    }
    if (!api_wait_param(env, req, &wait, resp))
        return;
    if (store_job_get(env->store, req->params[0], &job, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    /* Every state change of a job bumps its study's version, which wakes the holds on that
     * study: the request comes back here and looks again, without a thread waiting meanwhile. */
    if (wait > 0 && !req->hold_expired && !job_terminal(&job) && job.study_id[0]) {
        resp->hold_seconds = wait;
        snprintf(resp->hold_study, sizeof resp->hold_study, "%s", job.study_id);
        store_job_free(&job);
        return;
    }
    api_reply_json(resp, 200, api_job_json(&job));
    store_job_free(&job);
}

void api_handle_job_cancel(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    struct store_job job;
    tpv_err_clear(&err);
    if (!api_id_valid(req->params[0])) {
        api_reply_errorf(resp, TPV_ENOTFOUND, "job_id", "job %.64s not found", req->params[0]);
        return;
    }
    if (store_job_cancel(env->store, req->params[0], &job, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    api_reply_json(resp, 200, api_job_json(&job));
    store_job_free(&job);
}
