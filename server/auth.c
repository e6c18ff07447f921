/* auth.c: start-up access policy and the `tpvd token` commands (see auth.h).  The per-request
 * check lives in api/auth.c; tokens are stored hashed by storage/tokens.c. */
#include "server/auth.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/tpv_log.h"
#include "storage/store.h"

/* 1 loopback, 0 not, or a getaddrinfo error (non-zero, negative EAI_* code) in *gai. */
static int host_loopback(const char *host, int *gai)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res = NULL;
    *gai = getaddrinfo(host, NULL, &hints, &res);
    if (*gai != 0 || !res)
        return 0;
    bool all = true;
    for (struct addrinfo *ai = res; ai && all; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)ai->ai_addr;
            all = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
        } else if (ai->ai_family == AF_INET6) {
            const struct in6_addr *a6 = &((const struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
            all = IN6_IS_ADDR_LOOPBACK(a6) || (IN6_IS_ADDR_V4MAPPED(a6) && a6->s6_addr[12] == 127);
        } else {
            all = false;
        }
    }
    freeaddrinfo(res);
    return all;
}

bool srv_host_is_loopback(const char *host)
{
    int gai;
    return host_loopback(host, &gai) == 1;
}

/* Reads the bootstrap token: the file's first line, 20 to API_TOKEN_MAX - 1 printable
 * characters without spaces (what `tpvd token create` prints, or any secret of that shape). */
static int bootstrap_token_read(const char *path, char token[API_TOKEN_MAX], struct tpv_err *err)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return tpv_err_set(err, TPV_EIO, "bootstrap-token-file",
                           "--bootstrap-token-file: cannot read %s: %s", path, strerror(errno));
    char line[API_TOKEN_MAX + 2];
    bool got = fgets(line, sizeof line, fp) != NULL;
    fclose(fp);
    size_t len = got ? strcspn(line, "\r\n") : 0;
    line[len] = '\0';
    bool ok = len >= 20 && len < API_TOKEN_MAX;
    for (size_t i = 0; ok && i < len; i++)
        ok = line[i] > ' ' && line[i] < 0x7f;
    if (!ok) {
        explicit_bzero(line, sizeof line);
        return tpv_err_set(err, TPV_EINVAL, "bootstrap-token-file",
                           "--bootstrap-token-file: %s must hold one token of 20 to %d "
                           "printable characters without spaces on its first line", path,
                           API_TOKEN_MAX - 1);
    }
    memcpy(token, line, len + 1);
    explicit_bzero(line, sizeof line);
    return TPV_OK;
}

/* With --bootstrap-token-file and no token on record, stores the file's token as the admin
 * token 'bootstrap', so a fresh container on a public bind starts usable without a manual
 * step.  Once any token exists the file is ignored: revoking 'bootstrap' must stay final. */
static int bootstrap_token(const struct srv_config *cfg, struct store *st, int64_t *ntokens,
                           struct tpv_err *err)
{
    if (!cfg->bootstrap_token_file || !cfg->bootstrap_token_file[0])
        return TPV_OK;
    if (*ntokens > 0) {
        log_info("--bootstrap-token-file ignored: %lld API token(s) already on record",
                 (long long)*ntokens);
        return TPV_OK;
    }
    char token[API_TOKEN_MAX], hex[65];
    int rc = bootstrap_token_read(cfg->bootstrap_token_file, token, err);
    if (rc == TPV_OK && api_token_hash(token, hex) != TPV_OK)
        rc = tpv_err_set(err, TPV_EINTERNAL, "bootstrap-token-file", "SHA-256 failed");
    explicit_bzero(token, sizeof token);
    if (rc == TPV_OK)
        rc = store_token_create(st, "bootstrap", "admin", hex, err);
    if (rc != TPV_OK)
        return rc;
    log_info("stored the admin token 'bootstrap' from --bootstrap-token-file");
    *ntokens = 1;
    return TPV_OK;
}

