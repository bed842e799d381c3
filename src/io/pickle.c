/* pickle.c — the pickle virtual machine (see pickle.h).
 *
 * Opcode semantics follow CPython's Lib/pickletools.py and Lib/pickle.py (the
 * reference unpickler): one value stack plus a stack of MARK positions (an opcode that
 * pops "to the mark" takes the items above the newest MARK, and no opcode may pop
 * below it), and a memo of objects by index.  Every object is malloc'ed and recorded in
 * the context's registry, so freeing the context frees them all, whatever sharing or
 * cycles the memo produced. */
#include "io/pickle.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

#define PK_HIGHEST_PROTOCOL 5      /* pickle.HIGHEST_PROTOCOL of Python 3.8+ */
#define PK_MAX_LINE_BYTES 4096     /* text arguments: numbers, names, protocol-0 strings */
#define PK_MAX_STRING_LINE (1u << 20) /* protocol-0 STRING / UNICODE lines */
#define PK_NAME_SHOWN 120          /* longest global name quoted in an error */
#define PK_MSG_BYTES 512

graft_pickle_limits graft_pickle_default_limits(void) {
    graft_pickle_limits l;
    l.max_stack = (size_t)1 << 20;
    l.max_marks = (size_t)1 << 16;
    l.max_memo = (size_t)1 << 20;
    l.max_objects = (size_t)1 << 24;
    l.max_bytes = (size_t)1 << 30;
    l.max_bigint_bytes = 256;
    l.max_depth = 200;
    return l;
}

/* ---- the allow-list ----------------------------------------------------------------- */

typedef struct allowed_global {
    const char *module, *name, *full;
} allowed_global;

/* Indexed by graft_pickle_global. */
static const allowed_global allowed[GRAFT_PG_COUNT] = {
    {"collections", "OrderedDict", "collections.OrderedDict"},
    {"torch._utils", "_rebuild_tensor_v2", "torch._utils._rebuild_tensor_v2"},
    {"torch._utils", "_rebuild_parameter", "torch._utils._rebuild_parameter"},
    {"torch", "FloatStorage", "torch.FloatStorage"},
    {"torch", "DoubleStorage", "torch.DoubleStorage"},
    {"torch", "HalfStorage", "torch.HalfStorage"},
    {"torch", "BFloat16Storage", "torch.BFloat16Storage"},
    {"torch", "LongStorage", "torch.LongStorage"},
    {"torch", "IntStorage", "torch.IntStorage"},
    {"torch", "ShortStorage", "torch.ShortStorage"},
    {"torch", "CharStorage", "torch.CharStorage"},
    {"torch", "ByteStorage", "torch.ByteStorage"},
    {"torch", "BoolStorage", "torch.BoolStorage"},
    {"numpy.core.multiarray", "_reconstruct", "numpy.core.multiarray._reconstruct"},
    {"numpy", "ndarray", "numpy.ndarray"},
    {"numpy", "dtype", "numpy.dtype"},
};

const char *graft_pickle_global_name(graft_pickle_global id) {
    return (unsigned)id < GRAFT_PG_COUNT ? allowed[id].full : "?";
}

const char *graft_pickle_kind_name(graft_pickle_kind kind) {
    switch (kind) {
    case GRAFT_PICKLE_NONE: return "NoneType";
    case GRAFT_PICKLE_BOOL: return "bool";
    case GRAFT_PICKLE_INT:
    case GRAFT_PICKLE_BIGINT: return "int";
    case GRAFT_PICKLE_FLOAT: return "float";
    case GRAFT_PICKLE_STR: return "str";
    case GRAFT_PICKLE_BYTES: return "bytes";
    case GRAFT_PICKLE_BYTEARRAY: return "bytearray";
    case GRAFT_PICKLE_TUPLE: return "tuple";
    case GRAFT_PICKLE_LIST: return "list";
    case GRAFT_PICKLE_DICT: return "dict";
    case GRAFT_PICKLE_SET: return "set";
    case GRAFT_PICKLE_FROZENSET: return "frozenset";
    case GRAFT_PICKLE_GLOBAL: return "global";
    case GRAFT_PICKLE_CALL: return "call";
    case GRAFT_PICKLE_PERSID: return "persistent id";
    }
    return "?";
}

/* ---- the context -------------------------------------------------------------------- */

struct graft_pickle {
    graft_pickle_limits lim;
    graft_pickle_obj **objs; /* the registry: every object, for freeing */
    size_t nobjs, objs_cap;
    size_t bytes;            /* charged against lim.max_bytes */
    graft_pickle_obj **persids;
    size_t npersids, persids_cap;

    /* the load in progress */
    const unsigned char *data;
    size_t size, pos;
    size_t frame_end; /* inside a frame while pos < frame_end */
    size_t op_pos;    /* where the current opcode starts, for messages */
    unsigned char op;
    graft_pickle_obj **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t nmarks, marks_cap;
    graft_pickle_obj **memo;
    size_t memo_cap, memo_len; /* memo_len: slots in use, what MEMOIZE indexes */
};

static const char *op_name(unsigned char op) {
    switch (op) {
    case '(': return "MARK";
    case '.': return "STOP";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    case 'F': return "FLOAT";
    case 'I': return "INT";
    case 'J': return "BININT";
    case 'K': return "BININT1";
    case 'L': return "LONG";
    case 'M': return "BININT2";
    case 'N': return "NONE";
    case 'P': return "PERSID";
    case 'Q': return "BINPERSID";
    case 'R': return "REDUCE";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";
    case 'X': return "BINUNICODE";
    case 'a': return "APPEND";
    case 'b': return "BUILD";
    case 'c': return "GLOBAL";
    case 'd': return "DICT";
    case '}': return "EMPTY_DICT";
    case 'e': return "APPENDS";
    case 'g': return "GET";
    case 'h': return "BINGET";
    case 'i': return "INST";
    case 'j': return "LONG_BINGET";
    case 'l': return "LIST";
    case ']': return "EMPTY_LIST";
    case 'o': return "OBJ";
    case 'p': return "PUT";
    case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT";
    case 's': return "SETITEM";
    case 't': return "TUPLE";
    case ')': return "EMPTY_TUPLE";
    case 'u': return "SETITEMS";
    case 'G': return "BINFLOAT";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    case 0x80: return "PROTO";
    case 0x81: return "NEWOBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL";
    case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    }
    return NULL;
}

