/* test_spec.c — the --data SPEC argument: every dataset kind, both CIFAR layouts, the
 * default folders, tensors files, and --classes / --per-class. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/fetch_cifar.h"
#include "data/spec.h"
#include "graft/graft.h"

#define FIXTURES "parity/fixtures/datasets"
#define PATH_BYTES 4096
#define DIR_BYTES 2048 /* folders, so that a file name still fits in PATH_BYTES */
#define RECORD (1 + 3072)

static char scratch[1024];

static int make_scratch(void **state) {
    (void)state;
    const char *base = getenv("GRAFT_TMP");
    snprintf(scratch, sizeof scratch, "%s/graft_test_spec.XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(scratch) ? 0 : -1;
}

static int remove_scratch(void **state) {
    (void)state;
    graft_remove_tree(scratch);
    unsetenv("GRAFT_DATA");
    return 0;
}

static void write_file(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, n, f), n);
    fclose(f);
}

/* A CIFAR-10 binary folder at dir: `per` records in each batch file, label = record %
 * 10; the first two red pixels of a record are its batch and its index. */
static void write_cifar10_bin(const char *dir, int per) {
    mkdir(dir, 0777);
    unsigned char *b = calloc((size_t)per, RECORD);
    char p[PATH_BYTES];
    for (int k = 1; k <= 6; k++) {
        for (int r = 0; r < per; r++) {
            b[(size_t)r * RECORD] = (unsigned char)(r % 10);
            b[(size_t)r * RECORD + 1] = (unsigned char)k;
            b[(size_t)r * RECORD + 2] = (unsigned char)r;
        }
        if (k <= 5) snprintf(p, sizeof p, "%s/data_batch_%d.bin", dir, k);
        else snprintf(p, sizeof p, "%s/test_batch.bin", dir);
        write_file(p, b, (size_t)per * RECORD);
    }
    snprintf(p, sizeof p, "%s/batches.meta.txt", dir);
    const char *names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
    write_file(p, names, strlen(names));
    free(b);
}

static graft_data *open_ok(const char *spec, const graft_data_options *o) {
    graft_data *d = NULL;
    graft_status s = graft_data_open(spec, o, &d);
    if (s) fail_msg("%s: %s", spec, graft_errmsg());
    return d;
}

/* ---- CIFAR ------------------------------------------------------------------------ */

static void cifar10_reads_torchvisions_python_folder(void **state) {
    (void)state;
    graft_data *d = open_ok("cifar10:" FIXTURES "/cifar10", NULL);
    assert_int_equal(graft_source_len(d->train), 15);
    assert_int_equal(graft_source_len(d->test), 4);
    assert_string_equal(d->test_name, "test");
    assert_non_null(strstr(d->where, "python version"));
    assert_string_equal(graft_source_class_name(d->train, 1), "automobile");
    graft_data_free(d);
    d = open_ok("cifar100:" FIXTURES "/cifar100/cifar-100-python", NULL); /* the folder itself */
    assert_int_equal(graft_source_num_classes(d->train), 100);
    graft_data_free(d);
}

static void cifar10_reads_the_binary_folder_first(void **state) {
    (void)state;
    char dir[DIR_BYTES], spec[PATH_BYTES];
    snprintf(dir, sizeof dir, "%s/cifar-10-batches-bin", scratch);
    write_cifar10_bin(dir, 2);
    snprintf(spec, sizeof spec, "cifar10:%s", scratch);
    graft_data *d = open_ok(spec, NULL);
    assert_int_equal(graft_source_len(d->train), 10);
    assert_non_null(strstr(d->where, "binary version"));
    graft_data_free(d);
    snprintf(spec, sizeof spec, "cifar10:%s", dir); /* the folder itself */
    d = open_ok(spec, NULL);
    assert_int_equal(graft_source_len(d->test), 2);
    graft_data_free(d);
}

