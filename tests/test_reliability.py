"""Save/load round trips of every zoo model, version-1 files, corrupt files, and the checks on
settings and state (issue 10)."""
import json
import os

import numpy as np
import pytest

import fflib
import fflib.models as zoo
from fflib.optim import StepLR, CosineAnnealingLR, MultiStepLR

SMALL = {"cwcomp": dict(channels=(10, 20, 20, 40))}


def zoo_model(name, seed=0):
    """The zoo model ``name`` with its paper's settings, at a small input where the model allows
    (the light models on 3x16x16, CwComp with fewer channels)."""
    if name in zoo.LIGHT_MODELS:
        layers, shape = zoo.light_model(name, (3, 16, 16))
        n_units = sum(1 for l in layers if l.kind == "conv2d")
        return fflib.FFModel(layers, shape, 10, seed=seed, loss="cwc", label_encoding="none", norm="rms",
                             threshold=2.0, head_blocks=[n_units - 2, n_units - 1])
    return zoo.build(name, "mnist", seed=seed, **SMALL.get(name, {}))


def data(model, n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, int(np.prod(model.input_shape))), dtype=np.float32)
    return x, rng.integers(0, 10, n)


def same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("extras", [False, True], ids=["plain", "head-dropout+block-thresholds"])
@pytest.mark.parametrize("name", zoo.ZOO)
def test_zoo_round_trip_predicts_and_trains_on_identically(name, extras, tmp_path):
    """extras: the head's dropout (its masks from the core's RNG, which the file holds) and one
    threshold per block, both kept by save/load, so training goes on identically."""
    m = zoo_model(name)
    if extras:
        m.set_config(head_dropout=0.3 if m.has_head else 0.0,
                     block_thresholds=[1.0 + 0.5 * b for b in range(m.num_blocks)])
    x, y = data(m)
    # SGD with momentum for half the zoo: a loaded model must not come back as Adam
    opt = (fflib.SGD(m, lr=0.01, momentum=0.9, nesterov=True) if name in ("mlp", "cwcomp", "ff_small", "ff_optimal")
           else fflib.Adam(m, lr=2e-3, betas=(0.8, 0.99), head_lr=1e-3))
    sched = StepLR(opt, step_size=1, gamma=0.5)
    fflib.fit(m, x, y, epochs=1, batch_size=8, scheduler=sched, progress=False, random_state=1)
    written = m.save(tmp_path / "model")          # no suffix: .npz is appended, load finds it
    assert written.endswith("model.npz") and os.path.exists(written)
    m2 = fflib.FFModel.load(tmp_path / "model")
    assert m2.architecture() == m.architecture() and m2.config == m.config
    assert m2.blocks == m.blocks and m2._head_layers == m._head_layers and m2.training == m.training
    assert same_params(m, m2)
    assert np.array_equal(m.goodness(x), m2.goodness(x))
    if m.has_head:
        assert np.array_equal(m.predict_proba(x), m2.predict_proba(x))
    assert type(m2.optimizer) is type(m.optimizer) and m2.optimizer.state_dict(moments=False) == \
        m.optimizer.state_dict(moments=False)
    assert m2.scheduler.state_dict() == m.scheduler.state_dict()
    for i in m.trainable_layers():
        assert m._net.get_opt(i) == m2._net.get_opt(i) and m._net.get_step(i) == m2._net.get_step(i)
    # continued training: fit without optimizer= goes on with the restored optimiser and schedule
    for model in (m, m2):
        fflib.fit(model, x, y, epochs=2, batch_size=8, scheduler=model.scheduler, progress=False, random_state=7)
    assert same_params(m, m2)
    assert m.optimizer.lr == m2.optimizer.lr == pytest.approx(opt.param_groups[0]["initial_lr"] / 8)
    a, b = m.optimizer_state(), m2.optimizer_state()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def version1_file(model, path):
    """What fflib wrote before format 2: no units, no optimiser or schedule objects."""
    arrays = model._serialise()
    meta = json.loads(str(arrays["__meta__"]))
    meta["version"] = 1
    for k in ("optimizer", "scheduler", "fflib_version"):
        meta.pop(k, None)
    meta["architecture"].pop("units")
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


