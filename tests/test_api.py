"""The Python API over the C core: zero-copy parameters, input checking, determinism,
state save/load, schedules, and no memory growth."""
import resource

import numpy as np
import pytest

import fflib
from fflib import _core


def small_model(seed=0, **kw):
    return fflib.FFModel(fflib.mlp([20, 13, 7]), 20, 4, seed=seed, **kw)


def layer(m, i):
    """The i-th Linear layer of a model."""
    return [l for l in m.layers if l.kind == "linear"][i]


def batch(rng, n=9, d=20, k=4):
    return rng.random((n, d), dtype=np.float32), rng.integers(0, k, n)


# ---------------------------------------------------------------- zero copy
def test_parameters_share_memory_with_the_core(rng):
    m = small_model()
    w1, w2 = layer(m, 0).weight, layer(m, 0).weight
    assert np.shares_memory(w1, w2)          # both are views of the same C arena
    assert w1.dtype == np.float32 and w1.shape == (13, 20)
    x, y = batch(rng)
    before = m.goodness(x)
    w1[...] = 0.0                             # an in-place change from Python ...
    layer(m, 0).bias[...] = 0.0
    g = m.goodness(x)                         # ... is seen by the C kernels,
    assert np.all(g[:, :, 0] == 0) and not np.all(before[:, :, 0] == 0)
    w1[...] = 0.25
    m.train_step(x, y)                        # and an update made in C is seen from Python
    assert np.any(w2 != 0.25)
    assert np.shares_memory(m.parameters()[0], w1)


def test_views_keep_the_net_alive(rng):
    w = layer(small_model(), 0).weight       # the model itself is dropped here
    w += 1.0                                  # still valid memory: the array holds the net
    assert np.isfinite(w).all()


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("x, err, msg", [
    (np.zeros((4, 20), np.float64), TypeError, "x must have dtype float32"),
    ([[0.0] * 20] * 4, TypeError, "x must be a numpy.ndarray"),
    (np.zeros((4, 21), np.float32), ValueError, "x must have 20 values per sample"),
    (np.zeros((4, 40), np.float32)[:, ::2], ValueError, "x must be C-contiguous"),
    (np.zeros((0, 20), np.float32), ValueError, "empty batch"),
    (np.zeros(20, np.float32), ValueError, "x must have shape"),
])
def test_bad_x_raises(x, err, msg):
    m = small_model()
    with pytest.raises(err, match=msg):
        m.train_step(x, np.zeros(len(x) if hasattr(x, "__len__") else 1, np.int64))


def test_nan_and_inf_rejected(rng):
    m = small_model()
    x, y = batch(rng)
    for bad in (np.nan, np.inf, -np.inf):
        xb = x.copy()
        xb[3, 5] = bad
        with pytest.raises(ValueError, match="x contains NaN or infinity"):
            m.train_step(xb, y)
        with pytest.raises(ValueError, match="NaN or infinity"):
            m.goodness(xb)


def test_bad_labels_raise(rng):
    m = small_model()
    x, y = batch(rng)
    with pytest.raises(ValueError, match=r"labels\[2\] = 4 is out of range"):
        m._net.train_step(x, np.array([0, 1, 4, 0, 0, 0, 0, 0, 0], np.int64))
    with pytest.raises(ValueError, match="out of range"):
        m._net.train_step(x, -np.ones(9, np.int64))
    with pytest.raises(TypeError, match="labels must have dtype int64"):
        m._net.train_step(x, y.astype(np.int32))
    with pytest.raises(ValueError, match="labels must have shape"):
        m._net.train_step(x, y[:5])
    with pytest.raises(ValueError, match="must differ from the true one"):
        m.train_step(x, y, neg_labels=y.copy())
    with pytest.raises(ValueError, match="neg_labels"):
        m.train_step(x, y, neg_labels=np.full(9, 7, np.int64))


