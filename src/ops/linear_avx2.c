/* linear_avx2.c — Linear's forward and weight gradient for small batches on AVX2 and FMA,
 * for CPUs without AVX-512 (linear_avx512.c's kernels), on graft's pool.  The forward is
 * below, at fw2_slab.
 *
 * The recipe's classifier.3 takes dw = dy^T x with 64 rows of dy [64, 4096] and x
 * [64, 4096], where dy has passed a ReLU and a Dropout: about a quarter of it is nonzero.
 * OpenBLAS's SGEMM adds every term and writes dw to memory, where the optimiser reads it
 * back.  Here row o of dw sums dy [m, o] x [m, .] over dy's nonzeros only, m ascending,
 * with fused multiply-adds from +0:
 *   - the terms left out are exact zeros while x is finite (checked; with an infinity or
 *     NaN in x every term is summed), and adding a zero never changes a partial sum that
 *     starts at +0 (round to nearest: +0 + -0 is +0), so the result has the bits of the
 *     sum of every term in the same order;
 *   - x is packed into panels of 32 columns, [n][32] each (4 KiB per 32 samples, in L1),
 *     and a row keeps dw [o, 32 columns] in four ymm registers; two rows are walked
 *     together for eight independent sums;
 *   - blocks of SINK_ROWS rows by SINK_KB columns keep the panels they read in L2; the
 *     fused update (graft_linear_weight_grad_avx2_sink, the trainer's) computes a block
 *     into the thread's scratch and hands its rows to the optimiser while they are in
 *     cache, so dw is never written to memory and read back; written whole, the block
 *     goes straight into dw.
 * Threads split the rows, so every element is the same sum for any thread count, and the
 * sink's elements are those written whole. */
#include "ops/linear_internal.h"

#include <string.h>

#include "core/cpu.h"
#include "core/threads.h"
#include "graft/graft.h"

#define XB 32                 /* columns of x per panel: 4 ymm vectors */
#define XV 4
#define ROWS_PER_TILE 2       /* rows walked together */
#define SINK_KB 1024          /* columns per block */
#define SINK_ROWS 24          /* rows per block */
#define SINK_LD (SINK_KB + 8) /* a block's rows in scratch, padded off the same cache sets */
#define SPARSE_MAX_DENSITY 0.5

bool graft_linear_avx2_available(void) { return graft_cpu_avx2(); }

#if GRAFT_HAVE_AVX2_BUILD
#include <immintrin.h>

#include "ops/gemm_avx2.h"
#define AVX2 __attribute__((target("avx2,fma")))
#define AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) static inline

typedef struct wg2_job {
    int64_t n, in, out, slabs;
    const float *xp; /* x packed: panels of XB columns, [n][XB] each (zero past in) */
    float *dw;       /* written whole; NULL with a sink */
    /* the entries of row o of dw: [start [o], start [o + 1]) of at (m * XB, the sample's
       row in a panel) and val (dy [m, o]), m ascending */
    const int32_t *start, *at;
    const float *val;
    float *blocks; /* SINK_ROWS * SINK_LD floats per slab, with a sink */
    const graft_grad_sink *sink;
} wg2_job;

/* c [XV] += the entries [e, end) of a row, each times its sample's row of the panel xp. */
AVX2_INLINE void run_entries(const wg2_job *jb, int32_t e, int32_t end, const float *xp, __m256 c[XV]) {
    for (; e < end; e++) {
        const float *xm = xp + jb->at[e];
        __m256 v = _mm256_set1_ps(jb->val[e]);
        for (int k = 0; k < XV; k++) c[k] = _mm256_fmadd_ps(v, _mm256_load_ps(xm + 8 * k), c[k]);
    }
}

/* The first kn (1..XB) floats of c into d. */
AVX2_INLINE void store_row(float *d, const __m256 c[XV], int64_t kn) {
    if (kn == XB) {
        for (int k = 0; k < XV; k++) _mm256_storeu_ps(d + 8 * k, c[k]);
        return;
    }
    float t[XB] __attribute__((aligned(32)));
    for (int k = 0; k < XV; k++) _mm256_store_ps(t + 8 * k, c[k]);
    memcpy(d, t, (size_t)kn * sizeof(float));
}

/* Row o over a panel, its first kn columns into d. */
AVX2_INLINE void row_one(const wg2_job *jb, int64_t o, const float *xp, float *d, int64_t kn) {
    __m256 c[XV];
    for (int k = 0; k < XV; k++) c[k] = _mm256_setzero_ps();
    run_entries(jb, jb->start[o], jb->start[o + 1], xp, c);
    store_row(d, c, kn);
}

