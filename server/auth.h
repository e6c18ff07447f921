/* auth.h: the daemon's side of access control (DESIGN.md section 6): whether a bind may run
 * without tokens, and the `tpvd token create|list|revoke` commands that manage tokens in a data
 * dir's database directly (also while a daemon serves it). */
#ifndef TPV_SRV_AUTH_H
#define TPV_SRV_AUTH_H

#include <stdbool.h>
#include <stdio.h>

#include "api/api.h"
#include "server/config.h"

struct store;

/* Whether every address `host` resolves to is a loopback address (127.0.0.0/8, ::1). */
bool srv_host_is_loopback(const char *host);

/* Decides the access mode at start-up and creates the checker (*out, api_auth_free):
 * - tokens exist: every non-open route needs one, whatever the bind;
 * - no token, loopback bind: open access for development, with a warning in the log;
 * - no token, other bind: refused (TPV_EPRECONDITION with a message saying what to do) unless
 *   cfg->insecure_no_auth, which logs a warning instead. */
int srv_auth_setup(const struct srv_config *cfg, struct store *st, struct api_auth **out,
                   struct tpv_err *err);

/* `tpvd token ...`: argv[0] is "token".  Prints results to out and messages to errs; returns the
 * process exit status (0 done, 1 failed, 2 usage). */
int srv_token_main(int argc, char *const argv[], char *const envp[], FILE *out, FILE *errs);

#endif
