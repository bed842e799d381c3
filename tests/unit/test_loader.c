/* test_loader.c — the batch loader: coverage of every sample, seeded shuffles that
 * differ per epoch, drop_last, results independent of the number of worker threads,
 * tensor sources, and errors reaching the caller.
 *
 * The in-memory dataset used here stamps each image with its index (pixel 0 holds
 * i % 256, pixel 1 holds i / 256, both in channel 0), so a batch says which samples it holds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "data/loader.h"

#define SIDE 8

/* n images of SIDE × SIDE × c, label i % classes. */
static graft_source *stamped(int64_t n, int c, int64_t classes) {
    graft_dataset *d = calloc(1, sizeof *d);
    assert_non_null(d);
    d->n = n;
    d->h = d->w = SIDE;
    d->c = c;
    size_t per = (size_t)SIDE * SIDE * (size_t)c;
    d->images = malloc(per * (size_t)n);
    d->labels = malloc(sizeof *d->labels * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        uint8_t *p = d->images + per * (size_t)i;
        for (size_t k = 0; k < per; k++) p[k] = (uint8_t)(k * 7 + (size_t)i * 3);
        p[0] = (uint8_t)(i % 256);
        p[c] = (uint8_t)(i / 256); /* pixel 1, channel 0 */
        d->labels[i] = i % classes;
    }
    d->num_classes = classes;
    graft_source *s;
    assert_int_equal(graft_source_from_dataset(d, "stamped", &s), GRAFT_OK);
    return s;
}

/* The sample index stamped into row j of a batch (channel 0, pixel 0 and 1, after
 * ToTensor only). */
static int64_t stamp(const graft_tensor *x, int64_t j) {
    const float *p = graft_tensor_f32_const(x) + j * graft_tensor_dim(x, 1) * SIDE * SIDE;
    return (int64_t)lroundf(p[0] * 255.0f) + 256 * (int64_t)lroundf(p[1] * 255.0f);
}

/* Every batch of one epoch: the stamps in order; returns how many. */
static int64_t run_epoch(graft_loader *l, int64_t epoch, int64_t *order, int64_t *batch_sizes) {
    assert_int_equal(graft_loader_start_epoch(l, epoch), GRAFT_OK);
    const graft_tensor *x, *y;
    int done;
    int64_t n = 0, b = 0;
    for (;;) {
        assert_int_equal(graft_loader_next(l, &x, &y, &done), GRAFT_OK);
        if (done) break;
        assert_int_equal(graft_tensor_ndim(x), 4);
        assert_int_equal(graft_tensor_dim(y, 0), graft_tensor_dim(x, 0));
        if (batch_sizes) batch_sizes[b] = graft_tensor_dim(x, 0);
        b++;
        for (int64_t j = 0; j < graft_tensor_dim(x, 0); j++) {
            order[n] = stamp(x, j);
            assert_int_equal(((const int64_t *)y->data)[j], graft_loader_batch_index(l, j) % 5);
            assert_int_equal(order[n], graft_loader_batch_index(l, j));
            n++;
        }
    }
    assert_int_equal(b, graft_loader_num_batches(l));
    return n;
}

static void without_shuffle_batches_follow_the_dataset_order(void **state) {
    (void)state;
    graft_source *s = stamped(23, 3, 5);
    graft_loader_options o = graft_loader_defaults();
    o.batch_size = 5;
    graft_loader *l;
    assert_int_equal(graft_loader_create(s, NULL, &o, &l), GRAFT_OK);
    int chw[3];
    graft_loader_sample_shape(l, chw);
    assert_int_equal(chw[0], 3);
    assert_int_equal(chw[1], SIDE);
    int64_t order[23], sizes[5];
    assert_int_equal(run_epoch(l, 0, order, sizes), 23);
    for (int64_t i = 0; i < 23; i++) assert_int_equal(order[i], i);
    assert_int_equal(sizes[0], 5);
    assert_int_equal(sizes[4], 3); /* the last batch is smaller */
    graft_loader_free(l);
    graft_source_free(s);
}

