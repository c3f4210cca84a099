/* ff_net.c - the FF network: layers cut into blocks, each trained by its own local loss.
 *
 * Rows.  A training step stacks the rows it needs into one matrix so each layer runs one
 * GEMM: rows [0,B) positive (true label), [B,2B) negative (wrong label), and, when the
 * one-pass head trains, [2B,3B) neutral.  Losses and backward use the first T = 2B rows
 * only; batch-norm statistics come from those T rows too (neutral rows are normalised with
 * the same statistics and so never influence the gradient).
 *
 * Memory.  `carry` holds the normalised input of the block being run; `acts` holds the
 * outputs of that block's layers (ReLU and Flatten work in place); the next block
 * reuses `acts`.  Only one block's activations are ever alive.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fflib.h"

#define FF_MAX_LAYERS 256

typedef struct {
    ff_layer_kind kind;
    int C, H, W;              /* input shape */
    int OC, OH, OW;           /* output shape */
    int k, stride, pad, groups, bias, affine;
    float eps, momentum;      /* batch-norm; eps also for length normalisation */
    ff_norm_kind norm;        /* length normalisation */
    size_t w_off, w_n, b_off, b_n;  /* into the parameter (and grad, m, v) arenas */
    size_t rm_off, rv_off;          /* batch-norm running stats, into `buffers` */
    size_t sv_off;                  /* batch-norm saved mean and rstd, into `saved` */
    ff_opt_config opt;
    long step;
    /* per-run placement (set while a block runs) */
    int inplace;              /* output aliases the input */
    size_t act_off;           /* into acts (floats) */
    size_t idx_off;           /* maxpool argmax (int32 slots) or lennorm scales, into acts */
} ff_layer;

struct ff_net {
    int C, H, W, K, D;        /* raw input shape, D = C*H*W */
    int Din;                  /* encoded input size seen by layer 0 (D, or D + H*W with an embedding) */
    ff_label_kind label;
    float *pattern;           /* (K, H*W) label patterns: Fourier waves, or NULL */
    int nl, finalized, training;
    ff_layer layers[FF_MAX_LAYERS + 2];   /* layers[nl]: the head (linear), when present;
                                             layers[nl+1]: the label embedding, when used */
    int nblocks, firsts[FF_MAX_LAYERS], ends[FF_MAX_LAYERS];   /* block b: layers [firsts[b], ends[b]) */
    uint8_t starts_block[FF_MAX_LAYERS];   /* some block starts at this layer (no in-place output) */
    int has_head, nhead, head_layers[FF_MAX_LAYERS], F;
    ff_config cfg;
    uint64_t rng[4];
    /* arenas.  Gradients: a full arena (grads) exists only when needed (split compute_grads /
     * optimizer_step, overlapping blocks, gradient views from Python); otherwise the fused step
     * keeps one block's gradients in gscratch and the head's and embedding's in gtail, and
     * steps each block right after its backward, so a training step holds one block's
     * gradients rather than the whole network's. */
    float *params, *grads, *m, *v;
    size_t nparams, tail_off;     /* tail_off: where the head and embedding parameters start */
    float *gtail, *gscratch;
    size_t gscratch_cap, gscratch_base;
    float *buffers, *saved;
    size_t nbuffers, nsaved;
    /* workspace: forward buffers for rows_cap rows, backward buffers for train_cap rows (a
     * training step's neutral head rows run forward only) */
    int rows_cap, train_cap;
    size_t ws_floats;
    float *ws;
    float *carry, *acts, *d0, *d1, *g, *dg, *scale, *conv_ws, *feat, *logits, *dlogits, *xtmp;
    float *G;                 /* (rows, K) group goodness */
    float *dxin;              /* gradient w.r.t. the encoded input (label embedding) */
    size_t acts_cap;          /* floats per row available in acts */
    size_t carry_w, d0_w, d1_w, head_w;  /* floats per row of carry, d0, d1; head scratch in d1 */
    float *fuse_ws;           /* scratch of the fused conv -> ReLU -> max-pool triples */
    size_t fuse_cap;          /* its floats */
    size_t convws_cap;        /* floats of conv_ws */
    int conv_parts;           /* parallel parts conv_ws has room for */
    int64_t *lab;             /* per-row labels of the current step */
};

static ff_status reserve_rows(ff_net *net, int rows, int trows);

/* Floats of scratch a fused Conv2d -> ReLU -> MaxPool2d runs through (see fused_triple). */
#define FF_FUSE_FLOATS ((size_t)1 << 22)

/* ------------------------------------------------------------------ small helpers */

const char *ff_status_str(ff_status s) {
    switch (s) {
    case FF_OK: return "ok";
    case FF_ERR_NOMEM: return "out of memory";
    case FF_ERR_ARG: return "invalid argument or configuration";
    case FF_ERR_SHAPE: return "sizes do not fit together";
    case FF_ERR_LABEL: return "label out of range (or a negative label equal to the true one)";
    case FF_ERR_NONFINITE: return "NaN or infinity encountered";
    case FF_ERR_STATE: return "call not valid in the network's current state";
    }
    return "unknown status";
}

int ff_all_finite(const float *x, size_t n) {
    /* x - x is 0 for finite values and NaN for inf/NaN; summing keeps one branch per call */
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++) acc += x[i] - x[i];
    return acc == 0.0f;
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
/* xoshiro256** */
static uint64_t rng_next(uint64_t *s) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
    return r;
}
static float rng_uniform(uint64_t *s) { return (float)(rng_next(s) >> 40) * (1.0f / 16777216.0f); }
static int rng_below(uint64_t *s, int n) { return (int)(((rng_next(s) >> 32) * (uint64_t)n) >> 32); }

static size_t layer_in(const ff_layer *L) { return (size_t)L->C * L->H * L->W; }
static size_t layer_out(const ff_layer *L) { return (size_t)L->OC * L->OH * L->OW; }
static int trainable(const ff_layer *L) { return L->w_n + L->b_n > 0; }

ff_status ff_overlay_labels(float *out, const float *x, const int64_t *labels, int B, int D,
                            int K, float label_value) {
    if (K > D) return FF_ERR_SHAPE;
    for (int b = 0; b < B; b++) {
        float *o = out + (size_t)b * D;
        if (o != x + (size_t)b * D) memcpy(o, x + (size_t)b * D, (size_t)D * sizeof(float));
        int64_t y = labels ? labels[b] : -1;
        if (y >= K) return FF_ERR_LABEL;
        for (int k = 0; k < K; k++) o[k] = y < 0 ? label_value / K : (k == y ? label_value : 0.0f);
    }
    return FF_OK;
}

ff_status ff_net_set_label_encoding(ff_net *net, ff_label_kind kind) {
    if (net->nl > 0 || net->finalized) return FF_ERR_STATE;
    if (kind < FF_LABEL_ONEHOT || kind > FF_LABEL_NONE) return FF_ERR_ARG;
    if (kind == FF_LABEL_FOURIER && net->H * net->W == 1) return FF_ERR_ARG;  /* needs an image */
    net->label = kind;
    net->Din = net->D + (kind == FF_LABEL_EMBEDDING ? net->H * net->W : 0);
    return FF_OK;
}

ff_label_kind ff_net_label_encoding(const ff_net *net) { return net->label; }

/* Encode one raw sample x (D) with label y (-1: neutral) into out (Din). */
static void encode_row(const ff_net *net, float *out, const float *x, int64_t y) {
    int K = net->K, HW = net->H * net->W;
    float v = net->cfg.label_value;
    memcpy(out, x, (size_t)net->D * sizeof(float));
    switch (net->label) {
    case FF_LABEL_ONEHOT:
        if (HW == 1) {
            for (int k = 0; k < K; k++) out[k] = y < 0 ? v / K : (k == y ? v : 0.0f);
        } else {   /* the first K pixels of every channel plane */
            for (int c = 0; c < net->C; c++)
                for (int k = 0; k < K; k++) out[(size_t)c * HW + k] = y < 0 ? v / K : (k == y ? v : 0.0f);
        }
        break;
    case FF_LABEL_FOURIER:   /* superposed on every channel; neutral: the mean of all waves */
        for (int c = 0; c < net->C; c++) {
            float *o = out + (size_t)c * HW;
            if (y >= 0) {
                const float *p = net->pattern + (size_t)y * HW;
                for (int i = 0; i < HW; i++) o[i] += v * p[i];
            } else {
                for (int k = 0; k < K; k++) {
                    const float *p = net->pattern + (size_t)k * HW;
                    for (int i = 0; i < HW; i++) o[i] += v / K * p[i];
                }
            }
        }
        break;
    case FF_LABEL_EMBEDDING: {   /* the extra channel; neutral: the mean map */
        const ff_layer *E = &net->layers[net->nl + 1];
        const float *emb = net->params + E->w_off;
        float *o = out + net->D;
        if (y >= 0) memcpy(o, emb + (size_t)y * HW, (size_t)HW * sizeof(float));
        else {
            for (int i = 0; i < HW; i++) o[i] = 0.0f;
            for (int k = 0; k < K; k++)
                for (int i = 0; i < HW; i++) o[i] += emb[(size_t)k * HW + i] / K;
        }
        break;
    }
    case FF_LABEL_NONE:
        break;
    }
}

ff_config ff_config_default(void) {
    ff_config c;
    c.loss = FF_LOSS_FF; c.goodness = FF_GOODNESS_SUM; c.theta = 2.0f; c.alpha = 4.0f;
    c.norm = FF_NORM_L2; c.norm_eps = 1e-4f; c.label_value = 1.0f; c.pvn_weight = 0.0f;
    return c;
}

