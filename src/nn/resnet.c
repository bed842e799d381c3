/* resnet.c — torchvision's ResNet ("v1.5": the stride of a Bottleneck is on its 3×3
 * convolution).
 *
 * torchvision.models.resnet.ResNet(block, layers) builds
 *   conv1   = Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False), bn1, relu,
 *   maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1)
 *   layerK  = _make_layer(block, planes=64·2^(K-1), layers[K-1], stride=1 for K=1 else 2)
 *   avgpool = AdaptiveAvgPool2d((1, 1)), fc = Linear(512·expansion, 1000)
 * and forward = conv1, bn1, relu, maxpool, layer1..layer4, avgpool, torch.flatten(x, 1), fc.
 * _make_layer gives the first block of a stage downsample = Sequential(conv1x1(stride),
 * BatchNorm2d) when the stride or the channel count changes; the other blocks keep both.
 *   BasicBlock (expansion 1): conv1 3×3/stride, bn1, relu, conv2 3×3, bn2
 *   Bottleneck (expansion 4): conv1 1×1, bn1, relu, conv2 3×3/stride, bn2, relu,
 *                             conv3 1×1 (4·planes), bn3
 * then out += identity (downsample(x) or x) and relu.  A block registers one ReLU (printed
 * once) and uses it two or three times; graft gives each further use its own unregistered
 * ReLU so that each backward has the output it saved.
 * Zoo: resnet18 basic 2-2-2-2, resnet34 basic 3-4-6-3, resnet50 bottleneck 3-4-6-3,
 * resnet101 bottleneck 3-4-23-3, resnet152 bottleneck 3-8-36-3.  Initialisation:
 * kaiming_normal_(fan_out, relu) for convolutions, BatchNorm weight 1 and bias 0, fc as
 * nn.Linear's default (zero_init_residual=False).
 *
 * Custom ResNet-shaped models use the same code with other numbers:
 *   resnet:block=basic,layers=1-2-1-1,width=16,in=3
 * block (basic or bottleneck) and layers (four block counts) are required; width is the
 * stem's output channels and layer1's planes (torchvision's inplanes, 64), the stages
 * having width, 2·width, 4·width and 8·width planes; in is the input channels (3). */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "nn/arch.h"
#include "nn/init.h"
#include "nn/layers.h"

#define RESNET_STAGES 4
#define RESNET_MAX_BLOCKS 64    /* per stage; resnet152 has 36 */
#define RESNET_MAX_WIDTH 1024   /* guard against absurd custom widths */
#define RESNET_DEFAULT_WIDTH 64 /* torchvision's self.inplanes */
#define BASIC_EXPANSION 1       /* BasicBlock.expansion */
#define BOTTLENECK_EXPANSION 4  /* Bottleneck.expansion */
#define BN_EPS 1e-5             /* nn.BatchNorm2d's defaults */
#define BN_MOMENTUM 0.1
#define SHAPE_BYTES 96

typedef struct resnet_spec {
    bool bottleneck;
    int64_t layers[RESNET_STAGES];
    int64_t width, in_channels;
} resnet_spec;

static const struct {
    const char *name;
    bool bottleneck;
    int64_t layers[RESNET_STAGES];
} ZOO[] = {
    {"resnet18", false, {2, 2, 2, 2}},  {"resnet34", false, {3, 4, 6, 3}},
    {"resnet50", true, {3, 4, 6, 3}},   {"resnet101", true, {3, 4, 23, 3}},
    {"resnet152", true, {3, 8, 36, 3}},
};

/* ---- spec parsing ---------------------------------------------------------- */

static graft_status parse_int(const char *key, const char *v, size_t len, int64_t lo, int64_t hi, int64_t *out) {
    char buf[32];
    if (len == 0 || len >= sizeof buf) return graft_error(GRAFT_ERR_INVALID, "resnet spec: %s needs a number", key);
    memcpy(buf, v, len);
    buf[len] = 0;
    char *end;
    errno = 0;
    long long x = strtoll(buf, &end, 10);
    if (*end || errno || !isdigit((unsigned char)buf[0]) || x < lo || x > hi)
        return graft_error(GRAFT_ERR_INVALID, "resnet spec: %s=%s is not an integer in %lld..%lld", key, buf,
                           (long long)lo, (long long)hi);
    *out = x;
    return GRAFT_OK;
}

