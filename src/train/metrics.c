/* metrics.c — accumulating evaluation results and writing them for people and files. */
#include "train/metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/atomic_file.h"

#define TOPK 5

graft_status graft_metrics_init(graft_metrics *m, int64_t k) {
    memset(m, 0, sizeof *m);
    if (k < 1 || k > (1 << 16)) return graft_error(GRAFT_ERR_INVALID, "metrics: %lld classes", (long long)k);
    m->k = k;
    m->confusion = calloc((size_t)(k * k), sizeof *m->confusion);
    if (!m->confusion) return graft_error(GRAFT_ERR_NOMEM, "out of memory for a %lldx%lld confusion matrix",
                                          (long long)k, (long long)k);
    return GRAFT_OK;
}

void graft_metrics_release(graft_metrics *m) {
    free(m->confusion);
    memset(m, 0, sizeof *m);
}

void graft_metrics_reset(graft_metrics *m) {
    memset(m->confusion, 0, (size_t)(m->k * m->k) * sizeof *m->confusion);
    m->loss_sum = 0;
    m->seen = m->top1 = m->top5 = 0;
}

void graft_metrics_add(graft_metrics *m, const float *logits, const int64_t *labels, int64_t n, double mean_loss) {
    int64_t k = m->k;
    for (int64_t i = 0; i < n; i++) {
        const float *row = logits + i * k;
        int64_t y = labels[i], best = 0, above = 0;
        for (int64_t j = 1; j < k; j++)
            if (row[j] > row[best]) best = j; /* first maximum, as torch.argmax */
        /* the label is in the top 5 when fewer than 5 classes score higher (ties count
         * for the label, as topk may return either) */
        for (int64_t j = 0; j < k; j++)
            if (row[j] > row[y]) above++;
        m->confusion[y * k + best]++;
        m->top1 += best == y;
        m->top5 += above < TOPK;
    }
    m->loss_sum += mean_loss * (double)n;
    m->seen += n;
}

double graft_metrics_loss(const graft_metrics *m) { return m->seen ? m->loss_sum / (double)m->seen : NAN; }
double graft_metrics_top1(const graft_metrics *m) { return m->seen ? (double)m->top1 / (double)m->seen : NAN; }
double graft_metrics_top5(const graft_metrics *m) { return m->seen ? (double)m->top5 / (double)m->seen : NAN; }

double graft_metrics_class_accuracy(const graft_metrics *m, int64_t c) {
    int64_t total = 0;
    for (int64_t j = 0; j < m->k; j++) total += m->confusion[c * m->k + j];
    return total ? (double)m->confusion[c * m->k + c] / (double)total : NAN;
}

static const char *name_of(char *const *classes, int64_t c, char *buf, size_t size) {
    if (classes && classes[c]) return classes[c];
    snprintf(buf, size, "%lld", (long long)c);
    return buf;
}

void graft_metrics_tables(const graft_metrics *m, char *const *classes, graft_strbuf *sb) {
    int64_t k = m->k;
    int width = 5;
    char buf[32];
    for (int64_t c = 0; c < k; c++) {
        int len = (int)strlen(name_of(classes, c, buf, sizeof buf));
        if (len > width) width = len;
    }
    if (width > 24) width = 24;
    graft_strbuf_printf(sb, "%-*s %8s %9s\n", width, "class", "samples", "accuracy");
    for (int64_t c = 0; c < k; c++) {
        int64_t total = 0;
        for (int64_t j = 0; j < k; j++) total += m->confusion[c * k + j];
        double acc = graft_metrics_class_accuracy(m, c);
        graft_strbuf_printf(sb, "%-*.*s %8lld %8.2f%%\n", width, width, name_of(classes, c, buf, sizeof buf),
                            (long long)total, isnan(acc) ? 0.0 : 100 * acc);
    }
    if (k > 32) { /* a matrix this wide is for the CSV file */
        graft_strbuf_printf(sb, "\nconfusion matrix: %lldx%lld, see confusion.csv\n", (long long)k, (long long)k);
        return;
    }
    graft_strbuf_printf(sb, "\nconfusion matrix (rows: true class, columns: predicted)\n%-*s", width, "");
    for (int64_t j = 0; j < k; j++) graft_strbuf_printf(sb, " %6lld", (long long)j);
    graft_strbuf_append(sb, "\n");
    for (int64_t c = 0; c < k; c++) {
        graft_strbuf_printf(sb, "%-*.*s", width, width, name_of(classes, c, buf, sizeof buf));
        for (int64_t j = 0; j < k; j++) graft_strbuf_printf(sb, " %6lld", (long long)m->confusion[c * k + j]);
        graft_strbuf_append(sb, "\n");
    }
}

/* A CSV field, quoted when it holds a comma, quote or newline (RFC 4180). */
static void csv_field(graft_strbuf *sb, const char *s) {
    if (!strpbrk(s, ",\"\n\r")) {
        graft_strbuf_append(sb, s);
        return;
    }
    graft_strbuf_append(sb, "\"");
    for (const char *p = s; *p; p++) {
        if (*p == '"') graft_strbuf_append(sb, "\""); /* a quote is doubled */
        graft_strbuf_appendn(sb, p, 1);
    }
    graft_strbuf_append(sb, "\"");
}

static graft_status write_text(const char *dir, const char *name, const graft_strbuf *sb) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (sb->failed) return graft_error(GRAFT_ERR_NOMEM, "out of memory writing %s", path);
    return graft_atomic_write_file(path, sb->data ? sb->data : "", sb->len);
}

graft_status graft_metrics_write_csv(const graft_metrics *m, char *const *classes, const char *dir) {
    int64_t k = m->k;
    char buf[32];
    graft_strbuf per, conf;
    graft_strbuf_init(&per);
    graft_strbuf_init(&conf);
    graft_strbuf_append(&per, "class,name,samples,correct,accuracy\n");
    graft_strbuf_append(&conf, "true\\predicted");
    for (int64_t j = 0; j < k; j++) {
        graft_strbuf_append(&conf, ",");
        csv_field(&conf, name_of(classes, j, buf, sizeof buf));
    }
    graft_strbuf_append(&conf, "\n");
    for (int64_t c = 0; c < k; c++) {
        int64_t total = 0;
        for (int64_t j = 0; j < k; j++) total += m->confusion[c * k + j];
        graft_strbuf_printf(&per, "%lld,", (long long)c);
        csv_field(&per, name_of(classes, c, buf, sizeof buf));
        double acc = graft_metrics_class_accuracy(m, c);
        graft_strbuf_printf(&per, ",%lld,%lld,%.6f\n", (long long)total, (long long)m->confusion[c * k + c],
                            isnan(acc) ? 0.0 : acc);
        csv_field(&conf, name_of(classes, c, buf, sizeof buf));
        for (int64_t j = 0; j < k; j++) graft_strbuf_printf(&conf, ",%lld", (long long)m->confusion[c * k + j]);
        graft_strbuf_append(&conf, "\n");
    }
    graft_status s = write_text(dir, "per_class.csv", &per);
    if (!s) s = write_text(dir, "confusion.csv", &conf);
    graft_strbuf_free(&per);
    graft_strbuf_free(&conf);
    return s;
}
