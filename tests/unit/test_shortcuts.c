/* test_shortcuts.c — graft's training shortcuts change no result, up to float
 * rounding: the feature cache (same weights and metrics with and without
 * --no-feature-cache, with a deterministic transform and with a random flip, whose both
 * orientations are cached and whose decisions are replayed) and the pooled-linear
 * folding (same weights and metrics with and without --no-fold, over several epochs of
 * SGD with momentum, weight decay and Nesterov, of AdamW, and of Adam without decay);
 * and the fused Linear update changes nothing at all (the same bits with and without
 * --no-fused-update, under SGD and Adam, and for the folded layer under SGD and AdamW). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <string.h>

#include "core/tensor.h"
#include "core/threads.h"
#include "fixtures.h"
#include "graft/graft.h"
#include "run_graft.h"
#include "train/fold.h"

#define BOUND 1e-5
#define SPEC "vgg:cfg=8-M-16-M,bn,hidden=32,pool=2,dropout=0.5"

/* Trains into dir with the common settings plus extra arguments; returns its
 * metrics.jsonl (caller frees). */
static char *train_with(const char *dir, const char *spec, const char *data, const char **extra, int nextra) {
    const char *args[64] = {"train", "--model", spec, "--data", data, "--freeze", "features", "--batch-size", "8",
                            "--epochs", "3", "--threads", "1", "--workers", "0", "--seed", "5", "--out", dir};
    int n = 19;
    for (int i = 0; i < nextra; i++) args[n++] = extra[i];
    char so[760];
    long ob, eb;
    int rc = run_graft(args, n, dir, &ob, &eb);
    if (rc) fail_msg("graft train exited with %d", rc);
    snprintf(so, sizeof so, "%s/metrics.jsonl", dir);
    return fx_read_text(so);
}

static char *train(const char *dir, const char *data, const char *transform, int cache) {
    const char *extra[12] = {"--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9"};
    int n = 6;
    if (transform) {
        extra[n++] = "--transform";
        extra[n++] = transform;
    }
    if (!cache) extra[n++] = "--no-feature-cache";
    return train_with(dir, SPEC, data, extra, n);
}

static void assert_close_runs(const char *a, const char *b) {
    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/last.safetensors", a);
    snprintf(pb, sizeof pb, "%s/last.safetensors", b);
    graft_tensor_map *x, *y;
    if (graft_safetensors_load(pa, &x) || graft_safetensors_load(pb, &y)) fail_msg("%s", graft_errmsg());
    for (size_t i = 0; i < graft_tensor_map_size(x); i++) {
        graft_tensor *t = graft_tensor_map_tensor(x, i), *u = graft_tensor_map_get(y, graft_tensor_map_name(x, i));
        if (!graft_tensor_f32(t)) continue;
        double diff = 0, mag = 0;
        for (int64_t j = 0; j < graft_tensor_numel(t); j++) {
            diff = fmax(diff, fabs((double)graft_tensor_f32(t)[j] - graft_tensor_f32(u)[j]));
            mag = fmax(mag, fabs((double)graft_tensor_f32(u)[j]));
        }
        if (diff > BOUND * fmax(mag, 1e-6)) fail_msg("%s differs by %.3g", graft_tensor_map_name(x, i), diff);
    }
    graft_tensor_map_free(x);
    graft_tensor_map_free(y);
}

static void assert_close_metrics(const char *ma, const char *mb) {
    const char *keys[] = {"train_loss", "train_accuracy"};
    const char *pa = ma, *pb = mb;
    int lines = 0;
    while (*pa && *pb) {
        json_t *ja = json_loads(pa, JSON_DISABLE_EOF_CHECK, NULL), *jb = json_loads(pb, JSON_DISABLE_EOF_CHECK, NULL);
        assert_non_null(ja);
        assert_non_null(jb);
        for (int k = 0; k < 2; k++) {
            double va = json_number_value(json_object_get(ja, keys[k])), vb = json_number_value(json_object_get(jb, keys[k]));
            if (fabs(va - vb) > BOUND * fmax(fabs(vb), 1e-6)) fail_msg("%s: %.9g vs %.9g", keys[k], va, vb);
        }
        json_decref(ja);
        json_decref(jb);
        pa = strchr(pa, '\n');
        pb = strchr(pb, '\n');
        if (!pa || !pb) break;
        pa++, pb++, lines++;
    }
    assert_int_equal(lines, 3);
}

