/* store.c: the dispatcher of storage/ (storage/DESIGN-phase2.md section 1): `store_X(st, ...)`
 * checks its arguments and calls `st->ops->X(st->impl, ...)` of the backend the URL chose
 * (store_sqlite_ops; PostgreSQL's store_pg_ops once it exists).  It owns what is backend-neutral:
 * ids, times, page tokens, the study version cache, the hooks and the event renderer, and the
 * blob store (storage/blobs.h), whose files no backend touches. */
#include "storage/store.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "storage/blobs.h"
#include "storage/metrics.h"
#include "storage/store_ops.h"
#include "storage/store_pg.h"
#include "storage/store_sqlite.h"

/* Study versions as last read, valid while no write has been committed since (see
 * store_study_version): the ranking polls of dashboards read them on every request. */
#define VERSION_CACHE_SLOTS 1024
struct version_slot {
    char id[STORE_ID_MAX];
    int64_t version;
    uint64_t gen; /* commit generation the version was read under */
    int64_t expires_ms; /* monotonic clock; INT64_MAX: while gen holds */
};

struct store {
    const struct store_ops *ops;
    void *impl;
    struct blob_store *blobs;
    struct store_hooks hooks;
    store_event_render_fn render_event;
    /* Commits the backend reported (after they are visible). */
    _Atomic uint64_t commit_gen;
    pthread_mutex_t version_lock;
    struct version_slot *versions;
};

struct store_blob_writer {
    struct store *st;
    struct blob_writer *w;
};

double store_clock_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void store_now_rfc3339(char out[STORE_TIME_MAX])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, STORE_TIME_MAX, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, STORE_TIME_MAX - n, ".%03ldZ", ts.tv_nsec / 1000000L);
}

void store_id_new(char out[STORE_ID_MAX], const char *prefix)
{
    unsigned char r[8];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
        /* getrandom on Linux >= 3.17 does not fail for 8 bytes once seeded; keep ids unique
         * anyway with a clock + counter fallback. */
        static _Atomic unsigned long counter;
        unsigned long long v = (unsigned long long)time(NULL) << 20 ^ counter++;
        memcpy(r, &v, sizeof r);
    }
    snprintf(out, STORE_ID_MAX, "%.8s_%02x%02x%02x%02x%02x%02x%02x%02x", prefix, r[0], r[1], r[2],
             r[3], r[4], r[5], r[6], r[7]);
}

/* Tokens hide the row position behind a fixed mask and a check nibble so that a client can
 * neither read them as numbers nor forge a neighbour by accident. */
#define TOKEN_MASK 0x5f3759df9e3779b9ULL
void store_page_token_encode(int64_t seq, char out[STORE_TOKEN_MAX])
{
    uint64_t v = (uint64_t)seq ^ TOKEN_MASK;
    unsigned check = 0;
    for (int i = 0; i < 16; i++)
        check ^= (unsigned)(v >> (4 * i)) & 0xf;
    snprintf(out, STORE_TOKEN_MAX, "%016llx%x", (unsigned long long)v, check);
}

int store_page_token_decode(const char *token, int64_t *seq)
{
    if (!token || strlen(token) != 17 || strspn(token, "0123456789abcdef") != 17)
        return TPV_EINVAL;
    char hex[17];
    memcpy(hex, token, 16);
    hex[16] = '\0';
    uint64_t v = strtoull(hex, NULL, 16);
    unsigned check = 0;
    for (int i = 0; i < 16; i++)
        check ^= (unsigned)(v >> (4 * i)) & 0xf;
    unsigned given = (unsigned)(token[16] <= '9' ? token[16] - '0' : token[16] - 'a' + 10);
    uint64_t raw = v ^ TOKEN_MASK;
    if (given != check || raw > INT64_MAX)
        return TPV_EINVAL;
    *seq = (int64_t)raw;
    return TPV_OK;
}

/* ---- what the backend reports ---- */

static void sink_study_changed(void *ctx, const char *study_id, int64_t version)
{
    struct store *st = ctx;
    if (st->hooks.study_changed)
        st->hooks.study_changed(st->hooks.ctx, study_id, version);
}

static void sink_job_queued(void *ctx)
{
    struct store *st = ctx;
    if (st->hooks.job_queued)
        st->hooks.job_queued(st->hooks.ctx);
}

