/*
 * graft.h — the public C API of libgraft.
 *
 * graft does on a CPU, without Python, what PyTorch's transfer-learning recipe does:
 * build a torchvision model (VGG family), load its weights, freeze a prefix of it,
 * replace the classifier head, and run forward and backward passes whose numbers
 * match PyTorch's.  Models mirror torchvision exactly: parameter names, state-dict
 * order and printed form are the same, so state dicts and habits carry over.
 *
 * Conventions
 *   - Every function that can fail returns a graft_status; GRAFT_OK is 0.  On failure
 *     graft_errmsg() returns one line describing the problem (thread-local, valid
 *     until the next failing call on the same thread).  The library never prints
 *     and never exits.
 *   - Tensors are float32 (or int64 for counters and labels), contiguous, NCHW.
 *   - "owned by X" means X frees it; functions that hand ownership to the caller
 *     say so and name the function that frees it.
 *
 * A worked example (error handling elided):
 *
 *     graft_model *m;
 *     graft_model_options o = graft_model_defaults();
 *     o.num_classes = 10;                          // replaces classifier.6 with 4096 -> 10
 *     graft_model_create("vgg16", &o, &m);
 *     graft_model_freeze(m, "features", 1);        // the recipe's frozen extractor
 *     graft_model_load_safetensors(m, "w.safetensors");
 *
 *     int64_t shape[4] = {64, 3, 32, 32};
 *     graft_tensor *x;
 *     graft_tensor_create(GRAFT_F32, 4, shape, &x);
 *     // ... fill graft_tensor_f32(x) ...
 *     const graft_tensor *logits;
 *     graft_model_forward(m, x, &logits);          // [64, 10], owned by m
 *
 *     graft_tensor_free(x);
 *     graft_model_free(m);
 */
#ifndef GRAFT_GRAFT_H
#define GRAFT_GRAFT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(GRAFT_BUILDING) && defined(__GNUC__)
#define GRAFT_API __attribute__((visibility("default")))
#else
#define GRAFT_API
#endif

#define GRAFT_VERSION "0.1.0"

/* ---- errors ------------------------------------------------------------ */

typedef enum graft_status {
    GRAFT_OK = 0,
    GRAFT_ERR_INVALID,     /* a bad argument or option */
    GRAFT_ERR_SHAPE,       /* tensor shapes that do not fit together */
    GRAFT_ERR_NOMEM,       /* an allocation failed */
    GRAFT_ERR_IO,          /* open/read/write/rename failed */
    GRAFT_ERR_FORMAT,      /* a file is malformed, truncated or hostile */
    GRAFT_ERR_NOTFOUND,    /* a name (model, tensor, key, module path) does not exist */
    GRAFT_ERR_UNSUPPORTED, /* valid input that graft does not handle */
    GRAFT_INTERRUPTED      /* training stopped on request; its state was saved */
} graft_status;

/* The message of the last failure on this thread ("" if none). */
GRAFT_API const char *graft_errmsg(void);
/* A fixed name for a status, e.g. "shape error". */
GRAFT_API const char *graft_status_name(graft_status s);

/* Informational messages (e.g. "head freshly initialised") go to this callback;
 * by default they are dropped.  level: 0 info, 1 warning. */
typedef void (*graft_log_fn)(int level, const char *message, void *user);
GRAFT_API void graft_set_log_callback(graft_log_fn fn, void *user);

/* Threads used by graft's own pool and by BLAS (never both at once).
 * n <= 0 picks GRAFT_NUM_THREADS from the environment, else the number of cores. */
GRAFT_API graft_status graft_set_num_threads(int n);
GRAFT_API int graft_num_threads(void);

/* ---- tensors ----------------------------------------------------------- */

typedef enum graft_dtype { GRAFT_F32 = 0, GRAFT_I64 = 1 } graft_dtype;

#define GRAFT_MAX_DIMS 8

typedef struct graft_tensor graft_tensor;

/* A new zero-filled contiguous tensor; free with graft_tensor_free. */
GRAFT_API graft_status graft_tensor_create(graft_dtype dtype, int ndim, const int64_t *shape,
                                           graft_tensor **out);
