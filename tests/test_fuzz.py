"""Fuzzing the public API with hypothesis (issue 10): model construction, training and inference
inputs, optimiser and schedule settings, fit's arguments, corrupt and edited model files, corrupt
data files.

Every call ends in one of: a result that passes its sanity check ("ok"), a clear error (a
ValueError/TypeError/RuntimeError/OSError whose message names the argument and is not a raw
Python message), an unclear error, or silent garbage (an invalid input accepted, or a result
that fails its check).  Each test prints its counts and asserts 0 unclear errors and 0 silent
garbage; crashes would end the process (every call here runs in it).  The profile is fixed
(derandomize=True, bounded examples) so CI time is bounded: about 25 s on 1 thread.
"""
import collections
import json
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import fflib  # noqa: E402
from fflib.optim import CosineAnnealingLR, LinearCooldown, MultiStepLR, StepLR  # noqa: E402

PROFILE = settings(derandomize=True, deadline=None, database=None, print_blob=False,
                   suppress_health_check=list(HealthCheck))
ALLOWED = (ValueError, TypeError, RuntimeError, OSError)
# fragments of Python's own messages: an error that shows one did not come from a check of ours
RAW = ("not supported between", "unpack", "object is not", "invalid literal", "unhashable", "has no attribute",
       "positional argument", "index out of range", "object of type", "must be real number, not",
       "cannot convert", "argument must be", "ufunc", "could not broadcast", "sizes do not fit")

STATS = collections.defaultdict(collections.Counter)
EXAMPLES = collections.defaultdict(list)


def outcome(suite, fn, names, valid, check=None):
    """Call ``fn`` and classify what happens.  ``names``: words one of which a clear error names
    (the arguments involved); ``valid``: True if the input is valid (must succeed), False if it is
    invalid (must raise), None if either may happen; ``check``: the sanity check of a result."""
    s = STATS[suite]
    s["calls"] += 1
    try:
        r = fn()
    except ALLOWED as e:
        msg = str(e)
        if valid:
            s["valid input rejected"] += 1
            EXAMPLES[suite].append(f"valid input rejected: {type(e).__name__}: {msg}")
        elif msg and any(n in msg for n in names) and not any(p in msg for p in RAW):
            s["clear error"] += 1
        else:
            s["unclear error"] += 1
            EXAMPLES[suite].append(f"{type(e).__name__}: {msg}  (expected a mention of {names})")
        return None
    except Exception as e:  # noqa: BLE001 - the point is to see every kind
        s["unclear error"] += 1
        EXAMPLES[suite].append(f"{type(e).__name__} (not an allowed type): {e}")
        return None
    if valid is False:
        s["silent garbage"] += 1
        EXAMPLES[suite].append(f"invalid input accepted ({names})")
        return r
    if check is not None:
        problem = check(r)
        if problem:
            s["silent garbage"] += 1
            EXAMPLES[suite].append(f"bad result: {problem}")
            return r
    s["ok"] += 1
    return r


def report(suite):
    s = STATS[suite]
    print(f"\nfuzz {suite}: {s['calls']} calls: {s['ok']} ok, {s['clear error']} clear errors, "
          f"crashes 0, silent garbage {s['silent garbage']}, unclear errors {s['unclear error']}, "
          f"valid inputs rejected {s['valid input rejected']}")
    for line in EXAMPLES[suite][:10]:
        print("   ", line)
    assert s["calls"] > 0
    assert s["silent garbage"] == 0 and s["unclear error"] == 0 and s["valid input rejected"] == 0, \
        EXAMPLES[suite][:10]


def finite(a):
    return isinstance(a, np.ndarray) and a.dtype.kind == "f" and bool(np.all(np.isfinite(a)))


# ----------------------------------------------------------------------------- FFModel(...)
F32_MAX = float(np.finfo(np.float32).max)
junk = st.sampled_from([None, "x", "", [1], {}, b"a", float("nan"), float("inf"), -float("inf"), 1e39, -1e39,
                        True, 2 ** 64, -(2 ** 70), object()])
reals = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-5, 5), junk)


