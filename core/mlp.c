/* mlp.c: `tpv.sequential/v1` parsing and binding to weights, the activation functions with their
 * derivatives, and the batched float64 forward pass (see mlp.h; spec format: DESIGN.md section 4).
 * Every GEMM goes through cblas_dgemm; a batch's forward pass is split over its samples on the
 * job's threads (tpv_parallel_run), and since every row is computed alone the results do not
 * depend on the split. */
#include "core/mlp.h"

#include "core/linalg.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tensor data is read as little-endian in place"
#endif

#define FWD_BATCH 256

/* ---- dtype conversion (weights and inputs; all little-endian, possibly unaligned) ---- */

static bool dtype_is_float(enum tpv_dtype dt)
{
    return dt == TPV_DTYPE_F16 || dt == TPV_DTYPE_BF16 || dt == TPV_DTYPE_F32 ||
           dt == TPV_DTYPE_F64;
}

/* ---- activations ---- */

static double sigmoid(double x)
{
    if (x >= 0)
        return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

/* One activation applied in place on y, multiplying its derivative into dy (when not NULL). */
static void act_apply(const struct tpv_act *a, double *y, double *dy, size_t count)
{
    const double inv_sqrt_2pi = 0.39894228040143267794;
    switch (a->kind) {
    case TPV_ACT_RELU:
        for (size_t i = 0; i < count; i++) {
            bool pos = y[i] > 0; /* PyTorch: derivative 0 at 0 */
            if (dy)
                dy[i] = pos ? dy[i] : 0.0;
            y[i] = pos ? y[i] : 0.0;
        }
        break;
    case TPV_ACT_LEAKY_RELU:
        for (size_t i = 0; i < count; i++) {
            bool pos = y[i] > 0; /* PyTorch: derivative negative_slope at 0 */
            if (dy)
                dy[i] *= pos ? 1.0 : a->p1;
            y[i] = pos ? y[i] : a->p1 * y[i];
        }
        break;
    case TPV_ACT_TANH:
        for (size_t i = 0; i < count; i++) {
            double t = tanh(y[i]);
            if (dy)
                dy[i] *= 1.0 - t * t;
            y[i] = t;
        }
        break;
    case TPV_ACT_SIGMOID:
        for (size_t i = 0; i < count; i++) {
            double s = sigmoid(y[i]);
            if (dy)
                dy[i] *= s * (1.0 - s);
            y[i] = s;
        }
        break;
    case TPV_ACT_GELU:
        for (size_t i = 0; i < count; i++) {
            double x = y[i], cdf = 0.5 * (1.0 + erf(x * M_SQRT1_2));
            if (dy)
                dy[i] *= cdf + x * inv_sqrt_2pi * exp(-0.5 * x * x);
            y[i] = x * cdf;
        }
        break;
    case TPV_ACT_SOFTPLUS:
        for (size_t i = 0; i < count; i++) {
            double bx = a->p1 * y[i];
            if (bx > a->p2) { /* PyTorch's linear regime: value x, derivative 1 */
                continue;
            }
            if (dy)
                dy[i] *= sigmoid(bx);
            y[i] = log1p(exp(bx)) / a->p1;
        }
        break;
    }
}

void tpv_act_chain(const struct tpv_act *acts, size_t nacts, const double *x, double *y,
                   double *dy, size_t count)
{
    if (y != x)
        memmove(y, x, count * sizeof *y);
    if (dy)
        for (size_t i = 0; i < count; i++)
            dy[i] = 1.0;
    for (size_t k = 0; k < nacts; k++)
        act_apply(&acts[k], y, dy, count);
}

/* ---- spec parsing ---- */

enum entry_kind { E_LINEAR, E_ACT, E_IDENTITY, E_FLATTEN };

static const struct {
    const char *name;
    enum entry_kind entry;
    enum tpv_act_kind act;
    const char *keys[3]; /* accepted keys besides "type" */
} layer_types[] = {
    { "linear", E_LINEAR, 0, { "weight", "bias", NULL } },
    { "relu", E_ACT, TPV_ACT_RELU, { NULL } },
    { "leaky_relu", E_ACT, TPV_ACT_LEAKY_RELU, { "negative_slope", NULL } },
    { "tanh", E_ACT, TPV_ACT_TANH, { NULL } },
    { "sigmoid", E_ACT, TPV_ACT_SIGMOID, { NULL } },
    { "gelu", E_ACT, TPV_ACT_GELU, { NULL } },
    { "softplus", E_ACT, TPV_ACT_SOFTPLUS, { "beta", "threshold", NULL } },
    { "identity", E_IDENTITY, 0, { NULL } },
    { "flatten", E_FLATTEN, 0, { NULL } },
};
#define NTYPES (sizeof layer_types / sizeof layer_types[0])

struct bind_layer {
    const struct tpv_tensor *w, *b;
    const char *w_name, *b_name;
    size_t spec_index, act_first, nacts;
};

static int number_param(const json_t *layer, const char *key, double dflt, double lo, bool lo_open,
                        size_t i, double *out, struct tpv_err *err)
{
    char field[TPV_ERR_FIELD_MAX];
    const json_t *v = json_object_get(layer, key);
    snprintf(field, sizeof field, "layers[%zu].%s", i, key);
    if (!v) {
        *out = dflt;
        return TPV_OK;
    }
    double d = json_number_value(v);
    if (!json_is_number(v) || !isfinite(d) || (lo_open ? d <= lo : d < lo))
        return tpv_err_set(err, TPV_EINVAL, field, "%s must be a finite number %s %g", field,
                           lo_open ? ">" : ">=", lo);
    *out = d;
    return TPV_OK;
}

static const char *shape_str(char *buf, size_t cap, int rank, const uint64_t *shape)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < rank && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%llu", i ? ", " : "",
                                 (unsigned long long)shape[i]);
    return buf;
}

