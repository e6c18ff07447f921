/* score.c: the core's entry points for the service (score.h): open a candidate's files, check that
 * every noise model of the study can be served, and score it with core/estimate.c.
 *
 * Opening is one step, open_sources(), with a branch per source kind: Jacobian dumps (core/dump.c
 * over mapped files), model checkpoints (a spec bound to its weights, core/mlp.c, seen through
 * core/mlp_source.c over the study's input sets) and ONNX graphs (core/onnx_model.c, seen through
 * core/onnx_source.c over the same input sets; the weights are the graph's parameters).
 * Everything after opening is source-blind.
 *
 * A graph is parsed in full at both depths: the loader's checks (operators, attributes,
 * non-finite initializers, external data) are what a submission must refuse, and they need the
 * initializers' values.
 *
 * An open has two depths.  OPEN_HEADERS (submission, on an HTTP thread) reads headers, shapes and
 * names only: no value is read, no weight converted, nothing copied, so it costs no pass over the
 * data; the memory plan is made from the structure.  OPEN_FULL (the worker) also scans every
 * value (non-finite values, variances < 0, masks other than 0/1 fail the job naming the tensor
 * and the index) and loads what the computation reads. */
#include "core/score.h"

#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/dump.h"
#include "core/estimate.h"
#include "core/linalg.h"
#include "core/jbr.h"
#include "core/onnx_jbr.h"
#include "core/json_alloc.h"
#include "core/mlp.h"
#include "core/mlp_source.h"
#include "core/onnx_model.h"
#include "core/onnx_source.h"
#include "core/tensor.h"

const char *tpv_split_name(enum tpv_split split)
{
    return split == TPV_SPLIT_PROBE ? "probe" : "fit";
}

const char *tpv_source_kind_name(enum tpv_source_kind kind)
{
    switch (kind) {
    case TPV_SOURCE_MODEL:
        return "model";
    case TPV_SOURCE_JACOBIAN:
        return "jacobian";
    case TPV_SOURCE_ONNX:
        return "onnx";
    }
    return "unknown";
}

enum open_mode { OPEN_HEADERS, OPEN_FULL };

/* Everything a job holds open; released by close_sources. */
struct sources {
    enum open_mode mode;
    struct tpv_tensor_file *weights_file;
    struct tpv_mlp *mlp;                         /* model candidates */
    struct tpv_onnx_model *onnx;                 /* onnx candidates */
    bool own_weights; /* the candidate carries its weights (a model's, a graph's parameters) */
    struct tpv_tensor_file *fit_x_file, *probe_x_file;
    const struct tpv_tensor *fit_x;              /* the fit inputs of a model candidate */
    struct tpv_jsrc *fit, *probe;
    const double *w; /* p weights in column order (named layout and weights), else NULL */
    double *w_owned; /* w when gathered from a dump's weights file (a model's are its params) */
    bool has_wrange;
    double wmin, wmax;
    size_t nmodels;
    struct tpv_tensor_file **blob_files; /* per model: variances or mask file */
    double **arrays;                     /* per model: p values in column order */
    struct tpv_model_inputs *extra;
    /* What a full open holds beyond mapped files (converted weights, per-model arrays), counted
     * from the structure so that both depths plan the same bytes. */
    uint64_t held_bytes;
};

static void hold(struct sources *s, uint64_t p)
{
    s->held_bytes = tpv_sat_add(s->held_bytes, tpv_sat_mul(p, sizeof(double)));
}

static void close_sources(struct sources *s)
{
    /* Sources first: they point into the model and the mapped input files. */
    tpv_jsrc_free(s->fit);
    tpv_jsrc_free(s->probe);
    tpv_mlp_free(s->mlp);
    tpv_onnx_model_free(s->onnx);
    tpv_tensor_file_close(s->fit_x_file);
    tpv_tensor_file_close(s->probe_x_file);
    tpv_tensor_file_close(s->weights_file);
    free(s->w_owned);
    for (size_t i = 0; i < s->nmodels; i++) {
        if (s->blob_files)
            tpv_tensor_file_close(s->blob_files[i]);
        if (s->arrays)
            free(s->arrays[i]);
    }
    free(s->blob_files);
    free(s->arrays);
    free(s->extra);
    memset(s, 0, sizeof *s);
}

