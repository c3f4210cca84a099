/*
 * fflib.h - the public C API of fflib's core (plain C11, usable without Python).
 *
 * Conventions (as in llm.c):
 *   - kernels take outputs first, then saved state, then inputs, weights, sizes;
 *   - every backward kernel ADDS into its gradient buffers (dinp, dweight, ...);
 *     the caller zeroes them.  A NULL gradient pointer means "not needed";
 *   - all arrays are dense, row-major (C order), float32 unless stated;
 *   - kernels never allocate, print, exit or abort; scratch memory comes from a
 *     workspace the caller owns.  Functions that can fail return ff_status.
 *
 * Size letters, the same everywhere:
 *   B  rows of a batch (samples, or samples x labels in multi-pass inference)
 *   I  input features, O output features, D features of a row
 *   K  classes (J when they are channel groups), S channels per group
 *   N  images, C channels, H W height width, OC OH OW the output's
 *   KH KW kernel size; HW = H*W
 * Labels are int64 in [0, K).
 */
#ifndef FFLIB_H
#define FFLIB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FF_VERSION_MAJOR 0
#define FF_VERSION_MINOR 1

typedef enum {
    FF_OK = 0,
    FF_ERR_NOMEM,     /* an allocation failed */
    FF_ERR_ARG,       /* a bad argument or configuration (message via ff_status_str) */
    FF_ERR_SHAPE,     /* sizes that do not fit together */
    FF_ERR_LABEL,     /* a label outside [0, K) */
    FF_ERR_NONFINITE, /* NaN or inf met in the inputs */
    FF_ERR_STATE      /* the call is not valid in the net's current state */
} ff_status;

/* A static string describing s (never NULL, never owned by the caller). */
const char *ff_status_str(ff_status s);

/* ------------------------------------------------------------------ BLAS */
/* Row-major C(M,N) = alpha * op(A) op(B) + beta * C; op(A) is (M,Kd), op(B) (Kd,N).
 * ta/tb non-zero mean transposed.  OpenBLAS when built with it, a plain loop otherwise. */
void ff_sgemm(int ta, int tb, int M, int N, int Kd, float alpha, const float *A, int lda,
              const float *Bm, int ldb, float beta, float *Cm, int ldc);
const char *ff_blas_name(void);   /* "openblas (scipy-openblas32)", "openblas", "reference loop" */
void ff_blas_set_threads(int n);  /* OpenBLAS's own threads; fflib keeps it at 1 */

/* ------------------------------------------------------------------ threads (ff_thread.c) */
/* fflib's worker threads: n >= 1 threads in all (the caller and n - 1 sleeping workers).
 * A GEMM of ff_sgemm large enough is split into n panels; a convolution into n groups of
 * images.  Results depend on n only through the order of floating-point sums. */
void ff_set_num_threads(int n);
int ff_get_num_threads(void);
/* fn(ctx, p, nparts) for p in [0, nparts), on up to ff_get_num_threads() threads; returns when
 * all are done.  Inside a part (or when another job is running) it runs inline. */
typedef void (*ff_task_fn)(void *ctx, int part, int nparts);
void ff_parallel_run(ff_task_fn fn, void *ctx, int nparts);
/* Like ff_parallel_run, and each part may post one nested job at a time (ff_parallel_run
 * from inside the part) whose parts the threads that have finished their own parts take over.
 * Only for parts whose nested work gives the same result however it is split. */
void ff_parallel_run_helped(ff_task_fn fn, void *ctx, int nparts);
/* Threads a job started here would get: 1 inside a job, else ff_get_num_threads(). */
int ff_parallel_width(void);
/* Parts to split work into whose result does not depend on the split (GEMM panels,
 * elementwise ranges): ff_parallel_width(), or all threads inside a part of a helped job. */
int ff_parallel_split_width(void);
/* fn(ctx, lo, hi) over contiguous ranges covering [0, n), at most one range per thread and
 * none shorter than min_per_part (a single call [0, n) when n is small). */
typedef void (*ff_range_fn)(void *ctx, size_t lo, size_t hi);
void ff_parallel_for(ff_range_fn fn, void *ctx, size_t n, size_t min_per_part);
/* Elementwise kernels split their work when it reaches this many floats. */
#define FF_PAR_MIN_FLOATS 32768

/* take ? a : b without a branch (a data-dependent branch mispredicts half the time on real
 * activations: measured 4-7x slower ReLU backward and max pooling). */
static inline float ff_select(int take, float a, float b) {
    union { float f; uint32_t u; } x = {a}, y = {b};
    uint32_t m = 0u - (uint32_t)(take != 0);
    x.u = (x.u & m) | (y.u & ~m);
    return x.f;
}
static inline int32_t ff_select_i32(int take, int32_t a, int32_t b) {
    int32_t m = -(int32_t)(take != 0);
    return (a & m) | (b & ~m);
}

/* ------------------------------------------------------------------ linear */
/* out (B,O) = inp (B,I) . weight(O,I)^T + bias(O).  bias may be NULL. */
void ff_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int B, int I, int O);
/* dinp (B,I) += dout(B,O) . weight(O,I); dweight (O,I) += dout^T . inp; dbias (O) += sum_b dout. */
void ff_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int B, int I, int O);

