/* pickle.h — a pickle virtual machine that builds a tree of plain objects and never
 * runs code.
 *
 * Python's pickle format is a small stack-machine program; unpickling normally imports
 * and calls whatever the program names, which makes an untrusted pickle as dangerous as
 * an untrusted script.  This VM runs the same opcodes (protocols 0 to 5, as documented
 * in CPython's Lib/pickletools.py) but only ever builds data:
 *
 *     None, bool, int (int64, or a "bigint" byte string when wider), float, str, bytes,
 *     bytearray, tuple, list, dict (insertion-ordered), set, frozenset,
 *     a global (one of a fixed allow-list, by id), a call of an allowed global
 *     (REDUCE / NEWOBJ / NEWOBJ_EX / INST / OBJ record callable + arguments; nothing
 *     is called), a persistent id (the pid object, for the caller to resolve).
 *
 * Naming any global outside the allow-list is an error that names it
 * ("global 'posix.system' is not allowed at byte 2").  One call is interpreted by
 * the VM itself: collections.OrderedDict() becomes an ordinary dict, because pickles
 * fill it with SETITEMS like a dict.  BUILD stores its state argument on the object
 * (obj->state) for the caller to interpret.
 *
 * Hostile input: every length is checked against the bytes that remain before any
 * allocation; the stack, the MARK nesting, the memo, the object count and the bytes
 * allocated are capped (graft_pickle_limits); the only recursion (hashing tuple keys,
 * repr) is depth-capped.  Every failure is GRAFT_ERR_FORMAT (GRAFT_ERR_NOMEM when
 * malloc fails) with one line naming the problem and the byte offset of the opcode.
 *
 *     graft_pickle *pk;
 *     graft_pickle_create(NULL, &pk);                  // default limits
 *     graft_pickle_obj *root;
 *     size_t used;
 *     graft_status s = graft_pickle_load(pk, bytes, n, &root, &used);
 *     // ... read root (owned by pk) ...
 *     graft_pickle_free(pk);                           // frees every object
 *
 * Objects may be shared (the memo, DUP) and lists/dicts may even contain themselves;
 * code walking a tree must bound its depth.  Strings from STRING / BINSTRING /
 * SHORT_BINSTRING (Python 2's str) are kept as bytes, as Python 3 does with
 * encoding='bytes', because Python 2 pickles (CIFAR's) use them for raw array data. */
#ifndef GRAFT_IO_PICKLE_H
#define GRAFT_IO_PICKLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/strbuf.h"
#include "graft/graft.h"

typedef enum graft_pickle_kind {
    GRAFT_PICKLE_NONE,
    GRAFT_PICKLE_BOOL,
    GRAFT_PICKLE_INT,       /* fits in int64 */
    GRAFT_PICKLE_BIGINT,    /* does not: u.s holds little-endian two's complement bytes */
    GRAFT_PICKLE_FLOAT,
    GRAFT_PICKLE_STR,       /* UTF-8 (surrogates allowed, as pickle does), NUL-terminated */
    GRAFT_PICKLE_BYTES,
    GRAFT_PICKLE_BYTEARRAY,
    GRAFT_PICKLE_TUPLE,
    GRAFT_PICKLE_LIST,
    GRAFT_PICKLE_DICT,
    GRAFT_PICKLE_SET,
    GRAFT_PICKLE_FROZENSET,
    GRAFT_PICKLE_GLOBAL,
    GRAFT_PICKLE_CALL,
    GRAFT_PICKLE_PERSID
} graft_pickle_kind;

/* The allow-list: the only globals a pickle may name. */
typedef enum graft_pickle_global {
    GRAFT_PG_ORDERED_DICT,       /* collections.OrderedDict */
    GRAFT_PG_REBUILD_TENSOR_V2,  /* torch._utils._rebuild_tensor_v2 */
    GRAFT_PG_REBUILD_PARAMETER,  /* torch._utils._rebuild_parameter */
    GRAFT_PG_FLOAT_STORAGE,      /* torch.FloatStorage ... torch.BoolStorage */
    GRAFT_PG_DOUBLE_STORAGE,
    GRAFT_PG_HALF_STORAGE,
    GRAFT_PG_BFLOAT16_STORAGE,
    GRAFT_PG_LONG_STORAGE,
    GRAFT_PG_INT_STORAGE,
    GRAFT_PG_SHORT_STORAGE,
    GRAFT_PG_CHAR_STORAGE,
    GRAFT_PG_BYTE_STORAGE,
    GRAFT_PG_BOOL_STORAGE,
    GRAFT_PG_NP_RECONSTRUCT,     /* numpy.core.multiarray._reconstruct */
    GRAFT_PG_NP_NDARRAY,         /* numpy.ndarray */
    GRAFT_PG_NP_DTYPE,           /* numpy.dtype */
    GRAFT_PG_COUNT
} graft_pickle_global;

