/* test_layers.c — the torch.nn layer modules: what they do around their kernels
 * (views, in-place work, masks, train/eval switches, shape errors). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/ctx.h"
#include "core/threads.h"
#include "nn/layers.h"

static graft_tensor make4(int64_t n, int64_t c, int64_t h, int64_t w) {
    graft_tensor t;
    graft_tensor_init(&t, GRAFT_F32);
    int64_t s[4] = {n, c, h, w};
    assert_int_equal(graft_tensor_resize(&t, 4, s), GRAFT_OK);
    float *x = t.data;
    for (int64_t i = 0; i < graft_tensor_numel(&t); i++) x[i] = (float)((i * 37) % 11) - 5.0f;
    return t;
}

static void flatten_is_a_view_and_its_gradient_takes_the_input_shape(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    graft_module *f = graft_flatten_new();
    graft_tensor x = make4(2, 3, 4, 5), *y, *dx;
    assert_int_equal(graft_module_forward(f, &ctx, &x, &y), GRAFT_OK);
    assert_int_equal(y->ndim, 2);
    assert_int_equal(y->shape[0], 2);
    assert_int_equal(y->shape[1], 60);
    assert_ptr_equal(y->data, x.data);
    graft_tensor dy = make4(2, 60, 1, 1);
    dy.ndim = 2;
    f->need_dx = true;
    assert_int_equal(graft_module_backward(f, &ctx, &dy, &dx), GRAFT_OK);
    assert_int_equal(dx->ndim, 4);
    assert_int_equal(dx->shape[3], 5);
    assert_ptr_equal(dx->data, dy.data);
    graft_module_free(f);
    graft_tensor_release(&x);
    graft_tensor_release(&dy);
    graft_ctx_release(&ctx);
}

static void inplace_relu_writes_its_input_and_masks_the_gradient(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    graft_module *r = graft_relu_new(true);
    graft_tensor x = make4(1, 2, 3, 3), *y, *dx;
    assert_int_equal(graft_module_forward(r, &ctx, &x, &y), GRAFT_OK);
    assert_ptr_equal(y->data, x.data);
    for (int64_t i = 0; i < 18; i++) assert_true(((float *)x.data)[i] >= 0);
    graft_tensor dy = make4(1, 2, 3, 3);
    for (int64_t i = 0; i < 18; i++) ((float *)dy.data)[i] = 1.0f;
    r->need_dx = true;
    assert_int_equal(graft_module_backward(r, &ctx, &dy, &dx), GRAFT_OK);
    for (int64_t i = 0; i < 18; i++)
        assert_true(((float *)dx->data)[i] == (((float *)x.data)[i] > 0 ? 1.0f : 0.0f));
    graft_module_free(r);
    graft_tensor_release(&x);
    graft_tensor_release(&dy);
    graft_ctx_release(&ctx);
}

static void dropout_is_the_identity_in_eval_and_scales_kept_values_in_train(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    graft_module *d = graft_dropout_new(0.25);
    graft_tensor x = make4(4, 8, 8, 8), *y, *dx;
    for (int64_t i = 0; i < graft_tensor_numel(&x); i++) ((float *)x.data)[i] = 1.0f;
    assert_int_equal(graft_module_forward(d, &ctx, &x, &y), GRAFT_OK);
    assert_ptr_equal(y->data, x.data); /* eval: no copy, no change */
    graft_module_set_training(d, true);
    assert_int_equal(graft_module_forward(d, &ctx, &x, &y), GRAFT_OK);
    int64_t n = graft_tensor_numel(&x), kept = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = ((float *)y->data)[i];
        assert_true(v == 0.0f || fabsf(v - 1.0f / 0.75f) < 1e-6f);
        kept += v != 0.0f;
    }
    assert_true(fabs((double)kept / n - 0.75) < 0.03);
    graft_tensor dy = make4(4, 8, 8, 8);
    for (int64_t i = 0; i < n; i++) ((float *)dy.data)[i] = 2.0f;
    d->need_dx = true;
    assert_int_equal(graft_module_backward(d, &ctx, &dy, &dx), GRAFT_OK);
    for (int64_t i = 0; i < n; i++) { /* the same mask: zero where dropped, 2/(1-p) where kept */
        float expect = ((float *)y->data)[i] != 0.0f ? 2.0f / 0.75f : 0.0f;
        assert_true(fabsf(((float *)dx->data)[i] - expect) < 1e-6f);
    }
    graft_module_free(d);
    graft_tensor_release(&x);
    graft_tensor_release(&dy);
    graft_ctx_release(&ctx);
}

static void batchnorm_refuses_one_value_per_channel_in_train_mode(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    graft_module *bn = graft_batchnorm2d_new(3, 1e-5, 0.1);
    graft_module_set_training(bn, true);
    graft_tensor x = make4(1, 3, 1, 1), *y;
    assert_int_equal(graft_module_forward(bn, &ctx, &x, &y), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(), "more than 1 value per channel"));
    graft_module_set_training(bn, false);
    assert_int_equal(graft_module_forward(bn, &ctx, &x, &y), GRAFT_OK);
    graft_module_free(bn);
    graft_tensor_release(&x);
    graft_ctx_release(&ctx);
}