/* ------------------------------------------------------------------ relu */
/* out (n) = max(inp, 0); out may alias inp. */
void ff_relu_forward(float *out, const float *inp, size_t n);
/* dinp (n) += dout * (out > 0); with dinp == dout the gradient is masked in place instead
 * (dinp = dout * (out > 0)). */
void ff_relu_backward(float *dinp, const float *dout, const float *out, size_t n);

/* ------------------------------------------------------------------ length normalisation */
typedef enum { FF_NORM_NONE = 0, FF_NORM_L2 = 1, FF_NORM_RMS = 2 } ff_norm_kind;
/* Per row of D: out = inp * scale[b] with
 *   L2:  scale = 1 / (sqrt(sum_d x^2) + eps)      (Hinton's "length" normalisation)
 *   RMS: scale = 1 / sqrt(mean_d x^2 + eps)
 *   NONE: scale = 1.
 * inp, out (B,D), scale (B).  out may alias inp. */
void ff_lennorm_forward(float *out, float *scale, const float *inp, int B, int D,
                        ff_norm_kind kind, float eps);
/* dinp (B,D) += d out / d inp applied to dout; inp and scale as saved by the forward. */
void ff_lennorm_backward(float *dinp, const float *dout, const float *inp, const float *scale,
                         int B, int D, ff_norm_kind kind, float eps);

/* ------------------------------------------------------------------ goodness and losses */
/* The sum or mean of squares, or minus it (Hinton 2022's "minus the sum of the squared
 * activities", his CIFAR-10 "min ssq": positive data is trained to low activity). */
typedef enum { FF_GOODNESS_SUM = 0, FF_GOODNESS_MEAN = 1, FF_GOODNESS_NEG_SUM = 2, FF_GOODNESS_NEG_MEAN = 3,
               FF_NUM_GOODNESS } ff_goodness_kind;
/* g (B) = sum_d act^2 (or mean_d; negated for the NEG kinds), act (B,D). */
void ff_goodness_forward(float *g, const float *act, int B, int D, ff_goodness_kind kind);
/* dact (B,D) += dg[b] * 2 act (/ D for the mean; negated for the NEG kinds). */
void ff_goodness_backward(float *dact, const float *dg, const float *act, int B, int D,
                          ff_goodness_kind kind);
/* Channel-group goodness (CwComp eq. 2): act (B, J*S, HW) -> G (B,J) = mean over the
 * group's S channels and HW positions of act^2. */
void ff_group_goodness_forward(float *G, const float *act, int B, int J, int S, int HW);
/* dact (B, J*S, HW) += dG[b,j] * 2 act / (S*HW). */
void ff_group_goodness_backward(float *dact, const float *dG, const float *act, int B, int J,
                                int S, int HW);

/* softplus(z) = log(1 + exp(z)), stable for every finite z; sigmoid likewise. */
double ff_softplus(double z);
double ff_sigmoid(double z);

/* FF loss (eq. 1), averaged over the batch:
 *   L = (1/B) sum_b [ softplus(theta - gpos[b]) + softplus(gneg[b] - theta) ].
 * Returns L; dgpos, dgneg (B) receive dL/dg (overwritten), either may be NULL. */
float ff_ff_loss(float *dgpos, float *dgneg, const float *gpos, const float *gneg, int B,
                 float theta);
/* SymBa loss: L = (1/B) sum_b softplus(-alpha (gpos[b] - gneg[b])). */
float ff_symba_loss(float *dgpos, float *dgneg, const float *gpos, const float *gneg, int B,
                    float alpha);
/* Distance-Forward (Wu et al. 2024) goodness-based N-pair margin loss: the goodness of each
 * sample with its true label (gpos, B) against the same sample with each of N wrong labels
 * (gneg (N,B), row j holding every sample's j-th negative),
 *   L = (1/B) sum_b log(1 + sum_j exp(gneg[j,b] - gpos[b] + margin)).
 * Returns L; dgpos (B), dgneg (N,B) receive dL/dg (overwritten), either may be NULL. */
/* Autoencoder reconstruction loss of a UFF cell, mean squared error over all B*I values:
 *   rec = y W^T + b  (y (B,O) the block's output, W (I,O), b (I) or NULL), x (B,I) the target,
 *   L = sum (rec - x)^2 / (B I).
 * rec (B,I) is scratch (on return it holds dL/drec = 2 (rec - x) / (B I)); dy (B,O) += dL/dy;
 * gw (I,O) += dL/dW; gb (I) += dL/db (each of dy, gw, gb may be NULL). */
float ff_ae_loss(float *rec, float *dy, float *gw, float *gb, const float *y, const float *x,
                 const float *W, const float *b, int B, int O, int I);
float ff_df_loss(float *dgpos, float *dgneg, const float *gpos, const float *gneg, int B, int N,
                 float margin);
/* Softmax cross-entropy: L = -(1/B) sum_b log softmax(logits[b])[labels[b]].
 * logits (B,K); probs (B,K) or NULL receives the softmax; dlogits (B,K) or NULL is
 * OVERWRITTEN with (probs - onehot)/B.  Labels must be checked by the caller. */
float ff_softmax_xent(float *dlogits, float *probs, const float *logits, const int64_t *labels,
                      int B, int K);

