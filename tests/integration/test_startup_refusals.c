/* test_startup_refusals.c: the real tpvd refuses to start on a database it cannot trust, and says
 * what to do (issue #10): a file whose inner pages are damaged (it used to start, /readyz said
 * ready and every query failed) and an existing 0-byte file (it used to be replaced by a new empty
 * database: the tokens were gone and loopback access opened).  Each case is made from a database
 * written by the daemon itself; the refused start must exit non-zero with the message, never
 * answer /readyz with 200, and leave the file as it was. */
#include <fcntl.h>
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
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <sqlite3.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* A daemon with a token and enough studies (1 KiB of metadata each) that the studies table is a
 * b-tree of several levels; stopped cleanly, so the WAL is checkpointed into tpvd.db. */
static void make_database(struct test_daemon *d)
{
    assert_int_equal(test_daemon_prepare(d), 0);
    assert_int_equal(test_daemon_token(d, "create --name ops --role admin", NULL, 0), 0);
    assert_int_equal(test_daemon_start(d, NULL), 0);
    char token[128] = "", auth[160];
    /* Tokens exist, so the daemon requires one: a second, made beside it, gives a secret. */
    assert_int_equal(test_daemon_token(d, "create --name writer --role write", token,
                                       sizeof token), 0);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    const char *headers[] = { auth, NULL };
    char meta[1100], body[1400];
    memset(meta, 'm', 1024);
    meta[1024] = '\0';
    for (int i = 0; i < 40; i++) {
        struct http_result r;
        snprintf(body, sizeof body,
                 "{\"name\":\"s%d\",\"noise_models\":[{\"name\":\"iso\",\"kind\":\"isotropic\","
                 "\"sigma\":0.1}],\"metadata\":{\"pad\":\"%s\"}}", i, meta);
        assert_int_equal(http_json(d->base_url, "POST", "/v1/studies", body, headers, &r), 0);
        if (r.status != 201)
            fprintf(stderr, "POST /v1/studies: %ld %s\n", r.status, r.body);
        assert_int_equal(r.status, 201);
        http_result_free(&r);
    }
    assert_int_equal(test_daemon_stop(d, SIGTERM), 0);
}

/* Page size and root page of table `name`, read from the intact file. */
static void table_root(const char *db, const char *name, int *page_size, int *root)
{
    sqlite3 *raw = NULL;
    sqlite3_stmt *s = NULL;
    assert_int_equal(sqlite3_open_v2(db, &raw, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(raw, "PRAGMA page_size", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    *page_size = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    assert_int_equal(sqlite3_prepare_v2(raw, "SELECT rootpage FROM sqlite_schema WHERE name = ?1",
                                        -1, &s, NULL), SQLITE_OK);
    sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    *root = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(raw);
    assert_true(*page_size >= 512);
    assert_true(*root > 1); /* never page 1: the header stays intact */
}

/* Overwrites the first 256 bytes of page `page` (1-based): its b-tree page header and cell
 * pointers become garbage; the file header (page 1) and the file size do not change. */
static void damage_page(const char *db, int page_size, int page)
{
    int fd = open(db, O_WRONLY);
    assert_true(fd >= 0);
    unsigned char junk[256];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (unsigned char)(0xA5 ^ (i * 37));
    off_t at = (off_t)(page - 1) * page_size;
    assert_int_equal(pwrite(fd, junk, sizeof junk, at), (ssize_t)sizeof junk);
    assert_int_equal(fsync(fd), 0);
    close(fd);
}

struct outcome {
    bool exited;
    int status;      /* exit status when exited */
    bool ready_seen; /* /readyz answered 200 at some point */
};

/* Starts tpvd on d->data_dir and watches it for up to 15 s: it either exits (the refusal) or
 * writes its port file, after which /readyz is asked for a few seconds before it is stopped. */
static struct outcome run_daemon(struct test_daemon *d)
{
    struct outcome o = { 0 };
    const char *bin = getenv("TPVD_BIN");
    assert_non_null(bin);
    char port_file[320];
    snprintf(port_file, sizeof port_file, "%s/port", d->dir);
    unlink(port_file);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(d->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        execl(bin, bin, "--listen", "127.0.0.1:0", "--data-dir", d->data_dir, "--port-file",
              port_file, (char *)NULL);
        _exit(127);
    }
    int asked = 0;
    for (int waited = 0; waited < 15000; waited += 50) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            o.exited = true;
            o.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            return o;
        }
        FILE *fp = fopen(port_file, "r");
        unsigned port = 0;
        if (fp) {
            if (fscanf(fp, "%u", &port) != 1)
                port = 0;
            fclose(fp);
        }
        if (port > 0) {
            char base[64];
            struct http_result r;
            snprintf(base, sizeof base, "http://127.0.0.1:%u", port);
            if (http_json(base, "GET", "/readyz", NULL, NULL, &r) == 0) {
                if (r.status == 200)
                    o.ready_seen = true;
                http_result_free(&r);
            }
            if (++asked >= 20)
                break;
        }
        sleep_ms(50);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return o;
}

static long file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

static void test_damaged_inner_page_refused(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    make_database(&d);
    char db[400];
    snprintf(db, sizeof db, "%s/tpvd.db", d.data_dir);
    int page_size = 0, root = 0;
    table_root(db, "studies", &page_size, &root);
    assert_true(file_size(db) >= (long)root * page_size);
    damage_page(db, page_size, root);
    long size = file_size(db);

    struct outcome o = run_daemon(&d);
    if (!o.exited || o.status == 0)
        test_daemon_dump_log(&d);
    assert_false(o.ready_seen);
    assert_true(o.exited);
    assert_int_not_equal(o.status, 0);
    assert_int_equal(test_daemon_log_count(&d, "damaged", true), 1);
    assert_int_equal(test_daemon_log_count(&d, ".recover", false), 1);
    assert_int_equal(test_daemon_log_count(&d, "backup", false), 1);
    assert_int_equal(file_size(db), size); /* left as it was, for the operator to rescue */
    test_daemon_cleanup(&d);
}

static void test_empty_database_file_refused(void **state)
{
    (void)state;
    struct test_daemon d = { 0 };
    make_database(&d);
    char db[400];
    snprintf(db, sizeof db, "%s/tpvd.db", d.data_dir);
    assert_int_equal(truncate(db, 0), 0);

    struct outcome o = run_daemon(&d);
    if (!o.exited || o.status == 0)
        test_daemon_dump_log(&d);
    assert_false(o.ready_seen);
    assert_true(o.exited);
    assert_int_not_equal(o.status, 0);
    assert_int_equal(test_daemon_log_count(&d, "is empty (0 bytes)", true), 1);
    assert_int_equal(file_size(db), 0); /* not replaced by a new database */

    /* The token commands refuse it too: a token created there would be the only one. */
    assert_int_not_equal(test_daemon_token(&d, "create --name again --role admin", NULL, 0), 0);
    assert_int_equal(file_size(db), 0);
    test_daemon_cleanup(&d);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_damaged_inner_page_refused),
        cmocka_unit_test(test_empty_database_file_refused),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