/* Rows o and o + 1 over a panel, their entries walked together while both have some left. */
AVX2_INLINE void row_pair(const wg2_job *jb, int64_t o, const float *xp, float *da, float *db, int64_t kn) {
    __m256 a[XV], b[XV];
    for (int k = 0; k < XV; k++) a[k] = b[k] = _mm256_setzero_ps();
    int32_t ea = jb->start[o], enda = jb->start[o + 1], eb = enda, endb = jb->start[o + 2];
    for (; ea < enda && eb < endb; ea++, eb++) {
        const float *xa = xp + jb->at[ea], *xb = xp + jb->at[eb];
        __m256 va = _mm256_set1_ps(jb->val[ea]), vb = _mm256_set1_ps(jb->val[eb]);
        for (int k = 0; k < XV; k++) {
            a[k] = _mm256_fmadd_ps(va, _mm256_load_ps(xa + 8 * k), a[k]);
            b[k] = _mm256_fmadd_ps(vb, _mm256_load_ps(xb + 8 * k), b[k]);
        }
    }
    run_entries(jb, ea, enda, xp, a);
    run_entries(jb, eb, endb, xp, b);
    store_row(da, a, kn);
    store_row(db, b, kn);
}

/* Rows [r0, r1) by columns [k1, k2) of dw into dst (row stride ld). */
AVX2 static void block_rows(const wg2_job *jb, int64_t r0, int64_t r1, int64_t k1, int64_t k2, float *dst, int64_t ld) {
    for (int64_t k0 = k1; k0 < k2; k0 += XB) {
        int64_t kn = k2 - k0 < XB ? k2 - k0 : XB;
        const float *xp = jb->xp + (k0 / XB) * jb->n * XB;
        float *d = dst + (k0 - k1);
        int64_t o = r0;
        for (; o + 1 < r1; o += ROWS_PER_TILE) row_pair(jb, o, xp, d + (o - r0) * ld, d + (o + 1 - r0) * ld, kn);
        if (o < r1) row_one(jb, o, xp, d + (o - r0) * ld, kn);
    }
}

/* Slab s: rows [out * s / slabs, out * (s + 1) / slabs), block by block. */
static void wg2_slab(void *arg, int64_t begin, int64_t end) {
    const wg2_job *jb = arg;
    for (int64_t s = begin; s < end; s++) {
        int64_t rlo = jb->out * s / jb->slabs, rhi = jb->out * (s + 1) / jb->slabs;
        float *block = jb->sink ? jb->blocks + s * SINK_ROWS * SINK_LD : NULL;
        for (int64_t k1 = 0; k1 < jb->in; k1 += SINK_KB) {
            int64_t k2 = jb->in - k1 < SINK_KB ? jb->in : k1 + SINK_KB;
            for (int64_t r0 = rlo; r0 < rhi; r0 += SINK_ROWS) {
                int64_t r1 = rhi - r0 < SINK_ROWS ? rhi : r0 + SINK_ROWS;
                if (!block) {
                    block_rows(jb, r0, r1, k1, k2, jb->dw + r0 * jb->in + k1, jb->in);
                    continue;
                }
                block_rows(jb, r0, r1, k1, k2, block, SINK_LD);
                for (int64_t r = r0; r < r1; r++) {
                    /* the row below, same columns, or the slab's first row in the next columns */
                    int64_t next = r + 1 < rhi ? (r + 1) * jb->in + k1 : k2 < jb->in ? rlo * jb->in + k2 : -1;
                    jb->sink->piece(jb->sink->user, r * jb->in + k1, r * jb->in + k2, next, block + (r - r0) * SINK_LD);
                }
            }
        }
    }
}

/* ---- forward: y [m, j] = sum_p x [m, p] w [j, p] + b [j] ------------------------------
 *
 * yt [j][m] = w [j, .] . xt [.][m] with gemm_avx2.h's kernel, the weight read in place:
 * x transposed into xt [in][np] (np: the batch rounded up to 16, zero columns past it),
 * blocks of FW_KC inputs (xt's block, 128 KiB at 64 samples, stays in L2 while every row
 * of the slab passes; six rows of the weight, 12 KiB, stay in L1 across the batch), each
 * block continuing the sums; then y [m, j] = yt [j][m] + b [j]. */
#define FW_KC 512

typedef struct fw2_job {
    int64_t n, in, out, np, slabs;
    const float *x, *w, *b;
    float *xt, *yt, *y;
} fw2_job;

