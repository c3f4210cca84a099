"""Early-exit inference (LightFF, Aminifar et al., ECAI 2024): each sample stops at the first
block whose confidence passes a threshold, so easy samples skip the later blocks' compute.

Multi-pass: the scores after block b are the multi-pass class scores (goodness per candidate
label, or the channel-group goodness of CwC/PvN nets) summed over blocks 0..b, the running sum
that ordinary multi-pass prediction takes over all blocks.  One-pass: LightFF trains one
softmax classifier per layer on the activities of the layers so far; fflib has one head on the
chosen blocks, so its per-block variant is the *partial* head: the head's logits from the
features of the head layers run so far, the missing ones counted as zero
(``bias + W[:, seen] @ feat[seen]``).  Its logit for the full set of features is the head's own,
so the last block answers exactly as :meth:`FFModel.predict_onepass`; a block that feeds the
head nothing (block 0 with the default ``head_blocks="auto"``) cannot exit, and the blocks
after the head's last input are never run.

Two confidence rules: ``"softmax"`` (the largest softmax probability of the scores, a threshold
in (0, 1]) and ``"lightff"`` (the paper's rule: the largest score itself -- accumulated goodness,
or the partial logit -- against a per-block threshold ``mean_b - k std_b`` of the true class's
score on a validation split; the paper takes k = 1, :func:`calibrate` searches k).  The
calibration keeps the validation samples that early exit gets wrong and the full prediction
gets right within a tolerance (the "harm" bound of :func:`calibrate`).

The stopping runs in C (``ff_net_predict_early_exit``): the still-active rows of a chunk are
compacted after every block, so an exited sample costs the later blocks nothing.  This module
holds the pure-NumPy reference of the rule (computed from the full scores), the calibration
and the compute accounting.
"""
import numpy as np

RULES = {"softmax": 0, "lightff": 1}
MODES = ("multipass", "onepass")


