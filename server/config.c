/* config.c: the option table behind struct srv_config and its loaders (see config.h). */
#include "server/config.h"

#include <ctype.h>
#include <sched.h>
#include <stdio.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef TPVD_VERSION
#define TPVD_VERSION "unknown"
#endif

enum opt_type { OPT_STRING, OPT_INT, OPT_SIZE, OPT_BOOL };

struct config_option {
    const char *name; /* long flag without "--", also the config-file key */
    const char *env;
    enum opt_type type;
    size_t offset;
    const char *defval; /* NULL: unset */
    long long min, max; /* OPT_INT and OPT_SIZE */
    const char *help;
};

#define F(field) offsetof(struct srv_config, field)
#define KiB 1024LL
#define MiB (1024LL * KiB)
#define GiB (1024LL * MiB)
#define TiB (1024LL * GiB)

static const struct config_option options[] = {
    { "listen", "TPVD_LISTEN", OPT_STRING, F(listen), "127.0.0.1:8080", 0, 0,
      "address to serve on, HOST:PORT or [IPV6]:PORT; port 0 picks a free one" },
    { "data-dir", "TPVD_DATA_DIR", OPT_STRING, F(data_dir), "./var", 0, 0,
      "folder for the database and the blob store (the defaults of --database and --blob-dir)" },
    { "database", "TPVD_DATABASE", OPT_STRING, F(database), NULL, 0, 0,
      "database URL: sqlite:PATH (default sqlite:DATA_DIR/tpvd.db) or postgresql://... (a libpq "
      "URI, for several nodes on one database)" },
    { "blob-dir", "TPVD_BLOB_DIR", OPT_STRING, F(blob_dir), NULL, 0, 0,
      "folder of the blob store (default DATA_DIR/blobs); nodes on one database share it" },
    { "config", "TPVD_CONFIG", OPT_STRING, F(config_file), NULL, 0, 0,
      "config file of `name = value` lines with the option names of this list" },
    { "port-file", "TPVD_PORT_FILE", OPT_STRING, F(port_file), NULL, 0, 0,
      "write the bound port to this file once listening (for tests and supervisors)" },
    { "log-level", "TPVD_LOG_LEVEL", OPT_STRING, F(log_level), "info", 0, 0,
      "debug, info, warn or error" },
    { "workers", "TPVD_WORKERS", OPT_INT, F(workers), "0", 0, 256,
      "job worker threads; 0 = one per CPU this process may use (affinity and cgroup cpu.max)" },
    { "blas-threads", "TPVD_BLAS_THREADS", OPT_INT, F(blas_threads), "0", 0, 256,
      "threads per job (BLAS and the model runtime); 0 = usable CPUs / workers" },
    /* The name for the same setting; whichever is given last wins. */
    { "threads-per-job", "TPVD_THREADS_PER_JOB", OPT_INT, F(blas_threads), NULL, 0, 256,
      "same as blas-threads" },
    { "http-threads", "TPVD_HTTP_THREADS", OPT_INT, F(http_threads), "2", 1, 64,
      "threads serving HTTP connections" },
    { "max-attempts", "TPVD_MAX_ATTEMPTS", OPT_INT, F(max_attempts), "3", 1, 100,
      "attempts before a job interrupted by crashes fails" },
    { "max-queued-jobs", "TPVD_MAX_QUEUED_JOBS", OPT_INT, F(max_queued_jobs), "1000", 1, 10000000,
      "queued jobs beyond which submissions get 429" },
    { "max-connections", "TPVD_MAX_CONNECTIONS", OPT_INT, F(max_connections), "512", 1, 100000,
      "simultaneous HTTP connections; more are closed at accept" },
    { "max-connections-per-ip", "TPVD_MAX_CONNECTIONS_PER_IP", OPT_INT,
      F(max_connections_per_ip), "128", 0, 100000,
      "simultaneous HTTP connections from one client address; 0 = no limit (behind a proxy)" },
    { "request-timeout", "TPVD_REQUEST_TIMEOUT", OPT_INT, F(request_timeout_s), "60", 1, 86400,
      "seconds a connection may stay silent (idle keep-alive, or a client stalling mid-request) "
      "before it is closed" },
    { "shutdown-grace", "TPVD_SHUTDOWN_GRACE", OPT_INT, F(shutdown_grace_s), "30", 0, 86400,
      "seconds running jobs get to finish on SIGTERM before they are re-queued" },
    { "max-body", "TPVD_MAX_BODY", OPT_SIZE, F(max_body_bytes), "1M", 1 * KiB, 1 * GiB,
      "largest JSON request body (bytes; K/M/G suffixes)" },
    { "max-blob", "TPVD_MAX_BLOB", OPT_SIZE, F(max_blob_bytes), "16G", 1 * KiB, 64 * TiB,
      "largest blob upload" },
    { "max-job-memory", "TPVD_MAX_JOB_MEMORY", OPT_SIZE, F(max_job_memory), "4G", 1 * MiB,
      64 * TiB, "memory one job may use; larger jobs are refused with 507" },
    { "job-flop-budget", "TPVD_JOB_FLOP_BUDGET", OPT_SIZE, F(job_flop_budget), "1T", 0, 64 * TiB,
      "flops a job may spend on exact Jacobian diagonals before `auto` switches to Hutchinson over "
      "output projections (large K); 0 = always exact" },
    { "idempotency-ttl", "TPVD_IDEMPOTENCY_TTL", OPT_INT, F(idempotency_ttl_s), "86400", 60,
      31536000, "seconds an Idempotency-Key's first answer is replayed; later it is a new request" },
    { "blob-gc-grace", "TPVD_BLOB_GC_GRACE", OPT_INT, F(blob_gc_grace_s), "86400", 1, 31536000,
      "seconds a blob no study, candidate or job references is kept (from its last upload or "
      "release) before garbage collection deletes it" },
    { "max-wait", "TPVD_MAX_WAIT", OPT_INT, F(max_wait_s), "60", 1, 3600,
      "longest a ranking request may be held with wait= (seconds)" },
    { "max-page-size", "TPVD_MAX_PAGE_SIZE", OPT_INT, F(max_page_size), "500", 1, 10000,
      "largest page_size of list requests" },
    { "max-page-bytes", "TPVD_MAX_PAGE_BYTES", OPT_SIZE, F(max_page_bytes), "4M", 64 * KiB,
      1 * GiB, "bytes of items one list page may carry; the page ends early (next_page_token "
      "continues) but always holds one item" },
    { "max-metadata-bytes", "TPVD_MAX_METADATA_BYTES", OPT_SIZE, F(max_metadata_bytes), "64K",
      1 * KiB, 1 * GiB, "largest metadata of one study or candidate, as compact JSON (413 beyond)" },
    { "db-synchronous", "TPVD_DB_SYNCHRONOUS", OPT_STRING, F(db_synchronous), "full", 0, 0,
      "SQLite synchronous mode: full (every commit survives power loss) or normal (WAL: may "
      "lose the last commits on power loss, never on a crash of tpvd)" },
    { "db-connections", "TPVD_DB_CONNECTIONS", OPT_INT, F(db_connections), "0", 0, 256,
      "database connections in the pool; 0 = http threads + workers + 2" },
    { "job-lease", "TPVD_JOB_LEASE", OPT_INT, F(job_lease_s), "120", 5, 86400,
      "seconds a claimed job stays leased without a heartbeat before it is re-queued" },
    { "fetch-allow", "TPVD_FETCH_ALLOW", OPT_STRING, F(fetch_allow), "", 0, 0,
      "comma-separated hosts (HOST or HOST:PORT) blob URLs may be fetched from, redirects "
      "included (none by default)" },
    { "fetch-timeout", "TPVD_FETCH_TIMEOUT", OPT_INT, F(fetch_timeout_s), "300", 1, 86400,
      "seconds one blob URL fetch may take, redirects included (the request waits for it)" },
    { "fetch-threads", "TPVD_FETCH_THREADS", OPT_INT, F(fetch_threads), "4", 1, 64,
      "threads that run requests with blob URLs (their connection waits, HTTP threads do not)" },
    { "webhook-timeout", "TPVD_WEBHOOK_TIMEOUT", OPT_INT, F(webhook_timeout_s), "10", 1, 300,
      "seconds one webhook delivery attempt may take" },
    { "webhook-max-attempts", "TPVD_WEBHOOK_MAX_ATTEMPTS", OPT_INT, F(webhook_max_attempts), "8",
      1, 100, "delivery attempts of a webhook event before it is marked failed" },
    { "webhook-backoff-ms", "TPVD_WEBHOOK_BACKOFF_MS", OPT_INT, F(webhook_backoff_ms), "1000", 10,
      3600000, "delay before a webhook's second attempt (ms), doubling after, with jitter" },
    { "tls-cert", "TPVD_TLS_CERT", OPT_STRING, F(tls_cert), NULL, 0, 0,
      "PEM certificate (chain): serve HTTPS instead of HTTP" },
    { "tls-key", "TPVD_TLS_KEY", OPT_STRING, F(tls_key), NULL, 0, 0, "PEM private key for --tls-cert" },
    { "insecure-no-auth", "TPVD_INSECURE_NO_AUTH", OPT_BOOL, F(insecure_no_auth), "false", 0, 0,
      "allow serving a non-loopback address without any token" },
    { "bootstrap-token-file", "TPVD_BOOTSTRAP_TOKEN_FILE", OPT_STRING, F(bootstrap_token_file),
      NULL, 0, 0, "file holding the first admin token (named 'bootstrap'), stored when the "
      "database has no token yet (a fresh container); ignored once any token exists" },
};
#define OPTION_COUNT (sizeof options / sizeof options[0])

