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
        total += log_z - (double)row[labels[i]];
        if (!dlogits) continue;
        float *drow = dlogits + i * k;
        for (int64_t j = 0; j < k; j++) {
            double p = exp((double)row[j] - log_z);
            drow[j] = (float)((p - (j == labels[i] ? 1.0 : 0.0)) / (double)n);
        }
    }
    return total / (double)n;
}

/* ---- reference: the same formula spelled out, all in double ---- */

double graft_ref_cross_entropy(int64_t n, int64_t k, const double *logits,
                               const int64_t *labels, double *dlogits) {
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double *row = logits + i * k;
        double max = row[0];
        for (int64_t j = 1; j < k; j++) max = fmax(max, row[j]);
        double sum = 0.0;
        for (int64_t j = 0; j < k; j++) sum += exp(row[j] - max);
        double log_softmax_label = row[labels[i]] - max - log(sum);
        total -= log_softmax_label;
        if (!dlogits) continue;
        for (int64_t j = 0; j < k; j++) {
            double softmax = exp(row[j] - max) / sum;
            double onehot = j == labels[i] ? 1.0 : 0.0;
            dlogits[i * k + j] = (softmax - onehot) / (double)n;
        }
    }
    return n > 0 ? total / (double)n : 0.0;
}
