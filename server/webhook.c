/* webhook.c: the outbox senders (see webhook.h).  SENDERS threads, each with its own curl handle,
 * take due rows one at a time (never a row another sender has in flight), so a slow or dead
 * receiver holds one sender for at most the timeout while the others go on; an idle sender sleeps
 * until the next row is due, a notification, or one second (rows written by transitions that do
 * not notify, such as JBR job ends, are seen within it). */
#include "server/webhook.h"

#include <curl/curl.h>
#include <jansson.h>
#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/json_alloc.h"
#include "core/tpv_log.h"
#include "storage/store.h"

#define BATCH 16
#define SENDERS 4 /* deliveries in flight at once */
#define POLL_S 1.0
#define BACKOFF_CAP_S 3600.0
#define RESPONSE_MAX (64 * 1024)

struct srv_webhook {
    struct store *st;
    struct srv_webhook_options opts;
    char *user_agent;
    pthread_t threads[SENDERS];
    int nthreads;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint64_t kicks;              /* notifications so far (under lock) */
    int64_t in_flight[SENDERS];  /* outbox seq each sender is delivering, 0 = none (under lock) */
    int stop; /* read by the transfer's progress callback without the lock */
    uint64_t rng; /* under lock */
    struct sender {
        struct srv_webhook *w;
        int slot; /* index into in_flight */
    } senders[SENDERS];
};

void srv_webhook_sign(const char *secret, const void *body, size_t len,
                      char out[SRV_WEBHOOK_SIG_MAX])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mlen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), body, len, mac, &mlen);
    int n = snprintf(out, SRV_WEBHOOK_SIG_MAX, "sha256=");
    for (unsigned int i = 0; i < mlen && n + 2 < SRV_WEBHOOK_SIG_MAX; i++)
        n += snprintf(out + n, (size_t)(SRV_WEBHOOK_SIG_MAX - n), "%02x", mac[i]);
}

double srv_webhook_backoff(int attempts, long backoff_ms, double u)
{
    double base = (double)backoff_ms / 1000.0;
    double d = base * ldexp(1.0, attempts > 1 ? (attempts - 1 > 30 ? 30 : attempts - 1) : 0);
    if (d > BACKOFF_CAP_S)
        d = BACKOFF_CAP_S;
    return d * (0.5 + 0.5 * u);
}