/* GRAFT_ERR_FORMAT: "<message> at byte <offset of the current opcode>". */
static graft_status fail(const graft_pickle *pk, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static graft_status fail(const graft_pickle *pk, const char *fmt, ...) {
    char msg[PK_MSG_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return graft_error(GRAFT_ERR_FORMAT, "%s at byte %zu", msg, pk->op_pos);
}

static graft_status nomem(const graft_pickle *pk) {
    return graft_error(GRAFT_ERR_NOMEM, "out of memory at byte %zu", pk->op_pos);
}

/* A name from the input as it may appear in a message: control and non-ASCII bytes
 * become '?', long names are cut with "...". */
static const char *shown(const char *s, size_t len, char buf[PK_NAME_SHOWN + 4]) {
    size_t n = len < PK_NAME_SHOWN ? len : PK_NAME_SHOWN;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = c < 0x20 || c >= 0x7f ? '?' : (char)c;
    }
    if (n < len) memcpy(buf + n, "...", 3), n += 3;
    buf[n] = 0;
    return buf;
}

/* Reserves bytes of the object budget. */
static graft_status charge(graft_pickle *pk, size_t bytes) {
    if (bytes > pk->lim.max_bytes - pk->bytes)
        return fail(pk, "objects need more than the limit of %zu bytes", pk->lim.max_bytes);
    pk->bytes += bytes;
    return GRAFT_OK;
}

/* Grows *items (elem_bytes each) to hold need items, charging the growth; the array
 * keeps its contents.  A NULL array with cap 0 is fine. */
static graft_status grow_array(graft_pickle *pk, void **items, size_t *cap, size_t need,
                               size_t elem_bytes, bool charged) {
    if (need <= *cap) return GRAFT_OK;
    size_t n = *cap ? *cap : 4;
    while (n < need) {
        if (n > SIZE_MAX / 2 / elem_bytes) return nomem(pk);
        n *= 2;
    }
    if (charged) {
        graft_status s = charge(pk, (n - *cap) * elem_bytes);
        if (s) return s;
    }
    void *p = realloc(*items, n * elem_bytes);
    if (!p) return nomem(pk);
    *items = p;
    *cap = n;
    return GRAFT_OK;
}

graft_status graft_pickle_create(const graft_pickle_limits *limits, graft_pickle **out) {
    if (!out) return graft_error(GRAFT_ERR_INVALID, "pickle: NULL output");
    *out = calloc(1, sizeof **out);
    if (!*out) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    (*out)->lim = limits ? *limits : graft_pickle_default_limits();
    return GRAFT_OK;
}

static void free_obj(graft_pickle_obj *o) {
    switch (o->kind) {
    case GRAFT_PICKLE_STR:
    case GRAFT_PICKLE_BYTES:
    case GRAFT_PICKLE_BYTEARRAY:
    case GRAFT_PICKLE_BIGINT: free(o->u.s.data); break;
    case GRAFT_PICKLE_TUPLE:
    case GRAFT_PICKLE_LIST: free(o->u.seq.items); break;
    case GRAFT_PICKLE_DICT:
    case GRAFT_PICKLE_SET:
    case GRAFT_PICKLE_FROZENSET:
        free(o->u.dict.keys);
        free(o->u.dict.values);
        free(o->u.dict.hashes);
        free(o->u.dict.index);
        break;
    default: break;
    }
    free(o);
}

void graft_pickle_free(graft_pickle *pk) {
    if (!pk) return;
    for (size_t i = 0; i < pk->nobjs; i++) free_obj(pk->objs[i]);
    free(pk->objs);
    free(pk->persids);
    free(pk->stack);
    free(pk->marks);
    free(pk->memo);
    free(pk);
}

size_t graft_pickle_persid_count(const graft_pickle *pk) { return pk->npersids; }

graft_pickle_obj *graft_pickle_persid(const graft_pickle *pk, size_t i) {
    return i < pk->npersids ? pk->persids[i] : NULL;
}

/* ---- making objects ----------------------------------------------------------------- */

static graft_status new_obj(graft_pickle *pk, graft_pickle_kind kind, graft_pickle_obj **out) {
    *out = NULL;
    if (pk->nobjs >= pk->lim.max_objects)
        return fail(pk, "more than %zu objects", pk->lim.max_objects);
    graft_status s = grow_array(pk, (void **)&pk->objs, &pk->objs_cap, pk->nobjs + 1,
                                sizeof *pk->objs, true);
    if (!s) s = charge(pk, sizeof(graft_pickle_obj));
    if (s) return s;
    graft_pickle_obj *o = calloc(1, sizeof *o);
    if (!o) return nomem(pk);
    o->kind = kind;
    pk->objs[pk->nobjs++] = o;
    *out = o;
    return GRAFT_OK;
}

/* A string-like object holding a copy of len bytes (NUL-terminated). */
static graft_status new_bytes(graft_pickle *pk, graft_pickle_kind kind, const void *src,
                              size_t len, graft_pickle_obj **out) {
    if (len == SIZE_MAX) return nomem(pk);
    graft_status s = charge(pk, len + 1);
    if (s) return s;
    char *d = malloc(len + 1);
    if (!d) return nomem(pk);
    if (len) memcpy(d, src, len);
    d[len] = 0;
    s = new_obj(pk, kind, out);
    if (s) {
        free(d);
        return s;
    }
    (*out)->u.s.data = d;
    (*out)->u.s.len = len;
    return GRAFT_OK;
}

static graft_status new_int(graft_pickle *pk, int64_t v, graft_pickle_obj **out) {
    graft_status s = new_obj(pk, GRAFT_PICKLE_INT, out);
    if (!s) (*out)->u.i = v;
    return s;
}

static graft_status seq_append(graft_pickle *pk, graft_pickle_obj *seq, graft_pickle_obj *item) {
    graft_status s = grow_array(pk, (void **)&seq->u.seq.items, &seq->u.seq.cap,
                                seq->u.seq.len + 1, sizeof *seq->u.seq.items, true);
    if (s) return s;
    seq->u.seq.items[seq->u.seq.len++] = item;
    return GRAFT_OK;
}

/* ---- hashing and equality of dict keys (Python's rules for the kinds we build) ------ */

static uint64_t mix64(uint64_t x) { /* the splitmix64 finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t hash_bytes(const char *p, size_t n, uint64_t seed) { /* FNV-1a */
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    return mix64(h);
}

/* Floats equal to an int64 compare (and hash) as that int, as 1 == 1.0 == True does. */
static bool float_as_int(double f, int64_t *v) {
    if (!(f >= -9223372036854775808.0 && f < 9223372036854775808.0)) return false;
    int64_t i = (int64_t)f;
    if ((double)i != f) return false;
    *v = i;
    return true;
}

static graft_status key_hash(const graft_pickle *pk, const graft_pickle_obj *k, int depth,
                             uint64_t *h) {
    if (depth > pk->lim.max_depth)
        return fail(pk, "a dict key is nested more than %d levels deep", pk->lim.max_depth);
    int64_t iv;
    switch (k->kind) {
    case GRAFT_PICKLE_NONE: *h = 0x6e6f6e65ull; return GRAFT_OK;
    case GRAFT_PICKLE_BOOL: *h = mix64((uint64_t)k->u.b); return GRAFT_OK;
    case GRAFT_PICKLE_INT: *h = mix64((uint64_t)k->u.i); return GRAFT_OK;
    case GRAFT_PICKLE_FLOAT:
        if (float_as_int(k->u.f, &iv)) *h = mix64((uint64_t)iv);
        else {
            uint64_t bits;
            memcpy(&bits, &k->u.f, sizeof bits);
            *h = mix64(bits ^ 0xf10a7ull);
        }
        return GRAFT_OK;
    case GRAFT_PICKLE_BIGINT: *h = hash_bytes(k->u.s.data, k->u.s.len, 3); return GRAFT_OK;
    case GRAFT_PICKLE_STR: *h = hash_bytes(k->u.s.data, k->u.s.len, 1); return GRAFT_OK;
    case GRAFT_PICKLE_BYTES: *h = hash_bytes(k->u.s.data, k->u.s.len, 2); return GRAFT_OK;
    case GRAFT_PICKLE_TUPLE: {
        uint64_t acc = 0x7475706cull + k->u.seq.len;
        for (size_t i = 0; i < k->u.seq.len; i++) {
            uint64_t ih;
            graft_status s = key_hash(pk, k->u.seq.items[i], depth + 1, &ih);
            if (s) return s;
            acc = mix64(acc * 31 + ih);
        }
        *h = acc;
        return GRAFT_OK;
    }
    case GRAFT_PICKLE_FROZENSET: {
        uint64_t acc = 0x66726f7aull; /* order-independent: a sum of the item hashes */
        for (size_t i = 0; i < k->u.dict.len; i++) acc += k->u.dict.hashes[i];
        *h = mix64(acc);
        return GRAFT_OK;
    }
    case GRAFT_PICKLE_GLOBAL: *h = mix64(0x676c6f62ull + (uint64_t)k->u.global.id); return GRAFT_OK;
    case GRAFT_PICKLE_CALL:
    case GRAFT_PICKLE_PERSID: *h = mix64((uint64_t)(uintptr_t)k); return GRAFT_OK; /* identity */
    case GRAFT_PICKLE_BYTEARRAY:
    case GRAFT_PICKLE_LIST:
    case GRAFT_PICKLE_DICT:
    case GRAFT_PICKLE_SET: break;
    }
    return fail(pk, "unhashable dict key or set item of type %s", graft_pickle_kind_name(k->kind));
}

static size_t dict_find(const graft_pickle_obj *d, const graft_pickle_obj *key, uint64_t h);

/* A bool, int or integral float as an int64 (how Python compares numbers). */
static bool number_as_int(const graft_pickle_obj *o, int64_t *v) {
    if (o->kind == GRAFT_PICKLE_BOOL) return *v = o->u.b, true;
    if (o->kind == GRAFT_PICKLE_INT) return *v = o->u.i, true;
    return o->kind == GRAFT_PICKLE_FLOAT && float_as_int(o->u.f, v);
}

static bool is_number(const graft_pickle_obj *o) {
    return o->kind == GRAFT_PICKLE_BOOL || o->kind == GRAFT_PICKLE_INT ||
           o->kind == GRAFT_PICKLE_FLOAT;
}

/* Both a and b have been hashed, so their nesting is within the depth limit. */
static bool key_equal(const graft_pickle_obj *a, const graft_pickle_obj *b) {
    if (a == b) return true;
    if (is_number(a) && is_number(b)) {
        if (a->kind == GRAFT_PICKLE_FLOAT && b->kind == GRAFT_PICKLE_FLOAT)
            return a->u.f == b->u.f;
        int64_t ia, ib;
        return number_as_int(a, &ia) && number_as_int(b, &ib) && ia == ib;
    }
    if (a->kind != b->kind) return false;
    switch (a->kind) {
    case GRAFT_PICKLE_NONE: return true;
    case GRAFT_PICKLE_BIGINT:
    case GRAFT_PICKLE_STR:
    case GRAFT_PICKLE_BYTES:
        return a->u.s.len == b->u.s.len && memcmp(a->u.s.data, b->u.s.data, a->u.s.len) == 0;
    case GRAFT_PICKLE_TUPLE:
        if (a->u.seq.len != b->u.seq.len) return false;
        for (size_t i = 0; i < a->u.seq.len; i++)
            if (!key_equal(a->u.seq.items[i], b->u.seq.items[i])) return false;
        return true;
    case GRAFT_PICKLE_FROZENSET:
        if (a->u.dict.len != b->u.dict.len) return false;
        for (size_t i = 0; i < a->u.dict.len; i++)
            if (dict_find(b, a->u.dict.keys[i], a->u.dict.hashes[i]) == SIZE_MAX) return false;
        return true;
    case GRAFT_PICKLE_GLOBAL: return a->u.global.id == b->u.global.id;
    default: return false; /* calls and persistent ids compare by identity */
    }
}

/* The entry index of key, or SIZE_MAX. */
static size_t dict_find(const graft_pickle_obj *d, const graft_pickle_obj *key, uint64_t h) {
    if (!d->u.dict.index_cap) return SIZE_MAX;
    size_t mask = d->u.dict.index_cap - 1;
    for (size_t slot = (size_t)h & mask;; slot = (slot + 1) & mask) {
        size_t e = d->u.dict.index[slot];
        if (!e) return SIZE_MAX;
        if (d->u.dict.hashes[e - 1] == h && key_equal(d->u.dict.keys[e - 1], key)) return e - 1;
    }
}

static graft_status dict_reindex(graft_pickle *pk, graft_pickle_obj *d, size_t cap) {
    graft_status s = charge(pk, cap * sizeof(size_t));
    if (s) return s;
    size_t *index = calloc(cap, sizeof *index);
    if (!index) return nomem(pk);
    for (size_t e = 0; e < d->u.dict.len; e++) {
        size_t slot = (size_t)d->u.dict.hashes[e] & (cap - 1);
        while (index[slot]) slot = (slot + 1) & (cap - 1);
        index[slot] = e + 1;
    }
    free(d->u.dict.index);
    d->u.dict.index = index;
    d->u.dict.index_cap = cap;
    return GRAFT_OK;
}

/* d[key] = value (value NULL for sets).  An existing key keeps its place and its key
 * object; only the value changes, as in Python. */
static graft_status dict_set(graft_pickle *pk, graft_pickle_obj *d, graft_pickle_obj *key,
                             graft_pickle_obj *value) {
    uint64_t h;
    graft_status s = key_hash(pk, key, 0, &h);
    if (s) return s;
    size_t e = dict_find(d, key, h);
    if (e != SIZE_MAX) {
        if (d->u.dict.values) d->u.dict.values[e] = value;
        return GRAFT_OK;
    }
    size_t n = d->u.dict.len, cap = d->u.dict.cap;
    if (n == cap) {
        size_t cap2 = cap; /* three arrays grow together */
        s = grow_array(pk, (void **)&d->u.dict.keys, &cap2, n + 1, sizeof(void *), true);
        if (s) return s;
        size_t cap3 = cap;
        s = grow_array(pk, (void **)&d->u.dict.hashes, &cap3, n + 1, sizeof(uint64_t), true);
        if (s) return s;
        if (d->kind == GRAFT_PICKLE_DICT) {
            size_t cap4 = cap;
            s = grow_array(pk, (void **)&d->u.dict.values, &cap4, n + 1, sizeof(void *), true);
            if (s) return s;
        }
        d->u.dict.cap = cap2;
    }
    d->u.dict.keys[n] = key;
    d->u.dict.hashes[n] = h;
    if (d->kind == GRAFT_PICKLE_DICT) d->u.dict.values[n] = value;
    d->u.dict.len = n + 1;
    if (2 * d->u.dict.len > d->u.dict.index_cap) { /* keep the table at most half full */
        size_t ic = d->u.dict.index_cap ? d->u.dict.index_cap : 8;
        while (2 * d->u.dict.len > ic) ic *= 2;
        return dict_reindex(pk, d, ic);
    }
    size_t mask = d->u.dict.index_cap - 1, slot = (size_t)h & mask;
    while (d->u.dict.index[slot]) slot = (slot + 1) & mask;
    d->u.dict.index[slot] = n + 1;
    return GRAFT_OK;
}

graft_pickle_obj *graft_pickle_dict_get(const graft_pickle_obj *dict, const char *key) {
    if (!dict || dict->kind != GRAFT_PICKLE_DICT || !key) return NULL;
    graft_pickle_obj k;
    memset(&k, 0, sizeof k);
    k.kind = GRAFT_PICKLE_STR;
    k.u.s.data = (char *)key;
    k.u.s.len = strlen(key);
    size_t e = dict_find(dict, &k, hash_bytes(key, k.u.s.len, 1));
    return e == SIZE_MAX ? NULL : dict->u.dict.values[e];
}

bool graft_pickle_is_str(const graft_pickle_obj *o, const char *s) {
    return o && o->kind == GRAFT_PICKLE_STR && strlen(s) == o->u.s.len &&
           memcmp(o->u.s.data, s, o->u.s.len) == 0;
}

bool graft_pickle_is_call(const graft_pickle_obj *o, graft_pickle_global id) {
    return o && o->kind == GRAFT_PICKLE_CALL && o->u.call.callable->u.global.id == id;
}

/* ---- reading the input -------------------------------------------------------------- */

/* The next n bytes of the current opcode's argument. */
static graft_status take(graft_pickle *pk, size_t n, const unsigned char **p) {
    *p = NULL;
    const char *name = op_name(pk->op);
    if (n > pk->size - pk->pos)
        return fail(pk, "truncated: %s needs %zu more bytes but %zu remain", name ? name : "?", n,
                    pk->size - pk->pos);
    if (pk->pos < pk->frame_end && n > pk->frame_end - pk->pos)
        return fail(pk, "%s runs past the end of its frame", name ? name : "?");
    *p = pk->data + pk->pos;
    pk->pos += n;
    return GRAFT_OK;
}

static uint64_t le_uint(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* An unsigned little-endian length argument of n bytes. */
static graft_status take_len(graft_pickle *pk, int n, uint64_t *len) {
    const unsigned char *p = NULL;
    *len = 0;
    graft_status s = take(pk, (size_t)n, &p);
    if (!s) *len = le_uint(p, n);
    return s;
}

/* A signed 4-byte length (BINSTRING, LONG4), which must not be negative. */
static graft_status take_len_i32(graft_pickle *pk, uint64_t *len) {
    graft_status s = take_len(pk, 4, len);
    if (!s && *len >= 0x80000000u) return fail(pk, "%s has a negative length", op_name(pk->op));
    return s;
}

/* A text argument up to (not including) '\n'; a '\r' before it is dropped. */
static graft_status take_line(graft_pickle *pk, size_t max, const char **line, size_t *len) {
    size_t avail = pk->size - pk->pos;
    if (pk->pos < pk->frame_end && avail > pk->frame_end - pk->pos)
        avail = pk->frame_end - pk->pos;
    size_t look = avail < max + 2 ? avail : max + 2;
    const unsigned char *start = pk->data + pk->pos;
    const unsigned char *nl = memchr(start, '\n', look);
    if (!nl) {
        if (look == avail)
            return fail(pk, "truncated: %s argument has no end of line", op_name(pk->op));
        return fail(pk, "%s argument is longer than %zu bytes", op_name(pk->op), max);
    }
    size_t n = (size_t)(nl - start);
    pk->pos += n + 1;
    if (n && start[n - 1] == '\r') n--;
    if (n > max) return fail(pk, "%s argument is longer than %zu bytes", op_name(pk->op), max);
    *line = (const char *)start;
    *len = n;
    return GRAFT_OK;
}

/* A decimal memo key (PUT / GET): optional sign, digits. */
static graft_status parse_decimal(const graft_pickle *pk, const char *s, size_t n, int64_t *out) {
    size_t i = 0;
    bool neg = false;
    if (i < n && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
    if (i == n) return fail(pk, "%s argument is not a decimal integer", op_name(pk->op));
    uint64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return fail(pk, "%s argument is not a decimal integer", op_name(pk->op));
        unsigned d = (unsigned)(s[i] - '0');
        if (v > ((uint64_t)INT64_MAX - d) / 10)
            return fail(pk, "%s argument does not fit in 64 bits", op_name(pk->op));
        v = v * 10 + d;
    }
    *out = neg ? -(int64_t)v : (int64_t)v;
    return GRAFT_OK;
}

/* ---- strings ------------------------------------------------------------------------ */

/* Well-formed UTF-8, except that encoded surrogates are accepted, as Python's unpickler
 * decodes with 'surrogatepass'. */
static bool utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t extra;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) extra = 1, cp = c & 0x1f, min = 0x80;
        else if ((c & 0xf0) == 0xe0) extra = 2, cp = c & 0x0f, min = 0x800;
        else if ((c & 0xf8) == 0xf0) extra = 3, cp = c & 0x07, min = 0x10000;
        else return false;
        if (extra > n - i - 1) return false;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff) return false;
        i += extra + 1;
    }
    return true;
}

