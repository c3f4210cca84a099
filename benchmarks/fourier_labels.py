"""Fourier labels on the survey's MNIST CNN (zoo "cnn"): per-block accuracy and loss per epoch
for one-hot, the default plane waves, waves fitted to the class templates and the learned
embedding.  ``run()`` returns a JSON-able dict; ``python benchmarks/fourier_labels.py`` writes it
to benchmarks/results/fourier_labels.json, which notebooks/fourier_labels.ipynb plots.

    FFLIB_NUM_THREADS=1 python benchmarks/fourier_labels.py [--train N] [--epochs E]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fflib  # noqa: E402
from fflib import models  # noqa: E402
from fflib.labels import fit_fourier_modes  # noqa: E402

#: encodings compared: name -> (label_encoding, model keywords; "fit" is replaced by fitted modes)
ENCODINGS = {
    "onehot": ("onehot", {}),
    "fourier (default waves)": ("fourier", {}),
    "fourier (fitted, 16 modes, 0.1)": ("fourier", {"fourier_modes": "fit", "label_value": 0.1}),
    "embedding": ("embedding", {}),
}


def run(n_train=3000, n_test=1000, epochs=4, modes_per_class=16, seed=0):
    x, y = fflib.datasets.load_sample(train=True)
    xt, yt = fflib.datasets.load_sample(train=False)
    x, y, xt, yt = x[:n_train], y[:n_train], xt[:n_test], yt[:n_test]
    table = fit_fourier_modes(x, y, 10, modes_per_class)
    out = {"config": {"model": "cnn (survey MNIST CNN, zoo)", "data": "fflib.datasets.load_sample",
                      "n_train": n_train, "n_test": n_test, "epochs": epochs, "batch_size": 100,
                      "modes_per_class": modes_per_class, "seed": seed, "optimizer": "Adam lr 1e-3 (fit default)"},
           "fitted_modes": table.tolist(), "runs": {}}
    for name, (enc, kw) in ENCODINGS.items():
        kw = {k: (table if v == "fit" else v) for k, v in kw.items()}
        model = models.build("cnn", "sample", seed=seed, label_encoding=enc, **kw)
        hist = {"epoch": [0], "block_loss": [[float("nan")] * model.num_blocks],
                "block_accuracy": [model.eval().block_accuracy(xt, yt)]}
        model.train()

        def record(rec, model=model, hist=hist):
            hist["epoch"].append(rec["epoch"])
            hist["block_loss"].append(rec["block_loss"])
            hist["block_accuracy"].append(model.eval().block_accuracy(xt, yt))
            model.train()

        t = time.perf_counter()
        fflib.fit(model, x, y, epochs=epochs, batch_size=100, progress=False, random_state=seed, callback=record)
        hist["seconds"] = time.perf_counter() - t
        hist["test_error"] = fflib.evaluate(model, xt, yt)
        out["runs"][name] = hist
        print(f"{name:34s} block acc {np.round(hist['block_accuracy'][-1], 3).tolist()} "
              f"loss {np.round(hist['block_loss'][-1], 3).tolist()} {hist['seconds']:.0f}s", flush=True)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=4)
    a = p.parse_args()
    res = run(n_train=a.train, epochs=a.epochs)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fourier_labels.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(path)
