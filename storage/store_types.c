/* store_types.c: the free functions of the row and page structs of store_types.h, shared by
 * every backend (each frees what the struct owns; NULL and zeroed structs are no-ops). */
#include "storage/store_types.h"

#include <stdlib.h>
#include <string.h>

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
    memset(c, 0, sizeof *c);
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
