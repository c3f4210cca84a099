"""Plots of FF training results (needs matplotlib: ``pip install "fflib-core[plot]"``).

Every function returns a :class:`matplotlib.figure.Figure` (built without pyplot, so nothing is
left open in a script; a notebook with the inline backend shows it when it is the cell's value)
and, given ``path``, also saves it as a PNG.

* :func:`loss_curves`: the local loss of every block (and the head's) per epoch, from
  :func:`fflib.fit`'s history or the ``epochs`` of a ``python -m fflib train --out`` JSON.
* :func:`layer_accuracy`: the test accuracy of every FF layer alone, from :func:`fflib.evaluate`.
* :func:`layer_curves`: the validation accuracy of every FF layer alone per epoch, when the run
  held out a validation split.
* :func:`goodness_distributions`: per layer, histograms of the goodness of the true label
  (positive) and of the wrong labels (negative).
* :func:`inference_comparison`: one-pass (softmax head) against multi-pass (goodness of every
  label) error, per epoch when validation errors were recorded, and on the test set.
* :func:`plot_result` and ``python -m fflib plot RESULT.json --out DIR``: all that a result file
  holds, as PNGs.
"""
import argparse
import json
import os
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .nn import FFModel

__all__ = ["loss_curves", "layer_accuracy", "layer_curves", "goodness_distributions", "inference_comparison",
           "plot_result", "add_plot_parser", "run_plot"]

PathLike = Union[str, "os.PathLike[str]"]


def _figure(ncols: int = 1, width: float = 6.0, height: float = 4.0) -> "Figure":
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("fflib.plot needs matplotlib: pip install matplotlib "
                          "(or the plot extra: pip install \"fflib-core[plot]\")") from None
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig


def _save(fig: "Figure", path: Optional[PathLike]) -> "Figure":
    if path is not None:
        d = os.path.dirname(os.fspath(path))
        if d and not os.path.isdir(d):
            raise FileNotFoundError(f"path: the directory {d!r} does not exist")
        fig.savefig(path, format="png", dpi=110)
    return fig


def _integer_epochs(ax: "Axes") -> None:
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _epochs_of(history: Any, name: str = "history") -> List[Mapping[str, Any]]:
    """The per-epoch records of fit()'s history, of a CLI result, or a list of them."""
    if isinstance(history, Mapping):
        if "epochs" in history:
            history = history["epochs"]
        elif "history" in history:
            return _epochs_of(history["history"], name)
        else:
            raise ValueError(f"{name} must be fit()'s history or a result JSON with 'epochs', "
                             f"got a dict with keys {sorted(history)}")
    if not isinstance(history, Sequence) or isinstance(history, (str, bytes)):
        raise TypeError(f"{name} must be fit()'s history (a dict with 'epochs') or a list of epoch "
                        f"records, got {type(history).__name__}")
    if not history:
        raise ValueError(f"{name} has no epochs")
    for r in history:
        if not isinstance(r, Mapping) or "block_loss" not in r:
            raise ValueError(f"{name}: every epoch record needs 'block_loss', got {r!r}")
    return list(history)


def _trains(rec: Mapping[str, Any], b: int) -> bool:
    """Whether block ``b`` trained in the epoch of ``rec``: fit()'s ``active`` is a 0/1 mask over
    the blocks, a label-free run's (a record with a ``phase``) a list of block indices; without
    it (a result written before ``train --out`` recorded it) a loss of exactly 0 marks a block
    that did not train (fit() reports 0 for it; a trained block's loss is positive)."""
    act = rec.get("active")
    if act is None:
        return "phase" in rec or rec["block_loss"][b] != 0.0
    if "phase" in rec:
        return b in act
    return b < len(act) and bool(act[b])


