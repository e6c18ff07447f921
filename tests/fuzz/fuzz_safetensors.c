/* fuzz_safetensors.c: any bytes given to the tensor reader (as safetensors unless they start with
 * the npy magic) either fail cleanly or give tensors whose every byte can be read, whose byte
 * ranges are sorted and disjoint and lie inside the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void touch(const struct tpv_tensor_file *f, const uint8_t *buf, size_t len)
{
    double chunk[256];
    float one32;
    const uint8_t *prev_end = NULL;
    for (size_t i = 0; i < tpv_tensor_file_count(f); i++) {
        const struct tpv_tensor *t = tpv_tensor_file_at(f, i);
        const uint8_t *p = t->data;
        if (tpv_tensor_file_find(f, t->name) != t || (!tpv_tensor_file_is_npy(f) && !t->name[0]))
            abort();
        if (p < buf || t->nbytes > (uint64_t)(buf + len - p) || (prev_end && p < prev_end))
            abort();
        prev_end = p + t->nbytes;
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
    /* A private copy so that ASan sees the exact extent of the buffer. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    if (size)
        memcpy(buf, data, size);
    struct tpv_tensor_file *f = NULL;
    struct tpv_err err;
    int rc = tpv_tensor_file_from_buffer(&f, buf, size, &err);
    if ((rc == TPV_OK) != (f != NULL) || (rc != TPV_OK && rc != TPV_EFORMAT && rc != TPV_ENOMEM))
        abort();
    if (f) {
        touch(f, buf, size);
        tpv_tensor_file_close(f);
    }
    free(buf);
    return 0;
}
