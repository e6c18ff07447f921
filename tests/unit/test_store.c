/* test_store.c: the storage dispatcher (store.h) on SQLite and, as store-pg, on PostgreSQL:
 * schema from an empty database, studies and candidates with versions, idempotency keys, keyset pagination stable under inserts, the job
 * queue (two threads never claim the same job, lease expiry, crash recovery, cancel), scores in
 * one transaction; on SQLite also the data-dir lock. */
#include <pthread.h>
#include <time.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "storage/schema_steps.h"
#include "storage/store.h"
#include "server/webhook.h"
#include "tests/support/store_test.h"
#include "tests/unit/store_json.h"

struct fixture {
    struct store_test t; /* SQLite, or PostgreSQL with TPV_TEST_STORE_DB=pg */
    struct store *st;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (!f || store_test_open(&f->t, "store", NULL) != 0) {
        free(f);
        return -1;
    }
    f->st = f->t.st;
    store_set_event_renderer(f->st, srv_webhook_render_event); /* the daemon's */
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    int rc = store_test_cleanup(&f->t);
    free(f);
    return rc;
}

static void make_study(struct store *st, char id[STORE_ID_MAX], const char *name)
{
    char now[STORE_TIME_MAX];
    struct tpv_err err;
    store_id_new(id, "st");
    store_now_rfc3339(now);
    struct store_study_new s = {
        .id = id, .name = name, .description = "d",
        .noise_models = "[{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0.1}]",
        .rank_by = "iso", .metadata = "{}", .created_at = now,
    };
    assert_int_equal(store_study_create(st, &s, NULL, NULL, &err), TPV_OK);
}

static int make_candidate(struct store *st, const char *sid, const char *name,
                          char cid[STORE_ID_MAX], char jid[STORE_ID_MAX], int64_t max_queued,
                          struct tpv_err *err)
{
    char now[STORE_TIME_MAX];
    store_id_new(cid, "cd");
    store_id_new(jid, "jb");
    store_now_rfc3339(now);
    struct store_candidate_new c = {
        .id = cid, .study_id = sid, .name = name, .metadata = "{\"train_loss\":0.5}",
        .source_kind = "jacobian", .source = "{\"jacobian\":{}}", .has_train_loss = true,
        .train_loss = 0.5, .job_id = jid, .created_at = now,
    };
    return store_candidate_create(st, &c, max_queued, NULL, NULL, err);
}

/* The webhook outbox: events only for studies with a webhook, written with the job's end, each
 * with its own id; due / retry / delivered / failed transitions; the secret is kept. */
static void test_webhook_outbox(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    char sid[STORE_ID_MAX], quiet[STORE_ID_MAX], now[STORE_TIME_MAX];
    char c1[STORE_ID_MAX], j1[STORE_ID_MAX], c2[STORE_ID_MAX], j2[STORE_ID_MAX];
    char c3[STORE_ID_MAX], j3[STORE_ID_MAX];
    store_id_new(sid, "st");
    store_now_rfc3339(now);
    struct store_study_new s = {
        .id = sid, .name = "hooked", .description = "",
        .noise_models = "[{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0.1}]",
        .rank_by = "iso", .metadata = "{}", .created_at = now,
        .webhook_url = "http://127.0.0.1:9/hook", .webhook_secret = "whsec_test",
    };
    assert_int_equal(store_study_create(f->st, &s, NULL, NULL, &err), TPV_OK);
    make_study(f->st, quiet, "no-hook");
    assert_int_equal(make_candidate(f->st, sid, "a", c1, j1, 0, &err), TPV_OK);
    assert_int_equal(make_candidate(f->st, quiet, "b", c2, j2, 0, &err), TPV_OK);
    assert_int_equal(make_candidate(f->st, sid, "c", c3, j3, 0, &err), TPV_OK);

    struct store_outbox_item *items = NULL;
    size_t n = 99;
    double at;
    assert_int_equal(store_outbox_due(f->st, 1e12, 10, &items, &n, &err), TPV_OK);
    assert_int_equal(n, 0);
    assert_int_equal(store_outbox_next_due(f->st, &at, &err), TPV_ENOTFOUND);

    struct store_claim a, b;
    assert_int_equal(store_job_claim(f->st, "w", 60, &a, &err), TPV_OK);
    assert_int_equal(store_job_claim(f->st, "w", 60, &b, &err), TPV_OK);
    struct store_score sc = { .noise = "iso", .kind = "isotropic", .split = "fit", .value = 1 };
    assert_int_equal(store_job_succeed(f->st, j1, "w", &sc, 1, NULL, NULL, &err), TPV_OK);
    assert_int_equal(store_job_succeed(f->st, j2, "w", &sc, 1, NULL, NULL, &err), TPV_OK);
    store_claim_free(&a);
    store_claim_free(&b);
    json_t *job;
    assert_int_equal(tj_job_cancel(f->st, j3, &job, &err), TPV_OK);
    json_decref(job);

    assert_int_equal(store_outbox_due(f->st, 1e12, 10, &items, &n, &err), TPV_OK);
    assert_int_equal(n, 3); /* job.succeeded + ranking.changed for a, job.canceled for c */
    const char *want[] = { "job.succeeded", "ranking.changed", "job.canceled" };
    char ids[3][STORE_ID_MAX];
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(items[i].event, want[i]);
        assert_string_equal(items[i].study_id, sid);
        assert_string_equal(items[i].url, "http://127.0.0.1:9/hook");
        assert_string_equal(items[i].secret, "whsec_test");
        assert_int_equal(items[i].attempts, 0);
        json_t *p = json_loads(items[i].payload, 0, NULL);
        assert_non_null(p);
        assert_string_equal(json_string_value(json_object_get(p, "event")), want[i]);
        snprintf(ids[i], sizeof ids[i], "%s", json_string_value(json_object_get(p, "id")));
        assert_int_equal(strncmp(ids[i], "ev_", 3), 0);
        if (i == 1)
            assert_true(json_integer_value(json_object_get(p, "version")) > 1);
        json_decref(p);
    }
    assert_string_not_equal(ids[0], ids[1]);
    int64_t seq[3] = { items[0].seq, items[1].seq, items[2].seq };
    store_outbox_items_free(items, n);

    /* One delivered, one retried later, one failed for good. */
    assert_int_equal(store_outbox_delivered(f->st, seq[0], &err), TPV_OK);
    assert_int_equal(store_outbox_retry(f->st, seq[1], 5e11, "HTTP 500", &err), TPV_OK);
    assert_int_equal(store_outbox_fail(f->st, seq[2], "HTTP 410", &err), TPV_OK);
    assert_int_equal(store_outbox_due(f->st, 4e11, 10, &items, &n, &err), TPV_OK);
    assert_int_equal(n, 0);
    assert_int_equal(store_outbox_next_due(f->st, &at, &err), TPV_OK);
    assert_true(at == 5e11);
    assert_int_equal(store_outbox_due(f->st, 6e11, 10, &items, &n, &err), TPV_OK);
    assert_int_equal(n, 1);
    assert_int_equal(items[0].seq, seq[1]);
    assert_int_equal(items[0].attempts, 1);
    store_outbox_items_free(items, n);
    int64_t pending, delivered, failed;
    assert_int_equal(store_outbox_stats(f->st, &pending, &delivered, &failed, &err), TPV_OK);
    assert_int_equal(pending, 1);
    assert_int_equal(delivered, 1);
    assert_int_equal(failed, 1);
}

