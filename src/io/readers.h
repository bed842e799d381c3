/* readers.h — file readers on bytes already in memory: what the fuzzers drive, and what
 * loading by content dispatches to.  `name` is used in error messages in place of a path. */
#ifndef GRAFT_IO_READERS_H
#define GRAFT_IO_READERS_H

#include <stddef.h>

#include "graft/graft.h"

graft_status graft_safetensors_load_bytes(const void *bytes, size_t size, const char *name,
                                          graft_tensor_map **out);

#endif
