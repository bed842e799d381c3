/* layers.c — torch.nn layers as graft modules: shape checks at the boundary (naming
 * the layer and both shapes), then the kernels of src/ops. */
#include "nn/layers.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "ops/ops.h"

#define SHAPE_BYTES 96

static void shape_of(const graft_tensor *t, char *buf) { graft_shape_str(t->ndim, t->shape, buf, SHAPE_BYTES); }

static graft_status resize4(graft_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d) {
    int64_t s[4] = {a, b, c, d};
    return graft_tensor_resize(t, 4, s);
}

static graft_status resize2(graft_tensor *t, int64_t a, int64_t b) {
    int64_t s[2] = {a, b};
    return graft_tensor_resize(t, 2, s);
}

/* Gradient pointer of a parameter, or NULL when it is frozen (or absent). */
static graft_status grad_or_null(graft_module *m, int i, float **g) {
    *g = NULL;
    if (i >= m->nparams || m->params[i].frozen) return GRAFT_OK;
    return graft_param_grad(&m->params[i], g);
}

static void pyfloat(graft_strbuf *sb, double v) {
    char buf[40];
    graft_format_pyfloat(v, buf, sizeof buf);
    graft_strbuf_append(sb, buf);
}

bool graft_module_is(const graft_module *m, const char *type_name) {
    return strcmp(m->type->name, type_name) == 0;
}

/* ---- Conv2d ---------------------------------------------------------------- */

typedef struct conv_cfg {
    int64_t sh, sw, ph, pw;
} conv_cfg;

static graft_status conv_geom(graft_module *m, const graft_tensor *x, graft_conv2d_geom *g) {
    const graft_tensor *w = &m->params[0].value; /* [oc, c, kh, kw] */
    const conv_cfg *cfg = m->cfg;
    char xs[SHAPE_BYTES], ws[SHAPE_BYTES];
    if (x->ndim != 4 || x->shape[1] != w->shape[1]) {
        shape_of(x, xs);
        shape_of(w, ws);
        return graft_module_error(m, GRAFT_ERR_SHAPE,
                                  "expected input [N, %lld, H, W] for weight %s, got %s",
                                  (long long)w->shape[1], ws, xs);
    }
    *g = (graft_conv2d_geom){.n = x->shape[0], .c = x->shape[1], .h = x->shape[2], .w = x->shape[3],
                             .oc = w->shape[0], .kh = w->shape[2], .kw = w->shape[3],
                             .sh = cfg->sh, .sw = cfg->sw, .ph = cfg->ph, .pw = cfg->pw};
    graft_status s = graft_conv2d_geom_init(g);
    if (s) {
        char path[256];
        graft_module_path(m, path, sizeof path);
        shape_of(x, xs);
        return graft_error_prefix(s, "%s (Conv2d) with input %s", path[0] ? path : "model", xs);
    }
    return GRAFT_OK;
}

/* The forward, with the ReLU that follows applied to the output when relu is set. */
static graft_status conv_run(graft_module *m, graft_ctx *ctx, graft_tensor *in, bool relu, graft_tensor **out) {
    graft_conv2d_geom g;
    graft_status s = conv_geom(m, in, &g);
    if (s) return s;
    g.relu = relu;
    if ((s = resize4(&m->out, g.n, g.oc, g.oh, g.ow))) return s;
    const float *b = m->nparams > 1 ? m->params[1].value.data : NULL;
    const float *w = m->params[0].value.data;
    if ((s = m->weights_held ? graft_conv2d_forward_held(ctx, &g, in->data, w, b, m->out.data,
                                                         (graft_conv2d_held **)&m->aux)
                             : graft_conv2d_forward(ctx, &g, in->data, w, b, m->out.data)))
        return s;
    *out = &m->out;
    return GRAFT_OK;
}

static graft_status conv_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    return conv_run(m, ctx, in, false, out);
}

static graft_status conv_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx) {
    graft_conv2d_geom g;
    graft_status s = conv_geom(m, m->in, &g);
    if (s) return s;
    float *dw, *db, *dxp = NULL;
    if ((s = grad_or_null(m, 0, &dw)) || (s = grad_or_null(m, 1, &db))) return s;
    if (m->need_dx) {
        if ((s = graft_tensor_resize(&m->dx, 4, m->in->shape))) return s;
        dxp = m->dx.data;
        *dx = &m->dx;
    }
    return graft_conv2d_backward(ctx, &g, m->in->data, m->params[0].value.data, dy->data, dxp, dw, db);
}