static void test_ids_times_tokens(void **state)
{
    (void)state;
    char a[STORE_ID_MAX], b[STORE_ID_MAX], t[STORE_TIME_MAX], tok[STORE_TOKEN_MAX];
    store_id_new(a, "st");
    store_id_new(b, "st");
    assert_int_equal(strlen(a), 3 + 16);
    assert_memory_equal(a, "st_", 3);
    assert_string_not_equal(a, b);
    store_now_rfc3339(t);
    assert_int_equal(strlen(t), 24);
    assert_int_equal(t[10], 'T');
    assert_int_equal(t[23], 'Z');
    int64_t seq = -1;
    store_page_token_encode(12345, tok);
    assert_int_equal(store_page_token_decode(tok, &seq), TPV_OK);
    assert_int_equal(seq, 12345);
    tok[3] = tok[3] == '0' ? '1' : '0'; /* a changed token fails its check nibble */
    assert_int_equal(store_page_token_decode(tok, &seq), TPV_EINVAL);
    assert_int_equal(store_page_token_decode("nope", &seq), TPV_EINVAL);
}

/* Both backends migrate from the one list of schema steps to its last step. */
static void test_schema_version(void **state)
{
    struct fixture *f = *state;
    size_t nsteps;
    schema_steps(&nsteps); /* the last step of the one list, whoever appended it */
    assert_int_equal(store_schema_version(f->st), (int)nsteps);
}

/* SQLite only: one daemon per database file.  A second daemon on the same data dir is refused
 * while the first holds the folder lock (PostgreSQL is shared by every node by design). */
static void test_sqlite_data_dir_lock(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    struct store *other = NULL;
    assert_int_equal(store_open(&other, f->t.data, &err), TPV_EPRECONDITION);
    assert_null(other);
    assert_non_null(strstr(err.message, "in use"));
}

static void test_study_versions_and_inputs(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    char sid[STORE_ID_MAX], cid[STORE_ID_MAX], jid[STORE_ID_MAX];
    int64_t v0, v1;
    make_study(f->st, sid, "s1");
    assert_int_equal(store_study_version(f->st, sid, &v0, &err), TPV_OK);
    assert_int_equal(store_input_set(f->st, sid, "fit", "sha256:00", 10, &err), TPV_OK);
    assert_int_equal(make_candidate(f->st, sid, "c1", cid, jid, 0, &err), TPV_OK);
    assert_int_equal(store_study_version(f->st, sid, &v1, &err), TPV_OK);
    assert_int_equal(v1, v0 + 2);

    json_t *study;
    assert_int_equal(tj_study_get(f->st, sid, &study, &err), TPV_OK);
    json_t *fit = json_object_get(json_object_get(study, "inputs"), "fit");
    assert_int_equal(json_integer_value(json_object_get(fit, "n")), 10);
    assert_true(json_is_null(json_object_get(json_object_get(study, "inputs"), "probe")));
    assert_string_equal(json_string_value(json_object_get(study, "rank_by")), "iso");
    assert_true(json_is_array(json_object_get(study, "noise_models")));
    json_decref(study);

    /* Same name twice in a study: already exists, naming the field; other study: fine. */
    char cid2[STORE_ID_MAX], jid2[STORE_ID_MAX];
    assert_int_equal(make_candidate(f->st, sid, "c1", cid2, jid2, 0, &err), TPV_EEXIST);
    assert_string_equal(err.field, "name");
    assert_int_equal(make_candidate(f->st, "st_missing", "c1", cid2, jid2, 0, &err), TPV_ENOTFOUND);

    /* With a candidate the input sets are fixed; the same digest again changes nothing. */
    int64_t v2, v3;
    assert_int_equal(store_study_version(f->st, sid, &v2, &err), TPV_OK);
    assert_int_equal(store_input_set(f->st, sid, "fit", "sha256:00", 10, &err), TPV_OK);
    assert_int_equal(store_study_version(f->st, sid, &v3, &err), TPV_OK);
    assert_int_equal(v3, v2);
    assert_int_equal(store_input_set(f->st, sid, "fit", "sha256:01", 10, &err), TPV_EPRECONDITION);
    assert_string_equal(err.field, "inputs.fit");
    assert_int_equal(store_input_set(f->st, sid, "probe", "sha256:01", 4, &err),
                     TPV_EPRECONDITION);
    assert_string_equal(err.field, "inputs.probe");
    assert_int_equal(store_study_version(f->st, sid, &v3, &err), TPV_OK);
    assert_int_equal(v3, v2);
    assert_int_equal(store_input_set(f->st, "st_missing", "fit", "sha256:00", 1, &err),
                     TPV_ENOTFOUND);

    json_t *cand;
    assert_int_equal(tj_candidate_get(f->st, sid, cid, &cand, &err), TPV_OK);
    assert_string_equal(json_string_value(json_object_get(cand, "state")), "queued");
    assert_string_equal(json_string_value(json_object_get(cand, "job_id")), jid);
    json_decref(cand);
    assert_int_equal(tj_candidate_get(f->st, "st_other", cid, &cand, &err), TPV_ENOTFOUND);
    assert_int_equal(tj_study_get(f->st, "st_nope", &study, &err), TPV_ENOTFOUND);
}

