/* rng.h: a small, reproducible PRNG for the stochastic estimators (xoshiro256** seeded through
 * splitmix64).  Streams are derived from (seed, stream index), so probe number i is the same
 * vector whatever the thread count or the order in which probes are drawn. */
#ifndef TPV_RNG_H
#define TPV_RNG_H

#include <stddef.h>
#include <stdint.h>

struct tpv_rng {
    uint64_t s[4];
};

/* Seeds `r` for stream `stream` of `seed` (independent streams for different indices). */
void tpv_rng_init(struct tpv_rng *r, uint64_t seed, uint64_t stream);
uint64_t tpv_rng_next(struct tpv_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double tpv_rng_uniform(struct tpv_rng *r);
/* out[i] = +1 or -1 with probability 1/2 each (one random bit per entry). */
void tpv_rng_rademacher(struct tpv_rng *r, double *out, size_t n);
/* Standard normal (Box-Muller; for tests and sketches). */
double tpv_rng_normal(struct tpv_rng *r);

#endif
