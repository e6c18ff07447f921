/* http_hold.h: long-poll holds of the HTTP front (DESIGN.md section 5, `wait=`).
 *
 * A request whose handler asks for a hold (api_response.hold_seconds > 0) is not answered: its
 * connection is suspended, so that no thread waits, and resumed when the store reports a change
 * of the study or the hold times out (a timer thread looks every 50 ms); the request is then
 * dispatched again, with req->hold_expired set once its time is up. */
#ifndef TPV_SRV_HTTP_HOLD_H
#define TPV_SRV_HTTP_HOLD_H

#include <microhttpd.h>
#include <stdbool.h>
#include <time.h>

#include "api/api.h"

struct srv_holds;

/* One request's hold state, kept in the transport's per-request state (zero-initialised). */
struct srv_hold {
    struct MHD_Connection *conn;
    bool armed;               /* a deadline was set by the first hold */
    struct timespec deadline; /* CLOCK_MONOTONIC */
    char study[API_PARAM_MAX];
    bool in_list;
    struct srv_hold *next, *prev;
};

/* Starts the hold list and its timer thread.  *out owns them (srv_holds_stop, then
 * srv_holds_free).  TPV_ENOMEM, TPV_EINTERNAL (no thread). */
int srv_holds_new(struct srv_holds **out, struct tpv_err *err);

/* Dispatches `req` (api_dispatch) until it is answered: returns true with the answer in *resp
 * (zero-initialised by the caller, released by it), or false when the request is held: its
 * connection is suspended and will be resumed, and the transport dispatches it again through
 * here.  `hold` must stay valid until the request completes.  Thread-safe. */
bool srv_holds_dispatch(struct srv_holds *h, const struct api_env *env, struct MHD_Connection *conn,
                        struct srv_hold *hold, struct api_request *req, struct api_response *resp);

/* Resumes the requests held on `study_id`.  Thread-safe; h may be NULL. */
void srv_holds_study_changed(struct srv_holds *h, const char *study_id);

/* Resumes every held request (each is answered as if its time ran out) and holds none from here
 * on.  Safe to call more than once; h may be NULL. */
void srv_holds_release(struct srv_holds *h);

/* Releases the holds and joins the timer thread; srv_holds_dispatch still answers (without
 * holding) until srv_holds_free.  NULL is a no-op. */
void srv_holds_stop(struct srv_holds *h);

/* Frees the holds once no connection can dispatch any more (after MHD stopped).  NULL is a
 * no-op. */
void srv_holds_free(struct srv_holds *h);

#endif
