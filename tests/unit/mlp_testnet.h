/* mlp_testnet.h: small sequential nets over in-memory tensors for the MLP, source and JBR tests:
 * a spec built layer by layer, float64 weights the test owns (so finite differences can perturb
 * them and re-bind), and a finite-difference Jacobian of the whole forward pass. */
#ifndef TPV_MLP_TESTNET_H
#define TPV_MLP_TESTNET_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mlp.h"

#define TNET_MAX 32

struct tnet {
    json_t *spec;
    size_t nt;
    char names[TNET_MAX][32];
    struct tpv_tensor t[TNET_MAX];
    double *vals[TNET_MAX];
    uint64_t seed;
};

static inline double tnet_uniform(uint64_t *s) /* in [-1, 1) */
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*s >> 11) * 0x1p-52 - 1.0;
}

static inline void tnet_init(struct tnet *n, const char *input_shape_json, uint64_t seed)
{
    memset(n, 0, sizeof *n);
    n->seed = seed;
    n->spec = json_pack("{s:s, s:o, s:[]}", "format", TPV_MLP_FORMAT, "input_shape",
                        json_loads(input_shape_json, 0, NULL), "layers");
}

static inline const char *tnet_tensor(struct tnet *n, const char *name, int rank, uint64_t s0,
                                      uint64_t s1, double scale)
{
    size_t i = n->nt++;
    snprintf(n->names[i], sizeof n->names[i], "%s", name);
    struct tpv_tensor *t = &n->t[i];
    t->name = n->names[i];
    t->dtype = TPV_DTYPE_F64;
    t->rank = rank;
    t->shape[0] = s0;
    t->shape[1] = s1;
    t->numel = rank == 2 ? s0 * s1 : s0;
    t->nbytes = t->numel * 8;
    n->vals[i] = malloc(t->numel * sizeof(double));
    for (uint64_t j = 0; j < t->numel; j++)
        n->vals[i][j] = scale * tnet_uniform(&n->seed);
    t->data = n->vals[i];
    return n->names[i];
}

/* Appends a linear layer out x in ("l<k>.weight", "l<k>.bias") with weights ~ U(-s, s),
 * s = 1.5 / sqrt(in) so that activations stay O(1). */
static inline void tnet_linear(struct tnet *n, uint64_t out, uint64_t in, int bias)
{
    char wn[32], bn[32];
    size_t k = json_array_size(json_object_get(n->spec, "layers"));
    snprintf(wn, sizeof wn, "l%zu.weight", k);
    snprintf(bn, sizeof bn, "l%zu.bias", k);
    double s = 1.5 / sqrt((double)in);
    json_t *layer = json_pack("{s:s, s:s}", "type", "linear", "weight",
                              tnet_tensor(n, wn, 2, out, in, s));
    if (bias)
        json_object_set_new(layer, "bias", json_string(tnet_tensor(n, bn, 1, out, 0, 0.5)));
    json_array_append_new(json_object_get(n->spec, "layers"), layer);
}

static inline void tnet_layer(struct tnet *n, const char *json)
{
    json_array_append_new(json_object_get(n->spec, "layers"), json_loads(json, 0, NULL));
}

static inline const struct tpv_tensor *tnet_find(void *ctx, const char *name)
{
    struct tnet *n = ctx;
    for (size_t i = 0; i < n->nt; i++)
        if (strcmp(n->names[i], name) == 0)
            return &n->t[i];
    return NULL;
}

static inline struct tpv_mlp *tnet_bind(struct tnet *n)
{
    struct tpv_mlp *m = NULL;
    struct tpv_err err;
    tpv_err_clear(&err);
    if (tpv_mlp_bind(&m, n->spec, tnet_find, n, &err) != TPV_OK) {
        fprintf(stderr, "bind failed: %s: %s\n", err.field, err.message);
        return NULL;
    }
    return m;
}

/* Parameter j in layout order (tensors are created in layout order). */
static inline double *tnet_param(struct tnet *n, uint64_t j)
{
    for (size_t i = 0; i < n->nt; i++) {
        if (j < n->t[i].numel)
            return &n->vals[i][j];
        j -= n->t[i].numel;
    }
    return NULL;
}

static inline void tnet_free(struct tnet *n)
{
    json_decref(n->spec);
    for (size_t i = 0; i < n->nt; i++)
        free(n->vals[i]);
    memset(n, 0, sizeof *n);
}

/* J (ns*K x p, rows (sample, output)) by central differences of the forward pass. */
static inline void tnet_fd_jacobian(struct tnet *n, const double *x, size_t ns, uint64_t K,
                                    uint64_t p, double *J)
{
    double *fp = malloc(ns * K * sizeof *fp), *fm = malloc(ns * K * sizeof *fm);
    for (uint64_t j = 0; j < p; j++) {
        double *w = tnet_param(n, j), w0 = *w;
        double h = 1e-5 * (fabs(w0) > 1 ? fabs(w0) : 1);
        *w = w0 + h;
        struct tpv_mlp *m = tnet_bind(n);
        tpv_mlp_forward(m, x, ns, fp);
        tpv_mlp_free(m);
        *w = w0 - h;
        m = tnet_bind(n);
        tpv_mlp_forward(m, x, ns, fm);
        tpv_mlp_free(m);
        *w = w0;
        double h2 = (w0 + h) - (w0 - h);
        for (size_t r = 0; r < ns * K; r++)
            J[r * p + j] = (fp[r] - fm[r]) / h2;
    }
    free(fp);
    free(fm);
}

static inline double *tnet_inputs(uint64_t ns, uint64_t d, uint64_t seed)
{
    double *x = malloc(ns * d * sizeof *x);
    for (uint64_t i = 0; i < ns * d; i++)
        x[i] = 1.2 * tnet_uniform(&seed);
    return x;
}

static inline struct tpv_tensor tnet_input_tensor(const double *x, uint64_t ns, int rank,
                                                  const uint64_t *shape)
{
    struct tpv_tensor t;
    memset(&t, 0, sizeof t);
    t.name = "";
    t.dtype = TPV_DTYPE_F64;
    t.rank = rank + 1;
    t.shape[0] = ns;
    t.numel = ns;
    for (int r = 0; r < rank; r++) {
        t.shape[r + 1] = shape[r];
        t.numel *= shape[r];
    }
    t.nbytes = t.numel * 8;
    t.data = x;
    return t;
}

/* max |a - b| / max(max |b|, tiny) */
static inline double tnet_relerr(const double *a, const double *b, size_t count)
{
    double num = 0, den = 1e-300;
    for (size_t i = 0; i < count; i++) {
        num = fmax(num, fabs(a[i] - b[i]));
        den = fmax(den, fabs(b[i]));
    }
    return num / den;
}

#endif
