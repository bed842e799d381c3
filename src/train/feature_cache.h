/* feature_cache.h — a frozen trunk's outputs, computed once.
 *
 * When every step of the model below the first trainable one is frozen (and holds no
 * active dropout), and the training transform is deterministic or random only by a
 * horizontal flip, the trunk maps each image to the same features every epoch.  The
 * cache runs the trunk once over the training and test sets — both orientations when
 * there is a flip — and epochs then train the head on the stored features, in the
 * loader's own order and with the loader's own flip decisions, so the run is the same
 * as without the cache up to float rounding.
 *
 * A set holds one row per sample position (the loader's replacement of unreadable
 * samples included) with its label.  Sets live in memory, or in a file in the run
 * folder (mapped, deleted when the cache is freed) above a size limit. */
#ifndef GRAFT_TRAIN_FEATURE_CACHE_H
#define GRAFT_TRAIN_FEATURE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tensor.h"
#include "data/loader.h"
#include "nn/module.h"
#include "graft/graft.h"

/* Above this many bytes in all, the rows go to a file: GRAFT_FEATURE_CACHE_MEMORY
 * (bytes) overrides it. */
#define GRAFT_FEATURE_CACHE_MEMORY_BYTES ((size_t)1 << 30)

typedef struct graft_feature_set {
    int64_t rows;
    float *data;      /* [rows, feat] */
    int64_t *labels;  /* [rows] */
} graft_feature_set;

typedef struct graft_feature_cache {
    graft_module *const *steps;     /* the training forward's steps (set by the caller) */
    int nsteps;
    int trunk_end;                  /* steps [0, trunk_end) are cached */
    int ndim;                       /* of one row, e.g. 3 for [C, H, W] */
    int64_t dims[GRAFT_MAX_DIMS];
    int64_t feat;                   /* floats per row */
    graft_feature_set train, train_flipped, test;
    bool flip;                      /* train_flipped is used */
    /* storage */
    void *block;
    size_t block_bytes;
    bool mapped;
    char *file;
} graft_feature_cache;

/* Progress while building: done and total samples of the set named `what`. */
typedef void (*graft_cache_progress_fn)(void *user, const char *what, int64_t done, int64_t total);

/* Fills one set: the rows of every sample of loader's source (unshuffled), through
 * steps [0, trunk_end) of m.  The first call fixes the row shape.  Storage is reserved
 * by graft_feature_cache_reserve first. */
graft_status graft_feature_cache_fill(graft_feature_cache *c, graft_feature_set *set, graft_model *m,
                                      graft_loader *loader, const char *what, graft_cache_progress_fn progress,
                                      void *user);
/* Reserves storage for the three sets once the row size is known (feat floats):
 * train_rows (twice with flip) + test_rows rows, in memory or in dir/feature-cache.bin. */
graft_status graft_feature_cache_reserve(graft_feature_cache *c, int64_t train_rows, int64_t test_rows,
                                         const char *dir);
void graft_feature_cache_free(graft_feature_cache *c);
/* Frees the outputs the trunk's steps hold from the last batch they ran: once the sets
 * are filled the trunk does not run again (a later forward through it allocates anew). */
void graft_feature_cache_release_trunk(graft_feature_cache *c);

/* The per-sample shape of steps [0, trunk_end)'s output for one input of shape chw,
 * found by running the trunk on one zero image. */
graft_status graft_feature_cache_probe(graft_feature_cache *c, graft_model *m, const int chw[3]);

#endif