static bool float_dtype(enum tpv_dtype t)
{
    return t == TPV_DTYPE_F16 || t == TPV_DTYPE_BF16 || t == TPV_DTYPE_F32 || t == TPV_DTYPE_F64;
}

/* The weights in the dump's column order (named layout), or their global range (flat dump).
 * OPEN_HEADERS checks names, sizes and dtypes only. */
static int gather_weights(struct sources *s, struct tpv_err *err)
{
    const struct tpv_layout *L = &s->fit->layout;
    const struct tpv_tensor_file *wf = s->weights_file;
    if (L->nblocks == 0) {
        double lo = INFINITY, hi = -INFINITY;
        double buf[1024];
        for (size_t i = 0; s->mode == OPEN_FULL && i < tpv_tensor_file_count(wf); i++) {
            const struct tpv_tensor *t = tpv_tensor_file_at(wf, i);
            if (!float_dtype(t->dtype))
                continue;
            int rc = tpv_tensor_check_finite(t, err);
            if (rc != TPV_OK)
                return rc;
            for (uint64_t e = 0; e < t->numel; e += 1024) {
                uint64_t k = t->numel - e < 1024 ? t->numel - e : 1024;
                tpv_tensor_read_f64(t, e, k, buf);
                for (uint64_t j = 0; j < k; j++) {
                    lo = buf[j] < lo ? buf[j] : lo;
                    hi = buf[j] > hi ? buf[j] : hi;
                }
            }
        }
        if (lo <= hi) {
            s->has_wrange = true;
            s->wmin = lo;
            s->wmax = hi;
        }
        return TPV_OK;
    }
    for (size_t b = 0; b < L->nblocks; b++) {
        const struct tpv_block *bl = &L->blocks[b];
        const struct tpv_tensor *t = tpv_tensor_file_find(wf, bl->name);
        if (!t || t->numel != bl->count || !float_dtype(t->dtype))
            return tpv_err_set(err, TPV_EINVAL, "weights",
                               "weights: tensor '%s' of the dump is missing or has another size",
                               bl->name);
    }
    hold(s, L->p);
    if (s->mode == OPEN_HEADERS)
        return TPV_OK;
    s->w = s->w_owned = malloc((size_t)L->p * sizeof *s->w_owned);
    if (!s->w_owned)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    for (size_t b = 0; b < L->nblocks; b++) {
        const struct tpv_block *bl = &L->blocks[b];
        const struct tpv_tensor *t = tpv_tensor_file_find(wf, bl->name);
        int rc = tpv_tensor_check_finite(t, err);
        if (rc != TPV_OK) {
            tpv_err_prefix(err, "weights");
            return rc;
        }
        tpv_tensor_read_f64(t, 0, bl->count, s->w_owned + bl->offset);
    }
    return TPV_OK;
}

