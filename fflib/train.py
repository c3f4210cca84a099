"""The training loop: epochs, seeded shuffling, negatives, schedules, progress, history.

Each minibatch is one call into C (:meth:`FFModel.train_step`); Python only orders the data.
"""
import json
import os
import time
import zlib

import numpy as np

from .nn import FFModel, GROUP_LOSSES, as_float32_batch, _atomic_savez, _read_npz, _field
from .augment import parse as parse_augment
from .routines import ROUTINES, block_ranges, unit_ranges


def _count(name, value, lo):
    """An int >= lo (bools and floats refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be {'a positive int' if lo == 1 else f'an int >= {lo}'}, got {value!r}")
    return int(value)


def _rng(random_state):
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(random_state)


def hard_negative_labels(model, x, y, rng, batch_size=1000):
    """Draw one wrong label per sample from the model's own belief: softmax over labels of the
    summed multi-pass goodness, the true label excluded (Hinton's "hard" negatives)."""
    out = np.empty(len(y), dtype=np.int64)
    for s in range(0, len(y), batch_size):
        g = model.goodness(x[s:s + batch_size]).sum(axis=2).astype(np.float64)
        yy = y[s:s + batch_size]
        g[np.arange(len(yy)), yy] = -np.inf
        g -= g.max(axis=1, keepdims=True)
        p = np.exp(g)
        p /= p.sum(axis=1, keepdims=True)
        cdf = np.cumsum(p, axis=1)
        u = rng.random(len(yy))[:, None] * cdf[:, -1:]
        k = np.minimum((cdf < u).sum(axis=1), p.shape[1] - 1)
        # guard against rounding landing on the true label
        bad = k == yy
        k[bad] = (yy[bad] + 1 + rng.integers(0, p.shape[1] - 1, bad.sum())) % p.shape[1]
        out[s:s + batch_size] = k
    return out


def evaluate(model, x, y, batch_size=1000, multipass_blocks=None):
    """Test error in percent with both inferences and per-layer accuracy, in eval mode.

    Scores are taken per *unit* (FF layer), whatever chunking the model was trained with:
    ``multi_pass`` is the error of the argmax of the class scores (multi-pass goodness for
    FF/SymBa; channel-group goodness for CwC/PvN, no extra passes) summed over
    ``multipass_blocks`` (unit indices; default: the units whose output a loss trained, i.e.
    those ending a block of the model's current cut -- every unit after greedy training, the
    last one after ``routine="backprop"``, the chunk ends after chunked training -- all of
    them for FF/SymBa, the last two of them for CwC/PvN);
    ``one_pass`` that of the softmax head (when the model has one); ``block_accuracy`` the
    accuracy of each unit alone.  Returns a dict."""
    x = as_float32_batch(x, "x", int(np.prod(model.input_shape)))
    y = model._check_y(y, x.shape[0])
    was_training = model.training
    saved = model.blocks
    model.eval()
    try:
        units = unit_ranges(model)
        model.set_block_ranges(units)
        g = np.concatenate([model.goodness(x[s:s + batch_size]) for s in range(0, len(y), batch_size)])
        if multipass_blocks is None:
            # a unit inside a block (e.g. a hidden layer under routine="backprop") was never
            # trained to have high goodness for the right label: its goodness is noise
            ends = {b for _, b in saved}
            trained = [u for u, (_, e) in enumerate(units) if e in ends] or [len(units) - 1]
            if model.config["loss"] in GROUP_LOSSES:
                trained = trained[-2:]
            multipass_blocks = trained
        sel = model._block_selection(multipass_blocks)
        res = {"multi_pass": float(100.0 * (g[:, :, sel].sum(axis=2).argmax(axis=1) != y).mean()),
               "block_accuracy": [float((g[:, :, b].argmax(axis=1) == y).mean()) for b in range(g.shape[2])]}
        if model.has_head:
            p = np.concatenate([model.predict_proba(x[s:s + batch_size]) for s in range(0, len(y), batch_size)])
            res["one_pass"] = float(100.0 * (p.argmax(axis=1) != y).mean())
    finally:
        model.set_block_ranges(saved)
        model.train(was_training)
    return res


def _windows(model, epochs, order, windows):
    nb = model.num_blocks
    if windows is not None:
        if len(windows) != nb:
            raise ValueError(f"windows needs one (start, end) per block ({nb}), got {len(windows)}")
        w = [(int(a), int(b)) for a, b in windows]
        if any(not (0 <= a < b) for a, b in w):
            raise ValueError(f"each window must satisfy 0 <= start < end, got {windows!r}")
        return w, max(b for _, b in w)
    if order == "simultaneous":
        return [(0, epochs)] * nb, epochs
    if order == "layerwise":
        return [(b * epochs, (b + 1) * epochs) for b in range(nb)], nb * epochs
    raise ValueError(f"order must be 'simultaneous' or 'layerwise', got {order!r}")


def _check_data_args(model, x, y, epochs, batch_size, head_epochs):
    """fit()'s (and the distributed fit's) training data as the core reads it and its counts."""
    x = as_float32_batch(x, "x", int(np.prod(model.input_shape)))
    y = model._check_y(y, x.shape[0])
    return x, y, _count("epochs", epochs, 0), _count("batch_size", batch_size, 1), \
        _count("head_epochs", head_epochs, 0)


def _check_run_args(model, optimizer, scheduler, checkpoint_every, x_val=None, y_val=None, callback=None):
    """fit()'s (and the distributed fit's) checks of the optimiser, schedule, checkpoint period,
    validation pair and callback: refused before the first epoch, not after it.  Returns the
    validation pair as the core reads it (converted once, not at every epoch's evaluation)."""
    if (x_val is None) != (y_val is None):
        raise ValueError("x_val and y_val go together: pass both or neither")
    if x_val is not None:
        x_val = as_float32_batch(x_val, "x_val", int(np.prod(model.input_shape)))
        y_val = model._check_y(y_val, x_val.shape[0], "y_val")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    from .optim import _Optimizer, _Scheduler
    if optimizer is not None and (not isinstance(optimizer, _Optimizer) or optimizer.model is not model):
        raise ValueError(f"optimizer must be an fflib optimiser created on this model, got {optimizer!r}")
    if scheduler is not None and (not isinstance(scheduler, _Scheduler)
                                  or (optimizer is not None and scheduler.optimizer is not optimizer)):
        raise ValueError(f"scheduler must be an fflib schedule of the optimizer passed, got {scheduler!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) \
            or checkpoint_every <= 0:
        raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    return x_val, y_val


def fit(model, x, y, *, epochs=10, batch_size=100, optimizer=None, scheduler=None, order="simultaneous",
        windows=None, negatives="uniform", train_head=True, head_epochs=0, routine=None, chunk_size=2,
        alternate=False, augment=None, random_state=0, progress=True, x_val=None, y_val=None,
        callback=None, checkpoint=None, checkpoint_every=1, resume=False, pipeline=False, comm=None,
        distributed=None, method="ff"):
    """Train ``model`` on (x, y) with FF, one C call per minibatch.

    method : "ff" (labels in the input, this loop), or without labels "scff" (self-contrastive
        pairs, Chen et al. 2025) or "hybrid" (Hinton's hybrid-image negatives): ``epochs`` of
        label-free training then ``head_epochs`` of a linear probe (the one-pass head) on the
        frozen features, by :func:`fflib.unsupervised.fit_unsupervised` (which takes
        ``batch_size``, ``optimizer``, ``scheduler``, ``augment``, ``random_state``,
        ``x_val``/``y_val``, ``callback``, ``checkpoint``/``resume``, ``comm``/``distributed``
        "data" (data-parallel: every rank draws the whole minibatch's pairs and trains on its
        shard), and ``order`` "simultaneous" or "layerwise": each
        block alone in turn for ``epochs`` epochs; the model needs ``label_encoding="none"``;
        :func:`fflib.unsupervised.scff_mlp` builds SCFF's recipe model, and without
        ``optimizer`` SCFF trains with Adam 3e-3, its probe 1e-3), or
        "uff" (Unsupervised FF, Hwang et al. 2024: autoencoder cells, each block reconstructing
        its input through its own decoder, then the same linear probe; the model needs
        ``loss="ae"``, see :func:`fflib.uff.uff_model`; run by :func:`fflib.uff.fit_uff`, which
        takes the same options and ``order`` "simultaneous" or "layerwise", there called "sequential").

    routine : None (keep the model's current blocks), "greedy", "chunked", "overlapping" or
        "backprop" with ``chunk_size`` units per chunk (see :mod:`fflib.routines`);
        ``alternate`` (chunked only) shifts the chunking by one unit every iteration (the two
        chunkings may have different block counts; then ``order`` must be "simultaneous"); the
        model is left cut as the first chunking, and the history's ``block_loss_shifted``
        holds the shifted chunking's losses.

    order : "simultaneous" (every block on every minibatch) or "layerwise" (each block trained
        for ``epochs`` epochs before the next sees data).
    windows : per-block (start, end) epoch windows, overriding ``order``.
    negatives : "uniform" (a wrong label drawn uniformly, in C) or "hard" (drawn from the
        model's own softmax over wrong labels, recomputed each epoch).  The DF loss trains on
        every wrong label and takes only "uniform" (its value is then unused).
    augment : image augmentation of every training minibatch, e.g. ``"crop4+flip"`` (see
        :mod:`fflib.augment`); None for none.
    train_head : train the one-pass head alongside the blocks; ``head_epochs`` extra epochs
        train the head alone afterwards, on the frozen blocks in inference mode (batch norm from
        its running statistics, as :func:`evaluate` and the predictions see them).  See
        :func:`refit_head` for a fresh head trained that way.
    optimizer : default: the optimiser attached to the model (the last one created on it, or the
        one :meth:`FFModel.load` restored, so a saved SGD stays SGD), else a new ``Adam(model)``.
    scheduler : stepped once per epoch.
    checkpoint : a directory; every ``checkpoint_every`` epochs (and after the last) the run's
        whole state goes to ``checkpoint/checkpoint.npz``: weights, batch-norm statistics, the
        optimiser (kind, settings, moments, steps), the schedule, the C core's RNG, the data-order
        generator (``random_state``), the epoch and the history.  The file is written to a
        temporary name, synced and renamed: the previous checkpoint stays until the new one is
        complete.  (It is also a model file :meth:`FFModel.load` reads.)
    resume : with ``checkpoint``, continue from the checkpoint there if there is one (else start
        afresh): the run then ends bit-identical to an uninterrupted one (same thread count).
        The model, data and training settings must be those of the checkpointed run (``epochs``
        may grow, except under a :class:`LinearCooldown`, planned for the run's length);
        ``optimizer``/``scheduler``, when given, must be of the saved kinds and settings, and
        when not given are rebuilt from the checkpoint.
    pipeline : train the blocks pipelined (:meth:`FFModel.pipeline_begin`, Pipeline
        Forward-Forward): block k works on minibatch t - k while block k + 1 works on t - k - 1,
        the blocks of a tick at once on fflib's threads.  Each block sees the same input as in
        the sequential step (block k-1's output before its update on that minibatch), so the
        weights equal sequential training's bit for bit; only the time differs.  Needs blocks
        that do not overlap and a fixed cut within the epoch (no ``alternate``).
    comm, distributed : train across the processes of an MPI communicator (mpi4py, e.g.
        ``MPI.COMM_WORLD`` in a script started by ``mpirun``): ``distributed="data"`` (the
        default when ``comm`` is given; ``comm`` defaults to ``MPI.COMM_WORLD`` when only
        ``distributed`` is) trains each rank on its shard of every global minibatch
        and all-reduces each block's gradients as soon as they are final; ``"pipeline"`` gives
        each rank a range of blocks and passes activations rank to rank.  Every rank passes the
        same model, data and settings; only rank 0 shows progress, evaluates ``x_val``, calls
        ``callback`` and writes (and, to ``resume``, reads) the checkpoint; ``augment`` draws
        every minibatch's choices as one process does; ``alternate`` shifts the chunks every
        other minibatch (data-parallel only).  ``pipeline`` (the in-process pipeline) is not
        supported there.  See :mod:`fflib.distributed`.
    Ctrl-C stops cleanly after the current minibatch (pipelined: after draining the minibatches
    in flight); the history says ``interrupted`` (the last checkpoint is kept as it was).
    Returns the history: a dict with ``epochs`` (per-epoch mean block losses, head loss, lr,
    seconds, optional validation error), ``train_seconds`` and ``interrupted``.
    """
    from .optim import Adam
    if method == "uff":
        return _fit_uff(model, x, y, locals())
    if method == "ff" and isinstance(model, FFModel) and model.config["loss"] == "ae":
        raise ValueError("the model's ae loss trains autoencoder cells without labels and has no class scores: "
                         "fit it with method='uff' (the cells, then the linear probe)")
    if method != "ff":
        return _fit_label_free(method, model, x, y, locals())
    if not isinstance(model, FFModel):
        raise TypeError(f"model must be an fflib.FFModel, got {type(model).__name__}")
    if comm is not None or distributed is not None:
        from .distributed import fit_distributed
        return fit_distributed(model, x, y, comm=comm, mode="data" if distributed is None else distributed,
                               epochs=epochs, batch_size=batch_size, optimizer=optimizer, scheduler=scheduler,
                               order=order, windows=windows, negatives=negatives, train_head=train_head,
                               head_epochs=head_epochs, random_state=random_state, progress=progress,
                               x_val=x_val, y_val=y_val, callback=callback, checkpoint=checkpoint,
                               checkpoint_every=checkpoint_every, routine=routine, chunk_size=chunk_size,
                               alternate=alternate,
                               augment=augment, resume=resume, pipeline=pipeline)
    x, y, epochs, batch_size, head_epochs = _check_data_args(model, x, y, epochs, batch_size, head_epochs)
    chunk_size = _count("chunk_size", chunk_size, 1)
    if not isinstance(negatives, str) or negatives not in ("uniform", "hard"):
        raise ValueError(f"negatives must be 'uniform' or 'hard', got {negatives!r}")
    if negatives == "hard" and model.config["loss"] == "df":
        raise ValueError("negatives='hard' does not apply to loss 'df', which trains every sample under all "
                         "K - 1 wrong labels; use negatives='uniform'")
    if random_state is not None and not isinstance(random_state, np.random.Generator) and (
            isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) or random_state < 0):
        raise ValueError(f"random_state must be None, an int >= 0 or a numpy Generator, got {random_state!r}")
    train_head = bool(train_head) and model.has_head
    aug = parse_augment(augment)
    if aug is not None and model.input_shape[1] * model.input_shape[2] == 1:
        raise ValueError(f"augment {augment!r} needs an image model (input_shape (C, H, W) with H, W > 1), "
                         f"got input_shape {model.input_shape}")
    x_val, y_val = _check_run_args(model, optimizer, scheduler, checkpoint_every, x_val, y_val, callback)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint= (the directory holding the checkpoint)")
    ckpt_path = None
    if checkpoint is not None:
        ckpt_path = _checkpoint_path(checkpoint)
    cuts = _cuts(model, routine, chunk_size, alternate, windows, order)
    pipeline = bool(pipeline)
    if pipeline and alternate:
        raise ValueError("pipeline=True needs one cut for the whole epoch; alternate=True changes it every minibatch")
    rng = _rng(random_state)
    wins, total = _windows(model, int(epochs), order, windows)
    total_epochs = total + (int(head_epochs) if train_head else 0)
    n, nb = len(y), model.num_blocks
    history = {"epochs": [], "interrupted": False}
    run = {"batch_size": int(batch_size), "order": order, "windows": None if windows is None else
           [list(w) for w in wins], "negatives": negatives, "train_head": train_head,
           "head_epochs": int(head_epochs), "routine": routine, "chunk_size": int(chunk_size),
           "alternate": bool(alternate), "augment": augment, "num_samples": int(n),
           "data_crc32": [zlib.crc32(x), zlib.crc32(y)]}
    start = 0
    if resume and os.path.exists(ckpt_path):
        optimizer, scheduler, start, history = _restore(ckpt_path, model, optimizer, scheduler, rng, run)
        if start > total_epochs:
            raise ValueError(f"the checkpoint {ckpt_path} is at epoch {start}, beyond this run's {total_epochs}")
    if optimizer is None:
        optimizer = model.optimizer if model.optimizer is not None else Adam(model)
    if scheduler is not None and scheduler.optimizer is not optimizer:
        raise ValueError("scheduler must be a schedule of the optimiser the run uses")
    history["interrupted"] = False
    model.train()
    t_start = time.perf_counter()
    try:
        for epoch in range(start, total_epochs):
            head_only = epoch >= total
            active = np.array([0 if head_only else int(a <= epoch < b) for a, b in wins], dtype=np.uint8)
            # the head alone on frozen blocks learns the features inference gives it: batch norm
            # from its running statistics, not from each minibatch
            model.train(not head_only)
            t0 = time.perf_counter()
            perm = rng.permutation(n)
            neg = hard_negative_labels(model, x, y, rng) if negatives == "hard" and not head_only else None
            # one loss sum per chunking (alternate: the shifted cut may have another block count)
            sums = [np.zeros(len(c) + 1) for c in cuts] if cuts is not None and len(cuts) > 1 \
                else [np.zeros(nb + 1)]
            actives = [active if len(v) == nb + 1 else np.full(len(v) - 1, active.max(), np.uint8)
                       for v in sums]
            counts = [np.zeros(len(v)) for v in sums]
            steps = 0
            if pipeline:
                model.pipeline_begin(batch_size, active, train_head)
            bar = _progress(range(0, n, batch_size), progress, f"epoch {epoch + 1}/{total_epochs}")
            for s in bar:
                idx = perm[s:s + batch_size]
                xb = np.ascontiguousarray(x[idx])
                if aug is not None:
                    aug(xb.reshape((len(idx),) + tuple(model.input_shape)), rng)
                nb_labels = None if neg is None else np.ascontiguousarray(neg[idx])
                c = steps % len(sums)
                if len(sums) > 1:
                    model.set_block_ranges(cuts[c])
                if pipeline:
                    try:
                        losses = model.pipeline_step(xb, np.ascontiguousarray(y[idx]), nb_labels)
                    except KeyboardInterrupt:
                        model.pipeline_flush()
                        raise
                    sums[0] += np.nan_to_num(losses)     # NaN: a block idle in this tick
                    counts[0] += ~np.isnan(losses)
                else:
                    losses = model.train_step(xb, np.ascontiguousarray(y[idx]), nb_labels, actives[c], train_head)
                    sums[c] += losses
                    counts[c] += 1
                steps += 1
                if progress and hasattr(bar, "set_postfix") and steps % 20 == 0:
                    bar.set_postfix(loss=" ".join(f"{v:.3f}" for v in sums[0][:nb] / np.maximum(counts[0][:nb], 1)))
            if pipeline:
                for losses in model.pipeline_flush():
                    sums[0] += np.nan_to_num(losses)
                    counts[0] += ~np.isnan(losses)
                model.pipeline_end()
            head_sum, head_count = sum(v[-1] for v in sums), sum(k[-1] for k in counts)
            rec = {"epoch": epoch + 1, "block_loss": [float(v) for v in sums[0][:nb] / np.maximum(counts[0][:nb], 1)],
                   "head_loss": float(head_sum / max(head_count, 1)) if train_head else None,
                   "active": active.tolist(), "lr": optimizer.lr,
                   "seconds": time.perf_counter() - t0}
            if len(sums) > 1:
                rec["block_loss_shifted"] = [float(v) for v in sums[1][:-1] / np.maximum(counts[1][:-1], 1)]
            if x_val is not None:
                if len(sums) > 1:  # evaluate() reads the trained units from the cut
                    model.set_block_ranges(cuts[0])
                rec["val"] = evaluate(model, x_val, y_val)
                model.train()
            history["epochs"].append(rec)
            if scheduler is not None:
                scheduler.step()
            if ckpt_path is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == total_epochs):
                _write_checkpoint(ckpt_path, model, optimizer, scheduler, rng, epoch + 1, history, run)
            if callback is not None:
                callback(rec)
    except KeyboardInterrupt:
        history["interrupted"] = True
    if cuts is not None and len(cuts) > 1:
        model.set_block_ranges(cuts[0])
    history["train_seconds"] = time.perf_counter() - t_start
    model.eval()
    return history


