/* folder.c — torchvision's ImageFolder as a lazy source (rules in source.h).
 *
 * Opening walks the class folders, sorts what it finds the way torchvision does, and
 * reads each file's header; what stays in memory is one string pool of paths plus a
 * label and a size per sample.  Pixels are decoded by graft_source_get on whatever
 * thread asks, into that thread's graft_source_work. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/error.h"
#include "data/source.h"

#define PATH_BYTES 4096
#define WALK_MAX_DEPTH 32                 /* symlinked folders may form loops */
#define FILE_MAX_BYTES (1ull << 30)       /* an image file larger than this is refused */
#define JPEG_MAX_SEGMENTS 4096            /* markers scanned for the frame header */
#define PNG_SIGNATURE_BYTES 8
#define BMP_FILE_HEADER_BYTES 14
#define BMP_CORE_HEADER_BYTES 12          /* OS/2 BITMAPCOREHEADER: 16-bit sizes */
#define RGB_CHANNELS 3

/* torchvision's IMG_EXTENSIONS split into what graft decodes and what it does not. */
static const char *const DECODED_EXTENSIONS[] = {".png", ".jpg", ".jpeg", ".bmp", NULL};
static const char *const OTHER_IMAGE_EXTENSIONS[] = {".ppm", ".pgm", ".tif", ".tiff", ".webp",
                                                     NULL};

/* ---- a growable list of strings in one pool --------------------------------------- */

typedef struct str_pool {
    char *data;
    size_t len, cap;
} str_pool;

/* Appends s and its NUL; *at receives its offset.  false when out of memory. */
static bool pool_add(str_pool *p, const char *s, size_t *at) {
    size_t n = strlen(s) + 1;
    if (p->len + n > p->cap) {
        size_t cap = p->cap ? p->cap : 4096;
        while (cap < p->len + n) cap *= 2;
        char *d = realloc(p->data, cap);
        if (!d) return false;
        p->data = d;
        p->cap = cap;
    }
    memcpy(p->data + p->len, s, n);
    *at = p->len;
    p->len += n;
    return true;
}

/* ---- header probing --------------------------------------------------------------- */

static uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static uint32_t be32(const uint8_t *p) { return be16(p) << 16 | be16(p + 2); }
static uint32_t le16(const uint8_t *p) { return (uint32_t)p[1] << 8 | p[0]; }
static uint32_t le32(const uint8_t *p) { return le16(p + 2) << 16 | le16(p); }

static graft_status probe_error(const char *path, const char *why) {
    return graft_error(GRAFT_ERR_FORMAT, "%s: %s", path, why);
}

/* JPEG: markers from after SOI until a start-of-frame (SOF0..SOF15 less DHT, JPG and
 * DAC), whose body is precision, height, width. */
static graft_status probe_jpeg(FILE *f, const char *path, int64_t *h, int64_t *w) {
    if (fseek(f, 2, SEEK_SET) != 0) return probe_error(path, "file is truncated");
    for (int seg = 0; seg < JPEG_MAX_SEGMENTS; seg++) {
        int c = fgetc(f);
        if (c != 0xFF) return probe_error(path, c == EOF ? "file is truncated before the frame header"
                                                         : "corrupt JPEG marker");
        while ((c = fgetc(f)) == 0xFF) {} /* fill bytes */
        if (c == EOF) return probe_error(path, "file is truncated before the frame header");
        if (c == 0xD8 || c == 0x01 || (c >= 0xD0 && c <= 0xD7)) continue; /* no length */
        if (c == 0xD9 || c == 0xDA) return probe_error(path, "JPEG has no frame header");
        uint8_t len2[2];
        if (fread(len2, 1, 2, f) != 2) return probe_error(path, "file is truncated");
        uint32_t len = be16(len2);
        if (len < 2) return probe_error(path, "corrupt JPEG segment length");
        bool sof = c >= 0xC0 && c <= 0xCF && c != 0xC4 && c != 0xC8 && c != 0xCC;
        if (sof) {
            uint8_t b[5];
            if (len < 2 + sizeof b || fread(b, 1, sizeof b, f) != sizeof b)
                return probe_error(path, "file is truncated in the frame header");
            *h = be16(b + 1);
            *w = be16(b + 3);
            return GRAFT_OK;
        }
        if (fseek(f, (long)len - 2, SEEK_CUR) != 0) return probe_error(path, "file is truncated");
    }
    return probe_error(path, "too many JPEG segments before the frame header");
}