GRAFT_API void graft_tensor_free(graft_tensor *t);
GRAFT_API graft_dtype graft_tensor_dtype(const graft_tensor *t);
GRAFT_API int graft_tensor_ndim(const graft_tensor *t);
GRAFT_API int64_t graft_tensor_dim(const graft_tensor *t, int i);
GRAFT_API int64_t graft_tensor_numel(const graft_tensor *t);
GRAFT_API size_t graft_tensor_nbytes(const graft_tensor *t);
/* Element pointers; NULL when the dtype differs. */
GRAFT_API float *graft_tensor_f32(graft_tensor *t);
GRAFT_API const float *graft_tensor_f32_const(const graft_tensor *t);
GRAFT_API int64_t *graft_tensor_i64(graft_tensor *t);
/* Writes the shape as PyTorch prints it, "[1000, 4096]", into buf (always terminated). */
GRAFT_API void graft_tensor_shape_str(const graft_tensor *t, char *buf, size_t size);
/* Bytes currently held by all tensors the library owns (for leak and release checks). */
GRAFT_API size_t graft_tensor_bytes_in_use(void);

/* ---- tensor maps (state dicts, safetensors files) ----------------------- */

/* An ordered map from names to tensors, plus string metadata. */
typedef struct graft_tensor_map graft_tensor_map;

GRAFT_API graft_status graft_tensor_map_create(graft_tensor_map **out);
GRAFT_API void graft_tensor_map_free(graft_tensor_map *m);
GRAFT_API size_t graft_tensor_map_size(const graft_tensor_map *m);
/* Entry i in insertion order; the tensor stays owned by the map. */
GRAFT_API const char *graft_tensor_map_name(const graft_tensor_map *m, size_t i);
GRAFT_API graft_tensor *graft_tensor_map_tensor(const graft_tensor_map *m, size_t i);
GRAFT_API graft_tensor *graft_tensor_map_get(const graft_tensor_map *m, const char *name);
/* Adds (or replaces) name; the map takes ownership of t, also on failure. */
GRAFT_API graft_status graft_tensor_map_put(graft_tensor_map *m, const char *name, graft_tensor *t);
/* Adds a deep copy of t. */
GRAFT_API graft_status graft_tensor_map_put_copy(graft_tensor_map *m, const char *name,
                                                 const graft_tensor *t);
GRAFT_API graft_status graft_tensor_map_set_meta(graft_tensor_map *m, const char *key,
                                                 const char *value);
GRAFT_API const char *graft_tensor_map_get_meta(const graft_tensor_map *m, const char *key);
GRAFT_API size_t graft_tensor_map_meta_size(const graft_tensor_map *m);
GRAFT_API const char *graft_tensor_map_meta_key(const graft_tensor_map *m, size_t i);

/* safetensors (https://github.com/huggingface/safetensors), validated as the format's
 * specification requires.  Reads F64/F32/F16/BF16 as float32 (F64 rounded to nearest,
 * half types exactly) and every integer dtype and BOOL as int64; F8/F6/F4/C64 are
 * GRAFT_ERR_UNSUPPORTED.  The file is memory-mapped; tensors are copied out. */
GRAFT_API graft_status graft_safetensors_load(const char *path, graft_tensor_map **out);
/* Writes F32 and I64 tensors and the metadata atomically: a temporary file beside
 * path, fsync, rename.  No partial file is ever visible at path. */
GRAFT_API graft_status graft_safetensors_save(const char *path, const graft_tensor_map *m);
/* The same with float32 tensors stored as float_dtype: "F32" (or NULL), "F16" or
 * "BF16" (rounded to nearest even, overflow to +-inf, NaN kept); int64 stays I64. */
GRAFT_API graft_status graft_safetensors_save_dtype(const char *path, const graft_tensor_map *m,
                                                    const char *float_dtype);

