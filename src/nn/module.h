/* module.h — the module tree that mirrors torch.nn.
 *
 * A module has a local name (its key in the parent: "features", "0"), parameters and
 * buffers registered in PyTorch's order, and children.  Qualified names are built by
 * walking the tree exactly as nn.Module.state_dict() does: own parameters, own buffers,
 * then each child with "name." prefixed.
 *
 * Sizes are never stored beside the tensors: a Linear's in/out features are its
 * weight's shape, so they cannot disagree (the recipe's `out_features` trap).
 *
 * Forward and backward pass tensors between modules by pointer.  Each module owns its
 * output and its input-gradient buffers (sized once per batch shape, then reused); a
 * module may return a view of its input (Flatten, eval Dropout) or work in place
 * (ReLU(inplace=True)), so a module's input stays valid only until the next module
 * runs in place on it — which is why backward relies on what each op saved. */
#ifndef GRAFT_NN_MODULE_H
#define GRAFT_NN_MODULE_H

#include <stdbool.h>

#include "core/ctx.h"
#include "core/strbuf.h"
#include "core/tensor.h"
#include "ops/ops.h"

#define GRAFT_MAX_PARAMS 2
#define GRAFT_MAX_BUFFERS 3

typedef struct graft_module graft_module;

typedef struct graft_param {
    const char *name;  /* "weight", "bias" (static strings) */
    graft_tensor value;
    graft_tensor grad; /* allocated on the first backward that reaches it */
    bool frozen;
    bool grad_stale;   /* zeroed lazily (graft_model_zero_grad): grad reads as zero, its
                        * memory is not written yet */
    /* Set by the trainer: where a backward that would write this (lazily zeroed)
     * gradient whole may send it instead, for the optimiser to apply as it comes
     * (Linear's weight; ops.h).  NULL: the gradient goes to grad, as always. */
    const graft_grad_sink *sink;
    bool grad_sunk;    /* the last backward sent the gradient to sink: grad does not hold
                        * it, and stays as it was */
} graft_param;

typedef struct graft_buffer {
    const char *name;  /* "running_mean", "running_var", "num_batches_tracked" */
    graft_tensor value;
} graft_buffer;

typedef struct graft_module_type {
    const char *name; /* the PyTorch class name printed by repr: "Conv2d" */
    /* in -> *out.  in may be modified only by modules documented as in-place. */
    graft_status (*forward)(graft_module *m, graft_ctx *ctx, graft_tensor *in, graft_tensor **out);
    /* dy -> *dx (only when m->need_dx; otherwise *dx is left NULL), accumulating
     * parameter gradients for unfrozen parameters.  dy may be overwritten. */
    graft_status (*backward)(graft_module *m, graft_ctx *ctx, graft_tensor *dy, graft_tensor **dx);
    /* The text inside the parentheses of the printed form (nn.Module.extra_repr). */
    void (*extra_repr)(const graft_module *m, graft_strbuf *sb);
    /* Frees cfg and aux. */
    void (*destroy)(graft_module *m);
} graft_module_type;

struct graft_module {
    const graft_module_type *type;
    char *name;
    graft_module *parent;
    graft_module **children;
    int nchildren;
    graft_param params[GRAFT_MAX_PARAMS];
    int nparams;
    graft_buffer buffers[GRAFT_MAX_BUFFERS];
    int nbuffers;
    bool training;
    bool need_dx;             /* set by the container before backward */
    bool weights_held;        /* graft_module_hold_weights: forwards may keep the weights'
                               * transforms, the weights do not change meanwhile */
    graft_tensor out;         /* forward output (owned, or a view of the input) */
    graft_tensor dx;          /* gradient w.r.t. the input (owned, or a view) */
    const graft_tensor *in;   /* input of the last forward */
    void *cfg;                /* type-specific configuration (kernel sizes, p, eps...) */
    void *aux;                /* type-specific saved state (argmax, masks, batch stats) */
};

