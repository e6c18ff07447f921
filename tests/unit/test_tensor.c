/* test_tensor.c: the .npy and safetensors readers of core/tensor.c: round trips for every dtype,
 * npy version and shape form (files built in memory here), F16/BF16 bit patterns, the catalogue
 * of malformed files (each asserting the code and a piece of the message), the finiteness check,
 * mapping real files, and interop with files NumPy writes (tests/tools/make_tensors.py, run with
 * Debian's /usr/bin/python3). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/half.h"
#include "core/tensor.h"

/* ---------------------------------------------------------------------------------------------
 * In-memory file builders.  Every builder returns a malloc'd blob (free with blob_free). */

struct blob {
    uint8_t *p;
    size_t len;
};

static void blob_free(struct blob *b)
{
    free(b->p);
    b->p = NULL;
    b->len = 0;
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* magic, version major.minor, header length field `hlen_field` (as declared), header text,
 * data.  Nothing is checked: malformed files are built with this too. */
static struct blob npy_raw(int major, int minor, uint64_t hlen_field, const char *header,
                           size_t header_len, const void *data, size_t dlen)
{
    int lenbytes = major == 1 ? 2 : 4;
    struct blob b;
    b.len = 8 + (size_t)lenbytes + header_len + dlen;
    b.p = malloc(b.len ? b.len : 1);
    assert_non_null(b.p);
    memcpy(b.p, "\x93NUMPY", 6);
    b.p[6] = (uint8_t)major;
    b.p[7] = (uint8_t)minor;
    put_le(b.p + 8, hlen_field, lenbytes);
    memcpy(b.p + 8 + lenbytes, header, header_len);
    if (dlen)
        memcpy(b.p + 8 + lenbytes + header_len, data, dlen);
    return b;
}

/* A well-formed .npy: dict text padded with spaces and '\n' to a multiple of 64, as numpy does. */
static struct blob npy_build(int major, const char *dict, const void *data, size_t dlen)
{
    size_t pre = major == 1 ? 10 : 12, dl = strlen(dict);
    size_t total = (pre + dl + 1 + 63) / 64 * 64, hlen = total - pre;
    char *h = malloc(hlen);
    assert_non_null(h);
    memcpy(h, dict, dl);
    memset(h + dl, ' ', hlen - dl - 1);
    h[hlen - 1] = '\n';
    struct blob b = npy_raw(major, 0, hlen, h, hlen, data, dlen);
    free(h);
    return b;
}

/* safetensors: 8-byte header length (as declared), JSON text, data. */
static struct blob st_raw(uint64_t hlen_field, const char *json, size_t json_len, const void *data,
                          size_t dlen)
{
    struct blob b;
    b.len = 8 + json_len + dlen;
    b.p = malloc(b.len);
    assert_non_null(b.p);
    put_le(b.p, hlen_field, 8);
    memcpy(b.p + 8, json, json_len);
    if (dlen)
        memcpy(b.p + 8 + json_len, data, dlen);
    return b;
}

static struct blob st_build(const char *json, const void *data, size_t dlen)
{
    return st_raw(strlen(json), json, strlen(json), data, dlen);
}

/* Opens b, asserting success. */
static struct tpv_tensor_file *open_ok(const struct blob *b)
{
    struct tpv_tensor_file *f = NULL;
    struct tpv_err err;
    tpv_err_clear(&err);
    int rc = tpv_tensor_file_from_buffer(&f, b->p, b->len, &err);
    if (rc != TPV_OK)
        fail_msg("unexpected error %d: %s", rc, err.message);
    assert_non_null(f);
    return f;
}

/* Opens b, asserting failure with `code` and `substr` in the message; frees b. */
static void expect_fail(struct blob b, int code, const char *substr)
{
    struct tpv_tensor_file *f = (struct tpv_tensor_file *)&f; /* must be reset to NULL */
    struct tpv_err err;
    tpv_err_clear(&err);
    int rc = tpv_tensor_file_from_buffer(&f, b.p, b.len, &err);
    if (rc != code || !strstr(err.message, substr))
        fail_msg("expected code %d with \"%s\", got %d: \"%s\"", code, substr, rc, err.message);
    assert_int_equal(err.code, code);
    assert_null(f);
    blob_free(&b);
}

/* ---------------------------------------------------------------------------------------------
 * Values exactly representable in every float dtype, with their F16 bit patterns. */

static const double vals[8] = { 0.0, 1.0, -2.0, 0.5, 3.0, 0.25, 1024.0, -0.125 };
static const uint16_t vals_f16[8] = { 0x0000, 0x3C00, 0xC000, 0x3800,
                                      0x4200, 0x3400, 0x6400, 0xB000 };

/* n elements of vals (cycled; 0/1 for U8/BOOL-style values) encoded as `dtype`. */
static void *encode(enum tpv_dtype dtype, size_t n, double *expect)
{
    size_t sz = tpv_dtype_size(dtype);
    uint8_t *p = malloc(n * sz + 1);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        double v = vals[i % 8];
        float fv = (float)v;
        uint32_t fbits;
        memcpy(&fbits, &fv, 4);
        switch (dtype) {
        case TPV_DTYPE_F16:
            put_le(p + 2 * i, vals_f16[i % 8], 2);
            break;
        case TPV_DTYPE_BF16:
            put_le(p + 2 * i, fbits >> 16, 2);
            break;
        case TPV_DTYPE_F32:
            memcpy(p + 4 * i, &fv, 4);
            break;
        case TPV_DTYPE_F64:
            memcpy(p + 8 * i, &v, 8);
            break;
        case TPV_DTYPE_U8:
            v = (double)(i * 7 % 256);
            p[i] = (uint8_t)v;
            break;
        case TPV_DTYPE_BOOL:
            v = (double)(i % 3 == 0);
            p[i] = (uint8_t)v;
            break;
        }
        expect[i] = v;
    }
    return p;
}

