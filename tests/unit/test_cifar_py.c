/* test_cifar_py.c — CIFAR-10 and CIFAR-100 from torchvision's python-version folders.
 *
 * The committed fixtures (tests/parity/gen_dataset_fixtures.py) are pickled as the real
 * files are and come with what torchvision's CIFAR10/CIFAR100 classes make of them; the
 * bad-input tests write their own pickles opcode by opcode. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/tensor.h"
#include "data/cifar_py.h"
#include "data/fetch_cifar.h"
#include "data/loader.h"
#include "data/source.h"
#include "graft/graft.h"

#define FIXTURES "parity/fixtures/datasets"
#define CIFAR10 FIXTURES "/cifar10"
#define CIFAR100 FIXTURES "/cifar100"
#define PATH_BYTES 4096
#define PIXELS 3072

extern char **environ;

static char scratch[1024];

static int make_scratch(void **state) {
    (void)state;
    const char *base = getenv("GRAFT_TMP");
    snprintf(scratch, sizeof scratch, "%s/graft_test_cifar_py.XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(scratch) ? 0 : -1;
}

static int remove_scratch(void **state) {
    (void)state;
    graft_remove_tree(scratch);
    return 0;
}

static double max_diff(const float *a, const float *b, int64_t n) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
    return worst;
}

/* All of src through tf in one batch; *x owned by the returned loader. */
static graft_loader *one_batch(const graft_source *src, const graft_transforms *tf,
                               const graft_tensor **x, const graft_tensor **y) {
    graft_loader_options o = graft_loader_defaults();
    o.batch_size = graft_source_len(src);
    graft_loader *l;
    assert_int_equal(graft_loader_create(src, tf, &o, &l), GRAFT_OK);
    assert_int_equal(graft_loader_start_epoch(l, 0), GRAFT_OK);
    int done;
    assert_int_equal(graft_loader_next(l, x, y, &done), GRAFT_OK);
    return l;
}

/* Compares split `key` ("train" or "test") of CIFAR-10 through spec with the fixture. */
static void compare_split(const char *key, bool train, const char *spec_key, const char *images_key) {
    graft_tensor_map *m;
    assert_int_equal(graft_safetensors_load(FIXTURES "/cifar10_expected.safetensors", &m), GRAFT_OK);
    graft_dataset *d;
    assert_int_equal(graft_cifar10_py_load(CIFAR10, train, &d), GRAFT_OK);
    graft_source *s;
    assert_int_equal(graft_source_from_dataset(d, key, &s), GRAFT_OK);
    graft_transforms *tf;
    assert_int_equal(graft_transforms_parse(graft_tensor_map_get_meta(m, spec_key), &tf), GRAFT_OK);
    const graft_tensor *x, *y;
    graft_loader *l = one_batch(s, tf, &x, &y);
    char name[64];
    snprintf(name, sizeof name, "%s.images", images_key);
    const graft_tensor *want = graft_tensor_map_get(m, name);
    assert_non_null(want);
    assert_int_equal(graft_tensor_numel(x), graft_tensor_numel(want));
    assert_true(max_diff(graft_tensor_f32_const(x), graft_tensor_f32_const(want), graft_tensor_numel(x)) <= 1e-6);
    snprintf(name, sizeof name, "%s.labels", key);
    graft_tensor *wl = graft_tensor_map_get(m, name);
    assert_memory_equal(y->data, graft_tensor_i64(wl), graft_tensor_nbytes(wl));
    graft_loader_free(l);
    graft_transforms_free(tf);
    graft_source_free(s);
    graft_tensor_map_free(m);
}

static void cifar10_train_matches_torchvision(void **state) {
    (void)state;
    compare_split("train", true, "normalize", "train");
}

static void cifar10_test_matches_torchvision(void **state) {
    (void)state;
    compare_split("test", false, "normalize", "test");
}

static void cifar10_resized_matches_torchvision(void **state) {
    (void)state;
    compare_split("train", true, "resized", "resized");
}

