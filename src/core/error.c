/* error.c — thread-local error messages and the log callback. */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define ERRMSG_BYTES 2048

static _Thread_local char errmsg[ERRMSG_BYTES];
static graft_log_fn log_fn;
static void *log_user;

graft_status graft_error(graft_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, sizeof errmsg, fmt, ap);
    va_end(ap);
    return status;
}

graft_status graft_error_prefix(graft_status status, const char *fmt, ...) {
    char prefix[ERRMSG_BYTES];
    char old[ERRMSG_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, errmsg, sizeof old);
    size_t plen = strnlen(prefix, sizeof errmsg - 3);
    memcpy(errmsg, prefix, plen);
    memcpy(errmsg + plen, ": ", 2);
    size_t room = sizeof errmsg - plen - 3;
    size_t olen = strnlen(old, room);
    memcpy(errmsg + plen + 2, old, olen);
    errmsg[plen + 2 + olen] = 0;
    return status;
}

const char *graft_errmsg(void) { return errmsg; }

const char *graft_status_name(graft_status s) {
    switch (s) {
    case GRAFT_OK: return "ok";
    case GRAFT_ERR_INVALID: return "invalid argument";
    case GRAFT_ERR_SHAPE: return "shape error";
    case GRAFT_ERR_NOMEM: return "out of memory";
    case GRAFT_ERR_IO: return "I/O error";
    case GRAFT_ERR_FORMAT: return "format error";
    case GRAFT_ERR_NOTFOUND: return "not found";
    case GRAFT_ERR_UNSUPPORTED: return "unsupported";
    case GRAFT_INTERRUPTED: return "interrupted";
    }
    return "unknown status";
}

void graft_set_log_callback(graft_log_fn fn, void *user) {
    log_fn = fn;
    log_user = user;
}

void graft_log(int level, const char *fmt, ...) {
    if (!log_fn) return;
    char line[ERRMSG_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log_fn(level, line, log_user);
}