def refit_head(model, x, y, *, epochs=5, lr=1e-4, batch_size=128, reset=True, augment=None, random_state=0,
               progress=True, x_val=None, y_val=None, callback=None):
    """Train the one-pass head again on the frozen blocks: ``reset`` zeroes its weights and
    bias, then Adam at ``lr`` (a new optimiser that drives the head only, attached to the model)
    trains it for ``epochs`` head-only epochs of :func:`fit` on (x, y), the blocks in inference
    mode (batch norm from its running statistics), without augmentation unless ``augment``
    names one.  The new Adam starts from zero moments and step 0 whatever state training left
    on the head.  Returns fit's history.  A refit that raises (a bad argument, a non-finite
    loss) leaves the model as it was: its head, the head's optimiser state and the optimiser
    attached to the model.

    Why: a head trained alongside the blocks learns features that keep moving and, with batch
    norm, features normalised by each training minibatch's statistics rather than the running
    ones inference uses.  On the CIFAR-10 FF_optimal recipe's trained model (validation split,
    the last 5,000 training images) its one-pass error was 19.42 % against the multi-pass
    16.50; a head refitted this way for 5 epochs at 1e-4 reached 17.24
    (benchmarks/results/reproduce/cifar10-ff_optimal.json; the test error 20.60 -> 18.33)."""
    from .optim import Adam
    if not isinstance(model, FFModel):
        raise TypeError(f"model must be an fflib.FFModel, got {type(model).__name__}")
    if not model.has_head:
        raise ValueError("refit_head needs a model with a one-pass head (head_blocks not None)")
    epochs = _count("epochs", epochs, 1)
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    _check_data_args(model, x, y, 0, batch_size, epochs)    # bad data is refused before the head is touched
    from .optim import _read_layer_state, _write_layer_state
    net, attached, setting = model._net, model._optimizer, model._net.get_opt(-1)
    weight, bias, state = model.head_weight.copy(), model.head_bias.copy(), _read_layer_state(model, -1)
    try:
        if reset:
            model.head_weight[...] = 0.0
            model.head_bias[...] = 0.0
        opt = Adam(model, lr=float(lr), layers=[], head=True)
        # a new optimiser: none of training's moments or steps
        _write_layer_state(model, -1, {name: 0.0 for name in state} | {"step": 0})
        return fit(model, x, y, epochs=0, head_epochs=epochs, batch_size=batch_size, optimizer=opt,
                   augment=augment, random_state=random_state, progress=progress, x_val=x_val, y_val=y_val,
                   callback=callback)
    except BaseException:
        model.head_weight[...] = weight
        model.head_bias[...] = bias
        _write_layer_state(model, -1, state)
        net.set_opt(-1, **setting)
        model._optimizer = attached
        raise