static void class_names_come_from_the_meta_file(void **state) {
    (void)state;
    graft_dataset *d;
    assert_int_equal(graft_cifar10_py_load(CIFAR10 "/cifar-10-batches-py", true, &d), GRAFT_OK);
    assert_int_equal(d->n, 15);
    assert_int_equal(d->num_classes, 10);
    assert_string_equal(d->classes[0], "airplane");
    assert_string_equal(d->classes[9], "truck");
    graft_dataset_free(d);
}

static void cifar100_uses_fine_labels_and_names(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_safetensors_load(FIXTURES "/cifar100_expected.safetensors", &m), GRAFT_OK);
    graft_dataset *tr, *te;
    assert_int_equal(graft_cifar100_py_load(CIFAR100, true, &tr), GRAFT_OK);
    assert_int_equal(graft_cifar100_py_load(CIFAR100, false, &te), GRAFT_OK);
    assert_int_equal(tr->num_classes, 100);
    assert_string_equal(tr->classes[0], "apple");
    assert_string_equal(tr->classes[99], "worm");
    graft_tensor *wl = graft_tensor_map_get(m, "train.labels");
    assert_memory_equal(tr->labels, graft_tensor_i64(wl), graft_tensor_nbytes(wl));
    wl = graft_tensor_map_get(m, "test.labels");
    assert_memory_equal(te->labels, graft_tensor_i64(wl), graft_tensor_nbytes(wl));
    graft_source *s;
    assert_int_equal(graft_source_from_dataset(tr, "c100", &s), GRAFT_OK);
    const graft_tensor *x, *y;
    graft_loader *l = one_batch(s, NULL, &x, &y);
    const graft_tensor *want = graft_tensor_map_get(m, "train.images");
    assert_true(max_diff(graft_tensor_f32_const(x), graft_tensor_f32_const(want), graft_tensor_numel(x)) == 0);
    graft_loader_free(l);
    graft_source_free(s);
    graft_dataset_free(te);
    graft_tensor_map_free(m);
}

static void a_python3_repickling_reads_the_same(void **state) {
    (void)state;
    graft_dataset *a, *b;
    assert_int_equal(graft_cifar10_py_load(CIFAR10, false, &a), GRAFT_OK);
    assert_int_equal(graft_cifar10_py_load(FIXTURES "/cifar10_py3", false, &b), GRAFT_OK);
    assert_int_equal(a->n, b->n);
    assert_memory_equal(a->images, b->images, (size_t)a->n * PIXELS);
    assert_memory_equal(a->labels, b->labels, (size_t)a->n * sizeof *a->labels);
    assert_string_equal(b->classes[3], "cat");
    graft_dataset_free(a);
    graft_dataset_free(b);
}

/* ---- bad input: pickles written here ------------------------------------------------ */

typedef struct pk {
    unsigned char *b;
    size_t n, cap;
} pk;

static void emit(pk *p, const void *bytes, size_t n) {
    if (p->n + n > p->cap) {
        p->cap = (p->n + n) * 2;
        p->b = realloc(p->b, p->cap);
    }
    memcpy(p->b + p->n, bytes, n);
    p->n += n;
}
static void op(pk *p, unsigned char c) { emit(p, &c, 1); }
static void str2(pk *p, const char *s) { /* Python 2 str: SHORT_BINSTRING */
    op(p, 'U');
    op(p, (unsigned char)strlen(s));
    emit(p, s, strlen(s));
}
static void binstring(pk *p, const void *b, uint32_t n) {
    op(p, 'T');
    unsigned char len[4] = {(unsigned char)n, (unsigned char)(n >> 8), (unsigned char)(n >> 16),
                            (unsigned char)(n >> 24)};
    emit(p, len, 4);
    emit(p, b, n);
}
static void int32(pk *p, int32_t v) {
    op(p, 'J');
    uint32_t u = (uint32_t)v;
    unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
                          (unsigned char)(u >> 24)};
    emit(p, b, 4);
}
static void global(pk *p, const char *module, const char *name) {
    op(p, 'c');
    emit(p, module, strlen(module));
    op(p, '\n');
    emit(p, name, strlen(name));
    op(p, '\n');
}

