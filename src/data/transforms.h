/* transforms.h — torchvision's image transforms on one uint8 image, and a Compose
 * pipeline built from a one-line spec.
 *
 * Semantics are torchvision 0.14's on PIL images (how ImageFolder/CIFAR/MNIST samples
 * reach the transforms): the image transforms work on uint8 pixels exactly as PIL does,
 * then ToTensor gives float32 CHW in [0, 1] and Normalize works on that.
 *
 *   Resize(size)            bilinear, computed as PIL's Image.resize(BILINEAR) does for
 *                           8-bit images: a triangle filter whose support grows with the
 *                           downscale factor (so downscaling antialiases), fixed-point
 *                           weights with 22 fraction bits, horizontal pass first.  Same
 *                           integer arithmetic as PIL, so the pixels are identical (the
 *                           fixtures measure a difference of 0).
 *   CenterCrop(size)        top = int(round((h - th) / 2.0)) with Python's round (ties to
 *                           even); a crop larger than the image pads with zeros
 *   RandomCrop(size, padding)  zero padding on all four sides, then a uniformly random
 *                           offset; a crop larger than the padded image is an error
 *   RandomHorizontalFlip(p) flips when a uniform draw in [0, 1) is below p
 *   Grayscale(n)            PIL's convert("L"): L = (R*19595 + G*38470 + B*7471 + 0x8000)
 *                           >> 16 (ITU-R 601-2 in 16-bit fixed point), then n = 1 or 3
 *                           copies
 *   ToTensor()              uint8 HWC -> float32 CHW, v / 255.0f
 *   Normalize(mean, std)    per channel (x - mean) / std in float32; one value applies
 *                           to every channel
 *
 * Random transforms draw from a graft_rng the caller owns, so a seed reproduces them.
 *
 * Pipeline spec: items separated by commas, each "name" or "name=value"; spaces around
 * items are ignored.  Sizes are "S" (a square, or for resize the smaller edge) or "HxW".
 *
 *     resize=S | resize=HxW          Resize(S) keeps the aspect ratio: the smaller edge
 *                                    becomes S and the other int(S * long / short)
 *     centercrop=S | centercrop=HxW  CenterCrop
 *     randomcrop=SIZE[:P]            RandomCrop(SIZE, padding=P), P = 0 by default
 *     hflip[=P]                      RandomHorizontalFlip(p=P), P = 0.5 by default
 *     grayscale[=N]                  Grayscale(num_output_channels=N), N = 1 or 3, 1 by default
 *     totensor                       ToTensor (optional: always applied after the image
 *                                    transforms)
 *     normalize=imagenet             Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
 *     normalize=M1:M2:M3/S1:S2:S3    Normalize with explicit means and stds (or one value
 *                                    each, "normalize=0.1307/0.3081", for every channel)
 *
 * Example: "resize=64,centercrop=56,hflip=0.5,randomcrop=48:4,grayscale=3,normalize=imagenet"
 * is torchvision's Compose([Resize(64), CenterCrop(56), RandomHorizontalFlip(0.5),
 * RandomCrop(48, padding=4), Grayscale(3), ToTensor(), Normalize(imagenet)]).
 * Normalize comes last, at most once; the image transforms may come in any order.
 *
 * Threads: a parsed pipeline is read-only while applied, so threads may share one;
 * each thread brings its own graft_transform_work and graft_rng. */
#ifndef GRAFT_DATA_TRANSFORMS_H
#define GRAFT_DATA_TRANSFORMS_H

#include <stdbool.h>
#include <stddef.h>

#include "core/rng.h"
#include "data/image.h"
#include "graft/graft.h"

/* torchvision's ImageNet statistics (the weights' transforms in torchvision.models). */
#define GRAFT_IMAGENET_MEAN {0.485f, 0.456f, 0.406f}
#define GRAFT_IMAGENET_STD {0.229f, 0.224f, 0.225f}

/* ---- single transforms ------------------------------------------------------- */
/* Each writes a new image into out (reserved as needed; out must not be in).  Shapes
 * in comments are h × w × c. */

/* torchvision's output size for Resize(size) with an int size: the smaller edge becomes
 * size, the other int(size * long / short). */
void graft_resize_output_size(int h, int w, int size, int *out_h, int *out_w);
/* Scratch memory for graft_image_resize (filter weights and the intermediate image);
 * zero-initialise, reuse, release. */