def loss_curves(history: Any, *, path: Optional[PathLike] = None, log: bool = False) -> "Figure":
    """The mean local loss of every block per epoch (the head's dashed, when trained).

    history : :func:`fflib.fit`'s return value, a ``python -m fflib train --out`` result, or
        their list of epoch records (each with ``block_loss`` and optionally ``head_loss``; a
        label-free run's probe epochs have no block losses and are drawn as the linear probe's).
    log : a logarithmic loss axis.
    """
    recs = _epochs_of(history)
    epochs = np.array([r.get("epoch", i + 1) for i, r in enumerate(recs)])
    # a label-free run's probe epochs train the head alone (block_loss None), its label-free
    # epochs the blocks alone (head_loss None): each curve is drawn over the epochs that have it
    trained = [r["block_loss"] for r in recs if r["block_loss"] is not None]
    nb = len(trained[0]) if trained else 0
    if any(len(b) != nb for b in trained):
        raise ValueError("history: the number of blocks changes between epochs")
    fig = _figure()
    ax = fig.add_subplot()
    for b in range(nb):
        pts = [(e, r["block_loss"][b]) for e, r in zip(epochs, recs)
               if r["block_loss"] is not None and _trains(r, b)]
        ax.plot(*zip(*pts) if pts else ([], []), marker="o", ms=3, label=f"block {b + 1}")
    head = [(e, r["head_loss"]) for e, r in zip(epochs, recs) if r.get("head_loss") is not None]
    if head:
        probe = any(r.get("phase") == "probe" for r in recs)
        ax.plot(*zip(*head), "k--", marker="s", ms=3, label="linear probe" if probe else "one-pass head")
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean local loss")
    if log:
        ax.set_yscale("log")
    ax.set_title("FF loss per block")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def layer_accuracy(result: Mapping[str, Any], *, path: Optional[PathLike] = None,
                   title: str = "accuracy of each FF layer alone") -> "Figure":
    """Bars of every layer's accuracy alone (argmax over labels of that layer's goodness), with
    the multi-pass and one-pass accuracies of the whole model as lines.

    result : :func:`fflib.evaluate`'s dict (``block_accuracy`` as fractions, ``multi_pass`` and
        ``one_pass`` errors in percent), or a ``python -m fflib train --out`` result
        (``block_accuracy_test`` and ``test_error``).
    """
    if not isinstance(result, Mapping):
        raise TypeError(f"result must be a dict from fflib.evaluate(), got {type(result).__name__}")
    acc = result.get("block_accuracy", result.get("block_accuracy_test"))
    if acc is None:
        raise ValueError(f"result has no 'block_accuracy' (keys: {sorted(result)})")
    errors = result.get("test_error", result)
    acc_pct = 100.0 * np.asarray(acc, dtype=float)
    fig = _figure()
    ax = fig.add_subplot()
    xs = np.arange(1, len(acc_pct) + 1)
    bars = ax.bar(xs, acc_pct, color="tab:blue", alpha=0.8, label="layer alone")
    for rect, v in zip(bars, acc_pct):
        ax.annotate(f"{v:.1f}", (rect.get_x() + rect.get_width() / 2, v / 2), ha="center", va="center",
                    fontsize=9, color="white")
    for key, style, label in (("multi_pass", "tab:green", "multi-pass"), ("one_pass", "tab:red", "one-pass")):
        if errors.get(key) is not None:
            ax.axhline(100.0 - float(errors[key]), color=style, ls="--", label=f"{label} (model)")
    ax.set_xticks(xs)
    ax.set_xlabel("FF layer")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(loc="lower right")
    return _save(fig, path)


def _layer_curves(recs: Sequence[Mapping[str, Any]]) -> List[Optional[List[float]]]:
    # fit()'s records hold evaluate()'s dict as "val", a train --out result's "val_block_accuracy"
    out: List[Optional[List[float]]] = []
    for r in recs:
        v = r.get("val")
        acc = v.get("block_accuracy") if isinstance(v, Mapping) else r.get("val_block_accuracy")
        out.append(None if acc is None else [float(a) for a in acc])
    return out


