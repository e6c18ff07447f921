/* onnx_check.c: see onnx_check.h. */
#include "tests/support/onnx_check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/tpv_error.h"

void *tpv_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        n = ftell(f);
    char *buf = n >= 0 && fseek(f, 0, SEEK_SET) == 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (!buf)
        return NULL;
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

double tpv_test_max_relerr(const double *got, const double *want, uint64_t n)
{
    double num = 0, den = 0;
    for (uint64_t i = 0; i < n; i++) {
        num = fmax(num, fabs(got[i] - want[i]));
        den = fmax(den, fabs(want[i]));
    }
    return den > 0 ? num / den : num;
}

/* Uniform in [-1, 1). */
static void fill_signed(struct tpv_rng *r, double *v, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        v[i] = 2.0 * tpv_rng_uniform(r) - 1.0;
}

/* The tangents, u, and copies of the input and the weights (the shifted forward passes write
 * the model's initializer data in place: the plan borrows it). */
struct derivs_ws {
    const double **seed;
    double **tp, **w0;
    double *xv, *tx, *u, *jv, *ym;
};

static void ws_free(struct derivs_ws *w, size_t nparams)
{
    for (size_t j = 0; j < nparams && w->tp && w->w0; j++) {
        free(w->tp[j]);
        free(w->w0[j]);
    }
    free(w->tp);
    free(w->w0);
    free(w->seed);
    free(w->xv);
    free(w->tx);
    free(w->u);
    free(w->jv);
    free(w->ym);
}

static int ws_alloc(struct derivs_ws *w, const struct tpv_onnx_model *m, uint64_t nx,
                    uint64_t ny)
{
    memset(w, 0, sizeof *w);
    w->seed = calloc(m->nvalues, sizeof *w->seed);
    w->tp = calloc(m->nparams ? m->nparams : 1, sizeof *w->tp);
    w->w0 = calloc(m->nparams ? m->nparams : 1, sizeof *w->w0);
    w->xv = malloc((nx ? nx : 1) * sizeof *w->xv);
    w->tx = malloc((nx ? nx : 1) * sizeof *w->tx);
    w->u = malloc((ny ? ny : 1) * sizeof *w->u);
    w->jv = malloc((ny ? ny : 1) * sizeof *w->jv);
    w->ym = malloc((ny ? ny : 1) * sizeof *w->ym);
    if (!w->seed || !w->tp || !w->w0 || !w->xv || !w->tx || !w->u || !w->jv || !w->ym)
        return -1;
    for (size_t j = 0; j < m->nparams; j++) {
        uint64_t c = m->values[m->params[j]].t.numel;
        w->tp[j] = malloc((c ? c : 1) * sizeof *w->tp[j]);
        w->w0[j] = malloc((c ? c : 1) * sizeof *w->w0[j]);
        if (!w->tp[j] || !w->w0[j])
            return -1;
    }
    return 0;
}

static void set_tangents(struct derivs_ws *w, const struct tpv_onnx_model *m, uint64_t nx,
                         uint64_t ny, bool relative, uint64_t seed)
{
    struct tpv_rng r;
    tpv_rng_init(&r, seed, 0);
    fill_signed(&r, w->tx, nx);
    fill_signed(&r, w->u, ny);
    w->seed[m->inputs[0]] = w->tx;
    for (size_t j = 0; j < m->nparams; j++) {
        const struct tpv_onnx_tensor *t = &m->values[m->params[j]].t;
        memcpy(w->w0[j], t->data, t->numel * sizeof *w->w0[j]);
        fill_signed(&r, w->tp[j], t->numel);
        for (uint64_t i = 0; relative && i < t->numel; i++)
            w->tp[j][i] *= fabs(w->w0[j][i]) + 1e-3;
        w->seed[m->params[j]] = w->tp[j];
    }
}

