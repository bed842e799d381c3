/* test_conv.c — Conv2d: geometry, the reference's gradients against finite
 * differences, the fast path against the reference, gradient conventions, chunking. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/cpu.h"
#include "core/ctx.h"
#include "core/rng.h"
#include "core/threads.h"
#include "graft/graft.h"
#include "ops/conv_internal.h"
#include "ops/ops.h"
#include "testutil.h"

/* Finite differences: conv is linear in each argument, so central differences are
 * exact but for rounding, about 1e-16 * |L| / h. */
#define FD_STEP 1e-6
#define FD_TOL 1e-7
/* Fast float path against the double reference, on float-representable inputs. */
#define FAST_TOL 1e-5
/* Two float GEMM schedules of the same sums (chunked vs not, one call vs two). */
#define RESCHEDULE_TOL 1e-6

/* ---- geometries ------------------------------------------------------------ */

static const graft_conv2d_geom gradcheck_geoms[] = {
    /* 3x3 stride 1 pad 1, batch 2 */
    {.n = 2, .c = 3, .h = 6, .w = 5, .oc = 4, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    /* 3x3 stride 2 no padding */
    {.n = 1, .c = 2, .h = 7, .w = 7, .oc = 3, .kh = 3, .kw = 3, .sh = 2, .sw = 2, .ph = 0, .pw = 0},
    /* 1x1 (pointwise), batch 2 */
    {.n = 2, .c = 4, .h = 3, .w = 3, .oc = 5, .kh = 1, .kw = 1, .sh = 1, .sw = 1, .ph = 0, .pw = 0},
    /* 7x7 stride 2 pad 3: the ResNet stem */
    {.n = 1, .c = 3, .h = 9, .w = 11, .oc = 2, .kh = 7, .kw = 7, .sh = 2, .sw = 2, .ph = 3, .pw = 3},
    /* 3x1 kernel, non-square input, unequal strides and padding */
    {.n = 2, .c = 2, .h = 5, .w = 4, .oc = 3, .kh = 3, .kw = 1, .sh = 1, .sw = 2, .ph = 1, .pw = 0},
    /* odd sizes: 3x3 stride 2 pad 1 on 7x5, batch 3 */
    {.n = 3, .c = 3, .h = 7, .w = 5, .oc = 2, .kh = 3, .kw = 3, .sh = 2, .sw = 2, .ph = 1, .pw = 1},
    /* 1x1 stride 2: the ResNet downsample */
    {.n = 2, .c = 3, .h = 5, .w = 5, .oc = 4, .kh = 1, .kw = 1, .sh = 2, .sw = 2, .ph = 0, .pw = 0},
};

/* Larger shapes for the fast path: everything above plus layers it meets in models. */
static const graft_conv2d_geom fast_geoms[] = {
    {.n = 2, .c = 3, .h = 6, .w = 5, .oc = 4, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 1, .c = 2, .h = 7, .w = 7, .oc = 3, .kh = 3, .kw = 3, .sh = 2, .sw = 2, .ph = 0, .pw = 0},
    {.n = 3, .c = 16, .h = 5, .w = 6, .oc = 8, .kh = 1, .kw = 1, .sh = 1, .sw = 1, .ph = 0, .pw = 0},
    {.n = 1, .c = 16, .h = 5, .w = 6, .oc = 8, .kh = 1, .kw = 1, .sh = 1, .sw = 1, .ph = 0, .pw = 0},
    {.n = 2, .c = 8, .h = 9, .w = 9, .oc = 16, .kh = 1, .kw = 1, .sh = 2, .sw = 2, .ph = 0, .pw = 0},
    /* ResNet stem on a 32x32 image */
    {.n = 2, .c = 3, .h = 32, .w = 32, .oc = 16, .kh = 7, .kw = 7, .sh = 2, .sw = 2, .ph = 3, .pw = 3},
    /* VGG's deepest block at 32x32 input: 2x2 maps, 3x3 pad 1 */
    {.n = 8, .c = 64, .h = 2, .w = 2, .oc = 32, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    /* VGG's first layer */
    {.n = 2, .c = 3, .h = 16, .w = 16, .oc = 32, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 2, .c = 2, .h = 5, .w = 4, .oc = 3, .kh = 3, .kw = 1, .sh = 1, .sw = 2, .ph = 1, .pw = 0},
    {.n = 3, .c = 5, .h = 7, .w = 5, .oc = 6, .kh = 3, .kw = 3, .sh = 2, .sw = 2, .ph = 1, .pw = 1},
    /* padding wider than the kernel reaches: whole rows and columns of zeros */
    {.n = 2, .c = 2, .h = 3, .w = 4, .oc = 3, .kh = 2, .kw = 3, .sh = 3, .sw = 2, .ph = 4, .pw = 3},
};

/* Shapes that reach every branch of the AVX-512 kernel (conv_avx512.c): several blocks
 * of K (KC = 128) and of output columns (144), output channels that leave a partial
 * tile of 8, vectors read contiguously, through a mask (padding) and by gathers (maps
 * narrower than 16), the row split used when there are few columns, and the shapes
 * whose input gradient cannot be a forward convolution (stride 2, padding wider than
 * the kernel). */
static const graft_conv2d_geom kernel_geoms[] = {
    {.n = 3, .c = 32, .h = 12, .w = 12, .oc = 13, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 2, .c = 40, .h = 2, .w = 2, .oc = 24, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 2, .c = 5, .h = 20, .w = 20, .oc = 9, .kh = 5, .kw = 5, .sh = 1, .sw = 1, .ph = 2, .pw = 2},
    {.n = 2, .c = 6, .h = 9, .w = 11, .oc = 16, .kh = 3, .kw = 3, .sh = 2, .sw = 2, .ph = 1, .pw = 1},
    {.n = 1, .c = 17, .h = 7, .w = 7, .oc = 8, .kh = 1, .kw = 1, .sh = 1, .sw = 1, .ph = 0, .pw = 0},
    {.n = 4, .c = 64, .h = 8, .w = 8, .oc = 64, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 2, .c = 3, .h = 32, .w = 32, .oc = 64, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 2, .c = 3, .h = 5, .w = 6, .oc = 4, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 2, .pw = 0},
};

/* Winograd's edges (F(2x2, 3x3)'s, and with every remainder of the sizes by 4, F(4x4,
 * 3x3)'s): odd output sizes (a tile's right column or bottom row
 * missing), 1-pixel maps, maps 32 and more wide (whole runs of 16 tiles in a row, with
 * a ragged end), a last block of tiles that is not full, a single channel, output
 * channels that are not a multiple of 8 and more than one block of 64 of them. */
static const graft_conv2d_geom winograd_geoms[] = {
    {.n = 2, .c = 3, .h = 7, .w = 5, .oc = 5, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 3, .c = 1, .h = 1, .w = 1, .oc = 9, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 1, .c = 4, .h = 1, .w = 6, .oc = 8, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 2, .c = 5, .h = 5, .w = 33, .oc = 7, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 1, .c = 3, .h = 4, .w = 64, .oc = 4, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 2, .c = 2, .h = 3, .w = 70, .oc = 3, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 5, .c = 17, .h = 6, .w = 6, .oc = 130, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 64, .c = 24, .h = 2, .w = 2, .oc = 16, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    /* maps of 1 x 2 and 2 x 1 (WGEMM's products by output position, as 2 x 2 and 1 x 1) */
    {.n = 3, .c = 7, .h = 1, .w = 2, .oc = 5, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 2, .c = 5, .h = 2, .w = 1, .oc = 6, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    /* rows of 2 and 4 tiles, which WGEMM's AVX2 loops take 4 and 2 rows at a time across
     * images (the last image's rows alone), an odd height's short last row among them */
    {.n = 5, .c = 24, .h = 4, .w = 4, .oc = 40, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 3, .c = 17, .h = 5, .w = 4, .oc = 9, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 3, .c = 16, .h = 8, .w = 8, .oc = 20, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    /* F(4x4, 3x3): 90 tiles of 4x4 (a second block of 42), both edges ragged, two blocks of
     * output channels */
    {.n = 3, .c = 9, .h = 20, .w = 22, .oc = 70, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- a problem: one geometry with random inputs ---------------------------- */

typedef struct problem {
    graft_conv2d_geom g;
    int64_t nx, nw, ny;
    double *x, *w, *b; /* input [n, c, h, w], weight [oc, c, kh, kw], bias [oc] */
    double *gy;        /* the upstream gradient [n, oc, oh, ow] defining L = sum(y * gy) */
    double *y;         /* scratch for the loss */
} problem;

static problem make_problem(graft_conv2d_geom g, uint64_t seed) {
    problem p;
    memset(&p, 0, sizeof p);
    assert_int_equal(graft_conv2d_geom_init(&g), GRAFT_OK);
    p.g = g;
    p.nx = g.n * g.c * g.h * g.w;
    p.nw = g.oc * g.c * g.kh * g.kw;
    p.ny = g.n * g.oc * g.oh * g.ow;
    p.x = malloc((size_t)p.nx * sizeof(double));
    p.w = malloc((size_t)p.nw * sizeof(double));
    p.b = malloc((size_t)g.oc * sizeof(double));
    p.gy = malloc((size_t)p.ny * sizeof(double));
    p.y = malloc((size_t)p.ny * sizeof(double));
    graft_rng r;
    graft_rng_seed(&r, seed);
    tu_fill(&r, p.x, p.nx, -1, 1);
    tu_fill(&r, p.w, p.nw, -1, 1);
    tu_fill(&r, p.b, g.oc, -1, 1);
    tu_fill(&r, p.gy, p.ny, -1, 1);
    /* so the float path sees exactly what the reference sees */
    tu_round_to_float(p.x, p.nx);
    tu_round_to_float(p.w, p.nw);
    tu_round_to_float(p.b, g.oc);
    tu_round_to_float(p.gy, p.ny);
    return p;
}

static void free_problem(problem *p) {
    free(p->x);
    free(p->w);
    free(p->b);
    free(p->gy);
    free(p->y);
}

static double loss(void *arg) {
    problem *p = arg;
    graft_ref_conv2d_forward(&p->g, p->x, p->w, p->b, p->y);
    return tu_dot(p->y, p->gy, p->ny);
}

static double *zeros(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(double)); }

static float *float_zeros(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(float)); }

static float *float_filled(int64_t n, float v) {
    float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof *f);
    for (int64_t i = 0; i < n; i++) f[i] = v;
    return f;
}

/* max |a - b| / max(max |b|, floor), both float */
static double rel_err_ff(const float *a, const float *b, int64_t n, double floor_) {
    double diff = 0, mag = floor_;
    for (int64_t i = 0; i < n; i++) {
        diff = fmax(diff, fabs((double)a[i] - (double)b[i]));
        mag = fmax(mag, fabs((double)b[i]));
    }
    return diff / mag;
}

/* GRAFT_TEST_VERBOSE=1 prints the measured errors. */
static void report(const char *what, int index, double err) {
    if (getenv("GRAFT_TEST_VERBOSE")) print_message("  %-28s geometry %d: %.3g\n", what, index, err);
}

static void describe(const graft_conv2d_geom *g) {
    print_message("geometry n=%lld c=%lld h=%lld w=%lld oc=%lld k=%lldx%lld s=%lld,%lld p=%lld,%lld\n",
                  (long long)g->n, (long long)g->c, (long long)g->h, (long long)g->w,
                  (long long)g->oc, (long long)g->kh, (long long)g->kw, (long long)g->sh,
                  (long long)g->sw, (long long)g->ph, (long long)g->pw);
}

static int reset_workspace_limit(void **state) {
    (void)state;
    graft_conv2d_set_workspace_limit(0);
    return 0;
}

/* ---- geometry -------------------------------------------------------------- */

static void test_geom_init_computes_output_size(void **state) {
    (void)state;
    /* ResNet stem: 224 -> 112 */
    graft_conv2d_geom g = {.n = 1, .c = 3, .h = 224, .w = 224, .oc = 64, .kh = 7, .kw = 7,
                           .sh = 2, .sw = 2, .ph = 3, .pw = 3};
    assert_int_equal(graft_conv2d_geom_init(&g), GRAFT_OK);
    assert_int_equal(g.oh, 112);
    assert_int_equal(g.ow, 112);
    /* floor division, separately per axis: (7 - 3) / 2 + 1 = 3, (10 + 0 - 1) / 3 + 1 = 4 */
    graft_conv2d_geom h = {.n = 2, .c = 1, .h = 7, .w = 10, .oc = 1, .kh = 3, .kw = 1,
                           .sh = 2, .sw = 3, .ph = 0, .pw = 0};
    assert_int_equal(graft_conv2d_geom_init(&h), GRAFT_OK);
    assert_int_equal(h.oh, 3);
    assert_int_equal(h.ow, 4);
    /* a kernel exactly as large as the padded input gives a 1x1 output */
    graft_conv2d_geom k = {.n = 1, .c = 1, .h = 3, .w = 1, .oc = 1, .kh = 5, .kw = 3,
                           .sh = 1, .sw = 1, .ph = 1, .pw = 1};
    assert_int_equal(graft_conv2d_geom_init(&k), GRAFT_OK);
    assert_int_equal(k.oh, 1);
    assert_int_equal(k.ow, 1);
}

static void test_geom_init_rejects_nonpositive_sizes(void **state) {
    (void)state;
    const graft_conv2d_geom ok = {.n = 2, .c = 3, .h = 8, .w = 8, .oc = 4, .kh = 3, .kw = 3,
                                  .sh = 1, .sw = 1, .ph = 1, .pw = 1};
    graft_conv2d_geom g = ok;
    g.n = 0;
    assert_int_equal(graft_conv2d_geom_init(&g), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(), "[0, 3, 8, 8]"));
    g = ok;
    g.w = -5;
    assert_int_equal(graft_conv2d_geom_init(&g), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(), "-5"));
    g = ok;
    g.oc = 0;
    assert_int_equal(graft_conv2d_geom_init(&g), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(), "[0, 3, 3, 3]"));
    g = ok;
    g.kw = 0;
    assert_int_equal(graft_conv2d_geom_init(&g), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(), "[4, 3, 3, 0]"));
}

