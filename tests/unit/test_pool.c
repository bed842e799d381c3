/* test_pool.c — MaxPool2d (geometry, ties, NaN, padding, gradients) and
 * AdaptiveAvgPool2d (bins smaller, equal and larger than the input). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>

#include "testutil.h"

#include "core/rng.h"
#include "core/threads.h"
#include "ops/ops.h"

static graft_pool2d_geom geom(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t s,
                              int64_t p, bool ceil_mode) {
    graft_pool2d_geom g = {.n = n, .c = c, .h = h, .w = w, .kh = k, .kw = k, .sh = s, .sw = s,
                           .ph = p, .pw = p, .ceil_mode = ceil_mode};
    return g;
}

/* Distinct values in random order, so no window has a tie. */
static void fill_distinct(graft_rng *r, double *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = (double)i / (double)n - 0.5;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(graft_rng_uniform(r) * (double)(i + 1));
        double t = x[i];
        x[i] = x[j];
        x[j] = t;
    }
}

/* ---- MaxPool2d geometry --------------------------------------------------- */

static void maxpool_floor_mode_output_size(void **state) {
    (void)state;
    graft_pool2d_geom g = geom(1, 1, 7, 32, 2, 2, 0, false);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
    assert_int_equal(g.oh, 3); /* floor(5 / 2) + 1 */
    assert_int_equal(g.ow, 16);
}

static void maxpool_ceil_mode_keeps_a_partial_last_window(void **state) {
    (void)state;
    /* h = 5, k = 2, s = 2: floor gives 2 windows; ceil gives ceil(3 / 2) + 1 = 3, and the
     * third starts at 4 < h + p = 5, so it stays (it covers only row 4). */
    graft_pool2d_geom g = geom(1, 1, 5, 5, 2, 2, 0, true);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
    assert_int_equal(g.oh, 3);
    g = geom(1, 1, 5, 5, 2, 2, 0, false);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
    assert_int_equal(g.oh, 2);
}

static void maxpool_ceil_mode_drops_a_window_starting_in_right_padding(void **state) {
    (void)state;
    /* h = 5, k = 2, s = 3, p = 1: ceil((5 + 2 - 2) / 3) + 1 = 3, but the third window
     * would start at 2 * 3 - 1 = 5, past the input (2 * 3 >= h + p = 6), so out = 2. */
    graft_pool2d_geom g = geom(1, 1, 5, 5, 2, 3, 1, true);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
    assert_int_equal(g.oh, 2);
    assert_int_equal(g.ow, 2);
    /* rows/cols covered: window 0 -> [-1, 1) = {0}, window 1 -> [2, 4) = {2, 3} */
    float x[25], y[4];
    int32_t am[4];
    for (int i = 0; i < 25; i++) x[i] = (float)i;
    graft_maxpool2d_forward(&g, x, y, am);
    assert_true(y[0] == 0.0f && y[1] == 3.0f && y[2] == 15.0f && y[3] == 18.0f);
    assert_int_equal(am[3], 18);
}

static void maxpool_resnet_stem_geometry(void **state) {
    (void)state;
    graft_pool2d_geom g = geom(2, 64, 112, 7, 3, 2, 1, false);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
    assert_int_equal(g.oh, 56); /* floor((112 + 2 - 3) / 2) + 1 */
    assert_int_equal(g.ow, 4);  /* floor((7 + 2 - 3) / 2) + 1 */
}

static void maxpool_rejects_padding_over_half_the_kernel(void **state) {
    (void)state;
    graft_pool2d_geom g = geom(1, 1, 8, 8, 3, 1, 2, false);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_ERR_INVALID);
    assert_non_null(strstr(graft_errmsg(), "pad"));
    assert_non_null(strstr(graft_errmsg(), "(2, 2)"));
    g = geom(1, 1, 8, 8, 2, 2, 1, false); /* 1 <= 2 / 2 is fine */
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
}

static void maxpool_rejects_nonpositive_kernel_or_stride(void **state) {
    (void)state;
    graft_pool2d_geom g = geom(1, 1, 8, 8, 0, 1, 0, false);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_ERR_INVALID);
    assert_non_null(strstr(graft_errmsg(), "kernel"));
    g = geom(1, 1, 8, 8, 2, 0, 0, false);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_ERR_INVALID);
    assert_non_null(strstr(graft_errmsg(), "stride"));
}

