/* half.h: exact conversion of IEEE 754 binary16 (F16) and bfloat16 (BF16) bit patterns to float.
 *
 * Both widen exactly (every F16 and BF16 value is a float value), so there is no rounding here;
 * NaN payloads and signs are kept.  Header-only so that the conversion loops in tensor.c inline
 * it (no per-element call). */
#ifndef TPV_HALF_H
#define TPV_HALF_H

#include <stdint.h>
#include <string.h>

static inline float tpv_f32_from_bits(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
static inline float tpv_half_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1f) /* inf or NaN: all-ones float exponent, payload kept */
        return tpv_f32_from_bits(sign | 0x7f800000u | (mant << 13));
    if (exp != 0) /* normal: rebias 15 -> 127 */
        return tpv_f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
    /* zero or subnormal: mant * 2^-24, exact in float (mant < 2^10) */
    float mag = (float)mant * 0x1p-24f;
    return sign ? -mag : mag;
}

/* bfloat16 is the upper half of a float. */
static inline float tpv_bf16_to_f32(uint16_t b)
{
    return tpv_f32_from_bits((uint32_t)b << 16);
}

#endif
