/* fold.h — folding pooled replicas into the first Linear layer.
 *
 * VGG16 on 32×32 images ends its features with a 512×1×1 map that AdaptiveAvgPool2d
 * copies into 512×7×7 before Flatten and Linear(25088, 4096).  Whenever the pool only
 * replicates (every output cell is one input cell, each input cell copied n times), the
 * three layers are one Linear of n times fewer inputs:
 *
 *     y = W P x + b = W_f x + b,   W_f[o, j] = sum over the n replicas k of j of W[o, k]
 *
 * (P is the 0/1 replication matrix, P^T P = n I).  Training stays exact.  Every replica
 * k of input j receives the same gradient, dL/dW[o, k] = dy[o] x[j] = g[o, j], which is
 * also dL/dW_f[o, j].  Write W_k(t) for the replicas of one (o, j).
 *
 *  - SGD (momentum, dampening, nesterov, weight decay wd) is linear in (W, g, buf):
 *    summing the update of the n replicas gives the update of W_f = sum_k W_k with the
 *    gradient n g and the same wd, momentum and lr; the buffers sum likewise.  So W_f
 *    follows SGD with its gradient scaled by n (optim.h: fold).
 *  - AdamW (and Adam without weight decay): the moments come from g alone, the same for
 *    every replica, so every replica moves by the same step u after the decoupled decay:
 *    W_k <- (1 - lr wd) W_k - u.  Summed: W_f <- (1 - lr wd) W_f - n u: AdamW on W_f
 *    with moments of g and the step scaled by n.  Adam with L2 decay adds wd W_k to each
 *    replica's gradient, the moments differ, and folding would not be exact: it is off.
 *
 * Unfolding.  Both rules are affine in the replica with coefficients common to all
 * replicas: W_k(t) = a(t) W_k(0) + b(t) and, for SGD, buf_k(t) = alpha(t) W_k(0) +
 * beta(t), since everything that differs between replicas starts in W_k(0) and evolves
 * through the gradient-free part of the update.  A one-element probe parameter that
 * starts at 1 with gradient 0, updated by the same optimiser, traces a(t) (its value)
 * and alpha(t) (its momentum buffer).  Summing over the replicas gives b(t) =
 * (W_f(t) - a(t) W_f(0)) / n, so
 *
 *     W_k(t) = a(t) W_k(0) + (W_f(t) - a(t) W_f(0)) / n.
 *
 * Checkpoints are written unfolded in torchvision's shapes.  Each save moves the origin
 * to the present: the model's weight becomes W(t), W_f is folded again from it, the
 * probe restarts at 1 with momentum alpha/a (the coefficient of W(t) in the buffers,
 * as buf_k = (alpha/a) W_k(t) + a term common to the replicas).  A resumed run starts
 * from that same origin, so it continues exactly as a run that saved there. */
#ifndef GRAFT_TRAIN_FOLD_H
#define GRAFT_TRAIN_FOLD_H

#include <stdbool.h>
#include <stdint.h>

#include "core/tensor.h"
#include "graft/graft.h"
#include "nn/module.h"
#include "train/optim.h"

#define GRAFT_FOLD_PROBE_NAME "graft.fold_probe"
#define GRAFT_FOLD_SUFFIX ".folded"

typedef struct graft_fold {
    bool active;
    char note[160];            /* why folding is off, or what it folded */
    graft_module *linear;      /* the model's Linear after the pool (owned by the model) */
    char weight_name[256];     /* its state-dict names */
    char bias_name[256];
    graft_module *flatten;     /* owned: the folded forward's flatten */
    graft_module *folded;      /* owned: Linear(c*h*w, out), its bias a view of the model's */
    graft_module **steps;      /* owned array: the training forward */
    int nsteps;
    int64_t c, h, w, oh, ow, n;
    graft_tensor wf0;          /* W_f at the origin */
    graft_tensor probe, probe_grad; /* [1] */
} graft_fold;

/* Decides whether the model's forward (from its steps) folds for inputs of shape chw
 * and the optimiser kind / weight decay, and if so builds the folded forward and folds
 * the current weights.  With enabled false folding stays off. */
graft_status graft_fold_setup(graft_fold *f, graft_model *m, const int chw[3], graft_optim_kind kind,
                              double weight_decay, bool enabled);
void graft_fold_free(graft_fold *f);

/* The optimiser's parameters for a folded model: the model's trainable parameters with
 * the folded weight (named weight_name + GRAFT_FOLD_SUFFIX, fold n) and the folded
 * layer's bias gradient in place of the Linear's, plus the probe.  head_path as in
 * graft_optim_create_for_model (group 1), or NULL.  Caller frees list[i].name and list. */
graft_status graft_fold_optim_params(const graft_fold *f, graft_model *m, const char *head_path,
                                     graft_optim_param **list, size_t *n);

/* Writes W(t) into the model's weight (unfolding), then folds again from it and
 * restarts the probe: the origin moves to now (see above).  Call before every save. */
graft_status graft_fold_reorigin(graft_fold *f, graft_optim *opt);

#endif