def _fit_uff(model, x, y, args):
    """fit() with method "uff": the options :func:`fflib.uff.fit_uff` takes, the others refused
    when they differ from their defaults."""
    from .uff import fit_uff
    from .unsupervised import label_free_order
    defaults = dict(windows=None, negatives="uniform", train_head=True, routine=None, chunk_size=2, alternate=False,
                    augment=None, pipeline=False)
    for key, value in defaults.items():
        if args[key] != value:
            raise ValueError(f"{key}={args[key]!r} does not apply to method 'uff' (autoencoder cells, then a "
                             f"linear probe)")
    order = label_free_order(args["order"])
    return fit_uff(model, x, y, epochs=args["epochs"], head_epochs=args["head_epochs"], batch_size=args["batch_size"],
                   optimizer=args["optimizer"], scheduler=args["scheduler"], order=order,
                   random_state=args["random_state"], x_val=args["x_val"], y_val=args["y_val"],
                   callback=args["callback"], progress=False, checkpoint=args["checkpoint"],
                   checkpoint_every=args["checkpoint_every"], resume=args["resume"],
                   comm=_label_free_comm("uff", args))


def _label_free_comm(method, args):
    """The communicator of a label-free fit(): ``comm``, or MPI.COMM_WORLD when only
    ``distributed`` ("data": the label-free loops are data-parallel) is given; None for none."""
    if args["distributed"] not in (None, "data"):
        raise ValueError(f"method {method!r} trains data-parallel across ranks (distributed='data'), got "
                         f"distributed={args['distributed']!r}")
    if args["comm"] is None and args["distributed"] is None:
        return None
    from .distributed import check_comm
    return check_comm(args["comm"])


