/* test_safetensors.c — reading and writing safetensors files, and the atomic writer
 * that saves them.
 *
 * Files are built byte by byte in the tests (header JSON + data) so each validation
 * rule of the format is exercised by a file that breaks exactly that rule.  Everything
 * is written inside one scratch directory under $GRAFT_TMP (else /tmp), removed at
 * the end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/tensor.h"
#include "graft/graft.h"
#include "io/atomic_file.h"

#define PATH_BYTES 4096

static char scratch[PATH_BYTES / 2]; /* this run's directory */

/* ---- helpers --------------------------------------------------------------- */

static int make_scratch(void **state) {
    (void)state;
    const char *base = getenv("GRAFT_TMP");
    snprintf(scratch, sizeof scratch, "%s/graft_test_safetensors.XXXXXX",
             base && *base ? base : "/tmp");
    return mkdtemp(scratch) ? 0 : -1;
}

static int remove_scratch(void **state) {
    (void)state;
    DIR *d = opendir(scratch);
    if (!d) return -1;
    struct dirent *de;
    char p[PATH_BYTES + 256];
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        snprintf(p, sizeof p, "%s/%s", scratch, de->d_name);
        if (unlink(p) != 0) rmdir(p);
    }
    closedir(d);
    return rmdir(scratch);
}

/* A fresh path inside the scratch directory. */
static const char *scratch_path(char *buf, const char *name) {
    snprintf(buf, PATH_BYTES, "%s/%s", scratch, name);
    unlink(buf);
    return buf;
}

/* Number of entries in the scratch directory whose name contains part. */
static int scratch_entries_containing(const char *part) {
    DIR *d = opendir(scratch);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strstr(de->d_name, part)) n++;
    closedir(d);
    return n;
}

static void write_bytes(const char *path, const void *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* The file's bytes (caller frees) and length. */
static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    unsigned char *buf = malloc(1 << 20);
    *n = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

/* A safetensors file: u64 little-endian header length, header, data. */
static void write_st(const char *path, const char *header, const void *data, size_t data_bytes) {
    size_t hlen = strlen(header);
    unsigned char *buf = malloc(8 + hlen + data_bytes);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(buf + 8, header, hlen);
    if (data_bytes) memcpy(buf + 8 + hlen, data, data_bytes);
    write_bytes(path, buf, 8 + hlen + data_bytes);
    free(buf);
}

static void put_f32_le(unsigned char *p, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(u >> (8 * i));
}

static void put_i64_le(unsigned char *p, int64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)((uint64_t)v >> (8 * i));
}

/* Loading the file fails with status, and the message names the file and says what. */
static void expect_load_error(const char *path, graft_status status, const char *what) {
    graft_tensor_map *m = (graft_tensor_map *)&m; /* must be reset to NULL */
    assert_int_equal(graft_safetensors_load(path, &m), status);
    assert_null(m);
    const char *msg = graft_errmsg();
    if (strncmp(msg, path, strlen(path)) != 0 || !strstr(msg, what) || strchr(msg, '\n'))
        fail_msg("message \"%s\" should start with the path and contain \"%s\"", msg, what);
}

/* A file with this header and data must be rejected as malformed. */
static void expect_format_error(const char *header, const void *data, size_t data_bytes,
                                const char *what) {
    char path[PATH_BYTES];
    scratch_path(path, "bad.safetensors");
    write_st(path, header, data, data_bytes);
    expect_load_error(path, GRAFT_ERR_FORMAT, what);
    unlink(path);
}

static const unsigned char zeros[64];

static graft_tensor *f32_tensor(int ndim, const int64_t *shape, float first) {
    graft_tensor *t;
    assert_int_equal(graft_tensor_create(GRAFT_F32, ndim, shape, &t), GRAFT_OK);
    for (int64_t i = 0; i < graft_tensor_numel(t); i++) graft_tensor_f32(t)[i] = first + (float)i * 0.25f;
    return t;
}

static graft_tensor *i64_tensor(int ndim, const int64_t *shape, int64_t first) {
    graft_tensor *t;
    assert_int_equal(graft_tensor_create(GRAFT_I64, ndim, shape, &t), GRAFT_OK);
    for (int64_t i = 0; i < graft_tensor_numel(t); i++) graft_tensor_i64(t)[i] = first - i * 3;
    return t;
}

