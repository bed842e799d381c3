/* trainer.c — the transfer-learning recipe as one call: build or load the model, open
 * the data, freeze, then per epoch train, evaluate, report and checkpoint.
 *
 * A run folder holds
 *   metrics.jsonl            one JSON object per epoch
 *   last.safetensors         the model after the last completed save (a checkpoint)
 *   best.safetensors         the model with the best test top-1 so far: a hard link to
 *                            that epoch's last.safetensors (a copy where links fail)
 *   last.state.safetensors   what resuming needs besides the weights: optimiser state,
 *                            the dropout generator, the position (epoch, step), partial
 *                            epoch sums and the configuration
 *   per_class.csv, confusion.csv   the final evaluation
 * Every file is written atomically; a save's files are committed (fsynced and renamed into
 * place, the files they replace freed inside the renames) on a thread of their own while
 * the next epoch trains, and the spares are removed on another at the end
 * (io/atomic_file.h: the fsyncs waited ~1 s an epoch and freeing 537 MB ~0.7 s inside
 * the rename, with no CPU used).
 * last.safetensors is written before its state and
 * both carry the same save id, so a state that does not belong to the weights (a kill
 * between the two renames) is recognised instead of silently mixed.
 *
 * Determinism: the batch order of epoch e and every random transform are functions of
 * (seed, e, sample) (see data/loader.h) and dropout draws from the model's generator,
 * which is saved; so with one thread a resumed run ends with the same weights as one
 * that was never interrupted.  With more threads BLAS may split sums differently from
 * run to run, so results agree only to rounding. */
#include <errno.h>
#include <stdarg.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/clock.h"
#include "core/error.h"
#include "core/strbuf.h"
#include "core/tensor.h"
#include "data/loader.h"
#include "data/spec.h"
#include "data/transforms.h"
#include "io/atomic_file.h"
#include "io/fs.h"
#include "io/writers.h"
#include "nn/model.h"
#include "ops/ops.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/feature_cache.h"
#include "train/fold.h"
#include "train/metrics.h"
#include "train/optim.h"
#include "train/schedule.h"

#define STATE_FORMAT "graft-train-state"
#define GRAY_MEAN_STD "0.449/0.226" /* the ImageNet statistics averaged over channels */

typedef struct trainer {
    graft_train_config c;              /* effective configuration */
    const graft_train_callbacks *cb;
    json_t *saved_config;              /* when resuming: owns the strings in c */
    const char **saved_freeze;
    graft_data *data;
    graft_transforms *train_tf, *eval_tf;
    char train_spec[512], eval_spec[512];
    graft_loader *train_loader, *test_loader;
    graft_model *model;
    graft_optim *optim;
    graft_schedule sched;
    graft_metrics train_m, test_m;
    graft_tensor dlogits;
    char **class_names;                /* borrowed from the source */
    char **frozen;                     /* effective frozen prefixes, owned */
    int nfrozen;
    int chw[3];
    int64_t epoch;                     /* epochs completed */
    int64_t step;                      /* batches completed in the current epoch */
    int64_t steps_this_run;
    int64_t save_id;
    double best_top1;
    graft_strbuf jsonl;                /* metrics.jsonl so far */
    graft_old_files replaced;          /* the spares, removed in the background at the end */
    graft_commits commits;             /* the last save's commits, made in the background */
    graft_fold fold;                   /* pooled-linear folding (fold.h) */
    graft_module *const *steps;        /* the training forward: the model's steps, or folded ones */
    int nsteps;
    /* the feature cache (feature_cache.h) */
    bool cached;
    bool test_from_cache;              /* the test set's rows are in the cache too */
    graft_feature_cache cache;
    graft_tensor cbatch, clabels;      /* batches assembled from cached rows */
    int64_t *order;                    /* an epoch's sample order */
    char cache_note[320];              /* why the cache is off, or what it holds */
} trainer;