/* numpy.core.multiarray._reconstruct(ndarray, (0,), 'b') with its BUILD state. */
static void ndarray(pk *p, int rows, int cols, const char *dtype, const void *data, uint32_t bytes) {
    global(p, "numpy.core.multiarray", "_reconstruct");
    global(p, "numpy", "ndarray");
    int32(p, 0);
    op(p, 0x85); /* TUPLE1 */
    str2(p, "b");
    op(p, 0x87); /* TUPLE3 */
    op(p, 'R');
    op(p, '(');
    int32(p, 1);
    int32(p, rows);
    int32(p, cols);
    op(p, 0x86); /* TUPLE2 */
    global(p, "numpy", "dtype");
    str2(p, dtype);
    op(p, 0x89); /* NEWFALSE */
    op(p, 0x88); /* NEWTRUE */
    op(p, 0x87);
    op(p, 'R');
    op(p, '(');
    int32(p, 3);
    str2(p, "|");
    op(p, 'N');
    op(p, 'N');
    op(p, 'N');
    int32(p, -1);
    int32(p, -1);
    int32(p, 0);
    op(p, 't');
    op(p, 'b');
    op(p, 0x89);
    binstring(p, data, bytes);
    op(p, 't');
    op(p, 'b');
}

typedef struct batch_spec {
    int n;
    const char *dtype;     /* "u1" */
    int cols;              /* 3072 */
    uint32_t data_bytes;   /* n * cols */
    int bad_label;         /* a label value put first, or -1 for none */
    int labels;            /* how many labels */
    bool labels_key;       /* write b'labels' */
} batch_spec;

static void write_pk(const char *path, const pk *p, size_t keep) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p->b, 1, keep, f), keep);
    fclose(f);
}

/* A batch file {b'data': array, b'labels': [...]}. */
static void write_batch(const char *path, const batch_spec *bs, size_t cut) {
    pk p = {0};
    op(&p, 0x80);
    op(&p, 2);
    op(&p, '}');
    op(&p, '(');
    str2(&p, "data");
    unsigned char *px = calloc(1, bs->data_bytes ? bs->data_bytes : 1);
    for (uint32_t i = 0; i < bs->data_bytes; i++) px[i] = (unsigned char)(i * 7);
    ndarray(&p, bs->n, bs->cols, bs->dtype, px, bs->data_bytes);
    free(px);
    if (bs->labels_key) {
        str2(&p, "labels");
        op(&p, ']');
        op(&p, '(');
        for (int i = 0; i < bs->labels; i++) int32(&p, i == 0 && bs->bad_label >= 0 ? bs->bad_label : i % 10);
        op(&p, 'e');
    }
    op(&p, 'u'); /* SETITEMS */
    op(&p, '.');
    write_pk(path, &p, p.n - cut);
    free(p.b);
}

static void write_meta(const char *path, int names) {
    pk p = {0};
    op(&p, 0x80);
    op(&p, 2);
    op(&p, '}');
    str2(&p, "label_names");
    op(&p, ']');
    op(&p, '(');
    for (int i = 0; i < names; i++) {
        char n[16];
        snprintf(n, sizeof n, "c%d", i);
        str2(&p, n);
    }
    op(&p, 'e');
    op(&p, 's');
    op(&p, '.');
    write_pk(path, &p, p.n);
    free(p.b);
}

static const batch_spec GOOD = {2, "u1", PIXELS, 2 * PIXELS, -1, 2, true};

/* A CIFAR-10 python folder in scratch whose test_batch follows bs (cut bytes removed). */
static const char *write_folder(const batch_spec *bs, size_t cut, int names) {
    static char dir[PATH_BYTES / 2];
    char p[PATH_BYTES];
    snprintf(dir, sizeof dir, "%s/%s", scratch, GRAFT_CIFAR10_PY_DIR);
    mkdir(dir, 0777);
    snprintf(p, sizeof p, "%s/test_batch", dir);
    write_batch(p, bs, cut);
    snprintf(p, sizeof p, "%s/batches.meta", dir);
    write_meta(p, names);
    return dir;
}

static graft_status load_test(void) {
    graft_dataset *d = NULL;
    graft_status s = graft_cifar10_py_load(scratch, false, &d);
    graft_dataset_free(d);
    assert_null(strchr(graft_errmsg(), '\n'));
    return s;
}

