/* test_train_parity.c — `graft train` reproduces PyTorch's optimisation: from the same
 * initial weights, on the same data in the same order with dropout 0, one epoch of SGD
 * (momentum, weight decay, nesterov on and off) and of AdamW with the features frozen
 * leaves every parameter within 1e-5 relative of PyTorch's, and the frozen ones bit-
 * identical to the start; one step with trainable BatchNorm (batch statistics, running
 * statistics updated) matches too.  Fixtures: tests/parity/gen_train_fixtures.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>

#include "core/threads.h"
#include "fixtures.h"
#include "graft/graft.h"
#include "run_graft.h"

#define BOUND 1e-5
#define DIR "parity/fixtures/train"

static double worst;

static double rel_err(const graft_tensor *a, const graft_tensor *b) {
    const float *x = graft_tensor_f32_const(a), *y = graft_tensor_f32_const(b);
    double diff = 0, mag = 0;
    for (int64_t i = 0; i < graft_tensor_numel(b); i++) {
        diff = fmax(diff, fabs((double)x[i] - y[i]));
        mag = fmax(mag, fabs((double)y[i]));
    }
    return mag > 0 ? diff / mag : diff;
}

/* Trains with graft (extra arguments appended) into a fresh run folder and compares
 * last.safetensors with the fixture `expected`. */
static void check(const char *expected, const char *init, const char *arch, const char **extra, int nextra,
                  int features_frozen) {
    char out[512], tag[64];
    snprintf(tag, sizeof tag, "train-%s", expected);
    fx_tmp_path(out, sizeof out, tag);
    const char *args[60] = {"train", "--model", arch, "--num-classes", "5", "--weights", init,
                            "--data", "tensors:" DIR "/data.safetensors", "--no-shuffle", "--dropout", "0",
                            "--batch-size", "8", "--epochs", "1", "--threads", "1", "--workers", "0",
                            "--quiet", "--out", out};
    int n = 23;
    for (int i = 0; i < nextra; i++) args[n++] = extra[i];
    long ob, eb;
    int rc = run_graft(args, n, out, &ob, &eb);
    if (rc) fail_msg("graft train for %s exited with %d", expected, rc);

    char path[700];
    graft_tensor_map *got, *want, *start;
    snprintf(path, sizeof path, "%s/last.safetensors", out);
    if (graft_safetensors_load(path, &got)) fail_msg("%s", graft_errmsg());
    snprintf(path, sizeof path, DIR "/%s.safetensors", expected);
    if (graft_safetensors_load(path, &want)) fail_msg("%s", graft_errmsg());
    if (graft_safetensors_load(init, &start)) fail_msg("%s", graft_errmsg());
    assert_int_equal(graft_tensor_map_size(got), graft_tensor_map_size(want));
    for (size_t i = 0; i < graft_tensor_map_size(want); i++) {
        const char *name = graft_tensor_map_name(want, i);
        graft_tensor *g = graft_tensor_map_get(got, name), *w = graft_tensor_map_tensor(want, i);
        assert_non_null(g);
        if (graft_tensor_dtype(w) == GRAFT_I64) {
            assert_int_equal(graft_tensor_i64(g)[0], graft_tensor_i64(w)[0]);
            continue;
        }
        if (features_frozen && !strncmp(name, "features.", 9)) { /* untouched, bit for bit */
            graft_tensor *s0 = graft_tensor_map_get(start, name);
            assert_memory_equal(graft_tensor_f32(g), graft_tensor_f32(s0), graft_tensor_nbytes(s0));
            continue;
        }
        double e = rel_err(g, w);
        if (e > worst) worst = e;
        if (!(e <= BOUND)) fail_msg("%s: %s differs from PyTorch by %.3g relative", expected, name, e);
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

#define SPEC "vgg:cfg=8-M-16-M,hidden=32,pool=2,dropout=0.5"
#define SPEC_BN "vgg:cfg=8-M-16-M,bn,hidden=32,pool=2,dropout=0.5"

static void sgd_with_momentum_and_weight_decay_matches_pytorch(void **s) {
    (void)s;
    const char *extra[] = {"--freeze", "features", "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9",
                           "--weight-decay", "5e-4"};
    check("sgd", DIR "/init.safetensors", SPEC, extra, 10, 1);
}

static void sgd_nesterov_matches_pytorch(void **s) {
    (void)s;
    const char *extra[] = {"--freeze", "features", "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9",
                           "--weight-decay", "5e-4", "--nesterov"};
    check("sgd_nesterov", DIR "/init.safetensors", SPEC, extra, 11, 1);
}

static void adamw_matches_pytorch(void **s) {
    (void)s;
    const char *extra[] = {"--freeze", "features", "--optimizer", "adamw", "--lr", "1e-3"};
    check("adamw", DIR "/init.safetensors", SPEC, extra, 6, 1);
}

static void one_step_with_trainable_batchnorm_matches_pytorch(void **s) {
    (void)s;
    const char *extra[] = {"--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9", "--max-steps", "1"};
    check("bn_all", DIR "/init_bn.safetensors", SPEC_BN, extra, 8, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sgd_with_momentum_and_weight_decay_matches_pytorch),
        cmocka_unit_test(sgd_nesterov_matches_pytorch),
        cmocka_unit_test(adamw_matches_pytorch),
        cmocka_unit_test(one_step_with_trainable_batchnorm_matches_pytorch),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    printf("largest relative parameter difference from PyTorch: %.3g (bound %.0e)\n", worst, BOUND);
    graft_threads_shutdown();
    return rc;
}
