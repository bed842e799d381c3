/* test_init.c — parameter initialisation: the normal draws, worked out on the pool in
 * blocks, are the floats and the generator state of one thread drawing pair by pair. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>

#include "core/rng.h"
#include "core/threads.h"
#include "nn/init.h"

/* torch.nn.init.normal_ as graft draws it: Box-Muller on pairs of uniforms, in order. */
static void normal_reference(float *x, int64_t n, double mean, double std, graft_rng *r) {
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = graft_rng_uniform(r), u2 = graft_rng_uniform(r);
        if (u1 < 1e-300) u1 = 1e-300;
        double rad = sqrt(-2.0 * log(u1));
        x[i] = (float)(mean + std * rad * cos(6.283185307179586476925286766559 * u2));
        if (i + 1 < n) x[i + 1] = (float)(mean + std * rad * sin(6.283185307179586476925286766559 * u2));
    }
}

static void normal_draws_match_one_thread_pair_by_pair(void **state) {
    (void)state;
    static const int64_t sizes[] = {1, 2, 7, 131072, 131075, 400001}; /* 65,536 pairs a block */
    for (int threads = 1; threads <= 3; threads += 2) {
        assert_int_equal(graft_set_num_threads(threads), GRAFT_OK);
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            int64_t n = sizes[i], shape[1] = {n};
            graft_tensor t;
            graft_tensor_init(&t, GRAFT_F32);
            assert_int_equal(graft_tensor_resize(&t, 1, shape), GRAFT_OK);
            float *want = malloc((size_t)n * sizeof *want);
            graft_rng a, b;
            graft_rng_seed(&a, 40 + i);
            graft_rng_seed(&b, 40 + i);
            graft_init_normal(&t, 0.5, 0.01, &a);
            normal_reference(want, n, 0.5, 0.01, &b);
            assert_memory_equal(t.data, want, (size_t)n * sizeof *want);
            assert_true(graft_rng_u64(&a) == graft_rng_u64(&b)); /* as many uniforms drawn */
            free(want);
            graft_tensor_release(&t);
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(normal_draws_match_one_thread_pair_by_pair),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    graft_threads_shutdown();
    return failed;
}
