/* conv_wgemm.c — Winograd F(2x2, 3x3) for the 3x3, stride-1, padding-1 convolutions (all
 * of VGG's) on CPUs without AVX-512, where conv_avx512.c's kernels do not run: with AVX2
 * loops and a micro-kernel of our own where the CPU has AVX2 and FMA, else with portable
 * loops and BLAS for the products.
 *
 * Lavin and Gray's algorithm, in the layout of their GEMM formulation: an output tile of
 * 2x2 reads a 4x4 input patch d, and for each of the 16 elements e of the transformed
 * tile
 *
 *   U_e [oc, c] = (G g G^T)_e     per pair of channels, from the weights g, once per call
 *                                 (or once while they stay the same: conv.c's held path)
 *   V_e [c, tiles] = (B^T d B)_e  per input channel and tile
 *   M_e [oc, tiles] = U_e . V_e   16 matrix products
 *   Y = A^T M A                   per output channel and tile, plus the bias and ReLU
 *
 * so the products are 16 / 36 of the direct convolution's.  The transforms are additions
 * along contiguous rows (the same formulas, in the same order, as conv_avx512.c's
 * F(2x2, 3x3)).
 *
 * Maps of at most 2 x 2 (VGG's last block at 32 x 32 input, one tile per image) take, with
 * the AVX2 loops, one product per output position instead, with no transforms (below, at
 * forward_taps).
 *
 * Tiles are numbered (image, tile row, tile column) and taken in chunks of chunk_tiles(g),
 * a function of the channel counts only, small enough that a chunk's V and M stay in L2
 * between the transform and the products where the channels allow (below, at
 * WB_CHUNK_FLOATS).  The work units, (chunk, part of the output channels), are split over
 * graft's pool, each thread with its own V and M.  Deep layers on small maps have few
 * chunks, and then the AVX2 path splits the output channels too, in multiples of 48 rows.
 * The AVX2 path keeps U packed as BLAS packs its A panels (gemm_avx2.h,
 * graft_avx2_products_packed): a step of the products broadcasts from one run of U
 * instead of six rows 1-2 KiB apart.
 *
 * Each output is the same float whatever the thread count or the batch around its image
 * (the feature cache runs the trunk on larger batches than training does; test_conv
 * checks it bit for bit):
 *   - the AVX2 micro-kernel sums every output over c = 0..c-1 in order with fused
 *     multiply-adds, whichever rows and tiles share its block;
 *   - BLAS's sums may depend on the shape of the call, so the portable path calls it with
 *     one shape for every chunk of a layer: all output channels, and the chunk's tiles
 *     padded with zeros to chunk_tiles(g). */
#include "ops/conv_internal.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/cpu.h"
#include "core/error.h"
#include "core/threads.h"
#include "graft/graft.h"
#include "ops/gemm_avx2.h"

#define WB_ELEMENTS 16       /* a transformed 4x4 tile */
#define WB_ALIGN_FLOATS 16   /* 64-byte alignment of each thread's scratch */
/* Floats after each M_e, so that the 16 planes (a power of two apart for VGG's channels)
 * do not fall on the same sets of L1, where the output transform reads all 16 at once */
#define WB_M_PAD 16
#define WB_ROW_ALIGN 48      /* output-channel parts are multiples of this many rows: whole
                              * panels of 16 tiles' rows of M and whole blocks of packed U */
/* A chunk's V [16][c][tiles] is about this many floats (256 KiB), within 64..4096 tiles:
 * measured on VGG16's layers on a Zen 3 (512 KiB of L2 per core), where chunks of 1 to 4 Mi
 * floats ran 10-35% slower than 256 Ki, and 64, 128 and 256 Ki were within noise, the deep
 * layers ahead with the smallest.  The floor: every chunk reads all of U (4 MiB for 256
 * channels, 16 MiB for 512, past L2 and most of L3), so the deep layers' chunks need tiles
 * enough to use it.  The products alone, one thread, U packed: 256 channels, 16 tiles 39-41
 * GFLOP/s, 64 tiles 54; 512 channels, 32 tiles 33-34, 64 tiles 57, 128 tiles 59.
 * `graft bench features` at batch 256, four alternations: floors of 32, 64 and 128 tiles
 * with U packed 172-225, 228-237 and 170-241 images/s, 32 with U by rows 166-245. */
#define WB_CHUNK_FLOATS ((int64_t)64 * 1024)
#define WB_CHUNK_MIN 64
#define WB_CHUNK_MAX 4096

bool graft_conv2d_wgemm_fits(const graft_conv2d_geom *g) {
    if (!(g->kh == 3 && g->kw == 3 && g->sh == 1 && g->sw == 1 && g->ph == 1 && g->pw == 1)) return false;
    if (g->c > INT_MAX || g->oc > INT_MAX) return false;
    /* the transformed weights within the default workspace bound, like conv_avx512.c's */
    return g->oc <= (int64_t)(GRAFT_CONV2D_WORKSPACE_LIMIT_FLOATS / WB_ELEMENTS) / g->c;
}

static bool portable_loops; /* tests: the portable path even where the AVX2 one runs */

void graft_conv2d_wgemm_set_portable(bool portable) { portable_loops = portable; }

static int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

