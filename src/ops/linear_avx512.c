/* linear_avx512.c — Linear's products for small batches on AVX-512,
 * on graft's pool.
 *
 * The recipe trains a classifier on batches of 64 rows against weights of 4096 x 4096
 * floats.  SGEMM packs the weights on every call, and with only 64 rows on the other
 * side the packing and the thin panels cost more than the arithmetic: OpenBLAS reaches
 * about a third of its peak on these shapes (docs/performance.md).
 *
 * Forward: the small operand (the batch) is packed instead and the weights are read in
 * place, once per 64 rows:
 *
 *   y [m, j] = sum_p x [m, p] w [j, p]  (+ b [j])
 *
 *   for each chunk of 64 rows of x, for each block of PB inputs p:
 *       pack x [64, PB] transposed into xt [PB][64]        (zero rows past n)
 *       for each JR outputs:                                yt [JR, 64] += w [JR, PB] . xt
 *   write yt transposed into y, adding the bias
 *
 * The micro-kernel keeps yt [6, 64] in 24 zmm registers, loads a row of xt (four
 * vectors) and broadcasts w [j, p] for its six outputs.
 *
 * Input gradient, dx = dy w: the weight's rows run along dx's outputs, so a tile keeps
 * dx [6 samples, 64 inputs] in registers, loads 64 weights of a row and broadcasts
 * dy [m, p] for its samples; the weights are copied chunk by chunk into packed blocks
 * that stay in L1 (below, at dx_tile).  Where at most 40% of dy is nonzero a sample
 * sums only its nonzeros over those blocks, with the same bits (below, at dxs_run).
 *
 * Weight gradient written whole (dw = dy^T x into a gradient zeroed lazily, the
 * trainer's case): dy and x are packed into panels (6 columns of dy, 64 of x, the batch
 * along them); a 6 x 64 tile of dw is summed over the batch in registers and stored
 * once, so there is no pass of zeros and no read of dw (non-temporal stores measured no
 * faster).  Accumulated weight gradients stay with OpenBLAS: a kernel of this design
 * measured no faster than SGEMM for them (docs/performance.md).  The same tiles can
 * hand dw to the optimiser instead (graft_linear_weight_grad_avx512_sink, the trainer's
 * fused update): each thread computes a block of rows and columns into its scratch, in
 * L2, and passes it on, so dw is never written to memory and read back.  Where most of
 * dy is zero (the recipe's, past a ReLU and a Dropout) the weight gradient sums only
 * dy's nonzeros, with the same bits (below, at sparse_one).
 *
 * Every output is summed in one order (p, or the batch, ascending from zero) with fused
 * multiply-adds, as a BLAS kernel would; tests hold the results to the double reference
 * with every kernel.  Threads split the outputs, so each element is the same sum for
 * any thread count.
 *
 * Compiled for x86-64 with GCC or clang (function-level target attributes, the rest of
 * graft keeps the baseline ISA) and used only where the CPU reports AVX-512F;
 * -DGRAFT_NO_AVX512 leaves it out and Linear takes the BLAS path. */
#include "ops/linear_internal.h"

#include <string.h>

#include "core/cpu.h"
#include "core/threads.h"
#include "graft/graft.h"

#define LANES 16
#define MV 4                  /* vectors of batch rows per tile */
#define MB (MV * LANES)       /* batch rows per chunk: 64 */
#define JR 6                  /* outputs per micro-kernel tile: 6 x 4 = 24 accumulators */
/* Forward: inputs per packed panel, 256 KiB of the batch, which stays in L2; a tile reads
 * each of its weight rows as one 4 KiB run, which the hardware prefetches (the input
 * gradient's copy learnt the same).  Measured on the recipe's 4096 x 4096 layer, old
 * against new alternated 21 times in one process: 256 inputs 12.1-13.6 ms, 512 10.6-10.9,
 * 768 10.2-10.3, 1024 9.7-10.1, 2048 9.6-9.7, 4096 (the whole row) 14.9-15.3; 2048
 * slowed the 512 -> 4096 layer.  The same sums in the same order at any width. */
#define PB 1024

#if GRAFT_HAVE_AVX512_BUILD
#define HAVE_AVX512_BUILD 1
#include <immintrin.h>
#define AVX512 __attribute__((target("avx512f")))
#define AVX512_INLINE __attribute__((target("avx512f"), always_inline)) static inline
#else
#define HAVE_AVX512_BUILD 0
#endif

bool graft_linear_avx512_available(void) { return graft_cpu_avx512f(); }

#if HAVE_AVX512_BUILD

/* The first `lanes` lanes of a vector (none for lanes <= 0, all for lanes >= LANES). */
static inline __mmask16 lane_mask(int64_t lanes) {
    return lanes >= LANES ? (__mmask16)0xFFFF : lanes <= 0 ? (__mmask16)0 : (__mmask16)((1u << lanes) - 1u);
}

/* seen, the largest exponent field met so far, updated with x's lanes; the values met
 * were all finite while it stays below 0x7f800000 (finite_seen). */
AVX512_INLINE __m512i track_exponent(__m512i seen, __m512 x) {
    return _mm512_max_epu32(seen, _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7f800000)));
}

AVX512_INLINE bool finite_seen(__m512i seen) { return _mm512_reduce_max_epu32(seen) != 0x7f800000u; }

/* y [m, j] = sum_p x [m, p] w [j, p] (+ b [j]), the weight read in place. */
typedef struct forward_job {
    int64_t n, in, out, tiles, slabs;
    const float *x, *w, *b;
    float *y;
    float *scratch; /* a panel of PB x MB per slab, then the partial sums yt [out][MB] */
} forward_job;

/* r [i] [l] <-> r [l] [i]: 16 x 16 floats transposed in registers (pairs of floats, then
 * pairs of pairs, then 128-bit lanes). */
