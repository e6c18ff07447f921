/* test_store_faults.c: fault injection into storage/, as SQLite's own suite does (issue #10).
 *
 * - Allocation failures: the Nth allocation fails, for every N up to the count of one job's
 *   storage operations (and of store_open).  One counter covers SQLite (SQLITE_CONFIG_MALLOC),
 *   jansson (json_set_alloc_funcs), OpenSSL (CRYPTO_set_mem_functions) and storage's own calls
 *   (the test is linked with --wrap for malloc, calloc, realloc, strdup, asprintf and free, so the
 *   statically linked libtpvstore goes through the hooks).  Each failure must come back as an
 *   error code, never as a crash or as a success with missing data; retrying the failed step and
 *   the rest without faults must succeed (nothing half-written); and after store_close the
 *   outstanding allocations and open descriptors are what they were before.
 * - A wrapper VFS fails the WAL write lock (SQLITE_BUSY) and writes (SQLITE_FULL) on demand.
 * - The blob writer's write(2) and fsync(2) are wrapped to give short writes and ENOSPC. */
#include <dirent.h>
#include <execinfo.h>
#include <ftw.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>
#include <sqlite3.h>

#include "storage/store.h"
#include "server/webhook.h"
#include "tests/unit/store_json.h"

/* ======================================================================================== */
/* The counting allocator                                                                   */
/* ======================================================================================== */

/* fi.armed is set only around the store calls under test, so the test's own checks never fail
 * an allocation.  count numbers the allocations seen while armed; the one numbered fail_at fails
 * (once, as SQLite's "transient" mode). */
static struct {
    pthread_mutex_t lock;
    bool armed;
    long count, fail_at;
    bool fired;
    long live;        /* tracked libc/jansson/OpenSSL blocks outstanding */
    long sqlite_live; /* SQLite blocks outstanding */
} fi = { .lock = PTHREAD_MUTEX_INITIALIZER };

static bool fi_fail_now(void)
{
    pthread_mutex_lock(&fi.lock);
    bool fail = false;
    if (fi.armed) {
        fi.count++;
        if (fi.fail_at > 0 && fi.count == fi.fail_at) {
            fi.fired = true;
            fail = true;
            if (getenv("TPV_FAULT_TRACE")) { /* where the failing call came from */
                void *frames[16];
                backtrace_symbols_fd(frames, backtrace(frames, 16), STDERR_FILENO);
            }
        }
    }
    pthread_mutex_unlock(&fi.lock);
    return fail;
}

static void fi_arm(long fail_at)
{
    pthread_mutex_lock(&fi.lock);
    fi.armed = true;
    fi.fail_at = fail_at;
    pthread_mutex_unlock(&fi.lock);
}

static void fi_disarm(void)
{
    pthread_mutex_lock(&fi.lock);
    fi.armed = false;
    pthread_mutex_unlock(&fi.lock);
}

/* The set of blocks handed out by the hooks, so that free() of a block the C library allocated
 * itself (opendir, ...) is not miscounted.  Pointers are stored scrambled: LeakSanitizer must not
 * take this table for a reference that keeps a leaked block alive. */
#define TRACK_CAP (1u << 18)
#define TRACK_TOMB ((uintptr_t)1)
#define TRACK_KEY(p) ((uintptr_t)(p) ^ (uintptr_t)0x5a5a5a5a5a5a5a50ull)
static uintptr_t track[TRACK_CAP];
static size_t track_used; /* live + tombstones */

static size_t track_slot(uintptr_t key)
{
    return (size_t)((key >> 4) * 0x9E3779B97F4A7C15ull >> 40) & (TRACK_CAP - 1);
}

static void track_rehash(void)
{
    static uintptr_t live[TRACK_CAP];
    size_t n = 0;
    for (size_t i = 0; i < TRACK_CAP; i++)
        if (track[i] > TRACK_TOMB)
            live[n++] = track[i];
    memset(track, 0, sizeof track);
    for (size_t k = 0; k < n; k++) {
        size_t i = track_slot(live[k]);
        while (track[i])
            i = (i + 1) & (TRACK_CAP - 1);
        track[i] = live[k];
    }
    track_used = n;
    memset(live, 0, n * sizeof live[0]);
}

static void track_add(void *p) /* under fi.lock */
{
    if (track_used > TRACK_CAP / 2)
        track_rehash();
    uintptr_t key = TRACK_KEY(p);
    size_t i = track_slot(key);
    while (track[i] > TRACK_TOMB)
        i = (i + 1) & (TRACK_CAP - 1);
    if (!track[i])
        track_used++;
    track[i] = key;
    fi.live++;
}