static void a_handwritten_batch_loads(void **state) {
    (void)state;
    write_folder(&GOOD, 0, 10);
    graft_dataset *d;
    assert_int_equal(graft_cifar10_py_load(scratch, false, &d), GRAFT_OK);
    assert_int_equal(d->n, 2);
    /* pixel (row 0, col 1) of image 1, green: plane 1 at 1024 + 1 */
    assert_int_equal(d->images[PIXELS + 1 * 3 + 1], (unsigned char)((PIXELS + 1024 + 1) * 7));
    graft_dataset_free(d);
}

static void a_truncated_batch_is_an_error_naming_the_file(void **state) {
    (void)state;
    size_t cuts[] = {1, 10, 3000, 6200};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_folder(&GOOD, cuts[i], 10);
        assert_int_equal(load_test(), GRAFT_ERR_FORMAT);
        assert_non_null(strstr(graft_errmsg(), "cifar-10-batches-py/test_batch: "));
    }
}

static void wrong_labels_shapes_and_types_are_errors(void **state) {
    (void)state;
    batch_spec b = GOOD;
    b.bad_label = 10;
    write_folder(&b, 0, 10);
    assert_int_equal(load_test(), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "label 10 of image 0 is outside 0..9"));
    b = GOOD;
    b.labels = 3;
    write_folder(&b, 0, 10);
    assert_int_equal(load_test(), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "3 labels for 2 images"));
    b = GOOD;
    b.labels_key = false;
    write_folder(&b, 0, 10);
    assert_int_equal(load_test(), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "no key 'labels'"));
    b = GOOD;
    b.cols = 1024;
    b.data_bytes = 2048;
    write_folder(&b, 0, 10);
    assert_int_equal(load_test(), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "[N, 3072]"));
    b = GOOD;
    b.data_bytes = 100;
    write_folder(&b, 0, 10);
    assert_int_equal(load_test(), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "holds 100 bytes"));
    b = GOOD;
    b.dtype = "f4";
    write_folder(&b, 0, 10);
    assert_int_equal(load_test(), GRAFT_ERR_FORMAT);
    write_folder(&GOOD, 0, 9);
    assert_int_equal(load_test(), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "batches.meta: 'label_names' is not a list of 10"));
}

static void a_pickle_naming_a_dangerous_global_is_refused(void **state) {
    (void)state;
    write_folder(&GOOD, 0, 10);
    pk p = {0};
    op(&p, 0x80);
    op(&p, 2);
    global(&p, "os", "system");
    str2(&p, "touch pwned");
    op(&p, 0x85);
    op(&p, 'R');
    op(&p, '.');
    char path[PATH_BYTES];
    snprintf(path, sizeof path, "%s/%s/test_batch", scratch, GRAFT_CIFAR10_PY_DIR);
    write_pk(path, &p, p.n);
    free(p.b);
    assert_int_equal(load_test(), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "test_batch: "));
    assert_non_null(strstr(graft_errmsg(), "os.system"));
}

static void empty_and_missing_files_are_errors(void **state) {
    (void)state;
    write_folder(&GOOD, 0, 10);
    char path[PATH_BYTES];
    snprintf(path, sizeof path, "%s/%s/test_batch", scratch, GRAFT_CIFAR10_PY_DIR);
    FILE *f = fopen(path, "wb");
    fclose(f);
    assert_int_equal(load_test(), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "file is empty"));
    unlink(path);
    assert_int_equal(load_test(), GRAFT_ERR_IO);
    assert_non_null(strstr(graft_errmsg(), "test_batch"));
}

/* Every prefix (in steps) and many single-byte changes of a real batch file: each load
 * either succeeds or fails with one line naming the file — never a crash (ASan/UBSan
 * builds run this too). */
