/* optim.h — SGD, Adam and AdamW with PyTorch 1.13's update rules.
 *
 * Each optimiser reproduces the single-tensor (foreach=False) code path of
 * torch/optim/{sgd,adam,adamw}.py operation for operation, in float32 where PyTorch
 * works in float32 and in double where it computes Python floats (bias corrections,
 * step sizes), with fused multiply-adds exactly where PyTorch's AVX2 CPU kernels fuse
 * (add(alpha=) and addcmul).  On x86-64 the results agree with PyTorch bit for bit in
 * practice (tests/unit/test_optim.c bounds the difference at 1e-6 relative).
 *
 * An optimiser is created over a fixed list of parameters, each in one of up to
 * GRAFT_OPTIM_MAX_GROUPS groups with its own learning rate (graft uses group 0 for the
 * trunk and group 1 for the classification head: --lr-trunk / --lr-head).  All state
 * (momentum buffers, exp_avg, exp_avg_sq, step counts) is allocated at creation, so
 * graft_optim_step never allocates.
 *
 * Typical use, once per batch:
 *
 *     graft_optim_options o = graft_optim_defaults(GRAFT_OPTIM_SGD);
 *     o.ngroups = 2; o.lr[0] = 1e-4; o.lr[1] = 1e-2; o.momentum = 0.9;
 *     graft_optim *opt;
 *     graft_optim_create_for_model(model, &o, graft_model_head_path(model), &opt);
 *     for (epoch ...) {
 *         graft_optim_apply_schedule(opt, &sched, epoch);   // lr of every group
 *         for (batch ...) { zero_grad; forward; backward; graft_optim_step(opt); }
 *     }
 *     graft_optim_free(opt);
 *
 * Per-parameter state can be saved into a tensor map and loaded back, so a checkpoint
 * resumes bit-exactly: "<prefix><param>.step" (int64 scalar) and, as the kind needs,
 * "<prefix><param>.momentum_buffer", ".exp_avg", ".exp_avg_sq", ".max_exp_avg_sq"
 * (float32, the parameter's shape) — PyTorch's own state names. */
#ifndef GRAFT_TRAIN_OPTIM_H
#define GRAFT_TRAIN_OPTIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tensor.h"
#include "graft/graft.h"
#include "ops/ops.h"
#include "train/schedule.h"

#define GRAFT_OPTIM_MAX_GROUPS 4

typedef enum graft_optim_kind {
    GRAFT_OPTIM_SGD = 0, /* torch.optim.SGD */
    GRAFT_OPTIM_ADAM,    /* torch.optim.Adam: L2 weight decay added to the gradient */
    GRAFT_OPTIM_ADAMW    /* torch.optim.AdamW: decoupled weight decay, param *= 1 - lr*wd */
} graft_optim_kind;

typedef struct graft_optim_options {
    graft_optim_kind kind;
    int ngroups;                        /* 1 .. GRAFT_OPTIM_MAX_GROUPS */
    double lr[GRAFT_OPTIM_MAX_GROUPS];  /* base learning rate of each group, >= 0 */
    double weight_decay;                /* >= 0 */
    /* SGD */
    double momentum;                    /* >= 0 */
    double dampening;
    int nesterov;                       /* needs momentum > 0 and dampening 0 */
    /* Adam, AdamW */
    double beta1, beta2;                /* each in [0, 1) */
    double eps;                         /* >= 0 */
    int amsgrad;
} graft_optim_options;

/* PyTorch's defaults for a kind: Adam/AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8,
 * weight_decay 0 (Adam) or 1e-2 (AdamW); SGD momentum/dampening/weight_decay 0.
 * torch's SGD has no default lr; graft uses 0.01.  One group. */
graft_optim_options graft_optim_defaults(graft_optim_kind kind);
/* "sgd", "adam", "adamw". */
const char *graft_optim_kind_name(graft_optim_kind kind);
/* Case-insensitive inverse of graft_optim_kind_name; GRAFT_ERR_INVALID otherwise. */
graft_status graft_optim_kind_parse(const char *name, graft_optim_kind *out);
/* PyTorch's ValueError rules (plus: numbers must not be NaN), as GRAFT_ERR_INVALID with
 * PyTorch's wording, e.g. "Invalid learning rate: -0.1". */
graft_status graft_optim_check(const graft_optim_options *o);

/* One parameter handed to graft_optim_create.  Nothing is owned by the optimiser
 * except its copy of name; value, grad and frozen must outlive it. */
