/* store_pg.c: the PostgreSQL backend's handle, idempotency keys, studies, candidates, ranking,
 * tokens, statistics and blob rows (see store_pg.h; jobs and the outbox are store_pg_jobs.c).
 *
 * Every write is one READ COMMITTED transaction run by pg_tx_run (retried on 40001/40P01 and on
 * a connection lost before COMMIT); row locks taken by the UPDATE of the study's version order
 * the writers of one study.  Every version bump queues its NOTIFY in the same transaction, so
 * other nodes see it exactly when it commits.  While the database is down every op answers
 * TPV_EUNAVAILABLE (pg_conn), and the pool reconnects by itself. */
#include "storage/store_pg.h"

#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/pg_conn.h"
#include "storage/pg_notify.h"
#include "storage/schema_pg.h"
#include "storage/store.h"
#include "storage/store_pg_int.h"

bool store_pg_url(const char *url)
{
    return url && (strncmp(url, "postgresql://", 13) == 0 || strncmp(url, "postgres://", 11) == 0);
}

/* ---- small helpers shared with store_pg_jobs.c ---- */

void pgs_fmt_double(char out[PGS_NUM_MAX], double v, const char **param)
{
    if (isnan(v) || isinf(v)) {
        *param = NULL;
        return;
    }
    snprintf(out, PGS_NUM_MAX, "%.17g", v);
    *param = out;
}

void pgs_fmt_int(char out[PGS_NUM_MAX], int64_t v)
{
    snprintf(out, PGS_NUM_MAX, "%lld", (long long)v);
}

void pgs_copy(char *dst, size_t cap, const struct pg_result *r, int row, int col)
{
    snprintf(dst, cap, "%s", pg_result_text(r, row, col));
}

int pgs_oom(struct tpv_err *err)
{
    return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
}

/* A one-statement read on a lent connection. */
int pgs_read(struct pgs *s, const char *sql, int n, const char *const *params,
             struct pg_result **res, struct tpv_err *err)
{
    struct pg_conn *c;
    int rc = pg_pool_acquire(s->pool, &c, err);
    if (rc != TPV_OK)
        return rc;
    rc = pg_exec(c, sql, n, params, res, err);
    pg_pool_release(s->pool, c);
    return rc;
}

/* Bumps a study's version in the caller's transaction and queues its NOTIFY.  TPV_ENOTFOUND
 * (field study_id) when the study is gone. */
int pgs_bump(struct pg_conn *c, const char *study_id, int64_t *version, struct tpv_err *err)
{
    struct pg_result *r;
    const char *p[] = { study_id };
    int rc = pg_exec(c, "UPDATE studies SET version = version + 1 WHERE id = $1 RETURNING version",
                     1, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0) {
        pg_result_free(r);
        return tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", study_id);
    }
    *version = pg_result_int64(r, 0, 0);
    pg_result_free(r);
    return pg_notify_study(c, study_id, *version, err);
}

/* After a commit: tell the dispatcher (the listener will also bring the NOTIFY back; the
 * dispatcher takes a version it has already seen as a no-op). */
void pgs_changed(struct pgs *s, const char *study_id, int64_t version)
{
    if (s->sink.committed)
        s->sink.committed(s->sink.ctx);
    /* version 0: a job of the study changed state without a bump (its holds wake anyway) */
    if (study_id[0] && s->sink.study_changed)
        s->sink.study_changed(s->sink.ctx, study_id, version);
}

void pgs_job_queued(struct pgs *s)
{
    if (s->sink.job_queued)
        s->sink.job_queued(s->sink.ctx);
}

/* Whether the study has a webhook (events are only written for those). */
int pgs_has_hook(struct pg_conn *c, const char *study_id, bool *has, struct tpv_err *err)
{
    struct pg_result *r;
    const char *p[] = { study_id };
    int rc = pg_exec(c, "SELECT webhook_url FROM studies WHERE id = $1", 1, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    *has = pg_result_rows(r) == 1 && !pg_result_null(r, 0, 0);
    pg_result_free(r);
    return TPV_OK;
}

/* Appends an event to the outbox in the caller's transaction, rendered by the sink (so every
 * attempt sends the same bytes).  next_attempt_at is the writing node's clock, as on SQLite:
 * the sender compares it with its own. */
int pgs_outbox_put(struct pgs *s, struct pg_conn *c, const struct store_event *ev,
                   struct tpv_err *err)
{
    if (!s->sink.render_event)
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "no webhook event renderer set");
    char id[STORE_ID_MAX];
    store_id_new(id, "ev");
    char *text = s->sink.render_event(s->sink.ctx, ev, id);
    if (!text)
        return pgs_oom(err);
    char at[PGS_NUM_MAX];
    const char *atp;
    pgs_fmt_double(at, pgs_clock_now(), &atp);
    const char *p[] = { ev->study_id, ev->event, text, atp, ev->at };
    int rc = pg_exec(c,
                     "INSERT INTO webhook_outbox (study_id, event, payload, next_attempt_at, "
                     "created_at) VALUES ($1, $2, $3, $4::float8, $5)",
                     5, p, NULL, err);
    free(text);
    return rc;
}

/* ---- listener hooks: the version cache follows other nodes' commits ---- */

/* Every version bump is NOTIFY'd in its transaction, and a notification moves the dispatcher's
 * commit generation (on_study_changed), so a cached version is good while the listener is
 * connected: from the database on every read while it is not (notifications sent then are
 * lost), and the resubscription drops the cache (on_resubscribed).  The bound covers a loss the
 * listener does not see (a silent network failure keeps its socket open): no poll answers with
 * a version older than this after another node's commit. */
#define PG_VERSION_CACHE_MS 1000

static void on_study_changed(void *ctx, const char *study_id, int64_t version)
{
    struct pgs *s = ctx;
    if (s->sink.committed) /* a commit (this node's own comes back too: one more cache miss) */
        s->sink.committed(s->sink.ctx);
    if (s->sink.study_changed)
        s->sink.study_changed(s->sink.ctx, study_id, version);
}

/* Another node (or this one: its workers then find nothing and wait again) queued a job. */
static void on_job_queued(void *ctx)
{
    pgs_job_queued(ctx);
}

/* Notifications sent while the listener was away are lost: every cached version is stale.
 * Jobs queued meanwhile are found by the workers' own polls. */
static void on_resubscribed(void *ctx)
{
    struct pgs *s = ctx;
    if (s->sink.committed)
        s->sink.committed(s->sink.ctx);
}

/* ---- handle ---- */

/* The server's start time, read at connect: part of the ranking's ETag (DESIGN-phase2.md
 * section 5: a crash may roll a version back and reuse its number). */
static int read_epoch(struct pgs *s, struct tpv_err *err)
{
    struct pg_result *r;
    int rc = pgs_read(s, "SELECT floor(extract(epoch FROM pg_postmaster_start_time()))::bigint",
                      0, NULL, &r, err);
    if (rc != TPV_OK)
        return rc;
    snprintf(s->epoch, sizeof s->epoch, "%s", pg_result_text(r, 0, 0));
    pg_result_free(r);
    return TPV_OK;
}

static void pg_close_impl(void *impl)
{
    struct pgs *s = impl;
    if (!s)
        return;
    pg_listener_stop(s->listener);
    if (s->pool)
        pgs_outbox_release_held(s);
    pg_pool_close(s->pool);
    pthread_mutex_destroy(&s->held_lock);
    free(s);
}

static int pg_open_impl(void **impl, const char *target, const struct store_options *o,
                        const struct store_sink *sink, struct tpv_err *err)
{
    *impl = NULL;
    struct pgs *s = calloc(1, sizeof *s);
    if (!s)
        return pgs_oom(err);
    if (sink)
        s->sink = *sink;
    pthread_mutex_init(&s->held_lock, NULL);
    s->version_cache_ms = o && o->version_cache_ms > 0 ? o->version_cache_ms : PG_VERSION_CACHE_MS;
    struct pg_pool_options po = { .size = o && o->pool_size > 0 ? o->pool_size : 8 };
    int rc = pg_pool_open(&s->pool, target, &po, err);
    if (rc == TPV_OK)
        rc = schema_pg_migrate(s->pool, NULL, NULL, err);
    if (rc == TPV_OK)
        rc = read_epoch(s, err);
    if (rc == TPV_OK) {
        struct pg_listener_hooks h = { .study_changed = on_study_changed,
                                       .resubscribed = on_resubscribed,
                                       .job_queued = on_job_queued, .ctx = s };
        rc = pg_listener_start(&s->listener, target, &h, 0, 0, err);
    }
    if (rc != TPV_OK) {
        if (err && !err->field[0]) /* what --database names */
            snprintf(err->field, sizeof err->field, "database");
        pg_close_impl(s);
        return rc;
    }
    *impl = s;
    return TPV_OK;
}

