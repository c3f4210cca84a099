"""Unsupervised Forward-Forward (UFF) with autoencoder cells, then a linear probe.

Hwang, Seo and Jung, "Employing Layerwised Unsupervised Learning to Lessen Data and Loss
Requirements in Forward-Forward Algorithms" (arXiv 2404.14664, 2024; the survey's "UFF"),
replace FF's layers by *cells*, each a small unsupervised model trained by its own ordinary
loss on ordinary inputs: no negative data, no goodness.  A cell's latent vector feeds the next
cell; a classifier reads the latent vectors of the cells.  Their cells are an autoencoder
(AEFF), a denoising and a convolutional autoencoder, and a GAN.

What fflib builds (the AE cell, MLP blocks):

- **encoder** = the block (``[LenNorm ->] Linear -> ReLU`` of :func:`fflib.nn.mlp`), so the
  cell's latent vector is the block's output and passes to the next block as any block output
  does (no gradient crosses blocks);
- **decoder** = one Linear layer from the block's output back to the block's input, owned by
  the block (``FFModel.decoders``, saved, loaded and stepped by the optimiser with it);
- **loss** = the mean squared reconstruction error of the block's input (``loss="ae"``, the
  ``ae`` row of the core's loss table, ``ff_ae_loss`` in ``csrc/ff_loss.c``), the target being
  the block's input as it arrives (the raw data for block 0, the previous block's ReLU output
  after it);
- **training**: every block at once on each minibatch, each on its own loss (``order=
  "simultaneous"``), or cell by cell (``order="sequential"``: block b trains for ``epochs``
  epochs before block b + 1 starts);
- **classifier**: fflib's one-pass softmax head on the frozen, length-normalised outputs of
  the chosen blocks (``head_blocks``; :func:`uff_model` takes every block, the paper's
  concatenated latent vectors), trained afterwards for ``head_epochs`` epochs: a linear probe.

Where the paper's description stops and fflib chose: the decoder's depth (one Linear, no
activation), the reconstruction target of later cells (the previous block's output, not the
raw image), the normalisation (fflib's length normalisation where the paper says layer
normalisation), simultaneous versus cell-by-cell training (both offered), and the classifier
(a linear softmax probe; the paper does not say it is linear).  Denoising, convolutional and
GAN cells are not built: the ae loss accepts MLP blocks only and says so otherwise.
"""
import time

import numpy as np

from .nn import FFModel, as_float32_batch, mlp

__all__ = ["ORDERS", "uff_model", "fit_uff"]

ORDERS = ("simultaneous", "sequential")


def uff_model(sizes, num_classes=10, input_shape=None, *, norm="l2", head_blocks="all", seed=0):
    """An MLP of autoencoder cells: ``sizes = [D, h1, h2, ...]`` gives blocks
    ``LenNorm -> Linear(D, h1) -> ReLU``, ... each with a decoder back to its input, the ``ae``
    loss, no label in the input, and a one-pass head on every block's output (``head_blocks=
    "all"``; or a list of block indices, or None for no head).  ``norm`` ("l2", "rms" or
    "none") is the length normalisation of every block's input (:func:`fflib.nn.mlp`) and of the
    head's features ("l2" for the head when "none").  ``input_shape`` defaults to ``(D, 1, 1)``."""
    if not isinstance(sizes, (list, tuple)) or len(sizes) < 2:
        raise ValueError(f"sizes must be a list [input, hidden1, ...] of at least 2 ints, got {sizes!r}")
    nb = len(sizes) - 1
    heads = list(range(nb)) if isinstance(head_blocks, str) and head_blocks == "all" else head_blocks
    shape = (int(sizes[0]), 1, 1) if input_shape is None else input_shape
    return FFModel(mlp(list(sizes), norm=norm), shape, num_classes, loss="ae", norm=norm if norm != "none" else "l2",
                   label_encoding="none", head_blocks=heads, seed=seed)


def _count(name, v, lo):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


