/* router.c: the route table of the REST API (DESIGN.md section 5) and path matching.
 *
 * Patterns are literal segments and "{name}" captures; a path that matches some pattern under
 * another method gets 405 with an Allow header, anything else 404.  Routes with stream ops take
 * their body as a stream (blob uploads) instead of a buffered JSON body. */
#include "api/api.h"
#include "api/handlers.h"
#include "core/tpv_log.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

struct api_route {
    const char *method;
    const char *pattern;
    api_handler_fn handler;
    const struct api_stream_ops *stream; /* NULL: buffered body */
    enum api_role role;                  /* the least role that may call it */
    bool tail; /* the last {capture} takes the rest of the path, slashes included (the dashboard) */
};

static const struct api_route routes[] = {
    { "GET", "/healthz", api_handle_healthz, NULL, API_ROLE_OPEN },
    { "GET", "/readyz", api_handle_readyz, NULL, API_ROLE_OPEN },
    { "GET", "/metrics", api_handle_metrics, NULL, API_ROLE_READ },
    { "GET", "/openapi.json", api_handle_openapi, NULL, API_ROLE_OPEN },
    { "PUT", "/v1/blobs", api_handle_blob_put, &api_blob_stream, API_ROLE_WRITE },
    { "PUT", "/v1/blobs/{digest}", api_handle_blob_put, &api_blob_stream, API_ROLE_WRITE },
    { "HEAD", "/v1/blobs/{digest}", api_handle_blob_head, NULL, API_ROLE_READ },
    { "DELETE", "/v1/blobs/{digest}", api_handle_blob_delete, NULL, API_ROLE_WRITE },
    { "POST", "/v1/studies", api_handle_study_create, NULL, API_ROLE_WRITE },
    { "GET", "/v1/studies", api_handle_study_list, NULL, API_ROLE_READ },
    { "GET", "/v1/studies/{sid}", api_handle_study_get, NULL, API_ROLE_READ },
    { "DELETE", "/v1/studies/{sid}", api_handle_study_delete, NULL, API_ROLE_WRITE },
    { "PUT", "/v1/studies/{sid}/inputs/{split}", api_handle_inputs_put, NULL, API_ROLE_WRITE },
    { "POST", "/v1/studies/{sid}/candidates", api_handle_candidate_create, NULL, API_ROLE_WRITE },
    { "GET", "/v1/studies/{sid}/candidates", api_handle_candidate_list, NULL, API_ROLE_READ },
    { "GET", "/v1/studies/{sid}/candidates/{cid}", api_handle_candidate_get, NULL, API_ROLE_READ },
    { "POST", "/v1/studies/{sid}/candidates/{cid}/jbr", api_handle_jbr_create, NULL, API_ROLE_WRITE },
    { "DELETE", "/v1/studies/{sid}/candidates/{cid}", api_handle_candidate_delete, NULL,
      API_ROLE_WRITE },
    { "POST", "/v1/studies/{sid}/candidates/{cid}/retry", api_handle_candidate_retry, NULL,
      API_ROLE_WRITE },
    { "GET", "/v1/studies/{sid}/ranking", api_handle_ranking, NULL, API_ROLE_READ },
    { "PUT", "/v1/studies/{sid}/candidates/{cid}/metrics", api_handle_metrics_put, NULL,
      API_ROLE_WRITE },
    { "GET", "/v1/studies/{sid}/agreement", api_handle_agreement, NULL, API_ROLE_READ },
    { "GET", "/v1/jobs/{jid}", api_handle_job_get, NULL, API_ROLE_READ },
    { "DELETE", "/v1/jobs/{jid}", api_handle_job_cancel, NULL, API_ROLE_WRITE },
    { "POST", "/v1/tokens", api_handle_token_create, NULL, API_ROLE_ADMIN },
    { "GET", "/v1/tokens", api_handle_token_list, NULL, API_ROLE_ADMIN },
    { "DELETE", "/v1/tokens/{name}", api_handle_token_revoke, NULL, API_ROLE_ADMIN },
    /* The dashboard is open: its data comes through the routes above, with the user's token. */
    { "GET", "/ui/", api_handle_ui, NULL, API_ROLE_OPEN },
    { "GET", "/ui/{page}", api_handle_ui, NULL, API_ROLE_OPEN, .tail = true },
};
#define ROUTE_COUNT (sizeof routes / sizeof routes[0])

/* The query parameters each route reads; a route not listed here takes none.  Anything else is
 * refused with 400 naming it, on every route, so that a typo ("max_train_los") never silently
 * changes an answer.  Kept beside the route table rather than in it so that adding a route does
 * not have to say anything about parameters. */
