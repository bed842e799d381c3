/* conv_layers.c — VGG16's convolutions one by one, with each Conv2d kernel, beside a bare
 * SGEMM of the same product: the measurement behind the kernel choice in
 * docs/performance.md.
 *
 *     build/bench/bench_conv_layers [--size 32] [--batch 64] [--threads T] [--iters 5] [--backward]
 *
 * For each of the 13 layers (distinct shapes once) it times, interleaved so load from other
 * processes hits all alike: graft_conv2d_forward (or the input gradient, --backward) with
 * the kernel graft chooses, Winograd F(4x4, 3x3), Winograd F(2x2, 3x3), the AVX-512
 * implicit-GEMM kernel, the im2col + BLAS kernel and Winograd F(2x2, 3x3) with BLAS
 * products (on a CPU without AVX-512 the three AVX-512 columns run what those settings
 * fall back to), and one graft_sgemm of the layer's GEMM shape on a ready-made col
 * (what any im2col design costs at least).  GFLOP/s are 2 * oc * K * n * P / median
 * seconds, whatever the kernel did.  It also prints how far each Winograd kernel's
 * outputs are from the im2col kernel's.  The last line is "gflops_per_s N": the chosen
 * kernels over all layers. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "core/clock.h"
#include "core/ctx.h"
#include "core/threads.h"
#include "ops/conv_internal.h"
#include "ops/gemm.h"
#include "ops/ops.h"

#define MAX_ITERS 64

/* VGG16's distinct convolutions: in channels, out channels, input size divisor. */
static const int layers[][3] = {{3, 64, 1},    {64, 64, 1},   {64, 128, 2},  {128, 128, 2}, {128, 256, 4},
                                {256, 256, 4}, {256, 512, 8}, {512, 512, 8}, {512, 512, 16}};
/* How many times each shape occurs in VGG16 (13 layers in all). */
static const int repeats[] = {1, 1, 1, 1, 1, 2, 1, 2, 3};

