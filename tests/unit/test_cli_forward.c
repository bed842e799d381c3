/* test_cli_forward.c — `graft forward` as a program: on every parity fixture it writes a
 * safetensors file whose tensor "output" matches PyTorch's (max|graft - torch| <=
 * 1e-4 max|torch|), exits 0 and prints nothing.  The binary is $GRAFT_BIN; outputs go to
 * $GRAFT_TMP and are removed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/threads.h"
#include "fixtures.h"
#include "run_graft.h"
#include "graft/graft.h"

#define BOUND 1e-4

/* max|a - b| / max|b|, b the reference */
static double rel_err(const graft_tensor *a, const graft_tensor *b) {
    assert_int_equal(graft_tensor_ndim(a), graft_tensor_ndim(b));
    for (int i = 0; i < graft_tensor_ndim(b); i++) assert_int_equal(graft_tensor_dim(a, i), graft_tensor_dim(b, i));
    const float *x = graft_tensor_f32_const(a), *y = graft_tensor_f32_const(b);
    assert_non_null(x);
    assert_non_null(y);
    double diff = 0, mag = 0;
    for (int64_t i = 0; i < graft_tensor_numel(b); i++) {
        if (!isfinite(x[i])) return INFINITY;
        diff = fmax(diff, fabs((double)x[i] - y[i]));
        mag = fmax(mag, fabs((double)y[i]));
    }
    return mag > 0 ? diff / mag : diff;
}

/* Replaces the first "dropout=0.5" of arch by "dropout=0" (the train fixtures ran with p=0). */
static void arch_without_dropout(const char *arch, char *buf, size_t size) {
    const char *hit = strstr(arch, "dropout=0.5");
    assert_non_null(hit);
    snprintf(buf, size, "%.*sdropout=0%s", (int)(hit - arch), arch, hit + strlen("dropout=0.5"));
}

/* Runs `graft forward` on fixture NAME_MODE and returns the loaded output file (the
 * caller frees it); the output file itself is removed.  *io_out receives the fixture. */
static graft_tensor_map *forward_fixture_as(const char *name, const char *mode, int train,
                                            const char *arch_override, const char *seed,
                                            graft_tensor_map **io_out) {
    char io_path[256], w_path[256], out_path[512], arch_buf[512], tag[128];
    snprintf(io_path, sizeof io_path, "parity/fixtures/vgg/%s_%s.io.safetensors", name, mode);
    snprintf(w_path, sizeof w_path, "parity/fixtures/vgg/%s_%s.weights.safetensors", name, mode);
    snprintf(tag, sizeof tag, "cli-forward-%s-%s-%s.safetensors", name, mode, seed ? seed : "noseed");
    fx_tmp_path(out_path, sizeof out_path, tag);

    graft_tensor_map *io;
    if (graft_safetensors_load(io_path, &io)) fail_msg("%s", graft_errmsg());
    const char *arch = graft_tensor_map_get_meta(io, "arch");
    assert_non_null(arch);
    assert_string_equal(graft_tensor_map_get_meta(io, "num_classes"), "5");
    assert_string_equal(graft_tensor_map_get_meta(io, "mode"), mode);
    if (arch_override) arch = arch_override;
    else if (train) {
        arch_without_dropout(arch, arch_buf, sizeof arch_buf);
        arch = arch_buf;
    }

    const char *args[16];
    int n = 0;
    args[n++] = "forward";
    args[n++] = "--model";
    args[n++] = arch;
    args[n++] = "--num-classes";
    args[n++] = "5";
    args[n++] = "--weights";
    args[n++] = w_path;
    args[n++] = "--input";
    args[n++] = io_path;
    args[n++] = "--output";
    args[n++] = out_path;
    if (train) args[n++] = "--train-mode";
    if (seed) {
        args[n++] = "--seed";
        args[n++] = seed;
    }
    unlink(out_path);
    long out_bytes, err_bytes;
    int rc = run_graft(args, n, out_path, &out_bytes, &err_bytes);
    if (rc != 0) {
        unlink(out_path);
        fail_msg("graft forward on %s_%s exited with status %d", name, mode, rc);
    }
    assert_int_equal(out_bytes, 0);
    assert_int_equal(err_bytes, 0);

    graft_tensor_map *out;
    graft_status s = graft_safetensors_load(out_path, &out);
    unlink(out_path);
    if (s) fail_msg("%s: %s", out_path, graft_errmsg());
    /* the output file holds the tensor "output" and the arch it was computed with */
    assert_int_equal(graft_tensor_map_size(out), 1);
    assert_non_null(graft_tensor_map_get(out, "output"));
    const char *out_arch = graft_tensor_map_get_meta(out, "arch");
    assert_non_null(out_arch);
    assert_string_equal(out_arch, arch);

    *io_out = io;
    return out;
}

