"""Float64 NumPy reference ("twin") of every kernel in csrc/fflib.h, used as the test oracle.

Each C kernel has a functional counterpart here: inputs in, outputs returned.  Backward
functions RETURN their gradients (the C kernels add into buffers; the caller of these
functions adds if it needs to).  Every input is converted to float64 first, so the results
are the exact-ish values the float32 C core should approach.

Shapes use the size letters of fflib.h: B rows, I/O features, D row width, K classes,
J channel groups of S channels, N images, C channels, H W spatial, OC output channels.

This module deliberately imports nothing from the rest of fflib, so it can be loaded by
file path without the compiled extension.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "linear_forward", "linear_backward",
    "relu_forward", "relu_backward",
    "lennorm_forward", "lennorm_backward",
    "goodness_forward", "goodness_backward",
    "group_goodness_forward", "group_goodness_backward",
    "softplus", "sigmoid",
    "ff_loss", "symba_loss", "df_loss", "softmax_xent", "cwc_loss", "df_cwc_loss", "pvn_loss", "ae_loss",
    "adam_step", "adamw_step", "sgd_step",
    "conv2d_output_size", "conv2d_forward", "conv2d_backward",
    "batchnorm2d_forward_train", "batchnorm2d_forward_eval", "batchnorm2d_backward",
    "maxpool2d_forward", "maxpool2d_backward",
    "scff_pairs", "hybrid_blur", "hybrid_masks", "hybrid_images",
    "overlay_labels",
]

_NORM_KINDS = ("none", "l2", "rms")
_GOODNESS_KINDS = ("sum", "mean", "neg-sum", "neg-mean")


def _f64(x):
    """A float64 ndarray view/copy of x (never aliases a caller's float64 array we write to)."""
    return np.asarray(x, dtype=np.float64)


def _labels(labels, K, allow_neutral=False):
    """labels as int64, checked to lie in [0, K) (or -1 too when allow_neutral)."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    lo = -1 if allow_neutral else 0
    if y.size and (y.min() < lo or y.max() >= K):
        raise ValueError(f"labels must lie in [{lo}, {K})")
    return y


# ---------------------------------------------------------------------------- linear

def linear_forward(inp, weight, bias=None):
    """out (B,O) = inp (B,I) @ weight(O,I)^T + bias (O); bias may be None."""
    out = _f64(inp) @ _f64(weight).T
    if bias is not None:
        out = out + _f64(bias)
    return out


def linear_backward(dout, inp, weight):
    """Gradients of linear_forward: returns dinp (B,I), dweight (O,I), dbias (O)."""
    dout, inp, weight = _f64(dout), _f64(inp), _f64(weight)
    return dout @ weight, dout.T @ inp, dout.sum(axis=0)


# ---------------------------------------------------------------------------- relu

def relu_forward(inp):
    """out = max(inp, 0), any shape."""
    return np.maximum(_f64(inp), 0.0)


def relu_backward(dout, out):
    """dinp = dout * (out > 0); uses the forward's output, as the C kernel does."""
    return _f64(dout) * (_f64(out) > 0)


# ---------------------------------------------------------------------------- length normalisation

def _norm_kind(kind):
    if kind not in _NORM_KINDS:
        raise ValueError(f"norm kind must be one of {_NORM_KINDS}, got {kind!r}")
    return kind


def lennorm_forward(inp, kind="l2", eps=1e-4):
    """Per-row normalisation of inp (B,D): returns out = inp * scale[:, None] and scale (B).

    l2: scale = 1 / (sqrt(sum x^2) + eps);  rms: scale = 1 / sqrt(mean x^2 + eps);  none: 1.
    """
    kind = _norm_kind(kind)
    x = _f64(inp)
    if x.ndim != 2:
        raise ValueError("lennorm expects a 2-D array (B, D)")
    if kind == "none":
        scale = np.ones(x.shape[0])
    elif kind == "l2":
        scale = 1.0 / (np.sqrt(np.sum(x * x, axis=1)) + eps)
    else:
        scale = 1.0 / np.sqrt(np.mean(x * x, axis=1) + eps)
    return x * scale[:, None], scale


def lennorm_backward(dout, inp, kind="l2", eps=1e-4):
    """dinp (B,D) of lennorm_forward for upstream dout (B,D).

    out_i = s x_i, so dinp_j = s dout_j + x_j (ds/dx_j / x_j) <dout, x>, where
      l2:  ds/dx_j = -s^2 x_j / n   (n = |x|; eps sits outside the sqrt)
      rms: ds/dx_j = -s^3 x_j / D.
    """
    kind = _norm_kind(kind)
    dout, x = _f64(dout), _f64(inp)
    _, s = lennorm_forward(x, kind, eps)
    if kind == "none":
        return dout.copy()
    dot = np.sum(dout * x, axis=1)           # <dout, x> per row
    if kind == "l2":
        n = np.sqrt(np.sum(x * x, axis=1))
        # An all-zero row has x_j = 0, so the second term vanishes there; avoid 0/0.
        inv_n = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
        coef = -s * s * inv_n * dot
    else:
        coef = -s ** 3 * dot / x.shape[1]
    return s[:, None] * dout + coef[:, None] * x


# ---------------------------------------------------------------------------- goodness

def _goodness_kind(kind):
    if kind not in _GOODNESS_KINDS:
        raise ValueError(f"goodness kind must be one of {_GOODNESS_KINDS}, got {kind!r}")
    return kind


def _goodness_scale(kind, D):
    """goodness = scale * sum of squares: 1 or 1/D (the mean), negated for "neg-sum" / "neg-mean"
    (Hinton 2022's minus the sum of squares: positive data is trained to low activity)."""
    kind = _goodness_kind(kind)
    return (-1.0 if kind.startswith("neg-") else 1.0) / (D if kind.endswith("mean") else 1.0)


def goodness_forward(act, kind="sum"):
    """g (B) = sum over D of act^2 (or the mean; negated for the neg- kinds), act (B,D)."""
    a = _f64(act)
    return np.sum(a * a, axis=1) * _goodness_scale(kind, a.shape[1])


def goodness_backward(dg, act, kind="sum"):
    """dact (B,D) = dg[b] * 2 act (divided by D for the mean; negated for the neg- kinds)."""
    a = _f64(act)
    return 2.0 * _f64(dg)[:, None] * a * _goodness_scale(kind, a.shape[1])


def _group_view(act, J):
    """act (B, J*S, ...) seen as (B, J, S, HW)."""
    a = _f64(act)
    B, C = a.shape[0], a.shape[1]
    if J <= 0 or C % J:
        raise ValueError(f"channels {C} not divisible into {J} groups")
    return a.reshape(B, J, C // J, -1)


def group_goodness_forward(act, J):
    """G (B,J) = mean of act^2 over each group's S consecutive channels and all positions.

    act (B, C, H, W) (or (B, C, HW)) with C = J*S; group j is channels j*S .. j*S+S-1.
    """
    a = _group_view(act, J)
    return np.mean(a * a, axis=(2, 3))


def group_goodness_backward(dG, act, J):
    """dact (same shape as act) = dG[b, j] * 2 act / (S*HW)."""
    a = _group_view(act, J)
    S, HW = a.shape[2], a.shape[3]
    d = 2.0 * _f64(dG)[:, :, None, None] * a / (S * HW)
    return d.reshape(np.shape(act))


# ---------------------------------------------------------------------------- scalar functions

def softplus(z):
    """log(1 + exp(z)), stable for every finite z (scalar or array)."""
    z = _f64(z)
    # max(z,0) + log1p(exp(-|z|)): the exp argument is never positive, so nothing overflows,
    # and log1p keeps full precision when exp(-|z|) is tiny.
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def sigmoid(z):
    """1 / (1 + exp(-z)), stable for every finite z (scalar or array)."""
    z = _f64(z)
    e = np.exp(-np.abs(z))                  # in (0, 1]: no overflow
    # For z >= 0 use 1/(1+e^-z); for z < 0 the algebraically equal e^z/(1+e^z).
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# ---------------------------------------------------------------------------- losses

def ff_loss(gpos, gneg, theta=2.0):
    """FF loss (eq. 1): L = mean_b [softplus(theta - gpos) + softplus(gneg - theta)].

    gpos, gneg (B).  Returns (L, dL/dgpos (B), dL/dgneg (B)).
    """
    gpos, gneg = np.atleast_1d(_f64(gpos)), np.atleast_1d(_f64(gneg))
    B = gpos.shape[0]
    L = np.mean(softplus(theta - gpos) + softplus(gneg - theta))
    return float(L), -sigmoid(theta - gpos) / B, sigmoid(gneg - theta) / B


def symba_loss(gpos, gneg, alpha=4.0):
    """SymBa loss: L = mean_b softplus(-alpha (gpos - gneg)).  Returns (L, dgpos, dgneg)."""
    gpos, gneg = np.atleast_1d(_f64(gpos)), np.atleast_1d(_f64(gneg))
    B = gpos.shape[0]
    z = -alpha * (gpos - gneg)
    dz = sigmoid(z) / B                      # dL/dz per row
    return float(np.mean(softplus(z))), -alpha * dz, alpha * dz


def df_loss(gpos, gneg, margin=1.0):
    """Distance-Forward goodness-based N-pair margin loss (Wu et al. 2024, arXiv:2408.14925).

    FF read as centroid-based metric learning: with the label in the input, a layer's response
    to (x, k) is the sample's features plus class k's contribution, a centroid, and goodness
    measures how close the sample lies to that centroid.  Sohn's N-pair loss, with goodness as
    the similarity and an additive margin m, asks the true class's goodness to beat every wrong
    class's by m:

        L = (1/B) sum_b log(1 + sum_j exp(gneg[j, b] - gpos[b] + m)),

    gpos (B) the goodness of each sample with its true label, gneg (N, B) with its N wrong labels
    (all K - 1 in fflib's training step).  Returns (L, dL/dgpos (B), dL/dgneg (N, B)).

    Equation numbers: the paper's full text could not be read when this was written (offline;
    only its abstract); a secondary summary puts the DF loss at the paper's Eqs. (6)-(7), which
    is unverified.  The form above is Sohn's multi-class N-pair loss (NIPS 2016) with goodness as
    the similarity and an additive margin, as the abstract describes.
    """
    gpos, gneg = np.atleast_1d(_f64(gpos)), _f64(gneg)
    if gneg.ndim == 1:
        gneg = gneg[None, :]
    if gpos.ndim != 1 or gneg.ndim != 2 or gneg.shape[1] != gpos.shape[0] or gpos.size == 0 or gneg.size == 0:
        raise ValueError(f"gpos must be (B,) and gneg (N, B), non-empty; got {gpos.shape} and {gneg.shape}")
    B = gpos.shape[0]
    z = gneg - gpos[None, :] + margin                  # (N, B)
    M = np.maximum(z.max(axis=0), 0.0)                 # log(1 + sum e^z) without overflow
    e0, ez = np.exp(-M), np.exp(z - M)
    tot = e0 + ez.sum(axis=0)
    L = np.mean(M + np.log(tot))
    p = ez / tot / B                                   # dL/dgneg
    return float(L), -p.sum(axis=0), p


def ae_loss(y, x, weight, bias=None):
    """The UFF autoencoder cell's loss (Hwang et al. 2024; fflib's ``loss="ae"``): a block's
    output y (B, O) reconstructs the block's input x (B, I) through the block's linear decoder,
    ``rec = y weight^T + bias`` (weight (I, O), bias (I) or None), and
    ``L = sum((rec - x)^2) / (B I)`` (the mean squared error over every value).
    Returns (L, dL/dy (B, O), dL/dweight (I, O), dL/dbias (I))."""
    y, x = np.atleast_2d(_f64(y)), np.atleast_2d(_f64(x))
    weight = _f64(weight)
    if weight.ndim != 2 or y.ndim != 2 or x.ndim != 2 or y.shape[0] != x.shape[0] or \
            weight.shape != (x.shape[1], y.shape[1]) or y.size == 0 or x.size == 0:
        raise ValueError(f"y must be (B, O), x (B, I) and weight (I, O), non-empty; got {y.shape}, {x.shape} "
                         f"and {weight.shape}")
    if bias is not None and _f64(bias).shape != (x.shape[1],):
        raise ValueError(f"bias must be (I,) = ({x.shape[1]},), got {np.shape(bias)}")
    rec = linear_forward(y, weight, bias)
    e = rec - x
    L = float(np.mean(e * e))
    drec = 2.0 * e / e.size
    dy, dw, db = linear_backward(drec, y, weight)
    return L, dy, dw, db


def softmax_xent(logits, labels):
    """Mean softmax cross-entropy of logits (B,K) against int labels (B).

    Returns (L, probs (B,K), dlogits (B,K) = (probs - onehot) / B).
    """
    z = _f64(logits)
    B, K = z.shape
    y = _labels(labels, K)
    # log-softmax with the row max subtracted, so exp never overflows.
    zs = z - z.max(axis=1, keepdims=True)
    logp = zs - np.log(np.sum(np.exp(zs), axis=1, keepdims=True))
    probs = np.exp(logp)
    rows = np.arange(B)
    L = -np.mean(logp[rows, y])
    d = probs.copy()
    d[rows, y] -= 1.0
    return float(L), probs, d / B


def cwc_loss(G, labels):
    """CwComp loss (eq. 3): softmax cross-entropy over the J group goodness values G (B,J).

    Returns (L, dG (B,J)); identical to softmax_xent on G.
    """
    L, _, dG = softmax_xent(G, labels)
    return L, dG


def df_cwc_loss(G, labels, margin=1.0):
    """DF's N-pair margin loss on channel-group goodness (fflib's ``loss="df-cwc"``).

    The Distance-Forward loss (:func:`df_loss`, Wu et al. 2024) with CwComp's group goodness
    (Papachristodoulou et al. 2024, eq. 2) as the class similarities: G (B, J) holds, for each
    sample, the goodness of the channel group of each class, so one forward pass per sample gives
    the true class's score G[b, y_b] and the J - 1 wrong ones, and

        L = (1/B) sum_b log(1 + sum_{j != y_b} exp(G[b, j] - G[b, y_b] + m)).

    With m = 0 this is CwComp's eq. 3 (:func:`cwc_loss`).  Returns (L, dG (B, J))."""
    G = _f64(G)
    if G.ndim != 2 or G.shape[1] < 2:
        raise ValueError(f"G must be (B, J) with J >= 2 groups, got shape {G.shape}")
    B, J = G.shape
    y = _labels(labels, J)
    rows = np.arange(B)
    wrong = np.ones((B, J), dtype=bool)
    wrong[rows, y] = False
    gneg = G[wrong].reshape(B, J - 1).T                 # (J - 1, B): the wrong groups in class order
    L, dgpos, dgneg = df_loss(G[rows, y], gneg, margin)
    dG = np.zeros((B, J))
    dG[rows, y] = dgpos
    dG[wrong] = dgneg.T.reshape(-1)
    return L, dG


def pvn_loss(G, labels, theta=2.0):
    """Positive-vs-negative ("pvn") FF loss on group goodness G (B,J), J >= 2.

    gpos[b] = G[b, y_b] (the true class's group), gneg[b] = mean of G[b, j] over j != y_b,
    L = mean_b [softplus(theta - gpos) + softplus(gneg - theta)].  Returns (L, dG (B,J)).
    """
    G = _f64(G)
    B, J = G.shape
    if J < 2:
        raise ValueError("pvn_loss needs at least two groups")
    y = _labels(labels, J)
    rows = np.arange(B)
    onehot = np.zeros((B, J))
    onehot[rows, y] = 1.0
    gpos = G[rows, y]
    gneg = np.sum(G * (1.0 - onehot), axis=1) / (J - 1)
    L, dgpos, dgneg = ff_loss(gpos, gneg, theta)
    # gneg spreads its gradient evenly over the J-1 wrong groups.
    dG = onehot * dgpos[:, None] + (1.0 - onehot) * (dgneg / (J - 1))[:, None]
    return L, dG


# ---------------------------------------------------------------------------- optimisers

def adam_step(p, m, v, g, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, t=1):
    """One torch.optim.Adam step (L2 weight decay, bias-corrected); t >= 1 is the step number
    after this step.  Returns new (p, m, v), same shape as p."""
    if t < 1:
        raise ValueError("t is the step number after this step, t >= 1")
    p, m, v, g = _f64(p), _f64(m), _f64(v), _f64(g)
    g = g + wd * p                                   # L2 decay enters the gradient (not AdamW)
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * g * g
    bc1 = 1.0 - b1 ** t
    bc2 = 1.0 - b2 ** t
    # PyTorch's ordering: eps is added after dividing sqrt(v) by sqrt(bc2).
    denom = np.sqrt(v) / np.sqrt(bc2) + eps
    p = p - (lr / bc1) * m / denom
    return p, m, v


def adamw_step(p, m, v, g, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, wd=1e-2, t=1):
    """One torch.optim.AdamW step: the weight decays first (p * (1 - lr wd), decoupled from the
    gradient, Loshchilov & Hutter), then the Adam step of :func:`adam_step` on the plain
    gradient.  Returns new (p, m, v)."""
    if t < 1:
        raise ValueError("t is the step number after this step, t >= 1")
    p = _f64(p) * (1.0 - lr * wd)
    return adam_step(p, m, v, g, lr, b1, b2, eps, 0.0, t)


def sgd_step(p, buf, g, lr=1e-2, momentum=0.0, dampening=0.0, wd=0.0, nesterov=False, t=1):
    """One torch.optim.SGD step; buf is the momentum buffer (ignored and returned unchanged when
    momentum == 0; may then be None).  t >= 1 is the step number after this step.
    Returns new (p, buf)."""
    if t < 1:
        raise ValueError("t is the step number after this step, t >= 1")
    p, g = _f64(p), _f64(g)
    d = g + wd * p
    if momentum != 0.0:
        # PyTorch starts the buffer at the first gradient, without dampening.
        buf = d.copy() if t == 1 else momentum * _f64(buf) + (1.0 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    elif buf is not None:
        buf = _f64(buf).copy()
    return p - lr * d, buf


# ---------------------------------------------------------------------------- conv2d (NCHW)

def conv2d_output_size(H, W, KH, KW, stride=1, pad=0):
    """(OH, OW) = ((H + 2 pad - KH) // stride + 1, likewise W)."""
    return (H + 2 * pad - KH) // stride + 1, (W + 2 * pad - KW) // stride + 1


def _conv_shapes(inp, weight, stride, pad, groups):
    N, C, H, W = inp.shape
    OC, Cg, KH, KW = weight.shape
    if groups < 1 or C % groups or OC % groups or C // groups != Cg:
        raise ValueError("conv2d: channels do not fit the groups / weight shape")
    OH, OW = conv2d_output_size(H, W, KH, KW, stride, pad)
    if OH < 1 or OW < 1 or stride < 1 or pad < 0:
        raise ValueError("conv2d: bad stride/pad/kernel for this input")
    return N, C, H, W, OC, Cg, KH, KW, OH, OW


def _window(kh, kw, OH, OW, stride):
    """Slices of the padded input that kernel offset (kh, kw) touches for all outputs."""
    return (slice(kh, kh + stride * (OH - 1) + 1, stride),
            slice(kw, kw + stride * (OW - 1) + 1, stride))


def conv2d_forward(inp, weight, bias=None, stride=1, pad=0, groups=1):
    """out (N,OC,OH,OW) = cross-correlation of inp (N,C,H,W) with weight (OC, C/groups, KH, KW)
    (zero padding pad, stride stride, channel groups) + bias (OC) or None."""
    x, w = _f64(inp), _f64(weight)
    N, C, H, W, OC, Cg, KH, KW, OH, OW = _conv_shapes(x, w, stride, pad, groups)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((N, OC, OH, OW))
    OCg = OC // groups
    for gi in range(groups):
        ci = slice(gi * Cg, (gi + 1) * Cg)      # this group's input channels
        oi = slice(gi * OCg, (gi + 1) * OCg)    # and output channels
        for kh in range(KH):
            for kw in range(KW):
                hs, ws = _window(kh, kw, OH, OW, stride)
                # every output (n, o, oh, ow) gets sum_c w[o,c,kh,kw] * xp[n,c,oh*s+kh,ow*s+kw]
                out[:, oi] += np.einsum("nchw,oc->nohw", xp[:, ci, hs, ws], w[oi, :, kh, kw])
    if bias is not None:
        out += _f64(bias)[None, :, None, None]
    return out


def conv2d_backward(dout, inp, weight, stride=1, pad=0, groups=1):
    """Gradients of conv2d_forward for dout (N,OC,OH,OW): returns dinp (N,C,H,W),
    dweight (OC, C/groups, KH, KW), dbias (OC)."""
    dy, x, w = _f64(dout), _f64(inp), _f64(weight)
    N, C, H, W, OC, Cg, KH, KW, OH, OW = _conv_shapes(x, w, stride, pad, groups)
    if dy.shape != (N, OC, OH, OW):
        raise ValueError("conv2d_backward: dout has the wrong shape")
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    OCg = OC // groups
    for gi in range(groups):
        ci = slice(gi * Cg, (gi + 1) * Cg)
        oi = slice(gi * OCg, (gi + 1) * OCg)
        for kh in range(KH):
            for kw in range(KW):
                hs, ws = _window(kh, kw, OH, OW, stride)
                dw[oi, :, kh, kw] += np.einsum("nohw,nchw->oc", dy[:, oi], xp[:, ci, hs, ws])
                # windows overlap when stride < kernel, hence += into the padded gradient
                dxp[:, ci, hs, ws] += np.einsum("nohw,oc->nchw", dy[:, oi], w[oi, :, kh, kw])
    dx = dxp[:, :, pad:pad + H, pad:pad + W]    # the padding's gradient is dropped
    return dx.copy(), dw, dy.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------------------- batchnorm2d

def _bn_axes(x):
    """Reduction axes of a (N, C, ...) array: everything but the channel axis."""
    if x.ndim < 2:
        raise ValueError("batchnorm expects (N, C, ...) input")
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(a, ndim):
    """A (C) vector shaped to broadcast against (N, C, ...)."""
    return _f64(a).reshape((1, -1) + (1,) * (ndim - 2))


def batchnorm2d_forward_train(inp, gamma=None, beta=None, eps=1e-5, running_mean=None,
                              running_var=None, momentum=0.1):
    """Training-mode BatchNorm2d of inp (N,C,H,W) (or (N,C,HW)) with batch statistics.

    Returns (out, mean (C), rstd (C) = 1/sqrt(biased var + eps), new_running_mean,
    new_running_var); the running update is (1-momentum) running + momentum batch with the
    UNBIASED variance, as PyTorch.  gamma/beta None: no affine; running_* None: not updated.
    """
    x = _f64(inp)
    ax = _bn_axes(x)
    n = x.size // x.shape[1]                 # values per channel
    mean = x.mean(axis=ax)
    var = x.var(axis=ax)                     # biased: used for normalising
    rstd = 1.0 / np.sqrt(var + eps)
    out = (x - _per_channel(mean, x.ndim)) * _per_channel(rstd, x.ndim)
    if gamma is not None:
        out = out * _per_channel(gamma, x.ndim)
    if beta is not None:
        out = out + _per_channel(beta, x.ndim)
    new_rm = new_rv = None
    if running_mean is not None:
        new_rm = (1.0 - momentum) * _f64(running_mean) + momentum * mean
    if running_var is not None:
        if n < 2:
            # PyTorch refuses training-mode batch norm with one value per channel.
            raise ValueError("batchnorm needs more than one value per channel in training")
        new_rv = (1.0 - momentum) * _f64(running_var) + momentum * var * n / (n - 1)
    return out, mean, rstd, new_rm, new_rv


def batchnorm2d_forward_eval(inp, running_mean, running_var, gamma=None, beta=None, eps=1e-5):
    """Eval-mode BatchNorm2d: out = (inp - running_mean) / sqrt(running_var + eps) * gamma + beta."""
    x = _f64(inp)
    out = (x - _per_channel(running_mean, x.ndim)) / np.sqrt(_per_channel(running_var, x.ndim) + eps)
    if gamma is not None:
        out = out * _per_channel(gamma, x.ndim)
    if beta is not None:
        out = out + _per_channel(beta, x.ndim)
    return out


def batchnorm2d_backward(dout, inp, mean, rstd, gamma=None):
    """Training-mode backward from the saved mean/rstd (C): returns dinp (like inp),
    dgamma (C), dbeta (C); dgamma and dbeta are None without affine (gamma None)."""
    dy, x = _f64(dout), _f64(inp)
    ax = _bn_axes(x)
    n = x.size // x.shape[1]
    xhat = (x - _per_channel(mean, x.ndim)) * _per_channel(rstd, x.ndim)
    dxhat = dy * _per_channel(gamma, x.ndim) if gamma is not None else dy
    # xhat depends on every value of its channel through mean and var; the two sums are the
    # projections of dxhat onto the directions those statistics remove.
    s1 = dxhat.sum(axis=ax, keepdims=True)
    s2 = (dxhat * xhat).sum(axis=ax, keepdims=True)
    dx = _per_channel(rstd, x.ndim) * (dxhat - s1 / n - xhat * s2 / n)
    if gamma is None:
        return dx, None, None
    return dx, (dy * xhat).sum(axis=ax), dy.sum(axis=ax)


# ---------------------------------------------------------------------------- maxpool2d

def maxpool2d_forward(inp, K, stride):
    """Max pooling of inp (N,C,H,W) with a KxK window, no padding; OH = (H-K)//stride + 1.

    Returns (out (N,C,OH,OW), argmax (N,C,OH,OW) int32 holding the flat index h*W + w of
    each window's maximum; the first one on ties, scanning rows then columns).
    """
    x = _f64(inp)
    N, C, H, W = x.shape
    OH, OW = (H - K) // stride + 1, (W - K) // stride + 1
    if K < 1 or stride < 1 or OH < 1 or OW < 1:
        raise ValueError("maxpool2d: bad kernel/stride for this input")
    oh = np.arange(OH)[:, None] * stride     # window origins
    ow = np.arange(OW)[None, :] * stride
    best = np.full((N, C, OH, OW), -np.inf)
    arg = np.zeros((N, C, OH, OW), dtype=np.int64)
    first = True
    # Scan window offsets in row-major order; a strict ">" keeps the first maximum on ties.
    for kh in range(K):
        for kw in range(K):
            hs, ws = _window(kh, kw, OH, OW, stride)
            val = x[:, :, hs, ws]
            take = np.ones(val.shape, bool) if first else val > best
            best = np.where(take, val, best)
            arg = np.where(take, (oh + kh) * W + (ow + kw), arg)
            first = False
    return best, arg.astype(np.int32)


def maxpool2d_backward(dout, argmax, H, W):
    """dinp (N,C,H,W): dout (N,C,OH,OW) scattered (summed) to the argmax positions."""
    dy = _f64(dout)
    N, C = dy.shape[:2]
    idx = np.asarray(argmax, dtype=np.int64).reshape(N * C, -1)
    # offset each (n, c) plane so one bincount scatters everything; it sums duplicates,
    # which happens when overlapping windows share a maximum.
    flat = idx + (np.arange(N * C) * (H * W))[:, None]
    d = np.bincount(flat.ravel(), weights=dy.reshape(N * C, -1).ravel(), minlength=N * C * H * W)
    return d.reshape(N, C, H, W)


# ---------------------------------------------------------------------------- labels

def overlay_labels(x, labels, K, value=1.0):
    """Copy of x (B, D) (or (B, C, H, W): rows are flattened) with the first K values of each
    row set to value * onehot(label); label -1 is the neutral label: value / K everywhere."""
    out = _f64(x).copy()
    B = out.shape[0]
    rows = out.reshape(B, -1)                # a view: writes land in out
    if rows.shape[1] < K:
        raise ValueError("rows are shorter than K")
    y = _labels(labels, K, allow_neutral=True)
    if y.shape[0] != B:
        raise ValueError("one label per row expected")
    rows[:, :K] = 0.0
    rows[y >= 0, y[y >= 0]] = value
    rows[y < 0, :K] = value / K
    return out


# ---------------------------------------------------------------------------- label-free negatives

def scff_pairs(x, x2, shift):
    """Self-contrastive pairs (Chen et al. 2025, SCFF, Fig. 1d; the pair as the mean its
    weight-shared first layer sees): pos[b] = (x[b] + x2[b]) / 2,
    neg[b] = (x[b] + x2[(b + shift) % B]) / 2.  x, x2 (B, ...)."""
    x, x2 = _f64(x), _f64(x2)
    return 0.5 * (x + x2), 0.5 * (x + np.roll(x2, -shift, axis=0))


def hybrid_blur(bits, iterations):
    """The blurred bit images before thresholding (Hinton 2022, sec. 3.2): ``iterations``
    passes of [1/4, 1/2, 1/4] along rows then columns, edge pixels repeated.  bits (B, H, W)."""
    m = _f64(bits).copy()
    for _ in range(iterations):
        p = np.pad(m, ((0, 0), (0, 0), (1, 1)), mode="edge")
        m = 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]
        p = np.pad(m, ((0, 0), (1, 1), (0, 0)), mode="edge")
        m = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    return m


def hybrid_masks(bits, iterations):
    """Hinton's hybrid-image masks: :func:`hybrid_blur` thresholded, 1 where > 0.5."""
    return (hybrid_blur(bits, iterations) > 0.5).astype(np.float64)


def hybrid_images(x, mask, shift):
    """Hybrid images x[b] * mask[b] + x[(b + shift) % B] * (1 - mask[b]), the (H, W) mask shared
    by the channels.  x (B, C, H, W), mask (B, H, W)."""
    x, m = _f64(x), _f64(mask)[:, None]
    return x * m + np.roll(x, -shift, axis=0) * (1.0 - m)
