/* image.c — uint8 images and the PNG, JPEG and BMP decoders that produce them.
 *
 * The target is PIL: Image.open(path).convert("RGB") (see image.h for the rules).
 * Each decoder reads from a buffer holding the whole file, so a truncated file shows
 * up as a read past the end, never as a short read from the OS.
 *
 * libpng and libjpeg report fatal errors through a callback that must not return.
 * Their defaults print to stderr and, for libjpeg, exit(); here the callbacks store the
 * message and longjmp back to the decoder, which frees what it allocated and returns
 * GRAFT_ERR_FORMAT.  Everything a decoder must free after a longjmp lives in a context
 * struct owned by the caller of the function that calls setjmp, so no automatic
 * variable changed after setjmp is read afterwards (C11 7.13.2.1). */
#include "data/image.h"

#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h> /* before jpeglib.h, which uses FILE */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include "core/error.h"

#define IMAGE_MAX_FILE_BYTES (1ull << 30) /* larger encoded files are refused unread */
#define DECODER_MSG_BYTES 200
#define PALETTE_ENTRIES 256

/* ---- images ---------------------------------------------------------------- */

void graft_image_init(graft_image *img) { memset(img, 0, sizeof *img); }

void graft_image_release(graft_image *img) {
    if (img->cap_bytes) free(img->data);
    memset(img, 0, sizeof *img);
}

graft_image graft_image_view(const uint8_t *pixels, int h, int w, int c) {
    graft_image v = {h, w, c, (uint8_t *)pixels, 0}; /* views are never written or freed */
    return v;
}

size_t graft_image_bytes(const graft_image *img) {
    return (size_t)img->h * (size_t)img->w * (size_t)img->c;
}

/* Whether h × w fits the decompression-bomb limits. */
static bool dims_ok(uint64_t h, uint64_t w) {
    return h >= 1 && w >= 1 && h <= GRAFT_IMAGE_MAX_SIDE && w <= GRAFT_IMAGE_MAX_SIDE &&
           h * w <= GRAFT_IMAGE_MAX_PIXELS;
}

graft_status graft_image_reserve(graft_image *img, int h, int w, int c) {
    if (h < 1 || w < 1 || !dims_ok((uint64_t)h, (uint64_t)w) || (c != 1 && c != 3))
        return graft_error(GRAFT_ERR_SHAPE,
                           "image %dx%dx%d is outside the limits (1 or 3 channels, sides up to "
                           "%d, at most %d pixels)",
                           h, w, c, GRAFT_IMAGE_MAX_SIDE, GRAFT_IMAGE_MAX_PIXELS);
    size_t need = (size_t)h * (size_t)w * (size_t)c;
    if (need > img->cap_bytes) {
        uint8_t *p = malloc(need);
        if (!p) return graft_error(GRAFT_ERR_NOMEM, "out of memory allocating %zu bytes", need);
        if (img->cap_bytes) free(img->data);
        img->data = p;
        img->cap_bytes = need;
    }
    img->h = h;
    img->w = w;
    img->c = c;
    return GRAFT_OK;
}

graft_image_format graft_image_sniff(const void *bytes, size_t nbytes) {
    static const unsigned char png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const unsigned char *b = bytes;
    if (nbytes >= 8 && memcmp(b, png_sig, 8) == 0) return GRAFT_IMAGE_PNG;
    if (nbytes >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff) return GRAFT_IMAGE_JPEG;
    if (nbytes >= 2 && b[0] == 'B' && b[1] == 'M') return GRAFT_IMAGE_BMP;
    return GRAFT_IMAGE_UNKNOWN;
}

/* The reason an image of h × w is refused, for an error message. */
static void too_large_msg(char *buf, size_t size, uint64_t h, uint64_t w) {
    snprintf(buf, size, "image is %llux%llu (width x height), beyond the limits (sides up to %d, "
             "at most %d pixels)", (unsigned long long)w, (unsigned long long)h,
             GRAFT_IMAGE_MAX_SIDE, GRAFT_IMAGE_MAX_PIXELS);
}

