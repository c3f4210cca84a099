"""Forward-Forward without labels: negatives built from the data, then a linear probe.

Two constructions, both in C (``csrc/ff_pairs.c``), each with a float64 NumPy twin in
:mod:`fflib.reference`:

- **self-contrastive pairs** (Chen, Liu, Laydevant, Grollier, "Self-Contrastive
  Forward-Forward algorithm", Nat. Commun. 16, 5978 (2025), Fig. 1d, and the pair builder of
  the authors' code, ``ContrastFF_MNIST.py`` in github.com/neurophysics-cnrsthales/
  contrastive-forward-forward): a positive is an image paired with itself, a negative the
  image paired with another image of the batch.  The pair enters the first layer through two
  halves that share one weight matrix (their code), i.e. as the mean of the two images:
  positive ``x``, negative ``(x_a + x_b) / 2``.  (The authors standardise each image and do not
  renormalise the pair; fflib's input LenNorm normalises the mean, which for a positive is the
  same direction.)
- **hybrid images** (Hinton, "The Forward-Forward algorithm", 2022, sec. 3.2): a mask made by
  blurring a random bit image repeatedly with ``[1/4, 1/2, 1/4]`` in both directions and
  thresholding at 0.5; negative ``x_a * mask + x_b * (1 - mask)``, positive the real image.

Either trains a model with ``label_encoding="none"`` and the FF loss on explicit negatives,
without labels; then the one-pass softmax head is trained on the frozen features (a linear
probe, as in both papers).  :func:`fflib.fit` runs it with ``method="scff"`` or
``method="hybrid"``.

**The SCFF recipe** (:func:`scff_mlp` and :func:`fit_unsupervised`'s defaults for "scff"):
mean goodness, RMS LenNorm, FF's eq. 1 loss (Hinton 2022) with threshold ``SCFF_THRESHOLD`` = 4
on every block, the first Linear's initial weights doubled (the authors' weight-shared halves,
below), Adam with lr ``SCFF_LR`` = 3e-3 for the blocks and ``SCFF_HEAD_LR`` = 1e-3 for the
probe.  On all of MNIST (784-2000-2000, 1 thread) one epoch and a 4-epoch probe reach 2.30 %
test error against 3.40 % for the same probe on the untrained network (tests/test_scff.py).  What the authors' MNIST code (``ContrastFF_MNIST.py`` with its ``config.json``)
does, for comparison: each image standardised (zero mean, unit std); first-layer
pre-activation ``W a + W b + 2 c`` (twice the pre-activation of the pair's mean, not
renormalised); layer loss ``softplus(th1 - g+) + softplus(g- - th2) + lamda * g+`` with g the
mean of ``relu(pre)^2``, ``th1 = 4, th2 = 6, lamda = 1e-4`` on layer 1 and ``1, 1, 0`` on
layer 2; the activity passed on and probed is ``relu(pre - mean(pre))`` ("triangle"),
standardised; AdamW (lr 3e-3 / 2e-3, weight decay 1e-4, lr x0.9 every 1000 batches), the
layers trained one after the other (20 and 9 epochs) on two views shifted by up to 2 pixels;
a linear probe with dropout on both layers' features, Adam 1e-3 for 50 epochs.

Which differences matter was measured on 10,000 MNIST training images, one 784-2000 layer,
3 epochs, one seed, scored by the same 5-epoch softmax probe (PyTorch, Adam 1e-3) on the
10,000 test images.  With fflib: the old setting (threshold 1, Adam 1e-3) 4.91 %, threshold 4
with Adam 3e-3 4.60 % (threshold 5: 5.23 %; Adam 6e-3: 4.78 %), and with the first layer's
initial weights doubled 4.11 %; the untrained layer 6.26 % (on 784-2000-2000, Adam's L2 decay
1e-4 made it worse: 5.28 % against 4.76 %).  A PyTorch
re-implementation of the authors' layer (not part of fflib; ReLU features unless said): their two
thresholds with the penalty 4.11 % against one threshold 4.22 %, RMS-normalised instead of
standardised input 3.95 % against 4.35 %, the triangle activation 4.53 % against ReLU's 3.87 %,
a negative pair left unnormalised 3.87 % against renormalised 4.35 % (fflib's first LenNorm
renormalises it; on the full recipe, 20 + 20 epochs, leaving it unnormalised gave the same final
validation error, 1.60 %: benchmarks/scff_pair_norm.py).  So the recipe changes fflib's threshold, learning rate and
first-layer scale and keeps one threshold, RMS LenNorm and ReLU.  The authors' decay of the
blocks' rate is in the CLI's recipe (``mnist-mlp-scff``: ``--block-decay 0.944``, x0.944 after
each label-free epoch, then the probe's own cooldown; in Python ``LinearCooldown(opt, epochs +
head_epochs, start=epochs, decay=0.944)``): on the full recipe it lowered the final validation
error from 1.60 to 1.36 % (benchmarks/scff_block_anneal.py; the recipe's run: 1.38 %) and the
test error from 1.74 to 1.72 %, the same within the test set's noise.  The recipe's final run
trains on all 60,000 images: 1.81 % (benchmarks/results/reproduce/mnist-mlp-scff.json).
"""
import time

