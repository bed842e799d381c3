/* test_dropout.c — Dropout in train mode: the edge probabilities, the mask's
 * statistics and reproducibility, gradients, fast vs reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>

#include "testutil.h"

#include "core/threads.h"
#include "ops/ops.h"

static void dropout_p0_is_identity_with_mask_one(void **state) {
    (void)state;
    graft_rng r;
    graft_rng_seed(&r, 1);
    float x[100], y[100], mask[100];
    for (int i = 0; i < 100; i++) x[i] = (float)i - 50.5f;
    graft_dropout_forward(100, 0.0f, &r, x, y, mask);
    for (int i = 0; i < 100; i++) assert_true(y[i] == x[i] && mask[i] == 1.0f);
}

static void dropout_p1_zeroes_everything(void **state) {
    (void)state;
    graft_rng r;
    graft_rng_seed(&r, 1);
    float x[100], y[100], mask[100], dx[100];
    for (int i = 0; i < 100; i++) x[i] = (float)i + 1.0f;
    graft_dropout_forward(100, 1.0f, &r, x, y, mask);
    for (int i = 0; i < 100; i++) assert_true(y[i] == 0.0f && mask[i] == 0.0f);
    graft_dropout_backward(100, mask, x, dx);
    for (int i = 0; i < 100; i++) assert_true(dx[i] == 0.0f);
}

static void dropout_keeps_elements_scaled_by_one_over_keep_probability(void **state) {
    (void)state;
    graft_rng r;
    graft_rng_seed(&r, 2);
    enum { N = 1000 };
    float x[N], y[N], mask[N];
    for (int i = 0; i < N; i++) x[i] = 0.25f * (float)(i % 17) - 2.0f;
    graft_dropout_forward(N, 0.2f, &r, x, y, mask);
    const float scale = 1.0f / (1.0f - 0.2f);
    for (int i = 0; i < N; i++) {
        assert_true(mask[i] == 0.0f || mask[i] == scale);
        assert_true(y[i] == x[i] * mask[i]);
    }
}

static void dropout_mask_mean_is_about_one(void **state) {
    (void)state;
    const int64_t n = 400000;
    graft_rng r;
    graft_rng_seed(&r, 3);
    float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
    float *mask = malloc((size_t)n * sizeof *mask);
    for (int64_t i = 0; i < n; i++) x[i] = 1.0f;
    graft_dropout_forward(n, 0.5f, &r, x, y, mask);
    double sum = 0.0, dropped = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum += mask[i];
        dropped += mask[i] == 0.0f;
    }
    /* mask is 0 or 2 with equal odds: the mean has standard deviation 1 / sqrt(n) ~ 0.0016 */
    assert_true(fabs(sum / (double)n - 1.0) < 0.01);
    assert_true(fabs(dropped / (double)n - 0.5) < 0.005);
    free(x), free(y), free(mask);
}

static void dropout_same_seed_gives_same_mask(void **state) {
    (void)state;
    enum { N = 4096 };
    static float x[N], y[N], m1[N], m2[N], m3[N];
    for (int i = 0; i < N; i++) x[i] = 1.0f;
    graft_rng r;
    graft_rng_seed(&r, 42);
    graft_dropout_forward(N, 0.5f, &r, x, y, m1);
    graft_rng_seed(&r, 42);
    graft_dropout_forward(N, 0.5f, &r, x, y, m2);
    graft_rng_seed(&r, 43);
    graft_dropout_forward(N, 0.5f, &r, x, y, m3);
    assert_memory_equal(m1, m2, sizeof m1);
    assert_memory_not_equal(m1, m3, sizeof m1);
}

