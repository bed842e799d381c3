/* linear.c — Linear (fully connected): y = x w^T + b and its gradients, and the double
 * reference they are checked against.  The weight keeps PyTorch's [out, in] layout, so
 * state dicts load without a transpose.
 *
 * Kernel choice (docs/performance.md, ops/linear_internal.h): for small batches the
 * forward, the input gradient, and the weight gradient when it is written whole (a
 * gradient zeroed lazily) take linear_avx512.c where the CPU has AVX-512F (linear_avx2.c
 * where it has AVX2 and FMA only: the input gradient there where at most 40% of dy is
 * nonzero, and the forward from x's nonzeros where at most 75% of x is) — on the
 * recipe's 64 x 4096 x 4096 products OpenBLAS's SGEMM spends much of its time packing
 * the weights, and with beta = 0 still clears the output in a pass of its own; larger
 * batches, small heads, other CPUs and accumulated weight gradients take OpenBLAS's
 * SGEMM split over graft's pool (ops/gemm.h). */
#include "ops/ops.h"

#include "core/threads.h"
#include "ops/gemm.h"
#include "ops/linear_internal.h"

static graft_linear_kernel forced_kernel = GRAFT_LINEAR_AUTO;

void graft_linear_set_kernel(graft_linear_kernel k) { forced_kernel = k; }

/* Whether the small-batch kernels may sum dy's nonzeros only (tests and benchmarks turn it
 * off to compare), and how many gradients have, whichever kernel took them. */
static bool sparse_dy_allowed = true;
static uint64_t sparse_dy_count; /* atomic */

void graft_linear_set_sparse_dy(bool on) { sparse_dy_allowed = on; }
uint64_t graft_linear_sparse_dy_count(void) { return __atomic_load_n(&sparse_dy_count, __ATOMIC_RELAXED); }
bool graft_linear_sparse_dy_allowed(void) { return sparse_dy_allowed; }
void graft_linear_sparse_dy_taken(void) { __atomic_fetch_add(&sparse_dy_count, 1, __ATOMIC_RELAXED); }

/* The same for the forward from x's nonzeros (linear_avx2.c). */
static bool sparse_x_allowed = true;
static uint64_t sparse_x_count; /* atomic */

void graft_linear_set_sparse_x(bool on) { sparse_x_allowed = on; }
uint64_t graft_linear_sparse_x_count(void) { return __atomic_load_n(&sparse_x_count, __ATOMIC_RELAXED); }
bool graft_linear_sparse_x_allowed(void) { return sparse_x_allowed; }
void graft_linear_sparse_x_taken(void) { __atomic_fetch_add(&sparse_x_count, 1, __ATOMIC_RELAXED); }

/* Whether a product of n batch rows with out outputs should try the small-batch kernels:
 * AVX-512's, then AVX2's where they have the product (each declines where the CPU lacks
 * its instructions). */
static bool try_small_batch(int64_t n, int64_t out) {
    switch (forced_kernel) {
    case GRAFT_LINEAR_BLAS: return false;
    case GRAFT_LINEAR_AVX512: return true;
    default: return n <= GRAFT_LINEAR_AVX512_MAX_ROWS && out >= GRAFT_LINEAR_AVX512_MIN_OUT;
    }
}

/* ---- forward -------------------------------------------------------------- */

/* x [n, in], w [out, in], b [out] or NULL -> y [n, out] */
void graft_linear_forward(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x, const float *w,
                          const float *b, float *y) {
    if (n <= 0 || out <= 0) return;
    if (in > 0 && try_small_batch(n, out) &&
        (graft_linear_forward_avx512(ctx, n, in, out, x, w, b, y) ||
         graft_linear_forward_sparse_avx2(ctx, n, in, out, x, w, b, y) ||
         graft_linear_forward_avx2(ctx, n, in, out, x, w, b, y)))
        return;
    float beta = 0.0f;
    if (b) { /* start y at the bias and let the GEMM add onto it */
        for (int64_t i = 0; i < n; i++)
            for (int64_t o = 0; o < out; o++) y[i * out + o] = b[o];
        beta = 1.0f;
    }
    if (in <= 0) { /* an empty sum: y is the bias, or zero */
        if (!b)
            for (int64_t i = 0; i < n * out; i++) y[i] = 0.0f;
        return;
    }
    graft_sgemm(false, true, n, out, in, 1.0f, x, in, w, in, beta, y, out);
}

