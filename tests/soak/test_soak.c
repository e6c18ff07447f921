/* test_soak.c: two minutes of mixed traffic against one real tpvd (loopback only, tokens on), then
 * checks that nothing leaked or went wrong (DESIGN.md section 6).
 *
 * Client threads, each with one keep-alive libcurl handle, loop until their time is up or their
 * request budget is spent (both bounded, so the test stops by itself):
 *   uploader    PUT /v1/blobs of small random dumps, HEAD of what it uploaded
 *   submitter   upload + POST candidate (Jacobian dump) into one of four studies, sometimes
 *               DELETE of the job it just made (cancel races the workers: 200 or 409)
 *   poller      GET ranking, then again with If-None-Match (304 or 200 with a new ETag)
 *   longpoller  GET ranking with If-None-Match and wait=2 (held until a change or 304)
 *   prober      requests that must fail: no or bad token (401), read token writing (403), bad
 *               query parameters and JSON (400), unknown ids (404)
 * Phase 1 (warm-up) runs them for a tenth of the time; the daemon's VmRSS and open descriptors
 * are read once all clients have closed; phase 2 runs the rest.  Then every job must become
 * terminal, no request may have got an answer other than the expected ones, RSS may grow by at
 * most 50 MB and the descriptor count must come back to within a small slack.
 *
 * TPV_SOAK_SECONDS overrides the total duration (default 120). */
#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <curl/curl.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"
#include "tests/support/npy.h"

#define NSTUDIES 4
#define MAX_JOBS 20000

static struct test_daemon D;
static char WTOK[128], RTOK[128];
static char SIDS[NSTUDIES][64];
static double DEADLINE;

/* Shared results. */
static pthread_mutex_t jobs_lock = PTHREAD_MUTEX_INITIALIZER;
static char (*JOBS)[40];
static int NJOBS;
static _Atomic long REQUESTS, UNEXPECTED, STATUS_2XX, STATUS_304, STATUS_4XX;
static _Atomic long CANCELS, LONGPOLLS_WOKEN;
static _Atomic int NAME_SEQ;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct client {
    CURL *curl;
    struct http_buf resp;
    char etag[80];
    unsigned seed;
    const char *name;
};

static size_t on_header(char *p, size_t s, size_t n, void *u)
{
    struct client *c = u;
    size_t k = s * n;
    if (k > 6 && strncasecmp(p, "ETag:", 5) == 0) {
        const char *v = p + 5;
        while (*v == ' ')
            v++;
        size_t vl = strcspn(v, "\r\n");
        if (vl < sizeof c->etag) {
            memcpy(c->etag, v, vl);
            c->etag[vl] = '\0';
        }
    }
    return k;
}

/* One request on the client's keep-alive handle.  `expect` lists acceptable statuses (0 ends);
 * anything else (or a transport error) is counted as unexpected and printed. */
static long request(struct client *c, const char *method, const char *path, const char *token,
                    const char *ctype, const void *body, size_t len, const char *extra,
                    const long *expect)
{
    char url[512], auth[160], ct[96];
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
    }
    snprintf(ct, sizeof ct, "Content-Type:%s%s", ctype ? " " : "", ctype ? ctype : "");
    h = curl_slist_append(h, ct);
    if (extra)
        h = curl_slist_append(h, extra);
    snprintf(url, sizeof url, "%s%s", D.base_url, path);
    free(c->resp.data);
    c->resp.data = NULL;
    c->resp.len = 0;
    curl_easy_setopt(c->curl, CURLOPT_URL, url);
    /* Reset the handle to a plain GET, then shape the request: a body makes it a POST that
     * CUSTOMREQUEST renames (PUT, POST); HEAD has no response body. */
    curl_easy_setopt(c->curl, CURLOPT_HTTPGET, 1L);
    if (body) {
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    curl_easy_setopt(c->curl, CURLOPT_NOBODY, strcmp(method, "HEAD") == 0 ? 1L : 0L);
    curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, h);
    CURLcode cc = curl_easy_perform(c->curl);
    long status = -1;
    if (cc == CURLE_OK)
        curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(h);
    atomic_fetch_add(&REQUESTS, 1);
    bool ok = false;
    for (const long *e = expect; *e && !ok; e++)
        ok = *e == status;
    if (!ok) {
        long n = atomic_fetch_add(&UNEXPECTED, 1);
        if (n < 20)
            fprintf(stderr, "[%s] %s %s: unexpected %ld (%s) %.200s\n", c->name, method, path,
                    status, cc == CURLE_OK ? "" : curl_easy_strerror(cc), c->resp.data ? c->resp.data : "");
    }
    if (status >= 200 && status < 300)
        atomic_fetch_add(&STATUS_2XX, 1);
    else if (status == 304)
        atomic_fetch_add(&STATUS_304, 1);
    else if (status >= 400 && status < 500)
        atomic_fetch_add(&STATUS_4XX, 1);
    return status;
}

