/* optim.c — SGD, Adam and AdamW, operation for operation as PyTorch 1.13 runs them on
 * a CPU (torch/optim/{sgd,adam,adamw}.py, _single_tensor_* paths).
 *
 * How each PyTorch tensor op rounds, on float32 tensors with Python-float scalars (the
 * scalar is first rounded to float; checked against torch 1.13's AVX2 kernels on a
 * million elements, no bit differing):
 *   a.mul_(s)                 a * (float)s
 *   a.add_(b, alpha=s)        fma(b, (float)s, a)       (vec::fmadd in the add ufunc)
 *   a.addcmul_(b, c, value=s) fma((float)s * b, c, a)  (GCC contracts s*b*c + a)
 *   a.addcdiv_(b, c, value=s) a + ((float)s * b) / c
 *   a / s, a.add_(s), sqrt    correctly rounded float ops
 * Bias corrections and step sizes are Python floats: double here too. */
#include "train/optim.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cpu.h"
#include "core/error.h"
#include "core/threads.h"
#include "nn/layers.h"
#include "nn/model.h"
#include "nn/module.h"

#if GRAFT_HAVE_AVX512_BUILD
#include <immintrin.h>
#endif

/* Elements per thread below which an update runs on one thread: an update is a few
 * flops per element, so small tensors are not worth waking the pool. */
#define OPTIM_MIN_CHUNK 65536

/* PyTorch's defaults (torch/optim/adam.py, adamw.py). */
#define ADAM_DEFAULT_LR 1e-3
#define ADAM_DEFAULT_BETA1 0.9
#define ADAM_DEFAULT_BETA2 0.999
#define ADAM_DEFAULT_EPS 1e-8
#define ADAMW_DEFAULT_WEIGHT_DECAY 1e-2
/* torch.optim.SGD has lr=required; graft's default is the customary 0.01. */
#define SGD_DEFAULT_LR 0.01

/* fma rounded once to float, where the CPU has no fused multiply-add for the loops to
 * use (fma_r below).  With FP_FAST_FMAF fmaf is one instruction; otherwise the double
 * product a*b is exact (24+24 bits < 53) and only a sum landing on a float tie after
 * rounding to double could round differently — vanishingly rare, and within one ulp if it
 * happens — while staying vectorisable and free of libm calls. */
static inline float fma_f(float a, float b, float c) {
#ifdef FP_FAST_FMAF
    return fmaf(a, b, c);
#else
    return (float)((double)a * (double)b + (double)c);
#endif
}

/* fma in the update loops: the hardware instruction (one rounding, as PyTorch's vectorised
 * kernels compute add with alpha and addcmul, with Vectorized::fmadd) where hw, which only
 * the loops compiled for AVX-512 or for AVX2 and FMA pass; fma_f elsewhere. */
static inline __attribute__((always_inline)) float fma_r(const bool hw, float a, float b, float c) {
    return hw ? __builtin_fmaf(a, b, c) : fma_f(a, b, c);
}

typedef struct optim_slot {
    char *name;
    graft_tensor *value;
    const graft_tensor *grad;
    const bool *frozen;
    int group;
    double fold;             /* see graft_optim_param; 1 for ordinary parameters */
    int64_t n;
    int64_t steps;           /* state['step']; for SGD 0 also means "no momentum buffer yet" */
    graft_tensor buf;        /* SGD momentum_buffer, Adam exp_avg (empty when unused) */
    graft_tensor sq;         /* exp_avg_sq */
    graft_tensor sq_max;     /* max_exp_avg_sq (amsgrad) */
    bool sunk;               /* this step's update was applied as its gradient came (the fused
                                update, graft_optim_sink) */
} optim_slot;

typedef struct sink_state sink_state;

struct graft_optim {
    graft_optim_options o;
    double lr[GRAFT_OPTIM_MAX_GROUPS];
    size_t n;
    optim_slot *slots;
    sink_state *sinks;        /* [n], for graft_optim_sink (allocated by its first call) */
};

/* ---- options -------------------------------------------------------------------- */

graft_optim_options graft_optim_defaults(graft_optim_kind kind) {
    graft_optim_options o = {.kind = kind, .ngroups = 1};
    o.beta1 = ADAM_DEFAULT_BETA1;
    o.beta2 = ADAM_DEFAULT_BETA2;
    o.eps = ADAM_DEFAULT_EPS;
    double lr = kind == GRAFT_OPTIM_SGD ? SGD_DEFAULT_LR : ADAM_DEFAULT_LR;
    for (int g = 0; g < GRAFT_OPTIM_MAX_GROUPS; g++) o.lr[g] = lr;
    if (kind == GRAFT_OPTIM_ADAMW) o.weight_decay = ADAMW_DEFAULT_WEIGHT_DECAY;
    return o;
}

const char *graft_optim_kind_name(graft_optim_kind kind) {
    switch (kind) {
    case GRAFT_OPTIM_SGD: return "sgd";
    case GRAFT_OPTIM_ADAM: return "adam";
    case GRAFT_OPTIM_ADAMW: return "adamw";
    }
    return "?";
}

static int equal_nocase(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return 0;
    return *a == *b;
}

graft_status graft_optim_kind_parse(const char *name, graft_optim_kind *out) {
    static const graft_optim_kind kinds[] = {GRAFT_OPTIM_SGD, GRAFT_OPTIM_ADAM, GRAFT_OPTIM_ADAMW};
    for (size_t i = 0; name && i < sizeof kinds / sizeof kinds[0]; i++)
        if (equal_nocase(name, graft_optim_kind_name(kinds[i]))) {
            *out = kinds[i];
            return GRAFT_OK;
        }
    return graft_error(GRAFT_ERR_INVALID, "unknown optimizer '%s' (known: sgd, adam, adamw)", name ? name : "");
}

