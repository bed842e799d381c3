/* safetensors.c — reading and writing the safetensors format.
 *
 * Layout (https://github.com/huggingface/safetensors, "Format"):
 *
 *     [8 bytes]  N, little-endian u64: the header length
 *     [N bytes]  a UTF-8 JSON object, maybe padded with trailing spaces:
 *                {"__metadata__": {"key": "value", ...},              (optional)
 *                 "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
 *     [rest]     the data buffer; offsets are relative to its start; elements are
 *                little-endian, row-major
 *
 * A file is treated as hostile: every length and offset is checked against the bytes
 * actually present before anything is allocated or copied, and, as the format
 * requires, the tensors must cover the data buffer exactly (no overlaps, no holes).
 *
 * graft's tensors are float32 or int64, so every float dtype (F64, F32, F16, BF16)
 * loads as float32 and every integer dtype (I64 I32 I16 I8 U64 U32 U16 U8 BOOL) as
 * int64.  F64 -> float32 rounds to nearest like a C cast; integers convert by value (a U64
 * above INT64_MAX is refused); BOOL is 0 or 1.  The F8, F6, F4 and C64 dtypes are
 * recognised (so their sizes are validated) and reported as unsupported.  Writing produces F32
 * and I64, or F16/BF16 for the float tensors through graft_safetensors_save_dtype. */
#include "io/readers.h"
#include "io/writers.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "core/tensor.h"
#include "io/atomic_file.h"
#include "io/dtype_convert.h"

#define ST_LEN_BYTES 8                   /* the u64 header length that opens the file */
#define ST_MAX_HEADER_BYTES 100000000ull /* the reference implementation's MAX_HEADER_SIZE */
#define ST_DATA_ALIGN 8                  /* header padded so the data starts 8-byte aligned */
#define ST_METADATA_KEY "__metadata__"
#define NAME_SHOWN_BYTES 160             /* longest tensor name quoted in an error */

/* How a dtype of the format becomes a graft tensor. */
typedef enum st_kind {
    ST_UNSUPPORTED, /* no graft equivalent */
    ST_F32,         /* float32, copied */
    ST_I64,         /* int64, copied */
    ST_F64,         /* -> float32, rounded */
    ST_F16,         /* -> float32, exact */
    ST_BF16,        /* -> float32, exact */
    ST_SINT,        /* signed integer -> int64 */
    ST_UINT,        /* unsigned integer -> int64 (U64 checked for range) */
    ST_BOOL         /* -> int64 0 / 1 */
} st_kind;

/* The dtypes of the format, with their element sizes in bits (F4 and F6 pack). */
typedef struct st_dtype {
    const char *name;
    unsigned bits;
    st_kind kind;
} st_dtype;

static const st_dtype st_dtypes[] = {
    {"F64", 64, ST_F64},   {"F32", 32, ST_F32},   {"F16", 16, ST_F16},   {"BF16", 16, ST_BF16},
    {"I64", 64, ST_I64},   {"I32", 32, ST_SINT},  {"I16", 16, ST_SINT},  {"I8", 8, ST_SINT},
    {"U64", 64, ST_UINT},  {"U32", 32, ST_UINT},  {"U16", 16, ST_UINT},  {"U8", 8, ST_UINT},
    {"BOOL", 8, ST_BOOL},
    {"F8_E5M2", 8, ST_UNSUPPORTED}, {"F8_E4M3", 8, ST_UNSUPPORTED},
    {"F8_E8M0", 8, ST_UNSUPPORTED}, {"C64", 64, ST_UNSUPPORTED},
    {"F4", 4, ST_UNSUPPORTED},      {"F6_E2M3", 6, ST_UNSUPPORTED},
    {"F6_E3M2", 6, ST_UNSUPPORTED},
};

/* The graft dtype a supported kind loads as. */
static graft_dtype kind_dtype(st_kind k) {
    return k == ST_F32 || k == ST_F64 || k == ST_F16 || k == ST_BF16 ? GRAFT_F32 : GRAFT_I64;
}

static const st_dtype *find_dtype(const char *name) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, name) == 0) return &st_dtypes[i];
    return NULL;
}

