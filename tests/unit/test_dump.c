/* test_dump.c: the Jacobian-dump source against naive loops: sqdiag, gram (self and cross), jvp,
 * vjp, projected sqdiag, over F64/F32/F16/BF16 data, flat and named layouts, validation errors,
 * thread-independence and cancellation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <cblas.h>

#include "core/dump.h"
#include "num_helpers.h"

/* Naive J entry of a row-major (rows x p) double matrix. */
static void naive_sqdiag(const double *J, uint64_t rows, uint64_t p, double *out)
{
    for (uint64_t j = 0; j < p; j++) {
        out[j] = 0;
        for (uint64_t r = 0; r < rows; r++)
            out[j] += J[r * p + j] * J[r * p + j];
    }
}

static void naive_gram(const double *A, uint64_t na, const double *B, uint64_t nb, uint64_t p,
                       double *out)
{
    for (uint64_t i = 0; i < na; i++)
        for (uint64_t j = 0; j < nb; j++) {
            double s = 0;
            for (uint64_t c = 0; c < p; c++)
                s += A[i * p + c] * B[j * p + c];
            out[i * nb + j] = s;
        }
}

static void check_ops(const struct tpv_jsrc *s, const double *J, double tol)
{
    uint64_t rows = s->n * s->K, p = s->p;
    double *d = calloc(p, 8), *e = calloc(p, 8), *g = malloc(rows * rows * 8),
           *h = malloc(rows * rows * 8), *v = malloc(p * 8), *y = malloc(rows * 8),
           *u = malloc(rows * 8), *z = malloc(p * 8), *tot = malloc(s->n * 8);
    struct tpv_err err;
    assert_int_equal(s->ops->sqdiag(s, d, NULL, &err), 0);
    naive_sqdiag(J, rows, p, e);
    for (uint64_t j = 0; j < p; j++)
        assert_rel(d[j], e[j], tol);
    assert_int_equal(s->ops->gram(s, s, g, NULL, &err), 0);
    naive_gram(J, rows, J, rows, p, h);
    for (uint64_t i = 0; i < rows * rows; i++)
        assert_true(fabs(g[i] - h[i]) <= tol * (1 + fabs(h[i])) * sqrt((double)p));
    fill_normal(v, p, 3);
    assert_int_equal(s->ops->jvp(s, v, y, NULL, &err), 0);
    for (uint64_t r = 0; r < rows; r++) {
        double t = 0, a = 0;
        for (uint64_t c = 0; c < p; c++) {
            t += J[r * p + c] * v[c];
            a += fabs(J[r * p + c] * v[c]);
        }
        assert_true(fabs(y[r] - t) <= tol * (1 + a));
    }
    fill_normal(u, rows, 4);
    assert_int_equal(s->ops->vjp(s, u, z, NULL, &err), 0);
    for (uint64_t c = 0; c < p; c++) {
        double t = 0, a = 0;
        for (uint64_t r = 0; r < rows; r++) {
            t += J[r * p + c] * u[r];
            a += fabs(J[r * p + c] * u[r]);
        }
        assert_true(fabs(z[c] - t) <= tol * (1 + a));
    }
    /* Projected sqdiag with r = u. */
    memset(d, 0, p * 8);
    assert_int_equal(s->ops->sqdiag_projected(s, u, d, tot, NULL, &err), 0);
    double tsum = 0;
    for (uint64_t c = 0; c < p; c++) {
        double t = 0;
        for (uint64_t x = 0; x < s->n; x++) {
            double yv = 0;
            for (uint64_t k = 0; k < s->K; k++)
                yv += u[x * s->K + k] * J[(x * s->K + k) * p + c];
            t += yv * yv;
        }
        assert_rel(d[c], t, tol * 10);
        tsum += t;
    }
    double ts = 0;
    for (uint64_t x = 0; x < s->n; x++)
        ts += tot[x];
    assert_rel(ts, tsum, tol * 10);
    free(d), free(e), free(g), free(h), free(v), free(y), free(u), free(z), free(tot);
}

