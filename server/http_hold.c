/* http_hold.c: long-poll holds (see http_hold.h).
 *
 * Lock order: lock, then MHD's own locks (MHD_suspend/resume_connection); MHD never calls us with
 * its locks held on paths that take lock. */
#include "server/http_hold.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct srv_holds {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct srv_hold *held; /* doubly linked list, under lock */
    uint64_t change_seq;   /* bumped by every study change, under lock */
    bool stopping;
    bool timer_started;
    pthread_t timer;
};

static bool ts_passed(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > t->tv_sec || (now.tv_sec == t->tv_sec && now.tv_nsec >= t->tv_nsec);
}

/* Under lock: unlinks a held request and resumes its connection. */
static void held_resume(struct srv_holds *h, struct srv_hold *hold)
{
    if (!hold->in_list)
        return;
    if (hold->prev)
        hold->prev->next = hold->next;
    else
        h->held = hold->next;
    if (hold->next)
        hold->next->prev = hold->prev;
    hold->next = hold->prev = NULL;
    hold->in_list = false;
    MHD_resume_connection(hold->conn);
}

void srv_holds_study_changed(struct srv_holds *h, const char *study_id)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->change_seq++;
    for (struct srv_hold *hold = h->held, *next; hold; hold = next) {
        next = hold->next;
        if (strcmp(hold->study, study_id) == 0)
            held_resume(h, hold);
    }
    pthread_mutex_unlock(&h->lock);
}

/* Resumes held requests whose time ran out (all of them when stopping). */
static void *hold_timer(void *arg)
{
    struct srv_holds *h = arg;
    pthread_mutex_lock(&h->lock);
    for (;;) {
        for (struct srv_hold *hold = h->held, *next; hold; hold = next) {
            next = hold->next;
            if (h->stopping || ts_passed(&hold->deadline))
                held_resume(h, hold);
        }
        if (h->stopping)
            break;
        struct timespec wake;
        clock_gettime(CLOCK_REALTIME, &wake);
        wake.tv_nsec += 50 * 1000000L;
        if (wake.tv_nsec >= 1000000000L) {
            wake.tv_sec++;
            wake.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&h->cond, &h->lock, &wake);
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

int srv_holds_new(struct srv_holds **out, struct tpv_err *err)
{
    *out = NULL;
    struct srv_holds *h = calloc(1, sizeof *h);
    if (!h)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->cond, NULL);
    if (pthread_create(&h->timer, NULL, hold_timer, h) != 0) {
        srv_holds_free(h);
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "cannot start the long-poll timer");
    }
    h->timer_started = true;
    *out = h;
    return TPV_OK;
}

bool srv_holds_dispatch(struct srv_holds *h, const struct api_env *env, struct MHD_Connection *conn,
                        struct srv_hold *hold, struct api_request *req, struct api_response *resp)
{
    for (int round = 0;; round++) {
        pthread_mutex_lock(&h->lock);
        uint64_t seq = h->change_seq;
        bool stopping = h->stopping;
        pthread_mutex_unlock(&h->lock);

        req->hold_expired = stopping || round >= 8 || (hold->armed && ts_passed(&hold->deadline));
        api_dispatch(env, req, resp);
        if (resp->hold_seconds <= 0)
            return true;
        if (!hold->armed) {
            clock_gettime(CLOCK_MONOTONIC, &hold->deadline);
            hold->deadline.tv_sec += resp->hold_seconds;
            hold->armed = true;
        }
        snprintf(hold->study, sizeof hold->study, "%s", resp->hold_study);
        api_response_free(resp);
        pthread_mutex_lock(&h->lock);
        /* A change between our read of the version and now would be missed: look again. */
        if (h->change_seq != seq || h->stopping) {
            pthread_mutex_unlock(&h->lock);
            continue;
        }
        hold->conn = conn;
        hold->prev = NULL;
        hold->next = h->held;
        if (h->held)
            h->held->prev = hold;
        h->held = hold;
        hold->in_list = true;
        MHD_suspend_connection(conn);
        pthread_mutex_unlock(&h->lock);
        return false;
    }
}

void srv_holds_release(struct srv_holds *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->stopping = true;
    while (h->held)
        held_resume(h, h->held);
    pthread_cond_broadcast(&h->cond);
    pthread_mutex_unlock(&h->lock);
}

void srv_holds_stop(struct srv_holds *h)
{
    if (!h)
        return;
    srv_holds_release(h);
    if (h->timer_started)
        pthread_join(h->timer, NULL);
    h->timer_started = false;
}

void srv_holds_free(struct srv_holds *h)
{
    if (!h)
        return;
    srv_holds_stop(h);
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->lock);
    free(h);
}
