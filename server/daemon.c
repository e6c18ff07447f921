/* daemon.c: start-up and shutdown order of the service's parts (see daemon.h).
 *
 * Start: storage (recovering jobs a crash left running), metrics, workers, HTTP, port file.
 * Stop: stop accepting and answer held long-polls, let workers finish within the grace (or give
 * their jobs back to the queue), stop HTTP, close the database. */
#include "server/daemon.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/tpv_log.h"
#include "server/auth.h"
#include "server/fetch.h"
#include "server/http.h"
#include "server/webhook.h"
#include "server/worker.h"
#include "storage/store.h"

struct srv_daemon {
    const struct srv_config *cfg;
    struct store *store;
    struct api_metrics *metrics;
    struct api_cache *cache;
    struct api_auth *auth;
    struct api_env env;
    /* Read by the store hooks from any thread; hook_lock keeps them alive during a call. */
    pthread_mutex_t hook_lock;
    struct srv_workers *workers;
    struct srv_http *http;
    struct srv_fetch *fetch;
    struct srv_webhook *webhook;
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

static void on_study_changed(void *ctx, const char *study_id, int64_t version)
{
    struct srv_daemon *d = ctx;
    (void)version;
    pthread_mutex_lock(&d->hook_lock);
    srv_http_study_changed(d->http, study_id);
    srv_webhook_notify(d->webhook); /* job ends bump the version and write outbox rows */
    pthread_mutex_unlock(&d->hook_lock);
}

static void on_job_queued(void *ctx)
{
    struct srv_daemon *d = ctx;
    pthread_mutex_lock(&d->hook_lock);
    srv_workers_notify(d->workers);
    pthread_mutex_unlock(&d->hook_lock);
}

int srv_daemon_start(struct srv_daemon **out, const struct srv_config *cfg, struct tpv_err *err)
{
    enum tpv_log_level level;
    if (tpv_log_parse_level(cfg->log_level, &level) != TPV_OK)
        return tpv_err_set(err, TPV_EINVAL, "log-level", "unknown log level '%s'", cfg->log_level);
    tpv_log_set_level(level);

    /* Before any thread exists: libcurl's global state (the fetcher and webhook sender). */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "cannot initialise libcurl");
    struct srv_daemon *d = calloc(1, sizeof *d);
    if (!d)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    d->cfg = cfg;
    pthread_mutex_init(&d->hook_lock, NULL);
    long nworkers, blas;
    srv_config_effective_threads(cfg, &nworkers, &blas);
    struct store_options so = {
        .pool_size = cfg->db_connections > 0 ? (int)cfg->db_connections
                                             : (int)(cfg->http_threads + nworkers + 2),
        .synchronous_full = strcmp(cfg->db_synchronous, "full") == 0,
        .busy_timeout_ms = 5000,
    };
    char url[8192], blob_dir[4096];
    int rc = srv_config_storage(cfg, url, sizeof url, blob_dir, sizeof blob_dir, err);
    so.blob_dir = blob_dir;
    if (rc == TPV_OK)
        rc = store_open_url(&d->store, url, &so, err);
    if (rc == TPV_OK)
        store_set_event_renderer(d->store, srv_webhook_render_event);
    if (rc == TPV_OK && (api_metrics_new(&d->metrics) != TPV_OK ||
                         api_cache_new(&d->cache, 64, 8u << 20) != TPV_OK))
        rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    if (rc == TPV_OK) {
        int requeued = 0, failed = 0;
        rc = store_jobs_recover(d->store, (int)cfg->max_attempts, &requeued, &failed, err);
        if (rc == TPV_OK && (requeued || failed))
            log_warn("recovered jobs left running by a previous stop: requeued=%d failed=%d "
                     "(max-attempts=%lld)", requeued, failed, cfg->max_attempts);
    }
    if (rc == TPV_OK) {
        struct srv_fetch_options fo = { .allow = cfg->fetch_allow, .max_size = cfg->max_blob_bytes,
                                        .timeout_s = (long)cfg->fetch_timeout_s,
                                        .user_agent = "tpvd/" TPVD_VERSION };
        rc = srv_fetch_new(&d->fetch, d->store, &fo, err);
    }
    if (rc == TPV_OK) {
        struct srv_webhook_options wo = { .max_attempts = (int)cfg->webhook_max_attempts,
                                          .backoff_ms = (long)cfg->webhook_backoff_ms,
                                          .timeout_s = (long)cfg->webhook_timeout_s,
                                          .user_agent = "tpvd/" TPVD_VERSION };
        struct srv_webhook *webhook = NULL;
        rc = srv_webhook_start(&webhook, d->store, &wo, err);
        pthread_mutex_lock(&d->hook_lock);
        d->webhook = webhook;
        pthread_mutex_unlock(&d->hook_lock);
    }
    if (rc == TPV_OK) {
        struct store_hooks hooks = { on_study_changed, on_job_queued, d };
        store_set_hooks(d->store, &hooks);
        struct srv_workers *workers = NULL;
        rc = srv_workers_start(&workers, cfg, d->store, d->metrics, err);
        pthread_mutex_lock(&d->hook_lock);
        d->workers = workers;
        pthread_mutex_unlock(&d->hook_lock);
    }
    if (rc == TPV_OK)
        rc = srv_auth_setup(cfg, d->store, &d->auth, err);
    if (rc == TPV_OK) {
        d->env = (struct api_env){
            .store = d->store,
            .version = TPVD_VERSION,
            .auth = d->auth,
            .limits = {
                .max_body = cfg->max_body_bytes,
                .max_blob = cfg->max_blob_bytes,
                .max_job_memory = cfg->max_job_memory,
                .job_flop_budget = (double)cfg->job_flop_budget,
                .max_queued_jobs = cfg->max_queued_jobs,
                .max_wait_s = (int)cfg->max_wait_s,
                .max_page_size = (int)cfg->max_page_size,
                .max_page_bytes = cfg->max_page_bytes,
                .max_metadata_bytes = cfg->max_metadata_bytes,
            },
            .metrics = d->metrics,
            .cache = d->cache,
            .workers_alive = srv_workers_alive,
            .workers_ctx = d->workers,
            .fetch = srv_fetch_blob,
            .fetch_ctx = d->fetch,
        };
        struct srv_http *http = NULL;
        rc = srv_http_start(&http, cfg, &d->env, err);
        pthread_mutex_lock(&d->hook_lock);
        d->http = http;
        pthread_mutex_unlock(&d->hook_lock);
    }
    if (rc == TPV_OK && cfg->port_file)
        rc = write_port_file(cfg->port_file, srv_http_port(d->http), err);
    if (rc != TPV_OK) {
        srv_daemon_stop(d);
        return rc;
    }
    /* The backend's name only: a PostgreSQL URI may carry a password. */
    log_info("tpvd %s listening on %s:%u data-dir=%s database=%s workers=%ld blas-threads=%ld "
             "tls=%s",
             TPVD_VERSION, cfg->listen_host, srv_http_port(d->http), cfg->data_dir,
             store_backend_name(d->store), nworkers, blas, cfg->tls_cert ? "on" : "off");
    *out = d;
    return TPV_OK;
}

