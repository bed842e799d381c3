/* testutil.h — helpers shared by graft's tests (header-only; include after cmocka.h).
 *
 * The gradient checks follow one pattern: pick a random "upstream gradient" g, define
 * the scalar L(x) = sum(f(x) * g), so dL/dx is exactly what backward(dy = g) returns;
 * compare it with central differences of L computed in double precision. */
#ifndef GRAFT_TESTUTIL_H
#define GRAFT_TESTUTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

static inline void tu_fill(graft_rng *r, double *x, int64_t n, double lo, double hi) {
    for (int64_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * graft_rng_uniform(r);
}

static inline float *tu_to_float(const double *x, int64_t n) {
    float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof *f);
    for (int64_t i = 0; i < n; i++) f[i] = (float)x[i];
    return f;
}

/* Rounds a double array to float precision in place, so fast (float) and reference
 * (double) paths see identical inputs. */
static inline void tu_round_to_float(double *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = (double)(float)x[i];
}

static inline double tu_max_abs(const double *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

/* max |a - b| / max(max |b|, floor): relative error against the reference b. */
static inline double tu_rel_err_fd(const float *a, const double *b, int64_t n, double floor_) {
    double diff = 0, mag = floor_;
    for (int64_t i = 0; i < n; i++) {
        diff = fmax(diff, fabs((double)a[i] - b[i]));
        mag = fmax(mag, fabs(b[i]));
    }
    return diff / mag;
}

static inline double tu_rel_err_dd(const double *a, const double *b, int64_t n, double floor_) {
    double diff = 0, mag = floor_;
    for (int64_t i = 0; i < n; i++) {
        diff = fmax(diff, fabs(a[i] - b[i]));
        mag = fmax(mag, fabs(b[i]));
    }
    return diff / mag;
}

static inline double tu_dot(const double *a, const double *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Central differences of loss() with respect to every element of x (perturbed in place
 * and restored); returns the largest |numeric - analytic| / max(1, max|analytic|). */
typedef double (*tu_loss_fn)(void *ctx);
static inline double tu_gradcheck(double *x, int64_t n, const double *analytic, tu_loss_fn loss,
                                  void *ctx, double h) {
    double worst = 0, mag = 1.0;
    for (int64_t i = 0; i < n; i++) mag = fmax(mag, fabs(analytic[i]));
    for (int64_t i = 0; i < n; i++) {
        double keep = x[i];
        x[i] = keep + h;
        double lp = loss(ctx);
        x[i] = keep - h;
        double lm = loss(ctx);
        x[i] = keep;
        double numeric = (lp - lm) / (2 * h);
        worst = fmax(worst, fabs(numeric - analytic[i]));
    }
    return worst / mag;
}

#endif
