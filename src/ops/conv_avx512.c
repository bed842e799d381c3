/* conv_avx512.c — Conv2d forward on AVX-512, run on graft's pool: an implicit GEMM for any
 * convolution, and Winograd F(2x2, 3x3) and F(4x4, 3x3) for 3x3, stride-1, padding-1 ones
 * (the second half of this file, which shares the first half's micro-kernel).
 *
 * The implicit GEMM:
 *
 * The same product as conv.c's lowered path, Y [oc, n*P] = W [oc, K] . col [K, n*P],
 * without ever writing col to memory: each thread packs the few columns it is about
 * to use straight from the NCHW input into a small panel that stays in cache (im2col
 * fused with the GEMM's own packing), multiplies, and writes its block of y with
 * the bias added.  The blocking follows GotoBLAS/BLIS:
 *
 *   for each block of NC output columns (images x positions), for each block of KC rows of K:
 *       pack col [KC, NC] into panels of NR columns      bp [NC/NR][KC][NR]
 *       for each panel, for each MR rows of W:            C [MR, NR] += W [MR, KC] . bp
 *   add the bias, copy C [oc, NC] into y [n, oc, oh, ow]
 *
 * The micro-kernel keeps an 8 x 48 block of C in 24 zmm registers and reads W in place
 * (rows K floats apart, one broadcast per row and k), so the weights are never copied.
 * Packing a 16-lane vector of col is one load when the 16 input floats are contiguous
 * (a stride-1 row segment), a masked load when padding cuts the segment, and a gather
 * otherwise (small maps where a vector spans rows or images).
 *
 * Sums run in float, in the order k = 0..K-1 for every output, with fused multiply-adds,
 * as a BLAS kernel would; tests hold the result to the double reference.
 *
 * Threads: the (column block, row range) work units are split over graft's pool: by
 * columns when there are plenty, else by rows of W so each thread has an equal share
 * (small deep layers).  No BLAS is involved.
 *
 * The kernel is compiled for x86-64 with GCC or clang (function-level target
 * attributes, so the rest of graft keeps the baseline ISA) and used only where the CPU
 * reports AVX-512F; -DGRAFT_NO_AVX512 leaves it out, and every convolution then takes
 * the GEMM path. */
#include "ops/conv_internal.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/error.h"
#include "core/cpu.h"
#include "core/threads.h"

#define MR 8          /* rows of W (output channels) per micro-kernel */
#define NR 48         /* columns (output positions) per micro-kernel: 3 zmm vectors */
/* KC and NC_PANELS were chosen by measuring VGG16's layers at 32x32, batch 64
 * (docs/performance.md): a KC x NR panel of 72 KiB is read from L2 at full speed by
 * the micro-kernel, and longer panels halve the reloads of C; C [oc, 96] for the
 * deepest layers (192 KiB) stays in L2 beside it.  KC 128..768 and 1..6 panels are
 * all within 15% of each other. */
#ifndef KC
#define KC 384        /* rows of K per packed panel */
#endif
#ifndef NC_PANELS
#define NC_PANELS 2   /* panels per column block */
#endif
#define NC (NR * NC_PANELS)
#define PREFETCH_ROWS 8 /* measured: 4..8 rows ahead gain a few percent, none lose */
#define LANES 16
#define CACHE_LINE_FLOATS 16

#if GRAFT_HAVE_AVX512_BUILD
#define HAVE_AVX512_BUILD 1
#include <immintrin.h>
#define AVX512 __attribute__((target("avx512f")))
#define AVX512_INLINE __attribute__((target("avx512f"), always_inline)) static inline
#else
#define HAVE_AVX512_BUILD 0
#endif

bool graft_conv2d_avx512_available(void) { return graft_cpu_avx512f(); }

/* Offsets into the input are int32 (gather indices); the whole input must fit. */
bool graft_conv2d_avx512_fits(const graft_conv2d_geom *g) {
    return g->n * g->c * g->h * g->w < INT32_MAX && g->c * g->kh * g->kw < INT32_MAX &&
           g->n * g->oh * g->ow < INT64_MAX / NR;
}

#if HAVE_AVX512_BUILD

/* ---- packing col from the image ------------------------------------------------ */

/* How one 16-lane vector of a col row is read from an input plane: the same for every
 * input channel, so it is worked out once per column block and kernel tap. */
enum lane_kind { LANES_ZERO, LANES_CONTIG, LANES_MASKED, LANES_GATHER };

typedef struct vec_plan {
    int32_t idx[LANES];   /* offset of each lane from its channel's plane (0 where invalid) */
    int32_t first;        /* CONTIG/MASKED: offset of lane 0 (lane l reads first + l) */
    __mmask16 mask;       /* valid lanes: inside the input, and a real column */
    uint16_t kind;        /* enum lane_kind */
} vec_plan;

/* Plans for NC_PANELS panels x taps x NR/LANES vectors, in floats of scratch. */
static size_t plan_floats(const graft_conv2d_geom *g) {
    return (size_t)(NC_PANELS * g->kh * g->kw * (NR / LANES)) * sizeof(vec_plan) / sizeof(float);
}

/* Floats of scratch per thread: the packed panels, the C block and the panels' plans,
 * plus alignment. */
static size_t thread_floats(const graft_conv2d_geom *g) {
    int64_t k = g->c * g->kh * g->kw, kc = k < KC ? k : KC;
    int64_t rows = (g->oc + MR - 1) / MR * MR;
    size_t f = (size_t)(kc * NC + rows * NC) + plan_floats(g) + CACHE_LINE_FLOATS;
    return (f + CACHE_LINE_FLOATS - 1) / CACHE_LINE_FLOATS * CACHE_LINE_FLOATS;
}

size_t graft_conv2d_avx512_workspace_floats(const graft_conv2d_geom *g) {
    return (size_t)graft_num_threads() * thread_floats(g) + CACHE_LINE_FLOATS;
}

/* Where output column j = (image, oy, ox) starts reading: image*c*h*w, and the
 * top-left input row and column of its window (negative inside the padding). */
typedef struct col_origin {
    int32_t image_off[NR], iy0[NR], ix0[NR];
    __mmask16 real[NR / LANES]; /* lanes whose column is < the column count */
} col_origin;

/* Origins of the NR columns from j0, stepping (image, oy, ox) instead of dividing. */
static void find_origins(const graft_conv2d_geom *g, int64_t j0, int64_t ncols, col_origin *o) {
    int64_t p = g->oh * g->ow, image = g->c * g->h * g->w;
    int64_t b = j0 / p, oy = j0 % p / g->ow, ox = j0 % g->ow;
    memset(o, 0, sizeof *o);
    for (int l = 0; l < NR && j0 + l < ncols; l++) {
        o->real[l / LANES] |= (__mmask16)(1u << (l % LANES));
        o->image_off[l] = (int32_t)(b * image);
        o->iy0[l] = (int32_t)(oy * g->sh - g->ph);
        o->ix0[l] = (int32_t)(ox * g->sw - g->pw);
        if (++ox == g->ow) {
            ox = 0;
            if (++oy == g->oh) oy = 0, b++;
        }
    }
}

/* The plan for lanes [v*16, v*16+16) of the col row of kernel tap (ki, kj). */
AVX512 static void plan_vector(const graft_conv2d_geom *g, const col_origin *o, int v, int32_t ki, int32_t kj,
                               vec_plan *pl) {
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __m512i iy = _mm512_add_epi32(_mm512_loadu_si512(o->iy0 + v * LANES), _mm512_set1_epi32(ki));
    __m512i ix = _mm512_add_epi32(_mm512_loadu_si512(o->ix0 + v * LANES), _mm512_set1_epi32(kj));
    __m512i zero = _mm512_setzero_si512();
    __mmask16 m = o->real[v];
    m = _mm512_mask_cmp_epi32_mask(m, iy, zero, _MM_CMPINT_NLT);
    m = _mm512_mask_cmp_epi32_mask(m, iy, _mm512_set1_epi32((int32_t)g->h), _MM_CMPINT_LT);
    m = _mm512_mask_cmp_epi32_mask(m, ix, zero, _MM_CMPINT_NLT);
    m = _mm512_mask_cmp_epi32_mask(m, ix, _mm512_set1_epi32((int32_t)g->w), _MM_CMPINT_LT);
    __m512i off = _mm512_add_epi32(_mm512_loadu_si512(o->image_off + v * LANES),
                                   _mm512_add_epi32(_mm512_mullo_epi32(iy, _mm512_set1_epi32((int32_t)g->w)), ix));
    off = _mm512_maskz_mov_epi32(m, off);
    _mm512_storeu_si512(pl->idx, off);
    pl->mask = m;
    if (!m) {
        pl->kind = LANES_ZERO;
        return;
    }
    int first = __builtin_ctz(m);
    pl->first = pl->idx[first] - first;
    /* contiguous: every valid lane reads first + lane */
    __mmask16 same = _mm512_mask_cmp_epi32_mask(m, _mm512_sub_epi32(off, lane), _mm512_set1_epi32(pl->first),
                                                _MM_CMPINT_EQ);
    pl->kind = same != m ? LANES_GATHER : m == 0xFFFF ? LANES_CONTIG : LANES_MASKED;
}