ff_opt_config ff_opt_config_default(void) {
    ff_opt_config o;
    o.kind = FF_OPT_ADAM; o.lr = 1e-3f; o.beta1 = 0.9f; o.beta2 = 0.999f; o.eps = 1e-8f;
    o.momentum = 0.0f; o.dampening = 0.0f; o.nesterov = 0; o.weight_decay = 0.0f;
    return o;
}

/* ------------------------------------------------------------------ building */

ff_net *ff_net_create(int C, int H, int W, int K, uint64_t seed) {
    if (C <= 0 || H <= 0 || W <= 0 || K < 2) return NULL;
    ff_net *net = calloc(1, sizeof(ff_net));
    if (!net) return NULL;
    net->C = C; net->H = H; net->W = W; net->K = K; net->D = net->Din = C * H * W;
    net->label = FF_LABEL_ONEHOT;
    net->training = 1;
    net->cfg = ff_config_default();
    uint64_t s = seed;
    for (int i = 0; i < 4; i++) net->rng[i] = splitmix64(&s);
    return net;
}

void ff_net_destroy(ff_net *net) {
    if (!net) return;
    free(net->params); free(net->grads); free(net->m); free(net->v); free(net->gtail);
    free(net->gscratch);
    free(net->buffers); free(net->saved); free(net->ws); free(net->lab); free(net->pattern);
    free(net);
}

static ff_layer *new_layer(ff_net *net, ff_layer_kind kind, ff_status *st) {
    if (net->finalized) { *st = FF_ERR_STATE; return NULL; }
    if (net->nl >= FF_MAX_LAYERS) { *st = FF_ERR_ARG; return NULL; }
    ff_layer *L = &net->layers[net->nl];
    memset(L, 0, sizeof(*L));
    L->kind = kind;
    if (net->nl == 0) {
        L->C = net->C + (net->label == FF_LABEL_EMBEDDING); L->H = net->H; L->W = net->W;
    }
    else {
        ff_layer *P = &net->layers[net->nl - 1];
        L->C = P->OC; L->H = P->OH; L->W = P->OW;
    }
    L->OC = L->C; L->OH = L->H; L->OW = L->W;
    L->opt = ff_opt_config_default();
    *st = FF_OK;
    return L;
}

ff_status ff_net_add_linear(ff_net *net, int out_features, int bias) {
    ff_status st; ff_layer *L = new_layer(net, FF_LAYER_LINEAR, &st);
    if (!L) return st;
    if (out_features <= 0) return FF_ERR_ARG;
    /* a linear layer sees its input flattened */
    L->C = (int)layer_in(L); L->H = L->W = 1;
    L->OC = out_features; L->OH = L->OW = 1;
    L->w_n = (size_t)out_features * L->C; L->b_n = bias ? (size_t)out_features : 0;
    L->bias = bias != 0;
    net->nl++;
    return FF_OK;
}

ff_status ff_net_add_conv2d(ff_net *net, int out_channels, int kernel, int stride, int pad,
                            int groups, int bias) {
    ff_status st; ff_layer *L = new_layer(net, FF_LAYER_CONV2D, &st);
    if (!L) return st;
    if (out_channels <= 0 || kernel <= 0 || stride <= 0 || pad < 0 || groups <= 0) return FF_ERR_ARG;
    if (L->C % groups || out_channels % groups) return FF_ERR_SHAPE;
    if (L->H + 2 * pad < kernel || L->W + 2 * pad < kernel) return FF_ERR_SHAPE;
    L->OC = out_channels; L->k = kernel; L->stride = stride; L->pad = pad; L->groups = groups;
    L->OH = (L->H + 2 * pad - kernel) / stride + 1;
    L->OW = (L->W + 2 * pad - kernel) / stride + 1;
    L->w_n = (size_t)out_channels * (L->C / groups) * kernel * kernel;
    L->b_n = bias ? (size_t)out_channels : 0;
    L->bias = bias != 0;
    net->nl++;
    return FF_OK;
}

ff_status ff_net_add_batchnorm2d(ff_net *net, float eps, float momentum, int affine) {
    ff_status st; ff_layer *L = new_layer(net, FF_LAYER_BATCHNORM2D, &st);
    if (!L) return st;
    if (!(eps > 0.0f) || !(momentum >= 0.0f && momentum <= 1.0f)) return FF_ERR_ARG;
    L->eps = eps; L->momentum = momentum; L->affine = affine != 0;
    L->w_n = L->b_n = affine ? (size_t)L->C : 0;
    net->nl++;
    return FF_OK;
}

ff_status ff_net_add_lennorm(ff_net *net, ff_norm_kind kind, float eps) {
    ff_status st; ff_layer *L = new_layer(net, FF_LAYER_LENNORM, &st);
    if (!L) return st;
    if (kind != FF_NORM_L2 && kind != FF_NORM_RMS && kind != FF_NORM_NONE) return FF_ERR_ARG;
    if (!(eps >= 0.0f) || !isfinite(eps)) return FF_ERR_ARG;
    L->norm = kind; L->eps = eps;
    net->nl++;
    return FF_OK;
}

ff_status ff_net_add_relu(ff_net *net) {
    ff_status st; ff_layer *L = new_layer(net, FF_LAYER_RELU, &st);
    if (!L) return st;
    net->nl++;
    return FF_OK;
}

ff_status ff_net_add_maxpool2d(ff_net *net, int kernel, int stride) {
    ff_status st; ff_layer *L = new_layer(net, FF_LAYER_MAXPOOL2D, &st);
    if (!L) return st;
    if (kernel <= 0 || stride <= 0) return FF_ERR_ARG;
    if (kernel > L->H || kernel > L->W) return FF_ERR_SHAPE;
    L->k = kernel; L->stride = stride;
    L->OH = (L->H - kernel) / stride + 1; L->OW = (L->W - kernel) / stride + 1;
    net->nl++;
    return FF_OK;
}

ff_status ff_net_add_flatten(ff_net *net) {
    ff_status st; ff_layer *L = new_layer(net, FF_LAYER_FLATTEN, &st);
    if (!L) return st;
    L->OC = (int)layer_in(L); L->OH = L->OW = 1;
    net->nl++;
    return FF_OK;
}

ff_status ff_net_set_head(ff_net *net, int nsel, const int *sel) {
    if (net->finalized) return FF_ERR_STATE;
    if (nsel <= 0 || nsel > net->nl) return FF_ERR_ARG;
    for (int i = 0; i < nsel; i++)
        if (sel[i] < 0 || sel[i] >= net->nl || (i && sel[i] <= sel[i - 1])) return FF_ERR_ARG;
    net->has_head = 1; net->nhead = nsel; net->F = 0;
    for (int i = 0; i < nsel; i++) {
        net->head_layers[i] = sel[i];
        net->F += (int)layer_out(&net->layers[sel[i]]);
    }
    return FF_OK;
}

ff_status ff_net_set_block_ranges(ff_net *net, int nblocks, const int *firsts, const int *lasts) {
    if (nblocks <= 0 || nblocks > net->nl || firsts[0] != 0 || lasts[nblocks - 1] != net->nl)
        return FF_ERR_ARG;
    for (int b = 0; b < nblocks; b++) {
        if (lasts[b] <= firsts[b] || lasts[b] > net->nl) return FF_ERR_ARG;
        /* ordered, gap-free, each block ending after the previous one and starting inside it */
        if (b && (firsts[b] <= firsts[b - 1] || firsts[b] > lasts[b - 1] || lasts[b] <= lasts[b - 1]))
            return FF_ERR_ARG;
        int any = 0;
        for (int i = firsts[b]; i < lasts[b]; i++) any |= trainable(&net->layers[i]);
        if (!any) return FF_ERR_ARG;
    }
    net->nblocks = nblocks;
    memcpy(net->firsts, firsts, (size_t)nblocks * sizeof(int));
    memcpy(net->ends, lasts, (size_t)nblocks * sizeof(int));
    memset(net->starts_block, 0, sizeof(net->starts_block));
    for (int b = 0; b < nblocks; b++) net->starts_block[firsts[b]] = 1;
    /* a new cut may need a larger activation area (reserve only ever grows it) */
    return net->rows_cap ? reserve_rows(net, net->rows_cap, net->train_cap) : FF_OK;
}

ff_status ff_net_set_blocks(ff_net *net, int nblocks, const int *ends) {
    int firsts[FF_MAX_LAYERS];
    if (nblocks <= 0 || nblocks > net->nl) return FF_ERR_ARG;
    for (int b = 0; b < nblocks; b++) firsts[b] = b ? ends[b - 1] : 0;
    return ff_net_set_block_ranges(net, nblocks, firsts, ends);
}

int ff_net_default_blocks(const ff_net *net, int *ends) {
    /* a block per Linear/Conv2d, which takes along the LenNorm/BatchNorm2d/Flatten layers
     * directly before it and the ReLU/MaxPool2d after it; never a block without parameters */
    int nb = 0;
    for (int i = 1; i < net->nl; i++) {
        ff_layer_kind k = net->layers[i].kind;
        if (k != FF_LAYER_LINEAR && k != FF_LAYER_CONV2D) continue;
        int first = nb ? ends[nb - 1] : 0, s = i, any = 0;
        while (s - 1 > first && (net->layers[s - 1].kind == FF_LAYER_LENNORM ||
                                 net->layers[s - 1].kind == FF_LAYER_BATCHNORM2D ||
                                 net->layers[s - 1].kind == FF_LAYER_FLATTEN)) s--;
        for (int j = first; j < s; j++) any |= trainable(&net->layers[j]) && net->layers[j].kind != FF_LAYER_BATCHNORM2D;
        if (any) ends[nb++] = s;
    }
    ends[nb++] = net->nl;
    return nb;
}