/* Reads a weights file by its content: safetensors, or a PyTorch checkpoint written by
 * torch.save (the zip layout of torch >= 1.6 or the legacy one, as torchvision's own
 * files are).  PyTorch checkpoints are read without running anything: only tensors,
 * dicts and the torch/numpy rebuild functions are allowed (like weights_only=True).
 * A state dict nested under "state_dict" or "model" is found; a "module." prefix
 * left by DataParallel is removed; every float type becomes float32 and every
 * integer type int64. */
GRAFT_API graft_status graft_weights_load(const char *path, graft_tensor_map **out);

/* ---- models -------------------------------------------------------------- */

typedef struct graft_model graft_model;

typedef struct graft_model_options {
    int64_t num_classes;  /* 0: the architecture's default (1000 for the zoo) */
    uint64_t seed;        /* initialisation seed */
    int init;             /* 1: initialise like torchvision; 0: zeros (weights loaded later) */
} graft_model_options;

GRAFT_API graft_model_options graft_model_defaults(void);

/* arch is a zoo name (vgg11 vgg13 vgg16 vgg19, vgg11_bn ... vgg19_bn, resnet18 resnet34
 * resnet50 resnet101 resnet152) or a custom spec: "vgg:cfg=64-M-128-M,bn,hidden=256,pool=2"
 * or "resnet:block=basic,layers=1-1-1-1,width=16" (see README).
 * Free with graft_model_free. */
GRAFT_API graft_status graft_model_create(const char *arch, const graft_model_options *opts,
                                          graft_model **out);
GRAFT_API void graft_model_free(graft_model *m);
/* The architecture string the model was created from. */
GRAFT_API const char *graft_model_arch(const graft_model *m);

/* print(model) as PyTorch 1.13 writes it, without the trailing newline.
 * Caller frees with free(). NULL on allocation failure. */
GRAFT_API char *graft_model_repr(const graft_model *m);

/* Freezes (frozen=1) or unfreezes every parameter under a module path prefix
 * ("features", "features.0", "classifier.3"; "" is the whole model; "trunk", unless the
 * model has a module of that name, is everything but the head, which keeps its state).
 * A prefix matching no module is GRAFT_ERR_NOTFOUND. */
GRAFT_API graft_status graft_model_freeze(graft_model *m, const char *prefix, int frozen);
/* Parameter counts (buffers excluded), as sum(p.numel()) in PyTorch. */
GRAFT_API void graft_model_param_counts(const graft_model *m, int64_t *total, int64_t *trainable);

/* Train mode: dropout active, BatchNorm uses batch statistics (except frozen
 * BatchNorm layers, which always use running statistics).  Default: eval. */
GRAFT_API void graft_model_set_training(graft_model *m, int training);
GRAFT_API int graft_model_training(const graft_model *m);
/* Sets p of every Dropout layer (0 <= p <= 1), like --dropout P. */
GRAFT_API graft_status graft_model_set_dropout(graft_model *m, double p);
/* Seeds the generator used by dropout. */
GRAFT_API void graft_model_set_seed(graft_model *m, uint64_t seed);

/* input: float32 [N, C, H, W].  *output is owned by the model and valid until the
 * next forward or free. */
GRAFT_API graft_status graft_model_forward(graft_model *m, const graft_tensor *input,
                                           const graft_tensor **output);
/* Back-propagates grad_output (the shape of the last output) through the last
 * forward, accumulating into the gradients of trainable parameters.  No work is
 * done below the lowest trainable module.  If grad_input is non-NULL the gradient
 * with respect to the input is computed too (owned by the model). */
GRAFT_API graft_status graft_model_backward(graft_model *m, const graft_tensor *grad_output,
                                            const graft_tensor **grad_input);
/* Sets the gradients of all parameters to zero. */
GRAFT_API void graft_model_zero_grad(graft_model *m);

/* The state dict, in PyTorch's order: parameters and buffers by qualified name.
 * Tensors are owned by the model. */
