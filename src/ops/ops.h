/* ops.h — the numerical kernels behind the layers.
 *
 * Every op comes in two versions that sit side by side in its file:
 *   graft_<op>_*      the fast float32 path used by models;
 *   graft_ref_<op>_*  a slow, obvious double-precision reference used only by tests
 *                     (finite-difference gradient checks run on it; the fast path is
 *                     compared against it).
 * Layout is NCHW, contiguous.  Ops trust their sizes: the layers (src/nn) check shapes
 * at their boundary and name the layer in the error.
 *
 * Gradient conventions, the same for fast and reference versions:
 *   dx (gradient w.r.t. the input) is overwritten; NULL means "not needed";
 *   dw, db, dgamma, dbeta (parameter gradients) are accumulated (+=), as PyTorch
 *   accumulates into .grad; NULL means "frozen, skip". */
#ifndef GRAFT_OPS_H
#define GRAFT_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/ctx.h"
#include "graft/graft.h"

/* ---- Conv2d (conv.c) ------------------------------------------------------ */

typedef struct graft_conv2d_geom {
    int64_t n, c, h, w;     /* input  [n, c, h, w] */
    int64_t oc, kh, kw;     /* weight [oc, c, kh, kw]; bias [oc] */
    int64_t sh, sw, ph, pw; /* stride and zero padding */
    int64_t oh, ow;         /* output [n, oc, oh, ow], derived */
    bool relu;              /* forward only: y = relu(conv(x, w) + b), as graft_relu_forward */
} graft_conv2d_geom;

/* Fills oh/ow from the rest: oh = (h + 2ph - kh) / sh + 1.  Fails when any size is
 * non-positive or the output would be empty. */
graft_status graft_conv2d_geom_init(graft_conv2d_geom *g);

/* y = conv(x, w) + b (then ReLU when g->relu), threaded: on AVX-512, Winograd F(2x2, 3x3)
 * for 3x3 padding-1 stride-1 convolutions and the implicit GEMM for the rest, else lowered
 * to GEMM (im2col over chunks of images); conv_internal.h has the choice. */
graft_status graft_conv2d_forward(graft_ctx *ctx, const graft_conv2d_geom *g, const float *x,
                                  const float *w, const float *b, float *y);
graft_status graft_conv2d_backward(graft_ctx *ctx, const graft_conv2d_geom *g, const float *x,
                                   const float *w, const float *dy, float *dx, float *dw,
                                   float *db);
/* graft_conv2d_forward for weights that stay as they are between calls (a frozen trunk
 * over a dataset, a model loaded for inference): the Winograd kernels' transformed
 * weights are kept in *held (created on the first call) and reused by later calls with
 * the same weight array, kernel and sizes, instead of transformed at every call.  w must
 * not change while *held keeps its transform: free it (graft_conv2d_held_free) first.
 * Every output is the same float as graft_conv2d_forward gives. */
typedef struct graft_conv2d_held graft_conv2d_held;
graft_status graft_conv2d_forward_held(graft_ctx *ctx, const graft_conv2d_geom *g, const float *x, const float *w,
                                       const float *b, float *y, graft_conv2d_held **held);
void graft_conv2d_held_free(graft_conv2d_held *h);
void graft_ref_conv2d_forward(const graft_conv2d_geom *g, const double *x, const double *w,
                              const double *b, double *y);
void graft_ref_conv2d_backward(const graft_conv2d_geom *g, const double *x, const double *w,
                               const double *dy, double *dx, double *dw, double *db);

/* ---- Linear (linear.c) ---------------------------------------------------- */
/* x [n, in], w [out, in], b [out] or NULL, y [n, out]:  y = x w^T + b.  ctx lends the
 * small-batch kernels their scratch. */

void graft_linear_forward(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x, const float *w,
                          const float *b, float *y);
void graft_linear_backward(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x, const float *w,
                           const float *dy, float *dx, float *dw, float *db);
/* As graft_linear_backward, but dw (when set_dw) and db (when set_db) are overwritten
 * with the batch's gradient instead of accumulated: for gradients known to be zero. */
void graft_linear_backward_ex(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x, const float *w,
                              const float *dy, float *dx, float *dw, float *db, bool set_dw, bool set_db);

/* Replicated inputs folded into a Linear weight (train/fold.h has the algebra): where an
 * input of c x oh x ow values only copies a map of c x h x w (each cell into a block of
 * oh/h x ow/w cells; oh, ow multiples of h, w), the Linear on it equals one of c*h*w
 * inputs with wf [o, ci*h*w + p] the sum of w [o, ci*oh*ow + q] over the cells q copying
 * cell p, summed in double and rounded once.  w [out, c*oh*ow] -> wf [out, c*h*w]; rows
 * split over graft's pool. */
