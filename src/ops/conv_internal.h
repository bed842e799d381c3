/* conv_internal.h — the kernels behind graft_conv2d_* and the knobs only tests and
 * benchmarks touch.
 *
 * Three kernels compute the fast Conv2d:
 *   GEMM    (conv.c) lowers a chunk of images at a time to one BLAS GEMM (im2col); how
 *           many images fit in a chunk follows from a bound on the scratch workspace,
 *           which tests shrink so the multi-chunk paths run on small inputs;
 *   AVX512  (conv_avx512.c) an implicit GEMM that packs im2col panels on the fly, on
 *           CPUs with AVX-512F.  It computes the forward, and the input gradient of
 *           stride-1 convolutions (a forward convolution of dy with the flipped,
 *           transposed kernel); the weight gradient always takes the GEMM kernel.
 *   WINOGRAD (conv_avx512.c) Winograd F(2x2, 3x3) for 3x3, stride-1, padding-1
 *           convolutions on AVX-512: 2.25x fewer multiplications, float results that
 *           differ from the direct sums by rounding.  The forward, and the input
 *           gradient where that is such a convolution.
 *   WINOGRAD4 (conv_avx512.c) Winograd F(4x4, 3x3) for the same convolutions: 4x fewer
 *           multiplications than the direct sums, with larger rounding differences.
 *   WGEMM   (conv_wgemm.c) Winograd F(2x2, 3x3) for the same convolutions as WINOGRAD,
 *           on any CPU: AVX2 loops and a micro-kernel of its own where the CPU has AVX2 and
 *           FMA (with maps of at most 2 x 2 as one product per output position), else
 *           portable loops with BLAS for the 16 products.
 * GRAFT_CONV2D_AUTO picks WINOGRAD4 where it measured faster than WINOGRAD (maps of 8 x 8
 * and more that 4x4 tiles cover with little waste, 128 channels on one side: conv.c),
 * else WINOGRAD where the shape allows it (and its transformed weights fit the default
 * workspace bound) and the CPU has AVX-512,
 * else AVX512 where the CPU has it (both measured faster than GEMM on every VGG layer,
 * docs/performance.md), else WGEMM where the shape allows it and the layer has at least
 * WGEMM_MIN_CHANNELS input channels (it measured faster than GEMM there), else GEMM. */
#ifndef GRAFT_OPS_CONV_INTERNAL_H
#define GRAFT_OPS_CONV_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ops/ops.h"

/* Default bound on the conv workspace: 16M floats (64 MiB). */
#define GRAFT_CONV2D_WORKSPACE_LIMIT_FLOATS ((size_t)16 * 1024 * 1024)

/* Sets the workspace bound in floats for every later conv call; 0 restores the
 * default.  A process-wide setting: for tests, not for concurrent use. */
void graft_conv2d_set_workspace_limit(size_t floats);

/* Images per GEMM chunk for this geometry under the current bound (1..n).  A single
 * image always forms a chunk, even when it alone exceeds the bound. */
int64_t graft_conv2d_chunk_images(const graft_conv2d_geom *g);

typedef enum graft_conv2d_kernel {
    GRAFT_CONV2D_AUTO = 0,
    GRAFT_CONV2D_GEMM,
    GRAFT_CONV2D_AVX512,
    GRAFT_CONV2D_WINOGRAD,
    GRAFT_CONV2D_WINOGRAD4,
    GRAFT_CONV2D_WGEMM
} graft_conv2d_kernel;

/* Forces a kernel for every later conv call (AUTO restores the default); WINOGRAD4 falls
 * back to WINOGRAD, and WINOGRAD to AVX512, where the shape rules it out, AVX512 to GEMM
 * where the CPU or the sizes rule it out; where the CPU has no AVX-512, the three of them
 * take WGEMM where the shape allows it.  WGEMM runs wherever the shape allows it, else GEMM.  Process-wide, like the workspace bound: for tests and benchmarks. */
void graft_conv2d_set_kernel(graft_conv2d_kernel k);
/* The kernel graft_conv2d_forward would use for g now. */
graft_conv2d_kernel graft_conv2d_forward_kernel(const graft_conv2d_geom *g);

/* ---- conv_avx512.c ---- */