/* How float32 tensors are written: the dtype name, bytes per element, and the
 * encoder from float32 (NULL: the float32 bytes themselves). */
typedef struct st_float_out {
    const char *name;
    size_t bytes;
    void (*encode)(const float *src, unsigned char *dst, size_t n);
} st_float_out;

static const st_float_out float_outs[] = {
    {"F32", 4, NULL},
    {"F16", 2, graft_f32_to_f16le},
    {"BF16", 2, graft_f32_to_bf16le},
};

/* ---- byte order ------------------------------------------------------------ */

static bool host_is_big_endian(void) {
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 0;
}

/* Reverses each elem_bytes-sized element of buf in place. */
static void swap_elements(unsigned char *buf, size_t bytes, size_t elem_bytes) {
    for (size_t i = 0; i + elem_bytes <= bytes; i += elem_bytes)
        for (size_t a = i, b = i + elem_bytes - 1; a < b; a++, b--) {
            unsigned char c = buf[a];
            buf[a] = buf[b];
            buf[b] = c;
        }
}

/* ---- error messages -------------------------------------------------------- */

/* A name from the file as it may appear in a one-line message: control bytes become
 * '?' and long names are cut with "...". */
static const char *shown(const char *name, char buf[NAME_SHOWN_BYTES]) {
    size_t i = 0;
    for (; name[i] && i < NAME_SHOWN_BYTES - 4; i++)
        buf[i] = (unsigned char)name[i] < 0x20 || name[i] == 0x7f ? '?' : name[i];
    if (name[i]) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = 0;
    return buf;
}

/* GRAFT_ERR_FORMAT with the message prefixed by the file name. */
static graft_status format_error(const char *path, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static graft_status format_error(const char *path, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return graft_error(GRAFT_ERR_FORMAT, "%s: %s", path, msg);
}

/* ---- reading the file ------------------------------------------------------ */

/* The whole file, mapped when it is a regular file, else read into memory. */
typedef struct file_bytes {
    const unsigned char *data;
    size_t size;
    void *mapped; /* munmap(mapped, size) when non-NULL */
    unsigned char *heap;
} file_bytes;

static void file_bytes_release(file_bytes *fb) {
    if (fb->mapped) munmap(fb->mapped, fb->size);
    free(fb->heap);
    memset(fb, 0, sizeof *fb);
}

static graft_status read_stream(const char *path, int fd, file_bytes *fb) {
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = malloc(cap);
    if (!buf) return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
    for (;;) {
        if (len == cap) {
            unsigned char *p = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!p) {
                free(buf);
                return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = p;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            free(buf);
            return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(e));
        }
        if (n == 0) break;
        len += (size_t)n;
    }
    fb->heap = buf;
    fb->data = buf;
    fb->size = len;
    return GRAFT_OK;
}

static graft_status read_whole_file(const char *path, file_bytes *fb) {
    memset(fb, 0, sizeof *fb);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(e));
    }
    graft_status s = GRAFT_OK;
    /* mmap cannot map an empty file; anything not regular (a pipe) is read instead. */
    if (S_ISREG(st.st_mode) && st.st_size > 0 && (uint64_t)st.st_size <= SIZE_MAX) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) {
            fb->mapped = p;
            fb->data = p;
            fb->size = (size_t)st.st_size;
        } else {
            s = read_stream(path, fd, fb);
        }
    } else {
        s = read_stream(path, fd, fb);
    }
    close(fd);
    return s;
}

/* ---- parsing --------------------------------------------------------------- */

/* One tensor entry of the header, validated against the data buffer. */
typedef struct st_entry {
    const char *name;    /* owned by the JSON document */
    const st_dtype *dtype;
    int ndim;            /* may exceed GRAFT_MAX_DIMS; then shape holds the first ones */
    int64_t shape[GRAFT_MAX_DIMS];
    uint64_t begin, end; /* byte offsets into the data buffer */
} st_entry;

