/* render.c: the JSON shapes of studies, candidates (with scores, stability and error), jobs,
 * tokens and pages, built from storage's row structs (see render.h).  Key order is the order
 * the API has always sent (the integration tests compare bodies). */
#include "api/render.h"

#include <math.h>
#include <string.h>

#include "core/noise.h"
#include "storage/store.h"

_Static_assert(STORE_NOISE_NAME_MAX == TPV_NOISE_NAME_MAX,
               "the agreement rows hold noise names of the core's size");

json_t *api_json_text(const char *text, json_t *fallback)
{
    if (!text || !text[0])
        return fallback;
    json_decref(fallback);
    return json_loads(text, JSON_DECODE_ANY, NULL);
}

static json_t *string_or_null(const char *s)
{
    return s && s[0] ? json_string(s) : json_null();
}

static json_t *real_or_null(double v)
{
    return isnan(v) ? json_null() : json_real(v);
}

static json_t *input_json(const struct store_input *in)
{
    if (!in->digest[0])
        return json_null();
    return json_pack("{s:s,s:o}", "digest", in->digest, "n",
                     in->n < 0 ? json_null() : json_integer(in->n));
}

json_t *api_study_json(const struct store_study *s)
{
    return json_pack("{s:s,s:s,s:s,s:o,s:s,s:o,s:{s:o,s:o},s:I,s:s,s:o}",
                     "id", s->id, "name", s->name ? s->name : "", "description",
                     s->description ? s->description : "",
                     "noise_models", api_json_text(s->noise_models, json_array()),
                     "rank_by", s->rank_by ? s->rank_by : "",
                     "webhook_url", string_or_null(s->webhook_url),
                     "inputs", "fit", input_json(&s->fit), "probe", input_json(&s->probe),
                     "version", (json_int_t)s->version, "created_at", s->created_at,
                     "metadata", api_json_text(s->metadata, json_object()));
}

json_t *api_score_json(const struct store_score_row *s)
{
    return json_pack("{s:s,s:s,s:s,s:o,s:o,s:o,s:s,s:I,s:I,s:f,s:o}",
                     "noise", s->noise ? s->noise : "", "kind", s->kind ? s->kind : "",
                     "split", s->split ? s->split : "", "value", real_or_null(s->value),
                     "stderr", real_or_null(s->stderr_value),
                     "stderr_inputs", real_or_null(s->stderr_inputs),
                     "estimator", s->estimator ? s->estimator : "",
                     "samples", (json_int_t)s->samples, "seed", (json_int_t)s->seed,
                     "wall_seconds", s->wall_seconds,
                     "details", api_json_text(s->details, json_object()));
}

/* The candidate's flags from its rendered scores: "nonlinear" when the empirical check of any
 * score found the first-order value off (details.nonlinear, core/empirical.h). */
static json_t *candidate_flags(const json_t *scores)
{
    json_t *flags = json_array();
    size_t i;
    const json_t *sc;
    json_array_foreach(scores, i, sc) {
        if (flags && json_is_true(json_object_get(json_object_get(sc, "details"), "nonlinear"))) {
            json_array_append_new(flags, json_string("nonlinear"));
            break;
        }
    }
    return flags;
}

static json_t *error_json(const char *code, const char *message)
{
    if (!code)
        return json_null();
    return json_pack("{s:s,s:s}", "code", code, "message", message ? message : "");
}

/* The candidate's JBR jobs, newest first: [{"id","state","created_at"}]; NULL when out of
 * memory (never a job short). */
