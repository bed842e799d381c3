/* model.h — internals of graft_model that tests and other library parts may use. */
#ifndef GRAFT_NN_MODEL_H
#define GRAFT_NN_MODEL_H

#include <stdint.h>

#include "graft/graft.h"
#include "nn/module.h"

/* How many layer backward calls ran since the model was created: tests use it to see
 * that backward stops below the lowest trainable layer. */
uint64_t graft_model_backward_op_count(const graft_model *m);
/* The root of the module tree. */
graft_module *graft_model_root(graft_model *m);
/* The dropout generator's state, for checkpoints that resume bit-exactly. */
void graft_model_rng_get(const graft_model *m, uint64_t state[4]);
void graft_model_rng_set(graft_model *m, const uint64_t state[4]);
/* Input channels the model expects (its first convolution's), or -1. */
int64_t graft_model_in_channels(const graft_model *m);

#endif