static ff_status default_blocks(ff_net *net) {
    int ends[FF_MAX_LAYERS];
    int nb = ff_net_default_blocks(net, ends);
    return ff_net_set_blocks(net, nb, ends);
}

/* Allocate the full gradient arena (once), carrying over the head's and embedding's. */
static ff_status full_grads(ff_net *net) {
    if (net->grads) return FF_OK;
    net->grads = calloc(net->nparams ? net->nparams : 1, sizeof(float));
    if (!net->grads) return FF_ERR_NOMEM;
    memcpy(net->grads + net->tail_off, net->gtail, (net->nparams - net->tail_off) * sizeof(float));
    return FF_OK;
}

/* Where the gradient of the parameter at arena offset off lives. */
static float *grad_at(ff_net *net, size_t off) {
    if (net->grads) return net->grads + off;
    if (off >= net->tail_off) return net->gtail + (off - net->tail_off);
    return net->gscratch + (off - net->gscratch_base);
}

static int slot_used(const ff_net *net, int i) {
    if (i < net->nl) return 1;
    if (i == net->nl) return net->has_head;
    return i == net->nl + 1 && net->label == FF_LABEL_EMBEDDING;
}

/* Scodellaro-style spatially extended labels: class k is a plane wave over the whole image,
 *   p_k(h, w) = cos(2 pi (h cos(phi_k) + w sin(phi_k)) / lambda_k),
 * orientation phi_k = pi k / K and wavelength lambda_k = max(H, W) / (2 + k mod 3) pixels, so
 * classes differ in orientation and, every third class, in frequency. */
static void fourier_patterns(float *p, int K, int H, int W) {
    const double pi = 3.14159265358979323846;
    for (int k = 0; k < K; k++) {
        double phi = pi * k / K, lam = (double)(H > W ? H : W) / (2 + k % 3);
        for (int h = 0; h < H; h++)
            for (int w = 0; w < W; w++)
                p[((size_t)k * H + h) * W + w] =
                    (float)cos(2.0 * pi * (h * cos(phi) + w * sin(phi)) / lam);
    }
}

static void init_uniform(uint64_t *rng, float *p, size_t n, float bound) {
    for (size_t i = 0; i < n; i++) p[i] = (2.0f * rng_uniform(rng) - 1.0f) * bound;
}

ff_status ff_net_finalize(ff_net *net) {
    if (net->finalized) return FF_ERR_STATE;
    if (net->nl == 0) return FF_ERR_ARG;
    int any = 0;
    for (int i = 0; i < net->nl; i++) any |= trainable(&net->layers[i]);
    if (!any) return FF_ERR_ARG;
    /* a one-hot label must fit: in the row of a flat input, in each channel plane of an image */
    if (net->label == FF_LABEL_ONEHOT &&
        (net->H * net->W == 1 ? net->K > net->D : net->K > net->H * net->W)) return FF_ERR_SHAPE;
    if (net->has_head) {
        ff_layer *Hd = &net->layers[net->nl];
        memset(Hd, 0, sizeof(*Hd));
        Hd->kind = FF_LAYER_LINEAR; Hd->C = net->F; Hd->H = Hd->W = 1;
        Hd->OC = net->K; Hd->OH = Hd->OW = 1; Hd->bias = 1;
        Hd->w_n = (size_t)net->K * net->F; Hd->b_n = (size_t)net->K;
        Hd->opt = ff_opt_config_default();
    }
    if (net->label == FF_LABEL_EMBEDDING) {
        /* one trainable H*W map per class, fed to layer 0 as an extra input channel */
        ff_layer *E = &net->layers[net->nl + 1];
        memset(E, 0, sizeof(*E));
        E->kind = FF_LAYER_LINEAR; E->C = net->H * net->W; E->H = E->W = 1;
        E->OC = net->K; E->OH = E->OW = 1;
        E->w_n = (size_t)net->K * net->H * net->W;
        E->opt = ff_opt_config_default();
    }
    if (net->label == FF_LABEL_FOURIER) {
        net->pattern = malloc((size_t)net->K * net->H * net->W * sizeof(float));
        if (!net->pattern) return FF_ERR_NOMEM;
        fourier_patterns(net->pattern, net->K, net->H, net->W);
    }
    int nall = net->nl + 2;
    size_t np = 0, nb = 0, ns = 0;
    for (int i = 0; i < nall; i++) {
        if (i == net->nl) net->tail_off = np;
        if (!slot_used(net, i)) continue;
        ff_layer *L = &net->layers[i];
        /* align each array to 16 floats so SIMD loads never straddle parameter arrays */
        L->w_off = np; np += (L->w_n + 15) & ~(size_t)15;
        L->b_off = np; np += (L->b_n + 15) & ~(size_t)15;
        if (L->kind == FF_LAYER_BATCHNORM2D) {
            L->rm_off = nb; L->rv_off = nb + (size_t)L->C; nb += 2 * (size_t)L->C;
            L->sv_off = ns; ns += 2 * (size_t)L->C;
        }
    }
    net->nparams = np; net->nbuffers = nb; net->nsaved = ns;
    net->params = calloc(np ? np : 1, sizeof(float));
    net->m = calloc(np ? np : 1, sizeof(float));
    net->v = calloc(np ? np : 1, sizeof(float));
    net->gtail = calloc(np - net->tail_off + 1, sizeof(float));
    net->buffers = calloc(nb ? nb : 1, sizeof(float));
    net->saved = calloc(ns ? ns : 1, sizeof(float));
    if (!net->params || !net->m || !net->v || !net->gtail || !net->buffers || !net->saved)
        return FF_ERR_NOMEM;
    for (int i = 0; i < nall; i++) {
        if (!slot_used(net, i)) continue;
        ff_layer *L = &net->layers[i];
        if (i == net->nl + 1) {   /* the label embedding: small random maps */
            init_uniform(net->rng, net->params + L->w_off, L->w_n, 0.5f * net->cfg.label_value);
        } else if (L->kind == FF_LAYER_LINEAR || L->kind == FF_LAYER_CONV2D) {
            size_t fan_in = L->w_n / (size_t)L->OC;
            float bound = 1.0f / sqrtf((float)fan_in);
            init_uniform(net->rng, net->params + L->w_off, L->w_n, bound);
            init_uniform(net->rng, net->params + L->b_off, L->b_n, bound);
        } else if (L->kind == FF_LAYER_BATCHNORM2D) {
            for (size_t c = 0; c < L->w_n; c++) net->params[L->w_off + c] = 1.0f;
            for (int c = 0; c < L->C; c++) net->buffers[L->rv_off + (size_t)c] = 1.0f;
        }
    }
    net->finalized = 1;
    if (!net->nblocks) return default_blocks(net);
    return FF_OK;
}

/* ------------------------------------------------------------------ configuration */

ff_status ff_net_set_config(ff_net *net, const ff_config *c) {
    if (!(c->theta == c->theta) || !isfinite(c->theta) || !isfinite(c->alpha) || !(c->alpha > 0.0f))
        return FF_ERR_ARG;
    if (c->loss < FF_LOSS_FF || c->loss > FF_LOSS_XENT) return FF_ERR_ARG;
    if (!(c->pvn_weight >= 0.0f && c->pvn_weight <= 1.0f)) return FF_ERR_ARG;
    if (c->goodness != FF_GOODNESS_SUM && c->goodness != FF_GOODNESS_MEAN) return FF_ERR_ARG;
    if (c->norm != FF_NORM_NONE && c->norm != FF_NORM_L2 && c->norm != FF_NORM_RMS) return FF_ERR_ARG;
    if (!(c->norm_eps >= 0.0f) || !isfinite(c->label_value)) return FF_ERR_ARG;
    net->cfg = *c;
    return FF_OK;
}
ff_config ff_net_get_config(const ff_net *net) { return net->cfg; }

static ff_layer *layer_at(ff_net *net, int layer) {
    if (layer == -1) return net->has_head && net->finalized ? &net->layers[net->nl] : NULL;
    if (layer == -2)
        return net->label == FF_LABEL_EMBEDDING && net->finalized ? &net->layers[net->nl + 1] : NULL;
    if (layer < 0 || layer >= net->nl) return NULL;
    return &net->layers[layer];
}

