/* pth.h — reading PyTorch checkpoints (the files torch.save writes, ".pth"/".pt") into
 * tensor maps, without Python and without running anything the file names.
 *
 * Both layouts torch.save has used are read:
 *   - zip (torch >= 1.6): "<folder>/data.pkl" (the pickled object), "<folder>/data/<key>"
 *     (the raw bytes of each storage), optionally "<folder>/byteorder" ("little" or
 *     "big"; big-endian data is converted) and "<folder>/version".  Any folder name.
 *   - legacy (torch < 1.6, or _use_new_zipfile_serialization=False): five pickles back
 *     to back (magic number, protocol version 1001, system info, the object, the list
 *     of storage keys), then each storage as an 8-byte little-endian element count and
 *     its little-endian elements.
 * The pickles run in graft's pickle VM (io/pickle.h), which knows only an allow-list of
 * globals; anything else (a pickled nn.Module, posix.system) is an error naming it.
 *
 * What is returned is the state dict: the top-level dict (dict or OrderedDict), or, in a
 * checkpoint dict, the dict under "state_dict" or else "model" (other entries such as
 * "epoch" or "optimizer" are then ignored).  Every value of the state dict must be a
 * tensor (torch._utils._rebuild_tensor_v2, possibly wrapped in _rebuild_parameter).
 * Views (storage offset, any non-negative strides, storages shared between tensors) are
 * copied into contiguous tensors after checking that every element lies inside its
 * storage.  Element types:
 *     float32, float64, float16, bfloat16           -> GRAFT_F32 (float64 rounded to
 *                                                      nearest, as Tensor.float() does;
 *                                                      the 16-bit types convert exactly)
 *     int64, int32, int16, int8, uint8, bool        -> GRAFT_I64 (exact; bool as 0/1)
 * Keys keep the file's order; when every key starts with "module." (nn.DataParallel),
 * that prefix is removed.
 *
 * Hostile files: on top of the pickle VM's limits, every storage size, offset and count
 * is checked against the bytes present; zip entries are read only up to their declared
 * size, and all entries read together may not exceed 32 times the file size plus
 * 1 MiB (a zip bomb stops there).  Errors are GRAFT_ERR_FORMAT ("x.pth: ..."), or
 * GRAFT_ERR_UNSUPPORTED for valid files graft cannot represent (over 8 dimensions), or
 * GRAFT_ERR_IO / GRAFT_ERR_NOMEM. */
#ifndef GRAFT_IO_PTH_H
#define GRAFT_IO_PTH_H

#include <stdbool.h>
#include <stddef.h>

#include "graft/graft.h"

/* Bytes graft_pth_sniff needs to see to recognise every layout it knows. */
#define GRAFT_PTH_SNIFF_BYTES 32

/* Reads the state dict of a checkpoint.  *out is a new map (free with
 * graft_tensor_map_free); NULL on failure. */
graft_status graft_pth_load(const char *path, graft_tensor_map **out);

/* The same for a checkpoint already in memory (what fuzzers and loading by content
 * use); name stands for the path in messages.  bytes are only read, not kept. */
graft_status graft_pth_load_bytes(const void *bytes, size_t size, const char *name,
                                  graft_tensor_map **out);

/* True when the first n bytes of a file look like a torch.save checkpoint: a zip
 * archive ("PK\3\4"), or a legacy stream (pickle PROTO 2..5, maybe a FRAME, then the
 * pickled magic number).  A safetensors file (which begins with an 8-byte header
 * length) never matches.  Pass at least GRAFT_PTH_SNIFF_BYTES when the file has them. */
bool graft_pth_sniff(const unsigned char *head, size_t n);

#endif
