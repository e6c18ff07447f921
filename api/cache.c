/* cache.c: a small cache of rendered responses keyed by (resource, query) and valid for one
 * study version (see api.h).  Rankings are polled far more often than they change: a hit costs one
 * indexed read of the version and a copy of the body instead of a query over every candidate and
 * a JSON rendering. */
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
    }
    free(c->e);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

bool api_cache_get(struct api_cache *c, const char *key, int64_t version, char etag[API_ETAG_MAX],
                   char **body, size_t *len)
{
    if (!c)
        return false;
    bool hit = false;
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < c->n; i++) {
        struct cache_entry *e = &c->e[i];
        if (!e->key || e->version != version || strcmp(e->key, key) != 0)
            continue;
        memcpy(etag, e->etag, API_ETAG_MAX);
        if (body) {
            *body = malloc(e->len + 1);
            if (!*body)
                break;
            memcpy(*body, e->body, e->len + 1);
            *len = e->len;
        }
        e->used = ++c->clock;
        hit = true;
        break;
    }
    pthread_mutex_unlock(&c->lock);
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
    slot->key = k;
    slot->body = b;
    slot->len = len;
    slot->version = version;
    memcpy(slot->etag, etag, strlen(etag) + 1);
    slot->used = ++c->clock;
    pthread_mutex_unlock(&c->lock);
}