static int tensor_param(const json_t *layer, const char *key, size_t i, bool required,
                        const struct tpv_tensor *(*find)(void *, const char *), void *ctx,
                        const char **name, const struct tpv_tensor **t, struct tpv_err *err)
{
    char field[TPV_ERR_FIELD_MAX];
    const json_t *v = json_object_get(layer, key);
    snprintf(field, sizeof field, "layers[%zu].%s", i, key);
    *name = NULL;
    *t = NULL;
    if (!v || json_is_null(v)) {
        if (required)
            return tpv_err_set(err, TPV_EINVAL, field, "%s (a tensor name) is required", field);
        return TPV_OK;
    }
    if (!json_is_string(v) || json_string_length(v) == 0)
        return tpv_err_set(err, TPV_EINVAL, field, "%s must be a non-empty tensor name", field);
    *name = json_string_value(v);
    *t = find(ctx, *name);
    if (!*t)
        return tpv_err_set(err, TPV_EINVAL, field, "tensor '%s' (%s) is not in the weights",
                           *name, field);
    if (!dtype_is_float((*t)->dtype))
        return tpv_err_set(err, TPV_EINVAL, field,
                           "tensor '%s' has dtype %s; weights must be F16, BF16, F32 or F64",
                           *name, tpv_dtype_name((*t)->dtype));
    return TPV_OK;
}

static int check_keys(const json_t *obj, const char *const *allowed, const char *prefix,
                      struct tpv_err *err)
{
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, key) == 0;
        if (!ok) {
            /* An empty key still gets a visible field name (fuzzing found "" naming nothing). */
            char field[TPV_ERR_FIELD_MAX];
            snprintf(field, sizeof field, "%s%s", prefix, key[0] ? key : "\"\"");
            return tpv_err_set(err, TPV_EINVAL, field, "unknown key '%s'", field);
        }
    }
    return TPV_OK;
}

void tpv_mlp_free(struct tpv_mlp *m)
{
    if (!m)
        return;
    free(m->pre);
    free(m->layers);
    tpv_layout_free(&m->layout);
    free(m->params);
    free(m);
}

static int add_block(struct tpv_layout *lo, const char *name, const struct tpv_tensor *t,
                     const char *field, struct tpv_err *err)
{
    for (size_t i = 0; i < lo->nblocks; i++)
        if (strcmp(lo->blocks[i].name, name) == 0)
            return tpv_err_set(err, TPV_EINVAL, field,
                               "tensor '%s' is used twice; shared weights are not supported",
                               name);
    struct tpv_block *b = &lo->blocks[lo->nblocks];
    b->name = strdup(name);
    if (!b->name)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    lo->nblocks++;
    b->rank = t->rank;
    for (int r = 0; r < t->rank; r++)
        b->shape[r] = t->shape[r];
    b->offset = lo->p;
    b->count = t->numel;
    lo->p += t->numel;
    return TPV_OK;
}

