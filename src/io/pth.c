/* pth.c — reading torch.save checkpoints (see pth.h).
 *
 * The work is the same for both layouts once the bytes are found:
 *   1. unpickle the object; every persistent id names a storage
 *      ('storage', <torch.XStorage>, key, location, numel[, view_metadata]);
 *   2. build the storage table from all persistent ids (sorted by key);
 *   3. pick the state dict and plan each tensor (storage, offset, sizes, strides),
 *      checking every element lies inside its storage;
 *   4. bring in the storage bytes (zip: only the entries the plan needs; legacy: they
 *      follow the pickles) and copy/convert each tensor into a contiguous graft tensor.
 * Formats: torch/serialization.py of PyTorch 1.13 (_save, _legacy_save, _load,
 * _legacy_load); the storage bytes are little-endian in both layouts unless a zip says
 * otherwise in "byteorder" (the legacy writer encodes little-endian on every host). */
#include "io/pth.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "core/tensor.h"
#include "io/dtype_convert.h"
#include "io/pickle.h"

/* torch/serialization.py: MAGIC_NUMBER = 0x1950a86a20f9469cfc6c, little-endian as
 * pickle's LONG1 writes it, and PROTOCOL_VERSION = 1001. */
static const unsigned char legacy_magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                               0x20, 0x6a, 0xa8, 0x50, 0x19};
#define LEGACY_PROTOCOL_VERSION 1001
#define LEGACY_COUNT_BYTES 8          /* the element count before each legacy storage */
#define ZIP_MAX_EXPANSION 32          /* bytes read from a zip <= 32 x its size ... */
#define ZIP_SLACK_BYTES (1u << 20)    /* ... + 1 MiB, for tiny files */
#define ZIP_SMALL_ENTRY_BYTES 64      /* "byteorder" holds "little" or "big" */
#define OUT_MAX_EXPANSION 16          /* tensors made <= 16 x the file's size ... */
#define OUT_SLACK_BYTES (256u << 20)  /* ... + 256 MiB (uint8 -> int64 alone is 8 x) */
#define NAME_SHOWN_BYTES 160          /* longest key quoted in an error */
#define MODULE_PREFIX "module."       /* what nn.DataParallel puts before every key */

/* ---- element types ------------------------------------------------------------------ */

typedef enum elem_kind {
    EK_F32, EK_F64, EK_F16, EK_BF16, EK_I64, EK_I32, EK_I16, EK_I8, EK_U8, EK_BOOL
} elem_kind;

typedef struct storage_type {
    graft_pickle_global global;
    elem_kind kind;
    const char *name; /* torch's dtype name, for messages */
    size_t elem_bytes;
    graft_dtype out;
} storage_type;

static const storage_type storage_types[] = {
    {GRAFT_PG_FLOAT_STORAGE, EK_F32, "float32", 4, GRAFT_F32},
    {GRAFT_PG_DOUBLE_STORAGE, EK_F64, "float64", 8, GRAFT_F32},
    {GRAFT_PG_HALF_STORAGE, EK_F16, "float16", 2, GRAFT_F32},
    {GRAFT_PG_BFLOAT16_STORAGE, EK_BF16, "bfloat16", 2, GRAFT_F32},
    {GRAFT_PG_LONG_STORAGE, EK_I64, "int64", 8, GRAFT_I64},
    {GRAFT_PG_INT_STORAGE, EK_I32, "int32", 4, GRAFT_I64},
    {GRAFT_PG_SHORT_STORAGE, EK_I16, "int16", 2, GRAFT_I64},
    {GRAFT_PG_CHAR_STORAGE, EK_I8, "int8", 1, GRAFT_I64},
    {GRAFT_PG_BYTE_STORAGE, EK_U8, "uint8", 1, GRAFT_I64},
    {GRAFT_PG_BOOL_STORAGE, EK_BOOL, "bool", 1, GRAFT_I64},
};

static const storage_type *find_storage_type(const graft_pickle_obj *g) {
    if (!g || g->kind != GRAFT_PICKLE_GLOBAL) return NULL;
    for (size_t i = 0; i < sizeof storage_types / sizeof storage_types[0]; i++)
        if (storage_types[i].global == g->u.global.id) return &storage_types[i];
    return NULL;
}

/* ---- the reader's state ------------------------------------------------------------- */

typedef struct storage {
    const char *key;  /* owned by the pickle context */
    size_t key_len;
    const storage_type *type;
    int64_t numel;
    /* legacy views: this storage is elements [view_offset, view_offset + numel) of root */
    const char *root_key;
    size_t root_key_len;
    struct storage *root; /* resolved after sorting; NULL for a root */
    int64_t view_offset;
    size_t order;         /* first appearance, to keep sorting stable */
    /* the bytes of a root storage, once present */
    const unsigned char *data;
    unsigned char *owned; /* zip: the entry's bytes, freed after use */
    bool needed;  /* a planned tensor reads it */
    bool present; /* legacy: its bytes are in the file; zip: its entry has the right size */
    bool loaded;  /* zip: its entry has been read */
    struct tensor_plan *first_plan; /* plans reading this root */
} storage;

typedef struct tensor_plan {
    const char *name;
    storage *st;         /* what the tensor names (maybe a legacy view) */
    int64_t offset;      /* elements into st */
    int ndim;
    int64_t size[GRAFT_MAX_DIMS], stride[GRAFT_MAX_DIMS];
    graft_tensor *t;     /* allocated once planned, filled when the bytes arrive */
    struct tensor_plan *next; /* next plan on the same root storage */
} tensor_plan;

typedef struct reader {
    const char *path;
    const unsigned char *bytes; /* the whole file */
    size_t size;
    void *mapped;
    unsigned char *heap;
    graft_pickle *pk;
    bool legacy;
    bool big_endian; /* zip "byteorder" said "big" */
    storage *st;
    size_t nst;
    tensor_plan *plans;
    size_t nplans;
    /* zip */
    char *folder; /* "<folder>" before "/data.pkl", owned */
    unsigned char *pickle_bytes;
    size_t pickle_len;
    uint64_t zip_budget; /* bytes still allowed to be read out of the archive */
    uint64_t zip_planned; /* bytes of the storage entries pass 4 will read */
} reader;