AVX512_INLINE void transpose16(__m512 r[LANES]) {
    __m512 t[LANES], u[LANES];
    for (int i = 0; i < LANES; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int g = 0; g < LANES; g += 4) { /* u [g + q], 128-bit lane l: rows g..g+3 of column 4l + q */
        __m512d a = _mm512_castps_pd(t[g]), b = _mm512_castps_pd(t[g + 1]), c = _mm512_castps_pd(t[g + 2]),
                d = _mm512_castps_pd(t[g + 3]);
        u[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int q = 0; q < 4; q++) {
        __m512 s0 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x44), s1 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xEE);
        __m512 s2 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x44), s3 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xEE);
        r[q] = _mm512_shuffle_f32x4(s0, s2, 0x88);
        r[4 + q] = _mm512_shuffle_f32x4(s0, s2, 0xDD);
        r[8 + q] = _mm512_shuffle_f32x4(s1, s3, 0x88);
        r[12 + q] = _mm512_shuffle_f32x4(s1, s3, 0xDD);
    }
}

/* xt [pn][MB] = x [mn, pn]^T (row stride ldx), rows past mn zero: 16 x 16 blocks
 * transposed in registers (gathers, as before, took 1% of the recipe's head; element by
 * element, this and the write of y below took about 4% of a training step). */
AVX512 static void pack_transposed(int64_t mn, int64_t pn, const float *x, int64_t ldx, float *xt) {
    for (int64_t m0 = 0; m0 < MB; m0 += LANES)
        for (int64_t p0 = 0; p0 < pn; p0 += LANES) {
            __mmask16 k = lane_mask(pn - p0);
            __m512 r[LANES];
            for (int64_t i = 0; i < LANES; i++)
                r[i] = m0 + i < mn ? _mm512_maskz_loadu_ps(k, x + (m0 + i) * ldx + p0) : _mm512_setzero_ps();
            transpose16(r);
            for (int64_t l = 0; l < LANES && p0 + l < pn; l++) _mm512_store_ps(xt + (p0 + l) * MB + m0, r[l]);
        }
}

/* y [m0 + m, j] = yt [j - jlo][m] + b [j] for m < mn, j in [jlo, jhi) (rows of y ldy apart):
 * blocks of 16 outputs by 16 samples transposed in registers (a partial block of outputs
 * reads zeros past jhi and stores its lanes only; gathers, as before, took 8% of the
 * recipe's forward). */
AVX512 static void write_outputs(int64_t mn, int64_t jlo, int64_t jhi, const float *yt, const float *b, float *y,
                                 int64_t ldy) {
    for (int64_t j0 = jlo; j0 < jhi; j0 += LANES) {
        __mmask16 k = lane_mask(jhi - j0);
        __m512 bias = b ? _mm512_maskz_loadu_ps(k, b + j0) : _mm512_setzero_ps();
        const float *src = yt + (j0 - jlo) * MB;
        for (int64_t m0 = 0; m0 < mn; m0 += LANES) {
            __m512 r[LANES];
            for (int64_t i = 0; i < LANES; i++) r[i] = j0 + i < jhi ? _mm512_load_ps(src + i * MB + m0) : _mm512_setzero_ps();
            transpose16(r);
            for (int64_t m = m0; m < mn && m < m0 + LANES; m++)
                _mm512_mask_storeu_ps(y + m * ldy + j0, k, _mm512_add_ps(r[m - m0], bias));
        }
    }
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
            write_outputs(mn, jlo, jhi, yt, jb->b, jb->y + m0 * jb->out, jb->out);
        }
    }
}

/* ---- input gradient: dx [m, i] = sum_p dy [m, p] w [p, i] -------------------------- */

/* The weight's rows are contiguous in i, the input gradient's outputs: a tile keeps
 * dx [6 samples, 64 inputs] in 24 registers and, for each p, loads 64 weights of row p
 * and broadcasts dy [m, p] for its six samples.  The weights are first copied, a chunk
 * of DX_PC rows by DX_IW inputs at a time (each row's part one 4 KiB run, which the
 * hardware prefetches), into packed blocks of DX_PC x 64 (16 KiB, in L1) that every
 * tile of samples then reads: read in place, rows 16 KiB apart in the recipe's layer
 * map to few cache sets, and short runs of many rows leave the loads waiting on memory.
 * Each dx [m, i] is summed over p in ascending order from zero. */
#define DX_IV 4               /* vectors of inputs per tile */
#define DX_IB (DX_IV * LANES) /* inputs per tile: 64 */
#define DX_MR 6               /* samples per tile: 6 x 4 = 24 accumulators */
#define DX_PC 64              /* rows of w per packed chunk */
#define DX_IW 1024            /* inputs per chunk at most: DX_IW / DX_IB packed blocks, 256 KiB;
                                 narrower where that leaves a thread without a chunk */

typedef struct dx_job {
    int64_t n, in, out, iw, blocks, slabs; /* blocks of iw inputs */
    const float *dy, *w;
    float *dx;
    float *scratch; /* per slab (slab_floats): DX_PC x iw packed weights, acc, dyc (dx_slab) */
    int64_t slab_floats;
    /* NULL, or dy's nonzeros: bit j of mask [m * chunks + c] set where dy [m, c * DX_PC + j]
       is not zero (DX_PC = 64 rows of w per chunk) */
    const uint64_t *mask;
    int64_t chunks;
    /* with mask: dy's nonzeros chunk by chunk, sample by sample, in order; sample m's
       of chunk c from vals + off [c * n + m] */
    const float *vals;
    const int32_t *off;
} dx_job;

/* The largest share of nonzeros at which the input and weight gradients take their sums
 * from dy's nonzeros (where graft_linear_set_sparse_dy allows it): measured on the
 * recipe's 4096 x 4096 layer (bench/linear_layers.c, docs/performance.md). */
#define SPARSE_MAX_DENSITY 0.5      /* weight gradient: 25% nonzero 1.8x, 50% 1.3x */
#define DX_SPARSE_MAX_DENSITY 0.4   /* input gradient: 25% nonzero 1.25x, 37.5% 1.07x, 50% 0.93x */

/* How many of v are not zero (NaN included). */
AVX512 static int64_t count_nonzero(int64_t count, const float *v) {
    int64_t nz = 0;
    for (int64_t i = 0; i < count; i += LANES) {
        __mmask16 k = lane_mask(count - i);
        nz += __builtin_popcount(_mm512_mask_cmp_ps_mask(k, _mm512_maskz_loadu_ps(k, v + i), _mm512_setzero_ps(),
                                                         _CMP_NEQ_UQ));
    }
    return nz;
}

/* mask [m * chunks + c] (chunks = ceil(out / DX_PC)): bit j set where dy [m, c * DX_PC + j]
 * is not zero (NaN included); returns how many are. */