/* Parses the spec into m (shapes, activations) and bl (tensors per linear layer). */
static int parse_spec(struct tpv_mlp *m, const json_t *spec,
                      const struct tpv_tensor *(*find)(void *, const char *), void *ctx,
                      struct bind_layer *bl, struct tpv_err *err)
{
    static const char *const top_keys[] = { "format", "input_shape", "layers", NULL };
    char field[TPV_ERR_FIELD_MAX], s1[96];
    int rc;

    if (!json_is_object(spec))
        return tpv_err_set(err, TPV_EINVAL, "spec", "the model spec must be a JSON object");
    if ((rc = check_keys(spec, top_keys, "", err)))
        return rc;
    const json_t *fmt = json_object_get(spec, "format");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), TPV_MLP_FORMAT) != 0)
        return tpv_err_set(err, TPV_EINVAL, "format", "format must be \"%s\"", TPV_MLP_FORMAT);

    const json_t *ishape = json_object_get(spec, "input_shape");
    size_t irank = json_array_size(ishape);
    if (!json_is_array(ishape) || irank < 1 || irank > TPV_MAX_RANK - 1)
        return tpv_err_set(err, TPV_EINVAL, "input_shape",
                           "input_shape must be an array of 1 to %d positive integers",
                           TPV_MAX_RANK - 1);
    uint64_t d = 1;
    for (size_t i = 0; i < irank; i++) {
        const json_t *v = json_array_get(ishape, i);
        snprintf(field, sizeof field, "input_shape[%zu]", i);
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            return tpv_err_set(err, TPV_EINVAL, field, "%s must be a positive integer", field);
        m->input_shape[i] = (uint64_t)json_integer_value(v);
        if (__builtin_mul_overflow(d, m->input_shape[i], &d) || d > TPV_MLP_MAX_WIDTH)
            return tpv_err_set(err, TPV_EINVAL, "input_shape",
                               "input_shape has more than %llu elements",
                               (unsigned long long)TPV_MLP_MAX_WIDTH);
    }
    m->input_rank = (int)irank;
    m->d = d;

    const json_t *layers = json_object_get(spec, "layers");
    size_t nspec = json_array_size(layers);
    if (!json_is_array(layers) || nspec < 1 || nspec > TPV_MLP_MAX_LAYERS)
        return tpv_err_set(err, TPV_EINVAL, "layers",
                           "layers must be an array of 1 to %d layer objects", TPV_MLP_MAX_LAYERS);

    /* Shape of one sample at the current stage. */
    int cur_rank = (int)irank;
    uint64_t cur[TPV_MAX_RANK];
    memcpy(cur, m->input_shape, irank * sizeof cur[0]);
    size_t nacts = 0;
    m->L = 0;
    for (size_t i = 0; i < nspec; i++) {
        const json_t *layer = json_array_get(layers, i);
        char prefix[48];
        snprintf(prefix, sizeof prefix, "layers[%zu].", i);
        snprintf(field, sizeof field, "layers[%zu]", i);
        if (!json_is_object(layer))
            return tpv_err_set(err, TPV_EINVAL, field, "%s must be an object", field);
        snprintf(field, sizeof field, "layers[%zu].type", i);
        const char *type = json_string_value(json_object_get(layer, "type"));
        if (!type)
            return tpv_err_set(err, TPV_EINVAL, field, "%s (a string) is required", field);
        size_t t = 0;
        while (t < NTYPES && strcmp(layer_types[t].name, type) != 0)
            t++;
        if (t == NTYPES)
            return tpv_err_set(err, TPV_EINVAL, field,
                               "unknown layer type '%s' (expected linear, relu, leaky_relu, tanh, "
                               "sigmoid, gelu, softplus, identity or flatten)", type);
        const char *allowed[4] = { "type" };
        memcpy(allowed + 1, layer_types[t].keys, sizeof layer_types[t].keys);
        if ((rc = check_keys(layer, allowed, prefix, err)))
            return rc;

        switch (layer_types[t].entry) {
        case E_IDENTITY:
            break;
        case E_FLATTEN: {
            uint64_t prod = 1;
            for (int r = 0; r < cur_rank; r++)
                prod *= cur[r]; /* bounded by input_shape's checked product */
            cur[0] = prod;
            cur_rank = 1;
            break;
        }
        case E_ACT: {
            struct tpv_act *a = &m->pre[nacts++];
            a->kind = layer_types[t].act;
            if (a->kind == TPV_ACT_LEAKY_RELU &&
                (rc = number_param(layer, "negative_slope", 0.01, -INFINITY, false, i, &a->p1,
                                   err)))
                return rc;
            if (a->kind == TPV_ACT_SOFTPLUS &&
                ((rc = number_param(layer, "beta", 1.0, 0.0, true, i, &a->p1, err)) ||
                 (rc = number_param(layer, "threshold", 20.0, -INFINITY, false, i, &a->p2, err))))
                return rc;
            if (m->L == 0)
                m->npre++;
            else
                bl[m->L - 1].nacts++;
            break;
        }
        case E_LINEAR: {
            struct bind_layer *b = &bl[m->L];
            struct tpv_mlp_layer *ml = &m->layers[m->L];
            snprintf(field, sizeof field, "layers[%zu].weight", i);
            if ((rc = tensor_param(layer, "weight", i, true, find, ctx, &b->w_name, &b->w, err)))
                return rc;
            if (b->w->rank != 2)
                return tpv_err_set(err, TPV_EINVAL, field,
                                   "weight '%s' must have rank 2 (out_features, in_features), "
                                   "not shape [%s]",
                                   b->w_name, shape_str(s1, sizeof s1, b->w->rank, b->w->shape));
            if (cur_rank != 1)
                return tpv_err_set(err, TPV_EINVAL, field,
                                   "linear layer %zu gets a sample of shape [%s]; add a flatten "
                                   "layer before it", i, shape_str(s1, sizeof s1, cur_rank, cur));
            ml->out = b->w->shape[0];
            ml->in = b->w->shape[1];
            if (ml->in != cur[0])
                return tpv_err_set(err, TPV_EINVAL, field,
                                   "weight '%s' has in_features %llu but the previous width is "
                                   "%llu", b->w_name, (unsigned long long)ml->in,
                                   (unsigned long long)cur[0]);
            if (ml->out < 1 || ml->out > TPV_MLP_MAX_WIDTH)
                return tpv_err_set(err, TPV_EINVAL, field,
                                   "weight '%s' has out_features %llu (allowed 1..%llu)",
                                   b->w_name, (unsigned long long)ml->out,
                                   (unsigned long long)TPV_MLP_MAX_WIDTH);
            snprintf(field, sizeof field, "layers[%zu].bias", i);
            if ((rc = tensor_param(layer, "bias", i, false, find, ctx, &b->b_name, &b->b, err)))
                return rc;
            if (b->b && (b->b->rank != 1 || b->b->shape[0] != ml->out))
                return tpv_err_set(err, TPV_EINVAL, field,
                                   "bias '%s' must have shape [%llu] (out_features of '%s'), "
                                   "not [%s]", b->b_name, (unsigned long long)ml->out,
                                   b->w_name, shape_str(s1, sizeof s1, b->b->rank, b->b->shape));
            b->spec_index = i;
            b->act_first = nacts;
            b->nacts = 0;
            cur[0] = ml->out;
            m->L++;
            break;
        }
        }
    }
    if (m->L == 0)
        return tpv_err_set(err, TPV_EINVAL, "layers", "the spec has no linear layer");
    m->K = cur[0];
    return TPV_OK;
}

