/* router.c: the route table of the REST API (DESIGN.md section 5) and path matching.
 *
 * Patterns are literal segments and "{name}" captures; a path that matches some pattern under
 * another method gets 405 with an Allow header, anything else 404. */
#include "api/api.h"
#include "api/handlers.h"

#include <stdio.h>
#include <string.h>

struct api_route {
    const char *method;
    const char *pattern;
    api_handler_fn handler;
};

static const struct api_route routes[] = {
    { "GET", "/healthz", api_handle_healthz },
    { "GET", "/readyz", api_handle_readyz },
};

/* Matches `path` against `pattern` segment by segment, capturing {..} segments into req->params.
 * A capture must be non-empty and fit API_PARAM_MAX. */
static bool route_match(const char *pattern, const char *path, struct api_request *req)
{
    int nparams = 0;
    while (*pattern == '/' && *path == '/') {
        pattern++;
        path++;
        size_t plen = strcspn(pattern, "/");
        size_t slen = strcspn(path, "/");
        if (plen > 1 && pattern[0] == '{' && pattern[plen - 1] == '}') {
            if (slen == 0 || slen >= API_PARAM_MAX || nparams >= API_MAX_PARAMS)
                return false;
            memcpy(req->params[nparams], path, slen);
            req->params[nparams][slen] = '\0';
            nparams++;
        } else if (plen != slen || memcmp(pattern, path, plen) != 0) {
            return false;
        }
        pattern += plen;
        path += slen;
    }
    if (*pattern != '\0' || *path != '\0')
        return false;
    req->nparams = nparams;
    return true;
}

void api_dispatch(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    char allow[64] = "";
    size_t nroutes = sizeof routes / sizeof routes[0];

    for (size_t i = 0; i < nroutes; i++) {
        if (!route_match(routes[i].pattern, req->path, req))
            continue;
        if (strcmp(routes[i].method, req->method) == 0 ||
            (strcmp(req->method, "HEAD") == 0 && strcmp(routes[i].method, "GET") == 0)) {
            routes[i].handler(env, req, resp);
            return;
        }
        size_t used = strlen(allow);
        snprintf(allow + used, sizeof allow - used, "%s%s", used ? ", " : "", routes[i].method);
    }
    if (allow[0]) {
        api_reply_errorf(resp, TPV_EMETHOD, "method", "method %s is not allowed on %s", req->method,
                         req->path);
        api_response_add_header(resp, "Allow", allow);
        return;
    }
    api_reply_errorf(resp, TPV_ENOTFOUND, "path", "no route for %s %s", req->method, req->path);
}
