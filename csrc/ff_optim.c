/* ff_optim.c - Adam and SGD with momentum, PyTorch semantics. */
#include <float.h>
#include <math.h>
#include "fflib.h"

/* Moments of parameters whose gradient has gone to zero decay geometrically into the
 * subnormal range, where x86 arithmetic is ~100x slower; flush them to zero instead. */
static inline float flush(float x) { return fabsf(x) < FLT_MIN ? 0.0f : x; }

void ff_adam_step(float *p, float *m, float *v, const float *g, size_t n, float lr, float b1,
                  float b2, float eps, float wd, long t) {
    /* bias corrections in double, as PyTorch computes them in Python floats */
    float step = (float)(lr / (1.0 - pow(b1, (double)t)));
    float sbc2 = (float)sqrt(1.0 - pow(b2, (double)t));
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] + wd * p[i];
        m[i] = flush(b1 * m[i] + (1.0f - b1) * gi);
        v[i] = flush(b2 * v[i] + (1.0f - b2) * gi * gi);
        p[i] -= step * m[i] / (sqrtf(v[i]) / sbc2 + eps);
    }
}

void ff_sgd_step(float *p, float *buf, const float *g, size_t n, float lr, float momentum,
                 float dampening, float wd, int nesterov, long t) {
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] + wd * p[i];
        if (momentum != 0.0f) {
            buf[i] = flush(t <= 1 ? gi : momentum * buf[i] + (1.0f - dampening) * gi);
            gi = nesterov ? gi + momentum * buf[i] : buf[i];
        }
        p[i] -= lr * gi;
    }
}
