/* ff_optim.c - Adam and SGD with momentum, PyTorch semantics. */
#include <float.h>
#include <math.h>
#include "fflib.h"

/* Moments of parameters whose gradient has gone to zero decay geometrically into the
 * subnormal range, where x86 arithmetic is ~100x slower; flush them to zero instead. */
static inline float flush(float x) { return fabsf(x) < FLT_MIN ? 0.0f : x; }

/* The updates are elementwise: split over fflib's threads, any split gives the same bits. */
typedef struct {
    float *p, *m, *v;
    const float *g;
    float lr, b1, b2, eps, wd, step, sbc2, momentum, dampening;
    int nesterov;
    long t;
} opt_job;

static void adam_range(void *ctx, size_t lo, size_t hi) {
    const opt_job *j = ctx;
    float *p = j->p, *m = j->m, *v = j->v;
    const float *g = j->g;
    const float b1 = j->b1, b2 = j->b2, eps = j->eps, wd = j->wd, step = j->step, sbc2 = j->sbc2;
    for (size_t i = lo; i < hi; i++) {
        float gi = g[i] + wd * p[i];
        m[i] = flush(b1 * m[i] + (1.0f - b1) * gi);
        v[i] = flush(b2 * v[i] + (1.0f - b2) * gi * gi);
        p[i] -= step * m[i] / (sqrtf(v[i]) / sbc2 + eps);
    }
}

void ff_adam_step(float *p, float *m, float *v, const float *g, size_t n, float lr, float b1,
                  float b2, float eps, float wd, long t) {
    /* bias corrections in double, as PyTorch computes them in Python floats */
    opt_job j = {p, m, v, g, lr, b1, b2, eps, wd, 0.0f, 0.0f, 0.0f, 0.0f, 0, t};
    j.step = (float)(lr / (1.0 - pow(b1, (double)t)));
    j.sbc2 = (float)sqrt(1.0 - pow(b2, (double)t));
    ff_parallel_for(adam_range, &j, n, FF_PAR_MIN_FLOATS);
}

static void sgd_range(void *ctx, size_t lo, size_t hi) {
    const opt_job *j = ctx;
    float *p = j->p, *buf = j->m;
    const float *g = j->g;
    const float lr = j->lr, wd = j->wd, momentum = j->momentum, dampening = j->dampening;
    for (size_t i = lo; i < hi; i++) {
        float gi = g[i] + wd * p[i];
        if (momentum != 0.0f) {
            buf[i] = flush(j->t <= 1 ? gi : momentum * buf[i] + (1.0f - dampening) * gi);
            gi = j->nesterov ? gi + momentum * buf[i] : buf[i];
        }
        p[i] -= lr * gi;
    }
}

void ff_sgd_step(float *p, float *buf, const float *g, size_t n, float lr, float momentum,
                 float dampening, float wd, int nesterov, long t) {
    opt_job j = {p, buf, NULL, g, lr, 0.0f, 0.0f, 0.0f, wd, 0.0f, 0.0f, momentum, dampening, nesterov, t};
    ff_parallel_for(sgd_range, &j, n, FF_PAR_MIN_FLOATS);
}