static void test_f64_flat(void **state)
{
    (void)state;
    uint64_t n = 7, K = 3, p = 5003; /* p > 4096: the threaded column split */
    double *J = malloc(n * K * p * 8);
    fill_normal(J, n * K * p, 1);
    uint64_t shape[3] = { n, K, p };
    struct tpv_tensor t = tview("", TPV_DTYPE_F64, J, 3, shape);
    const struct tpv_tensor *ts[1] = { &t };
    struct tpv_jsrc *s;
    struct tpv_err err;
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, NULL, 0, NULL, 0, &err), 0);
    assert_true(tpv_jsrc_is_dump(s));
    assert_int_equal(s->n, n);
    assert_int_equal(s->K, K);
    assert_int_equal(s->p, p);
    assert_int_equal(s->layout.nblocks, 0);
    check_ops(s, J, 1e-12);
    tpv_jsrc_free(s);
    tpv_jsrc_free(NULL);
    /* (n, p) means K = 1 */
    uint64_t shape2[2] = { n * K, p };
    t = tview("", TPV_DTYPE_F64, J, 2, shape2);
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, NULL, 0, NULL, 0, &err), 0);
    assert_int_equal(s->K, 1);
    assert_int_equal(s->n, n * K);
    check_ops(s, J, 1e-12);
    tpv_jsrc_free(s);
    free(J);
}

static void test_f32_f16_bf16(void **state)
{
    (void)state;
    uint64_t n = 9, K = 2, p = 301, N = n * K * p;
    double *J = malloc(N * 8);
    float *F = malloc(N * 4);
    uint16_t *H = malloc(N * 2), *B = malloc(N * 2);
    fill_normal(J, N, 2);
    for (uint64_t i = 0; i < N; i++) {
        F[i] = (float)J[i];
        uint32_t bits;
        memcpy(&bits, &F[i], 4);
        B[i] = (uint16_t)(bits >> 16); /* truncation: exactly representable value */
        /* half: build from a value exactly representable: k / 64 with |k| < 1024 */
        int k = (int)lrint(J[i] * 64);
        if (k > 1023)
            k = 1023;
        if (k < -1023)
            k = -1023;
        float hf = (float)k / 64.0f;
        uint16_t sign = hf < 0 ? 0x8000 : 0;
        float a = fabsf(hf);
        uint16_t h = 0;
        if (a != 0) {
            int ex;
            float m = frexpf(a, &ex); /* a = m 2^ex, m in [0.5, 1) */
            int e16 = ex - 1 + 15;
            if (e16 <= 0) {
                h = (uint16_t)lrintf(a * 16777216.0f); /* subnormal: a / 2^-24 */
            } else {
                h = (uint16_t)((e16 << 10) | ((uint16_t)lrintf((m * 2 - 1) * 1024) & 0x3ff));
            }
        }
        H[i] = (uint16_t)(sign | h);
    }
    double *JF = malloc(N * 8), *JH = malloc(N * 8), *JB = malloc(N * 8);
    tpv_convert_f64(TPV_DTYPE_F32, F, N, JF);
    tpv_convert_f64(TPV_DTYPE_F16, H, N, JH);
    tpv_convert_f64(TPV_DTYPE_BF16, B, N, JB);
    for (uint64_t i = 0; i < N; i++) { /* widening is exact: equality, not a tolerance */
        long k = lrint(J[i] * 64);
        k = k > 1023 ? 1023 : k < -1023 ? -1023 : k;
        assert_true(JH[i] == (double)k / 64.0);
        uint32_t bits = (uint32_t)B[i] << 16;
        float bf;
        memcpy(&bf, &bits, 4);
        assert_true(JB[i] == (double)bf);
    }
    uint64_t shape[3] = { n, K, p };
    struct {
        enum tpv_dtype dt;
        const void *data;
        const double *ref;
    } cases[] = { { TPV_DTYPE_F32, F, JF }, { TPV_DTYPE_F16, H, JH }, { TPV_DTYPE_BF16, B, JB } };
    for (size_t c = 0; c < 3; c++) {
        struct tpv_tensor t = tview("", cases[c].dt, cases[c].data, 3, shape);
        const struct tpv_tensor *ts[1] = { &t };
        struct tpv_jsrc *s;
        struct tpv_err err;
        assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, NULL, 0, NULL, 0, &err), 0);
        check_ops(s, cases[c].ref, 1e-6);
        tpv_jsrc_free(s);
    }
    free(J), free(F), free(H), free(B), free(JF), free(JH), free(JB);
}