void graft_linear_fold_replicas(int64_t out, int64_t c, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                const float *wt, float *wf);

/* Where a weight gradient can go instead of memory: the trainer's optimiser update,
 * applied piece by piece while the gradient is computed, so the gradient is never
 * stored whole (train/optim.h, graft_optim_sink).  begin is called once, before any
 * piece; then piece, from graft's pool threads and in any order, once for each range of
 * elements [begin, end) of dw with g [0, end - begin) their gradient, the ranges
 * covering dw exactly.  g is the kernel's scratch: the sink may overwrite it.  next is
 * where the range the same thread passes next begins, or -1: a hint, for the sink to
 * prefetch as many elements from there as this range has (the next range may be
 * shorter; the sink stays within dw). */
typedef struct graft_grad_sink {
    void (*begin)(void *user);
    void (*piece)(void *user, int64_t begin, int64_t end, int64_t next, float *g);
    void *user;
} graft_grad_sink;

/* The weight gradient dw = dy^T x (as written whole by graft_linear_backward_ex with
 * set_dw) handed to sink instead of stored, each element the same float as stored.
 * Returns false, having called nothing, where no kernel does this here (the caller then
 * computes dw into memory): it takes the small-batch AVX-512 kernel's cases, and on CPUs
 * with AVX2 but not AVX-512 the same cases by linear_avx2.c. */
bool graft_linear_weight_grad_to_sink(graft_ctx *ctx, int64_t n, int64_t in, int64_t out, const float *x,
                                      const float *dy, const graft_grad_sink *sink);
void graft_ref_linear_forward(int64_t n, int64_t in, int64_t out, const double *x,
                              const double *w, const double *b, double *y);
void graft_ref_linear_backward(int64_t n, int64_t in, int64_t out, const double *x,
                               const double *w, const double *dy, double *dx, double *dw,
                               double *db);

/* ---- ReLU (activation.c) -------------------------------------------------- */
/* y = max(x, 0); y may alias x (inplace=True).  dx = dy * (y > 0); dx may alias dy. */

void graft_relu_forward(int64_t n, const float *x, float *y);
void graft_relu_backward(int64_t n, const float *y, const float *dy, float *dx);
void graft_ref_relu_forward(int64_t n, const double *x, double *y);
void graft_ref_relu_backward(int64_t n, const double *y, const double *dy, double *dx);

/* ---- MaxPool2d and AdaptiveAvgPool2d (pool.c) ----------------------------- */

typedef struct graft_pool2d_geom {
    int64_t n, c, h, w;     /* input [n, c, h, w] */
    int64_t kh, kw, sh, sw, ph, pw;
    bool ceil_mode;
    int64_t oh, ow;         /* output [n, c, oh, ow], derived */
} graft_pool2d_geom;

/* PyTorch's rules: padding at most half the kernel; with ceil_mode the last window
 * must start inside the input or left padding. */
graft_status graft_maxpool2d_geom_init(graft_pool2d_geom *g);
/* argmax [n, c, oh, ow] receives the index (ih * w + iw) of each maximum within its
 * input plane; ties go to the first in row-major order, NaN wins, as in PyTorch. */
void graft_maxpool2d_forward(const graft_pool2d_geom *g, const float *x, float *y,
                             int32_t *argmax);
/* Whether MaxPool2d(2, 2) may take its AVX-512 loop where the CPU has it (the same
 * outputs and indices as the scalar one); on by default.  Process-wide: for tests. */
void graft_maxpool2d_set_avx512(bool on);
void graft_maxpool2d_backward(const graft_pool2d_geom *g, const int32_t *argmax,
                              const float *dy, float *dx);
void graft_ref_maxpool2d_forward(const graft_pool2d_geom *g, const double *x, double *y);
void graft_ref_maxpool2d_backward(const graft_pool2d_geom *g, const double *x,
                                  const double *dy, double *dx);

/* Bins as PyTorch: start = floor(i * in / out), end = ceil((i + 1) * in / out); out may
 * exceed in (a 1x1 map replicated to 7x7). x [n, c, h, w] -> y [n, c, oh, ow]. */
void graft_adaptive_avgpool2d_forward(int64_t n, int64_t c, int64_t h, int64_t w, int64_t oh,
                                      int64_t ow, const float *x, float *y);
