/* linear_internal.h — the kernels behind graft_linear_* and the knob only tests and
 * benchmarks touch.
 *
 * Two kernels compute Linear's forward, y = x w^T + b, its input gradient dx = dy w,
 * and its weight gradient when it is written whole (dw = dy^T x,
 * graft_linear_backward_ex with set_dw):
 *   BLAS    OpenBLAS's SGEMM over graft's pool (ops/gemm.h);
 *   AVX512  linear_avx512.c, for small batches (the trainer's 64 rows against weights of
 *           4096 x 4096), on CPUs with AVX-512F; on CPUs with AVX2 and FMA but not
 *           AVX-512, linear_avx2.c takes the same cases of the forward and the
 *           weight gradient, and of the input gradient where at most 40% of dy is
 *           nonzero (BLAS's otherwise); its forward sums only x's nonzeros where at
 *           most 75% of x is.
 * GRAFT_LINEAR_AUTO picks AVX512 where the CPU has it, the batch is at most
 * GRAFT_LINEAR_AVX512_MAX_ROWS rows and there are at least GRAFT_LINEAR_AVX512_MIN_OUT
 * outputs (measured faster there, docs/performance.md), else BLAS.  Weight gradients
 * added to a running sum always take BLAS. */
#ifndef GRAFT_OPS_LINEAR_INTERNAL_H
#define GRAFT_OPS_LINEAR_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/ctx.h"
#include "ops/ops.h"

/* Under AUTO the AVX-512 kernel takes batches of up to MAX_ROWS rows into at least
 * MIN_OUT outputs (a 10-class head is faster with BLAS). */
#define GRAFT_LINEAR_AVX512_MAX_ROWS 128
#define GRAFT_LINEAR_AVX512_MIN_OUT 64

typedef enum graft_linear_kernel {
    GRAFT_LINEAR_AUTO = 0,
    GRAFT_LINEAR_BLAS,
    GRAFT_LINEAR_AVX512
} graft_linear_kernel;

/* Forces a kernel for every later linear call (AUTO restores the default); AVX512
 * falls back to BLAS where the CPU rules it out.  Process-wide: for tests and
 * benchmarks. */
void graft_linear_set_kernel(graft_linear_kernel k);

/* ---- linear_avx512.c ---- */

/* Whether this CPU runs AVX-512F code (and the build has the kernel). */
bool graft_linear_avx512_available(void);

/* x [n, in], w [out, in], b [out] or NULL -> y [n, out] = x w^T + b, threaded on
 * graft's pool, its scratch from ctx's workspace.  Returns false, having written
 * nothing, when it cannot run (no AVX-512, an empty product, no memory for its
 * scratch); the caller then takes the BLAS path. */
bool graft_linear_forward_avx512(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x, const float *w,
                                 const float *b, float *y);
/* dy [n, out], w [out, in] -> dx [n, in] = dy w, the same way. */
bool graft_linear_input_grad_avx512(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy, const float *w,
                                    float *dx);
/* dy [n, out], x [n, in] -> dw [out, in] = dy^T x (overwritten, every element), the same
 * way. */
bool graft_linear_weight_grad_avx512(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy, const float *x,
                                     float *dw);

/* Whether the input and weight gradients above and below may sum dy's nonzeros only:
 * weight gradients where at most half of dy's elements are nonzero and x is finite,
 * input gradients where at most 40% are (chunks of w with an infinity or NaN sum every
 * term) — the same bits either way (linear_avx512.c); on by default.  Process-wide: for
 * tests and benchmarks. */
void graft_linear_set_sparse_dy(bool on);
/* How many input and weight gradients have summed dy's nonzeros only, so far in this
 * process. */
uint64_t graft_linear_sparse_dy_count(void);
/* For the kernels (linear_avx512.c, linear_avx2.c): graft_linear_set_sparse_dy's setting,
 * and one more gradient counted as having summed dy's nonzeros only. */
bool graft_linear_sparse_dy_allowed(void);
void graft_linear_sparse_dy_taken(void);

/* Whether the forward may sum x's nonzeros only, on CPUs with AVX2 but not AVX-512 (the
 * same bits either way); on by default.  Process-wide: for tests and benchmarks.  Then how
 * many forwards have, and for the kernel, its setting and one more counted. */
void graft_linear_set_sparse_x(bool on);
uint64_t graft_linear_sparse_x_count(void);
bool graft_linear_sparse_x_allowed(void);
void graft_linear_sparse_x_taken(void);

/* The same weight gradient handed to sink (ops.h) in blocks instead of stored: each
 * block is computed into the thread's scratch as above, then passed on a row's part at
 * a time.
 * Returns false, having called nothing, when it cannot run. */
bool graft_linear_weight_grad_avx512_sink(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy,
                                          const float *x, const graft_grad_sink *sink);

/* ---- linear_avx2.c ---- */

/* Whether this CPU runs AVX2 and FMA code (and the build has the kernel). */
bool graft_linear_avx2_available(void);
/* The forward from x's nonzeros (linear_avx2.c, at sp_slab), with the bits of the forward
 * below, where at most 75% of x is nonzero and graft_linear_set_sparse_x allows it; else
 * false, having written nothing. */
bool graft_linear_forward_sparse_avx2(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x,
                                      const float *w, const float *b, float *y);
/* The input gradient dx = dy w, from dy's nonzeros where at most 40% of dy is nonzero and
 * graft_linear_set_sparse_dy allows it; otherwise, where forced, with every term in the
 * same order (the bits the nonzeros give); else false, having written nothing. */
bool graft_linear_input_grad_avx2(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy, const float *w,
                                  float *dx, bool forced);
/* The forward, as graft_linear_forward_avx512 (the same cases, where the CPU has AVX2
 * but not AVX-512). */
bool graft_linear_forward_avx2(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x, const float *w,
                               const float *b, float *y);
/* The weight gradient written whole, and handed to a sink, as the AVX-512 kernels above
 * (the same cases, where the CPU has AVX2 but not AVX-512), summing dy's nonzeros only
 * where at most half of dy is nonzero and x is finite. */
bool graft_linear_weight_grad_avx2(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy, const float *x,
                                   float *dw);
bool graft_linear_weight_grad_avx2_sink(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *dy,
                                        const float *x, const graft_grad_sink *sink);

#endif
