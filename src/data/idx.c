/* idx.c — MNIST and Fashion-MNIST from IDX files, plain or gzip-compressed.
 *
 * zlib's gzread reads both: a file without the gzip magic is passed through as is.
 * The header's sizes are checked against limits before anything is allocated, and
 * the data is then read in chunks while the buffer grows, so a header that claims more
 * than the file holds costs no more memory than the file's actual content. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "core/error.h"
#include "data/dataset.h"

#define IDX_MAGIC_IMAGES 0x00000803u /* unsigned bytes, 3 dimensions */
#define IDX_MAGIC_LABELS 0x00000801u /* unsigned bytes, 1 dimension */
#define IDX_MAX_ITEMS (1u << 28)      /* far above MNIST's 60000; refuses absurd headers */
#define IDX_READ_CHUNK (1u << 24)     /* bytes per gzread while filling the buffer */
#define IDX_GZ_BUFFER (1u << 17)      /* zlib's input buffer: fewer, larger reads */
#define PATH_BYTES 4096

/* torchvision.datasets.MNIST.classes and FashionMNIST.classes */
static const char *const mnist_classes[GRAFT_MNIST_CLASSES] = {
    "0 - zero", "1 - one", "2 - two",   "3 - three", "4 - four",
    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"};
static const char *const fashion_classes[GRAFT_MNIST_CLASSES] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

/* ---- reading --------------------------------------------------------------------- */

static graft_status open_idx(const char *path, gzFile *out) {
    errno = 0;
    *out = gzopen(path, "rb");
    if (!*out)
        return graft_error(GRAFT_ERR_IO, "%s: %s", path, errno ? strerror(errno) : "out of memory");
    gzbuffer(*out, IDX_GZ_BUFFER);
    return GRAFT_OK;
}

/* Reads up to n bytes; *got says how many arrived before the end of the data.  A
 * corrupt gzip stream is GRAFT_ERR_FORMAT; a stream cut short just ends early. */
static graft_status read_upto(gzFile f, const char *path, uint8_t *buf, size_t n, size_t *got) {
    *got = 0;
    while (*got < n) {
        size_t want = n - *got < IDX_READ_CHUNK ? n - *got : IDX_READ_CHUNK;
        int r = gzread(f, buf + *got, (unsigned)want);
        if (r < 0) {
            int errnum;
            const char *msg = gzerror(f, &errnum);
            if (errnum == Z_ERRNO) return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
            size_t plen = strlen(path); /* zlib's message starts "<path>: " */
            if (strncmp(msg, path, plen) == 0 && strncmp(msg + plen, ": ", 2) == 0) msg += plen + 2;
            return graft_error(GRAFT_ERR_FORMAT, "%s: corrupt gzip data (%s)", path, msg);
        }
        if (r == 0) break;
        *got += (size_t)r;
    }
    return GRAFT_OK;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Reads and checks the magic and the ndim sizes after it. */
static graft_status read_header(gzFile f, const char *path, uint32_t magic, int ndim,
                                uint32_t *dims, const char *kind) {
    uint8_t head[16];
    size_t want = 4 + 4 * (size_t)ndim, got;
    graft_status s = read_upto(f, path, head, want, &got);
    if (s) return s;
    if (got >= 4 && be32(head) != magic)
        return graft_error(GRAFT_ERR_FORMAT,
                           "%s: magic number 0x%08x is not that of an IDX %s file (0x%08x)", path,
                           be32(head), kind, magic);
    if (got < want)
        return graft_error(GRAFT_ERR_FORMAT, "%s: file is truncated in the IDX header (%zu of %zu "
                                             "bytes)", path, got, want);
    for (int i = 0; i < ndim; i++) {
        dims[i] = be32(head + 4 + 4 * i);
        uint32_t limit = i == 0 ? IDX_MAX_ITEMS : GRAFT_IMAGE_MAX_SIDE;
        if (dims[i] == 0 || dims[i] > limit)
            return graft_error(GRAFT_ERR_FORMAT, "%s: IDX dimension %d is %u, outside 1..%u", path,
                               i, dims[i], limit);
    }
    return GRAFT_OK;
}

/* Reads exactly n data bytes and checks nothing follows them.  The buffer grows with
 * what actually arrives.  what describes the data for messages ("60000 images of
 * 28x28"). */
static graft_status read_body(gzFile f, const char *path, size_t n, const char *what,
                              uint8_t **out) {
    *out = NULL;
    size_t have = 0, cap = 0;
    uint8_t *buf = NULL;
    graft_status s = GRAFT_OK;
    while (have < n) {
        if (have == cap) {
            size_t next = cap ? (cap <= n / 2 ? cap * 2 : n) : (n < IDX_READ_CHUNK ? n : IDX_READ_CHUNK);
            uint8_t *p = realloc(buf, next);
            if (!p) {
                free(buf);
                return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = p;
            cap = next;
        }
        size_t got;
        s = read_upto(f, path, buf + have, cap - have, &got);
        if (s) break;
        have += got;
        if (have < cap) break; /* the data ended early */
    }
    if (!s && have < n)
        s = graft_error(GRAFT_ERR_FORMAT, "%s: file is truncated: %s need %zu bytes of data, "
                                          "it holds %zu", path, what, n, have);
    if (!s) {
        uint8_t extra;
        size_t got;
        s = read_upto(f, path, &extra, 1, &got);
        if (!s && got)
            s = graft_error(GRAFT_ERR_FORMAT, "%s: data continues after the %s the header "
                                              "announces", path, what);
    }
    if (s) {
        free(buf);
        return s;
    }
    *out = buf;
    return GRAFT_OK;
}

/* ---- datasets ----------------------------------------------------------------------- */

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static graft_status set_classes(graft_dataset *d, int64_t num_classes, const char *const *names) {
    d->classes = calloc((size_t)num_classes, sizeof *d->classes);
    if (!d->classes) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    d->num_classes = num_classes;
    for (int64_t i = 0; i < num_classes; i++) {
        char number[24];
        snprintf(number, sizeof number, "%lld", (long long)i);
        d->classes[i] = dup_str(names ? names[i] : number);
        if (!d->classes[i]) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    return GRAFT_OK;
}

static graft_status load_images(const char *path, graft_dataset *d) {
    gzFile f;
    graft_status s = open_idx(path, &f);
    if (s) return s;
    uint32_t dims[3];
    s = read_header(f, path, IDX_MAGIC_IMAGES, 3, dims, "images");
    if (!s && (uint64_t)dims[1] * dims[2] > GRAFT_IMAGE_MAX_PIXELS)
        s = graft_error(GRAFT_ERR_FORMAT, "%s: images of %ux%u exceed %d pixels", path, dims[1],
                        dims[2], GRAFT_IMAGE_MAX_PIXELS);
    if (!s) {
        char what[96];
        snprintf(what, sizeof what, "%u images of %ux%u", dims[0], dims[1], dims[2]);
        uint64_t bytes = (uint64_t)dims[0] * dims[1] * dims[2];
        if (bytes > SIZE_MAX)
            s = graft_error(GRAFT_ERR_FORMAT, "%s: %s do not fit in memory", path, what);
        else s = read_body(f, path, (size_t)bytes, what, &d->images);
    }
    gzclose(f);
    if (s) return s;
    d->n = dims[0];
    d->h = (int)dims[1];
    d->w = (int)dims[2];
    d->c = 1;
    return GRAFT_OK;
}

static graft_status load_labels(const char *path, int64_t num_classes, uint32_t *count,
                                uint8_t **labels) {
    gzFile f;
    graft_status s = open_idx(path, &f);
    if (s) return s;
    uint32_t dims[1] = {0};
    s = read_header(f, path, IDX_MAGIC_LABELS, 1, dims, "labels");
    if (!s) {
        char what[64];
        snprintf(what, sizeof what, "%u labels", dims[0]);
        s = read_body(f, path, dims[0], what, labels);
    }
    gzclose(f);
    if (s) return s;
    for (uint32_t i = 0; i < dims[0]; i++)
        if ((*labels)[i] >= num_classes) {
            s = graft_error(GRAFT_ERR_FORMAT, "%s: label %u of item %u is not below %lld", path,
                            (*labels)[i], i, (long long)num_classes);
            free(*labels);
            *labels = NULL;
            return s;
        }
    *count = dims[0];
    return GRAFT_OK;
}

graft_status graft_idx_load(const char *images_path, const char *labels_path,
                            int64_t num_classes, const char *const *names, graft_dataset **out) {
    *out = NULL;
    if (num_classes < 1 || num_classes > 256)
        return graft_error(GRAFT_ERR_INVALID, "IDX labels are bytes: num_classes %lld is outside "
                                              "1..256", (long long)num_classes);
    graft_dataset *d = calloc(1, sizeof *d);
    if (!d) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    uint8_t *labels = NULL;
    uint32_t count = 0;
    graft_status s = load_images(images_path, d);
    if (!s) s = load_labels(labels_path, num_classes, &count, &labels);
    if (!s && count != d->n)
        s = graft_error(GRAFT_ERR_FORMAT, "%s has %lld images but %s has %u labels", images_path,
                        (long long)d->n, labels_path, count);
    if (!s) {
        d->labels = malloc(sizeof *d->labels * (size_t)d->n);
        if (!d->labels) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
        for (int64_t i = 0; !s && i < d->n; i++) d->labels[i] = labels[i];
    }
    free(labels);
    if (!s) s = set_classes(d, num_classes, names);
    if (s) {
        graft_dataset_free(d);
        return s;
    }
    *out = d;
    return GRAFT_OK;
}

/* ---- finding the files -------------------------------------------------------------- */

/* Looks for base or base.gz in each directory; the first readable one wins. */
static graft_status find_file(const char *const dirs[3], const char *base, char *path) {
    static const char *const suffixes[] = {"", ".gz"};
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 2; k++) {
            int n = snprintf(path, PATH_BYTES, "%s/%s%s", dirs[i], base, suffixes[k]);
            if (n > 0 && n < PATH_BYTES && access(path, R_OK) == 0) return GRAFT_OK;
        }
    return graft_error(GRAFT_ERR_IO, "no readable %s[.gz] in %s, %s or %s", base, dirs[0],
                       dirs[1], dirs[2]);
}

graft_status graft_mnist_load(const char *root, graft_mnist_kind kind, bool train,
                              graft_dataset **out) {
    *out = NULL;
    char raw[PATH_BYTES], tv_raw[PATH_BYTES];
    const char *tv_dir = kind == GRAFT_FASHION_MNIST ? "FashionMNIST" : "MNIST";
    int a = snprintf(raw, sizeof raw, "%s/raw", root);
    int b = snprintf(tv_raw, sizeof tv_raw, "%s/%s/raw", root, tv_dir);
    if (a < 0 || a >= PATH_BYTES || b < 0 || b >= PATH_BYTES)
        return graft_error(GRAFT_ERR_INVALID, "dataset root path is too long");
    const char *dirs[3] = {root, raw, tv_raw};
    const char *split = train ? "train" : "t10k";
    char images_base[64], labels_base[64];
    snprintf(images_base, sizeof images_base, "%s-images-idx3-ubyte", split);
    snprintf(labels_base, sizeof labels_base, "%s-labels-idx1-ubyte", split);

    char images_path[PATH_BYTES], labels_path[PATH_BYTES];
    graft_status s = find_file(dirs, images_base, images_path);
    if (!s) s = find_file(dirs, labels_base, labels_path);
    if (s) return s;
    return graft_idx_load(images_path, labels_path, GRAFT_MNIST_CLASSES,
                          kind == GRAFT_FASHION_MNIST ? fashion_classes : mnist_classes, out);
}