/* Tiles per chunk: a function of g's channels only, never of the batch. */
static int64_t chunk_tiles(const graft_conv2d_geom *g) {
    int64_t wide = g->c > g->oc ? g->c : g->oc;
    int64_t t = WB_CHUNK_FLOATS / (WB_ELEMENTS * wide) / 16 * 16;
    return t < WB_CHUNK_MIN ? WB_CHUNK_MIN : t > WB_CHUNK_MAX ? WB_CHUNK_MAX : t;
}

/* One thread's V [16][c][tc], M [16][oc][tc] and the four transformed input rows. */
static size_t thread_floats(const graft_conv2d_geom *g) {
    int64_t tc = chunk_tiles(g);
    size_t f = (size_t)(WB_ELEMENTS * (g->c * (tc + 16) + round_up(g->oc, WB_ROW_ALIGN) * tc + WB_M_PAD) + 4 * (g->w + 4));
    return (size_t)round_up((int64_t)f, WB_ALIGN_FLOATS);
}

/* Maps of at most 2 x 2 (VGG's last block at 32 x 32 input) take the products by output
 * position below, where the CPU runs the AVX2 loops. */
static bool uses_taps(const graft_conv2d_geom *g) {
    return g->h <= 2 && g->w <= 2 && graft_cpu_avx2() && !portable_loops;
}

/* Whether U is packed for gemm_avx2.h's kernel (graft_avx2_products_packed): the AVX2
 * loops' products read U_e [oc][c] as blocks of GRAFT_AVX2_MR rows, [c][6] each. */
static bool packed_u(const graft_conv2d_geom *g) {
#if GRAFT_HAVE_AVX2_BUILD
    return !uses_taps(g) && graft_cpu_avx2() && !portable_loops;
#else
    (void)g;
    return false;
#endif
}

/* Rows of one U_e as stored: padded to whole blocks where packed. */
static int64_t u_rows(const graft_conv2d_geom *g) {
#if GRAFT_HAVE_AVX2_BUILD
    if (packed_u(g)) return round_up(g->oc, GRAFT_AVX2_MR);
#endif
    return g->oc;
}

int graft_conv2d_wgemm_layout(const graft_conv2d_geom *g) { return uses_taps(g) ? 1 : packed_u(g) ? 2 : 0; }

size_t graft_conv2d_wgemm_weights_floats(const graft_conv2d_geom *g) {
    /* U [16][oc][c] (packed: [16][oc / 6][c][6], oc rounded up), or W_p [hw][oc][c hw]
     * with hw <= 4 */
    return (size_t)round_up(WB_ELEMENTS * u_rows(g) * g->c, WB_ALIGN_FLOATS);
}

size_t graft_conv2d_wgemm_prepared_workspace_floats(const graft_conv2d_geom *g) {
    if (uses_taps(g)) { /* xt [c hw][np] and M [hw][oc][np] */
        int64_t hw = g->h * g->w, np = round_up(g->n, 16);
        return (size_t)(hw * g->c * np + hw * g->oc * np) + 2 * WB_ALIGN_FLOATS;
    }
    /* the threads' parts, and a row of zeros for the padding rows */
    return (size_t)graft_num_threads() * thread_floats(g) + (size_t)round_up(g->w, WB_ALIGN_FLOATS) +
           2 * WB_ALIGN_FLOATS;
}

size_t graft_conv2d_wgemm_workspace_floats(const graft_conv2d_geom *g) {
    return WB_ALIGN_FLOATS + graft_conv2d_wgemm_weights_floats(g) + graft_conv2d_wgemm_prepared_workspace_floats(g);
}

/* ---- the weights: U_e [oc, c] = (G g G^T)_e ------------------------------------------ */

typedef struct wb_weights_job {
    const graft_conv2d_geom *g;
    const float *w; /* [oc, c, 3, 3] */
    float *u;       /* [16][oc][c] */
} wb_weights_job;

static void weights_range(void *arg, int64_t begin, int64_t end) {
    const wb_weights_job *j = arg;
    int64_t c = j->g->c, plane = u_rows(j->g) * c;
#if GRAFT_HAVE_AVX2_BUILD
    bool packed = packed_u(j->g);
#endif
    for (int64_t o = begin; o < end; o++)
        for (int64_t ci = 0; ci < c; ci++) {
            const float *k = j->w + (o * c + ci) * 9;
            float gg[4][3];
            for (int col = 0; col < 3; col++) { /* G g */
                float a = k[col], b = k[3 + col], d = k[6 + col], ad = a + d;
                gg[0][col] = a;
                gg[1][col] = 0.5f * (ad + b);
                gg[2][col] = 0.5f * (ad - b);
                gg[3][col] = d;
            }
            float *dst = j->u + o * c + ci;
#if GRAFT_HAVE_AVX2_BUILD
            if (packed) dst = j->u + (o / GRAFT_AVX2_MR * c + ci) * GRAFT_AVX2_MR + o % GRAFT_AVX2_MR;
#endif
            for (int r = 0; r < 4; r++) { /* (G g) G^T */
                float a = gg[r][0], b = gg[r][1], d = gg[r][2], ad = a + d;
                dst[(r * 4 + 0) * plane] = a;
                dst[(r * 4 + 1) * plane] = 0.5f * (ad + b);
                dst[(r * 4 + 2) * plane] = 0.5f * (ad - b);
                dst[(r * 4 + 3) * plane] = d;
            }
        }
}

/* W_p [o][ci * hw + q] = w [o, ci, qy - py + 1, qx - px + 1] for the positions p of a map
 * of at most 2 x 2, rows [begin, end). */