static void conv_repr(const graft_module *m, graft_strbuf *sb) {
    const graft_tensor *w = &m->params[0].value;
    const conv_cfg *c = m->cfg;
    graft_strbuf_printf(sb, "%lld, %lld, kernel_size=(%lld, %lld), stride=(%lld, %lld)",
                        (long long)w->shape[1], (long long)w->shape[0], (long long)w->shape[2],
                        (long long)w->shape[3], (long long)c->sh, (long long)c->sw);
    if (c->ph || c->pw) graft_strbuf_printf(sb, ", padding=(%lld, %lld)", (long long)c->ph, (long long)c->pw);
    if (m->nparams < 2) graft_strbuf_append(sb, ", bias=False");
}

static void free_cfg(graft_module *m) {
    free(m->cfg);
    free(m->aux);
}

static void conv_destroy(graft_module *m) {
    free(m->cfg);
    graft_conv2d_held_free(m->aux); /* the weights' transform, while held */
}

static const graft_module_type conv2d_type = {"Conv2d", conv_forward, conv_backward, conv_repr, conv_destroy};

void graft_module_hold_weights(graft_module *m, bool hold) {
    m->weights_held = hold;
    if (!hold && m->type == &conv2d_type) {
        graft_conv2d_held_free(m->aux);
        m->aux = NULL;
    }
    for (int i = 0; i < m->nchildren; i++) graft_module_hold_weights(m->children[i], hold);
}

graft_module *graft_conv2d_new(int64_t in, int64_t out, int64_t kh, int64_t kw, int64_t sh,
                               int64_t sw, int64_t ph, int64_t pw, bool bias) {
    if (in <= 0 || out <= 0 || kh <= 0 || kw <= 0 || sh <= 0 || sw <= 0 || ph < 0 || pw < 0) {
        graft_error(GRAFT_ERR_INVALID, "Conv2d(%lld, %lld, kernel_size=(%lld, %lld), stride=(%lld, %lld), padding=(%lld, %lld)): sizes must be positive",
                    (long long)in, (long long)out, (long long)kh, (long long)kw, (long long)sh,
                    (long long)sw, (long long)ph, (long long)pw);
        return NULL;
    }
    conv_cfg *cfg = malloc(sizeof *cfg);
    if (!cfg) {
        graft_error(GRAFT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    *cfg = (conv_cfg){sh, sw, ph, pw};
    graft_module *m = graft_module_new(&conv2d_type, cfg);
    if (!m) {
        free(cfg);
        return NULL;
    }
    int64_t ws[4] = {out, in, kh, kw}, bs[1] = {out};
    if (graft_module_add_param(m, "weight", GRAFT_F32, 4, ws) ||
        (bias && graft_module_add_param(m, "bias", GRAFT_F32, 1, bs))) {
        graft_module_free(m);
        return NULL;
    }
    return m;
}

/* ---- Linear ---------------------------------------------------------------- */

static graft_status linear_check(graft_module *m, const graft_tensor *x) {
    const graft_tensor *w = &m->params[0].value; /* [out, in] */
    if (x->ndim != 2 || x->shape[1] != w->shape[1]) {
        char xs[SHAPE_BYTES], ws[SHAPE_BYTES];
        shape_of(x, xs);
        shape_of(w, ws);
        return graft_module_error(m, GRAFT_ERR_SHAPE,
                                  "input %s does not fit weight %s (expected [N, %lld])", xs, ws,
                                  (long long)w->shape[1]);
    }
    return GRAFT_OK;
}

static graft_status linear_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    graft_status s = linear_check(m, in);
    if (s) return s;
    const graft_tensor *w = &m->params[0].value;
    int64_t n = in->shape[0], nin = w->shape[1], nout = w->shape[0];
    if ((s = resize2(&m->out, n, nout))) return s;
    const float *b = m->nparams > 1 ? m->params[1].value.data : NULL;
    graft_linear_forward(ctx, n, nin, nout, in->data, w->data, b, m->out.data);
    *out = &m->out;
    return GRAFT_OK;
}

/* With a sink on the weight (the trainer's fused update), the input gradient is computed
 * first, from the weight as it was, and then the weight gradient goes to the sink, which
 * may update the weight as it arrives. */
static graft_status linear_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx) {
    graft_param *wp = &m->params[0];
    const graft_tensor *w = &wp->value;
    int64_t n = m->in->shape[0], nin = w->shape[1], nout = w->shape[0];
    float *g[2] = {NULL, NULL}, *dxp = NULL;
    bool set[2] = {false, false}; /* a zero gradient: written whole rather than added to */
    graft_status s;
    bool sink = graft_param_may_sink(wp);
    for (int i = sink ? 1 : 0; i < m->nparams && i < 2; i++)
        if (!m->params[i].frozen && (s = graft_param_grad_for_write(&m->params[i], &g[i], &set[i]))) return s;
    if (m->need_dx) {
        if ((s = resize2(&m->dx, n, nin))) return s;
        dxp = m->dx.data;
        *dx = &m->dx;
    }
    graft_linear_backward_ex(ctx, n, nin, nout, m->in->data, w->data, dy->data, dxp, g[0], g[1], set[0], set[1]);
    if (sink) {
        if (graft_linear_weight_grad_to_sink(ctx, n, nin, nout, m->in->data, dy->data, wp->sink)) {
            wp->grad_sunk = true;
        } else { /* no kernel for it here: into memory after all */
            if ((s = graft_param_grad_for_write(wp, &g[0], &set[0]))) return s;
            graft_linear_backward_ex(ctx, n, nin, nout, m->in->data, w->data, dy->data, NULL, g[0], NULL, set[0],
                                     false);
        }
    }
    return GRAFT_OK;
}

