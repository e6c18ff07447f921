/* fetch.h: the URL fetcher of tpvd: blob references {"url": ...} are downloaded with libcurl
 * straight into the blob store (storage's blob writer: hashing, size cap, temporary file, fsync,
 * rename), only from hosts the operator allows (--fetch-allow), over http/https, with timeouts
 * and a bounded number of redirects, each of which must lead to an allowed host too. */
#ifndef TPV_SRV_FETCH_H
#define TPV_SRV_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tpv_error.h"

struct store;
struct srv_fetch;

#define SRV_FETCH_MAX_REDIRECTS 5

struct srv_fetch_options {
    const char *allow;          /* comma-separated "host" or "host:port" entries; NULL/"" = none */
    uint64_t max_size;          /* bytes (--max-blob) */
    long connect_timeout_s;     /* 0 = 10 */
    long timeout_s;             /* whole transfer, redirects included; 0 = 300 */
    const char *user_agent;     /* NULL = "tpvd" */
};

/* A fetcher storing into `st` (which must outlive it).  Copies opts.  TPV_ENOMEM. */
int srv_fetch_new(struct srv_fetch **out, struct store *st, const struct srv_fetch_options *opts,
                  struct tpv_err *err);
void srv_fetch_free(struct srv_fetch *f); /* NULL is a no-op */

/* Makes transfers in flight and every later one fail at once with TPV_EUNAVAILABLE ("shutting
 * down"), so that a slow upstream cannot hold shutdown for the whole fetch timeout.  Thread-safe;
 * NULL is a no-op. */
void srv_fetch_abort(struct srv_fetch *f);

/* Downloads `url` into the blob store (the api_env.fetch callback; ctx is the srv_fetch).
 * See api.h for the contract: TPV_EINVAL (bad URL, digest mismatch), TPV_EPERM (host, or a
 * redirect's host, not allowed), TPV_ETOOLARGE, TPV_EUNAVAILABLE (connection, timeout, upstream
 * status not 2xx, too many redirects).  Messages name `field` and the host, never the query. */
int srv_fetch_blob(void *ctx, const char *url, const char *expect, const char *field, char *digest,
                   size_t cap, struct tpv_err *err);

/* Whether `host` (as in a URL: "example.com", "[::1]") with port `port` matches an entry of the
 * comma-separated `allow` list: "host" allows any port, "host:port" that port only.  Hosts
 * compare case-insensitively. */
bool srv_fetch_host_allowed(const char *allow, const char *host, unsigned port);

#endif
