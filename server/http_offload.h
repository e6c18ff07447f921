/* http_offload.h: the fetch offload of the HTTP front.
 *
 * A request that may block on a remote server (a blob given by URL, api_request_may_fetch) runs
 * on one of --fetch-threads threads while its connection is suspended, so that no MHD thread,
 * and none of the other connections it serves, waits on a fetch.  The thread leaves the answer in
 * the item and resumes the connection; the transport then sends it. */
#ifndef TPV_SRV_HTTP_OFFLOAD_H
#define TPV_SRV_HTTP_OFFLOAD_H

#include <microhttpd.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "api/api.h"

struct srv_offload;

/* One offloaded request, kept in the transport's per-request state (zero-initialised). */
struct srv_offload_item {
    struct MHD_Connection *conn;
    struct api_request *req;
    struct api_response *resp; /* where the answer goes */
    bool submitted;
    _Atomic bool done;         /* *resp holds the answer */
    struct srv_offload_item *next;
};

/* Starts `threads` (>= 1) offload threads dispatching to `env` (which must outlive them).  *out
 * owns them (srv_offload_stop, then srv_offload_free).  TPV_ENOMEM, TPV_EINTERNAL naming
 * "fetch-threads". */
int srv_offload_new(struct srv_offload **out, const struct api_env *env, int threads,
                    struct tpv_err *err);

/* Suspends `conn` and queues `req` for an offload thread, which answers into *resp (zeroed) and
 * resumes the connection; returns true.  After srv_offload_stop nothing is queued: *resp gets
 * the 503 (shutting down) at once, the connection is not suspended, and it returns false. */
bool srv_offload_submit(struct srv_offload *o, struct srv_offload_item *it,
                        struct MHD_Connection *conn, struct api_request *req,
                        struct api_response *resp);

/* Whether the item was submitted / has its answer. */
bool srv_offload_submitted(const struct srv_offload_item *it);
bool srv_offload_done(const struct srv_offload_item *it);

/* Answers what is still queued with 503 (shutting down) and joins the threads, after the fetches
 * in flight end (the daemon calls srv_fetch_abort first, so they end at once).  Every offloaded
 * connection is resumed before this returns.  NULL is a no-op. */
void srv_offload_stop(struct srv_offload *o);

/* Frees the offload once no connection can submit any more (after MHD stopped).  NULL is a
 * no-op. */
void srv_offload_free(struct srv_offload *o);

#endif
