/* daemon_proc.h: start the real tpvd binary (TPVD_BIN) on a free loopback port with a temporary
 * data dir, and stop it with a chosen signal.  Used by every integration test. */
#ifndef TPV_TEST_DAEMON_PROC_H
#define TPV_TEST_DAEMON_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct test_daemon {
    pid_t pid;
    uint16_t port;
    char dir[256];      /* temporary folder holding data/, port and log files */
    char data_dir[300];
    char log_path[300];
    char base_url[64];  /* http://127.0.0.1:PORT */
    /* TPV_TEST_DAEMON_DB=pg (the integration tests' "-pg" variants): the daemon's own fresh
     * database on the test server TPV_TEST_PG_URI, made at the first start and kept across
     * restarts, given as --database with --blob-dir DATA_DIR/blobs.  "" with SQLite. */
    char db_url[512];
    char db_arg[540];
    char blob_arg[340];
};

/* Creates the temporary folder and names data_dir without starting the daemon, so that a test
 * can prepare the data dir first (tokens); test_daemon_start then uses it.  0 or -1. */
int test_daemon_prepare(struct test_daemon *d);

/* Whether the daemons of this run use PostgreSQL (TPV_TEST_DAEMON_DB=pg). */
bool test_daemon_on_pg(void);

/* Runs `tpvd token ARGS --data-dir <data_dir>` (and --database in PostgreSQL mode) (e.g. "create --name ci --role write"); the first
 * line of its stdout goes to out (may be NULL).  Returns the command's exit status, -1 if it did
 * not run. */
int test_daemon_token(const struct test_daemon *d, const char *args, char *out, size_t cap);

/* Number of lines of the daemon log containing `needle`; with echo they are copied to stderr. */
int test_daemon_log_count(const struct test_daemon *d, const char *needle, bool echo);

/* Creates a fresh temporary folder (unless d->dir is already set, to restart on the same data)
 * and starts tpvd with --listen 127.0.0.1:0 plus `extra_args` (NULL-terminated, may be NULL).
 * Waits until the port file appears (10 s at most).  Returns 0, or -1 with a message on stderr
 * and the daemon log copied there. */
int test_daemon_start(struct test_daemon *d, const char *const extra_args[]);

/* Sends `sig` and waits (20 s at most, then SIGKILL).  Returns the exit status when the daemon
 * exited, 128 + signal number when a signal ended it, -1 on a wait failure. */
int test_daemon_stop(struct test_daemon *d, int sig);

/* Removes the temporary folder.  Call after the last stop. */
void test_daemon_cleanup(struct test_daemon *d);

/* Prints the daemon's log to stderr (for failing tests). */
void test_daemon_dump_log(const struct test_daemon *d);

#endif
