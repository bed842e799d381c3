/* test_tensor_map.c — the ordered name -> tensor map behind state dicts and safetensors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "core/tensor.h"
#include "graft/graft.h"

static graft_tensor *scalar_f32(float v) {
    graft_tensor *t;
    assert_int_equal(graft_tensor_create(GRAFT_F32, 0, NULL, &t), GRAFT_OK);
    graft_tensor_f32(t)[0] = v;
    return t;
}

static graft_tensor *vector_i64(int64_t n) {
    graft_tensor *t;
    assert_int_equal(graft_tensor_create(GRAFT_I64, 1, &n, &t), GRAFT_OK);
    for (int64_t i = 0; i < n; i++) graft_tensor_i64(t)[i] = i * 10;
    return t;
}

static void a_new_map_is_empty(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    assert_int_equal(graft_tensor_map_size(m), 0);
    assert_int_equal(graft_tensor_map_meta_size(m), 0);
    assert_null(graft_tensor_map_get(m, "x"));
    assert_null(graft_tensor_map_get_meta(m, "x"));
    graft_tensor_map_free(m);
}

static void put_keeps_insertion_order(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    const char *names[] = {"features.0.weight", "features.0.bias", "classifier.6.weight", "a"};
    for (int i = 0; i < 4; i++)
        assert_int_equal(graft_tensor_map_put(m, names[i], scalar_f32((float)i)), GRAFT_OK);
    assert_int_equal(graft_tensor_map_size(m), 4);
    for (int i = 0; i < 4; i++) {
        assert_string_equal(graft_tensor_map_name(m, (size_t)i), names[i]);
        assert_true(graft_tensor_f32(graft_tensor_map_tensor(m, (size_t)i))[0] == (float)i);
    }
    graft_tensor_map_free(m);
}

static void many_puts_grow_the_map(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    char name[32];
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof name, "layer.%d", i);
        assert_int_equal(graft_tensor_map_put(m, name, scalar_f32((float)i)), GRAFT_OK);
    }
    assert_int_equal(graft_tensor_map_size(m), 100);
    assert_true(graft_tensor_f32(graft_tensor_map_get(m, "layer.73"))[0] == 73.0f);
    assert_string_equal(graft_tensor_map_name(m, 99), "layer.99");
    graft_tensor_map_free(m);
}

static void put_copies_the_name(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    char name[16] = "weight";
    assert_int_equal(graft_tensor_map_put(m, name, scalar_f32(1)), GRAFT_OK);
    strcpy(name, "changed");
    assert_string_equal(graft_tensor_map_name(m, 0), "weight");
    assert_non_null(graft_tensor_map_get(m, "weight"));
    graft_tensor_map_free(m);
}

static void get_finds_the_tensor_put_under_a_name(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    graft_tensor *a = scalar_f32(1), *b = vector_i64(3);
    assert_int_equal(graft_tensor_map_put(m, "a", a), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "b", b), GRAFT_OK);
    assert_ptr_equal(graft_tensor_map_get(m, "a"), a);
    assert_ptr_equal(graft_tensor_map_get(m, "b"), b);
    assert_null(graft_tensor_map_get(m, "c"));
    assert_null(graft_tensor_map_get(m, "A"));
    graft_tensor_map_free(m);
}

static void put_of_an_existing_name_replaces_it_in_place(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "a", scalar_f32(1)), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "b", vector_i64(1000)), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "c", scalar_f32(3)), GRAFT_OK);
    size_t before = graft_tensor_bytes_in_use();
    graft_tensor *b2 = scalar_f32(42);
    assert_int_equal(graft_tensor_map_put(m, "b", b2), GRAFT_OK);
    /* The old 8000-byte tensor was freed; the new 4-byte one is held. */
    assert_int_equal(graft_tensor_bytes_in_use(), before - 1000 * 8 + 4);
    assert_int_equal(graft_tensor_map_size(m), 3);
    assert_string_equal(graft_tensor_map_name(m, 1), "b");
    assert_ptr_equal(graft_tensor_map_tensor(m, 1), b2);
    assert_ptr_equal(graft_tensor_map_get(m, "b"), b2);
    graft_tensor_map_free(m);
}

static void put_of_the_same_tensor_again_keeps_it(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    graft_tensor *a = scalar_f32(7);
    assert_int_equal(graft_tensor_map_put(m, "a", a), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "a", a), GRAFT_OK);
    assert_true(graft_tensor_f32(graft_tensor_map_get(m, "a"))[0] == 7.0f);
    graft_tensor_map_free(m);
}

static void put_takes_ownership_even_when_it_fails(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    size_t before = graft_tensor_bytes_in_use();
    /* The tensor is freed by the failing put (the sanitizer's leak check confirms). */
    assert_int_equal(graft_tensor_map_put(m, NULL, vector_i64(16)), GRAFT_ERR_INVALID);
    assert_int_equal(graft_tensor_bytes_in_use(), before);
    assert_int_equal(graft_tensor_map_size(m), 0);
    graft_tensor_map_free(m);
}

