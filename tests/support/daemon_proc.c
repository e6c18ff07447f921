/* daemon_proc.c: process control of the real daemon for integration tests (see daemon_proc.h). */
#include "tests/support/daemon_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static int read_port(const char *path, uint16_t *port)
{
    FILE *fp = fopen(path, "r");
    unsigned p = 0;
    if (!fp)
        return -1;
    int ok = fscanf(fp, "%u", &p) == 1 && p > 0 && p < 65536;
    fclose(fp);
    if (!ok)
        return -1;
    *port = (uint16_t)p;
    return 0;
}

void test_daemon_dump_log(const struct test_daemon *d)
{
    FILE *fp = fopen(d->log_path, "r");
    char line[1024];
    if (!fp)
        return;
    fprintf(stderr, "---- tpvd log (%s) ----\n", d->log_path);
    while (fgets(line, sizeof line, fp))
        fputs(line, stderr);
    fprintf(stderr, "---- end of log ----\n");
    fclose(fp);
}

bool test_daemon_on_pg(void)
{
    const char *m = getenv("TPV_TEST_DAEMON_DB");
    return m && strcmp(m, "pg") == 0;
}

/* `base` (a postgresql:// URL) with its database name replaced by `name`. */
static int url_with_db(const char *base, const char *name, char *out, size_t cap)
{
    const char *auth = strstr(base, "://");
    if (!auth)
        return -1;
    const char *path = strchr(auth + 3, '/');
    const char *query = strchr(auth + 3, '?');
    size_t head = path && (!query || path < query) ? (size_t)(path - base)
                  : query                          ? (size_t)(query - base)
                                                   : strlen(base);
    int n = snprintf(out, cap, "%.*s/%s%s", (int)head, base, name, query ? query : "");
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

/* A fresh database for this daemon on the test server (PostgreSQL mode).  0 or -1 with why. */
static int pg_database_make(struct test_daemon *d)
{
    const char *base = getenv("TPV_TEST_PG_URI");
    if (!base || !base[0]) {
        fprintf(stderr, "TPV_TEST_DAEMON_DB=pg but TPV_TEST_PG_URI is not set: this test needs "
                        "PostgreSQL (export TPV_TEST_PG_URI=$(tests/support/pg_server.sh start))\n");
        return -1;
    }
    static int counter;
    char name[64], sql[128];
    snprintf(name, sizeof name, "tpvi_%d_%d_%ld", (int)getpid(), ++counter, (long)time(NULL));
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
    PGconn *c = PQconnectdb(base);
    int rc = -1;
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult *r = PQexec(c, sql);
        rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
        PQclear(r);
    }
    if (rc != 0)
        fprintf(stderr, "cannot create test database %s: %s", name, PQerrorMessage(c));
    PQfinish(c);
    if (rc == 0 && url_with_db(base, name, d->db_url, sizeof d->db_url) != 0) {
        fprintf(stderr, "TPV_TEST_PG_URI too long\n");
        rc = -1;
    }
    return rc;
}

int test_daemon_prepare(struct test_daemon *d)
{
    if (!d->dir[0]) {
        snprintf(d->dir, sizeof d->dir, "/tmp/tpvd-test-XXXXXX");
        if (!mkdtemp(d->dir)) {
            perror("mkdtemp");
            d->dir[0] = '\0';
            return -1;
        }
    }
    snprintf(d->data_dir, sizeof d->data_dir, "%s/data", d->dir);
    snprintf(d->log_path, sizeof d->log_path, "%s/tpvd.log", d->dir);
    if (test_daemon_on_pg() && !d->db_url[0] && pg_database_make(d) != 0)
        return -1;
    if (d->db_url[0]) {
        snprintf(d->db_arg, sizeof d->db_arg, "--database=%s", d->db_url);
        snprintf(d->blob_arg, sizeof d->blob_arg, "--blob-dir=%s/blobs", d->data_dir);
    }
    return 0;
}

