/* bench_util.h — what the kernel benchmarks share: medians of timings and random inputs. */
#ifndef GRAFT_BENCH_UTIL_H
#define GRAFT_BENCH_UTIL_H

#include <stdio.h>
#include <stdlib.h>

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of t [0, n) (t is sorted in place). */
static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return t[n / 2];
}

/* n floats uniform in [-scale, scale], from seed; exits on no memory. */
static float *random_floats(size_t n, unsigned seed, float scale) {
    float *f = malloc(n * sizeof *f);
    if (!f) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    srand(seed);
    for (size_t i = 0; i < n; i++) f[i] = scale * ((float)rand() / (float)RAND_MAX * 2.0f - 1.0f);
    return f;
}

#endif
