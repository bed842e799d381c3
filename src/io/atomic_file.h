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

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "graft/graft.h"

typedef struct graft_atomic_file {
    int fd;          /* the temporary file; -1 once closed */
    char *path;      /* the target, owned */
    char *tmp_path;  /* the temporary file, owned */
    char *spare;     /* graft_atomic_open_over's spare, owned; NULL otherwise */
    size_t written;  /* bytes written so far */
} graft_atomic_file;

/* Creates the temporary file beside path.  The new file gets the permission bits of
 * an existing target, else 0666 less the umask (what fopen would give).  On failure
 * af holds nothing that needs releasing, and graft_atomic_abort on it is harmless. */
graft_status graft_atomic_open(graft_atomic_file *af, const char *path);
/* graft_atomic_open for a file rewritten again and again (a training run's checkpoint),
 * with a spare name beside it ("<path>.spare").  Writing a large file into new pages and
 * freeing the old one cost more than overwriting pages already cached (ext4 here, 411 MB:
 * 0.48 s to write new, 0.54 s to free, 0.14 s to overwrite).  So where spare names a
 * regular file with no other name, that file becomes the temporary file (with the
 * permission bits graft_atomic_open would give it) and is overwritten from its start
 * (commit cuts it to the bytes written); and commit keeps the
 * target it replaces under the name spare, for the next write, instead of the rename
 * freeing it.  Readers still see the old target or the whole new one.  A spare that is
 * missing or has other names (a hard link made since) is not touched: a new temporary
 * file is made as by graft_atomic_open.  The caller removes spare when done. */
graft_status graft_atomic_open_over(graft_atomic_file *af, const char *path, const char *spare);
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

/* Replacing a large file frees the old one's blocks inside the rename, which can wait on
 * the file system for long (ext4 here: about 0.7 s for a 537 MB checkpoint, with no CPU
 * used).  graft_old_files keeps the files about to be replaced alive under a second name
 * ("<path>.replaced") and removes those names on a thread of its own, so the caller goes
 * on while the file system works:
 *
 *     graft_old_files_keep(&old, "run/last.safetensors");   // before replacing it
 *     ... replace run/last.safetensors ...
 *     graft_old_files_release(&old);                        // removed in the background
 *     ...
 *     graft_old_files_wait(&old);                           // before the next keep, or the end
 *
 * Start from a zeroed struct. */
#define GRAFT_OLD_FILES_MAX 4
typedef struct graft_old_files {
    char *paths[GRAFT_OLD_FILES_MAX];    /* second names kept, owned */
    int n;
    char *removing[GRAFT_OLD_FILES_MAX]; /* those released, the thread's until it ends */
    int nremoving;
    pthread_t thread;
    bool running;
} graft_old_files;

/* Gives path's file the second name, unless path does not exist, the file system has no
 * links, or GRAFT_OLD_FILES_MAX names are kept already (then replacing path frees it as
 * before). */
void graft_old_files_keep(graft_old_files *o, const char *path);
/* Removes the names kept so far, on a thread (in the calling one if none can start). */
void graft_old_files_release(graft_old_files *o);
/* Adds path, an existing name (a spare of graft_atomic_open_over), to the names the next
 * release removes; nothing where GRAFT_OLD_FILES_MAX are kept already. */
void graft_old_files_remove(graft_old_files *o, const char *path);
/* Waits for the removals to finish. */
void graft_old_files_wait(graft_old_files *o);

/* Commits made on a thread of their own, in order.  A commit's fsync waits on the disk
 * with no CPU used (a training run's 537 MB checkpoint: about 0.9 s an epoch, with its
 * state's 0.1 s), so the caller writes each file, hands it over uncommitted, and goes
 * on; the files appear, each whole, when their commits are done.  A link (as
 * graft_atomic_link; a copy of the file where links fail) waits for the commits before
 * it.
 *
 *     graft_commits c = {0};
 *     ... write af ...
 *     graft_commits_add(&c, &af);                   // af's commit, later (af is emptied)
 *     graft_commits_add_link(&c, existing, path);
 *     graft_commits_start(&c);                      // on a thread (in the calling one if none starts)
 *     ...
 *     s = graft_commits_wait(&c);                   // before the next add, and at the end
 *
 * graft_commits_wait returns the first failure of the batch (with its message), and
 * leaves c empty and ready for the next batch.  Start from a zeroed struct. */
#define GRAFT_COMMITS_MAX 4
typedef struct graft_commits {
    graft_atomic_file files[GRAFT_COMMITS_MAX]; /* a commit's file; fd -1 for a link */
    char *link_from[GRAFT_COMMITS_MAX], *link_to[GRAFT_COMMITS_MAX];
    int n;
    pthread_t thread;
    bool running;
    graft_status status;
    char *message; /* the failure's message, owned */
} graft_commits;

/* Hands af (opened and written, not committed) to c; af is left empty.  With the batch
 * full, or c running, af is committed here instead and that result returned. */
graft_status graft_commits_add(graft_commits *c, graft_atomic_file *af);
/* path becomes another name of existing after the commits added before. */
graft_status graft_commits_add_link(graft_commits *c, const char *existing, const char *path);
/* Runs the batch on a thread. */
void graft_commits_start(graft_commits *c);
/* Waits for the batch (running it here if it was never started) and returns its first
 * failure, or GRAFT_OK. */
graft_status graft_commits_wait(graft_commits *c);

#endif