/* Plans of every tap for the NR columns from j0: plans [taps][NR/LANES]. */
AVX512 static void plan_panel(const graft_conv2d_geom *g, int64_t j0, int64_t ncols, vec_plan *plans) {
    col_origin o;
    find_origins(g, j0, ncols, &o);
    for (int32_t ki = 0; ki < g->kh; ki++)
        for (int32_t kj = 0; kj < g->kw; kj++)
            for (int v = 0; v < NR / LANES; v++)
                plan_vector(g, &o, v, ki, kj, plans + (ki * g->kw + kj) * (NR / LANES) + v);
}

/* Packs rows [k0, k0 + kc) of col for one panel, following its plans, into bp [kc][NR]. */
AVX512 static void pack_panel(const graft_conv2d_geom *g, const float *x, const vec_plan *plans, int64_t k0,
                              int64_t kc, float *bp) {
    int64_t taps = g->kh * g->kw, plane = g->h * g->w;
    for (int64_t r = 0; r < taps; r++) { /* k = ci * taps + r */
        int64_t ci_lo = k0 <= r ? 0 : (k0 - r + taps - 1) / taps;
        int64_t ci_hi = (k0 + kc - 1 - r) < 0 ? -1 : (k0 + kc - 1 - r) / taps;
        if (ci_hi >= g->c) ci_hi = g->c - 1;
        const vec_plan *pl = plans + r * (NR / LANES);
        for (int v = 0; v < NR / LANES; v++) {
            float *dst = bp + (ci_lo * taps + r - k0) * NR + v * LANES;
            const float *src = x + ci_lo * plane;
            int64_t step = taps * NR;
            switch (pl[v].kind) {
            case LANES_CONTIG:
                for (int64_t ci = ci_lo; ci <= ci_hi; ci++, src += plane, dst += step)
                    _mm512_store_ps(dst, _mm512_loadu_ps(src + pl[v].first));
                break;
            case LANES_MASKED: { /* lanes outside the mask are not read */
                __mmask16 m = pl[v].mask;
                for (int64_t ci = ci_lo; ci <= ci_hi; ci++, src += plane, dst += step)
                    _mm512_store_ps(dst, _mm512_maskz_loadu_ps(m, (const char *)src + (intptr_t)pl[v].first * 4));
                break;
            }
            case LANES_GATHER: {
                __m512i idx = _mm512_loadu_si512(pl[v].idx);
                __mmask16 m = pl[v].mask;
                for (int64_t ci = ci_lo; ci <= ci_hi; ci++, src += plane, dst += step)
                    _mm512_store_ps(dst, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, src, 4));
                break;
            }
            default:
                for (int64_t ci = ci_lo; ci <= ci_hi; ci++, dst += step) _mm512_store_ps(dst, _mm512_setzero_ps());
                break;
            }
        }
    }
}

/* ---- the micro-kernel ---------------------------------------------------------- */

/* C [8, 16 nv] (row stride ldc) = (accumulate ? C : 0) + A [8, kc] . B [kc, 16 nv] for
 * nv = 1..3 vectors: A's rows are lda floats apart (W in place), B is a packed panel whose
 * rows are NR floats apart.  nv is a constant at every call, so the accumulators stay in
 * registers. */
