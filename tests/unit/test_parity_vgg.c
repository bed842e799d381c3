/* test_parity_vgg.c — graft reproduces PyTorch 1.13 on small VGG models built with
 * torchvision's own classes (fixtures from tests/parity/gen_vgg_fixtures.py):
 * outputs, loss, every parameter gradient, the input gradient, and in train mode the
 * updated BatchNorm running statistics.  Bound: max|graft - torch| <= 1e-4 max|torch|. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "core/threads.h"
#include "graft/graft.h"

#define BOUND 1e-4

static double worst_seen; /* largest relative error over all comparisons, reported at the end */

/* max|a - b| / max|b| with b the PyTorch value */
static double rel_err(const graft_tensor *a, const graft_tensor *b) {
    assert_true(graft_tensor_same_shape(a, b));
    const float *x = graft_tensor_f32_const(a), *y = graft_tensor_f32_const(b);
    double diff = 0, mag = 0;
    for (int64_t i = 0; i < graft_tensor_numel(b); i++) {
        diff = fmax(diff, fabs((double)x[i] - y[i]));
        mag = fmax(mag, fabs((double)y[i]));
    }
    return mag > 0 ? diff / mag : diff;
}

static double max_abs(const graft_tensor *t) {
    double m = 0;
    for (int64_t i = 0; i < graft_tensor_numel(t); i++) m = fmax(m, fabs((double)graft_tensor_f32_const(t)[i]));
    return m;
}

static void assert_close_scaled(const char *what, const graft_tensor *a, const graft_tensor *b, double scale) {
    double e = rel_err(a, b) * max_abs(b) / scale;
    if (e > worst_seen) worst_seen = e;
    if (!(e <= BOUND)) fail_msg("%s: relative error %.3g exceeds %.0e", what, e, BOUND);
}

static void assert_close(const char *what, const graft_tensor *a, const graft_tensor *b) {
    double e = rel_err(a, b);
    if (e > worst_seen) worst_seen = e;
    if (!(e <= BOUND)) fail_msg("%s: relative error %.3g exceeds %.0e", what, e, BOUND);
}

typedef struct fixture {
    graft_model *model;
    graft_tensor_map *io;
} fixture;

static fixture load(const char *name, const char *mode) {
    char path[256];
    fixture f = {0};
    snprintf(path, sizeof path, "parity/fixtures/vgg/%s_%s.io.safetensors", name, mode);
    if (graft_safetensors_load(path, &f.io)) fail_msg("%s", graft_errmsg());
    const char *arch = graft_tensor_map_get_meta(f.io, "arch");
    assert_non_null(arch);
    assert_string_equal(graft_tensor_map_get_meta(f.io, "mode"), mode);
    graft_model_options o = graft_model_defaults();
    o.num_classes = 5;
    o.init = 0;
    if (graft_model_create(arch, &o, &f.model)) fail_msg("%s", graft_errmsg());
    snprintf(path, sizeof path, "parity/fixtures/vgg/%s_%s.weights.safetensors", name, mode);
    if (graft_model_load_safetensors(f.model, path)) fail_msg("%s", graft_errmsg());
    graft_model_set_training(f.model, !strcmp(mode, "train"));
    /* the fixture ran train mode with every Dropout's p set to 0 */
    if (!strcmp(mode, "train")) assert_int_equal(graft_model_set_dropout(f.model, 0.0), GRAFT_OK);
    return f;
}

static void release(fixture *f) {
    graft_model_free(f->model);
    graft_tensor_map_free(f->io);
}

static graft_tensor *io(const fixture *f, const char *name) {
    graft_tensor *t = graft_tensor_map_get(f->io, name);
    if (!t) fail_msg("fixture lacks %s", name);
    return t;
}