static void test_geom_init_rejects_nonpositive_stride(void **state) {
    (void)state;
    graft_conv2d_geom g = {.n = 1, .c = 1, .h = 8, .w = 8, .oc = 1, .kh = 3, .kw = 3,
                           .sh = 1, .sw = 0, .ph = 0, .pw = 0};
    assert_int_equal(graft_conv2d_geom_init(&g), GRAFT_ERR_INVALID);
    assert_non_null(strstr(graft_errmsg(), "(1, 0)"));
    g.sw = 1;
    g.sh = -2;
    assert_int_equal(graft_conv2d_geom_init(&g), GRAFT_ERR_INVALID);
    assert_non_null(strstr(graft_errmsg(), "(-2, 1)"));
}

static void test_geom_init_rejects_negative_padding(void **state) {
    (void)state;
    graft_conv2d_geom g = {.n = 1, .c = 1, .h = 8, .w = 8, .oc = 1, .kh = 3, .kw = 3,
                           .sh = 1, .sw = 1, .ph = 0, .pw = -1};
    assert_int_equal(graft_conv2d_geom_init(&g), GRAFT_ERR_INVALID);
    assert_non_null(strstr(graft_errmsg(), "(0, -1)"));
}

static void test_geom_init_rejects_empty_output(void **state) {
    (void)state;
    /* 5x5 kernel on a 3x3 input padded by 0: nothing to slide over */
    graft_conv2d_geom g = {.n = 1, .c = 1, .h = 3, .w = 8, .oc = 1, .kh = 5, .kw = 5,
                           .sh = 1, .sw = 1, .ph = 0, .pw = 0};
    assert_int_equal(graft_conv2d_geom_init(&g), GRAFT_ERR_SHAPE);
    assert_non_null(strstr(graft_errmsg(), "5x5"));
    assert_non_null(strstr(graft_errmsg(), "3x8"));
    assert_int_equal(g.oh, 0);
    assert_int_equal(g.ow, 0);
}

