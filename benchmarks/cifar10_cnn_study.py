"""Why the original-FF CNN trains worse blocks the deeper they are on CIFAR-10, and what fixes it.

The ``cifar10-cnn`` recipe (fflib/recipes.py) reached 62 % test error after 2 epochs with its first
block alone the best (42 % accuracy) and the deeper blocks near 30 %.  This script trains the same
network (the survey's four 3x3 conv blocks with 2x2 pooling, SymBa loss on mean goodness, a learned
label channel) on a CIFAR-10 subset and records, per epoch, every block's loss and every block's
multi-pass validation accuracy alone, for one variant per run: the baseline, per-block learning
rates, the normalisation between blocks, the label encoding, the one-pass head's input blocks and
rate.  The channel widths are scaled down (``width``) so that a run fits in a few core-minutes;
the baseline at that width shows the same ordering of blocks as the full-width 2-epoch run.

Training images: the first ``n_train`` of the training set; validation: images from the last
5,000 of the training set (the recipe's ``--val-size 5000`` split), never the test set.

Each run is a function returning a JSON-able dict; results go to
``benchmarks/results/cifar10_cnn_study.json`` and a run already there is skipped (resumable).

    FFLIB_DATA=/work/shared/data FFLIB_NUM_THREADS=1 nice -n 10 python benchmarks/cifar10_cnn_study.py [RUN ...]
"""
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import fflib  # noqa: E402
from fflib import datasets, models as zoo  # noqa: E402
from fflib.nn import FFModel  # noqa: E402
from fflib.optim import Adam, LinearCooldown  # noqa: E402
from fflib.train import fit  # noqa: E402

OUT = os.path.join(HERE, "results", "cifar10_cnn_study.json")
FULL_WIDTHS = (128, 264, 512, 1024)

#: the study's common settings: the cifar10-cnn recipe's (SymBa, mean goodness, RMS between
#: blocks, learned label channel, Adam 3e-3 with a linear cooldown, batch 100) on a subset
BASE = dict(width=0.25, n_train=5000, n_val=1000, epochs=4, batch_size=100, lr=0.003, block_lr=None,
            head_lr=0.0003, head_blocks="auto", norm="rms", batchnorm=False, label_encoding="embedding",
            label_value=1.0, cooldown=True, augment=None, windows=None, first_norm=None, seed=0)

_DATA = {}


def _data(n_train, n_val):
    if "train" not in _DATA:
        _DATA["train"] = datasets.load_cifar10(train=True)
    x, y = _DATA["train"]
    x = x.reshape(len(x), -1)
    return (x[:n_train], y[:n_train], x[45000:45000 + n_val], y[45000:45000 + n_val])


def build(cfg):
    """The survey's CIFAR-10 CNN at ``cfg['width']`` times its channels, with the study's
    normalisation between blocks, label encoding and head."""
    widths = [max(10, int(round(w * cfg["width"]))) for w in FULL_WIDTHS]
    c = 3 + int(cfg["label_encoding"] == "embedding")
    layers = []
    norm = None if cfg["norm"] == "none" else cfg["norm"]
    for b, out in enumerate(widths):
        if b == 0 and cfg["first_norm"] is not None:   # block 1's input normalised otherwise
            layers += zoo.conv_block(c, out, 3, padding=1, pool=2, norm=cfg["first_norm"])
        else:
            layers += zoo.conv_block(c, out, 3, padding=1, pool=2, batchnorm=cfg["batchnorm"], norm=norm)
        c = out
    head_blocks = cfg["head_blocks"]
    model = FFModel(layers, (3, 32, 32), 10, loss="symba", goodness="mean", threshold=1.0,
                    norm="rms" if cfg["norm"] == "none" else cfg["norm"], label_encoding=cfg["label_encoding"],
                    label_value=cfg["label_value"], head_blocks=head_blocks, seed=cfg["seed"])
    return model, widths


def _optimizers(model, cfg):
    """One Adam for every block (``block_lr``: a rate per block; the label embedding goes with
    block 0) and the head; each with its own cooldown."""
    rates = cfg["block_lr"] or [cfg["lr"]] * model.num_blocks
    convs = [i for i in model.trainable_layers() if i >= 0]
    owner = {}
    for b, (lo, hi) in enumerate(model.blocks):
        for i in convs:
            if lo <= i < hi:
                owner.setdefault(b, []).append(i)
    owner[0] = owner[0] + [-2] if -2 in model.trainable_layers() else owner[0]
    opts = [Adam(model, lr=rates[b], layers=owner[b], head=False) for b in range(model.num_blocks)]
    if model.has_head:
        opts.append(Adam(model, lr=cfg["head_lr"], layers=[], head=True))
    scheds = [LinearCooldown(o, cfg["epochs"]) for o in opts] if cfg["cooldown"] else []
    return opts, scheds