graft_status graft_image_probe(const char *path, int *h, int *w) {
    FILE *f = fopen(path, "rb");
    if (!f) return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return graft_error(GRAFT_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > FILE_MAX_BYTES) {
        fclose(f);
        return graft_error(GRAFT_ERR_FORMAT, "%s: file of %lld bytes is beyond the limit of %llu",
                           path, (long long)st.st_size, FILE_MAX_BYTES);
    }
    uint8_t head[32] = {0};
    size_t got = fread(head, 1, sizeof head, f);
    int64_t hh = 0, ww = 0;
    graft_status s = GRAFT_OK;
    switch (graft_image_sniff(head, got)) {
    case GRAFT_IMAGE_PNG: /* signature, then the IHDR chunk: length 13, type, width, height */
        if (got < PNG_SIGNATURE_BYTES + 16) s = probe_error(path, "file is truncated");
        else if (memcmp(head + PNG_SIGNATURE_BYTES + 4, "IHDR", 4) != 0)
            s = probe_error(path, "PNG does not start with an IHDR chunk");
        else {
            ww = be32(head + PNG_SIGNATURE_BYTES + 8);
            hh = be32(head + PNG_SIGNATURE_BYTES + 12);
        }
        break;
    case GRAFT_IMAGE_BMP: /* file header, then the info header's size, width, height */
        if (got < BMP_FILE_HEADER_BYTES + BMP_CORE_HEADER_BYTES) s = probe_error(path, "file is truncated");
        else if (le32(head + BMP_FILE_HEADER_BYTES) == BMP_CORE_HEADER_BYTES) {
            ww = le16(head + 18);
            hh = le16(head + 20);
        } else if (got < 26) {
            s = probe_error(path, "file is truncated");
        } else {
            ww = (int32_t)le32(head + 18);
            hh = (int32_t)le32(head + 22);
            if (hh < 0) hh = -hh; /* top-down rows */
        }
        break;
    case GRAFT_IMAGE_JPEG: s = probe_jpeg(f, path, &hh, &ww); break;
    case GRAFT_IMAGE_UNKNOWN:
        s = graft_error(GRAFT_ERR_UNSUPPORTED, "%s: %s", path,
                        got ? "not a PNG, JPEG or BMP file" : "file is empty");
        break;
    }
    fclose(f);
    if (s) return s;
    if (hh < 1 || ww < 1 || hh > GRAFT_IMAGE_MAX_SIDE || ww > GRAFT_IMAGE_MAX_SIDE ||
        hh * ww > GRAFT_IMAGE_MAX_PIXELS)
        return graft_error(GRAFT_ERR_FORMAT, "%s: image size %lldx%lld is outside the limits", path,
                           (long long)ww, (long long)hh);
    *h = (int)hh;
    *w = (int)ww;
    return GRAFT_OK;
}

/* ---- walking ---------------------------------------------------------------------- */

static bool has_extension(const char *name, const char *const *exts) {
    size_t n = strlen(name);
    for (int i = 0; exts[i]; i++) {
        size_t e = strlen(exts[i]);
        if (n >= e && strcasecmp(name + n - e, exts[i]) == 0) return true;
    }
    return false;
}

typedef struct found_file {
    size_t dir, name;          /* offsets into the walk's pool: folder relative to the class, name */
    const char *dirp, *namep;  /* the same as pointers, once the pool stops growing */
    bool decodable;
} found_file;

