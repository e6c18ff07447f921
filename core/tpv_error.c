/* tpv_error.c: the catalogue's string tables and the error context helpers (see tpv_error.h). */
#include "core/tpv_error.h"

#include <stdio.h>
#include <string.h>

/* Switches without `default:` so that -Wswitch flags a catalogue entry left out. */
const char *tpv_strerror(int code)
{
    switch ((enum tpv_code)code) {
#define TPV_ERROR_MSG_(sym, val, http, name, msg) case sym: return msg;
        TPV_ERROR_CATALOGUE(TPV_ERROR_MSG_)
#undef TPV_ERROR_MSG_
    }
    return "unknown error";
}

const char *tpv_error_name(int code)
{
    switch ((enum tpv_code)code) {
#define TPV_ERROR_NAME_(sym, val, http, name, msg) case sym: return name;
        TPV_ERROR_CATALOGUE(TPV_ERROR_NAME_)
#undef TPV_ERROR_NAME_
    }
    return "internal";
}

int tpv_error_http_status(int code)
{
    switch ((enum tpv_code)code) {
#define TPV_ERROR_HTTP_(sym, val, http, name, msg) case sym: return http;
        TPV_ERROR_CATALOGUE(TPV_ERROR_HTTP_)
#undef TPV_ERROR_HTTP_
    }
    return 500;
}

void tpv_err_clear(struct tpv_err *err)
{
    if (!err)
        return;
    err->code = TPV_OK;
    err->field[0] = '\0';
    err->message[0] = '\0';
}

int tpv_err_setv(struct tpv_err *err, int code, const char *field, const char *fmt, va_list ap)
{
    if (!err)
        return code;
    err->code = code;
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    return code;
}

int tpv_err_set(struct tpv_err *err, int code, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tpv_err_setv(err, code, field, fmt, ap);
    va_end(ap);
    return code;
}

void tpv_err_prefix(struct tpv_err *err, const char *fmt, ...)
{
    char prefix[TPV_ERR_MSG_MAX];
    char old[TPV_ERR_MSG_MAX];
    va_list ap;

    if (!err)
        return;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->message, sizeof old);
    /* Built by hand: truncation of either part is intended, and snprintf("%s: %s") would warn. */
    size_t cap = sizeof err->message, plen = strnlen(prefix, cap - 3), olen = strnlen(old, cap);
    memcpy(err->message, prefix, plen);
    memcpy(err->message + plen, ": ", 2);
    if (olen > cap - 1 - plen - 2)
        olen = cap - 1 - plen - 2;
    memcpy(err->message + plen + 2, old, olen);
    err->message[plen + 2 + olen] = '\0';
}

const char *tpv_err_message(const struct tpv_err *err)
{
    if (err && err->message[0])
        return err->message;
    return tpv_strerror(err ? err->code : TPV_EINTERNAL);
}
