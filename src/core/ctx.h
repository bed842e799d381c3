/* ctx.h — what a forward/backward pass carries besides tensors: scratch memory and
 * the dropout generator.  One context per model; never shared between threads. */
#ifndef GRAFT_CORE_CTX_H
#define GRAFT_CORE_CTX_H

#include <stddef.h>
#include <stdint.h>

#include "core/rng.h"

typedef struct graft_ctx {
    float *workspace;       /* scratch for im2col and friends, grown on demand */
    size_t workspace_floats;
    graft_rng rng;          /* dropout masks */
    uint64_t backward_ops;  /* count of op backward calls, so tests can see skipped work */
} graft_ctx;

void graft_ctx_init(graft_ctx *ctx, uint64_t seed);
void graft_ctx_release(graft_ctx *ctx);
/* Bytes the workspace is aligned to: a cache line, a whole AVX-512 vector. */
#define GRAFT_CTX_ALIGN 64

/* Scratch of at least n floats aligned to GRAFT_CTX_ALIGN bytes, contents undefined;
 * NULL (with the error set) when the allocation fails.  Valid until the next call. */
float *graft_ctx_workspace(graft_ctx *ctx, size_t n);

#endif
