/* ranking.c: GET /v1/studies/{sid}/ranking (DESIGN.md sections 3 "Model selection" and 5):
 * candidates ascending by TPV under one noise model and split, max_train_loss exclusion with the
 * underfit flag, trajectories of runs (the epoch of maximal TPV), and cheap polling: the ETag comes
 * from the study version, If-None-Match gives 304, and wait= holds the request (without a thread)
 * until the version moves. */
#include "api/handlers.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/confidence.h"
#include "core/noise.h"
#include "storage/store.h"

struct rank_query {
    const char *by;
    const char *split;
    bool has_max;          /* max_train_loss given, a number or "auto" */
    bool max_auto;         /* "auto": max_train_loss is set from the rows (auto_threshold) */
    bool max_known;        /* auto found a candidate with train_loss (else nothing is excluded) */
    double max_train_loss;
    int wait;
};

/* The ETag names the version and the query, so that each representation has its own. */
static void make_etag(const char *sid, int64_t version, const struct rank_query *q, char *out,
                      size_t cap)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a of the query */
    char text[256];
    /* auto's threshold follows from the candidates, so from the version: "auto" names it. */
    if (q->max_auto)
        snprintf(text, sizeof text, "%s|%s|%s|auto", sid, q->by, q->split);
    else
        snprintf(text, sizeof text, "%s|%s|%s|%d|%.17g", sid, q->by, q->split, q->has_max,
                 q->has_max ? q->max_train_loss : 0.0);
    for (const char *p = text; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    snprintf(out, cap, "\"v%lld-%08llx\"", (long long)version, (unsigned long long)(h >> 32));
}

static bool etag_matches(const char *header, const char *etag)
{
    if (!header)
        return false;
    if (strcmp(header, "*") == 0)
        return true;
    /* A list of tags, possibly weak ("W/"): ours matches if it appears as one of them. */
    size_t n = strlen(etag);
    for (const char *p = strstr(header, etag); p; p = strstr(p + 1, etag)) {
        char after = p[n];
        if (after == '\0' || after == ',' || after == ' ')
            return true;
    }
    return false;
}

/* Whether If-None-Match names this version in either representation (identity or gzip, whose
 * tags differ: see api_etag_for_gzip); the tag that matched goes to *matched for the 304. */
static bool version_matches(const char *header, const char *identity_etag,
                            char matched[API_ETAG_MAX])
{
    char gz[API_ETAG_MAX];
    memcpy(gz, identity_etag, API_ETAG_MAX);
    api_etag_for_gzip(gz, sizeof gz);
    const char *tag = etag_matches(header, identity_etag) ? identity_etag
                      : etag_matches(header, gz)          ? gz
                                                          : NULL;
    if (tag)
        memcpy(matched, tag, API_ETAG_MAX);
    return tag != NULL;
}