/* ---- messages ----------------------------------------------------------------------- */

static graft_status format_error(const reader *rd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static graft_status format_error(const reader *rd, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return graft_error(GRAFT_ERR_FORMAT, "%s: %s", rd->path, msg);
}

static graft_status nomem(const reader *rd) {
    return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", rd->path);
}

/* Bytes from the file as they may appear in a one-line message. */
static const char *shown(const char *s, size_t len, char buf[NAME_SHOWN_BYTES + 4]) {
    size_t n = len < NAME_SHOWN_BYTES ? len : NAME_SHOWN_BYTES;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    if (n < len) memcpy(buf + n, "...", 3), n += 3;
    buf[n] = 0;
    return buf;
}

/* "an int", "a call of numpy.ndarray", ... for "holds X, not a tensor". */
static const char *describe(const graft_pickle_obj *o, char *buf, size_t n) {
    if (o->kind == GRAFT_PICKLE_CALL)
        snprintf(buf, n, "a call of %s", graft_pickle_global_name(o->u.call.callable->u.global.id));
    else if (o->kind == GRAFT_PICKLE_GLOBAL)
        snprintf(buf, n, "the global %s", graft_pickle_global_name(o->u.global.id));
    else snprintf(buf, n, "a value of type %s", graft_pickle_kind_name(o->kind));
    return buf;
}

/* ---- the file ----------------------------------------------------------------------- */

static graft_status read_stream(reader *rd, int fd) {
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = malloc(cap);
    if (!buf) return nomem(rd);
    for (;;) {
        if (len == cap) {
            unsigned char *p = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!p) {
                free(buf);
                return nomem(rd);
            }
            buf = p;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            free(buf);
            return graft_error(GRAFT_ERR_IO, "%s: %s", rd->path, strerror(e));
        }
        if (n == 0) break;
        len += (size_t)n;
    }
    rd->heap = buf;
    rd->bytes = buf;
    rd->size = len;
    return GRAFT_OK;
}

/* The whole file: mapped when it is a non-empty regular file, else read. */
static graft_status read_file(reader *rd) {
    int fd = open(rd->path, O_RDONLY);
    if (fd < 0) return graft_error(GRAFT_ERR_IO, "%s: %s", rd->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return graft_error(GRAFT_ERR_IO, "%s: %s", rd->path, strerror(e));
    }
    graft_status s = GRAFT_OK;
    void *p = MAP_FAILED;
    if (S_ISREG(st.st_mode) && st.st_size > 0 && (uint64_t)st.st_size <= SIZE_MAX)
        p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p != MAP_FAILED) {
        rd->mapped = p;
        rd->bytes = p;
        rd->size = (size_t)st.st_size;
    } else {
        s = read_stream(rd, fd);
    }
    close(fd);
    return s;
}

static void reader_release(reader *rd) {
    if (rd->mapped) munmap(rd->mapped, rd->size);
    free(rd->heap);
    graft_pickle_free(rd->pk);
    for (size_t i = 0; i < rd->nst; i++) free(rd->st[i].owned);
    free(rd->st);
    for (size_t i = 0; i < rd->nplans; i++) graft_tensor_free(rd->plans[i].t);
    free(rd->plans);
    free(rd->folder);
    free(rd->pickle_bytes);
}

bool graft_pth_sniff(const unsigned char *head, size_t n) {
    if (!head) return false;
    if (n >= 4 && memcmp(head, "PK\x03\x04", 4) == 0) return true;
    if (n < 2 || head[0] != 0x80 || head[1] < 2 || head[1] > 5) return false; /* PROTO */
    size_t i = 2;
    if (n > i && head[i] == 0x95) i += 9; /* FRAME + its 8-byte length (protocol 4+) */
    return n >= i + 2 + sizeof legacy_magic && head[i] == 0x8a /* LONG1 */ &&
           head[i + 1] == sizeof legacy_magic &&
           memcmp(head + i + 2, legacy_magic, sizeof legacy_magic) == 0;
}

/* ---- storages ----------------------------------------------------------------------- */

/* A key or location: str, or bytes as Python 2 wrote them. */
static bool text_of(const graft_pickle_obj *o, const char **s, size_t *len) {
    if (!o || (o->kind != GRAFT_PICKLE_STR && o->kind != GRAFT_PICKLE_BYTES)) return false;
    *s = o->u.s.data;
    *len = o->u.s.len;
    return true;
}

static int cmp_keys(const char *a, size_t alen, const char *b, size_t blen) {
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c) return c;
    return alen < blen ? -1 : alen > blen;
}

static int by_key(const void *pa, const void *pb) {
    const storage *a = pa, *b = pb;
    int c = cmp_keys(a->key, a->key_len, b->key, b->key_len);
    if (c) return c;
    return a->order < b->order ? -1 : a->order > b->order;
}