static bool track_remove(void *p) /* under fi.lock */
{
    uintptr_t key = TRACK_KEY(p);
    for (size_t i = track_slot(key); track[i]; i = (i + 1) & (TRACK_CAP - 1))
        if (track[i] == key) {
            track[i] = TRACK_TOMB;
            fi.live--;
            return true;
        }
    return false;
}

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);
char *__wrap_strdup(const char *s);
int __wrap_asprintf(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int __wrap___asprintf_chk(char **out, int flag, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void *tracked(void *p)
{
    if (p) {
        pthread_mutex_lock(&fi.lock);
        track_add(p);
        pthread_mutex_unlock(&fi.lock);
    }
    return p;
}

void *__wrap_malloc(size_t n)
{
    return fi_fail_now() ? NULL : tracked(__real_malloc(n));
}

void *__wrap_calloc(size_t n, size_t size)
{
    return fi_fail_now() ? NULL : tracked(__real_calloc(n, size));
}

void *__wrap_realloc(void *p, size_t n)
{
    if (fi_fail_now())
        return NULL; /* p stays valid and tracked, as realloc promises */
    pthread_mutex_lock(&fi.lock);
    bool was = p && track_remove(p);
    pthread_mutex_unlock(&fi.lock);
    void *q = __real_realloc(p, n);
    if (!q && p && was) { /* the real realloc failed: p is still the caller's */
        tracked(p);
        return NULL;
    }
    return (!p || was) ? tracked(q) : q;
}

void __wrap_free(void *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&fi.lock);
    track_remove(p);
    pthread_mutex_unlock(&fi.lock);
    __real_free(p);
}

char *__wrap_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = __wrap_malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

__attribute__((format(printf, 2, 0))) static int vasprintf_hooked(char **out, const char *fmt,
                                                                   va_list ap)
{
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    char *p = n >= 0 ? __wrap_malloc((size_t)n + 1) : NULL;
    if (p)
        vsnprintf(p, (size_t)n + 1, fmt, again);
    va_end(again);
    if (!p)
        return -1;
    *out = p;
    return n;
}

int __wrap_asprintf(char **out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf_hooked(out, fmt, ap);
    va_end(ap);
    return n;
}

int __wrap___asprintf_chk(char **out, int flag, const char *fmt, ...)
{
    (void)flag;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf_hooked(out, fmt, ap);
    va_end(ap);
    return n;
}

/* OpenSSL's hooks (the blob writer's SHA-256 context). */
static void *ossl_malloc(size_t n, const char *file, int line)
{
    (void)file, (void)line;
    return __wrap_malloc(n);
}

static void *ossl_realloc(void *p, size_t n, const char *file, int line)
{
    (void)file, (void)line;
    return __wrap_realloc(p, n);
}

static void ossl_free(void *p, const char *file, int line)
{
    (void)file, (void)line;
    __wrap_free(p);
}

/* SQLite's allocator: a 16-byte header keeps the size (xSize). */
#define SQ_HDR 16

static void *sq_malloc(int n)
{
    if (n <= 0 || fi_fail_now())
        return NULL;
    char *p = __real_malloc((size_t)n + SQ_HDR);
    if (!p)
        return NULL;
    memcpy(p, &n, sizeof n);
    pthread_mutex_lock(&fi.lock);
    fi.sqlite_live++;
    pthread_mutex_unlock(&fi.lock);
    return p + SQ_HDR;
}

static void sq_free(void *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&fi.lock);
    fi.sqlite_live--;
    pthread_mutex_unlock(&fi.lock);
    __real_free((char *)p - SQ_HDR);
}

static int sq_size(void *p)
{
    int n = 0;
    if (p)
        memcpy(&n, (char *)p - SQ_HDR, sizeof n);
    return n;
}

static void *sq_realloc(void *p, int n)
{
    if (n <= 0 || fi_fail_now())
        return NULL;
    char *q = __real_realloc((char *)p - SQ_HDR, (size_t)n + SQ_HDR);
    if (!q)
        return NULL;
    memcpy(q, &n, sizeof n);
    return q + SQ_HDR;
}

static int sq_roundup(int n)
{
    return (n + 7) & ~7;
}

static int sq_init(void *ctx)
{
    (void)ctx;
    return SQLITE_OK;
}

static void sq_shutdown(void *ctx)
{
    (void)ctx;
}

static void install_allocators(void)
{
    static const sqlite3_mem_methods methods = { sq_malloc, sq_free, sq_realloc, sq_size,
                                                 sq_roundup, sq_init, sq_shutdown, NULL };
    if (sqlite3_config(SQLITE_CONFIG_MALLOC, &methods) != SQLITE_OK ||
        sqlite3_initialize() != SQLITE_OK) {
        fprintf(stderr, "cannot install the SQLite allocator\n");
        exit(1);
    }
    json_set_alloc_funcs(__wrap_malloc, __wrap_free);
    if (CRYPTO_set_mem_functions(ossl_malloc, ossl_realloc, ossl_free) != 1) {
        fprintf(stderr, "cannot install the OpenSSL allocator\n");
        exit(1);
    }
    /* OpenSSL allocates a thread's error queue on its first error and keeps it until the thread
     * ends: have it now, so that it does not count as a block left by the first failure. */
    ERR_raise(ERR_LIB_EVP, ERR_R_EVP_LIB);
    ERR_clear_error();
}

/* ======================================================================================== */
/* write(2) and fsync(2) of the blob writer                                                 */
/* ======================================================================================== */

ssize_t __real_write(int fd, const void *buf, size_t n);
ssize_t __wrap_write(int fd, const void *buf, size_t n);
int __real_fsync(int fd);
int __wrap_fsync(int fd);

struct wio_state {
    size_t max_chunk;   /* > 0: no write moves more than this (short writes) */
    long enospc_after;  /* >= 0: bytes written before the disk is full; -1 off */
    bool fsync_eio;
    long written;
    long calls;
};
static struct wio_state wio = { .enospc_after = -1 };

ssize_t __wrap_write(int fd, const void *buf, size_t n)
{
    wio.calls++;
    if (wio.max_chunk && n > wio.max_chunk)
        n = wio.max_chunk;
    if (wio.enospc_after >= 0) {
        if (wio.written >= wio.enospc_after) {
            errno = ENOSPC;
            return -1;
        }
        if ((long)n > wio.enospc_after - wio.written)
            n = (size_t)(wio.enospc_after - wio.written); /* a short write, then ENOSPC */
    }
    ssize_t r = __real_write(fd, buf, n);
    if (r > 0)
        wio.written += r;
    return r;
}

int __wrap_fsync(int fd)
{
    if (wio.fsync_eio) {
        errno = EIO;
        return -1;
    }
    return __real_fsync(fd);
}

/* ======================================================================================== */
/* Helpers                                                                                  */
/* ======================================================================================== */

static char base_dir[128];

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (de->d_name[0] != '.')
            n++;
    if (d)
        closedir(d);
    return n - 1; /* the directory's own descriptor */
}

static void make_dir(char *out, size_t cap, const char *what)
{
    snprintf(out, cap, "%s/%s-XXXXXX", base_dir, what);
    assert_non_null(mkdtemp(out));
}

static int remove_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb, (void)type, (void)ftw;
    return remove(path);
}

