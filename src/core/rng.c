/* rng.c — xoshiro256** (Blackman & Vigna, public domain algorithm). */
#include "core/rng.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/cpu.h"

#if GRAFT_HAVE_AVX512_BUILD
#include <immintrin.h>
#endif

#define TWO_PI 6.283185307179586476925286766559

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void graft_rng_seed(graft_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* One step of xoshiro256** on the state s. */
static inline uint64_t next(uint64_t s[4]) {
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

uint64_t graft_rng_u64(graft_rng *r) { return next(r->s); }

double graft_rng_uniform(graft_rng *r) { return (double)(graft_rng_u64(r) >> 11) * 0x1.0p-53; }

double graft_rng_normal(graft_rng *r) {
    double u1 = graft_rng_uniform(r);
    double u2 = graft_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300; /* log(0) guard */
    return sqrt(-2.0 * log(u1)) * cos(TWO_PI * u2);
}

/* ---- jumps ----------------------------------------------------------------------
 *
 * A step of xoshiro256** is linear over GF(2) in the 256 bits of the state: a 256 x 256
 * bit matrix T, known by its columns, the states that one step makes of the 256 unit
 * states.  T^(2^i) for i < JUMP_BITS come from squaring, once per process (about 40
 * products of 256 matrix-vector products each, a few milliseconds); a jump by k then
 * applies those of k's set bits to the state, at about 0.3 us each. */
#define JUMP_BITS 40

typedef struct rng_matrix {
    uint64_t col[256][4]; /* column j: the image of unit state j */
} rng_matrix;

static rng_matrix *pow2; /* T^(2^i) for i < JUMP_BITS; NULL if the memory was not there */
static pthread_once_t pow2_once = PTHREAD_ONCE_INIT;

/* out = m s (out may be s). */
static void apply(const rng_matrix *m, const uint64_t s[4], uint64_t out[4]) {
    uint64_t r[4] = {0, 0, 0, 0};
    for (int j = 0; j < 256; j++) {
        uint64_t take = -(s[j >> 6] >> (j & 63) & 1); /* without a branch: the bits are random */
        for (int k = 0; k < 4; k++) r[k] ^= m->col[j][k] & take;
    }
    memcpy(out, r, sizeof r);
}

static void pow2_init(void) {
    rng_matrix *t = malloc(JUMP_BITS * sizeof *t);
    if (!t) return;
    for (int j = 0; j < 256; j++) {
        uint64_t e[4] = {0, 0, 0, 0};
        e[j >> 6] = (uint64_t)1 << (j & 63);
        next(e);
        memcpy(t[0].col[j], e, sizeof e);
    }
    for (int i = 1; i < JUMP_BITS; i++) /* T^(2^i) e_j = T^(2^(i-1)) (T^(2^(i-1)) e_j) */
        for (int j = 0; j < 256; j++) apply(&t[i - 1], t[i - 1].col[j], t[i].col[j]);
    pow2 = t;
}

/* s moved k steps on; false, s untouched, where k >= 2^JUMP_BITS or the tables are
 * missing. */
static bool jump(uint64_t s[4], uint64_t k) {
    pthread_once(&pow2_once, pow2_init);
    if (!pow2 || k >> JUMP_BITS) return false;
    for (int i = 0; i < JUMP_BITS; i++)
        if (k >> i & 1) apply(&pow2[i], s, s);
    return true;
}

bool graft_rng_jump(graft_rng *r, uint64_t k) { return jump(r->s, k); }

/* ---- masks ------------------------------------------------------------------------ */

/* The vectorised select: SELECT_LANES copies of the generator, lane j started at draw
 * j * len (by a jump), run side by side in the lanes of AVX-512 registers, each writing
 * its stretch of out, eight draws at a time (an 8 x 8 transpose).  The same draws and
 * decisions as one generator in order, and the generator is left where that would leave
 * it.  A draw is a chain of dependent operations; eight chains at once took Dropout's
 * 262,144 draws (a recipe's batch of 64 x 4096) from 0.51 ms to 0.15 ms.  Below
 * SELECT_MIN draws the jumps are not worth it. */
#define SELECT_LANES 8
#define SELECT_MIN 4096

#if GRAFT_HAVE_AVX512_BUILD
/* r [i] [l] <-> r [l] [i] for 8 x 8 32-bit elements. */
__attribute__((target("avx512f"), always_inline)) static inline void transpose8(__m256i r[8]) {
    __m256i a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
        a[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        b[i] = _mm256_unpacklo_epi64(a[i], a[i + 2]);
        b[i + 1] = _mm256_unpackhi_epi64(a[i], a[i + 2]);
        b[i + 2] = _mm256_unpacklo_epi64(a[i + 1], a[i + 3]);
        b[i + 3] = _mm256_unpackhi_epi64(a[i + 1], a[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2x128_si256(b[i], b[i + 4], 0x20);
        r[i + 4] = _mm256_permute2x128_si256(b[i], b[i + 4], 0x31);
    }
}

/* out [j * len + t] = drop or keep by draw t of lane j (states st [j], left after their
 * len draws). */
__attribute__((target("avx512f"))) static void select_lanes(uint64_t st[SELECT_LANES][4], int64_t len,
                                                             uint64_t limit, uint32_t drop_bits, uint32_t keep_bits,
                                                             float *out) {
    __m512i v[4];
    for (int k = 0; k < 4; k++)
        v[k] = _mm512_set_epi64((long long)st[7][k], (long long)st[6][k], (long long)st[5][k], (long long)st[4][k],
                                (long long)st[3][k], (long long)st[2][k], (long long)st[1][k], (long long)st[0][k]);
    __m512i s0 = v[0], s1 = v[1], s2 = v[2], s3 = v[3];
    const __m512i lim = _mm512_set1_epi64((long long)limit), drop = _mm512_set1_epi64(drop_bits),
                  keep = _mm512_set1_epi64(keep_bits);
    __m256i r[SELECT_LANES]; /* eight draws of every lane, then each lane's eight */
    int64_t t = 0;
    for (; t < len; t++) {
        __m512i x = _mm512_add_epi64(_mm512_slli_epi64(s1, 2), s1); /* s1 * 5 */
        x = _mm512_rol_epi64(x, 7);
        x = _mm512_add_epi64(_mm512_slli_epi64(x, 3), x); /* * 9 */
        __m512i sh = _mm512_slli_epi64(s1, 17);
        s2 = _mm512_xor_si512(s2, s0);
        s3 = _mm512_xor_si512(s3, s1);
        s1 = _mm512_xor_si512(s1, s2);
        s0 = _mm512_xor_si512(s0, s3);
        s2 = _mm512_xor_si512(s2, sh);
        s3 = _mm512_rol_epi64(s3, 45);
        __mmask8 dropped = _mm512_cmplt_epu64_mask(_mm512_srli_epi64(x, 11), lim);
        r[t % SELECT_LANES] = _mm512_cvtepi64_epi32(_mm512_mask_blend_epi64(dropped, keep, drop));
        if (t % SELECT_LANES == SELECT_LANES - 1) { /* 8 x 8 transposed, a row per lane */
            transpose8(r);
            for (int j = 0; j < SELECT_LANES; j++)
                _mm256_storeu_si256((__m256i *)(out + j * len + t - (SELECT_LANES - 1)), r[j]);
        }
    }
    for (int64_t u = len / SELECT_LANES * SELECT_LANES; u < len; u++) { /* past the last whole eight */
        uint32_t lane[SELECT_LANES];
        _mm256_storeu_si256((__m256i *)lane, r[u % SELECT_LANES]);
        for (int j = 0; j < SELECT_LANES; j++) memcpy(out + j * len + u, &lane[j], sizeof lane[j]);
    }
    v[0] = s0, v[1] = s1, v[2] = s2, v[3] = s3;
    for (int k = 0; k < 4; k++) {
        uint64_t lane[SELECT_LANES];
        _mm512_storeu_si512(lane, v[k]);
        for (int j = 0; j < SELECT_LANES; j++) st[j][k] = lane[j];
    }
}
#endif

/* uniform < p, with uniform = k 2^-53 for k = u64 >> 11, is k < p 2^53 (a power-of-two
 * scaling, exact), and for an integer k that is k < ceil(p 2^53). */
void graft_rng_select(graft_rng *r, int64_t n, double p, float drop, float keep, float *out) {
    uint64_t limit = p <= 0 ? 0 : p >= 1 ? (uint64_t)1 << 53 : (uint64_t)ceil(ldexp(p, 53));
    uint64_t s[4] = {r->s[0], r->s[1], r->s[2], r->s[3]}; /* a local copy stays in registers */
    uint32_t drop_bits, keep_bits;
    memcpy(&drop_bits, &drop, sizeof drop_bits);
    memcpy(&keep_bits, &keep, sizeof keep_bits);
    int64_t i = 0;
#if GRAFT_HAVE_AVX512_BUILD
    int64_t len = n / SELECT_LANES;
    if (n >= SELECT_MIN && graft_cpu_avx512f()) {
        uint64_t st[SELECT_LANES][4];
        memcpy(st[0], s, sizeof s);
        bool ok = true;
        for (int j = 1; ok && j < SELECT_LANES; j++) {
            memcpy(st[j], st[j - 1], sizeof s);
            ok = jump(st[j], (uint64_t)len);
        }
        if (ok) {
            select_lanes(st, len, limit, drop_bits, keep_bits, out);
            memcpy(s, st[SELECT_LANES - 1], sizeof s); /* draw SELECT_LANES * len on */
            i = SELECT_LANES * len;
        }
    }
#endif
    /* The select by bits, without a branch: the outcomes are random, and a branch was
     * mispredicted about half the time at p = 0.5 (262,144 elements: 1.19 -> 0.51 ms). */
    for (; i < n; i++) {
        uint32_t dropped = -(uint32_t)((next(s) >> 11) < limit);
        uint32_t bits = (drop_bits & dropped) | (keep_bits & ~dropped);
        memcpy(out + i, &bits, sizeof bits);
    }
    for (int k = 0; k < 4; k++) r->s[k] = s[k];
}