static void taps_range(void *arg, int64_t begin, int64_t end) {
    const wb_weights_job *j = arg;
    const graft_conv2d_geom *g = j->g;
    int64_t c = g->c, h = g->h, w = g->w, hw = h * w, k = c * hw;
    for (int64_t o = begin; o < end; o++)
        for (int64_t p = 0; p < hw; p++) {
            float *dst = j->u + (p * g->oc + o) * k;
            for (int64_t ci = 0; ci < c; ci++)
                for (int64_t q = 0; q < hw; q++) {
                    int64_t ky = q / w - p / w + 1, kx = q % w - p % w + 1;
                    dst[ci * hw + q] = j->w[(o * c + ci) * 9 + ky * 3 + kx];
                }
        }
}

graft_status graft_conv2d_wgemm_prepare(const graft_conv2d_geom *g, const float *w, float *u) {
    if (!graft_conv2d_wgemm_fits(g))
        return graft_error(GRAFT_ERR_UNSUPPORTED, "conv2d: Winograd needs a 3x3, stride-1, padding-1 kernel");
    wb_weights_job j = {.g = g, .w = w, .u = u};
    graft_parallel_for(g->oc, 1 + 4096 / (9 * g->c), uses_taps(g) ? taps_range : weights_range, &j);
#if GRAFT_HAVE_AVX2_BUILD
    int64_t plane = u_rows(g) * g->c;
    if (u_rows(g) > g->oc) /* the last block's padding rows */
        for (int e = 0; e < WB_ELEMENTS; e++)
            for (int64_t ci = 0; ci < g->c; ci++)
                for (int64_t o = g->oc; o < u_rows(g); o++)
                    u[e * plane + (o / GRAFT_AVX2_MR * g->c + ci) * GRAFT_AVX2_MR + o % GRAFT_AVX2_MR] = 0.0f;
#endif
    return GRAFT_OK;
}

/* ---- the tiles ----------------------------------------------------------------------- */

typedef struct wb_job {
    const graft_conv2d_geom *g;
    const float *x, *u, *b;
    float *y;
    const float *zeros; /* a row of w zeros: the padding rows */
    float *scratch;
    size_t scratch_stride;
    int64_t th, tw, tiles, tc, chunks, parts, units;
    int64_t ldv; /* floats between rows of V_e: tc plus a cache line, so that rows do not
                  * fall on the same few sets of L1 */
    int64_t u_plane; /* floats between U_e and U_{e+1} */
    bool avx2; /* the transforms' AVX2 loops */
} wb_job;

/* A run of tiles in one tile row: its image, tile row, first tile column and count, the
 * index of its first tile within the chunk, and the tiles of the chunk from it on. */
typedef struct wb_segment {
    int64_t image, ty, tx, count, at, left;
} wb_segment;

/* The first segment of the tiles [t0, t1), t0 < t1. */
static wb_segment first_segment(const wb_job *j, int64_t t0, int64_t t1) {
    wb_segment s = {.image = t0 / (j->th * j->tw), .ty = t0 / j->tw % j->th, .tx = t0 % j->tw, .left = t1 - t0};
    s.count = j->tw - s.tx < s.left ? j->tw - s.tx : s.left;
    return s;
}

/* Moves s to the next segment; false after the last. */
static bool next_segment(const wb_job *j, wb_segment *s) {
    s->at += s->count;
    if (!(s->left -= s->count)) return false;
    s->tx = 0;
    if (++s->ty == j->th) s->ty = 0, s->image++;
    s->count = j->tw < s->left ? j->tw : s->left;
    return true;
}

/* The loops of the transforms, in portable C and in AVX2 (8 tiles or columns at a time,
 * the same additions in the same order, so the same bits). */

/* B^T d, by columns: u_r[p] from the four patch rows d_r (d_r[p - 1] is padded column p),
 * for p in [lo, hi). */
static void combine_rows(const float *const d[4], float *const u[4], int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; p++) {
        u[0][p] = d[0][p - 1] - d[2][p - 1];
        u[1][p] = d[1][p - 1] + d[2][p - 1];
        u[2][p] = d[2][p - 1] - d[1][p - 1];
        u[3][p] = d[1][p - 1] - d[3][p - 1];
    }
}

/* (B^T d) B, by rows: from q = u_r at the segment's first padded column, V_{r,0..3} of
 * tiles [i0, i1) into v[0..3]. */
static void combine_columns(const float *q, float *const v[4], int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {
        float a = q[2 * i], b = q[2 * i + 1], c = q[2 * i + 2], d = q[2 * i + 3];
        v[0][i] = a - c;
        v[1][i] = b + c;
        v[2][i] = c - b;
        v[3][i] = b - d;
    }
}

/* An output plus its bias, through the fused ReLU when asked, under graft_relu_forward's
 * rule (positive values and NaN pass, the rest is +0). */
static inline float finish(float y, float bias, bool relu) {
    y += bias;
    return relu && !(y > 0.0f || isnan(y)) ? 0.0f : y;
}

/* Y = A^T M A of tiles [i0, i1) of a segment: m_e at m + e * es, output rows y0 and y1
 * (NULL past the map's bottom); tiles from `whole` on have no right column. */