static size_t utf8_put(uint32_t cp, unsigned char *out) {
    if (cp < 0x80) return out[0] = (unsigned char)cp, 1;
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xc0 | cp >> 6);
        out[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xe0 | cp >> 12);
        out[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (unsigned char)(0xf0 | cp >> 18);
    out[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
    out[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* n hex digits at s, or -1. */
static int64_t hex_digits(const char *s, size_t n) {
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        int d = hex_value(s[i]);
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Protocol 0 UNICODE: 'raw-unicode-escape' — bytes are Latin-1 except \uXXXX and
 * \UXXXXXXXX.  The UTF-8 result is at most 3 bytes per input byte. */
static graft_status decode_raw_unicode(graft_pickle *pk, const char *s, size_t n,
                                       graft_pickle_obj **out) {
    unsigned char *buf = malloc(3 * n + 1);
    if (!buf) return nomem(pk);
    size_t len = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] == '\\' && i + 1 < n && (s[i + 1] == 'u' || s[i + 1] == 'U')) {
            size_t digits = s[i + 1] == 'u' ? 4 : 8;
            int64_t cp = i + 2 + digits <= n ? hex_digits(s + i + 2, digits) : -1;
            if (cp < 0 || cp > 0x10ffff) {
                free(buf);
                return fail(pk, "UNICODE argument has a bad \\%c escape", s[i + 1]);
            }
            len += utf8_put((uint32_t)cp, buf + len);
            i += 2 + digits;
        } else {
            len += utf8_put((unsigned char)s[i], buf + len);
            i++;
        }
    }
    graft_status st = new_bytes(pk, GRAFT_PICKLE_STR, buf, len, out);
    free(buf);
    return st;
}

/* Protocol 0 STRING: a quoted Python 2 repr; the escapes of codecs.escape_decode. */
static graft_status decode_quoted(graft_pickle *pk, const char *s, size_t n,
                                  graft_pickle_obj **out) {
    if (n < 2 || s[0] != s[n - 1] || (s[0] != '\'' && s[0] != '"'))
        return fail(pk, "STRING argument is not quoted");
    s++, n -= 2;
    char *buf = malloc(n + 1);
    if (!buf) return nomem(pk);
    size_t len = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] != '\\' || i + 1 == n) {
            buf[len++] = s[i++];
            continue;
        }
        char c = s[i + 1];
        i += 2;
        switch (c) {
        case 'n': buf[len++] = '\n'; break;
        case 't': buf[len++] = '\t'; break;
        case 'r': buf[len++] = '\r'; break;
        case 'a': buf[len++] = '\a'; break;
        case 'b': buf[len++] = '\b'; break;
        case 'f': buf[len++] = '\f'; break;
        case 'v': buf[len++] = '\v'; break;
        case '\\': case '\'': case '"': buf[len++] = c; break;
        case 'x': {
            int64_t v = i + 2 <= n ? hex_digits(s + i, 2) : -1;
            if (v < 0) {
                free(buf);
                return fail(pk, "STRING argument has a bad \\x escape");
            }
            buf[len++] = (char)v;
            i += 2;
            break;
        }
        default:
            if (c >= '0' && c <= '7') {
                unsigned v = (unsigned)(c - '0');
                for (int k = 0; k < 2 && i < n && s[i] >= '0' && s[i] <= '7'; k++)
                    v = v * 8 + (unsigned)(s[i++] - '0');
                buf[len++] = (char)(v & 0xff);
            } else { /* unknown escapes stay as written */
                buf[len++] = '\\';
                buf[len++] = c;
            }
        }
    }
    graft_status st = new_bytes(pk, GRAFT_PICKLE_BYTES, buf, len, out);
    free(buf);
    return st;
}

