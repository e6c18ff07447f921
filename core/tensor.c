/* tensor.c: the .npy (v1/v2/v3) and safetensors readers of tensor.h, over a read-only mapping or a
 * caller's buffer, plus dtype conversion and the finiteness check.
 *
 * Format rules: DESIGN.md section 4.  Every length and offset read from a file is checked against
 * the buffer before it is used, products go through __builtin_mul_overflow, and a tensor is only
 * handed out once its whole byte range is known to lie inside the buffer.  Nothing is copied:
 * tensors point into the buffer. */
#include "core/tensor.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/half.h"
#include "core/json_alloc.h"

/* Files are little-endian and values are loaded with memcpy into host integers. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tensor.c assumes a little-endian host"
#endif

/* Limits on what a file may ask of us before any data is touched. */
#define NPY_HEADER_MAX (1u << 20)                  /* numpy itself refuses > 10 kB by default */
#define ST_HEADER_MAX ((uint64_t)100 * 1024 * 1024) /* safetensors JSON header */
#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6

struct tpv_tensor_file {
    const uint8_t *base; /* the whole file */
    size_t len;
    void *map;           /* owned mapping (tpv_tensor_file_open), or NULL for a caller buffer */
    size_t map_len;
    bool is_npy;
    size_t count;
    struct tpv_tensor *tensors; /* owned; sorted by data offset */
    const struct tpv_tensor **by_name; /* owned array; tensors sorted by name, for find() */
    json_t *header;             /* safetensors: owned; tensor names point at its keys */
    json_t *metadata;           /* borrowed from header; NULL when absent */
};

/* ---------------------------------------------------------------------------------------------
 * dtypes */

size_t tpv_dtype_size(enum tpv_dtype dtype)
{
    switch (dtype) {
    case TPV_DTYPE_F16:
    case TPV_DTYPE_BF16:
        return 2;
    case TPV_DTYPE_F32:
        return 4;
    case TPV_DTYPE_F64:
        return 8;
    case TPV_DTYPE_U8:
    case TPV_DTYPE_BOOL:
        return 1;
    }
    return 0;
}

const char *tpv_dtype_name(enum tpv_dtype dtype)
{
    switch (dtype) {
    case TPV_DTYPE_F16:
        return "F16";
    case TPV_DTYPE_BF16:
        return "BF16";
    case TPV_DTYPE_F32:
        return "F32";
    case TPV_DTYPE_F64:
        return "F64";
    case TPV_DTYPE_U8:
        return "U8";
    case TPV_DTYPE_BOOL:
        return "BOOL";
    }
    return "unknown";
}

/* Fills numel and nbytes from shape; false on overflow of uint64.  Zero dimensions count as 1 in
 * the overflow check, so that a shape like (0, 2^40, 2^40) (numel 0) is refused too: any product
 * of some of the dimensions times the dtype size then fits in uint64 for the callers. */
static bool tensor_sizes(struct tpv_tensor *t)
{
    uint64_t n = 1, nonzero = tpv_dtype_size(t->dtype);
    for (int i = 0; i < t->rank; i++) {
        n *= t->shape[i]; /* cannot overflow when the product of the nonzero ones does not */
        if (__builtin_mul_overflow(nonzero, t->shape[i] ? t->shape[i] : 1, &nonzero))
            return false;
    }
    t->numel = n;
    t->nbytes = n * tpv_dtype_size(t->dtype);
    return true;
}

