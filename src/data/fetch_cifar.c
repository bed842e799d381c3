/* fetch_cifar.c — downloading and safely extracting the CIFAR archives (steps in
 * fetch_cifar.h). */
#include "data/fetch_cifar.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "io/fs.h"
#include "data/spec.h"
#include "io/download.h"
#include "io/hash.h"

#define DEFAULT_URL_BASE "https://www.cs.toronto.edu/~kriz/"
#define PATH_BYTES 4096
#define COPY_BLOCK_BYTES (1 << 16)
#define EXTRACT_TEMPLATE ".graft-extract-XXXXXX"

static const char *const CIFAR10_FILES[] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                                            "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin",
                                            "batches.meta.txt", NULL};
static const char *const CIFAR100_FILES[] = {"train.bin", "test.bin", "fine_label_names.txt", NULL};
static const char *const CIFAR10_PY_FILES[] = {"data_batch_1", "data_batch_2", "data_batch_3",
                                               "data_batch_4", "data_batch_5", "test_batch",
                                               "batches.meta", NULL};
static const char *const CIFAR100_PY_FILES[] = {"train", "test", "meta", NULL};

/* https://www.cs.toronto.edu/~kriz/cifar.html lists these files and digests. */
static const graft_cifar_archive ARCHIVES[] = {
    {"cifar10", "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-batches-bin",
     "cifar-10-batches-py", CIFAR10_FILES},
    {"cifar100", "cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", "cifar-100-binary",
     "cifar-100-python", CIFAR100_FILES},
};

const graft_cifar_archive *graft_cifar_archive_find(const char *name) {
    for (size_t i = 0; i < sizeof ARCHIVES / sizeof ARCHIVES[0]; i++)
        if (!strcmp(ARCHIVES[i].name, name)) return &ARCHIVES[i];
    graft_error(GRAFT_ERR_NOTFOUND, "no dataset '%s' to fetch (known: cifar10, cifar100)", name);
    return NULL;
}

graft_status graft_cifar_url(const graft_cifar_archive *a, char *buf, size_t size) {
    const char *base = getenv("GRAFT_DATA_URL_BASE");
    if (!base || !*base) base = DEFAULT_URL_BASE;
    size_t n = strlen(base);
    int w = snprintf(buf, size, "%s%s%s", base, n && base[n - 1] == '/' ? "" : "/", a->file);
    if (w < 0 || (size_t)w >= size) return graft_error(GRAFT_ERR_INVALID, "URL of %s is too long", a->file);
    return GRAFT_OK;
}

/* ---- files and folders ------------------------------------------------------------- */

static graft_status join(char *out, const char *a, const char *b) {
    int n = snprintf(out, PATH_BYTES, "%s/%s", a, b);
    if (n < 0 || n >= PATH_BYTES) return graft_error(GRAFT_ERR_INVALID, "%s/%s: path too long", a, b);
    return GRAFT_OK;
}

void graft_remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char p[PATH_BYTES];
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            if (snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= (int)sizeof p) continue;
            struct stat st;
            if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) graft_remove_tree(p);
            else unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* Every expected file is a regular file in dir; *missing names the first that is not. */
static bool complete(const char *dir, const char *const *files, const char **missing) {
    char p[PATH_BYTES];
    for (int i = 0; files[i]; i++) {
        struct stat st;
        if (join(p, dir, files[i]) || stat(p, &st) != 0 || !S_ISREG(st.st_mode)) {
            if (missing) *missing = files[i];
            return false;
        }
    }
    return true;
}

/* ---- extraction ----------------------------------------------------------------------- */

/* An archive member name made safe: "." and empty components dropped; absolute paths
 * and ".." refused.  out is relative, possibly "" (the archive's own root). */
static graft_status clean_name(const char *archive, const char *name, char *out) {
    if (!name || !*name) return graft_error(GRAFT_ERR_FORMAT, "%s: a member has no name", archive);
    if (name[0] == '/')
        return graft_error(GRAFT_ERR_FORMAT, "%s: member '%s' has an absolute path; refused", archive,
                           name);
    size_t o = 0;
    const char *p = name;
    while (*p) {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.')
            return graft_error(GRAFT_ERR_FORMAT, "%s: member '%s' climbs out with '..'; refused",
                               archive, name);
        if (len && !(len == 1 && p[0] == '.')) {
            if (o + len + 2 > PATH_BYTES / 2)
                return graft_error(GRAFT_ERR_FORMAT, "%s: member name too long", archive);
            if (o) out[o++] = '/';
            memcpy(out + o, p, len);
            o += len;
        }
        p += len;
        if (*p == '/') p++;
    }
    out[o] = 0;
    return GRAFT_OK;
}

