/* health.c: liveness (/healthz: the process answers) and readiness (/readyz: its database answers
 * and its workers are running). */
#include "api/handlers.h"
#include "storage/store.h"

void api_handle_healthz(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    (void)env;
    (void)req;
    api_reply_json(resp, 200, json_pack("{s:s}", "status", "ok"));
}

void api_handle_readyz(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    (void)req;
    tpv_err_clear(&err);
    if (!env->store || store_ping(env->store, &err) != TPV_OK) {
        if (err.code == TPV_OK)
            tpv_err_set(&err, TPV_EUNAVAILABLE, NULL, "database not open");
        api_reply_error(resp, &err);
        return;
    }
    if (env->workers_alive && !env->workers_alive(env->workers_ctx)) {
        api_reply_errorf(resp, TPV_EUNAVAILABLE, "workers", "job workers are not running");
        return;
    }
    api_reply_json(resp, 200, json_pack("{s:s,s:i,s:b}", "status", "ready", "schema_version",
                                        store_schema_version(env->store), "workers",
                                        env->workers_alive != NULL));
}
