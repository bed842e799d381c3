/* source.h — where samples come from: one interface over in-memory uint8 datasets,
 * float tensors and lazily decoded image folders, and the subsets built on them.
 *
 * A source has n samples, num_classes classes with names, and gives sample i as
 *   - an image (GRAFT_SAMPLE_IMAGE): uint8 h × w × c, HWC like a PIL image, which the
 *     transforms then turn into a float tensor (IDX, CIFAR, uint8 safetensors, folders);
 *   - a tensor (GRAFT_SAMPLE_TENSOR): float32 c × h × w used as it is, without
 *     transforms (float32 safetensors);
 * plus its label in [0, num_classes).
 *
 *     graft_source *src;
 *     graft_dataset *d;
 *     graft_cifar10_load("data", true, &d);
 *     graft_source_from_dataset(d, "cifar10 train", &src);      // src owns d now
 *     graft_source_work w = {0};
 *     graft_sample x;
 *     graft_source_get(src, 0, &w, &x);                          // x.image: 32 × 32 × 3
 *     graft_source_work_release(&w);
 *     graft_source_free(src);
 *
 * Threads: sources are read-only after they are made, so several threads may call
 * graft_source_get on one source at once, each with its own graft_source_work. */
#ifndef GRAFT_DATA_SOURCE_H
#define GRAFT_DATA_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "data/dataset.h"
#include "data/image.h"
#include "graft/graft.h"

/* More classes than this is a corrupt label, not a dataset. */
#define GRAFT_SOURCE_MAX_CLASSES (1 << 20)

typedef enum graft_sample_kind { GRAFT_SAMPLE_IMAGE, GRAFT_SAMPLE_TENSOR } graft_sample_kind;

typedef struct graft_source graft_source;

/* Per-thread scratch for reading samples: zero-initialise, reuse, release. */
typedef struct graft_source_work {
    graft_image image;  /* decoded pixels of a folder sample */
    uint8_t *file;      /* the encoded file */
    size_t file_cap;
} graft_source_work;

void graft_source_work_release(graft_source_work *w);

typedef struct graft_sample {
    graft_image image;    /* IMAGE: h × w × c, a view into the source or into the work */
    const float *tensor;  /* TENSOR: c × h × w, a view into the source */
    int c, h, w;          /* the sample's shape (both kinds) */
    int64_t label;
} graft_sample;

/* ---- reading ------------------------------------------------------------------ */

int64_t graft_source_len(const graft_source *s);
int64_t graft_source_num_classes(const graft_source *s);
/* Class k's name (torchvision's dataset.classes[k]); valid while s lives. */
const char *graft_source_class_name(const graft_source *s, int64_t k);
graft_sample_kind graft_source_kind(const graft_source *s);
/* What the source is, for messages: "cifar10 train (/data/cifar-10-batches-py)". */
const char *graft_source_name(const graft_source *s);
int64_t graft_source_label(const graft_source *s, int64_t i);
/* Sample i's shape before the transforms without reading it (a folder knows it from the
 * file header): c × h × w for tensors, and for images h × w × c as they will be decoded
 * (c = 3 for folders). */
void graft_source_shape(const graft_source *s, int64_t i, int *c, int *h, int *w);
/* The file behind sample i, or NULL when the sample lives in memory. */
const char *graft_source_path(const graft_source *s, int64_t i);
/* Files left out when the source was opened because they could not be read (folders in
 * non-strict mode; 0 elsewhere). */
int64_t graft_source_skipped(const graft_source *s);
/* Sample i (0 <= i < len).  *out's views are valid until w is used again or s freed.
 * In-memory sources never fail; a folder fails with the decoder's error naming the file
 * (GRAFT_ERR_FORMAT, GRAFT_ERR_UNSUPPORTED, GRAFT_ERR_IO) — the loader decides whether
 * that is fatal (strict) or the sample is skipped. */
graft_status graft_source_get(const graft_source *s, int64_t i, graft_source_work *w,
                              graft_sample *out);
/* Frees s and what it owns (subsets free their base); NULL is a no-op. */
void graft_source_free(graft_source *s);

/* Per-class sample counts: counts[k] for k < num_classes (caller's array). */
void graft_source_class_counts(const graft_source *s, int64_t *counts);

/* ---- making sources ---------------------------------------------------------------- */

/* An in-memory uint8 dataset; the source takes ownership of d, also on failure.  name is
 * copied. */
graft_status graft_source_from_dataset(graft_dataset *d, const char *name, graft_source **out);

