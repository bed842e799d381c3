/* test_idx.c — MNIST / Fashion-MNIST IDX files, plain and gzip-compressed.
 *
 * Files are written by the tests into a scratch directory (plain with stdio, gzip with
 * zlib), each breaking one rule of the format.  When Debian's dataset-fashion-mnist
 * package is installed, the real files under /usr/share/datasets/fashion-mnist are
 * read too; otherwise that test is skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "data/dataset.h"
#include "graft/graft.h"

#define PATH_BYTES 4096
#define FASHION_DIR "/usr/share/datasets/fashion-mnist"

static char scratch[PATH_BYTES / 2];

/* ---- helpers --------------------------------------------------------------------- */

static int remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *de;
    char p[PATH_BYTES];
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (unlink(p) != 0) remove_tree(p);
    }
    closedir(d);
    return rmdir(dir);
}

static int make_scratch(void **state) {
    (void)state;
    const char *base = getenv("GRAFT_TMP");
    snprintf(scratch, sizeof scratch, "%s/graft_test_idx.XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(scratch) ? 0 : -1;
}

static int remove_scratch(void **state) {
    (void)state;
    return remove_tree(scratch);
}

/* A path inside the scratch directory (subdirectories created as needed). */
static const char *scratch_path(char *buf, const char *name) {
    snprintf(buf, PATH_BYTES, "%s/%s", scratch, name);
    for (char *p = buf + strlen(scratch) + 1; (p = strchr(p, '/')); p++) {
        *p = 0;
        mkdir(buf, 0777);
        *p = '/';
    }
    unlink(buf);
    return buf;
}

static void write_bytes(const char *path, const void *bytes, size_t n, int gzip) {
    if (gzip) {
        gzFile f = gzopen(path, "wb");
        assert_non_null(f);
        if (n) assert_int_equal(gzwrite(f, bytes, (unsigned)n), (int)n);
        assert_int_equal(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(bytes, 1, n, f), n);
        assert_int_equal(fclose(f), 0);
    }
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* pixel (i, y, x) of the test images: distinct enough to catch a wrong layout */
static uint8_t pixel(uint32_t i, uint32_t y, uint32_t x) { return (uint8_t)(i * 31 + y * 7 + x * 3); }
static uint8_t label(uint32_t i) { return (uint8_t)((i * 3) % 10); }

/* An IDX image file of n images of rows x cols; extra bytes appended, and the file cut
 * by cut bytes. */
static void write_images(const char *path, uint32_t magic, uint32_t n, uint32_t rows, uint32_t cols,
                         int gzip, size_t extra, size_t cut) {
    size_t bytes = 16 + (size_t)n * rows * cols + extra;
    uint8_t *b = calloc(bytes, 1);
    put_be32(b, magic);
    put_be32(b + 4, n);
    put_be32(b + 8, rows);
    put_be32(b + 12, cols);
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t y = 0; y < rows; y++)
            for (uint32_t x = 0; x < cols; x++) b[16 + ((size_t)i * rows + y) * cols + x] = pixel(i, y, x);
    write_bytes(path, b, bytes - cut, gzip);
    free(b);
}

static void write_labels(const char *path, uint32_t magic, uint32_t n, int gzip, int bad_index,
                         uint8_t bad_value) {
    uint8_t *b = calloc(8 + n, 1);
    put_be32(b, magic);
    put_be32(b + 4, n);
    for (uint32_t i = 0; i < n; i++) b[8 + i] = (int)i == bad_index ? bad_value : label(i);
    write_bytes(path, b, 8 + n, gzip);
    free(b);
}

static void expect_dataset(const graft_dataset *d, uint32_t n, uint32_t rows, uint32_t cols) {
    assert_non_null(d);
    assert_int_equal(d->n, n);
    assert_int_equal(d->h, rows);
    assert_int_equal(d->w, cols);
    assert_int_equal(d->c, 1);
    assert_int_equal(d->num_classes, 10);
    for (uint32_t i = 0; i < n; i++) {
        assert_int_equal(d->labels[i], label(i));
        graft_image img = graft_dataset_image(d, i);
        for (uint32_t y = 0; y < rows; y++)
            for (uint32_t x = 0; x < cols; x++)
                assert_int_equal(img.data[y * cols + x], pixel(i, y, x));
    }
}

/* Loading fails with GRAFT_ERR_FORMAT, one line naming the file, saying what. */
static void expect_format_error(const char *images, const char *labels, const char *named,
                                const char *what) {
    graft_dataset *d = (graft_dataset *)&d;
    assert_int_equal(graft_idx_load(images, labels, 10, NULL, &d), GRAFT_ERR_FORMAT);
    assert_null(d);
    const char *msg = graft_errmsg();
    if (strncmp(msg, named, strlen(named)) != 0 || !strstr(msg, what) || strchr(msg, '\n'))
        fail_msg("message \"%s\" should start with %s and say \"%s\"", msg, named, what);
}

/* ---- reading --------------------------------------------------------------------- */

static void plain_files_load_images_and_labels(void **state) {
    (void)state;
    char im[PATH_BYTES], lb[PATH_BYTES];
    write_images(scratch_path(im, "p-images"), 0x803, 7, 5, 4, 0, 0, 0);
    write_labels(scratch_path(lb, "p-labels"), 0x801, 7, 0, -1, 0);
    graft_dataset *d;
    assert_int_equal(graft_idx_load(im, lb, 10, NULL, &d), GRAFT_OK);
    expect_dataset(d, 7, 5, 4);
    assert_string_equal(d->classes[0], "0");
    assert_string_equal(d->classes[9], "9");
    graft_dataset_free(d);
}

static void gzip_files_load_the_same_as_plain_ones(void **state) {
    (void)state;
    char im[PATH_BYTES], lb[PATH_BYTES];
    write_images(scratch_path(im, "g-images.gz"), 0x803, 9, 28, 28, 1, 0, 0);
    write_labels(scratch_path(lb, "g-labels.gz"), 0x801, 9, 1, -1, 0);
    graft_dataset *d;
    assert_int_equal(graft_idx_load(im, lb, 10, NULL, &d), GRAFT_OK);
    expect_dataset(d, 9, 28, 28);
    graft_dataset_free(d);
}

static void mnist_split_is_found_by_its_standard_names_in_the_root(void **state) {
    (void)state;
    char p[PATH_BYTES], root[PATH_BYTES];
    write_images(scratch_path(p, "mnist/train-images-idx3-ubyte"), 0x803, 6, 3, 3, 0, 0, 0);
    write_labels(scratch_path(p, "mnist/train-labels-idx1-ubyte.gz"), 0x801, 6, 1, -1, 0);
    write_images(scratch_path(p, "mnist/t10k-images-idx3-ubyte.gz"), 0x803, 2, 3, 3, 1, 0, 0);
    write_labels(scratch_path(p, "mnist/t10k-labels-idx1-ubyte"), 0x801, 2, 0, -1, 0);
    snprintf(root, sizeof root, "%s/mnist", scratch);
    graft_dataset *train, *test;
    assert_int_equal(graft_mnist_load(root, GRAFT_MNIST, true, &train), GRAFT_OK);
    assert_int_equal(graft_mnist_load(root, GRAFT_MNIST, false, &test), GRAFT_OK);
    expect_dataset(train, 6, 3, 3);
    expect_dataset(test, 2, 3, 3);
    assert_string_equal(train->classes[0], "0 - zero");
    assert_string_equal(train->classes[9], "9 - nine");
    graft_dataset_free(train);
    graft_dataset_free(test);
}

static void fashion_mnist_is_found_in_torchvisions_raw_folder(void **state) {
    (void)state;
    char p[PATH_BYTES], root[PATH_BYTES];
    write_images(scratch_path(p, "tv/FashionMNIST/raw/t10k-images-idx3-ubyte"), 0x803, 4, 2, 2, 0,
                 0, 0);
    write_labels(scratch_path(p, "tv/FashionMNIST/raw/t10k-labels-idx1-ubyte"), 0x801, 4, 0, -1, 0);
    snprintf(root, sizeof root, "%s/tv", scratch);
    graft_dataset *d;
    assert_int_equal(graft_mnist_load(root, GRAFT_FASHION_MNIST, false, &d), GRAFT_OK);
    expect_dataset(d, 4, 2, 2);
    assert_string_equal(d->classes[0], "T-shirt/top");
    assert_string_equal(d->classes[9], "Ankle boot");
    graft_dataset_free(d);
}

static void a_missing_split_is_an_io_error_naming_the_file(void **state) {
    (void)state;
    graft_dataset *d = (graft_dataset *)&d;
    assert_int_equal(graft_mnist_load(scratch, GRAFT_MNIST, true, &d), GRAFT_ERR_IO);
    assert_null(d);
    assert_non_null(strstr(graft_errmsg(), "train-images-idx3-ubyte"));
}

static void real_fashion_mnist_has_60000_and_10000_images_of_28x28(void **state) {
    (void)state;
    struct stat st;
    if (stat(FASHION_DIR, &st) != 0) skip(); /* dataset-fashion-mnist not installed */
    graft_dataset *train, *test;
    if (graft_mnist_load(FASHION_DIR, GRAFT_FASHION_MNIST, true, &train))
        fail_msg("%s", graft_errmsg());
    if (graft_mnist_load(FASHION_DIR, GRAFT_FASHION_MNIST, false, &test))
        fail_msg("%s", graft_errmsg());
    assert_int_equal(train->n, 60000);
    assert_int_equal(test->n, 10000);
    assert_int_equal(train->h, 28);
    assert_int_equal(train->w, 28);
    assert_int_equal(test->h, 28);
    /* Fashion-MNIST is balanced: 6000 training and 1000 test images per class. */
    int64_t counts[10] = {0};
    for (int64_t i = 0; i < train->n; i++) counts[train->labels[i]]++;
    for (int k = 0; k < 10; k++) assert_int_equal(counts[k], 6000);
    memset(counts, 0, sizeof counts);
    for (int64_t i = 0; i < test->n; i++) counts[test->labels[i]]++;
    for (int k = 0; k < 10; k++) assert_int_equal(counts[k], 1000);
    assert_string_equal(train->classes[7], "Sneaker");
    graft_dataset_free(train);
    graft_dataset_free(test);
}

/* ---- validation ------------------------------------------------------------------- */

static void a_wrong_image_magic_is_a_format_error(void **state) {
    (void)state;
    char im[PATH_BYTES], lb[PATH_BYTES];
    write_images(scratch_path(im, "m-images"), 0x801, 3, 2, 2, 0, 0, 0);
    write_labels(scratch_path(lb, "m-labels"), 0x801, 3, 0, -1, 0);
    expect_format_error(im, lb, im, "magic number 0x00000801");
}

static void a_wrong_label_magic_is_a_format_error(void **state) {
    (void)state;
    char im[PATH_BYTES], lb[PATH_BYTES];
    write_images(scratch_path(im, "ml-images.gz"), 0x803, 3, 2, 2, 1, 0, 0);
    write_labels(scratch_path(lb, "ml-labels.gz"), 0x803, 3, 1, -1, 0);
    expect_format_error(im, lb, lb, "magic number 0x00000803");
}

static void a_header_cut_short_is_a_format_error(void **state) {
    (void)state;
    char im[PATH_BYTES], lb[PATH_BYTES];
    write_images(scratch_path(im, "h-images"), 0x803, 0, 0, 0, 0, 0, 6); /* 10 of 16 bytes */
    write_labels(scratch_path(lb, "h-labels"), 0x801, 3, 0, -1, 0);
    expect_format_error(im, lb, im, "truncated in the IDX header");
}

static void image_data_cut_short_is_a_format_error(void **state) {
    (void)state;
    char im[PATH_BYTES], lb[PATH_BYTES];
    write_labels(scratch_path(lb, "t-labels"), 0x801, 5, 0, -1, 0);
    write_images(scratch_path(im, "t-images"), 0x803, 5, 4, 4, 0, 0, 1);
    expect_format_error(im, lb, im, "truncated");
    write_images(scratch_path(im, "t-images.gz"), 0x803, 5, 4, 4, 1, 0, 17);
    expect_format_error(im, lb, im, "5 images of 4x4 need 80 bytes of data, it holds 63");
}

static void a_compressed_stream_cut_short_is_a_format_error(void **state) {
    (void)state;
    char im[PATH_BYTES], lb[PATH_BYTES], cut[PATH_BYTES];
    write_labels(scratch_path(lb, "z-labels"), 0x801, 50, 0, -1, 0);
    write_images(scratch_path(im, "z-images.gz"), 0x803, 50, 10, 10, 1, 0, 0);
    FILE *f = fopen(im, "rb");
    uint8_t buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    write_bytes(scratch_path(cut, "z-cut.gz"), buf, n / 2, 0); /* half the gzip stream */
    expect_format_error(cut, lb, cut, "truncated");
}

static void a_corrupt_compressed_stream_is_a_format_error(void **state) {
    (void)state;
    char im[PATH_BYTES], lb[PATH_BYTES];
    write_labels(scratch_path(lb, "c-labels"), 0x801, 50, 0, -1, 0);
    write_images(scratch_path(im, "c-images.gz"), 0x803, 50, 10, 10, 1, 0, 0);
    FILE *f = fopen(im, "r+b");
    uint8_t buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    for (size_t i = 12; i < n - 8; i += 5) buf[i] ^= 0x5a; /* deflate data, not the header */
    fseek(f, 0, SEEK_SET);
    fwrite(buf, 1, n, f);
    fclose(f);
    expect_format_error(im, lb, im, "corrupt gzip data");
}

static void data_after_the_announced_images_is_a_format_error(void **state) {
    (void)state;
    char im[PATH_BYTES], lb[PATH_BYTES];
    write_images(scratch_path(im, "x-images"), 0x803, 3, 2, 2, 0, 1, 0);
    write_labels(scratch_path(lb, "x-labels"), 0x801, 3, 0, -1, 0);
    expect_format_error(im, lb, im, "data continues after the 3 images of 2x2");
}

static void a_zero_dimension_is_a_format_error(void **state) {
    (void)state;
    char im[PATH_BYTES], lb[PATH_BYTES];
    write_images(scratch_path(im, "0-images"), 0x803, 3, 0, 2, 0, 0, 0);
    write_labels(scratch_path(lb, "0-labels"), 0x801, 3, 0, -1, 0);
    expect_format_error(im, lb, im, "dimension 1 is 0");
}

static void an_absurd_dimension_is_refused_before_allocating(void **state) {
    (void)state;
    char im[PATH_BYTES], lb[PATH_BYTES];
    uint8_t head[16];
    put_be32(head, 0x803);
    put_be32(head + 4, 0x7fffffff); /* 2^31 images */
    put_be32(head + 8, 28);
    put_be32(head + 12, 28);
    write_bytes(scratch_path(im, "a-images"), head, sizeof head, 0);
    write_labels(scratch_path(lb, "a-labels"), 0x801, 3, 0, -1, 0);
    expect_format_error(im, lb, im, "dimension 0 is 2147483647");
    put_be32(head + 4, 1000000); /* plausible count, but the file holds no pixels */
    write_bytes(scratch_path(im, "a-images"), head, sizeof head, 0);
    expect_format_error(im, lb, im, "it holds 0");
}

static void a_label_of_10_or_more_is_a_format_error(void **state) {
    (void)state;
    char im[PATH_BYTES], lb[PATH_BYTES];
    write_images(scratch_path(im, "l-images"), 0x803, 4, 2, 2, 0, 0, 0);
    write_labels(scratch_path(lb, "l-labels"), 0x801, 4, 0, 2, 10);
    expect_format_error(im, lb, lb, "label 10 of item 2 is not below 10");
}

static void image_and_label_counts_must_agree(void **state) {
    (void)state;
    char im[PATH_BYTES], lb[PATH_BYTES];
    write_images(scratch_path(im, "n-images"), 0x803, 4, 2, 2, 0, 0, 0);
    write_labels(scratch_path(lb, "n-labels"), 0x801, 5, 0, -1, 0);
    expect_format_error(im, lb, im, "has 4 images but");
    assert_non_null(strstr(graft_errmsg(), lb));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plain_files_load_images_and_labels),
        cmocka_unit_test(gzip_files_load_the_same_as_plain_ones),
        cmocka_unit_test(mnist_split_is_found_by_its_standard_names_in_the_root),
        cmocka_unit_test(fashion_mnist_is_found_in_torchvisions_raw_folder),
        cmocka_unit_test(a_missing_split_is_an_io_error_naming_the_file),
        cmocka_unit_test(real_fashion_mnist_has_60000_and_10000_images_of_28x28),
        cmocka_unit_test(a_wrong_image_magic_is_a_format_error),
        cmocka_unit_test(a_wrong_label_magic_is_a_format_error),
        cmocka_unit_test(a_header_cut_short_is_a_format_error),
        cmocka_unit_test(image_data_cut_short_is_a_format_error),
        cmocka_unit_test(a_compressed_stream_cut_short_is_a_format_error),
        cmocka_unit_test(a_corrupt_compressed_stream_is_a_format_error),
        cmocka_unit_test(data_after_the_announced_images_is_a_format_error),
        cmocka_unit_test(a_zero_dimension_is_a_format_error),
        cmocka_unit_test(an_absurd_dimension_is_refused_before_allocating),
        cmocka_unit_test(a_label_of_10_or_more_is_a_format_error),
        cmocka_unit_test(image_and_label_counts_must_agree),
    };
    return cmocka_run_group_tests(tests, make_scratch, remove_scratch);
}
