/* test_store_pg.c: the PostgreSQL backend's ops table (storage/store_pg.h) on the real test
 * server, with two handles on one fresh database standing for two tpvd nodes: idempotency keys
 * replayed and refused across nodes, unique candidate names, version bumps seen by the other
 * node's listener, a job claimed, renewed and ended with its scores, stability and webhook
 * events, an expired lease re-queued by the other node and the first owner locked out, the
 * attempts limit, outbox rows claimed by one sender only, tokens and revocation, blob rows,
 * the ETag epoch, and TPV_EUNAVAILABLE while the server is down, then recovery by itself. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "storage/pg_notify.h"
#include "storage/store.h"
#include "storage/store_pg.h"
#include "tests/support/pg_test.h"

#define OPS (&store_pg_ops)

/* What a node's dispatcher would be told. */
struct sink_log {
    pthread_mutex_t mu;
    char last_study[STORE_ID_MAX];
    int64_t last_version;
    int changed, queued, committed;
};

static void on_changed(void *ctx, const char *study_id, int64_t version)
{
    struct sink_log *l = ctx;
    pthread_mutex_lock(&l->mu);
    snprintf(l->last_study, sizeof l->last_study, "%s", study_id);
    if (version > l->last_version)
        l->last_version = version;
    l->changed++;
    pthread_mutex_unlock(&l->mu);
}

static void on_queued(void *ctx)
{
    struct sink_log *l = ctx;
    pthread_mutex_lock(&l->mu);
    l->queued++;
    pthread_mutex_unlock(&l->mu);
}

static void on_committed(void *ctx)
{
    struct sink_log *l = ctx;
    pthread_mutex_lock(&l->mu);
    l->committed++;
    pthread_mutex_unlock(&l->mu);
}

static char *render(void *ctx, const struct store_event *ev, const char *event_id)
{
    (void)ctx;
    char buf[512];
    snprintf(buf, sizeof buf, "{\"id\":\"%s\",\"event\":\"%s\",\"job\":\"%s\",\"v\":%lld}",
             event_id, ev->event, ev->job_id, (long long)ev->version);
    return strdup(buf);
}

struct fixture {
    char *db;
    void *a, *b; /* two nodes */
    struct sink_log la, lb;
};

static void *open_node(const char *db, struct sink_log *l)
{
    pthread_mutex_init(&l->mu, NULL);
    struct store_sink sink = { l, on_changed, on_queued, on_committed, render };
    void *impl = NULL;
    struct tpv_err err = { 0 };
    int rc = OPS->open(&impl, db, NULL, &sink, &err);
    if (rc != TPV_OK)
        fail_msg("open: %d %s", rc, err.message);
    return impl;
}

static int setup(void **state)
{
    char *db = pg_test_db_create("storepg");
    struct fixture *f = calloc(1, sizeof *f);
    f->db = db;
    f->a = open_node(db, &f->la);
    f->b = open_node(db, &f->lb);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    OPS->close(f->a);
    OPS->close(f->b);
    pg_test_db_drop(f->db);
    free(f);
    return 0;
}

static void study_new(void *impl, const char *id, const char *hook)
{
    struct store_study_new s = { .id = id, .name = "s", .description = "d",
                                 .noise_models = "[{\"name\":\"iso\"}]", .rank_by = "iso",
                                 .webhook_url = hook, .metadata = "{}",
                                 .created_at = "2026-01-01T00:00:00.000Z",
                                 .webhook_secret = "sec" };
    struct tpv_err err;
    assert_int_equal(OPS->study_create(impl, &s, NULL, NULL, &err), TPV_OK);
}

static int cand_new(void *impl, const char *study, const char *id, const char *name,
                    const char *job, struct tpv_err *err)
{
    struct store_candidate_new c = { .id = id, .study_id = study, .name = name,
                                     .metadata = "{}", .source_kind = "model",
                                     .source = "{\"kind\":\"model\"}", .has_train_loss = true,
                                     .train_loss = 0.5, .job_id = job,
                                     .created_at = "2026-01-01T00:00:01.000Z" };
    return OPS->candidate_create(impl, &c, 0, NULL, NULL, err);
}

