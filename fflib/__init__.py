"""fflib: Forward-Forward training with a C core and a zero-copy NumPy interface.

Quick start::

    import fflib
    X, y = fflib.datasets.load_sample()            # a real 10,000-image MNIST subset
    clf = fflib.FFClassifier(hidden=(500, 100), epochs=5, random_state=0).fit(X, y)
    Xt, yt = fflib.datasets.load_sample(train=False)
    print(clf.score(Xt, yt))

Building blocks (PyTorch-like): :class:`Linear`, :class:`ReLU`, :class:`Conv2d`,
:class:`BatchNorm2d`, :class:`MaxPool2d`, :class:`Flatten`, :class:`LenNorm`, :class:`FFModel`, optimisers
:class:`Adam`, :class:`AdamW`, :class:`SGD`, schedulers :class:`StepLR`, :class:`MultiStepLR`,
:class:`CosineAnnealingLR`, :class:`LambdaLR`, :class:`LinearCooldown`, and the
training loop :func:`fit`; named survey networks in :mod:`fflib.models`, plots in
:mod:`fflib.plot` (needs the ``plot`` extra, matplotlib).
"""
import os as _os
from typing import Any as _Any

from ._loader import _core
from ._version import __version__
from . import datasets, models
from . import labels  # Fourier label mode tables (fflib.labels)
from .nn import (Layer, Linear, ReLU, Conv2d, BatchNorm2d, MaxPool2d, Flatten, LenNorm, FFModel, mlp,
                 channel_stats)
from .optim import Adam, AdamW, SGD, StepLR, MultiStepLR, CosineAnnealingLR, LambdaLR, LinearCooldown
from .train import fit, evaluate, refit_head
from .export import export_c
from .early_exit import EarlyExit
# the submodules the README uses as fflib.X without importing them (about 25 ms together); fflib.torch,
# fflib.distributed and fflib.plot import their heavy packages (torch, mpi4py, matplotlib) only when imported
from . import reference, unsupervised, uff  # noqa: E402,F401


def __getattr__(name: str) -> _Any:   # PEP 562: FFClassifier (and scikit-learn with it) loads on first use
    if name == "FFClassifier":
        from .classifier import FFClassifier
        globals()["FFClassifier"] = FFClassifier
        return FFClassifier
    raise AttributeError(f"module 'fflib' has no attribute {name!r}")


def set_num_threads(n: int) -> None:
    """Set the number of threads the C core uses, n in [1, 64].  fflib runs its own worker
    threads (sleeping when idle) and keeps OpenBLAS single-threaded: large GEMMs are split into
    panels and convolutions into groups of images.  The default is $FFLIB_NUM_THREADS, else
    the number of CPUs this process may run on."""
    if isinstance(n, bool) or int(n) != n or not 1 <= n <= 64:
        raise ValueError(f"set_num_threads: n must be an int in [1, 64], got {n!r}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Return the number of threads the C core uses."""
    return _core.get_num_threads()


def _default_threads() -> int:
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


def blas_name() -> str:
    """Return which BLAS the C core was built with."""
    return _core.blas_name()


def get_include() -> str:
    """Return the directory that holds ``fflib.h``, the public header of fflib's C core (every
    prototype with its shapes), for C code that uses the training core, e.g.
    ``gcc -I"$(python -c 'import fflib; print(fflib.get_include())')" ...``.

    An installed fflib has it in ``fflib/include`` (copied from ``csrc/`` at build time); an
    in-place build run from the source tree gets the source tree's ``csrc``.  Raises
    FileNotFoundError when neither exists."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    for d in (_os.path.join(here, "include"), _os.path.join(_os.path.dirname(here), "csrc")):
        if _os.path.isfile(_os.path.join(d, "fflib.h")):
            return d
    raise FileNotFoundError(f"fflib.h is not installed in {_os.path.join(here, 'include')} "
                            "(reinstall fflib: pip install fflib-core)")


__all__ = [
    "Layer", "Linear", "ReLU", "Conv2d", "BatchNorm2d", "MaxPool2d", "Flatten", "LenNorm", "FFModel", "mlp",
    "channel_stats",
    "Adam", "AdamW", "SGD", "StepLR", "MultiStepLR", "CosineAnnealingLR", "LambdaLR", "LinearCooldown", "fit",
    "evaluate", "refit_head", "export_c", "FFClassifier", "EarlyExit",
    "datasets", "models", "set_num_threads", "get_num_threads", "blas_name", "get_include", "__version__",
]
__all__ += ["labels"]
