/* cpu.c — the run-time check behind cpu.h. */
#include "core/cpu.h"

bool graft_cpu_avx512f(void) {
#if GRAFT_HAVE_AVX512_BUILD
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return false;
#endif
}

bool graft_cpu_avx2(void) {
#if GRAFT_HAVE_AVX2_BUILD
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}
