/* loader.c — batches from a source through the transforms, prepared by worker threads
 * into a ring of preallocated buffers (behaviour in loader.h).
 *
 * Batch b of an epoch lives in slot b % nslots.  Workers claim batches in order, at most
 * nslots ahead of the last batch the caller has finished with, so a slot is never
 * refilled while the caller still reads it; the caller takes batch b once its slot says
 * it holds b.  One mutex guards the counters and slot states; the pixels are written
 * outside it. */
#include "data/loader.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"

#define DEFAULT_BATCH_SIZE 64
#define DEFAULT_PREFETCH 2
#define MAX_WORKERS 64
#define MAX_PREFETCH 64
#define MESSAGE_BYTES 1024

enum { SLOT_FREE, SLOT_FILLING, SLOT_READY };

typedef struct slot {
    float *images;     /* [batch_size, C, H, W] */
    int64_t *labels;   /* [batch_size] */
    int64_t *indices;  /* [batch_size] the source sample behind each row */
    graft_tensor x, y; /* views of images and labels with the batch's actual size */
    int64_t batch;     /* the batch held, -1 for none */
    int64_t count;     /* rows filled */
    int state;
    graft_status status;
    char message[MESSAGE_BYTES];
} slot;

typedef struct worker {
    graft_loader *l;
    pthread_t thread;
    bool started;
    graft_source_work sw;
    graft_transform_work tw;
} worker;

struct graft_loader {
    const graft_source *src;
    const graft_transforms *tf; /* the caller's, or own_tf */
    graft_transforms *own_tf;   /* ToTensor only, when the caller gave none */
    graft_loader_options o;
    int chw[3];
    size_t sample_floats;
    int64_t n, used, nbatches;

    int64_t epoch;
    int64_t *perm; /* [n] the epoch's order */

    slot *slots;
    int nslots;
    worker *workers;
    int nworkers;
    worker caller; /* the work buffers of the caller's thread (workers = 0) */

    pthread_mutex_t mu;
    pthread_cond_t work_cv;  /* workers wait here for a batch to claim */
    pthread_cond_t ready_cv; /* the caller waits here for a slot, start_epoch for idleness */
    bool sync_ready;         /* mu and the conditions were initialised */
    int64_t next_claim;      /* next batch a worker may take */
    int64_t released;        /* batches the caller is finished with */
    int64_t returned;        /* batches handed to the caller */
    int inflight;            /* batches being filled */
    bool active, stop, failed;
    const slot *current;     /* the batch the caller holds */

    atomic_uchar *bad;       /* [n] samples found unreadable */
    atomic_llong skipped;
};

graft_loader_options graft_loader_defaults(void) {
    graft_loader_options o = {0};
    o.batch_size = DEFAULT_BATCH_SIZE;
    o.workers = 1;
    o.prefetch = DEFAULT_PREFETCH;
    return o;
}

/* ---- seeds ------------------------------------------------------------------------ */

