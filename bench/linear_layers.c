/* linear_layers.c — the recipe's classifier products: the measurement behind the Linear
 * kernel choice in docs/performance.md.
 *
 *     build/bench/bench_linear_layers [--batch 64] [--threads T] [--iters 5]
 *
 * For each layer of the folded head (512 -> 4096, 4096 -> 4096, 4096 -> 10) and the
 * unfolded first layer (25088 -> 4096) it times, interleaved so load from other
 * processes hits all alike: the forward and the input gradient with the AVX-512 kernel
 * and with OpenBLAS (checking that they agree); the weight gradient written whole, as
 * the trainer's lazily zeroed gradients take it, with each kernel; and the accumulated
 * weight gradient (OpenBLAS, the kernel Linear uses for it).  GFLOP/s are
 * 2 * n * in * out / median seconds.  Then the 4096 -> 4096 layer's weight gradient and
 * SGD update, stored and stepped against fused (milliseconds).  The last line is
 * "gflops_per_s N": the AVX-512 forward over the 4096 -> 4096 layer (dense x).  On a CPU with AVX2
 * but not AVX-512 the AVX-512 columns run linear_avx2.c's kernels where it has them (the
 * forward and the weight gradient) and BLAS elsewhere, and the first line says so. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "core/clock.h"
#include "core/ctx.h"
#include "core/threads.h"
#include "ops/linear_internal.h"
#include "ops/ops.h"
#include "train/optim.h"

#define MAX_ITERS 64

static float *zero_floats(size_t n) {
    float *f = calloc(n, sizeof *f);
    if (!f) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return f;
}

static double rel_diff(const float *a, const float *b, size_t n) {
    double diff = 0, mag = 1e-30;
    for (size_t i = 0; i < n; i++) {
        diff = fmax(diff, fabs((double)a[i] - b[i]));
        mag = fmax(mag, fabs((double)b[i]));
    }
    return diff / mag;
}

/* in, out: the folded head, then the unfolded first layer. */
static const int layers[][2] = {{512, 4096}, {4096, 4096}, {4096, 10}, {25088, 4096}};

/* The 4096 -> 4096 layer's weight gradient and its SGD update (momentum 0.9, weight
 * decay 5e-4): stored whole and then updated by graft_optim_step, against handed to the
 * update piece by piece (graft_optim_sink); both leave the same weights.  Milliseconds. */
