/* fuzz_safetensors.c — libFuzzer target: the safetensors reader on arbitrary bytes must
 * return a status (never crash, hang or leak). */
#include <stddef.h>
#include <stdint.h>

#include "io/readers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    graft_tensor_map *m = NULL;
    if (graft_safetensors_load_bytes(data, size, "fuzz", &m) == GRAFT_OK) graft_tensor_map_free(m);
    return 0;
}
