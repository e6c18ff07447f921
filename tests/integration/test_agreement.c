/* test_agreement.c: candidate metrics and the agreement report against the real tpvd (DESIGN.md
 * section 5): known metrics on candidates of a study with real scores; n, Spearman and Kendall
 * checked against values this test computes itself from the scores it reads back (its own rank
 * and pair-count code, not the daemon's); the bootstrap interval holds the point estimate;
 * recommended is the item with the highest lower bound; merge semantics; the 400s naming the
 * field; 404 for a metric nobody has and for a deleted candidate; versions. */
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
#include <cmocka.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"
#include "tests/support/service_steps.h"
#include "tests/support/npy.h"

#define NCAND 9

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 11;
}

/* A (10, 3) Jacobian dump with random entries times `scale` (seeded: the same every run). */
static void upload_dump(const struct test_daemon *d, uint64_t seed, double scale, char out[80])
{
    double v[30];
    for (int i = 0; i < 30; i++)
        v[i] = scale * ((double)(lcg(&seed) % 2000) / 1000.0 - 1.0);
    uint64_t shape[2] = { 10, 3 };
    size_t len;
    unsigned char *b = test_npy_f64(shape, 2, v, &len);
    test_put_blob(d, b, len, out);
    free(b);
}

static void call(const struct test_daemon *d, const char *method, const char *path,
                 const char *body, struct http_result *r)
{
    assert_int_equal(http_json(d->base_url, method, path, body, NULL, r), 0);
}

/* ---- the test's own statistics (pairs and ranks by counting, O(n^2)) ---- */

static double avg_rank(const double *x, size_t n, size_t i)
{
    size_t below = 0, equal = 0;
    for (size_t j = 0; j < n; j++) {
        below += x[j] < x[i];
        equal += x[j] == x[i];
    }
    return (double)below + (double)(equal + 1) / 2.0;
}

static double my_spearman(const double *x, const double *y, size_t n)
{
    double rx[NCAND], ry[NCAND], mx = 0, my = 0, sxy = 0, sxx = 0, syy = 0;
    for (size_t i = 0; i < n; i++) {
        rx[i] = avg_rank(x, n, i);
        ry[i] = avg_rank(y, n, i);
        mx += rx[i] / (double)n;
        my += ry[i] / (double)n;
    }
    for (size_t i = 0; i < n; i++) {
        sxy += (rx[i] - mx) * (ry[i] - my);
        sxx += (rx[i] - mx) * (rx[i] - mx);
        syy += (ry[i] - my) * (ry[i] - my);
    }
    return sxy / sqrt(sxx * syy);
}

static double my_kendall(const double *x, const double *y, size_t n)
{
    double c = 0, dis = 0, tx = 0, ty = 0, pairs = (double)n * (double)(n - 1) / 2;
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) {
            double a = (x[i] - x[j]) * (y[i] - y[j]);
            tx += x[i] == x[j];
            ty += y[i] == y[j];
            c += a > 0;
            dis += a < 0;
        }
    return (c - dis) / sqrt((pairs - tx) * (pairs - ty));
}

/* ---- the study ---- */

struct study {
    struct test_daemon d;
    char sid[64];
    char cid[NCAND][64];
    double iso[NCAND], lab[NCAND]; /* fit scores read back */
};

static double score_of(const json_t *cand, const char *noise)
{
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(cand, "scores"), i, s)
        if (strcmp(json_string_value(json_object_get(s, "noise")), noise) == 0 &&
            strcmp(json_string_value(json_object_get(s, "split")), "fit") == 0)
            return json_number_value(json_object_get(s, "value"));
    fail_msg("no %s score", noise);
    return NAN;
}

/* Two noise models that rank differently: isotropic follows the Jacobian's scale, label with a
 * relative ridge its spectrum's shape.  NCAND candidates scored. */
