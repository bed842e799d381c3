/* linear_avx512.c — Linear's forward for small batches on AVX-512, on graft's pool.
 *
 * The recipe trains a classifier on batches of 64 rows against weights of 4096 x 4096
 * floats.  SGEMM packs the weights on every call, and with only 64 rows on the other
 * side the packing and the thin panels cost more than the arithmetic: OpenBLAS reaches
 * about a third of its peak on these shapes (docs/performance.md).  Here the small
 * operand (the batch) is packed instead and the weights are read in place, once per
 * 64 rows:
 *
 *   y [m, j] = sum_p x [m, p] w [j, p]  (+ b [j])
 *
 *   for each chunk of 64 rows of x, for each block of PB inputs p:
 *       pack x [64, PB] transposed into at [PB][64]        (zero rows past n)
 *       for each block of JB outputs, for each JR outputs:  ct [JR, 64] += w [JR, PB] . at
 *   write ct transposed into y, adding the bias
 *
 * The micro-kernel keeps ct [6, 64] in 24 zmm registers, loads a row of at (four
 * vectors) and broadcasts w [j, p] for its six outputs, six rows of the weight streamed
 * side by side.
 *
 * Every output is summed in one order, p ascending from zero, with fused multiply-adds,
 * as a BLAS kernel would; tests hold the result to the double reference and to the
 * BLAS path.  Threads split the outputs, so each element is the same sum for any thread
 * count.
 *
 * The gradients stay with OpenBLAS: kernels of the same design for dy w and dy^T x
 * measured no faster than SGEMM on these shapes (docs/performance.md).
 *
 * Compiled for x86-64 with GCC or clang (function-level target attributes, the rest of
 * graft keeps the baseline ISA) and used only where the CPU reports AVX-512F;
 * -DGRAFT_NO_AVX512 leaves it out and Linear takes the BLAS path. */
#include "ops/linear_internal.h"

#include <stdlib.h>

#include "core/threads.h"
#include "graft/graft.h"

#define LANES 16
#define MV 4                  /* vectors of batch rows per tile */
#define MB (MV * LANES)       /* batch rows per chunk: 64 */
#define JR 6                  /* outputs per micro-kernel tile: 6 x 4 = 24 accumulators */
/* Inputs per packed panel: 64 KiB of the batch, which stays in L2.  Measured on the
 * recipe's 4096 x 4096 layer (bench/linear_layers.c): 256 was fastest, 128 and 512
 * within 25 % (smaller panels reload the partial sums more often). */
#define PB 256
#define ALIGN_BYTES 64

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(GRAFT_NO_AVX512)
#define HAVE_AVX512_BUILD 1
#include <immintrin.h>
#define AVX512 __attribute__((target("avx512f")))
#define AVX512_INLINE __attribute__((target("avx512f"), always_inline)) static inline
#else
#define HAVE_AVX512_BUILD 0
#endif

bool graft_linear_avx512_available(void) {
#if HAVE_AVX512_BUILD
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return false;
#endif
}

#if HAVE_AVX512_BUILD

typedef struct forward_job {
    int64_t n, in, out, tiles, slabs;
    const float *x, *w, *b;
    float *y;
    float *scratch; /* a panel of PB x MB per slab, then the partial sums yt [out][MB] */
} forward_job;

/* xt [pn][MB] = x [mn, pn]^T (row stride ldx), rows past mn zero. */
static void pack_transposed(int64_t mn, int64_t pn, const float *x, int64_t ldx, float *xt) {
    for (int64_t m = 0; m < mn; m++) {
        const float *row = x + m * ldx;
        for (int64_t p = 0; p < pn; p++) xt[p * MB + m] = row[p];
    }
    for (int64_t m = mn; m < MB; m++)
        for (int64_t p = 0; p < pn; p++) xt[p * MB + m] = 0.0f;
}

/* yt [jr][MB] (+)= sum_p w [j, p] xt [p][.] over pn inputs (weight rows ldw apart);
 * starts from zero when first. */
