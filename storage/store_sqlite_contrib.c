/* store_sqlite_contrib.c: the SQLite side of the per-input contributions stored with each score
 * (DESIGN.md section 5, Confidence): the binding used when scores are written and the one-query load of a ranking's contributions that the paired comparisons read. */
#include "storage/sqlite_int.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int bind_contributions(sqlite3_stmt *s, int i, const double *v, size_t n, struct tpv_err *err)
{
    if (!v || n == 0) {
        sqlite3_bind_null(s, i);
        return TPV_OK;
    }
    size_t bytes;
    if (__builtin_mul_overflow(n, (size_t)8, &bytes) || bytes > INT32_MAX)
        return tpv_err_set(err, TPV_ENOSPACE, NULL,
                           "a score's %zu per-input contributions do not fit in one row", n);
    unsigned char *enc = malloc(bytes);
    if (!enc)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    store_contrib_encode(v, n, enc);
    sqlite3_bind_blob(s, i, enc, (int)bytes, free); /* SQLite frees enc */
    return TPV_OK;
}


/* Index of `id` among ids by the sorted order `ord` (binary search), or -1. */
static long find_id(const char *const *ids, const size_t *ord, size_t n, const char *id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ids[ord[mid]], id);
        if (c == 0)
            return (long)ord[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static int cmp_ord_r(const void *a, const void *b, void *ctx)
{
    const char *const *ids = ctx;
    return strcmp(ids[*(const size_t *)a], ids[*(const size_t *)b]);
}

int sq_rank_contributions(struct sq_store *st, const char *study_id, const char *noise,
                          const char *split, const char *const *ids, size_t n,
                          struct store_contrib **out, struct tpv_err *err)
{
    *out = NULL;
    struct store_contrib *v = calloc(n ? n : 1, sizeof *v);
    size_t *ord = malloc((n ? n : 1) * sizeof *ord);
    char *arr = v && ord ? store_ids_json(ids, n, err) : NULL;
    if (!v || !ord || !arr) {
        free(v);
        free(ord);
        free(arr);
        return v && ord ? err->code : tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(v[i].id, sizeof v[i].id, "%s", ids[i]);
        ord[i] = i;
    }
    qsort_r(ord, n, sizeof *ord, cmp_ord_r, (void *)ids);
    struct store_conn *c = conn_get(st);
    int rc = TPV_OK, step = SQLITE_DONE;
    sqlite3_stmt *s = conn_stmt(c, STMT_RANK_CONTRIB, err);
    if (!s)
        rc = err->code;
    if (s) {
        bind_text(s, 1, study_id);
        bind_text(s, 2, noise);
        bind_text(s, 3, split);
        bind_text(s, 4, arr);
        while ((step = sqlite3_step(s)) == SQLITE_ROW) {
            long at = find_id(ids, ord, n, col_text(s, 0));
            int bytes = sqlite3_column_bytes(s, 1);
            const unsigned char *blob = sqlite3_column_blob(s, 1);
            if (at < 0 || v[at].values || !blob || bytes <= 0 || bytes % 8)
                continue; /* NULL (written before contributions were stored) stays absent */
            size_t m = (size_t)bytes / 8;
            if (!(v[at].values = malloc(m * sizeof(double)))) {
                rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
                break;
            }
            store_contrib_decode(blob, m, v[at].values);
            v[at].n = m;
        }
        if (rc == TPV_OK && step != SQLITE_DONE)
            rc = db_fail(c, step, "contributions", err);
        stmt_done(s);
    }
    conn_put(st, c);
    free(ord);
    free(arr);
    if (rc != TPV_OK) {
        store_contribs_free(v, n);
        return rc;
    }
    *out = v;
    return TPV_OK;
}
