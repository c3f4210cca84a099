"""Does SCFF need the negative pair's smaller norm?  The SCFF authors standardise each image and
feed a pair as ``W a + W b + 2c`` without renormalising it, so a negative pair (two different
images) enters with a smaller norm than a positive (Chen et al. 2025; docs/studies/scff-recipe.md).
fflib's SCFF model renormalises the pair's mean in its input LenNorm.  This script trains the
``mnist-mlp-scff`` recipe both ways on the first 55,000 MNIST training images and scores the
linear probe on the last 5,000 after every probe epoch (never the test set):

- ``--mode control``: the recipe's model (:func:`fflib.unsupervised.scff_mlp`, input LenNorm);
  its first epoch's block losses match the recipe's run (recipe_study/mnist-mlp-scff/c20crop2hd2.json).
- ``--mode unnorm``: every image RMS-normalised beforehand (training, probe and validation
  images alike) and the same MLP without its input LenNorm, so a pair ``(x_a + x_b) / 2`` keeps
  its smaller norm; everything else as the recipe (first layer x2, threshold 4, Adam 3e-3 / probe
  1e-3, dropout 0.2 on the probe's input, 2-pixel shifts, 20 + 20 epochs, linear cooldown over
  the probe's epochs, seed 0 unless ``--seed``).

    FFLIB_DATA=../shared/data python benchmarks/scff_pair_norm.py --mode unnorm \\
        --out benchmarks/results/recipe_study/mnist-mlp-scff/unnorm-pair.json
"""
import argparse
import json
import os
import time

import numpy as np

import fflib
from fflib import Adam, FFModel, LinearCooldown, mlp
from fflib.reference import lennorm_forward
from fflib.unsupervised import fit_unsupervised, label_free_plan, scff_mlp


def rms_normalise(x):
    """Each row as the RMS LenNorm outputs it (eps 1e-4), in float32."""
    return lennorm_forward(x, "rms")[0].astype(np.float32)


def mnist_split(root):
    """The first 55,000 MNIST training images and labels, flat, and the last 5,000 (validation)."""
    x, y = fflib.datasets.load_mnist(root=root)
    x = x.reshape(len(x), -1)
    return x[:-5000], y[:-5000], x[-5000:], y[-5000:]


def run_on_validation(model, opt, sched, x, y, xv, yv, epochs, head_epochs, out, meta):
    """The recipe's SCFF run of ``model`` (2-pixel shifts, batch 100, seed ``meta["seed"]``) with ``opt`` and
    ``sched``, the probe scored on (xv, yv) every probe epoch; after every epoch the history so
    far is printed and written to ``out`` as JSON with the settings ``meta``."""
    hist = []

    def report(rec):
        hist.append({k: v for k, v in rec.items() if isinstance(v, (int, float, str, list, dict, type(None)))})
        print(json.dumps(hist[-1]), flush=True)
        with open(out, "w") as f:
            json.dump(dict(meta, epochs=epochs, head_epochs=head_epochs, history=hist), f, indent=1)

    t = time.perf_counter()
    fit_unsupervised(model, x, y, method="scff", epochs=epochs, head_epochs=head_epochs, batch_size=100,
                     optimizer=opt, scheduler=sched, augment="crop2", random_state=meta["seed"], x_val=xv, y_val=yv,
                     callback=report)
    print(f"{time.perf_counter() - t:.0f} s")


def study_parser(doc):
    """The flags the SCFF study scripts share: the recipe's 20 + 20 epochs, the data's root,
    threads, the JSON to write."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--head-epochs", type=int, default=20)
    p.add_argument("--root", default=os.environ.get("FFLIB_DATA"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="the weights' and the data order's seed (the recipe's: 0)")
    p.add_argument("--out", required=True)
    return p


def main(argv=None):
    p = study_parser(__doc__)
    p.add_argument("--mode", choices=["control", "unnorm"], default="unnorm")
    a = p.parse_args(argv)
    fflib.set_num_threads(a.threads)
    x, y, xv, yv = mnist_split(a.root)
    if a.mode == "control":
        model = scff_mlp((2000, 2000), (1, 28, 28), 4.0, first_scale=2.0, seed=a.seed)
    else:
        x, xv = rms_normalise(x), rms_normalise(xv)
        model = FFModel(mlp([784, 2000, 2000], norm="rms", normalize_input=False), input_shape=(1, 28, 28),
                        label_encoding="none", loss="ff", goodness="mean", threshold=4.0, norm="rms",
                        head_blocks=[0, 1], seed=a.seed)
        for q in model.parameters()[:2]:    # the first Linear's weight and bias, x2 as scff_mlp
            q *= np.float32(2.0)
    model.set_config(head_dropout=0.2)
    opt = Adam(model, lr=3e-3, head_lr=1e-3)
    sched = LinearCooldown(opt, len(label_free_plan(model.num_blocks, a.epochs, a.head_epochs, "simultaneous")))
    run_on_validation(model, opt, sched, x, y, xv, yv, a.epochs, a.head_epochs, a.out, {"mode": a.mode, "seed": a.seed})


if __name__ == "__main__":
    main()