static int pg_ping_impl(void *impl, struct tpv_err *err)
{
    return pgs_read(impl, "SELECT 1", 0, NULL, NULL, err);
}

static int pg_schema_version_impl(void *impl, int *version, struct tpv_err *err)
{
    struct pgs *s = impl;
    return schema_pg_version(s->pool, version, err);
}

/* What store_study_version may serve from memory now: see PG_VERSION_CACHE_MS. */
static int64_t pg_version_cache_ms_impl(void *impl)
{
    struct pgs *s = impl;
    return pg_listener_connected(s->listener) ? s->version_cache_ms : 0;
}

static const char *pg_version_epoch_impl(void *impl)
{
    struct pgs *s = impl;
    return s->epoch;
}

/* ---- idempotency keys ---- */

static int idem_lookup_conn(struct pg_conn *c, const struct store_idem *idem,
                            struct store_replay *out, struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    struct pg_result *r;
    const char *p[] = { idem->scope, idem->key };
    int rc = pg_exec(c,
                     "SELECT request_hash, status, body, location FROM idempotency_keys "
                     "WHERE scope = $1 AND key = $2",
                     2, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0) {
        rc = TPV_ENOTFOUND;
    } else if (strcmp(pg_result_text(r, 0, 0), idem->request_hash) != 0) {
        rc = tpv_err_set(err, TPV_EPRECONDITION, "Idempotency-Key",
                         "Idempotency-Key '%s' was used with a different request", idem->key);
    } else {
        out->status = (int)pg_result_int64(r, 0, 1);
        out->body = pg_result_strdup(r, 0, 2);
        out->location = pg_result_strdup(r, 0, 3);
        if (!out->body || (!out->location && !pg_result_null(r, 0, 3))) {
            store_replay_free(out);
            rc = pgs_oom(err);
        }
    }
    pg_result_free(r);
    return rc;
}

static int pg_idem_lookup_impl(void *impl, const struct store_idem *idem,
                               struct store_replay *out, struct tpv_err *err)
{
    struct pgs *s = impl;
    struct pg_conn *c;
    memset(out, 0, sizeof *out);
    int rc = pg_pool_acquire(s->pool, &c, err);
    if (rc != TPV_OK)
        return rc;
    rc = idem_lookup_conn(c, idem, out, err);
    pg_pool_release(s->pool, c);
    return rc;
}

/* Claims the key first thing in the write's transaction: a concurrent request with the same key
 * (on any node) waits on the primary key and then gets 23505, which is TPV_EEXIST naming the
 * key (the caller replays the winner's answer), never the write's own uniqueness error. */
static int idem_claim(struct pg_conn *c, const struct store_idem *idem,
                      const struct store_reply *reply, struct tpv_err *err)
{
    if (!idem)
        return TPV_OK;
    struct store_replay old;
    int rc = idem_lookup_conn(c, idem, &old, err);
    store_replay_free(&old);
    if (rc == TPV_OK)
        return tpv_err_set(err, TPV_EEXIST, "Idempotency-Key", "Idempotency-Key '%s' is in use",
                           idem->key);
    if (rc != TPV_ENOTFOUND)
        return rc;
    char status[PGS_NUM_MAX], now[STORE_TIME_MAX];
    pgs_fmt_int(status, reply ? reply->status : 0);
    store_now_rfc3339(now);
    const char *p[] = { idem->scope, idem->key, idem->request_hash, status,
                        reply && reply->body ? reply->body : "", reply ? reply->location : NULL,
                        now };
    rc = pg_exec(c,
                 "INSERT INTO idempotency_keys (scope, key, request_hash, status, body, location, "
                 "created_at) VALUES ($1, $2, $3, $4::int, $5, $6, $7)",
                 7, p, NULL, err);
    if (rc == TPV_EEXIST)
        return tpv_err_set(err, TPV_EEXIST, "Idempotency-Key", "Idempotency-Key '%s' is in use",
                           idem->key);
    return rc;
}

static int pg_idem_expire_impl(void *impl, const char *before, int *removed, struct tpv_err *err)
{
    struct pg_result *r;
    const char *p[] = { before };
    *removed = 0;
    int rc = pgs_read(impl, "DELETE FROM idempotency_keys WHERE created_at < $1", 1, p, &r, err);
    if (rc == TPV_OK) {
        *removed = (int)pg_result_affected(r);
        pg_result_free(r);
    }
    return rc;
}

/* ---- studies ---- */

struct study_create_ctx {
    const struct store_study_new *in;
    const struct store_idem *idem;
    const struct store_reply *reply;
};

static int study_create_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct study_create_ctx *x = arg;
    const struct store_study_new *in = x->in;
    int rc = idem_claim(c, x->idem, x->reply, err);
    if (rc != TPV_OK)
        return rc;
    const char *p[] = { in->id, in->name, in->description ? in->description : "",
                        in->noise_models, in->rank_by, in->webhook_url,
                        in->metadata ? in->metadata : "{}", in->created_at,
                        in->webhook_url ? in->webhook_secret : NULL };
    return pg_exec(c,
                   "INSERT INTO studies (id, name, description, noise_models, rank_by, "
                   "webhook_url, metadata, created_at, webhook_secret) "
                   "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                   9, p, NULL, err);
}

static int pg_study_create_impl(void *impl, const struct store_study_new *in,
                                const struct store_idem *idem, const struct store_reply *reply,
                                struct tpv_err *err)
{
    struct pgs *s = impl;
    struct study_create_ctx x = { in, idem, reply };
    int rc = pg_tx_run(s->pool, PG_READ_COMMITTED, study_create_body, &x, err);
    if (rc == TPV_OK)
        pgs_changed(s, "", 0);
    return rc;
}

#define STUDY_COLS                                                                               \
    "SELECT s.seq, s.id, s.name, s.description, s.noise_models, s.rank_by, s.webhook_url, "      \
    "s.metadata, s.version, s.created_at, f.digest, f.n, p.digest, p.n, s.has_probe_dumps "       \
    "FROM studies s LEFT JOIN input_sets f ON f.study_id = s.id AND f.split = 'fit' "           \
    "LEFT JOIN input_sets p ON p.study_id = s.id AND p.split = 'probe' "

static void input_from_row(const struct pg_result *r, int row, int dcol, struct store_input *in)
{
    pgs_copy(in->digest, sizeof in->digest, r, row, dcol);
    in->n = pg_result_null(r, row, dcol + 1) ? -1 : pg_result_int64(r, row, dcol + 1);
}

static bool study_from_row(const struct pg_result *r, int row, struct store_study *o)
{
    memset(o, 0, sizeof *o);
    o->seq = pg_result_int64(r, row, 0);
    pgs_copy(o->id, sizeof o->id, r, row, 1);
    o->name = pg_result_strdup(r, row, 2);
    o->description = pg_result_strdup(r, row, 3);
    o->noise_models = pg_result_strdup(r, row, 4);
    o->rank_by = pg_result_strdup(r, row, 5);
    o->webhook_url = pg_result_strdup(r, row, 6);
    o->metadata = pg_result_strdup(r, row, 7);
    o->version = pg_result_int64(r, row, 8);
    pgs_copy(o->created_at, sizeof o->created_at, r, row, 9);
    input_from_row(r, row, 10, &o->fit);
    input_from_row(r, row, 12, &o->probe);
    o->has_probe_dumps = pg_result_int64(r, row, 14) != 0;
    if (!o->name || !o->description || !o->noise_models || !o->rank_by || !o->metadata ||
        (!o->webhook_url && !pg_result_null(r, row, 6))) {
        store_study_free(o);
        return false;
    }
    return true;
}

static int pg_study_get_impl(void *impl, const char *id, struct store_study *out,
                             struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    struct pg_result *r;
    const char *p[] = { id };
    int rc = pgs_read(impl, STUDY_COLS "WHERE s.id = $1", 1, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0)
        rc = tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", id);
    else if (!study_from_row(r, 0, out))
        rc = pgs_oom(err);
    pg_result_free(r);
    return rc;
}

