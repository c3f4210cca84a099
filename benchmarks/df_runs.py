"""Longer Distance-Forward runs (loss="df", Wu et al. 2024, arXiv:2408.14925): the survey's
MNIST CNN on the full MNIST, and the survey's light model FF_small on CIFAR-10.  Each function
returns a JSON-able dict (config, per-epoch history, test errors, seconds); the command line
writes it to benchmarks/results/df_<run>.json.

    python benchmarks/df_runs.py mnist --epochs 2
    python benchmarks/df_runs.py cifar10_ff_small --epochs 1 --n-train 5000 --n-test 2000

DF trains each sample under its true label and all K - 1 wrong ones (K rows per sample, against
FF's and SymBa's two), so an epoch costs about K/2 times an FF epoch of the same network.

DF-O, the paper's block-wise layer collaboration, is ``routine="overlapping"`` with
``chunk_size=2``: blocks of two units, each sharing its last unit with the next block, so
every block's DF loss trains two layers and the shared layer sums both blocks' gradients.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import fflib  # noqa: E402
from fflib import models  # noqa: E402
from fflib.nn import BatchNorm2d, Conv2d  # noqa: E402


def _data_dir(data_dir):
    if data_dir:
        return Path(data_dir)
    return HERE.parent.parent / "shared" / "data"


def _subset(x, y, n, seed):
    if n is None or n >= len(x):
        return x, y
    idx = np.random.default_rng(seed).permutation(len(x))[:n]
    return x[idx], y[idx]


def _train(model, x, y, xt, yt, epochs, lr, head_lr, batch_size, augment, seed, routine, milestones=None):
    opt = fflib.Adam(model, lr=lr, head_lr=head_lr)
    sched = fflib.MultiStepLR(opt, milestones, gamma=0.1) if milestones else fflib.LinearCooldown(opt, epochs)
    t0 = time.perf_counter()
    hist = fflib.fit(model, x, y, epochs=epochs, batch_size=batch_size, optimizer=opt, scheduler=sched,
                     augment=augment, routine=routine, chunk_size=2, random_state=seed, progress=False)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = fflib.evaluate(model, xt, yt)
    eval_s = time.perf_counter() - t1
    history = [{"epoch": i + 1, "block_loss": [float(v) for v in rec["block_loss"]],
                "head_loss": None if rec.get("head_loss") is None else float(rec["head_loss"]),
                "seconds": float(rec["seconds"])} for i, rec in enumerate(hist["epochs"])]
    return {"test_error": {"one_pass": float(res["one_pass"]), "multi_pass": float(res["multi_pass"])},
            "block_accuracy": [float(a) for a in res["block_accuracy"]],
            "history": history, "train_seconds": train_s, "eval_seconds": eval_s,
            "seconds_per_epoch": train_s / max(len(history), 1)}


def mnist_df(epochs=2, n_train=None, n_test=None, margin=1.0, goodness="sum", lr=0.003, head_lr=0.006,
             batch_size=100, augment="crop2", routine=None, seed=0, threads=None, data_dir=None, model="cnn",
             hidden=(1000, 1000)):
    """DF on MNIST with ``model="cnn"``, the survey's CNN (conv 32, conv 64, linear 256x100,
    learned label channel, one-pass head on all three blocks), or ``model="mlp"``, an MLP
    784-``hidden`` with RMS length normalisation and one-hot labels; ``routine="overlapping"``
    for DF-O."""
    if threads:
        fflib.set_num_threads(threads)
    d = _data_dir(data_dir)
    x, y = fflib.datasets.load_mnist(root=d)
    xt, yt = fflib.datasets.load_mnist(root=d, train=False)
    x, y = _subset(x.reshape(len(x), -1), y, n_train, seed)
    xt, yt = _subset(xt.reshape(len(xt), -1), yt, n_test, seed)
    if model == "cnn":
        net, name = models.build("cnn", "mnist", seed=seed, loss="df", goodness=goodness, margin=margin), \
            "survey MNIST CNN (cnn)"
    elif model == "mlp":
        sizes = [784] + [int(h) for h in hidden]
        # image-shaped input (the MLP flattens it) so that the shifts of augment apply
        net = fflib.FFModel(fflib.mlp(sizes, norm="rms"), (1, 28, 28), 10, loss="df", goodness=goodness,
                            margin=margin, norm="rms", seed=seed)
        name = "MLP " + "-".join(map(str, sizes))
    else:
        raise ValueError(f"model must be 'cnn' or 'mlp', got {model!r}")
    config = dict(run="mnist_df", model=name, loss="df", margin=margin, goodness=goodness,
                  epochs=epochs, n_train=len(x), n_test=len(xt), lr=lr, head_lr=head_lr, batch_size=batch_size,
                  augment=augment, routine=routine or "greedy", seed=seed, threads=fflib.get_num_threads())
    out = _train(net, x, y, xt, yt, epochs, lr, head_lr, batch_size, augment, seed, routine)
    return dict(config=config, **out)


def ff_small_df_model(seed=0, margin=1.0, goodness="sum"):
    """FF_small (the survey's Table IV light model) for DF: its blocks as built for CwC, with the
    first BatchNorm2d and Conv2d taking the extra input channel of a learned label map (DF needs
    the label in the input; the CwC models take none)."""
    layers, shape = models.light_model("ff_small", (3, 32, 32))
    first = layers[1]
    layers[0] = BatchNorm2d()
    layers[1] = Conv2d(None, first.out_channels, first.kernel_size, padding=first.padding, bias=False)
    n_units = sum(1 for l in layers if l.kind == "conv2d")
    return fflib.FFModel(layers, shape, 10, loss="df", goodness=goodness, margin=margin, norm="rms",
                         label_encoding="embedding", head_blocks=[n_units - 2, n_units - 1], seed=seed)


def cifar10_ff_small_df(epochs=1, n_train=5000, n_test=2000, margin=1.0, goodness="sum", lr=0.003,
                        head_lr=0.003, batch_size=100, augment="crop4+flip", routine=None, seed=0, threads=None,
                        data_dir=None):
    """DF on CIFAR-10 with FF_small (see :func:`ff_small_df_model`)."""
    if threads:
        fflib.set_num_threads(threads)
    d = _data_dir(data_dir)
    x, y = fflib.datasets.load_cifar10(root=d)
    xt, yt = fflib.datasets.load_cifar10(root=d, train=False)
    x, y = _subset(x.reshape(len(x), -1), y, n_train, seed)
    xt, yt = _subset(xt.reshape(len(xt), -1), yt, n_test, seed)
    model = ff_small_df_model(seed, margin, goodness)
    config = dict(run="cifar10_ff_small_df", model="ff_small + learned label channel", loss="df", margin=margin,
                  goodness=goodness, epochs=epochs, n_train=len(x), n_test=len(xt), lr=lr, head_lr=head_lr,
                  batch_size=batch_size, augment=augment, routine=routine or "greedy", seed=seed,
                  threads=fflib.get_num_threads())
    out = _train(model, x, y, xt, yt, epochs, lr, head_lr, batch_size, augment, seed, routine)
    return dict(config=config, **out)


RUNS = {"mnist": mnist_df, "cifar10_ff_small": cifar10_ff_small_df}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", choices=sorted(RUNS))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None, help="training subset (default: all for mnist)")
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--margin", type=float, default=1.0)
    p.add_argument("--model", choices=["cnn", "mlp"], default=None, help="mnist only (default cnn)")
    p.add_argument("--hidden", default=None, help="mnist MLP hidden sizes, e.g. 1000,1000")
    p.add_argument("--augment", default=None, help="e.g. crop2 (mnist default), crop4+flip (cifar10 default), none")
    p.add_argument("--routine", choices=["greedy", "overlapping"], default=None,
                   help="overlapping = DF-O (blocks of two units, overlapping by one)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="default benchmarks/results/df_<run>.json")
    a = p.parse_args(argv)
    kw = dict(margin=a.margin, routine=a.routine, threads=a.threads, seed=a.seed, data_dir=a.data_dir)
    for k in ("epochs", "n_train", "n_test", "model"):
        if getattr(a, k) is not None:
            kw[k] = getattr(a, k)
    if a.hidden:
        kw["hidden"] = tuple(int(h) for h in a.hidden.split(","))
    if a.augment:
        kw["augment"] = None if a.augment == "none" else a.augment
    res = RUNS[a.run](**kw)
    res["command"] = "python benchmarks/df_runs.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(a.out) if a.out else HERE / "results" / f"df_{a.run}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("test_error", "block_accuracy", "seconds_per_epoch")}), f"-> {out}")
    return res


if __name__ == "__main__":
    main()