def test_inputs_are_not_modified(rng):
    m = small_model()
    x, y = batch(rng)
    x0, y0 = x.copy(), y.copy()
    m.train_step(x, y)
    m.goodness(x)
    m.predict_proba(x)
    assert np.array_equal(x, x0) and np.array_equal(y, y0)


def test_read_only_and_wrong_outputs_in_kernels(rng):
    inp = rng.random((3, 5), dtype=np.float32)
    w = rng.random((4, 5), dtype=np.float32)
    out = np.zeros((3, 4), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        _core.linear_forward(out, inp, w, None)
    with pytest.raises(ValueError, match=r"out must have shape \(3, 4\)"):
        _core.linear_forward(np.zeros((3, 3), np.float32), inp, w, None)
    with pytest.raises(ValueError, match=r"weight must have shape"):
        _core.linear_forward(np.zeros((3, 4), np.float32), inp, w[:, :4].copy(), None)
    with pytest.raises(TypeError, match="bias must have dtype float32"):
        _core.linear_forward(np.zeros((3, 4), np.float32), inp, w, np.zeros(4))


@pytest.mark.parametrize("kwargs, msg", [
    (dict(threshold=float("nan")), "threshold must be finite"),
    (dict(alpha=0.0), "alpha must be > 0"),
    (dict(goodness="max"), "goodness must be one of"),
    (dict(norm="batch"), "norm must be one of"),
    (dict(loss="hinge"), "loss must be one of"),
    (dict(norm_eps=-1.0), "norm_eps must be > 0"),
])
def test_bad_model_config(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        small_model(**kwargs)


def test_bad_structure():
    with pytest.raises(ValueError, match="non-empty list"):
        fflib.FFModel([], 20, 4)
    with pytest.raises(ValueError, match="out_features must be a positive int"):
        fflib.Linear(20, 0)
    with pytest.raises(ValueError, match="receives 20 features"):
        fflib.FFModel([fflib.Linear(30, 5), fflib.ReLU()], 20, 4)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        fflib.FFModel(fflib.mlp([20, 5]), 20, 1)
    with pytest.raises(ValueError, match="does not fit"):
        fflib.FFModel(fflib.mlp([3, 5]), 3, 4)
    with pytest.raises(ValueError, match="at least one layer with parameters"):
        fflib.FFModel([fflib.ReLU()], 20, 4, head_blocks=None)
    with pytest.raises(TypeError, match="must be an fflib Layer"):
        fflib.FFModel(["linear"], 20, 4)
    m = small_model()
    with pytest.raises(ValueError, match="end at the number of layers"):
        m.set_blocks([2, 1])
    with pytest.raises(ValueError, match=r"block 1 = \[3, 2\) is empty"):
        m.set_blocks([3, 2, 6])
    with pytest.raises(ValueError, match=r"block 1 = \[2, 3\) holds no layer with parameters"):
        m.set_blocks([2, 3, 6])   # block [2, 3) is a ReLU alone: nothing to train


@pytest.mark.parametrize("make, msg", [
    (lambda m: fflib.Adam(m, lr=-1.0), "lr must be"),
    (lambda m: fflib.Adam(m, lr=float("nan")), "lr must be"),
    (lambda m: fflib.Adam(m, betas=(1.0, 0.9)), "betas"),
    (lambda m: fflib.SGD(m, momentum=-0.1), "momentum"),
    (lambda m: fflib.SGD(m, nesterov=True), "nesterov"),
    (lambda m: fflib.MultiStepLR(fflib.Adam(m), [5, 3]), "milestones"),
    (lambda m: fflib.LinearCooldown(fflib.Adam(m), 0), "start < total"),
    (lambda m: fflib.LinearCooldown(fflib.Adam(m), 4, decay=0.0), "decay must be > 0"),
    (lambda m: fflib.LinearCooldown(fflib.Adam(m), 4, decay=1.5), "decay must be <= 1"),
    (lambda m: fflib.LinearCooldown(fflib.Adam(m), 4, decay=float("nan")), "decay must be finite"),
    (lambda m: fflib.Adam(m, head_lr=-0.1), "head_lr must be"),
    (lambda m: fflib.SGD(m, head_lr=float("inf")), "head_lr must be"),
])
def test_bad_optimiser_settings(make, msg):
    with pytest.raises(ValueError, match=msg):
        make(small_model())


@pytest.mark.parametrize("kwargs, msg", [
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(batch_size=-5), "batch_size must be a positive int"),
    (dict(epochs=-1), "epochs must be an int >= 0"),
    (dict(negatives="random"), "negatives must be"),
    (dict(order="random"), "order must be"),
])
def test_bad_fit_arguments(rng, kwargs, msg):
    x, y = batch(rng)
    with pytest.raises(ValueError, match=msg):
        fflib.fit(small_model(), x, y, progress=False, **kwargs)


def test_fit_rejects_label_out_of_range(rng):
    x, _ = batch(rng)
    with pytest.raises(ValueError, match=r"y must be in \[0, 4\)"):
        fflib.fit(small_model(), x, np.arange(9), progress=False)


def test_divergence_is_reported_not_silent(rng):
    m = small_model(goodness="sum", threshold=1e30)
    fflib.SGD(m, lr=1e30)
    x, y = batch(rng)
    with pytest.raises(FloatingPointError, match="loss is not finite"):
        for _ in range(20):
            m.train_step(x * 1e18, y)


# ---------------------------------------------------------------- behaviour
def test_same_seed_same_weights_bit_identical(rng):
    x, y = batch(rng, n=64)
    fflib.set_num_threads(1)
    try:
        ws = []
        for _ in range(2):
            m = small_model(seed=5)
            fflib.fit(m, x, y, epochs=3, batch_size=16, random_state=3, progress=False)
            ws.append([p.copy() for p in m.parameters()])
        for a, b in zip(*ws):
            assert np.array_equal(a, b)
        m = small_model(seed=6)
        assert not np.array_equal(m.parameters()[0], ws[0][0])
    finally:
        fflib.set_num_threads(2)


def test_set_num_threads():
    fflib.set_num_threads(1)
    assert fflib.get_num_threads() == 1
    fflib.set_num_threads(2)
    assert fflib.get_num_threads() == 2
    with pytest.raises(ValueError):
        fflib.set_num_threads(0)


def test_save_load_predicts_identically(tmp_path, rng):
    x, y = batch(rng, n=50)
    m = small_model(seed=2, goodness="mean", threshold=1.0, norm="rms")
    fflib.fit(m, x, y, epochs=2, batch_size=10, progress=False)
    path = tmp_path / "model.npz"
    m.save(path)
    m2 = fflib.FFModel.load(path)
    assert np.array_equal(m.goodness(x), m2.goodness(x))
    assert np.array_equal(m.predict_proba(x), m2.predict_proba(x))
    assert m2.config == m.config and m2.blocks == m.blocks
    # optimiser state restored too: one more identical step on both
    m.train(); m2.train()
    neg = (y + 1) % 4
    m.train_step(x, y, neg_labels=neg)
    m2.train_step(x, y, neg_labels=neg)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert np.array_equal(a, b)


def test_load_rejects_corrupt_and_future_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable fflib model"):
        fflib.FFModel.load(bad)
    import json
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match="no __meta__"):
        fflib.FFModel.load(other)
    m = small_model()
    m.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as f:
        data = {k: f[k] for k in f.files}
    meta = json.loads(str(data["__meta__"]))
    meta["version"] = 999
    data["__meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "future.npz", **data)
    with pytest.raises(ValueError, match="newer than this fflib"):
        fflib.FFModel.load(tmp_path / "future.npz")


def test_state_dict_round_trip_and_checks(rng):
    m, m2 = small_model(seed=1), small_model(seed=2)
    m2.load_state_dict(m.state_dict())
    x, _ = batch(rng)
    assert np.array_equal(m.goodness(x), m2.goodness(x))
    sd = m.state_dict()
    sd["layers.1.weight"] = sd["layers.1.weight"][:, :3]
    with pytest.raises(ValueError, match="layers.1.weight: shape"):
        m2.load_state_dict(sd)
    with pytest.raises(KeyError, match="missing"):
        m2.load_state_dict({})


def test_active_mask_leaves_inactive_blocks_untouched(rng):
    m = small_model()
    x, y = batch(rng)
    w0, w1 = layer(m, 0).weight.copy(), layer(m, 1).weight.copy()
    losses = m.train_step(x, y, active=[0, 1], train_head=False)
    assert np.array_equal(layer(m, 0).weight, w0)      # block 0 frozen
    assert not np.array_equal(layer(m, 1).weight, w1)  # block 1 trained on block 0's output
    assert losses[0] == 0 and losses[1] > 0


def test_compute_grads_then_step_equals_fused_step(rng):
    x, y = batch(rng)
    neg = (y + 1) % 4
    a, b = small_model(seed=3), small_model(seed=3)
    opt_a, opt_b = fflib.Adam(a, lr=0.01), fflib.Adam(b, lr=0.01)
    for _ in range(3):
        la = a.train_step(x, y, neg_labels=neg)
        lb = b.compute_grads(x, y, neg_labels=neg)
        opt_b.step()
        np.testing.assert_array_equal(la, lb)
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa, pb)
    del opt_a