static void fused_table(graft_ctx *ctx, int batch, int iters, double density) {
    int64_t in = 4096, out = 4096, n = batch;
    float *x = random_floats((size_t)(n * in), 1, 1.0f), *dy = random_floats((size_t)(n * out), 4, 1.0f);
    float *keep = random_floats((size_t)(n * out), 5, 0.5f);
    for (int64_t i = 0; i < n * out; i++)
        if (keep[i] + 0.5f >= (float)density) dy[i] = 0.0f;
    free(keep);
    graft_tensor *w[2], *g[2];
    graft_optim *opt[2];
    int64_t shape[2] = {out, in};
    graft_optim_options o = graft_optim_defaults(GRAFT_OPTIM_SGD);
    o.lr[0] = 1e-3;
    o.momentum = 0.9;
    o.weight_decay = 5e-4;
    for (int k = 0; k < 2; k++) {
        float *w0 = random_floats((size_t)(out * in), 2, 0.02f);
        if (graft_tensor_create(GRAFT_F32, 2, shape, &w[k]) || graft_tensor_create(GRAFT_F32, 2, shape, &g[k])) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
        memcpy(w[k]->data, w0, (size_t)(out * in) * sizeof(float));
        free(w0);
        graft_optim_param p = {"w", w[k], g[k], NULL, 0, 1.0};
        if (graft_optim_create(&o, 1, &p, &opt[k])) {
            fprintf(stderr, "%s\n", graft_errmsg());
            exit(1);
        }
    }
    const graft_grad_sink *sink;
    if (graft_optim_sink(opt[1], w[1], &sink)) {
        fprintf(stderr, "%s\n", graft_errmsg());
        exit(1);
    }
    double t[2][MAX_ITERS + 1];
    for (int it = 0; it <= iters; it++) {
        double t0 = graft_now_seconds();
        graft_linear_backward_ex(ctx, n, in, out, x, w[0]->data, dy, NULL, g[0]->data, NULL, true, false);
        graft_optim_step(opt[0]);
        t[0][it] = graft_now_seconds() - t0;
        t0 = graft_now_seconds();
        if (!graft_linear_weight_grad_to_sink(ctx, n, in, out, x, dy, sink)) {
            fprintf(stderr, "no kernel for the fused update on this CPU\n");
            exit(1);
        }
        graft_optim_step(opt[1]);
        t[1][it] = graft_now_seconds() - t0;
    }
    int same = !memcmp(w[0]->data, w[1]->data, (size_t)(out * in) * sizeof(float));
    printf("\n4096->4096 weight gradient + SGD update (momentum, decay), batch %d, %.0f%% of dy nonzero, ms\n", batch,
           100 * density);
    printf("%-14s %13s %13s %9s\n", "", "stored+step", "fused", "same");
    printf("%-14s %13.2f %13.2f %9s\n", "4096->4096", 1e3 * median(t[0] + 1, iters), 1e3 * median(t[1] + 1, iters),
           same ? "yes" : "NO");
    for (int k = 0; k < 2; k++) {
        graft_optim_free(opt[k]);
        graft_tensor_free(w[k]);
        graft_tensor_free(g[k]);
    }
    free(x), free(dy);
}

/* The 4096 -> 4096 layer's input gradient and weight gradient written whole, by the
 * small-batch kernels (forced), from every term of the sums and from dy's nonzeros only,
 * at several shares of nonzeros in dy (the recipe's dy, past a ReLU and a Dropout, has
 * about a quarter; the input gradient takes the nonzeros up to 40%, the weight gradient
 * up to 50%).  Milliseconds, and whether both give the same bits.  Then the forward the
 * same way by the share of nonzeros in x (its nonzeros path is AVX2's, on CPUs without
 * AVX-512; on others both columns run the AVX-512 forward). */