AVX512_INLINE void kernel_8xv(int nv, int64_t kc, const float *a, int64_t lda, const float *b, float *c, int64_t ldc,
                              bool accumulate) {
    __m512 acc[8][3];
    for (int r = 0; r < 8; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = accumulate ? _mm512_loadu_ps(c + r * ldc + v * LANES) : _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        __m512 bv[3];
        for (int v = 0; v < nv; v++) {
            /* the panel streams from L2: ask for the rows a few steps ahead */
            _mm_prefetch((const char *)(b + PREFETCH_ROWS * NR + v * LANES), _MM_HINT_T0);
            bv[v] = _mm512_load_ps(b + v * LANES);
        }
        b += NR;
        for (int r = 0; r < 8; r++) {
            __m512 ar = _mm512_set1_ps(a[r * lda + k]);
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < 8; r++)
        for (int v = 0; v < nv; v++) _mm512_storeu_ps(c + r * ldc + v * LANES, acc[r][v]);
}

/* The full panel: C [8, 48]. */
AVX512 static void kernel_8x48(int64_t kc, const float *a, int64_t lda, const float *b, float *c, int64_t ldc,
                               int accumulate) {
    kernel_8xv(3, kc, a, lda, b, c, ldc, accumulate != 0);
}

/* The lanes of a panel of cols tiles that kernel_8x_cols reads (and the input transforms
 * fill): the whole panel, or the vectors the narrow kernel takes. */
static inline int64_t panel_lanes(int64_t cols) {
    return cols <= 2 * LANES ? (cols + LANES - 1) / LANES * LANES : NR;
}

/* The products of a panel holding cols tiles (the rest zero), from zero: the whole panel,
 * or only its first vectors where a third or two thirds of it hold the tiles (64 tiles
 * are a panel of 48 and one of 16; the whole panel on the second did three times the
 * work). */
AVX512 static void kernel_8x_cols(int64_t cols, int64_t kc, const float *a, int64_t lda, const float *b, float *c,
                                  int64_t ldc) {
    if (cols <= LANES)
        kernel_8xv(1, kc, a, lda, b, c, ldc, false);
    else if (cols <= 2 * LANES)
        kernel_8xv(2, kc, a, lda, b, c, ldc, false);
    else
        kernel_8x48(kc, a, lda, b, c, ldc, 0);
}

/* ---- the driver ------------------------------------------------------------------ */

typedef struct direct_job {
    const graft_conv2d_geom *g;
    const float *x, *w, *b;
    float *y;
    float *scratch;          /* thread_floats(g) per thread, cache-line aligned */
    size_t scratch_stride;
    int64_t ncols;           /* n * P */
    int64_t col_blocks;      /* ceil(ncols / NC) */
    int64_t row_parts;       /* the rows of W split this many ways */
    int64_t units;           /* row_parts * col_blocks, row part major */
} direct_job;

/* Rows [m0, m1) of W, columns [j0, j0 + NC) of the output. */
AVX512 static void run_unit(const direct_job *j, float *bp, float *cb, vec_plan *plans, int64_t m0, int64_t m1,
                            int64_t j0) {
    const graft_conv2d_geom *g = j->g;
    int64_t k = g->c * g->kh * g->kw, p = g->oh * g->ow, taps = g->kh * g->kw;
    int64_t cols = j->ncols - j0 < NC ? j->ncols - j0 : NC;
    int64_t panels = (cols + NR - 1) / NR;
    float a_edge[MR * KC]; /* the last rows of W, zero-padded to MR */
    for (int64_t t = 0; t < panels; t++) plan_panel(g, j0 + t * NR, j->ncols, plans + t * taps * (NR / LANES));
    for (int64_t k0 = 0; k0 < k; k0 += KC) {
        int64_t kc = k - k0 < KC ? k - k0 : KC;
        int64_t full_end = m0 + (m1 - m0) / MR * MR; /* rows [full_end, m1) form a partial tile */
        if (full_end < m1) {
            memset(a_edge, 0, sizeof a_edge);
            for (int64_t r = 0; r < m1 - full_end; r++)
                memcpy(a_edge + r * kc, j->w + (full_end + r) * k + k0, (size_t)kc * sizeof(float));
        }
        for (int64_t t = 0; t < panels; t++) {
            /* the panel stays in cache while every row tile of W streams past it */
            float *panel = bp + t * kc * NR;
            pack_panel(g, j->x, plans + t * taps * (NR / LANES), k0, kc, panel);
            for (int64_t m = m0; m < m1; m += MR) {
                const float *a = m < full_end ? j->w + m * k + k0 : a_edge;
                int64_t lda = m < full_end ? k : kc;
                kernel_8x48(kc, a, lda, panel, cb + (m - m0) * NC + t * NR, NC, k0 > 0);
            }
        }
    }
    /* C [rows, cols] + bias -> y [n, oc, P], one run per (row, image) */
    for (int64_t m = m0; m < m1; m++) {
        const float *crow = cb + (m - m0) * NC;
        float bias = j->b ? j->b[m] : 0.0f;
        for (int64_t c0 = 0; c0 < cols;) {
            int64_t jj = j0 + c0, img = jj / p, q = jj % p;
            int64_t run = p - q < cols - c0 ? p - q : cols - c0;
            float *out = j->y + (img * g->oc + m) * p + q;
            if (g->relu) {
                /* graft_relu_forward's rule: positive values and NaN pass, the rest is +0 */
                for (int64_t i = 0; i < run; i++) {
                    float v = crow[c0 + i] + bias;
                    out[i] = (v > 0.0f || isnan(v)) ? v : 0.0f;
                }
            } else {
                for (int64_t i = 0; i < run; i++) out[i] = crow[c0 + i] + bias;
            }
            c0 += run;
        }
    }
}

/* One task per thread: [begin, end) is a single task index, which picks the scratch. */
AVX512 static void direct_task(void *arg, int64_t begin, int64_t end) {
    const direct_job *j = arg;
    int64_t threads = graft_num_threads();
    for (int64_t task = begin; task < end; task++) {
        float *bp = j->scratch + (size_t)task * j->scratch_stride;
        int64_t k = j->g->c * j->g->kh * j->g->kw, kc = k < KC ? k : KC;
        float *cb = bp + kc * NC;
        vec_plan *plans = (vec_plan *)(cb + (j->g->oc + MR - 1) / MR * MR * NC);
        int64_t u0 = j->units * task / threads, u1 = j->units * (task + 1) / threads;
        int64_t mtiles = (j->g->oc + MR - 1) / MR;
        for (int64_t u = u0; u < u1; u++) {
            int64_t part = u / j->col_blocks, blk = u % j->col_blocks;
            int64_t m0 = mtiles * part / j->row_parts * MR, m1 = mtiles * (part + 1) / j->row_parts * MR;
            if (m1 > j->g->oc) m1 = j->g->oc;
            if (m0 < m1) run_unit(j, bp, cb, plans, m0, m1, blk * NC);
        }
    }
}

graft_status graft_conv2d_forward_avx512(const graft_conv2d_geom *g, const float *x, const float *w,
                                         const float *b, float *y, float *scratch) {
    int threads = graft_num_threads();
    direct_job j = {.g = g, .x = x, .w = w, .b = b, .y = y};
    uintptr_t addr = (uintptr_t)scratch, align = CACHE_LINE_FLOATS * sizeof(float);
    j.scratch = (float *)((addr + align - 1) / align * align);
    j.scratch_stride = thread_floats(g);
    j.ncols = g->n * g->oh * g->ow;
    j.col_blocks = (j.ncols + NC - 1) / NC;
    int64_t mtiles = (g->oc + MR - 1) / MR;
    /* Plenty of column blocks: each thread takes whole blocks.  Few (deep layers on small
     * images): split the rows of W instead, so every thread has an equal share; each
     * then packs every block itself, which costs little next to the products. */
    j.row_parts = j.col_blocks >= 8 * threads ? 1 : (mtiles < threads ? mtiles : threads);
    j.units = j.row_parts * j.col_blocks;
    graft_parallel_for(threads, 1, direct_task, &j);
    return GRAFT_OK;
}

/* ---- Winograd F(2x2, 3x3) ----------------------------------------------------------
 *
 * For 3x3, stride-1, padding-1 convolutions (Lavin and Gray, "Fast Algorithms for
 * Convolutional Neural Networks", 2015).  The output is cut into 2x2 tiles; tile (ty, tx)
 * of output channel o is
 *     Y = A^T [ sum_ci (G g[o][ci] G^T) (.) (B^T d[ci] B) ] A
 * where (.) multiplies elementwise, g[o][ci] is the 3x3 kernel, d[ci] the 4x4 input patch
 * whose top-left pixel is (2ty - 1, 2tx - 1) (zero outside the image), and
 *     B^T = | 1  0 -1  0 |     G = | 1    0    0   |     A^T = | 1  1  1  0 |
 *           | 0  1  1  0 |         | 1/2  1/2  1/2 |           | 0  1 -1 -1 |
 *           | 0 -1  1  0 |         | 1/2 -1/2  1/2 |
 *           | 0  1  0 -1 |         | 0    0    1   |
 * (a correlation, as Conv2d computes).  The sum over ci is 16 independent GEMMs, one per
 * element e of the 4x4 transformed tile,
 *     M_e [oc, tiles] = U_e [oc, c] . V_e [c, tiles],   U = G g G^T,  V = B^T d B,
 * so each channel pair costs 16 multiply-adds per tile instead of the 36 of four outputs
 * computed directly: 2.25x less arithmetic, paid for by the transforms, which add and
 * subtract only.  The results differ from the direct sums by rounding (tests hold them to
 * the double reference, as they do the other kernels).
 *
 * Per call, the weights are transformed once into U [16][oc rounded up to MR][c].  Then
 * each thread takes blocks of NR tiles (any images, any positions), and for each:
 *   loads the tiles' 4x4 patches, 16 tiles of a channel at a time, one patch row at a time
 *   (for 16 neighbouring tiles of one row, three loads and permutes; otherwise one 4-float
 *   load per tile and a transpose, so that each vector lane is a tile), and transforms
 *   them into V [16][c][NR], each V_e a micro-kernel panel;
 *   for each block of WG_OB output channels: M_e = U_e . V_e with the 8 x 48 micro-kernel
 *   for the 16 e, then the output transform, the bias and the fused ReLU straight into y.
 * V and the block of M stay in L2; U streams from memory, as W does in the direct kernel.
 * Every output's sum is over ci = 0..c-1 in order, whatever the threads and the block, so
 * the results do not depend on the thread count or on the batch around an image. */

#define WG_OB 64 /* output channels per block of M */
/* Blocks of tiles per thread from which F(4x4, 3x3) gives each unit every output channel
 * (below it, the threads split the channels too, and each transforms the same patches).
 * F(2x2, 3x3) splits below 8 blocks per thread; F(4x4, 3x3), whose 6x6 patches cost more
 * to transform, below 2: VGG16's 8x8 layers at batch 64 (6 blocks for 2 threads) ran
 * 1.1-1.3x faster, forward and input gradient, than with 8 (the same sums either way). */
#define WG4_WHOLE 2

static int64_t rounded_oc(const graft_conv2d_geom *g) { return (g->oc + MR - 1) / MR * MR; }

/* Winograd F(t x t, 3x3) for an output tile t of 2 or 4: (t + 2)^2 transformed elements
 * per tile and channel pair. */
static int64_t wg_elements(int64_t tile) { return (tile + 2) * (tile + 2); }

/* The transformed weights are (t + 2)^2 / 9 the size of the weights, all held at once:
 * layers whose U would pass the conv workspace's default bound (64 MiB; VGG's and ResNet's
 * largest 3x3 layers need 16 MiB with F(2x2, 3x3)) take another kernel, the implicit GEMM
 * needing no copy of the weights. */
static bool wg_fits(const graft_conv2d_geom *g, int64_t tile) {
    return g->kh == 3 && g->kw == 3 && g->sh == 1 && g->sw == 1 && g->ph == 1 && g->pw == 1 &&
           graft_conv2d_avx512_fits(g) &&
           (g->oh + tile - 1) / tile * ((g->ow + tile - 1) / tile) * g->n < INT32_MAX / NR &&
           rounded_oc(g) <= (int64_t)(GRAFT_CONV2D_WORKSPACE_LIMIT_FLOATS / wg_elements(tile)) / g->c;
}

/* Each thread's V [elements][c][NR] and block of M [elements][WG_OB][NR]. */
static size_t wg_thread_floats(const graft_conv2d_geom *g, int64_t tile) {
    size_t f = (size_t)(wg_elements(tile) * (g->c + WG_OB) * NR);
    return (f + CACHE_LINE_FLOATS - 1) / CACHE_LINE_FLOATS * CACHE_LINE_FLOATS;
}

static size_t wg_workspace_floats(const graft_conv2d_geom *g, int64_t tile) {
    return (size_t)(wg_elements(tile) * rounded_oc(g) * g->c) +
           (size_t)graft_num_threads() * wg_thread_floats(g, tile) + 2 * CACHE_LINE_FLOATS;
}

bool graft_conv2d_winograd_fits(const graft_conv2d_geom *g) { return wg_fits(g, 2); }
size_t graft_conv2d_winograd_workspace_floats(const graft_conv2d_geom *g) { return wg_workspace_floats(g, 2); }

typedef struct wg_job {
    const graft_conv2d_geom *g;
    int64_t tile;              /* 2: F(2x2, 3x3) (wg_unit); 4: F(4x4, 3x3) (wg4_unit) */
    int64_t th, tw;            /* the tile grid: ceil(oh / tile) x ceil(ow / tile) */
    const float *x, *w, *b;
    float *y;
    float *u;                  /* U [16][ocp][c] */
    int64_t ocp;               /* oc rounded up to MR */
    float *scratch;            /* wg_thread_floats(g) per thread */
    size_t scratch_stride;
    int64_t tiles;             /* n * th * tw */
    int64_t blocks;            /* ceil(tiles / NR) */
    int64_t row_parts, units;
} wg_job;

/* U rows [begin, end) of every e: U_e[o][ci] = (G g[o][ci] G^T)[e], 16 channels at a time
 * (lane l takes channel ci0 + l, whose 3x3 kernel is 9 floats on from lane l - 1's);
 * rows from oc on are zero. */
AVX512 static void wg_weights_range(void *arg, int64_t begin, int64_t end) {
    const wg_job *j = arg;
    int64_t c = j->g->c, plane = j->ocp * c;
    const __m512i nine = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(9));
    const __m512 half = _mm512_set1_ps(0.5f);
    for (int64_t o = begin; o < end; o++)
        for (int64_t ci0 = 0; ci0 < c; ci0 += LANES) {
            __mmask16 m = c - ci0 >= LANES ? (__mmask16)0xFFFF : (__mmask16)((1u << (c - ci0)) - 1);
            float *dst = j->u + o * c + ci0;
            if (o >= j->g->oc) {
                for (int e = 0; e < 16; e++) _mm512_mask_storeu_ps(dst + e * plane, m, _mm512_setzero_ps());
                continue;
            }
            const float *k = j->w + (o * c + ci0) * 9;
            __m512 g[9], gg[4][3];
            for (int t = 0; t < 9; t++)
                g[t] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, _mm512_add_epi32(nine, _mm512_set1_epi32(t)),
                                                k, 4);
            for (int col = 0; col < 3; col++) { /* G g */
                __m512 a = g[col], b = g[3 + col], d = g[6 + col], ad = _mm512_add_ps(a, d);
                gg[0][col] = a;
                gg[1][col] = _mm512_mul_ps(half, _mm512_add_ps(ad, b));
                gg[2][col] = _mm512_mul_ps(half, _mm512_sub_ps(ad, b));
                gg[3][col] = d;
            }
            for (int r = 0; r < 4; r++) { /* (G g) G^T */
                __m512 a = gg[r][0], b = gg[r][1], d = gg[r][2], ad = _mm512_add_ps(a, d);
                _mm512_mask_storeu_ps(dst + (r * 4 + 0) * plane, m, a);
                _mm512_mask_storeu_ps(dst + (r * 4 + 1) * plane, m, _mm512_mul_ps(half, _mm512_add_ps(ad, b)));
                _mm512_mask_storeu_ps(dst + (r * 4 + 2) * plane, m, _mm512_mul_ps(half, _mm512_sub_ps(ad, b)));
                _mm512_mask_storeu_ps(dst + (r * 4 + 3) * plane, m, d);
            }
        }
}

