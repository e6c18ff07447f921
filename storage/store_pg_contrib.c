/* store_pg_contrib.c: the PostgreSQL side of the per-input contributions stored with each score
 * (DESIGN.md section 5, Confidence).  Parameters and results travel as text, so the BYTEA column
 * goes through hex (decode($n, 'hex') / encode(col, 'hex')) around the little-endian float64
 * form both backends store (store_contrib_encode in store_types.c). */
#include "storage/store_pg_int.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tpv_error.h"
#include "storage/store.h"

int pgs_contrib_hex(const double *v, size_t n, char **hex, struct tpv_err *err)
{
    *hex = NULL;
    if (!v || n == 0)
        return TPV_OK;
    size_t bytes;
    if (__builtin_mul_overflow(n, (size_t)16, &bytes) || bytes > INT32_MAX)
        return tpv_err_set(err, TPV_ENOSPACE, NULL,
                           "a score's %zu per-input contributions do not fit in one row", n);
    unsigned char *enc = malloc(n * 8);
    char *out = malloc(bytes + 1);
    if (!enc || !out) {
        free(enc);
        free(out);
        return pgs_oom(err);
    }
    store_contrib_encode(v, n, enc);
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n * 8; i++) {
        out[2 * i] = digits[enc[i] >> 4];
        out[2 * i + 1] = digits[enc[i] & 15];
    }
    out[bytes] = '\0';
    free(enc);
    *hex = out;
    return TPV_OK;
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* values[] from the hex text of a stored BYTEA; false when it is not a whole number of float64
 * (left absent, as a NULL would be) or memory runs out (*oom). */
static bool contrib_from_hex(const char *hex, struct store_contrib *o, bool *oom)
{
    size_t len = strlen(hex);
    if (len == 0 || len % 16)
        return false;
    size_t n = len / 16;
    unsigned char *enc = malloc(n * 8);
    double *v = malloc(n * sizeof *v);
    if (!enc || !v) {
        free(enc);
        free(v);
        *oom = true;
        return false;
    }
    for (size_t i = 0; i < n * 8; i++) {
        int hi = hex_nibble(hex[2 * i]), lo = hex_nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            free(enc);
            free(v);
            return false;
        }
        enc[i] = (unsigned char)(hi << 4 | lo);
    }
    store_contrib_decode(enc, n, v);
    free(enc);
    o->values = v;
    o->n = n;
    return true;
}

static int cmp_contrib_id(const void *a, const void *b)
{
    return strcmp(((const struct store_contrib *)a)->id, ((const struct store_contrib *)b)->id);
}

int pgs_rank_contributions(void *impl, const char *study_id, const char *noise,
                           const char *split, const char *const *ids, size_t n,
                           struct store_contrib **out, struct tpv_err *err)
{
    *out = NULL;
    char *arr = store_ids_json(ids, n, err);
    if (!arr)
        return err->code;
    struct store_contrib *v = calloc(n ? n : 1, sizeof *v);
    if (!v) {
        free(arr);
        return pgs_oom(err);
    }
    for (size_t i = 0; i < n; i++)
        snprintf(v[i].id, sizeof v[i].id, "%s", ids[i]);
    const char *p[] = { study_id, noise, split, arr };
    struct pg_result *r = NULL;
    int rc = pgs_read(impl,
                      "SELECT s.candidate_id, encode(s.contributions, 'hex') FROM scores s "
                      "JOIN candidates c ON c.id = s.candidate_id WHERE c.study_id = $1 "
                      "AND s.noise = $2 AND s.split = $3 AND s.contributions IS NOT NULL "
                      "AND s.candidate_id IN (SELECT json_array_elements_text($4::json))",
                      4, p, &r, err);
    free(arr);
    /* Rows are matched to ids through a sorted copy (rankings may hold many candidates); the
     * answer keeps the order of ids. */
    struct store_contrib *sorted = rc == TPV_OK ? malloc((n ? n : 1) * sizeof *sorted) : NULL;
    if (rc == TPV_OK && !sorted)
        rc = pgs_oom(err);
    bool oom = false;
    if (rc == TPV_OK) {
        memcpy(sorted, v, n * sizeof *v);
        qsort(sorted, n, sizeof *sorted, cmp_contrib_id);
    }
    for (int row = 0; rc == TPV_OK && row < pg_result_rows(r) && !oom; row++) {
        const char *id = pg_result_text(r, row, 0), *hex = pg_result_text(r, row, 1);
        struct store_contrib key = { .values = NULL };
        if (!id || !hex || snprintf(key.id, sizeof key.id, "%s", id) >= (int)sizeof key.id)
            continue;
        struct store_contrib *hit = bsearch(&key, sorted, n, sizeof *sorted, cmp_contrib_id);
        if (hit && !hit->values)
            contrib_from_hex(hex, hit, &oom);
    }
    pg_result_free(r);
    /* Back to the order of ids: each sorted entry names its slot by id (ids are distinct). */
    for (size_t i = 0; sorted && i < n; i++) {
        struct store_contrib *hit = bsearch(&v[i], sorted, n, sizeof *sorted, cmp_contrib_id);
        if (hit) {
            v[i].values = hit->values;
            v[i].n = hit->n;
            hit->values = NULL;
        }
    }
    if (sorted)
        store_contribs_free(sorted, n); /* only values not handed over (none, or duplicates) */
    if (rc == TPV_OK && oom)
        rc = pgs_oom(err);
    if (rc != TPV_OK) {
        store_contribs_free(v, n);
        return rc;
    }
    *out = v;
    return TPV_OK;
}