static uint64_t load_le(const uint8_t *p, int nbytes)
{
    uint64_t v = 0;
    for (int i = nbytes - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* ---------------------------------------------------------------------------------------------
 * .npy header: a Python dict literal, parsed strictly (only what numpy writes). */

struct npy_lex {
    const char *s; /* header text */
    size_t len;
    size_t pos;
    size_t base;   /* file offset of s[0], for messages */
    struct tpv_err *err;
};

static void npy_skip_ws(struct npy_lex *lx)
{
    while (lx->pos < lx->len && (lx->s[lx->pos] == ' ' || lx->s[lx->pos] == '\t' ||
                                 lx->s[lx->pos] == '\n' || lx->s[lx->pos] == '\r'))
        lx->pos++;
}

static int npy_fail(struct npy_lex *lx, const char *what)
{
    return tpv_err_set(lx->err, TPV_EFORMAT, "header", "npy header: %s at byte %zu", what,
                       lx->base + lx->pos);
}

/* Consumes `c` after optional whitespace. */
static bool npy_accept(struct npy_lex *lx, char c)
{
    npy_skip_ws(lx);
    if (lx->pos < lx->len && lx->s[lx->pos] == c) {
        lx->pos++;
        return true;
    }
    return false;
}

/* A quoted string without escapes into out[cap]. */
static int npy_string(struct npy_lex *lx, char *out, size_t cap)
{
    npy_skip_ws(lx);
    if (lx->pos >= lx->len || (lx->s[lx->pos] != '\'' && lx->s[lx->pos] != '"'))
        return npy_fail(lx, "expected a quoted string");
    char quote = lx->s[lx->pos++];
    size_t n = 0;
    while (lx->pos < lx->len && lx->s[lx->pos] != quote) {
        char c = lx->s[lx->pos];
        if (c == '\\' || c == '\n' || n + 1 >= cap)
            return npy_fail(lx, "unsupported or overlong string");
        out[n++] = c;
        lx->pos++;
    }
    if (lx->pos >= lx->len)
        return npy_fail(lx, "unterminated string");
    lx->pos++;
    out[n] = '\0';
    return TPV_OK;
}

static int npy_descr(struct npy_lex *lx, enum tpv_dtype *dtype)
{
    static const struct { const char *descr; enum tpv_dtype dtype; } known[] = {
        { "<f2", TPV_DTYPE_F16 }, { "<f4", TPV_DTYPE_F32 }, { "<f8", TPV_DTYPE_F64 },
        { "|u1", TPV_DTYPE_U8 },  { "|b1", TPV_DTYPE_BOOL },
    };
    char d[32];
    npy_skip_ws(lx);
    if (lx->pos < lx->len && lx->s[lx->pos] == '[')
        return npy_fail(lx, "structured dtypes are not supported (descr is a list)");
    int rc = npy_string(lx, d, sizeof d);
    if (rc != TPV_OK)
        return rc;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strcmp(d, known[i].descr) == 0) {
            *dtype = known[i].dtype;
            return TPV_OK;
        }
    }
    if (d[0] == '>')
        return tpv_err_set(lx->err, TPV_EFORMAT, "header",
                           "npy header: big-endian dtype '%s' is not supported", d);
    if (strchr(d, 'O'))
        return tpv_err_set(lx->err, TPV_EFORMAT, "header",
                           "npy header: object dtype '%s' is not supported", d);
    return tpv_err_set(lx->err, TPV_EFORMAT, "header",
                       "npy header: unsupported dtype '%s' (expected <f2, <f4, <f8, |u1 or |b1)",
                       d);
}

static int npy_bool(struct npy_lex *lx, bool *out)
{
    npy_skip_ws(lx);
    const char *p = lx->s + lx->pos;
    size_t left = lx->len - lx->pos;
    if (left >= 4 && memcmp(p, "True", 4) == 0) {
        lx->pos += 4;
        *out = true;
    } else if (left >= 5 && memcmp(p, "False", 5) == 0) {
        lx->pos += 5;
        *out = false;
    } else {
        return npy_fail(lx, "fortran_order must be True or False");
    }
    return TPV_OK;
}

static int npy_uint(struct npy_lex *lx, uint64_t *out)
{
    npy_skip_ws(lx);
    size_t start = lx->pos;
    uint64_t v = 0;
    while (lx->pos < lx->len && lx->s[lx->pos] >= '0' && lx->s[lx->pos] <= '9') {
        if (__builtin_mul_overflow(v, 10, &v) ||
            __builtin_add_overflow(v, (uint64_t)(lx->s[lx->pos] - '0'), &v))
            return npy_fail(lx, "shape entry too large");
        lx->pos++;
    }
    if (lx->pos == start)
        return npy_fail(lx, "expected a non-negative integer in shape");
    *out = v;
    return TPV_OK;
}

/* (), (n,), (n, m), (n, m,) */
static int npy_shape(struct npy_lex *lx, struct tpv_tensor *t)
{
    if (!npy_accept(lx, '('))
        return npy_fail(lx, "shape must be a tuple");
    t->rank = 0;
    if (npy_accept(lx, ')'))
        return TPV_OK;
    for (;;) {
        if (t->rank == TPV_MAX_RANK)
            return tpv_err_set(lx->err, TPV_EFORMAT, "shape",
                               "npy header: shape has more than %d dimensions", TPV_MAX_RANK);
        int rc = npy_uint(lx, &t->shape[t->rank]);
        if (rc != TPV_OK)
            return rc;
        t->rank++;
        if (npy_accept(lx, ')')) {
            if (t->rank == 1)
                return npy_fail(lx, "one-element shape tuple needs a trailing comma");
            return TPV_OK;
        }
        if (!npy_accept(lx, ','))
            return npy_fail(lx, "expected ',' or ')' in shape");
        if (npy_accept(lx, ')'))
            return TPV_OK;
    }
}

