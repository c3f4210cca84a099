/* ff_pool.c - MaxPool2d without padding (NCHW), saving the argmax for the backward.  Planes
 * are independent, so both directions split the N*C planes over fflib's threads. */
#include "fflib.h"

typedef struct {
    float *y;
    int32_t *a;
    const float *x;
    const int32_t *ca;
    int H, W, K, stride, OH, OW;
} pool_job;

/* One 2x2 stride-2 output row: four candidates, scanned row-major as in the general case. */
static void pool2_row(float *y, int32_t *a, const float *r0, int W, int base, int OW) {
    const float *r1 = r0 + W;
    for (int ow = 0; ow < OW; ow++) {
        float b = r0[2 * ow];
        int32_t ib = base + 2 * ow;
        float v = r0[2 * ow + 1];
        int take = (v > b) | ((v != v) & (b == b));
        b = ff_select(take, v, b);
        ib = ff_select_i32(take, base + 2 * ow + 1, ib);
        v = r1[2 * ow];
        take = (v > b) | ((v != v) & (b == b));
        b = ff_select(take, v, b);
        ib = ff_select_i32(take, base + W + 2 * ow, ib);
        v = r1[2 * ow + 1];
        take = (v > b) | ((v != v) & (b == b));
        y[ow] = ff_select(take, v, b);
        a[ow] = ff_select_i32(take, base + W + 2 * ow + 1, ib);
    }
}

static void pool_fwd_planes(void *ctx, size_t lo, size_t hi) {
    const pool_job *j = ctx;
    const int H = j->H, W = j->W, K = j->K, stride = j->stride, OH = j->OH, OW = j->OW;
    const size_t HW = (size_t)H * W, OHW = (size_t)OH * OW;
    for (size_t p = lo; p < hi; p++) {
        const float *x = j->x + p * HW;
        for (int oh = 0; oh < OH; oh++) {
            float *y = j->y + p * OHW + (size_t)oh * OW;
            int32_t *a = j->a + p * OHW + (size_t)oh * OW;
            if (K == 2 && stride == 2) {
                pool2_row(y, a, x + (size_t)(2 * oh) * W, W, 2 * oh * W, OW);
                continue;
            }
            /* a whole output row at a time, window offset by window offset: the inner loop
             * over ow is branch-free (a compare branch mispredicts on real data) */
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
                        y[ow] = ff_select(take, v, b);
                        a[ow] = ff_select_i32(take, base + ow * stride, a[ow]);
                    }
                }
            }
        }
    }
}

/* out, argmax (N,C,OH,OW) from inp (N,C,H,W); OH = (H-K)/stride + 1, likewise OW.
 * Windows are scanned row-major and only a strictly larger value replaces the best, so ties
 * keep the first; a NaN counts as larger than anything (and the first NaN stays), so it
 * propagates as in PyTorch rather than being dropped. */
void ff_maxpool2d_forward(float *out, int32_t *argmax, const float *inp, int N, int C, int H,
                          int W, int K, int stride) {
    if (N <= 0 || C <= 0 || K < 1 || stride < 1 || K > H || K > W) return;
    pool_job j = {out, argmax, inp, NULL, H, W, K, stride, (H - K) / stride + 1, (W - K) / stride + 1};
    size_t HW = (size_t)H * W;
    ff_parallel_for(pool_fwd_planes, &j, (size_t)N * C, FF_PAR_MIN_FLOATS / HW + 1);
}

static void pool_bwd_planes(void *ctx, size_t lo, size_t hi) {
    const pool_job *j = ctx;
    const size_t HW = (size_t)j->H * j->W, OHW = (size_t)j->OH * j->OW;
    for (size_t p = lo; p < hi; p++) {
        float *dx = j->y + p * HW;
        const float *g = j->x + p * OHW;
        const int32_t *a = j->ca + p * OHW;
        for (size_t i = 0; i < OHW; i++) dx[a[i]] += g[i];
    }
}

/* dinp (N,C,H,W) += dout (N,C,OH,OW) routed to each window's argmax */
void ff_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax, int N, int C,
                           int H, int W, int OH, int OW) {
    if (N <= 0 || C <= 0 || OH <= 0 || OW <= 0) return;
    pool_job j = {dinp, NULL, dout, argmax, H, W, 0, 0, OH, OW};
    size_t HW = (size_t)H * W;
    ff_parallel_for(pool_bwd_planes, &j, (size_t)N * C, FF_PAR_MIN_FLOATS / HW + 1);
}
