/* main.c: the tpvd daemon: load the configuration, open storage, serve HTTP until SIGTERM/SIGINT,
 * then shut down in order (stop accepting, finish requests, close the database). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/linalg.h"
#include "core/tpv_log.h"
#include "server/auth.h"
#include "server/daemon.h"

extern char **environ;

int main(int argc, char **argv)
{
    struct srv_config cfg;
    struct tpv_err err;
    sigset_t stop_signals;

    tpv_err_clear(&err);
    if (argc > 1 && strcmp(argv[1], "token") == 0)
        return srv_token_main(argc - 1, argv + 1, environ, stdout, stderr);
    int rc = srv_config_load(&cfg, argc, argv, environ, stdout, &err);
    if (rc == SRV_CONFIG_EXIT) {
        srv_config_free(&cfg);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "tpvd: %s\n", tpv_err_message(&err));
        srv_config_free(&cfg);
        return 2;
    }

    /* Block the stop signals in every thread (threads inherit the mask) and take them here. */
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct srv_daemon *daemon = NULL;
    rc = srv_daemon_start(&daemon, &cfg, &err);
    if (rc != TPV_OK) {
        log_error("startup failed: %s", tpv_err_message(&err));
        srv_config_free(&cfg);
        return 1;
    }
    int sig = 0;
    sigwait(&stop_signals, &sig);
    log_info("received %s, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    srv_daemon_stop(daemon);
    srv_config_free(&cfg);
    log_info("stopped");
    /* A canceled job's eigendecomposition may still run on its helper thread (LAPACK has no
     * cancel point): returning would run OpenBLAS's exit handler, which waits for (and can
     * deadlock with) that call.  Storage is closed and the log flushed, so leave at once. */
    if (tpv_syevd_abandoned() > 0) {
        fflush(NULL);
        _exit(0);
    }
    return 0;
}