def layer_curves(history: Any, *, path: Optional[PathLike] = None,
                 title: str = "validation accuracy of each FF layer alone") -> "Figure":
    """Every FF layer's accuracy alone (argmax over labels of that layer's goodness) on the
    validation split, per epoch: which layers learn, and when (the survey's CIFAR-10 CNN study
    reads it to see whether the deeper blocks build on the first).

    history : fit()'s history (``fit(..., x_val=, y_val=)``), a ``python -m fflib train --out``
        result of a run with ``--val-size`` (its epochs' ``val_block_accuracy``), or a list of
        epoch records."""
    recs = _epochs_of(history)
    curves = _layer_curves(recs)
    epochs = [int(r.get("epoch", i + 1)) for i, r in enumerate(recs)]
    pts = [(e, c) for e, c in zip(epochs, curves) if c is not None]
    if not pts:
        raise ValueError("history has no per-layer validation accuracy (train with a validation split: "
                         "fit(..., x_val=, y_val=) or --val-size)")
    n = max(len(c) for _, c in pts)
    fig = _figure()
    ax = fig.add_subplot()
    for b in range(n):
        xs = [e for e, c in pts if b < len(c)]
        ax.plot(xs, [100.0 * c[b] for _, c in pts if b < len(c)], marker="o", ms=3, label=f"layer {b + 1}")
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _check_labelled(model: "FFModel") -> None:
    """A model whose goodness scores labels (a label in its input, or channel groups)."""
    from .nn import GROUP_LOSSES
    if model.label_encoding == "none" and model.config["loss"] not in GROUP_LOSSES:
        raise ValueError(f"the model was trained without labels ({model.config['loss']} loss, no label in its "
                         f"input): it has no goodness per label to plot (its linear probe's error is in the "
                         f"result's plots)")


