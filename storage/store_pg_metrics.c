/* store_pg_metrics.c: candidate metrics and the agreement report's read on the PostgreSQL
 * backend (see storage/metrics.h).  The merge is jsonb's (RFC 7396 for flat objects of numbers:
 * `||` replaces keys, jsonb_strip_nulls removes those set to null); jsonb keeps each number's
 * value but not its spelling (1.50 reads back 1.50, 1e-3 as 0.001). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/store_pg_int.h"

#define METRIC_NAMES_SHOWN 16

struct merge_ctx {
    const char *study_id, *candidate_id, *patch;
    int64_t version;
    bool changed;
};

static int merge_body(struct pg_conn *c, void *arg, struct tpv_err *err)
{
    struct merge_ctx *x = arg;
    x->version = 0;
    x->changed = false;
    const char *p[] = { x->study_id, x->candidate_id, x->patch };
    struct pg_result *r;
    int rc = pg_exec(c,
                     "SELECT m, (SELECT count(*) FROM jsonb_object_keys(m)), "
                     "m IS DISTINCT FROM coalesce(old, '{}'::jsonb) FROM ("
                     "SELECT metrics::jsonb AS old, jsonb_strip_nulls(coalesce(metrics::jsonb, "
                     "'{}'::jsonb) || $3::jsonb) AS m FROM candidates "
                     "WHERE study_id = $1 AND id = $2 FOR UPDATE) t",
                     3, p, &r, err);
    if (rc == TPV_EINVAL || (rc != TPV_OK && strcmp(pg_conn_sqlstate(c), "22P02") == 0))
        return tpv_err_set(err, TPV_EINVAL, "metrics", "metrics must be a JSON object");
    if (rc != TPV_OK)
        return rc;
    if (pg_result_rows(r) == 0) {
        pg_result_free(r);
        return tpv_err_set(err, TPV_ENOTFOUND, "candidate_id", "candidate %s not found in study %s",
                           x->candidate_id, x->study_id);
    }
    int64_t nkeys = pg_result_int64(r, 0, 1);
    x->changed = strcmp(pg_result_text(r, 0, 2), "t") == 0;
    char *merged = pg_result_strdup(r, 0, 0);
    pg_result_free(r);
    if (!merged)
        return pgs_oom(err);
    if (nkeys > STORE_METRICS_MAX)
        rc = tpv_err_set(err, TPV_EINVAL, "metrics",
                         "a candidate holds at most %d metrics; this would make %lld (remove "
                         "some with null)", STORE_METRICS_MAX, (long long)nkeys);
    if (rc == TPV_OK && x->changed) {
        const char *q[] = { x->candidate_id, nkeys > 0 ? merged : NULL };
        rc = pg_exec(c, "UPDATE candidates SET metrics = $2 WHERE id = $1", 2, q, NULL, err);
    }
    free(merged);
    /* A change shows in the candidate list, so it moves the ETag; a retry that changes nothing
     * does not. */
    if (rc == TPV_OK && x->changed)
        return pgs_bump(c, x->study_id, &x->version, err);
    if (rc != TPV_OK)
        return rc;
    const char *v[] = { x->study_id };
    if ((rc = pg_exec(c, "SELECT version FROM studies WHERE id = $1", 1, v, &r, err)) != TPV_OK)
        return rc;
    x->version = pg_result_rows(r) ? pg_result_int64(r, 0, 0) : 0;
    pg_result_free(r);
    return TPV_OK;
}

int pgs_metrics_merge(void *impl, const char *study_id, const char *candidate_id,
                      const char *patch, int64_t *version, struct tpv_err *err)
{
    struct pgs *s = impl;
    struct merge_ctx x = { study_id, candidate_id, patch, 0, false };
    *version = 0;
    int rc = pg_tx_run(s->pool, PG_READ_COMMITTED, merge_body, &x, err);
    if (rc != TPV_OK)
        return rc;
    *version = x.version;
    if (x.changed)
        pgs_changed(s, study_id, x.version);
    return TPV_OK;
}

