/* conv.c — Conv2d: geometry, the fast float32 path lowered to GEMM, and the double
 * reference it is checked against.
 *
 * The fast path lowers a chunk of nb images at a time (im2col, as in Caffe):
 *   col [K, nb*P]     K = c*kh*kw rows, ordered (ci, ki, kj) like the weight's columns;
 *                     nb*P columns, ordered (image, oy, ox), P = oh*ow
 *   Y   [oc, nb*P] = W [oc, K] . col        one GEMM per chunk
 * and Y is scattered into y [n, oc, oh, ow].  Putting several images in one GEMM is
 * what keeps deep layers fast: VGG at 32x32 input ends with 2x2 maps, where a
 * per-image GEMM would be a 512 x 4 sliver.  The chunk is as many images as fit a
 * bounded workspace (conv_internal.h), at least one.
 *
 * Threads: im2col, col2im, scatter and gather run on graft_parallel_for, and so does
 * each GEMM (ops/gemm.h: one single-threaded BLAS call per pool thread).
 *
 * Where the CPU has AVX-512, the forward and the input gradient of stride-1
 * convolutions take conv_avx512.c's kernels instead, which never write col: Winograd
 * F(2x2, 3x3) for 3x3 kernels with padding 1, the implicit GEMM for the rest
 * (conv_internal.h says how the kernel is chosen). */
#include "ops/ops.h"

#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/cpu.h"
#include "core/error.h"
#include "core/threads.h"
#include "ops/conv_internal.h"
#include "ops/gemm.h"

/* Below this many floats of copying per task, handing work to another thread costs
 * more than it saves. */
#define PAR_GRAIN_FLOATS 4096

static size_t workspace_limit_floats = GRAFT_CONV2D_WORKSPACE_LIMIT_FLOATS;
static graft_conv2d_kernel forced_kernel = GRAFT_CONV2D_AUTO;

void graft_conv2d_set_workspace_limit(size_t floats) {
    workspace_limit_floats = floats ? floats : GRAFT_CONV2D_WORKSPACE_LIMIT_FLOATS;
}

void graft_conv2d_set_kernel(graft_conv2d_kernel k) { forced_kernel = k; }

/* Where F(4x4, 3x3) measured faster than F(2x2, 3x3) (VGG16's layers at 32x32 and
 * 224x224, docs/performance.md): maps of at least 8 x 8 whose 4x4 tiles waste at most
 * a tenth of their outputs past the edges (14 x 14 wastes 23% and lost), and at least
 * 128 input or output channels (64 -> 64 lost: with short sums the transforms weigh
 * more than the 2.25x fewer products save). */
static bool winograd4_pays(const graft_conv2d_geom *g) {
    int64_t tiled = 16 * ((g->oh + 3) / 4) * ((g->ow + 3) / 4);
    return g->oh >= 8 && g->ow >= 8 && 10 * g->oh * g->ow >= 9 * tiled && (g->c >= 128 || g->oc >= 128);
}

/* Input channels from which WGEMM measured faster than GEMM on this kind of CPU
 * (docs/performance.md): with fewer, the products' sums are short and the transforms
 * weigh more, so WGEMM takes them only where its AVX2 transforms run at full width, on
 * maps whose rows of tiles are whole vectors of 8 (ow a multiple of 16).  Measured with
 * 3 input channels and 64 outputs, GEMM's time over WGEMM's: 2.1-2.3 at 32 x 32, 1.9 at
 * 224 x 224, 2.1 at 64 x 64; 1.06-1.14 at 28 x 28 and 0.68 at 14 x 14, where rows of 14
 * and 7 tiles leave the transforms' scalar loops much of the work. */
#define WGEMM_MIN_CHANNELS 16
#define WGEMM_WHOLE_ROW 16

