/* cifar_py.h — CIFAR-10 and CIFAR-100, "python version": the folders that
 * torchvision.datasets.CIFAR10(root, download=True) and CIFAR100 leave in root, so a
 * user of the PyTorch recipe points graft at the same folder.
 *
 *   CIFAR-10:  cifar-10-batches-py/data_batch_{1..5} (train), test_batch (test),
 *              batches.meta (b'label_names')
 *   CIFAR-100: cifar-100-python/train, test, meta (b'fine_label_names'); the labels are
 *              b'fine_labels', as torchvision's CIFAR100 uses them
 *
 * Each file is a pickled dict (Python 2's cPickle, protocol 2: keys and strings are
 * byte strings) whose b'data' is a numpy uint8 array [N, 3072] of red, green and blue
 * planes (32 × 32 row-major each) and whose b'labels' (or b'fine_labels') is a list of
 * N ints.  The files are read with graft's pickle VM, which runs no code; the numpy
 * reconstruction is decoded here.  str keys (a re-pickled file) are accepted as well
 * as bytes.  Errors are one line naming the file. */
#ifndef GRAFT_DATA_CIFAR_PY_H
#define GRAFT_DATA_CIFAR_PY_H

#include <stdbool.h>

#include "data/dataset.h"
#include "graft/graft.h"

#define GRAFT_CIFAR10_PY_DIR "cifar-10-batches-py"
#define GRAFT_CIFAR100_PY_DIR "cifar-100-python"

/* root is the folder holding cifar-10-batches-py (or that folder itself). */
graft_status graft_cifar10_py_load(const char *root, bool train, graft_dataset **out);
/* root is the folder holding cifar-100-python (or that folder itself). */
graft_status graft_cifar100_py_load(const char *root, bool train, graft_dataset **out);

#endif
