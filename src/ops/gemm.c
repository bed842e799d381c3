/* gemm.c — row-major SGEMM over graft's pool, each slab a single-threaded BLAS call. */
#include "ops/gemm.h"

#include <cblas.h>

#include "core/threads.h"
#include "graft/graft.h"

/* Below this many multiply-adds a call is not worth splitting (a thread hand-off costs
 * a few microseconds; 2^20 multiply-adds take about ten). */
#define SPLIT_MIN_MACS ((int64_t)1 << 20)
/* Slab edges fall on multiples of this many rows or columns, so every slab keeps
 * whole SIMD vectors and BLAS micro-tiles. */
#define SLAB_ALIGN 16

typedef struct gemm_job {
    bool trans_a, trans_b, by_rows;
    int64_t m, n, k, lda, ldb, ldc, slabs;
    float alpha, beta;
    const float *a, *b;
    float *c;
} gemm_job;

static void gemm_slabs(void *arg, int64_t begin, int64_t end) {
    const gemm_job *j = arg;
    int64_t extent = j->by_rows ? j->m : j->n;
    int64_t units = (extent + SLAB_ALIGN - 1) / SLAB_ALIGN;
    int64_t lo = units * begin / j->slabs * SLAB_ALIGN, hi = units * end / j->slabs * SLAB_ALIGN;
    if (hi > extent) hi = extent;
    if (lo >= hi) return;
    const float *a = j->a, *b = j->b;
    float *c = j->c;
    int64_t m = j->m, n = j->n;
    if (j->by_rows) { /* rows [lo, hi) of C and of op(A) */
        a += j->trans_a ? lo : lo * j->lda;
        c += lo * j->ldc;
        m = hi - lo;
    } else {          /* columns [lo, hi) of C and of op(B) */
        b += j->trans_b ? lo * j->ldb : lo;
        c += lo;
        n = hi - lo;
    }
    cblas_sgemm(CblasRowMajor, j->trans_a ? CblasTrans : CblasNoTrans, j->trans_b ? CblasTrans : CblasNoTrans,
                (int)m, (int)n, (int)j->k, j->alpha, a, (int)j->lda, b, (int)j->ldb, j->beta, c, (int)j->ldc);
}

void graft_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                 int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    if (m <= 0 || n <= 0) return;
    gemm_job j = {.trans_a = trans_a, .trans_b = trans_b, .m = m, .n = n, .k = k, .lda = lda, .ldb = ldb,
                  .ldc = ldc, .alpha = alpha, .beta = beta, .a = a, .b = b, .c = c};
    /* Cut the longer side of C, so each slab stays a well-shaped GEMM. */
    j.by_rows = m > n;
    int64_t extent = j.by_rows ? m : n;
    int64_t slabs = graft_num_threads();
    int64_t max_slabs = (extent + SLAB_ALIGN - 1) / SLAB_ALIGN;
    if (slabs > max_slabs) slabs = max_slabs;
    if (m * n * (k > 0 ? k : 1) < SPLIT_MIN_MACS) slabs = 1;
    j.slabs = slabs;
    graft_parallel_for(slabs, 1, gemm_slabs, &j);
}