static void maxpool_rejects_an_empty_output(void **state) {
    (void)state;
    graft_pool2d_geom g = geom(1, 1, 1, 1, 2, 2, 0, false); /* floor(-1 / 2) + 1 = 0 */
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(), "(0 x 0)"));
}

/* ---- MaxPool2d values ----------------------------------------------------- */

static void maxpool_forward_takes_each_window_maximum(void **state) {
    (void)state;
    graft_pool2d_geom g = geom(1, 1, 4, 4, 2, 2, 0, false);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
    const float x[16] = {1, 5, 2, 0,  //
                         3, 4, 8, 1,  //
                         0, 0, -1, -2, //
                         9, 0, -3, -4};
    float y[4];
    int32_t am[4];
    graft_maxpool2d_forward(&g, x, y, am);
    assert_true(y[0] == 5 && y[1] == 8 && y[2] == 9 && y[3] == -1);
    assert_int_equal(am[0], 1);
    assert_int_equal(am[1], 6);
    assert_int_equal(am[2], 12);
    assert_int_equal(am[3], 10);
}

static void maxpool_padding_acts_as_minus_infinity(void **state) {
    (void)state;
    graft_pool2d_geom g = geom(1, 1, 3, 3, 3, 2, 1, false);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
    assert_int_equal(g.oh, 2);
    float x[9];
    for (int i = 0; i < 9; i++) x[i] = -10.0f - (float)i; /* all negative: zero padding would win */
    float y[4];
    int32_t am[4];
    graft_maxpool2d_forward(&g, x, y, am);
    /* windows [-1, 2) and [1, 4) per axis, clipped to [0, 2) and [1, 3) */
    assert_true(y[0] == -10.0f && y[1] == -11.0f && y[2] == -13.0f && y[3] == -14.0f);
    assert_int_equal(am[3], 4);
}

static void maxpool_ties_go_to_the_first_element(void **state) {
    (void)state;
    graft_pool2d_geom g = geom(1, 1, 4, 4, 3, 1, 1, false);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
    float x[16];
    for (int i = 0; i < 16; i++) x[i] = 2.0f;
    float y[16];
    int32_t am[16];
    graft_maxpool2d_forward(&g, x, y, am);
    for (int64_t i = 0; i < 4; i++)
        for (int64_t j = 0; j < 4; j++) {
            int64_t h0 = i > 0 ? i - 1 : 0, w0 = j > 0 ? j - 1 : 0;
            assert_int_equal(am[i * 4 + j], h0 * 4 + w0);
        }
    /* and an all -inf window still names a real element (the first) */
    float xi[16];
    for (int i = 0; i < 16; i++) xi[i] = -INFINITY;
    graft_maxpool2d_forward(&g, xi, y, am);
    assert_true(isinf(y[5]) && y[5] < 0);
    assert_int_equal(am[5], 0);
}

static void maxpool_nan_propagates(void **state) {
    (void)state;
    graft_pool2d_geom g = geom(1, 1, 2, 4, 2, 2, 0, false);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
    const float x[8] = {1, NAN, 7, 3,  //
                        9, 0, 2, 1};
    float y[2];
    int32_t am[2];
    graft_maxpool2d_forward(&g, x, y, am);
    assert_true(isnan(y[0]));
    assert_int_equal(am[0], 1);
    assert_true(y[1] == 7.0f);
    const double xd[8] = {1, NAN, 7, 3, 9, 0, 2, 1};
    double yd[2];
    graft_ref_maxpool2d_forward(&g, xd, yd);
    assert_true(isnan(yd[0]));
}

static void maxpool_backward_sums_over_overlapping_windows(void **state) {
    (void)state;
    graft_pool2d_geom g = geom(1, 1, 3, 3, 2, 1, 0, false);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
    const float x[9] = {0, 0, 0, 0, 5, 0, 0, 0, 0}; /* the centre is every window's max */
    float y[4], dx[9], dy[4] = {1, 2, 3, 4};
    int32_t am[4];
    graft_maxpool2d_forward(&g, x, y, am);
    for (int i = 0; i < 9; i++) dx[i] = 99.0f; /* overwritten, not accumulated */
    graft_maxpool2d_backward(&g, am, dy, dx);
    for (int i = 0; i < 9; i++) assert_true(dx[i] == (i == 4 ? 10.0f : 0.0f));
}

