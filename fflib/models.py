"""Named FF networks from the survey (Ortiz Torres, Lange, Raulf) as lists of fflib layers.

Every builder returns ``(layers, input_shape)``; pass them to :class:`fflib.FFModel`.  A
convolutional FF block is ``[BatchNorm2d] -> Conv2d -> ReLU -> [MaxPool2d]``; the block's
output goodness trains it and its length-normalised output feeds the next block.
"""
import numpy as np

from .nn import BatchNorm2d, Conv2d, Flatten, LenNorm, Linear, MaxPool2d, ReLU, mlp


def conv_block(in_ch, out_ch, kernel, padding=0, pool=None, batchnorm=False, groups=1, norm=None,
               bias=True):
    """One FF CNN block: optional LenNorm(norm) of its input, optional BatchNorm2d, Conv2d,
    ReLU, optional MaxPool2d(pool)."""
    layers = [LenNorm(norm)] if norm else []
    layers += [BatchNorm2d(in_ch)] if batchnorm else []
    layers += [Conv2d(in_ch, out_ch, kernel, padding=padding, groups=groups, bias=bias), ReLU()]
    if pool:
        layers.append(MaxPool2d(pool))
    return layers


def mnist_mlp(norm="l2"):
    """The survey's MNIST MLP, 784-500-100 (length-normalised inputs to every layer)."""
    return mlp([784, 500, 100], norm=norm), (784, 1, 1)


def cifar10_mlp(norm="l2"):
    """The survey's CIFAR-10 MLP, 3072-3072-2000-1000."""
    return mlp([3072, 3072, 2000, 1000], norm=norm), (3072, 1, 1)


def mnist_cnn(batchnorm=False, norm="rms", label_channels=0):
    """The survey's MNIST CNN: conv 32, conv 64, then a linear layer 256x100.

    Choices the survey leaves open: 5x5 kernels without padding and 2x2 then 4x4 max pooling,
    which bring 28x28 to exactly the 256 (64 x 2 x 2) inputs of the 256x100 linear layer:
    28 -conv5-> 24 -pool2-> 12 -conv5-> 8 -pool4-> 2.  Three FF blocks, each length-normalising
    its input (``norm``; None for none).  ``label_channels=1`` for the label embedding's
    extra input channel.
    """
    layers = conv_block(1 + label_channels, 32, 5, pool=2, batchnorm=batchnorm, norm=norm)
    layers += conv_block(32, 64, 5, pool=4, batchnorm=batchnorm, norm=norm)
    layers += [Flatten()] + ([LenNorm(norm)] if norm else []) + [Linear(256, 100), ReLU()]
    return layers, (1, 28, 28)


def cifar10_cnn(batchnorm=True, norm="rms", label_channels=0):
    """The survey's CIFAR-10 CNN: four conv layers of 128, 264, 512, 1024 filters.

    Choices the survey leaves open: 3x3 kernels with padding 1 and a 2x2 max pool after each
    conv (32 -> 16 -> 8 -> 4 -> 2).  Four FF blocks, each normalising its input: with
    ``batchnorm`` (the default) a BatchNorm2d, else a LenNorm(``norm``) (None for none).

    Why BatchNorm: measured on CIFAR-10 subsets (benchmarks/cifar10_cnn_study.py), a LenNorm
    of the whole block output divides out that block's mean goodness, the evidence blocks 2-4
    would build on; they then stay at 14-21 % accuracy alone while block 1 reaches 33 %.
    With BatchNorm2d between blocks (per channel, over the batch) blocks 2-4 reach 30-34 %,
    better the deeper they are, and the multi-pass / one-pass validation error falls from
    74.5 / 73.4 % to 65.7 / 58.1 % (a quarter of the channels, 5,000 images, 4 epochs).
    """
    layers, c = [], 3 + label_channels
    for out in (128, 264, 512, 1024):
        layers += conv_block(c, out, 3, padding=1, pool=2, batchnorm=batchnorm,
                             norm=None if batchnorm else norm)
        c = out
    return layers, (3, 32, 32)