static int open_jacobian(const struct tpv_candidate_files *c, struct sources *s,
                         struct tpv_err *err)
{
    if (!c->jac_fit)
        return tpv_err_set(err, TPV_EINVAL, "jacobian.fit", "a Jacobian candidate needs a fit dump");
    int rc;
    if (c->weights) {
        rc = tpv_tensor_file_open(&s->weights_file, c->weights, err);
        if (rc != TPV_OK) {
            tpv_err_prefix(err, "weights");
            return rc;
        }
    }
    int (*open_dump)(struct tpv_jsrc **, const char *, const char *const *, size_t,
                     const struct tpv_tensor_file *, struct tpv_err *) =
        s->mode == OPEN_FULL ? tpv_dump_open : tpv_dump_open_headers;
    rc = open_dump(&s->fit, c->jac_fit, c->layout, c->nlayout, s->weights_file, err);
    if (rc != TPV_OK) {
        tpv_err_prefix(err, "jacobian.fit");
        if (err && (!err->field[0] || rc == TPV_EIO))
            snprintf(err->field, sizeof err->field, "jacobian.fit");
        return rc;
    }
    if (c->jac_probe) {
        rc = open_dump(&s->probe, c->jac_probe, c->layout, c->nlayout, s->weights_file, err);
        if (rc != TPV_OK) {
            tpv_err_prefix(err, "jacobian.probe");
            return rc;
        }
        rc = tpv_jsrc_check_pair(s->fit, s->probe, err);
        if (rc != TPV_OK)
            return rc;
    }
    return s->weights_file ? gather_weights(s, err) : TPV_OK;
}

static const struct tpv_tensor *find_weight(void *ctx, const char *name)
{
    return tpv_tensor_file_find(ctx, name);
}

/* Rewrites err->field as "<prefix>.<field>" (or just prefix) so the service's 400 names the
 * request field, e.g. "model.spec.layers[3].type". */
static void err_field_prefix(struct tpv_err *err, const char *prefix)
{
    if (!err)
        return;
    char old[TPV_ERR_FIELD_MAX];
    memcpy(old, err->field, sizeof old);
    if (old[0])
        snprintf(err->field, sizeof err->field, "%.40s.%.80s", prefix, old);
    else
        snprintf(err->field, sizeof err->field, "%s", prefix);
}

/* An input set: the file's only tensor (or the one called "inputs"), checked against the model's
 * input_shape (a graph's is checked by tpv_onnx_source_new) and, for a full open, for finite
 * values. */
static int open_input_set(enum open_mode mode, const char *path, const char *field,
                          const struct tpv_mlp *m, struct tpv_tensor_file **file,
                          const struct tpv_tensor **x, struct tpv_err *err)
{
    int rc = tpv_tensor_file_open(file, path, err);
    if (rc == TPV_OK) {
        *x = tpv_tensor_file_count(*file) == 1 ? tpv_tensor_file_at(*file, 0)
                                                : tpv_tensor_file_find(*file, "inputs");
        if (!*x)
            rc = tpv_err_set(err, TPV_EINVAL, NULL,
                             "holds %zu tensors: an input set is one tensor (or one named "
                             "\"inputs\")", tpv_tensor_file_count(*file));
    }
    if (rc == TPV_OK && m)
        rc = mode == OPEN_FULL ? tpv_mlp_check_inputs(m, *x, err)
                               : tpv_mlp_check_input_shape(m, *x, err);
    else if (rc == TPV_OK && mode == OPEN_FULL)
        rc = tpv_tensor_check_finite(*x, err);
    if (rc != TPV_OK) {
        tpv_err_prefix(err, "%s", field);
        err_field_prefix(err, field);
    }
    return rc;
}