static void sink_committed(void *ctx)
{
    struct store *st = ctx;
    atomic_fetch_add(&st->commit_gen, 1);
}

/* NULL without a renderer: the backend fails the write rather than lose the event. */
static char *sink_render_event(void *ctx, const struct store_event *ev, const char *event_id)
{
    struct store *st = ctx;
    return st->render_event ? st->render_event(ev, event_id) : NULL;
}

void store_set_event_renderer(struct store *st, store_event_render_fn render)
{
    st->render_event = render;
}

void store_set_hooks(struct store *st, const struct store_hooks *hooks)
{
    st->hooks = *hooks;
}

/* ---- open and close ---- */

/* The backend of a --database URL and what it is given: the path after "sqlite:", the whole
 * URI for PostgreSQL.  TPV_EINVAL (field "database") for anything else. */
static int backend_of(const char *url, const struct store_ops **ops, const char **target,
                      struct tpv_err *err)
{
    if (url && strncmp(url, "sqlite:", 7) == 0 && url[7]) {
        *ops = &store_sqlite_ops;
        *target = url + 7;
        return TPV_OK;
    }
    if (store_pg_url(url)) {
        *ops = &store_pg_ops;
        *target = url;
        return TPV_OK;
    }
    return tpv_err_set(err, TPV_EINVAL, "database",
                       "--database must be sqlite:PATH or postgresql://..., not '%.80s'",
                       url ? url : "");
}

/* The default blob folder of a SQLite database: "blobs" beside the database file. */
static int default_blob_dir(const char *db_path, char *out, size_t cap, struct tpv_err *err)
{
    const char *slash = strrchr(db_path, '/');
    int n = slash ? snprintf(out, cap, "%.*s/blobs", (int)(slash - db_path), db_path)
                  : snprintf(out, cap, "blobs");
    if (n < 0 || (size_t)n >= cap)
        return tpv_err_set(err, TPV_EINVAL, "blob_dir", "blob folder path too long");
    if (slash == db_path)
        snprintf(out, cap, "/blobs");
    return TPV_OK;
}

int store_open_url(struct store **out, const char *url, const struct store_options *opts,
                   struct tpv_err *err)
{
    *out = NULL;
    const struct store_ops *ops = NULL;
    const char *target = NULL;
    char blob_dir[PATH_MAX];
    int rc = backend_of(url, &ops, &target, err);
    if (rc != TPV_OK)
        return rc;
    if (opts && opts->blob_dir && opts->blob_dir[0]) {
        if ((size_t)snprintf(blob_dir, sizeof blob_dir, "%s", opts->blob_dir) >= sizeof blob_dir)
            return tpv_err_set(err, TPV_EINVAL, "blob_dir", "blob folder path too long");
    } else if (ops == &store_sqlite_ops) {
        rc = default_blob_dir(target, blob_dir, sizeof blob_dir, err);
        if (rc != TPV_OK)
            return rc;
    } else {
        return tpv_err_set(err, TPV_EINVAL, "blob_dir",
                           "a shared database needs --blob-dir (a folder every node shares)");
    }
    struct store *st = calloc(1, sizeof *st);
    if (!st)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    st->ops = ops;
    pthread_mutex_init(&st->version_lock, NULL);
    st->versions = calloc(VERSION_CACHE_SLOTS, sizeof *st->versions);
    if (!st->versions) {
        store_close(st);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    struct store_sink sink = { .ctx = st, .study_changed = sink_study_changed,
                               .job_queued = sink_job_queued, .committed = sink_committed,
                               .render_event = sink_render_event };
    rc = ops->open(&st->impl, target, opts, &sink, err);
    /* After the database (which holds the SQLite lock): the owner may clear temporaries.  With
     * SQLite the lock makes this process the only writer, so every temporary is stale; nodes
     * sharing a folder only remove those older than any upload could take. */
    bool shared = opts && opts->shared;
    if (rc == TPV_OK)
        rc = blob_store_open(&st->blobs, blob_dir, !shared,
                             ops == &store_sqlite_ops ? 0 : 24 * 3600.0, err);
    if (rc != TPV_OK) {
        store_close(st);
        return rc;
    }
    *out = st;
    return TPV_OK;
}

int store_open_with(struct store **out, const char *data_dir, const struct store_options *opts,
                    struct tpv_err *err)
{
    char url[PATH_MAX + 16];
    *out = NULL;
    if (!data_dir || !data_dir[0] ||
        (size_t)snprintf(url, sizeof url, "sqlite:%s/tpvd.db", data_dir) >= sizeof url - 64)
        return tpv_err_set(err, TPV_EINVAL, "data_dir", "data directory path empty or too long");
    return store_open_url(out, url, opts, err);
}

int store_open(struct store **out, const char *data_dir, struct tpv_err *err)
{
    return store_open_with(out, data_dir, NULL, err);
}

void store_close(struct store *st)
{
    if (!st)
        return;
    if (st->impl)
        st->ops->close(st->impl);
    blob_store_close(st->blobs);
    free(st->versions);
    pthread_mutex_destroy(&st->version_lock);
    free(st);
}

const char *store_backend_name(const struct store *st)
{
    return st->ops->name;
}

int store_ping(struct store *st, struct tpv_err *err)
{
    return st->ops->ping(st->impl, err);
}

int store_schema_version(struct store *st)
{
    int v = -1;
    struct tpv_err ignored;
    return st->ops->schema_version(st->impl, &v, &ignored) == TPV_OK ? v : -1;
}

/* ---- idempotency ---- */

void store_replay_free(struct store_replay *r)
{
    if (!r)
        return;
    free(r->body);
    free(r->location);
    memset(r, 0, sizeof *r);
}

/* RFC 3339 UTC with milliseconds of `t` seconds since the epoch, as store_now_rfc3339 writes. */
static void rfc3339_at(double t, char out[STORE_TIME_MAX])
{
    time_t sec = (time_t)t;
    struct tm tm;
    gmtime_r(&sec, &tm);
    int ms = (int)((t - (double)sec) * 1000.0);
    ms = ms < 0 ? 0 : ms > 999 ? 999 : ms;
    char buf[24];
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, STORE_TIME_MAX, "%s.%03dZ", buf, ms);
}