ff_status ff_net_set_opt(ff_net *net, int layer, const ff_opt_config *o) {
    ff_layer *L = layer_at(net, layer);
    if (!L) return FF_ERR_ARG;
    if (o->kind != FF_OPT_ADAM && o->kind != FF_OPT_SGD) return FF_ERR_ARG;
    if (!(o->lr >= 0.0f) || !isfinite(o->lr) || !(o->weight_decay >= 0.0f)) return FF_ERR_ARG;
    if (!(o->beta1 >= 0.0f && o->beta1 < 1.0f) || !(o->beta2 >= 0.0f && o->beta2 < 1.0f) ||
        !(o->eps >= 0.0f) || !(o->momentum >= 0.0f) || !(o->dampening >= 0.0f && o->dampening <= 1.0f))
        return FF_ERR_ARG;
    if (o->nesterov && (o->momentum <= 0.0f || o->dampening != 0.0f)) return FF_ERR_ARG;
    L->opt = *o;
    return FF_OK;
}
ff_status ff_net_get_opt(const ff_net *net, int layer, ff_opt_config *o) {
    ff_layer *L = layer_at((ff_net *)net, layer);
    if (!L) return FF_ERR_ARG;
    *o = L->opt;
    return FF_OK;
}
long ff_net_get_step(const ff_net *net, int layer) {
    ff_layer *L = layer_at((ff_net *)net, layer);
    return L ? L->step : -1;
}
ff_status ff_net_set_step(ff_net *net, int layer, long t) {
    ff_layer *L = layer_at(net, layer);
    if (!L || t < 0) return FF_ERR_ARG;
    L->step = t;
    return FF_OK;
}
void ff_net_get_rng(const ff_net *net, uint64_t st[4]) { memcpy(st, net->rng, sizeof(net->rng)); }
void ff_net_set_rng(ff_net *net, const uint64_t st[4]) { memcpy(net->rng, st, sizeof(net->rng)); }
void ff_net_set_training(ff_net *net, int training) { net->training = training != 0; }

int ff_net_num_layers(const ff_net *net) { return net->nl; }
int ff_net_num_blocks(const ff_net *net) { return net->nblocks; }
int ff_net_num_classes(const ff_net *net) { return net->K; }
int ff_net_input_size(const ff_net *net) { return net->D; }
int ff_net_feature_size(const ff_net *net) { return net->has_head ? net->F : 0; }
int ff_net_has_head(const ff_net *net) { return net->has_head; }
ff_layer_kind ff_net_layer_kind(const ff_net *net, int layer) { return net->layers[layer].kind; }
void ff_net_layer_shape(const ff_net *net, int layer, int *C, int *H, int *W) {
    const ff_layer *L = &net->layers[layer];
    *C = L->OC; *H = L->OH; *W = L->OW;
}
ff_status ff_net_layer_info(const ff_net *net, int layer, ff_layer_info *info) {
    const ff_layer *L = layer_at((ff_net *)net, layer);
    if (!L) return FF_ERR_ARG;
    info->kind = L->kind; info->C = L->C; info->H = L->H; info->W = L->W;
    info->OC = L->OC; info->OH = L->OH; info->OW = L->OW;
    info->kernel = L->k; info->stride = L->stride; info->pad = L->pad; info->groups = L->groups;
    info->bias = L->bias;
    return FF_OK;
}

void ff_net_block_range(const ff_net *net, int b, int *first, int *last) {
    *first = net->firsts[b];
    *last = net->ends[b];
}
size_t ff_net_num_params(const ff_net *net) {
    size_t n = 0;
    for (int i = 0; i < net->nl + 2; i++)
        if (slot_used(net, i)) n += net->layers[i].w_n + net->layers[i].b_n;
    return n;
}
size_t ff_net_workspace_bytes(const ff_net *net) { return net->ws_floats * sizeof(float); }

float *ff_net_param(ff_net *net, int layer, ff_param_kind which, size_t *count) {
    ff_layer *L = layer_at(net, layer);
    *count = 0;
    if (!L || !net->finalized) return NULL;
    float *base = NULL;
    size_t off = 0, n = 0;
    switch (which) {
    case FF_P_WEIGHT: case FF_P_GRAD_WEIGHT: case FF_P_M_WEIGHT: case FF_P_V_WEIGHT:
        off = L->w_off; n = L->w_n; break;
    case FF_P_BIAS: case FF_P_GRAD_BIAS: case FF_P_M_BIAS: case FF_P_V_BIAS:
        off = L->b_off; n = L->b_n; break;
    case FF_P_RUNNING_MEAN: case FF_P_RUNNING_VAR:
        if (L->kind != FF_LAYER_BATCHNORM2D) return NULL;
        *count = (size_t)L->C;
        return net->buffers + (which == FF_P_RUNNING_MEAN ? L->rm_off : L->rv_off);
    }
    switch (which) {
    case FF_P_WEIGHT: case FF_P_BIAS: base = net->params; break;
    case FF_P_GRAD_WEIGHT: case FF_P_GRAD_BIAS:
        if (full_grads(net) != FF_OK) return NULL;
        base = net->grads;
        break;
    case FF_P_M_WEIGHT: case FF_P_M_BIAS: base = net->m; break;
    default: base = net->v; break;
    }
    if (!n) return NULL;
    *count = n;
    return base + off;
}

/* ------------------------------------------------------------------ workspace */

static int is_head_layer(const ff_net *net, int i) {
    for (int h = 0; h < net->nhead; h++) if (net->head_layers[h] == i) return 1;
    return 0;
}

/* Conv2d -> ReLU -> MaxPool2d at layers i, i+1, i+2, all inside the run [f, l), none of the
 * three's outputs needed outside it (no block starts inside, the conv and ReLU feed no head):
 * the conv output is then only an intermediate.  Such a triple runs in chunks of rows through
 * a small scratch (net->fuse_ws) and keeps only the pooled output and its argmax; its
 * backward masks the pooled gradient by (pooled > 0), which is the ReLU's mask at every
 * argmax, and runs pool and conv backward chunk by chunk through the same scratch. */
static int fused_triple(const ff_net *net, int i, int l) {
    return i + 2 < l && net->layers[i].kind == FF_LAYER_CONV2D &&
           net->layers[i + 1].kind == FF_LAYER_RELU && net->layers[i + 2].kind == FF_LAYER_MAXPOOL2D &&
           !net->starts_block[i + 1] && !net->starts_block[i + 2] &&
           !is_head_layer(net, i) && !is_head_layer(net, i + 1);
}

/* Rows per chunk of a fused triple whose conv output has `w` floats per row. */
static int fuse_rows(size_t w) {
    size_t r = FF_FUSE_FLOATS / (w ? w : 1);
    return r < 1 ? 1 : r > (1u << 20) ? (1 << 20) : (int)r;
}

/* A layer's output may overwrite its input (ReLU, Flatten) unless it opens a block: then the
 * input belongs to the block before and may still be needed. */
static int runs_inplace(const ff_net *net, int i, int f) {
    ff_layer_kind k = net->layers[i].kind;
    return i > f && !net->starts_block[i] && (k == FF_LAYER_RELU || k == FF_LAYER_FLATTEN);
}

/* Floats per row needed by the activations of layers [f, l) run as one stretch. */
static size_t block_act_floats(const ff_net *net, int f, int l) {
    size_t n = 0;
    for (int i = f; i < l; i++) {
        const ff_layer *L = &net->layers[i];
        if (fused_triple(net, i, l)) { i++; continue; }   /* conv and ReLU: no stored output */
        if (!runs_inplace(net, i, f)) n += layer_out(L);
        if (L->kind == FF_LAYER_MAXPOOL2D) n += layer_out(L);  /* argmax slots */
        if (L->kind == FF_LAYER_LENNORM) n += 1;               /* the row's scale */
    }
    return n;
}

/* Widths (floats per row) of the backward ping-pong buffers d0 and d1 for block [f, l):
 * d0 receives the loss gradient of the block's output, then every layer but an in-place ReLU
 * writes its input gradient to the other buffer (the first layer writes to din instead). */
static void backward_widths(const ff_net *net, int f, int l, size_t w[2]) {
    int cur = 0;
    if (layer_out(&net->layers[l - 1]) > w[0]) w[0] = layer_out(&net->layers[l - 1]);
    for (int i = l - 1; i > f; i--) {
        const ff_layer *L = &net->layers[i];
        if (i - 2 >= f && fused_triple(net, i - 2, l)) {   /* conv input gradient, unless i-2 == f */
            i -= 2;
            if (i == f) break;
            L = &net->layers[i];
        } else if (L->kind == FF_LAYER_RELU) continue;
        cur ^= 1;
        if (layer_in(L) > w[cur]) w[cur] = layer_in(L);
    }
}

/* Scratch floats the fused triples of the run [f, l) need on up to `rows` rows. */
static size_t fuse_floats(const ff_net *net, int f, int l, int rows) {
    size_t n = 0;
    for (int i = f; i < l; i++) {
        if (!fused_triple(net, i, l)) continue;
        size_t w = layer_out(&net->layers[i]), r = (size_t)fuse_rows(w);
        if (r > (size_t)rows) r = (size_t)rows;
        if (r * w > n) n = r * w;
    }
    return n;
}

/* Size the workspace for forward passes of `rows` rows of which the first `trows` also run
 * backward (trows 0: keep the current backward capacity).  Every buffer is as wide as the
 * current cut needs: carry holds a block's input, acts the largest block's activations, d0
 * and d1 its gradients (and d1 the head's normalised features). */