/* A checkpoint: the spec bound to its weights, and a structured source per input set. */
static int open_model(const struct tpv_candidate_files *c, struct sources *s, struct tpv_err *err)
{
    if (!c->spec || !c->weights)
        return tpv_err_set(err, TPV_EINVAL, c->spec ? "model.weights" : "model.spec",
                           "a model candidate needs a spec and weights");
    if (!c->fit_inputs)
        return tpv_err_set(err, TPV_EPRECONDITION, "inputs.fit",
                           "the study has no fit set: PUT /v1/studies/{sid}/inputs/fit first");
    int rc = tpv_tensor_file_open(&s->weights_file, c->weights, err);
    if (rc != TPV_OK) {
        tpv_err_prefix(err, "model.weights");
        err_field_prefix(err, "model.weights");
        return rc;
    }
    rc = s->mode == OPEN_FULL ? tpv_mlp_bind(&s->mlp, c->spec, find_weight, s->weights_file, err)
                              : tpv_mlp_bind_shapes(&s->mlp, c->spec, find_weight,
                                                    s->weights_file, err);
    if (rc != TPV_OK) {
        err_field_prefix(err, "model.spec");
        return rc;
    }
    hold(s, tpv_mlp_layout(s->mlp)->p); /* the converted parameters */
    rc = open_input_set(s->mode, c->fit_inputs, "inputs.fit", s->mlp, &s->fit_x_file, &s->fit_x,
                        err);
    if (rc == TPV_OK)
        rc = tpv_mlp_source_open(&s->fit, s->mlp, s->fit_x, err);
    if (rc == TPV_OK && c->probe_inputs) {
        const struct tpv_tensor *probe_x;
        rc = open_input_set(s->mode, c->probe_inputs, "inputs.probe", s->mlp, &s->probe_x_file,
                            &probe_x, err);
        if (rc == TPV_OK)
            rc = tpv_mlp_source_open(&s->probe, s->mlp, probe_x, err);
    }
    /* The weights in column order, for quantization ranges and prune rules: the model's own
     * parameters, not a copy (NULL for a headers-only open). */
    s->w = tpv_mlp_param_values(s->mlp);
    s->own_weights = true;
    return rc;
}

/* Reads a whole file through a private mapping for the ONNX parser (which copies what it keeps,
 * so the mapping is released right after). */
static int map_file(const char *path, void **buf, size_t *len, struct tpv_err *err)
{
    *buf = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        return tpv_err_set(err, TPV_EIO, NULL, "%s: cannot open", path);
    }
    if (st.st_size <= 0) {
        close(fd);
        return tpv_err_set(err, TPV_EFORMAT, NULL, "the model file is empty");
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return tpv_err_set(err, TPV_EIO, NULL, "%s: cannot map", path);
    *buf = m;
    *len = (size_t)st.st_size;
    return TPV_OK;
}

/* A loader or planner error becomes a 400 on the request's field: "model.parameters" for the
 * parameter choice, "model.onnx" for everything else; the message keeps the node or tensor the
 * loader named. */
static int onnx_field(int rc, struct tpv_err *err)
{
    if (!err || rc == TPV_OK || rc == TPV_ENOMEM)
        return rc;
    bool params =
        strcmp(err->field, "parameters") == 0 || strcmp(err->field, "tpv.parameters") == 0;
    const char *field = params ? "model.parameters" : "model.onnx";
    tpv_err_prefix(err, "%s", field);
    snprintf(err->field, sizeof err->field, "%s", field);
    return rc;
}

/* The input set's per-sample shape against the graph input's declared one (dynamic dimensions
 * match anything), so the 400 gives both shapes rather than a planner message. */
static int check_graph_input(const struct tpv_onnx_model *m, const struct tpv_tensor *x,
                             const char *field, struct tpv_err *err)
{
    const struct tpv_onnx_tensor *g = &m->values[m->inputs[0]].t;
    bool same = x->rank == g->rank;
    for (int d = 1; same && d < g->rank; d++)
        same = g->shape[d] < 0 || (uint64_t)g->shape[d] == x->shape[d];
    if (same)
        return TPV_OK;
    char want[160] = "", have[160] = "";
    size_t wl = 0, hl = 0;
    for (int d = 0; d < g->rank && wl < sizeof want; d++) {
        if (g->shape[d] < 0)
            wl += (size_t)snprintf(want + wl, sizeof want - wl, "%s%s", d ? ", " : "",
                                   d ? "?" : "batch");
        else
            wl += (size_t)snprintf(want + wl, sizeof want - wl, "%s%lld", d ? ", " : "",
                                   (long long)g->shape[d]);
    }
    for (int d = 0; d < x->rank && hl < sizeof have; d++)
        hl += (size_t)snprintf(have + hl, sizeof have - hl, "%s%llu", d ? ", " : "",
                               (unsigned long long)x->shape[d]);
    return tpv_err_set(err, TPV_EINVAL, "model.onnx",
                       "model.onnx: the graph input '%s' has shape (%s) but the study's %s is "
                       "(%s)", m->values[m->inputs[0]].name, want, field, have);
}