/* Whether this CPU runs AVX-512F code (and the build has the kernel). */
bool graft_conv2d_avx512_available(void);
/* Whether g's sizes fit the kernel's 32-bit offsets. */
bool graft_conv2d_avx512_fits(const graft_conv2d_geom *g);
/* Scratch the kernel needs for g with the current thread count, in floats. */
size_t graft_conv2d_avx512_workspace_floats(const graft_conv2d_geom *g);
/* x [n, c, h, w], w [oc, c, kh, kw], b [oc] or NULL -> y [n, oc, oh, ow], threaded on
 * graft's pool; scratch holds graft_conv2d_avx512_workspace_floats(g) floats. */
graft_status graft_conv2d_forward_avx512(const graft_conv2d_geom *g, const float *x, const float *w,
                                         const float *b, float *y, float *scratch);

/* Winograd F(2x2, 3x3) on AVX-512 (conv_avx512.c): whether g is a 3x3, stride-1,
 * padding-1 convolution within the kernel's sizes; its scratch in floats; the forward,
 * as graft_conv2d_forward_avx512. */
bool graft_conv2d_winograd_fits(const graft_conv2d_geom *g);
size_t graft_conv2d_winograd_workspace_floats(const graft_conv2d_geom *g);
graft_status graft_conv2d_forward_winograd(const graft_conv2d_geom *g, const float *x, const float *w,
                                           const float *b, float *y, float *scratch);
/* Winograd F(4x4, 3x3), the same way. */
bool graft_conv2d_winograd4_fits(const graft_conv2d_geom *g);
size_t graft_conv2d_winograd4_workspace_floats(const graft_conv2d_geom *g);
graft_status graft_conv2d_forward_winograd4(const graft_conv2d_geom *g, const float *x, const float *w,
                                            const float *b, float *y, float *scratch);
/* Either Winograd kernel (tile 2 or 4) in two steps, for weights that stay as they are
 * between calls (graft_conv2d_forward_held): the weights transformed once into u
 * (graft_conv2d_winograd_weights_floats(g, tile) floats, cache-line aligned), then
 * forwards from u with scratch of graft_conv2d_winograd_prepared_workspace_floats; every
 * output the same float as graft_conv2d_forward_winograd(4) gives. */
size_t graft_conv2d_winograd_weights_floats(const graft_conv2d_geom *g, int tile);
size_t graft_conv2d_winograd_prepared_workspace_floats(const graft_conv2d_geom *g, int tile);
graft_status graft_conv2d_winograd_prepare(const graft_conv2d_geom *g, int tile, const float *w, float *u);
graft_status graft_conv2d_forward_winograd_prepared(const graft_conv2d_geom *g, int tile, const float *x,
                                                    const float *u, const float *b, float *y, float *scratch);

/* ---- conv_wgemm.c ---- */

/* Whether g is a 3x3, stride-1, padding-1 convolution within the kernel's sizes. */
bool graft_conv2d_wgemm_fits(const graft_conv2d_geom *g);
/* Scratch in floats for graft_conv2d_forward_wgemm with the current thread count. */
size_t graft_conv2d_wgemm_workspace_floats(const graft_conv2d_geom *g);
/* x [n, c, h, w], w [oc, c, 3, 3], b [oc] or NULL -> y [n, oc, oh, ow] (with g->relu
 * applied), threaded on graft's pool. */
graft_status graft_conv2d_forward_wgemm(const graft_conv2d_geom *g, const float *x, const float *w,
                                        const float *b, float *y, float *scratch);
/* The same in two steps, as the AVX-512 Winograd kernels': the weights transformed into u
 * (graft_conv2d_wgemm_weights_floats(g) floats, cache-line aligned), then forwards from u
 * with graft_conv2d_wgemm_prepared_workspace_floats(g) floats of scratch. */
size_t graft_conv2d_wgemm_weights_floats(const graft_conv2d_geom *g);
size_t graft_conv2d_wgemm_prepared_workspace_floats(const graft_conv2d_geom *g);
graft_status graft_conv2d_wgemm_prepare(const graft_conv2d_geom *g, const float *w, float *u);
graft_status graft_conv2d_forward_wgemm_prepared(const graft_conv2d_geom *g, const float *x, const float *u,
                                                 const float *b, float *y, float *scratch);
/* Which layout graft_conv2d_wgemm_prepare writes for g now (maps of at most 2 x 2 with the
 * AVX2 loops take their weights by output position instead of transformed): a prepared
 * u serves the geometries of the same channels and layout. */
int graft_conv2d_wgemm_layout(const graft_conv2d_geom *g);
/* Whether later calls run WGEMM's portable path (portable loops, BLAS products, no
 * products by output position) even where the AVX2 one would run (false restores it):
 * for tests, which hold both to the reference. */
void graft_conv2d_wgemm_set_portable(bool portable);

#endif