static void sparse_table(graft_ctx *ctx, int batch, int iters) {
    static const double density[] = {1.0, 0.75, 0.5, 0.375, 0.25, 0.125};
    int64_t in = 4096, out = 4096, n = batch;
    size_t nw = (size_t)(in * out), nx = (size_t)(n * in);
    float *x = random_floats(nx, 1, 1.0f), *w = random_floats(nw, 2, 0.02f);
    float *dw[2] = {zero_floats(nw), zero_floats(nw)}, *dx[2] = {zero_floats(nx), zero_floats(nx)};
    printf("\n4096->4096 gradients, batch %d, ms, by share of nonzeros in dy\n", batch);
    printf("%-10s %11s %11s %6s %11s %11s %6s\n", "nonzero", "dx: every", "nonzeros", "same", "dw=: every",
           "nonzeros", "same");
    for (size_t d = 0; d < sizeof density / sizeof density[0]; d++) {
        float *dy = random_floats((size_t)(n * out), 4, 1.0f), *keep = random_floats((size_t)(n * out), 5, 0.5f);
        for (int64_t i = 0; i < n * out; i++)
            if (keep[i] + 0.5f >= (float)density[d]) dy[i] = 0.0f;
        double t[4][MAX_ITERS + 1];
        for (int it = 0; it <= iters; it++)
            for (int j = 0; j < 2; j++) {
                int k = (j + it) % 2; /* each first in turn: the one after finds some of w in L3 */
                graft_linear_set_kernel(GRAFT_LINEAR_AVX512);
                graft_linear_set_sparse_dy(k == 1);
                double t0 = graft_now_seconds();
                graft_linear_backward(ctx, n, in, out, x, w, dy, dx[k], NULL, NULL);
                t[k][it] = graft_now_seconds() - t0;
                t0 = graft_now_seconds();
                graft_linear_backward_ex(ctx, n, in, out, x, NULL, dy, NULL, dw[k], NULL, true, false);
                t[2 + k][it] = graft_now_seconds() - t0;
            }
        graft_linear_set_sparse_dy(true);
        graft_linear_set_kernel(GRAFT_LINEAR_AUTO);
        printf("%-10.3f %11.2f %11.2f %6s %11.2f %11.2f %6s\n", density[d], 1e3 * median(t[0] + 1, iters),
               1e3 * median(t[1] + 1, iters), memcmp(dx[0], dx[1], nx * sizeof(float)) ? "NO" : "yes",
               1e3 * median(t[2] + 1, iters), 1e3 * median(t[3] + 1, iters),
               memcmp(dw[0], dw[1], nw * sizeof(float)) ? "NO" : "yes");
        free(dy), free(keep);
    }
    printf("\n4096->4096 forward, batch %d, ms, by share of nonzeros in x\n", batch);
    printf("%-10s %11s %11s %6s\n", "nonzero", "fwd: every", "nonzeros", "same");
    size_t ny = (size_t)(n * out);
    float *y[2] = {zero_floats(ny), zero_floats(ny)};
    for (size_t d = 0; d < sizeof density / sizeof density[0]; d++) {
        float *xs = random_floats(nx, 6, 1.0f), *keep = random_floats(nx, 7, 0.5f);
        for (size_t i = 0; i < nx; i++)
            if (keep[i] + 0.5f >= (float)density[d]) xs[i] = 0.0f;
        double t[2][MAX_ITERS + 1];
        for (int it = 0; it <= iters; it++)
            for (int j = 0; j < 2; j++) {
                int k = (j + it) % 2;
                graft_linear_set_kernel(GRAFT_LINEAR_AVX512);
                graft_linear_set_sparse_x(k == 1);
                double t0 = graft_now_seconds();
                graft_linear_forward(ctx, n, in, out, xs, w, NULL, y[k]);
                t[k][it] = graft_now_seconds() - t0;
            }
        graft_linear_set_sparse_x(true);
        graft_linear_set_kernel(GRAFT_LINEAR_AUTO);
        printf("%-10.3f %11.2f %11.2f %6s\n", density[d], 1e3 * median(t[0] + 1, iters), 1e3 * median(t[1] + 1, iters),
               memcmp(y[0], y[1], ny * sizeof(float)) ? "NO" : "yes");
        free(xs), free(keep);
    }
    free(y[0]), free(y[1]);
    free(x), free(w), free(dw[0]), free(dw[1]), free(dx[0]), free(dx[1]);
}

