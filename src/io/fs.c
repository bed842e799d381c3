/* fs.c — file-system helpers. */
#include "io/fs.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"

#define PATH_BYTES 4096

graft_status graft_make_dirs(const char *dir) {
    char path[PATH_BYTES];
    if (!dir || !*dir) return graft_error(GRAFT_ERR_INVALID, "an empty folder name");
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return graft_error(GRAFT_ERR_INVALID, "%s: path too long", dir);
    for (char *p = path + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char keep = *p;
            *p = 0;
            if (mkdir(path, 0777) != 0 && errno != EEXIST)
                return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
            *p = keep;
            if (!keep) break;
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return graft_error(GRAFT_ERR_IO, "%s: not a folder", dir);
    return GRAFT_OK;
}