/* ------------------------------------------------------------------ optimisers */
/* PyTorch semantics.  t is the step number after this step (t >= 1).
 * Adam with L2 weight decay (g += wd p):  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 *   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).   p, m, v, g (n). */
void ff_adam_step(float *p, float *m, float *v, const float *g, size_t n, float lr, float b1,
                  float b2, float eps, float wd, long t);
/* AdamW (Loshchilov & Hutter; torch.optim.AdamW): decoupled weight decay p *= 1 - lr wd, then
 * the Adam step above on the plain gradient (g is not changed). */
void ff_adamw_step(float *p, float *m, float *v, const float *g, size_t n, float lr, float b1,
                   float b2, float eps, float wd, long t);
/* SGD with momentum: g += wd p; buf = g at t == 1 else momentum buf + (1 - dampening) g;
 * p -= lr (g + momentum buf if nesterov else buf).  momentum 0 means plain SGD (buf unused). */
void ff_sgd_step(float *p, float *buf, const float *g, size_t n, float lr, float momentum,
                 float dampening, float wd, int nesterov, long t);

/* ------------------------------------------------------------------ convolution, batch-norm, pooling (NCHW) */
/* OH = (H + 2 pad - KH) / stride + 1, likewise OW.  weight (OC, C/groups, KH, KW), bias (OC).
 * The workspace ws holds ff_conv2d_workspace(..., parts) floats, owned by the caller: room for
 * `parts` groups of images to run in parallel (pass the same parts as ws_parts to the kernels;
 * they use min(ws_parts, threads) of them). */
size_t ff_conv2d_workspace(int C, int H, int W, int OC, int KH, int KW, int stride, int pad,
                           int groups, int parts);
/* out (N,OC,OH,OW) = conv(inp (N,C,H,W)) + bias.  bias may be NULL. */
ff_status ff_conv2d_forward(float *out, const float *inp, const float *weight, const float *bias,
                            int N, int C, int H, int W, int OC, int KH, int KW, int stride,
                            int pad, int groups, float *ws, int ws_parts);
/* dinp (N,C,H,W) +=, dweight +=, dbias +=; any of the three may be NULL. */
ff_status ff_conv2d_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                             const float *inp, const float *weight, int N, int C, int H, int W,
                             int OC, int KH, int KW, int stride, int pad, int groups, float *ws,
                             int ws_parts);

/* BatchNorm2d, training mode: batch statistics over (N, HW) per channel; saves mean (C) and
 * rstd (C) = 1/sqrt(var_biased + eps); running_mean/var (C) updated as in PyTorch
 * (running = (1-momentum) running + momentum batch, the variance unbiased).  gamma, beta (C)
 * may be NULL (no affine).  inp, out (N,C,HW). */
void ff_batchnorm2d_forward_train(float *out, float *mean, float *rstd, float *running_mean,
                                  float *running_var, const float *inp, const float *gamma,
                                  const float *beta, int N, int C, int HW, float eps,
                                  float momentum);
/* Eval mode: out = (inp - running_mean) / sqrt(running_var + eps) * gamma + beta. */
void ff_batchnorm2d_forward_eval(float *out, const float *inp, const float *running_mean,
                                 const float *running_var, const float *gamma, const float *beta,
                                 int N, int C, int HW, float eps);
/* Training-mode backward: dinp +=, dgamma +=, dbeta += (each may be NULL). */
void ff_batchnorm2d_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                             const float *inp, const float *mean, const float *rstd,
                             const float *gamma, int N, int C, int HW);

/* MaxPool2d (no padding): OH = (H - K) / stride + 1.  argmax (N,C,OH,OW) int32 holds the
 * flat index h*W + w of each window's maximum (first one on ties), for the backward. */
void ff_maxpool2d_forward(float *out, int32_t *argmax, const float *inp, int N, int C, int H,
                          int W, int K, int stride);
/* dinp (N,C,H,W) += dout scattered through argmax. */
void ff_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax, int N, int C,
                           int H, int W, int OH, int OW);

/* ------------------------------------------------------------------ the FF network */
/*
 * An ff_net is a sequence of layers (LINEAR, CONV2D, BATCHNORM2D, RELU, MAXPOOL2D, FLATTEN)
 * cut into blocks.  A block is a chain of layers trained by one local loss on its output's
 * goodness; gradients flow inside a block and never between blocks.  The block's output is
 * length-normalised (config.norm) before the next block sees it.  Greedy FF is one
 * Linear/Conv (+ReLU, +pool) per block, a chunked update is n of them, backprop is a
 * single block.  Blocks can be re-cut at any time (ff_net_set_blocks) without touching
 * parameters: alternating chunkings cost nothing.
 *
 * An optional one-pass head (a linear softmax layer) reads the concatenated normalised
 * outputs of chosen blocks for inputs carrying the neutral label.
 *
 * Memory: parameters, gradients and optimiser state live in one arena each; activations
 * live in a workspace sized for the largest block (not the whole network) times the row
 * count reserved by ff_net_reserve, and backward buffers for the rows that train (not the
 * head's neutral rows).  A Conv2d -> ReLU -> MaxPool2d run inside a block keeps only the
 * pooled output and its argmax: the conv output passes through a 16 MB scratch, a chunk of
 * rows at a time, forward and backward.
 */
