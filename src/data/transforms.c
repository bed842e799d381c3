/* transforms.c — torchvision's image transforms on uint8 images, and Compose pipelines
 * parsed from a spec string (see transforms.h for the semantics and the syntax). */
#include "data/transforms.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

/* ---- Resize: PIL's bilinear resampling for 8-bit images ------------------------
 *
 * This follows Pillow's libImaging/Resample.c step for step, because torchvision
 * 0.14 resizes PIL images with Image.resize(size, BILINEAR):
 *
 *   - per axis, output pixel xx has centre in_size / out_size * (xx + 0.5) in input
 *     coordinates; the triangle filter's support is 1 input pixel when upscaling and
 *     in_size / out_size pixels when downscaling (the filter stretches, which is what
 *     antialiases); the input pixels within the support get weights that are
 *     normalised to sum to 1 in double precision, then rounded to fixed point with
 *     PRECISION_BITS fraction bits;
 *   - each output sample is the integer sum of weights * samples plus a rounding half,
 *     clipped to 0..255; the horizontal pass runs first, over only the input rows the
 *     vertical pass will read, then the vertical pass.
 * Identical integer arithmetic gives identical pixels. */

#define RESAMPLE_PRECISION_BITS (32 - 8 - 2) /* Resample.c: PRECISION_BITS */
#define BILINEAR_SUPPORT 1.0                 /* Resample.c: struct filter BILINEAR */

static double bilinear_filter(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return 1.0 - x;
    return 0.0;
}

/* The filter of one axis: for output position xx, input positions bounds[2xx] ..
 * bounds[2xx] + bounds[2xx+1] - 1 with weights kk[xx * ksize ...]. */
typedef struct resample_axis {
    int ksize;
    int *bounds;  /* [out_size, 2] */
    int32_t *kk;  /* [out_size, ksize] */
} resample_axis;

static int axis_ksize(int in_size, int out_size) {
    double filterscale = (double)in_size / out_size;
    if (filterscale < 1.0) filterscale = 1.0;
    return (int)ceil(BILINEAR_SUPPORT * filterscale) * 2 + 1;
}

/* Resample.c: precompute_coeffs followed by normalize_coeffs_8bpc. */
static void axis_coeffs(int in_size, int out_size, resample_axis *ax) {
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = BILINEAR_SUPPORT * filterscale;
    double ss = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        /* The same weights twice, first for their sum, then normalised: the same
         * double operations as Pillow, which stores and then divides them. */
        double ww = 0.0;
        for (int x = 0; x < xmax; x++) ww += bilinear_filter((x + xmin - center + 0.5) * ss);
        int32_t *k = ax->kk + (size_t)xx * ax->ksize;
        for (int x = 0; x < ax->ksize; x++) {
            if (x >= xmax) {
                k[x] = 0;
                continue;
            }
            double w = bilinear_filter((x + xmin - center + 0.5) * ss);
            if (ww != 0.0) w /= ww;
            k[x] = (int32_t)(w < 0 ? -0.5 + w * (1 << RESAMPLE_PRECISION_BITS)
                                   : 0.5 + w * (1 << RESAMPLE_PRECISION_BITS));
        }
        ax->bounds[2 * xx] = xmin;
        ax->bounds[2 * xx + 1] = xmax;
    }
}

static uint8_t clip_fixed(int32_t v) {
    if (v >= (1 << RESAMPLE_PRECISION_BITS << 8)) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> RESAMPLE_PRECISION_BITS);
}

/* src: rows × sw × c (row y of src is input row y + row_offset of the caller's
 * coordinate system)  ->  dst: rows × dw × c, filtering along x. */