enum { NPY_KEY_DESCR = 1, NPY_KEY_FORTRAN = 2, NPY_KEY_SHAPE = 4 };

static int npy_entry(struct npy_lex *lx, struct tpv_tensor *t, unsigned *seen)
{
    char key[32];
    bool fortran = false;
    int rc = npy_string(lx, key, sizeof key), bit;
    if (rc != TPV_OK)
        return rc;
    if (strcmp(key, "descr") == 0)
        bit = NPY_KEY_DESCR;
    else if (strcmp(key, "fortran_order") == 0)
        bit = NPY_KEY_FORTRAN;
    else if (strcmp(key, "shape") == 0)
        bit = NPY_KEY_SHAPE;
    else
        return tpv_err_set(lx->err, TPV_EFORMAT, "header", "npy header: unknown key '%s'", key);
    if (*seen & (unsigned)bit)
        return tpv_err_set(lx->err, TPV_EFORMAT, "header", "npy header: key '%s' given twice",
                           key);
    *seen |= (unsigned)bit;
    if (!npy_accept(lx, ':'))
        return npy_fail(lx, "expected ':'");
    if (bit == NPY_KEY_DESCR)
        return npy_descr(lx, &t->dtype);
    if (bit == NPY_KEY_SHAPE)
        return npy_shape(lx, t);
    rc = npy_bool(lx, &fortran);
    if (rc == TPV_OK && fortran)
        return tpv_err_set(lx->err, TPV_EFORMAT, "header",
                           "npy header: fortran_order True is not supported (save C order)");
    return rc;
}

static int npy_dict(struct npy_lex *lx, struct tpv_tensor *t)
{
    unsigned seen = 0;
    if (!npy_accept(lx, '{'))
        return npy_fail(lx, "expected '{'");
    while (!npy_accept(lx, '}')) {
        int rc = npy_entry(lx, t, &seen);
        if (rc != TPV_OK)
            return rc;
        if (npy_accept(lx, '}'))
            break;
        if (!npy_accept(lx, ','))
            return npy_fail(lx, "expected ',' or '}'");
    }
    npy_skip_ws(lx);
    if (lx->pos != lx->len)
        return npy_fail(lx, "unexpected text after the dict");
    if (seen != (NPY_KEY_DESCR | NPY_KEY_FORTRAN | NPY_KEY_SHAPE))
        return tpv_err_set(lx->err, TPV_EFORMAT, "header", "npy header: missing key '%s'",
                           !(seen & NPY_KEY_DESCR) ? "descr"
                           : !(seen & NPY_KEY_SHAPE) ? "shape" : "fortran_order");
    return TPV_OK;
}

