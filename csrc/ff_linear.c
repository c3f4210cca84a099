/* ff_linear.c - fully connected layer and ReLU. */
#include "fflib.h"

/* out (B,O) = inp (B,I) . weight(O,I)^T + bias(O) */
void ff_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int B, int I, int O) {
    float beta = 0.0f;
    if (bias) {
        for (int b = 0; b < B; b++) {
            float *o = out + (size_t)b * O;
            for (int j = 0; j < O; j++) o[j] = bias[j];
        }
        beta = 1.0f;
    }
    ff_sgemm(0, 1, B, O, I, 1.0f, inp, I, weight, I, beta, out, O);
}

/* dinp (B,I) += dout . weight; dweight (O,I) += dout^T . inp; dbias (O) += sum_b dout */
void ff_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int B, int I, int O) {
    if (dinp) ff_sgemm(0, 0, B, I, O, 1.0f, dout, O, weight, I, 1.0f, dinp, I);
    if (dweight) ff_sgemm(1, 0, O, I, B, 1.0f, dout, O, inp, I, 1.0f, dweight, I);
    if (dbias) {
        for (int b = 0; b < B; b++) {
            const float *d = dout + (size_t)b * O;
            for (int j = 0; j < O; j++) dbias[j] += d[j];
        }
    }
}

typedef struct {
    float *out;
    const float *a, *b;
} relu_job;

static void relu_fwd_range(void *ctx, size_t lo, size_t hi) {
    const relu_job *j = ctx;
    float *out = j->out;
    const float *inp = j->a;
    /* written as a select, not fmaxf, so a NaN input stays NaN and is caught later */
    for (size_t i = lo; i < hi; i++) out[i] = inp[i] > 0.0f ? inp[i] : (inp[i] != inp[i] ? inp[i] : 0.0f);
}

void ff_relu_forward(float *out, const float *inp, size_t n) {
    relu_job j = {out, inp, NULL};
    ff_parallel_for(relu_fwd_range, &j, n, FF_PAR_MIN_FLOATS);
}

static void relu_bwd_range(void *ctx, size_t lo, size_t hi) {
    const relu_job *j = ctx;
    float *dinp = j->out;
    const float *dout = j->a, *out = j->b;
    if (dinp == dout)   /* in place: mask the gradient */
        for (size_t i = lo; i < hi; i++) dinp[i] = ff_select(out[i] > 0.0f, dinp[i], 0.0f);
    else
        for (size_t i = lo; i < hi; i++) dinp[i] += ff_select(out[i] > 0.0f, dout[i], 0.0f);
}

void ff_relu_backward(float *dinp, const float *dout, const float *out, size_t n) {
    relu_job j = {dinp, dout, out};
    ff_parallel_for(relu_bwd_range, &j, n, FF_PAR_MIN_FLOATS);
}
