"""Layers and the FF model: thin Python objects over the compiled network (csrc/ff_net.c).

A model is a sequence of layers cut into *blocks*; each block is trained by its own local
loss on the goodness of its output, and gradients never cross a block boundary.  By default
every Linear/Conv2d starts a new block (Hinton's greedy layer-local FF).
"""
import io
import json

import numpy as np

from ._loader import _core

LOSSES = {"ff": 0, "symba": 1, "cwc": 2, "pvn": 3, "xent": 4}
GOODNESS = {"sum": 0, "mean": 1}
NORMS = {"none": 0, "l2": 1, "rms": 2}
LABEL_ENCODINGS = {"onehot": 0, "fourier": 1, "embedding": 2, "none": 3}
_P_WEIGHT, _P_BIAS, _P_RMEAN, _P_RVAR = 0, 1, 2, 3
_P_GW, _P_GB, _P_MW, _P_MB, _P_VW, _P_VB = 4, 5, 6, 7, 8, 9
FORMAT_VERSION = 1


def _choice(name, value, table):
    if value not in table:
        raise ValueError(f"{name} must be one of {sorted(table)}, got {value!r}")
    return table[value]


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class Layer:
    """Base class of fflib layers.  After the layer joins an :class:`FFModel`, its parameter
    arrays (``weight``, ``bias``, ...) are NumPy views of the C core's memory: in-place changes
    are seen by both sides."""

    kind = "layer"

    def __init__(self):
        self._model = None
        self._index = None

    def _bind(self, model, index):
        self._model, self._index = model, index

    def _param(self, which):
        if self._model is None:
            raise RuntimeError(f"{type(self).__name__} has no parameters until it joins an FFModel")
        return self._model._net.param(self._index, which)

    @property
    def weight(self):
        """Weight array (a view of the C parameter memory), or None."""
        return self._param(_P_WEIGHT)

    @property
    def bias(self):
        """Bias array (a view of the C parameter memory), or None."""
        return self._param(_P_BIAS)

    @property
    def grad_weight(self):
        """Gradient of the weight from the last :meth:`FFModel.compute_grads`, or None."""
        return self._param(_P_GW)

    @property
    def grad_bias(self):
        """Gradient of the bias from the last :meth:`FFModel.compute_grads`, or None."""
        return self._param(_P_GB)

    def config(self):
        """The constructor arguments, as a JSON-able dict."""
        return {}

    def _add_to(self, net, in_shape):
        raise TypeError(f"{type(self).__name__} is not a layer the C core knows")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class Linear(Layer):
    """Fully connected layer: ``out = x W^T + b`` with W of shape (out_features, in_features).

    ``in_features`` is checked against the incoming size when the model is built (pass None
    to infer it)."""

    kind = "linear"

    def __init__(self, in_features, out_features=None, bias=True):
        super().__init__()
        if out_features is None:  # Linear(out) form
            in_features, out_features = None, in_features
        self.in_features = None if in_features is None else _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        self.use_bias = bool(bias)

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.use_bias}

    def _add_to(self, net, in_size):
        if self.in_features is not None and self.in_features != in_size:
            raise ValueError(f"Linear(in_features={self.in_features}) receives {in_size} features "
                             "from the layer before it")
        net.add_linear(self.out_features, self.use_bias)


class ReLU(Layer):
    """Rectified linear unit (in place inside a block)."""

    kind = "relu"

    def _add_to(self, net, in_size):
        net.add_relu()


class LenNorm(Layer):
    """Length normalisation of each sample: ``x / (||x|| + eps)`` ("l2", Hinton's) or
    ``x / sqrt(mean(x^2) + eps)`` ("rms").  What one FF block passes to the next: only the
    direction of the activity vector, not its goodness."""

    kind = "lennorm"

    def __init__(self, norm="l2", eps=1e-4):
        super().__init__()
        _choice("norm", norm, NORMS)
        if not (eps >= 0) or not np.isfinite(eps):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.norm, self.eps = norm, float(eps)

    def config(self):
        return {"norm": self.norm, "eps": self.eps}

    def _add_to(self, net, in_shape):
        net.add_lennorm(NORMS[self.norm], self.eps)