graft_status graft_optim_check(const graft_optim_options *o) {
    if (o->kind != GRAFT_OPTIM_SGD && o->kind != GRAFT_OPTIM_ADAM && o->kind != GRAFT_OPTIM_ADAMW)
        return graft_error(GRAFT_ERR_INVALID, "unknown optimizer kind %d", (int)o->kind);
    if (o->ngroups < 1 || o->ngroups > GRAFT_OPTIM_MAX_GROUPS)
        return graft_error(GRAFT_ERR_INVALID, "optimizer: %d parameter groups, expected 1 to %d", o->ngroups,
                           GRAFT_OPTIM_MAX_GROUPS);
    /* The messages are PyTorch's ValueError texts; `!(x >= 0)` also rejects NaN. */
    for (int g = 0; g < o->ngroups; g++)
        if (!(o->lr[g] >= 0) || isinf(o->lr[g]))
            return graft_error(GRAFT_ERR_INVALID, "Invalid learning rate: %g", o->lr[g]);
    if (!(o->weight_decay >= 0)) return graft_error(GRAFT_ERR_INVALID, "Invalid weight_decay value: %g", o->weight_decay);
    if (o->kind == GRAFT_OPTIM_SGD) {
        if (!(o->momentum >= 0)) return graft_error(GRAFT_ERR_INVALID, "Invalid momentum value: %g", o->momentum);
        if (isnan(o->dampening)) return graft_error(GRAFT_ERR_INVALID, "Invalid dampening value: %g", o->dampening);
        if (o->nesterov && (o->momentum <= 0 || o->dampening != 0))
            return graft_error(GRAFT_ERR_INVALID, "Nesterov momentum requires a momentum and zero dampening");
    } else {
        if (!(o->eps >= 0)) return graft_error(GRAFT_ERR_INVALID, "Invalid epsilon value: %g", o->eps);
        if (!(o->beta1 >= 0 && o->beta1 < 1))
            return graft_error(GRAFT_ERR_INVALID, "Invalid beta parameter at index 0: %g", o->beta1);
        if (!(o->beta2 >= 0 && o->beta2 < 1))
            return graft_error(GRAFT_ERR_INVALID, "Invalid beta parameter at index 1: %g", o->beta2);
    }
    return GRAFT_OK;
}

/* ---- creation --------------------------------------------------------------------- */

static void free_slots(optim_slot *slots, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(slots[i].name);
        graft_tensor_release(&slots[i].buf);
        graft_tensor_release(&slots[i].sq);
        graft_tensor_release(&slots[i].sq_max);
    }
    free(slots);
}

void graft_optim_free(graft_optim *opt) {
    if (!opt) return;
    free(opt->sinks);
    free_slots(opt->slots, opt->n);
    free(opt);
}

static bool uses_buf(const graft_optim_options *o) { return o->kind != GRAFT_OPTIM_SGD || o->momentum != 0; }
static bool uses_sq(const graft_optim_options *o) { return o->kind != GRAFT_OPTIM_SGD; }
static bool uses_sq_max(const graft_optim_options *o) { return o->kind != GRAFT_OPTIM_SGD && o->amsgrad; }

graft_status graft_optim_create(const graft_optim_options *o, size_t n, const graft_optim_param *params,
                                graft_optim **out) {
    *out = NULL;
    graft_status s = graft_optim_check(o);
    if (s) return s;
    for (size_t i = 0; i < n; i++) {
        const graft_optim_param *p = &params[i];
        if (!p->name || !p->value) return graft_error(GRAFT_ERR_INVALID, "optimizer: parameter %zu has no name or value", i);
        if (p->value->dtype != GRAFT_F32 || !p->value->data)
            return graft_error(GRAFT_ERR_INVALID, "optimizer: parameter %s is not a float32 tensor with data", p->name);
        if (p->group < 0 || p->group >= o->ngroups)
            return graft_error(GRAFT_ERR_INVALID, "optimizer: parameter %s is in group %d, but there are %d groups",
                               p->name, p->group, o->ngroups);
        for (size_t j = 0; j < i; j++)
            if (strcmp(params[j].name, p->name) == 0)
                return graft_error(GRAFT_ERR_INVALID, "optimizer: parameter %s is given twice", p->name);
    }
    graft_optim *opt = calloc(1, sizeof *opt);
    optim_slot *slots = calloc(n ? n : 1, sizeof *slots);
    if (!opt || !slots) {
        free(opt);
        free(slots);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory creating the optimizer");
    }
    opt->o = *o;
    for (int g = 0; g < GRAFT_OPTIM_MAX_GROUPS; g++) opt->lr[g] = o->lr[g];
    opt->slots = slots;
    for (size_t i = 0; i < n; i++) {
        const graft_optim_param *p = &params[i];
        optim_slot *sl = &slots[i];
        opt->n = i + 1; /* so a failure below frees what exists */
        graft_tensor_init(&sl->buf, GRAFT_F32);
        graft_tensor_init(&sl->sq, GRAFT_F32);
        graft_tensor_init(&sl->sq_max, GRAFT_F32);
        sl->value = p->value;
        sl->grad = p->grad;
        sl->frozen = p->frozen;
        sl->group = p->group;
        sl->fold = p->fold > 1 ? p->fold : 1.0;
        sl->n = graft_tensor_numel(p->value);
        const graft_tensor *v = p->value;
        if (!(sl->name = strdup(p->name))) s = graft_error(GRAFT_ERR_NOMEM, "out of memory creating the optimizer");
        if (!s && uses_buf(o)) s = graft_tensor_resize(&sl->buf, v->ndim, v->shape);
        if (!s && uses_sq(o)) s = graft_tensor_resize(&sl->sq, v->ndim, v->shape);
        if (!s && uses_sq_max(o)) s = graft_tensor_resize(&sl->sq_max, v->ndim, v->shape);
        if (s) {
            graft_optim_free(opt);
            return s;
        }
    }
    opt->n = n;
    *out = opt;
    return GRAFT_OK;
}

