import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir():
    """The real datasets: $FFLIB_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("FFLIB_DATA")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "data"


def child_env():
    """The environment of a child Python that must import the fflib this test process imports:
    the installed package in CI, this checkout's in-place build in development.  (Run children
    outside the repository root, whose unbuilt sources would shadow an installed fflib.)"""
    import fflib
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(fflib.__file__))) + os.pathsep + \
        env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="session")
def data_dir():
    d = shared_data_dir()
    if not (d / "mnist" / "train-images-idx3-ubyte.gz").exists() and not (d / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found under {d} (set FFLIB_DATA)")
    return d


@pytest.fixture(scope="session")
def mnist(data_dir):
    import fflib
    x, y = fflib.datasets.load_mnist(root=data_dir)
    xt, yt = fflib.datasets.load_mnist(root=data_dir, train=False)
    return x.reshape(len(x), -1), y, xt.reshape(len(xt), -1), yt


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def fflib_one_thread():
    """Fixture body (module scope, autouse in the modules that compare against references):
    fflib on one thread, a fixed summation order."""
    import fflib
    old = fflib.get_num_threads()
    fflib.set_num_threads(1)
    yield
    fflib.set_num_threads(old)


@pytest.fixture
def torch_one_thread():
    """torch (skipped without it) on one thread for the test."""
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(old)


def fd_grad(f, x, eps=1e-6):
    """Central differences of scalar f at every entry of x (float64)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (f(xp) - f(xm)) / (2 * eps)
    return g