static void cifar_without_root_looks_in_graft_data(void **state) {
    (void)state;
    char dir[DIR_BYTES];
    snprintf(dir, sizeof dir, "%s/cifar-10-batches-bin", scratch);
    write_cifar10_bin(dir, 1);
    setenv("GRAFT_DATA", scratch, 1);
    char buf[PATH_BYTES];
    assert_int_equal(graft_data_default_root(buf, sizeof buf), GRAFT_OK);
    assert_string_equal(buf, scratch);
    graft_data *d = open_ok("cifar10", NULL);
    assert_int_equal(graft_source_len(d->train), 5);
    graft_data_free(d);
    /* nothing there for CIFAR-100: the error says how to get it */
    assert_int_equal(graft_data_open("cifar100", NULL, &d), GRAFT_ERR_NOTFOUND);
    assert_non_null(strstr(graft_errmsg(), "graft fetch cifar100"));
    assert_non_null(strstr(graft_errmsg(), scratch));
    unsetenv("GRAFT_DATA");
    const char *home = getenv("HOME");
    char *saved = home ? strdup(home) : NULL;
    setenv("HOME", "/home/someone", 1);
    assert_int_equal(graft_data_default_root(buf, sizeof buf), GRAFT_OK);
    assert_string_equal(buf, "/home/someone/.cache/graft/datasets");
    if (saved) setenv("HOME", saved, 1);
    else unsetenv("HOME");
    free(saved);
}

/* ---- other kinds -------------------------------------------------------------------- */

static void bad_specs_are_one_line_errors(void **state) {
    (void)state;
    graft_data *d;
    assert_int_equal(graft_data_open("imagenet", NULL, &d), GRAFT_ERR_INVALID);
    assert_non_null(strstr(graft_errmsg(), "unknown dataset 'imagenet'"));
    assert_int_equal(graft_data_open("mnist", NULL, &d), GRAFT_ERR_INVALID);
    assert_non_null(strstr(graft_errmsg(), "mnist:ROOT"));
    assert_int_equal(graft_data_open("folder:", NULL, &d), GRAFT_ERR_INVALID);
    assert_int_equal(graft_data_open("tensors", NULL, &d), GRAFT_ERR_INVALID);
    assert_int_equal(graft_data_open("mnist:/nonexistent", NULL, &d), GRAFT_ERR_NOTFOUND);
    assert_int_equal(graft_data_open("tensors:/nonexistent.safetensors", NULL, &d), GRAFT_ERR_IO);
    assert_null(strchr(graft_errmsg(), '\n'));
}

static void fashion_mnist_defaults_to_debians_package(void **state) {
    (void)state;
    struct stat st;
    if (stat(GRAFT_FASHION_MNIST_DEBIAN, &st) != 0) skip(); /* dataset-fashion-mnist not installed */
    graft_data *d = open_ok("fashion-mnist", NULL);
    assert_int_equal(graft_source_len(d->train), 60000);
    assert_int_equal(graft_source_len(d->test), 10000);
    assert_string_equal(graft_source_class_name(d->train, 9), "Ankle boot");
    graft_data_free(d);
}

static void folder_uses_train_and_val_splits(void **state) {
    (void)state;
    graft_data *d = open_ok("folder:" FIXTURES "/folder", NULL);
    assert_int_equal(graft_source_len(d->train), 10);
    assert_int_equal(graft_source_len(d->test), 4);
    assert_string_equal(d->test_name, "test");
    graft_data_free(d);
    d = open_ok("folder:" FIXTURES "/folder/test", NULL); /* no train/: ROOT is the training split */
    assert_int_equal(graft_source_len(d->train), 4);
    assert_null(d->test);
    graft_data_free(d);
}

