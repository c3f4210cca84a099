"""Named FF networks from the survey (Ortiz Torres, Lange, Raulf) as lists of fflib layers.

Every builder returns ``(layers, input_shape)``; pass them to :class:`fflib.FFModel`.  A
convolutional FF block is ``[BatchNorm2d] -> Conv2d -> ReLU -> [MaxPool2d]``; the block's
output goodness trains it and its length-normalised output feeds the next block.
"""
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


def mnist_cnn(batchnorm=False, norm="rms"):
    """The survey's MNIST CNN: conv 32, conv 64, then a linear layer 256x100.

    Choices the survey leaves open: 5x5 kernels without padding and 2x2 then 4x4 max pooling,
    which bring 28x28 to exactly the 256 (64 x 2 x 2) inputs of the 256x100 linear layer:
    28 -conv5-> 24 -pool2-> 12 -conv5-> 8 -pool4-> 2.  Three FF blocks, each length-normalising
    its input (``norm``; None for none).
    """
    layers = conv_block(1, 32, 5, pool=2, batchnorm=batchnorm, norm=norm)
    layers += conv_block(32, 64, 5, pool=4, batchnorm=batchnorm, norm=norm)
    layers += [Flatten()] + ([LenNorm(norm)] if norm else []) + [Linear(256, 100), ReLU()]
    return layers, (1, 28, 28)


def cifar10_cnn(batchnorm=False, norm="rms"):
    """The survey's CIFAR-10 CNN: four conv layers of 128, 264, 512, 1024 filters.

    Choices the survey leaves open: 3x3 kernels with padding 1 and a 2x2 max pool after each
    conv (32 -> 16 -> 8 -> 4 -> 2).  Four FF blocks, each length-normalising its input.
    """
    layers, c = [], 3
    for out in (128, 264, 512, 1024):
        layers += conv_block(c, out, 3, padding=1, pool=2, batchnorm=batchnorm, norm=norm)
        c = out
    return layers, (3, 32, 32)


def survey_cnn(dataset, batchnorm=False, norm="rms"):
    """The survey's original FF CNN for ``dataset`` (mnist, fashion-mnist, sample, cifar10)."""
    if dataset in ("mnist", "fashion-mnist", "sample"):
        return mnist_cnn(batchnorm, norm)
    if dataset == "cifar10":
        return cifar10_cnn(batchnorm, norm)
    raise ValueError(f"no survey CNN for dataset {dataset!r}")