static void assert_same_tensor(const graft_tensor *a, const graft_tensor *b) {
    assert_int_equal(a->dtype, b->dtype);
    assert_true(graft_tensor_same_shape(a, b));
    assert_memory_equal(a->data, b->data, graft_tensor_nbytes(a) ? graft_tensor_nbytes(a) : 1);
}

/* ---- round trips ----------------------------------------------------------- */

static void save_then_load_keeps_tensors_metadata_and_order(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "round.safetensors");
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    int64_t s1[4] = {2, 3, 1, 2}, s2[1] = {3}, s3[2] = {5, 1};
    /* Deliberately not in alphabetical order, with an odd-sized F32 before an I64. */
    assert_int_equal(graft_tensor_map_put(m, "z.weight", f32_tensor(4, s1, -1.5f)), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "num_batches_tracked", i64_tensor(0, NULL, 7)), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "a.bias", f32_tensor(1, s2, 3)), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "m.labels", i64_tensor(2, s3, INT64_MAX)), GRAFT_OK);
    assert_int_equal(graft_tensor_map_set_meta(m, "format", "pt"), GRAFT_OK);
    assert_int_equal(graft_tensor_map_set_meta(m, "arch", "vgg16 \"bn\" \xc3\xa9"), GRAFT_OK);

    assert_int_equal(graft_safetensors_save(path, m), GRAFT_OK);
    graft_tensor_map *back;
    assert_int_equal(graft_safetensors_load(path, &back), GRAFT_OK);

    assert_int_equal(graft_tensor_map_size(back), 4);
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(graft_tensor_map_name(back, i), graft_tensor_map_name(m, i));
        assert_same_tensor(graft_tensor_map_tensor(back, i), graft_tensor_map_tensor(m, i));
    }
    assert_int_equal(graft_tensor_map_meta_size(back), 2);
    assert_string_equal(graft_tensor_map_meta_key(back, 0), "format");
    assert_string_equal(graft_tensor_map_meta_key(back, 1), "arch");
    assert_string_equal(graft_tensor_map_get_meta(back, "arch"), "vgg16 \"bn\" \xc3\xa9");
    graft_tensor_map_free(back);
    graft_tensor_map_free(m);
}

static void save_then_load_keeps_scalars_and_empty_tensors(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "empty.safetensors");
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    int64_t empty[2] = {0, 3};
    assert_int_equal(graft_tensor_map_put(m, "scalar", f32_tensor(0, NULL, 2.5f)), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "empty", f32_tensor(2, empty, 0)), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "empty_i64", i64_tensor(2, empty, 0)), GRAFT_OK);
    assert_int_equal(graft_safetensors_save(path, m), GRAFT_OK);
    graft_tensor_map *back;
    assert_int_equal(graft_safetensors_load(path, &back), GRAFT_OK);
    assert_int_equal(graft_tensor_map_size(back), 3);
    graft_tensor *s = graft_tensor_map_get(back, "scalar");
    assert_int_equal(graft_tensor_ndim(s), 0);
    assert_true(graft_tensor_f32(s)[0] == 2.5f);
    graft_tensor *e = graft_tensor_map_get(back, "empty");
    assert_int_equal(graft_tensor_ndim(e), 2);
    assert_int_equal(graft_tensor_dim(e, 0), 0);
    assert_int_equal(graft_tensor_dim(e, 1), 3);
    assert_int_equal(graft_tensor_numel(e), 0);
    assert_int_equal(graft_tensor_map_meta_size(back), 0);
    graft_tensor_map_free(back);
    graft_tensor_map_free(m);
}

static void an_empty_map_saves_and_loads(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "nothing.safetensors");
    graft_tensor_map *m, *back;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    assert_int_equal(graft_safetensors_save(path, m), GRAFT_OK);
    assert_int_equal(graft_safetensors_load(path, &back), GRAFT_OK);
    assert_int_equal(graft_tensor_map_size(back), 0);
    graft_tensor_map_free(back);
    graft_tensor_map_free(m);
}

