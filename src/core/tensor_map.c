/* tensor_map.c — an ordered name -> tensor map that owns its tensors, plus ordered
 * string metadata (a state dict, or the contents of a safetensors file).
 *
 * Lookups are linear: maps hold a model's state dict (tens to a few hundred entries)
 * and are looked up once per entry when loading, which is cheap next to copying the
 * tensors themselves. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/tensor.h"

typedef struct tensor_entry {
    char *name;
    graft_tensor *tensor;
} tensor_entry;

typedef struct meta_entry {
    char *key;
    char *value;
} meta_entry;

struct graft_tensor_map {
    tensor_entry *entries;
    size_t size, cap;
    meta_entry *meta;
    size_t meta_size, meta_cap;
};

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* Makes an array of elem_bytes-sized items room for size + 1; returns the (possibly
 * moved) array, or NULL with the old one intact when memory runs out. */
static void *grow(void *items, size_t *cap, size_t size, size_t elem_bytes) {
    if (size < *cap) return items;
    size_t n = *cap ? *cap * 2 : 16;
    if (n > SIZE_MAX / elem_bytes) return NULL;
    void *p = realloc(items, n * elem_bytes);
    if (p) *cap = n;
    return p;
}

graft_status graft_tensor_map_create(graft_tensor_map **out) {
    *out = calloc(1, sizeof **out);
    if (!*out) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    return GRAFT_OK;
}

void graft_tensor_map_free(graft_tensor_map *m) {
    if (!m) return;
    for (size_t i = 0; i < m->size; i++) {
        free(m->entries[i].name);
        graft_tensor_free(m->entries[i].tensor);
    }
    for (size_t i = 0; i < m->meta_size; i++) {
        free(m->meta[i].key);
        free(m->meta[i].value);
    }
    free(m->entries);
    free(m->meta);
    free(m);
}

size_t graft_tensor_map_size(const graft_tensor_map *m) { return m ? m->size : 0; }

const char *graft_tensor_map_name(const graft_tensor_map *m, size_t i) {
    return m && i < m->size ? m->entries[i].name : NULL;
}

graft_tensor *graft_tensor_map_tensor(const graft_tensor_map *m, size_t i) {
    return m && i < m->size ? m->entries[i].tensor : NULL;
}

static tensor_entry *find_tensor(const graft_tensor_map *m, const char *name) {
    for (size_t i = 0; i < m->size; i++)
        if (strcmp(m->entries[i].name, name) == 0) return &m->entries[i];
    return NULL;
}

graft_tensor *graft_tensor_map_get(const graft_tensor_map *m, const char *name) {
    if (!m || !name) return NULL;
    tensor_entry *e = find_tensor(m, name);
    return e ? e->tensor : NULL;
}

graft_status graft_tensor_map_put(graft_tensor_map *m, const char *name, graft_tensor *t) {
    if (!m || !name || !t) {
        graft_tensor_free(t);
        return graft_error(GRAFT_ERR_INVALID, "tensor map put: NULL map, name or tensor");
    }
    tensor_entry *e = find_tensor(m, name);
    if (e) {
        /* Replacing keeps the entry's position, as assigning to a dict key does. */
        if (e->tensor != t) graft_tensor_free(e->tensor);
        e->tensor = t;
        return GRAFT_OK;
    }
    char *copy = dup_str(name);
    tensor_entry *entries = copy ? grow(m->entries, &m->cap, m->size, sizeof *entries) : NULL;
    if (!entries) {
        free(copy);
        graft_tensor_free(t);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory adding tensor '%s'", name);
    }
    m->entries = entries;
    m->entries[m->size].name = copy;
    m->entries[m->size].tensor = t;
    m->size++;
    return GRAFT_OK;
}

graft_status graft_tensor_map_put_copy(graft_tensor_map *m, const char *name,
                                       const graft_tensor *t) {
    if (!t) return graft_error(GRAFT_ERR_INVALID, "tensor map put: NULL tensor");
    graft_tensor *copy;
    graft_status s = graft_tensor_clone(t, &copy);
    if (s) return s;
    return graft_tensor_map_put(m, name, copy);
}

graft_status graft_tensor_map_set_meta(graft_tensor_map *m, const char *key, const char *value) {
    if (!m || !key || !value)
        return graft_error(GRAFT_ERR_INVALID, "tensor map metadata: NULL map, key or value");
    char *v = dup_str(value);
    if (!v) return graft_error(GRAFT_ERR_NOMEM, "out of memory setting metadata '%s'", key);
    for (size_t i = 0; i < m->meta_size; i++) {
        if (strcmp(m->meta[i].key, key) == 0) {
            free(m->meta[i].value);
            m->meta[i].value = v;
            return GRAFT_OK;
        }
    }
    char *k = dup_str(key);
    meta_entry *meta = k ? grow(m->meta, &m->meta_cap, m->meta_size, sizeof *meta) : NULL;
    if (!meta) {
        free(k);
        free(v);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory setting metadata '%s'", key);
    }
    m->meta = meta;
    m->meta[m->meta_size].key = k;
    m->meta[m->meta_size].value = v;
    m->meta_size++;
    return GRAFT_OK;
}

const char *graft_tensor_map_get_meta(const graft_tensor_map *m, const char *key) {
    if (!m || !key) return NULL;
    for (size_t i = 0; i < m->meta_size; i++)
        if (strcmp(m->meta[i].key, key) == 0) return m->meta[i].value;
    return NULL;
}

size_t graft_tensor_map_meta_size(const graft_tensor_map *m) { return m ? m->meta_size : 0; }

const char *graft_tensor_map_meta_key(const graft_tensor_map *m, size_t i) {
    return m && i < m->meta_size ? m->meta[i].key : NULL;
}