/* The dot test's two sides, from the JVP and VJP just run. */
static void dot_sides(const struct derivs_ws *w, const struct tpv_onnx_model *m,
                      const struct tpv_onnx_exec *ex, uint64_t nx, uint64_t ny,
                      struct tpv_test_derivs *out)
{
    for (uint64_t i = 0; i < ny; i++) {
        out->rhs += w->u[i] * w->jv[i];
        out->scale += fabs(w->u[i] * w->jv[i]);
    }
    const double *gx = tpv_onnx_exec_grad(ex, m->inputs[0]);
    for (uint64_t i = 0; gx && i < nx; i++)
        out->lhs += gx[i] * w->tx[i];
    for (size_t j = 0; j < m->nparams; j++) {
        const double *g = tpv_onnx_exec_grad(ex, m->params[j]);
        if (!g)
            out->params_without_adjoint++;
        for (uint64_t i = 0; g && i < m->values[m->params[j]].t.numel; i++)
            out->lhs += g[i] * w->tp[j][i];
    }
}

/* The forward pass at (x, w0) + s (tx, tp); its output stays in the executor. */
static int shifted_forward(struct derivs_ws *w, struct tpv_onnx_model *m,
                           struct tpv_onnx_exec *ex, const double *x, uint64_t nx, double s,
                           struct tpv_err *err)
{
    for (uint64_t i = 0; i < nx; i++)
        w->xv[i] = x[i] + s * w->tx[i];
    for (size_t j = 0; j < m->nparams; j++) {
        struct tpv_onnx_tensor *t = &m->values[m->params[j]].t;
        for (uint64_t i = 0; i < t->numel; i++)
            ((double *)t->data)[i] = w->w0[j][i] + s * w->tp[j][i];
    }
    const double *xp = w->xv;
    return tpv_onnx_exec_forward(ex, &xp, err);
}

static void restore_weights(const struct derivs_ws *w, struct tpv_onnx_model *m)
{
    for (size_t j = 0; j < m->nparams; j++)
        memcpy(m->values[m->params[j]].t.data, w->w0[j],
               m->values[m->params[j]].t.numel * sizeof *w->w0[j]);
}

int tpv_test_onnx_derivatives(struct tpv_onnx_model *m, struct tpv_onnx_exec *ex,
                              const double *x, uint64_t nx, double h, bool relative_tangents,
                              uint64_t seed, struct tpv_test_derivs *out, struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    const double *xp = x;
    int rc = tpv_onnx_exec_forward(ex, &xp, err);
    if (rc != TPV_OK)
        return rc;
    uint64_t ny = tpv_onnx_exec_value(ex, m->outputs[0])->numel;
    struct derivs_ws w;
    if (ws_alloc(&w, m, nx, ny)) {
        ws_free(&w, m->nparams);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    set_tangents(&w, m, nx, ny, relative_tangents, seed);
    rc = tpv_onnx_exec_jvp(ex, w.seed, err);
    if (rc == TPV_OK)
        rc = tpv_onnx_exec_vjp(ex, m->outputs[0], w.u, err);
    if (rc == TPV_OK) {
        memcpy(w.jv, tpv_onnx_exec_tangent(ex, m->outputs[0]), ny * sizeof *w.jv);
        dot_sides(&w, m, ex, nx, ny, out);
        rc = shifted_forward(&w, m, ex, x, nx, -h, err);
    }
    if (rc == TPV_OK) {
        memcpy(w.ym, tpv_onnx_exec_value(ex, m->outputs[0])->data, ny * sizeof *w.ym);
        rc = shifted_forward(&w, m, ex, x, nx, h, err);
    }
    if (rc == TPV_OK) {
        const double *yp = tpv_onnx_exec_value(ex, m->outputs[0])->data;
        for (uint64_t i = 0; i < ny; i++) {
            out->fd_emax = fmax(out->fd_emax, fabs((yp[i] - w.ym[i]) / (2 * h) - w.jv[i]));
            out->fd_jmax = fmax(out->fd_jmax, fabs(w.jv[i]));
        }
    }
    restore_weights(&w, m);
    ws_free(&w, m->nparams);
    return rc;
}
