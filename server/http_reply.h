/* http_reply.h: a struct api_response turned into a libmicrohttpd response, all or nothing.
 *
 * Part of the HTTP front (server/http.c); its own module so that the translation can be tested
 * without a socket. */
#ifndef TPV_SRV_HTTP_REPLY_H
#define TPV_SRV_HTTP_REPLY_H

#include <microhttpd.h>
#include <stdbool.h>

#include "api/api.h"

/* Builds the MHD response of `resp`: its body (taken: resp->body is NULL afterwards, MHD frees
 * it), Content-Type, every header of resp, X-Request-Id `rid`, and Connection: close when `close`.
 * Returns NULL when MHD refuses any of them (a header value MHD will not send, such as one with a
 * line break, or out of memory): a reply missing a header is never built.  On NULL the body is
 * freed too (released with resp). */
struct MHD_Response *srv_http_reply_build(struct api_response *resp, const char *rid, bool close);

/* Queues `resp` on `conn` (srv_http_reply_build); when it cannot be built, logs why and queues a
 * 500 internal error instead, and when even that fails returns MHD_NO so that MHD closes the
 * connection without a reply.  *status gets the status queued (0 when none).  resp is left for
 * the caller to release. */
enum MHD_Result srv_http_reply_queue(struct MHD_Connection *conn, struct api_response *resp,
                                     const char *rid, bool close, int *status);

#endif