int test_daemon_token(const struct test_daemon *d, const char *args, char *out, size_t cap)
{
    const char *bin = getenv("TPVD_BIN");
    char cmd[1024], line[256] = "";
    if (!bin)
        return -1;
    snprintf(cmd, sizeof cmd, "'%s' token %s --data-dir '%s' %s%s%s 2>/dev/null", bin, args,
             d->data_dir, d->db_url[0] ? "'" : "", d->db_arg, d->db_url[0] ? "'" : "");
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    if (!fgets(line, sizeof line, p))
        line[0] = '\0';
    line[strcspn(line, "\n")] = '\0';
    if (out)
        snprintf(out, cap, "%s", line);
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int test_daemon_log_count(const struct test_daemon *d, const char *needle, bool echo)
{
    FILE *fp = fopen(d->log_path, "r");
    char line[4096];
    int n = 0;
    while (fp && fgets(line, sizeof line, fp)) {
        if (!strstr(line, needle))
            continue;
        n++;
        if (echo)
            fputs(line, stderr);
    }
    if (fp)
        fclose(fp);
    return n;
}

int test_daemon_start(struct test_daemon *d, const char *const extra_args[])
{
    const char *bin = getenv("TPVD_BIN");
    if (!bin) {
        fprintf(stderr, "TPVD_BIN is not set (run through meson test)\n");
        return -1;
    }
    if (test_daemon_prepare(d) != 0)
        return -1;
    char port_file[300];
    snprintf(port_file, sizeof port_file, "%s/port", d->dir);
    unlink(port_file);

    const char *argv[64];
    int argc = 0;
    argv[argc++] = bin;
    argv[argc++] = "--listen";
    argv[argc++] = "127.0.0.1:0";
    argv[argc++] = "--data-dir";
    argv[argc++] = d->data_dir;
    argv[argc++] = "--port-file";
    argv[argc++] = port_file;
    if (d->db_url[0]) {
        argv[argc++] = d->db_arg;
        argv[argc++] = d->blob_arg;
    }
    for (int i = 0; extra_args && extra_args[i] && argc < 63; i++)
        argv[argc++] = extra_args[i];
    argv[argc] = NULL;

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return -1;
    }
    if (pid == 0) {
        /* A failed cmocka assertion skips the test's stop and cleanup; the daemon must not
         * outlive the test binary and hold its port, its data dir or a database's rows. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(127);
        int fd = open(d->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    d->pid = pid;
    for (int waited = 0; waited < 10000; waited += 20) {
        if (read_port(port_file, &d->port) == 0) {
            snprintf(d->base_url, sizeof d->base_url, "http://127.0.0.1:%u", d->port);
            return 0;
        }
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "tpvd exited during start-up (status %d)\n", status);
            test_daemon_dump_log(d);
            d->pid = 0;
            return -1;
        }
        sleep_ms(20);
    }
    fprintf(stderr, "tpvd did not write its port file within 10 s\n");
    test_daemon_dump_log(d);
    return -1;
}

int test_daemon_stop(struct test_daemon *d, int sig)
{
    int status;
    if (d->pid <= 0)
        return -1;
    kill(d->pid, sig);
    for (int waited = 0; waited < 20000; waited += 10) {
        pid_t r = waitpid(d->pid, &status, WNOHANG);
        if (r == d->pid) {
            d->pid = 0;
            if (WIFEXITED(status))
                return WEXITSTATUS(status);
            return 128 + WTERMSIG(status);
        }
        if (r < 0)
            return -1;
        sleep_ms(10);
    }
    fprintf(stderr, "tpvd did not stop within 20 s of signal %d; killing it\n", sig);
    kill(d->pid, SIGKILL);
    waitpid(d->pid, &status, 0);
    d->pid = 0;
    return -1;
}

void test_daemon_cleanup(struct test_daemon *d)
{
    if (!d->dir[0] || strncmp(d->dir, "/tmp/tpvd-test-", 15) != 0)
        return;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", d->dir);
    d->dir[0] = '\0';
}
