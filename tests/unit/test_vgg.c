/* test_vgg.c — the VGG family mirrors torchvision: printed form, names, order, counts,
 * initialisation, freezing and head replacement; and its eval forward folds a pool that
 * only copies into the first Linear. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/tensor.h"
#include "core/threads.h"
#include "fixtures.h"
#include "graft/graft.h"
#include "nn/model.h"

#define PLAIN32 "vgg:cfg=8-M-16-M-16-16-M-32-M-32-M,hidden=32,pool=2,dropout=0.5"
#define BN32 "vgg:cfg=8-M-16-16-M-32-M,bn,hidden=32,pool=3,dropout=0.5"

static graft_model *make(const char *arch, int64_t classes, int init) {
    graft_model_options o = graft_model_defaults();
    o.num_classes = classes;
    o.init = init;
    o.seed = 7;
    graft_model *m = NULL;
    graft_status s = graft_model_create(arch, &o, &m);
    if (s) fail_msg("%s: %s", arch, graft_errmsg());
    return m;
}

static void assert_prints_as(const char *arch, int64_t classes, const char *fixture) {
    char path[256];
    snprintf(path, sizeof path, "parity/fixtures/print/%s.txt", fixture);
    char *expected = fx_read_text(path);
    assert_non_null(expected);
    graft_model *m = make(arch, classes, 0);
    char *repr = graft_model_repr(m);
    size_t n = strlen(repr);
    char *line = malloc(n + 2);
    memcpy(line, repr, n);
    memcpy(line + n, "\n", 2); /* print() adds the newline */
    assert_string_equal(line, expected);
    free(line);
    free(repr);
    free(expected);
    graft_model_free(m);
}

