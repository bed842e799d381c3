/* test_pth.c — reading torch.save checkpoints (io/pth.h).
 *
 * The checkpoints were written by PyTorch 1.13 (tests/parity/gen_pth_fixtures.py); next
 * to them, *.expected.safetensors hold the state dict graft must return, so every good
 * file is compared exactly: names in order, dtype, shape and every byte of data.  The
 * hostile and broken files must fail with a one-line message that names the file and
 * the problem. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "graft/graft.h"
#include "io/pth.h"

#define FIX "parity/fixtures/pth/"

/* ---- helpers ------------------------------------------------------------------------ */

static graft_tensor_map *load_ok(const char *path) {
    graft_tensor_map *m = NULL;
    graft_status s = graft_pth_load(path, &m);
    if (s) fail_msg("%s: %s", path, graft_errmsg());
    assert_non_null(m);
    return m;
}

static graft_tensor_map *load_expected(const char *path) {
    graft_tensor_map *m = NULL;
    graft_status s = graft_safetensors_load(path, &m);
    if (s) fail_msg("%s: %s", path, graft_errmsg());
    return m;
}

/* got equals want: same names in the same order, dtypes, shapes, bytes. */
static void assert_maps_equal(const graft_tensor_map *got, const graft_tensor_map *want) {
    assert_int_equal(graft_tensor_map_size(got), graft_tensor_map_size(want));
    for (size_t i = 0; i < graft_tensor_map_size(want); i++) {
        assert_string_equal(graft_tensor_map_name(got, i), graft_tensor_map_name(want, i));
        const graft_tensor *a = graft_tensor_map_tensor(got, i);
        const graft_tensor *b = graft_tensor_map_tensor(want, i);
        assert_int_equal(a->dtype, b->dtype);
        assert_int_equal(a->ndim, b->ndim);
        for (int d = 0; d < a->ndim; d++) assert_int_equal(a->shape[d], b->shape[d]);
        size_t n = graft_tensor_nbytes(a);
        assert_int_equal(n, graft_tensor_nbytes(b));
        if (n && memcmp(a->data, b->data, n) != 0)
            fail_msg("tensor '%s' differs", graft_tensor_map_name(want, i));
    }
}

static void check_against(const char *pth, const char *expected) {
    graft_tensor_map *got = load_ok(pth), *want = load_expected(expected);
    assert_maps_equal(got, want);
    graft_tensor_map_free(got);
    graft_tensor_map_free(want);
}

/* Loading fails with status, *out stays NULL, no tensor is left allocated, and the
 * message starts with the path and contains each of the given parts. */
static void check_refused(const char *path, graft_status status, const char *part1,
                          const char *part2) {
    size_t before = graft_tensor_bytes_in_use();
    graft_tensor_map *m = (graft_tensor_map *)&m; /* not NULL, to see it cleared */
    graft_status s = graft_pth_load(path, &m);
    const char *msg = graft_errmsg();
    if (s != status) fail_msg("%s: status %d, expected %d (%s)", path, s, status, msg);
    assert_null(m);
    assert_int_equal(graft_tensor_bytes_in_use(), before);
    if (strncmp(msg, path, strlen(path)) != 0 || strncmp(msg + strlen(path), ": ", 2) != 0)
        fail_msg("message does not start with the path: %s", msg);
    if (strchr(msg, '\n')) fail_msg("message is not one line: %s", msg);
    if (part1 && !strstr(msg, part1)) fail_msg("'%s' not in: %s", part1, msg);
    if (part2 && !strstr(msg, part2)) fail_msg("'%s' not in: %s", part2, msg);
}

static unsigned char *read_head(const char *path, size_t *n) {
    static unsigned char buf[GRAFT_PTH_SNIFF_BYTES];
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    *n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return buf;
}

/* ---- formats ------------------------------------------------------------------------ */

static void test_zip_checkpoint_equals_expected(void **state) {
    (void)state;
    check_against(FIX "vgg_zip.pth", FIX "vgg.expected.safetensors");
}

static void test_legacy_checkpoint_equals_expected(void **state) {
    (void)state;
    check_against(FIX "vgg_legacy.pth", FIX "vgg.expected.safetensors");
}