AVX512 static int64_t dy_masks(int64_t n, int64_t out, const float *dy, uint64_t *mask) {
    int64_t chunks = (out + DX_PC - 1) / DX_PC, nonzero = 0;
    for (int64_t m = 0; m < n; m++)
        for (int64_t c = 0; c < chunks; c++) {
            uint64_t bits = 0;
            for (int64_t j = 0; j < DX_PC && c * DX_PC + j < out; j += LANES) {
                int64_t lanes = out - c * DX_PC - j;
                __mmask16 k = lane_mask(lanes);
                __m512 v = _mm512_maskz_loadu_ps(k, dy + m * out + c * DX_PC + j);
                bits |= (uint64_t)_mm512_mask_cmp_ps_mask(k, v, _mm512_setzero_ps(), _CMP_NEQ_UQ) << j;
            }
            mask[m * chunks + c] = bits;
            nonzero += __builtin_popcountll(bits);
        }
    return nonzero;
}

/* vals: the nonzeros of dy chunk by chunk (DX_PC columns), sample by sample, in order of
 * column; off [c * n + m]: where sample m's of chunk c start (mask from dy_masks). */
AVX512 static void dy_values(int64_t n, int64_t out, const float *dy, const uint64_t *mask, float *vals, int32_t *off) {
    int64_t chunks = (out + DX_PC - 1) / DX_PC;
    int32_t at = 0;
    for (int64_t c = 0; c < chunks; c++)
        for (int64_t m = 0; m < n; m++) {
            uint64_t bits = mask[m * chunks + c];
            off[c * n + m] = at;
            for (int64_t j = 0; j < DX_PC && c * DX_PC + j < out; j += LANES) {
                __mmask16 k = (__mmask16)(bits >> j);
                if (!k) continue;
                __m512 v = _mm512_maskz_loadu_ps(k, dy + m * out + c * DX_PC + j);
                _mm512_mask_compressstoreu_ps(vals + at, k, v);
                at += __builtin_popcount(k);
            }
        }
}

/* No infinity or NaN: then a zero times any of them is an exact zero. */
AVX512 static bool all_finite(int64_t count, const float *v) {
    __m512i seen = _mm512_setzero_si512();
    for (int64_t i = 0; i < count; i += LANES)
        seen = track_exponent(seen, _mm512_maskz_loadu_ps(lane_mask(count - i), v + i));
    return finite_seen(seen);
}

/* dx [mr rows (stride ldx), nv vectors] (+)= sum over pc rows p of dy [r * ldy + p] wp [p][.];
 * from zero when first; the last vector masked. */
AVX512_INLINE void dx_tile(int mr, int nv, __mmask16 last, bool first, int64_t pc, const float *dy, int64_t ldy,
                           const float *wp, float *dx, int64_t ldx) {
    __m512 c[DX_MR][DX_IV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++)
            c[r][v] = first ? _mm512_setzero_ps()
                            : _mm512_maskz_loadu_ps(v == nv - 1 ? last : (__mmask16)0xFFFF, dx + r * ldx + v * LANES);
    for (int64_t p = 0; p < pc; p++) {
        __m512 wv[DX_IV];
        for (int v = 0; v < nv; v++) wv[v] = _mm512_load_ps(wp + p * DX_IB + v * LANES);
        for (int r = 0; r < mr; r++) {
            __m512 d = _mm512_set1_ps(dy[r * ldy + p]);
            for (int v = 0; v < nv; v++) c[r][v] = _mm512_fmadd_ps(d, wv[v], c[r][v]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++)
            _mm512_mask_storeu_ps(dx + r * ldx + v * LANES, v == nv - 1 ? last : (__mmask16)0xFFFF, c[r][v]);
}

#define DX_NV(MR)                                                                                  \
    switch (nv) {                                                                                  \
    case 4: dx_tile(MR, 4, last, first, pc, dy, ldy, wp, dx, ldx); break;                         \
    case 3: dx_tile(MR, 3, last, first, pc, dy, ldy, wp, dx, ldx); break;                         \
    case 2: dx_tile(MR, 2, last, first, pc, dy, ldy, wp, dx, ldx); break;                         \
    default: dx_tile(MR, 1, last, first, pc, dy, ldy, wp, dx, ldx); break;                        \
    }

/* One call per tile shape, so each keeps its accumulators in registers. */
AVX512 static void dx_tile_any(int mr, int64_t cols, bool first, int64_t pc, const float *dy, int64_t ldy,
                               const float *wp, float *dx, int64_t ldx) {
    int nv = (int)((cols + LANES - 1) / LANES);
    int tail = (int)(cols - (int64_t)(nv - 1) * LANES);
    __mmask16 last = lane_mask(tail);
    if (mr == DX_MR && nv == DX_IV) {
        dx_tile(DX_MR, DX_IV, last, first, pc, dy, ldy, wp, dx, ldx);
        return;
    }
    switch (mr) {
    case 6: DX_NV(6) break;
    case 5: DX_NV(5) break;
    case 4: DX_NV(4) break;
    case 3: DX_NV(3) break;
    case 2: DX_NV(2) break;
    default: DX_NV(1) break;
    }
}

/* ---- the input gradient from dy's nonzeros ----------------------------------------
 *
 * dy [m, p] = 0 makes the term dy [m, p] w [p, i] an exact zero where w is finite, and
 * such a term leaves a float sum as it was (as for the weight gradient, at sparse_one).
 * So where few of dy's elements are nonzero, a sample's dx [m, 64 inputs] is summed over
 * the set bits of its chunk's mask only, ascending, with the same fused multiply-adds as
 * dx_tile: the same bits, with the arithmetic in proportion to the nonzeros.  Two samples
 * go together, for eight independent sums; each nonzero loads the packed row of w (four
 * vectors, in L1) and broadcasts its value of dy.  The values are gathered first, chunk by
 * chunk and sample by sample, into one array read in order (dy_values): a sample's walk
 * then touches about 64 bytes of them instead of its 256-byte row of the chunk, in an L1
 * of 32 KiB that also holds the packed block and the partial sums (4096 x 4096 at 25%
 * nonzero: 10.3-10.6 -> 9.9-10.1 ms).  A chunk whose packed weights hold an infinity
 * or NaN takes dx_tile (0 times either is NaN). */

/* c [DX_IV] += v [k] wp [p][.] over the set bits p of bits, ascending, with v [k] the
 * value of the k-th set bit. */
AVX512_INLINE void dxs_run(uint64_t bits, const float *v, const float *wp, __m512 c[DX_IV]) {
    for (; bits; bits &= bits - 1) {
        int p = __builtin_ctzll(bits);
        __m512 d = _mm512_set1_ps(*v++);
        for (int k = 0; k < DX_IV; k++) c[k] = _mm512_fmadd_ps(d, _mm512_load_ps(wp + p * DX_IB + k * LANES), c[k]);
    }
}

/* Samples a and b (rows of dx), or a alone where b is NULL, over a block of cols inputs
 * of a chunk, their nonzeros in order in va and vb; from zero when first. */
AVX512 static void dxs_pair(uint64_t ma, uint64_t mb, bool first, const float *va, const float *vb, const float *wp,
                            float *dxa, float *dxb, int64_t cols) {
    __m512 a[DX_IV], b[DX_IV];
    __mmask16 mk[DX_IV];
    for (int v = 0; v < DX_IV; v++) {
        mk[v] = lane_mask(cols - v * LANES);
        a[v] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mk[v], dxa + v * LANES);
        b[v] = first || !dxb ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mk[v], dxb + v * LANES);
    }
    if (!dxb) mb = 0;
    for (; ma && mb; ma &= ma - 1, mb &= mb - 1) {
        int pa = __builtin_ctzll(ma), pb = __builtin_ctzll(mb);
        __m512 da = _mm512_set1_ps(*va++), db = _mm512_set1_ps(*vb++);
        for (int v = 0; v < DX_IV; v++) {
            a[v] = _mm512_fmadd_ps(da, _mm512_load_ps(wp + pa * DX_IB + v * LANES), a[v]);
            b[v] = _mm512_fmadd_ps(db, _mm512_load_ps(wp + pb * DX_IB + v * LANES), b[v]);
        }
    }
    dxs_run(ma, va, wp, a);
    dxs_run(mb, vb, wp, b);
    for (int v = 0; v < DX_IV; v++) {
        _mm512_mask_storeu_ps(dxa + v * LANES, mk[v], a[v]);
        if (dxb) _mm512_mask_storeu_ps(dxb + v * LANES, mk[v], b[v]);
    }
}

