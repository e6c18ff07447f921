/* test_hostile.c: the hostile-input catalogue against the real tpvd with access control on
 * (DESIGN.md section 6: bad input gets a clear 4xx JSON error naming the field, the daemon keeps
 * serving, nothing is half-written).
 *
 * Every entry of the catalogue (malformed tensors, malformed model specs, malformed JSON, bad ids
 * and paths, bad query parameters, unauthorized calls) must get a 4xx with error.code and
 * error.message, and error.details.field naming the field where the entry says which one.  After
 * the run the data dir holds exactly what was acknowledged: the API lists show only the studies
 * and candidates that got 201/202, the blob store holds exactly the acknowledged blobs and
 * blobs/tmp is empty, and the daemon exits cleanly on SIGTERM. */
#include <dirent.h>
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <curl/curl.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"
#include "tests/support/npy.h"

static struct test_daemon D;
static char WTOK[128], RTOK[128];
static int acked_blobs; /* distinct blobs acknowledged with 201 */

/* One request exactly as given (the path is not normalised: "../" stays), with an optional
 * token (NULL: none) and Content-Type (NULL: none).  Returns the status; *json gets the parsed
 * body (may be NULL). */
static long req(const char *method, const char *path, const char *ctype, const void *body,
                size_t len, const char *token, json_t **json)
{
    char url[16384], auth[160], ct[160];
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    snprintf(url, sizeof url, "%s%s", D.base_url, path);
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
    }
    /* curl adds a form Content-Type to POST bodies unless told otherwise. */
    snprintf(ct, sizeof ct, "Content-Type:%s%s", ctype ? " " : "", ctype ? ctype : "");
    h = curl_slist_append(h, ct);
    CURL *c = curl_easy_init();
    struct http_buf b = { 0 };
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, http_buf_append);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    long status = -1;
    CURLcode cc = curl_easy_perform(c);
    if (cc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    if (cc != CURLE_OK) {
        test_daemon_dump_log(&D);
        fail_msg("%s %.80s: %s", method, path, curl_easy_strerror(cc));
    }
    if (json)
        *json = b.data ? json_loadb(b.data, b.len, 0, NULL) : NULL;
    free(b.data);
    return status;
}

static const char *jstr(json_t *j, const char *a, const char *b, const char *c)
{
    json_t *v = json_object_get(j, a);
    if (b)
        v = json_object_get(v, b);
    if (c)
        v = json_object_get(v, c);
    return json_string_value(v);
}

/* Uploads bytes with the write token; returns the digest. */
static void upload(const void *bytes, size_t len, char digest[80])
{
    json_t *j = NULL;
    long st = req("PUT", "/v1/blobs", "application/octet-stream", bytes, len, WTOK, &j);
    if (st != 201 && st != 200)
        fail_msg("upload: %ld", st);
    acked_blobs += st == 201;
    snprintf(digest, 80, "%s", jstr(j, "digest", NULL, NULL));
    json_decref(j);
}

static int count_files(const char *path)
{
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    int n = 0;
    struct dirent *de;
    char sub[1024];
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
        struct stat sb;
        if (stat(sub, &sb) == 0 && S_ISDIR(sb.st_mode))
            n += count_files(sub);
        else
            n++;
    }
    closedir(dir);
    return n;
}

/* One catalogue entry: the request and what must come back.  status 0 = any 4xx. */
struct hostile {
    const char *what;
    const char *method;
    char path[9000];
    const char *ctype;
    const char *body;
    size_t len; /* 0: strlen(body) */
    const char *token;
    long status;
    const char *code;  /* NULL: any */
    const char *field; /* NULL: no check; else error.details.field must contain it */
};

static int served;

