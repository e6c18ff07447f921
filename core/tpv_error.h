/* tpv_error.h: the one error catalogue of tpvd and the error context that carries details.
 *
 * Every function that can fail returns 0 (TPV_OK) or a negative tpv_code; what went wrong in
 * detail (which field, which tensor, which byte offset) goes into a struct tpv_err supplied by the
 * caller, never into globals.  The catalogue (TPV_ERROR_CATALOGUE) is append-only: it generates the
 * enum, the wire names of DESIGN.md section 5, the HTTP status and the default messages. */
#ifndef TPV_ERROR_H
#define TPV_ERROR_H

#include <stdarg.h>
#include <stddef.h>

/*        symbol                      value http  wire name               default message */
#define TPV_ERROR_CATALOGUE(X)                                                                    \
    X(TPV_OK,                           0, 200, "ok",                   "success")                \
    X(TPV_EINVAL,                      -1, 400, "invalid_argument",     "invalid argument")       \
    X(TPV_EUNAUTHENTICATED,            -2, 401, "unauthenticated",      "missing or invalid credentials") \
    X(TPV_EPERM,                       -3, 403, "permission_denied",    "permission denied")      \
    X(TPV_ENOTFOUND,                   -4, 404, "not_found",            "not found")              \
    X(TPV_EEXIST,                      -5, 409, "already_exists",       "already exists")         \
    X(TPV_EPRECONDITION,               -6, 409, "failed_precondition",  "failed precondition")    \
    X(TPV_ETOOLARGE,                   -7, 413, "payload_too_large",    "payload too large")      \
    X(TPV_EMEDIATYPE,                  -8, 415, "unsupported_media_type", "unsupported media type") \
    X(TPV_EBUSY,                       -9, 429, "resource_exhausted",   "too many requests")      \
    X(TPV_ENOSPACE,                   -10, 507, "resource_exhausted",   "insufficient storage or memory") \
    X(TPV_EINTERNAL,                  -11, 500, "internal",             "internal error")         \
    X(TPV_EUNAVAILABLE,               -12, 503, "unavailable",          "service unavailable")    \
    X(TPV_ENOMEM,                     -13, 500, "internal",             "out of memory")          \
    X(TPV_EIO,                        -14, 500, "internal",             "input/output error")     \
    X(TPV_EFORMAT,                    -15, 400, "invalid_argument",     "malformed file")         \
    X(TPV_ECANCELED,                  -16, 409, "canceled",             "operation canceled")     \
    X(TPV_EUNIMPLEMENTED,             -17, 501, "unimplemented",        "not implemented")        \
    X(TPV_EMETHOD,                    -18, 405, "method_not_allowed",   "method not allowed")     \
    X(TPV_EPRECONDITION_IF,           -19, 412, "failed_precondition",  "precondition failed")    \
    X(TPV_ENUMERIC,                   -20, 422, "invalid_argument",     "numerical failure")

enum tpv_code {
#define TPV_ERROR_ENUM_(sym, val, http, name, msg) sym = (val),
    TPV_ERROR_CATALOGUE(TPV_ERROR_ENUM_)
#undef TPV_ERROR_ENUM_
};

/* Messages and wire names are static strings; an unknown code maps to "internal". */
const char *tpv_strerror(int code);
const char *tpv_error_name(int code);
int tpv_error_http_status(int code);

/* Error context: filled by the function that fails, read by whoever reports it.
 * `field` names the offending input (a JSON path, a tensor name, "header") when there is one. */
#define TPV_ERR_FIELD_MAX 128
#define TPV_ERR_MSG_MAX 512
struct tpv_err {
    int code;
    char field[TPV_ERR_FIELD_MAX];
    char message[TPV_ERR_MSG_MAX];
};

/* Clears the context (code TPV_OK, empty strings).  NULL is a no-op. */
void tpv_err_clear(struct tpv_err *err);

/* Records code, field (may be NULL) and a printf-formatted message; returns `code` so that a
 * failing function can `return tpv_err_set(err, TPV_EINVAL, "shape", "...")`.  err may be NULL,
 * in which case only the code is returned.  Messages longer than TPV_ERR_MSG_MAX are truncated. */
int tpv_err_set(struct tpv_err *err, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int tpv_err_setv(struct tpv_err *err, int code, const char *field, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

/* Prefixes the existing message with "<prefix>: " (e.g. the name of the file being read). */
void tpv_err_prefix(struct tpv_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The message to show a client: err->message if set, else the catalogue's default. */
const char *tpv_err_message(const struct tpv_err *err);

#endif