static void linear_repr(const graft_module *m, graft_strbuf *sb) {
    const graft_tensor *w = &m->params[0].value;
    graft_strbuf_printf(sb, "in_features=%lld, out_features=%lld, bias=%s", (long long)w->shape[1],
                        (long long)w->shape[0], m->nparams > 1 ? "True" : "False");
}

static void linear_destroy(graft_module *m) { graft_tensor_free(m->aux); } /* the folded weight, if any */

static const graft_module_type linear_type = {"Linear", linear_forward, linear_backward, linear_repr,
                                              linear_destroy};

graft_module *graft_linear_new(int64_t in, int64_t out, bool bias) {
    if (in <= 0 || out <= 0) {
        graft_error(GRAFT_ERR_INVALID, "Linear(in_features=%lld, out_features=%lld): sizes must be positive",
                    (long long)in, (long long)out);
        return NULL;
    }
    graft_module *m = graft_module_new(&linear_type, NULL);
    if (!m) return NULL;
    int64_t ws[2] = {out, in}, bs[1] = {out};
    if (graft_module_add_param(m, "weight", GRAFT_F32, 2, ws) ||
        (bias && graft_module_add_param(m, "bias", GRAFT_F32, 1, bs))) {
        graft_module_free(m);
        return NULL;
    }
    return m;
}

/* ---- ReLU ------------------------------------------------------------------ */

typedef struct relu_cfg {
    bool inplace;
} relu_cfg;

static graft_status relu_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    (void)ctx;
    const relu_cfg *cfg = m->cfg;
    graft_status s = cfg->inplace ? graft_tensor_view(&m->out, in, in->ndim, in->shape)
                                  : graft_tensor_resize(&m->out, in->ndim, in->shape);
    if (s) return s;
    graft_relu_forward(graft_tensor_numel(in), in->data, m->out.data);
    *out = &m->out;
    return GRAFT_OK;
}

static graft_status relu_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx) {
    (void)ctx;
    if (!m->need_dx) return GRAFT_OK;
    /* dx overwrites dy: the upstream gradient is not needed afterwards. */
    graft_status s = graft_tensor_view(&m->dx, dy, dy->ndim, dy->shape);
    if (s) return s;
    graft_relu_backward(graft_tensor_numel(dy), m->out.data, dy->data, m->dx.data);
    *dx = &m->dx;
    return GRAFT_OK;
}

static void relu_repr(const graft_module *m, graft_strbuf *sb) {
    const relu_cfg *cfg = m->cfg;
    if (cfg->inplace) graft_strbuf_append(sb, "inplace=True");
}

static const graft_module_type relu_type = {"ReLU", relu_forward, relu_backward, relu_repr, free_cfg};

