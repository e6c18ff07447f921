/* test_service.c: the REST contract of DESIGN.md section 5 against the real tpvd: blobs -> study ->
 * inputs -> candidates -> jobs -> ranking -> ETag/304 -> long-poll woken by a version change,
 * idempotency, 400s naming the field, /metrics, /openapi.json, and SIGTERM.
 *
 * Scores come from the core: Jacobian dumps are scored for real, every (noise model, split) score
 * must exist and equal its closed form computed here (isotropic sigma^2/n ||J||_F^2, sgd
 * lr/(2 batch_size) ||J||_F^2/n); a job that fails, whatever its code, fails the test. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <curl/curl.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"
#include "tests/support/npy.h"
#include "tests/support/service_steps.h"

/* Uploads bytes; returns the digest (static buffer copy in out). */
static void upload(const struct test_daemon *d, const void *buf, size_t len, char out[80],
                   long want)
{
    char url[256];
    struct http_result r;
    snprintf(url, sizeof url, "%s/v1/blobs", d->base_url);
    assert_int_equal(http_request("PUT", url, buf, len, NULL, &r), 0);
    if (r.status != want) {
        test_daemon_dump_log(d);
        fail_msg("PUT /v1/blobs: %ld %s", r.status, r.body);
    }
    snprintf(out, 80, "%s", http_json_str(&r, "digest"));
    assert_int_equal(json_integer_value(json_object_get(r.json, "size")), (json_int_t)len);
    http_result_free(&r);
}

/* A (n, p) dump with entries scale * (i + 2j + 1) / 10; its squared Frobenius norm in *fro2. */
static unsigned char *make_dump(uint64_t n, uint64_t p, double scale, size_t *len, double *fro2)
{
    double *v = malloc(n * p * sizeof *v);
    *fro2 = 0;
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t j = 0; j < p; j++) {
            v[i * p + j] = scale * (double)(i + 2 * j + 1) / 10.0;
            *fro2 += v[i * p + j] * v[i * p + j];
        }
    uint64_t shape[2] = { n, p };
    unsigned char *b = test_npy_f64(shape, 2, v, len);
    free(v);
    return b;
}

struct longpoll {
    const struct test_daemon *d;
    char path[300];
    char etag[64];
    long status;
    double seconds;
    json_int_t version;
};

static void *longpoll_main(void *arg)
{
    struct longpoll *lp = arg;
    char hdr[96];
    snprintf(hdr, sizeof hdr, "If-None-Match: %s", lp->etag);
    const char *hdrs[] = { hdr, NULL };
    struct http_result r;
    double t0 = test_now_s();
    if (http_json(lp->d->base_url, "GET", lp->path, NULL, hdrs, &r) == 0) {
        lp->status = r.status;
        if (r.json)
            lp->version = json_integer_value(json_object_get(r.json, "version"));
        http_result_free(&r);
    }
    lp->seconds = test_now_s() - t0;
    return NULL;
}

/* The scores of a dump candidate under the study of test_full_flow (iso sigma 0.1, sgd lr 0.1
 * batch 32): exactly one score per (noise model, split), each at its closed form from the mean
 * squared Frobenius norm per sample of the fit and probe dumps. */
