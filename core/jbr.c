/* jbr.c: JBR pruning scores (see jbr.h; DESIGN.md section 3).  One pass over the inputs in chunks:
 * forward, pseudo-labels and confidence filter, backward of the cross-entropy against the
 * pseudo-label, then the per-unit products are added sample by sample, in input order, into the
 * running mini-batch, whose squared means go into the scores when it is full. */
#include "core/jbr.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 256

struct unit_rank {
    double score;
    size_t pos;
};

static int rank_cmp(const void *pa, const void *pb)
{
    const struct unit_rank *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score < b->score ? -1 : 1;
    return a->pos < b->pos ? -1 : a->pos > b->pos;
}

static json_t *jbr_json(const struct tpv_mlp *m, const double *score, size_t H, uint64_t kept,
                        uint64_t nb, double confidence, uint64_t batch_size)
{
    json_t *units = json_array(), *order = json_array();
    struct unit_rank *rk = malloc((H ? H : 1) * sizeof *rk);
    json_t *res = NULL;
    if (!units || !order || !rk)
        goto out;
    size_t u = 0;
    for (size_t l = 0; l + 1 < m->L; l++)
        for (uint64_t j = 0; j < m->layers[l].out; j++, u++) {
            if (json_array_append_new(units, json_pack("{s:s, s:I, s:f}", "layer",
                                                       m->layers[l].w_name, "index",
                                                       (json_int_t)j, "score", score[u])))
                goto out;
            rk[u].score = score[u];
            rk[u].pos = u;
        }
    qsort(rk, H, sizeof *rk, rank_cmp);
    for (size_t i = 0; i < H; i++)
        if (json_array_append_new(order, json_integer((json_int_t)rk[i].pos)))
            goto out;
    res = json_pack("{s:O, s:O, s:I, s:I, s:f, s:I}", "units", units, "order", order,
                    "kept_samples", (json_int_t)kept, "batches", (json_int_t)nb, "confidence",
                    confidence, "batch_size", (json_int_t)batch_size);
out:
    json_decref(units);
    json_decref(order);
    free(rk);
    return res;
}

int tpv_jbr_params_check(const struct tpv_jbr_params *p, struct tpv_err *err)
{
    if (!(p->confidence >= 0.0 && p->confidence < 1.0))
        return tpv_err_set(err, TPV_EINVAL, "confidence",
                           "confidence must be in [0, 1) (a max-softmax threshold that samples "
                           "must exceed), got %g", p->confidence);
    if (p->batch_size < 1 || p->batch_size > TPV_JBR_BATCH_MAX)
        return tpv_err_set(err, TPV_EINVAL, "batch_size",
                           "batch_size must be an integer in [1, %d]", TPV_JBR_BATCH_MAX);
    return TPV_OK;
}

int tpv_jbr_params_parse(const json_t *obj, struct tpv_jbr_params *out, struct tpv_err *err)
{
    out->confidence = TPV_JBR_DEFAULT_CONFIDENCE;
    out->batch_size = TPV_JBR_DEFAULT_BATCH;
    if (!obj)
        return TPV_OK;
    if (!json_is_object(obj))
        return tpv_err_set(err, TPV_EINVAL, "body", "JBR parameters must be an object");
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        if (strcmp(key, "confidence") != 0 && strcmp(key, "batch_size") != 0)
            return tpv_err_set(err, TPV_EINVAL, key, "unknown field '%.64s' (JBR takes confidence "
                               "and batch_size)", key);
    }
    const json_t *cv = json_object_get(obj, "confidence"), *bv = json_object_get(obj, "batch_size");
    if (cv) {
        if (!json_is_number(cv))
            return tpv_err_set(err, TPV_EINVAL, "confidence", "confidence must be a number");
        out->confidence = json_number_value(cv);
    }
    if (bv) {
        double b = json_number_value(bv);
        if (!json_is_number(bv) || b != floor(b) || !(b >= 1 && b <= TPV_JBR_BATCH_MAX))
            return tpv_err_set(err, TPV_EINVAL, "batch_size",
                               "batch_size must be an integer in [1, %d]", TPV_JBR_BATCH_MAX);
        out->batch_size = (uint64_t)b;
    }
    return tpv_jbr_params_check(out, err);
}

json_t *tpv_jbr_params_json(const struct tpv_jbr_params *p)
{
    return json_pack("{s:f,s:I}", "confidence", p->confidence, "batch_size",
                     (json_int_t)p->batch_size);
}

int tpv_jbr_compute(const struct tpv_mlp *m, const struct tpv_tensor *inputs, double confidence,
                    uint64_t batch_size, json_t **result, const struct tpv_progress *pg,
                    struct tpv_err *err)
{
    *result = NULL;
    const struct tpv_jbr_params params = { confidence, batch_size };
    int rc = tpv_jbr_params_check(&params, err);
    if (rc)
        return rc;
    rc = tpv_mlp_check_input_shape(m, inputs, err);
    if (rc)
        return rc;
    if (m->K < 2)
        return tpv_err_set(err, TPV_EPRECONDITION, NULL,
                           "JBR needs a classifier with at least 2 outputs; the model has %llu",
                           (unsigned long long)m->K);
    if (m->L < 2)
        return tpv_err_set(err, TPV_EPRECONDITION, NULL,
                           "JBR scores hidden units; the model has a single linear layer");