/* Study versions are served from memory between commits: a reader polling while a writer bumps
 * the version never sees it go back, and once the writer is done every read sees the last one. */
struct version_race {
    struct store *st;
    const char *sid;
    _Atomic bool done;
    int64_t max_seen;
    bool went_back;
};

static void *poll_versions(void *arg)
{
    struct version_race *r = arg;
    struct tpv_err err;
    int64_t last = -1, v;
    while (!atomic_load(&r->done)) {
        if (store_study_version(r->st, r->sid, &v, &err) != TPV_OK)
            continue;
        r->went_back |= v < last;
        last = v;
    }
    r->max_seen = last;
    return NULL;
}

static void test_version_cache_follows_commits(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    char sid[STORE_ID_MAX], cid[STORE_ID_MAX], jid[STORE_ID_MAX];
    make_study(f->st, sid, "versions");
    struct version_race r = { .st = f->st, .sid = sid };
    pthread_t reader;
    assert_int_equal(pthread_create(&reader, NULL, poll_versions, &r), 0);
    int64_t v0, v;
    assert_int_equal(store_study_version(f->st, sid, &v0, &err), TPV_OK);
    for (int i = 0; i < 50; i++) {
        char name[16];
        snprintf(name, sizeof name, "c%d", i);
        assert_int_equal(make_candidate(f->st, sid, name, cid, jid, 0, &err), TPV_OK);
        assert_int_equal(store_study_version(f->st, sid, &v, &err), TPV_OK);
        assert_int_equal(v, v0 + i + 1); /* the writer's own next read is never stale */
    }
    atomic_store(&r.done, true);
    pthread_join(reader, NULL);
    assert_false(r.went_back);
    assert_true(r.max_seen <= v0 + 50);
    assert_int_equal(store_study_version(f->st, sid, &v, &err), TPV_OK);
    assert_int_equal(v, v0 + 50);
}

static void test_idempotency(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    char sid[STORE_ID_MAX], now[STORE_TIME_MAX];
    struct store_idem idem = { .scope = "POST /v1/studies", .key = "k1", .request_hash = "h1" };
    struct store_reply reply = { .status = 201, .body = "{\"id\":\"x\"}", .location = "/v1/x" };
    struct store_replay replay;
    assert_int_equal(store_idem_lookup(f->st, &idem, &replay, &err), TPV_ENOTFOUND);
    store_id_new(sid, "st");
    store_now_rfc3339(now);
    struct store_study_new s = { .id = sid, .name = "n", .noise_models = "[]", .rank_by = "a",
                                 .created_at = now };
    assert_int_equal(store_study_create(f->st, &s, &idem, &reply, &err), TPV_OK);
    assert_int_equal(store_idem_lookup(f->st, &idem, &replay, &err), TPV_OK);
    assert_int_equal(replay.status, 201);
    assert_string_equal(replay.body, "{\"id\":\"x\"}");
    assert_string_equal(replay.location, "/v1/x");
    store_replay_free(&replay);
    /* Same key, other body. */
    struct store_idem other = idem;
    other.request_hash = "h2";
    assert_int_equal(store_idem_lookup(f->st, &other, &replay, &err), TPV_EPRECONDITION);
    /* A racing second write with the key rolls back entirely. */
    char sid2[STORE_ID_MAX];
    store_id_new(sid2, "st");
    s.id = sid2;
    assert_int_equal(store_study_create(f->st, &s, &idem, &reply, &err), TPV_EEXIST);
    assert_string_equal(err.field, "Idempotency-Key");
    /* The key is checked before the name rule: a candidate replay is no duplicate name. */
    char cid[STORE_ID_MAX], jid[STORE_ID_MAX], cnow[STORE_TIME_MAX];
    struct store_idem cidem = { .scope = "POST cands", .key = "k2", .request_hash = "h3" };
    store_now_rfc3339(cnow);
    store_id_new(cid, "cd");
    store_id_new(jid, "jb");
    struct store_candidate_new c = { .id = cid, .study_id = sid, .name = "same",
                                     .source_kind = "jacobian", .source = "{}", .job_id = jid,
                                     .created_at = cnow };
    assert_int_equal(store_candidate_create(f->st, &c, 0, &cidem, &reply, &err), TPV_OK);
    store_id_new(cid, "cd");
    store_id_new(jid, "jb");
    assert_int_equal(store_candidate_create(f->st, &c, 0, &cidem, &reply, &err), TPV_EEXIST);
    assert_string_equal(err.field, "Idempotency-Key");
    cidem.request_hash = "h4";
    assert_int_equal(store_candidate_create(f->st, &c, 0, &cidem, &reply, &err),
                     TPV_EPRECONDITION);
    assert_string_equal(err.field, "Idempotency-Key");
    json_t *j;
    assert_int_equal(tj_study_get(f->st, sid2, &j, &err), TPV_ENOTFOUND);
    /* Keys expire: a young key survives a one-hour TTL, then goes with a zero TTL. */
    int removed = -1;
    assert_int_equal(store_idempotency_expire(f->st, 3600, &removed, &err), TPV_OK);
    assert_int_equal(removed, 0);
    struct timespec pause = { 0, 20 * 1000000L };
    nanosleep(&pause, NULL);
    assert_int_equal(store_idempotency_expire(f->st, 0, &removed, &err), TPV_OK);
    assert_int_equal(removed, 2); /* the study's key and the candidate's */
    assert_int_equal(store_idem_lookup(f->st, &idem, &replay, &err), TPV_ENOTFOUND);
}

