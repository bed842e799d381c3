/* test_dtype_convert.c — F16/BF16/F64 <-> float32 and integer -> int64 conversions.
 *
 * The widening conversions are checked bit for bit over all 65536 inputs against a
 * reference written the obvious way, value = (-1)^s * significand * 2^exponent via
 * ldexp.  The narrowing ones are checked on every rounding boundary of the target type
 * (each representable value, each midpoint, and the floats either side of it), on known
 * values, and against a reference that scales to an integer and rounds it with
 * nearbyint() over a sweep of float bit patterns. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "io/dtype_convert.h"

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint64_t dbits(double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    return u;
}

/* ---- references ---------------------------------------------------------------- */

/* binary16: 1 sign, 5 exponent (bias 15), 10 fraction bits.  NaNs are not values; the
 * caller handles them. */
static double ref_half_value(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0) v = ldexp(m, -24);                /* subnormal: m * 2^-14 / 2^10 */
    else if (e == 31) v = INFINITY;
    else v = ldexp(1024 + m, e - 15 - 10);        /* (1 + m/2^10) * 2^(e-15) */
    return s ? -v : v;
}

/* bfloat16: 1 sign, 8 exponent (bias 127), 7 fraction bits. */
static double ref_bf16_value(uint16_t b) {
    int s = b >> 15, e = (b >> 7) & 0xff, m = b & 0x7f;
    double v;
    if (e == 0) v = ldexp(m, -126 - 7);
    else if (e == 255) v = INFINITY;
    else v = ldexp(128 + m, e - 127 - 7);
    return s ? -v : v;
}

static int is_half_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }
static int is_bf16_nan(uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f); }

/* Every non-negative half value, indexed by its bit pattern 0 .. 0x7c00 (increasing). */
static double half_table[0x7c01];

static void fill_half_table(void) {
    for (unsigned h = 0; h <= 0x7c00; h++) half_table[h] = ref_half_value((uint16_t)h);
}

/* Rounds |x| to a multiple of the target's spacing there (2^(floor(log2|x|) - p + 1),
 * never below the subnormal spacing), ties to even, in double, where all of it is
 * exact.  p is the precision in bits, min_exp the exponent of the smallest normal. */
static double ref_round(double a, int p, int min_exp) {
    int e;
    frexp(a, &e); /* a = f * 2^e, f in [0.5, 1): floor(log2 a) = e - 1 */
    int q = (a == 0 || e - 1 < min_exp ? min_exp : e - 1) - (p - 1);
    return ldexp(nearbyint(ldexp(a, -q)), q);
}

static uint16_t ref_f32_to_half(float f) {
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    double r = isinf(f) ? INFINITY : ref_round(fabs((double)f), 11, -14);
    if (r >= 65536.0) return sign | 0x7c00;
    unsigned lo = 0, hi = 0x7c00; /* binary search the table for r */
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (half_table[mid] < r) lo = mid + 1;
        else hi = mid;
    }
    assert_true(half_table[lo] == r);
    return (uint16_t)(sign | lo);
}

static uint16_t ref_f32_to_bf16(float f) {
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    double r = isinf(f) ? INFINITY : ref_round(fabs((double)f), 8, -126);
    if (r >= ldexp(1, 128)) return sign | 0x7f80;
    return (uint16_t)(sign | bits((float)r) >> 16); /* r is a bfloat16, so exact as a float */
}

/* ---- widening: exhaustive -------------------------------------------------------- */

static void every_half_widens_exactly(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float got = graft_f16_to_f32((uint16_t)h);
        uint32_t want;
        if (is_half_nan((uint16_t)h)) /* same sign, payload in the top fraction bits */
            want = (h & 0x8000) << 16 | 0x7f800000u | (h & 0x3ff) << 13;
        else
            want = bits((float)ref_half_value((uint16_t)h));
        if (bits(got) != want)
            fail_msg("half 0x%04x: got 0x%08x, want 0x%08x", (unsigned)h, bits(got), want);
    }
}

static void every_bfloat16_widens_exactly(void **state) {
    (void)state;
    for (uint32_t b = 0; b < 65536; b++) {
        float got = graft_bf16_to_f32((uint16_t)b);
        uint32_t want =
            is_bf16_nan((uint16_t)b) ? b << 16 : bits((float)ref_bf16_value((uint16_t)b));
        if (bits(got) != want)
            fail_msg("bf16 0x%04x: got 0x%08x, want 0x%08x", (unsigned)b, bits(got), want);
    }
}

