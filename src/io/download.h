/* download.h — fetching a file over HTTP(S) with libcurl, verified and atomic.
 *
 * The body streams into a temporary file beside the destination while it is hashed;
 * only when the transfer completed and the digest matches is the file synced and
 * renamed into place.  A failed, cut or mismatched download leaves nothing behind. */
#ifndef GRAFT_IO_DOWNLOAD_H
#define GRAFT_IO_DOWNLOAD_H

#include <stdint.h>

#include "graft/graft.h"
#include "io/hash.h"

typedef struct graft_download_options {
    const char *expected;      /* hex digest or its prefix; NULL: no check */
    graft_hash_kind hash;      /* kind of `expected` */
    graft_progress_fn progress; /* may be NULL */
    void *user;
} graft_download_options;

graft_status graft_download(const char *url, const char *dest, const graft_download_options *o);

#endif
