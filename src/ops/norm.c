/* norm.c — BatchNorm2d.
 *
 * Statistics are per channel over the n * hw values of that channel.  Train mode
 * normalises with the batch mean and the biased variance (divide by count) and
 * moves the running statistics towards the batch ones, the running variance using the
 * unbiased estimate (divide by count - 1), as torch.nn.BatchNorm2d does:
 *     running = (1 - momentum) * running + momentum * batch.
 * Eval mode normalises with the running statistics.
 *
 * The fast path accumulates every per-channel sum in double (a channel can hold
 * 64 * 112 * 112 values, too many for a float sum) and applies per-channel
 * coefficients in float.  Work is split over channels, so each channel's sums are
 * formed by one thread in a fixed order and results do not depend on the thread count.
 *
 * gamma and beta may be NULL (affine=False: 1 and 0); running_mean and running_var may
 * be NULL in train mode (track_running_stats=False: nothing to update).  A channel of
 * a single value (count 1) is invalid in train mode; the layer reports it, and here
 * the division by count - 1 is guarded so nothing turns into inf or NaN. */
#include <math.h>

#include "core/threads.h"
#include "ops/ops.h"

/* Channels per thread at least: one channel is already n * hw values of work. */
#define BN_MIN_CHANNELS 1

typedef struct bn_args {
    int64_t n, c, hw;
    double eps, momentum;
    const float *x, *gamma, *beta, *dy;
    const float *mean, *var;   /* running statistics (eval) */
    const float *save_mean, *save_invstd;
    float *running_mean, *running_var;
    float *y, *dx, *dgamma, *dbeta;
    float *out_mean, *out_invstd;
} bn_args;

static double gamma_at(const float *gamma, int64_t ch) { return gamma ? (double)gamma[ch] : 1.0; }
static double beta_at(const float *beta, int64_t ch) { return beta ? (double)beta[ch] : 0.0; }

/* y = (x - mean) * scale + shift over one channel of x [n, c, hw] */
static void bn_apply(const bn_args *a, int64_t ch, float mean, float scale, float shift) {
    for (int64_t i = 0; i < a->n; i++) {
        const float *xp = a->x + (i * a->c + ch) * a->hw;
        float *yp = a->y + (i * a->c + ch) * a->hw;
        for (int64_t k = 0; k < a->hw; k++) yp[k] = (xp[k] - mean) * scale + shift;
    }
}

/* ---- train ---------------------------------------------------------------- */

static void bn_forward_train_channels(void *arg, int64_t begin, int64_t end) {
    const bn_args *a = arg;
    const int64_t count = a->n * a->hw;
    for (int64_t ch = begin; ch < end; ch++) {
        double sum = 0.0;
        for (int64_t i = 0; i < a->n; i++) {
            const float *xp = a->x + (i * a->c + ch) * a->hw;
            for (int64_t k = 0; k < a->hw; k++) sum += xp[k];
        }
        double mean = count > 0 ? sum / (double)count : 0.0;
        double sq = 0.0; /* second pass: no cancellation from E[x^2] - E[x]^2 */
        for (int64_t i = 0; i < a->n; i++) {
            const float *xp = a->x + (i * a->c + ch) * a->hw;
            for (int64_t k = 0; k < a->hw; k++) {
                double d = (double)xp[k] - mean;
                sq += d * d;
            }
        }
        double var = count > 0 ? sq / (double)count : 0.0;
        double invstd = 1.0 / sqrt(var + a->eps);
        a->out_mean[ch] = (float)mean;
        a->out_invstd[ch] = (float)invstd;
        double m = a->momentum;
        if (a->running_mean)
            a->running_mean[ch] = (float)(m * mean + (1.0 - m) * (double)a->running_mean[ch]);
        if (a->running_var) {
            double unbiased = sq / (double)(count > 1 ? count - 1 : 1);
            a->running_var[ch] = (float)(m * unbiased + (1.0 - m) * (double)a->running_var[ch]);
        }
        bn_apply(a, ch, (float)mean, (float)(gamma_at(a->gamma, ch) * invstd),
                 (float)beta_at(a->beta, ch));
    }
}