int tpv_mlp_bind_shapes(struct tpv_mlp **out, const json_t *spec,
                        const struct tpv_tensor *(*find)(void *ctx, const char *name), void *ctx,
                        struct tpv_err *err)
{
    int rc;
    *out = NULL;
    size_t nspec = json_is_object(spec) ? json_array_size(json_object_get(spec, "layers")) : 0;
    size_t cap = nspec < 1 ? 1 : nspec > TPV_MLP_MAX_LAYERS ? 1 : nspec; /* parse refuses more */
    struct tpv_mlp *m = calloc(1, sizeof *m);
    struct bind_layer *bl = calloc(cap, sizeof *bl);
    if (m) {
        m->pre = calloc(cap, sizeof *m->pre);
        m->layers = calloc(cap, sizeof *m->layers);
        m->layout.blocks = calloc(2 * cap, sizeof *m->layout.blocks);
    }
    if (!m || !bl || !m->pre || !m->layers || !m->layout.blocks) {
        rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        goto fail;
    }
    if ((rc = parse_spec(m, spec, find, ctx, bl, err)))
        goto fail;

    /* Layout: weight then bias per layer, in layer order. */
    for (size_t l = 0; l < m->L; l++) {
        struct tpv_mlp_layer *ml = &m->layers[l];
        char field[TPV_ERR_FIELD_MAX];
        snprintf(field, sizeof field, "layers[%zu].weight", bl[l].spec_index);
        ml->w_off = m->layout.p;
        if ((rc = add_block(&m->layout, bl[l].w_name, bl[l].w, field, err)))
            goto fail;
        ml->w_name = m->layout.blocks[m->layout.nblocks - 1].name;
        if (bl[l].b) {
            snprintf(field, sizeof field, "layers[%zu].bias", bl[l].spec_index);
            ml->b_off = m->layout.p;
            if ((rc = add_block(&m->layout, bl[l].b_name, bl[l].b, field, err)))
                goto fail;
            ml->b_name = m->layout.blocks[m->layout.nblocks - 1].name;
        }
        ml->spec_index = bl[l].spec_index;
        ml->acts = m->pre + bl[l].act_first;
        ml->nacts = bl[l].nacts;
    }
    if (m->layout.p == 0 || m->layout.p > (uint64_t)SIZE_MAX / sizeof(double)) {
        rc = tpv_err_set(err, TPV_EINVAL, "layers", "the model has %llu parameters",
                         (unsigned long long)m->layout.p);
        goto fail;
    }
    free(bl);
    *out = m;
    return TPV_OK;
fail:
    free(bl);
    tpv_mlp_free(m);
    return rc;
}