/* ---- reference gradients against finite differences ------------------------ */

/* Which gradient a check looks at. */
enum wrt { WRT_X, WRT_W, WRT_B };

static void gradcheck_all(enum wrt which) {
    for (int i = 0; i < COUNT(gradcheck_geoms); i++) {
        problem p = make_problem(gradcheck_geoms[i], 100 + (uint64_t)i);
        double *dx = zeros(p.nx), *dw = zeros(p.nw), *db = zeros(p.g.oc);
        graft_ref_conv2d_backward(&p.g, p.x, p.w, p.gy, dx, dw, db);
        double err = 0;
        switch (which) {
        case WRT_X: err = tu_gradcheck(p.x, p.nx, dx, loss, &p, FD_STEP); break;
        case WRT_W: err = tu_gradcheck(p.w, p.nw, dw, loss, &p, FD_STEP); break;
        case WRT_B: err = tu_gradcheck(p.b, p.g.oc, db, loss, &p, FD_STEP); break;
        }
        report(which == WRT_X ? "ref dx vs finite diff" : which == WRT_W ? "ref dw vs finite diff"
                                                                           : "ref db vs finite diff",
               i, err);
        if (err > FD_TOL) describe(&p.g);
        assert_true(err <= FD_TOL);
        free(dx);
        free(dw);
        free(db);
        free_problem(&p);
    }
}

static void test_ref_dx_matches_finite_differences(void **state) {
    (void)state;
    gradcheck_all(WRT_X);
}

static void test_ref_dw_matches_finite_differences(void **state) {
    (void)state;
    gradcheck_all(WRT_W);
}

static void test_ref_db_matches_finite_differences(void **state) {
    (void)state;
    gradcheck_all(WRT_B);
}

/* ---- fast path against the reference --------------------------------------- */

/* The fast forward of p into a new float array [n, oc, oh, ow]. */
static float *fast_forward(graft_ctx *ctx, const problem *p, int with_bias) {
    float *x = tu_to_float(p->x, p->nx), *w = tu_to_float(p->w, p->nw);
    float *b = tu_to_float(p->b, p->g.oc);
    float *y = float_filled(p->ny, NAN); /* every element must be written */
    assert_int_equal(graft_conv2d_forward(ctx, &p->g, x, w, with_bias ? b : NULL, y), GRAFT_OK);
    free(x);
    free(w);
    free(b);
    return y;
}

typedef struct fast_grads {
    float *dx, *dw, *db;
} fast_grads;

/* The fast backward of p with dy = p->gy into fresh arrays: dx prefilled with NaN (it
 * must be overwritten), dw and db from zero.  Null where `want_*` is 0. */
static fast_grads fast_backward(graft_ctx *ctx, const problem *p, int want_dx, int want_dw,
                                int want_db) {
    float *x = tu_to_float(p->x, p->nx), *w = tu_to_float(p->w, p->nw);
    float *dy = tu_to_float(p->gy, p->ny);
    fast_grads r = {want_dx ? float_filled(p->nx, NAN) : NULL,
                    want_dw ? float_zeros(p->nw) : NULL, want_db ? float_zeros(p->g.oc) : NULL};
    assert_int_equal(graft_conv2d_backward(ctx, &p->g, x, w, dy, r.dx, r.dw, r.db), GRAFT_OK);
    free(x);
    free(w);
    free(dy);
    return r;
}

static void free_grads(fast_grads *r) {
    free(r->dx);
    free(r->dw);
    free(r->db);
}

static void test_fast_forward_matches_reference(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    for (int i = 0; i < COUNT(fast_geoms); i++) {
        problem p = make_problem(fast_geoms[i], 200 + (uint64_t)i);
        float *y = fast_forward(&ctx, &p, 1);
        graft_ref_conv2d_forward(&p.g, p.x, p.w, p.b, p.y);
        double err = tu_rel_err_fd(y, p.y, p.ny, 1e-6);
        report("fast forward", i, err);
        if (err > FAST_TOL) describe(&p.g);
        assert_true(err <= FAST_TOL);
        free(y);
        free_problem(&p);
    }
    graft_ctx_release(&ctx);
}

static void test_fast_forward_without_bias_matches_reference(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    for (int i = 0; i < COUNT(fast_geoms); i++) {
        problem p = make_problem(fast_geoms[i], 300 + (uint64_t)i);
        float *y = fast_forward(&ctx, &p, 0);
        graft_ref_conv2d_forward(&p.g, p.x, p.w, NULL, p.y);
        double err = tu_rel_err_fd(y, p.y, p.ny, 1e-6);
        report("fast forward, no bias", i, err);
        if (err > FAST_TOL) describe(&p.g);
        assert_true(err <= FAST_TOL);
        free(y);
        free_problem(&p);
    }
    graft_ctx_release(&ctx);
}

static void test_fast_backward_matches_reference(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    for (int i = 0; i < COUNT(fast_geoms); i++) {
        problem p = make_problem(fast_geoms[i], 400 + (uint64_t)i);
        fast_grads f = fast_backward(&ctx, &p, 1, 1, 1);
        double *dx = zeros(p.nx), *dw = zeros(p.nw), *db = zeros(p.g.oc);
        graft_ref_conv2d_backward(&p.g, p.x, p.w, p.gy, dx, dw, db);
        double ex = tu_rel_err_fd(f.dx, dx, p.nx, 1e-6);
        double ew = tu_rel_err_fd(f.dw, dw, p.nw, 1e-6);
        double eb = tu_rel_err_fd(f.db, db, p.g.oc, 1e-6);
        report("fast dx", i, ex);
        report("fast dw", i, ew);
        report("fast db", i, eb);
        if (ex > FAST_TOL || ew > FAST_TOL || eb > FAST_TOL) describe(&p.g);
        assert_true(ex <= FAST_TOL);
        assert_true(ew <= FAST_TOL);
        assert_true(eb <= FAST_TOL);
        free(dx);
        free(dw);
        free(db);
        free_grads(&f);
        free_problem(&p);
    }
    graft_ctx_release(&ctx);
}

/* ---- each kernel against the reference ------------------------------------- */

static int reset_kernel(void **state) {
    (void)state;
    graft_conv2d_set_kernel(GRAFT_CONV2D_AUTO);
    graft_conv2d_wgemm_set_portable(false);
    assert_int_equal(graft_set_num_threads(3), GRAFT_OK);
    return 0;
}

/* Forward (with bias) and all three gradients of every geometry in geoms, with the
 * kernel forced, against the double reference. */
