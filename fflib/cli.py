"""The command line: ``python -m fflib train ...`` and ``python -m fflib models``.

Contract (other tools depend on it): ``train`` prints one-pass and multi-pass test error and,
with ``--out FILE.json``, writes config, test_error/train_error {one_pass, multi_pass} in
percent, epochs (per-block mean loss and seconds), train_seconds and peak_rss_mb.  A bad
argument exits with status 2 and a one-line message; Ctrl-C stops after the current
minibatch and still writes what it has.
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np

from . import datasets


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _bad(message):
    sys.stderr.write(f"python -m fflib: error: {message}\n")
    sys.exit(2)


def _int_list(text):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (v > 0) or (kind is float and not np.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return v
    return parse


def _finite(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return v


def peak_rss_mb():
    """Peak resident memory of this process in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_parser():
    p = _Parser(prog="python -m fflib", description="Forward-Forward training (fflib).")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    t = sub.add_parser("train", help="train an FF model and report test error")
    t.add_argument("--dataset", default="sample", choices=datasets.DATASET_NAMES,
                   help="sample (embedded MNIST subset, the default), mnist, fashion-mnist, cifar10")
    t.add_argument("--data-dir", default=None, help="dataset directory (default: $FFLIB_DATA)")
    t.add_argument("--model", default="mlp", choices=["mlp"], help="model family")
    t.add_argument("--layers", type=_int_list, default=[500, 100], help="hidden sizes, e.g. 500,100")
    t.add_argument("--epochs", type=_positive(int), default=None, help="epochs (default 10; 5 on sample)")
    t.add_argument("--batch-size", type=_positive(int), default=100)
    t.add_argument("--lr", type=_positive(float), default=None, help="Adam learning rate")
    t.add_argument("--threshold", type=_finite, default=None, help="FF loss threshold theta")
    t.add_argument("--goodness", choices=["sum", "mean"], default="mean")
    t.add_argument("--norm", choices=["l2", "rms", "none"], default="rms")
    t.add_argument("--loss", choices=["ff", "symba"], default="ff")
    t.add_argument("--order", choices=["simultaneous", "layerwise"], default="simultaneous")
    t.add_argument("--negatives", choices=["uniform", "hard"], default="uniform")
    t.add_argument("--milestones", type=_int_list, default=None, help="MultiStepLR epochs, e.g. 30,45")
    t.add_argument("--gamma", type=_positive(float), default=0.1)
    t.add_argument("--cooldown", action="store_true", help="linear LR cooldown over the second half")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=_positive(int), default=None, help="BLAS threads")
    t.add_argument("--out", default=None, help="write results as JSON to this file")
    t.add_argument("--save", default=None, help="save the trained model (.npz)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


DEFAULTS = {"lr": 0.003, "threshold": {"mean": 1.0, "sum": None}, "epochs": 10, "epochs_sample": 5}


def train_command(a):
    from . import FFModel, mlp, Adam, MultiStepLR, LinearCooldown, fit, evaluate, set_num_threads
    if a.threads:
        set_num_threads(a.threads)
    try:
        if a.dataset == "sample":
            if a.data_dir:
                _bad("--data-dir is not used with --dataset sample (it is embedded)")
            (x, y), (xt, yt) = datasets.load_sample(True), datasets.load_sample(False)
        else:
            x, y = datasets.load(a.dataset, root=a.data_dir, train=True)
            xt, yt = datasets.load(a.dataset, root=a.data_dir, train=False)
    except (FileNotFoundError, datasets.DatasetError) as e:
        _bad(str(e).replace("\n", " "))
    x = x.reshape(len(x), -1)
    xt = xt.reshape(len(xt), -1)
    epochs = a.epochs or (DEFAULTS["epochs_sample"] if a.dataset == "sample" else DEFAULTS["epochs"])
    lr = a.lr or DEFAULTS["lr"]
    threshold = a.threshold
    if threshold is None:
        threshold = 1.0 if a.goodness == "mean" else float(a.layers[0])
    sizes = [x.shape[1]] + a.layers
    config = {"dataset": a.dataset, "data_dir": a.data_dir, "model": a.model, "layers": sizes,
              "epochs": epochs, "batch_size": a.batch_size, "lr": lr, "threshold": threshold,
              "goodness": a.goodness, "norm": a.norm, "loss": a.loss, "order": a.order,
              "negatives": a.negatives, "milestones": a.milestones, "gamma": a.gamma,
              "cooldown": a.cooldown, "seed": a.seed, "threads": a.threads,
              "num_train": int(len(y)), "num_test": int(len(yt))}
    model = FFModel(mlp(sizes), x.shape[1], 10, loss=a.loss, threshold=threshold, goodness=a.goodness,
                    norm=a.norm, seed=a.seed)
    opt = Adam(model, lr=lr)
    sched = None
    if a.milestones:
        sched = MultiStepLR(opt, a.milestones, a.gamma)
    elif a.cooldown:
        sched = LinearCooldown(opt, epochs if a.order == "simultaneous" else epochs * model.num_blocks)
    print(f"fflib: training {'-'.join(map(str, sizes))} FF MLP on {a.dataset} "
          f"({len(y)} train / {len(yt)} test), {epochs} epochs", flush=True)

    def report(rec):
        print(f"epoch {rec['epoch']:3d}  block losses "
              + " ".join(f"{v:.4f}" for v in rec["block_loss"])
              + (f"  head {rec['head_loss']:.4f}" if rec["head_loss"] is not None else "")
              + f"  {rec['seconds']:.1f}s", flush=True)

    hist = fit(model, x, y, epochs=epochs, batch_size=a.batch_size, optimizer=opt, scheduler=sched,
               order=a.order, negatives=a.negatives, random_state=a.seed,
               progress=not a.no_progress and sys.stderr.isatty(), callback=report)
    if hist["interrupted"]:
        print("fflib: interrupted; evaluating the model as it is", flush=True)
    t0 = time.perf_counter()
    test = evaluate(model, xt, yt)
    eval_seconds = time.perf_counter() - t0
    train = evaluate(model, x, y)
    result = {
        "config": config,
        "test_error": {"one_pass": test["one_pass"], "multi_pass": test["multi_pass"]},
        "train_error": {"one_pass": train["one_pass"], "multi_pass": train["multi_pass"]},
        "block_accuracy_test": test["block_accuracy"],
        "epochs": [{"epoch": r["epoch"], "block_loss": r["block_loss"], "head_loss": r["head_loss"],
                    "lr": r["lr"], "seconds": r["seconds"]} for r in hist["epochs"]],
        "train_seconds": hist["train_seconds"], "test_eval_seconds": eval_seconds,
        "interrupted": hist["interrupted"], "peak_rss_mb": peak_rss_mb(),
        "blas": __import__("fflib").blas_name(), "num_params": model.num_parameters(head=True),
    }
    print(f"test error: one-pass {test['one_pass']:.2f}%  multi-pass {test['multi_pass']:.2f}%  "
          f"(train {train['one_pass']:.2f}% / {train['multi_pass']:.2f}%)  "
          f"train {hist['train_seconds']:.1f}s  peak RSS {result['peak_rss_mb']:.0f} MB")
    if a.save:
        model.save(a.save)
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, a.out)
    return 130 if hist["interrupted"] else 0


def main(argv=None):
    """Entry point of ``python -m fflib`` and the ``fflib`` script."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        argv = ["train"]
    a = parser.parse_args(argv)
    if a.command == "train":
        try:
            return train_command(a)
        except KeyboardInterrupt:  # during loading or evaluation: nothing to save
            sys.stderr.write("fflib: interrupted\n")
            return 130
    parser.print_help()
    return 2