static void resample_horizontal(const uint8_t *src, int sw, int row_offset, uint8_t *dst,
                                int rows, int dw, int c, const resample_axis *ax) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *in = src + (size_t)(y + row_offset) * sw * c;
        uint8_t *out = dst + (size_t)y * dw * c;
        for (int xx = 0; xx < dw; xx++) {
            int xmin = ax->bounds[2 * xx], xmax = ax->bounds[2 * xx + 1];
            const int32_t *k = ax->kk + (size_t)xx * ax->ksize;
            for (int ch = 0; ch < c; ch++) {
                int32_t ss = 1 << (RESAMPLE_PRECISION_BITS - 1);
                for (int x = 0; x < xmax; x++) ss += in[(size_t)(x + xmin) * c + ch] * k[x];
                out[(size_t)xx * c + ch] = clip_fixed(ss);
            }
        }
    }
}

/* src: any rows × w × c  ->  dst: dh × w × c, filtering along y; the axis bounds index
 * src's rows after subtracting row_shift. */
static void resample_vertical(const uint8_t *src, int w, int row_shift, uint8_t *dst, int dh,
                              int c, const resample_axis *ax) {
    size_t row_bytes = (size_t)w * c;
    for (int yy = 0; yy < dh; yy++) {
        int ymin = ax->bounds[2 * yy] - row_shift, ymax = ax->bounds[2 * yy + 1];
        const int32_t *k = ax->kk + (size_t)yy * ax->ksize;
        uint8_t *out = dst + (size_t)yy * row_bytes;
        for (size_t i = 0; i < row_bytes; i++) {
            int32_t ss = 1 << (RESAMPLE_PRECISION_BITS - 1);
            for (int y = 0; y < ymax; y++) ss += src[(size_t)(y + ymin) * row_bytes + i] * k[y];
            out[i] = clip_fixed(ss);
        }
    }
}

void graft_resize_scratch_release(graft_resize_scratch *s) {
    free(s->buf);
    s->buf = NULL;
    s->bytes = 0;
}

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

graft_status graft_image_resize(const graft_image *in, int out_h, int out_w, graft_image *out,
                                graft_resize_scratch *scratch) {
    graft_status s = graft_image_reserve(out, out_h, out_w, in->c);
    if (s) return s;
    int h = in->h, w = in->w, c = in->c;
    if (out_h == h && out_w == w) { /* torchvision returns the image itself */
        memcpy(out->data, in->data, graft_image_bytes(in));
        return GRAFT_OK;
    }
    bool need_h = out_w != w, need_v = out_h != h;
    resample_axis hx = {axis_ksize(w, out_w), NULL, NULL};
    resample_axis vy = {axis_ksize(h, out_h), NULL, NULL};
    size_t hb = align8(sizeof(int) * 2 * (size_t)out_w);
    size_t hk = align8(sizeof(int32_t) * (size_t)out_w * hx.ksize);
    size_t vb = align8(sizeof(int) * 2 * (size_t)out_h);
    size_t vk = align8(sizeof(int32_t) * (size_t)out_h * vy.ksize);
    size_t tmp_bytes = need_h && need_v ? (size_t)h * out_w * c : 0; /* an upper bound */
    size_t need = hb + hk + vb + vk + tmp_bytes;

    graft_resize_scratch own = {NULL, 0};
    graft_resize_scratch *sc = scratch ? scratch : &own;
    if (need > sc->bytes) {
        void *p = malloc(need);
        if (!p) return graft_error(GRAFT_ERR_NOMEM, "out of memory allocating %zu bytes", need);
        free(sc->buf);
        sc->buf = p;
        sc->bytes = need;
    }
    char *base = sc->buf;
    hx.bounds = (int *)base;
    hx.kk = (int32_t *)(base + hb);
    vy.bounds = (int *)(base + hb + hk);
    vy.kk = (int32_t *)(base + hb + hk + vb);
    uint8_t *tmp = (uint8_t *)(base + hb + hk + vb + vk);
    axis_coeffs(w, out_w, &hx);
    axis_coeffs(h, out_h, &vy);

    if (need_h && need_v) {
        /* Only the input rows the vertical pass reads are resampled horizontally. */
        int first = vy.bounds[0];
        int last = vy.bounds[2 * out_h - 2] + vy.bounds[2 * out_h - 1];
        resample_horizontal(in->data, w, first, tmp, last - first, out_w, c, &hx);
        resample_vertical(tmp, out_w, first, out->data, out_h, c, &vy);
    } else if (need_h) {
        resample_horizontal(in->data, w, 0, out->data, h, out_w, c, &hx);
    } else {
        resample_vertical(in->data, w, 0, out->data, out_h, c, &vy);
    }
    graft_resize_scratch_release(&own);
    return GRAFT_OK;
}