static void test_pagination_stable_under_inserts(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    char sid[STORE_ID_MAX], cid[STORE_ID_MAX], jid[STORE_ID_MAX], name[32];
    make_study(f->st, sid, "paged");
    for (int i = 0; i < 7; i++) {
        snprintf(name, sizeof name, "c%d", i);
        assert_int_equal(make_candidate(f->st, sid, name, cid, jid, 0, &err), TPV_OK);
    }
    json_t *items;
    int64_t next = 0, after = 0;
    int seen = 0, pages = 0;
    do {
        assert_int_equal(tj_candidate_list(f->st, sid, after, 3, 0, &items, &next, &err), TPV_OK);
        for (size_t i = 0; i < json_array_size(items); i++) {
            snprintf(name, sizeof name, "c%d", seen++);
            assert_string_equal(
                json_string_value(json_object_get(json_array_get(items, i), "name")), name);
        }
        json_decref(items);
        /* Inserts between pages land at the end and are seen exactly once. */
        if (pages++ == 0) {
            assert_int_equal(make_candidate(f->st, sid, "c7", cid, jid, 0, &err), TPV_OK);
        }
        after = next;
    } while (next != 0);
    assert_int_equal(seen, 8);
    assert_int_equal(pages, 3);
    /* A byte bound below one row's size: still one item per page, each exactly once. */
    after = 0;
    pages = 0;
    do {
        assert_int_equal(tj_candidate_list(f->st, sid, after, 100, 1, &items, &next, &err),
                         TPV_OK);
        assert_int_equal(json_array_size(items), 1);
        snprintf(name, sizeof name, "c%d", pages++);
        assert_string_equal(json_string_value(json_object_get(json_array_get(items, 0), "name")),
                            name);
        json_decref(items);
        after = next;
    } while (next != 0);
    assert_int_equal(pages, 8);
    assert_int_equal(tj_candidate_list(f->st, "st_none", 0, 3, 0, &items, &next, &err),
                     TPV_ENOTFOUND);

    /* Studies page the same way. */
    assert_int_equal(tj_study_list(f->st, 0, 100, 0, &items, &next, &err), TPV_OK);
    assert_true(json_array_size(items) >= 1);
    assert_int_equal(next, 0);
    json_decref(items);
}

static void test_queue_limit(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    char sid[STORE_ID_MAX], cid[STORE_ID_MAX], jid[STORE_ID_MAX];
    make_study(f->st, sid, "limited");
    assert_int_equal(make_candidate(f->st, sid, "a", cid, jid, 2, &err), TPV_OK);
    assert_int_equal(make_candidate(f->st, sid, "b", cid, jid, 2, &err), TPV_OK);
    assert_int_equal(make_candidate(f->st, sid, "c", cid, jid, 2, &err), TPV_EBUSY);
    int64_t q = 0;
    assert_int_equal(store_jobs_queued(f->st, &q, &err), TPV_OK);
    assert_int_equal(q, 2);
}

struct claimer {
    struct store *st;
    char owner[16];
    char ids[64][STORE_ID_MAX];
    int n;
};

static void *claim_all(void *arg)
{
    struct claimer *cl = arg;
    struct tpv_err err;
    struct store_claim c;
    while (store_job_claim(cl->st, cl->owner, 60, &c, &err) == TPV_OK) {
        snprintf(cl->ids[cl->n++], STORE_ID_MAX, "%s", c.id);
        store_claim_free(&c);
    }
    return NULL;
}

static void test_two_threads_never_double_claim(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    char sid[STORE_ID_MAX], cid[STORE_ID_MAX], jid[STORE_ID_MAX], name[16];
    make_study(f->st, sid, "claims");
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof name, "c%d", i);
        assert_int_equal(make_candidate(f->st, sid, name, cid, jid, 0, &err), TPV_OK);
    }
    struct claimer a = { .st = f->st, .owner = "w-a" }, b = { .st = f->st, .owner = "w-b" };
    pthread_t ta, tb;
    pthread_create(&ta, NULL, claim_all, &a);
    pthread_create(&tb, NULL, claim_all, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(a.n + b.n, 40);
    for (int i = 0; i < a.n; i++)
        for (int j = 0; j < b.n; j++)
            assert_string_not_equal(a.ids[i], b.ids[j]);
    struct store_stats stats;
    assert_int_equal(store_stats(f->st, &stats, &err), TPV_OK);
    assert_int_equal(stats.jobs_running, 40);
    assert_int_equal(stats.jobs_queued, 0);
}

