/* gemm_avx2.h — the AVX2 and FMA micro-kernel that conv_wgemm.c's Winograd products and
 * linear_avx2.c's forward share: M [rows][n] (+)= U [rows][k] . V [k][n], U read in place.
 *
 * Blocks of GRAFT_AVX2_MR rows x 16 columns of M sit in 12 ymm registers; each step of k
 * loads 16 floats of a row of V and broadcasts one float of each of U's rows.  Every
 * output is summed over k = 0..k-1 in order with fused multiply-adds, from +0 (first) or
 * from what M holds (a later block of k continuing the same sum, so cutting k into blocks
 * changes no bit), whichever rows and columns share its block.
 *
 * Static functions with target attributes: each file that includes this compiles its own
 * copy, called only where graft_cpu_avx2() holds. */
#ifndef GRAFT_OPS_GEMM_AVX2_H
#define GRAFT_OPS_GEMM_AVX2_H

#include "core/cpu.h"

#if GRAFT_HAVE_AVX2_BUILD
#include <immintrin.h>
#include <stdbool.h>
#include <stdint.h>

#define GRAFT_AVX2_MR 6 /* rows of U per block: 6 x 2 accumulators */

/* A block of rows x 16 of M; U's element (r, kk) at u [r * ru + kk * ku]. */
__attribute__((target("avx2,fma"), always_inline)) static inline void graft_avx2_block(
    int rows, bool first, const float *u, int64_t ru, int64_t ku, const float *v, int64_t ldv, int64_t k, float *m,
    int64_t ldm) {
    __m256 acc[GRAFT_AVX2_MR][2];
    for (int r = 0; r < rows; r++) {
        acc[r][0] = first ? _mm256_setzero_ps() : _mm256_load_ps(m + r * ldm);
        acc[r][1] = first ? _mm256_setzero_ps() : _mm256_load_ps(m + r * ldm + 8);
    }
    for (int64_t kk = 0; kk < k; kk++) {
        __m256 b0 = _mm256_load_ps(v + kk * ldv), b1 = _mm256_load_ps(v + kk * ldv + 8);
        for (int r = 0; r < rows; r++) {
            __m256 a = _mm256_broadcast_ss(u + r * ru + kk * ku);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < rows; r++) {
        _mm256_store_ps(m + r * ldm, acc[r][0]);
        _mm256_store_ps(m + r * ldm + 8, acc[r][1]);
    }
}

/* The blocks of M [rows][n]: block r0's rows of U from u + r0 * row_step, laid out as
 * graft_avx2_block's ru and ku say. */
__attribute__((target("avx2,fma"), always_inline)) static inline void graft_avx2_blocks(
    bool first, const float *u, int64_t row_step, int64_t ru, int64_t ku, int64_t rows, int64_t k, const float *v,
    int64_t ldv, int64_t n, float *m, int64_t ldm) {
    for (int64_t r0 = 0; r0 < rows; r0 += GRAFT_AVX2_MR) {
        const float *ur = u + r0 * row_step;
        float *mr = m + r0 * ldm;
        int64_t left = rows - r0;
        for (int64_t t = 0; t < n; t += 16) switch (left < GRAFT_AVX2_MR ? left : GRAFT_AVX2_MR) {
            case 6: graft_avx2_block(6, first, ur, ru, ku, v + t, ldv, k, mr + t, ldm); break;
            case 5: graft_avx2_block(5, first, ur, ru, ku, v + t, ldv, k, mr + t, ldm); break;
            case 4: graft_avx2_block(4, first, ur, ru, ku, v + t, ldv, k, mr + t, ldm); break;
            case 3: graft_avx2_block(3, first, ur, ru, ku, v + t, ldv, k, mr + t, ldm); break;
            case 2: graft_avx2_block(2, first, ur, ru, ku, v + t, ldv, k, mr + t, ldm); break;
            default: graft_avx2_block(1, first, ur, ru, ku, v + t, ldv, k, mr + t, ldm); break;
            }
    }
}

/* M [rows][n] (rows ldm apart) (+)= U [rows][k] (rows ldu apart) . V [k][n] (rows ldv
 * apart); n a multiple of 16, V and M 32-byte aligned with ldv and ldm multiples of 8. */
__attribute__((target("avx2,fma"), unused)) static void graft_avx2_products(bool first, const float *u, int64_t ldu,
                                                                          int64_t rows, int64_t k, const float *v,
                                                                          int64_t ldv, int64_t n, float *m,
                                                                          int64_t ldm) {
    graft_avx2_blocks(first, u, ldu, ldu, 1, rows, k, v, ldv, n, m, ldm);
}

/* The same with U packed the way BLAS packs its A panels: rows in blocks of
 * GRAFT_AVX2_MR, each block [k][GRAFT_AVX2_MR] (a short last block padded to the full
 * width), so a step of k broadcasts from one run instead of six rows far apart, and U
 * streams from one address: the block of rows [6 b, 6 b + 6) at u + 6 b k.  The same
 * sums, so the same bits as graft_avx2_products. */
__attribute__((target("avx2,fma"), unused)) static void graft_avx2_products_packed(bool first, const float *u,
                                                                                 int64_t rows, int64_t k,
                                                                                 const float *v, int64_t ldv, int64_t n,
                                                                                 float *m, int64_t ldm) {
    graft_avx2_blocks(first, u, k, 1, GRAFT_AVX2_MR, rows, k, v, ldv, n, m, ldm);
}
#endif

#endif
