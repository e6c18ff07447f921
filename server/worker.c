/* worker.c: the job worker pool (see worker.h).
 *
 * Each worker claims the oldest queued job in a transaction with a lease, runs it with a progress
 * callback that records progress and renews the lease at most every PROGRESS_INTERVAL_S and
 * stops the job when a cancel was asked (or the daemon's shutdown grace ran out), then writes the
 * scores, the state and the study version in one transaction.  A maintenance thread renews the
 * leases of jobs whose core step is long and re-queues jobs whose lease expired. */
#include "server/worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "core/job.h"
#include "core/score.h"
#include "core/tpv_log.h"
#include "storage/store.h"

void openblas_set_num_threads(int num_threads); /* OpenBLAS: threads of every BLAS call */

#define PROGRESS_INTERVAL_S 0.5
#define IDLE_WAIT_S 1
#define MAINTENANCE_INTERVAL_S 2
#define IDEMPOTENCY_EXPIRY_INTERVAL_S 60
#define BLOB_GC_BATCH 256 /* blobs removed per maintenance pass: one bounded transaction */

struct worker {
    struct srv_workers *pool;
    int index;
    pthread_t thread;
    char owner[48];
    /* The running job, for the maintenance thread (guarded by pool->lock). */
    char job_id[STORE_ID_MAX];
    double progress;
    double last_report; /* monotonic seconds of the last progress write */
    _Atomic bool cancel;
};