class Flatten(Layer):
    """Flatten (C, H, W) to C*H*W features (free: no copy)."""

    kind = "flatten"

    def _add_to(self, net, in_size):
        net.add_flatten()


class Conv2d(Layer):
    """2-D convolution over NCHW input: weight (out_channels, in_channels/groups, k, k)."""

    kind = "conv2d"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True):
        super().__init__()
        self.in_channels = None if in_channels is None else _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.kernel_size = _positive_int("kernel_size", kernel_size)
        self.stride = _positive_int("stride", stride)
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"padding must be an int >= 0, got {padding!r}")
        self.padding = int(padding)
        self.groups = _positive_int("groups", groups)
        self.use_bias = bool(bias)

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "groups": self.groups, "bias": self.use_bias}

    def _add_to(self, net, in_shape):
        if self.in_channels is not None and self.in_channels != in_shape[0]:
            raise ValueError(f"Conv2d(in_channels={self.in_channels}) receives {in_shape[0]} channels")
        net.add_conv2d(self.out_channels, self.kernel_size, self.stride, self.padding, self.groups,
                       self.use_bias)


class BatchNorm2d(Layer):
    """Batch normalisation over (N, H, W) per channel, PyTorch semantics (train/eval modes)."""

    kind = "batchnorm2d"

    def __init__(self, num_features=None, eps=1e-5, momentum=0.1, affine=True):
        super().__init__()
        self.num_features = num_features
        if not (eps > 0):
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if not (0 <= momentum <= 1):
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.eps, self.momentum, self.affine = float(eps), float(momentum), bool(affine)

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine}

    @property
    def running_mean(self):
        """Running mean (C,), a view of the C core's buffer."""
        return self._param(_P_RMEAN)

    @property
    def running_var(self):
        """Running (unbiased) variance (C,), a view of the C core's buffer."""
        return self._param(_P_RVAR)

    def _add_to(self, net, in_shape):
        if self.num_features is not None and self.num_features != in_shape[0]:
            raise ValueError(f"BatchNorm2d({self.num_features}) receives {in_shape[0]} channels")
        net.add_batchnorm2d(self.eps, self.momentum, self.affine)


class MaxPool2d(Layer):
    """Max pooling (no padding); stride defaults to the kernel size."""

    kind = "maxpool2d"

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = _positive_int("kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else _positive_int("stride", stride)

    def config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride}

    def _add_to(self, net, in_shape):
        net.add_maxpool2d(self.kernel_size, self.stride)


LAYER_TYPES = {cls.kind: cls for cls in (Linear, ReLU, Flatten, Conv2d, BatchNorm2d, MaxPool2d, LenNorm)}


def mlp(sizes, norm="l2", eps=1e-4, normalize_input=True, bias=True):
    """Layers of an FF MLP: ``mlp([784, 500, 100])`` gives LenNorm, Linear(784, 500), ReLU,
    LenNorm, Linear(500, 100), ReLU: every FF layer sees a length-normalised input (the raw
    input too unless ``normalize_input=False``); ``norm="none"`` leaves the LenNorm layers out."""
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least an input and one layer size, got {sizes!r}")
    _choice("norm", norm, NORMS)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if norm != "none" and (i > 0 or normalize_input):
            layers.append(LenNorm(norm, eps))
        layers += [Linear(a, b, bias=bias), ReLU()]
    return layers


def as_array(x, name):
    """``x`` as a NumPy array: arrays pass through; a torch tensor or any other DLPack producer
    (``__dlpack__``) on the CPU becomes a zero-copy view (``np.from_dlpack``); anything else is
    returned as it is."""
    if isinstance(x, np.ndarray) or not hasattr(x, "__dlpack__"):
        return x
    if getattr(x, "requires_grad", False):  # torch refuses to export a tensor in autograd
        x = x.detach()
    try:
        return np.from_dlpack(x)
    except (BufferError, RuntimeError, TypeError, ValueError) as e:
        raise TypeError(f"{name}: cannot read this {type(x).__name__} through DLPack ({e}); "
                        "pass a CPU tensor or a numpy array") from None


