/* spec.c — parsing --data SPEC and opening its splits (syntax in spec.h). */
#include "data/spec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "core/tensor.h"
#include "data/cifar_py.h"
#include "data/dataset.h"

#define PATH_BYTES 4096
#define NAME_BYTES 4200
#define DEFAULT_DATA_SUBDIR ".cache/graft/datasets"

graft_status graft_data_default_root(char *buf, size_t size) {
    const char *env = getenv("GRAFT_DATA");
    int w;
    if (env && *env) w = snprintf(buf, size, "%s", env);
    else if ((env = getenv("HOME")) && *env) w = snprintf(buf, size, "%s/%s", env, DEFAULT_DATA_SUBDIR);
    else return graft_error(GRAFT_ERR_NOTFOUND, "no dataset folder: set GRAFT_DATA (or HOME)");
    if (w < 0 || (size_t)w >= size) return graft_error(GRAFT_ERR_INVALID, "dataset folder path is too long");
    return GRAFT_OK;
}

void graft_data_free(graft_data *d) {
    if (!d) return;
    graft_source_free(d->train);
    graft_source_free(d->test);
    free(d->where);
    free(d);
}

static bool exists(const char *dir, const char *sub, const char *file) {
    char p[PATH_BYTES];
    int n = snprintf(p, sizeof p, "%s%s%s/%s", dir, sub ? "/" : "", sub ? sub : "", file);
    struct stat st;
    return n > 0 && n < (int)sizeof p && stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* ---- the formats ------------------------------------------------------------------- */

typedef graft_status (*dataset_loader)(const char *root, bool train, graft_dataset **out);

/* Loads both splits with one loader into sources named "<name> train/test". */
static graft_status open_dataset_pair(dataset_loader load, const char *root, const char *name,
                                      graft_data *d) {
    graft_dataset *tr = NULL, *te = NULL;
    graft_status s = load(root, true, &tr);
    if (!s) s = load(root, false, &te);
    if (s) {
        graft_dataset_free(tr);
        return s;
    }
    char label[NAME_BYTES];
    snprintf(label, sizeof label, "%s train", name);
    s = graft_source_from_dataset(tr, label, &d->train);
    snprintf(label, sizeof label, "%s test", name);
    if (!s) s = graft_source_from_dataset(te, label, &d->test);
    else graft_dataset_free(te);
    return s;
}

typedef struct cifar_kind {
    const char *name, *title;
    const char *bin_dir, *bin_probe; /* the binary version's folder and a file in it */
    const char *py_dir, *py_probe;   /* the python version's */
    dataset_loader bin, py;
} cifar_kind;

static const cifar_kind CIFAR10 = {"cifar10", "CIFAR-10", "cifar-10-batches-bin", "data_batch_1.bin",
                                   GRAFT_CIFAR10_PY_DIR, "data_batch_1", graft_cifar10_load,
                                   graft_cifar10_py_load};
static const cifar_kind CIFAR100 = {"cifar100", "CIFAR-100", "cifar-100-binary", "train.bin",
                                    GRAFT_CIFAR100_PY_DIR, "train", graft_cifar100_load,
                                    graft_cifar100_py_load};

static graft_status open_cifar(const cifar_kind *k, const char *root, graft_data *d) {
    char buf[PATH_BYTES];
    if (!root) {
        graft_status s = graft_data_default_root(buf, sizeof buf);
        if (s) return s;
        root = buf;
    }
    /* the binary version first (no pickle to parse), then torchvision's python version,
     * each as a subfolder of root or as root itself */
    const char *at = NULL, *sub = NULL;
    dataset_loader load = NULL;
    bool python = false;
    if (exists(root, k->bin_dir, k->bin_probe)) at = root, sub = k->bin_dir, load = k->bin;
    else if (exists(root, k->py_dir, k->py_probe)) at = root, sub = k->py_dir, load = k->py, python = true;
    else if (exists(root, NULL, k->bin_probe)) at = root, load = k->bin;
    else if (exists(root, NULL, k->py_probe)) at = root, load = k->py, python = true;
    if (!load)
        return graft_error(GRAFT_ERR_NOTFOUND,
                           "%s: no %s in %s (looked for %s/ and %s/): run 'graft fetch %s --root %s', "
                           "or give %s:ROOT", k->name, k->title, root, k->bin_dir, k->py_dir, k->name,
                           root, k->name);
    char where[NAME_BYTES];
    snprintf(where, sizeof where, "%s (%s version) in %s%s%s", k->name, python ? "python" : "binary",
             at, sub ? "/" : "", sub ? sub : "");
    d->where = dup_str(where);
    if (!d->where) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    return open_dataset_pair(load, root, k->name, d);
}

/* graft_mnist_load as a dataset_loader, one per kind. */
static graft_status load_fashion(const char *root, bool train, graft_dataset **out) {
    return graft_mnist_load(root, GRAFT_FASHION_MNIST, train, out);
}
static graft_status load_digits(const char *root, bool train, graft_dataset **out) {
    return graft_mnist_load(root, GRAFT_MNIST, train, out);
}

static graft_status open_mnist(const char *name, graft_mnist_kind kind, const char *root,
                               graft_data *d) {
    if (!is_dir(root)) return graft_error(GRAFT_ERR_NOTFOUND, "%s: %s is not a folder", name, root);
    char where[NAME_BYTES];
    snprintf(where, sizeof where, "%s in %s", name, root);
    d->where = dup_str(where);
    if (!d->where) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    return open_dataset_pair(kind == GRAFT_MNIST ? load_digits : load_fashion, root, name, d);
}

static graft_status open_folder(const char *root, const graft_data_options *o, graft_data *d) {
    char train[PATH_BYTES], test[PATH_BYTES];
    if (!is_dir(root)) return graft_error(GRAFT_ERR_NOTFOUND, "folder: %s is not a folder", root);
    snprintf(train, sizeof train, "%s/train", root);
    bool split = is_dir(train);
    graft_folder_options fo = {.strict = o->strict};
    graft_status s = graft_source_folder(split ? train : root, &fo, &d->train);
    if (s) return s;
    if (split) {
        d->test_name = "test";
        snprintf(test, sizeof test, "%s/test", root);
        if (!is_dir(test)) {
            d->test_name = "val";
            snprintf(test, sizeof test, "%s/val", root);
        }
        if (is_dir(test)) {
            fo.classes = (const char *const *)d->train->classes;
            fo.num_classes = d->train->num_classes;
            s = graft_source_folder(test, &fo, &d->test);
            if (s) return s;
        } else {
            d->test_name = "test";
        }
    }
    char where[NAME_BYTES];
    snprintf(where, sizeof where, "image folders in %s", root);
    d->where = dup_str(where);
    return d->where ? GRAFT_OK : graft_error(GRAFT_ERR_NOMEM, "out of memory");
}

/* The metadata "classes": one name per line. */
static graft_status split_names(const char *text, const char *file, char ***names, int64_t *n) {
    *names = NULL;
    *n = 0;
    if (!text) return GRAFT_OK;
    int64_t count = 1;
    for (const char *p = text; *p; p++) count += *p == '\n';
    if (count > GRAFT_SOURCE_MAX_CLASSES)
        return graft_error(GRAFT_ERR_FORMAT, "%s: too many class names", file);
    char **list = calloc((size_t)count, sizeof *list);
    if (!list) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    const char *p = text;
    for (int64_t i = 0; i < count; i++) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        list[i] = malloc(len + 1);
        if (!list[i]) {
            for (int64_t j = 0; j < i; j++) free(list[j]);
            free(list);
            return graft_error(GRAFT_ERR_NOMEM, "out of memory");
        }
        memcpy(list[i], p, len);
        list[i][len] = 0;
        p = end ? end + 1 : p + len;
    }
    *names = list;
    *n = count;
    return GRAFT_OK;
}