static void study_make(struct study *st)
{
    const char *args[] = { "--workers", "1", NULL };
    struct http_result r;
    char path[160], body[256], dig[80], jid[NCAND][64];
    assert_int_equal(test_daemon_start(&st->d, args), 0);
    test_create_study(&st->d,
                      "{\"name\":\"agree\",\"noise_models\":[{\"name\":\"iso\",\"kind\":"
                      "\"isotropic\",\"sigma\":0.1},{\"name\":\"lab\",\"kind\":\"label\","
                      "\"sigma\":0.1,\"ridge_rel\":0.5}]}",
                      st->sid);
    for (int i = 0; i < NCAND; i++) {
        upload_dump(&st->d, 100 + (uint64_t)i, 0.5 + 0.25 * i, dig);
        snprintf(body, sizeof body, "{\"name\":\"c%d\",\"jacobian\":{\"fit\":\"%s\"}}", i, dig);
        test_submit(&st->d, st->sid, body, st->cid[i], jid[i]);
    }
    for (int i = 0; i < NCAND; i++) {
        test_wait_succeeded(&st->d, jid[i], 30);
        snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", st->sid, st->cid[i]);
        call(&st->d, "GET", path, NULL, &r);
        assert_int_equal(r.status, 200);
        assert_null(json_object_get(r.json, "metrics")); /* none yet: not in the shape */
        st->iso[i] = score_of(r.json, "iso");
        st->lab[i] = score_of(r.json, "lab");
        http_result_free(&r);
    }
}

static void study_end(struct study *st)
{
    assert_int_equal(test_daemon_stop(&st->d, SIGTERM), 0);
    test_daemon_cleanup(&st->d);
}

static void put_metrics(struct study *st, int i, const char *body, struct http_result *r)
{
    char path[200];
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s/metrics", st->sid, st->cid[i]);
    call(&st->d, "PUT", path, body, r);
}

static const json_t *item_of(const json_t *report, const char *noise, const char *split)
{
    size_t i;
    json_t *it;
    json_array_foreach(json_object_get(report, "items"), i, it)
        if (strcmp(json_string_value(json_object_get(it, "noise")), noise) == 0 &&
            strcmp(json_string_value(json_object_get(it, "split")), split) == 0)
            return it;
    return NULL;
}

/* Checks one item against the pairs (scores[i], metric[i]) of the candidates with has[i]. */
static void check_item(const json_t *item, const double *scores, const double *metric,
                       const bool *has)
{
    double x[NCAND], y[NCAND];
    size_t n = 0;
    for (int i = 0; i < NCAND; i++)
        if (has[i]) {
            x[n] = scores[i];
            y[n] = metric[i];
            n++;
        }
    assert_non_null(item);
    assert_int_equal(json_integer_value(json_object_get(item, "n")), n);
    double rho = json_number_value(json_object_get(item, "spearman"));
    double tau = json_number_value(json_object_get(item, "kendall"));
    assert_float_equal(rho, my_spearman(x, y, n), 1e-12);
    assert_float_equal(tau, my_kendall(x, y, n), 1e-12);
    json_t *ci = json_object_get(item, "ci");
    if (n < 4) {
        assert_true(json_is_null(ci));
        return;
    }
    assert_int_equal(json_array_size(ci), 2);
    double lo = json_number_value(json_array_get(ci, 0)), hi = json_number_value(json_array_get(ci, 1));
    assert_true(-1 <= lo && lo <= rho && rho <= hi && hi <= 1);
}

static void get_report(struct study *st, const char *metric, struct http_result *r)
{
    char path[200];
    snprintf(path, sizeof path, "/v1/studies/%s/agreement?metric=%s", st->sid, metric);
    call(&st->d, "GET", path, NULL, r);
}

/* Known metrics on all candidates but one: val follows the isotropic score with two swaps and a
 * tie, so iso agrees strongly (and is recommended) while lab agrees as its ranking happens to. */