/* Reads all of t both ways and compares with expect. */
static void check_values(const struct tpv_tensor *t, const double *expect)
{
    double *d = malloc((t->numel + 1) * sizeof *d);
    float *s = malloc((t->numel + 1) * sizeof *s);
    assert_non_null(d);
    assert_non_null(s);
    tpv_tensor_read_f64(t, 0, t->numel, d);
    tpv_tensor_read_f32(t, 0, t->numel, s);
    for (uint64_t i = 0; i < t->numel; i++) {
        assert_true(d[i] == expect[i]);
        assert_true(s[i] == (float)expect[i]);
    }
    if (t->numel > 2) { /* a window in the middle */
        tpv_tensor_read_f64(t, 1, t->numel - 2, d);
        tpv_tensor_read_f32(t, 1, t->numel - 2, s);
        for (uint64_t i = 1; i + 1 < t->numel; i++) {
            assert_true(d[i - 1] == expect[i]);
            assert_true(s[i - 1] == (float)expect[i]);
        }
    }
    free(d);
    free(s);
}

static void test_dtype_names_and_sizes(void **state)
{
    (void)state;
    static const struct { enum tpv_dtype d; size_t size; const char *name; } expect[] = {
        { TPV_DTYPE_F16, 2, "F16" }, { TPV_DTYPE_BF16, 2, "BF16" }, { TPV_DTYPE_F32, 4, "F32" },
        { TPV_DTYPE_F64, 8, "F64" }, { TPV_DTYPE_U8, 1, "U8" },     { TPV_DTYPE_BOOL, 1, "BOOL" },
    };
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
        assert_int_equal(tpv_dtype_size(expect[i].d), expect[i].size);
        assert_string_equal(tpv_dtype_name(expect[i].d), expect[i].name);
    }
}

/* ---------------------------------------------------------------------------------------------
 * .npy round trips */

static void test_npy_round_trips(void **state)
{
    (void)state;
    static const struct { const char *descr; enum tpv_dtype dtype; } dts[] = {
        { "<f2", TPV_DTYPE_F16 }, { "<f4", TPV_DTYPE_F32 }, { "<f8", TPV_DTYPE_F64 },
        { "|u1", TPV_DTYPE_U8 },  { "|b1", TPV_DTYPE_BOOL },
    };
    static const struct { const char *text; int rank; uint64_t shape[4]; } shapes[] = {
        { "()", 0, { 0 } },           { "(5,)", 1, { 5 } },     { "(3, 4)", 2, { 3, 4 } },
        { "(2, 3, 4,)", 3, { 2, 3, 4 } }, { "( 2 ,1,3 , 2 )", 4, { 2, 1, 3, 2 } },
        { "(0, 3)", 2, { 0, 3 } },
    };
    for (int major = 1; major <= 3; major++)
        for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++)
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
                size_t layout = (d + s) % 3;
                uint64_t numel = 1;
                for (int r = 0; r < shapes[s].rank; r++)
                    numel *= shapes[s].shape[r];
                double expect[64];
                void *data = encode(dts[d].dtype, numel, expect);
                /* numpy's layout, then key orders and spacing a dict literal also allows. */
                char dict[160];
                if (layout == 0)
                    snprintf(dict, sizeof dict,
                             "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                             dts[d].descr, shapes[s].text);
                else if (layout == 1)
                    snprintf(dict, sizeof dict, "{'shape': %s, 'descr': '%s', 'fortran_order': "
                             "False}", shapes[s].text, dts[d].descr);
                else
                    snprintf(dict, sizeof dict,
                             "{ \"fortran_order\" :False ,\"descr\":\"%s\",  'shape':%s }",
                             dts[d].descr, shapes[s].text);
                struct blob b = npy_build(major, dict, data, numel * tpv_dtype_size(dts[d].dtype));
                struct tpv_tensor_file *f = open_ok(&b);
                assert_true(tpv_tensor_file_is_npy(f));
                assert_int_equal(tpv_tensor_file_count(f), 1);
                assert_null(tpv_tensor_file_at(f, 1));
                const struct tpv_tensor *t = tpv_tensor_file_at(f, 0);
                assert_ptr_equal(tpv_tensor_file_find(f, ""), t);
                assert_null(tpv_tensor_file_find(f, "x"));
                assert_null(tpv_tensor_file_metadata(f, "format"));
                assert_string_equal(t->name, "");
                assert_int_equal(t->dtype, dts[d].dtype);
                assert_int_equal(t->rank, shapes[s].rank);
                for (int r = 0; r < t->rank; r++)
                    assert_int_equal(t->shape[r], shapes[s].shape[r]);
                assert_int_equal(t->numel, numel);
                assert_int_equal(t->nbytes, numel * tpv_dtype_size(dts[d].dtype));
                assert_int_equal(((const uint8_t *)t->data - b.p) % 64, 0);
                check_values(t, expect);
                assert_int_equal(tpv_tensor_check_finite(t, NULL), TPV_OK);
                tpv_tensor_file_close(f);
                blob_free(&b);
                free(data);
            }
}

/* ---------------------------------------------------------------------------------------------
 * F16 / BF16 bit patterns */

