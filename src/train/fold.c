/* fold.c — folding pooled replicas into the first Linear layer (derivation in fold.h). */
#include "train/fold.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/threads.h"
#include "nn/layers.h"
#include "nn/model.h"
#include "ops/ops.h"

/* W_f[o, ci*hw + p] = sum of W[o, ci*ohow + q] over the output cells q copying cell p. */
static void fold_weights(graft_fold *f) {
    graft_linear_fold_replicas(f->linear->params[0].value.shape[0], f->c, f->h, f->w, f->oh, f->ow,
                               f->linear->params[0].value.data, f->folded->params[0].value.data);
    graft_tensor_copy_data(&f->wf0, &f->folded->params[0].value);
}

/* The step list position of an AdaptiveAvgPool2d followed by Flatten and a Linear (or a
 * Sequential starting with one); -1 when the model has none. */
static int find_pool(graft_module *const *steps, int n, graft_module **linear) {
    for (int i = 0; i + 2 < n; i++) {
        if (!graft_module_is(steps[i], "AdaptiveAvgPool2d") || !graft_module_is(steps[i + 1], "Flatten")) continue;
        graft_module *next = steps[i + 2];
        if (graft_module_is(next, "Linear")) *linear = next;
        else if (graft_module_is(next, "Sequential") && next->nchildren && graft_module_is(next->children[0], "Linear"))
            *linear = next->children[0];
        else
            continue;
        return i;
    }
    return -1;
}

static graft_status off(graft_fold *f, const char *why) {
    snprintf(f->note, sizeof f->note, "off: %s", why);
    return GRAFT_OK;
}

graft_status graft_fold_setup(graft_fold *f, graft_model *m, const int chw[3], graft_optim_kind kind,
                              double weight_decay, bool enabled) {
    memset(f, 0, sizeof *f);
    graft_tensor_init(&f->wf0, GRAFT_F32);
    graft_tensor_init(&f->probe, GRAFT_F32);
    graft_tensor_init(&f->probe_grad, GRAFT_F32);
    if (!enabled) return off(f, "--no-fold");
    graft_module *const *steps = graft_model_steps(m);
    int nsteps = graft_model_nsteps(m);
    graft_module *linear = NULL;
    int pool = find_pool(steps, nsteps, &linear);
    if (pool < 0) return off(f, "no AdaptiveAvgPool2d, Flatten, Linear in the model");
    if (linear->params[0].frozen) return off(f, "the Linear after the pool is frozen");
    if (kind == GRAFT_OPTIM_ADAM && weight_decay > 0) return off(f, "Adam's L2 weight decay is not exact folded");
    /* the pool's input and output shapes for this input size */
    int64_t shape[4] = {1, chw[0], chw[1], chw[2]};
    graft_tensor *x;
    graft_status s = graft_tensor_create(GRAFT_F32, 4, shape, &x);
    if (s) return s;
    graft_tensor *in, *out;
    s = graft_model_forward_steps(m, NULL, 0, 0, pool, x, &in);
    int64_t c = 0, h = 0, w = 0;
    if (!s) c = in->shape[1], h = in->shape[2], w = in->shape[3];
    if (!s) s = graft_model_forward_steps(m, NULL, 0, pool, pool + 1, in, &out);
    if (!s) f->oh = out->shape[2], f->ow = out->shape[3];
    graft_tensor_free(x);
    if (s) return s;
    if (f->oh % h || f->ow % w || f->oh * f->ow == h * w)
        return off(f, "the pool averages instead of only replicating");
    f->c = c, f->h = h, f->w = w, f->n = (f->oh / h) * (f->ow / w);
    f->linear = linear;
    char path[200];
    graft_module_path(linear, path, sizeof path);
    snprintf(f->weight_name, sizeof f->weight_name, "%s.weight", path);
    snprintf(f->bias_name, sizeof f->bias_name, "%s.bias", path);
    int64_t outs = linear->params[0].value.shape[0];
    bool bias = linear->nparams > 1;
    f->folded = graft_linear_new(c * h * w, outs, bias);
    f->flatten = graft_flatten_new();
    int extra = graft_module_is(steps[pool + 2], "Sequential") ? steps[pool + 2]->nchildren - 1 : 0;
    f->nsteps = pool + 2 + extra + (nsteps - pool - 3);
    f->steps = calloc((size_t)f->nsteps, sizeof *f->steps);
    int64_t one[1] = {1};
    if (!f->folded || !f->flatten || !f->steps || (s = graft_tensor_resize(&f->wf0, 2, f->folded->params[0].value.shape)) ||
        (s = graft_tensor_resize(&f->probe, 1, one)) || (s = graft_tensor_resize(&f->probe_grad, 1, one))) {
        graft_fold_free(f);
        return s ? s : graft_error(GRAFT_ERR_NOMEM, "out of memory folding %s", path);
    }
    if (bias) { /* the folded layer updates the model's bias itself */
        int64_t bs[1] = {outs};
        if ((s = graft_tensor_view(&f->folded->params[1].value, &linear->params[1].value, 1, bs))) {
            graft_fold_free(f);
            return s;
        }
    }
    int k = 0;
    for (int i = 0; i < pool; i++) f->steps[k++] = steps[i];
    f->steps[k++] = f->flatten;
    f->steps[k++] = f->folded;
    for (int i = 1; i <= extra; i++) f->steps[k++] = steps[pool + 2]->children[i];
    for (int i = pool + 3; i < nsteps; i++) f->steps[k++] = steps[i];
    ((float *)f->probe.data)[0] = 1.0f;
    fold_weights(f);
    f->active = true;
    snprintf(f->note, sizeof f->note, "on: %.80s folded from %lldx%lldx%lld inputs (%lld replicas each)", path,
             (long long)c, (long long)f->oh, (long long)f->ow, (long long)f->n);
    return GRAFT_OK;
}