/* Creates the folders of rel (all of it when is_dir, else all but the last part). */
static graft_status make_parents(const char *base, const char *rel, bool is_dir) {
    char p[PATH_BYTES];
    if (join(p, base, rel)) return GRAFT_ERR_INVALID;
    size_t start = strlen(base) + 1;
    for (size_t i = start;; i++) {
        if (p[i] == '/' || (p[i] == 0 && is_dir)) {
            char keep = p[i];
            p[i] = 0;
            struct stat st;
            if (mkdir(p, 0755) != 0 && (errno != EEXIST || lstat(p, &st) != 0 || !S_ISDIR(st.st_mode)))
                return graft_error(GRAFT_ERR_FORMAT, "%s: cannot make folder (%s)", p, strerror(errno));
            p[i] = keep;
        }
        if (!p[i]) break;
    }
    return GRAFT_OK;
}

static graft_status write_member(struct archive *ar, const char *archive, const char *member,
                                 const char *path, uint64_t *total) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
    graft_status s = GRAFT_OK;
    uint64_t bytes = 0;
    for (;;) {
        const void *buf;
        size_t size;
        la_int64_t offset;
        int r = archive_read_data_block(ar, &buf, &size, &offset);
        if (r == ARCHIVE_EOF) break;
        if (r != ARCHIVE_OK) {
            s = graft_error(GRAFT_ERR_FORMAT, "%s: %s (in member '%s')", archive,
                            archive_error_string(ar), member);
            break;
        }
        if (offset < 0 || (uint64_t)offset != bytes) { /* sparse members are not CIFAR's */
            s = graft_error(GRAFT_ERR_FORMAT, "%s: member '%s' is sparse; refused", archive, member);
            break;
        }
        bytes += size;
        *total += size;
        if (bytes > GRAFT_EXTRACT_MAX_FILE_BYTES || *total > GRAFT_EXTRACT_MAX_TOTAL_BYTES) {
            s = graft_error(GRAFT_ERR_FORMAT, "%s: member '%s' makes the archive larger than the "
                                              "extraction limits", archive, member);
            break;
        }
        for (const char *p = buf; size > 0;) {
            ssize_t w = write(fd, p, size);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                s = graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
                break;
            }
            p += w;
            size -= (size_t)w;
        }
        if (s) break;
    }
    if (!s && fsync(fd) != 0) s = graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
    if (close(fd) != 0 && !s) s = graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
    return s;
}

static const char *type_name(mode_t type) {
    switch (type) {
    case AE_IFLNK: return "a symbolic link";
    case AE_IFCHR: return "a character device";
    case AE_IFBLK: return "a block device";
    case AE_IFIFO: return "a fifo";
    case AE_IFSOCK: return "a socket";
    default: return "not a file or folder";
    }
}

static graft_status extract_into(struct archive *ar, const char *archive, const char *dest) {
    struct archive_entry *e;
    uint64_t total = 0;
    int entries = 0, r;
    char rel[PATH_BYTES / 2], path[PATH_BYTES];
    while ((r = archive_read_next_header(ar, &e)) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(e);
        graft_status s = clean_name(archive, name, rel);
        if (s) return s;
        if (++entries > GRAFT_EXTRACT_MAX_ENTRIES)
            return graft_error(GRAFT_ERR_FORMAT, "%s: more than %d members", archive,
                               GRAFT_EXTRACT_MAX_ENTRIES);
        if (archive_entry_hardlink(e))
            return graft_error(GRAFT_ERR_FORMAT, "%s: member '%s' is a hard link; refused", archive, name);
        mode_t type = archive_entry_filetype(e);
        if (type == AE_IFDIR) {
            if (*rel && (s = make_parents(dest, rel, true))) return s;
            continue;
        }
        if (type != AE_IFREG)
            return graft_error(GRAFT_ERR_FORMAT, "%s: member '%s' is %s; refused", archive, name,
                               type_name(type));
        if (!*rel) return graft_error(GRAFT_ERR_FORMAT, "%s: a file member has no name", archive);
        if (archive_entry_size_is_set(e) &&
            (archive_entry_size(e) < 0 || (uint64_t)archive_entry_size(e) > GRAFT_EXTRACT_MAX_FILE_BYTES))
            return graft_error(GRAFT_ERR_FORMAT, "%s: member '%s' is larger than %llu bytes; refused",
                               archive, name, GRAFT_EXTRACT_MAX_FILE_BYTES);
        if ((s = make_parents(dest, rel, false))) return s;
        if ((s = join(path, dest, rel))) return s;
        if ((s = write_member(ar, archive, name, path, &total))) return s;
    }
    if (r != ARCHIVE_EOF)
        return graft_error(GRAFT_ERR_FORMAT, "%s: %s", archive,
                           archive_error_string(ar) ? archive_error_string(ar) : "corrupt archive");
    if (entries == 0) return graft_error(GRAFT_ERR_FORMAT, "%s: the archive is empty", archive);
    return GRAFT_OK;
}