static void saved_header_puts_metadata_first_and_data_8_byte_aligned(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "layout.safetensors");
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    int64_t shape[1] = {3};
    assert_int_equal(graft_tensor_map_put(m, "w", f32_tensor(1, shape, 1)), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "n", i64_tensor(0, NULL, 5)), GRAFT_OK);
    assert_int_equal(graft_tensor_map_set_meta(m, "format", "pt"), GRAFT_OK);
    assert_int_equal(graft_safetensors_save(path, m), GRAFT_OK);

    size_t n;
    unsigned char *b = read_bytes(path, &n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(n, 8 + hlen + 3 * 4 + 8);
    const char *expect = "{\"__metadata__\":{\"format\":\"pt\"},"
                         "\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                         "\"n\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[12,20]}}";
    assert_memory_equal(b + 8, expect, strlen(expect));
    for (size_t i = 8 + strlen(expect); i < 8 + hlen; i++) assert_int_equal(b[i], ' ');
    unsigned char w0[4];
    put_f32_le(w0, 1.0f);
    assert_memory_equal(b + 8 + hlen, w0, 4);
    free(b);
    graft_tensor_map_free(m);
}

/* ---- reading hand-built files ---------------------------------------------- */

static void reads_a_hand_built_file(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "hand.safetensors");
    unsigned char data[6 * 4 + 2 * 8];
    for (int i = 0; i < 6; i++) put_f32_le(data + 4 * i, (float)i - 2.5f);
    put_i64_le(data + 24, -3);
    put_i64_le(data + 32, (int64_t)1 << 40);
    /* The I64 tensor comes first in the header but second in the data; trailing
     * spaces pad the header, as writers may. */
    write_st(path,
             "{\"labels\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[24,40]},"
             " \"__metadata__\" : {\"format\":\"pt\"},\n"
             "\"x\":{\"shape\":[2,3],\"data_offsets\":[0,24],\"dtype\":\"F32\"}}   ",
             data, sizeof data);
    graft_tensor_map *m;
    assert_int_equal(graft_safetensors_load(path, &m), GRAFT_OK);
    assert_int_equal(graft_tensor_map_size(m), 2);
    assert_string_equal(graft_tensor_map_name(m, 0), "labels");
    assert_string_equal(graft_tensor_map_name(m, 1), "x");
    graft_tensor *labels = graft_tensor_map_get(m, "labels");
    assert_int_equal(graft_tensor_dtype(labels), GRAFT_I64);
    assert_int_equal(graft_tensor_i64(labels)[0], -3);
    assert_int_equal(graft_tensor_i64(labels)[1], (int64_t)1 << 40);
    graft_tensor *x = graft_tensor_map_get(m, "x");
    assert_int_equal(graft_tensor_dtype(x), GRAFT_F32);
    assert_int_equal(graft_tensor_ndim(x), 2);
    assert_int_equal(graft_tensor_dim(x, 0), 2);
    assert_int_equal(graft_tensor_dim(x, 1), 3);
    for (int i = 0; i < 6; i++) assert_true(graft_tensor_f32(x)[i] == (float)i - 2.5f);
    assert_string_equal(graft_tensor_map_get_meta(m, "format"), "pt");
    graft_tensor_map_free(m);
}

static void reads_a_file_with_null_metadata(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "nullmeta.safetensors");
    write_st(path, "{\"__metadata__\":null,\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}",
             zeros, 4);
    graft_tensor_map *m;
    assert_int_equal(graft_safetensors_load(path, &m), GRAFT_OK);
    assert_int_equal(graft_tensor_map_size(m), 1);
    assert_int_equal(graft_tensor_map_meta_size(m), 0);
    graft_tensor_map_free(m);
}

static void reads_empty_tensors_sharing_an_offset(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "empties.safetensors");
    write_st(path,
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"c\":{\"dtype\":\"I64\",\"shape\":[4,0],\"data_offsets\":[4,4]}}",
             zeros, 4);
    graft_tensor_map *m;
    assert_int_equal(graft_safetensors_load(path, &m), GRAFT_OK);
    assert_int_equal(graft_tensor_map_size(m), 3);
    assert_int_equal(graft_tensor_numel(graft_tensor_map_get(m, "c")), 0);
    graft_tensor_map_free(m);
}

/* ---- file-level errors ----------------------------------------------------- */

static void a_missing_file_is_an_io_error_naming_it(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "does_not_exist.safetensors");
    expect_load_error(path, GRAFT_ERR_IO, "No such file or directory");
}