/* ---- the stack, marks and memo ------------------------------------------------------ */

static size_t stack_base(const graft_pickle *pk) {
    return pk->nmarks ? pk->marks[pk->nmarks - 1] : 0;
}

static graft_status push(graft_pickle *pk, graft_pickle_obj *o) {
    if (pk->sp >= pk->lim.max_stack)
        return fail(pk, "stack holds more than %zu objects", pk->lim.max_stack);
    graft_status s = grow_array(pk, (void **)&pk->stack, &pk->stack_cap, pk->sp + 1,
                                sizeof *pk->stack, false);
    if (s) return s;
    pk->stack[pk->sp++] = o;
    return GRAFT_OK;
}

static graft_status underflow(const graft_pickle *pk) {
    return fail(pk, "stack underflow: %s needs an object the stack does not hold",
                op_name(pk->op));
}

static graft_status pop(graft_pickle *pk, graft_pickle_obj **o) {
    *o = NULL;
    if (pk->sp <= stack_base(pk)) return underflow(pk);
    *o = pk->stack[--pk->sp];
    return GRAFT_OK;
}

static graft_status top(const graft_pickle *pk, graft_pickle_obj **o) {
    *o = NULL;
    if (pk->sp <= stack_base(pk)) return underflow(pk);
    *o = pk->stack[pk->sp - 1];
    return GRAFT_OK;
}

/* Closes the newest MARK; the items above it are stack[*start .. sp). */
static graft_status pop_mark(graft_pickle *pk, size_t *start) {
    if (!pk->nmarks) return fail(pk, "%s found no MARK", op_name(pk->op));
    *start = pk->marks[--pk->nmarks];
    return GRAFT_OK;
}

/* The object just below a closed MARK (what APPENDS/SETITEMS/ADDITEMS extend). */
static graft_status below_mark(const graft_pickle *pk, size_t start, graft_pickle_obj **o) {
    *o = NULL;
    if (start <= stack_base(pk)) return underflow(pk);
    *o = pk->stack[start - 1];
    return GRAFT_OK;
}

static graft_status memo_put(graft_pickle *pk, uint64_t idx) {
    graft_pickle_obj *o = NULL;
    graft_status s = top(pk, &o);
    if (s) return s;
    if (idx >= pk->lim.max_memo)
        return fail(pk, "memo index %llu exceeds the limit of %zu", (unsigned long long)idx,
                    pk->lim.max_memo);
    size_t old = pk->memo_cap;
    s = grow_array(pk, (void **)&pk->memo, &pk->memo_cap, (size_t)idx + 1, sizeof *pk->memo,
                   false);
    if (s) return s;
    if (pk->memo_cap > old) memset(pk->memo + old, 0, (pk->memo_cap - old) * sizeof *pk->memo);
    if (!pk->memo[idx]) pk->memo_len++;
    pk->memo[idx] = o;
    return GRAFT_OK;
}

static graft_status memo_get(graft_pickle *pk, uint64_t idx) {
    if (idx >= pk->memo_cap || !pk->memo[idx])
        return fail(pk, "memo key %llu is not set", (unsigned long long)idx);
    return push(pk, pk->memo[idx]);
}

/* ---- globals and calls -------------------------------------------------------------- */

