/* test_store_metrics.c: storage/metrics.c on a real store (SQLite; PostgreSQL as
 * store_metrics-pg): the RFC 7396 merge (keys replace, null removes, others stay, numbers keep
 * their spelling), the version bump only on a change, the key limit after a merge, 404 for a deleted candidate, the candidate shape showing
 * "metrics" only when there are some, and the agreement's one read (study order, candidates in
 * creation order with their metric and scores). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "storage/metrics.h"
#include "storage/store.h"
#include "tests/support/store_test.h"
#include "tests/unit/store_json.h"

struct fixture {
    struct store_test t; /* SQLite, or PostgreSQL with TPV_TEST_STORE_DB=pg */
    struct store *st;
    char sid[STORE_ID_MAX];
    char cid[3][STORE_ID_MAX];
};

static void make_candidate(struct fixture *f, int i)
{
    char now[STORE_TIME_MAX], jid[STORE_ID_MAX], name[8];
    struct tpv_err err;
    store_id_new(f->cid[i], "cd");
    store_id_new(jid, "jb");
    store_now_rfc3339(now);
    snprintf(name, sizeof name, "c%d", i);
    struct store_candidate_new c = {
        .id = f->cid[i], .study_id = f->sid, .name = name, .metadata = "{}",
        .source_kind = "jacobian", .source = "{\"jacobian\":{}}", .job_id = jid,
        .created_at = now,
    };
    assert_int_equal(store_candidate_create(f->st, &c, 0, NULL, NULL, &err), TPV_OK);
}

/* A study with noise models "b" then "a" (the report follows the study's order, not names) and
 * three candidates; c0 and c1 are scored, c2 stays queued. */
static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    struct tpv_err err;
    char now[STORE_TIME_MAX];
    if (!f || store_test_open(&f->t, "metrics", NULL) != 0) {
        free(f);
        return -1;
    }
    f->st = f->t.st;
    store_id_new(f->sid, "st");
    store_now_rfc3339(now);
    struct store_study_new s = {
        .id = f->sid, .name = "m", .description = "",
        .noise_models = "[{\"name\":\"b\",\"kind\":\"isotropic\",\"sigma\":0.1},"
                        "{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1}]",
        .rank_by = "b", .metadata = "{}", .created_at = now,
    };
    if (store_study_create(f->st, &s, NULL, NULL, &err) != TPV_OK)
        return -1;
    for (int i = 0; i < 3; i++)
        make_candidate(f, i);
    for (int i = 0; i < 2; i++) {
        struct store_claim cl;
        assert_int_equal(store_job_claim(f->st, "w", 60, &cl, &err), TPV_OK);
        struct store_score sc[2] = {
            { .noise = "b", .kind = "isotropic", .split = "fit", .value = 1.5 + i },
            { .noise = "a", .kind = "isotropic", .split = "fit", .value = 10.0 * (i + 1) },
        };
        assert_int_equal(store_job_succeed(f->st, cl.id, "w", sc, 2, NULL, NULL, &err), TPV_OK);
        store_claim_free(&cl);
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    int rc = store_test_cleanup(&f->t);
    free(f);
    return rc;
}

static int64_t version_of(struct fixture *f)
{
    struct tpv_err err;
    int64_t v = -1;
    assert_int_equal(store_study_version(f->st, f->sid, &v, &err), TPV_OK);
    return v;
}

/* The candidate's "metrics" as compact JSON text ("" when the shape has none). */
static void shown_metrics(struct fixture *f, int i, char *out, size_t cap)
{
    struct tpv_err err;
    json_t *cand = NULL;
    assert_int_equal(tj_candidate_get(f->st, f->sid, f->cid[i], &cand, &err), TPV_OK);
    json_t *m = json_object_get(cand, "metrics");
    char *t = m ? json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)) : NULL;
    snprintf(out, cap, "%s", t ? t : "");
    free(t);
    json_decref(cand);
}

static void test_merge(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    char text[256];
    int64_t v0 = version_of(f), v = 0;
    shown_metrics(f, 0, text, sizeof text);
    assert_string_equal(text, ""); /* none: no key in the shape */
    assert_int_equal(store_metrics_merge(f->st, f->sid, f->cid[0],
                                         "{\"val_loss\":0.31,\"acc\":0.9}", &v, &err), TPV_OK);
    assert_int_equal(v, v0 + 1);
    assert_int_equal(version_of(f), v);
    shown_metrics(f, 0, text, sizeof text);
    assert_string_equal(text, "{\"acc\":0.90000000000000002,\"val_loss\":0.31}");
    /* Keys given replace, null removes, others stay. */
    assert_int_equal(store_metrics_merge(f->st, f->sid, f->cid[0],
                                         "{\"val_loss\":0.25,\"acc\":null,\"epoch\":3}", &v, &err),
                     TPV_OK);
    assert_int_equal(v, v0 + 2);
    shown_metrics(f, 0, text, sizeof text);
    assert_string_equal(text, "{\"epoch\":3,\"val_loss\":0.25}");
    /* The same PUT again changes nothing: no bump (a retry does not move the ETag). */
    assert_int_equal(store_metrics_merge(f->st, f->sid, f->cid[0],
                                         "{\"val_loss\":0.25,\"acc\":null,\"epoch\":3}", &v, &err),
                     TPV_OK);
    assert_int_equal(v, v0 + 2);
    assert_int_equal(version_of(f), v0 + 2);
    /* Removing every key leaves no metrics in the shape. */
    assert_int_equal(store_metrics_merge(f->st, f->sid, f->cid[0],
                                         "{\"val_loss\":null,\"epoch\":null}", &v, &err), TPV_OK);
    shown_metrics(f, 0, text, sizeof text);
    assert_string_equal(text, "");
    /* The list shows them too. */
    assert_int_equal(store_metrics_merge(f->st, f->sid, f->cid[1], "{\"val_loss\":1e-3}", &v,
                                         &err), TPV_OK);
    json_t *items = NULL;
    int64_t next;
    assert_int_equal(tj_candidate_list(f->st, f->sid, 0, 10, 0, &items, &next, &err), TPV_OK);
    assert_int_equal(json_array_size(items), 3);
    assert_null(json_object_get(json_array_get(items, 0), "metrics"));
    assert_float_equal(json_number_value(json_object_get(
                           json_object_get(json_array_get(items, 1), "metrics"), "val_loss")),
                       1e-3, 0);
    json_decref(items);
}