static storage *find_storage(const reader *rd, const char *key, size_t len) {
    size_t lo = 0, hi = rd->nst;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_keys(rd->st[mid].key, rd->st[mid].key_len, key, len);
        if (c == 0) return &rd->st[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* A non-negative int. */
static bool nonneg_int(const graft_pickle_obj *o, int64_t *v) {
    if (!o || o->kind != GRAFT_PICKLE_INT || o->u.i < 0) return false;
    *v = o->u.i;
    return true;
}

/* Reads one persistent id into rec[0] (the storage) and, for a legacy view, rec[1]
 * (the view); *nrec says how many. */
static graft_status parse_persid(const reader *rd, const graft_pickle_obj *pid, storage *rec,
                                 int *nrec) {
    char kb[NAME_SHOWN_BYTES + 4], rb[NAME_SHOWN_BYTES + 4];
    const char *tag;
    size_t tag_len;
    size_t want = rd->legacy ? 6 : 5;
    if (pid->kind != GRAFT_PICKLE_TUPLE || pid->u.seq.len < 1 ||
        !text_of(pid->u.seq.items[0], &tag, &tag_len))
        return format_error(rd, "a persistent id is not a ('storage', ...) tuple");
    graft_pickle_obj *const *it = pid->u.seq.items;
    if (cmp_keys(tag, tag_len, "module", 6) == 0)
        return graft_error(GRAFT_ERR_UNSUPPORTED,
                           "%s: the file holds a pickled module with its source code; save and "
                           "load its state_dict() instead",
                           rd->path);
    if (cmp_keys(tag, tag_len, "storage", 7) != 0)
        return format_error(rd, "unknown persistent id type '%s'", shown(tag, tag_len, kb));
    if (pid->u.seq.len != want)
        return format_error(rd, "a storage persistent id has %zu fields, expected %zu",
                            pid->u.seq.len, want);
    memset(rec, 0, 2 * sizeof *rec);
    rec[0].type = find_storage_type(it[1]);
    if (!rec[0].type) {
        char db[96];
        return format_error(rd, "storage type is %s, not one of torch's storage classes",
                            describe(it[1], db, sizeof db));
    }
    const char *loc;
    size_t loc_len;
    if (!text_of(it[2], &rec[0].key, &rec[0].key_len) || !text_of(it[3], &loc, &loc_len) ||
        !nonneg_int(it[4], &rec[0].numel))
        return format_error(rd, "a storage persistent id has a malformed key, location or size");
    if ((uint64_t)rec[0].numel > (uint64_t)INT64_MAX / rec[0].type->elem_bytes)
        return format_error(rd, "storage '%s' size %lld overflows",
                            shown(rec[0].key, rec[0].key_len, kb), (long long)rec[0].numel);
    *nrec = 1;
    if (rd->legacy && it[5]->kind != GRAFT_PICKLE_NONE) {
        /* view_metadata = (view_key, offset, view_size), in elements of the storage type */
        const graft_pickle_obj *vm = it[5];
        rec[1].type = rec[0].type;
        rec[1].root_key = rec[0].key;
        rec[1].root_key_len = rec[0].key_len;
        if (vm->kind != GRAFT_PICKLE_TUPLE || vm->u.seq.len != 3 ||
            !text_of(vm->u.seq.items[0], &rec[1].key, &rec[1].key_len) ||
            !nonneg_int(vm->u.seq.items[1], &rec[1].view_offset) ||
            !nonneg_int(vm->u.seq.items[2], &rec[1].numel))
            return format_error(rd, "storage '%s' has malformed view metadata",
                                shown(rec[0].key, rec[0].key_len, kb));
        if (rec[1].view_offset > rec[0].numel || rec[1].numel > rec[0].numel - rec[1].view_offset)
            return format_error(rd, "storage view '%s' [%lld, +%lld) lies outside storage '%s' "
                                    "of %lld elements",
                                shown(rec[1].key, rec[1].key_len, kb),
                                (long long)rec[1].view_offset, (long long)rec[1].numel,
                                shown(rec[0].key, rec[0].key_len, rb), (long long)rec[0].numel);
        *nrec = 2;
    }
    return GRAFT_OK;
}

static bool same_storage(const storage *a, const storage *b) {
    return a->type == b->type && a->numel == b->numel && a->view_offset == b->view_offset &&
           (a->root_key == NULL) == (b->root_key == NULL) &&
           (!a->root_key ||
            cmp_keys(a->root_key, a->root_key_len, b->root_key, b->root_key_len) == 0);
}

/* The storage table from every persistent id in the pickle: sorted by key, one record
 * per key, each key declared consistently. */
static graft_status collect_storages(reader *rd) {
    char kb[NAME_SHOWN_BYTES + 4];
    size_t n = graft_pickle_persid_count(rd->pk);
    if (n > SIZE_MAX / 2 / sizeof *rd->st) return nomem(rd);
    rd->st = calloc(2 * n + 1, sizeof *rd->st);
    if (!rd->st) return nomem(rd);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int nrec;
        graft_status s = parse_persid(rd, graft_pickle_persid(rd->pk, i)->u.persid.pid,
                                      rd->st + m, &nrec);
        if (s) return s;
        for (int k = 0; k < nrec; k++) rd->st[m + (size_t)k].order = m + (size_t)k;
        m += (size_t)nrec;
    }
    qsort(rd->st, m, sizeof *rd->st, by_key);
    size_t u = 0; /* merge records of the same key */
    for (size_t i = 0; i < m; i++) {
        if (u && cmp_keys(rd->st[u - 1].key, rd->st[u - 1].key_len, rd->st[i].key,
                          rd->st[i].key_len) == 0) {
            if (!same_storage(&rd->st[u - 1], &rd->st[i]))
                return format_error(rd, "storage '%s' is declared twice with different types "
                                        "or sizes",
                                    shown(rd->st[i].key, rd->st[i].key_len, kb));
            continue;
        }
        rd->st[u++] = rd->st[i];
    }
    rd->nst = u;
    for (size_t i = 0; i < rd->nst; i++) {
        storage *v = &rd->st[i];
        if (!v->root_key) continue;
        v->root = find_storage(rd, v->root_key, v->root_key_len);
        if (!v->root || v->root->root || v->root == v)
            return format_error(rd, "storage view '%s' does not view a root storage",
                                shown(v->key, v->key_len, kb));
    }
    return GRAFT_OK;
}

/* The storage a persistent id object names (collect_storages has seen it). */
static storage *storage_of(const reader *rd, const graft_pickle_obj *persid) {
    const graft_pickle_obj *it = persid->u.persid.pid;
    const char *key = NULL;
    size_t len = 0;
    it = rd->legacy && it->u.seq.items[5]->kind == GRAFT_PICKLE_TUPLE
             ? it->u.seq.items[5]->u.seq.items[0] /* a view: the view's key */
             : it->u.seq.items[2];
    text_of(it, &key, &len);
    return find_storage(rd, key, len);
}

static storage *root_of(storage *st) { return st->root ? st->root : st; }

/* ---- the state dict and the tensor plans -------------------------------------------- */

/* The dict holding the tensors: the top-level dict, or its "state_dict" / "model" dict. */
static graft_status pick_state_dict(const reader *rd, const graft_pickle_obj *root,
                                    const graft_pickle_obj **sd) {
    char db[96];
    if (root->kind != GRAFT_PICKLE_DICT)
        return format_error(rd, "the file holds %s, not a state dict",
                            describe(root, db, sizeof db));
    static const char *const nested_keys[] = {"state_dict", "model"};
    for (size_t i = 0; i < sizeof nested_keys / sizeof nested_keys[0]; i++) {
        const graft_pickle_obj *v = graft_pickle_dict_get(root, nested_keys[i]);
        if (v && v->kind == GRAFT_PICKLE_DICT) {
            *sd = v;
            return GRAFT_OK;
        }
    }
    *sd = root;
    return GRAFT_OK;
}

static bool all_ints(const graft_pickle_obj *t, int64_t *out, bool nonneg) {
    if (t->kind != GRAFT_PICKLE_TUPLE && t->kind != GRAFT_PICKLE_LIST) return false;
    for (size_t i = 0; i < t->u.seq.len; i++) {
        const graft_pickle_obj *v = t->u.seq.items[i];
        if (v->kind != GRAFT_PICKLE_INT || (nonneg && v->u.i < 0)) return false;
        if (i < GRAFT_MAX_DIMS) out[i] = v->u.i;
    }
    return true;
}

/* Checks a _rebuild_tensor_v2 call and fills in the plan (tensor not yet allocated). */
static graft_status plan_tensor(reader *rd, const char *name, const graft_pickle_obj *v,
                                tensor_plan *p) {
    char nb[NAME_SHOWN_BYTES + 4], kb[NAME_SHOWN_BYTES + 4], db[96], shape[128];
    if (graft_pickle_is_call(v, GRAFT_PG_REBUILD_PARAMETER)) {
        /* _rebuild_parameter(data, requires_grad, backward_hooks) */
        const graft_pickle_obj *args = v->u.call.args;
        if (args->u.seq.len < 1)
            return format_error(rd, "'%s': _rebuild_parameter has no arguments",
                                shown(name, strlen(name), nb));
        v = args->u.seq.items[0];
    }
    if (!graft_pickle_is_call(v, GRAFT_PG_REBUILD_TENSOR_V2))
        return format_error(rd, "state dict entry '%s' holds %s, not a tensor",
                            shown(name, strlen(name), nb), describe(v, db, sizeof db));
    /* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
     *                    backward_hooks[, metadata]) */
    const graft_pickle_obj *args = v->u.call.args;
    graft_pickle_obj *const *a = args->u.seq.items;
    if (args->u.seq.len != 6 && args->u.seq.len != 7)
        return format_error(rd, "'%s': _rebuild_tensor_v2 has %zu arguments, expected 6 or 7",
                            shown(name, strlen(name), nb), args->u.seq.len);
    if (a[0]->kind != GRAFT_PICKLE_PERSID)
        return format_error(rd, "'%s': the tensor's storage is %s, not a persistent id",
                            shown(name, strlen(name), nb), describe(a[0], db, sizeof db));
    memset(p, 0, sizeof *p);
    p->name = name;
    p->st = storage_of(rd, a[0]);
    if (!p->st || !nonneg_int(a[1], &p->offset))
        return format_error(rd, "'%s': malformed storage or storage offset",
                            shown(name, strlen(name), nb));
    const graft_pickle_obj *size = a[2], *stride = a[3];
    if (!all_ints(size, p->size, true) || !all_ints(stride, p->stride, true) ||
        size->u.seq.len != stride->u.seq.len)
        return format_error(rd, "'%s': size and stride are not equally long tuples of "
                                "non-negative ints",
                            shown(name, strlen(name), nb));
    if (size->u.seq.len > GRAFT_MAX_DIMS)
        return graft_error(GRAFT_ERR_UNSUPPORTED,
                           "%s: '%s' has %zu dimensions; graft supports at most %d", rd->path,
                           shown(name, strlen(name), nb), size->u.seq.len, GRAFT_MAX_DIMS);
    p->ndim = (int)size->u.seq.len;
    graft_shape_str(p->ndim, p->size, shape, sizeof shape);
    int64_t numel = graft_shape_numel(p->ndim, p->size);
    if (numel < 0)
        return format_error(rd, "'%s': shape %s overflows", shown(name, strlen(name), nb), shape);
    if (numel == 0) return GRAFT_OK;
    /* The last element read is offset + sum((size_i - 1) * stride_i); it must be inside. */
    int64_t last = p->offset;
    for (int i = 0; i < p->ndim; i++) {
        int64_t span = p->size[i] - 1;
        if (span && p->stride[i] && span > (INT64_MAX - last) / p->stride[i])
            return format_error(rd, "'%s': strides overflow", shown(name, strlen(name), nb));
        last += span * p->stride[i];
    }
    if (last >= p->st->numel)
        return format_error(rd,
                            "'%s': shape %s with offset %lld reads element %lld of storage '%s', "
                            "which holds %lld",
                            shown(name, strlen(name), nb), shape, (long long)p->offset,
                            (long long)last, shown(p->st->key, p->st->key_len, kb),
                            (long long)p->st->numel);
    return GRAFT_OK;
}

/* Plans every entry of the state dict and marks the storages it needs.  Nothing is
 * allocated yet: the storages' bytes are checked first (check_storages_present). */
static graft_status plan_state_dict(reader *rd, const graft_pickle_obj *sd) {
    char nb[NAME_SHOWN_BYTES + 4], db[96];
    size_t n = sd->u.dict.len;
    rd->plans = calloc(n ? n : 1, sizeof *rd->plans);
    if (!rd->plans) return nomem(rd);
    bool strip = n > 0;
    for (size_t i = 0; i < n; i++) {
        const graft_pickle_obj *k = sd->u.dict.keys[i];
        if (k->kind != GRAFT_PICKLE_STR)
            return format_error(rd, "state dict key %zu is %s, not a str", i,
                                describe(k, db, sizeof db));
        if (memchr(k->u.s.data, 0, k->u.s.len))
            return format_error(rd, "state dict key '%s' contains a NUL byte",
                                shown(k->u.s.data, k->u.s.len, nb));
        if (strncmp(k->u.s.data, MODULE_PREFIX, strlen(MODULE_PREFIX)) != 0) strip = false;
    }
    /* Views may repeat elements (stride 0) and narrow types widen (uint8 -> int64), so
     * the tensors can outgrow the file; a file that asks for far more is hostile. */
    uint64_t limit = (uint64_t)rd->size > (UINT64_MAX - OUT_SLACK_BYTES) / OUT_MAX_EXPANSION
                         ? UINT64_MAX
                         : (uint64_t)rd->size * OUT_MAX_EXPANSION + OUT_SLACK_BYTES;
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        tensor_plan *p = &rd->plans[i];
        graft_status s = plan_tensor(rd, sd->u.dict.keys[i]->u.s.data, sd->u.dict.values[i], p);
        rd->nplans = i + 1;
        if (s) return s;
        if (strip) p->name += strlen(MODULE_PREFIX);
        uint64_t bytes = (uint64_t)graft_shape_numel(p->ndim, p->size) *
                         graft_dtype_size(p->st->type->out); /* numel < 2^63, size <= 8 */
        if (bytes > limit - total)
            return format_error(rd, "tensors up to '%s' need more than the limit of %llu bytes "
                                    "(%d times the file size, plus slack; expanded views?)",
                                shown(p->name, strlen(p->name), nb), (unsigned long long)limit,
                                OUT_MAX_EXPANSION);
        total += bytes;
        storage *r = root_of(p->st);
        r->needed = true;
        p->next = r->first_plan;
        r->first_plan = p;
    }
    return GRAFT_OK;
}