/* w [pc rows (stride ldw), width inputs] into wp: blocks of DX_IB inputs, each
 * [DX_PC][DX_IB] (zero past width), each row read as one run; whether every element
 * copied is finite.  Each row's run prefetches the same run of the row below, the next
 * one copied (the chunk after this one starts there): a run of the recipe's layer is one
 * 4 KiB page, where the hardware's prefetcher stops, and its first lines waited on memory
 * (4096 x 4096 at 25% nonzero: the input gradient 10.2-10.3 -> 9.4-9.7 ms; a prefetch
 * past the weight's end is harmless). */
AVX512 static bool dx_pack_checked(const float *w, int64_t ldw, int64_t pc, int64_t width, float *wp) {
    __m512i seen = _mm512_setzero_si512();
    for (int64_t p = 0; p < pc; p++)
        for (int64_t i = 0; i < (width + DX_IB - 1) / DX_IB * DX_IB; i += LANES) {
            __m512 x = _mm512_maskz_loadu_ps(lane_mask(width - i), w + p * ldw + i);
            _mm_prefetch((const char *)(w + (p + 1) * ldw + i), _MM_HINT_T0);
            seen = track_exponent(seen, x);
            _mm512_store_ps(wp + (i / DX_IB * DX_PC + p) * DX_IB + i % DX_IB, x);
        }
    return finite_seen(seen);
}

/* Slab s: the inputs in blocks [blocks * s / slabs, blocks * (s + 1) / slabs) of iw.
 * The partial sums of a block live in the slab's acc [subs][n][DX_IB], and for the dense
 * tiles each chunk's part of dy is copied to dyc [n][DX_PC]: rows of dx and dy in place
 * are `in` and `out` floats apart, 16 KiB in the recipe's layer, and the 64 samples'
 * pieces would share four L1 sets. */
static void dx_slab(void *arg, int64_t begin, int64_t end) {
    const dx_job *jb = arg;
    int64_t n = jb->n;
    for (int64_t s = begin; s < end; s++) {
        float *wp = jb->scratch + s * jb->slab_floats, *acc = wp + DX_PC * jb->iw, *dyc = acc + n * jb->iw;
        for (int64_t b = jb->blocks * s / jb->slabs; b < jb->blocks * (s + 1) / jb->slabs; b++) {
            int64_t i0 = b * jb->iw, width = jb->in - i0 < jb->iw ? jb->in - i0 : jb->iw;
            int64_t subs = (width + DX_IB - 1) / DX_IB;
            for (int64_t p0 = 0; p0 < jb->out; p0 += DX_PC) {
                int64_t pc = jb->out - p0 < DX_PC ? jb->out - p0 : DX_PC;
                bool finite = true;
                if (jb->mask) {
                    finite = dx_pack_checked(jb->w + p0 * jb->in + i0, jb->in, pc, width, wp);
                } else {
                    for (int64_t p = 0; p < pc; p++) {
                        const float *row = jb->w + (p0 + p) * jb->in + i0;
                        for (int64_t sb = 0; sb < subs; sb++) {
                            int64_t cols = width - sb * DX_IB < DX_IB ? width - sb * DX_IB : DX_IB;
                            float *to = wp + (sb * DX_PC + p) * DX_IB;
                            memcpy(to, row + sb * DX_IB, (size_t)cols * sizeof(float));
                            if (cols < DX_IB) memset(to + cols, 0, (size_t)(DX_IB - cols) * sizeof(float));
                        }
                    }
                }
                if (!jb->mask || !finite)
                    for (int64_t m = 0; m < n; m++)
                        memcpy(dyc + m * DX_PC, jb->dy + m * jb->out + p0, (size_t)pc * sizeof(float));
                for (int64_t sb = 0; sb < subs; sb++) {
                    int64_t cols = width - sb * DX_IB < DX_IB ? width - sb * DX_IB : DX_IB;
                    float *as = acc + sb * n * DX_IB;
                    if (jb->mask && finite) {
                        const uint64_t *mk = jb->mask + p0 / DX_PC;
                        const int32_t *off = jb->off + p0 / DX_PC * n;
                        for (int64_t m = 0; m < n; m += 2) {
                            bool two = m + 1 < n;
                            dxs_pair(mk[m * jb->chunks], two ? mk[(m + 1) * jb->chunks] : 0, p0 == 0, jb->vals + off[m],
                                     two ? jb->vals + off[m + 1] : NULL, wp + sb * DX_PC * DX_IB, as + m * DX_IB,
                                     two ? as + (m + 1) * DX_IB : NULL, cols);
                        }
                        continue;
                    }
                    for (int64_t m0 = 0; m0 < n; m0 += DX_MR) {
                        int mr = n - m0 < DX_MR ? (int)(n - m0) : DX_MR;
                        dx_tile_any(mr, cols, p0 == 0, pc, dyc + m0 * DX_PC, DX_PC, wp + sb * DX_PC * DX_IB,
                                    as + m0 * DX_IB, DX_IB);
                    }
                }
            }
            for (int64_t m = 0; m < n; m++)
                for (int64_t sb = 0; sb < subs; sb++) {
                    int64_t cols = width - sb * DX_IB < DX_IB ? width - sb * DX_IB : DX_IB;
                    memcpy(jb->dx + m * jb->in + i0 + sb * DX_IB, acc + (sb * n + m) * DX_IB, (size_t)cols * sizeof(float));
                }
        }
    }
}