// x, y are (n, c, hw); gamma, beta, running_*, save_* are (c)
void graft_batchnorm2d_forward_train(int64_t n, int64_t c, int64_t hw, double eps,
                                     double momentum, const float *x, const float *gamma,
                                     const float *beta, float *running_mean, float *running_var,
                                     float *y, float *save_mean, float *save_invstd) {
    bn_args a = {.n = n, .c = c, .hw = hw, .eps = eps, .momentum = momentum, .x = x,
                 .gamma = gamma, .beta = beta, .running_mean = running_mean,
                 .running_var = running_var, .y = y, .out_mean = save_mean,
                 .out_invstd = save_invstd};
    graft_parallel_for(c, BN_MIN_CHANNELS, bn_forward_train_channels, &a);
}

/* With xhat = (x - mean) * invstd and N = n * hw, per channel:
 *     dbeta  += sum(dy)
 *     dgamma += sum(dy * xhat)
 *     dx      = gamma * invstd * (dy - sum(dy) / N - xhat * sum(dy * xhat) / N)
 * written as PyTorch's CPU kernel does, with k = sum(dy * (x - mean)) * invstd^2 / N:
 *     dx = (dy - sum(dy) / N - (x - mean) * k) * invstd * gamma */
static void bn_backward_train_channels(void *arg, int64_t begin, int64_t end) {
    const bn_args *a = arg;
    const int64_t count = a->n * a->hw;
    for (int64_t ch = begin; ch < end; ch++) {
        const float mean = a->save_mean[ch];
        const double invstd = (double)a->save_invstd[ch];
        double sum_dy = 0.0, dot = 0.0; /* dot = sum(dy * (x - mean)) */
        for (int64_t i = 0; i < a->n; i++) {
            const float *xp = a->x + (i * a->c + ch) * a->hw;
            const float *dyp = a->dy + (i * a->c + ch) * a->hw;
            for (int64_t k = 0; k < a->hw; k++) {
                sum_dy += dyp[k];
                dot += (double)dyp[k] * (double)(xp[k] - mean);
            }
        }
        if (a->dgamma) a->dgamma[ch] += (float)(dot * invstd);
        if (a->dbeta) a->dbeta[ch] += (float)sum_dy;
        if (!a->dx) continue;
        double inv_count = count > 0 ? 1.0 / (double)count : 0.0;
        const float kf = (float)(dot * invstd * invstd * inv_count);
        const float grad_mean = (float)(sum_dy * inv_count);
        const float scale = (float)(invstd * gamma_at(a->gamma, ch));
        for (int64_t i = 0; i < a->n; i++) {
            const float *xp = a->x + (i * a->c + ch) * a->hw;
            const float *dyp = a->dy + (i * a->c + ch) * a->hw;
            float *dxp = a->dx + (i * a->c + ch) * a->hw;
            for (int64_t k = 0; k < a->hw; k++)
                dxp[k] = (dyp[k] - grad_mean - (xp[k] - mean) * kf) * scale;
        }
    }
}

// x, dy, dx are (n, c, hw); gamma, save_*, dgamma, dbeta are (c)
void graft_batchnorm2d_backward_train(int64_t n, int64_t c, int64_t hw, const float *x,
                                      const float *gamma, const float *save_mean,
                                      const float *save_invstd, const float *dy, float *dx,
                                      float *dgamma, float *dbeta) {
    if (!dx && !dgamma && !dbeta) return;
    bn_args a = {.n = n, .c = c, .hw = hw, .x = x, .gamma = gamma, .save_mean = save_mean,
                 .save_invstd = save_invstd, .dy = dy, .dx = dx, .dgamma = dgamma,
                 .dbeta = dbeta};
    graft_parallel_for(c, BN_MIN_CHANNELS, bn_backward_train_channels, &a);
}