/* A non-negative JSON integer, or false. */
static bool json_nonneg(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static graft_status parse_metadata(const char *path, json_t *meta, graft_tensor_map *m) {
    char nb[NAME_SHOWN_BYTES];
    if (json_is_null(meta)) return GRAFT_OK; /* the reference reader treats null as absent */
    if (!json_is_object(meta)) return format_error(path, "%s is not an object", ST_METADATA_KEY);
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value))
            return format_error(path, "%s value for '%s' is not a string", ST_METADATA_KEY,
                                shown(key, nb));
        graft_status s = graft_tensor_map_set_meta(m, key, json_string_value(value));
        if (s) return s;
    }
    return GRAFT_OK;
}

/* Checks one tensor entry on its own: fields, shape, offsets within the data buffer,
 * byte length matching the shape. */
static graft_status parse_entry(const char *path, const char *name, json_t *v,
                                uint64_t data_bytes, st_entry *e) {
    char nb[NAME_SHOWN_BYTES];
    char shape_str[128];
    memset(e, 0, sizeof *e);
    e->name = name;
    if (!*name) return format_error(path, "a tensor has an empty name");
    if (!json_is_object(v))
        return format_error(path, "tensor '%s' is not an object", shown(name, nb));

    json_t *dt = json_object_get(v, "dtype");
    if (!json_is_string(dt))
        return format_error(path, "tensor '%s' has no string 'dtype'", shown(name, nb));
    e->dtype = find_dtype(json_string_value(dt));
    if (!e->dtype) {
        char db[NAME_SHOWN_BYTES];
        return format_error(path, "tensor '%s' has unknown dtype '%s'", shown(name, nb),
                            shown(json_string_value(dt), db));
    }

    json_t *shape = json_object_get(v, "shape");
    if (!json_is_array(shape))
        return format_error(path, "tensor '%s' has no 'shape' array", shown(name, nb));
    size_t ndim = json_array_size(shape);
    uint64_t numel = 1;
    bool overflow = false;
    for (size_t i = 0; i < ndim; i++) {
        uint64_t d;
        if (!json_nonneg(json_array_get(shape, i), &d))
            return format_error(path, "tensor '%s' shape has a negative or non-integer dimension",
                                shown(name, nb));
        if (i < GRAFT_MAX_DIMS) e->shape[i] = (int64_t)d;
        /* Like the reference reader, a product that overflows on the way is an error
         * even if a later dimension is 0. */
        if (d != 0 && numel > (uint64_t)INT64_MAX / d) overflow = true;
        else numel *= d;
    }
    if (overflow || ndim > INT32_MAX)
        return format_error(path, "tensor '%s' shape overflows", shown(name, nb));
    e->ndim = (int)ndim;
    graft_shape_str(e->ndim < GRAFT_MAX_DIMS ? e->ndim : GRAFT_MAX_DIMS, e->shape, shape_str,
                    sizeof shape_str);

    json_t *offs = json_object_get(v, "data_offsets");
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !json_nonneg(json_array_get(offs, 0), &e->begin) ||
        !json_nonneg(json_array_get(offs, 1), &e->end))
        return format_error(path, "tensor '%s' has no 'data_offsets' pair of non-negative integers",
                            shown(name, nb));
    if (e->begin > e->end)
        return format_error(path, "tensor '%s' data_offsets [%llu, %llu] begin after their end",
                            shown(name, nb), (unsigned long long)e->begin,
                            (unsigned long long)e->end);
    if (e->end > data_bytes)
        return format_error(path, "tensor '%s' data_offsets [%llu, %llu] exceed the data size %llu",
                            shown(name, nb), (unsigned long long)e->begin,
                            (unsigned long long)e->end, (unsigned long long)data_bytes);

    /* numel <= INT64_MAX and bits <= 64, so the bit count overflows only past 2^63 * 64;
     * check in two steps. */
    unsigned bits = e->dtype->bits;
    if (numel > UINT64_MAX / bits)
        return format_error(path, "tensor '%s' shape overflows", shown(name, nb));
    uint64_t nbits = numel * bits;
    if (nbits % 8 != 0)
        return format_error(path, "tensor '%s' of %s with shape %s does not fill whole bytes",
                            shown(name, nb), e->dtype->name, shape_str);
    if (e->end - e->begin != nbits / 8)
        return format_error(path, "tensor '%s' has %llu bytes but %s with shape %s needs %llu",
                            shown(name, nb), (unsigned long long)(e->end - e->begin),
                            e->dtype->name, shape_str, (unsigned long long)(nbits / 8));
    return GRAFT_OK;
}