import numpy as np

from . import _core
from .augment import parse as parse_augment
from .nn import FFModel, as_float32_batch
from .train import error_percent

__all__ = ["METHODS", "ORDERS", "SCFF_THRESHOLD", "SCFF_LR", "SCFF_HEAD_LR", "scff_pairs", "hybrid_masks",
           "hybrid_negatives", "scff_mlp", "probe_error", "fit_unsupervised"]

METHODS = ("scff", "hybrid")
ORDERS = ("simultaneous", "sequential")   # every block on every minibatch, or one block after another
SCFF_THRESHOLD = 4.0    # FF threshold on the mean goodness (see the module docstring)
SCFF_LR = 3e-3          # Adam learning rate of the blocks (the authors' first layer: AdamW 3e-3)
SCFF_HEAD_LR = 1e-3     # Adam learning rate of the linear probe (the authors' probe: Adam 1e-3)
HYBRID_ITERATIONS = 6   # Hinton gives no count; 6 passes leave blobs a few pixels wide on 28x28


def _rng(random_state):
    return random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)


def _shift(name, shift, B, rng):
    if shift is None:
        return int(rng.integers(1, B))
    if isinstance(shift, (bool, np.bool_)) or not isinstance(shift, (int, np.integer)) or not 1 <= shift < B:
        raise ValueError(f"{name} must be an int in [1, {B - 1}] (the batch size - 1), got {shift!r}")
    return int(shift)


def _batch(x, name):
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, got {x.dtype}")
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a batch (B, ...) of at least 2 samples, got shape {x.shape}")
    return np.ascontiguousarray(x)


def scff_pairs(x, x2=None, shift=None, random_state=None):
    """Self-contrastive positive and negative inputs (Chen et al. 2025, Fig. 1d, as the mean of the
    pair that the authors' weight-shared first layer computes): ``pos[b] = (x[b] + x2[b]) / 2``
    and ``neg[b] = (x[b] + x2[(b + shift) % B]) / 2``.

    x (B, ...) float32, B >= 2; x2 a second view of the same images (e.g. augmented), default
    x itself (then ``pos`` is x).  shift in [1, B-1], default random from ``random_state``:
    sample b's partner is always another sample of the batch.  Returns (pos, neg), new arrays
    shaped like x."""
    x = _batch(x, "x")
    x2 = x if x2 is None else _batch(x2, "x2")
    if x2.shape != x.shape:
        raise ValueError(f"x2 must have the shape of x {x.shape}, got {x2.shape}")
    s = _shift("shift", shift, x.shape[0], _rng(random_state))
    pos, neg = np.empty_like(x), np.empty_like(x)
    _core.scff_pairs(pos.reshape(len(x), -1), neg.reshape(len(x), -1), x.reshape(len(x), -1),
                     x2.reshape(len(x), -1), s)
    return pos, neg


def hybrid_masks(bits, iterations=HYBRID_ITERATIONS):
    """Hinton's (2022, sec. 3.2) masks: each (H, W) bit image of ``bits`` (B, H, W) blurred
    ``iterations`` times with the filter [1/4, 1/2, 1/4] along rows then columns (edge pixels
    repeated), then thresholded: 1 where the blurred value exceeds 0.5, else 0."""
    bits = np.asarray(bits)
    if bits.dtype != np.float32:
        raise TypeError(f"bits must have dtype float32, got {bits.dtype}")
    if bits.ndim != 3:
        raise ValueError(f"bits must be (B, H, W), got shape {bits.shape}")
    if isinstance(iterations, (bool, np.bool_)) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    mask = np.empty_like(bits)
    _core.hybrid_masks(mask, np.ascontiguousarray(bits), int(iterations))
    return mask