static int64_t wait_version(struct sink_log *l, int64_t want)
{
    for (int i = 0; i < 300; i++) {
        pthread_mutex_lock(&l->mu);
        int64_t v = l->last_version;
        pthread_mutex_unlock(&l->mu);
        if (v >= want)
            return v;
        usleep(10000);
    }
    return -1;
}

static void test_idempotency_across_nodes(void **state)
{
    struct fixture *f = *state;
    struct store_idem idem = { "POST /v1/studies", "k1", "h1" };
    struct store_reply reply = { 201, "{\"id\":\"st_1\"}", "/v1/studies/st_1" };
    struct store_study_new s = { .id = "st_1", .name = "s", .description = "",
                                 .noise_models = "[]", .rank_by = "iso", .metadata = "{}",
                                 .created_at = "2026-01-01T00:00:00.000Z" };
    struct tpv_err err;
    assert_int_equal(OPS->study_create(f->a, &s, &idem, &reply, &err), TPV_OK);
    struct store_replay r;
    assert_int_equal(OPS->idem_lookup(f->b, &idem, &r, &err), TPV_OK);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body, "{\"id\":\"st_1\"}");
    assert_string_equal(r.location, "/v1/studies/st_1");
    store_replay_free(&r);
    /* The same key again on the other node: the write is refused naming the key. */
    s.id = "st_2";
    assert_int_equal(OPS->study_create(f->b, &s, &idem, &reply, &err), TPV_EEXIST);
    assert_string_equal(err.field, "Idempotency-Key");
    struct store_study st;
    assert_int_equal(OPS->study_get(f->b, "st_2", &st, &err), TPV_ENOTFOUND);
    /* Another body with the key. */
    struct store_idem other = { "POST /v1/studies", "k1", "h2" };
    assert_int_equal(OPS->idem_lookup(f->b, &other, &r, &err), TPV_EPRECONDITION);
    int removed = 0;
    assert_int_equal(OPS->idem_expire(f->a, "2999-01-01T00:00:00.000Z", &removed, &err), TPV_OK);
    assert_int_equal(removed, 1);
}

static void test_names_versions_and_reads(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    study_new(f->a, "st_v", NULL);
    assert_int_equal(cand_new(f->a, "st_v", "cd_1", "one", "jb_1", &err), TPV_OK);
    assert_int_equal(cand_new(f->b, "st_v", "cd_2", "one", "jb_2", &err), TPV_EEXIST);
    assert_string_equal(err.field, "name");
    int64_t v = 0;
    assert_int_equal(OPS->study_version(f->b, "st_v", &v, &err), TPV_OK);
    assert_int_equal(v, 2);
    /* Node B's listener saw node A's bump. */
    assert_int_equal(wait_version(&f->lb, 2), 2);
    assert_int_equal(OPS->input_set(f->a, "st_v", "fit", "sha256:aa", 10, "t", &err),
                     TPV_EPRECONDITION);
    assert_string_equal(err.field, "inputs.fit");
    struct store_candidate c;
    int grc = OPS->candidate_get(f->b, "st_v", "cd_1", &c, &err);
    if (grc != TPV_OK)
        fail_msg("candidate_get: %d %s", grc, err.message);
    assert_string_equal(c.name, "one");
    assert_string_equal(c.state, "queued");
    assert_string_equal(c.job_id, "jb_1");
    store_candidate_free(&c);
    struct store_study_page sp;
    assert_int_equal(OPS->study_list(f->b, 0, 10, 0, &sp, &err), TPV_OK);
    assert_int_equal(sp.n, 1);
    assert_int_equal(sp.next_seq, 0);
    assert_int_equal(sp.items[0].version, 2);
    store_study_page_free(&sp);
    assert_true(strlen(OPS->version_epoch(f->a)) > 0);
    assert_string_equal(OPS->version_epoch(f->a), OPS->version_epoch(f->b));
}

