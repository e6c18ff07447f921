/* test_api.c: the handlers over a real store without any socket: JSON validation naming the
 * field, idempotent study creation, inputs, candidate submission rules, jobs, ranking (ETag, 304,
 * holds for long-polls, probe without a probe set), pagination tokens, streamed blob uploads and
 * /metrics; reals in responses spelled shortest; an idempotency hash that cannot be computed. */
#include <dlfcn.h>
#include <math.h>
#include <openssl/evp.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <cmocka.h>

#include "api/api.h"
#include "storage/store.h"

/* libcrypto's EVP_Digest, made to fail on demand: the executable's definition comes before the
 * shared library's, so api/ calls this one. */
static bool digest_fails;

int EVP_Digest(const void *data, size_t count, unsigned char *md, unsigned int *size,
               const EVP_MD *type, ENGINE *impl)
{
    if (digest_fails)
        return 0;
    int (*real)(const void *, size_t, unsigned char *, unsigned int *, const EVP_MD *, ENGINE *);
    *(void **)&real = dlsym(RTLD_NEXT, "EVP_Digest");
    return real ? real(data, count, md, size, type, impl) : 0;
}

/* A fake transport: query parameters and headers as name/value pairs. */
struct fake {
    const char *headers[8][2];
    const char *query[8][2];
};

static const char *lookup(const char *(*kv)[2], const char *name)
{
    for (int i = 0; i < 8 && kv[i][0]; i++)
        if (strcasecmp(kv[i][0], name) == 0)
            return kv[i][1];
    return NULL;
}

static const char *fake_header(void *t, const char *name)
{
    return lookup(((struct fake *)t)->headers, name);
}

static const char *fake_query(void *t, const char *name)
{
    return lookup(((struct fake *)t)->query, name);
}

