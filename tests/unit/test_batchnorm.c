/* test_batchnorm.c — BatchNorm2d: batch statistics and the running-stat update against
 * numbers worked by hand, eval mode, gradients, fast vs reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "testutil.h"

#include "core/threads.h"
#include "ops/ops.h"

#define EPS 1e-5     /* torch.nn.BatchNorm2d defaults */
#define MOMENTUM 0.1

/* x [2, 2, 2]: channel 0 holds 1, 2 (image 0) and 3, 4 (image 1); channel 1 holds
 * 10, 10, 10, 14.
 *   channel 0: mean 2.5, biased var 1.25, unbiased var 5/3
 *   channel 1: mean 11,  biased var (1 + 1 + 1 + 9) / 4 = 3, unbiased var 4 */
static const float hand_x[8] = {1, 2, 10, 10, 3, 4, 10, 14};

static void train_running_stats_update_with_momentum_and_unbiased_variance(void **state) {
    (void)state;
    const float gamma[2] = {1, 1}, beta[2] = {0, 0};
    float rm[2] = {0.0f, 1.0f}, rv[2] = {1.0f, 2.0f};
    float y[8], save_mean[2], save_invstd[2];
    graft_batchnorm2d_forward_train(2, 2, 2, EPS, MOMENTUM, hand_x, gamma, beta, rm, rv, y,
                                    save_mean, save_invstd);
    /* rm = 0.9 * 0 + 0.1 * 2.5 = 0.25;  0.9 * 1 + 0.1 * 11 = 2.0
     * rv = 0.9 * 1 + 0.1 * 5/3 = 1.0666667;  0.9 * 2 + 0.1 * 4 = 2.2 */
    assert_float_equal(rm[0], 0.25, 1e-7);
    assert_float_equal(rm[1], 2.0, 1e-7);
    assert_float_equal(rv[0], 0.9 + 0.1 * 5.0 / 3.0, 1e-7);
    assert_float_equal(rv[1], 2.2, 1e-6);
    assert_float_equal(save_mean[0], 2.5, 1e-7);
    assert_float_equal(save_mean[1], 11.0, 1e-7);
    assert_float_equal(save_invstd[0], 1.0 / sqrt(1.25 + EPS), 1e-6);
    assert_float_equal(save_invstd[1], 1.0 / sqrt(3.0 + EPS), 1e-6);
}

static void train_forward_normalises_with_biased_batch_variance(void **state) {
    (void)state;
    const float gamma[2] = {2.0f, -1.0f}, beta[2] = {0.5f, 3.0f};
    float rm[2] = {0, 0}, rv[2] = {1, 1}, y[8], sm[2], si[2];
    graft_batchnorm2d_forward_train(2, 2, 2, EPS, MOMENTUM, hand_x, gamma, beta, rm, rv, y, sm,
                                    si);
    double i0 = 1.0 / sqrt(1.25 + EPS), i1 = 1.0 / sqrt(3.0 + EPS);
    const double want[8] = {-1.5 * i0 * 2 + 0.5, -0.5 * i0 * 2 + 0.5, 1 * i1 + 3, 1 * i1 + 3,
                            0.5 * i0 * 2 + 0.5,  1.5 * i0 * 2 + 0.5,  1 * i1 + 3, -3 * i1 + 3};
    for (int i = 0; i < 8; i++) assert_float_equal(y[i], want[i], 1e-5);
}

static void eval_forward_uses_running_statistics(void **state) {
    (void)state;
    const float gamma[2] = {2.0f, 1.0f}, beta[2] = {1.0f, 0.0f};
    const float rm[2] = {1.0f, 10.0f}, rv[2] = {4.0f, 0.25f};
    float y[8];
    graft_batchnorm2d_forward_eval(2, 2, 2, EPS, hand_x, gamma, beta, rm, rv, y);
    double i0 = 1.0 / sqrt(4.0 + EPS), i1 = 1.0 / sqrt(0.25 + EPS);
    const double want[8] = {1, 1 * i0 * 2 + 1, 0, 0, 2 * i0 * 2 + 1, 3 * i0 * 2 + 1, 0, 4 * i1};
    for (int i = 0; i < 8; i++) assert_float_equal(y[i], want[i], 1e-5);
}

