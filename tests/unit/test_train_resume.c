/* test_train_resume.c — a run stopped and resumed ends exactly where an uninterrupted
 * one does (one thread): same weights bit for bit, same metrics.jsonl but for timings;
 * and two runs with the same seed are identical. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "core/threads.h"
#include "fixtures.h"
#include "graft/graft.h"
#include "run_graft.h"

#define DATA "tensors:parity/fixtures/train/data.safetensors"
#define SPEC "vgg:cfg=8-M-16-M,bn,hidden=32,pool=2,dropout=0.5"

/* graft train into dir with the common settings plus extra arguments; returns the status. */
static int train(const char *dir, const char **extra, int nextra) {
    const char *args[48] = {"train", "--model", SPEC, "--data", DATA, "--batch-size", "8", "--epochs", "3",
                            "--optimizer", "adamw", "--lr", "0.003"};
    int n = 13;
    args[n++] = "--threads";
    args[n++] = "1";
    args[n++] = "--workers";
    args[n++] = "0";
    args[n++] = "--seed";
    args[n++] = "7";
    args[n++] = "--quiet";
    args[n++] = "--out";
    args[n++] = dir;
    for (int i = 0; i < nextra; i++) args[n++] = extra[i];
    long ob, eb;
    return run_graft(args, n, dir, &ob, &eb);
}

static int resume(const char *dir) {
    const char *args[] = {"train", "--resume", dir, "--threads", "1", "--workers", "0", "--quiet"};
    long ob, eb;
    return run_graft(args, 8, dir, &ob, &eb);
}

static void assert_same_tensors(const char *a_path, const char *b_path) {
    graft_tensor_map *a, *b;
    if (graft_safetensors_load(a_path, &a) || graft_safetensors_load(b_path, &b)) fail_msg("%s", graft_errmsg());
    assert_int_equal(graft_tensor_map_size(a), graft_tensor_map_size(b));
    for (size_t i = 0; i < graft_tensor_map_size(a); i++) {
        graft_tensor *x = graft_tensor_map_tensor(a, i), *y = graft_tensor_map_get(b, graft_tensor_map_name(a, i));
        assert_non_null(y);
        assert_int_equal(graft_tensor_nbytes(x), graft_tensor_nbytes(y));
        if (memcmp(graft_tensor_f32(x) ? (void *)graft_tensor_f32(x) : (void *)graft_tensor_i64(x),
                   graft_tensor_f32(y) ? (void *)graft_tensor_f32(y) : (void *)graft_tensor_i64(y),
                   graft_tensor_nbytes(x)))
            fail_msg("%s differs between %s and %s", graft_tensor_map_name(a, i), a_path, b_path);
    }
    graft_tensor_map_free(a);
    graft_tensor_map_free(b);
}

/* metrics.jsonl without the timing fields, which legitimately differ. */
static char *metrics_without_timings(const char *dir) {
    char path[700];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    char *text = fx_read_text(path);
    assert_non_null(text);
    char *out = text, *w = text;
    for (char *r = text; *r;) {
        if (!strncmp(r, ",\"images_per_s\"", 15)) { /* drop up to the end of the object */
            while (*r && *r != '}') r++;
            continue;
        }
        *w++ = *r++;
    }
    *w = 0;
    return out;
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

static void a_stopped_and_resumed_run_ends_bit_identical(void **s) {
    (void)s;
    char a[512], b[512], pa[700], pb[700];
    fx_tmp_path(a, sizeof a, "resume-a");
    fx_tmp_path(b, sizeof b, "resume-b");
    assert_int_equal(train(a, NULL, 0), 0);
    /* stop twice: in the middle of epoch 1, then in the middle of epoch 2 */
    const char *stop3[] = {"--max-steps", "3"};
    assert_int_equal(train(b, stop3, 2), 0);
    const char *args[] = {"train", "--resume", b, "--threads", "1", "--workers", "0", "--quiet", "--max-steps", "4"};
    long ob, eb;
    assert_int_equal(run_graft(args, 10, b, &ob, &eb), 0);
    assert_int_equal(resume(b), 0);
    snprintf(pa, sizeof pa, "%s/last.safetensors", a);
    snprintf(pb, sizeof pb, "%s/last.safetensors", b);
    assert_same_tensors(pa, pb);
    char *ma = metrics_without_timings(a), *mb = metrics_without_timings(b);
    assert_string_equal(ma, mb);
    assert_int_equal(strlen(ma) > 0, 1);
    free(ma);
    free(mb);
    cleanup(a);
    cleanup(b);
}

static void the_same_seed_gives_the_same_run(void **s) {
    (void)s;
    char a[512], b[512], pa[700], pb[700];
    fx_tmp_path(a, sizeof a, "same-a");
    fx_tmp_path(b, sizeof b, "same-b");
    assert_int_equal(train(a, NULL, 0), 0);
    assert_int_equal(train(b, NULL, 0), 0);
    snprintf(pa, sizeof pa, "%s/best.safetensors", a);
    snprintf(pb, sizeof pb, "%s/best.safetensors", b);
    assert_same_tensors(pa, pb);
    char *ma = metrics_without_timings(a), *mb = metrics_without_timings(b);
    assert_string_equal(ma, mb);
    free(ma);
    free(mb);
    cleanup(a);
    cleanup(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_stopped_and_resumed_run_ends_bit_identical),
        cmocka_unit_test(the_same_seed_gives_the_same_run),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    graft_threads_shutdown();
    return rc;
}