static int pg_study_version_impl(void *impl, const char *id, int64_t *version,
                                 struct tpv_err *err)
{
    struct pg_result *r;
    const char *p[] = { id };
    int rc = pgs_read(impl, "SELECT version FROM studies WHERE id = $1", 1, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0)
        rc = tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", id);
    else
        *version = pg_result_int64(r, 0, 0);
    pg_result_free(r);
    return rc;
}

static int pg_study_info_impl(void *impl, const char *id, struct store_study_info *out,
                              struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    struct pg_result *r;
    const char *p[] = { id };
    int rc = pgs_read(impl, STUDY_COLS "WHERE s.id = $1", 1, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0) {
        rc = tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", id);
    } else {
        out->noise_models = pg_result_strdup(r, 0, 4);
        out->rank_by = pg_result_strdup(r, 0, 5);
        out->version = pg_result_int64(r, 0, 8);
        pgs_copy(out->fit_digest, sizeof out->fit_digest, r, 0, 10);
        pgs_copy(out->probe_digest, sizeof out->probe_digest, r, 0, 12);
        out->has_probe_dumps = pg_result_int64(r, 0, 14) != 0;
        if (!out->noise_models || !out->rank_by) {
            store_study_info_free(out);
            rc = pgs_oom(err);
        }
    }
    pg_result_free(r);
    return rc;
}

/* An upper bound of the JSON bytes of row `row` (the page byte bound), as on SQLite: JSON
 * columns (bits of json_cols) at most as long as stored, other text escaped, numbers 24 bytes,
 * plus the shape's keys and punctuation. */
uint64_t pgs_row_bytes(const struct pg_result *r, int row, int ncols, unsigned json_cols)
{
    uint64_t n = 320;
    for (int i = 0; i < ncols; i++) {
        const unsigned char *t = (const unsigned char *)pg_result_text(r, row, i);
        if (i < 32 && (json_cols >> i & 1u)) {
            n += strlen((const char *)t);
            continue;
        }
        n += 2;
        for (; *t; t++)
            n += *t == '"' || *t == '\\' || *t == '\b' || *t == '\f' || *t == '\n' ||
                         *t == '\r' || *t == '\t'
                     ? 2
                 : *t < 0x20 ? 6
                             : 1;
    }
    return n;
}

bool pgs_page_full(size_t count, uint64_t used, uint64_t more, uint64_t max_bytes)
{
    return count > 0 && max_bytes > 0 && (more > max_bytes || used > max_bytes - more);
}

static int pg_study_list_impl(void *impl, int64_t after_seq, int limit, uint64_t max_bytes,
                              struct store_study_page *page, struct tpv_err *err)
{
    memset(page, 0, sizeof *page);
    if (limit < 1 || limit == INT_MAX)
        return tpv_err_set(err, TPV_EINVAL, "limit", "limit must be in [1, %d)", INT_MAX);
    char after[PGS_NUM_MAX], lim[PGS_NUM_MAX];
    pgs_fmt_int(after, after_seq);
    pgs_fmt_int(lim, (int64_t)limit + 1); /* one extra row tells whether a next page exists */
    const char *p[] = { after, lim };
    struct pg_result *r;
    int rc = pgs_read(impl, STUDY_COLS "WHERE s.seq > $1::bigint ORDER BY s.seq LIMIT $2::bigint",
                      2, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    int rows = pg_result_rows(r);
    page->items = rows ? calloc((size_t)rows, sizeof *page->items) : NULL;
    if (rows && !page->items)
        rc = pgs_oom(err);
    uint64_t used = 0;
    for (int i = 0; rc == TPV_OK && i < rows; i++) {
        uint64_t more = pgs_row_bytes(r, i, 15, 1u << 4 | 1u << 7);
        if (page->n == (size_t)limit || pgs_page_full(page->n, used, more, max_bytes)) {
            page->next_seq = page->items[page->n - 1].seq;
            break;
        }
        used += more;
        if (!study_from_row(r, i, &page->items[page->n]))
            rc = pgs_oom(err);
        else
            page->n++;
    }
    pg_result_free(r);
    if (rc != TPV_OK)
        store_study_page_free(page);
    return rc;
}

struct del_ctx {
    struct pgs *s;
    const char *study_id, *id, *now;
    int64_t version;
};

static int deleted_event(struct pgs *s, struct pg_conn *c, const char *event,
                         const char *study_id, const char *candidate_id, const char *state,
                         int64_t version, const char *now, struct tpv_err *err)
{
    struct store_event ev = { .version = version };
    snprintf(ev.event, sizeof ev.event, "%s", event);
    snprintf(ev.study_id, sizeof ev.study_id, "%s", study_id);
    snprintf(ev.candidate_id, sizeof ev.candidate_id, "%s", candidate_id);
    snprintf(ev.state, sizeof ev.state, "%s", state);
    snprintf(ev.at, sizeof ev.at, "%s", now);
    return pgs_outbox_put(s, c, &ev, err);
}

static int study_delete_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct del_ctx *x = arg;
    const char *p[] = { x->study_id, x->now };
    struct pg_result *r;
    /* The row lock orders this against every writer of the study. */
    int rc = pg_exec(c, "SELECT version, webhook_url IS NOT NULL FROM studies WHERE id = $1 "
                        "FOR UPDATE", 1, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0) {
        pg_result_free(r);
        return tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", x->study_id);
    }
    x->version = pg_result_int64(r, 0, 0) + 1;
    bool hook = strcmp(pg_result_text(r, 0, 1), "t") == 0;
    pg_result_free(r);
    if (hook)
        rc = deleted_event(x->s, c, "study.deleted", x->study_id, "", "", x->version, x->now, err);
    if (rc == TPV_OK && hook) /* pending events keep where to go once the study row is gone */
        rc = pg_exec(c,
                     "UPDATE webhook_outbox o SET url = s.webhook_url, secret = s.webhook_secret "
                     "FROM studies s WHERE s.id = $1 AND o.study_id = $1 AND o.url IS NULL AND "
                     "o.delivered_at IS NULL AND o.failed_at IS NULL",
                     1, p, NULL, err);
    if (rc == TPV_OK)
        rc = pg_exec(c,
                     "UPDATE blobs SET released_at = $2 WHERE EXISTS (SELECT 1 FROM input_sets i "
                     "WHERE i.study_id = $1 AND i.digest = blobs.digest) OR EXISTS (SELECT 1 "
                     "FROM candidates c WHERE c.study_id = $1 AND "
                     "strpos(c.source, blobs.digest) > 0) OR EXISTS (SELECT 1 FROM studies s "
                     "WHERE s.id = $1 AND strpos(s.noise_models, blobs.digest) > 0)",
                     2, p, NULL, err);
    if (rc == TPV_OK)
        rc = pg_exec(c, "DELETE FROM studies WHERE id = $1", 1, p, NULL, err);
    if (rc == TPV_OK) /* held long-polls on every node come back and find it gone */
        rc = pg_notify_study(c, x->study_id, x->version, err);
    return rc;
}

static int pg_study_delete_impl(void *impl, const char *id, const char *now, struct tpv_err *err)
{
    struct pgs *s = impl;
    struct del_ctx x = { .s = s, .study_id = id, .now = now };
    int rc = pg_tx_run(s->pool, PG_READ_COMMITTED, study_delete_body, &x, err);
    if (rc == TPV_OK)
        pgs_changed(s, id, x.version);
    return rc;
}

struct input_ctx {
    const char *study_id, *split, *digest, *now;
    int64_t n, version;
};

