/* reply.c: response construction: JSON bodies, the error shape, headers (see api.h). */
#include "api/api.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void api_response_free(struct api_response *resp)
{
    if (!resp)
        return;
    free(resp->body);
    for (int i = 0; i < resp->nheaders; i++)
        free(resp->headers[i].value);
    memset(resp, 0, sizeof *resp);
}

static void reply_raw(struct api_response *resp, int status, char *body, size_t len)
{
    free(resp->body);
    resp->status = status;
    resp->body = body;
    resp->body_len = len;
    resp->content_type = "application/json";
}

/* Last resort when even the error body cannot be built: a static body would need no allocation,
 * but the response owns its body, so keep a tiny malloc and fall back to an empty 500. */
static void reply_oom(struct api_response *resp)
{
    static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
    char *copy = malloc(sizeof oom);
    if (copy)
        memcpy(copy, oom, sizeof oom);
    reply_raw(resp, 500, copy, copy ? sizeof oom - 1 : 0);
}

void api_reply_json(struct api_response *resp, int status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) {
        reply_oom(resp);
        return;
    }
    reply_raw(resp, status, text, strlen(text));
}

void api_reply_empty(struct api_response *resp, int status)
{
    free(resp->body);
    resp->body = NULL;
    resp->body_len = 0;
    resp->status = status;
    resp->content_type = NULL;
}

void api_reply_error(struct api_response *resp, const struct tpv_err *err)
{
    int code = err ? err->code : TPV_EINTERNAL;
    if (code == TPV_OK)
        code = TPV_EINTERNAL; /* a handler reporting "error: success" is itself a bug */
    json_t *details = json_object();
    if (err && err->field[0])
        json_object_set_new(details, "field", json_string(err->field));
    json_t *body = json_pack("{s:{s:s,s:s,s:o}}", "error", "code", tpv_error_name(code), "message",
                             err && err->message[0] ? err->message : tpv_strerror(code),
                             "details", details);
    api_reply_json(resp, tpv_error_http_status(code), body);
}

void api_reply_errorf(struct api_response *resp, int code, const char *field, const char *fmt, ...)
{
    struct tpv_err err;
    va_list ap;
    va_start(ap, fmt);
    tpv_err_setv(&err, code, field, fmt, ap);
    va_end(ap);
    api_reply_error(resp, &err);
}

int api_response_add_header(struct api_response *resp, const char *name, const char *value)
{
    if (resp->nheaders >= API_MAX_HEADERS)
        return TPV_EINVAL;
    char *copy = strdup(value);
    if (!copy)
        return TPV_ENOMEM;
    resp->headers[resp->nheaders].name = name;
    resp->headers[resp->nheaders].value = copy;
    resp->nheaders++;
    return TPV_OK;
}