@pytest.mark.parametrize("name", ["mlp", "cwcomp"])
def test_version_1_files_still_load(name, tmp_path):
    m = zoo_model(name)
    x, y = data(m)
    fflib.fit(m, x, y, epochs=1, batch_size=8, optimizer=fflib.SGD(m, lr=0.01, momentum=0.9, head_lr=0.005),
              progress=False)
    version1_file(m, tmp_path / "v1.npz")
    m2 = fflib.FFModel.load(tmp_path / "v1.npz")
    assert m2._head_layers == m._head_layers and m2.default_blocks() == m.default_blocks()
    assert np.array_equal(m.goodness(x), m2.goodness(x))
    assert np.array_equal(m.predict_proba(x), m2.predict_proba(x))
    # no optimiser object in a version-1 file: the layers' settings tell it, and SGD stays SGD
    assert isinstance(m2.optimizer, fflib.SGD) and m2.optimizer.momentum == pytest.approx(0.9)
    for model in (m, m2):
        fflib.fit(model, x, y, epochs=1, batch_size=8, progress=False, random_state=3)
    assert same_params(m, m2)


def test_fit_without_optimizer_keeps_a_loaded_sgd(tmp_path):
    m = zoo_model("mlp")
    x, y = data(m)
    fflib.fit(m, x, y, epochs=1, batch_size=8, optimizer=fflib.SGD(m, lr=0.01, momentum=0.9), progress=False)
    m.save(tmp_path / "m.npz")
    m2 = fflib.FFModel.load(tmp_path / "m.npz")
    fflib.fit(m2, x, y, epochs=1, batch_size=8, progress=False)
    assert isinstance(m2.optimizer, fflib.SGD)
    assert all(m2._net.get_opt(i)["kind"] == 0 for i in m2.trainable_layers())   # 0: SGD in C


def test_adamw_is_saved_loaded_and_resumed_as_adamw(tmp_path):
    m = zoo_model("mlp")
    x, y = data(m)
    opt = fflib.AdamW(m, lr=0.01, weight_decay=0.2, head_lr=0.02)
    fflib.fit(m, x, y, epochs=1, batch_size=8, optimizer=opt, progress=False, random_state=1)
    m.save(tmp_path / "m.npz")
    m2 = fflib.FFModel.load(tmp_path / "m.npz")
    assert type(m2.optimizer) is fflib.AdamW and m2.optimizer.weight_decay == pytest.approx(0.2)
    assert m2.optimizer.head_lr == pytest.approx(0.02)
    for model in (m, m2):    # the loaded optimiser carries on exactly as the original
        fflib.fit(model, x, y, epochs=1, batch_size=8, progress=False, random_state=2)
    assert same_params(m, m2)
    st = opt.state_dict()
    assert st["kind"] == "AdamW"
    with pytest.raises(ValueError, match="state is of a AdamW optimiser, this is Adam"):
        fflib.Adam(zoo_model("mlp")).load_state_dict(st)
    assert type(fflib.optim.optimizer_from_state(m2, st)) is fflib.AdamW


def test_layer_lr_is_scheduled_saved_loaded_and_checked(tmp_path):
    m = zoo_model("mlp")
    x, y = data(m)
    first = m.trainable_layers()[0]
    opt = fflib.SGD(m, lr=0.01, momentum=0.9, head_lr=0.02, layer_lr={first: 0.05})
    sched = MultiStepLR(opt, [1], gamma=0.5)
    fflib.fit(m, x, y, epochs=2, batch_size=8, scheduler=sched, progress=False, random_state=1)
    rates = {i: m._net.get_opt(i)["lr"] for i in m.trainable_layers()}
    assert rates[first] == pytest.approx(0.025) and rates[-1] == pytest.approx(0.01)   # x0.5 after epoch 1
    assert all(r == pytest.approx(0.005) for i, r in rates.items() if i not in (first, -1))
    m.save(tmp_path / "m.npz")
    m2 = fflib.FFModel.load(tmp_path / "m.npz")
    assert m2.optimizer.layer_lr == {first: pytest.approx(0.05)}
    for model in (m, m2):
        fflib.fit(model, x, y, epochs=1, batch_size=8, progress=False, random_state=2)
    assert same_params(m, m2)
    with pytest.raises(ValueError, match="the head's rate is head_lr"):
        fflib.Adam(m, layer_lr={-1: 0.1})
    with pytest.raises(ValueError, match=r"layer_lr\[.*must be finite"):
        fflib.Adam(m, layer_lr={first: float("nan")})


