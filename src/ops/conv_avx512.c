/* conv_avx512.c — Conv2d forward as an implicit GEMM on AVX-512, run on graft's pool.
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

/* C [8, 48] (row stride ldc) = (accumulate ? C : 0) + A [8, kc] . B [kc, 48];
 * A's rows are lda floats apart (W in place), B is a packed panel. */
AVX512 static void kernel_8x48(int64_t kc, const float *a, int64_t lda, const float *b, float *c, int64_t ldc,
                               int accumulate) {
    __m512 c00, c01, c02, c10, c11, c12, c20, c21, c22, c30, c31, c32;
    __m512 c40, c41, c42, c50, c51, c52, c60, c61, c62, c70, c71, c72;
#define LOAD_ROW(r)                                                                                    \
    if (accumulate) {                                                                                  \
        c##r##0 = _mm512_loadu_ps(c + r * ldc);                                                        \
        c##r##1 = _mm512_loadu_ps(c + r * ldc + 16);                                                   \
        c##r##2 = _mm512_loadu_ps(c + r * ldc + 32);                                                   \
    } else {                                                                                           \
        c##r##0 = c##r##1 = c##r##2 = _mm512_setzero_ps();                                             \
    }
    LOAD_ROW(0) LOAD_ROW(1) LOAD_ROW(2) LOAD_ROW(3) LOAD_ROW(4) LOAD_ROW(5) LOAD_ROW(6) LOAD_ROW(7)
    const float *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda;
    const float *a4 = a + 4 * lda, *a5 = a + 5 * lda, *a6 = a + 6 * lda, *a7 = a + 7 * lda;
    for (int64_t k = 0; k < kc; k++) {
        /* the panel streams from L2: ask for the rows a few steps ahead */
        _mm_prefetch((const char *)(b + PREFETCH_ROWS * NR), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + PREFETCH_ROWS * NR + 16), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + PREFETCH_ROWS * NR + 32), _MM_HINT_T0);
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), b2 = _mm512_load_ps(b + 32);
        b += NR;
#define FMA_ROW(r)                                                                                     \
    {                                                                                                  \
        __m512 ar = _mm512_set1_ps(a##r[k]);                                                           \
        c##r##0 = _mm512_fmadd_ps(ar, b0, c##r##0);                                                    \
        c##r##1 = _mm512_fmadd_ps(ar, b1, c##r##1);                                                    \
        c##r##2 = _mm512_fmadd_ps(ar, b2, c##r##2);                                                    \
    }
        FMA_ROW(0) FMA_ROW(1) FMA_ROW(2) FMA_ROW(3) FMA_ROW(4) FMA_ROW(5) FMA_ROW(6) FMA_ROW(7)
#undef FMA_ROW
    }
#define STORE_ROW(r)                                                                                   \
    _mm512_storeu_ps(c + r * ldc, c##r##0);                                                            \
    _mm512_storeu_ps(c + r * ldc + 16, c##r##1);                                                       \
    _mm512_storeu_ps(c + r * ldc + 32, c##r##2);
    STORE_ROW(0) STORE_ROW(1) STORE_ROW(2) STORE_ROW(3) STORE_ROW(4) STORE_ROW(5) STORE_ROW(6) STORE_ROW(7)
#undef STORE_ROW
#undef LOAD_ROW
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

#endif
