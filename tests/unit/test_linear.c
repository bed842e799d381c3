/* test_linear.c — Linear: the reference's gradients against finite differences, the
 * fast path against the reference, the gradient conventions, and the folding of
 * replicated inputs into the weight. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/ctx.h"
#include "core/rng.h"
#include "core/threads.h"
#include "graft/graft.h"
#include "ops/linear_internal.h"
#include "ops/ops.h"
#include "testutil.h"

/* Linear is linear in each argument: central differences are exact but for rounding. */
#define FD_STEP 1e-6
#define FD_TOL 1e-7
/* Fast float path against the double reference, on float-representable inputs. */
#define FAST_TOL 1e-5
/* The same float sums scheduled differently (one call vs two). */
#define RESCHEDULE_TOL 1e-6

typedef struct shape {
    int64_t n, in, out;
} shape;

static const shape gradcheck_shapes[] = {
    {1, 1, 1}, {1, 5, 3}, {4, 7, 2}, {3, 2, 9}, {5, 6, 6},
};

static const shape fast_shapes[] = {
    {1, 1, 1},     {1, 5, 3},      {4, 7, 2},    {3, 2, 9},
    {64, 512, 10}, /* the recipe's replaced head on VGG features at 32x32 input */
    {16, 1000, 37}, {7, 33, 65},   {2, 4096, 16},
    /* large enough that graft_sgemm splits them over the pool: by columns of y (more
     * outputs than rows), and by rows (more rows than outputs; dw then by columns) */
    {64, 512, 640}, {300, 96, 48},
    /* the AVX-512 forward's edges: chunks of 64 rows with a short last one, a last
     * tile of fewer than 6 outputs, panels of 256 inputs with a short last one */
    {65, 300, 13}, {130, 257, 70}, {64, 4096, 64},
};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Scratch for the fast paths, as a model's context lends it. */
static graft_ctx ctx;

typedef struct problem {
    shape s;
    double *x, *w, *b; /* x [n, in], w [out, in], b [out] */
    double *gy;        /* the upstream gradient [n, out] defining L = sum(y * gy) */
    double *y;         /* scratch for the loss */
} problem;

static problem make_problem(shape s, uint64_t seed) {
    problem p = {.s = s};
    p.x = malloc((size_t)(s.n * s.in) * sizeof(double));
    p.w = malloc((size_t)(s.out * s.in) * sizeof(double));
    p.b = malloc((size_t)s.out * sizeof(double));
    p.gy = malloc((size_t)(s.n * s.out) * sizeof(double));
    p.y = malloc((size_t)(s.n * s.out) * sizeof(double));
    graft_rng r;
    graft_rng_seed(&r, seed);
    tu_fill(&r, p.x, s.n * s.in, -1, 1);
    tu_fill(&r, p.w, s.out * s.in, -1, 1);
    tu_fill(&r, p.b, s.out, -1, 1);
    tu_fill(&r, p.gy, s.n * s.out, -1, 1);
    /* so the float path sees exactly what the reference sees */
    tu_round_to_float(p.x, s.n * s.in);
    tu_round_to_float(p.w, s.out * s.in);
    tu_round_to_float(p.b, s.out);
    tu_round_to_float(p.gy, s.n * s.out);
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
    graft_ref_linear_forward(p->s.n, p->s.in, p->s.out, p->x, p->w, p->b, p->y);
    return tu_dot(p->y, p->gy, p->s.n * p->s.out);
}

static double *zeros(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(double)); }

static float *float_zeros(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(float)); }

static float *float_filled(int64_t n, float v) {
    float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof *f);
    for (int64_t i = 0; i < n; i++) f[i] = v;
    return f;
}

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
    if (getenv("GRAFT_TEST_VERBOSE")) print_message("  %-24s shape %d: %.3g\n", what, index, err);
}

/* ---- reference gradients against finite differences ------------------------ */

enum wrt { WRT_X, WRT_W, WRT_B };