int store_idempotency_expire(struct store *st, double max_age_s, int *removed,
                             struct tpv_err *err)
{
    /* Times are stored as fixed-width RFC 3339 UTC strings, which sort like the times. */
    char cutoff[STORE_TIME_MAX];
    rfc3339_at(store_clock_now() - (double)(time_t)max_age_s, cutoff);
    return st->ops->idem_expire(st->impl, cutoff, removed, err);
}

int store_idem_lookup(struct store *st, const struct store_idem *idem, struct store_replay *out,
                      struct tpv_err *err)
{
    return st->ops->idem_lookup(st->impl, idem, out, err);
}

/* ---- studies ---- */

int store_study_create(struct store *st, const struct store_study_new *s,
                       const struct store_idem *idem, const struct store_reply *reply,
                       struct tpv_err *err)
{
    return st->ops->study_create(st->impl, s, idem, reply, err);
}

int store_study_get(struct store *st, const char *id, struct store_study *out,
                    struct tpv_err *err)
{
    return st->ops->study_get(st->impl, id, out, err);
}

static struct version_slot *version_slot_of(struct store *st, const char *id)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return &st->versions[h % VERSION_CACHE_SLOTS];
}

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A version read under commit generation `gen` stays valid until the generation moves or the
 * backend's bound on it runs out. */
static bool version_cached(struct store *st, const char *id, uint64_t gen, int64_t now_ms,
                           int64_t *version)
{
    bool hit = false;
    pthread_mutex_lock(&st->version_lock);
    struct version_slot *v = version_slot_of(st, id);
    if (v->gen == gen && now_ms < v->expires_ms && strcmp(v->id, id) == 0) {
        *version = v->version;
        hit = true;
    }
    pthread_mutex_unlock(&st->version_lock);
    return hit;
}

static void version_remember(struct store *st, const char *id, uint64_t gen,
                             int64_t expires_ms, int64_t version)
{
    if (strlen(id) >= STORE_ID_MAX)
        return;
    pthread_mutex_lock(&st->version_lock);
    struct version_slot *v = version_slot_of(st, id);
    snprintf(v->id, sizeof v->id, "%s", id);
    v->version = version;
    v->gen = gen;
    v->expires_ms = expires_ms;
    pthread_mutex_unlock(&st->version_lock);
}

/* Polls read this on every request: served from memory while no commit happened since it was
 * read (commits of other nodes count: the backend reports them as it learns of them) and for
 * as long as the backend trusts that it hears of every commit.  The generation is taken before
 * the read, so a commit racing the read only makes the entry stale (never a stale version under
 * a current generation). */