void graft_resize_output_size(int h, int w, int size, int *out_h, int *out_w) {
    int shorter = w <= h ? w : h, longer = w <= h ? h : w;
    /* torchvision: int(requested_new_short * long / short), a true division of exact
     * integers rounded once to double, then truncated. */
    double new_long = (double)size * (double)longer / (double)shorter;
    int nl = new_long >= (double)INT32_MAX ? INT32_MAX : (int)new_long;
    if (w <= h) {
        *out_w = size;
        *out_h = nl;
    } else {
        *out_h = size;
        *out_w = nl;
    }
}

/* ---- crops, flips, grayscale ---------------------------------------------------- */

graft_status graft_image_crop(const graft_image *in, int top, int left, int height, int width,
                              graft_image *out) {
    graft_status s = graft_image_reserve(out, height, width, in->c);
    if (s) return s;
    int c = in->c;
    memset(out->data, 0, graft_image_bytes(out));
    /* The part of the window inside the input: rows [y0, y1), columns [x0, x1). */
    int64_t y0 = top < 0 ? 0 : top, y1 = (int64_t)top + height < in->h ? top + height : in->h;
    int64_t x0 = left < 0 ? 0 : left, x1 = (int64_t)left + width < in->w ? left + width : in->w;
    for (int64_t y = y0; y < y1 && x0 < x1; y++)
        memcpy(out->data + ((size_t)(y - top) * width + (size_t)(x0 - left)) * c,
               in->data + ((size_t)y * in->w + (size_t)x0) * c, (size_t)(x1 - x0) * c);
    return GRAFT_OK;
}

/* torchvision's CenterCrop offset along one axis: a crop larger than the image pads
 * (crop - size) // 2 zeros before it; otherwise int(round((size - crop) / 2.0)), where
 * Python's round sends halves to the even neighbour. */
static int center_offset(int size, int crop) {
    if (crop > size) return -((crop - size) / 2);
    int d = size - crop, q = d / 2;
    if (d % 2 == 1 && q % 2 == 1) q++; /* q + 0.5 rounds to the even one of q, q + 1 */
    return q;
}

graft_status graft_image_center_crop(const graft_image *in, int height, int width,
                                     graft_image *out) {
    return graft_image_crop(in, center_offset(in->h, height), center_offset(in->w, width), height,
                            width, out);
}

graft_status graft_image_hflip(const graft_image *in, graft_image *out) {
    graft_status s = graft_image_reserve(out, in->h, in->w, in->c);
    if (s) return s;
    int c = in->c;
    for (int y = 0; y < in->h; y++) {
        const uint8_t *src = in->data + (size_t)y * in->w * c;
        uint8_t *dst = out->data + (size_t)y * in->w * c;
        for (int x = 0; x < in->w; x++)
            memcpy(dst + (size_t)x * c, src + (size_t)(in->w - 1 - x) * c, (size_t)c);
    }
    return GRAFT_OK;
}

