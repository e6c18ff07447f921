/* daemon.c: start-up and shutdown order of the service's parts (see daemon.h). */
#include "server/daemon.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/tpv_log.h"
#include "server/http.h"
#include "storage/store.h"

struct srv_daemon {
    const struct srv_config *cfg;
    struct store *store;
    struct api_env env;
    struct srv_http *http;
};

/* Written to a temporary name and renamed, so a reader never sees a half-written port. */
static int write_port_file(const char *path, uint16_t port, struct tpv_err *err)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return tpv_err_set(err, TPV_EINVAL, "port-file", "path too long");
    FILE *fp = fopen(tmp, "w");
    if (!fp)
        return tpv_err_set(err, TPV_EIO, "port-file", "cannot write %s: %s", tmp, strerror(errno));
    int bad = fprintf(fp, "%u\n", port) < 0;
    bad |= fclose(fp) != 0;
    if (bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return tpv_err_set(err, TPV_EIO, "port-file", "cannot write %s", path);
    }
    return TPV_OK;
}

int srv_daemon_start(struct srv_daemon **out, const struct srv_config *cfg, struct tpv_err *err)
{
    enum tpv_log_level level;
    if (tpv_log_parse_level(cfg->log_level, &level) != TPV_OK)
        return tpv_err_set(err, TPV_EINVAL, "log-level", "unknown log level '%s'", cfg->log_level);
    tpv_log_set_level(level);

    struct srv_daemon *d = calloc(1, sizeof *d);
    if (!d)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    d->cfg = cfg;
    int rc = store_open(&d->store, cfg->data_dir, err);
    if (rc == TPV_OK) {
        d->env.store = d->store;
        d->env.version = TPVD_VERSION;
        rc = srv_http_start(&d->http, cfg, &d->env, err);
    }
    if (rc == TPV_OK && cfg->port_file)
        rc = write_port_file(cfg->port_file, srv_http_port(d->http), err);
    if (rc != TPV_OK) {
        srv_daemon_stop(d);
        return rc;
    }
    log_info("tpvd %s listening on %s:%u data-dir=%s", TPVD_VERSION, cfg->listen_host,
             srv_http_port(d->http), cfg->data_dir);
    *out = d;
    return TPV_OK;
}

void srv_daemon_stop(struct srv_daemon *d)
{
    if (!d)
        return;
    srv_http_quiesce(d->http);
    srv_http_stop(d->http);
    store_close(d->store);
    free(d);
}