# ----------------------------------------------------------------------------- corrupt files
def saved_bytes(tmp_path):
    m = zoo_model("mlp")
    p = m.save(tmp_path / "good.npz")
    with open(p, "rb") as f:
        return f.read()


def test_truncated_and_corrupt_files_name_the_file(tmp_path):
    raw = saved_bytes(tmp_path)
    rng = np.random.default_rng(0)
    cuts = sorted(set(rng.integers(1, len(raw), 40).tolist())) + [0, 10, len(raw) - 1]
    for i, cut in enumerate(cuts):
        p = tmp_path / f"trunc{i}.npz"
        p.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=str(p).replace(".", r"\.")):
            fflib.FFModel.load(p)
    n_ok = 0
    for i in range(60):                      # flipped bytes: an error naming the file, or a model
        b = bytearray(raw)
        for pos in rng.integers(0, len(b), 4):
            b[pos] ^= 0xFF
        p = tmp_path / f"flip{i}.npz"
        p.write_bytes(bytes(b))
        try:
            fflib.FFModel.load(p)
            n_ok += 1                       # the flips hit bytes the zip CRC does not cover
        except ValueError as e:
            assert str(p) in str(e)
    assert n_ok < 60


def rewrite(tmp_path, edit, name="edited.npz"):
    m = zoo_model("mlp")
    arrays = m._serialise()
    meta = json.loads(str(arrays["__meta__"]))
    original = arrays["__meta__"]
    edit(meta, arrays)
    if arrays["__meta__"] is original:      # the edit changed the description, not the entry
        arrays["__meta__"] = np.array(json.dumps(meta))
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


@pytest.mark.parametrize("edit, field", [
    (lambda meta, a: a.update(__meta__=np.array("{not json")), "__meta__"),
    (lambda meta, a: a.update(__meta__=np.zeros(3)), "__meta__"),
    (lambda meta, a: meta.update(version="2"), "__meta__"),
    (lambda meta, a: meta.update(format="other"), "__meta__"),
    (lambda meta, a: meta["architecture"].update(layers="x"), "architecture.layers"),
    (lambda meta, a: meta["architecture"]["layers"][1].update(out_features=-3), "architecture.layers[1]"),
    (lambda meta, a: meta["architecture"]["layers"][1].update(kind="attention"), "architecture.layers[1]"),
    (lambda meta, a: meta["architecture"]["layers"][1].update(bogus=1), "architecture.layers[1]"),
    (lambda meta, a: meta["architecture"].update(input_shape=[10 ** 30]), "architecture"),
    (lambda meta, a: meta["architecture"].update(num_classes="ten"), "architecture"),
    (lambda meta, a: (meta["architecture"]["layers"][1].update(out_features=2 ** 31 - 1),
                      meta["architecture"]["layers"][4].update(in_features=None)), "out_features must be in"),
    (lambda meta, a: meta["architecture"].update(units=[1, 2]), "architecture"),
    (lambda meta, a: meta["architecture"].update(head_layers=[0]), "architecture.head_layers"),
    (lambda meta, a: meta["architecture"]["config"].update(threshold=float("nan")), "architecture"),
    (lambda meta, a: meta["architecture"]["config"].update(loss="xent"), "architecture"),
    (lambda meta, a: meta["architecture"].update(seed=2 ** 64), "architecture"),
    (lambda meta, a: a.pop("param/layers.1.weight"), "param"),
    (lambda meta, a: a.update({"param/layers.1.weight": a["param/layers.1.weight"][:3]}), "param"),
    (lambda meta, a: a["param/layers.1.weight"].__setitem__((0, 0), np.nan), "param"),
    (lambda meta, a: a.update({"param/layers.1.weight": a["param/layers.1.weight"].astype(np.float64) * 1e300}),
     "param"),
    (lambda meta, a: a.update({"param/layers.1.weight": a["param/layers.1.weight"].astype(str)}), "param"),
    (lambda meta, a: a["optim/layers.1.v_weight"].__setitem__((0, 0), -1.0), "optim"),
    (lambda meta, a: a["optim/layers.1.m_weight"].__setitem__((0, 0), np.inf), "optim"),
    (lambda meta, a: a.update({"optim/layers.1.step": np.array(-5)}), "optim"),
    (lambda meta, a: a.update({"optim/rng": np.zeros(4, np.uint64)}), "optim"),
    (lambda meta, a: a.update({"optim/layers.9.m_weight": np.zeros(3, np.float32)}), "optim"),
    (lambda meta, a: a.update(optim_config=np.array('{"1": {"kind": 1, "lr": 1e39}}')), "optim_config"),
    (lambda meta, a: a.update(optim_config=np.array('{"1": {"kind": 7}}')), "optim_config"),
    (lambda meta, a: meta.update(optimizer={"kind": "Adam", "settings": {"eps": 1e39}}), "optimizer"),
    (lambda meta, a: meta.update(optimizer={"kind": "LBFGS"}), "optimizer"),
    (lambda meta, a: meta.update(optimizer={"kind": "Adam", "settings": {"bogus": 1}}), "unknown ['bogus']"),
    (lambda meta, a: meta.update(optimizer={"kind": "Adam"}, scheduler={"kind": "StepLR", "settings": {"gamma": 0.5}}),
     "missing ['step_size']"),
    (lambda meta, a: meta.update(optimizer={"kind": "Adam", "layer_lr": {"7": 0.1}}), "layer_lr"),
    (lambda meta, a: meta.update(training="yes"), "training"),
])
def test_edited_files_raise_naming_file_and_field(tmp_path, edit, field):
    p = rewrite(tmp_path, edit)
    with pytest.raises(ValueError) as e:
        fflib.FFModel.load(p)
    msg = str(e.value)
    assert str(p) in msg and field in msg, msg
    assert "\n" not in msg