/* The graph's parameters in column order (m->params order, each row-major), as the weights of
 * quantization ranges and prune rules. */
static int gather_onnx_weights(struct sources *s, struct tpv_err *err)
{
    const struct tpv_layout *L = &s->fit->layout;
    hold(s, L->p);
    if (s->mode == OPEN_HEADERS)
        return TPV_OK;
    s->w = s->w_owned = malloc((size_t)L->p * sizeof *s->w_owned);
    if (!s->w_owned)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    for (size_t j = 0; j < s->onnx->nparams; j++)
        memcpy(s->w_owned + L->blocks[j].offset, s->onnx->values[s->onnx->params[j]].t.data,
               L->blocks[j].count * sizeof *s->w_owned);
    return TPV_OK;
}

/* A graph bound to the study's input sets: the loader's checks (operators, attributes,
 * initializers, parameters), the plan over each input set (shapes chain, the input set matches
 * the graph input), a graph source per set. */
static int open_onnx(const struct tpv_candidate_files *c, struct sources *s, struct tpv_err *err)
{
    if (!c->onnx)
        return tpv_err_set(err, TPV_EINVAL, "model.onnx", "an ONNX candidate needs model.onnx");
    if (!c->fit_inputs)
        return tpv_err_set(err, TPV_EPRECONDITION, "inputs.fit",
                           "the study has no fit set: PUT /v1/studies/{sid}/inputs/fit first");
    void *buf;
    size_t len;
    int rc = map_file(c->onnx, &buf, &len, err);
    if (rc == TPV_OK) {
        rc = tpv_onnx_model_load(&s->onnx, buf, len, c->nparams ? c->params : NULL, c->nparams,
                                 err);
        munmap(buf, len);
    }
    if (rc != TPV_OK)
        return onnx_field(rc, err);
    uint64_t held = 0; /* the initializers, converted to float64 by the loader */
    for (size_t v = 0; v < s->onnx->nvalues; v++)
        if (s->onnx->values[v].kind == TPV_ONNX_VINIT)
            held = tpv_sat_add(held, s->onnx->values[v].t.numel);
    hold(s, held);
    const struct tpv_tensor *x;
    rc = open_input_set(s->mode, c->fit_inputs, "inputs.fit", NULL, &s->fit_x_file, &x, err);
    if (rc == TPV_OK) {
        s->fit_x = x;
        rc = check_graph_input(s->onnx, x, "inputs.fit", err);
        if (rc != TPV_OK)
            return rc;
        rc = tpv_onnx_source_new(&s->fit, s->onnx, x, err);
        if (rc != TPV_OK)
            tpv_err_prefix(err, "inputs.fit");
        onnx_field(rc, err);
    }
    if (rc == TPV_OK && c->probe_inputs) {
        rc = open_input_set(s->mode, c->probe_inputs, "inputs.probe", NULL, &s->probe_x_file, &x,
                            err);
        if (rc == TPV_OK)
            rc = check_graph_input(s->onnx, x, "inputs.probe", err);
        if (rc == TPV_OK && (rc = tpv_onnx_source_new(&s->probe, s->onnx, x, err)) != TPV_OK) {
            tpv_err_prefix(err, "inputs.probe");
            onnx_field(rc, err);
        }
    }
    if (rc == TPV_OK) {
        s->own_weights = true;
        rc = gather_onnx_weights(s, err);
    }
    return rc;
}