static void check_kernel(graft_conv2d_kernel kernel, const graft_conv2d_geom *geoms, int count, uint64_t seed) {
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    graft_conv2d_set_kernel(kernel);
    for (int i = 0; i < count; i++) {
        problem p = make_problem(geoms[i], seed + (uint64_t)i);
        float *y = fast_forward(&ctx, &p, 1);
        graft_ref_conv2d_forward(&p.g, p.x, p.w, p.b, p.y);
        double ey = tu_rel_err_fd(y, p.y, p.ny, 1e-6);
        fast_grads f = fast_backward(&ctx, &p, 1, 1, 1);
        double *dx = zeros(p.nx), *dw = zeros(p.nw), *db = zeros(p.g.oc);
        graft_ref_conv2d_backward(&p.g, p.x, p.w, p.gy, dx, dw, db);
        double ex = tu_rel_err_fd(f.dx, dx, p.nx, 1e-6);
        double ew = tu_rel_err_fd(f.dw, dw, p.nw, 1e-6);
        double eb = tu_rel_err_fd(f.db, db, p.g.oc, 1e-6);
        static const char *names[][2] = {[GRAFT_CONV2D_GEMM] = {"gemm kernel y", "gemm kernel dx"},
                                         [GRAFT_CONV2D_AVX512] = {"avx512 kernel y", "avx512 kernel dx"},
                                         [GRAFT_CONV2D_WINOGRAD] = {"winograd kernel y", "winograd kernel dx"},
                                         [GRAFT_CONV2D_WINOGRAD4] = {"winograd4 kernel y", "winograd4 kernel dx"},
                                         [GRAFT_CONV2D_WGEMM] = {"wgemm kernel y", "wgemm kernel dx"}};
        report(names[kernel][0], i, ey);
        report(names[kernel][1], i, ex);
        if (ey > FAST_TOL || ex > FAST_TOL || ew > FAST_TOL || eb > FAST_TOL) describe(&p.g);
        assert_true(ey <= FAST_TOL);
        assert_true(ex <= FAST_TOL);
        assert_true(ew <= FAST_TOL);
        assert_true(eb <= FAST_TOL);
        free(y);
        free(dx);
        free(dw);
        free(db);
        free_grads(&f);
        free_problem(&p);
    }
    graft_conv2d_set_kernel(GRAFT_CONV2D_AUTO);
    graft_ctx_release(&ctx);
}

static void test_gemm_kernel_matches_reference(void **state) {
    (void)state;
    check_kernel(GRAFT_CONV2D_GEMM, fast_geoms, COUNT(fast_geoms), 1500);
    check_kernel(GRAFT_CONV2D_GEMM, kernel_geoms, COUNT(kernel_geoms), 1600);
}

static void test_avx512_kernel_matches_reference(void **state) {
    (void)state;
    if (!graft_conv2d_avx512_available()) skip();
    check_kernel(GRAFT_CONV2D_AVX512, fast_geoms, COUNT(fast_geoms), 1700);
    check_kernel(GRAFT_CONV2D_AVX512, kernel_geoms, COUNT(kernel_geoms), 1800);
    /* the same with one thread: the whole range runs as one task */
    assert_int_equal(graft_set_num_threads(1), GRAFT_OK);
    check_kernel(GRAFT_CONV2D_AVX512, kernel_geoms, COUNT(kernel_geoms), 1900);
}

/* Winograd's sums differ from the direct ones by rounding: held to the same bound against
 * the double reference, on its own edge cases and on the shared geometries (where the
 * shape rules it out, the forced setting falls back to the direct kernel).  The input
 * gradient of a 3x3, padding-1 convolution is a forward convolution of that shape, so it
 * runs Winograd as well. */
/* A Winograd kernel on every list of geometries, then its own with one thread; seeds from
 * seed. */
static void check_winograd(graft_conv2d_kernel kernel, uint64_t seed) {
    if (!graft_conv2d_avx512_available()) skip();
    check_kernel(kernel, winograd_geoms, COUNT(winograd_geoms), seed);
    check_kernel(kernel, kernel_geoms, COUNT(kernel_geoms), seed + 100);
    check_kernel(kernel, fast_geoms, COUNT(fast_geoms), seed + 200);
    assert_int_equal(graft_set_num_threads(1), GRAFT_OK);
    check_kernel(kernel, winograd_geoms, COUNT(winograd_geoms), seed + 300);
}

static void test_winograd_kernel_matches_reference(void **state) {
    (void)state;
    check_winograd(GRAFT_CONV2D_WINOGRAD, 2300);
}

/* F(4x4, 3x3) the same way: its larger transform coefficients cost some precision, and
 * these geometries' results stay within the same bound. */
static void test_winograd4_kernel_matches_reference(void **state) {
    (void)state;
    check_winograd(GRAFT_CONV2D_WINOGRAD4, 2700);
}

/* Winograd with BLAS products runs on any CPU: with the AVX2 loops where the CPU has them,
 * and with the portable loops and OpenBLAS (set_portable, on every CPU). */
static void test_wgemm_kernel_matches_reference(void **state) {
    (void)state;
    for (int portable = 0; portable < 2; portable++) {
        graft_conv2d_wgemm_set_portable(portable);
        assert_int_equal(graft_set_num_threads(3), GRAFT_OK);
        check_kernel(GRAFT_CONV2D_WGEMM, winograd_geoms, COUNT(winograd_geoms), 2900 + 500 * (uint64_t)portable);
        check_kernel(GRAFT_CONV2D_WGEMM, kernel_geoms, COUNT(kernel_geoms), 3000 + 500 * (uint64_t)portable);
        check_kernel(GRAFT_CONV2D_WGEMM, fast_geoms, COUNT(fast_geoms), 3100 + 500 * (uint64_t)portable);
        assert_int_equal(graft_set_num_threads(1), GRAFT_OK);
        check_kernel(GRAFT_CONV2D_WGEMM, winograd_geoms, COUNT(winograd_geoms), 3200 + 500 * (uint64_t)portable);
    }
}