/* Where the tiles of a block read and write: for tile l, the offset from x of its
 * patch's top-left pixel in channel 0 (channel ci's is ci * h * w further; in the padding
 * it lies outside the image, and only the rows and columns inside are read), which patch
 * rows and columns lie inside the image (bit r, bit col), the offset of its top-left
 * output in y for channel 0, and whether its right column and bottom row of outputs
 * exist.
 *
 * A group of 16 lanes that holds 16 consecutive tiles of one tile row (maps at least 32
 * wide) is a run: its patch rows are 34 consecutive pixels, read with three loads and
 * split into the four columns by permutes, and its outputs are two runs of 32. */
typedef struct wg_run {
    int64_t in_off;               /* offset of pixel (2ty - 1, 2tx0 - 1), as wg_tiles.in_off */
    int64_t out_off;              /* offset of output (2ty, 2tx0) for channel 0 */
    __mmask16 in_mask[3];         /* the pixels inside the row: [0, 16), [16, 32), [32, 34) on */
    __mmask16 out_mask[2];        /* the outputs inside the row: [0, 16), [16, 32) on */
    uint8_t rows;                 /* bit r: patch row r lies inside the image */
    uint8_t down;                 /* the second row of outputs exists */
} wg_run;

typedef struct wg_tiles {
    int64_t in_off[NR], out_off[NR];
    uint8_t rows[NR];    /* 0 for lanes past the last tile: they read zeros */
    __mmask16 cols[NR];
    uint8_t right[NR], down[NR];
    uint8_t is_run[NR / LANES];
    wg_run run[NR / LANES];
    int count;
} wg_tiles;

/* Bits i of [0, n) for which lo <= first + i < hi. */
static __mmask16 span_mask(int64_t first, int n, int64_t lo, int64_t hi) {
    unsigned m = 0;
    for (int i = 0; i < n; i++)
        if (first + i >= lo && first + i < hi) m |= 1u << i;
    return (__mmask16)m;
}

static void wg_plan_tiles(const wg_job *j, int64_t t0, wg_tiles *tp) {
    const graft_conv2d_geom *g = j->g;
    int64_t per_image = j->th * j->tw, p = g->oh * g->ow;
    memset(tp, 0, sizeof *tp);
    tp->count = (int)(j->tiles - t0 < NR ? j->tiles - t0 : NR);
    int64_t img = t0 / per_image, ty = t0 % per_image / j->tw, tx = t0 % j->tw;
    for (int l = 0; l < tp->count; l++) {
        int64_t iy = 2 * ty - 1, ix = 2 * tx - 1;
        tp->in_off[l] = img * g->c * g->h * g->w + iy * g->w + ix;
        for (int r = 0; r < 4; r++) {
            if (iy + r >= 0 && iy + r < g->h) tp->rows[l] |= (uint8_t)(1u << r);
            if (ix + r >= 0 && ix + r < g->w) tp->cols[l] |= (__mmask16)(1u << r);
        }
        tp->out_off[l] = img * g->oc * p + 2 * ty * g->ow + 2 * tx;
        tp->right[l] = 2 * tx + 1 < g->ow;
        tp->down[l] = 2 * ty + 1 < g->oh;
        if (l % LANES == 0 && l + LANES <= tp->count && tx + LANES <= j->tw) {
            wg_run *rn = &tp->run[l / LANES];
            tp->is_run[l / LANES] = 1;
            rn->in_off = tp->in_off[l];
            rn->out_off = tp->out_off[l];
            rn->in_mask[0] = span_mask(ix, 16, 0, g->w);
            rn->in_mask[1] = span_mask(ix + 16, 16, 0, g->w);
            rn->in_mask[2] = span_mask(ix + 32, 2, 0, g->w);
            rn->out_mask[0] = span_mask(2 * tx, 16, 0, g->ow);
            rn->out_mask[1] = span_mask(2 * tx + 16, 16, 0, g->ow);
            rn->rows = tp->rows[l];
            rn->down = tp->down[l];
        }
        if (++tx == j->tw) {
            tx = 0;
            if (++ty == j->th) ty = 0, img++;
        }
    }
}

/* Permute indices: the even and the odd floats of a 32-float pair of vectors; each lane
 * from the next one on (lane 15 from the second vector's lane 0 or 1); and the lanes of
 * two vectors interleaved, first half and second half. */
