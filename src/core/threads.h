/* threads.h — the program's one thread pool.
 *
 * graft_parallel_for splits [0, n) into contiguous ranges, one per thread, and runs
 * them on the pool (the calling thread takes the first range).  BLAS is set to one
 * thread and called from inside the pool's ranges (ops/gemm.h), so the program never
 * has more compute threads than --threads / GRAFT_NUM_THREADS.
 *
 * One parallel_for runs at a time.  A call made from inside a range (nested), or from
 * another thread while one is running, runs its whole range on the calling thread
 * instead of waiting: correct, just not parallel. */
#ifndef GRAFT_CORE_THREADS_H
#define GRAFT_CORE_THREADS_H

#include <stdint.h>

typedef void (*graft_range_fn)(void *arg, int64_t begin, int64_t end);

/* Runs fn over [0, n) in at most graft_num_threads() ranges of at least min_chunk items. */
void graft_parallel_for(int64_t n, int64_t min_chunk, graft_range_fn fn, void *arg);

/* Tells the pool to stop its workers (at exit; tests call it to stay leak-clean). */
void graft_threads_shutdown(void);

#endif