/* Runs forward, loss and backward, and compares everything the fixture recorded. */
static void check(const char *name, const char *mode, const char *freeze) {
    fixture f = load(name, mode);
    if (freeze) assert_int_equal(graft_model_freeze(f.model, freeze, 1), GRAFT_OK);
    const graft_tensor *y;
    assert_int_equal(graft_model_forward(f.model, io(&f, "input"), &y), GRAFT_OK);
    char what[512];
    snprintf(what, sizeof what, "%s %s output", name, mode);
    assert_close(what, y, io(&f, "output"));

    graft_tensor *dy;
    assert_int_equal(graft_tensor_clone(y, &dy), GRAFT_OK);
    double loss;
    assert_int_equal(graft_cross_entropy(y, io(&f, "labels"), &loss, dy), GRAFT_OK);
    double torch_loss = graft_tensor_f32(io(&f, "loss"))[0];
    assert_true(fabs(loss - torch_loss) <= BOUND * fabs(torch_loss));

    const graft_tensor *dx = NULL;
    assert_int_equal(graft_model_backward(f.model, dy, freeze ? NULL : &dx), GRAFT_OK);
    if (!freeze) {
        snprintf(what, sizeof what, "%s %s grad_input", name, mode);
        assert_close(what, dx, io(&f, "grad_input"));
    }
    int grads = 0;
    for (size_t i = 0; i < graft_model_state_size(f.model); i++) {
        const char *key = graft_model_state_name(f.model, i);
        int trainable = graft_model_param_trainable(f.model, key);
        char fixture_key[200];
        if (trainable < 0) {
            if (!strcmp(mode, "train")) { /* buffers after the train-mode forward */
                snprintf(fixture_key, sizeof fixture_key, "after.%s", key);
                graft_tensor *t = graft_model_state_tensor(f.model, i), *ref = io(&f, fixture_key);
                if (graft_tensor_dtype(t) == GRAFT_I64 && !freeze)
                    assert_int_equal(graft_tensor_i64(t)[0], graft_tensor_i64(ref)[0]);
                else if (graft_tensor_dtype(t) == GRAFT_F32 && !freeze) {
                    snprintf(what, sizeof what, "%s %s %s", name, mode, fixture_key);
                    assert_close(what, t, ref);
                }
            }
            continue;
        }
        const graft_tensor *g = graft_model_grad(f.model, key);
        if (!trainable) {
            assert_null(g);
            continue;
        }
        snprintf(fixture_key, sizeof fixture_key, "grad.%s", key);
        snprintf(what, sizeof what, "%s %s %s", name, mode, fixture_key);
        assert_non_null(g);
        char prefix[32], next_bn[64];
        size_t len = strlen(key);
        if (!strcmp(mode, "train") && len > 5 && !strcmp(key + len - 5, ".bias") &&
            sscanf(key, "features.%30[0-9]", prefix) == 1) {
            snprintf(next_bn, sizeof next_bn, "features.%d.running_mean", atoi(prefix) + 1);
            if (graft_model_state_get(f.model, next_bn)) {
                /* A conv bias feeding a batch-statistics BatchNorm has gradient exactly 0:
                 * the batch mean removes it.  Both frameworks return rounding noise
                 * (~1e-11), so its error is measured against its layer's weight gradient. */
                char wkey[64];
                snprintf(wkey, sizeof wkey, "grad.features.%s.weight", prefix);
                assert_close_scaled(what, g, io(&f, fixture_key), max_abs(io(&f, wkey)));
                grads++;
                continue;
            }
        }
        assert_close(what, g, io(&f, fixture_key));
        grads++;
    }
    assert_true(grads > 0);
    graft_tensor_free(dy);
    release(&f);
}

static void plain_vgg_32x32_eval_matches_pytorch(void **s) { (void)s; check("plain32", "eval", NULL); }
static void plain_vgg_32x32_train_matches_pytorch(void **s) { (void)s; check("plain32", "train", NULL); }
static void plain_vgg_40x40_eval_matches_pytorch(void **s) { (void)s; check("plain40", "eval", NULL); }
static void plain_vgg_40x40_train_matches_pytorch(void **s) { (void)s; check("plain40", "train", NULL); }
static void bn_vgg_32x32_eval_matches_pytorch(void **s) { (void)s; check("bn32", "eval", NULL); }
static void bn_vgg_32x32_train_matches_pytorch(void **s) { (void)s; check("bn32", "train", NULL); }
static void bn_vgg_40x40_eval_matches_pytorch(void **s) { (void)s; check("bn40", "eval", NULL); }
static void bn_vgg_40x40_train_matches_pytorch(void **s) { (void)s; check("bn40", "train", NULL); }

/* Freezing the features leaves the classifier's gradients exactly PyTorch's. */
static void frozen_features_keep_classifier_gradients(void **s) {
    (void)s;
    check("plain32", "eval", "features");
    check("bn40", "eval", "features");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plain_vgg_32x32_eval_matches_pytorch),
        cmocka_unit_test(plain_vgg_32x32_train_matches_pytorch),
        cmocka_unit_test(plain_vgg_40x40_eval_matches_pytorch),
        cmocka_unit_test(plain_vgg_40x40_train_matches_pytorch),
        cmocka_unit_test(bn_vgg_32x32_eval_matches_pytorch),
        cmocka_unit_test(bn_vgg_32x32_train_matches_pytorch),
        cmocka_unit_test(bn_vgg_40x40_eval_matches_pytorch),
        cmocka_unit_test(bn_vgg_40x40_train_matches_pytorch),
        cmocka_unit_test(frozen_features_keep_classifier_gradients),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    printf("largest relative error against PyTorch: %.3g (bound %.0e)\n", worst_seen, BOUND);
    graft_threads_shutdown();
    return rc;
}
