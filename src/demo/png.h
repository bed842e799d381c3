/* png.h — the smallest PNG writer a report needs: 8-bit gray or RGB pixels into a PNG
 * in memory, and base64 for putting it in an HTML page as a data: URI.
 *
 * The PNG has one IHDR, one IDAT (zlib, filter type 0 on every row) and IEND
 * (https://www.w3.org/TR/png/); every decoder, graft's own included, reads it. */
#ifndef GRAFT_DEMO_PNG_H
#define GRAFT_DEMO_PNG_H

#include <stddef.h>
#include <stdint.h>

#include "graft/graft.h"

/* pixels: h × w × c bytes, row-major, c = 1 (gray) or 3 (RGB).  *out (caller frees with
 * free()) receives *bytes bytes of PNG. */
graft_status graft_png_encode(const uint8_t *pixels, int h, int w, int c, uint8_t **out, size_t *bytes);

/* The base64 (RFC 4648, with padding) of n bytes, NUL-terminated; caller frees with
 * free().  NULL when out of memory. */
char *graft_base64(const uint8_t *data, size_t n);

#endif