void graft_fold_free(graft_fold *f) {
    graft_module_free(f->folded);
    graft_module_free(f->flatten);
    free(f->steps);
    graft_tensor_release(&f->wf0);
    graft_tensor_release(&f->probe);
    graft_tensor_release(&f->probe_grad);
    memset(f, 0, sizeof *f);
}

graft_status graft_fold_optim_params(const graft_fold *f, graft_model *m, const char *head_path,
                                     graft_optim_param **list, size_t *n) {
    size_t cap = graft_model_state_size(m) + 1, k = 0;
    graft_optim_param *l = calloc(cap, sizeof *l);
    if (!l) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    size_t hl = head_path ? strlen(head_path) : 0;
    int weight_group = 0;
    for (size_t i = 0; i < graft_model_state_size(m); i++) {
        graft_param *p = graft_model_state_param(m, i);
        if (!p || p->frozen) continue;
        const char *name = graft_model_state_name(m, i);
        int group = head_path && !strncmp(name, head_path, hl) && name[hl] == '.' ? 1 : 0;
        graft_optim_param op = {NULL, &p->value, &p->grad, &p->frozen, group, 1.0};
        char buf[300];
        snprintf(buf, sizeof buf, "%s", name);
        if (!strcmp(name, f->weight_name)) {
            snprintf(buf, sizeof buf, "%s%s", name, GRAFT_FOLD_SUFFIX);
            op = (graft_optim_param){NULL, &f->folded->params[0].value, &f->folded->params[0].grad,
                                     &f->folded->params[0].frozen, group, (double)f->n};
            weight_group = group;
        } else if (!strcmp(name, f->bias_name)) {
            op.grad = &f->folded->params[1].grad;
        }
        if (!(op.name = strdup(buf))) goto nomem;
        l[k++] = op;
    }
    l[k] = (graft_optim_param){strdup(GRAFT_FOLD_PROBE_NAME), (graft_tensor *)&f->probe, &f->probe_grad, NULL,
                               weight_group, 1.0};
    if (!l[k++].name) goto nomem;
    *list = l;
    *n = k;
    return GRAFT_OK;
nomem:
    for (size_t i = 0; i < k; i++) free((char *)l[i].name);
    free(l);
    return graft_error(GRAFT_ERR_NOMEM, "out of memory");
}

/* W[o, ci*ohow + q] = a W + (W_f - a W_f0)[o, ci*hw + p(q)] / n for rows [begin, end). */
typedef struct reorigin_arg {
    graft_fold *f;
    double a;
} reorigin_arg;

/* Each unfolded weight moves to a * w + (wf - a * wf0) / n, where wf, wf0 are the folded
 * weight it replicates (cell p of the small map) now and at the origin: the second term is
 * worked out once per folded weight and added to the ry x rx block of cells copying p, as
 * graft_linear_fold_replicas walks them, with no division per unfolded weight. */
static void reorigin_rows(void *arg, int64_t begin, int64_t end) {
    graft_fold *f = ((reorigin_arg *)arg)->f;
    double a = ((reorigin_arg *)arg)->a;
    float *w = f->linear->params[0].value.data;
    const float *wf = f->folded->params[0].value.data, *wf0 = f->wf0.data;
    int64_t in = f->c * f->oh * f->ow, fin = f->c * f->h * f->w;
    int64_t ry = f->oh / f->h, rx = f->ow / f->w;
    for (int64_t o = begin; o < end; o++)
        for (int64_t ci = 0; ci < f->c; ci++) {
            float *wc = &w[o * in + ci * f->oh * f->ow];
            const float *wfc = &wf[o * fin + ci * f->h * f->w], *wf0c = &wf0[o * fin + ci * f->h * f->w];
            for (int64_t y = 0; y < f->h; y++)
                for (int64_t x = 0; x < f->w; x++) {
                    int64_t p = y * f->w + x;
                    double shift = ((double)wfc[p] - a * wf0c[p]) / (double)f->n;
                    for (int64_t qy = y * ry; qy < (y + 1) * ry; qy++)
                        for (int64_t qx = x * rx; qx < (x + 1) * rx; qx++) {
                            float *wk = &wc[qy * f->ow + qx];
                            *wk = (float)(a * *wk + shift);
                        }
                }
        }
}

graft_status graft_fold_reorigin(graft_fold *f, graft_optim *opt) {
    if (!f->active) return GRAFT_OK;
    double a = ((float *)f->probe.data)[0];
    if (a == 0) return graft_error(GRAFT_ERR_INVALID, "folding: weight decay zeroed the weights (lr * wd = 1)");
    reorigin_arg ra = {f, a};
    graft_parallel_for(f->linear->params[0].value.shape[0], 16, reorigin_rows, &ra);
    fold_weights(f);
    float *buf = graft_optim_state_buffer(opt, GRAFT_FOLD_PROBE_NAME);
    if (buf) buf[0] = (float)(buf[0] / a); /* the momentum's coefficient of the new origin */
    ((float *)f->probe.data)[0] = 1.0f;
    return GRAFT_OK;
}
