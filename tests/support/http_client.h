/* http_client.h: a small libcurl client for integration tests: one request, whole response. */
#ifndef TPV_TEST_HTTP_CLIENT_H
#define TPV_TEST_HTTP_CLIENT_H

#include <jansson.h>
#include <stddef.h>

struct http_result {
    long status;
    char *body;      /* NUL-terminated */
    size_t body_len;
    char *headers;   /* raw response header block */
    json_t *json;    /* parsed body when it is JSON, else NULL */
};

/* A growable response buffer and its libcurl CURLOPT_WRITEFUNCTION (CURLOPT_WRITEDATA = the
 * buffer): data stays NUL-terminated; free(data) when done. */
struct http_buf {
    char *data;
    size_t len;
};
size_t http_buf_append(char *ptr, size_t size, size_t nmemb, void *userdata);

/* Performs METHOD url with an optional body (len bytes) and extra headers ("Name: value",
 * NULL-terminated list, may be NULL).  Returns 0 when a response arrived (any status), -1 on a
 * transport error.  Free the result with http_result_free. */
int http_request(const char *method, const char *url, const void *body, size_t len,
                 const char *const headers[], struct http_result *out);

/* The value of response header `name` (case-insensitive) copied into buf, or NULL. */
const char *http_result_header(const struct http_result *r, const char *name, char *buf, size_t cap);

void http_result_free(struct http_result *r);

/* METHOD base+path with a JSON text body (may be NULL) and extra headers; 0 or -1 like
 * http_request.  Sends Content-Type: application/json with a body. */
int http_json(const char *base, const char *method, const char *path, const char *json,
              const char *const headers[], struct http_result *out);

/* The string at a dotted path of r->json ("job.id"), or NULL. */
const char *http_json_str(const struct http_result *r, const char *dotted);

#endif
