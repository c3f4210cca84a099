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

import numpy as np

from .nn import FFModel, mlp
from .unsupervised import ORDERS   # one list of orders for every label-free run

__all__ = ["ORDERS", "uff_model", "fit_uff"]


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


def fit_uff(model, x, y=None, *, epochs=10, head_epochs=5, batch_size=100, optimizer=None, scheduler=None,
            order="simultaneous", random_state=0, x_val=None, y_val=None, callback=None, progress=False,
            checkpoint=None, checkpoint_every=1, resume=False, comm=None):
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
    trained and x_val is given.  ``checkpoint``, ``checkpoint_every`` and ``resume`` as in
    :func:`fflib.fit` (see :func:`fflib.unsupervised.label_free_epochs`).  ``comm`` (an mpi4py
    communicator): data-parallel across its ranks, each training on its shard of every minibatch,
    the decoders' gradients all-reduced with the cells' (:func:`fflib.distributed.label_free_epochs`)."""
    from .optim import Adam
    from .unsupervised import check_run, label_free_epochs, label_free_plan
    if not isinstance(model, FFModel):
        raise TypeError(f"model must be an fflib.FFModel, got {type(model).__name__}")
    if model.config["loss"] != "ae" or not model.decoders:
        raise ValueError(f"method 'uff' trains autoencoder cells: the model needs loss='ae' (its blocks' decoders "
                         f"are made at construction; see fflib.uff.uff_model), got loss={model.config['loss']!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    x, y = check_run(model, x, y, epochs, head_epochs, batch_size, 1, x_val, y_val)
    epochs, head_epochs, batch_size = int(epochs), int(head_epochs), int(batch_size)
    from .train import _check_run_args
    _check_run_args(model, optimizer, scheduler, checkpoint_every)
    if optimizer is None:
        optimizer = model.optimizer if model.optimizer is not None else Adam(model)
    rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
    nb = model.num_blocks
    plan = label_free_plan(nb, epochs, head_epochs, order)
    off = np.zeros(nb, np.uint8)

    def step(xb, yb, act):
        if isinstance(act, str):   # frozen cells: only the head steps
            return model.train_step(xb, yb, active=off, train_head=True)
        return model.train_step(xb, None, active=act, train_head=False)

    run = {"method": "uff", "epochs": int(epochs), "head_epochs": int(head_epochs), "batch_size": int(batch_size),
           "order": order}
    kw = dict(method="uff", batch_size=batch_size, min_batch=1, optimizer=optimizer, scheduler=scheduler, rng=rng,
              x_val=x_val, y_val=y_val, callback=callback, progress=progress, checkpoint=checkpoint,
              checkpoint_every=checkpoint_every, resume=resume, run=run)
    if comm is not None:
        from . import distributed
        hist = distributed.label_free_epochs(distributed.check_comm(comm), model, x, y, plan,
                                             lambda xb, act: (xb, None), **kw)
        hist["order"] = order
        return hist
    return label_free_epochs(model, x, y, plan, step, history={"order": order}, **kw)


def train_command_uff(a, bad):
    """``python -m fflib train --method uff``: an MLP of autoencoder cells (``--layers``, default
    128,128) trained without labels for ``--epochs`` (default 5; ``--order layerwise``: each cell
    for that many epochs in turn), then its linear probe (the one-pass head on every block) for
    ``--head-epochs`` (default 10); prints and optionally writes (``--out``) the probe's test
    error.  ``bad(message)`` exits with a usage error."""
    from . import set_num_threads
    from .cli import _check_output, _make_optimizer, _weight_decay, load_train_test, mpi_world, split_validation
    from .unsupervised import (cli_schedule, label_free_order, label_free_plan, refuse_label_free_flags,
                               schedule_name)
    from .optim import Adam
    if a.recipe is not None:
        bad("--recipe does not apply to --method uff")
    if a.model not in (None, "mlp"):
        bad(f"--method uff trains an MLP of autoencoder cells (--model mlp --layers ...), got --model {a.model}")
    for flag, given in (("--loss", a.loss not in (None, "ae")), ("--label-encoding", a.label_encoding not in (None, "none")),
                        ("--routine", a.routine not in (None, "greedy")), ("--pipeline", a.pipeline),
                        ("--negatives", a.negatives not in (None, "uniform")), ("--augment", a.augment),
                        ("--alternate", a.alternate), ("--block-thresholds", a.block_thresholds)):
        if given:
            bad(f"{flag} does not apply to --method uff (autoencoder cells reconstructing their inputs, then a "
                f"linear probe)")
    refuse_label_free_flags(a, "uff", bad)
    for flag, given in (("--threshold", a.threshold is not None), ("--goodness", a.goodness is not None)):
        if given:
            bad(f"{flag} does not apply to --method uff (its cells' loss is the reconstruction error)")
    _check_output("--out", a.out)
    _check_output("--save", a.save)
    if a.resume and not a.checkpoint:
        bad("--resume needs --checkpoint DIR (where the interrupted run kept its state)")
    comm, rank = mpi_world(a, bad)
    if a.threads:
        set_num_threads(a.threads)
    for key in ("dataset", "seed"):   # the shared defaults the loader reads
        if getattr(a, key, None) is None:
            setattr(a, key, {"dataset": "sample", "seed": 0}[key])
    x, y, xt, yt = load_train_test(a, bad)
    x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
    x, y, xv, yv, xt, yt = split_validation(a, x, y, xt, yt, bad)
    layers = a.layers or [128, 128]
    epochs, head_epochs = a.epochs or 5, a.head_epochs or 10
    lr, head_lr, norm = a.lr or 3e-3, a.head_lr or 0.1, a.norm or "l2"
    order = label_free_order(a.order)
    sizes = [x.shape[1]] + list(layers)
    try:
        model = uff_model(sizes, num_classes=10, norm=norm, seed=a.seed)
        if a.head_dropout is not None:
            model.set_config(head_dropout=a.head_dropout)
        opt = _make_optimizer(a, model, lr, head_lr, Adam)
        sched = cli_schedule(a, opt, label_free_plan(model.num_blocks, epochs, head_epochs, order))
    except ValueError as e:
        bad(str(e))
    if rank == 0:
        print(f"fflib: uff (autoencoder cells) on {a.dataset} without labels, MLP {sizes}, "
              f"{epochs} epoch{'s' * (epochs != 1)} ({order}) + {head_epochs} probe epoch{'s' * (head_epochs != 1)}"
              + ("" if comm is None else f", data-parallel on {comm.Get_size()} ranks"), flush=True)

    from .unsupervised import epoch_printer, finish_command
    try:
        hist = fit_uff(model, x, y, epochs=epochs, head_epochs=head_epochs, batch_size=a.batch_size or 100,
                       optimizer=opt, scheduler=sched, order=order, random_state=a.seed, x_val=xv, y_val=yv,
                       callback=epoch_printer("reconstruction", 5),
                       checkpoint=a.checkpoint, checkpoint_every=a.checkpoint_every, resume=a.resume, comm=comm)
    except (ValueError, TypeError) as e:
        bad(str(e).replace("\n", " "))
    if rank != 0:       # rank 0 evaluates and writes; the others hold the same model
        return 0
    return finish_command(a, model, hist, xt, yt, sizes, epochs, head_epochs,
                          {"order": order, "lr": lr, "head_lr": head_lr, "norm": norm, "schedule": schedule_name(sched),
                           "optimizer": a.optimizer or "adam", "weight_decay": _weight_decay(a), "block_lr": a.block_lr, "momentum": a.momentum,
                           "head_dropout": model.config["head_dropout"], "distributed": a.distributed,
                           "ranks": 1 if comm is None else comm.Get_size()})
