/* schedule.h — learning-rate schedules as torch.optim.lr_scheduler computes them.
 *
 * A schedule maps (base learning rate, t) to the learning rate used during period t,
 * where t counts scheduler steps from 0: the value PyTorch's group['lr'] holds after
 * t calls of scheduler.step().  graft's recipe steps the scheduler once per epoch
 * (t = epoch index, like the usual PyTorch loop), but nothing here depends on that:
 * pass a global step index instead to schedule per step.
 *
 * Values are closed forms, so a resumed run needs only t, never the previous value:
 *   constant   base
 *   step       StepLR(step_size, gamma):    base * gamma^floor(t / step_size)
 *   cosine     CosineAnnealingLR(T_max, eta_min):
 *              eta_min + (base - eta_min) * (1 + cos(pi * t / T_max)) / 2
 * PyTorch's chainable (recursive) forms give the same numbers up to double rounding
 * (relative differences around 1e-15), so the float32 learning rate an optimiser uses
 * is the same.
 *
 * Warm-up (warmup = W > 0) puts LinearLR(start_factor=warmup_factor, end_factor=1,
 * total_iters=W) in front of the main schedule exactly as
 * SequentialLR([LinearLR(...), main], milestones=[W]) does:
 *   t <  W:  base * (warmup_factor + (1 - warmup_factor) * t / W)
 *   t >= W:  main(t - W)     (SequentialLR restarts the main schedule at the milestone)
 */
#ifndef GRAFT_TRAIN_SCHEDULE_H
#define GRAFT_TRAIN_SCHEDULE_H

#include <stddef.h>
#include <stdint.h>

#include "graft/graft.h"

typedef enum graft_schedule_kind {
    GRAFT_SCHEDULE_CONSTANT = 0,
    GRAFT_SCHEDULE_STEP,   /* StepLR */
    GRAFT_SCHEDULE_COSINE  /* CosineAnnealingLR */
} graft_schedule_kind;

typedef struct graft_schedule {
    graft_schedule_kind kind;
    int64_t step_size;     /* step: >= 1 */
    double gamma;          /* step: >= 0 (PyTorch's default 0.1) */
    int64_t t_max;         /* cosine: >= 1 */
    double eta_min;        /* cosine: >= 0 (default 0) */
    int64_t warmup;        /* W >= 0 periods of linear warm-up; 0: none */
    double warmup_factor;  /* LinearLR's start_factor, in [0, 1] (PyTorch's default 1/3) */
} graft_schedule;

/* A constant schedule without warm-up, with PyTorch's defaults in the other fields
 * (step_size 1, gamma 0.1, t_max 1, eta_min 0, warmup_factor 1/3). */
graft_schedule graft_schedule_defaults(void);

/* GRAFT_ERR_INVALID with a one-line message when a field is out of range. */
graft_status graft_schedule_check(const graft_schedule *s);

/* The learning rate for period t >= 0 (t < 0 is treated as 0).  s must have passed
 * graft_schedule_check. */
double graft_schedule_lr(const graft_schedule *s, double base_lr, int64_t t);

/* Parses "KIND[:KEY=VALUE,...]": KIND is constant, step or cosine; keys are step_size,
 * gamma (step), t_max, eta_min (cosine), warmup, warmup_factor (any kind), e.g.
 * "cosine:t_max=30,warmup=5,warmup_factor=0.1".  Unset fields keep their defaults; the
 * result is checked.  On failure *out is unchanged. */
graft_status graft_schedule_parse(const char *spec, graft_schedule *out);

/* The spec that graft_schedule_parse reads back to the same schedule (every number
 * round-trips exactly), e.g. for a checkpoint's metadata.  Always terminated; returns
 * the length it needed, like snprintf. */
int graft_schedule_format(const graft_schedule *s, char *buf, size_t size);

#endif