GRAFT_API size_t graft_model_state_size(const graft_model *m);
GRAFT_API const char *graft_model_state_name(const graft_model *m, size_t i);
GRAFT_API graft_tensor *graft_model_state_tensor(const graft_model *m, size_t i);
GRAFT_API graft_tensor *graft_model_state_get(const graft_model *m, const char *name);
/* The gradient of a parameter, or NULL (frozen, a buffer, or no backward yet). */
GRAFT_API graft_tensor *graft_model_grad(const graft_model *m, const char *name);
/* 1 when the named parameter is trainable, 0 when frozen, -1 when not a parameter. */
GRAFT_API int graft_model_param_trainable(const graft_model *m, const char *name);

/* Replaces the Linear at a module path ("classifier.6") by a fresh Linear with the same
 * in_features and out_features outputs, initialised like nn.Linear's default
 * (weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))).  The old layer is freed. */
GRAFT_API graft_status graft_model_replace_linear(graft_model *m, const char *path,
                                                  int64_t out_features, uint64_t seed);
/* The module path of the architecture's classification head ("classifier.6" for VGG). */
GRAFT_API const char *graft_model_head_path(const graft_model *m);
/* The head's output width, read from its weight. */
GRAFT_API int64_t graft_model_num_classes(const graft_model *m);

/* Copies a state dict into the model: every key present, every shape equal (strict).
 * Errors list missing and unexpected keys and size mismatches in PyTorch's words. */
GRAFT_API graft_status graft_model_load_state(graft_model *m, const graft_tensor_map *state);
GRAFT_API graft_status graft_model_load_safetensors(graft_model *m, const char *path);
/* Loads a weights file (see graft_weights_load) strictly.  With GRAFT_LOAD_NEW_HEAD,
 * a head whose shape differs from the model's (a 1000-class checkpoint into a 10-class
 * model) is left as freshly initialised — a log line says so — and everything else
 * still has to match. */
#define GRAFT_LOAD_STRICT 0
#define GRAFT_LOAD_NEW_HEAD 1
GRAFT_API graft_status graft_model_load_file(graft_model *m, const char *path, int flags);
/* A deep copy of the state dict; free with graft_tensor_map_free. */
GRAFT_API graft_status graft_model_state_dict(const graft_model *m, graft_tensor_map **out);
GRAFT_API graft_status graft_model_save_safetensors(const graft_model *m, const char *path);

/* ---- model zoo and pretrained weights ------------------------------------ */

/* Called as bytes arrive; total is 0 when the server did not say. */
typedef void (*graft_progress_fn)(void *user, uint64_t done_bytes, uint64_t total_bytes);

/* One of torchvision 0.14's pretrained weight files. */
typedef struct graft_pretrained {
    const char *arch;          /* "vgg16" */
    const char *version;       /* torchvision's enum name, "IMAGENET1K_V1" */
    const char *file;          /* "vgg16-397923af.pth" */
    const char *sha256_prefix; /* "397923af": the start of the file's SHA-256 */
    int64_t input_size;        /* the resolution the weights were trained at */
    int is_default;            /* torchvision's DEFAULT for the architecture */
    int64_t resize_size;       /* its evaluation transform's Resize before the crop: 256, or
                                  232 for the V2 ResNets */
} graft_pretrained;

/* Zoo architecture names, NULL-terminated. */
GRAFT_API const char *const *graft_zoo_names(void);
GRAFT_API size_t graft_pretrained_count(void);
GRAFT_API const graft_pretrained *graft_pretrained_at(size_t i);
/* The weights of arch with a version (case-insensitive "IMAGENET1K_V1", "v1", ...), or
 * the default when version is NULL or "".  NULL (with the error set) when none. */
GRAFT_API const graft_pretrained *graft_pretrained_find(const char *arch, const char *version);
/* https://download.pytorch.org/models/<file>, or <$GRAFT_MODEL_URL_BASE>/<file>. */
GRAFT_API graft_status graft_pretrained_url(const graft_pretrained *p, char *buf, size_t size);
/* The weights cache, the first that is set of: $GRAFT_HOME, $TORCH_HOME/hub/checkpoints,
 * $XDG_CACHE_HOME/torch/hub/checkpoints, ~/.cache/torch/hub/checkpoints — the folder
 * PyTorch uses, so files downloaded by either are reused by the other. */
