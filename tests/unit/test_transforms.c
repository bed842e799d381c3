/* test_transforms.c — image transforms and Compose pipelines against torchvision 0.14.
 *
 * parity/fixtures/transforms/transforms.safetensors (gen_transform_fixtures.py) holds
 * random uint8 images and torchvision's outputs: for each case, the graft spec and the
 * tensor Compose(...) made of it; for fixed-offset crops, the window and the tensor
 * crop(pad(img, P), i, j, h, w).  Every output must agree to MAX_ABS_ERR — Resize
 * included, because graft computes PIL's resampling with PIL's integer arithmetic and
 * the pixels come out identical (the measured difference is 0).
 *
 * Random transforms cannot match torch's generator; they are checked for what
 * torchvision promises instead: every output is one of the possible windows/flips,
 * every offset can occur, and the same seed gives the same results. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/tensor.h"
#include "data/transforms.h"
#include "graft/graft.h"

#define FIXTURE "parity/fixtures/transforms/transforms.safetensors"
#define MAX_ABS_ERR 1e-6 /* the brief's bound; measured: 0 for every case */

static graft_tensor_map *fx;

static int load_fixture(void **state) {
    (void)state;
    return graft_safetensors_load(FIXTURE, &fx) == GRAFT_OK ? 0 : -1;
}