static const struct config_option *option_find(const char *name, size_t len)
{
    for (size_t i = 0; i < OPTION_COUNT; i++)
        if (strlen(options[i].name) == len && memcmp(options[i].name, name, len) == 0)
            return &options[i];
    return NULL;
}

int srv_config_parse_size(const char *text, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)text[0]))
        return TPV_EINVAL;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno == ERANGE)
        return TPV_EINVAL;
    uint64_t mult = 1;
    switch (toupper((unsigned char)*end)) {
    case '\0': break;
    case 'K': mult = KiB; end++; break;
    case 'M': mult = MiB; end++; break;
    case 'G': mult = GiB; end++; break;
    case 'T': mult = TiB; end++; break;
    default: return TPV_EINVAL;
    }
    if (mult > 1 && (*end == 'i' || *end == 'I'))
        end++;
    if (mult > 1 && (*end == 'b' || *end == 'B'))
        end++;
    if (*end != '\0')
        return TPV_EINVAL;
    uint64_t bytes;
    if (__builtin_mul_overflow((uint64_t)v, mult, &bytes))
        return TPV_EINVAL;
    *out = bytes;
    return TPV_OK;
}

static int parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = { "1", "true", "yes", "on" };
    static const char *const no[] = { "0", "false", "no", "off" };
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *out = true;
            return TPV_OK;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *out = false;
            return TPV_OK;
        }
    }
    return TPV_EINVAL;
}