static uint64_t mix64(uint64_t z) { /* splitmix64's finaliser */
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The generator for (seed, epoch, index); index UINT64_MAX is the epoch's order. */
static void seed_stream(graft_rng *r, uint64_t seed, uint64_t epoch, uint64_t index) {
    graft_rng_seed(r, mix64(mix64(mix64(seed) ^ epoch) ^ index));
}

/* ---- filling a batch ------------------------------------------------------------- */

static bool skippable(graft_status s) {
    return s == GRAFT_ERR_FORMAT || s == GRAFT_ERR_UNSUPPORTED || s == GRAFT_ERR_IO;
}

/* Sample idx, or in non-strict mode the next readable one after it. */
static graft_status read_sample(graft_loader *l, worker *w, int64_t idx, graft_sample *out,
                                int64_t *used) {
    for (int64_t t = 0; t < l->n; t++) {
        int64_t j = (idx + t) % l->n;
        if (atomic_load(&l->bad[j])) continue;
        graft_status s = graft_source_get(l->src, j, &w->sw, out);
        if (!s) {
            *used = j;
            return GRAFT_OK;
        }
        if (l->o.strict || !skippable(s)) return s;
        if (!atomic_exchange(&l->bad[j], 1)) {
            atomic_fetch_add(&l->skipped, 1);
            graft_log(1, "%s; skipped", graft_errmsg());
        }
    }
    return graft_error(GRAFT_ERR_FORMAT, "%s: no sample could be read", graft_source_name(l->src));
}

/* Fills sl with batch b of the current epoch; the status and message land in sl. */
static void fill(graft_loader *l, worker *w, slot *sl, int64_t b) {
    int64_t first = b * l->o.batch_size;
    int64_t count = l->used - first < l->o.batch_size ? l->used - first : l->o.batch_size;
    graft_status s = GRAFT_OK;
    for (int64_t j = 0; j < count && !s; j++) {
        int64_t idx = l->perm[first + j], used = idx;
        graft_sample x;
        s = read_sample(l, w, idx, &x, &used);
        if (s) break;
        float *dst = sl->images + (size_t)j * l->sample_floats;
        if (graft_source_kind(l->src) == GRAFT_SAMPLE_TENSOR) {
            if ((size_t)x.c * x.h * x.w != l->sample_floats)
                s = graft_error(GRAFT_ERR_SHAPE, "%s: sample %lld is %dx%dx%d, the batch takes "
                                                 "%dx%dx%d", graft_source_name(l->src),
                                (long long)used, x.c, x.h, x.w, l->chw[0], l->chw[1], l->chw[2]);
            else
                memcpy(dst, x.tensor, l->sample_floats * sizeof *dst);
        } else {
            graft_rng rng;
            seed_stream(&rng, l->o.seed, (uint64_t)l->epoch, (uint64_t)idx);
            s = graft_transforms_apply(l->tf, &x.image, &rng, &w->tw, dst, l->sample_floats);
            if (s) {
                const char *path = graft_source_path(l->src, used);
                if (path) graft_error_prefix(s, "%s", path);
            }
        }
        sl->labels[j] = x.label;
        sl->indices[j] = used;
    }
    sl->count = count;
    sl->status = s;
    if (s) snprintf(sl->message, sizeof sl->message, "%s", graft_errmsg());
    /* the views the caller receives */
    sl->x.shape[0] = count;
    sl->y.shape[0] = count;
}

static bool can_claim(const graft_loader *l) {
    return l->active && l->next_claim < l->nbatches && l->next_claim < l->released + l->nslots;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    graft_loader *l = w->l;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && !can_claim(l)) pthread_cond_wait(&l->work_cv, &l->mu);
        if (l->stop) break;
        int64_t b = l->next_claim++;
        slot *sl = &l->slots[b % l->nslots];
        sl->state = SLOT_FILLING;
        l->inflight++;
        pthread_mutex_unlock(&l->mu);
        fill(l, w, sl, b);
        pthread_mutex_lock(&l->mu);
        sl->batch = b;
        sl->state = SLOT_READY;
        l->inflight--;
        pthread_cond_broadcast(&l->ready_cv);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* ---- creation ----------------------------------------------------------------------- */

/* The transforms' output for every sample; all must agree. */
static graft_status check_shapes(graft_loader *l) {
    const graft_source *src = l->src;
    bool tensors = graft_source_kind(src) == GRAFT_SAMPLE_TENSOR;
    int last[3] = {0, 0, 0};
    for (int64_t i = 0; i < l->n; i++) {
        int in[3], out[3]; /* c, h, w */
        graft_source_shape(src, i, &in[0], &in[1], &in[2]);
        if (i > 0 && !memcmp(in, last, sizeof in)) continue; /* in-memory sets: one shape */
        memcpy(last, in, sizeof in);
        if (tensors) memcpy(out, in, sizeof in);
        else {
            graft_status s = graft_transforms_output_shape(l->tf, in[1], in[2], in[0], out);
            const char *path = graft_source_path(src, i);
            if (s) return path ? graft_error_prefix(s, "%s", path) : s;
        }
        if (i == 0) {
            memcpy(l->chw, out, sizeof out);
        } else if (memcmp(out, l->chw, sizeof out)) {
            const char *path = graft_source_path(src, i);
            return graft_error(GRAFT_ERR_SHAPE,
                               "%s: a %dx%d image becomes %dx%dx%d after the transforms, but the "
                               "first sample becomes %dx%dx%d; give --transform a resize and a "
                               "centercrop so that every sample has one size",
                               path ? path : graft_source_name(src), in[1], in[2], out[0], out[1],
                               out[2], l->chw[0], l->chw[1], l->chw[2]);
        }
    }
    return GRAFT_OK;
}

static graft_status alloc_slots(graft_loader *l) {
    l->slots = calloc((size_t)l->nslots, sizeof *l->slots);
    if (!l->slots) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    size_t rows = (size_t)l->o.batch_size;
    if (l->sample_floats > SIZE_MAX / sizeof(float) / rows)
        return graft_error(GRAFT_ERR_NOMEM, "a batch of %zu samples of %zu floats is too large", rows,
                           l->sample_floats);
    for (int i = 0; i < l->nslots; i++) {
        slot *sl = &l->slots[i];
        sl->batch = -1;
        sl->images = malloc(rows * l->sample_floats * sizeof *sl->images);
        sl->labels = malloc(rows * sizeof *sl->labels);
        sl->indices = malloc(rows * sizeof *sl->indices);
        if (!sl->images || !sl->labels || !sl->indices)
            return graft_error(GRAFT_ERR_NOMEM, "out of memory for %d batches of %zu samples",
                               l->nslots, rows);
        graft_tensor_init(&sl->x, GRAFT_F32);
        sl->x.ndim = 4;
        sl->x.shape[1] = l->chw[0];
        sl->x.shape[2] = l->chw[1];
        sl->x.shape[3] = l->chw[2];
        sl->x.data = sl->images;
        sl->x.owns = false;
        graft_tensor_init(&sl->y, GRAFT_I64);
        sl->y.ndim = 1;
        sl->y.data = sl->labels;
        sl->y.owns = false;
    }
    return GRAFT_OK;
}

static graft_status check_options(const graft_source *src, const graft_transforms *tf,
                                  const graft_loader_options *o) {
    if (o->batch_size < 1) return graft_error(GRAFT_ERR_INVALID, "batch size must be at least 1");
    if (o->workers < 0 || o->workers > MAX_WORKERS)
        return graft_error(GRAFT_ERR_INVALID, "workers must be in 0..%d", MAX_WORKERS);
    if (o->prefetch < 0 || o->prefetch > MAX_PREFETCH)
        return graft_error(GRAFT_ERR_INVALID, "prefetch must be in 0..%d", MAX_PREFETCH);
    if (graft_source_len(src) < 1) return graft_error(GRAFT_ERR_INVALID, "%s: no samples", graft_source_name(src));
    if (tf && graft_source_kind(src) == GRAFT_SAMPLE_TENSOR)
        return graft_error(GRAFT_ERR_INVALID, "%s: float32 tensors are used as they are; "
                                              "transforms apply to uint8 images only",
                           graft_source_name(src));
    return GRAFT_OK;
}

graft_status graft_loader_create(const graft_source *src, const graft_transforms *tf,
                                 const graft_loader_options *o, graft_loader **out) {
    *out = NULL;
    graft_loader_options defaults = graft_loader_defaults();
    if (!o) o = &defaults;
    graft_status s = check_options(src, tf, o);
    if (s) return s;
    graft_loader *l = calloc(1, sizeof *l);
    if (!l) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    l->src = src;
    l->o = *o;
    l->n = graft_source_len(src);
    l->used = o->drop_last ? l->n / o->batch_size * o->batch_size : l->n;
    l->nbatches = (l->used + o->batch_size - 1) / o->batch_size;
    l->tf = tf;
    atomic_init(&l->skipped, 0);
    if (!tf && graft_source_kind(src) == GRAFT_SAMPLE_IMAGE) {
        s = graft_transforms_parse("", &l->own_tf);
        l->tf = l->own_tf;
    }
    if (!s) s = check_shapes(l);
    if (!s) {
        l->sample_floats = (size_t)l->chw[0] * (size_t)l->chw[1] * (size_t)l->chw[2];
        l->nworkers = o->workers;
        l->nslots = o->workers ? o->workers + o->prefetch + 1 : 1;
        l->perm = malloc((size_t)l->n * sizeof *l->perm);
        l->bad = malloc((size_t)l->n * sizeof *l->bad);
        if (!l->perm || !l->bad) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    if (!s) {
        for (int64_t i = 0; i < l->n; i++) atomic_init(&l->bad[i], 0);
        s = alloc_slots(l);
    }
    if (!s) {
        if (pthread_mutex_init(&l->mu, NULL)) s = graft_error(GRAFT_ERR_NOMEM, "cannot create a mutex");
        else if (pthread_cond_init(&l->work_cv, NULL)) {
            pthread_mutex_destroy(&l->mu);
            s = graft_error(GRAFT_ERR_NOMEM, "cannot create a condition variable");
        } else if (pthread_cond_init(&l->ready_cv, NULL)) {
            pthread_cond_destroy(&l->work_cv);
            pthread_mutex_destroy(&l->mu);
            s = graft_error(GRAFT_ERR_NOMEM, "cannot create a condition variable");
        } else {
            l->sync_ready = true;
        }
    }
    if (!s && l->nworkers) {
        l->workers = calloc((size_t)l->nworkers, sizeof *l->workers);
        if (!l->workers) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
        for (int i = 0; !s && i < l->nworkers; i++) {
            l->workers[i].l = l;
            if (pthread_create(&l->workers[i].thread, NULL, worker_main, &l->workers[i]))
                s = graft_error(GRAFT_ERR_NOMEM, "cannot start loader thread %d", i + 1);
            else
                l->workers[i].started = true;
        }
    }
    if (s) {
        graft_loader_free(l);
        return s;
    }
    l->caller.l = l;
    *out = l;
    return GRAFT_OK;
}

static void release_worker(worker *w) {
    graft_source_work_release(&w->sw);
    graft_transform_work_release(&w->tw);
}

void graft_loader_free(graft_loader *l) {
    if (!l) return;
    if (l->sync_ready) {
        pthread_mutex_lock(&l->mu);
        l->stop = true;
        pthread_cond_broadcast(&l->work_cv);
        pthread_mutex_unlock(&l->mu);
    }
    for (int i = 0; l->workers && i < l->nworkers; i++) {
        if (l->workers[i].started) pthread_join(l->workers[i].thread, NULL);
        release_worker(&l->workers[i]);
    }
    release_worker(&l->caller);
    if (l->sync_ready) {
        pthread_cond_destroy(&l->ready_cv);
        pthread_cond_destroy(&l->work_cv);
        pthread_mutex_destroy(&l->mu);
    }
    for (int i = 0; l->slots && i < l->nslots; i++) {
        free(l->slots[i].images);
        free(l->slots[i].labels);
        free(l->slots[i].indices);
    }
    free(l->slots);
    free(l->workers);
    free(l->perm);
    free(l->bad);
    graft_transforms_free(l->own_tf);
    free(l);
}

/* ---- epochs ------------------------------------------------------------------------- */

void graft_loader_sample_shape(const graft_loader *l, int chw[3]) { memcpy(chw, l->chw, sizeof l->chw); }
int64_t graft_loader_num_batches(const graft_loader *l) { return l->nbatches; }
int64_t graft_loader_num_samples(const graft_loader *l) { return l->used; }
int64_t graft_loader_skipped(const graft_loader *l) {
    return (int64_t)atomic_load(&((graft_loader *)l)->skipped);
}

void graft_loader_epoch_order(const graft_loader *l, int64_t epoch, int64_t *order) {
    for (int64_t i = 0; i < l->n; i++) order[i] = i;
    if (l->o.shuffle) { /* Fisher-Yates from (seed, epoch) */
        graft_rng r;
        seed_stream(&r, l->o.seed, (uint64_t)epoch, UINT64_MAX);
        for (int64_t i = l->n - 1; i > 0; i--) {
            int64_t j = (int64_t)(graft_rng_u64(&r) % (uint64_t)(i + 1));
            int64_t t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
    }
}

void graft_loader_sample_rng(const graft_loader *l, int64_t epoch, int64_t index, graft_rng *r) {
    seed_stream(r, l->o.seed, (uint64_t)epoch, (uint64_t)index);
}

graft_status graft_loader_start_epoch(graft_loader *l, int64_t epoch) {
    if (epoch < 0) return graft_error(GRAFT_ERR_INVALID, "epoch %lld is negative", (long long)epoch);
    pthread_mutex_lock(&l->mu);
    l->active = false;
    while (l->inflight > 0) pthread_cond_wait(&l->ready_cv, &l->mu);
    /* No worker touches the slots or the order now. */
    l->epoch = epoch;
    graft_loader_epoch_order(l, epoch, l->perm);
    for (int i = 0; i < l->nslots; i++) {
        l->slots[i].state = SLOT_FREE;
        l->slots[i].batch = -1;
    }
    l->next_claim = l->released = l->returned = 0;
    l->current = NULL;
    l->failed = false;
    l->active = true;
    pthread_cond_broadcast(&l->work_cv);
    pthread_mutex_unlock(&l->mu);
    return GRAFT_OK;
}

graft_status graft_loader_next(graft_loader *l, const graft_tensor **images,
                               const graft_tensor **labels, int *done) {
    *images = NULL;
    *labels = NULL;
    *done = 0;
    pthread_mutex_lock(&l->mu);
    l->current = NULL;
    if (!l->active) {
        pthread_mutex_unlock(&l->mu);
        return graft_error(GRAFT_ERR_INVALID, "no epoch started (graft_loader_start_epoch)");
    }
    if (l->failed) {
        pthread_mutex_unlock(&l->mu);
        return graft_error(GRAFT_ERR_INVALID, "the epoch ended with an error; start a new one");
    }
    l->released = l->returned; /* the caller is done with the batch it held */
    pthread_cond_broadcast(&l->work_cv);
    if (l->returned == l->nbatches) {
        *done = 1;
        pthread_mutex_unlock(&l->mu);
        return GRAFT_OK;
    }
    int64_t b = l->returned;
    slot *sl = &l->slots[b % l->nslots];
    if (l->nworkers == 0) {
        pthread_mutex_unlock(&l->mu);
        fill(l, &l->caller, sl, b);
        pthread_mutex_lock(&l->mu);
        sl->batch = b;
        sl->state = SLOT_READY;
    } else {
        while (sl->state != SLOT_READY || sl->batch != b) pthread_cond_wait(&l->ready_cv, &l->mu);
    }
    l->returned++;
    graft_status s = sl->status;
    if (s) l->failed = true;
    else l->current = sl;
    pthread_mutex_unlock(&l->mu);
    if (s) return graft_error(s, "%s", sl->message);
    *images = &sl->x;
    *labels = &sl->y;
    return GRAFT_OK;
}

int64_t graft_loader_batch_index(const graft_loader *l, int64_t j) {
    const slot *sl = l->current;
    return sl && j >= 0 && j < sl->count ? sl->indices[j] : -1;
}