static void put_copy_stores_an_independent_copy(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    graft_tensor *src = vector_i64(4);
    assert_int_equal(graft_tensor_map_put_copy(m, "v", src), GRAFT_OK);
    graft_tensor_i64(src)[2] = -1;
    graft_tensor *copy = graft_tensor_map_get(m, "v");
    assert_ptr_not_equal(copy, src);
    assert_int_equal(graft_tensor_ndim(copy), 1);
    assert_int_equal(graft_tensor_dim(copy, 0), 4);
    assert_int_equal(graft_tensor_i64(copy)[2], 20);
    graft_tensor_free(src);
    graft_tensor_map_free(m);
}

static void index_past_the_end_gives_null(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "a", scalar_f32(1)), GRAFT_OK);
    assert_null(graft_tensor_map_name(m, 1));
    assert_null(graft_tensor_map_tensor(m, 1));
    assert_null(graft_tensor_map_meta_key(m, 0));
    graft_tensor_map_free(m);
}

static void free_releases_every_tensor(void **state) {
    (void)state;
    size_t before = graft_tensor_bytes_in_use();
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "a", vector_i64(100)), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "b", vector_i64(50)), GRAFT_OK);
    assert_int_equal(graft_tensor_map_set_meta(m, "format", "pt"), GRAFT_OK);
    assert_true(graft_tensor_bytes_in_use() > before);
    graft_tensor_map_free(m);
    assert_int_equal(graft_tensor_bytes_in_use(), before);
    graft_tensor_map_free(NULL);
}

static void metadata_keeps_insertion_order(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    assert_int_equal(graft_tensor_map_set_meta(m, "format", "pt"), GRAFT_OK);
    assert_int_equal(graft_tensor_map_set_meta(m, "arch", "vgg16"), GRAFT_OK);
    assert_int_equal(graft_tensor_map_set_meta(m, "epoch", "3"), GRAFT_OK);
    assert_int_equal(graft_tensor_map_meta_size(m), 3);
    assert_string_equal(graft_tensor_map_meta_key(m, 0), "format");
    assert_string_equal(graft_tensor_map_meta_key(m, 1), "arch");
    assert_string_equal(graft_tensor_map_meta_key(m, 2), "epoch");
    assert_string_equal(graft_tensor_map_get_meta(m, "arch"), "vgg16");
    assert_null(graft_tensor_map_get_meta(m, "missing"));
    graft_tensor_map_free(m);
}

static void setting_existing_metadata_replaces_the_value_in_place(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    assert_int_equal(graft_tensor_map_set_meta(m, "a", "1"), GRAFT_OK);
    assert_int_equal(graft_tensor_map_set_meta(m, "b", "2"), GRAFT_OK);
    char value[8] = "3";
    assert_int_equal(graft_tensor_map_set_meta(m, "a", value), GRAFT_OK);
    strcpy(value, "x"); /* the value was copied */
    assert_int_equal(graft_tensor_map_meta_size(m), 2);
    assert_string_equal(graft_tensor_map_meta_key(m, 0), "a");
    assert_string_equal(graft_tensor_map_get_meta(m, "a"), "3");
    graft_tensor_map_free(m);
}

static void metadata_and_tensors_are_separate_namespaces(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    assert_int_equal(graft_tensor_map_set_meta(m, "x", "meta"), GRAFT_OK);
    assert_null(graft_tensor_map_get(m, "x"));
    assert_int_equal(graft_tensor_map_put(m, "x", scalar_f32(1)), GRAFT_OK);
    assert_string_equal(graft_tensor_map_get_meta(m, "x"), "meta");
    assert_int_equal(graft_tensor_map_size(m), 1);
    graft_tensor_map_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_new_map_is_empty),
        cmocka_unit_test(put_keeps_insertion_order),
        cmocka_unit_test(many_puts_grow_the_map),
        cmocka_unit_test(put_copies_the_name),
        cmocka_unit_test(get_finds_the_tensor_put_under_a_name),
        cmocka_unit_test(put_of_an_existing_name_replaces_it_in_place),
        cmocka_unit_test(put_of_the_same_tensor_again_keeps_it),
        cmocka_unit_test(put_takes_ownership_even_when_it_fails),
        cmocka_unit_test(put_copy_stores_an_independent_copy),
        cmocka_unit_test(index_past_the_end_gives_null),
        cmocka_unit_test(free_releases_every_tensor),
        cmocka_unit_test(metadata_keeps_insertion_order),
        cmocka_unit_test(setting_existing_metadata_replaces_the_value_in_place),
        cmocka_unit_test(metadata_and_tensors_are_separate_namespaces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
