/* daemon_proc.h: start the real tpvd binary (TPVD_BIN) on a free loopback port with a temporary
 * data dir, and stop it with a chosen signal.  Used by every integration test. */
#ifndef TPV_TEST_DAEMON_PROC_H
#define TPV_TEST_DAEMON_PROC_H

#include <stdint.h>
#include <sys/types.h>

struct test_daemon {
    pid_t pid;
    uint16_t port;
    char dir[256];      /* temporary folder holding data/, port and log files */
    char data_dir[300];
    char log_path[300];
    char base_url[64];  /* http://127.0.0.1:PORT */
};

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
