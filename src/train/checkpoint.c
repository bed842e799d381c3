/* checkpoint.c — model checkpoints with the metadata that makes them self-describing. */
#include "train/checkpoint.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/writers.h"
#include "nn/model.h"

#define FORMAT_NAME "graft-checkpoint"
#define FORMAT_VERSION "1"

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static void free_strings(char **v, int64_t n) {
    if (!v) return;
    for (int64_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

void graft_checkpoint_meta_release(graft_checkpoint_meta *meta) {
    free(meta->arch);
    free_strings(meta->classes, meta->num_classes);
    free(meta->transform);
    free_strings(meta->frozen, meta->nfrozen);
    free(meta->graft_version);
    memset(meta, 0, sizeof *meta);
}

static char **copy_strings(char *const *v, int64_t n, int *ok) {
    if (!v || n <= 0) return NULL;
    char **out = calloc((size_t)n, sizeof *out);
    if (!out) {
        *ok = 0;
        return NULL;
    }
    for (int64_t i = 0; i < n; i++)
        if (!(out[i] = strdup(v[i] ? v[i] : ""))) *ok = 0;
    return out;
}

graft_status graft_checkpoint_meta_copy(graft_checkpoint_meta *dst, const graft_checkpoint_meta *src) {
    int ok = 1;
    memset(dst, 0, sizeof *dst);
    dst->arch = dup_or_null(src->arch);
    dst->num_classes = src->num_classes;
    dst->classes = copy_strings(src->classes, src->num_classes, &ok);
    dst->transform = dup_or_null(src->transform);
    memcpy(dst->input_shape, src->input_shape, sizeof dst->input_shape);
    dst->nfrozen = src->nfrozen;
    dst->frozen = copy_strings(src->frozen, src->nfrozen, &ok);
    dst->epoch = src->epoch;
    dst->save_id = src->save_id;
    dst->graft_version = dup_or_null(src->graft_version);
    if (!ok || (src->arch && !dst->arch) || (src->transform && !dst->transform)) {
        graft_checkpoint_meta_release(dst);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory copying checkpoint metadata");
    }
    return GRAFT_OK;
}

/* A JSON array of strings as compact text (caller frees). */
static char *json_strings(char *const *v, int64_t n) {
    json_t *a = json_array();
    for (int64_t i = 0; a && i < n; i++) json_array_append_new(a, json_string(v[i] ? v[i] : ""));
    char *s = a ? json_dumps(a, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(a);
    return s;
}

graft_status graft_checkpoint_save(const char *path, const graft_model *m, const graft_checkpoint_meta *meta) {
    return graft_checkpoint_save_over(path, m, meta, NULL, NULL);
}

graft_status graft_checkpoint_save_over(const char *path, const graft_model *m, const graft_checkpoint_meta *meta,
                                        const char *spare, struct graft_commits *commits) {
    graft_tensor_map *map;
    graft_status s = graft_model_state_view(m, &map); /* saved as it is: no copy */
    if (s) return s;
    char num[32], shape[64], epoch[32];
    snprintf(num, sizeof num, "%lld", (long long)graft_model_num_classes(m));
    snprintf(shape, sizeof shape, "%d,%d,%d", meta->input_shape[0], meta->input_shape[1], meta->input_shape[2]);
    snprintf(epoch, sizeof epoch, "%lld", (long long)meta->epoch);
    char *classes = json_strings(meta->classes, meta->classes ? meta->num_classes : 0);
    char *frozen = json_strings(meta->frozen, meta->nfrozen);
    if (!classes || !frozen) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    if (!s) s = graft_tensor_map_set_meta(map, "format", FORMAT_NAME);
    if (!s) s = graft_tensor_map_set_meta(map, "format_version", FORMAT_VERSION);
    if (!s) s = graft_tensor_map_set_meta(map, "graft_version", GRAFT_VERSION);
    if (!s) s = graft_tensor_map_set_meta(map, "arch", graft_model_arch(m));
    if (!s) s = graft_tensor_map_set_meta(map, "num_classes", num);
    if (!s) s = graft_tensor_map_set_meta(map, "classes", classes);
    if (!s) s = graft_tensor_map_set_meta(map, "transform", meta->transform ? meta->transform : "");
    if (!s) s = graft_tensor_map_set_meta(map, "input_shape", shape);
    if (!s) s = graft_tensor_map_set_meta(map, "frozen", frozen);
    if (!s) s = graft_tensor_map_set_meta(map, "epoch", epoch);
    if (!s && meta->save_id > 0) {
        char id[32];
        snprintf(id, sizeof id, "%lld", (long long)meta->save_id);
        s = graft_tensor_map_set_meta(map, "save_id", id);
    }
    if (!s) s = graft_safetensors_save_over(path, map, spare, commits);
    free(classes);
    free(frozen);
    graft_tensor_map_free(map);
    return s;
}

static graft_status meta_error(const char *path, const char *key, const char *why) {
    return graft_error(GRAFT_ERR_FORMAT, "%s: checkpoint metadata '%s' %s", path, key, why);
}

/* Parses a JSON array of strings from metadata key. */
static graft_status read_strings(const char *path, const graft_tensor_map *map, const char *key, char ***out,
                                 int64_t *n) {
    *out = NULL;
    *n = 0;
    const char *text = graft_tensor_map_get_meta(map, key);
    if (!text) return meta_error(path, key, "is missing");
    json_error_t err;
    json_t *a = json_loads(text, 0, &err);
    if (!a || !json_is_array(a)) {
        json_decref(a);
        return meta_error(path, key, "is not a JSON array");
    }
    size_t len = json_array_size(a);
    char **v = calloc(len ? len : 1, sizeof *v);
    graft_status s = v ? GRAFT_OK : graft_error(GRAFT_ERR_NOMEM, "out of memory");
    for (size_t i = 0; !s && i < len; i++) {
        const char *str = json_string_value(json_array_get(a, i));
        if (!str) s = meta_error(path, key, "holds something other than strings");
        else if (!(v[i] = strdup(str))) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    json_decref(a);
    if (s) {
        free_strings(v, (int64_t)len);
        return s;
    }
    *out = v;
    *n = (int64_t)len;
    return GRAFT_OK;
}

static graft_status read_meta(const char *path, const graft_tensor_map *map, graft_checkpoint_meta *meta) {
    const char *format = graft_tensor_map_get_meta(map, "format");
    if (!format || strcmp(format, FORMAT_NAME))
        return graft_error(GRAFT_ERR_FORMAT, "%s: not a graft checkpoint (no metadata format=%s)", path, FORMAT_NAME);
    const char *arch = graft_tensor_map_get_meta(map, "arch");
    const char *num = graft_tensor_map_get_meta(map, "num_classes");
    const char *shape = graft_tensor_map_get_meta(map, "input_shape");
    const char *epoch = graft_tensor_map_get_meta(map, "epoch");
    const char *transform = graft_tensor_map_get_meta(map, "transform");
    const char *version = graft_tensor_map_get_meta(map, "graft_version");
    if (!arch) return meta_error(path, "arch", "is missing");
    char *end;
    long long k = num ? strtoll(num, &end, 10) : 0;
    if (!num || *end || k < 1 || k > (1 << 24)) return meta_error(path, "num_classes", "is not a class count");
    if (!shape || sscanf(shape, "%d,%d,%d", &meta->input_shape[0], &meta->input_shape[1], &meta->input_shape[2]) != 3 ||
        meta->input_shape[0] < 1 || meta->input_shape[1] < 1 || meta->input_shape[2] < 1)
        return meta_error(path, "input_shape", "is not C,H,W");
    meta->num_classes = k;
    meta->epoch = epoch ? strtoll(epoch, NULL, 10) : 0;
    const char *id = graft_tensor_map_get_meta(map, "save_id");
    meta->save_id = id ? strtoll(id, NULL, 10) : 0;
    meta->arch = strdup(arch);
    meta->transform = strdup(transform ? transform : "");
    meta->graft_version = strdup(version ? version : "");
    if (!meta->arch || !meta->transform || !meta->graft_version) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    int64_t nclasses, nfrozen;
    graft_status s = read_strings(path, map, "classes", &meta->classes, &nclasses);
    if (s) return s;
    if (nclasses != k) {
        free_strings(meta->classes, nclasses);
        meta->classes = NULL;
        return meta_error(path, "classes", "does not hold num_classes names");
    }
    s = read_strings(path, map, "frozen", &meta->frozen, &nfrozen);
    meta->nfrozen = (int)nfrozen;
    return s;
}

graft_status graft_checkpoint_load(const char *path, graft_model **out, graft_checkpoint_meta *meta) {
    *out = NULL;
    memset(meta, 0, sizeof *meta);
    graft_tensor_map *map;
    graft_status s = graft_safetensors_load(path, &map);
    if (s) return s;
    graft_model *m = NULL;
    if ((s = read_meta(path, map, meta))) goto fail;
    graft_model_options o = graft_model_defaults();
    o.num_classes = meta->num_classes;
    o.init = 0;
    if ((s = graft_model_create(meta->arch, &o, &m))) {
        graft_error_prefix(s, "%s", path);
        goto fail;
    }
    if ((s = graft_model_load_state(m, map))) {
        graft_error_prefix(s, "%s", path);
        goto fail;
    }
    for (int i = 0; i < meta->nfrozen; i++)
        if ((s = graft_model_freeze(m, meta->frozen[i], 1))) {
            graft_error_prefix(s, "%s", path);
            goto fail;
        }
    graft_tensor_map_free(map);
    *out = m;
    return GRAFT_OK;
fail:
    graft_model_free(m);
    graft_tensor_map_free(map);
    graft_checkpoint_meta_release(meta);
    return s;
}