/* Every storage the plans read has its bytes (legacy) or an entry of the right size
 * (zip, after check_zip_entries). */
static graft_status check_storages_present(const reader *rd) {
    char kb[NAME_SHOWN_BYTES + 4];
    for (size_t i = 0; i < rd->nst; i++) {
        const storage *st = &rd->st[i];
        if (!st->needed || st->present) continue;
        if (rd->legacy)
            return format_error(rd, "legacy storage '%s' has no data",
                                shown(st->key, st->key_len, kb));
        return format_error(rd, "zip archive has no entry '%s/data/%s' for a storage", rd->folder,
                            shown(st->key, st->key_len, kb));
    }
    return GRAFT_OK;
}

/* The planned tensors, zero-filled until their storage's bytes are converted. */
static graft_status allocate_tensors(reader *rd) {
    char nb[NAME_SHOWN_BYTES + 4];
    for (size_t i = 0; i < rd->nplans; i++) {
        tensor_plan *p = &rd->plans[i];
        graft_status s = graft_tensor_create(p->st->type->out, p->ndim, p->size, &p->t);
        if (s)
            return graft_error_prefix(s, "%s: '%s'", rd->path,
                                      shown(p->name, strlen(p->name), nb));
    }
    return GRAFT_OK;
}

/* ---- conversion --------------------------------------------------------------------- */