static void test_half_bit_patterns(void **state)
{
    (void)state;
    static const struct { uint16_t bits; double value; } f16[] = {
        { 0x3C00, 1.0 },           { 0xC000, -2.0 },           { 0x3555, 0.333251953125 },
        { 0x0001, 0x1p-24 },       { 0x8001, -0x1p-24 },       { 0x03FF, 1023 * 0x1p-24 },
        { 0x0400, 0x1p-14 },       { 0x7BFF, 65504.0 },        { 0xFBFF, -65504.0 },
        { 0x7C00, INFINITY },      { 0xFC00, -INFINITY },      { 0x0000, 0.0 },
        { 0x3BFF, 1.0 - 0x1p-11 }, { 0x3C01, 1.0 + 0x1p-10 },
    };
    static const struct { uint16_t bits; double value; } bf16[] = {
        { 0x3F80, 1.0 },     { 0xC000, -2.0 },       { 0x4049, 3.140625 }, { 0x0001, 0x1p-133 },
        { 0x7F80, INFINITY }, { 0xFF80, -INFINITY }, { 0x7F7F, 0x1.fep127 }, { 0x0080, 0x1p-126 },
    };
    for (size_t i = 0; i < sizeof f16 / sizeof f16[0]; i++) {
        assert_true((double)tpv_half_to_f32(f16[i].bits) == f16[i].value);
    }
    for (size_t i = 0; i < sizeof bf16 / sizeof bf16[0]; i++)
        assert_true((double)tpv_bf16_to_f32(bf16[i].bits) == bf16[i].value);
    assert_true(signbit(tpv_half_to_f32(0x8000)) && tpv_half_to_f32(0x8000) == 0.0f);
    assert_true(isnan(tpv_half_to_f32(0x7E00)) && isnan(tpv_half_to_f32(0x7C01)));
    assert_true(isnan(tpv_half_to_f32(0xFE00)) && signbit(tpv_half_to_f32(0xFE00)));
    assert_true(isnan(tpv_bf16_to_f32(0x7FC0)) && isnan(tpv_bf16_to_f32(0x7F81)));

    /* The same patterns through a safetensors file, both read paths, at an odd offset. */
    uint8_t data[1 + 2 * 14 + 2 * 8];
    data[0] = 0xAA;
    for (size_t i = 0; i < 14; i++)
        put_le(data + 1 + 2 * i, f16[i].bits, 2);
    for (size_t i = 0; i < 8; i++)
        put_le(data + 29 + 2 * i, bf16[i].bits, 2);
    struct blob b = st_build("{\"h\":{\"dtype\":\"F16\",\"shape\":[14],\"data_offsets\":[1,29]},"
                             "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,4],\"data_offsets\":[29,45]}}",
                             data, sizeof data);
    struct tpv_tensor_file *f = open_ok(&b);
    const struct tpv_tensor *h = tpv_tensor_file_find(f, "h"), *bt = tpv_tensor_file_find(f, "b");
    assert_non_null(h);
    assert_non_null(bt);
    double d[14];
    float s[14];
    tpv_tensor_read_f64(h, 0, 14, d);
    tpv_tensor_read_f32(h, 0, 14, s);
    for (size_t i = 0; i < 14; i++) {
        assert_true(d[i] == f16[i].value);
        assert_true((double)s[i] == f16[i].value);
    }
    tpv_tensor_read_f64(bt, 0, 8, d);
    tpv_tensor_read_f32(bt, 0, 8, s);
    for (size_t i = 0; i < 8; i++) {
        assert_true(d[i] == bf16[i].value);
        assert_true((double)s[i] == bf16[i].value);
    }
    tpv_tensor_file_close(f);
    blob_free(&b);
}

/* ---------------------------------------------------------------------------------------------
 * safetensors round trips */

static void test_safetensors_round_trip(void **state)
{
    (void)state;
    /* Header order differs from data order; offsets are deliberately unaligned. */
    double e64[6], e32[4], e16[3], ebf[2], eu8[5], ebool[4];
    uint8_t data[1 + 48 + 16 + 6 + 4 + 5 + 4];
    size_t o = 0;
    data[o++] = 0;
    void *p;
    p = encode(TPV_DTYPE_F64, 6, e64), memcpy(data + o, p, 48), o += 48, free(p);
    p = encode(TPV_DTYPE_F32, 4, e32), memcpy(data + o, p, 16), o += 16, free(p);
    p = encode(TPV_DTYPE_F16, 3, e16), memcpy(data + o, p, 6), o += 6, free(p);
    p = encode(TPV_DTYPE_BF16, 2, ebf), memcpy(data + o, p, 4), o += 4, free(p);
    p = encode(TPV_DTYPE_U8, 5, eu8), memcpy(data + o, p, 5), o += 5, free(p);
    p = encode(TPV_DTYPE_BOOL, 4, ebool), memcpy(data + o, p, 4), o += 4, free(p);
    assert_int_equal(o, sizeof data);
    const char *json =
        "{\"z.bool\":{\"dtype\":\"BOOL\",\"shape\":[2,2],\"data_offsets\":[80,84]},"
        " \"__metadata__\":{\"format\":\"pt\",\"note\":\"\"},"
        " \"a.f32\":{\"shape\":[4],\"dtype\":\"F32\",\"data_offsets\":[49,65]},"
        " \"m.f64\":{\"dtype\":\"F64\",\"shape\":[2,3],\"data_offsets\":[1,49],\"extra\":1},"
        " \"scalar.f16\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[65,71]},"
        " \"bf\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[71,75]},"
        " \"u\":{\"dtype\":\"U8\",\"shape\":[5],\"data_offsets\":[75,80]},"
        " \"empty\":{\"dtype\":\"F32\",\"shape\":[0,7],\"data_offsets\":[84,84]},"
        " \"empty0\":{\"dtype\":\"F64\",\"shape\":[0],\"data_offsets\":[0,0]}}        ";
    struct blob b = st_build(json, data, sizeof data);
    struct tpv_tensor_file *f = open_ok(&b);
    assert_false(tpv_tensor_file_is_npy(f));
    assert_int_equal(tpv_tensor_file_count(f), 8);
    static const char *const order[] = { "empty0", "m.f64", "a.f32", "scalar.f16",
                                         "bf",     "u",     "z.bool", "empty" };
    for (size_t i = 0; i < 8; i++) {
        const struct tpv_tensor *t = tpv_tensor_file_at(f, i);
        assert_string_equal(t->name, order[i]);
        assert_ptr_equal(tpv_tensor_file_find(f, order[i]), t);
        assert_int_equal(tpv_tensor_check_finite(t, NULL), TPV_OK);
    }
    assert_null(tpv_tensor_file_at(f, 8));
    assert_null(tpv_tensor_file_find(f, "__metadata__"));
    assert_null(tpv_tensor_file_find(f, "nope"));
    assert_string_equal(tpv_tensor_file_metadata(f, "format"), "pt");
    assert_string_equal(tpv_tensor_file_metadata(f, "note"), "");
    assert_null(tpv_tensor_file_metadata(f, "missing"));

    const struct tpv_tensor *t = tpv_tensor_file_find(f, "m.f64");
    assert_int_equal(t->dtype, TPV_DTYPE_F64);
    assert_int_equal(t->rank, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->numel, 6);
    assert_int_equal(t->nbytes, 48);
    assert_ptr_equal(t->data, b.p + 8 + strlen(json) + 1);
    check_values(t, e64);
    check_values(tpv_tensor_file_find(f, "a.f32"), e32);
    check_values(tpv_tensor_file_find(f, "scalar.f16"), e16);
    check_values(tpv_tensor_file_find(f, "bf"), ebf);
    check_values(tpv_tensor_file_find(f, "u"), eu8);
    check_values(tpv_tensor_file_find(f, "z.bool"), ebool);
    t = tpv_tensor_file_find(f, "empty");
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->nbytes, 0);
    tpv_tensor_file_close(f);
    blob_free(&b);

    /* Rank 0 and an empty header. */
    double one = 1.5;
    b = st_build("{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]}}", &one, 8);
    f = open_ok(&b);
    t = tpv_tensor_file_at(f, 0);
    assert_int_equal(t->rank, 0);
    assert_int_equal(t->numel, 1);
    double got = 0;
    tpv_tensor_read_f64(t, 0, 1, &got);
    assert_true(got == 1.5);
    tpv_tensor_file_close(f);
    blob_free(&b);
    b = st_build("{}", NULL, 0);
    f = open_ok(&b);
    assert_int_equal(tpv_tensor_file_count(f), 0);
    assert_null(tpv_tensor_file_find(f, "a"));
    tpv_tensor_file_close(f);
    blob_free(&b);
    tpv_tensor_file_close(NULL);
}

