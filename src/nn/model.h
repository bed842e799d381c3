/* model.h — internals of graft_model that tests and other library parts may use. */
#ifndef GRAFT_NN_MODEL_H
#define GRAFT_NN_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "graft/graft.h"
#include "nn/module.h"

/* The state dict as views of the model's own tensors (no copy): valid while the model
 * lives and its state is not replaced; for saving.  Free with graft_tensor_map_free. */
graft_status graft_model_state_view(const graft_model *m, graft_tensor_map **out);

/* How many layer backward calls ran since the model was created: tests use it to see
 * that backward stops below the lowest trainable layer. */
uint64_t graft_model_backward_op_count(const graft_model *m);
/* The root of the module tree. */
graft_module *graft_model_root(graft_model *m);
/* The dropout generator's state, for checkpoints that resume bit-exactly. */
void graft_model_rng_get(const graft_model *m, uint64_t state[4]);
void graft_model_rng_set(graft_model *m, const uint64_t state[4]);
/* The root's forward as steps (arch.h). */
int graft_model_nsteps(const graft_model *m);
graft_module *const *graft_model_steps(const graft_model *m);
/* The index of the first of steps[0..n) holding a trainable parameter (n when none). */
int graft_steps_first_trainable(graft_module *const *steps, int n);
/* Whether a step, in train mode, could give different outputs for the same input
 * (a Dropout with p > 0 in it), which rules out caching its output. */
bool graft_step_is_random(const graft_module *step);
/* Forward through steps[from..to) of a step list (NULL: the model's own; another list
 * may mix the model's modules with replacements, as the pooled-linear folding does);
 * *out is owned by the modules.  Backward through steps[from..n) of the last forward
 * that reached the end of the list, computing no input gradient. */
graft_status graft_model_forward_steps(graft_model *m, graft_module *const *steps, int n, int from, int to,
                                       graft_tensor *in, graft_tensor **out);
graft_status graft_model_backward_steps(graft_model *m, graft_module *const *steps, int n, int from,
                                        const graft_tensor *grad_output);
/* The parameter behind state entry i (NULL for buffers). */
graft_param *graft_model_state_param(const graft_model *m, size_t i);
/* graft_model_zero_grad without the pass of zeros: the next backward overwrites the
 * gradients it writes whole (Linear's weight and bias) instead of adding to zeros, and
 * zeroes the others when it reaches them or when it ends, so after that backward (or
 * through graft_model_grad) every gradient reads as after graft_model_zero_grad.  For
 * callers that do not read gradients through pointers kept from before (the trainer). */
void graft_model_zero_grad_lazy(graft_model *m);
/* graft_module_hold_weights on the whole model (inference), or on the steps below the
 * first with trainable parameters (frozen ones: nothing changes their weights while
 * training). */
void graft_model_hold_weights(graft_model *m, bool hold);
void graft_model_hold_frozen_weights(graft_model *m, bool hold);

/* Input channels the model expects (its first convolution's), or -1. */
int64_t graft_model_in_channels(const graft_model *m);

#endif