static void gradcheck_all(enum wrt which) {
    for (int i = 0; i < COUNT(gradcheck_shapes); i++) {
        shape s = gradcheck_shapes[i];
        problem p = make_problem(s, 100 + (uint64_t)i);
        double *dx = zeros(s.n * s.in), *dw = zeros(s.out * s.in), *db = zeros(s.out);
        graft_ref_linear_backward(s.n, s.in, s.out, p.x, p.w, p.gy, dx, dw, db);
        double err = 0;
        switch (which) {
        case WRT_X: err = tu_gradcheck(p.x, s.n * s.in, dx, loss, &p, FD_STEP); break;
        case WRT_W: err = tu_gradcheck(p.w, s.out * s.in, dw, loss, &p, FD_STEP); break;
        case WRT_B: err = tu_gradcheck(p.b, s.out, db, loss, &p, FD_STEP); break;
        }
        report(which == WRT_X ? "ref dx vs finite diff" : which == WRT_W ? "ref dw vs finite diff"
                                                                           : "ref db vs finite diff",
               i, err);
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

/* Whether the CPU runs the small-batch kernels: AVX-512's, or AVX2's. */
static bool small_batch_kernels_available(void) { return graft_linear_avx512_available() || graft_linear_avx2_available(); }

/* The kernels every fast-path test runs with, in turn. */
static const graft_linear_kernel kernels[] = {GRAFT_LINEAR_AUTO, GRAFT_LINEAR_BLAS, GRAFT_LINEAR_AVX512};
static const char *const kernel_names[] = {"auto", "blas", "avx512"};
#define NKERNELS COUNT(kernels)

/* Selects kernels[k] for the calls that follow; false (and a note) where this CPU
 * cannot run it. */
static bool use_kernel(int k) {
    if (kernels[k] == GRAFT_LINEAR_AVX512 && !graft_linear_avx512_available() && !graft_linear_avx2_available()) {
        print_message("no AVX-512F or AVX2 on this CPU: the small-batch kernels are not exercised\n");
        return false;
    }
    graft_linear_set_kernel(kernels[k]);
    return true;
}

/* ---- fast path against the reference --------------------------------------- */

/* Every shape with each forward kernel (AUTO, BLAS, and AVX-512 where the CPU has it). */
static void check_fast_forward(int with_bias) {
    for (int k = 0; k < NKERNELS; k++) {
        if (!use_kernel(k)) continue;
        for (int i = 0; i < COUNT(fast_shapes); i++) {
            shape s = fast_shapes[i];
            problem p = make_problem(s, 200 + (uint64_t)i);
            float *x = tu_to_float(p.x, s.n * s.in), *w = tu_to_float(p.w, s.out * s.in);
            float *b = tu_to_float(p.b, s.out);
            float *y = float_filled(s.n * s.out, NAN); /* every element must be written */
            graft_linear_forward(&ctx, s.n, s.in, s.out, x, w, with_bias ? b : NULL, y);
            graft_ref_linear_forward(s.n, s.in, s.out, p.x, p.w, with_bias ? p.b : NULL, p.y);
            double err = tu_rel_err_fd(y, p.y, s.n * s.out, 1e-6);
            if (getenv("GRAFT_TEST_VERBOSE"))
                print_message("  %s forward%s, shape %d: %.3g\n", kernel_names[k], with_bias ? "" : ", no bias", i, err);
            assert_true(err <= FAST_TOL);
            free(x);
            free(w);
            free(b);
            free(y);
            free_problem(&p);
        }
    }
    graft_linear_set_kernel(GRAFT_LINEAR_AUTO);
}

static void test_fast_forward_matches_reference(void **state) {
    (void)state;
    check_fast_forward(1);
}

static void test_fast_forward_without_bias_matches_reference(void **state) {
    (void)state;
    check_fast_forward(0);
}

/* The AVX-512 kernels split outputs over threads, never a sum: one thread and three
 * give the same bits (forward, input gradient, weight gradient written whole); so do the
 * AVX2 kernels on a CPU with AVX2 but not AVX-512. */
static void test_avx512_kernels_are_the_same_for_any_thread_count(void **state) {
    (void)state;
    if (!small_batch_kernels_available()) {
        print_message("no AVX-512F or AVX2 on this CPU: skipped\n");
        return;
    }
    graft_linear_set_kernel(GRAFT_LINEAR_AVX512);
    shape s = {70, 600, 131};
    problem p = make_problem(s, 1500);
    float *x = tu_to_float(p.x, s.n * s.in), *w = tu_to_float(p.w, s.out * s.in), *b = tu_to_float(p.b, s.out);
    float *y1 = float_filled(s.n * s.out, NAN), *y3 = float_filled(s.n * s.out, NAN);
    float *dy = tu_to_float(p.gy, s.n * s.out);
    float *dx1 = float_filled(s.n * s.in, NAN), *dx3 = float_filled(s.n * s.in, NAN);
    float *dw1 = float_filled(s.out * s.in, NAN), *dw3 = float_filled(s.out * s.in, NAN);
    assert_int_equal(graft_set_num_threads(1), GRAFT_OK);
    graft_linear_forward(&ctx, s.n, s.in, s.out, x, w, b, y1);
    graft_linear_backward_ex(&ctx, s.n, s.in, s.out, x, w, dy, dx1, dw1, NULL, true, false);
    assert_int_equal(graft_set_num_threads(3), GRAFT_OK);
    graft_linear_forward(&ctx, s.n, s.in, s.out, x, w, b, y3);
    graft_linear_backward_ex(&ctx, s.n, s.in, s.out, x, w, dy, dx3, dw3, NULL, true, false);
    assert_memory_equal(y1, y3, (size_t)(s.n * s.out) * sizeof(float));
    assert_memory_equal(dx1, dx3, (size_t)(s.n * s.in) * sizeof(float));
    assert_memory_equal(dw1, dw3, (size_t)(s.out * s.in) * sizeof(float));
    free(dy), free(dx1), free(dx3), free(dw1), free(dw3);
    graft_linear_set_kernel(GRAFT_LINEAR_AUTO);
    free(x), free(w), free(b), free(y1), free(y3);
    free_problem(&p);
}

/* ---- the weight gradient handed to a sink ---------------------------------- */

/* Collects what graft_linear_weight_grad_to_sink hands over: the pieces copied into got,
 * each element's visits counted, and the calls to begin (and any piece before one). */
typedef struct collector {
    float *got;
    int *visits;
    bool *starts, *hinted; /* where pieces began; where a piece said the next would */
    int64_t count;
    int begins, early_pieces, bad_hints;
    pthread_mutex_t lock;
} collector;

/* c collects pieces of count elements: got all NaN, no visits yet. */
static void collector_init(collector *c, int64_t count) {
    *c = (collector){.got = float_filled(count, NAN), .visits = calloc((size_t)count, sizeof(int)),
                     .starts = calloc((size_t)count, sizeof(bool)), .hinted = calloc((size_t)count, sizeof(bool)),
                     .count = count};
    pthread_mutex_init(&c->lock, NULL);
}

/* Every element visited once, and every prefetch hint the start of a piece. */
static void assert_collected_once(const collector *c) {
    assert_int_equal(c->bad_hints, 0);
    for (int64_t k = 0; k < c->count; k++) {
        assert_int_equal(c->visits[k], 1);
        if (c->hinted[k]) assert_true(c->starts[k]);
    }
}

static void collector_release(collector *c) {
    pthread_mutex_destroy(&c->lock);
    free(c->got), free(c->visits), free(c->starts), free(c->hinted);
}

static void collect_begin(void *user) { ((collector *)user)->begins++; }

static void collect_piece(void *user, int64_t begin, int64_t end, int64_t next, float *g) {
    collector *c = user;
    pthread_mutex_lock(&c->lock);
    if (!c->begins) c->early_pieces++;
    c->starts[begin] = true;
    if (next >= c->count || next < -1) c->bad_hints++;
    else if (next >= 0) c->hinted[next] = true;
    for (int64_t i = begin; i < end; i++) {
        c->got[i] = g[i - begin];
        c->visits[i]++;
    }
    pthread_mutex_unlock(&c->lock);
}

/* Whether this CPU runs a small-batch weight-gradient kernel: AVX-512's, or AVX2's
 * (which forcing GRAFT_LINEAR_AVX512 selects for the weight gradient where the CPU has no
 * AVX-512). */

/* Where it runs (AVX-512 or AVX2, batches of at most 128 into 64 outputs or more) the sink
 * gets every element of dw once, after one begin, with exactly the bits the same kernel
 * stores; elsewhere it declines and calls nothing. */
static void test_weight_grad_to_sink_gives_the_stored_bits(void **state) {
    (void)state;
    const shape shapes[] = {{64, 4096, 64}, {128, 257, 70}, {1, 5, 64}, {7, 33, 65}, {64, 100, 200}, {3, 2, 9}};
    for (int threads = 1; threads <= 3; threads += 2) {
        assert_int_equal(graft_set_num_threads(threads), GRAFT_OK);
        for (int i = 0; i < COUNT(shapes); i++) {
            shape s = shapes[i];
            problem p = make_problem(s, 1600 + (uint64_t)i);
            float *x = tu_to_float(p.x, s.n * s.in), *dy = tu_to_float(p.gy, s.n * s.out);
            float *dw = float_filled(s.out * s.in, NAN);
            collector c;
            collector_init(&c, s.out * s.in);
            graft_grad_sink sink = {collect_begin, collect_piece, &c};
            bool took = graft_linear_weight_grad_to_sink(&ctx, s.n, s.in, s.out, x, dy, &sink);
            bool expected = small_batch_kernels_available() && s.out >= 64 && s.n <= 128;
            assert_int_equal(took, expected);
            if (took) {
                graft_linear_set_kernel(GRAFT_LINEAR_AVX512);
                graft_linear_backward_ex(&ctx, s.n, s.in, s.out, x, NULL, dy, NULL, dw, NULL, true, false);
                graft_linear_set_kernel(GRAFT_LINEAR_AUTO);
                assert_int_equal(c.begins, 1);
                assert_int_equal(c.early_pieces, 0);
                assert_collected_once(&c);
                assert_memory_equal(c.got, dw, (size_t)(s.out * s.in) * sizeof(float));
            } else {
                assert_int_equal(c.begins, 0);
                for (int64_t k = 0; k < s.out * s.in; k++) assert_int_equal(c.visits[k], 0);
            }
            collector_release(&c);
            free(x), free(dy), free(dw);
            free_problem(&p);
        }
    }
}

/* ---- the weight gradient from dy's nonzeros ---------------------------------- */

/* dy as a ReLU and a Dropout leave it: each element kept with probability `keep`, the
 * rest zero, some of them -0; column 0 (a row of dw) all zero and the last all kept. */
static float *masked_dy(const problem *p, double keep, uint64_t seed) {
    shape s = p->s;
    float *dy = tu_to_float(p->gy, s.n * s.out);
    graft_rng r;
    graft_rng_seed(&r, seed);
    for (int64_t m = 0; m < s.n; m++)
        for (int64_t o = 0; o < s.out; o++) {
            float *d = &dy[m * s.out + o];
            bool kept = o == s.out - 1 || (o != 0 && graft_rng_uniform(&r) < keep);
            if (!kept) *d = *d < 0 ? -0.0f : 0.0f;
        }
    return dy;
}

/* dw = dy^T x written whole by the AVX-512 kernel (AVX2's on a CPU without AVX-512), with
 * the nonzeros path allowed or not; returns whether it took that path. */
static bool avx512_dw(const problem *p, const float *x, const float *dy, bool sparse, float *dw) {
    shape s = p->s;
    uint64_t before = graft_linear_sparse_dy_count();
    graft_linear_set_sparse_dy(sparse);
    graft_linear_set_kernel(GRAFT_LINEAR_AVX512);
    graft_linear_backward_ex(&ctx, s.n, s.in, s.out, x, NULL, dy, NULL, dw, NULL, true, false);
    graft_linear_set_kernel(GRAFT_LINEAR_AUTO);
    graft_linear_set_sparse_dy(true);
    return graft_linear_sparse_dy_count() != before;
}

/* The double reference's dw (want_dx false) or dx for p's x and w with dy as given,
 * against got: the relative error. */
static double nonzeros_ref_err(const problem *p, const float *dy, const float *got, bool want_dx) {
    shape s = p->s;
    int64_t count = want_dx ? s.n * s.in : s.out * s.in;
    double *rdy = malloc((size_t)(s.n * s.out) * sizeof(double)), *ref = zeros(count);
    for (int64_t j = 0; j < s.n * s.out; j++) rdy[j] = dy[j];
    graft_ref_linear_backward(s.n, s.in, s.out, p->x, p->w, rdy, want_dx ? ref : NULL, want_dx ? NULL : ref, NULL);
    double err = tu_rel_err_fd(got, ref, count, 1e-6);
    free(rdy), free(ref);
    return err;
}

/* Where dy is mostly zero the weight gradient sums only its nonzeros: the same bits as
 * every term (stored, and handed to a sink), for one thread and three, within FAST_TOL
 * of the double reference; half of dy nonzero or more takes every term. */
static void test_weight_grad_from_nonzeros_gives_the_dense_bits(void **state) {
    (void)state;
    if (!small_batch_kernels_available()) {
        print_message("no AVX-512F or AVX2 on this CPU: skipped\n");
        return;
    }
    /* the last: rows past one block of the AVX2 kernel (48), columns past one (4096) */
    const shape shapes[] = {{64, 4096, 64}, {128, 257, 70}, {7, 33, 65}, {64, 100, 200}, {1, 5, 64}, {3, 1100, 97},
                            {5, 4500, 70}};
    const double keeps[] = {0.25, 0.05, 0.45, 0.9};
    for (int threads = 1; threads <= 3; threads += 2) {
        assert_int_equal(graft_set_num_threads(threads), GRAFT_OK);
        for (int i = 0; i < COUNT(shapes); i++)
            for (int k = 0; k < COUNT(keeps); k++) {
                shape s = shapes[i];
                problem p = make_problem(s, 1700 + (uint64_t)i);
                for (int64_t j = 0; j < s.n * s.in; j += 3) p.x[j] = 0; /* zeros in x change nothing */
                float *x = tu_to_float(p.x, s.n * s.in), *dy = masked_dy(&p, keeps[k], 1800 + (uint64_t)(i * 8 + k));
                float *dense = float_filled(s.out * s.in, NAN), *sparse = float_filled(s.out * s.in, NAN);
                assert_false(avx512_dw(&p, x, dy, false, dense));
                bool took = avx512_dw(&p, x, dy, true, sparse);
                int64_t nonzero = 0;
                for (int64_t j = 0; j < s.n * s.out; j++) nonzero += dy[j] != 0;
                assert_int_equal(took, 2 * nonzero <= s.n * s.out);
                assert_memory_equal(sparse, dense, (size_t)(s.out * s.in) * sizeof(float));

                collector c;
                collector_init(&c, s.out * s.in);
                graft_grad_sink sink = {collect_begin, collect_piece, &c};
                uint64_t before = graft_linear_sparse_dy_count();
                assert_true(graft_linear_weight_grad_to_sink(&ctx, s.n, s.in, s.out, x, dy, &sink));
                assert_int_equal(graft_linear_sparse_dy_count() != before, took);
                assert_collected_once(&c);
                assert_memory_equal(c.got, dense, (size_t)(s.out * s.in) * sizeof(float));

                double err = nonzeros_ref_err(&p, dy, sparse, false);
                report("dw from nonzeros", i, err);
                assert_true(err <= FAST_TOL);
                collector_release(&c);
                free(x), free(dy), free(dense), free(sparse);
                free_problem(&p);
            }
    }
    assert_int_equal(graft_set_num_threads(3), GRAFT_OK);
}


/* dx = dy w by the AVX-512 kernel, with the nonzeros path allowed or not; returns
 * whether it took that path. */
static bool avx512_dx(shape s, const float *w, const float *dy, bool sparse, float *dx) {
    uint64_t before = graft_linear_sparse_dy_count();
    graft_linear_set_sparse_dy(sparse);
    graft_linear_set_kernel(GRAFT_LINEAR_AVX512);
    graft_linear_backward(&ctx, s.n, s.in, s.out, NULL, w, dy, dx, NULL, NULL);
    graft_linear_set_kernel(GRAFT_LINEAR_AUTO);
    graft_linear_set_sparse_dy(true);
    return graft_linear_sparse_dy_count() != before;
}

/* The input gradient the same way: the dense tiles' bits where at most 40% of dy is
 * nonzero (summing the nonzeros), for one thread and three, within FAST_TOL of the
 * double reference; more nonzeros take the tiles. */
static void test_input_grad_from_nonzeros_gives_the_dense_bits(void **state) {
    (void)state;
    if (!small_batch_kernels_available()) {
        print_message("no AVX-512F or AVX2 on this CPU: skipped\n");
        return;
    }
    /* chunks of 64 rows of w with a short last one, blocks of 64 inputs with a short last
       one, odd batches (a sample without a partner) */
    const shape shapes[] = {{64, 4096, 64}, {128, 257, 70}, {7, 33, 65}, {64, 100, 200}, {1, 5, 64}, {3, 1100, 97}};
    const double keeps[] = {0.25, 0.05, 0.35, 0.9};
    for (int threads = 1; threads <= 3; threads += 2) {
        assert_int_equal(graft_set_num_threads(threads), GRAFT_OK);
        for (int i = 0; i < COUNT(shapes); i++)
            for (int k = 0; k < COUNT(keeps); k++) {
                shape s = shapes[i];
                problem p = make_problem(s, 2000 + (uint64_t)i);
                float *w = tu_to_float(p.w, s.out * s.in), *dy = masked_dy(&p, keeps[k], 2100 + (uint64_t)(i * 8 + k));
                float *dense = float_filled(s.n * s.in, NAN), *sparse = float_filled(s.n * s.in, NAN);
                assert_false(avx512_dx(s, w, dy, false, dense));
                bool took = avx512_dx(s, w, dy, true, sparse);
                int64_t nonzero = 0;
                for (int64_t j = 0; j < s.n * s.out; j++) nonzero += dy[j] != 0;
                assert_int_equal(took, nonzero <= (int64_t)(0.4 * (double)(s.n * s.out)));
                assert_memory_equal(sparse, dense, (size_t)(s.n * s.in) * sizeof(float));
                double err = nonzeros_ref_err(&p, dy, sparse, true);
                report("dx from nonzeros", i, err);
                assert_true(err <= FAST_TOL);
                free(w), free(dy), free(dense), free(sparse);
                free_problem(&p);
            }
    }
    assert_int_equal(graft_set_num_threads(3), GRAFT_OK);
}

/* A zero of dy times an infinity or NaN is NaN, not zero.  With one in x (the weight
 * gradient) or in a chunk of w (the input gradient), the sums it enters take every term,
 * and the result has the NaNs of the dense sum: dy [., 0] is all zero, so
 * dw [0, 17] = sum_m 0 * x [m, 17] with x [5, 17] bad, and dx [m, 17] takes 0 * w [0, 17]. */
static void check_nonfinite(bool in_w) {
    if (!small_batch_kernels_available()) {
        print_message("no AVX-512F or AVX2 on this CPU: skipped\n");
        return;
    }
    const float bad[] = {INFINITY, -INFINITY, NAN};
    for (int b = 0; b < COUNT(bad); b++) {
        shape s = {64, 300, in_w ? 200 : 96};
        problem p = make_problem(s, 1900 + (uint64_t)b);
        float *x = tu_to_float(p.x, s.n * s.in), *w = tu_to_float(p.w, s.out * s.in);
        float *dy = masked_dy(&p, 0.25, 1950 + (uint64_t)b);
        int64_t count = in_w ? s.n * s.in : s.out * s.in;
        float *dense = float_filled(count, 0), *sparse = float_filled(count, 0);
        if (in_w) {
            w[0 * s.in + 17] = bad[b];
            assert_false(avx512_dx(s, w, dy, false, dense));
            assert_true(avx512_dx(s, w, dy, true, sparse)); /* the other chunks from the nonzeros */
            assert_true(isnan(dense[3 * s.in + 17]));
        } else {
            x[5 * s.in + 17] = bad[b];
            assert_false(avx512_dw(&p, x, dy, false, dense));
            assert_false(avx512_dw(&p, x, dy, true, sparse));
            assert_true(isnan(dense[0 * s.in + 17]));
        }
        assert_memory_equal(sparse, dense, (size_t)count * sizeof(float));
        free(x), free(w), free(dy), free(dense), free(sparse);
        free_problem(&p);
    }
}

static void test_weight_grad_with_nonfinite_x_sums_every_term(void **state) {
    (void)state;
    check_nonfinite(false);
}

static void test_input_grad_with_nonfinite_w_sums_every_term(void **state) {
    (void)state;
    check_nonfinite(true);
}

/* y = x w^T + b by the small-batch forward, with the nonzeros path allowed or not;
 * returns whether it took that path. */
static bool small_forward(shape s, const float *x, const float *w, const float *b, bool sparse, float *y) {
    uint64_t before = graft_linear_sparse_x_count();
    graft_linear_set_sparse_x(sparse);
    graft_linear_set_kernel(GRAFT_LINEAR_AVX512);
    graft_linear_forward(&ctx, s.n, s.in, s.out, x, w, b, y);
    graft_linear_set_kernel(GRAFT_LINEAR_AUTO);
    graft_linear_set_sparse_x(true);
    return graft_linear_sparse_x_count() != before;
}

/* On a CPU with AVX2 but not AVX-512, where at most 75% of x is nonzero (the recipe's
 * classifier.3 past a ReLU and a Dropout) the forward sums x's nonzeros only: the bits of
 * the dense forward, for one thread and three, within FAST_TOL of the double reference;
 * more nonzeros take the dense forward.  An infinity or NaN in w (its tile sums every
 * term, so 0 times it is NaN as in the dense sums) or in x changes nothing of that. */
static void test_forward_from_nonzeros_gives_the_dense_bits(void **state) {
    (void)state;
    if (graft_linear_avx512_available() || !graft_linear_avx2_available()) {
        print_message("AVX-512F on this CPU, or no AVX2: skipped (the kernel is AVX2's)\n");
        return;
    }
    /* blocks of 64 outputs and chunks of 64 inputs, with short last ones */
    const shape shapes[] = {{64, 4096, 64}, {128, 257, 70}, {7, 33, 65}, {64, 100, 200}, {1, 5, 64}, {3, 1100, 97}};
    const double keeps[] = {0.25, 0.05, 0.7, 0.9};
    const float bad[] = {1.0f, INFINITY, NAN}; /* 1: nothing bad */
    for (int threads = 1; threads <= 3; threads += 2) {
        assert_int_equal(graft_set_num_threads(threads), GRAFT_OK);
        for (int i = 0; i < COUNT(shapes); i++)
            for (int k = 0; k < COUNT(keeps); k++)
                for (int where = 0; where < 3; where++) { /* nothing, w, x */
                    shape s = shapes[i];
                    problem p = make_problem(s, 2200 + (uint64_t)i);
                    float *x = tu_to_float(p.x, s.n * s.in), *w = tu_to_float(p.w, s.out * s.in);
                    float *b = tu_to_float(p.b, s.out);
                    graft_rng r;
                    graft_rng_seed(&r, 2300 + (uint64_t)(i * 8 + k));
                    int64_t nonzero = 0;
                    for (int64_t j = 0; j < s.n * s.in; j++) {
                        if (graft_rng_uniform(&r) >= keeps[k]) x[j] = x[j] < 0 ? -0.0f : 0.0f;
                        nonzero += x[j] != 0;
                    }
                    if (where == 1) w[(s.out - 1) * s.in + s.in / 2] = bad[1 + k % 2];
                    if (where == 2 && x[s.in / 2] == 0) nonzero++;
                    if (where == 2) x[s.in / 2] = bad[1 + k % 2];
                    float *dense = float_filled(s.n * s.out, 0), *sparse = float_filled(s.n * s.out, 0);
                    assert_false(small_forward(s, x, w, b, false, dense));
                    bool took = small_forward(s, x, w, b, true, sparse);
                    assert_int_equal(took, nonzero <= (int64_t)(0.75 * (double)(s.n * s.in)));
                    assert_memory_equal(sparse, dense, (size_t)(s.n * s.out) * sizeof(float));
                    if (where == 0) {
                        for (int64_t j = 0; j < s.n * s.in; j++) p.x[j] = x[j];
                        graft_ref_linear_forward(s.n, s.in, s.out, p.x, p.w, p.b, p.y);
                        double err = tu_rel_err_fd(sparse, p.y, s.n * s.out, 1e-6);
                        report("forward from nonzeros", i, err);
                        assert_true(err <= FAST_TOL);
                    } else {
                        assert_false(isfinite(sparse[s.out - 1])); /* x [0, in / 2] times w [out - 1, in / 2] */
                    }
                    free(x), free(w), free(b), free(dense), free(sparse);
                    free_problem(&p);
                }
    }
    assert_int_equal(graft_set_num_threads(3), GRAFT_OK);
}

/* Every shape with each kernel (the AVX-512 one computes dx here; dw accumulates, so
 * BLAS takes it). */
static void test_fast_backward_matches_reference(void **state) {
    (void)state;
    for (int k = 0; k < NKERNELS; k++) {
        if (!use_kernel(k)) continue;
        for (int i = 0; i < COUNT(fast_shapes); i++) {
            shape s = fast_shapes[i];
            problem p = make_problem(s, 300 + (uint64_t)i);
            float *x = tu_to_float(p.x, s.n * s.in), *w = tu_to_float(p.w, s.out * s.in);
            float *dy = tu_to_float(p.gy, s.n * s.out);
            float *dx = float_filled(s.n * s.in, NAN), *dw = float_zeros(s.out * s.in);
            float *db = float_zeros(s.out);
            graft_linear_backward(&ctx, s.n, s.in, s.out, x, w, dy, dx, dw, db);
            double *rdx = zeros(s.n * s.in), *rdw = zeros(s.out * s.in), *rdb = zeros(s.out);
            graft_ref_linear_backward(s.n, s.in, s.out, p.x, p.w, p.gy, rdx, rdw, rdb);
            double ex = tu_rel_err_fd(dx, rdx, s.n * s.in, 1e-6);
            double ew = tu_rel_err_fd(dw, rdw, s.out * s.in, 1e-6);
            double eb = tu_rel_err_fd(db, rdb, s.out, 1e-6);
            report("fast dx", i, ex);
            report("fast dw", i, ew);
            report("fast db", i, eb);
            assert_true(ex <= FAST_TOL);
            assert_true(ew <= FAST_TOL);
            assert_true(eb <= FAST_TOL);
            free(x), free(w), free(dy), free(dx), free(dw), free(db), free(rdx), free(rdw), free(rdb);
            free_problem(&p);
        }
    }
    graft_linear_set_kernel(GRAFT_LINEAR_AUTO);
}

/* ---- gradient conventions --------------------------------------------------- */

static const shape convention_shape = {6, 40, 7};

typedef struct fast_run {
    float *x, *w, *dy;
    float *dx, *dw, *db;
} fast_run;

/* Float copies of p's inputs; dx prefilled with garbage, dw and db with zeros. */
static fast_run fast_run_new(const problem *p) {
    shape s = p->s;
    fast_run r = {tu_to_float(p->x, s.n * s.in),   tu_to_float(p->w, s.out * s.in),
                  tu_to_float(p->gy, s.n * s.out), float_filled(s.n * s.in, 12345.0f),
                  float_zeros(s.out * s.in),       float_zeros(s.out)};
    return r;
}

static void fast_run_free(fast_run *r) {
    free(r->x);
    free(r->w);
    free(r->dy);
    free(r->dx);
    free(r->dw);
    free(r->db);
}

/* graft_linear_backward_ex with set_dw / set_db writes every element of dw and db (here
 * over NaN), giving what accumulating into zeros gives, with each kernel; and an empty
 * batch sets them to zero. */
static void test_backward_set_overwrites_dw_and_db(void **state) {
    (void)state;
    for (int k = 0; k < NKERNELS; k++) {
        if (!use_kernel(k)) continue;
        for (int i = 0; i < COUNT(fast_shapes); i++) {
            shape s = fast_shapes[i];
            problem p = make_problem(s, 1600 + (uint64_t)i);
            float *x = tu_to_float(p.x, s.n * s.in), *w = tu_to_float(p.w, s.out * s.in);
            float *dy = tu_to_float(p.gy, s.n * s.out);
            float *dw = float_filled(s.out * s.in, NAN), *db = float_filled(s.out, NAN);
            graft_linear_backward_ex(&ctx, s.n, s.in, s.out, x, w, dy, NULL, dw, db, true, true);
            double *rdw = zeros(s.out * s.in), *rdb = zeros(s.out);
            graft_ref_linear_backward(s.n, s.in, s.out, p.x, p.w, p.gy, NULL, rdw, rdb);
            double ew = tu_rel_err_fd(dw, rdw, s.out * s.in, 1e-6), eb = tu_rel_err_fd(db, rdb, s.out, 1e-6);
            report("backward set dw", i, ew);
            assert_true(ew <= FAST_TOL);
            assert_true(eb <= FAST_TOL);
            /* set only dw: db still accumulates */
            for (int64_t o = 0; o < s.out; o++) db[o] = 1.0f;
            graft_linear_backward_ex(&ctx, s.n, s.in, s.out, x, w, dy, NULL, dw, db, true, false);
            for (int64_t o = 0; o < s.out; o++) rdb[o] += 1.0;
            assert_true(tu_rel_err_fd(db, rdb, s.out, 1e-6) <= FAST_TOL);
            assert_true(tu_rel_err_fd(dw, rdw, s.out * s.in, 1e-6) <= FAST_TOL);
            free(x), free(w), free(dy), free(dw), free(db), free(rdw), free(rdb);
            free_problem(&p);
        }
        float dw0[6] = {NAN, NAN, NAN, NAN, NAN, NAN}, db0[2] = {NAN, NAN};
        graft_linear_backward_ex(&ctx, 0, 3, 2, NULL, NULL, NULL, NULL, dw0, db0, true, true);
        for (int j = 0; j < 6; j++) assert_true(dw0[j] == 0.0f);
        assert_true(db0[0] == 0.0f && db0[1] == 0.0f);
    }
    graft_linear_set_kernel(GRAFT_LINEAR_AUTO);
}

static void test_fast_backward_accumulates_dw_and_db(void **state) {
    (void)state;
    shape s = convention_shape;
    problem p = make_problem(s, 400);
    fast_run once = fast_run_new(&p), twice = fast_run_new(&p);
    graft_linear_backward(&ctx, s.n, s.in, s.out, once.x, once.w, once.dy, once.dx, once.dw, once.db);
    for (int call = 0; call < 2; call++)
        graft_linear_backward(&ctx, s.n, s.in, s.out, twice.x, twice.w, twice.dy, twice.dx, twice.dw,
                              twice.db);
    for (int64_t i = 0; i < s.out * s.in; i++) once.dw[i] *= 2;
    for (int64_t i = 0; i < s.out; i++) once.db[i] *= 2;
    assert_true(rel_err_ff(twice.dw, once.dw, s.out * s.in, 1e-6) <= RESCHEDULE_TOL);
    assert_true(rel_err_ff(twice.db, once.db, s.out, 1e-6) <= RESCHEDULE_TOL);
    fast_run_free(&once);
    fast_run_free(&twice);
    free_problem(&p);
}

static void test_fast_backward_overwrites_dx(void **state) {
    (void)state;
    shape s = convention_shape;
    problem p = make_problem(s, 500);
    fast_run once = fast_run_new(&p), twice = fast_run_new(&p);
    for (int64_t i = 0; i < s.n * s.in; i++) once.dx[i] = NAN;
    graft_linear_backward(&ctx, s.n, s.in, s.out, once.x, once.w, once.dy, once.dx, NULL, NULL);
    for (int call = 0; call < 2; call++)
        graft_linear_backward(&ctx, s.n, s.in, s.out, twice.x, twice.w, twice.dy, twice.dx, NULL,
                              NULL);
    assert_memory_equal(twice.dx, once.dx, (size_t)(s.n * s.in) * sizeof(float));
    fast_run_free(&once);
    fast_run_free(&twice);
    free_problem(&p);
}

static void test_fast_backward_null_arguments_skip(void **state) {
    (void)state;
    shape s = convention_shape;
    problem p = make_problem(s, 600);
    fast_run all = fast_run_new(&p), part = fast_run_new(&p);
    graft_linear_backward(&ctx, s.n, s.in, s.out, all.x, all.w, all.dy, all.dx, all.dw, all.db);
    graft_linear_backward(&ctx, s.n, s.in, s.out, part.x, part.w, part.dy, part.dx, NULL, NULL);
    graft_linear_backward(&ctx, s.n, s.in, s.out, part.x, part.w, part.dy, NULL, part.dw, NULL);
    graft_linear_backward(&ctx, s.n, s.in, s.out, part.x, part.w, part.dy, NULL, NULL, part.db);
    graft_linear_backward(&ctx, s.n, s.in, s.out, part.x, part.w, part.dy, NULL, NULL, NULL);
    assert_memory_equal(part.dx, all.dx, (size_t)(s.n * s.in) * sizeof(float));
    assert_memory_equal(part.dw, all.dw, (size_t)(s.out * s.in) * sizeof(float));
    assert_memory_equal(part.db, all.db, (size_t)s.out * sizeof(float));
    fast_run_free(&all);
    fast_run_free(&part);
    free_problem(&p);
}

static void test_ref_backward_accumulates_dw_db_and_overwrites_dx(void **state) {
    (void)state;
    shape s = convention_shape;
    problem p = make_problem(s, 700);
    int64_t nx = s.n * s.in, nw = s.out * s.in;
    double *dx1 = zeros(nx), *dw1 = zeros(nw), *db1 = zeros(s.out);
    graft_ref_linear_backward(s.n, s.in, s.out, p.x, p.w, p.gy, dx1, dw1, db1);
    double *dx2 = zeros(nx), *dw2 = zeros(nw), *db2 = zeros(s.out);
    for (int64_t i = 0; i < nx; i++) dx2[i] = 1e30;
    for (int call = 0; call < 2; call++)
        graft_ref_linear_backward(s.n, s.in, s.out, p.x, p.w, p.gy, dx2, dw2, db2);
    for (int64_t i = 0; i < nw; i++) dw1[i] *= 2;
    for (int64_t i = 0; i < s.out; i++) db1[i] *= 2;
    assert_true(tu_rel_err_dd(dw2, dw1, nw, 1e-12) <= 1e-14);
    assert_true(tu_rel_err_dd(db2, db1, s.out, 1e-12) <= 1e-14);
    assert_memory_equal(dx2, dx1, (size_t)nx * sizeof(double));
    free(dx1);
    free(dw1);
    free(db1);
    free(dx2);
    free(dw2);
    free(db2);
    free_problem(&p);
}

static void test_ref_backward_null_arguments_skip(void **state) {
    (void)state;
    shape s = convention_shape;
    problem p = make_problem(s, 800);
    int64_t nx = s.n * s.in, nw = s.out * s.in;
    double *dx = zeros(nx), *dw = zeros(nw), *db = zeros(s.out);
    graft_ref_linear_backward(s.n, s.in, s.out, p.x, p.w, p.gy, dx, dw, db);
    double *dx2 = zeros(nx), *dw2 = zeros(nw), *db2 = zeros(s.out);
    graft_ref_linear_backward(s.n, s.in, s.out, p.x, p.w, p.gy, dx2, NULL, NULL);
    graft_ref_linear_backward(s.n, s.in, s.out, p.x, p.w, p.gy, NULL, dw2, NULL);
    graft_ref_linear_backward(s.n, s.in, s.out, p.x, p.w, p.gy, NULL, NULL, db2);
    graft_ref_linear_backward(s.n, s.in, s.out, p.x, p.w, p.gy, NULL, NULL, NULL);
    assert_memory_equal(dx2, dx, (size_t)nx * sizeof(double));
    assert_memory_equal(dw2, dw, (size_t)nw * sizeof(double));
    assert_memory_equal(db2, db, (size_t)s.out * sizeof(double));
    free(dx);
    free(dw);
    free(db);
    free(dx2);
    free(dw2);
    free(db2);
    free_problem(&p);
}

/* ---- threads ----------------------------------------------------------------- */

/* Forward and backward of one shape with the pool at `threads`; every array is new. */
static fast_run run_with_threads(const problem *p, int threads, float **y) {
    shape s = p->s;
    assert_int_equal(graft_set_num_threads(threads), GRAFT_OK);
    fast_run r = fast_run_new(p);
    float *b = tu_to_float(p->b, s.out);
    *y = float_filled(s.n * s.out, NAN);
    graft_linear_forward(&ctx, s.n, s.in, s.out, r.x, r.w, b, *y);
    graft_linear_backward(&ctx, s.n, s.in, s.out, r.x, r.w, r.dy, r.dx, r.dw, r.db);
    free(b);
    return r;
}

/* The GEMMs split over the pool cut rows or columns, never the sums: one thread and
 * three give the same numbers (to the last bits BLAS's kernel choice may move). */
static void test_split_gemm_matches_one_thread(void **state) {
    (void)state;
    static const shape split_shapes[] = {{64, 512, 640}, {300, 96, 48}, {33, 1000, 129}};
    for (int i = 0; i < COUNT(split_shapes); i++) {
        shape s = split_shapes[i];
        problem p = make_problem(s, 1400 + (uint64_t)i);
        float *y1, *y3;
        fast_run one = run_with_threads(&p, 1, &y1);
        fast_run three = run_with_threads(&p, 3, &y3);
        assert_true(rel_err_ff(y3, y1, s.n * s.out, 1e-6) <= RESCHEDULE_TOL);
        assert_true(rel_err_ff(three.dx, one.dx, s.n * s.in, 1e-6) <= RESCHEDULE_TOL);
        assert_true(rel_err_ff(three.dw, one.dw, s.out * s.in, 1e-6) <= RESCHEDULE_TOL);
        assert_memory_equal(three.db, one.db, (size_t)s.out * sizeof(float));
        free(y1);
        free(y3);
        fast_run_free(&one);
        fast_run_free(&three);
        free_problem(&p);
    }
    assert_int_equal(graft_set_num_threads(3), GRAFT_OK);
}

/* ---- replicated inputs folded into the weight ------------------------------- */

/* Each folded weight is the sum of its replicas, and the Linear on the replicated input
 * is the folded Linear on the small map: maps copied whole (w = 1, each block one run of
 * the row), copied by blocks of 2 x 2 and 2 x 3, and a pool that copies nothing. */
static void test_fold_replicas_matches_the_replicated_input(void **state) {
    (void)state;
    static const struct {
        int64_t c, h, w, oh, ow;
    } geoms[] = {{3, 1, 1, 7, 7}, {2, 2, 1, 6, 3}, {3, 2, 3, 4, 6}, {2, 3, 2, 6, 6}, {1, 2, 2, 2, 2}};
    for (int g = 0; g < COUNT(geoms); g++) {
        int64_t c = geoms[g].c, h = geoms[g].h, w = geoms[g].w, oh = geoms[g].oh, ow = geoms[g].ow;
        int64_t n = 3, out = 70, in = c * oh * ow, fin = c * h * w, ry = oh / h, rx = ow / w;
        problem p = make_problem((shape){n, in, out}, 40 + (uint64_t)g);
        float *wt = malloc((size_t)(out * in) * sizeof *wt), *wf = malloc((size_t)(out * fin) * sizeof *wf);
        float *xs = malloc((size_t)(n * fin) * sizeof *xs), *y = malloc((size_t)(n * out) * sizeof *y);
        double *xr = malloc((size_t)(n * in) * sizeof *xr), *yr = malloc((size_t)(n * out) * sizeof *yr);
        for (int64_t i = 0; i < out * in; i++) wt[i] = (float)p.w[i];
        for (int64_t i = 0; i < n * fin; i++) xs[i] = (float)p.x[i];
        /* the replicated input: cell (qy, qx) of channel ci copies cell (qy / ry, qx / rx) */
        for (int64_t i = 0; i < n; i++)
            for (int64_t ci = 0; ci < c; ci++)
                for (int64_t qy = 0; qy < oh; qy++)
                    for (int64_t qx = 0; qx < ow; qx++)
                        xr[i * in + (ci * oh + qy) * ow + qx] = xs[i * fin + (ci * h + qy / ry) * w + qx / rx];
        graft_linear_fold_replicas(out, c, h, w, oh, ow, wt, wf);
        double worst = 0;
        for (int64_t o = 0; o < out; o++)
            for (int64_t ci = 0; ci < c; ci++)
                for (int64_t y0 = 0; y0 < h; y0++)
                    for (int64_t x0 = 0; x0 < w; x0++) {
                        double sum = 0;
                        for (int64_t qy = y0 * ry; qy < (y0 + 1) * ry; qy++)
                            for (int64_t qx = x0 * rx; qx < (x0 + 1) * rx; qx++) sum += wt[o * in + (ci * oh + qy) * ow + qx];
                        double got = wf[o * fin + (ci * h + y0) * w + x0];
                        worst = fmax(worst, fabs(got - sum) / fmax(fabs(sum), 1.0));
                    }
        report("folded weights", g, worst);
        assert_true(worst <= 1e-7);
        graft_ref_linear_forward(n, in, out, xr, p.w, p.b, yr);
        graft_linear_forward(&ctx, n, fin, out, xs, wf, NULL, y);
        for (int64_t i = 0; i < n; i++)
            for (int64_t o = 0; o < out; o++) y[i * out + o] += (float)p.b[o];
        double err = tu_rel_err_fd(y, yr, n * out, 1.0);
        report("folded forward", g, err);
        assert_true(err <= FAST_TOL);
        free(wt), free(wf), free(xs), free(y), free(xr), free(yr);
        free_problem(&p);
    }
}

int main(void) {
    graft_set_num_threads(3); /* BLAS threads split even on a one-core runner */
    graft_ctx_init(&ctx, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ref_dx_matches_finite_differences),
        cmocka_unit_test(test_ref_dw_matches_finite_differences),
        cmocka_unit_test(test_ref_db_matches_finite_differences),
        cmocka_unit_test(test_fast_forward_matches_reference),
        cmocka_unit_test(test_fast_forward_without_bias_matches_reference),
        cmocka_unit_test(test_avx512_kernels_are_the_same_for_any_thread_count),
        cmocka_unit_test(test_fast_backward_matches_reference),
        cmocka_unit_test(test_weight_grad_to_sink_gives_the_stored_bits),
        cmocka_unit_test(test_weight_grad_from_nonzeros_gives_the_dense_bits),
        cmocka_unit_test(test_weight_grad_with_nonfinite_x_sums_every_term),
        cmocka_unit_test(test_input_grad_from_nonzeros_gives_the_dense_bits),
        cmocka_unit_test(test_input_grad_with_nonfinite_w_sums_every_term),
        cmocka_unit_test(test_forward_from_nonzeros_gives_the_dense_bits),
        cmocka_unit_test(test_fast_backward_accumulates_dw_and_db),
        cmocka_unit_test(test_backward_set_overwrites_dw_and_db),
        cmocka_unit_test(test_fast_backward_overwrites_dx),
        cmocka_unit_test(test_fast_backward_null_arguments_skip),
        cmocka_unit_test(test_ref_backward_accumulates_dw_db_and_overwrites_dx),
        cmocka_unit_test(test_ref_backward_null_arguments_skip),
        cmocka_unit_test(test_split_gemm_matches_one_thread),
        cmocka_unit_test(test_fold_replicas_matches_the_replicated_input),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    graft_ctx_release(&ctx);
    graft_threads_shutdown();
    return failed;
}