/* ---- eval ----------------------------------------------------------------- */

static void bn_forward_eval_channels(void *arg, int64_t begin, int64_t end) {
    const bn_args *a = arg;
    for (int64_t ch = begin; ch < end; ch++) {
        double invstd = 1.0 / sqrt((double)a->var[ch] + a->eps);
        bn_apply(a, ch, a->mean[ch], (float)(gamma_at(a->gamma, ch) * invstd),
                 (float)beta_at(a->beta, ch));
    }
}

// x, y are (n, c, hw); gamma, beta, running_* are (c)
void graft_batchnorm2d_forward_eval(int64_t n, int64_t c, int64_t hw, double eps, const float *x,
                                    const float *gamma, const float *beta,
                                    const float *running_mean, const float *running_var,
                                    float *y) {
    bn_args a = {.n = n, .c = c, .hw = hw, .eps = eps, .x = x, .gamma = gamma, .beta = beta,
                 .mean = running_mean, .var = running_var, .y = y};
    graft_parallel_for(c, BN_MIN_CHANNELS, bn_forward_eval_channels, &a);
}

/* The statistics are constants here, so dx = dy * gamma * invstd elementwise. */
static void bn_backward_eval_channels(void *arg, int64_t begin, int64_t end) {
    const bn_args *a = arg;
    for (int64_t ch = begin; ch < end; ch++) {
        const float mean = a->mean[ch];
        const double invstd = 1.0 / sqrt((double)a->var[ch] + a->eps);
        if (a->dgamma || a->dbeta) {
            double sum_dy = 0.0, dot = 0.0;
            for (int64_t i = 0; i < a->n; i++) {
                const float *xp = a->x + (i * a->c + ch) * a->hw;
                const float *dyp = a->dy + (i * a->c + ch) * a->hw;
                for (int64_t k = 0; k < a->hw; k++) {
                    sum_dy += dyp[k];
                    dot += (double)dyp[k] * (double)(xp[k] - mean);
                }
            }
            if (a->dgamma) a->dgamma[ch] += (float)(dot * invstd);
            if (a->dbeta) a->dbeta[ch] += (float)sum_dy;
        }
        if (!a->dx) continue;
        const float scale = (float)(gamma_at(a->gamma, ch) * invstd);
        for (int64_t i = 0; i < a->n; i++) {
            const float *dyp = a->dy + (i * a->c + ch) * a->hw;
            float *dxp = a->dx + (i * a->c + ch) * a->hw;
            for (int64_t k = 0; k < a->hw; k++) dxp[k] = dyp[k] * scale;
        }
    }
}

// x, dy, dx are (n, c, hw); gamma, running_*, dgamma, dbeta are (c)
void graft_batchnorm2d_backward_eval(int64_t n, int64_t c, int64_t hw, double eps,
                                     const float *x, const float *gamma,
                                     const float *running_mean, const float *running_var,
                                     const float *dy, float *dx, float *dgamma, float *dbeta) {
    if (!dx && !dgamma && !dbeta) return;
    bn_args a = {.n = n, .c = c, .hw = hw, .eps = eps, .x = x, .gamma = gamma,
                 .mean = running_mean, .var = running_var, .dy = dy, .dx = dx,
                 .dgamma = dgamma, .dbeta = dbeta};
    graft_parallel_for(c, BN_MIN_CHANNELS, bn_backward_eval_channels, &a);
}

/* ---- reference ------------------------------------------------------------ */

static double ref_gamma(const double *gamma, int64_t ch) { return gamma ? gamma[ch] : 1.0; }
static double ref_beta(const double *beta, int64_t ch) { return beta ? beta[ch] : 0.0; }

/* Batch mean and biased variance of channel ch of x [n, c, hw]. */
static void ref_channel_stats(int64_t n, int64_t c, int64_t hw, const double *x, int64_t ch,
                              double *mean, double *var) {
    double count = (double)(n * hw), sum = 0.0, sq = 0.0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < hw; k++) sum += x[(i * c + ch) * hw + k];
    *mean = count > 0 ? sum / count : 0.0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < hw; k++) {
            double d = x[(i * c + ch) * hw + k] - *mean;
            sq += d * d;
        }
    *var = count > 0 ? sq / count : 0.0;
}

