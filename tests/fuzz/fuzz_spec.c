/* fuzz_spec.c: any bytes as a `tpv.sequential/v1` model spec (JSON) bound by tpv_mlp_bind against a
 * fixed set of small in-memory weight tensors (float64, float32, float16 and bfloat16; one holding
 * a NaN, one of rank 3, one empty).  Binding either fails with an error code the API maps to a
 * 4xx and a field, or gives a model whose layout covers exactly its parameters (all finite) and
 * whose forward pass runs on a few inputs. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/mlp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static double w43[12], b4[4], w24[8], w33[9], w44nan[16], w234[24];
static float w34f[12], b3f[3];
static uint16_t w22h[4], b2bf[2];
static struct tpv_tensor tensors[12];
static size_t ntensors;

static void add(const char *name, enum tpv_dtype dt, int rank, const uint64_t *shape,
                const void *p)
{
    struct tpv_tensor *t = &tensors[ntensors++];
    t->name = name;
    t->dtype = dt;
    t->rank = rank;
    t->numel = 1;
    for (int i = 0; i < rank; i++) {
        t->shape[i] = shape[i];
        t->numel *= shape[i];
    }
    t->nbytes = t->numel * tpv_dtype_size(dt);
    t->data = p;
}

static void init_tensors(void)
{
    for (int i = 0; i < 12; i++)
        w43[i] = 0.1 * (i - 5);
    for (int i = 0; i < 4; i++)
        b4[i] = 0.01 * i;
    for (int i = 0; i < 8; i++)
        w24[i] = 0.2 - 0.05 * i;
    for (int i = 0; i < 9; i++)
        w33[i] = i % 4 == 0 ? 1.0 : 0.1;
    for (int i = 0; i < 16; i++)
        w44nan[i] = i == 7 ? NAN : 0.5;
    for (int i = 0; i < 24; i++)
        w234[i] = 0.01 * i;
    for (int i = 0; i < 12; i++)
        w34f[i] = 0.25f * (float)(i % 3);
    for (int i = 0; i < 3; i++)
        b3f[i] = -0.5f;
    w22h[0] = 0x3c00; /* 1.0 */
    w22h[1] = 0xbc00; /* -1.0 */
    w22h[2] = 0x3800; /* 0.5 */
    w22h[3] = 0x7c00; /* +inf: refused as non-finite */
    b2bf[0] = 0x3f80; /* 1.0 */
    b2bf[1] = 0x0000;
    add("l0.weight", TPV_DTYPE_F64, 2, (uint64_t[]){ 4, 3 }, w43);
    add("l0.bias", TPV_DTYPE_F64, 1, (uint64_t[]){ 4 }, b4);
    add("l1.weight", TPV_DTYPE_F64, 2, (uint64_t[]){ 2, 4 }, w24);
    add("sq.weight", TPV_DTYPE_F64, 2, (uint64_t[]){ 3, 3 }, w33);
    add("nan.weight", TPV_DTYPE_F64, 2, (uint64_t[]){ 4, 4 }, w44nan);
    add("r3.weight", TPV_DTYPE_F64, 3, (uint64_t[]){ 2, 3, 4 }, w234);
    add("f.weight", TPV_DTYPE_F32, 2, (uint64_t[]){ 3, 4 }, w34f);
    add("f.bias", TPV_DTYPE_F32, 1, (uint64_t[]){ 3 }, b3f);
    add("h.weight", TPV_DTYPE_F16, 2, (uint64_t[]){ 2, 2 }, w22h);
    add("bf.bias", TPV_DTYPE_BF16, 1, (uint64_t[]){ 2 }, b2bf);
    add("empty.weight", TPV_DTYPE_F64, 2, (uint64_t[]){ 0, 3 }, w43);
}

static const struct tpv_tensor *find(void *ctx, const char *name)
{
    (void)ctx;
    for (size_t i = 0; i < ntensors; i++)
        if (strcmp(tensors[i].name, name) == 0)
            return &tensors[i];
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (ntensors == 0)
        init_tensors();
    json_t *spec = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (!spec)
        return 0;
    struct tpv_mlp *m = NULL;
    struct tpv_err err;
    tpv_err_clear(&err);
    int rc = tpv_mlp_bind(&m, spec, find, NULL, &err);
    json_decref(spec);
    if ((rc == TPV_OK) != (m != NULL))
        abort();
    if (rc != TPV_OK) {
        /* What the API turns into 400 with a field (or 500 for memory). */
        if (rc != TPV_EINVAL && rc != TPV_EFORMAT && rc != TPV_ENOMEM)
            abort();
        if (rc != TPV_ENOMEM && (!err.message[0] || !err.field[0]))
            abort();
        return 0;
    }
    const struct tpv_layout *lay = tpv_mlp_layout(m);
    uint64_t p = 0;
    for (size_t i = 0; i < lay->nblocks; i++)
        p += lay->blocks[i].count;
    if (p != lay->p || m->K == 0 || m->d == 0)
        abort();
    for (uint64_t i = 0; i < p; i++)
        if (!isfinite(tpv_mlp_param_values(m)[i]))
            abort();
    if (m->d <= 4096 && m->K <= 4096) {
        size_t n = 3;
        double *x = malloc(n * m->d * sizeof *x), *y = malloc(n * m->K * sizeof *y);
        if (x && y) {
            for (uint64_t i = 0; i < n * m->d; i++)
                x[i] = 0.3 * (double)(i % 5) - 0.6;
            (void)tpv_mlp_forward(m, x, n, y);
        }
        free(x);
        free(y);
    }
    tpv_mlp_free(m);
    return 0;
}