static void remove_tree(const char *path) /* in-process: thousands of data dirs are made */
{
    assert_int_equal(nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

static const struct store_options test_opts = { .pool_size = 2, .synchronous_full = false,
                                                .busy_timeout_ms = 20 };

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ======================================================================================== */
/* One job's storage operations, step by step                                               */
/* ======================================================================================== */

struct job_ctx {
    char tag[24];
    char study[STORE_ID_MAX], cand[STORE_ID_MAX], job[STORE_ID_MAX];
    char owner[32], token_hash[65];
    char digest[STORE_DIGEST_MAX];
    char content[96];
    char study_meta[96], cand_meta[96], source[160], url[96], secret[40], run[32];
    int64_t seqs[2];
};

#define NOISE_MODELS "[{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0.1}]"

static void job_init(struct job_ctx *j, int serial)
{
    memset(j, 0, sizeof *j);
    snprintf(j->tag, sizeof j->tag, "t%d", serial);
    store_id_new(j->study, "st");
    store_id_new(j->cand, "cd");
    store_id_new(j->job, "jb");
    snprintf(j->owner, sizeof j->owner, "worker-%d", serial);
    for (int i = 0; i < 4; i++) /* unique: the study id's 16 random hex digits */
        memcpy(j->token_hash + 16 * i, j->study + 3, 16);
    snprintf(j->content, sizeof j->content, "fit inputs of job %d: 0123456789", serial);
    snprintf(j->study_meta, sizeof j->study_meta, "{\"tag\":\"%s\",\"n\":1}", j->tag);
    snprintf(j->cand_meta, sizeof j->cand_meta, "{\"tag\":\"%s\",\"run\":\"r-%s\"}", j->tag,
             j->tag);
    snprintf(j->url, sizeof j->url, "http://127.0.0.1:9/hook/%s", j->tag);
    snprintf(j->secret, sizeof j->secret, "secret-%s", j->tag);
}

#define JOB_STEPS 18

static void check_json_str(json_t *obj, const char *key, const char *want)
{
    const char *got = json_string_value(json_object_get(obj, key));
    if (!got || strcmp(got, want) != 0)
        fail_msg("%s: got '%s', want '%s'", key, got ? got : "(missing)", want);
}

/* The stored metadata/stability text must come back as the same JSON value. */
static void check_json_equal(json_t *got, const char *want_text, const char *what)
{
    json_t *want = json_loads(want_text, 0, NULL);
    assert_non_null(want);
    if (!got || !json_equal(got, want)) {
        char *g = got ? json_dumps(got, JSON_COMPACT) : NULL;
        fail_msg("%s: got %s, want %s", what, g ? g : "(missing)", want_text);
    }
    json_decref(want);
}

static void check_scores(json_t *scores)
{
    assert_int_equal(json_array_size(scores), 2);
    json_t *s0 = json_array_get(scores, 0), *s1 = json_array_get(scores, 1);
    check_json_str(s0, "noise", "iso");
    check_json_str(s1, "split", "probe");
    assert_true(json_real_value(json_object_get(s0, "value")) == 0.25);
    check_json_equal(json_object_get(s0, "details"), "{\"rank\":3}", "score details");
}

static void check_candidate(json_t *c, const struct job_ctx *j)
{
    check_json_str(c, "id", j->cand);
    check_json_str(c, "name", j->tag);
    check_json_str(c, "state", "succeeded");
    check_json_str(c, "job_id", j->job);
    check_json_equal(json_object_get(c, "metadata"), j->cand_meta, "candidate metadata");
    check_json_equal(json_object_get(c, "stability"), "{\"ok\":true}", "stability");
    check_scores(json_object_get(c, "scores"));
}

/* The candidate of job j (pointers into j). */
static void candidate_of(struct job_ctx *j, struct store_candidate_new *c)
{
    snprintf(j->source, sizeof j->source, "{\"kind\":\"jacobian\",\"fit\":\"%s\"}",
             j->digest);
    snprintf(j->run, sizeof j->run, "r-%s", j->tag);
    *c = (struct store_candidate_new){
        .id = j->cand, .study_id = j->study, .name = j->tag, .metadata = j->cand_meta,
        .source_kind = "jacobian", .source = j->source, .has_train_loss = true,
        .train_loss = 0.5, .run = j->run, .job_id = j->job,
        .created_at = "2026-01-01T00:00:01.000Z",
    };
}

/* Runs step `k` of job j; returns its code.  The store call runs armed (fail_at as given); the
 * checks of what it returned run disarmed and fail the test on any missing or wrong datum. */
static int job_step(struct store *st, struct job_ctx *j, int k, long fail_at, bool retry)
{
    struct tpv_err err;
    tpv_err_clear(&err);
    int rc = TPV_OK;
    json_t *out = NULL;
    switch (k) {
    case 0: { /* upload the fit inputs */
        struct store_blob_writer *w = NULL;
        bool existed = false;
        uint64_t size = 0;
        fi_arm(fail_at);
        rc = store_blob_writer_open(st, NULL, 1u << 20, &w, &err);
        if (rc == TPV_OK)
            rc = store_blob_writer_write(w, j->content, strlen(j->content), &err);
        if (rc == TPV_OK)
            rc = store_blob_writer_commit(w, j->digest, &size, &existed, &err);
        store_blob_writer_free(w);
        fi_disarm();
        if (rc == TPV_OK) {
            assert_int_equal(size, strlen(j->content));
            assert_true(store_digest_valid(j->digest));
            assert_true(!existed || retry);
            char path[512], back[96] = "";
            assert_int_equal(store_blob_path(st, j->digest, path, sizeof path, &err), TPV_OK);
            FILE *fp = fopen(path, "rb");
            assert_non_null(fp);
            size_t n = fread(back, 1, sizeof back - 1, fp);
            fclose(fp);
            back[n] = '\0';
            assert_string_equal(back, j->content);
        }
        break;
    }
    case 1: { /* create the study, with an idempotency key and a webhook */
        char rid[STORE_ID_MAX], body[128];
        snprintf(rid, sizeof rid, "%s", j->tag);
        snprintf(body, sizeof body, "{\"id\":\"%s\"}", j->study);
        struct store_study_new s = { .id = j->study, .name = j->tag, .description = "d",
                                     .noise_models = NOISE_MODELS, .rank_by = "iso",
                                     .webhook_url = j->url, .metadata = j->study_meta,
                                     .created_at = "2026-01-01T00:00:00.000Z",
                                     .webhook_secret = j->secret };
        struct store_idem idem = { "POST /v1/studies", rid, "hash" };
        struct store_reply reply = { 201, body, NULL };
        fi_arm(fail_at);
        rc = store_study_create(st, &s, &idem, &reply, &err);
        fi_disarm();
        break;
    }
    case 2: /* the idempotency record of step 1 */ {
        struct store_idem idem = { "POST /v1/studies", j->tag, "hash" };
        struct store_replay r = { 0 };
        fi_arm(fail_at);
        rc = store_idem_lookup(st, &idem, &r, &err);
        fi_disarm();
        if (rc == TPV_OK) {
            assert_int_equal(r.status, 201);
            assert_non_null(r.body);
            assert_non_null(strstr(r.body, j->study));
        }
        store_replay_free(&r);
        break;
    }
    case 3:
        fi_arm(fail_at);
        rc = store_input_set(st, j->study, "fit", j->digest, 8, &err);
        fi_disarm();
        break;
    case 4:
        fi_arm(fail_at);
        rc = tj_study_get(st, j->study, &out, &err);
        fi_disarm();
        if (rc == TPV_OK) {
            check_json_str(out, "name", j->tag);
            check_json_str(out, "webhook_url", j->url);
            check_json_equal(json_object_get(out, "metadata"), j->study_meta, "study metadata");
            check_json_equal(json_object_get(out, "noise_models"), NOISE_MODELS, "noise models");
            json_t *fit = json_object_get(json_object_get(out, "inputs"), "fit");
            check_json_str(fit, "digest", j->digest);
            assert_int_equal(json_integer_value(json_object_get(fit, "n")), 8);
        }
        break;
    case 5: {
        struct store_candidate_new c;
        candidate_of(j, &c);
        fi_arm(fail_at);
        rc = store_candidate_create(st, &c, 100, NULL, NULL, &err);
        fi_disarm();
        break;
    }
    case 6: {
        struct store_claim cl;
        fi_arm(fail_at);
        rc = store_job_claim(st, j->owner, 60, &cl, &err);
        fi_disarm();
        if (rc == TPV_OK) {
            assert_string_equal(cl.id, j->job);
            assert_string_equal(cl.kind, "score");
            assert_string_equal(cl.study_id, j->study);
            assert_string_equal(cl.candidate_id, j->cand);
            assert_int_equal(cl.attempts, 1);
            assert_non_null(cl.source);
            assert_string_equal(cl.source, j->source);
            assert_non_null(cl.noise_models);
            assert_string_equal(cl.noise_models, NOISE_MODELS);
            assert_null(cl.params);
        }
        store_claim_free(&cl);
        break;
    }
    case 7: {
        bool cancel = true;
        fi_arm(fail_at);
        rc = store_job_progress(st, j->job, j->owner, 0.5, 60, &cancel, &err);
        fi_disarm();
        if (rc == TPV_OK)
            assert_false(cancel);
        break;
    }
    case 8: {
        struct store_score sc[2] = {
            { .noise = "iso", .kind = "isotropic", .split = "fit", .value = 0.25,
              .stderr_value = 0.01, .estimator = "exact", .samples = 0, .seed = 1,
              .wall_seconds = 0.1, .details = "{\"rank\":3}" },
            { .noise = "iso", .kind = "isotropic", .split = "probe", .value = 0.5,
              .stderr_value = 0.02, .estimator = "exact", .samples = 0, .seed = 1,
              .wall_seconds = 0.1, .details = "{}" },
        };
        fi_arm(fail_at);
        rc = store_job_succeed(st, j->job, j->owner, sc, 2, "{\"ok\":true}", NULL, &err);
        fi_disarm();
        break;
    }
    case 9: {
        struct store_rank_row *rows = NULL;
        size_t n = 0;
        fi_arm(fail_at);
        rc = store_rank_rows(st, j->study, "iso", "fit", &rows, &n, &err);
        fi_disarm();
        if (rc == TPV_OK) {
            assert_int_equal(n, 1);
            assert_string_equal(rows[0].id, j->cand);
            assert_non_null(rows[0].name);
            assert_string_equal(rows[0].name, j->tag);
            assert_non_null(rows[0].metadata);
            assert_string_equal(rows[0].metadata, j->cand_meta);
            assert_string_equal(rows[0].state, "succeeded");
            assert_true(rows[0].has_value && rows[0].value == 0.25);
            assert_true(rows[0].has_train_loss && rows[0].train_loss == 0.5);
            if (!rows[0].run)
                fail_msg("ranking row lost its run");
        }
        store_rank_rows_free(rows, n);
        break;
    }
    case 10: {
        int64_t next = -1;
        fi_arm(fail_at);
        rc = tj_candidate_list(st, j->study, 0, 10, 1 << 20, &out, &next, &err);
        fi_disarm();
        if (rc == TPV_OK) {
            assert_int_equal(json_array_size(out), 1);
            assert_int_equal(next, 0);
            check_candidate(json_array_get(out, 0), j);
        }
        break;
    }
    case 11:
        fi_arm(fail_at);
        rc = tj_candidate_get(st, j->study, j->cand, &out, &err);
        fi_disarm();
        if (rc == TPV_OK)
            check_candidate(out, j);
        break;
    case 12:
        fi_arm(fail_at);
        rc = tj_job_get(st, j->job, &out, &err);
        fi_disarm();
        if (rc == TPV_OK) {
            check_json_str(out, "id", j->job);
            check_json_str(out, "state", "succeeded");
            check_json_str(out, "candidate_id", j->cand);
            assert_true(json_real_value(json_object_get(out, "progress")) == 1.0);
            assert_true(json_is_null(json_object_get(out, "error")));
        }
        break;
    case 13: {
        struct store_outbox_item *items = NULL;
        size_t n = 0;
        fi_arm(fail_at);
        rc = store_outbox_due(st, wall_now() + 10, 16, &items, &n, &err);
        fi_disarm();
        if (rc == TPV_OK) {
            assert_int_equal(n, 2); /* every earlier job's events were delivered */
            for (size_t i = 0; i < n; i++) {
                assert_string_equal(items[i].study_id, j->study);
                assert_non_null(items[i].url);
                assert_string_equal(items[i].url, j->url);
                assert_non_null(items[i].secret);
                assert_string_equal(items[i].secret, j->secret);
                assert_non_null(items[i].payload);
                json_t *p = json_loads(items[i].payload, 0, NULL);
                if (!p)
                    fail_msg("outbox payload is not JSON: '%s'", items[i].payload);
                check_json_str(p, "event", items[i].event);
                check_json_str(p, "study_id", j->study);
                const char *id = json_string_value(json_object_get(p, "id"));
                if (!id || strncmp(id, "ev_", 3) != 0)
                    fail_msg("outbox payload without its event id: %s", items[i].payload);
                json_decref(p);
                j->seqs[i] = items[i].seq;
            }
            assert_string_equal(items[0].event, "job.succeeded");
            assert_string_equal(items[1].event, "ranking.changed");
        }
        store_outbox_items_free(items, n);
        break;
    }
    case 14:
    case 15:
        fi_arm(fail_at);
        rc = store_outbox_delivered(st, j->seqs[k - 14], &err);
        fi_disarm();
        break;
    case 16: {
        int64_t pending = -1, delivered = -1, failed = -1;
        fi_arm(fail_at);
        rc = store_outbox_stats(st, &pending, &delivered, &failed, &err);
        fi_disarm();
        if (rc == TPV_OK) {
            assert_int_equal(pending, 0);
            assert_true(delivered >= 2);
        }
        break;
    }
    case 17: {
        char name[32];
        snprintf(name, sizeof name, "tok-%s", j->tag);
        struct store_token t;
        fi_arm(fail_at);
        rc = store_token_create(st, name, "write", j->token_hash, &err);
        if (rc == TPV_OK)
            rc = store_token_find(st, j->token_hash, &t, &err);
        fi_disarm();
        if (rc == TPV_EEXIST && retry) /* created before the find failed */
            rc = store_token_find(st, j->token_hash, &t, &err);
        if (rc == TPV_OK) {
            assert_string_equal(t.name, name);
            assert_string_equal(t.role, "write");
            assert_false(t.revoked);
        }
        break;
    }
    default:
        fail_msg("no step %d", k);
    }
    json_decref(out);
    if (rc != TPV_OK && err.message[0] == '\0')
        fail_msg("step %d failed (%s) without a message", k, tpv_error_name(rc));
    return rc;
}

/* ======================================================================================== */
/* Allocation failures                                                                      */
/* ======================================================================================== */

struct budget {
    long live, sqlite_live;
    int fds;
};

static void snapshot(struct budget *b)
{
    pthread_mutex_lock(&fi.lock);
    b->live = fi.live;
    b->sqlite_live = fi.sqlite_live;
    pthread_mutex_unlock(&fi.lock);
    b->fds = count_fds();
}

static void check_budget(const struct budget *base, const char *when, long n)
{
    struct budget now;
    snapshot(&now);
    if (now.live != base->live || now.sqlite_live != base->sqlite_live || now.fds != base->fds)
        fail_msg("%s (N=%ld): %ld blocks, %ld SQLite blocks and %d descriptors outstanding, "
                 "%ld, %ld and %d before", when, n, now.live, now.sqlite_live, now.fds,
                 base->live, base->sqlite_live, base->fds);
}

static struct store *open_store(const char *data)
{
    struct store *st = NULL;
    struct tpv_err err;
    if (store_open_with(&st, data, &test_opts, &err) != TPV_OK)
        fail_msg("store_open: %s", err.message);
    store_set_event_renderer(st, srv_webhook_render_event); /* the daemon's */
    return st;
}

/* Steps from..end of job j without faults: each must succeed. */
static void job_run_clean(struct store *st, struct job_ctx *j, int from, bool retry, long n)
{
    for (int k = from; k < JOB_STEPS; k++) {
        int rc = job_step(st, j, k, 0, retry && k == from);
        if (rc != TPV_OK)
            fail_msg("N=%ld: step %d failed without a fault (%s)%s", n, k, tpv_error_name(rc),
                     retry && k == from ? " when retried: the failed attempt left something" : "");
    }
}

/* SQLite, OpenSSL and jansson set up global state on first use: one job on a scratch data dir,
 * before the outstanding blocks are counted. */
static void warm_up(void)
{
    static bool done;
    if (done)
        return;
    char data[256];
    make_dir(data, sizeof data, "faults-warm");
    struct store *st = open_store(data);
    struct job_ctx j;
    job_init(&j, 0);
    job_run_clean(st, &j, 0, false, 0);
    store_close(st);
    remove_tree(data);
    done = true;
}

/* Codes an allocation failure may come back as.  Not one that tells a client something false
 * about its data (not found, exists, precondition, busy). */
static bool oom_code(int rc)
{
    return rc == TPV_ENOMEM || rc == TPV_EINTERNAL || rc == TPV_EIO;
}

/* Every N over one job.  `warm`: on one open store whose statements are prepared (what a
 * running daemon does); else each job on a store opened for it, so that preparing each
 * statement fails too. */
static void alloc_failures_job(bool warm)
{
    char data[256];
    make_dir(data, sizeof data, "faults-job");
    int serial = 0;
    struct job_ctx j;

    /* Warm-up: SQLite, OpenSSL and jansson set up their global state on first use. */
    struct store *st = open_store(data);
    job_init(&j, ++serial);
    job_run_clean(st, &j, 0, false, 0);
    store_close(st);
    struct budget base;
    snapshot(&base);

    /* The allocations of one job, counted with nothing failing. */
    st = open_store(data);
    if (warm) {
        job_init(&j, ++serial);
        job_run_clean(st, &j, 0, false, 0);
    }
    job_init(&j, ++serial);
    fi.count = 0;
    for (int k = 0; k < JOB_STEPS; k++)
        assert_int_equal(job_step(st, &j, k, 0, false), TPV_OK);
    long total = fi.count;
    store_close(st);
    check_budget(&base, "after a clean job", 0);
    assert_true(total > 50);

    long failed = 0, benign = 0, by_code[4] = { 0 };
    double t0 = now_s();
    long only = getenv("TPV_FAULT_ONLY") ? atol(getenv("TPV_FAULT_ONLY")) : 0; /* debugging */
    if (warm)
        st = open_store(data);
    /* New statements: SQLite's parser makes about a hundred allocations per statement, all behind
     * the one failure path of conn_stmt; every 7th N still fails each statement's preparation
     * many times over, at a seventh of the cost (each N opens a store). */
    long stride = warm || only ? 1 : 7;
    if (getenv("TPV_FAULT_STRIDE")) /* TPV_FAULT_STRIDE=1: every N, for a full run by hand */
        stride = atol(getenv("TPV_FAULT_STRIDE")) > 0 ? atol(getenv("TPV_FAULT_STRIDE")) : 1;
    for (long n = only ? only : 1; n <= (only ? only : total); n += stride) {
        if (!warm)
            st = open_store(data);
        job_init(&j, ++serial);
        fi.count = 0;
        fi.fired = false;
        int k, rc = TPV_OK;
        for (k = 0; k < JOB_STEPS && rc == TPV_OK; k++)
            rc = job_step(st, &j, k, n, false);
        if (!fi.fired)
            fail_msg("N=%ld of %ld: the fault never fired (the job allocates differently)", n,
                     total);
        if (rc != TPV_OK) {
            k--;
            failed++;
            if (!oom_code(rc))
                fail_msg("N=%ld: allocation failure in step %d came back as %s", n, k,
                         tpv_error_name(rc));
            by_code[rc == TPV_ENOMEM ? 0 : rc == TPV_EINTERNAL ? 1 : 2]++;
            job_run_clean(st, &j, k, true, n);
        } else {
            benign++; /* the failure was absorbed (SQLite's benign allocations) */
        }
        if (!warm) {
            store_close(st);
            check_budget(&base, "after a job with a failed allocation", n);
        }
    }
    if (warm) {
        store_close(st);
        check_budget(&base, "after jobs with failed allocations", total);
    }
    fprintf(stderr, "# one job (%s statements, N in steps of %ld): %ld allocations; %ld failures "
            "reported (ENOMEM %ld, EINTERNAL %ld, EIO %ld), %ld absorbed; %.1f s\n",
            warm ? "prepared" : "new", stride, total, failed, by_code[0], by_code[1], by_code[2],
            benign, now_s() - t0);

    /* The database is whole. */
    sqlite3 *raw = NULL;
    char db[300];
    snprintf(db, sizeof db, "%s/tpvd.db", data);
    assert_int_equal(sqlite3_open(db, &raw), SQLITE_OK);
    sqlite3_stmt *s = NULL;
    assert_int_equal(sqlite3_prepare_v2(raw, "PRAGMA integrity_check", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), "ok");
    sqlite3_finalize(s);
    sqlite3_close(raw);
    remove_tree(data);
}

static void test_alloc_failures_job_warm(void **state)
{
    (void)state;
    alloc_failures_job(true);
}

static void test_alloc_failures_job_cold(void **state)
{
    (void)state;
    alloc_failures_job(false);
}

static void test_alloc_failures_open(void **state)
{
    (void)state;
    char data[256];
    struct job_ctx j;
    int serial = 0;
    struct budget base;

    warm_up();
    make_dir(data, sizeof data, "faults-open");
    struct store *st = open_store(data);
    int schema = store_schema_version(st);
    store_close(st);
    remove_tree(data);
    snapshot(&base);

    /* A fresh data dir: folders, every migration, the pool. */
    make_dir(data, sizeof data, "faults-open");
    struct tpv_err err;
    fi.count = 0;
    fi_arm(0);
    assert_int_equal(store_open_with(&st, data, &test_opts, &err), TPV_OK);
    fi_disarm();
    long total = fi.count;
    store_close(st);
    remove_tree(data);
    check_budget(&base, "after a clean open", 0);

    long failed = 0;
    double t0 = now_s();
    long only = getenv("TPV_FAULT_ONLY") ? atol(getenv("TPV_FAULT_ONLY")) : 0; /* debugging */
    /* Most of these allocations are SQLite parsing the migrations, behind one failure path each:
     * every 5th N fails each of them many times over, at a fifth of the cost. */
    long stride = only ? 1 : 5;
    if (getenv("TPV_FAULT_STRIDE"))
        stride = atol(getenv("TPV_FAULT_STRIDE")) > 0 ? atol(getenv("TPV_FAULT_STRIDE")) : 1;
    for (long n = only ? only : 1; n <= (only ? only : total); n += stride) {
        make_dir(data, sizeof data, "faults-open");
        fi.count = 0;
        fi.fired = false;
        tpv_err_clear(&err);
        st = (struct store *)&err; /* must be reset to NULL on failure */
        fi_arm(n);
        int rc = store_open_with(&st, data, &test_opts, &err);
        fi_disarm();
        assert_true(fi.fired);
        if (rc == TPV_OK)
            store_set_event_renderer(st, srv_webhook_render_event);
        if (rc != TPV_OK) {
            failed++;
            assert_null(st);
            if (!oom_code(rc) || !err.message[0])
                fail_msg("N=%ld: open failed as %s: %s", n, tpv_error_name(rc), err.message);
            check_budget(&base, "after a failed open", n);
            st = open_store(data); /* migrates what the failed open left */
        }
        assert_int_equal(store_schema_version(st), schema);
        if (rc == TPV_OK || n % 16 == 0) { /* the store works (a job costs 20 opens) */
            job_init(&j, ++serial);
            job_run_clean(st, &j, 0, false, n);
        } else {
            assert_int_equal(store_ping(st, &err), TPV_OK);
        }
        store_close(st);
        remove_tree(data);
        check_budget(&base, "after an open with a failed allocation", n);
    }
    fprintf(stderr, "# store_open on a new data dir (N in steps of %ld): %ld allocations, %ld "
            "failures reported; %.1f s\n", stride, total, failed, now_s() - t0);
}

/* ======================================================================================== */
/* SQLITE_BUSY and SQLITE_FULL from a wrapper VFS                                           */
/* ======================================================================================== */

/* The default VFS wrapped: writes fail with SQLITE_FULL (a full disk: the unix VFS reports
 * ENOSPC so) and exclusive WAL locks with SQLITE_BUSY (another writer), while armed. */
static struct {
    bool full, busy;
    int full_hits, busy_hits;
} fv;

struct fv_file {
    sqlite3_file base;
    sqlite3_file *real;
};

static sqlite3_vfs *fv_real;
static sqlite3_vfs fv_vfs;

#define REAL(f) (((struct fv_file *)(f))->real)

static int fv_close(sqlite3_file *f)
{
    return REAL(f)->pMethods->xClose(REAL(f));
}

static int fv_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off)
{
    return REAL(f)->pMethods->xRead(REAL(f), buf, n, off);
}

static int fv_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off)
{
    if (fv.full) {
        fv.full_hits++;
        return SQLITE_FULL;
    }
    return REAL(f)->pMethods->xWrite(REAL(f), buf, n, off);
}