static void test_zip_checkpoint_with_pickle_protocol_4_loads(void **state) {
    (void)state;
    check_against(FIX "vgg_zip_p4.pth", FIX "vgg.expected.safetensors");
}

static void test_legacy_checkpoint_with_pickle_protocol_4_loads(void **state) {
    (void)state;
    check_against(FIX "vgg_legacy_p4.pth", FIX "vgg.expected.safetensors");
}

static void test_zip_folder_name_may_be_anything(void **state) {
    (void)state;
    check_against(FIX "weird_prefix.pth", FIX "vgg.expected.safetensors");
}

static void test_big_endian_zip_is_converted(void **state) {
    (void)state;
    check_against(FIX "big_endian.pth", FIX "vgg.expected.safetensors");
}

/* ---- element types ------------------------------------------------------------------ */

static void test_float16_converts_exactly(void **state) {
    (void)state;
    check_against(FIX "vgg_fp16.pth", FIX "vgg_fp16.expected.safetensors");
}

static void test_bfloat16_converts_exactly(void **state) {
    (void)state;
    check_against(FIX "vgg_bf16.pth", FIX "vgg_bf16.expected.safetensors");
}

static void test_float64_rounds_like_tensor_float(void **state) {
    (void)state;
    check_against(FIX "vgg_f64.pth", FIX "vgg_f64.expected.safetensors");
}

static void test_integer_storages_become_int64(void **state) {
    (void)state;
    check_against(FIX "ints.pth", FIX "ints.expected.safetensors");
    graft_tensor_map *m = load_ok(FIX "ints.pth");
    const int64_t *u8 = graft_tensor_i64(graft_tensor_map_get(m, "u8"));
    assert_non_null(u8);
    assert_int_equal(u8[1], 255);
    const int64_t *flags = graft_tensor_i64(graft_tensor_map_get(m, "flags"));
    assert_int_equal(flags[0], 1);
    assert_int_equal(flags[1], 0);
    graft_tensor_map_free(m);
}

static void test_num_batches_tracked_is_a_0d_int64(void **state) {
    (void)state;
    graft_tensor_map *m = load_ok(FIX "vgg_zip.pth");
    graft_tensor *t = graft_tensor_map_get(m, "features.1.num_batches_tracked");
    assert_non_null(t);
    assert_int_equal(graft_tensor_dtype(t), GRAFT_I64);
    assert_int_equal(graft_tensor_ndim(t), 0);
    assert_int_equal(graft_tensor_i64(t)[0], 7);
    graft_tensor_map_free(m);
}

/* ---- structure ---------------------------------------------------------------------- */

static void test_key_order_is_the_files(void **state) {
    (void)state;
    static const char *const first[] = {
        "features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
        "features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked",
        "features.4.weight"};
    graft_tensor_map *m = load_ok(FIX "vgg_legacy.pth");
    assert_true(graft_tensor_map_size(m) > sizeof first / sizeof first[0]);
    for (size_t i = 0; i < sizeof first / sizeof first[0]; i++)
        assert_string_equal(graft_tensor_map_name(m, i), first[i]);
    assert_string_equal(graft_tensor_map_name(m, graft_tensor_map_size(m) - 1),
                        "classifier.6.bias");
    graft_tensor_map_free(m);
}

static void test_state_dict_under_state_dict_key_is_picked(void **state) {
    (void)state;
    check_against(FIX "nested_state_dict.pth", FIX "vgg.expected.safetensors");
}

static void test_state_dict_under_model_key_is_picked(void **state) {
    (void)state;
    check_against(FIX "nested_model.pth", FIX "vgg.expected.safetensors");
}

static void test_dataparallel_module_prefix_is_stripped(void **state) {
    (void)state;
    check_against(FIX "dataparallel.pth", FIX "vgg.expected.safetensors");
}

static void test_views_are_copied_out_of_shared_storage(void **state) {
    (void)state;
    check_against(FIX "views.pth", FIX "views.expected.safetensors");
}

static void test_legacy_views_are_copied_out_of_shared_storage(void **state) {
    (void)state;
    check_against(FIX "views_legacy.pth", FIX "views.expected.safetensors");
}

