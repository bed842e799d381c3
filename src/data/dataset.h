/* dataset.h — in-memory image datasets: every sample of a split as uint8 pixels, the
 * way torchvision holds MNIST (data: uint8 [N, 28, 28]) and CIFAR (data: uint8
 * [N, 32, 32, 3]).
 *
 * A dataset is one block of N images of the same h × w × c (c = 1 gray, c = 3 RGB,
 * HWC like a PIL image), int64 labels in [0, num_classes) and the class names in label
 * order (torchvision's dataset.classes).  Sample i reaches the transforms as the view
 * graft_dataset_image(d, i), without copying.
 *
 *     graft_dataset *train;
 *     if (graft_mnist_load("/usr/share/datasets/fashion-mnist", GRAFT_FASHION_MNIST,
 *                          true, &train)) fprintf(stderr, "%s\n", graft_errmsg());
 *     graft_image x = graft_dataset_image(train, 0);   // 28 × 28 × 1, label train->labels[0]
 *     graft_dataset_free(train);
 *
 * Readers treat files as hostile: every size, count and label is checked before it is
 * used, and a bad file is GRAFT_ERR_FORMAT with one line naming it ("<path>: <why>").
 * A missing file is GRAFT_ERR_IO naming what was looked for and where. */
#ifndef GRAFT_DATA_DATASET_H
#define GRAFT_DATA_DATASET_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "data/image.h"
#include "graft/graft.h"

typedef struct graft_dataset {
    int64_t n;             /* samples */
    int h, w, c;           /* every image's shape; c is 1 or 3 */
    uint8_t *images;       /* [n, h, w, c], owned */
    int64_t *labels;       /* [n], each in [0, num_classes), owned */
    int64_t num_classes;
    char **classes;        /* [num_classes] names in label order, owned */
} graft_dataset;

/* Frees d and everything it owns; NULL is a no-op. */
static inline void graft_dataset_free(graft_dataset *d) {
    if (!d) return;
    if (d->classes)
        for (int64_t i = 0; i < d->num_classes; i++) free(d->classes[i]);
    free(d->classes);
    free(d->images);
    free(d->labels);
    free(d);
}

/* Sample i's pixels as a view (h × w × c) into the dataset; valid while d lives. */
static inline graft_image graft_dataset_image(const graft_dataset *d, int64_t i) {
    return graft_image_view(d->images + (size_t)i * (size_t)d->h * (size_t)d->w * (size_t)d->c,
                            d->h, d->w, d->c);
}

/* ---- IDX: MNIST and Fashion-MNIST (idx.c) -------------------------------------------
 *
 * The IDX format (http://yann.lecun.com/exdb/mnist/): a big-endian magic 0x0000TTDD
 * (TT = 0x08 unsigned bytes, DD = number of dimensions), DD big-endian u32 sizes, then
 * the data row-major.  Images are 0x00000803 (N, rows, cols), labels 0x00000801 (N).
 * Files may be plain or gzip-compressed; the content decides, not the name. */

typedef enum graft_mnist_kind { GRAFT_MNIST, GRAFT_FASHION_MNIST } graft_mnist_kind;

#define GRAFT_MNIST_CLASSES 10

/* Reads an image file and a label file into a dataset of n × rows × cols × 1.  Labels
 * must be below num_classes; names holds num_classes class names (copied), or NULL for
 * "0", "1", ....  Free with graft_dataset_free. */
graft_status graft_idx_load(const char *images_path, const char *labels_path,
                            int64_t num_classes, const char *const *names, graft_dataset **out);

/* A split of MNIST or Fashion-MNIST from a directory: the files
 * {train,t10k}-{images-idx3,labels-idx1}-ubyte, each plain or with ".gz", looked for in
 * root, then root/raw, then root/MNIST/raw or root/FashionMNIST/raw (torchvision's
 * layout).  Debian's dataset-fashion-mnist package installs the gzip files directly
 * under /usr/share/datasets/fashion-mnist.  Class names are torchvision's
 * MNIST.classes ("0 - zero", ...) or FashionMNIST.classes ("T-shirt/top", ...). */
graft_status graft_mnist_load(const char *root, graft_mnist_kind kind, bool train,
                              graft_dataset **out);

/* ---- CIFAR binary version (cifar_bin.c) ----------------------------------------------
 *
 * https://www.cs.toronto.edu/~kriz/cifar.html, "binary version": fixed-size records of
 * label byte(s) then 3072 bytes of pixels, the red plane, green plane, blue plane, each
 * 32 × 32 row-major.  They are stored here transposed to HWC.
 *   CIFAR-10:  cifar-10-batches-bin/data_batch_{1..5}.bin (train), test_batch.bin
 *              (test); 1 label byte; class names one per line in batches.meta.txt.
 *   CIFAR-100: cifar-100-binary/train.bin, test.bin; 2 label bytes, coarse (0..19) then
 *              fine (0..99); the labels are the fine ones, as torchvision's CIFAR100;
 *              names in fine_label_names.txt. */

/* root is the directory holding cifar-10-batches-bin (or that directory itself). */
graft_status graft_cifar10_load(const char *root, bool train, graft_dataset **out);
/* root is the directory holding cifar-100-binary (or that directory itself). */
graft_status graft_cifar100_load(const char *root, bool train, graft_dataset **out);

#endif