static graft_status lookup_global(graft_pickle *pk, const char *module, size_t mlen,
                                  const char *name, size_t nlen, graft_pickle_obj **out) {
    for (int id = 0; id < GRAFT_PG_COUNT; id++) {
        const allowed_global *g = &allowed[id];
        if (strlen(g->module) == mlen && memcmp(g->module, module, mlen) == 0 &&
            strlen(g->name) == nlen && memcmp(g->name, name, nlen) == 0) {
            graft_status s = new_obj(pk, GRAFT_PICKLE_GLOBAL, out);
            if (s) return s;
            (*out)->u.global.id = (graft_pickle_global)id;
            (*out)->u.global.module = g->module;
            (*out)->u.global.name = g->name;
            return GRAFT_OK;
        }
    }
    char mb[PK_NAME_SHOWN + 4], nb[PK_NAME_SHOWN + 4];
    return fail(pk, "global '%s.%s' is not allowed", shown(module, mlen, mb),
                shown(name, nlen, nb));
}

/* collections.OrderedDict(...) builds a dict: from no arguments (what its __reduce__
 * writes), or from one dict or list of pairs. */
static graft_status ordered_dict(graft_pickle *pk, const graft_pickle_obj *args,
                                 graft_pickle_obj **out) {
    graft_status s = new_obj(pk, GRAFT_PICKLE_DICT, out);
    if (s || args->u.seq.len == 0) return s;
    const graft_pickle_obj *src = args->u.seq.items[0];
    if (args->u.seq.len == 1 && src->kind == GRAFT_PICKLE_DICT) {
        for (size_t i = 0; i < src->u.dict.len && !s; i++)
            s = dict_set(pk, *out, src->u.dict.keys[i], src->u.dict.values[i]);
        return s;
    }
    if (args->u.seq.len == 1 && src->kind == GRAFT_PICKLE_LIST) {
        for (size_t i = 0; i < src->u.seq.len && !s; i++) {
            const graft_pickle_obj *pair = src->u.seq.items[i];
            if ((pair->kind != GRAFT_PICKLE_TUPLE && pair->kind != GRAFT_PICKLE_LIST) ||
                pair->u.seq.len != 2)
                return fail(pk, "collections.OrderedDict item %zu is not a pair", i);
            s = dict_set(pk, *out, pair->u.seq.items[0], pair->u.seq.items[1]);
        }
        return s;
    }
    return fail(pk, "collections.OrderedDict called with unexpected arguments");
}

/* Records callable(*args, **kwargs) without calling anything. */
static graft_status make_call(graft_pickle *pk, graft_pickle_obj *callable, graft_pickle_obj *args,
                              graft_pickle_obj *kwargs, bool newobj) {
    if (callable->kind != GRAFT_PICKLE_GLOBAL)
        return fail(pk, "%s calls a %s, not a global", op_name(pk->op),
                    graft_pickle_kind_name(callable->kind));
    if (args->kind != GRAFT_PICKLE_TUPLE)
        return fail(pk, "%s arguments are a %s, not a tuple", op_name(pk->op),
                    graft_pickle_kind_name(args->kind));
    if (kwargs && kwargs->kind != GRAFT_PICKLE_DICT)
        return fail(pk, "%s keyword arguments are a %s, not a dict", op_name(pk->op),
                    graft_pickle_kind_name(kwargs->kind));
    graft_pickle_obj *o;
    graft_status s;
    if (callable->u.global.id == GRAFT_PG_ORDERED_DICT && (!kwargs || kwargs->u.dict.len == 0)) {
        s = ordered_dict(pk, args, &o);
    } else {
        s = new_obj(pk, GRAFT_PICKLE_CALL, &o);
        if (!s) {
            o->u.call.callable = callable;
            o->u.call.args = args;
            o->u.call.kwargs = kwargs;
            o->u.call.newobj = newobj;
        }
    }
    return s ? s : push(pk, o);
}

/* A new tuple, list or frozenset of the n objects at items. */
static graft_status collect(graft_pickle *pk, graft_pickle_kind kind, graft_pickle_obj **items,
                            size_t n, graft_pickle_obj **out) {
    graft_status s = new_obj(pk, kind, out);
    if (s) return s;
    if (kind == GRAFT_PICKLE_FROZENSET) {
        for (size_t i = 0; i < n && !s; i++) s = dict_set(pk, *out, items[i], NULL);
        return s;
    }
    if (n) {
        s = grow_array(pk, (void **)&(*out)->u.seq.items, &(*out)->u.seq.cap, n,
                       sizeof *items, true);
        if (s) return s;
        memcpy((*out)->u.seq.items, items, n * sizeof *items);
    }
    (*out)->u.seq.len = n;
    return GRAFT_OK;
}

/* Pops the items above the newest MARK into a new tuple/list/frozenset and pushes it. */
static graft_status collect_mark(graft_pickle *pk, graft_pickle_kind kind) {
    size_t start = 0;
    graft_status s = pop_mark(pk, &start);
    graft_pickle_obj *o;
    if (!s) s = collect(pk, kind, pk->stack + start, pk->sp - start, &o);
    if (s) return s;
    pk->sp = start;
    return push(pk, o);
}

/* ---- integers ----------------------------------------------------------------------- */

/* LONG1 / LONG4: n bytes of little-endian two's complement. */
static graft_status push_long(graft_pickle *pk, const unsigned char *b, size_t n) {
    /* Drop bytes that only repeat the sign, so equal values look alike. */
    while (n > 1 && ((b[n - 1] == 0x00 && !(b[n - 2] & 0x80)) ||
                     (b[n - 1] == 0xff && (b[n - 2] & 0x80))))
        n--;
    graft_pickle_obj *o;
    graft_status s;
    if (n <= 8) {
        uint64_t v = n ? le_uint(b, (int)n) : 0;
        if (n && n < 8 && (b[n - 1] & 0x80)) v |= ~(uint64_t)0 << (8 * n); /* sign-extend */
        int64_t iv;
        memcpy(&iv, &v, sizeof iv);
        s = new_int(pk, iv, &o);
    } else {
        if (n > pk->lim.max_bigint_bytes)
            return fail(pk, "%s integer of %zu bytes exceeds the limit of %zu", op_name(pk->op),
                        n, pk->lim.max_bigint_bytes);
        s = new_bytes(pk, GRAFT_PICKLE_BIGINT, b, n, &o);
    }
    return s ? s : push(pk, o);
}

/* INT / LONG text of any size (optional sign, optional trailing 'L' as Python 2's repr
 * wrote): the digits become little-endian two's complement bytes for push_long. */
