/* tensor.h: read-only tensors from NumPy .npy (v1/v2/v3) and safetensors files, memory-mapped.
 *
 * Format rules: DESIGN.md section 4.  Everything is validated before a tensor is handed out
 * (magic, header length inside the file, header syntax, dtype, C order, shape products without
 * overflow, shape x dtype size == byte range, ranges inside the file and not overlapping), so a
 * struct tpv_tensor never points outside its mapping.  Values are little-endian, C order. */
#ifndef TPV_TENSOR_H
#define TPV_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tpv_error.h"

enum tpv_dtype {
    TPV_DTYPE_F16 = 0,
    TPV_DTYPE_BF16,
    TPV_DTYPE_F32,
    TPV_DTYPE_F64,
    TPV_DTYPE_U8,   /* safetensors only (masks) */
    TPV_DTYPE_BOOL, /* safetensors only (masks) */
};

#define TPV_MAX_RANK 8

/* A view into a mapped file; never owns memory.  Valid while its tpv_tensor_file is open. */
struct tpv_tensor {
    const char *name; /* safetensors name; "" for .npy */
    enum tpv_dtype dtype;
    int rank;
    uint64_t shape[TPV_MAX_RANK];
    uint64_t numel;   /* product of shape (1 for rank 0) */
    uint64_t nbytes;  /* numel * dtype size */
    const void *data;
};

struct tpv_tensor_file;

/* Bytes per element of a dtype; "F16", "BF16", "F32", "F64", "U8", "BOOL" for its name. */
size_t tpv_dtype_size(enum tpv_dtype dtype);
const char *tpv_dtype_name(enum tpv_dtype dtype);

/* Maps `path` read-only and parses it; the format is detected from the magic bytes
 * ("\x93NUMPY" = npy, otherwise safetensors).  On success *out owns the mapping (close with
 * tpv_tensor_file_close).  Errors: TPV_EIO (cannot open/map), TPV_EFORMAT (malformed: the message
 * names the problem and, where there is one, the byte offset or tensor name). */
int tpv_tensor_file_open(struct tpv_tensor_file **out, const char *path, struct tpv_err *err);

/* Same over a caller's buffer (not copied; it must outlive the file object).  For tests/fuzzing. */
int tpv_tensor_file_from_buffer(struct tpv_tensor_file **out, const void *buf, size_t len,
                                struct tpv_err *err);

/* Unmaps and frees; NULL is a no-op. */
void tpv_tensor_file_close(struct tpv_tensor_file *f);

/* True for a .npy file (one unnamed tensor). */
bool tpv_tensor_file_is_npy(const struct tpv_tensor_file *f);

/* Tensors in file order (safetensors: sorted by data offset; npy: exactly one). */
size_t tpv_tensor_file_count(const struct tpv_tensor_file *f);
const struct tpv_tensor *tpv_tensor_file_at(const struct tpv_tensor_file *f, size_t i);

/* The tensor called `name`, or NULL. */
const struct tpv_tensor *tpv_tensor_file_find(const struct tpv_tensor_file *f, const char *name);

/* A safetensors `__metadata__` string value, or NULL. */
const char *tpv_tensor_file_metadata(const struct tpv_tensor_file *f, const char *key);

/* Converts `count` elements of type `dtype` at `src` (little-endian, possibly unaligned) to
 * float64 / float32: F16 and BF16 exactly, U8/BOOL as integers, F64->F32 rounded.  The loops that
 * every reader of tensor data shares (dumps, weights, inputs). */
void tpv_convert_f64(enum tpv_dtype dtype, const void *src, uint64_t count, double *dst);
void tpv_convert_f32(enum tpv_dtype dtype, const void *src, uint64_t count, float *dst);

/* Converts elements [first, first + count) to float64 / float32 (F16 and BF16 exactly; U8/BOOL as
 * 0/1/...).  The caller guarantees first + count <= t->numel. */
void tpv_tensor_read_f64(const struct tpv_tensor *t, uint64_t first, uint64_t count, double *out);
void tpv_tensor_read_f32(const struct tpv_tensor *t, uint64_t first, uint64_t count, float *out);

/* TPV_OK when every value is finite, else TPV_EFORMAT naming the tensor and the first bad index.
 * Integer dtypes are always finite. */
int tpv_tensor_check_finite(const struct tpv_tensor *t, struct tpv_err *err);

#endif
