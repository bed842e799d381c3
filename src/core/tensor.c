/* tensor.c — tensor allocation, shapes and views. */
#include "core/tensor.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

static atomic_size_t bytes_in_use;

size_t graft_tensor_bytes_in_use(void) { return atomic_load(&bytes_in_use); }

size_t graft_dtype_size(graft_dtype dtype) { return dtype == GRAFT_I64 ? 8 : 4; }

int64_t graft_shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}

void graft_tensor_init(graft_tensor *t, graft_dtype dtype) {
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->owns = true;
}

void graft_tensor_release(graft_tensor *t) {
    if (t->owns && t->data) {
        free(t->data);
        atomic_fetch_sub(&bytes_in_use, t->capacity_bytes);
    }
    t->data = NULL;
    t->capacity_bytes = 0;
    t->owns = true;
}

graft_status graft_tensor_resize(graft_tensor *t, int ndim, const int64_t *shape) {
    if (ndim < 0 || ndim > GRAFT_MAX_DIMS)
        return graft_error(GRAFT_ERR_SHAPE, "tensor rank %d is outside 0..%d", ndim, GRAFT_MAX_DIMS);
    int64_t numel = graft_shape_numel(ndim, shape);
    size_t esize = graft_dtype_size(t->dtype);
    if (numel < 0 || (uint64_t)numel > SIZE_MAX / esize / 2)
        return graft_error(GRAFT_ERR_SHAPE, "tensor shape is negative or too large");
    size_t need = (size_t)numel * esize;
    if (!t->owns) {
        t->data = NULL;
        t->capacity_bytes = 0;
        t->owns = true;
    }
    if (need > t->capacity_bytes || (need == 0 && !t->data)) {
        /* calloc: large blocks come straight from the kernel as untouched zero pages, so a
         * model created without initialisation costs no memory until it is written. */
        void *p = calloc(need ? need : 1, 1);
        if (!p) return graft_error(GRAFT_ERR_NOMEM, "out of memory allocating %zu bytes", need);
        if (t->data) {
            free(t->data);
            atomic_fetch_sub(&bytes_in_use, t->capacity_bytes);
        }
        t->data = p;
        t->capacity_bytes = need ? need : 1;
        atomic_fetch_add(&bytes_in_use, t->capacity_bytes);
    }
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    return GRAFT_OK;
}

graft_status graft_tensor_view(graft_tensor *t, const graft_tensor *src, int ndim,
                               const int64_t *shape) {
    if (graft_shape_numel(ndim, shape) != graft_tensor_numel(src))
        return graft_error(GRAFT_ERR_SHAPE, "view changes the number of elements");
    graft_tensor_release(t);
    t->dtype = src->dtype;
    t->owns = false;
    t->data = src->data;
    t->capacity_bytes = 0;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    return GRAFT_OK;
}

graft_status graft_tensor_create(graft_dtype dtype, int ndim, const int64_t *shape,
                                 graft_tensor **out) {
    *out = NULL;
    if (dtype != GRAFT_F32 && dtype != GRAFT_I64)
        return graft_error(GRAFT_ERR_INVALID, "unknown dtype %d", (int)dtype);
    graft_tensor *t = malloc(sizeof *t);
    if (!t) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    graft_tensor_init(t, dtype);
    graft_status s = graft_tensor_resize(t, ndim, shape);
    if (s) {
        free(t);
        return s;
    }
    *out = t;
    return GRAFT_OK;
}

void graft_tensor_free(graft_tensor *t) {
    if (!t) return;
    graft_tensor_release(t);
    free(t);
}

graft_status graft_tensor_clone(const graft_tensor *src, graft_tensor **out) {
    graft_status s = graft_tensor_create(src->dtype, src->ndim, src->shape, out);
    if (s) return s;
    graft_tensor_copy_data(*out, src);
    return GRAFT_OK;
}

void graft_tensor_copy_data(graft_tensor *dst, const graft_tensor *src) {
    size_t n = graft_tensor_nbytes(src);
    if (n) memcpy(dst->data, src->data, n);
}

void graft_tensor_zero(graft_tensor *t) {
    size_t n = graft_tensor_nbytes(t);
    if (n) memset(t->data, 0, n);
}

bool graft_tensor_same_shape(const graft_tensor *a, const graft_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

void graft_shape_str(int ndim, const int64_t *shape, char *buf, size_t size) {
    size_t len = 0;
    if (size == 0) return;
    buf[0] = 0;
    len += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && len < size; i++)
        len += (size_t)snprintf(buf + len, size - len, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (len < size) snprintf(buf + len, size - len, "]");
}

graft_dtype graft_tensor_dtype(const graft_tensor *t) { return t->dtype; }
int graft_tensor_ndim(const graft_tensor *t) { return t->ndim; }
int64_t graft_tensor_dim(const graft_tensor *t, int i) {
    return (i >= 0 && i < t->ndim) ? t->shape[i] : -1;
}
int64_t graft_tensor_numel(const graft_tensor *t) { return graft_shape_numel(t->ndim, t->shape); }
size_t graft_tensor_nbytes(const graft_tensor *t) {
    return (size_t)graft_tensor_numel(t) * graft_dtype_size(t->dtype);
}
float *graft_tensor_f32(graft_tensor *t) { return t->dtype == GRAFT_F32 ? t->data : NULL; }
const float *graft_tensor_f32_const(const graft_tensor *t) {
    return t->dtype == GRAFT_F32 ? t->data : NULL;
}
int64_t *graft_tensor_i64(graft_tensor *t) { return t->dtype == GRAFT_I64 ? t->data : NULL; }
void graft_tensor_shape_str(const graft_tensor *t, char *buf, size_t size) {
    graft_shape_str(t->ndim, t->shape, buf, size);
}
