/* mlp.h: the model runtime for checkpoints: a `tpv.sequential/v1` spec (DESIGN.md section 4) bound
 * to its weights, a batched float64 forward pass that keeps what the structured Jacobian products
 * (core/mlp_source.c) and JBR (core/jbr.c) need.
 *
 * The network is a chain of stages: an optional elementwise chain on the input, then per linear
 * layer l: z_l = W_l a_{l-1} + b_l, a_l = phi_l(z_l) with phi_l the (possibly empty) chain of
 * elementwise activations that follows it; f(x) = a_L.  identity and flatten are no-ops on the
 * row-major flattened sample, so the runtime only ever sees flat vectors. */
#ifndef TPV_MLP_H
#define TPV_MLP_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/jacobian.h"
#include "core/tensor.h"
#include "core/tpv_error.h"

#define TPV_MLP_FORMAT "tpv.sequential/v1"
#define TPV_MLP_MAX_LAYERS 1024          /* entries of "layers" */
#define TPV_MLP_MAX_WIDTH (1ull << 28)   /* elements of one sample at any stage */

enum tpv_act_kind {
    TPV_ACT_RELU = 0,
    TPV_ACT_LEAKY_RELU, /* p1 = negative_slope (default 0.01) */
    TPV_ACT_TANH,
    TPV_ACT_SIGMOID,
    TPV_ACT_GELU,       /* erf form (PyTorch approximate="none") */
    TPV_ACT_SOFTPLUS,   /* p1 = beta (default 1), p2 = threshold (default 20) */
};

struct tpv_act {
    enum tpv_act_kind kind;
    double p1, p2;
};

/* One linear layer and the elementwise chain that follows it.  W is row-major out x in. */
struct tpv_mlp_layer {
    uint64_t in, out;
    const double *W;       /* points into the model's parameter vector */
    const double *b;       /* NULL without bias */
    uint64_t w_off, b_off; /* parameter columns of W and b in the layout */
    const char *w_name;    /* the weight tensor's name (JBR reports units by it) */
    const char *b_name;    /* the bias tensor's name, NULL without bias */
    size_t spec_index;     /* index of the linear entry in "layers" */
    struct tpv_act *acts;
    size_t nacts;
};

/* A bound model.  Fields are read-only for users; free with tpv_mlp_free. */
struct tpv_mlp {
    int input_rank;
    uint64_t input_shape[TPV_MAX_RANK - 1];
    uint64_t d;            /* input elements per sample (product of input_shape) */
    uint64_t K;            /* outputs */
    struct tpv_act *pre;   /* chain applied to the input before layer 0; this array also holds
                              every layer's chain (layers[l].acts point into it) */
    size_t npre;
    struct tpv_mlp_layer *layers;
    size_t L;
    struct tpv_layout layout;
    double *params;        /* all p parameters in layout order */
};

/* Parses `spec` and binds it to weights found by name through find(ctx, name) (NULL = missing).
 * Weights (F16/BF16/F32/F64) are converted once to float64; the tensors need not outlive the call.
 * On success *out owns its memory (tpv_mlp_free).  Errors, with err->field the JSON path
 * ("layers[3].type", "layers[2].weight", "input_shape"): TPV_EINVAL for a malformed spec, unknown
 * keys or layer types, missing tensors, wrong ranks, dtypes or shape chains (both numbers are in
 * the message); TPV_EFORMAT for non-finite weights; TPV_ENOMEM. */
int tpv_mlp_bind(struct tpv_mlp **out, const json_t *spec,
                 const struct tpv_tensor *(*find)(void *ctx, const char *name), void *ctx,
                 struct tpv_err *err);

/* The structure alone, for checks and plans that must not read the weights' values: parses and
 * binds names, dtypes and shapes exactly as tpv_mlp_bind (same errors but TPV_EFORMAT) and leaves
 * params, W and b NULL.  Such a model must not be run until tpv_mlp_load_weights. */
int tpv_mlp_bind_shapes(struct tpv_mlp **out, const json_t *spec,
                        const struct tpv_tensor *(*find)(void *ctx, const char *name), void *ctx,
                        struct tpv_err *err);