int main(int argc, char **argv) {
    int size = 32, batch = 64, threads = 0, iters = 5, backward = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--size") && i + 1 < argc) size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--backward")) backward = 1;
        else {
            fprintf(stderr, "usage: %s [--size S] [--batch B] [--threads T] [--iters I] [--backward]\n", argv[0]);
            return 2;
        }
    }
    if (size < 16 || batch < 1 || iters < 1 || iters > MAX_ITERS) {
        fprintf(stderr, "need --size >= 16, --batch >= 1, --iters in 1..%d\n", MAX_ITERS);
        return 2;
    }
    graft_set_num_threads(threads);
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    printf("VGG16 %s, %dx%d, batch %d, %d threads, median of %d\n", backward ? "input gradients" : "forward", size,
           size, batch, graft_num_threads(), iters);
    printf("%-24s %12s %12s %12s %12s %12s %12s %12s %9s %9s %9s\n", "layer", "chosen", "winograd4x4", "winograd2x2",
           "avx512", "im2col+BLAS", "wino2+BLAS", "bare SGEMM", "diff 4x4", "diff 2x2", "diff w+B");
    /* "chosen" is the kernel graft_conv2d_forward picks by itself; Winograd runs where the
     * shape allows it (every 3x3 layer here), else the direct kernel. */
    enum { NK = 6 };
    static const graft_conv2d_kernel kinds[NK] = {GRAFT_CONV2D_AUTO,   GRAFT_CONV2D_WINOGRAD4, GRAFT_CONV2D_WINOGRAD,
                                                  GRAFT_CONV2D_AVX512, GRAFT_CONV2D_GEMM,      GRAFT_CONV2D_WGEMM};
    double total_flops = 0, total[NK + 1] = {0};
    for (size_t l = 0; l < sizeof layers / sizeof layers[0]; l++) {
        graft_conv2d_geom g = {.n = batch, .c = layers[l][0], .h = size / layers[l][2], .w = size / layers[l][2],
                               .oc = layers[l][1], .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1};
        graft_conv2d_geom_init(&g);
        size_t nx = (size_t)(g.n * g.c * g.h * g.w), nw = (size_t)(g.oc * g.c * 9), ny = (size_t)(g.n * g.oc * g.oh * g.ow);
        int64_t k = g.c * 9, cols = g.n * g.oh * g.ow;
        float *x = random_floats(nx, 1, 1.0f), *w = random_floats(nw, 2, 0.05f), *b = random_floats((size_t)g.oc, 3, 0.1f);
        float *dy = random_floats(ny, 4, 1.0f);
        size_t nout = backward ? nx : ny;
        float *out[NK];
        for (int q = 0; q < NK; q++)
            if (!(out[q] = malloc(nout * sizeof(float)))) return 1;
        float *col = random_floats((size_t)(k * cols), 5, 1.0f), *prod = random_floats(ny, 6, 1.0f);
        double t[NK + 1][MAX_ITERS + 1];
        for (int it = 0; it <= iters; it++) { /* iteration 0 warms up */
            for (int kernel = 0; kernel < NK; kernel++) {
                graft_conv2d_set_kernel(kinds[kernel]);
                double t0 = graft_now_seconds();
                if (backward)
                    graft_conv2d_backward(&ctx, &g, x, w, dy, out[kernel], NULL, NULL);
                else
                    graft_conv2d_forward(&ctx, &g, x, w, b, out[kernel]);
                t[kernel][it] = graft_now_seconds() - t0;
            }
            double t0 = graft_now_seconds();
            if (backward) /* dcol [K, cols] = W^T . dY */
                graft_sgemm(true, false, k, cols, g.oc, 1.0f, w, k, prod, cols, 0.0f, col, cols);
            else /* Y [oc, cols] = W . col */
                graft_sgemm(false, false, g.oc, cols, k, 1.0f, w, k, col, cols, 0.0f, prod, cols);
            t[NK][it] = graft_now_seconds() - t0;
        }
        graft_conv2d_set_kernel(GRAFT_CONV2D_AUTO);
        /* the largest difference of each Winograd kernel from the BLAS one, relative to its
         * largest output (the direct kernel's is checked by the tests) */
        double diff4 = 0, diff2 = 0, diffb = 0, mag = 1e-30;
        for (size_t i = 0; i < nout; i++) {
            diff4 = fmax(diff4, fabs((double)out[1][i] - out[4][i]));
            diff2 = fmax(diff2, fabs((double)out[2][i] - out[4][i]));
            diffb = fmax(diffb, fabs((double)out[5][i] - out[4][i]));
            mag = fmax(mag, fabs((double)out[4][i]));
        }
        double flops = 2.0 * (double)g.oc * (double)k * (double)cols, med[NK + 1];
        for (int q = 0; q <= NK; q++) {
            med[q] = median(t[q] + 1, iters);
            total[q] += repeats[l] * med[q];
        }
        char name[64];
        snprintf(name, sizeof name, "%lld->%lld, %lldx%lld (x%d)", (long long)g.c, (long long)g.oc, (long long)g.h,
                 (long long)g.w, repeats[l]);
        printf("%-24s", name);
        for (int q = 0; q <= NK; q++) printf(" %12.1f", flops / med[q] / 1e9);
        printf(" %9.1e %9.1e %9.1e\n", diff4 / mag, diff2 / mag, diffb / mag);
        total_flops += repeats[l] * flops;
        for (int q = 0; q < NK; q++) free(out[q]);
        free(x), free(w), free(b), free(dy), free(col), free(prod);
    }
    printf("%-24s", "all 13 layers");
    for (int q = 0; q <= NK; q++) printf(" %12.1f", total_flops / total[q] / 1e9);
    printf("\n");
    /* GFLOP/s count the direct convolution's multiply-adds, whatever the kernel did */
    printf("gflops_per_s %.1f\n", total_flops / total[0] / 1e9);
    graft_ctx_release(&ctx);
    graft_threads_shutdown();
    return 0;
}