def _label_slots(placement, encoding, input_shape, K):
    """Extra input values the label takes: K for an appended one-hot label, else 0."""
    _choice("label_placement", placement, {"overwrite": 0, "append": 1})
    if placement == "overwrite":
        return 0
    if encoding != "onehot" or input_shape[1] * input_shape[2] != 1:
        raise ValueError(f"label_placement 'append' needs label_encoding 'onehot' and a flat input "
                         f"(input_shape (D, 1, 1)), got label_encoding {encoding!r} and input_shape "
                         f"{input_shape}")
    return K


def as_float32_batch(x, name, input_size):
    """Convert once, explicitly, to the C-contiguous float32 (B, input_size) the core wants
    (no copy when ``x`` already is one, including a CPU tensor read through DLPack)."""
    a = np.asarray(as_array(x, name))
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numeric, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim < 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch of samples, got shape {a.shape}")
    a = a.reshape(a.shape[0], -1)
    if a.shape[1] != input_size:
        raise ValueError(f"{name} must have {input_size} values per sample, got {a.shape[1]}")
    return a


class FFModel:
    """A Forward-Forward network: layers cut into locally trained blocks.

    Parameters
    ----------
    layers : list of Layer
        E.g. ``fflib.mlp([784, 500, 100])``.
    input_shape : int or (C, H, W)
        Shape of one sample (an int for a flat vector).
    num_classes : int
        K, the number of classes.
    blocks : list of int, optional
        Block ends (exclusive layer indices); default: a new block at every Linear/Conv2d.
    loss : {"ff", "symba", "cwc", "pvn", "xent"}
        FF softplus loss with threshold (eq. 1); SymBa; channel-wise competitive CwC (softmax
        cross-entropy over the K channel-group goodness values, eq. 3) or PvN (FF loss of the
        true group's goodness against the mean of the others), mixed by ``pvn_weight``; or
        softmax cross-entropy on a K-wide output (the backprop baseline).  The last three need
        no label in the input and no negatives.
    threshold : float
        theta of the FF and PvN losses.
    alpha : float
        SymBa scale.
    goodness : {"sum", "mean"}
        Sum or mean of squared activities (FF, SymBa).
    norm : {"l2", "rms", "none"}
        Normalisation of the one-pass head's input features; ``norm_eps`` its epsilon.  (The
        normalisation between blocks is a :class:`LenNorm` layer in ``layers``.)
    label_encoding : {"onehot", "fourier", "embedding", "none"}
        How the label enters the input: one-hot in the first K values of a flat input (it replaces
        them, or with ``label_placement="append"`` occupies K extra values) and in the first K
        pixels of EVERY channel plane of an image; a per-class plane wave added to the image
        (Scodellaro et al. 2024; class k has orientation pi k/K and wavelength
        max(H, W)/(2 + k mod 3) pixels; images only); a trained extra input channel holding one
        (H, W) map per class (Dooms et al. 2023), trained by block 0's loss (so the first layer
        sees C+1 channels); or none (channel-wise competitive learning needs no label in the input).
    label_placement : {"overwrite", "append"}
        For one-hot labels on a flat input: "overwrite" writes the label over the first K
        features (Hinton's MNIST recipe: those pixels are always black); "append" widens the
        network's input to K + D values, the K label values first and all D features after
        them, so no feature is lost (tabular data).  Inputs stay (B, D): the model copies each
        batch into the wider row.  The first Linear then has ``in_features`` D (as the user
        sees the data) and a weight of shape (out, K + D) whose first K columns read the label.
    label_value : float
        One-hot value, Fourier amplitude, or embedding initial scale; the neutral label is the
        mean over classes (label_value/K for one-hot).
    head_blocks : "auto", None or list of int
        Blocks whose normalised outputs feed the one-pass softmax head; "auto" = blocks 2..L
        (all but the first, as in Hinton's paper; the only block if there is one); None = no head.
        Indices count from the end when negative (``[-2, -1]``: the last two blocks).
    seed : int
        Initialisation and negative-label sampling seed.
    """

    def __init__(self, layers, input_shape, num_classes=10, *, blocks=None, loss="ff", threshold=2.0,
                 alpha=4.0, goodness="sum", norm="l2", norm_eps=1e-4, pvn_weight=0.0,
                 label_value=1.0, label_encoding="onehot", label_placement="overwrite", head_blocks="auto",
                 seed=0):
        if not layers:
            raise ValueError("layers must be a non-empty list of fflib layers (a model needs at least one layer)")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}] must be an fflib Layer, got {type(layer).__name__}")
            if layer._model is not None:
                raise ValueError(f"layers[{i}] already belongs to another FFModel")
        if isinstance(input_shape, (int, np.integer)):
            input_shape = (int(input_shape), 1, 1)
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) == 1:
            input_shape = (input_shape[0], 1, 1)
        if len(input_shape) != 3 or min(input_shape) <= 0:
            raise ValueError(f"input_shape must be a positive int or (C, H, W), got {input_shape!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold!r}")
        if not (alpha > 0):
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if not (norm_eps >= 0):
            raise ValueError(f"norm_eps must be >= 0, got {norm_eps!r}")
        self.layers = list(layers)
        self.input_shape = input_shape
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self._hparams = dict(loss=loss, threshold=float(threshold), alpha=float(alpha),
                             goodness=goodness, norm=norm, norm_eps=float(norm_eps),
                             pvn_weight=float(pvn_weight), label_value=float(label_value))
        self.label_encoding = label_encoding
        _choice("label_encoding", label_encoding, LABEL_ENCODINGS)
        if label_encoding == "fourier" and input_shape[1] * input_shape[2] == 1:
            raise ValueError(f"label_encoding 'fourier' needs an image input (input_shape (C, H, W) with "
                             f"H*W > 1), got input_shape {input_shape}; use 'onehot' for a flat input")
        self.label_placement = label_placement
        # append: the C net sees K + D values per row, the label in the first K (extra) ones
        extra = _label_slots(label_placement, label_encoding, input_shape, self.num_classes)
        shape = (input_shape[0] + extra, 1, 1) if extra else input_shape
        net = _core.Net(shape, self.num_classes, self.seed)
        net.set_label_encoding(LABEL_ENCODINGS[label_encoding])
        if label_encoding == "embedding":  # the label map is one more input channel
            shape = (shape[0] + 1, shape[1], shape[2])
        for i, layer in enumerate(self.layers):
            size = shape[0] * shape[1] * shape[2]
            if extra and isinstance(layer, Linear):  # checked against the D features the user has
                size -= extra
            try:
                layer._add_to(net, size if isinstance(layer, Linear) else shape)
            except ValueError as e:
                raise ValueError(f"layers[{i}] ({layer!r}): {e}") from None
            shape = net.layer_shape(i)
            if isinstance(layer, Linear):
                extra = 0
        self._net = net
        # head: chosen by blocks of the default/explicit cut, stored as layer indices
        ends = net.default_blocks() if blocks is None else [int(e) for e in blocks]
        self._units = list(ends)
        self._head_blocks_arg = head_blocks
        self._head_layers = self._head_layers_for(head_blocks, ends)
        if self._head_layers:
            net.set_head(self._head_layers)
        if blocks is not None:
            net.set_blocks(ends)
        net.finalize()
        self.set_config(**self._hparams)
        for i, layer in enumerate(self.layers):
            layer._bind(self, i)
        self.training = True

    # -------------------------------------------------------------- structure
    def _head_layers_for(self, head_blocks, ends):
        if head_blocks is None:
            return []
        nb = len(ends)
        if isinstance(head_blocks, str):
            if head_blocks != "auto":
                raise ValueError(f"head_blocks must be 'auto', None or a list of block indices, got {head_blocks!r}")
            sel = list(range(1, nb)) if nb > 1 else [0]
        else:  # block indices, negative ones counted from the end (-1: the last block)
            raw = [head_blocks] if isinstance(head_blocks, (int, np.integer)) else list(head_blocks)
            sel = sorted(int(b) % nb for b in raw if -nb <= int(b) < nb)
            if not sel or len(sel) != len(raw) or len(set(sel)) != len(sel):
                raise ValueError(f"head_blocks must be distinct block indices in [-{nb}, {nb}), "
                                 f"got {head_blocks!r}")
        return [ends[b] - 1 for b in sel]

    @property
    def blocks(self):
        """The current cut: a list of (first, last) layer ranges."""
        return self._net.blocks()

    @property
    def num_blocks(self):
        """Number of blocks (locally trained units)."""
        return len(self._net.blocks())

    def set_blocks(self, ends):
        """Re-cut the layers into blocks ending at ``ends`` (exclusive indices).  Parameters and
        optimiser state are untouched, so alternating chunkings between iterations is cheap."""
        self._net.set_blocks([int(e) for e in ends])

    def set_block_ranges(self, ranges):
        """Blocks as (first, last) layer ranges that may overlap (overlapping local updates):
        a layer in two blocks is trained by the sum of both blocks' gradients."""
        ranges = [(int(a), int(b)) for a, b in ranges]
        self._net.set_block_ranges([a for a, _ in ranges], [b for _, b in ranges])

    def default_blocks(self):
        """The model's units (block ends): the ``blocks`` given at construction, else one block
        per Linear/Conv2d with the LenNorm, BatchNorm2d and Flatten layers before it and the
        ReLU/MaxPool2d after it.  Training routines group these units into chunks."""
        return list(self._units)

    def set_config(self, **kw):
        """Change loss, threshold, alpha, goodness, norm, norm_eps, pvn_weight, label_value."""
        unknown = set(kw) - set(self._hparams)
        if unknown:
            raise TypeError(f"unknown FFModel settings: {sorted(unknown)}")
        h = dict(self._hparams, **kw)
        if not np.isfinite(h["threshold"]):
            raise ValueError(f"threshold must be finite, got {h['threshold']!r}")
        if not (h["alpha"] > 0):
            raise ValueError(f"alpha must be > 0, got {h['alpha']!r}")
        if not (0 <= h["pvn_weight"] <= 1):
            raise ValueError(f"pvn_weight must be in [0, 1], got {h['pvn_weight']!r}")
        self._net.set_config(loss=_choice("loss", h["loss"], LOSSES),
                             goodness=_choice("goodness", h["goodness"], GOODNESS),
                             theta=float(h["threshold"]), alpha=float(h["alpha"]),
                             norm=_choice("norm", h["norm"], NORMS), norm_eps=float(h["norm_eps"]),
                             label_value=float(h["label_value"]), pvn_weight=float(h["pvn_weight"]))
        self._hparams = h

    @property
    def config(self):
        """The FF settings (loss, threshold, goodness, norm, ...) as a dict."""
        return dict(self._hparams)

    @property
    def has_head(self):
        """Whether the model has a one-pass softmax head."""
        return bool(self._head_layers)

    @property
    def head_weight(self):
        """One-pass head weight (K, F), a view of C memory, or None."""
        return self._net.param(-1, _P_WEIGHT) if self.has_head else None

    @property
    def head_bias(self):
        """One-pass head bias (K,), a view of C memory, or None."""
        return self._net.param(-1, _P_BIAS) if self.has_head else None

    @property
    def label_embedding(self):
        """The trained label maps (K, H*W) of ``label_encoding="embedding"`` (a view), or None."""
        return self._net.param(-2, _P_WEIGHT)

    def trainable_layers(self):
        """Indices of layers with parameters, then -2 for a label embedding and -1 for the head."""
        idx = [i for i in range(len(self.layers)) if self._net.param(i, _P_WEIGHT) is not None
               or self._net.param(i, _P_BIAS) is not None]
        return idx + ([-2] if self.label_embedding is not None else []) + ([-1] if self.has_head else [])

    def parameters(self):
        """All trainable arrays (views of C memory), layer by layer, head last."""
        out = []
        for i in self.trainable_layers():
            for which in (_P_WEIGHT, _P_BIAS):
                p = self._net.param(i, which)
                if p is not None:
                    out.append(p)
        return out

    def num_parameters(self, head=False):
        """Number of trainable values (the FF layers; with ``head=True`` the head's too)."""
        n = sum(p.size for p in self.parameters())
        if self.has_head and not head:
            n -= self.head_weight.size + self.head_bias.size
        return int(n)

    def train(self, mode=True):
        """Training mode (batch-norm uses batch statistics); returns self."""
        self.training = bool(mode)
        self._net.set_training(self.training)
        return self

    def eval(self):
        """Evaluation mode (batch-norm uses running statistics); returns self."""
        return self.train(False)

    def workspace_bytes(self):
        """Bytes of activation workspace the C core holds now."""
        return self._net.info()["workspace_bytes"]

    # -------------------------------------------------------------- training
    def _check_y(self, y, n, name="y"):
        y = np.asarray(y)
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer labels, got dtype {y.dtype}")
        y = np.ascontiguousarray(y, dtype=np.int64).reshape(-1)
        if y.shape[0] != n:
            raise ValueError(f"{name} has {y.shape[0]} labels for {n} samples")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"{name} must be in [0, {self.num_classes}), got range [{y.min()}, {y.max()}]")
        return y

    def train_step(self, x, y, neg_labels=None, active=None, train_head=None):
        """One FF step on a minibatch, entirely in C: positive and negative (and neutral) passes,
        each active block's local loss, backward and optimiser step, and the head.

        x must be float32 C-contiguous (B, ...) with the model's input size (a NumPy array, or a
        CPU torch tensor / DLPack producer, read without a copy); y int64 (B,).
        Returns the per-block losses followed by the head loss (an array of num_blocks + 1)."""
        if train_head is None:
            train_head = self.has_head
        act = None if active is None else np.ascontiguousarray(active, dtype=np.uint8)
        return self._net.train_step(self._input(x, strict=True), y, neg_labels, act, bool(train_head), True)

    def compute_grads(self, x, y, neg_labels=None, active=None, train_head=None):
        """Like :meth:`train_step` but only computes gradients (zeroed first) into the layers'
        ``grad_weight``/``grad_bias``; an optimiser's ``step()`` then applies them."""
        if train_head is None:
            train_head = self.has_head
        act = None if active is None else np.ascontiguousarray(active, dtype=np.uint8)
        return self._net.train_step(self._input(x, strict=True), y, neg_labels, act, bool(train_head), False)

    def zero_grad(self):
        """Zero every gradient."""
        self._net.zero_grad()

    def _input(self, x, name="x", strict=False):
        """What the core reads for input ``x``: DLPack producers viewed as arrays; ``strict``
        (the training step) leaves dtype and layout checks to the core and never copies, else
        x is converted to float32 (B, D) once; with ``label_placement="append"`` each row is
        copied behind K slots that the core fills with the label."""
        x = as_array(x, name)
        D = int(np.prod(self.input_shape))
        if not strict:
            x = as_float32_batch(x, name, D)
        if self.label_placement != "append":
            return x
        # the core's own checks, in the user's terms (D features, not K + D)
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise TypeError(f"{name} must have dtype float32, got {x.dtype}")
        if x.ndim < 2 or int(np.prod(x.shape[1:])) != D:
            raise ValueError(f"{name} must have {D} values per sample (the model's input size), got shape {x.shape}")
        if not x.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (numpy.ascontiguousarray makes a contiguous copy)")
        K = self.num_classes
        wide = np.zeros((x.shape[0], K + D), dtype=np.float32)
        wide[:, K:] = x.reshape(x.shape[0], D)
        return wide

    # -------------------------------------------------------------- inference
    def goodness(self, x):
        """Multi-pass goodness: (B, K, num_blocks), every block's goodness for every label."""
        return self._net.goodness(self._input(x))

    def _block_selection(self, blocks):
        nb = self.num_blocks
        if blocks is None:
            return list(range(nb))
        if isinstance(blocks, (int, np.integer)):
            blocks = [blocks]
        sel = [int(b) % nb if -nb <= int(b) < nb else None for b in blocks]
        if not sel or any(b is None for b in sel):
            raise ValueError(f"blocks must be block indices in [-{nb}, {nb}), got {blocks!r}")
        return sel

    def predict_multipass(self, x, blocks=None):
        """Multi-pass prediction: argmax over labels of goodness summed over ``blocks``
        (default all; e.g. ``blocks=[-2, -1]`` for the last two)."""
        g = self.goodness(x)
        return g[:, :, self._block_selection(blocks)].sum(axis=2).argmax(axis=1)

    def predict_proba(self, x):
        """One-pass class probabilities (B, K) from the softmax head (neutral-label input)."""
        self._need_head()
        return self._net.head_predict(self._input(x))

    def predict_onepass(self, x):
        """One-pass prediction: argmax of the softmax head."""
        return self.predict_proba(x).argmax(axis=1)

    def features(self, x):
        """The one-pass head's input: concatenated normalised activities for neutral-label input."""
        self._need_head()
        return self._net.features(self._input(x))

    def block_accuracy(self, x, y):
        """Per-block multi-pass accuracy (a diagnostic): list of num_blocks fractions."""
        g = self.goodness(x)
        y = self._check_y(y, g.shape[0])
        return [float((g[:, :, b].argmax(axis=1) == y).mean()) for b in range(g.shape[2])]

    def _need_head(self):
        if not self.has_head:
            raise ValueError("this model has no one-pass head (built with head_blocks=None)")

    # -------------------------------------------------------------- state
    def architecture(self):
        """A JSON-able description from which :meth:`from_architecture` rebuilds the model."""
        return {
            "layers": [{"kind": l.kind, **l.config()} for l in self.layers],
            "input_shape": list(self.input_shape), "num_classes": self.num_classes,
            "blocks": [list(r) for r in self.blocks], "head_blocks": self._head_blocks_arg,
            "head_layers": self._head_layers, "seed": self.seed, "config": self.config,
            "label_encoding": self.label_encoding, "label_placement": self.label_placement,
        }

    @classmethod
    def from_architecture(cls, arch):
        """Build an (untrained) model from :meth:`architecture` output."""
        layers = []
        for spec in arch["layers"]:
            spec = dict(spec)
            kind = spec.pop("kind")
            if kind not in LAYER_TYPES:
                raise ValueError(f"unknown layer kind {kind!r} in the architecture")
            if kind == "linear":
                layers.append(Linear(spec["in_features"], spec["out_features"], spec["bias"]))
            else:
                layers.append(LAYER_TYPES[kind](**spec))
        head = arch.get("head_blocks", "auto")
        cfg = arch.get("config", {})
        model = cls(layers, tuple(arch["input_shape"]), arch["num_classes"], head_blocks=head,
                    seed=arch.get("seed", 0), label_encoding=arch.get("label_encoding", "onehot"),
                    label_placement=arch.get("label_placement", "overwrite"), **cfg)
        ranges = [tuple(r) for r in arch["blocks"]]
        if model.blocks != ranges:
            model.set_block_ranges(ranges)
        return model

    def _state_items(self):
        names = {_P_WEIGHT: "weight", _P_BIAS: "bias", _P_RMEAN: "running_mean", _P_RVAR: "running_var"}
        for i in list(range(len(self.layers))) + [-2, -1]:
            prefix = {-1: "head", -2: "label_embedding"}.get(i, f"layers.{i}")
            for which, name in names.items():
                p = self._net.param(i, which)
                if p is not None:
                    yield f"{prefix}.{name}", p

    def state_dict(self):
        """Copies of every parameter and buffer, keyed like ``layers.0.weight`` / ``head.bias``."""
        return {k: v.copy() for k, v in self._state_items()}

    def load_state_dict(self, state):
        """Copy arrays from ``state`` (as made by :meth:`state_dict`) into the C memory."""
        own = dict(self._state_items())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
        for k, dst in own.items():
            src = np.asarray(state[k])
            if src.shape != dst.shape:
                raise ValueError(f"{k}: shape {src.shape} does not match the model's {dst.shape}")
            if not np.all(np.isfinite(src)):
                raise ValueError(f"{k} contains NaN or infinity")
            dst[...] = src

    def optimizer_state(self):
        """Optimiser moments, step counters and the RNG state (for exact resumption)."""
        out = {}
        for i in self.trainable_layers():
            prefix = {-1: "head", -2: "label_embedding"}.get(i, f"layers.{i}")
            for which, name in ((_P_MW, "m_weight"), (_P_MB, "m_bias"), (_P_VW, "v_weight"), (_P_VB, "v_bias")):
                p = self._net.param(i, which)
                if p is not None:
                    out[f"{prefix}.{name}"] = p.copy()
            out[f"{prefix}.step"] = np.array(self._net.get_step(i), dtype=np.int64)
        out["rng"] = np.array(self._net.get_rng(), dtype=np.uint64)
        return out

    def load_optimizer_state(self, state):
        """Restore what :meth:`optimizer_state` returned."""
        for i in self.trainable_layers():
            prefix = {-1: "head", -2: "label_embedding"}.get(i, f"layers.{i}")
            for which, name in ((_P_MW, "m_weight"), (_P_MB, "m_bias"), (_P_VW, "v_weight"), (_P_VB, "v_bias")):
                p = self._net.param(i, which)
                key = f"{prefix}.{name}"
                if p is not None and key in state:
                    p[...] = state[key]
            if f"{prefix}.step" in state:
                self._net.set_step(i, int(state[f"{prefix}.step"]))
        if "rng" in state:
            self._net.set_rng(tuple(int(v) for v in np.asarray(state["rng"], dtype=np.uint64)))

    def save(self, path, optimizer=True):
        """Save architecture, parameters (and optimiser state) to an ``.npz`` file with a
        format version; :meth:`load` restores a model that predicts identically."""
        meta = {"format": "fflib.FFModel", "version": FORMAT_VERSION, "architecture": self.architecture(),
                "training": self.training}
        arrays = {f"param/{k}": v for k, v in self.state_dict().items()}
        if optimizer:
            arrays.update({f"optim/{k}": v for k, v in self.optimizer_state().items()})
            arrays["optim_config"] = np.array(json.dumps(
                {str(i): self._net.get_opt(i) for i in self.trainable_layers()}))
        np.savez(path, __meta__=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path):
        """Load a model written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable fflib model file ({e})") from None
        if "__meta__" not in data:
            raise ValueError(f"{path}: not an fflib model file (no __meta__ entry)")
        meta = json.loads(str(data["__meta__"]))
        if meta.get("format") != "fflib.FFModel":
            raise ValueError(f"{path}: not an fflib model file")
        if meta.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path}: format version {meta['version']} is newer than this fflib "
                             f"supports ({FORMAT_VERSION}); upgrade fflib")
        model = cls.from_architecture(meta["architecture"])
        model.load_state_dict({k[6:]: v for k, v in data.items() if k.startswith("param/")})
        optim = {k[6:]: v for k, v in data.items() if k.startswith("optim/")}
        if optim:
            model.load_optimizer_state(optim)
        if "optim_config" in data:
            for i, cfg in json.loads(str(data["optim_config"])).items():
                cfg = dict(cfg)
                model._net.set_opt(int(i), cfg.pop("kind"), **cfg)
        model.train(meta.get("training", True))
        return model

    def __getstate__(self):
        """Pickling and deepcopy: the model travels as the bytes of :meth:`save` (architecture,
        parameters, optimiser state, mode), so a copy trains and predicts exactly as the original."""
        buf = io.BytesIO()
        self.save(buf)
        return {"fflib.FFModel.npz": buf.getvalue()}

    def __setstate__(self, state):
        model = type(self).load(io.BytesIO(state["fflib.FFModel.npz"]))
        self.__dict__.update(model.__dict__)
        for i, layer in enumerate(self.layers):
            layer._bind(self, i)

    def __repr__(self):
        inner = ",\n  ".join(repr(l) for l in self.layers)
        return (f"FFModel(\n  {inner}\n) input_shape={self.input_shape} num_classes={self.num_classes} "
                f"blocks={self.blocks} head_layers={self._head_layers}")