/* "A-B-C-D": four block counts. */
static graft_status parse_layers(const char *v, size_t len, resnet_spec *spec) {
    size_t i = 0;
    for (int k = 0; k < RESNET_STAGES; k++) {
        size_t start = i;
        while (i < len && v[i] != '-') i++;
        graft_status s = parse_int("layers", v + start, i - start, 1, RESNET_MAX_BLOCKS, &spec->layers[k]);
        if (s) return s;
        if (k < RESNET_STAGES - 1) {
            if (i >= len)
                return graft_error(GRAFT_ERR_INVALID, "resnet spec: layers needs %d block counts separated by '-'",
                                   RESNET_STAGES);
            i++;
        }
    }
    if (i != len)
        return graft_error(GRAFT_ERR_INVALID, "resnet spec: layers has more than %d block counts", RESNET_STAGES);
    return GRAFT_OK;
}

static graft_status parse_spec(const char *arch, resnet_spec *spec) {
    *spec = (resnet_spec){.bottleneck = false, .width = RESNET_DEFAULT_WIDTH, .in_channels = 3};
    for (size_t i = 0; i < sizeof ZOO / sizeof ZOO[0]; i++)
        if (strcmp(arch, ZOO[i].name) == 0) {
            spec->bottleneck = ZOO[i].bottleneck;
            memcpy(spec->layers, ZOO[i].layers, sizeof spec->layers);
            return GRAFT_OK;
        }
    if (strncmp(arch, "resnet:", 7) != 0) return GRAFT_ERR_NOTFOUND;
    bool have_block = false, have_layers = false;
    const char *p = arch + 7;
    graft_status s;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t klen = eq ? (size_t)(eq - p) : len;
        const char *v = eq ? eq + 1 : NULL;
        size_t vlen = eq ? len - klen - 1 : 0;
#define KEY(k) (klen == strlen(k) && strncmp(p, k, klen) == 0)
#define VALUE(x) (vlen == strlen(x) && strncmp(v, x, vlen) == 0)
        if (KEY("block") && v) {
            if (VALUE("basic")) spec->bottleneck = false;
            else if (VALUE("bottleneck")) spec->bottleneck = true;
            else
                return graft_error(GRAFT_ERR_INVALID, "resnet spec: block=%.*s is not basic or bottleneck", (int)vlen, v);
            have_block = true;
        } else if (KEY("layers") && v) {
            if ((s = parse_layers(v, vlen, spec))) return s;
            have_layers = true;
        } else if (KEY("width") && v) {
            if ((s = parse_int("width", v, vlen, 1, RESNET_MAX_WIDTH, &spec->width))) return s;
        } else if (KEY("in") && v) {
            if ((s = parse_int("in", v, vlen, 1, 64, &spec->in_channels))) return s;
        } else {
            return graft_error(GRAFT_ERR_INVALID,
                               "resnet spec: unknown item '%.*s' (expected block=basic|bottleneck, layers=A-B-C-D, width=N, in=N)",
                               (int)len, p);
        }
#undef VALUE
#undef KEY
        p += len;
        if (*p == ',' && !*++p) return graft_error(GRAFT_ERR_INVALID, "resnet spec '%s' ends with ','", arch);
    }
    if (!have_block) return graft_error(GRAFT_ERR_INVALID, "resnet spec '%s' has no block=basic|bottleneck", arch);
    if (!have_layers) return graft_error(GRAFT_ERR_INVALID, "resnet spec '%s' has no layers=A-B-C-D", arch);
    return GRAFT_OK;
}

/* ---- residual blocks ------------------------------------------------------- */

#define BLOCK_MAX_MAIN 8 /* Bottleneck: conv1 bn1 relu conv2 bn2 relu conv3 bn3 */

typedef struct block_cfg {
    graft_module *main[BLOCK_MAX_MAIN]; /* the residual branch, in forward order */
    int nmain;
    graft_module *downsample; /* the registered child, or NULL for the identity */
    graft_module *relu_mid;   /* Bottleneck's second use of relu (after bn2), unregistered */
    graft_module *relu_out;   /* the use after the residual add, unregistered */
    graft_tensor grad_copy;   /* backward: the sum's gradient for the downsample branch */
} block_cfg;

static void block_destroy(graft_module *m) {
    block_cfg *c = m->cfg;
    if (!c) return;
    graft_module_free(c->relu_mid);
    graft_module_free(c->relu_out);
    graft_tensor_release(&c->grad_copy);
    free(c);
}

/* x is [N, C, H, W]; main(x) and the identity (x or downsample(x)) are both
 * [N, C', H', W']; the output relu(main(x) + identity) is a view of the last BatchNorm's
 * output buffer, to which the identity is added in place (BatchNorm's backward reads its
 * input, never its output). */
