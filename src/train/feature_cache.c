/* feature_cache.c — storing a frozen trunk's outputs (see feature_cache.h). */
#include "train/feature_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/error.h"
#include "nn/model.h"

static size_t memory_limit(void) {
    const char *v = getenv("GRAFT_FEATURE_CACHE_MEMORY");
    if (v && *v) {
        char *end;
        unsigned long long x = strtoull(v, &end, 10);
        if (!*end) return (size_t)x;
    }
    return GRAFT_FEATURE_CACHE_MEMORY_BYTES;
}

graft_status graft_feature_cache_probe(graft_feature_cache *c, graft_model *m, const int chw[3]) {
    int64_t shape[4] = {1, chw[0], chw[1], chw[2]};
    graft_tensor *x;
    graft_status s = graft_tensor_create(GRAFT_F32, 4, shape, &x);
    if (s) return s;
    graft_tensor *y;
    s = graft_model_forward_steps(m, c->steps, c->nsteps, 0, c->trunk_end, x, &y);
    if (!s) {
        c->ndim = y->ndim - 1;
        c->feat = 1;
        for (int i = 1; i < y->ndim; i++) c->feat *= (c->dims[i - 1] = y->shape[i]);
    }
    graft_tensor_free(x);
    return s;
}

graft_status graft_feature_cache_reserve(graft_feature_cache *c, int64_t train_rows, int64_t test_rows,
                                         const char *dir) {
    int64_t rows = train_rows * (c->flip ? 2 : 1) + test_rows;
    size_t bytes = (size_t)rows * ((size_t)c->feat * sizeof(float) + sizeof(int64_t));
    if (bytes == 0) bytes = 1;
    if (bytes <= memory_limit()) {
        c->block = malloc(bytes);
        if (!c->block)
            return graft_error(GRAFT_ERR_NOMEM, "out of memory for a feature cache of %zu bytes", bytes);
    } else {
        size_t n = strlen(dir) + 32;
        c->file = malloc(n);
        if (!c->file) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
        snprintf(c->file, n, "%s/feature-cache.bin", dir);
        int fd = open(c->file, O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) return graft_error(GRAFT_ERR_IO, "%s: %s", c->file, strerror(errno));
        if (ftruncate(fd, (off_t)bytes) != 0) {
            int e = errno;
            close(fd);
            unlink(c->file);
            return graft_error(GRAFT_ERR_IO, "%s: %s", c->file, strerror(e));
        }
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (p == MAP_FAILED) {
            unlink(c->file);
            return graft_error(GRAFT_ERR_IO, "%s: %s", c->file, strerror(errno));
        }
        c->block = p;
        c->mapped = true;
    }
    c->block_bytes = bytes;
    /* layout: all float rows, then all labels */
    float *f = c->block;
    int64_t *labels = (int64_t *)(void *)((char *)c->block + (size_t)rows * (size_t)c->feat * sizeof(float));
    graft_feature_set *sets[3] = {&c->train, c->flip ? &c->train_flipped : NULL, &c->test};
    int64_t counts[3] = {train_rows, c->flip ? train_rows : 0, test_rows};
    for (int i = 0; i < 3; i++) {
        if (!sets[i]) continue;
        sets[i]->rows = counts[i];
        sets[i]->data = f;
        sets[i]->labels = labels;
        f += (size_t)counts[i] * (size_t)c->feat;
        labels += counts[i];
    }
    return GRAFT_OK;
}

void graft_feature_cache_free(graft_feature_cache *c) {
    if (c->mapped) {
        munmap(c->block, c->block_bytes);
        if (c->file) unlink(c->file);
    } else {
        free(c->block);
    }
    free(c->file);
    memset(c, 0, sizeof *c);
}

static void release_outputs(graft_module *m) {
    graft_tensor_release(&m->out);
    graft_tensor_release(&m->dx);
    for (int i = 0; i < m->nchildren; i++) release_outputs(m->children[i]);
}

void graft_feature_cache_release_trunk(graft_feature_cache *c) {
    for (int i = 0; i < c->trunk_end && c->steps; i++) release_outputs(c->steps[i]);
}

graft_status graft_feature_cache_fill(graft_feature_cache *c, graft_feature_set *set, graft_model *m,
                                      graft_loader *loader, const char *what, graft_cache_progress_fn progress,
                                      void *user) {
    graft_status s = graft_loader_start_epoch(loader, 0);
    int64_t row = 0, total = graft_loader_num_samples(loader);
    while (!s) {
        const graft_tensor *x, *y;
        graft_tensor *out;
        int done;
        if ((s = graft_loader_next(loader, &x, &y, &done)) || done) break;
        /* the trunk never writes its input: it starts with a convolution */
        if ((s = graft_model_forward_steps(m, c->steps, c->nsteps, 0, c->trunk_end, (graft_tensor *)x, &out))) break;
        int64_t n = x->shape[0];
        if (graft_tensor_numel(out) != n * c->feat || row + n > set->rows) {
            s = graft_error(GRAFT_ERR_SHAPE, "feature cache: the trunk's output changed shape");
            break;
        }
        memcpy(set->data + (size_t)row * (size_t)c->feat, out->data, (size_t)(n * c->feat) * sizeof(float));
        memcpy(set->labels + row, y->data, (size_t)n * sizeof(int64_t));
        row += n;
        if (progress) progress(user, what, row, total);
    }
    if (!s && row != set->rows) s = graft_error(GRAFT_ERR_SHAPE, "feature cache: %lld of %lld rows filled",
                                                (long long)row, (long long)set->rows);
    return s;
}
