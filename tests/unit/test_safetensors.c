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
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/tensor.h"
#include "graft/graft.h"
#include "io/atomic_file.h"
#include "io/dtype_convert.h"

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
    if (data && data_bytes) memcpy(buf + 8 + hlen, data, data_bytes);
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
    scratch_path(path, "f8.safetensors");
    write_st(path,
             "{\"ok\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"q\":{\"dtype\":\"F8_E4M3\",\"shape\":[3],\"data_offsets\":[4,7]}}",
             zeros, 7);
    expect_load_error(path, GRAFT_ERR_UNSUPPORTED, "tensor 'q' has dtype F8_E4M3");
    write_st(path, "{\"c\":{\"dtype\":\"C64\",\"shape\":[2],\"data_offsets\":[0,16]}}", zeros, 16);
    expect_load_error(path, GRAFT_ERR_UNSUPPORTED, "tensor 'c' has dtype C64");
    write_st(path, "{\"p\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[0,2]}}", zeros, 2);
    expect_load_error(path, GRAFT_ERR_UNSUPPORTED, "tensor 'p' has dtype F4");
    unlink(path);
}

static void every_dtype_is_checked_for_size(void **state) {
    (void)state;
    /* A malformed file stays a format error whatever its dtype, converted or not. */
    expect_format_error("{\"d\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}}", zeros, 8,
                        "tensor 'd' has 8 bytes but F64 with shape [2] needs 16");
    expect_format_error("{\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,8]}}", zeros, 8,
                        "tensor 'h' has 8 bytes but F16 with shape [3] needs 6");
    expect_format_error("{\"b\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[0,1]}}", zeros,
                        1, "tensor 'b' has 1 bytes but BF16 with shape [1] needs 2");
    expect_format_error("{\"i\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,4]}}", zeros, 4,
                        "needs 8");
    expect_format_error("{\"u\":{\"dtype\":\"U8\",\"shape\":[2,2],\"data_offsets\":[0,3]}}", zeros, 3,
                        "needs 4");
    expect_format_error("{\"q\":{\"dtype\":\"F8_E5M2\",\"shape\":[2],\"data_offsets\":[0,3]}}", zeros,
                        3, "needs 2");
    expect_format_error("{\"p\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", zeros, 2,
                        "does not fill whole bytes");
    /* Coverage is checked with the converted dtypes' sizes too. */
    expect_format_error("{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                        "\"b\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[3,5]}}",
                        zeros, 5, "tensor 'b' data_offsets [3, 5] overlap tensor 'a'");
}

/* ---- reading every dtype --------------------------------------------------- */