static void test_lease_expiry_and_recovery(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    char sid[STORE_ID_MAX], cid[STORE_ID_MAX], jid[STORE_ID_MAX];
    make_study(f->st, sid, "leases");
    assert_int_equal(make_candidate(f->st, sid, "c", cid, jid, 0, &err), TPV_OK);
    struct store_claim c;
    int requeued, failed;
    bool cancel;

    assert_int_equal(store_job_claim(f->st, "w1", 0.3, &c, &err), TPV_OK);
    assert_int_equal(c.attempts, 1);
    store_claim_free(&c);
    /* Not yet expired at claim time; expired 1 s later. */
    assert_int_equal(store_jobs_requeue_expired(f->st, 3, 1.0, &requeued, &failed, &err), TPV_OK);
    assert_int_equal(requeued, 0);
    assert_int_equal(store_jobs_requeue_expired(f->st, 3, 0, &requeued, &failed, &err), TPV_OK);
    usleep(400 * 1000);
    assert_int_equal(store_jobs_requeue_expired(f->st, 3, 0, &requeued, &failed, &err), TPV_OK);
    assert_int_equal(requeued, 1);
    /* The old owner lost the job. */
    assert_int_equal(store_job_progress(f->st, jid, "w1", 0.5, 10, &cancel, &err),
                     TPV_EPRECONDITION);
    assert_int_equal(store_job_finish(f->st, jid, "w1", "failed", "x", "y", &err),
                     TPV_EPRECONDITION);

    /* Crash recovery: attempt 2 and 3 interrupted, then it fails for good.  The crashed worker's
     * lease has run out by the restart: SQLite recovers every running job (one process per
     * database), PostgreSQL only expired leases (other nodes' jobs are alive), and both must
     * recover this one. */
    for (int attempt = 2; attempt <= 3; attempt++) {
        assert_int_equal(store_job_claim(f->st, "w2", 0.2, &c, &err), TPV_OK);
        assert_int_equal(c.attempts, attempt);
        store_claim_free(&c);
        usleep(300 * 1000);
        assert_int_equal(store_jobs_recover(f->st, 3, &requeued, &failed, &err), TPV_OK);
        assert_int_equal(requeued + failed, 1);
    }
    json_t *job;
    assert_int_equal(tj_job_get(f->st, jid, &job, &err), TPV_OK);
    assert_string_equal(json_string_value(json_object_get(job, "state")), "failed");
    json_t *e = json_object_get(job, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "aborted");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "max-attempts"));
    json_decref(job);
    json_t *cand;
    assert_int_equal(tj_candidate_get(f->st, sid, cid, &cand, &err), TPV_OK);
    assert_string_equal(json_string_value(json_object_get(cand, "state")), "failed");
    json_decref(cand);
}

/* SQLite only: the data-dir lock makes this process the database's only one, so at start-up
 * every running job was interrupted, however long its lease (PostgreSQL keeps the live leases of
 * other nodes: test_store_pg.c). */
static void test_sqlite_recover_takes_live_leases(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    char sid[STORE_ID_MAX], cid[STORE_ID_MAX], jid[STORE_ID_MAX];
    make_study(f->st, sid, "recover");
    assert_int_equal(make_candidate(f->st, sid, "c", cid, jid, 0, &err), TPV_OK);
    struct store_claim c;
    int requeued = -1, failed = -1;
    assert_int_equal(store_job_claim(f->st, "w", 3600, &c, &err), TPV_OK);
    store_claim_free(&c);
    assert_int_equal(store_jobs_recover(f->st, 3, &requeued, &failed, &err), TPV_OK);
    assert_int_equal(requeued, 1);
    assert_int_equal(failed, 0);
    int64_t q = 0;
    assert_int_equal(store_jobs_queued(f->st, &q, &err), TPV_OK);
    assert_int_equal(q, 1);
}