int store_study_version(struct store *st, const char *id, int64_t *version, struct tpv_err *err)
{
    uint64_t gen = atomic_load(&st->commit_gen) + 1; /* +1: a zeroed slot never matches */
    int64_t valid_ms = st->ops->version_cache_ms(st->impl);
    int64_t now = valid_ms > 0 ? monotonic_ms() : 0;
    if (valid_ms > 0 && version_cached(st, id, gen, now, version))
        return TPV_OK;
    int rc = st->ops->study_version(st->impl, id, version, err);
    if (rc == TPV_OK && valid_ms > 0)
        version_remember(st, id, gen,
                         valid_ms == STORE_VERSION_CACHE_FOREVER ? INT64_MAX : now + valid_ms,
                         *version);
    return rc;
}

int store_study_info(struct store *st, const char *id, struct store_study_info *out,
                     struct tpv_err *err)
{
    return st->ops->study_info(st->impl, id, out, err);
}

/* A page bound both backends can read limit + 1 rows under. */
static int check_limit(int limit, struct tpv_err *err)
{
    if (limit < 1 || limit == INT_MAX)
        return tpv_err_set(err, TPV_EINVAL, "limit", "limit must be in [1, %d)", INT_MAX);
    return TPV_OK;
}

int store_study_list(struct store *st, int64_t after_seq, int limit, uint64_t max_bytes,
                     struct store_study_page *page, struct tpv_err *err)
{
    memset(page, 0, sizeof *page);
    int rc = check_limit(limit, err);
    return rc != TPV_OK ? rc
                        : st->ops->study_list(st->impl, after_seq, limit, max_bytes, page, err);
}

int store_study_delete(struct store *st, const char *id, struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    return st->ops->study_delete(st->impl, id, now, err);
}

int store_input_set(struct store *st, const char *study_id, const char *split, const char *digest,
                    int64_t n, struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    return st->ops->input_set(st->impl, study_id, split, digest, n, now, err);
}

/* ---- candidates ---- */

int store_candidate_create(struct store *st, const struct store_candidate_new *c,
                           int64_t max_queued, const struct store_idem *idem,
                           const struct store_reply *reply, struct tpv_err *err)
{
    return st->ops->candidate_create(st->impl, c, max_queued, idem, reply, err);
}

int store_candidate_get(struct store *st, const char *study_id, const char *id,
                        struct store_candidate *out, struct tpv_err *err)
{
    return st->ops->candidate_get(st->impl, study_id, id, out, err);
}

int store_candidate_source(struct store *st, const char *study_id, const char *id, char **source,
                           char kind[16], struct tpv_err *err)
{
    return st->ops->candidate_source(st->impl, study_id, id, source, kind, err);
}

int store_candidate_list(struct store *st, const char *study_id, int64_t after_seq, int limit,
                         uint64_t max_bytes, struct store_candidate_page *page,
                         struct tpv_err *err)
{
    memset(page, 0, sizeof *page);
    int rc = check_limit(limit, err);
    return rc != TPV_OK ? rc
                        : st->ops->candidate_list(st->impl, study_id, after_seq, limit,
                                                  max_bytes, page, err);
}

int store_jbr_create(struct store *st, const char *study_id, const char *candidate_id,
                     const char *job_id, const char *params, int64_t max_queued,
                     struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    return st->ops->jbr_create(st->impl, study_id, candidate_id, job_id, params, max_queued, now,
                               err);
}

int store_candidate_delete(struct store *st, const char *study_id, const char *id,
                           struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    return st->ops->candidate_delete(st->impl, study_id, id, now, err);
}

int store_candidate_retry(struct store *st, const char *study_id, const char *id,
                          const char *job_id, int64_t max_queued, struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    return st->ops->candidate_retry(st->impl, study_id, id, job_id, max_queued, now, err);
}

/* ---- jobs ---- */

int store_job_get(struct store *st, const char *id, struct store_job *out, struct tpv_err *err)
{
    return st->ops->job_get(st->impl, id, out, err);
}

int store_job_cancel(struct store *st, const char *id, struct store_job *out,
                     struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    return st->ops->job_cancel(st->impl, id, now, out, err);
}