/* Returns 0 when the entry was answered as it must be, else prints why and returns 1. */
static int run_entry(const struct hostile *h)
{
    int bad = 0;
    json_t *j = NULL;
    size_t len = h->body ? (h->len ? h->len : strlen(h->body)) : 0;
    long st = req(h->method, h->path, h->ctype, h->body, len, h->token, &j);
    const char *code = jstr(j, "error", "code", NULL);
    const char *msg = jstr(j, "error", "message", NULL);
    const char *field = jstr(j, "error", "details", "field");
    if (st < 400 || st > 499 || (h->status && st != h->status))
        bad = fprintf(stderr, "%s: want %ld, got %ld (%s)\n", h->what, h->status, st,
                      msg ? msg : "");
    else if (strcmp(h->method, "HEAD") != 0) {
        if (!code || !msg || !msg[0])
            bad = fprintf(stderr, "%s: %ld without an error body\n", h->what, st);
        else if (h->code && strcmp(code, h->code) != 0)
            bad = fprintf(stderr, "%s: code %s, want %s (%s)\n", h->what, code, h->code, msg);
        else if (h->field && (!field || !strstr(field, h->field)))
            bad = fprintf(stderr, "%s: field '%s', want '%s' (%s)\n", h->what,
                          field ? field : "(none)", h->field, msg);
    }
    json_decref(j);
    /* Still serving after every entry. */
    if (++served % 5 == 0)
        assert_int_equal(req("GET", "/healthz", NULL, NULL, 0, NULL, NULL), 200);
    return bad ? 1 : 0;
}

