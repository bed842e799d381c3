/* cifar_py.c — CIFAR-10 and CIFAR-100 from torchvision's python-version folders (layout
 * in cifar_py.h).
 *
 * A numpy array in a pickle is the call numpy.core.multiarray._reconstruct(numpy.ndarray,
 * (0,), b'b') followed by BUILD with the state (version, shape, dtype, is_fortran, raw
 * bytes); the dtype is numpy.dtype('u1', False, True) with BUILD state (3, '|', ...)
 * giving the byte order.  Only what numpy itself would accept is accepted: C order,
 * raw bytes of exactly prod(shape) * itemsize. */
#include "data/cifar_py.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "io/pickle.h"

#define CIFAR_SIDE 32
#define CIFAR_CHANNELS 3
#define CIFAR_PLANE (CIFAR_SIDE * CIFAR_SIDE)
#define CIFAR_PIXEL_BYTES (CIFAR_CHANNELS * CIFAR_PLANE) /* 3072 */
#define CIFAR10_CLASSES 10
#define CIFAR100_CLASSES 100
#define FILE_MAX_BYTES (1ull << 30) /* a batch file is 31 MB; CIFAR-100's train 155 MB */
#define NP_MAX_DIMS 8
#define NP_STATE_VERSION 1
#define PATH_BYTES 4096

typedef struct cifar_py_layout {
    const char *dir;
    const char *const *train, *const *test;
    const char *meta, *names_key, *labels_key;
    int64_t num_classes;
} cifar_py_layout;

static const char *const c10_train[] = {"data_batch_1", "data_batch_2", "data_batch_3",
                                        "data_batch_4", "data_batch_5", NULL};
static const char *const c10_test[] = {"test_batch", NULL};
static const char *const c100_train[] = {"train", NULL};
static const char *const c100_test[] = {"test", NULL};

static const cifar_py_layout CIFAR10_PY = {GRAFT_CIFAR10_PY_DIR, c10_train, c10_test, "batches.meta",
                                           "label_names", "labels", CIFAR10_CLASSES};
static const cifar_py_layout CIFAR100_PY = {GRAFT_CIFAR100_PY_DIR, c100_train, c100_test, "meta",
                                            "fine_label_names", "fine_labels", CIFAR100_CLASSES};

/* ---- pickles ---------------------------------------------------------------------- */

/* Reads and unpickles a whole file into pk; *root is the top object. */
static graft_status load_pickle(const char *path, graft_pickle *pk, graft_pickle_obj **root) {
    FILE *f = fopen(path, "rb");
    if (!f) return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    graft_status s = GRAFT_OK;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode))
        s = graft_error(GRAFT_ERR_IO, "%s: not a regular file", path);
    else if (st.st_size == 0)
        s = graft_error(GRAFT_ERR_FORMAT, "%s: file is empty", path);
    else if ((uint64_t)st.st_size > FILE_MAX_BYTES)
        s = graft_error(GRAFT_ERR_FORMAT, "%s: %lld bytes is too large for a CIFAR file", path,
                        (long long)st.st_size);
    unsigned char *buf = s ? NULL : malloc((size_t)st.st_size);
    if (!s && !buf) s = graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
    if (!s && fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size)
        s = graft_error(GRAFT_ERR_IO, "%s: read error", path);
    fclose(f);
    if (!s) {
        s = graft_pickle_load(pk, buf, (size_t)st.st_size, root, NULL);
        if (s) graft_error_prefix(s, "%s", path);
    }
    free(buf);
    return s;
}

/* A str or bytes equal to key. */
static bool is_key(const graft_pickle_obj *o, const char *key) {
    size_t n = strlen(key);
    return o && (o->kind == GRAFT_PICKLE_STR || o->kind == GRAFT_PICKLE_BYTES) && o->u.s.len == n &&
           memcmp(o->u.s.data, key, n) == 0;
}