GRAFT_API graft_status graft_cache_dir(char *buf, size_t size);

typedef struct graft_fetch_options {
    int offline;                /* never touch the network (also when GRAFT_OFFLINE=1) */
    graft_progress_fn progress; /* may be NULL */
    void *user;
} graft_fetch_options;

/* Writes the path of p's file in the cache into path, downloading it first when it is
 * missing: into a temporary file in the cache folder, checked against the SHA-256
 * prefix, then renamed into place.  Offline, a missing file is GRAFT_ERR_NOTFOUND with
 * a message saying which file to put where. */
GRAFT_API graft_status graft_pretrained_fetch(const graft_pretrained *p, const graft_fetch_options *o,
                                              char *path, size_t size);

/* ---- loss ---------------------------------------------------------------- */

/* Cross-entropy, mean over the batch, as nn.CrossEntropyLoss().
 * logits [N, K] float32; labels [N] int64 in [0, K).  If grad_logits is non-NULL
 * it must be [N, K] float32 and receives d(loss)/d(logits). */
GRAFT_API graft_status graft_cross_entropy(const graft_tensor *logits, const graft_tensor *labels,
                                           double *loss, graft_tensor *grad_logits);

/* ---- training ---------------------------------------------------------------- */

/* Everything `graft train` can be told.  Start from graft_train_defaults(); strings
 * are borrowed for the duration of graft_train. */
typedef struct graft_train_config {
    /* model */
    const char *arch;            /* zoo name or VGG spec (required unless resuming) */
    int64_t num_classes;         /* 0: the dataset's class count */
    int pretrained;              /* torchvision's weights from the cache / a download */
    const char *weights_version; /* NULL: torchvision's DEFAULT */
    const char *weights;         /* a weights file instead (safetensors or .pth) */
    int offline;                 /* never download */
    const char *const *freeze;   /* module prefixes to freeze; "trunk": all but the head */
    int nfreeze;
    double dropout;              /* < 0: keep the architecture's */
    /* data */
    const char *data;            /* --data SPEC (required unless resuming) */
    const char *classes;         /* --classes "5,6,7" or NULL */
    int64_t per_class;           /* --per-class K, 0: all */
    const char *transform;       /* training transform spec; NULL: the evaluation one */
    const char *eval_transform;  /* NULL: derived from the data and the model */
    int strict;                  /* unreadable images are errors */
    int64_t batch_size;          /* default 64 */
    int shuffle;                 /* default 1 */
    int workers;                 /* loader threads, default 1 */
    /* optimisation */
    int64_t epochs;              /* default 10 */
    const char *optimizer;       /* "sgd" (default), "adam", "adamw" */
    double lr;                   /* default 0.001 */
    double lr_head, lr_trunk;    /* < 0: lr (two parameter groups when either is set) */
    double momentum, dampening;
    double weight_decay;         /* < 0: the optimiser's PyTorch default (AdamW 0.01, else 0) */
    int nesterov;
    double beta1, beta2, eps;    /* Adam/AdamW; defaults PyTorch's */
    const char *schedule;        /* "constant" (default), "step:step_size=..,gamma=..",
                                    "cosine:t_max=..", with ",warmup=W" */
    double label_smoothing;      /* default 0 */
    int64_t max_steps;           /* > 0: stop (resumable) after this many steps in this run */
    /* run */
    uint64_t seed;               /* default 0 */
    int threads;                 /* 0: GRAFT_NUM_THREADS or the cores */
    const char *out_dir;         /* run folder (required) */
    const char *resume_dir;      /* continue the run in this folder */
    int feature_cache;           /* default 1 (frozen trunks are computed once) */
    int fold;                    /* default 1 (pooled replicas folded into the next Linear) */
    int fuse_update;             /* default 1 (large Linear weights updated as their gradient is
                                    computed, never stored whole; the same numbers) */
} graft_train_config;

GRAFT_API graft_train_config graft_train_defaults(void);