/* A safetensors file with U8 images [2, 2, 3, 3] and labels, written byte by byte. */
static void write_u8_safetensors(const char *path) {
    const char *header = "{\"images\":{\"dtype\":\"U8\",\"shape\":[2,2,3,3],\"data_offsets\":[0,36]},"
                         "\"labels\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[36,52]},"
                         "\"__metadata__\":{\"classes\":\"left\\nright\"}}";
    size_t hn = strlen(header), padded = (hn + 7) / 8 * 8;
    unsigned char buf[1024] = {0};
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(padded >> (8 * i));
    memcpy(buf + 8, header, hn);
    memset(buf + 8 + hn, ' ', padded - hn);
    unsigned char *data = buf + 8 + padded;
    for (int i = 0; i < 36; i++) data[i] = (unsigned char)(i * 7);
    data[36 + 8] = 1; /* labels {0, 1} */
    write_file(path, buf, 8 + padded + 52);
}

static void tensors_files_hold_images_labels_and_names(void **state) {
    (void)state;
    char path[DIR_BYTES], spec[PATH_BYTES];
    snprintf(path, sizeof path, "%s/u8.safetensors", scratch);
    write_u8_safetensors(path);
    snprintf(spec, sizeof spec, "tensors:%s", path);
    graft_data *d = open_ok(spec, NULL);
    assert_int_equal(graft_source_kind(d->train), GRAFT_SAMPLE_IMAGE);
    assert_int_equal(graft_source_len(d->train), 2);
    assert_string_equal(graft_source_class_name(d->train, 1), "right");
    assert_null(d->test);
    graft_source_work w = {0};
    graft_sample x;
    assert_int_equal(graft_source_get(d->train, 1, &w, &x), GRAFT_OK);
    assert_int_equal(x.image.data[0], (18 * 7) % 256);
    assert_int_equal(x.label, 1);
    graft_data_free(d);

    /* float32 images with a test split */
    int64_t xs[4] = {3, 1, 2, 2}, ys[1] = {3}, ts[4] = {1, 1, 2, 2}, tl[1] = {1};
    graft_tensor_map *m;
    graft_tensor *t;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    graft_tensor_create(GRAFT_F32, 4, xs, &t);
    graft_tensor_map_put(m, "images", t);
    graft_tensor_create(GRAFT_I64, 1, ys, &t);
    graft_tensor_i64(t)[2] = 4;
    graft_tensor_map_put(m, "labels", t);
    graft_tensor_create(GRAFT_F32, 4, ts, &t);
    graft_tensor_map_put(m, "test_images", t);
    graft_tensor_create(GRAFT_I64, 1, tl, &t);
    graft_tensor_map_put(m, "test_labels", t);
    snprintf(path, sizeof path, "%s/f32.safetensors", scratch);
    assert_int_equal(graft_safetensors_save(path, m), GRAFT_OK);
    snprintf(spec, sizeof spec, "tensors:%s", path);
    d = open_ok(spec, NULL);
    assert_int_equal(graft_source_kind(d->train), GRAFT_SAMPLE_TENSOR);
    assert_int_equal(graft_source_num_classes(d->train), 5); /* max label + 1 */
    assert_int_equal(graft_source_len(d->test), 1);
    graft_data_free(d);
    /* a test split without labels is an error */
    graft_tensor_map_free(m);
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    graft_tensor_create(GRAFT_F32, 4, xs, &t);
    graft_tensor_map_put(m, "images", t);
    graft_tensor_create(GRAFT_F32, 4, ts, &t);
    graft_tensor_map_put(m, "test_images", t);
    graft_tensor_create(GRAFT_I64, 1, ys, &t);
    graft_tensor_map_put(m, "labels", t);
    assert_int_equal(graft_safetensors_save(path, m), GRAFT_OK);
    assert_int_equal(graft_data_open(spec, NULL, &d), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "'test_images' and 'test_labels'"));
    graft_tensor_map_free(m);
}

/* ---- subsets ------------------------------------------------------------------------ */