static void test_parameters_are_unwrapped(void **state) {
    (void)state;
    check_against(FIX "parameter.pth", FIX "parameter.expected.safetensors");
}

/* ---- refusals ----------------------------------------------------------------------- */

static void test_posix_system_is_refused_by_name(void **state) {
    (void)state;
    check_refused(FIX "hostile_posix_system.pth", GRAFT_ERR_FORMAT,
                  "global 'posix.system' is not allowed", "data.pkl");
}

static void test_builtins_eval_is_refused_by_name(void **state) {
    (void)state;
    check_refused(FIX "hostile_builtins_eval.pth", GRAFT_ERR_FORMAT,
                  "global 'builtins.eval' is not allowed", "object");
}

static void test_pickled_module_is_refused_naming_its_class(void **state) {
    (void)state;
    check_refused(FIX "whole_module.pth", GRAFT_ERR_FORMAT,
                  "global 'torch.nn.modules.linear.Linear' is not allowed", NULL);
}

static void test_truncated_zip_is_refused(void **state) {
    (void)state;
    check_refused(FIX "truncated.pth", GRAFT_ERR_FORMAT, "zip", NULL);
}

static void test_random_bytes_are_refused(void **state) {
    (void)state;
    check_refused(FIX "random.pth", GRAFT_ERR_FORMAT, "not a PyTorch checkpoint", NULL);
}

static void test_legacy_count_beyond_the_file_is_refused(void **state) {
    (void)state;
    check_refused(FIX "legacy_bad_count.pth", GRAFT_ERR_FORMAT, "claims 1099511627776",
                  "bytes remain");
}

static void test_legacy_file_cut_in_its_data_is_refused(void **state) {
    (void)state;
    check_refused(FIX "legacy_truncated.pth", GRAFT_ERR_FORMAT, "storage", "remain");
}

static void test_zip_storage_shorter_than_declared_is_refused(void **state) {
    (void)state;
    check_refused(FIX "zip_short_storage.pth", GRAFT_ERR_FORMAT, "vgg_zip/data/0",
                  "but its storage needs 864");
}

static void test_zip_bomb_is_stopped_before_inflating(void **state) {
    (void)state;
    check_refused(FIX "zip_bomb.pth", GRAFT_ERR_FORMAT, "declares 16777216 bytes", "zip bomb");
}

static void test_zip_without_a_storage_entry_is_refused(void **state) {
    (void)state;
    check_refused(FIX "zip_missing_storage.pth", GRAFT_ERR_FORMAT,
                  "no entry 'vgg_zip/data/3' for a storage", NULL);
}

static void test_view_expanding_past_the_file_size_is_refused(void **state) {
    (void)state;
    check_refused(FIX "expanded_view.pth", GRAFT_ERR_FORMAT, "tensors up to 'w' need more than",
                  "expanded views");
}

static void test_list_at_top_level_is_not_a_state_dict(void **state) {
    (void)state;
    check_refused(FIX "list_top.pth", GRAFT_ERR_FORMAT, "type list, not a state dict", NULL);
}

static void test_non_tensor_in_top_level_dict_is_refused(void **state) {
    (void)state;
    check_refused(FIX "mixed_top.pth", GRAFT_ERR_FORMAT, "'epoch' holds a value of type int",
                  "not a tensor");
}

static void test_missing_file_is_an_io_error(void **state) {
    (void)state;
    check_refused(FIX "no_such_file.pth", GRAFT_ERR_IO, "No such file", NULL);
}

static void test_null_arguments_are_invalid(void **state) {
    (void)state;
    graft_tensor_map *m;
    assert_int_equal(graft_pth_load(NULL, &m), GRAFT_ERR_INVALID);
    assert_null(m);
    assert_int_equal(graft_pth_load(FIX "vgg_zip.pth", NULL), GRAFT_ERR_INVALID);
}

/* ---- sniffing ----------------------------------------------------------------------- */