def _fit_label_free(method, model, x, y, args):
    """fit() with method "scff" or "hybrid": the options the label-free loop takes, the others
    refused when they differ from their defaults."""
    from .unsupervised import METHODS, fit_unsupervised, label_free_order
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be 'ff' or one of {METHODS}, got {method!r}")
    defaults = dict(windows=None, negatives="uniform", train_head=True, routine=None,
                    chunk_size=2, alternate=False, pipeline=False)
    for key, value in defaults.items():
        if args[key] != value:
            raise ValueError(f"{key}={args[key]!r} does not apply to method {method!r} (label-free training "
                             f"on explicit negatives, then a linear probe)")
    comm = _label_free_comm(method, args)
    order = label_free_order(args["order"])
    return fit_unsupervised(model, x, y, method=method, epochs=args["epochs"], head_epochs=args["head_epochs"],
                            batch_size=args["batch_size"], optimizer=args["optimizer"], scheduler=args["scheduler"],
                            augment=args["augment"], order=order, random_state=args["random_state"], x_val=args["x_val"],
                            y_val=args["y_val"], callback=args["callback"], progress=False,
                            checkpoint=args["checkpoint"], checkpoint_every=args["checkpoint_every"],
                            resume=args["resume"], comm=comm)


CHECKPOINT_FILE = "checkpoint.npz"


