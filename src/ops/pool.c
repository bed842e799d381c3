/* pool.c — MaxPool2d and AdaptiveAvgPool2d, as torch.nn defines them.
 *
 * MaxPool2d (dilation 1).  Output size follows PyTorch's pooling_output_shape:
 *     out = floor((in + 2p - k + (ceil_mode ? s - 1 : 0)) / s) + 1
 * and, with ceil_mode, a last window that would start at or beyond in + p (entirely in
 * the right padding) is dropped.  Each window is clipped to the input, so padding acts
 * as -inf.  Within a window the scan is row-major and an element wins when it is
 * greater than the running maximum or is NaN, so ties go to the first element and NaN
 * propagates; the running maximum starts at -inf with the index of the window's first
 * element, so an all -inf window still reports a valid index.
 *
 * AdaptiveAvgPool2d: output cell i along an axis averages input [start, end) with
 *     start = floor(i * in / out), end = ceil((i + 1) * in / out),
 * so bins may overlap (out does not divide in) and may repeat inputs (out > in). */
#include <math.h>
#include <string.h>

#include "core/cpu.h"
#include "core/error.h"
#include "core/threads.h"
#include "ops/ops.h"

/* Planes (one image, one channel) per thread at least; a plane is small, so a thread
 * needs a few of them before the hand-off pays. */
#define POOL_MIN_PLANES 4

/* floor(a / b) for b > 0, also for negative a (PyTorch's div_rtn). */
static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && (a < 0)) q--;
    return q;
}

static int64_t maxpool_out_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
    int64_t out = floor_div(in + 2 * p - k + (ceil_mode ? s - 1 : 0), s) + 1;
    if (ceil_mode && (out - 1) * s >= in + p) out--;
    return out;
}

graft_status graft_maxpool2d_geom_init(graft_pool2d_geom *g) {
    if (g->n <= 0 || g->c <= 0 || g->h <= 0 || g->w <= 0)
        return graft_error(GRAFT_ERR_SHAPE,
                           "max_pool2d: input [%lld, %lld, %lld, %lld] must have positive sizes",
                           (long long)g->n, (long long)g->c, (long long)g->h, (long long)g->w);
    if (g->kh <= 0 || g->kw <= 0)
        return graft_error(GRAFT_ERR_INVALID,
                           "max_pool2d: kernel size should be greater than zero, but got "
                           "kernel (%lld, %lld)",
                           (long long)g->kh, (long long)g->kw);
    if (g->sh <= 0 || g->sw <= 0)
        return graft_error(GRAFT_ERR_INVALID,
                           "max_pool2d: stride should be greater than zero, but got "
                           "stride (%lld, %lld)",
                           (long long)g->sh, (long long)g->sw);
    if (g->ph < 0 || g->pw < 0 || g->ph > g->kh / 2 || g->pw > g->kw / 2)
        return graft_error(GRAFT_ERR_INVALID,
                           "max_pool2d: pad should be at most half of kernel size, but got "
                           "padding (%lld, %lld) for kernel (%lld, %lld)",
                           (long long)g->ph, (long long)g->pw, (long long)g->kh,
                           (long long)g->kw);
    int64_t oh = maxpool_out_size(g->h, g->kh, g->sh, g->ph, g->ceil_mode);
    int64_t ow = maxpool_out_size(g->w, g->kw, g->sw, g->pw, g->ceil_mode);
    if (oh < 1 || ow < 1)
        return graft_error(GRAFT_ERR_SHAPE,
                           "max_pool2d: given input size (%lld x %lld), kernel (%lld, %lld), "
                           "stride (%lld, %lld), padding (%lld, %lld): calculated output size "
                           "(%lld x %lld) is too small",
                           (long long)g->h, (long long)g->w, (long long)g->kh, (long long)g->kw,
                           (long long)g->sh, (long long)g->sw, (long long)g->ph,
                           (long long)g->pw, (long long)oh, (long long)ow);
    if (g->h * g->w > INT32_MAX)
        return graft_error(GRAFT_ERR_UNSUPPORTED,
                           "max_pool2d: input plane %lld x %lld is too large for int32 indices",
                           (long long)g->h, (long long)g->w);
    g->oh = oh;
    g->ow = ow;
    return GRAFT_OK;
}

/* ---- MaxPool2d ------------------------------------------------------------ */

static bool pool_avx512 = true;

void graft_maxpool2d_set_avx512(bool on) { pool_avx512 = on; }

typedef struct maxpool_args {
    const graft_pool2d_geom *g;
    const float *x, *dy;
    float *y, *dx;
    int32_t *argmax_out;      /* forward */
    const int32_t *argmax_in; /* backward */
} maxpool_args;