static void finish_tiles(const float *m, int64_t es, int64_t i0, int64_t i1, int64_t whole, float bias, bool relu,
                         float *y0, float *y1) {
    for (int64_t i = i0; i < i1; i++) {
        float sr[2][4];
        for (int col = 0; col < 4; col++) { /* A^T M, by columns */
            float m0 = m[(0 * 4 + col) * es + i], m1 = m[(1 * 4 + col) * es + i];
            float m2 = m[(2 * 4 + col) * es + i], m3 = m[(3 * 4 + col) * es + i];
            sr[0][col] = m0 + m1 + m2;
            sr[1][col] = m1 - m2 - m3;
        }
        float *dst[2] = {y0, y1};
        for (int r = 0; r < 2 && dst[r]; r++) { /* (A^T M) A, by rows */
            dst[r][2 * i] = finish(sr[r][0] + sr[r][1] + sr[r][2], bias, relu);
            if (i < whole) dst[r][2 * i + 1] = finish(sr[r][1] - sr[r][2] - sr[r][3], bias, relu);
        }
    }
}

#if GRAFT_HAVE_AVX2_BUILD
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2")))

/* combine_rows's additions on 8 columns of the four patch rows held in p. */
AVX2 static inline void combine_rows_regs(const __m256 p[4], __m256 u[4]) {
    u[0] = _mm256_sub_ps(p[0], p[2]);
    u[1] = _mm256_add_ps(p[1], p[2]);
    u[2] = _mm256_sub_ps(p[2], p[1]);
    u[3] = _mm256_sub_ps(p[1], p[3]);
}

/* combine_columns's additions for 8 tiles, a, b, c, d each lane's patch columns 0..3:
 * V_{r,0..3} into vr [0..3]. */
AVX2 static inline void combine_lanes(__m256 a, __m256 b, __m256 c, __m256 d, float *const vr[4]) {
    _mm256_storeu_ps(vr[0], _mm256_sub_ps(a, c));
    _mm256_storeu_ps(vr[1], _mm256_add_ps(b, c));
    _mm256_storeu_ps(vr[2], _mm256_sub_ps(c, b));
    _mm256_storeu_ps(vr[3], _mm256_sub_ps(b, d));
}

AVX2 static void combine_rows_avx2(const float *const d[4], float *const u[4], int64_t lo, int64_t hi) {
    int64_t p = lo;
    for (; p + 8 <= hi; p += 8) {
        __m256 in[4], out[4];
        for (int r = 0; r < 4; r++) in[r] = _mm256_loadu_ps(d[r] + p - 1);
        combine_rows_regs(in, out);
        for (int r = 0; r < 4; r++) _mm256_storeu_ps(u[r] + p, out[r]);
    }
    combine_rows(d, u, p, hi);
}

/* The even and the odd floats of q [0, 16), in order. */
AVX2 static inline void deinterleave(const float *q, __m256 *even, __m256 *odd) {
    __m256 lo = _mm256_loadu_ps(q), hi = _mm256_loadu_ps(q + 8);
    __m256 e = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)), o = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
    *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
}

AVX2 static void combine_columns_avx2(const float *q, float *const v[4], int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + 8 <= i1; i += 8) {
        __m256 a, b, c, d;
        deinterleave(q + 2 * i, &a, &b);
        deinterleave(q + 2 * i + 2, &c, &d);
        float *const vi[4] = {v[0] + i, v[1] + i, v[2] + i, v[3] + i};
        combine_lanes(a, b, c, d, vi);
    }
    combine_columns(q, v, i, i1);
}

AVX2 static inline __m256 finish_avx2(__m256 y, __m256 bias, bool relu) {
    y = _mm256_add_ps(y, bias);
    return relu ? _mm256_and_ps(y, _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_NLE_UQ)) : y;
}

/* Writes a and b interleaved: dst[2k] = a[k], dst[2k + 1] = b[k]. */
AVX2 static inline void store_pairs(float *dst, __m256 a, __m256 b) {
    __m256 lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}

/* finish_tiles's sums for 8 tiles, m_e at m + e * es: y [r][0] and y [r][1] are output
 * row r's left and right columns, biased and through the ReLU when asked. */
AVX2 static inline void finish_lanes(const float *m, int64_t es, __m256 bias, bool relu, __m256 y[2][2]) {
    __m256 sr[2][4];
    for (int col = 0; col < 4; col++) {
        __m256 m0 = _mm256_loadu_ps(m + (0 * 4 + col) * es), m1 = _mm256_loadu_ps(m + (1 * 4 + col) * es);
        __m256 m2 = _mm256_loadu_ps(m + (2 * 4 + col) * es), m3 = _mm256_loadu_ps(m + (3 * 4 + col) * es);
        sr[0][col] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
        sr[1][col] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
    }
    for (int r = 0; r < 2; r++) {
        y[r][0] = finish_avx2(_mm256_add_ps(_mm256_add_ps(sr[r][0], sr[r][1]), sr[r][2]), bias, relu);
        y[r][1] = finish_avx2(_mm256_sub_ps(_mm256_sub_ps(sr[r][1], sr[r][2]), sr[r][3]), bias, relu);
    }
}

AVX2 static void finish_tiles_avx2(const float *m, int64_t es, int64_t i0, int64_t i1, int64_t whole, float bias,
                                   bool relu, float *y0, float *y1) {
    __m256 vb = _mm256_set1_ps(bias);
    int64_t i = i0;
    for (; i + 8 <= i1 && i + 8 <= whole; i += 8) {
        __m256 y[2][2];
        finish_lanes(m + i, es, vb, relu, y);
        float *dst[2] = {y0, y1};
        for (int r = 0; r < 2 && dst[r]; r++) store_pairs(dst[r] + 2 * i, y[r][0], y[r][1]);
    }
    finish_tiles(m, es, i, i1, whole, bias, relu, y0, y1);
}
#endif

