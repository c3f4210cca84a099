/* ff_norm.c - length normalisation of each row (what one FF block passes to the next). */
#include <math.h>
#include "fflib.h"

/* out (B,D) = inp * scale[b]; scale (B). */
void ff_lennorm_forward(float *out, float *scale, const float *inp, int B, int D,
                        ff_norm_kind kind, float eps) {
    for (int b = 0; b < B; b++) {
        const float *x = inp + (size_t)b * D;
        float *y = out + (size_t)b * D;
        float s = 1.0f;
        if (kind != FF_NORM_NONE) {
            double ss = 0.0;
            for (int d = 0; d < D; d++) ss += (double)x[d] * x[d];
            s = kind == FF_NORM_L2 ? (float)(1.0 / (sqrt(ss) + eps))
                                   : (float)(1.0 / sqrt(ss / D + eps));
        }
        if (scale) scale[b] = s;
        for (int d = 0; d < D; d++) y[d] = x[d] * s;
    }
}

/* dinp (B,D) += J^T dout.  With y = s x:
 *   L2:  s = 1/(n + eps), n = |x|:  dx = s dout - s^2 (x.dout)/n x
 *   RMS: s = (mean x^2 + eps)^-1/2: dx = s dout - s^3 (x.dout)/D x */
void ff_lennorm_backward(float *dinp, const float *dout, const float *inp, const float *scale,
                         int B, int D, ff_norm_kind kind, float eps) {
    (void)eps;
    for (int b = 0; b < B; b++) {
        const float *x = inp + (size_t)b * D, *g = dout + (size_t)b * D;
        float *dx = dinp + (size_t)b * D;
        double s = scale[b], c = 0.0;
        if (kind != FF_NORM_NONE) {
            double xg = 0.0, ss = 0.0;
            for (int d = 0; d < D; d++) { xg += (double)x[d] * g[d]; ss += (double)x[d] * x[d]; }
            if (kind == FF_NORM_L2) {
                double n = sqrt(ss);
                c = n > 0.0 ? s * s * xg / n : 0.0;
            } else {
                c = s * s * s * xg / D;
            }
        }
        for (int d = 0; d < D; d++) dx[d] += (float)(s * g[d] - c * x[d]);
    }
}
