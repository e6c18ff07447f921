/* pg_notify.h: study-version notifications across tpvd nodes on PostgreSQL (DESIGN.md section 7).
 *
 * Every transaction that bumps a study's version also runs `NOTIFY tpv_study, '<sid>:<version>'`
 * (pg_notify_study); each node runs one listener thread on its own connection that hands those to
 * a callback, which invalidates the node's version cache and wakes its ranking long-polls.
 *
 * Notifications sent while the listener was disconnected are lost (PostgreSQL queues them only for
 * connected listeners), so after every reconnect and re-subscription the listener calls
 * `resubscribed`: the node must then treat every cached version as stale. */
#ifndef TPV_PG_NOTIFY_H
#define TPV_PG_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

#include "core/tpv_error.h"
#include "storage/pg_conn.h"

#define PG_NOTIFY_CHANNEL "tpv_study"
/* A job became claimable (queued, retried, released or re-queued after its lease): the idle
 * workers of every node race for it instead of waiting for their next poll.  No payload. */
#define PG_JOBS_CHANNEL "tpv_jobs"

struct pg_listener;

struct pg_listener_hooks {
    /* A study's version reached `version` (called on the listener thread; keep it short). */
    void (*study_changed)(void *ctx, const char *study_id, int64_t version);
    /* LISTEN is in place again after a lost connection (not called for the first one). */
    void (*resubscribed)(void *ctx);
    void *ctx;
    /* A job became claimable somewhere (PG_JOBS_CHANNEL); NULL: not listened for. */
    void (*job_queued)(void *ctx);
};

struct pg_listener_stats {
    uint64_t received;   /* well-formed notifications handed to study_changed */
    uint64_t malformed;  /* payloads that were not "<sid>:<version>", dropped */
    uint64_t reconnects; /* successful re-subscriptions */
};

/* Connects to `conninfo`, runs LISTEN tpv_study and starts the thread.  The first connection
 * must succeed (TPV_EUNAVAILABLE otherwise); later losses are retried with a backoff of
 * backoff_min_ms doubling to backoff_max_ms (0 = 100 / 2000).  *out owns the listener
 * (pg_listener_stop). */
int pg_listener_start(struct pg_listener **out, const char *conninfo,
                      const struct pg_listener_hooks *hooks, int backoff_min_ms,
                      int backoff_max_ms, struct tpv_err *err);

/* Stops the thread (within a poll interval, 200 ms) and closes its connection; NULL is a no-op. */
void pg_listener_stop(struct pg_listener *l);

void pg_listener_stats(struct pg_listener *l, struct pg_listener_stats *out);

/* Whether LISTEN is in place now: false from the moment the thread sees its connection lost
 * until the resubscription, whose `resubscribed` hook has run by the time this says true again.
 * Notifications are only complete while it is true. */
bool pg_listener_connected(struct pg_listener *l);

/* Queues the notification for a study version in the caller's transaction on c: it is delivered
 * at COMMIT, and dropped on ROLLBACK. */
int pg_notify_study(struct pg_conn *c, const char *study_id, int64_t version,
                    struct tpv_err *err);

/* Queues the PG_JOBS_CHANNEL notification in the caller's transaction on c (delivered at
 * COMMIT; PostgreSQL folds the copies of one transaction into one). */
int pg_notify_jobs(struct pg_conn *c, struct tpv_err *err);

/* Parses "<sid>:<version>" (the id is [A-Za-z0-9_]{1,31}, the version a positive integer).
 * TPV_OK or TPV_EINVAL. */
int pg_notify_parse(const char *payload, char *study_id, size_t cap, int64_t *version);

#endif