typedef struct maxpool_loss_ctx {
    const graft_pool2d_geom *g;
    double *x, *y;
    const double *dy;
} maxpool_loss_ctx;

static double maxpool_loss(void *p) {
    maxpool_loss_ctx *c = p;
    graft_ref_maxpool2d_forward(c->g, c->x, c->y);
    return tu_dot(c->y, c->dy, c->g->n * c->g->c * c->g->oh * c->g->ow);
}

static void ref_maxpool_backward_matches_finite_differences(void **state) {
    (void)state;
    graft_pool2d_geom g = geom(2, 2, 7, 6, 3, 2, 1, true);
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
    int64_t nx = g.n * g.c * g.h * g.w, ny = g.n * g.c * g.oh * g.ow;
    graft_rng r;
    graft_rng_seed(&r, 3);
    double *x = malloc((size_t)nx * sizeof *x), *dx = malloc((size_t)nx * sizeof *dx);
    double *y = malloc((size_t)ny * sizeof *y), *dy = malloc((size_t)ny * sizeof *dy);
    fill_distinct(&r, x, nx); /* gaps of 1 / nx, far above the step */
    tu_fill(&r, dy, ny, -1, 1);
    graft_ref_maxpool2d_backward(&g, x, dy, dx);
    maxpool_loss_ctx c = {&g, x, y, dy};
    assert_true(tu_gradcheck(x, nx, dx, maxpool_loss, &c, 1e-6) < 1e-8);
    free(x), free(dx), free(y), free(dy);
}

/* Fast (float, argmax) against reference (double, recomputed argmax). */
static void check_maxpool_fast_against_reference(graft_pool2d_geom g, uint64_t seed) {
    assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
    int64_t nx = g.n * g.c * g.h * g.w, ny = g.n * g.c * g.oh * g.ow;
    graft_rng r;
    graft_rng_seed(&r, seed);
    double *x = malloc((size_t)nx * sizeof *x), *dx = malloc((size_t)nx * sizeof *dx);
    double *y = malloc((size_t)ny * sizeof *y), *dy = malloc((size_t)ny * sizeof *dy);
    fill_distinct(&r, x, nx);
    tu_fill(&r, dy, ny, -1, 1);
    tu_round_to_float(x, nx);
    tu_round_to_float(dy, ny);
    float *xf = tu_to_float(x, nx), *dyf = tu_to_float(dy, ny);
    float *yf = malloc((size_t)ny * sizeof *yf), *dxf = malloc((size_t)nx * sizeof *dxf);
    int32_t *am = malloc((size_t)ny * sizeof *am);
    graft_ref_maxpool2d_forward(&g, x, y);
    graft_ref_maxpool2d_backward(&g, x, dy, dx);
    graft_maxpool2d_forward(&g, xf, yf, am);
    graft_maxpool2d_backward(&g, am, dyf, dxf);
    double ey = tu_rel_err_fd(yf, y, ny, 1e-12), edx = tu_rel_err_fd(dxf, dx, nx, 1e-12);
    print_message("maxpool rel err: y %.3g, dx %.3g\n", ey, edx);
    assert_true(ey <= 1e-5);
    assert_true(edx <= 1e-5);
    free(x), free(dx), free(y), free(dy), free(xf), free(dyf), free(yf), free(dxf), free(am);
}

static void maxpool_fast_matches_reference_resnet_stem(void **state) {
    (void)state;
    check_maxpool_fast_against_reference(geom(3, 5, 17, 18, 3, 2, 1, false), 4);
}

static void maxpool_fast_matches_reference_vgg_2x2(void **state) {
    (void)state;
    check_maxpool_fast_against_reference(geom(4, 8, 16, 16, 2, 2, 0, false), 5);
    /* odd sizes: the last row and column fall outside every window (floor mode), or
     * form partial windows (ceil mode, the general path) */
    check_maxpool_fast_against_reference(geom(2, 3, 7, 9, 2, 2, 0, false), 8);
    check_maxpool_fast_against_reference(geom(2, 3, 7, 9, 2, 2, 0, true), 9);
}