/* Converts one parameter tensor into dst, refusing the first non-finite value by index. */
static int load_tensor(const struct tpv_mlp_layer *ml, const char *key, const char *name,
                       const struct tpv_tensor *t, uint64_t count, double *dst,
                       struct tpv_err *err)
{
    char field[TPV_ERR_FIELD_MAX];
    snprintf(field, sizeof field, "layers[%zu].%s", ml->spec_index, key);
    if (!t || t->numel != count || !dtype_is_float(t->dtype))
        return tpv_err_set(err, TPV_EINVAL, field, "tensor '%s' (%s) is missing or changed",
                           name, field);
    tpv_tensor_read_f64(t, 0, count, dst);
    for (uint64_t j = 0; j < count; j++)
        if (!isfinite(dst[j]))
            return tpv_err_set(err, TPV_EFORMAT, field,
                               "tensor '%s' has a non-finite value (%g) at index %llu", name,
                               dst[j], (unsigned long long)j);
    return TPV_OK;
}

int tpv_mlp_load_weights(struct tpv_mlp *m,
                         const struct tpv_tensor *(*find)(void *ctx, const char *name), void *ctx,
                         struct tpv_err *err)
{
    if (m->params)
        return TPV_OK;
    double *params = malloc(m->layout.p * sizeof *params);
    if (!params)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory for %llu parameters",
                           (unsigned long long)m->layout.p);
    for (size_t l = 0; l < m->L; l++) {
        const struct tpv_mlp_layer *ml = &m->layers[l];
        uint64_t nb = ml->b_name ? ml->out : 0;
        int rc = load_tensor(ml, "weight", ml->w_name, find(ctx, ml->w_name), ml->in * ml->out,
                             params + ml->w_off, err);
        if (rc == TPV_OK && ml->b_name)
            rc = load_tensor(ml, "bias", ml->b_name, find(ctx, ml->b_name), nb,
                             params + ml->b_off, err);
        if (rc != TPV_OK) {
            free(params);
            return rc;
        }
    }
    m->params = params;
    for (size_t l = 0; l < m->L; l++) {
        struct tpv_mlp_layer *ml = &m->layers[l];
        ml->W = params + ml->w_off;
        ml->b = ml->b_name ? params + ml->b_off : NULL;
    }
    return TPV_OK;
}