int main(int argc, char **argv) {
    int batch = 64, threads = 0, iters = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--batch B] [--threads T] [--iters I]\n", argv[0]);
            return 2;
        }
    }
    if (batch < 1 || iters < 1 || iters > MAX_ITERS) {
        fprintf(stderr, "need --batch >= 1, --iters in 1..%d\n", MAX_ITERS);
        return 2;
    }
    bool avx512 = graft_linear_avx512_available();
    if (!avx512 && !graft_linear_avx2_available()) {
        fprintf(stderr, "this CPU has neither AVX-512F nor AVX2: only the BLAS kernel runs here\n");
        return 1;
    }
    graft_set_num_threads(threads);
    graft_ctx ctx;
    graft_ctx_init(&ctx, 1);
    printf("Linear, batch %d, %d threads, median of %d; GFLOP/s\n", batch, graft_num_threads(), iters);
    if (!avx512) /* linear_avx2.c: the "avx512" columns run its kernels */
        printf("no AVX-512F: the avx512 columns run the AVX2 kernels (forward, weight gradient, dx in its dense form)\n");
    printf("%-14s %13s %13s %13s %13s %13s %13s %13s\n", "layer", "fwd avx512", "fwd BLAS", "dx avx512", "dx BLAS",
           "dw= avx512", "dw= BLAS", "dw+= BLAS");
    double big_gflops = 0, max_diff = 0;
    for (size_t l = 0; l < sizeof layers / sizeof layers[0]; l++) {
        int64_t in = layers[l][0], out = layers[l][1], n = batch;
        size_t nx = (size_t)(n * in), nw = (size_t)(in * out), ny = (size_t)(n * out);
        float *x = random_floats(nx, 1, 1.0f), *w = random_floats(nw, 2, 0.02f), *b = random_floats((size_t)out, 3, 0.1f);
        float *dy = random_floats(ny, 4, 1.0f);
        float *y[2] = {zero_floats(ny), zero_floats(ny)}, *dx[2] = {zero_floats(nx), zero_floats(nx)};
        float *dw = zero_floats(nw);
        double t[7][MAX_ITERS + 1];
        for (int it = 0; it <= iters; it++) { /* iteration 0 warms up */
            for (int kernel = 0; kernel < 2; kernel++) {
                graft_linear_set_kernel(kernel == 0 ? GRAFT_LINEAR_AVX512 : GRAFT_LINEAR_BLAS);
                double t0 = graft_now_seconds();
                graft_linear_forward(&ctx, n, in, out, x, w, b, y[kernel]);
                t[kernel][it] = graft_now_seconds() - t0;
            }
            for (int kernel = 0; kernel < 2; kernel++) {
                graft_linear_set_kernel(kernel == 0 ? GRAFT_LINEAR_AVX512 : GRAFT_LINEAR_BLAS);
                double t0 = graft_now_seconds();
                graft_linear_backward(&ctx, n, in, out, x, w, dy, dx[kernel], NULL, NULL);
                t[2 + kernel][it] = graft_now_seconds() - t0;
            }
            graft_linear_set_kernel(GRAFT_LINEAR_AUTO);
            double t0 = graft_now_seconds();
            graft_linear_backward(&ctx, n, in, out, x, w, dy, NULL, dw, NULL);
            t[6][it] = graft_now_seconds() - t0;
            for (int kernel = 0; kernel < 2; kernel++) { /* dw written whole (after a lazy zero_grad) */
                graft_linear_set_kernel(kernel == 0 ? GRAFT_LINEAR_AVX512 : GRAFT_LINEAR_BLAS);
                t0 = graft_now_seconds();
                graft_linear_backward_ex(&ctx, n, in, out, x, w, dy, NULL, dw, NULL, true, false);
                t[4 + kernel][it] = graft_now_seconds() - t0;
            }
            graft_linear_set_kernel(GRAFT_LINEAR_AUTO);
        }
        double flops = 2.0 * (double)n * (double)in * (double)out, g[7];
        for (int k = 0; k < 7; k++) g[k] = flops / median(t[k] + 1, iters) / 1e9;
        if (in == 4096 && out == 4096) big_gflops = g[0];
        char name[32];
        snprintf(name, sizeof name, "%lld->%lld", (long long)in, (long long)out);
        printf("%-14s %13.1f %13.1f %13.1f %13.1f %13.1f %13.1f %13.1f\n", name, g[0], g[1], g[2], g[3], g[4], g[5],
               g[6]);
        max_diff = fmax(max_diff, fmax(rel_diff(y[0], y[1], ny), rel_diff(dx[0], dx[1], nx)));
        free(x), free(w), free(b), free(dy), free(y[0]), free(y[1]), free(dx[0]), free(dx[1]), free(dw);
    }
    printf("largest relative difference between the kernels (forward, dx): %.1e\n", max_diff);
    fused_table(&ctx, batch, iters, 1.0);
    fused_table(&ctx, batch, iters, 0.25);
    sparse_table(&ctx, batch, iters);
    printf("gflops_per_s %.1f\n", big_gflops);
    graft_ctx_release(&ctx);
    graft_threads_shutdown();
    return 0;
}