/* Takes v at index at when PyTorch's scan would: greater, or NaN. */
#define MAXPOOL_TAKE(v, at)                \
    do {                                   \
        float v_ = (v);                    \
        if (v_ > best || isnan(v_)) {      \
            best = v_;                     \
            best_at = (at);                \
        }                                  \
    } while (0)

/* VGG's MaxPool2d(2, 2): every window whole, four elements in the scan's order.
 * Starting from the first element is what starting from -inf gives (-inf itself is
 * not taken, but the index already points at it).  One row of ow windows, from the input
 * rows r0 and r1 (w floats apart, r0 at index base of the plane). */
static void maxpool_2x2_row(const float *r0, int64_t w, int64_t ow, int32_t base, float *y, int32_t *at) {
    const float *r1 = r0 + w;
    for (int64_t j = 0; j < ow; j++) {
        float best = r0[2 * j];
        int32_t best_at = base + (int32_t)(2 * j);
        MAXPOOL_TAKE(r0[2 * j + 1], best_at + 1);
        MAXPOOL_TAKE(r1[2 * j], base + (int32_t)(w + 2 * j));
        MAXPOOL_TAKE(r1[2 * j + 1], base + (int32_t)(w + 2 * j + 1));
        y[j] = best;
        at[j] = best_at;
    }
}

#if GRAFT_HAVE_AVX512_BUILD
#include <immintrin.h>
#define AVX512_FN __attribute__((target("avx512f")))

/* The same, 16 windows at a time: the row pairs split into their even and odd columns
 * (two permutes per row), then the scan's four steps as compares and masked moves — the
 * first value, then each later one taken where greater or NaN — over the values and
 * their offsets in the window.  A partial vector of windows is masked.  The scalar loop
 * took 3.7% of the feature cache's pass; VGG16's features, against it, back to back:
 * 587-598 -> 599-611 images/s at 32x32 and batch 64, 682-686 -> 686-696 at 256, 15.77 ->
 * 16.05 at 224x224. */
AVX512_FN static void maxpool_2x2_row_avx512(const float *r0, int64_t w, int64_t ow, int32_t base, float *y,
                                             int32_t *at) {
    const float *r1 = r0 + w;
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const int32_t step[4] = {0, 1, (int32_t)w, (int32_t)w + 1};
    for (int64_t j0 = 0; j0 < ow; j0 += 16) {
        int64_t lanes = ow - j0 < 16 ? ow - j0 : 16;
        __mmask16 k = (__mmask16)((1u << lanes) - 1u);
        __mmask16 klo = lanes >= 8 ? (__mmask16)0xFFFF : (__mmask16)((1u << (2 * lanes)) - 1u);
        __mmask16 khi = lanes <= 8 ? (__mmask16)0 : (__mmask16)((1u << (2 * lanes - 16)) - 1u);
        __m512 lo0 = _mm512_maskz_loadu_ps(klo, r0 + 2 * j0), hi0 = _mm512_maskz_loadu_ps(khi, r0 + 2 * j0 + 16);
        __m512 lo1 = _mm512_maskz_loadu_ps(klo, r1 + 2 * j0), hi1 = _mm512_maskz_loadu_ps(khi, r1 + 2 * j0 + 16);
        __m512 v[4] = {_mm512_permutex2var_ps(lo0, even, hi0), _mm512_permutex2var_ps(lo0, odd, hi0),
                       _mm512_permutex2var_ps(lo1, even, hi1), _mm512_permutex2var_ps(lo1, odd, hi1)};
        __m512 best = v[0];
        __m512i off = _mm512_setzero_si512();
        for (int t = 1; t < 4; t++) {
            __mmask16 take = _mm512_cmp_ps_mask(v[t], best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v[t], v[t], _CMP_UNORD_Q);
            best = _mm512_mask_mov_ps(best, take, v[t]);
            off = _mm512_mask_mov_epi32(off, take, _mm512_set1_epi32(step[t]));
        }
        /* even holds 2l in lane l: window j0 + l starts at base + 2 j0 + 2l */
        __m512i idx = _mm512_add_epi32(_mm512_add_epi32(off, even), _mm512_set1_epi32(base + (int32_t)(2 * j0)));
        _mm512_mask_storeu_ps(y + j0, k, best);
        _mm512_mask_storeu_epi32(at + j0, k, idx);
    }
}
#endif

