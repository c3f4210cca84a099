/* ff_net.c - the FF network: layers cut into blocks, each trained by its own local loss.
 *
 * This file only orchestrates: what a layer kind does is a row of ff_layer_kinds[]
 * (ff_layers.c), what a loss does is a row of ff_losses[] (ff_loss.c), and how a block runs
 * is its plan, compiled once per cut (compile_plan) and walked by forward, backward and the
 * workspace sizing alike.
 *
 * Rows.  A training step stacks the rows it needs into one matrix so each layer runs one
 * GEMM: rows [0,B) positive (true label), [B,2B) negative (wrong label), and, when the
 * one-pass head trains, [2B,3B) neutral.  Losses and backward use the first T = 2B rows
 * only; batch-norm statistics come from those T rows too.  A loss with every wrong label as a
 * negative (DF) has K - 1 groups of B negative rows, T = K B.  Losses without negatives train
 * on B neutral-label rows, which also serve the head.
 *
 * Memory.  `carry` holds the normalised input of the block being run; `acts` holds the
 * outputs of that block's steps (in-place steps share their input's slot); the next block
 * reuses `acts`.  Only one block's activations are ever alive.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ff_internal.h"

static ff_status reserve_blocks(ff_net *net, ff_work *w, int rows, int trows, int b0, int b1);
#define reserve_rows(net, w, rows, trows) reserve_blocks(net, w, rows, trows, 0, (net)->nblocks)

/* ------------------------------------------------------------------ errors */

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

ff_status ff_fail(ff_net *net, ff_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(net->err, sizeof(net->err), fmt, ap);
    va_end(ap);
    return st;
}

const char *ff_net_last_error(const ff_net *net) { return net->err; }

int ff_all_finite(const float *x, size_t n) {
    /* x - x is 0 for finite values and NaN for inf/NaN; summing keeps one branch per call */
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++) acc += x[i] - x[i];
    return acc == 0.0f;
}

/* ------------------------------------------------------------------ names of the enums */

#define FF_NAMES(fn, ...) const char *fn(int k) { \
        static const char *const t[] = {__VA_ARGS__}; \
        return k >= 0 && k < (int)(sizeof(t) / sizeof(t[0])) ? t[k] : NULL; }
const char *ff_layer_kind_name(int k) { return k >= 0 && k < FF_NUM_LAYER_KINDS ? ff_layer_kinds[k].name : NULL; }
const char *ff_loss_name(int k) { return k >= 0 && k < FF_NUM_LOSSES ? ff_losses[k].name : NULL; }
FF_NAMES(ff_label_name, "onehot", "fourier", "embedding", "none")
FF_NAMES(ff_norm_name, "none", "l2", "rms")
FF_NAMES(ff_goodness_name, "sum", "mean", "neg-sum", "neg-mean")
FF_NAMES(ff_opt_name, "sgd", "adam", "adamw")
FF_NAMES(ff_param_name, "weight", "bias", "running_mean", "running_var", "grad_weight", "grad_bias",
         "m_weight", "m_bias", "v_weight", "v_bias")
#undef FF_NAMES

/* ------------------------------------------------------------------ the label encoder */

/* One-hot label y (-1: neutral, v/K everywhere) into o[0..K). */
static void onehot_fill(float *o, int K, int64_t y, float v) {
    for (int k = 0; k < K; k++) o[k] = y < 0 ? v / K : (k == y ? v : 0.0f);
}

ff_status ff_overlay_labels(float *out, const float *x, const int64_t *labels, int B, int D,
                            int K, float label_value) {
    if (K > D) return FF_ERR_SHAPE;
    for (int b = 0; b < B; b++) {
        float *o = out + (size_t)b * D;
        if (o != x + (size_t)b * D) memcpy(o, x + (size_t)b * D, (size_t)D * sizeof(float));
        int64_t y = labels ? labels[b] : -1;
        if (y >= K) return FF_ERR_LABEL;
        onehot_fill(o, K, y, label_value);
    }
    return FF_OK;
}

/* Encode one raw sample x (D) with label y (-1: neutral) into out (Din): the one encoder that
 * training, inference and ff_overlay_labels share. */