static double uniform01(struct srv_webhook *w)
{
    /* xorshift64*: jitter only, not security. */
    pthread_mutex_lock(&w->lock);
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    uint64_t x = w->rng * 2685821657736338717ULL;
    pthread_mutex_unlock(&w->lock);
    return (double)(x >> 11) / 9007199254740992.0;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t on_response(char *data, size_t size, size_t nmemb, void *ud)
{
    size_t *seen = ud;
    (void)data;
    *seen += size * nmemb;
    return *seen > RESPONSE_MAX ? 0 : size * nmemb;
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    struct srv_webhook *w = ud;
    (void)a, (void)b, (void)c, (void)d;
    return __atomic_load_n(&w->stop, __ATOMIC_ACQUIRE) ? 1 : 0;
}

/* Adds key: string unless the string is empty (absent fields of an event). */
static int set_str(json_t *o, const char *key, const char *v)
{
    return v[0] ? json_object_set_new(o, key, json_string(v)) : 0;
}

char *srv_webhook_render_event(const struct store_event *ev, const char *event_id)
{
    json_t *o = json_object();
    int bad = !o || set_str(o, "event", ev->event) || set_str(o, "study_id", ev->study_id);
    /* ranking.changed names the version before the ids; the other events after the state. */
    bool version_first = strcmp(ev->event, "ranking.changed") == 0;
    if (!bad && version_first && ev->version > 0)
        bad = json_object_set_new(o, "version", json_integer(ev->version));
    bad = bad || set_str(o, "candidate_id", ev->candidate_id) ||
          set_str(o, "job_id", ev->job_id) || set_str(o, "kind", ev->kind) ||
          set_str(o, "state", ev->state);
    if (!bad && !version_first && ev->version > 0)
        bad = json_object_set_new(o, "version", json_integer(ev->version));
    bad = bad || set_str(o, "at", ev->at) || set_str(o, "id", event_id);
    char *text = bad ? NULL : tpv_json_dump(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

/* One attempt; 0 on a 2xx, else -1 with a short reason in why. */
static int attempt(struct srv_webhook *w, CURL *c, const struct store_outbox_item *it,
                   char *why, size_t cap)
{
    char id[40], sig[SRV_WEBHOOK_SIG_MAX], h_event[80], h_id[64], h_sig[96], h_try[48];
    if (!it->url || !it->secret) {
        snprintf(why, cap, "the study has no webhook secret (created before signed webhooks)");
        return -1;
    }
    /* The stored payload is the body, byte for byte, at every attempt. */
    json_t *payload = json_loads(it->payload, 0, NULL);
    const char *pid = json_string_value(json_object_get(payload, "id"));
    snprintf(id, sizeof id, "%s", pid ? pid : "");
    json_decref(payload);
    if (!id[0]) {
        snprintf(why, cap, "unreadable payload");
        return -1;
    }
    const char *body = it->payload;
    srv_webhook_sign(it->secret, body, strlen(body), sig);
    snprintf(h_event, sizeof h_event, "X-TPV-Event: %s", it->event);
    snprintf(h_id, sizeof h_id, "X-TPV-Event-Id: %s", id);
    snprintf(h_sig, sizeof h_sig, "X-TPV-Signature: %s", sig);
    snprintf(h_try, sizeof h_try, "X-TPV-Delivery-Attempt: %d", it->attempts + 1);
    struct curl_slist *hdrs = NULL, *tmp;
    const char *lines[] = { "Content-Type: application/json", h_event, h_id, h_sig, h_try,
                            "Expect:" };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        if (!(tmp = curl_slist_append(hdrs, lines[i]))) {
            curl_slist_free_all(hdrs);
            snprintf(why, cap, "out of memory");
            return -1;
        }
        hdrs = tmp;
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    size_t seen = 0;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, it->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, w->opts.timeout_s);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, w->opts.timeout_s);
    curl_easy_setopt(c, CURLOPT_USERAGENT, w->user_agent);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_response);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &seen);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, w);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    CURLcode res = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdrs);
    if (res == CURLE_OK && status >= 200 && status < 300)
        return 0;
    if (res == CURLE_OK || (res == CURLE_WRITE_ERROR && status))
        snprintf(why, cap, "receiver answered HTTP %ld", status);
    else
        snprintf(why, cap, "%s", errbuf[0] ? errbuf : curl_easy_strerror(res));
    return -1;
}

static void deliver(struct srv_webhook *w, CURL *c, const struct store_outbox_item *it)
{
    struct tpv_err err;
    char why[CURL_ERROR_SIZE + 64];
    tpv_err_clear(&err);
    int tries = it->attempts + 1, rc;
    if (attempt(w, c, it, why, sizeof why) == 0) {
        rc = store_outbox_delivered(w->st, it->seq, &err);
        log_info("webhook seq=%lld event=%s study=%s attempt=%d delivered", (long long)it->seq,
                 it->event, it->study_id, tries);
    } else if (__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
        return; /* aborted by shutdown: not an attempt; the row is retried at the next start */
    } else if (tries >= w->opts.max_attempts) {
        rc = store_outbox_fail(w->st, it->seq, why, &err);
        log_warn("webhook seq=%lld event=%s study=%s attempt=%d failed for good: %s",
                 (long long)it->seq, it->event, it->study_id, tries, why);
    } else {
        double delay = srv_webhook_backoff(tries, w->opts.backoff_ms, uniform01(w));
        rc = store_outbox_retry(w->st, it->seq, wall_now() + delay, why, &err);
        log_info("webhook seq=%lld event=%s study=%s attempt=%d failed (%s); retry in %.1fs",
                 (long long)it->seq, it->event, it->study_id, tries, why, delay);
    }
    if (rc != TPV_OK)
        log_error("webhook outbox update: %s", tpv_err_message(&err));
}

/* Under w->lock: whether another sender is delivering row `seq`. */
static bool taken(const struct srv_webhook *w, int64_t seq)
{
    for (int i = 0; i < SENDERS; i++)
        if (w->in_flight[i] == seq)
            return true;
    return false;
}

