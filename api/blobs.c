/* blobs.c: PUT /v1/blobs[/sha256:<hex>] (streamed to the blob store while hashed) and
 * HEAD /v1/blobs/sha256:<hex> and DELETE /v1/blobs/sha256:<hex> (DESIGN.md section 5).  The body never sits in memory: the
 * transport hands chunks to the stream ops below, and the handler commits at the end. */
#include "api/handlers.h"

#include <stdio.h>
#include <string.h>

#include "storage/store.h"

static int blob_open(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    struct store_blob_writer *w = NULL;
    tpv_err_clear(&err);
    if (!env->store) {
        api_reply_errorf(resp, TPV_EUNAVAILABLE, NULL, "storage is not available");
        return TPV_EUNAVAILABLE;
    }
    const char *expect = req->nparams > 0 ? req->params[0] : NULL;
    if (expect && !store_digest_valid(expect)) {
        api_reply_errorf(resp, TPV_EINVAL, "digest",
                         "'%.80s' is not a digest of the form sha256:<64 lowercase hex>", expect);
        return TPV_EINVAL;
    }
    int rc = store_blob_writer_open(env->store, expect, env->limits.max_blob, &w, &err);
    if (rc != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return rc;
    }
    req->stream = w;
    return TPV_OK;
}

static int blob_write(void *stream, const void *data, size_t len, struct tpv_err *err)
{
    return store_blob_writer_write(stream, data, len, err);
}

static void blob_close(void *stream)
{
    store_blob_writer_free(stream);
}

const struct api_stream_ops api_blob_stream = { blob_open, blob_write, blob_close };

void api_handle_blob_put(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    char digest[STORE_DIGEST_MAX], location[128];
    uint64_t size = 0;
    bool existed = false;
    tpv_err_clear(&err);
    if (!req->stream) {
        /* Only reached when the transport did not stream (unit tests without a sink). */
        api_reply_errorf(resp, TPV_EINTERNAL, "body", "blob upload without a body stream");
        return;
    }
    int rc = store_blob_writer_commit(req->stream, digest, &size, &existed, &err);
    if (rc != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    if (!existed && env->metrics)
        api_metrics_blob_bytes(env->metrics, size);
    snprintf(location, sizeof location, "/v1/blobs/%s", digest);
    api_reply_json(resp, existed ? 200 : 201,
                   json_pack("{s:s,s:I}", "digest", digest, "size", (json_int_t)size));
    api_response_add_header(resp, "Location", location);
}

void api_handle_blob_head(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    uint64_t size = 0;
    tpv_err_clear(&err);
    if (!env->store) {
        api_reply_errorf(resp, TPV_EUNAVAILABLE, NULL, "storage is not available");
        return;
    }
    int rc = store_blob_stat(env->store, req->params[0], &size, &err);
    if (rc != TPV_OK) {
        api_reply_error(resp, &err); /* 400 malformed digest, 404 absent */
        return;
    }
    char text[32];
    snprintf(text, sizeof text, "%llu", (unsigned long long)size);
    api_reply_empty(resp, 200);
    api_response_add_header(resp, "X-Blob-Size", text);
}

void api_handle_blob_delete(const struct api_env *env, struct api_request *req,
                            struct api_response *resp)
{
    struct tpv_err err;
    tpv_err_clear(&err);
    /* 400 malformed digest, 404 absent, 409 naming what references it */
    if (store_blob_delete(env->store, req->params[0], &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    api_reply_empty(resp, 204);
}
