/* strbuf.c — growable strings and Python-style float formatting. */
#include "core/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void graft_strbuf_init(graft_strbuf *sb) { memset(sb, 0, sizeof *sb); }

void graft_strbuf_free(graft_strbuf *sb) {
    free(sb->data);
    graft_strbuf_init(sb);
}

static bool reserve(graft_strbuf *sb, size_t extra) {
    if (sb->failed) return false;
    if (sb->len + extra + 1 <= sb->cap) return true;
    size_t cap = sb->cap ? sb->cap : 64;
    while (cap < sb->len + extra + 1) cap *= 2;
    char *p = realloc(sb->data, cap);
    if (!p) {
        sb->failed = true;
        return false;
    }
    sb->data = p;
    sb->cap = cap;
    return true;
}

void graft_strbuf_appendn(graft_strbuf *sb, const char *s, size_t n) {
    if (!reserve(sb, n)) return;
    memcpy(sb->data + sb->len, s, n);
    sb->len += n;
    sb->data[sb->len] = 0;
}

void graft_strbuf_append(graft_strbuf *sb, const char *s) { graft_strbuf_appendn(sb, s, strlen(s)); }

void graft_strbuf_printf(graft_strbuf *sb, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !reserve(sb, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb->len += (size_t)n;
}

char *graft_strbuf_take(graft_strbuf *sb) {
    if (sb->failed) {
        graft_strbuf_free(sb);
        return NULL;
    }
    if (!sb->data && !reserve(sb, 0)) return NULL;
    char *s = sb->data;
    if (sb->len == 0) s[0] = 0;
    graft_strbuf_init(sb);
    return s;
}

void graft_format_pyfloat(double v, char *buf, size_t size) {
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".eEn")) { /* integral value: Python writes "2.0"; 'n' covers nan/inf */
        size_t len = strlen(buf);
        if (len + 2 < size) memcpy(buf + len, ".0", 3);
    }
}
