/* ctl_http.c: libcurl calls of tpvctl (see ctl_http.h). */
#include "clients/tpvctl/ctl_http.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A response body: grows geometrically (amortised O(1) per byte) up to `max` bytes; past it the
 * transfer is aborted and `over` set, so a runaway or hostile server cannot exhaust memory. */
struct buf {
    char *data;
    size_t len, cap;
    size_t max;
    bool over, oom;
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct buf *b = userdata;
    size_t n, need;
    if (__builtin_mul_overflow(size, nmemb, &n) || __builtin_add_overflow(b->len, n, &need) ||
        need > b->max) {
        b->over = true;
        return 0; /* curl stops with CURLE_WRITE_ERROR */
    }
    if (need + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 16384;
        while (cap < need + 1)
            cap = cap > SIZE_MAX / 2 ? need + 1 : cap * 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->oom = true;
            return 0;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len = need;
    b->data[b->len] = '\0';
    return n;
}

static struct curl_slist *auth_header(const struct ctl *c, struct curl_slist *list)
{
    if (c->token) {
        char auth[1024];
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        list = curl_slist_append(list, auth);
    }
    return list;
}

static struct curl_slist *base_headers(const struct ctl *c, const char *const extra[])
{
    struct curl_slist *list = curl_slist_append(NULL, "Accept: application/json");
    list = curl_slist_append(list, "Expect:");
    list = auth_header(c, list);
    for (int i = 0; extra && extra[i]; i++)
        list = curl_slist_append(list, extra[i]);
    return list;
}

static bool status_listed(long status, const long ok[])
{
    for (int i = 0; ok && ok[i]; i++)
        if (ok[i] == status)
            return true;
    return false;
}

/* Prints the server's error object, or the raw status when the body is not one. */
static void print_server_error(long status, const json_t *body)
{
    const json_t *e = json_object_get(body, "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    if (code && msg)
        fprintf(stderr, "tpvctl: %s (HTTP %ld): %s\n", code, status, msg);
    else
        fprintf(stderr, "tpvctl: HTTP %ld\n", status);
}

/* Runs the transfer into `body` (capped at --max-response); prints transport failures.  Returns
 * CTL_OK with *status set, CTL_ERR_CONNECT or CTL_ERR_NOMEM; on failure body->data is freed. */
static int transfer(CURL *curl, const struct ctl *c, const char *path, struct curl_slist *hdrs,
                    struct buf *body, long *status)
{
    char url[4096];
    body->max = c->max_response ? c->max_response : CTL_MAX_RESPONSE_DEFAULT;
    snprintf(url, sizeof url, "%s%s", c->url, path);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    /* "": every coding this libcurl decodes (gzip): rankings come at about a fifth of their size. */
    curl_easy_setopt(curl, CURLOPT_ACCEPT_ENCODING, "");
    CURLcode cc = curl_easy_perform(curl);
    int rc = CTL_OK;
    if (body->over) {
        fprintf(stderr, "tpvctl: the response to %s is larger than the %zu-byte cap "
                "(--max-response)\n", path, body->max);
        rc = CTL_ERR_CONNECT;
    } else if (body->oom) {
        fprintf(stderr, "tpvctl: out of memory reading the response to %s\n", path);
        rc = CTL_ERR_NOMEM;
    } else if (cc != CURLE_OK) {
        fprintf(stderr, "tpvctl: cannot reach %s: %s\n", c->url, curl_easy_strerror(cc));
        rc = CTL_ERR_CONNECT;
    }
    if (rc != CTL_OK) {
        free(body->data);
        body->data = NULL;
        return rc;
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, status);
    return CTL_OK;
}

static int perform(CURL *curl, const struct ctl *c, const char *path, struct curl_slist *hdrs,
                   const long ok[], long *status, json_t **out)
{
    struct buf body = { 0 };
    int rc = transfer(curl, c, path, hdrs, &body, status);
    if (rc != CTL_OK)
        return rc;
    json_t *parsed = body.len ? json_loadb(body.data, body.len, 0, NULL) : NULL;
    free(body.data);
    if (*status >= 400 && !status_listed(*status, ok)) {
        print_server_error(*status, parsed);
        json_decref(parsed);
        return CTL_ERR_SERVER;
    }
    if (out)
        *out = parsed;
    else
        json_decref(parsed);
    return CTL_OK;
}

int ctl_get_text(const struct ctl *c, const char *path, const char *accept,
                 struct ctl_text *out)
{
    memset(out, 0, sizeof *out);
    CURL *curl = curl_easy_init();
    if (!curl)
        return CTL_ERR_CONNECT;
    char accept_hdr[256];
    snprintf(accept_hdr, sizeof accept_hdr, "Accept: %s", accept);
    struct curl_slist *hdrs = curl_slist_append(NULL, accept_hdr);
    hdrs = auth_header(c, hdrs);
    struct buf body = { 0 };
    long status = 0;
    int rc = transfer(curl, c, path, hdrs, &body, &status);
    const char *type = NULL;
    if (rc == CTL_OK)
        curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &type);
    if (rc == CTL_OK && status >= 400) {
        json_t *err = body.len ? json_loadb(body.data, body.len, 0, NULL) : NULL;
        print_server_error(status, err);
        json_decref(err);
        free(body.data);
        rc = CTL_ERR_SERVER;
    } else if (rc == CTL_OK) {
        out->data = body.data;
        out->len = body.len;
        out->is_json = !type || strncmp(type, "application/json", 16) == 0;
    }
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(curl);
    return rc;
}

int ctl_call(const struct ctl *c, const char *method, const char *path, const json_t *body,
             const char *const headers[], const long ok_statuses[], long *status, json_t **out)
{
    CURL *curl = curl_easy_init();
    char *text = NULL;
    if (out)
        *out = NULL;
    if (!curl)
        return CTL_ERR_CONNECT;
    struct curl_slist *hdrs = base_headers(c, headers);
    if (body) {
        text = json_dumps(body, JSON_COMPACT);
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, text ? text : "");
    }
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    long st = 0;
    int rc = perform(curl, c, path, hdrs, ok_statuses, &st, out);
    if (status)
        *status = st;
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(curl);
    free(text);
    return rc;
}