def mostly(valid, bad, one_in=15):
    """``valid`` values but one draw in ``one_in`` from ``bad``."""
    # hypothesis favours small and boundary integers: scatter them before taking the fraction
    return st.integers(0, 2 ** 32).flatmap(
        lambda k: bad if ((k + 1) * 2654435761 % 2 ** 32) / 2 ** 32 < 1 / one_in else valid)


small = st.floats(0, 1, width=32)


def good_real(v, lo=None, hi=None, lo_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        f = float(v)
    except OverflowError:
        return False
    if not np.isfinite(f) or abs(f) > F32_MAX:
        return False
    if lo is not None and (f < lo or (lo_open and f == lo)):
        return False
    return hi is None or f <= hi


LAYER_SETS = {
    "mlp": lambda: (fflib.mlp([12, 10, 20]), 12),
    "mlp_odd": lambda: (fflib.mlp([12, 7, 5]), 12),
    "conv": lambda: ([fflib.Conv2d(None, 10, 3, padding=1), fflib.ReLU(), fflib.MaxPool2d(2),
                      fflib.BatchNorm2d(None), fflib.Conv2d(10, 20, 3), fflib.ReLU()], (2, 6, 6)),
    "linear_only": lambda: ([fflib.Linear(5)], 6),
}


@settings(PROFILE, max_examples=250)
@given(which=st.sampled_from(sorted(LAYER_SETS)),
       shape=mostly(st.none(), st.one_of(st.integers(-2, 40), st.tuples(st.integers(-1, 8), st.integers(-1, 8),
                                                                        st.integers(-1, 8)),
                                         st.sampled_from([(2 ** 30 + 5, 2, 2), (3, 2 ** 16, 2 ** 16), "12", 12.0,
                                                          (12,), [2, 6, 6]])), 3),
       K=mostly(st.sampled_from([2, 4, 5, 10]), st.one_of(st.integers(-1, 12), junk)),
       loss=mostly(st.sampled_from(["ff", "symba", "cwc", "pvn", "df-cwc", "xent"]), junk),
       goodness=mostly(st.sampled_from(["sum", "mean", "neg-sum", "neg-mean"]), junk),
       encoding=mostly(st.sampled_from(["onehot", "fourier", "embedding", "none"]), junk),
       threshold=mostly(st.floats(-3, 3), reals), alpha=mostly(st.floats(0.1, 8), reals),
       norm_eps=mostly(st.floats(0, 1e-2), reals), pvn_weight=mostly(small, reals),
       blocks=mostly(st.none(), st.one_of(st.lists(st.integers(-1, 8), max_size=4), junk)),
       head=mostly(st.sampled_from(["auto", None]), st.one_of(st.lists(st.integers(-3, 4), max_size=3), junk)),
       seed=mostly(st.integers(0, 2 ** 64 - 1), st.one_of(st.integers(-3, 2 ** 64 + 3), junk)),
       block_thresholds=mostly(st.none(), st.one_of(st.lists(mostly(st.floats(-3, 3), reals), max_size=4), junk)))
def test_fuzz_model_construction(which, shape, K, loss, goodness, encoding, threshold, alpha, norm_eps,
                                 pvn_weight, blocks, head, seed, block_thresholds):
    layers, natural = LAYER_SETS[which]()
    shape = natural if shape is None else shape
    kw = dict(loss=loss, goodness=goodness, label_encoding=encoding, threshold=threshold, alpha=alpha,
              norm_eps=norm_eps, pvn_weight=pvn_weight, blocks=blocks, head_blocks=head, seed=seed,
              block_thresholds=block_thresholds)
    names = ["input_shape", "num_classes", "loss", "goodness", "label_encoding", "threshold", "block_thresholds", "alpha",
             "norm_eps", "pvn_weight", "blocks", "block", "head_blocks", "seed", "layers", "in_features",
             "channels", "kernel", "label", "input", "features", "shape", "size"]
    # the FF loss on minus the goodness (<= 0) needs negative thresholds
    bt_ok = isinstance(block_thresholds, list) and block_thresholds and all(good_real(t) for t in block_thresholds)
    neg_ff_bad = (loss == "ff" and isinstance(goodness, str) and goodness.startswith("neg-")
                  and (not np.float32(threshold) < 0 if block_thresholds is None and good_real(threshold) else
                       bt_ok and not all(np.float32(t) < 0 for t in block_thresholds)))
    invalid = (neg_ff_bad or not good_real(threshold) or not good_real(alpha, 0, lo_open=True) or not good_real(norm_eps, 0, lo_open=True)
               or not good_real(pvn_weight, 0, 1)
               or isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64
               or isinstance(K, bool) or not isinstance(K, int) or K < 2
               or loss not in ("ff", "symba", "cwc", "pvn", "df-cwc", "xent")
               or goodness not in ("sum", "mean", "neg-sum", "neg-mean")
               or encoding not in ("onehot", "fourier", "embedding", "none")
               or (block_thresholds is not None and (not isinstance(block_thresholds, list) or not block_thresholds
                                                     or not all(good_real(t) for t in block_thresholds))))

    def check(m):
        rng = np.random.default_rng(0)
        x = rng.random((3, int(np.prod(m.input_shape))), dtype=np.float32)
        y = rng.integers(0, m.num_classes, 3)
        if m.config["loss"] in ("ff", "symba") and m.label_encoding == "none":
            # trains on explicit negatives only; scoring labels is refused with a reason
            with pytest.raises(ValueError, match="label_encoding is none"):
                m.goodness(x)
            losses = m.train_step(x, None, x_neg=x[::-1].copy())
            return None if finite(losses) else "train_step with x_neg gave non-finite losses"
        g = m.goodness(x)
        if g.shape != (3, m.num_classes, m.num_blocks) or not finite(g):
            return f"goodness {g.shape} finite={finite(g)}"
        if m.config["loss"] in ("cwc", "pvn", "df-cwc", "xent") and not np.any(g):
            return "label-free loss gives all-zero class scores"
        losses = m.train_step(x, y)
        if not finite(losses) or not all(finite(p) for p in m.parameters()):
            return "train_step gave non-finite losses or weights"
        return None

    outcome("FFModel(...)", lambda: fflib.FFModel(layers, shape, K, **kw), names,
            valid=False if invalid else None, check=check)


def test_fuzz_model_construction_report():
    report("FFModel(...)")


# ----------------------------------------------------------------------------- train_step / predict
MODEL = {}


def model():
    if "m" not in MODEL:
        MODEL["m"] = fflib.FFModel(fflib.mlp([12, 8, 8]), 12, 4, seed=1)
        fflib.Adam(MODEL["m"], lr=1e-3)
    return MODEL["m"]


DTYPES = [">f4", "<f8", ">f8", "<f2", ">i8", "<i4", "u1", "?", "<c8", "O", "<U3"]


def chance(p):
    """True with probability about ``p`` (hypothesis favours small integers: scatter them)."""
    return st.integers(0, 2 ** 32).map(lambda k: ((k + 1) * 2654435761 % 2 ** 32) / 2 ** 32 < p)


@st.composite
def arrays(draw, n_default=5, width=12, int_range=None, common="<f4"):
    """Mostly a valid batch; now and then another dtype or byte order, shape, size, a
    non-finite or huge value, a Fortran or reversed layout."""
    dtype = draw(st.sampled_from(DTYPES)) if draw(chance(0.15)) else common
    n = draw(st.sampled_from([0, 1, 3])) if draw(chance(0.05)) else n_default
    shape = draw(st.sampled_from([(n, 3, 4), (n, width + 1), (n,), (n, 2, 2, 3), ()])) if draw(chance(0.1)) \
        else (n, width)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    if int_range is not None:
        base = np.asarray(rng.integers(int_range[0], int_range[1], size=shape))
    else:
        base = np.asarray(rng.random(shape) * 2)
    special = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e39, -1e30, 3e38])) if draw(chance(0.05)) else None
    if special is not None and base.size:
        base = base.astype(np.float64)
        base.flat[draw(st.integers(0, base.size - 1))] = special
    with np.errstate(all="ignore"):
        try:
            a = base.astype(np.dtype(dtype))
        except (ValueError, OverflowError, TypeError):
            a = base
    if draw(chance(0.05)) and a.ndim == 2 and a.shape[0] > 1:
        a = np.asfortranarray(a)                      # not C-contiguous
    if draw(chance(0.05)) and a.ndim >= 1 and a.shape[0] > 1:
        a = a[::-1]                                   # negative strides
    return a


