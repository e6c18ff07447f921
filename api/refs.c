/* refs.c: blob references given as URLs ({"url":"https://...","digest"?:...}) wherever the API
 * takes a blob digest, resolved before validation by fetching them through the server's fetcher
 * (env->fetch, server/fetch.c; the transport runs such requests off its HTTP threads, see
 * api_request_may_fetch); and the webhook URL check and secret.
 * Design: DESIGN.md section 5 ("A blob reference may also be {"url": ...}"). */
#include "api/handlers.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "core/tpv_log.h"
#include "storage/store.h"

#define URL_MAX_BYTES 2048
#define MAX_URL_REFS 16 /* fetches one request may ask for (each bounded by the fetch timeout) */

bool api_url_valid(const char *url)
{
    size_t skip;
    if (strncasecmp(url, "http://", 7) == 0)
        skip = 7;
    else if (strncasecmp(url, "https://", 8) == 0)
        skip = 8;
    else
        return false;
    for (const unsigned char *p = (const unsigned char *)url; *p; p++)
        if (*p <= 0x20 || *p == 0x7f)
            return false;
    const char *auth = url + skip;
    size_t alen = strcspn(auth, "/?#");
    const char *at = memchr(auth, '@', alen);
    const char *host = at ? at + 1 : auth;
    size_t hlen = alen - (size_t)(host - auth);
    if (hlen > 0 && host[0] == '[') {
        const char *close = memchr(host, ']', hlen);
        return close && close > host + 1;
    }
    const char *colon = memchr(host, ':', hlen);
    return (colon ? (size_t)(colon - host) : hlen) > 0;
}

int api_webhook_secret_new(char out[API_WEBHOOK_SECRET_MAX])
{
    unsigned char raw[32];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n <= 0)
            return TPV_EINTERNAL;
        got += (size_t)n;
    }
    int len = snprintf(out, API_WEBHOOK_SECRET_MAX, "whsec_");
    for (size_t i = 0; i < sizeof raw; i++)
        len += snprintf(out + len, (size_t)(API_WEBHOOK_SECRET_MAX - len), "%02x", raw[i]);
    memset(raw, 0, sizeof raw);
    return TPV_OK;
}

/* A cheap over-approximation: any "url" key in a JSON write (webhook_url does not match). */
bool api_request_may_fetch(const struct api_env *env, const struct api_request *req)
{
    return env->fetch && req->body && req->body_len > 0 &&
           (strcmp(req->method, "POST") == 0 || strcmp(req->method, "PUT") == 0) &&
           strstr(req->body, "\"url\"") != NULL;
}

struct ref_ctx {
    const struct api_env *env;
    struct api_request *req;
    struct api_response *resp;
    int fetches;
};

/* Resolves parent[key] when it is a URL reference; true when nothing needed doing. */
static bool resolve_one(struct ref_ctx *rc, json_t *parent, const char *key, const char *field)
{
    static const char *const ref_keys[] = { "url", "digest", NULL };
    json_t *v = json_object_get(parent, key);
    if (!json_is_object(v) || !json_object_get(v, "url"))
        return true;
    char prefix[160];
    snprintf(prefix, sizeof prefix, "%s.", field);
    if (!api_check_keys(v, ref_keys, prefix, rc->resp))
        return false;
    const char *url = json_string_value(json_object_get(v, "url"));
    const char *expect = json_string_value(json_object_get(v, "digest"));
    if (!url || strlen(url) > URL_MAX_BYTES || !api_url_valid(url)) {
        api_reply_errorf(rc->resp, TPV_EINVAL, field,
                         "%s.url must be an absolute http:// or https:// URL of at most %d bytes",
                         field, URL_MAX_BYTES);
        return false;
    }
    if (json_object_get(v, "digest") && (!expect || !store_digest_valid(expect))) {
        api_reply_errorf(rc->resp, TPV_EINVAL, field,
                         "%s.digest must be a digest sha256:<64 lowercase hex>", field);
        return false;
    }
    char digest[STORE_DIGEST_MAX];
    struct tpv_err err;
    tpv_err_clear(&err);
    if (expect && store_blob_stat(rc->env->store, expect, NULL, &err) == TPV_OK) {
        snprintf(digest, sizeof digest, "%s", expect); /* already here: no fetch */
    } else {
        if (!rc->env->fetch) {
            api_reply_errorf(rc->resp, TPV_EPERM, field,
                             "%s: this server does not fetch blobs by URL", field);
            return false;
        }
        if (++rc->fetches > MAX_URL_REFS) {
            api_reply_errorf(rc->resp, TPV_EINVAL, field,
                             "at most %d URL blob references per request", MAX_URL_REFS);
            return false;
        }
        tpv_err_clear(&err);
        int code = rc->env->fetch(rc->env->fetch_ctx, url, expect, field, digest, sizeof digest,
                                  &err);
        if (code != TPV_OK) {
            if (!err.field[0])
                snprintf(err.field, sizeof err.field, "%s", field);
            if (code == TPV_EIO || code == TPV_EINTERNAL || code == TPV_ENOMEM)
                api_reply_store_error(rc->req, rc->resp, &err);
            else
                api_reply_error(rc->resp, &err);
            return false;
        }
        log_info("rid=%s fetched %s -> %s", rc->req->request_id, field, digest);
    }
    json_object_set_new(parent, key, json_string(digest));
    return true;
}

bool api_resolve_refs(const struct api_env *env, struct api_request *req, json_t *body,
                      enum api_ref_site site, struct api_response *resp)
{
    struct ref_ctx rc = { env, req, resp, 0 };
    switch (site) {
    case API_REFS_INPUTS:
        /* The body itself may be the reference: {"url": ..., "digest"?: ...}. */
        if (json_object_get(body, "url") && !json_object_get(body, "blob")) {
            json_t *ref = json_pack("{s:O}", "url", json_object_get(body, "url"));
            if (ref && json_object_get(body, "digest"))
                json_object_set(ref, "digest", json_object_get(body, "digest"));
            json_object_del(body, "url");
            json_object_del(body, "digest");
            json_object_set_new(body, "blob", ref);
        }
        return resolve_one(&rc, body, "blob", "blob");
    case API_REFS_CANDIDATE: {
        json_t *model = json_object_get(body, "model"), *jac = json_object_get(body, "jacobian");
        if (json_is_object(model) && (!resolve_one(&rc, model, "spec", "model.spec") ||
                                      !resolve_one(&rc, model, "weights", "model.weights") ||
                                      !resolve_one(&rc, model, "onnx", "model.onnx")))
            return false;
        if (json_is_object(jac) && (!resolve_one(&rc, jac, "fit", "jacobian.fit") ||
                                    !resolve_one(&rc, jac, "probe", "jacobian.probe")))
            return false;
        return resolve_one(&rc, body, "weights", "weights");
    }
    case API_REFS_STUDY: {
        json_t *models = json_object_get(body, "noise_models");
        for (size_t i = 0; i < json_array_size(models); i++) {
            json_t *m = json_array_get(models, i);
            char f1[64], f2[64];
            snprintf(f1, sizeof f1, "noise_models[%zu].variances", i);
            snprintf(f2, sizeof f2, "noise_models[%zu].mask", i);
            if (json_is_object(m) &&
                (!resolve_one(&rc, m, "variances", f1) || !resolve_one(&rc, m, "mask", f2)))
                return false;
        }
        return true;
    }
    }
    return true;
}
