/* gemm.h — the program's one way to call BLAS: a row-major SGEMM split over graft's
 * thread pool.
 *
 * BLAS is kept single-threaded (threads.c sets it so); graft_sgemm cuts C into column
 * or row slabs, one per pool thread, and each thread runs a single-threaded
 * cblas_sgemm on its slab.  So the program has one pool of --threads workers, BLAS
 * never starts threads of its own, and nothing spins or oversubscribes the cores
 * between a BLAS call and graft's own parallel loops.  Each element of C is the same
 * sum as one unsplit call would form (the split never cuts K), so results do not
 * depend on the thread count beyond BLAS's own kernel choice for the slab's size. */
#ifndef GRAFT_OPS_GEMM_H
#define GRAFT_OPS_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* C [m, n] = alpha * op(A) [m, k] . op(B) [k, n] + beta * C, all row-major:
 * op(A) = A [m, k] (lda >= k), or A^T with A [k, m] (lda >= m) when trans_a; likewise B.
 * Sizes must fit BLAS's int (the callers check). */
void graft_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                 int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

#endif
