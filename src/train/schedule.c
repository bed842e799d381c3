/* schedule.c — learning-rate schedules (closed forms of torch.optim.lr_scheduler). */
#include "train/schedule.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

/* math.pi; M_PI is not part of C11. */
static const double PI = 3.141592653589793238462643383279502884;

/* LinearLR's default start_factor in PyTorch 1.13. */
static const double LINEARLR_DEFAULT_START = 1.0 / 3;
/* StepLR's default gamma. */
static const double STEPLR_DEFAULT_GAMMA = 0.1;

graft_schedule graft_schedule_defaults(void) {
    return (graft_schedule){.kind = GRAFT_SCHEDULE_CONSTANT,
                            .step_size = 1,
                            .gamma = STEPLR_DEFAULT_GAMMA,
                            .t_max = 1,
                            .eta_min = 0,
                            .warmup = 0,
                            .warmup_factor = LINEARLR_DEFAULT_START};
}

static const char *kind_name(graft_schedule_kind k) {
    switch (k) {
    case GRAFT_SCHEDULE_CONSTANT: return "constant";
    case GRAFT_SCHEDULE_STEP: return "step";
    case GRAFT_SCHEDULE_COSINE: return "cosine";
    }
    return "?";
}

graft_status graft_schedule_check(const graft_schedule *s) {
    if (s->kind != GRAFT_SCHEDULE_CONSTANT && s->kind != GRAFT_SCHEDULE_STEP && s->kind != GRAFT_SCHEDULE_COSINE)
        return graft_error(GRAFT_ERR_INVALID, "unknown learning-rate schedule kind %d", (int)s->kind);
    if (s->kind == GRAFT_SCHEDULE_STEP) {
        if (s->step_size < 1)
            return graft_error(GRAFT_ERR_INVALID, "step schedule: step_size must be >= 1, got %lld",
                               (long long)s->step_size);
        if (!(s->gamma >= 0 && isfinite(s->gamma)))
            return graft_error(GRAFT_ERR_INVALID, "step schedule: gamma must be finite and >= 0, got %g", s->gamma);
    }
    if (s->kind == GRAFT_SCHEDULE_COSINE) {
        if (s->t_max < 1)
            return graft_error(GRAFT_ERR_INVALID, "cosine schedule: t_max must be >= 1, got %lld", (long long)s->t_max);
        if (!(s->eta_min >= 0 && isfinite(s->eta_min)))
            return graft_error(GRAFT_ERR_INVALID, "cosine schedule: eta_min must be finite and >= 0, got %g",
                               s->eta_min);
    }
    if (s->warmup < 0)
        return graft_error(GRAFT_ERR_INVALID, "warm-up length must be >= 0, got %lld", (long long)s->warmup);
    /* LinearLR's own rule: "Starting multiplicative factor expected to be between 0 and 1." */
    if (!(s->warmup_factor >= 0 && s->warmup_factor <= 1))
        return graft_error(GRAFT_ERR_INVALID, "warm-up start factor must be between 0 and 1, got %g", s->warmup_factor);
    return GRAFT_OK;
}

/* The main schedule at t >= 0, each line the _get_closed_form_lr of its PyTorch class. */
static double main_lr(const graft_schedule *s, double base, int64_t t) {
    switch (s->kind) {
    case GRAFT_SCHEDULE_CONSTANT: return base;
    case GRAFT_SCHEDULE_STEP: return base * pow(s->gamma, (double)(t / s->step_size));
    case GRAFT_SCHEDULE_COSINE:
        return s->eta_min + (base - s->eta_min) * (1 + cos(PI * (double)t / (double)s->t_max)) / 2;
    }
    return base;
}

double graft_schedule_lr(const graft_schedule *s, double base_lr, int64_t t) {
    if (t < 0) t = 0;
    if (t < s->warmup) {
        /* LinearLR with end_factor 1: start + (end - start) * min(total, t) / total */
        double f = s->warmup_factor + (1.0 - s->warmup_factor) * (double)t / (double)s->warmup;
        return base_lr * f;
    }
    return main_lr(s, base_lr, t - s->warmup);
}

/* ---- spec strings ------------------------------------------------------------- */