static graft_status open_tensors(const char *file, graft_data *d) {
    graft_tensor_map *m;
    graft_status s = graft_safetensors_load(file, &m);
    if (s) return s;
    const graft_tensor *images = graft_tensor_map_get(m, "images");
    const graft_tensor *labels = graft_tensor_map_get(m, "labels");
    const graft_tensor *test_images = graft_tensor_map_get(m, "test_images");
    const graft_tensor *test_labels = graft_tensor_map_get(m, "test_labels");
    char **names = NULL;
    int64_t k = 0;
    if (!images || !labels)
        s = graft_error(GRAFT_ERR_FORMAT, "%s: needs the tensors 'images' and 'labels'", file);
    else if (!test_images != !test_labels)
        s = graft_error(GRAFT_ERR_FORMAT, "%s: 'test_images' and 'test_labels' go together", file);
    if (!s) s = split_names(graft_tensor_map_get_meta(m, "classes"), file, &names, &k);
    char name[NAME_BYTES];
    if (!s) {
        snprintf(name, sizeof name, "%s", file);
        s = graft_source_from_tensors(images, labels, k, (const char *const *)names, name, &d->train);
    }
    if (!s && test_images) {
        snprintf(name, sizeof name, "%s (test)", file);
        s = graft_source_from_tensors(test_images, test_labels, d->train->num_classes,
                                      (const char *const *)d->train->classes, name, &d->test);
    }
    for (int64_t i = 0; i < k; i++) free(names[i]);
    free(names);
    graft_tensor_map_free(m);
    if (s) return s;
    snprintf(name, sizeof name, "tensors in %s", file);
    d->where = dup_str(name);
    return d->where ? GRAFT_OK : graft_error(GRAFT_ERR_NOMEM, "out of memory");
}

/* ---- subsets ------------------------------------------------------------------------ */