/* Small maps (VGG's 8 x 8 and 4 x 4 at 32 x 32 input) have rows of 4 and 2 tiles, too
 * short for the loops above, which take 8 tiles or columns at a time and leave the rest
 * to the portable loops.  There the AVX2 path takes 8 / tw whole rows of tiles at once,
 * one tile a lane (a group): the same additions in the same order as for one row at a
 * time, so the same bits.  The number of segments a group takes from s on (2 or 4), or
 * 0 where s does not start one: the map's width is exactly 2 tw with tw 2 or 4, and s and
 * the segments after it are whole rows of the chunk's tiles, 8 tiles in all. */
static int group_segments(const wb_job *j, const wb_segment *s) {
    if (!j->avx2 || (j->tw != 2 && j->tw != 4) || j->g->w != 2 * j->tw) return 0;
    return s->tx == 0 && s->count == j->tw && s->left >= 8 ? (int)(8 / j->tw) : 0;
}

/* The four patch rows of segment s for channel ci (the zero row past the image). */
static void patch_rows(const wb_job *j, const wb_segment *s, int64_t ci, const float *d[4]) {
    const graft_conv2d_geom *g = j->g;
    for (int r = 0; r < 4; r++) {
        int64_t iy = 2 * s->ty - 1 + r;
        d[r] = iy >= 0 && iy < g->h ? j->x + (s->image * g->c + ci) * g->h * g->w + iy * g->w : j->zeros;
    }
}

#if GRAFT_HAVE_AVX2_BUILD

/* V_e [c][at, at + 8) of a group of segments from s (group_segments), each a whole row of
 * tw tiles of a map 2 tw wide: patch column k of tile i is padded column 2 i + k, input
 * column 2 i + k - 1, zero at either edge. */
AVX2 static void input_group(const wb_job *j, wb_segment s, int groups, float *v) {
    int64_t ld = j->ldv, es = j->g->c * ld;
    wb_segment seg[4];
    for (int k = 0; k < groups; k++) {
        seg[k] = s;
        if (k + 1 < groups) next_segment(j, &s);
    }
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t ci = 0; ci < j->g->c; ci++) {
        float *vt = v + ci * ld + seg[0].at;
        const float *d[4][4];
        for (int k = 0; k < groups; k++) patch_rows(j, &seg[k], ci, d[k]);
        __m256 a[4], b[4], c[4], e[4]; /* per combined row r: the lanes' patch columns 0..3 */
        if (groups == 2) { /* rows of 8 columns: segment k in lanes 4k..4k+3 */
            __m256 p0[4], p1[4], u0[4], u1[4];
            for (int r = 0; r < 4; r++) p0[r] = _mm256_loadu_ps(d[0][r]), p1[r] = _mm256_loadu_ps(d[1][r]);
            combine_rows_regs(p0, u0);
            combine_rows_regs(p1, u1);
            for (int r = 0; r < 4; r++) { /* even and odd input columns of both rows, as deinterleave */
                __m256 ev = _mm256_shuffle_ps(u0[r], u1[r], _MM_SHUFFLE(2, 0, 2, 0));
                __m256 od = _mm256_shuffle_ps(u0[r], u1[r], _MM_SHUFFLE(3, 1, 3, 1));
                ev = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), _MM_SHUFFLE(3, 1, 2, 0)));
                od = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od), _MM_SHUFFLE(3, 1, 2, 0)));
                b[r] = ev; /* input column 2i */
                c[r] = od; /* 2i + 1 */
                /* 2i - 1 (zero for i = 0) and 2i + 2 (zero for the last tile), within each row */
                a[r] = _mm256_blend_ps(_mm256_permute_ps(od, _MM_SHUFFLE(2, 1, 0, 0)), zero, 0x11);
                e[r] = _mm256_blend_ps(_mm256_permute_ps(ev, _MM_SHUFFLE(0, 3, 2, 1)), zero, 0x88);
            }
        } else { /* rows of 4 columns: segments 0 and 2 in P's halves, 1 and 3 in Q's */
            __m256 p[4], q[4], up[4], uq[4];
            for (int r = 0; r < 4; r++) {
                p[r] = _mm256_loadu2_m128(d[2][r], d[0][r]);
                q[r] = _mm256_loadu2_m128(d[3][r], d[1][r]);
            }
            combine_rows_regs(p, up);
            combine_rows_regs(q, uq);
            for (int r = 0; r < 4; r++) { /* lanes: tile 0 and 1 of segments 0, 1 | 2, 3 */
                b[r] = _mm256_shuffle_ps(up[r], uq[r], _MM_SHUFFLE(2, 0, 2, 0));
                c[r] = _mm256_shuffle_ps(up[r], uq[r], _MM_SHUFFLE(3, 1, 3, 1));
                a[r] = _mm256_blend_ps(zero, _mm256_shuffle_ps(up[r], uq[r], _MM_SHUFFLE(1, 1, 1, 1)), 0xAA);
                e[r] = _mm256_blend_ps(_mm256_shuffle_ps(up[r], uq[r], _MM_SHUFFLE(2, 2, 2, 2)), zero, 0xAA);
            }
        }
        for (int r = 0; r < 4; r++) {
            float *const vr[4] = {vt + (r * 4) * es, vt + (r * 4 + 1) * es, vt + (r * 4 + 2) * es, vt + (r * 4 + 3) * es};
            combine_lanes(a[r], b[r], c[r], e[r], vr);
        }
    }
}
#endif