static void zoo_models_print_exactly_as_torchvision(void **state) {
    (void)state;
    const char *names[] = {"vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) assert_prints_as(names[i], 0, names[i]);
}

static void num_classes_10_prints_a_10_wide_head(void **state) {
    (void)state;
    assert_prints_as("vgg16", 10, "vgg16_classes10");
}

static void custom_specs_print_exactly_as_torchvision(void **state) {
    (void)state;
    assert_prints_as(PLAIN32, 5, "plain32");
    assert_prints_as(BN32, 5, "bn32");
}

static void parameter_and_key_counts_match_torchvision(void **state) {
    (void)state;
    char *tsv = fx_read_text("parity/fixtures/print/params.tsv");
    assert_non_null(tsv);
    char name[64];
    long long total, keys;
    int consumed = 0;
    const char *p = tsv;
    int rows = 0;
    while (sscanf(p, "%63s %lld %lld%n", name, &total, &keys, &consumed) == 3) {
        p += consumed;
        const char *arch = name;
        int64_t classes = 0;
        if (!strcmp(name, "vgg16_classes10")) arch = "vgg16", classes = 10;
        else if (!strcmp(name, "plain32") || !strcmp(name, "plain40")) arch = PLAIN32, classes = 5;
        else if (!strcmp(name, "bn32") || !strcmp(name, "bn40")) arch = BN32, classes = 5;
        graft_model *m = make(arch, classes, 0);
        int64_t t, tr;
        graft_model_param_counts(m, &t, &tr);
        assert_int_equal(t, total);
        assert_int_equal(tr, total);
        assert_int_equal(graft_model_state_size(m), keys);
        graft_model_free(m);
        rows++;
    }
    assert_int_equal(rows, 13);
    free(tsv);
}

static void assert_state_keys(const char *arch, int64_t classes, const char *fixture) {
    char path[256];
    snprintf(path, sizeof path, "parity/fixtures/state_keys/%s.tsv", fixture);
    char *tsv = fx_read_text(path);
    assert_non_null(tsv);
    graft_model *m = make(arch, classes, 0);
    size_t i = 0;
    for (char *line = strtok(tsv, "\n"); line; line = strtok(NULL, "\n"), i++) {
        assert_true(i < graft_model_state_size(m));
        char expected[512], shape[96];
        graft_tensor *t = graft_model_state_tensor(m, i);
        graft_tensor_shape_str(t, shape, sizeof shape);
        snprintf(expected, sizeof expected, "%s\t%s\t%s", graft_model_state_name(m, i),
                 graft_tensor_dtype(t) == GRAFT_F32 ? "float32" : "int64", shape);
        assert_string_equal(expected, line);
    }
    assert_int_equal(i, graft_model_state_size(m));
    graft_model_free(m);
    free(tsv);
}

static void state_dict_names_order_dtypes_and_shapes_match(void **state) {
    (void)state;
    assert_state_keys("vgg16", 0, "vgg16");
    assert_state_keys("vgg11_bn", 0, "vgg11_bn");
    assert_state_keys(PLAIN32, 5, "plain32");
    assert_state_keys(BN32, 5, "bn32");
}

static void unknown_architecture_is_not_found_and_lists_the_zoo(void **state) {
    (void)state;
    graft_model *m = (graft_model *)1;
    assert_int_equal(graft_model_create("vgg17", NULL, &m), GRAFT_ERR_NOTFOUND);
    assert_null(m);
    assert_non_null(strstr(graft_errmsg(), "vgg17"));
    assert_non_null(strstr(graft_errmsg(), "vgg16_bn"));
}

static void malformed_specs_are_invalid_with_a_reason(void **state) {
    (void)state;
    const char *bad[] = {"vgg:", "vgg:cfg=", "vgg:cfg=8-X", "vgg:cfg=8--M", "vgg:cfg=M-M", "vgg:cfg=8,pool=0",
                         "vgg:cfg=8,hidden=-1", "vgg:cfg=8,dropout=2", "vgg:cfg=8,colour=red", "vgg:cfg=8-"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        graft_model *m = NULL;
        assert_int_equal(graft_model_create(bad[i], NULL, &m), GRAFT_ERR_INVALID);
        assert_null(m);
        assert_non_null(strstr(graft_errmsg(), "vgg spec"));
    }
}

static double std_of(const graft_tensor *t, double *mean) {
    const float *x = graft_tensor_f32_const(t);
    int64_t n = graft_tensor_numel(t);
    double s = 0, ss = 0;
    for (int64_t i = 0; i < n; i++) s += x[i], ss += (double)x[i] * x[i];
    *mean = s / n;
    return sqrt(ss / n - *mean * *mean);
}

static void initialisation_follows_torchvision(void **state) {
    (void)state;
    graft_model *m = make("vgg:cfg=64-M-128,bn,hidden=512,pool=2", 0, 1);
    double mean;
    /* kaiming_normal_(fan_out, relu): std = sqrt(2 / (128 * 3 * 3)) */
    double sd = std_of(graft_model_state_get(m, "features.4.weight"), &mean);
    assert_true(fabs(sd - sqrt(2.0 / (128 * 9))) < 0.02 * sqrt(2.0 / (128 * 9)));
    assert_true(fabs(mean) < 0.002);
    sd = std_of(graft_model_state_get(m, "classifier.0.weight"), &mean); /* N(0, 0.01) */
    assert_true(fabs(sd - 0.01) < 0.0003);
    const char *zeros[] = {"features.0.bias", "features.1.bias", "features.1.running_mean", "classifier.0.bias",
                           "classifier.6.bias"};
    for (size_t i = 0; i < 5; i++) {
        const graft_tensor *t = graft_model_state_get(m, zeros[i]);
        for (int64_t j = 0; j < graft_tensor_numel(t); j++) assert_true(graft_tensor_f32_const(t)[j] == 0.0f);
    }
    const char *ones[] = {"features.1.weight", "features.1.running_var"};
    for (size_t i = 0; i < 2; i++) {
        const graft_tensor *t = graft_model_state_get(m, ones[i]);
        for (int64_t j = 0; j < graft_tensor_numel(t); j++) assert_true(graft_tensor_f32_const(t)[j] == 1.0f);
    }
    graft_model_free(m);
}

static void same_seed_same_weights_other_seed_other_weights(void **state) {
    (void)state;
    graft_model *a = make(PLAIN32, 5, 1), *b = make(PLAIN32, 5, 1);
    graft_model_options o = graft_model_defaults();
    o.seed = 8;
    o.num_classes = 5;
    graft_model *c;
    assert_int_equal(graft_model_create(PLAIN32, &o, &c), GRAFT_OK);
    for (size_t i = 0; i < graft_model_state_size(a); i++) {
        graft_tensor *ta = graft_model_state_tensor(a, i), *tb = graft_model_state_tensor(b, i);
        assert_memory_equal(ta->data, tb->data, graft_tensor_nbytes(ta));
    }
    const graft_tensor *w1 = graft_model_state_get(a, "features.0.weight"), *w3 = graft_model_state_get(c, "features.0.weight");
    assert_true(memcmp(w1->data, w3->data, graft_tensor_nbytes(w1)) != 0);
    graft_model_free(a);
    graft_model_free(b);
    graft_model_free(c);
}

static graft_tensor *random_input(int64_t n, int64_t c, int64_t h, int64_t w, unsigned seed) {
    int64_t shape[4] = {n, c, h, w};
    graft_tensor *x;
    assert_int_equal(graft_tensor_create(GRAFT_F32, 4, shape, &x), GRAFT_OK);
    srand(seed);
    for (int64_t i = 0; i < graft_tensor_numel(x); i++) graft_tensor_f32(x)[i] = (float)rand() / RAND_MAX - 0.5f;
    return x;
}

static void replacing_the_head_changes_the_output_width_and_frees_the_old_head(void **state) {
    (void)state;
    graft_model *m = make("vgg:cfg=8-M-16-M,hidden=64,pool=2", 0, 1);
    graft_tensor *x = random_input(3, 3, 16, 16, 1);
    const graft_tensor *y;
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    assert_int_equal(graft_tensor_dim(y, 1), 1000);
    size_t before = graft_tensor_bytes_in_use();
    assert_int_equal(graft_model_replace_linear(m, "classifier.6", 10, 3), GRAFT_OK);
    size_t after = graft_tensor_bytes_in_use();
    /* the 1000x64 weight, 1000 bias and the [3, 1000] output buffer went; a 10x64
     * weight and 10 bias came (the new layer's output is allocated by its first forward) */
    assert_int_equal(before - after, ((size_t)(1000 - 10) * (64 + 1) + 3 * 1000) * sizeof(float));
    assert_int_equal(graft_model_num_classes(m), 10);
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    assert_int_equal(graft_tensor_dim(y, 0), 3);
    assert_int_equal(graft_tensor_dim(y, 1), 10);
    /* nn.Linear's default: U(-1/sqrt(64), 1/sqrt(64)) for weight and bias */
    const graft_tensor *w = graft_model_state_get(m, "classifier.6.weight");
    double lo = 1, hi = -1;
    for (int64_t i = 0; i < graft_tensor_numel(w); i++) {
        lo = fmin(lo, graft_tensor_f32_const(w)[i]);
        hi = fmax(hi, graft_tensor_f32_const(w)[i]);
    }
    assert_true(lo >= -0.125 && hi <= 0.125 && hi - lo > 0.2);
    graft_tensor_free(x);
    graft_model_free(m);
}

static void replacing_something_that_is_not_a_linear_fails(void **state) {
    (void)state;
    graft_model *m = make("vgg:cfg=8-M,hidden=16,pool=1", 0, 0);
    assert_int_equal(graft_model_replace_linear(m, "classifier.1", 10, 0), GRAFT_ERR_INVALID);
    assert_non_null(strstr(graft_errmsg(), "ReLU"));
    assert_int_equal(graft_model_replace_linear(m, "classifier.9", 10, 0), GRAFT_ERR_NOTFOUND);
    assert_int_equal(graft_model_replace_linear(m, "classifier.6", 0, 0), GRAFT_ERR_INVALID);
    graft_model_free(m);
}

static void freezing_by_prefix_changes_trainable_counts(void **state) {
    (void)state;
    graft_model *m = make(BN32, 5, 0);
    int64_t total, trainable;
    assert_int_equal(graft_model_freeze(m, "features", 1), GRAFT_OK);
    graft_model_param_counts(m, &total, &trainable);
    assert_int_equal(graft_model_param_trainable(m, "features.0.weight"), 0);
    assert_int_equal(graft_model_param_trainable(m, "classifier.0.weight"), 1);
    assert_int_equal(graft_model_param_trainable(m, "features.1.running_mean"), -1);
    int64_t classifier = 288 * 32 + 32 + 32 * 32 + 32 + 32 * 5 + 5;
    assert_int_equal(trainable, classifier);
    assert_int_equal(graft_model_freeze(m, "features.0", 0), GRAFT_OK);
    assert_int_equal(graft_model_param_trainable(m, "features.0.weight"), 1);
    assert_int_equal(graft_model_param_trainable(m, "features.1.weight"), 0);
    assert_int_equal(graft_model_freeze(m, "features.99", 1), GRAFT_ERR_NOTFOUND);
    assert_int_equal(graft_model_freeze(m, "feat", 1), GRAFT_ERR_NOTFOUND);
    assert_int_equal(graft_model_freeze(m, "", 1), GRAFT_OK);
    graft_model_param_counts(m, &total, &trainable);
    assert_int_equal(trainable, 0);
    graft_model_free(m);
}

static graft_tensor *ones_like(const graft_tensor *y) {
    graft_tensor *g;
    int64_t shape[2] = {graft_tensor_dim(y, 0), graft_tensor_dim(y, 1)};
    assert_int_equal(graft_tensor_create(GRAFT_F32, 2, shape, &g), GRAFT_OK);
    for (int64_t i = 0; i < graft_tensor_numel(g); i++) graft_tensor_f32(g)[i] = 1.0f / (float)(i + 1);
    return g;
}

static void frozen_features_get_no_gradient_and_no_backward_work(void **state) {
    (void)state;
    graft_model *m = make(BN32, 5, 1);
    graft_model_set_training(m, 1);
    graft_tensor *x = random_input(2, 3, 32, 32, 2);
    const graft_tensor *y;
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    graft_tensor *g = ones_like(y);
    uint64_t ops0 = graft_model_backward_op_count(m);
    assert_int_equal(graft_model_backward(m, g, NULL), GRAFT_OK);
    uint64_t all_layers = graft_model_backward_op_count(m) - ops0;

    assert_int_equal(graft_model_freeze(m, "features", 1), GRAFT_OK);
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    ops0 = graft_model_backward_op_count(m);
    assert_int_equal(graft_model_backward(m, g, NULL), GRAFT_OK);
    uint64_t head_only = graft_model_backward_op_count(m) - ops0;
    /* classifier: 7 layers; the first Linear needs no input gradient, and nothing of
     * flatten, avgpool or the 15 feature layers runs */
    assert_int_equal(head_only, 7);
    assert_true(all_layers > 7 + 15);
    assert_null(graft_model_grad(m, "features.0.weight"));
    assert_null(graft_model_grad(m, "features.1.weight"));
    assert_non_null(graft_model_grad(m, "classifier.0.weight"));

    /* with only the last Linear trainable, one layer runs */
    assert_int_equal(graft_model_freeze(m, "classifier", 1), GRAFT_OK);
    assert_int_equal(graft_model_freeze(m, "classifier.6", 0), GRAFT_OK);
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    ops0 = graft_model_backward_op_count(m);
    assert_int_equal(graft_model_backward(m, g, NULL), GRAFT_OK);
    assert_int_equal(graft_model_backward_op_count(m) - ops0, 1);
    graft_tensor_free(g);
    graft_tensor_free(x);
    graft_model_free(m);
}

/* Outside training, AdaptiveAvgPool2d + Flatten + Linear where the pool only copies the
 * 1x1 map (32x32 input) run as one smaller Linear on the map, the replicas' weights
 * summed: the output and, from a backward after it, every gradient and the input's are
 * those of the unfolded layers (train mode with dropout 0, the same function) up to
 * rounding.  At 64x64 the map is already 2x2 and nothing is folded. */
static void eval_folds_a_copying_pool_into_the_first_linear(void **state) {
    (void)state;
    static const char *const grads[] = {"classifier.0.weight", "classifier.0.bias", "classifier.3.weight",
                                        "features.0.weight", "features.14.weight"};
    graft_model *m = make("vgg:cfg=8-M-16-M-16-16-M-32-M-32-M,hidden=32,pool=2,dropout=0", 5, 1);
    graft_module *fc0 = graft_module_find(graft_model_root(m), "classifier.0");
    assert_non_null(fc0);
    graft_tensor *x = random_input(3, 3, 32, 32, 4), *want[2 + 5], *got[2 + 5];
    for (int mode = 1; mode >= 0; mode--) {
        graft_tensor **keep = mode ? want : got;
        graft_model_set_training(m, mode);
        graft_model_zero_grad(m);
        const graft_tensor *y, *dx;
        assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
        if (mode) assert_null(fc0->aux); /* training runs unfolded */
        else assert_non_null(fc0->aux);  /* the folded weight */
        assert_int_equal(graft_tensor_clone(y, &keep[0]), GRAFT_OK);
        graft_tensor *g = ones_like(y);
        assert_int_equal(graft_model_backward(m, g, &dx), GRAFT_OK);
        assert_int_equal(graft_tensor_clone(dx, &keep[1]), GRAFT_OK);
        for (int i = 0; i < 5; i++) assert_int_equal(graft_tensor_clone(graft_model_grad(m, grads[i]), &keep[2 + i]), GRAFT_OK);
        graft_tensor_free(g);
    }
    for (int i = 0; i < 7; i++) {
        const float *a = graft_tensor_f32_const(got[i]), *b = graft_tensor_f32_const(want[i]);
        double diff = 0, mag = 1e-30;
        for (int64_t j = 0; j < graft_tensor_numel(want[i]); j++) {
            diff = fmax(diff, fabs((double)a[j] - b[j]));
            mag = fmax(mag, fabs((double)b[j]));
        }
        if (diff > 1e-5 * mag) fail_msg("tensor %d: eval differs from train by %.3g of %.3g", i, diff, mag);
        graft_tensor_free(got[i]);
        graft_tensor_free(want[i]);
    }
    graft_tensor_free(x);
    graft_model_free(m);

    m = make("vgg:cfg=8-M-16-M-16-16-M-32-M-32-M,hidden=32,pool=2,dropout=0", 5, 1);
    fc0 = graft_module_find(graft_model_root(m), "classifier.0");
    graft_model_set_training(m, 0);
    x = random_input(2, 3, 64, 64, 5);
    const graft_tensor *y;
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    assert_null(fc0->aux);
    graft_tensor_free(x);
    graft_model_free(m);
}

static void frozen_batchnorm_uses_and_keeps_running_stats_in_train_mode(void **state) {
    (void)state;
    graft_model *m = make(BN32, 5, 1);
    graft_module *seq = graft_model_root(m)->children[0];
    graft_module *features = seq->children[seq->nchildren - 1]; /* its output is the features' */
    graft_tensor *x = random_input(2, 3, 32, 32, 3);
    const graft_tensor *y;
    graft_model_set_training(m, 0);
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    graft_tensor *eval_features;
    assert_int_equal(graft_tensor_clone(&features->out, &eval_features), GRAFT_OK);

    assert_int_equal(graft_model_freeze(m, "features", 1), GRAFT_OK);
    graft_model_set_training(m, 1);
    graft_tensor *rm_before;
    assert_int_equal(graft_tensor_clone(graft_model_state_get(m, "features.1.running_mean"), &rm_before), GRAFT_OK);
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    /* same numbers as eval mode, running statistics untouched */
    assert_memory_equal(features->out.data, eval_features->data, graft_tensor_nbytes(eval_features));
    const graft_tensor *rm = graft_model_state_get(m, "features.1.running_mean");
    assert_memory_equal(rm->data, rm_before->data, graft_tensor_nbytes(rm));
    assert_int_equal(graft_tensor_i64(graft_model_state_get(m, "features.1.num_batches_tracked"))[0], 0);

    /* unfrozen, train mode normalises with batch statistics and updates the running ones */
    assert_int_equal(graft_model_freeze(m, "features", 0), GRAFT_OK);
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    assert_true(memcmp(features->out.data, eval_features->data, graft_tensor_nbytes(eval_features)) != 0);
    assert_true(memcmp(rm->data, rm_before->data, graft_tensor_nbytes(rm)) != 0);
    assert_int_equal(graft_tensor_i64(graft_model_state_get(m, "features.1.num_batches_tracked"))[0], 1);
    graft_tensor_free(rm_before);
    graft_tensor_free(eval_features);
    graft_tensor_free(x);
    graft_model_free(m);
}

static void forward_rejects_wrong_input_shapes_naming_the_layer(void **state) {
    (void)state;
    graft_model *m = make(BN32, 5, 0);
    graft_tensor *x = random_input(2, 1, 32, 32, 4);
    const graft_tensor *y;
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_ERR_SHAPE);
    assert_null(y);
    assert_non_null(strstr(graft_errmsg(), "features.0 (Conv2d)"));
    assert_non_null(strstr(graft_errmsg(), "[2, 1, 32, 32]"));
    assert_non_null(strstr(graft_errmsg(), "[8, 3, 3, 3]"));
    graft_tensor_free(x);
    /* too small for three 2x2 max-pools */
    x = random_input(2, 3, 4, 4, 4);
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(), "MaxPool2d"));
    graft_tensor_free(x);
    int64_t shape2[2] = {2, 3};
    assert_int_equal(graft_tensor_create(GRAFT_F32, 2, shape2, &x), GRAFT_OK);
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(), "input"));
    graft_tensor_free(x);
    graft_model_free(m);
}

