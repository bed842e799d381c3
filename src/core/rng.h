/* rng.h — a small, fast, seedable generator (xoshiro256**, seeded by splitmix64).
 * Used for initialisation and dropout; the same seed gives the same numbers on every
 * platform. */
#ifndef GRAFT_CORE_RNG_H
#define GRAFT_CORE_RNG_H

#include <stdbool.h>
#include <stdint.h>

typedef struct graft_rng {
    uint64_t s[4];
} graft_rng;

void graft_rng_seed(graft_rng *r, uint64_t seed);
uint64_t graft_rng_u64(graft_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double graft_rng_uniform(graft_rng *r);
/* Standard normal (Box-Muller). */
double graft_rng_normal(graft_rng *r);
/* The generator moved k draws on, as k calls of graft_rng_u64 would (a few
 * microseconds); false, r untouched, where k >= 2^40 or memory for the tables (320 KiB,
 * made at the first jump) was not there. */
bool graft_rng_jump(graft_rng *r, uint64_t k);
/* n draws: out[i] = drop where graft_rng_uniform(r) < p, else keep, in order — the same
 * numbers and decisions as that loop, compared as integers without a call or a
 * conversion per element (Dropout's masks). */
void graft_rng_select(graft_rng *r, int64_t n, double p, float drop, float keep, float *out);

#endif
