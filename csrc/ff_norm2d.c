/* ff_norm2d.c - BatchNorm2d (PyTorch semantics) over NCHW data viewed as (N, C, HW).
 * Per-channel sums are accumulated in double, in eight independent lanes so the loops
 * still pipeline. */
#include <math.h>
#include "fflib.h"

/* Adds sum (x - k) and sum (x - k)^2 over n floats into *s1, *s2.  Shifting by k (a value
 * close to the mean) keeps the one-pass variance accurate when |mean| >> std. */
static void shifted_sums(const float *x, size_t n, double k, double *s1, double *s2) {
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, q[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            double d = (double)x[i + l] - k;
            a[l] += d;
            q[l] += d * d;
        }
    double sa = 0.0, sq = 0.0;
    for (; i < n; i++) {
        double d = (double)x[i] - k;
        sa += d;
        sq += d * d;
    }
    for (int l = 0; l < 8; l++) { sa += a[l]; sq += q[l]; }
    *s1 += sa;
    *s2 += sq;
}

/* Adds sum g and sum g*(x - m) over n floats into *sg, *sgx (the backward's reductions). */
static void grad_sums(const float *g, const float *x, size_t n, double m, double *sg,
                      double *sgx) {
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, q[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            double gv = g[i + l];
            a[l] += gv;
            q[l] += gv * ((double)x[i + l] - m);
        }
    double sa = 0.0, sq = 0.0;
    for (; i < n; i++) {
        double gv = g[i];
        sa += gv;
        sq += gv * ((double)x[i] - m);
    }
    for (int l = 0; l < 8; l++) { sa += a[l]; sq += q[l]; }
    *sg += sa;
    *sgx += sq;
}

/* y (n) = (x - m) * a + b; subtracting m first avoids cancellation when |mean| >> std */
static void affine(float *y, const float *x, size_t n, float m, float a, float b) {
    for (size_t i = 0; i < n; i++) y[i] = (x[i] - m) * a + b;
}

typedef struct {
    float *out, *mean, *rstd, *running_mean, *running_var, *dgamma, *dbeta;
    const float *inp, *gamma, *beta, *dout, *cmean, *crstd;
    int N, C, HW;
    float eps, momentum;
} bn_job;

static void bn_train_channels(void *ctx, size_t lo, size_t hi) {
    const bn_job *j = ctx;
    const int N = j->N;
    const size_t plane = (size_t)j->HW, img = (size_t)j->C * j->HW;
    const double cnt = (double)N * j->HW, momentum = j->momentum;
    const float *inp = j->inp;
    for (size_t c = lo; c < hi; c++) {
        const double k = inp[c * plane]; /* the shift: any sample of the channel */
        double s1 = 0.0, s2 = 0.0;
        for (int n = 0; n < N; n++) shifted_sums(inp + n * img + c * plane, plane, k, &s1, &s2);
        double m1 = s1 / cnt;
        double var = s2 / cnt - m1 * m1; /* biased, used to normalise */
        if (var < 0.0) var = 0.0;
        double mu = k + m1, rs = 1.0 / sqrt(var + (double)j->eps);
        if (j->mean) j->mean[c] = (float)mu;
        if (j->rstd) j->rstd[c] = (float)rs;
        if (j->running_mean)
            j->running_mean[c] = (float)((1.0 - momentum) * j->running_mean[c] + momentum * mu);
        if (j->running_var) {
            /* unbiased for the running estimate; a single value has none, keep the biased 0 */
            double uvar = cnt > 1.0 ? var * cnt / (cnt - 1.0) : var;
            j->running_var[c] = (float)((1.0 - momentum) * j->running_var[c] + momentum * uvar);
        }
        double ga = j->gamma ? j->gamma[c] : 1.0, be = j->beta ? j->beta[c] : 0.0;
        /* y = (x - m) a + b with m = mean rounded to float, b absorbing the rounding */
        float m = (float)mu, a = (float)(rs * ga), b = (float)(be - (mu - m) * rs * ga);
        for (int n = 0; n < N; n++)
            affine(j->out + n * img + c * plane, inp + n * img + c * plane, plane, m, a, b);
    }
}

/* Channels per thread: at least FF_PAR_MIN_FLOATS values in all. */
static size_t min_channels(int N, int HW) {
    size_t per = (size_t)N * (size_t)HW;
    return per >= FF_PAR_MIN_FLOATS ? 1 : FF_PAR_MIN_FLOATS / per + 1;
}

