"""fflib: Forward-Forward training with a C core and a zero-copy NumPy interface.

Quick start::

    import fflib
    X, y = fflib.datasets.load_sample()            # a real 10,000-image MNIST subset
    clf = fflib.FFClassifier(hidden=(500, 100), epochs=5, random_state=0).fit(X, y)
    Xt, yt = fflib.datasets.load_sample(train=False)
    print(clf.score(Xt, yt))

Building blocks (PyTorch-like): :class:`Linear`, :class:`ReLU`, :class:`Conv2d`,
:class:`BatchNorm2d`, :class:`MaxPool2d`, :class:`Flatten`, :class:`LenNorm`, :class:`FFModel`, optimisers
:class:`Adam`, :class:`SGD`, schedulers :class:`MultiStepLR`, :class:`LinearCooldown`, and the
training loop :func:`fit`.
"""
from ._loader import _core
from . import datasets
from .nn import (Layer, Linear, ReLU, Conv2d, BatchNorm2d, MaxPool2d, Flatten, LenNorm, FFModel, mlp)
from .optim import Adam, SGD, MultiStepLR, LinearCooldown
from .train import fit, evaluate
from .classifier import FFClassifier

__version__ = "0.1.0"


def set_num_threads(n):
    """Set the number of threads used by the C core's BLAS (OpenBLAS); n >= 1."""
    _core.set_num_threads(int(n))


def get_num_threads():
    """Return the number of BLAS threads the C core uses."""
    return _core.get_num_threads()


def blas_name():
    """Return which BLAS the C core was built with."""
    return _core.blas_name()


__all__ = [
    "Layer", "Linear", "ReLU", "Conv2d", "BatchNorm2d", "MaxPool2d", "Flatten", "LenNorm", "FFModel", "mlp",
    "Adam", "SGD", "MultiStepLR", "LinearCooldown", "fit", "evaluate", "FFClassifier",
    "datasets", "set_num_threads", "get_num_threads", "blas_name", "__version__",
]