/* V_e [c][tc] for the tiles [t0, t1): per channel and segment, the four patch rows are
 * combined down the columns (B^T d) along the segment, then across (. B) per tile. */
static void input_transform(const wb_job *j, int64_t t0, int64_t t1, float *v, float *rows) {
    const graft_conv2d_geom *g = j->g;
    int64_t c = g->c, w = g->w, ld = j->ldv, es = c * ld;
    float *const u[4] = {rows, rows + (w + 4), rows + 2 * (w + 4), rows + 3 * (w + 4)};
    wb_segment s = first_segment(j, t0, t1);
    do {
#if GRAFT_HAVE_AVX2_BUILD
        int groups = group_segments(j, &s);
        if (groups) {
            input_group(j, s, groups, v);
            for (int k = 1; k < groups; k++) next_segment(j, &s);
            continue;
        }
#endif
        /* padded column p holds input column p - 1; the segment reads p in [2 tx, 2 (tx + count) + 2) */
        int64_t pa = 2 * s.tx, pb = 2 * (s.tx + s.count) + 2;
        int64_t lo = pa > 1 ? pa : 1, hi = pb < w + 1 ? pb : w + 1; /* the columns inside the image */
        for (int64_t ci = 0; ci < c; ci++) {
            const float *d[4];
            patch_rows(j, &s, ci, d);
            /* the padding's columns: at most one on the left (column 0) and two on the right
             * (an odd width), set one by one (as loops the compiler called memset for
             * each, 2% of VGG16's features at 32 x 32, where small maps have short rows) */
            for (int r = 0; r < 4; r++) {
                if (pa < lo) u[r][pa] = 0.0f;
                if (hi < pb) u[r][hi] = 0.0f;
                if (hi + 1 < pb) u[r][hi + 1] = 0.0f;
            }
            float *vt = v + ci * ld + s.at;
#if GRAFT_HAVE_AVX2_BUILD
            if (j->avx2) {
                combine_rows_avx2(d, u, lo, hi);
                for (int r = 0; r < 4; r++) {
                    float *const vr[4] = {vt + (r * 4) * es, vt + (r * 4 + 1) * es, vt + (r * 4 + 2) * es,
                                          vt + (r * 4 + 3) * es};
                    combine_columns_avx2(u[r] + pa, vr, 0, s.count);
                }
                continue;
            }
#endif
            combine_rows(d, u, lo, hi);
            for (int r = 0; r < 4; r++) {
                float *const vr[4] = {vt + (r * 4) * es, vt + (r * 4 + 1) * es, vt + (r * 4 + 2) * es,
                                      vt + (r * 4 + 3) * es};
                combine_columns(u[r] + pa, vr, 0, s.count);
            }
        }
    } while (next_segment(j, &s));
    /* the products run on whole panels of 16 tiles, BLAS's on the whole chunk: zeros past
     * the last tile */
    int64_t n = t1 - t0, n16 = j->avx2 ? round_up(n, 16) : j->tc;
    if (n16 > n)
        for (int64_t row = 0; row < WB_ELEMENTS * c; row++) memset(v + row * ld + n, 0, (size_t)(n16 - n) * sizeof(float));
}

#if GRAFT_HAVE_AVX2_BUILD
/* Y = A^T M A of a group of segments from s (group_segments) for output channel o (the
 * tiles' M_e at m + s.at + e * es), as finish_tiles_avx2 sums them, each segment's two
 * rows of outputs written where output_transform writes them. */
AVX2 static void output_group(const wb_job *j, const float *m, int64_t es, wb_segment s, int groups, int64_t o,
                              float bias) {
    const graft_conv2d_geom *g = j->g;
    int64_t oh = g->oh, ow = g->ow;
    float *row0[4]; /* each segment's first output row */
    int64_t ty[4], at = s.at;
    for (int k = 0; k < groups; k++) {
        row0[k] = j->y + (s.image * g->oc + o) * oh * ow + 2 * s.ty * ow;
        ty[k] = s.ty;
        if (k + 1 < groups) next_segment(j, &s);
    }
    __m256 y[2][2];
    finish_lanes(m + at, es, _mm256_set1_ps(bias), g->relu, y);
    for (int r = 0; r < 2; r++) {
        /* each lane's pair of outputs side by side: lo holds tiles 0, 1 and 4, 5, hi 2, 3 and 6, 7 */
        __m256 lo = _mm256_unpacklo_ps(y[r][0], y[r][1]), hi = _mm256_unpackhi_ps(y[r][0], y[r][1]);
        for (int k = 0; k < groups; k++) {
            if (2 * ty[k] + r >= oh) continue;
            float *dst = row0[k] + r * ow;
            if (groups == 2) /* a row of 4 tiles: 8 outputs */
                _mm256_storeu_ps(dst, k == 0 ? _mm256_permute2f128_ps(lo, hi, 0x20) : _mm256_permute2f128_ps(lo, hi, 0x31));
            else /* a row of 2 tiles: 4 outputs, segment k's from lo (0, 2) or hi (1, 3) */
                _mm_storeu_ps(dst, k & 1 ? (k & 2 ? _mm256_extractf128_ps(hi, 1) : _mm256_castps256_ps128(hi))
                                         : (k & 2 ? _mm256_extractf128_ps(lo, 1) : _mm256_castps256_ps128(lo)));
        }
    }
}
#endif

