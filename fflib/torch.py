"""fflib in PyTorch: the same network as a ``torch.nn.Module``, the same FF training, and a
one-call comparison.  PyTorch is optional: ``import fflib`` never imports it; this module does.

- :func:`to_module` builds an :class:`FFNet` (a ``torch.nn.Module``) from an :class:`fflib.FFModel`:
  the same layers, block cut, one-pass head, label encoding and current weights, with parameter
  and buffer names equal to ``FFModel.state_dict()``'s (``layers.1.weight``, ``head.bias``,
  ``label_embedding.weight``, ``layers.4.running_mean``), so weights go both ways with
  ``state_dict`` / ``load_state_dict``.
- :class:`TorchFF` trains an :class:`FFNet` with the algorithm of ``FFModel.train_step``, written
  in plain PyTorch (autograd and ``torch.optim``); fflib's tests use it as their oracle.
- :func:`compare` trains a model with fflib and its PyTorch twin side by side (same initial
  weights, minibatches and negative labels) and reports time, peak memory and accuracy.

What one training step does, in both libraries (rows of B samples):

* rows: FF/SymBa: [x with the true label | x with the negative label] (DF: | x with each of the
  K - 1 wrong labels, label j or j + 1 in group j), and B neutral-label rows
  when the head trains; CwC/PvN/xent: B rows with the neutral encoding (no label, no negatives),
  which also feed the head.  Labels: one-hot (the first K values of a flat input, of every channel
  plane of an image; neutral ``label_value / K``), Fourier (a per-class plane wave added to every
  channel; neutral the mean wave), embedding (a trained (H, W) map per class as an extra input
  channel, trained by the loss of the block holding layer 0; neutral the mean map), or none.
* blocks run in order; a block's input is the output (detached) of the layer before its first,
  as computed by the previous block, so overlapping blocks recompute their shared layers and a
  shared layer is trained by the sum of both blocks' gradients.  Batch-norm statistics come from
  the training rows only (the neutral rows are normalised with them), and the running statistics
  move once per step, in the first block that runs the layer (not at all if that block is
  inactive).
* block loss on the training rows of its output (ae: the mean squared error of the block's input
  rebuilt from its output by the block's decoder): FF ``softplus(theta - g+) + softplus(g- - theta)``
  or SymBa ``softplus(-alpha (g+ - g-))`` or DF ``log(1 + sum_j exp(g-_j - g+ + margin))`` over
  the sample's K - 1 wrong labels (the Distance-Forward N-pair margin loss) with goodness the sum
  or mean of squares (or minus it); CwC softmax cross-entropy over the K channel-group goodness
  values, PvN, or their mix (``pvn_weight``); df-cwc: the DF loss with the true group's goodness
  against the K - 1 other groups'; xent: softmax cross-entropy of a K-wide output.  All averaged
  over the batch.
* the one-pass head: Linear + softmax cross-entropy on the concatenated outputs of the head
  layers for the neutral rows, each normalised with the model's ``norm``/``norm_eps``; its input
  is detached.
* every trained layer steps once at the end with the weights it had at the start of the step
  (fflib's lean mode steps a block right after its backward; no later block reads its weights,
  so the arithmetic is the same).  Layers of inactive blocks neither step nor decay.
"""
import time

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError as _e:   # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError("fflib.torch needs PyTorch, an optional dependency of fflib: "
                      "pip install 'fflib-core[torch]' (or pip install torch)") from _e

__all__ = ["FFNet", "TorchFF", "to_module", "torch_scheduler", "compare", "df_loss", "ae_loss", "LenNorm", "BatchNorm2d", "Linear",
           "Conv2d", "MaxPool2d", "Flatten"]

LABEL_FREE = ("cwc", "pvn", "mix", "df-cwc", "xent", "ae")
GROUP_LOSSES = ("cwc", "pvn", "mix", "df-cwc")


# ---------------------------------------------------------------------------- losses

def df_loss(gpos, gneg, margin=1.0):
    """The Distance-Forward goodness-based N-pair margin loss (Wu et al. 2024, arXiv:2408.14925)
    in PyTorch: ``mean_b log(1 + sum_j exp(gneg[j, b] - gpos[b] + margin))``, each sample's
    goodness with its true label (gpos, (B,)) against its N wrong labels (gneg, (N, B))."""
    z = gneg - gpos[None, :] + margin
    return torch.logsumexp(torch.cat([torch.zeros_like(z[:1]), z]), 0).mean()


def _theta(cfg, block):
    """Block ``block``'s threshold: its entry of ``block_thresholds`` when the model has them."""
    bt = cfg.get("block_thresholds")
    return float(cfg["threshold"] if bt is None or block is None else bt[block])


def ae_loss(y, x, weight, bias=None):
    """The UFF autoencoder cell's loss (fflib's ``loss="ae"``) in PyTorch: block output y (B, O)
    reconstructs the block's input x (B, I) through the linear decoder (weight (I, O), bias
    (I)): ``mean((y weight^T + bias - x)^2)`` over all B I values."""
    return F.mse_loss(F.linear(y, weight, bias), x)


# ---------------------------------------------------------------------------- layers

def length_normalise(x, kind, eps):
    """Each row of x (N, D): ``x / (||x|| + eps)`` (l2), ``x / sqrt(mean(x^2) + eps)`` (rms), or x."""
    if kind == "l2":
        return x * (1.0 / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps))
    if kind == "rms":
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)
    if kind == "none":
        return x
    raise ValueError(f"norm must be 'l2', 'rms' or 'none', got {kind!r}")


class LenNorm(torch.nn.Module):
    """fflib's LenNorm: each sample (all its values) length-normalised; the shape is kept."""

    def __init__(self, norm="l2", eps=1e-4):
        super().__init__()
        self.norm, self.eps = norm, float(eps)

    def forward(self, x):
        return length_normalise(x.reshape(x.shape[0], -1), self.norm, self.eps).reshape(x.shape)

    def extra_repr(self):
        return f"norm={self.norm!r}, eps={self.eps}"


