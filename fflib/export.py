"""Export a trained :class:`FFModel` to one dependency-free C99 source and header.

``export_c(model, out_dir)`` writes ``<name>.c`` and ``<name>.h``: the weights as ``static const``
arrays and the inference code as straight-line calls of a few small kernels (linear, conv,
batch-norm affine, ReLU, max pool, length normalisation, goodness and channel-group goodness,
the one-pass head, multi-pass over labels).  The code is C99, allocates nothing, needs no BLAS
and no libm beyond ``sqrtf`` and ``expf``, and runs in a caller-provided scratch buffer of
``<NAME>_SCRATCH_FLOATS`` floats (stated in the header).

How the C reproduces Python
    One walk over the layers, as the C core's inference does: the raw sample is standardised
    (``FFModel.input_norm``, if set) and encoded with a label (one-hot, Fourier wave,
    embedding channel) or the neutral label; every layer runs in order; at the end of block b
    its class scores are taken (goodness, sum or mean of squares or minus it, for FF/SymBa;
    channel-group goodness for CwC/PvN); a head layer's output is
    length-normalised (``config["norm"]``) and multiplied into its columns of the head.
    ``<name>_goodness`` equals :meth:`FFModel.goodness` (K x num_blocks), ``<name>_proba``
    :meth:`FFModel.predict_proba`; ``<name>_predict`` the chosen inference.  Blocks are the
    model's current cut (``model.blocks``).  Products are summed in float32 in another order
    than the core's BLAS, sums of squares with Kahan compensation (the core sums them in
    double): goodness agrees to about 1e-6 of each block's largest value (measured).

Memory
    Activations live in the scratch buffer in two regions at its two ends: an out-of-place
    layer (Linear, Conv2d, the input encoding) reads one and writes the other, the others
    (ReLU, batch norm, length normalisation, max pool, int8 quantisation) work in place.  A
    Conv2d -> ReLU -> MaxPool2d run whose inner outputs nothing else reads is computed one
    output channel at a time through a plane buffer, so only the pooled output is stored.  The
    scratch is the largest sum of a layer's input and output sizes (plus that plane; with int8,
    a quarter of the input, its int8 copy; plus, with early exit over labels, one block output
    per class).

Batch norm
    Folded into the conv after it when that conv has no padding (exact), or into the conv
    before it when nothing but the batch norm reads the conv's output; otherwise applied as a
    per-channel affine map with constants precomputed from the running statistics.

int8 (post-training quantisation)
    Weights of every Linear/Conv2d symmetric int8 per output channel; the input of each such
    layer quantised with one scale per layer, max |x| over a calibration set (127 levels; the
    neutral-label pass and, for FF/SymBa, two random labels per 128 samples);
    products summed in int32 and rescaled to float.  The one-pass head keeps float inputs
    with int8 weights (one scale per class and head block).  Everything else stays float.

Early exit (``early_exit=T``, 0 < T < 1)
    The blocks run in order; after each block b but the last one run (the last block for
    multi-pass, the head's last block for one-pass) the class scores of blocks 0..b are summed,
    S_b; if the largest softmax(S_b) probability exceeds T the sample is classified as
    argmax S_b and the remaining blocks are skipped.  Otherwise the usual prediction (head or
    multi-pass) is returned.  For FF/SymBa multi-pass the blocks run block-major over the K
    labels, keeping one block output per label in the scratch.  One-pass early exit needs
    per-class block scores from the neutral pass, i.e. a CwC/PvN/xent model.
"""
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

from .nn import GROUP_LOSSES

LABEL_FREE = GROUP_LOSSES + ("xent",)


# ------------------------------------------------------------------------------------ plan

def _f32(a):
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def default_multipass_blocks(model):
    """The blocks multi-pass sums by default, as :func:`fflib.evaluate`: every block for
    FF/SymBa, the last two for CwC/PvN."""
    nb = model.num_blocks
    if model.config["loss"] in GROUP_LOSSES:
        return [nb - 2, nb - 1] if nb > 1 else [nb - 1]
    return list(range(nb))