static void maxpool_fast_matches_reference_ceil_mode(void **state) {
    (void)state;
    check_maxpool_fast_against_reference(geom(2, 3, 11, 9, 3, 2, 0, true), 6);
    check_maxpool_fast_against_reference(geom(2, 3, 5, 5, 2, 3, 1, true), 7);
}

/* ---- AdaptiveAvgPool2d ---------------------------------------------------- */

static void adaptive_avgpool_replicates_1x1_to_7x7(void **state) {
    (void)state;
    const float x[2] = {3.0f, -1.5f}; /* n = 1, c = 2, 1x1 */
    float y[2 * 49];
    graft_adaptive_avgpool2d_forward(1, 2, 1, 1, 7, 7, x, y);
    for (int i = 0; i < 49; i++) assert_true(y[i] == 3.0f && y[49 + i] == -1.5f);
    float dy[2 * 49], dx[2];
    for (int i = 0; i < 98; i++) dy[i] = 1.0f;
    graft_adaptive_avgpool2d_backward(1, 2, 1, 1, 7, 7, dy, dx);
    assert_true(dx[0] == 49.0f && dx[1] == 49.0f);
}

static void adaptive_avgpool_2x2_to_7x7_uses_overlapping_bins(void **state) {
    (void)state;
    /* bins per axis for in 2, out 7: [0,1) x3, then [0,2) (i = 3: floor(6/7) = 0,
     * ceil(8/7) = 2), then [1,2) x3. */
    const float x[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    float y[49];
    graft_adaptive_avgpool2d_forward(1, 1, 2, 2, 7, 7, x, y);
    const float row_top[7] = {1, 1, 1, 1.5f, 2, 2, 2};
    const float row_mid[7] = {2, 2, 2, 2.5f, 3, 3, 3};
    const float row_bot[7] = {3, 3, 3, 3.5f, 4, 4, 4};
    for (int i = 0; i < 7; i++) {
        const float *want = i < 3 ? row_top : i == 3 ? row_mid : row_bot;
        for (int j = 0; j < 7; j++) assert_float_equal(y[i * 7 + j], want[j], 1e-6);
    }
}

static void adaptive_avgpool_5_to_3_uses_uneven_bins(void **state) {
    (void)state;
    /* bins [0,2), [1,4), [3,5): sizes 2, 3, 2, overlapping at 1 and 3 */
    const float x[5] = {1, 2, 3, 4, 5}; /* h = 5, w = 1 */
    float y[3];
    graft_adaptive_avgpool2d_forward(1, 1, 5, 1, 3, 1, x, y);
    assert_float_equal(y[0], 1.5, 1e-6);
    assert_float_equal(y[1], 3.0, 1e-6);
    assert_float_equal(y[2], 4.5, 1e-6);
}

static void adaptive_avgpool_backward_spreads_gradient_over_each_bin(void **state) {
    (void)state;
    const float dy[3] = {1, 1, 1};
    float dx[5] = {9, 9, 9, 9, 9}; /* overwritten */
    graft_adaptive_avgpool2d_backward(1, 1, 5, 1, 3, 1, dy, dx);
    const double want[5] = {0.5, 0.5 + 1.0 / 3, 1.0 / 3, 1.0 / 3 + 0.5, 0.5};
    for (int i = 0; i < 5; i++) assert_float_equal(dx[i], want[i], 1e-6);
}

static void adaptive_avgpool_same_size_is_identity(void **state) {
    (void)state;
    float x[2 * 3 * 5 * 4], y[2 * 3 * 5 * 4], dx[2 * 3 * 5 * 4];
    for (int i = 0; i < 120; i++) x[i] = (float)i * 0.37f - 9.0f;
    graft_adaptive_avgpool2d_forward(2, 3, 5, 4, 5, 4, x, y);
    graft_adaptive_avgpool2d_backward(2, 3, 5, 4, 5, 4, x, dx);
    for (int i = 0; i < 120; i++) assert_true(y[i] == x[i] && dx[i] == x[i]);
}

typedef struct avg_loss_ctx {
    int64_t n, c, h, w, oh, ow;
    double *x, *y;
    const double *dy;
} avg_loss_ctx;

static double avg_loss(void *p) {
    avg_loss_ctx *a = p;
    graft_ref_adaptive_avgpool2d_forward(a->n, a->c, a->h, a->w, a->oh, a->ow, a->x, a->y);
    return tu_dot(a->y, a->dy, a->n * a->c * a->oh * a->ow);
}

static void ref_adaptive_avgpool_backward_matches_finite_differences(void **state) {
    (void)state;
    const int64_t shapes[3][4] = {{5, 4, 3, 3}, {2, 3, 7, 7}, {6, 6, 6, 6}}; /* h, w, oh, ow */
    for (int s = 0; s < 3; s++) {
        avg_loss_ctx a = {2, 2, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], 0, 0, 0};
        int64_t nx = a.n * a.c * a.h * a.w, ny = a.n * a.c * a.oh * a.ow;
        graft_rng r;
        graft_rng_seed(&r, 10 + (uint64_t)s);
        double *x = malloc((size_t)nx * sizeof *x), *dx = malloc((size_t)nx * sizeof *dx);
        double *y = malloc((size_t)ny * sizeof *y), *dy = malloc((size_t)ny * sizeof *dy);
        tu_fill(&r, x, nx, -1, 1);
        tu_fill(&r, dy, ny, -1, 1);
        graft_ref_adaptive_avgpool2d_backward(a.n, a.c, a.h, a.w, a.oh, a.ow, dy, dx);
        a.x = x, a.y = y, a.dy = dy;
        assert_true(tu_gradcheck(x, nx, dx, avg_loss, &a, 1e-6) < 1e-8);
        free(x), free(dx), free(y), free(dy);
    }
}