static int input_set_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct input_ctx *x = arg;
    x->version = 0;
    const char *p[] = { x->study_id, x->split };
    struct pg_result *r;
    /* The study's row lock first: a concurrent candidate_create waits, so the count is true. */
    int rc = pg_exec(c, "SELECT 1 FROM studies WHERE id = $1 FOR UPDATE", 1, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    int found = pg_result_rows(r);
    pg_result_free(r);
    if (!found)
        return tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", x->study_id);
    rc = pg_exec(c,
                 "SELECT (SELECT digest FROM input_sets WHERE study_id = $1 AND split = $2), "
                 "(SELECT count(*) FROM candidates WHERE study_id = $1)",
                 2, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    bool same = strcmp(pg_result_text(r, 0, 0), x->digest) == 0;
    int64_t candidates = pg_result_int64(r, 0, 1);
    pg_result_free(r);
    if (same)
        return TPV_OK; /* nothing to write */
    if (candidates > 0)
        return tpv_err_set(err, TPV_EPRECONDITION,
                           strcmp(x->split, "fit") == 0 ? "inputs.fit" : "inputs.probe",
                           "study %s has %lld candidate(s), so its %s input set is fixed: they "
                           "were scored on the current inputs and a ranking must not mix two "
                           "input sets; create a new study for other inputs",
                           x->study_id, (long long)candidates, x->split);
    rc = pgs_bump(c, x->study_id, &x->version, err);
    if (rc != TPV_OK)
        return rc;
    char n[PGS_NUM_MAX];
    pgs_fmt_int(n, x->n);
    const char *q[] = { x->study_id, x->split, x->digest, x->n >= 0 ? n : NULL, x->now };
    return pg_exec(c,
                   "INSERT INTO input_sets (study_id, split, digest, n, updated_at) "
                   "VALUES ($1, $2, $3, $4::bigint, $5) ON CONFLICT (study_id, split) DO UPDATE "
                   "SET digest = excluded.digest, n = excluded.n, updated_at = excluded.updated_at",
                   5, q, NULL, err);
}

static int pg_input_set_impl(void *impl, const char *study_id, const char *split,
                             const char *digest, int64_t n, const char *now, struct tpv_err *err)
{
    struct pgs *s = impl;
    struct input_ctx x = { study_id, split, digest, now, n, 0 };
    int rc = pg_tx_run(s->pool, PG_READ_COMMITTED, input_set_body, &x, err);
    if (rc == TPV_OK && x.version)
        pgs_changed(s, study_id, x.version);
    return rc;
}

/* ---- candidates ---- */

int pgs_queue_room(struct pg_conn *c, int64_t max_queued, struct tpv_err *err)
{
    if (max_queued <= 0)
        return TPV_OK;
    struct pg_result *r;
    int rc = pg_exec(c, "SELECT count(*) FROM jobs WHERE state = 'queued'", 0, NULL, &r, err);
    if (rc != TPV_OK)
        return rc;
    int64_t n = pg_result_int64(r, 0, 0);
    pg_result_free(r);
    if (n >= max_queued)
        return tpv_err_set(err, TPV_EBUSY, NULL,
                           "the job queue is full (%lld queued jobs, limit --max-queued-jobs)",
                           (long long)n);
    return TPV_OK;
}

int pgs_job_insert(struct pg_conn *c, const char *id, const char *kind, const char *study_id,
                   const char *candidate_id, const char *params, const char *now,
                   struct tpv_err *err)
{
    const char *p[] = { id, kind, study_id, candidate_id, params, now };
    int rc = pg_exec(c,
                     "INSERT INTO jobs (id, kind, study_id, candidate_id, state, params, "
                     "created_at) VALUES ($1, $2, $3, $4, 'queued', $5, $6)",
                     6, p, NULL, err);
    return rc == TPV_OK ? pg_notify_jobs(c, err) : rc;
}

struct cand_create_ctx {
    const struct store_candidate_new *in;
    int64_t max_queued;
    const struct store_idem *idem;
    const struct store_reply *reply;
    int64_t version;
};

static int candidate_create_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct cand_create_ctx *x = arg;
    const struct store_candidate_new *in = x->in;
    int rc = idem_claim(c, x->idem, x->reply, err); /* before the name rule: a replay is no dup */
    if (rc == TPV_OK)
        rc = pgs_bump(c, in->study_id, &x->version, err);
    if (rc == TPV_OK)
        rc = pgs_queue_room(c, x->max_queued, err);
    if (rc != TPV_OK)
        return rc;
    char tl[PGS_NUM_MAX], ep[PGS_NUM_MAX];
    const char *tlp = NULL, *epp = NULL;
    if (in->has_train_loss)
        pgs_fmt_double(tl, in->train_loss, &tlp);
    if (in->has_epoch)
        pgs_fmt_double(ep, in->epoch, &epp);
    const char *p[] = { in->id, in->study_id, in->name, in->metadata ? in->metadata : "{}",
                        in->source_kind, in->source, tlp, epp, in->run, in->job_id,
                        in->created_at };
    /* UNIQUE (study_id, name) decides between concurrent submissions on any node: the second
     * waits for the first and gets 23505. */
    rc = pg_exec(c,
                 "INSERT INTO candidates (id, study_id, name, metadata, source_kind, source, "
                 "train_loss, epoch, run, state, job_id, created_at) "
                 "VALUES ($1,$2,$3,$4,$5,$6,$7::float8,$8::float8,$9,'queued',$10,$11)",
                 11, p, NULL, err);
    if (rc == TPV_EEXIST)
        return tpv_err_set(err, TPV_EEXIST, "name",
                           "a candidate named '%s' already exists in study %s", in->name,
                           in->study_id);
    if (rc == TPV_OK)
        rc = pgs_job_insert(c, in->job_id, "score", in->study_id, in->id, NULL, in->created_at,
                            err);
    if (rc == TPV_OK && in->has_probe_dump) {
        const char *q[] = { in->study_id };
        rc = pg_exec(c, "UPDATE studies SET has_probe_dumps = 1 WHERE id = $1", 1, q, NULL, err);
    }
    return rc;
}

static int pg_candidate_create_impl(void *impl, const struct store_candidate_new *in,
                                    int64_t max_queued, const struct store_idem *idem,
                                    const struct store_reply *reply, struct tpv_err *err)
{
    struct pgs *s = impl;
    struct cand_create_ctx x = { in, max_queued, idem, reply, 0 };
    int rc = pg_tx_run(s->pool, PG_READ_COMMITTED, candidate_create_body, &x, err);
    if (rc == TPV_OK) {
        pgs_changed(s, in->study_id, x.version);
        pgs_job_queued(s);
    }
    return rc;
}

#define CAND_SELECT                                                                                \
    "SELECT c.seq, c.id, c.study_id, c.name, c.metadata, "                                       \
    "CASE WHEN c.source::jsonb ->> 'kind' = 'onnx' THEN 'onnx' ELSE c.source_kind END, "         \
    "c.state, c.stability, c.job_id, c.created_at, j.progress, j.error_code, j.error_message, "  \
    "c.metrics"
#define CAND_COLS CAND_SELECT CAND_FROM
#define CAND_FROM " FROM candidates c LEFT JOIN jobs j ON j.id = c.job_id "
#define SCORE_COLS                                                                               \
    "SELECT s.candidate_id, s.noise, s.kind, s.split, s.value, s.stderr, s.estimator, "          \
    "s.samples, s.seed, s.wall_seconds, s.details, s.stderr_inputs FROM scores s "

static bool score_from_row(const struct pg_result *r, int row, struct store_score_row *o)
{
    memset(o, 0, sizeof *o);
    o->noise = pg_result_strdup(r, row, 1);
    o->kind = pg_result_strdup(r, row, 2);
    o->split = pg_result_strdup(r, row, 3);
    o->value = pg_result_double(r, row, 4);
    o->stderr_value = pg_result_double(r, row, 5);
    o->estimator = pg_result_strdup(r, row, 6);
    o->samples = (uint64_t)pg_result_int64(r, row, 7);
    o->seed = (uint64_t)pg_result_int64(r, row, 8);
    o->wall_seconds = pg_result_double(r, row, 9);
    o->details = pg_result_strdup(r, row, 10);
    o->stderr_inputs = pg_result_double(r, row, 11); /* NaN: NULL, none stored */
    if (!o->estimator && pg_result_null(r, row, 6))
        o->estimator = strdup("exact");
    if (!o->details && pg_result_null(r, row, 10))
        o->details = strdup("{}");
    return o->noise && o->kind && o->split && o->estimator && o->details;
}