graft_status graft_extract_archive(const char *archive, char *dest_template) {
    if (!mkdtemp(dest_template))
        return graft_error(GRAFT_ERR_IO, "%s: %s", dest_template, strerror(errno));
    struct archive *ar = archive_read_new();
    if (!ar) {
        graft_remove_tree(dest_template);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory");
    }
    archive_read_support_filter_gzip(ar);
    archive_read_support_format_tar(ar);
    graft_status s = GRAFT_OK;
    if (archive_read_open_filename(ar, archive, COPY_BLOCK_BYTES) != ARCHIVE_OK)
        s = graft_error(GRAFT_ERR_FORMAT, "%s: %s", archive,
                        archive_error_string(ar) ? archive_error_string(ar) : "cannot open");
    else
        s = extract_into(ar, archive, dest_template);
    archive_read_free(ar);
    if (s) graft_remove_tree(dest_template);
    return s;
}

/* ---- fetching ----------------------------------------------------------------------- */

static int offline_from_env(void) {
    const char *v = getenv("GRAFT_OFFLINE");
    return v && *v && strcmp(v, "0") != 0;
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* The python-version folder's files for a, for recognising torchvision's download. */
static const char *const *python_files(const graft_cifar_archive *a) {
    return !strcmp(a->name, "cifar100") ? CIFAR100_PY_FILES : CIFAR10_PY_FILES;
}

static graft_status copy_out(char *dir, size_t size, const char *path) {
    if (snprintf(dir, size, "%s", path) >= (int)size) return graft_error(GRAFT_ERR_INVALID, "path too long");
    return GRAFT_OK;
}

graft_status graft_cifar_fetch(const graft_cifar_archive *a, const char *root,
                               const graft_fetch_options *o, char *dir, size_t size) {
    char rootbuf[PATH_BYTES], target[PATH_BYTES], pydir[PATH_BYTES], archive[PATH_BYTES];
    char url[PATH_BYTES], tmp[PATH_BYTES], extracted[PATH_BYTES];
    graft_status s;
    if (!root) {
        if ((s = graft_data_default_root(rootbuf, sizeof rootbuf))) return s;
        root = rootbuf;
    }
    if ((s = join(target, root, a->dir)) || (s = join(pydir, root, a->python_dir)) ||
        (s = join(archive, root, a->file)) || (s = join(tmp, root, EXTRACT_TEMPLATE)))
        return s;
    if (complete(target, a->files, NULL)) return copy_out(dir, size, target);
    if (complete(pydir, python_files(a), NULL)) return copy_out(dir, size, pydir);
    if ((s = graft_cifar_url(a, url, sizeof url))) return s;
    if ((o && o->offline) || offline_from_env())
        return graft_error(GRAFT_ERR_NOTFOUND, "%s: offline and not in %s: download %s and unpack it "
                                               "there", a->name, root, url);
    if ((s = graft_make_dirs(root))) return s;

    /* the archive: reuse a verified one, else download (verified, atomic) */
    char hex[GRAFT_HASH_HEX_BYTES];
    if (access(archive, R_OK) != 0 || graft_hash_file(archive, GRAFT_HASH_MD5, hex) ||
        strcmp(hex, a->md5) != 0) {
        graft_download_options d = {.expected = a->md5, .hash = GRAFT_HASH_MD5,
                                    .progress = o ? o->progress : NULL, .user = o ? o->user : NULL};
        if ((s = graft_download(url, archive, &d))) return s;
    }

    if ((s = graft_extract_archive(archive, tmp))) return s;
    const char *missing = NULL;
    if ((s = join(extracted, tmp, a->dir))) {
        graft_remove_tree(tmp);
        return s;
    }
    if (!complete(extracted, a->files, &missing)) {
        graft_remove_tree(tmp);
        return graft_error(GRAFT_ERR_FORMAT, "%s: the archive has no %s/%s", archive, a->dir, missing);
    }
    if (rename(extracted, target) != 0) {
        int err = errno;
        graft_remove_tree(tmp);
        if (err == EEXIST || err == ENOTEMPTY)
            return graft_error(GRAFT_ERR_IO, "%s exists but is incomplete: remove it and fetch again",
                               target);
        return graft_error(GRAFT_ERR_IO, "%s: %s", target, strerror(err));
    }
    fsync_dir(root);
    graft_remove_tree(tmp);
    unlink(archive); /* the extracted folder is what is kept */
    return copy_out(dir, size, target);
}
