/* metrics.c: counters and histograms of requests and jobs, and GET /metrics in the Prometheus text
 * format (DESIGN.md section 5).  Recording is lock-free (relaxed atomics); the job and blob gauges
 * come from the store at scrape time. */
#include "api/handlers.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/store.h"

#define MAX_ROUTES 64
static const int statuses[] = { 200, 201, 202, 204, 304, 400, 401, 403, 404, 405, 409,
                                412, 413, 415, 429, 500, 501, 503, 507 };
#define NSTATUS (sizeof statuses / sizeof statuses[0] + 1) /* last: any other */
static const double lat_bounds[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                     0.1,    0.25,  0.5,    1,     2.5,  5,     10 };
#define NLAT (sizeof lat_bounds / sizeof lat_bounds[0] + 1)
static const double job_bounds[] = { 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600 };
#define NJOB (sizeof job_bounds / sizeof job_bounds[0] + 1)
static const char *const job_kinds[] = { "score", "jbr" };
static const char *const job_states[] = { "succeeded", "failed", "canceled", "requeued" };

struct api_metrics {
    _Atomic uint64_t requests[MAX_ROUTES + 1][NSTATUS];
    _Atomic uint64_t latency[MAX_ROUTES + 1][NLAT];
    _Atomic uint64_t latency_us_sum[MAX_ROUTES + 1];
    _Atomic uint64_t jobs[2][4];
    _Atomic uint64_t job_duration[2][NJOB];
    _Atomic uint64_t job_duration_ms_sum[2];
    _Atomic uint64_t blob_bytes_in;
    _Atomic int workers_alive, workers_total;
};

int api_metrics_new(struct api_metrics **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? TPV_OK : TPV_ENOMEM;
}

void api_metrics_free(struct api_metrics *m)
{
    free(m);
}

static size_t bucket(const double *bounds, size_t n, double v)
{
    size_t i = 0;
    while (i < n && v > bounds[i])
        i++;
    return i;
}

void api_metrics_request(struct api_metrics *m, int route, int status, double seconds)
{
    if (!m)
        return;
    size_t r = route >= 0 && route < MAX_ROUTES ? (size_t)route : MAX_ROUTES, s = NSTATUS - 1;
    for (size_t i = 0; i + 1 < NSTATUS; i++)
        if (statuses[i] == status)
            s = i;
    atomic_fetch_add_explicit(&m->requests[r][s], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->latency[r][bucket(lat_bounds, NLAT - 1, seconds)], 1,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&m->latency_us_sum[r], (uint64_t)(seconds * 1e6),
                              memory_order_relaxed);
}

void api_metrics_job(struct api_metrics *m, const char *kind, const char *state, double seconds)
{
    if (!m)
        return;
    size_t k = strcmp(kind, "jbr") == 0, s = 1;
    for (size_t i = 0; i < 4; i++)
        if (strcmp(job_states[i], state) == 0)
            s = i;
    atomic_fetch_add_explicit(&m->jobs[k][s], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->job_duration[k][bucket(job_bounds, NJOB - 1, seconds)], 1,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&m->job_duration_ms_sum[k], (uint64_t)(seconds * 1e3),
                              memory_order_relaxed);
}

void api_metrics_blob_bytes(struct api_metrics *m, uint64_t bytes)
{
    if (m)
        atomic_fetch_add_explicit(&m->blob_bytes_in, bytes, memory_order_relaxed);
}

void api_metrics_workers(struct api_metrics *m, int alive, int total)
{
    if (!m)
        return;
    atomic_store(&m->workers_alive, alive);
    atomic_store(&m->workers_total, total);
}

static void route_label(int r, char *out, size_t cap)
{
    if (r == MAX_ROUTES || (size_t)r >= api_route_count())
        snprintf(out, cap, "method=\"\",route=\"unmatched\"");
    else
        snprintf(out, cap, "method=\"%s\",route=\"%s\"", api_route_method((size_t)r),
                 api_route_pattern((size_t)r));
}