typedef struct model_params {
    graft_optim_param *list;
    size_t n, cap;
    const char *head;      /* NULL: one group */
    size_t head_len;
    bool failed;
} model_params;

static int collect_param(void *user, const char *name, graft_module *owner, graft_param *p, graft_buffer *b) {
    (void)owner;
    (void)b;
    model_params *mp = user;
    if (!p || p->frozen) return 0;
    if (mp->n == mp->cap) {
        size_t cap = mp->cap ? mp->cap * 2 : 32;
        graft_optim_param *l = realloc(mp->list, cap * sizeof *l);
        if (!l) return mp->failed = true;
        mp->list = l;
        mp->cap = cap;
    }
    /* "classifier.6.weight" is under "classifier.6"; "classifier.60.weight" is not. */
    bool in_head = mp->head && (mp->head_len == 0 ||
                                (strncmp(name, mp->head, mp->head_len) == 0 && name[mp->head_len] == '.'));
    char *copy = strdup(name);
    if (!copy) return mp->failed = true;
    mp->list[mp->n++] = (graft_optim_param){copy, &p->value, &p->grad, &p->frozen, in_head ? 1 : 0, 1.0};
    return 0;
}

graft_status graft_optim_create_for_model(graft_model *m, const graft_optim_options *o, const char *head_path,
                                          graft_optim **out) {
    *out = NULL;
    graft_module *root = graft_model_root(m);
    if (head_path) {
        if (o->ngroups < 2)
            return graft_error(GRAFT_ERR_INVALID, "optimizer: a head group needs 2 parameter groups, got %d", o->ngroups);
        if (!graft_module_find(root, head_path))
            return graft_error(GRAFT_ERR_NOTFOUND, "optimizer: no module named '%s' for the head group", head_path);
    }
    model_params mp = {.head = head_path, .head_len = head_path ? strlen(head_path) : 0};
    graft_module_visit_state(root, collect_param, &mp);
    graft_status s = mp.failed ? graft_error(GRAFT_ERR_NOMEM, "out of memory listing parameters")
                               : graft_optim_create(o, mp.n, mp.list, out);
    for (size_t i = 0; i < mp.n; i++) free((char *)mp.list[i].name);
    free(mp.list);
    return s;
}

/* ---- accessors ---------------------------------------------------------------------- */

graft_status graft_optim_set_lr(graft_optim *opt, int group, double lr) {
    if (group < 0 || group >= opt->o.ngroups)
        return graft_error(GRAFT_ERR_INVALID, "optimizer: no parameter group %d (there are %d)", group, opt->o.ngroups);
    if (!(lr >= 0) || isinf(lr)) return graft_error(GRAFT_ERR_INVALID, "Invalid learning rate: %g", lr);
    opt->lr[group] = lr;
    return GRAFT_OK;
}

double graft_optim_lr(const graft_optim *opt, int group) {
    return group >= 0 && group < opt->o.ngroups ? opt->lr[group] : NAN;
}

double graft_optim_base_lr(const graft_optim *opt, int group) {
    return group >= 0 && group < opt->o.ngroups ? opt->o.lr[group] : NAN;
}

graft_status graft_optim_apply_schedule(graft_optim *opt, const graft_schedule *s, int64_t t) {
    graft_status st = graft_schedule_check(s);
    if (st) return st;
    for (int g = 0; g < opt->o.ngroups; g++) {
        double lr = graft_schedule_lr(s, opt->o.lr[g], t);
        if ((st = graft_optim_set_lr(opt, g, lr))) return st;
    }
    return GRAFT_OK;
}

const graft_optim_options *graft_optim_get_options(const graft_optim *opt) { return &opt->o; }
size_t graft_optim_size(const graft_optim *opt) { return opt->n; }
float *graft_optim_state_buffer(graft_optim *opt, const char *name) {
    for (size_t i = 0; i < opt->n; i++)
        if (!strcmp(opt->slots[i].name, name)) return opt->slots[i].buf.data;
    return NULL;
}

const char *graft_optim_param_name(const graft_optim *opt, size_t i) { return i < opt->n ? opt->slots[i].name : NULL; }
int graft_optim_param_group(const graft_optim *opt, size_t i) { return i < opt->n ? opt->slots[i].group : -1; }
int64_t graft_optim_param_steps(const graft_optim *opt, size_t i) { return i < opt->n ? opt->slots[i].steps : -1; }

/* ---- updates ------------------------------------------------------------------------ */

/* Where sgd_momentum_subnormal (below) may compute subnormal momentum in integers. */
typedef struct subnormal_momentum {
    int64_t shift;   /* 150 - momentum's biased exponent, at most 49 */
    uint32_t sig;    /* momentum's significand with its leading bit */
    uint32_t c_sign; /* sign bit of 1 - dampening */
} subnormal_momentum;

/* The scalars of one update, already rounded the way PyTorch rounds them. */
typedef struct update {
    float *p;
    const float *g;
    float *buf, *sq, *sq_max;
    /* SGD */
    bool decay, use_momentum, first, nesterov;
    float wd, momentum, one_minus_dampening, neg_lr;
    /* Adam / AdamW */
    bool adamw, amsgrad;
    float beta1, one_minus_beta1, beta2, one_minus_beta2;
    float param_scale; /* AdamW: 1 - lr * weight_decay */
    float bc2_sqrt, eps, neg_step_size;
    /* SGD: whether subnormal momentum may take the integers, and their constants */
    bool subnormal_ints;
    subnormal_momentum sm;
} update;