graft_status graft_image_grayscale(const graft_image *in, int channels, graft_image *out) {
    if (channels != 1 && channels != 3)
        return graft_error(GRAFT_ERR_INVALID, "grayscale: num_output_channels must be 1 or 3, not %d",
                           channels);
    graft_status s = graft_image_reserve(out, in->h, in->w, channels);
    if (s) return s;
    size_t n = (size_t)in->h * in->w;
    for (size_t i = 0; i < n; i++) {
        uint8_t l;
        if (in->c == 3) {
            const uint8_t *p = in->data + 3 * i;
            /* Pillow Convert.c, rgb2l: L24(rgb) >> 16 with
             * L24 = R*19595 + G*38470 + B*7471 + 0x8000 (601-2 luma, 16 fraction bits) */
            l = (uint8_t)(((uint32_t)p[0] * 19595 + (uint32_t)p[1] * 38470 +
                           (uint32_t)p[2] * 7471 + 0x8000) >> 16);
        } else {
            l = in->data[i];
        }
        for (int ch = 0; ch < channels; ch++) out->data[i * channels + ch] = l;
    }
    return GRAFT_OK;
}

/* ---- ToTensor, Normalize ----------------------------------------------------------- */

void graft_image_to_tensor(const graft_image *in, float *out) {
    size_t plane = (size_t)in->h * in->w;
    for (int ch = 0; ch < in->c; ch++)
        for (size_t i = 0; i < plane; i++)
            out[ch * plane + i] = (float)in->data[i * in->c + ch] / 255.0f; /* .float().div(255) */
}

graft_status graft_normalize(float *x, int c, int h, int w, const float *mean, const float *std,
                             int n) {
    if (n != 1 && n != c)
        return graft_error(GRAFT_ERR_SHAPE, "normalize: %d values for an image of %d channels", n,
                           c);
    size_t plane = (size_t)h * w;
    for (int ch = 0; ch < c; ch++) {
        float m = mean[n == 1 ? 0 : ch], s = std[n == 1 ? 0 : ch];
        float *p = x + ch * plane;
        for (size_t i = 0; i < plane; i++) p[i] = (p[i] - m) / s; /* sub_(mean).div_(std) */
    }
    return GRAFT_OK;
}

/* ---- pipelines ------------------------------------------------------------------ */

#define ITEM_SHOWN_BYTES 64 /* an item as quoted in error messages */
#define NORMALIZE_MAX_VALUES 3

typedef enum op_kind {
    OP_RESIZE,
    OP_CENTER_CROP,
    OP_RANDOM_CROP,
    OP_HFLIP,
    OP_GRAYSCALE,
    OP_NORMALIZE
} op_kind;

typedef struct op {
    op_kind kind;
    char item[ITEM_SHOWN_BYTES]; /* the spec item, for messages */
    int h, w;                    /* resize with w == 0: the smaller edge becomes h */
    int padding;                 /* randomcrop */
    double p;                    /* hflip */
    int channels;                /* grayscale */
    int n_mean, n_std;           /* normalize */
    float mean[NORMALIZE_MAX_VALUES], std[NORMALIZE_MAX_VALUES];
} op;

struct graft_transforms {
    char *spec;
    op *ops;
    int n;
};

void graft_transform_work_release(graft_transform_work *work) {
    graft_image_release(&work->a);
    graft_image_release(&work->b);
    graft_resize_scratch_release(&work->resize);
}

void graft_transforms_free(graft_transforms *t) {
    if (!t) return;
    free(t->spec);
    free(t->ops);
    free(t);
}

const char *graft_transforms_spec(const graft_transforms *t) { return t->spec; }

bool graft_transforms_is_random(const graft_transforms *t) {
    for (int i = 0; i < t->n; i++) {
        const op *o = &t->ops[i];
        if (o->kind == OP_RANDOM_CROP) return true;
        if (o->kind == OP_HFLIP && o->p > 0.0 && o->p < 1.0) return true;
    }
    return false;
}