static int fv_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}

static int fv_sync(sqlite3_file *f, int flags)
{
    return REAL(f)->pMethods->xSync(REAL(f), flags);
}

static int fv_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}

static int fv_lock(sqlite3_file *f, int level)
{
    if (fv.busy && level >= SQLITE_LOCK_RESERVED) {
        fv.busy_hits++;
        return SQLITE_BUSY;
    }
    return REAL(f)->pMethods->xLock(REAL(f), level);
}

static int fv_unlock(sqlite3_file *f, int level)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), level);
}

static int fv_check_reserved(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}

static int fv_file_control(sqlite3_file *f, int op, void *arg)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}

static int fv_sector_size(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int fv_device_characteristics(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int fv_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **pp)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), region, size, extend, pp);
}

static int fv_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    /* Slot 0 is the WAL write lock: BEGIN IMMEDIATE takes it exclusively. */
    if (fv.busy && offset == 0 && (flags & SQLITE_SHM_LOCK) && (flags & SQLITE_SHM_EXCLUSIVE)) {
        fv.busy_hits++;
        return SQLITE_BUSY;
    }
    return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}

static void fv_shm_barrier(sqlite3_file *f)
{
    REAL(f)->pMethods->xShmBarrier(REAL(f));
}

static int fv_shm_unmap(sqlite3_file *f, int del)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}