/* Magic, version, header length: sets *hstart / *hlen. */
static int npy_preamble(const uint8_t *b, size_t len, size_t *hstart, size_t *hlen,
                        struct tpv_err *err)
{
    if (len < NPY_MAGIC_LEN + 2 || memcmp(b, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
        return tpv_err_set(err, TPV_EFORMAT, "header", "npy: bad magic or file too short "
                           "(%zu bytes)", len);
    int major = b[6], minor = b[7];
    if (major < 1 || major > 3 || minor != 0)
        return tpv_err_set(err, TPV_EFORMAT, "header", "npy: unsupported version %d.%d",
                           major, minor);
    int lenbytes = major == 1 ? 2 : 4;
    *hstart = 8 + (size_t)lenbytes;
    if (len < *hstart)
        return tpv_err_set(err, TPV_EFORMAT, "header",
                           "npy: truncated header length (file is %zu bytes)", len);
    uint64_t h = load_le(b + 8, lenbytes);
    if (h > NPY_HEADER_MAX)
        return tpv_err_set(err, TPV_EFORMAT, "header",
                           "npy: header length %" PRIu64 " exceeds the limit %u", h,
                           NPY_HEADER_MAX);
    if (h > len - *hstart)
        return tpv_err_set(err, TPV_EFORMAT, "header",
                           "npy: header length %" PRIu64 " at byte 8 runs past the end of the "
                           "file (%zu bytes)", h, len);
    *hlen = (size_t)h;
    return TPV_OK;
}

static int npy_parse(struct tpv_tensor_file *f, struct tpv_err *err)
{
    size_t hstart = 0, hlen = 0;
    int rc = npy_preamble(f->base, f->len, &hstart, &hlen, err);
    if (rc != TPV_OK)
        return rc;
    struct tpv_tensor *t = calloc(1, sizeof *t);
    if (!t)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    f->tensors = t;
    t->name = "";
    struct npy_lex lx = { .s = (const char *)f->base + hstart, .len = hlen, .base = hstart,
                          .err = err };
    rc = npy_dict(&lx, t);
    if (rc != TPV_OK)
        return rc;
    if (!tensor_sizes(t))
        return tpv_err_set(err, TPV_EFORMAT, "shape", "npy: shape x itemsize overflows");
    size_t data_start = hstart + hlen, have = f->len - data_start;
    if (t->nbytes != have)
        return tpv_err_set(err, TPV_EFORMAT, "data",
                           "npy: data is %zu bytes after the header (at byte %zu), but the shape "
                           "and dtype %s need %" PRIu64 " bytes", have, data_start,
                           tpv_dtype_name(t->dtype), t->nbytes);
    t->data = f->base + data_start;
    f->count = 1;
    return TPV_OK;
}

/* ---------------------------------------------------------------------------------------------
 * safetensors: u64 LE header length, JSON header, data. */

struct st_entry {
    struct tpv_tensor t;
    uint64_t begin, end;
};

static int st_dtype(const char *s, enum tpv_dtype *out)
{
    static const char *const names[] = { "F16", "BF16", "F32", "F64", "U8", "BOOL" };
    static const enum tpv_dtype types[] = { TPV_DTYPE_F16, TPV_DTYPE_BF16, TPV_DTYPE_F32,
                                            TPV_DTYPE_F64, TPV_DTYPE_U8, TPV_DTYPE_BOOL };
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = types[i];
            return TPV_OK;
        }
    }
    return TPV_EFORMAT;
}

/* A JSON integer >= 0 into *out. */
static bool st_uint(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static int st_shape(const char *name, const json_t *shape, struct tpv_tensor *t,
                    struct tpv_err *err)
{
    if (!json_is_array(shape))
        return tpv_err_set(err, TPV_EFORMAT, name,
                           "safetensors: tensor '%.200s': shape must be an array", name);
    if (json_array_size(shape) > TPV_MAX_RANK)
        return tpv_err_set(err, TPV_EFORMAT, name,
                           "safetensors: tensor '%.200s': rank %zu exceeds the maximum %d",
                           name, json_array_size(shape), TPV_MAX_RANK);
    t->rank = (int)json_array_size(shape);
    for (int i = 0; i < t->rank; i++)
        if (!st_uint(json_array_get(shape, (size_t)i), &t->shape[i]))
            return tpv_err_set(err, TPV_EFORMAT, name,
                               "safetensors: tensor '%.200s': shape[%d] must be a non-negative "
                               "integer", name, i);
    if (!tensor_sizes(t))
        return tpv_err_set(err, TPV_EFORMAT, name,
                           "safetensors: tensor '%.200s': shape product x dtype size overflows",
                           name);
    return TPV_OK;
}

static int st_offsets(const char *name, const json_t *offs, struct st_entry *e, uint64_t data_len,
                      struct tpv_err *err)
{
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !st_uint(json_array_get(offs, 0), &e->begin) || !st_uint(json_array_get(offs, 1), &e->end))
        return tpv_err_set(err, TPV_EFORMAT, name,
                           "safetensors: tensor '%.200s': data_offsets must be [begin, end] "
                           "with non-negative integers", name);
    if (e->end < e->begin)
        return tpv_err_set(err, TPV_EFORMAT, name,
                           "safetensors: tensor '%.200s': data_offsets end %" PRIu64
                           " is before begin %" PRIu64, name, e->end, e->begin);
    if (e->end - e->begin != e->t.nbytes)
        return tpv_err_set(err, TPV_EFORMAT, name,
                           "safetensors: tensor '%.200s': data_offsets [%" PRIu64 ", %" PRIu64
                           "] span %" PRIu64 " bytes but shape x %s needs %" PRIu64, name,
                           e->begin, e->end, e->end - e->begin, tpv_dtype_name(e->t.dtype),
                           e->t.nbytes);
    if (e->end > data_len)
        return tpv_err_set(err, TPV_EFORMAT, name,
                           "safetensors: tensor '%.200s': data_offsets end %" PRIu64
                           " is past the end of the data (%" PRIu64 " bytes)", name, e->end,
                           data_len);
    return TPV_OK;
}