/* _single_tensor_sgd on elements [begin, end) of one parameter.  The flags are
 * arguments so that each call below, with constants, compiles to a loop without
 * branches; the scalars are copied to locals so stores through p cannot alias them. */
static inline __attribute__((always_inline)) void sgd_loop(const update *u, int64_t begin, int64_t end,
                                                            const bool decay, const bool use_momentum,
                                                            const bool first, const bool nesterov, const bool hw) {
    float *restrict p = u->p, *restrict buf = u->buf;
    const float *restrict g = u->g;
    const float wd = u->wd, momentum = u->momentum, one_minus_dampening = u->one_minus_dampening, neg_lr = u->neg_lr;
    for (int64_t i = begin; i < end; i++) {
        float d = g[i];
        if (decay) d = fma_r(hw, p[i], wd, d);                      /* d_p = d_p.add(param, alpha=wd) */
        if (use_momentum) {
            float b = first ? d                                     /* buf = torch.clone(d_p) */
                            : fma_r(hw, d, one_minus_dampening, buf[i] * momentum); /* mul_, add_ */
            buf[i] = b;
            d = nesterov ? fma_r(hw, b, momentum, d) : b;
        }
        p[i] = fma_r(hw, d, neg_lr, p[i]);                          /* param.add_(d_p, alpha=-lr) */
    }
}

/* One version of the loops per flag combination, chosen per call. */
static inline __attribute__((always_inline)) void sgd_select(const update *u, int64_t b, int64_t e, const bool hw) {
    if (!u->use_momentum) {
        if (u->decay) sgd_loop(u, b, e, true, false, false, false, hw);
        else sgd_loop(u, b, e, false, false, false, false, hw);
    } else if (u->first) {
        sgd_loop(u, b, e, u->decay, true, true, u->nesterov, hw); /* once per run: no need to specialise */
    } else if (u->nesterov) {
        if (u->decay) sgd_loop(u, b, e, true, true, false, true, hw);
        else sgd_loop(u, b, e, false, true, false, true, hw);
    } else {
        if (u->decay) sgd_loop(u, b, e, true, true, false, false, hw);
        else sgd_loop(u, b, e, false, true, false, false, hw);
    }
}

/* _single_tensor_adam / _single_tensor_adamw (capturable=False) on [begin, end),
 * specialised like sgd_loop. */
static inline __attribute__((always_inline)) void adam_loop(const update *u, int64_t begin, int64_t end,
                                                             const bool adamw, const bool decay, const bool amsgrad,
                                                             const bool hw) {
    float *restrict p = u->p, *restrict m = u->buf, *restrict v = u->sq, *restrict vmax = u->sq_max;
    const float *restrict g = u->g;
    const float wd = u->wd, param_scale = u->param_scale, beta1 = u->beta1, one_minus_beta1 = u->one_minus_beta1,
                beta2 = u->beta2, one_minus_beta2 = u->one_minus_beta2, bc2_sqrt = u->bc2_sqrt, eps = u->eps,
                neg_step_size = u->neg_step_size;
    for (int64_t i = begin; i < end; i++) {
        float gi = g[i];
        float pi = p[i];
        if (adamw) pi *= param_scale;                               /* param.mul_(1 - lr * wd) */
        else if (decay) gi = fma_r(hw, pi, wd, gi);                 /* grad = grad.add(param, alpha=wd) */
        float mi = fma_r(hw, gi, one_minus_beta1, m[i] * beta1);    /* exp_avg.mul_(b1).add_(g, alpha=1-b1) */
        float vi = fma_r(hw, one_minus_beta2 * gi, gi, v[i] * beta2); /* exp_avg_sq.mul_(b2).addcmul_(g, g, 1-b2) */
        m[i] = mi;
        v[i] = vi;
        if (amsgrad) {
            /* torch.maximum propagates NaN from either side */
            float mx = vmax[i];
            if (mx < vi || isnan(vi)) mx = vi;
            vmax[i] = mx;
            vi = mx;
        }
        float denom = sqrtf(vi) / bc2_sqrt + eps;                   /* (sqrt / bc2_sqrt).add_(eps) */
        p[i] = pi + (neg_step_size * mi) / denom;                   /* param.addcdiv_(m, denom, -step_size) */
    }
}

static inline __attribute__((always_inline)) void adam_select(const update *u, int64_t b, int64_t e, const bool hw) {
    if (u->adamw) {
        if (u->amsgrad) adam_loop(u, b, e, true, false, true, hw);
        else adam_loop(u, b, e, true, false, false, hw);
    } else if (u->decay) {
        if (u->amsgrad) adam_loop(u, b, e, false, true, true, hw);
        else adam_loop(u, b, e, false, true, false, hw);
    } else {
        if (u->amsgrad) adam_loop(u, b, e, false, false, true, hw);
        else adam_loop(u, b, e, false, false, false, hw);
    }
}

/* The update loops are memory-bound at AVX-512's width but not at the baseline ISA's,
 * and fma_f's double arithmetic takes two lanes per float: where the CPU has AVX-512 they
 * run as a version compiled for it with the hardware's fused multiply-add (zmm, one
 * rounding per fma), elsewhere as the baseline build with fma_f.  The two round alike
 * but where fma_f's double sum lands on a float tie (within one ulp); a machine always
 * takes the same version.  Measured on the recipe's fused update of classifier.3 (64 MB
 * of weights, momentum and weight decay): the double version was about 60% of the update
 * pass's time, its arithmetic not hidden behind the memory traffic. */