static int fv_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp)
{
    return REAL(f)->pMethods->xFetch(REAL(f), off, n, pp);
}

static int fv_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static const sqlite3_io_methods fv_io = {
    3, fv_close, fv_read, fv_write, fv_truncate, fv_sync, fv_file_size, fv_lock, fv_unlock,
    fv_check_reserved, fv_file_control, fv_sector_size, fv_device_characteristics, fv_shm_map,
    fv_shm_lock, fv_shm_barrier, fv_shm_unmap, fv_fetch, fv_unfetch,
};

static int fv_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out)
{
    (void)vfs;
    struct fv_file *p = (struct fv_file *)f;
    p->real = (sqlite3_file *)&p[1];
    int rc = fv_real->xOpen(fv_real, name, p->real, flags, out);
    p->base.pMethods = p->real->pMethods ? &fv_io : NULL;
    return rc;
}

static void install_fault_vfs(void)
{
    fv_real = sqlite3_vfs_find(NULL);
    assert_non_null(fv_real);
    assert_true(fv_real->iVersion >= 3);
    fv_vfs = *fv_real;
    fv_vfs.zName = "faulty";
    fv_vfs.szOsFile = (int)sizeof(struct fv_file) + fv_real->szOsFile;
    fv_vfs.xOpen = fv_open;
    fv_vfs.pNext = NULL;
    assert_int_equal(sqlite3_vfs_register(&fv_vfs, 1), SQLITE_OK);
}

