/* classifier.c — a trained checkpoint as an image classifier for applications: open
 * the file, hand it RGB pixels, get the top-k classes with probabilities.  The
 * checkpoint's own evaluation transform prepares the pixels, exactly as in training. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/tensor.h"
#include "data/image.h"
#include "data/transforms.h"
#include "nn/model.h"
#include "train/checkpoint.h"

struct graft_classifier {
    graft_model *model;
    graft_checkpoint_meta meta;
    graft_transforms *tf;      /* NULL: the model takes tensors as they are */
    graft_transform_work work;
    graft_tensor input;        /* [1, C, H, W] */
    uint8_t *packed;           /* rows copied together when the caller's stride has padding */
    size_t packed_cap;
    double *probs;             /* [num_classes] */
    int64_t *order;
};

graft_status graft_classifier_open(const char *checkpoint, graft_classifier **out) {
    *out = NULL;
    graft_classifier *c = calloc(1, sizeof *c);
    if (!c) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    graft_tensor_init(&c->input, GRAFT_F32);
    graft_status s = graft_checkpoint_load(checkpoint, &c->model, &c->meta);
    if (!s && c->meta.transform && c->meta.transform[0] && (s = graft_transforms_parse(c->meta.transform, &c->tf)))
        graft_error_prefix(s, "%s: transform", checkpoint);
    if (!s) {
        c->probs = malloc((size_t)c->meta.num_classes * sizeof *c->probs);
        c->order = malloc((size_t)c->meta.num_classes * sizeof *c->order);
        if (!c->probs || !c->order) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    if (s) {
        graft_classifier_free(c);
        return s;
    }
    graft_model_set_training(c->model, 0);
    graft_model_hold_weights(c->model, true); /* nothing changes them: transforms kept between calls */
    *out = c;
    return GRAFT_OK;
}

void graft_classifier_free(graft_classifier *c) {
    if (!c) return;
    graft_model_free(c->model);
    graft_checkpoint_meta_release(&c->meta);
    graft_transforms_free(c->tf);
    graft_transform_work_release(&c->work);
    graft_tensor_release(&c->input);
    free(c->packed);
    free(c->probs);
    free(c->order);
    free(c);
}

int64_t graft_classifier_num_classes(const graft_classifier *c) { return c->meta.num_classes; }

const char *graft_classifier_class_name(const graft_classifier *c, int64_t i) {
    return i >= 0 && i < c->meta.num_classes ? c->meta.classes[i] : NULL;
}

const char *graft_classifier_transform(const graft_classifier *c) { return c->meta.transform; }

/* Softmax of logits into c->probs (in double), then the k most probable. */
static void top_k(graft_classifier *c, const float *logits, int k, graft_prediction *top) {
    int64_t n = c->meta.num_classes;
    double max = logits[0], sum = 0;
    for (int64_t i = 1; i < n; i++) max = fmax(max, logits[i]);
    for (int64_t i = 0; i < n; i++) sum += (c->probs[i] = exp((double)logits[i] - max));
    for (int64_t i = 0; i < n; i++) {
        c->probs[i] /= sum;
        c->order[i] = i;
    }
    for (int j = 0; j < k; j++) { /* partial selection sort: k is small */
        int64_t best = j;
        for (int64_t i = j + 1; i < n; i++)
            if (c->probs[c->order[i]] > c->probs[c->order[best]]) best = i;
        int64_t tmp = c->order[j];
        c->order[j] = c->order[best];
        c->order[best] = tmp;
        top[j].class_index = c->order[j];
        top[j].class_name = c->meta.classes[c->order[j]];
        top[j].probability = c->probs[c->order[j]];
    }
}

graft_status graft_classifier_classify(graft_classifier *c, const uint8_t *rgb, int width, int height, size_t stride,
                                       int k, graft_prediction *top) {
    if (!rgb || width < 1 || height < 1) return graft_error(GRAFT_ERR_INVALID, "classify: an empty image");
    if (k < 1 || k > c->meta.num_classes)
        return graft_error(GRAFT_ERR_INVALID, "classify: k = %d is outside 1..%lld", k, (long long)c->meta.num_classes);
    size_t row = (size_t)width * 3;
    if (stride == 0) stride = row;
    if (stride < row) return graft_error(GRAFT_ERR_INVALID, "classify: stride %zu is less than width * 3 = %zu", stride, row);
    const uint8_t *pixels = rgb;
    if (stride != row) {
        size_t need = row * (size_t)height;
        if (need > c->packed_cap) {
            uint8_t *p = realloc(c->packed, need);
            if (!p) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
            c->packed = p;
            c->packed_cap = need;
        }
        for (int y = 0; y < height; y++) memcpy(c->packed + (size_t)y * row, rgb + (size_t)y * stride, row);
        pixels = c->packed;
    }
    graft_image img = graft_image_view(pixels, height, width, 3);
    int chw[3];
    graft_status s;
    if (c->tf) {
        if ((s = graft_transforms_output_shape(c->tf, height, width, 3, chw))) return s;
    } else {
        chw[0] = 3, chw[1] = height, chw[2] = width;
    }
    int64_t shape[4] = {1, chw[0], chw[1], chw[2]};
    if ((s = graft_tensor_resize(&c->input, 4, shape))) return s;
    size_t floats = (size_t)chw[0] * (size_t)chw[1] * (size_t)chw[2];
    if (c->tf) {
        if ((s = graft_transforms_apply(c->tf, &img, NULL, &c->work, c->input.data, floats))) return s;
    } else {
        graft_image_to_tensor(&img, c->input.data);
    }
    const graft_tensor *logits;
    if ((s = graft_model_forward(c->model, &c->input, &logits))) return s;
    top_k(c, logits->data, k, top);
    return GRAFT_OK;
}

graft_status graft_classifier_classify_file(graft_classifier *c, const char *path, int k, graft_prediction *top) {
    graft_image img;
    graft_image_init(&img);
    graft_status s = graft_image_load(path, &img);
    if (!s) s = graft_classifier_classify(c, img.data, img.w, img.h, 0, k, top);
    graft_image_release(&img);
    return s;
}
