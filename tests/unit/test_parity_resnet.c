/* test_parity_resnet.c — graft reproduces PyTorch 1.13 on small ResNets built with
 * torchvision's own ResNet, BasicBlock, Bottleneck and _make_layer (fixtures from
 * tests/parity/gen_resnet_fixtures.py): outputs, loss, every parameter gradient, the input
 * gradient, and in train mode the updated BatchNorm running statistics, bound
 * max|graft - torch| <= 1e-4 max|torch|; with parts of the network frozen, the gradients
 * that remain are PyTorch's; and `graft train` for one epoch (3 SGD steps), with the trunk
 * frozen and with everything trainable, ends within 1e-5 relative of PyTorch's weights. */
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
#include "fixtures.h"
#include "graft/graft.h"
#include "run_graft.h"

#define BOUND 1e-4
#define TRAIN_BOUND 1e-5
#define DIR "parity/fixtures/resnet"
#define CLASSES 5

static double worst_seen, worst_train; /* reported at the end */

/* max|a - b| / max|b| with b the PyTorch value */
static double rel_err(const graft_tensor *a, const graft_tensor *b) {
    assert_int_equal(graft_tensor_numel(a), graft_tensor_numel(b));
    const float *x = graft_tensor_f32_const(a), *y = graft_tensor_f32_const(b);
    double diff = 0, mag = 0;
    for (int64_t i = 0; i < graft_tensor_numel(b); i++) {
        if (!isfinite(x[i])) return INFINITY;
        diff = fmax(diff, fabs((double)x[i] - y[i]));
        mag = fmax(mag, fabs((double)y[i]));
    }
    return mag > 0 ? diff / mag : diff;
}

static void assert_close(const char *what, const graft_tensor *a, const graft_tensor *b) {
    double e = rel_err(a, b);
    if (e > worst_seen) worst_seen = e;
    if (!(e <= BOUND)) fail_msg("%s: relative error %.3g exceeds %.0e", what, e, BOUND);
}

static graft_tensor *io(graft_tensor_map *m, const char *name) {
    graft_tensor *t = graft_tensor_map_get(m, name);
    if (!t) fail_msg("fixture lacks %s", name);
    return t;
}

/* The fixture's model with its initial weights, in the fixture's mode. */
static graft_model *load_model(const char *model, graft_tensor_map *fx, const char *mode) {
    graft_model_options o = graft_model_defaults();
    o.num_classes = CLASSES;
    o.init = 0;
    graft_model *m;
    const char *arch = graft_tensor_map_get_meta(fx, "arch");
    assert_non_null(arch);
    if (graft_model_create(arch, &o, &m)) fail_msg("%s: %s", arch, graft_errmsg());
    char path[256];
    snprintf(path, sizeof path, DIR "/%s.weights.safetensors", model);
    if (graft_model_load_safetensors(m, path)) fail_msg("%s", graft_errmsg());
    graft_model_set_training(m, !strcmp(mode, "train"));
    return m;
}

/* Freezes what `freeze` names: NULL nothing; "trunk" everything but fc; otherwise a
 * space-separated list of module paths. */
static void apply_freeze(graft_model *m, const char *freeze) {
    if (!freeze) return;
    if (!strcmp(freeze, "trunk")) {
        assert_int_equal(graft_model_freeze(m, "", 1), GRAFT_OK);
        assert_int_equal(graft_model_freeze(m, "fc", 0), GRAFT_OK);
        return;
    }
    char buf[256];
    snprintf(buf, sizeof buf, "%s", freeze);
    for (char *save, *p = strtok_r(buf, " ", &save); p; p = strtok_r(NULL, " ", &save))
        assert_int_equal(graft_model_freeze(m, p, 1), GRAFT_OK);
}

/* Runs forward, loss and backward on fixture MODEL_SIZE_MODE and compares everything it
 * recorded.  Frozen runs use eval-mode fixtures only (where freezing changes no number)
 * and still ask for the input gradient, which must flow through the frozen layers. */