static void adaptive_avgpool_fast_matches_reference(void **state) {
    (void)state;
    /* single-input bins (1x1 replicated, the identity), overlapping, uneven and larger
     * bins, and an output too wide for the planned bins (ow > 256) */
    const int64_t shapes[][4] = {{1, 1, 7, 7}, {7, 7, 7, 7},    {2, 2, 7, 7},
                                 {13, 11, 7, 7}, {14, 14, 7, 7}, {5, 600, 2, 257}};
    for (int s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++) {
        int64_t n = 3, c = 6, h = shapes[s][0], w = shapes[s][1], oh = shapes[s][2],
                ow = shapes[s][3];
        int64_t nx = n * c * h * w, ny = n * c * oh * ow;
        graft_rng r;
        graft_rng_seed(&r, 20 + (uint64_t)s);
        double *x = malloc((size_t)nx * sizeof *x), *dx = malloc((size_t)nx * sizeof *dx);
        double *y = malloc((size_t)ny * sizeof *y), *dy = malloc((size_t)ny * sizeof *dy);
        tu_fill(&r, x, nx, -1, 1);
        tu_fill(&r, dy, ny, -1, 1);
        tu_round_to_float(x, nx);
        tu_round_to_float(dy, ny);
        float *xf = tu_to_float(x, nx), *dyf = tu_to_float(dy, ny);
        float *yf = malloc((size_t)ny * sizeof *yf), *dxf = malloc((size_t)nx * sizeof *dxf);
        graft_ref_adaptive_avgpool2d_forward(n, c, h, w, oh, ow, x, y);
        graft_ref_adaptive_avgpool2d_backward(n, c, h, w, oh, ow, dy, dx);
        graft_adaptive_avgpool2d_forward(n, c, h, w, oh, ow, xf, yf);
        graft_adaptive_avgpool2d_backward(n, c, h, w, oh, ow, dyf, dxf);
        double ey = tu_rel_err_fd(yf, y, ny, 1e-12), edx = tu_rel_err_fd(dxf, dx, nx, 1e-12);
        print_message("adaptive avgpool %lldx%lld -> %lldx%lld rel err: y %.3g, dx %.3g\n",
                      (long long)h, (long long)w, (long long)oh, (long long)ow, ey, edx);
        assert_true(ey <= 1e-5);
        assert_true(edx <= 1e-5);
        free(x), free(dx), free(y), free(dy), free(xf), free(dyf), free(yf), free(dxf);
    }
}

