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

/* The loops read their arrays through locals: through a->, every store to out could
 * change *a as far as the compiler knows, so it reloaded the pointers for each element
 * and could not vectorise; and the backward read dy only where y > 0, which made its
 * select a branch on the sign of y, mispredicted on half the elements behind the
 * recipe's ReLU. */
static void relu_forward_range(void *arg, int64_t begin, int64_t end) {
    const relu_args *a = arg;
    const float *x = a->x;
    float *out = a->out;
    for (int64_t i = begin; i < end; i++) {
        float v = x[i];
        out[i] = (v > 0.0f || isnan(v)) ? v : 0.0f;
    }
}

static void relu_backward_range(void *arg, int64_t begin, int64_t end) {
    const relu_args *a = arg;
    const float *y = a->x, *dy = a->dy;
    float *out = a->out;
    for (int64_t i = begin; i < end; i++) {
        float d = dy[i]; /* read whatever y says, so the select needs no branch */
        out[i] = y[i] <= 0.0f ? 0.0f : d;
    }
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