#define WG_EVEN _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0)
#define WG_ODD _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1)
#define WG_NEXT0 _mm512_set_epi32(16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1)
#define WG_NEXT1 _mm512_set_epi32(17, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1)
#define WG_ZIP_LO _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0)
#define WG_ZIP_HI _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8)

/* Row r of the patches of a run, from the channel plane x (rows w floats apart). */
AVX512 static void wg_load_run(const float *x, int64_t w, const wg_run *rn, int r, __m512 d[4]) {
    if (!((rn->rows >> r) & 1)) {
        d[0] = d[1] = d[2] = d[3] = _mm512_setzero_ps();
        return;
    }
    const float *src = x + rn->in_off + r * w; /* lane l's patch row is src[2l .. 2l + 3] */
    __m512 lo = _mm512_maskz_loadu_ps(rn->in_mask[0], src), hi = _mm512_maskz_loadu_ps(rn->in_mask[1], src + 16);
    __m512 ex = _mm512_maskz_loadu_ps(rn->in_mask[2], src + 32);
    d[0] = _mm512_permutex2var_ps(lo, WG_EVEN, hi);
    d[1] = _mm512_permutex2var_ps(lo, WG_ODD, hi);
    d[2] = _mm512_permutex2var_ps(d[0], WG_NEXT0, ex);
    d[3] = _mm512_permutex2var_ps(d[1], WG_NEXT1, ex);
}

/* z[a] holds four 4-float groups in its 128-bit lanes: group k of z[a] is item 4k + a.
 * Returns, in the same registers, element i of every item: lane l of z[i] is element i
 * of item l.  (Four 4x4 transposes side by side; applied twice it restores the input.) */
AVX512 static void wg_transpose(__m512 z[4]) {
    __m512 t0 = _mm512_unpacklo_ps(z[0], z[1]), t1 = _mm512_unpacklo_ps(z[2], z[3]);
    __m512 t2 = _mm512_unpackhi_ps(z[0], z[1]), t3 = _mm512_unpackhi_ps(z[2], z[3]);
    z[0] = _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0));
    z[1] = _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2));
    z[2] = _mm512_shuffle_ps(t2, t3, _MM_SHUFFLE(1, 0, 1, 0));
    z[3] = _mm512_shuffle_ps(t2, t3, _MM_SHUFFLE(3, 2, 3, 2));
}

/* Row r of the patches of the 16 tiles from l0, in the channel plane x (rows w floats
 * apart): lane l of d[col] is pixel (r, col) of tile l0 + l's patch, zero outside the
 * image.  Each patch row is one 4-float load, masked at the image's edges; the
 * transpose spreads the loads over the lanes. */
AVX512 static void wg_load_row(const float *x, int64_t w, const wg_tiles *tp, int l0, int r, __m512 d[4]) {
    for (int a = 0; a < 4; a++) { /* group k of d[a] is tile l0 + 4k + a */
        __m128 q[4];
        for (int k = 0; k < 4; k++) {
            int t = l0 + 4 * k + a;
            const float *src = x + tp->in_off[t] + r * w;
            if (!((tp->rows[t] >> r) & 1))
                q[k] = _mm_setzero_ps();
            else if (tp->cols[t] == 0xF)
                q[k] = _mm_loadu_ps(src);
            else /* at the left or right edge: the lanes outside the image are not read */
                q[k] = _mm512_castps512_ps128(_mm512_maskz_loadu_ps(tp->cols[t], src));
        }
        __m512 z = _mm512_castps128_ps512(q[0]);
        z = _mm512_insertf32x4(z, q[1], 1);
        z = _mm512_insertf32x4(z, q[2], 2);
        d[a] = _mm512_insertf32x4(z, q[3], 3);
    }
    wg_transpose(d);
}

/* V_e lanes [l0, l0 + 16) of one channel, V_e at v + e * v_stride, from the patches
 * d[row][col] of 16 tiles: V = B^T d B. */
AVX512 static void wg_input_transform(__m512 d[4][4], float *v, int64_t v_stride) {
    __m512 t[4][4];
    for (int col = 0; col < 4; col++) { /* B^T d, by columns */
        t[0][col] = _mm512_sub_ps(d[0][col], d[2][col]);
        t[1][col] = _mm512_add_ps(d[1][col], d[2][col]);
        t[2][col] = _mm512_sub_ps(d[2][col], d[1][col]);
        t[3][col] = _mm512_sub_ps(d[1][col], d[3][col]);
    }
    for (int r = 0; r < 4; r++) { /* (B^T d) B, by rows */
        _mm512_store_ps(v + (r * 4 + 0) * v_stride, _mm512_sub_ps(t[r][0], t[r][2]));
        _mm512_store_ps(v + (r * 4 + 1) * v_stride, _mm512_add_ps(t[r][1], t[r][2]));
        _mm512_store_ps(v + (r * 4 + 2) * v_stride, _mm512_sub_ps(t[r][2], t[r][1]));
        _mm512_store_ps(v + (r * 4 + 3) * v_stride, _mm512_sub_ps(t[r][1], t[r][3]));
    }
}

/* An output plus its bias, through the fused ReLU when asked, under graft_relu_forward's
 * rule (positive values and NaN pass, the rest is +0). */
AVX512_INLINE __m512 wg_finish(__m512 y, __m512 bias, bool relu) {
    y = _mm512_add_ps(y, bias);
    return relu ? _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_NLE_UQ), y) : y;
}

/* Output channels [o0, o1) of one block: m holds M_e [16][WG_OB][NR] for rows from o0.
 * Y = A^T M A, then wg_finish; each tile's 2x2 outputs are gathered
 * into one 4-float group by the transpose and written as two pairs (or singles at odd
 * edges). */
AVX512 static void wg_output_transform(const wg_job *j, const float *m, int64_t o0, int64_t o1,
                                       const wg_tiles *tp) {
    const graft_conv2d_geom *g = j->g;
    int64_t p = g->oh * g->ow, ow = g->ow;
    float out[4][LANES] __attribute__((aligned(64)));
    for (int64_t o = o0; o < o1; o++) {
        const float *mo = m + (o - o0) * NR;
        __m512 bias = _mm512_set1_ps(j->b ? j->b[o] : 0.0f);
        float *yo = j->y + o * p;
        for (int l0 = 0; l0 < tp->count; l0 += LANES) {
            __m512 s[2][4], y[4];
            for (int col = 0; col < 4; col++) { /* A^T M, by columns */
                __m512 m0 = _mm512_load_ps(mo + (0 * 4 + col) * WG_OB * NR + l0);
                __m512 m1 = _mm512_load_ps(mo + (1 * 4 + col) * WG_OB * NR + l0);
                __m512 m2 = _mm512_load_ps(mo + (2 * 4 + col) * WG_OB * NR + l0);
                __m512 m3 = _mm512_load_ps(mo + (3 * 4 + col) * WG_OB * NR + l0);
                s[0][col] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                s[1][col] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
            }
            for (int r = 0; r < 2; r++) { /* (A^T M) A, by rows: y[2r + col] is output (r, col) */
                y[r * 2 + 0] = wg_finish(_mm512_add_ps(_mm512_add_ps(s[r][0], s[r][1]), s[r][2]), bias, g->relu);
                y[r * 2 + 1] = wg_finish(_mm512_sub_ps(_mm512_sub_ps(s[r][1], s[r][2]), s[r][3]), bias, g->relu);
            }
            if (tp->is_run[l0 / LANES]) { /* output rows 2ty and 2ty + 1 from column 2tx0 on */
                const wg_run *rn = &tp->run[l0 / LANES];
                for (int r = 0; r < (rn->down ? 2 : 1); r++) {
                    float *dst = yo + rn->out_off + r * ow;
                    _mm512_mask_storeu_ps(dst, rn->out_mask[0], _mm512_permutex2var_ps(y[2 * r], WG_ZIP_LO, y[2 * r + 1]));
                    _mm512_mask_storeu_ps(dst + 16, rn->out_mask[1],
                                          _mm512_permutex2var_ps(y[2 * r], WG_ZIP_HI, y[2 * r + 1]));
                }
                continue;
            }
            wg_transpose(y); /* group k of y[a]: the 2x2 outputs of tile l0 + 4k + a */
            for (int a = 0; a < 4; a++) _mm512_store_ps(out[a], y[a]);
            for (int a = 0; a < 4; a++)
                for (int k = 0; k < 4; k++) {
                    int t = l0 + 4 * k + a;
                    if (t >= tp->count) continue;
                    __m128 q = _mm_load_ps(out[a] + 4 * k), q2 = _mm_movehl_ps(q, q);
                    float *dst = yo + tp->out_off[t];
                    if (tp->right[t]) {
                        _mm_storel_pi((__m64 *)dst, q);
                        if (tp->down[t]) _mm_storel_pi((__m64 *)(dst + ow), q2);
                    } else {
                        _mm_store_ss(dst, q);
                        if (tp->down[t]) _mm_store_ss(dst + ow, q2);
                    }
                }
        }
    }
}