/* ---- backward ------------------------------------------------------------- */

/* x [n, in], w [out, in], dy [n, out] ->
 *   dx [n, in] = dy w (overwritten), dw [out, in] += dy^T x, db [out] += sum_i dy[i];
 *   NULL skips. */
void graft_linear_backward(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x, const float *w,
                           const float *dy, float *dx, float *dw, float *db) {
    graft_linear_backward_ex(ctx, n, in, out, x, w, dy, dx, dw, db, false, false);
}

/* db [o] (+)= the sum of dy [i, o] over the batch, in double (a batch of float gradients
 * summed without drift), i ascending; BIAS_CHUNK columns at a time, rows in order, so the
 * loop runs along dy's rows (by columns it read one float per 16 KiB row of the recipe's
 * dy, about 0.6 ms a step); the chunks split between the pool's threads. */
#define BIAS_CHUNK 256

typedef struct bias_job {
    int64_t n, out;
    const float *dy;
    float *db;
    bool set_db;
} bias_job;

static void bias_chunks(void *arg, int64_t c0, int64_t c1) {
    const bias_job *bj = arg;
    double sum[BIAS_CHUNK];
    for (int64_t o0 = c0 * BIAS_CHUNK; o0 < c1 * BIAS_CHUNK && o0 < bj->out; o0 += BIAS_CHUNK) {
        int64_t width = bj->out - o0 < BIAS_CHUNK ? bj->out - o0 : BIAS_CHUNK;
        for (int64_t o = 0; o < width; o++) sum[o] = 0.0;
        for (int64_t i = 0; i < bj->n; i++)
            for (int64_t o = 0; o < width; o++) sum[o] += bj->dy[i * bj->out + o0 + o];
        for (int64_t o = 0; o < width; o++)
            bj->db[o0 + o] = bj->set_db ? (float)sum[o] : bj->db[o0 + o] + (float)sum[o];
    }
}

static void bias_grad(int64_t n, int64_t out, const float *dy, float *db, bool set_db) {
    bias_job bj = {.n = n, .out = out, .dy = dy, .db = db, .set_db = set_db};
    graft_parallel_for((out + BIAS_CHUNK - 1) / BIAS_CHUNK, 1, bias_chunks, &bj);
}

void graft_linear_backward_ex(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x, const float *w,
                              const float *dy, float *dx, float *dw, float *db, bool set_dw, bool set_db) {
    if (dx && in > 0 && n > 0) {
        if (out > 0) {
            if (!(try_small_batch(n, out) &&
                  (graft_linear_input_grad_avx512(ctx, n, in, out, dy, w, dx) ||
                   graft_linear_input_grad_avx2(ctx, n, in, out, dy, w, dx, forced_kernel == GRAFT_LINEAR_AVX512))))
                graft_sgemm(false, false, n, in, out, 1.0f, dy, out, w, in, 0.0f, dx, in);
        } else
            for (int64_t i = 0; i < n * in; i++) dx[i] = 0.0f;
    }
    if (dw && in > 0 && out > 0) {
        if (n <= 0) { /* an empty batch: nothing to add, zeros to set */
            if (set_dw)
                for (int64_t i = 0; i < out * in; i++) dw[i] = 0.0f;
        } else if (!(set_dw && try_small_batch(n, out) &&
                     (graft_linear_weight_grad_avx512(ctx, n, in, out, dy, x, dw) ||
                      graft_linear_weight_grad_avx2(ctx, n, in, out, dy, x, dw)))) {
            graft_sgemm(true, false, out, in, n, 1.0f, dy, out, x, in, set_dw ? 0.0f : 1.0f, dw, in);
        }
    }
    if (db) bias_grad(n, out, dy, db, set_db);
}