/* MaxPool2d(2, 2)'s AVX-512 loop against its scalar one: the same maxima and indices,
 * bit for bit, on widths that fill 16 windows, leave a partial vector or fit in one, odd
 * heights and widths (the last row or column unused), values with ties (zeros of both
 * signs) and NaNs. */
static void maxpool_2x2_vector_loop_matches_the_scalar_one(void **state) {
    (void)state;
    static const int64_t sizes[][2] = {{32, 32}, {16, 16}, {8, 8}, {4, 4}, {2, 2}, {5, 70}, {7, 33}, {3, 3}, {2, 48}};
    for (size_t t = 0; t < sizeof sizes / sizeof *sizes; t++) {
        graft_pool2d_geom g = {.n = 2, .c = 3, .h = sizes[t][0], .w = sizes[t][1], .kh = 2, .kw = 2, .sh = 2,
                               .sw = 2};
        assert_int_equal(graft_maxpool2d_geom_init(&g), GRAFT_OK);
        int64_t nx = g.n * g.c * g.h * g.w, ny = g.n * g.c * g.oh * g.ow;
        float *x = malloc((size_t)nx * sizeof *x), *y[2];
        int32_t *at[2];
        graft_rng r;
        graft_rng_seed(&r, 70 + t);
        for (int64_t i = 0; i < nx; i++) {
            uint64_t u = graft_rng_u64(&r) % 16;
            x[i] = u < 5 ? 0.0f : u == 5 ? -0.0f : u == 6 ? NAN : u == 7 ? 1.0f : (float)graft_rng_uniform(&r) - 0.5f;
        }
        for (int k = 0; k < 2; k++) {
            y[k] = malloc((size_t)ny * sizeof *y[k]);
            at[k] = malloc((size_t)ny * sizeof *at[k]);
            graft_maxpool2d_set_avx512(k == 1);
            graft_maxpool2d_forward(&g, x, y[k], at[k]);
        }
        graft_maxpool2d_set_avx512(true);
        assert_memory_equal(y[0], y[1], (size_t)ny * sizeof(float));
        assert_memory_equal(at[0], at[1], (size_t)ny * sizeof(int32_t));
        free(x);
        for (int k = 0; k < 2; k++) free(y[k]), free(at[k]);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(maxpool_floor_mode_output_size),
        cmocka_unit_test(maxpool_ceil_mode_keeps_a_partial_last_window),
        cmocka_unit_test(maxpool_ceil_mode_drops_a_window_starting_in_right_padding),
        cmocka_unit_test(maxpool_resnet_stem_geometry),
        cmocka_unit_test(maxpool_rejects_padding_over_half_the_kernel),
        cmocka_unit_test(maxpool_rejects_nonpositive_kernel_or_stride),
        cmocka_unit_test(maxpool_rejects_an_empty_output),
        cmocka_unit_test(maxpool_forward_takes_each_window_maximum),
        cmocka_unit_test(maxpool_padding_acts_as_minus_infinity),
        cmocka_unit_test(maxpool_ties_go_to_the_first_element),
        cmocka_unit_test(maxpool_nan_propagates),
        cmocka_unit_test(maxpool_backward_sums_over_overlapping_windows),
        cmocka_unit_test(ref_maxpool_backward_matches_finite_differences),
        cmocka_unit_test(maxpool_fast_matches_reference_resnet_stem),
        cmocka_unit_test(maxpool_fast_matches_reference_vgg_2x2),
        cmocka_unit_test(maxpool_fast_matches_reference_ceil_mode),
        cmocka_unit_test(maxpool_2x2_vector_loop_matches_the_scalar_one),
        cmocka_unit_test(adaptive_avgpool_replicates_1x1_to_7x7),
        cmocka_unit_test(adaptive_avgpool_2x2_to_7x7_uses_overlapping_bins),
        cmocka_unit_test(adaptive_avgpool_5_to_3_uses_uneven_bins),
        cmocka_unit_test(adaptive_avgpool_backward_spreads_gradient_over_each_bin),
        cmocka_unit_test(adaptive_avgpool_same_size_is_identity),
        cmocka_unit_test(ref_adaptive_avgpool_backward_matches_finite_differences),
        cmocka_unit_test(adaptive_avgpool_fast_matches_reference),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    graft_threads_shutdown();
    return failed;
}