/* Opens the candidate's Jacobian sources and weights.  One branch per source kind. */
static int open_sources(const struct tpv_candidate_files *c, enum open_mode mode,
                        struct sources *s, struct tpv_err *err)
{
    memset(s, 0, sizeof *s);
    s->mode = mode;
    switch (c->source) {
    case TPV_SOURCE_MODEL:
        return open_model(c, s, err);
    case TPV_SOURCE_JACOBIAN:
        return open_jacobian(c, s, err);
    case TPV_SOURCE_ONNX:
        return open_onnx(c, s, err);
    }
    return tpv_err_set(err, TPV_EINVAL, "source", "unknown candidate source");
}

static int model_err(struct tpv_err *err, size_t i, const struct tpv_noise *nm, const char *fmt,
                     ...) __attribute__((format(printf, 4, 5)));
static int model_err(struct tpv_err *err, size_t i, const struct tpv_noise *nm, const char *fmt,
                     ...)
{
    char field[48], what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(field, sizeof field, "noise_models[%zu]", i);
    return tpv_err_set(err, TPV_EINVAL, field, "noise model '%s' (%s) %s", nm->name,
                       tpv_noise_kind_name(nm->kind), what);
}

/* The first value of a variances (finite, >= 0) or mask (0 or 1) tensor that is not allowed,
 * with its index; TPV_OK when all are. */
static int check_named_values(const double *v, uint64_t count, bool variances, size_t i,
                              const struct tpv_noise *nm, const char *name, struct tpv_err *err)
{
    for (uint64_t e = 0; e < count; e++) {
        if (!isfinite(v[e]))
            return model_err(err, i, nm, "has a non-finite %s (%g) at index %llu of '%s'",
                             variances ? "variance" : "mask value", v[e], (unsigned long long)e,
                             name);
        if (variances && v[e] < 0)
            return model_err(err, i, nm, "has a negative variance (%g) at index %llu of '%s'",
                             v[e], (unsigned long long)e, name);
        if (!variances && v[e] != 0 && v[e] != 1)
            return model_err(err, i, nm, "has a mask value %g at index %llu of '%s' (a mask "
                             "holds 0 or 1)", v[e], (unsigned long long)e, name);
    }
    return TPV_OK;
}

/* A variances or mask blob: tensors named like the dump's blocks with the same shapes, read into
 * p values in column order by a full open.  Variances must cover every block and be finite and
 * >= 0; a mask holds 0 or 1 and leaves absent blocks unpruned. */
static int load_named_values(struct sources *s, const struct tpv_candidate_files *c, size_t i,
                             const struct tpv_noise *nm, const char *digest, bool variances,
                             struct tpv_err *err)
{
    const struct tpv_layout *L = &s->fit->layout;
    const char *path = c->blob_path ? c->blob_path(c->blob_ctx, digest) : NULL;
    if (!path)
        return model_err(err, i, nm, "refers to blob %s, which is not available", digest);
    int rc = tpv_tensor_file_open(&s->blob_files[i], path, err);
    if (rc == TPV_ENOMEM) /* the blob is fine: the job may succeed on a retry */
        return rc;
    if (rc != TPV_OK)
        return model_err(err, i, nm, "has an unreadable blob: %s", tpv_err_message(err));
    struct tpv_tensor_file *f = s->blob_files[i];
    for (size_t k = 0; k < tpv_tensor_file_count(f); k++) {
        const struct tpv_tensor *t = tpv_tensor_file_at(f, k);
        long b = tpv_layout_find(L, t->name);
        if (b < 0)
            return model_err(err, i, nm, "names tensor '%s', which is not a parameter of the dump",
                             t->name);
        const struct tpv_block *bl = &L->blocks[b];
        bool same = t->rank == bl->rank;
        for (int d = 0; same && d < t->rank; d++)
            same = t->shape[d] == bl->shape[d];
        if (!same)
            return model_err(err, i, nm, "has tensor '%s' with another shape than the weights",
                             t->name);
    }
    for (size_t b = 0; variances && b < L->nblocks; b++)
        if (!tpv_tensor_file_find(f, L->blocks[b].name))
            return model_err(err, i, nm, "has no variances for tensor '%s'", L->blocks[b].name);
    hold(s, L->p);
    if (s->mode == OPEN_HEADERS)
        return TPV_OK;
    double *a = calloc((size_t)L->p, sizeof *a);
    if (!a)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    s->arrays[i] = a;
    for (size_t k = 0; k < tpv_tensor_file_count(f); k++) {
        const struct tpv_tensor *t = tpv_tensor_file_at(f, k);
        const struct tpv_block *bl = &L->blocks[tpv_layout_find(L, t->name)];
        tpv_tensor_read_f64(t, 0, bl->count, a + bl->offset);
        rc = check_named_values(a + bl->offset, bl->count, variances, i, nm, t->name, err);
        if (rc != TPV_OK)
            return rc;
    }
    if (variances)
        s->extra[i].variances = a;
    else
        s->extra[i].mask = a;
    return TPV_OK;
}