typedef struct walk {
    str_pool pool;
    found_file *files;
    size_t n, cap;
} walk;

/* sorted(os.walk(...)) orders folders by path, then files by name within each. */
static int cmp_found(const void *a, const void *b) {
    const found_file *x = a, *y = b;
    int c = strcmp(x->dirp, y->dirp);
    return c ? c : strcmp(x->namep, y->namep);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode); /* follows links, like is_dir() */
}

/* Collects the image files under dir (rel is dir relative to the class folder). */
static graft_status walk_dir(walk *wk, const char *dir, const char *rel, int depth) {
    if (depth > WALK_MAX_DEPTH)
        return graft_error(GRAFT_ERR_FORMAT, "%s: folders nested deeper than %d (a link loop?)", dir,
                           WALK_MAX_DEPTH);
    DIR *d = opendir(dir);
    if (!d) return graft_error(GRAFT_ERR_IO, "%s: %s", dir, strerror(errno));
    graft_status s = GRAFT_OK;
    size_t rel_at = 0;
    if (!pool_add(&wk->pool, rel, &rel_at)) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    struct dirent *e;
    char path[PATH_BYTES], sub[PATH_BYTES];
    while (!s && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) {
            s = graft_error(GRAFT_ERR_INVALID, "%s/%s: path too long", dir, e->d_name);
            break;
        }
        if (is_dir(path)) {
            snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
            s = walk_dir(wk, path, sub, depth + 1);
            continue;
        }
        bool decodable = has_extension(e->d_name, DECODED_EXTENSIONS);
        if (!decodable && !has_extension(e->d_name, OTHER_IMAGE_EXTENSIONS)) continue;
        if (wk->n == wk->cap) {
            size_t cap = wk->cap ? wk->cap * 2 : 256;
            found_file *f = realloc(wk->files, cap * sizeof *f);
            if (!f) {
                s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
                break;
            }
            wk->files = f;
            wk->cap = cap;
        }
        found_file *f = &wk->files[wk->n];
        f->dir = rel_at;
        f->decodable = decodable;
        if (!pool_add(&wk->pool, e->d_name, &f->name)) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
        else wk->n++;
    }
    closedir(d);
    return s;
}

/* The class folders of root, sorted; *names is an array of owned strings. */
static graft_status list_classes(const char *root, char ***names, int64_t *count) {
    *names = NULL;
    *count = 0;
    DIR *d = opendir(root);
    if (!d) return graft_error(GRAFT_ERR_IO, "%s: %s", root, strerror(errno));
    char **list = NULL;
    size_t n = 0, cap = 0;
    graft_status s = GRAFT_OK;
    struct dirent *e;
    char path[PATH_BYTES];
    while (!s && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (snprintf(path, sizeof path, "%s/%s", root, e->d_name) >= (int)sizeof path) continue;
        if (!is_dir(path)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **l = realloc(list, cap * sizeof *l);
            if (!l) {
                s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
                break;
            }
            list = l;
        }
        size_t len = strlen(e->d_name) + 1;
        list[n] = malloc(len);
        if (!list[n]) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
        else memcpy(list[n++], e->d_name, len);
    }
    closedir(d);
    if (!s && n == 0) s = graft_error(GRAFT_ERR_FORMAT, "%s: no class folders (expected ROOT/CLASS/IMAGE files)", root);
    if (!s && n > GRAFT_SOURCE_MAX_CLASSES)
        s = graft_error(GRAFT_ERR_FORMAT, "%s: more than %d class folders", root, GRAFT_SOURCE_MAX_CLASSES);
    if (s) {
        for (size_t i = 0; i < n; i++) free(list[i]);
        free(list);
        return s;
    }
    qsort(list, n, sizeof *list, cmp_str);
    *names = list;
    *count = (int64_t)n;
    return GRAFT_OK;
}

/* ---- the source --------------------------------------------------------------------- */