/* ---- weight gradient: dw [o, k] = sum_m dy [m, o] x [m, k] ------------------------- */

#define OR 6                  /* rows of dw per tile: 6 x 4 = 24 accumulators */

typedef struct wgrad_job {
    int64_t n, in, out, otiles, slabs;
    const float *dyt; /* dy packed: otiles tiles of [n][OR] (dy's columns, zero past out);
                         NULL when the lists below replace it */
    const float *xp;  /* x packed: panels of MB columns, [n][MB] each (zero past in) */
    float *dw;
    /* dy's nonzeros by column of dy (row o of dw): entries [start[o], start[o + 1]) of
       at (m * MB, the sample's row in a panel) and val (dy [m, o]), m ascending */
    const int32_t *start, *at;
    const float *val;
} wgrad_job;

/* dw [or rows, nv vectors] = sum_m dyt [m][.] xp [m][.], the last vector masked. */
AVX512_INLINE void wgrad_tile(int orows, int nv, __mmask16 last, int64_t n, const float *dyt,
                              const float *xp, float *dw, int64_t lddw) {
    __m512 c[OR][MV];
    for (int i = 0; i < orows; i++)
        for (int v = 0; v < nv; v++) c[i][v] = _mm512_setzero_ps();
    for (int64_t m = 0; m < n; m++) {
        __m512 xv[MV];
        for (int v = 0; v < nv; v++) xv[v] = _mm512_load_ps(xp + m * MB + v * LANES);
        const float *d = dyt + m * OR;
        for (int i = 0; i < orows; i++) {
            __m512 di = _mm512_set1_ps(d[i]);
            for (int v = 0; v < nv; v++) c[i][v] = _mm512_fmadd_ps(di, xv[v], c[i][v]);
        }
    }
    for (int i = 0; i < orows; i++)
        for (int v = 0; v < nv; v++)
            _mm512_mask_storeu_ps(dw + i * lddw + v * LANES, v == nv - 1 ? last : (__mmask16)0xFFFF, c[i][v]);
}

#define WGRAD_NV(OROWS)                                                                     \
    switch (nv) {                                                                           \
    case 4: wgrad_tile(OROWS, 4, last, n, dyt, xp, dw, lddw); break;                \
    case 3: wgrad_tile(OROWS, 3, last, n, dyt, xp, dw, lddw); break;                \
    case 2: wgrad_tile(OROWS, 2, last, n, dyt, xp, dw, lddw); break;                \
    default: wgrad_tile(OROWS, 1, last, n, dyt, xp, dw, lddw); break;               \
    }

/* One call per tile shape, so each keeps its accumulators in registers. */
AVX512 static void wgrad_tile_any(int orows, int64_t kn, int64_t n, const float *dyt, const float *xp,
                                  float *dw, int64_t lddw) {
    int nv = (int)((kn + LANES - 1) / LANES);
    int tail = (int)(kn - (int64_t)(nv - 1) * LANES);
    __mmask16 last = lane_mask(tail);
    if (orows == OR && nv == MV) {
        wgrad_tile(OR, MV, last, n, dyt, xp, dw, lddw);
        return;
    }
    switch (orows) {
    case 6: WGRAD_NV(6) break;
    case 5: WGRAD_NV(5) break;
    case 4: WGRAD_NV(4) break;
    case 3: WGRAD_NV(3) break;
    case 2: WGRAD_NV(2) break;
    default: WGRAD_NV(1) break;
    }
}

/* ---- the same weight gradient from dy's nonzeros ----------------------------------
 *
 * In the recipe's classifier dy has passed a ReLU and a Dropout: about a quarter of it
 * is nonzero.  Row o of dw sums dy [m, o] x [m, .] over the batch; the dense tile adds
 * every m, the terms with dy [m, o] = 0 included.  Those terms are exact zeros (x is
 * finite: wgrad_prepare checks), and adding one leaves a partial sum unchanged: the sum
 * starts at +0, and in round-to-nearest a sum of +0 and -0 is +0, so no partial sum is
 * ever -0.  Summing only the nonzero terms, in the same ascending order and with the same
 * fused multiply-adds, therefore gives dw bit for bit as the dense tiles do, with about a
 * quarter of the work.  A row keeps dw [o, 64 columns] in four registers and, for each
 * nonzero, loads the sample's 64 columns of x's packed panel (16 KiB, in L1) and
 * broadcasts dy [m, o]; two rows go together, for eight independent sums. */

/* c [MV] += dy's nonzeros [e, end) of a row, each times its sample's row of the panel xp. */
AVX512_INLINE void sparse_run(const wgrad_job *jb, int32_t e, int32_t end, const float *xp, __m512 c[MV]) {
    for (; e < end; e++) {
        const float *xm = xp + jb->at[e];
        __m512 v = _mm512_set1_ps(jb->val[e]);
        for (int k = 0; k < MV; k++) c[k] = _mm512_fmadd_ps(v, _mm512_load_ps(xm + k * LANES), c[k]);
    }
}