bool graft_transforms_flip_variants(const graft_transforms *t, char *off, char *on, size_t size) {
    int flips = 0;
    for (int i = 0; i < t->n; i++) {
        const op *o = &t->ops[i];
        if (o->kind == OP_RANDOM_CROP) return false;
        if (strlen(o->item) + 1 >= sizeof o->item) return false; /* truncated: cannot rebuild */
        if (o->kind == OP_HFLIP && o->p > 0.0 && o->p < 1.0) flips++;
    }
    if (flips != 1) return false;
    size_t a = 0, b = 0;
    off[0] = on[0] = 0;
    for (int i = 0; i < t->n; i++) {
        const op *o = &t->ops[i];
        bool random_flip = o->kind == OP_HFLIP && o->p > 0.0 && o->p < 1.0;
        const char *sep = i ? "," : "";
        a += (size_t)snprintf(off + a, a < size ? size - a : 0, "%s%s", sep, random_flip ? "hflip=0" : o->item);
        b += (size_t)snprintf(on + b, b < size ? size - b : 0, "%s%s", sep, random_flip ? "hflip=1" : o->item);
    }
    return a < size && b < size;
}

bool graft_transforms_draw_flip(const graft_transforms *t, graft_rng *rng) {
    for (int i = 0; i < t->n; i++) {
        const op *o = &t->ops[i];
        if (o->kind == OP_HFLIP && o->p > 0.0 && o->p < 1.0) return graft_rng_uniform(rng) < o->p;
    }
    return false;
}

/* -- parsing -- */

static graft_status item_error(int index, const char *item, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static graft_status item_error(int index, const char *item, const char *fmt, ...) {
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return graft_error(GRAFT_ERR_INVALID, "transform spec item %d '%.*s': %s", index,
                       ITEM_SHOWN_BYTES, item, why);
}

/* A decimal integer in [lo, hi] filling all of s. */
static bool parse_int(const char *s, int lo, int hi, int *out) {
    if (!*s) return false;
    long long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return false;
        v = v * 10 + (*p - '0');
        if (v > hi) return false;
    }
    if (v < lo) return false;
    *out = (int)v;
    return true;
}

/* A finite decimal number filling all of s. */
static bool parse_double(const char *s, double *out) {
    if (!*s || strchr(" \t\n", *s)) return false;
    char *end;
    double v = strtod(s, &end);
    if (*end || !isfinite(v)) return false;
    *out = v;
    return true;
}

/* "S" (h = w = S, *square = true) or "HxW". */
static bool parse_size(char *s, int *h, int *w, bool *square) {
    char *x = strchr(s, 'x');
    if (!x) {
        *square = true;
        return parse_int(s, 1, GRAFT_IMAGE_MAX_SIDE, h) && (*w = *h, true);
    }
    *x = 0;
    *square = false;
    return parse_int(s, 1, GRAFT_IMAGE_MAX_SIDE, h) && parse_int(x + 1, 1, GRAFT_IMAGE_MAX_SIDE, w);
}

/* "V" or "V:V:V", at most NORMALIZE_MAX_VALUES values; returns the count or 0. */
static int parse_values(char *s, float *vals) {
    int n = 0;
    for (char *tok = s;; n++) {
        char *colon = strchr(tok, ':');
        if (colon) *colon = 0;
        double v;
        if (n == NORMALIZE_MAX_VALUES || !parse_double(tok, &v)) return 0;
        vals[n] = (float)v;
        if (!colon) return n + 1;
        tok = colon + 1;
    }
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = 0;
    return s;
}

