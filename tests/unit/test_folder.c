/* test_folder.c — image folders as torchvision's ImageFolder: class order, file order,
 * pixels after the transforms (against torchvision's fixture), and bad input: unreadable
 * files reported and skipped (or an error with --strict), empty folders, corrupt JPEGs
 * found only when decoded, sizes that do not batch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/fetch_cifar.h"
#include "data/loader.h"
#include "data/source.h"
#include "fixtures.h"
#include "graft/graft.h"

#define FOLDER "parity/fixtures/datasets/folder"
#define EXPECTED "parity/fixtures/datasets/folder_expected.safetensors"
#define PATH_BYTES 4096

static char scratch[1024];

/* ---- helpers ---------------------------------------------------------------------- */

static int make_scratch(void **state) {
    (void)state;
    const char *base = getenv("GRAFT_TMP");
    snprintf(scratch, sizeof scratch, "%s/graft_test_folder.XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(scratch) ? 0 : -1;
}

static int remove_scratch(void **state) {
    (void)state;
    graft_remove_tree(scratch);
    return 0;
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(*n + 1);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

/* Writes bytes to scratch/rel, making its folders. */
static void put(const char *rel, const void *bytes, size_t n) {
    char p[PATH_BYTES];
    snprintf(p, sizeof p, "%s/%s", scratch, rel);
    for (char *s = p + strlen(scratch) + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            mkdir(p, 0777);
            *s = '/';
        }
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    fclose(f);
}

/* Copies a fixture image (keeping the first `keep` bytes, all when 0). */
static void copy_fixture(const char *from, const char *to, size_t keep) {
    char src[PATH_BYTES];
    snprintf(src, sizeof src, "%s/%s", FOLDER, from);
    size_t n;
    char *b = slurp(src, &n);
    put(to, b, keep && keep < n ? keep : n);
    free(b);
}

static const char *in_scratch(char *buf, const char *rel) {
    snprintf(buf, PATH_BYTES, "%s/%s", scratch, rel);
    return buf;
}

/* The log lines of one test. */
static char logged[8192];
static int log_lines;
static void capture(int level, const char *message, void *user) {
    (void)user;
    size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%d %s\n", level, message);
    log_lines++;
}

static void start_log(void) {
    logged[0] = 0;
    log_lines = 0;
    graft_set_log_callback(capture, NULL);
}

/* ---- torchvision parity ----------------------------------------------------------------- */

static void classes_and_files_come_in_imagefolder_order(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_safetensors_load(EXPECTED, &m), GRAFT_OK);
    graft_source *s;
    assert_int_equal(graft_source_folder(FOLDER "/train", NULL, &s), GRAFT_OK);
    const char *classes = graft_tensor_map_get_meta(m, "classes");
    assert_string_equal(classes, "Zebra\ncat\ndog"); /* bytes order: upper case first */
    assert_int_equal(graft_source_num_classes(s), 3);
    assert_string_equal(graft_source_class_name(s, 0), "Zebra");
    assert_string_equal(graft_source_class_name(s, 2), "dog");
    /* paths: one per line, relative to the split */
    char *paths = strdup(graft_tensor_map_get_meta(m, "paths"));
    const int64_t *labels = graft_tensor_i64(graft_tensor_map_get(m, "labels"));
    int64_t i = 0;
    for (char *line = strtok(paths, "\n"); line; line = strtok(NULL, "\n"), i++) {
        char want[PATH_BYTES];
        snprintf(want, sizeof want, "%s/train/%s", FOLDER, line);
        assert_true(i < graft_source_len(s));
        assert_string_equal(graft_source_path(s, i), want);
        assert_int_equal(graft_source_label(s, i), labels[i]);
    }
    assert_int_equal(i, graft_source_len(s)); /* notes.txt is not a sample */
    assert_int_equal(graft_source_skipped(s), 0);
    free(paths);
    graft_source_free(s);
    graft_tensor_map_free(m);
}

static void pixels_after_the_transforms_match_torchvision(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_safetensors_load(EXPECTED, &m), GRAFT_OK);
    const graft_tensor *want = graft_tensor_map_get(m, "images");
    graft_source *s;
    assert_int_equal(graft_source_folder(FOLDER "/train", NULL, &s), GRAFT_OK);
    graft_transforms *tf;
    assert_int_equal(graft_transforms_parse(graft_tensor_map_get_meta(m, "transform"), &tf), GRAFT_OK);
    graft_loader_options o = graft_loader_defaults();
    o.batch_size = graft_source_len(s);
    graft_loader *l;
    assert_int_equal(graft_loader_create(s, tf, &o, &l), GRAFT_OK);
    assert_int_equal(graft_loader_start_epoch(l, 0), GRAFT_OK);
    const graft_tensor *x, *y;
    int done;
    assert_int_equal(graft_loader_next(l, &x, &y, &done), GRAFT_OK);
    assert_int_equal(graft_tensor_numel(x), graft_tensor_numel(want));
    const float *a = graft_tensor_f32_const(x), *b = graft_tensor_f32_const(want);
    double worst = 0;
    for (int64_t i = 0; i < graft_tensor_numel(x); i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
    assert_true(worst <= 1e-6); /* PIL's integer resize and the same libjpeg: identical */
    graft_loader_free(l);
    graft_transforms_free(tf);
    graft_source_free(s);
    graft_tensor_map_free(m);
}

static void sizes_are_read_from_the_headers(void **state) {
    (void)state;
    int h, w;
    assert_int_equal(graft_image_probe(FOLDER "/train/cat/1.png", &h, &w), GRAFT_OK);
    assert_int_equal(h, 24);
    assert_int_equal(w, 30);
    assert_int_equal(graft_image_probe(FOLDER "/train/dog/d.jpeg", &h, &w), GRAFT_OK);
    assert_int_equal(h, 20);
    assert_int_equal(w, 33);
    assert_int_equal(graft_image_probe(FOLDER "/train/Zebra/z.bmp", &h, &w), GRAFT_OK);
    assert_int_equal(h, 17);
    assert_int_equal(w, 21);
    assert_int_equal(graft_image_probe(FOLDER "/train/dog/notes.txt", &h, &w), GRAFT_ERR_UNSUPPORTED);
}

static void images_of_different_sizes_need_a_resize_to_batch(void **state) {
    (void)state;
    graft_source *s;
    assert_int_equal(graft_source_folder(FOLDER "/train", NULL, &s), GRAFT_OK);
    graft_loader *l;
    assert_int_equal(graft_loader_create(s, NULL, NULL, &l), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(), FOLDER "/train/cat/1.png"));
    assert_non_null(strstr(graft_errmsg(), "resize"));
    graft_source_free(s);
}