/* Row o over a panel of kn columns (the rest of the panel is zero and not stored). */
AVX512_INLINE void sparse_one(const wgrad_job *jb, int64_t o, const float *xp, float *d, int64_t kn) {
    __m512 c[MV];
    for (int k = 0; k < MV; k++) c[k] = _mm512_setzero_ps();
    sparse_run(jb, jb->start[o], jb->start[o + 1], xp, c);
    for (int k = 0; k < MV && kn > k * LANES; k++)
        _mm512_mask_storeu_ps(d + k * LANES, lane_mask(kn - k * LANES), c[k]);
}

/* Rows o and o + 1 over a full panel, their nonzeros walked together while both have
 * some left. */
AVX512_INLINE void sparse_pair(const wgrad_job *jb, int64_t o, const float *xp, float *da, float *db) {
    __m512 a[MV], b[MV];
    for (int k = 0; k < MV; k++) a[k] = b[k] = _mm512_setzero_ps();
    int32_t ea = jb->start[o], enda = jb->start[o + 1], eb = enda, endb = jb->start[o + 2];
    for (; ea < enda && eb < endb; ea++, eb++) {
        const float *xa = xp + jb->at[ea], *xb = xp + jb->at[eb];
        __m512 va = _mm512_set1_ps(jb->val[ea]), vb = _mm512_set1_ps(jb->val[eb]);
        for (int k = 0; k < MV; k++) {
            a[k] = _mm512_fmadd_ps(va, _mm512_load_ps(xa + k * LANES), a[k]);
            b[k] = _mm512_fmadd_ps(vb, _mm512_load_ps(xb + k * LANES), b[k]);
        }
    }
    sparse_run(jb, ea, enda, xp, a);
    sparse_run(jb, eb, endb, xp, b);
    for (int k = 0; k < MV; k++) _mm512_storeu_ps(da + k * LANES, a[k]), _mm512_storeu_ps(db + k * LANES, b[k]);
}

/* Blocks of dw: SINK_ROWS rows (whole tiles) by SINK_KB columns.  A block's panels of x
 * (64 KiB x 4) stay in L2 while every block of rows below the same columns takes them,
 * so x is read from memory once; a block handed to the sink goes from a scratch whose
 * rows are padded (rows 16 KiB apart would share a handful of cache sets), in pieces of
 * SINK_KB elements of a row of the weight.  Measured on the recipe's 4096 x 4096 layer
 * (docs/performance.md): on dense dy as fast as the bands of whole rows before them;
 * from dy's nonzeros about twice as fast, since bands read all of x for every band. */
#define SINK_KB 1024
#define SINK_ROWS (4 * OR)
#define SINK_LD (SINK_KB + LANES)

/* Rows [r0, r1) (whole tiles from r0, a multiple of OR) by columns [k1, k2) of dw into
 * dst (row stride ld), by dy's nonzeros where the lists are there, else by the tiles. */
AVX512 static void wgrad_block(const wgrad_job *jb, int64_t r0, int64_t r1, int64_t k1, int64_t k2, float *dst,
                               int64_t ld) {
    for (int64_t k0 = k1; k0 < k2; k0 += MB) {
        int64_t kn = k2 - k0 < MB ? k2 - k0 : MB;
        const float *xp = jb->xp + (k0 / MB) * jb->n * MB;
        float *d = dst + (k0 - k1);
        if (jb->at) {
            int64_t o = r0;
            if (kn == MB)
                for (; o + 1 < r1; o += 2) sparse_pair(jb, o, xp, d + (o - r0) * ld, d + (o + 1 - r0) * ld);
            for (; o < r1; o++) sparse_one(jb, o, xp, d + (o - r0) * ld, kn);
        } else {
            for (int64_t o0 = r0; o0 < r1; o0 += OR)
                wgrad_tile_any(r1 - o0 < OR ? (int)(r1 - o0) : OR, kn, jb->n, jb->dyt + (o0 / OR) * jb->n * OR, xp,
                               d + (o0 - r0) * ld, ld);
        }
    }
}

/* Rows [rlo, rhi) of slab s: the tiles [otiles * s / slabs, otiles * (s + 1) / slabs). */
static void slab_rows(const wgrad_job *jb, int64_t s, int64_t *rlo, int64_t *rhi) {
    *rlo = jb->otiles * s / jb->slabs * OR;
    *rhi = jb->otiles * (s + 1) / jb->slabs * OR;
    if (*rhi > jb->out) *rhi = jb->out;
}

/* dw written whole: slab s's rows, block by block, in place. */
static void wgrad_slab(void *arg, int64_t begin, int64_t end) {
    const wgrad_job *jb = arg;
    for (int64_t s = begin; s < end; s++) {
        int64_t rlo, rhi;
        slab_rows(jb, s, &rlo, &rhi);
        for (int64_t k1 = 0; k1 < jb->in; k1 += SINK_KB) {
            int64_t k2 = jb->in - k1 < SINK_KB ? jb->in : k1 + SINK_KB;
            for (int64_t r0 = rlo; r0 < rhi; r0 += SINK_ROWS)
                wgrad_block(jb, r0, rhi - r0 < SINK_ROWS ? rhi : r0 + SINK_ROWS, k1, k2, jb->dw + r0 * jb->in + k1,
                            jb->in);
        }
    }
}

/* Fused with the optimiser (graft_linear_weight_grad_avx512_sink): slab s computes its
 * rows of dw block by block into its scratch and hands each block's rows to the sink
 * while they are still in cache, so dw is never written to memory and read back. */
typedef struct wgrad_sink_job {
    wgrad_job w;
    float *blocks;                /* SINK_ROWS * SINK_LD floats per slab */
    const graft_grad_sink *sink;
} wgrad_sink_job;