graft_status graft_data_parse_classes(const char *list, const graft_source *src, int64_t **out,
                                      int64_t *k) {
    *out = NULL;
    *k = 0;
    size_t len = strlen(list);
    int64_t cap = 1;
    for (const char *p = list; *p; p++) cap += *p == ',';
    int64_t *sel = malloc((size_t)cap * sizeof *sel);
    char *buf = malloc(len + 1);
    if (!sel || !buf) {
        free(sel);
        free(buf);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    memcpy(buf, list, len + 1);
    graft_status s = GRAFT_OK;
    int64_t n = 0;
    for (char *item = buf; item && !s;) {
        char *comma = strchr(item, ',');
        if (comma) *comma = 0;
        while (*item == ' ') item++;
        char *end = item + strlen(item);
        while (end > item && end[-1] == ' ') *--end = 0;
        char *num_end;
        errno = 0;
        long long v = *item ? strtoll(item, &num_end, 10) : -1;
        int64_t c = -1;
        if (*item && !*num_end && !errno) {
            c = v;
            if (c < 0 || c >= src->num_classes)
                s = graft_error(GRAFT_ERR_INVALID, "--classes: class %lld is outside 0..%lld", v,
                                (long long)src->num_classes - 1);
        } else if (*item) {
            for (int64_t j = 0; j < src->num_classes && c < 0; j++)
                if (!strcmp(src->classes[j], item)) c = j;
            if (c < 0) s = graft_error(GRAFT_ERR_INVALID, "--classes: no class named '%s'", item);
        } else {
            s = graft_error(GRAFT_ERR_INVALID, "--classes: empty item in '%s'", list);
        }
        if (!s) sel[n++] = c;
        item = comma ? comma + 1 : NULL;
    }
    free(buf);
    if (s) {
        free(sel);
        return s;
    }
    *out = sel;
    *k = n;
    return GRAFT_OK;
}

static graft_status apply_subsets(graft_data *d, const graft_data_options *o) {
    graft_status s = GRAFT_OK;
    if (o->classes) {
        int64_t *sel, k;
        s = graft_data_parse_classes(o->classes, d->train, &sel, &k);
        if (s) return s;
        graft_source *base = d->train;
        d->train = NULL;
        s = graft_source_select_classes(base, sel, k, &d->train);
        if (!s && d->test) {
            base = d->test;
            d->test = NULL;
            s = graft_source_select_classes(base, sel, k, &d->test);
        }
        free(sel);
        if (s) return s;
        if (graft_source_len(d->train) == 0)
            return graft_error(GRAFT_ERR_INVALID, "--classes %s: no training samples in these classes",
                               o->classes);
    }
    if (o->per_class > 0) {
        graft_source *base = d->train;
        d->train = NULL;
        s = graft_source_per_class(base, o->per_class, o->seed, &d->train);
    }
    return s;
}

/* ---- the spec ----------------------------------------------------------------------- */

graft_status graft_data_open(const char *spec, const graft_data_options *o, graft_data **out) {
    *out = NULL;
    graft_data_options none = {0};
    if (!o) o = &none;
    if (o->per_class < 0) return graft_error(GRAFT_ERR_INVALID, "--per-class must not be negative");
    char name[32];
    const char *colon = strchr(spec, ':');
    size_t nlen = colon ? (size_t)(colon - spec) : strlen(spec);
    const char *arg = colon ? colon + 1 : NULL;
    if (arg && !*arg) arg = NULL;
    if (nlen >= sizeof name) nlen = sizeof name - 1;
    memcpy(name, spec, nlen);
    name[nlen] = 0;

    graft_data *d = calloc(1, sizeof *d);
    if (!d) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    d->test_name = "test";
    graft_status s;
    if (!strcmp(name, "cifar10")) s = open_cifar(&CIFAR10, arg, d);
    else if (!strcmp(name, "cifar100")) s = open_cifar(&CIFAR100, arg, d);
    else if (!strcmp(name, "mnist"))
        s = arg ? open_mnist("mnist", GRAFT_MNIST, arg, d)
                : graft_error(GRAFT_ERR_INVALID, "mnist needs a folder: --data mnist:ROOT");
    else if (!strcmp(name, "fashion-mnist"))
        s = open_mnist("fashion-mnist", GRAFT_FASHION_MNIST, arg ? arg : GRAFT_FASHION_MNIST_DEBIAN, d);
    else if (!strcmp(name, "folder"))
        s = arg ? open_folder(arg, o, d)
                : graft_error(GRAFT_ERR_INVALID, "folder needs a path: --data folder:ROOT");
    else if (!strcmp(name, "tensors"))
        s = arg ? open_tensors(arg, d)
                : graft_error(GRAFT_ERR_INVALID, "tensors needs a file: --data tensors:FILE.safetensors");
    else
        s = graft_error(GRAFT_ERR_INVALID, "unknown dataset '%s' in --data %s (known: cifar10[:ROOT], "
                                           "cifar100[:ROOT], mnist:ROOT, fashion-mnist[:ROOT], "
                                           "folder:ROOT, tensors:FILE)", name, spec);
    if (!s) s = apply_subsets(d, o);
    if (s) {
        graft_data_free(d);
        return s;
    }
    *out = d;
    return GRAFT_OK;
}
