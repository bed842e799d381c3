/* test_resnet.c — the ResNet family mirrors torchvision: printed form, names, order,
 * counts, initialisation, the pretrained registry, the forward as steps, freezing (no
 * backward work below the lowest trainable layer; frozen BatchNorm keeps its running
 * statistics) and head replacement. */
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
#include "nn/arch.h"
#include "nn/layers.h"
#include "nn/model.h"

#define BASIC "resnet:block=basic,layers=1-2-1-1,width=8"
#define BOTTLENECK "resnet:block=bottleneck,layers=1-2-1-1,width=4"
#define TINY "resnet:block=basic,layers=1-1-1-1,width=4"

static graft_model *make(const char *arch, int64_t classes, int init) {
    graft_model_options o = graft_model_defaults();
    o.num_classes = classes;
    o.init = init;
    o.seed = 7;
    graft_model *m = NULL;
    if (graft_model_create(arch, &o, &m)) fail_msg("%s: %s", arch, graft_errmsg());
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
    const char *names[] = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) assert_prints_as(names[i], 0, names[i]);
    assert_prints_as("resnet50", 10, "resnet50_classes10");
}

static void custom_specs_print_exactly_as_torchvision(void **state) {
    (void)state;
    assert_prints_as(BASIC, 5, "resnet_basic");
    assert_prints_as(BOTTLENECK, 5, "resnet_bottleneck");
}

static void parameter_and_key_counts_match_torchvision(void **state) {
    (void)state;
    char *tsv = fx_read_text("parity/fixtures/resnet/params.tsv");
    assert_non_null(tsv);
    char name[64];
    long long total, keys;
    int consumed = 0, rows = 0;
    for (const char *p = tsv; sscanf(p, "%63s %lld %lld%n", name, &total, &keys, &consumed) == 3; p += consumed) {
        const char *arch = name;
        int64_t classes = 0;
        if (!strcmp(name, "resnet50_classes10")) arch = "resnet50", classes = 10;
        else if (!strcmp(name, "resnet_basic")) arch = BASIC, classes = 5;
        else if (!strcmp(name, "resnet_bottleneck")) arch = BOTTLENECK, classes = 5;
        graft_model *m = make(arch, classes, 0);
        int64_t t, tr;
        graft_model_param_counts(m, &t, &tr);
        assert_int_equal(t, total);
        assert_int_equal(tr, total);
        assert_int_equal(graft_model_state_size(m), keys);
        graft_model_free(m);
        rows++;
    }
    assert_int_equal(rows, 8);
    free(tsv);
}

static void assert_state_keys(const char *arch, int64_t classes, const char *fixture) {
    char path[256];
    snprintf(path, sizeof path, "parity/fixtures/resnet/state_keys_%s.tsv", fixture);
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
    assert_state_keys("resnet18", 0, "resnet18");
    assert_state_keys("resnet50", 0, "resnet50");
    assert_state_keys(BASIC, 5, "basic");
    assert_state_keys(BOTTLENECK, 5, "bottleneck");
    graft_model *m = make("resnet50", 0, 0);
    assert_non_null(graft_model_state_get(m, "layer3.1.bn2.running_var"));
    assert_non_null(graft_model_state_get(m, "layer4.0.downsample.1.num_batches_tracked"));
    assert_string_equal(graft_model_head_path(m), "fc");
    assert_int_equal(graft_model_num_classes(m), 1000);
    graft_model_free(m);
}