static void wgrad_sink_slab(void *arg, int64_t begin, int64_t end) {
    const wgrad_sink_job *sj = arg;
    const wgrad_job *jb = &sj->w;
    for (int64_t s = begin; s < end; s++) {
        int64_t rlo, rhi;
        slab_rows(jb, s, &rlo, &rhi);
        float *block = sj->blocks + s * SINK_ROWS * SINK_LD;
        for (int64_t k1 = 0; k1 < jb->in; k1 += SINK_KB) {
            int64_t k2 = jb->in - k1 < SINK_KB ? jb->in : k1 + SINK_KB;
            for (int64_t r0 = rlo; r0 < rhi; r0 += SINK_ROWS) {
                int64_t r1 = rhi - r0 < SINK_ROWS ? rhi : r0 + SINK_ROWS;
                wgrad_block(jb, r0, r1, k1, k2, block, SINK_LD);
                for (int64_t r = r0; r < r1; r++) {
                    /* the row below, same columns (the next block starts there), or the
                       slab's first row in the next columns */
                    int64_t next = r + 1 < rhi ? (r + 1) * jb->in + k1 : k2 < jb->in ? rlo * jb->in + k2 : -1;
                    sj->sink->piece(sj->sink->user, r * jb->in + k1, r * jb->in + k2, next,
                                    block + (r - r0) * SINK_LD);
                }
            }
        }
    }
}

#endif /* HAVE_AVX512_BUILD */

/* ---- entry points --------------------------------------------------------------------- */

#if HAVE_AVX512_BUILD
/* One slab of work per pool thread, but no more slabs than units of work (at least one). */
static int64_t slab_count(int64_t units) {
    int64_t slabs = graft_num_threads();
    if (slabs > units) slabs = units;
    return slabs < 1 ? 1 : slabs;
}
#endif

bool graft_linear_forward_avx512(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x, const float *w,
                                 const float *b, float *y) {
#if HAVE_AVX512_BUILD
    if (!graft_linear_avx512_available() || n <= 0 || in <= 0 || out <= 0) return false;
    int64_t tiles = (out + JR - 1) / JR, slabs = slab_count(tiles);
    float *scratch = graft_ctx_workspace(ctx, (size_t)(slabs * PB * MB + tiles * JR * MB)); /* cache-line aligned */
    if (!scratch) return false;
    forward_job jb = {.n = n, .in = in, .out = out, .tiles = tiles, .slabs = slabs, .x = x, .w = w, .b = b,
                      .y = y, .scratch = scratch};
    graft_parallel_for(slabs, 1, forward_slab, &jb);
    return true;
#else
    (void)ctx, (void)n, (void)in, (void)out, (void)x, (void)w, (void)b, (void)y;
    return false;
#endif
}

bool graft_linear_input_grad_avx512(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy, const float *w,
                                    float *dx) {
#if HAVE_AVX512_BUILD
    if (!graft_linear_avx512_available() || n <= 0 || in <= 0 || out <= 0) return false;
    int64_t threads = graft_num_threads();
    int64_t iw = (in + threads * DX_IB - 1) / (threads * DX_IB) * DX_IB; /* a block per thread at least */
    if (iw > DX_IW) iw = DX_IW;
    int64_t blocks = (in + iw - 1) / iw, slabs = slab_count(blocks);
    int64_t chunks = (out + DX_PC - 1) / DX_PC;
    int64_t mask_floats = graft_linear_sparse_dy_allowed() ? 2 * n * chunks + n * chunks + (n * out + 1) / 2 * 2 : 0;
    int64_t slab_floats = (DX_PC * iw + n * iw + n * DX_PC + 15) / 16 * 16; /* whole cache lines */
    float *scratch = graft_ctx_workspace(ctx, (size_t)(slabs * slab_floats + mask_floats)); /* cache-line aligned */
    if (!scratch) return false;
    dx_job jb = {.n = n, .in = in, .out = out, .iw = iw, .blocks = blocks, .slabs = slabs, .dy = dy, .w = w,
                 .dx = dx, .scratch = scratch, .slab_floats = slab_floats, .chunks = chunks};
    if (mask_floats) {
        uint64_t *mask = (uint64_t *)(scratch + slabs * slab_floats); /* 8-byte aligned: slab_floats is even */
        int64_t nonzero = dy_masks(n, out, dy, mask);
        if (nonzero <= (int64_t)(DX_SPARSE_MAX_DENSITY * (double)(n * out)) && nonzero <= INT32_MAX) {
            float *vals = (float *)(mask + n * chunks);
            int32_t *off = (int32_t *)(vals + (n * out + 1) / 2 * 2);
            dy_values(n, out, dy, mask, vals, off);
            jb.mask = mask;
            jb.vals = vals;
            jb.off = off;
            graft_linear_sparse_dy_taken();
        }
    }
    graft_parallel_for(slabs, 1, dx_slab, &jb);
    return true;
#else
    (void)ctx, (void)n, (void)in, (void)out, (void)dy, (void)w, (void)dx;
    return false;
#endif
}

#if HAVE_AVX512_BUILD
/* The weight gradient's lists of dy's nonzeros (wgrad_job.start, at, val): counted by
 * column, then filled, 16 columns at a time, each column's entries in order of m (the
 * scalar loops this replaces branched on every element, about half of them mispredicted
 * at the recipe's density).  Both passes split the columns between the pool's threads
 * (on one, they took about 3% of a training step); only the sum of the counts is
 * serial. */
typedef struct lists_job {
    int64_t n, out;
    const float *dy;
    int32_t *start, *at;
    float *val;
} lists_job;

/* start [o + 1] = the count of column o's nonzeros, for the 16-column groups [g0, g1). */
AVX512 static void count_columns(void *arg, int64_t g0, int64_t g1) {
    const lists_job *lj = arg;
    const __m512i one = _mm512_set1_epi32(1);
    for (int64_t o0 = g0 * LANES; o0 < g1 * LANES && o0 < lj->out; o0 += LANES) {
        __mmask16 lanes = lane_mask(lj->out - o0);
        __m512i count = _mm512_setzero_si512();
        for (int64_t m = 0; m < lj->n; m++) {
            __m512 v = _mm512_maskz_loadu_ps(lanes, lj->dy + m * lj->out + o0);
            count = _mm512_mask_add_epi32(count, _mm512_mask_cmp_ps_mask(lanes, v, _mm512_setzero_ps(), _CMP_NEQ_UQ),
                                          count, one);
        }
        _mm512_mask_storeu_epi32(lj->start + o0 + 1, lanes, count);
    }
}

