/* test_auth.c: API tokens and access control without sockets: the store's token functions
 * (unique names, lookup by hash, list without secrets, revoke, a shared handle beside the
 * daemon's locked one), token generation and hashing, api_authorize for every role against the
 * route table (401 with WWW-Authenticate, 403, open routes, open development mode ending when a
 * token appears) and 415 for JSON routes given another media type. */
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

#include <dlfcn.h>
#include <openssl/evp.h>

#include "api/api.h"
#include "api/render.h"
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

struct fake {
    const char *authorization;
    const char *content_type;
};

static const char *fake_header(void *t, const char *name)
{
    struct fake *f = t;
    if (strcasecmp(name, "Authorization") == 0)
        return f->authorization;
    if (strcasecmp(name, "Content-Type") == 0)
        return f->content_type;
    return NULL;
}

static const char *no_query(void *t, const char *name)
{
    (void)t;
    (void)name;
    return NULL;
}

struct fixture {
    char dir[64];
    struct store *st;
    struct api_auth *auth;
    struct api_env env;
    char read_tok[API_TOKEN_MAX], write_tok[API_TOKEN_MAX], admin_tok[API_TOKEN_MAX];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    struct tpv_err err;
    snprintf(f->dir, sizeof f->dir, "/tmp/tpvd-auth-XXXXXX");
    if (!mkdtemp(f->dir) || store_open(&f->st, f->dir, &err) != TPV_OK)
        return -1;
    if (api_auth_new(&f->auth, f->st, true) != TPV_OK)
        return -1;
    f->env = (struct api_env){ .store = f->st, .version = "test", .auth = f->auth,
                               .limits = { .max_body = 1 << 20, .max_blob = 1 << 20,
                                           .max_job_memory = 1 << 30, .max_queued_jobs = 100,
                                           .max_wait_s = 60, .max_page_size = 100 } };
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    api_auth_free(f->auth);
    store_close(f->st);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

static void make_token(struct fixture *f, const char *name, const char *role, char *tok)
{
    char hex[65];
    struct tpv_err err;
    assert_int_equal(api_token_generate(tok), TPV_OK);
    assert_int_equal(api_token_hash(tok, hex), TPV_OK);
    assert_int_equal(store_token_create(f->st, name, role, hex, &err), TPV_OK);
}

/* api_authorize on METHOD PATH with an Authorization value (NULL: none); returns the status
 * (0 when allowed) and checks the error shape. */
static int authorize(struct fixture *f, const char *method, const char *path, const char *authz)
{
    struct fake t = { .authorization = authz };
    struct api_request req = { .method = method, .path = path, .request_id = "t",
                               .header = fake_header, .query = no_query, .transport = &t,
                               .route = -1 };
    struct api_response resp = { 0 };
    bool ok = api_authorize(&f->env, &req, &resp);
    int status = ok ? 0 : resp.status;
    assert_true(ok == (resp.status == 0));
    if (!ok) {
        json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
        const char *code = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
        assert_string_equal(code, status == 401 ? "unauthenticated" : "permission_denied");
        bool www = false;
        for (int i = 0; i < resp.nheaders; i++)
            www |= strcmp(resp.headers[i].name, "WWW-Authenticate") == 0 &&
                   strncmp(resp.headers[i].value, "Bearer", 6) == 0;
        assert_true(www == (status == 401));
        json_decref(j);
    }
    api_response_free(&resp);
    return status;
}

static void test_store_tokens(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    int64_t n = -1;
    assert_int_equal(store_token_count(f->st, &n, &err), TPV_OK);
    assert_int_equal(n, 0);
    char tok[API_TOKEN_MAX], hex[65];
    make_token(f, "ci", "write", tok);
    /* Format: tpv_ + 43 base64url characters. */
    assert_int_equal(strlen(tok), 47);
    assert_int_equal(strncmp(tok, "tpv_", 4), 0);
    assert_int_equal(strspn(tok + 4, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789-_"), 43);
    char other[API_TOKEN_MAX];
    assert_int_equal(api_token_generate(other), TPV_OK);
    assert_string_not_equal(tok, other);

    /* Names are unique; bad names and roles are refused naming the field. */
    api_token_hash(other, hex);
    assert_int_equal(store_token_create(f->st, "ci", "read", hex, &err), TPV_EEXIST);
    assert_string_equal(err.field, "name");
    assert_int_equal(store_token_create(f->st, "bad name", "read", hex, &err), TPV_EINVAL);
    assert_string_equal(err.field, "name");
    assert_int_equal(store_token_create(f->st, "ok", "root", hex, &err), TPV_EINVAL);
    assert_string_equal(err.field, "role");

    /* Found by hash; an unknown hash is not found. */
    struct store_token t;
    api_token_hash(tok, hex);
    assert_int_equal(store_token_find(f->st, hex, &t, &err), TPV_OK);
    assert_string_equal(t.name, "ci");
    assert_string_equal(t.role, "write");
    assert_string_equal(t.hash, hex);
    assert_false(t.revoked);
    api_token_hash(other, hex);
    assert_int_equal(store_token_find(f->st, hex, &t, &err), TPV_ENOTFOUND);

    /* A shared handle (what `tpvd token` uses) opens beside this locked one and sees the same
     * rows; its writes are seen here. */
    struct store *shared = NULL;
    struct store_options so = { .pool_size = 1, .shared = true };
    assert_int_equal(store_open_with(&shared, f->dir, &so, &err), TPV_OK);
    assert_int_equal(store_token_create(shared, "reader", "read", hex, &err), TPV_OK);
    assert_int_equal(store_token_revoke(shared, "ci", &err), TPV_OK);
    assert_int_equal(store_token_revoke(shared, "ci", &err), TPV_EPRECONDITION);
    assert_int_equal(store_token_revoke(shared, "nobody", &err), TPV_ENOTFOUND);
    store_close(shared);
    /* Without `shared` the folder lock still refuses a second opener. */
    assert_int_equal(store_open(&shared, f->dir, &err), TPV_EPRECONDITION);

    api_token_hash(tok, hex);
    assert_int_equal(store_token_find(f->st, hex, &t, &err), TPV_OK);
    assert_true(t.revoked);
    struct store_token_row *rows = NULL;
    size_t nrows = 0;
    assert_int_equal(store_token_list(f->st, &rows, &nrows, &err), TPV_OK);
    json_t *list = api_token_list_json(rows, nrows);
    free(rows);
    assert_non_null(list);
    json_t *items = json_incref(json_object_get(list, "items"));
    json_decref(list);
    assert_int_equal(json_array_size(items), 2);
    char *text = json_dumps(items, 0);
    assert_null(strstr(text, hex)); /* never the hashes */
    assert_non_null(strstr(text, "\"name\": \"ci\"") ? "" : strstr(text, "\"name\":\"ci\""));
    free(text);
    assert_true(json_is_string(json_object_get(json_array_get(items, 0), "revoked_at")));
    assert_true(json_is_null(json_object_get(json_array_get(items, 1), "revoked_at")));
    json_decref(items);
    assert_int_equal(store_token_count(f->st, &n, &err), TPV_OK);
    assert_int_equal(n, 2);
}

static void test_roles(void **state)
{
    struct fixture *f = *state;
    /* No token yet, open access allowed: everything passes. */
    assert_true(api_auth_is_open(f->auth));
    assert_int_equal(authorize(f, "POST", "/v1/studies", NULL), 0);

    make_token(f, "r", "read", f->read_tok);
    make_token(f, "w", "write", f->write_tok);
    make_token(f, "a", "admin", f->admin_tok);
    /* Open mode notices the new tokens within a second. */
    sleep(1);
    usleep(100 * 1000);
    assert_false(api_auth_is_open(f->auth));

    char r[96], w[96], a[96];
    snprintf(r, sizeof r, "Bearer %s", f->read_tok);
    snprintf(w, sizeof w, "bearer  %s ", f->write_tok); /* scheme is case-insensitive */
    snprintf(a, sizeof a, "Bearer %s", f->admin_tok);

    /* Open routes. */
    assert_int_equal(authorize(f, "GET", "/healthz", NULL), 0);
    assert_int_equal(authorize(f, "GET", "/readyz", NULL), 0);
    assert_int_equal(authorize(f, "GET", "/openapi.json", NULL), 0);
    /* /metrics and unknown paths need read. */
    assert_int_equal(authorize(f, "GET", "/metrics", NULL), 401);
    assert_int_equal(authorize(f, "GET", "/metrics", r), 0);
    assert_int_equal(authorize(f, "GET", "/v1/nothing-here", NULL), 401);
    /* Bad tokens and schemes. */
    assert_int_equal(authorize(f, "GET", "/v1/studies", "Bearer tpv_nope"), 401);
    assert_int_equal(authorize(f, "GET", "/v1/studies", "Bearer "), 401);
    assert_int_equal(authorize(f, "GET", "/v1/studies", "Basic dXNlcjpwYXNz"), 401);
    assert_int_equal(authorize(f, "GET", "/v1/studies", f->read_tok), 401); /* no scheme */
    /* read: GET/HEAD only. */
    assert_int_equal(authorize(f, "GET", "/v1/studies", r), 0);
    assert_int_equal(authorize(f, "HEAD", "/v1/blobs/sha256:00", r), 0);
    assert_int_equal(authorize(f, "GET", "/v1/studies/st_1/ranking", r), 0);
    assert_int_equal(authorize(f, "POST", "/v1/studies", r), 403);
    assert_int_equal(authorize(f, "PUT", "/v1/blobs", r), 403);
    assert_int_equal(authorize(f, "DELETE", "/v1/jobs/jb_1", r), 403);
    /* write and admin: everything. */
    const char *writes[][2] = { { "POST", "/v1/studies" }, { "PUT", "/v1/blobs" },
                                { "PUT", "/v1/studies/s/inputs/fit" },
                                { "POST", "/v1/studies/s/candidates" },
                                { "POST", "/v1/studies/s/candidates/c/jbr" },
                                { "DELETE", "/v1/jobs/j" }, { "GET", "/v1/jobs/j" } };
    for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
        assert_int_equal(authorize(f, writes[i][0], writes[i][1], w), 0);
        assert_int_equal(authorize(f, writes[i][0], writes[i][1], a), 0);
    }
    /* Revocation is seen once the cached entry expires (at most a second). */
    struct tpv_err err;
    assert_int_equal(store_token_revoke(f->st, "w", &err), TPV_OK);
    sleep(1);
    usleep(100 * 1000);
    assert_int_equal(authorize(f, "GET", "/v1/studies", w), 401);
    assert_int_equal(authorize(f, "GET", "/v1/studies", r), 0);
}

/* A SHA-256 failure refuses the token: never a lookup with an undefined hash (the stack could
 * hold the hash of the token checked before it, which the cache would accept). */
static void test_digest_failure_refuses(void **state)
{
    struct fixture *f = *state;
    make_token(f, "a", "admin", f->admin_tok);
    sleep(1);
    usleep(100 * 1000);
    char a[96], hex[65];
    snprintf(a, sizeof a, "Bearer %s", f->admin_tok);
    assert_int_equal(authorize(f, "POST", "/v1/studies", a), 0); /* cached now */
    digest_fails = true;
    assert_int_equal(authorize(f, "POST", "/v1/studies", a), 401);
    assert_int_equal(api_token_hash(f->admin_tok, hex), TPV_EINTERNAL);
    digest_fails = false;
    assert_int_equal(authorize(f, "POST", "/v1/studies", a), 0);
}

static void test_closed_without_tokens(void **state)
{
    struct fixture *f = *state;
    /* Not open (non-loopback without --insecure-no-auth would not even start; a checker created
     * closed refuses everything but the open routes). */
    struct api_auth *closed = NULL;
    assert_int_equal(api_auth_new(&closed, f->st, false), TPV_OK);
    struct api_auth *keep = f->env.auth;
    f->env.auth = closed;
    assert_false(api_auth_is_open(closed));
    assert_int_equal(authorize(f, "GET", "/v1/studies", NULL), 401);
    assert_int_equal(authorize(f, "GET", "/healthz", NULL), 0);
    f->env.auth = keep;
    api_auth_free(closed);
    api_auth_free(NULL);
}

static void test_media_type(void **state)
{
    struct fixture *f = *state;
    const char *types[][2] = { { "text/plain", "415" },
                               { "application/x-www-form-urlencoded", "415" },
                               { "application/jsonx", "415" },
                               { "application/json", "201" },
                               { "Application/JSON; charset=utf-8", "201" },
                               { NULL, "201" } };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char body[160];
        snprintf(body, sizeof body, "{\"name\":\"s%zu\",\"noise_models\":[{\"name\":\"iso\","
                 "\"kind\":\"isotropic\",\"sigma\":0.1}]}", i);
        struct fake t = { .content_type = types[i][0] };
        struct api_request req = { .method = "POST", .path = "/v1/studies", .request_id = "t",
                                   .body = body, .body_len = strlen(body),
                                   .header = fake_header, .query = no_query, .transport = &t,
                                   .route = -1 };
        struct api_response resp = { 0 };
        api_dispatch(&f->env, &req, &resp);
        assert_int_equal(resp.status, atoi(types[i][1]));
        if (resp.status == 415) {
            json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
            json_t *e = json_object_get(j, "error");
            assert_string_equal(json_string_value(json_object_get(e, "code")),
                                "unsupported_media_type");
            assert_string_equal(
                json_string_value(json_object_get(json_object_get(e, "details"), "field")),
                "Content-Type");
            json_decref(j);
        }
        api_response_free(&resp);
    }
}

/* The OpenAPI document says how to authenticate and which role each operation needs. */
static void test_openapi_security(void **state)
{
    (void)state;
    json_t *doc = api_openapi_document();
    json_t *scheme = json_object_get(json_object_get(json_object_get(doc, "components"),
                                                     "securitySchemes"), "bearer");
    assert_string_equal(json_string_value(json_object_get(scheme, "scheme")), "bearer");
    json_t *paths = json_object_get(doc, "paths");
    json_t *health = json_object_get(json_object_get(paths, "/healthz"), "get");
    assert_int_equal(json_array_size(json_object_get(health, "security")), 0);
    assert_non_null(json_object_get(health, "security"));
    json_t *create = json_object_get(json_object_get(paths, "/v1/studies"), "post");
    assert_string_equal(json_string_value(json_object_get(create, "x-tpv-role")), "write");
    json_t *responses = json_object_get(create, "responses");
    assert_non_null(json_object_get(responses, "401"));
    assert_non_null(json_object_get(responses, "403"));
    assert_non_null(json_object_get(responses, "415"));
    json_t *metrics = json_object_get(json_object_get(paths, "/metrics"), "get");
    assert_string_equal(json_string_value(json_object_get(metrics, "x-tpv-role")), "read");
    json_decref(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_store_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_closed_without_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_digest_failure_refuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_media_type, setup, teardown),
        cmocka_unit_test(test_openapi_security),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