struct fixture {
    char dir[64];
    struct store *st;
    struct api_metrics *metrics;
    struct api_cache *cache;
    struct api_env env;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    struct tpv_err err;
    snprintf(f->dir, sizeof f->dir, "/tmp/tpvd-api-XXXXXX");
    if (!mkdtemp(f->dir) || store_open(&f->st, f->dir, &err) != TPV_OK)
        return -1;
    api_metrics_new(&f->metrics);
    api_cache_new(&f->cache, 8, 1 << 20);
    f->env = (struct api_env){ .store = f->st, .version = "test", .metrics = f->metrics,
                               .cache = f->cache,
                               .limits = { .max_body = 1 << 20, .max_blob = 1 << 20,
                                           .max_job_memory = 1 << 30, .max_queued_jobs = 100,
                                           .max_wait_s = 60, .max_page_size = 100 } };
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    store_close(f->st);
    api_metrics_free(f->metrics);
    api_cache_free(f->cache);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

/* Runs one request; returns the parsed body (NULL when empty) and leaves resp for headers. */
static json_t *call(struct fixture *f, const char *method, const char *path, const char *body,
                    struct fake *t, struct api_response *resp)
{
    struct fake none = { 0 };
    struct api_request req = { .method = method, .path = path, .request_id = "t",
                               .body = body ? body : "", .body_len = body ? strlen(body) : 0,
                               .header = fake_header, .query = fake_query,
                               .transport = t ? t : &none, .route = -1 };
    memset(resp, 0, sizeof *resp);
    api_dispatch(&f->env, &req, resp);
    return resp->body_len ? json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
}

static void expect(struct fixture *f, const char *method, const char *path, const char *body,
                   struct fake *t, int status, const char *field)
{
    struct api_response resp;
    json_t *j = call(f, method, path, body, t, &resp);
    if (resp.status != status)
        fail_msg("%s %s: want %d, got %d: %.*s", method, path, status, resp.status,
                 (int)resp.body_len, resp.body ? resp.body : "");
    if (field) {
        json_t *details = json_object_get(json_object_get(j, "error"), "details");
        assert_string_equal(json_string_value(json_object_get(details, "field")), field);
    }
    json_decref(j);
    api_response_free(&resp);
}

#define STUDY "{\"name\":\"s\",\"noise_models\":[{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0.1}]}"

static void create_study(struct fixture *f, char sid[64])
{
    struct api_response resp;
    json_t *j = call(f, "POST", "/v1/studies", STUDY, NULL, &resp);
    assert_int_equal(resp.status, 201);
    snprintf(sid, 64, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    api_response_free(&resp);
}

/* Uploads through the stream interface, as server/http.c does. */
static void put_blob(struct fixture *f, const char *bytes, size_t len, char digest[80])
{
    struct fake none = { 0 };
    struct api_request req = { .method = "PUT", .path = "/v1/blobs", .request_id = "t",
                               .header = fake_header, .query = fake_query, .transport = &none,
                               .route = -1 };
    struct api_response resp = { 0 };
    assert_true(api_stream_begin(&f->env, &req, &resp));
    assert_int_equal(resp.status, 0);
    assert_int_equal(api_stream_write(&req, bytes, len, &resp), TPV_OK);
    req.body = "";
    api_dispatch(&f->env, &req, &resp);
    assert_true(resp.status == 201 || resp.status == 200);
    json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
    snprintf(digest, 80, "%s", json_string_value(json_object_get(j, "digest")));
    json_decref(j);
    api_response_free(&resp);
    api_stream_end(&req);
}

static void test_study_validation_and_idempotency(void **state)
{
    struct fixture *f = *state;
    expect(f, "POST", "/v1/studies", "{", NULL, 400, "body");
    /* The parser quotes the bad byte: the error body must still be valid JSON (fuzz finding). */
    expect(f, "POST", "/v1/studies", "{\"a\":\"\\\xdf\x9c\"}", NULL, 400, "body");
    expect(f, "POST", "/v1/studies", "{\"\xdf\x9c\xff\":1}", NULL, 400, "body");
    expect(f, "POST", "/v1/studies", "{\"name\":\"s\"}", NULL, 400, "noise_models");
    expect(f, "POST", "/v1/studies", "{\"name\":\"\",\"noise_models\":[]}", NULL, 400, "name");
    expect(f, "POST", "/v1/studies", "{\"name\":\"s\",\"noise_models\":[{\"name\":\"a\","
           "\"kind\":\"bogus\"}]}", NULL, 400, "noise_models[0].kind");
    expect(f, "POST", "/v1/studies", "{\"name\":\"s\",\"webhook_url\":\"ftp://x\","
           "\"noise_models\":[{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1}]}", NULL, 400,
           "webhook_url");
    expect(f, "POST", "/v1/studies", "{\"name\":\"s\",\"noise_models\":[{\"name\":\"d\","
           "\"kind\":\"diagonal\",\"variances\":\"sha256:00000000000000000000000000000000000000"
           "00000000000000000000000000\"}]}", NULL, 400, "noise_models[0].variances");

    struct fake t = { .headers = { { "Idempotency-Key", "k" } } };
    struct api_response a, b;
    json_t *ja = call(f, "POST", "/v1/studies", STUDY, &t, &a);
    json_t *jb = call(f, "POST", "/v1/studies", STUDY, &t, &b);
    assert_int_equal(a.status, 201);
    assert_int_equal(b.status, 201);
    assert_true(json_equal(ja, jb));
    json_decref(ja);
    json_decref(jb);
    api_response_free(&a);
    api_response_free(&b);
    expect(f, "POST", "/v1/studies", "{\"name\":\"other\"}", &t, 409, "Idempotency-Key");
    /* metadata null is no metadata (and no size to bound). */
    f->env.limits.max_metadata_bytes = 1024;
    expect(f, "POST", "/v1/studies", "{\"name\":\"n\",\"metadata\":null,\"noise_models\":"
           "[{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0.1}]}", NULL, 201, NULL);
    f->env.limits.max_metadata_bytes = 0;

    struct fake page = { .query = { { "page_size", "2" } } };
    struct api_response resp;
    json_t *j = call(f, "GET", "/v1/studies", NULL, &page, &resp);
    assert_int_equal(json_array_size(json_object_get(j, "items")), 2);
    assert_true(json_is_null(json_object_get(j, "next_page_token"))); /* only two studies */
    json_decref(j);
    api_response_free(&resp);
    struct fake badpage = { .query = { { "page_size", "1000" } } };
    expect(f, "GET", "/v1/studies", NULL, &badpage, 400, "page_size");
    expect(f, "GET", "/v1/studies/st_none", NULL, NULL, 404, "study_id");
}

static void test_inputs_and_candidates(void **state)
{
    struct fixture *f = *state;
    char sid[64], path[160], body[400], digest[80];
    create_study(f, sid);
    snprintf(path, sizeof path, "/v1/studies/%s/inputs/test", sid);
    expect(f, "PUT", path, "{\"blob\":\"x\"}", NULL, 400, "split");
    snprintf(path, sizeof path, "/v1/studies/%s/inputs/fit", sid);
    expect(f, "PUT", path, "{\"blob\":\"sha256:zz\"}", NULL, 400, "blob");
    put_blob(f, "not a tensor", 12, digest);
    snprintf(body, sizeof body, "{\"blob\":\"%s\"}", digest);
    expect(f, "PUT", path, body, NULL, 400, "blob"); /* exists, but is no tensor */

    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    /* Model candidates need the study's fit set first. */
    snprintf(body, sizeof body, "{\"name\":\"m\",\"model\":{\"spec\":{},\"weights\":\"%s\"}}",
             digest);
    expect(f, "POST", path, body, NULL, 409, "inputs.fit");
    snprintf(body, sizeof body, "{\"name\":\"m\",\"model\":{\"spec\":{}}}");
    expect(f, "POST", path, body, NULL, 400, "model.weights");
    snprintf(body, sizeof body, "{\"name\":\"m\",\"model\":{},\"jacobian\":{}}");
    expect(f, "POST", path, body, NULL, 400, "model");
    snprintf(body, sizeof body, "{\"name\":\"m\",\"jacobian\":{\"fit\":\"%s\",\"layout\":[1]}}",
             digest);
    expect(f, "POST", path, body, NULL, 400, "jacobian.layout");
    snprintf(body, sizeof body, "{\"name\":\"m\",\"metadata\":[],\"jacobian\":{\"fit\":\"%s\"}}",
             digest);
    expect(f, "POST", path, body, NULL, 400, "metadata");
    /* A blob that is not a dump: the core refuses it, naming the field. */
    snprintf(body, sizeof body, "{\"name\":\"m\",\"jacobian\":{\"fit\":\"%s\"}}", digest);
    expect(f, "POST", path, body, NULL, 400, "jacobian.fit");
    expect(f, "POST", "/v1/studies/st_missing/candidates", body, NULL, 404, "study_id");
    expect(f, "GET", "/v1/jobs/jb_missing", NULL, NULL, 404, "job_id");
    expect(f, "DELETE", "/v1/jobs/jb_missing", NULL, NULL, 404, "job_id");
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/cd_x/jbr", sid);
    expect(f, "POST", path, "{\"batch_size\":0}", NULL, 400, "batch_size");
    expect(f, "POST", path, "{}", NULL, 404, "candidate_id");
}

static void test_ranking_etag_and_hold(void **state)
{
    struct fixture *f = *state;
    char sid[64], path[160];
    create_study(f, sid);
    snprintf(path, sizeof path, "/v1/studies/%s/ranking", sid);
    struct fake probe = { .query = { { "split", "probe" } } };
    expect(f, "GET", path, NULL, &probe, 409, "split");
    struct fake by = { .query = { { "by", "nope" } } };
    expect(f, "GET", path, NULL, &by, 400, "by");
    struct fake mtl = { .query = { { "max_train_loss", "abc" } } };
    expect(f, "GET", path, NULL, &mtl, 400, "max_train_loss");
    struct fake wait = { .query = { { "wait", "-1" } } };
    expect(f, "GET", path, NULL, &wait, 400, "wait");

    struct api_response resp;
    json_t *j = call(f, "GET", path, NULL, NULL, &resp);
    assert_int_equal(resp.status, 200);
    assert_string_equal(json_string_value(json_object_get(j, "split")), "fit");
    char etag[64] = "";
    for (int i = 0; i < resp.nheaders; i++)
        if (strcmp(resp.headers[i].name, "ETag") == 0)
            snprintf(etag, sizeof etag, "%s", resp.headers[i].value);
    assert_true(etag[0] == '"');
    json_decref(j);
    api_response_free(&resp);

    /* Twice: the second answer comes from the cache and must be identical. */
    struct fake inm = { .headers = { { "If-None-Match", etag } } };
    for (int round = 0; round < 2; round++) {
        j = call(f, "GET", path, NULL, &inm, &resp);
        assert_int_equal(resp.status, 304);
        assert_null(j);
        api_response_free(&resp);
    }
    /* With wait=: the handler asks the transport to hold the request. */
    struct fake held = { .headers = { { "If-None-Match", etag } }, .query = { { "wait", "999" } } };
    call(f, "GET", path, NULL, &held, &resp);
    assert_int_equal(resp.hold_seconds, 60); /* capped by max_wait_s */
    assert_string_equal(resp.hold_study, sid);
    api_response_free(&resp);
    /* A write bumps the version: the old ETag no longer matches. */
    struct tpv_err err;
    assert_int_equal(store_input_set(f->st, sid, "probe", "sha256:00", 3, &err), TPV_OK);
    j = call(f, "GET", path, NULL, &inm, &resp);
    assert_int_equal(resp.status, 200);
    assert_string_equal(json_string_value(json_object_get(j, "split")), "probe");
    json_decref(j);
    api_response_free(&resp);
}

static void test_blob_routes_and_metrics(void **state)
{
    struct fixture *f = *state;
    char digest[80], path[160];
    put_blob(f, "hello world", 11, digest);
    assert_string_equal(digest,
        "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
    snprintf(path, sizeof path, "/v1/blobs/%s", digest);
    expect(f, "HEAD", path, NULL, NULL, 200, NULL);
    expect(f, "HEAD", "/v1/blobs/sha256:nothex", NULL, NULL, 400, "digest");
    /* A bad digest in the URL is refused when the stream opens. */
    struct fake none = { 0 };
    struct api_request req = { .method = "PUT", .path = "/v1/blobs/sha256:XY", .request_id = "t",
                               .header = fake_header, .query = fake_query, .transport = &none };
    struct api_response resp = { 0 };
    assert_true(api_stream_begin(&f->env, &req, &resp));
    assert_int_equal(resp.status, 400);
    api_response_free(&resp);
    api_stream_end(&req);
    /* Non-streaming routes are not streams. */
    struct api_request get = { .method = "GET", .path = "/healthz" };
    assert_false(api_stream_begin(&f->env, &get, &resp));

    api_metrics_request(f->metrics, 0, 200, 0.001);
    api_metrics_job(f->metrics, "score", "succeeded", 2.0);
    json_t *j = call(f, "GET", "/metrics", NULL, NULL, &resp);
    assert_null(j);
    assert_int_equal(resp.status, 200);
    assert_non_null(strstr(resp.body, "tpvd_http_requests_total{method=\"GET\",route=\"/healthz\","
                                      "status=\"200\"} 1"));
    assert_non_null(strstr(resp.body, "tpvd_job_duration_seconds_bucket{kind=\"score\",le=\"5\"} 1"));
    assert_non_null(strstr(resp.body, "tpvd_blob_bytes 11"));
    api_response_free(&resp);
    expect(f, "GET", "/readyz", NULL, NULL, 200, NULL);
}

/* The shortest spelling that reads back exactly, everything else as jansson writes it. */
static void test_reals_shortest(void **state)
{
    (void)state;
    static const struct {
        double v;
        const char *text;
    } cases[] = {
        { 0.1, "0.1" },
        { 1e-300, "1e-300" },
        { 5e-324, "5e-324" },                /* the smallest subnormal: one digit */
        { 1.0 / 3.0, "0.3333333333333333" }, /* 16 digits */
        { 123456789.123, "123456789.123" },
        { 0.1 + 0.2, "0.30000000000000004" }, /* needs all 17 */
        { 100.0, "100.0" },                   /* stays a real */
        { -0.0, "-0.0" },
        { 1e16, "1e16" },
        { 1234567890123450.0, "1234567890123450.0" }, /* shorter than 1.23456789012345e15 */
        { 2.2250738585072014e-308, "2.2250738585072014e-308" }, /* DBL_MIN */
        { 1.7976931348623157e308, "1.7976931348623157e308" },   /* DBL_MAX */
        { 4.9406564584124654e-323, "5e-323" },
        { 1e-5, "1e-5" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *a = json_pack("[f]", cases[i].v);
        char *text = api_json_dumps(a, JSON_COMPACT);
        char want[64];
        snprintf(want, sizeof want, "[%s]", cases[i].text);
        if (strcmp(text, want) != 0)
            fail_msg("%.17g: want %s, got %s", cases[i].v, want, text);
        double back = strtod(text + 1, NULL);
        assert_memory_equal(&back, &cases[i].v, sizeof back); /* bit for bit, -0.0 too */
        free(text);
        json_decref(a);
    }
    /* Strings that look like numbers, integers, nesting and escapes pass unchanged. */
    json_t *j = json_pack("{s:s,s:I,s:[f,{s:f}],s:s}", "s", "0.10000000000000001 \"1.50\\", "i",
                          (json_int_t)-12345678901234, "a", 2.5, "x", 0.7, "e", "1e+05");
    char *text = api_json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(text, "{\"a\":[2.5,{\"x\":0.7}],\"e\":\"1e+05\",\"i\":-12345678901234,"
                              "\"s\":\"0.10000000000000001 \\\"1.50\\\\\"}");
    free(text);
    json_decref(j);
}

/* What a client sees: the echo of a study, its noise model and metadata. */
static void test_response_reals_shortest(void **state)
{
    struct fixture *f = *state;
    struct api_response resp;
    json_t *j = call(f, "POST", "/v1/studies",
                     "{\"name\":\"s\",\"metadata\":{\"a\":0.1,\"b\":1e-300,\"c\":5e-324,"
                     "\"d\":0.3333333333333333,\"e\":123456789.123},\"noise_models\":"
                     "[{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0.1}]}",
                     NULL, &resp);
    assert_int_equal(resp.status, 201);
    const char *want[] = { "\"sigma\":0.1,", "\"a\":0.1,", "\"b\":1e-300,", "\"c\":5e-324,",
                           "\"d\":0.3333333333333333,", "\"e\":123456789.123}" };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(resp.body, want[i]))
            fail_msg("no %s in %s", want[i], resp.body);
    char path[96];
    snprintf(path, sizeof path, "/v1/studies/%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    api_response_free(&resp);
    /* The stored study reads back the same way. */
    j = call(f, "GET", path, NULL, NULL, &resp);
    assert_int_equal(resp.status, 200);
    assert_non_null(strstr(resp.body, "\"sigma\":0.1,"));
    assert_non_null(strstr(resp.body, "\"c\":5e-324,"));
    json_decref(j);
    api_response_free(&resp);
}

/* An Idempotency-Key request whose body hash cannot be computed is refused with 500, never
 * stored under a hash of whatever the buffer held. */
static void test_idempotency_hash_failure(void **state)
{
    struct fixture *f = *state;
    struct fake t = { .headers = { { "Idempotency-Key", "k-hash" } } };
    digest_fails = true;
    expect(f, "POST", "/v1/studies", STUDY, &t, 500, NULL);
    digest_fails = false;
    struct api_response resp;
    json_t *j = call(f, "GET", "/v1/studies", NULL, NULL, &resp);
    assert_int_equal(json_array_size(json_object_get(j, "items")), 0); /* nothing written */
    json_decref(j);
    api_response_free(&resp);
    expect(f, "POST", "/v1/studies", STUDY, &t, 201, NULL); /* the key is still free */
}

/* Accept-Encoding as RFC 9110 reads it: gzip named with a non-zero weight, or "*" unless gzip is
 * named with weight 0. */
static void test_accepts_gzip(void **state)
{
    (void)state;
    static const struct {
        const char *header;
        bool gzip;
    } cases[] = {
        { "gzip", true },           { "GZIP", true },          { "x-gzip", true },
        { "gzip, deflate, br", true }, { "deflate, gzip;q=0.5", true }, { "br;q=1, gzip ; q=0.1", true },
        { "*", true },              { "identity, *;q=0.3", true },
        { "gzip;q=0", false },      { "gzip;q=0.0, *", false }, { "*, gzip;q=0", false },
        { "deflate, br", false },   { "identity", false },     { "", false },
        { "gzipx", false },         { "*;q=0", false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct fake t = { .headers = { { "Accept-Encoding", cases[i].header } } };
        struct api_request req = { .header = fake_header, .transport = &t };
        if (api_accepts_gzip(&req) != cases[i].gzip)
            fail_msg("Accept-Encoding: %s: want %d", cases[i].header, cases[i].gzip);
    }
    struct fake none = { 0 };
    struct api_request req = { .header = fake_header, .transport = &none };
    assert_false(api_accepts_gzip(&req));
}

/* The cache's gzip representation: made on first use, inflates to the body, has its own tag,
 * is dropped with its entry when a newer version comes, and small bodies stay identity. */
static void test_cache_gzip(void **state)
{
    (void)state;
    struct api_cache *c;
    struct api_cached hit;
    char body[4096];
    assert_int_equal(api_cache_new(&c, 2, 1 << 20), TPV_OK);
    for (size_t i = 0; i < sizeof body - 1; i++)
        body[i] = "{\"value\":0.125,"[i % 15];
    body[sizeof body - 1] = '\0';
    api_cache_put(c, "k", 3, "\"v3-ab\"", body, strlen(body));
    /* The tag alone, before any coding exists. */
    assert_true(api_cache_get(c, "k", 3, true, false, &hit));
    assert_true(hit.gzip);
    assert_string_equal(hit.etag, "\"v3-abz\"");
    assert_null(hit.body);
    for (int round = 0; round < 2; round++) {
        assert_true(api_cache_get(c, "k", 3, true, true, &hit));
        assert_true(hit.gzip);
        assert_string_equal(hit.etag, "\"v3-abz\"");
        assert_true(hit.len < 200);
        char plain[sizeof body];
        uLongf n = sizeof plain;
        z_stream z = { 0 };
        assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
        z.next_in = (Bytef *)hit.body;
        z.avail_in = (uInt)hit.len;
        z.next_out = (Bytef *)plain;
        z.avail_out = (uInt)n;
        assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
        assert_int_equal(z.total_out, strlen(body));
        assert_memory_equal(plain, body, strlen(body));
        inflateEnd(&z);
        free(hit.body);
    }
    assert_true(api_cache_get(c, "k", 3, false, true, &hit));
    assert_false(hit.gzip);
    assert_string_equal(hit.etag, "\"v3-ab\"");
    assert_int_equal(hit.len, strlen(body));
    assert_string_equal(hit.body, body);
    free(hit.body);
    /* Another version of the key replaces the entry and its coding. */
    api_cache_put(c, "k", 4, "\"v4-ab\"", "{}", 2);
    assert_false(api_cache_get(c, "k", 3, true, true, &hit));
    assert_true(api_cache_get(c, "k", 4, true, true, &hit));
    assert_false(hit.gzip); /* below API_GZIP_MIN */
    assert_string_equal(hit.body, "{}");
    free(hit.body);
    api_cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_study_validation_and_idempotency, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inputs_and_candidates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ranking_etag_and_hold, setup, teardown),
        cmocka_unit_test(test_accepts_gzip),
        cmocka_unit_test(test_cache_gzip),
        cmocka_unit_test_setup_teardown(test_blob_routes_and_metrics, setup, teardown),
        cmocka_unit_test(test_reals_shortest),
        cmocka_unit_test_setup_teardown(test_response_reals_shortest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_hash_failure, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
