/* hash.h — SHA-256 and MD5 (OpenSSL's libcrypto) for verifying downloads. */
#ifndef GRAFT_IO_HASH_H
#define GRAFT_IO_HASH_H

#include <stddef.h>

#include "graft/graft.h"

typedef enum graft_hash_kind { GRAFT_HASH_SHA256, GRAFT_HASH_MD5 } graft_hash_kind;

#define GRAFT_HASH_HEX_BYTES 65 /* 64 hex digits of SHA-256 and a NUL */

typedef struct graft_hasher graft_hasher;

/* A streaming hasher; free with graft_hasher_free. */
graft_status graft_hasher_new(graft_hash_kind kind, graft_hasher **out);
graft_status graft_hasher_update(graft_hasher *h, const void *data, size_t bytes);
/* Writes the lowercase hex digest into hex (GRAFT_HASH_HEX_BYTES). */
graft_status graft_hasher_final(graft_hasher *h, char *hex);
void graft_hasher_free(graft_hasher *h);

/* The digest of a whole file. */
graft_status graft_hash_file(const char *path, graft_hash_kind kind, char *hex);
/* True when hex starts with the (lowercase) prefix: torchvision file names carry the
 * first 8 hex digits of their SHA-256. */
int graft_hash_matches(const char *hex, const char *expected_prefix);
const char *graft_hash_name(graft_hash_kind kind);

#endif