/* dict[key] for a key stored as bytes (Python 2) or str; NULL when absent. */
static const graft_pickle_obj *dict_get(const graft_pickle_obj *d, const char *key) {
    for (size_t i = 0; i < d->u.dict.len; i++)
        if (is_key(d->u.dict.keys[i], key)) return d->u.dict.values[i];
    return NULL;
}

static graft_status need_key(const graft_pickle_obj *d, const char *key, const char *path,
                             const graft_pickle_obj **out) {
    *out = d->kind == GRAFT_PICKLE_DICT ? dict_get(d, key) : NULL;
    if (d->kind != GRAFT_PICKLE_DICT)
        return graft_error(GRAFT_ERR_FORMAT, "%s: the pickle holds a %s, not a dict", path,
                           graft_pickle_kind_name(d->kind));
    if (!*out) return graft_error(GRAFT_ERR_FORMAT, "%s: no key '%s'", path, key);
    return GRAFT_OK;
}

static bool is_seq(const graft_pickle_obj *o) {
    return o && (o->kind == GRAFT_PICKLE_TUPLE || o->kind == GRAFT_PICKLE_LIST);
}

static bool is_text(const graft_pickle_obj *o) {
    return o && (o->kind == GRAFT_PICKLE_STR || o->kind == GRAFT_PICKLE_BYTES);
}

/* ---- numpy arrays ------------------------------------------------------------------ */

typedef struct np_array {
    int ndim;
    int64_t shape[NP_MAX_DIMS];
    char kind;           /* 'u' or 'i' (integers are all CIFAR has) */
    int itemsize;        /* bytes */
    bool big_endian;
    const uint8_t *data; /* prod(shape) * itemsize bytes, owned by the pickle */
} np_array;

static graft_status np_fail(const char *path, const char *what, const char *why) {
    return graft_error(GRAFT_ERR_FORMAT, "%s: '%s' is not a numpy array graft reads (%s)", path,
                       what, why);
}

/* dtype('u1') and friends: a kind letter and a size, with an optional byte-order
 * prefix, or a long name. */
static bool parse_dtype(const char *name, size_t len, char *kind, int *size, char *order) {
    static const struct { const char *name; char kind; int size; } long_names[] = {
        {"uint8", 'u', 1},  {"int8", 'i', 1},  {"uint16", 'u', 2}, {"int16", 'i', 2},
        {"uint32", 'u', 4}, {"int32", 'i', 4}, {"uint64", 'u', 8}, {"int64", 'i', 8}};
    for (size_t i = 0; i < sizeof long_names / sizeof long_names[0]; i++)
        if (strlen(long_names[i].name) == len && !memcmp(name, long_names[i].name, len)) {
            *kind = long_names[i].kind;
            *size = long_names[i].size;
            return true;
        }
    if (len == 3 && strchr("<>|=", name[0])) {
        *order = name[0];
        name++;
        len--;
    }
    if (len != 2 || (name[0] != 'u' && name[0] != 'i') || !strchr("1248", name[1])) return false;
    *kind = name[0];
    *size = name[1] - '0';
    return true;
}