static void drop_last_leaves_out_the_partial_batch(void **state) {
    (void)state;
    graft_source *s = stamped(23, 3, 5);
    graft_loader_options o = graft_loader_defaults();
    o.batch_size = 5;
    o.drop_last = true;
    graft_loader *l;
    assert_int_equal(graft_loader_create(s, NULL, &o, &l), GRAFT_OK);
    assert_int_equal(graft_loader_num_batches(l), 4);
    assert_int_equal(graft_loader_num_samples(l), 20);
    int64_t order[23];
    assert_int_equal(run_epoch(l, 0, order, NULL), 20);
    graft_loader_free(l);
    graft_source_free(s);
}

static bool is_permutation(const int64_t *order, int64_t n) {
    bool seen[1000] = {false};
    for (int64_t i = 0; i < n; i++) {
        if (order[i] < 0 || order[i] >= n || seen[order[i]]) return false;
        seen[order[i]] = true;
    }
    return true;
}

static void shuffles_are_seeded_and_differ_per_epoch(void **state) {
    (void)state;
    enum { N = 300 };
    graft_source *s = stamped(N, 1, 5);
    graft_loader_options o = graft_loader_defaults();
    o.batch_size = 32;
    o.shuffle = true;
    o.seed = 7;
    graft_loader *a, *b;
    assert_int_equal(graft_loader_create(s, NULL, &o, &a), GRAFT_OK);
    o.seed = 8;
    assert_int_equal(graft_loader_create(s, NULL, &o, &b), GRAFT_OK);
    int64_t e0[N], e1[N], again[N], other[N];
    assert_int_equal(run_epoch(a, 0, e0, NULL), N);
    assert_int_equal(run_epoch(a, 1, e1, NULL), N);
    assert_int_equal(run_epoch(a, 0, again, NULL), N);
    assert_int_equal(run_epoch(b, 0, other, NULL), N);
    assert_true(is_permutation(e0, N));
    assert_true(is_permutation(e1, N));
    assert_memory_not_equal(e0, e1, sizeof e0);      /* a new order each epoch */
    assert_memory_equal(e0, again, sizeof e0);       /* the same epoch, the same order */
    assert_memory_not_equal(e0, other, sizeof e0);   /* another seed, another order */
    graft_loader_free(a);
    graft_loader_free(b);
    graft_source_free(s);
}

/* All the floats of one epoch. */
static float *epoch_floats(const graft_source *s, const graft_transforms *tf, int workers,
                           int64_t epoch, size_t *count) {
    graft_loader_options o = graft_loader_defaults();
    o.batch_size = 7;
    o.shuffle = true;
    o.seed = 42;
    o.workers = workers;
    graft_loader *l;
    assert_int_equal(graft_loader_create(s, tf, &o, &l), GRAFT_OK);
    int chw[3];
    graft_loader_sample_shape(l, chw);
    size_t per = (size_t)chw[0] * chw[1] * chw[2];
    float *all = malloc(per * (size_t)graft_source_len(s) * sizeof *all);
    size_t n = 0;
    assert_int_equal(graft_loader_start_epoch(l, epoch), GRAFT_OK);
    const graft_tensor *x, *y;
    int done;
    while (graft_loader_next(l, &x, &y, &done) == GRAFT_OK && !done) {
        memcpy(all + n, graft_tensor_f32_const(x), graft_tensor_nbytes(x));
        n += (size_t)graft_tensor_numel(x);
    }
    assert_int_equal(done, 1);
    graft_loader_free(l);
    *count = n;
    return all;
}

static void random_transforms_do_not_depend_on_the_number_of_workers(void **state) {
    (void)state;
    graft_source *s = stamped(61, 3, 5);
    graft_transforms *tf;
    assert_int_equal(graft_transforms_parse("randomcrop=6:2,hflip,normalize=0.5/0.25", &tf), GRAFT_OK);
    size_t n0, n1, n3, m;
    float *w0 = epoch_floats(s, tf, 0, 3, &n0);
    float *w1 = epoch_floats(s, tf, 1, 3, &n1);
    float *w3 = epoch_floats(s, tf, 3, 3, &n3);
    float *next = epoch_floats(s, tf, 2, 4, &m);
    assert_int_equal(n0, (size_t)61 * 3 * 6 * 6);
    assert_int_equal(n1, n0);
    assert_int_equal(n3, n0);
    assert_memory_equal(w0, w1, n0 * sizeof *w0);
    assert_memory_equal(w0, w3, n0 * sizeof *w0);
    assert_memory_not_equal(w0, next, n0 * sizeof *w0); /* epoch 4 draws other crops */
    free(w0);
    free(w1);
    free(w3);
    free(next);
    graft_transforms_free(tf);
    graft_source_free(s);
}

