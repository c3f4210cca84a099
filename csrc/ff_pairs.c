/* ff_pairs.c - label-free negatives built from the data themselves: self-contrastive pairs
 * (Chen et al., "Self-Contrastive Forward-Forward", Nat. Commun. 2025) and Hinton's hybrid
 * images (Hinton 2022, "The Forward-Forward Algorithm", sec. 3.2).  Sample b's partner is
 * sample (b + shift) mod B of the same batch, so a partner is always another sample. */
#include "fflib.h"

ff_status ff_scff_pairs(float *pos, float *neg, const float *x, const float *x2, int B, int D, int shift) {
    if (B < 2 || D < 1 || shift < 1 || shift >= B) return FF_ERR_SHAPE;
    for (int b = 0; b < B; b++) {
        const float *a = x + (size_t)b * D, *s = x2 + (size_t)b * D;
        const float *o = x2 + (size_t)((b + shift) % B) * D;
        float *p = pos + (size_t)b * D, *n = neg + (size_t)b * D;
        for (int i = 0; i < D; i++) {
            p[i] = 0.5f * (a[i] + s[i]);
            n[i] = 0.5f * (a[i] + o[i]);
        }
    }
    return FF_OK;
}

/* One [1/4, 1/2, 1/4] pass along a line of n values spaced by `step`, edges clamped. */
static void blur_line(float *out, const float *in, int n, size_t step) {
    for (int i = 0; i < n; i++) {
        float l = in[(size_t)(i > 0 ? i - 1 : 0) * step], r = in[(size_t)(i + 1 < n ? i + 1 : n - 1) * step];
        out[(size_t)i * step] = 0.25f * l + 0.5f * in[(size_t)i * step] + 0.25f * r;
    }
}

ff_status ff_hybrid_masks(float *mask, float *work, const float *bits, int B, int H, int W, int iterations) {
    if (B < 1 || H < 1 || W < 1 || iterations < 0) return FF_ERR_SHAPE;
    size_t HW = (size_t)H * W;
    for (int b = 0; b < B; b++) {
        float *m = mask + (size_t)b * HW;
        const float *src = bits + (size_t)b * HW;
        if (m != src) for (size_t i = 0; i < HW; i++) m[i] = src[i];
        for (int it = 0; it < iterations; it++) {
            for (int h = 0; h < H; h++) blur_line(work + (size_t)h * W, m + (size_t)h * W, W, 1);
            for (int w = 0; w < W; w++) blur_line(m + w, work + w, H, (size_t)W);
        }
        for (size_t i = 0; i < HW; i++) m[i] = m[i] > 0.5f ? 1.0f : 0.0f;
    }
    return FF_OK;
}

ff_status ff_hybrid_images(float *out, const float *x, const float *mask, int B, int C, int HW, int shift) {
    if (B < 2 || C < 1 || HW < 1 || shift < 1 || shift >= B) return FF_ERR_SHAPE;
    size_t D = (size_t)C * HW;
    for (int b = 0; b < B; b++) {
        const float *a = x + (size_t)b * D, *o = x + (size_t)((b + shift) % B) * D;
        const float *m = mask + (size_t)b * HW;
        float *y = out + (size_t)b * D;
        for (int c = 0; c < C; c++)
            for (int i = 0; i < HW; i++) {
                size_t j = (size_t)c * HW + i;
                y[j] = m[i] * a[j] + (1.0f - m[i]) * o[j];
            }
    }
    return FF_OK;
}
