/* webhook.h: delivery of the webhook outbox (storage/) by four sender threads of the daemon, each
 * taking due rows that no other sender holds, so that one slow receiver delays only its own rows.
 *
 * Each pending event is POSTed to its study's webhook_url as JSON, signed with HMAC-SHA256 of the
 * exact body under the study's secret (header X-TPV-Signature: sha256=<hex>), with X-TPV-Event and
 * X-TPV-Event-Id (stable across retries: receivers dedup on it).  At least once: a row stays in
 * the outbox until a 2xx answer, so deliveries survive restarts; failures are retried with
 * exponential backoff and jitter until max_attempts, then the row is marked failed.  Never blocks
 * an HTTP thread or a worker: they only append rows in their own transactions. */
#ifndef TPV_SRV_WEBHOOK_H
#define TPV_SRV_WEBHOOK_H

#include <stddef.h>

#include "core/tpv_error.h"

struct store;
struct srv_webhook;

struct srv_webhook_options {
    int max_attempts;   /* then the event is marked failed; 0 = 8 */
    long backoff_ms;    /* delay before the 2nd attempt, doubling after; 0 = 1000 */
    long timeout_s;     /* one attempt, connect included; 0 = 10 */
    const char *user_agent; /* NULL = "tpvd" */
};

/* Starts the sender threads over `st` (which must outlive it).  TPV_ENOMEM, TPV_EINTERNAL. */
int srv_webhook_start(struct srv_webhook **out, struct store *st,
                      const struct srv_webhook_options *opts, struct tpv_err *err);

/* Wakes the senders: events may have been written.  Thread-safe; w may be NULL. */
void srv_webhook_notify(struct srv_webhook *w);

/* Stops the senders (attempts in flight are aborted and retried at the next start), joins them
 * and frees w.  NULL is a no-op. */
void srv_webhook_stop(struct srv_webhook *w);

/* The payload of an outbox event (storage's store_event_render_fn, set on the store by the
 * daemon): a compact JSON object with the event's fields in the order receivers have always got
 * them, and "id" = event_id last.  Malloc'd; NULL when out of memory. */
struct store_event;
char *srv_webhook_render_event(const struct store_event *ev, const char *event_id);

/* "sha256=" + hex HMAC-SHA256(secret, body): the X-TPV-Signature value.  out has 72 bytes. */
#define SRV_WEBHOOK_SIG_MAX 72
void srv_webhook_sign(const char *secret, const void *body, size_t len,
                      char out[SRV_WEBHOOK_SIG_MAX]);

/* Seconds to wait after `attempts` failed attempts: backoff_ms * 2^(attempts-1), at most an hour,
 * scaled by a jitter factor in [0.5, 1) from u in [0, 1). */
double srv_webhook_backoff(int attempts, long backoff_ms, double u);

#endif
