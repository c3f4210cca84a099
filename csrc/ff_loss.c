/* ff_loss.c - goodness, the local losses computed from it, and the loss table: one row per
 * loss with what it needs (negative rows, channel groups, a K-wide output), its value and
 * gradient on a block's output, and its class scores for inference.  Adding a loss is a row
 * here and an enum value in fflib.h. */
#include <math.h>
#include <string.h>
#include "ff_internal.h"

/* The NEG kinds negate the sum (or mean) of squares; the arithmetic is otherwise the same. */
static int goodness_mean(ff_goodness_kind k) { return k == FF_GOODNESS_MEAN || k == FF_GOODNESS_NEG_MEAN; }
static int goodness_neg(ff_goodness_kind k) { return k == FF_GOODNESS_NEG_SUM || k == FF_GOODNESS_NEG_MEAN; }

void ff_goodness_forward(float *g, const float *act, int B, int D, ff_goodness_kind kind) {
    const int mean = goodness_mean(kind), neg = goodness_neg(kind);
    for (int b = 0; b < B; b++) {
        const float *a = act + (size_t)b * D;
        double s = 0.0;
        for (int d = 0; d < D; d++) s += (double)a[d] * a[d];
        if (mean) s /= D;
        g[b] = (float)(neg ? -s : s);
    }
}

