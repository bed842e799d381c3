/* cpu.h — whether this build carries the AVX-512 (and AVX2) kernels and this CPU can run them.
 *
 * The kernels (ops/conv_avx512.c, ops/linear_avx512.c) are compiled with function-level
 * target attributes, so the rest of graft keeps the baseline ISA; they exist on x86-64
 * with GCC or clang unless -DGRAFT_NO_AVX512, and run only where the CPU reports
 * AVX-512F. */
#ifndef GRAFT_CORE_CPU_H
#define GRAFT_CORE_CPU_H

#include <stdbool.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(GRAFT_NO_AVX512)
#define GRAFT_HAVE_AVX512_BUILD 1
#else
#define GRAFT_HAVE_AVX512_BUILD 0
#endif

/* The AVX2 loops (ops/conv_wgemm.c's transforms) likewise, unless -DGRAFT_NO_AVX2. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(GRAFT_NO_AVX2)
#define GRAFT_HAVE_AVX2_BUILD 1
#else
#define GRAFT_HAVE_AVX2_BUILD 0
#endif

/* Whether the build has the AVX-512 kernels and this CPU runs AVX-512F code. */
bool graft_cpu_avx512f(void);
/* Whether the build has the AVX2 loops and this CPU runs AVX2 code. */
bool graft_cpu_avx2(void);

#endif