static bool candidate_from_row(const struct pg_result *r, int row, struct store_candidate *o)
{
    memset(o, 0, sizeof *o);
    o->seq = pg_result_int64(r, row, 0);
    pgs_copy(o->id, sizeof o->id, r, row, 1);
    pgs_copy(o->study_id, sizeof o->study_id, r, row, 2);
    o->name = pg_result_strdup(r, row, 3);
    o->metadata = pg_result_strdup(r, row, 4);
    o->source_kind = pg_result_strdup(r, row, 5);
    o->state = pg_result_strdup(r, row, 6);
    o->stability = pg_result_strdup(r, row, 7);
    pgs_copy(o->job_id, sizeof o->job_id, r, row, 8);
    pgs_copy(o->created_at, sizeof o->created_at, r, row, 9);
    o->progress = pg_result_null(r, row, 10) ? 0 : pg_result_double(r, row, 10);
    o->error_code = pg_result_strdup(r, row, 11);
    o->error_message = pg_result_strdup(r, row, 12);
    o->metrics = pg_result_strdup(r, row, 13);
    return (o->metrics || pg_result_null(r, row, 13)) && o->name && o->metadata &&
           o->source_kind && o->state &&
           (o->stability || pg_result_null(r, row, 7)) &&
           (o->error_code || pg_result_null(r, row, 11)) &&
           (o->error_message || pg_result_null(r, row, 12));
}

/* Appends score row `row` of r to cand's scores. */
static bool candidate_add_score(struct store_candidate *cand, size_t *cap,
                                const struct pg_result *r, int row)
{
    if (cand->nscores == *cap) {
        size_t want = *cap ? *cap * 2 : 8;
        struct store_score_row *p = realloc(cand->scores, want * sizeof *p);
        if (!p)
            return false;
        cand->scores = p;
        *cap = want;
    }
    if (!score_from_row(r, row, &cand->scores[cand->nscores])) {
        struct store_score_row *o = &cand->scores[cand->nscores];
        free(o->noise), free(o->kind), free(o->split), free(o->estimator), free(o->details);
        return false;
    }
    cand->nscores++;
    return true;
}

#define JBR_COLS "SELECT j.candidate_id, j.id, j.state, j.created_at FROM jobs j "

/* The JBR rows of r (JBR_COLS, one candidate's, newest first) into cand's jbr_jobs; false when
 * out of memory. */
static bool candidate_add_jbr_rows(struct store_candidate *cand, const struct pg_result *r)
{
    size_t cap = 0;
    for (int i = 0; i < pg_result_rows(r); i++)
        if (!store_candidate_add_jbr(cand, &cap, pg_result_text(r, i, 1),
                                     pg_result_text(r, i, 2), pg_result_text(r, i, 3)))
            return false;
    return true;
}

static int pg_candidate_get_impl(void *impl, const char *study_id, const char *id,
                                 struct store_candidate *out, struct tpv_err *err)
{
    struct pgs *s = impl;
    memset(out, 0, sizeof *out);
    struct pg_conn *c;
    int rc = pg_pool_acquire(s->pool, &c, err);
    if (rc != TPV_OK)
        return rc;
    /* One snapshot for the row, its scores and its JBR jobs. */
    rc = pg_tx_begin(c, PG_REPEATABLE_READ, err);
    const char *p[] = { study_id, id };
    struct pg_result *r = NULL;
    if (rc == TPV_OK)
        rc = pg_exec(c, CAND_COLS "WHERE c.study_id = $1 AND c.id = $2", 2, p, &r, err);
    if (rc == TPV_OK) {
        if (pg_result_rows(r) == 0)
            rc = tpv_err_set(err, TPV_ENOTFOUND, "candidate_id",
                             "candidate %s not found in study %s", id, study_id);
        else if (!candidate_from_row(r, 0, out))
            rc = pgs_oom(err);
        pg_result_free(r);
        r = NULL;
    }
    if (rc == TPV_OK)
        rc = pg_exec(c, SCORE_COLS "WHERE s.candidate_id = $1 ORDER BY s.ctid", 1, p + 1, &r,
                     err);
    size_t cap = 0;
    for (int i = 0; rc == TPV_OK && i < pg_result_rows(r); i++)
        if (!candidate_add_score(out, &cap, r, i))
            rc = pgs_oom(err);
    pg_result_free(r);
    r = NULL;
    if (rc == TPV_OK)
        rc = pg_exec(c, JBR_COLS "WHERE j.candidate_id = $1 AND j.kind = 'jbr' ORDER BY j.seq DESC",
                     1, p + 1, &r, err);
    if (rc == TPV_OK && !candidate_add_jbr_rows(out, r))
        rc = pgs_oom(err);
    pg_result_free(r);
    pg_tx_rollback(c);
    pg_pool_release(s->pool, c);
    if (rc != TPV_OK)
        store_candidate_free(out);
    return rc;
}

static int pg_candidate_source_impl(void *impl, const char *study_id, const char *id,
                                    char **source, char kind[STORE_KIND_MAX],
                                    struct tpv_err *err)
{
    *source = NULL;
    kind[0] = '\0';
    const char *p[] = { study_id, id };
    struct pg_result *r;
    int rc = pgs_read(impl,
                      "SELECT c.source, CASE WHEN c.source::jsonb ->> 'kind' = 'onnx' THEN 'onnx' "
                      "ELSE c.source_kind END FROM candidates c WHERE c.study_id = $1 AND c.id = $2",
                      2, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0) {
        rc = tpv_err_set(err, TPV_ENOTFOUND, "candidate_id", "candidate %s not found in study %s",
                         id, study_id);
    } else {
        *source = pg_result_strdup(r, 0, 0);
        snprintf(kind, STORE_KIND_MAX, "%s", pg_result_text(r, 0, 1));
        if (!*source)
            rc = pgs_oom(err);
    }
    pg_result_free(r);
    return rc;
}

static int cand_seq_cmp(const void *a, const void *b)
{
    const struct store_candidate *x = a, *y = b;
    return strcmp(x->id, y->id);
}

/* TPV_ENOTFOUND (field study_id) unless the study exists: an empty page of a missing study would
 * hide a typo, as on SQLite. */
static int study_must_exist(struct pg_conn *c, const char *study_id, struct tpv_err *err)
{
    const char *p[] = { study_id };
    struct pg_result *r;
    int rc = pg_exec(c, "SELECT 1 FROM studies WHERE id = $1", 1, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0)
        rc = tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", study_id);
    pg_result_free(r);
    return rc;
}

