/* test_activation.c — ReLU: values, aliasing, NaN, gradient check, fast vs reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "testutil.h"

#include "core/threads.h"
#include "ops/ops.h"

static void relu_forward_keeps_positives_and_zeroes_the_rest(void **state) {
    (void)state;
    const float x[6] = {-2.0f, -0.0f, 0.0f, 1e-30f, 3.5f, -1e-30f};
    float y[6];
    graft_relu_forward(6, x, y);
    const float want[6] = {0.0f, 0.0f, 0.0f, 1e-30f, 3.5f, 0.0f};
    for (int i = 0; i < 6; i++) assert_true(y[i] == want[i]);
}

static void relu_forward_works_in_place(void **state) {
    (void)state;
    float x[4] = {-1.0f, 2.0f, -3.0f, 4.0f};
    graft_relu_forward(4, x, x);
    assert_true(x[0] == 0.0f && x[1] == 2.0f && x[2] == 0.0f && x[3] == 4.0f);
}

static void relu_propagates_nan_like_pytorch(void **state) {
    (void)state;
    float x[2] = {NAN, -1.0f}, y[2];
    graft_relu_forward(2, x, y);
    assert_true(isnan(y[0]));
    assert_true(y[1] == 0.0f);
    double xd[1] = {NAN}, yd[1];
    graft_ref_relu_forward(1, xd, yd);
    assert_true(isnan(yd[0]));
}

static void relu_backward_passes_gradient_only_where_output_positive(void **state) {
    (void)state;
    const float y[4] = {0.0f, 2.0f, 0.0f, 0.5f};
    const float dy[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    float dx[4];
    graft_relu_backward(4, y, dy, dx);
    assert_true(dx[0] == 0.0f && dx[1] == 2.0f && dx[2] == 0.0f && dx[3] == 4.0f);
}

static void relu_backward_works_in_place(void **state) {
    (void)state;
    const float y[3] = {1.0f, 0.0f, 5.0f};
    float g[3] = {7.0f, 8.0f, 9.0f};
    graft_relu_backward(3, y, g, g);
    assert_true(g[0] == 7.0f && g[1] == 0.0f && g[2] == 9.0f);
}

typedef struct relu_loss_ctx {
    int64_t n;
    double *x, *y;
    const double *g;
} relu_loss_ctx;

static double relu_loss(void *p) {
    relu_loss_ctx *c = p;
    graft_ref_relu_forward(c->n, c->x, c->y);
    return tu_dot(c->y, c->g, c->n);
}

static void ref_relu_backward_matches_finite_differences(void **state) {
    (void)state;
    enum { N = 64 };
    graft_rng r;
    graft_rng_seed(&r, 1);
    double x[N], y[N], g[N], dx[N];
    tu_fill(&r, x, N, -1, 1);
    for (int i = 0; i < N; i++) /* keep away from the kink at 0 */
        if (fabs(x[i]) < 0.05) x[i] = 0.5;
    tu_fill(&r, g, N, -1, 1);
    graft_ref_relu_forward(N, x, y);
    graft_ref_relu_backward(N, y, g, dx);
    relu_loss_ctx c = {N, x, y, g};
    assert_true(tu_gradcheck(x, N, dx, relu_loss, &c, 1e-6) < 1e-8);
}

static void relu_fast_matches_reference_on_a_threaded_size(void **state) {
    (void)state;
    const int64_t n = 200003; /* several parallel chunks, not a multiple of any */
    graft_rng r;
    graft_rng_seed(&r, 2);
    double *x = malloc((size_t)n * sizeof *x), *g = malloc((size_t)n * sizeof *g);
    double *y = malloc((size_t)n * sizeof *y), *dx = malloc((size_t)n * sizeof *dx);
    tu_fill(&r, x, n, -1, 1);
    tu_fill(&r, g, n, -1, 1);
    tu_round_to_float(x, n);
    tu_round_to_float(g, n);
    float *xf = tu_to_float(x, n), *gf = tu_to_float(g, n);
    float *yf = malloc((size_t)n * sizeof *yf), *dxf = malloc((size_t)n * sizeof *dxf);
    graft_ref_relu_forward(n, x, y);
    graft_ref_relu_backward(n, y, g, dx);
    graft_relu_forward(n, xf, yf);
    graft_relu_backward(n, yf, gf, dxf);
    assert_true(tu_rel_err_fd(yf, y, n, 1e-12) == 0.0); /* exact: no arithmetic */
    assert_true(tu_rel_err_fd(dxf, dx, n, 1e-12) == 0.0);
    free(x), free(g), free(y), free(dx), free(xf), free(gf), free(yf), free(dxf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(relu_forward_keeps_positives_and_zeroes_the_rest),
        cmocka_unit_test(relu_forward_works_in_place),
        cmocka_unit_test(relu_propagates_nan_like_pytorch),
        cmocka_unit_test(relu_backward_passes_gradient_only_where_output_positive),
        cmocka_unit_test(relu_backward_works_in_place),
        cmocka_unit_test(ref_relu_backward_matches_finite_differences),
        cmocka_unit_test(relu_fast_matches_reference_on_a_threaded_size),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    graft_threads_shutdown();
    return failed;
}
