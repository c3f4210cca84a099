/* ff_layers.c - the layer-kind table: one row per kind with its shape rule, saved floats,
 * initialisation, forward and backward over the kernels of the other files.  Adding a layer
 * kind is a kernel, a row here, an enum value in fflib.h and a Python class. */
#include <limits.h>
#include <math.h>
#include <string.h>
#include "ff_internal.h"

static const float *wptr(const ff_ctx *c, const ff_layer *L) { return c->net->params + L->w_off; }
static const float *bptr(const ff_ctx *c, const ff_layer *L) {
    return L->b_n ? c->net->params + L->b_off : NULL;
}

static size_t no_aux(const ff_layer *L) { (void)L; return 0; }
static size_t out_aux(const ff_layer *L) { return ff_layer_out(L); }   /* argmax per output */
static size_t row_aux(const ff_layer *L) { (void)L; return 1; }        /* a scale per row */
static void no_init(ff_net *net, ff_layer *L, uint64_t *rng) { (void)net; (void)L; (void)rng; }

/* Shapes past these limits are refused before any size is computed from them. */
static ff_status check_out(ff_net *net, const ff_layer *L, const char *what) {
    if (L->OC <= 0 || L->OH <= 0 || L->OW <= 0 || L->OC > FF_MAX_DIM || L->OH > FF_MAX_DIM ||
        L->OW > FF_MAX_DIM || ff_layer_out(L) > FF_MAX_ROW_FLOATS)
        return ff_fail(net, FF_ERR_SHAPE, "%s: output shape (%d, %d, %d) is empty or larger than "
                       "%zu values per sample", what, L->OC, L->OH, L->OW, FF_MAX_ROW_FLOATS);
    return FF_OK;
}

/* PyTorch's default for Linear and Conv2d: weight and bias uniform(-1/sqrt(fan_in), ..). */
static void init_fan_in(ff_net *net, ff_layer *L, uint64_t *rng) {
    size_t fan_in = L->w_n / (size_t)L->OC;
    float bound = 1.0f / sqrtf((float)fan_in);
    float *p = net->params;
    for (size_t i = 0; i < L->w_n; i++) p[L->w_off + i] = (2.0f * ff_rng_uniform(rng) - 1.0f) * bound;
    for (size_t i = 0; i < L->b_n; i++) p[L->b_off + i] = (2.0f * ff_rng_uniform(rng) - 1.0f) * bound;
}

/* ------------------------------------------------------------------ linear */
static ff_status linear_shape(ff_net *net, ff_layer *L) {
    if (L->OC <= 0 || L->OC > FF_MAX_DIM)
        return ff_fail(net, FF_ERR_ARG, "linear: out_features must be in [1, %d], got %d", FF_MAX_DIM, L->OC);
    size_t in = ff_layer_in(L);   /* a linear layer sees its input flattened */
    L->C = (int)in; L->H = L->W = 1;
    L->OH = L->OW = 1;
    L->w_n = (size_t)L->OC * in; L->b_n = L->bias ? (size_t)L->OC : 0;
    return check_out(net, L, "linear");
}
static ff_status linear_forward(const ff_ctx *c, const ff_layer *L, const float *x, float *y,
                                float *aux, int R, int T) {
    (void)aux; (void)T;
    ff_linear_forward(y, x, wptr(c, L), bptr(c, L), R, L->C, L->OC);
    return FF_OK;
}
static ff_status linear_backward(const ff_ctx *c, const ff_layer *L, float *dx, float *gw, float *gb,
                                 float *dy, const float *x, const float *y, const float *aux, int T) {
    (void)y; (void)aux;
    ff_linear_backward(dx, gw, gb, dy, x, wptr(c, L), T, L->C, L->OC);
    return FF_OK;
}