def x_valid_for_inference(x, D=12):
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "fiub" or x.ndim < 2 or x.shape[0] == 0:
        return False
    if int(np.prod(x.shape[1:])) != D:
        return False
    with np.errstate(all="ignore"):
        return bool(np.all(np.isfinite(x.astype(np.float32))))


def x_valid_for_training(x, D=12):
    return (isinstance(x, np.ndarray) and x.dtype == np.dtype("<f4") and x.flags.c_contiguous
            and x_valid_for_inference(x, D))


def labels_valid(y, n, K=4):
    return (isinstance(y, np.ndarray) and y.dtype == np.dtype("<i8") and y.flags.c_contiguous
            and y.shape == (n,) and y.size > 0 and int(y.min()) >= 0 and int(y.max()) < K)


@settings(PROFILE, max_examples=300)
@given(x=arrays(), y=arrays(width=1, int_range=(0, 4), common="<i8"),
       neg=mostly(st.none(), arrays(width=1, int_range=(-1, 5), common="<i8"), 3),
       active=mostly(st.none(), st.sampled_from([[1, 1], [0, 1], [0.5, 1], [2, 0], [1], [True, False], "ab",
                                                 [1.0, 0.0], [np.nan, 1]]), 3),
       head=mostly(st.sampled_from([None, True, False]), st.sampled_from(["no", 1])),
       which=st.sampled_from(["train_step", "compute_grads"]))
