/* test_store_blobs.c: the content-addressed blob store: streamed uploads hash to the known SHA-256,
 * appear atomically under sha256/ab/<hex>, a second upload of the same bytes reports "existed", a
 * digest mismatch or size overflow leaves nothing behind, and stale temporaries are removed at
 * open; on SQLite and, as store_blobs-pg, with the rows on PostgreSQL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "storage/store.h"
#include "tests/support/store_test.h"

/* sha256("hello world") */
#define HELLO "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"

static void upload(struct store *st, const char *expect, const char *text, int rc_commit,
                   bool want_existed)
{
    struct store_blob_writer *w;
    struct tpv_err err;
    char digest[STORE_DIGEST_MAX];
    uint64_t size;
    bool existed;
    assert_int_equal(store_blob_writer_open(st, expect, 1024, &w, &err), TPV_OK);
    /* In pieces, as HTTP delivers it. */
    size_t len = strlen(text), half = len / 2;
    assert_int_equal(store_blob_writer_write(w, text, half, &err), TPV_OK);
    assert_int_equal(store_blob_writer_write(w, text + half, len - half, &err), TPV_OK);
    assert_int_equal(store_blob_writer_size(w), len);
    assert_int_equal(store_blob_writer_commit(w, digest, &size, &existed, &err), rc_commit);
    if (rc_commit == TPV_OK) {
        assert_int_equal(size, len);
        assert_int_equal(existed, want_existed);
        assert_string_equal(digest, HELLO);
    } else {
        assert_string_equal(err.field, "digest");
    }
    store_blob_writer_free(w);
    assert_int_equal(store_blob_temp_count(st), 0);
}

static void test_blobs(void **state)
{
    (void)state;
    struct store_test t; /* SQLite, or PostgreSQL with TPV_TEST_STORE_DB=pg */
    assert_int_equal(store_test_open(&t, "blobs", NULL), 0);
    struct store *st = t.st;
    struct tpv_err err;
    char path[512];

    assert_true(store_digest_valid(HELLO));
    assert_false(store_digest_valid("sha256:B94D"));
    assert_false(store_digest_valid("md5:00"));
    assert_int_equal(store_blob_stat(st, HELLO, NULL, &err), TPV_ENOTFOUND);
    assert_int_equal(store_blob_stat(st, "sha256:xyz", NULL, &err), TPV_EINVAL);

    upload(st, NULL, "hello world", TPV_OK, false);
    uint64_t size = 0;
    assert_int_equal(store_blob_stat(st, HELLO, &size, &err), TPV_OK);
    assert_int_equal(size, 11);
    assert_int_equal(store_blob_path(st, HELLO, path, sizeof path, &err), TPV_OK);
    assert_non_null(strstr(path, "/blobs/sha256/b9/b94d27b9"));
    upload(st, HELLO, "hello world", TPV_OK, true);
    upload(st, HELLO, "hello there", TPV_EINVAL, false);

    /* Over the size limit. */
    struct store_blob_writer *w;
    char big[2048] = { 0 };
    assert_int_equal(store_blob_writer_open(st, NULL, 1024, &w, &err), TPV_OK);
    assert_int_equal(store_blob_writer_write(w, big, sizeof big, &err), TPV_ETOOLARGE);
    store_blob_writer_free(w);
    assert_int_equal(store_blob_temp_count(st), 0);

    struct store_stats stats;
    assert_int_equal(store_stats(st, &stats, &err), TPV_OK);
    assert_int_equal(stats.blobs, 1);
    assert_int_equal(stats.blob_bytes, 11);

    /* A crash mid-upload leaves a temporary; the next open removes it. */
    assert_int_equal(store_blob_writer_open(st, NULL, 1024, &w, &err), TPV_OK);
    assert_int_equal(store_blob_writer_write(w, "partial", 7, &err), TPV_OK);
    assert_int_equal(store_blob_temp_count(st), 1);
    char stale[512];
    snprintf(stale, sizeof stale, "%s/tmp/upload-crashed", t.blobs);
    FILE *fp = fopen(stale, "w");
    assert_non_null(fp);
    fclose(fp);
    /* Two days old: stale on either backend (SQLite's owner removes every temporary, nodes
     * sharing a PostgreSQL blob folder only those older than any upload could take). */
    struct timespec old[2] = { { .tv_sec = time(NULL) - 2 * 86400 },
                               { .tv_sec = time(NULL) - 2 * 86400 } };
    assert_int_equal(utimensat(AT_FDCWD, stale, old, 0), 0);
    store_blob_writer_free(w);
    assert_int_equal(store_test_reopen(&t, NULL), 0);
    st = t.st;
    assert_int_equal(store_blob_temp_count(st), 0);
    assert_int_equal(store_blob_stat(st, HELLO, NULL, &err), TPV_OK);
    assert_int_equal(store_test_cleanup(&t), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blobs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