static void maxpool_2x2_planes(const maxpool_args *a, int64_t begin, int64_t end) {
    const graft_pool2d_geom *g = a->g;
    int64_t w = g->w, oh = g->oh, ow = g->ow;
    void (*row)(const float *, int64_t, int64_t, int32_t, float *, int32_t *) = maxpool_2x2_row;
#if GRAFT_HAVE_AVX512_BUILD
    if (pool_avx512 && graft_cpu_avx512f()) row = maxpool_2x2_row_avx512;
#endif
    for (int64_t p = begin; p < end; p++)
        for (int64_t i = 0; i < oh; i++)
            row(a->x + p * g->h * w + 2 * i * w, w, ow, (int32_t)(2 * i * w), a->y + (p * oh + i) * ow,
                a->argmax_out + (p * oh + i) * ow);
}

static void maxpool_forward_planes(void *arg, int64_t begin, int64_t end) {
    const maxpool_args *a = arg;
    const graft_pool2d_geom *g = a->g;
    int64_t h = g->h, w = g->w, oh = g->oh, ow = g->ow;
    if (g->kh == 2 && g->kw == 2 && g->sh == 2 && g->sw == 2 && g->ph == 0 && g->pw == 0 && 2 * oh <= h &&
        2 * ow <= w) {
        maxpool_2x2_planes(a, begin, end);
        return;
    }
    for (int64_t p = begin; p < end; p++) {
        const float *xp = a->x + p * h * w;
        float *yp = a->y + p * oh * ow;
        int32_t *ap = a->argmax_out + p * oh * ow;
        for (int64_t i = 0; i < oh; i++) {
            int64_t h0 = i * g->sh - g->ph, h1 = h0 + g->kh;
            if (h0 < 0) h0 = 0;
            if (h1 > h) h1 = h;
            for (int64_t j = 0; j < ow; j++) {
                int64_t w0 = j * g->sw - g->pw, w1 = w0 + g->kw;
                if (w0 < 0) w0 = 0;
                if (w1 > w) w1 = w;
                float best = -INFINITY;
                int64_t best_at = h0 * w + w0;
                for (int64_t ih = h0; ih < h1; ih++) {
                    for (int64_t iw = w0; iw < w1; iw++) {
                        float v = xp[ih * w + iw];
                        if (v > best || isnan(v)) {
                            best = v;
                            best_at = ih * w + iw;
                        }
                    }
                }
                /* Once best is NaN nothing compares greater, but a later NaN still
                 * takes the index, exactly as PyTorch's scan does. */
                yp[i * ow + j] = best;
                ap[i * ow + j] = (int32_t)best_at;
            }
        }
    }
}

// x is (n, c, h, w); y and argmax are (n, c, oh, ow)
void graft_maxpool2d_forward(const graft_pool2d_geom *g, const float *x, float *y,
                             int32_t *argmax) {
    maxpool_args a = {.g = g, .x = x, .y = y, .argmax_out = argmax};
    graft_parallel_for(g->n * g->c, POOL_MIN_PLANES, maxpool_forward_planes, &a);
}

static void maxpool_backward_planes(void *arg, int64_t begin, int64_t end) {
    const maxpool_args *a = arg;
    const graft_pool2d_geom *g = a->g;
    int64_t hw = g->h * g->w, ohw = g->oh * g->ow;
    for (int64_t p = begin; p < end; p++) {
        float *dxp = a->dx + p * hw;
        const float *dyp = a->dy + p * ohw;
        const int32_t *ap = a->argmax_in + p * ohw;
        memset(dxp, 0, (size_t)hw * sizeof *dxp);
        for (int64_t o = 0; o < ohw; o++) dxp[ap[o]] += dyp[o]; /* windows overlap */
    }
}

// argmax and dy are (n, c, oh, ow); dx is (n, c, h, w), overwritten
void graft_maxpool2d_backward(const graft_pool2d_geom *g, const int32_t *argmax,
                              const float *dy, float *dx) {
    if (!dx) return;
    maxpool_args a = {.g = g, .dy = dy, .dx = dx, .argmax_in = argmax};
    graft_parallel_for(g->n * g->c, POOL_MIN_PLANES, maxpool_backward_planes, &a);
}

/* Reference: the same windows written out plainly over the full kernel, skipping
 * positions in the padding.  The first real element seeds the maximum, which picks
 * the same element as PyTorch's "start at -inf" scan.  Returns the argmax index within
 * the plane; the backward recomputes it from x. */