static void uninstall_fault_vfs(void)
{
    sqlite3_vfs_unregister(&fv_vfs);
    sqlite3_vfs_register(fv_real, 1);
}

static void stats_of(struct store *st, struct store_stats *s)
{
    struct tpv_err err;
    assert_int_equal(store_stats(st, s, &err), TPV_OK);
}

static void assert_same_stats(const struct store_stats *a, const struct store_stats *b)
{
    assert_int_equal(a->studies, b->studies);
    assert_int_equal(a->candidates, b->candidates);
    assert_int_equal(a->jobs_queued, b->jobs_queued);
    assert_int_equal(a->jobs_running, b->jobs_running);
    assert_int_equal(a->jobs_succeeded, b->jobs_succeeded);
}

/* A write under each fault: the named code, nothing of it visible, the store usable after. */
static void test_busy_and_full_on_commit(void **state)
{
    (void)state;
    char data[256];
    warm_up();
    make_dir(data, sizeof data, "faults-vfs");
    install_fault_vfs();
    struct budget base;
    snapshot(&base);
    struct store *st = open_store(data);
    struct tpv_err err;
    struct store_stats before, after;
    struct job_ctx j;

    for (int round = 0; round < 2; round++) {
        bool busy = round == 0;
        job_init(&j, 1000 + round);
        assert_int_equal(job_step(st, &j, 0, 0, false), TPV_OK); /* blob */
        assert_int_equal(job_step(st, &j, 1, 0, false), TPV_OK); /* study */
        assert_int_equal(job_step(st, &j, 3, 0, false), TPV_OK); /* inputs */
        stats_of(st, &before);
        int64_t version_before = 0, version_after = 0;
        assert_int_equal(store_study_version(st, j.study, &version_before, &err), TPV_OK);

        /* The candidate and its job: one transaction. */
        struct store_candidate_new c;
        candidate_of(&j, &c);
        if (busy)
            fv.busy = true;
        else
            fv.full = true;
        int rc = store_candidate_create(st, &c, 100, NULL, NULL, &err);
        bool hit = busy ? fv.busy_hits > 0 : fv.full_hits > 0;
        fv.busy = fv.full = false;
        assert_true(hit);
        if (busy) {
            /* Another writer holds the database: 503, retry later (store.h: busy is
             * TPV_EUNAVAILABLE; TPV_EBUSY is the full job queue, a 429). */
            assert_int_equal(rc, TPV_EUNAVAILABLE);
        } else {
            assert_int_equal(rc, TPV_ENOSPACE);
            assert_non_null(strstr(err.message, "full"));
        }
        stats_of(st, &after);
        assert_same_stats(&before, &after);
        assert_int_equal(store_study_version(st, j.study, &version_after, &err), TPV_OK);
        assert_int_equal(version_after, version_before);

        /* Reads went on; the next write works; so does the whole rest of the job. */
        assert_int_equal(job_step(st, &j, 4, 0, false), TPV_OK);
        assert_int_equal(store_candidate_create(st, &c, 100, NULL, NULL, &err), TPV_OK);
        for (int k = 6; k < JOB_STEPS; k++)
            assert_int_equal(job_step(st, &j, k, 0, false), TPV_OK);
    }

    /* Terminal transitions under each fault, retried after. */
    for (int round = 0; round < 2; round++) {
        bool busy = round == 0;
        job_init(&j, 1100 + round);
        for (int k = 0; k < 8; k++)
            assert_int_equal(job_step(st, &j, k, 0, false), TPV_OK);
        stats_of(st, &before);
        if (busy)
            fv.busy = true;
        else
            fv.full = true;
        struct store_score sc = { .noise = "iso", .kind = "isotropic", .split = "fit",
                                  .value = 0.25, .details = "{}" };
        int rc = store_job_succeed(st, j.job, j.owner, &sc, 1, NULL, NULL, &err);
        fv.busy = fv.full = false;
        assert_int_equal(rc, busy ? TPV_EUNAVAILABLE : TPV_ENOSPACE);
        stats_of(st, &after);
        assert_same_stats(&before, &after);
        assert_int_equal(after.jobs_running, 1); /* still this worker's: it may retry */
        for (int k = 8; k < JOB_STEPS; k++)
            assert_int_equal(job_step(st, &j, k, 0, false), TPV_OK);
    }
    store_close(st);
    uninstall_fault_vfs();
    check_budget(&base, "after the VFS faults", 0);
    remove_tree(data);
}