typedef struct ff_net ff_net;

typedef enum {
    FF_LAYER_LINEAR = 0,
    FF_LAYER_CONV2D = 1,
    FF_LAYER_BATCHNORM2D = 2,
    FF_LAYER_RELU = 3,
    FF_LAYER_MAXPOOL2D = 4,
    FF_LAYER_FLATTEN = 5,
    FF_LAYER_LENNORM = 6      /* length normalisation of each row (no parameters) */
} ff_layer_kind;

/* Local losses.  FF and SymBa compare the goodness of positive rows (true label in the input)
 * with negative rows (a wrong label).  The others read the class from the block's output and
 * need no negative rows: CwC (softmax cross-entropy over the K channel-group goodness values,
 * CwComp eq. 3), PvN (the FF loss of G[y] against the mean of the other groups, threshold
 * theta), and XENT (softmax cross-entropy on a K-wide output: the backprop baseline).  DF
 * (Distance-Forward) compares each positive row with the sample under every wrong label (K - 1
 * negative rows per sample; negative labels given to a step are not used) by the N-pair margin
 * loss (ff_df_loss, margin in ff_config). */
typedef enum {
    FF_LOSS_FF = 0, FF_LOSS_SYMBA = 1, FF_LOSS_CWC = 2, FF_LOSS_PVN = 3, FF_LOSS_XENT = 4,
    FF_LOSS_DF = 5,
    FF_LOSS_AE = 6,     /* UFF autoencoder cell (Hwang et al. 2024): reconstruct the block's input
                           from its output through the block's own linear decoder (ff_ae_loss);
                           needs ff_net_set_decoders, label_encoding none, no labels */
    FF_LOSS_DF_CWC = 7  /* DF's N-pair margin loss (Wu et al. 2024) on CwC's K channel-group
                           goodness values: one row per sample, log(1 + sum_{j != y}
                           exp(G_j - G_y + margin)); reads the class like CwC */
} ff_loss_kind;
/* How the label enters the input (see ff_net_set_label_encoding). */
typedef enum {
    FF_LABEL_ONEHOT = 0,    /* label_value * onehot in the first K values of the row (flat input)
                               or of every channel plane (images); neutral: label_value/K */
    FF_LABEL_FOURIER = 1,   /* label_value * a per-class plane wave added to every channel */
    FF_LABEL_EMBEDDING = 2, /* an extra input channel holding a trained (H,W) map per class */
    FF_LABEL_NONE = 3       /* no label in the input (channel-wise competitive learning) */
} ff_label_kind;
typedef enum { FF_OPT_SGD = 0, FF_OPT_ADAM = 1, FF_OPT_ADAMW = 2 } ff_opt_kind;

/* Layer indices of the parameters outside the layer list (ff_net_param, set_opt, ...). */
#define FF_LAYER_HEAD (-1)        /* the one-pass head's Linear(F, K) */
#define FF_LAYER_EMBEDDING (-2)   /* the label embedding, (K, H*W) */
#define FF_LAYER_DECODER(b) (-3 - (b))   /* block b's autoencoder decoder, Linear(out_b, in_b) */

/* Names of the enum values (NULL past the last): what the binding exports to Python, so the
 * tables of kinds live here and only here. */
const char *ff_layer_kind_name(int kind);
const char *ff_loss_name(int kind);
const char *ff_label_name(int kind);
const char *ff_norm_name(int kind);
const char *ff_goodness_name(int kind);
const char *ff_opt_name(int kind);
const char *ff_param_name(int kind);

/* Which parameter array of a layer (or of the head, layer index -1). */
typedef enum {
    FF_P_WEIGHT = 0,     /* linear (O,I), conv (OC,C/groups,KH,KW), batchnorm gamma (C) */
    FF_P_BIAS = 1,       /* linear (O), conv (OC), batchnorm beta (C) */
    FF_P_RUNNING_MEAN = 2, FF_P_RUNNING_VAR = 3, /* batchnorm buffers (C), not trained */
    FF_P_GRAD_WEIGHT = 4, FF_P_GRAD_BIAS = 5,
    FF_P_M_WEIGHT = 6, FF_P_M_BIAS = 7,   /* Adam m, or SGD momentum buffer */
    FF_P_V_WEIGHT = 8, FF_P_V_BIAS = 9    /* Adam v */
} ff_param_kind;

typedef struct {
    ff_loss_kind loss;
    ff_goodness_kind goodness;
    float theta;          /* FF loss threshold */
    float alpha;          /* SymBa scale */
    ff_norm_kind norm;    /* normalisation of the one-pass head's input features */
    float norm_eps;
    float label_value;    /* one-hot value, Fourier amplitude, embedding initial scale */
    float pvn_weight;     /* with FF_LOSS_CWC: (1-w) CwC + w PvN; 0 = pure CwC */
    float margin;         /* DF and DF_CWC N-pair margin (>= 0) */
    float head_dropout;   /* while the one-pass head trains (train_step), each input feature is zeroed
                           * with this probability and the others scaled by 1 / (1 - p); in [0, 1) */
} ff_config;

