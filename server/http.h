/* http.h: the libmicrohttpd front of tpvd: turns connections into api_dispatch calls.  This is its
 * whole interface; its parts (server/http_hold.h long-poll holds, server/http_offload.h the fetch
 * offload, server/http_reply.h the response translation) are used by server/http.c only. */
#ifndef TPV_SRV_HTTP_H
#define TPV_SRV_HTTP_H

#include <stdint.h>

#include "api/api.h"
#include "server/config.h"

struct srv_http;

/* Binds cfg->listen and starts serving on cfg->http_threads threads.  `env` must outlive the
 * server.  On success *out owns the server (stop with srv_http_stop).  Errors: TPV_EINVAL for an
 * unusable address, TPV_EUNAVAILABLE when the port cannot be bound. */
int srv_http_start(struct srv_http **out, const struct srv_config *cfg, const struct api_env *env,
                   struct tpv_err *err);

/* The bound port (useful with --listen HOST:0). */
uint16_t srv_http_port(const struct srv_http *http);

/* Wakes the long-poll requests held on `study_id` (the store's study_changed hook calls this).
 * Thread-safe; http may be NULL. */
void srv_http_study_changed(struct srv_http *http, const char *study_id);

/* Stops accepting new connections and answers held long-polls; requests in flight complete. */
void srv_http_quiesce(struct srv_http *http);

/* Stops the server, closing all connections, and frees it.  NULL is a no-op. */
void srv_http_stop(struct srv_http *http);

#endif