static graft_status push_decimal(graft_pickle *pk, const char *s, size_t n, bool allow_l) {
    size_t i = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\t')) i++;
    while (n > i && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    if (allow_l && n > i && s[n - 1] == 'L') n--;
    bool neg = false;
    if (i < n && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
    if (i == n) return fail(pk, "%s argument is not a decimal integer", op_name(pk->op));
    size_t cap = pk->lim.max_bigint_bytes + 9, len = 0; /* any int64 fits, plus a sign byte */
    unsigned char *mag = calloc(cap, 1);
    if (!mag) return nomem(pk);
    graft_status st = GRAFT_OK;
    for (; i < n && !st; i++) {
        if (s[i] < '0' || s[i] > '9') {
            st = fail(pk, "%s argument is not a decimal integer", op_name(pk->op));
            break;
        }
        unsigned carry = (unsigned)(s[i] - '0'); /* mag = mag * 10 + digit */
        for (size_t k = 0; k < len; k++) {
            unsigned v = mag[k] * 10u + carry;
            mag[k] = (unsigned char)v;
            carry = v >> 8;
        }
        for (; carry && !st; carry >>= 8) {
            if (len + 1 >= cap) st = fail(pk, "%s integer exceeds the limit of %zu bytes",
                                          op_name(pk->op), pk->lim.max_bigint_bytes);
            else mag[len++] = (unsigned char)carry;
        }
    }
    if (!st) {
        len++; /* a clear top byte: the magnitude is positive */
        if (neg) { /* two's complement: invert and add one */
            unsigned carry = 1;
            for (size_t k = 0; k < len; k++) {
                unsigned v = (unsigned char)~mag[k] + carry;
                mag[k] = (unsigned char)v;
                carry = v >> 8;
            }
        }
        st = push_long(pk, mag, len);
    }
    free(mag);
    return st;
}

/* ---- the machine -------------------------------------------------------------------- */

/* One string-like argument of len bytes (already known to be present). */
static graft_status push_bytes(graft_pickle *pk, graft_pickle_kind kind, uint64_t len) {
    if (len > pk->size - pk->pos)
        return fail(pk, "truncated: %s of %llu bytes but %zu remain", op_name(pk->op),
                    (unsigned long long)len, pk->size - pk->pos);
    const unsigned char *p;
    graft_status s = take(pk, (size_t)len, &p);
    if (s) return s;
    if (kind == GRAFT_PICKLE_STR && !utf8_valid(p, (size_t)len))
        return fail(pk, "%s is not valid UTF-8", op_name(pk->op));
    graft_pickle_obj *o;
    s = new_bytes(pk, kind, p, (size_t)len, &o);
    return s ? s : push(pk, o);
}

static graft_status push_new(graft_pickle *pk, graft_pickle_kind kind) {
    graft_pickle_obj *o = NULL;
    graft_status s = new_obj(pk, kind, &o);
    return s ? s : push(pk, o);
}

static graft_status push_persid(graft_pickle *pk, graft_pickle_obj *pid) {
    graft_pickle_obj *o;
    graft_status s = grow_array(pk, (void **)&pk->persids, &pk->persids_cap, pk->npersids + 1,
                                sizeof *pk->persids, true);
    if (!s) s = new_obj(pk, GRAFT_PICKLE_PERSID, &o);
    if (s) return s;
    o->u.persid.pid = pid;
    pk->persids[pk->npersids++] = o;
    return push(pk, o);
}

/* Runs one opcode; *stop is set by STOP. */
static graft_status step(graft_pickle *pk, graft_pickle_obj **root, bool *stop) {
    const unsigned char *b = NULL;
    uint64_t n = 0;
    int64_t iv = 0;
    const char *line = NULL, *line2 = NULL;
    size_t len = 0, len2 = 0, start = 0;
    graft_pickle_obj *o = NULL, *a = NULL, *c = NULL;
    graft_status s;

    pk->op_pos = pk->pos;
    if (pk->pos >= pk->size) return fail(pk, "truncated: the pickle ends without STOP");
    pk->op = pk->data[pk->pos];
    pk->pos++;
    switch (pk->op) {
    case 0x80: /* PROTO */
        if ((s = take(pk, 1, &b))) return s;
        if (*b > PK_HIGHEST_PROTOCOL) return fail(pk, "unsupported pickle protocol %u", *b);
        return GRAFT_OK;
    case 0x95: /* FRAME */
        if (pk->pos - 1 < pk->frame_end)
            return fail(pk, "FRAME starts before the previous frame ends");
        if ((s = take_len(pk, 8, &n))) return s;
        if (n > pk->size - pk->pos)
            return fail(pk, "truncated: FRAME of %llu bytes but %zu remain",
                        (unsigned long long)n, pk->size - pk->pos);
        pk->frame_end = pk->pos + (size_t)n;
        return GRAFT_OK;
    case '.': /* STOP */
        if ((s = pop(pk, root))) return s;
        *stop = true;
        return GRAFT_OK;

    /* stack manipulation */
    case '(': /* MARK */
        if (pk->nmarks >= pk->lim.max_marks)
            return fail(pk, "more than %zu nested MARKs", pk->lim.max_marks);
        if ((s = grow_array(pk, (void **)&pk->marks, &pk->marks_cap, pk->nmarks + 1,
                            sizeof *pk->marks, false)))
            return s;
        pk->marks[pk->nmarks++] = pk->sp;
        return GRAFT_OK;
    case '0': /* POP: the top object, or the newest MARK when nothing is above it */
        if (pk->sp > stack_base(pk)) pk->sp--;
        else if (pk->nmarks) pk->nmarks--;
        else return underflow(pk);
        return GRAFT_OK;
    case '1': /* POP_MARK */
        if ((s = pop_mark(pk, &start))) return s;
        pk->sp = start;
        return GRAFT_OK;
    case '2': /* DUP */
        if ((s = top(pk, &o))) return s;
        return push(pk, o);

    /* constants and numbers */
    case 'N': return push_new(pk, GRAFT_PICKLE_NONE);
    case 0x88: /* NEWTRUE */
    case 0x89: /* NEWFALSE */
        if ((s = new_obj(pk, GRAFT_PICKLE_BOOL, &o))) return s;
        o->u.b = pk->op == 0x88;
        return push(pk, o);
    case 'J': /* BININT: signed 4 bytes */
        if ((s = take_len(pk, 4, &n))) return s;
        iv = n >= 0x80000000u ? (int64_t)n - ((int64_t)1 << 32) : (int64_t)n;
        if ((s = new_int(pk, iv, &o))) return s;
        return push(pk, o);
    case 'K': /* BININT1 */
    case 'M': /* BININT2 */
        if ((s = take_len(pk, pk->op == 'K' ? 1 : 2, &n))) return s;
        if ((s = new_int(pk, (int64_t)n, &o))) return s;
        return push(pk, o);
    case 0x8a: /* LONG1 */
    case 0x8b: /* LONG4 */
        if (pk->op == 0x8a) s = take_len(pk, 1, &n);
        else s = take_len_i32(pk, &n);
        if (s) return s;
        if (n > pk->size - pk->pos)
            return fail(pk, "truncated: %s of %llu bytes but %zu remain", op_name(pk->op),
                        (unsigned long long)n, pk->size - pk->pos);
        if ((s = take(pk, (size_t)n, &b))) return s;
        return push_long(pk, b, (size_t)n);
    case 'I': /* INT: decimal text; "00" and "01" are protocol 0's False and True */
    case 'L': /* LONG: decimal text */
        if ((s = take_line(pk, PK_MAX_LINE_BYTES, &line, &len))) return s;
        if (pk->op == 'I' && len == 2 && line[0] == '0' && (line[1] == '0' || line[1] == '1')) {
            if ((s = new_obj(pk, GRAFT_PICKLE_BOOL, &o))) return s;
            o->u.b = line[1] == '1';
            return push(pk, o);
        }
        return push_decimal(pk, line, len, pk->op == 'L');
    case 'G': { /* BINFLOAT: 8 bytes, big-endian IEEE 754 */
        if ((s = take(pk, 8, &b))) return s;
        uint64_t bits = 0;
        for (int i = 0; i < 8; i++) bits = bits << 8 | b[i];
        if ((s = new_obj(pk, GRAFT_PICKLE_FLOAT, &o))) return s;
        memcpy(&o->u.f, &bits, sizeof bits);
        return push(pk, o);
    }
    case 'F': { /* FLOAT: text */
        if ((s = take_line(pk, PK_MAX_LINE_BYTES, &line, &len))) return s;
        char buf[PK_MAX_LINE_BYTES + 1];
        memcpy(buf, line, len);
        buf[len] = 0;
        char *end;
        double v = strtod(buf, &end);
        while (*end == ' ' || *end == '\t') end++;
        if (len == 0 || *end) return fail(pk, "FLOAT argument is not a number");
        if ((s = new_obj(pk, GRAFT_PICKLE_FLOAT, &o))) return s;
        o->u.f = v;
        return push(pk, o);
    }

    /* strings */
    case 'X': /* BINUNICODE */
    case 'B': /* BINBYTES */
        if ((s = take_len(pk, 4, &n))) return s;
        return push_bytes(pk, pk->op == 'X' ? GRAFT_PICKLE_STR : GRAFT_PICKLE_BYTES, n);
    case 0x8c: /* SHORT_BINUNICODE */
    case 'C':  /* SHORT_BINBYTES */
    case 'U':  /* SHORT_BINSTRING */
        if ((s = take_len(pk, 1, &n))) return s;
        return push_bytes(pk, pk->op == 0x8c ? GRAFT_PICKLE_STR : GRAFT_PICKLE_BYTES, n);
    case 0x8d: /* BINUNICODE8 */
    case 0x8e: /* BINBYTES8 */
    case 0x96: /* BYTEARRAY8 */
        if ((s = take_len(pk, 8, &n))) return s;
        return push_bytes(pk,
                          pk->op == 0x8d   ? GRAFT_PICKLE_STR
                          : pk->op == 0x8e ? GRAFT_PICKLE_BYTES
                                           : GRAFT_PICKLE_BYTEARRAY,
                          n);
    case 'T': /* BINSTRING */
        if ((s = take_len_i32(pk, &n))) return s;
        return push_bytes(pk, GRAFT_PICKLE_BYTES, n);
    case 'S': /* STRING */
        if ((s = take_line(pk, PK_MAX_STRING_LINE, &line, &len))) return s;
        if ((s = decode_quoted(pk, line, len, &o))) return s;
        return push(pk, o);
    case 'V': /* UNICODE */
        if ((s = take_line(pk, PK_MAX_STRING_LINE, &line, &len))) return s;
        if ((s = decode_raw_unicode(pk, line, len, &o))) return s;
        return push(pk, o);

    /* containers */
    case ')': return push_new(pk, GRAFT_PICKLE_TUPLE);
    case ']': return push_new(pk, GRAFT_PICKLE_LIST);
    case '}': return push_new(pk, GRAFT_PICKLE_DICT);
    case 0x8f: return push_new(pk, GRAFT_PICKLE_SET);
    case 't': return collect_mark(pk, GRAFT_PICKLE_TUPLE);
    case 'l': return collect_mark(pk, GRAFT_PICKLE_LIST);
    case 0x91: return collect_mark(pk, GRAFT_PICKLE_FROZENSET);
    case 0x85: /* TUPLE1 */
    case 0x86: /* TUPLE2 */
    case 0x87: { /* TUPLE3 */
        size_t k = (size_t)(pk->op - 0x84);
        if (pk->sp - stack_base(pk) < k) return underflow(pk);
        if ((s = collect(pk, GRAFT_PICKLE_TUPLE, pk->stack + pk->sp - k, k, &o))) return s;
        pk->sp -= k;
        return push(pk, o);
    }
    case 'd': /* DICT: key, value pairs above the MARK */
        if ((s = pop_mark(pk, &start))) return s;
        if ((pk->sp - start) % 2) return fail(pk, "DICT has an odd number of items");
        if ((s = new_obj(pk, GRAFT_PICKLE_DICT, &o))) return s;
        for (size_t i = start; i < pk->sp; i += 2)
            if ((s = dict_set(pk, o, pk->stack[i], pk->stack[i + 1]))) return s;
        pk->sp = start;
        return push(pk, o);
    case 'a': /* APPEND */
        if ((s = pop(pk, &a)) || (s = top(pk, &o))) return s;
        if (o->kind != GRAFT_PICKLE_LIST)
            return fail(pk, "APPEND to a %s", graft_pickle_kind_name(o->kind));
        return seq_append(pk, o, a);
    case 'e': /* APPENDS */
        if ((s = pop_mark(pk, &start)) || (s = below_mark(pk, start, &o))) return s;
        if (o->kind != GRAFT_PICKLE_LIST)
            return fail(pk, "APPENDS to a %s", graft_pickle_kind_name(o->kind));
        for (size_t i = start; i < pk->sp; i++)
            if ((s = seq_append(pk, o, pk->stack[i]))) return s;
        pk->sp = start;
        return GRAFT_OK;
    case 's': /* SETITEM */
        if ((s = pop(pk, &a)) || (s = pop(pk, &c)) || (s = top(pk, &o))) return s;
        if (o->kind != GRAFT_PICKLE_DICT)
            return fail(pk, "SETITEM on a %s", graft_pickle_kind_name(o->kind));
        return dict_set(pk, o, c, a);
    case 'u': /* SETITEMS */
        if ((s = pop_mark(pk, &start)) || (s = below_mark(pk, start, &o))) return s;
        if (o->kind != GRAFT_PICKLE_DICT)
            return fail(pk, "SETITEMS on a %s", graft_pickle_kind_name(o->kind));
        if ((pk->sp - start) % 2) return fail(pk, "SETITEMS has an odd number of items");
        for (size_t i = start; i < pk->sp; i += 2)
            if ((s = dict_set(pk, o, pk->stack[i], pk->stack[i + 1]))) return s;
        pk->sp = start;
        return GRAFT_OK;
    case 0x90: /* ADDITEMS */
        if ((s = pop_mark(pk, &start)) || (s = below_mark(pk, start, &o))) return s;
        if (o->kind != GRAFT_PICKLE_SET)
            return fail(pk, "ADDITEMS on a %s", graft_pickle_kind_name(o->kind));
        for (size_t i = start; i < pk->sp; i++)
            if ((s = dict_set(pk, o, pk->stack[i], NULL))) return s;
        pk->sp = start;
        return GRAFT_OK;

    /* the memo */
    case 'p': /* PUT */
    case 'g': /* GET */
        if ((s = take_line(pk, PK_MAX_LINE_BYTES, &line, &len)) ||
            (s = parse_decimal(pk, line, len, &iv)))
            return s;
        if (iv < 0) return fail(pk, "%s has a negative memo key", op_name(pk->op));
        return pk->op == 'p' ? memo_put(pk, (uint64_t)iv) : memo_get(pk, (uint64_t)iv);
    case 'q': /* BINPUT */
    case 'r': /* LONG_BINPUT */
        if ((s = take_len(pk, pk->op == 'q' ? 1 : 4, &n))) return s;
        return memo_put(pk, n);
    case 'h': /* BINGET */
    case 'j': /* LONG_BINGET */
        if ((s = take_len(pk, pk->op == 'h' ? 1 : 4, &n))) return s;
        return memo_get(pk, n);
    case 0x94: /* MEMOIZE */
        return memo_put(pk, pk->memo_len);

    /* globals, calls, state */
    case 'c': /* GLOBAL: "module\nname\n" */
        if ((s = take_line(pk, PK_MAX_LINE_BYTES, &line, &len)) ||
            (s = take_line(pk, PK_MAX_LINE_BYTES, &line2, &len2)) ||
            (s = lookup_global(pk, line, len, line2, len2, &o)))
            return s;
        return push(pk, o);
    case 0x93: /* STACK_GLOBAL: module and name strings on the stack */
        if ((s = pop(pk, &a)) || (s = pop(pk, &c))) return s;
        if (a->kind != GRAFT_PICKLE_STR || c->kind != GRAFT_PICKLE_STR)
            return fail(pk, "STACK_GLOBAL needs two str, not %s and %s",
                        graft_pickle_kind_name(c->kind), graft_pickle_kind_name(a->kind));
        if ((s = lookup_global(pk, c->u.s.data, c->u.s.len, a->u.s.data, a->u.s.len, &o)))
            return s;
        return push(pk, o);
    case 'R': /* REDUCE: callable, args */
        if ((s = pop(pk, &a)) || (s = pop(pk, &c))) return s;
        return make_call(pk, c, a, NULL, false);
    case 0x81: /* NEWOBJ: cls, args */
        if ((s = pop(pk, &a)) || (s = pop(pk, &c))) return s;
        return make_call(pk, c, a, NULL, true);
    case 0x92: { /* NEWOBJ_EX: cls, args, kwargs */
        graft_pickle_obj *kw = NULL;
        if ((s = pop(pk, &kw)) || (s = pop(pk, &a)) || (s = pop(pk, &c))) return s;
        return make_call(pk, c, a, kw, true);
    }
    case 'i': /* INST: "module\nname\n", arguments above the MARK */
        if ((s = take_line(pk, PK_MAX_LINE_BYTES, &line, &len)) ||
            (s = take_line(pk, PK_MAX_LINE_BYTES, &line2, &len2)) ||
            (s = lookup_global(pk, line, len, line2, len2, &c)) || (s = pop_mark(pk, &start)) ||
            (s = collect(pk, GRAFT_PICKLE_TUPLE, pk->stack + start, pk->sp - start, &a)))
            return s;
        pk->sp = start;
        return make_call(pk, c, a, NULL, false);
    case 'o': /* OBJ: class and arguments above the MARK */
        if ((s = pop_mark(pk, &start))) return s;
        if (pk->sp == start) return fail(pk, "OBJ has no class above its MARK");
        c = pk->stack[start];
        if ((s = collect(pk, GRAFT_PICKLE_TUPLE, pk->stack + start + 1, pk->sp - start - 1, &a)))
            return s;
        pk->sp = start;
        return make_call(pk, c, a, NULL, false);
    case 'b': /* BUILD: state is kept for the caller to interpret */
        if ((s = pop(pk, &a)) || (s = top(pk, &o))) return s;
        o->state = a;
        return GRAFT_OK;
    case 'Q': /* BINPERSID */
        if ((s = pop(pk, &a))) return s;
        return push_persid(pk, a);
    case 'P': /* PERSID: an ASCII line */
        if ((s = take_line(pk, PK_MAX_LINE_BYTES, &line, &len))) return s;
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)line[i] >= 0x80) return fail(pk, "PERSID argument is not ASCII");
        if ((s = new_bytes(pk, GRAFT_PICKLE_STR, line, len, &a))) return s;
        return push_persid(pk, a);

    case 0x82: case 0x83: case 0x84: /* EXT1/2/4: the copyreg extension registry */
    case 0x97: case 0x98:            /* NEXT_BUFFER, READONLY_BUFFER: out-of-band data */
        return fail(pk, "opcode %s is not supported", op_name(pk->op));
    }
    return fail(pk, "unknown opcode 0x%02x", pk->op);
}

