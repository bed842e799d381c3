/* vgg.c — torchvision's VGG: features (make_layers), avgpool, classifier.
 *
 * torchvision.models.vgg builds
 *   features   = make_layers(cfg, batch_norm): per number v, Conv2d(c, v, 3, padding=1)
 *                [+ BatchNorm2d(v)] + ReLU(inplace=True); per "M", MaxPool2d(2, 2)
 *   avgpool    = AdaptiveAvgPool2d((7, 7))
 *   classifier = Linear(512*7*7, 4096), ReLU(True), Dropout(0.5),
 *                Linear(4096, 4096), ReLU(True), Dropout(0.5), Linear(4096, num_classes)
 * and forward = features, avgpool, torch.flatten(x, 1), classifier.
 *
 * Custom VGG-shaped models use the same code with other numbers:
 *   vgg:cfg=32-32-M-64-64-M-128-M,bn,hidden=256,pool=3,dropout=0.5,in=3
 * (cfg is required; bn off, hidden 4096, pool 7, dropout 0.5 and in 3 by default). */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "nn/arch.h"
#include "nn/init.h"
#include "nn/layers.h"

#define VGG_MAX_LAYERS 64
#define VGG_MAX_ITEMS 4096 /* guard against absurd channel counts in custom specs */
#define MAXPOOL (-1)

typedef struct vgg_spec {
    int cfg[VGG_MAX_LAYERS]; /* channel counts, MAXPOOL for "M" */
    int ncfg;
    bool bn;
    int64_t hidden, pool, in_channels;
    double dropout;
} vgg_spec;

/* torchvision's cfgs "A", "B", "D", "E". */
static const char *const CFG_A = "64-M-128-M-256-256-M-512-512-M-512-512-M";
static const char *const CFG_B = "64-64-M-128-128-M-256-256-M-512-512-M-512-512-M";
static const char *const CFG_D = "64-64-M-128-128-M-256-256-256-M-512-512-512-M-512-512-512-M";
static const char *const CFG_E = "64-64-M-128-128-M-256-256-256-256-M-512-512-512-512-M-512-512-512-512-M";

static const struct {
    const char *name;
    const char *const *cfg;
    bool bn;
} ZOO[] = {
    {"vgg11", &CFG_A, false},   {"vgg13", &CFG_B, false},   {"vgg16", &CFG_D, false},
    {"vgg19", &CFG_E, false},   {"vgg11_bn", &CFG_A, true}, {"vgg13_bn", &CFG_B, true},
    {"vgg16_bn", &CFG_D, true}, {"vgg19_bn", &CFG_E, true},
};

static graft_status parse_cfg(const char *s, size_t len, vgg_spec *spec) {
    spec->ncfg = 0;
    size_t i = 0;
    while (i < len) {
        if (spec->ncfg >= VGG_MAX_LAYERS)
            return graft_error(GRAFT_ERR_INVALID, "vgg spec: cfg has more than %d items", VGG_MAX_LAYERS);
        if (s[i] == 'M') {
            spec->cfg[spec->ncfg++] = MAXPOOL;
            i++;
        } else if (isdigit((unsigned char)s[i])) {
            long v = 0;
            while (i < len && isdigit((unsigned char)s[i]) && v <= VGG_MAX_ITEMS) v = v * 10 + (s[i++] - '0');
            if (v <= 0 || v > VGG_MAX_ITEMS)
                return graft_error(GRAFT_ERR_INVALID, "vgg spec: channel count must be 1..%d", VGG_MAX_ITEMS);
            spec->cfg[spec->ncfg++] = (int)v;
        } else {
            return graft_error(GRAFT_ERR_INVALID, "vgg spec: cfg item '%.*s' is not a number or M",
                               (int)(len - i), s + i);
        }
        if (i < len) {
            if (s[i] != '-')
                return graft_error(GRAFT_ERR_INVALID, "vgg spec: cfg items are separated by '-', found '%c'", s[i]);
            if (++i == len) return graft_error(GRAFT_ERR_INVALID, "vgg spec: cfg ends with '-'");
        }
    }
    bool has_conv = false;
    for (int k = 0; k < spec->ncfg; k++) has_conv |= spec->cfg[k] > 0;
    if (!has_conv) return graft_error(GRAFT_ERR_INVALID, "vgg spec: cfg needs at least one convolution");
    return GRAFT_OK;
}