static void test_job_lifecycle(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    study_new(f->a, "st_j", "http://127.0.0.1:1/hook");
    assert_int_equal(cand_new(f->a, "st_j", "cd_a", "a", "jb_a", &err), TPV_OK);
    assert_int_equal(cand_new(f->a, "st_j", "cd_b", "b", "jb_b", &err), TPV_OK);
    struct store_claim cl;
    assert_int_equal(OPS->job_claim(f->a, "nodeA", 30, 0, "t", &cl, &err), TPV_OK);
    assert_string_equal(cl.id, "jb_a");
    assert_int_equal(cl.attempts, 1);
    store_claim_free(&cl);
    bool cancel = true;
    assert_int_equal(OPS->job_renew(f->a, "jb_a", "nodeA", 0.5, 1e12, &cancel, &err), TPV_OK);
    assert_false(cancel);
    assert_int_equal(OPS->job_renew(f->b, "jb_a", "nodeB", 0.5, 1e12, &cancel, &err),
                     TPV_EPRECONDITION);
    struct store_score sc[2] = {
        { "iso", "label", "fit", 2.5, NAN, "exact", 0, 7, 0.1, "{}" },
        { "iso", "label", "probe", 1.5, 0.25, "hutchinson", 16, 7, 0.2, "{\"k\":1}" },
    };
    assert_int_equal(OPS->job_succeed(f->a, "jb_a", "nodeA", sc, 2, "{\"s\":1}", NULL, "t2",
                                      &err), TPV_OK);
    struct store_candidate c;
    assert_int_equal(OPS->candidate_get(f->b, "st_j", "cd_a", &c, &err), TPV_OK);
    assert_string_equal(c.state, "succeeded");
    assert_int_equal(c.nscores, 2);
    assert_string_equal(c.scores[0].split, "fit");
    assert_true(isnan(c.scores[0].stderr_value));
    assert_true(c.scores[1].value == 1.5);
    assert_string_equal(c.stability, "{\"s\":1}");
    store_candidate_free(&c);
    /* job.succeeded + ranking.changed for the study's webhook */
    int64_t pending = 0, delivered = 0, failed = 0;
    assert_int_equal(OPS->outbox_stats(f->b, &pending, &delivered, &failed, &err), TPV_OK);
    assert_int_equal(pending, 2);
    /* Senders on two nodes: each row goes to one of them. */
    struct store_outbox_item *items = NULL, *items2 = NULL;
    size_t n = 0, n2 = 0;
    double far = 1e10;
    assert_int_equal(OPS->outbox_due(f->a, far, 10, &items, &n, &err), TPV_OK);
    assert_int_equal(n, 2);
    assert_string_equal(items[0].url, "http://127.0.0.1:1/hook");
    assert_string_equal(items[0].secret, "sec");
    assert_non_null(strstr(items[0].payload, "job.succeeded"));
    assert_int_equal(OPS->outbox_due(f->b, far, 10, &items2, &n2, &err), TPV_OK);
    assert_int_equal(n2, 0);
    assert_int_equal(OPS->outbox_delivered(f->a, items[0].seq, "t3", &err), TPV_OK);
    assert_int_equal(OPS->outbox_fail(f->a, items[1].seq, "no", "t3", &err), TPV_OK);
    store_outbox_items_free(items, n);
    store_outbox_items_free(items2, n2);
    assert_int_equal(OPS->outbox_stats(f->b, &pending, &delivered, &failed, &err), TPV_OK);
    assert_int_equal(pending, 0);
    assert_int_equal(delivered, 1);
    assert_int_equal(failed, 1);
    /* Ranking: the scored candidate first. */
    struct store_rank_row *rows;
    size_t nr;
    assert_int_equal(OPS->rank_rows(f->b, "st_j", "iso", "probe", &rows, &nr, &err), TPV_OK);
    assert_int_equal(nr, 2);
    assert_string_equal(rows[0].id, "cd_a");
    assert_true(rows[0].has_value && rows[0].value == 1.5);
    assert_false(rows[1].has_value);
    store_rank_rows_free(rows, nr);
    /* Cancel of the queued one, then a retry. */
    struct store_job j;
    assert_int_equal(OPS->job_cancel(f->b, "jb_b", "t4", &j, &err), TPV_OK);
    assert_string_equal(j.state, "canceled");
    store_job_free(&j);
    assert_int_equal(OPS->candidate_retry(f->a, "st_j", "cd_b", "jb_b2", 0, "t5", &err), TPV_OK);
    assert_int_equal(OPS->job_get(f->a, "jb_b2", &j, &err), TPV_OK);
    assert_string_equal(j.state, "queued");
    store_job_free(&j);
    struct store_stats stats;
    assert_int_equal(OPS->stats(f->b, &stats, &err), TPV_OK);
    assert_int_equal(stats.jobs_succeeded, 1);
    assert_int_equal(stats.jobs_canceled, 1);
    assert_int_equal(stats.jobs_queued, 1);
    assert_int_equal(OPS->candidate_delete(f->b, "st_j", "cd_b", "t6", &err), TPV_OK);
    assert_int_equal(OPS->candidate_get(f->a, "st_j", "cd_b", &c, &err), TPV_ENOTFOUND);
    assert_int_equal(OPS->study_delete(f->a, "st_j", "t7", &err), TPV_OK);
    assert_int_equal(OPS->study_get(f->b, "st_j", &(struct store_study){ 0 }, &err),
                     TPV_ENOTFOUND);
}

