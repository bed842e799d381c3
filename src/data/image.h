/* image.h — uint8 images in memory and decoding PNG, JPEG and BMP files into them.
 *
 * An image is what a PIL image is to torchvision's transforms: h × w × c bytes,
 * row-major HWC, c = 1 (PIL mode "L") or 3 (mode "RGB").  Decoding always gives RGB,
 * exactly what PIL's Image.open(path).convert("RGB") gives, because that is what
 * torchvision's ImageFolder loader does:
 *
 *   - the format is found from the first bytes, never from the file name;
 *   - gray, gray+alpha, palette and RGBA become RGB; alpha is dropped, not blended;
 *   - 16-bit PNG keeps the high byte of each sample, except 16-bit gray without
 *     alpha, which PIL opens as 32-bit integers ("I") and clips to 255 when
 *     converting;
 *   - JPEG is decoded by libjpeg(-turbo) with its defaults (islow DCT, fancy
 *     upsampling), as PIL does; CMYK/YCCK JPEGs are inverted as Adobe writes them
 *     and converted with PIL's CMYK -> RGB formula.  Against Debian's PIL 9.4, which
 *     links the same libjpeg62-turbo, the pixels are identical (tests/unit/test_image.c);
 *     a PIL built on another libjpeg version may differ by a few levels;
 *   - BMP: 1-, 4- and 8-bit palette, 24-bit, 32-bit (plain, or bit fields with the
 *     usual byte masks), bottom-up or top-down; RLE and 16-bit are unsupported.
 *
 * Decoders treat the file as hostile: a corrupt or truncated file is GRAFT_ERR_FORMAT
 * "<name>: <reason>", and images larger than GRAFT_IMAGE_MAX_SIDE per side or
 * GRAFT_IMAGE_MAX_PIXELS in all are refused before any pixel memory is allocated
 * (decompression bombs).  Nothing is printed and nothing exits: libpng's and libjpeg's
 * error handlers are replaced by ones that return here through longjmp. */
#ifndef GRAFT_DATA_IMAGE_H
#define GRAFT_DATA_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "graft/graft.h"

/* Limits against decompression bombs.  PIL refuses images over 2 * 89478485 pixels
 * (Image.MAX_IMAGE_PIXELS); graft's limit is of the same size. */
#define GRAFT_IMAGE_MAX_SIDE (1 << 15)
#define GRAFT_IMAGE_MAX_PIXELS (1 << 28)

typedef struct graft_image {
    int h, w, c;       /* c is 1 or 3 */
    uint8_t *data;     /* [h, w, c] row-major */
    size_t cap_bytes;  /* bytes owned by the image; 0 for a view of someone else's pixels */
} graft_image;

typedef enum graft_image_format {
    GRAFT_IMAGE_UNKNOWN = 0,
    GRAFT_IMAGE_PNG,
    GRAFT_IMAGE_JPEG,
    GRAFT_IMAGE_BMP
} graft_image_format;

/* An empty image that owns nothing (equivalent to zero-filling the struct). */
void graft_image_init(graft_image *img);
/* Frees owned pixels and leaves img empty. */
void graft_image_release(graft_image *img);
/* A view of pixels owned elsewhere; never released, and must not be written through
 * when the pixels are const (datasets hand out such views). */
graft_image graft_image_view(const uint8_t *pixels, int h, int w, int c);
/* Gives img the shape h × w × c, growing its buffer when needed (a view becomes an
 * owned image).  Contents are unspecified afterwards.  GRAFT_ERR_SHAPE when a side is
 * not in [1, GRAFT_IMAGE_MAX_SIDE], the pixel count exceeds GRAFT_IMAGE_MAX_PIXELS or
 * c is not 1 or 3. */
graft_status graft_image_reserve(graft_image *img, int h, int w, int c);
/* Bytes of pixel data: h * w * c. */
size_t graft_image_bytes(const graft_image *img);

/* The format of a file from its first bytes (8 are enough). */
graft_image_format graft_image_sniff(const void *bytes, size_t nbytes);

/* Decodes an encoded image held in memory into RGB (out->c == 3).  name appears in
 * error messages (a path, usually).  out is reserved as needed, so an image reused
 * across calls allocates only when it grows; on failure its contents are unspecified
 * but it stays valid to reuse or release.  Errors: GRAFT_ERR_FORMAT (corrupt,
 * truncated, too large), GRAFT_ERR_UNSUPPORTED (an unknown format or an unsupported
 * variant), GRAFT_ERR_NOMEM. */
graft_status graft_image_decode(const void *bytes, size_t nbytes, const char *name,
                                graft_image *out);
/* Reads and decodes a file; GRAFT_ERR_IO when it cannot be read. */
graft_status graft_image_load(const char *path, graft_image *out);

#endif
