/*
 * ff_internal.h - what the C core's files share and users of fflib.h never see: the layer
 * struct and the layer-kind table (ff_layers.c), the compiled per-block plan, blocks, the
 * loss table (ff_loss.c), the workspace of one run, and the net itself (ff_net.c).
 *
 * The shape of the core:
 *   - a layer kind is one row of ff_layer_kinds[]: its name, flags, shape rule, saved floats
 *     per row, parameter init, forward and backward.  Nothing else switches on a layer kind;
 *   - a block is a layer range with its own loss (a row of ff_losses[]) and a plan compiled
 *     once (at finalize, at a re-cut): steps with their output offsets, in-place flags,
 *     fused Conv2d -> ReLU -> MaxPool2d steps, and which backward buffer each input gradient
 *     goes to.  Workspace sizes are read off the plans, so sizing and execution walk the same
 *     steps and cannot disagree;
 *   - a run (ff_work) holds all per-run scratch: two runs with their own ff_work can execute
 *     different blocks at once.  The net owns one.
 */
#ifndef FF_INTERNAL_H
#define FF_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include "fflib.h"

#define FF_MAX_LAYERS 256
/* Largest C, H, W, and largest floats per row of any layer's input or output: every size the
 * kernels take as int stays far below INT_MAX, and row-times-width products fit size_t. */
#define FF_MAX_DIM (1 << 24)
#define FF_MAX_ROW_FLOATS ((size_t)1 << 30)
#define FF_MAX_CLASSES 65536
/* Floats of scratch a fused Conv2d -> ReLU -> MaxPool2d step runs through. */
#define FF_FUSE_FLOATS ((size_t)1 << 22)

typedef struct ff_net ff_net;
typedef struct ff_work ff_work;

/* A layer: its kind, shapes and where its parameters live.  No per-run state. */
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
} ff_layer;

static inline size_t ff_layer_in(const ff_layer *L) { return (size_t)L->C * L->H * L->W; }
static inline size_t ff_layer_out(const ff_layer *L) { return (size_t)L->OC * L->OH * L->OW; }
static inline int ff_layer_trainable(const ff_layer *L) { return L->w_n + L->b_n > 0; }

/* ------------------------------------------------------------------ the layer-kind table */
enum {
    FF_KF_UNIT = 1,      /* opens a unit of the default cut (Linear, Conv2d) */
    FF_KF_LEADS = 2,     /* joins the unit after it (LenNorm, BatchNorm2d, Flatten) */
    FF_KF_INPLACE = 4,   /* may overwrite its input (ReLU, Flatten) */
    FF_KF_STATS = 8      /* keeps running statistics updated in training (BatchNorm2d) */
};

/* What a layer's forward and backward see of the run. */
typedef struct {
    ff_net *net;
    ff_work *w;
    int training;         /* batch-norm batch statistics */
    int update_stats;     /* batch-norm: update the running statistics in this pass */
} ff_ctx;

typedef struct {
    const char *name;
    unsigned flags;
    /* Complete L's output shape and parameter sizes from its input shape and settings; on a
     * bad setting write the reason with ff_fail and return its status. */
    ff_status (*shape)(ff_net *net, ff_layer *L);
    /* Saved floats per row besides the output (max-pool argmax, length-norm scale). */
    size_t (*aux_floats)(const ff_layer *L);
    /* Initialise parameters and buffers (PyTorch's defaults), drawing from rng in order. */
    void (*init)(ff_net *net, ff_layer *L, uint64_t *rng);
    /* y (R, out) from x (R, in); aux as sized by aux_floats.  Batch-norm statistics come from
     * the first T rows. */
    ff_status (*forward)(const ff_ctx *c, const ff_layer *L, const float *x, float *y, float *aux,
                         int R, int T);
    /* dx (T, in) or NULL += d/dx; weight gradients added at gw/gb (NULL: not wanted). */
    ff_status (*backward)(const ff_ctx *c, const ff_layer *L, float *dx, float *gw, float *gb,
                          float *dy, const float *x, const float *y, const float *aux, int T);
} ff_layer_ops;

extern const ff_layer_ops ff_layer_kinds[];
#define FF_NUM_LAYER_KINDS 7

/* The fused Conv2d -> ReLU -> MaxPool2d step (ff_layers.c): conv L, pool P. */
ff_status ff_fused_forward(const ff_ctx *c, const ff_layer *L, const ff_layer *P, const float *x,
                           float *y, int32_t *idx, int R);
