/* hash.c — digests through OpenSSL's EVP interface. */
#include "io/hash.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

struct graft_hasher {
    EVP_MD_CTX *ctx;
};

const char *graft_hash_name(graft_hash_kind kind) { return kind == GRAFT_HASH_MD5 ? "MD5" : "SHA-256"; }

graft_status graft_hasher_new(graft_hash_kind kind, graft_hasher **out) {
    *out = NULL;
    graft_hasher *h = calloc(1, sizeof *h);
    if (!h || !(h->ctx = EVP_MD_CTX_new())) {
        free(h);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory for a hash context");
    }
    if (EVP_DigestInit_ex(h->ctx, kind == GRAFT_HASH_MD5 ? EVP_md5() : EVP_sha256(), NULL) != 1) {
        graft_hasher_free(h);
        return graft_error(GRAFT_ERR_UNSUPPORTED, "%s is not available from libcrypto", graft_hash_name(kind));
    }
    *out = h;
    return GRAFT_OK;
}

graft_status graft_hasher_update(graft_hasher *h, const void *data, size_t bytes) {
    if (EVP_DigestUpdate(h->ctx, data, bytes) != 1) return graft_error(GRAFT_ERR_IO, "hashing failed");
    return GRAFT_OK;
}

graft_status graft_hasher_final(graft_hasher *h, char *hex) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(h->ctx, md, &n) != 1) return graft_error(GRAFT_ERR_IO, "hashing failed");
    for (unsigned int i = 0; i < n && 2 * i + 2 < GRAFT_HASH_HEX_BYTES; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return GRAFT_OK;
}

void graft_hasher_free(graft_hasher *h) {
    if (!h) return;
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

graft_status graft_hash_file(const char *path, graft_hash_kind kind, char *hex) {
    FILE *f = fopen(path, "rb");
    if (!f) return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
    graft_hasher *h;
    graft_status s = graft_hasher_new(kind, &h);
    unsigned char buf[1 << 16];
    size_t n;
    while (!s && (n = fread(buf, 1, sizeof buf, f)) > 0) s = graft_hasher_update(h, buf, n);
    if (!s && ferror(f)) s = graft_error(GRAFT_ERR_IO, "%s: read error", path);
    if (!s) s = graft_hasher_final(h, hex);
    graft_hasher_free(h);
    fclose(f);
    return s;
}

int graft_hash_matches(const char *hex, const char *expected_prefix) {
    size_t n = strlen(expected_prefix);
    if (n == 0 || n > strlen(hex)) return 0;
    for (size_t i = 0; i < n; i++)
        if (tolower((unsigned char)expected_prefix[i]) != hex[i]) return 0;
    return 1;
}