static void render(FILE *fp, struct api_metrics *m, const struct store_stats *st, bool have_stats)
{
    char label[160];
    fprintf(fp, "# HELP tpvd_http_requests_total HTTP requests by route and status.\n"
                "# TYPE tpvd_http_requests_total counter\n");
    for (int r = 0; r <= MAX_ROUTES; r++) {
        for (size_t s = 0; s < NSTATUS; s++) {
            uint64_t v = atomic_load_explicit(&m->requests[r][s], memory_order_relaxed);
            if (!v)
                continue;
            route_label(r, label, sizeof label);
            if (s + 1 < NSTATUS)
                fprintf(fp, "tpvd_http_requests_total{%s,status=\"%d\"} %llu\n", label,
                        statuses[s], (unsigned long long)v);
            else
                fprintf(fp, "tpvd_http_requests_total{%s,status=\"other\"} %llu\n", label,
                        (unsigned long long)v);
        }
    }
    fprintf(fp, "# HELP tpvd_http_request_duration_seconds Time from request arrival to reply.\n"
                "# TYPE tpvd_http_request_duration_seconds histogram\n");
    for (int r = 0; r <= MAX_ROUTES; r++) {
        uint64_t count = 0;
        for (size_t b = 0; b < NLAT; b++)
            count += atomic_load_explicit(&m->latency[r][b], memory_order_relaxed);
        if (!count)
            continue;
        route_label(r, label, sizeof label);
        uint64_t cum = 0;
        for (size_t b = 0; b < NLAT; b++) {
            cum += atomic_load_explicit(&m->latency[r][b], memory_order_relaxed);
            if (b + 1 < NLAT)
                fprintf(fp, "tpvd_http_request_duration_seconds_bucket{%s,le=\"%g\"} %llu\n",
                        label, lat_bounds[b], (unsigned long long)cum);
            else
                fprintf(fp, "tpvd_http_request_duration_seconds_bucket{%s,le=\"+Inf\"} %llu\n",
                        label, (unsigned long long)cum);
        }
        fprintf(fp, "tpvd_http_request_duration_seconds_sum{%s} %.6f\n", label,
                (double)atomic_load(&m->latency_us_sum[r]) / 1e6);
        fprintf(fp, "tpvd_http_request_duration_seconds_count{%s} %llu\n", label,
                (unsigned long long)cum);
    }
    fprintf(fp, "# HELP tpvd_jobs_finished_total Jobs finished by this process, by kind and outcome.\n"
                "# TYPE tpvd_jobs_finished_total counter\n");
    for (size_t k = 0; k < 2; k++)
        for (size_t s = 0; s < 4; s++)
            fprintf(fp, "tpvd_jobs_finished_total{kind=\"%s\",state=\"%s\"} %llu\n", job_kinds[k],
                    job_states[s], (unsigned long long)atomic_load(&m->jobs[k][s]));
    fprintf(fp, "# HELP tpvd_job_duration_seconds Wall time of finished jobs.\n"
                "# TYPE tpvd_job_duration_seconds histogram\n");
    for (size_t k = 0; k < 2; k++) {
        uint64_t cum = 0;
        for (size_t b = 0; b < NJOB; b++) {
            cum += atomic_load(&m->job_duration[k][b]);
            if (b + 1 < NJOB)
                fprintf(fp, "tpvd_job_duration_seconds_bucket{kind=\"%s\",le=\"%g\"} %llu\n",
                        job_kinds[k], job_bounds[b], (unsigned long long)cum);
            else
                fprintf(fp, "tpvd_job_duration_seconds_bucket{kind=\"%s\",le=\"+Inf\"} %llu\n",
                        job_kinds[k], (unsigned long long)cum);
        }
        fprintf(fp, "tpvd_job_duration_seconds_sum{kind=\"%s\"} %.3f\n", job_kinds[k],
                (double)atomic_load(&m->job_duration_ms_sum[k]) / 1e3);
        fprintf(fp, "tpvd_job_duration_seconds_count{kind=\"%s\"} %llu\n", job_kinds[k],
                (unsigned long long)cum);
    }
    fprintf(fp, "# HELP tpvd_blob_upload_bytes_total Bytes of new blobs received.\n"
                "# TYPE tpvd_blob_upload_bytes_total counter\n"
                "tpvd_blob_upload_bytes_total %llu\n",
            (unsigned long long)atomic_load(&m->blob_bytes_in));
    fprintf(fp, "# HELP tpvd_workers Worker threads alive and configured.\n"
                "# TYPE tpvd_workers gauge\n"
                "tpvd_workers{state=\"alive\"} %d\ntpvd_workers{state=\"configured\"} %d\n",
            atomic_load(&m->workers_alive), atomic_load(&m->workers_total));
    if (!have_stats)
        return;
    fprintf(fp, "# HELP tpvd_jobs Jobs in the database by state.\n# TYPE tpvd_jobs gauge\n"
                "tpvd_jobs{state=\"queued\"} %lld\ntpvd_jobs{state=\"running\"} %lld\n"
                "tpvd_jobs{state=\"succeeded\"} %lld\ntpvd_jobs{state=\"failed\"} %lld\n"
                "tpvd_jobs{state=\"canceled\"} %lld\n",
            (long long)st->jobs_queued, (long long)st->jobs_running, (long long)st->jobs_succeeded,
            (long long)st->jobs_failed, (long long)st->jobs_canceled);
    fprintf(fp, "# HELP tpvd_queue_depth Jobs waiting for a worker.\n# TYPE tpvd_queue_depth gauge\n"
                "tpvd_queue_depth %lld\n", (long long)st->jobs_queued);
    fprintf(fp, "# HELP tpvd_blob_bytes Bytes held by the blob store.\n# TYPE tpvd_blob_bytes gauge\n"
                "tpvd_blob_bytes %lld\n"
                "# HELP tpvd_blobs Blobs held by the blob store.\n# TYPE tpvd_blobs gauge\n"
                "tpvd_blobs %lld\n", (long long)st->blob_bytes, (long long)st->blobs);
    fprintf(fp, "# HELP tpvd_studies Studies.\n# TYPE tpvd_studies gauge\ntpvd_studies %lld\n"
                "# HELP tpvd_candidates Candidates.\n# TYPE tpvd_candidates gauge\n"
                "tpvd_candidates %lld\n", (long long)st->studies, (long long)st->candidates);
}

