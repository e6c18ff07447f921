/* store_test.c: the backend a storage unit test runs on (see store_test.h). */
#include "tests/support/store_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/pg_test.h"

bool store_test_on_pg(void)
{
    const char *db = getenv("TPV_TEST_STORE_DB");
    if (!db || !*db || strcmp(db, "sqlite") == 0)
        return false;
    if (strcmp(db, "pg") == 0)
        return true;
    fprintf(stderr, "TPV_TEST_STORE_DB=%s: expected sqlite or pg\n", db);
    abort();
}

const char *store_test_backend(void)
{
    return store_test_on_pg() ? "pg" : "sqlite";
}

static int open_on_backend(struct store_test *t, const struct store_options *opts)
{
    struct store_options o = opts ? *opts : (struct store_options){ 0 };
    struct tpv_err err = { 0 };
    int rc;
    if (t->pg_conninfo) {
        char url[512];
        pg_test_db_url(t->pg_conninfo, url, sizeof url);
        o.blob_dir = t->blobs;
        rc = store_open_url(&t->st, url, &o, &err);
    } else {
        o.blob_dir = NULL; /* the default: <data>/blobs */
        rc = store_open_with(&t->st, t->data, &o, &err);
    }
    if (rc != TPV_OK) {
        fprintf(stderr, "store_test: open on %s: %s\n", store_test_backend(), err.message);
        return -1;
    }
    /* The variant runs on the backend it is named for, never on the other one unnoticed. */
    const char *want = t->pg_conninfo ? "postgresql" : "sqlite";
    if (strcmp(store_backend_name(t->st), want) != 0) {
        fprintf(stderr, "store_test: opened %s, wanted %s\n", store_backend_name(t->st), want);
        return -1;
    }
    return 0;
}

int store_test_open(struct store_test *t, const char *tag, const struct store_options *opts)
{
    memset(t, 0, sizeof *t);
    int n = snprintf(t->dir, sizeof t->dir, "/tmp/tpvd-%s-XXXXXX", tag);
    if (n < 0 || (size_t)n >= sizeof t->dir || !mkdtemp(t->dir)) {
        fprintf(stderr, "store_test: cannot make a folder for %s\n", tag);
        return -1;
    }
    snprintf(t->data, sizeof t->data, "%s/data", t->dir);
    if (store_test_on_pg()) {
        snprintf(t->blobs, sizeof t->blobs, "%s/blobs", t->dir);
        t->pg_conninfo = pg_test_db_create("store");
    } else {
        snprintf(t->blobs, sizeof t->blobs, "%s/blobs", t->data);
    }
    if (open_on_backend(t, opts) != 0) {
        store_test_cleanup(t); /* nothing left behind by a failed set-up */
        return -1;
    }
    return 0;
}

int store_test_reopen(struct store_test *t, const struct store_options *opts)
{
    store_close(t->st);
    t->st = NULL;
    return open_on_backend(t, opts);
}

int store_test_cleanup(struct store_test *t)
{
    store_close(t->st);
    t->st = NULL;
    pg_test_db_drop(t->pg_conninfo);
    t->pg_conninfo = NULL;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
    return system(cmd) == 0 ? 0 : -1;
}
