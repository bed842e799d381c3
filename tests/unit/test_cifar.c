/* test_cifar.c — CIFAR-10 and CIFAR-100, binary version.
 *
 * Each test writes a small dataset directory (a few records per file) into a scratch
 * directory with the real file names, then loads it.  Pixel values encode (record,
 * channel, row, column) so a wrong transpose or a wrong record order shows. */
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

#include "data/dataset.h"
#include "graft/graft.h"

#define PATH_BYTES 4096
#define SIDE 32
#define PLANE (SIDE * SIDE)
#define CIFAR10_DIR "cifar-10-batches-bin"
#define CIFAR100_DIR "cifar-100-binary"

static char scratch[PATH_BYTES / 2];

static const char *const cifar10_names =
    "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n"; /* as shipped */

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

/* Each test gets an empty scratch directory of its own. */
static int make_scratch(void **state) {
    (void)state;
    const char *base = getenv("GRAFT_TMP");
    snprintf(scratch, sizeof scratch, "%s/graft_test_cifar.XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(scratch) ? 0 : -1;
}

static int remove_scratch(void **state) {
    (void)state;
    return remove_tree(scratch);
}

static const char *path_in(char *buf, const char *dir, const char *name) {
    snprintf(buf, PATH_BYTES, "%s/%s", scratch, dir);
    mkdir(buf, 0777);
    snprintf(buf, PATH_BYTES, "%s/%s/%s", scratch, dir, name);
    return buf;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static uint8_t pixel(int record, int ch, int y, int x) {
    return (uint8_t)(record * 37 + ch * 101 + y * 5 + x * 3);
}

/* A batch file of records first .. first + n - 1 with label_bytes label bytes each
 * (labels[k] for byte k of record r: (r + k) % limit[k]); cut bytes removed from the
 * end; record bad_record gets bad_value in label byte bad_byte. */
static void write_batch(const char *path, int first, int n, int label_bytes, const int *limit,
                        size_t cut, int bad_record, int bad_byte, int bad_value) {
    size_t rec = (size_t)label_bytes + 3 * PLANE;
    uint8_t *b = malloc(rec * (size_t)(n ? n : 1));
    for (int r = 0; r < n; r++) {
        uint8_t *p = b + rec * (size_t)r;
        int id = first + r;
        for (int k = 0; k < label_bytes; k++)
            p[k] = (uint8_t)(id == bad_record && k == bad_byte ? bad_value : (id + k) % limit[k]);
        for (int ch = 0; ch < 3; ch++)
            for (int y = 0; y < SIDE; y++)
                for (int x = 0; x < SIDE; x++)
                    p[label_bytes + ch * PLANE + y * SIDE + x] = pixel(id, ch, y, x);
    }
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    size_t bytes = rec * (size_t)n - cut;
    assert_int_equal(fwrite(b, 1, bytes, f), bytes);
    assert_int_equal(fclose(f), 0);
    free(b);
}

static const int cifar10_limit[1] = {10};
static const int cifar100_limit[2] = {20, 100};

/* A CIFAR-10 directory: data_batch_k holds 3 records each (ids 3(k-1) ..), the test
 * batch 4 records (ids 100 ..). */
static void write_cifar10(void) {
    char p[PATH_BYTES], name[64];
    for (int k = 1; k <= 5; k++) {
        snprintf(name, sizeof name, "data_batch_%d.bin", k);
        write_batch(path_in(p, CIFAR10_DIR, name), 3 * (k - 1), 3, 1, cifar10_limit, 0, -1, 0, 0);
    }
    write_batch(path_in(p, CIFAR10_DIR, "test_batch.bin"), 100, 4, 1, cifar10_limit, 0, -1, 0, 0);
    write_text(path_in(p, CIFAR10_DIR, "batches.meta.txt"), cifar10_names);
}

/* A CIFAR-100 directory: train.bin 5 records, test.bin 2; names "class0" .. "class99"
 * with Windows line ends. */
static void write_cifar100(void) {
    char p[PATH_BYTES];
    write_batch(path_in(p, CIFAR100_DIR, "train.bin"), 0, 5, 2, cifar100_limit, 0, -1, 0, 0);
    write_batch(path_in(p, CIFAR100_DIR, "test.bin"), 50, 2, 2, cifar100_limit, 0, -1, 0, 0);
    char names[2000] = "";
    for (int i = 0; i < 100; i++) snprintf(names + strlen(names), 20, "class%d\r\n", i);
    write_text(path_in(p, CIFAR100_DIR, "fine_label_names.txt"), names);
}

/* Every image of d is record ids[i] transposed to HWC. */
static void expect_records(const graft_dataset *d, int first, int n) {
    assert_int_equal(d->n, n);
    assert_int_equal(d->h, SIDE);
    assert_int_equal(d->w, SIDE);
    assert_int_equal(d->c, 3);
    for (int i = 0; i < n; i++) {
        graft_image img = graft_dataset_image(d, i);
        for (int y = 0; y < SIDE; y++)
            for (int x = 0; x < SIDE; x++)
                for (int ch = 0; ch < 3; ch++)
                    assert_int_equal(img.data[(y * SIDE + x) * 3 + ch], pixel(first + i, ch, y, x));
    }
}

static void expect_error(graft_status (*load)(const char *, bool, graft_dataset **), bool train,
                         graft_status status, const char *file, const char *what) {
    graft_dataset *d = (graft_dataset *)&d;
    assert_int_equal(load(scratch, train, &d), status);
    assert_null(d);
    const char *msg = graft_errmsg();
    if (!strstr(msg, file) || !strstr(msg, what) || strchr(msg, '\n'))
        fail_msg("message \"%s\" should name %s and say \"%s\"", msg, file, what);
}

/* ---- CIFAR-10 ------------------------------------------------------------------ */

static void cifar10_train_is_the_five_batches_in_order(void **state) {
    (void)state;
    write_cifar10();
    graft_dataset *d;
    assert_int_equal(graft_cifar10_load(scratch, true, &d), GRAFT_OK);
    expect_records(d, 0, 15);
    for (int i = 0; i < 15; i++) assert_int_equal(d->labels[i], i % 10);
    graft_dataset_free(d);
}

static void cifar10_test_is_the_test_batch(void **state) {
    (void)state;
    write_cifar10();
    graft_dataset *d;
    assert_int_equal(graft_cifar10_load(scratch, false, &d), GRAFT_OK);
    expect_records(d, 100, 4);
    assert_int_equal(d->labels[3], 103 % 10);
    graft_dataset_free(d);
}

static void cifar10_class_names_come_from_batches_meta(void **state) {
    (void)state;
    write_cifar10();
    graft_dataset *d;
    assert_int_equal(graft_cifar10_load(scratch, false, &d), GRAFT_OK);
    assert_int_equal(d->num_classes, 10);
    assert_string_equal(d->classes[0], "airplane");
    assert_string_equal(d->classes[9], "truck");
    graft_dataset_free(d);
}

static void cifar10_root_may_be_the_batches_directory_itself(void **state) {
    (void)state;
    write_cifar10();
    char dir[PATH_BYTES];
    snprintf(dir, sizeof dir, "%s/%s", scratch, CIFAR10_DIR);
    graft_dataset *d;
    assert_int_equal(graft_cifar10_load(dir, false, &d), GRAFT_OK);
    assert_int_equal(d->n, 4);
    graft_dataset_free(d);
}

static void a_file_that_is_not_whole_records_is_a_format_error(void **state) {
    (void)state;
    write_cifar10();
    char p[PATH_BYTES];
    write_batch(path_in(p, CIFAR10_DIR, "data_batch_4.bin"), 9, 3, 1, cifar10_limit, 100, -1, 0, 0);
    expect_error(graft_cifar10_load, true, GRAFT_ERR_FORMAT, "data_batch_4.bin",
                 "is not a whole number of 3073-byte CIFAR records");
}

static void an_empty_file_is_a_format_error(void **state) {
    (void)state;
    write_cifar10();
    char p[PATH_BYTES];
    write_batch(path_in(p, CIFAR10_DIR, "test_batch.bin"), 0, 0, 1, cifar10_limit, 0, -1, 0, 0);
    expect_error(graft_cifar10_load, false, GRAFT_ERR_FORMAT, "test_batch.bin", "empty");
}

static void a_cifar10_label_of_10_is_a_format_error(void **state) {
    (void)state;
    write_cifar10();
    char p[PATH_BYTES];
    write_batch(path_in(p, CIFAR10_DIR, "data_batch_2.bin"), 3, 3, 1, cifar10_limit, 0, 4, 0, 10);
    expect_error(graft_cifar10_load, true, GRAFT_ERR_FORMAT, "data_batch_2.bin",
                 "label 10 of record 1 is not below 10");
}

static void a_missing_batch_is_an_io_error_naming_it(void **state) {
    (void)state;
    write_cifar10();
    char p[PATH_BYTES];
    unlink(path_in(p, CIFAR10_DIR, "data_batch_5.bin"));
    expect_error(graft_cifar10_load, true, GRAFT_ERR_IO, "data_batch_5.bin", "");
}

static void the_wrong_number_of_class_names_is_a_format_error(void **state) {
    (void)state;
    write_cifar10();
    char p[PATH_BYTES];
    write_text(path_in(p, CIFAR10_DIR, "batches.meta.txt"), "airplane\nautomobile\n");
    expect_error(graft_cifar10_load, false, GRAFT_ERR_FORMAT, "batches.meta.txt",
                 "2 class names, expected 10");
}

/* ---- CIFAR-100 ----------------------------------------------------------------- */

static void cifar100_labels_are_the_fine_ones(void **state) {
    (void)state;
    write_cifar100();
    graft_dataset *train, *test;
    assert_int_equal(graft_cifar100_load(scratch, true, &train), GRAFT_OK);
    assert_int_equal(graft_cifar100_load(scratch, false, &test), GRAFT_OK);
    expect_records(train, 0, 5);
    expect_records(test, 50, 2);
    for (int i = 0; i < 5; i++) assert_int_equal(train->labels[i], (i + 1) % 100); /* byte 1 */
    assert_int_equal(test->labels[1], 52);
    assert_int_equal(train->num_classes, 100);
    assert_string_equal(train->classes[0], "class0"); /* "\r\n" line ends are trimmed */
    assert_string_equal(train->classes[99], "class99");
    graft_dataset_free(train);
    graft_dataset_free(test);
}

static void cifar100_coarse_and_fine_labels_are_range_checked(void **state) {
    (void)state;
    write_cifar100();
    char p[PATH_BYTES];
    write_batch(path_in(p, CIFAR100_DIR, "test.bin"), 50, 2, 2, cifar100_limit, 0, 51, 1, 100);
    expect_error(graft_cifar100_load, false, GRAFT_ERR_FORMAT, "test.bin",
                 "fine label 100 of record 1 is not below 100");
    write_batch(path_in(p, CIFAR100_DIR, "test.bin"), 50, 2, 2, cifar100_limit, 0, 50, 0, 20);
    expect_error(graft_cifar100_load, false, GRAFT_ERR_FORMAT, "test.bin",
                 "coarse label 20 of record 0 is not below 20");
}

static void cifar10_files_read_as_cifar100_do_not_fit_its_records(void **state) {
    (void)state;
    char p[PATH_BYTES];
    /* 2 CIFAR-10 records = 6146 bytes = 1 CIFAR-100 record and 1072 bytes */
    write_batch(path_in(p, CIFAR100_DIR, "test.bin"), 0, 2, 1, cifar10_limit, 0, -1, 0, 0);
    expect_error(graft_cifar100_load, false, GRAFT_ERR_FORMAT, "test.bin",
                 "3074-byte CIFAR records");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(cifar10_train_is_the_five_batches_in_order, make_scratch,
                                        remove_scratch),
        cmocka_unit_test_setup_teardown(cifar10_test_is_the_test_batch, make_scratch,
                                        remove_scratch),
        cmocka_unit_test_setup_teardown(cifar10_class_names_come_from_batches_meta, make_scratch,
                                        remove_scratch),
        cmocka_unit_test_setup_teardown(cifar10_root_may_be_the_batches_directory_itself,
                                        make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(a_file_that_is_not_whole_records_is_a_format_error,
                                        make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(an_empty_file_is_a_format_error, make_scratch,
                                        remove_scratch),
        cmocka_unit_test_setup_teardown(a_cifar10_label_of_10_is_a_format_error, make_scratch,
                                        remove_scratch),
        cmocka_unit_test_setup_teardown(a_missing_batch_is_an_io_error_naming_it, make_scratch,
                                        remove_scratch),
        cmocka_unit_test_setup_teardown(the_wrong_number_of_class_names_is_a_format_error,
                                        make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(cifar100_labels_are_the_fine_ones, make_scratch,
                                        remove_scratch),
        cmocka_unit_test_setup_teardown(cifar100_coarse_and_fine_labels_are_range_checked,
                                        make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(cifar10_files_read_as_cifar100_do_not_fit_its_records,
                                        make_scratch, remove_scratch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