static void sgd_range_base(void *arg, int64_t b, int64_t e) { sgd_select(arg, b, e, false); }
static void adam_range_base(void *arg, int64_t b, int64_t e) { adam_select(arg, b, e, false); }
#if GRAFT_HAVE_AVX512_BUILD
#define HW_FMA 1
#define AVX512_FN __attribute__((target("avx512f")))

/* Subnormal momentum.  A unit that stops receiving gradient (a ReLU that never fires) keeps
 * a momentum that shrinks by `momentum` every step and spends ~150 steps among the
 * subnormal floats before it reaches zero; Intel cores multiply subnormals through a
 * microcode assist of ~100+ cycles.  In the recipe's head, on random labels, 1.8% of
 * classifier.3's momentum was subnormal after four epochs, and the SGD loop's share of a
 * step grew from 23% to 40% (epochs 36.8, 40.1, 43.9, 47.1 s).  PyTorch computes the same
 * subnormals (it does not flush them by default), so they are computed here too, but in
 * integers for the lanes where it is exact and cheap: no weight decay, the gradient +-0,
 * 0 <= momentum < 1 and the weight at least 2^-60 in magnitude.  There
 *   t = buf * momentum is buf's integer significand k times momentum's 24-bit significand,
 *     shifted right and rounded to nearest, ties to even (subnormals are k * 2^-149, and
 *     t is again subnormal or zero), with buf's sign;
 *   buf' = fma(d, 1 - dampening, t) = (+-0) + t: t, or where t is a zero, a zero that is
 *     negative only if both addends are;
 *   param' = fma(buf', -lr, param) = param: |buf' * lr| < 2^-126 * 2^40, below half an ulp
 *     of any param of at least 2^-60 (lr < 2^40 is checked), so the sum rounds back.
 * Every other lane of a vector that holds a subnormal is computed as usual, with the
 * subnormal lanes zeroed first; a vector whose subnormal lanes miss any condition takes
 * the plain loop (the assists).  tests/unit/test_optim.c compares the bits with the plain
 * loop. */
/* round(k * sig / 2^shift), ties to even, for the 64-bit lanes of prod = k * sig. */
AVX512_FN static inline __m512i round_shifted(__m512i prod, const subnormal_momentum *sm) {
    __m128i count = _mm_cvtsi64_si128(sm->shift);
    __m512i q = _mm512_srl_epi64(prod, count);
    __mmask8 half = _mm512_test_epi64_mask(prod, _mm512_set1_epi64((long long)(1ull << (sm->shift - 1))));
    __mmask8 below = _mm512_test_epi64_mask(prod, _mm512_set1_epi64((long long)((1ull << (sm->shift - 1)) - 1)));
    __mmask8 odd = _mm512_test_epi64_mask(q, _mm512_set1_epi64(1));
    return _mm512_mask_add_epi64(q, half & (below | odd), q, _mm512_set1_epi64(1));
}

AVX512_FN static void sgd_momentum_subnormal(const update *u, int64_t begin, int64_t end) {
    const subnormal_momentum *sm = &u->sm;
    float *restrict p = u->p, *restrict buf = u->buf;
    const float *restrict g = u->g;
    const __m512 mom = _mm512_set1_ps(u->momentum), c = _mm512_set1_ps(u->one_minus_dampening),
                 neg_lr = _mm512_set1_ps(u->neg_lr), zero = _mm512_setzero_ps(), tiny = _mm512_set1_ps(0x1p-60f);
    const __m512i expo = _mm512_set1_epi32(0x7f800000), frac = _mm512_set1_epi32(0x7fffff),
                  sign = _mm512_set1_epi32((int)0x80000000u), sig = _mm512_set1_epi64(sm->sig);
    for (int64_t i = begin; i < end; i += 16) {
        __mmask16 k = end - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (end - i)) - 1u);
        __m512 gv = _mm512_maskz_loadu_ps(k, g + i), bv = _mm512_maskz_loadu_ps(k, buf + i),
               pv = _mm512_maskz_loadu_ps(k, p + i);
        __m512i bb = _mm512_castps_si512(bv);
        __mmask16 sub = _mm512_mask_test_epi32_mask(_mm512_testn_epi32_mask(bb, expo), bb, frac);
        __mmask16 easy = _mm512_cmp_ps_mask(gv, zero, _CMP_EQ_OQ) &
                         _mm512_cmp_ps_mask(_mm512_abs_ps(pv), tiny, _CMP_GE_OQ);
        if (sub & ~easy) { /* a lane the integers do not cover: the plain loop, assists and all */
            sgd_loop(u, i, i + 16 < end ? i + 16 : end, false, true, false, false, true);
            continue;
        }
        __m512 bs = _mm512_mask_blend_ps(sub, bv, zero);
        __m512 nb = _mm512_fmadd_ps(gv, c, _mm512_mul_ps(bs, mom));
        __m512 np = _mm512_fmadd_ps(nb, neg_lr, pv);
        if (sub) {
            __m512i kk = _mm512_and_si512(bb, frac);
            __m512i even = round_shifted(_mm512_mul_epu32(kk, sig), sm);
            __m512i odd = round_shifted(_mm512_mul_epu32(_mm512_srli_epi64(kk, 32), sig), sm);
            __m512i q = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
            __m512i t_sign = _mm512_and_si512(bb, sign);
            __m512i g_sign = _mm512_and_si512(_mm512_castps_si512(gv), sign);
            /* t, or a zero: -0 only when t is -0 and the product d * (1 - dampening) is -0 */
            __m512i zero_bits = _mm512_and_si512(t_sign, _mm512_xor_si512(g_sign, _mm512_set1_epi32((int)sm->c_sign)));
            __mmask16 nonzero = _mm512_test_epi32_mask(q, q);
            __m512i nb_bits = _mm512_mask_blend_epi32(nonzero, zero_bits, _mm512_or_si512(q, t_sign));
            nb = _mm512_mask_blend_ps(sub, nb, _mm512_castsi512_ps(nb_bits));
            np = _mm512_mask_blend_ps(sub, np, pv);
        }
        _mm512_mask_storeu_ps(buf + i, k, nb);
        _mm512_mask_storeu_ps(p + i, k, np);
    }
}