/* The kernel where the CPU has no AVX-512 (or the sizes rule its kernels out). */
static graft_conv2d_kernel kernel_without_avx512(const graft_conv2d_geom *g) {
    if (forced_kernel == GRAFT_CONV2D_WGEMM)
        return graft_conv2d_wgemm_fits(g) ? GRAFT_CONV2D_WGEMM : GRAFT_CONV2D_GEMM;
    if (forced_kernel == GRAFT_CONV2D_GEMM || forced_kernel == GRAFT_CONV2D_AVX512 || !graft_conv2d_wgemm_fits(g))
        return GRAFT_CONV2D_GEMM;
    bool pays = g->c >= WGEMM_MIN_CHANNELS || (graft_cpu_avx2() && g->ow % WGEMM_WHOLE_ROW == 0);
    return forced_kernel != GRAFT_CONV2D_AUTO || pays ? GRAFT_CONV2D_WGEMM : GRAFT_CONV2D_GEMM;
}

graft_conv2d_kernel graft_conv2d_forward_kernel(const graft_conv2d_geom *g) {
    if (forced_kernel == GRAFT_CONV2D_GEMM || forced_kernel == GRAFT_CONV2D_WGEMM ||
        !graft_conv2d_avx512_available() || !graft_conv2d_avx512_fits(g))
        return kernel_without_avx512(g);
    if (graft_conv2d_winograd4_fits(g) &&
        (forced_kernel == GRAFT_CONV2D_WINOGRAD4 || (forced_kernel == GRAFT_CONV2D_AUTO && winograd4_pays(g))))
        return GRAFT_CONV2D_WINOGRAD4;
    if (forced_kernel != GRAFT_CONV2D_AVX512 && graft_conv2d_winograd_fits(g)) return GRAFT_CONV2D_WINOGRAD;
    return GRAFT_CONV2D_AVX512;
}

/* The scratch of the kernels that do not lower to GEMM, and the forward with one. */
static size_t direct_workspace_floats(graft_conv2d_kernel k, const graft_conv2d_geom *g) {
    return k == GRAFT_CONV2D_WGEMM       ? graft_conv2d_wgemm_workspace_floats(g)
           : k == GRAFT_CONV2D_WINOGRAD4 ? graft_conv2d_winograd4_workspace_floats(g)
           : k == GRAFT_CONV2D_WINOGRAD  ? graft_conv2d_winograd_workspace_floats(g)
                                         : graft_conv2d_avx512_workspace_floats(g);
}

static graft_status direct_forward(graft_conv2d_kernel k, const graft_conv2d_geom *g, const float *x, const float *w,
                                   const float *b, float *y, float *scratch) {
    return k == GRAFT_CONV2D_WGEMM       ? graft_conv2d_forward_wgemm(g, x, w, b, y, scratch)
           : k == GRAFT_CONV2D_WINOGRAD4 ? graft_conv2d_forward_winograd4(g, x, w, b, y, scratch)
           : k == GRAFT_CONV2D_WINOGRAD  ? graft_conv2d_forward_winograd(g, x, w, b, y, scratch)
                                         : graft_conv2d_forward_avx512(g, x, w, b, y, scratch);
}

/* ---- geometry ------------------------------------------------------------- */

graft_status graft_conv2d_geom_init(graft_conv2d_geom *g) {
    g->oh = g->ow = 0;
    if (g->n <= 0 || g->c <= 0 || g->h <= 0 || g->w <= 0)
        return graft_error(GRAFT_ERR_SHAPE,
                           "conv2d: input [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64
                           "] has a non-positive size",
                           g->n, g->c, g->h, g->w);
    if (g->oc <= 0 || g->kh <= 0 || g->kw <= 0)
        return graft_error(GRAFT_ERR_SHAPE,
                           "conv2d: weight [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64
                           "] has a non-positive size",
                           g->oc, g->c, g->kh, g->kw);
    if (g->sh <= 0 || g->sw <= 0)
        return graft_error(GRAFT_ERR_INVALID,
                           "conv2d: stride (%" PRId64 ", %" PRId64 ") must be positive", g->sh,
                           g->sw);
    if (g->ph < 0 || g->pw < 0)
        return graft_error(GRAFT_ERR_INVALID,
                           "conv2d: padding (%" PRId64 ", %" PRId64 ") must not be negative",
                           g->ph, g->pw);
    if (g->ph > (INT64_MAX - g->h) / 2 || g->pw > (INT64_MAX - g->w) / 2)
        return graft_error(GRAFT_ERR_INVALID,
                           "conv2d: padding (%" PRId64 ", %" PRId64 ") is too large", g->ph,
                           g->pw);
    int64_t padded_h = g->h + 2 * g->ph, padded_w = g->w + 2 * g->pw;
    if (padded_h < g->kh || padded_w < g->kw)
        return graft_error(GRAFT_ERR_SHAPE,
                           "conv2d: kernel %" PRId64 "x%" PRId64
                           " is larger than the padded input %" PRId64 "x%" PRId64
                           " (input %" PRId64 "x%" PRId64 ", padding (%" PRId64 ", %" PRId64
                           ")), so the output would be empty",
                           g->kh, g->kw, padded_h, padded_w, g->h, g->w, g->ph, g->pw);
    g->oh = (padded_h - g->kh) / g->sh + 1;
    g->ow = (padded_w - g->kw) / g->sw + 1;
    return GRAFT_OK;
}