typedef struct graft_optim_param {
    const char *name;          /* unique; names the exported state */
    graft_tensor *value;       /* float32, updated in place */
    const graft_tensor *grad;  /* float32 with value's element count, read at every step;
                                  NULL, or no data yet: skipped (PyTorch's p.grad is None) */
    const bool *frozen;        /* read at every step, true: skipped; NULL: never frozen */
    int group;                 /* 0 .. ngroups-1 */
    /* > 1: the parameter stands for `fold` identical replicas summed (the pooled-linear
     * folding of trainer.c): SGD scales the gradient by fold (in place) before weight
     * decay, Adam/AdamW scale the step by fold; 0 or 1: an ordinary parameter. */
    double fold;
} graft_optim_param;

typedef struct graft_optim graft_optim;

/* An optimiser over n parameters, with zeroed state; free with graft_optim_free. */
graft_status graft_optim_create(const graft_optim_options *o, size_t n, const graft_optim_param *params,
                                graft_optim **out);

/* An optimiser over the parameters of m that are trainable now, in state-dict order,
 * named by their qualified names.  With head_path (a module path, e.g.
 * graft_model_head_path(m)) and o->ngroups >= 2, the parameters under head_path form
 * group 1 and the rest group 0; with head_path NULL everything is group 0.  A parameter
 * frozen later is skipped by step; one unfrozen later is not in the optimiser (create a
 * new one).  Replacing a layer of m (graft_model_replace_linear) invalidates the
 * optimiser.  Free with graft_optim_free. */
graft_status graft_optim_create_for_model(graft_model *m, const graft_optim_options *o, const char *head_path,
                                          graft_optim **out);

void graft_optim_free(graft_optim *opt);

/* One update of every parameter that has a gradient and is not frozen, with each
 * group's current learning rate.  Checks every gradient's size first, so on error no
 * parameter has changed.  Never allocates. */
graft_status graft_optim_step(graft_optim *opt);

/* A sink (ops.h) that applies this step's update of the parameter whose value tensor is
 * `value` piece by piece as a backward computes its gradient, so that the gradient is
 * never stored whole; graft_optim_step then skips that parameter once.  The pieces run
 * the same operations on the same values as graft_optim_step would, so the parameters
 * come out bit for bit the same; the update starts before the rest of the backward has
 * run, which is right only where nothing later in the backward reads the parameter
 * (Linear computes its input gradient first).  A folded parameter's pieces are scaled
 * as graft_optim_step scales its gradient.  GRAFT_ERR_NOTFOUND for a tensor not in the
 * optimiser.  The sink lives as long as the optimiser. */
graft_status graft_optim_sink(graft_optim *opt, const graft_tensor *value, const graft_grad_sink **sink);

/* Gives every trainable Linear weight of m that opt updates opt's sink (the trainer
 * gives the folded layer's its own): Linear then hands its weight gradient to the update
 * as it computes it, where its kernel can (ops.h), instead of storing it for
 * graft_optim_step.  The trainer's default (graft_train_config.fuse_update). */
void graft_optim_fuse_linear(graft_optim *opt, graft_model *m);

/* The current learning rate of a group (starts at the base rate o->lr[group]). */
graft_status graft_optim_set_lr(graft_optim *opt, int group, double lr);
double graft_optim_lr(const graft_optim *opt, int group);
double graft_optim_base_lr(const graft_optim *opt, int group);
/* Sets every group's lr to graft_schedule_lr(s, base lr of the group, t). */
graft_status graft_optim_apply_schedule(graft_optim *opt, const graft_schedule *s, int64_t t);

const graft_optim_options *graft_optim_get_options(const graft_optim *opt);
size_t graft_optim_size(const graft_optim *opt);
const char *graft_optim_param_name(const graft_optim *opt, size_t i);
int graft_optim_param_group(const graft_optim *opt, size_t i);
/* Updates applied to parameter i so far (PyTorch's state['step']). */
int64_t graft_optim_param_steps(const graft_optim *opt, size_t i);

/* The momentum buffer (SGD) or exp_avg (Adam) of the named parameter, or NULL. */
float *graft_optim_state_buffer(graft_optim *opt, const char *name);

/* Adds deep copies of the state to map under "<prefix><param>.<key>" (prefix may be
 * "" or e.g. "optim."), plus the metadata "<prefix>kind" = graft_optim_kind_name. */
graft_status graft_optim_state_export(const graft_optim *opt, const char *prefix, graft_tensor_map *map);
/* Replaces the state with the one in map.  Every expected entry must be present with
 * the right dtype and shape, and no other entry may start with prefix (other entries,
 * e.g. model weights, are ignored); a "<prefix>kind" metadata value, when present, must
 * match.  All-or-nothing: on error the state is unchanged. */
graft_status graft_optim_state_import(graft_optim *opt, const char *prefix, const graft_tensor_map *map);

#endif
