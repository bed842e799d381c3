/* atomic_file.c — temp file beside the target, fsync, rename, fsync the directory. */
#include "io/atomic_file.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"

#define TMP_SUFFIX ".tmp.XXXXXX" /* mkstemp replaces the six X's */

/* Permission bits for a new file when fopen would have created it: 0666 less the umask.
 * umask() can only be read by setting it, which races with other threads creating
 * files, so read it from /proc where Linux (4.7+) publishes it; else assume 022. */
static mode_t default_file_mode(void) {
    mode_t mask = 022;
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        unsigned int m;
        while (fgets(line, sizeof line, f)) {
            if (sscanf(line, "Umask: %o", &m) == 1) {
                mask = (mode_t)m;
                break;
            }
        }
        fclose(f);
    }
    return 0666 & ~mask;
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

graft_status graft_atomic_open(graft_atomic_file *af, const char *path) {
    af->fd = -1;
    af->path = NULL;
    af->tmp_path = NULL;
    af->spare = NULL;
    af->written = 0;
    if (!path || !*path) return graft_error(GRAFT_ERR_INVALID, "atomic write: empty file name");

    size_t len = strlen(path);
    af->path = dup_str(path);
    af->tmp_path = malloc(len + sizeof TMP_SUFFIX);
    if (!af->path || !af->tmp_path) {
        free(af->path);
        free(af->tmp_path);
        af->path = af->tmp_path = NULL;
        return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
    }
    memcpy(af->tmp_path, path, len);
    memcpy(af->tmp_path + len, TMP_SUFFIX, sizeof TMP_SUFFIX);

    af->fd = mkstemp(af->tmp_path);
    if (af->fd < 0) {
        int e = errno;
        free(af->path);
        free(af->tmp_path);
        af->path = af->tmp_path = NULL;
        return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(e));
    }
    /* mkstemp makes the file 0600; give it the mode a plain rewrite would have. */
    struct stat st;
    mode_t mode = stat(path, &st) == 0 ? (st.st_mode & 07777) : default_file_mode();
    if (fchmod(af->fd, mode) != 0) {
        int e = errno;
        graft_atomic_abort(af);
        return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(e));
    }
    return GRAFT_OK;
}

/* The spare as the temporary file: opened for writing, given the permission bits
 * graft_atomic_open gave mkstemp's file, then renamed over that file.  False, with af and
 * the spare as they were, where it is missing, not a regular file, has another name, or
 * any step fails. */
static bool take_spare(graft_atomic_file *af, const char *spare) {
    int fd = open(spare, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return false;
    struct stat st, want;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 || fstat(af->fd, &want) != 0 ||
        fchmod(fd, want.st_mode & 07777) != 0 || rename(spare, af->tmp_path) != 0) {
        close(fd);
        return false;
    }
    close(af->fd); /* mkstemp's file, replaced by the rename */
    af->fd = fd;
    return true;
}

graft_status graft_atomic_open_over(graft_atomic_file *af, const char *path, const char *spare) {
    graft_status s = graft_atomic_open(af, path);
    if (s || !spare) return s;
    if (!(af->spare = dup_str(spare))) {
        graft_atomic_abort(af);
        return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
    }
    take_spare(af, spare);
    return GRAFT_OK;
}

graft_status graft_atomic_write(graft_atomic_file *af, const void *data, size_t bytes) {
    const char *p = data;
    if (af->fd < 0) return graft_error(GRAFT_ERR_INVALID, "atomic write: file is not open");
    while (bytes > 0) {
        ssize_t n = write(af->fd, p, bytes);
        if (n < 0) {
            if (errno == EINTR) continue;
            return graft_error(GRAFT_ERR_IO, "%s: %s", af->path, strerror(errno));
        }
        p += n;
        bytes -= (size_t)n;
        af->written += (size_t)n;
    }
    return GRAFT_OK;
}

/* The directory holding path ("." when it has no slash), newly allocated. */
static char *parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return dup_str(".");
    size_t n = slash == path ? 1 : (size_t)(slash - path); /* "/x" lives in "/" */
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, path, n);
    d[n] = 0;
    return d;
}

/* Makes the rename durable.  File systems that cannot fsync a directory say EINVAL
 * (or ENOTSUP); there is nothing more to do on those. */
static graft_status fsync_dir(const char *path) {
    char *dir = parent_dir(path);
    if (!dir) return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
    graft_status s = GRAFT_OK;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) {
        s = graft_error(GRAFT_ERR_IO, "%s: %s", dir, strerror(errno));
    } else {
        if (fsync(fd) != 0 && errno != EINVAL && errno != ENOTSUP)
            s = graft_error(GRAFT_ERR_IO, "%s: %s", dir, strerror(errno));
        close(fd);
    }
    free(dir);
    return s;
}

