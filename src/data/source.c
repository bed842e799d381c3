/* source.c — the source interface, and the two in-memory sources: uint8 datasets and
 * tensors from safetensors files. */
#include "data/source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/tensor.h"

#define CLASS_NAME_BYTES 24 /* "9223372036854775807" and a NUL */
#define PIXEL_MAX 255

/* ---- the interface -------------------------------------------------------------- */

void graft_source_work_release(graft_source_work *w) {
    graft_image_release(&w->image);
    free(w->file);
    w->file = NULL;
    w->file_cap = 0;
}

int64_t graft_source_len(const graft_source *s) { return s->n; }
int64_t graft_source_num_classes(const graft_source *s) { return s->num_classes; }
graft_sample_kind graft_source_kind(const graft_source *s) { return s->kind; }
const char *graft_source_name(const graft_source *s) { return s->name; }

const char *graft_source_class_name(const graft_source *s, int64_t k) {
    return k >= 0 && k < s->num_classes ? s->classes[k] : "";
}

int64_t graft_source_label(const graft_source *s, int64_t i) { return s->ops->label(s, i); }

void graft_source_shape(const graft_source *s, int64_t i, int *c, int *h, int *w) {
    s->ops->shape(s, i, c, h, w);
}

const char *graft_source_path(const graft_source *s, int64_t i) {
    return s->ops->path ? s->ops->path(s, i) : NULL;
}

int64_t graft_source_skipped(const graft_source *s) {
    return s->ops->skipped ? s->ops->skipped(s) : 0;
}

graft_status graft_source_get(const graft_source *s, int64_t i, graft_source_work *w,
                              graft_sample *out) {
    if (i < 0 || i >= s->n)
        return graft_error(GRAFT_ERR_INVALID, "%s: sample %lld is outside 0..%lld", s->name,
                           (long long)i, (long long)s->n - 1);
    return s->ops->get(s, i, w, out);
}

void graft_source_class_counts(const graft_source *s, int64_t *counts) {
    memset(counts, 0, sizeof *counts * (size_t)s->num_classes);
    for (int64_t i = 0; i < s->n; i++) {
        int64_t y = graft_source_label(s, i);
        if (y >= 0 && y < s->num_classes) counts[y]++;
    }
}

