/* http.c: libmicrohttpd wiring: per-request state, body buffering with a size cap, the request
 * log line, and translation of struct api_response into an MHD response.
 *
 * Keep-alive matters (DESIGN.md section 8): the access handler only sets up state on its first call
 * and queues the response on a later call; queueing on the first call makes MHD close the
 * connection. */
#include "server/http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include "core/tpv_log.h"

struct srv_http {
    struct MHD_Daemon *daemon;
    const struct api_env *env;
    uint64_t max_body;
    uint16_t port;
    uint32_t rid_prefix;       /* random per process, so ids differ across restarts */
    _Atomic uint64_t rid_next; /* request counter */
};

/* State of one request, from the first access-handler call to the completion callback. */
struct http_request {
    char rid[40];
    char method[16];
    char path[256]; /* for the log line; long paths are cut */
    struct timespec start;
    char *body;
    size_t len, cap;
    bool too_large;
    bool replied;
    int status;
};

static void request_free(struct http_request *hr)
{
    if (!hr)
        return;
    free(hr->body);
    free(hr);
}

static double elapsed_ms(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) * 1e3 + (double)(now.tv_nsec - start->tv_nsec) / 1e6;
}

/* A client-supplied X-Request-Id is kept when it is short and printable, so that traces join up. */
static void request_id_assign(struct srv_http *http, struct MHD_Connection *conn, char *rid, size_t cap)
{
    const char *given = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (given && given[0] && strlen(given) < cap && strspn(given,
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") == strlen(given)) {
        snprintf(rid, cap, "%s", given);
        return;
    }
    uint64_t n = atomic_fetch_add(&http->rid_next, 1);
    snprintf(rid, cap, "%08x%08llx", http->rid_prefix, (unsigned long long)n);
}

/* Appends upload data, growing geometrically; past max_body the rest is dropped and the request
 * is answered 413 when complete. */
static void body_append(struct http_request *hr, const char *data, size_t size, uint64_t max_body)
{
    if (hr->too_large)
        return;
    size_t need;
    if (__builtin_add_overflow(hr->len, size, &need) || need > max_body) {
        hr->too_large = true;
        return;
    }
    if (need + 1 > hr->cap) {
        size_t cap = hr->cap ? hr->cap : 4096;
        while (cap < need + 1)
            cap *= 2;
        char *grown = realloc(hr->body, cap);
        if (!grown) {
            hr->too_large = true; /* reported as 413: the body cannot be held */
            return;
        }
        hr->body = grown;
        hr->cap = cap;
    }
    memcpy(hr->body + hr->len, data, size);
    hr->len = need;
    hr->body[hr->len] = '\0';
}

static const char *transport_header(void *transport, const char *name)
{
    return MHD_lookup_connection_value(transport, MHD_HEADER_KIND, name);
}

static const char *transport_query(void *transport, const char *name)
{
    return MHD_lookup_connection_value(transport, MHD_GET_ARGUMENT_KIND, name);
}

/* Hands the response body to MHD (which frees it) and queues it with its headers. */
static enum MHD_Result send_response(struct MHD_Connection *conn, struct http_request *hr,
                                     struct api_response *resp)
{
    struct MHD_Response *mr = MHD_create_response_from_buffer(resp->body_len, resp->body,
                                                              MHD_RESPMEM_MUST_FREE);
    if (!mr)
        return MHD_NO;
    resp->body = NULL; /* now MHD's */
    if (resp->content_type)
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, resp->content_type);
    MHD_add_response_header(mr, "X-Request-Id", hr->rid);
    for (int i = 0; i < resp->nheaders; i++)
        MHD_add_response_header(mr, resp->headers[i].name, resp->headers[i].value);
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned int)resp->status, mr);
    MHD_destroy_response(mr);
    hr->status = resp->status;
    hr->replied = true;
    return ok;
}

/* Content-Length as sent, or 0 when absent or unreadable (chunked bodies are checked as they
 * arrive). */
static uint64_t declared_length(struct MHD_Connection *conn)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (!v)
        return 0;
    char *end;
    unsigned long long n = strtoull(v, &end, 10);
    return *end == '\0' ? (uint64_t)n : 0;
}

static enum MHD_Result reply_too_large(struct srv_http *http, struct MHD_Connection *conn,
                                       struct http_request *hr)
{
    struct api_response resp = { 0 };
    api_reply_errorf(&resp, TPV_ETOOLARGE, "body", "request body exceeds the limit of %llu bytes",
                     (unsigned long long)http->max_body);
    enum MHD_Result ok = send_response(conn, hr, &resp);
    api_response_free(&resp);
    return ok;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    struct srv_http *http = cls;
    struct http_request *hr = *con_cls;
    (void)version;