typedef struct {
    ff_opt_kind kind;
    float lr, beta1, beta2, eps;          /* Adam, AdamW */
    float momentum, dampening;            /* SGD */
    int nesterov;
    float weight_decay;
} ff_opt_config;

/* Defaults: FF loss, sum goodness, theta 2, alpha 4, L2 head norm eps 1e-4, label_value 1,
 * pvn_weight 0, margin 1; Adam lr 1e-3, betas (0.9, 0.999), eps 1e-8. */
ff_config ff_config_default(void);
ff_opt_config ff_opt_config_default(void);

/* Create an empty net for inputs of shape (C,H,W) (an MLP uses C = features, H = W = 1) and
 * K classes.  seed drives initialisation and negative-label sampling.  ff_net_new writes the
 * net to *out, or on a bad shape or class count (each dimension at most 2^24, C*H*W + H*W at
 * most 2^30 values, K in [2, 65536]) returns the status and writes the reason into msg (n
 * bytes, may be NULL).  ff_net_create is the same returning NULL on any failure.
 * The net owns everything it allocates; ff_net_destroy frees it all. */
ff_status ff_net_new(ff_net **out, int C, int H, int W, int K, uint64_t seed, char *msg, size_t n);
ff_net *ff_net_create(int C, int H, int W, int K, uint64_t seed);
void ff_net_destroy(ff_net *net);

/* Append a layer (before ff_net_finalize).  Shapes follow from the previous layer. */
/* Choose the label encoding; before the first layer is added (an embedding adds a channel). */
ff_status ff_net_set_label_encoding(ff_net *net, ff_label_kind kind);
ff_label_kind ff_net_label_encoding(const ff_net *net);
/* Per-class plane waves of the Fourier label (Scodellaro et al. 2023, spatially extended labels):
 * modes is (K, M, 4), row (k, m) = (wavelength lambda > 0 in pixels, orientation theta in radians,
 * amplitude a, phase phi in radians), all finite, 1 <= M <= FF_MAX_FOURIER_MODES; class k adds
 * to every channel plane label_value * sum_m a cos(2 pi (h cos theta + w sin theta) / lambda + phi).
 * NULL restores the default table (ff_fourier_default_modes, M = 1).  Any time, before or after
 * ff_net_finalize (the patterns are recomputed); the net copies the table. */
#define FF_MAX_FOURIER_MODES 4096
ff_status ff_net_set_fourier_modes(ff_net *net, const double *modes, int M);
/* The net's (K, M, 4) mode table (owned by the net; *M gets M), NULL until set or finalized. */
const double *ff_net_fourier_modes(const ff_net *net, int *M);
/* The (K, H*W) label patterns of a finalized Fourier net (owned by the net; *HW gets H*W), else NULL. */
const float *ff_net_label_patterns(const ff_net *net, int *HW);
/* The default table into modes (K, 4): orientation pi k / K, wavelength max(H, W) / (2 + k mod 3)
 * pixels, amplitude 1, phase 0 (fflib's original fixed mapping). */
void ff_fourier_default_modes(double *modes, int K, int H, int W);
/* A per-value affine map of the raw input, x' = x * scale + shift (D values each; input
 * standardisation: scale 1/std, shift -mean/std), applied where every training and inference
 * path encodes a sample, before the label goes in.  NULL for both turns it off (the default).
 * Every value must be finite.  Any time; the net copies the arrays. */
ff_status ff_net_set_input_affine(ff_net *net, const float *scale, const float *shift);
/* The net's scale (D values; *shift gets the shift), or NULL when off. */
const float *ff_net_input_affine(const ff_net *net, const float **shift);
ff_status ff_net_add_linear(ff_net *net, int out_features, int bias);
ff_status ff_net_add_conv2d(ff_net *net, int out_channels, int kernel, int stride, int pad,
                            int groups, int bias);
ff_status ff_net_add_batchnorm2d(ff_net *net, float eps, float momentum, int affine);
ff_status ff_net_add_relu(ff_net *net);
/* Length normalisation (L2 or RMS, see ff_lennorm_forward): what an FF block passes on. */
ff_status ff_net_add_lennorm(ff_net *net, ff_norm_kind kind, float eps);
ff_status ff_net_add_maxpool2d(ff_net *net, int kernel, int stride);
ff_status ff_net_add_flatten(ff_net *net);
/* Add a one-pass head (linear + softmax) reading the concatenated normalised outputs of the
 * nsel layers in sel (strictly increasing layer indices; normally the last layer of each
 * chosen block).  Optional; after the layers are added, before finalize. */
ff_status ff_net_set_head(ff_net *net, int nsel, const int *sel);
/* Give every block of the cut in force at finalize (the default cut if none was set) a
 * linear decoder from the block's output back to its input, trained by the ae loss (the UFF
 * autoencoder cell: the block is the encoder).  Decoder b is the parameter record
 * FF_LAYER_DECODER(b) for ff_net_param, set_opt, get/set_step; a later cut keeps the ae loss
 * only where a block's input and output sizes still match its decoder's.  Needs label
 * encoding none; after the layers are added, before finalize. */
ff_status ff_net_set_decoders(ff_net *net);
int ff_net_num_decoders(const ff_net *net);   /* 0 without decoders */
/* Allocate arenas and initialise parameters (PyTorch's default uniform(-1/sqrt(fan_in), ..)). */
ff_status ff_net_finalize(ff_net *net);