static ff_status reserve_rows(ff_net *net, int rows, int trows) {
    if (!net->finalized) return FF_ERR_STATE;
    if (rows <= 0 || trows < 0 || trows > rows) return FF_ERR_ARG;
    if (rows < net->K) rows = net->K;        /* multi-pass needs K rows for one sample */
    size_t acts = 0, carry = (size_t)net->Din, dw[2] = {0, 0}, headw = 0, convws = 0, fuse = 0;
    int parts = ff_get_num_threads();  /* conv scratch for that many image groups at once */
    if (parts < net->conv_parts) parts = net->conv_parts;
    for (int b = 0; b < net->nblocks; b++) {
        int f = net->firsts[b], l = net->ends[b];
        size_t a = block_act_floats(net, f, l);
        if (a > acts) acts = a;
        /* a block's input (training) and a segment's output (inference) pass through carry */
        if (f > 0 && layer_out(&net->layers[f - 1]) > carry) carry = layer_out(&net->layers[f - 1]);
        if (layer_out(&net->layers[l - 1]) > carry) carry = layer_out(&net->layers[l - 1]);
        backward_widths(net, f, l, dw);
        size_t fz = fuse_floats(net, f, l, rows);
        if (fz > fuse) fuse = fz;
    }
    for (int i = 0; i < net->nl; i++) {
        const ff_layer *L = &net->layers[i];
        size_t a = block_act_floats(net, i, i + 1);
        if (a > acts) acts = a;
        if (L->kind == FF_LAYER_CONV2D) {
            size_t c = ff_conv2d_workspace(L->C, L->H, L->W, L->OC, L->k, L->k, L->stride, L->pad,
                                           L->groups, parts);
            if (c > convws) convws = c;
        }
    }
    /* inference runs segments between block ends, which may span layers of two blocks */
    for (int b = 0, f = 0; b < net->nblocks; f = net->ends[b], b++) {
        size_t a = block_act_floats(net, f, net->ends[b]), fz = fuse_floats(net, f, net->ends[b], rows);
        if (a > acts) acts = a;
        if (fz > fuse) fuse = fz;
    }
    for (int h = 0; h < net->nhead; h++)
        if (layer_out(&net->layers[net->head_layers[h]]) > headw)
            headw = layer_out(&net->layers[net->head_layers[h]]);
    /* the largest block's parameter span, for its gradients in the lean fused step */
    size_t span = 0;
    for (int b = 0; b < net->nblocks; b++) {
        int f = net->firsts[b], l = net->ends[b];
        size_t hi = l < net->nl ? net->layers[l].w_off : net->tail_off;
        if (hi - net->layers[f].w_off > span) span = hi - net->layers[f].w_off;
    }
    if (span > net->gscratch_cap) {
        float *g = malloc(span * sizeof(float));
        if (!g) return FF_ERR_NOMEM;
        free(net->gscratch);
        net->gscratch = g; net->gscratch_cap = span;
    }
    if (rows <= net->rows_cap && trows <= net->train_cap && acts <= net->acts_cap &&
        carry <= net->carry_w && dw[0] <= net->d0_w && dw[1] <= net->d1_w && headw <= net->head_w &&
        convws <= net->convws_cap && fuse <= net->fuse_cap)
        return FF_OK;
    /* grow only: every capacity is the larger of the old and the new */
#define FF_GROW(v, cap) do { if ((v) < (cap)) (v) = (cap); } while (0)
    FF_GROW(rows, net->rows_cap); FF_GROW(trows, net->train_cap); FF_GROW(acts, net->acts_cap);
    FF_GROW(carry, net->carry_w); FF_GROW(dw[0], net->d0_w); FF_GROW(dw[1], net->d1_w);
    FF_GROW(headw, net->head_w); FF_GROW(convws, net->convws_cap); FF_GROW(fuse, net->fuse_cap);
#undef FF_GROW
    size_t R = (size_t)rows, T = (size_t)trows, F = (size_t)(net->has_head ? net->F : 0);
    size_t K = (size_t)net->K, Din = (size_t)net->Din;
    size_t d1 = T * dw[1] > R * headw ? T * dw[1] : R * headw;
    size_t need = R * carry        /* carry */
                + R * acts         /* acts */
                + T * dw[0] + d1   /* d0, d1 */
                + 3 * R            /* g, dg, scale */
                + R * K            /* G: group goodness */
                + convws + fuse
                + R * F            /* feat */
                + 2 * R * K        /* logits, dlogits */
                + R * Din + T * Din;  /* xtmp (encoded inputs), dxin (their gradient) */
    float *ws = malloc((need ? need : 1) * sizeof(float));
    int64_t *lab = malloc(R * sizeof(int64_t));
    if (!ws || !lab) { free(ws); free(lab); return FF_ERR_NOMEM; }
    free(net->ws); free(net->lab);
    net->ws = ws; net->lab = lab; net->ws_floats = need;
    float *p = ws;
    net->carry = p; p += R * carry;
    net->acts = p; p += R * acts;
    net->d0 = p; p += T * dw[0];
    net->d1 = p; p += d1;
    net->g = p; p += R;
    net->dg = p; p += R;
    net->scale = p; p += R;
    net->G = p; p += R * K;
    net->conv_ws = p; p += convws;
    net->fuse_ws = p; p += fuse;
    net->feat = p; p += R * F;
    net->logits = p; p += R * K;
    net->dlogits = p; p += R * K;
    net->xtmp = p; p += R * Din;
    net->dxin = p;
    net->rows_cap = rows; net->train_cap = trows; net->acts_cap = acts;
    net->carry_w = carry; net->d0_w = dw[0]; net->d1_w = dw[1]; net->head_w = headw;
    net->convws_cap = convws; net->conv_parts = parts; net->fuse_cap = fuse;
    return FF_OK;
}

ff_status ff_net_reserve(ff_net *net, int rows) {
    return reserve_rows(net, rows, rows);
}

/* ------------------------------------------------------------------ running layers */

/* Place the outputs of layers [f, l) in acts. */
static void place_block(ff_net *net, int f, int l, int R) {
    size_t off = 0;
    for (int i = f; i < l; i++) {
        ff_layer *L = &net->layers[i];
        if (fused_triple(net, i, l)) {   /* outputs in fuse_ws, chunk by chunk */
            L->inplace = net->layers[i + 1].inplace = 0;
            L->act_off = net->layers[i + 1].act_off = (size_t)-1;
            i++;
            continue;
        }
        L->inplace = runs_inplace(net, i, f);
        if (!L->inplace) { L->act_off = off; off += (size_t)R * layer_out(L); }
        else L->act_off = net->layers[i - 1].act_off;
        if (L->kind == FF_LAYER_MAXPOOL2D) { L->idx_off = off; off += (size_t)R * layer_out(L); }
        if (L->kind == FF_LAYER_LENNORM) { L->idx_off = off; off += (size_t)R; }
    }
}

static float *act_of(ff_net *net, int i) { return net->acts + net->layers[i].act_off; }

/* Forward of the fused triple at layers i..i+2 on R rows of input x: conv, ReLU and pool
 * chunk by chunk through fuse_ws; the pool output and argmax land in acts. */
static ff_status triple_forward(ff_net *net, int i, const float *x, int R) {
    const ff_layer *L = &net->layers[i], *P = &net->layers[i + 2];
    const float *w = net->params + L->w_off, *bias = L->b_n ? net->params + L->b_off : NULL;
    size_t cin = layer_in(L), cout = layer_out(L), pout = layer_out(P);
    int c = fuse_rows(cout);
    float *y = act_of(net, i + 2);
    int32_t *idx = (int32_t *)(net->acts + P->idx_off);
    for (int r0 = 0; r0 < R; r0 += c) {
        int n = R - r0 < c ? R - r0 : c;
        ff_status st = ff_conv2d_forward(net->fuse_ws, x + (size_t)r0 * cin, w, bias, n, L->C, L->H,
                                         L->W, L->OC, L->k, L->k, L->stride, L->pad, L->groups,
                                         net->conv_ws, net->conv_parts);
        if (st != FF_OK) return st;
        ff_relu_forward(net->fuse_ws, net->fuse_ws, (size_t)n * cout);
        ff_maxpool2d_forward(y + (size_t)r0 * pout, idx + (size_t)r0 * pout, net->fuse_ws, n, P->C,
                             P->H, P->W, P->k, P->stride);
    }
    return FF_OK;
}

/* Backward of the fused triple at layers i..i+2 on T rows: dout (T, pool out) is masked in
 * place by (pooled > 0); dx (or NULL) += the gradient w.r.t. the conv input x. */
static ff_status triple_backward(ff_net *net, int i, const float *x, float *dout, float *dx, int T) {
    const ff_layer *L = &net->layers[i], *P = &net->layers[i + 2];
    const float *w = net->params + L->w_off;
    float *gw = grad_at(net, L->w_off), *gb = L->b_n ? grad_at(net, L->b_off) : NULL;
    size_t cin = layer_in(L), cout = layer_out(L), pout = layer_out(P);
    int c = fuse_rows(cout);
    const float *y = act_of(net, i + 2);
    const int32_t *idx = (const int32_t *)(net->acts + P->idx_off);
    ff_relu_backward(dout, dout, y, (size_t)T * pout);
    for (int r0 = 0; r0 < T; r0 += c) {
        int n = T - r0 < c ? T - r0 : c;
        memset(net->fuse_ws, 0, (size_t)n * cout * sizeof(float));
        ff_maxpool2d_backward(net->fuse_ws, dout + (size_t)r0 * pout, idx + (size_t)r0 * pout, n,
                              P->C, P->H, P->W, P->OH, P->OW);
        ff_status st = ff_conv2d_backward(dx ? dx + (size_t)r0 * cin : NULL, gw, gb, net->fuse_ws,
                                          x + (size_t)r0 * cin, w, n, L->C, L->H, L->W, L->OC, L->k,
                                          L->k, L->stride, L->pad, L->groups, net->conv_ws,
                                          net->conv_parts);
        if (st != FF_OK) return st;
    }
    return FF_OK;
}

/* Forward layers [f, l) on R rows whose input (R, in_size(f)) is `in`.  Batch-norm layers take
 * statistics from the first T rows in training mode (the other rows are normalised with
 * them); those at index >= update_from also update their running statistics. */