void ff_goodness_backward(float *dact, const float *dg, const float *act, int B, int D,
                          ff_goodness_kind kind) {
    const float sign = goodness_neg(kind) ? -2.0f : 2.0f, div = goodness_mean(kind) ? (float)D : 1.0f;
    for (int b = 0; b < B; b++) {
        float c = sign * dg[b] / div;
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

/* Distance-Forward N-pair margin loss (see fflib.h).  Per sample b, with z_j = gneg[j,b] -
 * gpos[b] + margin: L_b = log(1 + sum_j e^z_j), p_j = e^z_j / (1 + sum e^z), dL/dgneg[j,b] =
 * p_j / B, dL/dgpos[b] = -sum_j p_j / B.  Computed with the largest of 0 and the z_j taken out. */
float ff_df_loss(float *dgpos, float *dgneg, const float *gpos, const float *gneg, int B, int N,
                 float margin) {
    double L = 0.0;
    for (int b = 0; b < B; b++) {
        double M = 0.0;
        for (int j = 0; j < N; j++) {
            double z = (double)gneg[(size_t)j * B + b] - gpos[b] + margin;
            M = z > M ? z : M;
        }
        double sum = exp(-M);
        for (int j = 0; j < N; j++) sum += exp((double)gneg[(size_t)j * B + b] - gpos[b] + margin - M);
        L += M + log(sum);
        double tot = 0.0;
        for (int j = 0; j < N; j++) {
            double p = exp((double)gneg[(size_t)j * B + b] - gpos[b] + margin - M) / sum;
            tot += p;
            if (dgneg) dgneg[(size_t)j * B + b] = (float)(p / B);
        }
        if (dgpos) dgpos[b] = (float)(-tot / B);
    }
    return (float)(L / B);
}

float ff_ae_loss(float *rec, float *dy, float *gw, float *gb, const float *y, const float *x,
                 const float *W, const float *b, int B, int O, int I) {
    ff_linear_forward(rec, y, W, b, B, O, I);
    size_t n = (size_t)B * I;
    double L = 0.0, c = 2.0 / (double)n;
    for (size_t i = 0; i < n; i++) {
        double e = (double)rec[i] - x[i];
        L += e * e;
        rec[i] = (float)(c * e);
    }
    if (dy || gw || gb) ff_linear_backward(dy, gw, gb, rec, y, W, B, O, I);
    return (float)(L / (double)n);
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

void ff_softmax_rows(float *probs, const float *logits, int n, int K) {
    for (int r = 0; r < n; r++) {
        const float *z = logits + (size_t)r * K;
        float *p = probs + (size_t)r * K, m = z[0];
        for (int k = 1; k < K; k++) m = z[k] > m ? z[k] : m;
        double sum = 0.0;
        for (int k = 0; k < K; k++) sum += exp((double)z[k] - m);
        for (int k = 0; k < K; k++) p[k] = (float)(exp((double)z[k] - m) / sum);
    }
}

/* ------------------------------------------------------------------ the loss table */

/* FF (eq. 1) and SymBa on the goodness of positive rows [0,B) and negative rows [B,2B); DF on
 * positive rows [0,B) and the K - 1 groups of negative rows after them. */
static float pair_loss(const ff_block_loss *bl, const float *y, float *dy, int B, int T, int OC,
                       int HW, int K, const int64_t *labels, const ff_loss_scratch *s) {
    (void)K; (void)labels;
    int D = OC * HW;
    ff_goodness_forward(s->g, y, T, D, bl->goodness);
    float loss = bl->kind == FF_LOSS_FF ? ff_ff_loss(s->dg, s->dg + B, s->g, s->g + B, B, bl->theta)
               : bl->kind == FF_LOSS_DF ? ff_df_loss(s->dg, s->dg + B, s->g, s->g + B, B, T / B - 1, bl->margin)
                                        : ff_symba_loss(s->dg, s->dg + B, s->g, s->g + B, B, bl->alpha);
    ff_goodness_backward(dy, s->dg, y, T, D, bl->goodness);
    return loss;
}
static void goodness_scores(const ff_block_loss *bl, const float *y, int R, int OC, int HW, int K,
                            float *out, size_t stride, size_t kstride, const ff_loss_scratch *s) {
    (void)K; (void)kstride;
    ff_goodness_forward(s->g, y, R, OC * HW, bl->goodness);
    for (int r = 0; r < R; r++) out[r * stride] = s->g[r];
}

/* PvN on group goodness G (B,J): FF loss of G[b,y] against the mean of the other groups;
 * dG += w dL/dG. */
static float pvn_loss(float *dG, const float *G, const int64_t *y, int B, int J, float theta, float w) {
    double L = 0.0;
    for (int b = 0; b < B; b++) {
        const float *g = G + (size_t)b * J;
        double other = 0.0;
        for (int j = 0; j < J; j++) if (j != y[b]) other += g[j];
        other /= (J - 1);
        double zp = (double)theta - g[y[b]], zn = other - theta;
        L += ff_softplus(zp) + ff_softplus(zn);
        double sp = -ff_sigmoid(zp) / B, sn = ff_sigmoid(zn) / B / (J - 1);
        for (int j = 0; j < J; j++) dG[(size_t)b * J + j] += (float)(w * (j == y[b] ? sp : sn));
    }
    return (float)(L / B);
}

/* CwC (CwComp eq. 3: softmax cross-entropy over the K group goodness values), mixed with PvN
 * by pvn_weight w: (1-w) CwC + w PvN.  PvN alone is w = 1.  DF_CWC is the DF N-pair margin
 * loss on the group goodness: log(1 + sum_{j != y} exp(G_j - G_y + margin)), which is the
 * softmax cross-entropy of the logits G + margin * (1 - onehot(y)) (no PvN part). */
static float group_loss(const ff_block_loss *bl, const float *y, float *dy, int B, int T, int OC,
                        int HW, int K, const int64_t *labels, const ff_loss_scratch *s) {
    (void)T;
    int S = OC / K;
    float w = bl->kind == FF_LOSS_PVN ? 1.0f : bl->kind == FF_LOSS_DF_CWC ? 0.0f : bl->pvn_weight;
    float loss = 0.0f;
    ff_group_goodness_forward(s->G, y, B, K, S, HW);
    if (bl->kind == FF_LOSS_DF_CWC)   /* the margin moves every wrong group's logit up */
        for (int b = 0; b < B; b++)
            for (int k = 0; k < K; k++)
                if (k != labels[b]) s->G[(size_t)b * K + k] += bl->margin;
    if (w < 1.0f) {
        loss = (1.0f - w) * ff_softmax_xent(s->dG, NULL, s->G, labels, B, K);
        for (size_t i = 0; i < (size_t)B * K; i++) s->dG[i] *= 1.0f - w;
    } else {
        memset(s->dG, 0, (size_t)B * K * sizeof(float));
    }
    if (w > 0.0f) loss += w * pvn_loss(s->dG, s->G, labels, B, K, bl->theta, w);
    ff_group_goodness_backward(dy, s->dG, y, B, K, S, HW);
    return loss;
}
static void group_scores(const ff_block_loss *bl, const float *y, int R, int OC, int HW, int K,
                         float *out, size_t stride, size_t kstride, const ff_loss_scratch *s) {
    (void)bl;
    ff_group_goodness_forward(s->G, y, R, K, OC / K, HW);
    for (int r = 0; r < R; r++)
        for (int k = 0; k < K; k++) out[r * stride + k * kstride] = s->G[(size_t)r * K + k];
}

/* Softmax cross-entropy on a K-wide output (the backprop baseline). */
static float xent_loss(const ff_block_loss *bl, const float *y, float *dy, int B, int T, int OC,
                       int HW, int K, const int64_t *labels, const ff_loss_scratch *s) {
    (void)bl; (void)T; (void)OC; (void)HW; (void)s;
    return ff_softmax_xent(dy, NULL, y, labels, B, K);
}
static void logit_scores(const ff_block_loss *bl, const float *y, int R, int OC, int HW, int K,
                         float *out, size_t stride, size_t kstride, const ff_loss_scratch *s) {
    (void)bl; (void)OC; (void)HW; (void)s;
    for (int r = 0; r < R; r++)
        for (int k = 0; k < K; k++) out[r * stride + k * kstride] = y[(size_t)r * K + k];
}

/* The UFF autoencoder cell: the block's output (T label-free rows) reconstructs the block's
 * input through the block's decoder (ff_ae_loss). */
static float ae_loss(const ff_block_loss *bl, const float *y, float *dy, int B, int T, int OC, int HW,
                     int K, const int64_t *labels, const ff_loss_scratch *s) {
    (void)bl; (void)B; (void)K; (void)labels;
    return ff_ae_loss(s->rec, dy, s->dec_gw, s->dec_gb, y, s->in, s->dec_w, s->dec_b, T, OC * HW, s->in_w);
}

/* by ff_loss_kind */
const ff_loss_ops ff_losses[FF_NUM_LOSSES] = {
    [FF_LOSS_FF] = {"ff", FF_NEG_ONE, 0, 0, pair_loss, goodness_scores},
    [FF_LOSS_SYMBA] = {"symba", FF_NEG_ONE, 0, 0, pair_loss, goodness_scores},
    [FF_LOSS_CWC] = {"cwc", 0, 1, 0, group_loss, group_scores},
    [FF_LOSS_PVN] = {"pvn", 0, 1, 0, group_loss, group_scores},
    [FF_LOSS_XENT] = {"xent", 0, 0, 1, xent_loss, logit_scores},
    [FF_LOSS_DF] = {"df", FF_NEG_ALL, 0, 0, pair_loss, goodness_scores},
    [FF_LOSS_AE] = {"ae", FF_NEG_NONE, 0, 0, ae_loss, NULL, 1},
    [FF_LOSS_DF_CWC] = {"df-cwc", 0, 1, 0, group_loss, group_scores},
};