def test_schedules():
    m = small_model()
    opt = fflib.Adam(m, lr=1.0)
    s = fflib.MultiStepLR(opt, [2, 4], gamma=0.1)
    lrs = []
    for _ in range(5):
        s.step()
        lrs.append(opt.lr)
    np.testing.assert_allclose(lrs, [1.0, 0.1, 0.1, 0.01, 0.01])
    assert m._net.get_opt(1)["lr"] == pytest.approx(0.01)   # pushed into the C core (layer 1: Linear)
    opt2 = fflib.SGD(small_model(), lr=1.0, momentum=0.9)
    c = fflib.LinearCooldown(opt2, total=10, start=5)
    vals = []
    for _ in range(10):
        c.step()
        vals.append(opt2.lr)
    np.testing.assert_allclose(vals, [1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2, 0.0], atol=1e-12)
    assert c.config() == {"total": 10, "start": 5}    # decay 1 is not named (schedules saved before it)


def test_linear_cooldown_decay_anneals_then_restarts_the_cooldown():
    """decay: the rate times decay**e in the first ``start`` epochs (a label-free run's blocks),
    then the full rate again at ``start``, cooled linearly to 0 at ``total`` (the probe)."""
    opt = fflib.Adam(small_model(), lr=1.0, head_lr=0.5)
    c = fflib.LinearCooldown(opt, total=7, start=3, decay=0.5)
    vals = [opt.lr]
    for _ in range(7):
        c.step()
        vals.append(opt.lr)
    np.testing.assert_allclose(vals, [1, 0.5, 0.25, 1, 0.75, 0.5, 0.25, 0.0], atol=1e-12)
    assert c.config() == {"total": 7, "start": 3, "decay": 0.5}
    # a checkpoint's state restores only into the same schedule
    state = c.state_dict()
    c2 = fflib.LinearCooldown(fflib.Adam(small_model(), lr=1.0), total=7, start=3, decay=0.5)
    c2.load_state_dict(state)
    assert c2.last_epoch == 7 and c2.lr_at(2) == 0.25
    with pytest.raises(ValueError, match="differ from this schedule"):
        fflib.LinearCooldown(fflib.Adam(small_model(), lr=1.0), total=7, start=3).load_state_dict(state)