/* ------------------------------------------------------------------ conv2d */
static ff_status conv_shape(ff_net *net, ff_layer *L) {
    if (L->OC <= 0 || L->OC > FF_MAX_DIM || L->k <= 0 || L->k > FF_MAX_DIM || L->stride <= 0 ||
        L->stride > FF_MAX_DIM || L->pad < 0 || L->pad > FF_MAX_DIM || L->groups <= 0)
        return ff_fail(net, FF_ERR_ARG, "conv2d: out_channels, kernel_size, stride and groups must be "
                       "positive and padding >= 0 (each at most %d), got out_channels=%d, kernel_size=%d, "
                       "stride=%d, padding=%d, groups=%d", FF_MAX_DIM, L->OC, L->k, L->stride, L->pad,
                       L->groups);
    if (L->C % L->groups || L->OC % L->groups)
        return ff_fail(net, FF_ERR_SHAPE, "conv2d: groups must divide the input channels (%d) and "
                       "out_channels (%d), got groups=%d", L->C, L->OC, L->groups);
    long long ph = (long long)L->H + 2LL * L->pad, pw = (long long)L->W + 2LL * L->pad;
    if (ph < L->k || pw < L->k)
        return ff_fail(net, FF_ERR_SHAPE, "conv2d: the kernel must fit the padded input: kernel_size=%d, "
                       "padded input %lldx%lld (input %dx%d, padding %d)", L->k, ph, pw, L->H, L->W, L->pad);
    L->OH = (int)((ph - L->k) / L->stride + 1);
    L->OW = (int)((pw - L->k) / L->stride + 1);
    L->w_n = (size_t)L->OC * (size_t)(L->C / L->groups) * (size_t)L->k * (size_t)L->k;
    L->b_n = L->bias ? (size_t)L->OC : 0;
    return check_out(net, L, "conv2d");
}
static ff_status conv_forward(const ff_ctx *c, const ff_layer *L, const float *x, float *y,
                              float *aux, int R, int T) {
    (void)aux; (void)T;
    return ff_conv2d_forward(y, x, wptr(c, L), bptr(c, L), R, L->C, L->H, L->W, L->OC, L->k, L->k,
                             L->stride, L->pad, L->groups, c->w->conv_ws, c->w->conv_parts);
}
static ff_status conv_backward(const ff_ctx *c, const ff_layer *L, float *dx, float *gw, float *gb,
                               float *dy, const float *x, const float *y, const float *aux, int T) {
    (void)y; (void)aux;
    return ff_conv2d_backward(dx, gw, gb, dy, x, wptr(c, L), T, L->C, L->H, L->W, L->OC, L->k, L->k,
                              L->stride, L->pad, L->groups, c->w->conv_ws, c->w->conv_parts);
}

/* ------------------------------------------------------------------ batchnorm2d */
static ff_status bn_shape(ff_net *net, ff_layer *L) {
    if (!(L->eps > 0.0f) || !isfinite(L->eps) || !(L->momentum >= 0.0f && L->momentum <= 1.0f))
        return ff_fail(net, FF_ERR_ARG, "batchnorm2d: eps must be finite and > 0 and momentum in "
                       "[0, 1], got eps=%g, momentum=%g", (double)L->eps, (double)L->momentum);
    L->w_n = L->b_n = L->affine ? (size_t)L->C : 0;
    return check_out(net, L, "batchnorm2d");
}
static void bn_init(ff_net *net, ff_layer *L, uint64_t *rng) {
    (void)rng;
    for (size_t c = 0; c < L->w_n; c++) net->params[L->w_off + c] = 1.0f;
    for (int c = 0; c < L->C; c++) net->buffers[L->rv_off + (size_t)c] = 1.0f;
}
static ff_status bn_forward(const ff_ctx *c, const ff_layer *L, const float *x, float *y,
                            float *aux, int R, int T) {
    (void)aux;
    ff_net *net = c->net;
    const float *gm = L->affine ? wptr(c, L) : NULL, *bt = L->affine ? bptr(c, L) : NULL;
    float *mean = net->saved + L->sv_off, *rstd = mean + L->C;
    int HW = L->H * L->W;
    if (!c->training) {
        ff_batchnorm2d_forward_eval(y, x, net->buffers + L->rm_off, net->buffers + L->rv_off, gm, bt,
                                    R, L->C, HW, L->eps);
        return FF_OK;
    }
    /* statistics of the first T rows; the other rows (the head's neutral ones) are normalised
     * with them and so never influence a gradient */
    ff_batchnorm2d_forward_train(y, mean, rstd, net->buffers + L->rm_off, net->buffers + L->rv_off, x,
                                 gm, bt, T, L->C, HW, L->eps, c->update_stats ? L->momentum : 0.0f);
    for (int r = T; r < R; r++)
        for (int ch = 0; ch < L->C; ch++) {
            const float *xc = x + ((size_t)r * L->C + ch) * HW;
            float *yc = y + ((size_t)r * L->C + ch) * HW;
            float sc = rstd[ch] * (gm ? gm[ch] : 1.0f), sh = bt ? bt[ch] : 0.0f;
            for (int h = 0; h < HW; h++) yc[h] = (xc[h] - mean[ch]) * sc + sh;
        }
    return FF_OK;
}
static ff_status bn_backward(const ff_ctx *c, const ff_layer *L, float *dx, float *gw, float *gb,
                             float *dy, const float *x, const float *y, const float *aux, int T) {
    (void)y; (void)aux;
    const float *mean = c->net->saved + L->sv_off, *rstd = mean + L->C;
    ff_batchnorm2d_backward(dx, gw, gb, dy, x, mean, rstd, L->affine ? wptr(c, L) : NULL, T, L->C,
                            L->H * L->W);
    return FF_OK;
}