static void client_init(struct client *c, const char *name, unsigned seed)
{
    memset(c, 0, sizeof *c);
    c->name = name;
    c->seed = seed;
    c->curl = curl_easy_init();
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, http_buf_append);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &c->resp);
    curl_easy_setopt(c->curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c->curl, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(c->curl, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
}

static void client_free(struct client *c)
{
    curl_easy_cleanup(c->curl); /* closes its connection */
    free(c->resp.data);
}

/* The value of "key":"..." in the last body. */
static bool body_str(const struct client *c, const char *key, char *out, size_t cap)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    const char *p = c->resp.data ? strstr(c->resp.data, pat) : NULL;
    if (!p)
        return false;
    p += strlen(pat);
    size_t n = strcspn(p, "\"");
    if (n >= cap)
        return false;
    memcpy(out, p, n);
    out[n] = '\0';
    return true;
}

/* A small (n=8, p=16) dump with random entries. */
static unsigned char *random_dump(unsigned *seed, size_t *len)
{
    double v[8 * 16];
    for (int i = 0; i < 8 * 16; i++)
        v[i] = (double)(rand_r(seed) % 2000) / 1000.0 - 1.0;
    uint64_t shape[2] = { 8, 16 };
    return test_npy_f64(shape, 2, v, len);
}

static const long OK_UPLOAD[] = { 201, 200, 0 };

static bool upload(struct client *c, char digest[80])
{
    size_t len;
    unsigned char *b = random_dump(&c->seed, &len);
    long st = request(c, "PUT", "/v1/blobs", WTOK, "application/octet-stream", b, len, NULL,
                      OK_UPLOAD);
    free(b);
    return (st == 201 || st == 200) && body_str(c, "digest", digest, 80);
}

struct phase {
    double until;
    long budget; /* requests per thread */
};

static void *uploader(void *arg)
{
    const struct phase *ph = arg;
    struct client c;
    client_init(&c, "uploader", 11);
    static const long OK_HEAD[] = { 200, 0 };
    for (long i = 0; i < ph->budget && now_s() < ph->until; i += 2) {
        char digest[80], path[160];
        if (!upload(&c, digest))
            continue;
        snprintf(path, sizeof path, "/v1/blobs/%s", digest);
        request(&c, "HEAD", path, RTOK, NULL, NULL, 0, NULL, OK_HEAD);
        usleep(20 * 1000);
    }
    client_free(&c);
    return NULL;
}