static void totensor_and_normalize_give_torchvision_values(void **state) {
    (void)state;
    graft_source *s = stamped(3, 3, 5);
    graft_transforms *tf;
    assert_int_equal(graft_transforms_parse("normalize=0.5:0.4:0.3/0.2:0.25:0.5", &tf), GRAFT_OK);
    graft_loader_options o = graft_loader_defaults();
    o.batch_size = 3;
    graft_loader *l;
    assert_int_equal(graft_loader_create(s, tf, &o, &l), GRAFT_OK);
    assert_int_equal(graft_loader_start_epoch(l, 0), GRAFT_OK);
    const graft_tensor *x, *y;
    int done;
    assert_int_equal(graft_loader_next(l, &x, &y, &done), GRAFT_OK);
    const float *v = graft_tensor_f32_const(x);
    graft_source_work w = {0};
    graft_sample smp;
    assert_int_equal(graft_source_get(s, 2, &w, &smp), GRAFT_OK);
    const float mean[3] = {0.5f, 0.4f, 0.3f}, sd[3] = {0.2f, 0.25f, 0.5f};
    for (int c = 0; c < 3; c++)
        for (int p = 0; p < SIDE * SIDE; p++) {
            float want = ((float)smp.image.data[p * 3 + c] / 255.0f - mean[c]) / sd[c];
            assert_float_equal(v[2 * 3 * SIDE * SIDE + c * SIDE * SIDE + p], want, 1e-6);
        }
    graft_source_work_release(&w);
    graft_loader_free(l);
    graft_transforms_free(tf);
    graft_source_free(s);
}

static void a_new_epoch_may_start_before_the_last_one_ended(void **state) {
    (void)state;
    graft_source *s = stamped(100, 1, 5);
    graft_loader_options o = graft_loader_defaults();
    o.batch_size = 4;
    o.workers = 2;
    graft_loader *l;
    assert_int_equal(graft_loader_create(s, NULL, &o, &l), GRAFT_OK);
    const graft_tensor *x, *y;
    int done;
    assert_int_equal(graft_loader_start_epoch(l, 0), GRAFT_OK);
    assert_int_equal(graft_loader_next(l, &x, &y, &done), GRAFT_OK);
    int64_t order[100];
    assert_int_equal(run_epoch(l, 1, order, NULL), 100);
    for (int64_t i = 0; i < 100; i++) assert_int_equal(order[i], i);
    graft_loader_free(l);
    graft_source_free(s);
}

static void next_before_any_epoch_is_an_error(void **state) {
    (void)state;
    graft_source *s = stamped(5, 1, 5);
    graft_loader *l;
    assert_int_equal(graft_loader_create(s, NULL, NULL, &l), GRAFT_OK);
    const graft_tensor *x, *y;
    int done;
    assert_int_equal(graft_loader_next(l, &x, &y, &done), GRAFT_ERR_INVALID);
    assert_null(x);
    graft_loader_free(l);
    graft_source_free(s);
}