static const char *const q_page[] = { "page_size", "page_token", NULL };
static const char *const q_ranking[] = { "by", "split", "max_train_loss", "wait", NULL };
static const char *const q_wait[] = { "wait", NULL };
static const char *const q_agreement[] = { "metric", NULL };
/* The dashboard keeps its view in its own address (api/ui_assets/app.js): a reload or a shared
 * link brings these back to the page, which reads them itself. */
static const char *const q_ui[] = { "by", "split", "max_train_loss", "candidate", "metric", NULL };
static const struct {
    const char *method;
    const char *pattern;
    const char *const *allowed;
} route_queries[] = {
    { "GET", "/v1/studies", q_page },
    { "GET", "/v1/studies/{sid}/candidates", q_page },
    { "GET", "/v1/studies/{sid}/ranking", q_ranking },
    { "GET", "/v1/jobs/{jid}", q_wait },
    { "GET", "/v1/studies/{sid}/agreement", q_agreement },
    { "GET", "/ui/", q_ui },
    { "GET", "/ui/{page}", q_ui },
};

static const char *const *route_allowed_query(const struct api_route *r)
{
    for (size_t i = 0; i < sizeof route_queries / sizeof route_queries[0]; i++)
        if (strcmp(route_queries[i].method, r->method) == 0 &&
            strcmp(route_queries[i].pattern, r->pattern) == 0)
            return route_queries[i].allowed;
    return NULL;
}

struct query_check {
    const char *const *allowed; /* NULL-terminated, or NULL: none */
    char unknown[API_PARAM_MAX]; /* first refused name, "" when none */
};

static bool query_check_one(void *ctx, const char *name)
{
    struct query_check *qc = ctx;
    for (const char *const *a = qc->allowed; a && *a; a++)
        if (strcmp(*a, name) == 0)
            return true;
    snprintf(qc->unknown, sizeof qc->unknown, "%s", name);
    return false;
}

/* The shared check of query parameters against the route's list: replies 400 naming the first
 * unknown one and returns false. */
static bool query_params_allowed(const struct api_route *r, const struct api_request *req,
                                 struct api_response *resp)
{
    struct query_check qc = { .allowed = route_allowed_query(r), .unknown = "" };
    if (!req->query_each || !req->transport)
        return true;
    req->query_each(req->transport, query_check_one, &qc);
    if (!qc.unknown[0])
        return true;
    char list[160] = "";
    for (const char *const *a = qc.allowed; a && *a; a++) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%s", used ? ", " : "", *a);
    }
    api_reply_errorf(resp, TPV_EINVAL, qc.unknown, "unknown query parameter '%.64s' (%s%s)",
                     qc.unknown, list[0] ? "this route takes: " : "this route takes none",
                     list);
    return false;
}

size_t api_route_count(void)
{
    return ROUTE_COUNT;
}

const char *api_route_method(size_t i)
{
    return i < ROUTE_COUNT ? routes[i].method : NULL;
}

const char *api_route_pattern(size_t i)
{
    return i < ROUTE_COUNT ? routes[i].pattern : NULL;
}

/* Matches `path` against `pattern` segment by segment, capturing {..} segments into req->params.
 * A capture must be non-empty and fit API_PARAM_MAX, except a tail capture (the last one of a
 * `tail` route), which takes the rest of the path and is cut to fit (handlers read req->path). */
