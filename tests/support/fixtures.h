/* fixtures.h — reading committed fixture files from tests (header-only). */
#ifndef GRAFT_TEST_FIXTURES_H
#define GRAFT_TEST_FIXTURES_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* The whole file as a NUL-terminated string (caller frees), or NULL. */
static inline char *fx_read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

/* A scratch path under $GRAFT_TMP (or /tmp) unique to this process. */
static inline void fx_tmp_path(char *buf, size_t size, const char *name) {
    const char *dir = getenv("GRAFT_TMP");
    snprintf(buf, size, "%s/graft-test-%d-%s", dir && *dir ? dir : "/tmp", (int)getpid(), name);
}

#endif