/* ---- bad input ---------------------------------------------------------------------- */

/* A folder of three classes: a/ good files, b/ good and unreadable ones, c/ good. */
static void write_mixed_folder(void) {
    copy_fixture("train/cat/1.png", "root/a/1.png", 0);
    copy_fixture("train/dog/d.jpeg", "root/a/2.jpg", 0);
    copy_fixture("train/cat/1.png", "root/b/0_cut.png", 20);     /* cut inside the IHDR */
    put("root/b/1_empty.jpg", "", 0);
    put("root/b/2_text.png", "hello, not a png", 16);
    copy_fixture("train/Zebra/z.bmp", "root/b/3.BMP", 0);
    put("root/b/4.tif", "II*\0", 4);                           /* a format graft lacks */
    copy_fixture("train/cat/1.png", "root/c/1.png", 0);
}

static void unreadable_files_are_reported_skipped_and_counted(void **state) {
    (void)state;
    write_mixed_folder();
    char root[PATH_BYTES], p[PATH_BYTES];
    start_log();
    graft_source *s;
    assert_int_equal(graft_source_folder(in_scratch(root, "root"), NULL, &s), GRAFT_OK);
    graft_set_log_callback(NULL, NULL);
    assert_int_equal(graft_source_len(s), 4);
    assert_int_equal(graft_source_skipped(s), 4);
    assert_int_equal(log_lines, 4);
    assert_non_null(strstr(logged, in_scratch(p, "root/b/0_cut.png")));
    assert_non_null(strstr(logged, in_scratch(p, "root/b/1_empty.jpg: file is empty; skipped")));
    assert_non_null(strstr(logged, in_scratch(p, "root/b/2_text.png: not a PNG, JPEG or BMP")));
    assert_non_null(strstr(logged, in_scratch(p, "root/b/4.tif")));
    assert_string_equal(graft_source_path(s, 2), in_scratch(p, "root/b/3.BMP"));
    assert_int_equal(graft_source_label(s, 2), 1);
    graft_source_free(s);
}

static void strict_makes_an_unreadable_file_an_error(void **state) {
    (void)state;
    write_mixed_folder();
    char root[PATH_BYTES];
    graft_folder_options o = {.strict = true};
    graft_source *s;
    assert_int_equal(graft_source_folder(in_scratch(root, "root"), &o, &s), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "root/b/0_cut.png: "));
    assert_null(strchr(graft_errmsg(), '\n'));
}

static void empty_folders_are_errors(void **state) {
    (void)state;
    char root[PATH_BYTES];
    graft_source *s;
    mkdir(in_scratch(root, "empty"), 0777);
    assert_int_equal(graft_source_folder(root, NULL, &s), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "no class folders"));
    copy_fixture("train/cat/1.png", "noimg/a/1.png", 0);
    put("noimg/b/readme.txt", "x", 1);
    assert_int_equal(graft_source_folder(in_scratch(root, "noimg"), NULL, &s), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "class folder 'b'"));
    assert_int_equal(graft_source_folder(in_scratch(root, "missing"), NULL, &s), GRAFT_ERR_IO);
    put("allbad/a/1.png", "junk", 4);
    graft_set_log_callback(NULL, NULL);
    assert_int_equal(graft_source_folder(in_scratch(root, "allbad"), NULL, &s), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "none of the 1 image files"));
}

