/* loader.h — batches for training and evaluation: torch.utils.data.DataLoader for a
 * source and a transform pipeline.
 *
 * Every epoch visits the samples in an order, cuts it into batches of batch_size
 * (the last one smaller, or dropped with drop_last), and gives each batch as
 *   images  float32 [B, C, H, W]   every sample through the transforms (tensor sources:
 *                                  as they are)
 *   labels  int64 [B]
 *
 *     graft_loader_options o = graft_loader_defaults();
 *     o.batch_size = 64;
 *     o.shuffle = true;
 *     graft_loader *l;
 *     graft_loader_create(train, tf, &o, &l);
 *     for (int64_t epoch = 0; epoch < 10; epoch++) {
 *         graft_loader_start_epoch(l, epoch);
 *         const graft_tensor *x, *y;
 *         int done;
 *         while (!(s = graft_loader_next(l, &x, &y, &done)) && !done) {
 *             // forward/backward on x, y (owned by the loader, valid until the next call)
 *         }
 *     }
 *     graft_loader_free(l);
 *
 * Determinism: the order of epoch e is a permutation drawn from (seed, e) (the identity
 * without shuffle), and the random transforms of a sample draw from a generator seeded
 * with (seed, e, sample index).  The batches are therefore the same whatever the number
 * of worker threads.
 *
 * Threads: with workers > 0 that many threads decode and transform the next batches
 * into a ring of preallocated batch buffers while the caller computes; the ring holds
 * workers + prefetch batches, so memory is bounded and nothing is allocated per batch
 * once each thread has seen its largest image.  With workers = 0 next() does the work
 * on the caller's thread.  An error in a worker reaches the caller as next()'s status,
 * with its message.
 *
 * Unreadable samples (a folder file that passed the header check but fails to decode):
 * with strict, next() fails naming the file; otherwise the sample is reported once
 * through the log callback (warning; called from a worker thread when workers > 0) and
 * replaced by the next readable sample in the
 * source's order, and it is never tried again by this loader (graft_loader_skipped). */
#ifndef GRAFT_DATA_LOADER_H
#define GRAFT_DATA_LOADER_H

#include <stdbool.h>
#include <stdint.h>

#include "data/source.h"
#include "data/transforms.h"
#include "graft/graft.h"

typedef struct graft_loader_options {
    int64_t batch_size;  /* >= 1; default 64 */
    bool shuffle;        /* default false */
    bool drop_last;      /* default false */
    uint64_t seed;       /* default 0 */
    int workers;         /* threads preparing batches; default 1, 0 = on the caller's thread */
    int prefetch;        /* batches prepared ahead beyond one per worker; default 2 */
    bool strict;         /* an unreadable sample is an error (default: skip it) */
} graft_loader_options;

graft_loader_options graft_loader_defaults(void);

typedef struct graft_loader graft_loader;

/* A loader over src with the transforms tf (NULL: ToTensor only; must be NULL for a tensor
 * source, whose samples are used as they are).  Both must outlive the loader.  Every
 * sample must come out of the transforms with the same shape; the sizes in the source
 * (file headers, for folders) are checked now and a sample that differs is
 * GRAFT_ERR_SHAPE naming it.  Free with graft_loader_free. */
graft_status graft_loader_create(const graft_source *src, const graft_transforms *tf,
                                 const graft_loader_options *o, graft_loader **out);
/* Stops the workers and frees everything; NULL is a no-op. */
void graft_loader_free(graft_loader *l);

/* The shape of one sample after the transforms: chw = {C, H, W}. */
void graft_loader_sample_shape(const graft_loader *l, int chw[3]);
/* Batches per epoch. */
int64_t graft_loader_num_batches(const graft_loader *l);
/* Samples per epoch (drop_last leaves some out). */
int64_t graft_loader_num_samples(const graft_loader *l);
/* Source samples found unreadable and skipped so far. */
int64_t graft_loader_skipped(const graft_loader *l);

/* Starts epoch e (any e >= 0; a new call abandons the epoch in progress). */
graft_status graft_loader_start_epoch(graft_loader *l, int64_t epoch);
/* The next batch of the epoch: *images [B, C, H, W] and *labels [B], owned by the loader
 * and valid until the next call to next(), start_epoch() or free().  *done is 1 (and the
 * tensors NULL) once the epoch has no more batches.  After an error the epoch is over:
 * start a new one. */
graft_status graft_loader_next(graft_loader *l, const graft_tensor **images,
                               const graft_tensor **labels, int *done);
/* Epoch e's order: the source indices start_epoch(e) visits, graft_source_len entries
 * (the first graft_loader_num_samples of them are used).  The feature cache replays
 * epochs with it. */
void graft_loader_epoch_order(const graft_loader *l, int64_t epoch, int64_t *order);
/* The generator the transforms of source sample `index` draw from in epoch e. */
void graft_loader_sample_rng(const graft_loader *l, int64_t epoch, int64_t index, graft_rng *r);
/* The dataset index of sample j of the last batch (for reports naming the files). */
int64_t graft_loader_batch_index(const graft_loader *l, int64_t j);

#endif
