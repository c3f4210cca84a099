"""The training loop: epochs, seeded shuffling, negatives, schedules, progress, history.

Each minibatch is one call into C (:meth:`FFModel.train_step`); Python only orders the data.
"""
import time

import numpy as np

from .nn import as_float32_batch
from .augment import parse as parse_augment
from .routines import ROUTINES, block_ranges, unit_ranges


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
            if model.config["loss"] in ("cwc", "pvn"):
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


def fit(model, x, y, *, epochs=10, batch_size=100, optimizer=None, scheduler=None, order="simultaneous",
        windows=None, negatives="uniform", train_head=True, head_epochs=0, routine=None, chunk_size=2,
        alternate=False, augment=None, random_state=0, progress=True, x_val=None, y_val=None,
        callback=None):
    """Train ``model`` on (x, y) with FF, one C call per minibatch.

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
        model's own softmax over wrong labels, recomputed each epoch).
    augment : image augmentation of every training minibatch, e.g. ``"crop4+flip"`` (see
        :mod:`fflib.augment`); None for none.
    train_head : train the one-pass head alongside the blocks; ``head_epochs`` extra epochs
        train the head alone afterwards.
    scheduler : stepped once per epoch.
    Ctrl-C stops cleanly after the current minibatch; the history says ``interrupted``.
    Returns the history: a dict with ``epochs`` (per-epoch mean block losses, head loss, lr,
    seconds, optional validation error), ``train_seconds`` and ``interrupted``.
    """
    from .optim import Adam
    x = as_float32_batch(x, "x", int(np.prod(model.input_shape)))
    y = model._check_y(y, x.shape[0])
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if negatives not in ("uniform", "hard"):
        raise ValueError(f"negatives must be 'uniform' or 'hard', got {negatives!r}")
    if head_epochs < 0:
        raise ValueError(f"head_epochs must be >= 0, got {head_epochs!r}")
    train_head = bool(train_head) and model.has_head
    aug = parse_augment(augment)
    if aug is not None and model.input_shape[1] * model.input_shape[2] == 1:
        raise ValueError(f"augment {augment!r} needs an image model (input_shape (C, H, W) with H, W > 1), "
                         f"got input_shape {model.input_shape}")
    if optimizer is None:
        optimizer = Adam(model)
    cuts = None
    if routine is not None:
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
    elif alternate:
        raise ValueError(f"alternate needs a routine, one of {ROUTINES}")
    rng = _rng(random_state)
    wins, total = _windows(model, int(epochs), order, windows)
    total_epochs = total + (int(head_epochs) if train_head else 0)
    n, nb = len(y), model.num_blocks
    history = {"epochs": [], "interrupted": False}
    model.train()
    t_start = time.perf_counter()
    try:
        for epoch in range(total_epochs):
            head_only = epoch >= total
            active = np.array([0 if head_only else int(a <= epoch < b) for a, b in wins], dtype=np.uint8)
            t0 = time.perf_counter()
            perm = rng.permutation(n)
            neg = hard_negative_labels(model, x, y, rng) if negatives == "hard" and not head_only else None
            # one loss sum per chunking (alternate: the shifted cut may have another block count)
            sums = [np.zeros(len(c) + 1) for c in cuts] if cuts is not None and len(cuts) > 1 \
                else [np.zeros(nb + 1)]
            actives = [active if len(s) == nb + 1 else np.full(len(s) - 1, active.max(), np.uint8)
                       for s in sums]
            counts = [0] * len(sums)
            steps = 0
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
                losses = model.train_step(xb, np.ascontiguousarray(y[idx]), nb_labels, actives[c], train_head)
                sums[c] += losses
                counts[c] += 1
                steps += 1
                if progress and hasattr(bar, "set_postfix") and steps % 20 == 0:
                    bar.set_postfix(loss=" ".join(f"{v:.3f}" for v in sums[0][:nb] / max(counts[0], 1)))
            head_sum = sum(s[-1] for s in sums)
            rec = {"epoch": epoch + 1, "block_loss": [float(v) for v in sums[0][:nb] / max(counts[0], 1)],
                   "head_loss": float(head_sum / max(steps, 1)) if train_head else None,
                   "active": active.tolist(), "lr": optimizer.lr,
                   "seconds": time.perf_counter() - t0}
            if len(sums) > 1:
                rec["block_loss_shifted"] = [float(v) for v in sums[1][:-1] / max(counts[1], 1)]
            if x_val is not None:
                if len(sums) > 1:  # evaluate() reads the trained units from the cut
                    model.set_block_ranges(cuts[0])
                rec["val"] = evaluate(model, x_val, y_val)
                model.train()
            history["epochs"].append(rec)
            if scheduler is not None:
                scheduler.step()
            if callback is not None:
                callback(rec)
    except KeyboardInterrupt:
        history["interrupted"] = True
    if cuts is not None and len(cuts) > 1:
        model.set_block_ranges(cuts[0])
    history["train_seconds"] = time.perf_counter() - t_start
    model.eval()
    return history


def _progress(it, enabled, desc):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but keep training if it is absent
        return it
    return tqdm(it, desc=desc, leave=False, unit="batch")