/* Under w->lock: how long an idle sender may sleep (until the next due row, at most POLL_S). */
static double idle_wait(struct srv_webhook *w)
{
    struct tpv_err err;
    double next, wait_s = POLL_S;
    if (store_outbox_next_due(w->st, &next, &err) == TPV_OK && next - wall_now() < wait_s)
        wait_s = next - wall_now() > 0 ? next - wall_now() : 0.05;
    return wait_s;
}

static void sleep_locked(struct srv_webhook *w, double wait_s, uint64_t kicks_seen)
{
    if (__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE) || w->kicks != kicks_seen || wait_s <= 0)
        return;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    double t = (double)until.tv_sec + (double)until.tv_nsec / 1e9 + wait_s;
    until.tv_sec = (time_t)t;
    until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
    pthread_cond_timedwait(&w->cond, &w->lock, &until);
}

static void *sender_main(void *arg)
{
    struct sender *me = arg;
    struct srv_webhook *w = me->w;
    CURL *c = curl_easy_init();
    if (!c)
        log_error("webhook sender: cannot create a curl handle");
    pthread_mutex_lock(&w->lock);
    while (c && !__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
        uint64_t kicks_seen = w->kicks;
        struct store_outbox_item *items = NULL;
        size_t n = 0, pick = 0;
        struct tpv_err err;
        tpv_err_clear(&err);
        /* Choosing a row under the lock keeps two senders off the same one. */
        if (store_outbox_due(w->st, wall_now(), BATCH, &items, &n, &err) != TPV_OK)
            log_error("webhook outbox: %s", tpv_err_message(&err));
        while (pick < n && taken(w, items[pick].seq))
            pick++;
        if (pick < n) {
            w->in_flight[me->slot] = items[pick].seq;
            pthread_mutex_unlock(&w->lock);
            deliver(w, c, &items[pick]); /* records the outcome before the row is released */
            pthread_mutex_lock(&w->lock);
            w->in_flight[me->slot] = 0;
        } else {
            /* Every due row is in other hands: look again after a poll interval or a kick. */
            sleep_locked(w, n > 0 ? POLL_S : idle_wait(w), kicks_seen);
        }
        store_outbox_items_free(items, n);
    }
    pthread_mutex_unlock(&w->lock);
    curl_easy_cleanup(c);
    return NULL;
}

int srv_webhook_start(struct srv_webhook **out, struct store *st,
                      const struct srv_webhook_options *opts, struct tpv_err *err)
{
    struct srv_webhook *w = calloc(1, sizeof *w);
    if (!w || !(w->user_agent = strdup(opts->user_agent ? opts->user_agent : "tpvd"))) {
        free(w);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    w->st = st;
    w->opts = *opts;
    if (w->opts.max_attempts <= 0)
        w->opts.max_attempts = 8;
    if (w->opts.backoff_ms <= 0)
        w->opts.backoff_ms = 1000;
    if (w->opts.timeout_s <= 0)
        w->opts.timeout_s = 10;
    if (getrandom(&w->rng, sizeof w->rng, GRND_NONBLOCK) != (ssize_t)sizeof w->rng || !w->rng)
        w->rng = (uint64_t)time(NULL) | 1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&w->lock, NULL);
    for (int i = 0; i < SENDERS; i++) {
        w->senders[i] = (struct sender){ .w = w, .slot = i };
        if (pthread_create(&w->threads[w->nthreads], NULL, sender_main, &w->senders[i]) == 0)
            w->nthreads++;
    }
    if (w->nthreads == 0) {
        pthread_cond_destroy(&w->cond);
        pthread_mutex_destroy(&w->lock);
        free(w->user_agent);
        free(w);
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "cannot start the webhook sender threads");
    }
    *out = w;
    return TPV_OK;
}

void srv_webhook_notify(struct srv_webhook *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->kicks++;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

void srv_webhook_stop(struct srv_webhook *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    for (int i = 0; i < w->nthreads; i++)
        pthread_join(w->threads[i], NULL);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w->user_agent);
    free(w);
}
