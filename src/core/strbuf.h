/* strbuf.h — a growable string for building printed forms and headers. */
#ifndef GRAFT_CORE_STRBUF_H
#define GRAFT_CORE_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct graft_strbuf {
    char *data;  /* always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
    bool failed; /* an allocation failed; data holds what fitted */
} graft_strbuf;

void graft_strbuf_init(graft_strbuf *sb);
void graft_strbuf_free(graft_strbuf *sb);
void graft_strbuf_append(graft_strbuf *sb, const char *s);
void graft_strbuf_appendn(graft_strbuf *sb, const char *s, size_t n);
void graft_strbuf_printf(graft_strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the string to the caller (free with free()); NULL if an allocation failed. */
char *graft_strbuf_take(graft_strbuf *sb);
/* Python's repr() of a float: the shortest digits that round-trip, always with a '.'
 * or an exponent ("0.5", "1e-05", "0.0"). */
void graft_format_pyfloat(double v, char *buf, size_t size);

#endif