/* A 1x1, stride-1, unpadded conv reads each image as its own col [c, h*w]. */
static int is_pointwise(const graft_conv2d_geom *g) {
    return g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
}

int64_t graft_conv2d_chunk_images(const graft_conv2d_geom *g) {
    int64_t k = g->c * g->kh * g->kw, p = g->oh * g->ow;
    /* Per image: its K x P slice of col, plus its oc x P slice of the GEMM output
     * (forward) or of the gathered dy (backward). */
    size_t per_image = (size_t)((k + g->oc) * p);
    size_t fit = workspace_limit_floats / per_image;
    int64_t nb = fit >= (size_t)g->n ? g->n : (int64_t)fit;
    if (nb > INT_MAX / p) nb = INT_MAX / p; /* the GEMM's column count is a BLAS int */
    if (nb < 1) nb = 1;
    /* Even out the chunks: 9 images under a bound of 8 run as 5 + 4, not 8 + 1. */
    int64_t chunks = (g->n + nb - 1) / nb;
    return (g->n + chunks - 1) / chunks;
}

/* The output positions o in [0, out) whose input index o*stride - pad + k lies in
 * [0, in), as the half-open range [*lo, *hi). */
static void valid_range(int64_t out, int64_t in, int64_t stride, int64_t pad, int64_t k,
                        int64_t *lo, int64_t *hi) {
    int64_t first = pad - k;        /* need o*stride >= first */
    int64_t last = in - 1 + pad - k; /* need o*stride <= last */
    int64_t l = first <= 0 ? 0 : (first + stride - 1) / stride;
    int64_t h = last < 0 ? 0 : last / stride + 1;
    if (h > out) h = out;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* ---- the parallel loops around the GEMMs ---------------------------------- */

typedef struct lower_job {
    const graft_conv2d_geom *g;
    int64_t m;           /* images in this chunk */
    const float *src;    /* see each loop */
    float *dst;
    const float *bias;   /* scatter only; NULL = none */
} lower_job;

/* im2col: x [m, c, h, w] -> col [K, m*P].  Unit r writes row r of col, one P-float
 * segment per image, zeros where the kernel reads padding.  The valid ranges depend
 * only on the row, so they are found once for all the chunk's images (with 2x2 maps
 * a segment is only 4 floats). */
static void im2col_range(void *arg, int64_t begin, int64_t end) {
    const lower_job *j = arg;
    const graft_conv2d_geom *g = j->g;
    int64_t p = g->oh * g->ow, ld = j->m * p, plane = g->h * g->w, image = g->c * plane;
    for (int64_t r = begin; r < end; r++) {
        int64_t ci = r / (g->kh * g->kw), ki = r / g->kw % g->kh, kj = r % g->kw;
        int64_t ylo, yhi, xlo, xhi;
        valid_range(g->oh, g->h, g->sh, g->ph, ki, &ylo, &yhi);
        valid_range(g->ow, g->w, g->sw, g->pw, kj, &xlo, &xhi);
        for (int64_t b = 0; b < j->m; b++) {
            const float *x = j->src + b * image + ci * plane;
            float *col = j->dst + r * ld + b * p;
            memset(col, 0, (size_t)(ylo * g->ow) * sizeof *col);
            for (int64_t oy = ylo; oy < yhi; oy++) {
                int64_t row = (oy * g->sh - g->ph + ki) * g->w + kj - g->pw; /* + ox*sw */
                float *out = col + oy * g->ow;
                for (int64_t ox = 0; ox < xlo; ox++) out[ox] = 0.0f;
                if (g->sw == 1)
                    memcpy(out + xlo, x + row + xlo, (size_t)(xhi - xlo) * sizeof *out);
                else
                    for (int64_t ox = xlo; ox < xhi; ox++) out[ox] = x[row + ox * g->sw];
                for (int64_t ox = xhi; ox < g->ow; ox++) out[ox] = 0.0f;
            }
            memset(col + yhi * g->ow, 0, (size_t)((g->oh - yhi) * g->ow) * sizeof *col);
        }
    }
}

/* col2im: dcol [K, m*P] -> dx [m, c, h, w], overwriting.  Unit u = (image b, channel
 * ci) owns one input plane, so the sums of overlapping windows never race. */
static void col2im_range(void *arg, int64_t begin, int64_t end) {
    const lower_job *j = arg;
    const graft_conv2d_geom *g = j->g;
    int64_t p = g->oh * g->ow, ld = j->m * p, plane = g->h * g->w;
    for (int64_t u = begin; u < end; u++) {
        int64_t b = u / g->c, ci = u % g->c;
        float *dx = j->dst + u * plane;
        memset(dx, 0, (size_t)plane * sizeof *dx);
        for (int64_t ki = 0; ki < g->kh; ki++) {
            int64_t ylo, yhi;
            valid_range(g->oh, g->h, g->sh, g->ph, ki, &ylo, &yhi);
            for (int64_t kj = 0; kj < g->kw; kj++) {
                int64_t xlo, xhi;
                valid_range(g->ow, g->w, g->sw, g->pw, kj, &xlo, &xhi);
                const float *dcol = j->src + ((ci * g->kh + ki) * g->kw + kj) * ld + b * p;
                for (int64_t oy = ylo; oy < yhi; oy++) {
                    int64_t row = (oy * g->sh - g->ph + ki) * g->w + kj - g->pw;
                    const float *in = dcol + oy * g->ow;
                    for (int64_t ox = xlo; ox < xhi; ox++) dx[row + ox * g->sw] += in[ox];
                }
            }
        }
    }
}

/* scatter: Y [oc, m*P] (+ bias) -> y [m, oc, P].  Unit u = (channel o, image b).
 * With m == 1 the GEMM wrote y itself and src == dst: only the bias is added. */
static void scatter_range(void *arg, int64_t begin, int64_t end) {
    const lower_job *j = arg;
    const graft_conv2d_geom *g = j->g;
    int64_t p = g->oh * g->ow;
    for (int64_t u = begin; u < end; u++) {
        int64_t o = u / j->m, b = u % j->m;
        const float *in = j->src + (o * j->m + b) * p;
        float *out = j->dst + (b * g->oc + o) * p;
        if (j->bias) {
            float bias = j->bias[o];
            for (int64_t i = 0; i < p; i++) out[i] = in[i] + bias;
        } else if (in != out) {
            memcpy(out, in, (size_t)p * sizeof *out);
        }
    }
}

/* gather: dy [m, oc, P] -> dY [oc, m*P], the inverse of scatter.  Unit u = (o, b). */
static void gather_range(void *arg, int64_t begin, int64_t end) {
    const lower_job *j = arg;
    const graft_conv2d_geom *g = j->g;
    int64_t p = g->oh * g->ow;
    for (int64_t u = begin; u < end; u++) {
        int64_t o = u / j->m, b = u % j->m;
        memcpy(j->dst + (o * j->m + b) * p, j->src + (b * g->oc + o) * p,
               (size_t)p * sizeof(float));
    }
}

/* db[o] += sum over images and positions of dy [n, oc, P], summed in double. */
static void bias_grad_range(void *arg, int64_t begin, int64_t end) {
    const lower_job *j = arg;
    const graft_conv2d_geom *g = j->g;
    int64_t p = g->oh * g->ow;
    for (int64_t o = begin; o < end; o++) {
        double sum = 0.0;
        for (int64_t b = 0; b < g->n; b++) {
            const float *dy = j->src + (b * g->oc + o) * p;
            for (int64_t i = 0; i < p; i++) sum += dy[i];
        }
        j->dst[o] += (float)sum;
    }
}

/* Runs fn over `units` units of `floats_per_unit` floats each, threaded when that pays. */
static void run_units(graft_range_fn fn, lower_job *j, int64_t units, int64_t floats_per_unit) {
    int64_t min_chunk = PAR_GRAIN_FLOATS / (floats_per_unit > 0 ? floats_per_unit : 1);
    graft_parallel_for(units, min_chunk > 0 ? min_chunk : 1, fn, j);
}

/* The GEMM sizes are BLAS ints; chunk_images already bounds the column count. */
static graft_status check_blas_dims(const graft_conv2d_geom *g) {
    int64_t k = g->c * g->kh * g->kw, p = g->oh * g->ow;
    if (k > INT_MAX || g->oc > INT_MAX || p > INT_MAX)
        return graft_error(GRAFT_ERR_UNSUPPORTED,
                           "conv2d: GEMM of %" PRId64 " x %" PRId64 " x %" PRId64
                           " exceeds BLAS's int sizes",
                           g->oc, k, p);
    return GRAFT_OK;
}

/* ---- forward -------------------------------------------------------------- */

/* x [n, c, h, w], w [oc, c, kh, kw], b [oc] or NULL -> y [n, oc, oh, ow] */
graft_status graft_conv2d_forward(graft_ctx *ctx, const graft_conv2d_geom *g, const float *x,
                                  const float *w, const float *b, float *y) {
    graft_conv2d_kernel kernel = graft_conv2d_forward_kernel(g);
    if (kernel != GRAFT_CONV2D_GEMM) {
        float *scratch = graft_ctx_workspace(ctx, direct_workspace_floats(kernel, g));
        if (!scratch) return GRAFT_ERR_NOMEM;
        return direct_forward(kernel, g, x, w, b, y, scratch);
    }
    graft_status s = check_blas_dims(g);
    if (s != GRAFT_OK) return s;
    int64_t k = g->c * g->kh * g->kw, p = g->oh * g->ow, in_image = g->c * g->h * g->w;
    int64_t nb = graft_conv2d_chunk_images(g);
    int pointwise = is_pointwise(g);

    /* workspace = col [K, nb*P] (not needed when every chunk is one pointwise image)
     *           + Y [oc, nb*P]   (not needed when the GEMM can write y directly) */
    size_t col_floats = pointwise && nb == 1 ? 0 : (size_t)(k * nb * p);
    size_t out_floats = nb > 1 ? (size_t)(g->oc * nb * p) : 0;
    float *ws = NULL;
    if (col_floats + out_floats > 0) {
        ws = graft_ctx_workspace(ctx, col_floats + out_floats);
        if (!ws) return GRAFT_ERR_NOMEM;
    }
    float *col = ws, *out_buf = ws ? ws + col_floats : NULL;

    for (int64_t i0 = 0; i0 < g->n; i0 += nb) {
        int64_t m = g->n - i0 < nb ? g->n - i0 : nb; /* images in this chunk */
        const float *xc = x + i0 * in_image;
        float *yc = y + i0 * g->oc * p;
        lower_job j = {.g = g, .m = m, .src = xc, .dst = col, .bias = NULL};

        const float *a = xc; /* [K, m*P] */
        if (!(pointwise && m == 1)) {
            run_units(im2col_range, &j, k, m * p);
            a = col;
        }
        float *out = m == 1 ? yc : out_buf; /* [oc, m*P] */
        graft_sgemm(false, false, g->oc, m * p, k, 1.0f, w, k, a, m * p, 0.0f, out, m * p);
        if (m > 1 || b) {
            j.src = out;
            j.dst = yc;
            j.bias = b;
            run_units(scatter_range, &j, g->oc * m, p);
        }
    }
    if (g->relu) graft_relu_forward(g->n * g->oc * p, y, y);
    return GRAFT_OK;
}

/* ---- forward with the weights' transform kept ------------------------------ */

struct graft_conv2d_held {
    graft_ctx store;            /* u, the transformed weights (its workspace, kept between calls) */
    const float *u;             /* NULL until made: then from */
    const float *w;             /* this weight array, */
    graft_conv2d_kernel kernel; /* for this kernel */
    int64_t c, oc;              /* and these sizes, all U depends on */
    int layout;                 /* with WGEMM: graft_conv2d_wgemm_layout's */
};

void graft_conv2d_held_free(graft_conv2d_held *h) {
    if (!h) return;
    graft_ctx_release(&h->store);
    free(h);
}

graft_status graft_conv2d_forward_held(graft_ctx *ctx, const graft_conv2d_geom *g, const float *x, const float *w,
                                       const float *b, float *y, graft_conv2d_held **held) {
    graft_conv2d_kernel kernel = graft_conv2d_forward_kernel(g);
    if (kernel != GRAFT_CONV2D_WINOGRAD && kernel != GRAFT_CONV2D_WINOGRAD4 && kernel != GRAFT_CONV2D_WGEMM)
        return graft_conv2d_forward(ctx, g, x, w, b, y);
    int tile = kernel == GRAFT_CONV2D_WINOGRAD4 ? 4 : 2;
    bool wgemm = kernel == GRAFT_CONV2D_WGEMM;
    graft_conv2d_held *h = *held;
    if (!h) {
        if (!(h = *held = calloc(1, sizeof *h))) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
        graft_ctx_init(&h->store, 0);
    }
    int layout = wgemm ? graft_conv2d_wgemm_layout(g) : 0;
    if (!h->u || h->kernel != kernel || h->w != w || h->c != g->c || h->oc != g->oc || h->layout != layout) {
        h->u = NULL; /* nothing valid while it is rewritten */
        float *u = graft_ctx_workspace(&h->store, wgemm ? graft_conv2d_wgemm_weights_floats(g)
                                                        : graft_conv2d_winograd_weights_floats(g, tile));
        if (!u) return GRAFT_ERR_NOMEM;
        graft_status s = wgemm ? graft_conv2d_wgemm_prepare(g, w, u) : graft_conv2d_winograd_prepare(g, tile, w, u);
        if (s) return s;
        h->u = u, h->kernel = kernel, h->w = w, h->c = g->c, h->oc = g->oc, h->layout = layout;
    }
    float *scratch = graft_ctx_workspace(ctx, wgemm ? graft_conv2d_wgemm_prepared_workspace_floats(g)
                                                    : graft_conv2d_winograd_prepared_workspace_floats(g, tile));
    if (!scratch) return GRAFT_ERR_NOMEM;
    return wgemm ? graft_conv2d_forward_wgemm_prepared(g, x, h->u, b, y, scratch)
                 : graft_conv2d_forward_winograd_prepared(g, tile, x, h->u, b, y, scratch);
}

/* ---- backward ------------------------------------------------------------- */

/* The input gradient of a stride-1 convolution is itself a stride-1 convolution:
 *   dx [n, c, h, w] = conv(dy [n, oc, oh, ow], wt [c, oc, kh, kw]) with padding
 *   (kh-1-ph, kw-1-pw), where wt[ci][o][ki][kj] = w[o][ci][kh-1-ki][kw-1-kj]
 * (the kernel flipped, its channel axes swapped).  True, and t filled when given,
 * when g is such a convolution and the AVX-512 kernel would run it. */
static bool dx_as_forward(const graft_conv2d_geom *g, graft_conv2d_geom *t) {
    if (g->sh != 1 || g->sw != 1 || g->ph > g->kh - 1 || g->pw > g->kw - 1) return false;
    graft_conv2d_geom f = {.n = g->n, .c = g->oc, .h = g->oh, .w = g->ow, .oc = g->c, .kh = g->kh,
                           .kw = g->kw, .sh = 1, .sw = 1, .ph = g->kh - 1 - g->ph, .pw = g->kw - 1 - g->pw};
    if (graft_conv2d_geom_init(&f) != GRAFT_OK || f.oh != g->h || f.ow != g->w) return false;
    if (graft_conv2d_forward_kernel(&f) == GRAFT_CONV2D_GEMM) return false;
    if (t) *t = f;
    return true;
}

typedef struct flip_job {
    const graft_conv2d_geom *g;
    const float *w; /* [oc, c, kh, kw] */
    float *wt;      /* [c, oc, kh, kw], flipped */
} flip_job;

/* Unit ci writes wt[ci]. */
static void flip_range(void *arg, int64_t begin, int64_t end) {
    const flip_job *j = arg;
    const graft_conv2d_geom *g = j->g;
    int64_t taps = g->kh * g->kw;
    for (int64_t ci = begin; ci < end; ci++)
        for (int64_t o = 0; o < g->oc; o++) {
            const float *src = j->w + (o * g->c + ci) * taps;
            float *dst = j->wt + (ci * g->oc + o) * taps;
            for (int64_t t = 0; t < taps; t++) dst[t] = src[taps - 1 - t];
        }
}

/* w [oc, c, kh, kw], dy [n, oc, oh, ow] -> dx [n, c, h, w] (overwritten), for a g that
 * dx_as_forward accepts. */
static graft_status dx_by_forward(graft_ctx *ctx, const graft_conv2d_geom *g, const float *w, const float *dy,
                                  float *dx) {
    graft_conv2d_geom t;
    dx_as_forward(g, &t);
    graft_conv2d_kernel kernel = graft_conv2d_forward_kernel(&t);
    size_t wt_floats = (size_t)(g->oc * g->c * g->kh * g->kw);
    float *ws = graft_ctx_workspace(ctx, wt_floats + direct_workspace_floats(kernel, &t));
    if (!ws) return GRAFT_ERR_NOMEM;
    flip_job j = {.g = g, .w = w, .wt = ws};
    graft_parallel_for(g->c, 1 + PAR_GRAIN_FLOATS / (g->oc * g->kh * g->kw), flip_range, &j);
    return direct_forward(kernel, &t, dy, ws, NULL, dx, ws + wt_floats);
}

/* x [n, c, h, w], w [oc, c, kh, kw], dy [n, oc, oh, ow] ->
 *   dx [n, c, h, w] (overwritten), dw [oc, c, kh, kw] (+=), db [oc] (+=); NULL skips. */
graft_status graft_conv2d_backward(graft_ctx *ctx, const graft_conv2d_geom *g, const float *x,
                                   const float *w, const float *dy, float *dx, float *dw,
                                   float *db) {
    graft_status s = check_blas_dims(g);
    if (s != GRAFT_OK) return s;
    int64_t k = g->c * g->kh * g->kw, p = g->oh * g->ow, in_image = g->c * g->h * g->w;

    if (db) {
        lower_job j = {.g = g, .m = g->n, .src = dy, .dst = db, .bias = NULL};
        run_units(bias_grad_range, &j, g->oc, g->n * p);
    }
    if (dx && dx_as_forward(g, NULL)) {
        if ((s = dx_by_forward(ctx, g, w, dy, dx))) return s;
        dx = NULL; /* done: the loop below only has dw left */
    }
    if (!dx && !dw) return GRAFT_OK;

    int64_t nb = graft_conv2d_chunk_images(g);
    int pointwise = is_pointwise(g);
    /* workspace = col [K, nb*P], reused as dcol once dw has read it
     *           + dY [oc, nb*P], dy gathered so one GEMM covers the chunk */
    size_t col_floats = pointwise && nb == 1 ? 0 : (size_t)(k * nb * p);
    size_t dy_floats = nb > 1 ? (size_t)(g->oc * nb * p) : 0;
    float *ws = NULL;
    if (col_floats + dy_floats > 0) {
        ws = graft_ctx_workspace(ctx, col_floats + dy_floats);
        if (!ws) return GRAFT_ERR_NOMEM;
    }
    float *col = ws, *dy_buf = ws ? ws + col_floats : NULL;

    for (int64_t i0 = 0; i0 < g->n; i0 += nb) {
        int64_t m = g->n - i0 < nb ? g->n - i0 : nb;
        int direct = pointwise && m == 1; /* the image is its own col, dx its own dcol */
        const float *xc = x + i0 * in_image;
        const float *dyc = dy + i0 * g->oc * p;
        lower_job j = {.g = g, .m = m, .src = NULL, .dst = NULL, .bias = NULL};

        const float *d_out = dyc; /* dY [oc, m*P] */
        if (m > 1) {
            j.src = dyc;
            j.dst = dy_buf;
            run_units(gather_range, &j, g->oc * m, p);
            d_out = dy_buf;
        }
        if (dw) { /* dW [oc, K] += dY [oc, m*P] . col^T */
            const float *a = xc;
            if (!direct) {
                j.src = xc;
                j.dst = col;
                run_units(im2col_range, &j, k, m * p);
                a = col;
            }
            graft_sgemm(false, true, g->oc, k, m * p, 1.0f, d_out, m * p, a, m * p, 1.0f, dw, k);
        }
        if (dx) { /* dcol [K, m*P] = W^T . dY, then summed back into dx */
            float *dxc = dx + i0 * in_image;
            float *dcol = direct ? dxc : col;
            graft_sgemm(true, false, k, m * p, g->oc, 1.0f, w, k, d_out, m * p, 0.0f, dcol, m * p);
            if (!direct) {
                j.src = dcol;
                j.dst = dxc;
                run_units(col2im_range, &j, m * g->c, k * p / g->c);
            }
        }
    }
    return GRAFT_OK;
}

/* ---- reference (double, direct summation) --------------------------------- */

/* x [n, c, h, w], w [oc, c, kh, kw], b [oc] or NULL -> y [n, oc, oh, ow] */
void graft_ref_conv2d_forward(const graft_conv2d_geom *g, const double *x, const double *w,
                              const double *b, double *y) {
    for (int64_t i = 0; i < g->n; i++)
        for (int64_t o = 0; o < g->oc; o++)
            for (int64_t oy = 0; oy < g->oh; oy++)
                for (int64_t ox = 0; ox < g->ow; ox++) {
                    double sum = b ? b[o] : 0.0;
                    for (int64_t ci = 0; ci < g->c; ci++)
                        for (int64_t ki = 0; ki < g->kh; ki++)
                            for (int64_t kj = 0; kj < g->kw; kj++) {
                                int64_t iy = oy * g->sh - g->ph + ki;
                                int64_t ix = ox * g->sw - g->pw + kj;
                                if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) continue;
                                sum += x[((i * g->c + ci) * g->h + iy) * g->w + ix] *
                                       w[((o * g->c + ci) * g->kh + ki) * g->kw + kj];
                            }
                    y[((i * g->oc + o) * g->oh + oy) * g->ow + ox] = sum;
                }
}