def test_fuzz_training_inputs(x, y, neg, active, head, which):
    m = model()
    if y.ndim == 2:
        y = np.ascontiguousarray(y[:, 0]) if y.shape[1] else y
    if neg is not None and neg.ndim == 2:
        neg = np.ascontiguousarray(neg[:, 0]) if neg.shape[1] else neg
    n = x.shape[0] if isinstance(x, np.ndarray) and x.ndim else -1
    ok_active = active is None or (isinstance(active, list) and len(active) == 2
                                   and all(isinstance(a, (bool, int, float)) and a in (0, 1) for a in active))
    valid = (x_valid_for_training(x) and labels_valid(y, n) and ok_active and (head is None or isinstance(head, bool))
             and (neg is None or (labels_valid(neg, n) and not np.any(neg == y))))
    before = [p.copy() for p in m.parameters()]

    def check(losses):
        if not finite(losses) or losses.shape != (m.num_blocks + 1,):
            return f"losses {losses!r}"
        if not all(finite(p) for p in m.parameters()):
            return "non-finite weights after the step"
        return None

    outcome(which, lambda: getattr(m, which)(x, y, neg_labels=neg, active=active, train_head=head),
            ["x", "y", "labels", "neg_labels", "active", "train_head"], valid=valid, check=check)
    if not valid:      # a rejected call leaves the weights alone
        assert all(np.array_equal(a, b) for a, b in zip(before, m.parameters()))


@settings(PROFILE, max_examples=250)
@given(x=arrays(), fn=st.sampled_from(["goodness", "predict_multipass", "predict_proba", "predict_onepass",
                                       "features", "block_accuracy"]))
def test_fuzz_inference_inputs(x, fn):
    m = model()
    valid = x_valid_for_inference(x)
    n = x.shape[0] if isinstance(x, np.ndarray) and x.ndim else 0

    def call():
        if fn == "block_accuracy":
            return getattr(m, fn)(x, np.zeros(n, dtype=np.int64))
        return getattr(m, fn)(x)

    def check(r):
        if fn in ("predict_multipass", "predict_onepass"):
            return None if r.shape == (n,) and r.min() >= 0 and r.max() < 4 else f"predictions {r!r}"
        if fn == "block_accuracy":
            return None if len(r) == m.num_blocks and all(0 <= v <= 1 for v in r) else f"accuracy {r!r}"
        if not finite(r):
            return f"{fn} not finite"
        if fn == "predict_proba" and not np.allclose(r.sum(axis=1), 1, atol=1e-4):
            return "probabilities do not sum to 1"
        if valid:      # foreign byte order, other dtypes and strides give the float32 answer
            ref = getattr(m, fn)(np.ascontiguousarray(x, dtype=np.float32))
            if not np.array_equal(r, ref):
                return "differs from the float32 C-contiguous answer"
        return None

    outcome(fn, call, ["x"], valid=valid, check=check)