static void test_limits_and_missing(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    int64_t v;
    char patch[2048];
    size_t used = (size_t)snprintf(patch, sizeof patch, "{");
    for (int i = 0; i < STORE_METRICS_MAX; i++)
        used += (size_t)snprintf(patch + used, sizeof patch - used, "%s\"k%02d\":%d",
                                 i ? "," : "", i, i);
    snprintf(patch + used, sizeof patch - used, "}");
    assert_int_equal(store_metrics_merge(f->st, f->sid, f->cid[2], patch, &v, &err), TPV_OK);
    int64_t before = version_of(f);
    /* One more key is refused, and nothing is written. */
    assert_int_equal(store_metrics_merge(f->st, f->sid, f->cid[2], "{\"extra\":1}", &v, &err),
                     TPV_EINVAL);
    assert_string_equal(err.field, "metrics");
    assert_int_equal(version_of(f), before);
    /* Replacing one and adding one after removing one fits. */
    assert_int_equal(store_metrics_merge(f->st, f->sid, f->cid[2],
                                         "{\"k00\":null,\"extra\":1,\"k01\":-2.5}", &v, &err),
                     TPV_OK);
    /* Unknown and deleted candidates are not found. */
    assert_int_equal(store_metrics_merge(f->st, f->sid, "cd_0000000000000000", "{\"a\":1}", &v,
                                         &err), TPV_ENOTFOUND);
    assert_string_equal(err.field, "candidate_id");
    assert_int_equal(store_candidate_delete(f->st, f->sid, f->cid[2], &err), TPV_OK);
    assert_int_equal(store_metrics_merge(f->st, f->sid, f->cid[2], "{\"a\":1}", &v, &err),
                     TPV_ENOTFOUND);
}

static void test_agree_rows(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    struct store_agree_rows rows;
    int64_t v;
    char names[128];
    assert_int_equal(store_metric_names(f->st, f->sid, names, sizeof names, &err), TPV_OK);
    assert_string_equal(names, "");
    assert_int_equal(store_metrics_merge(f->st, f->sid, f->cid[0], "{\"val\":0.5,\"z\":1}", &v,
                                         &err), TPV_OK);
    assert_int_equal(store_metrics_merge(f->st, f->sid, f->cid[2], "{\"val\":7}", &v, &err),
                     TPV_OK);
    assert_int_equal(store_metric_names(f->st, f->sid, names, sizeof names, &err), TPV_OK);
    assert_string_equal(names, "val, z");
    assert_int_equal(store_agree_rows(f->st, f->sid, "val", &rows, &err), TPV_OK);
    assert_int_equal(rows.version, version_of(f));
    assert_non_null(strstr(rows.noise_models, "\"b\""));
    assert_int_equal(rows.ncands, 3);
    assert_int_equal(rows.nscores, 4);
    assert_string_equal(rows.cands[0].id, f->cid[0]);
    assert_true(rows.cands[0].has_metric);
    assert_float_equal(rows.cands[0].metric, 0.5, 0);
    assert_false(rows.cands[1].has_metric);
    assert_true(rows.cands[2].has_metric);
    assert_float_equal(rows.cands[2].metric, 7, 0);
    assert_int_equal(rows.cands[2].nscores, 0); /* queued: no scores */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(rows.cands[i].nscores, 2);
        const struct store_agree_score *sc = &rows.scores[rows.cands[i].first];
        assert_string_equal(sc[0].noise, "b");
        assert_string_equal(sc[0].split, "fit");
        assert_float_equal(sc[0].value, 1.5 + i, 0);
        assert_string_equal(sc[1].noise, "a");
        assert_float_equal(sc[1].value, 10.0 * (i + 1), 0);
    }
    store_agree_rows_free(&rows);
    store_agree_rows_free(&rows); /* zeroed: a second free is a no-op */
    store_agree_rows_free(NULL);
    /* A metric that is a key's prefix or has a quote is only ever that exact key. */
    assert_int_equal(store_agree_rows(f->st, f->sid, "va", &rows, &err), TPV_OK);
    assert_false(rows.cands[0].has_metric);
    store_agree_rows_free(&rows);
    assert_int_equal(store_agree_rows(f->st, "st_0000000000000000", "val", &rows, &err),
                     TPV_ENOTFOUND);
    assert_string_equal(err.field, "study_id");
    assert_null(rows.cands);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_merge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits_and_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_agree_rows, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