/* ------------------------------------------------------------------ relu */
static ff_status same_shape(ff_net *net, ff_layer *L) { (void)net; (void)L; return FF_OK; }
static ff_status relu_forward(const ff_ctx *c, const ff_layer *L, const float *x, float *y,
                              float *aux, int R, int T) {
    (void)c; (void)aux; (void)T;
    ff_relu_forward(y, x, (size_t)R * ff_layer_in(L));
    return FF_OK;
}
/* dx == dy masks the gradient in place */
static ff_status relu_backward(const ff_ctx *c, const ff_layer *L, float *dx, float *gw, float *gb,
                               float *dy, const float *x, const float *y, const float *aux, int T) {
    (void)c; (void)gw; (void)gb; (void)x; (void)aux;
    if (dx) ff_relu_backward(dx, dy, y, (size_t)T * ff_layer_in(L));
    return FF_OK;
}

/* ------------------------------------------------------------------ maxpool2d */
static ff_status pool_shape(ff_net *net, ff_layer *L) {
    if (L->k <= 0 || L->stride <= 0 || L->k > FF_MAX_DIM || L->stride > FF_MAX_DIM)
        return ff_fail(net, FF_ERR_ARG, "maxpool2d: kernel_size and stride must be in [1, %d], got "
                       "%d and %d", FF_MAX_DIM, L->k, L->stride);
    if (L->k > L->H || L->k > L->W)
        return ff_fail(net, FF_ERR_SHAPE, "maxpool2d: kernel_size=%d is larger than its input (%dx%d)",
                       L->k, L->H, L->W);
    L->OH = (L->H - L->k) / L->stride + 1;
    L->OW = (L->W - L->k) / L->stride + 1;
    return check_out(net, L, "maxpool2d");
}
static ff_status pool_forward(const ff_ctx *c, const ff_layer *L, const float *x, float *y,
                              float *aux, int R, int T) {
    (void)c; (void)T;
    ff_maxpool2d_forward(y, (int32_t *)aux, x, R, L->C, L->H, L->W, L->k, L->stride);
    return FF_OK;
}
static ff_status pool_backward(const ff_ctx *c, const ff_layer *L, float *dx, float *gw, float *gb,
                               float *dy, const float *x, const float *y, const float *aux, int T) {
    (void)c; (void)gw; (void)gb; (void)x; (void)y;
    if (dx) ff_maxpool2d_backward(dx, dy, (const int32_t *)aux, T, L->C, L->H, L->W, L->OH, L->OW);
    return FF_OK;
}

/* ------------------------------------------------------------------ flatten */
static ff_status flatten_shape(ff_net *net, ff_layer *L) {
    L->OC = (int)ff_layer_in(L); L->OH = L->OW = 1;
    return check_out(net, L, "flatten");
}
static ff_status flatten_forward(const ff_ctx *c, const ff_layer *L, const float *x, float *y,
                                 float *aux, int R, int T) {
    (void)c; (void)aux; (void)T;
    if (y != x) memcpy(y, x, (size_t)R * ff_layer_out(L) * sizeof(float));
    return FF_OK;
}
static ff_status flatten_backward(const ff_ctx *c, const ff_layer *L, float *dx, float *gw, float *gb,
                                  float *dy, const float *x, const float *y, const float *aux, int T) {
    (void)c; (void)gw; (void)gb; (void)x; (void)y; (void)aux;
    if (dx && dx != dy) memcpy(dx, dy, (size_t)T * ff_layer_out(L) * sizeof(float));
    return FF_OK;
}

/* ------------------------------------------------------------------ lennorm */
static ff_status lennorm_shape(ff_net *net, ff_layer *L) {
    if (L->norm != FF_NORM_L2 && L->norm != FF_NORM_RMS && L->norm != FF_NORM_NONE)
        return ff_fail(net, FF_ERR_ARG, "lennorm: kind must be none (0), l2 (1) or rms (2), got %d",
                       (int)L->norm);
    if (!(L->eps > 0.0f) || !isfinite(L->eps))   /* > 0: an all-zero row then normalises to zeros */
        return ff_fail(net, FF_ERR_ARG, "lennorm: eps must be finite and > 0 (as a float32), got %g", (double)L->eps);
    return check_out(net, L, "lennorm");
}
static ff_status lennorm_forward(const ff_ctx *c, const ff_layer *L, const float *x, float *y,
                                 float *aux, int R, int T) {
    (void)c; (void)T;
    ff_lennorm_forward(y, aux, x, R, (int)ff_layer_in(L), L->norm, L->eps);
    return FF_OK;
}
static ff_status lennorm_backward(const ff_ctx *c, const ff_layer *L, float *dx, float *gw, float *gb,
                                  float *dy, const float *x, const float *y, const float *aux, int T) {
    (void)c; (void)gw; (void)gb; (void)y;
    if (dx) ff_lennorm_backward(dx, dy, x, aux, T, (int)ff_layer_in(L), L->norm, L->eps);
    return FF_OK;
}