static void malformed_specs_are_invalid_with_a_reason(void **state) {
    (void)state;
    const char *bad[] = {"resnet:",
                         "resnet:layers=1-1-1-1",
                         "resnet:block=basic",
                         "resnet:block=wide,layers=1-1-1-1",
                         "resnet:block=basic,layers=1-1-1",
                         "resnet:block=basic,layers=1-1-1-1-1",
                         "resnet:block=basic,layers=1-0-1-1",
                         "resnet:block=basic,layers=1--1-1",
                         "resnet:block=basic,layers=1-1-1-x",
                         "resnet:block=basic,layers=1-1-1-1,width=0",
                         "resnet:block=basic,layers=1-1-1-1,width=+8",
                         "resnet:block=basic,layers=1-1-1-1,groups=2",
                         "resnet:block=basic,layers=1-1-1-1,"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        graft_model *m = NULL;
        if (graft_model_create(bad[i], NULL, &m) != GRAFT_ERR_INVALID) fail_msg("%s was accepted", bad[i]);
        assert_null(m);
        assert_non_null(strstr(graft_errmsg(), "resnet spec"));
    }
    graft_model *m = (graft_model *)1;
    assert_int_equal(graft_model_create("resnet51", NULL, &m), GRAFT_ERR_NOTFOUND);
    assert_null(m);
    assert_non_null(strstr(graft_errmsg(), "resnet152"));
}

static void width_and_input_channels_shape_the_stem_and_stages(void **state) {
    (void)state;
    graft_model *m = make("resnet:block=bottleneck,layers=1-1-2-1,width=16,in=1", 0, 0);
    int64_t stem[4] = {16, 1, 7, 7};
    const graft_tensor *w = graft_model_state_get(m, "conv1.weight");
    for (int i = 0; i < 4; i++) assert_int_equal(graft_tensor_dim(w, i), stem[i]);
    assert_int_equal(graft_model_in_channels(m), 1);
    /* planes 16·2^3 = 128, expansion 4 */
    assert_int_equal(graft_tensor_dim(graft_model_state_get(m, "fc.weight"), 1), 512);
    assert_non_null(graft_model_state_get(m, "layer3.1.conv3.weight"));
    assert_null(graft_model_state_get(m, "layer3.1.downsample.0.weight")); /* same shape: identity */
    assert_null(graft_model_state_get(m, "layer3.2.conv1.weight"));
    graft_model_free(m);
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
    graft_model *m = make("resnet:block=bottleneck,layers=1-1-1-1,width=32", 0, 1);
    double mean;
    /* kaiming_normal_(fan_out, relu): layer4.0.conv2 is 256 -> 256, 3x3 */
    double want = sqrt(2.0 / (256 * 9));
    double sd = std_of(graft_model_state_get(m, "layer4.0.conv2.weight"), &mean);
    assert_true(fabs(sd - want) < 0.02 * want);
    assert_true(fabs(mean) < 0.02 * want);
    want = sqrt(2.0 / (32 * 49)); /* the stem: 32 outputs, 7x7 */
    sd = std_of(graft_model_state_get(m, "conv1.weight"), &mean);
    assert_true(fabs(sd - want) < 0.1 * want);
    /* fc: nn.Linear's default, U(-1/sqrt(1024), 1/sqrt(1024)) for weight and bias */
    const char *fc[] = {"fc.weight", "fc.bias"};
    for (int k = 0; k < 2; k++) {
        const graft_tensor *t = graft_model_state_get(m, fc[k]);
        double lo = 1, hi = -1;
        for (int64_t i = 0; i < graft_tensor_numel(t); i++) {
            lo = fmin(lo, graft_tensor_f32_const(t)[i]);
            hi = fmax(hi, graft_tensor_f32_const(t)[i]);
        }
        assert_true(lo >= -1.0 / 32 && hi <= 1.0 / 32 && hi - lo > 1.0 / 32);
    }
    /* BatchNorm weight 1, bias 0 (also the last BN of each block: zero_init_residual=False) */
    const char *ones[] = {"bn1.weight", "layer1.0.bn3.weight", "layer2.0.downsample.1.weight", "layer4.0.bn1.running_var"};
    const char *zeros[] = {"bn1.bias", "layer1.0.bn3.bias", "layer3.0.bn2.running_mean"};
    for (size_t i = 0; i < 4; i++) {
        const graft_tensor *t = graft_model_state_get(m, ones[i]);
        for (int64_t j = 0; j < graft_tensor_numel(t); j++) assert_true(graft_tensor_f32_const(t)[j] == 1.0f);
    }
    for (size_t i = 0; i < 3; i++) {
        const graft_tensor *t = graft_model_state_get(m, zeros[i]);
        for (int64_t j = 0; j < graft_tensor_numel(t); j++) assert_true(graft_tensor_f32_const(t)[j] == 0.0f);
    }
    graft_model_free(m);
}