/* Stores `value` into the field of `opt`, checking type and bounds. `origin` says where the value
 * came from ("--workers", "TPVD_WORKERS", "tpvd.conf:3") for the error message. */
static int option_set(struct srv_config *cfg, const struct config_option *opt, const char *value,
                      const char *origin, struct tpv_err *err)
{
    char *base = (char *)cfg + opt->offset;
    switch (opt->type) {
    case OPT_STRING: {
        char *copy = strdup(value);
        if (!copy)
            return tpv_err_set(err, TPV_ENOMEM, opt->name, "out of memory");
        free(*(char **)base);
        *(char **)base = copy;
        return TPV_OK;
    }
    case OPT_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end != '\0')
            return tpv_err_set(err, TPV_EINVAL, opt->name, "%s: '%s' is not an integer", origin,
                               value);
        if (v < opt->min || v > opt->max)
            return tpv_err_set(err, TPV_EINVAL, opt->name, "%s: %lld is outside [%lld, %lld]",
                               origin, v, opt->min, opt->max);
        *(long long *)base = v;
        return TPV_OK;
    }
    case OPT_SIZE: {
        uint64_t v;
        if (srv_config_parse_size(value, &v) != TPV_OK)
            return tpv_err_set(err, TPV_EINVAL, opt->name,
                               "%s: '%s' is not a size (bytes with optional K/M/G/T suffix)",
                               origin, value);
        if (v < (uint64_t)opt->min || v > (uint64_t)opt->max)
            return tpv_err_set(err, TPV_EINVAL, opt->name,
                               "%s: %llu bytes is outside [%lld, %lld]", origin,
                               (unsigned long long)v, opt->min, opt->max);
        *(uint64_t *)base = v;
        return TPV_OK;
    }
    case OPT_BOOL:
        if (parse_bool(value, (bool *)base) != TPV_OK)
            return tpv_err_set(err, TPV_EINVAL, opt->name, "%s: '%s' is not a boolean", origin,
                               value);
        return TPV_OK;
    }
    return tpv_err_set(err, TPV_EINTERNAL, opt->name, "unknown option type");
}

