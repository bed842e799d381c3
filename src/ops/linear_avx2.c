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
 *   - x is packed into panels of 64 columns, [n][64] each (16 KiB at 64 samples, in L1),
 *     and a row keeps dw [o, 64 columns] in eight ymm registers, eight independent sums
 *     (panels of 32 with two rows walked together, the first version, measured 9.5-10.2
 *     ms against 7.7-8.1 for the recipe's 4096 x 4096 at 25% nonzero, products only; with
 *     the fused update 22-25 ms against 20-22);
 *   - blocks of SINK_ROWS rows by SINK_KB columns: the fused update
 *     (graft_linear_weight_grad_avx2_sink, the trainer's) computes a block into the
 *     thread's scratch and hands its rows to the optimiser while they are in cache, so dw
 *     is never written to memory and read back; written whole, the block goes straight
 *     into dw.  The update is what takes the time there (it streams the weights and their
 *     momentum, 256 MB for the recipe's 4096 x 4096, where the products take 8 ms), so the
 *     blocks are whole rows of 4096 columns, which the optimiser reads and writes as runs
 *     of 16 KiB, not 4 KiB: fused, 15.9-19.2 ms for 48 rows (32 and 64 rows alike) against
 *     20.8-23.2 for blocks of 24 rows by 1,024 columns, whose panels of x stayed in L2 (the
 *     products alone 8.2 ms against 8.1; docs/performance.md has the other shapes).
 * Threads split the rows, so every element is the same sum for any thread count, and the
 * sink's elements are those written whole. */
#include "ops/linear_internal.h"

#include <math.h>
#include <string.h>

#include "core/cpu.h"
#include "core/threads.h"
#include "graft/graft.h"

#define XB 64                 /* columns of x per panel: 8 ymm vectors */
#define XV 8
#define SINK_KB 4096          /* columns per block */
#define SINK_ROWS 48          /* rows per block */
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

/* Rows [r0, r1) by columns [k1, k2) of dw into dst (row stride ld). */
AVX2 static void block_rows(const wg2_job *jb, int64_t r0, int64_t r1, int64_t k1, int64_t k2, float *dst, int64_t ld) {
    for (int64_t k0 = k1; k0 < k2; k0 += XB) {
        int64_t kn = k2 - k0 < XB ? k2 - k0 : XB;
        const float *xp = jb->xp + (k0 / XB) * jb->n * XB;
        float *d = dst + (k0 - k1);
        for (int64_t o = r0; o < r1; o++) row_one(jb, o, xp, d + (o - r0) * ld, kn);
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

/* ---- products from a sparse operand --------------------------------------------------
 *
 *   out [m, j] = sum_k s [m, k] b [k, j], k ascending, s's nonzeros only
 *
 * with b read from the weight: b = w (the input gradient, dx = dy w: s is dy, k the
 * outputs, j the inputs) or b = w^T (the forward, y = x w^T: s is x, k the inputs, j the
 * outputs).  Past a ReLU and a Dropout (the recipe's classifier.3, forward and backward)
 * about a quarter of s is nonzero, and the products drop to about a quarter.
 *
 *   - s is cut into chunks of SP_B columns; each sample has a 64-bit mask of its nonzeros
 *     in a chunk and their values in order (sp_masks, sp_values), stored chunk by chunk:
 *     a tile reads its chunk's masks and values as one run (4 KiB at the recipe's
 *     density) instead of 64 pieces 16 KiB apart (medians, four alternations: the
 *     recipe's dx 10.8-11.7 ms against 12.0-12.8, its forward 10.5-11.0 against
 *     11.2-11.4);
 *   - the outputs are cut into blocks of SP_B columns, split over the threads; for a block,
 *     chunk by chunk, the tile b [chunk rows, block columns] (16 KiB) is copied from w, or
 *     transposed from it, into a buffer that stays in L1, and each sample adds its
 *     nonzeros' rows of the tile to its row of the block, kept in eight ymm registers and
 *     a second buffer between chunks;
 *   - w's rows are 16 KiB apart, so a tile is 64 runs of 256 bytes, which the hardware
 *     does not prefetch in time: each sample's step prefetches one row of the tile two
 *     ahead (measured on the recipe's dx: 10.6-11.1 ms against 14-15 ms prefetching the
 *     next tile in one burst, and OpenBLAS's 19.0-19.3 ms);
 *   - the sums run k ascending with fused multiply-adds from +0, continued chunk after
 *     chunk.  A term left out is an exact zero while b is finite (0 times an infinity is
 *     NaN), and adding a zero never changes a partial sum that starts at +0, so the result
 *     has the bits of the sum of every term in the same order; a tile with an infinity or
 *     NaN sums every term of its chunk.  The forward's sums are linear_avx2.c's dense
 *     forward's (fw2_slab: p ascending, fused, from +0), so both give the same bits; the
 *     input gradient's dense form is this kernel with every term (forced, for tests).
 * Threads split the blocks, so every output is the same sum for any thread count. */
#define SP_B 64                  /* bits of a mask; columns of a block */
#define SP_V (SP_B / 8)          /* ymm vectors across a block */
#define SP_AHEAD 2               /* tiles between a tile and the one its steps prefetch */
/* The largest share of nonzeros at which the sums take them: the input gradient's against
 * OpenBLAS (at 50%, 18.3-20.2 ms against its 19-20), the forward's against the dense AVX2
 * forward (at 75%, 17.4-23.3 ms against 22.5-27.6; at 100% the same), in bench_linear_layers */
#define SP_DX_MAX_DENSITY 0.4
#define SP_FORWARD_MAX_DENSITY 0.75

typedef struct sp_job {
    int64_t n, k, nj, chunks, blocks, slabs;
    const float *s;           /* [n, k] */
    const float *w;           /* b [k, j] = w [k * ldw + j], or w [j * ldw + k] (transposed) */
    int64_t ldw;
    bool transposed, every;
    uint64_t *mask;           /* [chunks][n] */
    int32_t *off;             /* [chunks][n]: where the values of sample m in chunk c begin */
    float *vals;              /* chunk by chunk, each chunk's samples in order */
    const float *bias;        /* [nj] or NULL */
    float *out;               /* [n, nj] */
    float *scratch;           /* per slab: a tile, then the block's rows */
    int64_t slab_floats;
} sp_job;

/* The width of part i of a dimension of `total` cut into parts of SP_B: SP_B, or what the
 * last part has left. */
static int64_t sp_width(int64_t total, int64_t i) { return total - i * SP_B < SP_B ? total - i * SP_B : SP_B; }

/* Row m's masks, for rows [m0, m1): mask [c][m], and off [c][m] = their nonzeros (NaN
 * included) until sp_product turns the counts into offsets. */
AVX2 static void sp_masks(void *arg, int64_t m0, int64_t m1) {
    const sp_job *jb = arg;
    for (int64_t m = m0; m < m1; m++) {
        const float *row = jb->s + m * jb->k;
        for (int64_t c = 0; c < jb->chunks; c++) {
            int64_t k0 = c * SP_B, kn = sp_width(jb->k, c);
            uint64_t bits = 0;
            int64_t r = 0;
            for (; r + 8 <= kn; r += 8) {
                __m256 v = _mm256_loadu_ps(row + k0 + r);
                bits |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NEQ_UQ)) << r;
            }
            for (; r < kn; r++) bits |= (uint64_t)(row[k0 + r] != 0.0f) << r;
            jb->mask[c * jb->n + m] = bits;
            jb->off[c * jb->n + m] = __builtin_popcountll(bits);
        }
    }
}

/* Row m's values, for rows [m0, m1), chunk by chunk from off [c][m]. */
static void sp_values(void *arg, int64_t m0, int64_t m1) {
    const sp_job *jb = arg;
    for (int64_t m = m0; m < m1; m++) {
        const float *row = jb->s + m * jb->k;
        for (int64_t c = 0; c < jb->chunks; c++) {
            float *to = jb->vals + jb->off[c * jb->n + m];
            for (uint64_t bits = jb->mask[c * jb->n + m]; bits; bits &= bits - 1) *to++ = row[c * SP_B + __builtin_ctzll(bits)];
        }
    }
}

/* Where the tile of block blk and chunk c is read from w: its first row, and how many
 * rows of w it spans (ldw apart), SP_B floats of each. */
static const float *sp_source(const sp_job *jb, int64_t blk, int64_t c, int64_t *rows) {
    if (jb->transposed) {
        *rows = sp_width(jb->nj, blk);
        return jb->w + (blk * SP_B) * jb->ldw + c * SP_B;
    }
    *rows = sp_width(jb->k, c);
    return jb->w + (c * SP_B) * jb->ldw + blk * SP_B;
}

AVX2_INLINE void sp_prefetch_row(const float *row) {
    for (int q = 0; q < SP_B; q += 16) _mm_prefetch((const char *)(row + q), _MM_HINT_T0);
    _mm_prefetch((const char *)(row + SP_B - 1), _MM_HINT_T0);
}

/* Whether any lane of v is an infinity or NaN, ORed into seen. */
AVX2_INLINE __m256i sp_nonfinite(__m256 v, __m256i seen) {
    __m256i e = _mm256_set1_epi32(0x7f800000);
    return _mm256_or_si256(seen, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(v), e), e));
}

