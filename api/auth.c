/* auth.c: bearer tokens with roles (DESIGN.md section 6): token generation and hashing, and the
 * per-request check the transport runs before it reads any body.
 *
 * Only SHA-256 hashes are stored (storage/tokens.c).  A request's token is hashed, looked up by
 * hash (one indexed read) and the stored hash compared with CRYPTO_memcmp.  Found tokens are kept
 * in a small direct-mapped cache for AUTH_TTL_NS so that a hot polling loop costs no database
 * read; revocations by `tpvd token revoke` (another process) are therefore seen within that
 * time.  Unknown tokens are never cached (a client cannot fill the cache with garbage). */
#include "api/handlers.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "core/tpv_log.h"
#include "storage/store.h"

#define AUTH_TTL_NS 1000000000LL /* a second */
#define AUTH_CACHE_SLOTS 64
#define AUTH_HEADER_MAX 512      /* longer Authorization values are refused unread */

struct auth_slot {
    unsigned char hash[32];
    int64_t expires_ns; /* 0: empty */
    enum api_role role;
    bool revoked;
};

struct api_auth {
    struct store *store;
    bool open_without_tokens;
    /* Once a token exists it never goes away (revoked tokens stay), so this only flips to true. */
    _Atomic bool tokens_exist;
    _Atomic int64_t tokens_checked_ns;
    pthread_mutex_t lock;
    struct auth_slot slots[AUTH_CACHE_SLOTS];
};

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

const char *api_role_name(enum api_role role)
{
    switch (role) {
    case API_ROLE_OPEN: return "none";
    case API_ROLE_READ: return "read";
    case API_ROLE_WRITE: return "write";
    case API_ROLE_ADMIN: return "admin";
    }
    return "unknown";
}

int api_role_parse(const char *name)
{
    if (!name)
        return -1;
    if (strcmp(name, "read") == 0)
        return API_ROLE_READ;
    if (strcmp(name, "write") == 0)
        return API_ROLE_WRITE;
    if (strcmp(name, "admin") == 0)
        return API_ROLE_ADMIN;
    return -1;
}

int api_auth_new(struct api_auth **out, struct store *st, bool open_without_tokens)
{
    struct api_auth *a = calloc(1, sizeof *a);
    *out = NULL;
    if (!a)
        return TPV_ENOMEM;
    a->store = st;
    a->open_without_tokens = open_without_tokens;
    atomic_init(&a->tokens_exist, false);
    atomic_init(&a->tokens_checked_ns, 0);
    pthread_mutex_init(&a->lock, NULL);
    *out = a;
    return TPV_OK;
}

void api_auth_free(struct api_auth *a)
{
    if (!a)
        return;
    pthread_mutex_destroy(&a->lock);
    free(a);
}

/* api_auth_is_open, and in *rc why the store could not say (TPV_OK when it could): a database
 * that is down is a 503 for the client, not a 401 it would take for a bad token. */
static bool auth_open_check(struct api_auth *a, int *rc)
{
    *rc = TPV_OK;
    if (!a->open_without_tokens || atomic_load(&a->tokens_exist))
        return false;
    int64_t now = mono_ns();
    if (now - atomic_load(&a->tokens_checked_ns) < AUTH_TTL_NS)
        return true;
    int64_t n = 0;
    struct tpv_err err;
    tpv_err_clear(&err);
    *rc = store_token_count(a->store, &n, &err);
    if (*rc != TPV_OK) {
        log_error("auth: cannot count tokens: %s", tpv_err_message(&err));
        return false; /* fail closed */
    }
    if (n > 0) {
        atomic_store(&a->tokens_exist, true);
        if (atomic_load(&a->tokens_checked_ns) != 0) /* open access was in force until now */
            log_warn("auth: an API token now exists: open access ends, every route but "
                     "/healthz, /readyz and /openapi.json needs a token");
        return false;
    }
    atomic_store(&a->tokens_checked_ns, now);
    return true;
}

bool api_auth_is_open(struct api_auth *a)
{
    int rc;
    return auth_open_check(a, &rc);
}

/* TPV_OK, or TPV_EINTERNAL when libcrypto fails: md is then undefined and must not be used (an
 * unchecked failure would compare stale stack bytes against the token cache). */
static int sha256(const void *data, size_t len, unsigned char md[32])
{
    unsigned int n = 0;
    unsigned char full[EVP_MAX_MD_SIZE];
    if (EVP_Digest(data, len, full, &n, EVP_sha256(), NULL) != 1 || n != 32)
        return TPV_EINTERNAL;
    memcpy(md, full, 32);
    return TPV_OK;
}

static void to_hex(const unsigned char *b, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = '\0';
}

int api_token_hash(const char *token, char hex[65])
{
    unsigned char md[32];
    if (sha256(token, strlen(token), md) != TPV_OK)
        return TPV_EINTERNAL;
    to_hex(md, 32, hex);
    return TPV_OK;
}