def goodness_distributions(model: "FFModel", x: Any, y: Any, *, bins: int = 40, batch_size: int = 1000,
                           path: Optional[PathLike] = None) -> "Figure":
    """Per FF layer, histograms of the goodness with the true label (positive data) and with
    every wrong label (negative data), in eval mode, on (x, y).

    The layers are the model's units, as in :func:`fflib.evaluate` (whatever blocks it was
    trained with); the model's blocks and mode are restored afterwards."""
    from .nn import as_float32_batch
    from .routines import unit_ranges
    _check_labelled(model)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    x = as_float32_batch(x, "x", int(np.prod(model.input_shape)))
    y = model._check_y(y, x.shape[0])
    was_training, saved = model.training, model.blocks
    model.eval()
    try:
        model.set_block_ranges(unit_ranges(model))
        g = np.concatenate([model.goodness(x[s:s + batch_size]) for s in range(0, len(y), batch_size)])
    finally:
        model.set_block_ranges(saved)
        model.train(was_training)
    n, k, nb = g.shape
    is_pos = np.zeros((n, k), dtype=bool)
    is_pos[np.arange(n), y] = True
    fig = _figure(ncols=min(nb, 4), width=3.6, height=3.2 * ((nb + 3) // 4))
    axes = fig.subplots(nrows=(nb + 3) // 4, ncols=min(nb, 4), squeeze=False).ravel()
    for b in range(nb):
        ax = axes[b]
        pos, neg = g[:, :, b][is_pos], g[:, :, b][~is_pos]
        edges = np.histogram_bin_edges(np.concatenate([pos, neg]), bins=int(bins))
        ax.hist(neg, bins=edges, density=True, alpha=0.55, color="tab:red", label="negative (wrong label)")
        ax.hist(pos, bins=edges, density=True, alpha=0.55, color="tab:green", label="positive (true label)")
        ax.set_title(f"layer {b + 1}")
        ax.set_xlabel("goodness")
        if b == 0:
            ax.set_ylabel("density")
            ax.legend(fontsize=7)
    for ax in axes[nb:]:
        ax.set_visible(False)
    return _save(fig, path)


def _val_curves(recs: Sequence[Mapping[str, Any]]) -> Dict[str, List[Optional[float]]]:
    # fit()'s records hold evaluate()'s dict as "val", a train --out result's as "val_error";
    # a label-free run's (fflib.unsupervised) hold the linear probe's error as a number
    out: Dict[str, List[Optional[float]]] = {"one_pass": [], "multi_pass": [], "probe": []}
    for r in recs:
        v = r.get("val", r.get("val_error"))
        if isinstance(v, (int, float)):
            v = {"probe": v}
        v = v or {}
        for key in out:
            out[key].append(None if v.get(key) is None else float(v[key]))
    return out


def inference_comparison(result: Mapping[str, Any], *, path: Optional[PathLike] = None) -> "Figure":
    """One-pass against multi-pass error (%) -- a label-free run's (``--method scff|hybrid|uff``)
    linear probe's -- per epoch on the validation data when the run recorded it
    (``fit(..., x_val=, y_val=)`` or ``--val-size``), and as bars on the test (and training) data.

    result : ``{"history": fit's history, "test": evaluate's dict}`` (what the quick-start
        notebook saves), a ``python -m fflib train --out`` result, or an :func:`fflib.evaluate`
        dict alone."""
    if not isinstance(result, Mapping):
        raise TypeError(f"result must be a dict, got {type(result).__name__}")
    test = result.get("test_error", result.get("test", result))
    train = result.get("train_error")
    recs: List[Mapping[str, Any]] = []
    if "epochs" in result or "history" in result:
        recs = _epochs_of(result, "result")
    curves = _val_curves(recs)
    has_curves = any(v is not None for vs in curves.values() for v in vs)
    bars = [(name, d) for name, d in (("test", test), ("train", train)) if isinstance(d, Mapping)
            and any(d.get(k) is not None for k in ("one_pass", "multi_pass", "probe"))]
    if not has_curves and not bars:
        raise ValueError("result holds neither per-epoch validation errors nor test errors "
                         f"(keys: {sorted(result)})")
    fig = _figure(ncols=int(has_curves) + int(bool(bars)), width=5.0)
    axes = fig.subplots(1, int(has_curves) + int(bool(bars)), squeeze=False)[0]
    colors = {"one_pass": "tab:red", "multi_pass": "tab:green", "probe": "tab:purple"}
    labels = {"one_pass": "one-pass (head)", "multi_pass": "multi-pass (goodness)", "probe": "linear probe"}
    keys = [k for k in colors if any(d.get(k) is not None for _, d in bars)
            or any(v is not None for v in curves[k])]
    i = 0
    if has_curves:
        ax = axes[i]
        i += 1
        ep = [r.get("epoch", j + 1) for j, r in enumerate(recs)]
        for key, vals in curves.items():
            pts = [(e, v) for e, v in zip(ep, vals) if v is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=colors[key], label=labels[key])
        _integer_epochs(ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation error (%)")
        ax.set_title("during training")
        ax.legend()
        ax.grid(alpha=0.3)
    if bars:
        ax = axes[i]
        width = 0.76 / len(keys)
        for j, key in enumerate(keys):
            xs = [k + (j - (len(keys) - 1) / 2) * width for k in range(len(bars))
                  if bars[k][1].get(key) is not None]
            vs = [float(d[key]) for _, d in bars if d.get(key) is not None]
            if vs:
                rects = ax.bar(xs, vs, width, color=colors[key], label=labels[key])
                for rect, v in zip(rects, vs):
                    ax.annotate(f"{v:.2f}", (rect.get_x() + rect.get_width() / 2, v), ha="center",
                                va="bottom", fontsize=8)
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels([name for name, _ in bars])
        ax.set_ylabel("error (%)")
        ax.set_title("after training")
        ax.legend()
    fig.suptitle("linear probe on label-free features" if keys == ["probe"] else "one-pass vs multi-pass inference")
    return _save(fig, path)


def plot_result(result: Union[Mapping[str, Any], PathLike], out_dir: PathLike, *,
                model: Optional["FFModel"] = None, x: Any = None, y: Any = None) -> List[str]:
    """Write every plot a result holds as PNGs into ``out_dir`` (which must exist) and return
    their paths: ``loss_curves.png``, ``layer_accuracy.png``, ``layer_curves.png`` (with a
    validation split), ``inference.png``, and with a model and data ``goodness.png``.

    result : a dict or the path of a JSON file: a ``python -m fflib train --out`` result or
        ``{"history": ..., "test": ...}`` as the quick-start notebook saves."""
    if not isinstance(result, Mapping):
        with open(os.fspath(result)) as f:
            result = json.load(f)
        if not isinstance(result, Mapping):
            raise ValueError(f"result: the JSON file holds a {type(result).__name__}, not an object")
    out = os.fspath(out_dir)
    if not os.path.isdir(out):
        raise FileNotFoundError(f"out_dir {out!r} is not an existing directory")
    if model is not None:
        _check_labelled(model)      # before any file is written
    written = []
    if "epochs" in result or "history" in result:
        p = os.path.join(out, "loss_curves.png")
        loss_curves(result, path=p)
        written.append(p)
    acc_src = result.get("test", result)
    if isinstance(acc_src, Mapping) and (acc_src.get("block_accuracy") is not None
                                         or acc_src.get("block_accuracy_test") is not None):
        p = os.path.join(out, "layer_accuracy.png")
        layer_accuracy(acc_src if "test" in result else result, path=p)
        written.append(p)
    if ("epochs" in result or "history" in result) and any(c is not None for c in
                                                           _layer_curves(_epochs_of(result, "result"))):
        p = os.path.join(out, "layer_curves.png")
        layer_curves(result, path=p)
        written.append(p)
    try:
        p = os.path.join(out, "inference.png")
        inference_comparison(result, path=p)
        written.append(p)
    except ValueError:
        pass  # no errors recorded: nothing to compare
    if model is not None and x is not None and y is not None:
        p = os.path.join(out, "goodness.png")
        goodness_distributions(model, x, y, path=p)
        written.append(p)
    if not written:
        raise ValueError(f"result holds nothing to plot (keys: {sorted(result)})")
    return written


# ------------------------------------------------------------------ python -m fflib plot

def add_plot_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``plot`` command to ``subparsers`` (what the CLI parser's ``add_subparsers()``
    returned) and return its parser; :func:`run_plot` runs it."""
    p = subparsers.add_parser("plot", help="plot a result JSON (from train --out) as PNGs")
    p.add_argument("result", help="RESULT.json written by `python -m fflib train --out`")
    p.add_argument("--out", default=".", help="directory for the PNGs (created if missing; default .)")
    p.add_argument("--model", default=None,
                   help="the trained model (.npz from train --save): adds goodness distributions on "
                        "the test split of the result's dataset")
    p.add_argument("--data-dir", default=None, help="dataset directory for --model (default: $FFLIB_DATA)")
    p.add_argument("--samples", type=int, default=2000, help="test samples for the goodness plot (default 2000)")
    return p


def run_plot(args: argparse.Namespace) -> int:
    """Run ``python -m fflib plot``: returns the exit status (2 with a one-line message on bad input)."""
    import sys

    def bad(msg: str) -> int:
        sys.stderr.write(f"python -m fflib plot: error: {msg}\n")
        return 2

    try:
        with open(args.result) as f:
            result = json.load(f)
    except OSError as e:
        return bad(f"cannot read {args.result!r}: {e.strerror or e}")
    except json.JSONDecodeError as e:
        return bad(f"{args.result!r} is not JSON: {e}")
    if not isinstance(result, dict):
        return bad(f"{args.result!r} does not hold a result object")
    if args.samples < 1:
        return bad(f"--samples must be a positive int, got {args.samples}")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        return bad(f"cannot create --out {args.out!r}: {e.strerror or e}")
    model = x = y = None
    if args.model:
        from . import datasets
        from .nn import FFModel
        try:
            model = FFModel.load(args.model)
            _check_labelled(model)
            name = (result.get("config") or {}).get("dataset", "sample")
            if name == "sample":
                x, y = datasets.load_sample(train=False)
            else:
                x, y = datasets.load(name, root=args.data_dir or (result.get("config") or {}).get("data_dir"),
                                     train=False)
            x, y = x[:args.samples].reshape(min(len(x), args.samples), -1), y[:args.samples]
        except (OSError, ValueError, KeyError, datasets.DatasetError) as e:
            return bad(f"--model {args.model}: " + str(e).replace("\n", " "))
    try:
        paths = plot_result(result, args.out, model=model, x=x, y=y)
    except (ValueError, TypeError) as e:
        return bad(f"{args.result!r}: {e}")
    for p in paths:
        print(p)
    return 0
