/* activation.c — ReLU.
 *
 * PyTorch computes relu as clamp_min(x, 0), which lets NaN through (max(NaN, 0) is
 * NaN there), and its backward is threshold_backward(dy, y, 0): dy where y > 0 and
 * zero where y <= 0, which again lets NaN through.  Both versions here do the same so a
 * NaN in the activations shows up instead of being silently zeroed. */
#include <math.h>

#include "core/threads.h"
#include "ops/ops.h"

/* Elementwise work is memory-bound; below this many elements threads cost more than
 * they save. */
#define RELU_MIN_CHUNK 32768

typedef struct relu_args {
    const float *x;  /* forward input or backward y */
    const float *dy; /* backward only */
    float *out;
} relu_args;

static void relu_forward_range(void *arg, int64_t begin, int64_t end) {
    const relu_args *a = arg;
    for (int64_t i = begin; i < end; i++) {
        float v = a->x[i];
        a->out[i] = (v > 0.0f || isnan(v)) ? v : 0.0f;
    }
}

static void relu_backward_range(void *arg, int64_t begin, int64_t end) {
    const relu_args *a = arg;
    for (int64_t i = begin; i < end; i++) a->out[i] = a->x[i] <= 0.0f ? 0.0f : a->dy[i];
}

// x, y are (n); y may alias x
void graft_relu_forward(int64_t n, const float *x, float *y) {
    relu_args a = {.x = x, .dy = NULL, .out = y};
    graft_parallel_for(n, RELU_MIN_CHUNK, relu_forward_range, &a);
}

// y (the forward output), dy, dx are (n); dx may alias dy
void graft_relu_backward(int64_t n, const float *y, const float *dy, float *dx) {
    if (!dx) return;
    relu_args a = {.x = y, .dy = dy, .out = dx};
    graft_parallel_for(n, RELU_MIN_CHUNK, relu_backward_range, &a);
}

/* ---- reference ------------------------------------------------------------ */

void graft_ref_relu_forward(int64_t n, const double *x, double *y) {
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] > 0.0 || isnan(x[i])) ? x[i] : 0.0;
}

void graft_ref_relu_backward(int64_t n, const double *y, const double *dy, double *dx) {
    if (!dx) return;
    for (int64_t i = 0; i < n; i++) dx[i] = y[i] <= 0.0 ? 0.0 : dy[i];
}