static void test_scores_cancel_release_ranking(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    char sid[STORE_ID_MAX], c1[STORE_ID_MAX], j1[STORE_ID_MAX], c2[STORE_ID_MAX], j2[STORE_ID_MAX];
    char c3[STORE_ID_MAX], j3[STORE_ID_MAX];
    make_study(f->st, sid, "scores");
    assert_int_equal(make_candidate(f->st, sid, "one", c1, j1, 0, &err), TPV_OK);
    assert_int_equal(make_candidate(f->st, sid, "two", c2, j2, 0, &err), TPV_OK);
    assert_int_equal(make_candidate(f->st, sid, "three", c3, j3, 0, &err), TPV_OK);

    /* Cancel of a queued job is immediate. */
    json_t *job;
    assert_int_equal(tj_job_cancel(f->st, j3, &job, &err), TPV_OK);
    assert_string_equal(json_string_value(json_object_get(job, "state")), "canceled");
    json_decref(job);

    struct store_claim a, b;
    assert_int_equal(store_job_claim(f->st, "w", 60, &a, &err), TPV_OK);
    assert_int_equal(store_job_claim(f->st, "w", 60, &b, &err), TPV_OK);
    assert_string_equal(a.id, j1);
    /* Cancel of a running job is a request the worker sees in its next progress report. */
    assert_int_equal(tj_job_cancel(f->st, j2, &job, &err), TPV_OK);
    assert_true(json_is_true(json_object_get(job, "cancel_requested")));
    json_decref(job);
    bool cancel = false;
    assert_int_equal(store_job_progress(f->st, j2, "w", 0.3, 60, &cancel, &err), TPV_OK);
    assert_true(cancel);
    assert_int_equal(store_job_release(f->st, j2, "w", &err), TPV_OK);

    int64_t v0, v1;
    assert_int_equal(store_study_version(f->st, sid, &v0, &err), TPV_OK);
    /* The fit score has per-input contributions (exactly representable, values that show a
     * byte-order mistake); the probe score has none, as rows written before they were stored. */
    static const double contrib[3] = { 0.125, -3.5e-300, 0.75 };
    struct store_score sc[2] = {
        { .noise = "iso", .kind = "isotropic", .split = "fit", .value = 0.25, .estimator = "exact",
          .details = "{\"n\":3}", .per_input = contrib, .n_inputs = 3, .stderr_inputs = 0.5 },
        { .noise = "iso", .kind = "isotropic", .split = "probe", .value = 0.5, .estimator = "exact" },
    };
    assert_int_equal(store_job_succeed(f->st, j1, "w", sc, 2, "{\"isotropic_ratio\":2}", NULL,
                                       &err), TPV_OK);
    assert_int_equal(store_study_version(f->st, sid, &v1, &err), TPV_OK);
    assert_int_equal(v1, v0 + 1);
    /* A second success of the same job is refused: it is no longer running. */
    assert_int_equal(store_job_succeed(f->st, j1, "w", sc, 2, NULL, NULL, &err),
                     TPV_EPRECONDITION);
    assert_int_equal(tj_job_cancel(f->st, j1, &job, &err), TPV_EPRECONDITION);

    json_t *cand;
    assert_int_equal(tj_candidate_get(f->st, sid, c1, &cand, &err), TPV_OK);
    assert_string_equal(json_string_value(json_object_get(cand, "state")), "succeeded");
    json_t *scores = json_object_get(cand, "scores");
    assert_int_equal(json_array_size(scores), 2);
    assert_true(json_real_value(json_object_get(json_array_get(scores, 0), "value")) == 0.25);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_array_get(scores, 0), "details"), "n")), 3);
    assert_non_null(json_object_get(json_object_get(cand, "stability"), "isotropic_ratio"));
    assert_true(json_real_value(json_object_get(json_array_get(scores, 0), "stderr_inputs")) ==
                0.5);
    assert_true(json_is_null(json_object_get(json_array_get(scores, 1), "stderr_inputs")));
    json_decref(cand);

    /* Contributions of a ranking in one query: in the order asked, absent ones NULL. */
    const char *ids[3] = { c2, c1, c3 };
    struct store_contrib *co = NULL;
    assert_int_equal(store_rank_contributions(f->st, sid, "iso", "fit", ids, 3, &co, &err),
                     TPV_OK);
    assert_string_equal(co[1].id, c1);
    assert_int_equal(co[1].n, 3);
    assert_memory_equal(co[1].values, contrib, sizeof contrib);
    assert_null(co[0].values);
    assert_null(co[2].values);
    store_contribs_free(co, 3);
    assert_int_equal(store_rank_contributions(f->st, sid, "iso", "probe", ids, 3, &co, &err),
                     TPV_OK);
    assert_null(co[1].values); /* a score without contributions */
    store_contribs_free(co, 3);
    const char *bad[1] = { "x\",\"y" };
    assert_int_equal(store_rank_contributions(f->st, sid, "iso", "fit", bad, 1, &co, &err),
                     TPV_EINVAL);
    assert_null(co);
    unsigned char enc[8];
    double one = 1.0, back;
    store_contrib_encode(&one, 1, enc);
    assert_int_equal(enc[7], 0x3f); /* little-endian: the sign/exponent byte last */
    assert_int_equal(enc[6], 0xf0);
    store_contrib_decode(enc, 1, &back);
    assert_true(back == 1.0);

    struct store_rank_row *rows;
    size_t n;
    assert_int_equal(store_rank_rows(f->st, sid, "iso", "probe", &rows, &n, &err), TPV_OK);
    assert_int_equal(n, 3);
    assert_true(rows[0].has_value);
    assert_string_equal(rows[0].id, c1);
    assert_true(rows[0].value == 0.5);
    assert_true(rows[0].has_train_loss);
    assert_false(rows[0].has_stderr_inputs); /* probe: no contributions stored */
    assert_false(rows[1].has_value);
    store_rank_rows_free(rows, n);
    store_claim_free(&a);
    store_claim_free(&b);

    struct store_stats stats;
    assert_int_equal(store_stats(f->st, &stats, &err), TPV_OK);
    assert_int_equal(stats.jobs_succeeded, 1);
    assert_int_equal(stats.jobs_canceled, 1);
    assert_int_equal(stats.jobs_queued, 1);
}

/* Lifecycle in the store: deleting a candidate whose job is running makes the worker's next
 * progress report see the lease lost (it stops), frees the name and bumps the version; retry only
 * from failed/canceled; a deleted study leaves its webhook events deliverable. */