static bool parse_query(const struct api_env *env, const struct api_request *req,
                        const struct store_study_info *info, struct rank_query *q,
                        struct api_response *resp)
{
    const char *by = api_query(req, "by"), *split = api_query(req, "split");
    const char *max = api_query(req, "max_train_loss"), *wait = api_query(req, "wait");
    memset(q, 0, sizeof *q);
    q->by = by && by[0] ? by : info->rank_by;
    /* by must name one of the study's noise models (parsed as the job module parses them). */
    struct tpv_noise *models = NULL;
    size_t nmodels = 0;
    struct tpv_err err;
    if (tpv_noise_list_load(info->noise_models, &models, &nmodels, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err); /* stored models always parse */
        return false;
    }
    bool found = tpv_noise_find(models, nmodels, q->by) != NULL;
    free(models);
    if (!found) {
        api_reply_errorf(resp, TPV_EINVAL, "by", "by: '%.64s' is not a noise model of this study",
                         q->by);
        return false;
    }
    bool has_probe = info->probe_digest[0] || info->has_probe_dumps;
    if (!split || !split[0]) {
        q->split = has_probe ? "probe" : "fit";
    } else if (strcmp(split, "fit") == 0 || strcmp(split, "probe") == 0) {
        q->split = split[0] == 'f' ? "fit" : "probe";
        if (q->split[0] == 'p' && !has_probe) {
            api_reply_errorf(resp, TPV_EPRECONDITION, "split",
                             "the study has no probe set: PUT /v1/studies/{sid}/inputs/probe "
                             "first, or rank with split=fit");
            return false;
        }
    } else {
        api_reply_errorf(resp, TPV_EINVAL, "split", "split must be 'probe' or 'fit'");
        return false;
    }
    if (max && strcmp(max, "auto") == 0) {
        q->has_max = q->max_auto = true;
    } else if (max) {
        char *end;
        errno = 0;
        q->max_train_loss = strtod(max, &end);
        if (errno || end == max || *end || !isfinite(q->max_train_loss)) {
            api_reply_errorf(resp, TPV_EINVAL, "max_train_loss",
                             "max_train_loss must be a number or 'auto'");
            return false;
        }
        q->has_max = true;
    }
    if (wait && !api_wait_param(env, req, &q->wait, resp))
        return false;
    return true;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* max_train_loss=auto: the median train_loss of the study's candidates that report one (scored
 * or not, so that every noise model and split of the study gets the same threshold); candidates
 * above it are set aside as underfit.  Why the median (bench/RESULTS.md, "max_train_loss=auto"):
 * TPV tracks test loss among the candidates that fit their training data, and the benchmark's
 * low-train-loss half is where the recommended scores were measured; the median is free of the
 * loss's scale, keeps at least half of the candidates, and is not dragged to zero by interpolating
 * networks (a factor of the best train loss is: the best is often 1e-29).  Sets q->max_known and
 * q->max_train_loss; *count gets the number of train losses it used.  False when out of memory. */
static bool auto_threshold(const struct store_rank_row *rows, size_t n, struct rank_query *q,
                           size_t *count)
{
    double *tl = calloc(n ? n : 1, sizeof *tl); /* calloc checks n * size */
    size_t m = 0;
    if (!tl)
        return false;
    for (size_t i = 0; i < n; i++)
        if (rows[i].has_train_loss)
            tl[m++] = rows[i].train_loss;
    *count = m;
    q->max_known = m > 0;
    if (m) {
        qsort(tl, m, sizeof *tl, cmp_double);
        /* The mean of the two middle values when m is even (numpy's median, as the benchmark). */
        q->max_train_loss = m % 2 ? tl[m / 2] : tl[m / 2 - 1] / 2 + tl[m / 2] / 2;
    }
    free(tl);
    return true;
}

/* Order for trajectories: by run, then epoch. */
static int cmp_run_epoch(const void *a, const void *b, void *ctx)
{
    const struct store_rank_row *rows = ctx;
    const struct store_rank_row *x = &rows[*(const size_t *)a], *y = &rows[*(const size_t *)b];
    int c = strcmp(x->run, y->run);
    if (c)
        return c;
    return (x->epoch > y->epoch) - (x->epoch < y->epoch);
}

/* Trajectories: candidates sharing metadata.run with an epoch and a score.  The epoch of maximal
 * TPV splits underfitting (before) from the double-descent phase (DESIGN.md section 3).  Flags
 * go into flags[row] (arrays owned by the caller). */
