/* test_image.c — decoding PNG, JPEG and BMP files to RGB, as PIL's
 * Image.open(f).convert("RGB") does.
 *
 * The images under parity/fixtures/transforms/images were written by PIL (or by hand
 * in gen_transform_fixtures.py for layouts PIL cannot write), and expected.safetensors
 * holds PIL's decoded pixels for each.  PNG and BMP must match exactly.  JPEG goes
 * through the same libjpeg-turbo as Debian's PIL, with the same default settings, and
 * matches exactly too (JPEG_MAX_DIFF).  Broken files are derived from the good ones in
 * a scratch directory: every prefix of each file, random byte damage, oversized headers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "core/rng.h"
#include "core/tensor.h"
#include "data/image.h"
#include "fixtures.h"
#include "graft/graft.h"

#define IMAGES "parity/fixtures/transforms/images/"
#define PATH_BYTES 4096
/* Largest |graft - PIL| over JPEG pixels.  Both use the system libjpeg-turbo with its
 * defaults (islow DCT, fancy upsampling), so the decoded samples are identical. */
#define JPEG_MAX_DIFF 0

static graft_tensor_map *expected; /* file name -> [H, W, 3] F32 PIL pixels */

static int load_expected(void **state) {
    (void)state;
    return graft_safetensors_load(IMAGES "expected.safetensors", &expected) == GRAFT_OK ? 0 : -1;
}

static int free_expected(void **state) {
    (void)state;
    graft_tensor_map_free(expected);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------- */

static unsigned char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)size + 1);
    assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    *n = (size_t)size;
    return buf;
}