static void test_report(void **state)
{
    (void)state;
    struct study st = { 0 };
    struct http_result r;
    char body[128];
    double val[NCAND];
    bool has[NCAND];
    study_make(&st);
    get_report(&st, "val", &r);
    test_expect_error(&r, 404, "not_found", "metric");
    http_result_free(&r);
    /* val is the rank order of iso with ranks 1 and 2 swapped and ranks 5 and 6 tied. */
    static const int target[NCAND] = { 0, 2, 1, 3, 4, 5, 5, 7, 8 };
    for (int i = 0; i < NCAND; i++) {
        int rank = 0;
        for (int j = 0; j < NCAND; j++)
            rank += st.iso[j] < st.iso[i];
        val[i] = 0.1 * target[rank] + 0.01;
        has[i] = i != 4;
    }
    json_int_t v0 = test_study_version(&st.d, st.sid);
    for (int i = 0; i < NCAND; i++) {
        if (!has[i])
            continue;
        snprintf(body, sizeof body, "{\"val\":%.17g,\"other\":%d}", val[i], i);
        put_metrics(&st, i, body, &r);
        if (r.status != 200)
            fail_msg("PUT metrics: %ld %s", r.status, r.body);
        assert_string_equal(http_json_str(&r, "id"), st.cid[i]); /* the candidate comes back */
        assert_float_equal(json_number_value(json_object_get(json_object_get(r.json, "metrics"),
                                                             "val")), val[i], 0);
        http_result_free(&r);
    }
    assert_int_equal(test_study_version(&st.d, st.sid), v0 + NCAND - 1); /* each PUT bumped it */

    get_report(&st, "val", &r);
    if (r.status != 200)
        fail_msg("agreement: %ld %s", r.status, r.body);
    assert_string_equal(http_json_str(&r, "metric"), "val");
    assert_int_equal(json_array_size(json_object_get(r.json, "items")), 2); /* fit only */
    const json_t *iso = item_of(r.json, "iso", "fit"), *lab = item_of(r.json, "lab", "fit");
    assert_ptr_equal(iso, json_array_get(json_object_get(r.json, "items"), 0)); /* study order */
    check_item(iso, st.iso, val, has);
    check_item(lab, st.lab, val, has);
    /* recommended: the item with the highest lower bound, when above 0. */
    double lo_iso = json_number_value(json_array_get(json_object_get(iso, "ci"), 0));
    double lo_lab = json_number_value(json_array_get(json_object_get(lab, "ci"), 0));
    assert_true(lo_iso > 0); /* seven candidates nearly in order */
    assert_string_equal(http_json_str(&r, "recommended.noise"), lo_lab > lo_iso ? "lab" : "iso");
    assert_string_equal(http_json_str(&r, "recommended.split"), "fit");
    /* Reproducible: the same report again (fixed seed). */
    char *first = strdup(r.body);
    http_result_free(&r);
    get_report(&st, "val", &r);
    assert_string_equal(r.body, first);
    free(first);
    http_result_free(&r);

    /* Three candidates only: n = 3, no interval, nothing recommended. */
    for (int i = 0; i < 3; i++) {
        snprintf(body, sizeof body, "{\"few\":%d}", 3 - i);
        put_metrics(&st, i, body, &r);
        assert_int_equal(r.status, 200);
        http_result_free(&r);
    }
    get_report(&st, "few", &r);
    assert_int_equal(r.status, 200);
    double few[NCAND] = { 3, 2, 1 };
    bool has_few[NCAND] = { true, true, true };
    check_item(item_of(r.json, "iso", "fit"), st.iso, few, has_few);
    assert_true(json_is_null(json_object_get(r.json, "recommended")));
    http_result_free(&r);

    /* A deleted candidate leaves the report, and its metrics cannot be put. */
    char path[200];
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", st.sid, st.cid[0]);
    call(&st.d, "DELETE", path, NULL, &r);
    assert_int_equal(r.status, 204);
    http_result_free(&r);
    put_metrics(&st, 0, "{\"val\":1}", &r);
    test_expect_error(&r, 404, "not_found", "candidate_id");
    http_result_free(&r);
    get_report(&st, "val", &r);
    assert_int_equal(r.status, 200);
    has[0] = false;
    check_item(item_of(r.json, "iso", "fit"), st.iso, val, has);
    http_result_free(&r);
    study_end(&st);
}

/* Merge: keys given replace, null removes, others stay; the same PUT again bumps nothing; the
 * list shows metrics; refusals name the field; unknown metric and parameters. */