static json_t *trajectories(const struct store_rank_row *rows, size_t n, json_t **flags)
{
    json_t *out = json_array();
    size_t *idx = malloc((n ? n : 1) * sizeof *idx), m = 0;
    if (!out || !idx) {
        free(idx);
        return out;
    }
    for (size_t i = 0; i < n; i++)
        if (rows[i].run && rows[i].has_epoch && rows[i].has_value)
            idx[m++] = i;
    qsort_r(idx, m, sizeof *idx, cmp_run_epoch, (void *)rows);
    for (size_t a = 0; a < m;) {
        size_t b = a + 1;
        while (b < m && strcmp(rows[idx[b]].run, rows[idx[a]].run) == 0)
            b++;
        if (b - a >= 2) {
            size_t peak = idx[a];
            for (size_t k = a; k < b; k++)
                if (rows[idx[k]].value > rows[peak].value)
                    peak = idx[k];
            for (size_t k = a; k < b; k++) {
                size_t r = idx[k];
                if (r == peak)
                    json_array_append_new(flags[r], json_string("tpv_peak"));
                else if (rows[r].epoch < rows[peak].epoch)
                    json_array_append_new(flags[r], json_string("before_tpv_peak"));
            }
            /* A summary: each point is an item already, flagged before/at the peak. */
            json_array_append_new(out, json_pack("{s:s,s:I,s:f,s:f,s:f,s:s,s:f}", "run",
                                                 rows[peak].run, "points", (json_int_t)(b - a),
                                                 "first_epoch", rows[idx[a]].epoch,
                                                 "last_epoch", rows[idx[b - 1]].epoch,
                                                 "peak_epoch", rows[peak].epoch,
                                                 "peak_candidate_id", rows[peak].id,
                                                 "peak_value", rows[peak].value));
        }
        a = b;
    }
    free(idx);
    return out;
}

static json_t *metadata_json(const char *text)
{
    json_t *j = text ? json_loads(text, 0, NULL) : NULL;
    return j ? j : json_object();
}

/* The body's max_train_loss and max_train_loss_rule (absent without max_train_loss). */
static void set_threshold(json_t *body, const struct rank_query *q, size_t count)
{
    char rule[160];
    if (!q->has_max)
        return;
    if (!q->max_auto) {
        json_object_set_new(body, "max_train_loss", json_real(q->max_train_loss));
        json_object_set_new(body, "max_train_loss_rule", json_string("given"));
        return;
    }
    if (q->max_known)
        snprintf(rule, sizeof rule, "auto: median train_loss of the %zu candidates that report "
                 "one", count);
    else
        snprintf(rule, sizeof rule, "auto: no candidate reports train_loss, none excluded");
    json_object_set_new(body, "max_train_loss",
                        q->max_known ? json_real(q->max_train_loss) : json_null());
    json_object_set_new(body, "max_train_loss_rule", json_string(rule));
}

