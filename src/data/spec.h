/* spec.h — the dataset argument every command takes, --data SPEC, and opening the
 * train and test splits it names.
 *
 *   cifar10[:ROOT]         CIFAR-10 under ROOT: the binary version (cifar-10-batches-bin,
 *                          what graft fetch cifar10 downloads) or torchvision's python
 *                          version (cifar-10-batches-py, what CIFAR10(root, download=True)
 *                          leaves); ROOT may also be one of those folders itself
 *   cifar100[:ROOT]        CIFAR-100 likewise (cifar-100-binary, cifar-100-python)
 *   mnist:ROOT             MNIST IDX files under ROOT, plain or gzip (see dataset.h)
 *   fashion-mnist[:ROOT]   Fashion-MNIST; ROOT defaults to /usr/share/datasets/fashion-mnist
 *                          (Debian's dataset-fashion-mnist package)
 *   folder:ROOT            images in class folders (torchvision's ImageFolder): ROOT/train
 *                          and ROOT/test (or ROOT/val) when ROOT/train exists, else ROOT
 *                          alone as a training split
 *   tensors:FILE           a safetensors file: "images" (float32 [N, C, H, W], used as they
 *                          are, or uint8 [N, H, W, C], which go through the transforms) and
 *                          "labels" (int64 [N]) are the training split; "test_images" and
 *                          "test_labels", when present, the test split; the metadata
 *                          "classes", when present, holds the class names one per line
 *
 * Without ROOT, cifar10 and cifar100 look in graft_data_default_root(): $GRAFT_DATA when
 * set, else ~/.cache/graft/datasets — also where graft fetch cifar10 puts them. */
#ifndef GRAFT_DATA_SPEC_H
#define GRAFT_DATA_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "data/source.h"
#include "graft/graft.h"

#define GRAFT_FASHION_MNIST_DEBIAN "/usr/share/datasets/fashion-mnist"

typedef struct graft_data_options {
    bool strict;         /* folders: an unreadable file is an error, not a skip */
    const char *classes; /* --classes: "5,6,7" (indices or class names); NULL for all */
    int64_t per_class;   /* --per-class K: K training samples per class; 0 for all */
    uint64_t seed;       /* for --per-class */
} graft_data_options;

typedef struct graft_data {
    graft_source *train;   /* never NULL */
    graft_source *test;    /* NULL when the dataset has no test split */
    const char *test_name; /* "test", or "val" for a folder's ROOT/val */
    char *where;           /* what was opened: "cifar10 (python version) in /data/cifar-10-batches-py" */
} graft_data;

/* Opens both splits of spec and applies --classes (both splits) and --per-class (the
 * training split).  Errors are one line naming the file or the part of the spec at
 * fault.  Free with graft_data_free. */
graft_status graft_data_open(const char *spec, const graft_data_options *o, graft_data **out);
void graft_data_free(graft_data *d);

/* $GRAFT_DATA, else $HOME/.cache/graft/datasets. */
graft_status graft_data_default_root(char *buf, size_t size);

/* Parses a --classes list against src's classes: comma-separated class indices or
 * names.  *out (caller frees) holds *k labels of src. */
graft_status graft_data_parse_classes(const char *list, const graft_source *src, int64_t **out,
                                      int64_t *k);

#endif