/* M_e = U_e . V_e for the e < elements and the output channels [o0, o1) (a block of
 * WG_OB at most), on the micro-kernel: U's rows read in place, V_e one panel of NR tiles,
 * M into mb [elements][WG_OB][NR]. */
AVX512 static void wg_products(const wg_job *j, int elements, const float *v, float *mb, int64_t o0, int64_t o1,
                               int64_t cols) {
    int64_t c = j->g->c, rows = (o1 - o0 + MR - 1) / MR * MR; /* U's padding rows keep whole tiles */
    for (int e = 0; e < elements; e++) {
        const float *ue = j->u + e * j->ocp * c, *ve = v + e * c * NR;
        for (int64_t r = 0; r < rows; r += MR)
            kernel_8x_cols(cols, c, ue + (o0 + r) * c, c, ve, mb + (e * WG_OB + r) * NR, NR);
    }
}

/* Tiles [blk * NR, +NR), output channels [m0, m1). */
AVX512 static void wg_unit(const wg_job *j, float *scratch, int64_t m0, int64_t m1, int64_t blk) {
    const graft_conv2d_geom *g = j->g;
    int64_t c = g->c, plane = g->h * g->w;
    float *v = scratch, *mb = v + 16 * c * NR;
    wg_tiles tp;
    wg_plan_tiles(j, blk * NR, &tp);
    for (int64_t ci = 0; ci < c; ci++) /* every lane read, so lanes past the last tile hold zeros */
        for (int l0 = 0; l0 < panel_lanes(tp.count); l0 += LANES) {
            __m512 d[4][4];
            for (int r = 0; r < 4; r++)
                if (tp.is_run[l0 / LANES])
                    wg_load_run(j->x + ci * plane, g->w, &tp.run[l0 / LANES], r, d[r]);
                else
                    wg_load_row(j->x + ci * plane, g->w, &tp, l0, r, d[r]);
            wg_input_transform(d, v + ci * NR + l0, c * NR);
        }
    for (int64_t o0 = m0; o0 < m1; o0 += WG_OB) {
        int64_t o1 = o0 + WG_OB < m1 ? o0 + WG_OB : m1;
        wg_products(j, 16, v, mb, o0, o1, tp.count);
        wg_output_transform(j, mb, o0, o1, &tp);
    }
}

AVX512 static void wg4_unit(const wg_job *j, float *scratch, int64_t m0, int64_t m1, int64_t blk);

AVX512 static void wg_task(void *arg, int64_t begin, int64_t end) {
    const wg_job *j = arg;
    int64_t threads = graft_num_threads(), mtiles = j->ocp / MR;
    for (int64_t task = begin; task < end; task++) {
        float *scratch = j->scratch + (size_t)task * j->scratch_stride;
        int64_t u0 = j->units * task / threads, u1 = j->units * (task + 1) / threads;
        for (int64_t u = u0; u < u1; u++) {
            int64_t part = u / j->blocks, blk = u % j->blocks;
            int64_t m0 = mtiles * part / j->row_parts * MR, m1 = mtiles * (part + 1) / j->row_parts * MR;
            if (m1 > j->g->oc) m1 = j->g->oc;
            if (m0 < m1 && j->tile == 4)
                wg4_unit(j, scratch, m0, m1, blk);
            else if (m0 < m1)
                wg_unit(j, scratch, m0, m1, blk);
        }
    }
}

AVX512 static void wg4_weights_range(void *arg, int64_t begin, int64_t end);

/* U for g's weights w into u (wg_elements(tile) * rounded_oc(g) * c floats), on the pool. */
static void wg_prepare(const graft_conv2d_geom *g, int64_t tile, const float *w, float *u) {
    wg_job j = {.g = g, .tile = tile, .w = w, .u = u, .ocp = rounded_oc(g)};
    graft_parallel_for(j.ocp, 1 + 4096 / (9 * g->c), tile == 4 ? wg4_weights_range : wg_weights_range, &j);
}

/* Runs F(tile x tile, 3x3) on scratch (wg_workspace_floats): lays out U, then each
 * thread's part, transforms the weights and runs the tiles on the pool.  With u, U
 * prepared before (wg_prepare), scratch holds the threads' parts only. */
static void wg_convolve(const graft_conv2d_geom *g, int64_t tile, const float *x, const float *w, const float *b,
                        float *y, float *scratch, const float *u) {
    wg_job j = {.g = g, .tile = tile, .th = (g->oh + tile - 1) / tile, .tw = (g->ow + tile - 1) / tile, .x = x,
                .w = w, .b = b, .y = y, .ocp = rounded_oc(g)};
    int threads = graft_num_threads();
    uintptr_t addr = (uintptr_t)scratch, align = CACHE_LINE_FLOATS * sizeof(float);
    j.u = u ? (float *)u : (float *)((addr + align - 1) / align * align); /* the kernels only read U */
    if (!u) addr = (uintptr_t)(j.u + (size_t)(wg_elements(tile) * j.ocp * g->c));
    j.scratch = (float *)((addr + align - 1) / align * align);
    j.scratch_stride = wg_thread_floats(g, tile);
    if (!u) wg_prepare(g, tile, w, j.u);
    j.tiles = g->n * j.th * j.tw;
    j.blocks = (j.tiles + NR - 1) / NR;
    int64_t mtiles = j.ocp / MR;
    /* As the direct kernel: few blocks of tiles (deep layers, small images) split the
     * output channels too, so that every thread has a share. */
    j.row_parts = j.blocks >= (tile == 4 ? WG4_WHOLE : 8) * threads ? 1 : (mtiles < threads ? mtiles : threads);
    j.units = j.row_parts * j.blocks;
    graft_parallel_for(threads, 1, wg_task, &j);
}

graft_status graft_conv2d_forward_winograd(const graft_conv2d_geom *g, const float *x, const float *w,
                                           const float *b, float *y, float *scratch) {
    if (!wg_fits(g, 2))
        return graft_error(GRAFT_ERR_UNSUPPORTED, "conv2d: Winograd needs a 3x3, stride-1, padding-1 kernel");
    wg_convolve(g, 2, x, w, b, y, scratch, NULL);
    return GRAFT_OK;
}

/* ---- Winograd F(4x4, 3x3) -----------------------------------------------------------
 *
 * The same scheme with 6x6 patches and 4x4 tiles of outputs, from Lavin and Gray's
 * points 0, 1, -1, 2, -2 and infinity:
 *
 *   Y = A^T [(G g G^T) .* (B^T d B)] A
 *
 *         | 4  0 -5  0  1  0 |         |  1/4    0     0  |
 *         | 0 -4 -4  1  1  0 |         | -1/6 -1/6  -1/6  |         | 1  1  1  1  1  0 |
 *   B^T = | 0  4 -4 -1  1  0 |     G = | -1/6  1/6  -1/6  |   A^T = | 0  1 -1  2 -2  0 |
 *         | 0 -2 -1  2  1  0 |         | 1/24  1/12  1/6  |         | 0  1  1  4  4  0 |
 *         | 0  2 -1 -2  1  0 |         | 1/24 -1/12  1/6  |         | 0  1 -1  8 -8  1 |
 *         | 0  4  0 -5  0  1 |         |   0     0     1  |
 *
 * 36 products per channel give 16 outputs: 2.25 multiplications per output against
 * F(2x2, 3x3)'s 4 and the direct sum's 9.  The larger coefficients cost precision:
 * tests hold the results to the same bound against the double reference.  U is
 * [36][oc rounded up to MR][c], V [36][c][NR] per thread, a block of M [36][WG_OB][NR];
 * the blocking, the micro-kernel and the split between threads are F(2x2, 3x3)'s.  A
 * patch's pixels are gathered, lane l of the vector for patch pixel (r, col) reading
 * tile l's, with the lanes in the padding masked off; each sum over ci runs in order,
 * so an output does not depend on the thread count or on the batch. */

