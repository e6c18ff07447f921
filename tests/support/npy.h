/* npy.h: build small NumPy .npy (and safetensors) files in memory for tests (v1.0 header, little-endian float64,
 * C order), e.g. Jacobian dumps of shape (n, p) or (n, K, p). */
#ifndef TPV_TEST_NPY_H
#define TPV_TEST_NPY_H

#include <stddef.h>
#include <stdint.h>

/* The .npy bytes of a float64 array of `rank` dims `shape` holding `data` (product of shape
 * values).  Returns a malloc'd buffer and its length in *len; NULL on allocation failure. */
unsigned char *test_npy_f64(const uint64_t *shape, int rank, const double *data, size_t *len);

/* A tensor of test_safetensors_f64: name, rank (<= 3), shape and rank-product float64 values. */
struct test_st_tensor {
    const char *name;
    int rank;
    uint64_t shape[3];
    const double *v;
};

/* The safetensors bytes of n float64 tensors, in that order.  malloc'd, length in *len; NULL on
 * allocation failure or a header longer than 4 KiB. */
unsigned char *test_safetensors_f64(const struct test_st_tensor *t, int n, size_t *len);

#endif