/* ======================================================================================== */
/* Short writes and a full disk under the blob writer                                       */
/* ======================================================================================== */

static int count_blob_files(const char *data)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "find '%s/blobs/sha256' -type f | wc -l", data);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p) {
        if (fscanf(p, "%d", &n) != 1)
            n = -1;
        pclose(p);
    }
    return n;
}

static void sha256_of(const void *data, size_t len, char out[STORE_DIGEST_MAX])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    assert_int_equal(EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL), 1);
    memcpy(out, "sha256:", 7);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
}

static void test_blob_short_writes_and_full_disk(void **state)
{
    (void)state;
    char data[256];
    warm_up();
    make_dir(data, sizeof data, "faults-blob");
    struct budget base;
    snapshot(&base);
    struct store *st = open_store(data);
    struct tpv_err err;
    size_t len = 200000;
    unsigned char *body = malloc(len);
    assert_non_null(body);
    for (size_t i = 0; i < len; i++)
        body[i] = (unsigned char)(i * 2654435761u >> 13);
    char want[STORE_DIGEST_MAX], digest[STORE_DIGEST_MAX];
    uint64_t size = 0;
    bool existed = false;
    struct store_blob_writer *w = NULL;

    /* Short writes (at most 4093 bytes per call): looped over, the blob is whole. */
    body[0] = 1;
    sha256_of(body, len, want);
    wio = (struct wio_state){ .max_chunk = 4093, .enospc_after = -1 };
    assert_int_equal(store_blob_writer_open(st, want, len, &w, &err), TPV_OK);
    assert_int_equal(store_blob_writer_write(w, body, 65536, &err), TPV_OK);
    assert_int_equal(store_blob_writer_write(w, body + 65536, len - 65536, &err), TPV_OK);
    assert_true(wio.calls > (long)(len / 4093));
    assert_int_equal(store_blob_writer_commit(w, digest, &size, &existed, &err), TPV_OK);
    store_blob_writer_free(w);
    wio = (struct wio_state){ .enospc_after = -1 };
    assert_string_equal(digest, want);
    assert_int_equal(size, len);
    char path[512];
    assert_int_equal(store_blob_path(st, digest, path, sizeof path, &err), TPV_OK);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    unsigned char *back = malloc(len + 1);
    assert_non_null(back);
    assert_int_equal(fread(back, 1, len + 1, fp), len);
    fclose(fp);
    assert_memory_equal(back, body, len);
    free(back);
    assert_int_equal(count_blob_files(data), 1);

    /* The disk fills after 70000 bytes (a short write first, then ENOSPC): a clear error, and
     * whatever the caller does next, no blob and no temporary. */
    for (int commit_anyway = 0; commit_anyway < 2; commit_anyway++) {
        body[0] = (unsigned char)(2 + commit_anyway);
        sha256_of(body, len, want);
        wio = (struct wio_state){ .enospc_after = 70000 };
        assert_int_equal(store_blob_writer_open(st, NULL, len, &w, &err), TPV_OK);
        assert_int_equal(store_blob_writer_write(w, body, 65536, &err), TPV_OK);
        int rc = store_blob_writer_write(w, body + 65536, len - 65536, &err);
        assert_int_equal(rc, TPV_ENOSPACE);
        assert_non_null(strstr(err.message, "No space left on device"));
        assert_null(strstr(err.message, data)); /* no server path in the message */
        if (commit_anyway) /* a caller that ignores the error must not get a blob */
            assert_int_not_equal(store_blob_writer_commit(w, digest, &size, &existed, &err),
                                 TPV_OK);
        store_blob_writer_free(w);
        wio = (struct wio_state){ .enospc_after = -1 };
        assert_int_equal(store_blob_temp_count(st), 0);
        assert_int_equal(count_blob_files(data), 1);
        assert_int_equal(store_blob_stat(st, want, NULL, &err), TPV_ENOTFOUND);
    }

    /* fsync fails at commit: an error, no blob, no temporary. */
    body[0] = 9;
    sha256_of(body, len, want);
    assert_int_equal(store_blob_writer_open(st, NULL, len, &w, &err), TPV_OK);
    assert_int_equal(store_blob_writer_write(w, body, len, &err), TPV_OK);
    wio.fsync_eio = true;
    assert_int_equal(store_blob_writer_commit(w, digest, &size, &existed, &err), TPV_EIO);
    wio.fsync_eio = false;
    store_blob_writer_free(w);
    assert_int_equal(store_blob_temp_count(st), 0);
    assert_int_equal(store_blob_stat(st, want, NULL, &err), TPV_ENOTFOUND);
    assert_int_equal(count_blob_files(data), 1);

    /* And the disk has room again: the same upload goes through. */
    assert_int_equal(store_blob_writer_open(st, want, len, &w, &err), TPV_OK);
    assert_int_equal(store_blob_writer_write(w, body, len, &err), TPV_OK);
    assert_int_equal(store_blob_writer_commit(w, digest, &size, &existed, &err), TPV_OK);
    store_blob_writer_free(w);
    assert_int_equal(count_blob_files(data), 2);

    free(body);
    store_close(st);
    check_budget(&base, "after the blob faults", 0);
    remove_tree(data);
}

/* A failed test must not leave its faults on for the next one. */
static int reset_faults(void **state)
{
    (void)state;
    fi_disarm();
    wio = (struct wio_state){ .enospc_after = -1 };
    fv.busy = fv.full = false;
    return 0;
}

int main(void)
{
    install_allocators(); /* before anything allocates through SQLite, jansson or OpenSSL */
    snprintf(base_dir, sizeof base_dir, "%s", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (getenv("TPV_FAULT_TEST")) /* debugging: one test by name */
        cmocka_set_test_filter(getenv("TPV_FAULT_TEST"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_blob_short_writes_and_full_disk, reset_faults),
        cmocka_unit_test_setup(test_busy_and_full_on_commit, reset_faults),
        cmocka_unit_test_setup(test_alloc_failures_open, reset_faults),
        cmocka_unit_test_setup(test_alloc_failures_job_warm, reset_faults),
        cmocka_unit_test_setup(test_alloc_failures_job_cold, reset_faults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