def hybrid_negatives(x, image_shape, shift=None, iterations=HYBRID_ITERATIONS, random_state=None, mask=None):
    """Hybrid-image negatives (Hinton 2022, sec. 3.2): ``x[b] * m + x[(b + shift) % B] * (1 - m)``
    with a fresh :func:`hybrid_masks` mask m per sample (from random bits of ``random_state``)
    unless ``mask`` (B, H, W) is given.  x (B, D) or (B, C, H, W) float32 with
    ``image_shape`` (C, H, W); the mask is shared by the channels.  Returns an array shaped
    like x."""
    x = _batch(x, "x")
    if len(image_shape) != 3 or int(np.prod(image_shape)) != int(np.prod(x.shape[1:])):
        raise ValueError(f"image_shape {tuple(image_shape)} does not fit samples of shape {x.shape[1:]}")
    C, H, W = (int(v) for v in image_shape)
    if H * W == 1:
        raise ValueError(f"hybrid images need images (H, W > 1), got image_shape {tuple(image_shape)}")
    rng = _rng(random_state)
    s = _shift("shift", shift, x.shape[0], rng)
    if mask is None:
        mask = hybrid_masks(rng.integers(0, 2, (x.shape[0], H, W)).astype(np.float32), iterations)
    else:
        mask = np.ascontiguousarray(mask, dtype=np.float32)
    out = np.empty_like(x)
    _core.hybrid_images(out.reshape(len(x), C, H, W), x.reshape(len(x), C, H, W), mask, s)
    return out