static void test_expired_lease_taken_over(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    study_new(f->a, "st_e", NULL);
    assert_int_equal(cand_new(f->a, "st_e", "cd_e", "e", "jb_e", &err), TPV_OK);
    struct store_claim cl;
    assert_int_equal(OPS->job_claim(f->a, "nodeA", 0.2, 0, "t", &cl, &err), TPV_OK);
    store_claim_free(&cl);
    /* Nothing else to claim while A holds it. */
    assert_int_equal(OPS->job_claim(f->b, "nodeB", 30, 0, "t", &cl, &err), TPV_ENOTFOUND);
    usleep(400000);
    int requeued = 0, failed = 0;
    assert_int_equal(OPS->jobs_requeue_expired(f->b, 3, 0, "t", &requeued, &failed, &err),
                     TPV_OK);
    assert_int_equal(requeued, 1);
    assert_int_equal(failed, 0);
    assert_int_equal(OPS->job_claim(f->b, "nodeB", 0.2, 0, "t", &cl, &err), TPV_OK);
    assert_string_equal(cl.id, "jb_e");
    assert_int_equal(cl.attempts, 2);
    store_claim_free(&cl);
    /* A's late result is refused: the job succeeds once, by its current owner. */
    assert_int_equal(OPS->job_succeed(f->a, "jb_e", "nodeA", NULL, 0, NULL, NULL, "t", &err),
                     TPV_EPRECONDITION);
    usleep(400000);
    assert_int_equal(OPS->jobs_recover(f->a, 2, "t", &requeued, &failed, &err), TPV_OK);
    assert_int_equal(failed, 1); /* two attempts made, limit 2 */
    struct store_job j;
    assert_int_equal(OPS->job_get(f->b, "jb_e", &j, &err), TPV_OK);
    assert_string_equal(j.state, "failed");
    assert_string_equal(j.error_code, "aborted");
    store_job_free(&j);
}

static void test_tokens_and_blobs(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    const char *h = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    assert_int_equal(OPS->token_create(f->a, "tk_1", "ci", "write", h, "t1", &err), TPV_OK);
    assert_int_equal(OPS->token_create(f->b, "tk_2", "ci", "read", h + 1, "t1", &err),
                     TPV_EEXIST);
    assert_string_equal(err.field, "name");
    struct store_token t;
    assert_int_equal(OPS->token_find(f->b, h, &t, &err), TPV_OK);
    assert_false(t.revoked);
    assert_string_equal(t.role, "write");
    assert_int_equal(OPS->token_revoke(f->a, "ci", "t2", &err), TPV_OK);
    assert_int_equal(OPS->token_find(f->b, h, &t, &err), TPV_OK);
    assert_true(t.revoked);
    assert_int_equal(OPS->token_revoke(f->b, "ci", "t3", &err), TPV_EPRECONDITION);
    struct store_token_row *rows;
    size_t n;
    assert_int_equal(OPS->token_list(f->b, &rows, &n, &err), TPV_OK);
    assert_int_equal(n, 1);
    assert_string_equal(rows[0].revoked_at, "t2");
    free(rows);
    assert_int_equal(OPS->blob_record(f->a, "sha256:bb", 10, "2026-01-01T00:00:00.000Z", &err),
                     TPV_OK);
    int removed = -1;
    assert_int_equal(OPS->blob_gc(f->b, "2027-01-01T00:00:00.000Z", 10, NULL, NULL, &removed,
                                  &err), TPV_OK);
    assert_int_equal(removed, 1);
}