static int free_fixture(void **state) {
    (void)state;
    graft_tensor_map_free(fx);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------- */

/* A fixture input image ([H, W, C] floats holding bytes) as an owned graft_image. */
static graft_image fixture_image(const char *input) {
    char name[64];
    snprintf(name, sizeof name, "input.%s", input);
    graft_tensor *t = graft_tensor_map_get(fx, name);
    if (!t) fail_msg("no fixture tensor %s", name);
    graft_image img;
    graft_image_init(&img);
    assert_int_equal(graft_image_reserve(&img, (int)graft_tensor_dim(t, 0),
                                         (int)graft_tensor_dim(t, 1), (int)graft_tensor_dim(t, 2)),
                     GRAFT_OK);
    const float *v = graft_tensor_f32_const(t);
    for (size_t i = 0; i < graft_image_bytes(&img); i++) img.data[i] = (uint8_t)v[i];
    return img;
}

/* max |got - want| over a [C, H, W] output; fails when the shapes differ. */
static double max_err(const float *got, const int chw[3], const graft_tensor *want,
                      const char *what) {
    if (graft_tensor_ndim(want) != 3 || graft_tensor_dim(want, 0) != chw[0] ||
        graft_tensor_dim(want, 1) != chw[1] || graft_tensor_dim(want, 2) != chw[2])
        fail_msg("%s: output [%d, %d, %d], torchvision [%lld, %lld, %lld]", what, chw[0], chw[1],
                 chw[2], (long long)graft_tensor_dim(want, 0), (long long)graft_tensor_dim(want, 1),
                 (long long)graft_tensor_dim(want, 2));
    const float *w = graft_tensor_f32_const(want);
    double worst = 0;
    for (int64_t i = 0; i < graft_tensor_numel(want); i++)
        worst = fmax(worst, fabs((double)got[i] - (double)w[i]));
    return worst;
}

/* Runs every fixture case whose name starts with prefix through graft and compares
 * with torchvision; returns how many ran. */
static int check_cases(const char *prefix) {
    int ran = 0;
    graft_transform_work work = {0};
    for (size_t i = 0; i < graft_tensor_map_meta_size(fx); i++) {
        const char *key = graft_tensor_map_meta_key(fx, i);
        if (strncmp(key, "case.", 5) != 0 || strncmp(key + 5, prefix, strlen(prefix)) != 0)
            continue;
        const char *value = graft_tensor_map_get_meta(fx, key);
        const char *bar = strchr(value, '|');
        assert_non_null(bar);
        char input[16];
        snprintf(input, sizeof input, "%.*s", (int)(bar - value), value);
        const char *spec = bar + 1;

        graft_transforms *t;
        if (graft_transforms_parse(spec, &t)) fail_msg("%s: %s", key, graft_errmsg());
        assert_false(graft_transforms_is_random(t));
        graft_image img = fixture_image(input);
        int chw[3];
        assert_int_equal(graft_transforms_output_shape(t, img.h, img.w, img.c, chw), GRAFT_OK);
        size_t n = (size_t)chw[0] * chw[1] * chw[2];
        float *out = malloc(n * sizeof *out);
        if (graft_transforms_apply(t, &img, NULL, &work, out, n))
            fail_msg("%s: %s", key, graft_errmsg());
        char want_name[96];
        snprintf(want_name, sizeof want_name, "expected.%s", key + 5);
        graft_tensor *want = graft_tensor_map_get(fx, want_name);
        assert_non_null(want);
        double err = max_err(out, chw, want, key);
        if (err > MAX_ABS_ERR) fail_msg("%s (\"%s\"): max |graft - torchvision| = %g", key, spec, err);
        free(out);
        graft_image_release(&img);
        graft_transforms_free(t);
        ran++;
    }
    graft_transform_work_release(&work);
    if (ran == 0) fail_msg("no fixture cases named %s*", prefix);
    return ran;
}

static graft_transforms *parse_ok(const char *spec) {
    graft_transforms *t;
    if (graft_transforms_parse(spec, &t)) fail_msg("\"%s\": %s", spec, graft_errmsg());
    return t;
}

/* A spec is rejected as invalid with one line quoting the offending item. */
static void expect_parse_error(const char *spec, const char *item) {
    graft_transforms *t = (graft_transforms *)&t;
    assert_int_equal(graft_transforms_parse(spec, &t), GRAFT_ERR_INVALID);
    assert_null(t);
    const char *msg = graft_errmsg();
    char quoted[96];
    snprintf(quoted, sizeof quoted, "'%s'", item);
    if (!strstr(msg, quoted) || strchr(msg, '\n'))
        fail_msg("\"%s\": message \"%s\" should quote %s", spec, msg, quoted);
}

/* A uint8 image with distinct pixel values (so windows can be told apart). */
static graft_image numbered_image(int h, int w, int c) {
    graft_image img;
    graft_image_init(&img);
    assert_int_equal(graft_image_reserve(&img, h, w, c), GRAFT_OK);
    for (size_t i = 0; i < graft_image_bytes(&img); i++) img.data[i] = (uint8_t)(1 + i % 251);
    return img;
}

static bool same_image(const graft_image *a, const graft_image *b) {
    return a->h == b->h && a->w == b->w && a->c == b->c &&
           memcmp(a->data, b->data, graft_image_bytes(a)) == 0;
}

/* ---- parity with torchvision --------------------------------------------------- */

static void totensor_matches_torchvision(void **state) {
    (void)state;
    check_cases("totensor_");
}

static void normalize_matches_torchvision(void **state) {
    (void)state;
    check_cases("normalize_");
}

static void resize_down_matches_pil_antialiased_bilinear(void **state) {
    (void)state;
    check_cases("resize_down_");
}

static void resize_up_matches_pil_bilinear(void **state) {
    (void)state;
    check_cases("resize_up_");
    check_cases("resize_mixed_");
}

static void resize_to_the_same_size_is_the_identity(void **state) {
    (void)state;
    check_cases("resize_same_");
}

static void resize_int_scales_the_smaller_edge_like_torchvision(void **state) {
    (void)state;
    check_cases("resize_tall_");
    int h, w;
    graft_resize_output_size(17, 23, 13, &h, &w); /* int(13 * 23 / 17) = int(17.59) */
    assert_int_equal(h, 13);
    assert_int_equal(w, 17);
    graft_resize_output_size(100, 50, 224, &h, &w); /* portrait: width is the short edge */
    assert_int_equal(h, 448);
    assert_int_equal(w, 224);
    graft_resize_output_size(3, 3, 7, &h, &w);
    assert_int_equal(h, 7);
    assert_int_equal(w, 7);
}

static void centercrop_matches_torchvision(void **state) {
    (void)state;
    check_cases("centercrop_");
}

static void centercrop_offsets_round_half_to_even(void **state) {
    (void)state;
    /* (size - crop) / 2.0 = 0.5, 1.5, 2.5 round to 0, 2, 2 in Python. */
    static const int sizes[] = {4, 6, 8}, tops[] = {0, 2, 2};
    for (int k = 0; k < 3; k++) {
        graft_image img = numbered_image(sizes[k], 3, 1), out, want;
        graft_image_init(&out);
        graft_image_init(&want);
        assert_int_equal(graft_image_center_crop(&img, 3, 3, &out), GRAFT_OK);
        assert_int_equal(graft_image_crop(&img, tops[k], 0, 3, 3, &want), GRAFT_OK);
        assert_true(same_image(&out, &want));
        graft_image_release(&img);
        graft_image_release(&out);
        graft_image_release(&want);
    }
}

static void grayscale_matches_pil_convert_l(void **state) {
    (void)state;
    check_cases("grayscale");
}

static void hflip_with_p_0_or_1_matches_torchvision(void **state) {
    (void)state;
    check_cases("hflip_");
}

static void compose_pipelines_match_torchvision(void **state) {
    (void)state;
    check_cases("compose_");
}

static void pad_then_crop_windows_match_torchvision(void **state) {
    (void)state;
    int ran = 0;
    for (size_t i = 0; i < graft_tensor_map_meta_size(fx); i++) {
        const char *key = graft_tensor_map_meta_key(fx, i);
        if (strncmp(key, "crop.", 5) != 0) continue;
        char input[16];
        int top, left, h, w;
        assert_int_equal(sscanf(graft_tensor_map_get_meta(fx, key), "%15[^|]|%d|%d|%d|%d", input,
                                &top, &left, &h, &w),
                         5);
        graft_image img = fixture_image(input), out;
        graft_image_init(&out);
        assert_int_equal(graft_image_crop(&img, top, left, h, w, &out), GRAFT_OK);
        int chw[3] = {out.c, out.h, out.w};
        float *t = malloc(graft_image_bytes(&out) * sizeof *t);
        graft_image_to_tensor(&out, t);
        double err = max_err(t, chw, graft_tensor_map_get(fx, key), key);
        if (err > MAX_ABS_ERR) fail_msg("%s: max |graft - torchvision| = %g", key, err);
        free(t);
        graft_image_release(&img);
        graft_image_release(&out);
        ran++;
    }
    assert_true(ran > 0);
}

/* ---- random transforms --------------------------------------------------------- */

/* randomcrop=6x5:2 on a 7 x 9 image: 7 + 4 - 6 + 1 = 6 tops, 9 + 4 - 5 + 1 = 9 lefts. */
static void random_crop_gives_only_padded_windows_and_every_one_of_them(void **state) {
    (void)state;
    enum { TOPS = 6, LEFTS = 9, DRAWS = 3000 };
    graft_transforms *t = parse_ok("randomcrop=6x5:2");
    assert_true(graft_transforms_is_random(t));
    graft_image img = numbered_image(7, 9, 3);
    graft_image windows[TOPS][LEFTS];
    for (int i = 0; i < TOPS; i++)
        for (int j = 0; j < LEFTS; j++) {
            graft_image_init(&windows[i][j]);
            assert_int_equal(graft_image_crop(&img, i - 2, j - 2, 6, 5, &windows[i][j]), GRAFT_OK);
        }
    int seen[TOPS][LEFTS] = {{0}};
    graft_rng rng;
    graft_rng_seed(&rng, 7);
    graft_transform_work work = {0};
    for (int d = 0; d < DRAWS; d++) {
        const graft_image *out;
        assert_int_equal(graft_transforms_apply_image(t, &img, &rng, &work, &out), GRAFT_OK);
        int found = 0;
        for (int i = 0; i < TOPS && !found; i++)
            for (int j = 0; j < LEFTS && !found; j++)
                if (same_image(out, &windows[i][j])) {
                    seen[i][j]++;
                    found = 1;
                }
        assert_true(found);
    }
    for (int i = 0; i < TOPS; i++)
        for (int j = 0; j < LEFTS; j++) {
            if (seen[i][j] == 0) fail_msg("offset (%d, %d) never drawn", i, j);
            graft_image_release(&windows[i][j]);
        }
    graft_transform_work_release(&work);
    graft_image_release(&img);
    graft_transforms_free(t);
}

static void random_crop_of_the_whole_padded_image_draws_nothing(void **state) {
    (void)state;
    graft_transforms *t = parse_ok("randomcrop=11x13:2");
    graft_image img = numbered_image(7, 9, 1);
    graft_transform_work work = {0};
    const graft_image *out;
    /* no generator needed: torchvision returns (0, 0) without drawing */
    assert_int_equal(graft_transforms_apply_image(t, &img, NULL, &work, &out), GRAFT_OK);
    assert_int_equal(out->h, 11);
    assert_int_equal(out->data[0], 0);                     /* padding */
    assert_int_equal(out->data[2 * 13 + 2], img.data[0]);  /* the image starts at (2, 2) */
    graft_transform_work_release(&work);
    graft_image_release(&img);
    graft_transforms_free(t);
}

static void hflip_half_flips_some_images_and_not_others(void **state) {
    (void)state;
    graft_transforms *t = parse_ok("hflip");
    assert_true(graft_transforms_is_random(t));
    graft_image img = numbered_image(4, 5, 3), flipped;
    graft_image_init(&flipped);
    assert_int_equal(graft_image_hflip(&img, &flipped), GRAFT_OK);
    graft_rng rng;
    graft_rng_seed(&rng, 11);
    graft_transform_work work = {0};
    int flips = 0, draws = 1000;
    for (int d = 0; d < draws; d++) {
        const graft_image *out;
        assert_int_equal(graft_transforms_apply_image(t, &img, &rng, &work, &out), GRAFT_OK);
        if (same_image(out, &flipped)) flips++;
        else assert_true(same_image(out, &img));
    }
    assert_in_range(flips, 400, 600); /* binomial(1000, 0.5): 6 standard deviations */
    graft_transform_work_release(&work);
    graft_image_release(&flipped);
    graft_image_release(&img);
    graft_transforms_free(t);
}

static void the_same_seed_reproduces_the_same_outputs(void **state) {
    (void)state;
    graft_transforms *t = parse_ok("resize=20,hflip=0.5,randomcrop=16:3,normalize=imagenet");
    graft_image img = numbered_image(24, 30, 3);
    int chw[3];
    assert_int_equal(graft_transforms_output_shape(t, 24, 30, 3, chw), GRAFT_OK);
    size_t n = (size_t)chw[0] * chw[1] * chw[2];
    enum { STEPS = 20 };
    float *a = malloc(STEPS * n * sizeof *a), *b = malloc(STEPS * n * sizeof *b);
    graft_transform_work work = {0};
    for (int run = 0; run < 2; run++) {
        graft_rng rng;
        graft_rng_seed(&rng, 2024);
        for (int s = 0; s < STEPS; s++)
            assert_int_equal(graft_transforms_apply(t, &img, &rng, &work, (run ? b : a) + s * n, n),
                             GRAFT_OK);
    }
    assert_memory_equal(a, b, STEPS * n * sizeof *a);
    /* and the steps differ from each other (the generator advances) */
    int distinct = 0;
    for (int s = 1; s < STEPS; s++) distinct += memcmp(a, a + s * n, n * sizeof *a) != 0;
    assert_true(distinct > 0);
    graft_transform_work_release(&work);
    free(a);
    free(b);
    graft_image_release(&img);
    graft_transforms_free(t);
}

static void a_random_pipeline_without_a_generator_is_invalid(void **state) {
    (void)state;
    graft_transforms *t = parse_ok("hflip=0.3");
    graft_image img = numbered_image(4, 4, 3);
    graft_transform_work work = {0};
    const graft_image *out;
    assert_int_equal(graft_transforms_apply_image(t, &img, NULL, &work, &out), GRAFT_ERR_INVALID);
    assert_non_null(strstr(graft_errmsg(), "hflip=0.3"));
    graft_transform_work_release(&work);
    graft_image_release(&img);
    graft_transforms_free(t);
}

/* ---- specs and shapes ------------------------------------------------------------ */

static void an_empty_spec_is_totensor_alone(void **state) {
    (void)state;
    graft_transforms *t = parse_ok("  ");
    int chw[3];
    assert_int_equal(graft_transforms_output_shape(t, 5, 7, 1, chw), GRAFT_OK);
    assert_int_equal(chw[0], 1);
    assert_int_equal(chw[1], 5);
    assert_int_equal(chw[2], 7);
    assert_false(graft_transforms_is_random(t));
    assert_string_equal(graft_transforms_spec(t), "  ");
    graft_transforms_free(t);
}

static void the_output_shape_follows_each_transform(void **state) {
    (void)state;
    graft_transforms *t = parse_ok("resize=64,centercrop=56,hflip=0.5,randomcrop=48:4,grayscale=3,"
                                   "normalize=imagenet");
    int chw[3];
    assert_int_equal(graft_transforms_output_shape(t, 480, 640, 1, chw), GRAFT_OK);
    assert_int_equal(chw[0], 3);
    assert_int_equal(chw[1], 48);
    assert_int_equal(chw[2], 48);
    graft_transforms_free(t);
}

static void malformed_items_are_rejected_naming_the_item(void **state) {
    (void)state;
    static const char *const bad[][2] = {
        {"resize", "resize"},
        {"resize=0", "resize=0"},
        {"resize=abc", "resize=abc"},
        {"resize=10x", "resize=10x"},
        {"resize=-5", "resize=-5"},
        {"resize=99999", "resize=99999"},
        {"centercrop=3x4x5", "centercrop=3x4x5"},
        {"randomcrop=32:-1", "randomcrop=32:-1"},
        {"randomcrop=32:x", "randomcrop=32:x"},
        {"randomcrop=", "randomcrop="},
        {"hflip=1.5", "hflip=1.5"},
        {"hflip=half", "hflip=half"},
        {"grayscale=2", "grayscale=2"},
        {"normalize=imagenet2", "normalize=imagenet2"},
        {"normalize=0.5", "normalize=0.5"},
        {"normalize=0.5/0", "normalize=0.5/0"},
        {"normalize=1:2/3:4", "normalize=1:2/3:4"},
        {"normalize=1:2:3:4/1", "normalize=1:2:3:4/1"},
        {"normalize=nan/1", "normalize=nan/1"},
        {"resize=32,flip=1", "flip=1"},
        {"resize=10,,hflip", ""},
        {"normalize=imagenet,resize=3", "resize=3"},
        {"normalize=imagenet,normalize=imagenet", "normalize=imagenet"},
        {"totensor,hflip", "hflip"},
        {"totensor,totensor", "totensor"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) expect_parse_error(bad[i][0], bad[i][1]);
}

static void impossible_shapes_are_shape_errors_naming_the_transform(void **state) {
    (void)state;
    int chw[3];
    graft_transforms *t = parse_ok("randomcrop=32:2");
    assert_int_equal(graft_transforms_output_shape(t, 27, 40, 3, chw), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(), "randomcrop=32:2"));
    graft_transforms_free(t);

    t = parse_ok("normalize=imagenet");
    assert_int_equal(graft_transforms_output_shape(t, 28, 28, 1, chw), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(), "normalize=imagenet"));
    graft_transforms_free(t);

    t = parse_ok("resize=30000"); /* a 1 x 100 strip would become 30000 x 3000000 */
    assert_int_equal(graft_transforms_output_shape(t, 1, 100, 3, chw), GRAFT_ERR_SHAPE);
    graft_transforms_free(t);
}