int store_job_claim(struct store *st, const char *owner, double lease_s, struct store_claim *out,
                    struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    return st->ops->job_claim(st->impl, owner, lease_s, store_clock_now(), now, out, err);
}

int store_job_progress(struct store *st, const char *id, const char *owner, double progress,
                       double lease_s, bool *cancel, struct tpv_err *err)
{
    return st->ops->job_renew(st->impl, id, owner, progress, store_clock_now() + lease_s, cancel,
                              err);
}

int store_job_succeed(struct store *st, const char *id, const char *owner,
                      const struct store_score *scores, size_t nscores, const char *stability,
                      const char *result, struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    return st->ops->job_succeed(st->impl, id, owner, scores, nscores, stability, result, now, err);
}

int store_job_finish(struct store *st, const char *id, const char *owner, const char *state,
                     const char *code, const char *message, struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    return st->ops->job_finish(st->impl, id, owner, state, code, message, now, err);
}

int store_job_release(struct store *st, const char *id, const char *owner, struct tpv_err *err)
{
    return st->ops->job_release(st->impl, id, owner, err);
}

int store_jobs_recover(struct store *st, int max_attempts, int *requeued, int *failed,
                       struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    return st->ops->jobs_recover(st->impl, max_attempts, now, requeued, failed, err);
}

int store_jobs_requeue_expired(struct store *st, int max_attempts, double now, int *requeued,
                               int *failed, struct tpv_err *err)
{
    char text[STORE_TIME_MAX];
    if (now <= 0)
        now = store_clock_now();
    rfc3339_at(now, text);
    return st->ops->jobs_requeue_expired(st->impl, max_attempts, now, text, requeued, failed,
                                         err);
}

int store_jobs_queued(struct store *st, int64_t *n, struct tpv_err *err)
{
    return st->ops->jobs_queued(st->impl, n, err);
}

/* ---- candidate metrics ---- */

int store_metrics_merge(struct store *st, const char *study_id, const char *candidate_id,
                        const char *patch, int64_t *version, struct tpv_err *err)
{
    return st->ops->metrics_merge(st->impl, study_id, candidate_id, patch, version, err);
}

int store_metric_names(struct store *st, const char *study_id, char *names, size_t cap,
                       struct tpv_err *err)
{
    return st->ops->metric_names(st->impl, study_id, names, cap, err);
}

int store_rank_contributions(struct store *st, const char *study_id, const char *noise,
                             const char *split, const char *const *ids, size_t n,
                             struct store_contrib **out, struct tpv_err *err)
{
    *out = NULL;
    if (n > STORE_CONTRIB_IDS_MAX)
        return tpv_err_set(err, TPV_EINVAL, "candidate_id",
                           "at most %d candidates per contributions query", STORE_CONTRIB_IDS_MAX);
    return st->ops->rank_contributions(st->impl, study_id, noise, split, ids, n, out, err);
}

int store_agree_rows(struct store *st, const char *study_id, const char *metric,
                     struct store_agree_rows *out, struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    return st->ops->agree_rows(st->impl, study_id, metric, out, err);
}

/* ---- ranking ---- */

int store_rank_rows(struct store *st, const char *study_id, const char *noise, const char *split,
                    struct store_rank_row **rows, size_t *nrows, struct tpv_err *err)
{
    return st->ops->rank_rows(st->impl, study_id, noise, split, rows, nrows, err);
}

/* ---- webhook outbox ---- */

int store_outbox_due(struct store *st, double now, int limit, struct store_outbox_item **items,
                     size_t *n, struct tpv_err *err)
{
    return st->ops->outbox_due(st->impl, now, limit, items, n, err);
}

int store_outbox_next_due(struct store *st, double *at, struct tpv_err *err)
{
    return st->ops->outbox_next_due(st->impl, at, err);
}

int store_outbox_delivered(struct store *st, int64_t seq, struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    return st->ops->outbox_delivered(st->impl, seq, now, err);
}

int store_outbox_retry(struct store *st, int64_t seq, double next_at, const char *error,
                       struct tpv_err *err)
{
    return st->ops->outbox_retry(st->impl, seq, next_at, error, err);
}

int store_outbox_fail(struct store *st, int64_t seq, const char *error, struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    return st->ops->outbox_fail(st->impl, seq, error, now, err);
}