static void test_database_down_then_back(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    assert_int_equal(OPS->ping(f->a, &err), TPV_OK);
    assert_int_equal(pg_test_server("down"), 0);
    int64_t v;
    assert_int_equal(OPS->study_version(f->a, "st_x", &v, &err), TPV_EUNAVAILABLE);
    assert_int_equal(OPS->ping(f->b, &err), TPV_EUNAVAILABLE);
    assert_int_equal(pg_test_server("up"), 0);
    int rc = TPV_EUNAVAILABLE;
    for (int i = 0; i < 100 && rc != TPV_OK; i++) {
        rc = OPS->ping(f->a, &err);
        if (rc != TPV_OK)
            usleep(100000);
    }
    assert_int_equal(rc, TPV_OK);
    study_new(f->a, "st_x", NULL);
    assert_int_equal(cand_new(f->a, "st_x", "cd_x", "x", "jb_x", &err), TPV_OK);
    /* B's listener resubscribed and sees A's writes again. */
    pthread_mutex_lock(&f->lb.mu);
    f->lb.last_version = 0;
    pthread_mutex_unlock(&f->lb.mu);
    for (int i = 0; i < 50 && wait_version(&f->lb, 1) < 0; i++) {
        assert_int_equal(OPS->input_set(f->a, "st_x", "probe", "sha256:cc", 1, "t", &err),
                         TPV_EPRECONDITION);
        struct store_claim cl;
        (void)OPS->job_claim(f->a, "nodeA", 30, 0, "t", &cl, &err);
        store_claim_free(&cl);
    }
    assert_true(wait_version(&f->lb, 1) >= 1);
}

static int queued_count(struct sink_log *l)
{
    pthread_mutex_lock(&l->mu);
    int n = l->queued;
    pthread_mutex_unlock(&l->mu);
    return n;
}

/* Polls until node l was told of more than `before` claimable jobs, up to 3 s. */
static bool told_of_jobs(struct sink_log *l, int before)
{
    for (int i = 0; i < 300 && queued_count(l) <= before; i++)
        usleep(10000);
    return queued_count(l) > before;
}

/* A job queued on one node wakes the workers of the others (PG_JOBS_CHANNEL): they race for it
 * at once instead of at their next idle poll.  New jobs and released ones. */
static void test_job_queued_reaches_other_nodes(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    study_new(f->a, "st_q", NULL);
    int before = queued_count(&f->lb);
    assert_int_equal(cand_new(f->a, "st_q", "cd_q", "q", "jb_q", &err), TPV_OK);
    assert_true(told_of_jobs(&f->lb, before));

    struct store_claim cl;
    assert_int_equal(OPS->job_claim(f->a, "nodeA", 30, 0, "2026-01-01T00:00:02.000Z", &cl, &err),
                     TPV_OK);
    store_claim_free(&cl);
    before = queued_count(&f->lb);
    assert_int_equal(OPS->job_release(f->a, "jb_q", "nodeA", &err), TPV_OK);
    assert_true(told_of_jobs(&f->lb, before));
}

/* ---- the dispatcher's version cache on PostgreSQL (storage/store.c over this backend) ---- */

struct cached_node {
    struct store *st;
    char blobs[64];
};