static void *submitter(void *arg)
{
    const struct phase *ph = arg;
    struct client c;
    client_init(&c, "submitter", 23);
    static const long OK_SUBMIT[] = { 202, 0 }, OK_CANCEL[] = { 200, 409, 0 };
    for (long i = 0; i < ph->budget && now_s() < ph->until; i += 3) {
        char digest[80], path[160], body[400], job[40];
        if (!upload(&c, digest))
            continue;
        int seq = atomic_fetch_add(&NAME_SEQ, 1);
        const char *sid = SIDS[seq % NSTUDIES];
        snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
        snprintf(body, sizeof body, "{\"name\":\"c%d\",\"metadata\":{\"train_loss\":%d.%03d,"
                 "\"run\":\"r%d\",\"epoch\":%d},\"jacobian\":{\"fit\":\"%s\"}}", seq, seq % 3,
                 seq % 1000, seq % 5, seq / 5, digest);
        if (request(&c, "POST", path, WTOK, "application/json", body, strlen(body), NULL,
                    OK_SUBMIT) != 202)
            continue;
        char *jp = c.resp.data ? strstr(c.resp.data, "\"job\":") : NULL;
        if (!jp || sscanf(jp, "\"job\":{\"id\":\"%39[^\"]\"", job) != 1) {
            /* Field order is not part of the contract: look the id up anywhere in job. */
            const char *id = jp ? strstr(jp, "\"id\":\"") : NULL;
            if (!id || sscanf(id, "\"id\":\"%39[^\"]\"", job) != 1) {
                atomic_fetch_add(&UNEXPECTED, 1);
                continue;
            }
        }
        pthread_mutex_lock(&jobs_lock);
        if (NJOBS < MAX_JOBS)
            snprintf(JOBS[NJOBS++], 40, "%s", job);
        pthread_mutex_unlock(&jobs_lock);
        if (seq % 7 == 0) {
            snprintf(path, sizeof path, "/v1/jobs/%s", job);
            request(&c, "DELETE", path, WTOK, NULL, NULL, 0, NULL, OK_CANCEL);
            atomic_fetch_add(&CANCELS, 1);
        }
        usleep(30 * 1000);
    }
    client_free(&c);
    return NULL;
}

static void *poller(void *arg)
{
    const struct phase *ph = arg;
    struct client c;
    client_init(&c, "poller", 37);
    static const long OK_GET[] = { 200, 0 }, OK_COND[] = { 200, 304, 0 };
    for (long i = 0; i < ph->budget && now_s() < ph->until; i += 2) {
        char path[200], inm[120];
        snprintf(path, sizeof path, "/v1/studies/%s/ranking?split=fit", SIDS[i % NSTUDIES]);
        c.etag[0] = '\0';
        if (request(&c, "GET", path, RTOK, NULL, NULL, 0, NULL, OK_GET) != 200 || !c.etag[0])
            continue;
        snprintf(inm, sizeof inm, "If-None-Match: %s", c.etag);
        request(&c, "GET", path, RTOK, NULL, NULL, 0, inm, OK_COND);
        usleep(10 * 1000);
    }
    client_free(&c);
    return NULL;
}

static void *longpoller(void *arg)
{
    const struct phase *ph = arg;
    struct client c;
    client_init(&c, "longpoller", 41);
    static const long OK_GET[] = { 200, 0 }, OK_COND[] = { 200, 304, 0 };
    for (long i = 0; i < ph->budget && now_s() + 3 < ph->until; i += 2) {
        char path[200], inm[120];
        snprintf(path, sizeof path, "/v1/studies/%s/ranking?split=fit", SIDS[i % NSTUDIES]);
        c.etag[0] = '\0';
        if (request(&c, "GET", path, RTOK, NULL, NULL, 0, NULL, OK_GET) != 200 || !c.etag[0])
            continue;
        snprintf(path, sizeof path, "/v1/studies/%s/ranking?split=fit&wait=2", SIDS[i % NSTUDIES]);
        snprintf(inm, sizeof inm, "If-None-Match: %s", c.etag);
        if (request(&c, "GET", path, RTOK, NULL, NULL, 0, inm, OK_COND) == 200)
            atomic_fetch_add(&LONGPOLLS_WOKEN, 1);
    }
    client_free(&c);
    return NULL;
}