static void backward_rejects_a_gradient_of_the_wrong_shape(void **state) {
    (void)state;
    graft_model *m = make(BN32, 5, 0);
    graft_tensor *x = random_input(2, 3, 32, 32, 5);
    const graft_tensor *y;
    int64_t shape[2] = {2, 6};
    graft_tensor *g;
    assert_int_equal(graft_tensor_create(GRAFT_F32, 2, shape, &g), GRAFT_OK);
    assert_int_equal(graft_model_backward(m, g, NULL), GRAFT_ERR_INVALID); /* no forward yet */
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    assert_int_equal(graft_model_backward(m, g, NULL), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(), "[2, 6]"));
    assert_non_null(strstr(graft_errmsg(), "[2, 5]"));
    graft_tensor_free(g);
    graft_tensor_free(x);
    graft_model_free(m);
}

static void loading_a_state_dict_is_strict_and_reports_like_pytorch(void **state) {
    (void)state;
    graft_model *src = make("vgg:cfg=8-M,hidden=16,pool=1", 0, 1);
    graft_model *dst = make("vgg:cfg=8-M,hidden=16,pool=1", 10, 0);
    graft_tensor_map *sd;
    assert_int_equal(graft_model_state_dict(src, &sd), GRAFT_OK);
    assert_int_equal(graft_model_load_state(dst, sd), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(),
                           "size mismatch for classifier.6.weight: copying a param with shape [1000, 16] from "
                           "checkpoint, the shape in current model is [10, 16]"));
    graft_tensor_map_free(sd);
    graft_model_free(dst);

    dst = make("vgg:cfg=8-M,hidden=16,pool=1", 0, 0);
    assert_int_equal(graft_model_state_dict(src, &sd), GRAFT_OK);
    int64_t one[1] = {1};
    graft_tensor *extra;
    assert_int_equal(graft_tensor_create(GRAFT_F32, 1, one, &extra), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(sd, "fc.weight", extra), GRAFT_OK);
    assert_int_equal(graft_model_load_state(dst, sd), GRAFT_ERR_NOTFOUND);
    assert_non_null(strstr(graft_errmsg(), "Unexpected key(s) in state_dict: \"fc.weight\""));
    graft_tensor_map_free(sd);

    graft_model *bn = make("vgg:cfg=8-M,bn,hidden=16,pool=1", 0, 0);
    assert_int_equal(graft_model_state_dict(src, &sd), GRAFT_OK);
    assert_int_equal(graft_model_load_state(bn, sd), GRAFT_ERR_NOTFOUND);
    assert_non_null(strstr(graft_errmsg(), "Missing key(s) in state_dict:"));
    assert_non_null(strstr(graft_errmsg(), "\"features.1.running_var\""));
    graft_tensor_map_free(sd);

    assert_int_equal(graft_model_state_dict(src, &sd), GRAFT_OK);
    assert_int_equal(graft_model_load_state(dst, sd), GRAFT_OK);
    const graft_tensor *a = graft_model_state_get(src, "features.0.weight"), *b = graft_model_state_get(dst, "features.0.weight");
    assert_memory_equal(a->data, b->data, graft_tensor_nbytes(a));
    graft_tensor_map_free(sd);
    graft_model_free(bn);
    graft_model_free(dst);
    graft_model_free(src);
}