static void classes_are_relabelled_in_the_order_given(void **state) {
    (void)state;
    graft_data_options o = {.classes = "frog, 0 ,truck"};
    graft_data *d = open_ok("cifar10:" FIXTURES "/cifar10", &o);
    assert_int_equal(graft_source_num_classes(d->train), 3);
    assert_string_equal(graft_source_class_name(d->train, 0), "frog");
    assert_string_equal(graft_source_class_name(d->train, 1), "airplane");
    assert_string_equal(graft_source_class_name(d->test, 2), "truck");
    int64_t counts[3];
    graft_source_class_counts(d->train, counts);
    assert_int_equal(counts[0], 4); /* the fixture's train split: 4 frogs, 1 airplane, 2 trucks */
    assert_int_equal(counts[1], 1);
    assert_int_equal(counts[2], 2);
    assert_int_equal(graft_source_len(d->test), 2); /* test: airplane, truck */
    graft_data_free(d);
    const char *bad[] = {"10", "-1", "frog,frog", "zebra", "1,,2", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o.classes = bad[i];
        assert_int_equal(graft_data_open("cifar10:" FIXTURES "/cifar10", &o, &d), GRAFT_ERR_INVALID);
        assert_non_null(strstr(graft_errmsg(), "class"));
    }
}

/* The (batch, record) stamps of a split, as batch * 256 + record. */
static void stamps(const graft_source *s, int64_t *out) {
    graft_source_work w = {0};
    for (int64_t i = 0; i < graft_source_len(s); i++) {
        graft_sample x;
        assert_int_equal(graft_source_get(s, i, &w, &x), GRAFT_OK);
        out[i] = x.image.data[0] * 256 + x.image.data[3]; /* red of pixels 0 and 1 */
    }
}

static void per_class_samples_the_training_split_reproducibly(void **state) {
    (void)state;
    char dir[DIR_BYTES], spec[PATH_BYTES];
    snprintf(dir, sizeof dir, "%s/cifar-10-batches-bin", scratch);
    write_cifar10_bin(dir, 20); /* 100 training images, 10 per class; 20 test images */
    snprintf(spec, sizeof spec, "cifar10:%s", scratch);
    graft_data_options o = {.per_class = 3, .seed = 1, .classes = "5,6,7,8,9"};
    graft_data *a = open_ok(spec, &o), *b = open_ok(spec, &o);
    o.seed = 2;
    graft_data *c = open_ok(spec, &o);
    assert_int_equal(graft_source_len(a->train), 15);
    assert_int_equal(graft_source_len(a->test), 10); /* only --classes applies to the test split */
    int64_t counts[5];
    graft_source_class_counts(a->train, counts);
    for (int k = 0; k < 5; k++) assert_int_equal(counts[k], 3);
    int64_t sa[15], sb[15], sc[15];
    stamps(a->train, sa);
    stamps(b->train, sb);
    stamps(c->train, sc);
    assert_memory_equal(sa, sb, sizeof sa);     /* the same seed keeps the same images */
    assert_memory_not_equal(sa, sc, sizeof sa); /* another seed, others */
    for (int i = 1; i < 15; i++) assert_true(sa[i - 1] < sa[i]); /* in dataset order */
    graft_data_free(a);
    graft_data_free(b);
    graft_data_free(c);
    o.per_class = 11;
    assert_int_equal(graft_data_open(spec, &o, &a), GRAFT_ERR_INVALID);
    assert_non_null(strstr(graft_errmsg(), "fewer than --per-class 11"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cifar10_reads_torchvisions_python_folder),
        cmocka_unit_test_setup_teardown(cifar10_reads_the_binary_folder_first, make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(cifar_without_root_looks_in_graft_data, make_scratch, remove_scratch),
        cmocka_unit_test(bad_specs_are_one_line_errors),
        cmocka_unit_test(fashion_mnist_defaults_to_debians_package),
        cmocka_unit_test(folder_uses_train_and_val_splits),
        cmocka_unit_test_setup_teardown(tensors_files_hold_images_labels_and_names, make_scratch, remove_scratch),
        cmocka_unit_test(classes_are_relabelled_in_the_order_given),
        cmocka_unit_test_setup_teardown(per_class_samples_the_training_split_reproducibly, make_scratch, remove_scratch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