static uint64_t load_uint(const unsigned char *p, size_t n, bool big) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v = v << 8 | p[big ? i : n - 1 - i];
    return v;
}

static bool host_is_little_endian(void) {
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 1;
}

/* Converts count elements src[0], src[stride], ... (stride in elements) into dst. */
static void convert_run(const storage_type *t, const unsigned char *src, int64_t stride,
                        int64_t count, bool big, void *dst) {
    size_t eb = t->elem_bytes, n = (size_t)count;
    float *f = dst;
    int64_t *l = dst;
    if (stride == 1 && !big) { /* a contiguous little-endian run: the bulk converters */
        if (t->kind == EK_F32 && host_is_little_endian()) { /* most checkpoints: a copy */
            memcpy(f, src, n * eb);
            return;
        }
        switch (t->kind) {
        case EK_F32: graft_f32le_to_f32(src, f, n); return;
        case EK_F64: graft_f64le_to_f32(src, f, n); return;
        case EK_F16: graft_f16le_to_f32(src, f, n); return;
        case EK_BF16: graft_bf16le_to_f32(src, f, n); return;
        case EK_BOOL: graft_bool_to_i64(src, l, n); return;
        case EK_U8: graft_intle_to_i64(src, eb, false, l, n); return;
        default: graft_intle_to_i64(src, eb, true, l, n); return; /* every one fits */
        }
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t u = load_uint(src + (size_t)((int64_t)i * stride) * eb, eb, big);
        switch (t->kind) {
        case EK_F32: {
            uint32_t b = (uint32_t)u;
            memcpy(&f[i], &b, sizeof b);
            break;
        }
        case EK_F64: {
            double d;
            memcpy(&d, &u, sizeof d);
            f[i] = graft_f64_to_f32(d);
            break;
        }
        case EK_F16: f[i] = graft_f16_to_f32((uint16_t)u); break;
        case EK_BF16: f[i] = graft_bf16_to_f32((uint16_t)u); break;
        case EK_I64: memcpy(&l[i], &u, sizeof u); break;
        case EK_I32: l[i] = (int32_t)(uint32_t)u; break;
        case EK_I16: l[i] = (int16_t)(uint16_t)u; break;
        case EK_I8: l[i] = (int8_t)(uint8_t)u; break;
        case EK_U8: l[i] = (uint8_t)u; break;
        case EK_BOOL: l[i] = u != 0; break;
        }
    }
}