/* Many tensors: sorted by offset, found by name. */
static void test_safetensors_many(void **state)
{
    (void)state;
    enum { N = 300 };
    size_t cap = N * 80 + 16, len = 0;
    char *json = malloc(cap);
    float *data = malloc(N * sizeof *data);
    assert_non_null(json);
    assert_non_null(data);
    len += (size_t)snprintf(json + len, cap - len, "{");
    for (int i = 0; i < N; i++) {
        int slot = (i * 37) % N; /* a permutation: names and offsets in different orders */
        data[slot] = (float)i;
        len += (size_t)snprintf(json + len, cap - len,
                                "%s\"t%d\":{\"dtype\":\"F32\",\"shape\":[1],"
                                "\"data_offsets\":[%d,%d]}", i ? "," : "", i, slot * 4,
                                slot * 4 + 4);
    }
    snprintf(json + len, cap - len, "}");
    struct blob b = st_build(json, data, N * sizeof *data);
    struct tpv_tensor_file *f = open_ok(&b);
    assert_int_equal(tpv_tensor_file_count(f), N);
    for (int i = 0; i < N; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%d", i);
        const struct tpv_tensor *t = tpv_tensor_file_find(f, name);
        assert_non_null(t);
        float v;
        tpv_tensor_read_f32(t, 0, 1, &v);
        assert_true(v == (float)i);
        t = tpv_tensor_file_at(f, (size_t)i);
        assert_ptr_equal(t->data, (const uint8_t *)b.p + 8 + strlen(json) + 4 * (size_t)i);
    }
    tpv_tensor_file_close(f);
    blob_free(&b);
    free(json);
    free(data);
}

/* ---------------------------------------------------------------------------------------------
 * Malformed .npy */

static struct blob npy_dict_only(const char *dict, size_t dlen)
{
    static const uint8_t zeros[64];
    return npy_build(1, dict, zeros, dlen);
}

