/* render.h: the API's JSON shapes (DESIGN.md section 5) from storage's plain structs
 * (storage/store_types.h), one renderer per shape, shared by every handler that shows it.
 * Each returns a new reference, or NULL when out of memory (or when a stored JSON column does
 * not parse, which only an allocation failure makes happen: what storage keeps was dumped by
 * jansson). */
#ifndef TPV_API_RENDER_H
#define TPV_API_RENDER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/store_types.h"

/* Stored JSON text back to a value; `fallback` (stolen) when the text is NULL or empty. */
json_t *api_json_text(const char *text, json_t *fallback);

json_t *api_study_json(const struct store_study *s);
json_t *api_score_json(const struct store_score_row *s);
/* With "scores", "stability", "error" ({code, message} or null), "flags" and "jbr_jobs" (its
 * JBR jobs newest first, each {"id","state","created_at"}; [] when none). */
json_t *api_candidate_json(const struct store_candidate *c);
json_t *api_job_json(const struct store_job *j);
/* {"name","role","created_at","revoked_at"|null}: never the hash. */
json_t *api_token_json(const struct store_token_row *t);

/* {"items": items, "next_page_token": token|null}; steals `items` (also on failure). */
json_t *api_page_json(json_t *items, int64_t next_seq);
json_t *api_study_page_json(const struct store_study_page *p);
json_t *api_candidate_page_json(const struct store_candidate_page *p);
/* {"items": [token, ...]} */
json_t *api_token_list_json(const struct store_token_row *rows, size_t n);

#endif