graft_status graft_atomic_commit(graft_atomic_file *af) {
    if (af->fd < 0) return graft_error(GRAFT_ERR_INVALID, "atomic write: file is not open");
    int fd = af->fd;
    af->fd = -1;
    int e = 0;
    /* a spare taken over may hold old bytes past the new end (on a new file: no change) */
    if (ftruncate(fd, (off_t)af->written) != 0) e = errno;
    if (!e && fsync(fd) != 0) e = errno;
    /* close can report a delayed write error (e.g. NFS); it must be checked too. */
    if (close(fd) != 0 && !e) e = errno;
    if (!e && af->spare) {
        /* the target about to be replaced lives on as the spare (a stale spare name with
           other names of its file, left by take_spare, goes first); best effort */
        if (link(af->path, af->spare) != 0 && errno == EEXIST && unlink(af->spare) == 0) link(af->path, af->spare);
    }
    if (!e && rename(af->tmp_path, af->path) != 0) e = errno;
    if (e) {
        graft_status s = graft_error(GRAFT_ERR_IO, "%s: %s", af->path, strerror(e));
        graft_atomic_abort(af);
        return s;
    }
    graft_status s = fsync_dir(af->path);
    free(af->path);
    free(af->tmp_path);
    free(af->spare);
    af->path = af->tmp_path = af->spare = NULL;
    return s;
}

void graft_atomic_abort(graft_atomic_file *af) {
    if (af->fd >= 0) {
        close(af->fd);
        af->fd = -1;
    }
    if (af->tmp_path) unlink(af->tmp_path);
    free(af->path);
    free(af->tmp_path);
    free(af->spare);
    af->path = af->tmp_path = af->spare = NULL;
}

/* link's errors for a file system (or file) that takes no more names. */
static bool no_links(int e) {
#if ENOTSUP != EOPNOTSUPP
    if (e == ENOTSUP) return true;
#endif
    return e == EOPNOTSUPP || e == EPERM || e == EMLINK || e == EXDEV || e == ENOSYS;
}

graft_status graft_atomic_link(const char *existing, const char *path) {
    if (!path || !*path) return graft_error(GRAFT_ERR_INVALID, "atomic link: empty file name");
    size_t len = strlen(path);
    char *tmp = malloc(len + sizeof TMP_SUFFIX);
    if (!tmp) return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
    /* A fresh name from mkstemp, freed again for link (which will not replace a name);
     * another process taking it in between is retried with a new one. */
    int e = EEXIST;
    for (int tries = 0; tries < 16 && e == EEXIST; tries++) {
        memcpy(tmp, path, len);
        memcpy(tmp + len, TMP_SUFFIX, sizeof TMP_SUFFIX);
        int fd = mkstemp(tmp);
        if (fd < 0) {
            e = errno;
            break;
        }
        close(fd);
        unlink(tmp);
        e = link(existing, tmp) == 0 ? 0 : errno;
    }
    if (!e && rename(tmp, path) != 0) {
        e = errno;
        unlink(tmp);
    }
    free(tmp);
    if (no_links(e))
        return graft_error(GRAFT_ERR_UNSUPPORTED, "%s: cannot link to %s: %s", path, existing, strerror(e));
    if (e) return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(e));
    return fsync_dir(path);
}

graft_status graft_atomic_write_file(const char *path, const void *data, size_t bytes) {
    graft_atomic_file af;
    graft_status s = graft_atomic_open(&af, path);
    if (s) return s;
    if ((s = graft_atomic_write(&af, data, bytes))) {
        graft_atomic_abort(&af);
        return s;
    }
    return graft_atomic_commit(&af);
}

/* ---- replaced files, removed in the background --------------------------------------- */

#define REPLACED_SUFFIX ".replaced"

void graft_old_files_keep(graft_old_files *o, const char *path) {
    graft_old_files_wait(o); /* the thread may still be removing this very name */
    if (o->n >= GRAFT_OLD_FILES_MAX) return;
    size_t len = strlen(path);
    char *old = malloc(len + sizeof REPLACED_SUFFIX);
    if (!old) return;
    memcpy(old, path, len);
    memcpy(old + len, REPLACED_SUFFIX, sizeof REPLACED_SUFFIX);
    int r = link(path, old);
    if (r != 0 && errno == EEXIST && unlink(old) == 0) r = link(path, old); /* left by a killed run */
    if (r != 0) {
        free(old);
        return;
    }
    o->paths[o->n++] = old;
}