/* The tile b [kn rows, jn columns] into wp [SP_B][SP_B] (columns past jn zero); returns
 * whether it holds an infinity or NaN. */
AVX2 static bool sp_pack(const sp_job *jb, int64_t blk, int64_t c, float *wp) {
    int64_t jn = sp_width(jb->nj, blk), kn = sp_width(jb->k, c), ld = jb->ldw, rows;
    const float *src = sp_source(jb, blk, c, &rows);
    __m256i seen = _mm256_setzero_si256();
    if (!jb->transposed) {
        for (int64_t r = 0; r < kn; r++) {
            float *to = wp + r * SP_B;
            if (jn == SP_B) {
                for (int v = 0; v < SP_V; v++) {
                    __m256 x = _mm256_loadu_ps(src + r * ld + 8 * v);
                    seen = sp_nonfinite(x, seen);
                    _mm256_store_ps(to + 8 * v, x);
                }
            } else {
                memset(to, 0, SP_B * sizeof(float));
                memcpy(to, src + r * ld, (size_t)jn * sizeof(float));
                for (int v = 0; v < SP_V; v++) seen = sp_nonfinite(_mm256_load_ps(to + 8 * v), seen);
            }
        }
        return _mm256_movemask_epi8(seen) != 0;
    }
    /* wp [r][q] = w [blk * SP_B + q, c * SP_B + r] */
    if (jn == SP_B && kn == SP_B) {
        for (int q0 = 0; q0 < SP_B; q0 += 8)
            for (int r0 = 0; r0 < SP_B; r0 += 8) {
                __m256 t[8], u[8];
                for (int i = 0; i < 8; i++) {
                    t[i] = _mm256_loadu_ps(src + (q0 + i) * ld + r0);
                    seen = sp_nonfinite(t[i], seen);
                }
                for (int i = 0; i < 8; i += 2) {
                    u[i] = _mm256_unpacklo_ps(t[i], t[i + 1]);
                    u[i + 1] = _mm256_unpackhi_ps(t[i], t[i + 1]);
                }
                for (int i = 0; i < 8; i += 4) {
                    t[i] = _mm256_shuffle_ps(u[i], u[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
                    t[i + 1] = _mm256_shuffle_ps(u[i], u[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
                    t[i + 2] = _mm256_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
                    t[i + 3] = _mm256_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
                }
                for (int i = 0; i < 4; i++) {
                    _mm256_store_ps(wp + (r0 + i) * SP_B + q0, _mm256_permute2f128_ps(t[i], t[i + 4], 0x20));
                    _mm256_store_ps(wp + (r0 + i + 4) * SP_B + q0, _mm256_permute2f128_ps(t[i], t[i + 4], 0x31));
                }
            }
        return _mm256_movemask_epi8(seen) != 0;
    }
    bool bad = false;
    for (int64_t r = 0; r < kn; r++)
        for (int64_t q = 0; q < SP_B; q++) {
            float v = q < jn ? src[q * ld + r] : 0.0f;
            bad |= !isfinite(v);
            wp[r * SP_B + q] = v;
        }
    return bad;
}

/* Slab s: blocks [blocks * s / slabs, blocks * (s + 1) / slabs), chunk by chunk. */
AVX2 static void sp_slab(void *arg, int64_t begin, int64_t end) {
    const sp_job *jb = arg;
    for (int64_t s = begin; s < end; s++) {
        float *wp = jb->scratch + s * jb->slab_floats, *acc = wp + SP_B * SP_B;
        int64_t b0 = jb->blocks * s / jb->slabs, b1 = jb->blocks * (s + 1) / jb->slabs;
        int64_t t_end = b1 * jb->chunks, rows_ahead = 0;
        for (int64_t blk = b0; blk < b1; blk++) {
            for (int64_t c = 0; c < jb->chunks; c++) {
                int64_t t = blk * jb->chunks + c + SP_AHEAD, kn = sp_width(jb->k, c);
                bool dense = sp_pack(jb, blk, c, wp) || jb->every;
                const float *ahead = t < t_end ? sp_source(jb, t / jb->chunks, t % jb->chunks, &rows_ahead) : NULL;
                for (int64_t m = 0; m < jb->n; m++) {
                    if (ahead && m < rows_ahead) sp_prefetch_row(ahead + m * jb->ldw);
                    __m256 a[SP_V];
                    for (int v = 0; v < SP_V; v++) a[v] = c == 0 ? _mm256_setzero_ps() : _mm256_load_ps(acc + m * SP_B + 8 * v);
                    if (dense) {
                        const float *sm = jb->s + m * jb->k + c * SP_B;
                        for (int64_t r = 0; r < kn; r++) {
                            __m256 x = _mm256_set1_ps(sm[r]);
                            for (int v = 0; v < SP_V; v++) a[v] = _mm256_fmadd_ps(x, _mm256_load_ps(wp + r * SP_B + 8 * v), a[v]);
                        }
                    } else {
                        uint64_t bits = jb->mask[c * jb->n + m];
                        const float *val = jb->vals + jb->off[c * jb->n + m];
                        for (; bits; bits &= bits - 1, val++) {
                            const float *row = wp + __builtin_ctzll(bits) * SP_B;
                            __m256 x = _mm256_broadcast_ss(val);
                            for (int v = 0; v < SP_V; v++) a[v] = _mm256_fmadd_ps(x, _mm256_load_ps(row + 8 * v), a[v]);
                        }
                    }
                    for (int v = 0; v < SP_V; v++) _mm256_store_ps(acc + m * SP_B + 8 * v, a[v]);
                }
                if (ahead)
                    for (int64_t m = jb->n; m < rows_ahead; m++) sp_prefetch_row(ahead + m * jb->ldw);
            }
            int64_t j0 = blk * SP_B, jn = sp_width(jb->nj, blk);
            for (int64_t m = 0; m < jb->n; m++)
                for (int64_t q = 0; q < jn; q++)
                    jb->out[m * jb->nj + j0 + q] = acc[m * SP_B + q] + (jb->bias ? jb->bias[j0 + q] : 0.0f);
        }
    }
}

/* out [n, nj] = s [n, k] b (+ bias), b = w [k, nj] or w^T (w [nj, k]), from s's nonzeros
 * where at most max_density of s is nonzero and sparse allows it; with every term where
 * forced; else false, having written nothing.  *took: whether it summed the nonzeros. */
static bool sp_product(graft_ctx *ctx, int64_t n, int64_t k, int64_t nj, const float *s, const float *w, bool transposed,
                       const float *bias, float *out, bool sparse, double max_density, bool forced, bool *took) {
    *took = false;
    if (!graft_cpu_avx2() || n <= 0 || k <= 0 || nj <= 0 || n * k >= INT32_MAX) return false;
    if (!sparse && !forced) return false;
    int64_t chunks = (k + SP_B - 1) / SP_B, blocks = (nj + SP_B - 1) / SP_B, slabs = graft_num_threads();
    if (slabs > blocks) slabs = blocks;
    int64_t list_floats = (2 * n * chunks + n * chunks + n * k + 15) / 16 * 16;
    int64_t slab_floats = (SP_B * SP_B + n * SP_B + 16 + 15) / 16 * 16; /* + 16: off the tile's cache sets */
    float *scratch = graft_ctx_workspace(ctx, (size_t)(list_floats + slabs * slab_floats)); /* cache-line aligned */
    if (!scratch) return false;
    uint64_t *mask = (uint64_t *)scratch;
    int32_t *off = (int32_t *)(mask + n * chunks);
    sp_job jb = {.n = n, .k = k, .nj = nj, .chunks = chunks, .blocks = blocks, .slabs = slabs, .s = s, .w = w,
                 .ldw = transposed ? k : nj, .transposed = transposed, .mask = mask, .off = off,
                 .vals = (float *)(off + n * chunks), .bias = bias, .out = out,
                 .scratch = scratch + list_floats, .slab_floats = slab_floats};
    jb.every = !sparse;
    if (sparse) {
        graft_parallel_for(n, 8, sp_masks, &jb);
        int64_t nonzero = 0;
        for (int64_t i = 0; i < n * chunks; i++) { /* counts into offsets: chunk by chunk, m ascending */
            int32_t count = off[i];
            off[i] = (int32_t)nonzero;
            nonzero += count;
        }
        jb.every = nonzero > (int64_t)(max_density * (double)(n * k));
        if (jb.every && !forced) return false;
        if (!jb.every) graft_parallel_for(n, 8, sp_values, &jb);
    }
    graft_parallel_for(slabs, 1, sp_slab, &jb);
    *took = !jb.every;
    return true;
}
#endif

bool graft_linear_input_grad_avx2(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy, const float *w,
                                  float *dx, bool forced) {
#if GRAFT_HAVE_AVX2_BUILD
    bool took;
    if (!sp_product(ctx, n, out, in, dy, w, false, NULL, dx, graft_linear_sparse_dy_allowed(), SP_DX_MAX_DENSITY, forced,
                    &took))
        return false;
    if (took) graft_linear_sparse_dy_taken();
    return true;
#else
    (void)ctx, (void)n, (void)in, (void)out, (void)dy, (void)w, (void)dx, (void)forced;
    return false;
#endif
}

bool graft_linear_forward_sparse_avx2(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x,
                                      const float *w, const float *b, float *y) {
#if GRAFT_HAVE_AVX2_BUILD
    bool took;
    if (!graft_linear_sparse_x_allowed() ||
        !sp_product(ctx, n, in, out, x, w, true, b, y, true, SP_FORWARD_MAX_DENSITY, false, &took))
        return false;
    graft_linear_sparse_x_taken();
    return true;
#else
    (void)ctx, (void)n, (void)in, (void)out, (void)x, (void)w, (void)b, (void)y;
    return false;
#endif
}

#if GRAFT_HAVE_AVX2_BUILD
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
