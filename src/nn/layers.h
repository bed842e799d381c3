/* layers.h — the torch.nn layers graft models are built from.
 *
 * Each constructor mirrors its PyTorch counterpart's arguments and returns a module
 * with zero-filled parameters (initialisation is the architecture's job, see init.h),
 * or NULL with the error set. */
#ifndef GRAFT_NN_LAYERS_H
#define GRAFT_NN_LAYERS_H

#include "nn/module.h"

/* nn.Conv2d(in, out, kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw), bias) */
graft_module *graft_conv2d_new(int64_t in, int64_t out, int64_t kh, int64_t kw, int64_t sh,
                               int64_t sw, int64_t ph, int64_t pw, bool bias);
/* nn.Linear(in_features, out_features, bias) */
graft_module *graft_linear_new(int64_t in, int64_t out, bool bias);
/* nn.ReLU(inplace) */
graft_module *graft_relu_new(bool inplace);
/* nn.MaxPool2d(kernel_size=k, stride=s, padding=p, ceil_mode) with square ints */
graft_module *graft_maxpool2d_new(int64_t k, int64_t s, int64_t p, bool ceil_mode);
/* nn.AdaptiveAvgPool2d((oh, ow)) */
graft_module *graft_adaptive_avgpool2d_new(int64_t oh, int64_t ow);
/* nn.Dropout(p) */
graft_module *graft_dropout_new(double p);
/* nn.BatchNorm2d(c, eps, momentum), affine, tracking running statistics.  Frozen
 * BatchNorm layers always normalise with their running statistics and never update
 * them, also in train mode — unlike PyTorch, where requires_grad=False alone does not
 * change BatchNorm's behaviour. */
graft_module *graft_batchnorm2d_new(int64_t c, double eps, double momentum);
/* nn.Flatten(start_dim=1): [N, ...] -> [N, prod(...)] as a view */
graft_module *graft_flatten_new(void);
/* nn.Sequential: runs its children in order */
graft_module *graft_sequential_new(void);

/* Dropout's probability, for --dropout overrides; false if m is not a Dropout. */
bool graft_dropout_set_p(graft_module *m, double p);
/* Dropout's probability (0 if m is not a Dropout). */
double graft_dropout_p(const graft_module *m);
bool graft_module_is(const graft_module *m, const char *type_name);
/* Declares that nothing will change the weights of m's subtree until
 * graft_module_hold_weights(m, false): meanwhile Conv2d keeps its weights' Winograd
 * transform between forwards instead of redoing it at every call (ops.h,
 * graft_conv2d_forward_held; the same outputs).  Releasing frees what was kept.  For
 * passes of a frozen trunk over a dataset and for inference. */
void graft_module_hold_weights(graft_module *m, bool hold);

/* Runs steps[0..n) one after the other.  Backward goes in reverse and stops below the
 * lowest step that has trainable parameters, unless need_dx asks for the gradient
 * with respect to the input (then *dx receives it). */
graft_status graft_sequence_forward(graft_module *const *steps, int n, graft_ctx *ctx,
                                    graft_tensor *in, graft_tensor **out);
graft_status graft_sequence_backward(graft_module *const *steps, int n, bool need_dx,
                                     graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx);

#endif