static void test_sniff_recognises_zip_and_legacy_files(void **state) {
    (void)state;
    static const char *const files[] = {FIX "vgg_zip.pth", FIX "vgg_legacy.pth",
                                        FIX "vgg_legacy_p4.pth", FIX "weird_prefix.pth"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        size_t n;
        const unsigned char *head = read_head(files[i], &n);
        if (!graft_pth_sniff(head, n)) fail_msg("%s not recognised", files[i]);
    }
}

static void test_sniff_rejects_safetensors_and_noise(void **state) {
    (void)state;
    size_t n;
    const unsigned char *head = read_head(FIX "vgg.expected.safetensors", &n);
    assert_false(graft_pth_sniff(head, n));
    head = read_head(FIX "random.pth", &n);
    assert_false(graft_pth_sniff(head, n));
    /* A safetensors header length of 0x0280 starts with 0x80 0x02 like a pickle. */
    static const unsigned char st[GRAFT_PTH_SNIFF_BYTES] = {0x80, 0x02, 0, 0, 0, 0, 0, 0, '{'};
    assert_false(graft_pth_sniff(st, sizeof st));
}

static void test_sniff_needs_the_whole_magic(void **state) {
    (void)state;
    size_t n;
    const unsigned char *head = read_head(FIX "vgg_legacy.pth", &n);
    assert_false(graft_pth_sniff(head, 6));
    assert_false(graft_pth_sniff(NULL, 0));
    assert_true(graft_pth_sniff((const unsigned char *)"PK\x03\x04", 4));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zip_checkpoint_equals_expected),
        cmocka_unit_test(test_legacy_checkpoint_equals_expected),
        cmocka_unit_test(test_zip_checkpoint_with_pickle_protocol_4_loads),
        cmocka_unit_test(test_legacy_checkpoint_with_pickle_protocol_4_loads),
        cmocka_unit_test(test_zip_folder_name_may_be_anything),
        cmocka_unit_test(test_big_endian_zip_is_converted),
        cmocka_unit_test(test_float16_converts_exactly),
        cmocka_unit_test(test_bfloat16_converts_exactly),
        cmocka_unit_test(test_float64_rounds_like_tensor_float),
        cmocka_unit_test(test_integer_storages_become_int64),
        cmocka_unit_test(test_num_batches_tracked_is_a_0d_int64),
        cmocka_unit_test(test_key_order_is_the_files),
        cmocka_unit_test(test_state_dict_under_state_dict_key_is_picked),
        cmocka_unit_test(test_state_dict_under_model_key_is_picked),
        cmocka_unit_test(test_dataparallel_module_prefix_is_stripped),
        cmocka_unit_test(test_views_are_copied_out_of_shared_storage),
        cmocka_unit_test(test_legacy_views_are_copied_out_of_shared_storage),
        cmocka_unit_test(test_parameters_are_unwrapped),
        cmocka_unit_test(test_posix_system_is_refused_by_name),
        cmocka_unit_test(test_builtins_eval_is_refused_by_name),
        cmocka_unit_test(test_pickled_module_is_refused_naming_its_class),
        cmocka_unit_test(test_truncated_zip_is_refused),
        cmocka_unit_test(test_random_bytes_are_refused),
        cmocka_unit_test(test_legacy_count_beyond_the_file_is_refused),
        cmocka_unit_test(test_legacy_file_cut_in_its_data_is_refused),
        cmocka_unit_test(test_zip_storage_shorter_than_declared_is_refused),
        cmocka_unit_test(test_zip_bomb_is_stopped_before_inflating),
        cmocka_unit_test(test_zip_without_a_storage_entry_is_refused),
        cmocka_unit_test(test_view_expanding_past_the_file_size_is_refused),
        cmocka_unit_test(test_list_at_top_level_is_not_a_state_dict),
        cmocka_unit_test(test_non_tensor_in_top_level_dict_is_refused),
        cmocka_unit_test(test_missing_file_is_an_io_error),
        cmocka_unit_test(test_null_arguments_are_invalid),
        cmocka_unit_test(test_sniff_recognises_zip_and_legacy_files),
        cmocka_unit_test(test_sniff_rejects_safetensors_and_noise),
        cmocka_unit_test(test_sniff_needs_the_whole_magic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