/* Converts the weights of a model bound by tpv_mlp_bind_shapes to float64 (a no-op when they
 * are loaded).  TPV_EFORMAT naming the tensor and the index of its first non-finite value
 * (err->field "layers[i].weight" / ".bias"), TPV_EINVAL if a tensor went missing or changed
 * size, TPV_ENOMEM.  On failure m is unchanged. */
int tpv_mlp_load_weights(struct tpv_mlp *m,
                         const struct tpv_tensor *(*find)(void *ctx, const char *name), void *ctx,
                         struct tpv_err *err);

/* NULL is a no-op. */
void tpv_mlp_free(struct tpv_mlp *m);

/* Checks an input set against the spec: a float tensor of shape (n, *input_shape), n >= 1, with
 * finite values.  TPV_EINVAL (err->field "inputs") naming both shapes, TPV_EFORMAT for a non-finite
 * value (the message gives sample and element). */
int tpv_mlp_check_inputs(const struct tpv_mlp *m, const struct tpv_tensor *inputs,
                         struct tpv_err *err);
/* The dtype and shape part of tpv_mlp_check_inputs alone (no read of the values). */
int tpv_mlp_check_input_shape(const struct tpv_mlp *m, const struct tpv_tensor *inputs,
                              struct tpv_err *err);

/* The parameter layout (one block per tensor: weight then bias, in layer order). */
const struct tpv_layout *tpv_mlp_layout(const struct tpv_mlp *m);

/* All p parameters in layout order (valid while m lives). */
const double *tpv_mlp_param_values(const struct tpv_mlp *m);

/* out (n x K, row-major) = f(x) for x (n x d, row-major).  Works in batches so memory stays
 * bounded.  TPV_ENOMEM only. */
int tpv_mlp_forward(const struct tpv_mlp *m, const double *x, size_t n, double *out);

/* Converts rows [first, first + rows) of an input tensor (n, *input_shape) to float64,
 * row-major flattened (rows x d).  The caller checked the tensor with tpv_mlp_check_inputs. */
void tpv_mlp_read_inputs(const struct tpv_mlp *m, const struct tpv_tensor *inputs, uint64_t first,
                         size_t rows, double *out);

/* ---- Runtime pieces shared with mlp_source.c and jbr.c ---- */

/* Forward storage for up to `cap` samples: a0 (cap x d) and per layer z, a, dphi (cap x out_l),
 * dphi = phi_l'(z_l) elementwise (1 where the chain is empty). */
struct tpv_mlp_ws {
    size_t cap;
    size_t rows; /* samples of the last forward */
    double *a0;
    double **z, **a, **dphi;
    size_t nlayers_; /* private */
};

/* Bytes tpv_mlp_ws_init allocates for `cap` samples (saturates at UINT64_MAX). */
uint64_t tpv_mlp_ws_bytes(const struct tpv_mlp *m, size_t cap);
int tpv_mlp_ws_init(struct tpv_mlp_ws *ws, const struct tpv_mlp *m, size_t cap,
                    struct tpv_err *err);
void tpv_mlp_ws_free(struct tpv_mlp_ws *ws);

/* Forward pass of `rows` <= ws->cap samples x (rows x d); fills ws.  Split over the samples on
 * the job's threads (core/linalg.h) when the batch is large enough to pay; each sample's values
 * are computed alone, so they do not depend on the split. */
void tpv_mlp_ws_forward(const struct tpv_mlp *m, struct tpv_mlp_ws *ws, const double *x,
                        size_t rows);

/* Rows [r0, r0 + rows) of that forward pass on the calling thread (x is the whole batch; ws->rows
 * is left alone): the piece a split of the caller's own runs. */
void tpv_mlp_ws_forward_part(const struct tpv_mlp *m, struct tpv_mlp_ws *ws, const double *x,
                             size_t r0, size_t rows);

/* Flops of one sample's forward pass (matrix products and activations), for split sizes. */
double tpv_mlp_sample_flops(const struct tpv_mlp *m);

/* Applies a chain of activations elementwise: y = phi(x) and, if dy is not NULL, dy = phi'(x). */
void tpv_act_chain(const struct tpv_act *acts, size_t nacts, const double *x, double *y,
                   double *dy, size_t count);

#endif
