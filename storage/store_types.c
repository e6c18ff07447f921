/* store_types.c: the free functions of the row and page structs of store_types.h (each frees
 * what the struct owns; NULL and zeroed structs are no-ops) and the stored form of per-input
 * contributions, shared by every backend. */
#include "storage/store_types.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tpv_error.h"
#include "storage/store_ops.h"

void store_study_free(struct store_study *s)
{
    if (!s)
        return;
    free(s->name);
    free(s->description);
    free(s->noise_models);
    free(s->rank_by);
    free(s->webhook_url);
    free(s->metadata);
    memset(s, 0, sizeof *s);
}

static void score_row_free(struct store_score_row *r)
{
    free(r->noise);
    free(r->kind);
    free(r->split);
    free(r->estimator);
    free(r->details);
}

void store_candidate_free(struct store_candidate *c)
{
    if (!c)
        return;
    free(c->name);
    free(c->metadata);
    free(c->source_kind);
    free(c->state);
    free(c->stability);
    free(c->error_code);
    free(c->error_message);
    free(c->metrics);
    for (size_t i = 0; c->scores && i < c->nscores; i++)
        score_row_free(&c->scores[i]);
    free(c->scores);
    free(c->jbr_jobs);
    memset(c, 0, sizeof *c);
}

bool store_candidate_add_jbr(struct store_candidate *c, size_t *cap, const char *id,
                             const char *state, const char *created_at)
{
    if (c->njbr_jobs == *cap) {
        size_t want = *cap ? *cap * 2 : 4;
        struct store_job_ref *p = want <= SIZE_MAX / sizeof *p
                                      ? realloc(c->jbr_jobs, want * sizeof *p)
                                      : NULL;
        if (!p)
            return false;
        c->jbr_jobs = p;
        *cap = want;
    }
    struct store_job_ref *r = &c->jbr_jobs[c->njbr_jobs++];
    snprintf(r->id, sizeof r->id, "%s", id);
    snprintf(r->state, sizeof r->state, "%s", state);
    snprintf(r->created_at, sizeof r->created_at, "%s", created_at);
    return true;
}

void store_job_free(struct store_job *j)
{
    if (!j)
        return;
    free(j->error_code);
    free(j->error_message);
    free(j->result);
    memset(j, 0, sizeof *j);
}

void store_study_page_free(struct store_study_page *p)
{
    if (!p)
        return;
    for (size_t i = 0; p->items && i < p->n; i++)
        store_study_free(&p->items[i]);
    free(p->items);
    memset(p, 0, sizeof *p);
}

void store_candidate_page_free(struct store_candidate_page *p)
{
    if (!p)
        return;
    for (size_t i = 0; p->items && i < p->n; i++)
        store_candidate_free(&p->items[i]);
    free(p->items);
    memset(p, 0, sizeof *p);
}

void store_contrib_encode(const double *v, size_t n, unsigned char *enc)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t bits;
        memcpy(&bits, &v[i], sizeof bits);
        for (int b = 0; b < 8; b++)
            enc[i * 8 + (size_t)b] = (unsigned char)(bits >> (8 * b));
    }
}

void store_contrib_decode(const unsigned char *enc, size_t n, double *v)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t bits = 0;
        for (int b = 0; b < 8; b++)
            bits |= (uint64_t)enc[i * 8 + (size_t)b] << (8 * b);
        memcpy(&v[i], &bits, sizeof bits);
    }
}

void store_contribs_free(struct store_contrib *c, size_t n)
{
    for (size_t i = 0; c && i < n; i++)
        free(c[i].values);
    free(c);
}

/* Only plain identifiers go into the array, so that no escaping is needed and nothing else can
 * be spelled in a query. */
static bool plain_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n >= STORE_ID_MAX)
        return false;
    for (const char *p = id; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            return false;
    return true;
}

char *store_ids_json(const char *const *ids, size_t n, struct tpv_err *err)
{
    size_t cap = 3 + n * (STORE_ID_MAX + 3), len = 0;
    char *out = malloc(cap);
    if (!out) {
        tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        return NULL;
    }
    out[len++] = '[';
    for (size_t i = 0; i < n; i++) {
        if (!plain_id(ids[i])) {
            free(out);
            tpv_err_set(err, TPV_EINVAL, "candidate_id", "not a candidate id");
            return NULL;
        }
        size_t k = strlen(ids[i]);
        if (i)
            out[len++] = ',';
        out[len++] = '"';
        memcpy(out + len, ids[i], k);
        len += k;
        out[len++] = '"';
    }
    out[len++] = ']';
    out[len] = '\0';
    return out;
}
