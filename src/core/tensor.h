/* tensor.h — the tensor struct, visible inside the library only.
 *
 * A tensor is a contiguous row-major block of float32 or int64 elements.  A tensor
 * either owns its data (freed with it) or is a view of another tensor's data.  Owned
 * tensors keep their capacity when resized smaller, so per-batch activation buffers
 * are allocated once and reused. */
#ifndef GRAFT_CORE_TENSOR_H
#define GRAFT_CORE_TENSOR_H

#include <stdbool.h>

#include "graft/graft.h"

struct graft_tensor {
    graft_dtype dtype;
    int ndim;
    int64_t shape[GRAFT_MAX_DIMS];
    void *data;
    size_t capacity_bytes; /* bytes allocated when owned; 0 for views */
    bool owns;
};

size_t graft_dtype_size(graft_dtype dtype);

/* Initialises an empty (0-d, no data) owned tensor in place. */
void graft_tensor_init(graft_tensor *t, graft_dtype dtype);
/* Releases the data of an in-place tensor (not the struct). */
void graft_tensor_release(graft_tensor *t);
/* Gives t the shape, growing its buffer if needed (new space is zeroed); a view is
 * turned into an owned tensor.  Existing contents are not preserved across growth. */
graft_status graft_tensor_resize(graft_tensor *t, int ndim, const int64_t *shape);
/* Makes t a non-owning view of src's data with a new shape of the same element count. */
graft_status graft_tensor_view(graft_tensor *t, const graft_tensor *src, int ndim,
                               const int64_t *shape);
/* Number of elements of a shape; -1 on overflow or a negative dimension. */
int64_t graft_shape_numel(int ndim, const int64_t *shape);
bool graft_tensor_same_shape(const graft_tensor *a, const graft_tensor *b);
/* "[64, 3, 32, 32]" */
void graft_shape_str(int ndim, const int64_t *shape, char *buf, size_t size);
/* A deep copy; free with graft_tensor_free. */
graft_status graft_tensor_clone(const graft_tensor *src, graft_tensor **out);
/* Copies data between tensors of equal dtype and shape. */
void graft_tensor_copy_data(graft_tensor *dst, const graft_tensor *src);
void graft_tensor_zero(graft_tensor *t);

#endif