static void test_merge_and_refusals(void **state)
{
    (void)state;
    struct study st = { 0 };
    struct http_result r;
    char path[200];
    study_make(&st);
    put_metrics(&st, 1, "{\"val_loss\":0.31,\"acc\":0.9}", &r);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    json_int_t v = test_study_version(&st.d, st.sid);
    put_metrics(&st, 1, "{\"val_loss\":0.25,\"acc\":null,\"epoch\":3}", &r);
    assert_int_equal(r.status, 200);
    json_t *m = json_object_get(r.json, "metrics");
    assert_int_equal(json_object_size(m), 2);
    assert_float_equal(json_number_value(json_object_get(m, "val_loss")), 0.25, 0);
    assert_float_equal(json_number_value(json_object_get(m, "epoch")), 3, 0);
    assert_null(json_object_get(m, "acc"));
    http_result_free(&r);
    assert_int_equal(test_study_version(&st.d, st.sid), v + 1);
    put_metrics(&st, 1, "{\"val_loss\":0.25,\"acc\":null,\"epoch\":3}", &r);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    assert_int_equal(test_study_version(&st.d, st.sid), v + 1); /* nothing changed */
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", st.sid);
    call(&st.d, "GET", path, NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *items = json_object_get(r.json, "items");
    assert_null(json_object_get(json_array_get(items, 0), "metrics"));
    assert_float_equal(json_number_value(json_object_get(
                           json_object_get(json_array_get(items, 1), "metrics"), "val_loss")),
                       0.25, 0);
    http_result_free(&r);

    char long_key[80], many[2048];
    memset(long_key, 'k', 65);
    long_key[65] = '\0';
    char long_body[128];
    snprintf(long_body, sizeof long_body, "{\"%s\":1}", long_key);
    size_t used = (size_t)snprintf(many, sizeof many, "{");
    for (int i = 0; i < 65; i++)
        used += (size_t)snprintf(many + used, sizeof many - used, "%s\"m%d\":1", i ? "," : "", i);
    snprintf(many + used, sizeof many - used, "}");
    const struct {
        const char *body, *field;
    } bad[] = {
        { "{\"val\":\"0.3\"}", "val" },
        { "{\"val\":true}", "val" },
        { "{\"val\":{\"x\":1}}", "val" },
        { "{\"val\":[1]}", "val" },
        { "{\"val\":1e999}", "body" }, /* not a finite number: refused by the parser */
        { "{\"\":1}", "metrics" },
        { "{\"a\\nb\":1}", "a\nb" },
        { long_body, long_key },
        { many, "metrics" },
        { "[1]", "body" },
        { "{\"a\":1,\"a\":2}", "body" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        put_metrics(&st, 2, bad[i].body, &r);
        test_expect_error(&r, 400, "invalid_argument", bad[i].field);
        http_result_free(&r);
    }
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/cd_0000000000000000/metrics", st.sid);
    call(&st.d, "PUT", path, "{\"a\":1}", &r);
    test_expect_error(&r, 404, "not_found", "candidate_id");
    http_result_free(&r);

    /* The report: metric required, unknown ones 404 naming what exists, typos in names 400. */
    snprintf(path, sizeof path, "/v1/studies/%s/agreement", st.sid);
    call(&st.d, "GET", path, NULL, &r);
    test_expect_error(&r, 400, "invalid_argument", "metric");
    http_result_free(&r);
    get_report(&st, "val_los", &r);
    test_expect_error(&r, 404, "not_found", "metric");
    assert_non_null(strstr(http_json_str(&r, "error.message"), "val_loss"));
    http_result_free(&r);
    snprintf(path, sizeof path, "/v1/studies/%s/agreement?metric=val_loss&metrc=1", st.sid);
    call(&st.d, "GET", path, NULL, &r);
    test_expect_error(&r, 400, "invalid_argument", "metrc");
    http_result_free(&r);
    call(&st.d, "GET", "/v1/studies/st_0000000000000000/agreement?metric=val_loss", NULL, &r);
    test_expect_error(&r, 404, "not_found", "study_id");
    http_result_free(&r);
    /* 64 keys are fine; one more after the merge is refused. */
    used = (size_t)snprintf(many, sizeof many, "{");
    for (int i = 0; i < 64; i++)
        used += (size_t)snprintf(many + used, sizeof many - used, "%s\"m%d\":1", i ? "," : "", i);
    snprintf(many + used, sizeof many - used, "}");
    put_metrics(&st, 2, many, &r);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    put_metrics(&st, 2, "{\"one_more\":1}", &r);
    test_expect_error(&r, 400, "invalid_argument", "metrics");
    http_result_free(&r);
    get_report(&st, "nope", &r); /* 66 names now: the first 16 and "..." */
    test_expect_error(&r, 404, "not_found", "metric");
    assert_non_null(strstr(http_json_str(&r, "error.message"), "epoch, m0, m1, m10,"));
    assert_non_null(strstr(http_json_str(&r, "error.message"), ", ...)"));
    http_result_free(&r);
    /* One candidate with the metric: an item with n = 1 and nulls, nothing recommended. */
    get_report(&st, "val_loss", &r);
    assert_int_equal(r.status, 200);
    const json_t *iso = item_of(r.json, "iso", "fit");
    assert_int_equal(json_integer_value(json_object_get(iso, "n")), 1);
    assert_true(json_is_null(json_object_get(iso, "spearman")));
    assert_true(json_is_null(json_object_get(iso, "kendall")));
    assert_true(json_is_null(json_object_get(r.json, "recommended")));
    http_result_free(&r);
    study_end(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_report),
        cmocka_unit_test(test_merge_and_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