static int sha256_file(const char *path, char hex[65])
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "tpvctl: cannot open %s: %s\n", path, strerror(errno));
        return CTL_ERR_LOCAL;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char chunk[1 << 16], digest[32];
    unsigned int dlen = 0;
    size_t n;
    int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    while (ok && (n = fread(chunk, 1, sizeof chunk, fp)) > 0)
        ok = EVP_DigestUpdate(md, chunk, n);
    ok = ok && !ferror(fp) && EVP_DigestFinal_ex(md, digest, &dlen);
    EVP_MD_CTX_free(md);
    fclose(fp);
    if (!ok) {
        fprintf(stderr, "tpvctl: cannot read %s\n", path);
        return CTL_ERR_LOCAL;
    }
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    return CTL_OK;
}

struct upload {
    const char *name;
    double started;
    double drawn;      /* when the bar was last drawn (0: never) */
    bool finished;     /* the 100% frame is drawn */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int on_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    struct upload *u = userdata;
    (void)dltotal, (void)dlnow;
    if (ultotal <= 0 || u->finished)
        return 0;
    /* curl calls this for every chunk (thousands of times a second on a fast link): a terminal
     * gets at most CTL_PROGRESS_HZ frames a second, plus the final 100% one. */
    double t = now_s();
    bool last = ulnow >= ultotal;
    if (!last && u->drawn > 0 && t - u->drawn < 1.0 / CTL_PROGRESS_HZ)
        return 0;
    u->drawn = t;
    u->finished = last;
    double frac = (double)ulnow / (double)ultotal, secs = t - u->started;
    int filled = (int)(frac * 30);
    fprintf(stderr, "\r%-24.24s [%.*s%*s] %3.0f%% %7.1f MiB %6.1f MiB/s", u->name, filled,
            "##############################", 30 - filled, "", frac * 100, ulnow / 1048576.0,
            secs > 0 ? ulnow / 1048576.0 / secs : 0.0);
    return 0;
}

int ctl_blob_put(const struct ctl *c, const char *path, char digest[72], bool *uploaded)
{
    char hex[65], route[96];
    int rc = sha256_file(path, hex);
    if (rc != CTL_OK)
        return rc;
    snprintf(digest, 72, "sha256:%s", hex);
    snprintf(route, sizeof route, "/v1/blobs/%s", digest);
    *uploaded = false;

    long status = 0;
    static const long head_ok[] = { 404, 0 };
    rc = ctl_call(c, "HEAD", route, NULL, NULL, head_ok, &status, NULL);
    if (rc != CTL_OK || status == 200)
        return rc; /* already there: skip the upload */

    FILE *fp = fopen(path, "rb");
    struct stat sb;
    if (!fp || fstat(fileno(fp), &sb) != 0) {
        fprintf(stderr, "tpvctl: cannot open %s: %s\n", path, strerror(errno));
        if (fp)
            fclose(fp);
        return CTL_ERR_LOCAL;
    }
    CURL *curl = curl_easy_init();
    if (!curl) {
        fclose(fp);
        return CTL_ERR_CONNECT;
    }
    const char *slash = strrchr(path, '/');
    struct upload u = { .name = slash ? slash + 1 : path, .started = now_s() };
    struct curl_slist *hdrs = base_headers(c, NULL);
    hdrs = curl_slist_append(hdrs, "Content-Type: application/octet-stream");
    curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(curl, CURLOPT_READDATA, fp);
    curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, (curl_off_t)sb.st_size);
    if (c->progress) {
        curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &u);
    }
    json_t *resp = NULL;
    rc = perform(curl, c, route, hdrs, NULL, &status, &resp);
    if (c->progress && u.drawn > 0)
        fputc('\n', stderr);
    const char *stored = json_string_value(json_object_get(resp, "digest"));
    if (rc == CTL_OK && (!stored || strcmp(stored, digest) != 0)) {
        fprintf(stderr, "tpvctl: server stored a different digest for %s\n", path);
        rc = CTL_ERR_SERVER;
    }
    *uploaded = rc == CTL_OK;
    json_decref(resp);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(curl);
    fclose(fp);
    return rc;
}

json_t *ctl_blob_ref(const struct ctl *c, const char *arg, int *rc)
{
    if (strncmp(arg, "sha256:", 7) == 0) {
        *rc = CTL_OK;
        return json_string(arg);
    }
    if (strncmp(arg, "http://", 7) == 0 || strncmp(arg, "https://", 8) == 0) {
        *rc = CTL_OK;
        return json_pack("{s:s}", "url", arg);
    }
    char digest[72];
    bool uploaded;
    *rc = ctl_blob_put(c, arg, digest, &uploaded);
    if (*rc == CTL_OK && !uploaded && !c->quiet)
        fprintf(stderr, "%s: already on the server (%.19s...), upload skipped\n", arg, digest);
    return *rc == CTL_OK ? json_string(digest) : NULL;
}