void graft_ref_batchnorm2d_forward_train(int64_t n, int64_t c, int64_t hw, double eps,
                                         const double *x, const double *gamma,
                                         const double *beta, double *y) {
    for (int64_t ch = 0; ch < c; ch++) {
        double mean, var;
        ref_channel_stats(n, c, hw, x, ch, &mean, &var);
        for (int64_t i = 0; i < n; i++)
            for (int64_t k = 0; k < hw; k++) {
                int64_t at = (i * c + ch) * hw + k;
                y[at] = (x[at] - mean) / sqrt(var + eps) * ref_gamma(gamma, ch) +
                        ref_beta(beta, ch);
            }
    }
}

/* The textbook form: with g = dy * gamma,
 *     dx = invstd / N * (N * g - sum(g) - xhat * sum(g * xhat)). */
void graft_ref_batchnorm2d_backward_train(int64_t n, int64_t c, int64_t hw, double eps,
                                          const double *x, const double *gamma,
                                          const double *dy, double *dx, double *dgamma,
                                          double *dbeta) {
    double count = (double)(n * hw);
    for (int64_t ch = 0; ch < c; ch++) {
        double mean, var;
        ref_channel_stats(n, c, hw, x, ch, &mean, &var);
        double invstd = 1.0 / sqrt(var + eps);
        double sum_g = 0.0, sum_g_xhat = 0.0, sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t k = 0; k < hw; k++) {
                int64_t at = (i * c + ch) * hw + k;
                double xhat = (x[at] - mean) * invstd;
                double g = dy[at] * ref_gamma(gamma, ch);
                sum_g += g;
                sum_g_xhat += g * xhat;
                sum_dy += dy[at];
                sum_dy_xhat += dy[at] * xhat;
            }
        if (dgamma) dgamma[ch] += sum_dy_xhat;
        if (dbeta) dbeta[ch] += sum_dy;
        if (!dx) continue;
        for (int64_t i = 0; i < n; i++)
            for (int64_t k = 0; k < hw; k++) {
                int64_t at = (i * c + ch) * hw + k;
                double xhat = (x[at] - mean) * invstd;
                double g = dy[at] * ref_gamma(gamma, ch);
                dx[at] = count > 0 ? invstd / count * (count * g - sum_g - xhat * sum_g_xhat)
                                   : 0.0;
            }
    }
}

void graft_ref_batchnorm2d_forward_eval(int64_t n, int64_t c, int64_t hw, double eps,
                                        const double *x, const double *gamma,
                                        const double *beta, const double *running_mean,
                                        const double *running_var, double *y) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t k = 0; k < hw; k++) {
                int64_t at = (i * c + ch) * hw + k;
                y[at] = (x[at] - running_mean[ch]) / sqrt(running_var[ch] + eps) *
                            ref_gamma(gamma, ch) +
                        ref_beta(beta, ch);
            }
}

void graft_ref_batchnorm2d_backward_eval(int64_t n, int64_t c, int64_t hw, double eps,
                                         const double *x, const double *gamma,
                                         const double *running_mean, const double *running_var,
                                         const double *dy, double *dx, double *dgamma,
                                         double *dbeta) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t ch = 0; ch < c; ch++) {
            double invstd = 1.0 / sqrt(running_var[ch] + eps);
            for (int64_t k = 0; k < hw; k++) {
                int64_t at = (i * c + ch) * hw + k;
                double xhat = (x[at] - running_mean[ch]) * invstd;
                if (dx) dx[at] = dy[at] * ref_gamma(gamma, ch) * invstd;
                if (dgamma) dgamma[ch] += dy[at] * xhat;
                if (dbeta) dbeta[ch] += dy[at];
            }
        }
}
