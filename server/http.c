/* http.c: libmicrohttpd wiring: per-request state, body buffering with a size cap, streamed
 * bodies for the routes that want them (blob uploads go to a sink chunk by chunk, never into
 * memory), long-poll holds (the connection is suspended, not a thread, and resumed when the store
 * reports a change of the study or the hold times out), the request log line and metrics, and
 * translation of struct api_response into an MHD response.
 *
 * Keep-alive matters (DESIGN.md section 8): the access handler only sets up state on its first call
 * and queues the response on a later call; queueing on the first call makes MHD close the
 * connection. */
#include "server/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include "core/tpv_log.h"

struct http_request;

struct srv_http {
    struct MHD_Daemon *daemon;
    const struct api_env *env;
    uint64_t max_body;
    uint64_t max_blob;
    uint16_t port;
    uint32_t rid_prefix;       /* random per process, so ids differ across restarts */
    _Atomic uint64_t rid_next; /* request counter */
    /* Held (suspended) requests, guarded by hold_lock.  Lock order: hold_lock, then MHD's own
     * locks (MHD_suspend/resume_connection); MHD never calls us with its locks held on paths
     * that take hold_lock. */
    pthread_mutex_t hold_lock;
    pthread_cond_t hold_cond;
    struct http_request *held; /* doubly linked list */
    uint64_t change_seq;       /* bumped by every study change, under hold_lock */
    bool stopping;
    bool timer_started;
    pthread_t timer;
    /* Requests that may block on a remote server (blob URLs) run on these threads while their
     * connection is suspended, so that no MHD thread, and none of the other connections it
     * serves, waits on a fetch.  Queue guarded by offload_lock. */
    pthread_mutex_t offload_lock;
    pthread_cond_t offload_cond;
    struct http_request *offload_head, *offload_tail;
    bool offload_stopping;
    pthread_t *offload_threads;
    int noffload;
    char *tls_cert, *tls_key; /* PEM text handed to MHD, kept for the daemon's lifetime */
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
    /* The api's view of the request; kept across calls for streams and holds. */
    struct api_request req;
    bool streaming;
    bool stream_failed;          /* `pending` holds the error to send */
    bool denied;                 /* access refused: `pending` holds the 401/403 to send */
    struct api_response pending;
    /* Long-poll hold. */
    struct MHD_Connection *conn;
    bool hold_armed;             /* a deadline was set by the first hold */
    struct timespec deadline;    /* CLOCK_MONOTONIC */
    char hold_study[API_PARAM_MAX];
    bool in_list;
    struct http_request *next, *prev;
    /* Offloaded dispatch: queued, then answered in `pending` by an offload thread. */
    bool offloaded;
    _Atomic bool offload_done;
    struct http_request *offload_next;
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

static bool ts_passed(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > t->tv_sec || (now.tv_sec == t->tv_sec && now.tv_nsec >= t->tv_nsec);
}

/* Under hold_lock: unlinks a held request and resumes its connection. */
static void held_resume(struct srv_http *http, struct http_request *hr)
{
    if (!hr->in_list)
        return;
    if (hr->prev)
        hr->prev->next = hr->next;
    else
        http->held = hr->next;
    if (hr->next)
        hr->next->prev = hr->prev;
    hr->next = hr->prev = NULL;
    hr->in_list = false;
    MHD_resume_connection(hr->conn);
}

void srv_http_study_changed(struct srv_http *http, const char *study_id)
{
    if (!http)
        return;
    pthread_mutex_lock(&http->hold_lock);
    http->change_seq++;
    for (struct http_request *hr = http->held, *next; hr; hr = next) {
        next = hr->next;
        if (strcmp(hr->hold_study, study_id) == 0)
            held_resume(http, hr);
    }
    pthread_mutex_unlock(&http->hold_lock);
}

/* Resumes held requests whose time ran out (all of them when stopping). */
static void *hold_timer(void *arg)
{
    struct srv_http *http = arg;
    pthread_mutex_lock(&http->hold_lock);
    for (;;) {
        for (struct http_request *hr = http->held, *next; hr; hr = next) {
            next = hr->next;
            if (http->stopping || ts_passed(&hr->deadline))
                held_resume(http, hr);
        }
        if (http->stopping)
            break;
        struct timespec wake;
        clock_gettime(CLOCK_REALTIME, &wake);
        wake.tv_nsec += 50 * 1000000L;
        if (wake.tv_nsec >= 1000000000L) {
            wake.tv_sec++;
            wake.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&http->hold_cond, &http->hold_lock, &wake);
    }
    pthread_mutex_unlock(&http->hold_lock);
    return NULL;
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

/* Whether the client announced a body (a length > 0 or a chunked transfer). */
static bool has_body(struct MHD_Connection *conn)
{
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_TRANSFER_ENCODING);
    return declared_length(conn) > 0 || (te && te[0]);
}

static enum MHD_Result reply_too_large(struct srv_http *http, struct MHD_Connection *conn,
                                       struct http_request *hr)
{
    struct api_response resp = { 0 };
    api_reply_errorf(&resp, TPV_ETOOLARGE, "body", "request body exceeds the limit of %llu bytes",
                     (unsigned long long)(hr->streaming ? http->max_blob : http->max_body));
    enum MHD_Result ok = send_response(conn, hr, &resp);
    api_response_free(&resp);
    return ok;
}

/* Dispatches the buffered request (req.body set by on_access); a hold suspends the connection
 * instead of answering. */
static enum MHD_Result dispatch(struct srv_http *http, struct MHD_Connection *conn,
                                struct http_request *hr)
{
    for (int round = 0;; round++) {
        pthread_mutex_lock(&http->hold_lock);
        uint64_t seq = http->change_seq;
        bool stopping = http->stopping;
        pthread_mutex_unlock(&http->hold_lock);

        hr->req.hold_expired = stopping || round >= 8 || (hr->hold_armed && ts_passed(&hr->deadline));
        struct api_response resp = { 0 };
        api_dispatch(http->env, &hr->req, &resp);
        if (resp.hold_seconds <= 0) {
            enum MHD_Result ok = send_response(conn, hr, &resp);
            api_response_free(&resp);
            return ok;
        }
        if (!hr->hold_armed) {
            clock_gettime(CLOCK_MONOTONIC, &hr->deadline);
            hr->deadline.tv_sec += resp.hold_seconds;
            hr->hold_armed = true;
        }
        snprintf(hr->hold_study, sizeof hr->hold_study, "%s", resp.hold_study);
        api_response_free(&resp);
        pthread_mutex_lock(&http->hold_lock);
        /* A change between our read of the version and now would be missed: look again. */
        if (http->change_seq != seq || http->stopping) {
            pthread_mutex_unlock(&http->hold_lock);
            continue;
        }
        hr->conn = conn;
        hr->prev = NULL;
        hr->next = http->held;
        if (http->held)
            http->held->prev = hr;
        http->held = hr;
        hr->in_list = true;
        MHD_suspend_connection(conn);
        pthread_mutex_unlock(&http->hold_lock);
        return MHD_YES;
    }
}

/* Hands a request that may block to the offload threads and suspends its connection; the
 * thread answers into hr->pending and resumes it (on_access then sends the answer). */
static enum MHD_Result offload_submit(struct srv_http *http, struct MHD_Connection *conn,
                                      struct http_request *hr)
{
    hr->conn = conn;
    hr->offloaded = true;
    pthread_mutex_lock(&http->offload_lock);
    MHD_suspend_connection(conn);
    hr->offload_next = NULL;
    if (http->offload_tail)
        http->offload_tail->offload_next = hr;
    else
        http->offload_head = hr;
    http->offload_tail = hr;
    pthread_cond_signal(&http->offload_cond);
    pthread_mutex_unlock(&http->offload_lock);
    return MHD_YES;
}

static void *offload_main(void *arg)
{
    struct srv_http *http = arg;
    pthread_mutex_lock(&http->offload_lock);
    for (;;) {
        while (!http->offload_head && !http->offload_stopping)
            pthread_cond_wait(&http->offload_cond, &http->offload_lock);
        struct http_request *hr = http->offload_head;
        if (!hr)
            break; /* stopping with an empty queue */
        http->offload_head = hr->offload_next;
        if (!http->offload_head)
            http->offload_tail = NULL;
        bool stopping = http->offload_stopping;
        pthread_mutex_unlock(&http->offload_lock);
        if (stopping) {
            api_reply_errorf(&hr->pending, TPV_EUNAVAILABLE, NULL, "the server is shutting down");
        } else {
            hr->req.hold_expired = true; /* writes never hold; answer whatever comes */
            api_dispatch(http->env, &hr->req, &hr->pending);
        }
        atomic_store(&hr->offload_done, true);
        MHD_resume_connection(hr->conn);
        pthread_mutex_lock(&http->offload_lock);
    }
    pthread_mutex_unlock(&http->offload_lock);
    return NULL;
}

static int offload_start(struct srv_http *http, int threads, struct tpv_err *err)
{
    pthread_mutex_init(&http->offload_lock, NULL);
    pthread_cond_init(&http->offload_cond, NULL);
    http->offload_threads = calloc((size_t)threads, sizeof *http->offload_threads);
    if (!http->offload_threads)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    for (; http->noffload < threads; http->noffload++)
        if (pthread_create(&http->offload_threads[http->noffload], NULL, offload_main, http) != 0)
            return tpv_err_set(err, TPV_EINTERNAL, "fetch-threads", "cannot start a fetch thread");
    return TPV_OK;
}

/* Answers what is still queued with 503 and waits for requests in flight (each bounded by the
 * fetch timeout); every offloaded connection is resumed before MHD stops. */
static void offload_stop(struct srv_http *http)
{
    if (!http->offload_threads)
        return;
    pthread_mutex_lock(&http->offload_lock);
    http->offload_stopping = true;
    pthread_cond_broadcast(&http->offload_cond);
    pthread_mutex_unlock(&http->offload_lock);
    for (int i = 0; i < http->noffload; i++)
        pthread_join(http->offload_threads[i], NULL);
    free(http->offload_threads);
    pthread_cond_destroy(&http->offload_cond);
    pthread_mutex_destroy(&http->offload_lock);
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
        hr->req = (struct api_request){
            .method = method, /* MHD keeps method and url for the whole request */
            .path = url,
            .request_id = hr->rid,
            .header = transport_header,
            .query = transport_query,
            .transport = conn,
            .route = -1,
        };
        *con_cls = hr;
        /* Access is decided before any body is read or a blob temporary exists.  A refused
         * request without a body is answered on the next call (keeping the connection alive);
         * one with a body is answered now, so that MHD closes the connection unread. */
        if (!api_authorize(http->env, &hr->req, &hr->pending)) {
            hr->denied = true;
            if (has_body(conn)) {
                enum MHD_Result ok = send_response(conn, hr, &hr->pending);
                api_response_free(&hr->pending);
                return ok;
            }
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
    if (hr->stream_failed || hr->denied || (hr->offloaded && atomic_load(&hr->offload_done))) {
        enum MHD_Result ok = send_response(conn, hr, &hr->pending);
        api_response_free(&hr->pending);
        return ok;
    }
    if (hr->offloaded)
        return MHD_YES; /* resumed before the answer was ready: cannot happen, wait anyway */
    hr->req.body = hr->body ? hr->body : "";
    hr->req.body_len = hr->len;
    if (api_request_may_fetch(http->env, &hr->req))
        return offload_submit(http, conn, hr);
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
             peer, hr->method, hr->path,
             hr->replied ? hr->status : 0, hr->len, ms,
             toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " aborted=1");
    if (hr->replied)
        api_metrics_request(http->env->metrics, hr->req.route, hr->status, ms / 1e3);
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
    pthread_mutex_init(&http->hold_lock, NULL);
    pthread_cond_init(&http->hold_cond, NULL);
    if (pthread_create(&http->timer, NULL, hold_timer, http) != 0) {
        srv_http_stop(http);
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "cannot start the long-poll timer");
    }
    http->timer_started = true;
    rc = offload_start(http, (int)cfg->fetch_threads, err);
    if (rc != TPV_OK) {
        srv_http_stop(http);
        return rc;
    }
    if (getrandom(&http->rid_prefix, sizeof http->rid_prefix, 0) != sizeof http->rid_prefix)
        http->rid_prefix = (uint32_t)time(NULL);

    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG |
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

/* Held requests are answered (304) and no new ones are held from here on. */
static void release_holds(struct srv_http *http)
{
    pthread_mutex_lock(&http->hold_lock);
    http->stopping = true;
    while (http->held)
        held_resume(http, http->held);
    pthread_cond_broadcast(&http->hold_cond);
    pthread_mutex_unlock(&http->hold_lock);
}

void srv_http_quiesce(struct srv_http *http)
{
    if (!http)
        return;
    if (http->daemon)
        MHD_quiesce_daemon(http->daemon);
    release_holds(http);
}

void srv_http_stop(struct srv_http *http)
{
    if (!http)
        return;
    release_holds(http);
    if (http->timer_started)
        pthread_join(http->timer, NULL);
    offload_stop(http);
    if (http->daemon) {
        /* Give resumed holds a moment to be answered before connections close. */
        struct timespec ts = { 0, 20 * 1000000L };
        nanosleep(&ts, NULL);
        MHD_stop_daemon(http->daemon);
    }
    pthread_cond_destroy(&http->hold_cond);
    pthread_mutex_destroy(&http->hold_lock);
    if (http->tls_key)
        explicit_bzero(http->tls_key, strlen(http->tls_key));
    free(http->tls_key);
    free(http->tls_cert);
    free(http);
}