static int64_t ref_maxpool_window(const graft_pool2d_geom *g, const double *xp, int64_t i,
                                  int64_t j, double *best_out) {
    double best = 0.0;
    int64_t best_at = -1;
    for (int64_t ki = 0; ki < g->kh; ki++) {
        for (int64_t kj = 0; kj < g->kw; kj++) {
            int64_t ih = i * g->sh - g->ph + ki, iw = j * g->sw - g->pw + kj;
            if (ih < 0 || ih >= g->h || iw < 0 || iw >= g->w) continue;
            double v = xp[ih * g->w + iw];
            if (best_at < 0 || v > best || isnan(v)) {
                best = v;
                best_at = ih * g->w + iw;
            }
        }
    }
    *best_out = best;
    return best_at;
}

void graft_ref_maxpool2d_forward(const graft_pool2d_geom *g, const double *x, double *y) {
    for (int64_t p = 0; p < g->n * g->c; p++)
        for (int64_t i = 0; i < g->oh; i++)
            for (int64_t j = 0; j < g->ow; j++)
                ref_maxpool_window(g, x + p * g->h * g->w, i, j,
                                   &y[(p * g->oh + i) * g->ow + j]);
}

void graft_ref_maxpool2d_backward(const graft_pool2d_geom *g, const double *x,
                                  const double *dy, double *dx) {
    if (!dx) return;
    int64_t hw = g->h * g->w;
    for (int64_t k = 0; k < g->n * g->c * hw; k++) dx[k] = 0.0;
    for (int64_t p = 0; p < g->n * g->c; p++) {
        for (int64_t i = 0; i < g->oh; i++) {
            for (int64_t j = 0; j < g->ow; j++) {
                double unused;
                int64_t at = ref_maxpool_window(g, x + p * hw, i, j, &unused);
                dx[p * hw + at] += dy[(p * g->oh + i) * g->ow + j];
            }
        }
    }
}

/* ---- AdaptiveAvgPool2d ---------------------------------------------------- */

static int64_t bin_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
static int64_t bin_end(int64_t i, int64_t in, int64_t out) {
    return ((i + 1) * in + out - 1) / out;
}

/* The bins are planned once per call: [start, end) of every output row and column, and
 * whether every bin holds a single input (the replication VGG16's avgpool does on small
 * images, 1x1 -> 7x7, and the identity at 224x224), where the mean is that input itself:
 * x / 1 / 1 is x exactly, so the copy gives the same bits as the division. Larger outputs
 * than AVG_PLAN_MAX plan nothing and compute each bin where it is used. */
#define AVG_PLAN_MAX 256

typedef struct avgpool_args {
    int64_t h, w, oh, ow;
    const float *x, *dy;
    float *y, *dx;
    int planned, single;
    int32_t h0[AVG_PLAN_MAX], h1[AVG_PLAN_MAX], w0[AVG_PLAN_MAX], w1[AVG_PLAN_MAX];
} avgpool_args;

static void avgpool_plan(avgpool_args *a) {
    a->planned = a->oh <= AVG_PLAN_MAX && a->ow <= AVG_PLAN_MAX;
    a->single = 0;
    if (!a->planned) return;
    int single = 1;
    for (int64_t i = 0; i < a->oh; i++) {
        a->h0[i] = (int32_t)bin_start(i, a->h, a->oh);
        a->h1[i] = (int32_t)bin_end(i, a->h, a->oh);
        single &= a->h1[i] - a->h0[i] == 1;
    }
    for (int64_t j = 0; j < a->ow; j++) {
        a->w0[j] = (int32_t)bin_start(j, a->w, a->ow);
        a->w1[j] = (int32_t)bin_end(j, a->w, a->ow);
        single &= a->w1[j] - a->w0[j] == 1;
    }
    a->single = single;
}

static void avgpool_bin(const avgpool_args *a, int64_t i, int64_t j, int64_t *h0, int64_t *h1,
                        int64_t *w0, int64_t *w1) {
    if (a->planned) {
        *h0 = a->h0[i], *h1 = a->h1[i], *w0 = a->w0[j], *w1 = a->w1[j];
    } else {
        *h0 = bin_start(i, a->h, a->oh), *h1 = bin_end(i, a->h, a->oh);
        *w0 = bin_start(j, a->w, a->ow), *w1 = bin_end(j, a->w, a->ow);
    }
}