static void test_npy_malformed(void **state)
{
    (void)state;
    static const uint8_t zeros[256];
    const char *ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }";
    struct blob b;

    b = npy_build(1, ok, zeros, 12);
    b.p[1] = 'X';
    expect_fail(b, TPV_EFORMAT, "safetensors"); /* not npy magic: read as safetensors */
    b = npy_build(1, ok, zeros, 12);
    b.len = 7;
    expect_fail(b, TPV_EFORMAT, "bad magic or file too short");
    b = npy_build(1, ok, zeros, 12);
    b.len = 9; /* v1 needs 2 length bytes */
    expect_fail(b, TPV_EFORMAT, "truncated header length");
    b = npy_build(2, ok, zeros, 12);
    b.len = 11;
    expect_fail(b, TPV_EFORMAT, "truncated header length");
    b = npy_build(1, ok, zeros, 12);
    b.p[6] = 4;
    expect_fail(b, TPV_EFORMAT, "unsupported version 4.0");
    b = npy_build(1, ok, zeros, 12);
    b.p[7] = 1;
    expect_fail(b, TPV_EFORMAT, "unsupported version 1.1");
    b = npy_build(1, ok, zeros, 12);
    b.p[6] = 0;
    expect_fail(b, TPV_EFORMAT, "unsupported version 0.0");
    b = npy_raw(1, 0, 500, ok, strlen(ok), NULL, 0);
    expect_fail(b, TPV_EFORMAT, "header length 500 at byte 8 runs past the end");
    b = npy_raw(2, 0, 0xFFFFFFFFu, ok, strlen(ok), NULL, 0);
    expect_fail(b, TPV_EFORMAT, "exceeds the limit");
    b = npy_build(1, ok, zeros, 12);
    b.len = 70; /* truncated inside the header */
    expect_fail(b, TPV_EFORMAT, "runs past the end");

    /* Header syntax */
    static const struct { const char *dict; const char *msg; } bad[] = {
        { "", "expected '{'" },
        { "['descr']", "expected '{'" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), ", "expected a quoted string" },
        { "{'descr': '<f4' 'fortran_order': False, 'shape': (3,)}", "expected ',' or '}'" },
        { "{'descr' '<f4', 'fortran_order': False, 'shape': (3,)}", "expected ':'" },
        { "{'descr: '<f4', 'fortran_order': False, 'shape': (3,)}", "unknown key 'descr: '" },
        { "{'descr': '<f4, 'fortran_order': False, 'shape': (3,)}", "unsupported dtype '<f4, '" },
        { "{'descr': '<f4\n', 'fortran_order': False, 'shape': (3,)}", "unsupported or overlong" },
        { "{'descr': 'a\\'b', 'fortran_order': False, 'shape': (3,)}", "unsupported or overlong" },
        { "{descr: '<f4', 'fortran_order': False, 'shape': (3,)}", "expected a quoted string" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (3,)} x", "unexpected text" },
        { "{'descr': '<f4', 'fortran_order': false, 'shape': (3,)}", "True or False" },
        { "{'descr': '<f4', 'fortran_order': 0, 'shape': (3,)}", "True or False" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': [3]}", "shape must be a tuple" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (3)}", "trailing comma" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (-3,)}", "non-negative integer" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (3.0,)}", "expected ',' or ')'" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (3,,)}", "non-negative integer" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4}", "expected ',' or ')'" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (,)}", "non-negative integer" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}",
          "shape entry too large" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1)}",
          "more than 8 dimensions" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}",
          "overflows" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4294967296, 4294967296)}",
          "overflows" }, /* numel 0, but the other dimensions' product overflows */
        { "{'descr': '<f4', 'fortran_order': False}", "missing key 'shape'" },
        { "{'shape': (3,), 'fortran_order': False}", "missing key 'descr'" },
        { "{'descr': '<f4', 'shape': (3,)}", "missing key 'fortran_order'" },
        { "{}", "missing key 'descr'" },
        { "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'extra': 1}",
          "unknown key 'extra'" },
        { "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3,)}",
          "key 'descr' given twice" },
        { "{'descr': '<f4', 'fortran_order': True, 'shape': (3,)}", "fortran_order True" },
        { "{'descr': '>f4', 'fortran_order': False, 'shape': (3,)}", "big-endian dtype '>f4'" },
        { "{'descr': '>f8', 'fortran_order': False, 'shape': (3,)}", "big-endian" },
        { "{'descr': '|O', 'fortran_order': False, 'shape': (3,)}", "object dtype" },
        { "{'descr': '<i8', 'fortran_order': False, 'shape': (3,)}", "unsupported dtype '<i8'" },
        { "{'descr': '<c8', 'fortran_order': False, 'shape': (3,)}", "unsupported dtype" },
        { "{'descr': '=f4', 'fortran_order': False, 'shape': (3,)}", "unsupported dtype" },
        { "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,)}",
          "structured dtypes" },
        { "{'descr': 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx', 'fortran_order': False, "
          "'shape': (3,)}", "overlong" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        /* Enough data for 3 floats so only the header can be at fault. */
        b = npy_dict_only(bad[i].dict, 12);
        expect_fail(b, TPV_EFORMAT, bad[i].msg);
    }
    /* The syntax errors name a byte offset. */
    b = npy_dict_only("{'descr': '<f4' 'fortran_order': False, 'shape': (3,)}", 12);
    expect_fail(b, TPV_EFORMAT, "at byte 26");

    /* Data size mismatch: both numbers named. */
    b = npy_build(1, ok, zeros, 8);
    expect_fail(b, TPV_EFORMAT, "data is 8 bytes after the header (at byte 128), but the shape "
                                "and dtype F32 need 12 bytes");
    b = npy_build(1, ok, zeros, 16);
    expect_fail(b, TPV_EFORMAT, "data is 16 bytes");
    b = npy_build(3, "{'descr': '<f8', 'fortran_order': False, 'shape': ()}", zeros, 0);
    expect_fail(b, TPV_EFORMAT, "need 8 bytes");
    b = npy_build(2, "{'descr': '<f2', 'fortran_order': False, 'shape': (0,)}", zeros, 1);
    expect_fail(b, TPV_EFORMAT, "data is 1 bytes");
}

/* ---------------------------------------------------------------------------------------------
 * Malformed safetensors */