static int by_offsets(const void *pa, const void *pb) {
    const st_entry *a = *(const st_entry *const *)pa, *b = *(const st_entry *const *)pb;
    if (a->begin != b->begin) return a->begin < b->begin ? -1 : 1;
    if (a->end != b->end) return a->end < b->end ? -1 : 1;
    return 0;
}

/* The format requires the tensors to tile the data buffer: sorted by offset, each
 * begins where the previous ended, and the last ends at the end of the file. */
static graft_status check_coverage(const char *path, st_entry *entries, size_t n,
                                   uint64_t data_bytes) {
    char na[NAME_SHOWN_BYTES], nb[NAME_SHOWN_BYTES];
    st_entry **order = malloc((n ? n : 1) * sizeof *order);
    if (!order) return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < n; i++) order[i] = &entries[i];
    qsort(order, n, sizeof *order, by_offsets);
    graft_status s = GRAFT_OK;
    uint64_t covered = 0;
    for (size_t i = 0; i < n && !s; i++) {
        const st_entry *e = order[i];
        if (e->begin < covered)
            s = format_error(path, "tensor '%s' data_offsets [%llu, %llu] overlap tensor '%s'",
                             shown(e->name, na), (unsigned long long)e->begin,
                             (unsigned long long)e->end, shown(order[i - 1]->name, nb));
        else if (e->begin > covered)
            s = format_error(path, "data bytes [%llu, %llu) belong to no tensor",
                             (unsigned long long)covered, (unsigned long long)e->begin);
        covered = e->end;
    }
    if (!s && covered != data_bytes)
        s = format_error(path, "data bytes [%llu, %llu) belong to no tensor",
                         (unsigned long long)covered, (unsigned long long)data_bytes);
    free(order);
    return s;
}

/* Fills t (created with e's shape and graft dtype) from the tensor's bytes in the file. */
static graft_status convert_entry(const char *path, const st_entry *e, const unsigned char *src,
                                  graft_tensor *t) {
    size_t nbytes = (size_t)(e->end - e->begin);
    size_t numel = (size_t)graft_tensor_numel(t);
    if (numel == 0) return GRAFT_OK;
    switch (e->dtype->kind) {
    case ST_F32:
    case ST_I64:
        memcpy(t->data, src, nbytes);
        if (host_is_big_endian()) swap_elements(t->data, nbytes, graft_dtype_size(t->dtype));
        return GRAFT_OK;
    case ST_F64: graft_f64le_to_f32(src, t->data, numel); return GRAFT_OK;
    case ST_F16: graft_f16le_to_f32(src, t->data, numel); return GRAFT_OK;
    case ST_BF16: graft_bf16le_to_f32(src, t->data, numel); return GRAFT_OK;
    case ST_BOOL: graft_bool_to_i64(src, t->data, numel); return GRAFT_OK;
    case ST_SINT:
    case ST_UINT: {
        size_t bytes = e->dtype->bits / 8;
        size_t bad = graft_intle_to_i64(src, bytes, e->dtype->kind == ST_SINT, t->data, numel);
        if (bad == numel) return GRAFT_OK;
        char nb[NAME_SHOWN_BYTES];
        unsigned long long v = 0;
        for (size_t b = bytes; b-- > 0;) v = v << 8 | src[bad * bytes + b];
        return graft_error(GRAFT_ERR_UNSUPPORTED,
                           "%s: tensor '%s' of %s holds %llu at element %zu, beyond int64", path,
                           shown(e->name, nb), e->dtype->name, v, bad);
    }
    case ST_UNSUPPORTED: break;
    }
    return graft_error(GRAFT_ERR_UNSUPPORTED, "%s: dtype %s", path, e->dtype->name);
}