static void check(const char *model, int size, const char *mode, const char *freeze) {
    char path[256], what[512];
    snprintf(path, sizeof path, DIR "/%s_%d_%s.io.safetensors", model, size, mode);
    graft_tensor_map *fx;
    if (graft_safetensors_load(path, &fx)) fail_msg("%s", graft_errmsg());
    assert_string_equal(graft_tensor_map_get_meta(fx, "mode"), mode);
    assert_true(!freeze || !strcmp(mode, "eval"));
    graft_model *m = load_model(model, fx, mode);
    apply_freeze(m, freeze);
    const char *tag = freeze ? freeze : "";

    const graft_tensor *y;
    assert_int_equal(graft_model_forward(m, io(fx, "input"), &y), GRAFT_OK);
    snprintf(what, sizeof what, "%s_%d %s [%s] output", model, size, mode, tag);
    assert_close(what, y, io(fx, "output"));

    graft_tensor *dy;
    assert_int_equal(graft_tensor_clone(y, &dy), GRAFT_OK);
    double loss;
    assert_int_equal(graft_cross_entropy(y, io(fx, "labels"), &loss, dy), GRAFT_OK);
    double torch_loss = graft_tensor_f32(io(fx, "loss"))[0];
    assert_true(fabs(loss - torch_loss) <= BOUND * fabs(torch_loss));

    const graft_tensor *dx = NULL;
    assert_int_equal(graft_model_backward(m, dy, &dx), GRAFT_OK);
    snprintf(what, sizeof what, "%s_%d %s [%s] grad_input", model, size, mode, tag);
    assert_non_null(dx);
    assert_close(what, dx, io(fx, "grad_input"));

    int grads = 0, frozen = 0;
    for (size_t i = 0; i < graft_model_state_size(m); i++) {
        const char *key = graft_model_state_name(m, i);
        int trainable = graft_model_param_trainable(m, key);
        char fixture_key[200];
        if (trainable < 0) { /* a buffer: after a train-mode forward, PyTorch's updated value */
            if (strcmp(mode, "train")) continue;
            snprintf(fixture_key, sizeof fixture_key, "after.%s", key);
            graft_tensor *t = graft_model_state_tensor(m, i), *ref = io(fx, fixture_key);
            if (graft_tensor_dtype(t) == GRAFT_I64) {
                assert_int_equal(graft_tensor_i64(t)[0], graft_tensor_i64(ref)[0]);
            } else {
                snprintf(what, sizeof what, "%s_%d %s %s", model, size, mode, fixture_key);
                assert_close(what, t, ref);
            }
            continue;
        }
        const graft_tensor *g = graft_model_grad(m, key);
        if (!trainable) {
            assert_null(g);
            frozen++;
            continue;
        }
        snprintf(fixture_key, sizeof fixture_key, "grad.%s", key);
        snprintf(what, sizeof what, "%s_%d %s [%s] %s", model, size, mode, tag, fixture_key);
        if (!g) fail_msg("%s: no gradient", what);
        assert_close(what, g, io(fx, fixture_key));
        grads++;
    }
    assert_true(grads > 0);
    assert_true(freeze ? frozen > 0 : frozen == 0);
    graft_tensor_free(dy);
    graft_model_free(m);
    graft_tensor_map_free(fx);
}

static void basic_blocks_40x40_eval_match_pytorch(void **s) { (void)s; check("basic", 40, "eval", NULL); }
static void basic_blocks_40x40_train_match_pytorch(void **s) { (void)s; check("basic", 40, "train", NULL); }
static void bottlenecks_36x36_eval_match_pytorch(void **s) { (void)s; check("bottleneck", 36, "eval", NULL); }
static void bottlenecks_36x36_train_match_pytorch(void **s) { (void)s; check("bottleneck", 36, "train", NULL); }

/* fc alone trainable: its gradients are PyTorch's, the input gradient still flows back
 * through every block. */
static void a_frozen_trunk_keeps_the_head_gradients(void **s) {
    (void)s;
    check("basic", 40, "eval", "trunk");
    check("bottleneck", 36, "eval", "trunk");
}

/* The stem and layer1 frozen: layer2.0 is the lowest trainable block, so it computes no
 * input gradient, yet both of its branches get their parameter gradients. */
static void a_frozen_stem_and_first_stage_keep_the_other_gradients(void **s) {
    (void)s;
    check("basic", 40, "eval", "conv1 bn1 layer1");
    check("bottleneck", 36, "eval", "conv1 bn1 layer1");
}

/* Blocks frozen in part: a frozen downsample beside a trainable residual branch, and a
 * residual branch frozen below its middle convolution. */
static void partly_frozen_blocks_keep_the_other_gradients(void **s) {
    (void)s;
    check("basic", 40, "eval", "layer2.0.downsample layer3.0.conv1 layer3.0.bn1");
    check("bottleneck", 36, "eval", "layer2.0.downsample layer3.0.conv1 layer3.0.bn1 layer3.0.conv2");
    check("bottleneck", 36, "eval", "conv1 bn1 layer1 layer2.0.conv1 layer2.0.bn1 layer2.0.conv2");
}