static void check_dump_scores(const json_t *scores, double fro_per_n_fit, double fro_per_n_probe)
{
    static const struct {
        const char *noise, *split;
        double factor; /* TPV = factor * ||J||_F^2 / n */
    } want[] = {
        { "iso", "fit", 0.1 * 0.1 }, { "iso", "probe", 0.1 * 0.1 },
        { "sgd", "fit", 0.1 / (2 * 32) }, { "sgd", "probe", 0.1 / (2 * 32) },
    };
    size_t nwant = sizeof want / sizeof want[0];
    if (json_array_size(scores) != nwant)
        fail_msg("want %zu scores, got %zu", nwant, json_array_size(scores));
    for (size_t w = 0; w < nwant; w++) {
        const json_t *found = NULL;
        size_t i;
        json_t *s;
        json_array_foreach(scores, i, s) {
            if (strcmp(json_string_value(json_object_get(s, "noise")), want[w].noise) == 0 &&
                strcmp(json_string_value(json_object_get(s, "split")), want[w].split) == 0) {
                assert_null(found); /* once */
                found = s;
            }
        }
        if (!found)
            fail_msg("no %s/%s score", want[w].noise, want[w].split);
        double fro = strcmp(want[w].split, "fit") == 0 ? fro_per_n_fit : fro_per_n_probe;
        double ref = want[w].factor * fro;
        double v = json_number_value(json_object_get(found, "value"));
        if (!(fabs(v - ref) <= 1e-9 * ref))
            fail_msg("%s/%s: %.17g, want %.17g", want[w].noise, want[w].split, v, ref);
    }
}