static int apply_defaults(struct srv_config *cfg, struct tpv_err *err)
{
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        if (!options[i].defval)
            continue;
        int rc = option_set(cfg, &options[i], options[i].defval, "default", err);
        if (rc != TPV_OK)
            return rc;
    }
    return TPV_OK;
}

static const char *env_lookup(char *const envp[], const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; envp && envp[i]; i++)
        if (strncmp(envp[i], name, len) == 0 && envp[i][len] == '=')
            return envp[i] + len + 1;
    return NULL;
}

static int apply_env(struct srv_config *cfg, char *const envp[], struct tpv_err *err)
{
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const char *value = env_lookup(envp, options[i].env);
        if (!value)
            continue;
        int rc = option_set(cfg, &options[i], value, options[i].env, err);
        if (rc != TPV_OK)
            return rc;
    }
    return TPV_OK;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

static int apply_file(struct srv_config *cfg, const char *path, struct tpv_err *err)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return tpv_err_set(err, TPV_EINVAL, "config", "cannot open config file %s: %s", path,
                           strerror(errno));
    char line[4096];
    int lineno = 0, rc = TPV_OK;
    while (rc == TPV_OK && fgets(line, sizeof line, fp)) {
        lineno++;
        char origin[PATH_MAX + 32];
        snprintf(origin, sizeof origin, "%s:%d", path, lineno);
        char *text = trim(line);
        if (text[0] == '\0' || text[0] == '#')
            continue;
        char *eq = strchr(text, '=');
        if (!eq) {
            rc = tpv_err_set(err, TPV_EINVAL, "config", "%s: expected `name = value`", origin);
            break;
        }
        *eq = '\0';
        char *key = trim(text), *value = trim(eq + 1);
        const struct config_option *opt = option_find(key, strlen(key));
        if (!opt || strcmp(key, "config") == 0) {
            rc = tpv_err_set(err, TPV_EINVAL, "config", "%s: unknown option '%s'", origin, key);
            break;
        }
        rc = option_set(cfg, opt, value, origin, err);
    }
    fclose(fp);
    return rc;
}

void srv_config_print_help(FILE *out, const char *argv0)
{
    fprintf(out,
            "Usage: %s [OPTION]...\n"
            "tpvd %s: label-free model selection by Test Prediction Variance, over HTTP.\n\n"
            "Options (each also read from its environment variable or a --config file;\n"
            "command line > environment > config file > default):\n",
            argv0, TPVD_VERSION);
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const struct config_option *o = &options[i];
        char flag[64];
        snprintf(flag, sizeof flag, "--%s%s", o->name, o->type == OPT_BOOL ? "" : " VALUE");
        fprintf(out, "  %-26s %s\n  %-26s [env %s%s%s%s]\n", flag, o->help, "", o->env,
                o->defval ? ", default '" : "", o->defval ? o->defval : "",
                o->defval ? "'" : "");
    }
    fprintf(out, "  %-26s %s\n  %-26s %s\n", "--help", "print this help and exit", "--version",
            "print the version and exit");
}