class Linear(torch.nn.Linear):
    """``torch.nn.Linear`` that flattens each sample first (as fflib's Linear does)."""

    def forward(self, x):
        return F.linear(x.reshape(x.shape[0], -1), self.weight, self.bias)


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` that accepts flat input of its (C, H, W) input shape."""

    def __init__(self, in_shape, *args, **kw):
        super().__init__(*args, **kw)
        self.in_shape = tuple(in_shape)

    def forward(self, x):
        return super().forward(x if x.dim() == 4 else x.reshape((x.shape[0],) + self.in_shape))


class MaxPool2d(torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` (no padding) that accepts flat input of its input shape."""

    def __init__(self, in_shape, kernel_size, stride):
        super().__init__(kernel_size, stride)
        self.in_shape = tuple(in_shape)

    def forward(self, x):
        return super().forward(x if x.dim() == 4 else x.reshape((x.shape[0],) + self.in_shape))


class BatchNorm2d(torch.nn.Module):
    """Batch norm with fflib's training rule: in training mode the batch statistics come from
    the first ``stat_rows`` rows (all when None) and normalise every row; the running statistics
    (unbiased variance) move by ``momentum`` unless ``update_stats`` is False.  Evaluation mode
    uses the running statistics.  Parameters and buffers are named as fflib's (no
    ``num_batches_tracked``)."""

    def __init__(self, in_shape, eps=1e-5, momentum=0.1, affine=True):
        super().__init__()
        C = int(in_shape[0])
        self.in_shape = tuple(in_shape)
        self.eps, self.momentum, self.affine = float(eps), float(momentum), bool(affine)
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(C))
            self.bias = torch.nn.Parameter(torch.zeros(C))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(C))
        self.register_buffer("running_var", torch.ones(C))
        self.stat_rows = None
        self.update_stats = True

    def forward(self, x):
        x = x if x.dim() == 4 else x.reshape((x.shape[0],) + self.in_shape)
        mom = self.momentum if self.update_stats else 0.0
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                self.eps)
        T = x.shape[0] if self.stat_rows is None else min(int(self.stat_rows), x.shape[0])
        if T == x.shape[0]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, mom,
                                self.eps)
        xt = x[:T]
        mean = xt.mean(dim=(0, 2, 3))
        var = xt.var(dim=(0, 2, 3), unbiased=False)
        if mom:
            with torch.no_grad():
                n = xt.numel() / xt.shape[1]
                self.running_mean.mul_(1 - mom).add_(mom * mean)
                self.running_var.mul_(1 - mom).add_(mom * var * (n / max(n - 1, 1)))
        shape = (1, -1, 1, 1)
        out = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.weight is not None:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out

    def extra_repr(self):
        return f"{self.in_shape[0]}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class Flatten(torch.nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], -1)


def _out_shape(spec, shape):
    C, H, W = shape
    kind = spec["kind"]
    if kind == "linear":
        return (spec["out_features"], 1, 1)
    if kind == "conv2d":
        k, s, p = spec["kernel_size"], spec["stride"], spec["padding"]
        return (spec["out_channels"], (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1)
    if kind == "maxpool2d":
        k, s = spec["kernel_size"], spec["stride"]
        return (C, (H - k) // s + 1, (W - k) // s + 1)
    if kind == "flatten":
        return (C * H * W, 1, 1)
    return shape


def _make_layer(spec, shape):
    kind = spec["kind"]
    size = shape[0] * shape[1] * shape[2]
    if kind == "linear":
        return Linear(size, spec["out_features"], bias=spec["bias"])
    if kind == "conv2d":
        return Conv2d(shape, shape[0], spec["out_channels"], spec["kernel_size"], stride=spec["stride"],
                      padding=spec["padding"], groups=spec["groups"], bias=spec["bias"])
    if kind == "batchnorm2d":
        return BatchNorm2d(shape, spec["eps"], spec["momentum"], spec["affine"])
    if kind == "relu":
        return torch.nn.ReLU()
    if kind == "maxpool2d":
        return MaxPool2d(shape, spec["kernel_size"], spec["stride"])
    if kind == "flatten":
        return Flatten()
    if kind == "lennorm":
        return LenNorm(spec["norm"], spec["eps"])
    raise ValueError(f"fflib.torch does not know the layer kind {kind!r}")


def fourier_patterns(K, H, W, modes=None):
    """(K, H*W) Fourier label patterns of the (K, M, 4) mode table ``modes`` (None: fflib's
    default scheme), in float64 arithmetic with a float32 result, as fflib's C (see
    :mod:`fflib.labels`)."""
    from .labels import fourier_modes, fourier_patterns as _patterns
    if modes is None:
        modes = fourier_modes("fflib", K, (1, H, W))
    return torch.from_numpy(_patterns(modes, (1, H, W)).astype(np.float32))


# ---------------------------------------------------------------------------- the network

class FFNet(torch.nn.Module):
    """An fflib network as a ``torch.nn.Module`` (make one with :func:`to_module`).

    ``layers`` (a ModuleList indexed like ``FFModel.layers``), ``head`` (Linear F -> K, or None),
    ``label_embedding`` (``torch.nn.Embedding(K, H*W)``, or None), ``decoders`` (with
    ``loss="ae"``: a ModuleList of block b's Linear(output -> input) decoder, else None; the twin
    holds them, :class:`TorchFF` does not train them); ``blocks`` the (first, last)
    layer ranges of the cut (change it with :meth:`set_block_ranges` or :meth:`set_routine`),
    ``config`` the FF settings.  ``forward(x, labels=None)`` encodes the labels (None: the
    neutral label) and returns the last layer's output; :meth:`goodness`, :meth:`predict_proba`,
    :meth:`features`, :meth:`predict_multipass`, :meth:`predict_onepass` are fflib's inferences.
    ``train()``/``eval()`` switch batch norm as in fflib.
    """

    def __init__(self, arch):
        super().__init__()
        self.input_shape = tuple(int(s) for s in arch["input_shape"])
        self.num_classes = K = int(arch["num_classes"])
        self.config = dict(arch["config"])
        self.label_encoding = arch.get("label_encoding", "onehot")
        C, H, W = self.input_shape
        shape = (C + 1, H, W) if self.label_encoding == "embedding" else self.input_shape
        layers, self.shapes = [], []
        for spec in arch["layers"]:
            layers.append(_make_layer(spec, shape))
            shape = _out_shape(spec, shape)
            self.shapes.append(shape)
        self.layers = torch.nn.ModuleList(layers)
        self.kinds = [spec["kind"] for spec in arch["layers"]]
        self.blocks = [tuple(int(v) for v in r) for r in arch["blocks"]]
        self.units = list(arch.get("units") or [b for _, b in self.blocks])
        self.head_layers = [int(i) for i in arch.get("head_layers", [])]
        self.head = None
        if self.head_layers:
            feat = sum(int(np.prod(self.shapes[i])) for i in self.head_layers)
            self.head = torch.nn.Linear(feat, K)
        self.label_embedding = torch.nn.Embedding(K, H * W) if self.label_encoding == "embedding" else None
        # loss "ae" (UFF autoencoder cells): block b's decoder, Linear(block output -> block input)
        self.decoders = None
        if self.config.get("loss") == "ae":
            size = [int(np.prod(self.input_shape))] + [int(np.prod(s)) for s in self.shapes]
            self.decoders = torch.nn.ModuleList(torch.nn.Linear(size[l], size[f]) for f, l in self.blocks)
        # input standardisation (FFModel.input_norm): x * scale + shift before the label goes in
        if arch.get("input_norm") is None:
            self.input_scale = self.input_shift = None
        else:
            from .nn import _check_input_norm, _affine_of
            norm = arch["input_norm"]
            scale, shift = _affine_of(_check_input_norm(norm["mean"], norm["std"], self.input_shape),
                                      self.input_shape)
            self.register_buffer("input_scale", torch.from_numpy(scale), persistent=False)
            self.register_buffer("input_shift", torch.from_numpy(shift), persistent=False)
        if self.label_encoding == "fourier":
            self.register_buffer("patterns", fourier_patterns(K, H, W, arch.get("fourier_modes")),
                                 persistent=False)
        else:
            self.patterns = None

    # ------------------------------------------------------------------ structure
    @property
    def num_blocks(self):
        return len(self.blocks)

    @property
    def label_free(self):
        """True for the losses that read the class from the output (no label in the input)."""
        return self.config["loss"] in LABEL_FREE

    def default_blocks(self):
        """The units (block ends) of the model's default cut, as ``FFModel.default_blocks``."""
        return list(self.units)

    def set_block_ranges(self, ranges):
        """Blocks as (first, last) layer ranges (they may overlap), as ``FFModel.set_block_ranges``."""
        ranges = [(int(a), int(b)) for a, b in ranges]
        n = len(self.layers)
        ok = bool(ranges) and ranges[0][0] == 0 and ranges[-1][1] == n
        for b, (f, l) in enumerate(ranges):
            ok &= f < l <= n and (b == 0 or ranges[b - 1][0] < f <= ranges[b - 1][1] < l)
        if not ok:
            raise ValueError(f"ranges must be ordered (first, last) layer ranges covering [0, {n}), each "
                             f"starting inside the previous one and ending after it, got {ranges!r}")
        self.blocks = ranges

    def set_routine(self, routine="greedy", chunk_size=2, shift=0):
        """Cut the blocks for a training routine of :mod:`fflib.routines`."""
        from .routines import block_ranges
        self.set_block_ranges(block_ranges(self, routine, chunk_size, shift))

    def unit_ranges(self):
        ends = self.units
        return [(ends[i - 1] if i else 0, e) for i, e in enumerate(ends)]

    # ------------------------------------------------------------------ labels
    @property
    def dtype(self):
        """The floating type of the parameters (float32 unless converted, e.g. by ``double()``)."""
        return next(self.parameters()).dtype

    def as_rows(self, x):
        """x (N, ...) of any array type with the model's input size -> tensor (N, D) of :attr:`dtype`."""
        t = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        t = t.to(self.dtype)
        D = int(np.prod(self.input_shape))
        if t.dim() < 2 or t[0].numel() != D:
            raise ValueError(f"x must be a batch of samples with {D} values each, got shape {tuple(t.shape)}")
        return t.reshape(t.shape[0], D)

    def encode(self, x, labels=None):
        """Rows of x (N, D) with labels (N,) in the input (None or -1: the neutral label); the result
        has the shape the first layer takes: (N, D) flat, (N, C(+1), H, W) for images."""
        x = self.as_rows(x)
        if self.input_scale is not None:
            x = x * self.input_scale + self.input_shift
        N = x.shape[0]
        C, H, W = self.input_shape
        HW, K, v = H * W, self.num_classes, float(self.config["label_value"])
        enc = self.label_encoding
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
            neutral = labels < 0
            lab = labels.clamp_min(0)
        if enc == "onehot":
            code = torch.full((N, K), v / K, dtype=x.dtype)
            if labels is not None:
                hot = torch.zeros(N, K, dtype=x.dtype)
                hot[torch.arange(N), lab] = v
                code = torch.where(neutral[:, None], code, hot)
            if HW == 1:
                out = torch.cat([code, x[:, K:]], dim=1)
            else:
                out = x.reshape(N, C, HW).clone()
                out[:, :, :K] = code[:, None, :]
        elif enc == "fourier":
            mean_wave = (v / K * self.patterns).sum(0)
            wave = mean_wave.expand(N, HW) if labels is None else torch.where(
                neutral[:, None], mean_wave, v * self.patterns[lab])
            out = x.reshape(N, C, HW) + wave[:, None, :]
        elif enc == "embedding":
            emb = self.label_embedding.weight
            mean_map = (emb / K).sum(0)
            maps = mean_map.expand(N, HW) if labels is None else torch.where(neutral[:, None], mean_map, emb[lab])
            out = torch.cat([x.reshape(N, C, HW), maps[:, None, :]], dim=1)
            C = C + 1
        else:
            out = x
        return out.reshape(N, C, H, W) if HW > 1 else out.reshape(N, -1)

    # ------------------------------------------------------------------ running layers
    def run(self, h, first, last, stat_rows=None, update_from=None, keep=None):
        """Layers [first, last) on h; batch norm takes its statistics from the first ``stat_rows``
        rows and moves its running statistics only for layers >= ``update_from`` (None: all).
        ``keep`` (a dict) receives every layer's output by index."""
        for i in range(first, last):
            layer = self.layers[i]
            if isinstance(layer, BatchNorm2d):
                layer.stat_rows = stat_rows
                layer.update_stats = update_from is None or i >= update_from
            h = layer(h)
            if keep is not None:
                keep[i] = h
        return h

    def forward(self, x, labels=None):
        return self.run(self.encode(x, labels), 0, len(self.layers))

    def block_scores(self, out):
        """Class evidence of a block output (N, ...): goodness (N,) for FF/SymBa; (N, K) channel-group
        goodness for CwC/PvN (zeros when the channels do not split into K groups); logits for xent."""
        loss, K = self.config["loss"], self.num_classes
        flat = out.reshape(out.shape[0], -1)
        if loss in GROUP_LOSSES:
            if out.dim() < 4 and flat.shape[1] % K or out.dim() == 4 and out.shape[1] % K:
                return out.new_zeros(out.shape[0], K)
            return flat.reshape(out.shape[0], K, -1).square().mean(dim=2)
        if loss == "xent":
            return flat if flat.shape[1] == K else out.new_zeros(out.shape[0], K)
        sq = flat.square()
        good = self.config["goodness"]
        g = sq.mean(dim=1) if good.endswith("mean") else sq.sum(dim=1)
        return -g if good.startswith("neg-") else g

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def goodness(self, x, chunk=1000):
        """Multi-pass scores (N, K, num_blocks) as ``FFModel.goodness``: every block's goodness
        for every label (label-free losses: the K class scores of one neutral pass).  In training
        mode batch norm uses the statistics of each chunk of ``chunk`` samples."""
        x = self.as_rows(x)
        N, K, nb = x.shape[0], self.num_classes, self.num_blocks
        per = 1 if self.label_free else K
        out = x.new_empty(N, K, nb)
        ends = [l for _, l in self.blocks]
        for s in range(0, N, chunk):
            xs = x[s:s + chunk]
            n = xs.shape[0]
            if per == 1:
                h = self.encode(xs, None)
            else:
                h = self.encode(xs.repeat_interleave(K, dim=0), torch.arange(K).repeat(n))
            f = 0
            for b, l in enumerate(ends):
                h = self.run(h, f, l, update_from=len(self.layers))
                sc = self.block_scores(h)
                out[s:s + n, :, b] = sc if per == 1 else sc.reshape(n, K)
                f = l
        return out

    def _block_selection(self, blocks):
        from .nn import select_blocks
        return select_blocks(blocks, self.num_blocks)

    def predict_multipass(self, x, blocks=None):
        """argmax over labels of the scores summed over ``blocks`` (default all)."""
        return self.goodness(x)[:, :, self._block_selection(blocks)].sum(dim=2).argmax(dim=1)

    def _need_head(self):
        if self.head is None:
            raise ValueError("this network has no one-pass head (its FFModel was built with head_blocks=None)")

    def head_features(self, outs):
        """The head's input from the head layers' outputs (a dict), each normalised with ``norm``."""
        n = outs[self.head_layers[0]].shape[0]
        return torch.cat([length_normalise(outs[i].reshape(n, -1), self.config["norm"],
                                           float(self.config["norm_eps"])) for i in self.head_layers], dim=1)

    @torch.no_grad()
    def features(self, x, chunk=2000):
        """The one-pass head's input (N, F) for neutral-label inputs."""
        self._need_head()
        x = self.as_rows(x)
        stop = next(l for _, l in self.blocks if l > self.head_layers[-1])
        out = []
        for s in range(0, x.shape[0], chunk):
            keep = {}
            self.run(self.encode(x[s:s + chunk], None), 0, stop, update_from=len(self.layers), keep=keep)
            out.append(self.head_features(keep))
        return torch.cat(out)

    @torch.no_grad()
    def predict_proba(self, x, chunk=2000):
        """One-pass class probabilities (N, K): the head's softmax for neutral-label inputs."""
        return torch.softmax(self.head(self.features(x, chunk)), dim=1)

    def predict_onepass(self, x):
        return self.predict_proba(x).argmax(dim=1)

    def fflib_state_dict(self):
        """NumPy copies of the parameters and buffers, keyed as ``FFModel.state_dict()`` (load them
        into the FFModel with its ``load_state_dict``)."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()}


def to_module(model):
    """The network of an :class:`fflib.FFModel` as an :class:`FFNet` (a ``torch.nn.Module``) with a
    copy of its current weights, running statistics, block cut and train/eval mode.

    ``model`` may also be an architecture dict (``FFModel.architecture()``); the module then keeps
    PyTorch's default initialisation (batch norm: weight 1, bias 0)."""
    from .nn import FFModel
    if isinstance(model, dict):
        return FFNet(model)
    if not isinstance(model, FFModel):
        raise TypeError(f"model must be an fflib.FFModel or its architecture() dict, got {type(model).__name__}")
    arch = model.architecture()
    arch["blocks"] = [list(r) for r in model.blocks]
    arch["units"] = model.default_blocks()
    net = FFNet(arch)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    net.train(model.training)
    return net