/* Checks what each model needs and loads its blobs. */
static int resolve_models(struct sources *s, const struct tpv_candidate_files *c,
                          const struct tpv_noise *models, size_t nmodels, struct tpv_err *err)
{
    s->nmodels = nmodels;
    s->blob_files = calloc(nmodels ? nmodels : 1, sizeof *s->blob_files);
    s->arrays = calloc(nmodels ? nmodels : 1, sizeof *s->arrays);
    s->extra = calloc(nmodels ? nmodels : 1, sizeof *s->extra);
    if (!s->blob_files || !s->arrays || !s->extra)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    bool named = s->fit->layout.nblocks > 0;
    for (size_t i = 0; i < nmodels; i++) {
        const struct tpv_noise *nm = &models[i];
        if (tpv_noise_needs_weights(nm) && !s->weights_file && !s->own_weights)
            return model_err(err, i, nm, "needs the candidate's weights");
        if (tpv_noise_needs_outputs(nm) && !s->fit->ops->outputs)
            return model_err(err, i, nm, "uses sigma_rel, which scales with the model's outputs "
                             "on the fit set: a Jacobian dump has none (give sigma)");
        if (tpv_noise_needs_model(nm) && !s->fit->ops->outputs_perturbed)
            return model_err(err, i, nm, "asks for the empirical check, which runs the model "
                             "with perturbed weights: it needs a model (a spec or an ONNX "
                             "graph); a Jacobian dump has none");
        if (tpv_noise_needs_names(nm) && !named)
            return model_err(err, i, nm, "needs tensor names: a flat .npy dump needs a "
                             "\"layout\"");
        int rc = TPV_OK;
        if (nm->kind == TPV_NOISE_DIAGONAL)
            rc = load_named_values(s, c, i, nm, nm->variances, true, err);
        else if (nm->kind == TPV_NOISE_PRUNE && !nm->prune_rule_magnitude)
            rc = load_named_values(s, c, i, nm, nm->mask, false, err);
        if (rc != TPV_OK)
            return rc;
    }
    return TPV_OK;
}

static void fill_inputs(struct tpv_est_inputs *in, const struct sources *s,
                        const struct tpv_noise *models, size_t nmodels)
{
    memset(in, 0, sizeof *in);
    in->fit = s->fit;
    in->probe = s->probe;
    in->weights = s->w;
    in->has_wrange = s->has_wrange;
    in->wmin = s->wmin;
    in->wmax = s->wmax;
    in->models = models;
    in->nmodels = nmodels;
    in->extra = s->extra;
    in->caller_bytes = s->held_bytes;
}

