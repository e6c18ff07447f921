/* fetch.c: blob references by URL, downloaded into the blob store (see fetch.h).
 *
 * Redirects are followed by hand (CURLOPT_FOLLOWLOCATION off) so that every hop's scheme and host
 * are checked against the allow list before a connection is made.  Only a 2xx body reaches the
 * blob writer, which hashes it, enforces the size cap while streaming and makes the blob appear
 * atomically; a failed or refused fetch leaves no temporary behind. */
#include "server/fetch.h"

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/tpv_log.h"
#include "storage/store.h"

#define DISCARD_MAX (64 * 1024) /* body bytes of a non-2xx answer we read before giving up */

struct srv_fetch {
    struct store *st;
    char *allow;
    char *user_agent;
    uint64_t max_size;
    long connect_timeout_s, timeout_s;
    _Atomic bool aborting; /* srv_fetch_abort: transfers in flight stop at their next callback */
};

void srv_fetch_abort(struct srv_fetch *f)
{
    if (f)
        atomic_store(&f->aborting, true);
}

/* libcurl calls this at least once a second, also while waiting for an answer. */
static int on_transfer_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                                curl_off_t ulnow)
{
    const struct srv_fetch *f = ud;
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    return atomic_load(&f->aborting) ? 1 : 0;
}

int srv_fetch_new(struct srv_fetch **out, struct store *st, const struct srv_fetch_options *opts,
                  struct tpv_err *err)
{
    struct srv_fetch *f = calloc(1, sizeof *f);
    if (!f || !(f->allow = strdup(opts->allow ? opts->allow : "")) ||
        !(f->user_agent = strdup(opts->user_agent ? opts->user_agent : "tpvd"))) {
        srv_fetch_free(f);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    f->st = st;
    f->max_size = opts->max_size;
    f->connect_timeout_s = opts->connect_timeout_s > 0 ? opts->connect_timeout_s : 10;
    f->timeout_s = opts->timeout_s > 0 ? opts->timeout_s : 300;
    *out = f;
    return TPV_OK;
}

void srv_fetch_free(struct srv_fetch *f)
{
    if (!f)
        return;
    free(f->allow);
    free(f->user_agent);
    free(f);
}

bool srv_fetch_host_allowed(const char *allow, const char *host, unsigned port)
{
    size_t hlen = strlen(host);
    for (const char *p = allow ? allow : ""; *p;) {
        while (*p == ',' || *p == ' ' || *p == '\t')
            p++;
        size_t len = strcspn(p, ", \t");
        if (len == 0)
            break;
        const char *entry = p;
        p += len;
        /* "host:port" unless the colon belongs to a bracketed IPv6 address. */
        const char *colon = NULL;
        for (size_t i = len; i > 0; i--) {
            if (entry[i - 1] == ']')
                break;
            if (entry[i - 1] == ':') {
                colon = entry + i - 1;
                break;
            }
        }
        size_t elen = colon ? (size_t)(colon - entry) : len;
        if (elen != hlen || strncasecmp(entry, host, hlen) != 0)
            continue;
        if (!colon)
            return true;
        char *end;
        unsigned long want = strtoul(colon + 1, &end, 10);
        if (end == entry + len && want == port)
            return true;
    }
    return false;
}

/* The parts of a URL we check, and a form safe to show (no userinfo, no query). */
struct url_parts {
    char scheme[8];
    char host[256];
    unsigned port;
    char shown[512];
};

static bool url_parse(const char *url, struct url_parts *out)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
    bool ok = u && curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
              curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
              curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
              curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK &&
              curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK &&
              strlen(scheme) < sizeof out->scheme && strlen(host) < sizeof out->host &&
              host[0] != '\0';
    if (ok) {
        snprintf(out->scheme, sizeof out->scheme, "%s", scheme);
        snprintf(out->host, sizeof out->host, "%s", host);
        out->port = (unsigned)strtoul(port, NULL, 10);
        snprintf(out->shown, sizeof out->shown, "%s://%s:%u%.200s", scheme, host, out->port, path);
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_url_cleanup(u);
    return ok;
}

struct transfer {
    struct srv_fetch *f;
    CURL *curl;
    const char *expect;
    struct store_blob_writer *w;
    struct tpv_err werr;
    bool failed;       /* the writer refused: werr says why */
    uint64_t discarded;
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    struct transfer *t = ud;
    size_t len = size * nmemb;
    long code = 0;
    curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &code);
    if (code < 200 || code > 299) {
        t->discarded += len;
        return t->discarded > DISCARD_MAX ? 0 : len;
    }
    if (!t->w && store_blob_writer_open(t->f->st, t->expect, t->f->max_size, &t->w, &t->werr) !=
                     TPV_OK) {
        t->failed = true;
        return 0;
    }
    if (store_blob_writer_write(t->w, data, len, &t->werr) != TPV_OK) {
        t->failed = true;
        return 0;
    }
    return len;
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One hop: GET `url` with what is left of the deadline.  *status gets the answer's status and
 * *location (malloc'd) the redirect target of a 3xx. */
static int fetch_hop(struct transfer *t, const char *url, const struct url_parts *up,
                     const char *field, double deadline, long *status, char **location,
                     struct tpv_err *err)
{
    char errbuf[CURL_ERROR_SIZE] = "";
    long left_ms = (long)((deadline - mono_now()) * 1000);
    if (left_ms <= 0)
        return tpv_err_set(err, TPV_EUNAVAILABLE, field, "%s: fetching %s timed out", field,
                           up->shown);
    CURL *c = t->curl;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, t->f->connect_timeout_s);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, left_ms);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 30L);
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)t->f->max_size);
    curl_easy_setopt(c, CURLOPT_USERAGENT, t->f->user_agent);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_transfer_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, t->f);
    CURLcode res = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    if (t->failed) {
        *err = t->werr;
        if (err->code == TPV_ETOOLARGE)
            return tpv_err_set(err, TPV_ETOOLARGE, field,
                               "%s: %s is larger than the %llu-byte blob limit (--max-blob)",
                               field, up->shown, (unsigned long long)t->f->max_size);
        tpv_err_prefix(err, "%s: storing %s", field, up->shown);
        return err->code;
    }
    if (res == CURLE_FILESIZE_EXCEEDED)
        return tpv_err_set(err, TPV_ETOOLARGE, field,
                           "%s: %s is larger than the %llu-byte blob limit (--max-blob)", field,
                           up->shown, (unsigned long long)t->f->max_size);
    if (res == CURLE_WRITE_ERROR && t->discarded > DISCARD_MAX)
        return tpv_err_set(err, TPV_EUNAVAILABLE, field, "%s: %s answered HTTP %ld", field,
                           up->shown, *status);
    if (res == CURLE_ABORTED_BY_CALLBACK)
        return tpv_err_set(err, TPV_EUNAVAILABLE, field,
                           "%s: fetching %s was stopped: the server is shutting down", field,
                           up->shown);
    if (res != CURLE_OK)
        return tpv_err_set(err, TPV_EUNAVAILABLE, field, "%s: fetching %s failed: %s", field,
                           up->shown, errbuf[0] ? errbuf : curl_easy_strerror(res));
    *location = NULL;
    if (*status >= 300 && *status < 400) {
        char *loc = NULL;
        curl_easy_getinfo(c, CURLINFO_REDIRECT_URL, &loc);
        if (loc && !(*location = strdup(loc)))
            return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    return TPV_OK;
}

