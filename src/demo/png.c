/* png.c — a PNG encoder for small report images (see png.h). */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "core/error.h"
#include "demo/png.h"

#define PNG_COLOR_GRAY 0 /* IHDR colour types (PNG specification, 11.2.2) */
#define PNG_COLOR_RGB 2

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* A chunk at p: length, type, data (already at p + 8), CRC over type and data.
 * Returns the chunk's size. */
static size_t finish_chunk(uint8_t *p, const char type[4], size_t len) {
    put_u32(p, (uint32_t)len);
    memcpy(p + 4, type, 4);
    put_u32(p + 8 + len, (uint32_t)crc32(crc32(0L, Z_NULL, 0), p + 4, (uInt)(len + 4)));
    return len + 12;
}

graft_status graft_png_encode(const uint8_t *pixels, int h, int w, int c, uint8_t **out, size_t *bytes) {
    *out = NULL;
    *bytes = 0;
    if (h < 1 || w < 1 || h > 4096 || w > 4096 || (c != 1 && c != 3))
        return graft_error(GRAFT_ERR_INVALID, "png: cannot encode a %dx%dx%d image", h, w, c);
    size_t row = (size_t)w * (size_t)c, raw_bytes = (row + 1) * (size_t)h;
    uint8_t *raw = malloc(raw_bytes);
    uLongf zbytes = compressBound((uLong)raw_bytes);
    uint8_t *png = malloc(8 + 25 + 12 + zbytes + 12);
    if (!raw || !png) {
        free(raw);
        free(png);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    for (int y = 0; y < h; y++) { /* each row: filter type 0 (None), then the pixels */
        raw[(size_t)y * (row + 1)] = 0;
        memcpy(raw + (size_t)y * (row + 1) + 1, pixels + (size_t)y * row, row);
    }
    static const uint8_t SIGNATURE[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memcpy(png, SIGNATURE, 8);
    size_t at = 8;
    uint8_t *ihdr = png + at + 8;
    put_u32(ihdr, (uint32_t)w);
    put_u32(ihdr + 4, (uint32_t)h);
    ihdr[8] = 8;                                    /* bit depth */
    ihdr[9] = c == 1 ? PNG_COLOR_GRAY : PNG_COLOR_RGB;
    ihdr[10] = ihdr[11] = ihdr[12] = 0;             /* deflate, adaptive filtering, no interlace */
    at += finish_chunk(png + at, "IHDR", 13);
    if (compress2(png + at + 8, &zbytes, raw, (uLong)raw_bytes, Z_BEST_COMPRESSION) != Z_OK) {
        free(raw);
        free(png);
        return graft_error(GRAFT_ERR_NOMEM, "png: zlib failed");
    }
    at += finish_chunk(png + at, "IDAT", zbytes);
    at += finish_chunk(png + at, "IEND", 0);
    free(raw);
    *out = png;
    *bytes = at;
    return GRAFT_OK;
}

char *graft_base64(const uint8_t *data, size_t n) {
    static const char ALPHABET[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *s = malloc((n + 2) / 3 * 4 + 1), *o = s;
    if (!s) return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < n) v |= (uint32_t)data[i + 1] << 8;
        if (i + 2 < n) v |= data[i + 2];
        *o++ = ALPHABET[v >> 18 & 63];
        *o++ = ALPHABET[v >> 12 & 63];
        *o++ = i + 1 < n ? ALPHABET[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? ALPHABET[v & 63] : '=';
    }
    *o = 0;
    return s;
}
