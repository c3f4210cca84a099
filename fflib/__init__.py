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
    """Set the number of threads the C core uses, n in [1, 64].  fflib runs its own worker
    threads (sleeping when idle) and keeps OpenBLAS single-threaded: large GEMMs are split into
    panels and convolutions into groups of images.  The default is $FFLIB_NUM_THREADS, else
    the number of CPUs this process may run on."""
    if isinstance(n, bool) or int(n) != n or not 1 <= n <= 64:
        raise ValueError(f"set_num_threads: n must be an int in [1, 64], got {n!r}")
    _core.set_num_threads(int(n))


def get_num_threads():
    """Return the number of threads the C core uses."""
    return _core.get_num_threads()


def _default_threads():
    import os
    env = os.environ.get("FFLIB_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"FFLIB_NUM_THREADS must be an int in [1, 64], got {env!r}") from None
        if not 1 <= n <= 64:
            raise ValueError(f"FFLIB_NUM_THREADS must be an int in [1, 64], got {env!r}")
        return n
    try:
        return max(1, min(64, len(os.sched_getaffinity(0))))
    except AttributeError:
        return max(1, min(64, os.cpu_count() or 1))


set_num_threads(_default_threads())


def blas_name():
    """Return which BLAS the C core was built with."""
    return _core.blas_name()


__all__ = [
    "Layer", "Linear", "ReLU", "Conv2d", "BatchNorm2d", "MaxPool2d", "Flatten", "LenNorm", "FFModel", "mlp",
    "Adam", "SGD", "MultiStepLR", "LinearCooldown", "fit", "evaluate", "FFClassifier",
    "datasets", "set_num_threads", "get_num_threads", "blas_name", "__version__",
]
