"""Layers and the FF model: thin Python objects over the compiled network (csrc/ff_net.c).

A model is a sequence of layers cut into *blocks*; each block is trained by its own local
loss on the goodness of its output, and gradients never cross a block boundary.  By default
every Linear/Conv2d starts a new block (Hinton's greedy layer-local FF).
"""
import contextlib
import inspect
import io
import json
import os

import numpy as np

from ._loader import _core

# The core's enum tables (name -> value), exported by the C core itself: one source of truth.
LOSSES = dict(_core.LOSSES)
#: the losses that read the class from K channel groups of each block's output (no label in the input)
GROUP_LOSSES = ("cwc", "pvn", "df-cwc")
GOODNESS = dict(_core.GOODNESS)
NORMS = dict(_core.NORMS)
LABEL_ENCODINGS = dict(_core.LABEL_ENCODINGS)
_P = _core.PARAM_KINDS
_P_WEIGHT, _P_BIAS, _P_RMEAN, _P_RVAR = _P["weight"], _P["bias"], _P["running_mean"], _P["running_var"]
_P_GW, _P_GB, _P_MW, _P_MB, _P_VW, _P_VB = (_P[k] for k in ("grad_weight", "grad_bias", "m_weight", "m_bias",
                                                             "v_weight", "v_bias"))
FORMAT_VERSION = 2          # 2: block units, optimiser and scheduler objects; version 1 files still load
_F32_MAX = float(np.finfo(np.float32).max)


_HPARAM_KEYS = ("loss", "threshold", "alpha", "goodness", "norm", "norm_eps", "pvn_weight", "label_value", "margin",
                "block_thresholds", "head_dropout")
_MOMENT_NAMES = ((_P_MW, "m_weight"), (_P_MB, "m_bias"), (_P_VW, "v_weight"), (_P_VB, "v_bias"))


class StateDictMismatch(ValueError, KeyError):
    """A state dict whose keys do not match the model's (a ValueError, and a KeyError as before)."""
    __str__ = ValueError.__str__


def _check_array(where, value, shape, nonnegative=False):
    """``value`` as a C-contiguous native float32 array after checking it: a real numeric array
    of ``shape``, finite, within float32's range (``nonnegative``: no value < 0).  Another byte
    order or a float64/integer dtype is converted explicitly after the checks."""
    a = np.asarray(value)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{where} must be a real numeric array, got dtype {a.dtype}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if a.shape != tuple(shape):
        raise ValueError(f"{where}: shape {a.shape} does not match the model's {tuple(shape)}")
    if a.size:
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ValueError(f"{where} contains NaN or infinity")
        big = float(np.max(np.abs(a.astype(np.float64))))
        if big > _F32_MAX:
            raise ValueError(f"{where} holds {big:.4g}, beyond float32's range (|x| <= {_F32_MAX:.4g})")
        if nonnegative and np.any(a < 0):
            raise ValueError(f"{where} must be >= 0 (a variance or second moment), got a minimum of {a.min()!r}")
    return np.ascontiguousarray(a, dtype=np.float32)


@contextlib.contextmanager
def _field(field, file=None):
    """Turn any error while reading ``field`` into one ValueError naming the file and the field."""
    try:
        yield
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RuntimeError,
            MemoryError) as e:
        msg = f"missing key {e.args[0]!r}" if type(e) is KeyError else str(e)
        if isinstance(e, MemoryError):
            msg = f"describes a model too large for this machine's memory ({e})"
        where = f"{file}: " if file is not None else ""
        if isinstance(e, ValueError) and file is not None and msg.startswith(f"{file}: "):
            raise
        raise ValueError(f"{where}field {field!r}: {msg}") from None


def _file_name(path):
    return os.fspath(path) if isinstance(path, (str, os.PathLike)) else repr(path)


def _read_npz(path):
    """(name, {key: array}) of an .npz file, every member read (pickles refused); a missing
    ``.npz`` suffix is added as :func:`numpy.savez` adds it."""
    name = _file_name(path)
    if isinstance(path, (str, os.PathLike)):
        name = os.fspath(path)
        if not os.path.exists(name) and os.path.exists(name + ".npz"):
            name += ".npz"
        if not os.path.exists(name):
            raise FileNotFoundError(2, f"{name}: no such model file")
        if os.path.isdir(name):
            raise IsADirectoryError(21, f"{name}: is a directory, not a model file")
        path = name
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            data = {}
            for k in f.files:
                data[k] = f[k]
    except OSError as e:
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise ValueError(f"{name}: not a readable fflib model file ({type(e).__name__}: {e})") from None
    except ValueError as e:
        if "pickled" not in str(e):
            raise ValueError(f"{name}: not a readable fflib model file ({e})") from None
        # numpy's advice (allow_pickle) is wrong for a file that must be treated as untrusted
        raise ValueError(f"{name}: not a readable fflib model file (it holds pickled objects, which fflib never "
                         f"loads: a model file holds arrays only)") from None
    except Exception as e:     # BadZipFile, EOFError, zlib.error, a truncated member, a bad header...
        raise ValueError(f"{name}: not a readable fflib model file ({type(e).__name__}: {e})") from None
    return name, data


def _atomic_savez(path, arrays):
    """np.savez through a temporary file that is synced and renamed over ``path``; returns the
    path written (``.npz`` appended when missing)."""
    if not isinstance(path, (str, os.PathLike)):
        np.savez(path, **arrays)     # a file object: the caller owns it
        return path
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(2, f"cannot write {path}: directory {parent} does not exist")
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):     # make the rename itself durable
        fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def _native_order(**arrays):
    """Reject arrays in a byte order other than the machine's: the training step reads them
    without a copy, and foreign bytes would be read as native numbers."""
    for name, a in arrays.items():
        if isinstance(a, np.ndarray) and not a.dtype.isnative:
            raise ValueError(f"{name} has byte order {a.dtype.str!r}, not the machine's; convert it "
                             f"explicitly, e.g. {name}.astype({name}.dtype.newbyteorder('='))")


def _train_head_flag(train_head, default):
    if train_head is None:
        return default
    if not isinstance(train_head, (bool, np.bool_)):
        raise TypeError(f"train_head must be None, True or False, got {train_head!r}")
    return bool(train_head)


def _active_mask(active, num_blocks, name="active"):
    """None, or the (num_blocks,) uint8 0/1 mask of blocks to train: booleans, or integral
    numbers 0 and 1 (a fractional value is an error, not truncated)."""
    if active is None:
        return None
    a = np.asarray(active)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a mask of 0/1 per block, got dtype {a.dtype}")
    if a.shape != (num_blocks,):
        raise ValueError(f"{name} must have one 0/1 entry per block ({num_blocks}), got shape {a.shape}")
    if not np.all((a == 0) | (a == 1)):
        raise ValueError(f"{name} must hold only 0 and 1 (or booleans), got {a.tolist()!r}")
    return np.ascontiguousarray(a, dtype=np.uint8)


def _choice(name, value, table):
    if not isinstance(value, str) or value not in table:
        raise ValueError(f"{name} must be one of {sorted(table)}, got {value!r}")
    return table[value]


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 < value < 2 ** 31:
        raise ValueError(f"{name} must be a positive int below 2**31, got {value!r}")
    return int(value)