static void a_directory_is_an_io_error_naming_it(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "a_directory.safetensors");
    assert_int_equal(mkdir(path, 0700), 0);
    expect_load_error(path, GRAFT_ERR_IO, "Is a directory");
    rmdir(path);
}

static void a_file_shorter_than_8_bytes_is_rejected(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "short.safetensors");
    write_bytes(path, "\x02\0\0\0\0", 5);
    expect_load_error(path, GRAFT_ERR_FORMAT, "too short");
    write_bytes(path, "", 0);
    expect_load_error(path, GRAFT_ERR_FORMAT, "too short");
    unlink(path);
}

static void a_header_length_of_0_is_rejected(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "zero.safetensors");
    write_bytes(path, "\0\0\0\0\0\0\0\0{}", 10);
    expect_load_error(path, GRAFT_ERR_FORMAT, "header length is 0");
    unlink(path);
}

static void a_header_length_over_100_mb_is_rejected(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "huge.safetensors");
    unsigned char b[10] = {0};
    uint64_t n = 100000001;
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(n >> (8 * i));
    b[8] = '{';
    b[9] = '}';
    write_bytes(path, b, sizeof b);
    expect_load_error(path, GRAFT_ERR_FORMAT, "exceeds the limit");
    unlink(path);
}

static void a_header_length_past_the_end_is_rejected(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "past.safetensors");
    write_bytes(path, "\x03\0\0\0\0\0\0\0{}", 10);
    expect_load_error(path, GRAFT_ERR_FORMAT, "past the end of the file");
    unlink(path);
}

static void a_header_not_starting_with_a_brace_is_rejected(void **state) {
    (void)state;
    expect_format_error("[1, 2]", NULL, 0, "does not start with '{'");
    expect_format_error(" {}", NULL, 0, "does not start with '{'");
}

static void a_header_that_is_not_json_is_rejected(void **state) {
    (void)state;
    expect_format_error("{\"a\": ", NULL, 0, "not valid JSON");
    expect_format_error("{} {}", NULL, 0, "not valid JSON");
    expect_format_error("{\"\xff\": 1}", NULL, 0, "not valid JSON");
}

static void duplicate_keys_are_rejected(void **state) {
    (void)state;
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                        zeros, 4, "duplicate");
    expect_format_error("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", NULL, 0, "duplicate");
}

static void an_entry_that_is_not_an_object_is_rejected(void **state) {
    (void)state;
    expect_format_error("{\"a\":[1,2]}", NULL, 0, "tensor 'a' is not an object");
}

static void an_entry_without_dtype_is_rejected(void **state) {
    (void)state;
    expect_format_error("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", zeros, 4,
                        "tensor 'a' has no string 'dtype'");
    expect_format_error("{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", zeros, 4,
                        "tensor 'a' has no string 'dtype'");
}

static void an_unknown_dtype_is_rejected(void **state) {
    (void)state;
    expect_format_error("{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", zeros, 4,
                        "tensor 'a' has unknown dtype 'F33'");
}

static void an_entry_without_shape_is_rejected(void **state) {
    (void)state;
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", zeros, 4,
                        "tensor 'a' has no 'shape' array");
}

static void an_entry_without_data_offsets_is_rejected(void **state) {
    (void)state;
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", zeros, 4, "'data_offsets'");
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", zeros,
                        8, "'data_offsets'");
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", zeros,
                        4, "'data_offsets'");
}

static void a_negative_dimension_is_rejected(void **state) {
    (void)state;
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", zeros,
                        4, "tensor 'a' shape has a negative or non-integer dimension");
}

static void a_non_integer_dimension_is_rejected(void **state) {
    (void)state;
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", zeros,
                        4, "tensor 'a' shape has a negative or non-integer dimension");
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", zeros,
                        4, "tensor 'a' shape has a negative or non-integer dimension");
}

static void an_overflowing_shape_is_rejected(void **state) {
    (void)state;
    /* 2^32 * 2^32 overflows int64 even though the product with 0 would be 0. */
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,0],"
                        "\"data_offsets\":[0,0]}}",
                        NULL, 0, "tensor 'a' shape overflows");
    /* The element count fits in int64 but its byte count does not. */
    expect_format_error("{\"a\":{\"dtype\":\"I64\",\"shape\":[4611686018427387904],"
                        "\"data_offsets\":[0,0]}}",
                        NULL, 0, "tensor 'a'");
    /* Too big for a JSON integer at all. */
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],"
                        "\"data_offsets\":[0,0]}}",
                        NULL, 0, "not valid JSON");
}