/* Copies the (strided) elements of a plan out of its root storage's bytes. */
static void fill_tensor(const tensor_plan *p, const unsigned char *root_data, bool big) {
    int64_t numel = graft_shape_numel(p->ndim, p->size);
    if (numel == 0) return;
    const storage_type *t = p->st->type;
    size_t out_bytes = graft_dtype_size(p->t->dtype);
    int64_t base = p->offset + (p->st->root ? p->st->view_offset : 0);
    /* Walk every index but the last like an odometer; the last dimension is one run. */
    int64_t inner = p->ndim ? p->size[p->ndim - 1] : 1;
    int64_t inner_stride = p->ndim ? p->stride[p->ndim - 1] : 1;
    int64_t idx[GRAFT_MAX_DIMS] = {0};
    unsigned char *dst = p->t->data;
    for (int64_t done = 0; done < numel; done += inner) {
        int64_t src = base;
        for (int d = 0; d + 1 < p->ndim; d++) src += idx[d] * p->stride[d];
        convert_run(t, root_data + (size_t)src * t->elem_bytes, inner_stride, inner, big, dst);
        dst += (size_t)inner * out_bytes;
        for (int d = p->ndim - 2; d >= 0; d--) {
            if (++idx[d] < p->size[d]) break;
            idx[d] = 0;
        }
    }
}

/* Fills every tensor reading root storage r, whose bytes are now present. */
static void fill_from(const reader *rd, storage *r) {
    for (tensor_plan *p = r->first_plan; p; p = p->next) fill_tensor(p, r->data, rd->big_endian);
}

/* The map, in state-dict order; the tensors move into it. */
static graft_status build_map(reader *rd, graft_tensor_map **out) {
    graft_tensor_map *m;
    graft_status s = graft_tensor_map_create(&m);
    if (s) return s;
    for (size_t i = 0; i < rd->nplans && !s; i++) {
        s = graft_tensor_map_put(m, rd->plans[i].name, rd->plans[i].t);
        rd->plans[i].t = NULL;
    }
    if (s) {
        graft_tensor_map_free(m);
        return s;
    }
    *out = m;
    return GRAFT_OK;
}

/* ---- legacy layout ------------------------------------------------------------------ */

static const char *const legacy_parts[] = {"magic number", "protocol version", "system info",
                                           "object", "storage keys"};

static graft_status load_legacy(reader *rd, const graft_pickle_obj **object) {
    char kb[NAME_SHOWN_BYTES + 4];
    graft_pickle_obj *parts[5];
    size_t pos = 0;
    for (int i = 0; i < 5; i++) {
        size_t used;
        graft_status s =
            graft_pickle_load(rd->pk, rd->bytes + pos, rd->size - pos, &parts[i], &used);
        if (s)
            return graft_error_prefix(s, "%s: legacy pickle %d (%s), at file byte %zu", rd->path,
                                      i + 1, legacy_parts[i], pos);
        pos += used;
        if (i == 0 && (parts[0]->kind != GRAFT_PICKLE_BIGINT ||
                       parts[0]->u.s.len != sizeof legacy_magic ||
                       memcmp(parts[0]->u.s.data, legacy_magic, sizeof legacy_magic) != 0))
            return format_error(rd, "not a torch.save file: wrong magic number");
        if (i == 1 && (parts[1]->kind != GRAFT_PICKLE_INT ||
                       parts[1]->u.i != LEGACY_PROTOCOL_VERSION))
            return graft_error(GRAFT_ERR_UNSUPPORTED,
                               "%s: legacy protocol version is not %d", rd->path,
                               LEGACY_PROTOCOL_VERSION);
        if (i == 2 && parts[2]->kind != GRAFT_PICKLE_DICT)
            return format_error(rd, "legacy system info is not a dict");
        if (i == 3) { /* the storage table, from the object's persistent ids */
            graft_status st = collect_storages(rd);
            if (st) return st;
        }
    }
    const graft_pickle_obj *keys = parts[4];
    if (keys->kind != GRAFT_PICKLE_LIST)
        return format_error(rd, "legacy storage keys are not a list");
    /* The storages follow in the order of the list: count (8 bytes LE), then elements. */
    for (size_t i = 0; i < keys->u.seq.len; i++) {
        const char *key;
        size_t len;
        if (!text_of(keys->u.seq.items[i], &key, &len))
            return format_error(rd, "legacy storage key %zu is not a string", i);
        storage *st = find_storage(rd, key, len);
        if (!st || st->root)
            return format_error(rd, "legacy storage '%s' is listed but no tensor names it",
                                shown(key, len, kb));
        if (st->present)
            return format_error(rd, "legacy storage '%s' is listed twice", shown(key, len, kb));
        if (rd->size - pos < LEGACY_COUNT_BYTES)
            return format_error(rd, "truncated: storage '%s' has no element count at byte %zu",
                                shown(key, len, kb), pos);
        uint64_t count = load_uint(rd->bytes + pos, LEGACY_COUNT_BYTES, false);
        pos += LEGACY_COUNT_BYTES;
        size_t left = rd->size - pos, eb = st->type->elem_bytes;
        if (count > left / eb)
            return format_error(rd,
                                "storage '%s' claims %llu %s elements but only %zu bytes remain",
                                shown(key, len, kb), (unsigned long long)count, st->type->name,
                                left);
        if (count != (uint64_t)st->numel)
            return format_error(rd, "storage '%s' holds %llu elements but its persistent id "
                                    "declared %lld",
                                shown(key, len, kb), (unsigned long long)count,
                                (long long)st->numel);
        st->data = rd->bytes + pos;
        st->present = true;
        pos += (size_t)count * eb;
    }
    *object = parts[3];
    return GRAFT_OK;
}

/* ---- zip layout --------------------------------------------------------------------- */

static graft_status zip_open(reader *rd, struct archive **out) {
    struct archive *a = archive_read_new();
    if (!a) return nomem(rd);
    /* The seekable reader trusts the central directory (as torch's reader does), so
     * entry sizes are the declared ones and a damaged archive fails to open. */
    if (archive_read_support_format_zip_seekable(a) != ARCHIVE_OK ||
        archive_read_open_memory(a, rd->bytes, rd->size) != ARCHIVE_OK) {
        graft_status s = format_error(rd, "not a readable zip archive, truncated or damaged (%s)",
                                      archive_error_string(a) ? archive_error_string(a) : "?");
        archive_read_free(a);
        return s;
    }
    *out = a;
    return GRAFT_OK;
}