static graft_status decode_array(const graft_pickle_obj *o, const char *path, const char *what,
                                 np_array *a) {
    memset(a, 0, sizeof *a);
    if (!graft_pickle_is_call(o, GRAFT_PG_NP_RECONSTRUCT))
        return np_fail(path, what, o ? graft_pickle_kind_name(o->kind) : "nothing");
    const graft_pickle_obj *args = o->u.call.args;
    const graft_pickle_obj *cls = args && args->kind == GRAFT_PICKLE_TUPLE && args->u.seq.len
                                      ? args->u.seq.items[0] : NULL;
    if (!cls || cls->kind != GRAFT_PICKLE_GLOBAL || cls->u.global.id != GRAFT_PG_NP_NDARRAY)
        return np_fail(path, what, "not an ndarray");
    const graft_pickle_obj *st = o->state;
    if (!st || st->kind != GRAFT_PICKLE_TUPLE || st->u.seq.len != 5)
        return np_fail(path, what, "its state is not (version, shape, dtype, fortran, data)");
    graft_pickle_obj *const *it = st->u.seq.items;
    if (it[0]->kind != GRAFT_PICKLE_INT || it[0]->u.i != NP_STATE_VERSION)
        return np_fail(path, what, "unknown state version");
    /* shape */
    const graft_pickle_obj *shape = it[1];
    if (shape->kind != GRAFT_PICKLE_TUPLE || shape->u.seq.len > NP_MAX_DIMS)
        return np_fail(path, what, "bad shape");
    a->ndim = (int)shape->u.seq.len;
    uint64_t count = 1;
    for (int d = 0; d < a->ndim; d++) {
        const graft_pickle_obj *v = shape->u.seq.items[d];
        if (v->kind != GRAFT_PICKLE_INT || v->u.i < 0 || v->u.i > (int64_t)FILE_MAX_BYTES)
            return np_fail(path, what, "bad shape");
        a->shape[d] = v->u.i;
        count *= (uint64_t)v->u.i;
        if (count > FILE_MAX_BYTES) return np_fail(path, what, "shape too large");
    }
    /* dtype */
    const graft_pickle_obj *dt = it[2];
    if (!graft_pickle_is_call(dt, GRAFT_PG_NP_DTYPE) || !dt->u.call.args ||
        dt->u.call.args->kind != GRAFT_PICKLE_TUPLE || dt->u.call.args->u.seq.len < 1 ||
        !is_text(dt->u.call.args->u.seq.items[0]))
        return np_fail(path, what, "bad dtype");
    const graft_pickle_obj *dname = dt->u.call.args->u.seq.items[0];
    char order = '|';
    if (!parse_dtype(dname->u.s.data, dname->u.s.len, &a->kind, &a->itemsize, &order))
        return np_fail(path, what, "not an integer dtype");
    const graft_pickle_obj *dst = dt->state; /* (3, '<', ...) */
    if (dst && dst->kind == GRAFT_PICKLE_TUPLE && dst->u.seq.len >= 2 &&
        is_text(dst->u.seq.items[1]) && dst->u.seq.items[1]->u.s.len == 1)
        order = dst->u.seq.items[1]->u.s.data[0];
    a->big_endian = order == '>';
    /* order and data */
    if (it[3]->kind != GRAFT_PICKLE_BOOL && it[3]->kind != GRAFT_PICKLE_INT)
        return np_fail(path, what, "bad fortran flag");
    bool fortran = it[3]->kind == GRAFT_PICKLE_BOOL ? it[3]->u.b : it[3]->u.i != 0;
    if (fortran && a->ndim > 1) return np_fail(path, what, "Fortran order");
    const graft_pickle_obj *raw = it[4];
    if (raw->kind != GRAFT_PICKLE_BYTES && raw->kind != GRAFT_PICKLE_BYTEARRAY)
        return np_fail(path, what, "its data is not a byte string");
    if (raw->u.s.len != count * (uint64_t)a->itemsize)
        return graft_error(GRAFT_ERR_FORMAT, "%s: '%s' holds %zu bytes, its shape needs %llu", path,
                           what, raw->u.s.len, (unsigned long long)(count * (uint64_t)a->itemsize));
    a->data = (const uint8_t *)raw->u.s.data;
    return GRAFT_OK;
}

/* Element i of an integer array. */
static int64_t np_int(const np_array *a, uint64_t i) {
    const uint8_t *p = a->data + i * (uint64_t)a->itemsize;
    uint64_t v = 0;
    for (int k = 0; k < a->itemsize; k++) {
        int at = a->big_endian ? k : a->itemsize - 1 - k;
        v = v << 8 | p[at];
    }
    if (a->kind == 'i' && a->itemsize < 8 && (v >> (8 * a->itemsize - 1)) & 1)
        v |= ~0ull << (8 * a->itemsize); /* sign-extend */
    return (int64_t)v;
}

/* ---- one batch file ------------------------------------------------------------------ */

typedef struct growing_set {
    graft_dataset *d;
    int64_t cap;
} growing_set;

