/* dropout.c — Dropout in train mode (eval mode is the identity and never reaches here).
 *
 * Inverted dropout as PyTorch does it: each element is kept with probability 1 - p and
 * the kept ones are scaled by 1 / (1 - p), so the expected output equals the input.
 * The mask stores the factor (0 or the scale) so the backward is one multiply.  The
 * mask is drawn from the context's generator, one uniform per element in order (as
 * integers, graft_rng_select), so a seed fixes the mask regardless of the thread count
 * (the draws are vectorised by jumping copies of the generator ahead, the same numbers). */
#include "core/threads.h"
#include "ops/ops.h"

/* Elementwise multiply is memory-bound; threads pay only on large arrays. */
#define DROPOUT_MIN_CHUNK 32768

typedef struct dropout_args {
    const float *mask, *dy;
    float *dx;
} dropout_args;

/* dx = dy * mask over [begin, end): the backward, and the forward's y = x * mask. */
static void dropout_multiply_range(void *arg, int64_t begin, int64_t end) {
    const dropout_args *a = arg;
    const float *mask = a->mask, *dy = a->dy; /* locals: see activation.c */
    float *dx = a->dx;
    for (int64_t i = begin; i < end; i++) dx[i] = dy[i] * mask[i];
}

// x, y, mask are (n); y may alias x
void graft_dropout_forward(int64_t n, float p, graft_rng *rng, const float *x, float *y,
                           float *mask) {
    if (p <= 0.0f) { /* nothing dropped, nothing drawn */
        for (int64_t i = 0; i < n; i++) {
            mask[i] = 1.0f;
            y[i] = x[i];
        }
        return;
    }
    if (p >= 1.0f) { /* everything dropped; 1 / (1 - p) would be infinite.  PyTorch
                      * multiplies by zero here too, so a NaN or inf input gives NaN. */
        for (int64_t i = 0; i < n; i++) {
            mask[i] = 0.0f;
            y[i] = x[i] * 0.0f;
        }
        return;
    }
    /* PyTorch divides the Bernoulli mask by (1 - p) in float; 1 - p is exact for the
     * usual p = 0.5. */
    const float scale = 1.0f / (1.0f - p);
    graft_rng_select(rng, n, (double)p, 0.0f, scale, mask); /* uniform < p: dropped */
    dropout_args a = {.mask = mask, .dy = x, .dx = y};
    graft_parallel_for(n, DROPOUT_MIN_CHUNK, dropout_multiply_range, &a);
}

// mask, dy, dx are (n); dx may alias dy
void graft_dropout_backward(int64_t n, const float *mask, const float *dy, float *dx) {
    if (!dx) return;
    dropout_args a = {.mask = mask, .dy = dy, .dx = dx};
    graft_parallel_for(n, DROPOUT_MIN_CHUNK, dropout_multiply_range, &a);
}

/* ---- reference: the mask is given, so the op is a fixed elementwise product ---- */

void graft_ref_dropout_forward(int64_t n, const double *mask, const double *x, double *y) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * mask[i];
}

void graft_ref_dropout_backward(int64_t n, const double *mask, const double *dy, double *dx) {
    if (!dx) return;
    for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * mask[i];
}