def test_head_lr_follows_the_schedule_and_can_freeze_the_head(rng):
    m = small_model()
    opt = fflib.Adam(m, lr=1.0, head_lr=0.05)
    s = fflib.MultiStepLR(opt, [1], gamma=0.1)
    assert m._net.get_opt(-1)["lr"] == pytest.approx(0.05) and m._net.get_opt(1)["lr"] == pytest.approx(1.0)
    s.step()
    assert m._net.get_opt(-1)["lr"] == pytest.approx(0.005) and m._net.get_opt(1)["lr"] == pytest.approx(0.1)
    assert opt.state_dict()["head_lr"] == 0.05
    x, y = batch(rng, n=20)
    m2 = small_model()
    fflib.Adam(m2, lr=0.01, head_lr=0.0)
    head, first = m2.head_weight.copy(), m2.state_dict()
    m2.train_step(x, y)
    assert np.array_equal(m2.head_weight, head)                     # frozen head
    assert any(not np.array_equal(v, first[k]) for k, v in m2.state_dict().items())


def test_layerwise_order_trains_blocks_one_after_another(rng):
    x, y = batch(rng, n=40)
    m = small_model()
    hist = fflib.fit(m, x, y, epochs=2, batch_size=10, order="layerwise", head_epochs=1, progress=False)
    assert [e["active"] for e in hist["epochs"]] == [[1, 0], [1, 0], [0, 1], [0, 1], [0, 0]]
    assert hist["epochs"][0]["block_loss"][1] == 0 and hist["epochs"][2]["block_loss"][0] == 0
    assert hist["epochs"][-1]["head_loss"] > 0