static void avgpool_forward_planes(void *arg, int64_t begin, int64_t end) {
    const avgpool_args *a = arg;
    int64_t h = a->h, w = a->w, oh = a->oh, ow = a->ow;
    for (int64_t p = begin; p < end; p++) {
        const float *xp = a->x + p * h * w;
        float *yp = a->y + p * oh * ow;
        if (a->single) {
            for (int64_t i = 0; i < oh; i++)
                for (int64_t j = 0; j < ow; j++) yp[i * ow + j] = xp[a->h0[i] * w + a->w0[j]];
            continue;
        }
        for (int64_t i = 0; i < oh; i++) {
            for (int64_t j = 0; j < ow; j++) {
                int64_t h0, h1, w0, w1;
                avgpool_bin(a, i, j, &h0, &h1, &w0, &w1);
                float sum = 0.0f;
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++) sum += xp[ih * w + iw];
                /* divided twice, as PyTorch's CPU kernel does (sum / kh / kw) */
                yp[i * ow + j] = sum / (float)(h1 - h0) / (float)(w1 - w0);
            }
        }
    }
}

// x is (n, c, h, w); y is (n, c, oh, ow)
void graft_adaptive_avgpool2d_forward(int64_t n, int64_t c, int64_t h, int64_t w, int64_t oh,
                                      int64_t ow, const float *x, float *y) {
    avgpool_args a = {.h = h, .w = w, .oh = oh, .ow = ow, .x = x, .y = y};
    avgpool_plan(&a);
    graft_parallel_for(n * c, POOL_MIN_PLANES, avgpool_forward_planes, &a);
}

static void avgpool_backward_planes(void *arg, int64_t begin, int64_t end) {
    const avgpool_args *a = arg;
    int64_t h = a->h, w = a->w, oh = a->oh, ow = a->ow;
    for (int64_t p = begin; p < end; p++) {
        float *dxp = a->dx + p * h * w;
        const float *dyp = a->dy + p * oh * ow;
        memset(dxp, 0, (size_t)(h * w) * sizeof *dxp);
        for (int64_t i = 0; i < oh; i++) {
            for (int64_t j = 0; j < ow; j++) {
                int64_t h0, h1, w0, w1;
                avgpool_bin(a, i, j, &h0, &h1, &w0, &w1);
                float share = dyp[i * ow + j] / (float)(h1 - h0) / (float)(w1 - w0);
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++) dxp[ih * w + iw] += share;
            }
        }
    }
}

// dy is (n, c, oh, ow); dx is (n, c, h, w), overwritten
void graft_adaptive_avgpool2d_backward(int64_t n, int64_t c, int64_t h, int64_t w, int64_t oh,
                                       int64_t ow, const float *dy, float *dx) {
    if (!dx) return;
    avgpool_args a = {.h = h, .w = w, .oh = oh, .ow = ow, .dy = dy, .dx = dx};
    avgpool_plan(&a);
    graft_parallel_for(n * c, POOL_MIN_PLANES, avgpool_backward_planes, &a);
}

void graft_ref_adaptive_avgpool2d_forward(int64_t n, int64_t c, int64_t h, int64_t w,
                                          int64_t oh, int64_t ow, const double *x, double *y) {
    for (int64_t p = 0; p < n * c; p++) {
        for (int64_t i = 0; i < oh; i++) {
            for (int64_t j = 0; j < ow; j++) {
                int64_t h0 = (int64_t)floor((double)(i * h) / (double)oh);
                int64_t h1 = (int64_t)ceil((double)((i + 1) * h) / (double)oh);
                int64_t w0 = (int64_t)floor((double)(j * w) / (double)ow);
                int64_t w1 = (int64_t)ceil((double)((j + 1) * w) / (double)ow);
                double sum = 0.0;
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++) sum += x[(p * h + ih) * w + iw];
                y[(p * oh + i) * ow + j] = sum / (double)((h1 - h0) * (w1 - w0));
            }
        }
    }
}

void graft_ref_adaptive_avgpool2d_backward(int64_t n, int64_t c, int64_t h, int64_t w,
                                           int64_t oh, int64_t ow, const double *dy,
                                           double *dx) {
    if (!dx) return;
    for (int64_t k = 0; k < n * c * h * w; k++) dx[k] = 0.0;
    for (int64_t p = 0; p < n * c; p++) {
        for (int64_t i = 0; i < oh; i++) {
            for (int64_t j = 0; j < ow; j++) {
                int64_t h0 = (int64_t)floor((double)(i * h) / (double)oh);
                int64_t h1 = (int64_t)ceil((double)((i + 1) * h) / (double)oh);
                int64_t w0 = (int64_t)floor((double)(j * w) / (double)ow);
                int64_t w1 = (int64_t)ceil((double)((j + 1) * w) / (double)ow);
                double area = (double)((h1 - h0) * (w1 - w0));
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++)
                        dx[(p * h + ih) * w + iw] += dy[(p * oh + i) * ow + j] / area;
            }
        }
    }
}