static void put_u16_le(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put_f64_le(unsigned char *p, double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    put_i64_le(p, (int64_t)u);
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Loads a file of one tensor "t" of dtype with the given data, which must succeed. */
static graft_tensor_map *load_one(const char *dtype, const char *shape, const void *data,
                                  size_t bytes) {
    char path[PATH_BYTES], header[256];
    scratch_path(path, "one.safetensors");
    snprintf(header, sizeof header,
             "{\"t\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[0,%zu]}}", dtype, shape,
             bytes);
    write_st(path, header, data, bytes);
    graft_tensor_map *m;
    if (graft_safetensors_load(path, &m) != GRAFT_OK)
        fail_msg("loading %s %s: %s", dtype, shape, graft_errmsg());
    unlink(path);
    return m;
}

static void reads_f16_exactly_with_subnormals_infinities_and_nan(void **state) {
    (void)state;
    const uint16_t h[10] = {0x3c00, 0xc000, 0x0001, 0x03ff, 0x0400,
                            0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x8000};
    unsigned char data[20];
    for (int i = 0; i < 10; i++) put_u16_le(data + 2 * i, h[i]);
    graft_tensor_map *m = load_one("F16", "[2,5]", data, sizeof data);
    graft_tensor *t = graft_tensor_map_get(m, "t");
    assert_int_equal(graft_tensor_dtype(t), GRAFT_F32);
    assert_int_equal(graft_tensor_dim(t, 0), 2);
    assert_int_equal(graft_tensor_dim(t, 1), 5);
    const float *f = graft_tensor_f32(t);
    assert_true(f[0] == 1.0f);
    assert_true(f[1] == -2.0f);
    assert_true(f[2] == 0x1p-24f);         /* smallest subnormal */
    assert_true(f[3] == 1023 * 0x1p-24f);  /* largest subnormal */
    assert_true(f[4] == 0x1p-14f);
    assert_true(f[5] == 65504.0f);
    assert_true(f[6] == INFINITY);
    assert_true(f[7] == -INFINITY);
    assert_int_equal(f32_bits(f[8]), 0x7fc00000u); /* NaN */
    assert_int_equal(f32_bits(f[9]), 0x80000000u); /* -0 */
    graft_tensor_map_free(m);
}

static void reads_bf16_exactly(void **state) {
    (void)state;
    const uint16_t b[6] = {0x3f80, 0x4049, 0x0001, 0xff80, 0x7fc0, 0xc2f7};
    unsigned char data[12];
    for (int i = 0; i < 6; i++) put_u16_le(data + 2 * i, b[i]);
    graft_tensor_map *m = load_one("BF16", "[6]", data, sizeof data);
    const float *f = graft_tensor_f32(graft_tensor_map_get(m, "t"));
    assert_true(f[0] == 1.0f);
    assert_true(f[1] == 3.140625f);
    assert_true(f[2] == 0x1p-133f); /* subnormal */
    assert_true(f[3] == -INFINITY);
    assert_int_equal(f32_bits(f[4]), 0x7fc00000u);
    assert_true(f[5] == -123.5f);
    graft_tensor_map_free(m);
}

static void reads_f64_rounding_to_nearest_even(void **state) {
    (void)state;
    const double d[8] = {0.1, 1.0 + 0x1p-24, 1.0 + 0x3p-24, 1e300, -1e-300,
                         0x1.0000000000001p-150, 0x1.ffffffp127, NAN};
    unsigned char data[64];
    for (int i = 0; i < 8; i++) put_f64_le(data + 8 * i, d[i]);
    graft_tensor_map *m = load_one("F64", "[8]", data, sizeof data);
    const float *f = graft_tensor_f32(graft_tensor_map_get(m, "t"));
    assert_int_equal(f32_bits(f[0]), 0x3dcccccdu);
    assert_true(f[1] == 1.0f);             /* tie, down to even */
    assert_true(f[2] == 1.0f + 0x1p-22f);  /* tie, up to even */
    assert_true(f[3] == INFINITY);
    assert_int_equal(f32_bits(f[4]), 0x80000000u);
    assert_true(f[5] == 0x1p-149f);
    assert_true(f[6] == INFINITY);         /* half an ulp past FLT_MAX */
    assert_true(isnan(f[7]));
    graft_tensor_map_free(m);
}

static void reads_every_integer_dtype_as_int64(void **state) {
    (void)state;
    unsigned char d[64];
    graft_tensor_map *m;
    const int64_t *v;

    for (int i = 0; i < 3; i++) {
        const int32_t x[3] = {-1, INT32_MAX, INT32_MIN};
        for (int k = 0; k < 4; k++) d[4 * i + k] = (unsigned char)((uint32_t)x[i] >> (8 * k));
    }
    m = load_one("I32", "[3]", d, 12);
    v = graft_tensor_i64(graft_tensor_map_get(m, "t"));
    assert_non_null(v);
    assert_true(v[0] == -1 && v[1] == INT32_MAX && v[2] == INT32_MIN);
    graft_tensor_map_free(m);

    put_u16_le(d, 0x8000);
    put_u16_le(d + 2, 7);
    m = load_one("I16", "[2]", d, 4);
    v = graft_tensor_i64(graft_tensor_map_get(m, "t"));
    assert_true(v[0] == -32768 && v[1] == 7);
    graft_tensor_map_free(m);
    m = load_one("U16", "[2]", d, 4);
    v = graft_tensor_i64(graft_tensor_map_get(m, "t"));
    assert_true(v[0] == 32768 && v[1] == 7);
    graft_tensor_map_free(m);

    const unsigned char bytes[4] = {0xff, 0x7f, 0x80, 0x03};
    m = load_one("I8", "[2,2]", bytes, 4);
    v = graft_tensor_i64(graft_tensor_map_get(m, "t"));
    assert_true(v[0] == -1 && v[1] == 127 && v[2] == -128 && v[3] == 3);
    graft_tensor_map_free(m);
    m = load_one("U8", "[4]", bytes, 4);
    v = graft_tensor_i64(graft_tensor_map_get(m, "t"));
    assert_true(v[0] == 255 && v[1] == 127 && v[2] == 128 && v[3] == 3);
    graft_tensor_map_free(m);

    const unsigned char flags[4] = {0, 1, 1, 0};
    m = load_one("BOOL", "[4]", flags, 4);
    v = graft_tensor_i64(graft_tensor_map_get(m, "t"));
    assert_true(v[0] == 0 && v[1] == 1 && v[2] == 1 && v[3] == 0);
    graft_tensor_map_free(m);

    for (int k = 0; k < 4; k++) d[k] = 0xff;
    m = load_one("U32", "[]", d, 4);
    assert_true(graft_tensor_i64(graft_tensor_map_get(m, "t"))[0] == 4294967295LL);
    graft_tensor_map_free(m);

    put_i64_le(d, INT64_MAX);
    m = load_one("U64", "[1]", d, 8);
    assert_true(graft_tensor_i64(graft_tensor_map_get(m, "t"))[0] == INT64_MAX);
    graft_tensor_map_free(m);
}

static void a_u64_beyond_int64_is_unsupported(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "u64.safetensors");
    unsigned char d[16];
    put_i64_le(d, 5);
    put_i64_le(d + 8, -1); /* 2^64 - 1 */
    write_st(path, "{\"big\":{\"dtype\":\"U64\",\"shape\":[2],\"data_offsets\":[0,16]}}", d, 16);
    expect_load_error(path, GRAFT_ERR_UNSUPPORTED,
                      "tensor 'big' of U64 holds 18446744073709551615 at element 1, beyond int64");
    unlink(path);
}

static void reads_a_file_mixing_dtypes_and_empty_tensors(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "mixed.safetensors");
    unsigned char d[2 + 2 + 8 + 1];
    put_u16_le(d, 0x3800);     /* F16 0.5 */
    put_u16_le(d + 2, 0xbf80); /* BF16 -1 */
    put_f64_le(d + 4, 2.25);
    d[12] = 200; /* U8 */
    write_st(path,
             "{\"u\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[12,13]},"
             "\"h\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[0,2]},"
             "\"e\":{\"dtype\":\"F16\",\"shape\":[0,4],\"data_offsets\":[2,2]},"
             "\"z\":{\"dtype\":\"BOOL\",\"shape\":[0],\"data_offsets\":[13,13]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,1],\"data_offsets\":[2,4]},"
             "\"d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[4,12]}}",
             d, sizeof d);
    graft_tensor_map *m;
    assert_int_equal(graft_safetensors_load(path, &m), GRAFT_OK);
    assert_int_equal(graft_tensor_map_size(m), 6);
    assert_string_equal(graft_tensor_map_name(m, 0), "u");
    assert_true(graft_tensor_i64(graft_tensor_map_get(m, "u"))[0] == 200);
    assert_true(graft_tensor_f32(graft_tensor_map_get(m, "h"))[0] == 0.5f);
    assert_int_equal(graft_tensor_ndim(graft_tensor_map_get(m, "h")), 0);
    assert_int_equal(graft_tensor_numel(graft_tensor_map_get(m, "e")), 0);
    assert_int_equal(graft_tensor_dtype(graft_tensor_map_get(m, "e")), GRAFT_F32);
    assert_int_equal(graft_tensor_dtype(graft_tensor_map_get(m, "z")), GRAFT_I64);
    assert_true(graft_tensor_f32(graft_tensor_map_get(m, "b"))[0] == -1.0f);
    assert_true(graft_tensor_f32(graft_tensor_map_get(m, "d"))[0] == 2.25f);
    graft_tensor_map_free(m);
    unlink(path);
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

/* ---- writing F16 / BF16 ---------------------------------------------------- */

/* A map with a float tensor of these values and an int64 counter. */
static graft_tensor_map *values_map(const float *vals, int64_t n) {
    graft_tensor_map *m;
    assert_int_equal(graft_tensor_map_create(&m), GRAFT_OK);
    graft_tensor *t;
    assert_int_equal(graft_tensor_create(GRAFT_F32, 1, &n, &t), GRAFT_OK);
    if (n) memcpy(graft_tensor_f32(t), vals, (size_t)n * sizeof *vals);
    assert_int_equal(graft_tensor_map_put(m, "w", t), GRAFT_OK);
    assert_int_equal(graft_tensor_map_put(m, "n", i64_tensor(0, NULL, -9)), GRAFT_OK);
    return m;
}

static void saves_f16_with_the_expected_header_and_bytes(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "f16out.safetensors");
    const float v[3] = {1.0f, -2.0f, 0x1p-24f};
    graft_tensor_map *m = values_map(v, 3);
    assert_int_equal(graft_tensor_map_set_meta(m, "format", "pt"), GRAFT_OK);
    assert_int_equal(graft_safetensors_save_dtype(path, m, "F16"), GRAFT_OK);
    size_t n;
    unsigned char *b = read_bytes(path, &n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(n, 8 + hlen + 3 * 2 + 8);
    const char *expect = "{\"__metadata__\":{\"format\":\"pt\"},"
                         "\"w\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]},"
                         "\"n\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[6,14]}}";
    assert_memory_equal(b + 8, expect, strlen(expect));
    const unsigned char data[14] = {0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00,
                                    0xf7, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    assert_memory_equal(b + 8 + hlen, data, sizeof data);
    free(b);
    graft_tensor_map_free(m);
}

static void saves_bf16_with_the_expected_bytes(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "bf16out.safetensors");
    const float v[4] = {1.0f, 0.1f, FLT_MAX, -3.0f};
    graft_tensor_map *m = values_map(v, 4);
    assert_int_equal(graft_safetensors_save_dtype(path, m, "BF16"), GRAFT_OK);
    size_t n;
    unsigned char *b = read_bytes(path, &n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
    assert_non_null(strstr((const char *)b + 8, "\"w\":{\"dtype\":\"BF16\",\"shape\":[4],"
                                                "\"data_offsets\":[0,8]}"));
    /* 0x3f80, 0x3dcd (0x3dcccccd rounds up), FLT_MAX rounds to inf 0x7f80, 0xc040 */
    const unsigned char data[8] = {0x80, 0x3f, 0xcd, 0x3d, 0x80, 0x7f, 0x40, 0xc0};
    assert_int_equal(n, 8 + hlen + 8 + 8);
    assert_memory_equal(b + 8 + hlen, data, sizeof data);
    free(b);
    graft_tensor_map_free(m);
}

/* Saving as dtype and loading back gives each value rounded once to that type. */
static void round_trip(const char *dtype, uint16_t (*narrow)(float), float (*widen)(uint16_t)) {
    char path[PATH_BYTES];
    scratch_path(path, "rt.safetensors");
    /* Past the writer's 64 KiB bounce buffer, with specials and random-ish values. */
    enum { N = 70001 };
    float *v = malloc(N * sizeof *v);
    const float special[] = {0.0f, -0.0f, 1.0f, 0.1f, 65504.0f, 65520.0f, 1e6f, -1e30f,
                             FLT_MAX, 0x1p-24f, 0x1p-25f, 0x1p-133f, 0x1p-149f, INFINITY,
                             -INFINITY, NAN, 1.0f + 0x1p-11f, 1.0f + 0x1p-8f};
    size_t ns = sizeof special / sizeof special[0];
    uint32_t x = 12345;
    for (size_t i = 0; i < N; i++) {
        if (i < ns) {
            v[i] = special[i];
            continue;
        }
        x = x * 1664525u + 1013904223u;
        v[i] = ((float)(x >> 8) / 16777216.0f - 0.5f) * (float)(1u << (x % 24));
    }
    graft_tensor_map *m = values_map(v, N), *back;
    assert_int_equal(graft_safetensors_save_dtype(path, m, dtype), GRAFT_OK);
    assert_int_equal(graft_safetensors_load(path, &back), GRAFT_OK);
    const graft_tensor *w = graft_tensor_map_get(back, "w");
    assert_int_equal(graft_tensor_dtype(w), GRAFT_F32);
    assert_int_equal(graft_tensor_numel(w), N);
    const float *got = graft_tensor_f32_const(w);
    for (size_t i = 0; i < N; i++) {
        float want = widen(narrow(v[i]));
        if (isnan(v[i]) ? !isnan(got[i]) : f32_bits(got[i]) != f32_bits(want))
            fail_msg("%s: %a came back as %a, want %a", dtype, (double)v[i], (double)got[i],
                     (double)want);
    }
    assert_true(graft_tensor_i64(graft_tensor_map_get(back, "n"))[0] == -9);
    /* Loading and saving again in the same dtype changes nothing. */
    assert_int_equal(graft_safetensors_save_dtype(path, back, dtype), GRAFT_OK);
    graft_tensor_map *again;
    assert_int_equal(graft_safetensors_load(path, &again), GRAFT_OK);
    assert_memory_equal(graft_tensor_f32_const(graft_tensor_map_get(again, "w")), got,
                        N * sizeof(float));
    graft_tensor_map_free(again);
    graft_tensor_map_free(back);
    graft_tensor_map_free(m);
    free(v);
    unlink(path);
}

static void f16_round_trip_rounds_each_value_once(void **state) {
    (void)state;
    round_trip("F16", graft_f32_to_f16, graft_f16_to_f32);
    /* Spot values independent of the converters. */
    char path[PATH_BYTES];
    scratch_path(path, "spot16.safetensors");
    const float v[5] = {0.1f, 65520.0f, 1.0f + 0x1p-11f, 0x1p-25f, 0x1.8p-24f};
    graft_tensor_map *m = values_map(v, 5), *back;
    assert_int_equal(graft_safetensors_save_dtype(path, m, "F16"), GRAFT_OK);
    assert_int_equal(graft_safetensors_load(path, &back), GRAFT_OK);
    const float *f = graft_tensor_f32(graft_tensor_map_get(back, "w"));
    assert_true(f[0] == 0.0999755859375f);
    assert_true(f[1] == INFINITY);
    assert_true(f[2] == 1.0f);
    assert_true(f[3] == 0.0f);
    assert_true(f[4] == 0x1p-23f);
    graft_tensor_map_free(back);
    graft_tensor_map_free(m);
}

static void bf16_round_trip_rounds_each_value_once(void **state) {
    (void)state;
    round_trip("BF16", graft_f32_to_bf16, graft_bf16_to_f32);
}

static void save_dtype_f32_and_null_match_the_plain_save(void **state) {
    (void)state;
    char a[PATH_BYTES], b[PATH_BYTES], c[PATH_BYTES];
    scratch_path(a, "plain.safetensors");
    scratch_path(b, "f32.safetensors");
    scratch_path(c, "null.safetensors");
    graft_tensor_map *m = small_map(3);
    assert_int_equal(graft_safetensors_save(a, m), GRAFT_OK);
    assert_int_equal(graft_safetensors_save_dtype(b, m, "F32"), GRAFT_OK);
    assert_int_equal(graft_safetensors_save_dtype(c, m, NULL), GRAFT_OK);
    size_t na, nb, nc;
    unsigned char *ba = read_bytes(a, &na), *bb = read_bytes(b, &nb), *bc = read_bytes(c, &nc);
    assert_int_equal(na, nb);
    assert_int_equal(na, nc);
    assert_memory_equal(ba, bb, na);
    assert_memory_equal(ba, bc, na);
    free(ba);
    free(bb);
    free(bc);
    graft_tensor_map_free(m);
}

static void save_dtype_rejects_other_dtypes(void **state) {
    (void)state;
    char path[PATH_BYTES];
    scratch_path(path, "bad_dtype.safetensors");
    graft_tensor_map *m = small_map(0);
    const char *bad[] = {"F64", "f16", "I64", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(graft_safetensors_save_dtype(path, m, bad[i]), GRAFT_ERR_INVALID);
        assert_non_null(strstr(graft_errmsg(), path));
        assert_non_null(strstr(graft_errmsg(), "use F32, F16 or BF16"));
    }
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

static void atomic_link_replaces_the_target_with_another_name_of_the_file(void **state) {
    (void)state;
    char a[PATH_BYTES], b[PATH_BYTES];
    scratch_path(a, "linked-a.txt");
    scratch_path(b, "linked-b.txt");
    write_bytes(a, "first", 5);
    assert_int_equal(graft_atomic_link(a, b), GRAFT_OK); /* a new name */
    assert_int_equal(graft_atomic_write_file(a, "second", 6), GRAFT_OK); /* a new file a */
    /* A reader of the old b keeps its bytes when b is replaced by a link to the new a. */
    int fd = open(b, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(graft_atomic_link(a, b), GRAFT_OK);
    char seen[8] = {0};
    assert_int_equal(pread(fd, seen, sizeof seen, 0), 5);
    assert_memory_equal(seen, "first", 5);
    close(fd);
    struct stat sa, sb;
    assert_int_equal(stat(a, &sa), 0);
    assert_int_equal(stat(b, &sb), 0);
    assert_true(sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev);
    size_t n;
    unsigned char *got = read_bytes(b, &n);
    assert_int_equal(n, 6);
    assert_memory_equal(got, "second", 6);
    free(got);
    assert_int_equal(scratch_entries_containing(".tmp."), 0);

    /* A missing source is an error naming the target; the target stays as it was. */
    char missing[PATH_BYTES];
    scratch_path(missing, "missing.txt");
    assert_int_equal(graft_atomic_link(missing, b), GRAFT_ERR_IO);
    assert_non_null(strstr(graft_errmsg(), "linked-b.txt"));
    got = read_bytes(b, &n);
    assert_int_equal(n, 6);
    free(got);
    assert_int_equal(scratch_entries_containing(".tmp."), 0);
}

static void replaced_files_live_on_until_released_then_go(void **state) {
    (void)state;
    char a[PATH_BYTES], kept[PATH_BYTES + 16], missing[PATH_BYTES];
    scratch_path(a, "kept.txt");
    scratch_path(missing, "never-there.txt");
    snprintf(kept, sizeof kept, "%s.replaced", a);
    write_bytes(a, "old", 3);
    graft_old_files old;
    memset(&old, 0, sizeof old);
    graft_old_files_keep(&old, a);
    graft_old_files_keep(&old, missing); /* nothing to keep */
    assert_int_equal(old.n, 1);
    assert_int_equal(graft_atomic_write_file(a, "new", 3), GRAFT_OK);
    size_t n;
    unsigned char *b = read_bytes(kept, &n); /* the old file, under its second name */
    assert_int_equal(n, 3);
    assert_memory_equal(b, "old", 3);
    free(b);
    graft_old_files_release(&old);
    graft_old_files_wait(&old);
    struct stat st;
    assert_int_equal(stat(kept, &st), -1);
    b = read_bytes(a, &n);
    assert_memory_equal(b, "new", 3);
    free(b);
    /* a second name left by a killed run is taken over */
    write_bytes(kept, "stale", 5);
    graft_old_files_keep(&old, a);
    assert_int_equal(old.n, 1);
    b = read_bytes(kept, &n);
    assert_int_equal(n, 3);
    free(b);
    graft_old_files_release(&old);
    graft_old_files_wait(&old);
    assert_int_equal(stat(kept, &st), -1);
    graft_old_files_wait(&old); /* harmless when nothing runs */
}

/* graft_atomic_open_over: a spare with no other name becomes the new file, overwritten
 * and cut to the bytes written; the replaced target becomes the spare.  A spare with
 * another name, or none, is left to its other names and a new file is written. */
static ino_t inode_of(const char *path) {
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_ino;
}

static void expect_bytes(const char *path, const char *want) {
    size_t n;
    unsigned char *b = read_bytes(path, &n);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(b, want, n);
    free(b);
}

/* graft_commits: files written and handed over appear, whole, only when the batch runs,
 * in order, with a link after them; a failure is returned by the wait with its message,
 * the commits after it are dropped (their targets unchanged, no temporary files left),
 * and the struct is ready for the next batch. */
static void deferred_commits_run_in_order_and_report_the_first_failure(void **state) {
    (void)state;
    char a[PATH_BYTES], b[PATH_BYTES], c[PATH_BYTES], gone[PATH_BYTES], lost[PATH_BYTES + 8];
    scratch_path(a, "deferred-a.txt");
    scratch_path(b, "deferred-b.txt");
    scratch_path(c, "deferred-c.txt");
    scratch_path(gone, "deferred-dir");
    snprintf(lost, sizeof lost, "%s/x.txt", gone);
    write_bytes(a, "old a", 5);
    graft_commits commits;
    memset(&commits, 0, sizeof commits);
    graft_atomic_file af;
    assert_int_equal(graft_atomic_open(&af, a), GRAFT_OK);
    assert_int_equal(graft_atomic_write(&af, "new a", 5), GRAFT_OK);
    assert_int_equal(graft_commits_add(&commits, &af), GRAFT_OK);
    graft_atomic_abort(&af); /* emptied by add: nothing to remove */
    assert_int_equal(graft_atomic_open(&af, b), GRAFT_OK);
    assert_int_equal(graft_atomic_write(&af, "b", 1), GRAFT_OK);
    assert_int_equal(graft_commits_add(&commits, &af), GRAFT_OK);
    assert_int_equal(graft_commits_add_link(&commits, a, c), GRAFT_OK);
    expect_bytes(a, "old a"); /* nothing committed before the batch runs */
    assert_int_equal(access(b, F_OK), -1);
    assert_int_equal(scratch_entries_containing("deferred-a.txt.tmp."), 1);
    graft_commits_start(&commits);
    assert_int_equal(graft_commits_wait(&commits), GRAFT_OK);
    expect_bytes(a, "new a");
    expect_bytes(b, "b");
    expect_bytes(c, "new a");
    assert_true(inode_of(a) == inode_of(c));
    assert_int_equal(scratch_entries_containing(".tmp."), 0);

    /* a commit that fails (its folder removed meanwhile) is reported at the wait; the
     * commit after it is dropped and its target keeps its bytes */
    assert_int_equal(mkdir(gone, 0777), 0);
    assert_int_equal(graft_atomic_open(&af, lost), GRAFT_OK);
    assert_int_equal(graft_atomic_write(&af, "x", 1), GRAFT_OK);
    assert_int_equal(graft_commits_add(&commits, &af), GRAFT_OK);
    assert_int_equal(graft_atomic_open(&af, b), GRAFT_OK);
    assert_int_equal(graft_atomic_write(&af, "b2", 2), GRAFT_OK);
    assert_int_equal(graft_commits_add(&commits, &af), GRAFT_OK);
    char tmp[PATH_BYTES + 64];
    snprintf(tmp, sizeof tmp, "%s", commits.files[0].tmp_path);
    assert_int_equal(unlink(tmp), 0); /* the temporary file's folder goes: its rename fails */
    assert_int_equal(rmdir(gone), 0);
    graft_commits_start(&commits);
    assert_int_equal(graft_commits_wait(&commits), GRAFT_ERR_IO);
    assert_non_null(strstr(graft_errmsg(), "x.txt"));
    expect_bytes(b, "b");
    assert_int_equal(scratch_entries_containing(".tmp."), 0);
    assert_int_equal(graft_commits_wait(&commits), GRAFT_OK); /* empty again */
}

static void atomic_open_over_reuses_a_spare_and_keeps_the_replaced_file_as_the_next(void **state) {
    (void)state;
    char path[PATH_BYTES], spare[PATH_BYTES + 16], other[PATH_BYTES];
    scratch_path(path, "over.bin");
    snprintf(spare, sizeof spare, "%s.spare", path);
    scratch_path(other, "over-other.bin");
    write_bytes(path, "target v1", 9);
    write_bytes(spare, "an older and longer file", 24);
    ino_t spare_ino = inode_of(spare), target_ino = inode_of(path);
    assert_int_equal(chmod(path, 0640), 0); /* the new file takes the target's bits, not the spare's */
    assert_int_equal(chmod(spare, 0600), 0);

    graft_atomic_file af;
    assert_int_equal(graft_atomic_open_over(&af, path, spare), GRAFT_OK);
    assert_int_equal(access(spare, F_OK), -1); /* taken as the temporary file */
    assert_int_equal(graft_atomic_write(&af, "v2", 2), GRAFT_OK);
    expect_bytes(path, "target v1"); /* readers see the old target until commit */
    assert_int_equal(graft_atomic_commit(&af), GRAFT_OK);
    expect_bytes(path, "v2"); /* cut to the bytes written */
    assert_true(inode_of(path) == spare_ino);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    expect_bytes(spare, "target v1"); /* the replaced file, the next spare */
    assert_true(inode_of(spare) == target_ino);
    assert_int_equal(scratch_entries_containing("over.bin.tmp."), 0);

    /* a spare with another name is not overwritten: a new file, the spare name moved on */
    assert_int_equal(link(spare, other), 0);
    assert_int_equal(graft_atomic_open_over(&af, path, spare), GRAFT_OK);
    assert_int_equal(graft_atomic_write(&af, "v3", 2), GRAFT_OK);
    assert_int_equal(graft_atomic_commit(&af), GRAFT_OK);
    expect_bytes(path, "v3");
    assert_true(inode_of(path) != target_ino && inode_of(path) != spare_ino);
    expect_bytes(other, "target v1");
    expect_bytes(spare, "v2");
    assert_true(inode_of(spare) == spare_ino);

    /* an abort leaves the target alone and removes the temporary file, the spare it took
       included */
    assert_int_equal(graft_atomic_open_over(&af, path, spare), GRAFT_OK);
    assert_int_equal(graft_atomic_write(&af, "partial", 7), GRAFT_OK);
    graft_atomic_abort(&af);
    expect_bytes(path, "v3");
    assert_int_equal(access(spare, F_OK), -1);
    assert_int_equal(scratch_entries_containing("over.bin.tmp."), 0);

    /* no spare: a new file, and the replaced target becomes the spare */
    assert_int_equal(graft_atomic_open_over(&af, path, spare), GRAFT_OK);
    assert_int_equal(graft_atomic_write(&af, "v4", 2), GRAFT_OK);
    assert_int_equal(graft_atomic_commit(&af), GRAFT_OK);
    expect_bytes(path, "v4");
    expect_bytes(spare, "v3");

    /* a spare that is not a regular file is never written through: a symbolic link is
       replaced by the old target, its own target untouched; a directory stays, and the
       write still lands */
    char elsewhere[PATH_BYTES];
    scratch_path(elsewhere, "over-elsewhere.bin");
    write_bytes(elsewhere, "keep me", 7);
    unlink(spare);
    assert_int_equal(symlink(elsewhere, spare), 0);
    assert_int_equal(graft_atomic_open_over(&af, path, spare), GRAFT_OK);
    assert_int_equal(graft_atomic_write(&af, "v5", 2), GRAFT_OK);
    assert_int_equal(graft_atomic_commit(&af), GRAFT_OK);
    expect_bytes(path, "v5");
    expect_bytes(elsewhere, "keep me");
    expect_bytes(spare, "v4");
    unlink(spare);
    assert_int_equal(mkdir(spare, 0700), 0);
    assert_int_equal(graft_atomic_open_over(&af, path, spare), GRAFT_OK);
    assert_int_equal(graft_atomic_write(&af, "v6", 2), GRAFT_OK);
    assert_int_equal(graft_atomic_commit(&af), GRAFT_OK);
    expect_bytes(path, "v6");
    assert_int_equal(rmdir(spare), 0);
    unlink(elsewhere);
    assert_int_equal(graft_atomic_write_file(spare, "v5", 2), GRAFT_OK); /* as the symlink case left it */

    /* the spare removed with the old files, in the background */
    graft_old_files old;
    memset(&old, 0, sizeof old);
    graft_old_files_remove(&old, spare);
    graft_old_files_release(&old);
    graft_old_files_wait(&old);
    assert_int_equal(access(spare, F_OK), -1);
    expect_bytes(path, "v6");
    unlink(other);
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
        cmocka_unit_test(every_dtype_is_checked_for_size),
        cmocka_unit_test(reads_f16_exactly_with_subnormals_infinities_and_nan),
        cmocka_unit_test(reads_bf16_exactly),
        cmocka_unit_test(reads_f64_rounding_to_nearest_even),
        cmocka_unit_test(reads_every_integer_dtype_as_int64),
        cmocka_unit_test(a_u64_beyond_int64_is_unsupported),
        cmocka_unit_test(reads_a_file_mixing_dtypes_and_empty_tensors),
        cmocka_unit_test(more_than_8_dimensions_are_unsupported),
        cmocka_unit_test(a_failed_save_into_a_missing_directory_is_an_io_error),
        cmocka_unit_test(a_failed_rename_leaves_no_temporary_file),
        cmocka_unit_test(a_save_replaces_an_existing_file_atomically),
        cmocka_unit_test(a_save_keeps_the_permissions_of_the_file_it_replaces),
        cmocka_unit_test(a_tensor_named_metadata_cannot_be_saved),
        cmocka_unit_test(saves_f16_with_the_expected_header_and_bytes),
        cmocka_unit_test(saves_bf16_with_the_expected_bytes),
        cmocka_unit_test(f16_round_trip_rounds_each_value_once),
        cmocka_unit_test(bf16_round_trip_rounds_each_value_once),
        cmocka_unit_test(save_dtype_f32_and_null_match_the_plain_save),
        cmocka_unit_test(save_dtype_rejects_other_dtypes),
        cmocka_unit_test(atomic_file_leaves_the_target_alone_until_commit),
        cmocka_unit_test(atomic_file_abort_removes_the_temporary_file),
        cmocka_unit_test(atomic_file_creates_a_new_file_readable_like_fopen_would),
        cmocka_unit_test(atomic_link_replaces_the_target_with_another_name_of_the_file),
        cmocka_unit_test(atomic_open_over_reuses_a_spare_and_keeps_the_replaced_file_as_the_next),
        cmocka_unit_test(replaced_files_live_on_until_released_then_go),
        cmocka_unit_test(deferred_commits_run_in_order_and_report_the_first_failure),
    };
    return cmocka_run_group_tests(tests, make_scratch, remove_scratch);
}