/* Cut the layers into nblocks blocks: block b is layers [ends[b-1], ends[b]) with ends[-1]=0;
 * ends strictly increasing, ends[nblocks-1] = number of layers.  Every block must contain
 * a trainable layer.  Valid before or after finalize; with no call, ff_net_finalize uses
 * ff_net_default_blocks. */
ff_status ff_net_set_blocks(ff_net *net, int nblocks, const int *ends);
/* General blocks [firsts[b], lasts[b]) that may overlap (overlapping local updates): firsts
 * and lasts strictly increasing, firsts[0] = 0, lasts[nblocks-1] = number of layers, and
 * firsts[b] <= lasts[b-1] (no gaps).  A layer in two blocks gets the sum of both blocks'
 * gradients and one optimiser step; each block recomputes its layers from its input. */
ff_status ff_net_set_block_ranges(ff_net *net, int nblocks, const int *firsts, const int *lasts);
/* The default cut of the layers added so far into ends (room for one int per layer);
 * returns the number of blocks. */
int ff_net_default_blocks(const ff_net *net, int *ends);

/* The net's configuration; its loss settings become every block's (ff_net_set_block_loss then
 * overrides one block until the next re-cut or set_config; ff_net_set_share_labels keeps it).
 * A loss that reads channel groups (CwC, PvN) is refused unless every block's output channels
 * divide by K. */
ff_status ff_net_set_config(ff_net *net, const ff_config *cfg);
ff_config ff_net_get_config(const ff_net *net);
/* Block b's own loss.  Its kind must build the same rows as the net's (with or without
 * negatives), since all blocks of a step share them.  The DF margin is the net's (config). */
ff_status ff_net_set_block_loss(ff_net *net, int b, ff_loss_kind loss, ff_goodness_kind goodness,
                                float theta, float alpha, float pvn_weight);
/* Why the last failing call on net failed, in words (the empty string before any failure).
 * Every function returning an ff_status other than FF_OK writes it. */
const char *ff_net_last_error(const ff_net *net);
/* Label sharing (on by default): a one-hot net on flat inputs whose first layers are
 * [LenNorm ->] Linear computes the label-independent product once per sample rather than once
 * per row (a training step has 2 or 3 rows per sample, multi-pass inference K), and the first
 * layer's weight gradient from the per-sample sums of the row gradients.  Equal to the
 * unshared computation up to float rounding; off recompiles the plans without it. */
ff_status ff_net_set_share_labels(ff_net *net, int on);
int ff_net_is_finalized(const ff_net *net);
/* Optimiser of layer l (l = -1: the head, -2: the label embedding, (K, H*W)); every trainable
 * layer has its own state.  ff_net_param, get/set_step take the same indices. */
ff_status ff_net_set_opt(ff_net *net, int layer, const ff_opt_config *opt);
ff_status ff_net_get_opt(const ff_net *net, int layer, ff_opt_config *opt);
/* Per-layer optimiser step counter (for save/load). */
long ff_net_get_step(const ff_net *net, int layer);
ff_status ff_net_set_step(ff_net *net, int layer, long t);
/* The RNG state (4 words) for save/load. */
void ff_net_get_rng(const ff_net *net, uint64_t state[4]);
void ff_net_set_rng(ff_net *net, const uint64_t state[4]);
/* Training (batch-norm batch statistics) or evaluation mode. */
void ff_net_set_training(ff_net *net, int training);

/* Introspection. */
int ff_net_num_layers(const ff_net *net);
int ff_net_num_blocks(const ff_net *net);
int ff_net_num_classes(const ff_net *net);
int ff_net_input_size(const ff_net *net);            /* C*H*W */
int ff_net_feature_size(const ff_net *net);          /* head input width, 0 without head */
int ff_net_has_head(const ff_net *net);
ff_layer_kind ff_net_layer_kind(const ff_net *net, int layer);
/* The layer's output shape (C,H,W). */
void ff_net_layer_shape(const ff_net *net, int layer, int *C, int *H, int *W);
typedef struct {
    ff_layer_kind kind;
    int C, H, W;          /* input shape (a linear layer's input counts as (features, 1, 1)) */
    int OC, OH, OW;       /* output shape */
    int kernel, stride, pad, groups, bias;
} ff_layer_info;
/* Describe layer l (-1: the head). */
ff_status ff_net_layer_info(const ff_net *net, int layer, ff_layer_info *info);
/* Block b's layer range [first, last). */
void ff_net_block_range(const ff_net *net, int b, int *first, int *last);
/* Pointer to a parameter array and its element count (0 and NULL when absent).  The
 * pointer stays valid until ff_net_destroy.  The gradient kinds point into the full gradient
 * arena, which exists only after a compute-only step (ff_net_train_step with apply_update 0,
 * or overlapping blocks): NULL before.  Reading them never changes how steps use memory. */
float *ff_net_param(ff_net *net, int layer, ff_param_kind which, size_t *count);
size_t ff_net_num_params(const ff_net *net);          /* trainable floats incl. the head */
/* Bytes of workspace currently reserved. */
size_t ff_net_workspace_bytes(const ff_net *net);