static graft_status parse_int(const char *key, const char *v, size_t len, int64_t lo, int64_t hi, int64_t *out) {
    char buf[32];
    if (len == 0 || len >= sizeof buf) return graft_error(GRAFT_ERR_INVALID, "vgg spec: %s needs a number", key);
    memcpy(buf, v, len);
    buf[len] = 0;
    char *end;
    errno = 0;
    long long x = strtoll(buf, &end, 10);
    if (*end || errno || x < lo || x > hi)
        return graft_error(GRAFT_ERR_INVALID, "vgg spec: %s=%s is not an integer in %lld..%lld", key, buf,
                           (long long)lo, (long long)hi);
    *out = x;
    return GRAFT_OK;
}

static graft_status parse_spec(const char *arch, vgg_spec *spec) {
    *spec = (vgg_spec){.bn = false, .hidden = 4096, .pool = 7, .in_channels = 3, .dropout = 0.5};
    for (size_t i = 0; i < sizeof ZOO / sizeof ZOO[0]; i++)
        if (strcmp(arch, ZOO[i].name) == 0) {
            spec->bn = ZOO[i].bn;
            return parse_cfg(*ZOO[i].cfg, strlen(*ZOO[i].cfg), spec);
        }
    if (strncmp(arch, "vgg:", 4) != 0) return GRAFT_ERR_NOTFOUND;
    bool have_cfg = false;
    const char *p = arch + 4;
    graft_status s;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t klen = eq ? (size_t)(eq - p) : len;
        const char *v = eq ? eq + 1 : NULL;
        size_t vlen = eq ? len - klen - 1 : 0;
#define KEY(k) (klen == strlen(k) && strncmp(p, k, klen) == 0)
        if (KEY("cfg") && v) {
            if ((s = parse_cfg(v, vlen, spec))) return s;
            have_cfg = true;
        } else if (KEY("bn") && !v) {
            spec->bn = true;
        } else if (KEY("hidden") && v) {
            if ((s = parse_int("hidden", v, vlen, 1, 1 << 20, &spec->hidden))) return s;
        } else if (KEY("pool") && v) {
            if ((s = parse_int("pool", v, vlen, 1, 64, &spec->pool))) return s;
        } else if (KEY("in") && v) {
            if ((s = parse_int("in", v, vlen, 1, 64, &spec->in_channels))) return s;
        } else if (KEY("dropout") && v) {
            char buf[32];
            char *end;
            if (vlen == 0 || vlen >= sizeof buf)
                return graft_error(GRAFT_ERR_INVALID, "vgg spec: dropout needs a number");
            memcpy(buf, v, vlen);
            buf[vlen] = 0;
            spec->dropout = strtod(buf, &end);
            if (*end || !(spec->dropout >= 0 && spec->dropout <= 1))
                return graft_error(GRAFT_ERR_INVALID, "vgg spec: dropout=%s is not a probability", buf);
        } else {
            return graft_error(GRAFT_ERR_INVALID,
                               "vgg spec: unknown item '%.*s' (expected cfg=..., bn, hidden=N, pool=N, dropout=P, in=N)",
                               (int)len, p);
        }
#undef KEY
        p += len;
        if (*p == ',') p++;
    }
    if (!have_cfg) return graft_error(GRAFT_ERR_INVALID, "vgg spec '%s' has no cfg=...", arch);
    return GRAFT_OK;
}

/* ---- the VGG module -------------------------------------------------------- */

typedef struct vgg_cfg {
    graft_module *flatten;  /* torch.flatten(x, 1) in forward: not a registered child */
    graft_module *steps[4]; /* features, avgpool, flatten, classifier */
} vgg_cfg;

static graft_status vgg_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    vgg_cfg *c = m->cfg;
    return graft_sequence_forward(c->steps, 4, ctx, in, out);
}

static graft_status vgg_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx) {
    vgg_cfg *c = m->cfg;
    return graft_sequence_backward(c->steps, 4, m->need_dx, ctx, dy, dx);
}

static void vgg_destroy(graft_module *m) {
    vgg_cfg *c = m->cfg;
    if (c) graft_module_free(c->flatten);
    free(c);
}

