/* onnx_kernels.h: the kernel files' operator tables, joined by core/onnx_ops.c.  Internal. */
#ifndef TPV_ONNX_KERNELS_H
#define TPV_ONNX_KERNELS_H

#include "core/onnx_ops.h"

/* Elementwise operators (core/onnx_ops_elem.c). */
extern const struct tpv_onnx_op tpv_onnx_ops_elem[];
extern const size_t tpv_onnx_ops_elem_n;
/* Normalization and reduction operators (core/onnx_ops_norm.c). */
extern const struct tpv_onnx_op tpv_onnx_ops_norm[];
extern const size_t tpv_onnx_ops_norm_n;
/* Shape and data-movement operators, also on int64 (core/onnx_ops_shape.c). */
extern const struct tpv_onnx_op tpv_onnx_ops_shape[];
extern const size_t tpv_onnx_ops_shape_n;
/* Conv, pooling, Gemm, MatMul (core/onnx_ops_linear.c). */
extern const struct tpv_onnx_op tpv_onnx_ops_linear[];
extern const size_t tpv_onnx_ops_linear_n;

#endif