int api_token_generate(char out[API_TOKEN_MAX])
{
    static const char b64url[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char r[33]; /* 32 random bytes; the 33rd pads the last group and is not used */
    size_t got = 0;
    while (got < 32) {
        ssize_t n = getrandom(r + got, 32 - got, 0);
        if (n <= 0)
            return TPV_EIO;
        got += (size_t)n;
    }
    r[32] = 0;
    char *p = out + snprintf(out, API_TOKEN_MAX, "tpv_");
    /* 32 bytes = 10 groups of 3 + 2 bytes: 43 characters without padding. */
    for (size_t i = 0; i < 33; i += 3) {
        uint32_t v = (uint32_t)r[i] << 16 | (uint32_t)r[i + 1] << 8 | (uint32_t)r[i + 2];
        *p++ = b64url[(v >> 18) & 63];
        *p++ = b64url[(v >> 12) & 63];
        *p++ = b64url[(v >> 6) & 63];
        if (i + 3 < 33)
            *p++ = b64url[v & 63];
    }
    *p = '\0';
    explicit_bzero(r, sizeof r);
    return TPV_OK;
}

/* Looks the token up: cache first, then the store.  Returns true with *role when it is a live
 * token. */
static bool token_role(struct api_auth *a, const char *token, size_t len, enum api_role *role,
                       const char *rid, int *lookup_rc)
{
    *lookup_rc = TPV_OK;
    unsigned char md[32];
    if (sha256(token, len, md) != TPV_OK) {
        log_error("rid=%s auth: SHA-256 failed; token refused", rid ? rid : "-");
        return false;
    }
    struct auth_slot *slot = &a->slots[md[0] % AUTH_CACHE_SLOTS];
    int64_t now = mono_ns();

    pthread_mutex_lock(&a->lock);
    if (slot->expires_ns > now && CRYPTO_memcmp(slot->hash, md, 32) == 0) {
        bool ok = !slot->revoked;
        *role = slot->role;
        pthread_mutex_unlock(&a->lock);
        return ok;
    }
    pthread_mutex_unlock(&a->lock);

    char hex[65];
    to_hex(md, 32, hex);
    struct store_token tok;
    struct tpv_err err;
    tpv_err_clear(&err);
    int rc = store_token_find(a->store, hex, &tok, &err);
    if (rc != TPV_OK) {
        *lookup_rc = rc == TPV_ENOTFOUND ? TPV_OK : rc;
        if (rc != TPV_ENOTFOUND)
            log_error("rid=%s auth: token lookup failed: %s", rid ? rid : "-",
                      tpv_log_text(tpv_err_message(&err), TPV_ERR_MSG_MAX));
        return false;
    }
    /* The index found the row by hash; compare the whole stored hash anyway, in constant time. */
    if (CRYPTO_memcmp(tok.hash, hex, 64) != 0)
        return false;
    int parsed = api_role_parse(tok.role);
    if (parsed < 0)
        return false;
    pthread_mutex_lock(&a->lock);
    memcpy(slot->hash, md, 32);
    slot->role = (enum api_role)parsed;
    slot->revoked = tok.revoked;
    slot->expires_ns = now + AUTH_TTL_NS;
    pthread_mutex_unlock(&a->lock);
    atomic_store(&a->tokens_exist, true);
    *role = (enum api_role)parsed;
    return !tok.revoked;
}

static void reply_unauthenticated(struct api_response *resp, bool token_given, const char *msg)
{
    api_reply_errorf(resp, TPV_EUNAUTHENTICATED, "Authorization", "%s", msg);
    api_response_add_header(resp, "WWW-Authenticate",
                            token_given ? "Bearer realm=\"tpvd\", error=\"invalid_token\""
                                        : "Bearer realm=\"tpvd\"");
}

bool api_authorize(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct api_auth *a = env->auth;
    if (!a)
        return true;
    enum api_role need = api_route_role(req);
    int store_rc;
    if (need == API_ROLE_OPEN || auth_open_check(a, &store_rc))
        return true;
    if (store_rc == TPV_EUNAVAILABLE) {
        api_reply_errorf(resp, TPV_EUNAVAILABLE, NULL, "storage is not available");
        return false;
    }
    const char *h = api_header(req, "Authorization");
    if (!h || !h[0]) {
        reply_unauthenticated(resp, false,
                              "this route needs a bearer token (Authorization: Bearer <token>)");
        return false;
    }
    size_t hlen = strnlen(h, AUTH_HEADER_MAX + 1);
    if (hlen > AUTH_HEADER_MAX || strncasecmp(h, "Bearer ", 7) != 0) {
        reply_unauthenticated(resp, true, "the Authorization header is not 'Bearer <token>'");
        return false;
    }
    const char *token = h + 7;
    while (*token == ' ')
        token++;
    size_t tlen = strlen(token);
    while (tlen > 0 && token[tlen - 1] == ' ')
        tlen--;
    enum api_role have = API_ROLE_OPEN;
    if (tlen == 0 || !token_role(a, token, tlen, &have, req->request_id, &store_rc)) {
        if (store_rc == TPV_EUNAVAILABLE) {
            api_reply_errorf(resp, TPV_EUNAVAILABLE, NULL, "storage is not available");
            return false;
        }
        reply_unauthenticated(resp, true, "the bearer token is unknown or revoked");
        return false;
    }
    if (have < need) {
        api_reply_errorf(resp, TPV_EPERM, "Authorization",
                         "%s %s needs the %s role; this token has %s", req->method, req->path,
                         api_role_name(need), api_role_name(have));
        return false;
    }
    return true;
}