# ---------------------------------------------------------------------------- training

def _labels(y, name):
    t = y if torch.is_tensor(y) else torch.from_numpy(np.asarray(y))
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer labels, got dtype {t.dtype}")
    return t.to(torch.int64).reshape(-1)


class TorchFF:
    """fflib's training step (``FFModel.train_step``) in plain PyTorch, on an :class:`FFNet`.

    ``net``: an FFNet, or an FFModel (converted by :func:`to_module`).  ``optimizer``: "adam",
    "adamw" or "sgd" with PyTorch's settings (``lr``, ``betas``, ``eps``, ``momentum``, ``dampening``,
    ``nesterov``, ``weight_decay``, ``fused``), or an fflib optimiser (``fflib.Adam``/``AdamW``/``SGD``)
    whose settings (its current rate included) are copied to every layer and the head; ``head_lr``:
    the head's rate (schedules scale it alike); ``layer_lr``: ``{layer index: rate}``.  One
    ``torch.optim`` optimiser holds the parameter groups: the layers and label embedding, one
    group per ``layer_lr`` layer, the head.
    ``grad="manual"`` replaces autograd by the closed-form local gradient (``dL/dz = 2 dL/dg a``,
    only the 2B training rows in the weight gradient, as fflib computes it), for blocks made of
    LenNorm layers, one Linear and a ReLU with the FF or SymBa loss.  ``channels_last``: run the
    convolutions in channels-last memory format.  ``seed``: the generator of negative labels
    drawn when :meth:`step` gets none.  A schedule: :func:`torch_scheduler` turns an fflib
    scheduler into a ``torch.optim.lr_scheduler.LambdaLR`` of :attr:`optimizer`.

    Known difference: with a label-free loss (cwc, pvn, xent) and ``label_encoding="embedding"``,
    fflib's C feeds every row the mean label map but credits each row's gradient to its own
    label's map; the twin follows autograd (each map gets 1/K of the mean map's gradient).
    """

    def __init__(self, net, optimizer="adam", lr=1e-3, *, head_lr=None, layer_lr=None, betas=(0.9, 0.999), eps=1e-8,
                 momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, fused=None, grad="autograd",
                 channels_last=False, seed=0):
        if not isinstance(net, FFNet):
            net = to_module(net)
        self.net = net
        if net.config.get("head_dropout", 0.0) > 0.0:
            raise ValueError(f"the model's head_dropout {net.config['head_dropout']} draws its masks from fflib's RNG: "
                             f"the twin cannot follow it (set head_dropout=0 to compare)")
        if grad not in ("autograd", "manual"):
            raise ValueError(f"grad must be 'autograd' or 'manual', got {grad!r}")
        self.grad = grad
        if grad == "manual":
            self._check_manual()
        self.channels_last = bool(channels_last)
        if self.channels_last:
            for layer in net.layers:
                if isinstance(layer, torch.nn.Conv2d):
                    layer.weight.data = layer.weight.data.contiguous(memory_format=torch.channels_last)
        if not isinstance(optimizer, str):
            settings = _optimizer_settings(optimizer)
            optimizer = settings.pop("optimizer")
            lr, head_lr, layer_lr = settings.pop("lr"), settings.pop("head_lr"), settings.pop("layer_lr")
            betas, eps = settings.get("betas", betas), settings.get("eps", eps)
            momentum, dampening = settings.get("momentum", momentum), settings.get("dampening", dampening)
            nesterov, weight_decay = settings.get("nesterov", nesterov), settings["weight_decay"]
        layer_lr = {int(i): float(v) for i, v in (layer_lr or {}).items()}
        if any(not 0 <= i < len(net.layers) or not list(net.layers[i].parameters()) for i in layer_lr):
            raise ValueError(f"layer_lr keys must be indices of layers with parameters, got {sorted(layer_lr)}")
        layer_params = [p for i, layer in enumerate(net.layers) if i not in layer_lr for p in layer.parameters()]
        if net.label_embedding is not None:
            layer_params.append(net.label_embedding.weight)
        if net.decoders is not None:   # ae: each block's decoder steps with the layers
            layer_params += list(net.decoders.parameters())
        groups = [{"params": layer_params, "lr": float(lr)}]
        groups += [{"params": list(net.layers[i].parameters()), "lr": v} for i, v in sorted(layer_lr.items())]
        if net.head is not None:
            groups.append({"params": list(net.head.parameters()), "lr": float(lr if head_lr is None else head_lr)})
        extra = {} if fused is None else {"fused": bool(fused)}
        if optimizer in ("adam", "adamw"):
            cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
            self.optimizer = cls(groups, lr=float(lr), betas=tuple(betas), eps=float(eps),
                                 weight_decay=float(weight_decay), **extra)
        elif optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=float(lr), momentum=float(momentum),
                                             dampening=float(dampening), nesterov=bool(nesterov),
                                             weight_decay=float(weight_decay), **extra)
        else:
            raise ValueError(f"optimizer must be 'adam', 'adamw', 'sgd' or an fflib optimiser, got {optimizer!r}")
        self.generator = torch.Generator().manual_seed(int(seed))

    # ------------------------------------------------------------------ checks
    def _check_manual(self):
        net = self.net
        if net.config["loss"] not in ("ff", "symba", "df") or net.label_encoding == "embedding":
            raise ValueError("grad='manual' needs the FF, SymBa or DF loss and no label embedding")
        for f, l in net.blocks:
            kinds = net.kinds[f:l]
            if not (len(kinds) >= 2 and kinds[-2:] == ["linear", "relu"]
                    and all(k == "lennorm" for k in kinds[:-2])):
                raise ValueError("grad='manual' needs blocks of LenNorm layers, one Linear and a ReLU; "
                                 f"block ({f}, {l}) holds {kinds}")

    # ------------------------------------------------------------------ one step
    def _rows(self, x, y, neg, train_head):
        net = self.net
        x = net.as_rows(x)
        B, K = x.shape[0], net.num_classes
        if y is None and net.config["loss"] == "ae" and not train_head:   # the ae loss needs no labels
            return net.encode(x, None), torch.zeros(B, dtype=torch.int64), B, 0
        y = _labels(y, "y")
        if y.shape[0] != B:
            raise ValueError(f"y has {y.shape[0]} labels for {B} samples")
        if B and (int(y.min()) < 0 or int(y.max()) >= K):
            raise ValueError(f"y must be in [0, {K}), got range [{int(y.min())}, {int(y.max())}]")
        if net.label_free:
            return net.encode(x, None), y, B, 0
        if net.config["loss"] == "df":   # every wrong label: group j holds label j, or j + 1 from y on
            lab = torch.cat([y] + [torch.where(y <= j, torch.full_like(y, j + 1), torch.full_like(y, j))
                                   for j in range(K - 1)] + ([torch.full((B,), -1)] if train_head else []))
            return net.encode(x.repeat(K + (1 if train_head else 0), 1), lab), y, K * B, K * B
        if neg is None:   # a wrong label, uniform over the K - 1 others
            k = torch.randint(0, K - 1, (B,), generator=self.generator)
            neg = torch.where(k >= y, k + 1, k)
        neg = _labels(neg, "neg_labels")
        if neg.shape[0] != B or bool((neg == y).any()) or int(neg.min()) < 0 or int(neg.max()) >= K:
            raise ValueError(f"neg_labels must be {B} labels in [0, {K}), each different from y")
        lab = torch.cat([y, neg] + ([torch.full((B,), -1)] if train_head else []))
        reps = 3 if train_head else 2
        return net.encode(x.repeat(reps, 1), lab), y, 2 * B, 2 * B

    def block_loss(self, out, y, T, inp=None, block=None):
        """The local loss of a block output's first T rows (autograd-able); the ae loss also
        reads the block's input ``inp`` and index ``block`` (its decoder)."""
        cfg, K = self.net.config, self.net.num_classes
        loss_kind, B = cfg["loss"], y.shape[0]
        if loss_kind == "ae":
            dec = self.net.decoders[block]
            return ae_loss(out[:T].reshape(T, -1), inp[:T].reshape(T, -1), dec.weight, dec.bias)
        theta = _theta(cfg, block)
        if loss_kind in GROUP_LOSSES:
            if out.reshape(out.shape[0], -1).shape[1] % K or (out.dim() == 4 and out.shape[1] % K):
                raise ValueError(f"the {loss_kind} loss needs a block output whose channels split into "
                                 f"{K} groups, got shape {tuple(out.shape[1:])}")
            G = out[:B].reshape(B, K, -1).square().mean(dim=2)
            if loss_kind == "df-cwc":   # DF's N-pair loss: the true group against the K - 1 others
                wrong = torch.ones_like(G, dtype=torch.bool).scatter_(1, y[:, None], False)
                return df_loss(G.gather(1, y[:, None])[:, 0], G[wrong].reshape(B, K - 1).t(),
                               float(cfg.get("margin", 1.0)))
            w = 1.0 if loss_kind == "pvn" else float(cfg["pvn_weight"])
            loss = out.new_zeros(())
            if w < 1.0:
                loss = (1.0 - w) * F.cross_entropy(G, y)
            if w > 0.0:
                gpos = G.gather(1, y[:, None])[:, 0]
                gneg = (G.sum(dim=1) - gpos) / (K - 1)
                loss = loss + w * (F.softplus(theta - gpos) + F.softplus(gneg - theta)).mean()
            return loss
        if loss_kind == "xent":
            flat = out[:B].reshape(B, -1)
            if flat.shape[1] != K:
                raise ValueError(f"the xent loss needs a block output of {K} values, got {flat.shape[1]}")
            return F.cross_entropy(flat, y)
        g = self.net.block_scores(out[:T])
        if loss_kind == "ff":
            return (F.softplus(theta - g[:B]) + F.softplus(g[B:] - theta)).mean()
        if loss_kind == "symba":
            return F.softplus(-float(cfg["alpha"]) * (g[:B] - g[B:])).mean()
        if loss_kind == "df":
            return df_loss(g[:B], g[B:].reshape(-1, B), float(cfg.get("margin", 1.0)))
        raise ValueError(f"fflib.torch does not know the loss {loss_kind!r}")

    @torch.no_grad()
    def _manual_block(self, f, l, h, y, T, block):
        """Closed-form gradient of a [LenNorm..] Linear ReLU block; returns (output, loss)."""
        net, cfg = self.net, self.net.config
        h = net.run(h, f, l - 2)
        lin = net.layers[l - 2]
        h = h.reshape(h.shape[0], -1)
        a = torch.addmm(lin.bias, h, lin.weight.t()) if lin.bias is not None else h @ lin.weight.t()
        a.clamp_min_(0.0)
        at, B = a[:T], y.shape[0]
        g = net.block_scores(at)
        if cfg["loss"] == "ff":
            theta = _theta(cfg, block)
            zp, zn = theta - g[:B], g[B:] - theta
            loss = (F.softplus(zp) + F.softplus(zn)).mean()
            dg = torch.cat([-torch.sigmoid(zp), torch.sigmoid(zn)]) / B
        elif cfg["loss"] == "df":
            z = g[B:].reshape(-1, B) - g[:B][None, :] + float(cfg.get("margin", 1.0))
            z0 = torch.cat([torch.zeros_like(z[:1]), z])
            loss = torch.logsumexp(z0, 0).mean()
            p = torch.softmax(z0, 0)[1:] / B
            dg = torch.cat([-p.sum(dim=0), p.reshape(-1)])
        else:
            z = -float(cfg["alpha"]) * (g[:B] - g[B:])
            loss = F.softplus(z).mean()
            s = torch.sigmoid(z) * (float(cfg["alpha"]) / B)
            dg = torch.cat([-s, s])
        scale = 2.0 / at.shape[1] if cfg["goodness"].endswith("mean") else 2.0
        if cfg["goodness"].startswith("neg-"):
            scale = -scale
        dz = at * (dg * scale).unsqueeze(1)          # relu' is implied: a == 0 where z <= 0
        for p, gp in ((lin.weight, dz.t() @ h[:T]), (lin.bias, dz.sum(dim=0) if lin.bias is not None else None)):
            if p is not None:
                p.grad = gp if p.grad is None else p.grad + gp
        return a, loss

    def step(self, x, y, neg_labels=None, active=None, train_head=None, update=True):
        """One FF step on the minibatch x (B, ...) with labels y and negative labels ``neg_labels``
        (drawn uniformly when None; ignored by the label-free losses), as ``FFModel.train_step``
        (``update=False``: as ``FFModel.compute_grads``, gradients left in ``.grad``, apply them
        with :meth:`apply_update`).  ``active``: one flag per block.  Returns the per-block losses
        and the head loss (0 when the head does not train) as float32 NumPy."""
        net = self.net
        nb = net.num_blocks
        if train_head is None:
            train_head = net.head is not None
        if train_head and net.head is None:
            raise ValueError("train_head=True but the network has no one-pass head")
        if active is not None:
            active = [bool(a) for a in np.asarray(active).reshape(-1)]
            if len(active) != nb:
                raise ValueError(f"active needs one flag per block ({nb}), got {len(active)}")
        rows, y, T, head_at = self._rows(x, y, neg_labels, train_head)
        B = y.shape[0]
        if self.channels_last and rows.dim() == 4:
            rows = rows.contiguous(memory_format=torch.channels_last)
        on = [active is None or active[b] for b in range(nb)]
        stop = max([b + 1 for b in range(nb) if on[b]] + [0])
        if train_head:
            last_head = net.head_layers[-1]
            stop = max(stop, next(b + 1 for b, (_, l) in enumerate(net.blocks) if l > last_head))
        self.optimizer.zero_grad(set_to_none=True)
        losses = np.zeros(nb + 1, dtype=np.float32)
        outs, feats = {}, {}
        carry = rows
        for b in range(stop):
            f, l = net.blocks[b]
            h = carry if b == 0 else carry.detach()
            if on[b] and self.grad == "manual":
                h, loss = self._manual_block(f, l, h, y, T, b)
                outs[l - 1] = h
                losses[b] = float(loss)
            elif on[b]:
                update_from = net.blocks[b - 1][1] if b else 0
                inp = h
                h = net.run(h, f, l, stat_rows=T, update_from=update_from, keep=outs)
                loss = self.block_loss(h, y, T, inp, b)
                loss.backward()
                losses[b] = float(loss.detach())
            else:
                with torch.no_grad():
                    h = net.run(h, f, l, stat_rows=T, update_from=len(net.layers), keep=outs)
            if train_head:
                for i in range(f, l):
                    if i in net.head_layers and (b == 0 or i >= net.blocks[b - 1][1]):
                        feats[i] = outs[i][head_at:head_at + B].detach()
            if b + 1 < stop:
                carry = outs[net.blocks[b + 1][0] - 1]
            outs.clear()   # hold no other activations past their block
        if train_head:
            hl = F.cross_entropy(net.head(net.head_features(feats)), y)
            hl.backward()
            losses[nb] = float(hl.detach())
        if update:
            self.optimizer.step()
        return losses

    def apply_update(self):
        """One optimiser step from the gradients left by ``step(..., update=False)``."""
        self.optimizer.step()

    def set_lr(self, factor):
        """Scale every group's initial rate by ``factor`` (what fflib's schedulers do)."""
        for g in self.optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
            g["lr"] = g["initial_lr"] * float(factor)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, x, y, multipass_blocks=None):
        """Test errors in percent as ``fflib.evaluate``: ``multi_pass`` (scores of every unit, or
        the last two for CwC/PvN, summed), ``one_pass`` (with a head) and ``block_accuracy``."""
        net = self.net
        y = _labels(y, "y").numpy()
        saved, was_training = net.blocks, net.training
        net.eval()
        try:
            net.blocks = net.unit_ranges()
            g = net.goodness(x).numpy()
            if multipass_blocks is None and net.config["loss"] in GROUP_LOSSES:
                multipass_blocks = [-2, -1] if g.shape[2] > 1 else [-1]
            sel = net._block_selection(multipass_blocks)
            from .train import error_percent
            res = {"multi_pass": error_percent(g[:, :, sel].sum(axis=2).argmax(axis=1), y),
                   "block_accuracy": [float((g[:, :, b].argmax(axis=1) == y).mean()) for b in range(g.shape[2])]}
            if net.head is not None:
                res["one_pass"] = error_percent(net.predict_onepass(x).numpy(), y)
        finally:
            net.blocks = saved
            net.train(was_training)
        return res


