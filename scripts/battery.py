"""Behaviour battery: per-step losses, every parameter and optimiser array after 20 steps, and
predictions, for a fixed set of configurations, on 1 thread with fixed seeds.

Recorded once before the block rewrite of the C core (tests/data/battery.npz); the test
tests/test_battery.py reruns it and asserts the rewrite changed nothing, bit for bit, on the
machine it was recorded on (the same CPU flags: OpenBLAS picks its kernels by CPU, and other
kernels round differently), and within float tolerance elsewhere.

    python scripts/battery.py --out tests/data/battery.npz     # record
"""
import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

if __name__ == "__main__":
    # run as a script from a checkout: its (in-place built) fflib.  Imported by the tests, the
    # path stays as it is, so child processes never see the unbuilt sources of the repository.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fflib  # noqa: E402
from fflib import models, routines  # noqa: E402
from fflib.train import hard_negative_labels  # noqa: E402

STEPS = 20


def cpu_signature():
    """The CPU model name, family number and whether it has AVX-512 (what OpenBLAS's kernel
    choice follows: a virtual machine's "AMD EPYC" is several generations, whose kernels round
    differently; with AVX-512, family 25 is Zen 4 and 26 Zen 5)."""
    info, avx512 = {}, False
    try:
        for line in open("/proc/cpuinfo"):
            key = line.split(":", 1)[0].strip()
            if key in ("model name", "cpu family") and key not in info:
                info[key] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                avx512 = " avx512f" in line
    except OSError:
        pass
    return f"{info.get('model name', 'unknown')} family={info.get('cpu family', '?')} avx512={avx512}"


def _data(shape, n, seed):
    """Deterministic inputs: the embedded MNIST sample for 1x28x28 / 784, a fixed random
    image otherwise (the battery compares implementations, not accuracy)."""
    if shape in ((1, 28, 28), 784):
        x, y = fflib.datasets.load_sample()
        x = x[:n].reshape(n, *((784,) if shape == 784 else shape)).astype(np.float32)
        return np.ascontiguousarray(x), y[:n].astype(np.int64)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    return x, rng.integers(0, 10, n).astype(np.int64)


def _mlp(loss="ff", goodness="sum", **kw):
    return fflib.FFModel(fflib.mlp([784, 64, 48, 32], norm="l2"), 784, 10, loss=loss,
                         goodness=goodness, seed=3, **kw)


def _cnn(enc):
    return models.build("cnn", "mnist", seed=5, label_encoding=enc)


def _cwcomp():
    return models.build("cwcomp", "mnist", seed=7, channels=(20, 40, 60, 80))


def _tiny():
    return models.build("ff_tiny", "cifar10", seed=11)


CONFIGS = {
    # name: (model factory, input shape, batch, routine, chunk, alternate, negatives)
    "mlp_ff_sum": (lambda: _mlp("ff", "sum"), 784, 32, "greedy", 2, False, "uniform"),
    "mlp_ff_mean": (lambda: _mlp("ff", "mean", threshold=0.5), 784, 32, "greedy", 2, False, "uniform"),
    "mlp_symba_mean": (lambda: _mlp("symba", "mean"), 784, 32, "greedy", 2, False, "uniform"),
    "mlp_symba_sum_hard": (lambda: _mlp("symba", "sum"), 784, 32, "greedy", 2, False, "hard"),
    "mlp_chunked": (lambda: _mlp("symba", "mean"), 784, 32, "chunked", 2, False, "uniform"),
    "mlp_overlapping": (lambda: _mlp("symba", "mean"), 784, 32, "overlapping", 2, False, "uniform"),
    "mlp_alternating": (lambda: _mlp("symba", "mean"), 784, 32, "chunked", 2, True, "uniform"),
    "mlp_backprop": (lambda: _mlp("symba", "mean"), 784, 32, "backprop", 2, False, "uniform"),
    "cnn_embedding": (lambda: _cnn("embedding"), (1, 28, 28), 16, "greedy", 2, False, "uniform"),
    "cnn_onehot": (lambda: _cnn("onehot"), (1, 28, 28), 16, "greedy", 2, False, "uniform"),
    "cnn_fourier": (lambda: _cnn("fourier"), (1, 28, 28), 16, "greedy", 2, False, "uniform"),
    "cnn_chunked": (lambda: _cnn("embedding"), (1, 28, 28), 16, "chunked", 2, False, "uniform"),
    "cwcomp": (_cwcomp, (1, 28, 28), 16, "greedy", 2, False, "uniform"),
    "cwcomp_overlapping": (_cwcomp, (1, 28, 28), 16, "overlapping", 2, False, "uniform"),
    "ff_tiny": (_tiny, (3, 32, 32), 16, "greedy", 2, False, "uniform"),
}


def _digest(a):
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.tobytes()).hexdigest()[:32]


def run_config(name):
    """Train one configuration STEPS steps; returns {key: array} (losses, predictions) and
    {key: (digest, sum, abs-sum)} for every parameter, gradient-free state and moment."""
    factory, shape, batch, routine, chunk, alternate, negatives = CONFIGS[name]
    model = factory()
    if hasattr(model._net, "set_share_labels"):
        # the pre-rewrite core computed every row's first layer; label sharing (the default
        # now) is equal only up to rounding and has its own test (tests/test_share_labels.py)
        model._net.set_share_labels(False)
    x, y = _data(shape, batch * 4, seed=len(name))
    xt, _ = _data(shape, 24, seed=99)
    if shape != 784:
        x = x.reshape(len(x), -1)
        xt = xt.reshape(len(xt), -1)
    opt = fflib.Adam(model, lr=2e-3) if "mlp" in name else fflib.Adam(model, lr=3e-3)
    rng = np.random.default_rng(0)
    losses = []
    head = model.has_head
    for step in range(STEPS):
        s = (step * batch) % len(x)
        xb, yb = x[s:s + batch], y[s:s + batch]
        if routine != "greedy":
            model.set_block_ranges(routines.block_ranges(model, routine, chunk, shift=step if alternate else 0))
        neg = hard_negative_labels(model, xb, yb, rng) if negatives == "hard" else None
        losses.append(np.asarray(model.train_step(xb, yb, neg_labels=neg, train_head=head), dtype=np.float32))
    model.eval()
    out = {"losses": np.stack(losses)}
    out["goodness"] = model.goodness(xt)
    if head:
        out["proba"] = model.predict_proba(xt)
    model.train()
    arrays = {}
    for k, v in model.state_dict().items():
        arrays[k] = v
    for k, v in model.optimizer_state().items():
        arrays["opt." + k] = v
    summary = {k: (_digest(v), float(np.asarray(v, np.float64).sum()),
                   float(np.abs(np.asarray(v, np.float64)).sum())) for k, v in arrays.items()}
    return out, summary


def record(path):
    fflib.set_num_threads(1)
    data = {"cpu": np.array(cpu_signature()), "blas": np.array(fflib.blas_name())}
    for name in CONFIGS:
        out, summary = run_config(name)
        for k, v in out.items():
            data[f"{name}/{k}"] = v
        keys = sorted(summary)
        data[f"{name}/state_keys"] = np.array(keys)
        data[f"{name}/state_digest"] = np.array([summary[k][0] for k in keys])
        data[f"{name}/state_sums"] = np.array([summary[k][1:] for k in keys], dtype=np.float64)
        print(f"{name}: final losses {out['losses'][-1]}")
    np.savez_compressed(path, **data)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/data/battery-new.npz",
                    help="where the record goes (tests compare with every tests/data/battery*.npz)")
    record(ap.parse_args().out)