static void cached_node_open(struct cached_node *n, const char *db, int cache_ms)
{
    char url[512];
    pg_test_db_url(db, url, sizeof url);
    snprintf(n->blobs, sizeof n->blobs, "/tmp/tpv-vcache-XXXXXX");
    assert_non_null(mkdtemp(n->blobs));
    struct store_options o = { .blob_dir = n->blobs, .version_cache_ms = cache_ms };
    struct tpv_err err = { 0 };
    if (store_open_url(&n->st, url, &o, &err) != TPV_OK)
        fail_msg("store_open_url: %s", err.message);
}

static void cached_node_close(struct cached_node *n)
{
    store_close(n->st);
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s", n->blobs);
    assert_int_equal(system(cmd), 0);
}

static int64_t node_version(struct cached_node *n, const char *sid)
{
    struct tpv_err err;
    int64_t v = -1;
    assert_int_equal(store_study_version(n->st, sid, &v, &err), TPV_OK);
    return v;
}

/* Polls node n until it reads `want` (true) or 5 s pass (false). */
static bool node_sees(struct cached_node *n, const char *sid, int64_t want)
{
    for (int i = 0; i < 500; i++) {
        if (node_version(n, sid) == want)
            return true;
        usleep(10000);
    }
    return false;
}

/* A change made behind the backend's back: no NOTIFY, as a lost notification would leave it. */
static void bump_silently(const char *db, const char *sid)
{
    char sql[160];
    snprintf(sql, sizeof sql, "UPDATE studies SET version = version + 1 WHERE id = '%s'", sid);
    char *out = pg_test_sql(db, sql);
    assert_non_null(out);
    free(out);
}

/* Versions are served from memory while the listener is up (a bump without a notification is
 * not seen within the bound), another node's write is seen at once (its notification moves the
 * generation), and a lost listener connection drops the cache when it resubscribes.  The bound
 * is 60 s here, so only notifications and the resubscription can explain what is seen. */
static void test_version_cache_follows_other_nodes(void **state)
{
    struct fixture *f = *state;
    struct cached_node a, b;
    struct tpv_err err;
    cached_node_open(&a, f->db, 60000);
    cached_node_open(&b, f->db, 60000);
    study_new(f->a, "st_vc", NULL);
    int64_t v0 = node_version(&a, "st_vc");
    assert_int_equal(node_version(&b, "st_vc"), v0);

    bump_silently(f->db, "st_vc");
    usleep(300000);
    assert_int_equal(node_version(&a, "st_vc"), v0); /* from memory: no round trip */

    /* Another node writes (a candidate bumps the version and notifies): A sees it. */
    assert_int_equal(cand_new(f->b, "st_vc", "cd_vc", "vc", "jb_vc", &err), TPV_OK);
    assert_true(node_sees(&a, "st_vc", v0 + 2));
    assert_true(node_sees(&b, "st_vc", v0 + 2)); /* b learns it from its own listener */

    /* The listener loses its connection: after its resubscription nothing cached is trusted. */
    bump_silently(f->db, "st_vc");
    assert_int_equal(node_version(&a, "st_vc"), v0 + 2);
    char *killed = pg_test_sql(f->db, "SELECT count(pg_terminate_backend(pid)) FROM "
                                      "pg_stat_activity WHERE datname = current_database() "
                                      "AND query LIKE 'LISTEN %'");
    assert_non_null(killed);
    assert_true(atoi(killed) >= 1);
    free(killed);
    assert_true(node_sees(&a, "st_vc", v0 + 3));
    assert_true(node_sees(&b, "st_vc", v0 + 3));
    /* Reads while it was away came from the database; once it is back (100 ms backoff) the
     * slot cached before the loss must not be served again. */
    usleep(600000);
    assert_int_equal(node_version(&a, "st_vc"), v0 + 3);
    assert_int_equal(node_version(&b, "st_vc"), v0 + 3);
    cached_node_close(&a);
    cached_node_close(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_idempotency_across_nodes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_names_versions_and_reads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_job_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expired_lease_taken_over, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokens_and_blobs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_job_queued_reaches_other_nodes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_version_cache_follows_other_nodes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_database_down_then_back, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