AVX512_FN static void sgd_range_fma(void *arg, int64_t b, int64_t e) {
    const update *u = arg;
    if (u->subnormal_ints) sgd_momentum_subnormal(u, b, e);
    else sgd_select(u, b, e, true);
}
AVX512_FN static void adam_range_fma(void *arg, int64_t b, int64_t e) {
    adam_select(arg, b, e, true);
}
#else
#define HW_FMA 0
#endif

#if GRAFT_HAVE_AVX2_BUILD
/* Where the CPU has AVX2 and FMA but not AVX-512: the same loops compiled for AVX2 with
 * the hardware's fused multiply-add (ymm, one rounding per fma, so the same bits as the
 * AVX-512 version).  On a Zen 3 the baseline version had 8.9% of the samples in a profile
 * of a short recipe run (6 epochs of 2,000 images). */
#define AVX2_FN __attribute__((target("avx2,fma")))
AVX2_FN static void sgd_range_avx2(void *arg, int64_t b, int64_t e) { sgd_select(arg, b, e, true); }
AVX2_FN static void adam_range_avx2(void *arg, int64_t b, int64_t e) { adam_select(arg, b, e, true); }
#endif

static bool slot_active(const optim_slot *sl) {
    return !(sl->frozen && *sl->frozen) && sl->grad && sl->grad->data;
}

/* The loop that updates elements [b, e) of one parameter for this optimiser's kind. */
static void (*update_range(const graft_optim *opt))(void *, int64_t, int64_t) {
#if HW_FMA
    if (graft_cpu_avx512f()) return opt->o.kind == GRAFT_OPTIM_SGD ? sgd_range_fma : adam_range_fma;
#endif
#if GRAFT_HAVE_AVX2_BUILD
    if (graft_cpu_avx2()) return opt->o.kind == GRAFT_OPTIM_SGD ? sgd_range_avx2 : adam_range_avx2;
#endif
    return opt->o.kind == GRAFT_OPTIM_SGD ? sgd_range_base : adam_range_base;
}

static bool subnormal_momentum_applies(const update *u, subnormal_momentum *sm) {
    uint32_t mb, cb;
    memcpy(&mb, &u->momentum, sizeof mb);
    memcpy(&cb, &u->one_minus_dampening, sizeof cb);
    uint32_t e = (mb >> 23) & 0xff;
    if (!u->use_momentum || u->first || u->nesterov || u->decay || e == 0 || e >= 127 || (mb >> 31) ||
        !isfinite(u->one_minus_dampening) || !(fabsf(u->neg_lr) < 0x1p40f))
        return false;
    sm->shift = 150 - (int64_t)e > 49 ? 49 : 150 - (int64_t)e;
    sm->sig = (mb & 0x7fffffu) | 0x800000u;
    sm->c_sign = cb & 0x80000000u;
    return true;
}

/* The scalars of slot sl's update at this step (counting the step), with g as its
 * gradient. */
static void prepare_update(graft_optim *opt, optim_slot *sl, const float *g, update *u) {
    const graft_optim_options *o = &opt->o;
    double lr = opt->lr[sl->group];
    *u = (update){.p = sl->value->data, .g = g, .buf = sl->buf.data, .sq = sl->sq.data, .sq_max = sl->sq_max.data};
    u->decay = o->weight_decay != 0;
    u->wd = (float)o->weight_decay;
    if (o->kind == GRAFT_OPTIM_SGD) {
        u->use_momentum = o->momentum != 0;
        u->first = sl->steps == 0;
        u->nesterov = o->nesterov != 0;
        u->momentum = (float)o->momentum;
        u->one_minus_dampening = (float)(1 - o->dampening);
        u->neg_lr = (float)-lr;
        u->subnormal_ints = subnormal_momentum_applies(u, &u->sm);
        sl->steps++;
    } else {
        sl->steps++; /* step_t += 1 comes first */
        double step = (double)sl->steps;
        double bias_correction1 = 1 - pow(o->beta1, step);
        double bias_correction2 = 1 - pow(o->beta2, step);
        double step_size = lr * sl->fold / bias_correction1; /* fold: the replicas' steps, summed */
        u->adamw = o->kind == GRAFT_OPTIM_ADAMW;
        u->amsgrad = o->amsgrad != 0;
        u->beta1 = (float)o->beta1;
        u->one_minus_beta1 = (float)(1 - o->beta1);
        u->beta2 = (float)o->beta2;
        u->one_minus_beta2 = (float)(1 - o->beta2);
        u->param_scale = (float)(1 - lr * o->weight_decay);
        u->bc2_sqrt = (float)sqrt(bias_correction2);
        u->eps = (float)o->eps;
        u->neg_step_size = (float)-step_size;
    }
}