static void half_widening_known_values(void **state) {
    (void)state;
    assert_true(graft_f16_to_f32(0x3c00) == 1.0f);
    assert_true(graft_f16_to_f32(0xc000) == -2.0f);
    assert_true(graft_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(graft_f16_to_f32(0x0001) == 0x1p-24f);           /* smallest subnormal */
    assert_true(graft_f16_to_f32(0x03ff) == 1023 * 0x1p-24f);    /* largest subnormal */
    assert_true(graft_f16_to_f32(0x0400) == 0x1p-14f);           /* smallest normal */
    assert_true(graft_f16_to_f32(0x3555) == 0x1.554p-2f);
    assert_int_equal(bits(graft_f16_to_f32(0x8000)), 0x80000000u); /* -0 */
    assert_true(graft_f16_to_f32(0x7c00) == INFINITY);
    assert_true(graft_f16_to_f32(0xfc00) == -INFINITY);
    assert_int_equal(bits(graft_f16_to_f32(0x7e00)), 0x7fc00000u);
    assert_int_equal(bits(graft_f16_to_f32(0xfd01)), 0xffa02000u); /* signalling, payload kept */
}

/* ---- narrowing: boundaries, known values, sweep ----------------------------------- */

static void every_half_survives_a_round_trip(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t back = graft_f32_to_f16(graft_f16_to_f32((uint16_t)h));
        if (is_half_nan((uint16_t)h)) { /* quieted, payload kept */
            if (back != (h | 0x0200))
                fail_msg("NaN 0x%04x came back as 0x%04x", (unsigned)h, back);
        } else if (back != h) {
            fail_msg("half 0x%04x came back as 0x%04x", (unsigned)h, back);
        }
    }
}

static void every_half_midpoint_rounds_to_even(void **state) {
    (void)state;
    fill_half_table();
    for (uint32_t h = 0; h < 0x7c00; h++) {
        double lo = half_table[h], hi = h + 1 < 0x7c00 ? half_table[h + 1] : 65536.0;
        float mid = (float)((lo + hi) / 2); /* 12 significant bits: exact */
        assert_true((double)mid == (lo + hi) / 2);
        uint16_t even = (uint16_t)(h & 1 ? h + 1 : h);
        float below = nextafterf(mid, 0), above = nextafterf(mid, INFINITY);
        for (int neg = 0; neg <= 1; neg++) {
            uint16_t s = neg ? 0x8000 : 0;
            float k = neg ? -1.0f : 1.0f;
            if (graft_f32_to_f16(k * mid) != (s | even) ||
                graft_f32_to_f16(k * below) != (s | h) ||
                graft_f32_to_f16(k * above) != (s | (h + 1)))
                fail_msg("around the midpoint of half 0x%04x: %a -> 0x%04x, %a -> 0x%04x, "
                         "%a -> 0x%04x",
                         (unsigned)h, (double)(k * below), graft_f32_to_f16(k * below),
                         (double)(k * mid), graft_f32_to_f16(k * mid), (double)(k * above),
                         graft_f32_to_f16(k * above));
        }
    }
}