ff_status ff_fused_backward(const ff_ctx *c, const ff_layer *L, const ff_layer *P, const float *x,
                            float *dout, float *dx, float *gw, float *gb, const float *y,
                            const int32_t *idx, int T);
int ff_fuse_rows(size_t conv_out_floats);

/* ------------------------------------------------------------------ the loss table */
/* A block's loss and the goodness it reads. */
typedef struct {
    ff_loss_kind kind;
    ff_goodness_kind goodness;
    float theta, alpha, pvn_weight, margin;
} ff_block_loss;

/* Scratch a loss uses: per-row goodness and its gradient, (rows, K) group goodness and its
 * gradient. */
typedef struct { float *g, *dg, *G, *dG;
    /* the ae loss: the block's input rows (in_w floats each), its decoder's parameters and
     * their gradients, and (rows, in_w) room for the reconstruction */
    const float *in, *dec_w, *dec_b; float *dec_gw, *dec_gb, *rec; int in_w; } ff_loss_scratch;

/* Negative rows a loss trains on per positive row (ff_loss_ops.negatives). */
enum { FF_NEG_NONE = 0, FF_NEG_ONE = 1, FF_NEG_ALL = 2 /* one per wrong label: K - 1 */ };

typedef struct {
    const char *name;
    int negatives;    /* FF_NEG_*: trains on positive and negative rows (else on neutral rows with
                         labels) */
    int needs_groups; /* reads K channel groups: the block's output channels divide by K */
    int needs_k_wide; /* reads a K-wide output */
    /* Loss of output y (channels OC of HW values per row) and dy = dL/dy (T rows, zeroed by
     * the caller).  Rows: negatives: [0,B) positive, then (T - B) / B groups of B negative
     * rows (row B + j*B + b: sample b's j-th negative); else [0,B) labelled. */
    float (*loss)(const ff_block_loss *bl, const float *y, float *dy, int B, int T, int OC, int HW,
                  int K, const int64_t *labels, const ff_loss_scratch *s);
    /* Class scores of R rows: out[r*stride + k*kstride] for the K scores of row r (losses
     * without negatives), or out[r*stride] = the row's goodness. */
    void (*scores)(const ff_block_loss *bl, const float *y, int R, int OC, int HW, int K,
                   float *out, size_t stride, size_t kstride, const ff_loss_scratch *s);
    int label_free;   /* trains without labels (ae): a step may omit them; scores NULL */
} ff_loss_ops;

extern const ff_loss_ops ff_losses[];
#define FF_NUM_LOSSES 8
/* Row-wise softmax: probs (n, K) from logits. */
void ff_softmax_rows(float *probs, const float *logits, int n, int K);

/* ------------------------------------------------------------------ plans and blocks */
enum { FF_STEP_LAYER = 0, FF_STEP_FUSED = 1, FF_STEP_SHARED = 2, FF_STEP_SHARED_CONV = 3 };
enum { FF_DX_NONE = -2, FF_DX_DIN = -1 };   /* else 0 / 1: d0 or d1 */

typedef struct {
    int op;            /* FF_STEP_LAYER; FF_STEP_FUSED over layers i..i+2; FF_STEP_SHARED: the
                          first [LenNorm ->] Linear of a one-hot net computed once per sample;
                          FF_STEP_SHARED_CONV: the first Conv2d of a label-embedding net, its
                          image channels once per sample and the label channel once per label
                          (forward only: its backward is the layer's own) */
    int layer;         /* first layer of the step */
    int last;          /* last layer of the step (layer, or layer + 2) */
    int inplace;       /* the output aliases the input */
    size_t out_off;    /* floats per row into acts: the step's output */
    size_t aux_off;    /* floats per row into acts: argmax slots or row scales */
    /* backward (training plans): where dy is and where dx goes */
    int dy_buf;        /* 0 / 1: d0 or d1 */
    int dx_buf;        /* 0 / 1, FF_DX_DIN, or FF_DX_NONE (the backward stops after this step) */
} ff_step;

typedef struct {
    int first, last;   /* layers [first, last) */
    int nsteps;
    ff_step *steps;
    size_t act_floats; /* per row */
    size_t dw[2];      /* per row: widths of the backward buffers d0, d1 */
    size_t fuse_w;     /* per row: largest conv output of a fused step (0: none) */
} ff_plan;

typedef struct {
    int first, last;   /* layers [first, last) */
    ff_block_loss loss;
    ff_plan train;     /* the block's own range, with backward */
    ff_plan seg;       /* inference: layers [previous block's last, last) */
} ff_block;