def survey_cnn(dataset, batchnorm=None, norm="rms", label_encoding="embedding"):
    """The survey's original FF CNN for ``dataset`` (mnist, fashion-mnist, sample, cifar10),
    with the extra input channel a label embedding needs.  ``batchnorm`` None: the dataset's
    default (LenNorm(``norm``) between the 28x28 CNN's blocks, BatchNorm2d between the
    CIFAR-10 CNN's, see :func:`cifar10_cnn`)."""
    extra = int(label_encoding == "embedding")
    if dataset in ("mnist", "fashion-mnist", "sample"):
        return mnist_cnn(bool(batchnorm), norm, extra)
    if dataset == "cifar10":
        return cifar10_cnn(True if batchnorm is None else batchnorm, norm, extra)
    raise ValueError(f"no survey CNN for dataset {dataset!r}")


# ---------------------------------------------------------------------------------------------
# The survey's light models (Table IV) and a CwComp network, for channel-wise competitive
# learning (loss "cwc"/"pvn", label_encoding "none", no negatives).

#: channels (input first) and kernel sizes from the survey's Table III.
LIGHT_MODELS = {
    "ff_tiny": ((3, 50, 50, 50, 50), (3, 3, 3, 4)),
    "ff_small": ((3, 50, 50, 70, 70), (3, 3, 3, 4)),
    "ff_medium": ((3, 50, 50, 100, 150), (3, 3, 3, 4)),
    "ff_optimal": ((3, 50, 50, 100, 160, 160), (3, 3, 3, 4, 3)),
    "ff_deep": ((3, 130, 130, 260, 260, 260, 510), (3, 3, 3, 5, 3, 3)),
}

#: trainable parameters the survey reports (they include a 10 x 32 x 32 label embedding its
#: code always creates and a 2F-parameter normalisation of the head input, see light_model).
SURVEY_PARAMS = {"ff_tiny": 164706, "ff_small": 239266, "ff_medium": 484506, "ff_optimal": 754386,
                 "ff_deep": 4131346}


def light_model(name, input_shape=(3, 32, 32), label_channels=0, channels=None):
    """FF_tiny, FF_small, FF_medium, FF_optimal or FF_deep: blocks BatchNorm2d -> Conv2d
    (kernel from the table, padding 1, no bias) -> ReLU, with a 2x2 max pool after blocks 1
    and 3 (and 6 in FF_deep: its three pools), as in the Trifecta code the survey builds on.
    On 32x32 inputs: 32 -> 16 -> 16 -> 8 -> 7 (k=4) / 6 (k=5).  Use it with loss "cwc": the
    channels of every block split into one group per class.  The one-pass head reads the last
    two blocks (``head_blocks=[-2, -1]`` in :func:`build`).  ``label_channels=1`` widens the
    first block's BatchNorm2d and Conv2d by the channel of a learned label map, for the losses
    that read the label from the input (ff, symba, df; ``label_encoding="embedding"``).
    ``channels``: the blocks' widths instead of the table's (one per block)."""
    if name not in LIGHT_MODELS:
        raise ValueError(f"unknown light model {name!r}; choose from {sorted(LIGHT_MODELS)}")
    table, kernels = LIGHT_MODELS[name]
    channels = (input_shape[0],) + (table[1:] if channels is None else _widths(channels, len(kernels), name))
    pools = {0, 2, 5} if name == "ff_deep" else {0, 2}
    layers = []
    for i, k in enumerate(kernels):
        layers += conv_block(channels[i] + (label_channels if i == 0 else 0), channels[i + 1], k, padding=1, pool=2 if i in pools else None,
                             batchnorm=True, bias=False)
    return layers, tuple(input_shape)


