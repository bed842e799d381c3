/* test_loss.c — cross-entropy: a worked example, large logits, gradients, fast vs
 * reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "testutil.h"

#include "core/threads.h"
#include "ops/ops.h"

/* Row 0: logits (1, 2, 3), label 2: loss = log(e + e^2 + e^3) - 3 = 0.40760596444438013
 * Row 1: logits (0, 0, 0), label 0: loss = log 3                 = 1.0986122886681098
 * Mean: 0.753109126556245.
 * softmax(1, 2, 3) = (0.09003057317038046, 0.24472847105479767, 0.6652409557748219). */
static const float hand_logits[6] = {1, 2, 3, 0, 0, 0};
static const int64_t hand_labels[2] = {2, 0};

static void cross_entropy_matches_hand_computed_value(void **state) {
    (void)state;
    double loss = graft_cross_entropy_forward_backward(2, 3, hand_logits, hand_labels, NULL);
    assert_float_equal(loss, 0.753109126556245, 1e-7);
    const double logits_d[6] = {1, 2, 3, 0, 0, 0};
    assert_float_equal(graft_ref_cross_entropy(2, 3, logits_d, hand_labels, NULL),
                       0.753109126556245, 1e-14);
}

static void cross_entropy_gradient_is_softmax_minus_onehot_over_batch(void **state) {
    (void)state;
    float d[6];
    graft_cross_entropy_forward_backward(2, 3, hand_logits, hand_labels, d);
    const double want[6] = {0.09003057317038046 / 2,      0.24472847105479767 / 2,
                            (0.6652409557748219 - 1) / 2, (1.0 / 3 - 1) / 2,
                            1.0 / 3 / 2,                  1.0 / 3 / 2};
    for (int i = 0; i < 6; i++) assert_float_equal(d[i], want[i], 1e-7);
}

static void cross_entropy_handles_large_logits_without_overflow(void **state) {
    (void)state;
    /* exp(1000) overflows even double; the stable form never forms it.
     * Row 0: label 1 -> loss = 1000 + log(1 + e^-1000 + e^-2000) - 0 = 1000.
     * Row 1: (10000, 10001), label 0 -> log(1 + e) = 1.3132616875182228. */
    const float logits[6] = {1000, 0, -1000, 10000, 10001, -10000};
    const int64_t labels[2] = {1, 0};
    float d[6];
    double loss = graft_cross_entropy_forward_backward(2, 3, logits, labels, d);
    assert_float_equal(loss, (1000.0 + 1.3132616875182228) / 2, 1e-9);
    for (int i = 0; i < 6; i++) assert_true(isfinite(d[i]));
    assert_float_equal(d[0], 0.5, 1e-7);
    assert_float_equal(d[1], -0.5, 1e-7);
    const double logits_d[6] = {1000, 0, -1000, 10000, 10001, -10000};
    double dd[6];
    assert_float_equal(graft_ref_cross_entropy(2, 3, logits_d, labels, dd),
                       (1000.0 + 1.3132616875182228) / 2, 1e-9);
    for (int i = 0; i < 6; i++) assert_true(isfinite(dd[i]));
}

/* F.cross_entropy(hand logits, labels, label_smoothing=0.1) in PyTorch (float64):
 * 0.8031091265562451, grad [[0.02834861991852355, 0.10569756886073216,
 * -0.13404618877925578], [-0.30000000000000004, 0.15, 0.15]]. */
static void label_smoothing_matches_pytorch(void **state) {
    (void)state;
    float d[6];
    double loss = graft_cross_entropy_smooth_forward_backward(2, 3, hand_logits, hand_labels, 0.1, d);
    assert_float_equal(loss, 0.8031091265562451, 1e-7);
    const double want[6] = {0.02834861991852355, 0.10569756886073216, -0.13404618877925578,
                            -0.30000000000000004, 0.15, 0.15};
    for (int i = 0; i < 6; i++) assert_float_equal(d[i], want[i], 1e-7);
    const double logits_d[6] = {1, 2, 3, 0, 0, 0};
    double dd[6];
    assert_float_equal(graft_ref_cross_entropy_smooth(2, 3, logits_d, hand_labels, 0.1, dd), 0.8031091265562451,
                       1e-14);
    for (int i = 0; i < 6; i++) assert_float_equal(dd[i], want[i], 1e-14);
}

typedef struct ce_ctx {
    int64_t n, k;
    double *logits;
    const int64_t *labels;
    double eps;
} ce_ctx;

static double ce_loss(void *p) {
    ce_ctx *c = p;
    return graft_ref_cross_entropy_smooth(c->n, c->k, c->logits, c->labels, c->eps, NULL);
}

static void ref_cross_entropy_gradient_matches_finite_differences(void **state) {
    (void)state;
    enum { N = 5, K = 7 };
    graft_rng r;
    graft_rng_seed(&r, 1);
    double logits[N * K], d[N * K];
    int64_t labels[N];
    tu_fill(&r, logits, N * K, -4, 4);
    for (int i = 0; i < N; i++) labels[i] = (int64_t)(graft_rng_uniform(&r) * K);
    graft_ref_cross_entropy(N, K, logits, labels, d);
    ce_ctx c = {N, K, logits, labels, 0.0};
    assert_true(tu_gradcheck(logits, N * K, d, ce_loss, &c, 1e-6) < 1e-8);
    c.eps = 0.2; /* label smoothing */
    graft_ref_cross_entropy_smooth(N, K, logits, labels, c.eps, d);
    assert_true(tu_gradcheck(logits, N * K, d, ce_loss, &c, 1e-6) < 1e-8);
}

static void cross_entropy_fast_matches_reference(void **state) {
    (void)state;
    enum { N = 64, K = 1000 };
    graft_rng r;
    graft_rng_seed(&r, 2);
    static double logits[N * K], d[N * K];
    static float d_f[N * K];
    int64_t labels[N];
    tu_fill(&r, logits, N * K, -20, 20);
    tu_round_to_float(logits, N * K);
    for (int i = 0; i < N; i++) labels[i] = (int64_t)(graft_rng_uniform(&r) * K);
    float *logits_f = tu_to_float(logits, N * K);
    double want = graft_ref_cross_entropy(N, K, logits, labels, d);
    double got = graft_cross_entropy_forward_backward(N, K, logits_f, labels, d_f);
    double eloss = fabs(got - want) / fabs(want), ed = tu_rel_err_fd(d_f, d, N * K, 1e-12);
    print_message("cross-entropy rel err: loss %.3g, dlogits %.3g\n", eloss, ed);
    assert_true(eloss <= 1e-5);
    assert_true(ed <= 1e-5);
    free(logits_f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cross_entropy_matches_hand_computed_value),
        cmocka_unit_test(cross_entropy_gradient_is_softmax_minus_onehot_over_batch),
        cmocka_unit_test(cross_entropy_handles_large_logits_without_overflow),
        cmocka_unit_test(label_smoothing_matches_pytorch),
        cmocka_unit_test(ref_cross_entropy_gradient_matches_finite_differences),
        cmocka_unit_test(cross_entropy_fast_matches_reference),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    graft_threads_shutdown();
    return failed;
}