void api_handle_metrics(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct store_stats stats;
    struct tpv_err err;
    struct api_metrics empty;
    char *text = NULL;
    size_t len = 0;
    tpv_err_clear(&err);
    bool have = env->store && store_stats(env->store, &stats, &err) == TPV_OK;
    FILE *fp = open_memstream(&text, &len);
    if (!fp) {
        api_reply_errorf(resp, TPV_ENOMEM, NULL, "out of memory");
        return;
    }
    if (!env->metrics)
        memset(&empty, 0, sizeof empty);
    render(fp, env->metrics ? env->metrics : &empty, &stats, have);
    int64_t pending, delivered, failed;
    if (env->store && store_outbox_stats(env->store, &pending, &delivered, &failed, &err) == TPV_OK)
        fprintf(fp, "# HELP tpvd_webhook_events Webhook events in the outbox by state.\n"
                    "# TYPE tpvd_webhook_events gauge\n"
                    "tpvd_webhook_events{state=\"pending\"} %lld\n"
                    "tpvd_webhook_events{state=\"delivered\"} %lld\n"
                    "tpvd_webhook_events{state=\"failed\"} %lld\n",
                (long long)pending, (long long)delivered, (long long)failed);
    if (fclose(fp) != 0 || !text) {
        free(text);
        api_reply_errorf(resp, TPV_ENOMEM, NULL, "out of memory");
        return;
    }
    (void)req;
    free(resp->body);
    resp->status = 200;
    resp->body = text;
    resp->body_len = len;
    resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
}