static int pg_candidate_list_impl(void *impl, const char *study_id, int64_t after_seq, int limit,
                                  uint64_t max_bytes, struct store_candidate_page *page,
                                  struct tpv_err *err)
{
    struct pgs *s = impl;
    memset(page, 0, sizeof *page);
    if (limit < 1 || limit == INT_MAX)
        return tpv_err_set(err, TPV_EINVAL, "limit", "limit must be in [1, %d)", INT_MAX);
    char after[PGS_NUM_MAX], lim[PGS_NUM_MAX];
    pgs_fmt_int(after, after_seq);
    pgs_fmt_int(lim, (int64_t)limit + 1);
    const char *p[] = { study_id, after, lim };
    struct pg_conn *c;
    int rc = pg_pool_acquire(s->pool, &c, err);
    if (rc != TPV_OK)
        return rc;
    struct pg_result *r = NULL, *sr = NULL, *jr = NULL;
    /* The rows, their scores and their JBR jobs in one snapshot. */
    rc = pg_tx_begin(c, PG_REPEATABLE_READ, err);
    if (rc == TPV_OK)
        rc = study_must_exist(c, study_id, err);
    if (rc == TPV_OK)
        rc = pg_exec(c,
                     CAND_SELECT ", (SELECT coalesce(sum(coalesce(octet_length(details), 0) "
                     "+ 2 * octet_length(noise) + 384), 0) FROM scores "
                     "WHERE candidate_id = c.id) + (SELECT 96 * count(*) FROM jobs "
                     "WHERE candidate_id = c.id AND kind = 'jbr')" CAND_FROM
                     "WHERE c.study_id = $1 AND c.seq > $2::bigint ORDER BY c.seq LIMIT $3::bigint",
                     3, p, &r, err);
    if (rc == TPV_OK)
        rc = pg_exec(c,
                     SCORE_COLS "WHERE s.candidate_id IN (SELECT id FROM candidates WHERE "
                     "study_id = $1 AND seq > $2::bigint ORDER BY seq LIMIT $3::bigint) "
                     "ORDER BY s.ctid",
                     3, p, &sr, err);
    if (rc == TPV_OK)
        rc = pg_exec(c,
                     JBR_COLS "WHERE j.kind = 'jbr' AND j.candidate_id IN (SELECT id FROM "
                     "candidates WHERE study_id = $1 AND seq > $2::bigint ORDER BY seq "
                     "LIMIT $3::bigint) ORDER BY j.seq DESC",
                     3, p, &jr, err);
    pg_tx_rollback(c);
    pg_pool_release(s->pool, c);
    int rows = rc == TPV_OK ? pg_result_rows(r) : 0;
    if (rows && !(page->items = calloc((size_t)rows, sizeof *page->items)))
        rc = pgs_oom(err);
    uint64_t used = 0;
    for (int i = 0; rc == TPV_OK && i < rows; i++) {
        uint64_t more = pgs_row_bytes(r, i, 14, 1u << 4 | 1u << 7 | 1u << 13) +
                        (uint64_t)pg_result_int64(r, i, 14);
        if (page->n == (size_t)limit || pgs_page_full(page->n, used, more, max_bytes)) {
            page->next_seq = page->items[page->n - 1].seq;
            break;
        }
        used += more;
        if (!candidate_from_row(r, i, &page->items[page->n])) {
            store_candidate_free(&page->items[page->n]);
            rc = pgs_oom(err);
        } else {
            page->n++;
        }
    }
    /* Scores to their candidates through an index sorted by id (the page keeps seq order). */
    struct store_candidate *byid = NULL;
    size_t *caps = NULL;
    if (rc == TPV_OK && page->n) {
        byid = malloc(page->n * sizeof *byid);
        caps = calloc(page->n, sizeof *caps);
        if (!byid || !caps)
            rc = pgs_oom(err);
    }
    if (rc == TPV_OK && page->n) {
        for (size_t i = 0; i < page->n; i++) {
            byid[i] = page->items[i];
            byid[i].seq = (int64_t)i; /* the item's position, for the way back */
        }
        qsort(byid, page->n, sizeof *byid, cand_seq_cmp);
        for (int i = 0; rc == TPV_OK && i < pg_result_rows(sr); i++) {
            struct store_candidate key;
            snprintf(key.id, sizeof key.id, "%s", pg_result_text(sr, i, 0));
            struct store_candidate *hit =
                bsearch(&key, byid, page->n, sizeof *byid, cand_seq_cmp);
            if (!hit)
                continue; /* a row cut by the byte bound */
            struct store_candidate *item = &page->items[hit->seq];
            if (!candidate_add_score(item, &caps[hit->seq], sr, i))
                rc = pgs_oom(err);
        }
    }
    /* JBR jobs the same way, newest first as they come. */
    if (rc == TPV_OK && page->n) {
        memset(caps, 0, page->n * sizeof *caps);
        for (int i = 0; rc == TPV_OK && i < pg_result_rows(jr); i++) {
            struct store_candidate key;
            snprintf(key.id, sizeof key.id, "%s", pg_result_text(jr, i, 0));
            struct store_candidate *hit =
                bsearch(&key, byid, page->n, sizeof *byid, cand_seq_cmp);
            if (hit && !store_candidate_add_jbr(&page->items[hit->seq], &caps[hit->seq],
                                                pg_result_text(jr, i, 1),
                                                pg_result_text(jr, i, 2),
                                                pg_result_text(jr, i, 3)))
                rc = pgs_oom(err);
        }
    }
    free(byid);
    free(caps);
    pg_result_free(r);
    pg_result_free(sr);
    pg_result_free(jr);
    if (rc != TPV_OK)
        store_candidate_page_free(page);
    return rc;
}

static int candidate_state(struct pg_conn *c, const char *study_id, const char *id,
                           char state[STORE_KIND_MAX], struct tpv_err *err)
{
    const char *p[] = { study_id, id };
    struct pg_result *r;
    int rc = pg_exec(c, "SELECT state FROM candidates WHERE study_id = $1 AND id = $2 FOR UPDATE",
                     2, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0)
        rc = tpv_err_set(err, TPV_ENOTFOUND, "candidate_id", "candidate %s not found in study %s",
                         id, study_id);
    else
        snprintf(state, STORE_KIND_MAX, "%s", pg_result_text(r, 0, 0));
    pg_result_free(r);
    return rc;
}

static int candidate_delete_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct del_ctx *x = arg;
    char state[STORE_KIND_MAX] = "";
    bool hook = false;
    /* The study first (every writer of the study locks it in this order). */
    int rc = pgs_bump(c, x->study_id, &x->version, err);
    if (rc == TPV_OK)
        rc = candidate_state(c, x->study_id, x->id, state, err);
    const char *p[] = { x->id, x->now };
    if (rc == TPV_OK) /* the grace of blob garbage collection starts now */
        rc = pg_exec(c,
                     "UPDATE blobs SET released_at = $2 WHERE EXISTS (SELECT 1 FROM candidates c "
                     "WHERE c.id = $1 AND strpos(c.source, blobs.digest) > 0)",
                     2, p, NULL, err);
    if (rc == TPV_OK) /* scores and jobs go by ON DELETE CASCADE */
        rc = pg_exec(c, "DELETE FROM candidates WHERE id = $1", 1, p, NULL, err);
    if (rc == TPV_OK)
        rc = pgs_has_hook(c, x->study_id, &hook, err);
    if (rc == TPV_OK && hook)
        rc = deleted_event(x->s, c, "candidate.deleted", x->study_id, x->id, state, x->version,
                           x->now, err);
    return rc;
}

static int pg_candidate_delete_impl(void *impl, const char *study_id, const char *id,
                                    const char *now, struct tpv_err *err)
{
    struct pgs *s = impl;
    struct del_ctx x = { .s = s, .study_id = study_id, .id = id, .now = now };
    int rc = pg_tx_run(s->pool, PG_READ_COMMITTED, candidate_delete_body, &x, err);
    if (rc == TPV_OK)
        pgs_changed(s, study_id, x.version);
    return rc;
}

struct retry_ctx {
    const char *study_id, *id, *job_id, *now;
    int64_t max_queued, version;
};

static int candidate_retry_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct retry_ctx *x = arg;
    char state[STORE_KIND_MAX] = "";
    int rc = pgs_bump(c, x->study_id, &x->version, err);
    if (rc == TPV_OK)
        rc = candidate_state(c, x->study_id, x->id, state, err);
    if (rc == TPV_OK && strcmp(state, "failed") != 0 && strcmp(state, "canceled") != 0)
        rc = tpv_err_set(err, TPV_EPRECONDITION, "state",
                         "candidate %s is %s: only a failed or canceled candidate can be retried",
                         x->id, state);
    if (rc == TPV_OK)
        rc = pgs_queue_room(c, x->max_queued, err);
    if (rc == TPV_OK)
        rc = pgs_job_insert(c, x->job_id, "score", x->study_id, x->id, NULL, x->now, err);
    const char *p[] = { x->id, x->job_id };
    if (rc == TPV_OK)
        rc = pg_exec(c, "UPDATE candidates SET state = 'queued', job_id = $2 WHERE id = $1", 2, p,
                     NULL, err);
    if (rc == TPV_OK)
        rc = pg_exec(c, "DELETE FROM scores WHERE candidate_id = $1", 1, p, NULL, err);
    return rc;
}

static int pg_candidate_retry_impl(void *impl, const char *study_id, const char *id,
                                   const char *job_id, int64_t max_queued, const char *now,
                                   struct tpv_err *err)
{
    struct pgs *s = impl;
    struct retry_ctx x = { study_id, id, job_id, now, max_queued, 0 };
    int rc = pg_tx_run(s->pool, PG_READ_COMMITTED, candidate_retry_body, &x, err);
    if (rc == TPV_OK) {
        pgs_changed(s, study_id, x.version);
        pgs_job_queued(s);
    }
    return rc;
}

struct jbr_ctx {
    const char *study_id, *candidate_id, *job_id, *params, *now;
    int64_t max_queued;
};

static int jbr_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct jbr_ctx *x = arg;
    char state[STORE_KIND_MAX];
    int rc = candidate_state(c, x->study_id, x->candidate_id, state, err);
    if (rc == TPV_OK)
        rc = pgs_queue_room(c, x->max_queued, err);
    if (rc == TPV_OK)
        rc = pgs_job_insert(c, x->job_id, "jbr", x->study_id, x->candidate_id, x->params, x->now,
                            err);
    return rc;
}

static int pg_jbr_create_impl(void *impl, const char *study_id, const char *candidate_id,
                              const char *job_id, const char *params, int64_t max_queued,
                              const char *now, struct tpv_err *err)
{
    struct pgs *s = impl;
    struct jbr_ctx x = { study_id, candidate_id, job_id, params, now, max_queued };
    int rc = pg_tx_run(s->pool, PG_READ_COMMITTED, jbr_body, &x, err);
    if (rc == TPV_OK)
        pgs_job_queued(s);
    return rc;
}

