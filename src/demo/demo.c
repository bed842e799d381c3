/* demo.c — `graft demo` (see demo.h): the K-shot training file, three graft_train runs,
 * one evaluation of each, results.tsv and the report.
 *
 * The recipe (graft_demo_defaults) was chosen on a validation split, never on the test
 * split: bench/demo_tune.sh runs the demo with --validate, which trains on K images drawn
 * from the target classes' training images less the last DEMO_VAL_PER_CLASS of each class
 * and evaluates on those held-out images, over a small grid of learning rates, schedules,
 * epochs, augmentations and frozen prefixes, for several seeds; each method takes its
 * best (docs/demo.md has the tables). */
#include "demo/demo.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/error.h"
#include "core/strbuf.h"
#include "core/tensor.h"
#include "data/loader.h"
#include "data/source.h"
#include "data/spec.h"
#include "data/transforms.h"
#include "io/atomic_file.h"
#include "io/fs.h"
#include "train/checkpoint.h"

#define DEMO_TARGET_CLASSES "0,2,3,4,6" /* T-shirt/top, Pullover, Dress, Coat, Shirt */
#define DEMO_VAL_PER_CLASS 1000         /* held-out training images per class with validate */
#define DEMO_EVAL_BATCH 250
#define PATH_BYTES 4096
#define GRAFT_DEMO_MAX_FREEZE 64

static const char *const METHOD_NAMES[GRAFT_DEMO_METHODS] = {"scratch", "transfer", "fine-tune"};

graft_demo_options graft_demo_defaults(void) {
    return (graft_demo_options){
        .data = "fashion-mnist",
        .target_classes = DEMO_TARGET_CLASSES,
        .sweep_k = "1,5,20,100",
        .k = 5,
        .epochs = 5,
        .transfer_epochs = 20,
        .finetune_epochs = 3,
        .epoch_images = 320,
        .batch_size = 32,
        .lr_scratch = 1e-3,
        .lr_transfer = 1e-2,
        .lr_finetune = 1e-4,
        .schedule = "constant,cosine,cosine",
        .freeze = "features",
        .transform = "hflip",
    };
}

const char *graft_demo_method_name(int method) {
    return method >= 0 && method < GRAFT_DEMO_METHODS ? METHOD_NAMES[method] : "?";
}