static void say(trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(trainer *t, const char *fmt, ...) {
    if (!t->cb || !t->cb->text) return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    t->cb->text(t->cb->user, line);
}

static void path_in(const trainer *t, const char *name, char *buf, size_t size) {
    snprintf(buf, size, "%s/%s", t->c.out_dir, name);
}

/* ---- set-up ---------------------------------------------------------------- */

static graft_status add_frozen(trainer *t, const char *prefix) {
    char **grown = realloc(t->frozen, (size_t)(t->nfrozen + 1) * sizeof *grown);
    if (!grown) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    t->frozen = grown;
    if (!(t->frozen[t->nfrozen] = strdup(prefix))) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    t->nfrozen++;
    return GRAFT_OK;
}

/* --freeze: module prefixes; "trunk" is everything but the head. */
static graft_status apply_freeze(trainer *t) {
    for (int i = 0; i < t->c.nfreeze; i++) {
        const char *p = t->c.freeze[i];
        graft_status s;
        if ((s = graft_model_freeze(t->model, p, 1))) return graft_error_prefix(s, "--freeze");
        if ((s = add_frozen(t, p))) return s;
    }
    return GRAFT_OK;
}

static graft_status build_model(trainer *t, const char *resume_weights) {
    const graft_train_config *c = &t->c;
    if (!c->arch) return graft_error(GRAFT_ERR_INVALID, "--model is required");
    graft_model_options o = graft_model_defaults();
    o.num_classes = c->num_classes ? c->num_classes : graft_source_num_classes(t->data->train);
    o.seed = c->seed;
    o.init = resume_weights == NULL;
    graft_status s = graft_model_create(c->arch, &o, &t->model);
    if (s) return graft_error_prefix(s, "--model");
    if (resume_weights) {
        if ((s = graft_model_load_file(t->model, resume_weights, GRAFT_LOAD_STRICT))) return s;
    } else if (c->pretrained) {
        const graft_pretrained *p = graft_pretrained_find(c->arch, c->weights_version);
        if (!p) return graft_error_prefix(GRAFT_ERR_NOTFOUND, "--pretrained");
        char path[4096];
        graft_fetch_options fo = {.offline = c->offline};
        if ((s = graft_pretrained_fetch(p, &fo, path, sizeof path))) return graft_error_prefix(s, "--pretrained");
        if ((s = graft_model_load_file(t->model, path, GRAFT_LOAD_NEW_HEAD))) return s;
    } else if (c->weights) {
        if ((s = graft_model_load_file(t->model, c->weights, GRAFT_LOAD_NEW_HEAD))) return graft_error_prefix(s, "--weights");
    }
    if (c->dropout >= 0 && (s = graft_model_set_dropout(t->model, c->dropout))) return s;
    graft_model_set_seed(t->model, c->seed);
    return apply_freeze(t);
}

/* The evaluation transform: what makes a sample of the data the model's input. */
static graft_status default_eval_spec(trainer *t, char *buf, size_t size) {
    const graft_source *src = t->data->train;
    buf[0] = 0;
    if (graft_source_kind(src) == GRAFT_SAMPLE_TENSOR) return GRAFT_OK; /* used as they are */
    int c, h, w;
    graft_source_shape(src, 0, &c, &h, &w);
    int64_t model_c = graft_model_in_channels(t->model);
    graft_strbuf sb;
    graft_strbuf_init(&sb);
    if (graft_source_path(src, 0)) { /* image files: ImageNet's resize and crop, or the weights' own */
        const graft_pretrained *p = t->c.pretrained ? graft_pretrained_find(t->c.arch, t->c.weights_version) : NULL;
        graft_strbuf_printf(&sb, "resize=%lld,centercrop=%lld,", (long long)(p ? p->resize_size : 256),
                            (long long)(p ? p->input_size : 224));
    }
    int out_c = c;
    if (c == 1 && model_c == 3) graft_strbuf_append(&sb, "grayscale=3,"), out_c = 3;
    if (c == 3 && model_c == 1) graft_strbuf_append(&sb, "grayscale=1,"), out_c = 1;
    graft_strbuf_append(&sb, out_c == 3 ? "normalize=imagenet" : "normalize=" GRAY_MEAN_STD);
    snprintf(buf, size, "%s", sb.data ? sb.data : "");
    graft_strbuf_free(&sb);
    return GRAFT_OK;
}

/* The training transform: the user's items, plus the evaluation transform's grayscale
 * and normalize when the user's have none. */
static void train_spec_from(const char *user, const char *eval, char *buf, size_t size) {
    graft_strbuf sb;
    graft_strbuf_init(&sb);
    graft_strbuf_append(&sb, user);
    const char *gray = strstr(eval, "grayscale=");
    if (gray && !strstr(user, "grayscale")) graft_strbuf_printf(&sb, ",%.*s", (int)strcspn(gray, ","), gray);
    const char *norm = strstr(eval, "normalize=");
    if (norm && !strstr(user, "normalize")) graft_strbuf_printf(&sb, ",%s", norm);
    snprintf(buf, size, "%s", sb.data ? sb.data : "");
    graft_strbuf_free(&sb);
}

static graft_status build_data(trainer *t) {
    const graft_train_config *c = &t->c;
    if (!c->data) return graft_error(GRAFT_ERR_INVALID, "--data is required");
    graft_data_options o = {.strict = c->strict != 0, .classes = c->classes, .per_class = c->per_class, .seed = c->seed};
    graft_status s = graft_data_open(c->data, &o, &t->data);
    if (s) return graft_error_prefix(s, "--data");
    if (graft_source_len(t->data->train) == 0)
        return graft_error(GRAFT_ERR_INVALID, "--data: %s has no training samples", c->data);
    return GRAFT_OK;
}

/* Loader options from the run's configuration: unshuffled; the test split's with the
 * seed after the training one's. */
static graft_loader_options loader_options(const trainer *t, int64_t batch, bool test) {
    graft_loader_options lo = graft_loader_defaults();
    lo.batch_size = batch;
    lo.workers = t->c.workers;
    lo.strict = t->c.strict != 0;
    lo.seed = t->c.seed + (test ? 1 : 0);
    return lo;
}

static graft_status build_loaders(trainer *t) {
    const graft_train_config *c = &t->c;
    graft_status s;
    if (c->eval_transform) snprintf(t->eval_spec, sizeof t->eval_spec, "%s", c->eval_transform);
    else if ((s = default_eval_spec(t, t->eval_spec, sizeof t->eval_spec))) return s;
    if (c->transform) train_spec_from(c->transform, t->eval_spec, t->train_spec, sizeof t->train_spec);
    else snprintf(t->train_spec, sizeof t->train_spec, "%s", t->eval_spec);
    bool tensors = graft_source_kind(t->data->train) == GRAFT_SAMPLE_TENSOR;
    if (tensors && (c->transform || c->eval_transform))
        return graft_error(GRAFT_ERR_INVALID, "--transform: float tensors are used as they are, without transforms");
    if (!tensors) {
        if ((s = graft_transforms_parse(t->train_spec, &t->train_tf))) return graft_error_prefix(s, "--transform");
        if ((s = graft_transforms_parse(t->eval_spec, &t->eval_tf))) return graft_error_prefix(s, "--eval-transform");
    }
    graft_loader_options lo = loader_options(t, c->batch_size, false);
    lo.shuffle = c->shuffle != 0;
    if ((s = graft_loader_create(t->data->train, t->train_tf, &lo, &t->train_loader))) return s;
    graft_loader_sample_shape(t->train_loader, t->chw);
    if (t->data->test && graft_source_len(t->data->test) > 0) {
        lo = loader_options(t, c->batch_size, true);
        if ((s = graft_loader_create(t->data->test, t->eval_tf, &lo, &t->test_loader))) return s;
        int chw[3];
        graft_loader_sample_shape(t->test_loader, chw);
        if (memcmp(chw, t->chw, sizeof chw))
            return graft_error(GRAFT_ERR_SHAPE,
                               "--transform: training samples come out %dx%dx%d but evaluation samples %dx%dx%d",
                               t->chw[0], t->chw[1], t->chw[2], chw[0], chw[1], chw[2]);
    }
    t->class_names = t->data->train->classes;
    return GRAFT_OK;
}

static graft_status build_optimizer(trainer *t) {
    const graft_train_config *c = &t->c;
    graft_optim_kind kind;
    graft_status s = graft_optim_kind_parse(c->optimizer ? c->optimizer : "sgd", &kind);
    if (s) return graft_error_prefix(s, "--optimizer");
    graft_optim_options defaults = graft_optim_defaults(kind);
    double wd = c->weight_decay >= 0 ? c->weight_decay : defaults.weight_decay;
    if ((s = graft_fold_setup(&t->fold, t->model, t->chw, kind, wd, c->fold != 0))) return s;
    t->steps = t->fold.active ? t->fold.steps : graft_model_steps(t->model);
    t->nsteps = t->fold.active ? t->fold.nsteps : graft_model_nsteps(t->model);
    graft_optim_options o = graft_optim_defaults(kind);
    bool groups = c->lr_head >= 0 || c->lr_trunk >= 0;
    o.ngroups = groups ? 2 : 1;
    o.lr[0] = c->lr_trunk >= 0 ? c->lr_trunk : c->lr;
    o.lr[1] = c->lr_head >= 0 ? c->lr_head : c->lr;
    if (c->weight_decay >= 0) o.weight_decay = c->weight_decay;
    o.momentum = c->momentum;
    o.dampening = c->dampening;
    o.nesterov = c->nesterov;
    o.beta1 = c->beta1;
    o.beta2 = c->beta2;
    o.eps = c->eps;
    if ((s = graft_optim_check(&o))) return graft_error_prefix(s, "--optimizer");
    int64_t trainable;
    graft_model_param_counts(t->model, NULL, &trainable);
    if (trainable == 0) return graft_error(GRAFT_ERR_INVALID, "--freeze: every parameter is frozen; nothing to train");
    const char *head = groups ? graft_model_head_path(t->model) : NULL;
    if (t->fold.active) {
        graft_optim_param *list;
        size_t n;
        if ((s = graft_fold_optim_params(&t->fold, t->model, head, &list, &n))) return s;
        s = graft_optim_create(&o, n, list, &t->optim);
        for (size_t i = 0; i < n; i++) free((char *)list[i].name);
        free(list);
        if (s) return s;
    } else if ((s = graft_optim_create_for_model(t->model, &o, head, &t->optim))) {
        return s;
    }
    if ((s = graft_schedule_parse(c->schedule ? c->schedule : "constant", &t->sched)))
        return graft_error_prefix(s, "--schedule");
    if (c->fuse_update) {
        graft_optim_fuse_linear(t->optim, t->model);
        const graft_grad_sink *sink;
        if (t->fold.active && !graft_optim_sink(t->optim, &t->fold.folded->params[0].value, &sink))
            t->fold.folded->params[0].sink = sink;
    }
    return GRAFT_OK;
}

static void cache_progress(void *user, const char *what, int64_t done, int64_t total) {
    trainer *t = user;
    if (!t->cb || !t->cb->progress) return;
    graft_train_progress p = {.epoch = t->epoch + 1, .epochs = t->c.epochs, .step = done, .steps = total,
                              .loss = NAN, .accuracy = NAN, .phase = what};
    t->cb->progress(t->cb->user, &p);
}

/* Images per batch while filling the cache: at least CACHE_INPUT_FLOATS floats of input
 * (256 images of 3 x 32 x 32), at most 256 images, and never fewer than the training
 * batch.  Each call of the trunk pays for its weights once (the Winograd transform,
 * the weights streamed once per block of tiles), and an image's features do not depend
 * on the batch around it (conv_avx512.c); VGG16's features at 32 x 32 measured 503-517
 * images/s at batch 64, 556-561 at 128 and 598-609 at 256.  Larger images keep the
 * training batch, so the activations stay within a few hundred MB. */
#define CACHE_INPUT_FLOATS (256 * 3 * 32 * 32)
#define CACHE_MAX_BATCH 256

static int64_t cache_batch(const trainer *t) {
    int64_t per = (int64_t)t->chw[0] * t->chw[1] * t->chw[2], b = per > 0 ? CACHE_INPUT_FLOATS / per : 1;
    if (b > CACHE_MAX_BATCH) b = CACHE_MAX_BATCH;
    return b > t->c.batch_size ? b : t->c.batch_size;
}

/* Turns the feature cache on when it applies (feature_cache.h) and fills it. */
static graft_status setup_cache(trainer *t) {
    graft_feature_cache *c = &t->cache;
    c->steps = t->steps;
    c->nsteps = t->nsteps;
    int trunk = graft_steps_first_trainable(t->steps, t->nsteps);
    snprintf(t->cache_note, sizeof t->cache_note, "off");
    if (!t->c.feature_cache) return GRAFT_OK;
    if (trunk == 0) {
        snprintf(t->cache_note, sizeof t->cache_note, "off: the first step is trainable");
        return GRAFT_OK;
    }
    for (int i = 0; i < trunk; i++)
        if (graft_step_is_random(t->steps[i])) {
            snprintf(t->cache_note, sizeof t->cache_note, "off: the frozen trunk has active dropout");
            return GRAFT_OK;
        }
    char off[512] = "", on[512] = "";
    if (t->train_tf && graft_transforms_is_random(t->train_tf)) {
        if (!graft_transforms_flip_variants(t->train_tf, off, on, sizeof off)) {
            snprintf(t->cache_note, sizeof t->cache_note, "off: the training transform is random beyond a flip");
            return GRAFT_OK;
        }
        c->flip = true;
    }
    c->trunk_end = trunk;
    graft_status s = graft_feature_cache_probe(c, t->model, t->chw);
    int64_t n_train = graft_source_len(t->data->train);
    int64_t n_test = t->test_loader ? graft_source_len(t->data->test) : 0;
    if (!s) s = graft_feature_cache_reserve(c, n_train, n_test, t->c.out_dir);
    if (!s) t->order = malloc((size_t)(n_train ? n_train : 1) * sizeof *t->order);
    if (!s && !t->order) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    /* the training rows: through the training transform, flip off and on */
    graft_loader_options lo = loader_options(t, cache_batch(t), false);
    for (int pass = 0; !s && pass < (c->flip ? 2 : 1); pass++) {
        graft_transforms *tf = NULL;
        graft_loader *l = NULL;
        if (c->flip) s = graft_transforms_parse(pass ? on : off, &tf);
        if (!s) s = graft_loader_create(t->data->train, c->flip ? tf : t->train_tf, &lo, &l);
        if (!s) s = graft_feature_cache_fill(c, pass ? &c->train_flipped : &c->train, t->model, l,
                                             pass ? "cache train (flipped)" : "cache train", cache_progress, t);
        graft_loader_free(l);
        graft_transforms_free(tf);
    }
    if (!s && t->test_loader) { /* the test loader's options, in batches of the cache's size */
        graft_loader *l = NULL;
        lo = loader_options(t, lo.batch_size, true);
        s = graft_loader_create(t->data->test, t->eval_tf, &lo, &l);
        if (!s) s = graft_feature_cache_fill(c, &c->test, t->model, l, "cache test", cache_progress, t);
        graft_loader_free(l);
    }
    graft_feature_cache_release_trunk(c);
    if (s) return s;
    t->cached = true;
    t->test_from_cache = t->test_loader != NULL;
    char dims[96] = "";
    size_t len = 0;
    for (int i = 0; i < c->ndim; i++)
        len += (size_t)snprintf(dims + len, sizeof dims - len, "%s%lld", i ? "x" : "", (long long)c->dims[i]);
    snprintf(t->cache_note, sizeof t->cache_note,
             "on: %lld frozen steps computed once in batches of %lld, %s per image%s, %.1f MB%s", (long long)trunk,
             (long long)lo.batch_size, dims, c->flip ? " (both orientations)" : "", (double)c->block_bytes / 1048576.0,
             c->mapped ? " in the run folder" : "");
    return GRAFT_OK;
}

static graft_status check_config(const graft_train_config *c) {
    if (!c->out_dir) return graft_error(GRAFT_ERR_INVALID, "--out is required");
    if (c->batch_size < 1) return graft_error(GRAFT_ERR_INVALID, "--batch-size must be positive");
    if (c->epochs < 1) return graft_error(GRAFT_ERR_INVALID, "--epochs must be positive");
    if (!(c->label_smoothing >= 0 && c->label_smoothing <= 1))
        return graft_error(GRAFT_ERR_INVALID, "--label-smoothing must be in [0, 1]");
    if (c->pretrained && c->weights) return graft_error(GRAFT_ERR_INVALID, "--pretrained and --weights exclude each other");
    if (c->workers < 0) return graft_error(GRAFT_ERR_INVALID, "--workers must not be negative");
    return GRAFT_OK;
}

/* ---- resuming ---------------------------------------------------------------- */

static graft_status read_state(trainer *t, graft_tensor_map **state) {
    char path[4096];
    path_in(t, "last.state.safetensors", path, sizeof path);
    graft_status s = graft_safetensors_load(path, state);
    if (s) return graft_error_prefix(s, "--resume");
    const char *format = graft_tensor_map_get_meta(*state, "format");
    if (!format || strcmp(format, STATE_FORMAT))
        return graft_error(GRAFT_ERR_FORMAT, "--resume: %s is not a graft training state", path);
    return GRAFT_OK;
}

static int64_t meta_i64(const graft_tensor_map *m, const char *key) {
    const char *v = graft_tensor_map_get_meta(m, key);
    return v ? strtoll(v, NULL, 10) : 0;
}

static double meta_f64(const graft_tensor_map *m, const char *key) {
    const char *v = graft_tensor_map_get_meta(m, key);
    return v ? strtod(v, NULL) : 0.0;
}

/* Replaces t->c by the configuration saved in the run folder (keeping the few settings
 * that may change between sessions). */
static graft_status load_saved_config(trainer *t, const graft_tensor_map *state) {
    const char *text = graft_tensor_map_get_meta(state, "config");
    json_error_t err;
    if (!text || !(t->saved_config = json_loads(text, 0, &err)))
        return graft_error(GRAFT_ERR_FORMAT, "--resume: the saved configuration is missing or unreadable");
    graft_train_config given = t->c;
    graft_status s = graft_train_config_from_json(t->saved_config, &t->c, &t->saved_freeze);
    if (s) return graft_error_prefix(s, "--resume");
    t->c.out_dir = given.resume_dir;
    t->c.resume_dir = given.resume_dir;
    t->c.threads = given.threads;
    t->c.workers = given.workers;
    t->c.offline = given.offline;
    t->c.max_steps = given.max_steps;
    if (given.epochs > 0) t->c.epochs = given.epochs;
    return GRAFT_OK;
}

static graft_status restore_state(trainer *t, const graft_tensor_map *state) {
    char path[4096];
    path_in(t, "last.safetensors", path, sizeof path);
    graft_tensor_map *weights;
    graft_status s = graft_safetensors_load(path, &weights);
    if (s) return graft_error_prefix(s, "--resume");
    const char *a = graft_tensor_map_get_meta(weights, "save_id"), *b = graft_tensor_map_get_meta(state, "save_id");
    bool match = a && b && !strcmp(a, b);
    graft_tensor_map_free(weights);
    if (!match)
        return graft_error(GRAFT_ERR_FORMAT,
                           "--resume: %s and last.state.safetensors come from different saves (interrupted while "
                           "saving?); last.safetensors is a complete checkpoint but the run cannot resume exactly",
                           path);
    if ((s = graft_optim_state_import(t->optim, "optim.", state))) return graft_error_prefix(s, "--resume");
    const graft_tensor *rng = graft_tensor_map_get(state, "rng");
    if (!rng || rng->dtype != GRAFT_I64 || graft_tensor_numel(rng) != 4)
        return graft_error(GRAFT_ERR_FORMAT, "--resume: the saved state has no generator state");
    uint64_t r[4];
    for (int i = 0; i < 4; i++) r[i] = (uint64_t)((const int64_t *)rng->data)[i];
    graft_model_rng_set(t->model, r);
    t->epoch = meta_i64(state, "epoch");
    t->step = meta_i64(state, "step");
    t->save_id = meta_i64(state, "save_id");
    t->best_top1 = meta_f64(state, "best_top1");
    t->train_m.loss_sum = meta_f64(state, "train_loss_sum");
    t->train_m.top1 = meta_i64(state, "train_top1");
    t->train_m.top5 = meta_i64(state, "train_top5");
    t->train_m.seen = meta_i64(state, "train_seen");
    const char *lines = graft_tensor_map_get_meta(state, "metrics_jsonl");
    if (lines) graft_strbuf_append(&t->jsonl, lines);
    return GRAFT_OK;
}

/* ---- saving -------------------------------------------------------------------- */

/* The files rewritten every epoch are written over a spare beside them
 * (graft_atomic_open_over), "<name>.spare" in the run folder; the trainer removes the
 * spares when it is freed. */
static const char *const spared[] = {"last.safetensors", "last.state.safetensors"};

static void spare_in(const trainer *t, const char *name, char *buf, size_t size) {
    snprintf(buf, size, "%s/%s.spare", t->c.out_dir, name);
}

/* name in the run folder, written over its spare where spared. */
static graft_status save_checkpoint(trainer *t, const char *name, bool spare) {
    char path[4096], spare_path[4096];
    path_in(t, name, path, sizeof path);
    spare_in(t, name, spare_path, sizeof spare_path);
    graft_checkpoint_meta meta = {
        .arch = (char *)graft_model_arch(t->model),
        .num_classes = graft_model_num_classes(t->model),
        .classes = t->class_names,
        .transform = t->eval_spec,
        .input_shape = {t->chw[0], t->chw[1], t->chw[2]},
        .frozen = t->frozen,
        .nfrozen = t->nfrozen,
        .epoch = t->epoch,
        .save_id = t->save_id,
    };
    return graft_checkpoint_save_over(path, t->model, &meta, spare ? spare_path : NULL, &t->commits);
}

static graft_status save_state(trainer *t) {
    graft_tensor_map *m;
    graft_status s = graft_tensor_map_create(&m);
    if (s) return s;
    char buf[64], path[4096];
    json_t *cj = graft_train_config_to_json(&t->c);
    char *config = cj ? json_dumps(cj, JSON_COMPACT) : NULL;
    json_decref(cj);
    if (!config) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    if (!s) s = graft_optim_state_export(t->optim, "optim.", m);
    int64_t shape[1] = {4};
    graft_tensor *rng;
    if (!s) s = graft_tensor_create(GRAFT_I64, 1, shape, &rng);
    if (!s) {
        uint64_t r[4];
        graft_model_rng_get(t->model, r);
        for (int i = 0; i < 4; i++) ((int64_t *)rng->data)[i] = (int64_t)r[i];
        s = graft_tensor_map_put(m, "rng", rng);
    }
#define META(k, fmt, v)                                              \
    if (!s) {                                                        \
        snprintf(buf, sizeof buf, fmt, v);                           \
        s = graft_tensor_map_set_meta(m, k, buf);                    \
    }
    if (!s) s = graft_tensor_map_set_meta(m, "format", STATE_FORMAT);
    META("save_id", "%lld", (long long)t->save_id)
    META("epoch", "%lld", (long long)t->epoch)
    META("step", "%lld", (long long)t->step)
    META("best_top1", "%.17g", t->best_top1)
    META("train_loss_sum", "%.17g", t->train_m.loss_sum)
    META("train_top1", "%lld", (long long)t->train_m.top1)
    META("train_top5", "%lld", (long long)t->train_m.top5)
    META("train_seen", "%lld", (long long)t->train_m.seen)
#undef META
    if (!s) s = graft_tensor_map_set_meta(m, "config", config);
    if (!s) s = graft_tensor_map_set_meta(m, "metrics_jsonl", t->jsonl.data ? t->jsonl.data : "");
    char spare[4096];
    path_in(t, "last.state.safetensors", path, sizeof path);
    spare_in(t, "last.state.safetensors", spare, sizeof spare);
    if (!s) s = graft_safetensors_save_over(path, m, spare, &t->commits);
    free(config);
    graft_tensor_map_free(m);
    return s;
}

/* last.safetensors then its state, with a new save id, each written over its spare, and
 * where best, best.safetensors: the same bytes as last.safetensors, made another name of
 * that file where the file system has hard links (VGG16's 537 MB are not written and
 * stored twice), else a copy.  A folded layer is unfolded into the model first (fold.h:
 * the origin moves to now).  The files are written here and committed (fsynced and
 * renamed into place, in this order) on a thread while training goes on: the previous
 * save's commits are waited for first, and graft_train waits for the last. */
static graft_status save_last(trainer *t, bool best) {
    graft_status s = graft_commits_wait(&t->commits);
    if (s) return s;
    if ((s = graft_fold_reorigin(&t->fold, t->optim))) return s;
    t->save_id++;
    s = save_checkpoint(t, "last.safetensors", true);
    if (!s) s = save_state(t);
    if (!s && best) {
        char last[4096], best_path[4096];
        path_in(t, "last.safetensors", last, sizeof last);
        path_in(t, "best.safetensors", best_path, sizeof best_path);
        s = graft_commits_add_link(&t->commits, last, best_path); /* the old best freed on that thread */
    }
    graft_commits_start(&t->commits);
    return s;
}

static graft_status write_jsonl(trainer *t) {
    char path[4096];
    path_in(t, "metrics.jsonl", path, sizeof path);
    return graft_atomic_write_file(path, t->jsonl.data ? t->jsonl.data : "", t->jsonl.len);
}

/* ---- the loop ------------------------------------------------------------------------ */

/* seen_before: samples m had counted when this session's part of the epoch started. */
static void report_progress(trainer *t, const char *phase, int64_t step, int64_t steps, const graft_metrics *m,
                            int64_t seen_before, int64_t first_step, double started) {
    if (!t->cb || !t->cb->progress) return;
    double elapsed = graft_now_seconds() - started;
    graft_train_progress p = {
        .epoch = t->epoch + 1,
        .epochs = t->c.epochs,
        .step = step,
        .steps = steps,
        .loss = graft_metrics_loss(m),
        .accuracy = graft_metrics_top1(m),
        .images_per_second = elapsed > 0 ? (double)(m->seen - seen_before) / elapsed : 0,
        .eta_seconds = step > first_step ? elapsed / (double)(step - first_step) * (double)(steps - step) : 0,
        .phase = phase,
    };
    t->cb->progress(t->cb->user, &p);
}

/* Evaluates the model on the test loader into t->test_m. */
static graft_status evaluate(trainer *t) {
    graft_metrics_reset(&t->test_m);
    graft_model_set_training(t->model, 0);
    bool cached = t->cached && t->test_from_cache;
    graft_status s = cached ? GRAFT_OK : graft_loader_start_epoch(t->test_loader, 0);
    int64_t steps = graft_loader_num_batches(t->test_loader), step = 0, row = 0;
    int from = cached ? t->cache.trunk_end : 0;
    double started = graft_now_seconds();
    while (!s) {
        const graft_tensor *x, *y;
        graft_tensor *logits;
        int done = 0;
        if (cached) {
            graft_feature_cache *c = &t->cache;
            int64_t n = c->test.rows - row < t->c.batch_size ? c->test.rows - row : t->c.batch_size;
            if (n <= 0) break;
            int64_t shape[GRAFT_MAX_DIMS + 1] = {n}, lshape[1] = {n};
            for (int i = 0; i < c->ndim; i++) shape[i + 1] = c->dims[i];
            if ((s = graft_tensor_resize(&t->cbatch, c->ndim + 1, shape)) || (s = graft_tensor_resize(&t->clabels, 1, lshape)))
                break;
            memcpy(t->cbatch.data, c->test.data + row * c->feat, (size_t)(n * c->feat) * sizeof(float));
            memcpy(t->clabels.data, c->test.labels + row, (size_t)n * sizeof(int64_t));
            row += n;
            x = &t->cbatch;
            y = &t->clabels;
        } else if ((s = graft_loader_next(t->test_loader, &x, &y, &done)) || done) {
            break;
        }
        if ((s = graft_model_forward_steps(t->model, t->steps, t->nsteps, from, t->nsteps, (graft_tensor *)x, &logits)))
            break;
        int64_t n = x->shape[0], k = logits->shape[1];
        double loss = graft_cross_entropy_smooth_forward_backward(n, k, logits->data, y->data, t->c.label_smoothing, NULL);
        graft_metrics_add(&t->test_m, logits->data, y->data, n, loss);
        report_progress(t, "eval", ++step, steps, &t->test_m, 0, 0, started);
    }
    return s;
}

/* zero_grad, forward (from the cached step on when cached), loss, backward, step. */
static graft_status train_step(trainer *t, const graft_tensor *x, const graft_tensor *y) {
    graft_tensor *logits;
    int from = t->cached ? t->cache.trunk_end : 0;
    graft_model_zero_grad_lazy(t->model);
    if (t->fold.active) /* the folded layer is not in the model's state */
        for (int i = 0; i < t->fold.folded->nparams; i++) graft_param_zero_grad_lazy(&t->fold.folded->params[i]);
    graft_status s = graft_model_forward_steps(t->model, t->steps, t->nsteps, from, t->nsteps, (graft_tensor *)x, &logits);
    if (s) return s;
    int64_t n = logits->shape[0], k = logits->shape[1];
    int64_t shape[2] = {n, k};
    if ((s = graft_tensor_resize(&t->dlogits, 2, shape))) return s;
    double loss = graft_cross_entropy_smooth_forward_backward(n, k, logits->data, y->data, t->c.label_smoothing,
                                                             t->dlogits.data);
    if (!isfinite(loss))
        return graft_error(GRAFT_ERR_INVALID, "non-finite loss (%g) at epoch %lld, step %lld; training stopped, the "
                           "last saved checkpoint is kept", loss, (long long)t->epoch + 1, (long long)t->step + 1);
    graft_metrics_add(&t->train_m, logits->data, y->data, n, loss);
    s = graft_model_backward_steps(t->model, t->steps, t->nsteps, from, &t->dlogits);
    if (t->fold.active)
        for (int i = 0; i < t->fold.folded->nparams; i++) graft_param_grad_settle(&t->fold.folded->params[i]);
    if (s) return s;
    return graft_optim_step(t->optim);
}

/* Batch b of the current epoch from the cache: the loader's order, and per sample the
 * loader's own flip decision choosing the orientation. */
static graft_status cached_batch(trainer *t, int64_t b, const graft_tensor **x, const graft_tensor **y) {
    graft_feature_cache *c = &t->cache;
    int64_t bs = t->c.batch_size, first = b * bs, total = graft_loader_num_samples(t->train_loader);
    int64_t n = total - first < bs ? total - first : bs;
    int64_t shape[GRAFT_MAX_DIMS + 1] = {n};
    for (int i = 0; i < c->ndim; i++) shape[i + 1] = c->dims[i];
    int64_t lshape[1] = {n};
    graft_status s = graft_tensor_resize(&t->cbatch, c->ndim + 1, shape);
    if (!s) s = graft_tensor_resize(&t->clabels, 1, lshape);
    if (s) return s;
    for (int64_t j = 0; j < n; j++) {
        int64_t idx = t->order[first + j];
        const graft_feature_set *set = &c->train;
        if (c->flip) {
            graft_rng r;
            graft_loader_sample_rng(t->train_loader, t->epoch, idx, &r);
            if (graft_transforms_draw_flip(t->train_tf, &r)) set = &c->train_flipped;
        }
        memcpy((float *)t->cbatch.data + j * c->feat, set->data + idx * c->feat, (size_t)c->feat * sizeof(float));
        ((int64_t *)t->clabels.data)[j] = set->labels[idx];
    }
    *x = &t->cbatch;
    *y = &t->clabels;
    return GRAFT_OK;
}

static bool should_stop(trainer *t) {
    if (t->c.max_steps > 0 && t->steps_this_run >= t->c.max_steps) return true;
    return t->cb && t->cb->should_stop && t->cb->should_stop(t->cb->user);
}

/* One epoch of training from batch t->step on.  GRAFT_INTERRUPTED after a save when
 * asked to stop. */
static graft_status train_epoch(trainer *t) {
    graft_model_set_training(t->model, 1);
    graft_status s = graft_optim_apply_schedule(t->optim, &t->sched, t->epoch);
    if (!s) s = graft_loader_start_epoch(t->train_loader, t->epoch);
    int64_t steps = graft_loader_num_batches(t->train_loader);
    const graft_tensor *x, *y;
    int done = 0;
    if (t->cached) {
        graft_loader_epoch_order(t->train_loader, t->epoch, t->order);
    } else {
        for (int64_t skip = 0; !s && skip < t->step; skip++) /* resuming mid-epoch */
            s = graft_loader_next(t->train_loader, &x, &y, &done);
    }
    double started = graft_now_seconds();
    int64_t seen_before = t->train_m.seen, first_step = t->step;
    while (!s) {
        if (t->cached) {
            if (t->step >= steps) break;
            s = cached_batch(t, t->step, &x, &y);
        } else if (!(s = graft_loader_next(t->train_loader, &x, &y, &done)) && done) {
            break;
        }
        if (s || (s = train_step(t, x, y))) break;
        t->step++;
        t->steps_this_run++;
        report_progress(t, "train", t->step, steps, &t->train_m, seen_before, first_step, started);
        if (t->step < steps && should_stop(t)) {
            if ((s = save_last(t, false))) return s;
            return GRAFT_INTERRUPTED;
        }
    }
    return s;
}

static graft_status run_epochs(trainer *t) {
    graft_status s = GRAFT_OK;
    while (!s && t->epoch < t->c.epochs) {
        double started = graft_now_seconds();
        int64_t seen_before = t->train_m.seen;
        if ((s = train_epoch(t))) return s;
        double train_seconds = graft_now_seconds() - started;
        graft_epoch_report r = {
            .epoch = t->epoch + 1,
            .lr = graft_optim_lr(t->optim, 0),
            .train_loss = graft_metrics_loss(&t->train_m),
            .train_accuracy = graft_metrics_top1(&t->train_m),
            .images_per_second = train_seconds > 0 ? (double)(t->train_m.seen - seen_before) / train_seconds : 0,
        };
        if (t->test_loader) {
            if ((s = evaluate(t))) return s;
            r.has_test = 1;
            r.test_loss = graft_metrics_loss(&t->test_m);
            r.test_top1 = graft_metrics_top1(&t->test_m);
            r.test_top5 = graft_metrics_top5(&t->test_m);
        }
        r.seconds = graft_now_seconds() - started;
        t->epoch++;
        t->step = 0;
        graft_metrics_reset(&t->train_m);
        graft_strbuf_printf(&t->jsonl,
                            "{\"epoch\":%lld,\"lr\":%.9g,\"train_loss\":%.9g,\"train_accuracy\":%.9g",
                            (long long)r.epoch, r.lr, r.train_loss, r.train_accuracy);
        if (r.has_test)
            graft_strbuf_printf(&t->jsonl, ",\"test_loss\":%.9g,\"test_top1\":%.9g,\"test_top5\":%.9g", r.test_loss,
                                r.test_top1, r.test_top5);
        graft_strbuf_printf(&t->jsonl, ",\"images_per_s\":%.1f,\"seconds\":%.3f}\n", r.images_per_second, r.seconds);
        if ((s = write_jsonl(t))) return s;
        double score = r.has_test ? r.test_top1 : r.train_accuracy;
        bool best = t->epoch == 1 || score > t->best_top1;
        if (best) t->best_top1 = score;
        if ((s = save_last(t, best))) return s;
        if (t->cb && t->cb->epoch) t->cb->epoch(t->cb->user, &r);
        if (t->epoch < t->c.epochs && should_stop(t)) return GRAFT_INTERRUPTED;
    }
    return s;
}

static void summary(trainer *t) {
    int64_t total, trainable;
    graft_model_param_counts(t->model, &total, &trainable);
    graft_strbuf fr;
    graft_strbuf_init(&fr);
    for (int i = 0; i < t->nfrozen; i++) graft_strbuf_printf(&fr, "%s%s", i ? ", " : "", t->frozen[i]);
    say(t, "model: %s, %lld classes (head %s); %lld parameters: %lld trainable, %lld frozen%s%s%s",
        graft_model_arch(t->model), (long long)graft_model_num_classes(t->model), graft_model_head_path(t->model),
        (long long)total, (long long)trainable, (long long)(total - trainable), fr.data ? " (" : "",
        fr.data ? fr.data : "", fr.data ? ")" : "");
    graft_strbuf_free(&fr);
    char test[64] = "no test split";
    if (t->test_loader)
        snprintf(test, sizeof test, "%s %lld images", t->data->test_name, (long long)graft_source_len(t->data->test));
    say(t, "data: %s; train %lld images, %s; input %dx%dx%d", t->data->where,
        (long long)graft_source_len(t->data->train), test, t->chw[0], t->chw[1], t->chw[2]);
    say(t, "transforms: train \"%s\", eval \"%s\"", t->train_spec, t->eval_spec);
    char sched[256];
    graft_schedule_format(&t->sched, sched, sizeof sched);
    say(t, "optimizer: %s, lr %g%s, schedule %s; batch %lld, %lld epochs, seed %llu, %d threads%s",
        t->c.optimizer ? t->c.optimizer : "sgd", t->c.lr,
        t->c.lr_head >= 0 || t->c.lr_trunk >= 0 ? " (head/trunk groups)" : "", sched, (long long)t->c.batch_size,
        (long long)t->c.epochs, (unsigned long long)t->c.seed, graft_num_threads(),
        t->epoch || t->step ? " (resumed)" : "");
    if (t->epoch || t->step)
        say(t, "resuming at epoch %lld, step %lld", (long long)t->epoch + 1, (long long)t->step);
}

static void trainer_free(trainer *t) {
    for (size_t i = 0; t->c.out_dir && i < sizeof spared / sizeof spared[0]; i++) {
        char spare[4096];
        spare_in(t, spared[i], spare, sizeof spare);
        graft_old_files_remove(&t->replaced, spare); /* one never made: an unlink that fails */
    }
    graft_old_files_release(&t->replaced);
    graft_old_files_wait(&t->replaced);
    graft_optim_free(t->optim);
    graft_loader_free(t->train_loader);
    graft_loader_free(t->test_loader);
    graft_transforms_free(t->train_tf);
    graft_transforms_free(t->eval_tf);
    graft_model_free(t->model);
    graft_data_free(t->data);
    graft_metrics_release(&t->train_m);
    graft_metrics_release(&t->test_m);
    graft_tensor_release(&t->dlogits);
    graft_tensor_release(&t->cbatch);
    graft_tensor_release(&t->clabels);
    graft_feature_cache_free(&t->cache);
    graft_fold_free(&t->fold);
    free(t->order);
    for (int i = 0; i < t->nfrozen; i++) free(t->frozen[i]);
    free(t->frozen);
    free(t->saved_freeze);
    json_decref(t->saved_config);
    graft_strbuf_free(&t->jsonl);
}

graft_status graft_train(const graft_train_config *config, const graft_train_callbacks *callbacks) {
    trainer t;
    memset(&t, 0, sizeof t);
    t.c = *config;
    t.cb = callbacks;
    graft_tensor_init(&t.dlogits, GRAFT_F32);
    graft_tensor_init(&t.cbatch, GRAFT_F32);
    graft_tensor_init(&t.clabels, GRAFT_I64);
    graft_strbuf_init(&t.jsonl);
    graft_tensor_map *state = NULL;
    graft_status s = GRAFT_OK;
    if (t.c.resume_dir) {
        t.c.out_dir = t.c.resume_dir;
        if (!(s = read_state(&t, &state))) s = load_saved_config(&t, state);
    }
    if (!s) s = check_config(&t.c);
    if (!s) s = graft_set_num_threads(t.c.threads);
    if (!s) s = graft_make_dirs(t.c.out_dir);
    if (!s) s = build_data(&t);
    char resume_weights[4096];
    path_in(&t, "last.safetensors", resume_weights, sizeof resume_weights);
    if (!s) s = build_model(&t, state ? resume_weights : NULL);
    if (!s) s = build_loaders(&t);
    if (!s) s = build_optimizer(&t);
    int64_t k = t.model ? graft_model_num_classes(t.model) : 0;
    if (!s && graft_source_num_classes(t.data->train) > k)
        s = graft_error(GRAFT_ERR_INVALID, "--num-classes %lld is fewer than the %lld classes of the data", (long long)k,
                        (long long)graft_source_num_classes(t.data->train));
    if (!s) s = graft_metrics_init(&t.train_m, k);
    if (!s) s = graft_metrics_init(&t.test_m, k);
    if (!s && state) s = restore_state(&t, state);
    graft_tensor_map_free(state);
    if (!s) summary(&t);
    /* the frozen trunk's weights stay as loaded: its convolutions keep their transforms
       between batches, while the cache is filled or, without it, for the whole run */
    if (!s) graft_model_hold_frozen_weights(t.model, true);
    if (!s) s = setup_cache(&t);
    if (!s && t.cached) graft_model_hold_frozen_weights(t.model, false); /* the trunk does not run again */
    if (!s) say(&t, "folding: %s", t.fold.note);
    if (!s) say(&t, "feature cache: %s", t.cache_note);
    if (!s) s = run_epochs(&t);
    const char *split = t.data ? t.data->test_name : "test";
    if (!s && !t.test_loader) { /* no test split: the final report is on the training data */
        graft_loader_options lo = graft_loader_defaults();
        lo.batch_size = t.c.batch_size;
        lo.workers = t.c.workers;
        lo.strict = t.c.strict != 0;
        split = "training";
        s = graft_loader_create(t.data->train, t.eval_tf, &lo, &t.test_loader);
    }
    if (!s && t.test_m.seen == 0) s = evaluate(&t); /* resumed a finished run, or no test split */
    if (!s) {
        say(&t, "\n%s split: loss %.4f, top-1 %.2f%%, top-5 %.2f%%", split, graft_metrics_loss(&t.test_m),
            100 * graft_metrics_top1(&t.test_m), 100 * graft_metrics_top5(&t.test_m));
        graft_strbuf tables;
        graft_strbuf_init(&tables);
        graft_metrics_tables(&t.test_m, t.class_names, &tables);
        if (tables.data) say(&t, "%s", tables.data);
        graft_strbuf_free(&tables);
        s = graft_metrics_write_csv(&t.test_m, t.class_names, t.c.out_dir);
    }
    graft_status committed = graft_commits_wait(&t.commits); /* the last save's files in place */
    if (!s || s == GRAFT_INTERRUPTED) s = committed ? committed : s;
    trainer_free(&t);
    return s;
}
