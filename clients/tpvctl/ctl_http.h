/* ctl_http.h: tpvctl's HTTP layer over libcurl: JSON calls, blob uploads by digest with a
 * progress bar, and the server's JSON errors turned into messages and exit codes. */
#ifndef TPV_CTL_HTTP_H
#define TPV_CTL_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Exit codes scripts can rely on (also in `tpvctl --help`). */
enum ctl_exit {
    CTL_OK = 0,
    CTL_ERR_SERVER = 1,   /* the server refused the request (4xx/5xx); its message is printed */
    CTL_ERR_USAGE = 2,    /* bad command line */
    CTL_ERR_CONNECT = 3,  /* server unreachable / transport failure / response over the cap */
    CTL_ERR_JOB = 4,      /* the awaited job failed or was canceled */
    CTL_ERR_TIMEOUT = 5,  /* --timeout passed while waiting */
    CTL_ERR_LOCAL = 6,    /* a local file could not be read, or out of memory */
    CTL_ERR_NOMEM = CTL_ERR_LOCAL,
};

/* Progress bars (uploads, job waits) redraw at most this many times a second. */
#define CTL_PROGRESS_HZ 10

/* Default cap of one response body (--max-response): far above any page or ranking the server
 * sends, low enough that a broken or hostile server cannot take the client's memory. */
#define CTL_MAX_RESPONSE_DEFAULT ((size_t)256 << 20)

struct ctl {
    const char *url;   /* base URL without trailing slash */
    size_t max_response; /* bytes of one response body; 0 = CTL_MAX_RESPONSE_DEFAULT */
    const char *token; /* bearer token or NULL */
    bool progress;     /* draw progress bars (stderr is a TTY and not --quiet) */
    bool quiet;        /* --quiet: no notes on stderr */
};

/* Performs METHOD path with an optional JSON body (not stolen) and extra headers ("Name: v",
 * NULL-terminated).  *out gets the parsed response body (or NULL), *status the HTTP status.
 * On a 4xx/5xx prints "tpvctl: <code>: <message>" and returns CTL_ERR_SERVER, unless the status
 * is listed in `ok_statuses` (0-terminated).  Returns CTL_OK / CTL_ERR_CONNECT / CTL_ERR_SERVER. */
int ctl_call(const struct ctl *c, const char *method, const char *path, const json_t *body,
             const char *const headers[], const long ok_statuses[], long *status, json_t **out);

/* A response body as text: `data` (NUL-terminated, owned by the caller: free()) of `len` bytes;
 * is_json when the server answered application/json (or gave no type). */
struct ctl_text {
    char *data;
    size_t len;
    bool is_json;
};

/* GET path with "Accept: <accept>" and the raw body in *out.  A 4xx/5xx prints the server's error
 * and returns CTL_ERR_SERVER.  Returns a ctl_exit code. */
int ctl_get_text(const struct ctl *c, const char *path, const char *accept, struct ctl_text *out);

/* Hashes `path` (SHA-256), asks the server with HEAD, uploads with PUT /v1/blobs/sha256:<hex>
 * unless present.  Writes "sha256:<hex>" into digest (72 bytes).  Returns a ctl_exit code. */
int ctl_blob_put(const struct ctl *c, const char *path, char digest[72], bool *uploaded);

/* Reference for a blob argument: "sha256:..." passes through, an http:// or https:// URL becomes
 * {"url": ...} (the server fetches it, if its operator allows the host), anything else is a file
 * to upload (skipped, with a note unless quiet, when the server has it).  Returns a new JSON
 * value or NULL after printing an error (*rc gets the code). */
json_t *ctl_blob_ref(const struct ctl *c, const char *arg, int *rc);

#endif