def test_foreign_and_missing_files(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="no __meta__"):
        fflib.FFModel.load(tmp_path / "other.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single.npy"):
        fflib.FFModel.load(tmp_path / "single.npy")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="text.npz: not a readable") as e:
        fflib.FFModel.load(tmp_path / "text.npz")
    assert "allow_pickle" not in str(e.value)     # numpy's advice to unpickle an untrusted file
    with pytest.raises(FileNotFoundError, match="nothere"):
        fflib.FFModel.load(tmp_path / "nothere")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        zoo_model("mlp").save(tmp_path / "no" / "such" / "dir" / "m.npz")


def test_save_replaces_a_file_only_by_a_complete_one(tmp_path):
    m = zoo_model("mlp")
    p = m.save(tmp_path / "m.npz")
    before = open(p, "rb").read()

    class Boom:
        def __array__(self, *a, **k):
            raise RuntimeError("disk full")

    arrays = m._serialise()
    arrays["param/boom"] = Boom()
    with pytest.raises(RuntimeError):
        fflib.nn._atomic_savez(p, arrays)
    assert open(p, "rb").read() == before
    assert os.listdir(tmp_path) == ["m.npz"]      # no temporary file left behind


# ----------------------------------------------------------------------------- validation
def test_a_loss_that_does_not_fit_the_network_is_rejected():
    with pytest.raises(ValueError, match="block 0 ends at layer 2 with 32 channels"):
        fflib.FFModel(fflib.mlp([784, 32, 16]), 784, 10, loss="cwc", label_encoding="none")
    with pytest.raises(ValueError, match="not divisible by 10"):
        fflib.FFModel(fflib.mlp([784, 30, 16]), 784, 10, loss="pvn", label_encoding="none")
    with pytest.raises(ValueError, match="10 logits"):
        fflib.FFModel(fflib.mlp([784, 32]), 784, 10, loss="xent", label_encoding="none")
    # FF/SymBa without a label encoding train only on explicit negatives (x_neg): the step
    # without them says so (tests/test_train_pairs.py)
    m = fflib.FFModel(fflib.mlp([784, 32]), 784, 10, loss="ff", label_encoding="none")
    with pytest.raises(ValueError, match="label_encoding is none: pass explicit negatives"):
        m.train_step(np.zeros((2, 784), np.float32), np.zeros(2, np.int64))
    m = fflib.FFModel(fflib.mlp([784, 32, 16]), 784, 10, loss="symba")
    with pytest.raises(ValueError, match="not divisible"):
        m.set_config(loss="cwc")
    assert m.config["loss"] == "symba"