typedef struct graft_pickle_obj graft_pickle_obj;

struct graft_pickle_obj {
    graft_pickle_kind kind;
    union {
        bool b;
        int64_t i;
        double f;
        /* STR, BYTES, BYTEARRAY, BIGINT; data is NUL-terminated (not counted in len) */
        struct { char *data; size_t len; } s;
        /* TUPLE, LIST */
        struct { graft_pickle_obj **items; size_t len, cap; } seq;
        /* DICT; SET and FROZENSET use keys only (values NULL).  Entries keep insertion
         * order; hashes/index are the lookup table. */
        struct {
            graft_pickle_obj **keys, **values;
            uint64_t *hashes;
            size_t len, cap;
            size_t *index; /* open addressing: entry + 1, 0 = empty */
            size_t index_cap;
        } dict;
        struct { graft_pickle_global id; const char *module, *name; } global;
        /* callable is a GLOBAL; args a TUPLE; kwargs a DICT (NEWOBJ_EX) or NULL */
        struct { graft_pickle_obj *callable, *args, *kwargs; bool newobj; } call;
        struct { graft_pickle_obj *pid; } persid;
    } u;
    graft_pickle_obj *state; /* the argument of BUILD, or NULL */
};

typedef struct graft_pickle_limits {
    size_t max_stack;   /* objects on the stack, all MARK levels together */
    size_t max_marks;   /* open MARKs */
    size_t max_memo;    /* memo slots (highest index + 1) */
    size_t max_objects; /* objects created per context */
    size_t max_bytes;   /* bytes allocated for objects per context */
    size_t max_bigint_bytes; /* longest LONG1/LONG4 that does not fit int64 */
    int max_depth;      /* nesting followed when hashing keys or printing */
} graft_pickle_limits;

/* Defaults sized for checkpoints and dataset pickles: a 1 GiB object budget (a CIFAR
 * batch holds 30 MB of bytes), 16M objects, a 1M-entry stack and memo, depth 200. */
graft_pickle_limits graft_pickle_default_limits(void);

typedef struct graft_pickle graft_pickle;

/* A context that owns every object its loads create.  limits NULL: the defaults.
 * Free with graft_pickle_free. */
graft_status graft_pickle_create(const graft_pickle_limits *limits, graft_pickle **out);
void graft_pickle_free(graft_pickle *pk);

/* Runs one pickle from data[0] to its STOP.  On success *root is the object STOP
 * returned and *consumed the bytes used (STOP included), so several pickles written
 * back to back can be read in turn (torch's legacy format).  Each load starts with an
 * empty memo; objects of earlier loads stay valid.  consumed may be NULL. */
graft_status graft_pickle_load(graft_pickle *pk, const unsigned char *data, size_t size,
                               graft_pickle_obj **root, size_t *consumed);

/* Every persistent-id object created so far, in creation order. */
size_t graft_pickle_persid_count(const graft_pickle *pk);
graft_pickle_obj *graft_pickle_persid(const graft_pickle *pk, size_t i);

/* "posix.system" style names of the allow-list. */
const char *graft_pickle_global_name(graft_pickle_global id);
/* Python's name for a kind: "int", "str", "dict", ...; "global", "call" and
 * "persistent id" for the three kinds Python has no type for. */
const char *graft_pickle_kind_name(graft_pickle_kind kind);

/* The value stored under a str key, or NULL (not a dict, or no such key). */
graft_pickle_obj *graft_pickle_dict_get(const graft_pickle_obj *dict, const char *key);
/* True when o is a str equal to s. */
bool graft_pickle_is_str(const graft_pickle_obj *o, const char *s);
/* True when o is a call of the given global. */
bool graft_pickle_is_call(const graft_pickle_obj *o, graft_pickle_global id);

/* Appends a Python-like repr of o ("{'a': (1, 2.5, None)}"; calls print as
 * "torch.FloatStorage(...)", persistent ids as "persid(...)"), cut to "..." below
 * max_depth levels. */
void graft_pickle_repr(const graft_pickle_obj *o, int max_depth, graft_strbuf *sb);

#endif