static graft_status parse_file(const char *path, const unsigned char *bytes, size_t size,
                               graft_tensor_map *m) {
    char nb[NAME_SHOWN_BYTES];
    if (size < ST_LEN_BYTES)
        return format_error(path, "file is %zu bytes, too short for the 8-byte header length",
                            size);
    uint64_t hlen = 0;
    for (int i = ST_LEN_BYTES - 1; i >= 0; i--) hlen = hlen << 8 | bytes[i];
    if (hlen == 0) return format_error(path, "header length is 0");
    if (hlen > ST_MAX_HEADER_BYTES)
        return format_error(path, "header length %llu exceeds the limit of %llu bytes",
                            (unsigned long long)hlen, ST_MAX_HEADER_BYTES);
    if (hlen > size - ST_LEN_BYTES)
        return format_error(path, "header length %llu runs past the end of the file (%zu bytes)",
                            (unsigned long long)hlen, size);
    const char *header = (const char *)bytes + ST_LEN_BYTES;
    const unsigned char *data = bytes + ST_LEN_BYTES + hlen;
    uint64_t data_bytes = size - ST_LEN_BYTES - hlen;
    if (header[0] != '{') return format_error(path, "header does not start with '{'");

    json_error_t jerr;
    json_t *root = json_loadb(header, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return format_error(path, "header is not valid JSON: %s (at byte %d)", jerr.text,
                            jerr.position);
    graft_status s = GRAFT_OK;
    st_entry *entries = NULL;
    size_t n = 0;
    if (!json_is_object(root)) {
        s = format_error(path, "header is not a JSON object");
        goto done;
    }
    entries = malloc((json_object_size(root) + 1) * sizeof *entries);
    if (!entries) {
        s = graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }

    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, ST_METADATA_KEY) == 0) s = parse_metadata(path, value, m);
        else s = parse_entry(path, key, value, data_bytes, &entries[n++]);
        if (s) goto done;
    }
    s = check_coverage(path, entries, n, data_bytes);
    if (s) goto done;

    /* The file is well formed; now see whether graft can hold every tensor. */
    for (size_t i = 0; i < n; i++) {
        const st_entry *e = &entries[i];
        if (e->dtype->kind == ST_UNSUPPORTED) {
            s = graft_error(GRAFT_ERR_UNSUPPORTED,
                            "%s: tensor '%s' has dtype %s; graft reads F64, F32, F16, BF16, "
                            "integer and BOOL tensors",
                            path, shown(e->name, nb), e->dtype->name);
            goto done;
        }
        if (e->ndim > GRAFT_MAX_DIMS) {
            s = graft_error(GRAFT_ERR_UNSUPPORTED,
                            "%s: tensor '%s' has %d dimensions; graft supports at most %d", path,
                            shown(e->name, nb), e->ndim, GRAFT_MAX_DIMS);
            goto done;
        }
    }

    for (size_t i = 0; i < n; i++) {
        const st_entry *e = &entries[i];
        graft_tensor *t;
        s = graft_tensor_create(kind_dtype(e->dtype->kind), e->ndim, e->shape, &t);
        if (s) {
            graft_error_prefix(s, "%s: tensor '%s'", path, shown(e->name, nb));
            goto done;
        }
        s = convert_entry(path, e, data + e->begin, t);
        if (s) {
            graft_tensor_free(t);
            goto done;
        }
        s = graft_tensor_map_put(m, e->name, t);
        if (s) goto done;
    }

done:
    free(entries);
    json_decref(root);
    return s;
}

graft_status graft_safetensors_load_bytes(const void *bytes, size_t size, const char *name,
                                         graft_tensor_map **out) {
    *out = NULL;
    graft_tensor_map *m;
    graft_status s = graft_tensor_map_create(&m);
    if (!s) s = parse_file(name, bytes, size, m);
    if (s) {
        graft_tensor_map_free(m);
        return s;
    }
    *out = m;
    return GRAFT_OK;
}

graft_status graft_safetensors_load(const char *path, graft_tensor_map **out) {
    if (!out) return graft_error(GRAFT_ERR_INVALID, "safetensors load: NULL output");
    *out = NULL;
    if (!path) return graft_error(GRAFT_ERR_INVALID, "safetensors load: NULL path");
    file_bytes fb;
    graft_status s = read_whole_file(path, &fb);
    if (s) return s;
    graft_tensor_map *m;
    s = graft_tensor_map_create(&m);
    if (!s) s = parse_file(path, fb.data, fb.size, m);
    file_bytes_release(&fb);
    if (s) {
        graft_tensor_map_free(m);
        return s;
    }
    *out = m;
    return GRAFT_OK;
}