graft_module *graft_relu_new(bool inplace) {
    relu_cfg *cfg = malloc(sizeof *cfg);
    if (!cfg) {
        graft_error(GRAFT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    cfg->inplace = inplace;
    graft_module *m = graft_module_new(&relu_type, cfg);
    if (!m) free(cfg);
    return m;
}

/* ---- MaxPool2d ------------------------------------------------------------- */

typedef struct maxpool_cfg {
    int64_t k, s, p;
    bool ceil_mode;
} maxpool_cfg;

typedef struct maxpool_aux {
    int32_t *argmax;
    size_t capacity;
} maxpool_aux;

static graft_status maxpool_geom(graft_module *m, const graft_tensor *x, graft_pool2d_geom *g) {
    const maxpool_cfg *c = m->cfg;
    char xs[SHAPE_BYTES];
    shape_of(x, xs);
    if (x->ndim != 4)
        return graft_module_error(m, GRAFT_ERR_SHAPE, "expected input [N, C, H, W], got %s", xs);
    *g = (graft_pool2d_geom){.n = x->shape[0], .c = x->shape[1], .h = x->shape[2], .w = x->shape[3],
                             .kh = c->k, .kw = c->k, .sh = c->s, .sw = c->s, .ph = c->p, .pw = c->p,
                             .ceil_mode = c->ceil_mode};
    graft_status s = graft_maxpool2d_geom_init(g);
    if (s) {
        char path[256];
        graft_module_path(m, path, sizeof path);
        return graft_error_prefix(s, "%s (MaxPool2d) with input %s", path[0] ? path : "model", xs);
    }
    return GRAFT_OK;
}

static graft_status maxpool_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    (void)ctx;
    graft_pool2d_geom g;
    graft_status s = maxpool_geom(m, in, &g);
    if (s) return s;
    if ((s = resize4(&m->out, g.n, g.c, g.oh, g.ow))) return s;
    maxpool_aux *aux = m->aux;
    size_t need = (size_t)graft_tensor_numel(&m->out);
    if (need > aux->capacity) {
        int32_t *p = realloc(aux->argmax, need * sizeof *p);
        if (!p) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
        aux->argmax = p;
        aux->capacity = need;
    }
    graft_maxpool2d_forward(&g, in->data, m->out.data, aux->argmax);
    *out = &m->out;
    return GRAFT_OK;
}

static graft_status maxpool_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx) {
    (void)ctx;
    if (!m->need_dx) return GRAFT_OK;
    graft_pool2d_geom g;
    graft_status s = maxpool_geom(m, m->in, &g);
    if (s) return s;
    if ((s = graft_tensor_resize(&m->dx, 4, m->in->shape))) return s;
    graft_maxpool2d_backward(&g, ((maxpool_aux *)m->aux)->argmax, dy->data, m->dx.data);
    *dx = &m->dx;
    return GRAFT_OK;
}

static void maxpool_repr(const graft_module *m, graft_strbuf *sb) {
    const maxpool_cfg *c = m->cfg;
    graft_strbuf_printf(sb, "kernel_size=%lld, stride=%lld, padding=%lld, dilation=1, ceil_mode=%s",
                        (long long)c->k, (long long)c->s, (long long)c->p, c->ceil_mode ? "True" : "False");
}

static void maxpool_destroy(graft_module *m) {
    maxpool_aux *aux = m->aux;
    if (aux) free(aux->argmax);
    free_cfg(m);
}

static const graft_module_type maxpool_type = {"MaxPool2d", maxpool_forward, maxpool_backward, maxpool_repr,
                                               maxpool_destroy};

graft_module *graft_maxpool2d_new(int64_t k, int64_t s, int64_t p, bool ceil_mode) {
    if (k <= 0 || s <= 0 || p < 0 || p > k / 2) {
        graft_error(GRAFT_ERR_INVALID,
                    "MaxPool2d(kernel_size=%lld, stride=%lld, padding=%lld): kernel and stride must be positive and padding at most half the kernel",
                    (long long)k, (long long)s, (long long)p);
        return NULL;
    }
    maxpool_cfg *cfg = malloc(sizeof *cfg);
    maxpool_aux *aux = calloc(1, sizeof *aux);
    graft_module *m = cfg && aux ? graft_module_new(&maxpool_type, cfg) : NULL;
    if (!m) {
        free(cfg);
        free(aux);
        graft_error(GRAFT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    *cfg = (maxpool_cfg){k, s, p, ceil_mode};
    m->aux = aux;
    return m;
}

/* ---- AdaptiveAvgPool2d ----------------------------------------------------- */

typedef struct adaptive_cfg {
    int64_t oh, ow;
} adaptive_cfg;

static graft_status adaptive_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    (void)ctx;
    const adaptive_cfg *c = m->cfg;
    if (in->ndim != 4 || in->shape[2] <= 0 || in->shape[3] <= 0) {
        char xs[SHAPE_BYTES];
        shape_of(in, xs);
        return graft_module_error(m, GRAFT_ERR_SHAPE, "expected input [N, C, H, W] with H, W > 0, got %s", xs);
    }
    graft_status s = resize4(&m->out, in->shape[0], in->shape[1], c->oh, c->ow);
    if (s) return s;
    graft_adaptive_avgpool2d_forward(in->shape[0], in->shape[1], in->shape[2], in->shape[3], c->oh, c->ow,
                                     in->data, m->out.data);
    *out = &m->out;
    return GRAFT_OK;
}

static graft_status adaptive_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx) {
    (void)ctx;
    if (!m->need_dx) return GRAFT_OK;
    const adaptive_cfg *c = m->cfg;
    const graft_tensor *in = m->in;
    graft_status s = graft_tensor_resize(&m->dx, 4, in->shape);
    if (s) return s;
    graft_adaptive_avgpool2d_backward(in->shape[0], in->shape[1], in->shape[2], in->shape[3], c->oh, c->ow,
                                      dy->data, m->dx.data);
    *dx = &m->dx;
    return GRAFT_OK;
}

static void adaptive_repr(const graft_module *m, graft_strbuf *sb) {
    const adaptive_cfg *c = m->cfg;
    graft_strbuf_printf(sb, "output_size=(%lld, %lld)", (long long)c->oh, (long long)c->ow);
}