int tpv_mlp_bind(struct tpv_mlp **out, const json_t *spec,
                 const struct tpv_tensor *(*find)(void *ctx, const char *name), void *ctx,
                 struct tpv_err *err)
{
    int rc = tpv_mlp_bind_shapes(out, spec, find, ctx, err);
    if (rc == TPV_OK && (rc = tpv_mlp_load_weights(*out, find, ctx, err)) != TPV_OK) {
        tpv_mlp_free(*out);
        *out = NULL;
    }
    return rc;
}

const struct tpv_layout *tpv_mlp_layout(const struct tpv_mlp *m)
{
    return &m->layout;
}

const double *tpv_mlp_param_values(const struct tpv_mlp *m)
{
    return m->params;
}

int tpv_mlp_check_input_shape(const struct tpv_mlp *m, const struct tpv_tensor *inputs,
                              struct tpv_err *err)
{
    char want[96], got[128];
    shape_str(want, sizeof want, m->input_rank, m->input_shape);
    if (!dtype_is_float(inputs->dtype))
        return tpv_err_set(err, TPV_EINVAL, "inputs",
                           "inputs have dtype %s; expected F16, BF16, F32 or F64",
                           tpv_dtype_name(inputs->dtype));
    bool ok = inputs->rank == m->input_rank + 1 && inputs->shape[0] >= 1;
    for (int r = 0; ok && r < m->input_rank; r++)
        ok = inputs->shape[r + 1] == m->input_shape[r];
    if (!ok)
        return tpv_err_set(err, TPV_EINVAL, "inputs",
                           "inputs have shape [%s] but the spec needs (n, %s) with n >= 1",
                           shape_str(got, sizeof got, inputs->rank, inputs->shape), want);
    return TPV_OK;
}

int tpv_mlp_check_inputs(const struct tpv_mlp *m, const struct tpv_tensor *inputs,
                         struct tpv_err *err)
{
    int rc = tpv_mlp_check_input_shape(m, inputs, err);
    if (rc != TPV_OK)
        return rc;
    double buf[4096];
    for (uint64_t first = 0; first < inputs->numel; first += 4096) {
        uint64_t cnt = inputs->numel - first < 4096 ? inputs->numel - first : 4096;
        tpv_tensor_read_f64(inputs, first, cnt, buf);
        for (uint64_t i = 0; i < cnt; i++)
            if (!isfinite(buf[i]))
                return tpv_err_set(err, TPV_EFORMAT, "inputs",
                                   "inputs: sample %llu element %llu is not finite (%g)",
                                   (unsigned long long)((first + i) / m->d),
                                   (unsigned long long)((first + i) % m->d), buf[i]);
    }
    return TPV_OK;
}

void tpv_mlp_read_inputs(const struct tpv_mlp *m, const struct tpv_tensor *inputs, uint64_t first,
                         size_t rows, double *out)
{
    tpv_tensor_read_f64(inputs, first * m->d, (uint64_t)rows * m->d, out);
}

/* ---- forward ---- */

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    uint64_t s;
    return __builtin_add_overflow(a, b, &s) ? UINT64_MAX : s;
}

static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    uint64_t s;
    return __builtin_mul_overflow(a, b, &s) ? UINT64_MAX : s;
}

uint64_t tpv_mlp_ws_bytes(const struct tpv_mlp *m, size_t cap)
{
    uint64_t elems = m->d;
    for (size_t l = 0; l < m->L; l++)
        elems = sat_add(elems, sat_mul(3, m->layers[l].out));
    return sat_add(sat_mul(sat_mul(elems, cap), sizeof(double)), 3 * m->L * sizeof(double *));
}

void tpv_mlp_ws_free(struct tpv_mlp_ws *ws)
{
    if (!ws)
        return;
    free(ws->a0);
    for (size_t l = 0; l < ws->nlayers_; l++) { /* after a failed init any array may be NULL */
        free(ws->z ? ws->z[l] : NULL);
        free(ws->a ? ws->a[l] : NULL);
        free(ws->dphi ? ws->dphi[l] : NULL);
    }
    free(ws->z);
    free(ws->a);
    free(ws->dphi);
    memset(ws, 0, sizeof *ws);
}