static ff_status block_forward(ff_net *net, int f, int l, const float *in, int R, int T,
                               int update_from) {
    place_block(net, f, l, R);
    for (int i = f; i < l; i++) {
        ff_layer *L = &net->layers[i];
        const float *x = i == f ? in : act_of(net, i - 1);
        if (fused_triple(net, i, l)) {
            ff_status st = triple_forward(net, i, x, R);
            if (st != FF_OK) return st;
            i += 2;
            continue;
        }
        float *y = act_of(net, i);
        const float *w = net->params + L->w_off, *bias = L->b_n ? net->params + L->b_off : NULL;
        size_t nin = layer_in(L), nout = layer_out(L);
        ff_status st = FF_OK;
        switch (L->kind) {
        case FF_LAYER_LINEAR:
            ff_linear_forward(y, x, w, bias, R, (int)nin, L->OC);
            break;
        case FF_LAYER_CONV2D:
            st = ff_conv2d_forward(y, x, w, bias, R, L->C, L->H, L->W, L->OC, L->k, L->k,
                                   L->stride, L->pad, L->groups, net->conv_ws, net->conv_parts);
            break;
        case FF_LAYER_BATCHNORM2D: {
            const float *gm = L->affine ? w : NULL, *bt = L->affine ? bias : NULL;
            float *mean = net->saved + L->sv_off, *rstd = mean + L->C;
            int HW = L->H * L->W;
            if (net->training) {
                float *rm = net->buffers + L->rm_off, *rv = net->buffers + L->rv_off;
                float mom = i >= update_from ? L->momentum : 0.0f;
                ff_batchnorm2d_forward_train(y, mean, rstd, rm, rv, x, gm, bt, T, L->C, HW,
                                             L->eps, mom);
                for (int r = T; r < R; r++)
                    for (int c = 0; c < L->C; c++) {
                        const float *xc = x + ((size_t)r * L->C + c) * HW;
                        float *yc = y + ((size_t)r * L->C + c) * HW;
                        float sc = rstd[c] * (gm ? gm[c] : 1.0f), sh = bt ? bt[c] : 0.0f;
                        for (int h = 0; h < HW; h++) yc[h] = (xc[h] - mean[c]) * sc + sh;
                    }
            } else {
                ff_batchnorm2d_forward_eval(y, x, net->buffers + L->rm_off,
                                            net->buffers + L->rv_off, gm, bt, R, L->C, HW, L->eps);
            }
            break;
        }
        case FF_LAYER_RELU:
            ff_relu_forward(y, x, (size_t)R * nin);
            break;
        case FF_LAYER_MAXPOOL2D:
            ff_maxpool2d_forward(y, (int32_t *)(net->acts + L->idx_off), x, R, L->C, L->H, L->W,
                                 L->k, L->stride);
            break;
        case FF_LAYER_FLATTEN:
            if (y != x) memcpy(y, x, (size_t)R * nout * sizeof(float));
            break;
        case FF_LAYER_LENNORM:
            ff_lennorm_forward(y, net->acts + L->idx_off, x, R, (int)nin, L->norm, L->eps);
            break;
        }
        if (st != FF_OK) return st;
    }
    return FF_OK;
}

/* Does layer i of the block starting at f need its input gradient: is there a parameter
 * below it in the block, or a din that wants the block's input gradient? */
static int needs_input_grad(const ff_net *net, int f, int i, const float *din) {
    int below = din != NULL;
    for (int j = f; j < i; j++) below |= trainable(&net->layers[j]);
    return below;
}

/* Backward through layers [f, l) on the first T rows, from dout (T, out_size(l-1)) which is
 * net->d0 on entry.  Adds weight gradients; input gradients stay inside the block, except
 * that din (or NULL) receives the gradient w.r.t. the block's input (for a label embedding). */
static ff_status block_backward(ff_net *net, int f, int l, const float *in, int T, float *din) {
    float *dcur = net->d0, *dnext = net->d1;
    for (int i = l - 1; i >= f; i--) {
        if (i - 2 >= f && fused_triple(net, i - 2, l)) {
            int c = i - 2;
            const float *x = c == f ? in : act_of(net, c - 1);
            float *dx = needs_input_grad(net, f, c, din) ? (c == f ? din : dnext) : NULL;
            if (dx) memset(dx, 0, (size_t)T * layer_in(&net->layers[c]) * sizeof(float));
            ff_status st = triple_backward(net, c, x, dcur, dx, T);
            if (st != FF_OK) return st;
            if (!dx) break;
            float *t = dcur; dcur = dnext; dnext = t;
            i = c;
            continue;
        }
        ff_layer *L = &net->layers[i];
        const float *x = i == f ? in : act_of(net, i - 1);
        const float *y = act_of(net, i);
        size_t nin = layer_in(L), nout = layer_out(L);
        int below = needs_input_grad(net, f, i, din);
        if (L->kind == FF_LAYER_RELU && i > f) {   /* in place: dcur stays the current buffer */
            if (!below) break;
            ff_relu_backward(dcur, dcur, y, (size_t)T * nin);
            continue;
        }
        float *dx = below ? (i == f ? din : dnext) : NULL;
        if (dx) memset(dx, 0, (size_t)T * nin * sizeof(float));
        const float *w = net->params + L->w_off;
        float *gw = grad_at(net, L->w_off), *gb = L->b_n ? grad_at(net, L->b_off) : NULL;
        ff_status st = FF_OK;
        switch (L->kind) {
        case FF_LAYER_LINEAR:
            ff_linear_backward(dx, gw, gb, dcur, x, w, T, (int)nin, L->OC);
            break;
        case FF_LAYER_CONV2D:
            st = ff_conv2d_backward(dx, gw, gb, dcur, x, w, T, L->C, L->H, L->W, L->OC, L->k, L->k,
                                    L->stride, L->pad, L->groups, net->conv_ws, net->conv_parts);
            break;
        case FF_LAYER_BATCHNORM2D: {
            float *mean = net->saved + L->sv_off, *rstd = mean + L->C;
            ff_batchnorm2d_backward(dx, L->affine ? gw : NULL, L->affine ? gb : NULL, dcur, x,
                                    mean, rstd, L->affine ? w : NULL, T, L->C, L->H * L->W);
            break;
        }
        case FF_LAYER_RELU:   /* i == f only: otherwise masked in place above */
            if (dx) ff_relu_backward(dx, dcur, y, (size_t)T * nin);
            break;
        case FF_LAYER_MAXPOOL2D:
            if (dx) ff_maxpool2d_backward(dx, dcur, (const int32_t *)(net->acts + L->idx_off), T,
                                          L->C, L->H, L->W, L->OH, L->OW);
            break;
        case FF_LAYER_FLATTEN:
            if (dx) memcpy(dx, dcur, (size_t)T * nout * sizeof(float));
            break;
        case FF_LAYER_LENNORM:
            if (dx) ff_lennorm_backward(dx, dcur, x, net->acts + L->idx_off, T, (int)nin, L->norm, L->eps);
            break;
        }
        if (st != FF_OK) return st;
        if (!dx) break;
        float *t = dcur; dcur = dnext; dnext = t;
    }
    return FF_OK;
}

static void layer_opt_step(ff_net *net, ff_layer *L) {
    if (!trainable(L)) return;
    L->step++;
    const ff_opt_config *o = &L->opt;
    size_t offs[2] = {L->w_off, L->b_off}, ns[2] = {L->w_n, L->b_n};
    for (int k = 0; k < 2; k++) {
        if (!ns[k]) continue;
        float *p = net->params + offs[k], *g = grad_at(net, offs[k]);
        if (o->kind == FF_OPT_ADAM)
            ff_adam_step(p, net->m + offs[k], net->v + offs[k], g, ns[k], o->lr, o->beta1,
                         o->beta2, o->eps, o->weight_decay, L->step);
        else
            ff_sgd_step(p, net->m + offs[k], g, ns[k], o->lr, o->momentum, o->dampening,
                        o->weight_decay, o->nesterov, L->step);
    }
}

static void zero_layer_grads(ff_net *net, const ff_layer *L) {
    if (L->w_n) memset(grad_at(net, L->w_off), 0, L->w_n * sizeof(float));
    if (L->b_n) memset(grad_at(net, L->b_off), 0, L->b_n * sizeof(float));
}

void ff_net_zero_grad(ff_net *net) {
    if (net->grads) memset(net->grads, 0, net->nparams * sizeof(float));
    if (net->gtail) memset(net->gtail, 0, (net->nparams - net->tail_off) * sizeof(float));
}

/* The label embedding is trained by the loss of the block holding layer 0: dxin holds the
 * gradient w.r.t. the encoded input; each row's extra-channel gradient goes to its label's map. */
static void embedding_backward(ff_net *net, int T) {
    ff_layer *E = &net->layers[net->nl + 1];
    int HW = net->H * net->W, Din = net->Din;
    float *g = grad_at(net, E->w_off);
    for (int r = 0; r < T; r++) {
        const float *dr = net->dxin + (size_t)r * Din + net->D;
        float *gk = g + (size_t)net->lab[r] * HW;
        for (int i = 0; i < HW; i++) gk[i] += dr[i];
    }
}


/* Copy the normalised output of head layer i, rows [r0, r0 + n), into its columns of feat. */
static void gather_features(ff_net *net, int i, int r0, int n) {
    size_t col = 0, d = layer_out(&net->layers[i]);
    for (int h = 0; h < net->nhead && net->head_layers[h] != i; h++)
        col += layer_out(&net->layers[net->head_layers[h]]);
    ff_lennorm_forward(net->d1, net->scale, act_of(net, i) + (size_t)r0 * d, n, (int)d, net->cfg.norm,
                       net->cfg.norm_eps);
    for (int r = 0; r < n; r++)
        memcpy(net->feat + (size_t)r * net->F + col, net->d1 + (size_t)r * d, d * sizeof(float));
}