class _Plan:
    """The model as a list of segments (one per block) of ops, with folded parameters."""

    def __init__(self, model, multipass_blocks):
        net = model._net
        self.K = K = model.num_classes
        self.C0, self.H0, self.W0 = model.input_shape
        self.D = self.C0 * self.H0 * self.W0
        self.HW = self.H0 * self.W0
        self.enc = model.label_encoding
        self.cfg = model.config
        self.loss = self.cfg["loss"]
        self.label_free = self.loss in LABEL_FREE
        self.Din = self.D + (self.HW if self.enc == "embedding" else 0)
        # input standardisation (FFModel.input_norm): x * scale + shift, as the core applies it
        self.in_affine = model.input_affine
        ends = [b for _, b in model.blocks]
        self.NB = len(ends)
        self.head_layers = list(model.head_layers)
        self.has_head = bool(self.head_layers)
        if multipass_blocks is None:
            multipass_blocks = default_multipass_blocks(model)
        self.sel = model._block_selection(multipass_blocks)
        layers = model.layers
        n = len(layers)
        in_shape = [None] * n
        out_shape = [tuple(net.layer_shape(i)) for i in range(n)]
        shape = (self.C0 + (1 if self.enc == "embedding" else 0), self.H0, self.W0)
        for i in range(n):
            in_shape[i] = shape
            shape = out_shape[i]
        needed = set(self.head_layers) | {e - 1 for e in ends}   # outputs read beyond the next layer
        # label tables
        v = np.float32(self.cfg["label_value"])
        self.label_value = v
        if self.enc == "embedding":
            emb = _f32(model.label_embedding).reshape(K, self.HW)
            self.embedding = emb
            acc = np.zeros(self.HW, np.float32)
            for k in range(K):   # the core's order: o += emb[k] / K, in float32
                acc = (acc + emb[k] / np.float32(K)).astype(np.float32)
            self.neutral_map = acc
        if self.enc == "fourier":
            self.pattern = np.asarray(model.label_patterns, np.float32)   # the core's own waves
        # ops per layer, folding batch norm where exact
        ops = {}
        skip = set()
        for i, layer in enumerate(layers):
            if i in skip:
                continue
            kind = layer.kind
            C, H, W = in_shape[i]
            if kind == "batchnorm2d":
                mean, a, b = _bn_affine(layer)
                nxt = layers[i + 1] if i + 1 < n else None
                if (nxt is not None and nxt.kind == "conv2d" and nxt.padding == 0 and i not in needed):
                    ops[i] = None
                    skip.add(i + 1)
                    after = layers[i + 2] if i + 2 < n else None
                    if after is not None and after.kind == "batchnorm2d" and i + 1 not in needed:
                        ops[i + 1] = None   # BN -> conv -> BN: both into the conv
                        ops[i + 2] = self._conv_op(nxt, in_shape[i + 1], out_shape[i + 1], fold_in=(mean, a, b),
                                                   fold_out=_bn_affine(after))
                        ops[i + 2]["folded_bn"] = "input+output"
                        skip.add(i + 2)
                    else:
                        ops[i + 1] = self._conv_op(nxt, in_shape[i + 1], out_shape[i + 1], fold_in=(mean, a, b))
                        ops[i + 1]["folded_bn"] = "input"
                    continue
                ops[i] = dict(op="affine", C=C, HW=H * W, mean=_f32(mean), a=_f32(a), b=_f32(b))
            elif kind == "conv2d":
                nxt = layers[i + 1] if i + 1 < n else None
                if nxt is not None and nxt.kind == "batchnorm2d" and i not in needed:
                    ops[i] = None
                    ops[i + 1] = self._conv_op(layer, in_shape[i], out_shape[i], fold_out=_bn_affine(nxt))
                    ops[i + 1]["folded_bn"] = "output"
                    skip.add(i + 1)
                    continue
                ops[i] = self._conv_op(layer, in_shape[i], out_shape[i])
            elif kind == "linear":
                w = _f32(layer.weight)
                b = _f32(layer.bias) if layer.bias is not None else np.zeros(w.shape[0], np.float32)
                ops[i] = dict(op="linear", I=w.shape[1], O=w.shape[0], w=w, b=b)
            elif kind == "relu":
                ops[i] = dict(op="relu", n=C * H * W)
            elif kind == "maxpool2d":
                OC, OH, OW = out_shape[i]
                ops[i] = dict(op="maxpool", C=C, H=H, W=W, k=layer.kernel_size, stride=layer.stride, OH=OH, OW=OW)
            elif kind == "lennorm":
                ops[i] = dict(op="lennorm", n=C * H * W, norm=layer.norm, eps=np.float32(layer.eps))
            elif kind == "flatten":
                ops[i] = None
            else:
                raise ValueError(f"export_c: layer {i} ({kind}) is not supported")
        # head slices
        hw = _f32(model.head_weight) if self.has_head else None
        self.head_bias = _f32(model.head_bias) if self.has_head else None
        col = 0
        self.segments = []
        first = 0
        for b, e in enumerate(ends):
            seg = []
            for i in range(first, e):
                if ops.get(i) is not None:
                    op = dict(ops[i])
                    op["layer"] = i
                    seg.append(op)
                if i in self.head_layers:
                    d = int(np.prod(out_shape[i]))
                    seg.append(dict(op="head", n=d, h=self.head_layers.index(i), w=_f32(hw[:, col:col + d]),
                                    layer=i))
                    col += d
            seg = _fuse_conv_relu_pool(seg)
            C, H, W = out_shape[e - 1]
            seg.append(dict(op="score", n=C * H * W, C=C, HW=H * W))
            self.segments.append(seg)
            first = e
        self.F = col
        # one-pass runs the blocks up to the one holding the last head layer
        self.head_stop = 0
        if self.has_head:
            last = self.head_layers[-1]
            self.head_stop = next(b + 1 for b, e in enumerate(ends) if e > last)

    def _conv_op(self, layer, ishape, oshape, fold_in=None, fold_out=None):
        C, H, W = ishape
        OC, OH, OW = oshape
        w = np.asarray(layer.weight, np.float64)
        b = np.asarray(layer.bias, np.float64) if layer.bias is not None else np.zeros(OC)
        g = layer.groups
        if fold_in is not None:   # conv(x * a + c) with c = beta - mean * a, no padding: exact
            mean, a, beta = (np.asarray(t, np.float64) for t in fold_in)
            c = beta - mean * a
            Cg = C // g
            ch = np.arange(OC) // (OC // g) * Cg   # first input channel of each output's group
            idx = ch[:, None] + np.arange(Cg)[None, :]
            b = b + (w.sum(axis=(2, 3)) * c[idx]).sum(axis=1)
            w = w * a[idx][:, :, None, None]
        if fold_out is not None:  # ((conv(x) - mean) * a + beta)
            mean, a, beta = (np.asarray(t, np.float64) for t in fold_out)
            w = w * a[:, None, None, None]
            b = (b - mean) * a + beta
        return dict(op="conv", C=C, H=H, W=W, OC=OC, OH=OH, OW=OW, k=layer.kernel_size,
                    stride=layer.stride, pad=layer.padding, groups=g, w=_f32(w), b=_f32(b))

    # ---------------------------------------------------------------- counting
    def macs(self, block_range=None, head=False):
        """Multiply-accumulates of one pass over the blocks in block_range (default all)."""
        rng = range(self.NB) if block_range is None else block_range
        total = 0
        for b in rng:
            for op in self.segments[b]:
                if op["op"] == "linear":
                    total += op["I"] * op["O"]
                elif op["op"] == "conv":
                    total += op["OC"] * op["OH"] * op["OW"] * (op["C"] // op["groups"]) * op["k"] ** 2
                elif op["op"] == "head" and head:
                    total += op["n"] * self.K
        return total

    def macs_onepass(self):
        return self.macs(range(self.head_stop), head=True) if self.has_head else None

    def macs_multipass(self):
        return self.macs() * (1 if self.label_free else self.K)

    def weighted_ops(self):
        return [op for seg in self.segments for op in seg if op["op"] in ("linear", "conv")]

    # ---------------------------------------------------------------- NumPy forward
    def encode(self, x, label):
        """x (N, D) raw samples -> (N, Din) encoded with label (int, or -1 neutral)."""
        N = x.shape[0]
        out = np.zeros((N, self.Din), np.float32)
        out[:, :self.D] = x if self.in_affine is None else x * self.in_affine[0] + self.in_affine[1]
        K, v, HW = self.K, self.label_value, self.HW
        if self.enc == "onehot":
            vals = np.full(K, v / np.float32(K), np.float32) if label < 0 else \
                np.where(np.arange(K) == label, v, np.float32(0)).astype(np.float32)
            for c in range(self.C0 if HW > 1 else 1):   # a flat input: the first K values only
                out[:, c * HW:c * HW + K] = vals
        elif self.enc == "fourier":
            for c in range(self.C0):
                o = out[:, c * HW:(c + 1) * HW]
                if label >= 0:
                    o += v * self.pattern[label]
                else:
                    for k in range(K):
                        o += (v / np.float32(K)) * self.pattern[k]
        elif self.enc == "embedding":
            out[:, self.D:] = self.embedding[label] if label >= 0 else self.neutral_map
        return out

    def forward_numpy(self, x, observe=None):
        """Run every segment on encoded rows x (N, Din) in float32; observe(op, input) is called
        before each Linear/Conv2d.  Returns the output of the last layer."""
        a = x.astype(np.float32)
        for seg in self.segments:
            for op in seg:
                a = _numpy_op(op, a, observe)
        return a


def _fuse_conv_relu_pool(seg):
    """Conv2d, ReLU, MaxPool2d in a row (nothing reads the conv or ReLU output in between:
    a head op would sit between them) become one conv op with a ``pool``: it runs one output
    channel at a time, so the conv output never exists in full."""
    out, i = [], 0
    while i < len(seg):
        op = seg[i]
        if (op["op"] == "conv" and i + 2 < len(seg) and seg[i + 1]["op"] == "relu"
                and seg[i + 2]["op"] == "maxpool"):
            mp = seg[i + 2]
            op = dict(op, pool=dict(k=mp["k"], stride=mp["stride"], OH=mp["OH"], OW=mp["OW"]),
                      layer=mp["layer"])
            out.append(op)
            i += 3
            continue
        out.append(op)
        i += 1
    return out


def _out_size(op):
    """Floats an out-of-place op (Linear, Conv2d, a fused conv-ReLU-pool) writes."""
    if op["op"] == "linear":
        return op["O"]
    if "pool" in op:
        return op["OC"] * op["pool"]["OH"] * op["pool"]["OW"]
    return op["OC"] * op["OH"] * op["OW"]


def _numpy_op(op, a, observe):
    kind = op["op"]
    if kind in ("linear", "conv") and observe is not None:
        observe(op, a)
    if kind == "linear":
        if "wt" not in op:   # a contiguous W^T: numpy's GEMM is many times slower on a transposed view
            op["wt"] = np.ascontiguousarray(op["w"].T)
        return a.reshape(len(a), -1) @ op["wt"] + op["b"]
    if kind == "conv":
        N = len(a)
        x = a.reshape(N, op["C"], op["H"], op["W"])
        p, s, k, g = op["pad"], op["stride"], op["k"], op["groups"]
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
        win = win[:, :, :op["OH"], :op["OW"]]
        Cg, Og = op["C"] // g, op["OC"] // g
        out = np.empty((N, op["OC"], op["OH"], op["OW"]), np.float32)
        for gi in range(g):
            wg = np.ascontiguousarray(op["w"][gi * Og:(gi + 1) * Og].reshape(Og, -1).T)
            cols = win[:, gi * Cg:(gi + 1) * Cg].transpose(0, 2, 3, 1, 4, 5).reshape(N * op["OH"] * op["OW"], -1)
            out[:, gi * Og:(gi + 1) * Og] = (cols @ wg).reshape(N, op["OH"], op["OW"], Og).transpose(0, 3, 1, 2)
        out = (out + op["b"][None, :, None, None]).reshape(N, -1)
        if "pool" in op:
            pl = op["pool"]
            out = _numpy_op(dict(op="maxpool", C=op["OC"], H=op["OH"], W=op["OW"], k=pl["k"],
                                 stride=pl["stride"], OH=pl["OH"], OW=pl["OW"]), np.maximum(out, 0), None)
        return out
    if kind == "affine":
        x = a.reshape(len(a), op["C"], op["HW"])
        return ((x - op["mean"][:, None]) * op["a"][:, None] + op["b"][:, None]).reshape(len(a), -1)
    if kind == "relu":
        return np.maximum(a, 0)
    if kind == "maxpool":
        N, k, s = len(a), op["k"], op["stride"]
        x = a.reshape(N, op["C"], op["H"], op["W"])
        win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]
        return win[:, :, :op["OH"], :op["OW"]].max(axis=(4, 5)).reshape(N, -1)
    if kind == "lennorm":
        ss = (a.astype(np.float64) ** 2).sum(axis=1, keepdims=True)
        if op["norm"] == "l2":
            sc = 1.0 / (np.sqrt(ss) + op["eps"])
        elif op["norm"] == "rms":
            sc = 1.0 / np.sqrt(ss / a.shape[1] + op["eps"])
        else:
            return a
        return (a * sc.astype(np.float32)).astype(np.float32)
    return a   # head, score: no change to the activation


def _bn_affine(layer):
    """The eval-mode batch norm as (x - mean) * a + b, a folded in double as the core does."""
    mean = np.asarray(layer.running_mean, np.float32)
    rs = 1.0 / np.sqrt(np.asarray(layer.running_var, np.float64) + np.float64(np.float32(layer.eps)))
    gamma = np.asarray(layer.weight, np.float64) if layer.affine else np.ones(len(mean))
    beta = np.asarray(layer.bias, np.float32) if layer.affine else np.zeros(len(mean), np.float32)
    return mean, (rs * gamma).astype(np.float32), beta


