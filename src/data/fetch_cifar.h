/* fetch_cifar.h — downloading CIFAR-10 and CIFAR-100 (binary version) into a dataset
 * folder: verified against the published MD5, extracted safely, renamed into place.
 *
 *   1. Nothing happens when ROOT already holds the dataset in either layout (the binary
 *      folder, or torchvision's python folder from CIFAR10(root, download=True)).
 *   2. The archive is downloaded by graft_download into a temporary file beside
 *      ROOT/<file>, its MD5 checked, then renamed to ROOT/<file> (an archive already
 *      there with the right MD5 is used without downloading).
 *   3. It is extracted into a fresh temporary folder ROOT/.graft-extract-XXXXXX with
 *      libarchive, refusing anything but regular files and folders (no links, devices or
 *      fifos), absolute paths, ".." components, more than GRAFT_EXTRACT_MAX_ENTRIES
 *      entries and files or totals beyond the size caps.
 *   4. The expected files are checked, the dataset folder is renamed into ROOT, the
 *      temporary folder and the archive are removed.
 * Any failure leaves ROOT as it was (except a verified archive, kept for the next try).
 *
 * The URL is <base>/<file> with base https://www.cs.toronto.edu/~kriz/ or
 * $GRAFT_DATA_URL_BASE (tests point it at a loopback server). */
#ifndef GRAFT_DATA_FETCH_CIFAR_H
#define GRAFT_DATA_FETCH_CIFAR_H

#include <stddef.h>

#include "graft/graft.h"

#define GRAFT_EXTRACT_MAX_ENTRIES 10000
#define GRAFT_EXTRACT_MAX_FILE_BYTES (1ull << 30)   /* CIFAR-100's train.bin is 155 MB */
#define GRAFT_EXTRACT_MAX_TOTAL_BYTES (4ull << 30)

typedef struct graft_cifar_archive {
    const char *name;          /* "cifar10" */
    const char *file;          /* "cifar-10-binary.tar.gz" */
    const char *md5;           /* the published digest */
    const char *dir;           /* the folder the archive holds: "cifar-10-batches-bin" */
    const char *python_dir;    /* torchvision's python-version folder, also accepted */
    const char *const *files;  /* files that must be in dir, NULL-terminated */
} graft_cifar_archive;

/* "cifar10" or "cifar100"; NULL (with the error set) for another name. */
const graft_cifar_archive *graft_cifar_archive_find(const char *name);
/* <base>/<file>. */
graft_status graft_cifar_url(const graft_cifar_archive *a, char *buf, size_t size);
/* Makes root hold the dataset (steps above) and writes the dataset folder's path into
 * dir.  root NULL: graft_data_default_root().  Offline (o->offline or GRAFT_OFFLINE=1),
 * a missing dataset is GRAFT_ERR_NOTFOUND saying what to download and where. */
graft_status graft_cifar_fetch(const graft_cifar_archive *a, const char *root,
                               const graft_fetch_options *o, char *dir, size_t size);
/* Step 3 alone: extracts a .tar(.gz) into a new folder made by mkdtemp from the template
 * (e.g. "ROOT/.graft-extract-XXXXXX", modified in place), which is removed again on
 * failure.  Exposed for tests. */
graft_status graft_extract_archive(const char *archive, char *dest_template);
/* Removes a folder tree graft made (never follows links); for cleanup. */
void graft_remove_tree(const char *dir);

#endif