struct srv_workers {
    struct store *st;
    struct api_metrics *metrics;
    const struct srv_config *cfg;
    struct worker *workers;
    int n;
    double lease_s;
    pthread_mutex_t lock;
    pthread_cond_t wake;     /* a job was queued, or stopping */
    pthread_cond_t idle;     /* a job finished (shutdown waits on it) */
    pthread_cond_t maint_cond; /* stopping (for the maintenance thread) */
    uint64_t wake_seq;
    bool stopping;
    int running;
    _Atomic bool hard_stop;  /* grace over: running jobs stop and go back to the queue */
    _Atomic int alive;
    pthread_t maint;
    bool maint_started;
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void abs_deadline(struct timespec *ts, double seconds)
{
    clock_gettime(CLOCK_REALTIME, ts);
    long ns = (long)((seconds - (double)(long)seconds) * 1e9);
    ts->tv_sec += (time_t)seconds;
    ts->tv_nsec += ns;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

void srv_workers_notify(struct srv_workers *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->wake_seq++;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
}

bool srv_workers_alive(void *ctx)
{
    struct srv_workers *p = ctx;
    return p && atomic_load(&p->alive) == p->n;
}

/* The core's progress callback: throttled writes of progress (which renew the lease and read the
 * cancel flag). */
static int on_progress(void *ctx, double fraction)
{
    struct worker *w = ctx;
    struct srv_workers *p = w->pool;
    if (atomic_load(&p->hard_stop) || atomic_load(&w->cancel))
        return 1;
    double now = mono_now();
    pthread_mutex_lock(&p->lock);
    w->progress = fraction;
    bool due = now - w->last_report >= PROGRESS_INTERVAL_S;
    if (due)
        w->last_report = now;
    pthread_mutex_unlock(&p->lock);
    if (due) {
        struct tpv_err err;
        bool cancel = false;
        int rc = store_job_progress(p->st, w->job_id, w->owner, fraction, p->lease_s, &cancel,
                                    &err);
        if (rc == TPV_EPRECONDITION || cancel) {
            atomic_store(&w->cancel, true); /* canceled, or the lease was lost: stop */
            return 1;
        }
    }
    return 0;
}

void srv_score_rows_free(struct srv_score_rows *r)
{
    if (!r)
        return;
    for (size_t i = 0; r->details && i < r->n; i++)
        free(r->details[i]);
    free(r->details);
    free(r->rows);
    free(r->stability);
    memset(r, 0, sizeof *r);
}

int srv_score_rows_encode(struct srv_score_rows *out, const struct tpv_score *sc, size_t n,
                          const json_t *stability, struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    out->rows = calloc(n ? n : 1, sizeof *out->rows);
    out->details = calloc(n ? n : 1, sizeof *out->details);
    if (!out->rows || !out->details) {
        srv_score_rows_free(out);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    out->n = n;
    /* A score whose details cannot be encoded must not be written without them. */
    if (stability && !(out->stability = json_dumps(stability, JSON_COMPACT))) {
        srv_score_rows_free(out);
        return tpv_err_set(err, TPV_EINTERNAL, NULL,
                           "the candidate's stability report could not be encoded as JSON");
    }
    for (size_t i = 0; i < n; i++) {
        if (sc[i].details && !(out->details[i] = json_dumps(sc[i].details, JSON_COMPACT))) {
            srv_score_rows_free(out);
            return tpv_err_set(err, TPV_EINTERNAL, NULL,
                               "the details of score '%s' (%s split) could not be encoded as JSON",
                               sc[i].noise, tpv_split_name(sc[i].split));
        }
        out->rows[i] = (struct store_score){
            .noise = sc[i].noise,
            .kind = tpv_noise_kind_name(sc[i].kind),
            .split = tpv_split_name(sc[i].split),
            .value = sc[i].value,
            .stderr_value = sc[i].stderr_value,
            .estimator = sc[i].estimator,
            .samples = sc[i].samples,
            .seed = sc[i].seed,
            .wall_seconds = sc[i].wall_seconds,
            .details = out->details[i],
            .per_input = sc[i].per_input,
            .n_inputs = sc[i].n_inputs,
            .stderr_inputs = sc[i].stderr_inputs,
        };
    }
    return TPV_OK;
}

/* Converts the core's scores for the store and writes the success. */
static int write_scores(struct worker *w, const struct store_claim *c, const struct tpv_score *sc,
                        size_t n, const json_t *stability, struct tpv_err *err)
{
    struct srv_score_rows r;
    int rc = srv_score_rows_encode(&r, sc, n, stability, err);
    if (rc == TPV_OK)
        rc = store_job_succeed(w->pool->st, c->id, w->owner, r.rows, n, r.stability, NULL, err);
    srv_score_rows_free(&r);
    return rc;
}

/* Runs the parsed job through the core: the full open (every value scanned) happens here, on the
 * worker, not at submission. */
static int run_core(struct worker *w, const struct store_claim *c, const struct tpv_job *job,
                    const struct api_cand_files *cf, struct tpv_err *err)
{
    struct srv_workers *p = w->pool;
    struct tpv_progress pg = { on_progress, w };
    struct tpv_run_options opts = { .max_memory = p->cfg->max_job_memory,
                                    .flop_budget = (double)p->cfg->job_flop_budget };
    int rc;
    if (job->kind == TPV_JOB_SCORE) {
        struct tpv_score *scores = NULL;
        size_t nscores = 0;
        json_t *stability = NULL;
        rc = tpv_candidate_score(&cf->files, job->models, job->nmodels, &opts, &scores, &nscores,
                                 &stability, &pg, err);
        if (rc == TPV_OK)
            rc = write_scores(w, c, scores, nscores, stability, err);
        tpv_scores_free(scores, nscores);
        json_decref(stability);
        return rc;
    }
    json_t *result = NULL;
    rc = tpv_jbr_run(&cf->files, job->jbr.confidence, job->jbr.batch_size, &result, &pg, err);
    char *text = rc == TPV_OK ? json_dumps(result, JSON_COMPACT) : NULL;
    if (rc == TPV_OK)
        rc = text ? store_job_succeed(p->st, c->id, w->owner, NULL, 0, NULL, text, err)
                  : tpv_err_set(err, TPV_EINTERNAL, NULL,
                                "the JBR result could not be encoded as JSON");
    free(text);
    json_decref(result);
    return rc;
}

/* Runs one claimed job to a terminal state (or back to the queue on shutdown). */
static void run_job(struct worker *w, struct store_claim *c)
{
    struct srv_workers *p = w->pool;
    struct tpv_err err;
    struct api_cand_files cf;
    struct tpv_job job;
    double t0 = mono_now();
    tpv_err_clear(&err);
    memset(&cf, 0, sizeof cf);
    log_info("job id=%s kind=%s study=%s candidate=%s attempt=%d state=running worker=%s", c->id,
             c->kind, c->study_id, c->candidate_id, c->attempts, w->owner);

    int rc = tpv_job_parse(&job, c->source, c->noise_models, c->kind, c->params, &err);
    if (rc == TPV_OK)
        rc = api_cand_files_load(&cf, p->st, &job.src, p->cfg->max_body_bytes, &err);
    if (rc == TPV_OK)
        rc = run_core(w, c, &job, &cf, &err);

    if (rc != TPV_OK)
        api_cand_files_explain(&cf, &err); /* no local paths in job errors */
    const char *outcome;
    struct tpv_err werr;
    tpv_err_clear(&werr);
    if (rc == TPV_OK) {
        outcome = "succeeded";
    } else if (rc == TPV_EPRECONDITION && strcmp(err.field, "job_id") == 0) {
        outcome = "lost"; /* the lease expired and another worker has it */
    } else if (rc == TPV_ECANCELED && atomic_load(&p->hard_stop) && !atomic_load(&w->cancel)) {
        outcome = "requeued";
        if (store_job_release(p->st, c->id, w->owner, &werr) != TPV_OK)
            log_error("job id=%s cannot go back to the queue: %s", c->id, tpv_err_message(&werr));
    } else if (rc == TPV_ECANCELED) {
        outcome = "canceled";
        if (store_job_finish(p->st, c->id, w->owner, "canceled", "canceled",
                             "canceled by request", &werr) != TPV_OK)
            outcome = "lost";
    } else {
        outcome = "failed";
        if (store_job_finish(p->st, c->id, w->owner, "failed", tpv_error_name(rc),
                             tpv_err_message(&err), &werr) != TPV_OK)
            outcome = "lost";
    }
    double secs = mono_now() - t0;
    if (strcmp(outcome, "lost") == 0)
        log_warn("job id=%s kind=%s state=lost worker=%s: %s", c->id, c->kind, w->owner,
                 werr.code ? tpv_err_message(&werr) : tpv_err_message(&err));
    else if (rc == TPV_OK || strcmp(outcome, "requeued") == 0)
        log_info("job id=%s kind=%s study=%s candidate=%s state=%s seconds=%.3f", c->id, c->kind,
                 c->study_id, c->candidate_id, outcome, secs);
    else
        log_info("job id=%s kind=%s study=%s candidate=%s state=%s seconds=%.3f error=%s "
                 "message=\"%s\"", c->id, c->kind, c->study_id, c->candidate_id, outcome, secs,
                 tpv_error_name(rc), tpv_log_text(tpv_err_message(&err), TPV_ERR_MSG_MAX));
    if (strcmp(outcome, "lost") != 0)
        api_metrics_job(p->metrics, c->kind, outcome, secs);

    api_cand_files_free(&cf);
    tpv_job_free(&job);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct srv_workers *p = w->pool;
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add(&p->alive, 1);
    pthread_cond_broadcast(&p->idle); /* start-up waits for every worker */
    pthread_mutex_unlock(&p->lock);
    for (;;) {
        pthread_mutex_lock(&p->lock);
        if (p->stopping) {
            pthread_mutex_unlock(&p->lock);
            break;
        }
        uint64_t seq = p->wake_seq;
        pthread_mutex_unlock(&p->lock);

        struct store_claim claim;
        struct tpv_err err;
        tpv_err_clear(&err);
        int rc = store_job_claim(p->st, w->owner, p->lease_s, &claim, &err);
        if (rc == TPV_OK) {
            pthread_mutex_lock(&p->lock);
            snprintf(w->job_id, sizeof w->job_id, "%s", claim.id);
            w->progress = 0;
            w->last_report = mono_now();
            atomic_store(&w->cancel, false);
            p->running++;
            pthread_mutex_unlock(&p->lock);
            run_job(w, &claim);
            store_claim_free(&claim);
            pthread_mutex_lock(&p->lock);
            w->job_id[0] = '\0';
            p->running--;
            pthread_cond_broadcast(&p->idle);
            pthread_mutex_unlock(&p->lock);
            continue;
        }
        if (rc != TPV_ENOTFOUND)
            log_error("worker %s: cannot claim a job: %s", w->owner, tpv_err_message(&err));
        struct timespec until;
        abs_deadline(&until, IDLE_WAIT_S);
        pthread_mutex_lock(&p->lock);
        while (!p->stopping && p->wake_seq == seq)
            if (pthread_cond_timedwait(&p->wake, &p->lock, &until) == ETIMEDOUT)
                break;
        pthread_mutex_unlock(&p->lock);
    }
    atomic_fetch_sub(&p->alive, 1);
    return NULL;
}

/* Renews the leases of running jobs that have not reported for a while (a long BLAS call),
 * re-queues jobs whose lease expired (a node that vanished; with one node, a hung worker), and
 * forgets Idempotency-Keys older than --idempotency-ttl once a minute. */
static void *maintenance_main(void *arg)
{
    struct srv_workers *p = arg;
    double last_expiry = 0; /* monotonic seconds: the first pass expires old keys at once */
    double last_gc = 0;
    pthread_mutex_lock(&p->lock);
    while (!p->stopping) {
        struct timespec until;
        abs_deadline(&until, MAINTENANCE_INTERVAL_S);
        pthread_cond_timedwait(&p->maint_cond, &p->lock, &until);
        if (p->stopping)
            break;
        double now = mono_now();
        for (int i = 0; i < p->n; i++) {
            struct worker *w = &p->workers[i];
            if (!w->job_id[0] || now - w->last_report < p->lease_s / 4)
                continue;
            char id[STORE_ID_MAX];
            double progress = w->progress;
            snprintf(id, sizeof id, "%s", w->job_id);
            w->last_report = now;
            pthread_mutex_unlock(&p->lock);
            struct tpv_err err;
            bool cancel = false;
            if (store_job_progress(p->st, id, w->owner, progress, p->lease_s, &cancel, &err) ==
                    TPV_EPRECONDITION || cancel)
                atomic_store(&w->cancel, true);
            pthread_mutex_lock(&p->lock);
        }
        pthread_mutex_unlock(&p->lock);
        int requeued = 0, failed = 0, expired = 0;
        struct tpv_err err;
        if (store_jobs_requeue_expired(p->st, (int)p->cfg->max_attempts, 0, &requeued, &failed,
                                       &err) == TPV_OK && (requeued || failed))
            log_warn("jobs with expired leases: requeued=%d failed=%d", requeued, failed);
        if (mono_now() - last_expiry >= IDEMPOTENCY_EXPIRY_INTERVAL_S) {
            last_expiry = mono_now();
            if (store_idempotency_expire(p->st, (double)p->cfg->idempotency_ttl_s, &expired,
                                         &err) != TPV_OK)
                log_warn("idempotency key expiry: %s", tpv_err_message(&err));
            else if (expired)
                log_info("idempotency keys expired: %d", expired);
        }
        int collected = 0;
        /* The collection scans references: once a minute is plenty, more often only when the
         * grace itself is shorter (tests). */
        double gc_every = p->cfg->blob_gc_grace_s < 60 ? (double)p->cfg->blob_gc_grace_s : 60;
        if (mono_now() - last_gc >= gc_every) {
            last_gc = mono_now();
            if (store_blob_gc(p->st, (double)p->cfg->blob_gc_grace_s, BLOB_GC_BATCH, &collected,
                              &err) != TPV_OK)
                log_warn("blob garbage collection: %s", tpv_err_message(&err));
            else if (collected)
                log_info("blobs collected (unreferenced for --blob-gc-grace): %d", collected);
        }
        pthread_mutex_lock(&p->lock);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int srv_workers_start(struct srv_workers **out, const struct srv_config *cfg, struct store *st,
                      struct api_metrics *metrics, struct tpv_err *err)
{
    long nworkers, blas;
    srv_config_effective_threads(cfg, &nworkers, &blas);
    *out = NULL;
    struct srv_workers *p = calloc(1, sizeof *p);
    if (!p)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    p->workers = calloc((size_t)nworkers, sizeof *p->workers);
    if (!p->workers) {
        free(p);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    p->st = st;
    p->metrics = metrics;
    p->cfg = cfg;
    p->lease_s = (double)cfg->job_lease_s;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->idle, NULL);
    pthread_cond_init(&p->maint_cond, NULL);
    openblas_set_num_threads((int)blas);

    uint32_t tag = 0;
    if (getrandom(&tag, sizeof tag, 0) != sizeof tag)
        tag = (uint32_t)time(NULL);
    for (long i = 0; i < nworkers; i++) {
        struct worker *w = &p->workers[i];
        w->pool = p;
        w->index = (int)i;
        snprintf(w->owner, sizeof w->owner, "%d-%08x-w%ld", (int)getpid(), tag, i);
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            srv_workers_stop(p, 0);
            return tpv_err_set(err, TPV_EINTERNAL, "workers", "cannot start worker thread %ld", i);
        }
        p->n++;
    }
    if (pthread_create(&p->maint, NULL, maintenance_main, p) != 0) {
        srv_workers_stop(p, 0);
        return tpv_err_set(err, TPV_EINTERNAL, "workers", "cannot start the maintenance thread");
    }
    p->maint_started = true;
    pthread_mutex_lock(&p->lock);
    while (atomic_load(&p->alive) < p->n)
        pthread_cond_wait(&p->idle, &p->lock);
    pthread_mutex_unlock(&p->lock);
    api_metrics_workers(metrics, (int)nworkers, (int)nworkers);
    *out = p;
    return TPV_OK;
}

void srv_workers_stop(struct srv_workers *p, int grace_s)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->wake);
    pthread_cond_broadcast(&p->maint_cond);
    if (p->running > 0)
        log_info("waiting up to %d s for %d running job(s)", grace_s, p->running);
    struct timespec until;
    abs_deadline(&until, grace_s);
    while (p->running > 0)
        if (pthread_cond_timedwait(&p->idle, &p->lock, &until) == ETIMEDOUT)
            break;
    if (p->running > 0) {
        log_warn("shutdown grace over: %d running job(s) go back to the queue", p->running);
        atomic_store(&p->hard_stop, true);
    }
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->n; i++)
        pthread_join(p->workers[i].thread, NULL);
    if (p->maint_started)
        pthread_join(p->maint, NULL);
    api_metrics_workers(p->metrics, 0, p->n);
    pthread_cond_destroy(&p->maint_cond);
    pthread_cond_destroy(&p->idle);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p->workers);
    free(p);
}