int srv_fetch_blob(void *ctx, const char *url, const char *expect, const char *field, char *digest,
                   size_t cap, struct tpv_err *err)
{
    struct srv_fetch *f = ctx;
    struct transfer t = { .f = f, .expect = expect };
    struct url_parts up;
    char *cur = strdup(url);
    double deadline = mono_now() + (double)f->timeout_s;
    int rc = TPV_OK;
    if (!cur)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    if (!(t.curl = curl_easy_init())) {
        free(cur);
        return tpv_err_set(err, TPV_EINTERNAL, field, "cannot start a transfer");
    }
    for (int hop = 0;; hop++) {
        if (!url_parse(cur, &up)) {
            rc = hop == 0 ? tpv_err_set(err, TPV_EINVAL, field, "%s: not a valid URL", field)
                          : tpv_err_set(err, TPV_EUNAVAILABLE, field,
                                        "%s: redirected to an invalid URL", field);
            break;
        }
        if (strcasecmp(up.scheme, "http") != 0 && strcasecmp(up.scheme, "https") != 0) {
            rc = hop == 0 ? tpv_err_set(err, TPV_EINVAL, field,
                                        "%s: only http and https URLs are fetched", field)
                          : tpv_err_set(err, TPV_EPERM, field,
                                        "%s: redirected to a %s URL; only http and https are "
                                        "followed", field, up.scheme);
            break;
        }
        if (!srv_fetch_host_allowed(f->allow, up.host, up.port)) {
            rc = tpv_err_set(err, TPV_EPERM, field,
                             "%s: %shost %s is not allowed to be fetched from (the operator "
                             "lists allowed hosts with tpvd --fetch-allow)", field,
                             hop == 0 ? "" : "redirect to ", up.host);
            break;
        }
        long status = 0;
        char *location = NULL;
        rc = fetch_hop(&t, cur, &up, field, deadline, &status, &location, err);
        if (rc != TPV_OK)
            break;
        if (status >= 200 && status < 300) {
            uint64_t size = 0;
            bool existed = false;
            char d[STORE_DIGEST_MAX];
            if (!t.w)
                rc = store_blob_writer_open(f->st, expect, f->max_size, &t.w, err);
            if (rc == TPV_OK)
                rc = store_blob_writer_commit(t.w, d, &size, &existed, err);
            if (rc == TPV_OK) {
                snprintf(digest, cap, "%s", d);
                log_info("fetched %s: %llu bytes, %s%s", up.shown, (unsigned long long)size, d,
                         existed ? " (already stored)" : "");
            } else {
                tpv_err_prefix(err, "%s: %s", field, up.shown);
                snprintf(err->field, sizeof err->field, "%s", field);
            }
            break;
        }
        if (status >= 300 && status < 400 && location) {
            if (hop >= SRV_FETCH_MAX_REDIRECTS) {
                free(location);
                rc = tpv_err_set(err, TPV_EUNAVAILABLE, field,
                                 "%s: more than %d redirects fetching %s", field,
                                 SRV_FETCH_MAX_REDIRECTS, url_parse(url, &up) ? up.shown : "");
                break;
            }
            free(cur);
            cur = location;
            continue;
        }
        free(location);
        rc = tpv_err_set(err, TPV_EUNAVAILABLE, field, "%s: %s answered HTTP %ld", field,
                         up.shown, status);
        break;
    }
    if (rc != TPV_OK)
        log_warn("fetch for %s failed: %s", field, tpv_err_message(err));
    store_blob_writer_free(t.w);
    curl_easy_cleanup(t.curl);
    free(cur);
    return rc;
}