/* The bytes of the current entry, exactly its declared size, charged to the budget.
 * expect >= 0: the size the entry must have. */
static graft_status zip_read_entry(reader *rd, struct archive *a, struct archive_entry *e,
                                   const char *name, int64_t expect, unsigned char **out,
                                   size_t *len) {
    char nb[NAME_SHOWN_BYTES + 4];
    const char *shown_name = shown(name, strlen(name), nb);
    if (!archive_entry_size_is_set(e))
        return format_error(rd, "zip entry '%s' has no declared size", shown_name);
    int64_t declared = archive_entry_size(e);
    if (declared < 0) return format_error(rd, "zip entry '%s' has a negative size", shown_name);
    if (expect >= 0 && declared != expect)
        return format_error(rd, "zip entry '%s' holds %lld bytes but its storage needs %lld",
                            shown_name, (long long)declared, (long long)expect);
    if ((uint64_t)declared > rd->zip_budget)
        return format_error(rd, "zip entry '%s' declares %lld bytes, more than %d times the "
                                "file size allows (a zip bomb?)",
                            shown_name, (long long)declared, ZIP_MAX_EXPANSION);
    rd->zip_budget -= (uint64_t)declared;
    size_t want = (size_t)declared;
    unsigned char *buf = malloc(want ? want : 1);
    if (!buf) return nomem(rd);
    size_t got = 0;
    for (;;) {
        unsigned char extra;
        /* Read no further than declared; one byte more must not exist. */
        la_ssize_t n = got < want ? archive_read_data(a, buf + got, want - got)
                                  : archive_read_data(a, &extra, 1);
        if (n < 0) {
            const char *why = archive_error_string(a);
            graft_status s = format_error(rd, "zip entry '%s': %s", shown_name,
                                          why ? why : "read error");
            free(buf);
            return s;
        }
        if (n == 0) break;
        if (got == want) {
            free(buf);
            return format_error(rd, "zip entry '%s' holds more than its declared %zu bytes",
                                shown_name, want);
        }
        got += (size_t)n;
    }
    if (got != want) {
        free(buf);
        return format_error(rd, "zip entry '%s' is truncated: %zu of %zu bytes", shown_name, got,
                            want);
    }
    *out = buf;
    *len = want;
    return GRAFT_OK;
}

/* Calls fn on every entry of the archive; fn may read the entry's data. */
typedef graft_status (*entry_fn)(reader *rd, struct archive *a, struct archive_entry *e,
                                 const char *name);

static graft_status zip_each(reader *rd, entry_fn fn) {
    struct archive *a = NULL;
    graft_status s = zip_open(rd, &a);
    if (s) return s;
    struct archive_entry *e;
    int r;
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK || r == ARCHIVE_WARN) {
        const char *name = archive_entry_pathname(e);
        if (!name) continue; /* a name libarchive cannot convert is no entry of ours */
        s = fn(rd, a, e, name);
        if (s) break;
    }
    if (!s && r != ARCHIVE_EOF)
        s = format_error(rd, "damaged zip archive (%s)",
                         archive_error_string(a) ? archive_error_string(a) : "?");
    archive_read_free(a);
    return s;
}

/* Pass 1: the one "<folder>/data.pkl". */
static graft_status find_folder(reader *rd, struct archive *a, struct archive_entry *e,
                                const char *name) {
    (void)a;
    (void)e;
    const char *slash = strchr(name, '/');
    if (!slash || slash == name || strcmp(slash + 1, "data.pkl") != 0) return GRAFT_OK;
    char nb[NAME_SHOWN_BYTES + 4], fb[NAME_SHOWN_BYTES + 4];
    size_t len = (size_t)(slash - name);
    if (rd->folder)
        return format_error(rd, "zip archive has two data.pkl entries ('%s/data.pkl' and '%s')",
                            shown(rd->folder, strlen(rd->folder), fb),
                            shown(name, strlen(name), nb));
    rd->folder = malloc(len + 1);
    if (!rd->folder) return nomem(rd);
    memcpy(rd->folder, name, len);
    rd->folder[len] = 0;
    return GRAFT_OK;
}

/* "<folder>/<rest>" -> rest, or NULL. */
static const char *in_folder(const reader *rd, const char *name) {
    size_t fl = strlen(rd->folder);
    if (strncmp(name, rd->folder, fl) != 0 || name[fl] != '/') return NULL;
    return name + fl + 1;
}

/* Pass 2: data.pkl and byteorder. */
static graft_status read_pickle_entries(reader *rd, struct archive *a, struct archive_entry *e,
                                        const char *name) {
    const char *rest = in_folder(rd, name);
    if (!rest) return GRAFT_OK;
    if (strcmp(rest, "data.pkl") == 0)
        return zip_read_entry(rd, a, e, name, -1, &rd->pickle_bytes, &rd->pickle_len);
    if (strcmp(rest, "byteorder") != 0) return GRAFT_OK;
    if (archive_entry_size_is_set(e) && archive_entry_size(e) > ZIP_SMALL_ENTRY_BYTES)
        return format_error(rd, "zip entry '%s/byteorder' is too long", rd->folder);
    unsigned char *b;
    size_t len;
    graft_status s = zip_read_entry(rd, a, e, name, -1, &b, &len);
    if (s) return s;
    while (len && (b[len - 1] == '\n' || b[len - 1] == '\r')) len--;
    if (len == 6 && memcmp(b, "little", 6) == 0) rd->big_endian = false;
    else if (len == 3 && memcmp(b, "big", 3) == 0) rd->big_endian = true;
    else s = format_error(rd, "zip entry '%s/byteorder' is neither \"little\" nor \"big\"",
                          rd->folder);
    free(b);
    return s;
}

