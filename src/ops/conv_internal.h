/* conv_internal.h — knobs of conv.c that only tests touch.
 *
 * The fast Conv2d lowers a chunk of images at a time to one GEMM; how many images
 * fit in a chunk follows from a bound on the scratch workspace.  Tests shrink the
 * bound so the multi-chunk paths run on small inputs. */
#ifndef GRAFT_OPS_CONV_INTERNAL_H
#define GRAFT_OPS_CONV_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ops/ops.h"

/* Default bound on the conv workspace: 16M floats (64 MiB). */
#define GRAFT_CONV2D_WORKSPACE_LIMIT_FLOATS ((size_t)16 * 1024 * 1024)

/* Sets the workspace bound in floats for every later conv call; 0 restores the
 * default.  A process-wide setting: for tests, not for concurrent use. */
void graft_conv2d_set_workspace_limit(size_t floats);

/* Images per GEMM chunk for this geometry under the current bound (1..n).  A single
 * image always forms a chunk, even when it alone exceeds the bound. */
int64_t graft_conv2d_chunk_images(const graft_conv2d_geom *g);

#endif