static const graft_module_type adaptive_type = {"AdaptiveAvgPool2d", adaptive_forward, adaptive_backward,
                                                adaptive_repr, free_cfg};

graft_module *graft_adaptive_avgpool2d_new(int64_t oh, int64_t ow) {
    if (oh <= 0 || ow <= 0) {
        graft_error(GRAFT_ERR_INVALID, "AdaptiveAvgPool2d(output_size=(%lld, %lld)): sizes must be positive",
                    (long long)oh, (long long)ow);
        return NULL;
    }
    adaptive_cfg *cfg = malloc(sizeof *cfg);
    graft_module *m = cfg ? graft_module_new(&adaptive_type, cfg) : NULL;
    if (!m) {
        free(cfg);
        graft_error(GRAFT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    *cfg = (adaptive_cfg){oh, ow};
    return m;
}

/* ---- Dropout --------------------------------------------------------------- */

typedef struct dropout_cfg {
    double p;
} dropout_cfg;

typedef struct dropout_aux {
    graft_tensor mask; /* scale factors of the last train-mode forward */
    bool masked;       /* whether the last forward applied the mask */
} dropout_aux;

static graft_status dropout_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    const dropout_cfg *c = m->cfg;
    dropout_aux *aux = m->aux;
    graft_status s;
    aux->masked = m->training && c->p > 0;
    if (!aux->masked) {
        if ((s = graft_tensor_view(&m->out, in, in->ndim, in->shape))) return s;
    } else {
        if ((s = graft_tensor_resize(&m->out, in->ndim, in->shape)) ||
            (s = graft_tensor_resize(&aux->mask, in->ndim, in->shape)))
            return s;
        graft_dropout_forward(graft_tensor_numel(in), (float)c->p, &ctx->rng, in->data, m->out.data,
                              aux->mask.data);
    }
    *out = &m->out;
    return GRAFT_OK;
}

static graft_status dropout_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx) {
    (void)ctx;
    if (!m->need_dx) return GRAFT_OK;
    dropout_aux *aux = m->aux;
    graft_status s = graft_tensor_view(&m->dx, dy, dy->ndim, dy->shape);
    if (s) return s;
    if (aux->masked) graft_dropout_backward(graft_tensor_numel(dy), aux->mask.data, dy->data, m->dx.data);
    *dx = &m->dx;
    return GRAFT_OK;
}

static void dropout_repr(const graft_module *m, graft_strbuf *sb) {
    const dropout_cfg *c = m->cfg;
    graft_strbuf_append(sb, "p=");
    pyfloat(sb, c->p);
    graft_strbuf_append(sb, ", inplace=False");
}

static void dropout_destroy(graft_module *m) {
    dropout_aux *aux = m->aux;
    if (aux) graft_tensor_release(&aux->mask);
    free_cfg(m);
}

static const graft_module_type dropout_type = {"Dropout", dropout_forward, dropout_backward, dropout_repr,
                                               dropout_destroy};