/* The trainer's lazy zero_grad: after it and a backward every gradient equals what
 * graft_model_zero_grad and the same backward give (Linear's are overwritten by a
 * kernel of their own, the convolutions' zeroed and accumulated); a second backward
 * without zeroing adds; a gradient read before any backward reads zero. */
static void lazy_zero_grad_reads_as_zero_grad(void **state) {
    (void)state;
    graft_model *a = make(PLAIN32, 5, 1), *b = make(PLAIN32, 5, 1);
    graft_model_set_training(a, 0);
    graft_model_set_training(b, 0);
    int64_t xs[4] = {3, 3, 32, 32}, gs[2] = {3, 5};
    graft_tensor *x, *g;
    assert_int_equal(graft_tensor_create(GRAFT_F32, 4, xs, &x), GRAFT_OK);
    assert_int_equal(graft_tensor_create(GRAFT_F32, 2, gs, &g), GRAFT_OK);
    for (int64_t i = 0; i < graft_tensor_numel(x); i++) ((float *)x->data)[i] = (float)((i * 37 % 101) - 50) / 50.0f;
    for (int64_t i = 0; i < graft_tensor_numel(g); i++) ((float *)g->data)[i] = (float)((i * 13 % 7) - 3) / 3.0f;
    const graft_tensor *y;
    for (int pass = 0; pass < 2; pass++) { /* the first backward allocates, the second reuses */
        graft_model_zero_grad(a);
        graft_model_zero_grad_lazy(b);
        if (pass == 1)
            for (size_t i = 0; i < graft_model_state_size(b); i++) {
                const char *name = graft_model_state_name(b, i);
                graft_tensor *gb = graft_model_grad(b, name);
                if (!gb) continue;
                for (int64_t k = 0; k < graft_tensor_numel(gb); k++) assert_true(((float *)gb->data)[k] == 0.0f);
                graft_model_zero_grad_lazy(b); /* reading settled them: make them lazy again */
            }
        for (int r = 0; r < 2; r++) { /* the second round accumulates */
            assert_int_equal(graft_model_forward(a, x, &y), GRAFT_OK);
            assert_int_equal(graft_model_backward(a, g, NULL), GRAFT_OK);
            assert_int_equal(graft_model_forward(b, x, &y), GRAFT_OK);
            assert_int_equal(graft_model_backward(b, g, NULL), GRAFT_OK);
        }
        for (size_t i = 0; i < graft_model_state_size(a); i++) {
            const char *name = graft_model_state_name(a, i);
            graft_tensor *ga = graft_model_grad(a, name), *gb = graft_model_grad(b, name);
            assert_true((ga == NULL) == (gb == NULL));
            if (!ga) continue;
            double diff = 0, mag = 1e-30;
            for (int64_t k = 0; k < graft_tensor_numel(ga); k++) {
                double u = ((float *)ga->data)[k], v = ((float *)gb->data)[k];
                diff = fmax(diff, fabs(u - v));
                mag = fmax(mag, fabs(u));
            }
            if (diff / mag > 1e-5) fail_msg("%s: lazy and eager gradients differ by %.3g", name, diff / mag);
        }
    }
    graft_tensor_free(x);
    graft_tensor_free(g);
    graft_model_free(a);
    graft_model_free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(zoo_models_print_exactly_as_torchvision),
        cmocka_unit_test(num_classes_10_prints_a_10_wide_head),
        cmocka_unit_test(custom_specs_print_exactly_as_torchvision),
        cmocka_unit_test(lazy_zero_grad_reads_as_zero_grad),
        cmocka_unit_test(parameter_and_key_counts_match_torchvision),
        cmocka_unit_test(state_dict_names_order_dtypes_and_shapes_match),
        cmocka_unit_test(unknown_architecture_is_not_found_and_lists_the_zoo),
        cmocka_unit_test(malformed_specs_are_invalid_with_a_reason),
        cmocka_unit_test(initialisation_follows_torchvision),
        cmocka_unit_test(same_seed_same_weights_other_seed_other_weights),
        cmocka_unit_test(replacing_the_head_changes_the_output_width_and_frees_the_old_head),
        cmocka_unit_test(replacing_something_that_is_not_a_linear_fails),
        cmocka_unit_test(freezing_by_prefix_changes_trainable_counts),
        cmocka_unit_test(frozen_features_get_no_gradient_and_no_backward_work),
        cmocka_unit_test(frozen_batchnorm_uses_and_keeps_running_stats_in_train_mode),
        cmocka_unit_test(eval_folds_a_copying_pool_into_the_first_linear),
        cmocka_unit_test(forward_rejects_wrong_input_shapes_naming_the_layer),
        cmocka_unit_test(backward_rejects_a_gradient_of_the_wrong_shape),
        cmocka_unit_test(loading_a_state_dict_is_strict_and_reports_like_pytorch),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    graft_threads_shutdown();
    return rc;
}