static void bad_options_are_refused(void **state) {
    (void)state;
    graft_source *s = stamped(5, 1, 5);
    graft_loader_options o = graft_loader_defaults();
    graft_loader *l;
    o.batch_size = 0;
    assert_int_equal(graft_loader_create(s, NULL, &o, &l), GRAFT_ERR_INVALID);
    o = graft_loader_defaults();
    o.workers = -1;
    assert_int_equal(graft_loader_create(s, NULL, &o, &l), GRAFT_ERR_INVALID);
    graft_transforms *tf;
    assert_int_equal(graft_transforms_parse("centercrop=20", &tf), GRAFT_OK);
    assert_int_equal(graft_loader_create(s, tf, NULL, &l), GRAFT_OK); /* pads with zeros */
    graft_loader_free(l);
    graft_transforms_free(tf);
    assert_int_equal(graft_transforms_parse("randomcrop=20", &tf), GRAFT_OK);
    assert_int_equal(graft_loader_create(s, tf, NULL, &l), GRAFT_ERR_SHAPE);
    graft_transforms_free(tf);
    graft_source_free(s);
}

/* A float32 [n, 2, 3, 4] tensor source. */
static graft_source *float_source(int64_t n) {
    int64_t xs[4] = {n, 2, 3, 4}, ys[1] = {n};
    graft_tensor *x, *y;
    assert_int_equal(graft_tensor_create(GRAFT_F32, 4, xs, &x), GRAFT_OK);
    assert_int_equal(graft_tensor_create(GRAFT_I64, 1, ys, &y), GRAFT_OK);
    for (int64_t i = 0; i < graft_tensor_numel(x); i++) graft_tensor_f32(x)[i] = (float)i * 0.5f;
    for (int64_t i = 0; i < n; i++) graft_tensor_i64(y)[i] = i % 3;
    const char *names[] = {"a", "b", "c"};
    graft_source *s;
    assert_int_equal(graft_source_from_tensors(x, y, 3, names, "floats", &s), GRAFT_OK);
    graft_tensor_free(x);
    graft_tensor_free(y);
    return s;
}

static void float_tensors_are_batched_as_they_are(void **state) {
    (void)state;
    graft_source *s = float_source(5);
    assert_int_equal(graft_source_kind(s), GRAFT_SAMPLE_TENSOR);
    assert_string_equal(graft_source_class_name(s, 2), "c");
    graft_loader_options o = graft_loader_defaults();
    o.batch_size = 2;
    graft_loader *l;
    assert_int_equal(graft_loader_create(s, NULL, &o, &l), GRAFT_OK);
    assert_int_equal(graft_loader_start_epoch(l, 0), GRAFT_OK);
    const graft_tensor *x, *y;
    int done;
    assert_int_equal(graft_loader_next(l, &x, &y, &done), GRAFT_OK);
    assert_int_equal(graft_loader_next(l, &x, &y, &done), GRAFT_OK);
    assert_int_equal(graft_tensor_dim(x, 1), 2);
    assert_int_equal(graft_tensor_dim(x, 3), 4);
    assert_float_equal(graft_tensor_f32_const(x)[0], 24 * 2 * 0.5, 0); /* sample 2 */
    assert_int_equal(((const int64_t *)y->data)[1], 0);                 /* sample 3 */
    graft_loader_free(l);
    graft_transforms *tf;
    assert_int_equal(graft_transforms_parse("hflip", &tf), GRAFT_OK);
    assert_int_equal(graft_loader_create(s, tf, &o, &l), GRAFT_ERR_INVALID);
    assert_non_null(strstr(graft_errmsg(), "as they are"));
    graft_transforms_free(tf);
    graft_source_free(s);
}

static void tensor_labels_out_of_range_are_refused(void **state) {
    (void)state;
    int64_t xs[4] = {2, 1, 2, 2}, ys[1] = {2};
    graft_tensor *x, *y;
    assert_int_equal(graft_tensor_create(GRAFT_F32, 4, xs, &x), GRAFT_OK);
    assert_int_equal(graft_tensor_create(GRAFT_I64, 1, ys, &y), GRAFT_OK);
    graft_tensor_i64(y)[1] = 3;
    graft_source *s;
    assert_int_equal(graft_source_from_tensors(x, y, 3, NULL, "t.safetensors", &s), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "t.safetensors"));
    assert_int_equal(graft_source_from_tensors(x, y, 0, NULL, "t", &s), GRAFT_OK); /* 4 classes */
    assert_int_equal(graft_source_num_classes(s), 4);
    assert_string_equal(graft_source_class_name(s, 3), "3");
    graft_source_free(s);
    graft_tensor_i64(y)[1] = -1;
    assert_int_equal(graft_source_from_tensors(x, y, 0, NULL, "t", &s), GRAFT_ERR_FORMAT);
    graft_tensor_free(x);
    graft_tensor_free(y);
}

