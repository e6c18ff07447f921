/* test_fetch_webhook.c: blob references by URL and webhook delivery against the real tpvd, with a
 * small libmicrohttpd server in this process playing both the blob host and the webhook receiver.
 *
 * URL blobs: an allowed host gives the right digest (directly and through a redirect); a host not
 * in --fetch-allow, or a redirect to one, is 403 naming the host; an upstream 404 is 503
 * unavailable; a body over --max-blob is 413 (with and without Content-Length); bad URLs and a
 * digest mismatch are 400; nothing is left in blobs/tmp.
 * Webhooks: signed job.succeeded and ranking.changed events arrive (HMAC-SHA256 of the exact body
 * under the secret returned once at study creation); a receiver failing the first attempts sees
 * retries of the same event id until it accepts; events pending at SIGTERM are delivered after a
 * restart on the same data dir; a receiver that never accepts gets --webhook-max-attempts tries of
 * each event, which is then marked failed (/metrics counts pending, delivered, failed). */
#include <dirent.h>
#include <microhttpd.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"
#include "tests/support/npy.h"

#define BIG_SIZE (200 * 1024) /* over the daemon's --max-blob 64K */
#define MAX_EVENTS 128

struct event {
    char path[32];
    char event[40];
    char id[40];
    int attempt;
    bool sig_ok;
    long answered;
    char body[1024];
};

/* The in-test server's state, shared with its thread. */
static struct {
    struct MHD_Daemon *mhd;
    unsigned port;
    unsigned char *blob;
    size_t blob_len;
    char blob_digest[80];
    pthread_mutex_t lock;
    char secret[6][80]; /* per receiver path: /hook, /flaky, /down, /never, /hang, /life */
    bool down_ok;       /* /down answers 503 until set */
    struct event events[MAX_EVENTS];
    int nevents;
} srv = { .lock = PTHREAD_MUTEX_INITIALIZER };

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sha256_hex(const void *data, size_t len, char out[80])
{
    unsigned char md[32];
    unsigned int mlen = 0;
    EVP_Digest(data, len, md, &mlen, EVP_sha256(), NULL);
    int n = snprintf(out, 80, "sha256:");
    for (unsigned int i = 0; i < mlen; i++)
        n += snprintf(out + n, (size_t)(80 - n), "%02x", md[i]);
}

static bool signature_ok(const char *secret, const char *body, size_t len, const char *header)
{
    unsigned char mac[32];
    unsigned int mlen = 0;
    char want[80];
    if (!secret[0] || !header)
        return false;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)body, len, mac, &mlen);
    int n = snprintf(want, sizeof want, "sha256=");
    for (unsigned int i = 0; i < mlen; i++)
        n += snprintf(want + n, sizeof want - (size_t)n, "%02x", mac[i]);
    return strcmp(want, header) == 0;
}

#define SLOW_SECONDS 3
#define STALLED_SECONDS 8
#define HANG_SECONDS 6

static enum MHD_Result send_buf(struct MHD_Connection *c, unsigned status, const void *buf,
                                size_t len, const char *location)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)buf,
                                                             MHD_RESPMEM_MUST_COPY);
    if (location)
        MHD_add_response_header(r, "Location", location);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* A body of BIG_SIZE bytes without Content-Length (chunked). */
static ssize_t big_chunks(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)cls;
    if (pos >= BIG_SIZE)
        return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = max < 4096 ? max : 4096;
    memset(buf, 'x', n);
    return (ssize_t)n;
}

struct post_state {
    char body[1024];
    size_t len;
};