/* Parses one item (NUL-terminated, modified in place) into o. */
static graft_status parse_item(int index, char *item, op *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->item, sizeof o->item, "%s", item);
    char shown[ITEM_SHOWN_BYTES];
    snprintf(shown, sizeof shown, "%s", item);
    char *value = strchr(item, '=');
    if (value) *value++ = 0;
    const char *name = item;
    bool square;

    if (strcmp(name, "resize") == 0) {
        o->kind = OP_RESIZE;
        if (!value || !parse_size(value, &o->h, &o->w, &square))
            return item_error(index, shown, "expected resize=S (smaller edge) or resize=HxW, "
                                            "sizes 1..%d", GRAFT_IMAGE_MAX_SIDE);
        if (square) o->w = 0;
    } else if (strcmp(name, "centercrop") == 0) {
        o->kind = OP_CENTER_CROP;
        if (!value || !parse_size(value, &o->h, &o->w, &square))
            return item_error(index, shown, "expected centercrop=S or centercrop=HxW, sizes 1..%d",
                              GRAFT_IMAGE_MAX_SIDE);
    } else if (strcmp(name, "randomcrop") == 0) {
        o->kind = OP_RANDOM_CROP;
        char *pad = value ? strchr(value, ':') : NULL;
        if (pad) *pad++ = 0;
        if (!value || !parse_size(value, &o->h, &o->w, &square) ||
            (pad && !parse_int(pad, 0, GRAFT_IMAGE_MAX_SIDE, &o->padding)))
            return item_error(index, shown, "expected randomcrop=S or randomcrop=HxW, then "
                                            "optionally :PADDING");
    } else if (strcmp(name, "hflip") == 0) {
        o->kind = OP_HFLIP;
        o->p = 0.5; /* RandomHorizontalFlip's default */
        if (value && (!parse_double(value, &o->p) || o->p < 0.0 || o->p > 1.0))
            return item_error(index, shown, "expected hflip or hflip=P with P in [0, 1]");
    } else if (strcmp(name, "grayscale") == 0) {
        o->kind = OP_GRAYSCALE;
        o->channels = 1; /* Grayscale's default num_output_channels */
        if (value && (!parse_int(value, 1, 3, &o->channels) || o->channels == 2))
            return item_error(index, shown, "expected grayscale, grayscale=1 or grayscale=3");
    } else if (strcmp(name, "normalize") == 0) {
        o->kind = OP_NORMALIZE;
        static const float imagenet_mean[3] = GRAFT_IMAGENET_MEAN;
        static const float imagenet_std[3] = GRAFT_IMAGENET_STD;
        if (value && strcmp(value, "imagenet") == 0) {
            o->n_mean = o->n_std = 3;
            memcpy(o->mean, imagenet_mean, sizeof o->mean);
            memcpy(o->std, imagenet_std, sizeof o->std);
        } else {
            char *slash = value ? strchr(value, '/') : NULL;
            if (slash) *slash = 0;
            if (!slash || !(o->n_mean = parse_values(value, o->mean)) ||
                !(o->n_std = parse_values(slash + 1, o->std)) || o->n_mean == 2 || o->n_std == 2)
                return item_error(index, shown, "expected normalize=imagenet or "
                                                "normalize=MEAN/STD, each 1 or 3 numbers "
                                                "separated by ':'");
            for (int i = 0; i < o->n_std; i++)
                if (o->std[i] == 0.0f)
                    return item_error(index, shown, "std is zero (division by zero)");
        }
    } else {
        return item_error(index, shown, "unknown transform '%s' (known: resize, centercrop, "
                                        "randomcrop, hflip, grayscale, totensor, normalize)",
                          name);
    }
    return GRAFT_OK;
}

