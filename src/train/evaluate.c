/* evaluate.c — a checkpoint measured on a dataset: loss, top-1, top-5, per-class
 * accuracy and the confusion matrix, with the checkpoint's own transform. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/strbuf.h"
#include "core/tensor.h"
#include "data/loader.h"
#include "data/spec.h"
#include "data/transforms.h"
#include "ops/ops.h"
#include "train/checkpoint.h"
#include "train/metrics.h"

/* When the source's classes are not the checkpoint's, picks the checkpoint's classes out
 * of the source by name, in the checkpoint's order (replacing *src). */
static graft_status match_classes(graft_source **src, const graft_checkpoint_meta *meta, const char *spec) {
    graft_source *s = *src;
    int64_t k = graft_source_num_classes(s);
    bool same = k == meta->num_classes;
    for (int64_t i = 0; same && i < k; i++) same = !strcmp(graft_source_class_name(s, i), meta->classes[i]);
    if (same) return GRAFT_OK;
    int64_t *pick = malloc((size_t)meta->num_classes * sizeof *pick);
    if (!pick) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    for (int64_t c = 0; c < meta->num_classes; c++) {
        pick[c] = -1;
        for (int64_t i = 0; i < k && pick[c] < 0; i++)
            if (!strcmp(graft_source_class_name(s, i), meta->classes[c])) pick[c] = i;
        if (pick[c] < 0) {
            free(pick);
            return graft_error(GRAFT_ERR_NOTFOUND, "--data %s has no class '%s', which the checkpoint predicts", spec,
                               meta->classes[c]);
        }
    }
    *src = NULL; /* select_classes owns it now */
    graft_status st = graft_source_select_classes(s, pick, meta->num_classes, src);
    free(pick);
    return st;
}

graft_status graft_evaluate(const char *checkpoint, const graft_eval_options *o, graft_eval_result *r) {
    memset(r, 0, sizeof *r);
    if (!o->data) return graft_error(GRAFT_ERR_INVALID, "--data is required");
    graft_model *m = NULL;
    graft_checkpoint_meta meta;
    graft_data *data = NULL;
    graft_transforms *tf = NULL;
    graft_loader *loader = NULL;
    graft_metrics metrics = {0};
    graft_status s = graft_checkpoint_load(checkpoint, &m, &meta);
    if (s) return s;
    graft_data_options dopt = {.strict = o->strict != 0};
    if ((s = graft_data_open(o->data, &dopt, &data))) {
        graft_error_prefix(s, "--data");
        goto done;
    }
    graft_source **split = data->test ? &data->test : &data->train;
    if ((s = match_classes(split, &meta, o->data))) goto done;
    bool tensors = graft_source_kind(*split) == GRAFT_SAMPLE_TENSOR;
    if (!tensors && meta.transform[0] && (s = graft_transforms_parse(meta.transform, &tf))) goto done;
    graft_loader_options lo = graft_loader_defaults();
    lo.batch_size = o->batch_size > 0 ? o->batch_size : 64;
    lo.workers = o->workers;
    lo.strict = o->strict != 0;
    if ((s = graft_loader_create(*split, tf, &lo, &loader))) goto done;
    if ((s = graft_metrics_init(&metrics, meta.num_classes))) goto done;
    graft_model_set_training(m, 0);
    if ((s = graft_loader_start_epoch(loader, 0))) goto done;
    for (;;) {
        const graft_tensor *x, *y, *logits;
        int end;
        if ((s = graft_loader_next(loader, &x, &y, &end)) || end) break;
        if ((s = graft_model_forward(m, x, &logits))) break;
        int64_t n = x->shape[0];
        double loss = graft_cross_entropy_forward_backward(n, meta.num_classes, logits->data, y->data, NULL);
        graft_metrics_add(&metrics, logits->data, y->data, n, loss);
    }
    if (s) goto done;
    r->samples = metrics.seen;
    r->loss = graft_metrics_loss(&metrics);
    r->top1 = graft_metrics_top1(&metrics);
    r->top5 = graft_metrics_top5(&metrics);
    graft_strbuf sb;
    graft_strbuf_init(&sb);
    graft_metrics_tables(&metrics, meta.classes, &sb);
    r->report = graft_strbuf_take(&sb);
done:
    graft_metrics_release(&metrics);
    graft_loader_free(loader);
    graft_transforms_free(tf);
    graft_data_free(data);
    graft_model_free(m);
    graft_checkpoint_meta_release(&meta);
    return s;
}
