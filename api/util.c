/* util.c: helpers shared by the handlers: body parsing, key checks, pagination, store errors,
 * request hashing (see handlers.h). */
#include "api/handlers.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/tpv_log.h"
#include "storage/store.h"

const char *api_header(const struct api_request *req, const char *name)
{
    return req->header && req->transport ? req->header(req->transport, name) : NULL;
}

const char *api_query(const struct api_request *req, const char *name)
{
    return req->query && req->transport ? req->query(req->transport, name) : NULL;
}

/* Whether a Content-Type names JSON: application/json (parameters such as charset allowed). */
static bool media_type_is_json(const char *ct)
{
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strcspn(ct, "; \t");
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

bool api_body_object(const struct api_request *req, struct api_response *resp, json_t **out)
{
    json_error_t jerr;
    *out = NULL;
    /* An absent Content-Type is taken as JSON (curl users forget it); anything else is refused
     * rather than guessed at. */
    const char *ct = api_header(req, "Content-Type");
    if (ct && !media_type_is_json(ct)) {
        api_reply_errorf(resp, TPV_EMEDIATYPE, "Content-Type",
                         "this route takes application/json, not '%.100s'", ct);
        return false;
    }
    if (!req->body || req->body_len == 0) {
        api_reply_errorf(resp, TPV_EINVAL, "body", "a JSON object body is required");
        return false;
    }
    json_t *j = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        api_reply_errorf(resp, TPV_EINVAL, "body", "malformed JSON at line %d, column %d: %s",
                         jerr.line, jerr.column, jerr.text);
        return false;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        api_reply_errorf(resp, TPV_EINVAL, "body", "the body must be a JSON object");
        return false;
    }
    *out = j;
    return true;
}

bool api_check_keys(const json_t *obj, const char *const *allowed, const char *prefix,
                    struct api_response *resp)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, key) == 0;
        if (!ok) {
            char field[TPV_ERR_FIELD_MAX];
            snprintf(field, sizeof field, "%s%.100s", prefix, key[0] ? key : "\"\"");
            api_reply_errorf(resp, TPV_EINVAL, field, "unknown field '%s'", field);
            return false;
        }
    }
    return true;
}

bool api_page_params(const struct api_env *env, const struct api_request *req,
                     struct api_response *resp, int64_t *after, int *limit)
{
    int max = env->limits.max_page_size > 0 ? env->limits.max_page_size : 500;
    const char *size = api_query(req, "page_size"), *token = api_query(req, "page_token");
    *after = 0;
    *limit = max < 50 ? max : 50;
    if (size) {
        char *end;
        errno = 0;
        long v = strtol(size, &end, 10);
        if (errno || end == size || *end || v < 1 || v > max) {
            api_reply_errorf(resp, TPV_EINVAL, "page_size", "page_size must be an integer in [1, %d]",
                             max);
            return false;
        }
        *limit = (int)v;
    }
    if (token && token[0] && store_page_token_decode(token, after) != TPV_OK) {
        api_reply_errorf(resp, TPV_EINVAL, "page_token", "page_token is not one this server issued");
        return false;
    }
    return true;
}

void api_reply_store_error(const struct api_request *req, struct api_response *resp,
                           const struct tpv_err *err)
{
    int status = tpv_error_http_status(err->code);
    if (status >= 500)
        log_error("rid=%s store: %s", req->request_id ? req->request_id : "-",
                  tpv_log_text(tpv_err_message(err), TPV_ERR_MSG_MAX));
    if (status == 500) {
        /* Database detail stays in the log; the client gets the catalogue's message. */
        api_reply_errorf(resp, TPV_EINTERNAL, NULL, "internal error (request id %s)",
                         req->request_id ? req->request_id : "-");
        return;
    }
    api_reply_error(resp, err);
}

int api_body_hash(const struct api_request *req, char out[65], struct tpv_err *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    out[0] = '\0';
    if (EVP_Digest(req->body ? req->body : "", req->body ? req->body_len : 0, md, &len,
                   EVP_sha256(), NULL) != 1 ||
        len != 32)
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "SHA-256 of the request body failed");
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    out[64] = '\0';
    return TPV_OK;
}

/* json_dump_callback sink that only counts, and stops the dump once past the cap. */
struct size_count {
    size_t bytes, cap;
};

static int count_bytes(const char *buffer, size_t size, void *data)
{
    (void)buffer;
    struct size_count *c = data;
    c->bytes += size;
    return c->bytes > c->cap ? -1 : 0;
}

bool api_check_metadata_size(const struct api_env *env, const json_t *meta, const char *field,
                             struct api_response *resp)
{
    uint64_t max = env->limits.max_metadata_bytes;
    if (!json_is_object(meta) || max == 0) /* absent or null: nothing to bound */
        return true;
    struct size_count c = { 0, max > SIZE_MAX ? SIZE_MAX : (size_t)max };
    if (json_dump_callback(meta, count_bytes, &c, JSON_COMPACT) == 0 && c.bytes <= c.cap)
        return true;
    api_reply_errorf(resp, TPV_ETOOLARGE, field,
                     "%s takes more than %llu bytes as compact JSON (the limit is "
                     "--max-metadata-bytes)", field, (unsigned long long)max);
    return false;
}

void api_err_hide_path(struct tpv_err *err, const char *path, const char *shown)
{
    size_t plen = strlen(path), slen = strlen(shown);
    if (plen == 0)
        return;
    char out[sizeof err->message];
    size_t o = 0;
    for (const char *p = err->message; *p && o + 1 < sizeof out;) {
        if (strncmp(p, path, plen) == 0) {
            size_t n = slen < sizeof out - 1 - o ? slen : sizeof out - 1 - o;
            memcpy(out + o, shown, n);
            o += n;
            p += plen;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
    memcpy(err->message, out, o + 1);
}

bool api_id_valid(const char *id)
{
    size_t n = strlen(id);
    return n > 0 && n < 64 &&
           strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

bool api_wait_param(const struct api_env *env, const struct api_request *req, int *out,
                    struct api_response *resp)
{
    const char *wait = api_query(req, "wait");
    *out = 0;
    if (!wait)
        return true;
    char *end;
    errno = 0;
    long w = strtol(wait, &end, 10);
    if (errno || end == wait || *end || w < 0) {
        api_reply_errorf(resp, TPV_EINVAL, "wait", "wait must be a whole number of seconds");
        return false;
    }
    int cap = env->limits.max_wait_s > 0 ? env->limits.max_wait_s : 60;
    *out = w > cap ? cap : (int)w;
    return true;
}