graft_status graft_pickle_load(graft_pickle *pk, const unsigned char *data, size_t size,
                               graft_pickle_obj **root, size_t *consumed) {
    if (!pk || !root || (!data && size))
        return graft_error(GRAFT_ERR_INVALID, "pickle load: NULL argument");
    *root = NULL;
    pk->data = data;
    pk->size = size;
    pk->pos = pk->frame_end = pk->op_pos = 0;
    pk->op = 0;
    pk->sp = pk->nmarks = pk->memo_len = 0;
    if (pk->memo) memset(pk->memo, 0, pk->memo_cap * sizeof *pk->memo);
    /* A stack that exists, so "stack + start" is defined even before the first push. */
    graft_status s = grow_array(pk, (void **)&pk->stack, &pk->stack_cap, 1, sizeof *pk->stack,
                                false);
    if (s) return s;
    bool stop = false;
    while (!stop && !s) s = step(pk, root, &stop);
    pk->data = NULL;
    if (s) {
        *root = NULL;
        return s;
    }
    if (consumed) *consumed = pk->pos;
    return GRAFT_OK;
}

/* ---- repr --------------------------------------------------------------------------- */

static void repr_quoted(const graft_pickle_obj *o, graft_strbuf *sb) {
    bool text = o->kind == GRAFT_PICKLE_STR;
    graft_strbuf_append(sb, text ? "'" : "b'");
    for (size_t i = 0; i < o->u.s.len; i++) {
        unsigned char c = (unsigned char)o->u.s.data[i];
        char buf[8];
        if (c == '\'' || c == '\\') snprintf(buf, sizeof buf, "\\%c", c);
        else if (c == '\n') snprintf(buf, sizeof buf, "\\n");
        else if (c == '\t') snprintf(buf, sizeof buf, "\\t");
        else if (c == '\r') snprintf(buf, sizeof buf, "\\r");
        else if (c < 0x20 || c == 0x7f || (!text && c >= 0x80))
            snprintf(buf, sizeof buf, "\\x%02x", c);
        else buf[0] = (char)c, buf[1] = 0;
        graft_strbuf_append(sb, buf);
    }
    graft_strbuf_append(sb, "'");
}

