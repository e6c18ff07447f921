/* agreement.c: a candidate's metrics (PUT .../candidates/{cid}/metrics) and the agreement report
 * (GET .../agreement?metric=m): how the ranking of each noise model and split agrees with a
 * validation metric the user has on some candidates (DESIGN.md section 5, "Agreement"; the
 * statistics are core/rank_stats.h). */
#include "api/handlers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/noise.h"
#include "core/rank_stats.h"
#include "core/tpv_log.h"
#include "api/render.h"
#include "storage/metrics.h"
#include "storage/store.h"

/* The bootstrap of every item: 95 % percentile interval, a fixed seed so that the same data
 * always gives the same interval, and the same index draws for every item of one report (paired
 * intervals over the same candidates).  Resamples are fewer only for very large reports (see
 * item_resamples). */
#define AGREE_LEVEL 0.95
#define AGREE_RESAMPLES 2000
#define AGREE_MIN_RESAMPLES 200
#define AGREE_SEED UINT64_C(0x61677265656d6e74) /* "agreemnt" */
#define AGREE_MIN_CI_N 4 /* below, an interval of a rank correlation says nothing */
/* Pairs resampled per report at most (resamples x n summed over items): measured 0.2 s for
 * 2000 x 1000 on a loaded development core, so a report stays under about a second; the usual
 * study (tens of candidates, a few noise models) is far below and gets the full 2000. */
#define AGREE_WORK_BUDGET 1e7

/* {sid} and {cid} are well-formed, else a 404 was sent. */
static bool candidate_params(const struct api_request *req, struct api_response *resp)
{
    if (!api_study_param(req, resp))
        return false;
    if (api_id_valid(req->params[1]))
        return true;
    api_reply_errorf(resp, TPV_ENOTFOUND, "candidate_id", "candidate %.64s not found",
                     req->params[1]);
    return false;
}

/* 1..STORE_METRIC_NAME_MAX bytes of printable ASCII. */
static bool metric_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > STORE_METRIC_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || (unsigned char)name[i] > 0x7e)
            return false;
    return true;
}

/* The body of PUT .../metrics: at most STORE_METRICS_MAX keys, each a valid name whose value is
 * a number (JSON has no NaN or infinity, and jansson refuses reals that overflow) or null.
 * Replies 400 naming the key and returns false. */
static bool metrics_body_valid(const json_t *body, struct api_response *resp)
{
    const char *key;
    json_t *v;
    if (json_object_size(body) > STORE_METRICS_MAX) {
        api_reply_errorf(resp, TPV_EINVAL, "metrics", "at most %d metrics per candidate, got %zu",
                         STORE_METRICS_MAX, json_object_size(body));
        return false;
    }
    json_object_foreach((json_t *)body, key, v) {
        if (!metric_name_valid(key)) {
            api_reply_errorf(resp, TPV_EINVAL, key[0] && strlen(key) < 100 ? key : "metrics",
                             "a metric name is 1 to %d bytes of printable ASCII, not '%.64s'",
                             STORE_METRIC_NAME_MAX, key);
            return false;
        }
        if (!json_is_number(v) && !json_is_null(v)) {
            api_reply_errorf(resp, TPV_EINVAL, key,
                             "metric '%s' must be a finite number (or null to remove it)", key);
            return false;
        }
        if (json_is_real(v) && !isfinite(json_real_value(v))) {
            api_reply_errorf(resp, TPV_EINVAL, key, "metric '%s' must be a finite number", key);
            return false;
        }
    }
    return true;
}

/* PUT is idempotent by itself (the same body merges to the same metrics, and the second time
 * changes nothing), so no Idempotency-Key is needed, as for PUT .../inputs. */