static void dropout_backward_multiplies_by_the_mask(void **state) {
    (void)state;
    const float mask[4] = {0.0f, 2.0f, 2.0f, 0.0f};
    float g[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    graft_dropout_backward(4, mask, g, g); /* in place */
    assert_true(g[0] == 0.0f && g[1] == 4.0f && g[2] == 6.0f && g[3] == 0.0f);
}

typedef struct dropout_loss_ctx {
    int64_t n;
    const double *mask, *g;
    double *x, *y;
} dropout_loss_ctx;

static double dropout_loss(void *p) {
    dropout_loss_ctx *c = p;
    graft_ref_dropout_forward(c->n, c->mask, c->x, c->y);
    return tu_dot(c->y, c->g, c->n);
}

static void ref_dropout_backward_matches_finite_differences(void **state) {
    (void)state;
    enum { N = 50 };
    graft_rng r;
    graft_rng_seed(&r, 4);
    double x[N], y[N], g[N], mask[N], dx[N];
    tu_fill(&r, x, N, -1, 1);
    tu_fill(&r, g, N, -1, 1);
    for (int i = 0; i < N; i++) mask[i] = graft_rng_uniform(&r) < 0.3 ? 0.0 : 1.0 / 0.7;
    graft_ref_dropout_backward(N, mask, g, dx);
    dropout_loss_ctx c = {N, mask, g, x, y};
    assert_true(tu_gradcheck(x, N, dx, dropout_loss, &c, 1e-6) < 1e-8);
}

static void dropout_fast_matches_reference_with_the_same_mask(void **state) {
    (void)state;
    const int64_t n = 100001;
    graft_rng r;
    graft_rng_seed(&r, 5);
    double *x = malloc((size_t)n * sizeof *x), *g = malloc((size_t)n * sizeof *g);
    double *y = malloc((size_t)n * sizeof *y), *dx = malloc((size_t)n * sizeof *dx);
    double *maskd = malloc((size_t)n * sizeof *maskd);
    tu_fill(&r, x, n, -1, 1);
    tu_fill(&r, g, n, -1, 1);
    tu_round_to_float(x, n);
    tu_round_to_float(g, n);
    float *xf = tu_to_float(x, n), *gf = tu_to_float(g, n);
    float *yf = malloc((size_t)n * sizeof *yf), *dxf = malloc((size_t)n * sizeof *dxf);
    float *mask = malloc((size_t)n * sizeof *mask);
    graft_dropout_forward(n, 0.3f, &r, xf, yf, mask);
    for (int64_t i = 0; i < n; i++) maskd[i] = mask[i];
    graft_dropout_backward(n, mask, gf, dxf);
    graft_ref_dropout_forward(n, maskd, x, y);
    graft_ref_dropout_backward(n, maskd, g, dx);
    double ey = tu_rel_err_fd(yf, y, n, 1e-12), edx = tu_rel_err_fd(dxf, dx, n, 1e-12);
    print_message("dropout rel err: y %.3g, dx %.3g\n", ey, edx);
    assert_true(ey <= 1e-5);
    assert_true(edx <= 1e-5);
    free(x), free(g), free(y), free(dx), free(maskd), free(xf), free(gf), free(yf), free(dxf),
        free(mask);
}

static uint64_t inverse_mod_2_64(uint64_t a) { /* a odd; Newton's iteration doubles the correct bits */
    uint64_t x = a;
    for (int i = 0; i < 6; i++) x *= 2 - a * x;
    return x;
}

/* The mask is drawn as integers: the same decisions, draw for draw, as comparing
 * graft_rng_uniform with p, and the generator left in the same state; at p whose
 * threshold p 2^53 is a whole number (0.5) or not, at the ends, and at draws placed on
 * either side of each threshold. */
static void mask_draws_match_the_uniform_comparison(void **state) {
    (void)state;
    static const double ps[] = {0.5, 0.1, 0.3, 0.75, 1e-9, 0.999999999, 0.0, 1.0};
    enum { N = 20000 };
    static float got[N];
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        graft_rng a, b;
        graft_rng_seed(&a, 11 + k);
        b = a;
        graft_rng_select(&a, N, ps[k], 0.0f, 2.0f, got);
        for (int i = 0; i < N; i++) {
            float want = graft_rng_uniform(&b) < ps[k] ? 0.0f : 2.0f;
            if (got[i] != want) fail_msg("p = %g, draw %d: %g, want %g", ps[k], i, got[i], want);
        }
        assert_memory_equal(a.s, b.s, sizeof a.s);
    }
    /* Draws placed on the threshold: xoshiro256**'s output is rotl(s1 * 5, 7) * 9, so a
     * state with the right s1 gives any 64-bit value next. */
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        double t = ldexp(ps[k], 53);
        uint64_t at[] = {(uint64_t)ceil(t), (uint64_t)floor(t), (uint64_t)ceil(t) - 1, (uint64_t)ceil(t) + 1};
        for (int j = 0; j < 4; j++) {
            if (at[j] >= (uint64_t)1 << 53) continue;
            uint64_t want_u64 = at[j] << 11 | 0x5a5, x = want_u64 * inverse_mod_2_64(9);
            graft_rng a = {{1, (x >> 7 | x << 57) * inverse_mod_2_64(5), 3, 4}}, b = a;
            float got1;
            graft_rng_select(&a, 1, ps[k], 0.0f, 2.0f, &got1);
            double u = graft_rng_uniform(&b);
            assert_true(u == (double)at[j] * 0x1.0p-53); /* the draw is where it was put */
            if (got1 != (u < ps[k] ? 0.0f : 2.0f)) fail_msg("p = %g, draw %.17g: %g", ps[k], u, got1);
        }
    }
}