/* x [n, c, h, w], w [oc, c, kh, kw], dy [n, oc, oh, ow] ->
 *   dx [n, c, h, w] (overwritten), dw [oc, c, kh, kw] (+=), db [oc] (+=); NULL skips. */
void graft_ref_conv2d_backward(const graft_conv2d_geom *g, const double *x, const double *w,
                               const double *dy, double *dx, double *dw, double *db) {
    if (dx)
        for (int64_t i = 0; i < g->n * g->c * g->h * g->w; i++) dx[i] = 0.0;
    for (int64_t i = 0; i < g->n; i++)
        for (int64_t o = 0; o < g->oc; o++)
            for (int64_t oy = 0; oy < g->oh; oy++)
                for (int64_t ox = 0; ox < g->ow; ox++) {
                    double d = dy[((i * g->oc + o) * g->oh + oy) * g->ow + ox];
                    if (db) db[o] += d;
                    for (int64_t ci = 0; ci < g->c; ci++)
                        for (int64_t ki = 0; ki < g->kh; ki++)
                            for (int64_t kj = 0; kj < g->kw; kj++) {
                                int64_t iy = oy * g->sh - g->ph + ki;
                                int64_t ix = ox * g->sw - g->pw + kj;
                                if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) continue;
                                int64_t xi = ((i * g->c + ci) * g->h + iy) * g->w + ix;
                                int64_t wi = ((o * g->c + ci) * g->kh + ki) * g->kw + kj;
                                if (dx) dx[xi] += w[wi] * d;
                                if (dw) dw[wi] += x[xi] * d;
                            }
                }
}
