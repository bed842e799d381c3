/* demo.h — `graft demo`: why transfer learning exists, shown offline on real data.
 *
 * A source model graft trained itself (models/fashion-source.safetensors: a small VGG
 * trained from scratch on the Fashion-MNIST classes Trouser, Sandal, Sneaker, Bag,
 * Ankle boot) meets a new task — the upper-body garments T-shirt/top, Pullover, Dress,
 * Coat, Shirt, which look alike — with only K labelled training images per class.  The
 * task is learned three ways, each a graft_train run in its own folder:
 *
 *   scratch    the source architecture, freshly initialised, every layer trained
 *   transfer   the source weights with `freeze` frozen and a new 5-way head
 *   fine-tune  transfer's final weights, nothing frozen, a lower learning rate
 *
 * and each is evaluated on every test image of the target classes (or, with validate,
 * on held-out training images, which is how the recipe below was chosen: the test
 * split plays no part in choosing anything).
 *
 * The K-shot set is exactly what `graft train --classes 0,2,3,4,6 --per-class K --seed S`
 * trains on.  Written repeated R times to a tensors file (R = ceil(epoch_images / 5K)),
 * so that one "epoch" holds at least epoch_images random augmentations of it: few-shot
 * training needs many steps, and graft_train checkpoints once per epoch.  The training
 * split of that file has no test split, so graft_train's per-epoch evaluation does not
 * run; the demo evaluates each method once, at the end, on the last epoch's weights.
 *
 * Ownership: graft_demo_run fills a graft_demo_result the caller releases with
 * graft_demo_result_release.  Nothing is printed; stages and progress go to the
 * callbacks. */
#ifndef GRAFT_DEMO_DEMO_H
#define GRAFT_DEMO_DEMO_H

#include <stdbool.h>
#include <stdint.h>

#include "graft/graft.h"

#define GRAFT_DEMO_METHODS 3  /* scratch, transfer, fine-tune */
#define GRAFT_DEMO_MAX_RUNS 8 /* values of K in one sweep */
#define GRAFT_DEMO_GRID_PER_CLASS 8 /* evaluation images per class shown in the report */

typedef struct graft_demo_options {
    const char *data;           /* --data SPEC, default "fashion-mnist" (Debian's package) */
    const char *target_classes; /* default "0,2,3,4,6" */
    const char *source_model;   /* a graft checkpoint (required) */
    const char *out_dir;        /* run folder (required) */
    int64_t k;                  /* labelled training images per class, default 5 */
    uint64_t seed;              /* which K images, the initialisation, the batch order */
    int sweep;                  /* run every K of sweep_k instead of k */
    const char *sweep_k;        /* comma-separated K values, default "1,5,20,100" */
    int validate;               /* evaluate on held-out training images, not the test split */
    int threads;                /* 0: GRAFT_NUM_THREADS or the cores */
    /* the recipe (graft_demo_defaults; chosen on the validation split, see demo.c) */
    int64_t epochs;             /* of scratch */
    int64_t transfer_epochs;    /* of transfer (cheap: the frozen trunk is computed once) */
    int64_t finetune_epochs;    /* of fine-tune, after transfer's */
    int64_t epoch_images;       /* at least this many augmented images per epoch */
    int64_t batch_size;
    double lr_scratch, lr_transfer, lr_finetune; /* Adam */
    const char *schedule;       /* per method, "S" or "S1,S2,S3", each "cosine" (to 0 over the
                                   method's epochs) or "constant"; default "constant,cosine,cosine" */
    const char *freeze;         /* what transfer freezes: "features" or "trunk" */
    const char *transform;      /* training augmentation */
    int64_t eval_limit;         /* > 0: only the first eval_limit evaluation images (tests) */
} graft_demo_options;

graft_demo_options graft_demo_defaults(void);

/* "scratch", "transfer", "fine-tune". */
const char *graft_demo_method_name(int method);

typedef struct graft_demo_method {
    double accuracy;           /* top-1 on the evaluation images, in [0, 1] */
    double train_seconds;      /* time in graft_train's training epochs */
    int64_t *confusion;        /* [classes, classes] counts, rows the true class; owned */
    double *step_loss;         /* training loss of every step (mean over its batch); owned */
    int64_t steps;
    int64_t *predicted;        /* [eval_n] predicted class of every evaluation image; owned */
} graft_demo_method;

typedef struct graft_demo_k_result {
    int64_t k;
    graft_demo_method method[GRAFT_DEMO_METHODS];
} graft_demo_k_result;

typedef struct graft_demo_result {
    int64_t num_classes;
    char **classes;            /* [num_classes] names; owned */
    char *source_arch;         /* the source checkpoint's architecture; owned */
    char **source_classes;     /* what the source model was trained on; owned */
    int64_t source_num_classes;
    const char *eval_name;     /* "test" or "validation" (static) */
    int64_t eval_n;            /* evaluation images */
    int64_t nruns;
    graft_demo_k_result runs[GRAFT_DEMO_MAX_RUNS];
    int64_t detail;            /* the run whose per-class results the report details */
    /* the report's image grid: the first GRAFT_DEMO_GRID_PER_CLASS evaluation images of
     * each class */
    int64_t grid_n;
    int grid_h, grid_w;
    uint8_t *grid_pixels;      /* [grid_n, grid_h, grid_w] gray; owned */
    int64_t *grid_index;       /* [grid_n] index among the evaluation images; owned */
    int64_t *grid_label;       /* [grid_n]; owned */
} graft_demo_result;

typedef struct graft_demo_callbacks {
    /* A stage begins: "K = 5: (a) scratch" — run index, method (-1: preparing data). */
    void (*stage)(void *user, int64_t k, int method, const char *what);
    /* Inside training (phase "train") and evaluation (phase "eval"). */
    void (*progress)(void *user, const graft_train_progress *p);
    void *user;
} graft_demo_callbacks;

/* Runs the demo into o->out_dir: for each K a training file, the three run folders
 * (K-named subfolders when sweeping), results.tsv (k, seed, method, accuracy,
 * train_seconds per line) and report.html.  callbacks may be NULL. */
graft_status graft_demo_run(const graft_demo_options *o, const graft_demo_callbacks *cb, graft_demo_result *r);

/* Reads --schedule's value ("cosine" or "constant" for every method, or one per method
 * separated by commas) into cosine[]; GRAFT_ERR_INVALID with a one-line message naming
 * the value otherwise.  graft_demo_run reads o->schedule with it. */
graft_status graft_demo_parse_schedules(const char *spec, bool cosine[GRAFT_DEMO_METHODS]);
void graft_demo_result_release(graft_demo_result *r);

/* The method of run with the highest accuracy (the first on ties). */
int graft_demo_best_method(const graft_demo_k_result *run);

/* report.html: self-contained (inline CSS, SVG and PNG data URIs, no script, no
 * network): the results table, training-loss curves, accuracy against K when swept,
 * per-class accuracy, the confusion matrix as a heat map and a grid of evaluation images
 * with true and predicted labels.  Written atomically.  (report.c) */
graft_status graft_demo_write_report(const graft_demo_result *r, const graft_demo_options *o, const char *path);

#endif