static void test_forward_kernel_follows_cpu_and_setting(void **state) {
    (void)state;
    graft_conv2d_geom g = kernel_geoms[0], g5 = kernel_geoms[2]; /* 3x3 pad 1; 5x5 */
    assert_int_equal(graft_conv2d_geom_init(&g), GRAFT_OK);
    assert_int_equal(graft_conv2d_geom_init(&g5), GRAFT_OK);
    int avx = graft_conv2d_avx512_available();
    /* without AVX-512: Winograd with BLAS products where the shape allows it */
    graft_conv2d_kernel best = avx ? GRAFT_CONV2D_WINOGRAD : GRAFT_CONV2D_WGEMM;
    graft_conv2d_kernel direct = avx ? GRAFT_CONV2D_AVX512 : GRAFT_CONV2D_GEMM;
    assert_int_equal(graft_conv2d_forward_kernel(&g), best);
    assert_int_equal(graft_conv2d_forward_kernel(&g5), direct);
    graft_conv2d_set_kernel(GRAFT_CONV2D_GEMM);
    assert_int_equal(graft_conv2d_forward_kernel(&g), GRAFT_CONV2D_GEMM);
    graft_conv2d_set_kernel(GRAFT_CONV2D_AVX512);
    assert_int_equal(graft_conv2d_forward_kernel(&g), direct);
    graft_conv2d_set_kernel(GRAFT_CONV2D_WINOGRAD);
    assert_int_equal(graft_conv2d_forward_kernel(&g), best);
    assert_int_equal(graft_conv2d_forward_kernel(&g5), direct);
    /* 3x3 with padding 1, but its transformed weights (16 x 1104 x 1100 floats) would pass
     * the workspace bound: the direct kernel */
    graft_conv2d_geom big = {.n = 1, .c = 1100, .h = 2, .w = 2, .oc = 1100, .kh = 3, .kw = 3,
                             .sh = 1, .sw = 1, .ph = 1, .pw = 1};
    assert_int_equal(graft_conv2d_geom_init(&big), GRAFT_OK);
    assert_int_equal(graft_conv2d_forward_kernel(&big), direct);
    big.c = big.oc = 1000; /* 16 x 1000 x 1000: within it */
    assert_int_equal(graft_conv2d_forward_kernel(&big), best);

    /* F(4x4, 3x3) where it measured faster: maps of 8 x 8 and more that 4x4 tiles cover
     * with little waste, and 128 channels on one side */
    graft_conv2d_kernel four = avx ? GRAFT_CONV2D_WINOGRAD4 : GRAFT_CONV2D_WGEMM;
    graft_conv2d_geom v = {.n = 2, .c = 64, .h = 16, .w = 16, .oc = 128, .kh = 3, .kw = 3,
                           .sh = 1, .sw = 1, .ph = 1, .pw = 1};
    graft_conv2d_set_kernel(GRAFT_CONV2D_AUTO);
    assert_int_equal(graft_conv2d_geom_init(&v), GRAFT_OK);
    assert_int_equal(graft_conv2d_forward_kernel(&v), four);
    v.oc = 64; /* 64 -> 64 */
    assert_int_equal(graft_conv2d_geom_init(&v), GRAFT_OK);
    assert_int_equal(graft_conv2d_forward_kernel(&v), best);
    v.c = v.oc = 256, v.h = v.w = 14; /* 14 x 14: a quarter of the tiles' outputs wasted */
    assert_int_equal(graft_conv2d_geom_init(&v), GRAFT_OK);
    assert_int_equal(graft_conv2d_forward_kernel(&v), best);
    v.h = v.w = 4; /* one tile per image */
    assert_int_equal(graft_conv2d_geom_init(&v), GRAFT_OK);
    assert_int_equal(graft_conv2d_forward_kernel(&v), best);
    v.h = v.w = 8;
    assert_int_equal(graft_conv2d_geom_init(&v), GRAFT_OK);
    assert_int_equal(graft_conv2d_forward_kernel(&v), four);
    graft_conv2d_set_kernel(GRAFT_CONV2D_WINOGRAD); /* forced: F(2x2, 3x3) */
    assert_int_equal(graft_conv2d_forward_kernel(&v), best);
    graft_conv2d_set_kernel(GRAFT_CONV2D_WINOGRAD4); /* forced: wherever the shape allows */
    assert_int_equal(graft_conv2d_forward_kernel(&g), four);
    assert_int_equal(graft_conv2d_forward_kernel(&g5), direct);

    /* WGEMM forced runs wherever the shape allows it, on every CPU; else GEMM */
    graft_conv2d_set_kernel(GRAFT_CONV2D_WGEMM);
    assert_int_equal(graft_conv2d_forward_kernel(&g), GRAFT_CONV2D_WGEMM);
    assert_int_equal(graft_conv2d_forward_kernel(&g5), GRAFT_CONV2D_GEMM);
    /* by itself, without AVX-512, on fewer than 16 input channels (VGG's first layer) only
     * where the AVX2 transforms run and the map's rows of tiles are whole vectors */
    graft_conv2d_geom first = {.n = 2, .c = 3, .h = 32, .w = 32, .oc = 64, .kh = 3, .kw = 3,
                               .sh = 1, .sw = 1, .ph = 1, .pw = 1};
    assert_int_equal(graft_conv2d_geom_init(&first), GRAFT_OK);
    assert_int_equal(graft_conv2d_forward_kernel(&first), GRAFT_CONV2D_WGEMM);
    graft_conv2d_set_kernel(GRAFT_CONV2D_AUTO);
    graft_conv2d_kernel small_c = avx ? GRAFT_CONV2D_WINOGRAD : graft_cpu_avx2() ? GRAFT_CONV2D_WGEMM : GRAFT_CONV2D_GEMM;
    assert_int_equal(graft_conv2d_forward_kernel(&first), small_c);
    first.h = first.w = 14; /* rows of 7 tiles */
    assert_int_equal(graft_conv2d_geom_init(&first), GRAFT_OK);
    assert_int_equal(graft_conv2d_forward_kernel(&first), avx ? GRAFT_CONV2D_WINOGRAD : GRAFT_CONV2D_GEMM);
    first.c = 16;
    assert_int_equal(graft_conv2d_forward_kernel(&first), avx ? GRAFT_CONV2D_WINOGRAD : GRAFT_CONV2D_WGEMM);
}

/* The AVX-512 kernels (direct and Winograd) split outputs between threads, never a sum:
 * every output is the same float sum in the same order whatever the thread count. */
static void check_threads(graft_conv2d_kernel kernel, const graft_conv2d_geom *geoms, int count, uint64_t seed) {
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    graft_conv2d_set_kernel(kernel);
    for (int i = 0; i < count; i++) {
        problem p = make_problem(geoms[i], seed + (uint64_t)i);
        assert_int_equal(graft_set_num_threads(1), GRAFT_OK);
        float *y1 = fast_forward(&ctx, &p, 1);
        fast_grads g1 = fast_backward(&ctx, &p, 1, 0, 0);
        assert_int_equal(graft_set_num_threads(3), GRAFT_OK);
        float *y3 = fast_forward(&ctx, &p, 1);
        fast_grads g3 = fast_backward(&ctx, &p, 1, 0, 0);
        assert_memory_equal(y3, y1, (size_t)p.ny * sizeof(float));
        assert_memory_equal(g3.dx, g1.dx, (size_t)p.nx * sizeof(float));
        free(y1);
        free(y3);
        free_grads(&g1);
        free_grads(&g3);
        free_problem(&p);
    }
    graft_conv2d_set_kernel(GRAFT_CONV2D_AUTO);
    graft_ctx_release(&ctx);
}

/* A check over the AVX-512 kernels and both lists of geometries, seeds from seed. */
typedef void (*kernel_check)(graft_conv2d_kernel kernel, const graft_conv2d_geom *geoms, int count, uint64_t seed);

static void check_avx512_kernels(kernel_check check, uint64_t seed) {
    if (!graft_conv2d_avx512_available()) skip();
    check(GRAFT_CONV2D_AVX512, kernel_geoms, COUNT(kernel_geoms), seed);
    check(GRAFT_CONV2D_WINOGRAD, kernel_geoms, COUNT(kernel_geoms), seed + 50);
    check(GRAFT_CONV2D_WINOGRAD, winograd_geoms, COUNT(winograd_geoms), seed + 70);
    check(GRAFT_CONV2D_WINOGRAD4, kernel_geoms, COUNT(kernel_geoms), seed + 80);
    check(GRAFT_CONV2D_WINOGRAD4, winograd_geoms, COUNT(winograd_geoms), seed + 90);
}

static void test_avx512_results_do_not_depend_on_threads(void **state) {
    (void)state;
    check_avx512_kernels(check_threads, 2000);
}

/* WGEMM on the geometries of both lists it runs (the rest take the GEMM kernel, whose
 * BLAS sums may depend on the split): with the AVX2 loops where the CPU has them, and with
 * the portable loops too when asked. */
static void check_wgemm_kernels(kernel_check check, uint64_t seed, bool portable_too) {
    graft_conv2d_geom runs[COUNT(kernel_geoms) + COUNT(winograd_geoms)];
    int count = 0;
    for (int i = 0; i < COUNT(kernel_geoms) + COUNT(winograd_geoms); i++) {
        graft_conv2d_geom g = i < COUNT(kernel_geoms) ? kernel_geoms[i] : winograd_geoms[i - COUNT(kernel_geoms)];
        assert_int_equal(graft_conv2d_geom_init(&g), GRAFT_OK);
        if (graft_conv2d_wgemm_fits(&g)) runs[count++] = g;
    }
    assert_true(count >= 10);
    for (int portable = 0; portable < (portable_too ? 2 : 1); portable++) {
        graft_conv2d_wgemm_set_portable(portable);
        check(GRAFT_CONV2D_WGEMM, runs, count, seed + 100 * (uint64_t)portable);
    }
    graft_conv2d_wgemm_set_portable(false);
}