graft_status graft_optim_step(graft_optim *opt) {
    const graft_optim_options *o = &opt->o;
    for (size_t i = 0; i < opt->n; i++) {
        const optim_slot *sl = &opt->slots[i];
        if (sl->sunk || !slot_active(sl)) continue;
        if (sl->grad->dtype != GRAFT_F32 || graft_tensor_numel(sl->grad) != sl->n || graft_tensor_numel(sl->value) != sl->n)
            return graft_error(GRAFT_ERR_SHAPE, "optimizer: the gradient of %s does not match its %lld elements",
                               sl->name, (long long)sl->n);
    }
    for (size_t i = 0; i < opt->n; i++) {
        optim_slot *sl = &opt->slots[i];
        if (sl->sunk) { /* applied during the backward */
            sl->sunk = false;
            continue;
        }
        if (!slot_active(sl)) continue;
        if (sl->fold != 1.0 && o->kind == GRAFT_OPTIM_SGD) {
            /* the sum of `fold` replicas that each received this gradient */
            float *g = sl->grad->data, f = (float)sl->fold;
            for (int64_t j = 0; j < sl->n; j++) g[j] *= f;
        }
        update u;
        prepare_update(opt, sl, sl->grad->data, &u);
        graft_parallel_for(sl->n, OPTIM_MIN_CHUNK, update_range(opt), &u);
    }
    return GRAFT_OK;
}

/* ---- the fused update ------------------------------------------------------------------ */

/* One parameter's sink: the update sink_begin prepares at each step, kept for the
 * pieces. */
struct sink_state {
    graft_grad_sink sink;
    graft_optim *opt;
    optim_slot *slot;
    update u;
};

static void sink_begin(void *user) {
    sink_state *st = user;
    prepare_update(st->opt, st->slot, NULL, &st->u);
    st->slot->sunk = true;
}

/* Elements [begin, end) of the parameter with gradient g [0, end - begin): the same
 * loops as graft_optim_step, on this range, in the calling (pool) thread (a folded
 * parameter under SGD scales its gradient first, in place, as that step does).  Where
 * the kernel says where its next range begins, the range is updated SINK_PREFETCH
 * elements at a time, each part first prefetching the same part of the next range in
 * the parameter and its state: the recipe's kernel passes runs of 4 KiB, one page each,
 * where the hardware's prefetcher stops, and the loops waited on memory at the start of
 * every run (4096 x 4096 with a quarter of dy nonzero, the weight gradient and SGD
 * update: 14.2 -> 13.1 ms; docs/performance.md). */
#define SINK_PREFETCH 128

static void sink_piece(void *user, int64_t begin, int64_t end, int64_t next, float *g) {
    const sink_state *st = user;
    if (st->slot->fold != 1.0 && st->opt->o.kind == GRAFT_OPTIM_SGD) {
        float f = (float)st->slot->fold;
        for (int64_t j = 0; j < end - begin; j++) g[j] *= f;
    }
    update u = st->u;
    u.p += begin;
    u.g = g;
    if (u.buf) u.buf += begin;
    if (u.sq) u.sq += begin;
    if (u.sq_max) u.sq_max += begin;
    void (*range)(void *, int64_t, int64_t) = update_range(st->opt);
    if (next < 0 || next + (end - begin) > st->slot->n) {
        range(&u, 0, end - begin);
        return;
    }
    const float *ahead[4] = {st->u.p + next, st->u.buf ? st->u.buf + next : NULL, st->u.sq ? st->u.sq + next : NULL,
                             st->u.sq_max ? st->u.sq_max + next : NULL};
    for (int64_t c = 0; c < end - begin; c += SINK_PREFETCH) {
        int64_t ce = end - begin - c < SINK_PREFETCH ? end - begin : c + SINK_PREFETCH;
        for (int a = 0; a < 4; a++)
            if (ahead[a])
                for (int64_t i = c; i < ce; i += 64 / (int64_t)sizeof(float)) /* a cache line */
                    __builtin_prefetch(ahead[a] + i, 1, 3);
        range(&u, c, ce);
    }
}

graft_status graft_optim_sink(graft_optim *opt, const graft_tensor *value, const graft_grad_sink **sink) {
    *sink = NULL;
    size_t i = 0;
    while (i < opt->n && opt->slots[i].value != value) i++;
    if (i == opt->n) return graft_error(GRAFT_ERR_NOTFOUND, "optimizer: no such parameter for a fused update");
    if (!opt->sinks && !(opt->sinks = calloc(opt->n, sizeof *opt->sinks)))
        return graft_error(GRAFT_ERR_NOMEM, "out of memory for the optimizer's fused updates");
    sink_state *st = &opt->sinks[i];
    *st = (sink_state){.sink = {sink_begin, sink_piece, st}, .opt = opt, .slot = &opt->slots[i]};
    *sink = &st->sink;
    return GRAFT_OK;
}

static int fuse_linear(void *user, const char *name, graft_module *owner, graft_param *p, graft_buffer *b) {
    (void)name, (void)b;
    if (!p || p->frozen || !graft_module_is(owner, "Linear") || p != &owner->params[0]) return 0;
    const graft_grad_sink *sink;
    if (graft_optim_sink(user, &p->value, &sink) == GRAFT_OK) p->sink = sink;
    return 0;
}

void graft_optim_fuse_linear(graft_optim *opt, graft_model *m) {
    graft_module_visit_state(graft_model_root(m), fuse_linear, opt);
}

/* ---- state export / import ------------------------------------------------------------ */

enum { KEY_STEP, KEY_BUF, KEY_SQ, KEY_SQ_MAX, NKEYS };

static const char *key_name(const graft_optim_options *o, int k) {
    switch (k) {
    case KEY_STEP: return "step";
    case KEY_BUF: return o->kind == GRAFT_OPTIM_SGD ? "momentum_buffer" : "exp_avg";
    case KEY_SQ: return "exp_avg_sq";
    case KEY_SQ_MAX: return "max_exp_avg_sq";
    }
    return "?";
}

static bool key_used(const graft_optim_options *o, int k) {
    switch (k) {
    case KEY_STEP: return true;
    case KEY_BUF: return uses_buf(o);
    case KEY_SQ: return uses_sq(o);
    case KEY_SQ_MAX: return uses_sq_max(o);
    }
    return false;
}