def train(name, **over):
    """Train one variant (``over``: settings that differ from :data:`BASE`) and return its record."""
    cfg = dict(BASE, **over)
    fflib.set_num_threads(1)
    x, y, xv, yv = _data(cfg["n_train"], cfg["n_val"])
    model, widths = build(cfg)
    opts, scheds = _optimizers(model, cfg)

    def step_others(rec):   # fit steps the first schedule; the others follow it
        for s in scheds[1:]:
            s.step()

    t0 = time.perf_counter()
    hist = fit(model, x, y, epochs=cfg["epochs"], windows=cfg["windows"], batch_size=cfg["batch_size"], optimizer=opts[0],
               scheduler=scheds[0] if scheds else None, augment=cfg["augment"], random_state=cfg["seed"],
               x_val=xv, y_val=yv, progress=False, callback=step_others)
    epochs = [{"epoch": r["epoch"], "block_loss": r["block_loss"], "head_loss": r["head_loss"],
               "block_accuracy": r["val"]["block_accuracy"], "multi_pass": r["val"]["multi_pass"],
               "one_pass": r["val"].get("one_pass"), "seconds": r["seconds"]} for r in hist["epochs"]]
    last = epochs[-1]
    # multi-pass accuracy of the goodness summed over the first k blocks (k = 1..L), and of the
    # sum of each block's goodness standardised over the labels (so no block's scale dominates)
    g = np.concatenate([model.goodness(xv[s:s + 500]) for s in range(0, len(yv), 500)])
    prefix = [float((g[:, :, :k].sum(axis=2).argmax(axis=1) == yv).mean()) for k in range(1, g.shape[2] + 1)]
    z = (g - g.mean(axis=1, keepdims=True)) / (g.std(axis=1, keepdims=True) + 1e-12)
    last["prefix_accuracy"] = prefix
    last["standardised_sum_accuracy"] = float((z.sum(axis=2).argmax(axis=1) == yv).mean())
    last["goodness_mean"] = [float(v) for v in g.mean(axis=(0, 1))]
    print(f"{name}: blocks {[round(a, 3) for a in last['block_accuracy']]} multi {last['multi_pass']:.2f}% "
          f"one {last['one_pass']}% loss {[round(v, 3) for v in last['block_loss']]} "
          f"{time.perf_counter() - t0:.0f}s", flush=True)
    return {"name": name, "settings": cfg, "widths": widths, "epochs": epochs,
            "seconds": time.perf_counter() - t0, "threads": fflib.get_num_threads()}


#: the runs, by name: (what it tests, settings that differ from BASE).  Not yet run (the study's
#: time went to the BatchNorm follow-ups; ``python benchmarks/cifar10_cnn_study.py NAME`` runs one):
#: lr_all_lower, norm_l2, label_fourier, head_all_blocks, delay_deeper, label_value_3, head_rate.
RUNS = {
    "baseline": ("the recipe's settings at a quarter of the channels", {}),
    "lr_deeper_lower": ("learning rate falling with depth: 3e-3, 1e-3, 5e-4, 3e-4",
                        {"block_lr": [0.003, 0.001, 0.0005, 0.0003]}),
    "lr_deeper_higher": ("learning rate rising with depth: 3e-3, 6e-3, 1e-2, 1e-2",
                         {"block_lr": [0.003, 0.006, 0.01, 0.01]}),
    "lr_all_lower": ("every block at 1e-3", {"lr": 0.001}),
    "batchnorm": ("BatchNorm2d before every conv (after the RMS normalisation)", {"batchnorm": True}),
    "norm_none": ("no normalisation between blocks (the head still RMS-normalises its input)",
                  {"norm": "none"}),
    "norm_l2": ("L2 instead of RMS normalisation between blocks", {"norm": "l2"}),
    "label_onehot": ("one-hot label in the first pixels of every channel plane", {"label_encoding": "onehot"}),
    "label_fourier": ("a per-class plane wave added to the image", {"label_encoding": "fourier"}),
    "head_all_blocks": ("one-pass head on all four blocks at the blocks' rate",
                        {"head_blocks": [0, 1, 2, 3], "head_lr": 0.003}),
    "delay_deeper": ("blocks 2-4 start after block 1's second epoch (5 epochs, block 1 trains all 5)",
                     {"epochs": 5, "windows": [[0, 5], [2, 5], [2, 5], [2, 5]]}),
    "label_value_3": ("the label channel's initial scale 3 instead of 1", {"label_value": 3.0}),
    "batchnorm_only": ("BatchNorm2d before every conv and no RMS normalisation between blocks",
                       {"batchnorm": True, "norm": "none"}),
    "batchnorm_head_all": ("BatchNorm2d as in 'batchnorm', one-pass head on all four blocks at the blocks' rate",
                           {"batchnorm": True, "head_blocks": [0, 1, 2, 3], "head_lr": 0.003}),
    "batchnorm_only_head_all": ("'batchnorm_only' with the one-pass head on all four blocks at the blocks' rate",
                                {"batchnorm": True, "norm": "none", "head_blocks": [0, 1, 2, 3], "head_lr": 0.003}),
    "rms_in_batchnorm_between": ("RMS normalisation of the input (block 1 as in the recipe), BatchNorm2d "
                                 "and no RMS normalisation between blocks",
                                 {"first_norm": "rms", "batchnorm": True, "norm": "none"}),
    "half_baseline": ("the baseline at half the channels (64, 132, 256, 512), 3 epochs: does the ordering carry over?",
                      {"width": 0.5, "epochs": 3}),
    "half_batchnorm": ("'batchnorm' at half the channels, 3 epochs", {"width": 0.5, "epochs": 3, "batchnorm": True}),
    "head_rate": ("one-pass head on blocks 2-4 at the blocks' rate (the recipe: a tenth)",
                  {"head_lr": 0.003}),
}


def main(names):
    results = json.load(open(OUT)) if os.path.exists(OUT) else {}
    for name in names or list(RUNS):
        if name in results:
            print(f"{name}: in {OUT}, skipped")
            continue
        what, over = RUNS[name]
        rec = train(name, **over)
        rec["what"] = what
        results = json.load(open(OUT)) if os.path.exists(OUT) else {}
        results[name] = rec
        with open(OUT + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(OUT + ".tmp", OUT)


if __name__ == "__main__":
    main(sys.argv[1:])