graft_module *graft_dropout_new(double p) {
    if (!(p >= 0 && p <= 1)) {
        graft_error(GRAFT_ERR_INVALID, "dropout probability has to be between 0 and 1, but got %g", p);
        return NULL;
    }
    dropout_cfg *cfg = malloc(sizeof *cfg);
    dropout_aux *aux = calloc(1, sizeof *aux);
    graft_module *m = cfg && aux ? graft_module_new(&dropout_type, cfg) : NULL;
    if (!m) {
        free(cfg);
        free(aux);
        graft_error(GRAFT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    cfg->p = p;
    graft_tensor_init(&aux->mask, GRAFT_F32);
    m->aux = aux;
    return m;
}

double graft_dropout_p(const graft_module *m) {
    return m->type == &dropout_type ? ((const dropout_cfg *)m->cfg)->p : 0.0;
}

bool graft_dropout_set_p(graft_module *m, double p) {
    if (m->type != &dropout_type || !(p >= 0 && p <= 1)) return false;
    ((dropout_cfg *)m->cfg)->p = p;
    return true;
}

/* ---- BatchNorm2d ----------------------------------------------------------- */

typedef struct bn_cfg {
    double eps, momentum;
} bn_cfg;

typedef struct bn_aux {
    graft_tensor save_mean, save_invstd; /* [c], from the last batch-statistics forward */
    bool batch_stats;                    /* whether the last forward used them */
} bn_aux;

static graft_status bn_check(graft_module *m, const graft_tensor *x) {
    int64_t c = m->params[0].value.shape[0];
    if (x->ndim != 4 || x->shape[1] != c) {
        char xs[SHAPE_BYTES];
        shape_of(x, xs);
        return graft_module_error(m, GRAFT_ERR_SHAPE, "expected input [N, %lld, H, W], got %s", (long long)c, xs);
    }
    return GRAFT_OK;
}

static graft_status bn_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    (void)ctx;
    const bn_cfg *c = m->cfg;
    bn_aux *aux = m->aux;
    graft_status s = bn_check(m, in);
    if (s) return s;
    int64_t n = in->shape[0], ch = in->shape[1], hw = in->shape[2] * in->shape[3];
    if ((s = graft_tensor_resize(&m->out, 4, in->shape))) return s;
    float *gamma = m->params[0].value.data, *beta = m->params[1].value.data;
    float *rmean = m->buffers[0].value.data, *rvar = m->buffers[1].value.data;
    /* Frozen BatchNorm keeps its running statistics: see layers.h. */
    aux->batch_stats = m->training && !graft_module_own_params_frozen(m);
    if (aux->batch_stats) {
        if (n * hw <= 1) {
            char xs[SHAPE_BYTES];
            shape_of(in, xs);
            return graft_module_error(m, GRAFT_ERR_SHAPE,
                                      "expected more than 1 value per channel when training, got input %s", xs);
        }
        int64_t cs[1] = {ch};
        if ((s = graft_tensor_resize(&aux->save_mean, 1, cs)) || (s = graft_tensor_resize(&aux->save_invstd, 1, cs)))
            return s;
        graft_batchnorm2d_forward_train(n, ch, hw, c->eps, c->momentum, in->data, gamma, beta, rmean, rvar,
                                        m->out.data, aux->save_mean.data, aux->save_invstd.data);
        ((int64_t *)m->buffers[2].value.data)[0] += 1; /* num_batches_tracked */
    } else {
        graft_batchnorm2d_forward_eval(n, ch, hw, c->eps, in->data, gamma, beta, rmean, rvar, m->out.data);
    }
    *out = &m->out;
    return GRAFT_OK;
}

static graft_status bn_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx) {
    (void)ctx;
    const bn_cfg *c = m->cfg;
    bn_aux *aux = m->aux;
    const graft_tensor *in = m->in;
    int64_t n = in->shape[0], ch = in->shape[1], hw = in->shape[2] * in->shape[3];
    float *dg, *db, *dxp = NULL;
    graft_status s;
    if ((s = grad_or_null(m, 0, &dg)) || (s = grad_or_null(m, 1, &db))) return s;
    if (m->need_dx) {
        if ((s = graft_tensor_resize(&m->dx, 4, in->shape))) return s;
        dxp = m->dx.data;
        *dx = &m->dx;
    }
    const float *gamma = m->params[0].value.data;
    if (aux->batch_stats)
        graft_batchnorm2d_backward_train(n, ch, hw, in->data, gamma, aux->save_mean.data, aux->save_invstd.data,
                                         dy->data, dxp, dg, db);
    else
        graft_batchnorm2d_backward_eval(n, ch, hw, c->eps, in->data, gamma, m->buffers[0].value.data,
                                        m->buffers[1].value.data, dy->data, dxp, dg, db);
    return GRAFT_OK;
}

static void bn_repr(const graft_module *m, graft_strbuf *sb) {
    const bn_cfg *c = m->cfg;
    graft_strbuf_printf(sb, "%lld, eps=", (long long)m->params[0].value.shape[0]);
    pyfloat(sb, c->eps);
    graft_strbuf_append(sb, ", momentum=");
    pyfloat(sb, c->momentum);
    graft_strbuf_append(sb, ", affine=True, track_running_stats=True");
}

static void bn_destroy(graft_module *m) {
    bn_aux *aux = m->aux;
    if (aux) {
        graft_tensor_release(&aux->save_mean);
        graft_tensor_release(&aux->save_invstd);
    }
    free_cfg(m);
}

static const graft_module_type bn_type = {"BatchNorm2d", bn_forward, bn_backward, bn_repr, bn_destroy};