static json_t *real_or_null(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

/* p_lower_than_next of each ranked item against the next one: paired per-input differences
 * when both have contributions over the same number of inputs (model candidates of a study are
 * scored on the study's input sets; dumps pair by row), null otherwise and on the last item.
 * ranked[k] is the row of item k; contribs is aligned with rows (NULL: none loaded). */
static void set_p_lower(json_t *items, const size_t *ranked, size_t nranked,
                        const struct store_contrib *contribs)
{
    for (size_t k = 0; k < nranked; k++) {
        double p = NAN;
        if (contribs && k + 1 < nranked) {
            const struct store_contrib *a = &contribs[ranked[k]], *b = &contribs[ranked[k + 1]];
            if (a->values && b->values && a->n == b->n)
                p = tpv_p_lower(a->values, b->values, a->n);
        }
        json_object_set_new(json_array_get(items, k), "p_lower_than_next", real_or_null(p));
    }
}

static json_t *build_ranking(const char *sid, int64_t version, struct rank_query *q,
                             const struct store_rank_row *rows, size_t n,
                             const struct store_contrib *contribs)
{
    size_t count = 0;
    if (q->max_auto && !auto_threshold(rows, n, q, &count))
        return NULL;
    json_t **flags = calloc(n ? n : 1, sizeof *flags);
    size_t *ranked = malloc((n ? n : 1) * sizeof *ranked), nranked = 0;
    json_t *items = json_array(), *excluded = json_array(), *pending = json_array();
    if (!flags || !ranked) {
        free(flags);
        free(ranked);
        json_decref(items);
        json_decref(excluded);
        json_decref(pending);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        flags[i] = json_array();
    json_t *traj = trajectories(rows, n, flags);
    int rank = 0;
    for (size_t i = 0; i < n; i++) {
        const struct store_rank_row *r = &rows[i];
        if (!r->has_value) {
            json_array_append_new(pending, json_pack("{s:s,s:s,s:s}", "candidate_id", r->id,
                                                     "name", r->name, "state", r->state));
            continue;
        }
        if (q->has_max && !r->has_train_loss)
            json_array_append_new(flags[i], json_string("no_train_loss"));
        bool limited = q->has_max && (!q->max_auto || q->max_known);
        bool out = limited && r->has_train_loss && r->train_loss > q->max_train_loss;
        if (out)
            json_array_insert_new(flags[i], 0, json_string("underfit"));
        if (r->nonlinear) /* the empirical check: first_order / empirical left [0.8, 1.25] */
            json_array_append_new(flags[i], json_string("nonlinear"));
        json_t *item = json_pack("{s:s,s:s,s:f,s:f,s:o,s:O}", "candidate_id", r->id, "name",
                                 r->name, "value", r->value, "stderr", r->stderr_value,
                                 "metadata", metadata_json(r->metadata), "flags", flags[i]);
        json_object_set_new(item, "stderr_inputs",
                            r->has_stderr_inputs ? real_or_null(r->stderr_inputs) : json_null());
        if (out) {
            json_object_set_new(item, "train_loss", json_real(r->train_loss));
            json_array_append_new(excluded, item);
        } else {
            json_object_set_new(item, "rank", json_integer(++rank));
            json_array_append_new(items, item);
            ranked[nranked++] = i;
        }
    }
    set_p_lower(items, ranked, nranked, contribs);
    free(ranked);
    for (size_t i = 0; i < n; i++)
        json_decref(flags[i]);
    free(flags);
    json_t *body = json_pack("{s:s,s:s,s:s,s:I,s:o,s:o,s:o,s:o}", "study_id", sid, "by", q->by,
                             "split", q->split, "version", (json_int_t)version, "items", items,
                             "excluded", excluded, "pending", pending, "trajectories", traj);
    if (body)
        set_threshold(body, q, count);
    return body;
}

/* 304, or a hold when the client asked to wait for a change. */
static void reply_not_modified(const struct api_request *req, struct api_response *resp,
                               const char *sid, int wait, const char *etag)
{
    if (wait > 0 && !req->hold_expired) {
        resp->hold_seconds = wait;
        snprintf(resp->hold_study, sizeof resp->hold_study, "%s", sid);
        return;
    }
    api_reply_empty(resp, 304);
    api_response_add_header(resp, "ETag", etag);
    api_response_add_header(resp, "Vary", "Accept-Encoding");
}

/* ---- CSV (Accept: text/csv) ---- */

/* Whether the Accept header asks for text/csv (a media range naming it, any parameters). */
static bool wants_csv(const struct api_request *req)
{
    const char *accept = api_header(req, "Accept");
    for (const char *p = accept; p && *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        size_t n = strcspn(p, ";, \t");
        if (n == 8 && strncasecmp(p, "text/csv", 8) == 0)
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

struct csv_buf {
    char *data;
    size_t len, cap;
    bool failed;
};

static void csv_put(struct csv_buf *b, const char *text, size_t n)
{
    if (b->failed)
        return;
    if (n > SIZE_MAX / 2 - b->len) {
        b->failed = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, text, n);
    b->len += n;
    b->data[b->len] = '\0';
}

/* One field, RFC 4180: quoted (quotes doubled) when it holds a comma, quote, CR or LF. */
static void csv_field(struct csv_buf *b, const char *text, bool first)
{
    if (!first)
        csv_put(b, ",", 1);
    if (!text)
        return;
    if (!strpbrk(text, ",\"\r\n")) {
        csv_put(b, text, strlen(text));
        return;
    }
    csv_put(b, "\"", 1);
    for (const char *p = text; *p; p++) {
        csv_put(b, p, 1);
        if (*p == '"')
            csv_put(b, "\"", 1); /* doubled */
    }
    csv_put(b, "\"", 1);
}

/* A JSON value as a CSV field: strings as they are, null/absent empty, anything else as its
 * compact JSON (numbers in the shortest exact spelling). */
static void csv_value(struct csv_buf *b, const json_t *v, bool first)
{
    if (!v || json_is_null(v)) {
        csv_field(b, NULL, first);
        return;
    }
    if (json_is_string(v)) {
        csv_field(b, json_string_value(v), first);
        return;
    }
    char *text = api_json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        b->failed = true;
    csv_field(b, text, first);
    free(text);
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The ranked items as CSV: the fixed columns, then every metadata key in byte order (the order
 * tpvctl uses when it writes the CSV itself, so both spell one table the same way).  Returns
 * malloc'd text (its length in *len), NULL when out of memory. */
static char *ranking_csv(const json_t *body, size_t *len)
{
    static const char *const cols[] = { "rank", "candidate_id", "name", "value", "stderr",
                                        "stderr_inputs", "p_lower_than_next", "flags" };
    const size_t ncols = sizeof cols / sizeof cols[0];
    struct csv_buf b = { 0 };
    const json_t *items = json_object_get(body, "items"), *item;
    json_t *keys = json_object(); /* key -> true, insertion order kept by jansson */
    size_t i;
    const char *k;
    json_t *v;
    if (!keys)
        return NULL;
    json_array_foreach(items, i, item) {
        json_object_foreach(json_object_get(item, "metadata"), k, v)
            if (!json_object_get(keys, k))
                json_object_set_new(keys, k, json_true());
    }
    size_t nkeys = json_object_size(keys), nk = 0;
    const char **sorted = malloc((nkeys ? nkeys : 1) * sizeof *sorted);
    if (!sorted) {
        json_decref(keys);
        return NULL;
    }
    json_object_foreach(keys, k, v)
        sorted[nk++] = k;
    qsort(sorted, nk, sizeof *sorted, cmp_key);
    for (size_t c = 0; c < ncols; c++)
        csv_field(&b, cols[c], c == 0);
    for (size_t j = 0; j < nk; j++)
        csv_field(&b, sorted[j], false);
    csv_put(&b, "\r\n", 2);
    json_array_foreach(items, i, item) {
        for (size_t c = 0; c < ncols; c++) {
            const json_t *f = json_object_get(item, cols[c]);
            if (strcmp(cols[c], "flags") == 0) {
                struct csv_buf joined = { 0 };
                size_t j;
                const json_t *flag;
                csv_put(&joined, "", 0);
                json_array_foreach(f, j, flag) {
                    if (j)
                        csv_put(&joined, ";", 1);
                    csv_put(&joined, json_string_value(flag) ? json_string_value(flag) : "",
                            json_string_value(flag) ? strlen(json_string_value(flag)) : 0);
                }
                b.failed |= joined.failed;
                csv_field(&b, joined.data ? joined.data : "", false);
                free(joined.data);
            } else {
                csv_value(&b, f, c == 0);
            }
        }
        const json_t *meta = json_object_get(item, "metadata");
        for (size_t j = 0; j < nk; j++)
            csv_value(&b, json_object_get(meta, sorted[j]), false);
        csv_put(&b, "\r\n", 2);
    }
    free(sorted);
    json_decref(keys);
    if (b.failed) {
        free(b.data);
        return NULL;
    }
    *len = b.len;
    return b.data;
}

/* A 200 with the representation chosen: identity JSON/CSV, or its gzip coding. */
static void reply_body(struct api_response *resp, char *body, size_t len, const char *etag,
                       bool csv, bool gzip)
{
    free(resp->body);
    resp->status = 200;
    resp->body = body;
    resp->body_len = len;
    resp->content_type = csv ? "text/csv; charset=utf-8; header=present" : "application/json";
    api_response_add_header(resp, "ETag", etag);
    api_response_add_header(resp, "Cache-Control", "no-cache");
    api_response_add_header(resp, "Vary", "Accept-Encoding");
    if (gzip)
        api_response_add_header(resp, "Content-Encoding", "gzip");
}

static void reply_cached(struct api_response *resp, struct api_cached *hit, bool csv)
{
    reply_body(resp, hit->body, hit->len, hit->etag, csv, hit->gzip);
    hit->body = NULL; /* owned by the response now */
}

/* The contributions of every row (one query), aligned with rows. */
static int load_contributions(const struct api_env *env, const char *sid,
                              const struct rank_query *q, const struct store_rank_row *rows,
                              size_t n, struct store_contrib **out, struct tpv_err *err)
{
    *out = NULL;
    const char **ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    for (size_t i = 0; i < n; i++)
        ids[i] = rows[i].id;
    int rc = store_rank_contributions(env->store, sid, q->by, q->split, ids, n, out, err);
    free(ids);
    return rc;
}

void api_handle_ranking(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    struct tpv_err err;
    struct store_study_info info = { 0 };
    struct rank_query q;
    struct store_rank_row *rows = NULL;
    struct store_contrib *contribs = NULL;
    size_t nrows = 0, len = 0;
    char etag[API_ETAG_MAX], key[512];
    char *text = NULL;
    const char *sid = req->params[0];
    const char *inm = api_header(req, "If-None-Match");
    int64_t version;
    int wait;
    tpv_err_clear(&err);
    if (!api_study_param(req, resp) || !api_wait_param(env, req, &wait, resp))
        return;
    /* Fast path: the rendering of this exact query at the current version. */
    const char *by = api_query(req, "by"), *split = api_query(req, "split");
    const char *mtl = api_query(req, "max_train_loss");
    bool csv = wants_csv(req), gzip = api_accepts_gzip(req);
    struct api_cached hit = { 0 };
    int klen = snprintf(key, sizeof key, "%s\x1f%s\x1f%s\x1f%s%s", sid, by ? by : "",
                        split ? split : "", mtl ? mtl : "", csv ? "\x1f" "csv" : "");
    bool cacheable = env->cache && klen > 0 && (size_t)klen < sizeof key;
    if (cacheable) {
        if (store_study_version(env->store, sid, &version, &err) != TPV_OK) {
            api_reply_store_error(req, resp, &err);
            return;
        }
        bool match = false;
        if (api_cache_get(env->cache, key, version, false, false, &hit) &&
            (match = version_matches(inm, hit.etag, etag))) {
            reply_not_modified(req, resp, sid, wait, etag);
            return;
        }
        if (!match && api_cache_get(env->cache, key, version, gzip, true, &hit)) {
            reply_cached(resp, &hit, csv);
            return;
        }
    }
    if (store_study_info(env->store, sid, &info, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        return;
    }
    if (!parse_query(env, req, &info, &q, resp))
        goto out;
    make_etag(sid, info.version, &q, etag, sizeof etag);
    if (csv)
        api_etag_variant(etag, sizeof etag, 'c');
    char matched[API_ETAG_MAX];
    if (version_matches(inm, etag, matched)) {
        reply_not_modified(req, resp, sid, q.wait, matched);
        goto out;
    }
    if (store_rank_rows(env->store, sid, q.by, q.split, &rows, &nrows, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        goto out;
    }
    if (load_contributions(env, sid, &q, rows, nrows, &contribs, &err) != TPV_OK) {
        api_reply_store_error(req, resp, &err);
        goto out;
    }
    json_t *body = build_ranking(sid, info.version, &q, rows, nrows, contribs);
    if (csv)
        text = body ? ranking_csv(body, &len) : NULL;
    else if ((text = body ? api_json_dumps(body, JSON_COMPACT) : NULL))
        len = strlen(text);
    json_decref(body);
    if (!text) {
        api_reply_errorf(resp, TPV_ENOMEM, NULL, "out of memory");
        goto out;
    }
    if (cacheable)
        api_cache_put(env->cache, key, info.version, etag, text, len);
    /* A gzip client takes the coding the cache makes and keeps for the next ones; a body the
     * cache did not keep (too large, evicted already) goes out as it is. */
    if (cacheable && gzip && len >= API_GZIP_MIN &&
        api_cache_get(env->cache, key, info.version, true, true, &hit) && hit.gzip) {
        free(text);
        reply_cached(resp, &hit, csv);
        goto out;
    }
    free(hit.body);
    reply_body(resp, text, len, etag, csv, false);
out:
    store_contribs_free(contribs, nrows);
    store_rank_rows_free(rows, nrows);
    store_study_info_free(&info);
}