static void test_wgemm_results_do_not_depend_on_threads(void **state) {
    (void)state;
    check_wgemm_kernels(check_threads, 4000, true);
}

/* The AVX-512 kernels give an image the same outputs whatever the batch around it (the
 * feature cache runs its trunk on larger batches than training does): each image of a
 * batch against the same image run alone, bit for bit. */
static void check_batch(graft_conv2d_kernel kernel, const graft_conv2d_geom *geoms, int count, uint64_t seed) {
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    graft_conv2d_set_kernel(kernel);
    for (int i = 0; i < count; i++) {
        problem p = make_problem(geoms[i], seed + (uint64_t)i);
        if (p.g.n < 2) {
            free_problem(&p);
            continue;
        }
        float *y = fast_forward(&ctx, &p, 1);
        graft_conv2d_geom one = p.g;
        one.n = 1;
        assert_int_equal(graft_conv2d_geom_init(&one), GRAFT_OK);
        int64_t in_image = p.nx / p.g.n, out_image = p.ny / p.g.n;
        for (int64_t k = 0; k < p.g.n; k++) {
            problem q = p; /* image k alone: views of p's arrays */
            q.g = one;
            q.nx = in_image;
            q.ny = out_image;
            q.x = p.x + k * in_image;
            float *yk = fast_forward(&ctx, &q, 1);
            assert_memory_equal(yk, y + k * out_image, (size_t)out_image * sizeof(float));
            free(yk);
        }
        free(y);
        free_problem(&p);
    }
    graft_conv2d_set_kernel(GRAFT_CONV2D_AUTO);
    graft_ctx_release(&ctx);
}

static void test_avx512_results_do_not_depend_on_the_batch(void **state) {
    (void)state;
    check_avx512_kernels(check_batch, 2100);
}

/* The batch only where the CPU runs the AVX2 loops: BLAS's sum for a tile may depend on
 * where the tile falls in the call (measured with OpenBLAS), so the portable path gives an
 * image's outputs to within rounding of what it gives the image alone, like the GEMM
 * kernel. */
static void test_wgemm_results_do_not_depend_on_the_batch(void **state) {
    (void)state;
    if (!graft_cpu_avx2()) skip();
    check_wgemm_kernels(check_batch, 4200, false);
}

/* The fused ReLU (g.relu) gives exactly the plain forward followed by graft_relu_forward,
 * with either kernel: NaN passes, negative values and -0 become +0. */
static void check_fused_relu(graft_conv2d_kernel kernel, uint64_t seed) {
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    graft_conv2d_set_kernel(kernel);
    for (int i = 0; i < COUNT(kernel_geoms); i++) {
        problem p = make_problem(kernel_geoms[i], seed + (uint64_t)i);
        p.x[0] = NAN; /* a NaN reaches the outputs whose windows cover the first pixel */
        p.b[0] = -0.0;
        for (int64_t k = 0; k < p.nw / p.g.oc; k++) p.w[k] = 0.0; /* channel 0: -0 + 0 products */
        float *plain = fast_forward(&ctx, &p, 1);
        graft_relu_forward(p.ny, plain, plain);
        p.g.relu = true;
        float *fused = fast_forward(&ctx, &p, 1);
        assert_memory_equal(fused, plain, (size_t)p.ny * sizeof(float));
        free(plain);
        free(fused);
        free_problem(&p);
    }
    graft_ctx_release(&ctx);
}

static void test_fused_relu_matches_relu_after(void **state) {
    (void)state;
    check_fused_relu(GRAFT_CONV2D_GEMM, 2100);
    if (graft_conv2d_avx512_available()) check_fused_relu(GRAFT_CONV2D_AVX512, 2200);
    if (graft_conv2d_avx512_available()) check_fused_relu(GRAFT_CONV2D_WINOGRAD, 2250);
    if (graft_conv2d_avx512_available()) check_fused_relu(GRAFT_CONV2D_WINOGRAD4, 2260);
    check_fused_relu(GRAFT_CONV2D_WGEMM, 2270);
    graft_conv2d_wgemm_set_portable(true);
    check_fused_relu(GRAFT_CONV2D_WGEMM, 2280);
}

/* ---- gradient conventions --------------------------------------------------- */

static const graft_conv2d_geom convention_geom = {.n = 3, .c = 4, .h = 6, .w = 7, .oc = 5,
                                                  .kh = 3, .kw = 3, .sh = 2, .sw = 1,
                                                  .ph = 1, .pw = 1};

static void test_fast_backward_accumulates_dw_and_db(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    problem p = make_problem(convention_geom, 500);
    fast_grads once = fast_backward(&ctx, &p, 1, 1, 1);
    float *x = tu_to_float(p.x, p.nx), *w = tu_to_float(p.w, p.nw), *dy = tu_to_float(p.gy, p.ny);
    float *dx = float_zeros(p.nx), *dw = float_zeros(p.nw), *db = float_zeros(p.g.oc);
    for (int call = 0; call < 2; call++)
        assert_int_equal(graft_conv2d_backward(&ctx, &p.g, x, w, dy, dx, dw, db), GRAFT_OK);
    for (int64_t i = 0; i < p.nw; i++) once.dw[i] *= 2;
    for (int64_t i = 0; i < p.g.oc; i++) once.db[i] *= 2;
    assert_true(rel_err_ff(dw, once.dw, p.nw, 1e-6) <= RESCHEDULE_TOL);
    assert_true(rel_err_ff(db, once.db, p.g.oc, 1e-6) <= RESCHEDULE_TOL);
    free(x);
    free(w);
    free(dy);
    free(dx);
    free(dw);
    free(db);
    free_grads(&once);
    free_problem(&p);
    graft_ctx_release(&ctx);
}

static void test_fast_backward_overwrites_dx(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    problem p = make_problem(convention_geom, 600);
    fast_grads once = fast_backward(&ctx, &p, 1, 0, 0); /* from a NaN-filled dx */
    float *x = tu_to_float(p.x, p.nx), *w = tu_to_float(p.w, p.nw), *dy = tu_to_float(p.gy, p.ny);
    float *dx = float_filled(p.nx, 12345.0f);
    for (int call = 0; call < 2; call++)
        assert_int_equal(graft_conv2d_backward(&ctx, &p.g, x, w, dy, dx, NULL, NULL), GRAFT_OK);
    assert_memory_equal(dx, once.dx, (size_t)p.nx * sizeof(float));
    free(x);
    free(w);
    free(dy);
    free(dx);
    free_grads(&once);
    free_problem(&p);
    graft_ctx_release(&ctx);
}

static void test_ref_backward_accumulates_dw_db_and_overwrites_dx(void **state) {
    (void)state;
    problem p = make_problem(convention_geom, 700);
    double *dx1 = zeros(p.nx), *dw1 = zeros(p.nw), *db1 = zeros(p.g.oc);
    graft_ref_conv2d_backward(&p.g, p.x, p.w, p.gy, dx1, dw1, db1);
    double *dx2 = zeros(p.nx), *dw2 = zeros(p.nw), *db2 = zeros(p.g.oc);
    for (int64_t i = 0; i < p.nx; i++) dx2[i] = 1e30;
    for (int call = 0; call < 2; call++)
        graft_ref_conv2d_backward(&p.g, p.x, p.w, p.gy, dx2, dw2, db2);
    for (int64_t i = 0; i < p.nw; i++) dw1[i] *= 2;
    for (int64_t i = 0; i < p.g.oc; i++) db1[i] *= 2;
    assert_true(tu_rel_err_dd(dw2, dw1, p.nw, 1e-12) <= 1e-14);
    assert_true(tu_rel_err_dd(db2, db1, p.g.oc, 1e-12) <= 1e-14);
    assert_memory_equal(dx2, dx1, (size_t)p.nx * sizeof(double));
    free(dx1);
    free(dw1);
    free(db1);
    free(dx2);
    free(dw2);
    free(db2);
    free_problem(&p);
}