/* Allocates a module of a type (children, params and buffers added afterwards);
 * NULL with the error set on allocation failure.  cfg is owned by the module. */
graft_module *graft_module_new(const graft_module_type *type, void *cfg);
/* Frees the module, its children and everything they own. */
void graft_module_free(graft_module *m);
/* Appends child under a local name; on failure frees child. */
graft_status graft_module_add(graft_module *m, const char *name, graft_module *child);
/* Replaces the child at index i (freeing the old one); the new child takes its name. */
void graft_module_replace_child(graft_module *m, int i, graft_module *child);
/* Registers a parameter/buffer and gives it a zeroed tensor of the shape. */
graft_status graft_module_add_param(graft_module *m, const char *name, graft_dtype dtype,
                                    int ndim, const int64_t *shape);
graft_status graft_module_add_buffer(graft_module *m, const char *name, graft_dtype dtype,
                                     int ndim, const int64_t *shape);
graft_param *graft_module_param(graft_module *m, const char *name);
graft_buffer *graft_module_buffer(graft_module *m, const char *name);

/* Dotted path from the root ("features.0"; "" for the root). */
void graft_module_path(const graft_module *m, char *buf, size_t size);
/* The descendant at a dotted path, or NULL. */
graft_module *graft_module_find(graft_module *root, const char *path);

/* print(module) as PyTorch writes it (nn.Module.__repr__). */
void graft_module_repr(const graft_module *m, graft_strbuf *sb);

/* Visits parameters and buffers in state-dict order; prefix is the qualified name
 * up to and including the last dot.  Returns the first non-zero callback result. */
typedef int (*graft_state_visit_fn)(void *user, const char *qualified_name, graft_module *owner,
                                    graft_param *param, graft_buffer *buffer);
int graft_module_visit_state(graft_module *m, graft_state_visit_fn fn, void *user);

void graft_module_set_training(graft_module *m, bool training);
void graft_module_set_frozen(graft_module *m, bool frozen);
/* The same for every parameter under m except those under skip (which keep their state). */
void graft_module_set_frozen_except(graft_module *m, const graft_module *skip, bool frozen);
/* true if any parameter in the subtree is trainable. */
bool graft_module_has_trainable(const graft_module *m);
/* true if the module's own parameters are all frozen (or it has none). */
bool graft_module_own_params_frozen(const graft_module *m);

/* Runs a module's forward / backward through its type, naming the layer in errors. */
graft_status graft_module_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in,
                                  graft_tensor **out);
graft_status graft_module_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy,
                                   graft_tensor **dx);

/* The gradient tensor of a parameter, allocated and zeroed on first use (and zeroed
 * now if it was zeroed lazily), for a backward to accumulate into. */
graft_status graft_param_grad(graft_param *p, float **grad);
/* The same for a backward that writes every element of the gradient when *overwrite
 * comes back true (the gradient is zero: new, or zeroed lazily), and accumulates into it
 * otherwise.  Saves a pass of zeros over large weights. */
graft_status graft_param_grad_for_write(graft_param *p, float **grad, bool *overwrite);
/* zero_grad without the pass of zeros: marks p's gradient as zero, for the next backward
 * to overwrite (or graft_param_grad_settle to clear). */
void graft_param_zero_grad_lazy(graft_param *p);
/* Writes the zeros a lazy zeroing left pending, so the gradient can be read (not when
 * the gradient went to the sink instead). */
void graft_param_grad_settle(graft_param *p);
/* Whether a backward writing p's whole gradient may hand it to p->sink instead: a sink
 * is set, p is trainable, its gradient is zero (new, or zeroed lazily) and none went to
 * the sink since the last zeroing.  One backward per optimiser step, as the trainer
 * runs them: a second backward before the step would store its gradient, which the
 * step, having applied the first, would not see. */
bool graft_param_may_sink(const graft_param *p);

/* A layer error: "features.0 (Conv2d): <message>". */
graft_status graft_module_error(const graft_module *m, graft_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