def _real(name, value, lo=None, hi=None, lo_open=False, hi_open=False):
    """``value`` as a float after checking it is a finite real number float32 can hold (the C
    core computes in float32) and lies in [lo, hi] (an open end when ``lo_open``/``hi_open``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        v = float(value)
    except OverflowError:
        v = float("inf")
    if not np.isfinite(v) or abs(v) > _F32_MAX:
        raise ValueError(f"{name} must be finite and within float32's range (|x| <= {_F32_MAX:.4g}), "
                         f"got {value!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo:g}"
                         + ("" if hi is None else f" and {'<' if hi_open else '<='} {hi:g}") + f", got {value!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi:g}"
                         + ("" if lo is None else f" and {'>' if lo_open else '>='} {lo:g}") + f", got {value!r}")
    return v


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
        """Gradient of the weight from the last :meth:`FFModel.compute_grads` (a view of the full
        gradient arena), or None before any compute_grads: a fused ``train_step`` keeps one
        block's gradients at a time and never fills that arena.  Reading it allocates nothing
        and does not change how later steps use memory."""
        return self._param(_P_GW)

    @property
    def grad_bias(self):
        """Gradient of the bias from the last :meth:`FFModel.compute_grads`, or None (see
        :attr:`grad_weight`)."""
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
        self.norm, self.eps = norm, _real("eps", eps, lo=0.0, lo_open=True)

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
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or not 0 <= padding < 2 ** 31:
            raise ValueError(f"padding must be an int in [0, 2**31), got {padding!r}")
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
        self.num_features = None if num_features is None else _positive_int("num_features", num_features)
        self.eps = _real("eps", eps, lo=0.0, lo_open=True)
        self.momentum = _real("momentum", momentum, lo=0.0, hi=1.0)
        self.affine = bool(affine)

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


def _int_list(name, values):
    """A list of Python ints from a sequence of integers (no floats, no bools)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a list of ints, got {type(values).__name__} {values!r}")
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be a list of ints, got an element {v!r} ({type(v).__name__})")
        out.append(int(v))
    return out


