"""Longer label-free runs on full MNIST: Self-Contrastive FF (Chen et al. 2025) and Hinton's
hybrid-image negatives, each followed by a linear probe (fflib's one-pass head on the frozen
features of every block).

    nice -n 10 python benchmarks/scff_runs.py --method scff --epochs 3 --head-epochs 3

The defaults are SCFF's recipe (fflib.unsupervised: scff_mlp's model, threshold 4 on the mean
goodness, first layer x2, Adam 3e-3, probe Adam 1e-3); ``--epochs 0`` probes the untrained
network (the baseline every SCFF number should be compared with).  Writes
benchmarks/results/scff_mnist.json (hybrid_mnist.json for --method hybrid).  The run
is a function, :func:`run`, returning a JSON-able dict (config, per-epoch history, test
error, seconds) for benchmarks/reproduce.py.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import fflib  # noqa: E402
from fflib.optim import Adam  # noqa: E402
from fflib.unsupervised import (SCFF_HEAD_LR, SCFF_LR, SCFF_THRESHOLD, fit_unsupervised,  # noqa: E402
                                probe_error, scff_mlp)


def run(method="scff", hidden=(2000, 2000), epochs=3, head_epochs=3, batch_size=100, lr=SCFF_LR,
        head_lr=SCFF_HEAD_LR, threshold=SCFF_THRESHOLD, first_scale=2.0, augment=None, num_train=None, threads=1,
        seed=0, data_dir=None, verbose=True, partial_out=None):
    """Train a 784-hidden MLP on MNIST without labels by ``method`` ("scff" or "hybrid"),
    then a softmax probe on all its blocks' features; return config, history, test error.
    ``partial_out``: a JSON file rewritten after every epoch with the history so far
    (``complete`` false), so a run cut short still leaves its record."""
    fflib.set_num_threads(threads)
    root = data_dir or os.environ.get("FFLIB_DATA") or os.path.join(os.path.dirname(os.path.dirname(HERE)),
                                                                    "shared", "data")
    x, y = fflib.datasets.load_mnist(root=root)
    xt, yt = fflib.datasets.load_mnist(root=root, train=False)
    x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
    if num_train:
        x, y = x[:num_train], y[:num_train]
    sizes = [784] + list(hidden)
    model = scff_mlp(tuple(hidden), (1, 28, 28), threshold, first_scale=first_scale, seed=seed)
    opt = Adam(model, lr=lr, head_lr=head_lr)
    config = {"method": method, "layers": sizes, "epochs": epochs, "head_epochs": head_epochs,
              "batch_size": batch_size, "lr": lr, "head_lr": head_lr, "loss": "ff", "goodness": "mean",
              "threshold": threshold, "first_scale": first_scale, "norm": "rms", "augment": augment,
              "num_train": int(len(y)),
              "probe": "one-pass softmax head on the rms-normalised outputs of every block",
              "threads": threads, "seed": seed, "blas": fflib.blas_name()}

    done = []

    def report(rec):
        done.append(rec)
        if verbose:
            print(json.dumps(rec), flush=True)
        if partial_out:
            with open(partial_out, "w") as f:
                json.dump({"config": config, "epochs": done, "complete": False}, f, indent=1)

    hist = fit_unsupervised(model, x, y, method=method, epochs=epochs, head_epochs=head_epochs,
                            batch_size=batch_size, optimizer=opt, augment=augment, random_state=seed,
                            callback=report)
    t0 = time.perf_counter()
    test_error = probe_error(model, xt, yt)
    sub = np.random.default_rng(0).choice(len(y), min(len(y), 10000), replace=False)
    return {"config": config, "epochs": hist["epochs"], "train_seconds": hist["train_seconds"],
            "test_error": test_error, "train_error_10k": probe_error(model, x[sub], y[sub]),
            "eval_seconds": time.perf_counter() - t0, "interrupted": hist["interrupted"], "complete": True,
            "fflib_version": fflib.__version__}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=["scff", "hybrid"], default="scff")
    p.add_argument("--hidden", default="2000,2000")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--head-epochs", type=int, default=3)
    p.add_argument("--threshold", type=float, default=SCFF_THRESHOLD)
    p.add_argument("--first-scale", type=float, default=2.0, help="first Linear's initial weights x this")
    p.add_argument("--lr", type=float, default=SCFF_LR)
    p.add_argument("--head-lr", type=float, default=SCFF_HEAD_LR)
    p.add_argument("--augment", default="none")
    p.add_argument("--num-train", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    out = a.out or os.path.join(HERE, "results", f"{a.method}_mnist.json")
    res = run(a.method, tuple(int(v) for v in a.hidden.split(",")), a.epochs, a.head_epochs, lr=a.lr,
              head_lr=a.head_lr, threshold=a.threshold, first_scale=a.first_scale,
              augment=None if a.augment == "none" else a.augment,
              num_train=a.num_train, threads=a.threads, partial_out=out)
    res["command"] = "python benchmarks/scff_runs.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"{a.method}: probe test error {res['test_error']:.2f}%  train {res['train_seconds']:.0f}s  -> {out}")


if __name__ == "__main__":
    main()
