/* test_api_rules.c: API rules against the real tpvd that only show under concurrency, volume or
 * hostile files (issue #10):
 *  - identical requests with one Idempotency-Key sent at the same time all get the first answer
 *    (POST study, POST candidate), however the race falls;
 *  - a study's input sets are frozen once it has candidates (409), the same digest again is 200;
 *  - input sets with NaN or Inf are refused naming the first bad index;
 *  - list pages are bounded in bytes as well as in count, paging returns every item once, and
 *    metadata is bounded per object (--max-page-bytes, --max-metadata-bytes);
 *  - no error body ever carries a server path (the data dir). */
#include <math.h>
#include <pthread.h>
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
#include <cmocka.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"
#include "tests/support/service_steps.h"
#include "tests/support/npy.h"

/* ---- helpers ---- */

/* A float64 .npy of shape (n, p) with entries (i + 2j + 1) / 10, and `bad` (NaN, Inf) at flat
 * index bad_at when bad_at < n * p. */
static unsigned char *make_npy(uint64_t n, uint64_t p, uint64_t bad_at, double bad, size_t *len)
{
    double *v = malloc(n * p * sizeof *v);
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t j = 0; j < p; j++)
            v[i * p + j] = (double)(i + 2 * j + 1) / 10.0;
    if (bad_at < n * p)
        v[bad_at] = bad;
    uint64_t shape[2] = { n, p };
    unsigned char *b = test_npy_f64(shape, 2, v, len);
    free(v);
    return b;
}

/* Fails when a real in the JSON text `body` is longer than needed: a %.15g spelling that reads
 * back to the same double and is shorter (jansson alone writes 0.10000000000000001). */
static void assert_reals_shortest(const char *what, const char *body)
{
    bool in_string = false;
    int reals = 0;
    for (const char *p = body; *p; p++) {
        if (in_string) {
            if (*p == '\\' && p[1])
                p++;
            else if (*p == '"')
                in_string = false;
            continue;
        }
        if (*p == '"') {
            in_string = true;
            continue;
        }
        if (*p != '-' && (*p < '0' || *p > '9'))
            continue;
        size_t n = strspn(p, "0123456789+-.eE");
        char token[64], alt[64];
        snprintf(token, sizeof token, "%.*s", (int)n, p);
        p += n - 1;
        if (!strpbrk(token, ".eE"))
            continue; /* an integer */
        reals++;
        double v = strtod(token, NULL);
        snprintf(alt, sizeof alt, "%.15g", v);
        if (strtod(alt, NULL) == v && strlen(alt) + 2 < strlen(token))
            fail_msg("%s: %s could be %s: %.300s", what, token, alt, body);
    }
    if (reals == 0)
        fail_msg("%s: no reals in %.400s", what, body);
}

/* ---- 1. Idempotency-Key races ---- */

#define RACE_PAIRS 4  /* pairs in flight at once */
#define RACE_ROUNDS 12

struct racer {
    const struct test_daemon *d;
    pthread_barrier_t *start;
    const char *path;
    char body[512];
    char key[96];
    long status;
    json_t *json;
};

static void *racer_main(void *arg)
{
    struct racer *r = arg;
    char hdr[128];
    snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", r->key);
    const char *hdrs[] = { hdr, NULL };
    struct http_result res;
    pthread_barrier_wait(r->start);
    r->status = -1;
    if (http_json(r->d->base_url, "POST", r->path, r->body, hdrs, &res) == 0) {
        r->status = res.status;
        r->json = json_incref(res.json);
        http_result_free(&res);
    }
    return NULL;
}

/* Sends RACE_PAIRS pairs of identical requests at once, RACE_ROUNDS times; every member of a
 * pair must get the same success, with the same body.  Returns how many pairs were wrong. */