static void write_file(const char *path, const void *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* Largest |decoded - PIL| for a fixture file; fails on a shape mismatch. */
static int max_diff_from_pil(const char *file) {
    char path[PATH_BYTES];
    snprintf(path, sizeof path, IMAGES "%s", file);
    graft_image img;
    graft_image_init(&img);
    graft_status s = graft_image_load(path, &img);
    if (s) fail_msg("%s: %s", file, graft_errmsg());
    graft_tensor *want = graft_tensor_map_get(expected, file);
    assert_non_null(want);
    assert_int_equal(img.c, 3);
    assert_int_equal(img.h, graft_tensor_dim(want, 0));
    assert_int_equal(img.w, graft_tensor_dim(want, 1));
    const float *w = graft_tensor_f32_const(want);
    int worst = 0;
    for (size_t i = 0; i < graft_image_bytes(&img); i++) {
        int d = abs((int)img.data[i] - (int)w[i]);
        if (d > worst) worst = d;
    }
    graft_image_release(&img);
    return worst;
}

static void expect_same_as_pil(const char *file) {
    int d = max_diff_from_pil(file);
    if (d != 0) fail_msg("%s differs from PIL by up to %d", file, d);
}

/* Decoding bytes fails with status and a one-line message that names the file. */
static void expect_decode_error(const unsigned char *bytes, size_t n, graft_status status,
                                const char *what) {
    graft_image img;
    graft_image_init(&img);
    graft_status s = graft_image_decode(bytes, n, "damaged.file", &img);
    graft_image_release(&img);
    if (s != status)
        fail_msg("status %s, expected %s (%s)", graft_status_name(s), graft_status_name(status),
                 graft_errmsg());
    const char *msg = graft_errmsg();
    if (strncmp(msg, "damaged.file: ", 14) != 0 || strchr(msg, '\n') ||
        (what && !strstr(msg, what)))
        fail_msg("message \"%s\" should name the file and say \"%s\"", msg, what ? what : "");
}

/* Every prefix shorter than keep_ok bytes fails with GRAFT_ERR_FORMAT (or, below the
 * magic bytes, GRAFT_ERR_UNSUPPORTED); none crashes. */
static void expect_every_prefix_fails(const char *file, size_t tail_ok, size_t magic_bytes) {
    char path[PATH_BYTES];
    snprintf(path, sizeof path, IMAGES "%s", file);
    size_t n;
    unsigned char *bytes = read_file(path, &n);
    graft_image img;
    graft_image_init(&img);
    for (size_t len = 0; len + tail_ok < n; len++) {
        unsigned char *copy = malloc(len ? len : 1); /* exact size: ASan sees over-reads */
        memcpy(copy, bytes, len);
        graft_status s = graft_image_decode(copy, len, file, &img);
        free(copy);
        graft_status want = len < magic_bytes ? GRAFT_ERR_UNSUPPORTED : GRAFT_ERR_FORMAT;
        if (s != want)
            fail_msg("%s cut to %zu of %zu bytes: %s (%s), expected %s", file, len, n,
                     graft_status_name(s), graft_errmsg(), graft_status_name(want));
    }
    graft_image_release(&img);
    free(bytes);
}

/* Random damage (a few bytes overwritten) never crashes or leaks; the result is
 * either a decoded image or an error. */
static void expect_damage_is_survived(const char *file, int trials) {
    char path[PATH_BYTES];
    snprintf(path, sizeof path, IMAGES "%s", file);
    size_t n;
    unsigned char *bytes = read_file(path, &n);
    unsigned char *copy = malloc(n);
    graft_rng rng;
    graft_rng_seed(&rng, 1234);
    graft_image img;
    graft_image_init(&img);
    for (int t = 0; t < trials; t++) {
        memcpy(copy, bytes, n);
        int hits = 1 + (int)(graft_rng_u64(&rng) % 4);
        for (int k = 0; k < hits; k++) copy[graft_rng_u64(&rng) % n] = (unsigned char)graft_rng_u64(&rng);
        graft_status s = graft_image_decode(copy, n, file, &img);
        if (s != GRAFT_OK && s != GRAFT_ERR_FORMAT && s != GRAFT_ERR_UNSUPPORTED)
            fail_msg("%s trial %d: unexpected status %s (%s)", file, t, graft_status_name(s),
                     graft_errmsg());
        if (s == GRAFT_OK) assert_int_equal(img.c, 3);
    }
    graft_image_release(&img);
    free(copy);
    free(bytes);
}

/* ---- PNG ----------------------------------------------------------------------- */

static void png_rgb_matches_pil(void **state) {
    (void)state;
    expect_same_as_pil("rgb.png");
}

static void png_gray_is_replicated_to_rgb(void **state) {
    (void)state;
    expect_same_as_pil("gray.png");
    expect_same_as_pil("bilevel.png");
}

static void png_low_bit_depth_gray_is_scaled_to_8_bits(void **state) {
    (void)state;
    expect_same_as_pil("gray2.png");
    expect_same_as_pil("gray4.png");
}

static void png_alpha_is_dropped_without_blending(void **state) {
    (void)state;
    expect_same_as_pil("la.png");
    expect_same_as_pil("rgba.png");
}

static void png_palette_is_looked_up_and_transparency_ignored(void **state) {
    (void)state;
    expect_same_as_pil("palette.png");
    expect_same_as_pil("palette_trns.png");
}

static void png_index_beyond_a_short_palette_reads_pils_gray_ramp(void **state) {
    (void)state;
    expect_same_as_pil("palette4_short.png");
}

static void png_16_bit_colour_keeps_the_high_byte(void **state) {
    (void)state;
    expect_same_as_pil("rgb16.png");
    expect_same_as_pil("rgba16.png");
    expect_same_as_pil("la16.png");
}

static void png_16_bit_gray_is_clipped_to_255_like_pil(void **state) {
    (void)state;
    expect_same_as_pil("gray16.png");
}

static void png_interlaced_matches_pil(void **state) {
    (void)state;
    expect_same_as_pil("rgb_adam7.png");
}

static void png_without_iend_is_accepted_like_pil(void **state) {
    (void)state;
    expect_same_as_pil("rgb_no_iend.png");
}

static void png_cut_short_anywhere_before_iend_is_a_format_error(void **state) {
    (void)state;
    expect_every_prefix_fails("rgb.png", 12, 8); /* the last 12 bytes are IEND */
    expect_every_prefix_fails("rgb_adam7.png", 12, 8);
    expect_every_prefix_fails("palette.png", 12, 8);
}

static void png_with_a_bad_crc_is_a_format_error(void **state) {
    (void)state;
    size_t n;
    unsigned char *b = read_file(IMAGES "rgb.png", &n);
    b[8 + 8 + 4] ^= 0x01; /* first byte of IHDR's width: its CRC no longer matches */
    expect_decode_error(b, n, GRAFT_ERR_FORMAT, "PNG");
    free(b);
}

static void png_random_damage_is_survived(void **state) {
    (void)state;
    expect_damage_is_survived("rgb.png", 300);
    expect_damage_is_survived("palette4_short.png", 300);
    expect_damage_is_survived("rgb16.png", 300);
}

/* ---- JPEG ---------------------------------------------------------------------- */

static void jpeg_matches_pil(void **state) {
    (void)state;
    static const char *const files[] = {"rgb.jpg", "smooth.jpg", "smooth444.jpg",
                                        "smooth_progressive.jpg"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        int d = max_diff_from_pil(files[i]);
        if (d > JPEG_MAX_DIFF) fail_msg("%s differs from PIL by %d", files[i], d);
    }
}

static void jpeg_gray_is_replicated_to_rgb(void **state) {
    (void)state;
    assert_true(max_diff_from_pil("gray.jpg") <= JPEG_MAX_DIFF);
}

static void jpeg_cmyk_converts_like_pil(void **state) {
    (void)state;
    assert_true(max_diff_from_pil("cmyk.jpg") <= JPEG_MAX_DIFF);
}

static void jpeg_cut_short_is_a_format_error(void **state) {
    (void)state;
    /* A file missing only its 2-byte EOI marker still has every pixel (PIL reads it). */
    expect_every_prefix_fails("rgb.jpg", 2, 3);
    expect_every_prefix_fails("smooth_progressive.jpg", 2, 3);
    expect_every_prefix_fails("cmyk.jpg", 2, 3);
}

static void jpeg_random_damage_is_survived(void **state) {
    (void)state;
    expect_damage_is_survived("rgb.jpg", 300);
    expect_damage_is_survived("smooth_progressive.jpg", 300);
}

/* ---- BMP ----------------------------------------------------------------------- */

static void bmp_24_bit_with_row_padding_matches_pil(void **state) {
    (void)state;
    expect_same_as_pil("rgb.bmp");
    expect_same_as_pil("rgb_top_down.bmp");
    expect_same_as_pil("rgb_core_header.bmp");
}

static void bmp_32_bit_drops_alpha(void **state) {
    (void)state;
    expect_same_as_pil("rgba.bmp");
    expect_same_as_pil("bgra_v5_bitfields.bmp");
}

static void bmp_palettes_of_1_4_and_8_bits_are_looked_up(void **state) {
    (void)state;
    expect_same_as_pil("bilevel.bmp");
    expect_same_as_pil("palette4.bmp");
    expect_same_as_pil("palette.bmp");
    expect_same_as_pil("gray.bmp");
}

static void bmp_cut_short_is_a_format_error(void **state) {
    (void)state;
    expect_every_prefix_fails("rgb.bmp", 0, 2);
    expect_every_prefix_fails("palette4.bmp", 0, 2);
    expect_every_prefix_fails("bgra_v5_bitfields.bmp", 0, 2);
}

static void bmp_random_damage_is_survived(void **state) {
    (void)state;
    expect_damage_is_survived("palette.bmp", 300);
    expect_damage_is_survived("bgra_v5_bitfields.bmp", 300);
}

static void bmp_rle_is_unsupported(void **state) {
    (void)state;
    size_t n;
    unsigned char *b = read_file(IMAGES "palette.bmp", &n);
    b[14 + 16] = 1; /* compression: BI_RLE8 */
    expect_decode_error(b, n, GRAFT_ERR_UNSUPPORTED, "RLE");
    free(b);
}

/* ---- limits, formats, files ------------------------------------------------------ */

static void png_larger_than_the_limits_is_refused(void **state) {
    (void)state;
    size_t n;
    unsigned char *b = read_file(IMAGES "rgb.png", &n);
    /* IHDR width = height = 20000: each side is allowed, the area is not; nothing may
     * be allocated for 400M pixels.  The chunk's CRC is recomputed so only the size is
     * wrong. */
    b[16] = 0, b[17] = 0, b[18] = 0x4e, b[19] = 0x20;
    b[20] = 0, b[21] = 0, b[22] = 0x4e, b[23] = 0x20;
    uLong crc = crc32(0L, b + 12, 4 + 13); /* "IHDR" and its 13 data bytes */
    for (int i = 0; i < 4; i++) b[29 + i] = (unsigned char)(crc >> (24 - 8 * i));
    expect_decode_error(b, n, GRAFT_ERR_FORMAT, "beyond the limits");
    free(b);
}

static void jpeg_larger_than_the_limits_is_refused(void **state) {
    (void)state;
    size_t n;
    unsigned char *b = read_file(IMAGES "rgb.jpg", &n);
    size_t i = 2;
    while (i + 9 < n && !(b[i] == 0xff && (b[i + 1] == 0xc0 || b[i + 1] == 0xc2))) i++;
    assert_true(i + 9 < n);
    /* SOF: ff c0, length (2), precision (1), height (2), width (2) */
    b[i + 5] = 0xfd, b[i + 6] = 0xe8; /* 65000 */
    b[i + 7] = 0xfd, b[i + 8] = 0xe8;
    expect_decode_error(b, n, GRAFT_ERR_FORMAT, "beyond the limits");
    free(b);
}

static void bmp_larger_than_the_limits_is_refused(void **state) {
    (void)state;
    size_t n;
    unsigned char *b = read_file(IMAGES "rgb.bmp", &n);
    b[14 + 4] = 0x40, b[14 + 5] = 0x9c, b[14 + 6] = 0, b[14 + 7] = 0; /* width 40000 */
    expect_decode_error(b, n, GRAFT_ERR_FORMAT, "beyond the limits");
    free(b);
}

static void format_comes_from_content_not_the_name(void **state) {
    (void)state;
    size_t n;
    unsigned char *b = read_file(IMAGES "rgb.png", &n);
    char path[PATH_BYTES];
    fx_tmp_path(path, sizeof path, "really_a_png.jpg");
    write_file(path, b, n);
    assert_int_equal(graft_image_sniff(b, n), GRAFT_IMAGE_PNG);
    graft_image img;
    graft_image_init(&img);
    assert_int_equal(graft_image_load(path, &img), GRAFT_OK);
    assert_int_equal(img.w, 13);
    assert_int_equal(img.h, 9);
    graft_image_release(&img);
    unlink(path);
    free(b);
}

static void unknown_content_is_unsupported(void **state) {
    (void)state;
    static const unsigned char gif[] = "GIF89a\x01\x00\x01\x00";
    expect_decode_error(gif, sizeof gif - 1, GRAFT_ERR_UNSUPPORTED, "not a PNG, JPEG or BMP");
}

static void a_missing_file_is_an_io_error_naming_it(void **state) {
    (void)state;
    graft_image img;
    graft_image_init(&img);
    assert_int_equal(graft_image_load(IMAGES "no_such_file.png", &img), GRAFT_ERR_IO);
    assert_non_null(strstr(graft_errmsg(), "no_such_file.png"));
    graft_image_release(&img);
}

static void one_image_can_be_reused_across_decodes(void **state) {
    (void)state;
    graft_image img;
    graft_image_init(&img);
    assert_int_equal(graft_image_load(IMAGES "smooth.jpg", &img), GRAFT_OK); /* 27 x 39 */
    size_t cap = img.cap_bytes;
    assert_int_equal(graft_image_load(IMAGES "rgb.png", &img), GRAFT_OK); /* smaller */
    assert_int_equal(img.cap_bytes, cap);
    assert_int_equal(img.h, 9);
    graft_image_release(&img);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(png_rgb_matches_pil),
        cmocka_unit_test(png_gray_is_replicated_to_rgb),
        cmocka_unit_test(png_low_bit_depth_gray_is_scaled_to_8_bits),
        cmocka_unit_test(png_alpha_is_dropped_without_blending),
        cmocka_unit_test(png_palette_is_looked_up_and_transparency_ignored),
        cmocka_unit_test(png_index_beyond_a_short_palette_reads_pils_gray_ramp),
        cmocka_unit_test(png_16_bit_colour_keeps_the_high_byte),
        cmocka_unit_test(png_16_bit_gray_is_clipped_to_255_like_pil),
        cmocka_unit_test(png_interlaced_matches_pil),
        cmocka_unit_test(png_without_iend_is_accepted_like_pil),
        cmocka_unit_test(png_cut_short_anywhere_before_iend_is_a_format_error),
        cmocka_unit_test(png_with_a_bad_crc_is_a_format_error),
        cmocka_unit_test(png_random_damage_is_survived),
        cmocka_unit_test(jpeg_matches_pil),
        cmocka_unit_test(jpeg_gray_is_replicated_to_rgb),
        cmocka_unit_test(jpeg_cmyk_converts_like_pil),
        cmocka_unit_test(jpeg_cut_short_is_a_format_error),
        cmocka_unit_test(jpeg_random_damage_is_survived),
        cmocka_unit_test(bmp_24_bit_with_row_padding_matches_pil),
        cmocka_unit_test(bmp_32_bit_drops_alpha),
        cmocka_unit_test(bmp_palettes_of_1_4_and_8_bits_are_looked_up),
        cmocka_unit_test(bmp_cut_short_is_a_format_error),
        cmocka_unit_test(bmp_random_damage_is_survived),
        cmocka_unit_test(bmp_rle_is_unsupported),
        cmocka_unit_test(png_larger_than_the_limits_is_refused),
        cmocka_unit_test(jpeg_larger_than_the_limits_is_refused),
        cmocka_unit_test(bmp_larger_than_the_limits_is_refused),
        cmocka_unit_test(format_comes_from_content_not_the_name),
        cmocka_unit_test(unknown_content_is_unsupported),
        cmocka_unit_test(a_missing_file_is_an_io_error_naming_it),
        cmocka_unit_test(one_image_can_be_reused_across_decodes),
    };
    return cmocka_run_group_tests(tests, load_expected, free_expected);
}