static const graft_module_type vgg_type = {"VGG", vgg_forward, vgg_backward, NULL, vgg_destroy};

static void init_vgg(graft_module *m, graft_rng *rng) {
    if (graft_module_is(m, "Conv2d")) {
        graft_init_kaiming_normal_fan_out(&m->params[0].value, rng);
        if (m->nparams > 1) graft_init_constant(&m->params[1].value, 0);
    } else if (graft_module_is(m, "BatchNorm2d")) {
        graft_init_constant(&m->params[0].value, 1);
        graft_init_constant(&m->params[1].value, 0);
    } else if (graft_module_is(m, "Linear")) {
        graft_init_normal(&m->params[0].value, 0, 0.01, rng);
        if (m->nparams > 1) graft_init_constant(&m->params[1].value, 0);
    }
    for (int i = 0; i < m->nchildren; i++) init_vgg(m->children[i], rng);
}

static graft_status add_indexed(graft_module *seq, int *index, graft_module *child) {
    char name[16];
    snprintf(name, sizeof name, "%d", (*index)++);
    return graft_module_add(seq, name, child);
}

static graft_status build(const vgg_spec *spec, graft_module **root) {
    vgg_cfg *c = calloc(1, sizeof *c);
    graft_module *m = c ? graft_module_new(&vgg_type, c) : NULL;
    if (!m) {
        free(c);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory building VGG");
    }
    graft_status s = GRAFT_OK;
    graft_module *features = graft_sequential_new();
    if ((s = graft_module_add(m, "features", features))) goto fail;
    int64_t channels = spec->in_channels;
    int idx = 0;
    for (int i = 0; i < spec->ncfg && !s; i++) {
        int v = spec->cfg[i];
        if (v == MAXPOOL) {
            s = add_indexed(features, &idx, graft_maxpool2d_new(2, 2, 0, false));
        } else {
            s = add_indexed(features, &idx, graft_conv2d_new(channels, v, 3, 3, 1, 1, 1, 1, true));
            if (!s && spec->bn) s = add_indexed(features, &idx, graft_batchnorm2d_new(v, 1e-5, 0.1));
            if (!s) s = add_indexed(features, &idx, graft_relu_new(true));
            channels = v;
        }
    }
    if (s) goto fail;
    if ((s = graft_module_add(m, "avgpool", graft_adaptive_avgpool2d_new(spec->pool, spec->pool)))) goto fail;
    graft_module *cls = graft_sequential_new();
    if ((s = graft_module_add(m, "classifier", cls))) goto fail;
    idx = 0;
    int64_t flat = channels * spec->pool * spec->pool;
    if ((s = add_indexed(cls, &idx, graft_linear_new(flat, spec->hidden, true))) ||
        (s = add_indexed(cls, &idx, graft_relu_new(true))) ||
        (s = add_indexed(cls, &idx, graft_dropout_new(spec->dropout))) ||
        (s = add_indexed(cls, &idx, graft_linear_new(spec->hidden, spec->hidden, true))) ||
        (s = add_indexed(cls, &idx, graft_relu_new(true))) ||
        (s = add_indexed(cls, &idx, graft_dropout_new(spec->dropout))) ||
        (s = add_indexed(cls, &idx, graft_linear_new(spec->hidden, 1000, true))))
        goto fail;
    c->flatten = graft_flatten_new();
    if (!c->flatten) {
        s = GRAFT_ERR_NOMEM;
        goto fail;
    }
    c->steps[0] = m->children[0];
    c->steps[1] = m->children[1];
    c->steps[2] = c->flatten;
    c->steps[3] = m->children[2];
    *root = m;
    return GRAFT_OK;
fail:
    graft_module_free(m);
    return s;
}

graft_status graft_vgg_build(const char *arch, bool init, graft_rng *rng, graft_module **root,
                             graft_arch_info *info) {
    vgg_spec spec;
    graft_status s = parse_spec(arch, &spec);
    if (s) return s;
    if ((s = build(&spec, root))) return s;
    if (init) init_vgg(*root, rng);
    info->head_path = "classifier.6";
    info->steps = ((vgg_cfg *)(*root)->cfg)->steps;
    info->nsteps = 4;
    return GRAFT_OK;
}
