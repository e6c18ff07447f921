/* test_store_refusals.c: a refused write leaves nothing behind (DESIGN.md section 6: nothing is
 * half-written).  Each refusal of the store (unknown study, taken name, full queue, aborted or
 * mismatching or oversized upload, taken token name) is followed by a check through the store's
 * own counters that no row, job, blob or temporary appeared. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "storage/store.h"
#include "tests/support/store_test.h"

struct fixture {
    struct store_test t; /* SQLite, or PostgreSQL with TPV_TEST_STORE_DB=pg */
    struct store *st;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (!f || store_test_open(&f->t, "refuse", NULL) != 0) {
        free(f);
        return -1;
    }
    f->st = f->t.st;
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

static void stats(struct fixture *f, struct store_stats *s)
{
    struct tpv_err err;
    assert_int_equal(store_stats(f->st, s, &err), TPV_OK);
}

static void assert_same(const struct store_stats *a, const struct store_stats *b)
{
    assert_int_equal(a->studies, b->studies);
    assert_int_equal(a->candidates, b->candidates);
    assert_int_equal(a->jobs_queued, b->jobs_queued);
    assert_int_equal(a->jobs_running + a->jobs_succeeded + a->jobs_failed + a->jobs_canceled,
                     b->jobs_running + b->jobs_succeeded + b->jobs_failed + b->jobs_canceled);
    assert_int_equal(a->blobs, b->blobs);
    assert_int_equal(a->blob_bytes, b->blob_bytes);
}

static int make_candidate(struct fixture *f, const char *study, const char *name,
                          int64_t max_queued, struct tpv_err *err)
{
    char id[STORE_ID_MAX], job[STORE_ID_MAX], now[STORE_TIME_MAX];
    store_id_new(id, "cd");
    store_id_new(job, "jb");
    store_now_rfc3339(now);
    struct store_candidate_new c = {
        .id = id, .study_id = study, .name = name, .metadata = "{}", .source_kind = "jacobian",
        .source = "{\"kind\":\"jacobian\",\"fit\":\"sha256:00\"}", .job_id = job,
        .created_at = now,
    };
    return store_candidate_create(f->st, &c, max_queued, NULL, NULL, err);
}

static void test_refused_rows(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    struct store_stats before, after;
    char sid[STORE_ID_MAX], now[STORE_TIME_MAX];
    store_id_new(sid, "st");
    store_now_rfc3339(now);
    struct store_study_new s = { .id = sid, .name = "s", .noise_models = "[]", .rank_by = "",
                                 .metadata = "{}", .created_at = now };
    assert_int_equal(store_study_create(f->st, &s, NULL, NULL, &err), TPV_OK);
    assert_int_equal(make_candidate(f, sid, "first", 10, &err), TPV_OK);
    stats(f, &before);
    assert_int_equal(before.candidates, 1);
    assert_int_equal(before.jobs_queued, 1);

    /* Unknown study. */
    assert_int_equal(make_candidate(f, "st_nope", "x", 10, &err), TPV_ENOTFOUND);
    stats(f, &after);
    assert_same(&before, &after);
    /* Taken name: neither a candidate nor a job. */
    assert_int_equal(make_candidate(f, sid, "first", 10, &err), TPV_EEXIST);
    assert_string_equal(err.field, "name");
    stats(f, &after);
    assert_same(&before, &after);
    /* Full queue. */
    assert_int_equal(make_candidate(f, sid, "second", 1, &err), TPV_EBUSY);
    stats(f, &after);
    assert_same(&before, &after);
    /* A study id reused. */
    assert_int_not_equal(store_study_create(f->st, &s, NULL, NULL, &err), TPV_OK);
    stats(f, &after);
    assert_same(&before, &after);
    /* A token name reused. */
    char hex[65];
    memset(hex, 'a', 64);
    hex[64] = '\0';
    assert_int_equal(store_token_create(f->st, "t", "read", hex, &err), TPV_OK);
    hex[0] = 'b';
    assert_int_equal(store_token_create(f->st, "t", "write", hex, &err), TPV_EEXIST);
    int64_t n = 0;
    assert_int_equal(store_token_count(f->st, &n, &err), TPV_OK);
    assert_int_equal(n, 1);
}

static void test_refused_uploads(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    struct store_stats before, after;
    stats(f, &before);
    const char data[] = "some bytes that are uploaded";

    /* Abandoned mid-way (client went away). */
    struct store_blob_writer *w = NULL;
    assert_int_equal(store_blob_writer_open(f->st, NULL, 1024, &w, &err), TPV_OK);
    assert_int_equal(store_blob_writer_write(w, data, sizeof data, &err), TPV_OK);
    assert_int_equal(store_blob_temp_count(f->st), 1);
    store_blob_writer_free(w);
    assert_int_equal(store_blob_temp_count(f->st), 0);
    /* Over the size limit. */
    assert_int_equal(store_blob_writer_open(f->st, NULL, 8, &w, &err), TPV_OK);
    assert_int_equal(store_blob_writer_write(w, data, sizeof data, &err), TPV_ETOOLARGE);
    store_blob_writer_free(w);
    /* Hashing to another digest than announced. */
    const char *other = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    assert_int_equal(store_blob_writer_open(f->st, other, 1024, &w, &err), TPV_OK);
    assert_int_equal(store_blob_writer_write(w, data, sizeof data, &err), TPV_OK);
    char digest[STORE_DIGEST_MAX];
    uint64_t size = 0;
    bool existed = false;
    assert_int_equal(store_blob_writer_commit(w, digest, &size, &existed, &err), TPV_EINVAL);
    assert_string_equal(err.field, "digest");
    store_blob_writer_free(w);
    assert_int_equal(store_blob_temp_count(f->st), 0);
    stats(f, &after);
    assert_same(&before, &after);
    assert_int_equal(store_blob_stat(f->st, other, NULL, &err), TPV_ENOTFOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_refused_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_uploads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