# ------------------------------------------------------------------------------------ int8

def _calibrate(plan, x):
    """Max |input| of every Linear/Conv2d over calibration samples x (N, D), all the passes
    the exported code runs (neutral, and every label for FF/SymBa)."""
    amax = {}

    def observe(op, a):
        amax[id(op)] = max(amax.get(id(op), 0.0), float(np.abs(a).max()))

    rng = np.random.default_rng(0)
    for s in range(0, len(x), 128):
        # the neutral pass and, for FF/SymBa, two random labels per chunk (every label sees
        # similar activations; all K would cost K passes)
        labels = [-1] + ([] if plan.label_free else [int(v) for v in rng.choice(plan.K, 2, replace=False)])
        for lab in labels:
            plan.forward_numpy(plan.encode(x[s:s + 128], lab), observe)
    return amax


def _quantize_weights(w):
    """Per-output-channel symmetric int8: (q int8 same shape, scale float64 (O,))."""
    w2 = np.asarray(w, np.float64).reshape(w.shape[0], -1)
    amax = np.abs(w2).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    q = np.clip(np.rint(w2 / scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(w.shape), scale


# ------------------------------------------------------------------------------------ codegen

def _fmt_floats(a):
    vals = []
    for v in np.asarray(a, np.float32).ravel():
        s = "%.9g" % v
        if "e" not in s and "." not in s and "n" not in s:
            s += ".0"
        vals.append(s + "f")
    return _wrap(vals)


def _fmt_ints(a):
    return _wrap([str(int(v)) for v in np.asarray(a).ravel()])


def _wrap(vals, per=12):
    return ",\n".join("    " + ", ".join(vals[i:i + per]) for i in range(0, len(vals), per))


KERNELS = {
    "linear": """
/* y (O) = w (O, I) . x (I) + b (O) */
static void k_linear(float *y, const float *x, const float *w, const float *b, int I, int O) {
    int o, i;
    for (o = 0; o < O; o++) {
        const float *wo = w + (long)o * I;
        float acc = 0.0f;
        for (i = 0; i < I; i++) acc += wo[i] * x[i];
        y[o] = acc + b[o];
    }
}
""",
    "linear_q": """
/* y (O) = m (O) * (w (O, I) . q (I), summed in int32) + b (O) */
static void k_linear_q(float *y, const signed char *q, const signed char *w, const float *m,
                       const float *b, int I, int O) {
    int o, i;
    for (o = 0; o < O; o++) {
        const signed char *wo = w + (long)o * I;
        int32_t acc = 0;
        for (i = 0; i < I; i++) acc += (int32_t)wo[i] * (int32_t)q[i];
        y[o] = (float)acc * m[o] + b[o];
    }
}
""",
    "quantize": """
/* q (n) = x (n) as int8: round(x * inv), clamped to [-127, 127].  q may overlap x's storage:
 * starting at x (filled upwards: byte i lies in float i / 4, already read) or ending at or
 * after the end of x's region (filled downwards), so the int8 copy takes a quarter of it. */
static signed char k_q8(float v) {
    int r = (int)(v >= 0.0f ? v + 0.5f : v - 0.5f);
    return (signed char)(r > 127 ? 127 : r < -127 ? -127 : r);
}

static void k_quantize(signed char *q, const float *x, int n, float inv) {
    int i;
    if ((const signed char *)x >= q)
        for (i = 0; i < n; i++) q[i] = k_q8(x[i] * inv);
    else
        for (i = n - 1; i >= 0; i--) q[i] = k_q8(x[i] * inv);
}
""",
    "affine": """
/* x (C, HW) = (x - mean[c]) * a[c] + b[c]: eval-mode batch norm, in place */
static void k_affine(float *x, const float *mean, const float *a, const float *b, int C, int HW) {
    int c, i;
    for (c = 0; c < C; c++) {
        float *xc = x + (long)c * HW;
        for (i = 0; i < HW; i++) xc[i] = (xc[i] - mean[c]) * a[c] + b[c];
    }
}
""",
    "relu": """
static void k_relu(float *x, int n) {
    int i;
    for (i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}
""",
    "maxpool": """
/* x (C, H, W) -> (C, OH, OW) max over KS x KS windows, stride S, in place (every output is
 * written at or before the first input it reads) */
static void k_maxpool(float *x, int C, int H, int W, int OH, int OW, int KS, int S) {
    int c, oh, ow, kh, kw;
    for (c = 0; c < C; c++)
        for (oh = 0; oh < OH; oh++)
            for (ow = 0; ow < OW; ow++) {
                const float *xc = x + (long)c * H * W;
                float m = xc[(oh * S) * W + ow * S];
                for (kh = 0; kh < KS; kh++)
                    for (kw = 0; kw < KS; kw++) {
                        float v = xc[(oh * S + kh) * W + ow * S + kw];
                        m = v > m ? v : m;
                    }
                x[((long)c * OH + oh) * OW + ow] = m;
            }
}
""",
    "conv_ch": """
/* yo (OH, OW) = output channel o of conv(x (C, H, W), w (OC, C/G, KS, KS)) + b[o]: zero
 * padding P, stride S, G groups */
static void k_conv_ch(float *yo, const float *x, const float *w, const float *b, int o, int C, int H,
                      int W, int OC, int OH, int OW, int KS, int S, int P, int G) {
    int Cg = C / G, Og = OC / G, c, kh, kw, oh, ow;
    const float *xg = x + (long)(o / Og) * Cg * H * W;
    for (oh = 0; oh < OH * OW; oh++) yo[oh] = 0.0f;
    for (c = 0; c < Cg; c++)
        for (kh = 0; kh < KS; kh++)
            for (kw = 0; kw < KS; kw++) {
                float wv = w[(((long)o * Cg + c) * KS + kh) * KS + kw];
                /* output columns whose input column ow*S - P + kw lies inside [0, W) */
                int lo = 0, hi = OW;
                while (lo < OW && lo * S - P + kw < 0) lo++;
                while (hi > lo && (hi - 1) * S - P + kw >= W) hi--;
                for (oh = 0; oh < OH; oh++) {
                    int ih = oh * S - P + kh;
                    const float *xr;
                    float *yr = yo + (long)oh * OW;
                    if (ih < 0 || ih >= H) continue;
                    xr = xg + ((long)c * H + ih) * W;
                    if (S == 1) {
                        const float *xs = xr - P + kw + lo;   /* inside the row: lo - P + kw >= 0 */
                        for (ow = 0; ow < hi - lo; ow++) yr[lo + ow] += wv * xs[ow];
                    } else {
                        for (ow = lo; ow < hi; ow++) yr[ow] += wv * xr[ow * S - P + kw];
                    }
                }
            }
    for (oh = 0; oh < OH * OW; oh++) yo[oh] += b[o];
}
""",
    "conv": """
/* y (OC, OH, OW) = conv(x (C, H, W)) + b, every output channel */
static void k_conv(float *y, const float *x, const float *w, const float *b, int C, int H, int W,
                   int OC, int OH, int OW, int KS, int S, int P, int G) {
    int o;
    for (o = 0; o < OC; o++) k_conv_ch(y + (long)o * OH * OW, x, w, b, o, C, H, W, OC, OH, OW, KS, S, P, G);
}
""",
    "conv_pool": """
/* y (OC, POH, POW) = maxpool(relu(conv(x) + b)), one output channel at a time through
 * plane (OH * OW floats): the full conv output never exists */
static void k_conv_relu_pool(float *y, const float *x, const float *w, const float *b, float *plane,
                             int C, int H, int W, int OC, int OH, int OW, int KS, int S, int P, int G,
                             int PK, int PS, int POH, int POW) {
    int o, i;
    for (o = 0; o < OC; o++) {
        k_conv_ch(plane, x, w, b, o, C, H, W, OC, OH, OW, KS, S, P, G);
        k_relu(plane, OH * OW);
        k_maxpool(plane, 1, OH, OW, POH, POW, PK, PS);
        for (i = 0; i < POH * POW; i++) y[(long)o * POH * POW + i] = plane[i];
    }
}
""",
    "conv_q_ch": """
/* yo (OH, OW) = m[o] * (output channel o of conv(q (C, H, W), w (OC, C/G, KS, KS)) summed in
 * int32) + b[o] */
static void k_conv_q_ch(float *yo, const signed char *q, const signed char *w, const float *m,
                        const float *b, int o, int C, int H, int W, int OC, int OH, int OW, int KS,
                        int S, int P, int G) {
    int32_t acc[MAX_OW];   /* one output row */
    int Cg = C / G, Og = OC / G, c, kh, kw, oh, ow;
    const signed char *qg = q + (long)(o / Og) * Cg * H * W;
    const signed char *wo = w + (long)o * Cg * KS * KS;
    for (oh = 0; oh < OH; oh++) {
        for (ow = 0; ow < OW; ow++) acc[ow] = 0;
        for (c = 0; c < Cg; c++)
            for (kh = 0; kh < KS; kh++) {
                int ih = oh * S - P + kh;
                const signed char *qr;
                if (ih < 0 || ih >= H) continue;
                qr = qg + ((long)c * H + ih) * W;
                for (kw = 0; kw < KS; kw++) {
                    int32_t wv = wo[((long)c * KS + kh) * KS + kw];
                    int lo = 0, hi = OW;
                    while (lo < OW && lo * S - P + kw < 0) lo++;
                    while (hi > lo && (hi - 1) * S - P + kw >= W) hi--;
                    for (ow = lo; ow < hi; ow++) acc[ow] += wv * (int32_t)qr[ow * S - P + kw];
                }
            }
        for (ow = 0; ow < OW; ow++) yo[(long)oh * OW + ow] = (float)acc[ow] * m[o] + b[o];
    }
}
""",
    "conv_q": """
static void k_conv_q(float *y, const signed char *q, const signed char *w, const float *m,
                     const float *b, int C, int H, int W, int OC, int OH, int OW, int KS, int S,
                     int P, int G) {
    int o;
    for (o = 0; o < OC; o++)
        k_conv_q_ch(y + (long)o * OH * OW, q, w, m, b, o, C, H, W, OC, OH, OW, KS, S, P, G);
}
""",
    "conv_q_pool": """
/* y (OC, POH, POW) = maxpool(relu(int8 conv)), one output channel at a time through plane */
static void k_conv_q_relu_pool(float *y, const signed char *q, const signed char *w, const float *m,
                               const float *b, float *plane, int C, int H, int W, int OC, int OH,
                               int OW, int KS, int S, int P, int G, int PK, int PS, int POH, int POW) {
    int o, i;
    for (o = 0; o < OC; o++) {
        k_conv_q_ch(plane, q, w, m, b, o, C, H, W, OC, OH, OW, KS, S, P, G);
        k_relu(plane, OH * OW);
        k_maxpool(plane, 1, OH, OW, POH, POW, PK, PS);
        for (i = 0; i < POH * POW; i++) y[(long)o * POH * POW + i] = plane[i];
    }
}
""",
    "sumsq": """
/* Sum of squares with Kahan's compensation: single-precision arithmetic (fast on an FPU
 * without double) whose error does not grow with n, as the core's double sums. */
static float k_sumsq(const float *x, int n) {
    float s = 0.0f, c = 0.0f;
    int i;
    for (i = 0; i < n; i++) {
        float t, v = x[i] * x[i] - c;
        t = s + v;
        c = (t - s) - v;
        s = t;
    }
    return s;
}
""",
    "scale": """
/* The length-normalisation factor of x (n): 1 / (|x| + eps) (kind 1, L2) or
 * 1 / sqrt(mean(x^2) + eps) (kind 2, RMS); 1 for kind 0 */
static float k_norm_scale(const float *x, int n, int kind, float eps) {
    float ss;
    if (kind == 0) return 1.0f;
    ss = k_sumsq(x, n);
    return kind == 1 ? 1.0f / (sqrtf(ss) + eps) : 1.0f / sqrtf(ss / (float)n + eps);
}
""",
    "lennorm": """
static void k_lennorm(float *x, int n, int kind, float eps) {
    float s = k_norm_scale(x, n, kind, eps);
    int i;
    for (i = 0; i < n; i++) x[i] *= s;
}
""",
    "head": """
/* logits (K) += w (K, n) . (x (n) * s): one head block's share of the one-pass head */
static void k_head(float *logits, const float *x, const float *w, float s, int n, int K) {
    int k, i;
    for (k = 0; k < K; k++) {
        const float *wk = w + (long)k * n;
        float acc = 0.0f;
        for (i = 0; i < n; i++) acc += wk[i] * (x[i] * s);
        logits[k] += acc;
    }
}
""",
    "head_q": """
/* logits (K) += m (K) * (w (K, n) int8 . (x (n) * s)): the head with int8 weights */
static void k_head_q(float *logits, const float *x, const signed char *w, const float *m, float s,
                     int n, int K) {
    int k, i;
    for (k = 0; k < K; k++) {
        const signed char *wk = w + (long)k * n;
        float acc = 0.0f;
        for (i = 0; i < n; i++) acc += (float)wk[i] * (x[i] * s);
        logits[k] += acc * m[k];
    }
}
""",
    "group": """
/* G (J) = mean of squares of each of J consecutive groups of n values of x */
static void k_group_goodness(float *G, const float *x, int J, int n) {
    int j;
    for (j = 0; j < J; j++) G[j] = k_sumsq(x + (long)j * n, n) / (float)n;
}
""",
    "softmax": """
/* p (K) = softmax(z (K)); returns the index of the largest z */
static int k_softmax(float *p, const float *z, int K) {
    int k, best = 0;
    float sum = 0.0f;
    for (k = 1; k < K; k++) if (z[k] > z[best]) best = k;
    for (k = 0; k < K; k++) { p[k] = expf(z[k] - z[best]); sum += p[k]; }
    for (k = 0; k < K; k++) p[k] /= sum;
    return best;
}
""",
}
KERNEL_ORDER = list(KERNELS)


class _Gen:
    def __init__(self, plan, name, int8, amax, inference, early_exit):
        self.p, self.name, self.int8, self.amax = plan, name, int8, amax
        self.inference, self.early_exit = inference, early_exit
        self.N = name.upper()
        self.used = set()
        self.consts = []
        self.flash_weights = 0

    def const(self, cname, arr, ctype="float"):
        arr = np.asarray(arr)
        body = _fmt_floats(arr) if ctype == "float" else _fmt_ints(arr)
        self.consts.append(f"static const {ctype} {cname}[{arr.size}] = {{\n{body}\n}};\n")
        self.flash_weights += arr.size * (4 if ctype == "float" else 1)
        return cname

    # ------------------------------------------------------------ memory plan
    def plan_memory(self):
        """Place every activation at the low or high end of the scratch (see the module doc)."""
        p = self.p
        S = p.Din
        side, alloc = 0, p.Din
        self.block_in = []    # (side, alloc) of each block's input
        for seg in p.segments:
            self.block_in.append((side, alloc))
            for op in seg:
                op["in_side"], op["in_alloc"] = side, alloc
                if op["op"] in ("linear", "conv"):
                    out = _out_size(op)
                    plane = op["OH"] * op["OW"] if "pool" in op else 0
                    # int8: the input shrinks to its int8 copy (a quarter) at the outer end of its region
                    n_in = op["I"] if op["op"] == "linear" else op["C"] * op["H"] * op["W"]
                    need = (n_in + 3) // 4 if self.int8 else alloc
                    S = max(S, need + out + plane)
                    # a fused conv's plane sits between its input and its output
                    op["plane_off"] = need if side == 0 else out
                    side, alloc = 1 - side, out
            seg[-1]["out_side"], seg[-1]["out_alloc"] = side, alloc
        self.S = S
        self.max_block_out = max(seg[-1]["n"] for seg in p.segments)
        self.slots = 0
        if self.early_exit is not None and not p.label_free and self.inference == "multipass":
            self.slots = p.K * self.max_block_out
        self.scratch = S + self.slots

    def off(self, side, alloc):
        return 0 if side == 0 else self.S - alloc

    # ------------------------------------------------------------ ops
    def emit_op(self, op, b, j):
        p = self.p
        src = f"s + {self.off(op['in_side'], op['in_alloc'])}"
        tag = f"b{b}_{j}"
        kind = op["op"]
        if kind in ("linear", "conv"):
            out = _out_size(op)
            dst = f"s + {self.off(1 - op['in_side'], out)}"
            pool = ""
            if "pool" in op:
                pl = op["pool"]
                pool = f", {pl['k']}, {pl['stride']}, {pl['OH']}, {pl['OW']}"
            if self.int8:
                n_in = op["I"] if kind == "linear" else op["C"] * op["H"] * op["W"]
                amax = self.amax.get(id(op), 0.0)
                sx = amax / 127.0 if amax > 0 else 1.0
                q, sw = _quantize_weights(op["w"])
                wq = self.const(f"w_{tag}", q, "signed char")
                m = self.const(f"m_{tag}", (sw * sx).astype(np.float32))
                bb = self.const(f"bias_{tag}", op["b"])
                self.used.update(["quantize"] + (["linear_q"] if kind == "linear" else [] if pool else ["conv_q"]))
                qptr = "(signed char *)s" if op["in_side"] == 0 else f"(signed char *)s + {4 * self.S - n_in}"
                lines = [f"    k_quantize({qptr}, {src}, {n_in}, {_c_float(np.float32(1.0 / sx))});"]
                src = qptr
                if kind == "linear":
                    lines.append(f"    k_linear_q({dst}, {src}, {wq}, {m}, {bb}, "
                                 f"{op['I']}, {op['O']});")
                elif pool:
                    self.used.update(["conv_q_ch", "conv_q_pool", "relu", "maxpool"])
                    lines.append(f"    k_conv_q_relu_pool({dst}, {src}, {wq}, {m}, {bb}, "
                                 f"s + {op['plane_off']}, {op['C']}, {op['H']}, {op['W']}, {op['OC']}, "
                                 f"{op['OH']}, {op['OW']}, {op['k']}, {op['stride']}, {op['pad']}, "
                                 f"{op['groups']}{pool});")
                else:
                    self.used.add("conv_q_ch")
                    lines.append(f"    k_conv_q({dst}, {src}, {wq}, {m}, {bb}, "
                                 f"{op['C']}, {op['H']}, {op['W']}, {op['OC']}, {op['OH']}, {op['OW']}, "
                                 f"{op['k']}, {op['stride']}, {op['pad']}, {op['groups']});")
                return lines
            w = self.const(f"w_{tag}", op["w"])
            bb = self.const(f"bias_{tag}", op["b"])
            if kind == "linear":
                self.used.add("linear")
                return [f"    k_linear({dst}, {src}, {w}, {bb}, {op['I']}, {op['O']});"]
            self.used.add("conv_ch")
            if pool:
                self.used.update(["conv_pool", "relu", "maxpool"])
                return [f"    k_conv_relu_pool({dst}, {src}, {w}, {bb}, s + {op['plane_off']}, {op['C']}, "
                        f"{op['H']}, {op['W']}, {op['OC']}, {op['OH']}, {op['OW']}, {op['k']}, {op['stride']}, "
                        f"{op['pad']}, {op['groups']}{pool});"]
            self.used.add("conv")
            return [f"    k_conv({dst}, {src}, {w}, {bb}, {op['C']}, {op['H']}, {op['W']}, {op['OC']}, "
                    f"{op['OH']}, {op['OW']}, {op['k']}, {op['stride']}, {op['pad']}, {op['groups']});"]
        if kind == "affine":
            self.used.add("affine")
            names = [self.const(f"{nm}_{tag}", op[nm]) for nm in ("mean", "a", "b")]
            return [f"    k_affine({src}, {', '.join(names)}, {op['C']}, {op['HW']});"]
        if kind == "relu":
            self.used.add("relu")
            return [f"    k_relu({src}, {op['n']});"]
        if kind == "maxpool":
            self.used.add("maxpool")
            return [f"    k_maxpool({src}, {op['C']}, {op['H']}, {op['W']}, {op['OH']}, {op['OW']}, "
                    f"{op['k']}, {op['stride']});"]
        if kind == "lennorm":
            if op["norm"] == "none":
                return []
            self.used.update(["lennorm", "scale", "sumsq"])
            return [f"    k_lennorm({src}, {op['n']}, {_NORM[op['norm']]}, {_c_float(op['eps'])});"]
        if kind == "head":
            self.used.update(["scale", "sumsq"])
            norm = _NORM[p.cfg["norm"]]
            eps = _c_float(np.float32(p.cfg["norm_eps"]))
            lines = ["    if (logits) {",
                     f"        float sc = k_norm_scale({src}, {op['n']}, {norm}, {eps});"]
            if self.int8:
                self.used.add("head_q")
                q, sw = _quantize_weights(op["w"])
                wq = self.const(f"hw_{tag}", q, "signed char")
                m = self.const(f"hm_{tag}", sw.astype(np.float32))
                lines.append(f"        k_head_q(logits, {src}, {wq}, {m}, sc, {op['n']}, {p.K});")
            else:
                self.used.add("head")
                w = self.const(f"hw_{tag}", op["w"])
                lines.append(f"        k_head(logits, {src}, {w}, sc, {op['n']}, {p.K});")
            return lines + ["    }"]
        if kind == "score":
            if p.loss in GROUP_LOSSES:
                if op["C"] % p.K == 0:
                    self.used.update(["group", "sumsq"])
                    return [f"    k_group_goodness(score, {src}, {p.K}, {op['n'] // p.K});"]
                return [f"    for (k = 0; k < {p.K}; k++) score[k] = 0.0f;"]
            if p.loss == "xent":
                if op["n"] == p.K:
                    return [f"    for (k = 0; k < {p.K}; k++) score[k] = (s + "
                            f"{self.off(op['in_side'], op['in_alloc'])})[k];"]
                return [f"    for (k = 0; k < {p.K}; k++) score[k] = 0.0f;"]
            self.used.add("sumsq")
            good = p.cfg["goodness"]
            div = f" / {op['n']}.0f" if good.endswith("mean") else ""
            sign = "-" if good.startswith("neg-") else ""
            return [f"    score[0] = {sign}k_sumsq({src}, {op['n']}){div};"]
        raise AssertionError(kind)

    # ------------------------------------------------------------ whole file
    def source(self):
        p, nm = self.p, self.name
        self.plan_memory()
        blocks = []
        for b, seg in enumerate(p.segments):
            body = []
            for j, op in enumerate(seg):
                body += self.emit_op(op, b, j)
            uses_k = any("k < " in line for line in body)
            head = [f"/* block {b}: input at scratch offset "
                    f"{self.off(*self.block_in[b])}, output at {self.off(seg[-1]['out_side'], seg[-1]['out_alloc'])}"
                    f" ({seg[-1]['n']} floats) */",
                    f"static void block_{b}(float *s, float *score, float *logits) {{"]
            if uses_k:
                head.append("    int k;")
            if not any("logits" in line for line in body):
                head.append("    (void)logits;")
            if not any("score" in line for line in body):
                head.append("    (void)score;")
            blocks.append("\n".join(head + body + ["}"]))
        enc = self.encoder()
        api = self.api()
        self.used.add("softmax") if p.has_head or self.early_exit is not None else None
        kern = "".join(KERNELS[k] for k in KERNEL_ORDER if k in self.used)
        if "conv_q_ch" in self.used:
            max_ow = max(op["OW"] for op in p.weighted_ops() if op["op"] == "conv")
            kern = f"#define MAX_OW {max_ow}   /* the widest output row of an int8 conv */\n" + kern
        hdr = (f"/* {nm}.c: generated by fflib.export from an FFModel ({'int8' if self.int8 else 'float32'}, "
               f"{self.inference} inference).\n * C99, no heap, no BLAS; libm: sqrtf, expf.  See {nm}.h. */\n"
               f'#include <math.h>\n#include <stdint.h>\n#include "{nm}.h"\n')
        return "\n".join([hdr, "".join(self.consts), kern, enc, "\n\n".join(blocks), api])

    def encoder(self):
        p = self.p
        lines = ["/* s (Din) = x (D) with label y (-1: the neutral label) written in, as the core's encode_row */",
                 "static void encode(float *s, const float *x, int y) {", "    int i;"]
        if p.in_affine is None:
            body = [f"    for (i = 0; i < {p.D}; i++) s[i] = x[i];"]
        else:   # the model's input standardisation
            sc, sh = self.const("input_scale", p.in_affine[0]), self.const("input_shift", p.in_affine[1])
            body = [f"    for (i = 0; i < {p.D}; i++) s[i] = x[i] * {sc}[i] + {sh}[i];"]
        K, HW = p.K, p.HW
        v = _c_float(p.label_value)
        vk = _c_float(p.label_value / np.float32(K))
        uses_k = False
        if p.enc == "onehot" and HW == 1:
            uses_k = True
            body += [f"    for (k = 0; k < {K}; k++) s[k] = y < 0 ? {vk} : (k == y ? {v} : 0.0f);"]
        elif p.enc == "onehot":
            uses_k = True
            body += [f"    for (i = 0; i < {p.C0}; i++)", f"        for (k = 0; k < {K}; k++)",
                     f"            s[i * {HW} + k] = y < 0 ? {vk} : (k == y ? {v} : 0.0f);"]
        elif p.enc == "fourier":
            uses_k = True
            pat = self.const("label_pattern", p.pattern)
            body += [f"    for (c = 0; c < {p.C0}; c++) {{", f"        float *o = s + c * {HW};",
                     "        if (y >= 0) {",
                     f"            for (i = 0; i < {HW}; i++) o[i] += {v} * {pat}[y * {HW} + i];",
                     "        } else {", f"            for (k = 0; k < {K}; k++)",
                     f"                for (i = 0; i < {HW}; i++) o[i] += {vk} * {pat}[k * {HW} + i];",
                     "        }", "    }"]
            lines.append("    int c;")
        elif p.enc == "embedding":
            emb = self.const("label_embedding", p.embedding)
            neu = self.const("label_neutral", p.neutral_map)
            body += [f"    for (i = 0; i < {HW}; i++)",
                     f"        s[{p.D} + i] = y < 0 ? {neu}[i] : {emb}[y * {HW} + i];"]
        else:
            body.append("    (void)y;")
        if uses_k:
            lines.append("    int k;")
        return "\n".join(lines + body + ["}"])

    def api(self):
        p, nm = self.p, self.name
        K, NB = p.K, p.NB
        out = []
        calls = "\n".join(f"    {'if (b == %d) ' % b}block_{b}(s, score, logits);" for b in range(NB))
        out.append(f"""
static void run_block(int b, float *s, float *score, float *logits) {{
{calls}
}}
""")
        passes = 1 if p.label_free else K
        score_n = K if p.label_free else 1
        # goodness: (K, NB) per sample, as FFModel.goodness
        out.append(f"""
void {nm}_goodness(const float *x, float *scratch, float *out) {{
    float score[{score_n}];
    int b, k, pass;
    for (pass = 0; pass < {passes}; pass++) {{
        encode(scratch, x, {'-1' if p.label_free else 'pass'});
        for (b = 0; b < {NB}; b++) {{
            run_block(b, scratch, score, 0);
            {'for (k = 0; k < %d; k++) out[k * %d + b] = score[k];' % (K, NB) if p.label_free
             else 'out[pass * %d + b] = score[0];' % NB}
        }}
    }}
    {'(void)k;' if not p.label_free else ''}
}}
""")
        sel_sum = " + ".join(f"g[k * {NB} + {b}]" for b in p.sel)
        if self.inference == "multipass":
            out.append(f"""
static int multipass_scores(const float *g, float *sum) {{
    int k, best = 0;
    for (k = 0; k < {K}; k++) {{
        sum[k] = {sel_sum};
        if (sum[k] > sum[best]) best = k;
    }}
    return best;
}}
""")
        if p.has_head:
            bias = self.const("head_bias", p.head_bias)
            out.append(f"""
void {nm}_proba(const float *x, float *scratch, float *probs) {{
    float logits[{K}], score[{score_n}];
    int b, k;
    for (k = 0; k < {K}; k++) logits[k] = {bias}[k];
    encode(scratch, x, -1);
    for (b = 0; b < {p.head_stop}; b++) run_block(b, scratch, score, logits);
    k_softmax(probs, logits, {K});
}}
""")
        ee = self.early_exit
        if ee is None:
            if self.inference == "onepass":
                body = f"""    float p[{K}];
    int k, best = 0;
    {nm}_proba(x, scratch, p);
    for (k = 1; k < {K}; k++) if (p[k] > p[best]) best = k;
    if (scores) for (k = 0; k < {K}; k++) scores[k] = p[k];
    if (blocks_run) *blocks_run = {p.head_stop};
    return best;"""
            else:
                body = f"""    float g[{K * NB}], sum[{K}];
    int k, best;
    {nm}_goodness(x, scratch, g);
    best = multipass_scores(g, sum);
    if (scores) for (k = 0; k < {K}; k++) scores[k] = sum[k];
    if (blocks_run) *blocks_run = {NB};
    return best;"""
        else:
            body = self.early_exit_body()
        out.append(f"""
int {nm}_predict(const float *x, float *scratch, float *scores, int *blocks_run) {{
{body}
}}
""")
        return "".join(out)

    def early_exit_body(self):
        p = self.p
        K, NB, T = p.K, p.NB, _c_float(np.float32(self.early_exit))
        last_block = p.head_stop - 1 if p.label_free and self.inference == "onepass" else NB - 1
        check = f"""        if (b < {last_block}) {{
            best = k_softmax(prob, cum, {K});
            if (prob[best] > {T}) {{
                if (scores) for (k = 0; k < {K}; k++) scores[k] = prob[k];
                if (blocks_run) *blocks_run = b + 1;
                return best;
            }}
        }}"""
        if p.label_free:
            if self.inference == "onepass":
                final = f"""    for (k = 0; k < {K}; k++) {{ sum[k] = logits[k]; }}
    best = k_softmax(prob, sum, {K});
    if (scores) for (k = 0; k < {K}; k++) scores[k] = prob[k];
    if (blocks_run) *blocks_run = b;"""
                logits_init = f"    for (k = 0; k < {K}; k++) logits[k] = head_bias[k];\n"
                logits_arg, stop = "logits", p.head_stop
            else:
                final = f"""    best = multipass_scores(g, sum);
    if (scores) for (k = 0; k < {K}; k++) scores[k] = sum[k];
    if (blocks_run) *blocks_run = b;"""
                logits_init, logits_arg, stop = "", "0", NB
            # a one-pass model stops at the head's last block, a multi-pass one runs them all;
            # scores of blocks past the head are not needed
            return f"""    float score[{K}], cum[{K}], prob[{K}], g[{K * NB}], sum[{K}], logits[{K}];
    int b, k, best;
{logits_init}    for (k = 0; k < {K}; k++) cum[k] = 0.0f;
    encode(scratch, x, -1);
    for (b = 0; b < {max(stop, 1)}; b++) {{
        run_block(b, scratch, score, {logits_arg});
        for (k = 0; k < {K}; k++) {{ cum[k] += score[k]; g[k * {NB} + b] = score[k]; }}
{check}
    }}
    (void)g; (void)logits;
{final}
    return best;"""
        # FF/SymBa multi-pass, block-major over labels: slot k holds label k's block output
        din, slot = self.block_in, self.S
        mb = self.max_block_out
        lines = [f"    float score[1], cum[{K}], prob[{K}], g[{K * NB}], sum[{K}];",
                 "    float *s = scratch;", "    int b, k, i, n, off_in, off_out, best;",
                 f"    static const int in_off[{NB}] = {{{', '.join(str(self.off(*d)) for d in din)}}};",
                 f"    static const int out_off[{NB}] = {{{', '.join(str(self.off(sg[-1]['out_side'], sg[-1]['out_alloc'])) for sg in p.segments)}}};",
                 f"    static const int out_n[{NB}] = {{{', '.join(str(sg[-1]['n']) for sg in p.segments)}}};",
                 f"    for (k = 0; k < {K}; k++) cum[k] = 0.0f;",
                 f"    for (b = 0; b < {NB}; b++) {{",
                 "        off_in = in_off[b]; off_out = out_off[b]; n = out_n[b];",
                 f"        for (k = 0; k < {K}; k++) {{",
                 "            if (b == 0) encode(s, x, k);",
                 f"            else for (i = 0; i < out_n[b - 1]; i++) s[off_in + i] = s[{slot} + k * {mb} + i];",
                 "            run_block(b, s, score, 0);",
                 f"            for (i = 0; i < n; i++) s[{slot} + k * {mb} + i] = s[off_out + i];",
                 f"            g[k * {NB} + b] = score[0];",
                 "            cum[k] += score[0];",
                 "        }",
                 check,
                 "    }",
                 "    best = multipass_scores(g, sum);",
                 f"    if (scores) for (k = 0; k < {K}; k++) scores[k] = sum[k];",
                 f"    if (blocks_run) *blocks_run = {NB};",
                 "    return best;"]
        return "\n".join(lines)

    def header(self, info):
        p, nm, N = self.p, self.name, self.N
        guard = f"{N}_H"
        head = ""
        if p.has_head:
            head = f"""
/* One-pass class probabilities (K) of the softmax head on the neutral-label input, as
 * FFModel.predict_proba. */
void {nm}_proba(const float *x, float *scratch, float *probs);
"""
        ee = "none" if self.early_exit is None else f"T = {self.early_exit:g}"
        return f"""/* {nm}.h: an FF model exported by fflib.export ({'int8' if self.int8 else 'float32'}).
 *
 * Every function takes one sample x of {N}_INPUT_SIZE floats (C, H, W order, as given to
 * Python without the label) and a caller-provided scratch buffer of {N}_SCRATCH_FLOATS
 * floats (x must not lie inside it); nothing else is allocated and no state is kept between
 * calls.  RAM: {N}_SCRATCH_BYTES + the input + under 1 kB of stack.
 */
#ifndef {guard}
#define {guard}

#define {N}_INPUT_SIZE {p.D}
#define {N}_NUM_CLASSES {p.K}
#define {N}_NUM_BLOCKS {p.NB}
#define {N}_SCRATCH_FLOATS {self.scratch}
#define {N}_SCRATCH_BYTES ({self.scratch} * 4)
#define {N}_MACS_ONEPASS {info['macs_onepass'] or 0}
#define {N}_MACS_MULTIPASS {info['macs_multipass']}
#define {N}_HAS_HEAD {int(p.has_head)}
#define {N}_INT8 {int(self.int8)}

/* The chosen inference ({self.inference}; early exit: {ee}): returns the class; scores (or
 * NULL) receives {N}_NUM_CLASSES values (one-pass: probabilities; multi-pass: class scores
 * summed over blocks {p.sel}; after an early exit: the softmax it exited on) and blocks_run
 * (or NULL) the number of blocks run. */
int {nm}_predict(const float *x, float *scratch, float *scores, int *blocks_run);

/* Multi-pass class scores of every block, out[k * {N}_NUM_BLOCKS + b], as FFModel.goodness:
 * {'the channel-group goodness of one neutral-label pass' if p.label_free else
    'the goodness of block b with label k written into the input (one pass per label)'}. */
void {nm}_goodness(const float *x, float *scratch, float *out);
{head}
#endif
"""


_NORM = {"none": 0, "l2": 1, "rms": 2}


def _c_float(v):
    s = "%.9g" % np.float32(v)
    if "e" not in s and "." not in s:
        s += ".0"
    return s + "f"


# ------------------------------------------------------------------------------------ API

def export_c(model, out_dir, *, int8=False, calibration=None, inference="onepass", early_exit=None,
             multipass_blocks=None, name="ffmodel"):
    """Write ``<name>.c`` and ``<name>.h`` for ``model`` into ``out_dir`` (see the module doc).

    int8 : quantise weights (per output channel) and layer inputs (scales from
        ``calibration``, raw samples (N, ...) of the model's input size, required with int8).
    inference : "onepass" (softmax head; needs a head) or "multipass"; what ``<name>_predict``
        does (``<name>_goodness`` and ``<name>_proba`` are always there).
    early_exit : None, or T in (0, 1): stop at the first block whose summed class scores give a
        softmax probability above T (see the module doc).
    multipass_blocks : the blocks multi-pass sums (default: as :func:`fflib.evaluate`).
    Returns a dict: paths, scratch_floats, macs_onepass, macs_multipass, weight_bytes.
    The model is read in eval mode (batch norm from running statistics); it is not changed.
    """
    from .nn import FFModel
    if not isinstance(model, FFModel):
        raise TypeError(f"model must be an fflib.FFModel, got {type(model).__name__}")
    if inference not in ("onepass", "multipass"):
        raise ValueError(f"inference must be 'onepass' or 'multipass', got {inference!r}")
    if inference == "onepass" and not model.has_head:
        raise ValueError("inference='onepass' needs a model with a one-pass head (this one has "
                         "head_blocks=None); use inference='multipass'")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,40}", name):
        raise ValueError(f"name must be a C identifier, got {name!r}")
    if early_exit is not None:
        if isinstance(early_exit, bool) or not isinstance(early_exit, (int, float, np.floating)) \
                or not 0 < float(early_exit) < 1:
            raise ValueError(f"early_exit must be None or a number in (0, 1), got {early_exit!r}")
        early_exit = float(early_exit)
        if inference == "onepass" and model.config["loss"] not in LABEL_FREE:
            raise ValueError("early_exit with inference='onepass' needs per-class block scores from "
                             f"the neutral pass, i.e. a cwc/pvn/xent model (this one uses "
                             f"{model.config['loss']!r}); use inference='multipass'")
    plan = _Plan(model, multipass_blocks)
    amax = {}
    if int8:
        if calibration is None:
            raise ValueError("int8=True needs calibration samples (calibration=array of shape (N, ...))")
        from .nn import as_float32_batch
        cal = as_float32_batch(calibration, "calibration", plan.D)
        amax = _calibrate(plan, cal)
    elif calibration is not None:
        raise ValueError("calibration is only used with int8=True")
    os.makedirs(out_dir, exist_ok=True)
    gen = _Gen(plan, name, bool(int8), amax, inference, early_exit)
    src = gen.source()
    info = {"name": name, "c_path": os.path.join(out_dir, name + ".c"),
            "h_path": os.path.join(out_dir, name + ".h"), "int8": bool(int8), "inference": inference,
            "early_exit": early_exit, "scratch_floats": gen.scratch, "scratch_bytes": 4 * gen.scratch,
            "input_size": plan.D, "num_classes": plan.K, "num_blocks": plan.NB,
            "macs_onepass": plan.macs_onepass(), "macs_multipass": plan.macs_multipass(),
            "weight_bytes": gen.flash_weights, "multipass_blocks": plan.sel,
            "folded_batchnorms": sum(len(op.get("folded_bn", "").split("+")) if op.get("folded_bn") else 0
                                     for op in plan.weighted_ops()),
            "head_stop": plan.head_stop}
    info["macs"] = info["macs_onepass"] if inference == "onepass" else info["macs_multipass"]
    with open(info["c_path"], "w") as f:
        f.write(src)
    with open(info["h_path"], "w") as f:
        f.write(gen.header(info))
    return info


def reference_predict(model, x, info, batch_size=500):
    """What the exported float code's ``<name>_predict`` returns for samples x, computed by
    the Python model: (classes (N,), blocks_run (N,)).  With early exit, the rule of the
    module doc applied to :meth:`FFModel.goodness` (and the head's probabilities)."""
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    sel, T = info["multipass_blocks"], info["early_exit"]
    onepass = info["inference"] == "onepass"
    cls, used = [], []
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        if onepass:
            final = model.predict_proba(xb).argmax(axis=1)
            stop = info["head_stop"]
        else:
            g = model.goodness(xb)
            final = g[:, :, sel].sum(axis=2).argmax(axis=1)
            stop = g.shape[2]
        c, u = final.copy(), np.full(len(xb), stop)
        if T is not None:
            g = model.goodness(xb) if onepass else g
            cum = np.cumsum(g.astype(np.float64), axis=2)
            done = np.zeros(len(xb), bool)
            for b in range(stop - 1):
                z = cum[:, :, b] - cum[:, :, b].max(axis=1, keepdims=True)
                p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
                hit = ~done & (p.max(axis=1) > T)
                c[hit], u[hit] = cum[hit, :, b].argmax(axis=1), b + 1
                done |= hit
        cls.append(c)
        used.append(u)
    return np.concatenate(cls), np.concatenate(used)


# ------------------------------------------------------------------------------------ host build

HOST_CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
ARM_CFLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-Os"]

HARNESS = r"""/* fflib export test harness: reads raw float32 samples, writes what the model computes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "MODEL.h"

static float scratch[PFX_SCRATCH_FLOATS];

int main(int argc, char **argv) {
    static float x[PFX_INPUT_SIZE], out[PFX_NUM_CLASSES * PFX_NUM_BLOCKS];
    FILE *in, *res;
    int mode, n = 0;
    if (argc != 4) { fprintf(stderr, "usage: %s predict|goodness|proba IN OUT\n", argv[0]); return 2; }
    mode = strcmp(argv[1], "predict") == 0 ? 0 : strcmp(argv[1], "goodness") == 0 ? 1 : 2;
    in = fopen(argv[2], "rb");
    res = fopen(argv[3], "wb");
    if (!in || !res) { fprintf(stderr, "cannot open files\n"); return 2; }
    while (fread(x, sizeof(float), PFX_INPUT_SIZE, in) == PFX_INPUT_SIZE) {
        if (mode == 0) {
            int used = 0, cls = model_predict(x, scratch, out, &used);
            fwrite(&cls, sizeof(int), 1, res);
            fwrite(&used, sizeof(int), 1, res);
            fwrite(out, sizeof(float), PFX_NUM_CLASSES, res);
        } else if (mode == 1) {
            model_goodness(x, scratch, out);
            fwrite(out, sizeof(float), PFX_NUM_CLASSES * PFX_NUM_BLOCKS, res);
        } else {
#if PFX_HAS_HEAD
            model_proba(x, scratch, out);
            fwrite(out, sizeof(float), PFX_NUM_CLASSES, res);
#else
            fprintf(stderr, "no head\n");
            return 2;
#endif
        }
        n++;
    }
    fclose(in);
    fclose(res);
    fprintf(stderr, "%d samples\n", n);
    return 0;
}
"""


def build_host(info, work_dir=None, opt="-O3"):
    """Compile the exported file with a test harness on the host (gcc -std=c99 -Wall -Wextra
    -Werror -pedantic); returns the path of the executable.  Raises RuntimeError with the
    compiler's message on failure."""
    name = info["name"]
    d = os.path.dirname(os.path.abspath(info["c_path"]))
    work_dir = work_dir or d
    harness = HARNESS.replace("MODEL.h", name + ".h").replace("PFX_", name.upper() + "_") \
        .replace("model_", name + "_")
    hpath = os.path.join(work_dir, f"{name}_harness.c")
    with open(hpath, "w") as f:
        f.write(harness)
    exe = os.path.join(work_dir, f"{name}_harness")
    cmd = ["gcc", *HOST_CFLAGS, opt, "-I", d, "-o", exe, hpath, info["c_path"], "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"host compile failed: {' '.join(cmd)}\n{r.stderr}")
    return exe


def run_host(exe, info, x, mode="predict", jobs=None):
    """Run the harness on samples x (N, D): mode "predict" -> (classes (N,), blocks_run (N,),
    scores (N, K)); "goodness" -> (N, K, NB); "proba" -> (N, K).

    The samples are split into ``jobs`` contiguous chunks run by as many harness processes at
    once (the exported code is single-threaded by design); the default is fflib's thread count
    (:func:`fflib.get_num_threads`), at most one process per 64 samples.  Each sample's answer
    is the same whatever the split."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
    K, NB = info["num_classes"], info["num_blocks"]
    if mode not in ("predict", "goodness", "proba"):
        raise ValueError(f"mode must be 'predict', 'goodness' or 'proba', got {mode!r}")
    if jobs is None:
        from . import get_num_threads
        jobs = get_num_threads()
    if isinstance(jobs, bool) or int(jobs) != jobs or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    jobs = max(1, min(int(jobs), -(-len(x) // 64)))
    bounds = np.linspace(0, len(x), jobs + 1).astype(np.int64)
    with tempfile.TemporaryDirectory() as t:
        procs = []
        try:
            for j in range(jobs):
                fin, fout = os.path.join(t, f"in{j}.bin"), os.path.join(t, f"out{j}.bin")
                x[bounds[j]:bounds[j + 1]].tofile(fin)
                procs.append((subprocess.Popen([exe, mode, fin, fout], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.PIPE, text=True), fout))
            errs = [(p.communicate()[1], p.returncode) for p, _ in procs]
        finally:
            for p, _ in procs:   # an interrupted wait leaves no harness running
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for err, rc in errs:
            if rc != 0:
                raise RuntimeError(f"harness failed: {err}")
        raw = np.concatenate([np.fromfile(fout, dtype=np.float32) for _, fout in procs])
    if mode == "predict":
        rec = raw.reshape(len(x), 2 + K)
        ints = rec[:, :2].copy().view(np.int32)
        return ints[:, 0].astype(np.int64), ints[:, 1].astype(np.int64), rec[:, 2:]
    if mode == "goodness":
        return raw.reshape(len(x), K, NB)
    return raw.reshape(len(x), K)


def arm_size(info):
    """Compile for Cortex-M4 (arm-none-eabi-gcc, hard float) and return
    {"text", "data", "bss", "flash"} bytes from arm-none-eabi-size; None if the toolchain
    is missing."""
    import shutil
    if not shutil.which("arm-none-eabi-gcc") or not shutil.which("arm-none-eabi-size"):
        return None
    obj = info["c_path"][:-2] + ".cm4.o"
    cmd = ["arm-none-eabi-gcc", *HOST_CFLAGS, *ARM_CFLAGS, "-c", info["c_path"], "-o", obj]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ARM compile failed: {' '.join(cmd)}\n{r.stderr}")
    out = subprocess.run(["arm-none-eabi-size", obj], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss, "flash": text + data, "command": " ".join(cmd)}


# ------------------------------------------------------------------------------------ CLI

def add_export_parser(subparsers):
    """Add ``export`` to the ``python -m fflib`` subcommands."""
    e = subparsers.add_parser("export", help="export a saved model (.npz) to one C99 file and header")
    e.add_argument("model", help="a model saved by FFModel.save / train --save (.npz)")
    e.add_argument("--out", required=True, help="output directory for NAME.c and NAME.h")
    e.add_argument("--name", default="ffmodel", help="C prefix and file name (default ffmodel)")
    e.add_argument("--int8", action="store_true", help="int8 post-training quantisation")
    e.add_argument("--calibration", type=int, default=None,
                   help="number of training samples calibrating the int8 activation scales (default 500)")
    e.add_argument("--inference", choices=["onepass", "multipass"], default=None,
                   help="what NAME_predict does (default: onepass when the model has a head)")
    e.add_argument("--early-exit", type=float, default=None,
                   help="stop at the first block whose softmax confidence exceeds T (0 < T < 1)")
    e.add_argument("--verify", action="store_true",
                   help="compile on the host, run the test split, print agreement and accuracy; "
                        "exit 1 on a mismatch")
    e.add_argument("--data", default=None, choices=["sample", "mnist", "fashion-mnist", "cifar10"],
                   help="dataset for calibration and --verify (default: sample for models of 784 "
                        "inputs, cifar10 for 3072)")
    e.add_argument("--data-dir", default=None, help="dataset directory (default: $FFLIB_DATA)")
    e.add_argument("--verify-samples", type=int, default=None, metavar="N",
                   help="with --verify: the first N test samples (default: the whole test split)")
    e.add_argument("--threads", type=int, default=None,
                   help="with --verify: harness processes run at once (default: fflib's thread count)")
    e.add_argument("--arm", action="store_true", help="also build for Cortex-M4 and print flash")
    return e


def _fail(msg):
    msg = " ".join(str(msg).split())   # one line
    sys.stderr.write(f"python -m fflib export: error: {msg}\n")
    return 2


def _load_split(name, data_dir, train):
    from . import datasets
    if name == "sample":
        return datasets.load_sample(train)
    return datasets.load(name, root=data_dir, train=train)


def run_export(a):
    """Run ``python -m fflib export``; returns the exit status."""
    from .nn import FFModel
    try:
        model = FFModel.load(a.model)
    except (ValueError, OSError) as e:
        return _fail(str(e))
    model.eval()
    inference = a.inference or ("onepass" if model.has_head else "multipass")
    D = int(np.prod(model.input_shape))
    data = a.data or {784: "sample", 3072: "cifar10"}.get(D)
    if a.calibration is not None and not a.int8:
        return _fail("--calibration needs --int8")
    if a.calibration is not None and a.calibration <= 0:
        return _fail(f"--calibration must be a positive number of samples, got {a.calibration}")
    for flag, v in (("--verify-samples", a.verify_samples), ("--threads", a.threads)):
        if v is not None and not a.verify:
            return _fail(f"{flag} needs --verify")
        if v is not None and v <= 0:
            return _fail(f"{flag} must be a positive number, got {v}")
    if a.threads is not None and a.threads > 64:
        return _fail(f"--threads must be at most 64, got {a.threads}")
    need_data = a.int8 or a.verify
    if need_data and data is None:
        return _fail(f"the model takes {D} values per sample; name its dataset with --data")
    try:
        if need_data:
            x, y = _load_split(data, a.data_dir, True)
            xt, yt = _load_split(data, a.data_dir, False)
            if int(np.prod(x.shape[1:])) != int(np.prod(model.input_shape)):
                return _fail(f"--data {data} has samples of shape {x.shape[1:]}, the model wants "
                             f"{model.input_shape}")
    except Exception as e:   # missing files, bad directory
        return _fail(f"cannot load --data {data}: " + " ".join(str(e).split()))
    cal = None
    if a.int8:
        n = a.calibration or 500
        cal = x[np.random.default_rng(0).choice(len(x), min(n, len(x)), replace=False)]
    try:
        info = export_c(model, a.out, int8=a.int8, calibration=cal, inference=inference,
                        early_exit=a.early_exit, name=a.name)
    except (ValueError, TypeError) as e:
        return _fail(str(e))
    print(f"fflib export: wrote {info['c_path']} and {info['h_path']} ({'int8' if a.int8 else 'float32'}, "
          f"{inference}; scratch {info['scratch_bytes']} bytes, weights {info['weight_bytes']} bytes, "
          f"{info['macs']} MACs per inference)")
    status = 0
    if a.arm:
        sz = arm_size(info)
        if sz is None:
            print("ARM: arm-none-eabi-gcc not found (apt-get install gcc-arm-none-eabi); skipped")
        else:
            print(f"ARM Cortex-M4: flash {sz['flash']} bytes (text {sz['text']} + data {sz['data']}), "
                  f"RAM scratch {info['scratch_bytes']} bytes")
    if a.verify:
        if a.verify_samples is not None:
            xt, yt = xt[:a.verify_samples], yt[:a.verify_samples]
        try:
            exe = build_host(info)
            cls, used, _ = run_host(exe, info, xt.reshape(len(xt), -1), "predict", jobs=a.threads)
        except RuntimeError as e:
            return _fail(str(e))
        ref, _ = reference_predict(model, xt.reshape(len(xt), -1), info)
        agree = float((cls == ref).mean())
        acc_c, acc_py = float((cls == yt).mean()), float((ref == yt).mean())
        print(f"verify on {data} test ({len(yt)} samples): agreement with Python {100 * agree:.2f}%, "
              f"accuracy C {100 * acc_c:.2f}% / Python float {100 * acc_py:.2f}%"
              + (f", mean blocks run {used.mean():.2f}" if a.early_exit is not None else ""))
        if a.int8:
            # int8 changes answers by design: the check is accuracy within 0.3 points of float
            if acc_py - acc_c > 0.003:
                print("verify: FAILED (accuracy more than 0.3 points below float Python)")
                status = 1
        elif agree < 1.0:
            print(f"verify: FAILED ({int((cls != ref).sum())} predictions differ from Python)")
            status = 1
        if status == 0:
            print("verify: OK")
    return status