def scff_mlp(hidden=(2000, 2000), input_shape=(1, 28, 28), threshold=SCFF_THRESHOLD, first_scale=2.0, seed=0,
             block_thresholds=None):
    """The SCFF recipe's model: an MLP ``prod(input_shape)``-``hidden`` (RMS LenNorm on the input
    and between blocks, ReLU) with ``label_encoding="none"``, FF loss on the mean goodness with
    ``threshold`` (default ``SCFF_THRESHOLD``), and a one-pass head (the linear probe) on every
    block's features.  The first Linear's initial weight and bias are multiplied by
    ``first_scale``: 2 is the authors' first layer, whose two weight-sharing halves give
    ``W a + W b + 2 c``, twice the pre-activation of the pair's mean that fflib's first layer
    computes.  (Scaling a ReLU block's input weights changes its normalised output only through
    the LenNorm's eps, so the untrained network's features hardly depend on ``first_scale``.)  Train it with
    ``fflib.fit(model, x, y, method="scff", epochs=..., head_epochs=...)``.  ``block_thresholds``:
    one threshold per block instead (the authors' code: 4 on layer 1, 1 on layer 2)."""
    from .nn import mlp
    from .nn import FFModel as _FFModel
    if isinstance(hidden, (int, np.integer)) or not hasattr(hidden, "__len__") or len(hidden) == 0 or any(
            isinstance(h, (bool, np.bool_)) or not isinstance(h, (int, np.integer)) or h < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty sequence of positive ints (the block widths), got {hidden!r}")
    if isinstance(first_scale, (bool, np.bool_)) or not isinstance(first_scale, (int, float, np.integer, np.floating)) \
            or not np.isfinite(first_scale) or first_scale <= 0:
        raise ValueError(f"first_scale must be a finite number > 0, got {first_scale!r}")
    shape = (input_shape,) if isinstance(input_shape, (int, np.integer)) else tuple(input_shape)
    sizes = [int(np.prod(shape))] + [int(h) for h in hidden]
    model = _FFModel(mlp(sizes, norm="rms"), input_shape=input_shape, label_encoding="none", loss="ff",
                     goodness="mean", threshold=threshold, norm="rms", head_blocks=list(range(len(hidden))),
                     seed=seed, block_thresholds=block_thresholds)
    for p in model.parameters()[:2]:    # the first Linear's weight and bias (views of C memory)
        p *= np.float32(first_scale)
    return model


def probe_error(model, x, y, batch_size=1000):
    """Test error in percent of the model's one-pass head (the linear probe) on (x, y)."""
    x = as_float32_batch(x, "x", int(np.prod(model.input_shape)))
    y = model._check_y(y, x.shape[0])
    was = model.training
    model.eval()
    try:
        pred = np.concatenate([model.predict_onepass(x[s:s + batch_size]) for s in range(0, len(y), batch_size)])
    finally:
        model.train(was)
    return error_percent(pred, y)


def _neg_goodness_refusal(method, goodness):
    return (f"method {method!r} needs goodness 'sum' or 'mean', got {goodness!r}: minus the goodness trains real "
            "images to low activity, so the features the linear probe reads die on real data (measured on the "
            "sample: 85 % probe error against 28 % with 'mean')")


def fit_unsupervised(model, x, y=None, *, method="scff", epochs=10, head_epochs=5, batch_size=100, optimizer=None,
                     scheduler=None, augment=None, iterations=HYBRID_ITERATIONS, order="simultaneous", random_state=0,
                     x_val=None, y_val=None, callback=None, progress=False, checkpoint=None, checkpoint_every=1,
                     resume=False, comm=None):
    """Train ``model`` without labels on ``method``'s negatives for ``epochs`` epochs, then its
    one-pass head on the frozen features for ``head_epochs`` epochs with the labels y (a linear
    probe; skipped when y is None).

    ``order``: "simultaneous" (every block on every minibatch, each on its own loss) or
    "sequential" (block b alone for ``epochs`` epochs, then block b + 1, as the SCFF authors
    train their layers one after the other: the label-free phase lasts ``epochs * num_blocks``
    epochs, each later block's epochs running the frozen earlier blocks forward).

    The model needs ``label_encoding="none"`` and a loss with negatives (ff, symba); for SCFF
    :func:`scff_mlp` builds the recipe's.  Without ``optimizer`` (and none attached to the
    model), "scff" uses Adam with lr ``SCFF_LR`` for the blocks and ``SCFF_HEAD_LR`` for the
    probe, "hybrid" Adam's defaults.
    ``augment`` (SCFF): the pair's two members are two independently augmented views (the
    authors' MNIST recipe shifts by up to 2 pixels: ``"crop2"``); with "hybrid" the real
    images are augmented before mixing.  ``checkpoint``, ``checkpoint_every`` and ``resume``
    as in :func:`fflib.fit` (see :func:`label_free_epochs`).  ``comm`` (an mpi4py
    communicator; every rank passes the same model, data and settings): data-parallel training
    across its ranks, each drawing the whole minibatch's pairs and training on its shard of them
    (:func:`fflib.distributed.label_free_epochs`).  Returns a history like
    :func:`fflib.fit`'s, each epoch with ``val_error`` (the probe's, in percent) once the head
    has trained and x_val is given."""
    from .optim import Adam
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (or 'ff' through fflib.fit), got {method!r}")
    if not isinstance(order, str) or order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if not isinstance(model, FFModel):
        raise TypeError(f"model must be an fflib.FFModel, got {type(model).__name__}")
    if model.label_encoding != "none" or model.config["loss"] not in ("ff", "symba"):
        raise ValueError(f"method {method!r} trains without labels: the model needs label_encoding='none' and the "
                         f"ff or symba loss, got label_encoding={model.label_encoding!r}, loss={model.config['loss']!r}")
    if str(model.config["goodness"]).startswith("neg-"):
        raise ValueError(_neg_goodness_refusal(method, model.config["goodness"]))
    x, y = check_run(model, x, y, epochs, head_epochs, batch_size, 2, x_val, y_val)
    shape = tuple(model.input_shape)
    aug = parse_augment(augment)
    if aug is not None and shape[1] * shape[2] == 1:
        raise ValueError(f"augment {augment!r} needs an image model, got input_shape {shape}")
    if method == "hybrid" and shape[1] * shape[2] == 1:
        raise ValueError(f"method 'hybrid' mixes images: the model needs input_shape (C, H, W) with H, W > 1, "
                         f"got {shape}")
    rng = _rng(random_state)
    if optimizer is None and model.optimizer is not None:
        optimizer = model.optimizer
    elif optimizer is None:
        optimizer = Adam(model, lr=SCFF_LR, head_lr=SCFF_HEAD_LR) if method == "scff" else Adam(model)
    off = np.zeros(model.num_blocks, np.uint8)

    def pairs(xb, act):
        """The minibatch's positive and negative rows (``xb`` is the caller's copy)."""
        if method == "scff":
            x2 = None
            if aug is not None:
                x2 = aug(xb.copy().reshape((len(xb),) + shape), rng).reshape(xb.shape)
                aug(xb.reshape((len(xb),) + shape), rng)
            return scff_pairs(xb, x2, random_state=rng)
        if aug is not None:
            aug(xb.reshape((len(xb),) + shape), rng)
        return xb, hybrid_negatives(xb, shape, iterations=iterations, random_state=rng)

    def step(xb, yb, act):
        if isinstance(act, str):   # "probe"
            # frozen blocks: only the head steps; x_neg is required by a label-free model's
            # step and unused with no block active
            return model.train_step(xb, yb, active=off, train_head=True, x_neg=xb)
        pos, neg = pairs(xb, act)
        return model.train_step(pos, None, active=act, train_head=False, x_neg=neg)

    run = {"method": method, "epochs": int(epochs), "head_epochs": int(head_epochs), "batch_size": int(batch_size),
           "augment": augment, "iterations": int(iterations), "order": order}
    kw = dict(method=method, batch_size=batch_size, min_batch=2, optimizer=optimizer, scheduler=scheduler, rng=rng,
              x_val=x_val, y_val=y_val, callback=callback, progress=progress, checkpoint=checkpoint,
              checkpoint_every=checkpoint_every, resume=resume, run=run)
    plan = label_free_plan(model.num_blocks, epochs, head_epochs, order)
    if comm is not None:
        from . import distributed
        return distributed.label_free_epochs(distributed.check_comm(comm), model, x, y, plan, pairs, **kw)
    return label_free_epochs(model, x, y, plan, step, **kw)


def label_free_order(order):
    """The label-free loops' name for ``order``: fit's and the CLI's "layerwise" is their
    "sequential" (None: "simultaneous"); anything else is passed on for them to check."""
    return {None: "simultaneous", "layerwise": "sequential"}.get(order, order)


def label_free_plan(num_blocks, epochs, head_epochs, order):
    """The epochs of a label-free run as :func:`label_free_epochs` takes them: ``epochs`` epochs
    of every block (order "simultaneous", None) or ``epochs`` of each block alone in turn
    ("sequential", its active-block mask), then ``head_epochs`` of the probe ("probe")."""
    if order == "simultaneous":
        plan = [None] * int(epochs)
    else:
        plan = [np.eye(num_blocks, dtype=np.uint8)[b] for b in range(num_blocks) for _ in range(int(epochs))]
    return plan + ["probe"] * int(head_epochs)


def check_run(model, x, y, epochs, head_epochs, batch_size, min_batch, x_val, y_val):
    """The arguments every label-free run checks (:func:`fit_unsupervised`,
    :func:`fflib.uff.fit_uff`): x as a float32 batch of the model's input, the counts, y (needed
    by the probe) and the validation pair.  Returns (x, y)."""
    x = as_float32_batch(x, "x", int(np.prod(model.input_shape)))
    for name, v, lo in (("epochs", epochs, 0), ("head_epochs", head_epochs, 0), ("batch_size", batch_size, min_batch)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if y is not None:
        y = model._check_y(y, x.shape[0])
    elif head_epochs:
        raise ValueError("head_epochs > 0 trains the linear probe on labels: pass y (or head_epochs=0)")
    if head_epochs and not model.has_head:
        raise ValueError("head_epochs > 0 needs a model with a one-pass head (head_blocks not None)")
    if (x_val is None) != (y_val is None):
        raise ValueError("x_val and y_val go together")
    return x, y


def label_free_epochs(model, x, y, plan, step, *, method, batch_size, min_batch, optimizer, scheduler, rng,
                      x_val=None, y_val=None, callback=None, progress=False, checkpoint=None, checkpoint_every=1,
                      resume=False, run=None, history=None):
    """The epochs of a run without labels, shared by :func:`fit_unsupervised` (SCFF, hybrid
    images) and :func:`fflib.uff.fit_uff` (autoencoder cells): ``plan[e]`` is ``"probe"`` (frozen
    blocks in inference mode, the head steps on y) or the active-block mask of a label-free epoch
    (None: every block); ``step(xb, yb, plan[e])`` runs one minibatch (yb None outside the probe)
    and returns the per-block and head losses.  Minibatches shorter than ``min_batch`` are skipped.

    ``checkpoint`` (a directory): the run's whole state (weights, optimiser and schedule state,
    the data RNG, the epoch, the history) is written atomically to ``checkpoint/checkpoint.npz``
    every ``checkpoint_every`` epochs and after the last, as :func:`fflib.fit` does; with
    ``resume`` a run continues from it and ends as an uninterrupted one would.  ``run``: the
    settings a resumed run must share with the checkpointed one (the data's checksum is added).
    Ctrl-C stops after the current minibatch with ``history["interrupted"]`` set."""
    import os
    import zlib
    from .train import _check_run_args, _checkpoint_path, _restore
    _check_run_args(model, optimizer, scheduler, checkpoint_every)
    n, nb = x.shape[0], model.num_blocks
    history = {"method": method, "epochs": [], "interrupted": False, **(history or {})}
    run = dict(run or {}, plan=[p if p is None or isinstance(p, str) else [int(v) for v in p] for p in plan],
               num_samples=int(n), data_crc32=[zlib.crc32(x), None if y is None else zlib.crc32(y)])
    ckpt = None if checkpoint is None else _checkpoint_path(checkpoint)
    if resume and ckpt is None:
        raise ValueError("resume=True needs checkpoint= (the directory holding the checkpoint)")
    start = 0
    if resume and os.path.exists(ckpt):
        optimizer, scheduler, start, history = _restore(ckpt, model, optimizer, scheduler, rng, run)
        history["interrupted"] = False
    t_start = time.perf_counter()
    model.train()
    try:
        for epoch in range(start, len(plan)):
            act = plan[epoch]
            probe = isinstance(act, str)
            # the probe trains the head on the features inference gives: frozen blocks in
            # inference mode (batch norm from its running statistics, which the probe leaves alone)
            model.train(not probe)
            t0 = time.perf_counter()
            perm = rng.permutation(n)
            sums, steps = np.zeros(nb + 1), 0
            for idx in minibatches(perm, batch_size, min_batch):
                losses = step(np.ascontiguousarray(x[idx]), np.ascontiguousarray(y[idx]) if probe else None, act)
                sums += losses
                steps += 1
            end_epoch(model, history, plan, epoch, method, sums / max(steps, 1), t0, optimizer=optimizer,
                      scheduler=scheduler, rng=rng, x_val=x_val, y_val=y_val, ckpt=ckpt,
                      checkpoint_every=checkpoint_every, run=run, callback=callback, progress=progress)
    except KeyboardInterrupt:
        history["interrupted"] = True
    history["train_seconds"] = time.perf_counter() - t_start
    model.eval()
    return history


def minibatches(perm, batch_size, min_batch):
    """The minibatches of an epoch's order ``perm``, those shorter than ``min_batch`` left out."""
    for s in range(0, len(perm), batch_size):
        idx = perm[s:s + batch_size]
        if len(idx) >= min_batch:
            yield idx


def end_epoch(model, history, plan, epoch, method, mean, t0, *, optimizer, scheduler, rng, x_val, y_val, ckpt,
              checkpoint_every, run, callback, progress, main=True):
    """The end of a label-free epoch (:func:`label_free_epochs` and its distributed twin): its
    record (``mean``: the blocks' and the head's mean losses) in ``history``, the probe's
    validation error, the schedule's step, the checkpoint (``ckpt`` None: none), ``callback``
    and the progress line; ``main`` False (another rank than 0) skips the validation, the
    callback and the printing."""
    from .train import _write_checkpoint
    act = plan[epoch]
    probe, nb = isinstance(act, str), model.num_blocks
    rec = {"epoch": epoch + 1, "phase": "probe" if probe else method,
           "active": None if probe or act is None else [int(b) for b in np.flatnonzero(act)],
           "block_loss": None if probe else [float(v) for v in mean[:nb]],
           "head_loss": float(mean[nb]) if probe else None,
           "lr": optimizer.lr, "seconds": time.perf_counter() - t0}
    if probe and x_val is not None and main:
        rec["val_error"] = probe_error(model, x_val, y_val)
    history["epochs"].append(rec)
    if scheduler is not None:
        scheduler.step()
    if ckpt is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == len(plan)):
        _write_checkpoint(ckpt, model, optimizer, scheduler, rng, epoch + 1, history, run)
    if main:
        if callback is not None:
            callback(rec)
        if progress:
            print(f"{method} epoch {epoch + 1}/{len(plan)} {rec}", flush=True)


def refuse_label_free_flags(a, method, bad):
    """Exit with a usage error on a train flag that a label-free run (``--method scff``,
    ``hybrid``, ``uff``) has no use for, rather than ignoring it."""
    unused = (("--pvn-weight", "pvn_weight"), ("--alpha", "alpha"), ("--margin", "margin"),
              ("--head-blocks", "head_blocks"), ("--multipass-blocks", "multipass_blocks"), ("--windows", "windows"),
              ("--fourier-modes", "fourier_modes"), ("--label-value", "label_value"),
              ("--early-exit", "early_exit"), ("--head-refit", "head_refit"), ("--head-refit-lr", "head_refit_lr"))
    for flag, key in unused:
        if getattr(a, key, None) not in (None, False):
            bad(f"{flag} does not apply to --method {method} (label-free blocks, then a linear probe on every "
                f"block's features)")
    if getattr(a, "input_norm", None) not in (None, "none"):
        bad(f"--input-norm does not apply to --method {method} (it standardises a labelled model's input)")
    if a.momentum is not None and a.optimizer != "sgd":
        bad(f"--momentum is SGD's; give --optimizer sgd (got --optimizer {a.optimizer or 'adam'})")
    if getattr(a, "distributed", None) not in (None, "data"):
        bad(f"--distributed {a.distributed} does not apply to --method {method}: label-free runs train "
            f"data-parallel (--distributed data)")


def train_command_label_free(a, bad, layers_given=True):
    """``python -m fflib train --method scff|hybrid``: an MLP (``--layers``) or the survey's CNN
    for the dataset (``--model cnn``, without its label channel: :func:`fflib.models.survey_cnn`)
    trained without labels for ``--epochs``, then its linear probe (the one-pass head on every
    block's features; the CIFAR-10 CNN's on blocks 2-4, as :func:`fflib.models.build` reads
    them) for as many epochs; prints and optionally writes (``--out``) the probe's test
    error.  ``--method scff`` on an MLP with the default --norm rms / --goodness mean builds
    :func:`scff_mlp` (threshold ``SCFF_THRESHOLD``, first layer x2); it trains with Adam
    ``SCFF_LR`` / probe ``SCFF_HEAD_LR`` unless --threshold, --lr, --head-lr say otherwise.
    ``layers_given``: --layers was on the command line (refused with --model cnn).
    ``bad(message)`` exits with a usage error."""
    from . import set_num_threads
    from .nn import mlp
    from .optim import Adam
    if a.model not in ("mlp", "cnn"):
        bad(f"--method {a.method} trains an MLP (--model mlp --layers ...) or the survey's CNN (--model cnn), "
            f"got --model {a.model}")
    if a.model == "cnn" and layers_given:
        bad(f"--layers sets an MLP's hidden sizes; --model cnn is the survey's CNN for --dataset {a.dataset}")
    for flag, given in (("--loss", a.loss not in (None, "ff")), ("--label-encoding", a.label_encoding),
                        ("--routine", a.routine != "greedy"), ("--pipeline", a.pipeline),
                        ("--negatives", a.negatives != "uniform"), ("--alternate", a.alternate)):
        if given:
            bad(f"{flag} does not apply to --method {a.method} (label-free FF loss on explicit negatives)")
    refuse_label_free_flags(a, a.method, bad)
    if a.resume and not a.checkpoint:
        bad("--resume needs --checkpoint DIR (where the interrupted run kept its state)")
    from .cli import _make_optimizer, load_train_test, mpi_world, split_validation
    comm, rank = mpi_world(a, bad)
    if a.threads:
        set_num_threads(a.threads)
    from .cli import _weight_decay as _cli_weight_decay
    x, y, xt, yt = load_train_test(a, bad)
    shape = tuple(x.shape[1:]) if x.ndim == 4 else (1,) + tuple(x.shape[1:])
    x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
    x, y, xv, yv, xt, yt = split_validation(a, x, y, xt, yt, bad)
    epochs = a.epochs or 10
    head_epochs = a.head_epochs or epochs
    order = label_free_order(a.order)
    scff = a.method == "scff"
    lr = a.lr or (SCFF_LR if scff else 1e-3)
    head_lr = a.head_lr or (SCFF_HEAD_LR if scff else 1e-2)
    threshold = (SCFF_THRESHOLD if scff else 5.0) if a.threshold is None else a.threshold
    if a.goodness.startswith("neg-"):
        bad(_neg_goodness_refusal(a.method, a.goodness))
    cnn = a.model == "cnn"
    sizes = None if cnn else [x.shape[1]] + a.layers
    recipe_model = scff and not cnn and a.norm == "rms" and a.goodness == "mean"   # SCFF's recipe: scff_mlp
    try:
        if cnn:
            from .models import build
            model = build("cnn", a.dataset, seed=a.seed, label_encoding="none", loss="ff", goodness=a.goodness,
                          threshold=threshold, norm=a.norm, block_thresholds=a.block_thresholds)
        elif recipe_model:
            model = scff_mlp(a.layers, shape, threshold, seed=a.seed, block_thresholds=a.block_thresholds)
        else:
            model = FFModel(mlp(sizes, norm=a.norm), shape, 10, loss="ff", goodness=a.goodness,
                            threshold=threshold, norm=a.norm, label_encoding="none",
                            head_blocks=list(range(len(a.layers))), seed=a.seed, block_thresholds=a.block_thresholds)
        if a.head_dropout is not None:
            model.set_config(head_dropout=a.head_dropout)
        opt = _make_optimizer(a, model, lr, head_lr, Adam)
        sched = cli_schedule(a, opt, label_free_plan(model.num_blocks, epochs, head_epochs, order))
    except ValueError as e:
        bad(str(e))
    head = [b + 1 for b in model.head_blocks]
    net = (f"the survey's CNN ({model.num_parameters()} parameters, probe on blocks "
           f"{', '.join(map(str, head))})" if cnn else f"MLP {sizes}")
    if rank == 0:
        print(f"fflib: {a.method} on {a.dataset} without labels, {net}, {epochs} epoch{'s' * (epochs != 1)} "
              f"({order}) + {head_epochs} probe epoch{'s' * (head_epochs != 1)}"
              + ("" if comm is None else f", data-parallel on {comm.Get_size()} ranks"), flush=True)

    try:
        hist = fit_unsupervised(model, x, y, method=a.method, epochs=epochs, head_epochs=head_epochs,
                                batch_size=a.batch_size or 100, optimizer=opt, scheduler=sched,
                                augment=a.augment, order=order,
                                random_state=a.seed, x_val=xv, y_val=yv, callback=epoch_printer("block losses", 4),
                                checkpoint=a.checkpoint, checkpoint_every=a.checkpoint_every, resume=a.resume,
                                comm=comm)
    except (ValueError, TypeError) as e:
        bad(str(e).replace("\n", " "))
    if rank != 0:       # rank 0 evaluates and writes; the others hold the same model
        return 0
    config = {"lr": lr, "head_lr": head_lr, "optimizer": a.optimizer or "adam", "weight_decay": _cli_weight_decay(a),
              "block_lr": a.block_lr,
              "momentum": a.momentum, "threshold": threshold, "block_thresholds": a.block_thresholds,
              "head_dropout": model.config["head_dropout"],
              "schedule": schedule_name(sched),
              "first_scale": 2.0 if recipe_model else 1.0, "order": order,
              "goodness": a.goodness, "norm": a.norm, "augment": a.augment,
              "distributed": a.distributed, "ranks": 1 if comm is None else comm.Get_size()}
    return finish_command(a, model, hist, xt, yt, sizes, epochs, head_epochs, config)


def cli_schedule(a, optimizer, plan):
    """The learning-rate schedule of a label-free train command, over its whole ``plan`` (the
    label-free epochs, then the probe's): ``--milestones``/``--gamma`` (MultiStepLR), else
    unless ``--no-cooldown`` a linear cooldown to 0 over the second half (in the usual run the
    probe's epochs), else None (constant rates).  ``--block-decay G`` < 1: the blocks' rate
    times G after every label-free epoch, then the probe's cooldown from its full rate
    (LinearCooldown with ``decay``); it needs the cooldown."""
    from .optim import LinearCooldown, MultiStepLR
    decay = getattr(a, "block_decay", None)
    if decay is not None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"--block-decay must be in (0, 1], got {decay!r}")
        if a.milestones or a.cooldown is False:
            raise ValueError("--block-decay anneals the blocks, then cools the probe down: it does not combine with "
                             + ("--milestones" if a.milestones else "--no-cooldown"))
        if decay < 1.0:   # the plan ends in at least one probe epoch (the CLI's --head-epochs > 0)
            return LinearCooldown(optimizer, len(plan), start=sum(1 for p in plan if not isinstance(p, str)),
                                  decay=decay)
    if a.milestones:
        return MultiStepLR(optimizer, a.milestones, a.gamma if a.gamma is not None else 0.1)
    if a.cooldown is None or a.cooldown:
        return LinearCooldown(optimizer, len(plan))
    return None