/* The value of a binary16 pattern computed from its fields (not through core/half.h): normals
 * (1024 + m) 2^(e - 25), subnormals m 2^-24, signed zeros, infinities; NaN is left to the caller. */
static double f16_reference(uint16_t h)
{
    unsigned e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    double mag = e == 0x1f ? INFINITY : e == 0 ? ldexp(m, -24) : ldexp(1024.0 + m, (int)e - 25);
    return (h & 0x8000u) ? -mag : mag;
}

/* The same for bfloat16: 8 exponent bits (bias 127), 7 mantissa bits. */
static double bf16_reference(uint16_t b)
{
    unsigned e = (b >> 7) & 0xffu, m = b & 0x7fu;
    double mag = e == 0xff ? INFINITY : e == 0 ? ldexp(m, -133) : ldexp(128.0 + m, (int)e - 134);
    return (b & 0x8000u) ? -mag : mag;
}

static uint64_t bits64(double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

static uint32_t bits32(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

/* A NaN pattern with `mant_bits` mantissa bits widened to float32 and float64 as half.h defines
 * it: the float32 keeps sign and payload bit for bit (mantissa shifted to the top); the float64
 * (an IEEE float32 -> float64 conversion) keeps sign and payload and is quiet. */
static void check_nan(uint16_t pattern, unsigned mant_bits, float f32, double f64)
{
    uint32_t sign = (uint32_t)(pattern >> 15), payload = pattern & ((1u << mant_bits) - 1);
    uint32_t want32 = sign << 31 | 0x7f800000u | payload << (23 - mant_bits);
    if (bits32(f32) != want32)
        fail_msg("NaN 0x%04x: float32 0x%08x, want 0x%08x", pattern, bits32(f32), want32);
    uint64_t want64 = (uint64_t)sign << 63 | 0x7ff0000000000000ull |
                      (uint64_t)payload << (52 - mant_bits) | 0x0008000000000000ull;
    if (bits64(f64) != want64)
        fail_msg("NaN 0x%04x: float64 0x%016llx, want 0x%016llx", pattern,
                 (unsigned long long)bits64(f64), (unsigned long long)want64);
}

/* Every one of the 65536 F16 and BF16 patterns widened to float32 and float64, bit for bit against
 * the value computed from its fields: normals, subnormals, both zeros, both infinities, NaNs
 * (quiet and signalling, both signs).  The source starts at an odd address (unaligned loads). */
static void test_half_bf16_every_pattern(void **state)
{
    (void)state;
    const uint64_t N = 65536;
    uint8_t *raw = malloc(2 * N + 1);
    float *f32 = malloc(N * sizeof *f32);
    double *f64 = malloc(N * sizeof *f64);
    assert_non_null(raw), assert_non_null(f32), assert_non_null(f64);
    for (uint64_t i = 0; i < N; i++) {
        uint16_t v = (uint16_t)i;
        memcpy(raw + 1 + 2 * i, &v, 2);
    }
    static const struct {
        enum tpv_dtype dt;
        double (*ref)(uint16_t);
        unsigned exp_mask, mant_bits;
    } kinds[] = { { TPV_DTYPE_F16, f16_reference, 0x7c00u, 10 },
                  { TPV_DTYPE_BF16, bf16_reference, 0x7f80u, 7 } };
    for (size_t k = 0; k < 2; k++) {
        tpv_convert_f32(kinds[k].dt, raw + 1, N, f32);
        tpv_convert_f64(kinds[k].dt, raw + 1, N, f64);
        unsigned seen_sub = 0, seen_nan = 0;
        for (uint64_t i = 0; i < N; i++) {
            uint16_t h = (uint16_t)i;
            unsigned mant = h & ((1u << kinds[k].mant_bits) - 1);
            if ((h & kinds[k].exp_mask) == kinds[k].exp_mask && mant != 0) {
                check_nan(h, kinds[k].mant_bits, f32[i], f64[i]);
                seen_nan++;
                continue;
            }
            double want = kinds[k].ref(h);
            seen_sub += (h & kinds[k].exp_mask) == 0 && mant != 0;
            if (bits64(f64[i]) != bits64(want))
                fail_msg("%s 0x%04x: float64 %a, want %a", k ? "BF16" : "F16", h, f64[i], want);
            if (bits32(f32[i]) != bits32((float)want)) /* every value is a float: exact */
                fail_msg("%s 0x%04x: float32 %a, want %a", k ? "BF16" : "F16", h,
                         (double)f32[i], want);
        }
        /* The classes were all there: 2 * (2^m - 1) subnormals and NaNs of each kind. */
        assert_int_equal(seen_sub, 2 * ((1u << kinds[k].mant_bits) - 1));
        assert_int_equal(seen_nan, 2 * ((1u << kinds[k].mant_bits) - 1));
    }
    /* The references themselves against landmarks spelled out. */
    static const struct {
        uint16_t f16, bf16;
        double value;
    } marks[] = {
        { 0x0000, 0x0000, 0.0 },      { 0x8000, 0x8000, -0.0 },    { 0x3c00, 0x3f80, 1.0 },
        { 0xc000, 0xc000, -2.0 },     { 0x7c00, 0x7f80, INFINITY }, { 0xfc00, 0xff80, -INFINITY },
    };
    for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++) {
        assert_true(bits64(f16_reference(marks[i].f16)) == bits64(marks[i].value));
        assert_true(bits64(bf16_reference(marks[i].bf16)) == bits64(marks[i].value));
    }
    assert_true(f16_reference(0x0001) == 0x1p-24 && f16_reference(0x03ff) == 0x3ffp-24);
    assert_true(f16_reference(0x0400) == 0x1p-14 && f16_reference(0x7bff) == 65504.0);
    assert_true(bf16_reference(0x0001) == 0x1p-133 && bf16_reference(0x0080) == 0x1p-126);
    assert_true(bf16_reference(0x7f7f) == 0x1.fep127);
    free(raw), free(f32), free(f64);
}

/* Named tensors: columns in lexicographic order of names whatever the input order; weights
 * checked by name and shape; mixed dtypes. */
static void test_named_layout(void **state)
{
    (void)state;
    uint64_t n = 4, K = 2;
    /* "net.1.weight" (3 x 2) as F32, "net.0.bias" (3) as F64 */
    double jw[4 * 2 * 6], jb[4 * 2 * 3];
    float jwf[4 * 2 * 6];
    fill_normal(jw, 48, 5);
    fill_normal(jb, 24, 6);
    for (int i = 0; i < 48; i++) {
        jwf[i] = (float)jw[i];
        jw[i] = jwf[i];
    }
    uint64_t sw[4] = { n, K, 3, 2 }, sb[3] = { n, K, 3 };
    struct tpv_tensor tw = tview("net.1.weight", TPV_DTYPE_F32, jwf, 4, sw);
    struct tpv_tensor tb = tview("net.0.bias", TPV_DTYPE_F64, jb, 3, sb);
    const struct tpv_tensor *ts[2] = { &tw, &tb };
    double w0[6] = { 0 }, b0[3] = { 0 };
    uint64_t ww[2] = { 3, 2 }, wb[1] = { 3 };
    struct tpv_tensor vw = tview("net.1.weight", TPV_DTYPE_F64, w0, 2, ww);
    struct tpv_tensor vb = tview("net.0.bias", TPV_DTYPE_F64, b0, 1, wb);
    const struct tpv_tensor *ws[2] = { &vb, &vw };
    struct tpv_jsrc *s;
    struct tpv_err err;
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 2, NULL, 0, ws, 2, &err), 0);
    assert_int_equal(s->p, 9);
    assert_int_equal(s->layout.nblocks, 2);
    assert_string_equal(s->layout.blocks[0].name, "net.0.bias");
    assert_int_equal(s->layout.blocks[0].offset, 0);
    assert_int_equal(s->layout.blocks[1].offset, 3);
    assert_int_equal(s->layout.blocks[1].rank, 2);
    assert_int_equal(s->layout.blocks[1].shape[0], 3);
    /* The equivalent dense J: row r = [jb row r, jw row r] */
    double J[8 * 9];
    for (int r = 0; r < 8; r++) {
        for (int c = 0; c < 3; c++)
            J[r * 9 + c] = jb[r * 3 + c];
        for (int c = 0; c < 6; c++)
            J[r * 9 + 3 + c] = jw[r * 6 + c];
    }
    check_ops(s, J, 1e-6); /* the F32 block sums squares in float, 8 rows at a time */
    tpv_jsrc_free(s);

    /* weight shape mismatch */
    uint64_t bad[2] = { 2, 3 };
    vw = tview("net.1.weight", TPV_DTYPE_F64, w0, 2, bad);
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 2, NULL, 0, ws, 2, &err), TPV_EINVAL);
    assert_string_equal(err.field, "net.1.weight");
    assert_non_null(strstr(err.message, "(3, 2)"));
    assert_null(s);
    /* missing weight */
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 2, NULL, 0, ws, 1, &err), TPV_EINVAL);
    /* n mismatch between tensors */
    uint64_t sb2[3] = { n + 1, K, 3 };
    double jb2[5 * 2 * 3] = { 0 };
    struct tpv_tensor tb2 = tview("net.0.bias", TPV_DTYPE_F64, jb2, 3, sb2);
    const struct tpv_tensor *ts2[2] = { &tw, &tb2 };
    assert_int_equal(tpv_dump_from_tensors(&s, ts2, 2, NULL, 0, NULL, 0, &err), TPV_EFORMAT);
    /* layout naming the same tensors is accepted, a different one refused */
    const char *lay[2] = { "net.1.weight", "net.0.bias" };
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 2, lay, 2, NULL, 0, &err), 0);
    tpv_jsrc_free(s);
    const char *lay2[1] = { "net.1.weight" };
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 2, lay2, 1, NULL, 0, &err), TPV_EINVAL);
}