/* Y = A^T M A for output channels [o0, o1) of the tiles [t0, t1): m holds M_e [16][rows][tc]
 * for the channels from o0. */
static void output_transform(const wb_job *j, int64_t t0, int64_t t1, const float *m, int64_t o0, int64_t o1,
                             int64_t rows) {
    const graft_conv2d_geom *g = j->g;
    int64_t oh = g->oh, ow = g->ow, p = oh * ow, tc = j->tc, es = rows * tc + WB_M_PAD;
    for (int64_t o = o0; o < o1; o++) {
        float bias = j->b ? j->b[o] : 0.0f;
        const float *mo = m + (o - o0) * tc;
        wb_segment s = first_segment(j, t0, t1);
        do {
#if GRAFT_HAVE_AVX2_BUILD
            int groups = group_segments(j, &s);
            if (groups) {
                output_group(j, mo, es, s, groups, o, bias);
                for (int k = 1; k < groups; k++) next_segment(j, &s);
                continue;
            }
#endif
            float *y0 = j->y + (s.image * g->oc + o) * p + 2 * s.ty * ow + 2 * s.tx;
            float *y1 = 2 * s.ty + 1 < oh ? y0 + ow : NULL;
            /* tiles whose right column lies inside the map */
            int64_t whole = 2 * (s.tx + s.count) > ow ? s.count - 1 : s.count;
#if GRAFT_HAVE_AVX2_BUILD
            if (j->avx2) {
                finish_tiles_avx2(mo + s.at, es, 0, s.count, whole, bias, g->relu, y0, y1);
                continue;
            }
#endif
            finish_tiles(mo + s.at, es, 0, s.count, whole, bias, g->relu, y0, y1);
        } while (next_segment(j, &s));
    }
}

/* Units [u0, u1) of one thread: unit u is chunk u / parts, output-channel part u % parts. */
static void wb_task(void *arg, int64_t begin, int64_t end) {
    const wb_job *j = arg;
    const graft_conv2d_geom *g = j->g;
    int64_t threads = graft_num_threads(), c = g->c, tc = j->tc;
    int64_t row_units = round_up(g->oc, WB_ROW_ALIGN) / WB_ROW_ALIGN;
    for (int64_t task = begin; task < end; task++) {
        float *v = j->scratch + (size_t)task * j->scratch_stride;
        float *m = v + WB_ELEMENTS * c * j->ldv;
        float *rows = m + WB_ELEMENTS * (round_up(g->oc, WB_ROW_ALIGN) * tc + WB_M_PAD);
        int64_t u0 = j->units * task / threads, u1 = j->units * (task + 1) / threads, have = -1;
        for (int64_t un = u0; un < u1; un++) {
            int64_t chunk = un / j->parts, part = un % j->parts;
            int64_t t0 = chunk * tc, t1 = t0 + tc < j->tiles ? t0 + tc : j->tiles;
            int64_t o0 = row_units * part / j->parts * WB_ROW_ALIGN;
            int64_t o1 = row_units * (part + 1) / j->parts * WB_ROW_ALIGN;
            if (o1 > g->oc) o1 = g->oc;
            if (o0 >= o1) continue;
            if (have != chunk) input_transform(j, t0, t1, v, rows), have = chunk;
            int64_t rows_m = o1 - o0, ldv = j->ldv;
#if GRAFT_HAVE_AVX2_BUILD
            if (j->avx2) {
                for (int e = 0; e < WB_ELEMENTS; e++) /* o0: a multiple of WB_ROW_ALIGN, so of whole blocks */
                    graft_avx2_products_packed(true, j->u + e * j->u_plane + o0 * c, rows_m, c, v + e * c * ldv, ldv,
                                               round_up(t1 - t0, 16), m + e * (rows_m * tc + WB_M_PAD), tc);
                output_transform(j, t0, t1, m, o0, o1, rows_m);
                continue;
            }
#endif
            /* BLAS's sums may depend on the shape of the call: every call has the same */
            for (int e = 0; e < WB_ELEMENTS; e++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows_m, (int)tc, (int)c, 1.0f,
                            j->u + (e * g->oc + o0) * c, (int)c, v + e * c * ldv, (int)ldv, 0.0f,
                            m + e * (rows_m * tc + WB_M_PAD), (int)tc);
            output_transform(j, t0, t1, m, o0, o1, rows_m);
        }
    }
}

static float *aligned(float *p) {
    uintptr_t a = (uintptr_t)p, to = WB_ALIGN_FLOATS * sizeof(float);
    return (float *)((a + to - 1) / to * to);
}

/* ---- maps of at most 2 x 2: one product per output position ---------------------------
 *
 * With a 3 x 3 kernel and padding 1 on a map of h, w <= 2, output position p reads every
 * input pixel q through exactly one tap, (qy - py + 1, qx - px + 1), and the other taps
 * read the padding's zeros (5 of 9 on a 2 x 2 map).  So
 *   y [img, o, p] = sum over ci, q of W_p [o][ci * hw + q] x [img, ci, q]  (+ b [o])
 * is one product per position with K = c * h * w: the direct sums without the padding's
 * terms, as many multiply-adds as F(2x2, 3x3) takes there, and no transforms; the other
 * operand is x itself, transposed into xt [K][np] (np: the batch rounded up to 16, zeros
 * past it).  gemm_avx2.h's kernel sums each output over k ascending, in blocks of
 * TAPS_KC (xt's block, 128 KiB at 64 images, stays in L2) continuing the same sums;
 * threads split the output channels. */