/* Progress inside an epoch. */
typedef struct graft_train_progress {
    int64_t epoch, epochs;         /* 1-based */
    int64_t step, steps;           /* batches done / in the epoch */
    double loss, accuracy;         /* running means over the epoch so far */
    double images_per_second, eta_seconds;
    const char *phase;             /* "train", "eval", "cache" */
} graft_train_progress;

/* One epoch's results (what each line of metrics.jsonl holds). */
typedef struct graft_epoch_report {
    int64_t epoch;                 /* 1-based */
    double lr;                     /* of the first parameter group */
    double train_loss, train_accuracy;
    int has_test;
    double test_loss, test_top1, test_top5;
    double images_per_second, seconds;
} graft_epoch_report;

typedef struct graft_train_callbacks {
    void (*text)(void *user, const char *text);      /* summary and tables, for stdout */
    void (*progress)(void *user, const graft_train_progress *p);
    void (*epoch)(void *user, const graft_epoch_report *r);
    int (*should_stop)(void *user);                  /* polled after every batch */
    void *user;
} graft_train_callbacks;

/* Runs the recipe: model, data, frozen prefixes, optimiser and schedule from c, one
 * evaluation per epoch, checkpoints and metrics into c->out_dir.  Returns
 * GRAFT_INTERRUPTED (after saving a resumable state) when should_stop said so or
 * max_steps was reached.  callbacks may be NULL. */
GRAFT_API graft_status graft_train(const graft_train_config *c, const graft_train_callbacks *callbacks);

/* ---- evaluation and prediction with a checkpoint -------------------------------- */

typedef struct graft_eval_options {
    const char *data;       /* --data SPEC; its test split (or val) is evaluated, else train */
    int64_t batch_size;     /* 0: 64 */
    int workers;            /* loader threads */
    int strict;
} graft_eval_options;

typedef struct graft_eval_result {
    int64_t samples;
    double loss, top1, top5; /* mean cross-entropy; accuracies in [0, 1] */
    char *report;            /* per-class accuracy and confusion matrix as text; free() */
} graft_eval_result;

/* Evaluates a checkpoint (see graft_train) on a dataset with the checkpoint's own
 * evaluation transform.  When the dataset's class names differ from the checkpoint's,
 * the checkpoint's classes are picked out of the dataset by name (a model trained with
 * --classes evaluates on the full dataset without repeating them). */
GRAFT_API graft_status graft_evaluate(const char *checkpoint, const graft_eval_options *o, graft_eval_result *r);

/* A checkpoint as an image classifier, for applications. */
typedef struct graft_classifier graft_classifier;

typedef struct graft_prediction {
    int64_t class_index;
    const char *class_name;  /* owned by the classifier */
    double probability;      /* softmax of the logits */
} graft_prediction;

/* Loads a checkpoint written by graft train; free with graft_classifier_free.  The
 * classifier keeps its convolutions' Winograd weight transforms after the first call
 * (up to a quarter more memory than the weights, e.g. about 130 MB for VGG16 at 224x224),
 * so later calls skip that work. */
GRAFT_API graft_status graft_classifier_open(const char *checkpoint, graft_classifier **out);
GRAFT_API void graft_classifier_free(graft_classifier *c);
GRAFT_API int64_t graft_classifier_num_classes(const graft_classifier *c);
GRAFT_API const char *graft_classifier_class_name(const graft_classifier *c, int64_t i);
/* The evaluation transform the checkpoint applies to every image. */
GRAFT_API const char *graft_classifier_transform(const graft_classifier *c);
/* Classifies an 8-bit RGB image: height rows of width * 3 bytes, `stride` bytes apart
 * (0: width * 3).  top receives the k most probable classes, most probable first. */
GRAFT_API graft_status graft_classifier_classify(graft_classifier *c, const uint8_t *rgb, int width, int height,
                                                 size_t stride, int k, graft_prediction *top);
/* The same for a PNG, JPEG or BMP file (recognised by content). */
GRAFT_API graft_status graft_classifier_classify_file(graft_classifier *c, const char *path, int k,
                                                      graft_prediction *top);

#ifdef __cplusplus
}
#endif

#endif /* GRAFT_GRAFT_H */