typedef struct folder_sample {
    size_t path;   /* offset in paths */
    int64_t label;
    int h, w;
} folder_sample;

typedef struct folder {
    str_pool paths;
    folder_sample *samples;
    int64_t n, cap;
    int64_t skipped;
} folder;

static void folder_free(void *impl) {
    folder *f = impl;
    if (!f) return;
    free(f->paths.data);
    free(f->samples);
    free(f);
}

static const char *folder_path(const graft_source *s, int64_t i) {
    const folder *f = s->impl;
    return f->paths.data + f->samples[i].path;
}

static int64_t folder_label(const graft_source *s, int64_t i) {
    return ((const folder *)s->impl)->samples[i].label;
}

static void folder_shape(const graft_source *s, int64_t i, int *c, int *h, int *w) {
    const folder *f = s->impl;
    *c = RGB_CHANNELS;
    *h = f->samples[i].h;
    *w = f->samples[i].w;
}

static int64_t folder_skipped(const graft_source *s) { return ((const folder *)s->impl)->skipped; }

/* Reads the whole file into w->file (grown as needed). */
static graft_status read_file(const char *path, graft_source_work *w, size_t *size) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    graft_status s = GRAFT_OK;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode))
        s = graft_error(GRAFT_ERR_IO, "%s: not a regular file", path);
    else if ((uint64_t)st.st_size > FILE_MAX_BYTES)
        s = graft_error(GRAFT_ERR_FORMAT, "%s: file of %lld bytes is beyond the limit of %llu", path,
                        (long long)st.st_size, FILE_MAX_BYTES);
    size_t n = s ? 0 : (size_t)st.st_size;
    if (!s && n + 1 > w->file_cap) {
        uint8_t *b = realloc(w->file, n + 1);
        if (!b) s = graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
        else {
            w->file = b;
            w->file_cap = n + 1;
        }
    }
    if (!s) {
        *size = fread(w->file, 1, n, fp);
        if (ferror(fp)) s = graft_error(GRAFT_ERR_IO, "%s: read error", path);
    }
    fclose(fp);
    return s;
}

static graft_status folder_get(const graft_source *s, int64_t i, graft_source_work *w,
                               graft_sample *out) {
    const folder *f = s->impl;
    const folder_sample *fs = &f->samples[i];
    const char *path = f->paths.data + fs->path;
    size_t size = 0;
    graft_status st = read_file(path, w, &size);
    if (!st) st = graft_image_decode(w->file, size, path, &w->image);
    if (st) return st;
    if (w->image.h != fs->h || w->image.w != fs->w)
        return graft_error(GRAFT_ERR_FORMAT, "%s: decoded %dx%d, but its header said %dx%d", path,
                           w->image.w, w->image.h, fs->w, fs->h);
    out->image = w->image;
    out->tensor = NULL;
    out->c = w->image.c;
    out->h = fs->h;
    out->w = fs->w;
    out->label = fs->label;
    return GRAFT_OK;
}

static const graft_source_ops FOLDER_OPS = {folder_get, folder_label, folder_shape, folder_path,
                                            folder_skipped, folder_free};

/* Probes one found file and appends it as a sample, or reports and counts it. */
static graft_status add_file(folder *f, const char *path, bool decodable, int64_t label,
                             bool strict, bool *added) {
    *added = false;
    int h = 0, w = 0;
    graft_status s = decodable ? graft_image_probe(path, &h, &w)
                               : graft_error(GRAFT_ERR_UNSUPPORTED, "%s: graft does not decode "
                                                                    "this image format", path);
    if (s == GRAFT_ERR_NOMEM || (s && strict)) return s;
    if (s) {
        graft_log(1, "%s; skipped", graft_errmsg());
        f->skipped++;
        return GRAFT_OK;
    }
    if (f->n == f->cap) {
        int64_t cap = f->cap ? f->cap * 2 : 1024;
        folder_sample *p = realloc(f->samples, (size_t)cap * sizeof *p);
        if (!p) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
        f->samples = p;
        f->cap = cap;
    }
    folder_sample *fs = &f->samples[f->n];
    if (!pool_add(&f->paths, path, &fs->path)) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    fs->label = label;
    fs->h = h;
    fs->w = w;
    f->n++;
    *added = true;
    return GRAFT_OK;
}

