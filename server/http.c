/* http.c: the libmicrohttpd adapter of tpvd: per-request state, refusal of ambiguous framing
 * (request smuggling), body buffering with a size cap, streamed bodies for the routes that want
 * them (blob uploads go to a sink chunk by chunk, never into memory), the request log line and
 * metrics.  Long-poll holds are server/http_hold.c, the fetch offload server/http_offload.c, the
 * translation of struct api_response into an MHD response server/http_reply.c.
 *
 * Keep-alive matters (DESIGN.md section 8): the access handler only sets up state on its first call
 * and queues the response on a later call; queueing on the first call makes MHD close the
 * connection (what refusals that must not read the body want). */
#include "server/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include "core/tpv_log.h"
#include "server/http_hold.h"
#include "server/http_offload.h"
#include "server/http_reply.h"

struct srv_http {
    struct MHD_Daemon *daemon;
    const struct api_env *env;
    uint64_t max_body;
    uint64_t max_blob;
    uint16_t port;
    uint32_t rid_prefix;       /* random per process, so ids differ across restarts */
    _Atomic uint64_t rid_next; /* request counter */
    struct srv_holds *holds;
    struct srv_offload *offload;
    char *tls_cert, *tls_key; /* PEM text handed to MHD, kept for the daemon's lifetime */
};

/* State of one request, from the first access-handler call to the completion callback. */
struct http_request {
    char rid[40];
    /* Escaped for the log line (tpv_log_escape): the client's bytes, a long path cut. */
    char method[TPV_LOG_ESC_CAP(16)];
    char path[1024];
    struct timespec start;
    char *body;
    size_t len, cap;
    bool too_large;
    bool replied;
    int status;
    /* The api's view of the request; kept across calls for streams and holds. */
    struct api_request req;
    bool streaming;
    bool stream_failed;          /* `pending` holds the error to send */
    bool denied;                 /* access refused: `pending` holds the 401/403 to send */
    struct api_response pending;
    struct srv_hold hold;           /* long-poll hold */
    struct srv_offload_item offload; /* offloaded dispatch, answered in `pending` */
};

static void request_free(struct http_request *hr)
{
    if (!hr)
        return;
    api_stream_end(&hr->req);
    api_response_free(&hr->pending);
    free(hr->body);
    free(hr);
}