static void test_safetensors_malformed(void **state)
{
    (void)state;
    static const uint8_t zeros[64];
    struct blob b;
    const char *ok = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

    b = st_build(ok, zeros, 8);
    b.len = 5;
    expect_fail(b, TPV_EFORMAT, "file is 5 bytes, too short");
    b = st_build(ok, zeros, 8);
    b.len = 0;
    expect_fail(b, TPV_EFORMAT, "file is 0 bytes");
    b = st_raw(strlen(ok) + 100, ok, strlen(ok), zeros, 8);
    expect_fail(b, TPV_EFORMAT, "runs past the end of the file");
    b = st_raw(UINT64_MAX, ok, strlen(ok), zeros, 8);
    expect_fail(b, TPV_EFORMAT, "exceeds the limit");
    b = st_raw((uint64_t)100 * 1024 * 1024 + 1, ok, strlen(ok), zeros, 8);
    expect_fail(b, TPV_EFORMAT, "header length 104857601 exceeds the limit");
    b = st_raw(0, "", 0, NULL, 0);
    expect_fail(b, TPV_EFORMAT, "invalid JSON header");

    static const struct { const char *json; size_t dlen; const char *msg; } bad[] = {
        { "{\"w\":", 8, "invalid JSON header at byte" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", 8,
          "invalid JSON header" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
          "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "duplicate" },
        { "[1,2]", 8, "must be an object" },
        { "\"w\"", 8, "invalid JSON header" },
        { "{\"w\":[1]}", 8, "tensor 'w' must be an object" },
        { "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'w': dtype missing" },
        { "{\"w\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype missing or not" },
        { "{\"w\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
          "'w': unsupported dtype 'I64'" },
        { "{\"w\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
          "unsupported dtype 'f32'" },
        { "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "'w': shape missing" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8,
          "shape must be an array" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
          "'w': shape[0] must be a non-negative integer" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8,
          "shape[0] must be a non-negative integer" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,\"2\"],\"data_offsets\":[0,8]}}", 8,
          "shape[1] must be" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8,
          "rank 9 exceeds the maximum 8" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],"
          "\"data_offsets\":[0,8]}}", 8, "'w': shape product x dtype size overflows" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[1099511627776,0,1099511627776],"
          "\"data_offsets\":[0,0]}}", 8, "'w': shape product x dtype size overflows" },
        { "{\"w\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952,0],"
          "\"data_offsets\":[0,0]}}", 8, "overflows" }, /* 2^61 x 8 bytes */
        { "{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,536870912],"
          "\"data_offsets\":[0,8]}}", 8, "overflows" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "'w': data_offsets missing" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8,
          "data_offsets must be [begin, end]" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}", 8,
          "data_offsets must be" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8,
          "data_offsets must be" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{\"a\":1}}}", 8,
          "data_offsets must be" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
          "'w': data_offsets end 0 is before begin 8" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8,
          "span 4 bytes but shape x F32 needs 8" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 8,
          "'w': data_offsets end 12 is past the end of the data (8 bytes)" },
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[18446744073709551608,0]}}", 8,
          "invalid JSON header" }, /* jansson refuses integers beyond int64 */
        { "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[9223372036854775799,"
          "9223372036854775807]}}", 8, "end 9223372036854775807 is past the end of the data" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
          "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 16,
          "tensors 'a' [0, 8) and 'b' [4, 12) overlap" },
        { "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
          "\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 16, "overlap" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
          "\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 16, "overlap" },
        { "{\"\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
          "empty tensor name" },
        { "{\"__metadata__\":[1],\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
          8, "__metadata__ must be an object" },
        { "{\"__metadata__\":{\"k\":1}}", 8, "__metadata__ value of 'k' must be a string" },
        { "{\"w\\u0000x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
          "invalid JSON header" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        b = st_build(bad[i].json, zeros, bad[i].dlen);
        expect_fail(b, TPV_EFORMAT, bad[i].msg);
    }
    /* Deeply nested JSON is refused by jansson's depth limit, not by a stack overflow. */
    enum { DEPTH = 100000 };
    char *deep = malloc(2 * DEPTH + 1);
    assert_non_null(deep);
    memset(deep, '[', DEPTH);
    memset(deep + DEPTH, ']', DEPTH);
    deep[2 * DEPTH] = '\0';
    b = st_build(deep, NULL, 0);
    free(deep);
    expect_fail(b, TPV_EFORMAT, "invalid JSON header");
    /* The field names the tensor. */
    struct tpv_tensor_file *f = NULL;
    struct tpv_err err;
    b = st_build("{\"layer.1\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", zeros,
                 8);
    assert_int_equal(tpv_tensor_file_from_buffer(&f, b.p, b.len, &err), TPV_EFORMAT);
    assert_string_equal(err.field, "layer.1");
    blob_free(&b);
}

/* ---------------------------------------------------------------------------------------------
 * Finiteness */

static void put_bad(uint8_t *data, enum tpv_dtype dtype, size_t i, bool inf)
{
    switch (dtype) {
    case TPV_DTYPE_F16:
        put_le(data + 2 * i, inf ? 0xFC00 : 0x7E01, 2);
        break;
    case TPV_DTYPE_BF16:
        put_le(data + 2 * i, inf ? 0x7F80 : 0xFFC1, 2);
        break;
    case TPV_DTYPE_F32: {
        float v = inf ? -INFINITY : NAN;
        memcpy(data + 4 * i, &v, 4);
        break;
    }
    case TPV_DTYPE_F64: {
        double v = inf ? INFINITY : -NAN;
        memcpy(data + 8 * i, &v, 8);
        break;
    }
    case TPV_DTYPE_U8:
    case TPV_DTYPE_BOOL:
        break;
    }
}