static int race(const struct test_daemon *d, const char *path, const char *what,
                void (*body_of)(char *buf, size_t cap, int i, void *ctx), void *ctx, long want)
{
    int wrong = 0;
    for (int round = 0; round < RACE_ROUNDS; round++) {
        struct racer rs[2 * RACE_PAIRS];
        pthread_t th[2 * RACE_PAIRS];
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, 2 * RACE_PAIRS);
        for (int k = 0; k < 2 * RACE_PAIRS; k++) {
            int i = round * RACE_PAIRS + k / 2;
            rs[k] = (struct racer){ .d = d, .start = &start, .path = path };
            body_of(rs[k].body, sizeof rs[k].body, i, ctx);
            snprintf(rs[k].key, sizeof rs[k].key, "%s-%d", what, i);
            assert_int_equal(pthread_create(&th[k], NULL, racer_main, &rs[k]), 0);
        }
        for (int k = 0; k < 2 * RACE_PAIRS; k++)
            pthread_join(th[k], NULL);
        pthread_barrier_destroy(&start);
        for (int k = 0; k < 2 * RACE_PAIRS; k += 2) {
            struct racer *a = &rs[k], *b = &rs[k + 1];
            if (a->status != want || b->status != want || !json_equal(a->json, b->json)) {
                char *ta = a->json ? json_dumps(a->json, JSON_COMPACT) : NULL;
                char *tb = b->json ? json_dumps(b->json, JSON_COMPACT) : NULL;
                print_error("%s %s: %ld %.300s / %ld %.300s\n", what, a->key, a->status,
                            ta ? ta : "-", b->status, tb ? tb : "-");
                free(ta);
                free(tb);
                wrong++;
            }
        }
        for (int k = 0; k < 2 * RACE_PAIRS; k++)
            json_decref(rs[k].json);
    }
    return wrong;
}

static void study_body(char *buf, size_t cap, int i, void *ctx)
{
    (void)ctx;
    snprintf(buf, cap, "{\"name\":\"raced-%d\",\"noise_models\":[{\"name\":\"iso\","
             "\"kind\":\"isotropic\",\"sigma\":0.5}]}", i);
}

static void candidate_body(char *buf, size_t cap, int i, void *ctx)
{
    snprintf(buf, cap, "{\"name\":\"raced-%d\",\"jacobian\":{\"fit\":\"%s\"}}", i,
             (const char *)ctx);
}