#define W4_E 36 /* wg_elements(4): 6 x 6 */

bool graft_conv2d_winograd4_fits(const graft_conv2d_geom *g) { return wg_fits(g, 4); }
size_t graft_conv2d_winograd4_workspace_floats(const graft_conv2d_geom *g) { return wg_workspace_floats(g, 4); }

/* G v for the three taps a, b, d of a kernel column (or row), into t [6]. */
AVX512_INLINE void wg4_g(__m512 a, __m512 b, __m512 d, __m512 t[6]) {
    const __m512 q = _mm512_set1_ps(0.25f), s6 = _mm512_set1_ps(1.0f / 6), s12 = _mm512_set1_ps(1.0f / 12),
                 s24 = _mm512_set1_ps(1.0f / 24);
    __m512 ad = _mm512_add_ps(a, d), d6 = _mm512_mul_ps(d, s6);
    t[0] = _mm512_mul_ps(a, q);
    t[1] = _mm512_mul_ps(_mm512_add_ps(ad, b), _mm512_set1_ps(-1.0f / 6));
    t[2] = _mm512_mul_ps(_mm512_sub_ps(b, ad), s6);
    t[3] = _mm512_fmadd_ps(a, s24, _mm512_fmadd_ps(b, s12, d6));
    t[4] = _mm512_fmadd_ps(a, s24, _mm512_fnmadd_ps(b, s12, d6));
    t[5] = d;
}

/* U rows [begin, end) of every e: U_e[o][ci] = (G g[o][ci] G^T)[e], 16 channels at a time,
 * as wg_weights_range. */
AVX512 static void wg4_weights_range(void *arg, int64_t begin, int64_t end) {
    const wg_job *j = arg;
    int64_t c = j->g->c, plane = j->ocp * c;
    const __m512i nine = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(9));
    for (int64_t o = begin; o < end; o++)
        for (int64_t ci0 = 0; ci0 < c; ci0 += LANES) {
            __mmask16 m = c - ci0 >= LANES ? (__mmask16)0xFFFF : (__mmask16)((1u << (c - ci0)) - 1);
            float *dst = j->u + o * c + ci0;
            if (o >= j->g->oc) {
                for (int e = 0; e < W4_E; e++) _mm512_mask_storeu_ps(dst + e * plane, m, _mm512_setzero_ps());
                continue;
            }
            const float *k = j->w + (o * c + ci0) * 9;
            __m512 g[9], gg[3][6], row[6];
            for (int t = 0; t < 9; t++)
                g[t] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, _mm512_add_epi32(nine, _mm512_set1_epi32(t)),
                                                k, 4);
            for (int col = 0; col < 3; col++) wg4_g(g[col], g[3 + col], g[6 + col], gg[col]); /* G g, by columns */
            for (int r = 0; r < 6; r++) { /* (G g) G^T, by rows */
                wg4_g(gg[0][r], gg[1][r], gg[2][r], row);
                for (int e = 0; e < 6; e++) _mm512_mask_storeu_ps(dst + (r * 6 + e) * plane, m, row[e]);
            }
        }
}

/* Where the tiles of a block read and write: for tile l, the offset from x of its patch's
 * top-left pixel (4ty - 1, 4tx - 1) in channel 0 (in the padding it lies outside the
 * image), for each lane group and patch pixel the lanes whose pixel lies inside the
 * image, the offset of the tile's top-left output in y for channel 0, and how many of
 * its output rows and columns exist (0 past the last tile). */
typedef struct wg4_tiles {
    int32_t in_off[NR];
    int64_t out_off[NR];
    __mmask16 inside[NR / LANES][6][6];
    uint8_t out_rows[NR], out_cols[NR];
    int count;
} wg4_tiles;

static void wg4_plan_tiles(const wg_job *j, int64_t t0, wg4_tiles *tp) {
    const graft_conv2d_geom *g = j->g;
    int64_t per_image = j->th * j->tw, p = g->oh * g->ow;
    memset(tp, 0, sizeof *tp);
    tp->count = (int)(j->tiles - t0 < NR ? j->tiles - t0 : NR);
    int64_t img = t0 / per_image, ty = t0 % per_image / j->tw, tx = t0 % j->tw;
    for (int l = 0; l < tp->count; l++) {
        int64_t iy = 4 * ty - 1, ix = 4 * tx - 1;
        tp->in_off[l] = (int32_t)(img * g->c * g->h * g->w + iy * g->w + ix);
        for (int r = 0; r < 6; r++)
            for (int col = 0; col < 6; col++)
                if (iy + r >= 0 && iy + r < g->h && ix + col >= 0 && ix + col < g->w)
                    tp->inside[l / LANES][r][col] |= (__mmask16)(1u << (l % LANES));
        tp->out_off[l] = img * g->oc * p + 4 * ty * g->ow + 4 * tx;
        tp->out_rows[l] = (uint8_t)(g->oh - 4 * ty < 4 ? g->oh - 4 * ty : 4);
        tp->out_cols[l] = (uint8_t)(g->ow - 4 * tx < 4 ? g->ow - 4 * tx : 4);
        if (++tx == j->tw) {
            tx = 0;
            if (++ty == j->th) ty = 0, img++;
        }
    }
}

/* B^T d for one column (or row) d [6] of 16 patches, into t [6]. */
AVX512_INLINE void wg4_bt(const __m512 d[6], __m512 t[6]) {
    const __m512 four = _mm512_set1_ps(4.0f), five = _mm512_set1_ps(5.0f), two = _mm512_set1_ps(2.0f);
    __m512 a = _mm512_fnmadd_ps(four, d[2], d[4]); /* d4 - 4 d2 */
    __m512 b = _mm512_fnmadd_ps(four, d[1], d[3]); /* d3 - 4 d1 */
    __m512 c = _mm512_sub_ps(d[4], d[2]);
    __m512 e = _mm512_mul_ps(two, _mm512_sub_ps(d[3], d[1]));
    t[0] = _mm512_fmadd_ps(four, d[0], _mm512_fnmadd_ps(five, d[2], d[4]));
    t[1] = _mm512_add_ps(a, b);
    t[2] = _mm512_sub_ps(a, b);
    t[3] = _mm512_add_ps(c, e);
    t[4] = _mm512_sub_ps(c, e);
    t[5] = _mm512_fmadd_ps(four, d[1], _mm512_fnmadd_ps(five, d[3], d[5]));
}

/* V_e lanes of lane group grp of one channel (the plane xc), V_e at v + e * v_stride:
 * V = B^T d B. */
AVX512 static void wg4_input_transform(const float *xc, int64_t w, const wg4_tiles *tp, int grp, float *v,
                                       int64_t v_stride) {
    __m512i base = _mm512_loadu_si512(tp->in_off + grp * LANES);
    __m512 t[6][6]; /* t[col][r]: (B^T d) by columns */
    for (int col = 0; col < 6; col++) {
        __m512 d[6];
        for (int r = 0; r < 6; r++) {
            __mmask16 k = tp->inside[grp][r][col];
            __m512i at = _mm512_add_epi32(base, _mm512_set1_epi32((int32_t)(r * w + col)));
            d[r] = k ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, at, xc, 4) : _mm512_setzero_ps();
        }
        wg4_bt(d, t[col]);
    }
    for (int r = 0; r < 6; r++) { /* (B^T d) B, by rows */
        __m512 row[6], out[6];
        for (int col = 0; col < 6; col++) row[col] = t[col][r];
        wg4_bt(row, out);
        for (int e = 0; e < 6; e++) _mm512_store_ps(v + (r * 6 + e) * v_stride, out[e]);
    }
}

/* A^T m for one column (or row) m [6], into s [4]. */
AVX512_INLINE void wg4_at(const __m512 m[6], __m512 s[4]) {
    __m512 s12 = _mm512_add_ps(m[1], m[2]), d12 = _mm512_sub_ps(m[1], m[2]);
    __m512 s34 = _mm512_add_ps(m[3], m[4]), d34 = _mm512_sub_ps(m[3], m[4]);
    s[0] = _mm512_add_ps(_mm512_add_ps(m[0], s12), s34);
    s[1] = _mm512_fmadd_ps(_mm512_set1_ps(2.0f), d34, d12);
    s[2] = _mm512_fmadd_ps(_mm512_set1_ps(4.0f), s34, s12);
    s[3] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0f), d34, d12), m[5]);
}