static void sequential_backward_stops_below_the_lowest_trainable_layer(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    graft_module *seq = graft_sequential_new();
    assert_int_equal(graft_module_add(seq, "0", graft_conv2d_new(2, 4, 3, 3, 1, 1, 1, 1, true)), GRAFT_OK);
    assert_int_equal(graft_module_add(seq, "1", graft_relu_new(true)), GRAFT_OK);
    assert_int_equal(graft_module_add(seq, "2", graft_conv2d_new(4, 4, 3, 3, 1, 1, 1, 1, true)), GRAFT_OK);
    assert_int_equal(graft_module_add(seq, "3", graft_relu_new(false)), GRAFT_OK);
    graft_module_set_frozen(seq->children[0], true);
    graft_tensor x = make4(2, 2, 5, 5), *y, *dx;
    assert_int_equal(graft_module_forward(seq, &ctx, &x, &y), GRAFT_OK);
    graft_tensor dy = make4(2, 4, 5, 5);
    seq->need_dx = false;
    assert_int_equal(graft_module_backward(seq, &ctx, &dy, &dx), GRAFT_OK);
    assert_null(dx);
    assert_int_equal(ctx.backward_ops, 2);          /* ReLU 3 and conv 2 */
    assert_false(seq->children[2]->need_dx);        /* conv 2 computes no input gradient */
    assert_null(seq->children[2]->dx.data);
    assert_null(seq->children[0]->params[0].grad.data);
    assert_non_null(seq->children[2]->params[0].grad.data);
    graft_module_free(seq);
    graft_tensor_release(&x);
    graft_tensor_release(&dy);
    graft_ctx_release(&ctx);
}

/* Conv2d under graft_module_hold_weights keeps its weights' transform (in its aux) and
 * gives the bits of the usual forward; letting go frees it, and later weights count. */
static void held_conv_gives_the_same_bits_and_lets_go(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    graft_module *seq = graft_sequential_new();
    assert_int_equal(graft_module_add(seq, "0", graft_conv2d_new(16, 24, 3, 3, 1, 1, 1, 1, true)), GRAFT_OK);
    graft_module *conv = seq->children[0];
    float *w = conv->params[0].value.data;
    for (int64_t i = 0; i < graft_tensor_numel(&conv->params[0].value); i++) w[i] = (float)((i * 13) % 7) * 0.01f;
    graft_tensor x = make4(4, 16, 8, 8), *y;
    size_t bytes = (size_t)(4 * 24 * 8 * 8) * sizeof(float);
    float *plain = malloc(bytes), *held = malloc(bytes);
    for (int round = 0; round < 2; round++) {
        assert_int_equal(graft_module_forward(seq, &ctx, &x, &y), GRAFT_OK);
        memcpy(plain, y->data, bytes);
        graft_module_hold_weights(seq, true);
        assert_true(conv->weights_held);
        for (int call = 0; call < 2; call++) {
            assert_int_equal(graft_module_forward(seq, &ctx, &x, &y), GRAFT_OK);
            assert_memory_equal(y->data, plain, bytes);
        }
        if (round == 0) memcpy(held, y->data, bytes);
        graft_module_hold_weights(seq, false);
        assert_false(conv->weights_held);
        assert_null(conv->aux);
        w[5] += 1.0f; /* the next round's weights */
    }
    assert_memory_not_equal(held, plain, bytes); /* the second round saw the new weights */
    free(plain), free(held);
    graft_module_free(seq);
    graft_tensor_release(&x);
    graft_ctx_release(&ctx);
}

static void linear_names_itself_and_both_shapes_on_mismatch(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    graft_module *seq = graft_sequential_new();
    assert_int_equal(graft_module_add(seq, "head", graft_linear_new(8, 3, true)), GRAFT_OK);
    graft_tensor x, *y;
    graft_tensor_init(&x, GRAFT_F32);
    int64_t s[2] = {5, 7};
    assert_int_equal(graft_tensor_resize(&x, 2, s), GRAFT_OK);
    assert_int_equal(graft_module_forward(seq, &ctx, &x, &y), GRAFT_ERR_SHAPE);
    assert_string_equal(graft_errmsg(), "head (Linear): input [5, 7] does not fit weight [3, 8] (expected [N, 8])");
    graft_module_free(seq);
    graft_tensor_release(&x);
    graft_ctx_release(&ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(flatten_is_a_view_and_its_gradient_takes_the_input_shape),
        cmocka_unit_test(inplace_relu_writes_its_input_and_masks_the_gradient),
        cmocka_unit_test(dropout_is_the_identity_in_eval_and_scales_kept_values_in_train),
        cmocka_unit_test(batchnorm_refuses_one_value_per_channel_in_train_mode),
        cmocka_unit_test(sequential_backward_stops_below_the_lowest_trainable_layer),
        cmocka_unit_test(linear_names_itself_and_both_shapes_on_mismatch),
        cmocka_unit_test(held_conv_gives_the_same_bits_and_lets_go),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    graft_threads_shutdown();
    return rc;
}