/* ------------------------------------------------------------------ the workspace of a run */
struct ff_work {
    int rows_cap, train_cap;
    size_t ws_floats;
    float *ws;
    float *carry, *acts, *d[2], *g, *dg, *scale, *conv_ws, *feat, *logits, *dlogits, *xtmp;
    float *G;                 /* (rows, K) group goodness */
    float *dxin;              /* gradient w.r.t. the encoded input (label embedding) */
    size_t acts_cap, carry_w, dw_cap[2], head_w;
    float *fuse_ws;
    size_t fuse_cap, convws_cap;
    int conv_parts;
    int64_t *lab;             /* per-row labels of the current step (the loss's) */
    int64_t *rowlab;          /* per-row label written into the input (-1: neutral) */
    /* rows that are one sample with different labels: sample of row r is r / share_div
     * (share_div > 0, its first row j * share_div) or r % share_n (its first row j) */
    int share_n, share_div;
    float *shr;               /* the shared step's scratch (the first linear layer's outputs) */
    /* lean step: the running block's gradients in gscratch (from arena offset gscratch_base) */
    int lean;
    float *gscratch;
    size_t gscratch_cap, gscratch_base;
    float *rec;               /* the ae loss's reconstruction (training rows, widest block input) */
    size_t rec_cap;
};

/* A trainable parameter pair outside the layer list (the one-pass head's linear layer and the
 * label embedding live as ff_layer records in net->head and net->embed). */
struct ff_net {
    int C, H, W, K, D;        /* raw input shape, D = C*H*W */
    int Din;                  /* encoded input size seen by layer 0 (D, or D + H*W with an embedding) */
    ff_label_kind label;
    float *pattern;           /* (K, H*W) label patterns: Fourier waves, or NULL */
    double *modes;            /* (K, nmodes, 4) Fourier modes: wavelength, orientation, amplitude, phase */
    int nmodes;
    float *in_affine;         /* (2, D) input scale then shift (ff_net_set_input_affine), or NULL */
    int nl, finalized, training;
    ff_layer layers[FF_MAX_LAYERS];
    int nblocks;
    ff_block *blocks;         /* nblocks, with their plans */
    uint8_t starts_block[FF_MAX_LAYERS];
    ff_block_loss loss;       /* the loss every block gets at a (re-)cut, and the config's */
    int has_head, nhead, head_layers[FF_MAX_LAYERS], F;
    ff_layer head;            /* the one-pass head: Linear(F, K) trained by softmax xent */
    ff_layer embed;           /* the label embedding: (K, H*W) maps, when used */
    int want_dec, ndec;       /* ff_net_set_decoders called; decoders made at finalize */
    ff_layer *dec;            /* ndec autoencoder decoders: Linear(block output, block input) */
    ff_config cfg;
    int share_labels;         /* compute the label-independent part of the first layer once */
    _Atomic int progress;     /* layers whose gradients are final in the running step (ff_net_progress) */
    uint64_t rng[4];
    /* arenas: parameters, Adam m / momentum, Adam v; gradients in a full arena only when a
     * split step (compute_grads) or overlapping blocks need one (grads), else per block in
     * the work's gscratch and for head and embedding in gtail */
    float *params, *grads, *m, *v, *gtail;
    size_t nparams, tail_off;
    float *buffers, *saved;
    size_t nbuffers, nsaved;
    ff_work work;
    struct ff_pipe *pipe;     /* pipelined training state (ff_net_pipeline_*), or NULL */
    char err[320];
};

/* ------------------------------------------------------------------ random numbers */
/* xoshiro256** seeded by splitmix64: initialisation, negative labels. */
static inline uint64_t ff_splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static inline uint64_t ff_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static inline uint64_t ff_rng_next(uint64_t *s) {
    uint64_t r = ff_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = ff_rotl(s[3], 45);
    return r;
}
/* uniform in [0, 1) with 24 bits */
static inline float ff_rng_uniform(uint64_t *s) {
    return (float)(ff_rng_next(s) >> 40) * (1.0f / 16777216.0f);
}
/* uniform in [0, n) */
static inline int ff_rng_below(uint64_t *s, int n) {
    return (int)(((ff_rng_next(s) >> 32) * (uint64_t)n) >> 32);
}

/* Record why a call failed (ff_net_last_error reads it back) and return st. */
ff_status ff_fail(ff_net *net, ff_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Where the gradient of the parameter at arena offset off lives during the current run. */
float *ff_grad_at(const ff_net *net, const ff_work *w, size_t off);

#endif /* FF_INTERNAL_H */
