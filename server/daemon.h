/* daemon.h: the running service as one object: storage, HTTP front, (later) workers.
 * main.c only parses options and waits for a stop signal; everything else starts here, which is
 * also what the integration tests exercise through the real binary. */
#ifndef TPV_SRV_DAEMON_H
#define TPV_SRV_DAEMON_H

#include "server/config.h"

struct srv_daemon;

/* Opens the data dir, starts serving, writes cfg->port_file if set.  On success *out owns the
 * daemon (srv_daemon_stop).  cfg must outlive it. */
int srv_daemon_start(struct srv_daemon **out, const struct srv_config *cfg, struct tpv_err *err);

/* Orderly shutdown: stop accepting, let requests finish, close storage, free.  NULL is a no-op. */
void srv_daemon_stop(struct srv_daemon *daemon);

#endif
