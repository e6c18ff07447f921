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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_migrates_and_reopens),
        cmocka_unit_test(test_open_refuses_empty_and_damaged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