def cwcomp(input_shape=(1, 28, 28), num_classes=10, channels=(20, 80, 240, 480)):
    """A CwComp CNN for 28x28 images (Papachristodoulou et al., AAAI 2024, reference code):
    four blocks Conv2d(3x3, padding 1) -> ReLU -> [MaxPool2d(2) after blocks 2 and 4] ->
    BatchNorm2d, with 20, 80, 240, 480 channels (``channels``); blocks 2 and 4 are grouped convolutions with
    one group per class (CFSE).  Train with loss "cwc" and label_encoding "none"; each block
    ends after its BatchNorm2d (:func:`build` cuts it so)."""
    c, layers = input_shape[0], []
    for i, out in enumerate(channels):
        layers += [Conv2d(c, out, 3, padding=1, groups=num_classes if i % 2 else 1), ReLU()]
        if i % 2:
            layers.append(MaxPool2d(2))
        layers.append(BatchNorm2d(out, eps=1e-4))
        c = out
    return layers, tuple(input_shape)


def _widths(channels, count, name):
    """``channels`` checked as ``count`` positive ints, as a tuple."""
    if isinstance(channels, (str, bytes)) or not hasattr(channels, "__len__") or len(channels) != count or any(
            isinstance(c, (bool, np.bool_)) or not hasattr(c, "__index__") or int(c) < 1 for c in channels):
        raise ValueError(f"channels must be {count} positive ints (the widths of {name}'s blocks), got {channels!r}")
    return tuple(int(c) for c in channels)


def cwcomp_model(input_shape=(1, 28, 28), num_classes=10, channels=(20, 80, 240, 480), seed=0, **model_kw):
    """The :func:`cwcomp` CNN as an :class:`fflib.FFModel` with the CwComp paper's settings: CwC
    loss on channel-group goodness (threshold 2 for the losses that take one), no label in the
    input, each block ending at its BatchNorm2d (whose output is the goodness's), and the one-pass
    head on the last two blocks.  ``model_kw`` overrides any of them (e.g. ``loss="df-cwc"``)."""
    return zoo_model("cwcomp", input_shape, num_classes, seed, channels=channels, **model_kw)


ZOO = ("mlp", "cnn", "cwcomp") + tuple(LIGHT_MODELS)

#: the zoo's networks whose blocks' channels split into one group per class (CwC-family losses)
GROUP_MODELS = ("cwcomp",) + tuple(LIGHT_MODELS)

#: the datasets :func:`build` sizes the zoo's networks for (``sample``: the embedded MNIST subset)
DATASETS = ("mnist", "fashion-mnist", "sample", "cifar10")

#: losses that compare a sample's goodness under labels put into its input: on a light model
#: they need a label encoding (a learned label channel by default) instead of channel groups
LABEL_LOSSES = ("ff", "symba", "df")


def build(name, dataset="cifar10", seed=0, **model_kw):
    """An :class:`fflib.FFModel` by zoo name with the settings its paper uses: ``mlp`` and
    ``cnn`` (the survey's original FF networks for ``dataset``; the 28x28 CNN's one-pass head
    reads all three blocks, the CIFAR-10 CNN's blocks 2-4), ``cwcomp`` and the light models
    (CwC loss, no label in the input, one-pass head on the last two blocks)."""
    if not isinstance(dataset, str) or dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)} (the zoo's networks are sized by it), "
                         f"got {dataset!r}")
    image = (1, 28, 28) if dataset in ("mnist", "fashion-mnist", "sample") else (3, 32, 32)
    if name in LIGHT_MODELS and image[0] != 3:
        raise ValueError(f"{name} is a CIFAR-10 network (3x32x32 input, as in the survey); dataset {dataset!r} has "
                         f"1x28x28 images: use 'mlp', 'cnn' or 'cwcomp' for it")
    return zoo_model(name, image, 10, seed, **model_kw)