static void test_delete_and_retry(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    char sid[STORE_ID_MAX], c1[STORE_ID_MAX], j1[STORE_ID_MAX], c2[STORE_ID_MAX], j2[STORE_ID_MAX];
    char nj[STORE_ID_MAX], now[STORE_TIME_MAX];
    make_study(f->st, sid, "life");
    assert_int_equal(make_candidate(f->st, sid, "one", c1, j1, 0, &err), TPV_OK);
    assert_int_equal(make_candidate(f->st, sid, "two", c2, j2, 0, &err), TPV_OK);
    struct store_claim a;
    assert_int_equal(store_job_claim(f->st, "w", 60, &a, &err), TPV_OK);
    assert_string_equal(a.id, j1);
    store_claim_free(&a);
    int64_t v0, v1;
    assert_int_equal(store_study_version(f->st, sid, &v0, &err), TPV_OK);
    assert_int_equal(store_candidate_delete(f->st, sid, c1, &err), TPV_OK);
    assert_int_equal(store_study_version(f->st, sid, &v1, &err), TPV_OK);
    assert_true(v1 > v0);
    bool cancel = false;
    assert_int_equal(store_job_progress(f->st, j1, "w", 0.5, 60, &cancel, &err),
                     TPV_EPRECONDITION);
    json_t *j = NULL;
    assert_int_equal(tj_job_get(f->st, j1, &j, &err), TPV_ENOTFOUND);
    assert_int_equal(store_candidate_delete(f->st, sid, c1, &err), TPV_ENOTFOUND);
    assert_int_equal(make_candidate(f->st, sid, "one", c1, j1, 0, &err), TPV_OK); /* name free */

    /* Retry: queued is refused; canceled gets a new queued job with attempts 0. */
    store_id_new(nj, "jb");
    assert_int_equal(store_candidate_retry(f->st, sid, c2, nj, 0, &err), TPV_EPRECONDITION);
    assert_string_equal(err.field, "state");
    assert_int_equal(tj_job_cancel(f->st, j2, &j, &err), TPV_OK);
    json_decref(j);
    assert_int_equal(store_candidate_retry(f->st, sid, c2, nj, 0, &err), TPV_OK);
    assert_int_equal(tj_job_get(f->st, nj, &j, &err), TPV_OK);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "queued");
    assert_int_equal(json_integer_value(json_object_get(j, "attempts")), 0);
    json_decref(j);
    assert_int_equal(tj_candidate_get(f->st, sid, c2, &j, &err), TPV_OK);
    assert_string_equal(json_string_value(json_object_get(j, "job_id")), nj);
    json_decref(j);
    assert_int_equal(store_candidate_retry(f->st, sid, "cd_0000000000000000", nj, 0, &err),
                     TPV_ENOTFOUND);

    /* A study with a webhook: its deletion leaves a study.deleted event with URL and secret. */
    char hs[STORE_ID_MAX];
    store_id_new(hs, "st");
    store_now_rfc3339(now);
    struct store_study_new s = {
        .id = hs, .name = "hooked", .description = "d",
        .noise_models = "[{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0.1}]",
        .rank_by = "iso", .metadata = "{}", .created_at = now,
        .webhook_url = "http://127.0.0.1:9/h", .webhook_secret = "whsec_x",
    };
    assert_int_equal(store_study_create(f->st, &s, NULL, NULL, &err), TPV_OK);
    assert_int_equal(store_study_delete(f->st, hs, &err), TPV_OK);
    assert_int_equal(tj_study_get(f->st, hs, &j, &err), TPV_ENOTFOUND);
    assert_int_equal(store_study_delete(f->st, hs, &err), TPV_ENOTFOUND);
    struct store_outbox_item *items = NULL;
    size_t n = 0;
    assert_int_equal(store_outbox_due(f->st, 1e12, 8, &items, &n, &err), TPV_OK);
    assert_int_equal(n, 1);
    assert_string_equal(items[0].event, "study.deleted");
    assert_string_equal(items[0].url, "http://127.0.0.1:9/h");
    assert_string_equal(items[0].secret, "whsec_x");
    store_outbox_items_free(items, n);
}

/* Whether the candidate's JBR jobs are exactly ids[0..n), in that order (newest first), each
 * with its state and a creation time. */
static void expect_jbr(const struct store_candidate *c, const char *const *ids,
                       const char *const *states, size_t n)
{
    assert_int_equal(c->njbr_jobs, n);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(c->jbr_jobs[i].id, ids[i]);
        assert_string_equal(c->jbr_jobs[i].state, states[i]);
        assert_int_equal(strlen(c->jbr_jobs[i].created_at), strlen("2026-01-02T03:04:05.678Z"));
    }
}

static struct store_candidate *page_item(struct store_candidate_page *p, const char *id)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->items[i].id, id) == 0)
            return &p->items[i];
    fail_msg("candidate %s not on the page", id);
    return NULL;
}

/* A candidate's JBR jobs (the candidate shape's jbr_jobs): exactly its own JBR jobs, newest
 * first, with their states, never its score job nor another candidate's; the same on a page of
 * the list (one query for all of them) and across pages; rendered as [] when none; they go
 * with the candidate. */
