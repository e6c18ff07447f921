/* encoding.c: gzip content coding of rendered bodies (see api.h).  A 200-candidate ranking is
 * about 50 KB of JSON and gzip makes it about 11 KB; dashboards and polling clients fetch it after
 * every change, and on loopback or a LAN the bytes, not the rendering, are what such a reply
 * costs.  Compression runs once per cached rendering (api/cache.c), never per request. */
#include "api/api.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "api/handlers.h"

/* The q-value of one Accept-Encoding member's parameters ("; q=0.5"): 1 when absent. */
static double member_quality(const char *params, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if ((params[i] == 'q' || params[i] == 'Q') && params[i + 1] == '=') {
            char buf[16];
            size_t len = n - (i + 2) < sizeof buf - 1 ? n - (i + 2) : sizeof buf - 1;
            memcpy(buf, params + i + 2, len);
            buf[len] = '\0';
            return strtod(buf, NULL);
        }
    }
    return 1.0;
}

bool api_accepts_gzip(const struct api_request *req)
{
    const char *h = api_header(req, "Accept-Encoding");
    if (!h)
        return false;
    /* RFC 9110 12.5.3: a comma-separated list of codings with optional weights; gzip (or its
     * alias x-gzip) is acceptable unless its weight is 0.  "*" covers it when it is not named. */
    bool named = false, star = false;
    for (const char *p = h; *p;) {
        p += strspn(p, " \t,");
        size_t member = strcspn(p, ","), name = strcspn(p, " \t;,");
        if (member == 0)
            break;
        double q = member_quality(p + name, member - name);
        if ((name == 4 && strncasecmp(p, "gzip", 4) == 0) ||
            (name == 6 && strncasecmp(p, "x-gzip", 6) == 0)) {
            named = true;
            if (q > 0)
                return true;
        } else if (name == 1 && *p == '*' && q > 0) {
            star = true;
        }
        p += member;
    }
    return !named && star;
}

int api_gzip(const char *body, size_t len, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (len > UINT_MAX)
        return TPV_EINVAL; /* zlib's avail_in; rendered bodies are capped far below */
    z_stream z = { 0 };
    /* windowBits 15 + 16: the gzip wrapper (RFC 1952), which every HTTP client decodes. */
    if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return TPV_ENOMEM;
    uLong cap = deflateBound(&z, (uLong)len);
    char *buf = malloc(cap ? cap : 1);
    if (!buf) {
        deflateEnd(&z);
        return TPV_ENOMEM;
    }
    z.next_in = (Bytef *)(uintptr_t)body;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)buf;
    z.avail_out = (uInt)cap;
    int rc = deflate(&z, Z_FINISH); /* deflateBound guarantees one call suffices */
    size_t produced = z.total_out;
    deflateEnd(&z);
    if (rc != Z_STREAM_END) {
        free(buf);
        return TPV_ENOMEM;
    }
    *out = buf;
    *out_len = produced;
    return TPV_OK;
}

void api_etag_variant(char *etag, size_t cap, char mark)
{
    /* A strong ETag names one representation (RFC 9110 8.8.3), so each variant of a rendering
     * gets its own tag: "v12-abcd" becomes "v12-abcd<mark>". */
    size_t n = strlen(etag);
    if (n >= 2 && n + 1 < cap && etag[n - 1] == '"') {
        etag[n - 1] = mark;
        etag[n] = '"';
        etag[n + 1] = '\0';
    }
}

void api_etag_for_gzip(char *etag, size_t cap)
{
    api_etag_variant(etag, cap, 'z');
}