static void encode_into(const ff_net *net, float *out, const float *x, int64_t y) {
    int K = net->K, HW = net->H * net->W;
    float v = net->cfg.label_value;
    if (net->in_affine) {
        const float *sc = net->in_affine, *sh = sc + net->D;
        for (int i = 0; i < net->D; i++) out[i] = x[i] * sc[i] + sh[i];
    } else {
        memcpy(out, x, (size_t)net->D * sizeof(float));
    }
    switch (net->label) {
    case FF_LABEL_ONEHOT:   /* the first K values of a flat row, or of every channel plane */
        for (int c = 0; c < (HW == 1 ? 1 : net->C); c++) onehot_fill(out + (size_t)c * HW, K, y, v);
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
        const float *emb = net->params + net->embed.w_off;
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

/* Row r of the work's encoded input: sample x with label y (recorded for the shared step). */
static void encode_row(const ff_net *net, ff_work *w, int r, const float *x, int64_t y) {
    encode_into(net, w->xtmp + (size_t)r * net->Din, x, y);
    w->rowlab[r] = y;
}

/* Rows r of the next run are sample r % n (div 0) or r / div of the minibatch. */
static void share_rows(ff_work *w, int n, int div) { w->share_n = n; w->share_div = div; }

ff_config ff_config_default(void) {
    ff_config c;
    c.loss = FF_LOSS_FF; c.goodness = FF_GOODNESS_SUM; c.theta = 2.0f; c.alpha = 4.0f;
    c.norm = FF_NORM_L2; c.norm_eps = 1e-4f; c.label_value = 1.0f; c.pvn_weight = 0.0f;
    c.margin = 1.0f; c.head_dropout = 0.0f;
    return c;
}

ff_opt_config ff_opt_config_default(void) {
    ff_opt_config o;
    o.kind = FF_OPT_ADAM; o.lr = 1e-3f; o.beta1 = 0.9f; o.beta2 = 0.999f; o.eps = 1e-8f;
    o.momentum = 0.0f; o.dampening = 0.0f; o.nesterov = 0; o.weight_decay = 0.0f;
    return o;
}

static ff_block_loss loss_of(const ff_config *c) {
    ff_block_loss bl = {c->loss, c->goodness, c->theta, c->alpha, c->pvn_weight, c->margin};
    return bl;
}

/* ------------------------------------------------------------------ building */

ff_status ff_net_new(ff_net **out, int C, int H, int W, int K, uint64_t seed, char *msg, size_t n) {
    *out = NULL;
    if (C <= 0 || H <= 0 || W <= 0 || C > FF_MAX_DIM || H > FF_MAX_DIM || W > FF_MAX_DIM ||
        (size_t)C * H * W + (size_t)H * W > FF_MAX_ROW_FLOATS) {
        if (msg) snprintf(msg, n, "input_shape must be (C, H, W) with each in [1, %d] and C*H*W + H*W "
                          "at most %zu, got (%d, %d, %d)", FF_MAX_DIM, FF_MAX_ROW_FLOATS, C, H, W);
        return FF_ERR_ARG;
    }
    if (K < 2 || K > FF_MAX_CLASSES) {
        if (msg) snprintf(msg, n, "num_classes must be in [2, %d], got %d", FF_MAX_CLASSES, K);
        return FF_ERR_ARG;
    }
    ff_net *net = calloc(1, sizeof(ff_net));
    if (!net) {
        if (msg) snprintf(msg, n, "out of memory creating the network");
        return FF_ERR_NOMEM;
    }
    net->C = C; net->H = H; net->W = W; net->K = K; net->D = net->Din = C * H * W;
    net->label = FF_LABEL_ONEHOT;
    net->training = 1;
    net->cfg = ff_config_default();
    net->loss = loss_of(&net->cfg);
    net->share_labels = 1;
    uint64_t s = seed;
    for (int i = 0; i < 4; i++) net->rng[i] = ff_splitmix64(&s);
    *out = net;
    return FF_OK;
}

ff_net *ff_net_create(int C, int H, int W, int K, uint64_t seed) {
    ff_net *net;
    return ff_net_new(&net, C, H, W, K, seed, NULL, 0) == FF_OK ? net : NULL;
}

static void free_work(ff_work *w) {
    free(w->ws); free(w->lab); free(w->gscratch); free(w->rec);
    memset(w, 0, sizeof(*w));
}

static void free_blocks(ff_net *net) {
    for (int b = 0; b < net->nblocks && net->blocks; b++) {
        free(net->blocks[b].train.steps);
        free(net->blocks[b].seg.steps);
    }
    free(net->blocks);
    net->blocks = NULL;
}

void ff_net_destroy(ff_net *net) {
    if (!net) return;
    free(net->params); free(net->grads); free(net->m); free(net->v); free(net->gtail);
    free(net->buffers); free(net->saved); free(net->pattern); free(net->modes); free(net->dec);
    free(net->in_affine);
    free_work(&net->work);
    ff_net_pipeline_end(net);
    free_blocks(net);
    free(net);
}

static const char *kind_name(ff_layer_kind k) {
    return (int)k >= 0 && k < FF_NUM_LAYER_KINDS ? ff_layer_kinds[k].name : "?";
}

ff_status ff_net_set_label_encoding(ff_net *net, ff_label_kind kind) {
    if (net->nl > 0 || net->finalized)
        return ff_fail(net, FF_ERR_STATE, "the label encoding must be chosen before layers are added");
    if (kind < FF_LABEL_ONEHOT || kind > FF_LABEL_NONE)
        return ff_fail(net, FF_ERR_ARG, "label_encoding must be onehot (0), fourier (1), embedding (2) "
                       "or none (3), got %d", (int)kind);
    if ((kind == FF_LABEL_FOURIER || kind == FF_LABEL_EMBEDDING) && net->H * net->W == 1)
        return ff_fail(net, FF_ERR_ARG, "label_encoding %s needs an image input (C, H, W) with H*W > 1; "
                       "this input is flat (%d values): use onehot", kind == FF_LABEL_FOURIER ?
                       "fourier" : "embedding", net->D);
    net->label = kind;
    net->Din = net->D + (kind == FF_LABEL_EMBEDDING ? net->H * net->W : 0);
    return FF_OK;
}

ff_label_kind ff_net_label_encoding(const ff_net *net) { return net->label; }

/* Append a layer of `kind` whose settings are in *proto: its input shape follows the previous
 * layer, its output shape and parameter sizes come from the kind's shape rule. */
static ff_status add_layer(ff_net *net, const ff_layer *proto) {
    if (net->finalized) return ff_fail(net, FF_ERR_STATE, "layers cannot be added after finalize");
    if (net->nl >= FF_MAX_LAYERS)
        return ff_fail(net, FF_ERR_ARG, "a network holds at most %d layers", FF_MAX_LAYERS);
    ff_layer L = *proto;
    if (net->nl == 0) {
        L.C = net->C + (net->label == FF_LABEL_EMBEDDING); L.H = net->H; L.W = net->W;
    } else {
        const ff_layer *P = &net->layers[net->nl - 1];
        L.C = P->OC; L.H = P->OH; L.W = P->OW;
    }
    if (!L.OC) L.OC = L.C;
    L.OH = L.H; L.OW = L.W;
    L.opt = ff_opt_config_default();
    ff_status st = ff_layer_kinds[L.kind].shape(net, &L);
    if (st != FF_OK) return st;
    net->layers[net->nl++] = L;
    return FF_OK;
}

ff_status ff_net_add_linear(ff_net *net, int out_features, int bias) {
    ff_layer L = {0};
    L.kind = FF_LAYER_LINEAR; L.bias = bias != 0;
    L.OC = out_features;
    if (out_features <= 0)
        return ff_fail(net, FF_ERR_ARG, "linear: out_features must be positive, got %d", out_features);
    return add_layer(net, &L);
}

ff_status ff_net_add_conv2d(ff_net *net, int out_channels, int kernel, int stride, int pad,
                            int groups, int bias) {
    ff_layer L = {0};
    L.kind = FF_LAYER_CONV2D; L.k = kernel; L.stride = stride; L.pad = pad; L.groups = groups;
    L.bias = bias != 0;
    L.OC = out_channels;
    if (out_channels <= 0)
        return ff_fail(net, FF_ERR_ARG, "conv2d: out_channels must be positive, got %d", out_channels);
    return add_layer(net, &L);
}

ff_status ff_net_add_batchnorm2d(ff_net *net, float eps, float momentum, int affine) {
    ff_layer L = {0};
    L.kind = FF_LAYER_BATCHNORM2D; L.eps = eps; L.momentum = momentum; L.affine = affine != 0;
    return add_layer(net, &L);
}

ff_status ff_net_add_lennorm(ff_net *net, ff_norm_kind kind, float eps) {
    ff_layer L = {0};
    L.kind = FF_LAYER_LENNORM; L.norm = kind; L.eps = eps;
    return add_layer(net, &L);
}

ff_status ff_net_add_relu(ff_net *net) {
    ff_layer L = {0};
    L.kind = FF_LAYER_RELU;
    return add_layer(net, &L);
}

ff_status ff_net_add_maxpool2d(ff_net *net, int kernel, int stride) {
    ff_layer L = {0};
    L.kind = FF_LAYER_MAXPOOL2D; L.k = kernel; L.stride = stride;
    return add_layer(net, &L);
}

ff_status ff_net_add_flatten(ff_net *net) {
    ff_layer L = {0};
    L.kind = FF_LAYER_FLATTEN;
    return add_layer(net, &L);
}

ff_status ff_net_set_decoders(ff_net *net) {
    if (net->finalized) return ff_fail(net, FF_ERR_STATE, "decoders must be set before finalize");
    if (net->nl == 0) return ff_fail(net, FF_ERR_STATE, "decoders follow the blocks: add layers first");
    if (net->label != FF_LABEL_NONE)
        return ff_fail(net, FF_ERR_ARG, "decoders serve the label-free ae loss: label_encoding must be none, got %s",
                       ff_label_name(net->label));
    for (int i = 0; i < net->nl; i++)
        if (net->layers[i].kind != FF_LAYER_LINEAR && net->layers[i].kind != FF_LAYER_RELU &&
            net->layers[i].kind != FF_LAYER_LENNORM)
            return ff_fail(net, FF_ERR_ARG, "autoencoder cells are built for MLP blocks (Linear, ReLU, LenNorm); "
                           "layer %d is %s", i, kind_name(net->layers[i].kind));
    net->want_dec = 1;
    return FF_OK;
}

int ff_net_num_decoders(const ff_net *net) { return net->ndec; }

ff_status ff_net_set_head(ff_net *net, int nsel, const int *sel) {
    if (net->finalized) return ff_fail(net, FF_ERR_STATE, "the head must be set before finalize");
    if (nsel <= 0 || nsel > net->nl)
        return ff_fail(net, FF_ERR_ARG, "the head needs 1 to %d layers, got %d", net->nl, nsel);
    size_t F = 0;
    for (int i = 0; i < nsel; i++) {
        if (sel[i] < 0 || sel[i] >= net->nl || (i && sel[i] <= sel[i - 1]))
            return ff_fail(net, FF_ERR_ARG, "head layers must be strictly increasing layer indices in "
                           "[0, %d); entry %d is %d", net->nl, i, sel[i]);
        F += ff_layer_out(&net->layers[sel[i]]);
    }
    if (F > FF_MAX_ROW_FLOATS)
        return ff_fail(net, FF_ERR_SHAPE, "the head's input would have %zu features, at most %zu", F,
                       FF_MAX_ROW_FLOATS);
    net->has_head = 1; net->nhead = nsel; net->F = (int)F;
    memcpy(net->head_layers, sel, (size_t)nsel * sizeof(int));
    return FF_OK;
}

static int is_head_layer(const ff_net *net, int i) {
    for (int h = 0; h < net->nhead; h++) if (net->head_layers[h] == i) return 1;
    return 0;
}

/* ------------------------------------------------------------------ plans */

/* Conv2d -> ReLU -> MaxPool2d at layers i..i+2 of the run [f, l), none of the conv's and
 * ReLU's outputs needed outside the run (no block starts inside, neither feeds the head). */
static int fusable(const ff_net *net, int i, int l) {
    return i + 2 < l && net->layers[i].kind == FF_LAYER_CONV2D &&
           net->layers[i + 1].kind == FF_LAYER_RELU && net->layers[i + 2].kind == FF_LAYER_MAXPOOL2D &&
           !net->starts_block[i + 1] && !net->starts_block[i + 2] &&
           !is_head_layer(net, i) && !is_head_layer(net, i + 1);
}

/* The first layers of a one-hot net on flat inputs, [LenNorm ->] Linear, see every sample
 * with several labels (positive, negative, neutral; K labels in multi-pass inference).  The
 * label only adds a column of the weight (one-hot values after the normalisation, whose norm
 * the label does not change), so the product with the image part can be computed once per
 * sample.  Returns the number of layers such a step covers (2 or 1), or 0. */
static int shareable(const ff_net *net, int l) {
    if (!net->share_labels || net->label != FF_LABEL_ONEHOT || net->H * net->W != 1 || net->K >= net->Din)
        return 0;
    const ff_layer *L0 = &net->layers[0];
    if (L0->kind == FF_LAYER_LINEAR) return 1;
    if (L0->kind == FF_LAYER_LENNORM && l > 1 && net->layers[1].kind == FF_LAYER_LINEAR &&
        !is_head_layer(net, 0) && !net->starts_block[1])
        return 2;
    return 0;
}

/* Compile layers [f, l) into p: steps, their places in acts, and for training (din: whether
 * the block's input gradient is wanted, for a label embedding) where every input gradient
 * goes.  The walk below is the one forward, backward and reserve_rows follow. */
/* The label embedding is its own input channel (the last), added before the first conv: the
 * conv of block 0 over [LenNorm ->] Conv2d (groups 1, no batch norm between) is linear in it,
 * so its image part is computed once per sample and its label part once per label.  The conv's
 * layer index + 1, or 0 when not shareable. */
static int shareable_conv(const ff_net *net, int l) {
    if (!net->share_labels || net->label != FF_LABEL_EMBEDDING) return 0;
    int c = net->layers[0].kind == FF_LAYER_LENNORM ? 1 : 0;
    if (c >= l || (c && net->starts_block[c])) return 0;
    const ff_layer *L = &net->layers[c];
    if (L->kind != FF_LAYER_CONV2D || L->groups != 1) return 0;
    /* the samples' image channels wait in the output rows above the products */
    if ((size_t)L->OC * L->OH * L->OW < (size_t)net->C * net->H * net->W) return 0;
    return c + 1;
}

static ff_status compile_plan(ff_net *net, int f, int l, int din, ff_plan *p) {
    free(p->steps);
    memset(p, 0, sizeof(*p));
    p->first = f; p->last = l;
    p->steps = calloc((size_t)(l - f), sizeof(ff_step));
    if (!p->steps) return ff_fail(net, FF_ERR_NOMEM, "out of memory compiling a block plan");
    size_t off = 0;
    for (int i = f; i < l; i++) {
        ff_step *s = &p->steps[p->nsteps++];
        const ff_layer *L = &net->layers[i];
        s->layer = s->last = i;
        int sh = i == 0 ? shareable(net, l) : 0;
        if (sh) {   /* [LenNorm ->] Linear, once per sample; its saved floats: the row scales */
            s->op = FF_STEP_SHARED;
            s->last = sh - 1;
            L = &net->layers[sh - 1];
            s->out_off = off; off += ff_layer_out(L);
            s->aux_off = off; off += 1;
            i = sh - 1;
            continue;
        }
        if (f == 0 && i == shareable_conv(net, l) - 1) {
            s->op = FF_STEP_SHARED_CONV;   /* stored as a layer's output; its backward is the conv's */
            s->out_off = off; off += ff_layer_out(L);
            s->aux_off = off;
            continue;
        }
        if (fusable(net, i, l)) {
            s->op = FF_STEP_FUSED;
            s->last = i + 2;
            if (ff_layer_out(L) > p->fuse_w) p->fuse_w = ff_layer_out(L);
            L = &net->layers[i + 2];
            i += 2;
        }
        s->inplace = s->op == FF_STEP_LAYER && i > f && !net->starts_block[i] &&
                     (ff_layer_kinds[L->kind].flags & FF_KF_INPLACE);
        if (s->inplace) s->out_off = p->steps[p->nsteps - 2].out_off;
        else { s->out_off = off; off += ff_layer_out(L); }
        s->aux_off = off;
        off += ff_layer_kinds[L->kind].aux_floats(L);
    }
    p->act_floats = off;
    /* backward: d0 receives the loss gradient of the output; every step but an in-place
     * ReLU writes its input gradient to the other buffer (the first step to din) */
    int cur = 0;
    p->dw[0] = ff_layer_out(&net->layers[l - 1]);
    for (int s = p->nsteps - 1; s >= 0; s--) {
        ff_step *st = &p->steps[s];
        int below = din;
        for (int j = f; j < st->layer; j++) below |= ff_layer_trainable(&net->layers[j]);
        st->dy_buf = cur;
        if (st->op == FF_STEP_SHARED) {   /* per-sample sums of the row gradients in the other buffer */
            size_t o = ff_layer_out(&net->layers[st->last]);
            if (o > p->dw[cur ^ 1]) p->dw[cur ^ 1] = o;
        }
        if (!below) { st->dx_buf = FF_DX_NONE; break; }
        if (st->op == FF_STEP_LAYER && s > 0 && net->layers[st->layer].kind == FF_LAYER_RELU) {
            st->dx_buf = cur;   /* masked in place */
            continue;
        }
        if (s == 0) { st->dx_buf = FF_DX_DIN; break; }
        cur ^= 1;
        st->dx_buf = cur;
        size_t in = ff_layer_in(&net->layers[st->layer]);
        if (in > p->dw[cur]) p->dw[cur] = in;
    }
    return FF_OK;
}

/* The step of plan p whose output is layer i's output (NULL: not stored). */
static const ff_step *step_of(const ff_plan *p, int i) {
    for (int s = 0; s < p->nsteps; s++) {
        const ff_step *st = &p->steps[s];
        if (st->last == i) return st;
        if (st->layer <= i && i < st->last) return NULL;   /* inside a fused step */
    }
    return NULL;
}

static float *out_of(const ff_work *w, const ff_plan *p, int i, int R) {
    const ff_step *st = step_of(p, i);
    return st ? w->acts + st->out_off * (size_t)R : NULL;
}

/* Does block b contain layer 0 (and so train a label embedding)? */
static int holds_input(const ff_net *net, int b) { return net->blocks[b].first == 0; }

/* Can a block whose last layer is `last` (block index b, for the message) carry loss `kind`?
 * Losses with negatives need the label in the input; the channel-wise ones K channel groups;
 * xent a K-wide output (checked when it trains or scores, so a net can be cut for it later). */
static ff_status loss_fits(ff_net *net, ff_loss_kind kind, int b, int last, int for_training) {
    const ff_loss_ops *lo = &ff_losses[kind];
    const ff_layer *L = &net->layers[last];
    if (lo->needs_groups && L->OC % net->K)
        return ff_fail(net, FF_ERR_SHAPE, "loss %s reads %d channel groups, but block %d ends in layer %d (%s) "
                       "with %d channels, not divisible by %d", lo->name, net->K, b, last, kind_name(L->kind),
                       L->OC, net->K);
    if (lo->needs_k_wide && (size_t)net->K != ff_layer_out(L) && for_training)
        return ff_fail(net, FF_ERR_SHAPE, "loss xent needs a block output of num_classes = %d values, but block "
                       "%d ends in layer %d (%s) with %zu", net->K, b, last, kind_name(L->kind), ff_layer_out(L));
    return FF_OK;
}

/* Input width of a block starting at layer `first`. */
static size_t block_in(const ff_net *net, int first) { return ff_layer_in(&net->layers[first]); }

/* Can block b = [first, last) carry loss `kind`?  The ae loss needs the block's decoder, made
 * at finalize for the block's input and output sizes (a later cut must keep them). */
static ff_status decoder_fits(ff_net *net, ff_loss_kind kind, int b, int first, int last) {
    if (kind != FF_LOSS_AE) return FF_OK;
    if (!net->ndec)
        return ff_fail(net, FF_ERR_ARG, "the ae loss trains each block's decoder, but the network has none "
                       "(build it with decoders: ff_net_set_decoders before finalize)");
    const ff_layer *L = &net->layers[last];
    if (b >= net->ndec || (size_t)net->dec[b].C != ff_layer_out(L) || (size_t)net->dec[b].OC != block_in(net, first))
        return ff_fail(net, FF_ERR_SHAPE, "the ae loss: block %d = [%d, %d) maps %zu inputs to %zu outputs, but %s",
                       b, first, last + 1, block_in(net, first), ff_layer_out(L), b >= net->ndec ?
                       "the network has decoders for the blocks of its first cut only" :
                       "its decoder was made for another cut (decoders follow the cut at finalize)");
    return FF_OK;
}

static ff_status check_block_loss(ff_net *net, int b, int for_training) {
    ff_status st = loss_fits(net, net->blocks[b].loss.kind, b, net->blocks[b].last - 1, for_training);
    if (st != FF_OK || !net->finalized) return st;
    return decoder_fits(net, net->blocks[b].loss.kind, b, net->blocks[b].first, net->blocks[b].last - 1);
}

/* (Re)compile every block's plans; their losses are the net's. */
static ff_status compile_blocks(ff_net *net) {
    for (int b = 0, prev = 0; b < net->nblocks; prev = net->blocks[b].last, b++) {
        ff_block *B = &net->blocks[b];
        B->loss = net->loss;
        int din = holds_input(net, b) && net->label == FF_LABEL_EMBEDDING;
        ff_status st = compile_plan(net, B->first, B->last, din, &B->train);
        if (st == FF_OK) st = compile_plan(net, prev, B->last, 0, &B->seg);
        if (st != FF_OK) return st;
    }
    return FF_OK;
}

ff_status ff_net_set_block_ranges(ff_net *net, int nblocks, const int *firsts, const int *lasts) {
    if (net->nl == 0) return ff_fail(net, FF_ERR_STATE, "blocks need layers: add layers first");
    if (nblocks <= 0 || nblocks > net->nl)
        return ff_fail(net, FF_ERR_ARG, "need 1 to %d blocks, got %d", net->nl, nblocks);
    if (firsts[0] != 0 || lasts[nblocks - 1] != net->nl)
        return ff_fail(net, FF_ERR_ARG, "blocks must start at layer 0 and end at the number of layers "
                       "(%d); got first %d, last %d", net->nl, firsts[0], lasts[nblocks - 1]);
    for (int b = 0; b < nblocks; b++) {
        if (lasts[b] <= firsts[b] || lasts[b] > net->nl || firsts[b] < 0)
            return ff_fail(net, FF_ERR_ARG, "block %d = [%d, %d) is empty or outside [0, %d)", b,
                           firsts[b], lasts[b], net->nl);
        /* ordered, gap-free, each block ending after the previous one and starting inside it */
        if (b && (firsts[b] <= firsts[b - 1] || firsts[b] > lasts[b - 1] || lasts[b] <= lasts[b - 1]))
            return ff_fail(net, FF_ERR_ARG, "block %d = [%d, %d) after [%d, %d): firsts and lasts must "
                           "increase and each block start no later than the previous one ends", b,
                           firsts[b], lasts[b], firsts[b - 1], lasts[b - 1]);
        int any = 0;
        for (int i = firsts[b]; i < lasts[b]; i++) any |= ff_layer_trainable(&net->layers[i]);
        if (!any)
            return ff_fail(net, FF_ERR_ARG, "block %d = [%d, %d) holds no layer with parameters", b,
                           firsts[b], lasts[b]);
        if (net->finalized && !ff_losses[net->loss.kind].negatives) {
            /* the cut must carry the net's loss: checked before anything changes */
            ff_status st = loss_fits(net, net->loss.kind, b, lasts[b] - 1, 0);
            if (st == FF_OK) st = decoder_fits(net, net->loss.kind, b, firsts[b], lasts[b] - 1);
            if (st != FF_OK) return st;
        }
    }
    ff_block *blocks = calloc((size_t)nblocks, sizeof(ff_block));
    if (!blocks) return ff_fail(net, FF_ERR_NOMEM, "out of memory for %d blocks", nblocks);
    free_blocks(net);
    net->blocks = blocks;
    net->nblocks = nblocks;
    memset(net->starts_block, 0, sizeof(net->starts_block));
    for (int b = 0; b < nblocks; b++) {
        blocks[b].first = firsts[b]; blocks[b].last = lasts[b];
        net->starts_block[firsts[b]] = 1;
    }
    ff_status st = compile_blocks(net);
    if (st != FF_OK) return st;
    /* a new cut may need a larger activation area (reserve only ever grows it) */
    return net->work.rows_cap ? reserve_rows(net, &net->work, net->work.rows_cap, net->work.train_cap) : FF_OK;
}

ff_status ff_net_set_blocks(ff_net *net, int nblocks, const int *ends) {
    int firsts[FF_MAX_LAYERS];
    if (nblocks <= 0 || nblocks > net->nl)
        return ff_fail(net, FF_ERR_ARG, "need 1 to %d block ends, got %d", net->nl, nblocks);
    for (int b = 0; b < nblocks; b++) firsts[b] = b ? ends[b - 1] : 0;
    return ff_net_set_block_ranges(net, nblocks, firsts, ends);
}

int ff_net_default_blocks(const ff_net *net, int *ends) {
    /* a block per unit kind (Linear, Conv2d), which takes along the leading layers directly
     * before it (LenNorm, BatchNorm2d, Flatten) and what follows it; never a block without
     * parameters */
    int nb = 0;
    for (int i = 1; i < net->nl; i++) {
        if (!(ff_layer_kinds[net->layers[i].kind].flags & FF_KF_UNIT)) continue;
        int first = nb ? ends[nb - 1] : 0, s = i, any = 0;
        while (s - 1 > first && (ff_layer_kinds[net->layers[s - 1].kind].flags & FF_KF_LEADS)) s--;
        for (int j = first; j < s; j++)
            any |= ff_layer_trainable(&net->layers[j]) && (ff_layer_kinds[net->layers[j].kind].flags & FF_KF_UNIT);
        if (any) ends[nb++] = s;
    }
    ends[nb++] = net->nl;
    return nb;
}

/* ------------------------------------------------------------------ finalize */

/* Allocate the full gradient arena (once). */
static ff_status full_grads(ff_net *net) {
    if (net->grads) return FF_OK;
    net->grads = calloc(net->nparams ? net->nparams : 1, sizeof(float));
    if (!net->grads) return ff_fail(net, FF_ERR_NOMEM, "out of memory for the gradient arena (%zu floats)",
                                    net->nparams);
    return FF_OK;
}

float *ff_grad_at(const ff_net *net, const ff_work *w, size_t off) {
    if (!w->lean) return net->grads + off;
    if (off >= net->tail_off) return net->gtail + (off - net->tail_off);
    return w->gscratch + (off - w->gscratch_base);
}

void ff_fourier_default_modes(double *modes, int K, int H, int W) {
    const double pi = 3.14159265358979323846;
    for (int k = 0; k < K; k++) {
        double *m = modes + (size_t)k * 4;
        m[0] = (double)(H > W ? H : W) / (2 + k % 3);
        m[1] = pi * k / K;
        m[2] = 1.0;
        m[3] = 0.0;
    }
}

/* Spatially extended labels (Scodellaro et al. 2023): class k is a superposition of M plane waves,
 *   p_k(h, w) = sum_m a_km cos(2 pi (h cos theta_km + w sin theta_km) / lambda_km + phi_km),
 * from the (K, M, 4) table modes (lambda, theta, a, phi), in double, stored as float. */
static void fourier_patterns(float *p, const double *modes, int K, int M, int H, int W) {
    const double pi = 3.14159265358979323846;
    for (int k = 0; k < K; k++)
        for (int h = 0; h < H; h++)
            for (int w = 0; w < W; w++) {
                double s = 0.0;
                for (int j = 0; j < M; j++) {
                    const double *m = modes + ((size_t)k * M + j) * 4;
                    s += m[2] * cos(2.0 * pi * (h * cos(m[1]) + w * sin(m[1])) / m[0] + m[3]);
                }
                p[((size_t)k * H + h) * W + w] = (float)s;
            }
}

ff_status ff_net_set_fourier_modes(ff_net *net, const double *modes, int M) {
    if (net->label != FF_LABEL_FOURIER)
        return ff_fail(net, FF_ERR_STATE, "fourier_modes need label_encoding fourier, this net's is %s",
                       ff_label_name(net->label));
    if (!modes) M = 1;
    if (M < 1 || M > FF_MAX_FOURIER_MODES)
        return ff_fail(net, FF_ERR_ARG, "fourier_modes must hold 1 to %d modes per class, got %d",
                       FF_MAX_FOURIER_MODES, M);
    if (modes) {
        static const char *const col[4] = {"wavelength", "orientation", "amplitude", "phase"};
        for (int k = 0; k < net->K; k++)
            for (int j = 0; j < M; j++)
                for (int c = 0; c < 4; c++) {
                    double v = modes[((size_t)k * M + j) * 4 + c];
                    if (!isfinite(v))
                        return ff_fail(net, FF_ERR_ARG, "fourier_modes[%d, %d] %s must be finite, got %g",
                                       k, j, col[c], v);
                    if (c == 0 && !(v > 0.0))
                        return ff_fail(net, FF_ERR_ARG, "fourier_modes[%d, %d] wavelength must be > 0 pixels, "
                                       "got %g", k, j, v);
                }
    }
    double *t = malloc((size_t)net->K * M * 4 * sizeof(double));
    if (!t) return ff_fail(net, FF_ERR_NOMEM, "out of memory for the Fourier modes");
    if (modes) memcpy(t, modes, (size_t)net->K * M * 4 * sizeof(double));
    else ff_fourier_default_modes(t, net->K, net->H, net->W);
    free(net->modes);
    net->modes = t;
    net->nmodes = M;
    if (net->pattern) fourier_patterns(net->pattern, net->modes, net->K, M, net->H, net->W);
    return FF_OK;
}

ff_status ff_net_set_input_affine(ff_net *net, const float *scale, const float *shift) {
    if (!scale != !shift)
        return ff_fail(net, FF_ERR_ARG, "input affine: give both scale and shift, or neither");
    if (!scale) {
        free(net->in_affine);
        net->in_affine = NULL;
        return FF_OK;
    }
    for (int i = 0; i < net->D; i++) {
        if (!isfinite(scale[i]))
            return ff_fail(net, FF_ERR_ARG, "input scale[%d] must be finite, got %g", i, (double)scale[i]);
        if (!isfinite(shift[i]))
            return ff_fail(net, FF_ERR_ARG, "input shift[%d] must be finite, got %g", i, (double)shift[i]);
    }
    float *t = net->in_affine ? net->in_affine : malloc(2 * (size_t)net->D * sizeof(float));
    if (!t) return ff_fail(net, FF_ERR_NOMEM, "out of memory for the input affine map");
    memcpy(t, scale, (size_t)net->D * sizeof(float));
    memcpy(t + net->D, shift, (size_t)net->D * sizeof(float));
    net->in_affine = t;
    return FF_OK;
}

const float *ff_net_input_affine(const ff_net *net, const float **shift) {
    if (shift) *shift = net->in_affine ? net->in_affine + net->D : NULL;
    return net->in_affine;
}

const double *ff_net_fourier_modes(const ff_net *net, int *M) {
    if (M) *M = net->nmodes;
    return net->modes;
}
const float *ff_net_label_patterns(const ff_net *net, int *HW) {
    if (HW) *HW = net->H * net->W;
    return net->pattern;
}

/* Place layer L's parameters at the end of the arena (16-float aligned arrays). */
static void place_params(ff_layer *L, size_t *np, size_t *nb, size_t *ns) {
    L->w_off = *np; *np += (L->w_n + 15) & ~(size_t)15;
    L->b_off = *np; *np += (L->b_n + 15) & ~(size_t)15;
    if (ff_layer_kinds[L->kind].flags & FF_KF_STATS) {
        L->rm_off = *nb; L->rv_off = *nb + (size_t)L->C; *nb += 2 * (size_t)L->C;
        L->sv_off = *ns; *ns += 2 * (size_t)L->C;
    }
}

ff_status ff_net_finalize(ff_net *net) {
    if (net->finalized) return ff_fail(net, FF_ERR_STATE, "the network is already finalized");
    if (net->nl == 0) return ff_fail(net, FF_ERR_ARG, "a network needs at least one layer");
    int any = 0;
    for (int i = 0; i < net->nl; i++) any |= ff_layer_trainable(&net->layers[i]);
    if (!any) return ff_fail(net, FF_ERR_ARG, "a network needs at least one layer with parameters");
    /* a one-hot label must fit: in the row of a flat input, in each channel plane of an image */
    if (net->label == FF_LABEL_ONEHOT && (net->H * net->W == 1 ? net->K > net->D : net->K > net->H * net->W))
        return ff_fail(net, FF_ERR_SHAPE, "num_classes %d does not fit a one-hot label into the input: "
                       "it needs K values %s (%d)", net->K, net->H * net->W == 1 ?
                       "of the flat input" : "in every channel plane", net->H * net->W == 1 ? net->D :
                       net->H * net->W);
    if (net->has_head) {
        ff_layer *Hd = &net->head;
        memset(Hd, 0, sizeof(*Hd));
        Hd->kind = FF_LAYER_LINEAR; Hd->C = net->F; Hd->H = Hd->W = 1;
        Hd->OC = net->K; Hd->OH = Hd->OW = 1; Hd->bias = 1;
        Hd->w_n = (size_t)net->K * net->F; Hd->b_n = (size_t)net->K;
        Hd->opt = ff_opt_config_default();
    }
    if (net->label == FF_LABEL_EMBEDDING) {
        /* one trainable H*W map per class, fed to layer 0 as an extra input channel */
        ff_layer *E = &net->embed;
        memset(E, 0, sizeof(*E));
        E->kind = FF_LAYER_LINEAR; E->C = net->H * net->W; E->H = E->W = 1;
        E->OC = net->K; E->OH = E->OW = 1;
        E->w_n = (size_t)net->K * net->H * net->W;
        E->opt = ff_opt_config_default();
    }
    if (net->label == FF_LABEL_FOURIER) {
        if (!net->modes) {
            ff_status st = ff_net_set_fourier_modes(net, NULL, 1);
            if (st != FF_OK) return st;
        }
        net->pattern = malloc((size_t)net->K * net->H * net->W * sizeof(float));
        if (!net->pattern) return ff_fail(net, FF_ERR_NOMEM, "out of memory for the label patterns");
        fourier_patterns(net->pattern, net->modes, net->K, net->nmodes, net->H, net->W);
    }
    if (net->want_dec) {
        /* one decoder per block of the cut in force: Linear(block output, block input) */
        int ends[FF_MAX_LAYERS], firsts[FF_MAX_LAYERS], nbk = net->nblocks;
        if (nbk) for (int b = 0; b < nbk; b++) { firsts[b] = net->blocks[b].first; ends[b] = net->blocks[b].last; }
        else {
            nbk = ff_net_default_blocks(net, ends);
            for (int b = 0; b < nbk; b++) firsts[b] = b ? ends[b - 1] : 0;
        }
        if (nbk <= 0) return ff_fail(net, FF_ERR_STATE, "no blocks to give decoders");
        net->dec = calloc((size_t)nbk, sizeof(ff_layer));
        if (!net->dec) return ff_fail(net, FF_ERR_NOMEM, "out of memory for %d decoders", nbk);
        net->ndec = nbk;
        for (int b = 0; b < nbk; b++) {
            ff_layer *Dc = &net->dec[b];
            Dc->kind = FF_LAYER_LINEAR; Dc->H = Dc->W = Dc->OH = Dc->OW = 1; Dc->bias = 1;
            Dc->C = (int)ff_layer_out(&net->layers[ends[b] - 1]);
            Dc->OC = (int)block_in(net, firsts[b]);
            Dc->w_n = (size_t)Dc->C * Dc->OC; Dc->b_n = (size_t)Dc->OC;
            Dc->opt = ff_opt_config_default();
        }
    }
    size_t np = 0, nb = 0, ns = 0;
    for (int i = 0; i < net->nl; i++) place_params(&net->layers[i], &np, &nb, &ns);
    net->tail_off = np;
    if (net->has_head) place_params(&net->head, &np, &nb, &ns);
    if (net->label == FF_LABEL_EMBEDDING) place_params(&net->embed, &np, &nb, &ns);
    for (int b = 0; b < net->ndec; b++) place_params(&net->dec[b], &np, &nb, &ns);
    net->nparams = np; net->nbuffers = nb; net->nsaved = ns;
    net->params = calloc(np ? np : 1, sizeof(float));
    net->m = calloc(np ? np : 1, sizeof(float));
    net->v = calloc(np ? np : 1, sizeof(float));
    net->gtail = calloc(np - net->tail_off + 1, sizeof(float));
    net->buffers = calloc(nb ? nb : 1, sizeof(float));
    net->saved = calloc(ns ? ns : 1, sizeof(float));
    if (!net->params || !net->m || !net->v || !net->gtail || !net->buffers || !net->saved)
        return ff_fail(net, FF_ERR_NOMEM, "out of memory for %zu parameters", np);
    for (int i = 0; i < net->nl; i++) {
        ff_layer *L = &net->layers[i];
        ff_layer_kinds[L->kind].init(net, L, net->rng);
    }
    if (net->has_head) ff_layer_kinds[FF_LAYER_LINEAR].init(net, &net->head, net->rng);
    if (net->label == FF_LABEL_EMBEDDING) {   /* small random maps */
        float bound = 0.5f * net->cfg.label_value, *p = net->params + net->embed.w_off;
        for (size_t i = 0; i < net->embed.w_n; i++) p[i] = (2.0f * ff_rng_uniform(net->rng) - 1.0f) * bound;
    }
    for (int b = 0; b < net->ndec; b++) ff_layer_kinds[FF_LAYER_LINEAR].init(net, &net->dec[b], net->rng);
    net->finalized = 1;
    if (!net->nblocks) {
        int ends[FF_MAX_LAYERS];
        int n = ff_net_default_blocks(net, ends);
        return ff_net_set_blocks(net, n, ends);
    }
    return compile_blocks(net);
}

/* ------------------------------------------------------------------ configuration */

ff_status ff_net_set_config(ff_net *net, const ff_config *c) {
    if ((int)c->loss < 0 || c->loss >= FF_NUM_LOSSES)
        return ff_fail(net, FF_ERR_ARG, "loss must be one of ff (0), symba (1), cwc (2), pvn (3), xent (4), "
                       "df (5), ae (6), got %d", (int)c->loss);
    if (!isfinite(c->theta)) return ff_fail(net, FF_ERR_ARG, "threshold must be finite, got %g", (double)c->theta);
    if (!isfinite(c->alpha) || !(c->alpha > 0.0f))
        return ff_fail(net, FF_ERR_ARG, "alpha must be finite and > 0, got %g", (double)c->alpha);
    if (!(c->pvn_weight >= 0.0f && c->pvn_weight <= 1.0f))
        return ff_fail(net, FF_ERR_ARG, "pvn_weight must be in [0, 1], got %g", (double)c->pvn_weight);
    if (!isfinite(c->margin) || !(c->margin >= 0.0f))
        return ff_fail(net, FF_ERR_ARG, "margin must be finite and >= 0, got %g", (double)c->margin);
    if (!(c->head_dropout >= 0.0f && c->head_dropout < 1.0f))
        return ff_fail(net, FF_ERR_ARG, "head_dropout must be in [0, 1), got %g", (double)c->head_dropout);
    if (c->head_dropout > 0.0f && net->pipe && ff_net_pipeline_in_flight(net) > 0)
        return ff_fail(net, FF_ERR_STATE, "head_dropout cannot be set while minibatches are in the pipeline");
    if ((int)c->goodness < 0 || c->goodness >= FF_NUM_GOODNESS)
        return ff_fail(net, FF_ERR_ARG, "goodness must be sum (0), mean (1), neg-sum (2) or neg-mean (3), got %d",
                       (int)c->goodness);
    if (c->norm != FF_NORM_NONE && c->norm != FF_NORM_L2 && c->norm != FF_NORM_RMS)
        return ff_fail(net, FF_ERR_ARG, "norm must be none (0), l2 (1) or rms (2), got %d", (int)c->norm);
    if (!(c->norm_eps > 0.0f) || !isfinite(c->norm_eps))   /* > 0: all-zero features normalise to zeros */
        return ff_fail(net, FF_ERR_ARG, "norm_eps must be finite and > 0 (as a float32), got %g", (double)c->norm_eps);
    if (!isfinite(c->label_value))
        return ff_fail(net, FF_ERR_ARG, "label_value must be finite, got %g", (double)c->label_value);
    for (int b = 0; b < net->nblocks; b++) {   /* every block must carry the new loss */
        ff_status st = loss_fits(net, c->loss, b, net->blocks[b].last - 1, 0);
        if (st == FF_OK && net->finalized)
            st = decoder_fits(net, c->loss, b, net->blocks[b].first, net->blocks[b].last - 1);
        if (st != FF_OK) return st;
    }
    net->loss = loss_of(c);
    for (int b = 0; b < net->nblocks; b++) net->blocks[b].loss = net->loss;
    net->cfg = *c;
    return FF_OK;
}
ff_config ff_net_get_config(const ff_net *net) { return net->cfg; }

ff_status ff_net_set_share_labels(ff_net *net, int on) {
    net->share_labels = on != 0;
    if (!net->nblocks) return FF_OK;
    /* recompiling the plans keeps the blocks' own losses (ff_net_set_block_loss) */
    ff_block_loss keep[FF_MAX_LAYERS];
    for (int b = 0; b < net->nblocks; b++) keep[b] = net->blocks[b].loss;
    ff_status st = compile_blocks(net);
    for (int b = 0; b < net->nblocks; b++) net->blocks[b].loss = keep[b];
    return st;
}

ff_status ff_net_set_block_loss(ff_net *net, int b, ff_loss_kind loss, ff_goodness_kind goodness,
                                float theta, float alpha, float pvn_weight) {
    if (b < 0 || b >= net->nblocks)
        return ff_fail(net, FF_ERR_ARG, "block %d does not exist (the net has %d)", b, net->nblocks);
    if ((int)loss < 0 || loss >= FF_NUM_LOSSES || (int)goodness < 0 || goodness >= FF_NUM_GOODNESS ||
        !isfinite(theta) || !(alpha > 0.0f) || !isfinite(alpha) || !(pvn_weight >= 0.0f && pvn_weight <= 1.0f))
        return ff_fail(net, FF_ERR_ARG, "block %d: loss %d, goodness %d, theta %g, alpha %g, pvn_weight %g: "
                       "need a known loss and goodness, finite theta, alpha > 0, pvn_weight in [0, 1]", b,
                       (int)loss, (int)goodness, (double)theta, (double)alpha, (double)pvn_weight);
    if (ff_losses[loss].negatives != ff_losses[net->loss.kind].negatives)
        return ff_fail(net, FF_ERR_ARG, "block %d: loss %s builds its rows differently from the net's %s "
                       "(negatives or not); all blocks of a step must agree", b, ff_losses[loss].name,
                       ff_losses[net->loss.kind].name);
    ff_block_loss old = net->blocks[b].loss, bl = {loss, goodness, theta, alpha, pvn_weight, net->cfg.margin};
    net->blocks[b].loss = bl;
    ff_status st = check_block_loss(net, b, 0);
    if (st != FF_OK) net->blocks[b].loss = old;
    return st;
}

static ff_layer *layer_at(ff_net *net, int layer) {
    if (layer == FF_LAYER_HEAD) return net->has_head && net->finalized ? &net->head : NULL;
    if (layer == FF_LAYER_EMBEDDING)
        return net->label == FF_LABEL_EMBEDDING && net->finalized ? &net->embed : NULL;
    if (layer <= FF_LAYER_DECODER(0))
        return FF_LAYER_DECODER(0) - layer < net->ndec ? &net->dec[FF_LAYER_DECODER(0) - layer] : NULL;
    if (layer < 0 || layer >= net->nl) return NULL;
    return &net->layers[layer];
}

static ff_status no_layer(ff_net *net, int layer) {
    return ff_fail(net, FF_ERR_ARG, "layer %d does not exist (layers 0..%d, %d: the head%s, %d: the "
                   "label embedding%s, %d - b: decoder b of %d)", layer, net->nl - 1, FF_LAYER_HEAD,
                   net->has_head ? "" : ", absent", FF_LAYER_EMBEDDING,
                   net->label == FF_LABEL_EMBEDDING ? "" : ", absent", FF_LAYER_DECODER(0), net->ndec);
}

/* float32-representable and finite */
static int finite_f(float x) { return isfinite(x); }

ff_status ff_net_set_opt(ff_net *net, int layer, const ff_opt_config *o) {
    ff_layer *L = layer_at(net, layer);
    if (!L) return no_layer(net, layer);
    if (o->kind != FF_OPT_ADAM && o->kind != FF_OPT_SGD && o->kind != FF_OPT_ADAMW)
        return ff_fail(net, FF_ERR_ARG, "optimizer kind must be sgd (0), adam (1) or adamw (2), got %d", (int)o->kind);
    if (!finite_f(o->lr) || !(o->lr >= 0.0f))
        return ff_fail(net, FF_ERR_ARG, "lr must be finite and >= 0, got %g", (double)o->lr);
    if (!finite_f(o->weight_decay) || !(o->weight_decay >= 0.0f))
        return ff_fail(net, FF_ERR_ARG, "weight_decay must be finite and >= 0, got %g", (double)o->weight_decay);
    if (!(o->beta1 >= 0.0f && o->beta1 < 1.0f) || !(o->beta2 >= 0.0f && o->beta2 < 1.0f))
        return ff_fail(net, FF_ERR_ARG, "betas must be in [0, 1), got (%g, %g)", (double)o->beta1, (double)o->beta2);
    if (!finite_f(o->eps) || !(o->eps >= 0.0f))
        return ff_fail(net, FF_ERR_ARG, "eps must be finite and >= 0, got %g", (double)o->eps);
    if (!finite_f(o->momentum) || !(o->momentum >= 0.0f))
        return ff_fail(net, FF_ERR_ARG, "momentum must be finite and >= 0, got %g", (double)o->momentum);
    if (!(o->dampening >= 0.0f && o->dampening <= 1.0f))
        return ff_fail(net, FF_ERR_ARG, "dampening must be in [0, 1], got %g", (double)o->dampening);
    if (o->nesterov && (o->momentum <= 0.0f || o->dampening != 0.0f))
        return ff_fail(net, FF_ERR_ARG, "nesterov needs momentum > 0 and dampening 0");
    L->opt = *o;
    return FF_OK;
}
ff_status ff_net_get_opt(const ff_net *net, int layer, ff_opt_config *o) {
    ff_layer *L = layer_at((ff_net *)net, layer);
    if (!L) return no_layer((ff_net *)net, layer);
    *o = L->opt;
    return FF_OK;
}
long ff_net_get_step(const ff_net *net, int layer) {
    ff_layer *L = layer_at((ff_net *)net, layer);
    return L ? L->step : -1;
}
ff_status ff_net_set_step(ff_net *net, int layer, long t) {
    ff_layer *L = layer_at(net, layer);
    if (!L) return no_layer(net, layer);
    if (t < 0) return ff_fail(net, FF_ERR_ARG, "step must be >= 0, got %ld", t);
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
int ff_net_is_finalized(const ff_net *net) { return net->finalized; }
ff_layer_kind ff_net_layer_kind(const ff_net *net, int layer) { return net->layers[layer].kind; }
void ff_net_layer_shape(const ff_net *net, int layer, int *C, int *H, int *W) {
    const ff_layer *L = &net->layers[layer];
    *C = L->OC; *H = L->OH; *W = L->OW;
}
ff_status ff_net_layer_info(const ff_net *net, int layer, ff_layer_info *info) {
    const ff_layer *L = layer_at((ff_net *)net, layer);
    if (!L) return no_layer((ff_net *)net, layer);
    info->kind = L->kind; info->C = L->C; info->H = L->H; info->W = L->W;
    info->OC = L->OC; info->OH = L->OH; info->OW = L->OW;
    info->kernel = L->k; info->stride = L->stride; info->pad = L->pad; info->groups = L->groups;
    info->bias = L->bias;
    return FF_OK;
}

void ff_net_block_range(const ff_net *net, int b, int *first, int *last) {
    *first = net->blocks[b].first;
    *last = net->blocks[b].last;
}
size_t ff_net_num_params(const ff_net *net) {
    size_t n = 0;
    for (int i = 0; i < net->nl; i++) n += net->layers[i].w_n + net->layers[i].b_n;
    if (net->has_head) n += net->head.w_n + net->head.b_n;
    if (net->label == FF_LABEL_EMBEDDING) n += net->embed.w_n;
    for (int b = 0; b < net->ndec; b++) n += net->dec[b].w_n + net->dec[b].b_n;
    return n;
}
size_t ff_net_workspace_bytes(const ff_net *net) { return net->work.ws_floats * sizeof(float); }

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
        if (!(ff_layer_kinds[L->kind].flags & FF_KF_STATS) || layer < 0) return NULL;
        *count = (size_t)L->C;
        return net->buffers + (which == FF_P_RUNNING_MEAN ? L->rm_off : L->rv_off);
    default:
        return NULL;
    }
    switch (which) {
    case FF_P_WEIGHT: case FF_P_BIAS: base = net->params; break;
    case FF_P_GRAD_WEIGHT: case FF_P_GRAD_BIAS:
        base = net->grads;   /* the split step's arena: NULL until a compute-only step ran */
        break;
    case FF_P_M_WEIGHT: case FF_P_M_BIAS: base = net->m; break;
    default: base = net->v; break;
    }
    if (!n || !base) return NULL;
    *count = n;
    return base + off;
}

/* ------------------------------------------------------------------ workspace */

/* Size the workspace w for forward passes of `rows` rows of which the first `trows` also run
 * backward (trows 0: keep the current backward capacity), from the compiled plans of blocks
 * [b0, b1) (a pipeline stage's work serves one block). */
static ff_status reserve_blocks(ff_net *net, ff_work *w, int rows, int trows, int b0, int b1) {
    if (!net->finalized) return ff_fail(net, FF_ERR_STATE, "the network is not finalized");
    if (rows <= 0 || trows < 0 || trows > rows)
        return ff_fail(net, FF_ERR_ARG, "rows must be positive (got %d) and training rows in [0, rows] "
                       "(got %d)", rows, trows);
    if (rows < net->K) rows = net->K;        /* multi-pass needs K rows for one sample */
    size_t acts = 0, carry = (size_t)net->Din, dw[2] = {0, 0}, headw = 0, convws = 0, fuse = 0;
    int parts = ff_get_num_threads();  /* conv scratch for that many image groups at once */
    if (parts < w->conv_parts) parts = w->conv_parts;
    for (int b = b0; b < b1; b++) {
        const ff_block *B = &net->blocks[b];
        const ff_plan *plans[2] = {&B->train, &B->seg};
        for (int q = 0; q < 2; q++) {
            const ff_plan *p = plans[q];
            if (p->act_floats > acts) acts = p->act_floats;
            for (int s = 0; s < p->nsteps; s++) {
                if (p->steps[s].op != FF_STEP_FUSED) continue;
                size_t cw = ff_layer_out(&net->layers[p->steps[s].layer]), r = (size_t)ff_fuse_rows(cw);
                if (r > (size_t)rows) r = (size_t)rows;
                if (r * cw > fuse) fuse = r * cw;
            }
        }
        for (int k = 0; k < 2; k++) if (B->train.dw[k] > dw[k]) dw[k] = B->train.dw[k];
        /* a block's input (training) and a segment's output (inference) pass through carry */
        if (B->first > 0 && ff_layer_out(&net->layers[B->first - 1]) > carry)
            carry = ff_layer_out(&net->layers[B->first - 1]);
        if (ff_layer_out(&net->layers[B->last - 1]) > carry) carry = ff_layer_out(&net->layers[B->last - 1]);
    }
    for (int i = net->blocks[b0].first; i < net->blocks[b1 - 1].last; i++) {
        const ff_layer *L = &net->layers[i];
        if (L->kind != FF_LAYER_CONV2D) continue;
        size_t c = ff_conv2d_workspace(L->C, L->H, L->W, L->OC, L->k, L->k, L->stride, L->pad, L->groups, parts);
        if (c > convws) convws = c;
    }
    for (int h = 0; h < net->nhead; h++)
        if (ff_layer_out(&net->layers[net->head_layers[h]]) > headw)
            headw = ff_layer_out(&net->layers[net->head_layers[h]]);
    /* the largest block's parameter span, for its gradients in the lean fused step */
    size_t span = 0;
    for (int b = b0; b < b1; b++) {
        int f = net->blocks[b].first, l = net->blocks[b].last;
        size_t hi = l < net->nl ? net->layers[l].w_off : net->tail_off;
        if (hi - net->layers[f].w_off > span) span = hi - net->layers[f].w_off;
    }
    if (net->ndec) {   /* the ae loss's reconstruction: training rows x the widest block input */
        size_t in = 0, need = 0;
        for (int b = b0; b < b1; b++) if (block_in(net, net->blocks[b].first) > in) in = block_in(net, net->blocks[b].first);
        need = (size_t)(trows > w->train_cap ? trows : w->train_cap) * in;
        if (need > w->rec_cap) {
            float *r = malloc(need * sizeof(float));
            if (!r) return ff_fail(net, FF_ERR_NOMEM, "out of memory for the ae reconstruction (%zu floats)", need);
            free(w->rec);
            w->rec = r; w->rec_cap = need;
        }
    }
    if (span > w->gscratch_cap) {
        float *g = malloc(span * sizeof(float));
        if (!g) return ff_fail(net, FF_ERR_NOMEM, "out of memory for a block's gradients (%zu floats)", span);
        free(w->gscratch);
        w->gscratch = g; w->gscratch_cap = span;
    }
    if (rows <= w->rows_cap && trows <= w->train_cap && acts <= w->acts_cap && carry <= w->carry_w &&
        dw[0] <= w->dw_cap[0] && dw[1] <= w->dw_cap[1] && headw <= w->head_w &&
        convws <= w->convws_cap && fuse <= w->fuse_cap)
        return FF_OK;
    /* grow only: every capacity is the larger of the old and the new */
#define FF_GROW(v, cap) do { if ((v) < (cap)) (v) = (cap); } while (0)
    FF_GROW(rows, w->rows_cap); FF_GROW(trows, w->train_cap); FF_GROW(acts, w->acts_cap);
    FF_GROW(carry, w->carry_w); FF_GROW(dw[0], w->dw_cap[0]); FF_GROW(dw[1], w->dw_cap[1]);
    FF_GROW(headw, w->head_w); FF_GROW(convws, w->convws_cap); FF_GROW(fuse, w->fuse_cap);
#undef FF_GROW
    size_t R = (size_t)rows, T = (size_t)trows, F = (size_t)(net->has_head ? net->F : 0);
    size_t K = (size_t)net->K, Din = (size_t)net->Din;
    size_t widest = acts + carry + dw[0] + dw[1] + headw + F + 2 * Din + 3 * K + 3;
    if (widest > ((size_t)1 << 52) / R)   /* keeps the sum below from wrapping around */
        return ff_fail(net, FF_ERR_NOMEM, "a workspace for %d rows of up to %zu floats is too large", rows, widest);
    size_t d1 = T * dw[1] > R * headw ? T * dw[1] : R * headw;
    size_t shr = 0;   /* the shared step's label column (its linear layer's outputs) */
    for (int i = 0; i < 2 && i < net->nl; i++)
        if (net->layers[i].kind == FF_LAYER_LINEAR) { shr = (size_t)net->layers[i].OC; break; }
    for (int i = 0; i < 2 && i < net->nl; i++)   /* the shared conv: its weights split, K + 1 maps and their convs */
        if (net->layers[i].kind == FF_LAYER_CONV2D && net->label == FF_LABEL_EMBEDDING) {
            const ff_layer *L = &net->layers[i];
            size_t kk = (size_t)L->k * L->k, HW = (size_t)net->H * net->W;
            shr = (size_t)L->OC * L->C * kk + (K + 1) * HW + (K + 1) * (size_t)L->OC * L->OH * L->OW;
            break;
        }
    size_t need = R * carry        /* carry */
                + R * acts         /* acts */
                + T * dw[0] + d1   /* d0, d1 */
                + 3 * R            /* g, dg, scale */
                + R * K            /* G: group goodness */
                + convws + fuse
                + R * F            /* feat */
                + 2 * R * K        /* logits, dlogits */
                + R * Din + T * Din   /* xtmp (encoded inputs), dxin (their gradient) */
                + shr;
    float *ws = malloc((need ? need : 1) * sizeof(float));
    int64_t *lab = malloc(2 * R * sizeof(int64_t));
    if (!ws || !lab) {
        free(ws); free(lab);
        return ff_fail(net, FF_ERR_NOMEM, "out of memory for a %zu MB workspace", need * sizeof(float) >> 20);
    }
    free(w->ws); free(w->lab);
    w->ws = ws; w->lab = lab; w->rowlab = lab + R; w->ws_floats = need;
    float *p = ws;
    w->carry = p; p += R * carry;
    w->acts = p; p += R * acts;
    w->d[0] = p; p += T * dw[0];
    w->d[1] = p; p += d1;
    w->g = p; p += R;
    w->dg = p; p += R;
    w->scale = p; p += R;
    w->G = p; p += R * K;
    w->conv_ws = p; p += convws;
    w->fuse_ws = p; p += fuse;
    w->feat = p; p += R * F;
    w->logits = p; p += R * K;
    w->dlogits = p; p += R * K;
    w->xtmp = p; p += R * Din;
    w->dxin = p; p += T * Din;
    w->shr = p;
    w->rows_cap = rows; w->train_cap = trows; w->acts_cap = acts;
    w->carry_w = carry; w->dw_cap[0] = dw[0]; w->dw_cap[1] = dw[1]; w->head_w = headw;
    w->convws_cap = convws; w->conv_parts = parts; w->fuse_cap = fuse;
    return FF_OK;
}

ff_status ff_net_reserve(ff_net *net, int rows) {
    if (rows <= 0) return ff_fail(net, FF_ERR_ARG, "rows must be positive, got %d", rows);
    return reserve_rows(net, &net->work, rows, rows);
}

/* ------------------------------------------------------------------ running a plan */

/* The shared step (see shareable).  Row r of `in` is sample j = share_of(r) with label
 * y_r = rowlab[r] in its first K values.  With the norm's scale s_r (the label adds v^2, or
 * K (v/K)^2 for the neutral label, to the row's squared norm) and P = X_rest W_rest^T over
 * the samples' first rows:
 *   z_r = s_r (P_j + v W[:, y_r]) + b,   neutral: s_r (P_j + v/K sum_k W[:, k]) + b.
 * P is written into the first rows of y and expanded downwards (row r reads sample j <= r). */
static int share_of(const ff_work *w, int r) { return w->share_div ? r / w->share_div : r % w->share_n; }
static int share_count(const ff_work *w, int R) { return w->share_div ? (R + w->share_div - 1) / w->share_div : w->share_n; }
static size_t share_stride(const ff_work *w) { return w->share_div ? (size_t)w->share_div : 1; }

static ff_status shared_forward(ff_net *net, ff_work *w, const ff_step *st, const float *in, float *y,
                                float *scale, int R) {
    const ff_layer *N = st->last > st->layer ? &net->layers[st->layer] : NULL, *Lin = &net->layers[st->last];
    int K = net->K, Din = net->Din, O = Lin->OC, n = share_count(w, R);
    float v = net->cfg.label_value;
    const float *W = net->params + Lin->w_off, *bias = Lin->b_n ? net->params + Lin->b_off : NULL;
    size_t lda = (size_t)Din * share_stride(w);
    ff_sgemm(0, 1, n, O, Din - K, 1.0f, in + K, (int)lda, W + K, Din, 0.0f, y, O);
    /* the norm of each sample's image part, then each row's scale */
    /* each sample's squared norm as a double in G (rows * K floats >= n doubles, K >= 2), through
     * memcpy: G need not be 8-byte aligned */
    char *ssj = (char *)w->G;
    for (int j = 0; j < n; j++) {
        const float *xr = in + j * lda + K;
        double ss = 0.0;
        for (int d = 0; d < Din - K; d++) ss += (double)xr[d] * xr[d];
        memcpy(ssj + (size_t)j * sizeof(double), &ss, sizeof(double));
    }
    for (int r = 0; r < R; r++) {
        float s = 1.0f;
        if (N && N->norm != FF_NORM_NONE) {
            double ss;
            memcpy(&ss, ssj + (size_t)share_of(w, r) * sizeof(double), sizeof(double));
            ss += w->rowlab[r] >= 0 ? (double)v * v : (double)K * (v / K) * (v / K);
            s = N->norm == FF_NORM_L2 ? (float)(1.0 / (sqrt(ss) + N->eps)) : (float)(1.0 / sqrt(ss / Din + N->eps));
        }
        scale[r] = s;
    }
    float *wsum = w->shr;   /* (O) the neutral label's column: v/K sum_k W[:, k] */
    for (int o = 0; o < O; o++) {
        double a = 0.0;
        for (int k = 0; k < K; k++) a += W[(size_t)o * Din + k];
        wsum[o] = (float)(a * v / K);
    }
    for (int r = R - 1; r >= 0; r--) {   /* elementwise, so row j may expand into itself */
        const float *P = y + (size_t)share_of(w, r) * O;
        float *z = y + (size_t)r * O, s = scale[r];
        int64_t lab = w->rowlab[r];
        for (int o = 0; o < O; o++)
            z[o] = s * (P[o] + (lab >= 0 ? v * W[(size_t)o * Din + lab] : wsum[o])) + (bias ? bias[o] : 0.0f);
    }
    return FF_OK;
}

/* Its backward on the first T rows: dW[:, K:] += G^T X_rest with G_j = sum over sample j's rows
 * of s_r dz_r (in `gs`, n x O), dW[:, y_r] += v s_r dz_r (neutral: v/K to every label column),
 * db += sum_r dz_r.  Nothing below the first layer trains, so no input gradient. */
static ff_status shared_backward(ff_net *net, ff_work *w, const ff_step *st, const float *in, const float *dz,
                                 float *gs, float *gw, float *gb, const float *scale, int T) {
    const ff_layer *Lin = &net->layers[st->last];
    int K = net->K, Din = net->Din, O = Lin->OC, n = share_count(w, T);
    float v = net->cfg.label_value;
    size_t lda = (size_t)Din * share_stride(w);
    memset(gs, 0, (size_t)n * O * sizeof(float));
    for (int r = 0; r < T; r++) {
        const float *d = dz + (size_t)r * O;
        float *g = gs + (size_t)share_of(w, r) * O, s = scale[r];
        int64_t lab = w->rowlab[r];
        for (int o = 0; o < O; o++) g[o] += s * d[o];
        if (gb) for (int o = 0; o < O; o++) gb[o] += d[o];
        if (lab >= 0) {
            for (int o = 0; o < O; o++) gw[(size_t)o * Din + lab] += v * s * d[o];
        } else {
            for (int o = 0; o < O; o++) {
                float c = v / K * s * d[o];
                for (int k = 0; k < K; k++) gw[(size_t)o * Din + k] += c;
            }
        }
    }
    ff_sgemm(1, 0, O, Din - K, n, 1.0f, gs, O, in + K, (int)lda, 1.0f, gw + K, Din);
    return FF_OK;
}

/* The shared conv's forward (see shareable_conv) on R rows: P_j = conv(image of sample j) with
 * the image channels' weights, E_k = conv(label map k) with the label channel's (k = K: the
 * neutral mean map), then z_r = s_r (P_j + E_{y_r}) + b with s_r the LenNorm's row scale
 * (`scale`, NULL: 1), which equals conv(s_r [x_j, e_{y_r}]) + b up to rounding.  Run only when
 * rows share samples (2n <= R); otherwise (explicit negatives) the step is the plain conv. */
static ff_status shared_conv_forward(ff_net *net, ff_work *w, const ff_step *st, const float *in,
                                     const float *scale, float *y, int R) {
    const ff_layer *L = &net->layers[st->layer];
    int n = share_count(w, R);
    int K = net->K, C = net->C, H = net->H, W = net->W, HW = H * W, O = L->OC, Cin = L->C;
    size_t kk = (size_t)L->k * L->k, OHW = (size_t)L->OH * L->OW, lda = (size_t)net->Din * share_stride(w);
    const float *Wt = net->params + L->w_off, *bias = L->b_n ? net->params + L->b_off : NULL;
    const float *emb = net->params + net->embed.w_off;
    float *wimg = w->shr, *wlab = wimg + (size_t)O * C * kk, *maps = wlab + (size_t)O * kk;
    float *E = maps + (size_t)(K + 1) * HW, *ximg = y + (size_t)n * O * OHW;
    for (int o = 0; o < O; o++) {
        memcpy(wimg + (size_t)o * C * kk, Wt + (size_t)o * Cin * kk, (size_t)C * kk * sizeof(float));
        memcpy(wlab + (size_t)o * kk, Wt + (size_t)o * Cin * kk + (size_t)C * kk, kk * sizeof(float));
    }
    memcpy(maps, emb, (size_t)K * HW * sizeof(float));
    float *mean = maps + (size_t)K * HW;   /* as encode_into builds the neutral map */
    for (int i = 0; i < HW; i++) mean[i] = 0.0f;
    for (int k = 0; k < K; k++)
        for (int i = 0; i < HW; i++) mean[i] += emb[(size_t)k * HW + i] / K;
    for (int j = 0; j < n; j++) memcpy(ximg + (size_t)j * C * HW, in + j * lda, (size_t)C * HW * sizeof(float));
    ff_status e = ff_conv2d_forward(y, ximg, wimg, NULL, n, C, H, W, O, L->k, L->k, L->stride, L->pad, 1,
                                    w->conv_ws, w->conv_parts);
    if (e == FF_OK)
        e = ff_conv2d_forward(E, maps, wlab, NULL, K + 1, 1, H, W, O, L->k, L->k, L->stride, L->pad, 1,
                              w->conv_ws, w->conv_parts);
    if (e != FF_OK) return e;
    size_t row = (size_t)O * OHW;
    for (int r = R - 1; r >= 0; r--) {   /* elementwise, so row j may expand into itself */
        const float *P = y + (size_t)share_of(w, r) * row;
        const float *Ek = E + (size_t)(w->rowlab[r] >= 0 ? w->rowlab[r] : K) * row;
        float *z = y + (size_t)r * row, s = scale ? scale[r] : 1.0f;
        for (int o = 0; o < O; o++) {
            float b = bias ? bias[o] : 0.0f;
            for (size_t q = (size_t)o * OHW; q < (size_t)(o + 1) * OHW; q++) z[q] = s * (P[q] + Ek[q]) + b;
        }
    }
    return FF_OK;
}

/* Forward plan p on R rows whose input (R, in_size(first)) is `in`.  Batch-norm layers take
 * statistics from the first T rows in training mode; those at index >= update_from also
 * update their running statistics. */
static ff_status plan_forward(ff_net *net, ff_work *w, const ff_plan *p, const float *in, int R, int T,
                              int update_from) {
    ff_ctx c = {net, w, net->training, 0};
    const float *x = in;
    for (int s = 0; s < p->nsteps; s++) {
        const ff_step *st = &p->steps[s];
        const ff_layer *L = &net->layers[st->layer];
        float *y = w->acts + st->out_off * (size_t)R, *aux = w->acts + st->aux_off * (size_t)R;
        ff_status e;
        if (st->op == FF_STEP_SHARED) {
            e = shared_forward(net, w, st, x, y, aux, R);
        } else if (st->op == FF_STEP_SHARED_CONV && 2 * share_count(w, R) <= R) {
            const float *scale = s ? w->acts + p->steps[s - 1].aux_off * (size_t)R : NULL;
            e = shared_conv_forward(net, w, st, in, scale, y, R);
        } else if (st->op == FF_STEP_FUSED) {
            e = ff_fused_forward(&c, L, &net->layers[st->last], x, y, (int32_t *)aux, R);
        } else {
            c.update_stats = st->layer >= update_from;
            e = ff_layer_kinds[L->kind].forward(&c, L, x, y, aux, R, T);
        }
        if (e != FF_OK)
            return ff_fail(net, e, "layer %d (%s) forward: %s", st->layer, kind_name(L->kind), ff_status_str(e));
        x = y;
    }
    return FF_OK;
}

/* Backward of plan p on the first T rows, from the loss gradient in d0.  Adds weight
 * gradients; input gradients stay inside the block, except that din (or NULL) receives the
 * gradient w.r.t. the block's input (for a label embedding). */
static ff_status plan_backward(ff_net *net, ff_work *w, const ff_plan *p, const float *in, int R, int T,
                               float *din) {
    ff_ctx c = {net, w, net->training, 0};
    for (int s = p->nsteps - 1; s >= 0; s--) {
        const ff_step *st = &p->steps[s];
        const ff_layer *L = &net->layers[st->layer];
        const float *x = s ? w->acts + p->steps[s - 1].out_off * (size_t)R : in;
        float *y = w->acts + st->out_off * (size_t)R, *aux = w->acts + st->aux_off * (size_t)R;
        float *dy = w->d[st->dy_buf];
        float *dx = st->dx_buf == FF_DX_NONE ? NULL : st->dx_buf == FF_DX_DIN ? din : w->d[st->dx_buf];
        if (dx && dx != dy) memset(dx, 0, (size_t)T * ff_layer_in(L) * sizeof(float));
        float *gw = L->w_n ? ff_grad_at(net, w, L->w_off) : NULL;
        float *gb = L->b_n ? ff_grad_at(net, w, L->b_off) : NULL;
        ff_status e;
        if (st->op == FF_STEP_SHARED) {
            const ff_layer *Lin = &net->layers[st->last];
            e = shared_backward(net, w, st, x, dy, w->d[st->dy_buf ^ 1], ff_grad_at(net, w, Lin->w_off),
                                Lin->b_n ? ff_grad_at(net, w, Lin->b_off) : NULL, aux, T);
        } else if (st->op == FF_STEP_FUSED)
            e = ff_fused_backward(&c, L, &net->layers[st->last], x, dy, dx, gw, gb, y, (const int32_t *)aux, T);
        else
            e = ff_layer_kinds[L->kind].backward(&c, L, dx, gw, gb, dy, x, y, aux, T);
        if (e != FF_OK)
            return ff_fail(net, e, "layer %d (%s) backward: %s", st->layer, kind_name(L->kind), ff_status_str(e));
        if (!dx) break;
    }
    return FF_OK;
}

static void layer_opt_step(ff_net *net, const ff_work *w, ff_layer *L) {
    if (!ff_layer_trainable(L)) return;
    L->step++;
    const ff_opt_config *o = &L->opt;
    size_t offs[2] = {L->w_off, L->b_off}, ns[2] = {L->w_n, L->b_n};
    for (int k = 0; k < 2; k++) {
        if (!ns[k]) continue;
        float *p = net->params + offs[k], *g = ff_grad_at(net, w, offs[k]);
        if (o->kind == FF_OPT_ADAM)
            ff_adam_step(p, net->m + offs[k], net->v + offs[k], g, ns[k], o->lr, o->beta1,
                         o->beta2, o->eps, o->weight_decay, L->step);
        else if (o->kind == FF_OPT_ADAMW)
            ff_adamw_step(p, net->m + offs[k], net->v + offs[k], g, ns[k], o->lr, o->beta1,
                          o->beta2, o->eps, o->weight_decay, L->step);
        else
            ff_sgd_step(p, net->m + offs[k], g, ns[k], o->lr, o->momentum, o->dampening,
                        o->weight_decay, o->nesterov, L->step);
    }
}

static void zero_layer_grads(ff_net *net, const ff_work *w, const ff_layer *L) {
    if (L->w_n) memset(ff_grad_at(net, w, L->w_off), 0, L->w_n * sizeof(float));
    if (L->b_n) memset(ff_grad_at(net, w, L->b_off), 0, L->b_n * sizeof(float));
}

void ff_net_zero_grad(ff_net *net) {
    if (net->grads) memset(net->grads, 0, net->nparams * sizeof(float));
    if (net->gtail) memset(net->gtail, 0, (net->nparams - net->tail_off) * sizeof(float));
}

/* The label embedding is trained by the loss of the block holding layer 0: dxin holds the
 * gradient w.r.t. the encoded input; each row's extra-channel gradient goes to the map that was
 * written into it: its label's, or for a neutral row (the mean of the maps) 1/K to every map. */
static void embedding_backward(ff_net *net, ff_work *w, int T) {
    int HW = net->H * net->W, Din = net->Din, K = net->K;
    float *g = ff_grad_at(net, w, net->embed.w_off);
    for (int r = 0; r < T; r++) {
        const float *dr = w->dxin + (size_t)r * Din + net->D;
        int64_t y = w->rowlab[r];
        if (y >= 0) {
            float *gk = g + (size_t)y * HW;
            for (int i = 0; i < HW; i++) gk[i] += dr[i];
        } else {
            for (int k = 0; k < K; k++)
                for (int i = 0; i < HW; i++) g[(size_t)k * HW + i] += dr[i] / K;
        }
    }
}

/* Copy the normalised output of head layer i (R rows in plan p), rows [r0, r0 + n), into its
 * columns of feat. */
static void gather_features(ff_net *net, ff_work *w, float *feat, const ff_plan *p, int i, int R, int r0,
                            int n) {
    size_t col = 0, d = ff_layer_out(&net->layers[i]);
    for (int h = 0; h < net->nhead && net->head_layers[h] != i; h++)
        col += ff_layer_out(&net->layers[net->head_layers[h]]);
    ff_lennorm_forward(w->d[1], w->scale, out_of(w, p, i, R) + (size_t)r0 * d, n, (int)d, net->cfg.norm,
                       net->cfg.norm_eps);
    for (int r = 0; r < n; r++)
        memcpy(feat + (size_t)r * net->F + col, w->d[1] + (size_t)r * d, d * sizeof(float));
}

static ff_status check_labels(ff_net *net, const int64_t *labels, int B, const char *what) {
    for (int b = 0; b < B; b++)
        if (labels[b] < 0 || labels[b] >= net->K)
            return ff_fail(net, FF_ERR_LABEL, "%s[%d] = %lld is out of range: labels must be in [0, %d)",
                           what, b, (long long)labels[b], net->K);
    return FF_OK;
}

/* The one-pass head: an ordinary linear layer on the gathered features, trained by the xent
 * row of the loss table.  Forward (+ backward when training) on n feature rows. */
static float head_run(ff_net *net, ff_work *w, const float *feat, int n, const int64_t *labels, float *probs,
                      int train) {
    ff_layer *Hd = &net->head;
    ff_ctx c = {net, w, net->training, 0};
    ff_layer_kinds[FF_LAYER_LINEAR].forward(&c, Hd, feat, w->logits, NULL, n, n);
    if (!train) {
        ff_softmax_rows(probs, w->logits, n, net->K);
        return 0.0f;
    }
    ff_block_loss bl = {FF_LOSS_XENT, FF_GOODNESS_SUM, 0.0f, 1.0f, 0.0f, 0.0f};
    ff_loss_scratch s = {.g = w->g, .dg = w->dg, .G = w->G, .dG = w->dlogits};
    float loss = ff_losses[FF_LOSS_XENT].loss(&bl, w->logits, w->dlogits, n, n, net->K, 1, net->K, labels, &s);
    ff_layer_kinds[FF_LAYER_LINEAR].backward(&c, Hd, NULL, ff_grad_at(net, w, Hd->w_off),
                                             ff_grad_at(net, w, Hd->b_off), w->dlogits, feat, w->logits,
                                             NULL, n);
    return loss;
}

/* Inverted dropout on the head's n input values (training only): each is zeroed with
 * probability p = head_dropout, the others scaled by 1 / (1 - p), drawn from the net's RNG.
 * The head's gradient stops at its input, so the masked values are all its backward needs. */
static void drop_features(ff_net *net, float *feat, size_t n) {
    float p = net->cfg.head_dropout, keep = 1.0f / (1.0f - p);
    for (size_t i = 0; i < n; i++) feat[i] = ff_rng_uniform(net->rng) < p ? 0.0f : feat[i] * keep;
}

/* The local loss of block b whose output y (R rows) was just computed, and its gradient
 * w.r.t. y in d0 (T rows). */
static ff_status block_loss(ff_net *net, ff_work *w, int b, const float *y, int B, int T, float *loss_out) {
    const ff_block *blk = &net->blocks[b];
    const ff_layer *last = &net->layers[blk->last - 1];
    ff_status st = check_block_loss(net, b, 1);
    if (st != FF_OK) return st;
    memset(w->d[0], 0, (size_t)T * ff_layer_out(last) * sizeof(float));
    ff_loss_scratch s = {.g = w->g, .dg = w->dg, .G = w->G, .dG = w->dlogits};
    if (blk->loss.kind == FF_LOSS_AE) {   /* the block's input (carry) and its decoder */
        const ff_layer *Dc = &net->dec[b];
        zero_layer_grads(net, w, Dc);
        s.in = w->carry; s.in_w = Dc->OC; s.rec = w->rec;
        s.dec_w = net->params + Dc->w_off; s.dec_b = net->params + Dc->b_off;
        s.dec_gw = ff_grad_at(net, w, Dc->w_off); s.dec_gb = ff_grad_at(net, w, Dc->b_off);
    }
    float loss = ff_losses[blk->loss.kind].loss(&blk->loss, y, w->d[0], B, T, last->OC, last->OH * last->OW,
                                                net->K, w->lab, &s);
    if (!isfinite(loss))
        return ff_fail(net, FF_ERR_NONFINITE, "block %d: the %s loss is not finite (%g): the weights or "
                       "inputs hold NaN/inf or training diverged (lower the learning rate)", b,
                       ff_losses[blk->loss.kind].name, (double)loss);
    *loss_out = loss;
    return FF_OK;
}

/* ------------------------------------------------------------------ training */

/* Block b's decoder when it trains by the ae loss, else NULL. */
static ff_layer *ae_decoder(ff_net *net, int b) {
    return net->blocks[b].loss.kind == FF_LOSS_AE && b < net->ndec ? &net->dec[b] : NULL;
}

/* The last block a step with `active` runs (trains or forwards for the head): stop - 1. */
static int train_stop(const ff_net *net, const uint8_t *active, int train_head) {
    int stop = 0;
    for (int b = 0; b < net->nblocks; b++) if (!active || active[b]) stop = b + 1;
    if (train_head) {
        int lastl = net->head_layers[net->nhead - 1];
        for (int b = 0; b < net->nblocks; b++) if (net->blocks[b].last > lastl) { if (b + 1 > stop) stop = b + 1; break; }
    }
    return stop;
}

int ff_net_train_out_size(const ff_net *net, const uint8_t *active) {
    int stop = train_stop(net, active, 0);
    return stop ? (int)ff_layer_out(&net->layers[net->blocks[stop - 1].last - 1]) : 0;
}

int ff_net_progress(const ff_net *net) {
    return atomic_load_explicit(&((ff_net *)net)->progress, memory_order_acquire);
}

static void set_progress(ff_net *net, int layers) {
    atomic_store_explicit(&net->progress, layers, memory_order_release);
}

/* Negative rows per positive row of the net's loss: 0, 1 or K - 1. */
static int negatives_per_row(const ff_net *net) {
    int n = ff_losses[net->loss.kind].negatives;
    return n == FF_NEG_ALL ? net->K - 1 : n;
}

int ff_net_train_rows(const ff_net *net, int B) { return (1 + negatives_per_row(net)) * B; }

/* The labels of a step's R rows: B positive, nneg groups of B negative (given, drawn, or with
 * nneg = K - 1 every wrong label in turn), and from T on B neutral (-1). */
static void step_labels(ff_net *net, int64_t *lab, const int64_t *labels, const int64_t *neg_labels,
                        int B, int nneg, int T, int R) {
    for (int b = 0; b < B; b++) {
        lab[b] = labels ? labels[b] : -1;   /* a label-free loss may train without labels */
        if (nneg == 1) {
            if (neg_labels) lab[B + b] = neg_labels[b];
            else {
                int k = ff_rng_below(net->rng, net->K - 1);
                lab[B + b] = k >= labels[b] ? k + 1 : k;
            }
        } else {
            for (int j = 0; j < nneg; j++) lab[(size_t)(j + 1) * B + b] = j >= labels[b] ? j + 1 : j;
        }
        if (R > T) lab[T + b] = -1;
    }
}

ff_status ff_net_train_step(ff_net *net, const float *x, const int64_t *labels,
                            const int64_t *neg_labels, int B, const uint8_t *active,
                            int train_head, int apply_update, float *losses) {
    ff_train_args a = {x, NULL, labels, neg_labels, B, active, train_head, apply_update, losses, NULL};
    return ff_net_train(net, &a);
}

ff_status ff_net_train(ff_net *net, const ff_train_args *a) {
    const float *x = a->x, *xneg = a->x_neg;
    const int64_t *labels = a->labels, *neg_labels = a->neg_labels;
    int B = a->B, train_head = a->train_head, apply_update = a->apply_update;
    const uint8_t *active = a->active;
    float *losses = a->losses;
    if (!net->finalized) return ff_fail(net, FF_ERR_STATE, "the network is not finalized");
    set_progress(net, 0);
    if (!x) return ff_fail(net, FF_ERR_ARG, "x is required");
    int nneg = negatives_per_row(net), free_ = nneg == 0, maxB = INT_MAX / (nneg + 2);
    if (B <= 0 || B > maxB) return ff_fail(net, FF_ERR_ARG, "batch size must be in [1, %d], got %d", maxB, B);
    if (train_head && !net->has_head) return ff_fail(net, FF_ERR_STATE, "train_head: the network has no one-pass head");
    if (xneg && nneg != 1)
        return ff_fail(net, FF_ERR_ARG, "x_neg: the %s loss %s, not on one negative per positive (use ff or "
                       "symba)", ff_losses[net->loss.kind].name,
                       free_ ? "trains on labelled rows" : "compares each sample under every label");
    if (!xneg && !free_ && net->label == FF_LABEL_NONE)
        return ff_fail(net, FF_ERR_ARG, "the %s loss compares inputs carrying the true and a wrong label, but "
                       "label_encoding is none: pass explicit negatives (x_neg), or use a label encoding",
                       ff_losses[net->loss.kind].name);
    if (!labels && (train_head || (!xneg && !ff_losses[net->loss.kind].label_free)))
        return ff_fail(net, FF_ERR_ARG, "labels are required (only a step with x_neg or a label-free loss (ae), and "
                       "no head, may omit them)");
    if (!labels && !xneg)   /* a block may have its own loss (ff_net_set_block_loss) that reads labels */
        for (int b = 0; b < net->nblocks; b++)
            if ((!a->active || a->active[b]) && !ff_losses[net->blocks[b].loss.kind].label_free)
                return ff_fail(net, FF_ERR_ARG, "labels are required: block %d trains by the %s loss, which reads "
                               "them", b, ff_losses[net->blocks[b].loss.kind].name);
    ff_status st = labels ? check_labels(net, labels, B, "labels") : FF_OK;
    if (st != FF_OK) return st;
    ff_work *w = &net->work;
    if (neg_labels && nneg == 1) {
        st = check_labels(net, neg_labels, B, "neg_labels");
        if (st != FF_OK) return st;
        if (!xneg)
            for (int b = 0; b < B; b++)
                if (neg_labels[b] == labels[b])
                    return ff_fail(net, FF_ERR_LABEL, "neg_labels[%d] equals labels[%d] (%lld): a negative label "
                                   "must differ from the true one", b, b, (long long)labels[b]);
    }
    int D = net->D, nb = net->nblocks;
    /* training rows T, and B neutral rows for the head; the label-free losses see only
     * neutral-label rows, which also serve the head */
    int T = (1 + nneg) * B;
    int head_rows_at = free_ ? 0 : T;
    int R = train_head && !free_ ? T + B : T;
    st = reserve_rows(net, w, R, T);
    if (st != FF_OK) return st;
    if (losses) for (int b = 0; b <= nb; b++) losses[b] = 0.0f;

    int64_t *lab = w->lab;
    if (xneg) {   /* explicit negatives: each with its own label, or the positive's */
        for (int b = 0; b < B; b++) {
            lab[b] = labels ? labels[b] : -1;
            lab[B + b] = neg_labels ? neg_labels[b] : lab[b];
            if (R > T) lab[T + b] = -1;
        }
    } else {
        step_labels(net, lab, labels, neg_labels, B, nneg, T, R);
    }
    for (int r = 0; r < R; r++) {
        const float *src = xneg && r >= B && r < T ? xneg + (size_t)(r - B) * D : x + (size_t)(r % B) * D;
        encode_row(net, w, r, src, free_ ? -1 : lab[r]);
    }
    /* explicit negatives are other samples: every row its own (the shared first layer then
     * runs row by row) */
    if (xneg) share_rows(w, R, 0);
    else share_rows(w, B, 0);

    /* layers in an active block are trained; their gradients are zeroed first and every
     * layer steps once at the end (a layer in two overlapping blocks sums both gradients) */
    uint8_t train_layer[FF_MAX_LAYERS] = {0};
    int stop = train_stop(net, active, train_head), embed = 0;
    for (int b = 0; b < nb; b++) {
        if (active && !active[b]) continue;
        for (int i = net->blocks[b].first; i < net->blocks[b].last; i++) train_layer[i] = 1;
        if (holds_input(net, b) && net->label == FF_LABEL_EMBEDDING) embed = 1;
    }
    /* lean: a block's gradients live in gscratch and it steps right after its backward */
    int overlap = 0;
    for (int b = 1; b < nb; b++) overlap |= net->blocks[b].first < net->blocks[b - 1].last;
    w->lean = apply_update && !overlap;
    if (!w->lean) {
        st = full_grads(net);
        if (st != FF_OK) return st;
    }
    if (!apply_update) ff_net_zero_grad(net);
    else {
        if (!w->lean)
            for (int i = 0; i < net->nl; i++) if (train_layer[i]) zero_layer_grads(net, w, &net->layers[i]);
        if (embed) zero_layer_grads(net, w, &net->embed);
        if (train_head) zero_layer_grads(net, w, &net->head);
    }

    /* carry = the input of the block about to run */
    memcpy(w->carry, w->xtmp, (size_t)R * net->Din * sizeof(float));
    for (int b = 0; b < stop; b++) {
        const ff_block *blk = &net->blocks[b];
        int f = blk->first, l = blk->last;
        int on = !active || active[b];
        /* batch-norm running stats: updated once per layer, by the first block running it */
        st = plan_forward(net, w, &blk->train, w->carry, R, T, on ? (b ? net->blocks[b - 1].last : 0) : net->nl);
        if (st != FF_OK) return st;
        if (a->out && b == stop - 1)
            memcpy(a->out, out_of(w, &blk->train, l - 1, R), (size_t)T * ff_layer_out(&net->layers[l - 1]) * sizeof(float));
        if (on) {
            float loss = 0.0f;
            st = block_loss(net, w, b, out_of(w, &blk->train, l - 1, R), B, T, &loss);
            if (st != FF_OK) return st;
            if (losses) losses[b] = loss;
            int emb = holds_input(net, b) && net->label == FF_LABEL_EMBEDDING;
            if (w->lean) {
                w->gscratch_base = net->layers[f].w_off;
                size_t hi = l < net->nl ? net->layers[l].w_off : net->tail_off;
                memset(w->gscratch, 0, (hi - w->gscratch_base) * sizeof(float));
            }
            st = plan_backward(net, w, &blk->train, w->carry, R, T, emb ? w->dxin : NULL);
            if (st != FF_OK) return st;
            if (emb) embedding_backward(net, w, T);
            if (w->lean) {   /* the next block's input was computed before this update */
                for (int i = f; i < l; i++) layer_opt_step(net, w, &net->layers[i]);
                if (ae_decoder(net, b)) layer_opt_step(net, w, ae_decoder(net, b));
            }
            /* layers no later block trains have their final gradients */
            int fin = l;
            for (int j = b + 1; j < stop; j++)
                if ((!active || active[j]) && net->blocks[j].first < fin) fin = net->blocks[j].first;
            set_progress(net, fin);
        }
        if (train_head)
            for (int i = f; i < l; i++)
                if (is_head_layer(net, i) && (b == 0 || i >= net->blocks[b - 1].last))
                    gather_features(net, w, w->feat, &blk->train, i, R, head_rows_at, B);
        /* the next block's input: the output of the layer before its first */
        if (b + 1 < stop) {
            int src = net->blocks[b + 1].first - 1;
            memcpy(w->carry, out_of(w, &blk->train, src, R),
                   (size_t)R * ff_layer_out(&net->layers[src]) * sizeof(float));
        }
    }
    if (train_head) {
        if (net->cfg.head_dropout > 0.0f) drop_features(net, w->feat, (size_t)B * net->F);
        float hl = head_run(net, w, w->feat, B, labels, NULL, 1);   /* training needs no probabilities */
        if (!isfinite(hl))
            return ff_fail(net, FF_ERR_NONFINITE, "the one-pass head's loss is not finite (%g): lower its "
                           "learning rate", (double)hl);
        if (losses) losses[nb] = hl;
    }
    set_progress(net, net->nl + 1);
    if (apply_update) {
        if (!w->lean) {
            for (int i = 0; i < net->nl; i++) if (train_layer[i]) layer_opt_step(net, w, &net->layers[i]);
            for (int b = 0; b < nb; b++)
                if ((!active || active[b]) && ae_decoder(net, b)) layer_opt_step(net, w, ae_decoder(net, b));
        }
        if (embed) layer_opt_step(net, w, &net->embed);
        if (train_head) layer_opt_step(net, w, &net->head);
    }
    return FF_OK;
}

ff_status ff_net_optimizer_step(ff_net *net, const uint8_t *active, int head) {
    if (!net->finalized) return ff_fail(net, FF_ERR_STATE, "the network is not finalized");
    if (!net->grads)
        return ff_fail(net, FF_ERR_STATE, "no gradients to apply: run a compute-only step (compute_grads) first");
    if (head && !net->has_head) return ff_fail(net, FF_ERR_STATE, "head: the network has no one-pass head");
    ff_work *w = &net->work;
    w->lean = 0;
    uint8_t train_layer[FF_MAX_LAYERS] = {0};
    int embed = 0;
    for (int b = 0; b < net->nblocks; b++) {
        if (active && !active[b]) continue;
        for (int i = net->blocks[b].first; i < net->blocks[b].last; i++) train_layer[i] = 1;
        if (holds_input(net, b) && net->label == FF_LABEL_EMBEDDING) embed = 1;
    }
    for (int i = 0; i < net->nl; i++) if (train_layer[i]) layer_opt_step(net, w, &net->layers[i]);
    for (int b = 0; b < net->nblocks; b++)
        if ((!active || active[b]) && ae_decoder(net, b)) layer_opt_step(net, w, ae_decoder(net, b));
    if (embed) layer_opt_step(net, w, &net->embed);
    if (head) layer_opt_step(net, w, &net->head);
    return FF_OK;
}

/* ------------------------------------------------------------------ inference */

/* Rows worth reserving for an inference call wanting `want` rows: enough for large GEMMs,
 * but the workspace capped near 256 MB (an image net's rows are large). */
static int inference_rows(const ff_net *net, size_t want) {
    size_t per_row = (size_t)net->Din * 3;
    for (int i = 0; i < net->nl; i++) per_row += 4 * ff_layer_out(&net->layers[i]);
    size_t cap = ((size_t)256 << 20) / (per_row * sizeof(float));
    size_t rows = want < 2048 ? want : 2048;
    if (rows > cap) rows = cap;
    return rows < (size_t)net->K ? net->K : (int)rows;
}

/* Run the segments (layers between consecutive block ends) up to and including segment
 * `stop - 1` on the R rows in carry; after each block end write its class scores (if out) and
 * gather head features from rows [0, fn). */
static ff_status run_segments(ff_net *net, ff_work *w, int R, int stop, int fn, float *out, size_t rstride,
                              size_t kstride, int per_label) {
    for (int b = 0; b < stop; b++) {
        const ff_block *blk = &net->blocks[b];
        const ff_plan *p = &blk->seg;
        ff_status st = plan_forward(net, w, p, w->carry, R, R, net->nl);
        if (st != FF_OK) return st;
        for (int i = p->first; i < p->last; i++) if (fn && is_head_layer(net, i)) gather_features(net, w, w->feat, p, i, R, 0, fn);
        const ff_layer *last = &net->layers[blk->last - 1];
        const float *y = out_of(w, p, blk->last - 1, R);
        if (out) {
            ff_loss_scratch s = {.g = w->g, .dg = w->dg, .G = w->G, .dG = w->dlogits};
            ff_losses[blk->loss.kind].scores(&blk->loss, y, R, last->OC, last->OH * last->OW, net->K, out + b,
                                             rstride, per_label ? 0 : kstride, &s);
        }
        if (b + 1 < stop) memcpy(w->carry, y, (size_t)R * ff_layer_out(last) * sizeof(float));
    }
    return FF_OK;
}

/* Every block's loss must be able to score classes before an inference that reads them. */
static ff_status check_scores(ff_net *net) {
    if (net->label == FF_LABEL_NONE)
        for (int b = 0; b < net->nblocks; b++)
            if (ff_losses[net->blocks[b].loss.kind].negatives)
                return ff_fail(net, FF_ERR_ARG, "block %d's loss %s scores the goodness of inputs carrying a "
                               "label, but label_encoding is none: its goodness is the same for every label "
                               "(use features() with a probe, or a label encoding)", b,
                               ff_losses[net->blocks[b].loss.kind].name);
    for (int b = 0; b < net->nblocks; b++) {
        if (!ff_losses[net->blocks[b].loss.kind].scores)
            return ff_fail(net, FF_ERR_ARG, "block %d's %s loss has no class scores (it reconstructs its input, "
                           "without labels): classify with the one-pass head on the features (a linear probe)",
                           b, ff_losses[net->blocks[b].loss.kind].name);
        ff_status st = check_block_loss(net, b, 1);
        if (st != FF_OK) return st;
    }
    return FF_OK;
}

ff_status ff_net_goodness(ff_net *net, const float *x, int B, float *out) {
    if (!net->finalized) return ff_fail(net, FF_ERR_STATE, "the network is not finalized");
    if (B <= 0) return ff_fail(net, FF_ERR_ARG, "batch size must be positive, got %d", B);
    ff_status st = check_scores(net);
    if (st != FF_OK) return st;
    ff_work *w = &net->work;
    int K = net->K, D = net->D, nb = net->nblocks, Din = net->Din;
    /* FF/SymBa: one row per (sample, label); label-free losses: one neutral row per sample */
    int per = ff_losses[net->loss.kind].negatives ? K : 1;
    st = reserve_rows(net, w, inference_rows(net, (size_t)B * per), 0);
    if (st != FF_OK) return st;
    int chunk = w->rows_cap / per;
    for (int s0 = 0; s0 < B; s0 += chunk) {
        int n = B - s0 < chunk ? B - s0 : chunk, R = n * per;
        for (int s = 0; s < n; s++)
            for (int k = 0; k < per; k++)
                encode_row(net, w, s * per + k, x + (size_t)(s0 + s) * D, per == 1 ? -1 : k);
        share_rows(w, n, per);
        memcpy(w->carry, w->xtmp, (size_t)R * Din * sizeof(float));
        /* out (B, K, nb): row r = s*per + k is at (s0 + s, k); label-free rows fill all K */
        st = run_segments(net, w, R, nb, 0, out + (size_t)s0 * K * nb, per == 1 ? (size_t)K * nb : (size_t)nb,
                          (size_t)nb, 0);
        if (st != FF_OK) return st;
    }
    return FF_OK;
}

ff_status ff_net_goodness_labeled(ff_net *net, const float *x, const int64_t *labels, int B,
                                  float *out) {
    if (!net->finalized) return ff_fail(net, FF_ERR_STATE, "the network is not finalized");
    if (B <= 0) return ff_fail(net, FF_ERR_ARG, "batch size must be positive, got %d", B);
    if (!ff_losses[net->loss.kind].negatives)
        return ff_fail(net, FF_ERR_STATE, "goodness of labelled inputs needs a loss that reads the label from "
                       "the input (ff, symba); this net's loss is %s", ff_losses[net->loss.kind].name);
    if (labels) { ff_status st = check_labels(net, labels, B, "labels"); if (st != FF_OK) return st; }
    ff_work *w = &net->work;
    int D = net->D, nb = net->nblocks, Din = net->Din;
    ff_status st = reserve_rows(net, w, inference_rows(net, (size_t)B), 0);
    if (st != FF_OK) return st;
    int chunk = w->rows_cap;
    for (int s0 = 0; s0 < B; s0 += chunk) {
        int n = B - s0 < chunk ? B - s0 : chunk;
        for (int r = 0; r < n; r++)
            encode_row(net, w, r, x + (size_t)(s0 + r) * D, labels ? labels[s0 + r] : -1);
        share_rows(w, n, 0);
        memcpy(w->carry, w->xtmp, (size_t)n * Din * sizeof(float));
        st = run_segments(net, w, n, nb, 0, out + (size_t)s0 * nb, (size_t)nb, 0, 1);
        if (st != FF_OK) return st;
    }
    return FF_OK;
}

static ff_status features_chunked(ff_net *net, const float *x, int B, float *feat_out, float *probs) {
    if (!net->finalized) return ff_fail(net, FF_ERR_STATE, "the network is not finalized");
    if (!net->has_head) return ff_fail(net, FF_ERR_STATE, "the network has no one-pass head (head_blocks=None)");
    if (B <= 0) return ff_fail(net, FF_ERR_ARG, "batch size must be positive, got %d", B);
    ff_work *w = &net->work;
    int D = net->D, F = net->F, K = net->K, Din = net->Din;
    ff_status st = reserve_rows(net, w, inference_rows(net, (size_t)B), 0);
    if (st != FF_OK) return st;
    int chunk = w->rows_cap, stop = net->nblocks;
    int lastl = net->head_layers[net->nhead - 1];
    for (int b = 0; b < net->nblocks; b++) if (net->blocks[b].last > lastl) { stop = b + 1; break; }
    for (int s0 = 0; s0 < B; s0 += chunk) {
        int n = B - s0 < chunk ? B - s0 : chunk;
        for (int r = 0; r < n; r++)
            encode_row(net, w, r, x + (size_t)(s0 + r) * D, -1);
        share_rows(w, n, 0);
        memcpy(w->carry, w->xtmp, (size_t)n * Din * sizeof(float));
        st = run_segments(net, w, n, stop, n, NULL, 0, 0, 0);
        if (st != FF_OK) return st;
        if (feat_out) memcpy(feat_out + (size_t)s0 * F, w->feat, (size_t)n * F * sizeof(float));
        if (probs) head_run(net, w, w->feat, n, NULL, probs + (size_t)s0 * K, 0);
    }
    return FF_OK;
}

ff_status ff_net_features(ff_net *net, const float *x, int B, float *feat) {
    return features_chunked(net, x, B, feat, NULL);
}

ff_status ff_net_head_predict(ff_net *net, const float *x, int B, float *probs) {
    return features_chunked(net, x, B, NULL, probs);
}

/* ------------------------------------------------------------------ early exit (LightFF) */

/* First argmax of the K scores s and the confidence the rule reads from them. */
static double exit_confidence(const float *s, int K, int rule, int *arg) {
    int a = 0;
    for (int k = 1; k < K; k++) if (s[k] > s[a]) a = k;
    *arg = a;
    if (rule == FF_EXIT_SCORE) return s[a];
    double z = 0.0;
    for (int k = 0; k < K; k++) z += exp((double)s[k] - (double)s[a]);
    return 1.0 / z;
}

/* Blocks a one-pass prediction runs: up to the one holding the head's last input layer. */
static int head_stop(const ff_net *net) {
    int lastl = net->head_layers[net->nhead - 1];
    for (int b = 0; b < net->nblocks; b++) if (net->blocks[b].last > lastl) return b + 1;
    return net->nblocks;
}

ff_status ff_net_predict_early_exit(ff_net *net, const float *x, int B, int onepass, int rule,
                                    const double *thresholds, int64_t *pred, int32_t *used) {
    if (!net->finalized) return ff_fail(net, FF_ERR_STATE, "the network is not finalized");
    if (B <= 0) return ff_fail(net, FF_ERR_ARG, "batch size must be positive, got %d", B);
    if (rule != FF_EXIT_SOFTMAX && rule != FF_EXIT_SCORE)
        return ff_fail(net, FF_ERR_ARG, "rule must be %d (softmax) or %d (score), got %d", FF_EXIT_SOFTMAX,
                       FF_EXIT_SCORE, rule);
    for (int b = 0; b < net->nblocks; b++)
        if (isnan(thresholds[b])) return ff_fail(net, FF_ERR_ARG, "thresholds[%d] is NaN", b);
    if (onepass && !net->has_head)
        return ff_fail(net, FF_ERR_STATE, "the network has no one-pass head (head_blocks=None)");
    ff_status st = onepass ? FF_OK : check_scores(net);
    if (st != FF_OK) return st;
    ff_work *w = &net->work;
    int K = net->K, D = net->D, Din = net->Din, F = net->F;
    int per = !onepass && ff_losses[net->loss.kind].negatives ? K : 1;
    int stop = onepass ? head_stop(net) : net->nblocks;
    /* the same rows and chunks as ff_net_goodness / ff_net_head_predict: with no exit the
     * arithmetic is theirs */
    st = reserve_rows(net, w, inference_rows(net, (size_t)B * per), 0);
    if (st != FF_OK) return st;
    float *acc = w->dlogits;   /* (m, K): accumulated scores (one-pass: partial head logits) */
    float *blk = w->logits;    /* (m, K): this block's scores (multi-pass) */
    int64_t *idx = w->lab;     /* (m): the sample of each active slot */
    const float *HW = onepass ? net->params + net->head.w_off : NULL;
    const float *Hb = onepass && net->head.b_n ? net->params + net->head.b_off : NULL;
    int chunk = w->rows_cap / per;
    for (int s0 = 0; s0 < B; s0 += chunk) {
        int n = B - s0 < chunk ? B - s0 : chunk, m = n;
        for (int s = 0; s < n; s++)
            for (int k = 0; k < per; k++)
                encode_row(net, w, s * per + k, x + (size_t)(s0 + s) * D, per == 1 ? -1 : k);
        share_rows(w, n, per);
        memcpy(w->carry, w->xtmp, (size_t)n * per * Din * sizeof(float));
        for (int s = 0; s < n; s++) {
            idx[s] = s0 + s;
            for (int k = 0; k < K; k++) acc[(size_t)s * K + k] = Hb ? Hb[k] : 0.0f;
        }
        for (int b = 0; b < stop && m > 0; b++) {
            const ff_block *blkp = &net->blocks[b];
            const ff_plan *p = &blkp->seg;
            const ff_layer *last = &net->layers[blkp->last - 1];
            int R = m * per, decide = 1;
            st = plan_forward(net, w, p, w->carry, R, R, net->nl);
            if (st != FF_OK) return st;
            const float *y = out_of(w, p, blkp->last - 1, R);
            if (!onepass) {
                ff_loss_scratch sc = {.g = w->g, .dg = w->dg, .G = w->G};
                ff_losses[blkp->loss.kind].scores(&blkp->loss, y, R, last->OC, last->OH * last->OW, K, blk,
                                                  per == 1 ? (size_t)K : 1, 1, &sc);
                for (size_t i = 0; i < (size_t)m * K; i++) acc[i] += blk[i];
            } else {
                decide = 0;   /* a block feeding the head nothing cannot change the prediction */
                size_t col = 0;
                for (int h = 0; h < net->nhead; h++) {
                    int i = net->head_layers[h];
                    size_t d = ff_layer_out(&net->layers[i]);
                    if (i >= p->first && i < p->last) {
                        gather_features(net, w, w->feat, p, i, R, 0, m);
                        if (b + 1 < stop)
                            ff_sgemm(0, 1, m, K, (int)d, 1.0f, w->feat + col, F, HW + col, F, 1.0f, acc, K);
                        decide = 1;
                    }
                    col += d;
                }
            }
            if (b + 1 == stop) {   /* the last block: everyone still running answers here */
                const float *s = acc;
                if (onepass) { head_run(net, w, w->feat, m, NULL, w->G, 0); s = w->G; }
                for (int i = 0; i < m; i++) {
                    int a;
                    exit_confidence(s + (size_t)i * K, K, FF_EXIT_SCORE, &a);
                    pred[idx[i]] = a; used[idx[i]] = b + 1;
                }
                break;
            }
            /* answer the confident samples, compact the others into the next block's input */
            size_t rowf = (size_t)per * ff_layer_out(last);
            int keep = 0;
            for (int i = 0; i < m; i++) {
                int a;
                double c = exit_confidence(acc + (size_t)i * K, K, rule, &a);
                if (decide && c >= thresholds[b]) { pred[idx[i]] = a; used[idx[i]] = b + 1; continue; }
                if (keep != i) {
                    memmove(acc + (size_t)keep * K, acc + (size_t)i * K, (size_t)K * sizeof(float));
                    if (onepass) memmove(w->feat + (size_t)keep * F, w->feat + (size_t)i * F, (size_t)F * sizeof(float));
                    idx[keep] = idx[i];
                }
                memcpy(w->carry + (size_t)keep * rowf, y + (size_t)i * rowf, rowf * sizeof(float));
                keep++;
            }
            m = keep;
        }
    }
    return FF_OK;
}

/* ------------------------------------------------------------------ gradient check */

/* Directional derivative check of one block's local loss.  FF gradients are local: block c's
 * loss is differentiated w.r.t. its own parameters only, with its input held fixed, so the
 * check perturbs, along a random direction u, only the parameters that block c alone trains
 * (its layers that no other block shares, and the label embedding for the block holding the
 * input; c = nblocks: the one-pass head) and compares (L_c(p + eps u) - L_c(p - eps u)) /
 * (2 eps) with <grad, u> from a compute-only step, with the same negative labels and batch
 * statistics on every side.  Parameters and running statistics are restored. */
ff_status ff_net_check_grad(ff_net *net, const float *x, const int64_t *labels, const int64_t *neg_labels,
                            int B, int block, float eps, uint64_t seed, double *fd, double *an, double *rel) {
    if (!net->finalized) return ff_fail(net, FF_ERR_STATE, "the network is not finalized");
    if (!(eps > 0.0f)) return ff_fail(net, FF_ERR_ARG, "eps must be > 0, got %g", (double)eps);
    if (block < 0 || block > net->nblocks || (block == net->nblocks && !net->has_head))
        return ff_fail(net, FF_ERR_ARG, "block must be in [0, %d) (or %d for the head, if any), got %d",
                       net->nblocks, net->nblocks, block);
    if (negatives_per_row(net) == 1 && !neg_labels)
        return ff_fail(net, FF_ERR_ARG, "neg_labels are needed: random negatives would differ between the "
                       "evaluations");
    size_t n = net->nparams;
    float *p0 = malloc(n * sizeof(float)), *u = calloc(n ? n : 1, sizeof(float));
    float *buf = malloc(net->nbuffers ? net->nbuffers * sizeof(float) : 1);
    float *losses = malloc((size_t)(net->nblocks + 1) * sizeof(float));
    if (!p0 || !u || !buf || !losses) {
        free(p0); free(u); free(buf); free(losses);
        return ff_fail(net, FF_ERR_NOMEM, "out of memory for the gradient check");
    }
    memcpy(p0, net->params, n * sizeof(float));
    memcpy(buf, net->buffers, net->nbuffers * sizeof(float));
    uint64_t s[4], z = seed;
    for (int i = 0; i < 4; i++) s[i] = ff_splitmix64(&z);
    const ff_layer *own[FF_MAX_LAYERS + 1];
    int nown = 0;
    if (block == net->nblocks) own[nown++] = &net->head;
    else {
        const ff_block *bk = &net->blocks[block];
        for (int i = bk->first; i < bk->last; i++) {
            int shared = 0;
            for (int o = 0; o < net->nblocks; o++)
                shared |= o != block && net->blocks[o].first <= i && i < net->blocks[o].last;
            if (!shared) own[nown++] = &net->layers[i];
        }
        if (holds_input(net, block) && net->label == FF_LABEL_EMBEDDING) own[nown++] = &net->embed;
        if (ae_decoder(net, block)) own[nown++] = ae_decoder(net, block);
    }
    for (int k = 0; k < nown; k++) {
        for (size_t i = 0; i < own[k]->w_n; i++) u[own[k]->w_off + i] = 2.0f * ff_rng_uniform(s) - 1.0f;
        for (size_t i = 0; i < own[k]->b_n; i++) u[own[k]->b_off + i] = 2.0f * ff_rng_uniform(s) - 1.0f;
    }
    int head = block == net->nblocks;
    ff_status st = ff_net_train_step(net, x, labels, neg_labels, B, NULL, head, 0, losses);
    double dot = 0.0;
    for (size_t i = 0; st == FF_OK && i < n; i++) dot += (double)net->grads[i] * u[i];
    double lp = 0.0, lm = 0.0;
    for (int side = 0; side < 2 && st == FF_OK; side++) {
        float sg = side ? -eps : eps;
        for (size_t i = 0; i < n; i++) net->params[i] = p0[i] + sg * u[i];
        memcpy(net->buffers, buf, net->nbuffers * sizeof(float));
        st = ff_net_train_step(net, x, labels, neg_labels, B, NULL, head, 0, losses);
        if (side) lm = losses[block]; else lp = losses[block];
    }
    memcpy(net->params, p0, n * sizeof(float));
    memcpy(net->buffers, buf, net->nbuffers * sizeof(float));
    free(p0); free(u); free(buf); free(losses);
    if (st != FF_OK) return st;
    *fd = (lp - lm) / (2.0 * eps);
    *an = dot;
    double m = fabs(*fd) > fabs(*an) ? fabs(*fd) : fabs(*an);
    *rel = fabs(*fd - *an) / (m > 1e-6 ? m : 1e-6);
    return FF_OK;
}

/* ------------------------------------------------------------------ pipelined training */
/*
 * Pipeline Forward-Forward (Aktemur et al. 2024) in one process: stage k runs block k.  At
 * tick t, stage k trains on minibatch t - k while stage k + 1 trains on minibatch t - k - 1,
 * the stages running at once on fflib's threads (one stage per thread at a time, its GEMMs on
 * that thread; with more stages than threads, threads take the next stage when free, and a
 * thread with no stage left helps the others with their GEMM panels and elementwise work).
 * Activations pass between neighbouring stages through double buffers (one minibatch in each
 * direction per boundary: no queue grows), labels and head features through rings with one
 * slot per minibatch in flight.
 *
 * Semantics: block k's input for minibatch m is block k - 1's output for m, computed with
 * block k - 1's weights after its updates on minibatches < m and before its update on m:
 * exactly what the sequential step (ff_net_train_step) feeds it, since no FF block depends
 * on the blocks after it.  Negative labels are drawn by stage 0 in minibatch order, the head
 * trains on m once its last feature block has run m, so pipelined training reproduces
 * sequential training bit for bit (a stage's convolutions run single-threaded, and the work
 * other threads help with, GEMM panels and elementwise ranges, is split the same way with or
 * without help and gives the same bits on any split, so the result does not depend on the
 * thread count or on timing either); it only overlaps the blocks' work in time.
 */
struct ff_pipe {
    int S;                     /* stages: blocks 0..S-1 (through the last active or head block) */
    int cap_B, free_, nneg, train_head, head_stage, emb;   /* nneg: negative rows per positive */
    uint8_t active[FF_MAX_LAYERS];
    long ticks;                /* ticks run; the minibatch entering at tick e has slot e % S */
    ff_work *works;            /* S */
    float **bound;             /* (S - 1) * 2 double buffers */
    int64_t *lab;              /* S slots of cap_R labels */
    int *slot_B;               /* S: batch size of the minibatch in the slot (0: none entered) */
    float *feat;               /* S slots of cap_B * F head features */
    float *loss;               /* S + 1: losses of the current tick */
    const float *x;            /* the minibatch fed this tick (stage 0 encodes it) */
    const int64_t *labels, *neg;
    ff_status *status;         /* S */
    int cap_R;
};

static int pipe_rows(const struct ff_pipe *pp, int B, int *T) {
    *T = (1 + pp->nneg) * B;
    return pp->train_head && !pp->free_ ? *T + B : *T;
}

void ff_net_pipeline_end(ff_net *net) {
    struct ff_pipe *pp = net->pipe;
    if (!pp) return;
    for (int k = 0; pp->works && k < pp->S; k++) free_work(&pp->works[k]);
    for (int k = 0; pp->bound && k < 2 * (pp->S - 1); k++) free(pp->bound[k]);
    free(pp->works); free(pp->bound); free(pp->lab); free(pp->slot_B); free(pp->feat); free(pp->loss);
    free(pp->status); free(pp);
    net->pipe = NULL;
}

/* Minibatches fed and not yet through the last stage: one entered at tick e leaves after tick
 * e + S - 1. */
int ff_net_pipeline_in_flight(const ff_net *net) {
    const struct ff_pipe *pp = net->pipe;
    if (!pp) return 0;
    int n = 0;
    for (long e = pp->ticks - pp->S + 1 > 0 ? pp->ticks - pp->S + 1 : 0; e < pp->ticks; e++)
        n += pp->slot_B[e % pp->S] > 0;
    return n;
}

ff_status ff_net_pipeline_begin(ff_net *net, int max_batch, const uint8_t *active, int train_head) {
    if (!net->finalized) return ff_fail(net, FF_ERR_STATE, "the network is not finalized");
    if (net->pipe && ff_net_pipeline_in_flight(net) > 0)
        return ff_fail(net, FF_ERR_STATE, "%d minibatches are still in the pipeline: flush it first",
                       ff_net_pipeline_in_flight(net));
    int maxB = INT_MAX / (negatives_per_row(net) + 2);
    if (max_batch <= 0 || max_batch > maxB)
        return ff_fail(net, FF_ERR_ARG, "max_batch must be in [1, %d], got %d", maxB, max_batch);
    if (train_head && !net->has_head) return ff_fail(net, FF_ERR_STATE, "train_head: the network has no one-pass head");
    if (train_head && net->cfg.head_dropout > 0.0f)   /* its masks would race the other stages for the RNG */
        return ff_fail(net, FF_ERR_ARG, "head_dropout %g: the head's dropout is not pipelined; train with "
                       "train_step (or head_dropout 0)", (double)net->cfg.head_dropout);
    for (int b = 0; b < net->nblocks; b++)
        if (ff_losses[net->blocks[b].loss.kind].label_free)
            return ff_fail(net, FF_ERR_ARG, "block %d's %s loss (autoencoder cells) is not pipelined: train it with "
                           "train_step", b, ff_losses[net->blocks[b].loss.kind].name);
    if (ff_losses[net->loss.kind].negatives && net->label == FF_LABEL_NONE)
        return ff_fail(net, FF_ERR_ARG, "the %s loss with label_encoding none trains only on explicit negatives "
                       "(train_step's x_neg), which pipelined training does not take", ff_losses[net->loss.kind].name);
    for (int b = 1; b < net->nblocks; b++)
        if (net->blocks[b].first < net->blocks[b - 1].last)
            return ff_fail(net, FF_ERR_ARG, "pipelined training needs non-overlapping blocks; blocks %d and %d "
                           "share layers", b - 1, b);
    ff_net_pipeline_end(net);
    struct ff_pipe *pp = calloc(1, sizeof(*pp));
    if (!pp) return ff_fail(net, FF_ERR_NOMEM, "out of memory for the pipeline");
    net->pipe = pp;
    int nb = net->nblocks, S = 0;
    for (int b = 0; b < nb; b++) {
        pp->active[b] = !active || active[b];
        if (pp->active[b]) S = b + 1;
    }
    pp->head_stage = -1;
    if (train_head) {
        int lastl = net->head_layers[net->nhead - 1];
        for (int b = 0; b < nb; b++) if (net->blocks[b].last > lastl) { pp->head_stage = b; break; }
        if (pp->head_stage + 1 > S) S = pp->head_stage + 1;
    }
    if (S == 0) { ff_net_pipeline_end(net); return ff_fail(net, FF_ERR_ARG, "no block is active"); }
    pp->S = S; pp->cap_B = max_batch; pp->train_head = train_head != 0;
    pp->nneg = negatives_per_row(net);
    pp->free_ = pp->nneg == 0;
    pp->emb = net->label == FF_LABEL_EMBEDDING;
    int T, R = pipe_rows(pp, max_batch, &T);
    pp->cap_R = R;
    pp->works = calloc((size_t)S, sizeof(ff_work));
    pp->bound = calloc((size_t)(2 * S), sizeof(float *));
    pp->lab = malloc((size_t)S * R * sizeof(int64_t));
    pp->slot_B = calloc((size_t)S, sizeof(int));
    pp->feat = malloc((size_t)S * max_batch * (net->has_head ? net->F : 1) * sizeof(float));
    pp->loss = malloc((size_t)(S + 1) * sizeof(float));
    pp->status = calloc((size_t)S, sizeof(ff_status));
    if (!pp->works || !pp->bound || !pp->lab || !pp->slot_B || !pp->feat || !pp->loss || !pp->status) {
        ff_net_pipeline_end(net);
        return ff_fail(net, FF_ERR_NOMEM, "out of memory for the pipeline");
    }
    for (int k = 0; k < S; k++) {
        ff_status st = reserve_blocks(net, &pp->works[k], R, T, k, k + 1);
        if (st == FF_OK && k + 1 < S) {
            size_t wd = ff_layer_out(&net->layers[net->blocks[k + 1].first - 1]);
            for (int h = 0; h < 2; h++) {
                pp->bound[2 * k + h] = malloc((size_t)R * wd * sizeof(float));
                if (!pp->bound[2 * k + h]) st = ff_fail(net, FF_ERR_NOMEM, "out of memory for the pipeline buffers");
            }
        }
        if (st != FF_OK) { ff_net_pipeline_end(net); return st; }
    }
    return FF_OK;
}

/* Stage k of the current tick (a part of ff_parallel_run). */
static void pipe_stage(void *ctx, int k, int nparts) {
    (void)nparts;
    ff_net *net = ctx;
    struct ff_pipe *pp = net->pipe;
    long e = pp->ticks - k;              /* stage k works on the minibatch that entered at tick e */
    pp->status[k] = FF_OK;
    pp->loss[k] = NAN;
    if (k == pp->head_stage) pp->loss[pp->S] = NAN;
    if (e < 0 || pp->slot_B[e % pp->S] == 0) return;
    int s = (int)(e % pp->S), B = pp->slot_B[s], T, R = pipe_rows(pp, B, &T);
    ff_work *w = &pp->works[k];
    const ff_block *blk = &net->blocks[k];
    int f = blk->first, l = blk->last, on = pp->active[k];
    int64_t *lab = pp->lab + (size_t)s * pp->cap_R;
    const float *in;
    w->lean = 1;
    if (k == 0) {
        for (int r = 0; r < R; r++)
            encode_row(net, w, r, pp->x + (size_t)(r % B) * net->D, pp->free_ ? -1 : lab[r]);
        share_rows(w, B, 0);
        in = w->xtmp;
    } else {
        in = pp->bound[2 * (k - 1) + (int)((pp->ticks - 1) & 1)];
    }
    memcpy(w->lab, lab, (size_t)R * sizeof(int64_t));
    ff_status st = plan_forward(net, w, &blk->train, in, R, T, on ? f : net->nl);
    if (st == FF_OK && on) {
        float loss = 0.0f;
        int emb = k == 0 && pp->emb;
        st = block_loss(net, w, k, out_of(w, &blk->train, l - 1, R), B, T, &loss);
        if (st == FF_OK) {
            pp->loss[k] = loss;
            w->gscratch_base = net->layers[f].w_off;
            size_t hi = l < net->nl ? net->layers[l].w_off : net->tail_off;
            memset(w->gscratch, 0, (hi - w->gscratch_base) * sizeof(float));
            if (emb) zero_layer_grads(net, w, &net->embed);
            st = plan_backward(net, w, &blk->train, in, R, T, emb ? w->dxin : NULL);
        }
        if (st == FF_OK) {
            if (emb) embedding_backward(net, w, T);
            for (int i = f; i < l; i++) layer_opt_step(net, w, &net->layers[i]);
            if (emb) layer_opt_step(net, w, &net->embed);
        }
    }
    float *feat = pp->feat + (size_t)s * pp->cap_B * (net->has_head ? net->F : 1);
    if (st == FF_OK && pp->train_head)
        for (int i = f; i < l; i++)
            if (is_head_layer(net, i)) gather_features(net, w, feat, &blk->train, i, R, pp->free_ ? 0 : T, B);
    if (st == FF_OK && k == pp->head_stage) {
        zero_layer_grads(net, w, &net->head);
        float hl = head_run(net, w, feat, B, lab, NULL, 1);
        if (!isfinite(hl))
            st = ff_fail(net, FF_ERR_NONFINITE, "the one-pass head's loss is not finite (%g): lower its learning "
                         "rate", (double)hl);
        else {
            pp->loss[pp->S] = hl;
            layer_opt_step(net, w, &net->head);
        }
    }
    if (st == FF_OK && k + 1 < pp->S) {
        int src = net->blocks[k + 1].first - 1;
        memcpy(pp->bound[2 * k + (int)(pp->ticks & 1)], out_of(w, &blk->train, src, R),
               (size_t)R * ff_layer_out(&net->layers[src]) * sizeof(float));
    }
    pp->status[k] = st;
}

ff_status ff_net_pipeline_step(ff_net *net, const float *x, const int64_t *labels, const int64_t *neg_labels,
                               int B, float *losses) {
    struct ff_pipe *pp = net->pipe;
    if (!pp) return ff_fail(net, FF_ERR_STATE, "no pipeline: call ff_net_pipeline_begin first");
    if (losses) for (int k = 0; k < net->nblocks + 1; k++) losses[k] = NAN;
    int s = (int)(pp->ticks % pp->S);
    if (x) {
        if (B <= 0 || B > pp->cap_B)
            return ff_fail(net, FF_ERR_ARG, "batch size must be in [1, %d] (the pipeline's max_batch), got %d",
                           pp->cap_B, B);
        ff_status st = check_labels(net, labels, B, "labels");
        if (st != FF_OK) return st;
        if (neg_labels && pp->nneg == 1) {
            if ((st = check_labels(net, neg_labels, B, "neg_labels")) != FF_OK) return st;
            for (int b = 0; b < B; b++)
                if (neg_labels[b] == labels[b])
                    return ff_fail(net, FF_ERR_LABEL, "neg_labels[%d] equals labels[%d] (%lld): a negative label "
                                   "must differ from the true one", b, b, (long long)labels[b]);
        }
        /* the entering minibatch's slot: labels, drawn negatives, neutral rows */
        int T, R = pipe_rows(pp, B, &T);
        step_labels(net, pp->lab + (size_t)s * pp->cap_R, labels, neg_labels, B, pp->nneg, T, R);
        pp->slot_B[s] = B;
        pp->x = x;
    } else {
        if (ff_net_pipeline_in_flight(net) == 0) return FF_OK;   /* nothing to drain */
        pp->slot_B[s] = 0;   /* a drain tick: nothing enters */
    }
    ff_parallel_run_helped(pipe_stage, net, pp->S);
    pp->ticks++;
    pp->x = NULL;
    ff_status st = FF_OK;
    for (int k = 0; k < pp->S; k++) if (pp->status[k] != FF_OK && st == FF_OK) st = pp->status[k];
    if (losses) {
        for (int k = 0; k < pp->S; k++) losses[k] = pp->loss[k];
        if (pp->head_stage >= 0) losses[net->nblocks] = pp->loss[pp->S];
    }
    if (st != FF_OK) ff_net_pipeline_end(net);   /* a failed stage leaves no half-run minibatch behind */
    return st;
}
