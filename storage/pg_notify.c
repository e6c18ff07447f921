/* pg_notify.c: the LISTEN thread of a PostgreSQL node and the NOTIFY it listens for (see
 * pg_notify.h).  The thread sleeps in poll() on its connection's socket and a wake-up pipe; a lost
 * connection is reset with a backoff and LISTEN issued again. */
#include "storage/pg_notify.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct pg_listener {
    struct pg_conn *c;
    struct pg_listener_hooks hooks;
    int backoff_min_ms, backoff_max_ms;
    int wake[2]; /* pipe: a byte on wake[1] stops the thread */
    atomic_bool stop;
    atomic_bool connected; /* LISTEN in place; false from a loss until the resubscription */
    pthread_t thread;
    bool started;
    pthread_mutex_t lock; /* stats */
    struct pg_listener_stats stats;
};

int pg_notify_parse(const char *payload, char *study_id, size_t cap, int64_t *version)
{
    const char *colon = payload ? strrchr(payload, ':') : NULL;
    if (!colon || colon == payload || (size_t)(colon - payload) >= cap)
        return TPV_EINVAL;
    size_t n = (size_t)(colon - payload);
    static const char ok[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    for (size_t i = 0; i < n; i++)
        if (!strchr(ok, payload[i]))
            return TPV_EINVAL;
    const char *v = colon + 1;
    size_t digits = strspn(v, "0123456789");
    if (digits == 0 || digits > 18 || v[digits] != '\0')
        return TPV_EINVAL;
    int64_t ver = strtoll(v, NULL, 10);
    if (ver <= 0)
        return TPV_EINVAL;
    memcpy(study_id, payload, n);
    study_id[n] = '\0';
    *version = ver;
    return TPV_OK;
}

int pg_notify_study(struct pg_conn *c, const char *study_id, int64_t version,
                    struct tpv_err *err)
{
    char payload[96];
    snprintf(payload, sizeof payload, "%s:%lld", study_id, (long long)version);
    return pg_notify_send(c, PG_NOTIFY_CHANNEL, payload, err);
}

int pg_notify_jobs(struct pg_conn *c, struct tpv_err *err)
{
    return pg_notify_send(c, PG_JOBS_CHANNEL, "", err);
}

static void on_notify(void *ctx, const char *channel, const char *payload)
{
    struct pg_listener *l = ctx;
    if (strcmp(channel, PG_JOBS_CHANNEL) == 0) {
        if (l->hooks.job_queued)
            l->hooks.job_queued(l->hooks.ctx);
        return;
    }
    char sid[64];
    int64_t version;
    bool good = strcmp(channel, PG_NOTIFY_CHANNEL) == 0 &&
                pg_notify_parse(payload, sid, sizeof sid, &version) == TPV_OK;
    pthread_mutex_lock(&l->lock);
    if (good)
        l->stats.received++;
    else
        l->stats.malformed++;
    pthread_mutex_unlock(&l->lock);
    if (good && l->hooks.study_changed)
        l->hooks.study_changed(l->hooks.ctx, sid, version);
}

static int subscribe(struct pg_listener *l, struct tpv_err *err)
{
    /* The channels are constant identifiers: LISTEN takes no parameters. */
    int rc = pg_exec(l->c, "LISTEN " PG_NOTIFY_CHANNEL, 0, NULL, NULL, err);
    if (rc == TPV_OK && l->hooks.job_queued)
        rc = pg_exec(l->c, "LISTEN " PG_JOBS_CHANNEL, 0, NULL, NULL, err);
    return rc;
}

/* Sleeps up to ms, or until stop is asked.  True when it was. */
static bool wait_stop(struct pg_listener *l, int ms)
{
    struct pollfd pfd = { .fd = l->wake[0], .events = POLLIN };
    int rc = poll(&pfd, 1, ms);
    return rc > 0 || atomic_load(&l->stop);
}

static void *listen_main(void *arg)
{
    struct pg_listener *l = arg;
    bool connected = true;
    int backoff = 0;
    while (!atomic_load(&l->stop)) {
        struct tpv_err err;
        if (!connected) {
            if (pg_conn_reset(l->c, &err) == TPV_OK && subscribe(l, &err) == TPV_OK) {
                connected = true;
                backoff = 0;
                pthread_mutex_lock(&l->lock);
                l->stats.reconnects++;
                pthread_mutex_unlock(&l->lock);
                /* The node drops what it cached before it trusts the listener again. */
                if (l->hooks.resubscribed)
                    l->hooks.resubscribed(l->hooks.ctx);
                atomic_store(&l->connected, true);
                continue;
            }
            backoff = !backoff ? l->backoff_min_ms
                      : backoff > l->backoff_max_ms / 2 ? l->backoff_max_ms : backoff * 2;
            if (wait_stop(l, backoff))
                break;
            continue;
        }
        struct pollfd pfd[2] = {
            { .fd = pg_conn_socket(l->c), .events = POLLIN },
            { .fd = l->wake[0], .events = POLLIN },
        };
        int rc = poll(pfd, 2, 200);
        if (rc < 0 && errno != EINTR)
            break;
        if (rc > 0 && pfd[1].revents)
            break;
        if (rc > 0 && pfd[0].revents &&
            pg_conn_consume(l->c, on_notify, l, &err) != TPV_OK) {
            connected = false;
            atomic_store(&l->connected, false);
        }
    }
    return NULL;
}

int pg_listener_start(struct pg_listener **out, const char *conninfo,
                      const struct pg_listener_hooks *hooks, int backoff_min_ms,
                      int backoff_max_ms, struct tpv_err *err)
{
    *out = NULL;
    struct pg_listener *l = calloc(1, sizeof *l);
    if (!l)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    l->wake[0] = l->wake[1] = -1;
    pthread_mutex_init(&l->lock, NULL);
    if (hooks)
        l->hooks = *hooks;
    l->backoff_min_ms = backoff_min_ms > 0 ? backoff_min_ms : 100;
    l->backoff_max_ms = backoff_max_ms >= l->backoff_min_ms ? backoff_max_ms : 2000;
    int rc;
    if (pipe2(l->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        rc = tpv_err_set(err, TPV_EINTERNAL, NULL, "pipe: %s", strerror(errno));
        goto fail;
    }
    l->c = pg_conn_open(conninfo, 5, err);
    if (!l->c) {
        rc = err ? err->code : TPV_EUNAVAILABLE;
        goto fail;
    }
    rc = subscribe(l, err);
    if (rc != TPV_OK)
        goto fail;
    if (pthread_create(&l->thread, NULL, listen_main, l) != 0) {
        rc = tpv_err_set(err, TPV_EINTERNAL, NULL, "cannot start the listener thread");
        goto fail;
    }
    atomic_store(&l->connected, true);
    l->started = true;
    *out = l;
    return TPV_OK;
fail:
    pg_listener_stop(l);
    return rc;
}

void pg_listener_stop(struct pg_listener *l)
{
    if (!l)
        return;
    if (l->started) {
        atomic_store(&l->stop, true);
        ssize_t w = write(l->wake[1], "x", 1);
        (void)w; /* a full pipe already wakes the thread */
        pthread_join(l->thread, NULL);
    }
    pg_conn_close(l->c);
    if (l->wake[0] >= 0)
        close(l->wake[0]);
    if (l->wake[1] >= 0)
        close(l->wake[1]);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

bool pg_listener_connected(struct pg_listener *l)
{
    return l && atomic_load(&l->connected);
}

void pg_listener_stats(struct pg_listener *l, struct pg_listener_stats *out)
{
    pthread_mutex_lock(&l->lock);
    *out = l->stats;
    pthread_mutex_unlock(&l->lock);
}