/* Tensors as safetensors files hold them (graft_safetensors_load), a training set
 * written by Python or a --dump of graft data:
 *   images  float32 [N, C, H, W]: used as they are (GRAFT_SAMPLE_TENSOR);
 *           int64 [N, H, W, C] with values 0..255 and C = 1 or 3 (a U8 tensor, which the
 *           safetensors reader widens to int64): uint8 images (GRAFT_SAMPLE_IMAGE);
 *   labels  int64 [N], in [0, num_classes).
 * classes: num_classes names, or NULL for "0", "1", ...; num_classes 0 means max
 * label + 1.  The tensors are copied (uint8 images are narrowed); the caller keeps
 * them.  Errors name `name`. */
graft_status graft_source_from_tensors(const graft_tensor *images, const graft_tensor *labels,
                                       int64_t num_classes, const char *const *classes,
                                       const char *name, graft_source **out);

/* ---- image folders (folder.c) ----------------------------------------------------
 *
 * torchvision's ImageFolder: ROOT/CLASS/.../FILE, class index by the sorted class-folder
 * names (byte order, as Python's sorted() orders str), files in sorted(os.walk(...))
 * order with their names sorted, subfolders of a class folder included.  Only
 * .png .jpg .jpeg .bmp files are samples (the extension compared case-insensitively, as
 * torchvision lowercases it); the content decides the decoder.  Images decode to RGB
 * (gray and RGBA become RGB, like PIL's convert("RGB")).
 *
 * Opening reads every file's header (format and size), so unreadable files are found
 * before training: in non-strict mode each is reported once through the log callback
 * (warning, "PATH: reason; skipped") and left out, and graft_source_skipped counts
 * them; in strict mode the first one is the error.  Files with another of
 * torchvision's image extensions (.ppm .pgm .tif .tiff .webp) are unreadable in the
 * same way.  A file that passes the header check but fails to decode later (a JPEG cut
 * midway) is handled by the loader.  Pixels are decoded on demand: only the paths, labels
 * and sizes stay in memory.  A folder with no class folders, or a class folder without
 * any image file, is an error (torchvision's "Found no valid file for the classes"). */
typedef struct graft_folder_options {
    bool strict;               /* an unreadable file is an error, not a skip */
    const char *const *classes; /* NULL, or the class names the folder must have, in order
                                   (a test split checked against its train split) */
    int64_t num_classes;
} graft_folder_options;

graft_status graft_source_folder(const char *root, const graft_folder_options *o,
                                 graft_source **out);
/* The header check used when opening: format and dimensions from the file's first bytes
 * (PNG IHDR, BMP info header, JPEG SOF marker).  Exposed for tests. */
graft_status graft_image_probe(const char *path, int *h, int *w);

/* ---- subsets (subset.c) -------------------------------------------------------------
 * Both take ownership of base (also on failure) and free it with themselves. */

/* Keeps the samples of classes[0..k-1] (distinct labels of base), relabelled 0..k-1 in
 * the order given (5,6,7 -> 0,1,2), with their names; sample order is kept.  The
 * result may be empty (a test split without those classes). */
graft_status graft_source_select_classes(graft_source *base, const int64_t *classes, int64_t k,
                                         graft_source **out);
/* Keeps k samples of every class, drawn without replacement by a generator seeded with
 * (seed, class); kept samples stay in their original order.  A class with fewer than k
 * samples is an error. */
graft_status graft_source_per_class(graft_source *base, int64_t k, uint64_t seed,
                                    graft_source **out);

/* ---- implementing a source ------------------------------------------------------ */

typedef struct graft_source_ops {
    graft_status (*get)(const graft_source *s, int64_t i, graft_source_work *w,
                        graft_sample *out);
    int64_t (*label)(const graft_source *s, int64_t i);
    void (*shape)(const graft_source *s, int64_t i, int *c, int *h, int *w);
    const char *(*path)(const graft_source *s, int64_t i); /* may be NULL */
    int64_t (*skipped)(const graft_source *s);             /* may be NULL */
    void (*free_impl)(void *impl);
} graft_source_ops;

struct graft_source {
    const graft_source_ops *ops;
    void *impl;                /* owned, freed by ops->free_impl */
    graft_sample_kind kind;
    int64_t n;
    int64_t num_classes;
    char **classes;            /* [num_classes], owned */
    char *name;                /* owned */
};

/* A source around impl, with num_classes names copied from classes (NULL: "0", "1",
 * ...).  On failure impl is freed with ops->free_impl. */
graft_status graft_source_new(const graft_source_ops *ops, void *impl, graft_sample_kind kind,
                              int64_t n, int64_t num_classes, const char *const *classes,
                              const char *name, graft_source **out);

#endif
