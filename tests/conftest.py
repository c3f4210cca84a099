import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _xdist_workers():
    """The number of pytest-xdist workers when this process is one of them, else 0."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return 0
    try:
        return max(0, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0))
    except ValueError:
        return 0


def _share_cores_between_xdist_workers():
    """Under pytest-xdist (``pytest -n N``) every worker is its own process with fflib's default
    of all CPUs, so N workers would run N x CPUs threads that wait on each other's time slices.
    Give each worker its share of the cores instead (fflib and torch/OpenMP), unless the caller
    set FFLIB_NUM_THREADS / OMP_NUM_THREADS.  It runs before any test module imports fflib; the
    tests that need 2 threads set them explicitly, and child processes inherit the share."""
    workers = _xdist_workers()
    if not workers:
        return
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    share = str(max(1, cpus // workers))
    os.environ.setdefault("FFLIB_NUM_THREADS", share)
    os.environ.setdefault("OMP_NUM_THREADS", share)


_share_cores_between_xdist_workers()


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, start every worker on its share of the long trainings.

    ``--dist worksteal`` hands each of the N workers a contiguous 1/N of the collection, and an
    idle worker later steals from the tail of a busy one's queue; a worker always keeps the test
    after its current one.  In file order the two longest tests (the MNIST CNN and CwComp
    trainings) sit side by side, so one worker would run both, one after the other, while the
    others finish early.  The tests marked ``slow(seconds=S)`` (S measured at 2 threads) are dealt
    out longest first to the least-loaded worker's slice, at its front; the other tests fill the
    slices in their file order.  Outside xdist the order is the file order."""
    workers = _xdist_workers()
    if workers < 2:
        return

    def cost(item):
        m = item.get_closest_marker("slow")
        return float(m.kwargs.get("seconds", 0)) if m is not None else 0.0

    heavy = sorted((it for it in items if cost(it) > 0), key=cost, reverse=True)
    if not heavy:
        return
    light = [it for it in items if cost(it) <= 0]
    sizes, left = [], len(items)          # xdist's first hand-out: 1/N of what is left, in turn
    for i in range(workers):
        sizes.append(left // (workers - i))
        left -= sizes[-1]
    slices, load = [[] for _ in range(workers)], [0.0] * workers
    for it in heavy:
        w = min(range(workers), key=lambda k: load[k])
        slices[w].append(it)
        load[w] += cost(it)
    order, pos = [], 0
    for w in range(workers):
        n = max(0, sizes[w] - len(slices[w]))
        order += slices[w] + light[pos:pos + n]
        pos += n
    items[:] = order + light[pos:]


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