static int st_entry_parse(const char *name, const json_t *info, uint64_t data_len,
                          struct st_entry *e, struct tpv_err *err)
{
    if (name[0] == '\0')
        return tpv_err_set(err, TPV_EFORMAT, "header", "safetensors: empty tensor name");
    if (!json_is_object(info))
        return tpv_err_set(err, TPV_EFORMAT, name,
                           "safetensors: tensor '%.200s' must be an object", name);
    const json_t *dtype = json_object_get(info, "dtype");
    if (!json_is_string(dtype))
        return tpv_err_set(err, TPV_EFORMAT, name,
                           "safetensors: tensor '%.200s': dtype missing or not a string", name);
    if (st_dtype(json_string_value(dtype), &e->t.dtype) != TPV_OK)
        return tpv_err_set(err, TPV_EFORMAT, name,
                           "safetensors: tensor '%.200s': unsupported dtype '%.32s' (expected "
                           "F16, BF16, F32, F64, U8 or BOOL)", name, json_string_value(dtype));
    const json_t *shape = json_object_get(info, "shape");
    if (!shape)
        return tpv_err_set(err, TPV_EFORMAT, name,
                           "safetensors: tensor '%.200s': shape missing", name);
    int rc = st_shape(name, shape, &e->t, err);
    if (rc != TPV_OK)
        return rc;
    const json_t *offs = json_object_get(info, "data_offsets");
    if (!offs)
        return tpv_err_set(err, TPV_EFORMAT, name,
                           "safetensors: tensor '%.200s': data_offsets missing", name);
    rc = st_offsets(name, offs, e, data_len, err);
    e->t.name = name;
    return rc;
}

static int st_metadata(const json_t *md, struct tpv_err *err)
{
    const char *key;
    const json_t *value;
    if (!json_is_object(md))
        return tpv_err_set(err, TPV_EFORMAT, "__metadata__",
                           "safetensors: __metadata__ must be an object");
    json_object_foreach((json_t *)md, key, value) {
        if (!json_is_string(value))
            return tpv_err_set(err, TPV_EFORMAT, "__metadata__",
                               "safetensors: __metadata__ value of '%.200s' must be a string",
                               key);
    }
    return TPV_OK;
}

static int st_entry_cmp(const void *a, const void *b)
{
    const struct st_entry *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->t.name, y->t.name);
}

/* Sorts by data offset and refuses overlapping byte ranges. */
static int st_check_overlap(struct st_entry *e, size_t n, struct tpv_err *err)
{
    if (n > 1)
        qsort(e, n, sizeof *e, st_entry_cmp);
    for (size_t i = 1; i < n; i++)
        if (e[i].begin < e[i - 1].end)
            return tpv_err_set(err, TPV_EFORMAT, e[i].t.name,
                               "safetensors: tensors '%.150s' [%" PRIu64 ", %" PRIu64
                               ") and '%.150s' [%" PRIu64 ", %" PRIu64 ") overlap",
                               e[i - 1].t.name, e[i - 1].begin, e[i - 1].end, e[i].t.name,
                               e[i].begin, e[i].end);
    return TPV_OK;
}

/* Parses every tensor entry of the header object into a sorted, checked table. */
static int st_entries(struct tpv_tensor_file *f, const uint8_t *data, uint64_t data_len,
                      struct tpv_err *err)
{
    size_t n = json_object_size(f->header) - (f->metadata ? 1 : 0), i = 0;
    struct st_entry *e = calloc(n ? n : 1, sizeof *e);
    if (!e)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    const char *key;
    json_t *value;
    int rc = TPV_OK;
    json_object_foreach(f->header, key, value) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        rc = st_entry_parse(key, value, data_len, &e[i++], err);
        if (rc != TPV_OK)
            break;
    }
    if (rc == TPV_OK)
        rc = st_check_overlap(e, n, err);
    if (rc == TPV_OK) {
        f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
        if (!f->tensors)
            rc = tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    for (i = 0; rc == TPV_OK && i < n; i++) {
        f->tensors[i] = e[i].t;
        f->tensors[i].data = data + e[i].begin;
    }
    if (rc == TPV_OK)
        f->count = n;
    free(e);
    return rc;
}