static void a_test_split_must_have_the_training_classes(void **state) {
    (void)state;
    copy_fixture("train/cat/1.png", "split/train/a/1.png", 0);
    copy_fixture("train/cat/1.png", "split/train/b/1.png", 0);
    copy_fixture("train/cat/1.png", "split/test/a/1.png", 0);
    copy_fixture("train/cat/1.png", "split/test/c/1.png", 0);
    char p[PATH_BYTES];
    graft_source *tr, *te;
    assert_int_equal(graft_source_folder(in_scratch(p, "split/train"), NULL, &tr), GRAFT_OK);
    graft_folder_options o = {.classes = (const char *const *)tr->classes, .num_classes = tr->num_classes};
    assert_int_equal(graft_source_folder(in_scratch(p, "split/test"), &o, &te), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "split/test"));
    graft_source_free(tr);
}

/* A JPEG cut after its frame header passes the header check; decoding fails. */
static graft_source *folder_with_cut_jpeg(char *root) {
    copy_fixture("train/cat/1.png", "cut/a/1.png", 0);
    copy_fixture("train/cat/2.JPG", "cut/a/2.jpg", 400);
    copy_fixture("train/cat/1.png", "cut/a/3.png", 0);
    graft_source *s;
    assert_int_equal(graft_source_folder(in_scratch(root, "cut"), NULL, &s), GRAFT_OK);
    assert_int_equal(graft_source_len(s), 3);
    return s;
}

static void a_corrupt_jpeg_is_skipped_by_the_loader_and_reported_once(void **state) {
    (void)state;
    char root[PATH_BYTES];
    graft_source *s = folder_with_cut_jpeg(root);
    graft_transforms *tf;
    assert_int_equal(graft_transforms_parse("resize=8,centercrop=8", &tf), GRAFT_OK);
    graft_loader_options o = graft_loader_defaults();
    o.batch_size = 3;
    graft_loader *l;
    assert_int_equal(graft_loader_create(s, tf, &o, &l), GRAFT_OK);
    start_log();
    for (int e = 0; e < 2; e++) {
        assert_int_equal(graft_loader_start_epoch(l, e), GRAFT_OK);
        const graft_tensor *x, *y;
        int done;
        assert_int_equal(graft_loader_next(l, &x, &y, &done), GRAFT_OK);
        assert_int_equal(graft_tensor_dim(x, 0), 3);
        assert_int_equal(graft_loader_batch_index(l, 1), 2); /* replaced by the next sample */
        assert_memory_equal(graft_tensor_f32_const(x) + 192, graft_tensor_f32_const(x) + 384,
                            192 * sizeof(float));
    }
    graft_set_log_callback(NULL, NULL);
    assert_int_equal(log_lines, 1);
    assert_non_null(strstr(logged, "cut/a/2.jpg: "));
    assert_non_null(strstr(logged, "; skipped"));
    assert_int_equal(graft_loader_skipped(l), 1);
    graft_loader_free(l);
    graft_transforms_free(tf);
    graft_source_free(s);
}

static void strict_makes_a_corrupt_jpeg_an_error_from_next(void **state) {
    (void)state;
    char root[PATH_BYTES];
    graft_source *s = folder_with_cut_jpeg(root);
    graft_transforms *tf;
    assert_int_equal(graft_transforms_parse("resize=8,centercrop=8", &tf), GRAFT_OK);
    graft_loader_options o = graft_loader_defaults();
    o.batch_size = 1;
    o.strict = true;
    o.workers = 2;
    graft_loader *l;
    assert_int_equal(graft_loader_create(s, tf, &o, &l), GRAFT_OK);
    assert_int_equal(graft_loader_start_epoch(l, 0), GRAFT_OK);
    const graft_tensor *x, *y;
    int done;
    assert_int_equal(graft_loader_next(l, &x, &y, &done), GRAFT_OK);
    assert_int_equal(graft_loader_next(l, &x, &y, &done), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "cut/a/2.jpg: "));
    assert_int_equal(graft_loader_next(l, &x, &y, &done), GRAFT_ERR_INVALID); /* epoch over */
    graft_loader_free(l);
    graft_transforms_free(tf);
    graft_source_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(classes_and_files_come_in_imagefolder_order),
        cmocka_unit_test(pixels_after_the_transforms_match_torchvision),
        cmocka_unit_test(sizes_are_read_from_the_headers),
        cmocka_unit_test(images_of_different_sizes_need_a_resize_to_batch),
        cmocka_unit_test_setup_teardown(unreadable_files_are_reported_skipped_and_counted, make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(strict_makes_an_unreadable_file_an_error, make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(empty_folders_are_errors, make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(a_test_split_must_have_the_training_classes, make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(a_corrupt_jpeg_is_skipped_by_the_loader_and_reported_once, make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(strict_makes_a_corrupt_jpeg_an_error_from_next, make_scratch, remove_scratch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