static void test_fast_backward_null_dx_still_gives_dw_and_db(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    problem p = make_problem(convention_geom, 800);
    fast_grads all = fast_backward(&ctx, &p, 1, 1, 1);
    fast_grads some = fast_backward(&ctx, &p, 0, 1, 1);
    assert_memory_equal(some.dw, all.dw, (size_t)p.nw * sizeof(float));
    assert_memory_equal(some.db, all.db, (size_t)p.g.oc * sizeof(float));
    free_grads(&all);
    free_grads(&some);
    free_problem(&p);
    graft_ctx_release(&ctx);
}

static void test_fast_backward_null_dw_db_still_gives_dx(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    problem p = make_problem(convention_geom, 900);
    fast_grads all = fast_backward(&ctx, &p, 1, 1, 1);
    fast_grads no_w = fast_backward(&ctx, &p, 1, 0, 1);
    fast_grads no_b = fast_backward(&ctx, &p, 1, 1, 0);
    fast_grads only_x = fast_backward(&ctx, &p, 1, 0, 0);
    size_t xbytes = (size_t)p.nx * sizeof(float);
    assert_memory_equal(no_w.dx, all.dx, xbytes);
    assert_memory_equal(no_w.db, all.db, (size_t)p.g.oc * sizeof(float));
    assert_memory_equal(no_b.dx, all.dx, xbytes);
    assert_memory_equal(no_b.dw, all.dw, (size_t)p.nw * sizeof(float));
    assert_memory_equal(only_x.dx, all.dx, xbytes);
    free_grads(&all);
    free_grads(&no_w);
    free_grads(&no_b);
    free_grads(&only_x);
    free_problem(&p);
    graft_ctx_release(&ctx);
}

static void test_fast_backward_all_null_touches_nothing(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    problem p = make_problem(convention_geom, 1000);
    float *x = tu_to_float(p.x, p.nx), *w = tu_to_float(p.w, p.nw), *dy = tu_to_float(p.gy, p.ny);
    assert_int_equal(graft_conv2d_backward(&ctx, &p.g, x, w, dy, NULL, NULL, NULL), GRAFT_OK);
    assert_int_equal(ctx.workspace_floats, 0); /* no scratch was even asked for */
    free(x);
    free(w);
    free(dy);
    free_problem(&p);
    graft_ctx_release(&ctx);
}

static void test_ref_backward_null_arguments_skip(void **state) {
    (void)state;
    problem p = make_problem(convention_geom, 1100);
    double *dx = zeros(p.nx), *dw = zeros(p.nw), *db = zeros(p.g.oc);
    graft_ref_conv2d_backward(&p.g, p.x, p.w, p.gy, dx, dw, db);
    double *dx2 = zeros(p.nx), *dw2 = zeros(p.nw), *db2 = zeros(p.g.oc);
    graft_ref_conv2d_backward(&p.g, p.x, p.w, p.gy, dx2, NULL, NULL);
    graft_ref_conv2d_backward(&p.g, p.x, p.w, p.gy, NULL, dw2, NULL);
    graft_ref_conv2d_backward(&p.g, p.x, p.w, p.gy, NULL, NULL, db2);
    graft_ref_conv2d_backward(&p.g, p.x, p.w, p.gy, NULL, NULL, NULL);
    assert_memory_equal(dx2, dx, (size_t)p.nx * sizeof(double));
    assert_memory_equal(dw2, dw, (size_t)p.nw * sizeof(double));
    assert_memory_equal(db2, db, (size_t)p.g.oc * sizeof(double));
    free(dx);
    free(dw);
    free(db);
    free(dx2);
    free(dw2);
    free(db2);
    free_problem(&p);
}

/* ---- chunking --------------------------------------------------------------- */

/* Floats one image takes in the workspace: col [K, P] plus the GEMM's [oc, P]. */
static size_t floats_per_image(const graft_conv2d_geom *g) {
    return (size_t)((g->c * g->kh * g->kw + g->oc) * g->oh * g->ow);
}

static void test_chunk_images_follows_workspace_limit(void **state) {
    (void)state;
    graft_conv2d_geom g = {.n = 9, .c = 4, .h = 5, .w = 5, .oc = 3, .kh = 3, .kw = 3,
                           .sh = 1, .sw = 1, .ph = 1, .pw = 1};
    assert_int_equal(graft_conv2d_geom_init(&g), GRAFT_OK);
    size_t per = floats_per_image(&g);
    assert_int_equal(graft_conv2d_chunk_images(&g), 9); /* the default fits all */
    graft_conv2d_set_workspace_limit(8 * per);
    assert_int_equal(graft_conv2d_chunk_images(&g), 5); /* 5 + 4, not 8 + 1 */
    graft_conv2d_set_workspace_limit(3 * per + per / 2);
    assert_int_equal(graft_conv2d_chunk_images(&g), 3);
    graft_conv2d_set_workspace_limit(per - 1);
    assert_int_equal(graft_conv2d_chunk_images(&g), 1); /* never fewer than one image */
    graft_conv2d_set_workspace_limit(0);
    assert_int_equal(graft_conv2d_chunk_images(&g), 9);
}

/* Geometries for the chunk tests: n = 5 so a limit of two images gives chunks of
 * 2, 2 and 1 (the last one takes the single-image path). */
