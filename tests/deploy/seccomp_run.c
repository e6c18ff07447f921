/* seccomp_run.c: runs a command under a system-call allow list, the way systemd applies a unit's
 * SystemCallFilter= (a process that makes any other call is killed with SIGSYS).  The list comes
 * from test_systemd_unit.sh, which expands the unit's filter lines with `systemd-analyze
 * syscall-filter`, so the daemon is tested under the filter its unit file really declares.
 *
 *   seccomp_run ALLOWLIST_FILE COMMAND [ARGS...]     (one system call name per line)
 */
#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

/* Adds every name of the file to ctx; names this architecture lacks are skipped, as systemd
 * skips them.  Returns the number added, or -1 with a message. */
static int add_allowed(scmp_filter_ctx ctx, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "seccomp_run: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[128];
    int added = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, " \t\r\n")] = '\0';
        if (!line[0])
            continue;
        int nr = seccomp_syscall_resolve_name(line);
        if (nr == __NR_SCMP_ERROR)
            continue;
        int rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
        if (rc != 0) {
            fprintf(stderr, "seccomp_run: cannot allow %s: %s\n", line, strerror(-rc));
            fclose(f);
            return -1;
        }
        added++;
    }
    fclose(f);
    return added;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: seccomp_run ALLOWLIST_FILE COMMAND [ARGS...]\n");
        return 2;
    }
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
    if (!ctx) {
        fprintf(stderr, "seccomp_run: seccomp_init failed\n");
        return 1;
    }
    int n = add_allowed(ctx, argv[1]);
    /* NoNewPrivileges=yes in the unit: the filter may then be loaded without privileges. */
    if (n <= 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || seccomp_load(ctx) != 0) {
        fprintf(stderr, "seccomp_run: cannot load a filter of %d calls\n", n);
        seccomp_release(ctx);
        return 1;
    }
    seccomp_release(ctx);
    execvp(argv[2], argv + 2);
    fprintf(stderr, "seccomp_run: %s: %s\n", argv[2], strerror(errno));
    return 127;
}