AVX512_INLINE void forward_tile(int jr, bool first, int64_t pn, const float *w, int64_t ldw, const float *xt,
                                float *yt) {
    __m512 c[JR][MV];
    for (int j = 0; j < jr; j++)
        for (int v = 0; v < MV; v++) c[j][v] = first ? _mm512_setzero_ps() : _mm512_load_ps(yt + j * MB + v * LANES);
    for (int64_t p = 0; p < pn; p++) {
        const float *xp = xt + p * MB;
        __m512 x0 = _mm512_load_ps(xp), x1 = _mm512_load_ps(xp + LANES), x2 = _mm512_load_ps(xp + 2 * LANES),
               x3 = _mm512_load_ps(xp + 3 * LANES);
        for (int j = 0; j < jr; j++) {
            __m512 wj = _mm512_set1_ps(w[j * ldw + p]);
            c[j][0] = _mm512_fmadd_ps(wj, x0, c[j][0]);
            c[j][1] = _mm512_fmadd_ps(wj, x1, c[j][1]);
            c[j][2] = _mm512_fmadd_ps(wj, x2, c[j][2]);
            c[j][3] = _mm512_fmadd_ps(wj, x3, c[j][3]);
        }
    }
    for (int j = 0; j < jr; j++)
        for (int v = 0; v < MV; v++) _mm512_store_ps(yt + j * MB + v * LANES, c[j][v]);
}

/* One call per tile width, so each keeps its accumulators in registers. */
AVX512 static void forward_tile_any(int jr, bool first, int64_t pn, const float *w, int64_t ldw, const float *xt,
                                    float *yt) {
    switch (jr) {
    case 6: forward_tile(6, first, pn, w, ldw, xt, yt); break;
    case 5: forward_tile(5, first, pn, w, ldw, xt, yt); break;
    case 4: forward_tile(4, first, pn, w, ldw, xt, yt); break;
    case 3: forward_tile(3, first, pn, w, ldw, xt, yt); break;
    case 2: forward_tile(2, first, pn, w, ldw, xt, yt); break;
    default: forward_tile(1, first, pn, w, ldw, xt, yt); break;
    }
}

/* Slab s: the outputs of tiles [tiles * s / slabs, tiles * (s + 1) / slabs). */
static void forward_slab(void *arg, int64_t begin, int64_t end) {
    const forward_job *jb = arg;
    for (int64_t s = begin; s < end; s++) {
        int64_t jlo = jb->tiles * s / jb->slabs * JR, jhi = jb->tiles * (s + 1) / jb->slabs * JR;
        if (jhi > jb->out) jhi = jb->out;
        if (jlo >= jhi) continue;
        float *xt = jb->scratch + s * PB * MB;
        float *yt = jb->scratch + jb->slabs * PB * MB + jlo * MB;
        for (int64_t m0 = 0; m0 < jb->n; m0 += MB) {
            int64_t mn = jb->n - m0 < MB ? jb->n - m0 : MB;
            for (int64_t p0 = 0; p0 < jb->in; p0 += PB) {
                int64_t pn = jb->in - p0 < PB ? jb->in - p0 : PB;
                pack_transposed(mn, pn, jb->x + m0 * jb->in + p0, jb->in, xt);
                for (int64_t j0 = jlo; j0 < jhi; j0 += JR) {
                    int jr = jhi - j0 < JR ? (int)(jhi - j0) : JR;
                    forward_tile_any(jr, p0 == 0, pn, jb->w + j0 * jb->in + p0, jb->in, xt, yt + (j0 - jlo) * MB);
                }
            }
            for (int64_t m = 0; m < mn; m++) {
                float *row = jb->y + (m0 + m) * jb->out;
                for (int64_t j = jlo; j < jhi; j++) row[j] = yt[(j - jlo) * MB + m] + (jb->b ? jb->b[j] : 0.0f);
            }
        }
    }
}

#endif /* HAVE_AVX512_BUILD */

/* ---- entry points --------------------------------------------------------------------- */

bool graft_linear_forward_avx512(int64_t n, int64_t in, int64_t out, const float *x, const float *w,
                                 const float *b, float *y) {
#if HAVE_AVX512_BUILD
    if (!graft_linear_avx512_available() || n <= 0 || in <= 0 || out <= 0) return false;
    int64_t tiles = (out + JR - 1) / JR;
    int64_t slabs = graft_num_threads();
    if (slabs > tiles) slabs = tiles;
    if (slabs < 1) slabs = 1;
    size_t floats = (size_t)(slabs * PB * MB + tiles * JR * MB);
    float *scratch = aligned_alloc(ALIGN_BYTES, floats * sizeof(float)); /* a multiple of 64 bytes */
    if (!scratch) return false;
    forward_job jb = {.n = n, .in = in, .out = out, .tiles = tiles, .slabs = slabs, .x = x, .w = w, .b = b,
                      .y = y, .scratch = scratch};
    graft_parallel_for(slabs, 1, forward_slab, &jb);
    free(scratch);
    return true;
#else
    (void)n, (void)in, (void)out, (void)x, (void)w, (void)b, (void)y;
    return false;
#endif
}
