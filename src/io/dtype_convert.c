/* dtype_convert.c — see dtype_convert.h.  Everything works on bit patterns (no
 * floating-point arithmetic, so no dependence on the rounding mode), except F64 -> F32,
 * which is the C cast the format's readers use. */
#include "io/dtype_convert.h"

#include <string.h>

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Rounds q + rem / 2^shift to an integer, ties to even (0 < shift < 32). */
static uint32_t round_shifted(uint32_t q, uint32_t rem, unsigned shift) {
    uint32_t half = (uint32_t)1 << (shift - 1);
    return q + (rem > half || (rem == half && (q & 1u)));
}

/* ---- one value --------------------------------------------------------------- */

float graft_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | man << 13); /* inf, NaN */
    if (exp != 0) return bits_f32(sign | (exp + 127 - 15) << 23 | man << 13);
    if (man == 0) return bits_f32(sign); /* +-0 */
    /* Subnormal: man * 2^-24.  Shift the leading one up to the implicit bit (bit 10);
     * each shift lowers the exponent of 2^-14 (biased 113) by one. */
    uint32_t e = 127 - 14;
    do {
        man <<= 1;
        e--;
    } while (!(man & 0x400u));
    return bits_f32(sign | e << 23 | (man & 0x3ffu) << 13);
}

float graft_bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

uint16_t graft_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) /* NaN: quiet, top 9 payload bits kept */
        return (uint16_t)(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
    /* 65520 = 65504 + half an ulp: the tie rounds to the even neighbour, 2^16, i.e. inf. */
    if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
    uint32_t exp = x >> 23, man = x & 0x7fffffu;
    if (exp >= 127 - 14) { /* normal half: rebias, keep the top 10 mantissa bits */
        uint32_t q = (exp - (127 - 15)) << 10 | man >> 13;
        return (uint16_t)(sign | round_shifted(q, man & 0x1fffu, 13)); /* a carry bumps exp */
    }
    /* Subnormal half (or zero): round((1.man) * 2^(exp-127) / 2^-24).  With the
     * implicit bit, that is (man | 2^23) >> (126 - exp).  Shifts past 24 leave less than
     * half of 2^-24, and float32 subnormals (exp 0) are far below it: both round to 0. */
    if (exp < 126 - 24) return sign;
    unsigned shift = 126 - exp; /* 14 .. 24 */
    man |= 0x800000u;
    uint32_t q = round_shifted(man >> shift, man & (((uint32_t)1 << shift) - 1), shift);
    return (uint16_t)(sign | q); /* q = 0x400 is the smallest normal, encoded correctly */
}

uint16_t graft_f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: quiet, sign and top 6 payload bits kept */
        return (uint16_t)((x >> 16) | 0x0040u);
    /* Round the low 16 bits away, ties to even; a carry moves into the exponent and past
     * the largest finite value reaches inf (0x7f80), as it should. */
    return (uint16_t)(round_shifted(x >> 16, x & 0xffffu, 16));
}

float graft_f64_to_f32(double d) { return (float)d; }

/* ---- arrays ------------------------------------------------------------------ */

static uint64_t load_le(const unsigned char *p, size_t bytes) {
    uint64_t v = 0;
    for (size_t i = bytes; i-- > 0;) v = v << 8 | p[i];
    return v;
}

void graft_f16le_to_f32(const unsigned char *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = graft_f16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
}

void graft_bf16le_to_f32(const unsigned char *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = graft_bf16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
}

void graft_f64le_to_f32(const unsigned char *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint64_t u = load_le(src + 8 * i, 8);
        double d;
        memcpy(&d, &u, sizeof d);
        dst[i] = graft_f64_to_f32(d);
    }
}

void graft_f32le_to_f32(const unsigned char *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = bits_f32((uint32_t)load_le(src + 4 * i, 4));
}

void graft_f32_to_f16le(const float *src, unsigned char *dst, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint16_t h = graft_f32_to_f16(src[i]);
        dst[2 * i] = (unsigned char)h;
        dst[2 * i + 1] = (unsigned char)(h >> 8);
    }
}

void graft_f32_to_bf16le(const float *src, unsigned char *dst, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint16_t b = graft_f32_to_bf16(src[i]);
        dst[2 * i] = (unsigned char)b;
        dst[2 * i + 1] = (unsigned char)(b >> 8);
    }
}

size_t graft_intle_to_i64(const unsigned char *src, size_t elem_bytes, bool is_signed,
                          int64_t *dst, size_t n) {
    unsigned bits = (unsigned)(8 * elem_bytes);
    for (size_t i = 0; i < n; i++) {
        uint64_t u = load_le(src + elem_bytes * i, elem_bytes);
        if (is_signed && bits < 64 && (u >> (bits - 1) & 1u))
            u |= ~(uint64_t)0 << bits; /* sign-extend */
        if (!is_signed && u > (uint64_t)INT64_MAX) return i;
        /* Two's complement without implementation-defined conversion. */
        dst[i] = u <= (uint64_t)INT64_MAX ? (int64_t)u : -(int64_t)(~u) - 1;
    }
    return n;
}

void graft_bool_to_i64(const unsigned char *src, int64_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = src[i] != 0;
}