static void *prober(void *arg)
{
    const struct phase *ph = arg;
    struct client c;
    client_init(&c, "prober", 53);
    static const long E400[] = { 400, 0 }, E401[] = { 401, 0 }, E403[] = { 403, 0 },
                      E404[] = { 404, 0 }, E415[] = { 415, 0 };
    char path[200];
    for (long i = 0; i < ph->budget && now_s() < ph->until; i++) {
        switch (i % 8) {
        case 0:
            request(&c, "GET", "/v1/studies", NULL, NULL, NULL, 0, NULL, E401);
            break;
        case 1:
            request(&c, "GET", "/v1/studies", "tpv_forged", NULL, NULL, 0, NULL, E401);
            break;
        case 2:
            request(&c, "POST", "/v1/studies", RTOK, "application/json", "{}", 2, NULL, E403);
            break;
        case 3:
            snprintf(path, sizeof path, "/v1/studies/%s/ranking?split=foo", SIDS[0]);
            request(&c, "GET", path, RTOK, NULL, NULL, 0, NULL, E400);
            break;
        case 4:
            request(&c, "POST", "/v1/studies", WTOK, "application/json", "{\"name\":", 8, NULL,
                    E400);
            break;
        case 5:
            request(&c, "GET", "/v1/jobs/jb_0000000000000000", RTOK, NULL, NULL, 0, NULL, E404);
            break;
        case 6:
            request(&c, "POST", "/v1/studies", WTOK, "text/plain", "{}", 2, NULL, E415);
            break;
        case 7:
            request(&c, "GET", "/v1/studies?page_token=garbage", RTOK, NULL, NULL, 0, NULL, E400);
            break;
        }
        usleep(15 * 1000);
    }
    client_free(&c);
    return NULL;
}

static void run_phase(double seconds, long budget)
{
    struct phase ph = { now_s() + seconds, budget };
    if (ph.until > DEADLINE)
        ph.until = DEADLINE;
    void *(*fns[])(void *) = { uploader, submitter, poller, longpoller, prober };
    pthread_t t[5];
    for (int i = 0; i < 5; i++)
        assert_int_equal(pthread_create(&t[i], NULL, fns[i], &ph), 0);
    for (int i = 0; i < 5; i++)
        pthread_join(t[i], NULL);
}

static long proc_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *fp = fopen(path, "r");
    long kb = -1;
    while (fp && fgets(line, sizeof line, fp))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (fp)
        fclose(fp);
    return kb;
}

static int proc_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        n += de->d_name[0] != '.';
    if (d)
        closedir(d);
    return d ? n : -1;
}

/* The daemon's descriptors once closed client connections have been noticed. */
static int settled_fds(void)
{
    int fds = proc_fds(D.pid);
    for (int i = 0; i < 20; i++) {
        usleep(100 * 1000);
        int again = proc_fds(D.pid);
        if (again == fds)
            break;
        fds = again;
    }
    return fds;
}

