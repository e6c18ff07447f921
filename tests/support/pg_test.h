/* pg_test.h: what a test of the PostgreSQL backend needs from the test server started by
 * tests/support/pg_server.sh (scripts/tpv test exports its URI as TPV_TEST_PG_URI): a database of
 * its own, and restarting or stopping the server.  A test that needs PostgreSQL and finds no
 * server FAILS: it never skips. */
#ifndef TPV_TEST_PG_TEST_H
#define TPV_TEST_PG_TEST_H

#include <stddef.h>

/* TPV_TEST_PG_URI, or fails the running cmocka test with how to start a server. */
const char *pg_test_uri(void);

/* Creates a fresh empty database "tpvt_<tag>_<pid>_<n>" on the test server and returns a
 * malloc'd conninfo for it (fails the test on error).  Free with pg_test_db_drop. */
char *pg_test_db_create(const char *tag);

/* The postgresql:// URL (what --database and store_open_url take) of the database of `conninfo`
 * (from pg_test_db_create): the server's URI (postgresql://tpv@/tpvd?host=DIR) with that database
 * in place of its own.  Fails the running test when it cannot be built in `cap` bytes. */
void pg_test_db_url(const char *conninfo, char *url, size_t cap);

/* Drops the database of `conninfo` (terminating leftover sessions) and frees the string. */
void pg_test_db_drop(char *conninfo);

/* Runs `pg_server.sh CMD <server>` for CMD restart | down | up; 0 on success. */
int pg_test_server(const char *cmd);

/* Runs one SQL command on `conninfo` with libpq directly (set-up and checks outside the code
 * under test); returns the first value of the first row as a malloc'd string ("" when there is
 * none), or NULL on failure with the message on stderr. */
char *pg_test_sql(const char *conninfo, const char *sql);

#endif