def test_fuzz_training_and_inference_report():
    for suite in ("train_step", "compute_grads", "goodness", "predict_multipass", "predict_proba",
                  "predict_onepass", "features", "block_accuracy"):
        report(suite)


# ----------------------------------------------------------------------------- optimisers, schedules
@settings(PROFILE, max_examples=250)
@given(kind=st.sampled_from(["Adam", "AdamW", "SGD"]), lr=mostly(st.floats(0, 1), reals), a=mostly(small, reals),
       b=mostly(small, reals), wd=mostly(st.floats(0, 1e-2), reals),
       betas=mostly(st.tuples(small, small), st.one_of(st.tuples(reals, reals),
                                                       st.sampled_from([(0.9,), "ab", None, (0.9, 0.99, 0.1)]))),
       nesterov=mostly(st.sampled_from([False, True]), st.sampled_from(["yes", 0])),
       layers=mostly(st.none(), st.one_of(st.lists(st.integers(-3, 8), max_size=3), junk)),
       sched=st.sampled_from([None, "step", "multistep", "cosine", "cooldown"]),
       s1=mostly(st.integers(1, 12), st.one_of(st.integers(-2, 12), junk)),
       s2=st.one_of(st.lists(st.integers(-2, 12), max_size=3), reals))
def test_fuzz_optimisers_and_schedules(kind, lr, a, b, wd, betas, nesterov, layers, sched, s1, s2):
    m = fflib.FFModel(fflib.mlp([12, 8, 8]), 12, 4, seed=1)
    if kind in ("Adam", "AdamW"):
        make = lambda: getattr(fflib, kind)(m, lr=lr, betas=betas, eps=a, weight_decay=wd, layers=layers)  # noqa: E731
        invalid = (not isinstance(betas, tuple) or len(betas) != 2
                   or not all(good_real(v, 0, 1) and float(v) < 1 for v in betas) or not good_real(a, 0))
    else:
        make = lambda: fflib.SGD(m, lr=lr, momentum=a, dampening=b, weight_decay=wd, nesterov=nesterov,  # noqa: E731
                                 layers=layers)
        invalid = (not good_real(a, 0) or not good_real(b, 0, 1) or nesterov not in (True, False)
                   or (nesterov is True and (not good_real(a, 0, lo_open=True) or b != 0)))
    invalid = invalid or not good_real(lr, 0) or not good_real(wd, 0)

    def check(opt):
        for i in m.trainable_layers():
            cfg = m._net.get_opt(i)
            if not all(np.isfinite(v) for k, v in cfg.items() if k not in ("kind", "nesterov")):
                return f"non-finite setting in C: {cfg}"
        return None

    opt = outcome("optimisers", make, ["lr", "betas", "eps", "weight_decay", "momentum", "dampening",
                                        "nesterov", "layers"], valid=False if invalid else None, check=check)
    if opt is None or sched is None:
        return
    makers = {"step": lambda: StepLR(opt, s1, gamma=s2), "multistep": lambda: MultiStepLR(opt, s2, gamma=0.5),
              "cosine": lambda: CosineAnnealingLR(opt, s1, eta_min=s2),
              "cooldown": lambda: LinearCooldown(opt, s1, start=None)}

    def check_sched(s):
        for _ in range(15):
            try:
                s.step()
            except ValueError as e:   # a growing rate left float32's range: said clearly, nothing set
                return None if str(e).startswith("lr must be finite") and good_real(opt.lr, 0) else repr(e)
            if not good_real(opt.lr, 0):
                return f"lr {opt.lr!r}"
        return None

    outcome("schedules", makers[sched], ["step_size", "gamma", "milestones", "T_max", "eta_min", "total",
                                         "start"], valid=None, check=check_sched)


def test_fuzz_optimisers_report():
    report("optimisers")
    report("schedules")