def schedule_name(sched):
    """How the run's JSON names its schedule: None, or the scheduler's kind and settings."""
    return None if sched is None else dict({"kind": type(sched).__name__}, **sched.config())


def epoch_printer(what, digits):
    """The train command's line per epoch of a label-free run (``what``: the blocks' loss)."""
    def report(rec):
        losses = (f"{what} {' '.join(f'{v:.{digits}f}' for v in rec['block_loss'])}" if rec["block_loss"] is not None
                  else f"probe loss {rec['head_loss']:.4f}")
        if rec.get("val_error") is not None:
            losses += f"  val {rec['val_error']:.2f}%"
        print(f"epoch {rec['epoch']:3d} ({rec['phase']})  {losses}  {rec['seconds']:.1f}s", flush=True)
    return report


def finish_command(a, model, hist, xt, yt, sizes, epochs, probe_epochs, config):
    """The end of ``train --method scff|hybrid|uff``: the linear probe's test error printed,
    ``--save``, and ``--out``'s JSON (the run's settings with ``config``, per-epoch history,
    the probe's test error, seconds, peak memory) with its per-epoch CSV beside it.  Returns the
    exit status (130 when interrupted: the same command with ``--resume`` continues from
    ``--checkpoint``)."""
    import json
    import os
    from . import __version__, blas_name, get_num_threads
    from .cli import csv_path, peak_rss_mb, write_epoch_csv
    t0 = time.perf_counter()
    err = probe_error(model, xt, yt)
    eval_s = time.perf_counter() - t0
    print(f"test error (linear probe): {err:.2f}%  train {hist['train_seconds']:.1f}s  peak RSS {peak_rss_mb():.0f} MB",
          flush=True)
    if a.save:
        model.save(a.save)
    if a.out:
        res = {"config": dict({"method": a.method, "recipe": a.recipe, "model": a.model, "dataset": a.dataset,
                               "subset": a.subset, "val_size": a.val_size or 0, "layers": sizes, "epochs": epochs,
                               "probe_epochs": probe_epochs,
                               "batch_size": a.batch_size or 100, "seed": a.seed, "threads": get_num_threads(),
                               "checkpoint": a.checkpoint}, **config),
               "test_error": {"probe": err}, "epochs": hist["epochs"], "train_seconds": hist["train_seconds"],
               "test_eval_seconds": eval_s, "interrupted": hist["interrupted"], "peak_rss_mb": peak_rss_mb(),
               "blas": blas_name(), "fflib_version": __version__}
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, a.out)
        write_epoch_csv(csv_path(a.out), hist["epochs"])
    return 130 if hist["interrupted"] else 0
