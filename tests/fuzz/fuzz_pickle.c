/* fuzz_pickle.c — libFuzzer target: the pickle VM on arbitrary bytes builds data or
 * fails cleanly; it never crashes, hangs, leaks or calls anything. */
#include <stddef.h>
#include <stdint.h>

#include "io/pickle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    graft_pickle *pk;
    if (graft_pickle_create(NULL, &pk)) return 0;
    graft_pickle_obj *root;
    size_t used;
    (void)graft_pickle_load(pk, data, size, &root, &used);
    graft_pickle_free(pk);
    return 0;
}