def _checkpoint_path(directory):
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a directory path, got {type(directory).__name__}")
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(20, f"checkpoint {directory!r} exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(directory))
    if not os.path.isdir(parent):
        raise FileNotFoundError(2, f"checkpoint directory {directory!r}: its parent {parent} does not exist")
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, CHECKPOINT_FILE)


def _jsonable(history):
    return json.loads(json.dumps(history, default=float))


def _write_checkpoint(path, model, optimizer, scheduler, rng, epoch, history, run):
    """The run's whole state as a model file with a ``checkpoint`` entry, written atomically."""
    arrays = model._serialise(optimizer=True)
    meta = json.loads(str(arrays["__meta__"]))
    meta["optimizer"] = optimizer.state_dict(moments=False)
    meta["scheduler"] = None if scheduler is None else scheduler.state_dict()
    meta["checkpoint"] = {"epoch": int(epoch), "history": _jsonable(history), "run": run,
                          "data_rng": rng.bit_generator.state}
    arrays["__meta__"] = np.array(json.dumps(meta))
    _atomic_savez(path, arrays)


def _cuts(model, routine, chunk_size, alternate, windows, order):
    """The block ranges a run trains with: None (keep the model's, no ``routine``), or
    ``routine``'s cut and, with ``alternate``, the cut shifted by one unit (every other
    minibatch trains with it); the model takes the first."""
    if routine is None:
        if alternate:
            raise ValueError(f"alternate needs a routine, one of {ROUTINES}")
        return None
    cuts = [block_ranges(model, routine, chunk_size, 0)]
    if alternate:
        if routine != "chunked" or windows is not None:
            raise ValueError("alternate needs routine 'chunked' and no windows")
        shifted = block_ranges(model, "chunked", chunk_size, 1)
        if len(shifted) != len(cuts[0]) and order != "simultaneous":
            raise ValueError(f"the alternating chunkings have {len(cuts[0])} and {len(shifted)} blocks, "
                             f"so the {order!r} order cannot follow them; use order 'simultaneous'")
        if shifted != cuts[0]:  # chunks of one unit do not shift
            cuts.append(shifted)
    model.set_block_ranges(cuts[0])
    return cuts