static void a_byte_length_not_matching_the_shape_is_rejected(void **state) {
    (void)state;
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", zeros,
                        20, "tensor 'a' has 20 bytes but F32 with shape [2, 3] needs 24");
}

static void data_offsets_beyond_the_data_are_rejected(void **state) {
    (void)state;
    expect_format_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}", zeros, 8,
                        "tensor 'x' data_offsets [0, 12] exceed the data size 8");
}

static void data_offsets_that_begin_after_their_end_are_rejected(void **state) {
    (void)state;
    expect_format_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", zeros, 8,
                        "tensor 'x' data_offsets [8, 4] begin after their end");
}

static void overlapping_tensors_are_rejected(void **state) {
    (void)state;
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                        zeros, 12, "tensor 'b' data_offsets [4, 12] overlap tensor 'a'");
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                        zeros, 8, "overlap");
}

static void a_hole_between_tensors_is_rejected(void **state) {
    (void)state;
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                        zeros, 12, "data bytes [4, 8) belong to no tensor");
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", zeros, 8,
                        "data bytes [0, 4) belong to no tensor");
}

static void bytes_after_the_last_tensor_are_rejected(void **state) {
    (void)state;
    expect_format_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", zeros, 6,
                        "data bytes [4, 6) belong to no tensor");
    expect_format_error("{}", zeros, 1, "data bytes [0, 1) belong to no tensor");
}

static void metadata_that_is_not_an_object_is_rejected(void **state) {
    (void)state;
    expect_format_error("{\"__metadata__\":[\"a\"]}", NULL, 0, "__metadata__ is not an object");
}

static void metadata_values_must_be_strings(void **state) {
    (void)state;
    expect_format_error("{\"__metadata__\":{\"epoch\":3}}", NULL, 0,
                        "__metadata__ value for 'epoch' is not a string");
}

static void an_empty_tensor_name_is_rejected(void **state) {
    (void)state;
    expect_format_error("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", zeros, 4,
                        "empty name");
}

static void control_characters_in_names_do_not_break_the_message_line(void **state) {
    (void)state;
    expect_format_error("{\"a\\nb\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", zeros,
                        4, "tensor 'a?b'");
}

static void a_valid_but_unsupported_dtype_names_it_and_the_tensor(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "f16.safetensors");
    write_st(path,
             "{\"ok\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"half\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[4,10]}}",
             zeros, 10);
    expect_load_error(path, GRAFT_ERR_UNSUPPORTED, "tensor 'half' has dtype F16");
    write_st(path, "{\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}", zeros, 4);
    expect_load_error(path, GRAFT_ERR_UNSUPPORTED, "tensor 'b' has dtype BF16");
    unlink(path);
}

static void an_unsupported_dtype_is_still_checked_for_size(void **state) {
    (void)state;
    /* F64 [2] needs 16 bytes: a malformed file stays a format error whatever its dtype. */
    expect_format_error("{\"d\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}}", zeros, 8,
                        "tensor 'd' has 8 bytes but F64 with shape [2] needs 16");
}

static void more_than_8_dimensions_are_unsupported(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "rank9.safetensors");
    write_st(path, "{\"r\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
             zeros, 4);
    expect_load_error(path, GRAFT_ERR_UNSUPPORTED, "tensor 'r' has 9 dimensions");
    unlink(path);
}

/* ---- saving ---------------------------------------------------------------- */

static graft_tensor_map *small_map(float first) {
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    int64_t shape[2] = {4, 4};
    assert_int_equal(graft_tensor_map_put(m, "w", f32_tensor(2, shape, first)), GRAFT_OK);
    return m;
}

static void a_failed_save_into_a_missing_directory_is_an_io_error(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "no_such_dir/out.safetensors");
    graft_tensor_map *m = small_map(0);
    assert_int_equal(graft_safetensors_save(path, m), GRAFT_ERR_IO);
    if (!strstr(graft_errmsg(), path) || !strstr(graft_errmsg(), "No such file or directory"))
        fail_msg("message \"%s\" should name %s", graft_errmsg(), path);
    assert_int_equal(scratch_entries_containing(".tmp."), 0);
    graft_tensor_map_free(m);
}