void api_handle_metrics_put(const struct api_env *env, struct api_request *req,
                            struct api_response *resp)
{
    struct tpv_err err;
    json_t *body = NULL;
    struct store_candidate cand = { 0 };
    char *patch = NULL;
    int64_t version;
    tpv_err_clear(&err);
    if (!candidate_params(req, resp))
        return;
    if (!api_body_object(req, resp, &body) || !metrics_body_valid(body, resp))
        goto out;
    /* Shortest round-trip spelling: what is stored is what GET shows. */
    if (!(patch = api_json_dumps(body, JSON_COMPACT))) {
        api_reply_errorf(resp, TPV_ENOMEM, NULL, "out of memory");
        goto out;
    }
    if (store_metrics_merge(env->store, req->params[0], req->params[1], patch, &version, &err) !=
            TPV_OK ||
        store_candidate_get(env->store, req->params[0], req->params[1], &cand, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        goto out;
    }
    log_info("rid=%s candidate=%s metrics merged (%zu keys given) version=%lld",
             req->request_id, tpv_log_token(req->params[1], API_PARAM_MAX),
             json_object_size(body), (long long)version);
    api_reply_json(resp, 200, api_candidate_json(&cand));
out:
    store_candidate_free(&cand);
    free(patch);
    json_decref(body);
}

/* One item's pairs (score, metric) of the candidates that have both, finite. */
static size_t item_pairs(const struct store_agree_rows *rows, const char *noise,
                         const char *split, double *x, double *y, bool *any_score)
{
    size_t n = 0;
    *any_score = false;
    for (size_t c = 0; c < rows->ncands; c++) {
        const struct store_agree_cand *cand = &rows->cands[c];
        for (size_t k = 0; k < cand->nscores; k++) {
            const struct store_agree_score *s = &rows->scores[cand->first + k];
            if (strcmp(s->noise, noise) != 0 || strcmp(s->split, split) != 0 ||
                !isfinite(s->value))
                continue;
            *any_score = true;
            if (cand->has_metric && isfinite(cand->metric)) {
                x[n] = s->value;
                y[n] = cand->metric;
                n++;
            }
            break;
        }
    }
    return n;
}

static json_t *real_or_null(int rc, double v)
{
    return rc == TPV_OK ? json_real(v) : json_null();
}

/* Resamples for an item of n pairs in a report of `nitems` items (see AGREE_WORK_BUDGET). */
static size_t item_resamples(size_t n, size_t nitems)
{
    double r = AGREE_WORK_BUDGET / ((double)n * (double)(nitems ? nitems : 1));
    return r >= AGREE_RESAMPLES ? AGREE_RESAMPLES
         : r <= AGREE_MIN_RESAMPLES ? AGREE_MIN_RESAMPLES : (size_t)r;
}

/* Work space for every item of the report, sized once for the largest. */
struct agree_work {
    double *x, *y, *work;
    size_t *order;
};

static void agree_work_free(struct agree_work *w)
{
    free(w->x);
    free(w->y);
    free(w->work);
    free(w->order);
}

static bool agree_work_alloc(struct agree_work *w, size_t n)
{
    size_t m = n ? n : 1;
    memset(w, 0, sizeof *w);
    w->x = calloc(m, sizeof *w->x);
    w->y = calloc(m, sizeof *w->y);
    w->order = calloc(TPV_BOOT_ORDER(m), sizeof *w->order);
    /* TPV_BOOT_WORK(n, 2000) cannot overflow: n is a count of rows already in memory. */
    w->work = calloc(TPV_BOOT_WORK(m, AGREE_RESAMPLES), sizeof *w->work);
    if (w->x && w->y && w->order && w->work)
        return true;
    agree_work_free(w);
    return false;
}

/* {"noise","split","n","spearman","kendall","ci":[lo,hi]|null,"resamples"} for n pairs in w. */
static json_t *item_json(const char *noise, const char *split, size_t n, size_t nitems,
                         struct agree_work *w, double *ci_lo)
{
    double rho = NAN, tau = NAN, lo = NAN, hi = NAN;
    int rc_rho = tpv_spearman(n, w->x, w->y, w->work, w->order, &rho);
    int rc_tau = tpv_kendall_tau_b(n, w->x, w->y, &tau);
    size_t resamples = item_resamples(n, nitems);
    int rc_ci = n >= AGREE_MIN_CI_N && rc_rho == TPV_OK
                    ? tpv_spearman_bootstrap(n, w->x, w->y, resamples, AGREE_SEED, AGREE_LEVEL,
                                             w->work, w->order, &lo, &hi)
                    : TPV_EINVAL;
    *ci_lo = rc_ci == TPV_OK ? lo : NAN;
    return json_pack("{s:s,s:s,s:I,s:o,s:o,s:o,s:I}", "noise", noise, "split", split, "n",
                     (json_int_t)n, "spearman", real_or_null(rc_rho, rho), "kendall",
                     real_or_null(rc_tau, tau), "ci",
                     rc_ci == TPV_OK ? json_pack("[f,f]", lo, hi) : json_null(), "resamples",
                     (json_int_t)(rc_ci == TPV_OK ? resamples : 0));
}

/* The items in the study's noise model order, fit before probe for each, only for (noise,
 * split) pairs some candidate has a finite score for; `recommended` is the item with the
 * highest interval lower bound when that bound is above 0 (the first such on a tie).  NULL when
 * out of memory. */
static json_t *agreement_json(const char *sid, const char *metric,
                              const struct store_agree_rows *rows, const struct tpv_noise *noises,
                              size_t nnoises, size_t with_metric)
{
    static const char *const splits[] = { "fit", "probe" };
    struct agree_work w;
    if (!agree_work_alloc(&w, rows->ncands))
        return NULL;
    json_t *items = json_array(), *recommended = json_null();
    double best = 0;
    bool ok = items && recommended;
    size_t nitems = 0; /* first pass: how many items, for the bootstrap budget */
    for (size_t i = 0; ok && i < nnoises; i++)
        for (size_t s = 0; s < 2; s++) {
            bool any;
            item_pairs(rows, noises[i].name, splits[s], w.x, w.y, &any);
            nitems += any;
        }
    for (size_t i = 0; ok && i < nnoises; i++)
        for (size_t s = 0; ok && s < 2; s++) {
            bool any;
            size_t n = item_pairs(rows, noises[i].name, splits[s], w.x, w.y, &any);
            if (!any)
                continue;
            double lo;
            json_t *item = item_json(noises[i].name, splits[s], n, nitems, &w, &lo);
            ok = item && json_array_append_new(items, item) == 0;
            if (ok && isfinite(lo) && lo > best) {
                best = lo;
                json_decref(recommended);
                recommended = json_pack("{s:s,s:s}", "noise", noises[i].name, "split",
                                        splits[s]);
                ok = recommended != NULL;
            }
        }
    agree_work_free(&w);
    json_t *out = ok ? json_pack("{s:s,s:s,s:I,s:I,s:I,s:O,s:O,s:{s:f,s:I,s:I}}", "study_id",
                                 sid, "metric", metric, "version", (json_int_t)rows->version,
                                 "candidates", (json_int_t)rows->ncands,
                                 "candidates_with_metric", (json_int_t)with_metric, "items",
                                 items, "recommended", recommended, "bootstrap", "level",
                                 AGREE_LEVEL, "resamples", (json_int_t)AGREE_RESAMPLES, "seed",
                                 (json_int_t)(AGREE_SEED & INT64_MAX))
                     : NULL;
    json_decref(items);
    json_decref(recommended);
    return out;
}

/* 404 naming "metric" when no candidate has it: a typo ("val_los") must not look like a study
 * where no noise model agrees.  The message lists the metrics the study does have. */
static void reply_metric_unknown(const struct api_env *env, struct api_request *req,
                                 struct api_response *resp, const char *metric)
{
    struct tpv_err err;
    char names[512];
    tpv_err_clear(&err);
    if (store_metric_names(env->store, req->params[0], names, sizeof names, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    if (names[0])
        api_reply_errorf(resp, TPV_ENOTFOUND, "metric",
                         "no candidate of this study has metric '%s' (its candidates have: %s)",
                         metric, names);
    else
        api_reply_errorf(resp, TPV_ENOTFOUND, "metric",
                         "no candidate of this study has metric '%s' (none has metrics yet: PUT "
                         "/v1/studies/{sid}/candidates/{cid}/metrics)", metric);
}

void api_handle_agreement(const struct api_env *env, struct api_request *req,
                          struct api_response *resp)
{
    struct tpv_err err;
    struct store_agree_rows rows = { 0 };
    struct tpv_noise *noises = NULL;
    size_t nnoises = 0, with_metric = 0;
    tpv_err_clear(&err);
    if (!api_study_param(req, resp))
        return;
    const char *metric = api_query(req, "metric");
    if (!metric || !metric[0]) {
        api_reply_errorf(resp, TPV_EINVAL, "metric",
                         "the query parameter 'metric' is required (e.g. ?metric=val_loss)");
        return;
    }
    if (!metric_name_valid(metric)) {
        api_reply_errorf(resp, TPV_EINVAL, "metric",
                         "a metric name is 1 to %d bytes of printable ASCII",
                         STORE_METRIC_NAME_MAX);
        return;
    }
    if (store_agree_rows(env->store, req->params[0], metric, &rows, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    for (size_t c = 0; c < rows.ncands; c++)
        with_metric += rows.cands[c].has_metric;
    if (with_metric == 0) {
        reply_metric_unknown(env, req, resp, metric);
        goto out;
    }
    if (tpv_noise_list_load(rows.noise_models, &noises, &nnoises, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err); /* stored models always load */
        goto out;
    }
    json_t *body = agreement_json(req->params[0], metric, &rows, noises, nnoises, with_metric);
    if (!body) {
        api_reply_errorf(resp, TPV_ENOMEM, NULL, "out of memory");
        goto out;
    }
    api_reply_json(resp, 200, body);
out:
    free(noises);
    store_agree_rows_free(&rows);
}