/* The fixture's own mode: --train-mode for the train fixtures. */
static graft_tensor_map *forward_fixture(const char *name, const char *mode, const char *arch_override,
                                         const char *seed, graft_tensor_map **io_out) {
    return forward_fixture_as(name, mode, !strcmp(mode, "train"), arch_override, seed, io_out);
}

static void check(const char *name, const char *mode) {
    graft_tensor_map *io;
    graft_tensor_map *out = forward_fixture(name, mode, NULL, NULL, &io);
    const graft_tensor *y = graft_tensor_map_get(out, "output"), *ref = graft_tensor_map_get(io, "output");
    assert_non_null(ref);
    assert_int_equal(graft_tensor_dtype(y), GRAFT_F32);
    assert_int_equal(graft_tensor_ndim(y), 2);
    assert_int_equal(graft_tensor_dim(y, 0), graft_tensor_dim(graft_tensor_map_get(io, "input"), 0));
    assert_int_equal(graft_tensor_dim(y, 1), 5);
    double e = rel_err(y, ref);
    print_message("%s_%s: relative error %.3g\n", name, mode, e);
    if (!(e <= BOUND)) fail_msg("%s_%s: relative error %.3g exceeds %.0e", name, mode, e, BOUND);
    graft_tensor_map_free(out);
    graft_tensor_map_free(io);
}

static void plain32_eval_matches_pytorch(void **s) { (void)s; check("plain32", "eval"); }
static void plain40_eval_matches_pytorch(void **s) { (void)s; check("plain40", "eval"); }
static void bn32_eval_matches_pytorch(void **s) { (void)s; check("bn32", "eval"); }
static void bn40_eval_matches_pytorch(void **s) { (void)s; check("bn40", "eval"); }
/* --train-mode: BatchNorm uses batch statistics (dropout p=0 as in the fixture) */
static void bn32_train_matches_pytorch(void **s) { (void)s; check("bn32", "train"); }
static void bn40_train_matches_pytorch(void **s) { (void)s; check("bn40", "train"); }
static void plain32_train_matches_pytorch(void **s) { (void)s; check("plain32", "train"); }

/* The control for the train tests: without --train-mode BatchNorm uses its running
 * statistics, which the train fixture's output does not match. */
static void train_fixture_needs_train_mode(void **s) {
    (void)s;
    graft_tensor_map *io;
    graft_tensor_map *out = forward_fixture_as("bn32", "train", 0, NULL, NULL, &io);
    double e = rel_err(graft_tensor_map_get(out, "output"), graft_tensor_map_get(io, "output"));
    print_message("bn32_train without --train-mode: relative error %.3g\n", e);
    assert_true(e > 10 * BOUND);
    graft_tensor_map_free(out);
    graft_tensor_map_free(io);
}

/* Train mode with dropout=0.5: --seed picks the dropout mask, so the same seed gives the
 * same output, another seed another output. */