/* Pass 1 finds --config (and --help/--version) before anything else is applied. */
static int scan_special_flags(int argc, char *const argv[], const char **config_path, int *special)
{
    *special = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            *special = 'h';
        else if (strcmp(argv[i], "--version") == 0 && *special == 0)
            *special = 'v';
        else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            *config_path = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            *config_path = argv[i] + 9;
    }
    return TPV_OK;
}

static int apply_argv(struct srv_config *cfg, int argc, char *const argv[], struct tpv_err *err)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0)
            return tpv_err_set(err, TPV_EINVAL, arg, "unexpected argument '%s' (see --help)", arg);
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct config_option *opt = option_find(name, len);
        if (!opt)
            return tpv_err_set(err, TPV_EINVAL, arg, "unknown option '%.*s' (see --help)",
                               (int)len + 2, arg);
        const char *value;
        if (eq)
            value = eq + 1;
        else if (opt->type == OPT_BOOL)
            value = "true";
        else if (i + 1 < argc)
            value = argv[++i];
        else
            return tpv_err_set(err, TPV_EINVAL, opt->name, "option --%s needs a value", opt->name);
        char origin[80];
        snprintf(origin, sizeof origin, "--%s", opt->name);
        int rc = option_set(cfg, opt, value, origin, err);
        if (rc != TPV_OK)
            return rc;
    }
    return TPV_OK;
}

int srv_config_parse_listen(const char *text, char **host, uint16_t *port, struct tpv_err *err)
{
    const char *colon, *hbeg = text;
    size_t hlen;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':')
            return tpv_err_set(err, TPV_EINVAL, "listen", "'%s' is not [IPV6]:PORT", text);
        hbeg = text + 1;
        hlen = (size_t)(close - hbeg);
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (!colon)
            return tpv_err_set(err, TPV_EINVAL, "listen", "'%s' is not HOST:PORT", text);
        hlen = (size_t)(colon - text);
    }
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (hlen == 0 || colon[1] == '\0' || *end != '\0' || errno || p < 0 || p > 65535)
        return tpv_err_set(err, TPV_EINVAL, "listen", "'%s' is not HOST:PORT with a port 0-65535",
                           text);
    *host = strndup(hbeg, hlen);
    if (!*host)
        return tpv_err_set(err, TPV_ENOMEM, "listen", "out of memory");
    *port = (uint16_t)p;
    return TPV_OK;
}

int srv_config_load(struct srv_config *cfg, int argc, char *const argv[], char *const envp[],
                    FILE *out, struct tpv_err *err)
{
    const char *config_path = NULL;
    int special, rc;

    memset(cfg, 0, sizeof *cfg);
    scan_special_flags(argc, argv, &config_path, &special);
    if (special == 'h') {
        srv_config_print_help(out, argc > 0 ? argv[0] : "tpvd");
        return SRV_CONFIG_EXIT;
    }
    if (special == 'v') {
        fprintf(out, "tpvd %s\n", TPVD_VERSION);
        return SRV_CONFIG_EXIT;
    }
    if (!config_path)
        config_path = env_lookup(envp, "TPVD_CONFIG");

    rc = apply_defaults(cfg, err);
    if (rc == TPV_OK && config_path)
        rc = apply_file(cfg, config_path, err);
    if (rc == TPV_OK)
        rc = apply_env(cfg, envp, err);
    if (rc == TPV_OK)
        rc = apply_argv(cfg, argc, argv, err);
    if (rc == TPV_OK)
        rc = srv_config_parse_listen(cfg->listen, &cfg->listen_host, &cfg->listen_port, err);
    if (rc == TPV_OK && strcmp(cfg->db_synchronous, "full") != 0 &&
        strcmp(cfg->db_synchronous, "normal") != 0)
        rc = tpv_err_set(err, TPV_EINVAL, "db-synchronous",
                         "--db-synchronous is 'full' or 'normal', not '%s'", cfg->db_synchronous);
    if (rc == TPV_OK && (cfg->tls_cert == NULL) != (cfg->tls_key == NULL))
        rc = tpv_err_set(err, TPV_EINVAL, cfg->tls_cert ? "tls-key" : "tls-cert",
                         "--tls-cert and --tls-key go together");
    return rc == TPV_OK ? SRV_CONFIG_RUN : rc;
}