/* Size the workspace for batches of up to `rows` rows (training uses 3 rows per sample with
 * a head, 2 without; inference K rows per sample in chunks).  Allocates; call it outside
 * hot loops.  The step functions call it themselves when a batch outgrows it. */
ff_status ff_net_reserve(ff_net *net, int rows);

/* One FF training step on a minibatch.
 *   x (B, C*H*W): raw inputs (never modified); labels (B) in [0,K);
 *   neg_labels (B) or NULL: negative labels, each != labels[b]; NULL draws them uniformly
 *     from the K-1 wrong classes with the net's RNG (FF_LOSS_DF uses every wrong label and
 *     ignores them);
 *   active (nblocks) or NULL (all): a block with active[b] == 0 runs forward only (so later
 *     blocks see its output) and is neither trained nor its optimiser state touched;
 *     blocks after the last active one are skipped altogether;
 *   train_head: also train the one-pass head on the neutral-label rows;
 *   losses (nblocks + 1) or NULL: per-block local loss (0 for inactive blocks), then the head's.
 * Positive, negative (and neutral) rows go through each block together; each block is
 * forwarded, its loss and local gradients computed, its optimiser stepped.  With
 * apply_update == 0 the gradients are left in the gradient arena (zeroed first) and no
 * parameter changes (ff_net_optimizer_step applies them). */
ff_status ff_net_train_step(ff_net *net, const float *x, const int64_t *labels,
                            const int64_t *neg_labels, int B, const uint8_t *active,
                            int train_head, int apply_update, float *losses);
/* The general training step: ff_net_train_step's arguments plus
 *   x_neg (B, C*H*W) or NULL: explicit negative samples (self-contrastive pairs, hybrid
 *     images, or activations handed over from another process).  Negative row b is x_neg[b]
 *     encoded with neg_labels[b] if given, else labels[b] if given, else the neutral label;
 *     positive row b is x[b] with labels[b] (neutral without labels).  Needs a loss with one
 *     negative per positive (ff, symba); labels may then be NULL (no head trained).
 *   out (T, S) or NULL: receives the output of the last layer of the last block run, for the
 *     T = ff_net_train_rows(B) training rows (positive then negative; every label for df; the
 *     labelled rows for a label-free loss), as computed before that block's update.  S is that
 *     layer's output size (ff_net_train_out_size).
 * While the step runs, ff_net_progress tells how many leading layers' gradients are final
 * (for a caller that exchanges gradients layer by layer with apply_update 0). */
typedef struct {
    const float *x, *x_neg;
    const int64_t *labels, *neg_labels;
    int B;
    const uint8_t *active;
    int train_head, apply_update;
    float *losses;
    float *out;
} ff_train_args;
ff_status ff_net_train(ff_net *net, const ff_train_args *a);
/* Leading layers whose gradients are final in the step now running (0 when it starts; the
 * number of layers once every block's backward is done; then nl + 1 once the head's and
 * the embedding's are too).  Safe to read from another thread during a step. */
int ff_net_progress(const ff_net *net);
/* The training rows T of a step on B samples: 2B for ff/symba (positive, negative), K*B for df
 * (every label), B for the label-free losses: the rows of ff_net_train's `out`. */
int ff_net_train_rows(const ff_net *net, int B);
/* The output size of the layer ff_net_train's `out` comes from, for a step with `active`. */
int ff_net_train_out_size(const ff_net *net, const uint8_t *active);

/* Pipelined training (Pipeline Forward-Forward): block k trains on minibatch t - k at tick t,
 * the blocks of a tick running at once on fflib's threads, each single-threaded.  Block k's
 * input is block k - 1's output computed before block k - 1's update on the same minibatch,
 * as in the sequential step, so the result equals ff_net_train_step's bit for bit (at one
 * thread) and does not depend on the thread count.
 *   begin: for batches of up to max_batch samples; active (nblocks) or NULL, train_head as in
 *     ff_net_train_step, fixed until the next begin (which needs an empty pipeline); blocks
 *     must not overlap.  Allocates each stage's workspace (outside hot loops).
 *   step: one tick; x (B, C*H*W), labels, neg_labels (or NULL) enter the pipeline (x NULL:
 *     a drain tick, nothing enters).  losses (nblocks + 1) or NULL: each block's loss this
 *     tick (NaN for a block that did not train in it), then the head's.  x is read during the
 *     call only.  On an error the pipeline is ended (its in-flight minibatches dropped).
 *   in_flight: minibatches entered and not yet through the last stage; drain by calling
 *     step with x NULL until it is 0.
 *   end: free the pipeline (the net keeps its weights). */
ff_status ff_net_pipeline_begin(ff_net *net, int max_batch, const uint8_t *active, int train_head);
ff_status ff_net_pipeline_step(ff_net *net, const float *x, const int64_t *labels,
                               const int64_t *neg_labels, int B, float *losses);
int ff_net_pipeline_in_flight(const ff_net *net);
void ff_net_pipeline_end(ff_net *net);

/* Apply one optimiser step to the layers of the active blocks (NULL: all) and, if head, to
 * the head, from the gradients in the gradient arena. */
