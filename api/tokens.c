/* tokens.c: token management over the API for the admin role: POST /v1/tokens (the new secret is
 * in that response only), GET /v1/tokens (names, roles, times; never secrets or hashes),
 * DELETE /v1/tokens/{name} (revoke).  `tpvd token ...` does the same on the data dir. */
#include "api/handlers.h"

#include <stdlib.h>
#include <string.h>

#include "core/tpv_log.h"
#include "api/render.h"
#include "storage/store.h"

void api_handle_token_create(const struct api_env *env, struct api_request *req,
                             struct api_response *resp)
{
    static const char *const keys[] = { "name", "role", NULL };
    json_t *body = NULL;
    const char *name, *role;
    if (!api_body_object(req, resp, &body))
        return;
    if (!api_check_keys(body, keys, "", resp) ||
        !api_get_string(body, "name", "name", true, STORE_TOKEN_NAME_MAX, &name, resp) ||
        !api_get_string(body, "role", "role", true, 8, &role, resp))
        goto out;
    /* The name and role rules are storage's: its TPV_EINVAL names the field. */
    char token[API_TOKEN_MAX], hex[65];
    struct tpv_err err;
    tpv_err_clear(&err);
    if (api_token_generate(token) != TPV_OK) {
        api_reply_errorf(resp, TPV_EINTERNAL, NULL, "no random bytes from the kernel");
        goto out;
    }
    if (api_token_hash(token, hex) != TPV_OK) {
        api_reply_errorf(resp, TPV_EINTERNAL, NULL, "cannot hash the new token");
    } else if (store_token_create(env->store, name, role, hex, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
    } else {
        log_info("rid=%s token created name=%s role=%s", req->request_id, tpv_log_token(name, STORE_TOKEN_NAME_MAX),
                 tpv_log_token(role, 8));
        api_reply_json(resp, 201, json_pack("{s:s,s:s,s:s}", "name", name, "role", role, "token",
                                            token));
    }
    explicit_bzero(token, sizeof token);
out:
    json_decref(body);
}

void api_handle_token_list(const struct api_env *env, struct api_request *req,
                           struct api_response *resp)
{
    struct tpv_err err;
    struct store_token_row *rows = NULL;
    size_t n = 0;
    tpv_err_clear(&err);
    if (store_token_list(env->store, &rows, &n, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    api_reply_json(resp, 200, api_token_list_json(rows, n));
    free(rows);
}

void api_handle_token_revoke(const struct api_env *env, struct api_request *req,
                             struct api_response *resp)
{
    struct tpv_err err;
    const char *name = req->params[0];
    tpv_err_clear(&err);
    if (!store_token_name_valid(name)) {
        api_reply_errorf(resp, TPV_ENOTFOUND, "name", "token %.64s not found", name);
        return;
    }
    if (store_token_revoke(env->store, name, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    log_info("rid=%s token revoked name=%s", req->request_id, tpv_log_token(name, STORE_TOKEN_NAME_MAX));
    api_reply_json(resp, 200, json_pack("{s:s,s:b}", "name", name, "revoked", 1));
}
