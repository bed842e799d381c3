/* cifar_bin.c — CIFAR-10 and CIFAR-100, binary version (see dataset.h for the layout).
 *
 * Every file's size is checked against the record size before anything is read, so
 * the dataset is allocated once at its final size; records are then read one at a
 * time through stdio's buffer, labels checked, and pixels transposed from CHW planes to
 * HWC. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "data/dataset.h"

#define CIFAR_SIDE 32
#define CIFAR_CHANNELS 3
#define CIFAR_PIXEL_BYTES (CIFAR_CHANNELS * CIFAR_SIDE * CIFAR_SIDE) /* 3072 */
#define CIFAR10_CLASSES 10
#define CIFAR100_COARSE_CLASSES 20
#define CIFAR100_CLASSES 100
#define NAMES_MAX_BYTES (1 << 20) /* a class-name file larger than this is not one */
#define PATH_BYTES 4096

/* One flavour of the format. */
typedef struct cifar_layout {
    const char *dir;              /* the folder inside root */
    const char *const *train;     /* file names of the train split, NULL-terminated */
    const char *const *test;
    const char *names;            /* the class-name file */
    int label_bytes;              /* label bytes before the pixels */
    int64_t label_limits[2];      /* each label byte must be below this */
    int label_index;              /* which label byte is the label */
} cifar_layout;

static const char *const cifar10_train[] = {"data_batch_1.bin", "data_batch_2.bin",
                                            "data_batch_3.bin", "data_batch_4.bin",
                                            "data_batch_5.bin", NULL};
static const char *const cifar10_test[] = {"test_batch.bin", NULL};
static const char *const cifar100_train[] = {"train.bin", NULL};
static const char *const cifar100_test[] = {"test.bin", NULL};

static const cifar_layout cifar10 = {"cifar-10-batches-bin", cifar10_train, cifar10_test,
                                     "batches.meta.txt", 1, {CIFAR10_CLASSES, 0}, 0};
static const cifar_layout cifar100 = {"cifar-100-binary", cifar100_train, cifar100_test,
                                      "fine_label_names.txt", 2,
                                      {CIFAR100_COARSE_CLASSES, CIFAR100_CLASSES}, 1};

/* ---- class names ------------------------------------------------------------------ */

/* One name per line; surrounding spaces, '\r' and blank lines (the files end with
 * some) are dropped.  Exactly d->num_classes names must remain. */
