/* http_client.c: libcurl easy-interface wrapper for the integration tests (see http_client.h). */
#include "tests/support/http_client.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

size_t http_buf_append(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct http_buf *b = userdata;
    size_t n = size * nmemb;
    char *grown = realloc(b->data, b->len + n + 1);
    if (!grown)
        return 0;
    memcpy(grown + b->len, ptr, n);
    b->data = grown;
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* Bodies from this size on are sent with Expect: 100-continue (libcurl's own threshold is lower). */
#define HTTP_EXPECT_MIN_BODY (1u << 20)

int http_request(const char *method, const char *url, const void *body, size_t len,
                 const char *const headers[], struct http_result *out)
{
    struct http_buf resp = { 0 }, hdrs = { 0 };
    struct curl_slist *list = NULL;
    CURL *curl = curl_easy_init();
    memset(out, 0, sizeof *out);
    if (!curl)
        return -1;
    bool expect_given = false;
    for (int i = 0; headers && headers[i]; i++) {
        list = curl_slist_append(list, headers[i]);
        expect_given |= strncasecmp(headers[i], "Expect:", 7) == 0;
    }
    /* No 100-continue round trip for small bodies unless the test asks for one.  A large body
     * keeps libcurl's Expect: 100-continue, so that a refusal the daemon sends from the headers
     * alone (401, 403, 413) arrives as its status: without it curl writes the body into a
     * connection the daemon is closing and reports a transport error instead (test_security
     * flaked so under ASan, in spite of the 15 s wait below, which only applies with Expect). */
    if (!expect_given && (!body || len < HTTP_EXPECT_MIN_BODY))
        list = curl_slist_append(list, "Expect:");
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    if (body) {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, http_buf_append);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, http_buf_append);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &hdrs);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    /* libcurl's 1 s default wait for the interim 100 answer is shorter than a loaded sanitizer
     * build can take to send a refusal; curl would then send the body anyway. */
    curl_easy_setopt(curl, CURLOPT_EXPECT_100_TIMEOUT_MS, 15000L);
    CURLcode cc = curl_easy_perform(curl);
    if (cc == CURLE_OK)
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &out->status);
    curl_slist_free_all(list);
    curl_easy_cleanup(curl);
    if (cc != CURLE_OK) {
        free(resp.data);
        free(hdrs.data);
        return -1;
    }
    out->body = resp.data ? resp.data : strdup("");
    out->body_len = resp.len;
    out->headers = hdrs.data ? hdrs.data : strdup("");
    out->json = json_loadb(out->body, out->body_len, 0, NULL);
    return 0;
}

const char *http_result_header(const struct http_result *r, const char *name, char *buf, size_t cap)
{
    size_t nlen = strlen(name);
    for (const char *line = r->headers; line && *line;) {
        const char *eol = strstr(line, "\r\n");
        size_t llen = eol ? (size_t)(eol - line) : strlen(line);
        if (llen > nlen && line[nlen] == ':' && strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1;
            while (*v == ' ')
                v++;
            size_t vlen = llen - (size_t)(v - line);
            if (vlen >= cap)
                vlen = cap - 1;
            memcpy(buf, v, vlen);
            buf[vlen] = '\0';
            return buf;
        }
        if (!eol)
            break;
        line = eol + 2;
    }
    return NULL;
}

void http_result_free(struct http_result *r)
{
    if (!r)
        return;
    free(r->body);
    free(r->headers);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

int http_json(const char *base, const char *method, const char *path, const char *json,
              const char *const headers[], struct http_result *out)
{
    char url[1024];
    const char *hdrs[16];
    int n = 0;
    snprintf(url, sizeof url, "%s%s", base, path);
    if (json)
        hdrs[n++] = "Content-Type: application/json";
    for (int i = 0; headers && headers[i] && n < 15; i++)
        hdrs[n++] = headers[i];
    hdrs[n] = NULL;
    return http_request(method, url, json, json ? strlen(json) : 0, hdrs, out);
}

const char *http_json_str(const struct http_result *r, const char *dotted)
{
    char key[128];
    json_t *j = r->json;
    const char *p = dotted;
    while (j && *p) {
        size_t n = strcspn(p, ".");
        snprintf(key, sizeof key, "%.*s", (int)n, p);
        j = json_object_get(j, key);
        p += n;
        if (*p == '.')
            p++;
    }
    return json_string_value(j);
}
