/* test_storage_options.c: the real tpvd with --database and --blob-dir (issue #13): a SQLite
 * database file and a blob folder outside the data dir are where the daemon keeps its rows and
 * blobs (and the data dir holds neither), a restart on the same options sees both again, and a
 * postgresql:// URL the binary cannot serve yet is refused at start with a message naming
 * --database instead of a daemon that starts on something else. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <curl/curl.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"

static bool exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static void test_database_and_blob_dir_elsewhere(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    assert_int_equal(test_daemon_prepare(&d), 0);
    char db_url[600], db[400], blobs[400], flag_db[640], flag_blobs[440];
    snprintf(db, sizeof db, "%s/elsewhere/main.db", d.dir);
    snprintf(db_url, sizeof db_url, "sqlite:%s", db);
    snprintf(blobs, sizeof blobs, "%s/shared/blobs", d.dir);
    snprintf(flag_db, sizeof flag_db, "--database=%s", db_url);
    snprintf(flag_blobs, sizeof flag_blobs, "--blob-dir=%s", blobs);
    const char *args[] = { flag_db, flag_blobs, NULL };
    assert_int_equal(test_daemon_start(&d, args), 0);

    char url[200];
    struct http_result r;
    snprintf(url, sizeof url, "%s/v1/blobs", d.base_url);
    assert_int_equal(http_request("PUT", url, "0123456789", 10, NULL, &r), 0);
    if (r.status != 201 && r.status != 200)
        fprintf(stderr, "PUT /v1/blobs: %ld %s\n", r.status, r.body);
    assert_true(r.status == 201 || r.status == 200);
    const char *digest = http_json_str(&r, "digest");
    assert_non_null(digest);
    char blob_file[600];
    snprintf(blob_file, sizeof blob_file, "%s/sha256/%.2s/%s", blobs, digest + 7, digest + 7);
    assert_true(exists(blob_file));
    char saved[80];
    snprintf(saved, sizeof saved, "%s", digest);
    http_result_free(&r);
    assert_int_equal(http_json(d.base_url, "POST", "/v1/studies",
                               "{\"name\":\"far\",\"noise_models\":[{\"name\":\"iso\","
                               "\"kind\":\"isotropic\",\"sigma\":0.1}]}", NULL, &r), 0);
    assert_int_equal(r.status, 201);
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);

    assert_true(exists(db));
    char in_data[400];
    snprintf(in_data, sizeof in_data, "%s/tpvd.db", d.data_dir);
    assert_false(exists(in_data));
    snprintf(in_data, sizeof in_data, "%s/blobs", d.data_dir);
    assert_false(exists(in_data));

    /* Same options again: the study and the blob are found. */
    assert_int_equal(test_daemon_start(&d, args), 0);
    assert_int_equal(http_json(d.base_url, "GET", "/v1/studies", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"far\""));
    http_result_free(&r);
    snprintf(url, sizeof url, "%s/v1/blobs/%s", d.base_url, saved);
    assert_int_equal(http_request("HEAD", url, NULL, 0, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    assert_int_equal(test_daemon_stop(&d, SIGTERM), 0);
    test_daemon_cleanup(&d);
}

/* A PostgreSQL that cannot be reached at start is a clear start-up failure (nothing listens on
 * localhost:5432 here; the test server is on a unix socket). */
static void test_postgresql_unreachable_refused_clearly(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    assert_int_equal(test_daemon_prepare(&d), 0);
    const char *args[] = { "--database=postgresql://tpvd@localhost/tpvd", NULL };
    /* The start fails (no port file); the log says why. */
    assert_int_not_equal(test_daemon_start(&d, args), 0);
    assert_true(test_daemon_log_count(&d, "database unavailable", false) >= 1);
    test_daemon_cleanup(&d);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_database_and_blob_dir_elsewhere),
        cmocka_unit_test(test_postgresql_unreachable_refused_clearly),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