static void the_registry_has_torchvision_weights_and_defaults(void **state) {
    (void)state;
    struct {
        const char *arch, *version, *file;
    } want[] = {
        {"resnet18", NULL, "resnet18-f37072fd.pth"},       {"resnet34", NULL, "resnet34-b627a593.pth"},
        {"resnet50", NULL, "resnet50-11ad3fa6.pth"},       {"resnet50", "v1", "resnet50-0676ba61.pth"},
        {"resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth"}, {"resnet101", "v1", "resnet101-63fe2227.pth"},
        {"resnet101", NULL, "resnet101-cd907fc2.pth"},     {"resnet152", "v1", "resnet152-394f9c45.pth"},
        {"resnet152", NULL, "resnet152-f82ba261.pth"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const graft_pretrained *p = graft_pretrained_find(want[i].arch, want[i].version);
        if (!p) fail_msg("%s %s: %s", want[i].arch, want[i].version ? want[i].version : "default", graft_errmsg());
        assert_string_equal(p->file, want[i].file);
        assert_int_equal(p->input_size, 224);
        /* torchvision 0.14: ResNet*_Weights.IMAGENET1K_V2 resize to 232, V1 to 256 */
        assert_int_equal(p->resize_size, strstr(p->version, "V2") ? 232 : 256);
    }
    assert_null(graft_pretrained_find("resnet18", "v2"));
    int zoo = 0;
    for (const char *const *n = graft_zoo_names(); *n; n++) zoo += !strncmp(*n, "resnet", 6);
    assert_int_equal(zoo, 5);
}

/* The step list graft_resnet_build returns: what the feature cache runs. */
static void the_forward_is_eleven_steps_ending_in_the_current_head(void **state) {
    (void)state;
    graft_rng rng;
    graft_rng_seed(&rng, 1);
    graft_module *root;
    graft_arch_info info;
    assert_int_equal(graft_resnet_build(TINY, true, &rng, &root, &info), GRAFT_OK);
    assert_string_equal(info.head_path, "fc");
    assert_int_equal(info.nsteps, 11);
    const char *names[] = {"conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"};
    for (int i = 0; i < 9; i++) assert_ptr_equal(info.steps[i], graft_module_find(root, names[i]));
    assert_string_equal(info.steps[9]->type->name, "Flatten");

    int64_t shape[4] = {2, 3, 20, 20};
    graft_tensor *x;
    assert_int_equal(graft_tensor_create(GRAFT_F32, 4, shape, &x), GRAFT_OK);
    for (int64_t i = 0; i < graft_tensor_numel(x); i++) graft_tensor_f32(x)[i] = (float)((i * 37) % 11) - 5.0f;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    graft_tensor *whole, *stepwise;
    assert_int_equal(graft_module_forward(root, &ctx, x, &whole), GRAFT_OK);
    assert_int_equal(graft_tensor_dim(whole, 1), 1000);
    graft_tensor *ref;
    assert_int_equal(graft_tensor_clone(whole, &ref), GRAFT_OK);
    /* prefix once, then the rest: the same numbers */
    graft_tensor *feat;
    assert_int_equal(graft_sequence_forward(info.steps, 10, &ctx, x, &feat), GRAFT_OK);
    assert_int_equal(graft_tensor_dim(feat, 1), 32);
    assert_int_equal(graft_sequence_forward(info.steps + 10, 1, &ctx, feat, &stepwise), GRAFT_OK);
    assert_memory_equal(stepwise->data, ref->data, graft_tensor_nbytes(ref));

    /* replacing fc (as --num-classes does) frees the old one; the last step runs the new */
    int fc = 0;
    while (strcmp(root->children[fc]->name, "fc")) fc++;
    graft_module *fresh = graft_linear_new(32, 7, true);
    assert_non_null(fresh);
    graft_module_replace_child(root, fc, fresh);
    assert_true(graft_module_has_trainable(info.steps[10]));
    assert_int_equal(graft_sequence_forward(info.steps, 11, &ctx, x, &stepwise), GRAFT_OK);
    assert_int_equal(graft_tensor_dim(stepwise, 1), 7);
    graft_tensor_free(ref);
    graft_tensor_free(x);
    graft_module_free(root);
    graft_ctx_release(&ctx);
}

static graft_tensor *random_input(int64_t n, int64_t c, int64_t h, int64_t w, unsigned seed) {
    int64_t shape[4] = {n, c, h, w};
    graft_tensor *x;
    assert_int_equal(graft_tensor_create(GRAFT_F32, 4, shape, &x), GRAFT_OK);
    srand(seed);
    for (int64_t i = 0; i < graft_tensor_numel(x); i++) graft_tensor_f32(x)[i] = (float)rand() / RAND_MAX - 0.5f;
    return x;
}

/* A fixed grad_output [n, k]. */
static graft_tensor *grad_output(int64_t n, int64_t k) {
    graft_tensor *g;
    int64_t shape[2] = {n, k};
    assert_int_equal(graft_tensor_create(GRAFT_F32, 2, shape, &g), GRAFT_OK);
    for (int64_t i = 0; i < graft_tensor_numel(g); i++) graft_tensor_f32(g)[i] = 1.0f / (float)(i + 1);
    return g;
}

static uint64_t backward_ops(graft_model *m, const graft_tensor *x, const graft_tensor *g, int want_dx) {
    const graft_tensor *y, *dx = NULL;
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    uint64_t before = graft_model_backward_op_count(m);
    assert_int_equal(graft_model_backward(m, g, want_dx ? &dx : NULL), GRAFT_OK);
    if (want_dx) assert_non_null(dx);
    return graft_model_backward_op_count(m) - before;
}

static void frozen_layers_get_no_gradient_and_no_backward_work(void **state) {
    (void)state;
    graft_model *m = make(TINY, 5, 1);
    graft_model_set_training(m, 1);
    graft_tensor *x = random_input(2, 3, 32, 32, 2), *g = grad_output(2, 5);
    /* every leaf once: stem 4 + 4 blocks (5 + relu after the add) + 3 downsamples (2) +
     * avgpool, flatten, fc */
    uint64_t all = backward_ops(m, x, g, 0);
    assert_int_equal(all, 4 + 4 * 6 + 3 * 2 + 3);

    /* the trunk frozen: fc alone, without an input gradient */
    assert_int_equal(graft_model_freeze(m, "", 1), GRAFT_OK);
    assert_int_equal(graft_model_freeze(m, "fc", 0), GRAFT_OK);
    assert_int_equal(backward_ops(m, x, g, 0), 1);
    assert_null(graft_model_grad(m, "layer4.0.conv1.weight"));
    assert_non_null(graft_model_grad(m, "fc.weight"));

    /* layer4 trainable: fc, flatten, avgpool, then layer4's block with no input gradient
     * (its residual branch 5, downsample 2, the ReLU after the add) */
    assert_int_equal(graft_model_freeze(m, "layer4", 0), GRAFT_OK);
    assert_int_equal(backward_ops(m, x, g, 0), 3 + 8);
    assert_non_null(graft_model_grad(m, "layer4.0.downsample.0.weight"));
    assert_null(graft_model_grad(m, "layer3.0.conv1.weight"));

    /* layer4.0.conv2 and bn2 alone: the block's conv1, bn1, relu and downsample stay idle */
    assert_int_equal(graft_model_freeze(m, "layer4", 1), GRAFT_OK);
    assert_int_equal(graft_model_freeze(m, "layer4.0.conv2", 0), GRAFT_OK);
    assert_int_equal(graft_model_freeze(m, "layer4.0.bn2", 0), GRAFT_OK);
    assert_int_equal(backward_ops(m, x, g, 0), 3 + 3);
    assert_null(graft_model_grad(m, "layer4.0.downsample.0.weight"));

    /* everything frozen but the input gradient asked for: every layer runs */
    assert_int_equal(graft_model_freeze(m, "", 1), GRAFT_OK);
    assert_int_equal(backward_ops(m, x, g, 1), all);
    assert_int_equal(backward_ops(m, x, g, 0), 0);
    graft_tensor_free(g);
    graft_tensor_free(x);
    graft_model_free(m);
}

static void a_frozen_trunk_in_train_mode_computes_what_eval_mode_does(void **state) {
    (void)state;
    graft_model *m = make(BOTTLENECK, 5, 1);
    /* give BatchNorm non-trivial running statistics */
    for (size_t i = 0; i < graft_model_state_size(m); i++) {
        const char *name = graft_model_state_name(m, i);
        graft_tensor *t = graft_model_state_tensor(m, i);
        if (strstr(name, "running_mean") || strstr(name, "running_var"))
            for (int64_t j = 0; j < graft_tensor_numel(t); j++)
                graft_tensor_f32(t)[j] = (strstr(name, "var") ? 1.0f : 0.0f) + 0.1f * (float)(j % 5);
    }
    graft_tensor *x = random_input(3, 3, 36, 36, 3);
    const graft_tensor *y;
    graft_model_set_training(m, 0);
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    graft_tensor *eval_out, *rv_before;
    assert_int_equal(graft_tensor_clone(y, &eval_out), GRAFT_OK);
    assert_int_equal(graft_tensor_clone(graft_model_state_get(m, "layer2.1.bn3.running_var"), &rv_before), GRAFT_OK);

    assert_int_equal(graft_model_freeze(m, "", 1), GRAFT_OK);
    assert_int_equal(graft_model_freeze(m, "fc", 0), GRAFT_OK);
    graft_model_set_training(m, 1);
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    assert_memory_equal(y->data, eval_out->data, graft_tensor_nbytes(eval_out));
    const graft_tensor *rv = graft_model_state_get(m, "layer2.1.bn3.running_var");
    assert_memory_equal(rv->data, rv_before->data, graft_tensor_nbytes(rv));
    assert_int_equal(graft_tensor_i64(graft_model_state_get(m, "layer2.1.bn3.num_batches_tracked"))[0], 0);

    /* trainable, train mode uses batch statistics and updates the running ones */
    assert_int_equal(graft_model_freeze(m, "", 0), GRAFT_OK);
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    assert_true(memcmp(y->data, eval_out->data, graft_tensor_nbytes(eval_out)) != 0);
    assert_true(memcmp(rv->data, rv_before->data, graft_tensor_nbytes(rv)) != 0);
    assert_int_equal(graft_tensor_i64(graft_model_state_get(m, "layer2.1.bn3.num_batches_tracked"))[0], 1);
    graft_tensor_free(rv_before);
    graft_tensor_free(eval_out);
    graft_tensor_free(x);
    graft_model_free(m);
}

/* Forward twice and backward twice on the same input give the same numbers: no block
 * keeps state from the previous pass that it should not (in-place adds, shared ReLU). */
static void repeated_passes_are_identical(void **state) {
    (void)state;
    graft_model *m = make(BASIC, 5, 1);
    graft_model_set_training(m, 0);
    graft_tensor *x = random_input(2, 3, 24, 24, 4), *g = grad_output(2, 5);
    const graft_tensor *y, *dx;
    graft_tensor *y1, *dx1, *gw1;
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    assert_int_equal(graft_tensor_clone(y, &y1), GRAFT_OK);
    assert_int_equal(graft_model_backward(m, g, &dx), GRAFT_OK);
    assert_int_equal(graft_tensor_clone(dx, &dx1), GRAFT_OK);
    assert_int_equal(graft_tensor_clone(graft_model_grad(m, "layer2.1.conv1.weight"), &gw1), GRAFT_OK);
    graft_model_zero_grad(m);
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    assert_memory_equal(y->data, y1->data, graft_tensor_nbytes(y1));
    assert_int_equal(graft_model_backward(m, g, &dx), GRAFT_OK);
    assert_memory_equal(dx->data, dx1->data, graft_tensor_nbytes(dx1));
    assert_memory_equal(graft_model_grad(m, "layer2.1.conv1.weight")->data, gw1->data, graft_tensor_nbytes(gw1));
    /* the input is never written */
    graft_tensor *x2 = random_input(2, 3, 24, 24, 4);
    assert_memory_equal(x->data, x2->data, graft_tensor_nbytes(x));
    graft_tensor_free(x2);
    graft_tensor_free(gw1);
    graft_tensor_free(dx1);
    graft_tensor_free(y1);
    graft_tensor_free(g);
    graft_tensor_free(x);
    graft_model_free(m);
}

static void forward_rejects_wrong_input_channels_naming_the_layer(void **state) {
    (void)state;
    graft_model *m = make(TINY, 5, 0);
    graft_tensor *x = random_input(2, 1, 32, 32, 5);
    const graft_tensor *y;
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_ERR_SHAPE);
    assert_null(y);
    assert_non_null(strstr(graft_errmsg(), "conv1 (Conv2d)"));
    assert_non_null(strstr(graft_errmsg(), "[2, 1, 32, 32]"));
    graft_tensor_free(x);
    graft_model_free(m);
}