int srv_auth_setup(const struct srv_config *cfg, struct store *st, struct api_auth **out,
                   struct tpv_err *err)
{
    int64_t ntokens = 0;
    *out = NULL;
    int rc = store_token_count(st, &ntokens, err);
    if (rc == TPV_OK)
        rc = bootstrap_token(cfg, st, &ntokens, err);
    if (rc != TPV_OK)
        return rc;
    int gai = 0;
    bool loopback = host_loopback(cfg->listen_host, &gai) == 1;
    if (gai != 0)
        return tpv_err_set(err, TPV_EINVAL, "listen", "cannot resolve '%s': %s", cfg->listen_host,
                           gai_strerror(gai));
    if (ntokens == 0) {
        if (loopback)
            log_warn("no API token exists: open access on loopback %s for development; create "
                     "one with `tpvd token create --role admin --name NAME --data-dir %s` to "
                     "require tokens", cfg->listen_host, cfg->data_dir);
        else if (cfg->insecure_no_auth)
            log_warn("--insecure-no-auth: serving %s without authentication (no API token "
                     "exists); anyone who can reach it can read and write", cfg->listen_host);
        else
            return tpv_err_set(err, TPV_EPRECONDITION, "listen",
                               "refusing to serve non-loopback address %s without an API token: "
                               "create one with `tpvd token create --role admin --name NAME "
                               "--data-dir %s`, or pass --insecure-no-auth",
                               cfg->listen_host, cfg->data_dir);
    } else {
        log_info("access control: %lld API token(s) on record; routes need a bearer token",
                 (long long)ntokens);
    }
    if (api_auth_new(out, st, loopback || cfg->insecure_no_auth) != TPV_OK)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    return TPV_OK;
}

/* ---- tpvd token ---- */

static void token_usage(FILE *f)
{
    fprintf(f,
            "Usage: tpvd token create --name NAME --role read|write|admin [--data-dir DIR]\n"
            "       tpvd token list [--data-dir DIR]\n"
            "       tpvd token revoke NAME [--data-dir DIR]\n"
            "Manages API tokens in DIR's database directly (also while tpvd serves it).\n"
            "create prints the new token once on stdout; only its SHA-256 is stored.\n"
            "Roles: read (GET/HEAD), write (+ create and modify studies, candidates, blobs,\n"
            "jobs), admin (+ token management).  --config FILE and TPVD_DATA_DIR work as for\n"
            "the daemon.\n");
}

static int open_shared(const struct srv_config *cfg, struct store **st, FILE *errs)
{
    struct tpv_err err;
    tpv_err_clear(&err);
    char url[8192], blob_dir[4096];
    struct store_options so = { .pool_size = 1, .synchronous_full = true,
                                .busy_timeout_ms = 10000, .shared = true, .blob_dir = blob_dir };
    if (srv_config_storage(cfg, url, sizeof url, blob_dir, sizeof blob_dir, &err) != TPV_OK ||
        store_open_url(st, url, &so, &err) != TPV_OK) {
        fprintf(errs, "tpvd token: %s\n", tpv_err_message(&err));
        return 1;
    }
    return 0;
}