def torch_scheduler(scheduler, twin):
    """A ``torch.optim.lr_scheduler.LambdaLR`` of ``twin.optimizer`` (a :class:`TorchFF`) that
    follows the fflib scheduler ``scheduler`` (``fflib.MultiStepLR``, ``fflib.LinearCooldown``,
    anything with ``lr_at(epoch)`` and ``base_lr``): step both once per epoch.  Every parameter
    group (the head too) is scaled by the same factor, as in fflib."""
    if not (hasattr(scheduler, "lr_at") and hasattr(scheduler, "base_lr")):
        raise TypeError(f"scheduler must be an fflib scheduler (with lr_at and base_lr), got {type(scheduler).__name__}")
    if not isinstance(twin, TorchFF):
        raise TypeError(f"twin must be a TorchFF, got {type(twin).__name__}")
    base = float(scheduler.base_lr)
    return torch.optim.lr_scheduler.LambdaLR(
        twin.optimizer, lambda epoch: scheduler.lr_at(epoch) / base if base else 1.0)


def _optimizer_settings(opt):
    """An fflib optimiser's settings as TorchFF arguments."""
    from .optim import Adam, AdamW, SGD
    g = opt.param_groups[0]
    factor = g["lr"] / g["initial_lr"] if g.get("initial_lr") else 1.0   # the schedule's factor
    out = {"lr": g["lr"], "head_lr": None if opt.head_lr is None else opt.head_lr * factor,
           "weight_decay": opt.weight_decay, "layer_lr": {str(i): v * factor for i, v in opt.layer_lr.items()}}
    if isinstance(opt, Adam):
        out.update(optimizer="adamw" if isinstance(opt, AdamW) else "adam", betas=opt.betas, eps=opt.eps)
    elif isinstance(opt, SGD):
        out.update(optimizer="sgd", momentum=opt.momentum, dampening=opt.dampening, nesterov=opt.nesterov)
    else:
        raise TypeError(f"optimizer must be fflib.Adam, fflib.AdamW or fflib.SGD, got {type(opt).__name__}")
    return out