static ff_status check_labels(const ff_net *net, const int64_t *labels, int B) {
    for (int b = 0; b < B; b++) if (labels[b] < 0 || labels[b] >= net->K) return FF_ERR_LABEL;
    return FF_OK;
}

static void softmax_rows(float *probs, const float *logits, int n, int K) {
    for (int r = 0; r < n; r++) {
        const float *z = logits + (size_t)r * K;
        float *p = probs + (size_t)r * K, m = z[0];
        for (int k = 1; k < K; k++) m = z[k] > m ? z[k] : m;
        double sum = 0.0;
        for (int k = 0; k < K; k++) sum += exp((double)z[k] - m);
        for (int k = 0; k < K; k++) p[k] = (float)(exp((double)z[k] - m) / sum);
    }
}

/* Head forward (+ backward when training) on n feature rows. */
static float head_run(ff_net *net, int n, const int64_t *labels, float *probs, int train) {
    ff_layer *Hd = &net->layers[net->nl];
    const float *w = net->params + Hd->w_off, *bias = net->params + Hd->b_off;
    ff_linear_forward(net->logits, net->feat, w, bias, n, net->F, net->K);
    if (!train) {
        softmax_rows(probs, net->logits, n, net->K);
        return 0.0f;
    }
    float loss = ff_softmax_xent(net->dlogits, probs, net->logits, labels, n, net->K);
    ff_linear_backward(NULL, grad_at(net, Hd->w_off), grad_at(net, Hd->b_off), net->dlogits,
                       net->feat, w, n, net->F, net->K);
    return loss;
}

/* Losses that read the class from the output (channel groups, logits) need no label in the
 * input and no negative rows. */
static int label_free_loss(ff_loss_kind k) { return k == FF_LOSS_CWC || k == FF_LOSS_PVN || k == FF_LOSS_XENT; }

/* PvN on group goodness G (B,J): FF loss of G[b,y] against the mean of the other groups. */
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

/* The local loss of a block whose output y (R rows of Dout = C*HW) was just computed, and its
 * gradient w.r.t. y in d0 (T rows).  Rows: FF/SymBa [0,B) positive, [B,2B) negative; the
 * label-free losses [0,B) with labels lab. */
static ff_status block_loss(ff_net *net, const ff_layer *last, const float *y, int B, int T,
                            float *loss_out) {
    const ff_config *c = &net->cfg;
    int K = net->K, Dout = (int)layer_out(last);
    float *d0 = net->d0, loss;
    memset(d0, 0, (size_t)T * Dout * sizeof(float));
    switch (c->loss) {
    case FF_LOSS_FF: case FF_LOSS_SYMBA:
        ff_goodness_forward(net->g, y, T, Dout, c->goodness);
        loss = c->loss == FF_LOSS_FF ? ff_ff_loss(net->dg, net->dg + B, net->g, net->g + B, B, c->theta)
                                     : ff_symba_loss(net->dg, net->dg + B, net->g, net->g + B, B, c->alpha);
        ff_goodness_backward(d0, net->dg, y, T, Dout, c->goodness);
        break;
    case FF_LOSS_CWC: case FF_LOSS_PVN: {
        if (last->OC % K) return FF_ERR_SHAPE;
        int S = last->OC / K, HW = last->OH * last->OW;
        float *dG = net->dlogits, w = c->loss == FF_LOSS_PVN ? 1.0f : c->pvn_weight;
        ff_group_goodness_forward(net->G, y, B, K, S, HW);
        loss = 0.0f;
        if (w < 1.0f) {
            loss = (1.0f - w) * ff_softmax_xent(dG, NULL, net->G, net->lab, B, K);
            for (size_t i = 0; i < (size_t)B * K; i++) dG[i] *= 1.0f - w;
        } else {
            memset(dG, 0, (size_t)B * K * sizeof(float));
        }
        if (w > 0.0f) loss += w * pvn_loss(dG, net->G, net->lab, B, K, c->theta, w);
        ff_group_goodness_backward(d0, dG, y, B, K, S, HW);
        break;
    }
    case FF_LOSS_XENT:
        if (Dout != K) return FF_ERR_SHAPE;
        loss = ff_softmax_xent(d0, NULL, y, net->lab, B, K);
        break;
    default:
        return FF_ERR_ARG;
    }
    if (!isfinite(loss)) return FF_ERR_NONFINITE;
    *loss_out = loss;
    return FF_OK;
}

/* Does block b contain layer 0 (and so train a label embedding)? */
static int holds_input(const ff_net *net, int b) { return net->firsts[b] == 0; }

ff_status ff_net_train_step(ff_net *net, const float *x, const int64_t *labels,
                            const int64_t *neg_labels, int B, const uint8_t *active,
                            int train_head, int apply_update, float *losses) {
    if (!net->finalized) return FF_ERR_STATE;
    if (B <= 0) return FF_ERR_ARG;
    if (train_head && !net->has_head) return FF_ERR_STATE;
    ff_status st = check_labels(net, labels, B);
    if (st != FF_OK) return st;
    int free_ = label_free_loss(net->cfg.loss);
    if (neg_labels && !free_) {
        st = check_labels(net, neg_labels, B);
        if (st != FF_OK) return st;
        for (int b = 0; b < B; b++) if (neg_labels[b] == labels[b]) return FF_ERR_LABEL;
    }
    int K = net->K, D = net->D, nb = net->nblocks;
    /* training rows T, and B neutral rows for the head; the label-free losses see only
     * neutral-label rows, which also serve the head */
    int T = free_ ? B : 2 * B;
    int head_rows_at = free_ ? 0 : T;
    int R = train_head && !free_ ? T + B : T;
    st = reserve_rows(net, R, T);
    if (st != FF_OK) return st;
    if (losses) for (int b = 0; b <= nb; b++) losses[b] = 0.0f;

    int64_t *lab = net->lab;
    for (int b = 0; b < B; b++) {
        lab[b] = labels[b];
        if (!free_) {
            if (neg_labels) lab[B + b] = neg_labels[b];
            else {
                int k = rng_below(net->rng, K - 1);
                lab[B + b] = k >= labels[b] ? k + 1 : k;
            }
        }
        if (R > T) lab[T + b] = -1;
    }
    for (int r = 0; r < R; r++)
        encode_row(net, net->xtmp + (size_t)r * net->Din, x + (size_t)(r % B) * D, free_ ? -1 : lab[r]);

    /* layers in an active block are trained; their gradients are zeroed first and every
     * layer steps once at the end (a layer in two overlapping blocks sums both gradients) */
    uint8_t train_layer[FF_MAX_LAYERS + 2] = {0};
    int stop = 0, embed = 0;
    for (int b = 0; b < nb; b++) {
        if (active && !active[b]) continue;
        stop = b + 1;
        for (int i = net->firsts[b]; i < net->ends[b]; i++) train_layer[i] = 1;
        if (holds_input(net, b) && net->label == FF_LABEL_EMBEDDING) embed = 1;
    }
    if (train_head) {
        int lastl = net->head_layers[net->nhead - 1];
        for (int b = 0; b < nb; b++) if (net->ends[b] > lastl) { if (b + 1 > stop) stop = b + 1; break; }
    }
    /* lean: a block's gradients live in gscratch and it steps right after its backward */
    int overlap = 0;
    for (int b = 1; b < nb; b++) overlap |= net->firsts[b] < net->ends[b - 1];
    int lean = apply_update && !net->grads && !overlap;
    if (!lean) {
        st = full_grads(net);
        if (st != FF_OK) return st;
    }
    if (!apply_update) ff_net_zero_grad(net);
    else {
        if (!lean)
            for (int i = 0; i < net->nl; i++) if (train_layer[i]) zero_layer_grads(net, &net->layers[i]);
        if (embed) zero_layer_grads(net, &net->layers[net->nl + 1]);
        if (train_head) zero_layer_grads(net, &net->layers[net->nl]);
    }

    /* carry = the input of the block about to run */
    memcpy(net->carry, net->xtmp, (size_t)R * net->Din * sizeof(float));
    for (int b = 0; b < stop; b++) {
        int f = net->firsts[b], l = net->ends[b];
        int on = !active || active[b];
        /* batch-norm running stats: updated once per layer, by the first block running it */
        st = block_forward(net, f, l, net->carry, R, T, on ? (b ? net->ends[b - 1] : 0) : net->nl);
        if (st != FF_OK) return st;
        ff_layer *last = &net->layers[l - 1];
        if (on) {
            float loss;
            st = block_loss(net, last, act_of(net, l - 1), B, T, &loss);
            if (st != FF_OK) return st;
            if (losses) losses[b] = loss;
            int emb = holds_input(net, b) && net->label == FF_LABEL_EMBEDDING;
            if (lean) {
                net->gscratch_base = net->layers[f].w_off;
                size_t hi = l < net->nl ? net->layers[l].w_off : net->tail_off;
                memset(net->gscratch, 0, (hi - net->gscratch_base) * sizeof(float));
            }
            st = block_backward(net, f, l, net->carry, T, emb ? net->dxin : NULL);
            if (st != FF_OK) return st;
            if (emb) embedding_backward(net, T);
            if (lean)   /* the next block's input was computed before this update */
                for (int i = f; i < l; i++) layer_opt_step(net, &net->layers[i]);
        }
        if (train_head)
            for (int i = f; i < l; i++)
                if (is_head_layer(net, i) && (b == 0 || i >= net->ends[b - 1]))
                    gather_features(net, i, head_rows_at, B);
        /* the next block's input: the output of the layer before its first */
        if (b + 1 < stop) {
            int src = net->firsts[b + 1] - 1;
            memcpy(net->carry, act_of(net, src), (size_t)R * layer_out(&net->layers[src]) * sizeof(float));
        }
    }
    if (train_head) {
        float hl = head_run(net, B, labels, NULL, 1);   /* training needs no probabilities */
        if (!isfinite(hl)) return FF_ERR_NONFINITE;
        if (losses) losses[nb] = hl;
    }
    if (apply_update) {
        if (!lean)
            for (int i = 0; i < net->nl; i++) if (train_layer[i]) layer_opt_step(net, &net->layers[i]);
        if (embed) layer_opt_step(net, &net->layers[net->nl + 1]);
        if (train_head) layer_opt_step(net, &net->layers[net->nl]);
    }
    return FF_OK;
}