typedef struct graft_resize_scratch {
    void *buf;
    size_t bytes;
} graft_resize_scratch;
void graft_resize_scratch_release(graft_resize_scratch *s);
/* in: h × w × c  ->  out: out_h × out_w × c, PIL bilinear.  scratch may be NULL (then
 * the function allocates and frees its own). */
graft_status graft_image_resize(const graft_image *in, int out_h, int out_w, graft_image *out,
                                graft_resize_scratch *scratch);
/* in: h × w × c  ->  out: height × width × c, the window whose top-left corner is
 * (top, left) in the input; pixels outside the input are 0 (PIL's Image.crop, and
 * torchvision's pad-then-crop when top/left are negative). */
graft_status graft_image_crop(const graft_image *in, int top, int left, int height, int width,
                              graft_image *out);
/* CenterCrop: in: h × w × c  ->  out: height × width × c. */
graft_status graft_image_center_crop(const graft_image *in, int height, int width,
                                     graft_image *out);
/* in: h × w × c  ->  out: h × w × c mirrored left to right. */
graft_status graft_image_hflip(const graft_image *in, graft_image *out);
/* in: h × w × c  ->  out: h × w × channels (1 or 3). */
graft_status graft_image_grayscale(const graft_image *in, int channels, graft_image *out);
/* ToTensor: in: h × w × c uint8  ->  out: c × h × w float32 in [0, 1]. */
void graft_image_to_tensor(const graft_image *in, float *out);
/* Normalize in place: x: c × h × w; mean and std hold n values, n = c or 1. */
graft_status graft_normalize(float *x, int c, int h, int w, const float *mean, const float *std,
                             int n);

/* ---- pipelines ----------------------------------------------------------------- */

typedef struct graft_transforms graft_transforms;

/* Scratch space for applying a pipeline; zero-initialise it, reuse it for every image
 * (it only allocates when an image is larger than any before), release it at the end. */
typedef struct graft_transform_work {
    graft_image a, b;             /* the image stage ping-pongs between these */
    graft_resize_scratch resize;
} graft_transform_work;

void graft_transform_work_release(graft_transform_work *work);

/* Parses a spec (syntax above).  Errors are GRAFT_ERR_INVALID, one line naming the
 * offending item.  Free with graft_transforms_free. */
graft_status graft_transforms_parse(const char *spec, graft_transforms **out);
void graft_transforms_free(graft_transforms *t);
/* The spec the pipeline was parsed from. */
const char *graft_transforms_spec(const graft_transforms *t);
/* Whether applying draws random numbers (a random crop, or a flip with 0 < p < 1);
 * a deterministic pipeline may be applied with rng == NULL. */
bool graft_transforms_is_random(const graft_transforms *t);

/* For the feature cache: when the pipeline's only randomness is one horizontal flip
 * with 0 < p < 1, returns true and writes into off and on the same pipeline's spec with
 * that flip never and always applied ("hflip=0", "hflip=1" in its place). */
bool graft_transforms_flip_variants(const graft_transforms *t, char *off, char *on, size_t size);
/* Whether graft_transforms_apply with this rng would flip: draws exactly as apply does.
 * Only for pipelines for which graft_transforms_flip_variants is true. */
bool graft_transforms_draw_flip(const graft_transforms *t, graft_rng *rng);

/* The output shape (c, h, w) for an h × w × c input, or GRAFT_ERR_SHAPE naming the
 * transform that cannot take it (a random crop larger than the padded image, a
 * normalize with the wrong number of channels, a size beyond the image limits). */
graft_status graft_transforms_output_shape(const graft_transforms *t, int h, int w, int c,
                                           int chw[3]);
/* The image stage only (everything before ToTensor): *result is in itself when no
 * transform changed the image, else an image inside work, valid until work is used
 * again.  in must not be one of work's images. */
graft_status graft_transforms_apply_image(const graft_transforms *t, const graft_image *in,
                                          graft_rng *rng, graft_transform_work *work,
                                          const graft_image **result);
/* The whole pipeline: in h × w × c uint8  ->  out c' × h' × w' float32, where out holds
 * out_floats = c' * h' * w' values (graft_transforms_output_shape), else
 * GRAFT_ERR_SHAPE. */
graft_status graft_transforms_apply(const graft_transforms *t, const graft_image *in,
                                    graft_rng *rng, graft_transform_work *work, float *out,
                                    size_t out_floats);

#endif