static void repr_bigint(const graft_pickle_obj *o, graft_strbuf *sb) {
    size_t n = o->u.s.len;
    const unsigned char *b = (const unsigned char *)o->u.s.data;
    bool neg = b[n - 1] & 0x80;
    unsigned char *mag = malloc(n);
    if (!mag) {
        graft_strbuf_append(sb, "<int>");
        return;
    }
    unsigned carry = 1;
    for (size_t i = 0; i < n; i++) { /* the magnitude: negate two's complement if negative */
        if (neg) {
            unsigned v = (unsigned)(unsigned char)~b[i] + carry;
            mag[i] = (unsigned char)v;
            carry = v >> 8;
        } else {
            mag[i] = b[i];
        }
    }
    graft_strbuf_append(sb, neg ? "-0x" : "0x");
    size_t hi = n;
    while (hi > 1 && mag[hi - 1] == 0) hi--;
    graft_strbuf_printf(sb, "%x", mag[hi - 1]);
    for (size_t i = hi - 1; i-- > 0;) graft_strbuf_printf(sb, "%02x", mag[i]);
    free(mag);
}

static void repr_items(graft_pickle_obj *const *items, size_t n, int depth, graft_strbuf *sb) {
    for (size_t i = 0; i < n; i++) {
        if (i) graft_strbuf_append(sb, ", ");
        graft_pickle_repr(items[i], depth - 1, sb);
    }
}

void graft_pickle_repr(const graft_pickle_obj *o, int max_depth, graft_strbuf *sb) {
    char buf[64];
    if (!o) {
        graft_strbuf_append(sb, "NULL");
        return;
    }
    if (max_depth <= 0) {
        graft_strbuf_append(sb, "...");
        return;
    }
    switch (o->kind) {
    case GRAFT_PICKLE_NONE: graft_strbuf_append(sb, "None"); break;
    case GRAFT_PICKLE_BOOL: graft_strbuf_append(sb, o->u.b ? "True" : "False"); break;
    case GRAFT_PICKLE_INT: graft_strbuf_printf(sb, "%lld", (long long)o->u.i); break;
    case GRAFT_PICKLE_BIGINT: repr_bigint(o, sb); break;
    case GRAFT_PICKLE_FLOAT:
        graft_format_pyfloat(o->u.f, buf, sizeof buf);
        graft_strbuf_append(sb, buf);
        break;
    case GRAFT_PICKLE_STR:
    case GRAFT_PICKLE_BYTES: repr_quoted(o, sb); break;
    case GRAFT_PICKLE_BYTEARRAY: {
        graft_pickle_obj tmp = *o;
        tmp.kind = GRAFT_PICKLE_BYTES;
        graft_strbuf_append(sb, "bytearray(");
        repr_quoted(&tmp, sb);
        graft_strbuf_append(sb, ")");
        break;
    }
    case GRAFT_PICKLE_TUPLE:
        graft_strbuf_append(sb, "(");
        repr_items(o->u.seq.items, o->u.seq.len, max_depth, sb);
        graft_strbuf_append(sb, o->u.seq.len == 1 ? ",)" : ")");
        break;
    case GRAFT_PICKLE_LIST:
        graft_strbuf_append(sb, "[");
        repr_items(o->u.seq.items, o->u.seq.len, max_depth, sb);
        graft_strbuf_append(sb, "]");
        break;
    case GRAFT_PICKLE_DICT:
        graft_strbuf_append(sb, "{");
        for (size_t i = 0; i < o->u.dict.len; i++) {
            if (i) graft_strbuf_append(sb, ", ");
            graft_pickle_repr(o->u.dict.keys[i], max_depth - 1, sb);
            graft_strbuf_append(sb, ": ");
            graft_pickle_repr(o->u.dict.values[i], max_depth - 1, sb);
        }
        graft_strbuf_append(sb, "}");
        break;
    case GRAFT_PICKLE_SET:
    case GRAFT_PICKLE_FROZENSET: {
        bool frozen = o->kind == GRAFT_PICKLE_FROZENSET;
        if (o->u.dict.len == 0) {
            graft_strbuf_append(sb, frozen ? "frozenset()" : "set()");
            break;
        }
        graft_strbuf_append(sb, frozen ? "frozenset({" : "{");
        repr_items(o->u.dict.keys, o->u.dict.len, max_depth, sb);
        graft_strbuf_append(sb, frozen ? "})" : "}");
        break;
    }
    case GRAFT_PICKLE_GLOBAL: graft_strbuf_append(sb, allowed[o->u.global.id].full); break;
    case GRAFT_PICKLE_CALL:
        graft_strbuf_append(sb, allowed[o->u.call.callable->u.global.id].full);
        graft_strbuf_append(sb, "(");
        repr_items(o->u.call.args->u.seq.items, o->u.call.args->u.seq.len, max_depth, sb);
        if (o->u.call.kwargs && o->u.call.kwargs->u.dict.len) {
            if (o->u.call.args->u.seq.len) graft_strbuf_append(sb, ", ");
            graft_strbuf_append(sb, "**");
            graft_pickle_repr(o->u.call.kwargs, max_depth - 1, sb);
        }
        graft_strbuf_append(sb, ")");
        break;
    case GRAFT_PICKLE_PERSID:
        graft_strbuf_append(sb, "persid(");
        graft_pickle_repr(o->u.persid.pid, max_depth - 1, sb);
        graft_strbuf_append(sb, ")");
        break;
    }
    if (o->state) {
        graft_strbuf_append(sb, ".__setstate__(");
        graft_pickle_repr(o->state, max_depth - 1, sb);
        graft_strbuf_append(sb, ")");
    }
}