static int receiver_index(const char *url)
{
    return strcmp(url, "/hook") == 0 ? 0 : strcmp(url, "/flaky") == 0 ? 1
           : strcmp(url, "/down") == 0 ? 2 : strcmp(url, "/never") == 0 ? 3
           : strcmp(url, "/hang") == 0 ? 4 : strcmp(url, "/life") == 0 ? 5 : -1;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *data_len, void **con_cls)
{
    (void)cls, (void)version;
    if (strcmp(method, "POST") == 0) {
        struct post_state *ps = *con_cls;
        if (!ps) {
            *con_cls = calloc(1, sizeof *ps);
            return MHD_YES;
        }
        if (*data_len) {
            size_t n = *data_len < sizeof ps->body - 1 - ps->len ? *data_len
                                                                  : sizeof ps->body - 1 - ps->len;
            memcpy(ps->body + ps->len, data, n);
            ps->len += n;
            *data_len = 0;
            return MHD_YES;
        }
        int ri = receiver_index(url);
        if (ri == 4)
            sleep(HANG_SECONDS); /* /hang: answers long after the sender's timeout */
        const char *ev = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-TPV-Event");
        const char *id = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-TPV-Event-Id");
        const char *sig = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-TPV-Signature");
        const char *att = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                      "X-TPV-Delivery-Attempt");
        unsigned status = 200;
        pthread_mutex_lock(&srv.lock);
        int attempt = att ? atoi(att) : 0;
        if (ri == 1 && attempt < 3)
            status = 500; /* /flaky: the first two attempts of every event fail */
        if ((ri == 2 && !srv.down_ok) || ri == 3)
            status = 503;
        if (ri >= 0 && srv.nevents < MAX_EVENTS) {
            struct event *e = &srv.events[srv.nevents++];
            snprintf(e->path, sizeof e->path, "%s", url);
            snprintf(e->event, sizeof e->event, "%s", ev ? ev : "");
            snprintf(e->id, sizeof e->id, "%s", id ? id : "");
            snprintf(e->body, sizeof e->body, "%s", ps->body);
            e->attempt = attempt;
            e->answered = status;
            e->sig_ok = signature_ok(srv.secret[ri], ps->body, ps->len, sig);
        }
        pthread_mutex_unlock(&srv.lock);
        return send_buf(c, ri < 0 ? 404 : status, "ok", 2, NULL);
    }
    char loc[128];
    if (strcmp(url, "/blob.npy") == 0)
        return send_buf(c, 200, srv.blob, srv.blob_len, NULL);
    if (strcmp(url, "/big.bin") == 0) {
        void *big = calloc(1, BIG_SIZE);
        enum MHD_Result r = send_buf(c, 200, big, BIG_SIZE, NULL);
        free(big);
        return r;
    }
    if (strcmp(url, "/big-chunked.bin") == 0) {
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096,
                                                                   big_chunks, NULL, NULL);
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    if (strcmp(url, "/redirect-ok") == 0) {
        snprintf(loc, sizeof loc, "http://127.0.0.1:%u/blob.npy", srv.port);
        return send_buf(c, 302, "", 0, loc);
    }
    if (strcmp(url, "/redirect-bad") == 0) {
        snprintf(loc, sizeof loc, "http://localhost:%u/blob.npy", srv.port);
        return send_buf(c, 302, "", 0, loc);
    }
    if (strcmp(url, "/redirect-loop") == 0)
        return send_buf(c, 302, "", 0, "/redirect-loop");
    if (strcmp(url, "/slow.npy") == 0) { /* a slow upstream (this server has a thread each) */
        sleep(SLOW_SECONDS);
        return send_buf(c, 200, srv.blob, srv.blob_len, NULL);
    }
    if (strcmp(url, "/stalled.npy") == 0) { /* answers long after any sensible shutdown */
        sleep(STALLED_SECONDS);
        return send_buf(c, 200, srv.blob, srv.blob_len, NULL);
    }
    return send_buf(c, 404, "no such thing", 13, NULL);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)c, (void)toe;
    free(*con_cls);
    *con_cls = NULL;
}

static void server_start(void)
{
    uint64_t shape[2] = { 4, 6 };
    double v[24];
    for (int i = 0; i < 24; i++)
        v[i] = (double)(i % 7) / 10.0 - 0.2;
    srv.blob = test_npy_f64(shape, 2, v, &srv.blob_len);
    assert_non_null(srv.blob);
    sha256_hex(srv.blob, srv.blob_len, srv.blob_digest);
    srv.mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                                   MHD_USE_ERROR_LOG,
                               0, NULL, NULL, on_request, NULL, MHD_OPTION_NOTIFY_COMPLETED,
                               on_completed, NULL, MHD_OPTION_END);
    assert_non_null(srv.mhd);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv.mhd, MHD_DAEMON_INFO_BIND_PORT);
    srv.port = info->port;
    assert_true(srv.port > 0);
}

static void server_stop(void)
{
    MHD_stop_daemon(srv.mhd);
    free(srv.blob);
}

static void expect_error(const struct test_daemon *d, const struct http_result *r, long status,
                         const char *code, const char *field, const char *in_message)
{
    if (r->status != status) {
        test_daemon_dump_log(d);
        fail_msg("want %ld, got %ld: %s", status, r->status, r->body);
    }
    assert_string_equal(http_json_str(r, "error.code"), code);
    if (field)
        assert_string_equal(http_json_str(r, "error.details.field"), field);
    if (in_message && !strstr(http_json_str(r, "error.message"), in_message))
        fail_msg("message without '%s': %s", in_message, r->body);
}