static void test_full_flow(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char buf[512], path[256];
    assert_int_equal(test_daemon_start(&d, args), 0);

    /* ---- blobs ---- */
    size_t lf, lpr, lf2;
    double fro_fit, fro_probe, fro_fit2;
    unsigned char *fit = make_dump(4, 3, 1.0, &lf, &fro_fit);
    unsigned char *probe = make_dump(3, 3, 0.5, &lpr, &fro_probe);
    unsigned char *fit2 = make_dump(4, 3, 2.0, &lf2, &fro_fit2);
    char dfit[80], dprobe[80], dfit2[80];
    upload(&d, fit, lf, dfit, 201);
    upload(&d, fit, lf, dfit, 200); /* the same bytes again */
    upload(&d, probe, lpr, dprobe, 201);
    upload(&d, fit2, lf2, dfit2, 201);
    snprintf(path, sizeof path, "/v1/blobs/%s", dfit);
    assert_int_equal(http_json(d.base_url, "HEAD", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    char url[400];
    snprintf(url, sizeof url, "%s/v1/blobs/%s", d.base_url, dprobe);
    assert_int_equal(http_request("PUT", url, fit, lf, NULL, &r), 0); /* wrong bytes */
    test_expect_error(&r, 400, "invalid_argument", "digest");
    http_result_free(&r);
    assert_int_equal(http_request("PUT", url, probe, lpr, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    assert_int_equal(http_json(d.base_url, "HEAD",
        "/v1/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
        NULL, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    http_result_free(&r);
    snprintf(buf, sizeof buf, "%s/blobs/tmp", d.data_dir);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s')\"", buf);
    assert_int_equal(system(cmd), 0); /* no temporaries left behind */

    /* ---- study ---- */
    const char *bad[][3] = {
        { "{\"name\":", "body", "invalid_argument" },
        { "[1]", "body", "invalid_argument" },
        { "{\"noise_models\":[{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1}]}", "name", NULL },
        { "{\"name\":\"s\",\"noise_models\":[{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":-1}]}",
          "noise_models[0].sigma", NULL },
        { "{\"name\":\"s\",\"noise_models\":[{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1}],"
          "\"rank_by\":\"zz\"}", "rank_by", NULL },
        { "{\"name\":\"s\",\"colour\":1,\"noise_models\":[]}", "colour", NULL },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(http_json(d.base_url, "POST", "/v1/studies", bad[i][0], NULL, &r), 0);
        test_expect_error(&r, 400, "invalid_argument", bad[i][1]);
        http_result_free(&r);
    }
    const char *study_body =
        "{\"name\":\"sweep\",\"noise_models\":[{\"name\":\"iso\",\"kind\":\"isotropic\","
        "\"sigma\":0.1},{\"name\":\"sgd\",\"kind\":\"sgd\",\"lr\":0.1,\"batch_size\":32}],"
        "\"rank_by\":\"iso\",\"metadata\":{\"team\":\"x\"}}";
    const char *idem[] = { "Idempotency-Key: study-1", NULL };
    assert_int_equal(http_json(d.base_url, "POST", "/v1/studies", study_body, idem, &r), 0);
    assert_int_equal(r.status, 201);
    char sid[64], loc[160];
    snprintf(sid, sizeof sid, "%s", http_json_str(&r, "id"));
    assert_non_null(http_result_header(&r, "Location", loc, sizeof loc));
    char *first_body = strdup(r.body);
    http_result_free(&r);
    assert_int_equal(http_json(d.base_url, "POST", "/v1/studies", study_body, idem, &r), 0);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body, first_body); /* the retry gets the first answer */
    free(first_body);
    http_result_free(&r);
    assert_int_equal(http_json(d.base_url, "GET", loc, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_json_str(&r, "rank_by"), "iso");
    http_result_free(&r);

    /* Inputs: the blob must exist and be a tensor; n is its first dimension. */
    snprintf(path, sizeof path, "/v1/studies/%s/inputs/fit", sid);
    assert_int_equal(http_json(d.base_url, "PUT", path, "{\"blob\":\"sha256:00\"}", NULL, &r), 0);
    test_expect_error(&r, 400, "invalid_argument", "blob");
    http_result_free(&r);
    snprintf(buf, sizeof buf, "{\"blob\":\"%s\"}", dfit);
    assert_int_equal(http_json(d.base_url, "PUT", path, buf, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_integer_value(json_object_get(
        json_object_get(json_object_get(r.json, "inputs"), "fit"), "n")), 4);
    http_result_free(&r);

    /* ---- ranking before any candidate: fit split, empty; probe is a 409 ---- */
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?split=probe", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    test_expect_error(&r, 409, "failed_precondition", "split");
    http_result_free(&r);

    /* ---- candidates ---- */
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    const char *badc[][2] = {
        { "{\"name\":\"x\"}", "model" },
        { "{\"name\":\"x\",\"jacobian\":{\"fit\":\"sha256:zz\"}}", "jacobian.fit" },
        { "{\"name\":\"x\",\"jacobian\":{}}", "jacobian.fit" },
        { "{\"name\":\"x\",\"metadata\":{\"train_loss\":\"low\"},\"jacobian\":{}}",
          "metadata.train_loss" },
        { "{\"name\":\"x\",\"jacobian\":{\"fit\":\"sha256:0000000000000000000000000000000000000"
          "000000000000000000000000000\"}}", "jacobian.fit" },
        { "{\"name\":\"x\",\"jacobian\":{\"fit\":\"x\",\"extra\":1}}", "jacobian.extra" },
    };
    for (size_t i = 0; i < sizeof badc / sizeof badc[0]; i++) {
        assert_int_equal(http_json(d.base_url, "POST", path, badc[i][0], NULL, &r), 0);
        test_expect_error(&r, 400, "invalid_argument", badc[i][1]);
        http_result_free(&r);
    }
    /* A blob that is not a tensor: the core's check answers 400 naming the field. */
    char dbad[80];
    upload(&d, "not a tensor at all", 19, dbad, 201);
    snprintf(buf, sizeof buf, "{\"name\":\"junk\",\"jacobian\":{\"fit\":\"%s\"}}", dbad);
    assert_int_equal(http_json(d.base_url, "POST", path, buf, NULL, &r), 0);
    test_expect_error(&r, 400, "invalid_argument", "jacobian.fit");
    assert_null(strstr(r.body, d.data_dir)); /* no server paths in messages */
    http_result_free(&r);

    char jids[3][64], cids[3][64];
    const char *dumps[3] = { dfit, dfit2, dfit };
    for (int i = 0; i < 3; i++) {
        snprintf(buf, sizeof buf,
                 "{\"name\":\"c%d\",\"metadata\":{\"train_loss\":%g,\"epoch\":%d,\"run\":\"r1\"},"
                 "\"jacobian\":{\"fit\":\"%s\",\"probe\":\"%s\"}}", i, i == 2 ? 0.9 : 0.01, i + 1,
                 dumps[i], dprobe);
        char key[64];
        snprintf(key, sizeof key, "Idempotency-Key: cand-%d", i);
        const char *h[] = { key, NULL };
        assert_int_equal(http_json(d.base_url, "POST", path, buf, h, &r), 0);
        if (r.status != 202) {
            test_daemon_dump_log(&d);
            fail_msg("candidate %d: %ld %s", i, r.status, r.body);
        }
        assert_non_null(http_result_header(&r, "Location", loc, sizeof loc));
        snprintf(jids[i], 64, "%s", http_json_str(&r, "job.id"));
        snprintf(cids[i], 64, "%s", http_json_str(&r, "candidate.id"));
        char *body0 = strdup(r.body);
        http_result_free(&r);
        if (i == 0) { /* retry with the same key: same answer, no second candidate */
            assert_int_equal(http_json(d.base_url, "POST", path, buf, h, &r), 0);
            assert_int_equal(r.status, 202);
            assert_string_equal(r.body, body0);
            http_result_free(&r);
            /* same key, other body: refused */
            assert_int_equal(http_json(d.base_url, "POST", path, "{\"name\":\"zz\"}", h, &r), 0);
            test_expect_error(&r, 409, "failed_precondition", "Idempotency-Key");
            http_result_free(&r);
        }
        free(body0);
    }
    snprintf(buf, sizeof buf, "{\"name\":\"c0\",\"jacobian\":{\"fit\":\"%s\"}}", dfit);
    assert_int_equal(http_json(d.base_url, "POST", path, buf, NULL, &r), 0);
    test_expect_error(&r, 409, "already_exists", "name");
    http_result_free(&r);

    /* ---- jobs: every one succeeds (an "unimplemented" failure is a regression) ---- */
    for (int i = 0; i < 3; i++) {
        test_wait_job(&d, jids[i], 20, &r);
        if (strcmp(http_json_str(&r, "state"), "succeeded") != 0) {
            test_daemon_dump_log(&d);
            fail_msg("job %d: %s", i, r.body);
        }
        assert_true(json_real_value(json_object_get(r.json, "progress")) == 1.0);
        http_result_free(&r);
    }
    snprintf(path, sizeof path, "/v1/jobs/%s", jids[0]);
    assert_int_equal(http_json(d.base_url, "DELETE", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 409); /* already terminal */
    http_result_free(&r);
    assert_int_equal(http_json(d.base_url, "GET", "/v1/jobs/jb_nope", NULL, NULL, &r), 0);
    test_expect_error(&r, 404, "not_found", "job_id");
    http_result_free(&r);

    /* Candidate with its scores: every (noise model, split) once, at its closed form. */
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", sid, cids[0]);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_json_str(&r, "state"), "succeeded");
    check_dump_scores(json_object_get(r.json, "scores"), fro_fit / 4, fro_probe / 3);
    http_result_free(&r);

    /* List with pagination: 3 candidates, pages of 2. */
    snprintf(path, sizeof path, "/v1/studies/%s/candidates?page_size=2", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(json_array_size(json_object_get(r.json, "items")), 2);
    const char *tok = http_json_str(&r, "next_page_token");
    assert_non_null(tok);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates?page_size=2&page_token=%s", sid, tok);
    http_result_free(&r);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(json_array_size(json_object_get(r.json, "items")), 1);
    assert_true(json_is_null(json_object_get(r.json, "next_page_token")));
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates?page_token=garbage", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    test_expect_error(&r, 400, "invalid_argument", "page_token");
    http_result_free(&r);

    /* ---- ranking: probe is the default now that dumps brought a probe set ---- */
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?max_train_loss=0.5", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_json_str(&r, "split"), "probe");
    char etag[64];
    assert_non_null(http_result_header(&r, "ETag", etag, sizeof etag));
    {
        json_t *items = json_object_get(r.json, "items");
        assert_int_equal(json_array_size(items), 2); /* c2 is excluded (train_loss 0.9) */
        json_t *ex = json_object_get(r.json, "excluded");
        assert_int_equal(json_array_size(ex), 1);
        assert_string_equal(json_string_value(json_array_get(
            json_object_get(json_array_get(ex, 0), "flags"), 0)), "underfit");
        double v0 = json_number_value(json_object_get(json_array_get(items, 0), "value"));
        double v1 = json_number_value(json_object_get(json_array_get(items, 1), "value"));
        assert_true(v0 <= v1);
        assert_int_equal(json_array_size(json_object_get(r.json, "trajectories")), 1);
        assert_int_equal(json_array_size(json_object_get(r.json, "pending")), 0);
    }
    http_result_free(&r);

    /* If-None-Match with the current ETag: 304, body-less. */
    char inm[96];
    snprintf(inm, sizeof inm, "If-None-Match: %s", etag);
    const char *hinm[] = { inm, NULL };
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, hinm, &r), 0);
    assert_int_equal(r.status, 304);
    assert_int_equal(r.body_len, 0);
    http_result_free(&r);

    /* wait= with nothing changing: 304 after about that long. */
    struct longpoll lp = { .d = &d };
    snprintf(lp.path, sizeof lp.path, "%s&wait=1", path);
    snprintf(lp.etag, sizeof lp.etag, "%s", etag);
    longpoll_main(&lp);
    assert_int_equal(lp.status, 304);
    assert_true(lp.seconds >= 0.9 && lp.seconds < 5);

    /* wait= woken by a version change: a new candidate arrives while the request is held. */
    snprintf(lp.path, sizeof lp.path, "%s&wait=30", path);
    pthread_t t;
    pthread_create(&t, NULL, longpoll_main, &lp);
    usleep(300 * 1000);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    snprintf(buf, sizeof buf, "{\"name\":\"late\",\"jacobian\":{\"fit\":\"%s\"}}", dfit2);
    double t_submit = test_now_s();
    assert_int_equal(http_json(d.base_url, "POST", path, buf, NULL, &r), 0);
    assert_int_equal(r.status, 202);
    http_result_free(&r);
    pthread_join(t, NULL);
    assert_int_equal(lp.status, 200);
    assert_true(lp.seconds < 10);
    assert_true(test_now_s() - t_submit < 5);

    /* ---- service endpoints ---- */
    assert_int_equal(http_json(d.base_url, "GET", "/metrics", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "tpvd_http_requests_total{method=\"POST\",route=\"/v1/studies\""));
    assert_non_null(strstr(r.body, "tpvd_job_duration_seconds_bucket"));
    assert_non_null(strstr(r.body, "tpvd_queue_depth"));
    assert_non_null(strstr(r.body, "tpvd_blob_bytes"));
    http_result_free(&r);
    assert_int_equal(http_json(d.base_url, "GET", "/openapi.json", NULL, NULL, &r), 0);
    assert_string_equal(http_json_str(&r, "openapi"), "3.1.0");
    http_result_free(&r);
    assert_int_equal(http_json(d.base_url, "GET", "/readyz", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    http_result_free(&r);

    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    /* running + terminal for each of the first three */
    assert_true(test_daemon_log_count(&d, "job id=", false) >= 6);
    free(fit);
    free(fit2);
    free(probe);
    test_daemon_cleanup(&d);
}

/* Jacobian candidates sent without a probe dump: the study has no probe split, so the default
 * ranking is the fit split and lists them (a stored "probe": null once made the study believe it
 * had probe dumps: split probe, every candidate pending, items []). */
static void test_fit_only_dumps_rank_on_fit(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char buf[512], path[256], sid[64], jid[2][64], dig[2][80];
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "fit-only", sid);
    for (int i = 0; i < 2; i++) {
        size_t len;
        double fro;
        unsigned char *b = make_dump(4, 3, 1.0 + i, &len, &fro);
        upload(&d, b, len, dig[i], 201);
        free(b);
        snprintf(buf, sizeof buf, "{\"name\":\"c%d\",\"jacobian\":{\"fit\":\"%s\"}}", i, dig[i]);
        test_submit(&d, sid, buf, NULL, jid[i]);
    }
    for (int i = 0; i < 2; i++) {
        test_wait_job(&d, jid[i], 20, &r);
        assert_string_equal(http_json_str(&r, "state"), "succeeded");
        http_result_free(&r);
    }
    snprintf(path, sizeof path, "/v1/studies/%s/ranking", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_json_str(&r, "split"), "fit");
    assert_int_equal(json_array_size(json_object_get(r.json, "items")), 2);
    assert_int_equal(json_array_size(json_object_get(r.json, "pending")), 0);
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/ranking?split=probe", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    test_expect_error(&r, 409, "failed_precondition", "split");
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* One rule per value, checked at submission: JBR confidence in [0, 1) and integer batch sizes
 * (JBR's and sgd's), duplicate keys refused in spec blobs as in request bodies. */
static void test_one_rule_at_submission(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char buf[512], path[256], sid[64], jid[64], dig[80], dspec[80], dx[80];
    assert_int_equal(test_daemon_start(&d, args), 0);

    const char *sgd = "{\"name\":\"sgd\",\"noise_models\":[{\"name\":\"s\",\"kind\":\"sgd\","
                      "\"lr\":0.1,\"batch_size\":1.5}]}";
    assert_int_equal(http_json(d.base_url, "POST", "/v1/studies", sgd, NULL, &r), 0);
    test_expect_error(&r, 400, "invalid_argument", "noise_models[0].batch_size");
    http_result_free(&r);

    test_create_iso_study(&d, "rules", sid);
    size_t len;
    double fro;
    unsigned char *b = make_dump(4, 3, 1.0, &len, &fro);
    upload(&d, b, len, dig, 201);
    free(b);
    snprintf(buf, sizeof buf, "{\"name\":\"c\",\"jacobian\":{\"fit\":\"%s\"}}", dig);
    test_submit(&d, sid, buf, NULL, jid);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    char cid[64];
    snprintf(cid, sizeof cid, "%s",
             json_string_value(json_object_get(json_array_get(json_object_get(r.json, "items"),
                                                              0), "id")));
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s/jbr", sid, cid);
    struct {
        const char *body;
        long status;
        const char *code, *field;
    } jbr[] = {
        { "{\"confidence\":1}", 400, "invalid_argument", "confidence" },
        { "{\"confidence\":1.5}", 400, "invalid_argument", "confidence" },
        { "{\"batch_size\":1.5}", 400, "invalid_argument", "batch_size" },
        { "{\"batch_size\":0}", 400, "invalid_argument", "batch_size" },
        { "{\"colour\":1}", 400, "invalid_argument", "colour" },
        /* valid parameters reach the next check: JBR needs a model candidate */
        { "{\"confidence\":0,\"batch_size\":64.0}", 409, "failed_precondition", "candidate_id" },
    };
    for (size_t i = 0; i < sizeof jbr / sizeof jbr[0]; i++) {
        assert_int_equal(http_json(d.base_url, "POST", path, jbr[i].body, NULL, &r), 0);
        test_expect_error(&r, jbr[i].status, jbr[i].code, jbr[i].field);
        http_result_free(&r);
    }

    /* A spec blob with a duplicate key is refused like an inline one (in a study of its own:
     * input sets are frozen once a study has candidates). */
    char sid2[64];
    test_create_iso_study(&d, "rules-spec", sid2);
    const char *spec = "{\"format\":\"tpv.sequential/v1\",\"format\":\"tpv.sequential/v1\","
                       "\"input_shape\":[3],\"layers\":[{\"type\":\"linear\",\"weight\":\"w\"}]}";
    upload(&d, spec, strlen(spec), dspec, 201);
    double x[6] = { 0.1, 0.2, 0.3, 0.4, 0.5, 0.6 };
    uint64_t xs[2] = { 2, 3 };
    b = test_npy_f64(xs, 2, x, &len);
    upload(&d, b, len, dx, 201);
    free(b);
    snprintf(path, sizeof path, "/v1/studies/%s/inputs/fit", sid2);
    snprintf(buf, sizeof buf, "{\"blob\":\"%s\"}", dx);
    assert_int_equal(http_json(d.base_url, "PUT", path, buf, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid2);
    snprintf(buf, sizeof buf, "{\"name\":\"dup\",\"model\":{\"spec\":\"%s\",\"weights\":\"%s\"}}",
             dspec, dig);
    assert_int_equal(http_json(d.base_url, "POST", path, buf, NULL, &r), 0);
    test_expect_error(&r, 400, "invalid_argument", "model.spec");
    assert_non_null(strstr(http_json_str(&r, "error.message"), "duplicate"));
    http_result_free(&r);

    test_wait_job(&d, jid, 20, &r);
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* Submission reads a dump's header only (no pass over the data on the HTTP thread); the worker
 * scans every value and fails the job naming the tensor and the index of the first bad one. */
static void test_values_scanned_by_the_worker(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char buf[256], sid[64], jid[64], dig[80];
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "scan", sid);
    double v[12];
    for (int i = 0; i < 12; i++)
        v[i] = 0.1 * i;
    v[7] = NAN;
    uint64_t shape[2] = { 4, 3 };
    size_t len;
    unsigned char *b = test_npy_f64(shape, 2, v, &len);
    upload(&d, b, len, dig, 201);
    free(b);
    snprintf(buf, sizeof buf, "{\"name\":\"nan\",\"jacobian\":{\"fit\":\"%s\"}}", dig);
    test_submit(&d, sid, buf, NULL, jid);
    test_wait_job(&d, jid, 20, &r);
    assert_string_equal(http_json_str(&r, "state"), "failed");
    assert_string_equal(http_json_str(&r, "error.code"), "invalid_argument");
    const char *msg = http_json_str(&r, "error.message");
    if (!strstr(msg, "jacobian.fit") || !strstr(msg, "non-finite value at index 7"))
        fail_msg("job error: %s", msg);
    assert_null(strstr(msg, d.data_dir)); /* no server path in a client message */
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}


/* Confidence through the service (DESIGN.md section 5): three dump candidates whose isotropic
 * contributions are known (row x of candidate c is (sqrt(v_c[x]), 0), so input x contributes
 * sigma^2 v_c[x]).  a is clearly below b (p_lower_than_next near 1), b and c are within sampling
 * error (p between 0.05 and 0.95), the last item has null; every value is checked against the
 * paired normal approximation computed here, stderr_inputs against the standard error of the
 * contributions, on the ranking, its CSV and the candidate's scores. */
enum { CN = 8 };
static const double conf_v[3][CN] = {
    { 1, 2, 1, 2, 1.2, 2.1, 0.9, 1.8 },
    { 4, 5, 4.2, 5.1, 3.9, 5.2, 4.1, 4.9 },
    { 5, 4, 5.1, 4.3, 4.6, 4.8, 4.2, 5.0 },
};

static double conf_stderr(const double *v)
{
    double m = 0, ss = 0;
    for (int i = 0; i < CN; i++)
        m += 0.01 * v[i] / CN;
    for (int i = 0; i < CN; i++)
        ss += (0.01 * v[i] - m) * (0.01 * v[i] - m);
    return sqrt(ss / (CN - 1) / CN);
}

static double conf_p(const double *a, const double *b)
{
    double m = 0, ss = 0;
    for (int i = 0; i < CN; i++)
        m += 0.01 * (a[i] - b[i]) / CN;
    for (int i = 0; i < CN; i++) {
        double d = 0.01 * (a[i] - b[i]) - m;
        ss += d * d;
    }
    double se = sqrt(ss / (CN - 1) / CN);
    return 0.5 * erfc(m / se / sqrt(2.0));
}

static void test_ranking_confidence(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char buf[512], path[256], sid[64], jid[3][64], dig[3][80], cid0[64] = "";
    assert_int_equal(test_daemon_start(&d, args), 0);
    test_create_iso_study(&d, "confidence", sid);
    for (int c = 0; c < 3; c++) {
        double J[CN * 2];
        for (int i = 0; i < CN; i++)
            J[2 * i] = sqrt(conf_v[c][i]), J[2 * i + 1] = 0;
        uint64_t shape[2] = { CN, 2 };
        size_t len;
        unsigned char *b = test_npy_f64(shape, 2, J, &len);
        upload(&d, b, len, dig[c], 201);
        free(b);
        snprintf(buf, sizeof buf, "{\"name\":\"c%d\",\"jacobian\":{\"fit\":\"%s\"}}", c, dig[c]);
        test_submit(&d, sid, buf, NULL, jid[c]);
    }
    for (int c = 0; c < 3; c++) {
        test_wait_job(&d, jid[c], 20, &r);
        assert_string_equal(http_json_str(&r, "state"), "succeeded");
        if (c == 0)
            snprintf(cid0, sizeof cid0, "%s", http_json_str(&r, "candidate_id"));
        http_result_free(&r);
    }
    snprintf(path, sizeof path, "/v1/studies/%s/ranking", sid);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    const json_t *items = json_object_get(r.json, "items");
    assert_int_equal(json_array_size(items), 3);
    for (int k = 0; k < 3; k++) {
        const json_t *it = json_array_get(items, (size_t)k);
        char want[8];
        snprintf(want, sizeof want, "c%d", k);
        assert_string_equal(json_string_value(json_object_get(it, "name")), want);
        double se = json_real_value(json_object_get(it, "stderr_inputs"));
        if (fabs(se - conf_stderr(conf_v[k])) > 1e-12)
            fail_msg("item %d stderr_inputs %.17g, want %.17g", k, se, conf_stderr(conf_v[k]));
        const json_t *p = json_object_get(it, "p_lower_than_next");
        assert_non_null(p);
        if (k == 2) {
            assert_true(json_is_null(p));
            continue;
        }
        double pv = json_real_value(p), want_p = conf_p(conf_v[k], conf_v[k + 1]);
        if (fabs(pv - want_p) > 1e-9)
            fail_msg("item %d p_lower_than_next %.17g, want %.17g", k, pv, want_p);
        if (k == 0)
            assert_true(pv > 0.999);             /* clearly outside sampling error */
        else
            assert_true(pv > 0.05 && pv < 0.95); /* within it */
    }
    http_result_free(&r);
    /* The CSV carries the same columns. */
    const char *csv_hdr[] = { "Accept: text/csv", NULL };
    snprintf(buf, sizeof buf, "%s%s", d.base_url, path);
    assert_int_equal(http_request("GET", buf, NULL, 0, csv_hdr, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "stderr_inputs,p_lower_than_next"));
    http_result_free(&r);
    /* The candidate's score has stderr_inputs too. */
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", sid, cid0);
    assert_int_equal(http_json(d.base_url, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    const json_t *sc = json_array_get(json_object_get(r.json, "scores"), 0);
    assert_true(fabs(json_real_value(json_object_get(sc, "stderr_inputs")) -
                     conf_stderr(conf_v[0])) < 1e-12);
    http_result_free(&r);
    /* ... and the OpenAPI document says so. */
    assert_int_equal(http_json(d.base_url, "GET", "/openapi.json", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    const json_t *schemas = json_object_get(json_object_get(r.json, "components"), "schemas");
    const json_t *ri = json_object_get(json_object_get(schemas, "RankingItem"), "properties");
    assert_non_null(json_object_get(ri, "p_lower_than_next"));
    assert_non_null(json_object_get(ri, "stderr_inputs"));
    assert_non_null(json_object_get(
        json_object_get(json_object_get(schemas, "Score"), "properties"), "stderr_inputs"));
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_flow),
        cmocka_unit_test(test_fit_only_dumps_rank_on_fit),
        cmocka_unit_test(test_one_rule_at_submission),
        cmocka_unit_test(test_values_scanned_by_the_worker),
        cmocka_unit_test(test_ranking_confidence),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
