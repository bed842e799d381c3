/* model.c — graft_model: a module tree plus what running it needs (context, state-dict
 * index, gradient buffers).  This is the public face of src/nn. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/strbuf.h"
#include "nn/arch.h"
#include "nn/init.h"
#include "nn/layers.h"
#include "nn/model.h"

typedef struct state_entry {
    char *name;          /* qualified name, "features.0.weight" */
    graft_tensor *value; /* owned by the module */
    graft_param *param;  /* NULL for buffers */
} state_entry;

struct graft_model {
    char *arch;
    graft_module *root;
    const char *head_path;
    graft_module *const *steps; /* the root's forward, step by step (arch.h) */
    int nsteps;
    graft_ctx ctx;
    state_entry *state;
    size_t nstate;
    graft_tensor grad_out;          /* the caller's grad_output, copied so layers may overwrite it */
    const graft_tensor *last_output; /* NULL until a forward succeeded */
};

graft_model_options graft_model_defaults(void) {
    return (graft_model_options){.num_classes = 0, .seed = 0, .init = 1};
}

static void free_state(graft_model *m) {
    for (size_t i = 0; i < m->nstate; i++) free(m->state[i].name);
    free(m->state);
    m->state = NULL;
    m->nstate = 0;
}

typedef struct index_build {
    state_entry *entries;
    size_t n, cap;
    bool failed;
} index_build;

static int collect(void *user, const char *name, graft_module *owner, graft_param *p, graft_buffer *b) {
    (void)owner;
    index_build *ib = user;
    if (ib->n == ib->cap) {
        size_t cap = ib->cap ? ib->cap * 2 : 64;
        state_entry *e = realloc(ib->entries, cap * sizeof *e);
        if (!e) return ib->failed = true;
        ib->entries = e;
        ib->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy) return ib->failed = true;
    ib->entries[ib->n++] = (state_entry){copy, p ? &p->value : &b->value, p};
    return 0;
}

/* (Re)builds the state-dict index after the tree changed. */
static graft_status index_state(graft_model *m) {
    index_build ib = {0};
    graft_module_visit_state(m->root, collect, &ib);
    if (ib.failed) {
        for (size_t i = 0; i < ib.n; i++) free(ib.entries[i].name);
        free(ib.entries);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory indexing the state dict");
    }
    free_state(m);
    m->state = ib.entries;
    m->nstate = ib.n;
    return GRAFT_OK;
}

static graft_status describe_unknown_arch(const char *arch) {
    graft_strbuf sb;
    graft_strbuf_init(&sb);
    const char *const *names = graft_zoo_names();
    for (int i = 0; names[i]; i++) graft_strbuf_printf(&sb, "%s%s", i ? ", " : "", names[i]);
    graft_status s = graft_error(GRAFT_ERR_NOTFOUND,
                                 "unknown architecture '%s' (known: %s, or a spec like vgg:cfg=64-M-128-M or resnet:block=basic,layers=2-2-2-2)", arch,
                                 sb.data ? sb.data : "");
    graft_strbuf_free(&sb);
    return s;
}

