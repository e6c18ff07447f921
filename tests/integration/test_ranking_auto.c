/* test_ranking_auto.c: GET /v1/studies/{sid}/ranking?max_train_loss=auto against the real tpvd
 * (issue #15): the threshold is the median train_loss of the candidates that report one, the body
 * names the value and the rule, candidates above it are excluded (flag underfit), candidates
 * without train_loss stay ranked (flag no_train_loss), the CSV form keeps the same rows, the
 * ETag/304 path holds until a new candidate moves the threshold, and a study without any
 * train_loss excludes nothing.  Also the gzip coding of rankings: the same bytes once inflated,
 * a tag of its own, 304s on either tag, refused with q=0, for JSON and CSV. */
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <cmocka.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"
#include "tests/support/npy.h"
#include "tests/support/service_steps.h"

/* Submits a dump candidate with metadata (a JSON object text) and waits for its score. */
static void add_scored(const struct test_daemon *d, const char *sid, const char *name,
                       double scale, const char *metadata)
{
    char body[512], dig[80], jid[64];
    test_put_small_dump(d, scale, false, dig);
    snprintf(body, sizeof body, "{\"name\":\"%s\",\"metadata\":%s,\"jacobian\":{\"fit\":\"%s\"}}",
             name, metadata, dig);
    test_submit(d, sid, body, NULL, jid);
    test_wait_succeeded(d, jid, 20);
}

/* The names of a ranking array ("items" or "excluded"), comma-joined in order. */
static void names_of(const json_t *body, const char *key, char *out, size_t cap)
{
    size_t i, len = 0;
    const json_t *it;
    out[0] = '\0';
    json_array_foreach(json_object_get(body, key), i, it) {
        int n = snprintf(out + len, cap - len, "%s%s", i ? "," : "",
                         json_string_value(json_object_get(it, "name")));
        assert_true(n > 0 && (size_t)n < cap - len);
        len += (size_t)n;
    }
}

/* Whether the named candidate of a ranking array carries the flag. */
static bool has_flag(const json_t *body, const char *key, const char *name, const char *flag)
{
    size_t i, j;
    const json_t *it, *f;
    json_array_foreach(json_object_get(body, key), i, it) {
        if (strcmp(json_string_value(json_object_get(it, "name")), name) != 0)
            continue;
        json_array_foreach(json_object_get(it, "flags"), j, f)
            if (strcmp(json_string_value(f), flag) == 0)
                return true;
    }
    return false;
}

static void get_ranking(const struct test_daemon *d, const char *path, const char *const *hdrs,
                        long want, struct http_result *r)
{
    assert_int_equal(http_json(d->base_url, "GET", path, NULL, hdrs, r), 0);
    if (r->status != want)
        fail_msg("GET %s: want %ld, got %ld: %s", path, want, r->status, r->body);
}