static void free_names(char **names, int64_t n) {
    if (!names) return;
    for (int64_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

void graft_source_free(graft_source *s) {
    if (!s) return;
    if (s->ops && s->ops->free_impl) s->ops->free_impl(s->impl);
    free_names(s->classes, s->num_classes);
    free(s->name);
    free(s);
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

graft_status graft_source_new(const graft_source_ops *ops, void *impl, graft_sample_kind kind,
                              int64_t n, int64_t num_classes, const char *const *classes,
                              const char *name, graft_source **out) {
    *out = NULL;
    graft_source *s = calloc(1, sizeof *s);
    if (!s) {
        ops->free_impl(impl);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    s->ops = ops;
    s->impl = impl;
    s->kind = kind;
    s->n = n;
    s->name = dup_str(name ? name : "");
    s->classes = calloc(num_classes > 0 ? (size_t)num_classes : 1, sizeof *s->classes);
    bool ok = s->name && s->classes;
    if (ok) s->num_classes = num_classes;
    for (int64_t k = 0; ok && k < num_classes; k++) {
        char num[CLASS_NAME_BYTES];
        snprintf(num, sizeof num, "%lld", (long long)k);
        s->classes[k] = dup_str(classes && classes[k] ? classes[k] : num);
        ok = s->classes[k] != NULL;
    }
    if (!ok) {
        graft_source_free(s);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    *out = s;
    return GRAFT_OK;
}

/* ---- uint8 datasets ----------------------------------------------------------------- */

static graft_status dataset_get(const graft_source *s, int64_t i, graft_source_work *w,
                                graft_sample *out) {
    (void)w;
    const graft_dataset *d = s->impl;
    out->image = graft_dataset_image(d, i);
    out->tensor = NULL;
    out->c = d->c;
    out->h = d->h;
    out->w = d->w;
    out->label = d->labels[i];
    return GRAFT_OK;
}

static int64_t dataset_label(const graft_source *s, int64_t i) {
    return ((const graft_dataset *)s->impl)->labels[i];
}

static void dataset_shape(const graft_source *s, int64_t i, int *c, int *h, int *w) {
    (void)i;
    const graft_dataset *d = s->impl;
    *c = d->c;
    *h = d->h;
    *w = d->w;
}

static void dataset_free(void *impl) { graft_dataset_free(impl); }

static const graft_source_ops DATASET_OPS = {dataset_get, dataset_label, dataset_shape, NULL, NULL,
                                             dataset_free};

graft_status graft_source_from_dataset(graft_dataset *d, const char *name, graft_source **out) {
    return graft_source_new(&DATASET_OPS, d, GRAFT_SAMPLE_IMAGE, d->n, d->num_classes,
                            (const char *const *)d->classes, name, out);
}

/* ---- float tensors ---------------------------------------------------------------- */

typedef struct tensor_set {
    float *images;   /* [n, c, h, w] */
    int64_t *labels; /* [n] */
    int c, h, w;
} tensor_set;

static graft_status tensor_get(const graft_source *s, int64_t i, graft_source_work *w,
                               graft_sample *out) {
    (void)w;
    const tensor_set *t = s->impl;
    memset(&out->image, 0, sizeof out->image);
    out->tensor = t->images + (size_t)i * (size_t)t->c * (size_t)t->h * (size_t)t->w;
    out->c = t->c;
    out->h = t->h;
    out->w = t->w;
    out->label = t->labels[i];
    return GRAFT_OK;
}

static int64_t tensor_label(const graft_source *s, int64_t i) {
    return ((const tensor_set *)s->impl)->labels[i];
}

static void tensor_shape(const graft_source *s, int64_t i, int *c, int *h, int *w) {
    (void)i;
    const tensor_set *t = s->impl;
    *c = t->c;
    *h = t->h;
    *w = t->w;
}

static void tensor_free(void *impl) {
    tensor_set *t = impl;
    if (!t) return;
    free(t->images);
    free(t->labels);
    free(t);
}

static const graft_source_ops TENSOR_OPS = {tensor_get, tensor_label, tensor_shape, NULL, NULL,
                                            tensor_free};

/* Labels: int64 [n], non-negative; *num_classes becomes max + 1 when it is 0, else
 * every label must be below it. */
static graft_status check_labels(const graft_tensor *labels, int64_t n, int64_t *num_classes,
                                 const char *name) {
    if (labels->dtype != GRAFT_I64 || labels->ndim != 1 || labels->shape[0] != n)
        return graft_error(GRAFT_ERR_FORMAT, "%s: labels must be int64 [%lld]", name,
                           (long long)n);
    const int64_t *y = labels->data;
    int64_t top = -1;
    for (int64_t i = 0; i < n; i++) {
        if (y[i] < 0 || (*num_classes > 0 && y[i] >= *num_classes))
            return graft_error(GRAFT_ERR_FORMAT, "%s: label %lld of sample %lld is outside "
                                                 "0..%lld", name, (long long)y[i], (long long)i,
                               (long long)(*num_classes > 0 ? *num_classes - 1 : INT64_MAX));
        if (y[i] > top) top = y[i];
    }
    if (*num_classes == 0) *num_classes = top + 1;
    if (*num_classes > GRAFT_SOURCE_MAX_CLASSES)
        return graft_error(GRAFT_ERR_FORMAT, "%s: %lld classes is more than the %d graft takes",
                           name, (long long)*num_classes, GRAFT_SOURCE_MAX_CLASSES);
    return GRAFT_OK;
}

static bool side_ok(int64_t v) { return v >= 1 && v <= GRAFT_IMAGE_MAX_SIDE; }

graft_status graft_source_from_tensors(const graft_tensor *images, const graft_tensor *labels,
                                       int64_t num_classes, const char *const *classes,
                                       const char *name, graft_source **out) {
    *out = NULL;
    if (images->ndim != 4)
        return graft_error(GRAFT_ERR_FORMAT, "%s: images must be float32 [N, C, H, W] or uint8 "
                                             "[N, H, W, C], not %d-dimensional", name,
                           images->ndim);
    int64_t n = images->shape[0];
    if (n < 1) return graft_error(GRAFT_ERR_FORMAT, "%s: no images", name);
    graft_status s = check_labels(labels, n, &num_classes, name);
    if (s) return s;
    const int64_t *shp = images->shape;
    if (images->dtype == GRAFT_F32) {
        if (shp[1] < 1 || shp[1] > 4 || !side_ok(shp[2]) || !side_ok(shp[3]) ||
            shp[2] * shp[3] > GRAFT_IMAGE_MAX_PIXELS)
            return graft_error(GRAFT_ERR_FORMAT, "%s: float images [%lld, %lld, %lld, %lld] are "
                                                 "not [N, C, H, W] with C <= 4",
                               name, (long long)shp[0], (long long)shp[1], (long long)shp[2],
                               (long long)shp[3]);
        tensor_set *t = calloc(1, sizeof *t);
        size_t floats = (size_t)graft_tensor_numel(images);
        if (t) {
            t->c = (int)shp[1];
            t->h = (int)shp[2];
            t->w = (int)shp[3];
            t->images = malloc(floats * sizeof *t->images);
            t->labels = malloc((size_t)n * sizeof *t->labels);
        }
        if (!t || !t->images || !t->labels) {
            tensor_free(t);
            return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", name);
        }
        memcpy(t->images, images->data, floats * sizeof *t->images);
        memcpy(t->labels, labels->data, (size_t)n * sizeof *t->labels);
        return graft_source_new(&TENSOR_OPS, t, GRAFT_SAMPLE_TENSOR, n, num_classes, classes,
                                name, out);
    }
    /* int64 [N, H, W, C]: pixels that were U8 in the file */
    if ((shp[3] != 1 && shp[3] != 3) || !side_ok(shp[1]) || !side_ok(shp[2]) ||
        shp[1] * shp[2] > GRAFT_IMAGE_MAX_PIXELS)
        return graft_error(GRAFT_ERR_FORMAT, "%s: integer images [%lld, %lld, %lld, %lld] are not "
                                             "[N, H, W, C] with C = 1 or 3",
                           name, (long long)shp[0], (long long)shp[1], (long long)shp[2],
                           (long long)shp[3]);
    graft_dataset *d = calloc(1, sizeof *d);
    size_t bytes = (size_t)graft_tensor_numel(images);
    if (d) {
        d->n = n;
        d->h = (int)shp[1];
        d->w = (int)shp[2];
        d->c = (int)shp[3];
        d->images = malloc(bytes);
        d->labels = malloc((size_t)n * sizeof *d->labels);
    }
    if (!d || !d->images || !d->labels) {
        graft_dataset_free(d);
        return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", name);
    }
    const int64_t *px = images->data;
    for (size_t i = 0; i < bytes; i++) {
        if (px[i] < 0 || px[i] > PIXEL_MAX) {
            graft_dataset_free(d);
            return graft_error(GRAFT_ERR_FORMAT, "%s: integer image value %lld is outside 0..255",
                               name, (long long)px[i]);
        }
        d->images[i] = (uint8_t)px[i];
    }
    memcpy(d->labels, labels->data, (size_t)n * sizeof *d->labels);
    d->num_classes = 0; /* names are the source's; the dataset keeps none */
    return graft_source_new(&DATASET_OPS, d, GRAFT_SAMPLE_IMAGE, n, num_classes, classes, name,
                            out);
}
