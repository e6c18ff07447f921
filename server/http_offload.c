/* http_offload.c: the fetch offload threads (see http_offload.h).  One FIFO under one lock; the
 * threads take requests in order and dispatch them with hold_expired set (writes never hold). */
#include "server/http_offload.h"

#include <pthread.h>
#include <stdlib.h>

struct srv_offload {
    const struct api_env *env;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct srv_offload_item *head, *tail; /* under lock */
    bool stopping;                        /* under lock */
    pthread_t *threads;
    int nthreads;
};

/* Leaves the answer and wakes the connection: on_access then sends it. */
static void item_finish(struct srv_offload_item *it)
{
    atomic_store(&it->done, true);
    MHD_resume_connection(it->conn);
}

static void answer_stopping(struct srv_offload_item *it)
{
    api_reply_errorf(it->resp, TPV_EUNAVAILABLE, NULL, "the server is shutting down");
}

static void *offload_main(void *arg)
{
    struct srv_offload *o = arg;
    pthread_mutex_lock(&o->lock);
    for (;;) {
        while (!o->head && !o->stopping)
            pthread_cond_wait(&o->cond, &o->lock);
        struct srv_offload_item *it = o->head;
        if (!it)
            break; /* stopping with an empty queue */
        o->head = it->next;
        if (!o->head)
            o->tail = NULL;
        bool stopping = o->stopping;
        pthread_mutex_unlock(&o->lock);
        if (stopping) {
            answer_stopping(it);
        } else {
            it->req->hold_expired = true; /* writes never hold; answer whatever comes */
            api_dispatch(o->env, it->req, it->resp);
        }
        item_finish(it);
        pthread_mutex_lock(&o->lock);
    }
    pthread_mutex_unlock(&o->lock);
    return NULL;
}

int srv_offload_new(struct srv_offload **out, const struct api_env *env, int threads,
                    struct tpv_err *err)
{
    *out = NULL;
    struct srv_offload *o = calloc(1, sizeof *o);
    if (!o)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    o->env = env;
    pthread_mutex_init(&o->lock, NULL);
    pthread_cond_init(&o->cond, NULL);
    o->threads = calloc((size_t)(threads > 0 ? threads : 1), sizeof *o->threads);
    if (!o->threads) {
        srv_offload_free(o);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    for (; o->nthreads < threads; o->nthreads++) {
        if (pthread_create(&o->threads[o->nthreads], NULL, offload_main, o) != 0) {
            srv_offload_free(o);
            return tpv_err_set(err, TPV_EINTERNAL, "fetch-threads", "cannot start a fetch thread");
        }
    }
    *out = o;
    return TPV_OK;
}

bool srv_offload_submit(struct srv_offload *o, struct srv_offload_item *it,
                        struct MHD_Connection *conn, struct api_request *req,
                        struct api_response *resp)
{
    it->conn = conn;
    it->req = req;
    it->resp = resp;
    it->next = NULL;
    pthread_mutex_lock(&o->lock);
    if (o->stopping) {
        pthread_mutex_unlock(&o->lock);
        answer_stopping(it);
        return false;
    }
    it->submitted = true;
    MHD_suspend_connection(conn);
    if (o->tail)
        o->tail->next = it;
    else
        o->head = it;
    o->tail = it;
    pthread_cond_signal(&o->cond);
    pthread_mutex_unlock(&o->lock);
    return true;
}

bool srv_offload_submitted(const struct srv_offload_item *it)
{
    return it->submitted;
}

bool srv_offload_done(const struct srv_offload_item *it)
{
    return atomic_load(&it->done);
}

void srv_offload_stop(struct srv_offload *o)
{
    if (!o)
        return;
    pthread_mutex_lock(&o->lock);
    o->stopping = true;
    pthread_cond_broadcast(&o->cond);
    pthread_mutex_unlock(&o->lock);
    for (int i = 0; i < o->nthreads; i++)
        pthread_join(o->threads[i], NULL);
    o->nthreads = 0;
}

void srv_offload_free(struct srv_offload *o)
{
    if (!o)
        return;
    srv_offload_stop(o);
    free(o->threads);
    pthread_cond_destroy(&o->cond);
    pthread_mutex_destroy(&o->lock);
    free(o);
}
