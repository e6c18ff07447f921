/* test_store_open.c: opening a fresh data dir creates and migrates a real SQLite file; reopening
 * keeps the version; a database from a newer tpvd, an existing 0-byte file and a file with a
 * damaged page are refused (and left as they are). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <sqlite3.h>

#include "storage/store.h"
#include "storage/store_ops.h"
#include "storage/store_pg.h"
#include "storage/store_sqlite.h"

static void test_open_migrates_and_reopens(void **state)
{
    (void)state;
    char dir[] = "/tmp/tpvd-store-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char data[128], db[160];
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(db, sizeof db, "%s/tpvd.db", data);

    struct store *st = NULL;
    struct tpv_err err;
    assert_int_equal(store_open(&st, data, &err), TPV_OK);
    int version = store_schema_version(st);
    assert_true(version >= 1);
    assert_int_equal(store_ping(st, &err), TPV_OK);
    store_close(st);

    struct stat sb;
    assert_int_equal(stat(db, &sb), 0);
    assert_int_equal(store_open(&st, data, &err), TPV_OK);
    assert_int_equal(store_schema_version(st), version);
    store_close(st);

    /* Pretend a newer tpvd wrote the file. */
    sqlite3 *raw;
    assert_int_equal(sqlite3_open(db, &raw), SQLITE_OK);
    assert_int_equal(sqlite3_exec(raw, "PRAGMA user_version = 9999", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(raw);
    assert_int_equal(store_open(&st, data, &err), TPV_EPRECONDITION);
    assert_null(st);
    assert_non_null(strstr(err.message, "newer"));

    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_open_refuses_empty_and_damaged(void **state)
{
    (void)state;
    char dir[] = "/tmp/tpvd-store-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char data[128], db[160];
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(db, sizeof db, "%s/tpvd.db", data);
    struct store *st = NULL;
    struct tpv_err err;
    struct stat sb;

    assert_int_equal(store_open(&st, data, &err), TPV_OK); /* creates data/ and the schema */
    store_close(st);
    assert_int_equal(truncate(db, 0), 0);
    assert_int_equal(store_open(&st, data, &err), TPV_EPRECONDITION);
    assert_null(st);
    assert_non_null(strstr(err.message, "empty (0 bytes)"));
    assert_int_equal(stat(db, &sb), 0);
    assert_int_equal(sb.st_size, 0);

    /* A table root page turned to garbage (page 2 is the first table's root). */
    assert_int_equal(unlink(db), 0);
    assert_int_equal(store_open(&st, data, &err), TPV_OK);
    store_close(st);
    FILE *fp = fopen(db, "r+b");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 4096, SEEK_SET), 0);
    for (int i = 0; i < 64; i++)
        fputc(0xA5, fp);
    fclose(fp);
    assert_int_equal(store_open(&st, data, &err), TPV_EIO);
    assert_null(st);
    assert_non_null(strstr(err.message, "damaged"));
    assert_non_null(strstr(err.message, ".recover"));

    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* --database URLs: sqlite:PATH with a separate --blob-dir puts the database and the blobs where
 * they were asked to be; a postgresql URL with no server behind it is TPV_EUNAVAILABLE;
 * anything else names the field. */
static void test_open_url(void **state)
{
    (void)state;
    char dir[] = "/tmp/tpvd-store-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char url[200], blobs[160], db[160], path[300];
    snprintf(url, sizeof url, "sqlite:%s/db/main.db", dir);
    snprintf(db, sizeof db, "%s/db/main.db", dir);
    snprintf(blobs, sizeof blobs, "%s/shared-blobs", dir);
    struct store_options o = { .blob_dir = blobs };
    struct store *st = NULL;
    struct tpv_err err;
    assert_int_equal(store_open_url(&st, url, &o, &err), TPV_OK);
    assert_string_equal(store_backend_name(st), "sqlite");
    struct store_blob_writer *w = NULL;
    char digest[STORE_DIGEST_MAX];
    uint64_t size = 0;
    bool existed = true;
    assert_int_equal(store_blob_writer_open(st, NULL, 100, &w, &err), TPV_OK);
    assert_int_equal(store_blob_writer_write(w, "abc", 3, &err), TPV_OK);
    assert_int_equal(store_blob_writer_commit(w, digest, &size, &existed, &err), TPV_OK);
    store_blob_writer_free(w);
    assert_false(existed);
    assert_int_equal(store_blob_path(st, digest, path, sizeof path, &err), TPV_OK);
    assert_int_equal(strncmp(path, blobs, strlen(blobs)), 0);
    struct store_stats stats;
    assert_int_equal(store_stats(st, &stats, &err), TPV_OK);
    assert_int_equal(stats.blobs, 1); /* the row was recorded by the backend */
    store_close(st);
    struct stat sb;
    assert_int_equal(stat(db, &sb), 0);
    assert_int_equal(stat(path, &sb), 0);

    tpv_err_clear(&err);
    assert_int_equal(store_open_url(&st, "postgresql://localhost:1/tpvd", &o, &err),
                     TPV_EUNAVAILABLE);
    assert_null(st);
    assert_string_equal(err.field, "database");
    tpv_err_clear(&err);
    assert_int_equal(store_open_url(&st, "mysql://x", NULL, &err), TPV_EINVAL);
    assert_string_equal(err.field, "database");
    tpv_err_clear(&err);
    assert_int_equal(store_open_url(&st, "sqlite:", NULL, &err), TPV_EINVAL);

    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* Every operation of both backends is filled: a member left out of a designated initializer is
 * NULL and would crash its first caller (the merged PostgreSQL table once lacked
 * rank_contributions).  The table is a name and then function pointers only, so it is read as
 * an array of them; a member added to store_ops is checked without touching this test. */
static size_t ops_missing(const struct store_ops *ops, char *which, size_t cap)
{
    typedef int (*any_fn)(void);
    size_t missing = 0, at = 0;
    const unsigned char *base = (const unsigned char *)ops;
    size_t first = offsetof(struct store_ops, name) + sizeof ops->name;
    for (size_t off = first; off + sizeof(any_fn) <= sizeof *ops; off += sizeof(any_fn)) {
        any_fn f;
        memcpy(&f, base + off, sizeof f);
        if (!f) {
            missing++;
            at += (size_t)snprintf(which + at, at < cap ? cap - at : 0, " @%zu", off);
            if (at >= cap)
                at = cap - 1;
        }
    }
    return missing;
}

static void test_ops_tables_complete(void **state)
{
    (void)state;
    char which[512] = "";
    assert_true((sizeof(struct store_ops) - sizeof(const char *)) % sizeof(int (*)(void)) == 0);
    if (ops_missing(&store_sqlite_ops, which, sizeof which))
        fail_msg("store_sqlite_ops has NULL members at byte offsets%s", which);
    if (ops_missing(&store_pg_ops, which, sizeof which))
        fail_msg("store_pg_ops has NULL members at byte offsets%s", which);
    assert_string_equal(store_sqlite_ops.name, "sqlite");
    assert_string_equal(store_pg_ops.name, "postgresql");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_migrates_and_reopens),
        cmocka_unit_test(test_open_refuses_empty_and_damaged),
        cmocka_unit_test(test_open_url),
        cmocka_unit_test(test_ops_tables_complete),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