ff_status ff_net_optimizer_step(ff_net *net, const uint8_t *active, int head);
/* Zero the whole gradient arena. */
void ff_net_zero_grad(ff_net *net);

/* Class scores of every block's output, out (B, K, nblocks): with FF/SymBa losses the
 * multi-pass goodness (each sample run once per candidate label k); with CwC/PvN the group
 * goodness G of the neutral-label input (one pass); with XENT the logits of K-wide blocks. */
ff_status ff_net_goodness(ff_net *net, const float *x, int B, float *out);
/* Goodness of every block for inputs carrying the given labels (labels NULL: neutral label).
 * out (B, nblocks).  FF/SymBa losses only. */
ff_status ff_net_goodness_labeled(ff_net *net, const float *x, const int64_t *labels, int B,
                                  float *out);
/* One-pass head input: the concatenated normalised outputs of the head's blocks for
 * neutral-label inputs.  feat (B, feature_size). */
ff_status ff_net_features(ff_net *net, const float *x, int B, float *feat);
/* One-pass prediction: softmax of the head.  probs (B, K). */
ff_status ff_net_head_predict(ff_net *net, const float *x, int B, float *probs);

/* Early-exit prediction (LightFF, Aminifar et al. 2024): each sample stops at the first block
 * whose confidence reaches thresholds[b] (nblocks doubles; +inf never fires, NaN refused) and
 * answers the argmax of its scores there; the last block run always answers.  Samples that
 * exit are dropped from the rows of the later blocks (no compute is spent on them).
 *   onepass 0 (multi-pass): the scores after block b are the class scores of ff_net_goodness
 *     summed over blocks 0..b (in block order, float32);
 *   onepass 1: the one-pass head's logits from the features of the head layers run so far
 *     (the missing features count as zero: bias + W[:, seen] feat[seen]); a block holding no
 *     head layer cannot exit, blocks after the head's last are never run, and the last block
 *     run answers with the full head (ff_net_head_predict's softmax).
 *   rule FF_EXIT_SOFTMAX: confidence = the largest softmax probability of the scores;
 *   FF_EXIT_SCORE: the largest score itself (LightFF's goodness rule).
 * pred (B) the class, used (B) the blocks run (1..nblocks).  With every threshold +inf the
 * predictions equal the argmax of the full sum (multi-pass) or of ff_net_head_predict. */
typedef enum { FF_EXIT_SOFTMAX = 0, FF_EXIT_SCORE = 1 } ff_exit_rule;
ff_status ff_net_predict_early_exit(ff_net *net, const float *x, int B, int onepass, int rule,
                                    const double *thresholds, int64_t *pred, int32_t *used);

/* Directional gradient check of block `block`'s local loss (block = nblocks: the head): the
 * finite difference along a random direction (seed) of the parameters that block alone trains,
 * step eps, against the analytic directional derivative of a compute-only step.  neg_labels are
 * required for losses with one drawn negative per sample (FF, SymBa).  Writes fd, an and their relative difference; parameters
 * and running statistics are restored. */
ff_status ff_net_check_grad(ff_net *net, const float *x, const int64_t *labels,
                            const int64_t *neg_labels, int B, int block, float eps, uint64_t seed,
                            double *fd, double *an, double *rel);

/* 1 if all n values are finite, else 0. */
int ff_all_finite(const float *x, size_t n);

/* The one-hot label writer of the network's encoder, for flat rows: out (B, D) = x with the
 * first K values of each row replaced by label_value * onehot(label) (label -1: the neutral
 * label, label_value/K everywhere).  (An image net writes the same K values at the start of
 * every channel plane.) */
ff_status ff_overlay_labels(float *out, const float *x, const int64_t *labels, int B, int D,
                            int K, float label_value);

/* ------------------------------------------------------------------ label-free negatives (ff_pairs.c) */
/* Sample b's partner is sample (b + shift) mod B, shift in [1, B-1].  out must not alias x. */
/* Self-contrastive pairs (Chen et al. 2025, SCFF, Fig. 1d, with the first layer's two halves
 * sharing one weight matrix, as in the authors' code, so a pair enters as its mean):
 * pos[b] = (x[b] + x2[b]) / 2 (an image with itself, or with its second view x2),
 * neg[b] = (x[b] + x2[partner]) / 2.  pos, neg, x, x2 are (B, D); x2 may be x. */
ff_status ff_scff_pairs(float *pos, float *neg, const float *x, const float *x2, int B, int D, int shift);
/* Hinton's (2022, sec. 3.2) hybrid-image masks: each random bit image bits[b] (H, W) blurred
 * `iterations` times with [1/4, 1/2, 1/4] along rows then columns (edges clamped), then 1
 * where > 0.5, else 0.  mask, bits (B, H, W) (mask may be bits); work (H, W) scratch. */
ff_status ff_hybrid_masks(float *mask, float *work, const float *bits, int B, int H, int W, int iterations);
/* Hybrid images: out[b] = mask[b] * x[b] + (1 - mask[b]) * x[partner], the (HW) mask shared
 * by the C channels.  out, x (B, C, HW); mask (B, HW). */
ff_status ff_hybrid_images(float *out, const float *x, const float *mask, int B, int C, int HW, int shift);

#ifdef __cplusplus
}
#endif
#endif /* FFLIB_H */