static int st_parse(struct tpv_tensor_file *f, struct tpv_err *err)
{
    if (f->len < 8)
        return tpv_err_set(err, TPV_EFORMAT, "header",
                           "safetensors: file is %zu bytes, too short for the 8-byte header "
                           "length", f->len);
    uint64_t hlen = load_le(f->base, 8);
    if (hlen > ST_HEADER_MAX)
        return tpv_err_set(err, TPV_EFORMAT, "header",
                           "safetensors: header length %" PRIu64 " exceeds the limit %" PRIu64,
                           hlen, ST_HEADER_MAX);
    if (hlen > f->len - 8)
        return tpv_err_set(err, TPV_EFORMAT, "header",
                           "safetensors: header length %" PRIu64 " runs past the end of the file "
                           "(%zu bytes)", hlen, f->len);
    json_error_t jerr;
    unsigned long failed0 = tpv_json_alloc_failures(); /* an OOM often reads as a syntax error */
    f->header = json_loadb((const char *)f->base + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->header && (tpv_json_alloc_failures() != failed0 ||
                       json_error_code(&jerr) == json_error_out_of_memory))
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory parsing a safetensors header");
    if (!f->header)
        return tpv_err_set(err, TPV_EFORMAT, "header",
                           "safetensors: invalid JSON header at byte %zu: %s",
                           (size_t)8 + (size_t)(jerr.position > 0 ? jerr.position : 0),
                           jerr.text);
    if (!json_is_object(f->header))
        return tpv_err_set(err, TPV_EFORMAT, "header",
                           "safetensors: the JSON header must be an object");
    f->metadata = json_object_get(f->header, "__metadata__");
    if (f->metadata) {
        int rc = st_metadata(f->metadata, err);
        if (rc != TPV_OK)
            return rc;
    }
    return st_entries(f, f->base + 8 + hlen, f->len - 8 - hlen, err);
}

/* ---------------------------------------------------------------------------------------------
 * File objects */

static int by_name_cmp(const void *a, const void *b)
{
    const struct tpv_tensor *x = *(const struct tpv_tensor *const *)a;
    const struct tpv_tensor *y = *(const struct tpv_tensor *const *)b;
    return strcmp(x->name, y->name);
}

/* An index sorted by name so that find() is a binary search. */
static int build_name_index(struct tpv_tensor_file *f, struct tpv_err *err)
{
    f->by_name = malloc((f->count ? f->count : 1) * sizeof *f->by_name);
    if (!f->by_name)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    for (size_t i = 0; i < f->count; i++)
        f->by_name[i] = &f->tensors[i];
    if (f->count > 1)
        qsort(f->by_name, f->count, sizeof *f->by_name, by_name_cmp);
    return TPV_OK;
}

static int file_parse(struct tpv_tensor_file *f, struct tpv_err *err)
{
    f->is_npy = f->len >= NPY_MAGIC_LEN && memcmp(f->base, NPY_MAGIC, NPY_MAGIC_LEN) == 0;
    int rc = f->is_npy ? npy_parse(f, err) : st_parse(f, err);
    if (rc == TPV_OK)
        rc = build_name_index(f, err);
    return rc;
}

int tpv_tensor_file_from_buffer(struct tpv_tensor_file **out, const void *buf, size_t len,
                                struct tpv_err *err)
{
    *out = NULL;
    struct tpv_tensor_file *f = calloc(1, sizeof *f);
    if (!f)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    static const uint8_t empty[1];
    f->base = buf ? buf : empty;
    f->len = buf ? len : 0;
    int rc = file_parse(f, err);
    if (rc != TPV_OK) {
        tpv_tensor_file_close(f);
        return rc;
    }
    *out = f;
    return TPV_OK;
}

int tpv_tensor_file_open(struct tpv_tensor_file **out, const char *path, struct tpv_err *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tpv_err_set(err, TPV_EIO, NULL, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return tpv_err_set(err, TPV_EIO, NULL, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return tpv_err_set(err, TPV_EIO, NULL, "%s: not a regular file", path);
    }
    void *map = NULL;
    size_t len = (size_t)st.st_size;
    if (len > 0) {
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return tpv_err_set(err, TPV_EIO, NULL, "%s: cannot map: %s", path, strerror(e));
        }
    }
    close(fd); /* the mapping keeps the file */
    struct tpv_tensor_file *f = NULL;
    int rc = tpv_tensor_file_from_buffer(&f, map, len, err);
    if (rc != TPV_OK) {
        if (map)
            munmap(map, len);
        tpv_err_prefix(err, "%s", path);
        return rc;
    }
    f->map = map;
    f->map_len = len;
    *out = f;
    return TPV_OK;
}