static graft_status block_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    block_cfg *c = m->cfg;
    graft_tensor *y, *identity = in;
    graft_status s = graft_sequence_forward(c->main, c->nmain, ctx, in, &y);
    if (s) return s;
    if (c->downsample && (s = graft_module_forward(c->downsample, ctx, in, &identity))) return s;
    if (!graft_tensor_same_shape(y, identity)) {
        char ys[SHAPE_BYTES], is[SHAPE_BYTES];
        graft_shape_str(y->ndim, y->shape, ys, sizeof ys);
        graft_shape_str(identity->ndim, identity->shape, is, sizeof is);
        return graft_module_error(m, GRAFT_ERR_SHAPE, "residual branch gives %s but the identity %s", ys, is);
    }
    float *yp = y->data;
    const float *ip = identity->data;
    int64_t n = graft_tensor_numel(y);
    for (int64_t i = 0; i < n; i++) yp[i] += ip[i];
    return graft_module_forward(c->relu_out, ctx, y, out);
}

static bool any_trainable(graft_module *const *steps, int n) {
    for (int i = 0; i < n; i++)
        if (graft_module_has_trainable(steps[i])) return true;
    return false;
}

/* dy is [N, C', H', W'].  The sum's gradient g = relu'(sum)·dy flows into both branches:
 * dx = main_backward(g) + (downsample_backward(g) or g).  A branch runs only when it
 * holds a trainable parameter or dx is needed, and the residual branch stops below its
 * lowest trainable layer (graft_sequence_backward).  Each branch may overwrite the
 * gradient it receives (module.h), so when both run the second gets a copy. */
static graft_status block_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx) {
    block_cfg *c = m->cfg;
    graft_status s;
    graft_tensor *g;
    c->relu_out->need_dx = true;
    if ((s = graft_module_backward(c->relu_out, ctx, dy, &g))) return s;
    bool run_main = m->need_dx || any_trainable(c->main, c->nmain);
    bool run_down = c->downsample && (m->need_dx || graft_module_has_trainable(c->downsample));
    graft_tensor *g_down = g;
    if (m->need_dx && !c->downsample) {
        /* identity: dx starts as g, the residual branch's gradient is added below */
        if ((s = graft_tensor_resize(&m->dx, g->ndim, g->shape))) return s;
        graft_tensor_copy_data(&m->dx, g);
    } else if (run_main && run_down) {
        if ((s = graft_tensor_resize(&c->grad_copy, g->ndim, g->shape))) return s;
        graft_tensor_copy_data(&c->grad_copy, g);
        g_down = &c->grad_copy;
    }
    graft_tensor *dx_main = NULL, *dx_down = NULL;
    if (run_main && (s = graft_sequence_backward(c->main, c->nmain, m->need_dx, ctx, g, &dx_main))) return s;
    if (run_down) {
        c->downsample->need_dx = m->need_dx;
        if ((s = graft_module_backward(c->downsample, ctx, g_down, &dx_down))) return s;
    }
    if (!m->need_dx) return GRAFT_OK;
    /* dx_main is [N, C, H, W], as is dx_down (or the identity's g, already in m->dx) */
    if (c->downsample && (s = graft_tensor_resize(&m->dx, dx_main->ndim, dx_main->shape))) return s;
    if (!graft_tensor_same_shape(&m->dx, dx_main))
        return graft_module_error(m, GRAFT_ERR_SHAPE, "residual and identity gradients differ in shape");
    float *d = m->dx.data;
    const float *a = dx_main->data, *b = c->downsample ? dx_down->data : NULL;
    int64_t n = graft_tensor_numel(&m->dx);
    if (b)
        for (int64_t i = 0; i < n; i++) d[i] = a[i] + b[i];
    else
        for (int64_t i = 0; i < n; i++) d[i] += a[i];
    *dx = &m->dx;
    return GRAFT_OK;
}

static const graft_module_type basic_block_type = {"BasicBlock", block_forward, block_backward, NULL, block_destroy};
static const graft_module_type bottleneck_type = {"Bottleneck", block_forward, block_backward, NULL, block_destroy};

static graft_module *conv1x1(int64_t in, int64_t out, int64_t stride) {
    return graft_conv2d_new(in, out, 1, 1, stride, stride, 0, 0, false);
}

static graft_module *conv3x3(int64_t in, int64_t out, int64_t stride) {
    return graft_conv2d_new(in, out, 3, 3, stride, stride, 1, 1, false);
}

static graft_module *bn(int64_t c) { return graft_batchnorm2d_new(c, BN_EPS, BN_MOMENTUM); }

/* torchvision's BasicBlock / Bottleneck (inplanes, planes, stride, downsample); NULL
 * with the error set on failure.  Children are registered in torchvision's order (which
 * is the printed and state-dict order), then the residual branch is listed in forward
 * order. */