ff_status ff_net_optimizer_step(ff_net *net, const uint8_t *active, int head) {
    if (!net->finalized) return FF_ERR_STATE;
    ff_status st = full_grads(net);
    if (st != FF_OK) return st;
    if (head && !net->has_head) return FF_ERR_STATE;
    uint8_t train_layer[FF_MAX_LAYERS] = {0};
    int embed = 0;
    for (int b = 0; b < net->nblocks; b++) {
        if (active && !active[b]) continue;
        for (int i = net->firsts[b]; i < net->ends[b]; i++) train_layer[i] = 1;
        if (holds_input(net, b) && net->label == FF_LABEL_EMBEDDING) embed = 1;
    }
    for (int i = 0; i < net->nl; i++) if (train_layer[i]) layer_opt_step(net, &net->layers[i]);
    if (embed) layer_opt_step(net, &net->layers[net->nl + 1]);
    if (head) layer_opt_step(net, &net->layers[net->nl]);
    return FF_OK;
}

/* ------------------------------------------------------------------ inference */

/* Rows worth reserving for an inference call wanting `want` rows: enough for large GEMMs,
 * but the workspace capped near 256 MB (an image net's rows are large). */
static int inference_rows(const ff_net *net, int want) {
    size_t per_row = (size_t)net->Din * 3;
    for (int i = 0; i < net->nl; i++) per_row += 4 * layer_out(&net->layers[i]);
    size_t cap = ((size_t)256 << 20) / (per_row * sizeof(float));
    int rows = want < 2048 ? want : 2048;
    if ((size_t)rows > cap) rows = (int)cap;
    return rows < net->K ? net->K : rows;
}

/* The class scores of the block ending at layer l-1 for R rows, into out[r * stride]
 * (K values per row for the label-free losses, 1 for FF/SymBa goodness). */
static void block_scores(ff_net *net, int l, int R, float *out, size_t stride, size_t kstride) {
    const ff_layer *last = &net->layers[l - 1];
    const float *y = act_of(net, l - 1);
    int K = net->K, Dout = (int)layer_out(last);
    switch (net->cfg.loss) {
    case FF_LOSS_CWC: case FF_LOSS_PVN:
        if (last->OC % K == 0) {
            ff_group_goodness_forward(net->G, y, R, K, last->OC / K, last->OH * last->OW);
            for (int r = 0; r < R; r++)
                for (int k = 0; k < K; k++) out[r * stride + k * kstride] = net->G[(size_t)r * K + k];
        } else {
            for (int r = 0; r < R; r++) for (int k = 0; k < K; k++) out[r * stride + k * kstride] = 0.0f;
        }
        break;
    case FF_LOSS_XENT:
        for (int r = 0; r < R; r++)
            for (int k = 0; k < K; k++)
                out[r * stride + k * kstride] = Dout == K ? y[(size_t)r * K + k] : 0.0f;
        break;
    default:
        ff_goodness_forward(net->g, y, R, Dout, net->cfg.goodness);
        for (int r = 0; r < R; r++) out[r * stride] = net->g[r];
    }
}

/* Run the segments (layers between consecutive block ends) up to and including segment
 * `stop - 1` on the R rows in carry; after each block end call `scores` (if out) and gather
 * head features from rows [0, fn). */
static ff_status run_segments(ff_net *net, int R, int stop, int fn, float *out, size_t rstride,
                              size_t kstride, int per_label) {
    int f = 0;
    for (int b = 0; b < stop; b++) {
        int l = net->ends[b];
        ff_status st = block_forward(net, f, l, net->carry, R, R, net->nl);
        if (st != FF_OK) return st;
        for (int i = f; i < l; i++) if (fn && is_head_layer(net, i)) gather_features(net, i, 0, fn);
        if (out) block_scores(net, l, R, out + b, rstride, per_label ? 0 : kstride);
        if (b + 1 < stop)
            memcpy(net->carry, act_of(net, l - 1), (size_t)R * layer_out(&net->layers[l - 1]) * sizeof(float));
        f = l;
    }
    return FF_OK;
}

ff_status ff_net_goodness(ff_net *net, const float *x, int B, float *out) {
    if (!net->finalized) return FF_ERR_STATE;
    if (B <= 0) return FF_ERR_ARG;
    int K = net->K, D = net->D, nb = net->nblocks, Din = net->Din;
    /* FF/SymBa: one row per (sample, label); label-free losses: one neutral row per sample */
    int per = label_free_loss(net->cfg.loss) ? 1 : K;
    ff_status st = reserve_rows(net, inference_rows(net, B * per), 0);
    if (st != FF_OK) return st;
    int chunk = net->rows_cap / per;
    for (int s0 = 0; s0 < B; s0 += chunk) {
        int n = B - s0 < chunk ? B - s0 : chunk, R = n * per;
        for (int s = 0; s < n; s++)
            for (int k = 0; k < per; k++)
                encode_row(net, net->xtmp + ((size_t)s * per + k) * Din, x + (size_t)(s0 + s) * D,
                           per == 1 ? -1 : k);
        memcpy(net->carry, net->xtmp, (size_t)R * Din * sizeof(float));
        /* out (B, K, nb): row r = s*per + k is at (s0 + s, k); label-free rows fill all K */
        st = run_segments(net, R, nb, 0, out + (size_t)s0 * K * nb, per == 1 ? (size_t)K * nb : (size_t)nb,
                          (size_t)nb, 0);
        if (st != FF_OK) return st;
    }
    return FF_OK;
}

ff_status ff_net_goodness_labeled(ff_net *net, const float *x, const int64_t *labels, int B,
                                  float *out) {
    if (!net->finalized) return FF_ERR_STATE;
    if (B <= 0) return FF_ERR_ARG;
    if (label_free_loss(net->cfg.loss)) return FF_ERR_STATE;
    if (labels) { ff_status st = check_labels(net, labels, B); if (st != FF_OK) return st; }
    int D = net->D, nb = net->nblocks, Din = net->Din;
    ff_status st = reserve_rows(net, inference_rows(net, B), 0);
    if (st != FF_OK) return st;
    int chunk = net->rows_cap;
    for (int s0 = 0; s0 < B; s0 += chunk) {
        int n = B - s0 < chunk ? B - s0 : chunk;
        for (int r = 0; r < n; r++)
            encode_row(net, net->xtmp + (size_t)r * Din, x + (size_t)(s0 + r) * D,
                       labels ? labels[s0 + r] : -1);
        memcpy(net->carry, net->xtmp, (size_t)n * Din * sizeof(float));
        st = run_segments(net, n, nb, 0, out + (size_t)s0 * nb, (size_t)nb, 0, 1);
        if (st != FF_OK) return st;
    }
    return FF_OK;
}

static ff_status features_chunked(ff_net *net, const float *x, int B, float *feat_out,
                                  float *probs) {
    if (!net->finalized) return FF_ERR_STATE;
    if (!net->has_head) return FF_ERR_STATE;
    if (B <= 0) return FF_ERR_ARG;
    int D = net->D, F = net->F, K = net->K, Din = net->Din;
    ff_status st = reserve_rows(net, inference_rows(net, B), 0);
    if (st != FF_OK) return st;
    int chunk = net->rows_cap, stop = net->nblocks;
    int lastl = net->head_layers[net->nhead - 1];
    for (int b = 0; b < net->nblocks; b++) if (net->ends[b] > lastl) { stop = b + 1; break; }
    for (int s0 = 0; s0 < B; s0 += chunk) {
        int n = B - s0 < chunk ? B - s0 : chunk;
        for (int r = 0; r < n; r++)
            encode_row(net, net->xtmp + (size_t)r * Din, x + (size_t)(s0 + r) * D, -1);
        memcpy(net->carry, net->xtmp, (size_t)n * Din * sizeof(float));
        st = run_segments(net, n, stop, n, NULL, 0, 0, 0);
        if (st != FF_OK) return st;
        if (feat_out) memcpy(feat_out + (size_t)s0 * F, net->feat, (size_t)n * F * sizeof(float));
        if (probs) head_run(net, n, NULL, probs + (size_t)s0 * K, 0);
    }
    return FF_OK;
}

ff_status ff_net_features(ff_net *net, const float *x, int B, float *feat) {
    return features_chunked(net, x, B, feat, NULL);
}

ff_status ff_net_head_predict(ff_net *net, const float *x, int B, float *probs) {
    return features_chunked(net, x, B, NULL, probs);
}