static void test_check_finite(void **state)
{
    (void)state;
    static const char *const dn[] = { "F16", "BF16", "F32", "F64" };
    enum { N = 3000 };
    static const size_t where[] = { 0, 1, 1023, 1024, 1500, 2047, N - 1 };
    for (int d = TPV_DTYPE_F16; d <= TPV_DTYPE_F64; d++) {
        size_t sz = tpv_dtype_size((enum tpv_dtype)d);
        uint8_t *data = calloc(1, N * sz + 3);
        assert_non_null(data);
        for (size_t w = 0; w < sizeof where / sizeof where[0]; w++) {
            for (int inf = 0; inf < 2; inf++) {
                memset(data, 0, N * sz + 3);
                /* largest finite values must pass */
                if (d == TPV_DTYPE_F16)
                    put_le(data + 3 + 2 * 5, 0x7BFF, 2);
                put_bad(data + 3, (enum tpv_dtype)d, where[w], inf);
                if (where[w] + 7 < N) /* a later bad value must not be reported */
                    put_bad(data + 3, (enum tpv_dtype)d, where[w] + 7, !inf);
                char json[200];
                snprintf(json, sizeof json,
                         "{\"layers.%d\":{\"dtype\":\"%s\",\"shape\":[%d],"
                         "\"data_offsets\":[3,%zu]}}", d, dn[d], N, 3 + N * sz);
                struct blob b = st_build(json, data, N * sz + 3);
                struct tpv_tensor_file *f = open_ok(&b);
                struct tpv_err err;
                tpv_err_clear(&err);
                assert_int_equal(tpv_tensor_check_finite(tpv_tensor_file_at(f, 0), &err),
                                 TPV_EFORMAT);
                char expect[64];
                snprintf(expect, sizeof expect, "at flat index %zu", where[w]);
                if (!strstr(err.message, expect) || !strstr(err.message, "layers."))
                    fail_msg("check_finite: \"%s\" lacks \"%s\"", err.message, expect);
                assert_non_null(strstr(err.message, inf ? "inf" : "nan"));
                tpv_tensor_file_close(f);
                blob_free(&b);
            }
        }
        free(data);
    }
    /* An npy tensor is named "(unnamed)"; integers are always finite. */
    uint8_t u8[4] = { 255, 0, 1, 2 };
    struct blob b = npy_build(1, "{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }",
                              u8, 4);
    struct tpv_tensor_file *f = open_ok(&b);
    assert_int_equal(tpv_tensor_check_finite(tpv_tensor_file_at(f, 0), NULL), TPV_OK);
    tpv_tensor_file_close(f);
    blob_free(&b);
    double nan2[2] = { 0, NAN };
    b = npy_build(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", nan2, 16);
    f = open_ok(&b);
    struct tpv_err err;
    assert_int_equal(tpv_tensor_check_finite(tpv_tensor_file_at(f, 0), &err), TPV_EFORMAT);
    assert_non_null(strstr(err.message, "(unnamed)"));
    assert_non_null(strstr(err.message, "flat index 1"));
    tpv_tensor_file_close(f);
    blob_free(&b);
}

/* ---------------------------------------------------------------------------------------------
 * Real files: mapping, I/O errors */

static void write_file(const char *path, const void *p, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    if (len)
        assert_int_equal(fwrite(p, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static void test_open_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/tpvd-tensor-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    float v[3] = { 1.0f, 2.0f, 3.0f };
    struct blob b = npy_build(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
                              v, sizeof v);
    snprintf(path, sizeof path, "%s/a.npy", dir);
    write_file(path, b.p, b.len);
    blob_free(&b);
    struct tpv_tensor_file *f = NULL;
    struct tpv_err err;
    assert_int_equal(tpv_tensor_file_open(&f, path, &err), TPV_OK);
    double d[3];
    tpv_tensor_read_f64(tpv_tensor_file_at(f, 0), 0, 3, d);
    assert_true(d[0] == 1.0 && d[1] == 2.0 && d[2] == 3.0);
    tpv_tensor_file_close(f);
    assert_int_equal(unlink(path), 0);

    /* Malformed: the message starts with the path. */
    b = npy_build(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", v, sizeof v);
    write_file(path, b.p, b.len);
    blob_free(&b);
    assert_int_equal(tpv_tensor_file_open(&f, path, &err), TPV_EFORMAT);
    assert_null(f);
    assert_int_equal(strncmp(err.message, path, strlen(path)), 0);
    assert_non_null(strstr(err.message, "need 16 bytes"));
    assert_int_equal(unlink(path), 0);

    /* Empty file: a format error, not a mapping error. */
    write_file(path, NULL, 0);
    assert_int_equal(tpv_tensor_file_open(&f, path, &err), TPV_EFORMAT);
    assert_non_null(strstr(err.message, "file is 0 bytes"));
    assert_int_equal(unlink(path), 0);

    assert_int_equal(tpv_tensor_file_open(&f, path, &err), TPV_EIO);
    assert_null(f);
    assert_non_null(strstr(err.message, "cannot open"));
    assert_int_equal(tpv_tensor_file_open(&f, dir, &err), TPV_EIO);
    assert_non_null(strstr(err.message, "not a regular file"));
    assert_int_equal(rmdir(dir), 0);
}

/* ---------------------------------------------------------------------------------------------
 * Interop with NumPy */

static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    char path[512];
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        assert_int_equal(unlink(path), 0);
    }
    closedir(d);
    assert_int_equal(rmdir(dir), 0);
}

/* Compares tensor t with NAME.txt written by make_tensors.py. */
static void compare_with_expect(const struct tpv_tensor *t, const char *txt)
{
    FILE *fp = fopen(txt, "r");
    if (!fp)
        fail_msg("cannot read %s", txt);
    char line[128];
    assert_non_null(fgets(line, sizeof line, fp));
    assert_int_equal(strncmp(line, "shape", 5), 0);
    int rank = 0;
    char *p = line + 5;
    for (;;) {
        char *end;
        unsigned long long dim = strtoull(p, &end, 10);
        if (end == p)
            break;
        assert_true(rank < t->rank);
        assert_int_equal(t->shape[rank], dim);
        rank++;
        p = end;
    }
    assert_int_equal(rank, t->rank);
    double *d = malloc((t->numel + 1) * sizeof *d);
    float *s = malloc((t->numel + 1) * sizeof *s);
    assert_non_null(d);
    assert_non_null(s);
    tpv_tensor_read_f64(t, 0, t->numel, d);
    tpv_tensor_read_f32(t, 0, t->numel, s);
    uint64_t i = 0;
    for (; fgets(line, sizeof line, fp); i++) {
        double want = strtod(line, NULL);
        assert_true(i < t->numel);
        if (d[i] != want || signbit(d[i]) != signbit(want))
            fail_msg("%s[%llu]: read %a, numpy wrote %a", txt, (unsigned long long)i, d[i], want);
        assert_true(s[i] == (float)want);
    }
    assert_int_equal(i, t->numel);
    fclose(fp);
    free(d);
    free(s);
}

static void test_numpy_interop(void **state)
{
    (void)state;
    const char *root = getenv("TPV_SOURCE_ROOT");
    assert_non_null(root);
    char dir[] = "/tmp/tpvd-numpy-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cmd[600];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/tools/make_tensors.py' '%s'", root, dir);
    int status = system(cmd);
    if (status != 0)
        fail_msg("%s failed (status %d): /usr/bin/python3 needs numpy (apt-get install "
                 "python3-numpy)", cmd, status);

    static const char *const npys[] = { "f32_v1", "f64_v2", "f32_v3", "f16_v1", "f64_scalar",
                                        "f32_empty", "u8", "bool" };
    static const enum tpv_dtype npy_types[] = { TPV_DTYPE_F32, TPV_DTYPE_F64, TPV_DTYPE_F32,
                                                TPV_DTYPE_F16, TPV_DTYPE_F64, TPV_DTYPE_F32,
                                                TPV_DTYPE_U8,  TPV_DTYPE_BOOL };
    char path[512], txt[512];
    for (size_t i = 0; i < sizeof npys / sizeof npys[0]; i++) {
        snprintf(path, sizeof path, "%s/%s.npy", dir, npys[i]);
        snprintf(txt, sizeof txt, "%s/%s.txt", dir, npys[i]);
        struct tpv_tensor_file *f = NULL;
        struct tpv_err err;
        int rc = tpv_tensor_file_open(&f, path, &err);
        if (rc != TPV_OK)
            fail_msg("%s: %s", path, err.message);
        assert_true(tpv_tensor_file_is_npy(f));
        const struct tpv_tensor *t = tpv_tensor_file_at(f, 0);
        assert_int_equal(t->dtype, npy_types[i]);
        compare_with_expect(t, txt);
        tpv_tensor_file_close(f);
    }
    /* A v2 header has a 4-byte length. */
    snprintf(path, sizeof path, "%s/f64_v2.npy", dir);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    uint8_t magic[8];
    assert_int_equal(fread(magic, 1, 8, fp), 8);
    fclose(fp);
    assert_int_equal(magic[6], 2);

    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct tpv_tensor_file *f = NULL;
    struct tpv_err err;
    assert_int_equal(tpv_tensor_file_open(&f, path, &err), TPV_OK);
    assert_int_equal(tpv_tensor_file_count(f), 3);
    assert_string_equal(tpv_tensor_file_metadata(f, "format"), "np");
    static const char *const names[] = { "net.0.weight", "net.0.bias", "net.2.weight" };
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(tpv_tensor_file_at(f, i)->name, names[i]);
        snprintf(txt, sizeof txt, "%s/model.%s.txt", dir, names[i]);
        compare_with_expect(tpv_tensor_file_find(f, names[i]), txt);
    }
    tpv_tensor_file_close(f);

    /* What numpy writes that we refuse, with the reason. */
    snprintf(path, sizeof path, "%s/refuse.txt", dir);
    fp = fopen(path, "r");
    assert_non_null(fp);
    char line[256];
    int refused = 0;
    while (fgets(line, sizeof line, fp)) {
        line[strcspn(line, "\n")] = '\0';
        char *sp = strchr(line, ' ');
        assert_non_null(sp);
        *sp = '\0';
        snprintf(txt, sizeof txt, "%s/%s.npy", dir, line);
        assert_int_equal(tpv_tensor_file_open(&f, txt, &err), TPV_EFORMAT);
        if (!strstr(err.message, sp + 1))
            fail_msg("%s: \"%s\" lacks \"%s\"", txt, err.message, sp + 1);
        refused++;
    }
    fclose(fp);
    assert_int_equal(refused, 4);
    rm_tree(dir);
}