static void test_idempotency_race(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--http-threads", "8", "--workers", "1", NULL };
    assert_int_equal(test_daemon_start(&d, args), 0);
    size_t len;
    char dump[80], sid[64], path[128];
    unsigned char *npy = make_npy(64, 32, UINT64_MAX, 0, &len);
    test_put_blob(&d, npy, len, dump);
    free(npy);
    test_create_iso_study(&d, "race", sid);
    int wrong = race(&d, "/v1/studies", "study", study_body, NULL, 201);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    wrong += race(&d, path, "candidate", candidate_body, dump, 202);
    if (wrong)
        fail_msg("%d of %d raced pairs did not both get the first answer", wrong,
                 2 * RACE_ROUNDS * RACE_PAIRS);
    /* Exactly one candidate per key. */
    struct http_result r;
    snprintf(path, sizeof path, "/v1/studies/%s/candidates?page_size=500", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(json_array_size(json_object_get(r.json, "items")), RACE_ROUNDS * RACE_PAIRS);
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* ---- 2. input sets frozen once candidates exist; 5. non-finite inputs ---- */

static long put_inputs(const struct test_daemon *d, const char *sid, const char *split,
                       const char *digest, struct http_result *r)
{
    char path[160], body[160];
    snprintf(path, sizeof path, "/v1/studies/%s/inputs/%s", sid, split);
    snprintf(body, sizeof body, "{\"blob\":\"%s\"}", digest);
    assert_int_equal(http_json(d->base_url, "PUT", path, body, NULL, r), 0);
    return r->status;
}

static void test_inputs_frozen_with_candidates(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    assert_int_equal(test_daemon_start(&d, NULL), 0);
    size_t len;
    char x1[80], x2[80], dump[80], sid[64], path[160], body[256];
    unsigned char *b = make_npy(5, 3, UINT64_MAX, 0, &len);
    test_put_blob(&d, b, len, x1);
    free(b);
    b = make_npy(6, 3, UINT64_MAX, 0, &len);
    test_put_blob(&d, b, len, x2);
    free(b);
    b = make_npy(4, 3, UINT64_MAX, 0, &len);
    test_put_blob(&d, b, len, dump);
    free(b);
    test_create_iso_study(&d, "frozen", sid);
    struct http_result r;
    assert_int_equal(put_inputs(&d, sid, "fit", x1, &r), 200);
    http_result_free(&r);
    assert_int_equal(put_inputs(&d, sid, "fit", x2, &r), 200); /* no candidate yet: free */
    http_result_free(&r);

    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    snprintf(body, sizeof body, "{\"name\":\"c\",\"metadata\":{\"train_loss\":0.1},"
             "\"jacobian\":{\"fit\":\"%s\"}}", dump);
    assert_int_equal(http_json(d.base_url, "POST", path, body, NULL, &r), 0);
    assert_int_equal(r.status, 202);
    /* Let its job end: the worker's state changes bump the version too. */
    snprintf(path, sizeof path, "/v1/jobs/%s", http_json_str(&r, "job.id"));
    http_result_free(&r);
    for (int i = 0;; i++) {
        assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
        bool done = strcmp(http_json_str(&r, "state"), "succeeded") == 0;
        http_result_free(&r);
        if (done)
            break;
        if (i == 2000)
            fail_msg("job %s did not succeed", path);
        usleep(10 * 1000);
    }
    /* Scores as every response spells reals: shortest (the ranking is rendered apart). */
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?split=fit", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_reals_shortest("ranking", r.body);
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_reals_shortest("candidates", r.body);
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    json_int_t version = json_integer_value(json_object_get(r.json, "version"));
    http_result_free(&r);

    /* The same digest again: an idempotent 200 that changes nothing. */
    assert_int_equal(put_inputs(&d, sid, "fit", x2, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "version")), version);
    assert_string_equal(http_json_str(&r, "inputs.fit.digest"), x2);
    http_result_free(&r);
    /* Other inputs would mix two input sets in one ranking. */
    put_inputs(&d, sid, "fit", x1, &r);
    test_expect_error(&r, 409, "failed_precondition", "inputs.fit");
    assert_non_null(strstr(http_json_str(&r, "error.message"), "new study"));
    http_result_free(&r);
    put_inputs(&d, sid, "probe", x1, &r);
    test_expect_error(&r, 409, "failed_precondition", "inputs.probe");
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_string_equal(http_json_str(&r, "inputs.fit.digest"), x2);
    assert_true(json_is_null(json_object_get(json_object_get(r.json, "inputs"), "probe")));
    http_result_free(&r);
    /* The API document says so. */
    assert_int_equal(http_json(d.base_url, "GET", "/openapi.json", NULL, NULL, &r), 0);
    json_t *op = json_object_get(json_object_get(json_object_get(r.json, "paths"),
                                                 "/v1/studies/{sid}/inputs/{split}"), "put");
    assert_non_null(json_object_get(json_object_get(op, "responses"), "409"));
    assert_non_null(strstr(json_string_value(json_object_get(op, "summary")), "409"));
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

static void test_inputs_must_be_finite(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    assert_int_equal(test_daemon_start(&d, NULL), 0);
    char sid[64], digest[80];
    test_create_iso_study(&d, "finite", sid);
    const double bad[] = { NAN, INFINITY, -INFINITY };
    for (int i = 0; i < 3; i++) {
        size_t len;
        unsigned char *b = make_npy(4, 3, 7, bad[i], &len); /* row 2, column 1 */
        test_put_blob(&d, b, len, digest);
        free(b);
        struct http_result r;
        put_inputs(&d, sid, i == 0 ? "fit" : "probe", digest, &r);
        test_expect_error(&r, 400, "invalid_argument", "blob");
        const char *msg = http_json_str(&r, "error.message");
        if (!strstr(msg, "index 7") && !strstr(msg, "[2, 1]") && !strstr(msg, "(2, 1)"))
            fail_msg("the message names no bad index: %s", msg);
        http_result_free(&r);
    }
    struct http_result r;
    char path[128];
    snprintf(path, sizeof path, "/v1/studies/%s", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_true(json_is_null(json_object_get(json_object_get(r.json, "inputs"), "fit")));
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* ---- 3. list pages bounded in bytes, metadata bounded per object ---- */

#define PAGE_BYTES (256 * 1024)
#define META_BYTES (64 * 1024)

/* {"note":"xxx..."} of exactly `bytes` bytes as compact JSON. */
static char *metadata_of(size_t bytes)
{
    char *m = malloc(bytes + 1);
    size_t head = strlen("{\"note\":\""), tail = strlen("\"}");
    memcpy(m, "{\"note\":\"", head);
    memset(m + head, 'x', bytes - head - tail);
    memcpy(m + bytes - tail, "\"}", tail + 1);
    return m;
}

/* Pages through `path` (with page_size=500); every body within PAGE_BYTES unless it holds a
 * single item, every page at least one item.  Returns the names seen, in order. */
static json_t *page_all(const struct test_daemon *d, const char *path, int *pages)
{
    json_t *names = json_array();
    char url[512], token[128] = "";
    *pages = 0;
    do {
        struct http_result r;
        snprintf(url, sizeof url, "%s?page_size=500%s%s", path, token[0] ? "&page_token=" : "",
                 token);
        assert_int_equal(http_json(d->base_url, "GET", url, NULL, NULL, &r), 0);
        assert_int_equal(r.status, 200);
        json_t *items = json_object_get(r.json, "items");
        assert_true(json_array_size(items) >= 1);
        if (json_array_size(items) > 1 && r.body_len > PAGE_BYTES)
            fail_msg("%s: a page of %zu items took %zu bytes (bound %d)", path,
                     json_array_size(items), r.body_len, PAGE_BYTES);
        for (size_t i = 0; i < json_array_size(items); i++)
            json_array_append(names, json_object_get(json_array_get(items, i), "name"));
        const char *next = http_json_str(&r, "next_page_token");
        snprintf(token, sizeof token, "%s", next ? next : "");
        http_result_free(&r);
        (*pages)++;
    } while (token[0]);
    return names;
}

static void assert_each_once(json_t *names, const char *prefix, int count)
{
    assert_int_equal(json_array_size(names), count);
    for (int i = 0; i < count; i++) {
        char want[64];
        snprintf(want, sizeof want, "%s%d", prefix, i);
        assert_string_equal(json_string_value(json_array_get(names, (size_t)i)), want);
    }
}

static void test_list_pages_bounded_in_bytes(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--max-page-bytes", "256K", "--max-metadata-bytes", "64K", NULL };
    assert_int_equal(test_daemon_start(&d, args), 0);
    char *meta = metadata_of(META_BYTES - 100), *body = malloc(2 * META_BYTES);
    struct http_result r;
    enum { STUDIES = 24, CANDIDATES = 20 };
    /* Descriptions grow when escaped: quotes double, control characters become \u00XX. */
    char desc[4000] = "";
    for (int i = 0; i < 600; i++)
        strcat(desc, i % 2 ? "\\\"" : "\\u0001");
    for (int i = 0; i < STUDIES; i++) {
        snprintf(body, 2 * META_BYTES, "{\"name\":\"s%d\",\"description\":\"%s\","
                 "\"metadata\":%s,\"noise_models\":[{\"name\":\"iso\",\"kind\":\"isotropic\","
                 "\"sigma\":0.1}]}", i, desc, meta);
        assert_int_equal(http_json(d.base_url, "POST", "/v1/studies", body, NULL, &r), 0);
        if (r.status != 201)
            fail_msg("study %d: %ld %s", i, r.status, r.body);
        http_result_free(&r);
    }
    /* Larger than --max-metadata-bytes: 413 naming the field and the flag. */
    char *big = metadata_of(META_BYTES + 1);
    snprintf(body, 2 * META_BYTES, "{\"name\":\"big\",\"metadata\":%s,\"noise_models\":"
             "[{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0.1}]}", big);
    assert_int_equal(http_json(d.base_url, "POST", "/v1/studies", body, NULL, &r), 0);
    test_expect_error(&r, 413, "payload_too_large", "metadata");
    assert_non_null(strstr(http_json_str(&r, "error.message"), "--max-metadata-bytes"));
    http_result_free(&r);

    int pages;
    json_t *names = page_all(&d, "/v1/studies", &pages);
    assert_each_once(names, "s", STUDIES);
    assert_true(pages >= STUDIES * META_BYTES / PAGE_BYTES);
    json_decref(names);

    char sid[64], path[160], dump[80];
    size_t len;
    unsigned char *npy = make_npy(4, 3, UINT64_MAX, 0, &len);
    test_put_blob(&d, npy, len, dump);
    free(npy);
    test_create_iso_study(&d, "paged", sid);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    for (int i = 0; i < CANDIDATES; i++) {
        snprintf(body, 2 * META_BYTES, "{\"name\":\"c%d\",\"metadata\":%s,\"jacobian\":"
                 "{\"fit\":\"%s\"}}", i, meta, dump);
        assert_int_equal(http_json(d.base_url, "POST", path, body, NULL, &r), 0);
        if (r.status != 202)
            fail_msg("candidate %d: %ld %s", i, r.status, r.body);
        http_result_free(&r);
    }
    snprintf(body, 2 * META_BYTES, "{\"name\":\"big\",\"metadata\":%s,\"jacobian\":"
             "{\"fit\":\"%s\"}}", big, dump);
    assert_int_equal(http_json(d.base_url, "POST", path, body, NULL, &r), 0);
    test_expect_error(&r, 413, "payload_too_large", "metadata");
    http_result_free(&r);
    names = page_all(&d, path, &pages);
    assert_each_once(names, "c", CANDIDATES);
    assert_true(pages >= CANDIDATES * META_BYTES / PAGE_BYTES);
    json_decref(names);
    free(big);
    free(meta);
    free(body);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* ---- 4. no server path in any error body ---- */

static int path_leaks;

/* Fails the test later when the body names the data dir, the test folder or the blob layout. */
static void check_no_path(const struct test_daemon *d, const char *what,
                          const struct http_result *r)
{
    const char *needles[] = { d->data_dir, d->dir, "/blobs/", "/tmp/", "sha256/" };
    for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++) {
        if (r->body && strstr(r->body, needles[i])) {
            print_error("%s: server path in the answer (%ld): %s\n", what, r->status, r->body);
            path_leaks++;
            return;
        }
    }
}

static void hostile(const struct test_daemon *d, const char *method, const char *path,
                    const char *body, const char *what)
{
    struct http_result r;
    assert_int_equal(http_json(d->base_url, method, path, body, NULL, &r), 0);
    if (r.status < 400)
        fail_msg("%s: want an error, got %ld %s", what, r.status, r.body);
    check_no_path(d, what, &r);
    http_result_free(&r);
}

static void test_no_server_path_in_errors(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    assert_int_equal(test_daemon_start(&d, NULL), 0);
    char sid[64], path[256], body[1024];
    test_create_iso_study(&d, "paths", sid);

    /* Files that are not what they claim to be, each as inputs, dump, weights and spec. */
    size_t len;
    unsigned char *good = make_npy(4, 3, UINT64_MAX, 0, &len);
    struct {
        const char *what;
        unsigned char bytes[160];
        size_t len;
    } bad[8];
    int nbad = 0;
    bad[nbad].what = "text";
    bad[nbad].len = (size_t)snprintf((char *)bad[nbad].bytes, 160, "not a tensor at all");
    nbad++;
    bad[nbad].what = "truncated npy";
    bad[nbad].len = len - 8 < 150 ? len - 8 : 150;
    memcpy(bad[nbad].bytes, good, bad[nbad].len);
    nbad++;
    bad[nbad].what = "npy header garbage";
    memcpy(bad[nbad].bytes, "\x93NUMPY\x01\x00\x20\x00{'descr': '<f8', 'shape': (]]]]", 42);
    bad[nbad].len = 42;
    nbad++;
    bad[nbad].what = "safetensors header past the end";
    memcpy(bad[nbad].bytes, "\xff\x00\x00\x00\x00\x00\x00\x00{}", 10);
    bad[nbad].len = 10;
    nbad++;
    bad[nbad].what = "safetensors bad json";
    memcpy(bad[nbad].bytes, "\x04\x00\x00\x00\x00\x00\x00\x00{\"a\"", 12);
    bad[nbad].len = 12;
    nbad++;
    bad[nbad].what = "empty";
    bad[nbad].len = 0;
    nbad++;
    char gooddigest[80];
    test_put_blob(&d, good, len, gooddigest);
    free(good);
    for (int i = 0; i < nbad; i++) {
        char digest[80], what[160];
        if (bad[i].len == 0) {
            struct http_result r;
            char url[256];
            snprintf(url, sizeof url, "%s/v1/blobs", d.base_url);
            assert_int_equal(http_request("PUT", url, "", 0, NULL, &r), 0);
            check_no_path(&d, "empty blob", &r);
            if (r.status != 201 && r.status != 200) {
                http_result_free(&r);
                continue;
            }
            snprintf(digest, sizeof digest, "%s", http_json_str(&r, "digest"));
            http_result_free(&r);
        } else {
            test_put_blob(&d, bad[i].bytes, bad[i].len, digest);
        }
        snprintf(path, sizeof path, "/v1/studies/%s/inputs/fit", sid);
        snprintf(body, sizeof body, "{\"blob\":\"%s\"}", digest);
        snprintf(what, sizeof what, "inputs: %s", bad[i].what);
        hostile(&d, "PUT", path, body, what);
        snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
        snprintf(body, sizeof body, "{\"name\":\"d%d\",\"jacobian\":{\"fit\":\"%s\"}}", i,
                 digest);
        snprintf(what, sizeof what, "dump: %s", bad[i].what);
        hostile(&d, "POST", path, body, what);
        snprintf(body, sizeof body, "{\"name\":\"p%d\",\"jacobian\":{\"fit\":\"%s\","
                 "\"probe\":\"%s\"}}", i, gooddigest, digest);
        snprintf(what, sizeof what, "probe dump: %s", bad[i].what);
        hostile(&d, "POST", path, body, what);
        snprintf(body, sizeof body, "{\"name\":\"w%d\",\"jacobian\":{\"fit\":\"%s\"},"
                 "\"weights\":\"%s\"}", i, gooddigest, digest);
        snprintf(what, sizeof what, "weights: %s", bad[i].what);
        /* With an isotropic study the weights may go unread: only check when it is refused. */
        struct http_result r;
        assert_int_equal(http_json(d.base_url, "POST", path, body, NULL, &r), 0);
        check_no_path(&d, what, &r);
        http_result_free(&r);
    }
    /* Model candidates need the fit set: give the study a good one first. */
    char msid[64];
    test_create_iso_study(&d, "paths-model", msid);
    snprintf(path, sizeof path, "/v1/studies/%s/inputs/fit", msid);
    snprintf(body, sizeof body, "{\"blob\":\"%s\"}", gooddigest);
    struct http_result r;
    assert_int_equal(http_json(d.base_url, "PUT", path, body, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", msid);
    char textdigest[80];
    test_put_blob(&d, "not a tensor at all", 19, textdigest);
    snprintf(body, sizeof body, "{\"name\":\"m1\",\"model\":{\"spec\":{\"format\":"
             "\"tpv.sequential/v1\",\"input_shape\":[3],\"layers\":[{\"type\":\"linear\","
             "\"weight\":\"w\"}]},\"weights\":\"%s\"}}", textdigest);
    hostile(&d, "POST", path, body, "model weights: text");
    snprintf(body, sizeof body, "{\"name\":\"m2\",\"model\":{\"spec\":\"%s\",\"weights\":\"%s\"}}",
             textdigest, gooddigest);
    hostile(&d, "POST", path, body, "model spec blob: text");
    snprintf(body, sizeof body, "{\"name\":\"m3\",\"model\":{\"spec\":{\"format\":"
             "\"tpv.sequential/v1\",\"input_shape\":[3],\"layers\":[{\"type\":\"linear\","
             "\"weight\":\"w\"}]},\"weights\":\"%s\"}}", gooddigest);
    hostile(&d, "POST", path, body, "model weights: npy, not safetensors");
    /* A blob uploaded under the wrong digest, and unknown blobs and ids. */
    char url[256];
    snprintf(url, sizeof url, "%s/v1/blobs/%s", d.base_url, gooddigest);
    assert_int_equal(http_request("PUT", url, "other bytes", 11, NULL, &r), 0);
    assert_int_equal(r.status, 400);
    check_no_path(&d, "blob digest mismatch", &r);
    http_result_free(&r);
    hostile(&d, "HEAD", "/v1/blobs/sha256:0000000000000000000000000000000000000000000000000000"
            "000000000000", NULL, "absent blob");
    snprintf(path, sizeof path, "/v1/studies/%s/inputs/fit", sid);
    hostile(&d, "PUT", path, "{\"blob\":\"sha256:00000000000000000000000000000000000000000000"
            "00000000000000000000\"}", "inputs: absent blob");
    hostile(&d, "GET", "/v1/studies/st_nothing", NULL, "absent study");
    /* A blob whose file went missing behind the database's back (an operator's mistake). */
    unsigned char *gone = make_npy(3, 3, UINT64_MAX, 0, &len);
    char gonedigest[80], file[700];
    test_put_blob(&d, gone, len, gonedigest);
    free(gone);
    snprintf(file, sizeof file, "%s/blobs/sha256/%.2s/%s", d.data_dir, gonedigest + 7,
             gonedigest + 7);
    assert_int_equal(unlink(file), 0);
    snprintf(path, sizeof path, "/v1/studies/%s/inputs/probe", sid);
    snprintf(body, sizeof body, "{\"blob\":\"%s\"}", gonedigest);
    hostile(&d, "PUT", path, body, "inputs: file gone");
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    snprintf(body, sizeof body, "{\"name\":\"gone\",\"jacobian\":{\"fit\":\"%s\"}}",
             gonedigest);
    hostile(&d, "POST", path, body, "dump: file gone");
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
    if (path_leaks)
        fail_msg("%d error bodies named a server path", path_leaks);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idempotency_race),
        cmocka_unit_test(test_inputs_frozen_with_candidates),
        cmocka_unit_test(test_inputs_must_be_finite),
        cmocka_unit_test(test_list_pages_bounded_in_bytes),
        cmocka_unit_test(test_no_server_path_in_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