#define TAPS_KC 512

typedef struct taps_job {
    const graft_conv2d_geom *g;
    const float *x, *u, *b;
    float *y, *xt, *m;
    int64_t hw, k, np, slabs;
} taps_job;

/* xt [k][img] = x [img][k] for k in [k0, k1), zero for img in [n, np). */
static void taps_transpose(void *arg, int64_t k0, int64_t k1) {
    const taps_job *j = arg;
    for (int64_t k = k0; k < k1; k++) {
        float *to = j->xt + k * j->np;
        for (int64_t img = 0; img < j->g->n; img++) to[img] = j->x[img * j->k + k];
        for (int64_t img = j->g->n; img < j->np; img++) to[img] = 0.0f;
    }
}

/* Slab s: output channels [oc * s / slabs, oc * (s + 1) / slabs), every position. */
static void taps_slab(void *arg, int64_t begin, int64_t end) {
    const taps_job *j = arg;
    const graft_conv2d_geom *g = j->g;
    for (int64_t s = begin; s < end; s++) {
        int64_t rlo = g->oc * s / j->slabs, rhi = g->oc * (s + 1) / j->slabs;
        for (int64_t p = 0; p < j->hw; p++) {
            float *mp = j->m + (p * g->oc + rlo) * j->np;
#if GRAFT_HAVE_AVX2_BUILD
            for (int64_t k0 = 0; k0 < j->k; k0 += TAPS_KC)
                graft_avx2_products(k0 == 0, j->u + (p * g->oc + rlo) * j->k + k0, j->k, rhi - rlo,
                                    j->k - k0 < TAPS_KC ? j->k - k0 : TAPS_KC, j->xt + k0 * j->np, j->np, j->np, mp,
                                    j->np);
#endif
            for (int64_t o = rlo; o < rhi; o++) {
                float bias = j->b ? j->b[o] : 0.0f;
                const float *mo = mp + (o - rlo) * j->np;
                for (int64_t img = 0; img < g->n; img++)
                    j->y[(img * g->oc + o) * j->hw + p] = finish(mo[img], bias, g->relu);
            }
        }
    }
}

static void forward_taps(const graft_conv2d_geom *g, const float *x, const float *u, const float *b, float *y,
                         float *scratch) {
    taps_job j = {.g = g, .x = x, .u = u, .b = b, .y = y, .hw = g->h * g->w, .np = round_up(g->n, 16)};
    j.k = g->c * j.hw;
    j.xt = aligned(scratch);
    j.m = aligned(j.xt + j.k * j.np);
    j.slabs = graft_num_threads() < g->oc ? graft_num_threads() : g->oc;
    graft_parallel_for(j.k, 16, taps_transpose, &j);
    graft_parallel_for(j.slabs, 1, taps_slab, &j);
}

graft_status graft_conv2d_forward_wgemm_prepared(const graft_conv2d_geom *g, const float *x, const float *u,
                                                 const float *b, float *y, float *scratch) {
    if (!graft_conv2d_wgemm_fits(g))
        return graft_error(GRAFT_ERR_UNSUPPORTED, "conv2d: Winograd needs a 3x3, stride-1, padding-1 kernel");
    if (uses_taps(g)) {
        forward_taps(g, x, u, b, y, scratch);
        return GRAFT_OK;
    }
    int64_t threads = graft_num_threads();
    wb_job j = {.g = g, .x = x, .u = u, .b = b, .y = y, .th = (g->oh + 1) / 2, .tw = (g->ow + 1) / 2,
                .tc = chunk_tiles(g), .ldv = chunk_tiles(g) + 16, .u_plane = u_rows(g) * g->c,
                .avx2 = graft_cpu_avx2() && !portable_loops};
    float *zeros = aligned(scratch);
    memset(zeros, 0, (size_t)g->w * sizeof(float));
    j.zeros = zeros;
    j.scratch = aligned(zeros + g->w);
    j.scratch_stride = thread_floats(g);
    j.tiles = g->n * j.th * j.tw;
    j.chunks = (j.tiles + j.tc - 1) / j.tc;
    /* few chunks (deep layers, small maps): split the output channels too, so that every
     * thread has a share */
    int64_t row_units = round_up(g->oc, WB_ROW_ALIGN) / WB_ROW_ALIGN;
    j.parts = j.chunks >= 4 * threads || !j.avx2 ? 1 : (row_units < threads ? row_units : threads);
    j.units = j.parts * j.chunks;
    graft_parallel_for(threads, 1, wb_task, &j);
    return GRAFT_OK;
}

graft_status graft_conv2d_forward_wgemm(const graft_conv2d_geom *g, const float *x, const float *w,
                                        const float *b, float *y, float *scratch) {
    float *u = aligned(scratch);
    graft_status s = graft_conv2d_wgemm_prepare(g, w, u);
    if (s) return s;
    return graft_conv2d_forward_wgemm_prepared(g, x, u, b, y, u + graft_conv2d_wgemm_weights_floats(g));
}