/* ---------------------------------------------------------------------------------------------
 * The fuzz seed corpora (tests/fuzz/corpus/{npy,safetensors}): each file either opens and can be
 * read end to end, or fails with TPV_EFORMAT; under the ASan build this checks every byte read.
 * Crash inputs found by the fuzzers go there too, so this is also the regression test. */

static void touch_all(const struct tpv_tensor_file *f)
{
    for (size_t i = 0; i < tpv_tensor_file_count(f); i++) {
        const struct tpv_tensor *t = tpv_tensor_file_at(f, i);
        assert_ptr_equal(tpv_tensor_file_find(f, t->name), t);
        double *d = malloc((t->numel + 1) * sizeof *d);
        float *s = malloc((t->numel + 1) * sizeof *s);
        assert_non_null(d);
        assert_non_null(s);
        tpv_tensor_read_f64(t, 0, t->numel, d);
        tpv_tensor_read_f32(t, 0, t->numel, s);
        (void)tpv_tensor_check_finite(t, NULL);
        free(d);
        free(s);
    }
}

static void test_fuzz_corpus(void **state)
{
    (void)state;
    const char *root = getenv("TPV_SOURCE_ROOT");
    assert_non_null(root);
    static const char *const dirs[] = { "npy", "safetensors" };
    int opened = 0, refused = 0;
    for (size_t k = 0; k < 2; k++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/%s", root, dirs[k]);
        DIR *d = opendir(dir);
        assert_non_null(d);
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            char path[800];
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            struct tpv_tensor_file *f = NULL;
            struct tpv_err err;
            int rc = tpv_tensor_file_open(&f, path, &err);
            if (rc == TPV_OK) {
                assert_int_equal(tpv_tensor_file_is_npy(f), k == 0);
                touch_all(f);
                tpv_tensor_file_close(f);
                opened++;
            } else {
                if (rc != TPV_EFORMAT)
                    fail_msg("%s: %d %s", path, rc, err.message);
                refused++;
            }
        }
        closedir(d);
    }
    assert_true(opened >= 5);
    assert_true(refused >= 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_names_and_sizes),
        cmocka_unit_test(test_npy_round_trips),
        cmocka_unit_test(test_half_bit_patterns),
        cmocka_unit_test(test_safetensors_round_trip),
        cmocka_unit_test(test_safetensors_many),
        cmocka_unit_test(test_npy_malformed),
        cmocka_unit_test(test_safetensors_malformed),
        cmocka_unit_test(test_check_finite),
        cmocka_unit_test(test_open_files),
        cmocka_unit_test(test_numpy_interop),
        cmocka_unit_test(test_fuzz_corpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