void graft_old_files_remove(graft_old_files *o, const char *path) {
    graft_old_files_wait(o);
    if (o->n >= GRAFT_OLD_FILES_MAX) return;
    char *name = dup_str(path);
    if (name) o->paths[o->n++] = name;
}

static void *remove_names(void *arg) {
    graft_old_files *o = arg;
    for (int i = 0; i < o->nremoving; i++) {
        unlink(o->removing[i]);
        free(o->removing[i]);
    }
    o->nremoving = 0;
    return NULL;
}

void graft_old_files_release(graft_old_files *o) {
    graft_old_files_wait(o);
    if (!o->n) return;
    for (int i = 0; i < o->n; i++) o->removing[i] = o->paths[i];
    o->nremoving = o->n;
    o->n = 0;
    o->running = pthread_create(&o->thread, NULL, remove_names, o) == 0;
    if (!o->running) remove_names(o);
}

void graft_old_files_wait(graft_old_files *o) {
    if (o->running) pthread_join(o->thread, NULL);
    o->running = false;
}

/* ---- commits in the background ----------------------------------------------------- */

graft_status graft_commits_add(graft_commits *c, graft_atomic_file *af) {
    if (c->running || c->n >= GRAFT_COMMITS_MAX) return graft_atomic_commit(af);
    c->files[c->n] = *af;
    c->link_from[c->n] = c->link_to[c->n] = NULL;
    c->n++;
    *af = (graft_atomic_file){.fd = -1};
    return GRAFT_OK;
}

graft_status graft_commits_add_link(graft_commits *c, const char *existing, const char *path) {
    if (c->running || c->n >= GRAFT_COMMITS_MAX)
        return graft_error(GRAFT_ERR_INVALID, "%s: no room for a deferred link", path);
    char *from = dup_str(existing), *to = dup_str(path);
    if (!from || !to) {
        free(from), free(to);
        return graft_error(GRAFT_ERR_NOMEM, "%s: out of memory", path);
    }
    c->files[c->n] = (graft_atomic_file){.fd = -1};
    c->link_from[c->n] = from;
    c->link_to[c->n] = to;
    c->n++;
    return GRAFT_OK;
}

/* existing's bytes into path, atomically. */
static graft_status copy_file(const char *existing, const char *path) {
    int in = open(existing, O_RDONLY | O_CLOEXEC);
    if (in < 0) return graft_error(GRAFT_ERR_IO, "%s: %s", existing, strerror(errno));
    graft_atomic_file af;
    graft_status s = graft_atomic_open(&af, path);
    char buf[1 << 16];
    while (!s) {
        ssize_t got = read(in, buf, sizeof buf);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) s = graft_error(GRAFT_ERR_IO, "%s: %s", existing, strerror(errno));
        if (got <= 0) break;
        s = graft_atomic_write(&af, buf, (size_t)got);
    }
    close(in);
    if (s) {
        graft_atomic_abort(&af);
        return s;
    }
    return graft_atomic_commit(&af);
}

static void *run_commits(void *arg) {
    graft_commits *c = arg;
    for (int i = 0; i < c->n; i++) {
        graft_status s;
        if (c->link_to[i]) {
            s = c->status ? GRAFT_OK : graft_atomic_link(c->link_from[i], c->link_to[i]);
            if (s == GRAFT_ERR_UNSUPPORTED) s = copy_file(c->link_from[i], c->link_to[i]);
            free(c->link_from[i]), free(c->link_to[i]);
            c->link_from[i] = c->link_to[i] = NULL;
        } else if (c->status) { /* after a failure: the rest are dropped, their targets unchanged */
            graft_atomic_abort(&c->files[i]);
            s = GRAFT_OK;
        } else {
            s = graft_atomic_commit(&c->files[i]);
        }
        if (s && !c->status) {
            c->status = s;
            c->message = dup_str(graft_errmsg());
        }
    }
    c->n = 0;
    return NULL;
}

void graft_commits_start(graft_commits *c) {
    if (c->running || !c->n) return;
    c->running = pthread_create(&c->thread, NULL, run_commits, c) == 0;
}

graft_status graft_commits_wait(graft_commits *c) {
    if (c->running) pthread_join(c->thread, NULL);
    else run_commits(c); /* never started, or no thread could start */
    c->running = false;
    graft_status s = c->status;
    if (s) s = graft_error(s, "%s", c->message ? c->message : "a deferred commit failed");
    free(c->message);
    c->message = NULL;
    c->status = GRAFT_OK;
    return s;
}