def _take_optimizer(model, optimizer, state):
    """The resumed run's optimiser with the saved settings ``state``: ``optimizer``, else (as
    fit() trains with) the model's own, else a new one of the saved kind."""
    from .optim import optimizer_from_state
    optimizer = optimizer if optimizer is not None else model.optimizer
    if optimizer is None:
        return optimizer_from_state(model, state)
    optimizer.load_state_dict(state)
    return optimizer


def _take_schedule(optimizer, scheduler, state):
    """The resumed run's schedule at the saved ``state`` (None: the run has none): ``scheduler``
    or a new one of the saved kind; the optimiser keeps its restored rate."""
    from .optim import scheduler_from_state
    if state is None:
        return scheduler
    if scheduler is None:
        return scheduler_from_state(optimizer, state)
    lr = optimizer.lr
    scheduler.load_state_dict(state)
    optimizer.lr = lr
    return scheduler


def _restore(path, model, optimizer, scheduler, rng, run):
    """Load the checkpoint at ``path`` into ``model``, the optimiser, the schedule and ``rng``;
    returns (optimizer, scheduler, epoch, history)."""
    name, data = _read_npz(path)
    saved, meta = FFModel._load(name, data)
    ck = meta.get("checkpoint")
    if not isinstance(ck, dict):
        raise ValueError(f"{name}: field '__meta__.checkpoint': missing (a model file, not a checkpoint)")
    mine, theirs = model.architecture(), saved.architecture()
    for key in ("layers", "input_shape", "num_classes", "units", "head_layers", "config", "label_encoding", "seed"):
        if mine[key] != theirs[key]:
            raise ValueError(f"{name}: the checkpoint's model differs in {key}: {theirs[key]!r}, "
                             f"this model has {mine[key]!r}")
    with _field("__meta__.checkpoint.run", name):
        old = ck["run"]
        for key, value in run.items():
            if old.get(key) != value:
                what = "the training data" if key in ("num_samples", "data_crc32") else f"{key}={old.get(key)!r}"
                raise ValueError(f"the checkpoint was written by a run with {what}; this run has "
                                 + ("other data" if key in ("num_samples", "data_crc32") else f"{key}={value!r}"))
    with _field("__meta__.checkpoint", name):
        epoch = ck["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        history = ck["history"]
        if not isinstance(history, dict) or not isinstance(history.get("epochs"), list):
            raise ValueError("history must be a dict with a list of epochs")
        state = ck["data_rng"]
        if not isinstance(state, dict) or state.get("bit_generator") != type(rng.bit_generator).__name__:
            raise ValueError(f"data_rng is not a {type(rng.bit_generator).__name__} state")
    with _field("__meta__.optimizer", name):
        if meta.get("optimizer") is None:
            raise ValueError("missing")
        optimizer = _take_optimizer(model, optimizer, meta["optimizer"])
    with _field("__meta__.scheduler", name):
        if meta.get("scheduler") is None and scheduler is not None:
            raise ValueError(f"the checkpointed run had no schedule, this one has a {type(scheduler).__name__}")
        scheduler = _take_schedule(optimizer, scheduler, meta.get("scheduler"))
    with _field("__meta__.checkpoint.data_rng", name):
        rng.bit_generator.state = state
    # all read and checked: the model takes the saved state
    model.load_state_dict(saved.state_dict())
    model.load_optimizer_state(saved.optimizer_state())
    for i in model.trainable_layers():
        model._net.set_opt(i, **saved._net.get_opt(i))
    model.set_block_ranges(saved.blocks)
    return optimizer, scheduler, epoch, history


def _progress(it, enabled, desc):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but keep training if it is absent
        return it
    return tqdm(it, desc=desc, leave=False, unit="batch")