/* Walks one class folder and adds its files in torchvision's order. */
static graft_status add_class(folder *f, const char *root, const char *name, int64_t label,
                              bool strict) {
    char dir[PATH_BYTES], path[PATH_BYTES];
    if (snprintf(dir, sizeof dir, "%s/%s", root, name) >= (int)sizeof dir)
        return graft_error(GRAFT_ERR_INVALID, "%s/%s: path too long", root, name);
    walk wk = {0};
    graft_status s = walk_dir(&wk, dir, "", 0);
    if (!s && wk.n == 0)
        s = graft_error(GRAFT_ERR_FORMAT, "%s: no image files in class folder '%s' (graft reads "
                                          ".png .jpg .jpeg .bmp)", root, name);
    if (!s) {
        for (size_t i = 0; i < wk.n; i++) {
            wk.files[i].dirp = wk.pool.data + wk.files[i].dir;
            wk.files[i].namep = wk.pool.data + wk.files[i].name;
        }
        qsort(wk.files, wk.n, sizeof *wk.files, cmp_found);
    }
    for (size_t i = 0; !s && i < wk.n; i++) {
        const char *rel = wk.files[i].dirp;
        int len = snprintf(path, sizeof path, "%s%s%s/%s", dir, *rel ? "/" : "", rel,
                           wk.files[i].namep);
        if (len >= (int)sizeof path) {
            s = graft_error(GRAFT_ERR_INVALID, "%s/%s: path too long", dir, rel);
            break;
        }
        bool added;
        s = add_file(f, path, wk.files[i].decodable, label, strict, &added);
    }
    free(wk.pool.data);
    free(wk.files);
    return s;
}

graft_status graft_source_folder(const char *root, const graft_folder_options *o,
                                 graft_source **out) {
    *out = NULL;
    graft_folder_options none = {0};
    if (!o) o = &none;
    size_t rl = strlen(root);
    while (rl > 1 && root[rl - 1] == '/') rl--; /* "data/" names the same folder as "data" */
    char clean[PATH_BYTES];
    if (rl >= sizeof clean) return graft_error(GRAFT_ERR_INVALID, "%s: path too long", root);
    memcpy(clean, root, rl);
    clean[rl] = 0;
    if (!is_dir(clean)) return graft_error(GRAFT_ERR_IO, "%s: not a folder", clean);

    char **names;
    int64_t k;
    graft_status s = list_classes(clean, &names, &k);
    if (s) return s;
    if (o->classes) {
        bool same = k == o->num_classes;
        for (int64_t i = 0; same && i < k; i++) same = strcmp(names[i], o->classes[i]) == 0;
        if (!same)
            s = graft_error(GRAFT_ERR_FORMAT, "%s: its %lld class folders differ from the %lld "
                                              "classes of the training split", clean,
                            (long long)k, (long long)o->num_classes);
    }
    folder *f = s ? NULL : calloc(1, sizeof *f);
    if (!s && !f) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    for (int64_t c = 0; !s && c < k; c++) s = add_class(f, clean, names[c], c, o->strict);
    if (!s && f->n == 0)
        s = graft_error(GRAFT_ERR_FORMAT, "%s: none of the %lld image files could be read", clean,
                        (long long)f->skipped);
    if (!s)
        s = graft_source_new(&FOLDER_OPS, f, GRAFT_SAMPLE_IMAGE, f->n, k,
                             (const char *const *)names, clean, out);
    else
        folder_free(f);
    for (int64_t i = 0; i < k; i++) free(names[i]);
    free(names);
    return s;
}