int store_outbox_stats(struct store *st, int64_t *pending, int64_t *delivered, int64_t *failed,
                       struct tpv_err *err)
{
    return st->ops->outbox_stats(st->impl, pending, delivered, failed, err);
}

/* ---- API tokens ---- */

int store_token_create(struct store *st, const char *name, const char *role, const char *hash_hex,
                       struct tpv_err *err)
{
    char id[STORE_ID_MAX], now[STORE_TIME_MAX];
    store_id_new(id, "tk");
    store_now_rfc3339(now);
    return st->ops->token_create(st->impl, id, name, role, hash_hex, now, err);
}

int store_token_find(struct store *st, const char *hash_hex, struct store_token *out,
                     struct tpv_err *err)
{
    return st->ops->token_find(st->impl, hash_hex, out, err);
}

int store_token_list(struct store *st, struct store_token_row **rows, size_t *n,
                     struct tpv_err *err)
{
    return st->ops->token_list(st->impl, rows, n, err);
}

int store_token_revoke(struct store *st, const char *name, struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_now_rfc3339(now);
    return st->ops->token_revoke(st->impl, name, now, err);
}

int store_token_count(struct store *st, int64_t *n, struct tpv_err *err)
{
    return st->ops->token_count(st->impl, n, err);
}

/* ---- statistics ---- */

int store_stats(struct store *st, struct store_stats *out, struct tpv_err *err)
{
    return st->ops->stats(st->impl, out, err);
}

/* ---- blobs: files in the blob store, rows in the backend ---- */

bool store_digest_valid(const char *digest)
{
    return blob_digest_valid(digest);
}

int store_blob_writer_open(struct store *st, const char *expect, uint64_t max_size,
                           struct store_blob_writer **out, struct tpv_err *err)
{
    *out = NULL;
    struct store_blob_writer *sw = calloc(1, sizeof *sw);
    if (!sw)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    sw->st = st;
    int rc = blob_writer_open(st->blobs, expect, max_size, &sw->w, err);
    if (rc != TPV_OK) {
        free(sw);
        return rc;
    }
    *out = sw;
    return TPV_OK;
}

int store_blob_writer_write(struct store_blob_writer *w, const void *data, size_t len,
                            struct tpv_err *err)
{
    return blob_writer_write(w->w, data, len, err);
}

int store_blob_writer_commit(struct store_blob_writer *w, char digest[STORE_DIGEST_MAX],
                             uint64_t *size, bool *existed, struct tpv_err *err)
{
    int rc = blob_writer_commit(w->w, digest, size, existed, err);
    if (rc != TPV_OK)
        return rc;
    /* The file is the truth; the row is an index for metrics and GC (a re-upload restarts the
     * grace), so a failure to record it does not fail the upload. */
    char now[STORE_TIME_MAX];
    struct tpv_err ignored;
    store_now_rfc3339(now);
    (void)w->st->ops->blob_record(w->st->impl, digest, *size, now, &ignored);
    return TPV_OK;
}

uint64_t store_blob_writer_size(const struct store_blob_writer *w)
{
    return blob_writer_size(w->w);
}

void store_blob_writer_free(struct store_blob_writer *w)
{
    if (!w)
        return;
    blob_writer_free(w->w);
    free(w);
}

int store_blob_stat(struct store *st, const char *digest, uint64_t *size, struct tpv_err *err)
{
    return blob_stat(st->blobs, digest, size, err);
}

int store_blob_path(struct store *st, const char *digest, char *buf, size_t cap,
                    struct tpv_err *err)
{
    return blob_path(st->blobs, digest, buf, cap, err);
}

int store_blob_delete(struct store *st, const char *digest, struct tpv_err *err)
{
    int rc = blob_stat(st->blobs, digest, NULL, err);
    return rc != TPV_OK ? rc : st->ops->blob_delete(st->impl, digest, blob_unlink, st->blobs, err);
}

int store_blob_gc(struct store *st, double grace_s, int limit, int *removed,
                  struct tpv_err *err)
{
    char cutoff[STORE_TIME_MAX];
    *removed = 0;
    if (limit <= 0)
        return TPV_OK;
    rfc3339_at(store_clock_now() - grace_s, cutoff);
    return st->ops->blob_gc(st->impl, cutoff, limit, blob_unlink, st->blobs, removed, err);
}

int store_blob_temp_count(struct store *st)
{
    return blob_temp_count(st->blobs);
}
