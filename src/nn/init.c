/* init.c — parameter initialisation. */
#include "nn/init.h"

#include <math.h>

#define TWO_PI 6.283185307179586476925286766559

void graft_init_fans(const graft_tensor *w, double *fan_in, double *fan_out) {
    double receptive = 1;
    for (int i = 2; i < w->ndim; i++) receptive *= (double)w->shape[i];
    *fan_in = (w->ndim > 1 ? (double)w->shape[1] : 1) * receptive;
    *fan_out = (w->ndim > 0 ? (double)w->shape[0] : 1) * receptive;
}

void graft_init_normal(graft_tensor *t, double mean, double std, graft_rng *r) {
    float *x = t->data;
    int64_t n = graft_tensor_numel(t);
    /* Box-Muller yields two independent normals per pair of uniforms. */
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = graft_rng_uniform(r), u2 = graft_rng_uniform(r);
        if (u1 < 1e-300) u1 = 1e-300;
        double rad = sqrt(-2.0 * log(u1));
        x[i] = (float)(mean + std * rad * cos(TWO_PI * u2));
        if (i + 1 < n) x[i + 1] = (float)(mean + std * rad * sin(TWO_PI * u2));
    }
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
