/* http_reply.c: api_response to MHD response (see http_reply.h).  MHD_add_response_header refuses
 * values it cannot send (line breaks) and fails on memory; either way the reply is replaced, never
 * sent with a header missing. */
#include "server/http_reply.h"

#include <stdlib.h>

#include "core/tpv_log.h"

struct MHD_Response *srv_http_reply_build(struct api_response *resp, const char *rid, bool close)
{
    struct MHD_Response *mr = MHD_create_response_from_buffer(resp->body_len, resp->body,
                                                              MHD_RESPMEM_MUST_FREE);
    if (!mr)
        return NULL;
    resp->body = NULL; /* now MHD's */
    resp->body_len = 0;
    bool ok = true;
    if (resp->content_type)
        ok = MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, resp->content_type) ==
             MHD_YES;
    ok = ok && MHD_add_response_header(mr, "X-Request-Id", rid) == MHD_YES;
    for (int i = 0; ok && i < resp->nheaders; i++)
        ok = MHD_add_response_header(mr, resp->headers[i].name, resp->headers[i].value) == MHD_YES;
    if (ok && close)
        ok = MHD_add_response_header(mr, MHD_HTTP_HEADER_CONNECTION, "close") == MHD_YES;
    if (!ok) {
        MHD_destroy_response(mr);
        return NULL;
    }
    return mr;
}

/* Queues a built response; MHD keeps its own reference. */
static enum MHD_Result queue_built(struct MHD_Connection *conn, struct MHD_Response *mr, int status)
{
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned int)status, mr);
    MHD_destroy_response(mr);
    return ok;
}

enum MHD_Result srv_http_reply_queue(struct MHD_Connection *conn, struct api_response *resp,
                                     const char *rid, bool close, int *status)
{
    *status = 0;
    int want = resp->status;
    struct MHD_Response *mr = srv_http_reply_build(resp, rid, close);
    if (mr) {
        *status = want;
        return queue_built(conn, mr, want);
    }
    log_error("rid=%s cannot build the %d response (a header MHD refuses, or out of memory): "
              "answering 500", rid, want);
    struct api_response fallback = { 0 };
    api_reply_errorf(&fallback, TPV_EINTERNAL, NULL, "internal error (request id %s)", rid);
    mr = srv_http_reply_build(&fallback, rid, close);
    int st = fallback.status;
    api_response_free(&fallback);
    if (!mr)
        return MHD_NO; /* MHD closes the connection: no reply rather than half of one */
    *status = st;
    return queue_built(conn, mr, st);
}