graft_status graft_model_create(const char *arch, const graft_model_options *opts, graft_model **out) {
    *out = NULL;
    graft_model_options o = opts ? *opts : graft_model_defaults();
    if (!arch) return graft_error(GRAFT_ERR_INVALID, "no architecture given");
    if (o.num_classes < 0)
        return graft_error(GRAFT_ERR_INVALID, "num_classes must be positive, got %lld", (long long)o.num_classes);
    graft_model *m = calloc(1, sizeof *m);
    if (!m || !(m->arch = strdup(arch))) {
        free(m);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    graft_ctx_init(&m->ctx, o.seed ^ 0x5eedd20u);
    graft_tensor_init(&m->grad_out, GRAFT_F32);
    graft_rng rng;
    graft_rng_seed(&rng, o.seed);
    graft_arch_info info = {0};
    graft_status s = graft_vgg_build(arch, o.init != 0, &rng, &m->root, &info);
    if (s == GRAFT_ERR_NOTFOUND) s = graft_resnet_build(arch, o.init != 0, &rng, &m->root, &info);
    if (s == GRAFT_ERR_NOTFOUND) s = describe_unknown_arch(arch);
    if (s) goto fail;
    m->head_path = info.head_path;
    m->steps = info.steps;
    m->nsteps = info.nsteps;
    if ((s = index_state(m))) goto fail;
    if (o.num_classes > 0 && o.num_classes != graft_model_num_classes(m) &&
        (s = graft_model_replace_linear(m, m->head_path, o.num_classes, graft_rng_u64(&rng))))
        goto fail;
    *out = m;
    return GRAFT_OK;
fail:
    graft_model_free(m);
    return s;
}

void graft_model_free(graft_model *m) {
    if (!m) return;
    graft_module_free(m->root);
    free_state(m);
    graft_ctx_release(&m->ctx);
    graft_tensor_release(&m->grad_out);
    free(m->arch);
    free(m);
}

const char *graft_model_arch(const graft_model *m) { return m->arch; }
uint64_t graft_model_backward_op_count(const graft_model *m) { return m->ctx.backward_ops; }
graft_module *graft_model_root(graft_model *m) { return m->root; }

void graft_model_rng_get(const graft_model *m, uint64_t state[4]) {
    for (int i = 0; i < 4; i++) state[i] = m->ctx.rng.s[i];
}

void graft_model_rng_set(graft_model *m, const uint64_t state[4]) {
    for (int i = 0; i < 4; i++) m->ctx.rng.s[i] = state[i];
}

int graft_model_nsteps(const graft_model *m) { return m->nsteps; }
graft_module *const *graft_model_steps(const graft_model *m) { return m->steps; }

int graft_steps_first_trainable(graft_module *const *steps, int n) {
    for (int i = 0; i < n; i++)
        if (graft_module_has_trainable(steps[i])) return i;
    return n;
}

bool graft_step_is_random(const graft_module *mod) {
    if (graft_module_is(mod, "Dropout") && graft_dropout_p(mod) > 0) return true;
    for (int i = 0; i < mod->nchildren; i++)
        if (graft_step_is_random(mod->children[i])) return true;
    return false;
}

graft_status graft_model_forward_steps(graft_model *m, graft_module *const *steps, int n, int from, int to,
                                       graft_tensor *in, graft_tensor **out) {
    if (!steps) steps = m->steps, n = m->nsteps;
    m->last_output = NULL;
    if (from < 0 || to > n || from >= to) return graft_error(GRAFT_ERR_INVALID, "no steps %d..%d", from, to);
    graft_status s = graft_sequence_forward(steps + from, to - from, &m->ctx, in, out);
    if (!s && to == n) m->last_output = *out;
    return s;
}

void graft_model_zero_grad(graft_model *m) {
    for (size_t i = 0; i < m->nstate; i++) {
        graft_param *p = m->state[i].param;
        if (!p) continue;
        if (p->grad.data) graft_tensor_zero(&p->grad);
        p->grad_stale = p->grad_sunk = false;
    }
}

void graft_model_zero_grad_lazy(graft_model *m) {
    for (size_t i = 0; i < m->nstate; i++)
        if (m->state[i].param) graft_param_zero_grad_lazy(m->state[i].param);
}

/* The zeros a lazy zero_grad left pending, written before anyone reads a gradient. */
static void settle_grads(graft_model *m) {
    for (size_t i = 0; i < m->nstate; i++)
        if (m->state[i].param) graft_param_grad_settle(m->state[i].param);
}

graft_status graft_model_backward_steps(graft_model *m, graft_module *const *steps, int n, int from,
                                        const graft_tensor *grad_output) {
    if (!steps) steps = m->steps, n = m->nsteps;
    if (!m->last_output) return graft_error(GRAFT_ERR_INVALID, "backward: no successful forward to go back through");
    if (!graft_tensor_same_shape(grad_output, m->last_output))
        return graft_error(GRAFT_ERR_SHAPE, "backward: grad_output does not match the output");
    graft_status s = graft_tensor_resize(&m->grad_out, grad_output->ndim, grad_output->shape);
    if (s) return s;
    graft_tensor_copy_data(&m->grad_out, grad_output);
    graft_tensor *dx;
    s = graft_sequence_backward(steps + from, n - from, false, &m->ctx, &m->grad_out, &dx);
    settle_grads(m);
    return s;
}

graft_param *graft_model_state_param(const graft_model *m, size_t i) { return i < m->nstate ? m->state[i].param : NULL; }

int64_t graft_model_in_channels(const graft_model *m) {
    for (size_t i = 0; i < m->nstate; i++)
        if (m->state[i].param && m->state[i].value->ndim == 4) return m->state[i].value->shape[1];
    return -1;
}

char *graft_model_repr(const graft_model *m) {
    graft_strbuf sb;
    graft_strbuf_init(&sb);
    graft_module_repr(m->root, &sb);
    return graft_strbuf_take(&sb);
}

graft_status graft_model_freeze(graft_model *m, const char *prefix, int frozen) {
    if (prefix && !strcmp(prefix, "trunk") && !graft_module_find(m->root, "trunk")) {
        const char *head = graft_model_head_path(m);
        const graft_module *h = head ? graft_module_find(m->root, head) : NULL;
        if (!h) return graft_error(GRAFT_ERR_NOTFOUND, "'trunk': the model has no head to leave out");
        graft_module_set_frozen_except(m->root, h, frozen != 0);
        return GRAFT_OK;
    }
    graft_module *target = graft_module_find(m->root, prefix ? prefix : "");
    if (!target) return graft_error(GRAFT_ERR_NOTFOUND, "no module named '%s' to %s", prefix, frozen ? "freeze" : "unfreeze");
    graft_module_set_frozen(target, frozen != 0);
    return GRAFT_OK;
}

void graft_model_param_counts(const graft_model *m, int64_t *total, int64_t *trainable) {
    int64_t t = 0, tr = 0;
    for (size_t i = 0; i < m->nstate; i++) {
        if (!m->state[i].param) continue;
        int64_t n = graft_tensor_numel(m->state[i].value);
        t += n;
        if (!m->state[i].param->frozen) tr += n;
    }
    if (total) *total = t;
    if (trainable) *trainable = tr;
}

void graft_model_hold_weights(graft_model *m, bool hold) { graft_module_hold_weights(m->root, hold); }

void graft_model_hold_frozen_weights(graft_model *m, bool hold) {
    int n = graft_model_nsteps(m), trunk = graft_steps_first_trainable(graft_model_steps(m), n);
    for (int i = 0; i < trunk; i++) graft_module_hold_weights(graft_model_steps(m)[i], hold);
}
void graft_model_set_training(graft_model *m, int training) { graft_module_set_training(m->root, training != 0); }
int graft_model_training(const graft_model *m) { return m->root->training; }
static void set_dropout(graft_module *mod, double p) {
    graft_dropout_set_p(mod, p);
    for (int i = 0; i < mod->nchildren; i++) set_dropout(mod->children[i], p);
}

graft_status graft_model_set_dropout(graft_model *m, double p) {
    if (!(p >= 0 && p <= 1)) return graft_error(GRAFT_ERR_INVALID, "dropout probability must be in [0, 1], got %g", p);
    set_dropout(m->root, p);
    return GRAFT_OK;
}

void graft_model_set_seed(graft_model *m, uint64_t seed) { graft_rng_seed(&m->ctx.rng, seed); }

graft_status graft_model_forward(graft_model *m, const graft_tensor *input, const graft_tensor **output) {
    *output = NULL;
    m->last_output = NULL;
    if (input->dtype != GRAFT_F32 || input->ndim != 4) {
        char xs[96];
        graft_shape_str(input->ndim, input->shape, xs, sizeof xs);
        return graft_error(GRAFT_ERR_SHAPE, "input: expected a float32 tensor [N, C, H, W], got %s %s",
                           input->dtype == GRAFT_F32 ? "float32" : "int64", xs);
    }
    graft_tensor *out;
    /* The model never writes to its input: every architecture starts with a convolution,
     * and only in-place layers (ReLU) write to what they receive. */
    graft_status s = graft_module_forward(m->root, &m->ctx, (graft_tensor *)input, &out);
    if (s) return s;
    m->last_output = out;
    *output = out;
    return GRAFT_OK;
}

graft_status graft_model_backward(graft_model *m, const graft_tensor *grad_output, const graft_tensor **grad_input) {
    if (grad_input) *grad_input = NULL;
    if (!m->last_output) return graft_error(GRAFT_ERR_INVALID, "backward: no successful forward to go back through");
    if (grad_output->dtype != GRAFT_F32 || !graft_tensor_same_shape(grad_output, m->last_output)) {
        char gs[96], os[96];
        graft_shape_str(grad_output->ndim, grad_output->shape, gs, sizeof gs);
        graft_shape_str(m->last_output->ndim, m->last_output->shape, os, sizeof os);
        return graft_error(GRAFT_ERR_SHAPE, "backward: grad_output %s does not match the output %s", gs, os);
    }
    graft_status s = graft_tensor_resize(&m->grad_out, grad_output->ndim, grad_output->shape);
    if (s) return s;
    graft_tensor_copy_data(&m->grad_out, grad_output);
    m->root->need_dx = grad_input != NULL;
    graft_tensor *dx = NULL;
    if (!m->root->need_dx && !graft_module_has_trainable(m->root)) { /* all frozen */
        settle_grads(m);
        return GRAFT_OK;
    }
    s = graft_module_backward(m->root, &m->ctx, &m->grad_out, &dx);
    settle_grads(m);
    if (s) return s;
    if (grad_input) *grad_input = dx;
    return GRAFT_OK;
}

size_t graft_model_state_size(const graft_model *m) { return m->nstate; }
const char *graft_model_state_name(const graft_model *m, size_t i) { return i < m->nstate ? m->state[i].name : NULL; }
graft_tensor *graft_model_state_tensor(const graft_model *m, size_t i) {
    return i < m->nstate ? m->state[i].value : NULL;
}

static const state_entry *find_entry(const graft_model *m, const char *name) {
    for (size_t i = 0; i < m->nstate; i++)
        if (strcmp(m->state[i].name, name) == 0) return &m->state[i];
    return NULL;
}

graft_tensor *graft_model_state_get(const graft_model *m, const char *name) {
    const state_entry *e = find_entry(m, name);
    return e ? e->value : NULL;
}

graft_tensor *graft_model_grad(const graft_model *m, const char *name) {
    const state_entry *e = find_entry(m, name);
    if (!e || !e->param || e->param->frozen || !e->param->grad.data || e->param->grad_sunk) return NULL;
    graft_param_grad_settle(e->param);
    return &e->param->grad;
}

int graft_model_param_trainable(const graft_model *m, const char *name) {
    const state_entry *e = find_entry(m, name);
    if (!e || !e->param) return -1;
    return e->param->frozen ? 0 : 1;
}

graft_status graft_model_replace_linear(graft_model *m, const char *path, int64_t out_features, uint64_t seed) {
    graft_module *old = path ? graft_module_find(m->root, path) : NULL;
    if (!old || !old->parent) return graft_error(GRAFT_ERR_NOTFOUND, "no module named '%s' to replace", path ? path : "");
    if (!graft_module_is(old, "Linear"))
        return graft_error(GRAFT_ERR_INVALID, "%s is a %s, not a Linear", path, old->type->name);
    if (out_features <= 0)
        return graft_error(GRAFT_ERR_INVALID, "out_features must be positive, got %lld", (long long)out_features);
    int64_t in = old->params[0].value.shape[1];
    graft_module *fresh = graft_linear_new(in, out_features, old->nparams > 1);
    if (!fresh) return GRAFT_ERR_NOMEM;
    /* nn.Linear.reset_parameters: kaiming_uniform_(a=sqrt(5)) gives bound 1/sqrt(fan_in)
     * for the weight, and the bias uses the same bound. */
    graft_rng rng;
    graft_rng_seed(&rng, seed);
    double bound = 1.0 / sqrt((double)in);
    graft_init_uniform(&fresh->params[0].value, -bound, bound, &rng);
    if (fresh->nparams > 1) graft_init_uniform(&fresh->params[1].value, -bound, bound, &rng);
    graft_module *parent = old->parent;
    int i = 0;
    while (parent->children[i] != old) i++;
    graft_module_replace_child(parent, i, fresh); /* frees the old layer */
    m->last_output = NULL;
    return index_state(m);
}

const char *graft_model_head_path(const graft_model *m) { return m->head_path; }

int64_t graft_model_num_classes(const graft_model *m) {
    graft_module *head = graft_module_find(m->root, m->head_path);
    return head && head->nparams ? head->params[0].value.shape[0] : -1;
}

/* ---- state dicts ----------------------------------------------------------- */

#define LIST_MAX 8 /* names listed per kind before "... and N more" */

static bool skipped(const char *name, const char *skip1, const char *skip2) {
    return (skip1 && !strcmp(name, skip1)) || (skip2 && !strcmp(name, skip2));
}

static void list_names(graft_strbuf *sb, const char *title, const char **names, size_t n) {
    if (!n) return;
    graft_strbuf_printf(sb, " %s", title);
    for (size_t i = 0; i < n && i < LIST_MAX; i++) graft_strbuf_printf(sb, "%s\"%s\"", i ? ", " : " ", names[i]);
    if (n > LIST_MAX) graft_strbuf_printf(sb, " and %zu more", n - LIST_MAX);
    graft_strbuf_append(sb, ".");
}

/* graft_model_load_state, treating the keys skip1 and skip2 (may be NULL) as absent on
 * both sides. */
static graft_status load_all_but(graft_model *m, const graft_tensor_map *state, const char *skip1,
                                 const char *skip2) {
    size_t nsrc = graft_tensor_map_size(state);
    const char **missing = calloc(m->nstate + 1, sizeof *missing);
    const char **unexpected = calloc(nsrc + 1, sizeof *unexpected);
    size_t nmissing = 0, nunexpected = 0, nmismatch = 0;
    graft_strbuf mismatches;
    graft_strbuf_init(&mismatches);
    if (!missing || !unexpected) {
        free(missing);
        free(unexpected);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < m->nstate; i++) {
        if (skipped(m->state[i].name, skip1, skip2)) continue;
        const graft_tensor *src = graft_tensor_map_get(state, m->state[i].name);
        const graft_tensor *dst = m->state[i].value;
        if (!src) {
            missing[nmissing++] = m->state[i].name;
        } else if (!graft_tensor_same_shape(src, dst) || src->dtype != dst->dtype) {
            char ss[96], ds[96];
            graft_shape_str(src->ndim, src->shape, ss, sizeof ss);
            graft_shape_str(dst->ndim, dst->shape, ds, sizeof ds);
            if (nmismatch++ < LIST_MAX) {
                if (src->dtype != dst->dtype && graft_tensor_same_shape(src, dst))
                    graft_strbuf_printf(&mismatches, " dtype mismatch for %s: %s in checkpoint, %s in current model.",
                                        m->state[i].name, src->dtype == GRAFT_F32 ? "float32" : "int64",
                                        dst->dtype == GRAFT_F32 ? "float32" : "int64");
                else
                    graft_strbuf_printf(&mismatches,
                                        " size mismatch for %s: copying a param with shape %s from checkpoint, the shape in current model is %s.",
                                        m->state[i].name, ss, ds);
            }
        }
    }
    for (size_t i = 0; i < nsrc; i++)
        if (!find_entry(m, graft_tensor_map_name(state, i))) unexpected[nunexpected++] = graft_tensor_map_name(state, i);
    graft_status s = GRAFT_OK;
    if (nmissing || nunexpected || nmismatch) {
        graft_strbuf sb;
        graft_strbuf_init(&sb);
        graft_strbuf_printf(&sb, "Error(s) in loading state_dict for %s:", m->root->type->name);
        list_names(&sb, "Missing key(s) in state_dict:", missing, nmissing);
        list_names(&sb, "Unexpected key(s) in state_dict:", unexpected, nunexpected);
        if (mismatches.data) graft_strbuf_append(&sb, mismatches.data);
        if (nmismatch > LIST_MAX) graft_strbuf_printf(&sb, " ... and %zu more size mismatches.", nmismatch - LIST_MAX);
        s = graft_error(nmismatch ? GRAFT_ERR_SHAPE : GRAFT_ERR_NOTFOUND, "%s", sb.data ? sb.data : "state_dict mismatch");
        graft_strbuf_free(&sb);
    } else {
        for (size_t i = 0; i < m->nstate; i++)
            if (!skipped(m->state[i].name, skip1, skip2))
                graft_tensor_copy_data(m->state[i].value, graft_tensor_map_get(state, m->state[i].name));
    }
    graft_strbuf_free(&mismatches);
    free(missing);
    free(unexpected);
    return s;
}

graft_status graft_model_load_state(graft_model *m, const graft_tensor_map *state) {
    return load_all_but(m, state, NULL, NULL);
}

graft_status graft_model_load_safetensors(graft_model *m, const char *path) {
    graft_tensor_map *state;
    graft_status s = graft_safetensors_load(path, &state);
    if (s) return s;
    s = graft_model_load_state(m, state);
    graft_tensor_map_free(state);
    if (s) return graft_error_prefix(s, "%s", path);
    return GRAFT_OK;
}

graft_status graft_model_load_file(graft_model *m, const char *path, int flags) {
    graft_tensor_map *state;
    graft_status s = graft_weights_load(path, &state);
    if (s) return s;
    if (flags & GRAFT_LOAD_NEW_HEAD) {
        char wkey[256], bkey[256];
        snprintf(wkey, sizeof wkey, "%s.weight", m->head_path);
        snprintf(bkey, sizeof bkey, "%s.bias", m->head_path);
        const graft_tensor *have = graft_model_state_get(m, wkey), *got = graft_tensor_map_get(state, wkey);
        if (have && got && !graft_tensor_same_shape(have, got)) {
            /* Drop the checkpoint's head: the model keeps its fresh one. */
            int64_t checkpoint_classes = got->shape[0]; /* got dies with the map */
            graft_tensor_map *kept;
            if ((s = graft_tensor_map_create(&kept))) goto done;
            for (size_t i = 0; i < graft_tensor_map_size(state) && !s; i++) {
                const char *name = graft_tensor_map_name(state, i);
                if (strcmp(name, wkey) && strcmp(name, bkey))
                    s = graft_tensor_map_put_copy(kept, name, graft_tensor_map_tensor(state, i));
            }
            graft_tensor_map_free(state);
            state = kept;
            if (s) goto done;
            s = load_all_but(m, state, wkey, bkey);
            if (!s)
                graft_log(0, "%s was freshly initialised: the checkpoint's head has %lld outputs, the model %lld",
                          m->head_path, (long long)checkpoint_classes, (long long)have->shape[0]);
            goto done;
        }
    }
    s = graft_model_load_state(m, state);
done:
    graft_tensor_map_free(state);
    if (s) return graft_error_prefix(s, "%s", path);
    return GRAFT_OK;
}

/* A new tensor struct viewing t's data (freeing it leaves the data alone). */
static graft_status view_of(const graft_tensor *t, graft_tensor **out) {
    *out = malloc(sizeof **out);
    if (!*out) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    graft_tensor_init(*out, t->dtype);
    return graft_tensor_view(*out, t, t->ndim, t->shape);
}

static graft_status state_dict(const graft_model *m, bool views, graft_tensor_map **out) {
    graft_tensor_map *map;
    graft_status s = graft_tensor_map_create(&map);
    if (s) return s;
    for (size_t i = 0; i < m->nstate && !s; i++) {
        if (!views) {
            s = graft_tensor_map_put_copy(map, m->state[i].name, m->state[i].value);
            continue;
        }
        graft_tensor *v;
        if (!(s = view_of(m->state[i].value, &v))) s = graft_tensor_map_put(map, m->state[i].name, v);
    }
    if (s) {
        graft_tensor_map_free(map);
        return s;
    }
    *out = map;
    return GRAFT_OK;
}

graft_status graft_model_state_dict(const graft_model *m, graft_tensor_map **out) { return state_dict(m, false, out); }

graft_status graft_model_state_view(const graft_model *m, graft_tensor_map **out) { return state_dict(m, true, out); }

graft_status graft_model_save_safetensors(const graft_model *m, const char *path) {
    graft_tensor_map *map;
    graft_status s = graft_model_state_view(m, &map);
    if (s) return s;
    s = graft_safetensors_save(path, map);
    graft_tensor_map_free(map);
    return s;
}