static void a_failed_rename_leaves_no_temporary_file(void **state) {
    (void)state;
    char path[PATH_BYTES];
    /* The target is a directory: the temp file is written, then rename() fails. */
    scratch_path(path, "target_is_dir.safetensors");
    assert_int_equal(mkdir(path, 0700), 0);
    graft_tensor_map *m = small_map(0);
    assert_int_equal(graft_safetensors_save(path, m), GRAFT_ERR_IO);
    assert_non_null(strstr(graft_errmsg(), path));
    assert_int_equal(scratch_entries_containing(".tmp."), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    rmdir(path);
    graft_tensor_map_free(m);
}

static void a_save_replaces_an_existing_file_atomically(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "replace.safetensors");
    graft_tensor_map *old = small_map(1), *new = small_map(100);
    assert_int_equal(graft_safetensors_save(path, old), GRAFT_OK);

    /* A reader that opened the old file keeps reading the old bytes: the new file
     * arrives by rename, never by rewriting the old one in place. */
    size_t old_bytes;
    unsigned char *old_content = read_bytes(path, &old_bytes);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(graft_safetensors_save(path, new), GRAFT_OK);
    unsigned char *seen = malloc(old_bytes + 1);
    assert_int_equal(pread(fd, seen, old_bytes + 1, 0), (ssize_t)old_bytes);
    assert_memory_equal(seen, old_content, old_bytes);
    close(fd);

    graft_tensor_map *back;
    assert_int_equal(graft_safetensors_load(path, &back), GRAFT_OK);
    assert_true(graft_tensor_f32(graft_tensor_map_get(back, "w"))[0] == 100.0f);
    assert_int_equal(scratch_entries_containing(".tmp."), 0);
    free(seen);
    free(old_content);
    graft_tensor_map_free(back);
    graft_tensor_map_free(old);
    graft_tensor_map_free(new);
}

static void a_save_keeps_the_permissions_of_the_file_it_replaces(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "mode.safetensors");
    write_bytes(path, "old", 3);
    assert_int_equal(chmod(path, 0640), 0);
    graft_tensor_map *m = small_map(0);
    assert_int_equal(graft_safetensors_save(path, m), GRAFT_OK);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    graft_tensor_map_free(m);
}

static void a_tensor_named_metadata_cannot_be_saved(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "reserved.safetensors");
    graft_tensor_map *m = small_map(0);
    int64_t one = 1;
    assert_int_equal(graft_tensor_map_put(m, "__metadata__", f32_tensor(1, &one, 0)), GRAFT_OK);
    assert_int_equal(graft_safetensors_save(path, m), GRAFT_ERR_INVALID);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(scratch_entries_containing(".tmp."), 0);
    graft_tensor_map_free(m);
}

/* ---- the atomic writer ----------------------------------------------------- */

static void atomic_file_leaves_the_target_alone_until_commit(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "atomic.txt");
    write_bytes(path, "old", 3);
    graft_atomic_file af;
    assert_int_equal(graft_atomic_open(&af, path), GRAFT_OK);
    assert_int_equal(graft_atomic_write(&af, "new content", 11), GRAFT_OK);
    assert_int_equal(scratch_entries_containing("atomic.txt.tmp."), 1);
    size_t n;
    unsigned char *b = read_bytes(path, &n);
    assert_int_equal(n, 3);
    assert_memory_equal(b, "old", 3);
    free(b);
    assert_int_equal(graft_atomic_commit(&af), GRAFT_OK);
    b = read_bytes(path, &n);
    assert_int_equal(n, 11);
    assert_memory_equal(b, "new content", 11);
    free(b);
    assert_int_equal(scratch_entries_containing("atomic.txt.tmp."), 0);
    graft_atomic_abort(&af); /* harmless after commit */
}

static void atomic_file_abort_removes_the_temporary_file(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "aborted.txt");
    write_bytes(path, "old", 3);
    graft_atomic_file af;
    assert_int_equal(graft_atomic_open(&af, path), GRAFT_OK);
    assert_int_equal(graft_atomic_write(&af, "partial", 7), GRAFT_OK);
    graft_atomic_abort(&af);
    graft_atomic_abort(&af);
    assert_int_equal(scratch_entries_containing("aborted.txt.tmp."), 0);
    size_t n;
    unsigned char *b = read_bytes(path, &n);
    assert_int_equal(n, 3);
    assert_memory_equal(b, "old", 3);
    free(b);
}

