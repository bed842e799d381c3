/* criterion.c — loss functions on public tensors (nn.CrossEntropyLoss). */
#include "core/error.h"
#include "core/tensor.h"
#include "ops/ops.h"

graft_status graft_cross_entropy(const graft_tensor *logits, const graft_tensor *labels, double *loss,
                                 graft_tensor *grad_logits) {
    char ls[96], ys[96];
    graft_shape_str(logits->ndim, logits->shape, ls, sizeof ls);
    graft_shape_str(labels->ndim, labels->shape, ys, sizeof ys);
    if (logits->dtype != GRAFT_F32 || logits->ndim != 2 || logits->shape[1] < 1)
        return graft_error(GRAFT_ERR_SHAPE, "cross_entropy: logits must be float32 [N, K], got %s", ls);
    if (labels->dtype != GRAFT_I64 || labels->ndim != 1 || labels->shape[0] != logits->shape[0])
        return graft_error(GRAFT_ERR_SHAPE, "cross_entropy: labels must be int64 [%lld] for logits %s, got %s",
                           (long long)logits->shape[0], ls, ys);
    if (grad_logits && (grad_logits->dtype != GRAFT_F32 || !graft_tensor_same_shape(grad_logits, logits)))
        return graft_error(GRAFT_ERR_SHAPE, "cross_entropy: grad_logits must be float32 %s", ls);
    int64_t n = logits->shape[0], k = logits->shape[1];
    const int64_t *y = labels->data;
    for (int64_t i = 0; i < n; i++)
        if (y[i] < 0 || y[i] >= k)
            return graft_error(GRAFT_ERR_INVALID, "cross_entropy: label %lld of sample %lld is outside [0, %lld)",
                               (long long)y[i], (long long)i, (long long)k);
    if (n == 0) return graft_error(GRAFT_ERR_SHAPE, "cross_entropy: empty batch");
    *loss = graft_cross_entropy_forward_backward(n, k, logits->data, y, grad_logits ? grad_logits->data : NULL);
    return GRAFT_OK;
}