static graft_status grow(growing_set *g, int64_t more, const char *path) {
    int64_t need = g->d->n + more;
    if (need <= g->cap) return GRAFT_OK;
    int64_t cap = g->cap ? g->cap : 1024;
    while (cap < need) cap *= 2;
    uint8_t *img = realloc(g->d->images, (size_t)cap * CIFAR_PIXEL_BYTES);
    if (!img) return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
    g->d->images = img;
    int64_t *lab = realloc(g->d->labels, (size_t)cap * sizeof *lab);
    if (!lab) return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
    g->d->labels = lab;
    g->cap = cap;
    return GRAFT_OK;
}

/* The labels: a list of ints, or an integer array. */
static graft_status read_labels(const graft_pickle_obj *o, const char *path, const char *key,
                                int64_t n, int64_t limit, int64_t *out) {
    if (is_seq(o)) {
        if ((int64_t)o->u.seq.len != n)
            return graft_error(GRAFT_ERR_FORMAT, "%s: %zu labels for %lld images", path, o->u.seq.len,
                               (long long)n);
        for (int64_t i = 0; i < n; i++) {
            const graft_pickle_obj *v = o->u.seq.items[i];
            if (v->kind != GRAFT_PICKLE_INT)
                return graft_error(GRAFT_ERR_FORMAT, "%s: label %lld is a %s, not an int", path,
                                   (long long)i, graft_pickle_kind_name(v->kind));
            out[i] = v->u.i;
        }
    } else {
        np_array a;
        graft_status s = decode_array(o, path, key, &a);
        if (s) return s;
        if (a.ndim != 1 || a.shape[0] != n)
            return graft_error(GRAFT_ERR_FORMAT, "%s: '%s' is not [%lld]", path, key, (long long)n);
        for (int64_t i = 0; i < n; i++) out[i] = np_int(&a, (uint64_t)i);
    }
    for (int64_t i = 0; i < n; i++)
        if (out[i] < 0 || out[i] >= limit)
            return graft_error(GRAFT_ERR_FORMAT, "%s: label %lld of image %lld is outside 0..%lld",
                               path, (long long)out[i], (long long)i, (long long)limit - 1);
    return GRAFT_OK;
}

static graft_status read_batch(const char *path, const cifar_py_layout *lay, growing_set *g) {
    graft_pickle *pk;
    graft_status s = graft_pickle_create(NULL, &pk);
    if (s) return s;
    graft_pickle_obj *root = NULL;
    const graft_pickle_obj *data = NULL, *labels = NULL;
    np_array a;
    memset(&a, 0, sizeof a);
    s = load_pickle(path, pk, &root);
    if (!s) s = need_key(root, "data", path, &data);
    if (!s) s = need_key(root, lay->labels_key, path, &labels);
    if (!s) s = decode_array(data, path, "data", &a);
    int64_t n = a.ndim >= 1 ? a.shape[0] : 0;
    if (!s) {
        /* [N, 3072], or [N, 3, 32, 32]: the same bytes */
        bool flat = a.ndim == 2 && a.shape[1] == CIFAR_PIXEL_BYTES;
        bool planes = a.ndim == 4 && a.shape[1] == CIFAR_CHANNELS && a.shape[2] == CIFAR_SIDE &&
                      a.shape[3] == CIFAR_SIDE;
        if ((!flat && !planes) || a.kind != 'u' || a.itemsize != 1)
            s = graft_error(GRAFT_ERR_FORMAT, "%s: 'data' is not a uint8 array [N, 3072]", path);
        else if (n < 1)
            s = graft_error(GRAFT_ERR_FORMAT, "%s: 'data' holds no images", path);
    }
    if (!s) s = grow(g, n, path);
    if (!s) s = read_labels(labels, path, lay->labels_key, n, lay->num_classes, g->d->labels + g->d->n);
    if (!s) {
        /* planes [3, 32, 32] -> HWC [32, 32, 3] */
        for (int64_t i = 0; i < n; i++) {
            const uint8_t *px = a.data + (size_t)i * CIFAR_PIXEL_BYTES;
            uint8_t *img = g->d->images + (size_t)(g->d->n + i) * CIFAR_PIXEL_BYTES;
            for (int ch = 0; ch < CIFAR_CHANNELS; ch++)
                for (int p = 0; p < CIFAR_PLANE; p++) img[p * CIFAR_CHANNELS + ch] = px[ch * CIFAR_PLANE + p];
        }
        g->d->n += n;
    }
    graft_pickle_free(pk);
    return s;
}

