/* config.h: tpvd's configuration: one table of options (name, env var, type, default, bounds,
 * help) read from defaults < config file < environment < command line.
 *
 * `tpvd --help` prints the table; every limit a client can push against lives here. */
#ifndef TPV_SRV_CONFIG_H
#define TPV_SRV_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/tpv_error.h"

struct srv_config {
    char *listen;       /* "HOST:PORT" as given */
    char *listen_host;  /* parsed host without brackets */
    uint16_t listen_port;
    char *data_dir;
    char *database;     /* --database URL, NULL = sqlite:DATA_DIR/tpvd.db */
    char *blob_dir;     /* --blob-dir, NULL = DATA_DIR/blobs */
    char *config_file;
    char *port_file;
    char *log_level;
    char *fetch_allow;
    char *tls_cert;
    char *tls_key;
    char *bootstrap_token_file; /* first admin token of a fresh data dir, or NULL */
    char *db_synchronous;    /* "full" | "normal" */
    long long workers;       /* 0 = one per core */
    long long blas_threads;  /* 0 = cores / workers */
    long long http_threads;
    long long max_attempts;
    long long max_queued_jobs;
    long long max_connections;
    long long max_connections_per_ip; /* 0 = no per-address limit */
    long long request_timeout_s;
    long long shutdown_grace_s;
    long long idempotency_ttl_s;
    long long blob_gc_grace_s; /* unreferenced blobs older than this are collected */
    long long max_wait_s;
    long long max_page_size;
    long long db_connections; /* 0 = auto */
    long long job_lease_s;
    long long fetch_timeout_s;
    long long fetch_threads;
    long long webhook_timeout_s;
    long long webhook_max_attempts;
    long long webhook_backoff_ms;
    uint64_t max_body_bytes;
    uint64_t max_page_bytes;     /* byte bound of one list page */
    uint64_t max_metadata_bytes; /* metadata of one study or candidate */
    uint64_t max_blob_bytes;
    uint64_t max_job_memory;
    uint64_t job_flop_budget;  /* auto's budget for exact diagonals (flops) */
    bool insecure_no_auth;
};

enum srv_config_outcome {
    SRV_CONFIG_RUN = 0,  /* start the daemon */
    SRV_CONFIG_EXIT = 1, /* --help or --version was printed: exit 0 */
};

/* Fills *cfg from defaults, the config file (--config or TPVD_CONFIG), environment variables
 * (`envp`, NULL-terminated "NAME=value" strings; may be NULL) and argv, in rising precedence.
 * Writes --help/--version text to `out`.  Returns SRV_CONFIG_RUN, SRV_CONFIG_EXIT or a negative
 * TPV_EINVAL with err naming the option.  On any return cfg owns strings: call srv_config_free. */
int srv_config_load(struct srv_config *cfg, int argc, char *const argv[], char *const envp[],
                    FILE *out, struct tpv_err *err);

/* Releases the strings of cfg; safe on a zeroed or partially loaded config. */
void srv_config_free(struct srv_config *cfg);

/* Prints every option with its env var, default and help. */
void srv_config_print_help(FILE *out, const char *argv0);

/* Parses "HOST:PORT" or "[V6]:PORT" into a malloc'd host and a port; 0 or TPV_EINVAL. */
int srv_config_parse_listen(const char *text, char **host, uint16_t *port, struct tpv_err *err);

/* Parses a byte size "1048576", "512K", "64M", "16G" (binary units); 0 or TPV_EINVAL. */
int srv_config_parse_size(const char *text, uint64_t *out);

/* The CPUs this process may use (at least 1): its sched_getaffinity set, capped by the cgroup v2
 * cpu.max quota of its cgroup and every parent (a container limited to 2 CPUs on a 64-core node
 * gets 2), not the machine's core count. */
long srv_config_cores(void);
/* The whole CPUs of one cgroup v2 cpu.max line ("200000 100000" -> 2, at least 1 for a positive
 * quota); 0 for "max" or text it cannot read. */
long srv_config_cpu_max_limit(const char *text);

/* Effective worker and BLAS thread counts after the 0 = auto rules, never oversubscribing:
 * workers x blas_threads <= cores unless the operator asked for more explicitly. */
void srv_config_effective_threads(const struct srv_config *cfg, long *workers, long *blas_threads);

/* The database URL and blob folder the daemon (and `tpvd token`) open: --database or
 * sqlite:DATA_DIR/tpvd.db, --blob-dir or DATA_DIR/blobs.  TPV_EINVAL when they do not fit. */
int srv_config_storage(const struct srv_config *cfg, char *url, size_t url_cap, char *blob_dir,
                       size_t blob_cap, struct tpv_err *err);

#endif