static void eval_backward_scales_by_gamma_over_running_std(void **state) {
    (void)state;
    const float gamma[2] = {2.0f, 1.0f}, rm[2] = {1.0f, 10.0f}, rv[2] = {4.0f, 0.25f};
    const float dy[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    float dx[8], dgamma[2] = {0, 0}, dbeta[2] = {0, 0};
    graft_batchnorm2d_backward_eval(2, 2, 2, EPS, hand_x, gamma, rm, rv, dy, dx, dgamma, dbeta);
    double i0 = 1.0 / sqrt(4.0 + EPS), i1 = 1.0 / sqrt(0.25 + EPS);
    assert_float_equal(dx[0], 2 * i0, 1e-6);
    assert_float_equal(dx[2], i1, 1e-6);
    assert_float_equal(dgamma[0], (0 + 1 + 2 + 3) * i0, 1e-5); /* sum of xhat */
    assert_float_equal(dgamma[1], (0 + 0 + 0 + 4) * i1, 1e-5);
    assert_float_equal(dbeta[0], 4.0, 1e-6);
    assert_float_equal(dbeta[1], 4.0, 1e-6);
}

static void backward_accumulates_parameter_gradients(void **state) {
    (void)state;
    const float gamma[2] = {1, 1}, beta[2] = {0, 0};
    float rm[2] = {0, 0}, rv[2] = {1, 1}, y[8], sm[2], si[2], dx[8];
    graft_batchnorm2d_forward_train(2, 2, 2, EPS, MOMENTUM, hand_x, gamma, beta, rm, rv, y, sm,
                                    si);
    const float dy[8] = {1, -2, 0.5f, 1, 3, 0, -1, 2};
    float dg1[2] = {0, 0}, db1[2] = {0, 0}, dg2[2] = {10, 20}, db2[2] = {30, 40};
    graft_batchnorm2d_backward_train(2, 2, 2, hand_x, gamma, sm, si, dy, dx, dg1, db1);
    graft_batchnorm2d_backward_train(2, 2, 2, hand_x, gamma, sm, si, dy, dx, dg2, db2);
    assert_float_equal(dg2[0], 10 + dg1[0], 1e-5);
    assert_float_equal(dg2[1], 20 + dg1[1], 1e-5);
    assert_float_equal(db2[0], 30 + db1[0], 1e-5);
    assert_float_equal(db2[1], 40 + db1[1], 1e-5);
    assert_float_equal(db1[0], 1 - 2 + 3 + 0, 1e-6);
}

static void backward_skips_null_outputs(void **state) {
    (void)state;
    const float gamma[2] = {1, 1}, beta[2] = {0, 0};
    float rm[2] = {0, 0}, rv[2] = {1, 1}, y[8], sm[2], si[2];
    graft_batchnorm2d_forward_train(2, 2, 2, EPS, MOMENTUM, hand_x, gamma, beta, rm, rv, y, sm,
                                    si);
    const float dy[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    float dx[8], dg[2] = {0, 0};
    graft_batchnorm2d_backward_train(2, 2, 2, hand_x, gamma, sm, si, dy, NULL, dg, NULL);
    assert_true(dg[0] != 0.0f);
    graft_batchnorm2d_backward_train(2, 2, 2, hand_x, gamma, sm, si, dy, dx, NULL, NULL);
    graft_batchnorm2d_backward_train(2, 2, 2, hand_x, gamma, sm, si, dy, NULL, NULL, NULL);
    graft_batchnorm2d_backward_eval(2, 2, 2, EPS, hand_x, gamma, rm, rv, dy, NULL, NULL, NULL);
    graft_batchnorm2d_backward_eval(2, 2, 2, EPS, hand_x, gamma, rm, rv, dy, dx, NULL, NULL);
}

static void single_value_per_channel_stays_finite(void **state) {
    (void)state;
    const float x[3] = {5, 6, 7}, gamma[3] = {1, 1, 1}, beta[3] = {0, 0, 0}, dy[3] = {1, 1, 1};
    float rm[3] = {0, 0, 0}, rv[3] = {1, 1, 1}, y[3], sm[3], si[3], dx[3], dg[3] = {0}, db[3] = {0};
    graft_batchnorm2d_forward_train(1, 3, 1, EPS, MOMENTUM, x, gamma, beta, rm, rv, y, sm, si);
    graft_batchnorm2d_backward_train(1, 3, 1, x, gamma, sm, si, dy, dx, dg, db);
    for (int i = 0; i < 3; i++) {
        assert_true(isfinite(y[i]) && isfinite(rm[i]) && isfinite(rv[i]));
        assert_true(isfinite(dx[i]) && isfinite(dg[i]) && isfinite(db[i]));
    }
}

/* ---- gradient checks on the reference ------------------------------------- */

typedef struct bn_case {
    int64_t n, c, hw;
    double *x, *gamma, *beta, *rm, *rv, *y, *dy;
    bool train;
} bn_case;

static double bn_loss(void *p) {
    bn_case *b = p;
    if (b->train)
        graft_ref_batchnorm2d_forward_train(b->n, b->c, b->hw, EPS, b->x, b->gamma, b->beta,
                                            b->y);
    else
        graft_ref_batchnorm2d_forward_eval(b->n, b->c, b->hw, EPS, b->x, b->gamma, b->beta,
                                           b->rm, b->rv, b->y);
    return tu_dot(b->y, b->dy, b->n * b->c * b->hw);
}

static bn_case bn_case_new(int64_t n, int64_t c, int64_t hw, bool train, uint64_t seed) {
    bn_case b = {.n = n, .c = c, .hw = hw, .train = train};
    int64_t nx = n * c * hw;
    b.x = malloc((size_t)nx * sizeof *b.x);
    b.y = malloc((size_t)nx * sizeof *b.y);
    b.dy = malloc((size_t)nx * sizeof *b.dy);
    b.gamma = malloc((size_t)c * sizeof *b.gamma);
    b.beta = malloc((size_t)c * sizeof *b.beta);
    b.rm = malloc((size_t)c * sizeof *b.rm);
    b.rv = malloc((size_t)c * sizeof *b.rv);
    graft_rng r;
    graft_rng_seed(&r, seed);
    tu_fill(&r, b.x, nx, -2, 3);
    tu_fill(&r, b.dy, nx, -1, 1);
    tu_fill(&r, b.gamma, c, 0.5, 1.5);
    tu_fill(&r, b.beta, c, -0.5, 0.5);
    tu_fill(&r, b.rm, c, -0.5, 0.5);
    tu_fill(&r, b.rv, c, 0.5, 2.0);
    return b;
}

static void bn_case_free(bn_case *b) {
    free(b->x), free(b->y), free(b->dy), free(b->gamma), free(b->beta), free(b->rm),
        free(b->rv);
}

static void check_ref_gradients(bool train) {
    bn_case b = bn_case_new(3, 4, 5, train, train ? 7 : 8);
    int64_t nx = b.n * b.c * b.hw;
    double *dx = malloc((size_t)nx * sizeof *dx);
    double dgamma[4] = {0}, dbeta[4] = {0};
    if (train)
        graft_ref_batchnorm2d_backward_train(b.n, b.c, b.hw, EPS, b.x, b.gamma, b.dy, dx, dgamma,
                                             dbeta);
    else
        graft_ref_batchnorm2d_backward_eval(b.n, b.c, b.hw, EPS, b.x, b.gamma, b.rm, b.rv, b.dy,
                                            dx, dgamma, dbeta);
    assert_true(tu_gradcheck(b.x, nx, dx, bn_loss, &b, 1e-5) < 1e-7);
    assert_true(tu_gradcheck(b.gamma, b.c, dgamma, bn_loss, &b, 1e-5) < 1e-7);
    assert_true(tu_gradcheck(b.beta, b.c, dbeta, bn_loss, &b, 1e-5) < 1e-7);
    free(dx);
    bn_case_free(&b);
}

static void ref_train_backward_matches_finite_differences(void **state) {
    (void)state;
    check_ref_gradients(true);
}

static void ref_eval_backward_matches_finite_differences(void **state) {
    (void)state;
    check_ref_gradients(false);
}

/* ---- fast vs reference ---------------------------------------------------- */

static void check_fast_against_reference(bool train) {
    /* enough channels to spread over threads, channels big enough to need double sums */
    bn_case b = bn_case_new(4, 19, 13 * 11, train, train ? 9 : 10);
    int64_t n = b.n, c = b.c, hw = b.hw, nx = n * c * hw;
    tu_round_to_float(b.x, nx);
    tu_round_to_float(b.dy, nx);
    tu_round_to_float(b.gamma, c);
    tu_round_to_float(b.beta, c);
    tu_round_to_float(b.rm, c);
    tu_round_to_float(b.rv, c);
    double *dx = malloc((size_t)nx * sizeof *dx), dgamma[19], dbeta[19];
    for (int i = 0; i < 19; i++) dgamma[i] = dbeta[i] = 0.25; /* accumulated into */
    float *xf = tu_to_float(b.x, nx), *dyf = tu_to_float(b.dy, nx);
    float *gf = tu_to_float(b.gamma, c), *bf = tu_to_float(b.beta, c);
    float *rmf = tu_to_float(b.rm, c), *rvf = tu_to_float(b.rv, c);
    float *yf = malloc((size_t)nx * sizeof *yf), *dxf = malloc((size_t)nx * sizeof *dxf);
    float dgf[19], dbf[19], sm[19], si[19];
    for (int i = 0; i < 19; i++) dgf[i] = dbf[i] = 0.25f;
    if (train) {
        graft_ref_batchnorm2d_forward_train(n, c, hw, EPS, b.x, b.gamma, b.beta, b.y);
        graft_ref_batchnorm2d_backward_train(n, c, hw, EPS, b.x, b.gamma, b.dy, dx, dgamma,
                                             dbeta);
        graft_batchnorm2d_forward_train(n, c, hw, EPS, MOMENTUM, xf, gf, bf, rmf, rvf, yf, sm, si);
        graft_batchnorm2d_backward_train(n, c, hw, xf, gf, sm, si, dyf, dxf, dgf, dbf);
    } else {
        graft_ref_batchnorm2d_forward_eval(n, c, hw, EPS, b.x, b.gamma, b.beta, b.rm, b.rv, b.y);
        graft_ref_batchnorm2d_backward_eval(n, c, hw, EPS, b.x, b.gamma, b.rm, b.rv, b.dy, dx,
                                            dgamma, dbeta);
        graft_batchnorm2d_forward_eval(n, c, hw, EPS, xf, gf, bf, rmf, rvf, yf);
        graft_batchnorm2d_backward_eval(n, c, hw, EPS, xf, gf, rmf, rvf, dyf, dxf, dgf, dbf);
    }
    double ey = tu_rel_err_fd(yf, b.y, nx, 1e-12), edx = tu_rel_err_fd(dxf, dx, nx, 1e-12);
    double eg = tu_rel_err_fd(dgf, dgamma, c, 1e-12), eb = tu_rel_err_fd(dbf, dbeta, c, 1e-12);
    print_message("batchnorm %s rel err: y %.3g, dx %.3g, dgamma %.3g, dbeta %.3g\n",
                  train ? "train" : "eval", ey, edx, eg, eb);
    assert_true(ey <= 1e-5);
    assert_true(edx <= 1e-5);
    assert_true(eg <= 1e-5);
    assert_true(eb <= 1e-5);
    free(dx), free(xf), free(dyf), free(gf), free(bf), free(rmf), free(rvf), free(yf),
        free(dxf);
    bn_case_free(&b);
}

static void train_fast_matches_reference(void **state) {
    (void)state;
    check_fast_against_reference(true);
}

static void eval_fast_matches_reference(void **state) {
    (void)state;
    check_fast_against_reference(false);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(train_running_stats_update_with_momentum_and_unbiased_variance),
        cmocka_unit_test(train_forward_normalises_with_biased_batch_variance),
        cmocka_unit_test(eval_forward_uses_running_statistics),
        cmocka_unit_test(eval_backward_scales_by_gamma_over_running_std),
        cmocka_unit_test(backward_accumulates_parameter_gradients),
        cmocka_unit_test(backward_skips_null_outputs),
        cmocka_unit_test(single_value_per_channel_stays_finite),
        cmocka_unit_test(ref_train_backward_matches_finite_differences),
        cmocka_unit_test(ref_eval_backward_matches_finite_differences),
        cmocka_unit_test(train_fast_matches_reference),
        cmocka_unit_test(eval_fast_matches_reference),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    graft_threads_shutdown();
    return failed;
}