/* Output channels [o0, o1) of one block: m holds M_e [36][WG_OB][NR] for rows from o0.
 * Y = A^T M A, then wg_finish; each row of a
 * tile's outputs is gathered into one 4-float group by the transpose and written as
 * one store (masked at the right edge). */
AVX512 static void wg4_output_transform(const wg_job *j, const float *m, int64_t o0, int64_t o1,
                                        const wg4_tiles *tp) {
    const graft_conv2d_geom *g = j->g;
    int64_t p = g->oh * g->ow, ow = g->ow;
    float out[4][LANES] __attribute__((aligned(64)));
    for (int64_t o = o0; o < o1; o++) {
        const float *mo = m + (o - o0) * NR;
        __m512 bias = _mm512_set1_ps(j->b ? j->b[o] : 0.0f);
        float *yo = j->y + o * p;
        for (int l0 = 0; l0 < tp->count; l0 += LANES) {
            __m512 s[6][4]; /* s[col][i]: (A^T M) by columns */
            for (int col = 0; col < 6; col++) {
                __m512 mc[6];
                for (int r = 0; r < 6; r++) mc[r] = _mm512_load_ps(mo + (r * 6 + col) * WG_OB * NR + l0);
                wg4_at(mc, s[col]);
            }
            for (int i = 0; i < 4; i++) { /* (A^T M) A, by rows: y[col] is output (i, col) */
                __m512 row[6], y[4];
                for (int col = 0; col < 6; col++) row[col] = s[col][i];
                wg4_at(row, y);
                for (int col = 0; col < 4; col++) y[col] = wg_finish(y[col], bias, g->relu);
                wg_transpose(y); /* group k of y[a]: row i of the outputs of tile l0 + 4k + a */
                for (int a = 0; a < 4; a++) _mm512_store_ps(out[a], y[a]);
                for (int a = 0; a < 4; a++)
                    for (int k = 0; k < 4; k++) {
                        int t = l0 + 4 * k + a;
                        if (t >= tp->count || i >= tp->out_rows[t]) continue;
                        float *dst = yo + tp->out_off[t] + i * ow;
                        if (tp->out_cols[t] == 4)
                            _mm_storeu_ps(dst, _mm_load_ps(out[a] + 4 * k));
                        else
                            _mm512_mask_storeu_ps(dst, (__mmask16)((1u << tp->out_cols[t]) - 1),
                                                  _mm512_castps128_ps512(_mm_load_ps(out[a] + 4 * k)));
                    }
            }
        }
    }
}

/* Tiles [blk * NR, +NR), output channels [m0, m1). */
AVX512 static void wg4_unit(const wg_job *j, float *scratch, int64_t m0, int64_t m1, int64_t blk) {
    const graft_conv2d_geom *g = j->g;
    int64_t c = g->c, plane = g->h * g->w;
    float *v = scratch, *mb = v + W4_E * c * NR;
    wg4_tiles tp;
    wg4_plan_tiles(j, blk * NR, &tp);
    for (int64_t ci = 0; ci < c; ci++) /* every lane read, so lanes past the last tile hold zeros */
        for (int grp = 0; grp < panel_lanes(tp.count) / LANES; grp++)
            wg4_input_transform(j->x + ci * plane, g->w, &tp, grp, v + ci * NR + grp * LANES, c * NR);
    for (int64_t o0 = m0; o0 < m1; o0 += WG_OB) {
        int64_t o1 = o0 + WG_OB < m1 ? o0 + WG_OB : m1;
        wg_products(j, W4_E, v, mb, o0, o1, tp.count);
        wg4_output_transform(j, mb, o0, o1, &tp);
    }
}

graft_status graft_conv2d_forward_winograd4(const graft_conv2d_geom *g, const float *x, const float *w,
                                            const float *b, float *y, float *scratch) {
    if (!wg_fits(g, 4))
        return graft_error(GRAFT_ERR_UNSUPPORTED, "conv2d: Winograd needs a 3x3, stride-1, padding-1 kernel");
    wg_convolve(g, 4, x, w, b, y, scratch, NULL);
    return GRAFT_OK;
}

/* ---- weights transformed once ------------------------------------------------------- */

static bool wg_tile_fits(const graft_conv2d_geom *g, int tile) { return (tile == 2 || tile == 4) && wg_fits(g, tile); }

size_t graft_conv2d_winograd_weights_floats(const graft_conv2d_geom *g, int tile) {
    return (size_t)(wg_elements(tile) * rounded_oc(g) * g->c);
}

size_t graft_conv2d_winograd_prepared_workspace_floats(const graft_conv2d_geom *g, int tile) {
    return (size_t)graft_num_threads() * wg_thread_floats(g, tile) + CACHE_LINE_FLOATS;
}

graft_status graft_conv2d_winograd_prepare(const graft_conv2d_geom *g, int tile, const float *w, float *u) {
    if (!wg_tile_fits(g, tile))
        return graft_error(GRAFT_ERR_UNSUPPORTED, "conv2d: Winograd needs a 3x3, stride-1, padding-1 kernel");
    wg_prepare(g, tile, w, u);
    return GRAFT_OK;
}

graft_status graft_conv2d_forward_winograd_prepared(const graft_conv2d_geom *g, int tile, const float *x,
                                                    const float *u, const float *b, float *y, float *scratch) {
    if (!wg_tile_fits(g, tile))
        return graft_error(GRAFT_ERR_UNSUPPORTED, "conv2d: Winograd needs a 3x3, stride-1, padding-1 kernel");
    wg_convolve(g, tile, x, NULL, b, y, scratch, u);
    return GRAFT_OK;
}

#else

size_t graft_conv2d_avx512_workspace_floats(const graft_conv2d_geom *g) {
    (void)g;
    return 0;
}

graft_status graft_conv2d_forward_avx512(const graft_conv2d_geom *g, const float *x, const float *w,
                                         const float *b, float *y, float *scratch) {
    (void)g, (void)x, (void)w, (void)b, (void)y, (void)scratch;
    return graft_error(GRAFT_ERR_UNSUPPORTED, "conv2d: this build has no AVX-512 kernel");
}

size_t graft_conv2d_winograd_workspace_floats(const graft_conv2d_geom *g) {
    (void)g;
    return 0;
}

bool graft_conv2d_winograd_fits(const graft_conv2d_geom *g) {
    (void)g;
    return false;
}

graft_status graft_conv2d_forward_winograd(const graft_conv2d_geom *g, const float *x, const float *w,
                                           const float *b, float *y, float *scratch) {
    (void)g, (void)x, (void)w, (void)b, (void)y, (void)scratch;
    return graft_error(GRAFT_ERR_UNSUPPORTED, "conv2d: this build has no AVX-512 kernel");
}

/* F(4x4, 3x3): as F(2x2, 3x3), absent. */
size_t graft_conv2d_winograd4_workspace_floats(const graft_conv2d_geom *g) {
    return graft_conv2d_winograd_workspace_floats(g);
}

bool graft_conv2d_winograd4_fits(const graft_conv2d_geom *g) { return graft_conv2d_winograd_fits(g); }

graft_status graft_conv2d_forward_winograd4(const graft_conv2d_geom *g, const float *x, const float *w,
                                            const float *b, float *y, float *scratch) {
    return graft_conv2d_forward_winograd(g, x, w, b, y, scratch);
}

size_t graft_conv2d_winograd_weights_floats(const graft_conv2d_geom *g, int tile) {
    (void)g, (void)tile;
    return 0;
}

size_t graft_conv2d_winograd_prepared_workspace_floats(const graft_conv2d_geom *g, int tile) {
    (void)g, (void)tile;
    return 0;
}

graft_status graft_conv2d_winograd_prepare(const graft_conv2d_geom *g, int tile, const float *w, float *u) {
    (void)g, (void)tile, (void)w, (void)u;
    return graft_error(GRAFT_ERR_UNSUPPORTED, "conv2d: this build has no AVX-512 kernel");
}

graft_status graft_conv2d_forward_winograd_prepared(const graft_conv2d_geom *g, int tile, const float *x,
                                                    const float *u, const float *b, float *y, float *scratch) {
    (void)g, (void)tile, (void)x, (void)u, (void)b, (void)y, (void)scratch;
    return graft_error(GRAFT_ERR_UNSUPPORTED, "conv2d: this build has no AVX-512 kernel");
}

#endif