static void test_candidate_jbr_jobs(void **state)
{
    struct fixture *f = *state;
    struct tpv_err err;
    char sid[STORE_ID_MAX], c[3][STORE_ID_MAX], j[3][STORE_ID_MAX], jbr[4][STORE_ID_MAX];
    make_study(f->st, sid, "jbr-jobs");
    const char *names[3] = { "one", "two", "three" };
    for (int i = 0; i < 3; i++)
        assert_int_equal(make_candidate(f->st, sid, names[i], c[i], j[i], 0, &err), TPV_OK);
    /* Three on the first candidate, then one on the second: creation order interleaves them
     * with nothing else, so a list ordered by anything but the job's own order would show. */
    for (int k = 0; k < 4; k++) {
        store_id_new(jbr[k], "jb");
        assert_int_equal(store_jbr_create(f->st, sid, c[k < 3 ? 0 : 1], jbr[k],
                                          "{\"confidence\":0}", 0, &err), TPV_OK);
    }
    json_t *job;
    assert_int_equal(tj_job_cancel(f->st, jbr[0], &job, &err), TPV_OK);
    json_decref(job);
    /* The three score jobs, then jbr[1] (jbr[0] is canceled): that one succeeds. */
    for (int k = 0; k < 4; k++) {
        struct store_claim cl;
        assert_int_equal(store_job_claim(f->st, "w", 60, &cl, &err), TPV_OK);
        assert_string_equal(cl.id, k < 3 ? j[k] : jbr[1]);
        store_claim_free(&cl);
    }
    assert_int_equal(store_job_succeed(f->st, jbr[1], "w", NULL, 0, NULL,
                                       "{\"units\":[],\"order\":[]}", &err), TPV_OK);

    const char *ids0[3] = { jbr[2], jbr[1], jbr[0] };
    const char *states0[3] = { "queued", "succeeded", "canceled" };
    const char *ids1[1] = { jbr[3] };
    const char *states1[1] = { "queued" };
    struct store_candidate cand;
    assert_int_equal(store_candidate_get(f->st, sid, c[0], &cand, &err), TPV_OK);
    expect_jbr(&cand, ids0, states0, 3);
    assert_string_equal(cand.job_id, j[0]); /* the score job is the candidate's job_id only */
    store_candidate_free(&cand);
    assert_int_equal(store_candidate_get(f->st, sid, c[1], &cand, &err), TPV_OK);
    expect_jbr(&cand, ids1, states1, 1);
    store_candidate_free(&cand);
    assert_int_equal(store_candidate_get(f->st, sid, c[2], &cand, &err), TPV_OK);
    expect_jbr(&cand, NULL, NULL, 0);
    store_candidate_free(&cand);

    /* The list: all on one page, then pages of two (the second page's candidate has none). */
    struct store_candidate_page page;
    assert_int_equal(store_candidate_list(f->st, sid, 0, 10, 0, &page, &err), TPV_OK);
    assert_int_equal(page.n, 3);
    expect_jbr(page_item(&page, c[0]), ids0, states0, 3);
    expect_jbr(page_item(&page, c[1]), ids1, states1, 1);
    expect_jbr(page_item(&page, c[2]), NULL, NULL, 0);
    store_candidate_page_free(&page);
    assert_int_equal(store_candidate_list(f->st, sid, 0, 2, 0, &page, &err), TPV_OK);
    assert_int_equal(page.n, 2);
    expect_jbr(page_item(&page, c[0]), ids0, states0, 3);
    expect_jbr(page_item(&page, c[1]), ids1, states1, 1);
    int64_t next = page.next_seq;
    store_candidate_page_free(&page);
    assert_int_equal(store_candidate_list(f->st, sid, next, 2, 0, &page, &err), TPV_OK);
    assert_int_equal(page.n, 1);
    expect_jbr(page_item(&page, c[2]), NULL, NULL, 0);
    store_candidate_page_free(&page);
    /* A page ended by the byte bound keeps its candidates' jobs (and only theirs). */
    assert_int_equal(store_candidate_list(f->st, sid, 0, 10, 1, &page, &err), TPV_OK);
    assert_int_equal(page.n, 1);
    expect_jbr(page_item(&page, c[0]), ids0, states0, 3);
    store_candidate_page_free(&page);

    /* Rendered: the API's shape, [] when none. */
    json_t *jc;
    assert_int_equal(tj_candidate_get(f->st, sid, c[0], &jc, &err), TPV_OK);
    json_t *arr = json_object_get(jc, "jbr_jobs");
    assert_int_equal(json_array_size(arr), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *it = json_array_get(arr, i);
        assert_int_equal(json_object_size(it), 3);
        assert_string_equal(json_string_value(json_object_get(it, "id")), ids0[i]);
        assert_string_equal(json_string_value(json_object_get(it, "state")), states0[i]);
        assert_non_null(json_string_value(json_object_get(it, "created_at")));
    }
    json_decref(jc);
    assert_int_equal(tj_candidate_get(f->st, sid, c[2], &jc, &err), TPV_OK);
    assert_true(json_is_array(json_object_get(jc, "jbr_jobs")));
    assert_int_equal(json_array_size(json_object_get(jc, "jbr_jobs")), 0);
    json_decref(jc);

    /* Deleting the candidate deletes its JBR jobs; the other candidate keeps its own. */
    assert_int_equal(store_candidate_delete(f->st, sid, c[0], &err), TPV_OK);
    for (int k = 0; k < 3; k++)
        assert_int_equal(tj_job_get(f->st, jbr[k], &job, &err), TPV_ENOTFOUND);
    assert_int_equal(store_candidate_get(f->st, sid, c[1], &cand, &err), TPV_OK);
    expect_jbr(&cand, ids1, states1, 1);
    store_candidate_free(&cand);
}

int main(void)
{
    const struct CMUnitTest both[] = {
        cmocka_unit_test(test_ids_times_tokens),
        cmocka_unit_test_setup_teardown(test_schema_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_study_versions_and_inputs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_version_cache_follows_commits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pagination_stable_under_inserts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_threads_never_double_claim, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_expiry_and_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scores_cancel_release_ranking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_webhook_outbox, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_and_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_candidate_jbr_jobs, setup, teardown),
    };
    const struct CMUnitTest sqlite_only[] = {
        cmocka_unit_test_setup_teardown(test_sqlite_data_dir_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sqlite_recover_takes_live_leases, setup, teardown),
    };
    int failed = cmocka_run_group_tests_name(store_test_on_pg() ? "store on pg" : "store on sqlite",
                                             both, NULL, NULL);
    if (!store_test_on_pg())
        failed += cmocka_run_group_tests_name("store, sqlite only", sqlite_only, NULL, NULL);
    return failed;
}
