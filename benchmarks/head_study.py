"""Is a trained model's one-pass error its head's fault or its blocks'?  Freeze the blocks of a
saved model (a ``python -m fflib train`` checkpoint or ``FFModel.save`` file), take the one-pass
head's input features (:meth:`FFModel.features`, neutral label) of the training split without
its last ``--val-size`` images and of those held-out images, and train fresh softmax heads on
the frozen features, one per variant (Adam rate, epochs, L2 weight decay), scoring each on the
held-out images only (never the test set).  The saved head and the saved multi-pass goodness
are scored on the same images beside them.

    python benchmarks/head_study.py benchmarks/results/reproduce/checkpoints/cifar10-ff_optimal/checkpoint.npz \\
        --dataset cifar10 --val-size 5000 --out benchmarks/results/head_study/cifar10-ff_optimal.json

The heads here are float64 NumPy softmax regressions trained on un-augmented features (the
recipe's head trains alongside the blocks on augmented images), so they say how good a linear
head on these features can be, not what a recipe change would give; a candidate recipe still
needs its own validation run.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

import fflib
from fflib import reference
from fflib.datasets import load
from fflib.train import evaluate


def _features(model, x, chunk=1000):
    return np.concatenate([model.features(x[s:s + chunk]) for s in range(0, len(x), chunk)])


def train_head(f, y, fv, yv, lr, epochs, weight_decay=0.0, batch=128, seed=0, classes=10):
    """Softmax regression on features ``f`` by Adam (float64, :mod:`fflib.reference`'s
    cross-entropy and Adam step; L2 ``weight_decay`` on the weights only); returns the held-out
    error (%) after each epoch."""
    rng = np.random.default_rng(seed)
    w, b = np.zeros((f.shape[1], classes)), np.zeros(classes)
    mw, vw, mb, vb = np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)
    t = 0
    errs = []
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(y)), max(1, len(y) // batch)):
            fb = f[idx].astype(np.float64)
            _, _, g = reference.softmax_xent(fb @ w + b, y[idx])
            t += 1
            w, mw, vw = reference.adam_step(w, mw, vw, fb.T @ g, lr=lr, wd=weight_decay, t=t)
            b, mb, vb = reference.adam_step(b, mb, vb, g.sum(axis=0), lr=lr, t=t)
        errs.append(float(100 * ((fv @ w + b).argmax(axis=1) != yv).mean()))
    return errs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a saved model or a train checkpoint (.npz)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--root", default=None)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-4, 1e-4])
    p.add_argument("--weight-decay", type=float, nargs="+", default=[0.0, 1e-4])
    p.add_argument("--bn-gap", type=int, default=0, metavar="N",
                   help="also compare the head's input features under batch statistics (minibatches of 128, "
                        "as training computes them) with inference's on the first N training images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    fflib.set_num_threads(a.threads)
    model = fflib.FFModel.load(a.model)
    x, y = load(a.dataset, root=a.root, train=True)
    x = x.reshape((len(x),) + tuple(model.input_shape))
    x, xv, y, yv = x[:-a.val_size], x[-a.val_size:], y[:-a.val_size], y[-a.val_size:]
    t0 = time.perf_counter()
    model.eval()
    f, fv = _features(model, x), _features(model, xv)     # float32; the heads upcast a batch at a time
    r = evaluate(model, xv, yv)     # as the train command scores it (CwC: the last two blocks' goodness)
    saved = {"one_pass": r["one_pass"], "multi_pass": r["multi_pass"]}
    print(f"features {f.shape} in {time.perf_counter() - t0:.0f} s; the saved model on the held-out "
          f"images: one-pass {saved['one_pass']:.2f}  multi-pass {saved['multi_pass']:.2f}", flush=True)
    gap = None
    if a.bn_gap:
        # the features a training step gives the head: batch statistics of each minibatch of 128
        # (un-augmented here), against inference's running statistics
        ft = f[:a.bn_gap].astype(np.float64)
        model.train()
        fb = _features(model, x[:a.bn_gap], chunk=128).astype(np.float64)
        model.eval()
        w, b = model.head_weight.T.astype(np.float64), model.head_bias.astype(np.float64)
        gap = {"images": int(a.bn_gap), "relative_rms": float(np.sqrt(((fb - ft) ** 2).mean() / (ft ** 2).mean())),
               "saved_head_error_inference_features": float(100 * ((ft @ w + b).argmax(1) != y[:a.bn_gap]).mean()),
               "saved_head_error_batch_features": float(100 * ((fb @ w + b).argmax(1) != y[:a.bn_gap]).mean())}
        print(f"batch-statistics features against inference's on {a.bn_gap} training images: relative RMS "
              f"difference {gap['relative_rms']:.3f}; the saved head's error {gap['saved_head_error_inference_features']:.2f} "
              f"/ {gap['saved_head_error_batch_features']:.2f} %", flush=True)
    rows = []
    for lr in a.lr:
        for wd in a.weight_decay:
            t0 = time.perf_counter()
            errs = train_head(f, y, fv, yv, lr, a.epochs, wd)
            rows.append({"lr": lr, "weight_decay": wd, "val_error_per_epoch": errs, "best": min(errs),
                         "last": errs[-1], "seconds": time.perf_counter() - t0})
            print(f"lr {lr:g} wd {wd:g}: last {errs[-1]:.2f}  best {min(errs):.2f} (epoch "
                  f"{int(np.argmin(errs)) + 1})", flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"model": a.model, "dataset": a.dataset, "val_size": a.val_size,
                                           "features": int(f.shape[1]), "saved": saved, "batch_norm_gap": gap,
                                           "heads": rows},
                                          indent=1) + "\n")


if __name__ == "__main__":
    main()