static void integer_images_become_uint8_images(void **state) {
    (void)state;
    int64_t xs[4] = {2, 3, 4, 3}, ys[1] = {2};
    graft_tensor *x, *y;
    assert_int_equal(graft_tensor_create(GRAFT_I64, 4, xs, &x), GRAFT_OK);
    assert_int_equal(graft_tensor_create(GRAFT_I64, 1, ys, &y), GRAFT_OK);
    for (int64_t i = 0; i < graft_tensor_numel(x); i++) graft_tensor_i64(x)[i] = (i * 11) % 256;
    graft_source *s;
    assert_int_equal(graft_source_from_tensors(x, y, 2, NULL, "u8", &s), GRAFT_OK);
    assert_int_equal(graft_source_kind(s), GRAFT_SAMPLE_IMAGE);
    graft_source_work w = {0};
    graft_sample smp;
    assert_int_equal(graft_source_get(s, 1, &w, &smp), GRAFT_OK);
    assert_int_equal(smp.image.h, 3);
    assert_int_equal(smp.image.w, 4);
    assert_int_equal(smp.image.data[5], (36 + 5) * 11 % 256);
    graft_source_free(s);
    graft_tensor_i64(x)[7] = 256;
    assert_int_equal(graft_source_from_tensors(x, y, 2, NULL, "u8", &s), GRAFT_ERR_FORMAT);
    graft_tensor_free(x);
    graft_tensor_free(y);
}

static void subsets_relabel_and_sample_per_class(void **state) {
    (void)state;
    graft_source *s = stamped(50, 1, 5); /* 10 per class */
    int64_t pick[2] = {3, 1};
    graft_source *sel;
    assert_int_equal(graft_source_select_classes(s, pick, 2, &sel), GRAFT_OK);
    assert_int_equal(graft_source_len(sel), 20);
    assert_string_equal(graft_source_class_name(sel, 0), "3");
    assert_string_equal(graft_source_class_name(sel, 1), "1");
    assert_int_equal(graft_source_label(sel, 0), 1); /* sample 1 is class 1 -> label 1 */
    assert_int_equal(graft_source_label(sel, 1), 0); /* sample 3 is class 3 -> label 0 */
    graft_source *few;
    assert_int_equal(graft_source_per_class(sel, 4, 9, &few), GRAFT_OK);
    assert_int_equal(graft_source_len(few), 8);
    int64_t counts[2];
    graft_source_class_counts(few, counts);
    assert_int_equal(counts[0], 4);
    assert_int_equal(counts[1], 4);
    graft_source_free(few);

    graft_source *t = stamped(50, 1, 5), *too_many;
    assert_int_equal(graft_source_per_class(t, 11, 9, &too_many), GRAFT_ERR_INVALID);
    t = stamped(50, 1, 5);
    int64_t twice[2] = {2, 2};
    assert_int_equal(graft_source_select_classes(t, twice, 2, &sel), GRAFT_ERR_INVALID);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(without_shuffle_batches_follow_the_dataset_order),
        cmocka_unit_test(drop_last_leaves_out_the_partial_batch),
        cmocka_unit_test(shuffles_are_seeded_and_differ_per_epoch),
        cmocka_unit_test(random_transforms_do_not_depend_on_the_number_of_workers),
        cmocka_unit_test(totensor_and_normalize_give_torchvision_values),
        cmocka_unit_test(a_new_epoch_may_start_before_the_last_one_ended),
        cmocka_unit_test(next_before_any_epoch_is_an_error),
        cmocka_unit_test(bad_options_are_refused),
        cmocka_unit_test(float_tensors_are_batched_as_they_are),
        cmocka_unit_test(tensor_labels_out_of_range_are_refused),
        cmocka_unit_test(integer_images_become_uint8_images),
        cmocka_unit_test(subsets_relabel_and_sample_per_class),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