/* ---- writing ----------------------------------------------------------------- */

/* The bytes tensor t takes in the file when float32 tensors are written as fo. */
static size_t stored_bytes(const graft_tensor *t, const st_float_out *fo) {
    if (t->dtype != GRAFT_F32) return graft_tensor_nbytes(t);
    return (size_t)graft_tensor_numel(t) * fo->bytes;
}

/* The header JSON for m, data offsets assigned in map order; newly allocated (free()). */
static graft_status build_header(const char *path, const graft_tensor_map *m,
                                 const st_float_out *fo, char **out) {
    char nb[NAME_SHOWN_BYTES];
    graft_status s = GRAFT_OK;
    *out = NULL;
    json_t *root = json_object();
    if (!root) return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);

    size_t nmeta = graft_tensor_map_meta_size(m);
    if (nmeta > 0) {
        json_t *meta = json_object();
        if (!meta || json_object_set_new(root, ST_METADATA_KEY, meta) != 0) {
            s = graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
            goto done;
        }
        for (size_t i = 0; i < nmeta; i++) {
            const char *key = graft_tensor_map_meta_key(m, i);
            /* json_string and json_object_set_new reject invalid UTF-8. */
            json_t *value = json_string(graft_tensor_map_get_meta(m, key));
            if (json_object_set_new(meta, key, value) != 0) {
                s = graft_error(GRAFT_ERR_INVALID, "%s: metadata '%s' is not valid UTF-8", path,
                                shown(key, nb));
                goto done;
            }
        }
    }

    uint64_t offset = 0;
    for (size_t i = 0; i < graft_tensor_map_size(m); i++) {
        const char *name = graft_tensor_map_name(m, i);
        const graft_tensor *t = graft_tensor_map_tensor(m, i);
        if (!*name || strcmp(name, ST_METADATA_KEY) == 0) {
            s = graft_error(GRAFT_ERR_INVALID, "%s: '%s' cannot name a tensor in safetensors",
                            path, name);
            goto done;
        }
        size_t nbytes = stored_bytes(t, fo);
        const char *dtype = t->dtype == GRAFT_F32 ? fo->name : "I64";
        json_t *entry = json_object(), *shape = json_array(), *offs = json_array();
        bool ok = entry && shape && offs;
        for (int d = 0; ok && d < t->ndim; d++)
            ok = json_array_append_new(shape, json_integer(t->shape[d])) == 0;
        ok = ok && json_array_append_new(offs, json_integer((json_int_t)offset)) == 0 &&
             json_array_append_new(offs, json_integer((json_int_t)(offset + nbytes))) == 0 &&
             json_object_set_new(entry, "dtype", json_string(dtype)) == 0 &&
             json_object_set(entry, "shape", shape) == 0 &&
             json_object_set(entry, "data_offsets", offs) == 0;
        json_decref(shape);
        json_decref(offs);
        if (!ok) {
            json_decref(entry);
            s = graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
            goto done;
        }
        if (json_object_set_new(root, name, entry) != 0) {
            s = graft_error(GRAFT_ERR_INVALID, "%s: tensor name '%s' is not valid UTF-8", path,
                            shown(name, nb));
            goto done;
        }
        offset += nbytes;
    }

    *out = json_dumps(root, JSON_PRESERVE_ORDER | JSON_COMPACT);
    if (!*out) s = graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
done:
    json_decref(root);
    return s;
}

/* Writes a tensor's bytes little-endian, through a bounce buffer on big-endian hosts
 * or when float32 is encoded as fo. */