static void test_flat_with_layout(void **state)
{
    (void)state;
    uint64_t n = 3, p = 9;
    double J[27];
    fill_normal(J, 27, 8);
    uint64_t shape[2] = { n, p };
    struct tpv_tensor t = tview("", TPV_DTYPE_F64, J, 2, shape);
    const struct tpv_tensor *ts[1] = { &t };
    double w0[6] = { 0 }, b0[3] = { 0 };
    uint64_t ww[2] = { 3, 2 }, wb[1] = { 3 };
    struct tpv_tensor vw = tview("w", TPV_DTYPE_F64, w0, 2, ww);
    struct tpv_tensor vb = tview("b", TPV_DTYPE_F64, b0, 1, wb);
    const struct tpv_tensor *ws[2] = { &vb, &vw };
    const char *lay[2] = { "w", "b" };
    struct tpv_jsrc *s;
    struct tpv_err err;
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, lay, 2, ws, 2, &err), 0);
    assert_string_equal(s->layout.blocks[0].name, "w");
    assert_int_equal(s->layout.blocks[1].offset, 6);
    tpv_jsrc_free(s);
    /* layout without weights, unknown name, wrong total */
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, lay, 2, NULL, 0, &err), TPV_EINVAL);
    const char *lay3[2] = { "w", "zz" };
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, lay3, 2, ws, 2, &err), TPV_EINVAL);
    const char *lay4[1] = { "w" };
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, lay4, 1, ws, 2, &err), TPV_EINVAL);
    assert_non_null(strstr(err.message, "p = 9"));
    const char *lay5[3] = { "w", "b", "b" };
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, lay5, 3, ws, 2, &err), TPV_EINVAL);
}