static graft_tensor *slot_tensor(optim_slot *sl, int k) {
    return k == KEY_BUF ? &sl->buf : k == KEY_SQ ? &sl->sq : k == KEY_SQ_MAX ? &sl->sq_max : NULL;
}

static graft_status entry_name(char *buf, size_t size, const char *prefix, const char *param, const char *key) {
    int len = snprintf(buf, size, "%s%s.%s", prefix, param, key);
    if (len < 0 || (size_t)len >= size) return graft_error(GRAFT_ERR_INVALID, "optimizer: state name too long for %s", param);
    return GRAFT_OK;
}

#define NAME_BYTES 512

/* "<prefix>kind": the metadata key naming the optimizer kind. */
static graft_status kind_meta_name(char *buf, size_t size, const char *prefix) {
    int len = snprintf(buf, size, "%skind", prefix);
    if (len < 0 || (size_t)len >= size) return graft_error(GRAFT_ERR_INVALID, "optimizer: state prefix too long");
    return GRAFT_OK;
}

graft_status graft_optim_state_export(const graft_optim *opt, const char *prefix, graft_tensor_map *map) {
    if (!prefix) prefix = "";
    char name[NAME_BYTES];
    graft_status s = kind_meta_name(name, sizeof name, prefix);
    if (s) return s;
    if ((s = graft_tensor_map_set_meta(map, name, graft_optim_kind_name(opt->o.kind)))) return s;
    for (size_t i = 0; i < opt->n; i++) {
        optim_slot *sl = &opt->slots[i];
        for (int k = 0; k < NKEYS; k++) {
            if (!key_used(&opt->o, k)) continue;
            if ((s = entry_name(name, sizeof name, prefix, sl->name, key_name(&opt->o, k)))) return s;
            if (k == KEY_STEP) {
                graft_tensor *t;
                if ((s = graft_tensor_create(GRAFT_I64, 0, NULL, &t))) return s;
                graft_tensor_i64(t)[0] = sl->steps;
                s = graft_tensor_map_put(map, name, t);
            } else {
                s = graft_tensor_map_put_copy(map, name, slot_tensor(sl, k));
            }
            if (s) return s;
        }
    }
    return GRAFT_OK;
}

graft_status graft_optim_state_import(graft_optim *opt, const char *prefix, const graft_tensor_map *map) {
    if (!prefix) prefix = "";
    const graft_optim_options *o = &opt->o;
    char name[NAME_BYTES];
    graft_status s = kind_meta_name(name, sizeof name, prefix);
    if (s) return s;
    const char *kind = graft_tensor_map_get_meta(map, name);
    if (kind && strcmp(kind, graft_optim_kind_name(o->kind)) != 0)
        return graft_error(GRAFT_ERR_INVALID, "optimizer state is for %s, but the optimizer is %s", kind,
                           graft_optim_kind_name(o->kind));
    /* Validate everything before touching the state. */
    size_t expected = 0;
    for (size_t i = 0; i < opt->n; i++) {
        optim_slot *sl = &opt->slots[i];
        for (int k = 0; k < NKEYS; k++) {
            if (!key_used(o, k)) continue;
            expected++;
            if ((s = entry_name(name, sizeof name, prefix, sl->name, key_name(o, k)))) return s;
            graft_tensor *t = graft_tensor_map_get(map, name);
            if (!t) return graft_error(GRAFT_ERR_NOTFOUND, "optimizer state: missing %s", name);
            if (k == KEY_STEP) {
                if (t->dtype != GRAFT_I64 || graft_tensor_numel(t) != 1 || graft_tensor_i64(t)[0] < 0)
                    return graft_error(GRAFT_ERR_FORMAT, "optimizer state: %s must be one non-negative int64", name);
            } else if (t->dtype != GRAFT_F32 || !graft_tensor_same_shape(t, slot_tensor(sl, k))) {
                char ts[96], ps[96];
                graft_shape_str(t->ndim, t->shape, ts, sizeof ts);
                graft_shape_str(sl->value->ndim, sl->value->shape, ps, sizeof ps);
                return graft_error(GRAFT_ERR_SHAPE, "optimizer state: %s is %s %s, the parameter is float32 %s", name,
                                   t->dtype == GRAFT_F32 ? "float32" : "int64", ts, ps);
            }
        }
    }
    size_t plen = strlen(prefix), with_prefix = 0;
    for (size_t i = 0; i < graft_tensor_map_size(map); i++)
        if (strncmp(graft_tensor_map_name(map, i), prefix, plen) == 0) with_prefix++;
    if (with_prefix != expected) {
        /* Name one entry that is not ours. */
        for (size_t i = 0; i < graft_tensor_map_size(map); i++) {
            const char *e = graft_tensor_map_name(map, i);
            if (strncmp(e, prefix, plen) != 0) continue;
            bool ours = false;
            for (size_t j = 0; j < opt->n && !ours; j++)
                for (int k = 0; k < NKEYS && !ours; k++)
                    ours = key_used(o, k) && !entry_name(name, sizeof name, prefix, opt->slots[j].name, key_name(o, k)) &&
                           strcmp(name, e) == 0;
            if (!ours) return graft_error(GRAFT_ERR_NOTFOUND, "optimizer state: unexpected entry %s", e);
        }
    }
    for (size_t i = 0; i < opt->n; i++) {
        optim_slot *sl = &opt->slots[i];
        for (int k = 0; k < NKEYS; k++) {
            if (!key_used(o, k)) continue;
            entry_name(name, sizeof name, prefix, sl->name, key_name(o, k));
            graft_tensor *t = graft_tensor_map_get(map, name);
            if (k == KEY_STEP) sl->steps = graft_tensor_i64(t)[0];
            else graft_tensor_copy_data(slot_tensor(sl, k), t);
        }
    }
    return GRAFT_OK;
}