static const graft_conv2d_geom chunk_geoms[] = {
    {.n = 5, .c = 3, .h = 6, .w = 5, .oc = 4, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
    {.n = 5, .c = 6, .h = 4, .w = 3, .oc = 7, .kh = 1, .kw = 1, .sh = 1, .sw = 1, .ph = 0, .pw = 0},
    {.n = 5, .c = 3, .h = 9, .w = 8, .oc = 4, .kh = 7, .kw = 7, .sh = 2, .sw = 2, .ph = 3, .pw = 3},
    {.n = 5, .c = 16, .h = 2, .w = 2, .oc = 8, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1},
};

/* Images per chunk forced in turn: one at a time, two (2 + 2 + 1), all at once. */
static const int64_t chunk_sizes[] = {1, 2, 5};

static void test_multi_chunk_forward_matches_single_chunk(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    for (int i = 0; i < COUNT(chunk_geoms); i++) {
        problem p = make_problem(chunk_geoms[i], 1200 + (uint64_t)i);
        graft_conv2d_set_workspace_limit(0);
        assert_int_equal(graft_conv2d_chunk_images(&p.g), p.g.n);
        float *whole = fast_forward(&ctx, &p, 1);
        for (int s = 0; s < COUNT(chunk_sizes); s++) {
            graft_conv2d_set_workspace_limit((size_t)chunk_sizes[s] * floats_per_image(&p.g));
            assert_int_equal(graft_conv2d_chunk_images(&p.g), chunk_sizes[s]);
            float *chunked = fast_forward(&ctx, &p, 1);
            double err = rel_err_ff(chunked, whole, p.ny, 1e-6);
            report("chunked forward", i, err);
            assert_true(err <= RESCHEDULE_TOL);
            free(chunked);
        }
        graft_conv2d_set_workspace_limit(0);
        free(whole);
        free_problem(&p);
    }
    graft_ctx_release(&ctx);
}

static void test_multi_chunk_backward_matches_single_chunk(void **state) {
    (void)state;
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    for (int i = 0; i < COUNT(chunk_geoms); i++) {
        problem p = make_problem(chunk_geoms[i], 1300 + (uint64_t)i);
        graft_conv2d_set_workspace_limit(0);
        fast_grads whole = fast_backward(&ctx, &p, 1, 1, 1);
        for (int s = 0; s < COUNT(chunk_sizes); s++) {
            graft_conv2d_set_workspace_limit((size_t)chunk_sizes[s] * floats_per_image(&p.g));
            assert_int_equal(graft_conv2d_chunk_images(&p.g), chunk_sizes[s]);
            fast_grads chunked = fast_backward(&ctx, &p, 1, 1, 1);
            double ex = rel_err_ff(chunked.dx, whole.dx, p.nx, 1e-6);
            double ew = rel_err_ff(chunked.dw, whole.dw, p.nw, 1e-6);
            double eb = rel_err_ff(chunked.db, whole.db, p.g.oc, 1e-6);
            report("chunked dx", i, ex);
            report("chunked dw", i, ew);
            assert_true(ex <= RESCHEDULE_TOL);
            assert_true(ew <= RESCHEDULE_TOL);
            assert_true(eb <= RESCHEDULE_TOL);
            /* dw without dx takes its own path through the chunks */
            fast_grads dw_only = fast_backward(&ctx, &p, 0, 1, 0);
            assert_memory_equal(dw_only.dw, chunked.dw, (size_t)p.nw * sizeof(float));
            free_grads(&dw_only);
            free_grads(&chunked);
        }
        graft_conv2d_set_workspace_limit(0);
        free_grads(&whole);
        free_problem(&p);
    }
    graft_ctx_release(&ctx);
}

/* Kept transforms (graft_conv2d_forward_held) give the plain forward's bits: on the first
 * call, from the kept transform on later calls with other inputs, after a switch to
 * another layer's weights and sizes (the transform redone), and with fresh weights in a
 * fresh holder; for every kernel (those without a transform to keep run as usual). */
static void check_held(graft_conv2d_kernel kernel, uint64_t seed) {
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    graft_conv2d_set_kernel(kernel);
    graft_conv2d_held *held = NULL;
    for (int i = 0; i < COUNT(winograd_geoms); i++) {
        problem p = make_problem(winograd_geoms[i], seed + (uint64_t)i);
        p.g.relu = i % 2;
        float *w = tu_to_float(p.w, p.nw), *b = tu_to_float(p.b, p.g.oc);
        for (int call = 0; call < 3; call++) {
            graft_rng r;
            graft_rng_seed(&r, seed * 7 + (uint64_t)(i * 3 + call));
            tu_fill(&r, p.x, p.nx, -1, 1);
            float *x = tu_to_float(p.x, p.nx), *want = float_filled(p.ny, NAN), *got = float_filled(p.ny, NAN);
            if (call == 2) { /* other weights: what was held is let go first */
                for (int64_t k = 0; k < p.nw; k++) w[k] *= -0.5f;
                graft_conv2d_held_free(held);
                held = NULL;
            }
            assert_int_equal(graft_conv2d_forward(&ctx, &p.g, x, w, b, want), GRAFT_OK);
            assert_int_equal(graft_conv2d_forward_held(&ctx, &p.g, x, w, b, got, &held), GRAFT_OK);
            assert_memory_equal(got, want, (size_t)p.ny * sizeof(float));
            free(x), free(want), free(got);
        }
        free(w), free(b);
        free_problem(&p);
    }
    graft_conv2d_held_free(held);
    graft_conv2d_set_kernel(GRAFT_CONV2D_AUTO);
    graft_ctx_release(&ctx);
}

static void test_held_forward_gives_the_same_bits(void **state) {
    (void)state;
    check_held(GRAFT_CONV2D_AUTO, 3100);
    check_held(GRAFT_CONV2D_GEMM, 3200);
    check_held(GRAFT_CONV2D_WGEMM, 3250);
    graft_conv2d_wgemm_set_portable(true);
    check_held(GRAFT_CONV2D_WGEMM, 3260);
    graft_conv2d_wgemm_set_portable(false);
    if (!graft_conv2d_avx512_available()) return;
    check_held(GRAFT_CONV2D_WINOGRAD, 3300);
    check_held(GRAFT_CONV2D_WINOGRAD4, 3400);
    assert_int_equal(graft_set_num_threads(1), GRAFT_OK);
    check_held(GRAFT_CONV2D_WINOGRAD4, 3500);
}

int main(void) {
    /* More threads than this machine may have cores, so the parallel loops always
     * split (and split unevenly) even on a one-core runner. */
    graft_set_num_threads(3);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_geom_init_computes_output_size),
        cmocka_unit_test(test_geom_init_rejects_nonpositive_sizes),
        cmocka_unit_test(test_geom_init_rejects_nonpositive_stride),
        cmocka_unit_test(test_geom_init_rejects_negative_padding),
        cmocka_unit_test(test_geom_init_rejects_empty_output),
        cmocka_unit_test(test_ref_dx_matches_finite_differences),
        cmocka_unit_test(test_ref_dw_matches_finite_differences),
        cmocka_unit_test(test_ref_db_matches_finite_differences),
        cmocka_unit_test(test_fast_forward_matches_reference),
        cmocka_unit_test(test_fast_forward_without_bias_matches_reference),
        cmocka_unit_test(test_fast_backward_matches_reference),
        cmocka_unit_test_teardown(test_gemm_kernel_matches_reference, reset_kernel),
        cmocka_unit_test_teardown(test_avx512_kernel_matches_reference, reset_kernel),
        cmocka_unit_test_teardown(test_winograd_kernel_matches_reference, reset_kernel),
        cmocka_unit_test_teardown(test_winograd4_kernel_matches_reference, reset_kernel),
        cmocka_unit_test_teardown(test_wgemm_kernel_matches_reference, reset_kernel),
        cmocka_unit_test_teardown(test_forward_kernel_follows_cpu_and_setting, reset_kernel),
        cmocka_unit_test_teardown(test_avx512_results_do_not_depend_on_threads, reset_kernel),
        cmocka_unit_test_teardown(test_avx512_results_do_not_depend_on_the_batch, reset_kernel),
        cmocka_unit_test_teardown(test_wgemm_results_do_not_depend_on_threads, reset_kernel),
        cmocka_unit_test_teardown(test_wgemm_results_do_not_depend_on_the_batch, reset_kernel),
        cmocka_unit_test_teardown(test_fused_relu_matches_relu_after, reset_kernel),
        cmocka_unit_test_teardown(test_held_forward_gives_the_same_bits, reset_kernel),
        cmocka_unit_test(test_fast_backward_accumulates_dw_and_db),
        cmocka_unit_test(test_fast_backward_overwrites_dx),
        cmocka_unit_test(test_ref_backward_accumulates_dw_db_and_overwrites_dx),
        cmocka_unit_test(test_fast_backward_null_dx_still_gives_dw_and_db),
        cmocka_unit_test(test_fast_backward_null_dw_db_still_gives_dx),
        cmocka_unit_test(test_fast_backward_all_null_touches_nothing),
        cmocka_unit_test(test_ref_backward_null_arguments_skip),
        cmocka_unit_test_teardown(test_chunk_images_follows_workspace_limit,
                                  reset_workspace_limit),
        cmocka_unit_test_teardown(test_multi_chunk_forward_matches_single_chunk,
                                  reset_workspace_limit),
        cmocka_unit_test_teardown(test_multi_chunk_backward_matches_single_chunk,
                                  reset_workspace_limit),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    graft_threads_shutdown();
    return failed;
}