static void test_validation(void **state)
{
    (void)state;
    double J[12] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
    float F[12] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
    uint64_t shape[2] = { 3, 4 };
    struct tpv_jsrc *s;
    struct tpv_err err;
    J[7] = NAN;
    struct tpv_tensor t = tview("", TPV_DTYPE_F64, J, 2, shape);
    const struct tpv_tensor *ts[1] = { &t };
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, NULL, 0, NULL, 0, &err), TPV_EFORMAT);
    assert_non_null(strstr(err.message, "index 7"));
    F[11] = INFINITY;
    t = tview("", TPV_DTYPE_F32, F, 2, shape);
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, NULL, 0, NULL, 0, &err), TPV_EFORMAT);
    assert_non_null(strstr(err.message, "index 11"));
    uint16_t h[12] = { 0 };
    h[3] = 0x7c00;
    t = tview("", TPV_DTYPE_F16, h, 2, shape);
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, NULL, 0, NULL, 0, &err), TPV_EFORMAT);
    uint64_t s1[1] = { 12 };
    t = tview("", TPV_DTYPE_F32, F, 1, s1);
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, NULL, 0, NULL, 0, &err), TPV_EFORMAT);
    unsigned char u8[12] = { 0 };
    t = tview("", TPV_DTYPE_U8, u8, 2, shape);
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, NULL, 0, NULL, 0, &err), TPV_EFORMAT);
    t = tview("", TPV_DTYPE_F32, F, 2, shape);
    t.numel = 11; /* inconsistent view */
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, NULL, 0, NULL, 0, &err), TPV_EFORMAT);
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 0, NULL, 0, NULL, 0, &err), TPV_EFORMAT);
}

