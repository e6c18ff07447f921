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

int tpv_jbr_acc_init(struct tpv_jbr_acc *a, size_t H, uint64_t batch_size, struct tpv_err *err)
{
    memset(a, 0, sizeof *a);
    a->H = H;
    a->batch_size = batch_size;
    a->out = calloc(H ? H : 1, sizeof *a->out);
    a->in = calloc(H ? H : 1, sizeof *a->in);
    a->score = calloc(H ? H : 1, sizeof *a->score);
    if (!a->out || !a->in || !a->score) {
        tpv_jbr_acc_free(a);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    return TPV_OK;
}

void tpv_jbr_acc_free(struct tpv_jbr_acc *a)
{
    free(a->out);
    free(a->in);
    free(a->score);
    memset(a, 0, sizeof *a);
}

/* The running batch's squared means into the scores. */
static void acc_flush(struct tpv_jbr_acc *a)
{
    for (size_t j = 0; j < a->H; j++) {
        double o = a->out[j] / (double)a->count, i = a->in[j] / (double)a->count;
        a->score[j] += o * o + i * i;
    }
    memset(a->out, 0, a->H * sizeof *a->out);
    memset(a->in, 0, a->H * sizeof *a->in);
    a->count = 0;
    a->nb++;
}

void tpv_jbr_acc_sample(struct tpv_jbr_acc *a)
{
    a->nkept++;
    if (++a->count == a->batch_size)
        acc_flush(a);
}

int tpv_jbr_acc_finish(struct tpv_jbr_acc *a, uint64_t n, double confidence, struct tpv_err *err)
{
    if (a->count > 0)
        acc_flush(a);
    if (a->nkept == 0)
        return tpv_err_set(err, TPV_EPRECONDITION, "confidence",
                           "no input has max softmax probability above the confidence %g (%llu "
                           "inputs); lower the confidence", confidence, (unsigned long long)n);
    return TPV_OK;
}

bool tpv_jbr_seed(const double *f, size_t K, double confidence, double *seed)
{
    size_t y = 0;
    for (size_t k = 1; k < K; k++)
        if (f[k] > f[y])
            y = k;
    double s = 0;
    for (size_t k = 0; k < K; k++)
        s += exp(f[k] - f[y]);
    bool kept = 1.0 / s > confidence;
    for (size_t k = 0; k < K; k++)
        seed[k] = kept ? exp(f[k] - f[y]) / s - (k == y) : 0.0;
    return kept;
}

json_t *tpv_jbr_result_json(const char *const *names, const uint64_t *units, size_t nlayers,
                            const struct tpv_jbr_acc *a, double confidence)
{
    const size_t H = a->H;
    json_t *arr = json_array(), *order = json_array();
    struct unit_rank *rk = malloc((H ? H : 1) * sizeof *rk);
    json_t *res = NULL;
    if (!arr || !order || !rk)
        goto out;
    size_t u = 0;
    for (size_t l = 0; l < nlayers; l++)
        for (uint64_t j = 0; j < units[l] && u < H; j++, u++) {
            if (json_array_append_new(arr, json_pack("{s:s, s:I, s:f}", "layer", names[l],
                                                     "index", (json_int_t)j, "score",
                                                     a->score[u])))
                goto out;
            rk[u].score = a->score[u];
            rk[u].pos = u;
        }
    qsort(rk, u, sizeof *rk, rank_cmp);
    for (size_t i = 0; i < u; i++)
        if (json_array_append_new(order, json_integer((json_int_t)rk[i].pos)))
            goto out;
    res = json_pack("{s:O, s:O, s:I, s:I, s:f, s:I}", "units", arr, "order", order,
                    "kept_samples", (json_int_t)a->nkept, "batches", (json_int_t)a->nb,
                    "confidence", confidence, "batch_size", (json_int_t)a->batch_size);
out:
    json_decref(arr);
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

/* The names and unit counts of the hidden layers (every linear layer but the last). */
static json_t *mlp_json(const struct tpv_mlp *m, const struct tpv_jbr_acc *a, double confidence)
{
    const size_t nl = m->L - 1;
    const char **names = malloc(nl * sizeof *names);
    uint64_t *units = malloc(nl * sizeof *units);
    json_t *res = NULL;
    if (names && units) {
        for (size_t l = 0; l < nl; l++) {
            names[l] = m->layers[l].w_name;
            units[l] = m->layers[l].out;
        }
        res = tpv_jbr_result_json(names, units, nl, a, confidence);
    }
    free(names);
    free(units);
    return res;
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
    struct tpv_jbr_acc acc;
    if ((rc = tpv_mlp_ws_init(&ws, m, cap, err)))
        return rc;
    if ((rc = tpv_jbr_acc_init(&acc, H, batch_size, err))) {
        tpv_mlp_ws_free(&ws);
        return rc;
    }
    double *x = malloc(cap * m->d * sizeof *x);
    double *dl = malloc(cap * K * sizeof *dl);
    bool *kept = malloc(cap * sizeof *kept);
    /* per hidden layer: its delta and g for the chunk (rows x out_l) */
    double **dlt = calloc(L, sizeof *dlt), **gg = calloc(L, sizeof *gg);
    bool ok = x && dl && kept && dlt && gg;
    for (size_t l = 0; ok && l + 1 < L; l++)
        ok = (dlt[l] = malloc(cap * m->layers[l].out * sizeof(double))) &&
             (gg[l] = malloc(cap * m->layers[l].out * sizeof(double)));
    if (!ok) {
        rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        goto out;
    }

    const uint64_t nchunks = (n + cap - 1) / cap;
    for (uint64_t c = 0; c < nchunks; c++) {
        const uint64_t first = c * cap;
        const size_t rows = n - first < cap ? (size_t)(n - first) : cap;
        tpv_mlp_read_inputs(m, inputs, first, rows, x);
        tpv_mlp_ws_forward(m, &ws, x, rows);

        /* Seed at the last pre-activation: (softmax(f) - e_y*) .* phi'_{L-1}; 0 if dropped. */
        const double *f = ws.a[L - 1], *dphi = ws.dphi[L - 1];
        for (size_t r = 0; r < rows; r++) {
            kept[r] = tpv_jbr_seed(f + r * K, K, confidence, dl + r * K);
            for (size_t k = 0; k < K; k++)
                dl[r * K + k] *= dphi[r * K + k];
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
            size_t u = 0;
            for (size_t l = 0; l + 1 < L; l++) {
                const size_t w = m->layers[l].out;
                const double *z = ws.z[l] + r * w, *a = ws.a[l] + r * w;
                const double *d = dlt[l] + r * w, *gr = gg[l] + r * w;
                for (size_t j = 0; j < w; j++, u++) {
                    acc.out[u] += d[j] * z[j];
                    acc.in[u] += a[j] * gr[j];
                }
            }
            tpv_jbr_acc_sample(&acc);
        }
        if (tpv_progress_report(pg, 0, 1, c + 1, nchunks)) {
            rc = tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
            goto out;
        }
    }
    if ((rc = tpv_jbr_acc_finish(&acc, n, confidence, err)))
        goto out;
    *result = mlp_json(m, &acc, confidence);
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
    free(kept);
    tpv_jbr_acc_free(&acc);
    tpv_mlp_ws_free(&ws);
    return rc;
}