void tpv_tensor_file_close(struct tpv_tensor_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->map_len);
    json_decref(f->header);
    free(f->tensors);
    free(f->by_name);
    free(f);
}

bool tpv_tensor_file_is_npy(const struct tpv_tensor_file *f)
{
    return f->is_npy;
}

size_t tpv_tensor_file_count(const struct tpv_tensor_file *f)
{
    return f->count;
}

const struct tpv_tensor *tpv_tensor_file_at(const struct tpv_tensor_file *f, size_t i)
{
    return i < f->count ? &f->tensors[i] : NULL;
}

const struct tpv_tensor *tpv_tensor_file_find(const struct tpv_tensor_file *f, const char *name)
{
    size_t lo = 0, hi = f->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct tpv_tensor *t = f->by_name[mid];
        int c = strcmp(name, t->name);
        if (c == 0)
            return t;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *tpv_tensor_file_metadata(const struct tpv_tensor_file *f, const char *key)
{
    return f->metadata ? json_string_value(json_object_get(f->metadata, key)) : NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Conversion: memcpy loads (data may be unaligned), one switch per call.  The widening loops work
 * in blocks of a constant TPV_CONV_BLOCK elements (restrict pointers, constant trip count) so that
 * gcc's default -O2 cost model vectorizes them too, not only clang's; a scalar loop does the tail. */

#define TPV_CONV_BLOCK 16

/* DEFINE_CONVERT(fname, src type, dst type, load expression of `const uint8_t *q`) */
#define TPV_DEFINE_CONVERT(fname, stype, dtype, expr)                                              \
    static void fname(const uint8_t *restrict p, uint64_t n, dtype *restrict out)                 \
    {                                                                                              \
        uint64_t i = 0;                                                                            \
        for (; n - i >= TPV_CONV_BLOCK; i += TPV_CONV_BLOCK) {                                     \
            for (int j = 0; j < TPV_CONV_BLOCK; j++) {                                             \
                const uint8_t *q = p + (i + (uint64_t)j) * sizeof(stype);                          \
                out[i + (uint64_t)j] = (dtype)(expr);                                              \
            }                                                                                      \
        }                                                                                          \
        for (; i < n; i++) {                                                                       \
            const uint8_t *q = p + i * sizeof(stype);                                              \
            out[i] = (dtype)(expr);                                                                \
        }                                                                                          \
    }

static inline float load_f32(const uint8_t *q)
{
    float v;
    memcpy(&v, q, sizeof v);
    return v;
}

static inline double load_f64(const uint8_t *q)
{
    double v;
    memcpy(&v, q, sizeof v);
    return v;
}

static inline uint16_t load_u16(const uint8_t *q)
{
    uint16_t v;
    memcpy(&v, q, sizeof v);
    return v;
}

TPV_DEFINE_CONVERT(f32_to_f64, float, double, load_f32(q))
TPV_DEFINE_CONVERT(f64_to_f32, double, float, load_f64(q))
TPV_DEFINE_CONVERT(f16_to_f64, uint16_t, double, tpv_half_to_f32(load_u16(q)))
TPV_DEFINE_CONVERT(f16_to_f32, uint16_t, float, tpv_half_to_f32(load_u16(q)))
TPV_DEFINE_CONVERT(bf16_to_f64, uint16_t, double, tpv_bf16_to_f32(load_u16(q)))
TPV_DEFINE_CONVERT(bf16_to_f32, uint16_t, float, tpv_bf16_to_f32(load_u16(q)))
TPV_DEFINE_CONVERT(u8_to_f64, uint8_t, double, *q)
TPV_DEFINE_CONVERT(u8_to_f32, uint8_t, float, *q)

void tpv_convert_f64(enum tpv_dtype dtype, const void *src, uint64_t count, double *out)
{
    const uint8_t *p = src;
    if (count == 0)
        return;
    switch (dtype) {
    case TPV_DTYPE_F64:
        memcpy(out, p, count * sizeof(double));
        return;
    case TPV_DTYPE_F32:
        f32_to_f64(p, count, out);
        return;
    case TPV_DTYPE_F16:
        f16_to_f64(p, count, out);
        return;
    case TPV_DTYPE_BF16:
        bf16_to_f64(p, count, out);
        return;
    case TPV_DTYPE_U8:
    case TPV_DTYPE_BOOL:
        u8_to_f64(p, count, out);
        return;
    }
}

void tpv_convert_f32(enum tpv_dtype dtype, const void *src, uint64_t count, float *out)
{
    const uint8_t *p = src;
    if (count == 0)
        return;
    switch (dtype) {
    case TPV_DTYPE_F32:
        memcpy(out, p, count * sizeof(float));
        return;
    case TPV_DTYPE_F64:
        f64_to_f32(p, count, out);
        return;
    case TPV_DTYPE_F16:
        f16_to_f32(p, count, out);
        return;
    case TPV_DTYPE_BF16:
        bf16_to_f32(p, count, out);
        return;
    case TPV_DTYPE_U8:
    case TPV_DTYPE_BOOL:
        u8_to_f32(p, count, out);
        return;
    }
}

void tpv_tensor_read_f64(const struct tpv_tensor *t, uint64_t first, uint64_t count, double *out)
{
    tpv_convert_f64(t->dtype, (const uint8_t *)t->data + first * tpv_dtype_size(t->dtype), count,
                    out);
}

void tpv_tensor_read_f32(const struct tpv_tensor *t, uint64_t first, uint64_t count, float *out)
{
    tpv_convert_f32(t->dtype, (const uint8_t *)t->data + first * tpv_dtype_size(t->dtype), count,
                    out);
}

/* First index in [0, n) whose exponent bits (mask) are all ones, or n.  Whole blocks of a constant
 * size are OR-reduced without an early exit so that the loop vectorizes; only a block with a bad
 * value is rescanned, and the tail is scanned directly. */
#define TPV_FINITE_BLOCK 1024
#define TPV_DEFINE_FIND_NONFINITE(fname, utype)                                                    \
    static uint64_t fname##_scan(const uint8_t *p, uint64_t from, uint64_t to, utype mask)        \
    {                                                                                              \
        for (uint64_t i = from; i < to; i++) {                                                     \
            utype v;                                                                               \
            memcpy(&v, p + i * sizeof v, sizeof v);                                                \
            if ((v & mask) == mask)                                                                \
                return i;                                                                          \
        }                                                                                          \
        return to;                                                                                 \
    }                                                                                              \
    static uint64_t fname(const uint8_t *p, uint64_t n, utype mask)                               \
    {                                                                                              \
        uint64_t b = 0;                                                                            \
        for (; n - b >= TPV_FINITE_BLOCK; b += TPV_FINITE_BLOCK) {                                 \
            const uint8_t *blk = p + b * sizeof(utype);                                            \
            utype bad = 0;                                                                         \
            for (int i = 0; i < TPV_FINITE_BLOCK; i++) {                                           \
                utype v;                                                                           \
                memcpy(&v, blk + (size_t)i * sizeof v, sizeof v);                                  \
                bad |= (utype)((v & mask) == mask);                                                \
            }                                                                                      \
            if (bad)                                                                               \
                return fname##_scan(p, b, b + TPV_FINITE_BLOCK, mask);                             \
        }                                                                                          \
        uint64_t i = fname##_scan(p, b, n, mask);                                                  \
        return i;                                                                                  \
    }
TPV_DEFINE_FIND_NONFINITE(find_nonfinite16, uint16_t)
TPV_DEFINE_FIND_NONFINITE(find_nonfinite32, uint32_t)
TPV_DEFINE_FIND_NONFINITE(find_nonfinite64, uint64_t)

int tpv_tensor_check_finite(const struct tpv_tensor *t, struct tpv_err *err)
{
    const uint8_t *p = t->data;
    uint64_t n = t->numel, bad = n;
    switch (t->dtype) {
    case TPV_DTYPE_F16:
        bad = find_nonfinite16(p, n, 0x7c00u);
        break;
    case TPV_DTYPE_BF16:
        bad = find_nonfinite16(p, n, 0x7f80u);
        break;
    case TPV_DTYPE_F32:
        bad = find_nonfinite32(p, n, 0x7f800000u);
        break;
    case TPV_DTYPE_F64:
        bad = find_nonfinite64(p, n, 0x7ff0000000000000u);
        break;
    case TPV_DTYPE_U8:
    case TPV_DTYPE_BOOL:
        break;
    }
    if (bad == n)
        return TPV_OK;
    double v;
    tpv_tensor_read_f64(t, bad, 1, &v);
    return tpv_err_set(err, TPV_EFORMAT, t->name,
                       "tensor '%.200s': non-finite value %g at flat index %" PRIu64,
                       t->name[0] ? t->name : "(unnamed)", v, bad);
}