int tpv_mlp_ws_init(struct tpv_mlp_ws *ws, const struct tpv_mlp *m, size_t cap,
                    struct tpv_err *err)
{
    memset(ws, 0, sizeof *ws);
    if (cap == 0 || tpv_mlp_ws_bytes(m, cap) == UINT64_MAX)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "workspace too large");
    ws->cap = cap;
    ws->nlayers_ = m->L;
    ws->a0 = malloc(cap * m->d * sizeof(double));
    ws->z = calloc(m->L, sizeof *ws->z);
    ws->a = calloc(m->L, sizeof *ws->a);
    ws->dphi = calloc(m->L, sizeof *ws->dphi);
    bool ok = ws->a0 && ws->z && ws->a && ws->dphi;
    for (size_t l = 0; ok && l < m->L; l++) {
        size_t sz = cap * m->layers[l].out * sizeof(double);
        ws->z[l] = malloc(sz);
        ws->a[l] = malloc(sz);
        ws->dphi[l] = malloc(sz);
        ok = ws->z[l] && ws->a[l] && ws->dphi[l];
    }
    if (!ok) {
        tpv_mlp_ws_free(ws);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory for a batch of %zu samples", cap);
    }
    return TPV_OK;
}

void tpv_mlp_ws_forward_part(const struct tpv_mlp *m, struct tpv_mlp_ws *ws, const double *x,
                             size_t r0, size_t rows)
{
    tpv_act_chain(m->pre, m->npre, x + r0 * m->d, ws->a0 + r0 * m->d, NULL, rows * m->d);
    const double *prev = ws->a0 + r0 * m->d;
    for (size_t l = 0; l < m->L; l++) {
        const struct tpv_mlp_layer *ml = &m->layers[l];
        int in = (int)ml->in, out = (int)ml->out;
        double *z = ws->z[l] + r0 * ml->out;
        if (ml->b)
            for (size_t r = 0; r < rows; r++)
                memcpy(z + r * ml->out, ml->b, ml->out * sizeof *z);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, out, in, 1.0, prev, in,
                    ml->W, in, ml->b ? 1.0 : 0.0, z, out);
        tpv_act_chain(ml->acts, ml->nacts, z, ws->a[l] + r0 * ml->out,
                      ws->dphi[l] + r0 * ml->out, rows * ml->out);
        prev = ws->a[l] + r0 * ml->out;
    }
}

double tpv_mlp_sample_flops(const struct tpv_mlp *m)
{
    double f = (double)m->d * (double)(m->npre + 1);
    for (size_t l = 0; l < m->L; l++)
        f += 2.0 * (double)m->layers[l].in * (double)m->layers[l].out +
             (double)m->layers[l].out * (double)(m->layers[l].nacts + 1) * 4.0;
    return f;
}

struct fwd_split {
    const struct tpv_mlp *m;
    struct tpv_mlp_ws *ws;
    const double *x;
    size_t rows;
};

static void fwd_part(void *ctx, int t, int nt)
{
    const struct fwd_split *f = ctx;
    uint64_t r0, nr;
    tpv_split_range(f->rows, TPV_SPLIT_ALIGN, t, nt, &r0, &nr);
    if (nr)
        tpv_mlp_ws_forward_part(f->m, f->ws, f->x, (size_t)r0, (size_t)nr);
}

void tpv_mlp_ws_forward(const struct tpv_mlp *m, struct tpv_mlp_ws *ws, const double *x,
                        size_t rows)
{
    ws->rows = rows;
    struct fwd_split f = { m, ws, x, rows };
    int nt = tpv_split_threads((double)rows * tpv_mlp_sample_flops(m));
    tpv_parallel_run(nt, fwd_part, &f);
}

int tpv_mlp_forward(const struct tpv_mlp *m, const double *x, size_t n, double *out)
{
    struct tpv_mlp_ws ws;
    size_t cap = n < FWD_BATCH ? n : FWD_BATCH;
    if (n == 0)
        return TPV_OK;
    int rc = tpv_mlp_ws_init(&ws, m, cap, NULL);
    if (rc)
        return rc;
    for (size_t first = 0; first < n; first += cap) {
        size_t rows = n - first < cap ? n - first : cap;
        tpv_mlp_ws_forward(m, &ws, x + first * m->d, rows);
        memcpy(out + first * m->K, ws.a[m->L - 1], rows * m->K * sizeof *out);
    }
    tpv_mlp_ws_free(&ws);
    return TPV_OK;
}