bool graft_linear_weight_grad_to_sink(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x,
                                      const float *dy, const graft_grad_sink *sink) {
    if (n <= 0 || in <= 0 || out <= 0 || !try_small_batch(n, out)) return false;
    return graft_linear_weight_grad_avx512_sink(ctx, n, in, out, dy, x, sink) ||
           graft_linear_weight_grad_avx2_sink(ctx, n, in, out, dy, x, sink);
}

/* ---- replicated inputs folded into the weight ------------------------------ */

typedef struct fold_job {
    int64_t c, h, w, oh, ow;
    const float *wt;
    float *wf;
} fold_job;

/* The sum of p [0, len) in double, four running sums so that the additions overlap. */
static double run_sum(const float *p, int64_t len) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t k = 0;
    for (; k + 4 <= len; k += 4) {
        s0 += p[k];
        s1 += p[k + 1];
        s2 += p[k + 2];
        s3 += p[k + 3];
    }
    for (; k < len; k++) s0 += p[k];
    return (s0 + s1) + (s2 + s3);
}

static void fold_rows(void *arg, int64_t begin, int64_t end) {
    const fold_job *j = arg;
    int64_t ry = j->oh / j->h, rx = j->ow / j->w, in = j->c * j->oh * j->ow, fin = j->c * j->h * j->w;
    for (int64_t o = begin; o < end; o++)
        for (int64_t ci = 0; ci < j->c; ci++) {
            const float *wc = j->wt + o * in + ci * j->oh * j->ow;
            float *wfc = j->wf + o * fin + ci * j->h * j->w;
            for (int64_t y = 0; y < j->h; y++)
                for (int64_t x = 0; x < j->w; x++) {
                    const float *block = wc + y * ry * j->ow + x * rx;
                    double sum = 0;
                    if (rx == j->ow) /* whole rows of the map: one run */
                        sum = run_sum(block, ry * rx);
                    else
                        for (int64_t qy = 0; qy < ry; qy++) sum += run_sum(block + qy * j->ow, rx);
                    wfc[y * j->w + x] = (float)sum;
                }
        }
}

void graft_linear_fold_replicas(int64_t out, int64_t c, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                const float *wt, float *wf) {
    fold_job j = {.c = c, .h = h, .w = w, .oh = oh, .ow = ow, .wt = wt, .wf = wf};
    graft_parallel_for(out, 16, fold_rows, &j);
}

/* ---- reference (double, direct summation) --------------------------------- */

/* x [n, in], w [out, in], b [out] or NULL -> y [n, out] */
void graft_ref_linear_forward(int64_t n, int64_t in, int64_t out, const double *x,
                              const double *w, const double *b, double *y) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t o = 0; o < out; o++) {
            double sum = b ? b[o] : 0.0;
            for (int64_t k = 0; k < in; k++) sum += x[i * in + k] * w[o * in + k];
            y[i * out + o] = sum;
        }
}

/* x [n, in], w [out, in], dy [n, out] -> dx [n, in] (overwritten), dw [out, in] (+=),
 * db [out] (+=); NULL skips. */
void graft_ref_linear_backward(int64_t n, int64_t in, int64_t out, const double *x,
                               const double *w, const double *dy, double *dx, double *dw,
                               double *db) {
    if (dx)
        for (int64_t i = 0; i < n; i++)
            for (int64_t k = 0; k < in; k++) {
                double sum = 0.0;
                for (int64_t o = 0; o < out; o++) sum += dy[i * out + o] * w[o * in + k];
                dx[i * in + k] = sum;
            }
    if (dw)
        for (int64_t o = 0; o < out; o++)
            for (int64_t k = 0; k < in; k++) {
                double sum = 0.0;
                for (int64_t i = 0; i < n; i++) sum += dy[i * out + o] * x[i * in + k];
                dw[o * in + k] += sum;
            }
    if (db)
        for (int64_t o = 0; o < out; o++)
            for (int64_t i = 0; i < n; i++) db[o] += dy[i * out + o];
}