int srv_config_storage(const struct srv_config *cfg, char *url, size_t url_cap, char *blob_dir,
                       size_t blob_cap, struct tpv_err *err)
{
    int n = cfg->database && cfg->database[0]
                ? snprintf(url, url_cap, "%s", cfg->database)
                : snprintf(url, url_cap, "sqlite:%s/tpvd.db", cfg->data_dir);
    if (n < 0 || (size_t)n >= url_cap)
        return tpv_err_set(err, TPV_EINVAL, "database", "--database is too long");
    n = cfg->blob_dir && cfg->blob_dir[0] ? snprintf(blob_dir, blob_cap, "%s", cfg->blob_dir)
                                          : snprintf(blob_dir, blob_cap, "%s/blobs", cfg->data_dir);
    if (n < 0 || (size_t)n >= blob_cap)
        return tpv_err_set(err, TPV_EINVAL, "blob-dir", "--blob-dir is too long");
    return TPV_OK;
}

void srv_config_free(struct srv_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < OPTION_COUNT; i++)
        if (options[i].type == OPT_STRING)
            free(*(char **)((char *)cfg + options[i].offset));
    free(cfg->listen_host);
    memset(cfg, 0, sizeof *cfg);
}

long srv_config_cpu_max_limit(const char *text)
{
    char quota[32];
    long long period = 0;
    if (!text || sscanf(text, "%31s %lld", quota, &period) < 1 || strcmp(quota, "max") == 0)
        return 0;
    char *end;
    errno = 0;
    long long q = strtoll(quota, &end, 10);
    if (errno || *end || q <= 0)
        return 0;
    if (period <= 0)
        period = 100000; /* the kernel's default period when the line has none */
    long long n = q / period; /* a fractional CPU is not a thread's worth: round down */
    return n >= 1 ? (long)n : 1;
}

/* The cgroup v2 quota of this process: the smallest cpu.max limit from its cgroup up to the
 * root (a parent's quota binds its children), 0 when none or no cgroup v2. */
static long cgroup_cpu_limit(void)
{
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f)
        return 0;
    char line[4096], path[4200] = "";
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "0::", 3) == 0) {
            line[strcspn(line, "\n")] = 0;
            snprintf(path, sizeof path, "%s", line + 3);
            break;
        }
    fclose(f);
    long best = 0;
    for (;;) {
        char file[4400], buf[128];
        snprintf(file, sizeof file, "/sys/fs/cgroup%s/cpu.max", strcmp(path, "/") ? path : "");
        FILE *c = fopen(file, "r");
        if (c) {
            if (fgets(buf, sizeof buf, c)) {
                long n = srv_config_cpu_max_limit(buf);
                if (n > 0 && (best == 0 || n < best))
                    best = n;
            }
            fclose(c);
        }
        char *slash = strrchr(path, '/');
        if (!slash || slash == path)
            break;
        *slash = 0;
    }
    return best;
}

long srv_config_cores(void)
{
    long n = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        n = CPU_COUNT(&set);
    if (n <= 0)
        n = sysconf(_SC_NPROCESSORS_ONLN);
    long q = cgroup_cpu_limit();
    if (q > 0 && q < n)
        n = q;
    return n > 0 ? n : 1;
}

void srv_config_effective_threads(const struct srv_config *cfg, long *workers, long *blas_threads)
{
    long cores = srv_config_cores();
    long w = cfg->workers > 0 ? (long)cfg->workers : cores;
    long b = cfg->blas_threads > 0 ? (long)cfg->blas_threads : cores / w;
    *workers = w;
    *blas_threads = b > 0 ? b : 1;
}
