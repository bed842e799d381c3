/* weights.c — loading a weights file by its content, whatever its name: safetensors,
 * or a PyTorch checkpoint in either of torch.save's layouts (.pth, .pt, .pth.tar). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "io/pth.h"

/* safetensors starts with an 8-byte little-endian header length, then '{'. */
static bool looks_like_safetensors(const unsigned char *head, size_t n) {
    return n >= 9 && head[8] == '{';
}

graft_status graft_weights_load(const char *path, graft_tensor_map **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return graft_error(GRAFT_ERR_IO, "%s: %s", path, strerror(errno));
    unsigned char head[GRAFT_PTH_SNIFF_BYTES];
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    if (graft_pth_sniff(head, n)) return graft_pth_load(path, out);
    if (looks_like_safetensors(head, n)) return graft_safetensors_load(path, out);
    return graft_error(GRAFT_ERR_FORMAT, "%s: neither a safetensors file nor a PyTorch checkpoint", path);
}