/* A jump by k leaves the generator where k draws would, up to the limit; jumps add. */
static void rng_jumps_land_where_the_draws_do(void **state) {
    (void)state;
    static const uint64_t ks[] = {0, 1, 2, 63, 64, 65, 1000, 4095, 32768, 123457};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        graft_rng a, b;
        graft_rng_seed(&a, 40 + i);
        b = a;
        assert_true(graft_rng_jump(&a, ks[i]));
        for (uint64_t k = 0; k < ks[i]; k++) graft_rng_u64(&b);
        assert_memory_equal(a.s, b.s, sizeof a.s);
    }
    graft_rng a, b;
    graft_rng_seed(&a, 7);
    b = a;
    uint64_t big = ((uint64_t)1 << 39) + 12345;
    assert_true(graft_rng_jump(&a, big));
    assert_true(graft_rng_jump(&a, 1000));
    assert_true(graft_rng_jump(&b, 1000 + 12345));
    assert_true(graft_rng_jump(&b, (uint64_t)1 << 39));
    assert_memory_equal(a.s, b.s, sizeof a.s);
    b = a;
    assert_false(graft_rng_jump(&a, (uint64_t)1 << 40)); /* past the tables: untouched */
    assert_memory_equal(a.s, b.s, sizeof a.s);
}

/* Long masks are drawn by eight jumped copies of the generator side by side: the same
 * decisions as drawing in order, and the generator left in the same state, for lengths
 * around the eight lanes' and eight draws' boundaries. */
static void long_masks_match_drawing_in_order(void **state) {
    (void)state;
    static const int64_t ns[] = {4095, 4096, 4097, 4103, 4160, 8191, 65536 + 7, 262144};
    static const double ps[] = {0.5, 0.1};
    float *got = malloc(262144 * sizeof *got);
    assert_non_null(got);
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
            graft_rng a, b;
            graft_rng_seed(&a, 90 + i * 2 + k);
            b = a;
            graft_rng_select(&a, ns[i], ps[k], 0.0f, 2.0f, got);
            for (int64_t j = 0; j < ns[i]; j++) {
                float want = graft_rng_uniform(&b) < ps[k] ? 0.0f : 2.0f;
                if (got[j] != want) fail_msg("n = %lld, p = %g, draw %lld: %g", (long long)ns[i], ps[k], (long long)j, got[j]);
            }
            assert_memory_equal(a.s, b.s, sizeof a.s);
        }
    free(got);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dropout_p0_is_identity_with_mask_one),
        cmocka_unit_test(rng_jumps_land_where_the_draws_do),
        cmocka_unit_test(long_masks_match_drawing_in_order),
        cmocka_unit_test(dropout_p1_zeroes_everything),
        cmocka_unit_test(dropout_keeps_elements_scaled_by_one_over_keep_probability),
        cmocka_unit_test(dropout_mask_mean_is_about_one),
        cmocka_unit_test(dropout_same_seed_gives_same_mask),
        cmocka_unit_test(dropout_backward_multiplies_by_the_mask),
        cmocka_unit_test(ref_dropout_backward_matches_finite_differences),
        cmocka_unit_test(dropout_fast_matches_reference_with_the_same_mask),
        cmocka_unit_test(mask_draws_match_the_uniform_comparison),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    graft_threads_shutdown();
    return failed;
}