/* ------------------------------------------------------------------ the table (by ff_layer_kind) */
const ff_layer_ops ff_layer_kinds[FF_NUM_LAYER_KINDS] = {
    [FF_LAYER_LINEAR] = {"linear", FF_KF_UNIT, linear_shape, no_aux, init_fan_in,
                         linear_forward, linear_backward},
    [FF_LAYER_CONV2D] = {"conv2d", FF_KF_UNIT, conv_shape, no_aux, init_fan_in,
                         conv_forward, conv_backward},
    [FF_LAYER_BATCHNORM2D] = {"batchnorm2d", FF_KF_LEADS | FF_KF_STATS, bn_shape, no_aux, bn_init,
                              bn_forward, bn_backward},
    [FF_LAYER_RELU] = {"relu", FF_KF_INPLACE, same_shape, no_aux, no_init, relu_forward, relu_backward},
    [FF_LAYER_MAXPOOL2D] = {"maxpool2d", 0, pool_shape, out_aux, no_init, pool_forward, pool_backward},
    [FF_LAYER_FLATTEN] = {"flatten", FF_KF_LEADS | FF_KF_INPLACE, flatten_shape, no_aux, no_init,
                          flatten_forward, flatten_backward},
    [FF_LAYER_LENNORM] = {"lennorm", FF_KF_LEADS, lennorm_shape, row_aux, no_init, lennorm_forward,
                          lennorm_backward},
};

/* ------------------------------------------------------------------ the fused step */
/* Conv2d -> ReLU -> MaxPool2d where the conv and ReLU outputs are needed by nothing else: run
 * chunk by chunk through the work's fuse scratch, keeping only the pooled output and argmax.
 * The backward masks the pooled gradient by (pooled > 0), the ReLU's mask at every argmax. */
int ff_fuse_rows(size_t w) {
    size_t r = FF_FUSE_FLOATS / (w ? w : 1);
    return r < 1 ? 1 : r > (1u << 20) ? (1 << 20) : (int)r;
}

ff_status ff_fused_forward(const ff_ctx *c, const ff_layer *L, const ff_layer *P, const float *x,
                           float *y, int32_t *idx, int R) {
    const float *w = wptr(c, L), *bias = bptr(c, L);
    size_t cin = ff_layer_in(L), cout = ff_layer_out(L), pout = ff_layer_out(P);
    int ch = ff_fuse_rows(cout);
    float *s = c->w->fuse_ws;
    for (int r0 = 0; r0 < R; r0 += ch) {
        int n = R - r0 < ch ? R - r0 : ch;
        ff_status st = ff_conv2d_forward(s, x + (size_t)r0 * cin, w, bias, n, L->C, L->H, L->W, L->OC,
                                         L->k, L->k, L->stride, L->pad, L->groups, c->w->conv_ws,
                                         c->w->conv_parts);
        if (st != FF_OK) return st;
        ff_relu_forward(s, s, (size_t)n * cout);
        ff_maxpool2d_forward(y + (size_t)r0 * pout, idx + (size_t)r0 * pout, s, n, P->C, P->H, P->W,
                             P->k, P->stride);
    }
    return FF_OK;
}

ff_status ff_fused_backward(const ff_ctx *c, const ff_layer *L, const ff_layer *P, const float *x,
                            float *dout, float *dx, float *gw, float *gb, const float *y,
                            const int32_t *idx, int T) {
    const float *w = wptr(c, L);
    size_t cin = ff_layer_in(L), cout = ff_layer_out(L), pout = ff_layer_out(P);
    int ch = ff_fuse_rows(cout);
    float *s = c->w->fuse_ws;
    ff_relu_backward(dout, dout, y, (size_t)T * pout);
    for (int r0 = 0; r0 < T; r0 += ch) {
        int n = T - r0 < ch ? T - r0 : ch;
        memset(s, 0, (size_t)n * cout * sizeof(float));
        ff_maxpool2d_backward(s, dout + (size_t)r0 * pout, idx + (size_t)r0 * pout, n, P->C, P->H, P->W,
                              P->OH, P->OW);
        ff_status st = ff_conv2d_backward(dx ? dx + (size_t)r0 * cin : NULL, gw, gb, s, x + (size_t)r0 * cin,
                                          w, n, L->C, L->H, L->W, L->OC, L->k, L->k, L->stride, L->pad,
                                          L->groups, c->w->conv_ws, c->w->conv_parts);
        if (st != FF_OK) return st;
    }
    return FF_OK;
}