/* ---- K optimiser steps through `graft train` -------------------------------------------- */

static void train_check(const char *expected, const char **extra, int nextra, int trunk_frozen) {
    char out[512], tag[64], init[256];
    snprintf(tag, sizeof tag, "resnet-%s", expected);
    fx_tmp_path(out, sizeof out, tag);
    snprintf(init, sizeof init, DIR "/bottleneck.weights.safetensors");
    graft_tensor_map *start;
    if (graft_safetensors_load(init, &start)) fail_msg("%s", graft_errmsg());
    const char *arch = graft_tensor_map_get_meta(start, "arch");
    assert_non_null(arch);
    const char *args[60] = {"train", "--model", arch, "--num-classes", "5", "--weights", init,
                            "--data", "tensors:" DIR "/data.safetensors", "--no-shuffle",
                            "--batch-size", "8", "--epochs", "1", "--threads", "1", "--workers", "0",
                            "--quiet", "--out", out};
    int n = 21;
    for (int i = 0; i < nextra; i++) args[n++] = extra[i];
    long ob, eb;
    int rc = run_graft(args, n, out, &ob, &eb);
    if (rc) fail_msg("graft train for %s exited with %d", expected, rc);

    char path[700];
    graft_tensor_map *got, *want;
    snprintf(path, sizeof path, "%s/last.safetensors", out);
    if (graft_safetensors_load(path, &got)) fail_msg("%s", graft_errmsg());
    snprintf(path, sizeof path, DIR "/%s.safetensors", expected);
    if (graft_safetensors_load(path, &want)) fail_msg("%s", graft_errmsg());
    assert_int_equal(graft_tensor_map_size(got), graft_tensor_map_size(want));
    for (size_t i = 0; i < graft_tensor_map_size(want); i++) {
        const char *name = graft_tensor_map_name(want, i);
        graft_tensor *g = graft_tensor_map_get(got, name), *w = graft_tensor_map_tensor(want, i);
        if (!g) fail_msg("%s: graft's checkpoint lacks %s", expected, name);
        if (graft_tensor_dtype(w) == GRAFT_I64) {
            assert_int_equal(graft_tensor_i64(g)[0], graft_tensor_i64(w)[0]);
            continue;
        }
        if (trunk_frozen && strncmp(name, "fc.", 3)) { /* untouched, bit for bit */
            graft_tensor *s0 = graft_tensor_map_get(start, name);
            assert_memory_equal(graft_tensor_f32(g), graft_tensor_f32(s0), graft_tensor_nbytes(s0));
            continue;
        }
        double e = rel_err(g, w);
        if (e > worst_train) worst_train = e;
        if (!(e <= TRAIN_BOUND)) fail_msg("%s: %s differs from PyTorch by %.3g relative", expected, name, e);
    }
    graft_tensor_map_free(got);
    graft_tensor_map_free(want);
    graft_tensor_map_free(start);
    const char *files[] = {"last.safetensors", "last.state.safetensors", "best.safetensors", "metrics.jsonl",
                           "per_class.csv", "confusion.csv"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", out, files[i]);
        unlink(path);
    }
    rmdir(out);
}

static void three_sgd_steps_with_the_trunk_frozen_match_pytorch(void **s) {
    (void)s;
    const char *extra[] = {"--freeze", "trunk", "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9",
                           "--weight-decay", "5e-4"};
    train_check("train_frozen", extra, 10, 1);
}

static void three_sgd_steps_with_everything_trainable_match_pytorch(void **s) {
    (void)s;
    const char *extra[] = {"--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9"};
    train_check("train_all", extra, 6, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(basic_blocks_40x40_eval_match_pytorch),
        cmocka_unit_test(basic_blocks_40x40_train_match_pytorch),
        cmocka_unit_test(bottlenecks_36x36_eval_match_pytorch),
        cmocka_unit_test(bottlenecks_36x36_train_match_pytorch),
        cmocka_unit_test(a_frozen_trunk_keeps_the_head_gradients),
        cmocka_unit_test(a_frozen_stem_and_first_stage_keep_the_other_gradients),
        cmocka_unit_test(partly_frozen_blocks_keep_the_other_gradients),
        cmocka_unit_test(three_sgd_steps_with_the_trunk_frozen_match_pytorch),
        cmocka_unit_test(three_sgd_steps_with_everything_trainable_match_pytorch),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    printf("largest relative error against PyTorch: %.3g (bound %.0e); after training: %.3g (bound %.0e)\n",
           worst_seen, BOUND, worst_train, TRAIN_BOUND);
    graft_threads_shutdown();
    return rc;
}
