/* test_limits.c: the request limits of the config table as the handlers enforce them, over a real
 * store without workers (so that queued jobs stay queued): 429 resource_exhausted with
 * Retry-After past max_queued_jobs, 507 naming both numbers past max_job_memory, 413 for a blob
 * stream past max_blob (nothing stored), and a refused submission leaving no candidate. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <cmocka.h>

#include "api/api.h"
#include "storage/store.h"
#include "tests/support/npy.h"

struct fixture {
    char dir[64];
    struct store *st;
    struct api_env env;
    char sid[64];
};

static const char *no_value(void *t, const char *name)
{
    (void)t;
    (void)name;
    return NULL;
}

static int status_of(struct fixture *f, const char *method, const char *path, const char *body,
                     struct api_response *resp)
{
    static int transport;
    struct api_request req = { .method = method, .path = path, .request_id = "t",
                               .body = body ? body : "", .body_len = body ? strlen(body) : 0,
                               .header = no_value, .query = no_value, .transport = &transport,
                               .route = -1 };
    memset(resp, 0, sizeof *resp);
    api_dispatch(&f->env, &req, resp);
    return resp->status;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    struct tpv_err err;
    snprintf(f->dir, sizeof f->dir, "/tmp/tpvd-limits-XXXXXX");
    if (!mkdtemp(f->dir) || store_open(&f->st, f->dir, &err) != TPV_OK)
        return -1;
    f->env = (struct api_env){ .store = f->st, .version = "test",
                               .limits = { .max_body = 1 << 20, .max_blob = 4096,
                                           .max_job_memory = 64 << 10, .max_queued_jobs = 2,
                                           .max_wait_s = 60, .max_page_size = 100 } };
    struct api_response resp;
    const char *study = "{\"name\":\"lim\",\"noise_models\":[{\"name\":\"iso\","
                        "\"kind\":\"isotropic\",\"sigma\":0.1}]}";
    if (status_of(f, "POST", "/v1/studies", study, &resp) != 201)
        return -1;
    json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
    snprintf(f->sid, sizeof f->sid, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    api_response_free(&resp);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    store_close(f->st);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

/* Stores an (n, p) float64 dump as a blob; its digest into out. */
static void put_dump(struct fixture *f, uint64_t n, uint64_t p, double scale, char out[80])
{
    double *v = malloc(n * p * sizeof *v);
    for (uint64_t i = 0; i < n * p; i++)
        v[i] = scale * (double)(i % 17);
    uint64_t shape[2] = { n, p };
    size_t len;
    unsigned char *b = test_npy_f64(shape, 2, v, &len);
    free(v);
    struct store_blob_writer *w = NULL;
    struct tpv_err err;
    uint64_t size;
    bool existed;
    assert_int_equal(store_blob_writer_open(f->st, NULL, 1ull << 30, &w, &err), TPV_OK);
    assert_int_equal(store_blob_writer_write(w, b, len, &err), TPV_OK);
    assert_int_equal(store_blob_writer_commit(w, out, &size, &existed, &err), TPV_OK);
    store_blob_writer_free(w);
    free(b);
}

static json_t *error_of(const struct api_response *resp)
{
    json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
    json_t *e = json_incref(json_object_get(j, "error"));
    json_decref(j);
    return e;
}

static void test_queue_full_is_429(void **state)
{
    struct fixture *f = *state;
    char path[128], body[256], digest[80];
    struct api_response resp;
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", f->sid);
    for (int i = 0; i < 3; i++) {
        put_dump(f, 4, 8, 1.0 + i, digest);
        snprintf(body, sizeof body, "{\"name\":\"c%d\",\"jacobian\":{\"fit\":\"%s\"}}", i, digest);
        int st = status_of(f, "POST", path, body, &resp);
        if (i < 2) {
            assert_int_equal(st, 202);
        } else {
            assert_int_equal(st, 429);
            json_t *e = error_of(&resp);
            assert_string_equal(json_string_value(json_object_get(e, "code")),
                                "resource_exhausted");
            json_decref(e);
            bool retry = false;
            for (int h = 0; h < resp.nheaders; h++)
                retry |= strcmp(resp.headers[h].name, "Retry-After") == 0 &&
                         atoi(resp.headers[h].value) > 0;
            assert_true(retry);
        }
        api_response_free(&resp);
    }
    struct store_stats s;
    struct tpv_err err;
    assert_int_equal(store_stats(f->st, &s, &err), TPV_OK);
    assert_int_equal(s.candidates, 2); /* the refused one left nothing */
    assert_int_equal(s.jobs_queued, 2);
}

static void test_job_memory_is_507(void **state)
{
    struct fixture *f = *state;
    char path[128], body[256], digest[80];
    struct api_response resp;
    /* Label noise needs the (n x n) Gram of the fit dump: n = 512 is 2 MiB, over the 64 KiB
     * job memory limit (the dump itself is 16 KiB). */
    const char *study = "{\"name\":\"label\",\"noise_models\":[{\"name\":\"lab\","
                        "\"kind\":\"label\",\"sigma\":0.1}]}";
    assert_int_equal(status_of(f, "POST", "/v1/studies", study, &resp), 201);
    json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates",
             json_string_value(json_object_get(j, "id")));
    json_decref(j);
    api_response_free(&resp);
    put_dump(f, 512, 4, 0.5, digest);
    snprintf(body, sizeof body, "{\"name\":\"big\",\"jacobian\":{\"fit\":\"%s\"}}", digest);
    assert_int_equal(status_of(f, "POST", path, body, &resp), 507);
    json_t *e = error_of(&resp);
    assert_string_equal(json_string_value(json_object_get(e, "code")), "resource_exhausted");
    const char *msg = json_string_value(json_object_get(e, "message"));
    /* Both numbers: what the job needs and the limit. */
    assert_non_null(strstr(msg, "65536"));
    int numbers = 0;
    for (const char *p = msg; *p; p++)
        if ((p == msg || p[-1] < '0' || p[-1] > '9') && *p >= '0' && *p <= '9')
            numbers++;
    assert_true(numbers >= 2);
    json_decref(e);
    api_response_free(&resp);
    struct store_stats s;
    struct tpv_err err;
    assert_int_equal(store_stats(f->st, &s, &err), TPV_OK);
    assert_int_equal(s.candidates, 0);
}

static void test_blob_over_limit_is_413(void **state)
{
    struct fixture *f = *state;
    static int transport;
    struct api_request req = { .method = "PUT", .path = "/v1/blobs", .request_id = "t",
                               .header = no_value, .query = no_value, .transport = &transport,
                               .route = -1 };
    struct api_response resp = { 0 };
    assert_true(api_stream_begin(&f->env, &req, &resp));
    assert_int_equal(resp.status, 0);
    char chunk[1000];
    memset(chunk, 'x', sizeof chunk);
    int rc = TPV_OK;
    for (int i = 0; i < 10 && rc == TPV_OK; i++)
        rc = api_stream_write(&req, chunk, sizeof chunk, &resp);
    assert_int_equal(rc, TPV_ETOOLARGE);
    assert_int_equal(resp.status, 413);
    api_response_free(&resp);
    api_stream_end(&req);
    assert_int_equal(store_blob_temp_count(f->st), 0);
    struct store_stats s;
    struct tpv_err err;
    assert_int_equal(store_stats(f->st, &s, &err), TPV_OK);
    assert_int_equal(s.blobs, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_queue_full_is_429, setup, teardown),
        cmocka_unit_test_setup_teardown(test_job_memory_is_507, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blob_over_limit_is_413, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