static void atomic_file_creates_a_new_file_readable_like_fopen_would(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "fresh.txt");
    mode_t mask = umask(022);
    graft_atomic_file af;
    assert_int_equal(graft_atomic_open(&af, path), GRAFT_OK);
    assert_int_equal(graft_atomic_commit(&af), GRAFT_OK);
    umask(mask);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    assert_int_equal(st.st_size, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(save_then_load_keeps_tensors_metadata_and_order),
        cmocka_unit_test(save_then_load_keeps_scalars_and_empty_tensors),
        cmocka_unit_test(an_empty_map_saves_and_loads),
        cmocka_unit_test(saved_header_puts_metadata_first_and_data_8_byte_aligned),
        cmocka_unit_test(reads_a_hand_built_file),
        cmocka_unit_test(reads_a_file_with_null_metadata),
        cmocka_unit_test(reads_empty_tensors_sharing_an_offset),
        cmocka_unit_test(a_missing_file_is_an_io_error_naming_it),
        cmocka_unit_test(a_directory_is_an_io_error_naming_it),
        cmocka_unit_test(a_file_shorter_than_8_bytes_is_rejected),
        cmocka_unit_test(a_header_length_of_0_is_rejected),
        cmocka_unit_test(a_header_length_over_100_mb_is_rejected),
        cmocka_unit_test(a_header_length_past_the_end_is_rejected),
        cmocka_unit_test(a_header_not_starting_with_a_brace_is_rejected),
        cmocka_unit_test(a_header_that_is_not_json_is_rejected),
        cmocka_unit_test(duplicate_keys_are_rejected),
        cmocka_unit_test(an_entry_that_is_not_an_object_is_rejected),
        cmocka_unit_test(an_entry_without_dtype_is_rejected),
        cmocka_unit_test(an_unknown_dtype_is_rejected),
        cmocka_unit_test(an_entry_without_shape_is_rejected),
        cmocka_unit_test(an_entry_without_data_offsets_is_rejected),
        cmocka_unit_test(a_negative_dimension_is_rejected),
        cmocka_unit_test(a_non_integer_dimension_is_rejected),
        cmocka_unit_test(an_overflowing_shape_is_rejected),
        cmocka_unit_test(a_byte_length_not_matching_the_shape_is_rejected),
        cmocka_unit_test(data_offsets_beyond_the_data_are_rejected),
        cmocka_unit_test(data_offsets_that_begin_after_their_end_are_rejected),
        cmocka_unit_test(overlapping_tensors_are_rejected),
        cmocka_unit_test(a_hole_between_tensors_is_rejected),
        cmocka_unit_test(bytes_after_the_last_tensor_are_rejected),
        cmocka_unit_test(metadata_that_is_not_an_object_is_rejected),
        cmocka_unit_test(metadata_values_must_be_strings),
        cmocka_unit_test(an_empty_tensor_name_is_rejected),
        cmocka_unit_test(control_characters_in_names_do_not_break_the_message_line),
        cmocka_unit_test(a_valid_but_unsupported_dtype_names_it_and_the_tensor),
        cmocka_unit_test(an_unsupported_dtype_is_still_checked_for_size),
        cmocka_unit_test(more_than_8_dimensions_are_unsupported),
        cmocka_unit_test(a_failed_save_into_a_missing_directory_is_an_io_error),
        cmocka_unit_test(a_failed_rename_leaves_no_temporary_file),
        cmocka_unit_test(a_save_replaces_an_existing_file_atomically),
        cmocka_unit_test(a_save_keeps_the_permissions_of_the_file_it_replaces),
        cmocka_unit_test(a_tensor_named_metadata_cannot_be_saved),
        cmocka_unit_test(atomic_file_leaves_the_target_alone_until_commit),
        cmocka_unit_test(atomic_file_abort_removes_the_temporary_file),
        cmocka_unit_test(atomic_file_creates_a_new_file_readable_like_fopen_would),
    };
    return cmocka_run_group_tests(tests, make_scratch, remove_scratch);
}