# ----------------------------------------------------------------------------- model files
def saved_model(tmp_dir):
    m = fflib.FFModel(fflib.mlp([12, 8, 8]), 12, 4, seed=1)
    opt = fflib.SGD(m, lr=0.1, momentum=0.9)
    StepLR(opt, 2)
    x = np.random.default_rng(0).random((8, 12), dtype=np.float32)
    fflib.fit(m, x, np.arange(8) % 4, epochs=1, batch_size=4, progress=False)
    return m, m.save(os.path.join(tmp_dir, "good.npz"))


JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 2 ** 65), st.floats(width=64),
                                     st.text(max_size=4)),
                           lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=3), c,
                                                                                         max_size=3)),
                           max_leaves=5)


def paths(obj, prefix=()):
    """Every (path, value) inside a JSON object."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, prefix + (i,))


@settings(PROFILE, max_examples=200)
@given(mode=st.sampled_from(["truncate", "flip", "meta", "meta", "array"]), where=st.integers(0, 2 ** 31),
       value=JSON_VALUES, flips=st.integers(1, 8))
def test_fuzz_model_files(tmp_path_factory, mode, where, value, flips):
    tmp = str(tmp_path_factory.mktemp("files", numbered=True))
    m, good = saved_model(tmp)
    raw = open(good, "rb").read()
    path = os.path.join(tmp, "bad.npz")
    if mode == "truncate":
        open(path, "wb").write(raw[:where % len(raw)])
    elif mode == "flip":
        b = bytearray(raw)
        rng = np.random.default_rng(where)
        for pos in rng.integers(0, len(b), flips):
            b[pos] ^= int(rng.integers(1, 256))
        open(path, "wb").write(bytes(b))
    else:
        with np.load(good) as f:
            data = {k: f[k] for k in f.files}
        if mode == "meta":
            meta = json.loads(str(data["__meta__"]))
            all_paths = [p for p, _ in paths(meta) if p]
            target = all_paths[where % len(all_paths)]
            node = meta
            for k in target[:-1]:
                node = node[k]
            node[target[-1]] = value
            try:
                data["__meta__"] = np.array(json.dumps(meta))
            except ValueError:
                data["__meta__"] = np.array("{")
        else:
            keys = sorted(k for k in data if k != "__meta__")
            k = keys[where % len(keys)]
            rng = np.random.default_rng(where)
            a = data[k]
            choice = where % 6
            if choice == 0 and a.size and a.dtype.kind in "fiu":
                a = a.astype(np.float64)
                a.flat[0] = [np.nan, np.inf, -1.0, 1e39][where % 4]
            elif choice == 1:
                a = a.astype(a.dtype.newbyteorder(">")) if a.dtype.kind in "fiu" else a
            elif choice == 2:
                a = a.reshape(-1)[: max(0, a.size - 1)]
            elif choice == 3:
                a = rng.random(3)
            elif choice == 4:
                a = np.array("text")
            else:
                a = a.astype(np.float16) if a.dtype.kind == "f" else a
            data[k] = a
        np.savez(path, **data)

    def check(m2):
        x = np.random.default_rng(1).random((4, int(np.prod(m2.input_shape))), dtype=np.float32)
        g = m2.goodness(x)
        if not finite(g):
            return "a loaded model gives non-finite goodness"
        if m2.optimizer is not None:
            for i in m2.trainable_layers():
                if any(not np.all(np.isfinite(v)) for k, v in m2.optimizer_state().items() if k != "rng"):
                    return "non-finite optimiser state loaded"
        return None

    outcome("model files", lambda: fflib.FFModel.load(path), [path], valid=None, check=check)


def test_fuzz_model_files_report():
    report("model files")


# ----------------------------------------------------------------------------- fit(...)
@settings(PROFILE, max_examples=120)
@given(epochs=mostly(st.integers(0, 2), st.one_of(st.integers(-2, 2), junk)),
       batch_size=mostly(st.integers(1, 9), st.one_of(st.integers(-2, 3), junk)),
       negatives=mostly(st.sampled_from(["uniform", "hard"]), junk),
       order=mostly(st.sampled_from(["simultaneous", "layerwise"]), junk),
       routine=mostly(st.sampled_from([None, "greedy", "chunked", "overlapping", "backprop"]), junk),
       chunk_size=mostly(st.integers(1, 3), st.one_of(st.integers(-1, 3), junk)),
       head_epochs=mostly(st.integers(0, 1), st.one_of(st.integers(-2, 2), junk)),
       random_state=mostly(st.integers(0, 2 ** 32), st.one_of(st.integers(-3, 3), junk)),
       augment=mostly(st.none(), st.sampled_from(["flip", "crop2", "rotate", 3])),
       checkpoint_every=mostly(st.integers(1, 3), st.one_of(st.integers(-1, 1), junk)))
def test_fuzz_fit_arguments(tmp_path_factory, epochs, batch_size, negatives, order, routine, chunk_size,
                            head_epochs, random_state, augment, checkpoint_every):
    m = fflib.FFModel(fflib.mlp([12, 8, 8]), 12, 4, seed=1)
    x = np.random.default_rng(0).random((10, 12), dtype=np.float32)
    y = np.arange(10) % 4
    ck = str(tmp_path_factory.mktemp("fit", numbered=True))

    def check(hist):
        if hist["interrupted"] or not all(finite(p) for p in m.parameters()):
            return "interrupted or non-finite weights"
        return None

    outcome("fit(...)", lambda: fflib.fit(m, x, y, epochs=epochs, batch_size=batch_size, negatives=negatives,
                                          order=order, routine=routine, chunk_size=chunk_size,
                                          head_epochs=head_epochs, random_state=random_state, augment=augment,
                                          progress=False, checkpoint=ck, checkpoint_every=checkpoint_every),
            ["epochs", "batch_size", "negatives", "order", "routine", "chunk", "head_epochs", "random_state",
             "augment", "checkpoint_every", "alternate"], valid=None, check=check)


def test_fuzz_fit_report():
    report("fit(...)")


# ----------------------------------------------------------------------------- data files
def idx_bytes(dims):
    rng = np.random.default_rng(0)
    head = bytes([0, 0, 8, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    return head + rng.integers(0, 256, int(np.prod(dims)), dtype=np.uint8).tobytes()


@settings(PROFILE, max_examples=150)
@given(kind=st.sampled_from(["images", "labels", "cifar"]), gz=st.booleans(),
       mode=st.sampled_from(["truncate", "flip", "append", "header"]), where=st.integers(0, 2 ** 31),
       flips=st.integers(1, 6))
def test_fuzz_data_files(tmp_path_factory, kind, gz, mode, where, flips):
    import gzip
    from fflib import datasets
    raw = {"images": idx_bytes((3, 4, 5)), "labels": idx_bytes((7,)),
           "cifar": b"".join(bytes([k]) + bytes(3072) for k in (1, 2))}[kind]
    b = bytearray(raw)
    rng = np.random.default_rng(where)
    if mode == "truncate":
        b = b[: where % len(b)]
    elif mode == "flip":
        for pos in rng.integers(0, len(b), flips):
            b[pos] ^= int(rng.integers(1, 256))
    elif mode == "append":
        b += bytes(rng.integers(0, 256, 1 + where % 5000, dtype=np.uint8))
    else:
        b[:8] = bytes(rng.integers(0, 256, 8, dtype=np.uint8))
    data = gzip.compress(bytes(b)) if gz else bytes(b)
    if gz and mode == "flip":                   # damage the compressed stream too
        data = bytearray(data)
        data[len(data) // 2] ^= 0x5A
        data = bytes(data)
    path = os.path.join(str(tmp_path_factory.mktemp("data", numbered=True)), "f.bin" + (".gz" if gz else ""))
    open(path, "wb").write(data)

    def read():
        if kind == "cifar":
            return datasets.read_cifar_bin(path)
        return datasets.read_idx(path, ndim=3 if kind == "images" else 1)

    def check(r):
        images, labels = r if kind == "cifar" else (r, None)
        if images.dtype != np.uint8 or (labels is not None and (labels.max() > 9 or len(labels) != len(images))):
            return "bad arrays"
        return None

    outcome("data files", read, [path], valid=None, check=check)


def test_fuzz_data_files_report():
    report("data files")
