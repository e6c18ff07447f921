/* reply.c: response construction: JSON bodies, the error shape, headers (see api.h). */
#include "api/api.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json_alloc.h"

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

/* The number as jansson spells a real: a ".0" when it would read back as an integer, no '+' and
 * no leading zeros in the exponent ("1e-05" -> "1e-5"). */
static size_t real_spell(char *buf, size_t len, size_t cap)
{
    if (!strpbrk(buf, ".e") && len + 2 < cap) {
        memcpy(buf + len, ".0", 3);
        len += 2;
    }
    char *e = strchr(buf, 'e');
    if (e) {
        char *start = e + 1, *end;
        if (*start == '-')
            start++;
        end = start;
        while (*end == '+' || *end == '0')
            end++;
        if (*end == '\0') /* keep one digit of an exponent that was all zeros */
            end--;
        memmove(start, end, strlen(end) + 1);
        len = strlen(buf);
    }
    return len;
}

/* Writes into buf (cap > len) the shortest spelling of the finite v that strtod reads back
 * exactly and returns its length; `token` (len bytes) is jansson's %.17g spelling of v, which
 * always reads back and is the one to beat.  For normal numbers P = 15 and 16 are the other
 * candidates: decimals of at most 15 digits map to distinct doubles (DBL_DIG), so a %.15g that
 * reads back has no shorter equivalent.  Below 1e15 every P >= 15 writes the same notation, so
 * the first P that reads back is the shortest; from 1e15 on %.15g may switch to an exponent and
 * grow ("1.23456789012345e15" vs "1234567890123450.0"), so lengths are compared.  Subnormals
 * carry fewer digits ("5e-324") and try every P from 1. */
static size_t real_shortest(double v, const char *token, size_t len, char *buf, size_t cap)
{
    char cand[40];
    memcpy(buf, token, len + 1);
    bool subnormal = v != 0 && fabs(v) < DBL_MIN;
    for (int p = subnormal ? 1 : 15; p <= 16; p++) {
        int n = snprintf(cand, sizeof cand, "%.*g", p, v);
        if (n <= 0 || (size_t)n >= sizeof cand - 2 || strtod(cand, NULL) != v)
            continue;
        size_t clen = real_spell(cand, (size_t)n, sizeof cand);
        if (clen < len && clen < cap) {
            memcpy(buf, cand, clen + 1);
            len = clen;
        }
        if (fabs(v) < 1e15)
            break;
    }
    return len;
}

/* Rewrites, in place, every real of jansson's output `text` in its shortest spelling; everything
 * else (strings, integers, layout) stays byte for byte.  jansson writes reals with %.17g, always
 * with a '.' or an 'e', and integers with neither, so a number token outside strings that holds
 * one of them is a real.  The shortest spelling is never longer than jansson's (P = 17 is one of
 * the candidates), so the text only shrinks. */
static void reals_shorten(char *text)
{
    char *in = text, *out = text;
    bool in_string = false;
    while (*in) {
        char ch = *in;
        if (in_string) {
            *out++ = *in++;
            if (ch == '\\' && *in)
                *out++ = *in++;
            else if (ch == '"')
                in_string = false;
            continue;
        }
        if (ch == '"') {
            in_string = true;
            *out++ = *in++;
            continue;
        }
        if (ch != '-' && (ch < '0' || ch > '9')) {
            *out++ = *in++;
            continue;
        }
        size_t n = strspn(in, "0123456789+-.eE");
        char token[40], best[40];
        size_t len = 0;
        if (n < sizeof token && (memchr(in, '.', n) || memchr(in, 'e', n) || memchr(in, 'E', n))) {
            memcpy(token, in, n);
            token[n] = '\0';
            double v = strtod(token, NULL);
            if (isfinite(v))
                len = real_shortest(v, token, n, best, sizeof best);
        }
        if (len > 0 && len <= n) {
            memmove(out, best, len);
            out += len;
        } else {
            memmove(out, in, n);
            out += n;
        }
        in += n;
    }
    *out = '\0';
}

char *api_json_dumps(const json_t *json, size_t flags)
{
    char *text = tpv_json_dump(json, flags);
    if (text)
        reals_shorten(text);
    return text;
}

void api_reply_json(struct api_response *resp, int status, json_t *body)
{
    char *text = body ? api_json_dumps(body, JSON_COMPACT) : NULL;
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
    if (resp->nheaders >= API_MAX_HEADERS) {
        resp->incomplete = true;
        return TPV_EINVAL;
    }
    char *copy = strdup(value);
    if (!copy) {
        resp->incomplete = true;
        return TPV_ENOMEM;
    }
    resp->headers[resp->nheaders].name = name;
    resp->headers[resp->nheaders].value = copy;
    resp->nheaders++;
    return TPV_OK;
}