/* ---- ranking ---- */

static int pg_rank_rows_impl(void *impl, const char *study_id, const char *noise,
                             const char *split, struct store_rank_row **rows, size_t *nrows,
                             struct tpv_err *err)
{
    *rows = NULL;
    *nrows = 0;
    const char *p[] = { study_id, noise, split };
    struct pg_result *r;
    int rc = pgs_read(impl,
                      "SELECT c.id, c.name, c.metadata, c.state, c.train_loss, c.epoch, c.run, "
                      "s.value, s.stderr, s.stderr_inputs, "
                      "coalesce((s.details::jsonb ->> 'nonlinear') = 'true', false) "
                      "FROM candidates c LEFT JOIN scores s ON "
                      "s.candidate_id = c.id AND s.noise = $2 AND s.split = $3 "
                      "WHERE c.study_id = $1 ORDER BY (s.value IS NULL), s.value, c.seq",
                      3, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    int n = pg_result_rows(r);
    struct store_rank_row *out = n ? calloc((size_t)n, sizeof *out) : NULL;
    if (n && !out)
        rc = pgs_oom(err);
    for (int i = 0; rc == TPV_OK && i < n; i++) {
        struct store_rank_row *o = &out[i];
        pgs_copy(o->id, sizeof o->id, r, i, 0);
        o->name = pg_result_strdup(r, i, 1);
        o->metadata = pg_result_strdup(r, i, 2);
        pgs_copy(o->state, sizeof o->state, r, i, 3);
        o->has_train_loss = !pg_result_null(r, i, 4);
        o->train_loss = pg_result_double(r, i, 4);
        o->has_epoch = !pg_result_null(r, i, 5);
        o->epoch = pg_result_double(r, i, 5);
        o->run = pg_result_strdup(r, i, 6);
        o->has_value = !pg_result_null(r, i, 7);
        o->value = pg_result_double(r, i, 7);
        o->stderr_value = pg_result_double(r, i, 8);
        o->has_stderr_inputs = !pg_result_null(r, i, 9);
        o->stderr_inputs = pg_result_double(r, i, 9);
        o->nonlinear = !pg_result_null(r, i, 10) && pg_result_text(r, i, 10)[0] == 't';
        *nrows = (size_t)i + 1;
        if (!o->name || !o->metadata || (!o->run && !pg_result_null(r, i, 6)))
            rc = pgs_oom(err);
    }
    pg_result_free(r);
    if (rc != TPV_OK) {
        store_rank_rows_free(out, *nrows);
        *nrows = 0;
        return rc;
    }
    *rows = out;
    return TPV_OK;
}

/* ---- API tokens ---- */

struct token_ctx {
    const char *id, *name, *role, *hash, *now;
};

static int token_create_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct token_ctx *x = arg;
    const char *p[] = { x->id, x->name, x->hash, x->role, x->now };
    /* Names are unique by rule, not by index (as on SQLite): a transaction lock on the name's
     * hash makes two nodes creating one name take turns. */
    int rc = pg_exec(c, "SELECT pg_advisory_xact_lock(hashtext('tpv_token:' || $1))", 1, p + 1,
                     NULL, err);
    struct pg_result *r;
    if (rc == TPV_OK)
        rc = pg_exec(c, "SELECT 1 FROM tokens WHERE name = $1", 1, p + 1, &r, err);
    if (rc != TPV_OK)
        return rc;
    int taken = pg_result_rows(r);
    pg_result_free(r);
    if (taken)
        return tpv_err_set(err, TPV_EEXIST, "name", "a token named '%s' already exists", x->name);
    return pg_exec(c,
                   "INSERT INTO tokens (id, name, hash, role, created_at) "
                   "VALUES ($1, $2, $3, $4, $5)",
                   5, p, NULL, err);
}

static int pg_token_create_impl(void *impl, const char *id, const char *name, const char *role,
                                const char *hash_hex, const char *now, struct tpv_err *err)
{
    struct pgs *s = impl;
    struct token_ctx x = { id, name, role, hash_hex, now };
    return pg_tx_run(s->pool, PG_READ_COMMITTED, token_create_body, &x, err);
}

static int pg_token_find_impl(void *impl, const char *hash_hex, struct store_token *out,
                              struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    const char *p[] = { hash_hex };
    struct pg_result *r;
    int rc = pgs_read(impl,
                      "SELECT hash, role, revoked_at IS NOT NULL, name FROM tokens WHERE hash = $1",
                      1, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0) {
        rc = tpv_err_set(err, TPV_ENOTFOUND, "token", "no such token");
    } else {
        pgs_copy(out->hash, sizeof out->hash, r, 0, 0);
        pgs_copy(out->role, sizeof out->role, r, 0, 1);
        out->revoked = strcmp(pg_result_text(r, 0, 2), "t") == 0;
        pgs_copy(out->name, sizeof out->name, r, 0, 3);
    }
    pg_result_free(r);
    return rc;
}

static int pg_token_list_impl(void *impl, struct store_token_row **rows, size_t *n,
                              struct tpv_err *err)
{
    *rows = NULL;
    *n = 0;
    struct pg_result *r;
    int rc = pgs_read(impl,
                      "SELECT name, role, created_at, revoked_at FROM tokens "
                      "ORDER BY created_at, name",
                      0, NULL, &r, err);
    if (rc != TPV_OK)
        return rc;
    int k = pg_result_rows(r);
    if (k) {
        *rows = calloc((size_t)k, sizeof **rows);
        if (!*rows) {
            pg_result_free(r);
            return pgs_oom(err);
        }
    }
    for (int i = 0; i < k; i++) {
        struct store_token_row *o = &(*rows)[i];
        pgs_copy(o->name, sizeof o->name, r, i, 0);
        pgs_copy(o->role, sizeof o->role, r, i, 1);
        pgs_copy(o->created_at, sizeof o->created_at, r, i, 2);
        pgs_copy(o->revoked_at, sizeof o->revoked_at, r, i, 3);
    }
    *n = (size_t)k;
    pg_result_free(r);
    return TPV_OK;
}

