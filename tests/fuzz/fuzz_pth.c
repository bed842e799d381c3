/* fuzz_pth.c — libFuzzer target: PyTorch checkpoints (zip through libarchive, legacy
 * streams, the pickle VM, tensor views) on arbitrary bytes. */
#include <stddef.h>
#include <stdint.h>

#include "io/pth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    graft_tensor_map *m = NULL;
    if (graft_pth_load_bytes(data, size, "fuzz", &m) == GRAFT_OK) graft_tensor_map_free(m);
    return 0;
}
