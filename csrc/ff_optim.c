/* ff_optim.c - Adam, AdamW and SGD with momentum, PyTorch semantics.
 *
 * Both are one pass over the parameters, their gradient and state: memory-bound (Adam reads
 * 16 and writes 12 bytes per parameter), so a large tensor is split over the worker threads
 * (ff_parallel_for) for their combined memory bandwidth.  Every element is updated by the same
 * arithmetic whatever the split, so the result does not depend on the thread count. */
#include <float.h>
#include <math.h>
#include "fflib.h"

/* at least this many parameters per thread: smaller tensors are not worth a hand-off */
#define FF_OPTIM_MIN_PART ((size_t)1 << 16)

/* Moments of parameters whose gradient has gone to zero decay geometrically into the
 * subnormal range, where x86 arithmetic is ~100x slower; flush them to zero instead. */
static inline float flush(float x) { return fabsf(x) < FLT_MIN ? 0.0f : x; }

typedef struct {
    float *p, *m, *v;
    const float *g;
    float step, sbc2, b1, b2, eps, wd, keep;
    int decoupled;
} adam_job;

/* Adam: the decay wd enters the gradient; AdamW (decoupled): the weight is multiplied by keep =
 * 1 - lr wd before the step (torch's param.mul_(1 - lr * wd)) and the moments see the plain
 * gradient.  The branch is loop-invariant. */
static void adam_range(void *ctx, size_t lo, size_t hi) {
    const adam_job *j = ctx;
    float *p = j->p, *m = j->m, *v = j->v;
    const float *g = j->g;
    const float step = j->step, sbc2 = j->sbc2, b1 = j->b1, b2 = j->b2, eps = j->eps, wd = j->wd, keep = j->keep;
    const int decoupled = j->decoupled;
    for (size_t i = lo; i < hi; i++) {
        float gi = g[i];
        if (decoupled)
            p[i] *= keep;
        else
            gi += wd * p[i];
        m[i] = flush(b1 * m[i] + (1.0f - b1) * gi);
        v[i] = flush(b2 * v[i] + (1.0f - b2) * gi * gi);
        p[i] -= step * m[i] / (sqrtf(v[i]) / sbc2 + eps);
    }
}

static void adam_run(float *p, float *m, float *v, const float *g, size_t n, float lr, float b1, float b2,
                     float eps, float wd, long t, int decoupled) {
    /* bias corrections in double, as PyTorch computes them in Python floats */
    adam_job j = {p, m, v, g, (float)(lr / (1.0 - pow(b1, (double)t))), (float)sqrt(1.0 - pow(b2, (double)t)),
                  b1, b2, eps, wd, (float)(1.0 - (double)lr * (double)wd), decoupled};
    ff_parallel_for(adam_range, &j, n, FF_OPTIM_MIN_PART);
}

void ff_adam_step(float *p, float *m, float *v, const float *g, size_t n, float lr, float b1,
                  float b2, float eps, float wd, long t) {
    adam_run(p, m, v, g, n, lr, b1, b2, eps, wd, t, 0);
}

void ff_adamw_step(float *p, float *m, float *v, const float *g, size_t n, float lr, float b1,
                   float b2, float eps, float wd, long t) {
    adam_run(p, m, v, g, n, lr, b1, b2, eps, wd, t, 1);
}

typedef struct {
    float *p, *buf;
    const float *g;
    float lr, momentum, dampening, wd;
    int nesterov;
    long t;
} sgd_job;

static void sgd_range(void *ctx, size_t lo, size_t hi) {
    const sgd_job *j = ctx;
    float *p = j->p, *buf = j->buf;
    const float *g = j->g;
    const float lr = j->lr, momentum = j->momentum, dampening = j->dampening, wd = j->wd;
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
    sgd_job j = {p, buf, g, lr, momentum, dampening, wd, nesterov, t};
    ff_parallel_for(sgd_range, &j, n, FF_OPTIM_MIN_PART);
}