def zoo_model(name, input_shape, num_classes=10, seed=0, **model_kw):
    """:func:`build`'s networks for ``input_shape`` (C, H, W) and ``num_classes``: ``mlp`` for
    any shape; ``cnn`` for 1x28x28 or 3x32x32 images (the survey's two); ``cwcomp`` and the light
    models for any image their pooling leaves at least 1x1, their widths (``channels=``, default
    the paper's) rounded up to multiples of ``num_classes`` (one group per class) for cwcomp,
    whose blocks 2 and 4 are grouped convolutions, and for the light models under the
    channel-group losses.  ``model_kw`` overrides the paper's settings (:class:`fflib.FFModel`'s)."""
    from .nn import FFModel, GROUP_LOSSES
    image = tuple(int(v) for v in input_shape)
    channels = model_kw.pop("channels", None)
    if channels is not None and name not in GROUP_MODELS:
        raise ValueError(f"channels sets the widths of {', '.join(GROUP_MODELS)}; {name!r} has fixed widths")
    groups = model_kw.get("loss", "cwc") in GROUP_LOSSES

    def multiples(widths):   # rounded up to one channel group per class
        return tuple(-(-c // num_classes) * num_classes for c in widths)

    def grouped(widths):     # so under the channel-group losses
        return multiples(widths) if groups else widths

    if name == "mlp":
        layers, shape = mlp([image[0] * image[1] * image[2], 500, 100], norm="rms"), image
        kw = dict(loss="symba", goodness="mean", threshold=1.0, norm="rms")
    elif name == "cnn":
        enc = model_kw.get("label_encoding", "embedding")
        if image not in ((1, 28, 28), (3, 32, 32)):
            raise ValueError(f"the survey's CNN ('cnn') takes 1x28x28 or 3x32x32 images, got "
                             f"{'x'.join(map(str, image))}")
        layers, shape = survey_cnn("mnist" if image[0] == 1 else "cifar10", label_encoding=enc)
        # a trained label channel: one-hot pixels in a corner or waves leave the first conv
        # layer unable to tell labels apart (measured), a learned map does not
        kw = dict(loss="symba", goodness="mean", threshold=1.0, norm="rms", label_encoding=enc)
        if image[0] == 1:
            # the 28x28 CNN's one-pass head reads all three blocks (4,964 features): measured
            # 1.62 % after 6 epochs, against 2.72 % reading blocks 2-3 only (356 features)
            kw["head_blocks"] = [0, 1, 2]
    elif name == "cwcomp":
        # blocks 2 and 4 are grouped convolutions (one group per class): every width is a
        # multiple of num_classes whatever the loss
        widths = multiples(_widths((20, 80, 240, 480) if channels is None else channels, 4, name))
        layers, shape = cwcomp(image, num_classes, widths)
        # CwComp's goodness is that of each layer's final (batch-normalised) output
        kw = dict(loss="cwc", label_encoding="none", norm="none", threshold=2.0,
                  blocks=[i + 1 for i, layer in enumerate(layers) if layer.kind == "batchnorm2d"])
    elif name in LIGHT_MODELS and model_kw.get("loss") in LABEL_LOSSES:
        # a light model trained with a label in its input (e.g. the distance-forward loss):
        # its blocks as for CwC, the first taking the extra channel of a learned label map
        enc = model_kw.get("label_encoding", "embedding")
        if enc == "none":
            raise ValueError(f"loss {model_kw['loss']!r} on {name} needs the label in the input: "
                             f"label_encoding 'embedding', 'onehot' or 'fourier', got 'none'")
        layers, shape = light_model(name, image, label_channels=int(enc == "embedding"), channels=channels)
        kw = dict(goodness="mean", threshold=1.0, norm="rms", label_encoding=enc)
    elif name in LIGHT_MODELS:
        widths = LIGHT_MODELS[name][0][1:] if channels is None else _widths(channels, len(LIGHT_MODELS[name][1]),
                                                                            name)
        layers, shape = light_model(name, image, channels=grouped(widths))
        # the blocks end in ReLU (their BatchNorm opens the next block), so the head's input is
        # RMS-normalised, as the survey's head normalises its input (its 2F affine parameters)
        kw = dict(loss="cwc", label_encoding="none", norm="rms", threshold=2.0)
    else:
        raise ValueError(f"unknown model {name!r}; choose from {ZOO}")
    kw.update(model_kw)
    if name in GROUP_MODELS and "head_blocks" not in model_kw:
        n_units = sum(1 for layer in layers if layer.kind == "conv2d")
        kw["head_blocks"] = [n_units - 2, n_units - 1]
    return FFModel(layers, shape, num_classes, seed=seed, **kw)