# ---------------------------------------------------------------------------- compare

def _peak_mark():
    """Reset the kernel's peak-RSS mark; returns the resident MB now (None off Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mb("VmRSS")
    except OSError:
        return None


def _status_mb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _train_side(side, model, opt, X, y, X_eval, y_eval, plan, twin=None):
    """Train one side (fflib: ``model`` with its optimiser ``opt``; torch: ``twin``, default a
    twin of ``model`` as it is now) over ``plan`` and evaluate it; returns the summary dict of
    :func:`compare`."""
    import gc
    import fflib
    lr0 = opt.lr
    if side == "torch":
        twin = TorchFF(model, opt) if twin is None else twin
        model = twin.net
        step = lambda xb, yb, nb: twin.step(xb, yb, nb, train_head=plan["train_head"])  # noqa: E731
        set_factor = twin.set_lr
    else:
        step = lambda xb, yb, nb: model.train_step(xb, yb, nb, train_head=plan["train_head"])  # noqa: E731

        def set_factor(f):
            opt.lr = lr0 * f
    rng = np.random.default_rng(plan["random_state"])
    n, K, B = len(y), model.num_classes, plan["batch_size"]
    gc.collect()
    base = _peak_mark()
    t0 = time.perf_counter()
    sums = None
    for e in range(plan["epochs"]):
        perm = rng.permutation(n)
        neg = ((y[perm] + rng.integers(1, K, n)) % K).astype(np.int64)
        set_factor(plan["factors"][e])
        sums, steps = 0.0, 0
        for s in range(0, n, B):
            idx = perm[s:s + B]
            sums = sums + step(np.ascontiguousarray(X[idx]), np.ascontiguousarray(y[idx]), neg[s:s + B])
            steps += 1
        sums = sums / steps
    secs = time.perf_counter() - t0
    hwm = _status_mb("VmHWM") if base is not None else None
    peak = None if hwm is None else max(0.0, hwm - base)
    if side == "torch":
        res = twin.evaluate(X_eval, y_eval)
    else:
        set_factor(1.0)
        res = fflib.evaluate(model, X_eval, y_eval)
    return {"train_seconds": secs, "peak_mb": peak, "multi_pass": 1.0 - res["multi_pass"] / 100.0,
            "one_pass": None if "one_pass" not in res else 1.0 - res["one_pass"] / 100.0,
            "block_accuracy": res["block_accuracy"], "losses": [float(v) for v in sums]}


def _optimizer_from_settings(model, settings):
    import fflib
    s = dict(settings)
    kind = s.pop("optimizer")
    s["head_lr"] = s.pop("head_lr")
    return {"adam": fflib.Adam, "adamw": fflib.AdamW, "sgd": fflib.SGD}[kind](model, **s)


def _worker(folder):
    """One side of an isolated :func:`compare`, in a fresh process (``python -c``)."""
    import json
    import os
    import fflib
    from .nn import FFModel
    with open(os.path.join(folder, "plan.json")) as f:
        plan = json.load(f)
    fflib.set_num_threads(plan["threads"])
    torch.set_num_threads(plan["threads"])
    with np.load(os.path.join(folder, "data.npz")) as d:
        X, y, X_eval, y_eval = d["X"], d["y"], d["X_eval"], d["y_eval"]
    model = FFModel.load(os.path.join(folder, "model.npz"))
    model._units = list(plan["units"])   # the units of a model built with explicit blocks
    model.train()
    opt = _optimizer_from_settings(model, plan["optimizer"])
    res = _train_side(plan["side"], model, opt, X, y, X_eval, y_eval, plan)
    if plan["side"] == "fflib":
        model.save(os.path.join(folder, "trained.npz"))
    with open(os.path.join(folder, plan["side"] + ".json"), "w") as f:
        json.dump(res, f)


def _run_isolated(model, opt, X, y, X_eval, y_eval, plan):
    import json
    import os
    import subprocess
    import sys
    import tempfile
    out = {}
    with tempfile.TemporaryDirectory(prefix="fflib_compare_") as folder:
        model.save(os.path.join(folder, "model.npz"))
        np.savez(os.path.join(folder, "data.npz"), X=X, y=y, X_eval=X_eval, y_eval=y_eval)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        for side in ("fflib", "torch"):
            with open(os.path.join(folder, "plan.json"), "w") as f:
                json.dump(dict(plan, side=side, optimizer=_optimizer_settings(opt)), f)
            proc = subprocess.run([sys.executable, "-c", f"import fflib.torch; fflib.torch._worker({folder!r})"],
                                  capture_output=True, text=True, env=env, cwd=folder)   # not a source tree
            if proc.returncode != 0:
                raise RuntimeError(f"compare: the {side} process failed:\n{proc.stderr[-2000:]}")
            with open(os.path.join(folder, side + ".json")) as f:
                out[side] = json.load(f)
        from .nn import FFModel
        trained = FFModel.load(os.path.join(folder, "trained.npz"))
        model.load_state_dict(trained.state_dict())
        model.load_optimizer_state(trained.optimizer_state())
    return out


def compare(model, X, y, *, epochs=1, batch_size=100, optimizer=None, scheduler=None, X_test=None,
            y_test=None, routine=None, chunk_size=2, train_head=True, threads=None, isolate=True,
            random_state=0):
    """Train ``model`` with fflib and its PyTorch twin (:func:`to_module` + :class:`TorchFF`) side
    by side: the same initial weights, minibatches, negative labels and learning-rate schedule.

    ``optimizer``: an fflib optimiser of ``model`` (``fflib.Adam``/``fflib.SGD``, default
    ``fflib.Adam(model)``), copied to ``torch.optim``; ``scheduler``: an fflib scheduler of that
    optimiser (anything with ``lr_at(epoch)``), applied per epoch on both sides.
    ``routine``/``chunk_size``: a training routine of :mod:`fflib.routines` for both.
    ``threads``: threads of both libraries (default fflib's current count).  Accuracy is measured
    on (``X_test``, ``y_test``), else on the training data.  ``isolate=True`` trains each side in
    a fresh Python process (the model passes through ``FFModel.save``), so that neither side's
    memory, already-resident allocator pools or thread pools affect the other's numbers;
    ``isolate=False`` trains both in this process, fflib first (quicker; the memory figures then
    only count memory that this process had not used before).  Either way ``model`` ends as
    fflib trained it, in eval mode.

    Returns a dict: ``"fflib"`` and ``"torch"``, each with ``train_seconds`` (wall time of the
    training loop), ``peak_mb`` (the peak resident memory during training minus the resident
    memory just before it, from Linux's VmHWM; None where it cannot be measured),
    ``multi_pass`` and ``one_pass`` accuracy (fractions; ``one_pass`` None without a head),
    ``block_accuracy`` (per unit) and ``losses`` (mean block and head losses of the last epoch);
    and ``"epochs"``, ``"batch_size"``, ``"threads"``, ``"samples"``, ``"isolated"``,
    ``"torch_version"``.
    """
    import fflib
    from .nn import FFModel, as_float32_batch
    if not isinstance(model, FFModel):
        raise TypeError(f"model must be an fflib.FFModel, got {type(model).__name__}")
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if scheduler is not None and not hasattr(scheduler, "lr_at"):
        raise TypeError(f"scheduler must be an fflib scheduler (with lr_at), got {type(scheduler).__name__}")
    if threads is not None and (isinstance(threads, bool) or int(threads) != threads or not 1 <= threads <= 64):
        raise ValueError(f"threads must be None or an int in [1, 64], got {threads!r}")
    X = as_float32_batch(X, "X", int(np.prod(model.input_shape)))
    y = model._check_y(y, X.shape[0])
    if X_test is None:
        X_eval, y_eval = X, y
    else:
        X_eval = as_float32_batch(X_test, "X_test", X.shape[1])
        y_eval = model._check_y(y_test, X_eval.shape[0], "y_test")
    if optimizer is None:
        optimizer = fflib.Adam(model)
    _optimizer_settings(optimizer)   # an fflib Adam, AdamW or SGD
    if optimizer.model is not model:
        raise ValueError("optimizer must be an optimiser of this model")
    if routine is not None:
        from .routines import block_ranges
        model.set_block_ranges(block_ranges(model, routine, chunk_size))
    lr0 = optimizer.lr
    factors = [1.0 if scheduler is None or lr0 == 0 else scheduler.lr_at(e) / lr0 for e in range(int(epochs))]
    old = fflib.get_num_threads(), torch.get_num_threads()
    threads = old[0] if threads is None else int(threads)
    plan = {"epochs": int(epochs), "batch_size": int(batch_size), "factors": factors,
            "train_head": bool(train_head) and model.has_head, "random_state": random_state, "threads": threads,
            "units": model.default_blocks()}
    if isolate and not isinstance(random_state, (int, np.integer, type(None))):
        raise ValueError("isolate=True needs random_state as an int or None (it is sent to another process)")
    model.train()
    if isolate:
        out = _run_isolated(model, optimizer, X, y, X_eval, y_eval, plan)
    else:
        fflib.set_num_threads(threads)
        torch.set_num_threads(threads)
        try:
            twin = TorchFF(model, optimizer)   # from the initial weights
            out = {"fflib": _train_side("fflib", model, optimizer, X, y, X_eval, y_eval, plan)}
            out["torch"] = _train_side("torch", None, optimizer, X, y, X_eval, y_eval, plan, twin=twin)
        finally:
            fflib.set_num_threads(old[0])
            torch.set_num_threads(old[1])
    optimizer.lr = lr0
    model.eval()
    out.update(epochs=int(epochs), batch_size=int(batch_size), threads=threads, samples=int(len(y)),
               isolated=bool(isolate), torch_version=torch.__version__)
    return out