int tpv_candidate_check(const struct tpv_candidate_files *c, const struct tpv_noise *models,
                        size_t nmodels, const struct tpv_run_options *opts,
                        uint64_t *memory_needed, struct tpv_err *err)
{
    *memory_needed = 0;
    struct sources s;
    int rc = open_sources(c, OPEN_HEADERS, &s, err);
    if (rc == TPV_OK)
        rc = resolve_models(&s, c, models, nmodels, err);
    if (rc == TPV_OK) {
        struct tpv_est_inputs in;
        fill_inputs(&in, &s, models, nmodels);
        rc = tpv_estimate_plan(&in, opts, memory_needed, err);
    }
    close_sources(&s);
    return rc;
}

int tpv_candidate_score(const struct tpv_candidate_files *c, const struct tpv_noise *models,
                        size_t nmodels, const struct tpv_run_options *opts,
                        struct tpv_score **scores, size_t *nscores, json_t **stability,
                        const struct tpv_progress *pg, struct tpv_err *err)
{
    *scores = NULL;
    *nscores = 0;
    *stability = NULL;
    unsigned long json_failed0 = tpv_json_alloc_failures();
    struct sources s;
    int rc = open_sources(c, OPEN_FULL, &s, err);
    if (rc == TPV_OK)
        rc = resolve_models(&s, c, models, nmodels, err);
    if (rc == TPV_OK && tpv_progress_report(pg, 0, 1, 0, 1) != TPV_OK)
        rc = tpv_err_set(err, TPV_ECANCELED, NULL, "canceled");
    if (rc == TPV_OK) {
        struct tpv_est_inputs in;
        fill_inputs(&in, &s, models, nmodels);
        rc = tpv_estimate_scores(&in, opts, scores, nscores, stability, pg, err);
    }
    close_sources(&s);
    /* json_object_set_new drops a key whose value could not be allocated: scores with a detail
     * or a stability number missing are not a result. */
    if (rc == TPV_OK && tpv_json_alloc_failures() != json_failed0) {
        tpv_scores_free(*scores, *nscores);
        json_decref(*stability);
        *scores = NULL;
        *nscores = 0;
        *stability = NULL;
        rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory building the score details");
    }
    return rc;
}

void tpv_score_set_contributions(struct tpv_score *sc, double *contrib, size_t n)
{
    free(sc->per_input);
    sc->per_input = contrib;
    sc->n_inputs = contrib ? n : 0;
    sc->stderr_inputs = NAN;
    if (!contrib || n == 0)
        return;
    /* Two passes (mean, then squared deviations): the contributions of one score are of one
     * sign and similar size, where the one-pass formula loses digits. */
    double mean = 0, ss = 0;
    for (size_t i = 0; i < n; i++)
        mean += contrib[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (contrib[i] - mean) * (contrib[i] - mean);
    sc->stderr_inputs = n > 1 ? sqrt(ss / (double)(n - 1) / (double)n) : 0.0;
}

void tpv_scores_free(struct tpv_score *scores, size_t n)
{
    for (size_t i = 0; scores && i < n; i++) {
        json_decref(scores[i].details);
        free(scores[i].per_input);
    }
    free(scores);
}

int tpv_jbr_run(const struct tpv_candidate_files *c, double confidence, uint64_t batch_size,
                json_t **result, const struct tpv_progress *pg, struct tpv_err *err)
{
    *result = NULL;
    if (c->source != TPV_SOURCE_MODEL && c->source != TPV_SOURCE_ONNX)
        return tpv_err_set(err, TPV_EPRECONDITION, "source",
                           "JBR needs a model checkpoint; this candidate is a Jacobian dump");
    struct sources s;
    int rc = open_sources(c, OPEN_FULL, &s, err);
    if (rc == TPV_OK)
        rc = s.onnx ? tpv_onnx_jbr_compute(s.onnx, s.fit_x, confidence, batch_size, result, pg, err)
                    : tpv_jbr_compute(s.mlp, s.fit_x, confidence, batch_size, result, pg, err);
    close_sources(&s);
    return rc;
}
