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

/* Length of the valid UTF-8 sequence at s (1-4), or 0 when the bytes there are not one. */
static size_t utf8_seq(const unsigned char *s)
{
    size_t n;
    unsigned min;
    unsigned cp;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0)
        n = 2, min = 0x80, cp = s[0] & 0x1f;
    else if ((s[0] & 0xf0) == 0xe0)
        n = 3, min = 0x800, cp = s[0] & 0x0f;
    else if ((s[0] & 0xf8) == 0xf0)
        n = 4, min = 0x10000, cp = s[0] & 0x07;
    else
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* Messages quote client input (a JSON parser's complaint, an unknown key): bytes that are not
 * UTF-8 become '?' so that the error body is always valid JSON. */
static void utf8_clean(char *s)
{
    for (unsigned char *p = (unsigned char *)s; *p;) {
        size_t n = utf8_seq(p);
        if (n == 0)
            *p++ = '?';
        else
            p += n;
    }
}

void api_reply_error(struct api_response *resp, const struct tpv_err *in)
{
    struct tpv_err copy, *err = NULL;
    if (in) {
        copy = *in;
        copy.field[sizeof copy.field - 1] = '\0';
        copy.message[sizeof copy.message - 1] = '\0';
        utf8_clean(copy.field);
        utf8_clean(copy.message);
        err = &copy;
    }
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
