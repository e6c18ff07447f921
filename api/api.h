/* api.h: the whole interface of api/: routes, request and response values, JSON error replies.
 *
 * api/ knows nothing of libmicrohttpd: server/http.c turns each HTTP request into a struct
 * api_request, calls api_dispatch and sends the struct api_response back.  Handlers never format
 * error JSON by hand: they call api_reply_error*() and return. */
#ifndef TPV_API_H
#define TPV_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/tpv_error.h"

struct store;

/* What handlers may use; owned by the server, read-only for the api. */
struct api_env {
    struct store *store;
    const char *version; /* tpvd version string */
};

/* Path parameters captured by a route pattern ("{sid}" segments), in order. */
#define API_MAX_PARAMS 4
#define API_PARAM_MAX 128

struct api_request {
    const char *method;
    const char *path;
    const char *request_id;
    const char *body; /* NUL-terminated copy of the request body (may be empty), or NULL */
    size_t body_len;
    /* Accessors into the transport's request; return NULL when absent. */
    const char *(*header)(void *transport, const char *name);
    const char *(*query)(void *transport, const char *name);
    void *transport;
    /* Filled by api_dispatch from the matched route. */
    int nparams;
    char params[API_MAX_PARAMS][API_PARAM_MAX];
};

#define API_MAX_HEADERS 8
struct api_response {
    int status;
    char *body; /* malloc'd, owned by the response */
    size_t body_len;
    const char *content_type; /* static string */
    int nheaders;
    struct {
        const char *name; /* static string */
        char *value;      /* malloc'd */
    } headers[API_MAX_HEADERS];
};

/* Routes the request and runs its handler; always leaves a complete response in *resp
 * (404/405 JSON errors for unknown routes and methods).  resp must be zero-initialised;
 * release it with api_response_free. */
void api_dispatch(const struct api_env *env, struct api_request *req, struct api_response *resp);

/* Releases what a response owns; the struct itself is the caller's.  NULL is a no-op. */
void api_response_free(struct api_response *resp);

/* Replies with `body` serialised as JSON (compact).  Steals the reference to body. */
void api_reply_json(struct api_response *resp, int status, json_t *body);

/* Replies with the error shape of DESIGN.md section 5:
 * {"error":{"code":<wire name>,"message":...,"details":{"field":...}}} and the catalogue's status. */
void api_reply_error(struct api_response *resp, const struct tpv_err *err);
void api_reply_errorf(struct api_response *resp, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Adds a response header (value copied).  Returns 0 or TPV_ENOMEM/TPV_EINVAL when full. */
int api_response_add_header(struct api_response *resp, const char *name, const char *value);

#endif