/* Misaligned data (safetensors does not promise alignment) is copied, and results agree. */
static void test_misaligned(void **state)
{
    (void)state;
    uint64_t n = 5, p = 33;
    double J[165];
    fill_normal(J, 165, 9);
    unsigned char *raw = malloc(165 * 8 + 1);
    memcpy(raw + 1, J, 165 * 8);
    uint64_t shape[3] = { n, 1, p };
    struct tpv_tensor t = tview("a", TPV_DTYPE_F64, raw + 1, 3, shape);
    const struct tpv_tensor *ts[1] = { &t };
    struct tpv_jsrc *s;
    struct tpv_err err;
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, NULL, 0, NULL, 0, &err), 0);
    check_ops(s, J, 1e-12);
    tpv_jsrc_free(s);
    free(raw);
}

static int cancel_after;
static int cancel_cb(void *ctx, double f)
{
    (void)ctx;
    assert_true(f >= 0 && f <= 1);
    return --cancel_after < 0;
}

static void test_threads_and_cancel(void **state)
{
    (void)state;
    uint64_t n = 40, p = 20000;
    float *F = malloc(n * p * 4);
    double *J = malloc(n * p * 8);
    fill_normal(J, n * p, 11);
    for (uint64_t i = 0; i < n * p; i++)
        F[i] = (float)J[i];
    uint64_t shape[2] = { n, p };
    struct tpv_tensor t = tview("", TPV_DTYPE_F32, F, 2, shape);
    const struct tpv_tensor *ts[1] = { &t };
    struct tpv_jsrc *s;
    struct tpv_err err;
    assert_int_equal(tpv_dump_from_tensors(&s, ts, 1, NULL, 0, NULL, 0, &err), 0);
    double *d1 = calloc(p, 8), *d2 = calloc(p, 8), *g1 = malloc(n * n * 8), *g2 = malloc(n * n * 8);
    int nt = openblas_get_num_threads();
    assert_int_equal(s->ops->sqdiag(s, d1, NULL, &err), 0);
    assert_int_equal(s->ops->gram(s, s, g1, NULL, &err), 0);
    openblas_set_num_threads(1);
    assert_int_equal(s->ops->sqdiag(s, d2, NULL, &err), 0);
    assert_memory_equal(d1, d2, p * 8); /* column split: independent of the thread count */
    openblas_set_num_threads(nt);
    assert_int_equal(s->ops->gram(s, s, g2, NULL, &err), 0);
    assert_memory_equal(g1, g2, n * n * 8); /* same threads: bit-identical */
    struct tpv_progress pg = { cancel_cb, NULL };
    cancel_after = 0;
    assert_int_equal(s->ops->sqdiag(s, d2, &pg, &err), TPV_ECANCELED);
    cancel_after = 1;
    assert_int_equal(s->ops->gram(s, s, g2, &pg, &err), TPV_ECANCELED);
    cancel_after = 0;
    assert_int_equal(s->ops->jvp(s, d1, g2, &pg, &err), TPV_ECANCELED);
    tpv_jsrc_free(s);
    free(F), free(J), free(d1), free(d2), free(g1), free(g2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f64_flat),        cmocka_unit_test(test_f32_f16_bf16),
        cmocka_unit_test(test_named_layout),    cmocka_unit_test(test_flat_with_layout),
        cmocka_unit_test(test_validation),      cmocka_unit_test(test_misaligned),
        cmocka_unit_test(test_threads_and_cancel), cmocka_unit_test(test_half_bf16_every_pattern),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
