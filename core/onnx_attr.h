/* onnx_attr.h: typed access to a node's attributes (ONNX AttributeProto), with the defaults of the
 * operator's specification supplied by the caller.  A present attribute of the wrong type is an
 * error naming the node and the attribute, so kernels never guess. */
#ifndef TPV_ONNX_ATTR_H
#define TPV_ONNX_ATTR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/onnx_model.h"

/* True when the node carries attribute `name`. */
bool tpv_onnx_attr_has(const struct tpv_onnx_node *nd, const char *name);

/* *out = the INT attribute, or `def` when absent. */
int tpv_onnx_attr_int(const struct tpv_onnx_node *nd, const char *name, int64_t def, int64_t *out,
                      struct tpv_err *err);
/* *out = the FLOAT attribute, or `def` when absent. */
int tpv_onnx_attr_float(const struct tpv_onnx_node *nd, const char *name, double def, double *out,
                        struct tpv_err *err);
/* INTS attribute into out[0..max); *n = its length (0 when absent).  More than max is an error. */
int tpv_onnx_attr_ints(const struct tpv_onnx_node *nd, const char *name, int64_t *out, size_t max,
                       size_t *n, struct tpv_err *err);
/* STRING attribute compared with `want` (absent = `def_is_want`): sets *eq. */
int tpv_onnx_attr_str_is(const struct tpv_onnx_node *nd, const char *name, const char *want,
                         bool def_is_want, bool *eq, struct tpv_err *err);
/* STRING attribute into out[cap] (NUL-terminated; "" when absent); longer ones are an error. */
int tpv_onnx_attr_str(const struct tpv_onnx_node *nd, const char *name, char *out, size_t cap,
                      struct tpv_err *err);
/* The TENSOR attribute's protobuf (Onnx__TensorProto *), or NULL when absent. */
const void *tpv_onnx_attr_tensor(const struct tpv_onnx_node *nd, const char *name);

/* The error every kernel reports for an attribute value it does not support. */
int tpv_onnx_attr_unsupported(struct tpv_err *err, const struct tpv_onnx_node *nd, const char *name,
                              const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
