/* fuzz_npy.c: any bytes given to the tensor reader (as .npy: the input is prefixed with the npy
 * magic when it lacks it, so most runs exercise the npy header parser) either fail cleanly or
 * give tensors whose every byte can be read. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Touches every tensor: first and last element both ways, a chunked full read, the finiteness
 * check and a lookup by name.  ASan catches any read outside the buffer. */
static void touch(const struct tpv_tensor_file *f)
{
    double chunk[256];
    float one32;
    for (size_t i = 0; i < tpv_tensor_file_count(f); i++) {
        const struct tpv_tensor *t = tpv_tensor_file_at(f, i);
        if (tpv_tensor_file_find(f, t->name) == NULL)
            abort();
        if (t->numel * tpv_dtype_size(t->dtype) != t->nbytes)
            abort();
        if (t->numel > 0) {
            tpv_tensor_read_f64(t, 0, 1, chunk);
            tpv_tensor_read_f64(t, t->numel - 1, 1, chunk);
            tpv_tensor_read_f32(t, t->numel - 1, 1, &one32);
        }
        for (uint64_t j = 0; j < t->numel; j += 256) {
            uint64_t n = t->numel - j < 256 ? t->numel - j : 256;
            tpv_tensor_read_f64(t, j, n, chunk);
        }
        struct tpv_err err;
        (void)tpv_tensor_check_finite(t, &err);
    }
    (void)tpv_tensor_file_metadata(f, "format");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char magic[] = "\x93NUMPY";
    uint8_t *buf = malloc(size + 6);
    if (!buf)
        return 0;
    size_t len = size;
    if (size >= 6 && memcmp(data, magic, 6) == 0) {
        memcpy(buf, data, size);
    } else {
        memcpy(buf, magic, 6);
        memcpy(buf + 6, data, size);
        len = size + 6;
    }
    struct tpv_tensor_file *f = NULL;
    struct tpv_err err;
    int rc = tpv_tensor_file_from_buffer(&f, buf, len, &err);
    if ((rc == TPV_OK) != (f != NULL) || (rc != TPV_OK && rc != TPV_EFORMAT && rc != TPV_ENOMEM))
        abort();
    if (f) {
        if (!tpv_tensor_file_is_npy(f) || tpv_tensor_file_count(f) != 1)
            abort();
        touch(f);
        tpv_tensor_file_close(f);
    }
    free(buf);
    return 0;
}