    if (!hr) {
        hr = calloc(1, sizeof *hr);
        if (!hr)
            return MHD_NO;
        clock_gettime(CLOCK_MONOTONIC, &hr->start);
        request_id_assign(http, conn, hr->rid, sizeof hr->rid);
        snprintf(hr->method, sizeof hr->method, "%s", method);
        snprintf(hr->path, sizeof hr->path, "%s", url);
        *con_cls = hr;
        /* A declared length over the limit is refused before the body is sent (a client that
         * sent Expect: 100-continue never sends it); the connection then closes. */
        if (declared_length(conn) > http->max_body) {
            hr->too_large = true;
            return reply_too_large(http, conn, hr);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        /* Past the limit the rest of a chunked body is read and dropped so that the 413 can
         * be sent on a healthy connection; the request timeout bounds how long that lasts. */
        if (!hr->replied)
            body_append(hr, upload_data, *upload_data_size, http->max_body);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (hr->replied)
        return MHD_YES;
    if (hr->too_large)
        return reply_too_large(http, conn, hr);

    struct api_request req = {
        .method = method,
        .path = url,
        .request_id = hr->rid,
        .body = hr->body ? hr->body : "",
        .body_len = hr->len,
        .header = transport_header,
        .query = transport_query,
        .transport = conn,
    };
    struct api_response resp = { 0 };
    api_dispatch(http->env, &req, &resp);
    enum MHD_Result ok = send_response(conn, hr, &resp);
    api_response_free(&resp);
    return ok;
}

/* One log line per request, with its id, whatever the outcome. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http_request *hr = *con_cls;
    (void)cls;
    if (!hr)
        return;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    char peer[INET6_ADDRSTRLEN] = "-";
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, peer, sizeof peer);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, peer, sizeof peer);
    }
    log_info("request rid=%s peer=%s method=%s path=%s status=%d in=%zu ms=%.2f%s", hr->rid,
             peer, hr->method, hr->path,
             hr->replied ? hr->status : 0, hr->len, elapsed_ms(&hr->start),
             toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " aborted=1");
    request_free(hr);
    *con_cls = NULL;
}

__attribute__((format(printf, 2, 0)))
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    log_warn("http: %s", msg);
}

static int resolve_listen(const struct srv_config *cfg, struct sockaddr_storage *ss,
                          struct tpv_err *err)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *res = NULL;
    char port[8];
    snprintf(port, sizeof port, "%u", cfg->listen_port);
    int gai = getaddrinfo(cfg->listen_host, port, &hints, &res);
    if (gai != 0 || !res)
        return tpv_err_set(err, TPV_EINVAL, "listen", "cannot resolve '%s': %s", cfg->listen_host,
                           gai_strerror(gai));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return TPV_OK;
}

int srv_http_start(struct srv_http **out, const struct srv_config *cfg, const struct api_env *env,
                   struct tpv_err *err)
{
    struct sockaddr_storage ss = { 0 };
    int rc = resolve_listen(cfg, &ss, err);
    if (rc != TPV_OK)
        return rc;

    struct srv_http *http = calloc(1, sizeof *http);
    if (!http)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    http->env = env;
    http->max_body = cfg->max_body_bytes;
    if (getrandom(&http->rid_prefix, sizeof http->rid_prefix, 0) != sizeof http->rid_prefix)
        http->rid_prefix = (uint32_t)time(NULL);

    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG |
                         MHD_ALLOW_SUSPEND_RESUME;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    http->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, http,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)cfg->http_threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)cfg->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)cfg->request_timeout_s,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, http,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, http,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned int)1,
        MHD_OPTION_END);
    if (!http->daemon) {
        free(http);
        return tpv_err_set(err, TPV_EUNAVAILABLE, "listen", "cannot listen on %s", cfg->listen);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(http->daemon, MHD_DAEMON_INFO_BIND_PORT);
    http->port = di ? di->port : cfg->listen_port;
    *out = http;
    return TPV_OK;
}

uint16_t srv_http_port(const struct srv_http *http)
{
    return http->port;
}

void srv_http_quiesce(struct srv_http *http)
{
    if (http && http->daemon)
        MHD_quiesce_daemon(http->daemon);
}

void srv_http_stop(struct srv_http *http)
{
    if (!http)
        return;
    if (http->daemon)
        MHD_stop_daemon(http->daemon);
    free(http);
}