static int token_revoke_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct token_ctx *x = arg;
    const char *p[] = { x->name, x->now };
    struct pg_result *r;
    int rc = pg_exec(c,
                     "UPDATE tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
                     2, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    int64_t n = pg_result_affected(r);
    pg_result_free(r);
    if (n > 0)
        return TPV_OK;
    rc = pg_exec(c, "SELECT 1 FROM tokens WHERE name = $1", 1, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    int exists = pg_result_rows(r);
    pg_result_free(r);
    return exists ? tpv_err_set(err, TPV_EPRECONDITION, "name", "token '%s' was already revoked",
                                x->name)
                  : tpv_err_set(err, TPV_ENOTFOUND, "name", "no token named '%s'", x->name);
}

static int pg_token_revoke_impl(void *impl, const char *name, const char *now,
                                struct tpv_err *err)
{
    struct pgs *s = impl;
    struct token_ctx x = { .name = name, .now = now };
    return pg_tx_run(s->pool, PG_READ_COMMITTED, token_revoke_body, &x, err);
}

static int count_query(void *impl, const char *sql, int64_t *n, struct tpv_err *err)
{
    struct pg_result *r;
    *n = 0;
    int rc = pgs_read(impl, sql, 0, NULL, &r, err);
    if (rc == TPV_OK) {
        *n = pg_result_int64(r, 0, 0);
        pg_result_free(r);
    }
    return rc;
}

static int pg_token_count_impl(void *impl, int64_t *n, struct tpv_err *err)
{
    return count_query(impl, "SELECT count(*) FROM tokens", n, err);
}

/* ---- statistics ---- */

static int pg_jobs_queued_impl(void *impl, int64_t *n, struct tpv_err *err)
{
    return count_query(impl, "SELECT count(*) FROM jobs WHERE state = 'queued'", n, err);
}

static int pg_stats_impl(void *impl, struct store_stats *out, struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    struct pg_result *r;
    int rc = pgs_read(impl,
                      "SELECT count(*) FILTER (WHERE state = 'queued'), "
                      "count(*) FILTER (WHERE state = 'running'), "
                      "count(*) FILTER (WHERE state = 'succeeded'), "
                      "count(*) FILTER (WHERE state = 'failed'), "
                      "count(*) FILTER (WHERE state = 'canceled'), "
                      "(SELECT count(*) FROM blobs), (SELECT coalesce(sum(size), 0) FROM blobs), "
                      "(SELECT count(*) FROM studies), (SELECT count(*) FROM candidates) "
                      "FROM jobs",
                      0, NULL, &r, err);
    if (rc != TPV_OK)
        return rc;
    out->jobs_queued = pg_result_int64(r, 0, 0);
    out->jobs_running = pg_result_int64(r, 0, 1);
    out->jobs_succeeded = pg_result_int64(r, 0, 2);
    out->jobs_failed = pg_result_int64(r, 0, 3);
    out->jobs_canceled = pg_result_int64(r, 0, 4);
    out->blobs = pg_result_int64(r, 0, 5);
    out->blob_bytes = pg_result_int64(r, 0, 6);
    out->studies = pg_result_int64(r, 0, 7);
    out->candidates = pg_result_int64(r, 0, 8);
    pg_result_free(r);
    return TPV_OK;
}

/* ---- blob rows ---- */

static int pg_blob_record_impl(void *impl, const char *digest, uint64_t size, const char *now,
                               struct tpv_err *err)
{
    char sz[PGS_NUM_MAX];
    pgs_fmt_int(sz, (int64_t)size);
    const char *p[] = { digest, sz, now };
    return pgs_read(impl,
                    "INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2::bigint, $3) "
                    "ON CONFLICT (digest) DO UPDATE SET released_at = excluded.created_at",
                    3, p, NULL, err);
}

struct blob_ctx {
    const char *digest, *cutoff;
    store_blob_remove_fn rm;
    void *ctx;
    int limit, removed;
};

#define BLOB_REFS_SQL                                                                            \
    "SELECT 'study', study_id FROM input_sets WHERE digest = $1 UNION ALL "                      \
    "SELECT 'study', id FROM studies WHERE strpos(noise_models, $1) > 0 UNION ALL "              \
    "SELECT 'candidate', id FROM candidates WHERE strpos(source, $1) > 0 UNION ALL "             \
    "SELECT 'job', id FROM jobs WHERE strpos(coalesce(params, ''), $1) > 0 LIMIT 1"

static int blob_delete_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct blob_ctx *x = arg;
    const char *p[] = { x->digest };
    struct pg_result *r;
    /* The row lock keeps a concurrent upload's record (and GC on another node) out. */
    int rc = pg_exec(c, "SELECT 1 FROM blobs WHERE digest = $1 FOR UPDATE", 1, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    int found = pg_result_rows(r);
    pg_result_free(r);
    if (!found)
        return tpv_err_set(err, TPV_ENOTFOUND, "digest", "blob %s not found", x->digest);
    if ((rc = pg_exec(c, BLOB_REFS_SQL, 1, p, &r, err)) != TPV_OK)
        return rc;
    if (pg_result_rows(r) > 0)
        rc = tpv_err_set(err, TPV_EPRECONDITION, "digest", "blob %s is used by %s %s", x->digest,
                         pg_result_text(r, 0, 0), pg_result_text(r, 0, 1));
    pg_result_free(r);
    if (rc == TPV_OK)
        rc = pg_exec(c, "DELETE FROM blobs WHERE digest = $1", 1, p, NULL, err);
    if (rc == TPV_OK && x->rm)
        rc = x->rm(x->ctx, x->digest, err);
    return rc;
}

static int pg_blob_delete_impl(void *impl, const char *digest, store_blob_remove_fn rm,
                               void *ctx, struct tpv_err *err)
{
    struct pgs *s = impl;
    struct blob_ctx x = { .digest = digest, .rm = rm, .ctx = ctx };
    return pg_tx_run(s->pool, PG_READ_COMMITTED, blob_delete_body, &x, err);
}

static int blob_gc_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct blob_ctx *x = arg;
    x->removed = 0;
    char lim[PGS_NUM_MAX];
    pgs_fmt_int(lim, x->limit);
    const char *p[] = { x->cutoff, lim };
    struct pg_result *r;
    int rc = pg_exec(c,
                     "DELETE FROM blobs WHERE digest IN (SELECT b.digest FROM blobs b WHERE "
                     "greatest(b.created_at, coalesce(b.released_at, '')) < $1 AND NOT EXISTS "
                     "(SELECT 1 FROM input_sets i WHERE i.digest = b.digest) AND NOT EXISTS "
                     "(SELECT 1 FROM studies s WHERE strpos(s.noise_models, b.digest) > 0) "
                     "AND NOT EXISTS (SELECT 1 FROM candidates c "
                     "WHERE strpos(c.source, b.digest) > 0) AND NOT EXISTS (SELECT 1 FROM "
                     "jobs j WHERE strpos(coalesce(j.params, ''), b.digest) > 0) LIMIT $2::int "
                     "FOR UPDATE SKIP LOCKED) RETURNING digest",
                     2, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    for (int i = 0; rc == TPV_OK && i < pg_result_rows(r); i++) {
        if (x->rm)
            rc = x->rm(x->ctx, pg_result_text(r, i, 0), err);
        if (rc == TPV_OK)
            x->removed++;
    }
    pg_result_free(r);
    return rc;
}

static int pg_blob_gc_impl(void *impl, const char *cutoff, int limit, store_blob_remove_fn rm,
                           void *ctx, int *removed, struct tpv_err *err)
{
    struct pgs *s = impl;
    struct blob_ctx x = { .cutoff = cutoff, .rm = rm, .ctx = ctx, .limit = limit };
    *removed = 0;
    int rc = pg_tx_run(s->pool, PG_READ_COMMITTED, blob_gc_body, &x, err);
    if (rc == TPV_OK)
        *removed = x.removed;
    return rc;
}

const struct store_ops store_pg_ops = {
    .name = "postgresql",
    .open = pg_open_impl,
    .close = pg_close_impl,
    .ping = pg_ping_impl,
    .schema_version = pg_schema_version_impl,
    .version_cache_ms = pg_version_cache_ms_impl,
    .version_epoch = pg_version_epoch_impl,
    .idem_lookup = pg_idem_lookup_impl,
    .idem_expire = pg_idem_expire_impl,
    .study_create = pg_study_create_impl,
    .study_get = pg_study_get_impl,
    .study_version = pg_study_version_impl,
    .study_info = pg_study_info_impl,
    .study_list = pg_study_list_impl,
    .study_delete = pg_study_delete_impl,
    .input_set = pg_input_set_impl,
    .candidate_create = pg_candidate_create_impl,
    .candidate_get = pg_candidate_get_impl,
    .candidate_source = pg_candidate_source_impl,
    .candidate_list = pg_candidate_list_impl,
    .candidate_delete = pg_candidate_delete_impl,
    .candidate_retry = pg_candidate_retry_impl,
    .jbr_create = pg_jbr_create_impl,
    .job_get = pgs_job_get,
    .job_cancel = pgs_job_cancel,
    .job_claim = pgs_job_claim,
    .job_renew = pgs_job_renew,
    .job_succeed = pgs_job_succeed,
    .job_finish = pgs_job_finish,
    .job_release = pgs_job_release,
    .jobs_recover = pgs_jobs_recover,
    .jobs_requeue_expired = pgs_jobs_requeue_expired,
    .jobs_queued = pg_jobs_queued_impl,
    .metrics_merge = pgs_metrics_merge,
    .metric_names = pgs_metric_names,
    .agree_rows = pgs_agree_rows,
    .rank_rows = pg_rank_rows_impl,
    .rank_contributions = pgs_rank_contributions,
    .outbox_due = pgs_outbox_due,
    .outbox_next_due = pgs_outbox_next_due,
    .outbox_delivered = pgs_outbox_delivered,
    .outbox_retry = pgs_outbox_retry,
    .outbox_fail = pgs_outbox_fail,
    .outbox_stats = pgs_outbox_stats,
    .token_create = pg_token_create_impl,
    .token_find = pg_token_find_impl,
    .token_list = pg_token_list_impl,
    .token_revoke = pg_token_revoke_impl,
    .token_count = pg_token_count_impl,
    .stats = pg_stats_impl,
    .blob_record = pg_blob_record_impl,
    .blob_delete = pg_blob_delete_impl,
    .blob_gc = pg_blob_gc_impl,
};
