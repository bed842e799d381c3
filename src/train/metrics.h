/* metrics.h — what an evaluation measures: mean loss, top-1 and top-5 accuracy, and the
 * confusion matrix (rows: true class, columns: predicted class) from which per-class
 * accuracy follows. */
#ifndef GRAFT_TRAIN_METRICS_H
#define GRAFT_TRAIN_METRICS_H

#include <stdint.h>

#include "core/strbuf.h"
#include "graft/graft.h"

typedef struct graft_metrics {
    int64_t k;          /* classes */
    int64_t *confusion; /* k x k counts */
    double loss_sum;    /* sum over samples of the per-sample loss */
    int64_t seen, top1, top5;
} graft_metrics;

graft_status graft_metrics_init(graft_metrics *m, int64_t k);
void graft_metrics_release(graft_metrics *m);
void graft_metrics_reset(graft_metrics *m);
/* Adds a batch: logits [n, k], labels [n], and the batch's mean loss. */
void graft_metrics_add(graft_metrics *m, const float *logits, const int64_t *labels, int64_t n, double mean_loss);
double graft_metrics_loss(const graft_metrics *m);
double graft_metrics_top1(const graft_metrics *m); /* fraction in [0, 1] */
double graft_metrics_top5(const graft_metrics *m); /* top-min(5, k) */
/* Accuracy of class c (NaN when the class has no samples). */
double graft_metrics_class_accuracy(const graft_metrics *m, int64_t c);
/* Tables for people: per-class accuracy, then the confusion matrix. */
void graft_metrics_tables(const graft_metrics *m, char *const *classes, graft_strbuf *sb);
/* per_class.csv (class,name,samples,correct,accuracy) and confusion.csv (a header row of
 * predicted names, then one row per true class) into dir, each written atomically. */
graft_status graft_metrics_write_csv(const graft_metrics *m, char *const *classes, const char *dir);

#endif
