/* ff_loss.c - goodness and the local losses computed from it. */
#include <math.h>
#include "fflib.h"

void ff_goodness_forward(float *g, const float *act, int B, int D, ff_goodness_kind kind) {
    for (int b = 0; b < B; b++) {
        const float *a = act + (size_t)b * D;
        double s = 0.0;
        for (int d = 0; d < D; d++) s += (double)a[d] * a[d];
        g[b] = (float)(kind == FF_GOODNESS_MEAN ? s / D : s);
    }
}

void ff_goodness_backward(float *dact, const float *dg, const float *act, int B, int D,
                          ff_goodness_kind kind) {
    for (int b = 0; b < B; b++) {
        float c = 2.0f * dg[b] / (kind == FF_GOODNESS_MEAN ? (float)D : 1.0f);
        const float *a = act + (size_t)b * D;
        float *da = dact + (size_t)b * D;
        for (int d = 0; d < D; d++) da[d] += c * a[d];
    }
}

/* act (B, J*S, HW) -> G (B,J) */
void ff_group_goodness_forward(float *G, const float *act, int B, int J, int S, int HW) {
    size_t n = (size_t)S * HW;
    for (int b = 0; b < B; b++)
        for (int j = 0; j < J; j++) {
            const float *a = act + ((size_t)b * J + j) * n;
            double s = 0.0;
            for (size_t i = 0; i < n; i++) s += (double)a[i] * a[i];
            G[(size_t)b * J + j] = (float)(s / (double)n);
        }
}

void ff_group_goodness_backward(float *dact, const float *dG, const float *act, int B, int J,
                                int S, int HW) {
    size_t n = (size_t)S * HW;
    for (int b = 0; b < B; b++)
        for (int j = 0; j < J; j++) {
            float c = 2.0f * dG[(size_t)b * J + j] / (float)n;
            const float *a = act + ((size_t)b * J + j) * n;
            float *da = dact + ((size_t)b * J + j) * n;
            for (size_t i = 0; i < n; i++) da[i] += c * a[i];
        }
}

/* log(1 + e^z) = max(z, 0) + log1p(e^-|z|): never overflows. */
double ff_softplus(double z) { return (z > 0 ? z : 0.0) + log1p(exp(-fabs(z))); }

double ff_sigmoid(double z) {
    if (z >= 0) return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}

float ff_ff_loss(float *dgpos, float *dgneg, const float *gpos, const float *gneg, int B,
                 float theta) {
    double L = 0.0;
    for (int b = 0; b < B; b++) {
        double zp = (double)theta - gpos[b], zn = (double)gneg[b] - theta;
        L += ff_softplus(zp) + ff_softplus(zn);
        if (dgpos) dgpos[b] = (float)(-ff_sigmoid(zp) / B);
        if (dgneg) dgneg[b] = (float)(ff_sigmoid(zn) / B);
    }
    return (float)(L / B);
}

float ff_symba_loss(float *dgpos, float *dgneg, const float *gpos, const float *gneg, int B,
                    float alpha) {
    double L = 0.0;
    for (int b = 0; b < B; b++) {
        double z = -(double)alpha * ((double)gpos[b] - gneg[b]);
        L += ff_softplus(z);
        double s = ff_sigmoid(z) * alpha / B;
        if (dgpos) dgpos[b] = (float)-s;
        if (dgneg) dgneg[b] = (float)s;
    }
    return (float)(L / B);
}

float ff_softmax_xent(float *dlogits, float *probs, const float *logits, const int64_t *labels,
                      int B, int K) {
    double L = 0.0;
    for (int b = 0; b < B; b++) {
        const float *z = logits + (size_t)b * K;
        float m = z[0];
        for (int k = 1; k < K; k++) m = z[k] > m ? z[k] : m;
        double sum = 0.0;
        for (int k = 0; k < K; k++) sum += exp((double)z[k] - m);
        double lse = m + log(sum);
        int y = (int)labels[b];
        L += lse - z[y];
        for (int k = 0; k < K; k++) {
            double p = exp((double)z[k] - lse);
            if (probs) probs[(size_t)b * K + k] = (float)p;
            if (dlogits) dlogits[(size_t)b * K + k] = (float)((p - (k == y)) / B);
        }
    }
    return (float)(L / B);
}
