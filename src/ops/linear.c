/* linear.c — Linear (fully connected): y = x w^T + b, as one cblas_sgemm, and the
 * double reference it is checked against.  The weight keeps PyTorch's [out, in]
 * layout, so state dicts load without a transpose. */
#include "ops/ops.h"

#include <cblas.h>

/* ---- forward -------------------------------------------------------------- */

/* x [n, in], w [out, in], b [out] or NULL -> y [n, out] */
void graft_linear_forward(int64_t n, int64_t in, int64_t out, const float *x, const float *w,
                          const float *b, float *y) {
    if (n <= 0 || out <= 0) return;
    float beta = 0.0f;
    if (b) { /* start y at the bias and let the GEMM add onto it */
        for (int64_t i = 0; i < n; i++)
            for (int64_t o = 0; o < out; o++) y[i * out + o] = b[o];
        beta = 1.0f;
    }
    if (in <= 0) { /* an empty sum: y is the bias, or zero */
        if (!b)
            for (int64_t i = 0; i < n * out; i++) y[i] = 0.0f;
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)out, (int)in, 1.0f, x,
                (int)in, w, (int)in, beta, y, (int)out);
}

/* ---- backward ------------------------------------------------------------- */

/* x [n, in], w [out, in], dy [n, out] ->
 *   dx [n, in] = dy w (overwritten), dw [out, in] += dy^T x, db [out] += sum_i dy[i];
 *   NULL skips. */
void graft_linear_backward(int64_t n, int64_t in, int64_t out, const float *x, const float *w,
                           const float *dy, float *dx, float *dw, float *db) {
    if (n <= 0) return; /* no rows: nothing to accumulate, and dx is empty */
    if (dx && in > 0) {
        if (out > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)in, (int)out,
                        1.0f, dy, (int)out, w, (int)in, 0.0f, dx, (int)in);
        else
            for (int64_t i = 0; i < n * in; i++) dx[i] = 0.0f;
    }
    if (dw && in > 0 && out > 0)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)out, (int)in, (int)n, 1.0f, dy,
                    (int)out, x, (int)in, 1.0f, dw, (int)in);
    if (db)
        for (int64_t o = 0; o < out; o++) {
            double sum = 0.0; /* a batch of float gradients, summed without drift */
            for (int64_t i = 0; i < n; i++) sum += dy[i * out + o];
            db[o] += (float)sum;
        }
}

/* ---- reference (double, direct summation) --------------------------------- */

/* x [n, in], w [out, in], b [out] or NULL -> y [n, out] */
void graft_ref_linear_forward(int64_t n, int64_t in, int64_t out, const double *x,
                              const double *w, const double *b, double *y) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t o = 0; o < out; o++) {
            double sum = b ? b[o] : 0.0;
            for (int64_t k = 0; k < in; k++) sum += x[i * in + k] * w[o * in + k];
            y[i * out + o] = sum;
        }
}

/* x [n, in], w [out, in], dy [n, out] -> dx [n, in] (overwritten), dw [out, in] (+=),
 * db [out] (+=); NULL skips. */
void graft_ref_linear_backward(int64_t n, int64_t in, int64_t out, const double *x,
                               const double *w, const double *dy, double *dx, double *dw,
                               double *db) {
    if (dx)
        for (int64_t i = 0; i < n; i++)
            for (int64_t k = 0; k < in; k++) {
                double sum = 0.0;
                for (int64_t o = 0; o < out; o++) sum += dy[i * out + o] * w[o * in + k];
                dx[i * in + k] = sum;
            }
    if (dw)
        for (int64_t o = 0; o < out; o++)
            for (int64_t k = 0; k < in; k++) {
                double sum = 0.0;
                for (int64_t i = 0; i < n; i++) sum += dy[i * out + o] * x[i * in + k];
                dw[o * in + k] += sum;
            }
    if (db)
        for (int64_t o = 0; o < out; o++)
            for (int64_t i = 0; i < n; i++) db[o] += dy[i * out + o];
}
