/* atomic_file.h — writing a file so that readers see either the old file or the whole
 * new one, never a half-written one, even across a crash.
 *
 * The bytes go to a temporary file beside the target ("<target>.tmp.XXXXXX", so the
 * rename stays within one file system); commit fsyncs it, renames it over the target
 * and fsyncs the directory so the rename itself is durable.  On any failure the
 * temporary file is removed and the old target is left untouched.
 *
 *     graft_atomic_file af;
 *     graft_status s = graft_atomic_open(&af, "ckpt.safetensors");
 *     if (s) return s;
 *     s = graft_atomic_write(&af, header, header_bytes);
 *     if (!s) s = graft_atomic_write(&af, data, data_bytes);
 *     if (!s) s = graft_atomic_commit(&af);   // closes af either way
 *     else graft_atomic_abort(&af);
 *
 * Errors are GRAFT_ERR_IO naming the target ("<path>: <strerror>"), or GRAFT_ERR_NOMEM. */
#ifndef GRAFT_IO_ATOMIC_FILE_H
#define GRAFT_IO_ATOMIC_FILE_H

#include <stddef.h>

#include "graft/graft.h"

typedef struct graft_atomic_file {
    int fd;          /* the temporary file; -1 once closed */
    char *path;      /* the target, owned */
    char *tmp_path;  /* the temporary file, owned */
} graft_atomic_file;

/* Creates the temporary file beside path.  The new file gets the permission bits of
 * an existing target, else 0666 less the umask (what fopen would give).  On failure
 * af holds nothing that needs releasing, and graft_atomic_abort on it is harmless. */
graft_status graft_atomic_open(graft_atomic_file *af, const char *path);
/* Appends bytes (all of them: short writes and EINTR are retried). */
graft_status graft_atomic_write(graft_atomic_file *af, const void *data, size_t bytes);
/* fsync, rename over the target, fsync the directory.  Always releases af: on failure
 * the temporary file is gone and the target unchanged (unless only the final directory
 * fsync failed, in which case the new file is in place but may not survive a crash). */
graft_status graft_atomic_commit(graft_atomic_file *af);
/* Closes and removes the temporary file and releases af; safe to call twice, after a
 * commit or after a failed open. */
void graft_atomic_abort(graft_atomic_file *af);
/* The whole file at once: open, write bytes, commit (or abort on failure). */
graft_status graft_atomic_write_file(const char *path, const void *data, size_t bytes);
/* path becomes another name of the file `existing` (a hard link, made under a temporary
 * name beside path, renamed over it, the directory fsynced): the same bytes without
 * writing them again.  GRAFT_ERR_UNSUPPORTED where the file system has no hard links
 * (or no more for this file): the caller writes a copy instead; path is then untouched. */
graft_status graft_atomic_link(const char *existing, const char *path);

#endif