static bool route_match(const char *pattern, const char *path, bool tail, struct api_request *req)
{
    int nparams = 0;
    while (*pattern == '/' && *path == '/') {
        pattern++;
        path++;
        size_t plen = strcspn(pattern, "/");
        size_t slen = strcspn(path, "/");
        if (tail && pattern[plen] == '\0' && plen > 1 && pattern[0] == '{') {
            size_t rest = strlen(path);
            if (rest == 0 || nparams >= API_MAX_PARAMS)
                return false;
            slen = rest < API_PARAM_MAX ? rest : API_PARAM_MAX - 1;
            memcpy(req->params[nparams], path, slen);
            req->params[nparams][slen] = '\0';
            nparams++;
            req->nparams = nparams;
            return true;
        }
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

static bool method_matches(const struct api_route *r, const char *method)
{
    return strcmp(r->method, method) == 0 ||
           (strcmp(method, "HEAD") == 0 && strcmp(r->method, "GET") == 0);
}

/* The route for METHOD PATH, or -1; *allow collects the methods of routes matching the path. */
static int route_find(struct api_request *req, char *allow, size_t cap)
{
    int fallback = -1;
    if (allow)
        allow[0] = '\0';
    for (size_t i = 0; i < ROUTE_COUNT; i++) {
        if (!route_match(routes[i].pattern, req->path, routes[i].tail, req))
            continue;
        if (strcmp(routes[i].method, req->method) == 0)
            return (int)i;
        if (method_matches(&routes[i], req->method)) {
            if (fallback < 0)
                fallback = (int)i; /* HEAD served by GET unless an explicit HEAD route follows */
            continue;
        }
        if (allow) {
            size_t used = strlen(allow);
            snprintf(allow + used, cap - used, "%s%s", used ? ", " : "", routes[i].method);
        }
    }
    if (fallback >= 0)
        route_match(routes[fallback].pattern, req->path, routes[fallback].tail, req);
    return fallback;
}

/* Runs a route's handler and holds it to its contract: a handler that returns with neither a
 * reply nor a hold (a bug, or an allocation failure it did not report), or whose reply lost a
 * header (api_response_add_header failed), gets 500 internal here, so that the transport never
 * sends status 0 nor a reply without the header its handler meant to send. */
static void run_handler(const struct api_route *r, const struct api_env *env,
                        struct api_request *req, struct api_response *resp)
{
    r->handler(env, req, resp);
    if (!resp->incomplete && (resp->status != 0 || resp->hold_seconds > 0))
        return;
    log_error("rid=%s route %s %s returned %s: answering 500",
              req->request_id ? req->request_id : "-", r->method, r->pattern,
              resp->incomplete ? "a reply missing a header" : "without a reply");
    api_response_free(resp); /* whatever half of a reply it left */
    api_reply_errorf(resp, TPV_EINTERNAL, NULL, "internal error (request id %s)",
                     req->request_id ? req->request_id : "-");
}

void api_dispatch(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    char allow[64];
    int i = route_find(req, allow, sizeof allow);
    req->route = i;
    if (i >= 0 && !env->store && strncmp(routes[i].pattern, "/v1/", 4) == 0) {
        api_reply_errorf(resp, TPV_EUNAVAILABLE, NULL, "storage is not available");
        return;
    }
    if (i >= 0 && !query_params_allowed(&routes[i], req, resp))
        return;
    if (i >= 0) {
        run_handler(&routes[i], env, req, resp);
        return;
    }
    if (allow[0]) {
        api_reply_errorf(resp, TPV_EMETHOD, "method", "method %s is not allowed on %s", req->method,
                         req->path);
        if (api_response_add_header(resp, "Allow", allow) != TPV_OK) {
            api_response_free(resp);
            api_reply_errorf(resp, TPV_EINTERNAL, NULL, "internal error (request id %s)",
                             req->request_id ? req->request_id : "-");
        }
        return;
    }
    api_reply_errorf(resp, TPV_ENOTFOUND, "path", "no route for %s %s", req->method, req->path);
}

enum api_role api_route_role_of(const char *method, const char *pattern)
{
    for (size_t i = 0; i < ROUTE_COUNT; i++)
        if (strcasecmp(routes[i].method, method) == 0 && strcmp(routes[i].pattern, pattern) == 0)
            return routes[i].role;
    return API_ROLE_READ;
}

enum api_role api_route_role(struct api_request *req)
{
    int i = route_find(req, NULL, 0);
    /* Unknown paths need read access too: without a token the answer is 401, not a map of the
     * routes. */
    return i >= 0 ? routes[i].role : API_ROLE_READ;
}

bool api_stream_begin(const struct api_env *env, struct api_request *req,
                      struct api_response *resp)
{
    int i = route_find(req, NULL, 0);
    if (i < 0 || !routes[i].stream)
        return false;
    req->route = i;
    req->stream = NULL;
    req->stream_ops = routes[i].stream;
    if (!query_params_allowed(&routes[i], req, resp))
        return true; /* the refusal is in *resp: the transport drops the body and sends it */
    routes[i].stream->open(env, req, resp);
    return true;
}

int api_stream_write(struct api_request *req, const void *data, size_t len,
                     struct api_response *resp)
{
    struct tpv_err err;
    if (!req->stream || !req->stream_ops)
        return TPV_EINTERNAL;
    tpv_err_clear(&err);
    int rc = req->stream_ops->write(req->stream, data, len, &err);
    if (rc != TPV_OK)
        api_reply_error(resp, &err);
    return rc;
}

void api_stream_end(struct api_request *req)
{
    if (req->stream && req->stream_ops)
        req->stream_ops->close(req->stream);
    req->stream = NULL;
}
