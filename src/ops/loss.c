/* loss.c — cross-entropy over logits (torch.nn.CrossEntropyLoss, reduction 'mean').
 *
 * log softmax is formed stably as l - (max + log(sum(exp(l - max)))), so logits in the
 * thousands neither overflow nor lose the small terms.  The fast path keeps each row's
 * sum and the batch mean in double; rows are few (a batch) and classes at most ~1000,
 * so it stays on one thread.  Labels are trusted: the caller checks 0 <= label < k. */
#include <math.h>

#include "ops/ops.h"

// logits and dlogits are (n, k); labels is (n).  Returns the mean loss.
double graft_cross_entropy_forward_backward(int64_t n, int64_t k, const float *logits,
                                            const int64_t *labels, float *dlogits) {
    return graft_cross_entropy_smooth_forward_backward(n, k, logits, labels, 0.0, dlogits);
}

/* With label smoothing eps the target is (1 - eps) one-hot + eps / k, as PyTorch's
 * CrossEntropyLoss(label_smoothing=eps):
 *   loss_i = (1 - eps) (log_z - l_y) + eps (log_z - mean_j l_j)
 *   dloss_i/dl_j = softmax_j - (1 - eps) [j = y] - eps / k
 * With eps = 0 both reduce exactly to the plain formulas. */
double graft_cross_entropy_smooth_forward_backward(int64_t n, int64_t k, const float *logits,
                                                   const int64_t *labels, double eps,
                                                   float *dlogits) {
    if (n <= 0) return 0.0;
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float *row = logits + i * k;
        float max = row[0];
        for (int64_t j = 1; j < k; j++)
            if (row[j] > max) max = row[j];
        double sum = 0.0;
        for (int64_t j = 0; j < k; j++) sum += exp((double)row[j] - (double)max);
        double log_z = (double)max + log(sum); /* log(sum(exp(row))) */
        double nll = log_z - (double)row[labels[i]];
        if (eps != 0.0) {
            double mean = 0.0;
            for (int64_t j = 0; j < k; j++) mean += (double)row[j];
            total += (1.0 - eps) * nll + eps * (log_z - mean / (double)k);
        } else {
            total += nll;
        }
        if (!dlogits) continue;
        float *drow = dlogits + i * k;
        for (int64_t j = 0; j < k; j++) {
            double p = exp((double)row[j] - log_z);
            double target = (j == labels[i] ? 1.0 - eps : 0.0) + eps / (double)k;
            drow[j] = (float)((p - target) / (double)n);
        }
    }
    return total / (double)n;
}

/* ---- reference: the same formula spelled out, all in double ---- */

double graft_ref_cross_entropy(int64_t n, int64_t k, const double *logits,
                               const int64_t *labels, double *dlogits) {
    return graft_ref_cross_entropy_smooth(n, k, logits, labels, 0.0, dlogits);
}

double graft_ref_cross_entropy_smooth(int64_t n, int64_t k, const double *logits,
                                      const int64_t *labels, double eps, double *dlogits) {
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double *row = logits + i * k;
        double max = row[0];
        for (int64_t j = 1; j < k; j++) max = fmax(max, row[j]);
        double sum = 0.0;
        for (int64_t j = 0; j < k; j++) sum += exp(row[j] - max);
        /* the target distribution times -log softmax, summed over the classes */
        for (int64_t j = 0; j < k; j++) {
            double target = (j == labels[i] ? 1.0 - eps : 0.0) + eps / (double)k;
            total -= target * (row[j] - max - log(sum));
        }
        if (!dlogits) continue;
        for (int64_t j = 0; j < k; j++) {
            double softmax = exp(row[j] - max) / sum;
            double target = (j == labels[i] ? 1.0 - eps : 0.0) + eps / (double)k;
            dlogits[i * k + j] = (softmax - target) / (double)n;
        }
    }
    return n > 0 ? total / (double)n : 0.0;
}