/* xt [p][m] = x [m, p] for inputs [p0, p1), zero for m in [n, np). */
static void transpose_inputs(void *arg, int64_t p0, int64_t p1) {
    const fw2_job *fj = arg;
    for (int64_t p = p0; p < p1; p++) {
        float *to = fj->xt + p * fj->np;
        for (int64_t m = 0; m < fj->n; m++) to[m] = fj->x[m * fj->in + p];
        for (int64_t m = fj->n; m < fj->np; m++) to[m] = 0.0f;
    }
}

/* Slab s: outputs [out * s / slabs, out * (s + 1) / slabs). */
AVX2 static void fw2_slab(void *arg, int64_t begin, int64_t end) {
    const fw2_job *fj = arg;
    for (int64_t s = begin; s < end; s++) {
        int64_t rlo = fj->out * s / fj->slabs, rhi = fj->out * (s + 1) / fj->slabs;
        float *yt = fj->yt + rlo * fj->np;
        for (int64_t k0 = 0; k0 < fj->in; k0 += FW_KC) {
            int64_t kn = fj->in - k0 < FW_KC ? fj->in - k0 : FW_KC;
            graft_avx2_products(k0 == 0, fj->w + rlo * fj->in + k0, fj->in, rhi - rlo, kn, fj->xt + k0 * fj->np, fj->np,
                                fj->np, yt, fj->np);
        }
        for (int64_t m = 0; m < fj->n; m++)
            for (int64_t j = rlo; j < rhi; j++)
                fj->y[m * fj->out + j] = fj->yt[j * fj->np + m] + (fj->b ? fj->b[j] : 0.0f);
    }
}

/* ---- packing ----------------------------------------------------------------------- */

typedef struct lists2_job {
    int64_t n, in, out;
    const float *dy, *x;
    int32_t *start, *at;
    float *val, *xp;
    bool every; /* every term, not only dy's nonzeros */
} lists2_job;

/* start [o + 1] = how many entries row o has, for rows [o0, o1). */
AVX2 static void count_rows(void *arg, int64_t o0, int64_t o1) {
    const lists2_job *lj = arg;
    for (int64_t o = o0; o < o1; o++) lj->start[o + 1] = 0;
    if (lj->every) {
        for (int64_t o = o0; o < o1; o++) lj->start[o + 1] = (int32_t)lj->n;
        return;
    }
    for (int64_t m = 0; m < lj->n; m++) {
        const float *d = lj->dy + m * lj->out;
        for (int64_t o = o0; o < o1; o++) lj->start[o + 1] += d[o] != 0.0f; /* NaN included */
    }
}

/* The entries of rows [o0, o1), from their start. */
static void fill_rows(void *arg, int64_t o0, int64_t o1) {
    const lists2_job *lj = arg;
    enum { GROUP = 256 };
    int32_t pos[GROUP];
    for (int64_t g0 = o0; g0 < o1; g0 += GROUP) {
        int64_t g1 = o1 - g0 < GROUP ? o1 : g0 + GROUP;
        for (int64_t o = g0; o < g1; o++) pos[o - g0] = lj->start[o];
        for (int64_t m = 0; m < lj->n; m++) {
            const float *d = lj->dy + m * lj->out;
            for (int64_t o = g0; o < g1; o++)
                if (lj->every || d[o] != 0.0f) {
                    int32_t e = pos[o - g0]++;
                    lj->at[e] = (int32_t)(m * XB);
                    lj->val[e] = d[o];
                }
        }
    }
}

/* x [n, in] into panels of XB columns, [n][XB] each (zero past in), panels [p0, p1). */
static void pack_panels(void *arg, int64_t p0, int64_t p1) {
    const lists2_job *lj = arg;
    for (int64_t p = p0; p < p1; p++)
        for (int64_t m = 0; m < lj->n; m++) {
            int64_t k0 = p * XB, kn = lj->in - k0 < XB ? lj->in - k0 : XB;
            float *to = lj->xp + (p * lj->n + m) * XB;
            memcpy(to, lj->x + m * lj->in + k0, (size_t)kn * sizeof(float));
            for (int64_t k = kn; k < XB; k++) to[k] = 0.0f;
        }
}

/* Whether every element of v is finite. */
AVX2 static bool all_finite(int64_t count, const float *v) {
    uint32_t seen = 0;
    for (int64_t i = 0; i < count; i++) {
        uint32_t bits;
        memcpy(&bits, v + i, sizeof bits);
        seen |= (bits & 0x7f800000u) == 0x7f800000u;
    }
    return !seen;
}