static void the_head_is_fc_and_num_classes_replaces_it(void **state) {
    (void)state;
    graft_model *m = make(TINY, 10, 1);
    assert_int_equal(graft_model_num_classes(m), 10);
    graft_tensor *x = random_input(3, 3, 32, 32, 6);
    const graft_tensor *y;
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    assert_int_equal(graft_tensor_dim(y, 0), 3);
    assert_int_equal(graft_tensor_dim(y, 1), 10);
    assert_int_equal(graft_model_replace_linear(m, "fc", 4, 1), GRAFT_OK);
    assert_int_equal(graft_model_forward(m, x, &y), GRAFT_OK);
    assert_int_equal(graft_tensor_dim(y, 1), 4);
    assert_int_equal(graft_model_replace_linear(m, "layer1.0.relu", 4, 1), GRAFT_ERR_INVALID);
    graft_tensor_free(x);
    graft_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(zoo_models_print_exactly_as_torchvision),
        cmocka_unit_test(custom_specs_print_exactly_as_torchvision),
        cmocka_unit_test(parameter_and_key_counts_match_torchvision),
        cmocka_unit_test(state_dict_names_order_dtypes_and_shapes_match),
        cmocka_unit_test(malformed_specs_are_invalid_with_a_reason),
        cmocka_unit_test(width_and_input_channels_shape_the_stem_and_stages),
        cmocka_unit_test(initialisation_follows_torchvision),
        cmocka_unit_test(the_registry_has_torchvision_weights_and_defaults),
        cmocka_unit_test(the_forward_is_eleven_steps_ending_in_the_current_head),
        cmocka_unit_test(frozen_layers_get_no_gradient_and_no_backward_work),
        cmocka_unit_test(a_frozen_trunk_in_train_mode_computes_what_eval_mode_does),
        cmocka_unit_test(repeated_passes_are_identical),
        cmocka_unit_test(forward_rejects_wrong_input_channels_naming_the_layer),
        cmocka_unit_test(the_head_is_fc_and_num_classes_replaces_it),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    graft_threads_shutdown();
    return rc;
}