static graft_status write_tensor_data(graft_atomic_file *af, const graft_tensor *t,
                                      const st_float_out *fo) {
    size_t nbytes = graft_tensor_nbytes(t);
    unsigned char buf[1 << 16]; /* a multiple of every element size */
    if (t->dtype == GRAFT_F32 && fo->encode) {
        const size_t chunk = sizeof buf / fo->bytes;
        const float *src = t->data;
        size_t numel = (size_t)graft_tensor_numel(t);
        for (size_t done = 0; done < numel;) {
            size_t k = numel - done < chunk ? numel - done : chunk;
            fo->encode(src + done, buf, k);
            graft_status s = graft_atomic_write(af, buf, k * fo->bytes);
            if (s) return s;
            done += k;
        }
        return GRAFT_OK;
    }
    if (!host_is_big_endian()) return graft_atomic_write(af, t->data, nbytes);
    const unsigned char *p = t->data;
    for (size_t done = 0; done < nbytes;) {
        size_t n = nbytes - done < sizeof buf ? nbytes - done : sizeof buf;
        memcpy(buf, p + done, n);
        swap_elements(buf, n, graft_dtype_size(t->dtype));
        graft_status s = graft_atomic_write(af, buf, n);
        if (s) return s;
        done += n;
    }
    return GRAFT_OK;
}

graft_status graft_safetensors_save(const char *path, const graft_tensor_map *m) {
    return graft_safetensors_save_dtype(path, m, "F32");
}

static graft_status save_impl(const char *path, const graft_tensor_map *m, const char *float_dtype,
                              const char *spare, graft_commits *commits);

graft_status graft_safetensors_save_dtype(const char *path, const graft_tensor_map *m,
                                          const char *float_dtype) {
    return save_impl(path, m, float_dtype, NULL, NULL);
}

graft_status graft_safetensors_save_over(const char *path, const graft_tensor_map *m, const char *spare,
                                         graft_commits *commits) {
    return save_impl(path, m, "F32", spare, commits);
}

static graft_status save_impl(const char *path, const graft_tensor_map *m, const char *float_dtype,
                              const char *spare, graft_commits *commits) {
    if (!path || !m) return graft_error(GRAFT_ERR_INVALID, "safetensors save: NULL path or map");
    const st_float_out *fo = NULL;
    for (size_t i = 0; i < sizeof float_outs / sizeof float_outs[0]; i++)
        if (strcmp(float_outs[i].name, float_dtype ? float_dtype : "F32") == 0)
            fo = &float_outs[i];
    if (!fo) {
        char db[NAME_SHOWN_BYTES];
        return graft_error(GRAFT_ERR_INVALID,
                           "%s: cannot write float tensors as '%s'; use F32, F16 or BF16", path,
                           shown(float_dtype, db));
    }
    for (size_t i = 0; i < graft_tensor_map_size(m); i++) {
        const graft_tensor *t = graft_tensor_map_tensor(m, i);
        if ((t->dtype != GRAFT_F32 && t->dtype != GRAFT_I64) ||
            (graft_tensor_nbytes(t) > 0 && !t->data))
            return graft_error(GRAFT_ERR_INVALID, "%s: tensor '%s' has no F32 or I64 data", path,
                               graft_tensor_map_name(m, i));
    }

    char *header;
    graft_status s = build_header(path, m, fo, &header);
    if (s) return s;
    /* Trailing spaces are allowed by the format; they put the data on an 8-byte boundary
     * (the length field is 8 bytes, so the header length must be a multiple of 8). */
    size_t json_len = strlen(header);
    size_t hlen = (json_len + ST_DATA_ALIGN - 1) / ST_DATA_ALIGN * ST_DATA_ALIGN;
    unsigned char prefix[ST_LEN_BYTES + ST_DATA_ALIGN];
    for (int i = 0; i < ST_LEN_BYTES; i++) prefix[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memset(prefix + ST_LEN_BYTES, ' ', ST_DATA_ALIGN);

    graft_atomic_file af;
    s = graft_atomic_open_over(&af, path, spare);
    if (!s) s = graft_atomic_write(&af, prefix, ST_LEN_BYTES);
    if (!s) s = graft_atomic_write(&af, header, json_len);
    if (!s) s = graft_atomic_write(&af, prefix + ST_LEN_BYTES, hlen - json_len);
    for (size_t i = 0; !s && i < graft_tensor_map_size(m); i++)
        s = write_tensor_data(&af, graft_tensor_map_tensor(m, i), fo);
    free(header);
    if (s) {
        graft_atomic_abort(&af);
        return s;
    }
    return commits ? graft_commits_add(commits, &af) : graft_atomic_commit(&af);
}