static void test_soak(void **state)
{
    (void)state;
    const char *env = getenv("TPV_SOAK_SECONDS");
    double total = env ? atof(env) : 120.0;
    if (total < 10)
        total = 10;
    double t0 = now_s();
    DEADLINE = t0 + total;
    JOBS = calloc(MAX_JOBS, sizeof *JOBS);
    assert_non_null(JOBS);

    struct client c;
    client_init(&c, "setup", 1);
    static const long OK_CREATE[] = { 201, 0 }, OK_PUT[] = { 200, 0 };
    for (int i = 0; i < NSTUDIES; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"name\":\"soak%d\",\"noise_models\":[{\"name\":\"iso\","
                 "\"kind\":\"isotropic\",\"sigma\":0.1},{\"name\":\"sgd\",\"kind\":\"sgd\","
                 "\"lr\":0.1,\"batch_size\":32}]}", i);
        assert_int_equal(request(&c, "POST", "/v1/studies", WTOK, "application/json", body,
                                 strlen(body), NULL, OK_CREATE), 201);
        assert_true(body_str(&c, "id", SIDS[i], sizeof SIDS[i]));
        (void)OK_PUT;
    }
    client_free(&c);

    /* Phase 1: warm-up (caches, SQLite page caches, malloc arenas, thread stacks). */
    run_phase(total / 10, 100000);
    long rss0 = proc_rss_kb(D.pid);
    int fds0 = settled_fds();
    long req0 = atomic_load(&REQUESTS);
    /* Phase 2: the rest. */
    run_phase(DEADLINE - now_s(), 1000000);
    double traffic_s = now_s() - t0;

    /* Every job terminal (cancel and the workers have finished). */
    client_init(&c, "check", 2);
    static const long OK_GET[] = { 200, 0 };
    int terminal = 0, canceled = 0, failed = 0;
    double wait_until = now_s() + 120;
    for (int i = 0; i < NJOBS; i++) {
        char path[80], state_[32] = "";
        snprintf(path, sizeof path, "/v1/jobs/%s", JOBS[i]);
        for (;;) {
            request(&c, "GET", path, RTOK, NULL, NULL, 0, NULL, OK_GET);
            body_str(&c, "state", state_, sizeof state_);
            if (strcmp(state_, "succeeded") == 0 || strcmp(state_, "failed") == 0 ||
                strcmp(state_, "canceled") == 0 || now_s() > wait_until)
                break;
            usleep(50 * 1000);
        }
        terminal += strcmp(state_, "queued") != 0 && strcmp(state_, "running") != 0;
        canceled += strcmp(state_, "canceled") == 0;
        failed += strcmp(state_, "failed") == 0;
    }
    client_free(&c);
    long rss1 = proc_rss_kb(D.pid);
    int fds1 = settled_fds();

    printf("soak: %.0f s of traffic, %ld requests (%ld after warm-up; 2xx %ld, 304 %ld, "
           "expected 4xx %ld), %ld unexpected\n",
           traffic_s, atomic_load(&REQUESTS), atomic_load(&REQUESTS) - req0,
           atomic_load(&STATUS_2XX), atomic_load(&STATUS_304), atomic_load(&STATUS_4XX),
           atomic_load(&UNEXPECTED));
    printf("soak: %d jobs (%d terminal: %d canceled, %d failed; %ld cancels asked), "
           "%ld long-polls woken by a change\n",
           NJOBS, terminal, canceled, failed, atomic_load(&CANCELS),
           atomic_load(&LONGPOLLS_WOKEN));
    printf("soak: daemon VmRSS %ld kB after warm-up -> %ld kB at the end (%+ld kB); "
           "open fds %d -> %d\n", rss0, rss1, rss1 - rss0, fds0, fds1);
    fflush(stdout);

    assert_int_equal(atomic_load(&UNEXPECTED), 0);
    assert_true(NJOBS > 0);
    assert_int_equal(terminal, NJOBS);
    assert_int_equal(failed, 0); /* every dump is well-formed */
    assert_true(rss0 > 0 && rss1 > 0);
    assert_true(rss1 - rss0 < 50 * 1024);
    assert_true(fds0 > 0 && fds1 <= fds0 + 2 && fds1 >= fds0 - 2);
    char tmp[400];
    snprintf(tmp, sizeof tmp, "%s/blobs/tmp", D.data_dir);
    DIR *d = opendir(tmp);
    int left = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        left += de->d_name[0] != '.';
    if (d)
        closedir(d);
    assert_int_equal(left, 0);
    free(JOBS);
}

static int setup(void **state)
{
    (void)state;
    if (test_daemon_prepare(&D) != 0 ||
        test_daemon_token(&D, "create --name soak-w --role write", WTOK, sizeof WTOK) != 0 ||
        test_daemon_token(&D, "create --name soak-r --role read", RTOK, sizeof RTOK) != 0)
        return -1;
    const char *args[] = { "--log-level", "warn", NULL };
    return test_daemon_start(&D, args);
}

static int teardown(void **state)
{
    (void)state;
    int rc = test_daemon_stop(&D, SIGTERM);
    int errors = test_daemon_log_count(&D, "ERROR", true);
    test_daemon_cleanup(&D);
    return rc == 0 && errors == 0 ? 0 : -1;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_soak),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    curl_global_cleanup();
    return rc;
}
