/* cache.c: a small cache of rendered responses keyed by (resource, query) and valid for one
 * study version (see api.h).  Rankings are polled far more often than they change: a hit costs one
 * indexed read of the version and a copy of the body instead of a query over every candidate and
 * a JSON rendering.  An entry also keeps the gzip coding of its body once a client asked for it,
 * so compression costs once per rendering, not once per request. */
#include "api/api.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct cache_entry {
    char *key;
    int64_t version;
    char etag[API_ETAG_MAX];
    char *body;
    size_t len;
    char *gz; /* its gzip coding, made on the first request that takes it; NULL before */
    size_t gz_len;
    bool gz_failed; /* zlib failed once for this rendering: serve it as it is */
    uint64_t used; /* clock of the last hit, for eviction */
};

struct api_cache {
    pthread_mutex_t lock;
    struct cache_entry *e;
    size_t n;
    uint64_t clock;
    uint64_t max_body;
};

int api_cache_new(struct api_cache **out, size_t entries, uint64_t max_body)
{
    struct api_cache *c = calloc(1, sizeof *c);
    *out = NULL;
    if (!c)
        return TPV_ENOMEM;
    c->e = calloc(entries ? entries : 1, sizeof *c->e);
    if (!c->e) {
        free(c);
        return TPV_ENOMEM;
    }
    c->n = entries ? entries : 1;
    c->max_body = max_body;
    pthread_mutex_init(&c->lock, NULL);
    *out = c;
    return TPV_OK;
}

void api_cache_free(struct api_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->e[i].key);
        free(c->e[i].body);
        free(c->e[i].gz);
    }
    free(c->e);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* The entry of key at version, or NULL.  Called with the lock held. */
static struct cache_entry *find_entry(struct api_cache *c, const char *key, int64_t version)
{
    for (size_t i = 0; i < c->n; i++) {
        struct cache_entry *e = &c->e[i];
        if (e->key && e->version == version && strcmp(e->key, key) == 0)
            return e;
    }
    return NULL;
}

static char *copy_bytes(const char *src, size_t len)
{
    char *b = malloc(len + 1);
    if (b) {
        memcpy(b, src, len);
        b[len] = '\0';
    }
    return b;
}

/* Compresses the identity copy in out->body outside the lock (a 50 KB body takes about a
 * millisecond, which would stall every other poll) and attaches the result to the entry if it
 * is still there; out then holds the gzip representation, or stays the identity one when zlib
 * failed (remembered, so that a failing body is not retried on every request). */
static void make_gzip(struct api_cache *c, const char *key, int64_t version, struct api_cached *out)
{
    char *gz = NULL;
    size_t gz_len = 0;
    bool ok = api_gzip(out->body, out->len, &gz, &gz_len) == TPV_OK;
    pthread_mutex_lock(&c->lock);
    struct cache_entry *e = find_entry(c, key, version);
    if (e && !ok)
        e->gz_failed = true;
    if (e && ok && !e->gz) {
        char *kept = copy_bytes(gz, gz_len);
        if (kept) {
            e->gz = kept;
            e->gz_len = gz_len;
        }
    }
    pthread_mutex_unlock(&c->lock);
    if (!ok)
        return;
    free(out->body);
    out->body = gz;
    out->len = gz_len;
    out->gzip = true;
    api_etag_for_gzip(out->etag, sizeof out->etag);
}

bool api_cache_get(struct api_cache *c, const char *key, int64_t version, bool accept_gzip,
                   bool want_body, struct api_cached *out)
{
    memset(out, 0, sizeof *out);
    if (!c)
        return false;
    bool hit = false, compress = false;
    pthread_mutex_lock(&c->lock);
    struct cache_entry *e = find_entry(c, key, version);
    if (e) {
        bool gzip = accept_gzip && e->len >= API_GZIP_MIN && !e->gz_failed;
        memcpy(out->etag, e->etag, API_ETAG_MAX);
        hit = true;
        if (gzip && (e->gz || !want_body)) {
            /* Without a body only the tag matters, and it is the gzip one even before the
             * coding is made: the body that goes with it will be. */
            api_etag_for_gzip(out->etag, sizeof out->etag);
            out->gzip = true;
        }
        if (want_body) {
            out->body = out->gzip ? copy_bytes(e->gz, e->gz_len) : copy_bytes(e->body, e->len);
            out->len = out->gzip ? e->gz_len : e->len;
            hit = out->body != NULL;
            compress = hit && gzip && !out->gzip;
        }
        e->used = ++c->clock;
    }
    pthread_mutex_unlock(&c->lock);
    if (compress)
        make_gzip(c, key, version, out);
    return hit;
}

void api_cache_put(struct api_cache *c, const char *key, int64_t version, const char *etag,
                   const char *body, size_t len)
{
    if (!c || len > c->max_body || strlen(etag) >= API_ETAG_MAX)
        return;
    char *k = strdup(key), *b = malloc(len + 1);
    if (!k || !b) {
        free(k);
        free(b);
        return;
    }
    memcpy(b, body, len);
    b[len] = '\0';
    pthread_mutex_lock(&c->lock);
    /* Same key: replace (an older version is useless); else the least recently used slot. */
    struct cache_entry *slot = &c->e[0];
    for (size_t i = 0; i < c->n; i++) {
        struct cache_entry *e = &c->e[i];
        if (e->key && strcmp(e->key, key) == 0) {
            slot = e;
            break;
        }
        if (!e->key || e->used < slot->used)
            slot = e;
    }
    if (slot->key && strcmp(slot->key, key) == 0 && slot->version > version) {
        pthread_mutex_unlock(&c->lock); /* a newer rendering is already there */
        free(k);
        free(b);
        return;
    }
    free(slot->key);
    free(slot->body);
    free(slot->gz);
    slot->key = k;
    slot->body = b;
    slot->len = len;
    slot->gz = NULL;
    slot->gz_len = 0;
    slot->gz_failed = false;
    slot->version = version;
    memcpy(slot->etag, etag, strlen(etag) + 1);
    slot->used = ++c->clock;
    pthread_mutex_unlock(&c->lock);
}