def _shape3(name, shape):
    """(C, H, W) from an int or a sequence of 1 or 3 positive ints."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape,)
    try:
        dims = _int_list(name, shape)
    except TypeError:
        raise TypeError(f"{name} must be a positive int or (C, H, W), got {shape!r}") from None
    if len(dims) == 1:
        dims = dims + [1, 1]
    if len(dims) != 3 or min(dims) <= 0:
        raise ValueError(f"{name} must be a positive int or (C, H, W), got {shape!r}")
    if dims[0] * dims[1] * dims[2] >= 2 ** 31:
        raise ValueError(f"{name} {tuple(dims)} has C*H*W = {dims[0] * dims[1] * dims[2]} values per sample, "
                         "more than the 2**31 - 1 the core supports")
    return tuple(dims)


def _check_hparams(h):
    """The FF settings checked and normalised (floats float32 can hold)."""
    _choice("loss", h["loss"], LOSSES)
    _choice("goodness", h["goodness"], GOODNESS)
    _choice("norm", h["norm"], NORMS)
    bt = h.get("block_thresholds")
    if bt is not None:
        if isinstance(bt, (str, bytes)) or not hasattr(bt, "__len__") or len(bt) == 0:
            raise ValueError(f"block_thresholds must be None or a non-empty sequence of numbers (one threshold "
                             f"per block), got {bt!r}")
        bt = [_real(f"block_thresholds[{i}]", v) for i, v in enumerate(bt)]
    threshold = _real("threshold", h["threshold"])
    if h["loss"] == "ff" and str(h["goodness"]).startswith("neg-"):
        # minus the goodness is <= 0: a threshold >= 0 leaves the positive rows nothing to reach
        for name, t in ([("threshold", threshold)] if bt is None else
                        [(f"block_thresholds[{i}]", v) for i, v in enumerate(bt)]):
            if not np.float32(t) < 0:   # as the core holds it
                what = "mean" if h["goodness"].endswith("mean") else "sum"
                raise ValueError(f"loss 'ff' with goodness {h['goodness']!r} (minus the {what} of squares, <= 0) needs "
                                 f"a negative {name}: positive rows are pushed above it, i.e. their {what} of squares "
                                 f"below minus it; got {t!r} (e.g. {-abs(t) or -2.0!r})")
    return dict(h, threshold=threshold, block_thresholds=bt,
                alpha=_real("alpha", h["alpha"], lo=0.0, lo_open=True),
                norm_eps=_real("norm_eps", h["norm_eps"], lo=0.0, lo_open=True),
                pvn_weight=_real("pvn_weight", h["pvn_weight"], lo=0.0, hi=1.0),
                label_value=_real("label_value", h["label_value"]),
                margin=_real("margin", h["margin"], lo=0.0),
                head_dropout=_real("head_dropout", h.get("head_dropout", 0.0), lo=0.0, hi=1.0, hi_open=True))


def _check_loss_fits(model, loss, ranges):
    """Reject a loss the network cannot carry: the channel-wise losses read K channel groups from
    the last layer of every block, cross-entropy K logits.  FF and SymBa with label_encoding 'none'
    train only on explicit negatives (``x_neg``: self-contrastive or hybrid pairs); the core says so
    if a step without them, or a goodness score, is asked of such a net.  DF scores every label of
    each sample, so it needs the label in the input."""
    K = model.num_classes
    if loss == "ae" and model.label_encoding != "none":
        raise ValueError(f"loss 'ae' (the UFF autoencoder cell) reconstructs each block's input without labels: "
                         f"it needs label_encoding='none', got {model.label_encoding!r}")
    if loss == "df" and model.label_encoding == "none":
        raise ValueError("loss 'df' compares each sample's goodness under every label, but label_encoding "
                         "is 'none'; use loss 'df-cwc' (DF on channel groups), 'cwc', 'pvn' or 'xent', "
                         "or a label encoding")
    if loss not in GROUP_LOSSES + ("xent",):
        return
    for b, (_, end) in enumerate(ranges):
        last = int(end) - 1
        C, H, W = model._net.layer_shape(last)
        if loss == "xent" and C * H * W != K:
            raise ValueError(f"loss 'xent' needs every block to output num_classes={K} logits (one block: "
                             f"blocks=[{len(model.layers)}]), but block "
                             f"{b} ends at layer {last} with {C * H * W} values")
        if loss != "xent" and C % K:
            raise ValueError(f"loss {loss!r} splits the channels of each block's last layer into "
                             f"num_classes={K} groups, but block {b} ends at layer {last} with {C} channels "
                             f"(not divisible by {K})")


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


def _check_input_norm(mean, std, input_shape):
    """(mean, std) float64 arrays checked against input_shape: each a number, C per-channel
    values, or one per input value."""
    C, H, W = input_shape
    D = C * H * W
    out = []
    for name, v in (("mean", mean), ("std", std)):
        try:
            a = np.array(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"input_norm {name} must be a number or an array of numbers, "
                            f"got {type(v).__name__}") from None
        if a.size == 1:    # one number for every value
            a = a.reshape(())
        elif not (a.ndim == 1 and a.size == C) and a.size != D:
            if H * W == 1:    # a flat model: no channels to take per-channel statistics of
                raise ValueError(f"input_norm {name} must be a number or {D} values, one per feature (a flat "
                                 f"model, input_shape {tuple(input_shape)}: per-channel statistics need an "
                                 f"image-shaped model, e.g. input_shape=(3, 32, 32)), got shape {a.shape}")
            raise ValueError(f"input_norm {name} must be a number, {C} per-channel values or {D} values "
                             f"(input_shape {tuple(input_shape)}), got shape {a.shape}")
        if a.ndim and a.size == D and not (a.ndim == 1 and a.size == C):
            a = a.reshape(input_shape if H * W > 1 else (D,))
        if not np.all(np.isfinite(a)):
            raise ValueError(f"input_norm {name} must be finite, got {float(a[~np.isfinite(a)].ravel()[0])}")
        out.append(a)
    if np.any(out[1] <= 0):
        raise ValueError(f"input_norm std must be > 0, got {float(out[1][out[1] <= 0].ravel()[0])}")
    return tuple(out)


def _affine_of(norm, input_shape):
    """(scale, shift) float32 (D,) of a checked (mean, std): scale 1/std, shift -mean/std."""
    mean, std = norm
    C, H, W = input_shape
    if mean.ndim == 0:
        mean, std = np.full(C * H * W, float(mean)), np.full(C * H * W, float(std))
    elif mean.ndim == 1 and mean.size == C and H * W > 1:
        mean, std = np.repeat(mean, H * W), np.repeat(std, H * W)
    mean, std = mean.ravel(), std.ravel()
    return (1.0 / std).astype(np.float32), (-mean / std).astype(np.float32)


def channel_stats(x, input_shape, chunk=4096):
    """Per-channel mean and standard deviation of image data x (N, C, H, W) or (N, C*H*W) with
    ``input_shape`` (C, H, W), over samples and pixels, in float64, computed in chunks of
    ``chunk`` samples (no copy of x): the ``input_norm`` that standardises each channel."""
    input_shape = _shape3("input_shape", input_shape)
    C, H, W = input_shape
    x = as_array(x, "x")
    if not isinstance(x, np.ndarray) or x.ndim < 2 or int(np.prod(x.shape[1:])) != C * H * W or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch of {C * H * W} values per sample (input_shape "
                         f"{input_shape}), got shape {getattr(x, 'shape', None)}")
    mean, m2, n = np.zeros(C), np.zeros(C), 0
    for i in range(0, len(x), int(chunk)):   # chunk statistics merged (Chan et al.'s pairwise update)
        b = np.asarray(x[i:i + int(chunk)], dtype=np.float64).reshape(-1, C, H * W)
        if not np.all(np.isfinite(b)):
            raise ValueError("x must be finite (it holds NaN or inf)")
        nb = b.shape[0] * H * W
        mb = b.mean(axis=(0, 2))
        m2b = np.square(b - mb[:, None]).sum(axis=(0, 2))
        delta = mb - mean
        mean = mean + delta * nb / (n + nb)
        m2 = m2 + m2b + delta * delta * n * nb / (n + nb)
        n += nb
    std = np.sqrt(m2 / n)
    if np.any(std == 0):
        raise ValueError(f"channel {int(np.argmin(std))} of x is constant: it cannot be standardised")
    return mean, std


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


def default_threshold(goodness, width):
    """The FF loss threshold a goodness kind starts from when none is given: 1 per unit for
    mean goodness, ``width`` (the first layer's) for sum goodness, and minus that for the
    "neg-" kinds (positive data is then trained below it)."""
    t = 1.0 if str(goodness).endswith("mean") else float(width)
    return -t if str(goodness).startswith("neg-") else t


def select_blocks(blocks, nb):
    """``blocks`` (None: all; an index or a list, negatives from the end) as distinct indices in
    [0, nb): the blocks whose goodness multi-pass inference sums (FFModel's and TorchFF's)."""
    if blocks is None:
        return list(range(nb))
    if isinstance(blocks, (int, np.integer)):
        blocks = [blocks]
    sel = [int(b) % nb if -nb <= int(b) < nb else None for b in blocks]
    if not sel or any(b is None for b in sel):
        raise ValueError(f"blocks must be block indices in [-{nb}, {nb}), got {blocks!r}")
    if len(set(sel)) != len(sel):
        raise ValueError(f"blocks must be distinct (a block listed twice would count its goodness twice), "
                         f"got {blocks!r}")
    return sel


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
    loss : {"ff", "symba", "df", "cwc", "pvn", "df-cwc", "xent", "ae"}
        FF softplus loss with threshold (eq. 1); SymBa; DF, the Distance-Forward goodness-based
        N-pair margin loss (Wu et al. 2024, arXiv:2408.14925): each sample with its true label
        against the same sample with each of the K - 1 wrong labels,
        ``mean_b log(1 + sum_j exp(g-_jb - g+_b + margin))`` (see :func:`fflib.reference.df_loss`;
        a step runs K rows per sample and ignores given negative labels); channel-wise competitive CwC (softmax
        cross-entropy over the K channel-group goodness values, eq. 3) or PvN (FF loss of the
        true group's goodness against the mean of the others), mixed by ``pvn_weight``; "df-cwc",
        DF's N-pair margin loss on the K channel-group goodness values, one row per sample,
        ``mean_b log(1 + sum_{j != y_b} exp(G_bj - G_by + margin))`` (see
        :func:`fflib.reference.df_cwc_loss`: CwC's cross-entropy with the wrong groups' logits
        raised by the margin); or softmax cross-entropy on a K-wide output (the backprop
        baseline).  The last four need no label in the input and no negatives.
        "ae": the UFF autoencoder cell (Hwang et al. 2024, :mod:`fflib.uff`): each block of the
        cut made here gets a linear decoder back to its input (``decoders``) and the block's loss
        is the mean squared error of its input rebuilt from its output; no labels, no negatives,
        ``label_encoding="none"``, MLP layers only; train with ``fit(..., method="uff")``.
    threshold : float
        theta of the FF and PvN losses (with the FF loss and a "neg-" goodness, which is <= 0,
        it must be negative).
    block_thresholds : sequence of float or None
        One theta per block instead of ``threshold`` (None: every block's is ``threshold``), as
        the SCFF authors' layers have their own (Chen et al. 2025, their code's config: 4 and
        1).  A re-cut into another number of blocks is refused while it is set.
    head_dropout : float in [0, 1)
        Dropout on the one-pass head's input features while the head trains (a train step's
        head; inference never drops): each feature zeroed with this probability, the others
        scaled by 1 / (1 - p), masks from the model's RNG.  The SCFF authors' linear probe uses
        dropout.  Not with pipelined training.
    alpha : float
        SymBa scale.
    margin : float
        DF and df-cwc margin m >= 0 (default 1.0).
    goodness : {"sum", "mean", "neg-sum", "neg-mean"}
        Sum or mean of squared activities (FF, SymBa, DF), or minus it: "minus the sum of the
        squared activities" of Hinton (2022), whose CIFAR-10 nets did 3-5 points better with it
        ("min ssq") under his loss: positive data is trained to low activity and negative data
        to high, and multi-pass picks the label with the least activity.  With the FF loss the
        threshold must then be negative (positive rows are pushed above it, i.e. their sum of
        squares below -theta).  On fflib's CIFAR-10 MLP recipe it helped eq. 1 and not SymBa
        (README, "Where fflib is short of its target").
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
    fourier_modes : None, str or array, optional
        With ``label_encoding="fourier"``: the per-class waves, a table of shape (K, 4) or
        (K, M, 4) with columns wavelength (pixels; a wave of the pixel grid, so at least
        2 max(|cos|, |sin|) of the orientation), orientation (radians), amplitude and phase
        (radians) (a 3-column table leaves the phase at 0); class k adds
        ``label_value * sum_m a cos(2 pi (h cos theta + w sin theta) / lambda + phi)`` to every
        channel plane.  None or "fflib" is the mapping above; see :mod:`fflib.labels` for the
        formula and :func:`fflib.labels.fit_fourier_modes` for modes fitted to the data.
        Saved and loaded with the model.
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
    input_norm : None or (mean, std)
        Standardise every input before the label goes in, ``x' = (x - mean) / std``, in training
        and in every inference (the exported C code too).  ``mean`` and ``std`` are each a
        number, one value per channel (a 1-D array of C values, broadcast over an image's
        H x W), or one value per input value (an array of ``input_shape`` or of its size);
        ``std > 0``, all finite.  :func:`channel_stats` computes per-channel ones from training
        data.  The core applies ``x * (1/std) + (-mean/std)`` in float32 (``input_affine``).
        Saved and loaded with the model; change it with :meth:`set_input_norm`.
    """

    def __init__(self, layers, input_shape, num_classes=10, *, blocks=None, loss="ff", threshold=2.0,
                 alpha=4.0, goodness="sum", norm="l2", norm_eps=1e-4, pvn_weight=0.0,
                 label_value=1.0, label_encoding="onehot", label_placement="overwrite", head_blocks="auto",
                 seed=0, fourier_modes=None, margin=1.0, block_thresholds=None, head_dropout=0.0,
                 input_norm=None):
        if not isinstance(layers, (list, tuple)):
            raise TypeError(f"layers must be a list of fflib layers, got {type(layers).__name__}")
        if not layers:
            raise ValueError("layers must be a non-empty list of fflib layers (a model needs at least one layer)")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}] must be an fflib Layer, got {type(layer).__name__}")
            if layer._model is not None:
                raise ValueError(f"layers[{i}] already belongs to another FFModel")
        input_shape = _shape3("input_shape", input_shape)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2 ** 64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        _choice("label_encoding", label_encoding, LABEL_ENCODINGS)
        hparams = _check_hparams(dict(loss=loss, threshold=threshold, alpha=alpha, goodness=goodness, norm=norm,
                                      norm_eps=norm_eps, pvn_weight=pvn_weight, label_value=label_value,
                                      margin=margin, block_thresholds=block_thresholds,
                                      head_dropout=head_dropout))
        if blocks is not None:
            blocks = _int_list("blocks", blocks)
        self.layers = list(layers)
        self.input_shape = input_shape
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self._hparams = hparams
        self._optimizer = None      # the optimiser last attached (fit without optimizer= goes on with it)
        self.label_encoding = label_encoding
        if label_encoding == "fourier" and input_shape[1] * input_shape[2] == 1:
            raise ValueError(f"label_encoding 'fourier' needs an image input (input_shape (C, H, W) with "
                             f"H*W > 1), got input_shape {input_shape}; use 'onehot' for a flat input")
        self.label_placement = label_placement
        # append: the C net sees K + D values per row, the label in the first K (extra) ones
        extra = _label_slots(label_placement, label_encoding, input_shape, self.num_classes)
        shape = (input_shape[0] + extra, 1, 1) if extra else input_shape
        net = _core.Net(shape, self.num_classes, self.seed)
        net.set_label_encoding(LABEL_ENCODINGS[label_encoding])
        if fourier_modes is not None and label_encoding != "fourier":
            raise ValueError(f"fourier_modes needs label_encoding 'fourier', got label_encoding {label_encoding!r}")
        if label_encoding == "fourier":
            from .labels import check_fourier_modes, fourier_modes as _scheme
            table = _scheme("fflib" if fourier_modes is None else fourier_modes, self.num_classes, input_shape) \
                if fourier_modes is None or isinstance(fourier_modes, str) else \
                check_fourier_modes(fourier_modes, self.num_classes)
            net.set_fourier_modes(table)
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
        ends = net.default_blocks() if blocks is None else blocks
        if blocks is not None:
            net.set_blocks(ends)        # checks the cut
        self._units = list(ends)
        self._head_blocks_arg = head_blocks
        self._head_layers = self._head_layers_for(head_blocks, ends)
        _check_loss_fits(self, hparams["loss"], [(0 if b == 0 else ends[b - 1], e) for b, e in enumerate(ends)])
        if self._head_layers:
            net.set_head(self._head_layers)
        if hparams["loss"] == "ae":   # UFF autoencoder cells: a decoder per block, made at finalize
            try:
                net.set_decoders()
            except ValueError as e:
                raise ValueError(f"loss 'ae': {e}") from None
        net.finalize()
        self.set_config(**self._hparams)
        self._input_norm = None
        self.set_input_norm(input_norm)
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
            raw = _int_list("head_blocks", [head_blocks] if isinstance(head_blocks, (int, np.integer)) else head_blocks)
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
        old = self.blocks
        ends = _int_list("ends", ends)
        self._net.set_blocks(ends)      # checks the cut
        try:
            _check_loss_fits(self, self._hparams["loss"], self.blocks)
            self._set_block_thresholds(self._hparams)
        except ValueError:
            self._net.set_block_ranges([a for a, _ in old], [b for _, b in old])
            self._set_block_thresholds(self._hparams)
            raise

    def set_block_ranges(self, ranges):
        """Blocks as (first, last) layer ranges that may overlap (overlapping local updates):
        a layer in two blocks is trained by the sum of both blocks' gradients."""
        try:
            ranges = [tuple(_int_list("ranges", r)) for r in ranges]
        except TypeError:
            raise TypeError(f"ranges must be a list of (first, end) layer index pairs, got {ranges!r}") from None
        if any(len(r) != 2 for r in ranges):
            raise ValueError(f"ranges must be (first, end) layer index pairs, got {ranges!r}")
        old = self.blocks
        self._net.set_block_ranges([a for a, _ in ranges], [b for _, b in ranges])   # checks the cut
        try:
            _check_loss_fits(self, self._hparams["loss"], ranges)
            self._set_block_thresholds(self._hparams)
        except ValueError:
            self._net.set_block_ranges([a for a, _ in old], [b for _, b in old])
            self._set_block_thresholds(self._hparams)
            raise

    def default_blocks(self):
        """The model's units (block ends): the ``blocks`` given at construction, else one block
        per Linear/Conv2d with the LenNorm, BatchNorm2d and Flatten layers before it and the
        ReLU/MaxPool2d after it.  Training routines group these units into chunks."""
        return list(self._units)

    def set_config(self, **kw):
        """Change loss, threshold, alpha, goodness, norm, norm_eps, pvn_weight, label_value, margin,
        block_thresholds, head_dropout."""
        unknown = set(kw) - set(self._hparams)
        if unknown:
            raise TypeError(f"unknown FFModel settings: {sorted(unknown)}")
        h = _check_hparams(dict(self._hparams, **kw))
        self._check_block_thresholds(h["block_thresholds"])
        if h["loss"] != self._hparams["loss"]:
            _check_loss_fits(self, h["loss"], self.blocks)
        self._net.set_config(loss=_choice("loss", h["loss"], LOSSES),
                             goodness=_choice("goodness", h["goodness"], GOODNESS),
                             theta=float(h["threshold"]), alpha=float(h["alpha"]),
                             norm=_choice("norm", h["norm"], NORMS), norm_eps=float(h["norm_eps"]),
                             label_value=float(h["label_value"]), pvn_weight=float(h["pvn_weight"]),
                             margin=float(h["margin"]), head_dropout=float(h["head_dropout"]))
        self._set_block_thresholds(h)
        self._hparams = h

    def _check_block_thresholds(self, bt):
        if bt is not None and len(bt) != self.num_blocks:
            raise ValueError(f"block_thresholds has {len(bt)} values but the model has {self.num_blocks} blocks "
                             f"(one threshold per block)")

    def _set_block_thresholds(self, h):
        """Give block b the theta ``h["block_thresholds"][b]`` (the C net's per-block loss; a
        re-cut or set_config resets every block to the net's settings)."""
        bt = h.get("block_thresholds")
        if bt is None:
            return
        self._check_block_thresholds(bt)
        for b, theta in enumerate(bt):
            self._net.set_block_loss(b, LOSSES[h["loss"]], GOODNESS[h["goodness"]], float(theta),
                                     float(h["alpha"]), float(h["pvn_weight"]))

    @property
    def config(self):
        """The FF settings (loss, threshold, goodness, norm, ...) as a dict."""
        return dict(self._hparams)

    @property
    def has_head(self):
        """Whether the model has a one-pass softmax head."""
        return bool(self._head_layers)

    @property
    def head_layers(self):
        """The layer indices whose normalised outputs the one-pass head reads, in order (a
        tuple; empty without a head).  Each is the last layer of a block in :attr:`head_blocks`."""
        return tuple(self._head_layers)

    @property
    def head_blocks(self):
        """The block indices (into :attr:`blocks`) whose outputs the one-pass head reads, in
        order (a tuple; empty without a head): what ``head_blocks="auto"`` or a list resolved to."""
        return tuple(b for b, (_, end) in enumerate(self.blocks) if end - 1 in self._head_layers)

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

    @property
    def fourier_modes(self):
        """The (K, M, 4) Fourier mode table (wavelength, orientation, amplitude, phase) of
        ``label_encoding="fourier"`` (a copy), or None."""
        return self._net.fourier_modes()

    @property
    def label_patterns(self):
        """The (K, H*W) float32 label patterns the core adds to every channel plane (before the
        ``label_value`` factor) with ``label_encoding="fourier"`` (a copy), or None."""
        return self._net.label_patterns()

    @property
    def input_norm(self):
        """The input standardisation ``(mean, std)`` as float64 arrays in the shape they were
        given (see the ``input_norm`` parameter), or None."""
        return None if self._input_norm is None else tuple(v.copy() for v in self._input_norm)

    @property
    def input_affine(self):
        """What the core applies to each raw input value, ``(scale, shift)`` float32 arrays of
        the input size (``x * scale + shift``), or None without an input standardisation."""
        return None if self._input_norm is None else _affine_of(self._input_norm, self.input_shape)

    def set_input_norm(self, mean, std=None):
        """Standardise the inputs by ``mean`` and ``std`` (see the ``input_norm`` parameter);
        ``set_input_norm(None)`` turns it off.  A ``(mean, std)`` pair (or a dict with those
        keys) as the only argument is taken too."""
        if std is None and mean is not None:
            pair = mean
            if isinstance(pair, dict):
                if set(pair) != {"mean", "std"}:
                    raise ValueError(f"input_norm as a dict must have the keys 'mean' and 'std', got {sorted(pair)}")
                pair = (pair["mean"], pair["std"])
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"input_norm must be None or a (mean, std) pair, got {type(pair).__name__}")
            mean, std = pair
        if mean is None:
            if std is not None:
                raise ValueError("input_norm: a std without a mean (set_input_norm(None) turns it off)")
            self._input_norm = None
            self._net.set_input_affine(None, None)
            return
        norm = _check_input_norm(mean, std, self.input_shape)
        scale, shift = _affine_of(norm, self.input_shape)
        extra = self._net.info()["input_size"] - scale.size
        if extra:   # label_placement "append": the K label slots in front pass unchanged
            scale = np.concatenate([np.ones(extra, np.float32), scale])
            shift = np.concatenate([np.zeros(extra, np.float32), shift])
        self._net.set_input_affine(scale, shift)
        self._input_norm = norm

    def trainable_layers(self):
        """Indices of layers with parameters, then -2 for a label embedding, ``_core.DECODER - b``
        (-3, -4, ...) for the autoencoder decoder of block b (``loss="ae"``), and -1 for the head."""
        idx = [i for i in range(len(self.layers)) if self._net.param(i, _P_WEIGHT) is not None
               or self._net.param(i, _P_BIAS) is not None]
        return idx + ([-2] if self.label_embedding is not None else []) + self._decoder_indices() + \
            ([-1] if self.has_head else [])

    def _decoder_indices(self):
        return [_core.DECODER - b for b in range(self._net.num_decoders())]

    @property
    def decoders(self):
        """The UFF autoencoder decoders (``loss="ae"``): a list, one per block of the cut made at
        construction, of (weight (in_b, out_b), bias (in_b)) views of C memory mapping block b's
        output back to its input; empty without them."""
        return [(self._net.param(i, _P_WEIGHT), self._net.param(i, _P_BIAS)) for i in self._decoder_indices()]

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

    def train_step(self, x, y, neg_labels=None, active=None, train_head=None, *, x_neg=None, out=None):
        """One FF step on a minibatch, entirely in C: positive and negative (and neutral) passes,
        each active block's local loss, backward and optimiser step, and the head.

        x must be float32 C-contiguous (B, ...) with the model's input size (a NumPy array, or a
        CPU torch tensor / DLPack producer, read without a copy); y int64 (B,).

        x_neg (B, ...) or None: explicit negative samples instead of "same image, wrong label"
        (self-contrastive pairs, hybrid images, another process's activations).  Negative row b
        is ``x_neg[b]`` with ``neg_labels[b]``, else ``y[b]``, else the neutral label; y may be
        None when the loss needs no labels and the head does not train.  Needs a loss with
        negatives (ff, symba, ...).
        out (T, :meth:`train_out_size`) float32 or None: receives the last run block's output
        for the T training rows (positive then negative), computed before its update: the
        input the next stage of a cross-process pipeline trains on.

        Returns the per-block losses followed by the head loss (an array of num_blocks + 1)."""
        return self._step(x, y, neg_labels, active, train_head, x_neg, out, True)

    def compute_grads(self, x, y, neg_labels=None, active=None, train_head=None, *, x_neg=None, out=None):
        """Like :meth:`train_step` but only computes gradients (zeroed first) into the layers'
        ``grad_weight``/``grad_bias``; an optimiser's ``step()`` then applies them.  While it
        runs (the GIL is released), :meth:`progress` tells another thread how many leading
        layers' gradients are final (for exchanging them layer by layer)."""
        return self._step(x, y, neg_labels, active, train_head, x_neg, out, False)

    def _step(self, x, y, neg_labels, active, train_head, x_neg, out, apply):
        # without labels there is nothing for the head to learn from
        train_head = _train_head_flag(train_head, self.has_head and y is not None)
        act = _active_mask(active, self.num_blocks)
        x = self._input(x, strict=True)
        if x_neg is not None:
            x_neg = self._input(x_neg, name="x_neg", strict=True)
        _native_order(x=x, y=y, neg_labels=neg_labels, x_neg=x_neg, out=out)
        return self._net.train_step(x, y, neg_labels, act, bool(train_head), apply, x_neg, out)

    def progress(self):
        """Leading layers whose gradients are final in the step now running (safe to call from
        another thread during :meth:`compute_grads`): 0 when a step starts, the number of
        layers once every block's backward is done, ``len(layers) + 1`` once the head's and the
        label embedding's are too."""
        return self._net.progress()

    def train_out_size(self, active=None):
        """Values per row of :meth:`train_step`'s ``out``: the output size of the last layer
        of the last block a step with ``active`` runs."""
        return self._net.train_out_size(_active_mask(active, self.num_blocks))

    def zero_grad(self):
        """Zero every gradient."""
        self._net.zero_grad()

    # -------------------------------------------------------------- pipelined training
    def pipeline_begin(self, batch_size, active=None, train_head=None):
        """Start pipelined training (Pipeline Forward-Forward, Aktemur et al. 2024): each
        :meth:`pipeline_step` is a tick in which block k trains on the minibatch fed k ticks
        earlier, all blocks of the tick running at once on fflib's threads (each block on one
        thread; a thread whose blocks are done helps the others with their GEMMs and
        elementwise work).  Block k's input for a minibatch is block k-1's output computed before block
        k-1's update on that minibatch, exactly as in :meth:`train_step`, so pipelined training
        gives the same weights as sequential training, bit for bit, on any thread count.

        ``batch_size`` bounds the minibatches fed; ``active`` and ``train_head`` are as in
        :meth:`train_step` and hold until the next begin (drain first).  Blocks must not
        overlap.  Memory: one workspace per block and two activation buffers per boundary."""
        if train_head is None:
            train_head = self.has_head
        act = None if active is None else np.ascontiguousarray(active, dtype=np.uint8)
        self._net.pipeline_begin(_positive_int("batch_size", batch_size), act, bool(train_head))

    def pipeline_step(self, x=None, y=None, neg_labels=None):
        """Feed one minibatch (x None: a drain tick that feeds nothing) and run one tick.
        Returns the losses of the tick: per block (NaN for a block that trained on nothing in
        this tick) and the head's last."""
        if x is None:
            return self._net.pipeline_step()
        x = self._input(x)
        y = self._check_y(y, len(x))
        neg = None if neg_labels is None else self._check_y(neg_labels, len(x), "neg_labels")
        return self._net.pipeline_step(x, y, neg)

    @property
    def pipeline_in_flight(self):
        """Minibatches fed to the pipeline that have not yet passed its last block."""
        return self._net.pipeline_in_flight()

    def pipeline_flush(self):
        """Run drain ticks until every fed minibatch has passed the last block; returns the
        list of their loss arrays."""
        out = []
        while self._net.pipeline_in_flight():
            out.append(self._net.pipeline_step())
        return out

    def pipeline_end(self):
        """Free the pipeline's buffers (minibatches still in flight are dropped)."""
        self._net.pipeline_end()

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
        return select_blocks(blocks, self.num_blocks)

    def predict_multipass(self, x, blocks=None, early_exit=None):
        """Multi-pass prediction: argmax over labels of goodness summed over ``blocks``
        (default all; e.g. ``blocks=[-2, -1]`` for the last two), in block order.

        ``early_exit``: a softmax-confidence threshold, a list of per-block thresholds, or an
        :class:`fflib.EarlyExit` from :meth:`calibrate_early_exit`: each sample stops at the
        first block whose running sum passes it (LightFF; needs ``blocks=None``).  See
        :meth:`predict_early_exit` for the blocks used and the compute saved."""
        if early_exit is not None:
            if blocks is not None:
                raise ValueError("early_exit sums the blocks in order from the first; give blocks=None")
            return self.predict_early_exit(x, early_exit, "multipass").pred
        g = self.goodness(x)
        sel = self._block_selection(blocks)
        s = g[:, :, sel[0]].copy()
        for b in sel[1:]:       # one order of the sum, the one early exit accumulates in
            s += g[:, :, b]
        return s.argmax(axis=1)

    def predict_early_exit(self, x, early_exit, mode="multipass"):
        """Early-exit prediction (LightFF, Aminifar et al. 2024; see :mod:`fflib.early_exit`):
        every sample stops at the first block whose confidence passes ``early_exit`` (a softmax
        threshold for every block, a list of per-block thresholds, or an :class:`fflib.EarlyExit`),
        and the blocks after it are not computed for that sample.  ``mode`` "multipass" or
        "onepass".  Returns an :class:`fflib.early_exit.EarlyExitResult` (``pred``,
        ``blocks_used``, ``mean_blocks``, ``macs_saved_per_image``, ...).  With a threshold that
        never fires (``float("inf")``) the predictions equal :meth:`predict_multipass` /
        :meth:`predict_onepass` exactly."""
        from .early_exit import MODES, resolve, block_macs, EarlyExitResult
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "onepass":
            self._need_head()
        rule, t = resolve(self, early_exit, mode)
        xi = self._input(x)
        pred, used = self._net.predict_early_exit(xi, mode == "onepass", rule, t)
        return EarlyExitResult(pred, used, block_macs(self, mode))

    def calibrate_early_exit(self, x_val, y_val, mode="multipass", rule="softmax", max_drop=0.002, bound="harm"):
        """Choose early-exit thresholds on a validation split (never the test set): the setting
        using the fewest blocks on average whose validation accuracy loss is at most
        ``max_drop`` (a fraction; 0.002 = 0.2 percentage points).  ``bound`` "harm" (default)
        counts the samples early exit gets wrong that prediction without it gets right; "net"
        the plain accuracy difference (see :func:`fflib.early_exit.calibrate`).
        ``rule`` "softmax" (one threshold on the largest softmax probability of the running
        scores) or "lightff" (the paper's: the largest score against the true class's
        ``mean - k std`` per block, k searched).  Returns an :class:`fflib.EarlyExit` for
        :meth:`predict_multipass` / :meth:`predict_onepass` (``mode``) ``early_exit=``."""
        from .early_exit import calibrate
        x_val = as_float32_batch(x_val, "x_val", int(np.prod(self.input_shape)))
        y_val = self._check_y(y_val, x_val.shape[0], "y_val")
        if mode == "onepass":
            self._need_head()
        return calibrate(self, x_val, y_val, mode, rule, max_drop, bound=bound)

    def predict_proba(self, x):
        """One-pass class probabilities (B, K) from the softmax head (neutral-label input)."""
        self._need_head()
        return self._net.head_predict(self._input(x))

    def predict_onepass(self, x, early_exit=None):
        """One-pass prediction: argmax of the softmax head.  ``early_exit`` (see
        :meth:`predict_early_exit`): stop at the first block whose partial head logits (the
        features run so far) pass the threshold."""
        if early_exit is not None:
            return self.predict_early_exit(x, early_exit, "onepass").pred
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
    @property
    def optimizer(self):
        """The optimiser last attached to this model (created on it, or restored by :meth:`load`),
        or None.  :func:`fflib.fit` without ``optimizer=`` goes on with it."""
        return self._optimizer

    @property
    def scheduler(self):
        """The learning-rate schedule attached to :attr:`optimizer`, or None."""
        return None if self._optimizer is None else self._optimizer._scheduler

    def architecture(self):
        """A JSON-able description from which :meth:`from_architecture` rebuilds the model:
        layers, input shape, classes, the units (block ends given at construction), the current
        cut, the head, the seed, the FF settings and the label encoding."""
        return {
            "layers": [{"kind": l.kind, **l.config()} for l in self.layers],
            "input_shape": list(self.input_shape), "num_classes": self.num_classes,
            "units": list(self._units), "blocks": [list(r) for r in self.blocks],
            "head_blocks": self._head_blocks_arg, "head_layers": list(self._head_layers),
            "seed": self.seed, "config": self.config, "label_encoding": self.label_encoding,
            "label_placement": self.label_placement,
            **({"fourier_modes": self.fourier_modes.tolist()} if self.label_encoding == "fourier" else {}),
            **({"input_norm": {"mean": self._input_norm[0].tolist(), "std": self._input_norm[1].tolist()}}
               if self._input_norm is not None else {}),
        }

    @classmethod
    def from_architecture(cls, arch):
        """Build an (untrained) model from :meth:`architecture` output; every field is checked
        and an error names the one that is wrong."""
        if not isinstance(arch, dict):
            raise TypeError(f"architecture must be a dict, got {type(arch).__name__}")
        with _field("architecture.layers"):
            specs = arch["layers"]
            if not isinstance(specs, list) or not specs:
                raise ValueError(f"must be a non-empty list of layer descriptions, got {specs!r}")
        layers = []
        for i, spec in enumerate(specs):
            with _field(f"architecture.layers[{i}]"):
                if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str) \
                        or spec["kind"] not in LAYER_TYPES:
                    raise ValueError(f"must be a dict with 'kind' one of {sorted(LAYER_TYPES)}, got {spec!r}")
                kw = {k: v for k, v in spec.items() if k != "kind"}
                layer_cls = LAYER_TYPES[spec["kind"]]
                unknown = kw.keys() - set(inspect.signature(layer_cls.__init__).parameters) - {"self"}
                if unknown:
                    raise ValueError(f"unknown settings {sorted(unknown)} for a {layer_cls.__name__}")
                if spec["kind"] == "linear":
                    kw.setdefault("in_features", None)
                layers.append(layer_cls(**kw))
        cfg = arch.get("config", {})
        with _field("architecture.config"):
            if not isinstance(cfg, dict) or cfg.keys() - set(_HPARAM_KEYS):
                raise ValueError(f"must be a dict with keys among {list(_HPARAM_KEYS)}, got {cfg!r}")
        units = arch.get("units")
        head = arch.get("head_blocks", "auto")
        # other constructor arguments the description holds (e.g. label_placement)
        known = {"layers", "input_shape", "num_classes", "units", "blocks", "head_blocks", "head_layers",
                 "seed", "config", "label_encoding"}
        params = set(inspect.signature(cls.__init__).parameters)
        extra = {k: v for k, v in arch.items() if k not in known and k in params}
        if arch.get("label_encoding") == "fourier" and "fourier_modes" in extra:
            with _field("architecture.fourier_modes"):
                from .labels import check_fourier_modes
                extra["fourier_modes"] = check_fourier_modes(extra["fourier_modes"], arch.get("num_classes", 0))
        cfg = dict(cfg)
        block_thresholds = cfg.pop("block_thresholds", None)    # set for the saved cut, below
        with _field("architecture"):
            model = cls(layers, arch["input_shape"], arch["num_classes"], blocks=units, head_blocks=head,
                        seed=arch.get("seed", 0), label_encoding=arch.get("label_encoding", "onehot"),
                        **extra, **cfg)
        if units is None and "head_layers" in arch:
            model = model._with_saved_units(arch)    # a version 1 file
        with _field("architecture.head_layers"):
            if "head_layers" in arch and _int_list("head_layers", arch["head_layers"]) != model._head_layers:
                raise ValueError(f"the head reads layers {model._head_layers} after the rebuild, the "
                                 f"description says {arch['head_layers']!r}")
        with _field("architecture.blocks"):
            ranges = [tuple(_int_list("blocks", r)) for r in arch.get("blocks", model.blocks)]
            if model.blocks != ranges:
                model.set_block_ranges(ranges)
        if block_thresholds is not None:
            with _field("architecture.config.block_thresholds"):
                model.set_config(block_thresholds=block_thresholds)
        return model

    def _with_saved_units(self, arch):
        # version 1 files did not hold the units; the head's layers and the saved cut tell them
        if list(self._head_layers) == list(arch["head_layers"]):
            return self
        try:
            ends = [int(b) for _, b in arch["blocks"]]
            if [int(a) for a, _ in arch["blocks"]] != [0] + ends[:-1]:
                return self
            return type(self).from_architecture(dict(arch, units=ends))
        except (ValueError, TypeError, KeyError):
            return self

    def _state_items(self):
        names = {_P_WEIGHT: "weight", _P_BIAS: "bias", _P_RMEAN: "running_mean", _P_RVAR: "running_var"}
        for i in list(range(len(self.layers))) + [-2] + self._decoder_indices() + [-1]:
            prefix = self._prefix(i)
            for which, name in names.items():
                p = self._net.param(i, which)
                if p is not None:
                    yield f"{prefix}.{name}", p

    def state_dict(self):
        """Copies of every parameter and buffer, keyed like ``layers.0.weight`` / ``head.bias``."""
        return {k: v.copy() for k, v in self._state_items()}

    def load_state_dict(self, state):
        """Copy arrays from ``state`` (as made by :meth:`state_dict`) into the C memory.  Every
        array is checked first (shape, finite, within float32's range, running variances >= 0;
        other byte orders and float dtypes converted explicitly); nothing changes on an error."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of arrays from state_dict(), got {type(state).__name__}")
        own = dict(self._state_items())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise StateDictMismatch(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
        checked = {k: _check_array(k, state[k], dst.shape, nonnegative=k.endswith("running_var"))
                   for k, dst in own.items()}
        for k, dst in own.items():
            dst[...] = checked[k]

    @staticmethod
    def _prefix(i):
        if i <= _core.DECODER:
            return f"decoders.{_core.DECODER - i}"
        return {-1: "head", -2: "label_embedding"}.get(i, f"layers.{i}")

    def _layer_prefixes(self):
        return {i: self._prefix(i) for i in self.trainable_layers()}

    def optimizer_state(self):
        """Optimiser moments, step counters and the RNG state (for exact resumption)."""
        out = {}
        for i, prefix in self._layer_prefixes().items():
            for which, name in _MOMENT_NAMES:
                p = self._net.param(i, which)
                if p is not None:
                    out[f"{prefix}.{name}"] = p.copy()
            out[f"{prefix}.step"] = np.array(self._net.get_step(i), dtype=np.int64)
        out["rng"] = np.array(self._net.get_rng(), dtype=np.uint64)
        return out

    def load_optimizer_state(self, state):
        """Restore what :meth:`optimizer_state` returned, after checking every entry (moments
        finite, second moments >= 0, steps >= 0, an RNG state of four uint64 not all zero)."""
        from .optim import _check_layer_state, _write_layer_state
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from optimizer_state(), got {type(state).__name__}")
        prefixes = self._layer_prefixes()
        known = {f"{p}.{n}" for p in prefixes.values() for n in ("m_weight", "m_bias", "v_weight", "v_bias", "step")}
        unexpected = sorted(set(state) - known - {"rng"})
        if unexpected:
            raise ValueError(f"optimizer state has entries for no layer of this model: {unexpected}")
        per_layer = {}
        for i, prefix in prefixes.items():
            s = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
            per_layer[i] = _check_layer_state(self, i, s, prefix)
        rng = None
        if "rng" in state:
            r = np.asarray(state["rng"])
            if r.shape != (4,) or r.dtype.kind not in "iu" or (r.dtype.kind == "i" and (r < 0).any()):
                raise ValueError(f"rng must be 4 unsigned 64-bit ints, got {r.dtype} array of shape {r.shape}")
            rng = tuple(int(v) for v in r)
            if not any(rng):
                raise ValueError("rng state must not be all zero")
        for i, s in per_layer.items():
            _write_layer_state(self, i, s)
        if rng is not None:
            self._net.set_rng(rng)

    def save(self, path, optimizer=True):
        """Save everything that defines the model to an ``.npz`` file (``.npz`` is appended when
        missing, as NumPy does; the path written is returned): the architecture with its block
        cut and head, the FF settings and label encoding, parameters and batch-norm running
        statistics, and with ``optimizer=True`` each layer's optimiser kind, settings, moments
        and step, the optimiser and schedule objects attached to the model, and the C core's
        RNG.  The file is written to a temporary name, synced and renamed, so an existing file
        is replaced only by a complete one.  :meth:`load` restores a model that predicts and
        trains on identically."""
        return _atomic_savez(path, self._serialise(optimizer))

    def _serialise(self, optimizer=True):
        from . import __version__
        meta = {"format": "fflib.FFModel", "version": FORMAT_VERSION, "fflib_version": __version__,
                "architecture": self.architecture(), "training": self.training}
        arrays = {f"param/{k}": v for k, v in self.state_dict().items()}
        if optimizer:
            arrays.update({f"optim/{k}": v for k, v in self.optimizer_state().items()})
            arrays["optim_config"] = np.array(json.dumps(
                {str(i): self._net.get_opt(i) for i in self.trainable_layers()}))
            if self._optimizer is not None:
                meta["optimizer"] = self._optimizer.state_dict(moments=False)
                if self._optimizer._scheduler is not None:
                    meta["scheduler"] = self._optimizer._scheduler.state_dict()
        arrays["__meta__"] = np.array(json.dumps(meta))
        return arrays

    @classmethod
    def load(cls, path):
        """Load a model written by :meth:`save` (format version 1 or 2; ``path`` with or without
        its ``.npz``).  The file is untrusted: every field is checked, and a corrupt, truncated
        or foreign file raises a ValueError naming the file and the field."""
        return cls._load(*_read_npz(path))[0]

    @classmethod
    def _load(cls, name, data):
        with _field("__meta__", name):
            m = data.get("__meta__")
            if m is None:
                raise ValueError("not an fflib model file (no __meta__ entry)")
            if m.shape != () or m.dtype.kind != "U":
                raise ValueError(f"must be a JSON string, got a {m.dtype} array of shape {m.shape}")
            meta = json.loads(str(m))
            if not isinstance(meta, dict) or meta.get("format") != "fflib.FFModel":
                raise ValueError("not an fflib model file (format is not 'fflib.FFModel')")
            version = meta.get("version")
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise ValueError(f"version must be an int >= 1, got {version!r}")
            if version > FORMAT_VERSION:
                raise ValueError(f"format version {version} is newer than this fflib supports "
                                 f"({FORMAT_VERSION}); upgrade fflib")
        with _field("__meta__.architecture", name):
            model = cls.from_architecture(meta.get("architecture"))
        with _field("param", name):
            model.load_state_dict({k[6:]: v for k, v in data.items() if k.startswith("param/")})
        optim = {k[6:]: v for k, v in data.items() if k.startswith("optim/")}
        if optim:
            with _field("optim", name):
                model.load_optimizer_state(optim)
        if meta.get("optimizer") is not None:
            from .optim import optimizer_from_state
            with _field("__meta__.optimizer", name):
                opt = optimizer_from_state(model, meta["optimizer"])
            sched_state = meta.get("scheduler")
            if sched_state is not None and not (isinstance(sched_state, dict) and sched_state.get("kind") == "LambdaLR"):
                from .optim import scheduler_from_state
                with _field("__meta__.scheduler", name):
                    scheduler_from_state(opt, sched_state)
        if "optim_config" in data:
            with _field("optim_config", name):
                cfgs = json.loads(str(data["optim_config"]))
                if not isinstance(cfgs, dict):
                    raise ValueError(f"must map layer indices to settings, got {cfgs!r}")
                for i, cfg in cfgs.items():
                    model._set_layer_opt(i, cfg)
        if meta.get("optimizer") is None and "optim_config" in data:
            from .optim import optimizer_from_layers
            with _field("optim_config", name):
                optimizer_from_layers(model)      # fit without optimizer= then keeps SGD as SGD
        with _field("__meta__.training", name):
            training = meta.get("training", True)
            if not isinstance(training, bool):
                raise ValueError(f"must be true or false, got {training!r}")
        model.train(training)
        return model, meta

    def _set_layer_opt(self, i, cfg):
        try:
            i = int(i)
        except ValueError:
            raise ValueError(f"layer index must be an int, got {i!r}") from None
        if i not in self.trainable_layers() or not isinstance(cfg, dict):
            raise ValueError(f"layer {i}: not a trainable layer of the model, or settings not a dict")
        if cfg.get("kind") not in (0, 1, 2) or isinstance(cfg.get("kind"), bool):
            raise ValueError(f"layer {i}: optimiser kind must be 0 (SGD), 1 (Adam) or 2 (AdamW), "
                             f"got {cfg.get('kind')!r}")
        known = {"lr", "beta1", "beta2", "eps", "momentum", "dampening", "nesterov", "weight_decay"}
        if cfg.keys() - known - {"kind"}:
            raise ValueError(f"layer {i}: unknown optimiser settings {sorted(cfg.keys() - known - {'kind'})}")
        kw = {}
        for k in known & cfg.keys():
            kw[k] = bool(cfg[k]) if k == "nesterov" else _real(f"layer {i} {k}", cfg[k], lo=0.0)
        self._net.set_opt(i, cfg["kind"], **kw)

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
