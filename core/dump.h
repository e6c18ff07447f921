/* dump.h: a Jacobian dump (DESIGN.md section 4) as a struct tpv_jsrc: BLAS over the mapped file.
 *
 * Accepted dumps:
 *  - one unnamed tensor (a .npy) of shape (n, K, p) or (n, p) (then K = 1).  Without a layout the
 *    source is anonymous (layout.nblocks == 0); with one, `layout_names` lists the parameter
 *    tensors in column order, each flattened row-major, and their shapes come from the weights
 *    (so a layout needs weights, and the counts must add up to p).
 *  - named tensors (safetensors), one per parameter, of shape (n, K, *param_shape) named like the
 *    parameter.  Columns are the tensors in lexicographic (strcmp) order of their names, each
 *    flattened row-major, whatever their order in the file: the same order the prune rule uses,
 *    and independent of how the file was written.  A layout, if given, must list the same names.
 * When weights are given, every block must have a weight of the same name and shape.
 * Data may be F16, BF16, F32 or F64 (blocks may differ); every value must be finite.
 * Rows are ordered (sample, output): row x*K + k.
 *
 * Numerics: sqdiag streams the data once (linalg.h's kernel, threads split columns);
 * gram runs dsyrk (a == b) or dgemm on column panels of at most TPV_DUMP_PANEL_BYTES (float64;
 * F64 data is used in place, other dtypes are converted panel by panel), accumulating in float64.
 * Results depend only on the data and the thread count. */
#ifndef TPV_DUMP_H
#define TPV_DUMP_H

#include <stddef.h>

#include "core/jacobian.h"
#include "core/tensor.h"

/* Upper bound of the converted panel memory of one gram/jvp call (both operands). */
#define TPV_DUMP_PANEL_BYTES (64ull << 20)

/* Builds a dump source over tensor views, which are NOT copied: the views and the memory they
 * point to must outlive the source.  `weights` (may be NULL with nweights 0) are only read
 * during the call.  Errors: TPV_EFORMAT (bad shapes, non-finite values, names),
 * TPV_EINVAL (layout/weights mismatch; err->field names the tensor), TPV_ENOMEM.
 * On success *out is owned by the caller (tpv_jsrc_free). */
int tpv_dump_from_tensors(struct tpv_jsrc **out, const struct tpv_tensor *const *tensors,
                          size_t ntensors, const char *const *layout_names, size_t nlayout,
                          const struct tpv_tensor *const *weights, size_t nweights,
                          struct tpv_err *err);

/* Opens the dump file at `path` (npy or safetensors, mapped) and builds the source over it; the
 * source owns the mapping.  `weights` may be NULL.  Errors as tpv_tensor_file_open and
 * tpv_dump_from_tensors, with the message prefixed by the path. */
int tpv_dump_open(struct tpv_jsrc **out, const char *path, const char *const *layout_names,
                  size_t nlayout, const struct tpv_tensor_file *weights, struct tpv_err *err);

/* The same checks as tpv_dump_open on headers, shapes and names only: the values are not read
 * (no non-finite scan) and misaligned tensors are not copied, so opening costs no pass over the
 * data.  The source serves planning (n, K, p, layout, scratch_bytes, which counts the copies a
 * full open would make); its products refuse with TPV_EINTERNAL. */
int tpv_dump_open_headers(struct tpv_jsrc **out, const char *path,
                          const char *const *layout_names, size_t nlayout,
                          const struct tpv_tensor_file *weights, struct tpv_err *err);

/* True if `s` is a dump source (so its internals may be used by the benchmarks). */
bool tpv_jsrc_is_dump(const struct tpv_jsrc *s);

#endif
