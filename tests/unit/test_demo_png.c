/* test_demo_png.c — the report's PNG writer and base64: what graft_png_encode writes,
 * graft's own PNG decoder (libpng) reads back pixel for pixel, and base64 matches the
 * test vectors of RFC 4648, section 10. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "data/image.h"
#include "demo/png.h"
#include "graft/graft.h"

/* Encodes h × w × c pixels and decodes them again (the decoder always gives RGB). */
static void round_trip(const uint8_t *pixels, int h, int w, int c) {
    uint8_t *png;
    size_t bytes;
    assert_int_equal(graft_png_encode(pixels, h, w, c, &png, &bytes), GRAFT_OK);
    assert_int_equal(graft_image_sniff(png, bytes), GRAFT_IMAGE_PNG);
    graft_image img;
    graft_image_init(&img);
    assert_int_equal(graft_image_decode(png, bytes, "round trip", &img), GRAFT_OK);
    assert_int_equal(img.h, h);
    assert_int_equal(img.w, w);
    for (int i = 0; i < h * w; i++)
        for (int ch = 0; ch < 3; ch++) assert_int_equal(img.data[i * 3 + ch], pixels[i * c + (c == 1 ? 0 : ch)]);
    graft_image_release(&img);
    free(png);
}

static void gray_pixels_read_back_exactly(void **state) {
    (void)state;
    uint8_t px[28 * 28];
    for (int i = 0; i < 28 * 28; i++) px[i] = (uint8_t)(i * 7);
    round_trip(px, 28, 28, 1);
}

static void rgb_pixels_read_back_exactly(void **state) {
    (void)state;
    uint8_t px[5 * 3 * 3];
    for (int i = 0; i < 5 * 3 * 3; i++) px[i] = (uint8_t)(255 - i * 5);
    round_trip(px, 5, 3, 3);
}

static void one_pixel_image_is_valid(void **state) {
    (void)state;
    uint8_t px[1] = {200};
    round_trip(px, 1, 1, 1);
}

static void bad_shapes_are_refused(void **state) {
    (void)state;
    uint8_t px[4] = {0};
    uint8_t *png = (uint8_t *)1;
    size_t bytes = 1;
    assert_int_equal(graft_png_encode(px, 0, 2, 1, &png, &bytes), GRAFT_ERR_INVALID);
    assert_null(png);
    assert_int_equal(graft_png_encode(px, 2, 2, 2, &png, &bytes), GRAFT_ERR_INVALID);
    assert_non_null(strstr(graft_errmsg(), "png"));
}

static void base64_matches_rfc4648_vectors(void **state) {
    (void)state;
    static const char *const IN[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const OUT[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        char *b = graft_base64((const uint8_t *)IN[i], strlen(IN[i]));
        assert_non_null(b);
        assert_string_equal(b, OUT[i]);
        free(b);
    }
}

static void base64_encodes_every_byte_value(void **state) {
    (void)state;
    uint8_t all[3] = {0x00, 0xff, 0x80};
    char *b = graft_base64(all, 3);
    assert_string_equal(b, "AP+A");
    free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gray_pixels_read_back_exactly),
        cmocka_unit_test(rgb_pixels_read_back_exactly),
        cmocka_unit_test(one_pixel_image_is_valid),
        cmocka_unit_test(bad_shapes_are_refused),
        cmocka_unit_test(base64_matches_rfc4648_vectors),
        cmocka_unit_test(base64_encodes_every_byte_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