static graft_module *block_new(bool bottleneck, int64_t inplanes, int64_t planes, int64_t stride) {
    int64_t expansion = bottleneck ? BOTTLENECK_EXPANSION : BASIC_EXPANSION;
    block_cfg *c = calloc(1, sizeof *c);
    graft_module *m = c ? graft_module_new(bottleneck ? &bottleneck_type : &basic_block_type, c) : NULL;
    if (!m) {
        free(c);
        graft_error(GRAFT_ERR_NOMEM, "out of memory building a residual block");
        return NULL;
    }
    graft_tensor_init(&c->grad_copy, GRAFT_F32);
    graft_status s;
    if (bottleneck) {
        if ((s = graft_module_add(m, "conv1", conv1x1(inplanes, planes, 1))) ||
            (s = graft_module_add(m, "bn1", bn(planes))) ||
            (s = graft_module_add(m, "conv2", conv3x3(planes, planes, stride))) ||
            (s = graft_module_add(m, "bn2", bn(planes))) ||
            (s = graft_module_add(m, "conv3", conv1x1(planes, planes * expansion, 1))) ||
            (s = graft_module_add(m, "bn3", bn(planes * expansion))) ||
            (s = graft_module_add(m, "relu", graft_relu_new(true))))
            goto fail;
        if (!(c->relu_mid = graft_relu_new(true))) goto fail;
        graft_module *const *ch = m->children; /* conv1 bn1 conv2 bn2 conv3 bn3 relu */
        graft_module *order[] = {ch[0], ch[1], ch[6], ch[2], ch[3], c->relu_mid, ch[4], ch[5]};
        memcpy(c->main, order, sizeof order);
        c->nmain = 8;
    } else {
        if ((s = graft_module_add(m, "conv1", conv3x3(inplanes, planes, stride))) ||
            (s = graft_module_add(m, "bn1", bn(planes))) || (s = graft_module_add(m, "relu", graft_relu_new(true))) ||
            (s = graft_module_add(m, "conv2", conv3x3(planes, planes, 1))) ||
            (s = graft_module_add(m, "bn2", bn(planes))))
            goto fail;
        memcpy(c->main, m->children, 5 * sizeof *c->main); /* conv1 bn1 relu conv2 bn2 */
        c->nmain = 5;
    }
    if (stride != 1 || inplanes != planes * expansion) {
        graft_module *ds = graft_sequential_new();
        if ((s = graft_module_add(m, "downsample", ds)) ||
            (s = graft_module_add(ds, "0", conv1x1(inplanes, planes * expansion, stride))) ||
            (s = graft_module_add(ds, "1", bn(planes * expansion))))
            goto fail;
        c->downsample = ds;
    }
    if (!(c->relu_out = graft_relu_new(true))) goto fail;
    return m;
fail:
    graft_module_free(m);
    return NULL;
}

/* ---- the ResNet module ----------------------------------------------------- */

#define RESNET_STEPS 11 /* conv1 bn1 relu maxpool layer1..4 avgpool flatten fc */
#define FC_CHILD 9      /* fc's index among the root's children */

/* A step that runs whichever module sits in one slot of the root's children: the head
 * (fc) is replaced, and the old one freed, by graft_model_replace_linear, so the steps
 * must not point at it.  The slot's children array aliases that one element of the
 * root's, so graft_module_has_trainable and the backward see the current head; it is
 * freed by resnet_destroy, never by graft_module_free (which would free the head). */
static graft_status slot_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    return graft_module_forward(m->children[0], ctx, in, out);
}

static graft_status slot_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx) {
    m->children[0]->need_dx = m->need_dx;
    return graft_module_backward(m->children[0], ctx, dy, dx);
}

static const graft_module_type slot_type = {"ResNetHeadSlot", slot_forward, slot_backward, NULL, NULL};

static void slot_free(graft_module *slot) {
    if (!slot) return;
    graft_tensor_release(&slot->out);
    graft_tensor_release(&slot->dx);
    free(slot->name);
    free(slot);
}

typedef struct resnet_cfg {
    graft_module *flatten; /* torch.flatten(x, 1) in forward: not a registered child */
    graft_module *fc_slot; /* the step that runs fc (see slot_type) */
    graft_module *steps[RESNET_STEPS];
} resnet_cfg;

static graft_status resnet_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out) {
    resnet_cfg *c = m->cfg;
    return graft_sequence_forward(c->steps, RESNET_STEPS, ctx, in, out);
}