static void damaged_batches_never_crash(void **state) {
    (void)state;
    FILE *f = fopen(CIFAR10 "/cifar-10-batches-py/test_batch", "rb");
    assert_non_null(f);
    unsigned char buf[1 << 15];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    assert_true(n > 1000 && n < sizeof buf);
    write_folder(&GOOD, 0, 10); /* a meta file to go with it */
    char path[PATH_BYTES];
    snprintf(path, sizeof path, "%s/%s/test_batch", scratch, GRAFT_CIFAR10_PY_DIR);
    pk p = {buf, n, n};
    for (size_t cut = 1; cut < n; cut += 37) {
        write_pk(path, &p, cut);
        assert_int_equal(load_test(), GRAFT_ERR_FORMAT);
        assert_non_null(strstr(graft_errmsg(), "test_batch"));
    }
    unsigned seed = 12345;
    for (int k = 0; k < 400; k++) {
        seed = seed * 1103515245u + 12345u;
        size_t at = (seed >> 8) % 700; /* the header, keys, dtype and labels live up front */
        unsigned char keep = buf[at];
        buf[at] = (unsigned char)(seed >> 20);
        write_pk(path, &p, n);
        graft_status s = load_test();
        if (s) assert_non_null(strstr(graft_errmsg(), "cifar-10-batches-py/"));
        buf[at] = keep;
    }
}

/* ---- graft data --dump against torchvision ------------------------------------------ */

static int run_graft(const char *const *args) {
    const char *bin = getenv("GRAFT_BIN");
    if (!bin || !*bin) fail_msg("GRAFT_BIN is not set");
    const char *argv[16];
    int n = 0;
    argv[n++] = bin;
    for (; args[n - 1]; n++) argv[n] = args[n - 1];
    argv[n] = NULL;
    char out[PATH_BYTES];
    snprintf(out, sizeof out, "%s/graft.out", scratch);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, out, O_WRONLY | O_CREAT | O_APPEND, 0644);
    pid_t pid;
    int e = posix_spawn(&pid, bin, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e) fail_msg("cannot start %s", bin);
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static void graft_data_dump_matches_torchvision(void **state) {
    (void)state;
    graft_tensor_map *want;
    assert_int_equal(graft_safetensors_load(FIXTURES "/cifar10_expected.safetensors", &want), GRAFT_OK);
    char dump[PATH_BYTES];
    snprintf(dump, sizeof dump, "%s/dump.safetensors", scratch);
    const char *args[] = {"data", "cifar10:" CIFAR10, "--transform",
                          graft_tensor_map_get_meta(want, "normalize"), "--dump", "100", dump,
                          "--split", "test", NULL};
    assert_int_equal(run_graft(args), 0);
    graft_tensor_map *got;
    assert_int_equal(graft_safetensors_load(dump, &got), GRAFT_OK);
    const graft_tensor *x = graft_tensor_map_get(got, "images"), *w = graft_tensor_map_get(want, "test.images");
    assert_int_equal(graft_tensor_dim(x, 0), 4); /* N is capped at the split's size */
    assert_int_equal(graft_tensor_numel(x), graft_tensor_numel(w));
    assert_true(max_diff(graft_tensor_f32_const(x), graft_tensor_f32_const(w), graft_tensor_numel(x)) <= 1e-6);
    graft_tensor *yl = graft_tensor_map_get(got, "labels"), *wl = graft_tensor_map_get(want, "test.labels");
    assert_memory_equal(graft_tensor_i64(yl), graft_tensor_i64(wl), graft_tensor_nbytes(wl));
    assert_string_equal(graft_tensor_map_get_meta(got, "classes"), graft_tensor_map_get_meta(want, "classes"));
    graft_tensor_map_free(got);
    graft_tensor_map_free(want);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cifar10_train_matches_torchvision),
        cmocka_unit_test(cifar10_test_matches_torchvision),
        cmocka_unit_test(cifar10_resized_matches_torchvision),
        cmocka_unit_test(class_names_come_from_the_meta_file),
        cmocka_unit_test(cifar100_uses_fine_labels_and_names),
        cmocka_unit_test(a_python3_repickling_reads_the_same),
        cmocka_unit_test_setup_teardown(a_handwritten_batch_loads, make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(a_truncated_batch_is_an_error_naming_the_file, make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(wrong_labels_shapes_and_types_are_errors, make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(a_pickle_naming_a_dangerous_global_is_refused, make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(empty_and_missing_files_are_errors, make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(damaged_batches_never_crash, make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(graft_data_dump_matches_torchvision, make_scratch, remove_scratch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