static json_t *jbr_jobs_json(const struct store_candidate *c)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < c->njbr_jobs; i++) {
        const struct store_job_ref *j = &c->jbr_jobs[i];
        if (json_array_append_new(arr, json_pack("{s:s,s:s,s:s}", "id", j->id, "state",
                                                 j->state, "created_at", j->created_at)) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return arr;
}

json_t *api_candidate_json(const struct store_candidate *c)
{
    json_t *scores = json_array();
    for (size_t i = 0; scores && i < c->nscores; i++)
        if (json_array_append_new(scores, api_score_json(&c->scores[i])) != 0) {
            json_decref(scores); /* never a score short */
            scores = NULL;
        }
    if (!scores)
        return NULL;
    json_t *error = error_json(c->error_code, c->error_message);
    json_t *out = json_pack("{s:s,s:s,s:s,s:o,s:s,s:s,s:o,s:o,s:s,s:f,s:o,s:s}",
                            "id", c->id, "study_id", c->study_id, "name", c->name ? c->name : "",
                            "metadata", api_json_text(c->metadata, json_object()),
                            "source", c->source_kind ? c->source_kind : "",
                            "state", c->state ? c->state : "", "scores", scores,
                            "stability", api_json_text(c->stability, json_null()),
                            "job_id", c->job_id, "progress", c->progress,
                            "error", error ? error : json_null(), "created_at", c->created_at);
    json_t *flags = out ? candidate_flags(scores) : NULL;
    if (out && (!flags || json_object_set_new(out, "flags", flags) != 0)) {
        json_decref(out); /* never a candidate without a flag it has */
        return NULL;
    }
    json_t *jbr = out ? jbr_jobs_json(c) : NULL;
    if (out && (!jbr || json_object_set_new(out, "jbr_jobs", jbr) != 0)) {
        json_decref(out); /* never a candidate without a JBR job it has */
        return NULL;
    }
    /* "metrics" only when the candidate has some (PUT .../metrics). */
    if (out && c->metrics &&
        json_object_set_new(out, "metrics", api_json_text(c->metrics, json_object())) != 0) {
        json_decref(out); /* never a candidate without the metrics it has */
        return NULL;
    }
    return out;
}

json_t *api_job_json(const struct store_job *j)
{
    json_t *error = error_json(j->error_code, j->error_message);
    json_t *out = json_pack("{s:s,s:s,s:s,s:s,s:s,s:f,s:i,s:o,s:s,s:o,s:o,s:b}",
                            "id", j->id, "kind", j->kind, "study_id", j->study_id,
                            "candidate_id", j->candidate_id, "state", j->state,
                            "progress", j->progress, "attempts", j->attempts,
                            "error", error ? error : json_null(), "created_at", j->created_at,
                            "started_at", string_or_null(j->started_at),
                            "finished_at", string_or_null(j->finished_at),
                            "cancel_requested", j->cancel_requested);
    if (out && j->result) {
        /* A result that does not load shows as null, as it always has. */
        json_t *r = json_loads(j->result, JSON_DECODE_ANY, NULL);
        if (json_object_set_new(out, "result", r ? r : json_null()) != 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

json_t *api_token_json(const struct store_token_row *t)
{
    return json_pack("{s:s,s:s,s:s,s:o}", "name", t->name, "role", t->role, "created_at",
                     t->created_at, "revoked_at", string_or_null(t->revoked_at));
}

json_t *api_page_json(json_t *items, int64_t next_seq)
{
    char token[STORE_TOKEN_MAX];
    json_t *next = json_null();
    if (!items)
        return NULL;
    if (next_seq > 0) {
        store_page_token_encode(next_seq, token);
        next = json_string(token);
    }
    return json_pack("{s:o,s:o}", "items", items, "next_page_token", next ? next : json_null());
}

/* An array of the renderings of n items of `size` bytes; NULL when any fails. */
static json_t *render_array(const void *items, size_t n, size_t size,
                            json_t *(*render)(const void *))
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        if (json_array_append_new(arr, render((const char *)items + i * size)) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    return arr;
}

static json_t *study_any(const void *p)
{
    return api_study_json(p);
}

static json_t *candidate_any(const void *p)
{
    return api_candidate_json(p);
}

static json_t *token_any(const void *p)
{
    return api_token_json(p);
}

json_t *api_study_page_json(const struct store_study_page *p)
{
    return api_page_json(render_array(p->items, p->n, sizeof *p->items, study_any), p->next_seq);
}

json_t *api_candidate_page_json(const struct store_candidate_page *p)
{
    return api_page_json(render_array(p->items, p->n, sizeof *p->items, candidate_any),
                         p->next_seq);
}

json_t *api_token_list_json(const struct store_token_row *rows, size_t n)
{
    json_t *items = render_array(rows, n, sizeof *rows, token_any);
    return items ? json_pack("{s:o}", "items", items) : NULL;
}