/* Lays out the lists (room for every term) and the panels in ctx's workspace, with extra
 * floats per slab after them (32-byte aligned), and fills jb.  The rows' counts decide
 * between dy's nonzeros and every term.  False: no memory, or sizes past int32. */
static bool wg2_prepare(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy, const float *x,
                        size_t extra_per_slab, wg2_job *jb) {
    int64_t panels = (in + XB - 1) / XB, slabs = graft_num_threads();
    if (slabs > out) slabs = out;
    if (n * out >= INT32_MAX || n * XB >= INT32_MAX) return false;
    int64_t list_floats = (out + 1 + 2 * n * out + 7) / 8 * 8; /* int32 entries in float slots, whole vectors */
    size_t packed = (size_t)(list_floats + panels * n * XB);
    float *scratch = graft_ctx_workspace(ctx, packed + (size_t)slabs * extra_per_slab); /* cache-line aligned */
    if (!scratch) return false;
    int32_t *start = (int32_t *)scratch, *at = start + out + 1;
    lists2_job lj = {.n = n, .in = in, .out = out, .dy = dy, .x = x, .start = start, .at = at,
                     .val = (float *)(at + n * out), .xp = scratch + list_floats,
                     .every = !graft_linear_sparse_dy_allowed() || !all_finite(n * in, x)};
    graft_parallel_for(out, 256, count_rows, &lj);
    start[0] = 0;
    for (int64_t o = 0; o < out; o++) start[o + 1] += start[o];
    if (!lj.every && start[out] > (int64_t)(SPARSE_MAX_DENSITY * (double)(n * out))) {
        lj.every = true; /* too many nonzeros to pay: every term, n per row */
        for (int64_t o = 0; o <= out; o++) start[o] = (int32_t)(o * n);
    }
    graft_parallel_for(out, 256, fill_rows, &lj);
    graft_parallel_for(panels, 4, pack_panels, &lj);
    if (!lj.every) graft_linear_sparse_dy_taken();
    *jb = (wg2_job){.n = n, .in = in, .out = out, .slabs = slabs, .xp = lj.xp, .start = start, .at = at,
                    .val = lj.val, .blocks = scratch + packed};
    return true;
}
#endif

bool graft_linear_forward_avx2(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x, const float *w,
                               const float *b, float *y) {
#if GRAFT_HAVE_AVX2_BUILD
    if (!graft_linear_avx2_available() || n <= 0 || in <= 0 || out <= 0) return false;
    int64_t np = (n + 15) / 16 * 16, slabs = graft_num_threads();
    if (slabs > out) slabs = out;
    float *scratch = graft_ctx_workspace(ctx, (size_t)(np * in + np * out)); /* cache-line aligned */
    if (!scratch) return false;
    fw2_job fj = {.n = n, .in = in, .out = out, .np = np, .slabs = slabs, .x = x, .w = w, .b = b, .xt = scratch,
                  .yt = scratch + np * in, .y = y};
    graft_parallel_for(in, 64, transpose_inputs, &fj);
    graft_parallel_for(slabs, 1, fw2_slab, &fj);
    return true;
#else
    (void)ctx, (void)n, (void)in, (void)out, (void)x, (void)w, (void)b, (void)y;
    return false;
#endif
}

/* The weight gradient into dw, or handed to sink where dw is NULL. */
static bool weight_grad(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy, const float *x, float *dw,
                        const graft_grad_sink *sink) {
#if GRAFT_HAVE_AVX2_BUILD
    if (!graft_linear_avx2_available() || n <= 0 || in <= 0 || out <= 0) return false;
    wg2_job jb;
    if (!wg2_prepare(ctx, n, in, out, dy, x, sink ? (size_t)(SINK_ROWS * SINK_LD) : 0, &jb)) return false;
    jb.dw = dw;
    jb.sink = sink;
    if (sink) sink->begin(sink->user);
    graft_parallel_for(jb.slabs, 1, wg2_slab, &jb);
    return true;
#else
    (void)ctx, (void)n, (void)in, (void)out, (void)dy, (void)x, (void)dw, (void)sink;
    return false;
#endif
}

bool graft_linear_weight_grad_avx2(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy, const float *x,
                                   float *dw) {
    return weight_grad(ctx, n, in, out, dy, x, dw, NULL);
}

bool graft_linear_weight_grad_avx2_sink(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy,
                                        const float *x, const graft_grad_sink *sink) {
    return weight_grad(ctx, n, in, out, dy, x, NULL, sink);
}
