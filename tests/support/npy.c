/* npy.c: .npy writer for tests (see npy.h). */
#include "tests/support/npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

unsigned char *test_npy_f64(const uint64_t *shape, int rank, const double *data, size_t *len)
{
    char dict[256], dims[160] = "";
    size_t used = 0, count = 1;
    for (int i = 0; i < rank; i++) {
        used += (size_t)snprintf(dims + used, sizeof dims - used, "%llu,%s",
                                 (unsigned long long)shape[i], "");
        count *= shape[i];
    }
    if (rank > 1 && used > 0)
        dims[used - 1] = '\0'; /* (a,b) not (a,b,) ; a 1-tuple keeps its comma */
    int n = snprintf(dict, sizeof dict, "{'descr': '<f8', 'fortran_order': False, 'shape': (%s), }",
                     dims);
    /* Header (magic 6 + version 2 + length 2 + dict + padding + '\n') is a multiple of 64. */
    size_t header = 10 + (size_t)n + 1;
    size_t padded = (header + 63) / 64 * 64;
    *len = padded + count * sizeof(double);
    unsigned char *buf = malloc(*len);
    if (!buf)
        return NULL;
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    uint16_t hlen = (uint16_t)(padded - 10);
    buf[8] = (unsigned char)(hlen & 0xff);
    buf[9] = (unsigned char)(hlen >> 8);
    memcpy(buf + 10, dict, (size_t)n);
    memset(buf + 10 + n, ' ', padded - 10 - (size_t)n - 1);
    buf[padded - 1] = '\n';
    memcpy(buf + padded, data, count * sizeof(double)); /* x86-64 and arm64: little-endian */
    return buf;
}

unsigned char *test_safetensors_f64(const struct test_st_tensor *t, int n, size_t *len)
{
    char hdr[4096];
    size_t h = 0, off = 0;
    h += (size_t)snprintf(hdr + h, sizeof hdr - h, "{");
    for (int i = 0; i < n && h < sizeof hdr; i++) {
        uint64_t numel = 1;
        h += (size_t)snprintf(hdr + h, sizeof hdr - h, "%s\"%s\":{\"dtype\":\"F64\",\"shape\":[",
                              i ? "," : "", t[i].name);
        for (int r = 0; r < t[i].rank && h < sizeof hdr; r++) {
            numel *= t[i].shape[r];
            h += (size_t)snprintf(hdr + h, sizeof hdr - h, "%s%llu", r ? "," : "",
                                  (unsigned long long)t[i].shape[r]);
        }
        if (h < sizeof hdr)
            h += (size_t)snprintf(hdr + h, sizeof hdr - h, "],\"data_offsets\":[%zu,%zu]}", off,
                                  off + numel * 8);
        off += numel * 8;
    }
    if (h < sizeof hdr)
        h += (size_t)snprintf(hdr + h, sizeof hdr - h, "}");
    while (h < sizeof hdr && h % 8)
        hdr[h++] = ' ';
    if (h >= sizeof hdr)
        return NULL;
    unsigned char *out = malloc(8 + h + off);
    if (!out)
        return NULL;
    uint64_t hl = h;
    memcpy(out, &hl, 8);
    memcpy(out + 8, hdr, h);
    size_t pos = 8 + h;
    for (int i = 0; i < n; i++) {
        uint64_t numel = 1;
        for (int r = 0; r < t[i].rank; r++)
            numel *= t[i].shape[r];
        memcpy(out + pos, t[i].v, numel * 8);
        pos += numel * 8;
    }
    *len = pos;
    return out;
}