static void train_mode_dropout_follows_seed(void **s) {
    (void)s;
    graft_tensor_map *io0, *io1, *io2;
    /* the fixture's own spec, dropout=0.5 included */
    graft_tensor_map *probe;
    if (graft_safetensors_load("parity/fixtures/vgg/plain32_train.io.safetensors", &probe)) fail_msg("%s", graft_errmsg());
    char arch[512];
    snprintf(arch, sizeof arch, "%s", graft_tensor_map_get_meta(probe, "arch"));
    graft_tensor_map_free(probe);
    assert_non_null(strstr(arch, "dropout=0.5"));

    graft_tensor_map *a = forward_fixture("plain32", "train", arch, "7", &io0);
    graft_tensor_map *b = forward_fixture("plain32", "train", arch, "7", &io1);
    graft_tensor_map *c = forward_fixture("plain32", "train", arch, "8", &io2);
    const graft_tensor *ya = graft_tensor_map_get(a, "output"), *yb = graft_tensor_map_get(b, "output"),
                       *yc = graft_tensor_map_get(c, "output");
    double same = rel_err(yb, ya), other = rel_err(yc, ya);
    print_message("seed 7 vs 7: %.3g, seed 7 vs 8: %.3g\n", same, other);
    assert_true(same <= 1e-6);
    assert_true(other > 1e-3);
    graft_tensor_map_free(a);
    graft_tensor_map_free(b);
    graft_tensor_map_free(c);
    graft_tensor_map_free(io0);
    graft_tensor_map_free(io1);
    graft_tensor_map_free(io2);
}

/* `graft forward --weights X.pth` on every layout torch.save writes matches the output
 * PyTorch computed from the same file (tests/parity/gen_pth_forward.py). */
static void pth_checkpoints_of_every_layout_match_pytorch(void **s) {
    (void)s;
    static const char *stems[] = {"vgg_zip", "vgg_legacy", "vgg_zip_p4", "vgg_legacy_p4", "vgg_fp16", "vgg_bf16",
                                  "vgg_f64", "nested_state_dict", "nested_model", "dataparallel", "weird_prefix"};
    const char *io_path = "parity/fixtures/pth/forward.io.safetensors";
    graft_tensor_map *io;
    if (graft_safetensors_load(io_path, &io)) fail_msg("%s", graft_errmsg());
    const char *arch = graft_tensor_map_get_meta(io, "arch");
    assert_non_null(arch);
    for (size_t i = 0; i < sizeof stems / sizeof stems[0]; i++) {
        char weights[256], out_path[512], key[128], tag[128];
        snprintf(weights, sizeof weights, "parity/fixtures/pth/%s.pth", stems[i]);
        snprintf(tag, sizeof tag, "pth-%s.safetensors", stems[i]);
        fx_tmp_path(out_path, sizeof out_path, tag);
        const char *args[] = {"forward", "--model", arch, "--num-classes", "10", "--weights", weights,
                              "--input", io_path, "--output", out_path};
        long ob, eb;
        int rc = run_graft(args, 11, out_path, &ob, &eb);
        if (rc) fail_msg("graft forward --weights %s exited with %d", weights, rc);
        graft_tensor_map *out;
        if (graft_safetensors_load(out_path, &out)) fail_msg("%s", graft_errmsg());
        snprintf(key, sizeof key, "output.%s", stems[i]);
        double e = rel_err(graft_tensor_map_get(out, "output"), graft_tensor_map_get(io, key));
        if (!(e <= BOUND)) fail_msg("%s: relative error %.3g exceeds %.0e", weights, e, BOUND);
        graft_tensor_map_free(out);
        unlink(out_path);
    }
    graft_tensor_map_free(io);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pth_checkpoints_of_every_layout_match_pytorch),
        cmocka_unit_test(plain32_eval_matches_pytorch),
        cmocka_unit_test(plain40_eval_matches_pytorch),
        cmocka_unit_test(bn32_eval_matches_pytorch),
        cmocka_unit_test(bn40_eval_matches_pytorch),
        cmocka_unit_test(bn32_train_matches_pytorch),
        cmocka_unit_test(bn40_train_matches_pytorch),
        cmocka_unit_test(plain32_train_matches_pytorch),
        cmocka_unit_test(train_fixture_needs_train_mode),
        cmocka_unit_test(train_mode_dropout_follows_seed),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    graft_threads_shutdown();
    return rc;
}
