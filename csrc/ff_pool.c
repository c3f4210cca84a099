/* ff_pool.c - MaxPool2d without padding (NCHW), saving the argmax for the backward. */
#include "fflib.h"

/* out, argmax (N,C,OH,OW) from inp (N,C,H,W); OH = (H-K)/stride + 1, likewise OW.
 * Windows are scanned row-major and only a strictly larger value replaces the best, so ties
 * keep the first; a NaN counts as larger than anything (and the first NaN stays), so it
 * propagates as in PyTorch rather than being dropped. */
void ff_maxpool2d_forward(float *out, int32_t *argmax, const float *inp, int N, int C, int H,
                          int W, int K, int stride) {
    if (N <= 0 || C <= 0 || K < 1 || stride < 1 || K > H || K > W) return;
    const int OH = (H - K) / stride + 1, OW = (W - K) / stride + 1;
    const size_t planes = (size_t)N * C, HW = (size_t)H * W, OHW = (size_t)OH * OW;
    for (size_t p = 0; p < planes; p++) {
        const float *x = inp + p * HW;
        for (int oh = 0; oh < OH; oh++) {
            /* a whole output row at a time, window offset by window offset: the inner loop
             * over ow is branch-free (a compare branch mispredicts on real data) */
            float *y = out + p * OHW + (size_t)oh * OW;
            int32_t *a = argmax + p * OHW + (size_t)oh * OW;
            for (int kh = 0; kh < K; kh++) {
                for (int kw = 0; kw < K; kw++) {
                    const int base = (oh * stride + kh) * W + kw;
                    const float *xr = x + base;
                    if (kh == 0 && kw == 0) {
                        for (int ow = 0; ow < OW; ow++) {
                            y[ow] = xr[ow * stride];
                            a[ow] = base + ow * stride;
                        }
                        continue;
                    }
                    for (int ow = 0; ow < OW; ow++) {
                        float v = xr[ow * stride], b = y[ow];
                        /* b == b: once a NaN is held nothing replaces it */
                        int take = (v > b) | ((v != v) & (b == b));
                        y[ow] = take ? v : b;
                        a[ow] = take ? base + ow * stride : a[ow];
                    }
                }
            }
        }
    }
}

/* dinp (N,C,H,W) += dout (N,C,OH,OW) routed to each window's argmax */
void ff_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax, int N, int C,
                           int H, int W, int OH, int OW) {
    if (N <= 0 || C <= 0 || OH <= 0 || OW <= 0) return;
    const size_t planes = (size_t)N * C, HW = (size_t)H * W, OHW = (size_t)OH * OW;
    for (size_t p = 0; p < planes; p++) {
        float *dx = dinp + p * HW;
        const float *g = dout + p * OHW;
        const int32_t *a = argmax + p * OHW;
        for (size_t j = 0; j < OHW; j++) dx[a[j]] += g[j];
    }
}