@pytest.mark.parametrize("make, msg", [
    (lambda m: fflib.SGD(m, momentum=1e39), "momentum must be finite"),
    (lambda m: fflib.Adam(m, eps=1e39), "eps must be finite"),
    (lambda m: fflib.Adam(m, lr=1e39), "lr must be finite"),
    (lambda m: fflib.Adam(m, betas=(0.9,)), "betas must be a pair"),
    (lambda m: fflib.Adam(m, betas="ab"), "betas must be a pair"),
    (lambda m: fflib.Adam(m, lr="0.1"), "lr must be a real number"),
    (lambda m: fflib.SGD(m, nesterov="yes"), "nesterov must be True or False"),
    (lambda m: fflib.Adam(m, layers=[0.5]), "layers must be a list of ints"),
    (lambda m: StepLR(fflib.Adam(m), 0), "step_size must be an int"),
    (lambda m: CosineAnnealingLR(fflib.Adam(m), 10, eta_min=-1), "eta_min must be >= 0"),
    (lambda m: MultiStepLR(fflib.Adam(m), [5, 3]), "increasing"),
    (lambda m: fflib.optim.LambdaLR(fflib.Adam(m), 3), "lr_lambda must be a function"),
])
def test_bad_optimiser_and_schedule_settings(make, msg):
    m = zoo_model("mlp")
    with pytest.raises((ValueError, TypeError), match=msg):
        make(m)


def test_optimiser_state_is_checked_before_it_is_loaded():
    m = zoo_model("mlp")
    x, y = data(m)
    opt = fflib.Adam(m)
    fflib.fit(m, x, y, epochs=1, batch_size=8, progress=False)
    good = opt.state_dict()
    before = m.optimizer_state()
    for key, value, msg in [("v_weight", -1.0, ">= 0"), ("m_weight", np.nan, "NaN"), ("m_bias", np.inf, "NaN")]:
        st = opt.state_dict()
        st["state"][1][key].flat[0] = value
        with pytest.raises(ValueError, match=msg):
            opt.load_state_dict(st)
    st = opt.state_dict()
    st["state"][1]["m_weight"] = st["state"][1]["m_weight"].astype(np.float64) + 1e39
    with pytest.raises(ValueError, match="beyond float32's range"):
        opt.load_state_dict(st)
    st = opt.state_dict()
    st["kind"] = "SGD"
    with pytest.raises(ValueError, match="of a SGD optimiser"):
        opt.load_state_dict(st)
    after = m.optimizer_state()
    assert all(np.array_equal(before[k], after[k]) for k in before)     # nothing changed
    # big-endian arrays are converted explicitly, not read as native bytes
    st = opt.state_dict()
    st["state"][1]["m_weight"] = st["state"][1]["m_weight"].astype(">f4")
    opt.load_state_dict(st)
    assert np.array_equal(m._net.param(1, 6), good["state"][1]["m_weight"])
    sd = m.state_dict()
    sd["layers.1.weight"] = np.ones_like(sd["layers.1.weight"]).astype(">f4")
    m.load_state_dict(sd)
    assert np.all(m.layers[1].weight == 1.0)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="seed must be an int in"):
        fflib.FFModel(fflib.mlp([20, 8]), 20, 4, seed=2 ** 64)
    with pytest.raises(ValueError, match="seed must be an int in"):
        fflib.FFModel(fflib.mlp([20, 8]), 20, 4, seed=-1)
    with pytest.raises(TypeError, match="input_shape"):
        fflib.FFModel(fflib.mlp([20, 8]), "20", 4)
    with pytest.raises(TypeError, match="threshold must be a real number"):
        fflib.FFModel(fflib.mlp([20, 8]), 20, 4, threshold="2")
    with pytest.raises(ValueError, match="threshold must be finite"):
        fflib.FFModel(fflib.mlp([20, 8]), 20, 4, threshold=1e39)
    with pytest.raises(ValueError, match="loss must be one of"):
        fflib.FFModel(fflib.mlp([20, 8]), 20, 4, loss=["ff"])
    with pytest.raises(TypeError, match="eps must be a real number"):
        fflib.BatchNorm2d(4, eps="x")