int graft_demo_best_method(const graft_demo_k_result *run) {
    int best = 0;
    for (int m = 1; m < GRAFT_DEMO_METHODS; m++)
        if (run->method[m].accuracy > run->method[best].accuracy) best = m;
    return best;
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static char **dup_names(char *const *names, int64_t n) {
    char **out = calloc((size_t)n, sizeof *out);
    for (int64_t i = 0; out && i < n; i++)
        if (!(out[i] = dup_str(names[i]))) {
            while (i-- > 0) free(out[i]);
            free(out);
            out = NULL;
        }
    return out;
}

static void free_names(char **names, int64_t n) {
    for (int64_t i = 0; names && i < n; i++) free(names[i]);
    free(names);
}

/* ---- a view: some samples of a source that stays owned elsewhere ---------------------- */

typedef struct view {
    const graft_source *base; /* borrowed */
    int64_t *index;           /* [n] samples of base, owned */
} view;

static graft_status view_get(const graft_source *s, int64_t i, graft_source_work *w, graft_sample *out) {
    const view *v = s->impl;
    return graft_source_get(v->base, v->index[i], w, out);
}
static int64_t view_label(const graft_source *s, int64_t i) {
    const view *v = s->impl;
    return graft_source_label(v->base, v->index[i]);
}
static void view_shape(const graft_source *s, int64_t i, int *c, int *h, int *w) {
    const view *v = s->impl;
    graft_source_shape(v->base, v->index[i], c, h, w);
}
static void view_free(void *impl) {
    view *v = impl;
    if (v) free(v->index);
    free(v);
}
static const graft_source_ops VIEW_OPS = {view_get, view_label, view_shape, NULL, NULL, view_free};

/* Whether to keep the sample of rank `rank` (in dataset order) among the `count` samples
 * of its class. */
typedef bool (*view_rule)(int64_t rank, int64_t count, int64_t arg);

static bool rule_all_but_last(int64_t rank, int64_t count, int64_t arg) { return rank < count - arg; }
static bool rule_last(int64_t rank, int64_t count, int64_t arg) { return rank >= count - arg; }

/* The samples of base that rule keeps (all when rule is NULL), at most limit (> 0) of
 * them, in base's order. */
static graft_status make_view(const graft_source *base, view_rule rule, int64_t arg, int64_t limit, const char *name,
                              graft_source **out) {
    *out = NULL;
    int64_t n = graft_source_len(base), k = graft_source_num_classes(base);
    int64_t *count = calloc((size_t)k, sizeof *count), *rank = calloc((size_t)k, sizeof *rank);
    view *v = calloc(1, sizeof *v);
    if (v) v->index = malloc((size_t)(n ? n : 1) * sizeof *v->index);
    if (!count || !rank || !v || !v->index) {
        free(count);
        free(rank);
        view_free(v);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    v->base = base;
    graft_source_class_counts(base, count);
    int64_t kept = 0;
    for (int64_t i = 0; i < n && (limit <= 0 || kept < limit); i++) {
        int64_t y = graft_source_label(base, i);
        if (!rule || rule(rank[y], count[y], arg)) v->index[kept++] = i;
        rank[y]++;
    }
    free(count);
    free(rank);
    const char *const *names = (const char *const *)base->classes;
    return graft_source_new(&VIEW_OPS, v, graft_source_kind(base), kept, k, names, name, out);
}

/* ---- the data ------------------------------------------------------------------------ */

typedef struct demo {
    const graft_demo_options *o;
    const graft_demo_callbacks *cb;
    const char *arch;            /* the source model's architecture */
    char *freeze[GRAFT_DEMO_MAX_FREEZE]; /* what transfer freezes, as module prefixes */
    int nfreeze;
    graft_data *data;            /* the target classes of o->data */
    graft_source *pool;          /* where the K-shot images are drawn from (a view) */
    graft_source *eval;          /* what every method is evaluated on (a view) */
    /* the method in progress */
    graft_demo_method *m;
    int64_t epoch_samples;       /* samples in one training epoch */
    int64_t cap;                 /* of m->step_loss */
    double prev_sum;             /* loss summed over the epoch's earlier steps */
    int64_t prev_seen;
    bool out_of_memory;          /* a step's loss could not be kept */
    bool cosine[GRAFT_DEMO_METHODS]; /* o->schedule per method */
} demo;

/* "cosine" or "constant" for every method, or three of them separated by commas. */
graft_status graft_demo_parse_schedules(const char *spec, bool cosine[GRAFT_DEMO_METHODS]) {
    const char *p = spec;
    for (int m = 0; m < GRAFT_DEMO_METHODS; m++) {
        size_t n = strcspn(p, ",");
        if (n == 6 && !strncmp(p, "cosine", 6)) cosine[m] = true;
        else if (n == 8 && !strncmp(p, "constant", 8)) cosine[m] = false;
        else break;
        if (m == 0 && !p[n]) { /* one value for all */
            for (int j = 1; j < GRAFT_DEMO_METHODS; j++) cosine[j] = cosine[0];
            return GRAFT_OK;
        }
        if (m == GRAFT_DEMO_METHODS - 1 && !p[n]) return GRAFT_OK;
        if (!p[n]) break;
        p += n + 1;
    }
    return graft_error(GRAFT_ERR_INVALID, "--schedule: '%s' is not cosine|constant, once or for each of the %d methods",
                       spec, GRAFT_DEMO_METHODS);
}

static void stage(demo *d, int64_t k, int method, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void stage(demo *d, int64_t k, int method, const char *fmt, ...) {
    if (!d->cb || !d->cb->stage) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    d->cb->stage(d->cb->user, k, method, line);
}

static graft_status open_data(demo *d) {
    const graft_demo_options *o = d->o;
    graft_data_options dopt = {.classes = o->target_classes};
    graft_status s = graft_data_open(o->data, &dopt, &d->data);
    if (s) return graft_error_prefix(s, "--data");
    if (!o->validate && (!d->data->test || graft_source_len(d->data->test) == 0))
        return graft_error(GRAFT_ERR_INVALID, "--data %s has no test split to evaluate on", o->data);
    const graft_source *train = d->data->train;
    if (graft_source_kind(train) != GRAFT_SAMPLE_IMAGE)
        return graft_error(GRAFT_ERR_UNSUPPORTED, "--data %s: the demo needs images, not float tensors", o->data);
    if (o->validate) {
        if ((s = make_view(train, rule_all_but_last, DEMO_VAL_PER_CLASS, 0, "training images less the validation ones",
                           &d->pool)))
            return s;
        return make_view(train, rule_last, DEMO_VAL_PER_CLASS, o->eval_limit, "validation images", &d->eval);
    }
    if ((s = make_view(train, NULL, 0, 0, "training images", &d->pool))) return s;
    return make_view(d->data->test, NULL, 0, o->eval_limit, "test images", &d->eval);
}

/* The K-shot set of run k, repeated so that an epoch holds at least epoch_images
 * samples, as a tensors file: images uint8 [N, H, W, C] (stored as I64, the only
 * integer type graft writes), labels [N], the class names as metadata. */
static graft_status write_training_file(demo *d, int64_t k, const char *path) {
    const graft_demo_options *o = d->o;
    graft_source *pool_copy, *kshot = NULL;
    /* graft_source_per_class takes ownership of its base: give it a fresh view of the pool */
    graft_status s = make_view(d->pool, NULL, 0, 0, graft_source_name(d->pool), &pool_copy);
    if (!s) s = graft_source_per_class(pool_copy, k, o->seed, &kshot);
    if (s) return graft_error_prefix(s, "--k %lld", (long long)k);
    int64_t n = graft_source_len(kshot);
    int64_t repeat = (o->epoch_images + n - 1) / n;
    if (repeat < 1) repeat = 1;
    int c, h, w;
    graft_source_shape(kshot, 0, &c, &h, &w);
    graft_tensor *images = NULL, *labels = NULL;
    graft_tensor_map *m = NULL;
    int64_t ishape[4] = {n * repeat, h, w, c}, lshape[1] = {n * repeat};
    if (!s) s = graft_tensor_create(GRAFT_I64, 4, ishape, &images);
    if (!s) s = graft_tensor_create(GRAFT_I64, 1, lshape, &labels);
    if (!s) s = graft_tensor_map_create(&m);
    graft_source_work work = {0};
    size_t pixels = (size_t)h * (size_t)w * (size_t)c;
    for (int64_t i = 0; !s && i < n; i++) {
        graft_sample x;
        if ((s = graft_source_get(kshot, i, &work, &x))) break;
        if ((size_t)x.h * (size_t)x.w * (size_t)x.c != pixels) {
            s = graft_error(GRAFT_ERR_SHAPE, "%s: images of different sizes", graft_source_name(kshot));
            break;
        }
        for (int64_t r = 0; r < repeat; r++) {
            int64_t *dst = (int64_t *)images->data + (size_t)(r * n + i) * pixels;
            for (size_t p = 0; p < pixels; p++) dst[p] = x.image.data[p];
            ((int64_t *)labels->data)[r * n + i] = x.label;
        }
    }
    graft_source_work_release(&work);
    graft_strbuf names;
    graft_strbuf_init(&names);
    for (int64_t i = 0; i < graft_source_num_classes(kshot); i++)
        graft_strbuf_printf(&names, "%s%s", i ? "\n" : "", graft_source_class_name(kshot, i));
    if (!s && names.failed) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    if (!s) s = graft_tensor_map_put(m, "images", images), images = NULL;
    if (!s) s = graft_tensor_map_put(m, "labels", labels), labels = NULL;
    if (!s) s = graft_tensor_map_set_meta(m, "classes", names.data);
    if (!s) s = graft_safetensors_save(path, m);
    d->epoch_samples = n * repeat;
    graft_strbuf_free(&names);
    graft_tensor_free(images);
    graft_tensor_free(labels);
    graft_tensor_map_free(m);
    graft_source_free(kshot);
    return s;
}

/* ---- training ------------------------------------------------------------------------ */

static graft_status push_loss(demo *d, double loss) {
    graft_demo_method *m = d->m;
    if (m->steps == d->cap) {
        int64_t cap = d->cap ? 2 * d->cap : 64;
        double *grown = realloc(m->step_loss, (size_t)cap * sizeof *grown);
        if (!grown) {
            d->out_of_memory = true;
            return GRAFT_ERR_NOMEM;
        }
        m->step_loss = grown;
        d->cap = cap;
    }
    m->step_loss[m->steps++] = loss;
    return GRAFT_OK;
}

/* graft_train reports the running mean loss over the epoch's samples after every
 * step; the step's own loss is the difference of the running sums. */
static void on_train_progress(void *user, const graft_train_progress *p) {
    demo *d = user;
    if (!strcmp(p->phase, "train")) {
        if (p->step == 1) d->prev_sum = 0, d->prev_seen = 0;
        int64_t seen = p->step * d->o->batch_size;
        if (seen > d->epoch_samples) seen = d->epoch_samples;
        double sum = p->loss * (double)seen;
        if (seen > d->prev_seen) push_loss(d, (sum - d->prev_sum) / (double)(seen - d->prev_seen));
        d->prev_sum = sum;
        d->prev_seen = seen;
    }
    if (d->cb && d->cb->progress) d->cb->progress(d->cb->user, p);
}

static graft_status train_method(demo *d, int method, const char *train_spec, const char *dir, const char *weights) {
    const graft_demo_options *o = d->o;
    graft_train_config c = graft_train_defaults();
    c.data = train_spec;
    c.transform = o->transform;
    c.batch_size = o->batch_size;
    c.optimizer = "adam";
    c.seed = o->seed;
    c.threads = o->threads;
    c.out_dir = dir;
    c.epochs = o->epochs;
    switch (method) {
    case 0: c.lr = o->lr_scratch; break;
    case 1:
        c.lr = o->lr_transfer;
        c.epochs = o->transfer_epochs;
        c.freeze = (const char *const *)d->freeze;
        c.nfreeze = d->nfreeze;
        break;
    default:
        c.lr = o->lr_finetune;
        c.epochs = o->finetune_epochs;
        break;
    }
    c.weights = weights;
    c.arch = d->arch;
    char schedule[64] = "constant";
    if (d->cosine[method]) snprintf(schedule, sizeof schedule, "cosine:t_max=%lld", (long long)c.epochs);
    c.schedule = schedule;
    graft_train_callbacks tcb = {.progress = on_train_progress, .user = d};
    double start = graft_now_seconds();
    graft_status s = graft_train(&c, &tcb);
    d->m->train_seconds = graft_now_seconds() - start;
    if (!s && d->out_of_memory) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    return s;
}

/* Transfer's starting point: the source weights with a fresh head for the target
 * classes (nn.Linear's default initialisation, seeded).  A fresh head is needed even
 * when the class counts agree, or the source's head would be loaded as it is. */
static graft_status write_transfer_init(demo *d, int64_t classes, const char *path) {
    graft_model *m;
    graft_checkpoint_meta meta;
    graft_status s = graft_checkpoint_load(d->o->source_model, &m, &meta);
    if (s) return graft_error_prefix(s, "--source");
    graft_checkpoint_meta_release(&meta);
    s = graft_model_replace_linear(m, graft_model_head_path(m), classes, d->o->seed);
    if (!s) s = graft_model_save_safetensors(m, path);
    graft_model_free(m);
    return s;
}

/* o->freeze as module prefixes of m: "features", or for "trunk" every module with
 * parameters outside the head, by its top-level name where that does not hold the head
 * ("features", "classifier.0", "classifier.3" for VGG).  graft train's own --freeze trunk
 * is not used: its checkpoints record the word "trunk", which loading does not expand. */
static graft_status freeze_prefixes(demo *d, const graft_model *m) {
    if (strcmp(d->o->freeze, "trunk")) {
        if (!(d->freeze[0] = dup_str(d->o->freeze))) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
        d->nfreeze = 1;
        return GRAFT_OK;
    }
    const char *head = graft_model_head_path(m);
    size_t head_len = strlen(head);
    for (size_t i = 0; i < graft_model_state_size(m); i++) {
        const char *name = graft_model_state_name(m, i);
        if (graft_model_param_trainable(m, name) < 0) continue; /* a buffer */
        char prefix[256];
        snprintf(prefix, sizeof prefix, "%s", name);
        char *dot = strrchr(prefix, '.');
        if (dot) *dot = 0; /* the module owning the parameter */
        if (!strncmp(prefix, head, head_len) && (prefix[head_len] == 0 || prefix[head_len] == '.')) continue;
        size_t top = strcspn(prefix, ".");
        if (strncmp(head, prefix, top) || head[top] != '.') prefix[top] = 0; /* the head lives elsewhere */
        bool known = false;
        for (int j = 0; j < d->nfreeze && !known; j++) known = !strcmp(d->freeze[j], prefix);
        if (known) continue;
        if (d->nfreeze == GRAFT_DEMO_MAX_FREEZE) return graft_error(GRAFT_ERR_UNSUPPORTED, "--freeze trunk: too many modules");
        if (!(d->freeze[d->nfreeze] = dup_str(prefix))) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
        d->nfreeze++;
    }
    return GRAFT_OK;
}

/* ---- evaluation ---------------------------------------------------------------------- */

static graft_status evaluate(demo *d, const char *checkpoint, int64_t num_classes) {
    graft_demo_method *m = d->m;
    graft_model *model = NULL;
    graft_checkpoint_meta meta;
    graft_transforms *tf = NULL;
    graft_loader *loader = NULL;
    graft_status s = graft_checkpoint_load(checkpoint, &model, &meta);
    if (s) return s;
    int64_t n = graft_source_len(d->eval);
    m->confusion = calloc((size_t)(num_classes * num_classes), sizeof *m->confusion);
    m->predicted = malloc((size_t)(n ? n : 1) * sizeof *m->predicted);
    if (!m->confusion || !m->predicted) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    if (!s && meta.num_classes != num_classes)
        s = graft_error(GRAFT_ERR_SHAPE, "%s predicts %lld classes, not %lld", checkpoint, (long long)meta.num_classes,
                        (long long)num_classes);
    if (!s && meta.transform && meta.transform[0]) s = graft_transforms_parse(meta.transform, &tf);
    graft_loader_options lo = graft_loader_defaults();
    lo.batch_size = DEMO_EVAL_BATCH;
    if (!s) s = graft_loader_create(d->eval, tf, &lo, &loader);
    if (!s) s = graft_loader_start_epoch(loader, 0);
    graft_model_set_training(model, 0);
    int64_t steps = s ? 0 : graft_loader_num_batches(loader), step = 0, seen = 0, correct = 0;
    double started = graft_now_seconds();
    while (!s) {
        const graft_tensor *x, *y, *logits;
        int done;
        if ((s = graft_loader_next(loader, &x, &y, &done)) || done) break;
        if ((s = graft_model_forward(model, x, &logits))) break;
        const float *z = logits->data;
        const int64_t *labels = y->data;
        for (int64_t j = 0; j < x->shape[0]; j++) {
            int64_t best = 0;
            for (int64_t c = 1; c < num_classes; c++)
                if (z[j * num_classes + c] > z[j * num_classes + best]) best = c;
            m->predicted[graft_loader_batch_index(loader, j)] = best;
            m->confusion[labels[j] * num_classes + best]++;
            correct += best == labels[j];
            seen++;
        }
        if (d->cb && d->cb->progress) {
            double t = graft_now_seconds() - started;
            graft_train_progress p = {.epoch = 1, .epochs = 1, .step = ++step, .steps = steps,
                                      .accuracy = (double)correct / (double)seen,
                                      .images_per_second = t > 0 ? (double)seen / t : 0,
                                      .eta_seconds = t / (double)step * (double)(steps - step), .phase = "eval"};
            d->cb->progress(d->cb->user, &p);
        }
    }
    if (!s) m->accuracy = seen ? (double)correct / (double)seen : 0;
    graft_loader_free(loader);
    graft_transforms_free(tf);
    graft_model_free(model);
    graft_checkpoint_meta_release(&meta);
    return s;
}

/* ---- one K: three methods -------------------------------------------------------------- */

static graft_status join(char *buf, const char *dir, const char *name) {
    int n = snprintf(buf, PATH_BYTES, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_BYTES) return graft_error(GRAFT_ERR_INVALID, "--out: path too long");
    return GRAFT_OK;
}

static graft_status run_k(demo *d, graft_demo_k_result *run, const char *dir) {
    char file[PATH_BYTES], spec[PATH_BYTES + 16], method_dir[GRAFT_DEMO_METHODS][PATH_BYTES], ckpt[PATH_BYTES];
    graft_status s = graft_make_dirs(dir);
    if (!s) s = join(file, dir, "train.safetensors");
    if (s) return s;
    stage(d, run->k, -1, "K = %lld: drawing %lld labelled images per class (seed %llu)", (long long)run->k,
          (long long)run->k, (unsigned long long)d->o->seed);
    if ((s = write_training_file(d, run->k, file))) return s;
    snprintf(spec, sizeof spec, "tensors:%s", file);
    int64_t classes = graft_source_num_classes(d->eval);
    for (int m = 0; m < GRAFT_DEMO_METHODS && !s; m++) {
        d->m = &run->method[m];
        d->cap = 0;
        if ((s = join(method_dir[m], dir, METHOD_NAMES[m]))) break;
        const char *weights = m == 0 ? NULL : ckpt;
        if (m == 1 && (s = join(ckpt, dir, "transfer-init.safetensors"))) break;
        if (m == 1 && (s = write_transfer_init(d, classes, ckpt))) break;
        if (m == 2 && (s = join(ckpt, method_dir[1], "last.safetensors"))) break;
        stage(d, run->k, m, "K = %lld: (%c) %s", (long long)run->k, 'a' + m, METHOD_NAMES[m]);
        if ((s = train_method(d, m, spec, method_dir[m], weights))) break;
        char last[PATH_BYTES];
        if ((s = join(last, method_dir[m], "last.safetensors"))) break;
        s = evaluate(d, last, classes);
    }
    return s;
}

/* "1,5,20,100" into ks (at most GRAFT_DEMO_MAX_RUNS values, each positive). */
static graft_status parse_sweep(const char *list, int64_t *ks, int64_t *n) {
    *n = 0;
    const char *p = list ? list : "";
    while (*p) {
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || v < 1 || (*end && *end != ',') || *n == GRAFT_DEMO_MAX_RUNS)
            return graft_error(GRAFT_ERR_INVALID, "--sweep-k: '%s' is not a list of at most %d positive integers",
                               list, GRAFT_DEMO_MAX_RUNS);
        ks[(*n)++] = v;
        p = *end ? end + 1 : end;
    }
    if (*n == 0) return graft_error(GRAFT_ERR_INVALID, "--sweep-k: no values");
    return GRAFT_OK;
}

/* ---- results ------------------------------------------------------------------------- */

static graft_status write_tsv(const graft_demo_result *r, const graft_demo_options *o, const char *path) {
    graft_strbuf sb;
    graft_strbuf_init(&sb);
    graft_strbuf_printf(&sb, "k\tseed\tmethod\t%s_accuracy\ttrain_seconds\n", r->eval_name);
    for (int64_t i = 0; i < r->nruns; i++)
        for (int m = 0; m < GRAFT_DEMO_METHODS; m++)
            graft_strbuf_printf(&sb, "%lld\t%llu\t%s\t%.4f\t%.2f\n", (long long)r->runs[i].k,
                                (unsigned long long)o->seed, METHOD_NAMES[m], r->runs[i].method[m].accuracy,
                                r->runs[i].method[m].train_seconds);
    graft_status s = sb.failed ? graft_error(GRAFT_ERR_NOMEM, "out of memory") : GRAFT_OK;
    if (!s) s = graft_atomic_write_file(path, sb.data, sb.len);
    graft_strbuf_free(&sb);
    return s;
}

static graft_status fill_grid(demo *d, graft_demo_result *r) {
    int64_t n = graft_source_len(d->eval), k = r->num_classes;
    int c = 1, h = 0, w = 0;
    if (n) graft_source_shape(d->eval, 0, &c, &h, &w);
    r->grid_h = h;
    r->grid_w = w;
    r->grid_pixels = malloc((size_t)(k * GRAFT_DEMO_GRID_PER_CLASS) * (size_t)(h * w) + 1);
    r->grid_index = malloc((size_t)(k * GRAFT_DEMO_GRID_PER_CLASS) * sizeof *r->grid_index);
    r->grid_label = malloc((size_t)(k * GRAFT_DEMO_GRID_PER_CLASS) * sizeof *r->grid_label);
    int64_t *taken = calloc((size_t)k, sizeof *taken);
    graft_status s = GRAFT_OK;
    if (!r->grid_pixels || !r->grid_index || !r->grid_label || !taken) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    graft_source_work work = {0};
    /* class by class, so the grid reads as rows of one true class each */
    for (int64_t y = 0; y < k && !s; y++)
        for (int64_t i = 0; i < n && !s && taken[y] < GRAFT_DEMO_GRID_PER_CLASS; i++) {
            if (graft_source_label(d->eval, i) != y) continue;
            graft_sample x;
            if ((s = graft_source_get(d->eval, i, &work, &x))) break;
            if (x.c != 1 || x.h != h || x.w != w) continue; /* the grid shows gray images of one size */
            memcpy(r->grid_pixels + (size_t)r->grid_n * (size_t)(h * w), x.image.data, (size_t)(h * w));
            r->grid_index[r->grid_n] = i;
            r->grid_label[r->grid_n++] = y;
            taken[y]++;
        }
    graft_source_work_release(&work);
    free(taken);
    return s;
}

graft_status graft_demo_run(const graft_demo_options *o, const graft_demo_callbacks *cb, graft_demo_result *r) {
    memset(r, 0, sizeof *r);
    if (!o->source_model) return graft_error(GRAFT_ERR_INVALID, "--source is required");
    if (!o->out_dir) return graft_error(GRAFT_ERR_INVALID, "--out is required");
    if (!o->sweep && o->k < 1) return graft_error(GRAFT_ERR_INVALID, "--k must be positive");
    if (o->epochs < 1 || o->transfer_epochs < 1 || o->finetune_epochs < 1 || o->batch_size < 1 || o->epoch_images < 1)
        return graft_error(GRAFT_ERR_INVALID, "epochs, batch size and epoch images must be positive");
    if (strcmp(o->freeze, "features") && strcmp(o->freeze, "trunk"))
        return graft_error(GRAFT_ERR_INVALID, "--freeze must be 'features' or 'trunk', not '%s'", o->freeze);
    demo d = {.o = o, .cb = cb};
    graft_status s = graft_demo_parse_schedules(o->schedule, d.cosine);
    if (s) return s;
    graft_model *source = NULL;
    graft_checkpoint_meta meta;
    memset(&meta, 0, sizeof meta);
    s = graft_checkpoint_load(o->source_model, &source, &meta);
    if (s) return graft_error_prefix(s, "--source");
    s = freeze_prefixes(&d, source);
    graft_model_free(source);
    r->source_arch = dup_str(meta.arch);
    d.arch = r->source_arch;
    r->source_classes = dup_names(meta.classes, meta.num_classes);
    r->source_num_classes = meta.num_classes;
    graft_checkpoint_meta_release(&meta);
    if (!s && (!r->source_arch || !r->source_classes)) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    if (!s) s = graft_set_num_threads(o->threads);
    if (!s) s = graft_make_dirs(o->out_dir);
    if (!s) {
        stage(&d, 0, -1, "opening %s", o->data);
        s = open_data(&d);
    }
    if (!s) {
        r->num_classes = graft_source_num_classes(d.eval);
        r->classes = dup_names(d.eval->classes, r->num_classes);
        r->eval_name = o->validate ? "validation" : "test";
        r->eval_n = graft_source_len(d.eval);
        if (!r->classes) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
        else if (r->eval_n == 0) s = graft_error(GRAFT_ERR_INVALID, "no images to evaluate on");
    }
    int64_t ks[GRAFT_DEMO_MAX_RUNS] = {o->k}, nk = 1;
    if (!s && o->sweep) s = parse_sweep(o->sweep_k, ks, &nk);
    r->detail = nk - 1;
    for (int64_t i = 0; i < nk && !s; i++) {
        graft_demo_k_result *run = &r->runs[r->nruns++];
        run->k = ks[i];
        if (run->k == o->k) r->detail = i;
        char dir[PATH_BYTES];
        if (o->sweep) {
            char sub[32];
            snprintf(sub, sizeof sub, "k%lld", (long long)run->k);
            s = join(dir, o->out_dir, sub);
        } else {
            snprintf(dir, sizeof dir, "%s", o->out_dir);
        }
        if (!s) s = run_k(&d, run, dir);
    }
    if (!s) s = fill_grid(&d, r);
    char path[PATH_BYTES];
    if (!s) s = join(path, o->out_dir, "results.tsv");
    if (!s) s = write_tsv(r, o, path);
    if (!s) s = join(path, o->out_dir, "report.html");
    if (!s) s = graft_demo_write_report(r, o, path);
    for (int i = 0; i < d.nfreeze; i++) free(d.freeze[i]);
    graft_source_free(d.pool);
    graft_source_free(d.eval);
    graft_data_free(d.data);
    return s;
}

void graft_demo_result_release(graft_demo_result *r) {
    free_names(r->classes, r->num_classes);
    free_names(r->source_classes, r->source_num_classes);
    free(r->source_arch);
    for (int64_t i = 0; i < r->nruns; i++)
        for (int m = 0; m < GRAFT_DEMO_METHODS; m++) {
            free(r->runs[i].method[m].confusion);
            free(r->runs[i].method[m].step_loss);
            free(r->runs[i].method[m].predicted);
        }
    free(r->grid_pixels);
    free(r->grid_index);
    free(r->grid_label);
    memset(r, 0, sizeof *r);
}