static void test_auto_threshold(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char sid[64], path[256], names[256], etag[96], hdr[160], cetag[96];
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "auto", sid);
    /* Train losses 0.01 .. 2: the median of the five is 0.04; u has none.  The underfit ones get
     * the smallest TPV (smallest dumps), the regime the exclusion is for. */
    static const struct {
        const char *name;
        double scale;
        const char *meta;
    } c[] = {
        { "a", 3.0, "{\"train_loss\":0.01}" }, { "b", 2.5, "{\"train_loss\":0.02}" },
        { "c", 2.0, "{\"train_loss\":0.04}" }, { "d", 1.0, "{\"train_loss\":0.5}" },
        { "e", 0.5, "{\"train_loss\":2}" },    { "u", 1.5, "{\"lr\":0.1}" },
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        add_scored(&d, sid, c[i].name, c[i].scale, c[i].meta);

    snprintf(path, sizeof path, "/v1/studies/%s/ranking?split=fit&max_train_loss=auto", sid);
    get_ranking(&d, path, NULL, 200, &r);
    const json_t *mtl = json_object_get(r.json, "max_train_loss");
    assert_true(json_is_number(mtl));
    assert_true(fabs(json_number_value(mtl) - 0.04) < 1e-15);
    assert_string_equal(http_json_str(&r, "max_train_loss_rule"),
                        "auto: median train_loss of the 5 candidates that report one");
    names_of(r.json, "items", names, sizeof names);
    assert_string_equal(names, "u,c,b,a"); /* ascending TPV, d and e set aside */
    names_of(r.json, "excluded", names, sizeof names);
    assert_string_equal(names, "e,d");
    assert_true(has_flag(r.json, "excluded", "e", "underfit"));
    assert_true(has_flag(r.json, "excluded", "d", "underfit"));
    assert_true(has_flag(r.json, "items", "u", "no_train_loss"));
    assert_false(has_flag(r.json, "items", "c", "underfit")); /* at the threshold: kept */
    assert_non_null(http_result_header(&r, "ETag", etag, sizeof etag));
    http_result_free(&r);

    /* The same query with its ETag: 304; the numeric form of the same value is another
     * representation (its rule reads "given"), so another tag. */
    snprintf(hdr, sizeof hdr, "If-None-Match: %s", etag);
    const char *inm[] = { hdr, NULL };
    get_ranking(&d, path, inm, 304, &r);
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?split=fit&max_train_loss=0.04", sid);
    get_ranking(&d, path, inm, 200, &r);
    assert_string_equal(http_json_str(&r, "max_train_loss_rule"), "given");
    names_of(r.json, "excluded", names, sizeof names);
    assert_string_equal(names, "e,d");
    http_result_free(&r);

    /* CSV: the same kept rows, its own tag, 304 with it. */
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?split=fit&max_train_loss=auto", sid);
    const char *accept[] = { "Accept: text/csv", NULL };
    get_ranking(&d, path, accept, 200, &r);
    assert_non_null(http_result_header(&r, "ETag", cetag, sizeof cetag));
    assert_string_not_equal(cetag, etag);
    int rows = 0;
    for (const char *p = strstr(r.body, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n"))
        rows++;
    assert_int_equal(rows, 4);
    assert_null(strstr(r.body, ",d,"));
    assert_null(strstr(r.body, ",e,"));
    assert_non_null(strstr(r.body, ",u,"));
    http_result_free(&r);
    snprintf(hdr, sizeof hdr, "If-None-Match: %s", cetag);
    const char *cinm[] = { "Accept: text/csv", hdr, NULL };
    get_ranking(&d, path, cinm, 304, &r);
    http_result_free(&r);

    /* A sixth train loss, 0.001: the version moves, the old tag no longer matches, and the
     * median of six is (0.02 + 0.04) / 2 = 0.03, which now sets c aside too. */
    add_scored(&d, sid, "f", 3.5, "{\"train_loss\":0.001}");
    snprintf(hdr, sizeof hdr, "If-None-Match: %s", etag);
    get_ranking(&d, path, inm, 200, &r);
    assert_true(fabs(json_number_value(json_object_get(r.json, "max_train_loss")) - 0.03) <
                1e-15);
    assert_string_equal(http_json_str(&r, "max_train_loss_rule"),
                        "auto: median train_loss of the 6 candidates that report one");
    names_of(r.json, "items", names, sizeof names);
    assert_string_equal(names, "u,b,a,f");
    names_of(r.json, "excluded", names, sizeof names);
    assert_string_equal(names, "e,d,c");
    http_result_free(&r);

    /* Spelled wrong: 400 naming the field. */
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?max_train_loss=Auto", sid);
    get_ranking(&d, path, NULL, 400, &r);
    assert_string_equal(http_json_str(&r, "error.details.field"), "max_train_loss");
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* No candidate reports train_loss: auto has no threshold (null), excludes nothing, and says so;
 * the OpenAPI document describes the auto form. */
static void test_auto_without_train_loss(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char sid[64], path[256], names[256];
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "none", sid);
    add_scored(&d, sid, "p", 1.0, "{}");
    add_scored(&d, sid, "q", 2.0, "{\"epoch\":3}");
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?split=fit&max_train_loss=auto", sid);
    get_ranking(&d, path, NULL, 200, &r);
    assert_true(json_is_null(json_object_get(r.json, "max_train_loss")));
    assert_string_equal(http_json_str(&r, "max_train_loss_rule"),
                        "auto: no candidate reports train_loss, none excluded");
    names_of(r.json, "items", names, sizeof names);
    assert_string_equal(names, "p,q");
    assert_int_equal(json_array_size(json_object_get(r.json, "excluded")), 0);
    assert_true(has_flag(r.json, "items", "p", "no_train_loss"));
    http_result_free(&r);

    get_ranking(&d, "/openapi.json", NULL, 200, &r);
    const json_t *params = json_object_get(
        json_object_get(json_object_get(json_object_get(r.json, "paths"),
                                        "/v1/studies/{sid}/ranking"), "get"), "parameters");
    size_t i;
    const json_t *p;
    bool seen = false;
    json_array_foreach(params, i, p) {
        if (strcmp(json_string_value(json_object_get(p, "name")), "max_train_loss") != 0)
            continue;
        const json_t *alt = json_array_get(json_object_get(json_object_get(p, "schema"),
                                                           "oneOf"), 1);
        assert_string_equal(json_string_value(json_array_get(json_object_get(alt, "enum"), 0)),
                            "auto");
        seen = true;
    }
    assert_true(seen);
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* The inflation of a gzip body, NUL-terminated (malloc'd). */
static char *gunzip(const char *in, size_t len, size_t *out_len)
{
    z_stream z = { 0 };
    assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
    size_t cap = 1 << 20;
    char *out = malloc(cap + 1);
    assert_non_null(out);
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)cap;
    assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
    assert_int_equal(z.avail_in, 0); /* nothing after the gzip member */
    *out_len = z.total_out;
    out[*out_len] = '\0';
    inflateEnd(&z);
    return out;
}

static void get_raw(const struct test_daemon *d, const char *path, const char *const *hdrs,
                    long want, struct http_result *r)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", d->base_url, path);
    assert_int_equal(http_request("GET", url, NULL, 0, hdrs, r), 0);
    if (r->status != want)
        fail_msg("GET %s: want %ld, got %ld", path, want, r->status);
}

/* Asserts that a gzip answer inflates to exactly `identity` and carries its own tag; returns the
 * tag in gz_etag. */
static void expect_gzip_of(const struct http_result *r, const struct http_result *identity,
                           const char *identity_etag, char gz_etag[96])
{
    char buf[96];
    size_t n;
    if (!http_result_header(r, "Content-Encoding", buf, sizeof buf))
        fail_msg("no Content-Encoding: %s (body %zu bytes)", r->headers, r->body_len);
    assert_string_equal(buf, "gzip");
    assert_non_null(http_result_header(r, "Vary", buf, sizeof buf));
    assert_string_equal(buf, "Accept-Encoding");
    assert_non_null(http_result_header(r, "ETag", gz_etag, 96));
    assert_string_not_equal(gz_etag, identity_etag);
    if (r->body_len * 2 > identity->body_len) /* rows of alike keys and ids */
        fail_msg("gzip %zu of %zu bytes", r->body_len, identity->body_len);
    char *plain = gunzip(r->body, r->body_len, &n);
    assert_int_equal(n, identity->body_len);
    assert_memory_equal(plain, identity->body, n);
    free(plain);
}

static void test_gzip_coding(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result id, r;
    char sid[64], path[256], etag[96], gz_etag[96], again[96], inm[160], buf[96];
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "gzip", sid);
    for (int i = 0; i < 14; i++) {
        char name[16], meta[96];
        snprintf(name, sizeof name, "m%d", i);
        snprintf(meta, sizeof meta, "{\"train_loss\":0.%02d,\"run\":\"r\",\"epoch\":%d}", i + 1,
                 i);
        add_scored(&d, sid, name, 1.0 + i, meta);
    }
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?split=fit", sid);

    /* Without Accept-Encoding: the identity body, which is large enough to be coded. */
    get_raw(&d, path, NULL, 200, &id);
    assert_null(http_result_header(&id, "Content-Encoding", buf, sizeof buf));
    assert_non_null(http_result_header(&id, "ETag", etag, sizeof etag));
    assert_true(id.body_len >= 1024);

    /* gzip, twice: made on the first request, then served from the cache entry. */
    const char *gz[] = { "Accept-Encoding: deflate, gzip;q=0.5", NULL };
    for (int round = 0; round < 2; round++) {
        get_raw(&d, path, gz, 200, &r);
        expect_gzip_of(&r, &id, etag, round ? again : gz_etag);
        http_result_free(&r);
    }
    assert_string_equal(again, gz_etag);

    /* Either tag names this version: 304 with the tag the client holds. */
    const char *tags[] = { gz_etag, etag };
    for (int k = 0; k < 2; k++) {
        snprintf(inm, sizeof inm, "If-None-Match: %s", tags[k]);
        const char *h[] = { gz[0], inm, NULL };
        get_raw(&d, path, h, 304, &r);
        assert_non_null(http_result_header(&r, "ETag", buf, sizeof buf));
        assert_string_equal(buf, tags[k]);
        http_result_free(&r);
    }

    /* Refused (q=0) or not offered: identity with the identity tag. */
    const char *no[] = { "Accept-Encoding: gzip;q=0, identity", NULL };
    get_raw(&d, path, no, 200, &r);
    assert_null(http_result_header(&r, "Content-Encoding", buf, sizeof buf));
    assert_non_null(http_result_header(&r, "ETag", buf, sizeof buf));
    assert_string_equal(buf, etag);
    assert_int_equal(r.body_len, id.body_len);
    http_result_free(&r);

    /* CSV codes the same way. */
    struct http_result csv;
    const char *csv_h[] = { "Accept: text/csv", NULL }, *csv_gz[] = { "Accept: text/csv", gz[0], NULL };
    char csv_etag[96];
    get_raw(&d, path, csv_h, 200, &csv);
    assert_true(csv.body_len >= 1024);
    assert_non_null(http_result_header(&csv, "ETag", csv_etag, sizeof csv_etag));
    get_raw(&d, path, csv_gz, 200, &r);
    expect_gzip_of(&r, &csv, csv_etag, again);
    http_result_free(&r);
    http_result_free(&csv);

    /* A new candidate: the gzip answer follows the new version, not the cached coding. */
    add_scored(&d, sid, "late", 0.5, "{\"train_loss\":0.05}");
    http_result_free(&id);
    get_raw(&d, path, NULL, 200, &id);
    assert_non_null(http_result_header(&id, "ETag", etag, sizeof etag));
    get_raw(&d, path, gz, 200, &r);
    expect_gzip_of(&r, &id, etag, again);
    assert_string_not_equal(again, gz_etag);
    assert_non_null(strstr(id.body, "\"late\""));
    http_result_free(&r);
    http_result_free(&id);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auto_threshold),
        cmocka_unit_test(test_auto_without_train_loss),
        cmocka_unit_test(test_gzip_coding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
