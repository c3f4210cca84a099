"""Screen ZCA whitening of the input for the CIFAR-10 MLP recipe on its validation split.

The recipe study's screening (benchmarks/results/recipe_study/cifar10-mlp/: ``--recipe cifar10-mlp
--subset 20000 --epochs 10``, the last 5,000 training images held out) run once more with every
image ZCA-whitened first: x -> (x - mu) U diag(1 / sqrt(s + eps)) U^T, mu, U and s the mean and
the eigen-decomposition of the covariance of the 20,000 training images the screening trains on
(never the validation or test images).  fflib has no ZCA layer: this script swaps the whitened
arrays in for ``fflib.datasets.load`` and then runs the train command itself, so every other
setting is the recipe's (the per-channel standardisation included, now of the whitened values).

    FFLIB_DATA=../shared/data python benchmarks/zca_screen.py --eps 0.01 --threads 1

The result JSON goes beside the study's other variants (``zca-eps<EPS>.json``) and its row into
the study's summary.json.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fflib import cli, datasets   # noqa: E402
import recipe_study               # noqa: E402

SUBSET, VAL, EPOCHS = 20000, 5000, 10


def zca(x_fit, eps):
    """The whitening map of x_fit (N, D): returns (mu (D,), W (D, D)), both float64."""
    a = x_fit.reshape(len(x_fit), -1).astype(np.float64)
    mu = a.mean(0)
    a -= mu
    s, u = np.linalg.eigh(a.T @ a / len(a))
    s = np.clip(s, 0.0, None)
    return mu, (u / np.sqrt(s + eps)) @ u.T


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--subset", type=int, default=SUBSET)
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--out-dir", default=str(recipe_study.OUT))
    a = p.parse_args(argv)
    x, y = datasets.load("cifar10", train=True)
    xt, yt = datasets.load("cifar10", train=False)
    # the screening's training images: the first --subset of the training split minus its last VAL
    mu, w = zca(x[:len(x) - VAL][:a.subset], a.eps)
    white = {}
    mu32, w32 = mu.astype(np.float32), w.astype(np.float32)
    for name, arr in (("train", x), ("test", xt)):
        white[name] = ((arr.reshape(len(arr), -1) - mu32) @ w32).reshape(arr.shape)
    real_load = datasets.load

    def load(name, root=None, train=True, download=False):
        if name != "cifar10":
            return real_load(name, root=root, train=train, download=download)
        return (white["train"], y) if train else (white["test"], yt)

    datasets.load = load
    study = "cifar10-mlp"
    name = f"zca-eps{a.eps:g}"
    out = Path(a.out_dir) / study
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    if not path.exists():
        rc = cli.main(["train", "--recipe", "cifar10-mlp", "--subset", str(a.subset), "--epochs", str(a.epochs),
                       "--val-size", str(VAL), "--threads", str(a.threads), "--no-progress", "--out", str(path)])
        if rc:
            return rc
    datasets.load = real_load
    base = ["--recipe", "cifar10-mlp", "--subset", str(a.subset), "--epochs", str(a.epochs)]
    rows = recipe_study.run(study, base, [(name, [f"(benchmarks/zca_screen.py --eps {a.eps:g}: inputs "
                                                  "ZCA-whitened)"])], val_size=VAL, out_dir=a.out_dir)
    for r in rows:
        print(f"{r['name']:24s} {r['val_one_pass']:6.2f} / {r['val_multi_pass']:6.2f}  {r['flags']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