int srv_token_main(int argc, char *const argv[], char *const envp[], FILE *out, FILE *errs)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        token_usage(argc < 2 ? errs : out);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1], *name = NULL, *role = NULL;
    /* Our own flags are taken out; the rest (--data-dir, --config, ...) go to the config loader. */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest)
        return 1;
    int nrest = 0;
    rest[nrest++] = "tpvd";
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if ((strcmp(a, "--name") == 0 || strcmp(a, "--role") == 0) && i + 1 < argc) {
            *(a[2] == 'n' ? &name : &role) = argv[++i];
        } else if (strncmp(a, "--name=", 7) == 0) {
            name = a + 7;
        } else if (strncmp(a, "--role=", 7) == 0) {
            role = a + 7;
        } else if (a[0] != '-' && strcmp(sub, "revoke") == 0 && !name) {
            name = a;
        } else {
            rest[nrest++] = (char *)a;
        }
    }
    rest[nrest] = NULL;

    struct srv_config cfg;
    struct tpv_err err;
    tpv_err_clear(&err);
    int status = 2;
    int rc = srv_config_load(&cfg, nrest, rest, envp, out, &err);
    free(rest);
    if (rc == SRV_CONFIG_EXIT) {
        srv_config_free(&cfg);
        return 0;
    }
    if (rc < 0) {
        fprintf(errs, "tpvd token: %s\n", tpv_err_message(&err));
        srv_config_free(&cfg);
        return 2;
    }

    struct store *st = NULL;
    if (strcmp(sub, "create") == 0) {
        if (!name || !role) {
            fprintf(errs, "tpvd token create: --name and --role are required\n");
            goto done;
        }
        if (api_role_parse(role) < 0) {
            fprintf(errs, "tpvd token create: role is read, write or admin, not '%s'\n", role);
            goto done;
        }
        if (!store_token_name_valid(name)) {
            fprintf(errs, "tpvd token create: a name is 1 to %d characters of A-Z a-z 0-9 . _ -\n",
                    STORE_TOKEN_NAME_MAX);
            goto done;
        }
        status = 1;
        if (open_shared(&cfg, &st, errs) != 0)
            goto done;
        char token[API_TOKEN_MAX], hex[65];
        if (api_token_generate(token) != TPV_OK) {
            fprintf(errs, "tpvd token create: no random bytes from the kernel\n");
            goto done;
        }
        if (api_token_hash(token, hex) != TPV_OK) {
            fprintf(errs, "tpvd token create: SHA-256 failed in libcrypto\n");
            explicit_bzero(token, sizeof token);
            goto done;
        }
        if (store_token_create(st, name, role, hex, &err) != TPV_OK) {
            fprintf(errs, "tpvd token create: %s\n", tpv_err_message(&err));
            explicit_bzero(token, sizeof token);
            goto done;
        }
        fprintf(out, "%s\n", token);
        fflush(out);
        explicit_bzero(token, sizeof token);
        fprintf(errs, "token '%s' (role %s) created in %s; it is shown only this once\n", name,
                role, cfg.data_dir);
        status = 0;
    } else if (strcmp(sub, "list") == 0) {
        status = 1;
        struct store_token_row *rows = NULL;
        size_t n = 0;
        if (open_shared(&cfg, &st, errs) != 0)
            goto done;
        if (store_token_list(st, &rows, &n, &err) != TPV_OK) {
            fprintf(errs, "tpvd token list: %s\n", tpv_err_message(&err));
            goto done;
        }
        fprintf(out, "%-24s %-6s %-25s %s\n", "NAME", "ROLE", "CREATED", "REVOKED");
        for (size_t i = 0; i < n; i++)
            fprintf(out, "%-24s %-6s %-25s %s\n", rows[i].name, rows[i].role,
                    rows[i].created_at, rows[i].revoked_at[0] ? rows[i].revoked_at : "-");
        free(rows);
        status = 0;
    } else if (strcmp(sub, "revoke") == 0) {
        if (!name) {
            fprintf(errs, "tpvd token revoke: which token? (tpvd token revoke NAME)\n");
            goto done;
        }
        status = 1;
        if (open_shared(&cfg, &st, errs) != 0)
            goto done;
        if (store_token_revoke(st, name, &err) != TPV_OK) {
            fprintf(errs, "tpvd token revoke: %s\n", tpv_err_message(&err));
            goto done;
        }
        fprintf(errs, "token '%s' revoked (a running tpvd refuses it within a second)\n", name);
        status = 0;
    } else {
        fprintf(errs, "tpvd token: unknown command '%s'\n", sub);
        token_usage(errs);
    }
done:
    store_close(st);
    srv_config_free(&cfg);
    return status;
}