/* The daemon of the running test, stopped by the teardown when a failed assertion left it. */
static struct test_daemon *live;

static void start_with(struct test_daemon *d, const char *max_attempts)
{
    live = d;
    const char *const args[] = { "--fetch-allow", "127.0.0.1", "--max-blob", "64K",
                                 "--webhook-backoff-ms", "100", "--workers", "1",
                                 "--fetch-timeout", "20", "--webhook-max-attempts", max_attempts,
                                 NULL };
    assert_int_equal(test_daemon_start(d, args), 0);
}

static void start(struct test_daemon *d)
{
    start_with(d, "8");
}

/* The value of a /metrics sample line (e.g. tpvd_webhook_events{state="failed"}), -1 if absent. */
static long long metric(const struct test_daemon *d, const char *sample)
{
    struct http_result r;
    char url[128];
    long long v = -1;
    snprintf(url, sizeof url, "%s/metrics", d->base_url);
    assert_int_equal(http_request("GET", url, NULL, 0, NULL, &r), 0);
    const char *at = strstr(r.body, sample);
    if (at)
        v = atoll(at + strlen(sample) + 1);
    http_result_free(&r);
    return v;
}

/* POST /v1/studies with a webhook to our receiver path; keeps the secret for that path. */
static void create_study(const struct test_daemon *d, const char *path, char sid[64])
{
    char body[512];
    struct http_result r;
    snprintf(body, sizeof body,
             "{\"name\":\"s%s\",\"noise_models\":[{\"name\":\"iso\",\"kind\":\"isotropic\","
             "\"sigma\":0.1}],\"webhook_url\":\"http://127.0.0.1:%u%s\"}", path, srv.port, path);
    assert_int_equal(http_json(d->base_url, "POST", "/v1/studies", body, NULL, &r), 0);
    if (r.status != 201)
        fail_msg("create study: %ld %s", r.status, r.body);
    const char *secret = http_json_str(&r, "webhook_secret");
    assert_non_null(secret);
    assert_int_equal(strncmp(secret, "whsec_", 6), 0);
    assert_int_equal(strlen(secret), 6 + 64);
    pthread_mutex_lock(&srv.lock);
    snprintf(srv.secret[receiver_index(path)], sizeof srv.secret[0], "%s", secret);
    pthread_mutex_unlock(&srv.lock);
    snprintf(sid, 64, "%s", http_json_str(&r, "id"));
    http_result_free(&r);
    /* The secret is shown once: not in GET. */
    char p[128];
    snprintf(p, sizeof p, "/v1/studies/%s", sid);
    assert_int_equal(http_json(d->base_url, "GET", p, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_null(json_object_get(r.json, "webhook_secret"));
    assert_null(strstr(r.body, "whsec_"));
    http_result_free(&r);
}

/* Adds a Jacobian candidate whose fit dump is the URL; returns the HTTP result (caller frees). */
static void add_candidate(const struct test_daemon *d, const char *sid, const char *name,
                          const char *ref_json, struct http_result *r)
{
    char path[128], body[1024];
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    snprintf(body, sizeof body, "{\"name\":\"%s\",\"jacobian\":{\"fit\":%s}}", name, ref_json);
    assert_int_equal(http_json(d->base_url, "POST", path, body, NULL, r), 0);
}

static void url_ref(char *out, size_t cap, const char *host, const char *path)
{
    snprintf(out, cap, "{\"url\":\"http://%s:%u%s\"}", host, srv.port, path);
}

static void wait_job(const struct test_daemon *d, const char *jid)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", jid);
    for (double t0 = now_s(); now_s() - t0 < 30;) {
        struct http_result r;
        assert_int_equal(http_json(d->base_url, "GET", path, NULL, NULL, &r), 0);
        const char *st = http_json_str(&r, "state");
        bool done = st && strcmp(st, "succeeded") == 0;
        bool bad = st && (strcmp(st, "failed") == 0 || strcmp(st, "canceled") == 0);
        if (bad)
            fail_msg("job %s: %s", jid, r.body);
        http_result_free(&r);
        if (done)
            return;
        usleep(20 * 1000);
    }
    test_daemon_dump_log(d);
    fail_msg("job %s did not finish", jid);
}

/* Waits until `path` accepted (2xx) an event of kind `event` for study sid; returns its index. */
static int wait_event(const struct test_daemon *d, const char *path, const char *event,
                      const char *sid, double timeout)
{
    for (double t0 = now_s(); now_s() - t0 < timeout;) {
        pthread_mutex_lock(&srv.lock);
        for (int i = 0; i < srv.nevents; i++) {
            struct event *e = &srv.events[i];
            if (strcmp(e->path, path) == 0 && strcmp(e->event, event) == 0 &&
                e->answered == 200 && strstr(e->body, sid)) {
                pthread_mutex_unlock(&srv.lock);
                return i;
            }
        }
        pthread_mutex_unlock(&srv.lock);
        usleep(20 * 1000);
    }
    test_daemon_dump_log(d);
    fail_msg("no %s event at %s for %s", event, path, sid);
    return -1;
}

static int count_tmp(const struct test_daemon *d)
{
    char path[400];
    snprintf(path, sizeof path, "%s/blobs/tmp", d->data_dir);
    DIR *dir = opendir(path);
    int n = 0;
    if (!dir)
        return 0;
    for (struct dirent *e; (e = readdir(dir));)
        n += e->d_name[0] != '.';
    closedir(dir);
    return n;
}

static void test_url_blobs(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    struct http_result r;
    char sid[64], ref[256], path[128], body[512];
    start(&d);
    create_study(&d, "/hook", sid);

    /* Inputs by URL (the body itself as the reference, and {"blob": ref}). */
    snprintf(path, sizeof path, "/v1/studies/%s/inputs/fit", sid);
    snprintf(body, sizeof body, "{\"url\":\"http://127.0.0.1:%u/blob.npy\"}", srv.port);
    assert_int_equal(http_json(d.base_url, "PUT", path, body, NULL, &r), 0);
    if (r.status != 200)
        fail_msg("inputs by URL: %ld %s", r.status, r.body);
    assert_string_equal(http_json_str(&r, "inputs.fit.digest"), srv.blob_digest);
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/inputs/probe", sid);
    snprintf(body, sizeof body, "{\"blob\":{\"url\":\"http://127.0.0.1:%u/redirect-ok\"}}",
             srv.port);
    assert_int_equal(http_json(d.base_url, "PUT", path, body, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_json_str(&r, "inputs.probe.digest"), srv.blob_digest);
    http_result_free(&r);
    /* The fetched blob is a blob like any other. */
    char url[256];
    snprintf(url, sizeof url, "%s/v1/blobs/%s", d.base_url, srv.blob_digest);
    assert_int_equal(http_request("HEAD", url, NULL, 0, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    http_result_free(&r);

    /* A candidate whose dump comes through a redirect on the allowed host. */
    url_ref(ref, sizeof ref, "127.0.0.1", "/redirect-ok");
    add_candidate(&d, sid, "via-redirect", ref, &r);
    if (r.status != 202)
        fail_msg("candidate by URL: %ld %s", r.status, r.body);
    char jid[64];
    snprintf(jid, sizeof jid, "%s", http_json_str(&r, "job.id"));
    http_result_free(&r);
    wait_job(&d, jid);
    /* With the expected digest given and the blob present, nothing is fetched (even from a host
     * that is not allowed). */
    snprintf(ref, sizeof ref, "{\"url\":\"http://localhost:%u/blob.npy\",\"digest\":\"%s\"}",
             srv.port, srv.blob_digest);
    add_candidate(&d, sid, "known-digest", ref, &r);
    assert_int_equal(r.status, 202);
    http_result_free(&r);

    /* Refusals. */
    url_ref(ref, sizeof ref, "localhost", "/blob.npy");
    add_candidate(&d, sid, "x1", ref, &r);
    expect_error(&d, &r, 403, "permission_denied", "jacobian.fit", "localhost");
    http_result_free(&r);
    url_ref(ref, sizeof ref, "127.0.0.1", "/redirect-bad");
    add_candidate(&d, sid, "x2", ref, &r);
    expect_error(&d, &r, 403, "permission_denied", "jacobian.fit", "redirect to host localhost");
    http_result_free(&r);
    url_ref(ref, sizeof ref, "127.0.0.1", "/missing");
    add_candidate(&d, sid, "x3", ref, &r);
    expect_error(&d, &r, 503, "unavailable", "jacobian.fit", "HTTP 404");
    http_result_free(&r);
    url_ref(ref, sizeof ref, "127.0.0.1", "/big.bin");
    add_candidate(&d, sid, "x4", ref, &r);
    expect_error(&d, &r, 413, "payload_too_large", "jacobian.fit", "--max-blob");
    http_result_free(&r);
    url_ref(ref, sizeof ref, "127.0.0.1", "/big-chunked.bin");
    add_candidate(&d, sid, "x5", ref, &r);
    expect_error(&d, &r, 413, "payload_too_large", "jacobian.fit", "--max-blob");
    http_result_free(&r);
    url_ref(ref, sizeof ref, "127.0.0.1", "/redirect-loop");
    add_candidate(&d, sid, "x6", ref, &r);
    expect_error(&d, &r, 503, "unavailable", "jacobian.fit", "redirects");
    http_result_free(&r);
    add_candidate(&d, sid, "x7", "{\"url\":\"ftp://127.0.0.1/blob.npy\"}", &r);
    expect_error(&d, &r, 400, "invalid_argument", "jacobian.fit", NULL);
    http_result_free(&r);
    add_candidate(&d, sid, "x8", "{\"url\":\"not a url\"}", &r);
    expect_error(&d, &r, 400, "invalid_argument", "jacobian.fit", NULL);
    http_result_free(&r);
    add_candidate(&d, sid, "x9", "{\"url\":\"http://127.0.0.1/\",\"extra\":1}", &r);
    expect_error(&d, &r, 400, "invalid_argument", "jacobian.fit.extra", NULL);
    http_result_free(&r);
    snprintf(ref, sizeof ref, "{\"url\":\"http://127.0.0.1:%u/blob.npy\",\"digest\":\"sha256:%064d\"}",
             srv.port, 0);
    add_candidate(&d, sid, "x10", ref, &r);
    expect_error(&d, &r, 400, "invalid_argument", "jacobian.fit", NULL);
    http_result_free(&r);
    /* Noise-model blobs by URL: a refused host names the noise model's field. */
    snprintf(body, sizeof body,
             "{\"name\":\"diag\",\"noise_models\":[{\"name\":\"d\",\"kind\":\"diagonal\","
             "\"variances\":{\"url\":\"http://localhost:%u/blob.npy\"}}]}", srv.port);
    assert_int_equal(http_json(d.base_url, "POST", "/v1/studies", body, NULL, &r), 0);
    expect_error(&d, &r, 403, "permission_denied", "noise_models[0].variances", "localhost");
    http_result_free(&r);
    assert_int_equal(count_tmp(&d), 0);

    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
    live = NULL;
}

static void test_webhooks(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    struct http_result r;
    char sid[64], sid2[64], sid3[64], ref[256], jid[64];
    start(&d);
    url_ref(ref, sizeof ref, "127.0.0.1", "/blob.npy");

    /* A receiver that accepts: both event kinds, signed, distinct ids. */
    create_study(&d, "/hook", sid);
    add_candidate(&d, sid, "a", ref, &r);
    assert_int_equal(r.status, 202);
    snprintf(jid, sizeof jid, "%s", http_json_str(&r, "job.id"));
    http_result_free(&r);
    wait_job(&d, jid);
    int i1 = wait_event(&d, "/hook", "job.succeeded", sid, 10);
    int i2 = wait_event(&d, "/hook", "ranking.changed", sid, 10);
    pthread_mutex_lock(&srv.lock);
    assert_true(srv.events[i1].sig_ok);
    assert_true(srv.events[i2].sig_ok);
    assert_string_not_equal(srv.events[i1].id, srv.events[i2].id);
    assert_non_null(strstr(srv.events[i1].body, jid));
    json_t *ev = json_loads(srv.events[i1].body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(ev, "id")), srv.events[i1].id);
    assert_string_equal(json_string_value(json_object_get(ev, "state")), "succeeded");
    json_decref(ev);
    ev = json_loads(srv.events[i2].body, 0, NULL);
    assert_true(json_integer_value(json_object_get(ev, "version")) > 1);
    json_decref(ev);
    pthread_mutex_unlock(&srv.lock);

    /* A receiver failing the first two attempts: the same event id comes back until accepted. */
    create_study(&d, "/flaky", sid2);
    add_candidate(&d, sid2, "b", ref, &r);
    assert_int_equal(r.status, 202);
    http_result_free(&r);
    int k = wait_event(&d, "/flaky", "job.succeeded", sid2, 20);
    wait_event(&d, "/flaky", "ranking.changed", sid2, 20);
    pthread_mutex_lock(&srv.lock);
    struct event ok = srv.events[k];
    int tries = 0;
    for (int i = 0; i < srv.nevents; i++) {
        if (strcmp(srv.events[i].id, ok.id) == 0 && strcmp(srv.events[i].path, "/flaky") == 0) {
            tries++;
            assert_true(srv.events[i].sig_ok);
            assert_string_equal(srv.events[i].body, ok.body); /* the exact body each time */
        }
    }
    pthread_mutex_unlock(&srv.lock);
    assert_int_equal(ok.attempt, 3);
    assert_int_equal(tries, 3);

    /* A receiver that is down: the event is pending at SIGTERM and delivered after a restart. */
    create_study(&d, "/down", sid3);
    add_candidate(&d, sid3, "c", ref, &r);
    assert_int_equal(r.status, 202);
    snprintf(jid, sizeof jid, "%s", http_json_str(&r, "job.id"));
    http_result_free(&r);
    wait_job(&d, jid);
    for (double t0 = now_s(); now_s() - t0 < 10;) { /* at least one refused attempt */
        bool seen = false;
        pthread_mutex_lock(&srv.lock);
        for (int i = 0; i < srv.nevents; i++)
            seen |= strcmp(srv.events[i].path, "/down") == 0;
        pthread_mutex_unlock(&srv.lock);
        if (seen)
            break;
        usleep(20 * 1000);
    }
    double t0 = now_s();
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    assert_true(now_s() - t0 < 5); /* the sender does not hold up shutdown */
    pthread_mutex_lock(&srv.lock);
    srv.down_ok = true;
    pthread_mutex_unlock(&srv.lock);
    start(&d);
    wait_event(&d, "/down", "job.succeeded", sid3, 20);
    wait_event(&d, "/down", "ranking.changed", sid3, 20);
    for (double t1 = now_s(); now_s() - t1 < 5;) {
        if (metric(&d, "tpvd_webhook_events{state=\"pending\"}") == 0)
            break;
        usleep(20 * 1000);
    }
    assert_int_equal(metric(&d, "tpvd_webhook_events{state=\"pending\"}"), 0);
    assert_int_equal(metric(&d, "tpvd_webhook_events{state=\"failed\"}"), 0);
    assert_true(metric(&d, "tpvd_webhook_events{state=\"delivered\"}") >= 2);

    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
    live = NULL;
}

/* Deletes go to the webhook: candidate.deleted with the study still there, study.deleted (signed
 * with the study's secret, which the outbox row keeps) after the study row is gone. */
static void test_delete_events(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    struct http_result r;
    char sid[64], cid[64], jid[64], ref[256], path[256];
    start(&d);
    url_ref(ref, sizeof ref, "127.0.0.1", "/blob.npy");
    create_study(&d, "/life", sid);
    add_candidate(&d, sid, "a", ref, &r);
    assert_int_equal(r.status, 202);
    snprintf(cid, sizeof cid, "%s", http_json_str(&r, "candidate.id"));
    snprintf(jid, sizeof jid, "%s", http_json_str(&r, "job.id"));
    http_result_free(&r);
    wait_job(&d, jid);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", sid, cid);
    assert_int_equal(http_json(d.base_url, "DELETE", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 204);
    http_result_free(&r);
    int i1 = wait_event(&d, "/life", "candidate.deleted", sid, 10);
    pthread_mutex_lock(&srv.lock);
    assert_true(srv.events[i1].sig_ok);
    assert_non_null(strstr(srv.events[i1].body, cid));
    pthread_mutex_unlock(&srv.lock);
    add_candidate(&d, sid, "b", ref, &r);
    assert_int_equal(r.status, 202);
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s", sid);
    assert_int_equal(http_json(d.base_url, "DELETE", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 204);
    http_result_free(&r);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    http_result_free(&r);
    int i2 = wait_event(&d, "/life", "study.deleted", sid, 10);
    pthread_mutex_lock(&srv.lock);
    assert_true(srv.events[i2].sig_ok);
    pthread_mutex_unlock(&srv.lock);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
    live = NULL;
}

/* A receiver that never accepts: each event is tried --webhook-max-attempts times, then failed. */
static void test_webhook_gives_up(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    struct http_result r;
    char sid[64], ref[256];
    start_with(&d, "3");
    create_study(&d, "/never", sid);
    url_ref(ref, sizeof ref, "127.0.0.1", "/blob.npy");
    add_candidate(&d, sid, "n", ref, &r);
    assert_int_equal(r.status, 202);
    http_result_free(&r);
    for (double t0 = now_s(); now_s() - t0 < 20;) {
        if (metric(&d, "tpvd_webhook_events{state=\"failed\"}") == 2)
            break;
        usleep(50 * 1000);
    }
    assert_int_equal(metric(&d, "tpvd_webhook_events{state=\"failed\"}"), 2);
    assert_int_equal(metric(&d, "tpvd_webhook_events{state=\"pending\"}"), 0);
    usleep(500 * 1000); /* nothing more arrives */
    pthread_mutex_lock(&srv.lock);
    int attempts = 0, last = 0;
    for (int i = 0; i < srv.nevents; i++) {
        if (strcmp(srv.events[i].path, "/never") == 0) {
            attempts++;
            assert_true(srv.events[i].sig_ok);
            last = srv.events[i].attempt > last ? srv.events[i].attempt : last;
        }
    }
    pthread_mutex_unlock(&srv.lock);
    assert_int_equal(attempts, 2 * 3);
    assert_int_equal(last, 3);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
    live = NULL;
}

/* A receiver that hangs holds one sender for at most --webhook-timeout; another study's events
 * go out meanwhile. */
static void test_hanging_receiver_does_not_delay_others(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    struct http_result r;
    char hang_sid[64], hook_sid[64], ref[256], jid[64];
    live = &d;
    const char *const args[] = { "--fetch-allow", "127.0.0.1", "--workers", "1",
                                 "--webhook-timeout", "4", NULL };
    assert_int_equal(test_daemon_start(&d, args), 0);
    create_study(&d, "/hang", hang_sid);
    create_study(&d, "/hook", hook_sid);
    url_ref(ref, sizeof ref, "127.0.0.1", "/blob.npy");
    add_candidate(&d, hang_sid, "h", ref, &r);
    assert_int_equal(r.status, 202);
    snprintf(jid, sizeof jid, "%s", http_json_str(&r, "job.id"));
    http_result_free(&r);
    wait_job(&d, jid); /* its two events now hang at /hang for 4 s each attempt */
    usleep(300 * 1000);
    add_candidate(&d, hook_sid, "k", ref, &r);
    assert_int_equal(r.status, 202);
    snprintf(jid, sizeof jid, "%s", http_json_str(&r, "job.id"));
    http_result_free(&r);
    wait_job(&d, jid);
    double t0 = now_s();
    wait_event(&d, "/hook", "job.succeeded", hook_sid, 10);
    double took = now_s() - t0;
    if (took > 2.0)
        fail_msg("the /hook event waited %.1f s behind a hanging receiver", took);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
    live = NULL;
}

static void test_bad_webhook_url(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    struct http_result r;
    start(&d);
    static const char *const bad[] = { "ftp://x/y", "http://", "http:///path", "https://a b/",
                                       "127.0.0.1:9/hook" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"name\":\"w\",\"noise_models\":[{\"name\":\"iso\",\"kind\":\"isotropic\","
                 "\"sigma\":0.1}],\"webhook_url\":\"%s\"}", bad[i]);
        assert_int_equal(http_json(d.base_url, "POST", "/v1/studies", body, NULL, &r), 0);
        expect_error(&d, &r, 400, "invalid_argument", "webhook_url", NULL);
        http_result_free(&r);
    }
    /* Without a webhook there is no secret. */
    assert_int_equal(http_json(d.base_url, "POST", "/v1/studies",
                               "{\"name\":\"nw\",\"noise_models\":[{\"name\":\"iso\","
                               "\"kind\":\"isotropic\",\"sigma\":0.1}]}", NULL, &r), 0);
    assert_int_equal(r.status, 201);
    assert_null(json_object_get(r.json, "webhook_secret"));
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
    live = NULL;
}

struct slow_put {
    const struct test_daemon *d;
    char path[128], body[256];
    struct http_result r;
    int rc;
};

static void *put_slow(void *arg)
{
    struct slow_put *sp = arg;
    sp->rc = http_json(sp->d->base_url, "PUT", sp->path, sp->body, NULL, &sp->r);
    return NULL;
}

/* A blob fetched from a slow server does not stall the daemon: with a single HTTP thread, other
 * requests are answered at once while the fetch runs, and the fetching request completes. */
static void test_slow_fetch_does_not_block(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    live = &d;
    const char *const args[] = { "--fetch-allow", "127.0.0.1", "--http-threads", "1",
                                 "--workers", "1", NULL };
    assert_int_equal(test_daemon_start(&d, args), 0);
    char sid[64];
    create_study(&d, "/hook", sid);
    struct slow_put sp = { .d = &d };
    snprintf(sp.path, sizeof sp.path, "/v1/studies/%s/inputs/fit", sid);
    snprintf(sp.body, sizeof sp.body, "{\"url\":\"http://127.0.0.1:%u/slow.npy\"}", srv.port);
    pthread_t t;
    double t0 = now_s();
    assert_int_equal(pthread_create(&t, NULL, put_slow, &sp), 0);
    struct timespec settle = { 0, 300 * 1000000L }; /* the fetch is under way */
    nanosleep(&settle, NULL);
    double worst = 0;
    for (int i = 0; i < 10; i++) {
        struct http_result r;
        double a = now_s();
        assert_int_equal(http_json(d.base_url, "GET", "/healthz", NULL, NULL, &r), 0);
        assert_int_equal(r.status, 200);
        http_result_free(&r);
        worst = now_s() - a > worst ? now_s() - a : worst;
    }
    assert_true(now_s() - t0 < SLOW_SECONDS); /* all answered while the fetch was running */
    if (worst > 0.5)
        fail_msg("a /healthz took %.3f s during a slow fetch", worst);
    pthread_join(t, NULL);
    assert_int_equal(sp.rc, 0);
    if (sp.r.status != 200)
        fail_msg("slow fetch: %ld %s", sp.r.status, sp.r.body);
    assert_string_equal(http_json_str(&sp.r, "inputs.fit.digest"), srv.blob_digest);
    assert_true(now_s() - t0 >= SLOW_SECONDS);
    http_result_free(&sp.r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
    live = NULL;
}

/* SIGTERM while a request waits on a stalled upstream: the fetch is abandoned, the request gets
 * 503 unavailable, and the daemon exits cleanly in well under the upstream's delay. */
static void test_shutdown_abandons_a_stalled_fetch(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    live = &d;
    const char *const args[] = { "--fetch-allow", "127.0.0.1", "--workers", "1", NULL };
    assert_int_equal(test_daemon_start(&d, args), 0);
    char sid[64];
    create_study(&d, "/hook", sid);
    struct slow_put sp = { .d = &d };
    snprintf(sp.path, sizeof sp.path, "/v1/studies/%s/inputs/fit", sid);
    snprintf(sp.body, sizeof sp.body, "{\"url\":\"http://127.0.0.1:%u/stalled.npy\"}",
             srv.port);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, put_slow, &sp), 0);
    struct timespec settle = { 0, 500 * 1000000L };
    nanosleep(&settle, NULL);
    double t0 = now_s();
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    double took = now_s() - t0;
    pthread_join(t, NULL);
    if (took > STALLED_SECONDS / 2.0)
        fail_msg("shutdown took %.1f s with a stalled fetch in flight", took);
    assert_int_equal(sp.rc, 0);
    assert_int_equal(sp.r.status, 503);
    assert_string_equal(http_json_str(&sp.r, "error.code"), "unavailable");
    assert_non_null(strstr(http_json_str(&sp.r, "error.message"), "shutting down"));
    http_result_free(&sp.r);
    test_daemon_cleanup(&d);
    live = NULL;
}

static int test_teardown(void **state)
{
    (void)state;
    if (live && live->pid > 0) {
        test_daemon_stop(live, SIGKILL);
        test_daemon_cleanup(live);
    }
    live = NULL;
    return 0;
}

static int setup(void **state)
{
    (void)state;
    server_start();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    server_stop();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_url_blobs, test_teardown),
        cmocka_unit_test_teardown(test_slow_fetch_does_not_block, test_teardown),
        cmocka_unit_test_teardown(test_shutdown_abandons_a_stalled_fetch, test_teardown),
        cmocka_unit_test_teardown(test_webhooks, test_teardown),
        cmocka_unit_test_teardown(test_webhook_gives_up, test_teardown),
        cmocka_unit_test_teardown(test_delete_events, test_teardown),
        cmocka_unit_test_teardown(test_hanging_receiver_does_not_delay_others, test_teardown),
        cmocka_unit_test_teardown(test_bad_webhook_url, test_teardown),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