def test_hard_negatives_never_the_true_label(rng):
    x, y = batch(rng, n=300)
    m = small_model()
    neg = fflib.train.hard_negative_labels(m, x, y, np.random.default_rng(0))
    assert neg.shape == y.shape and np.all(neg != y) and neg.min() >= 0 and neg.max() < 4
    hist = fflib.fit(m, x, y, epochs=1, batch_size=50, negatives="hard", progress=False)
    assert np.isfinite(hist["epochs"][0]["block_loss"]).all()


def test_interrupt_stops_cleanly(rng):
    x, y = batch(rng, n=100)
    m = small_model()

    def boom(rec):
        raise KeyboardInterrupt
    hist = fflib.fit(m, x, y, epochs=5, batch_size=10, progress=False, callback=boom)
    assert hist["interrupted"] and len(hist["epochs"]) == 1


def test_no_memory_growth_over_1000_calls(rng):
    m = small_model()
    x, y = batch(rng, n=32)
    for _ in range(50):
        m.train_step(x, y)
        m.goodness(x)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(1000):
        m.train_step(x, y)
        m.goodness(x)
        m.predict_proba(x)
        try:
            m.train_step(x.astype(np.float64), y)
        except TypeError:
            pass
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert rss1 - rss0 < 2048, f"peak RSS grew by {rss1 - rss0} kB over 1000 calls"


def test_classifier_sklearn_interface(rng):
    x = rng.random((200, 20), dtype=np.float32)
    y = np.array(["a", "b", "c", "d"])[rng.integers(0, 4, 200)]
    clf = fflib.FFClassifier(hidden=(16, 8), epochs=1, batch_size=50, random_state=0)
    assert clf.fit(x, y) is clf
    assert set(clf.predict(x)) <= set(clf.classes_)
    p = clf.predict_proba(x)
    assert p.shape == (200, 4) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert 0.0 <= clf.score(x, y) <= 1.0
    assert clf.get_params()["hidden"] == (16, 8)
    with pytest.raises(RuntimeError, match="not fitted"):
        fflib.FFClassifier().predict(x)


def test_the_submodules_the_readme_uses_need_no_import_of_their_own():
    """`import fflib` then fflib.uff / fflib.unsupervised / fflib.reference (AttributeError before)."""
    import subprocess
    import sys
    code = ("import fflib; fflib.uff.uff_model; fflib.unsupervised.scff_mlp; fflib.reference.df_loss; import sys; "
            "print(sorted(m for m in ('torch', 'mpi4py', 'matplotlib', 'sklearn') if m in sys.modules))")
    from conftest import child_env
    import os      # from the tests directory: the installed fflib, not the unbuilt sources of a checkout
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=120,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"          # and still none of the heavy optional packages