/* out (N,C,HW) = (inp - mean_c) * rstd_c * gamma_c + beta_c with batch statistics;
 * mean, rstd (C) saved; running_mean/var (C) updated.  Any of mean, rstd, running_mean,
 * running_var may be NULL (not saved / not tracked).  Channels run in parallel. */
void ff_batchnorm2d_forward_train(float *out, float *mean, float *rstd, float *running_mean,
                                  float *running_var, const float *inp, const float *gamma,
                                  const float *beta, int N, int C, int HW, float eps,
                                  float momentum) {
    if (N <= 0 || C <= 0 || HW <= 0) return;
    bn_job j = {out, mean, rstd, running_mean, running_var, NULL, NULL, inp, gamma, beta, NULL,
                NULL, NULL, N, C, HW, eps, momentum};
    ff_parallel_for(bn_train_channels, &j, (size_t)C, min_channels(N, HW));
}

/* out (N,C,HW) = (inp - running_mean) / sqrt(running_var + eps) * gamma + beta */
void ff_batchnorm2d_forward_eval(float *out, const float *inp, const float *running_mean,
                                 const float *running_var, const float *gamma, const float *beta,
                                 int N, int C, int HW, float eps) {
    const size_t plane = (size_t)HW, img = (size_t)C * HW;
    for (int c = 0; c < C; c++) {
        double rs = 1.0 / sqrt((double)running_var[c] + (double)eps);
        double ga = gamma ? gamma[c] : 1.0, be = beta ? beta[c] : 0.0;
        float a = (float)(rs * ga), b = (float)be;
        for (int n = 0; n < N; n++)
            affine(out + n * img + c * plane, inp + n * img + c * plane, plane, running_mean[c], a, b);
    }
}

static void bn_backward_channels(void *ctx, size_t lo, size_t hi) {
    const bn_job *j = ctx;
    const int N = j->N;
    const size_t plane = (size_t)j->HW, img = (size_t)j->C * j->HW;
    const double cnt = (double)N * j->HW;
    for (size_t c = lo; c < hi; c++) {
        const double mu = j->cmean[c], rs = j->crstd[c];
        double sg = 0.0, sgx = 0.0; /* sum dout, sum dout (x - mean) */
        for (int n = 0; n < N; n++)
            grad_sums(j->dout + n * img + c * plane, j->inp + n * img + c * plane, plane, mu, &sg, &sgx);
        if (j->dbeta) j->dbeta[c] += (float)sg;
        if (j->dgamma) j->dgamma[c] += (float)(sgx * rs);
        if (!j->out) continue;
        /* dinp += k1 dout + k2 (x - mean) + k0, the constants folded in double */
        double ga = j->gamma ? j->gamma[c] : 1.0;
        float k1 = (float)(ga * rs);
        float k2 = (float)(-ga * rs * rs * rs * sgx / cnt);
        float k0 = (float)(-ga * rs * sg / cnt);
        float m = (float)mu;
        for (int n = 0; n < N; n++) {
            const float *g = j->dout + n * img + c * plane, *x = j->inp + n * img + c * plane;
            float *d = j->out + n * img + c * plane;
            for (size_t i = 0; i < plane; i++) d[i] += k1 * g[i] + k2 * (x[i] - m) + k0;
        }
    }
}

/* dinp (N,C,HW) +=, dgamma (C) +=, dbeta (C) += for the training-mode forward.  With
 * xhat = (x - mean) rstd over the channel's M = N*HW values:
 *   dbeta = sum dout,  dgamma = sum dout xhat,
 *   dinp  = gamma rstd (dout - dbeta/M - xhat dgamma/M).  Channels run in parallel. */
void ff_batchnorm2d_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                             const float *inp, const float *mean, const float *rstd,
                             const float *gamma, int N, int C, int HW) {
    if (N <= 0 || C <= 0 || HW <= 0) return;
    bn_job j = {dinp, NULL, NULL, NULL, NULL, dgamma, dbeta, inp, gamma, NULL, dout, mean, rstd,
                N, C, HW, 0.0f, 0.0f};
    ff_parallel_for(bn_backward_channels, &j, (size_t)C, min_channels(N, HW));
}
