/* error.h — how the library reports failures: a status code plus one line of text. */
#ifndef GRAFT_CORE_ERROR_H
#define GRAFT_CORE_ERROR_H

#include "graft/graft.h"

/* Records a printf-style message for graft_errmsg() and returns status, so call sites
 * read `return graft_error(GRAFT_ERR_SHAPE, "...", ...);`. */
graft_status graft_error(graft_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefixes the current message with "prefix: " (e.g. a file name), returns status. */
graft_status graft_error_prefix(graft_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Sends an informational (level 0) or warning (level 1) line to the log callback. */
void graft_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