static graft_status read_meta(const char *path, const cifar_py_layout *lay, graft_dataset *d) {
    graft_pickle *pk;
    graft_status s = graft_pickle_create(NULL, &pk);
    if (s) return s;
    graft_pickle_obj *root = NULL;
    const graft_pickle_obj *names = NULL;
    s = load_pickle(path, pk, &root);
    if (!s) s = need_key(root, lay->names_key, path, &names);
    if (!s && (!is_seq(names) || (int64_t)names->u.seq.len != lay->num_classes))
        s = graft_error(GRAFT_ERR_FORMAT, "%s: '%s' is not a list of %lld names", path, lay->names_key,
                        (long long)lay->num_classes);
    if (!s) {
        d->classes = calloc((size_t)lay->num_classes, sizeof *d->classes);
        if (!d->classes) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
        else d->num_classes = lay->num_classes;
    }
    for (int64_t k = 0; !s && k < lay->num_classes; k++) {
        const graft_pickle_obj *v = names->u.seq.items[k];
        if (!is_text(v) || memchr(v->u.s.data, 0, v->u.s.len)) {
            s = graft_error(GRAFT_ERR_FORMAT, "%s: class name %lld is not a string", path, (long long)k);
            break;
        }
        d->classes[k] = malloc(v->u.s.len + 1);
        if (!d->classes[k]) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
        else memcpy(d->classes[k], v->u.s.data, v->u.s.len + 1);
    }
    graft_pickle_free(pk);
    return s;
}

/* root/<dir> when that is a folder, else root itself. */
static void dataset_dir(const char *root, const cifar_py_layout *lay, char *dir) {
    struct stat st;
    int n = snprintf(dir, PATH_BYTES, "%s/%s", root, lay->dir);
    if (n > 0 && n < PATH_BYTES && stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) return;
    snprintf(dir, PATH_BYTES, "%s", root);
}

static graft_status cifar_py_load(const char *root, const cifar_py_layout *lay, bool train,
                                  graft_dataset **out) {
    *out = NULL;
    char dir[PATH_BYTES], path[PATH_BYTES];
    dataset_dir(root, lay, dir);
    growing_set g = {calloc(1, sizeof(graft_dataset)), 0};
    if (!g.d) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    g.d->h = g.d->w = CIFAR_SIDE;
    g.d->c = CIFAR_CHANNELS;
    graft_status s = GRAFT_OK;
    for (const char *const *f = train ? lay->train : lay->test; !s && *f; f++) {
        if (snprintf(path, sizeof path, "%s/%s", dir, *f) >= (int)sizeof path)
            s = graft_error(GRAFT_ERR_INVALID, "%s: path too long", dir);
        else
            s = read_batch(path, lay, &g);
    }
    if (!s && snprintf(path, sizeof path, "%s/%s", dir, lay->meta) >= (int)sizeof path)
        s = graft_error(GRAFT_ERR_INVALID, "%s: path too long", dir);
    if (!s) s = read_meta(path, lay, g.d);
    if (s) {
        graft_dataset_free(g.d);
        return s;
    }
    *out = g.d;
    return GRAFT_OK;
}

graft_status graft_cifar10_py_load(const char *root, bool train, graft_dataset **out) {
    return cifar_py_load(root, &CIFAR10_PY, train, out);
}

graft_status graft_cifar100_py_load(const char *root, bool train, graft_dataset **out) {
    return cifar_py_load(root, &CIFAR100_PY, train, out);
}