/* PIL initialises every palette to the gray ramp (entry i = (i, i, i)) and then copies
 * the file's entries over the first ones, so an index past the file's palette reads
 * as gray i.  Decoders start from this and overwrite. */
static void palette_ramp(uint8_t pal[PALETTE_ENTRIES][3]) {
    for (int i = 0; i < PALETTE_ENTRIES; i++) pal[i][0] = pal[i][1] = pal[i][2] = (uint8_t)i;
}

/* ---- PNG ------------------------------------------------------------------- */

typedef struct png_ctx {
    const uint8_t *bytes;
    size_t size, pos;
    png_structp png;
    png_infop info;
    jmp_buf jmp;
    char msg[DECODER_MSG_BYTES];
    graft_status status; /* what a longjmp means: FORMAT unless set otherwise */
    uint8_t *rows;       /* the decoded rows, before conversion to RGB */
    png_bytep *row_ptrs;
    graft_image *out;
} png_ctx;

static void png_read_mem(png_structp png, png_bytep dst, size_t n) {
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->size - c->pos) png_error(png, "file is truncated");
    memcpy(dst, c->bytes + c->pos, n);
    c->pos += n;
}

static void png_on_error(png_structp png, png_const_charp msg) {
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    longjmp(c->jmp, 1);
}

/* Warnings (bad ancillary chunks, which PIL skips too) are dropped: graft never prints. */
static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

/* Decodes c->bytes into c->out; returns 0, or -1 with c->msg and c->status set. */
static int png_run(png_ctx *c) {
    if (setjmp(c->jmp)) return -1;
    png_set_read_fn(c->png, c, png_read_mem);
    png_set_user_limits(c->png, GRAFT_IMAGE_MAX_SIDE, GRAFT_IMAGE_MAX_SIDE);
    png_read_info(c->png, c->info);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(c->png, c->info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    if (!dims_ok(h, w)) {
        too_large_msg(c->msg, sizeof c->msg, h, w);
        return -1;
    }
    /* 16-bit gray without alpha: PIL opens it as mode "I" and convert("RGB") clips each
     * value to 255; every other 16-bit layout keeps the high byte ("RGB;16B" etc.). */
    bool gray16 = depth == 16 && ctype == PNG_COLOR_TYPE_GRAY;
    bool palette = ctype == PNG_COLOR_TYPE_PALETTE;
    if (palette) png_set_packing(c->png); /* indices as bytes; looked up below, as PIL does */
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(c->png);
    if (depth == 16 && !gray16) png_set_strip_16(c->png);
    if (interlace != PNG_INTERLACE_NONE) png_set_interlace_handling(c->png);
    png_read_update_info(c->png, c->info);

    uint8_t pal[PALETTE_ENTRIES][3];
    if (palette) {
        palette_ramp(pal);
        png_colorp plte = NULL;
        int n = 0;
        if (png_get_PLTE(c->png, c->info, &plte, &n) & PNG_INFO_PLTE)
            for (int i = 0; i < n && i < PALETTE_ENTRIES; i++) {
                pal[i][0] = plte[i].red;
                pal[i][1] = plte[i].green;
                pal[i][2] = plte[i].blue;
            }
    }

    int channels = png_get_channels(c->png, c->info);
    size_t rowbytes = png_get_rowbytes(c->png, c->info);
    if (channels < 1 || channels > 4 || rowbytes < (size_t)w * (size_t)channels)
        png_error(c->png, "unexpected row layout");
    c->rows = malloc(rowbytes * h);
    c->row_ptrs = malloc(sizeof *c->row_ptrs * h);
    if (!c->rows || !c->row_ptrs) {
        c->status = GRAFT_ERR_NOMEM;
        snprintf(c->msg, sizeof c->msg, "out of memory");
        return -1;
    }
    for (png_uint_32 y = 0; y < h; y++) c->row_ptrs[y] = c->rows + y * rowbytes;
    png_read_image(c->png, c->row_ptrs);
    /* png_read_end is not called: PIL accepts a file that stops after the image data,
     * and the pixels are complete at this point. */

    if (graft_image_reserve(c->out, (int)h, (int)w, 3)) {
        c->status = GRAFT_ERR_NOMEM;
        snprintf(c->msg, sizeof c->msg, "%s", graft_errmsg());
        return -1;
    }
    for (png_uint_32 y = 0; y < h; y++) {
        const uint8_t *src = c->row_ptrs[y];
        uint8_t *dst = c->out->data + (size_t)y * w * 3;
        for (png_uint_32 x = 0; x < w; x++, dst += 3) {
            if (gray16) {
                unsigned v = (unsigned)src[2 * x] << 8 | src[2 * x + 1];
                dst[0] = dst[1] = dst[2] = (uint8_t)(v > 255 ? 255 : v);
            } else if (palette) {
                memcpy(dst, pal[src[x]], 3);
            } else if (channels <= 2) { /* gray, gray + alpha */
                dst[0] = dst[1] = dst[2] = src[(size_t)x * channels];
            } else { /* RGB, RGBA */
                memcpy(dst, src + (size_t)x * channels, 3);
            }
        }
    }
    return 0;
}

static graft_status decode_png(const uint8_t *bytes, size_t size, const char *name,
                               graft_image *out) {
    png_ctx c;
    memset(&c, 0, sizeof c);
    c.bytes = bytes;
    c.size = size;
    c.out = out;
    c.status = GRAFT_ERR_FORMAT;
    c.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &c, png_on_error, png_on_warning);
    if (!c.png) return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", name);
    c.info = png_create_info_struct(c.png);
    int rc = c.info ? png_run(&c) : -1;
    if (!c.info) {
        c.status = GRAFT_ERR_NOMEM;
        snprintf(c.msg, sizeof c.msg, "out of memory");
    }
    png_destroy_read_struct(&c.png, c.info ? &c.info : NULL, NULL);
    free(c.rows);
    free(c.row_ptrs);
    if (rc) return graft_error(c.status, "%s: PNG: %s", name, c.msg);
    return GRAFT_OK;
}