static void apply_checks_the_size_of_the_output_buffer(void **state) {
    (void)state;
    graft_transforms *t = parse_ok("centercrop=4");
    graft_image img = numbered_image(8, 8, 3);
    graft_transform_work work = {0};
    float out[48];
    assert_int_equal(graft_transforms_apply(t, &img, NULL, &work, out, 47), GRAFT_ERR_SHAPE);
    assert_int_equal(graft_transforms_apply(t, &img, NULL, &work, out, 48), GRAFT_OK);
    graft_transform_work_release(&work);
    graft_image_release(&img);
    graft_transforms_free(t);
}

static void normalize_with_one_value_applies_it_to_every_channel(void **state) {
    (void)state;
    float x[6] = {0.5f, 1.0f, 0.0f, 0.25f, 0.75f, 0.5f}; /* [3, 1, 2] */
    const float mean = 0.5f, std = 0.25f;
    assert_int_equal(graft_normalize(x, 3, 1, 2, &mean, &std, 1), GRAFT_OK);
    assert_float_equal(x[0], 0.0f, 0);
    assert_float_equal(x[1], 2.0f, 0);
    assert_float_equal(x[4], 1.0f, 0);
    assert_int_equal(graft_normalize(x, 3, 1, 2, &mean, &std, 2), GRAFT_ERR_SHAPE);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(totensor_matches_torchvision),
        cmocka_unit_test(normalize_matches_torchvision),
        cmocka_unit_test(resize_down_matches_pil_antialiased_bilinear),
        cmocka_unit_test(resize_up_matches_pil_bilinear),
        cmocka_unit_test(resize_to_the_same_size_is_the_identity),
        cmocka_unit_test(resize_int_scales_the_smaller_edge_like_torchvision),
        cmocka_unit_test(centercrop_matches_torchvision),
        cmocka_unit_test(centercrop_offsets_round_half_to_even),
        cmocka_unit_test(grayscale_matches_pil_convert_l),
        cmocka_unit_test(hflip_with_p_0_or_1_matches_torchvision),
        cmocka_unit_test(compose_pipelines_match_torchvision),
        cmocka_unit_test(pad_then_crop_windows_match_torchvision),
        cmocka_unit_test(random_crop_gives_only_padded_windows_and_every_one_of_them),
        cmocka_unit_test(random_crop_of_the_whole_padded_image_draws_nothing),
        cmocka_unit_test(hflip_half_flips_some_images_and_not_others),
        cmocka_unit_test(the_same_seed_reproduces_the_same_outputs),
        cmocka_unit_test(a_random_pipeline_without_a_generator_is_invalid),
        cmocka_unit_test(an_empty_spec_is_totensor_alone),
        cmocka_unit_test(the_output_shape_follows_each_transform),
        cmocka_unit_test(malformed_items_are_rejected_naming_the_item),
        cmocka_unit_test(impossible_shapes_are_shape_errors_naming_the_transform),
        cmocka_unit_test(apply_checks_the_size_of_the_output_buffer),
        cmocka_unit_test(normalize_with_one_value_applies_it_to_every_channel),
    };
    return cmocka_run_group_tests(tests, load_fixture, free_fixture);
}