def test_active_masks_must_be_integral():
    m = zoo_model("mlp")
    x, y = data(m, n=4)
    with pytest.raises(ValueError, match="active"):
        m.train_step(x, y, active=[0.5, 1.0])
    with pytest.raises(ValueError, match="active"):
        m.train_step(x, y, active=[2, 1])
    with pytest.raises(ValueError, match="active"):
        m.train_step(x, y, active=[1])
    m.train_step(x, y, active=np.array([1.0, 0.0]))      # integral floats are fine


# ----------------------------------------------------------------------------- schedules vs PyTorch
@pytest.mark.parametrize("make_ours, make_torch", [
    (lambda o: StepLR(o, 3, gamma=0.5), lambda o, t: t.StepLR(o, 3, gamma=0.5)),
    (lambda o: MultiStepLR(o, [2, 5, 5, 9], gamma=0.3), lambda o, t: t.MultiStepLR(o, [2, 5, 5, 9], gamma=0.3)),
    (lambda o: CosineAnnealingLR(o, 7, eta_min=0.01), lambda o, t: t.CosineAnnealingLR(o, 7, eta_min=0.01)),
    (lambda o: fflib.optim.LambdaLR(o, lambda e: 0.9 ** e + 0.1 * (e % 3)),
     lambda o, t: t.LambdaLR(o, lambda e: 0.9 ** e + 0.1 * (e % 3))),
    (lambda o: fflib.optim.LinearCooldown(o, total=10, start=4),
     lambda o, t: t.LambdaLR(o, lambda e: 1.0 if e <= 4 else max(0.0, (10 - e) / 6))),
    (lambda o: fflib.optim.LinearCooldown(o, total=10, start=4, decay=0.7),
     lambda o, t: t.LambdaLR(o, lambda e: 0.7 ** e if e < 4 else 1.0 if e == 4 else max(0.0, (10 - e) / 6))),
])
def test_schedules_follow_pytorch(make_ours, make_torch):
    torch = pytest.importorskip("torch")
    import torch.optim.lr_scheduler as t
    m = zoo_model("mlp")
    ours = make_ours(fflib.SGD(m, lr=0.5, momentum=0.9))
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5, momentum=0.9)
    theirs = make_torch(topt, t)
    a, b = [ours.get_last_lr()[0]], [theirs.get_last_lr()[0]]
    for _ in range(20):
        topt.step()
        theirs.step()
        ours.step()
        a.append(ours.get_last_lr()[0])
        b.append(theirs.get_last_lr()[0])
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert m._net.get_opt(1)["lr"] == pytest.approx(a[-1], rel=1e-6, abs=1e-12)   # pushed into C


def test_optimizer_and_schedule_state_dicts_round_trip():
    m = zoo_model("mlp")
    x, y = data(m)
    opt = fflib.SGD(m, lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = CosineAnnealingLR(opt, 5)
    fflib.fit(m, x, y, epochs=2, batch_size=8, scheduler=sched, progress=False)
    st, ss = opt.state_dict(), sched.state_dict()
    m2 = zoo_model("mlp")
    m2.load_state_dict(m.state_dict())
    opt2 = fflib.SGD(m2, lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched2 = CosineAnnealingLR(opt2, 5)
    opt2.load_state_dict(st)
    sched2.load_state_dict(ss)
    assert opt2.lr == opt.lr and sched2.last_epoch == 2
    a, b = m.optimizer_state(), m2.optimizer_state()
    assert all(np.array_equal(a[k], b[k]) for k in a if k != "rng")
    with pytest.raises(ValueError, match="differ from this schedule"):
        CosineAnnealingLR(fflib.SGD(zoo_model("mlp"), lr=0.1), 6).load_state_dict(ss)
    json.dumps(ss)
    json.dumps(opt.state_dict(moments=False))