graft_module *graft_batchnorm2d_new(int64_t c, double eps, double momentum) {
    if (c <= 0 || !(eps > 0) || !(momentum >= 0 && momentum <= 1)) {
        graft_error(GRAFT_ERR_INVALID, "BatchNorm2d(%lld, eps=%g, momentum=%g): invalid arguments", (long long)c,
                    eps, momentum);
        return NULL;
    }
    bn_cfg *cfg = malloc(sizeof *cfg);
    bn_aux *aux = calloc(1, sizeof *aux);
    graft_module *m = cfg && aux ? graft_module_new(&bn_type, cfg) : NULL;
    if (!m) {
        free(cfg);
        free(aux);
        graft_error(GRAFT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    *cfg = (bn_cfg){eps, momentum};
    graft_tensor_init(&aux->save_mean, GRAFT_F32);
    graft_tensor_init(&aux->save_invstd, GRAFT_F32);
    m->aux = aux;
    int64_t cs[1] = {c};
    if (graft_module_add_param(m, "weight", GRAFT_F32, 1, cs) || graft_module_add_param(m, "bias", GRAFT_F32, 1, cs) ||
        graft_module_add_buffer(m, "running_mean", GRAFT_F32, 1, cs) ||
        graft_module_add_buffer(m, "running_var", GRAFT_F32, 1, cs) ||
        graft_module_add_buffer(m, "num_batches_tracked", GRAFT_I64, 0, NULL)) {
        graft_module_free(m);
        return NULL;
    }
    /* PyTorch's reset_parameters: weight 1, bias 0, running_mean 0, running_var 1. */
    float *w = m->params[0].value.data, *rv = m->buffers[1].value.data;
    for (int64_t i = 0; i < c; i++) w[i] = rv[i] = 1.0f;
    return m;
}

/* ---- Flatten --------------------------------------------------------------- */

static graft_status flatten_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    (void)ctx;
    if (in->ndim < 1) return graft_module_error(m, GRAFT_ERR_SHAPE, "cannot flatten a 0-d tensor");
    int64_t shape[2] = {in->shape[0], in->shape[0] ? graft_tensor_numel(in) / in->shape[0] : 0};
    graft_status s = graft_tensor_view(&m->out, in, 2, shape);
    if (s) return s;
    *out = &m->out;
    return GRAFT_OK;
}

static graft_status flatten_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx) {
    (void)ctx;
    if (!m->need_dx) return GRAFT_OK;
    graft_status s = graft_tensor_view(&m->dx, dy, m->in->ndim, m->in->shape);
    if (s) return s;
    *dx = &m->dx;
    return GRAFT_OK;
}

static void flatten_repr(const graft_module *m, graft_strbuf *sb) {
    (void)m;
    graft_strbuf_append(sb, "start_dim=1, end_dim=-1");
}

static const graft_module_type flatten_type = {"Flatten", flatten_forward, flatten_backward, flatten_repr, NULL};

graft_module *graft_flatten_new(void) { return graft_module_new(&flatten_type, NULL); }

/* ---- Sequential and sequences ---------------------------------------------- */

/* Conv2d followed by ReLU(inplace=True), as in VGG's features: the convolution applies
 * the ReLU as it writes its output, and the ReLU's own pass is skipped.  Afterwards both
 * modules hold what the two separate forwards leave (the conv's output buffer, which
 * the in-place ReLU views, rectified), so the backward is unchanged. */
static bool fuses_conv_relu(const graft_module *conv, const graft_module *relu) {
    return conv->type == &conv2d_type && relu->type == &relu_type && ((const relu_cfg *)relu->cfg)->inplace;
}

static graft_status conv_relu_forward(graft_module *conv, graft_module *relu, graft_ctx *ctx, graft_tensor *in,
                                      graft_tensor **out) {
    graft_tensor *y;
    conv->in = in;
    graft_status s = conv_run(conv, ctx, in, true, &y);
    if (s) return s;
    relu->in = y;
    if ((s = graft_tensor_view(&relu->out, y, y->ndim, y->shape))) return s;
    *out = &relu->out;
    return GRAFT_OK;
}

/* AdaptiveAvgPool2d, Flatten, then a Linear (alone, or first in a Sequential) outside
 * training, where the pool only copies cells: VGG on inputs of 32 to 63 pixels copies a
 * 512x1x1 map into 512x7x7, and Linear(25088, 4096) then does 49 times the work of
 * Linear(512, 4096) on the map with each weight's replicas summed (train/fold.h has the
 * algebra).  The forward sums the replicas for the call, one pass over the weight as the
 * unfolded product makes anyway, and multiplies the small map (docs/performance.md).  The
 * result differs from the unfolded product by rounding only.  The pool and Flatten run as
 * usual and the Linear keeps the unfolded input, so a backward afterwards is the usual
 * one.  In training these layers run unfolded, as PyTorch runs them; the trainer folds
 * on its own, with the optimiser (train/fold.h).  Returns the Linear (and in *seq its
 * Sequential, or NULL) where steps[i] starts such a run. */
static graft_module *pooled_linear_at(graft_module *const *steps, int i, int n, graft_module **seq) {
    if (i + 2 >= n || steps[i]->type != &adaptive_type || steps[i + 1]->type != &flatten_type) return NULL;
    graft_module *lin = steps[i + 2];
    *seq = NULL;
    if (graft_module_is(lin, "Sequential") && lin->nchildren > 0) {
        *seq = lin;
        lin = lin->children[0];
    }
    return lin->type == &linear_type && !lin->training ? lin : NULL;
}