static graft_status parse_double(const char *key, const char *v, size_t len, double *out) {
    char tmp[64];
    if (len == 0 || len >= sizeof tmp) return graft_error(GRAFT_ERR_INVALID, "schedule: bad value for %s", key);
    memcpy(tmp, v, len);
    tmp[len] = 0;
    char *end;
    errno = 0;
    double d = strtod(tmp, &end);
    if (*end || errno == ERANGE || !isfinite(d))
        return graft_error(GRAFT_ERR_INVALID, "schedule: %s expects a number, got '%s'", key, tmp);
    *out = d;
    return GRAFT_OK;
}

static graft_status parse_int(const char *key, const char *v, size_t len, int64_t *out) {
    char tmp[32];
    if (len == 0 || len >= sizeof tmp) return graft_error(GRAFT_ERR_INVALID, "schedule: bad value for %s", key);
    memcpy(tmp, v, len);
    tmp[len] = 0;
    char *end;
    errno = 0;
    long long x = strtoll(tmp, &end, 10);
    if (*end || errno == ERANGE)
        return graft_error(GRAFT_ERR_INVALID, "schedule: %s expects an integer, got '%s'", key, tmp);
    *out = (int64_t)x;
    return GRAFT_OK;
}

graft_status graft_schedule_parse(const char *spec, graft_schedule *out) {
    if (!spec) return graft_error(GRAFT_ERR_INVALID, "schedule: no spec given");
    graft_schedule s = graft_schedule_defaults();
    const char *colon = strchr(spec, ':');
    size_t klen = colon ? (size_t)(colon - spec) : strlen(spec);
    static const graft_schedule_kind kinds[] = {GRAFT_SCHEDULE_CONSTANT, GRAFT_SCHEDULE_STEP, GRAFT_SCHEDULE_COSINE};
    int found = 0;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        const char *name = kind_name(kinds[i]);
        if (strlen(name) == klen && strncmp(spec, name, klen) == 0) {
            s.kind = kinds[i];
            found = 1;
        }
    }
    if (!found)
        return graft_error(GRAFT_ERR_INVALID, "unknown schedule '%.*s' (known: constant, step, cosine)", (int)klen, spec);
    const char *p = colon ? colon + 1 : NULL;
    while (p && *p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        if (!eq) return graft_error(GRAFT_ERR_INVALID, "schedule: expected KEY=VALUE, got '%.*s'", (int)len, p);
        size_t kl = (size_t)(eq - p);
        const char *v = eq + 1;
        size_t vl = len - kl - 1;
        graft_status st;
#define KEY_IS(name) (kl == strlen(name) && strncmp(p, name, kl) == 0)
        if (KEY_IS("step_size")) st = parse_int("step_size", v, vl, &s.step_size);
        else if (KEY_IS("gamma")) st = parse_double("gamma", v, vl, &s.gamma);
        else if (KEY_IS("t_max")) st = parse_int("t_max", v, vl, &s.t_max);
        else if (KEY_IS("eta_min")) st = parse_double("eta_min", v, vl, &s.eta_min);
        else if (KEY_IS("warmup")) st = parse_int("warmup", v, vl, &s.warmup);
        else if (KEY_IS("warmup_factor")) st = parse_double("warmup_factor", v, vl, &s.warmup_factor);
        else
            return graft_error(GRAFT_ERR_INVALID,
                               "schedule: unknown key '%.*s' (known: step_size, gamma, t_max, eta_min, warmup, warmup_factor)",
                               (int)kl, p);
#undef KEY_IS
        if (st) return st;
        p = comma ? comma + 1 : NULL;
    }
    graft_status st = graft_schedule_check(&s);
    if (st) return st;
    *out = s;
    return GRAFT_OK;
}

int graft_schedule_format(const graft_schedule *s, char *buf, size_t size) {
    /* %.17g round-trips every double exactly through strtod. */
    char main_part[128] = "";
    if (s->kind == GRAFT_SCHEDULE_STEP)
        snprintf(main_part, sizeof main_part, ":step_size=%lld,gamma=%.17g", (long long)s->step_size, s->gamma);
    else if (s->kind == GRAFT_SCHEDULE_COSINE)
        snprintf(main_part, sizeof main_part, ":t_max=%lld,eta_min=%.17g", (long long)s->t_max, s->eta_min);
    if (s->warmup > 0)
        return snprintf(buf, size, "%s%s%swarmup=%lld,warmup_factor=%.17g", kind_name(s->kind), main_part,
                        main_part[0] ? "," : ":", (long long)s->warmup, s->warmup_factor);
    return snprintf(buf, size, "%s%s", kind_name(s->kind), main_part);
}