static graft_status resnet_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx) {
    resnet_cfg *c = m->cfg;
    return graft_sequence_backward(c->steps, RESNET_STEPS, m->need_dx, ctx, dy, dx);
}

static void resnet_destroy(graft_module *m) {
    resnet_cfg *c = m->cfg;
    if (!c) return;
    graft_module_free(c->flatten);
    slot_free(c->fc_slot);
    free(c);
}

static const graft_module_type resnet_type = {"ResNet", resnet_forward, resnet_backward, NULL, resnet_destroy};

static void init_resnet(graft_module *m, graft_rng *rng) {
    if (graft_module_is(m, "Conv2d")) {
        graft_init_kaiming_normal_fan_out(&m->params[0].value, rng);
    } else if (graft_module_is(m, "BatchNorm2d")) {
        graft_init_constant(&m->params[0].value, 1);
        graft_init_constant(&m->params[1].value, 0);
    } else if (graft_module_is(m, "Linear")) {
        /* nn.Linear.reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias */
        double bound = 1.0 / sqrt((double)m->params[0].value.shape[1]);
        for (int i = 0; i < m->nparams; i++) graft_init_uniform(&m->params[i].value, -bound, bound, rng);
    }
    for (int i = 0; i < m->nchildren; i++) init_resnet(m->children[i], rng);
}

static graft_status build(const resnet_spec *spec, graft_module **root) {
    resnet_cfg *c = calloc(1, sizeof *c);
    graft_module *m = c ? graft_module_new(&resnet_type, c) : NULL;
    if (!m) {
        free(c);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory building ResNet");
    }
    int64_t expansion = spec->bottleneck ? BOTTLENECK_EXPANSION : BASIC_EXPANSION;
    int64_t inplanes = spec->width;
    graft_status s;
    if ((s = graft_module_add(m, "conv1", graft_conv2d_new(spec->in_channels, inplanes, 7, 7, 2, 2, 3, 3, false))) ||
        (s = graft_module_add(m, "bn1", bn(inplanes))) || (s = graft_module_add(m, "relu", graft_relu_new(true))) ||
        (s = graft_module_add(m, "maxpool", graft_maxpool2d_new(3, 2, 1, false))))
        goto fail;
    for (int k = 0; k < RESNET_STAGES; k++) {
        char name[24];
        snprintf(name, sizeof name, "layer%d", k + 1);
        graft_module *layer = graft_sequential_new();
        if ((s = graft_module_add(m, name, layer))) goto fail;
        int64_t planes = spec->width << k;
        for (int b = 0; b < spec->layers[k]; b++) {
            snprintf(name, sizeof name, "%d", b);
            int64_t stride = b == 0 && k > 0 ? 2 : 1;
            if ((s = graft_module_add(layer, name, block_new(spec->bottleneck, inplanes, planes, stride)))) goto fail;
            inplanes = planes * expansion;
        }
    }
    if ((s = graft_module_add(m, "avgpool", graft_adaptive_avgpool2d_new(1, 1))) ||
        (s = graft_module_add(m, "fc", graft_linear_new(inplanes, 1000, true))))
        goto fail;
    c->flatten = graft_flatten_new();
    c->fc_slot = calloc(1, sizeof *c->fc_slot);
    if (!c->flatten || !c->fc_slot || !(c->fc_slot->name = strdup("fc"))) {
        s = graft_error(GRAFT_ERR_NOMEM, "out of memory building ResNet");
        goto fail;
    }
    c->fc_slot->type = &slot_type;
    c->fc_slot->children = &m->children[FC_CHILD];
    c->fc_slot->nchildren = 1;
    graft_tensor_init(&c->fc_slot->out, GRAFT_F32);
    graft_tensor_init(&c->fc_slot->dx, GRAFT_F32);
    for (int i = 0; i < FC_CHILD - 1; i++) c->steps[i] = m->children[i]; /* conv1 .. layer4 */
    c->steps[8] = m->children[8];                                        /* avgpool */
    c->steps[9] = c->flatten;
    c->steps[10] = c->fc_slot;
    *root = m;
    return GRAFT_OK;
fail:
    graft_module_free(m);
    return s;
}

graft_status graft_resnet_build(const char *arch, bool init, graft_rng *rng, graft_module **root,
                                graft_arch_info *info) {
    resnet_spec spec;
    graft_status s = parse_spec(arch, &spec);
    if (s) return s;
    if ((s = build(&spec, root))) return s;
    if (init) init_resnet(*root, rng);
    info->head_path = "fc";
    info->steps = ((resnet_cfg *)(*root)->cfg)->steps;
    info->nsteps = RESNET_STEPS;
    return GRAFT_OK;
}