    const uint64_t n = inputs->shape[0];
    const size_t K = m->K, L = m->L;
    size_t H = 0;
    for (size_t l = 0; l + 1 < L; l++)
        H += m->layers[l].out;
    const size_t cap = n < CHUNK ? (size_t)n : CHUNK;
    struct tpv_mlp_ws ws;
    if ((rc = tpv_mlp_ws_init(&ws, m, cap, err)))
        return rc;
    double *x = malloc(cap * m->d * sizeof *x);
    double *dl = malloc(cap * K * sizeof *dl);
    double *acc_out = calloc(H, sizeof *acc_out), *acc_in = calloc(H, sizeof *acc_in);
    double *score = calloc(H, sizeof *score);
    bool *kept = malloc(cap * sizeof *kept);
    /* per hidden layer: its delta and g for the chunk (rows x out_l) */
    double **dlt = calloc(L, sizeof *dlt), **gg = calloc(L, sizeof *gg);
    bool ok = x && dl && acc_out && acc_in && score && kept && dlt && gg;
    for (size_t l = 0; ok && l + 1 < L; l++)
        ok = (dlt[l] = malloc(cap * m->layers[l].out * sizeof(double))) &&
             (gg[l] = malloc(cap * m->layers[l].out * sizeof(double)));
    if (!ok) {
        rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        goto out;
    }

    uint64_t nkept = 0, nb = 0, count = 0;
    const uint64_t nchunks = (n + cap - 1) / cap;
    for (uint64_t c = 0; c < nchunks; c++) {
        const uint64_t first = c * cap;
        const size_t rows = n - first < cap ? (size_t)(n - first) : cap;
        tpv_mlp_read_inputs(m, inputs, first, rows, x);
        tpv_mlp_ws_forward(m, &ws, x, rows);

        /* Seed at the last pre-activation: (softmax(f) - e_y*) .* phi'_{L-1}; 0 if dropped. */
        const double *f = ws.a[L - 1], *dphi = ws.dphi[L - 1];
        for (size_t r = 0; r < rows; r++) {
            const double *fr = f + r * K;
            size_t y = 0;
            for (size_t k = 1; k < K; k++)
                if (fr[k] > fr[y])
                    y = k;
            double s = 0;
            for (size_t k = 0; k < K; k++)
                s += exp(fr[k] - fr[y]);
            kept[r] = 1.0 / s > confidence;
            for (size_t k = 0; k < K; k++) {
                double p = exp(fr[k] - fr[y]) / s;
                dl[r * K + k] = kept[r] ? (p - (k == y)) * dphi[r * K + k] : 0.0;
            }
        }
        /* Backward: g_{l} = delta_{l+1} W_{l+1}, delta_l = g_l .* phi'_l. */
        const double *dcur = dl;
        for (size_t l = L - 1; l >= 1; l--) {
            const struct tpv_mlp_layer *ml = &m->layers[l];
            const size_t in = ml->in, out = ml->out;
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)in, (int)out,
                        1.0, dcur, (int)out, ml->W, (int)in, 0.0, gg[l - 1], (int)in);
            const double *dp = ws.dphi[l - 1], *gl = gg[l - 1];
            double *dd = dlt[l - 1];
            for (size_t i = 0; i < rows * in; i++)
                dd[i] = gl[i] * dp[i];
            dcur = dd;
        }
        /* Kept samples in input order into the running mini-batch. */
        for (size_t r = 0; r < rows; r++) {
            if (!kept[r])
                continue;
            nkept++;
            size_t u = 0;
            for (size_t l = 0; l + 1 < L; l++) {
                const size_t w = m->layers[l].out;
                const double *z = ws.z[l] + r * w, *a = ws.a[l] + r * w;
                const double *d = dlt[l] + r * w, *gr = gg[l] + r * w;
                for (size_t j = 0; j < w; j++, u++) {
                    acc_out[u] += d[j] * z[j];
                    acc_in[u] += a[j] * gr[j];
                }
            }
            if (++count == batch_size) {
                for (size_t j = 0; j < H; j++) {
                    double o = acc_out[j] / (double)count, i = acc_in[j] / (double)count;
                    score[j] += o * o + i * i;
                }
                memset(acc_out, 0, H * sizeof *acc_out);
                memset(acc_in, 0, H * sizeof *acc_in);
                count = 0;
                nb++;
            }
        }
        if (tpv_progress_report(pg, 0, 1, c + 1, nchunks)) {
            rc = tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
            goto out;
        }
    }
    if (count > 0) {
        for (size_t j = 0; j < H; j++) {
            double o = acc_out[j] / (double)count, i = acc_in[j] / (double)count;
            score[j] += o * o + i * i;
        }
        nb++;
    }
    if (nkept == 0) {
        rc = tpv_err_set(err, TPV_EPRECONDITION, "confidence",
                         "no input has max softmax probability above the confidence %g (%llu "
                         "inputs); lower the confidence", confidence, (unsigned long long)n);
        goto out;
    }
    *result = jbr_json(m, score, H, nkept, nb, confidence, batch_size);
    if (!*result)
        rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
out:
    for (size_t l = 0; dlt && gg && l + 1 < L; l++) {
        free(dlt[l]);
        free(gg[l]);
    }
    free(dlt);
    free(gg);
    free(x);
    free(dl);
    free(acc_out);
    free(acc_in);
    free(score);
    free(kept);
    tpv_mlp_ws_free(&ws);
    return rc;
}