void srv_daemon_stop(struct srv_daemon *d)
{
    if (!d)
        return;
    /* HTTP first: no request can queue a job once the workers are gone. */
    pthread_mutex_lock(&d->hook_lock);
    struct srv_http *http = d->http;
    d->http = NULL;
    pthread_mutex_unlock(&d->hook_lock);
    srv_http_quiesce(http);
    srv_fetch_abort(d->fetch); /* a request waiting on a slow upstream answers 503 now */
    srv_http_stop(http);
    pthread_mutex_lock(&d->hook_lock);
    struct srv_workers *workers = d->workers;
    d->workers = NULL;
    pthread_mutex_unlock(&d->hook_lock);
    srv_workers_stop(workers, d->cfg ? (int)d->cfg->shutdown_grace_s : 0);
    /* After the workers: their last job ends are in the outbox, delivered now or at next start. */
    pthread_mutex_lock(&d->hook_lock);
    struct srv_webhook *webhook = d->webhook;
    d->webhook = NULL;
    pthread_mutex_unlock(&d->hook_lock);
    srv_webhook_stop(webhook);
    srv_fetch_free(d->fetch);
    store_close(d->store);
    api_metrics_free(d->metrics);
    api_cache_free(d->cache);
    api_auth_free(d->auth);
    pthread_mutex_destroy(&d->hook_lock);
    free(d);
}
