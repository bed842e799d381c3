/* subset.c — sources that keep part of another: chosen classes (relabelled) and k
 * samples per class, for little-data work (--classes, --per-class). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "data/source.h"

typedef struct subset {
    graft_source *base;  /* owned */
    int64_t *index;      /* [n] sample of base */
    int64_t *relabel;    /* [base num_classes] new label, -1 for a dropped class; NULL: same */
} subset;

static void subset_free(void *impl) {
    subset *s = impl;
    if (!s) return;
    graft_source_free(s->base);
    free(s->index);
    free(s->relabel);
    free(s);
}

static int64_t map_label(const subset *ss, int64_t y) { return ss->relabel ? ss->relabel[y] : y; }

static graft_status subset_get(const graft_source *s, int64_t i, graft_source_work *w,
                               graft_sample *out) {
    const subset *ss = s->impl;
    graft_status st = graft_source_get(ss->base, ss->index[i], w, out);
    if (!st) out->label = map_label(ss, out->label);
    return st;
}

static int64_t subset_label(const graft_source *s, int64_t i) {
    const subset *ss = s->impl;
    return map_label(ss, graft_source_label(ss->base, ss->index[i]));
}

static void subset_shape(const graft_source *s, int64_t i, int *c, int *h, int *w) {
    const subset *ss = s->impl;
    graft_source_shape(ss->base, ss->index[i], c, h, w);
}

static const char *subset_path(const graft_source *s, int64_t i) {
    const subset *ss = s->impl;
    return graft_source_path(ss->base, ss->index[i]);
}

static int64_t subset_skipped(const graft_source *s) {
    return graft_source_skipped(((const subset *)s->impl)->base);
}

static const graft_source_ops SUBSET_OPS = {subset_get, subset_label, subset_shape, subset_path,
                                            subset_skipped, subset_free};

static subset *subset_alloc(graft_source *base) {
    subset *ss = calloc(1, sizeof *ss);
    if (ss) {
        ss->base = base;
        ss->index = malloc((size_t)(base->n ? base->n : 1) * sizeof *ss->index);
    }
    if (!ss || !ss->index) {
        if (ss) free(ss->index);
        free(ss);
        return NULL;
    }
    return ss;
}

graft_status graft_source_select_classes(graft_source *base, const int64_t *classes, int64_t k,
                                         graft_source **out) {
    *out = NULL;
    int64_t nc = base->num_classes;
    graft_status s = GRAFT_OK;
    if (k < 1) s = graft_error(GRAFT_ERR_INVALID, "no classes selected");
    subset *ss = s ? NULL : subset_alloc(base);
    if (!s && ss) ss->relabel = malloc((size_t)nc * sizeof *ss->relabel);
    const char **names = s ? NULL : malloc((size_t)k * sizeof *names);
    if (!s && (!ss || !ss->relabel || !names)) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    if (!s)
        for (int64_t c = 0; c < nc; c++) ss->relabel[c] = -1;
    for (int64_t j = 0; !s && j < k; j++) {
        int64_t c = classes[j];
        if (c < 0 || c >= nc)
            s = graft_error(GRAFT_ERR_INVALID, "%s: class %lld is outside 0..%lld", base->name,
                            (long long)c, (long long)nc - 1);
        else if (ss->relabel[c] >= 0)
            s = graft_error(GRAFT_ERR_INVALID, "class %lld ('%s') is selected twice", (long long)c,
                            base->classes[c]);
        else {
            ss->relabel[c] = j;
            names[j] = base->classes[c];
        }
    }
    int64_t n = 0;
    for (int64_t i = 0; !s && i < base->n; i++)
        if (ss->relabel[graft_source_label(base, i)] >= 0) ss->index[n++] = i;
    if (s) {
        free(names);
        if (ss) subset_free(ss); /* frees base too */
        else graft_source_free(base);
        return s;
    }
    char name[512];
    snprintf(name, sizeof name, "%s, %lld of %lld classes", base->name, (long long)k,
             (long long)nc);
    s = graft_source_new(&SUBSET_OPS, ss, base->kind, n, k, names, name, out);
    free(names);
    return s;
}

/* Partial Fisher-Yates: the first k of items become a uniform sample without
 * replacement. */
static void choose(int64_t *items, int64_t n, int64_t k, graft_rng *r) {
    for (int64_t i = 0; i < k; i++) {
        int64_t j = i + (int64_t)(graft_rng_u64(r) % (uint64_t)(n - i));
        int64_t t = items[i];
        items[i] = items[j];
        items[j] = t;
    }
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The generator of class c under seed: independent streams per class, so adding a class
 * does not change what the others draw. */
static void seed_class(graft_rng *r, uint64_t seed, int64_t c) {
    graft_rng_seed(r, seed ^ (0x9e3779b97f4a7c15ull * ((uint64_t)c + 1)));
}

graft_status graft_source_per_class(graft_source *base, int64_t k, uint64_t seed,
                                    graft_source **out) {
    *out = NULL;
    int64_t nc = base->num_classes;
    graft_status s = GRAFT_OK;
    if (k < 1) s = graft_error(GRAFT_ERR_INVALID, "--per-class must be at least 1");
    int64_t *counts = s ? NULL : calloc((size_t)nc, sizeof *counts);
    int64_t *start = s ? NULL : calloc((size_t)nc + 1, sizeof *start);
    int64_t *by_class = s ? NULL : malloc((size_t)(base->n ? base->n : 1) * sizeof *by_class);
    subset *ss = s ? NULL : subset_alloc(base);
    if (!s && (!counts || !start || !by_class || !ss)) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    if (!s) {
        graft_source_class_counts(base, counts);
        for (int64_t c = 0; c < nc && !s; c++)
            if (counts[c] < k)
                s = graft_error(GRAFT_ERR_INVALID, "%s: class %lld ('%s') has %lld samples, fewer "
                                                   "than --per-class %lld", base->name,
                                (long long)c, base->classes[c], (long long)counts[c],
                                (long long)k);
    }
    int64_t n = 0;
    if (!s) {
        /* group sample indices by class (in order), then draw k from each group */
        for (int64_t c = 0; c < nc; c++) start[c + 1] = start[c] + counts[c];
        memset(counts, 0, (size_t)nc * sizeof *counts);
        for (int64_t i = 0; i < base->n; i++) {
            int64_t y = graft_source_label(base, i);
            by_class[start[y] + counts[y]++] = i;
        }
        for (int64_t c = 0; c < nc; c++) {
            graft_rng r;
            seed_class(&r, seed, c);
            choose(by_class + start[c], counts[c], k, &r);
            memcpy(ss->index + n, by_class + start[c], (size_t)k * sizeof *ss->index);
            n += k;
        }
        qsort(ss->index, (size_t)n, sizeof *ss->index, cmp_i64);
    }
    free(counts);
    free(start);
    free(by_class);
    if (s) {
        if (ss) subset_free(ss);
        else graft_source_free(base);
        return s;
    }
    char name[512];
    snprintf(name, sizeof name, "%s, %lld per class", base->name, (long long)k);
    return graft_source_new(&SUBSET_OPS, ss, base->kind, n, nc, (const char *const *)base->classes,
                            name, out);
}