int pgs_metric_names(void *impl, const char *study_id, char *names, size_t cap,
                     struct tpv_err *err)
{
    if (cap == 0)
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "no room for metric names");
    names[0] = '\0';
    char lim[PGS_NUM_MAX];
    pgs_fmt_int(lim, METRIC_NAMES_SHOWN + 1);
    const char *p[] = { study_id, lim };
    struct pg_result *r;
    int rc = pgs_read(impl,
                      "SELECT DISTINCT k COLLATE \"C\" FROM candidates c, "
                      "jsonb_object_keys(c.metrics::jsonb) k "
                      "WHERE c.study_id = $1 AND c.metrics IS NOT NULL ORDER BY 1 LIMIT $2::int",
                      2, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    size_t used = 0;
    for (int i = 0; i < pg_result_rows(r); i++) {
        int n = snprintf(names + used, cap - used, "%s%s", used ? ", " : "",
                         i < METRIC_NAMES_SHOWN ? pg_result_text(r, i, 0) : "...");
        if (n < 0 || (size_t)n >= cap - used) { /* cut: whole names only */
            names[used] = '\0';
            break;
        }
        used += (size_t)n;
    }
    pg_result_free(r);
    return TPV_OK;
}

static bool grow(void **items, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return true;
    size_t next = 16, bytes;
    if ((*cap && __builtin_mul_overflow(*cap, (size_t)2, &next)) ||
        __builtin_mul_overflow(next, size, &bytes))
        return false;
    void *p = realloc(*items, bytes);
    if (!p)
        return false;
    *items = p;
    *cap = next;
    return true;
}

/* Columns: 0 noise_models, 1 version, 2 candidate id, 3 metric, 4 noise, 5 split, 6 value. */
static int agree_row(const struct pg_result *r, int i, struct store_agree_rows *out, size_t *ccap,
                     size_t *scap, struct tpv_err *err)
{
    if (!out->noise_models) {
        out->version = pg_result_int64(r, i, 1);
        if (!(out->noise_models = pg_result_strdup(r, i, 0)))
            return pgs_oom(err);
    }
    if (pg_result_null(r, i, 2))
        return TPV_OK; /* the study has no candidate */
    const char *id = pg_result_text(r, i, 2);
    struct store_agree_cand *last = out->ncands ? &out->cands[out->ncands - 1] : NULL;
    if (!last || strcmp(last->id, id) != 0) {
        if (!grow((void **)&out->cands, ccap, out->ncands, sizeof *out->cands))
            return pgs_oom(err);
        last = &out->cands[out->ncands++];
        memset(last, 0, sizeof *last);
        snprintf(last->id, sizeof last->id, "%s", id);
        last->has_metric = !pg_result_null(r, i, 3);
        last->metric = last->has_metric ? pg_result_double(r, i, 3) : NAN;
        last->first = out->nscores;
    }
    if (pg_result_null(r, i, 4))
        return TPV_OK; /* a candidate without scores */
    if (!grow((void **)&out->scores, scap, out->nscores, sizeof *out->scores))
        return pgs_oom(err);
    struct store_agree_score *sc = &out->scores[out->nscores++];
    pgs_copy(sc->noise, sizeof sc->noise, r, i, 4);
    pgs_copy(sc->split, sizeof sc->split, r, i, 5);
    sc->value = pg_result_double(r, i, 6);
    last->nscores++;
    return TPV_OK;
}

int pgs_agree_rows(void *impl, const char *study_id, const char *metric,
                   struct store_agree_rows *out, struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    const char *p[] = { study_id, metric };
    struct pg_result *r;
    int rc = pgs_read(impl,
                      "SELECT s.noise_models, s.version, c.id, "
                      "CASE WHEN jsonb_typeof(c.metrics::jsonb -> $2) = 'number' "
                      "THEN (c.metrics::jsonb ->> $2)::float8 END, sc.noise, sc.split, sc.value "
                      "FROM studies s LEFT JOIN candidates c ON c.study_id = s.id "
                      "LEFT JOIN scores sc ON sc.candidate_id = c.id WHERE s.id = $1 "
                      "ORDER BY c.seq, sc.ctid",
                      2, p, &r, err);
    if (rc != TPV_OK)
        return rc;
    size_t ccap = 0, scap = 0;
    for (int i = 0; rc == TPV_OK && i < pg_result_rows(r); i++)
        rc = agree_row(r, i, out, &ccap, &scap, err);
    pg_result_free(r);
    if (rc == TPV_OK && !out->noise_models)
        rc = tpv_err_set(err, TPV_ENOTFOUND, "study_id", "study %s not found", study_id);
    if (rc != TPV_OK)
        store_agree_rows_free(out);
    return rc;
}