graft_status graft_transforms_parse(const char *spec, graft_transforms **out) {
    *out = NULL;
    graft_transforms *t = calloc(1, sizeof *t);
    size_t len = strlen(spec);
    char *buf = malloc(len + 1);
    if (t) t->spec = malloc(len + 1);
    if (t) t->ops = malloc(sizeof *t->ops * (len / 2 + 1)); /* items take >= 2 bytes each */
    if (!t || !buf || !t->spec || !t->ops) {
        free(buf);
        graft_transforms_free(t);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    memcpy(t->spec, spec, len + 1);
    memcpy(buf, spec, len + 1);

    graft_status s = GRAFT_OK;
    bool tensor_stage = false; /* after totensor or normalize: only normalize may follow */
    bool normalized = false;
    if (*trim(buf)) {
        int index = 1;
        for (char *item = buf; item && !s; index++) {
            char *comma = strchr(item, ',');
            if (comma) *comma = 0;
            char *it = trim(item);
            item = comma ? comma + 1 : NULL;
            if (!*it) {
                s = item_error(index, it, "empty item");
            } else if (strcmp(it, "totensor") == 0) {
                if (tensor_stage) s = item_error(index, it, "ToTensor is already applied here");
                tensor_stage = true;
            } else {
                op *o = &t->ops[t->n];
                s = parse_item(index, it, o);
                if (!s && normalized)
                    s = item_error(index, o->item, "normalize must be the last transform");
                else if (!s && tensor_stage && o->kind != OP_NORMALIZE)
                    s = item_error(index, o->item,
                                   "image transforms must come before totensor/normalize");
                if (!s && o->kind == OP_NORMALIZE) tensor_stage = normalized = true;
                if (!s) t->n++;
            }
        }
    }
    free(buf);
    if (s) {
        graft_transforms_free(t);
        return s;
    }
    *out = t;
    return GRAFT_OK;
}

/* -- shapes -- */

static graft_status shape_error(const op *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static graft_status shape_error(const op *o, const char *fmt, ...) {
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return graft_error(GRAFT_ERR_SHAPE, "transform '%s': %s", o->item, why);
}

static bool side_ok(int64_t h, int64_t w) {
    return h >= 1 && w >= 1 && h <= GRAFT_IMAGE_MAX_SIDE && w <= GRAFT_IMAGE_MAX_SIDE &&
           h * w <= GRAFT_IMAGE_MAX_PIXELS;
}

/* Advances the shape (h, w, c) through one transform. */
static graft_status op_shape(const op *o, int *h, int *w, int *c) {
    switch (o->kind) {
    case OP_RESIZE: {
        int nh = o->h, nw = o->w;
        if (o->w == 0) graft_resize_output_size(*h, *w, o->h, &nh, &nw);
        if (!side_ok(nh, nw))
            return shape_error(o, "output %dx%d of a %dx%d image is beyond the image limits", nh,
                               nw, *h, *w);
        *h = nh;
        *w = nw;
        return GRAFT_OK;
    }
    case OP_CENTER_CROP:
        *h = o->h;
        *w = o->w;
        return GRAFT_OK;
    case OP_RANDOM_CROP: {
        int64_t ph = *h + 2 * (int64_t)o->padding, pw = *w + 2 * (int64_t)o->padding;
        if (o->h > ph || o->w > pw)
            return shape_error(o, "crop %dx%d is larger than the padded image %lldx%lld", o->h,
                               o->w, (long long)ph, (long long)pw);
        *h = o->h;
        *w = o->w;
        return GRAFT_OK;
    }
    case OP_HFLIP: return GRAFT_OK;
    case OP_GRAYSCALE: *c = o->channels; return GRAFT_OK;
    case OP_NORMALIZE:
        if ((o->n_mean != 1 && o->n_mean != *c) || (o->n_std != 1 && o->n_std != *c))
            return shape_error(o, "%d means and %d stds for an image of %d channels", o->n_mean,
                               o->n_std, *c);
        return GRAFT_OK;
    }
    return GRAFT_OK;
}

graft_status graft_transforms_output_shape(const graft_transforms *t, int h, int w, int c,
                                           int chw[3]) {
    if (!side_ok(h, w) || (c != 1 && c != 3))
        return graft_error(GRAFT_ERR_SHAPE, "image %dx%dx%d is outside the image limits", h, w, c);
    for (int i = 0; i < t->n; i++) {
        graft_status s = op_shape(&t->ops[i], &h, &w, &c);
        if (s) return s;
    }
    chw[0] = c;
    chw[1] = h;
    chw[2] = w;
    return GRAFT_OK;
}

/* -- applying -- */

/* A uniform integer in [0, n], as torch.randint(0, n + 1). */
static int random_upto(graft_rng *rng, int n) {
    return (int)(graft_rng_uniform(rng) * ((double)n + 1.0));
}

graft_status graft_transforms_apply_image(const graft_transforms *t, const graft_image *in,
                                          graft_rng *rng, graft_transform_work *work,
                                          const graft_image **result) {
    int chw[3];
    graft_status s = graft_transforms_output_shape(t, in->h, in->w, in->c, chw);
    if (s) return s;
    const graft_image *cur = in;
    for (int i = 0; i < t->n && !s; i++) {
        const op *o = &t->ops[i];
        graft_image *dst = cur == &work->a ? &work->b : &work->a;
        switch (o->kind) {
        case OP_RESIZE: {
            int nh = o->h, nw = o->w;
            if (o->w == 0) graft_resize_output_size(cur->h, cur->w, o->h, &nh, &nw);
            s = graft_image_resize(cur, nh, nw, dst, &work->resize);
            break;
        }
        case OP_CENTER_CROP: s = graft_image_center_crop(cur, o->h, o->w, dst); break;
        case OP_RANDOM_CROP: {
            /* RandomCrop.forward: pad, then get_params draws top then left, unless the
             * crop is the whole padded image. */
            int ph = cur->h + 2 * o->padding, pw = cur->w + 2 * o->padding;
            int top = 0, left = 0;
            if (ph != o->h || pw != o->w) {
                if (!rng) return graft_error(GRAFT_ERR_INVALID, "transform '%s' needs a random "
                                                                "generator", o->item);
                top = random_upto(rng, ph - o->h);
                left = random_upto(rng, pw - o->w);
            }
            s = graft_image_crop(cur, top - o->padding, left - o->padding, o->h, o->w, dst);
            break;
        }
        case OP_HFLIP: {
            bool flip = o->p >= 1.0;
            if (o->p > 0.0 && o->p < 1.0) {
                if (!rng) return graft_error(GRAFT_ERR_INVALID, "transform '%s' needs a random "
                                                                "generator", o->item);
                flip = graft_rng_uniform(rng) < o->p; /* torch.rand(1) < p */
            }
            if (!flip) continue;
            s = graft_image_hflip(cur, dst);
            break;
        }
        case OP_GRAYSCALE: s = graft_image_grayscale(cur, o->channels, dst); break;
        case OP_NORMALIZE: continue; /* the tensor stage */
        }
        cur = dst;
    }
    if (s) return s;
    *result = cur;
    return GRAFT_OK;
}

graft_status graft_transforms_apply(const graft_transforms *t, const graft_image *in,
                                    graft_rng *rng, graft_transform_work *work, float *out,
                                    size_t out_floats) {
    int chw[3];
    graft_status s = graft_transforms_output_shape(t, in->h, in->w, in->c, chw);
    if (s) return s;
    size_t need = (size_t)chw[0] * chw[1] * chw[2];
    if (out_floats != need)
        return graft_error(GRAFT_ERR_SHAPE, "transform output [%d, %d, %d] needs %zu floats, "
                                            "given %zu", chw[0], chw[1], chw[2], need, out_floats);
    const graft_image *img;
    s = graft_transforms_apply_image(t, in, rng, work, &img);
    if (s) return s;
    graft_image_to_tensor(img, out);
    for (int i = 0; i < t->n && !s; i++) {
        const op *o = &t->ops[i];
        if (o->kind != OP_NORMALIZE) continue;
        /* Normalize broadcasts mean and std separately; expand both to c values. */
        float mean[NORMALIZE_MAX_VALUES], std[NORMALIZE_MAX_VALUES];
        for (int ch = 0; ch < img->c; ch++) {
            mean[ch] = o->mean[o->n_mean == 1 ? 0 : ch];
            std[ch] = o->std[o->n_std == 1 ? 0 : ch];
        }
        s = graft_normalize(out, img->c, img->h, img->w, mean, std, img->c);
    }
    return s;
}