class EarlyExit:
    """Early-exit settings: ``mode`` ("multipass" or "onepass"), ``rule`` ("softmax" or
    "lightff") and one threshold per block (``inf``: the block never exits).  Made by
    :meth:`FFModel.calibrate_early_exit`; ``info`` holds the calibration's measurements on the
    validation split (accuracy with and without early exit, mean blocks used, the chosen
    parameter)."""

    def __init__(self, mode, rule, thresholds, info=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
        t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        if t.size == 0 or np.isnan(t).any():
            raise ValueError(f"thresholds must be a non-empty list of numbers (inf allowed, NaN not), got {thresholds!r}")
        self.mode, self.rule, self.thresholds = mode, rule, t
        self.info = dict(info or {})

    def __repr__(self):
        return (f"EarlyExit(mode={self.mode!r}, rule={self.rule!r}, "
                f"thresholds={[float(v) for v in self.thresholds]!r})")


class EarlyExitResult:
    """What an early-exit prediction did: ``pred`` (B,) classes, ``blocks_used`` (B,) blocks run
    per sample, ``mean_blocks``, ``max_blocks`` (the blocks a prediction without early exit
    runs), and multiply-accumulates per image of the Linear/Conv2d layers (and the head):
    ``macs_per_image`` (mean, with early exit), ``full_macs_per_image`` (without) and
    ``macs_saved_per_image`` (their difference; see :func:`block_macs` for the counting)."""

    def __init__(self, pred, used, costs):
        self.pred = pred
        self.blocks_used = used
        self.max_blocks = len(costs)
        self.mean_blocks = float(used.mean()) if used.size else 0.0
        cum = np.cumsum(costs)
        self.macs_per_image = float(cum[used - 1].mean()) if used.size else 0.0
        self.full_macs_per_image = float(cum[-1])
        self.macs_saved_per_image = self.full_macs_per_image - self.macs_per_image

    def summary(self, y=None):
        """A dict of the numbers (and the accuracy when labels ``y`` are given)."""
        out = {"mean_blocks": self.mean_blocks, "max_blocks": self.max_blocks,
               "macs_per_image": self.macs_per_image, "full_macs_per_image": self.full_macs_per_image,
               "macs_saved_per_image": self.macs_saved_per_image,
               "macs_saved_fraction": self.macs_saved_per_image / max(self.full_macs_per_image, 1.0)}
        if y is not None:
            out["accuracy"] = float((self.pred == np.asarray(y)).mean())
        return out


def _layer_macs(info):
    C, H, W = info["in_shape"]
    OC, OH, OW = info["out_shape"]
    kind = info["kind"]
    from .nn import _core
    if kind == _core.LAYER_KINDS["linear"]:
        return C * H * W * OC
    if kind == _core.LAYER_KINDS["conv2d"]:
        k = info["kernel"]
        return OC * OH * OW * (C // info["groups"]) * k * k
    return 0


def head_stop(model):
    """Blocks a one-pass prediction runs: up to the one holding the head's last input layer."""
    last = max(model.head_layers)
    for b, (_, e) in enumerate(model.blocks):
        if e > last:
            return b + 1
    return model.num_blocks


def block_macs(model, mode="multipass"):
    """Multiply-accumulates per image of each block an inference runs (Linear and Conv2d layers
    only; normalisation, ReLU and pooling are not counted).  Block b runs the layers between the
    previous block's end and its own.  Multi-pass with the label in the input (FF, SymBa, DF)
    runs every block once per candidate label (K rows per image; label sharing saving part of
    the first layer is not subtracted), with the channel-group losses once; one-pass runs a
    block once, and a block holding head inputs adds K MACs per head feature it produces."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    net, K = model._net, model.num_classes
    blocks = model.blocks
    stop = head_stop(model) if mode == "onepass" else len(blocks)
    per = K if mode == "multipass" and model.label_encoding != "none" else 1
    costs, prev = [], 0
    for b in range(stop):
        end = blocks[b][1]
        c = sum(_layer_macs(net.layer_info(i)) for i in range(prev, end)) * per
        if mode == "onepass":
            c += sum(K * int(np.prod(net.layer_shape(i))) for i in model.head_layers if prev <= i < end)
        costs.append(c)
        prev = end
    return np.asarray(costs, dtype=np.float64)


def resolve(model, early_exit, mode):
    """(rule value, thresholds (num_blocks,) float64) for ``early_exit``: a number (one softmax
    threshold for every block), a sequence of per-block softmax thresholds, or an
    :class:`EarlyExit` made for ``mode``."""
    nb = model.num_blocks
    if isinstance(early_exit, EarlyExit):
        if early_exit.mode != mode:
            raise ValueError(f"early_exit was calibrated for {early_exit.mode} prediction, not {mode}")
        if early_exit.thresholds.shape != (nb,):
            raise ValueError(f"early_exit has {early_exit.thresholds.size} thresholds; the model has {nb} blocks")
        return RULES[early_exit.rule], np.ascontiguousarray(early_exit.thresholds)
    if isinstance(early_exit, (bool, np.bool_)) or early_exit is None:
        raise TypeError(f"early_exit must be a threshold, a list of per-block thresholds or an "
                        f"fflib.EarlyExit, got {early_exit!r}")
    if isinstance(early_exit, (int, float, np.integer, np.floating)):
        t = np.full(nb, float(early_exit))
    else:
        try:
            t = np.asarray(early_exit, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"early_exit must be a threshold, a list of per-block thresholds or an "
                            f"fflib.EarlyExit, got {early_exit!r}") from None
        if t.shape != (nb,):
            raise ValueError(f"early_exit as a list needs one threshold per block ({nb}), got shape {t.shape}")
    if np.isnan(t).any():
        raise ValueError(f"early_exit thresholds must not be NaN, got {early_exit!r}")
    if (t <= 0).any():
        raise ValueError(f"softmax early-exit thresholds must be in (0, 1] (or inf: never), got {early_exit!r}")
    return RULES["softmax"], np.ascontiguousarray(t)


def cumulative_scores(model, x, mode, batch_size=1000):
    """The scores the rule reads after every block, from full (non-exiting) passes:
    (B, S, K) float32 for the S blocks the mode runs, and the (S,) mask of blocks that may exit.
    Multi-pass: the running sum of :meth:`FFModel.goodness` over the blocks (in block order).
    One-pass: the partial head logits; the last entry is the head's softmax output (what
    :meth:`FFModel.predict_onepass` takes the argmax of)."""
    parts = []
    if mode == "multipass":
        for s in range(0, len(x), batch_size):
            g = model.goodness(x[s:s + batch_size])
            c = np.empty((g.shape[0], g.shape[2], g.shape[1]), np.float32)
            acc = np.zeros(g.shape[:2], np.float32)
            for b in range(g.shape[2]):
                acc += g[:, :, b]
                c[:, b] = acc
            parts.append(c)
        return np.concatenate(parts), np.ones(model.num_blocks, bool)
    stop = head_stop(model)
    W, bias = model.head_weight, model.head_bias
    spans, col = [], 0
    for i in model.head_layers:
        d = int(np.prod(model._net.layer_shape(i)))
        spans.append((i, col, col + d))
        col += d
    blocks = model.blocks
    decide = np.zeros(stop, bool)
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        feat = model.features(xb)
        c = np.empty((len(xb), stop, model.num_classes), np.float32)
        acc = np.broadcast_to(bias, (len(xb), model.num_classes)).astype(np.float32)
        prev = 0
        for b in range(stop):
            for i, a, e in spans:
                if prev <= i < blocks[b][1]:
                    acc = acc + feat[:, a:e] @ W[:, a:e].T
                    decide[b] = b + 1 < stop
            c[:, b] = acc
            prev = blocks[b][1]
        c[:, stop - 1] = model.predict_proba(xb)
        parts.append(c)
    return np.concatenate(parts), decide


def _confidence(cum, rule):
    if rule == "lightff":
        return cum.max(axis=2).astype(np.float64)
    s = cum.astype(np.float64)
    return 1.0 / np.exp(s - s.max(axis=2, keepdims=True)).sum(axis=2)


def reference_exit(cum, decide, thresholds, rule):
    """The rule in NumPy from the full scores ``cum`` (B, S, K) and the (S,) mask of blocks that
    may exit: each sample answers argmax of its scores at the first block b with
    ``decide[b]`` and confidence >= ``thresholds[b]``, else at the last block.
    Returns (pred (B,), blocks used (B,))."""
    B, S, _ = cum.shape
    conf = _confidence(cum, rule)
    fire = decide[None, :S] & (conf >= np.asarray(thresholds, np.float64)[None, :S])
    fire[:, S - 1] = True
    used = fire.argmax(axis=1) + 1
    pred = cum[np.arange(B), used - 1].argmax(axis=1)
    return pred, used


BOUNDS = ("harm", "net")


def calibrate(model, x, y, mode="multipass", rule="softmax", max_drop=0.002, batch_size=1000, bound="harm"):
    """Choose thresholds on a validation split (x, y): among the candidates (one shared softmax
    threshold; for "lightff" the per-block ``mean_b - k std_b`` over a grid of k), the one using
    the fewest blocks on average whose validation accuracy loss is at most ``max_drop`` (a
    fraction: 0.002 = 0.2 percentage points).  ``bound`` says which loss:

    - "harm" (default): the fraction of the split that prediction without early exit gets right
      and early exit gets wrong.  The accuracy lost is this harm minus the samples early exit
      happens to fix, so bounding the harm bounds the loss without counting on those fixes
    - "net": the plain accuracy difference.  On a finite split it lets harmful exits be paid
      for by lucky fixes that do not carry over to new data: calibrated on 5,000 MNIST
      images at 0.2 points, one-pass early exit lost 0.38 points on the test set (harm 1.0
      point) where the "harm" bound lost 0.07 (measured, see tests/test_early_exit.py).

    Returns an :class:`EarlyExit` whose ``info`` holds the validation numbers."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    if isinstance(max_drop, (bool, np.bool_)) or not isinstance(max_drop, (int, float, np.integer, np.floating)) \
            or not 0 <= float(max_drop) < 1:
        raise ValueError(f"max_drop must be a fraction in [0, 1) (0.002 = 0.2 percentage points), got {max_drop!r}")
    if len(y) == 0:
        raise ValueError("calibration needs at least one validation sample")
    cum, decide = cumulative_scores(model, x, mode, batch_size)
    S, nb = cum.shape[1], model.num_blocks
    full_right = cum[:, -1].argmax(axis=1) == y
    full_acc = float(full_right.mean())
    conf = _confidence(cum, rule)
    if rule == "softmax":
        vals = np.unique(np.concatenate([conf[:, b] for b in range(S - 1) if decide[b]] or [np.ones(1)]))
        grid = np.unique(np.quantile(vals, np.linspace(0, 1, 401)))
        cands = [(float(t), np.full(S, t)) for t in grid]
    else:
        true = cum[np.arange(len(y)), :, y]      # (B, S): the true class's score after each block
        mean, std = true.mean(axis=0).astype(np.float64), true.std(axis=0).astype(np.float64)
        cands = [(float(k), mean - k * std) for k in np.round(np.arange(-3.0, 6.0001, 0.05), 2)]
    best = (float(S), full_acc, 0.0, None, np.full(S, np.inf))
    for param, t in cands:
        pred, used = reference_exit(cum, decide, t, rule)
        right = pred == y
        acc = float(right.mean())
        harm = float((full_right & ~right).mean())
        loss = harm if bound == "harm" else full_acc - acc
        mb = float(used.mean())
        if loss <= float(max_drop) + 1e-12 and (mb, -acc) < (best[0], -best[1]):
            best = (mb, acc, harm, param, t)
    thresholds = np.full(nb, np.inf)
    thresholds[:S - 1] = np.where(decide[:S - 1], best[4][:S - 1], np.inf)
    info = {"val_samples": int(len(y)), "val_accuracy_full": full_acc, "val_accuracy": best[1],
            "val_harm": best[2], "val_mean_blocks": best[0], "max_drop": float(max_drop), "bound": bound,
            ("threshold" if rule == "softmax" else "k"): best[3]}
    return EarlyExit(mode, rule, thresholds, info)