/* y = small w_f^T + b for the Linear m, whose input flat is small [N, C, h, w] copied into
 * [N, C * oh * ow]; w_f is kept in m->aux between calls. */
static graft_status linear_forward_folded(graft_module *m, graft_ctx *ctx, const graft_tensor *small,
                                          graft_tensor *flat, int64_t oh, int64_t ow, graft_tensor **out) {
    m->in = flat;
    graft_status s = linear_check(m, flat);
    if (s) return s;
    const graft_tensor *w = &m->params[0].value;
    int64_t n = small->shape[0], c = small->shape[1], h = small->shape[2], wd = small->shape[3];
    int64_t fin = c * h * wd, nout = w->shape[0], fshape[2] = {nout, fin};
    if (!m->aux && (s = graft_tensor_create(GRAFT_F32, 2, fshape, (graft_tensor **)&m->aux))) return s;
    graft_tensor *wf = m->aux;
    if ((s = graft_tensor_resize(wf, 2, fshape)) || (s = resize2(&m->out, n, nout))) return s;
    graft_linear_fold_replicas(nout, c, h, wd, oh, ow, w->data, wf->data);
    const float *b = m->nparams > 1 ? m->params[1].value.data : NULL;
    graft_linear_forward(ctx, n, fin, nout, small->data, wf->data, b, m->out.data);
    *out = &m->out;
    return GRAFT_OK;
}

static graft_status pooled_linear_forward(graft_module *pool, graft_module *flatten, graft_module *seq,
                                          graft_module *lin, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    graft_tensor *pooled, *flat, *y;
    graft_status s = graft_module_forward(pool, ctx, in, &pooled);
    if (!s) s = graft_module_forward(flatten, ctx, pooled, &flat);
    if (s) return s;
    int64_t h = in->shape[2], w = in->shape[3], oh = pooled->shape[2], ow = pooled->shape[3];
    if (seq) seq->in = flat;
    if (oh % h == 0 && ow % w == 0 && oh * ow > h * w)
        s = linear_forward_folded(lin, ctx, in, flat, oh, ow, &y);
    else
        s = graft_module_forward(lin, ctx, flat, &y);
    if (!s && seq && seq->nchildren > 1) s = graft_sequence_forward(seq->children + 1, seq->nchildren - 1, ctx, y, &y);
    if (!s) *out = y;
    return s;
}

graft_status graft_sequence_forward(graft_module *const *steps, int n, graft_ctx *ctx, graft_tensor *in,
                                    graft_tensor **out) {
    graft_tensor *x = in;
    for (int i = 0; i < n; i++) {
        graft_status s;
        graft_module *lin, *seq;
        if (i + 1 < n && fuses_conv_relu(steps[i], steps[i + 1])) {
            s = conv_relu_forward(steps[i], steps[i + 1], ctx, x, &x);
            i++;
        } else if ((lin = pooled_linear_at(steps, i, n, &seq))) {
            s = pooled_linear_forward(steps[i], steps[i + 1], seq, lin, ctx, x, &x);
            i += 2;
        } else {
            s = graft_module_forward(steps[i], ctx, x, &x);
        }
        if (s) return s;
    }
    *out = x;
    return GRAFT_OK;
}

graft_status graft_sequence_backward(graft_module *const *steps, int n, bool need_dx, graft_ctx *ctx,
                                     graft_tensor *dy, graft_tensor **dx) {
    *dx = NULL;
    /* below[i]: whether anything before step i needs a gradient to flow into it */
    bool below = need_dx;
    int lowest_trainable = -1;
    for (int i = 0; i < n; i++)
        if (graft_module_has_trainable(steps[i])) {
            lowest_trainable = i;
            break;
        }
    graft_tensor *g = dy;
    for (int i = n - 1; i >= 0; i--) {
        graft_module *m = steps[i];
        bool needs_input_grad = below || (lowest_trainable >= 0 && lowest_trainable < i);
        if (!needs_input_grad && !graft_module_has_trainable(m)) return GRAFT_OK; /* frozen below here */
        m->need_dx = needs_input_grad;
        graft_tensor *next = NULL;
        graft_status s = graft_module_backward(m, ctx, g, &next);
        if (s) return s;
        if (!needs_input_grad) return GRAFT_OK; /* nothing below needs a gradient */
        g = next;
    }
    *dx = g;
    return GRAFT_OK;
}

static graft_status sequential_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    return graft_sequence_forward(m->children, m->nchildren, ctx, in, out);
}

static graft_status sequential_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx) {
    return graft_sequence_backward(m->children, m->nchildren, m->need_dx, ctx, dy, dx);
}

static const graft_module_type sequential_type = {"Sequential", sequential_forward, sequential_backward, NULL,
                                                  NULL};

graft_module *graft_sequential_new(void) { return graft_module_new(&sequential_type, NULL); }