/* The entries of the groups [g0, g1), from their start. */
AVX512 static void fill_columns(void *arg, int64_t g0, int64_t g1) {
    const lists_job *lj = arg;
    const __m512i one = _mm512_set1_epi32(1);
    for (int64_t o0 = g0 * LANES; o0 < g1 * LANES && o0 < lj->out; o0 += LANES) {
        __mmask16 lanes = lane_mask(lj->out - o0);
        __m512i pos = _mm512_maskz_loadu_epi32(lanes, lj->start + o0); /* each column's next entry */
        for (int64_t m = 0; m < lj->n; m++) {
            __m512 v = _mm512_maskz_loadu_ps(lanes, lj->dy + m * lj->out + o0);
            __mmask16 k = _mm512_mask_cmp_ps_mask(lanes, v, _mm512_setzero_ps(), _CMP_NEQ_UQ);
            _mm512_mask_i32scatter_epi32(lj->at, k, pos, _mm512_set1_epi32((int32_t)(m * MB)), 4);
            _mm512_mask_i32scatter_ps(lj->val, k, pos, v, 4);
            pos = _mm512_mask_add_epi32(pos, k, pos, one);
        }
    }
}

static void dy_lists(int64_t n, int64_t out, const float *dy, int32_t *start, int32_t *at, float *val) {
    lists_job lj = {.n = n, .out = out, .dy = dy, .start = start, .at = at, .val = val};
    int64_t groups = (out + LANES - 1) / LANES;
    start[0] = 0;
    graft_parallel_for(groups, 8, count_columns, &lj);
    for (int64_t o = 0; o < out; o++) start[o + 1] += start[o];
    graft_parallel_for(groups, 8, fill_columns, &lj);
}

/* x [n, in] into panels of MB columns, [n][MB] each (zero past in), for the panels
 * [p0, p1). */
typedef struct panels_job {
    int64_t n, in;
    const float *x;
    float *xp;
} panels_job;

static void pack_panels(void *arg, int64_t p0, int64_t p1) {
    const panels_job *pj = arg;
    for (int64_t p = p0; p < p1; p++)
        for (int64_t m = 0; m < pj->n; m++) {
            int64_t k0 = p * MB, kn = pj->in - k0 < MB ? pj->in - k0 : MB;
            float *to = pj->xp + (p * pj->n + m) * MB;
            memcpy(to, pj->x + m * pj->in + k0, (size_t)kn * sizeof(float));
            for (int64_t k = kn; k < MB; k++) to[k] = 0.0f;
        }
}

/* Packs dy (as tiles, or as lists of its nonzeros) and x for the weight gradient into
 * ctx's workspace, with extra_per_slab more floats per slab after them (cache-line
 * aligned) in *extra_out; fills *jb.  False: no memory. */
static bool wgrad_prepare(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy, const float *x,
                          float *dw, size_t extra_per_slab, wgrad_job *jb, float **extra_out) {
    int64_t otiles = (out + OR - 1) / OR, panels = (in + MB - 1) / MB, slabs = slab_count(otiles);
    int64_t nonzero = graft_linear_sparse_dy_allowed() ? count_nonzero(n * out, dy) : n * out;
    bool sparse = nonzero <= (int64_t)(SPARSE_MAX_DENSITY * (double)(n * out)) && n * out <= INT32_MAX &&
                  n * MB <= INT32_MAX && all_finite(n * in, x);
    /* dense: dy packed in tiles; sparse: the lists (int32 entries in float slots); either
       rounded to whole vectors, which keeps xp aligned */
    int64_t dy_floats = sparse ? (out + 1) + 2 * nonzero : otiles * n * OR;
    dy_floats = (dy_floats + LANES - 1) / LANES * LANES;
    size_t packed = (size_t)(dy_floats + panels * n * MB);
    float *scratch = graft_ctx_workspace(ctx, packed + (size_t)slabs * extra_per_slab);
    if (!scratch) return false;
    float *dyt = scratch, *xp = scratch + dy_floats;
    *jb = (wgrad_job){.n = n, .in = in, .out = out, .otiles = otiles, .slabs = slabs, .xp = xp, .dw = dw};
    if (sparse) {
        int32_t *start = (int32_t *)scratch, *at = start + out + 1;
        float *val = (float *)(at + nonzero);
        dy_lists(n, out, dy, start, at, val);
        jb->start = start, jb->at = at, jb->val = val;
        graft_linear_sparse_dy_taken();
    } else {
        for (int64_t t = 0; t < otiles; t++)
            for (int64_t m = 0; m < n; m++)
                for (int64_t i = 0; i < OR; i++)
                    dyt[(t * n + m) * OR + i] = t * OR + i < out ? dy[m * out + t * OR + i] : 0.0f;
        jb->dyt = dyt;
    }
    panels_job pj = {.n = n, .in = in, .x = x, .xp = xp};
    graft_parallel_for(panels, 4, pack_panels, &pj);
    if (extra_out) *extra_out = scratch + packed; /* packed is a multiple of LANES: aligned */
    return true;
}

#endif

bool graft_linear_weight_grad_avx512(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy, const float *x,
                                     float *dw) {
#if HAVE_AVX512_BUILD
    if (!graft_linear_avx512_available() || n <= 0 || in <= 0 || out <= 0) return false;
    wgrad_job jb;
    if (!wgrad_prepare(ctx, n, in, out, dy, x, dw, 0, &jb, NULL)) return false;
    graft_parallel_for(jb.slabs, 1, wgrad_slab, &jb);
    return true;
#else
    (void)ctx, (void)n, (void)in, (void)out, (void)dy, (void)x, (void)dw;
    return false;
#endif
}

bool graft_linear_weight_grad_avx512_sink(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy,
                                          const float *x, const graft_grad_sink *sink) {
#if HAVE_AVX512_BUILD
    if (!graft_linear_avx512_available() || n <= 0 || in <= 0 || out <= 0) return false;
    wgrad_sink_job sj = {.sink = sink};
    if (!wgrad_prepare(ctx, n, in, out, dy, x, NULL, (size_t)(SINK_ROWS * SINK_LD), &sj.w, &sj.blocks)) return false;
    sink->begin(sink->user);
    graft_parallel_for(sj.w.slabs, 1, wgrad_sink_slab, &sj);
    return true;
#else
    (void)ctx, (void)n, (void)in, (void)out, (void)dy, (void)x, (void)sink;
    return false;
#endif
}