def fit_uff(model, x, y=None, *, epochs=10, head_epochs=5, batch_size=100, optimizer=None, scheduler=None,
            order="simultaneous", random_state=0, x_val=None, y_val=None, callback=None, progress=False):
    """Train ``model``'s autoencoder cells (``loss="ae"``, see :func:`uff_model`) on x without
    labels for ``epochs`` epochs, then its one-pass head on the frozen features for
    ``head_epochs`` epochs with the labels y (a linear probe; skipped when y is None).

    ``order``: "simultaneous" (every block on every minibatch, each on its own reconstruction
    loss) or "sequential" (block b alone for ``epochs`` epochs, then block b + 1: the cells'
    unsupervised phase lasts ``epochs * num_blocks`` epochs).  ``optimizer``: an fflib
    optimiser on this model (default: the model's, else ``Adam(model)``); ``scheduler`` is
    stepped once per epoch.  Returns a history like :func:`fflib.fit`'s: per epoch its phase
    ("uff" or "probe"), the mean reconstruction loss of each block (None in the probe), the
    probe's loss, ``lr``, seconds, and ``val_error`` (the probe's, in percent) once the head has
    trained and x_val is given."""
    from .optim import Adam, _Optimizer, _Scheduler
    from .unsupervised import probe_error
    if not isinstance(model, FFModel):
        raise TypeError(f"model must be an fflib.FFModel, got {type(model).__name__}")
    if model.config["loss"] != "ae" or not model.decoders:
        raise ValueError(f"method 'uff' trains autoencoder cells: the model needs loss='ae' (its blocks' decoders "
                         f"are made at construction; see fflib.uff.uff_model), got loss={model.config['loss']!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    x = as_float32_batch(x, "x", int(np.prod(model.input_shape)))
    epochs, head_epochs = _count("epochs", epochs, 0), _count("head_epochs", head_epochs, 0)
    batch_size = _count("batch_size", batch_size, 1)
    if y is not None:
        y = model._check_y(y, x.shape[0])
    elif head_epochs:
        raise ValueError("head_epochs > 0 trains the linear probe on labels: pass y (or head_epochs=0)")
    if head_epochs and not model.has_head:
        raise ValueError("head_epochs > 0 needs a model with a one-pass head (head_blocks not None)")
    if (x_val is None) != (y_val is None):
        raise ValueError("x_val and y_val go together")
    if optimizer is not None and (not isinstance(optimizer, _Optimizer) or optimizer.model is not model):
        raise ValueError(f"optimizer must be an fflib optimiser created on this model, got {optimizer!r}")
    if optimizer is None:
        optimizer = model.optimizer if model.optimizer is not None else Adam(model)
    if scheduler is not None and (not isinstance(scheduler, _Scheduler) or scheduler.optimizer is not optimizer):
        raise ValueError(f"scheduler must be an fflib schedule of the optimiser the run uses, got {scheduler!r}")
    rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
    n, nb = x.shape[0], model.num_blocks
    # the plan: one active mask per epoch (None: every block), then the probe's epochs
    if order == "simultaneous":
        plan = [None] * epochs
    else:
        plan = [np.eye(nb, dtype=np.uint8)[b] for b in range(nb) for _ in range(epochs)]
    off = np.zeros(nb, np.uint8)
    plan += ["probe"] * head_epochs
    history = {"method": "uff", "order": order, "epochs": [], "interrupted": False}
    t_start = time.perf_counter()
    model.train()
    try:
        for epoch, act in enumerate(plan):
            probe = isinstance(act, str)
            t0 = time.perf_counter()
            perm = rng.permutation(n)
            sums, steps = np.zeros(nb + 1), 0
            for s in range(0, n, batch_size):
                idx = perm[s:s + batch_size]
                xb = np.ascontiguousarray(x[idx])
                if probe:   # frozen cells: only the head steps
                    losses = model.train_step(xb, np.ascontiguousarray(y[idx]), active=off, train_head=True)
                else:
                    losses = model.train_step(xb, None, active=act, train_head=False)
                sums += losses
                steps += 1
            rec = {"epoch": epoch + 1, "phase": "probe" if probe else "uff",
                   "active": None if probe or act is None else [int(b) for b in np.flatnonzero(act)],
                   "block_loss": None if probe else [float(v) for v in sums[:nb] / max(steps, 1)],
                   "head_loss": float(sums[nb] / max(steps, 1)) if probe else None,
                   "lr": optimizer.lr, "seconds": time.perf_counter() - t0}
            if probe and x_val is not None:
                rec["val_error"] = probe_error(model, x_val, y_val)
                model.train()
            history["epochs"].append(rec)
            if scheduler is not None:
                scheduler.step()
            if callback is not None:
                callback(rec)
            if progress:
                print(f"uff epoch {epoch + 1}/{len(plan)} {rec}", flush=True)
    except KeyboardInterrupt:
        history["interrupted"] = True
    history["train_seconds"] = time.perf_counter() - t_start
    model.eval()
    return history


def train_command_uff(a, bad):
    """``python -m fflib train --method uff``: an MLP of autoencoder cells (``--layers``, default
    128,128) trained without labels for ``--epochs`` (default 5; ``--order layerwise``: each cell
    for that many epochs in turn), then its linear probe (the one-pass head on every block) for
    ``--head-epochs`` (default 10); prints and optionally writes (``--out``) the probe's test
    error.  ``bad(message)`` exits with a usage error."""
    import json
    import os
    from . import set_num_threads, get_num_threads, __version__
    from .cli import _check_output, load_train_test
    from .optim import Adam
    if a.recipe is not None:
        bad("--recipe does not apply to --method uff")
    if a.model not in (None, "mlp"):
        bad(f"--method uff trains an MLP of autoencoder cells (--model mlp --layers ...), got --model {a.model}")
    for flag, given in (("--loss", a.loss not in (None, "ae")), ("--label-encoding", a.label_encoding not in (None, "none")),
                        ("--routine", a.routine not in (None, "greedy")), ("--pipeline", a.pipeline),
                        ("--negatives", a.negatives not in (None, "uniform")), ("--augment", a.augment),
                        ("--checkpoint", a.checkpoint), ("--resume", a.resume), ("--alternate", a.alternate),
                        ("--distributed", getattr(a, "distributed", None))):
        if given:
            bad(f"{flag} does not apply to --method uff (autoencoder cells reconstructing their inputs, then a "
                f"linear probe)")
    _check_output("--out", a.out)
    _check_output("--save", a.save)
    if a.threads:
        set_num_threads(a.threads)
    for key in ("dataset", "seed"):   # the shared defaults the loader reads
        if getattr(a, key, None) is None:
            setattr(a, key, {"dataset": "sample", "seed": 0}[key])
    x, y, xt, yt = load_train_test(a, bad)
    x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
    layers = a.layers or [128, 128]
    epochs, head_epochs = a.epochs or 5, getattr(a, "head_epochs", None) or 10
    lr, head_lr, norm = a.lr or 3e-3, a.head_lr or 0.1, a.norm or "l2"
    order = {None: "simultaneous", "layerwise": "sequential"}.get(a.order, a.order)
    sizes = [x.shape[1]] + list(layers)
    try:
        model = uff_model(sizes, num_classes=10, norm=norm, seed=a.seed)
        opt = Adam(model, lr=lr, head_lr=head_lr)
    except ValueError as e:
        bad(str(e))
    print(f"fflib: uff (autoencoder cells) on {a.dataset} without labels, MLP {sizes}, {epochs} epochs ({order}) "
          f"+ {head_epochs} probe epochs", flush=True)

    def report(rec):
        what = (f"reconstruction {' '.join(f'{v:.5f}' for v in rec['block_loss'])}" if rec["block_loss"] is not None
                else f"probe loss {rec['head_loss']:.4f}")
        print(f"epoch {rec['epoch']:3d} ({rec['phase']})  {what}  {rec['seconds']:.1f}s", flush=True)

    try:
        hist = fit_uff(model, x, y, epochs=epochs, head_epochs=head_epochs, batch_size=a.batch_size or 100,
                       optimizer=opt, order=order, random_state=a.seed, callback=report)
    except (ValueError, TypeError) as e:
        bad(str(e).replace("\n", " "))
    from .unsupervised import probe_error
    err = probe_error(model, xt, yt)
    print(f"test error (linear probe): {err:.2f}%  train {hist['train_seconds']:.1f}s", flush=True)
    if a.save:
        model.save(a.save)
    if a.out:
        res = {"config": {"method": "uff", "dataset": a.dataset, "layers": sizes, "epochs": epochs,
                          "probe_epochs": head_epochs, "order": order, "lr": lr, "head_lr": head_lr, "norm": norm,
                          "seed": a.seed, "threads": get_num_threads()},
               "test_error": {"probe": err}, "epochs": hist["epochs"], "train_seconds": hist["train_seconds"],
               "interrupted": hist["interrupted"], "fflib_version": __version__}
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, a.out)
    return 130 if hist["interrupted"] else 0