/* ---- JPEG ------------------------------------------------------------------ */

typedef struct jpeg_ctx {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_error_mgr jerr;
    bool created;
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX > DECODER_MSG_BYTES ? JMSG_LENGTH_MAX : DECODER_MSG_BYTES];
    graft_status status;
    uint8_t *cmyk_row; /* one row of CMYK samples, for the conversion to RGB */
    graft_image *out;
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_ctx *c = cinfo->client_data;
    (*cinfo->err->format_message)(cinfo, c->msg);
    longjmp(c->jmp, 1);
}

/* libjpeg reports a truncated file as a warning and pads the image with gray; PIL
 * raises "image file is truncated", so graft fails too.  Other warnings (extraneous
 * bytes and the like) are ignored, as PIL ignores them. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    jpeg_ctx *c = cinfo->client_data;
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        snprintf(c->msg, sizeof c->msg, "file is truncated");
        longjmp(c->jmp, 1);
    }
}

static void jpeg_on_output(j_common_ptr cinfo) { (void)cinfo; }

/* (a * b) / 255 rounded, exactly as PIL's MULDIV255 macro computes it. */
static int muldiv255(int a, int b) {
    int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

static uint8_t clip8(int v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

/* One row of Adobe-inverted CMYK (what libjpeg returns for Adobe files, which PIL
 * reads with rawmode "CMYK;I") to RGB with PIL's cmyk2rgb: R = (255-K) - C*(255-K)/255. */
static void cmyk_row_to_rgb(const uint8_t *src, uint8_t *dst, size_t w) {
    for (size_t x = 0; x < w; x++, src += 4, dst += 3) {
        int k = 255 - src[3];
        int nk = 255 - k;
        for (int ch = 0; ch < 3; ch++) dst[ch] = clip8(nk - muldiv255(255 - src[ch], nk));
    }
}

static int jpeg_run(jpeg_ctx *c, const uint8_t *bytes, size_t size) {
    if (setjmp(c->jmp)) return -1;
    jpeg_create_decompress(&c->cinfo);
    c->created = true;
    jpeg_mem_src(&c->cinfo, bytes, (unsigned long)size);
    jpeg_read_header(&c->cinfo, TRUE);
    if (!dims_ok(c->cinfo.image_height, c->cinfo.image_width)) {
        too_large_msg(c->msg, sizeof c->msg, c->cinfo.image_height, c->cinfo.image_width);
        return -1;
    }
    bool cmyk = false;
    switch (c->cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE:
    case JCS_YCbCr:
    case JCS_RGB: c->cinfo.out_color_space = JCS_RGB; break;
    case JCS_CMYK:
    case JCS_YCCK:
        c->cinfo.out_color_space = JCS_CMYK;
        cmyk = true;
        break;
    default:
        c->status = GRAFT_ERR_UNSUPPORTED;
        snprintf(c->msg, sizeof c->msg, "color space %d is not supported",
                 (int)c->cinfo.jpeg_color_space);
        return -1;
    }
    jpeg_start_decompress(&c->cinfo);
    unsigned w = c->cinfo.output_width, h = c->cinfo.output_height;
    if (c->cinfo.output_components != (cmyk ? 4 : 3) || !dims_ok(h, w)) {
        snprintf(c->msg, sizeof c->msg, "unexpected output layout");
        return -1;
    }
    if (graft_image_reserve(c->out, (int)h, (int)w, 3)) {
        c->status = GRAFT_ERR_NOMEM;
        snprintf(c->msg, sizeof c->msg, "%s", graft_errmsg());
        return -1;
    }
    if (cmyk && !(c->cmyk_row = malloc((size_t)w * 4))) {
        c->status = GRAFT_ERR_NOMEM;
        snprintf(c->msg, sizeof c->msg, "out of memory");
        return -1;
    }
    while (c->cinfo.output_scanline < h) {
        uint8_t *dst = c->out->data + (size_t)c->cinfo.output_scanline * w * 3;
        JSAMPROW row = cmyk ? c->cmyk_row : dst;
        if (jpeg_read_scanlines(&c->cinfo, &row, 1) != 1) {
            snprintf(c->msg, sizeof c->msg, "file is truncated");
            return -1;
        }
        if (cmyk) cmyk_row_to_rgb(c->cmyk_row, dst, w);
    }
    /* jpeg_finish_decompress is not called: it would read on to the EOI marker, and
     * PIL accepts a file whose pixels are complete but whose EOI is missing. */
    return 0;
}

static graft_status decode_jpeg(const uint8_t *bytes, size_t size, const char *name,
                                graft_image *out) {
    if (size > ULONG_MAX) return graft_error(GRAFT_ERR_FORMAT, "%s: file is too large", name);
    jpeg_ctx *c = calloc(1, sizeof *c); /* ~700 bytes of libjpeg state: off the stack */
    if (!c) return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", name);
    c->status = GRAFT_ERR_FORMAT;
    c->out = out;
    c->cinfo.err = jpeg_std_error(&c->jerr);
    c->jerr.error_exit = jpeg_on_error;
    c->jerr.emit_message = jpeg_on_message;
    c->jerr.output_message = jpeg_on_output;
    c->cinfo.client_data = c;
    int rc = jpeg_run(c, bytes, size);
    if (c->created) jpeg_destroy_decompress(&c->cinfo);
    free(c->cmyk_row);
    graft_status s = GRAFT_OK;
    if (rc) s = graft_error(c->status, "%s: JPEG: %s", name, c->msg);
    free(c);
    return s;
}

/* ---- BMP ------------------------------------------------------------------- */

/* Layout (Microsoft's BITMAPFILEHEADER, then BITMAPCOREHEADER (12 bytes) or
 * BITMAPINFOHEADER (40) and its extensions (52, 56, 64 = OS/2 2.x, 108 = V4, 124 = V5);
 * all little-endian):
 *     file header  0 "BM"   2 file size   10 offset of the pixel data
 *     info header  0 size   4 width   8 height (negative: rows top-down)   12 planes
 *                  14 bits per pixel   16 compression   32 colors used
 *                  40 red, green, blue masks (bit fields; after a 40-byte header they
 *                     follow it instead)
 *     core header  0 size   4 width (u16)   6 height (u16)   8 planes   10 bits
 * A palette of 4-byte BGRX entries (3-byte BGR after a core header) follows the
 * headers; rows are padded to 4 bytes. */
#define BMP_FILE_HEADER 14
#define BMP_CORE_HEADER 12
#define BMP_INFO_HEADER 40
#define BMP_RGB 0
#define BMP_RLE8 1
#define BMP_RLE4 2
#define BMP_BITFIELDS 3

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Which byte of a 32-bit little-endian pixel a mask selects (0..3), or -1 when the
 * mask is not one whole byte. */
static int mask_byte(uint32_t mask) {
    for (int k = 0; k < 4; k++)
        if (mask == 0xffu << (8 * k)) return k;
    return -1;
}

static graft_status bmp_error(const char *name, const char *what) {
    return graft_error(GRAFT_ERR_FORMAT, "%s: BMP: %s", name, what);
}

static graft_status decode_bmp(const uint8_t *b, size_t size, const char *name,
                               graft_image *out) {
    if (size < BMP_FILE_HEADER + 4) return bmp_error(name, "file is truncated");
    uint32_t offset = le32(b + 10);
    uint32_t hsize = le32(b + BMP_FILE_HEADER);
    const uint8_t *ih = b + BMP_FILE_HEADER;
    if (hsize != BMP_CORE_HEADER && hsize != BMP_INFO_HEADER && hsize != 52 && hsize != 56 &&
        hsize != 64 && hsize != 108 && hsize != 124)
        return graft_error(GRAFT_ERR_UNSUPPORTED, "%s: BMP: header size %u is not supported",
                           name, hsize);
    if (size < BMP_FILE_HEADER + (size_t)hsize) return bmp_error(name, "file is truncated");

    int64_t w, h;
    unsigned bits, compression = BMP_RGB;
    uint32_t colors = 0;
    size_t entry_bytes = 4, palette_at = BMP_FILE_HEADER + hsize;
    uint32_t masks[3] = {0x00ff0000u, 0x0000ff00u, 0x000000ffu}; /* BGRX */
    bool top_down = false;
    if (hsize == BMP_CORE_HEADER) {
        w = le16(ih + 4);
        h = le16(ih + 6);
        bits = le16(ih + 10);
        entry_bytes = 3;
    } else {
        w = (int32_t)le32(ih + 4);
        h = (int32_t)le32(ih + 8);
        bits = le16(ih + 14);
        compression = le32(ih + 16);
        colors = le32(ih + 32);
        if (h < 0) {
            top_down = true;
            h = -h;
        }
        if (compression == BMP_BITFIELDS) {
            const uint8_t *m = ih + 40;
            if (hsize == BMP_INFO_HEADER) { /* the masks follow the header */
                if (size < palette_at + 12) return bmp_error(name, "file is truncated");
                m = b + palette_at;
                palette_at += 12;
            }
            for (int i = 0; i < 3; i++) masks[i] = le32(m + 4 * i);
        }
    }
    if (w <= 0 || h <= 0) return bmp_error(name, "width or height is not positive");
    if (!dims_ok((uint64_t)h, (uint64_t)w)) {
        char msg[DECODER_MSG_BYTES];
        too_large_msg(msg, sizeof msg, (uint64_t)h, (uint64_t)w);
        return bmp_error(name, msg);
    }
    if (compression == BMP_RLE8 || compression == BMP_RLE4)
        return graft_error(GRAFT_ERR_UNSUPPORTED, "%s: BMP: RLE compression is not supported",
                           name);
    bool paletted = bits == 1 || bits == 4 || bits == 8;
    if (!(paletted && compression == BMP_RGB) &&
        !(bits == 24 && compression == BMP_RGB) &&
        !(bits == 32 && (compression == BMP_RGB || compression == BMP_BITFIELDS)))
        return graft_error(GRAFT_ERR_UNSUPPORTED,
                           "%s: BMP: %u bits per pixel with compression %u is not supported",
                           name, bits, compression);
    int sel[3]; /* byte of a 32-bit pixel holding R, G, B */
    for (int i = 0; i < 3; i++) sel[i] = mask_byte(masks[i]);
    if (bits == 32 && (sel[0] < 0 || sel[1] < 0 || sel[2] < 0))
        return graft_error(GRAFT_ERR_UNSUPPORTED,
                           "%s: BMP: bit-field masks 0x%08x 0x%08x 0x%08x are not supported",
                           name, masks[0], masks[1], masks[2]);

    uint8_t pal[PALETTE_ENTRIES][3];
    if (paletted) {
        palette_ramp(pal);
        uint64_t n = colors ? colors : 1u << bits; /* 0 means "all 2^bits" */
        if (n > PALETTE_ENTRIES) n = PALETTE_ENTRIES; /* indices cannot reach further */
        if (palette_at + n * entry_bytes > size) return bmp_error(name, "palette is truncated");
        for (uint64_t i = 0; i < n; i++) {
            const uint8_t *e = b + palette_at + i * entry_bytes; /* B, G, R(, X) */
            pal[i][0] = e[2];
            pal[i][1] = e[1];
            pal[i][2] = e[0];
        }
    }

    uint64_t stride = ((uint64_t)w * bits + 31) / 32 * 4;
    if (offset > size || stride * (uint64_t)h > size - offset)
        return bmp_error(name, "pixel data is truncated");
    graft_status s = graft_image_reserve(out, (int)h, (int)w, 3);
    if (s) return graft_error_prefix(s, "%s", name);
    for (int64_t y = 0; y < h; y++) {
        const uint8_t *row = b + offset + stride * (uint64_t)(top_down ? y : h - 1 - y);
        uint8_t *dst = out->data + (size_t)y * (size_t)w * 3;
        for (int64_t x = 0; x < w; x++, dst += 3) {
            if (paletted) {
                unsigned per_byte = 8 / bits, shift = 8 - bits * (1 + (unsigned)(x % per_byte));
                unsigned idx = (row[x / per_byte] >> shift) & ((1u << bits) - 1);
                memcpy(dst, pal[idx], 3);
            } else if (bits == 24) {
                const uint8_t *p = row + 3 * x; /* B, G, R */
                dst[0] = p[2];
                dst[1] = p[1];
                dst[2] = p[0];
            } else {
                const uint8_t *p = row + 4 * x;
                for (int ch = 0; ch < 3; ch++) dst[ch] = p[sel[ch]];
            }
        }
    }
    return GRAFT_OK;
}

/* ---- entry points ---------------------------------------------------------- */

graft_status graft_image_decode(const void *bytes, size_t nbytes, const char *name,
                                graft_image *out) {
    switch (graft_image_sniff(bytes, nbytes)) {
    case GRAFT_IMAGE_PNG: return decode_png(bytes, nbytes, name, out);
    case GRAFT_IMAGE_JPEG: return decode_jpeg(bytes, nbytes, name, out);
    case GRAFT_IMAGE_BMP: return decode_bmp(bytes, nbytes, name, out);
    case GRAFT_IMAGE_UNKNOWN: break;
    }
    return graft_error(GRAFT_ERR_UNSUPPORTED, "%s: not a PNG, JPEG or BMP file", name);
}

graft_status graft_image_load(const char *path, graft_image *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return graft_error(GRAFT_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > IMAGE_MAX_FILE_BYTES) {
        fclose(f);
        return graft_error(GRAFT_ERR_FORMAT, "%s: file of %lld bytes is beyond the limit of %llu",
                           path, (long long)st.st_size, IMAGE_MAX_FILE_BYTES);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        fclose(f);
        return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t got = fread(buf, 1, n, f);
    int read_failed = ferror(f);
    fclose(f);
    graft_status s;
    if (read_failed) s = graft_error(GRAFT_ERR_IO, "%s: read error", path);
    else s = graft_image_decode(buf, got, path, out);
    free(buf);
    return s;
}