static graft_status read_names(const char *path, graft_dataset *d) {
    FILE *f = fopen(path, "rb");
    if (!f) return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
    char *text = malloc(NAMES_MAX_BYTES + 1);
    if (!text) {
        fclose(f);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    size_t n = fread(text, 1, NAMES_MAX_BYTES + 1, f);
    bool failed = ferror(f);
    fclose(f);
    graft_status s = GRAFT_OK;
    if (failed) s = graft_error(GRAFT_ERR_IO, "%s: read error", path);
    else if (n > NAMES_MAX_BYTES)
        s = graft_error(GRAFT_ERR_FORMAT, "%s: larger than %d bytes, not a class-name file", path,
                        NAMES_MAX_BYTES);
    if (!s) d->classes = calloc((size_t)d->num_classes, sizeof *d->classes);
    if (!s && !d->classes) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    text[s ? 0 : n] = 0;
    int64_t count = 0;
    for (char *line = text; !s && line < text + n;) {
        char *end = memchr(line, '\n', (size_t)(text + n - line));
        char *next = end ? end + 1 : text + n;
        if (!end) end = text + n;
        while (line < end && (*line == ' ' || *line == '\t' || *line == '\r')) line++;
        while (end > line && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r')) end--;
        if (end > line) {
            if (memchr(line, 0, (size_t)(end - line)))
                s = graft_error(GRAFT_ERR_FORMAT, "%s: contains a NUL byte", path);
            else if (count < d->num_classes) {
                d->classes[count] = malloc((size_t)(end - line) + 1);
                if (!d->classes[count]) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
                else {
                    memcpy(d->classes[count], line, (size_t)(end - line));
                    d->classes[count][end - line] = 0;
                }
            }
            count++;
        }
        line = next;
    }
    free(text);
    if (!s && count != d->num_classes)
        s = graft_error(GRAFT_ERR_FORMAT, "%s: %lld class names, expected %lld", path,
                        (long long)count, (long long)d->num_classes);
    return s;
}

/* ---- records ------------------------------------------------------------------------ */

/* The number of records in a file, from its size. */
static graft_status count_records(const char *path, size_t record_bytes, int64_t *records) {
    struct stat st;
    if (stat(path, &st) != 0) return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return graft_error(GRAFT_ERR_IO, "%s: not a regular file", path);
    if (st.st_size == 0) return graft_error(GRAFT_ERR_FORMAT, "%s: file is empty", path);
    if ((uint64_t)st.st_size % record_bytes != 0)
        return graft_error(GRAFT_ERR_FORMAT,
                           "%s: size %lld is not a whole number of %zu-byte CIFAR records "
                           "(truncated, or not this CIFAR variant)",
                           path, (long long)st.st_size, record_bytes);
    *records = (int64_t)((uint64_t)st.st_size / record_bytes);
    return GRAFT_OK;
}

/* Reads records into d starting at sample *at, advancing *at. */
static graft_status read_records(const char *path, const cifar_layout *lay, int64_t records,
                                 graft_dataset *d, int64_t *at) {
    FILE *f = fopen(path, "rb");
    if (!f) return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
    uint8_t rec[2 + CIFAR_PIXEL_BYTES];
    size_t rec_bytes = (size_t)lay->label_bytes + CIFAR_PIXEL_BYTES;
    graft_status s = GRAFT_OK;
    for (int64_t r = 0; r < records && !s; r++) {
        if (fread(rec, 1, rec_bytes, f) != rec_bytes) {
            s = graft_error(GRAFT_ERR_FORMAT, "%s: file ended at record %lld of %lld (changed "
                                              "while reading?)", path, (long long)r,
                            (long long)records);
            break;
        }
        for (int k = 0; k < lay->label_bytes && !s; k++)
            if (rec[k] >= lay->label_limits[k])
                s = graft_error(GRAFT_ERR_FORMAT, "%s: %slabel %u of record %lld is not below %lld",
                                path, lay->label_bytes == 1 ? "" : k == 0 ? "coarse " : "fine ",
                                rec[k], (long long)r, (long long)lay->label_limits[k]);
        if (s) break;
        int64_t i = (*at)++;
        d->labels[i] = rec[lay->label_index];
        /* record pixels: [3, 32, 32] (planes)  ->  image: [32, 32, 3] */
        const uint8_t *px = rec + lay->label_bytes;
        uint8_t *img = d->images + (size_t)i * CIFAR_PIXEL_BYTES;
        for (int ch = 0; ch < CIFAR_CHANNELS; ch++)
            for (int p = 0; p < CIFAR_SIDE * CIFAR_SIDE; p++)
                img[p * CIFAR_CHANNELS + ch] = px[ch * CIFAR_SIDE * CIFAR_SIDE + p];
    }
    fclose(f);
    return s;
}

/* root/<layout dir> when that is a directory, else root itself. */
static void dataset_dir(const char *root, const cifar_layout *lay, char *dir) {
    struct stat st;
    int n = snprintf(dir, PATH_BYTES, "%s/%s", root, lay->dir);
    if (n > 0 && n < PATH_BYTES && stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) return;
    snprintf(dir, PATH_BYTES, "%s", root);
}

static graft_status join(char *out, const char *dir, const char *name) {
    int n = snprintf(out, PATH_BYTES, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_BYTES) return graft_error(GRAFT_ERR_INVALID, "%s: path too long", dir);
    return GRAFT_OK;
}

static graft_status cifar_load(const char *root, const cifar_layout *lay, bool train,
                               graft_dataset **out) {
    *out = NULL;
    char dir[PATH_BYTES], path[PATH_BYTES];
    dataset_dir(root, lay, dir);
    const char *const *files = train ? lay->train : lay->test;
    size_t rec_bytes = (size_t)lay->label_bytes + CIFAR_PIXEL_BYTES;

    int64_t total = 0, counts[8] = {0};
    for (int i = 0; files[i]; i++) {
        graft_status s = join(path, dir, files[i]);
        if (!s) s = count_records(path, rec_bytes, &counts[i]);
        if (s) return s;
        total += counts[i];
    }
    graft_dataset *d = calloc(1, sizeof *d);
    if (!d) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    d->h = d->w = CIFAR_SIDE;
    d->c = CIFAR_CHANNELS;
    d->num_classes = lay->label_limits[lay->label_index];
    d->images = malloc((size_t)total * CIFAR_PIXEL_BYTES);
    d->labels = malloc(sizeof *d->labels * (size_t)total);
    graft_status s = GRAFT_OK;
    if (!d->images || !d->labels) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    int64_t at = 0;
    for (int i = 0; !s && files[i]; i++) {
        s = join(path, dir, files[i]);
        if (!s) s = read_records(path, lay, counts[i], d, &at);
    }
    d->n = at;
    if (!s) s = join(path, dir, lay->names);
    if (!s) s = read_names(path, d);
    if (s) {
        graft_dataset_free(d);
        return s;
    }
    *out = d;
    return GRAFT_OK;
}

graft_status graft_cifar10_load(const char *root, bool train, graft_dataset **out) {
    return cifar_load(root, &cifar10, train, out);
}

graft_status graft_cifar100_load(const char *root, bool train, graft_dataset **out) {
    return cifar_load(root, &cifar100, train, out);
}