void graft_adaptive_avgpool2d_backward(int64_t n, int64_t c, int64_t h, int64_t w, int64_t oh,
                                       int64_t ow, const float *dy, float *dx);
void graft_ref_adaptive_avgpool2d_forward(int64_t n, int64_t c, int64_t h, int64_t w,
                                          int64_t oh, int64_t ow, const double *x, double *y);
void graft_ref_adaptive_avgpool2d_backward(int64_t n, int64_t c, int64_t h, int64_t w,
                                           int64_t oh, int64_t ow, const double *dy,
                                           double *dx);

/* ---- Dropout (dropout.c) -------------------------------------------------- */
/* Train mode: each element is kept with probability 1 - p and scaled by 1 / (1 - p);
 * mask [n] receives the factor (0 or 1 / (1 - p)).  p = 1 zeroes everything. */

void graft_dropout_forward(int64_t n, float p, graft_rng *rng, const float *x, float *y,
                           float *mask);
void graft_dropout_backward(int64_t n, const float *mask, const float *dy, float *dx);
void graft_ref_dropout_forward(int64_t n, const double *mask, const double *x, double *y);
void graft_ref_dropout_backward(int64_t n, const double *mask, const double *dy, double *dx);

/* ---- BatchNorm2d (norm.c) ------------------------------------------------- */
/* x, y [n, c, hw]; gamma, beta, running stats, save_mean, save_invstd [c].
 * Train: normalise with the batch mean and biased variance; update running_mean and
 * running_var (unbiased variance) with momentum: r = (1 - m) r + m batch.
 * Eval: normalise with the running statistics. */

void graft_batchnorm2d_forward_train(int64_t n, int64_t c, int64_t hw, double eps,
                                     double momentum, const float *x, const float *gamma,
                                     const float *beta, float *running_mean, float *running_var,
                                     float *y, float *save_mean, float *save_invstd);
void graft_batchnorm2d_forward_eval(int64_t n, int64_t c, int64_t hw, double eps, const float *x,
                                    const float *gamma, const float *beta,
                                    const float *running_mean, const float *running_var,
                                    float *y);
void graft_batchnorm2d_backward_train(int64_t n, int64_t c, int64_t hw, const float *x,
                                      const float *gamma, const float *save_mean,
                                      const float *save_invstd, const float *dy, float *dx,
                                      float *dgamma, float *dbeta);
void graft_batchnorm2d_backward_eval(int64_t n, int64_t c, int64_t hw, double eps,
                                     const float *x, const float *gamma,
                                     const float *running_mean, const float *running_var,
                                     const float *dy, float *dx, float *dgamma, float *dbeta);
void graft_ref_batchnorm2d_forward_train(int64_t n, int64_t c, int64_t hw, double eps,
                                         const double *x, const double *gamma,
                                         const double *beta, double *y);
void graft_ref_batchnorm2d_backward_train(int64_t n, int64_t c, int64_t hw, double eps,
                                          const double *x, const double *gamma,
                                          const double *dy, double *dx, double *dgamma,
                                          double *dbeta);
void graft_ref_batchnorm2d_forward_eval(int64_t n, int64_t c, int64_t hw, double eps,
                                        const double *x, const double *gamma,
                                        const double *beta, const double *running_mean,
                                        const double *running_var, double *y);
void graft_ref_batchnorm2d_backward_eval(int64_t n, int64_t c, int64_t hw, double eps,
                                         const double *x, const double *gamma,
                                         const double *running_mean, const double *running_var,
                                         const double *dy, double *dx, double *dgamma,
                                         double *dbeta);

/* ---- Cross-entropy (loss.c) ----------------------------------------------- */
/* logits [n, k], labels [n] in [0, k): returns mean_i(-log softmax(logits_i)[label_i]);
 * dlogits (overwritten, may be NULL) = (softmax - onehot) / n. */

double graft_cross_entropy_forward_backward(int64_t n, int64_t k, const float *logits,
                                            const int64_t *labels, float *dlogits);
double graft_ref_cross_entropy(int64_t n, int64_t k, const double *logits,
                               const int64_t *labels, double *dlogits);
/* The same with label smoothing eps in [0, 1]: the target is (1 - eps) one-hot + eps/k
 * (nn.CrossEntropyLoss(label_smoothing=eps)). */
double graft_cross_entropy_smooth_forward_backward(int64_t n, int64_t k, const float *logits,
                                                   const int64_t *labels, double eps,
                                                   float *dlogits);
double graft_ref_cross_entropy_smooth(int64_t n, int64_t k, const double *logits,
                                      const int64_t *labels, double eps, double *dlogits);

#endif
