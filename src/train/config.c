/* config.c — training configuration: defaults and the JSON kept in a run folder. */
#include "train/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

graft_train_config graft_train_defaults(void) {
    return (graft_train_config){
        .num_classes = 0,
        .dropout = -1,
        .batch_size = 64,
        .shuffle = 1,
        .workers = 1,
        .epochs = 10,
        .optimizer = "sgd",
        .lr = 0.001,
        .lr_head = -1,
        .lr_trunk = -1,
        .weight_decay = -1, /* the optimiser's own default (AdamW 0.01, others 0) */
        .beta1 = 0.9,
        .beta2 = 0.999,
        .eps = 1e-8,
        .schedule = "constant",
        .feature_cache = 1,
        .fold = 1,
        .fuse_update = 1,
    };
}

/* Strings: "name": "value" or null.  Numbers as JSON numbers (doubles round-trip). */
#define STRINGS(X)                                                                                   \
    X(arch) X(weights_version) X(weights) X(data) X(classes) X(transform) X(eval_transform) X(optimizer) \
    X(schedule)
#define INTS(X)                                                                                      \
    X(num_classes) X(pretrained) X(per_class) X(strict) X(batch_size) X(shuffle) X(epochs) X(nesterov) \
    X(feature_cache) X(fold)
#define REALS(X)                                                                                     \
    X(dropout) X(lr) X(lr_head) X(lr_trunk) X(momentum) X(dampening) X(weight_decay) X(beta1) X(beta2)  \
    X(eps) X(label_smoothing)

json_t *graft_train_config_to_json(const graft_train_config *c) {
    json_t *j = json_object();
    if (!j) return NULL;
    int bad = 0;
#define PUT_STRING(f) bad |= json_object_set_new(j, #f, c->f ? json_string(c->f) : json_null());
#define PUT_INT(f) bad |= json_object_set_new(j, #f, json_integer((json_int_t)c->f));
#define PUT_REAL(f) bad |= json_object_set_new(j, #f, json_real(c->f));
    STRINGS(PUT_STRING)
    INTS(PUT_INT)
    REALS(PUT_REAL)
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)c->seed);
    bad |= json_object_set_new(j, "seed", json_string(seed));
    json_t *fr = json_array();
    for (int i = 0; fr && i < c->nfreeze; i++) bad |= json_array_append_new(fr, json_string(c->freeze[i]));
    bad |= json_object_set_new(j, "freeze", fr);
    if (bad) {
        json_decref(j);
        return NULL;
    }
    return j;
}

graft_status graft_train_config_from_json(json_t *j, graft_train_config *c, const char ***freeze_storage) {
    *c = graft_train_defaults();
    *freeze_storage = NULL;
    if (!json_is_object(j)) return graft_error(GRAFT_ERR_FORMAT, "saved training config is not a JSON object");
    json_t *v;
#define GET_STRING(f)                                                                                \
    if ((v = json_object_get(j, #f)) && !json_is_null(v)) {                                          \
        if (!json_is_string(v)) return graft_error(GRAFT_ERR_FORMAT, "saved config: %s is not a string", #f); \
        c->f = json_string_value(v);                                                                  \
    }
#define GET_INT(f)                                                                                   \
    if ((v = json_object_get(j, #f))) {                                                              \
        if (!json_is_integer(v)) return graft_error(GRAFT_ERR_FORMAT, "saved config: %s is not an integer", #f); \
        c->f = json_integer_value(v);                                                                 \
    }
#define GET_REAL(f)                                                                                  \
    if ((v = json_object_get(j, #f))) {                                                              \
        if (!json_is_number(v)) return graft_error(GRAFT_ERR_FORMAT, "saved config: %s is not a number", #f); \
        c->f = json_number_value(v);                                                                  \
    }
    STRINGS(GET_STRING)
    INTS(GET_INT)
    REALS(GET_REAL)
    if ((v = json_object_get(j, "seed")) && json_is_string(v)) c->seed = strtoull(json_string_value(v), NULL, 10);
    json_t *fr = json_object_get(j, "freeze");
    if (fr && json_is_array(fr) && json_array_size(fr)) {
        size_t n = json_array_size(fr);
        const char **names = calloc(n, sizeof *names);
        if (!names) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
            names[i] = json_string_value(json_array_get(fr, i));
            if (!names[i]) {
                free(names);
                return graft_error(GRAFT_ERR_FORMAT, "saved config: freeze holds something other than strings");
            }
        }
        *freeze_storage = names;
        c->freeze = names;
        c->nfreeze = (int)n;
    }
    return GRAFT_OK;
}