static void half_narrowing_known_values(void **state) {
    (void)state;
    assert_int_equal(graft_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(graft_f32_to_f16(0.1f), 0x2e66);
    assert_int_equal(graft_f32_to_f16(1.0f / 3), 0x3555);
    assert_int_equal(graft_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(graft_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(graft_f32_to_f16(65519.996f), 0x7bff);
    assert_int_equal(graft_f32_to_f16(65520.0f), 0x7c00); /* the tie goes to 2^16 = inf */
    assert_int_equal(graft_f32_to_f16(-1e9f), 0xfc00);
    assert_int_equal(graft_f32_to_f16(FLT_MAX), 0x7c00);
    assert_int_equal(graft_f32_to_f16(INFINITY), 0x7c00);
    assert_int_equal(graft_f32_to_f16(0x1p-24f), 0x0001);
    assert_int_equal(graft_f32_to_f16(0x1p-25f), 0x0000);       /* tie to even: 0 */
    assert_int_equal(graft_f32_to_f16(0x1.000002p-25f), 0x0001);
    assert_int_equal(graft_f32_to_f16(0x1.8p-24f), 0x0002);     /* 1.5 units: tie to 2 */
    assert_int_equal(graft_f32_to_f16(0x1.ff8p-15f), 0x03ff);   /* largest subnormal */
    assert_int_equal(graft_f32_to_f16(0x1.ffcp-15f), 0x0400);   /* tie to the smallest normal */
    assert_int_equal(graft_f32_to_f16(0x1p-149f), 0x0000);      /* float32 subnormal */
    assert_int_equal(graft_f32_to_f16(-0x1p-149f), 0x8000);
    assert_int_equal(graft_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);  /* tie down to even */
    assert_int_equal(graft_f32_to_f16(1.0f + 0x3p-11f), 0x3c02);  /* tie up to even */
    /* NaNs stay NaNs (never inf), keep their sign and are quieted. */
    assert_int_equal(graft_f32_to_f16(from_bits(0x7f800001u)), 0x7e00);
    assert_int_equal(graft_f32_to_f16(from_bits(0xffc00000u)), 0xfe00);
    assert_int_equal(graft_f32_to_f16(from_bits(0x7fa02000u)), 0x7f01);
    assert_true(isnan(graft_f16_to_f32(graft_f32_to_f16(NAN))));
}

static void half_narrowing_matches_the_reference_over_a_sweep(void **state) {
    (void)state;
    fill_half_table();
    /* A stride coprime with 2^32 visits ~4.3M patterns with every low-bit residue. */
    const uint32_t stride = 997;
    uint32_t u = 0;
    for (uint64_t i = 0; i < (1ull << 32) / stride; i++, u += stride) {
        float f = from_bits(u);
        if (isnan(f)) continue;
        uint16_t got = graft_f32_to_f16(f), want = ref_f32_to_half(f);
        if (got != want)
            fail_msg("float 0x%08x (%a): got 0x%04x, want 0x%04x", u, (double)f, got, want);
    }
}

static void every_bfloat16_survives_a_round_trip(void **state) {
    (void)state;
    for (uint32_t b = 0; b < 65536; b++) {
        uint16_t back = graft_f32_to_bf16(graft_bf16_to_f32((uint16_t)b));
        uint16_t want = (uint16_t)(is_bf16_nan((uint16_t)b) ? b | 0x0040 : b);
        if (back != want) fail_msg("bf16 0x%04x came back as 0x%04x", (unsigned)b, back);
    }
}

static void every_bfloat16_midpoint_rounds_to_even(void **state) {
    (void)state;
    /* Between bfloat16 values b and b + 1 (as patterns) lie the floats b:0000 .. b+1:0000;
     * the midpoint is b:8000.  For b = 0x7f7f the upper neighbour is inf. */
    for (uint32_t b = 0; b < 0x7f80; b++) {
        for (uint32_t s = 0; s <= 0x8000; s += 0x8000) {
            uint32_t base = (s | b) << 16;
            uint16_t even = (uint16_t)(s | (b & 1 ? b + 1 : b));
            if (graft_f32_to_bf16(from_bits(base | 0x8000)) != even ||
                graft_f32_to_bf16(from_bits(base | 0x7fff)) != (s | b) ||
                graft_f32_to_bf16(from_bits(base | 0x8001)) != (s | (b + 1)) ||
                graft_f32_to_bf16(from_bits(base | 0x0001)) != (s | b))
                fail_msg("around the midpoint of bf16 0x%04x", (unsigned)(s | b));
        }
    }
}

static void bfloat16_narrowing_known_values(void **state) {
    (void)state;
    assert_int_equal(graft_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(graft_f32_to_bf16(0.1f), 0x3dcd);       /* 0x3dcccccd rounds up */
    assert_int_equal(graft_f32_to_bf16(1.0f / 3), 0x3eab);   /* 0x3eaaaaab rounds up */
    assert_int_equal(graft_f32_to_bf16(3.14159265f), 0x4049);
    assert_int_equal(graft_f32_to_bf16(from_bits(0x3f808000u)), 0x3f80); /* tie, down to even */
    assert_int_equal(graft_f32_to_bf16(from_bits(0x3f818000u)), 0x3f82); /* tie, up to even */
    assert_int_equal(graft_f32_to_bf16(-0.0f), 0x8000);
    assert_int_equal(graft_f32_to_bf16(0x1p-149f), 0x0000);
    assert_int_equal(graft_f32_to_bf16(0x1p-133f), 0x0001);  /* smallest bf16 subnormal */
    assert_int_equal(graft_f32_to_bf16(FLT_MAX), 0x7f80);    /* rounds past the largest */
    assert_int_equal(graft_f32_to_bf16(-FLT_MAX), 0xff80);
    assert_int_equal(graft_f32_to_bf16(from_bits(0x7f7f7fffu)), 0x7f7f);
    assert_int_equal(graft_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(graft_f32_to_bf16(from_bits(0x7f800001u)), 0x7fc0); /* sNaN: not inf */
    assert_int_equal(graft_f32_to_bf16(from_bits(0xff810000u)), 0xffc1);
}

static void bfloat16_narrowing_matches_the_reference_over_a_sweep(void **state) {
    (void)state;
    const uint32_t stride = 997;
    uint32_t u = 0;
    for (uint64_t i = 0; i < (1ull << 32) / stride; i++, u += stride) {
        float f = from_bits(u);
        if (isnan(f)) continue;
        uint16_t got = graft_f32_to_bf16(f), want = ref_f32_to_bf16(f);
        if (got != want)
            fail_msg("float 0x%08x (%a): got 0x%04x, want 0x%04x", u, (double)f, got, want);
    }
}

static void doubles_narrow_to_nearest_even(void **state) {
    (void)state;
    assert_int_equal(bits(graft_f64_to_f32(0.1)), 0x3dcccccdu);
    assert_true(graft_f64_to_f32(1.0 + 0x1p-24) == 1.0f);                 /* tie, down */
    assert_true(graft_f64_to_f32(1.0 + 0x3p-24) == 1.0f + 0x1p-22f);      /* tie, up */
    assert_true(graft_f64_to_f32(0x1.0000010000001p0) == 1.0f + 0x1p-23f);
    assert_true(graft_f64_to_f32(0x1.fffffefffffffp127) == FLT_MAX);
    assert_true(graft_f64_to_f32(0x1.ffffffp127) == INFINITY);            /* tie past FLT_MAX */
    assert_true(graft_f64_to_f32(-DBL_MAX) == -INFINITY);
    assert_true(graft_f64_to_f32(INFINITY) == INFINITY);
    assert_true(graft_f64_to_f32(0x1p-150) == 0.0f);                      /* tie to 0 */
    assert_true(graft_f64_to_f32(0x1.0000000000001p-150) == 0x1p-149f);
    assert_true(graft_f64_to_f32(0x3p-150) == 0x1p-148f);                 /* tie up to even */
    assert_int_equal(bits(graft_f64_to_f32(-1e-300)), 0x80000000u);
    assert_true(isnan(graft_f64_to_f32(NAN)));
    assert_true(signbit(graft_f64_to_f32(-NAN)));
}

/* ---- the little-endian array functions ------------------------------------------ */

static void arrays_read_little_endian_bytes_at_any_alignment(void **state) {
    (void)state;
    unsigned char buf[1 + 3 * 8];
    float out[3];
    /* One byte in, so nothing is aligned. */
    const unsigned char f16[] = {0x00, 0x3c, 0x01, 0x00, 0x00, 0xfc};
    memcpy(buf + 1, f16, sizeof f16);
    graft_f16le_to_f32(buf + 1, out, 3);
    assert_true(out[0] == 1.0f && out[1] == 0x1p-24f && out[2] == -INFINITY);

    const unsigned char bf16[] = {0x80, 0x3f, 0x49, 0x40, 0xc0, 0x7f};
    memcpy(buf + 1, bf16, sizeof bf16);
    graft_bf16le_to_f32(buf + 1, out, 3);
    assert_true(out[0] == 1.0f && out[1] == 3.140625f && isnan(out[2]));

    double d[3] = {0.1, -2.0, 1e300};
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 8; k++) buf[1 + 8 * i + k] = (unsigned char)(dbits(d[i]) >> (8 * k));
    graft_f64le_to_f32(buf + 1, out, 3);
    assert_true(out[0] == 0.1f && out[1] == -2.0f && out[2] == INFINITY);

    const unsigned char f32[] = {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc1};
    memcpy(buf + 1, f32, sizeof f32);
    graft_f32le_to_f32(buf + 1, out, 2);
    assert_true(out[0] == 1.0f && out[1] == -10.0f);
}

static void arrays_write_little_endian_bytes(void **state) {
    (void)state;
    const float in[3] = {1.0f, -2.0f, 1e6f};
    unsigned char b[1 + 6];
    graft_f32_to_f16le(in, b + 1, 3);
    const unsigned char want16[] = {0x00, 0x3c, 0x00, 0xc0, 0x00, 0x7c};
    assert_memory_equal(b + 1, want16, 6);
    graft_f32_to_bf16le(in, b + 1, 3);
    const unsigned char want_bf[] = {0x80, 0x3f, 0x00, 0xc0, 0x74, 0x49}; /* 1e6 -> 0x4974 */
    assert_memory_equal(b + 1, want_bf, 6);
    graft_f32_to_f16le(in, b, 0); /* nothing */
}

static void integers_widen_to_int64_by_value(void **state) {
    (void)state;
    int64_t out[4];
    const unsigned char i8[] = {0xff, 0x7f, 0x80, 0x00};
    assert_int_equal(graft_intle_to_i64(i8, 1, true, out, 4), 4);
    assert_true(out[0] == -1 && out[1] == 127 && out[2] == -128 && out[3] == 0);
    assert_int_equal(graft_intle_to_i64(i8, 1, false, out, 4), 4);
    assert_true(out[0] == 255 && out[1] == 127 && out[2] == 128 && out[3] == 0);

    const unsigned char i16[] = {0x00, 0x80, 0xff, 0x7f};
    assert_int_equal(graft_intle_to_i64(i16, 2, true, out, 2), 2);
    assert_true(out[0] == -32768 && out[1] == 32767);
    assert_int_equal(graft_intle_to_i64(i16, 2, false, out, 2), 2);
    assert_true(out[0] == 32768 && out[1] == 32767);

    const unsigned char i32[] = {0x00, 0x00, 0x00, 0x80, 0xfe, 0xff, 0xff, 0xff};
    assert_int_equal(graft_intle_to_i64(i32, 4, true, out, 2), 2);
    assert_true(out[0] == INT32_MIN && out[1] == -2);
    assert_int_equal(graft_intle_to_i64(i32, 4, false, out, 2), 2);
    assert_true(out[0] == 2147483648LL && out[1] == 4294967294LL);

    unsigned char i64[3 * 8];
    const uint64_t v[3] = {0x8000000000000000ull, 0x7fffffffffffffffull, 0xffffffffffffffffull};
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 8; k++) i64[8 * i + k] = (unsigned char)(v[i] >> (8 * k));
    assert_int_equal(graft_intle_to_i64(i64, 8, true, out, 3), 3);
    assert_true(out[0] == INT64_MIN && out[1] == INT64_MAX && out[2] == -1);
    /* Unsigned: the first element above INT64_MAX is reported by index. */
    assert_int_equal(graft_intle_to_i64(i64 + 8, 8, false, out, 2), 1);
    assert_true(out[0] == INT64_MAX);
    assert_int_equal(graft_intle_to_i64(i64, 8, false, out, 3), 0);

    const unsigned char b[] = {0, 1, 2, 0xff};
    graft_bool_to_i64(b, out, 4);
    assert_true(out[0] == 0 && out[1] == 1 && out[2] == 1 && out[3] == 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_half_widens_exactly),
        cmocka_unit_test(every_bfloat16_widens_exactly),
        cmocka_unit_test(half_widening_known_values),
        cmocka_unit_test(every_half_survives_a_round_trip),
        cmocka_unit_test(every_half_midpoint_rounds_to_even),
        cmocka_unit_test(half_narrowing_known_values),
        cmocka_unit_test(half_narrowing_matches_the_reference_over_a_sweep),
        cmocka_unit_test(every_bfloat16_survives_a_round_trip),
        cmocka_unit_test(every_bfloat16_midpoint_rounds_to_even),
        cmocka_unit_test(bfloat16_narrowing_known_values),
        cmocka_unit_test(bfloat16_narrowing_matches_the_reference_over_a_sweep),
        cmocka_unit_test(doubles_narrow_to_nearest_even),
        cmocka_unit_test(arrays_read_little_endian_bytes_at_any_alignment),
        cmocka_unit_test(arrays_write_little_endian_bytes),
        cmocka_unit_test(integers_widen_to_int64_by_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