void srv_http_study_changed(struct srv_http *http, const char *study_id)
{
    if (!http)
        return;
    srv_holds_study_changed(http->holds, study_id);
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

struct query_walk {
    bool (*fn)(void *ctx, const char *name);
    void *ctx;
};

static enum MHD_Result query_walk_one(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    (void)kind;
    (void)value;
    struct query_walk *w = cls;
    return w->fn(w->ctx, key) ? MHD_YES : MHD_NO;
}

static void transport_query_each(void *transport, bool (*fn)(void *ctx, const char *name),
                                 void *ctx)
{
    struct query_walk w = { fn, ctx };
    MHD_get_connection_values(transport, MHD_GET_ARGUMENT_KIND, query_walk_one, &w);
}

/* Queues resp (see srv_http_reply_queue: a reply MHD cannot build whole becomes a 500). */
static enum MHD_Result send_response_close(struct MHD_Connection *conn, struct http_request *hr,
                                           struct api_response *resp, bool close)
{
    int status = 0;
    enum MHD_Result ok = srv_http_reply_queue(conn, resp, hr->rid, close, &status);
    hr->status = status;
    hr->replied = status != 0;
    return ok;
}

static enum MHD_Result send_response(struct MHD_Connection *conn, struct http_request *hr,
                                     struct api_response *resp)
{
    return send_response_close(conn, hr, resp, false);
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

/* Whether the client announced a body (a length > 0 or a chunked transfer). */
static bool has_body(struct MHD_Connection *conn)
{
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_TRANSFER_ENCODING);
    return declared_length(conn) > 0 || (te && te[0]);
}

/* Sends the answer kept in hr->pending (a refusal, a stream error, an offloaded dispatch). */
static enum MHD_Result send_pending(struct MHD_Connection *conn, struct http_request *hr)
{
    enum MHD_Result ok = send_response(conn, hr, &hr->pending);
    api_response_free(&hr->pending);
    return ok;
}

static enum MHD_Result reply_too_large(struct srv_http *http, struct MHD_Connection *conn,
                                       struct http_request *hr)
{
    struct api_response resp = { 0 };
    /* The message names the flag so that whoever reads the client's error knows what to raise. */
    api_reply_errorf(&resp, TPV_ETOOLARGE, "body",
                     "request body exceeds the limit of %llu bytes (--%s)",
                     (unsigned long long)(hr->streaming ? http->max_blob : http->max_body),
                     hr->streaming ? "max-blob" : "max-body");
    enum MHD_Result ok = send_response(conn, hr, &resp);
    api_response_free(&resp);
    return ok;
}

/* Dispatches the buffered request (req.body set by on_access); a hold suspends the connection
 * instead of answering. */
static enum MHD_Result dispatch(struct srv_http *http, struct MHD_Connection *conn,
                                struct http_request *hr)
{
    struct api_response resp = { 0 };
    if (!srv_holds_dispatch(http->holds, http->env, conn, &hr->hold, &hr->req, &resp))
        return MHD_YES;
    enum MHD_Result ok = send_response(conn, hr, &resp);
    api_response_free(&resp);
    return ok;
}

/* What the header block says about where the body ends. */
struct framing {
    int content_length;    /* Content-Length headers */
    int transfer_encoding; /* Transfer-Encoding headers */
    bool chunked_only;     /* every Transfer-Encoding is exactly "chunked" */
    char bad_name[64];     /* a header name with white space in it (before the colon) */
};

static bool name_is(const char *key, const char *want)
{
    return strcasecmp(key, want) == 0;
}

static enum MHD_Result framing_count(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    struct framing *f = cls;
    (void)kind;
    if (!key)
        return MHD_YES;
    if (strpbrk(key, " \t") && !f->bad_name[0])
        snprintf(f->bad_name, sizeof f->bad_name, "%.*s", (int)strcspn(key, " \t"), key);
    if (name_is(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
        f->content_length++;
    } else if (name_is(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        f->transfer_encoding++;
        f->chunked_only = f->chunked_only && value && strcasecmp(value, "chunked") == 0;
    }
    return MHD_YES;
}

/* Refuses a header block whose body length two parsers could read differently (RFC 9112
 * section 6.3): behind a proxy that picks the other reading, the rest of the body would be
 * taken as a second request (request smuggling).  Returns true with the 400 in *resp. */
static bool framing_refused(struct MHD_Connection *conn, struct api_response *resp)
{
    struct framing f = { .chunked_only = true };
    MHD_get_connection_values(conn, MHD_HEADER_KIND, framing_count, &f);
    if (f.bad_name[0]) {
        api_reply_errorf(resp, TPV_EINVAL, f.bad_name,
                         "header %s has white space before its colon", f.bad_name);
    } else if (f.content_length > 1) {
        api_reply_errorf(resp, TPV_EINVAL, MHD_HTTP_HEADER_CONTENT_LENGTH,
                         "Content-Length appears %d times: send it once", f.content_length);
    } else if (f.content_length && f.transfer_encoding) {
        api_reply_errorf(resp, TPV_EINVAL, MHD_HTTP_HEADER_TRANSFER_ENCODING,
                         "Content-Length and Transfer-Encoding together: send one of them");
    } else if (f.transfer_encoding > 1) {
        api_reply_errorf(resp, TPV_EINVAL, MHD_HTTP_HEADER_TRANSFER_ENCODING,
                         "Transfer-Encoding appears %d times: send it once", f.transfer_encoding);
    } else if (f.transfer_encoding && !f.chunked_only) {
        api_reply_errorf(resp, TPV_EINVAL, MHD_HTTP_HEADER_TRANSFER_ENCODING,
                         "Transfer-Encoding must be chunked");
    } else {
        return false;
    }
    return true;
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
        /* The path is decoded by now: %0a is a newline. */
        tpv_log_escape(hr->method, sizeof hr->method, method, TPV_LOG_TOKEN);
        tpv_log_escape(hr->path, sizeof hr->path, url, TPV_LOG_TOKEN);
        hr->req = (struct api_request){
            .method = method, /* MHD keeps method and url for the whole request */
            .path = url,
            .request_id = hr->rid,
            .header = transport_header,
            .query = transport_query,
            .query_each = transport_query_each,
            .transport = conn,
            .route = -1,
        };
        *con_cls = hr;
        /* Before anything else, and answered now: MHD then closes the connection without
         * reading a byte of the ambiguous body. */
        if (framing_refused(conn, &hr->pending)) {
            enum MHD_Result ok = send_response_close(conn, hr, &hr->pending, true);
            api_response_free(&hr->pending);
            return ok;
        }
        /* Access is decided before any body is read or a blob temporary exists.  A refused
         * request without a body is answered on the next call (keeping the connection alive);
         * one with a body is answered now, so that MHD closes the connection unread. */
        if (!api_authorize(http->env, &hr->req, &hr->pending)) {
            hr->denied = true;
            if (has_body(conn))
                return send_pending(conn, hr);
            return MHD_YES;
        }
        hr->streaming = api_stream_begin(http->env, &hr->req, &hr->pending);
        hr->stream_failed = hr->streaming && hr->pending.status != 0;
        /* A declared length over the limit is refused before the body is sent (a client that
         * sent Expect: 100-continue never sends it); the connection then closes. */
        if (declared_length(conn) > (hr->streaming ? http->max_blob : http->max_body)) {
            hr->too_large = true;
            api_stream_end(&hr->req); /* the temporary goes before the answer does */
            return reply_too_large(http, conn, hr);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        /* Past the limit (or after a sink error) the rest of the body is read and dropped so
         * that the error can be sent on a healthy connection; the request timeout bounds how
         * long that lasts. */
        if (hr->denied) {
            /* dropped: never buffered, never streamed */
        } else if (!hr->replied && hr->streaming) {
            if (!hr->stream_failed &&
                api_stream_write(&hr->req, upload_data, *upload_data_size, &hr->pending) != TPV_OK) {
                hr->stream_failed = true;
                /* Discard the upload now, not when the connection completes: once the client
                 * has its error, nothing of the refused body may remain in blobs/tmp. */
                api_stream_end(&hr->req);
            }
            hr->len += *upload_data_size;
        } else if (!hr->replied) {
            body_append(hr, upload_data, *upload_data_size, http->max_body);
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (hr->replied)
        return MHD_YES;
    if (hr->too_large)
        return reply_too_large(http, conn, hr);
    bool offloaded = srv_offload_submitted(&hr->offload);
    if (hr->stream_failed || hr->denied || (offloaded && srv_offload_done(&hr->offload)))
        return send_pending(conn, hr);
    if (offloaded)
        return MHD_YES; /* resumed before the answer was ready: cannot happen, wait anyway */
    hr->req.body = hr->body ? hr->body : "";
    hr->req.body_len = hr->len;
    if (api_request_may_fetch(http->env, &hr->req)) {
        if (srv_offload_submit(http->offload, &hr->offload, conn, &hr->req, &hr->pending))
            return MHD_YES; /* suspended until an offload thread has the answer */
        return send_pending(conn, hr); /* shutting down: the 503 is in pending */
    }
    return dispatch(http, conn, hr);
}

/* One log line per request, with its id, whatever the outcome. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct srv_http *http = cls;
    struct http_request *hr = *con_cls;
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
    double ms = elapsed_ms(&hr->start);
    log_info("request rid=%s peer=%s method=%s path=%s status=%d in=%zu ms=%.2f%s", hr->rid,
             peer, hr->method, hr->path, hr->replied ? hr->status : 0, hr->len, ms,
             toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " aborted=1");
    if (hr->replied)
        api_metrics_request(http->env->metrics, hr->req.route, hr->status, ms / 1e3);
    request_free(hr);
    *con_cls = NULL;
}

__attribute__((format(printf, 2, 0)))
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512], esc[TPV_LOG_ESC_CAP(sizeof msg)];
    (void)cls;
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    /* MHD's messages may quote what a client sent. */
    log_warn("http: %s", tpv_log_escape(esc, sizeof esc, msg, TPV_LOG_TEXT));
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

/* Reads a PEM file whole (MHD takes certificates from memory), at most 1 MiB. */
static int read_pem(const char *path, const char *option, char **out, struct tpv_err *err)
{
    *out = NULL;
    FILE *fp = fopen(path, "r");
    if (!fp)
        return tpv_err_set(err, TPV_EINVAL, option, "--%s: cannot open %s: %s", option, path,
                           strerror(errno));
    size_t cap = 1u << 20, len = 0;
    char *buf = malloc(cap + 1);
    if (buf)
        len = fread(buf, 1, cap + 1, fp);
    bool bad = ferror(fp) != 0;
    fclose(fp);
    if (!buf)
        return tpv_err_set(err, TPV_ENOMEM, option, "out of memory");
    if (bad || len == 0 || len > cap || !strstr(buf, "-----BEGIN ")) {
        free(buf);
        return tpv_err_set(err, TPV_EINVAL, option, "--%s: %s is not a PEM file of at most 1 MiB",
                           option, path);
    }
    buf[len] = '\0';
    *out = buf;
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
    http->max_blob = cfg->max_blob_bytes;
    rc = srv_holds_new(&http->holds, err);
    if (rc == TPV_OK)
        rc = srv_offload_new(&http->offload, env, (int)cfg->fetch_threads, err);
    if (rc != TPV_OK) {
        srv_http_stop(http);
        return rc;
    }
    if (getrandom(&http->rid_prefix, sizeof http->rid_prefix, 0) != sizeof http->rid_prefix)
        http->rid_prefix = (uint32_t)time(NULL);

    /* poll(), not epoll: with epoll, MHD_quiesce_daemon (shutdown) and the polling thread both
     * remove the listen FD from the epoll set, and the loser of that race aborts the process
     * ("Failed to remove listen FD from epoll set", libmicrohttpd 0.9.75 daemon.c, seen once at
     * a SIGTERM in CI).  With poll() quiesce signals the thread through its ITC instead. */
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG |
                         MHD_ALLOW_SUSPEND_RESUME;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_OptionItem opts[16];
    int nopts = 0;
#define OPT(o, v, p) (opts[nopts++] = (struct MHD_OptionItem){ (o), (intptr_t)(v), (p) })
    OPT(MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, http);
    OPT(MHD_OPTION_SOCK_ADDR, 0, &ss);
    OPT(MHD_OPTION_THREAD_POOL_SIZE, cfg->http_threads, NULL);
    OPT(MHD_OPTION_CONNECTION_LIMIT, cfg->max_connections, NULL);
    if (cfg->max_connections_per_ip > 0)
        OPT(MHD_OPTION_PER_IP_CONNECTION_LIMIT, cfg->max_connections_per_ip, NULL);
    OPT(MHD_OPTION_CONNECTION_TIMEOUT, cfg->request_timeout_s, NULL);
    OPT(MHD_OPTION_NOTIFY_COMPLETED, on_completed, http);
    OPT(MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, NULL);
    if (cfg->tls_cert && cfg->tls_key) {
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            srv_http_stop(http);
            return tpv_err_set(err, TPV_EINVAL, "tls-cert",
                               "--tls-cert: this libmicrohttpd was built without TLS support");
        }
        rc = read_pem(cfg->tls_cert, "tls-cert", &http->tls_cert, err);
        if (rc == TPV_OK)
            rc = read_pem(cfg->tls_key, "tls-key", &http->tls_key, err);
        if (rc != TPV_OK) {
            srv_http_stop(http);
            return rc;
        }
        flags |= MHD_USE_TLS;
        OPT(MHD_OPTION_HTTPS_MEM_CERT, 0, http->tls_cert);
        OPT(MHD_OPTION_HTTPS_MEM_KEY, 0, http->tls_key);
    }
    OPT(MHD_OPTION_END, 0, NULL);
#undef OPT
    http->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_access, http, MHD_OPTION_ARRAY, opts,
                                    MHD_OPTION_END);
    if (!http->daemon) {
        if (cfg->tls_cert) {
            srv_http_stop(http);
            return tpv_err_set(err, TPV_EUNAVAILABLE, "tls-cert",
                               "cannot listen on %s with TLS (check that --tls-cert and --tls-key "
                               "are a matching PEM certificate and key; details above)",
                               cfg->listen);
        }
        srv_http_stop(http);
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
    if (!http)
        return;
    if (http->daemon)
        MHD_quiesce_daemon(http->daemon);
    srv_holds_release(http->holds); /* held requests are answered (304), none held from now */
}

void srv_http_stop(struct srv_http *http)
{
    if (!http)
        return;
    srv_holds_stop(http->holds);
    srv_offload_stop(http->offload);
    if (http->daemon) {
        /* Give resumed holds a moment to be answered before connections close. */
        struct timespec ts = { 0, 20 * 1000000L };
        nanosleep(&ts, NULL);
        MHD_stop_daemon(http->daemon);
    }
    /* No connection can reach them any more. */
    srv_offload_free(http->offload);
    srv_holds_free(http->holds);
    if (http->tls_key)
        explicit_bzero(http->tls_key, strlen(http->tls_key));
    free(http->tls_key);
    free(http->tls_cert);
    free(http);
}
