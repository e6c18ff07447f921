/* rng.c: xoshiro256** (Blackman & Vigna 2018) with splitmix64 seeding; see rng.h. */
#include "core/rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void tpv_rng_init(struct tpv_rng *r, uint64_t seed, uint64_t stream)
{
    /* Mix the stream index through splitmix first so that nearby (seed, stream) pairs do not
     * give overlapping splitmix sequences. */
    uint64_t x = seed;
    uint64_t a = splitmix64(&x);
    uint64_t y = stream ^ 0x6a09e667f3bcc909ULL;
    uint64_t b = splitmix64(&y);
    uint64_t st = a ^ (b * 0xd1342543de82ef95ULL);
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&st);
    if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0)
        r->s[0] = 1;
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t tpv_rng_next(struct tpv_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double tpv_rng_uniform(struct tpv_rng *r)
{
    return (double)(tpv_rng_next(r) >> 11) * 0x1.0p-53;
}

void tpv_rng_rademacher(struct tpv_rng *r, double *out, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint64_t bits = tpv_rng_next(r);
        for (int b = 0; b < 64 && i < n; b++, i++, bits >>= 1)
            out[i] = (bits & 1) ? 1.0 : -1.0;
    }
}

double tpv_rng_normal(struct tpv_rng *r)
{
    double u1 = tpv_rng_uniform(r), u2 = tpv_rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