static void cleanup(const char *dir) {
    const char *files[] = {"last.safetensors", "last.state.safetensors", "best.safetensors", "metrics.jsonl",
                           "per_class.csv", "confusion.csv"};
    char path[700];
    for (size_t i = 0; i < 6; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void compare(const char *data, const char *transform, const char *tag) {
    char a[512], b[512], ta[64], tb[64];
    snprintf(ta, sizeof ta, "cache-%s-on", tag);
    snprintf(tb, sizeof tb, "cache-%s-off", tag);
    fx_tmp_path(a, sizeof a, ta);
    fx_tmp_path(b, sizeof b, tb);
    char *ma = train(a, data, transform, 1), *mb = train(b, data, transform, 0);
    assert_non_null(ma);
    assert_non_null(mb);
    assert_close_metrics(ma, mb);
    assert_close_runs(a, b);
    free(ma);
    free(mb);
    cleanup(a);
    cleanup(b);
}

static void cached_and_uncached_runs_agree(void **s) {
    (void)s;
    compare("tensors:parity/fixtures/train/data.safetensors", NULL, "tensors");
}

static void a_random_flip_is_replayed_from_both_cached_orientations(void **s) {
    (void)s;
    compare("tensors:parity/fixtures/train/images_u8.safetensors", "hflip", "flip");
}

/* A feature map of 1x1 that the pool copies into 2x2: the first Linear folds 4 replicas. */
#define SPEC_FOLD "vgg:cfg=8-M-16-M-16-M-16-M,hidden=32,pool=2,dropout=0"

static void assert_same_tensors(const char *a, const char *b, const char *name);

/* Trains spec twice with the options opt, the second time with `off` added too, and
 * compares: bit for bit when exact, else to BOUND (weights and metrics). */
static void compare_switch(const char *tag, const char *spec, const char **opt, int nopt, const char *off,
                           bool exact) {
    char a[512], b[512], ta[64], tb[64];
    snprintf(ta, sizeof ta, "%s-on", tag);
    snprintf(tb, sizeof tb, "%s-off", tag);
    fx_tmp_path(a, sizeof a, ta);
    fx_tmp_path(b, sizeof b, tb);
    const char *extra[16];
    for (int i = 0; i < nopt; i++) extra[i] = opt[i];
    char *ma = train_with(a, spec, "tensors:parity/fixtures/train/data.safetensors", extra, nopt);
    extra[nopt] = off;
    char *mb = train_with(b, spec, "tensors:parity/fixtures/train/data.safetensors", extra, nopt + 1);
    assert_non_null(ma);
    assert_non_null(mb);
    if (exact) {
        assert_same_tensors(a, b, "last.safetensors");
        assert_same_tensors(a, b, "last.state.safetensors");
    } else {
        assert_close_metrics(ma, mb);
        assert_close_runs(a, b);
    }
    free(ma);
    free(mb);
    cleanup(a);
    cleanup(b);
}

static void compare_fold(const char *tag, const char **opt, int nopt) {
    char t[64];
    snprintf(t, sizeof t, "fold-%s", tag);
    compare_switch(t, SPEC_FOLD, opt, nopt, "--no-fold", false);
}

/* The runs above really fold: the 1x1 map is copied 4 times, and Adam's L2 decay, which
 * would not be exact, turns folding off. */
static void folding_applies_to_replicating_pools_only(void **s) {
    (void)s;
    graft_model *m;
    graft_model_options o = graft_model_defaults();
    o.num_classes = 5;
    assert_int_equal(graft_model_create(SPEC_FOLD, &o, &m), GRAFT_OK);
    assert_int_equal(graft_model_freeze(m, "features", 1), GRAFT_OK);
    int chw[3] = {3, 16, 16};
    graft_fold f;
    assert_int_equal(graft_fold_setup(&f, m, chw, GRAFT_OPTIM_SGD, 0.01, true), GRAFT_OK);
    assert_true(f.active);
    assert_int_equal(f.n, 4);
    graft_fold_free(&f);
    assert_int_equal(graft_fold_setup(&f, m, chw, GRAFT_OPTIM_ADAM, 0.01, true), GRAFT_OK);
    assert_false(f.active);
    graft_fold_free(&f);
    int big[3] = {3, 32, 32}; /* a 2x2 map pooled to 2x2: nothing to fold */
    assert_int_equal(graft_fold_setup(&f, m, big, GRAFT_OPTIM_SGD, 0.0, true), GRAFT_OK);
    assert_false(f.active);
    graft_fold_free(&f);
    graft_model_free(m);
}

static void folding_is_exact_under_sgd_with_momentum_decay_and_nesterov(void **s) {
    (void)s;
    const char *opt[] = {"--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "0.01",
                         "--nesterov"};
    compare_fold("sgd", opt, 9);
}

static void folding_is_exact_under_adamw(void **s) {
    (void)s;
    const char *opt[] = {"--optimizer", "adamw", "--lr", "0.003", "--weight-decay", "0.05"};
    compare_fold("adamw", opt, 6);
}

static void folding_is_exact_under_adam_without_decay(void **s) {
    (void)s;
    const char *opt[] = {"--optimizer", "adam", "--lr", "0.003"};
    compare_fold("adam", opt, 4);
}

/* A head wide enough (96 outputs) for the small-batch kernel that feeds the fused
 * update. */
#define SPEC_FUSE "vgg:cfg=8-M-16-M,hidden=96,pool=2,dropout=0.5"

/* Every tensor of name in run a has the same bytes in run b. */
static void assert_same_tensors(const char *a, const char *b, const char *name) {
    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/%s", a, name);
    snprintf(pb, sizeof pb, "%s/%s", b, name);
    graft_tensor_map *x, *y;
    if (graft_safetensors_load(pa, &x) || graft_safetensors_load(pb, &y)) fail_msg("%s", graft_errmsg());
    assert_int_equal(graft_tensor_map_size(x), graft_tensor_map_size(y));
    for (size_t i = 0; i < graft_tensor_map_size(x); i++) {
        const char *key = graft_tensor_map_name(x, i);
        graft_tensor *t = graft_tensor_map_tensor(x, i), *u = graft_tensor_map_get(y, key);
        if (!u || graft_tensor_nbytes(t) != graft_tensor_nbytes(u) ||
            memcmp(t->data, u->data, graft_tensor_nbytes(t)))
            fail_msg("%s: %s differs", name, key);
    }
    graft_tensor_map_free(x);
    graft_tensor_map_free(y);
}

static void compare_fused(const char *tag, const char **opt, int nopt) {
    char t[64];
    snprintf(t, sizeof t, "fuse-%s", tag);
    compare_switch(t, SPEC_FUSE, opt, nopt, "--no-fused-update", true);
}

static void the_fused_update_is_bit_exact_under_sgd(void **s) {
    (void)s;
    const char *opt[] = {"--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "0.01",
                         "--nesterov"};
    compare_fused("sgd", opt, 9);
}

static void the_fused_update_is_bit_exact_under_adam(void **s) {
    (void)s;
    const char *opt[] = {"--optimizer", "adam", "--lr", "0.003", "--weight-decay", "0.01"};
    compare_fused("adam", opt, 6);
}

/* The folded first Linear (1x1 map copied 4 times) takes the fused update too, its
 * pieces scaled as the step scales its gradient (SGD) or its step scaled (AdamW). */
#define SPEC_FOLD_FUSE "vgg:cfg=8-M-16-M-16-M-16-M,hidden=96,pool=2,dropout=0.5"

static void the_fused_update_of_a_folded_layer_is_bit_exact(void **s) {
    (void)s;
    const char *sgd[] = {"--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "0.01"};
    const char *adamw[] = {"--optimizer", "adamw", "--lr", "0.003", "--weight-decay", "0.05"};
    compare_switch("fuse-fold-sgd", SPEC_FOLD_FUSE, sgd, 8, "--no-fused-update", true);
    compare_switch("fuse-fold-adamw", SPEC_FOLD_FUSE, adamw, 6, "--no-fused-update", true);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cached_and_uncached_runs_agree),
        cmocka_unit_test(a_random_flip_is_replayed_from_both_cached_orientations),
        cmocka_unit_test(folding_applies_to_replicating_pools_only),
        cmocka_unit_test(folding_is_exact_under_sgd_with_momentum_decay_and_nesterov),
        cmocka_unit_test(folding_is_exact_under_adamw),
        cmocka_unit_test(folding_is_exact_under_adam_without_decay),
        cmocka_unit_test(the_fused_update_is_bit_exact_under_sgd),
        cmocka_unit_test(the_fused_update_is_bit_exact_under_adam),
        cmocka_unit_test(the_fused_update_of_a_folded_layer_is_bit_exact),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    graft_threads_shutdown();
    return rc;
}
