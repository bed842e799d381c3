/* ctx.c — per-model scratch memory. */
#include "core/ctx.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

void graft_ctx_init(graft_ctx *ctx, uint64_t seed) {
    memset(ctx, 0, sizeof *ctx);
    graft_rng_seed(&ctx->rng, seed);
}

void graft_ctx_release(graft_ctx *ctx) {
    free(ctx->workspace);
    ctx->workspace = NULL;
    ctx->workspace_floats = 0;
}

float *graft_ctx_workspace(graft_ctx *ctx, size_t n) {
    if (n <= ctx->workspace_floats) return ctx->workspace;
    if (n > SIZE_MAX / sizeof(float)) {
        graft_error(GRAFT_ERR_NOMEM, "workspace of %zu floats is too large", n);
        return NULL;
    }
    free(ctx->workspace);
    size_t bytes = (n * sizeof(float) + GRAFT_CTX_ALIGN - 1) / GRAFT_CTX_ALIGN * GRAFT_CTX_ALIGN;
    ctx->workspace = bytes >= n * sizeof(float) ? aligned_alloc(GRAFT_CTX_ALIGN, bytes) : NULL;
    ctx->workspace_floats = ctx->workspace ? n : 0;
    if (!ctx->workspace) graft_error(GRAFT_ERR_NOMEM, "out of memory for %zu floats of workspace", n);
    return ctx->workspace;
}