/* Pass 3: every storage the state dict needs has one entry of the right size. */
static graft_status check_zip_entries(reader *rd, struct archive *a, struct archive_entry *e,
                                      const char *name) {
    (void)a;
    char nb[NAME_SHOWN_BYTES + 4];
    const char *rest = in_folder(rd, name);
    if (!rest || strncmp(rest, "data/", 5) != 0) return GRAFT_OK;
    const char *key = rest + 5;
    storage *st = find_storage(rd, key, strlen(key));
    if (!st || !st->needed) return GRAFT_OK;
    if (st->present)
        return format_error(rd, "zip entry '%s' appears twice", shown(name, strlen(name), nb));
    int64_t need = st->numel * (int64_t)st->type->elem_bytes;
    if (!archive_entry_size_is_set(e) || archive_entry_size(e) != need)
        return format_error(rd, "zip entry '%s' holds %lld bytes but its storage needs %lld",
                            shown(name, strlen(name), nb),
                            archive_entry_size_is_set(e) ? (long long)archive_entry_size(e) : -1LL,
                            (long long)need);
    if ((uint64_t)need > rd->zip_budget - rd->zip_planned)
        return format_error(rd, "zip entry '%s' declares %lld bytes, more than %d times the "
                                "file size allows (a zip bomb?)",
                            shown(name, strlen(name), nb), (long long)need, ZIP_MAX_EXPANSION);
    rd->zip_planned += (uint64_t)need;
    st->present = true;
    return GRAFT_OK;
}

/* Pass 4: the storages the state dict needs, each converted as soon as it is read. */
static graft_status read_storage_entries(reader *rd, struct archive *a, struct archive_entry *e,
                                         const char *name) {
    const char *rest = in_folder(rd, name);
    if (!rest || strncmp(rest, "data/", 5) != 0) return GRAFT_OK;
    const char *key = rest + 5;
    storage *st = find_storage(rd, key, strlen(key));
    if (!st || !st->needed || st->loaded) return GRAFT_OK; /* (duplicates: check_zip_entries) */
    size_t len;
    graft_status s = zip_read_entry(rd, a, e, name, st->numel * (int64_t)st->type->elem_bytes,
                                    &st->owned, &len);
    if (s) return s;
    st->data = st->owned;
    st->loaded = true;
    fill_from(rd, st);
    free(st->owned); /* the tensors hold the values now */
    st->owned = NULL;
    st->data = NULL;
    return GRAFT_OK;
}

static graft_status load_zip(reader *rd, graft_tensor_map **out) {
    uint64_t size = rd->size;
    rd->zip_budget = size > (UINT64_MAX - ZIP_SLACK_BYTES) / ZIP_MAX_EXPANSION
                         ? UINT64_MAX
                         : size * ZIP_MAX_EXPANSION + ZIP_SLACK_BYTES;
    graft_status s = zip_each(rd, find_folder);
    if (s) return s;
    if (!rd->folder) return format_error(rd, "zip archive has no '<folder>/data.pkl' entry");
    if ((s = zip_each(rd, read_pickle_entries))) return s;

    graft_pickle_obj *root;
    size_t used;
    s = graft_pickle_load(rd->pk, rd->pickle_bytes, rd->pickle_len, &root, &used);
    if (s) return graft_error_prefix(s, "%s: %s/data.pkl", rd->path, rd->folder);
    if ((s = collect_storages(rd))) return s;
    const graft_pickle_obj *sd = NULL;
    if ((s = pick_state_dict(rd, root, &sd)) || (s = plan_state_dict(rd, sd)) ||
        (s = zip_each(rd, check_zip_entries)) || (s = check_storages_present(rd)) ||
        (s = allocate_tensors(rd)) || (s = zip_each(rd, read_storage_entries)))
        return s;
    for (size_t i = 0; i < rd->nst; i++) /* only if the file changed under us */
        if (rd->st[i].needed && !rd->st[i].loaded)
            return format_error(rd, "zip archive changed while being read");
    return build_map(rd, out);
}

/* ---- entry point -------------------------------------------------------------------- */

/* Reads the checkpoint in rd->bytes (named rd->path in messages). */
static graft_status load_checkpoint(reader *rd, graft_tensor_map **out) {
    graft_status s = graft_pickle_create(NULL, &rd->pk);
    if (s) return s;
    if (rd->size >= 4 && memcmp(rd->bytes, "PK\x03\x04", 4) == 0) return load_zip(rd, out);
    if (!graft_pth_sniff(rd->bytes, rd->size))
        return format_error(rd, "not a PyTorch checkpoint (neither a zip archive nor a legacy "
                                "torch.save stream)");
    rd->legacy = true;
    const graft_pickle_obj *root = NULL, *sd = NULL;
    if ((s = load_legacy(rd, &root)) || (s = pick_state_dict(rd, root, &sd)) ||
        (s = plan_state_dict(rd, sd)) || (s = check_storages_present(rd)) ||
        (s = allocate_tensors(rd)))
        return s;
    for (size_t i = 0; i < rd->nst; i++)
        if (rd->st[i].needed) fill_from(rd, &rd->st[i]);
    return build_map(rd, out);
}

graft_status graft_pth_load(const char *path, graft_tensor_map **out) {
    if (!out) return graft_error(GRAFT_ERR_INVALID, "pth load: NULL output");
    *out = NULL;
    if (!path) return graft_error(GRAFT_ERR_INVALID, "pth load: NULL path");
    reader rd;
    memset(&rd, 0, sizeof rd);
    rd.path = path;
    graft_status s = read_file(&rd);
    if (!s) s = load_checkpoint(&rd, out);
    reader_release(&rd);
    return s;
}

graft_status graft_pth_load_bytes(const void *bytes, size_t size, const char *name,
                                  graft_tensor_map **out) {
    if (!out) return graft_error(GRAFT_ERR_INVALID, "pth load: NULL output");
    *out = NULL;
    if (!bytes && size) return graft_error(GRAFT_ERR_INVALID, "pth load: NULL bytes");
    reader rd;
    memset(&rd, 0, sizeof rd);
    rd.path = name ? name : "<memory>";
    rd.bytes = bytes ? bytes : (const unsigned char *)"";
    rd.size = size;
    graft_status s = load_checkpoint(&rd, out);
    reader_release(&rd);
    return s;
}
