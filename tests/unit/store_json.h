/* store_json.h: storage reads rendered the way the API renders them (api/render.h), so that the
 * storage tests keep checking the shapes clients see.  Each wrapper returns the store's code, or
 * TPV_ENOMEM when rendering failed; *out is a new reference on TPV_OK, else NULL. */
#ifndef TPV_TEST_STORE_JSON_H
#define TPV_TEST_STORE_JSON_H

#include "api/render.h"
#include "storage/store.h"

static inline int rendered(json_t *j, json_t **out, int rc, struct tpv_err *err)
{
    *out = NULL;
    if (rc != TPV_OK) {
        json_decref(j);
        return rc;
    }
    if (!j)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory (rendering)");
    *out = j;
    return TPV_OK;
}

static inline int tj_study_get(struct store *st, const char *id, json_t **out,
                               struct tpv_err *err)
{
    struct store_study s;
    int rc = store_study_get(st, id, &s, err);
    rc = rendered(rc == TPV_OK ? api_study_json(&s) : NULL, out, rc, err);
    store_study_free(&s);
    return rc;
}

static inline int tj_candidate_get(struct store *st, const char *sid, const char *id,
                                   json_t **out, struct tpv_err *err)
{
    struct store_candidate c;
    int rc = store_candidate_get(st, sid, id, &c, err);
    rc = rendered(rc == TPV_OK ? api_candidate_json(&c) : NULL, out, rc, err);
    store_candidate_free(&c);
    return rc;
}

static inline int tj_job_get(struct store *st, const char *id, json_t **out, struct tpv_err *err)
{
    struct store_job j;
    int rc = store_job_get(st, id, &j, err);
    rc = rendered(rc == TPV_OK ? api_job_json(&j) : NULL, out, rc, err);
    store_job_free(&j);
    return rc;
}

static inline int tj_job_cancel(struct store *st, const char *id, json_t **out,
                                struct tpv_err *err)
{
    struct store_job j;
    int rc = store_job_cancel(st, id, &j, err);
    rc = rendered(rc == TPV_OK ? api_job_json(&j) : NULL, out, rc, err);
    store_job_free(&j);
    return rc;
}

/* The page's items array (as the old list functions gave) and its next position. */
static inline int tj_candidate_list(struct store *st, const char *sid, int64_t after, int limit,
                                    uint64_t max_bytes, json_t **items, int64_t *next,
                                    struct tpv_err *err)
{
    struct store_candidate_page p;
    int rc = store_candidate_list(st, sid, after, limit, max_bytes, &p, err);
    json_t *page = rc == TPV_OK ? api_candidate_page_json(&p) : NULL;
    *next = p.next_seq;
    rc = rendered(page ? json_incref(json_object_get(page, "items")) : NULL, items, rc, err);
    json_decref(page);
    store_candidate_page_free(&p);
    return rc;
}

static inline int tj_study_list(struct store *st, int64_t after, int limit, uint64_t max_bytes,
                                json_t **items, int64_t *next, struct tpv_err *err)
{
    struct store_study_page p;
    int rc = store_study_list(st, after, limit, max_bytes, &p, err);
    json_t *page = rc == TPV_OK ? api_study_page_json(&p) : NULL;
    *next = p.next_seq;
    rc = rendered(page ? json_incref(json_object_get(page, "items")) : NULL, items, rc, err);
    json_decref(page);
    store_study_page_free(&p);
    return rc;
}

#endif
