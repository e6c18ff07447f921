/* onnx_model.h: an ONNX ModelProto parsed and validated for the graph runtime (DESIGN.md section 4,
 * "ONNX models").
 *
 * Parsing is protobuf-c over the onnx.proto of Debian's libonnx-dev (generated at build time).
 * Loading checks everything a submission must refuse with a 400 naming the node or tensor: the
 * opset (13-17), unknown operators, unsupported attribute values, external data, non-finite or
 * malformed initializers.  Initializers are converted once: float types to float64, integer and
 * bool types to int64 (shape inputs).  Constant nodes become constant values, and an Identity of an
 * initializer (PyTorch's exporter re-creates deduplicated parameters that way) becomes its own
 * initializer named after the parameter.
 *
 * Two levels: tpv_onnx_model_parse accepts any graph of supported operators (the conformance node
 * tests have several inputs of several types); tpv_onnx_model_load adds the rules of a scored model
 * (one float input with the batch first, one float output) and picks the parameters. */
#ifndef TPV_ONNX_MODEL_H
#define TPV_ONNX_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tensor.h"
#include "core/tpv_error.h"

#define TPV_ONNX_OPSET_MIN 13
#define TPV_ONNX_OPSET_MAX 17

/* Element types at run time: every float type computes in float64; integer and bool tensors
 * (shapes, indices, axes) are int64.  Both are 8 bytes, so data movement is type-blind. */
enum tpv_onnx_dtype {
    TPV_ONNX_F64 = 0,
    TPV_ONNX_I64 = 1,
};

/* A tensor of the graph at run time or at load.  Shapes use int64 as ONNX does. */
struct tpv_onnx_tensor {
    enum tpv_onnx_dtype dtype;
    int rank;
    int64_t shape[TPV_MAX_RANK];
    uint64_t numel;
    void *data; /* double or int64_t, numel elements; NULL when not (yet) known */
};

enum tpv_onnx_vkind {
    TPV_ONNX_VINPUT = 0, /* a graph input (not an initializer) */
    TPV_ONNX_VINIT,      /* an initializer, or an Identity alias of one */
    TPV_ONNX_VCONST,     /* the output of a Constant node */
    TPV_ONNX_VNODE,      /* computed by a node */
};

/* One named value of the graph. */
struct tpv_onnx_value {
    const char *name;           /* borrowed from the parsed protobuf */
    enum tpv_onnx_vkind kind;
    struct tpv_onnx_tensor t;   /* INIT/CONST: shape and owned data; INPUT: declared shape with
                                 * -1 for a dynamic dimension, data NULL; NODE: unused */
    int elem_type;              /* ONNX TensorProto.DataType of an INPUT/INIT/CONST */
    long producer;              /* node index for NODE, else -1 */
    bool param;                 /* one of the perturbed parameters */
};

struct tpv_onnx_node {
    const void *proto;  /* the Onnx__NodeProto (attributes are read through core/onnx_attr.h) */
    const char *name;   /* the node's name, or its first output's when it has none */
    const char *op_type;
    int op;             /* index into the operator table (core/onnx_ops.h) */
    size_t nin, nout;
    long *in;           /* value indices; -1 for an omitted optional input */
    long *out;          /* value indices; -1 for an omitted optional output */
};

struct tpv_onnx_model {
    void *proto;         /* the Onnx__ModelProto, owned */
    int64_t opset;
    size_t nvalues;
    struct tpv_onnx_value *values;
    size_t nnodes;       /* in execution (topological) order; Constants and aliases removed */
    struct tpv_onnx_node *nodes;
    size_t ninputs;
    long *inputs;        /* graph inputs that are not initializers, in graph order */
    size_t noutputs;
    long *outputs;
    size_t nparams;
    long *params;        /* parameter values, in the order parameters are numbered */
};

/* Parses and validates a serialized ModelProto (not copied; may be freed after the call).  On
 * success *out is owned by the caller (tpv_onnx_model_free).  Errors: TPV_EFORMAT (not a
 * ModelProto, malformed initializer, external data), TPV_EINVAL (opset, unknown operator or
 * attribute value, non-finite initializer, a value used before it is defined), TPV_ENOMEM. */
int tpv_onnx_model_parse(struct tpv_onnx_model **out, const void *buf, size_t len,
                         struct tpv_err *err);

/* Same with another accepted opset range: for the conformance tests only (the ONNX test data
 * carries operators whose semantics have not changed since older opsets). */
int tpv_onnx_model_parse_opsets(struct tpv_onnx_model **out, const void *buf, size_t len,
                                int64_t opset_min, int64_t opset_max, struct tpv_err *err);

/* Parse plus the rules of a scored model: one float input whose first dimension is dynamic or 1,
 * one float output; and the parameter choice: `params` (nparams names; NULL for none given), else
 * metadata_props "tpv.parameters" (a JSON list of names), else every float initializer used by a
 * node except BatchNormalization's mean and variance.  Each named parameter must be a float
 * initializer (or Identity alias of one); errors name it (field "parameters"). */
int tpv_onnx_model_load(struct tpv_onnx_model **out, const void *buf, size_t len,
                        const char *const *params, size_t nparams, struct tpv_err *err);

/* Releases the model and everything it owns; NULL is a no-op. */
void tpv_onnx_model_free(struct tpv_onnx_model *m);

/* Index of the value called `name`, or -1. */
long tpv_onnx_model_find(const struct tpv_onnx_model *m, const char *name);

/* Whether the graph stores value v in float32 or narrower (FLOAT, FLOAT16, BFLOAT16): products
 * on it may then run in float32 within the accuracy a float32 model has anyway; a float64 value
 * keeps float64 products.  False for computed values (their elem_type is not recorded). */
bool tpv_onnx_value_narrow(const struct tpv_onnx_model *m, long v);

/* Converts a serialized TensorProto (the conformance data's input_*.pb) into a tensor with owned
 * data (free t->data).  Same dtype rules and checks as initializers; `what` names it in errors. */
int tpv_onnx_tensor_parse(struct tpv_onnx_tensor *t, int *elem_type, const void *buf, size_t len,
                          const char *what, struct tpv_err *err);

/* The same for a TENSOR attribute's protobuf (tpv_onnx_attr_tensor): a tensor with owned data
 * (free t->data). */
int tpv_onnx_tensor_from_attr(struct tpv_onnx_tensor *t, const void *tensor_proto,
                              const char *what, struct tpv_err *err);

/* Element count of a shape, or -1 on a negative dimension or overflow. */
int64_t tpv_onnx_numel(int rank, const int64_t *shape);

#endif
