/* store_test.h: the store a storage unit test runs on.  The same test binary runs on SQLite (the
 * default) and, with TPV_TEST_STORE_DB=pg (the "-pg" variants in tests/unit/meson.build), on a
 * fresh database of the test PostgreSQL server (tests/support/pg_test.h), so that every test of
 * the dispatcher (storage/store.h) holds the same assertions on both backends.  Tests about one
 * backend by nature (SQLite's file lock, PRAGMAs) are listed by main() for that backend only. */
#ifndef TPV_TEST_STORE_TEST_H
#define TPV_TEST_STORE_TEST_H

#include <stdbool.h>

#include "storage/store.h"

/* Whether TPV_TEST_STORE_DB asks for PostgreSQL ("pg"); anything else but "" or "sqlite" aborts
 * the test binary, so a misspelt variant never runs on SQLite unnoticed. */
bool store_test_on_pg(void);

/* "sqlite" or "pg", for messages and names. */
const char *store_test_backend(void);

struct store_test {
    char dir[64];     /* the test's temporary folder, removed by store_test_cleanup */
    char data[96];    /* SQLite: the data dir <dir>/data (database and blobs/ inside) */
    char blobs[128];  /* the blob folder: <dir>/data/blobs (SQLite) or <dir>/blobs (PostgreSQL) */
    char *pg_conninfo; /* PostgreSQL: the fixture's own database (NULL on SQLite) */
    struct store *st;
};

/* Makes the temporary folder /tmp/tpvd-<tag>-XXXXXX (and, on PostgreSQL, a fresh database) and
 * opens the store on it with `opts` (NULL for the defaults; its blob_dir is ignored).  0, or -1
 * with the reason on stderr and nothing left behind.  Without a PostgreSQL test server the "pg"
 * variant fails the running test (it never skips). */
int store_test_open(struct store_test *t, const char *tag, const struct store_options *opts);

/* Closes and opens the store again on the same database and blob folder (what a restart sees).
 * 0, or -1 with the reason on stderr. */
int store_test_reopen(struct store_test *t, const struct store_options *opts);

/* Closes the store, drops the PostgreSQL database and removes the folder.  0, or -1. */
int store_test_cleanup(struct store_test *t);

#endif
