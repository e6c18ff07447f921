/* jacobian.c: helpers shared by every Jacobian source: progress reporting and layouts. */
#include "core/jacobian.h"

#include <stdlib.h>
#include <string.h>

int tpv_progress_report(const struct tpv_progress *pg, double lo, double hi, uint64_t done,
                        uint64_t total)
{
    if (!pg || !pg->fn)
        return TPV_OK;
    double f = total ? lo + (hi - lo) * ((double)done / (double)total) : hi;
    return pg->fn(pg->ctx, f) ? TPV_ECANCELED : TPV_OK;
}

void tpv_layout_free(struct tpv_layout *layout)
{
    if (!layout)
        return;
    for (size_t i = 0; i < layout->nblocks; i++)
        free(layout->blocks[i].name);
    free(layout->blocks);
    memset(layout, 0, sizeof *layout);
}

int tpv_layout_copy(struct tpv_layout *dst, const struct tpv_layout *src, struct tpv_err *err)
{
    memset(dst, 0, sizeof *dst);
    dst->p = src->p;
    if (src->nblocks == 0)
        return TPV_OK;
    dst->blocks = calloc(src->nblocks, sizeof *dst->blocks);
    if (!dst->blocks)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    dst->nblocks = src->nblocks;
    for (size_t i = 0; i < src->nblocks; i++) {
        dst->blocks[i] = src->blocks[i];
        dst->blocks[i].name = strdup(src->blocks[i].name);
        if (!dst->blocks[i].name) {
            tpv_layout_free(dst);
            return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        }
    }
    return TPV_OK;
}

long tpv_layout_find(const struct tpv_layout *layout, const char *name)
{
    for (size_t i = 0; i < layout->nblocks; i++)
        if (strcmp(layout->blocks[i].name, name) == 0)
            return (long)i;
    return -1;
}

void tpv_jsrc_free(struct tpv_jsrc *s)
{
    if (s && s->ops && s->ops->free)
        s->ops->free(s);
}