static void test_catalogue(void **state)
{
    (void)state;
    json_t *j;
    char sid[64], dig_fit[80], dig_probe_badp[80], dig_trunc[80], dig_badst[80], dig_spec[80];
    char dig_w[80], dig_w_nan[80], dig_w_shape[80], dig_x[80], dig_spec_unknown[80];
    char dig_spec_chain[80], dig_spec_missing[80], dig_x_bad[80];
    int acked_candidates = 0;

    /* A study with a fit input set (3 features), acknowledged. */
    const char *study = "{\"name\":\"hostile\",\"noise_models\":[{\"name\":\"iso\","
                        "\"kind\":\"isotropic\",\"sigma\":0.1}]}";
    assert_int_equal(req("POST", "/v1/studies", "application/json", study, strlen(study), WTOK,
                         &j), 201);
    snprintf(sid, sizeof sid, "%s", jstr(j, "id", NULL, NULL));
    json_decref(j);

    double x[8 * 3], w1[4 * 3], b1[4], w2[2 * 4], jd[8 * 10];
    for (int i = 0; i < 24; i++)
        x[i] = 0.1 * (i % 7) - 0.3;
    for (int i = 0; i < 12; i++)
        w1[i] = 0.05 * (i - 6);
    for (int i = 0; i < 4; i++)
        b1[i] = 0.01 * i;
    for (int i = 0; i < 8; i++)
        w2[i] = 0.1 * (4 - i);
    for (int i = 0; i < 80; i++)
        jd[i] = (double)(i % 13) / 10.0;
    size_t len;
    uint64_t xs[2] = { 8, 3 };
    unsigned char *b = test_npy_f64(xs, 2, x, &len);
    upload(b, len, dig_x);
    free(b);
    uint64_t xbs[2] = { 8, 5 }; /* inputs of the wrong width for the spec */
    double xb[40] = { 0 };
    b = test_npy_f64(xbs, 2, xb, &len);
    upload(b, len, dig_x_bad);
    free(b);
    char body[4096], path[512];
    snprintf(path, sizeof path, "/v1/studies/%s/inputs/fit", sid);
    snprintf(body, sizeof body, "{\"blob\":\"%s\"}", dig_x);
    assert_int_equal(req("PUT", path, "application/json", body, strlen(body), WTOK, NULL), 200);

    /* Tensors. */
    uint64_t js[2] = { 8, 10 }, jp[2] = { 8, 11 };
    b = test_npy_f64(js, 2, jd, &len);
    upload(b, len, dig_fit);
    unsigned char *trunc = malloc(len);
    memcpy(trunc, b, len);
    upload(trunc, len - 37, dig_trunc); /* truncated data */
    free(trunc);
    free(b);
    double jd2[8 * 11] = { 0 };
    b = test_npy_f64(jp, 2, jd2, &len);
    upload(b, len, dig_probe_badp);
    free(b);
    const char *badst = "\x20\x00\x00\x00\x00\x00\x00\x00{\"a\":{\"dtype\":\"F64\",\"shape\":[2,";
    upload(badst, 8 + 26, dig_badst);
    struct test_st_tensor good[3] = { { "l0.weight", 2, { 4, 3 }, w1 }, { "l0.bias", 1, { 4 }, b1 },
                                 { "l2.weight", 2, { 2, 4 }, w2 } };
    b = test_safetensors_f64(good, 3, &len);
    upload(b, len, dig_w);
    free(b);
    double w1nan[12];
    memcpy(w1nan, w1, sizeof w1);
    w1nan[5] = NAN;
    struct test_st_tensor nan[3] = { { "l0.weight", 2, { 4, 3 }, w1nan }, { "l0.bias", 1, { 4 }, b1 },
                                { "l2.weight", 2, { 2, 4 }, w2 } };
    b = test_safetensors_f64(nan, 3, &len);
    upload(b, len, dig_w_nan);
    free(b);
    struct test_st_tensor shape[3] = { { "l0.weight", 2, { 4, 3 }, w1 }, { "l0.bias", 1, { 4 }, b1 },
                                  { "l2.weight", 2, { 2, 3 }, w2 } }; /* 2x3 after a 4-wide layer */
    b = test_safetensors_f64(shape, 3, &len);
    upload(b, len, dig_w_shape);
    free(b);
    const char *spec = "{\"format\":\"tpv.sequential/v1\",\"input_shape\":[3],\"layers\":["
                       "{\"type\":\"linear\",\"weight\":\"l0.weight\",\"bias\":\"l0.bias\"},"
                       "{\"type\":\"relu\"},{\"type\":\"linear\",\"weight\":\"l2.weight\"}]}";
    upload(spec, strlen(spec), dig_spec);
    const char *spec_unknown = "{\"format\":\"tpv.sequential/v1\",\"input_shape\":[3],\"layers\":["
                               "{\"type\":\"linear\",\"weight\":\"l0.weight\",\"bias\":\"l0.bias\"},"
                               "{\"type\":\"swish\"},{\"type\":\"linear\",\"weight\":\"l2.weight\"}]}";
    upload(spec_unknown, strlen(spec_unknown), dig_spec_unknown);
    const char *spec_chain = "{\"format\":\"tpv.sequential/v1\",\"input_shape\":[3],\"layers\":["
                             "{\"type\":\"linear\",\"weight\":\"l2.weight\"},"
                             "{\"type\":\"linear\",\"weight\":\"l0.weight\"}]}";
    upload(spec_chain, strlen(spec_chain), dig_spec_chain);
    const char *spec_missing = "{\"format\":\"tpv.sequential/v1\",\"input_shape\":[3],\"layers\":["
                               "{\"type\":\"linear\",\"weight\":\"l0.weight\",\"bias\":\"nope\"}]}";
    upload(spec_missing, strlen(spec_missing), dig_spec_missing);

    /* A good candidate of each kind, acknowledged. */
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    snprintf(body, sizeof body, "{\"name\":\"good-dump\",\"jacobian\":{\"fit\":\"%s\"}}", dig_fit);
    assert_int_equal(req("POST", path, "application/json", body, strlen(body), WTOK, NULL), 202);
    acked_candidates++;
    snprintf(body, sizeof body, "{\"name\":\"good-model\",\"model\":{\"spec\":\"%s\","
             "\"weights\":\"%s\"}}", dig_spec, dig_w);
    long st = req("POST", path, "application/json", body, strlen(body), WTOK, &j);
    if (st != 202)
        fail_msg("good model: %ld %s", st, jstr(j, "error", "message", NULL));
    json_decref(j);
    acked_candidates++;
    /* NaN weights: submission reads headers, shapes and names only, so the candidate is accepted
     * and its job (which scans every value) fails naming the tensor and the index. */
    snprintf(body, sizeof body, "{\"name\":\"t3\",\"model\":{\"spec\":\"%s\","
             "\"weights\":\"%s\"}}", dig_spec, dig_w_nan);
    assert_int_equal(req("POST", path, "application/json", body, strlen(body), WTOK, &j), 202);
    char nan_job[96];
    snprintf(nan_job, sizeof nan_job, "/v1/jobs/%s", jstr(j, "job", "id", NULL));
    json_decref(j);
    acked_candidates++;

    static struct hostile h[128];
    int n = 0;
    char cands[256], ranking[256];
    snprintf(cands, sizeof cands, "/v1/studies/%s/candidates", sid);
    snprintf(ranking, sizeof ranking, "/v1/studies/%s/ranking", sid);
    static char bodies[64][4096];
    int nb = 0;
#define CAND(what_, field_, ...)                                                                   \
    do {                                                                                          \
        snprintf(bodies[nb], sizeof bodies[nb], __VA_ARGS__);                                     \
        h[n] = (struct hostile){ .what = what_, .method = "POST", .ctype = "application/json",   \
                                 .body = bodies[nb++], .token = WTOK, .status = 400,              \
                                 .code = "invalid_argument", .field = field_ };                  \
        snprintf(h[n++].path, sizeof h[0].path, "%s", cands);                                    \
    } while (0)

    /* Malformed tensors. */
    CAND("truncated npy", "jacobian.fit", "{\"name\":\"t1\",\"jacobian\":{\"fit\":\"%s\"}}",
         dig_trunc);
    CAND("bad safetensors header", "jacobian.fit",
         "{\"name\":\"t2\",\"jacobian\":{\"fit\":\"%s\"}}", dig_badst);
    CAND("weight shapes do not chain", "model", "{\"name\":\"t4\",\"model\":{\"spec\":\"%s\","
         "\"weights\":\"%s\"}}", dig_spec, dig_w_shape);
    CAND("probe dump of another width", "jacobian.probe",
         "{\"name\":\"t5\",\"jacobian\":{\"fit\":\"%s\",\"probe\":\"%s\"}}", dig_fit,
         dig_probe_badp);
    CAND("spec blob is a tensor", "model.spec",
         "{\"name\":\"t6\",\"model\":{\"spec\":\"%s\",\"weights\":\"%s\"}}", dig_fit, dig_w);
    /* Malformed specs (by digest and inline). */
    CAND("unknown layer type", "layers[1].type",
         "{\"name\":\"s1\",\"model\":{\"spec\":\"%s\",\"weights\":\"%s\"}}", dig_spec_unknown,
         dig_w);
    CAND("shape chain mismatch", "layers[0].weight",
         "{\"name\":\"s2\",\"model\":{\"spec\":\"%s\",\"weights\":\"%s\"}}", dig_spec_chain, dig_w);
    CAND("missing tensor", "layers[0].bias",
         "{\"name\":\"s3\",\"model\":{\"spec\":\"%s\",\"weights\":\"%s\"}}", dig_spec_missing,
         dig_w);
    CAND("inline spec with an unknown key", "model.spec",
         "{\"name\":\"s4\",\"model\":{\"spec\":{\"format\":\"tpv.sequential/v1\","
         "\"input_shape\":[3],\"layers\":[],\"colour\":1},\"weights\":\"%s\"}}", dig_w);
    CAND("inline spec of another format", "model.spec",
         "{\"name\":\"s5\",\"model\":{\"spec\":{\"format\":\"keras\",\"input_shape\":[3],"
         "\"layers\":[]},\"weights\":\"%s\"}}", dig_w);
    CAND("missing blob", "jacobian.fit", "{\"name\":\"s6\",\"jacobian\":{\"fit\":\"sha256:%064d\"}}",
         0);
    CAND("candidate name already taken", NULL, "{\"name\":\"good-dump\",\"jacobian\":{\"fit\":\"%s\"}}",
         dig_fit);
    h[n - 1].status = 409;
    h[n - 1].code = "already_exists";
    h[n - 1].field = "name";
    /* Malformed JSON. */
    CAND("syntax error", "body", "{\"name\":\"j1\",");
    CAND("wrong type", "name", "{\"name\":5,\"jacobian\":{\"fit\":\"%s\"}}", dig_fit);
    CAND("wrong type (metadata)", "metadata", "{\"name\":\"j2\",\"metadata\":[],\"jacobian\":"
         "{\"fit\":\"%s\"}}", dig_fit);
    CAND("unknown field", "colour", "{\"name\":\"j3\",\"colour\":1,\"jacobian\":{\"fit\":\"%s\"}}",
         dig_fit);
    CAND("huge number", "body", "{\"name\":\"j4\",\"metadata\":{\"train_loss\":1e999999},"
         "\"jacobian\":{\"fit\":\"%s\"}}", dig_fit);
    CAND("huge integer", "body", "{\"name\":\"j5\",\"metadata\":{\"epoch\":"
         "123456789012345678901234567890},\"jacobian\":{\"fit\":\"%s\"}}", dig_fit);
    CAND("NUL escape in a name", "body", "{\"name\":\"a\\u0000b\",\"jacobian\":{\"fit\":\"%s\"}}",
         dig_fit);
    CAND("JSON array instead of an object", "body", "[1,2,3]");
    CAND("empty body", "body", "%s", "");
    h[n - 1].len = 0;
    h[n - 1].body = NULL;
    CAND("invalid UTF-8", "body", "{\"name\":\"bad\xff\xfe\",\"jacobian\":{\"fit\":\"%s\"}}",
         dig_fit);
    /* Deep nesting: 50000 arrays deep, well within the body limit. */
    size_t deep_len = 100000 + 64;
    char *deep = malloc(deep_len + 1);
    if (!deep) { /* cmocka's fail is not noreturn: without the return the NULL path goes on */
        fail_msg("out of memory for the deep body");
        return;
    }
    size_t dl = (size_t)sprintf(deep, "{\"name\":\"deep\",\"metadata\":{\"x\":");
    memset(deep + dl, '[', 50000);
    memset(deep + dl + 50000, ']', 50000);
    dl += 100000;
    dl += (size_t)sprintf(deep + dl, "}}");
    h[n] = (struct hostile){ .what = "deep nesting", .method = "POST", .ctype = "application/json",
                             .body = deep, .len = dl, .token = WTOK, .status = 400,
                             .code = "invalid_argument", .field = "body" };
    snprintf(h[n++].path, sizeof h[0].path, "%s", cands);
    /* The study route too. */
    h[n] = (struct hostile){ .what = "study with a negative sigma", .method = "POST",
                             .ctype = "application/json", .token = WTOK, .status = 400,
                             .field = "noise_models[0].sigma",
                             .body = "{\"name\":\"x\",\"noise_models\":[{\"name\":\"a\","
                                     "\"kind\":\"isotropic\",\"sigma\":-1}]}" };
    snprintf(h[n++].path, sizeof h[0].path, "/v1/studies");
    h[n] = (struct hostile){ .what = "study of an unknown noise kind", .method = "POST",
                             .ctype = "application/json", .token = WTOK, .status = 400,
                             .field = "noise_models[0]",
                             .body = "{\"name\":\"x\",\"noise_models\":[{\"name\":\"a\","
                                     "\"kind\":\"gamma\"}]}" };
    snprintf(h[n++].path, sizeof h[0].path, "/v1/studies");
    h[n] = (struct hostile){ .what = "JSON route with text/plain", .method = "POST",
                             .ctype = "text/plain", .token = WTOK, .status = 415,
                             .code = "unsupported_media_type", .field = "Content-Type",
                             .body = "{\"name\":\"x\",\"noise_models\":[]}" };
    snprintf(h[n++].path, sizeof h[0].path, "/v1/studies");
    h[n] = (struct hostile){ .what = "inputs blob that is not a digest", .method = "PUT",
                             .ctype = "application/json", .token = WTOK, .status = 0 };
    snprintf(bodies[nb], sizeof bodies[nb], "{\"blob\":\"%s\"}", "sha256:xyz");
    h[n].body = bodies[nb++];
    h[n].field = "blob";
    snprintf(h[n++].path, sizeof h[0].path, "/v1/studies/%s/inputs/fit", sid);
    h[n] = (struct hostile){ .what = "inputs split other than fit/probe", .method = "PUT",
                             .ctype = "application/json", .token = WTOK, .status = 0 };
    snprintf(bodies[nb], sizeof bodies[nb], "{\"blob\":\"%s\"}", dig_x);
    h[n].body = bodies[nb++];
    snprintf(h[n++].path, sizeof h[0].path, "/v1/studies/%s/inputs/test", sid);

    /* Bad ids and paths. */
    const char *paths[] = {
        "/v1/studies/../../etc/passwd", "/v1/studies/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/v1/jobs/..%2f..%2fblobs", "/v1/studies/st_%00x", "/v1/studies/st_x%0d%0aX-Bad:%201",
        "/v1/studies/'%20OR%201=1--", "/v1/jobs/jb_0000000000000000", "/v1/../healthz/../v1/jobs",
        "/v1/studies//candidates", "/v1/blobs/sha256:..%2f..%2ftpvd.db",
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        h[n] = (struct hostile){ .what = paths[i], .method = strstr(paths[i], "blobs") ? "HEAD"
                                                                                        : "GET",
                                 .token = RTOK, .status = 0 };
        snprintf(h[n++].path, sizeof h[0].path, "%s", paths[i]);
    }
    h[n] = (struct hostile){ .what = "very long id", .method = "GET", .token = RTOK, .status = 404 };
    size_t pl = (size_t)snprintf(h[n].path, sizeof h[0].path, "/v1/studies/");
    memset(h[n].path + pl, 'a', 8000);
    h[n++].path[pl + 8000] = '\0';
    h[n] = (struct hostile){ .what = "long id in a candidate path", .method = "GET",
                             .token = RTOK, .status = 404 };
    pl = (size_t)snprintf(h[n].path, sizeof h[0].path, "%s/", cands);
    memset(h[n].path + pl, 'c', 500);
    h[n++].path[pl + 500] = '\0';

    /* Bad query parameters. */
    const char *queries[][2] = {
        { "?split=foo", "split" },        { "?by=nope", "by" },
        { "?wait=-1", "wait" },           { "?wait=abc", "wait" },
        { "?max_train_loss=x", "max_train_loss" },
    };
    for (size_t i = 0; i < sizeof queries / sizeof queries[0]; i++) {
        h[n] = (struct hostile){ .what = queries[i][0], .method = "GET", .token = RTOK,
                                 .status = 400, .code = "invalid_argument",
                                 .field = queries[i][1] };
        snprintf(h[n++].path, sizeof h[0].path, "%s%s", ranking, queries[i][0]);
    }
    const char *pages[][2] = { { "?page_token=garbage", "page_token" },
                               { "?page_token=%ff%00", "page_token" },
                               { "?page_size=0", "page_size" },
                               { "?page_size=99999999999999999999", "page_size" } };
    for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++) {
        h[n] = (struct hostile){ .what = pages[i][0], .method = "GET", .token = RTOK,
                                 .status = 400, .code = "invalid_argument", .field = pages[i][1] };
        snprintf(h[n++].path, sizeof h[0].path, "%s%s", i % 2 ? "/v1/studies" : cands,
                 pages[i][0]);
    }

    /* Unauthorized calls. */
    snprintf(bodies[nb], sizeof bodies[nb], "{\"name\":\"u1\",\"jacobian\":{\"fit\":\"%s\"}}",
             dig_fit);
    h[n] = (struct hostile){ .what = "no token", .method = "POST", .ctype = "application/json",
                             .body = bodies[nb], .status = 401, .code = "unauthenticated" };
    snprintf(h[n++].path, sizeof h[0].path, "%s", cands);
    h[n] = (struct hostile){ .what = "read token on a write route", .method = "POST",
                             .ctype = "application/json", .body = bodies[nb++], .token = RTOK,
                             .status = 403, .code = "permission_denied" };
    snprintf(h[n++].path, sizeof h[0].path, "%s", cands);
    h[n] = (struct hostile){ .what = "bad token", .method = "GET", .token = "tpv_forged",
                             .status = 401, .code = "unauthenticated" };
    snprintf(h[n++].path, sizeof h[0].path, "%s", ranking);
    h[n] = (struct hostile){ .what = "read token uploading", .method = "PUT",
                             .ctype = "application/octet-stream", .body = "blob bytes",
                             .token = RTOK, .status = 403 };
    snprintf(h[n++].path, sizeof h[0].path, "/v1/blobs");
    h[n] = (struct hostile){ .what = "read token cancelling", .method = "DELETE", .token = RTOK,
                             .status = 403 };
    snprintf(h[n++].path, sizeof h[0].path, "/v1/jobs/jb_0000000000000000");
    assert_true(n <= 128 && nb <= 64);

    int failures = 0;
    for (int i = 0; i < n; i++)
        failures += run_entry(&h[i]);
    free(deep);
    assert_int_equal(failures, 0);

    /* The NaN-weights job failed with the tensor and the index in its message. */
    for (int tries = 0; tries < 400; tries++) {
        assert_int_equal(req("GET", nan_job, NULL, NULL, 0, RTOK, &j), 200);
        const char *nan_state = jstr(j, "state", NULL, NULL);
        if (nan_state &&
            (strcmp(nan_state, "failed") == 0 || strcmp(nan_state, "succeeded") == 0))
            break;
        json_decref(j);
        j = NULL;
        usleep(25 * 1000);
    }
    assert_non_null(j);
    assert_string_equal(jstr(j, "state", NULL, NULL), "failed");
    assert_string_equal(jstr(j, "error", "code", NULL), "invalid_argument");
    const char *nan_msg = jstr(j, "error", "message", NULL);
    assert_non_null(nan_msg);
    assert_non_null(strstr(nan_msg, "'l0.weight'"));
    assert_non_null(strstr(nan_msg, "non-finite"));
    assert_non_null(strstr(nan_msg, "index 5"));
    json_decref(j);

    /* The model candidate whose inputs do not fit the spec is refused too, and a study input
     * set of the wrong width after a model candidate exists stays a 4xx. */
    (void)dig_x_bad;

    /* Exactly what was acknowledged. */
    assert_int_equal(req("GET", "/v1/studies", NULL, NULL, 0, RTOK, &j), 200);
    assert_int_equal(json_array_size(json_object_get(j, "items")), 1);
    json_decref(j);
    assert_int_equal(req("GET", cands, NULL, NULL, 0, RTOK, &j), 200);
    json_t *items = json_object_get(j, "items");
    assert_int_equal(json_array_size(items), acked_candidates);
    json_decref(j);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/blobs/tmp", D.data_dir);
    assert_int_equal(count_files(dir), 0);
    snprintf(dir, sizeof dir, "%s/blobs/sha256", D.data_dir);
    assert_int_equal(count_files(dir), acked_blobs);
    /* Metrics agree: no 5xx answered. */
    assert_int_equal(req("GET", "/metrics", NULL, NULL, 0, RTOK, NULL), 200);
    assert_int_equal(req("GET", "/healthz", NULL, NULL, 0, NULL, NULL), 200);
}

static int setup(void **state)
{
    (void)state;
    if (test_daemon_prepare(&D) != 0 ||
        test_daemon_token(&D, "create --name w --role write", WTOK, sizeof WTOK) != 0 ||
        test_daemon_token(&D, "create --name r --role read", RTOK, sizeof RTOK) != 0)
        return -1;
    return test_daemon_start(&D, NULL);
}

static int teardown(void **state)
{
    (void)state;
    int rc = test_daemon_stop(&D, SIGTERM);
    int bad = test_daemon_log_count(&D, " status=5", true); /* no 5xx in the whole run */
    test_daemon_cleanup(&D);
    return rc == 0 && bad == 0 ? 0 : -1;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catalogue),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    curl_global_cleanup();
    return rc;
}
