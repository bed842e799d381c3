/* threads.c — a fixed pool of pthreads that runs one parallel_for at a time. */
#define _GNU_SOURCE
#include "core/threads.h"

#include <cblas.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/error.h"

#define MAX_THREADS 256

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER; /* held while a parallel_for runs */
static _Thread_local int inside_range;                    /* this thread is running a range */
static pthread_cond_t work_ready = PTHREAD_COND_INITIALIZER;
static pthread_cond_t work_done = PTHREAD_COND_INITIALIZER;
static pthread_t workers[MAX_THREADS];
static int nworkers;        /* started worker threads (threads - 1) */
static int nthreads;        /* configured thread count, 0 = not yet configured */
static uint64_t generation; /* bumped per job */
static uint64_t spawn_generation; /* generation when the workers were started */
static int pending;         /* ranges still running */
static int stopping;

static struct job {
    graft_range_fn fn;
    void *arg;
    int64_t n;
    int parts;
} job;

static void run_part(int part) {
    int64_t begin = job.n * part / job.parts;
    int64_t end = job.n * (part + 1) / job.parts;
    inside_range = 1;
    if (begin < end) job.fn(job.arg, begin, end);
    inside_range = 0;
}

static void *worker_main(void *p) {
    int index = (int)(intptr_t)p; /* worker i runs part i + 1 */
    /* Jobs posted before this worker was started are not its own: a pool restarted by
     * graft_set_num_threads must not rerun the last job of the previous pool. */
    uint64_t seen = spawn_generation;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!stopping && generation == seen) pthread_cond_wait(&work_ready, &lock);
        if (stopping) break;
        seen = generation;
        int part = index + 1;
        if (part < job.parts) {
            pthread_mutex_unlock(&lock);
            run_part(part);
            pthread_mutex_lock(&lock);
            if (--pending == 0) pthread_cond_signal(&work_done);
        }
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

static int default_threads(void) {
    const char *env = getenv("GRAFT_NUM_THREADS");
    if (env && *env) {
        int n = atoi(env);
        if (n > 0) return n;
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores > 0 ? (int)cores : 1;
}

static void stop_workers(void) {
    pthread_mutex_lock(&lock);
    stopping = 1;
    pthread_cond_broadcast(&work_ready);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < nworkers; i++) pthread_join(workers[i], NULL);
    nworkers = 0;
    stopping = 0;
}

graft_status graft_set_num_threads(int n) {
    if (n <= 0) n = default_threads();
    if (n > MAX_THREADS) n = MAX_THREADS;
    stop_workers();
    nthreads = n;
    /* BLAS runs inside the pool's ranges (ops/gemm.c), one thread each: its own
     * threads would compete with the pool's for the same cores. */
    openblas_set_num_threads(1);
    spawn_generation = generation;
    for (int i = 0; i < n - 1; i++) {
        if (pthread_create(&workers[i], NULL, worker_main, (void *)(intptr_t)i) != 0) {
            nthreads = i + 1;
            return graft_error(GRAFT_ERR_NOMEM, "could not start thread %d of %d", i + 2, n);
        }
        nworkers = i + 1;
    }
    return GRAFT_OK;
}

int graft_num_threads(void) {
    if (!nthreads) graft_set_num_threads(0);
    return nthreads;
}

void graft_threads_shutdown(void) {
    stop_workers();
    nthreads = 0;
}

void graft_parallel_for(int64_t n, int64_t min_chunk, graft_range_fn fn, void *arg) {
    if (n <= 0) return;
    int threads = graft_num_threads();
    if (min_chunk < 1) min_chunk = 1;
    int64_t parts = n / min_chunk;
    if (parts > threads) parts = threads;
    if (parts <= 1 || nworkers == 0 || inside_range || pthread_mutex_trylock(&busy) != 0) {
        fn(arg, 0, n);
        return;
    }
    pthread_mutex_lock(&lock);
    job.fn = fn;
    job.arg = arg;
    job.n = n;
    job.parts = (int)parts;
    pending = (int)parts - 1;
    generation++;
    pthread_cond_broadcast(&work_ready);
    pthread_mutex_unlock(&lock);
    run_part(0);
    pthread_mutex_lock(&lock);
    while (pending > 0) pthread_cond_wait(&work_done, &lock);
    pthread_mutex_unlock(&lock);
    pthread_mutex_unlock(&busy);
}
