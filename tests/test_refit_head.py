"""Head-only training on frozen blocks: fit()'s head_epochs run the blocks in inference mode
(batch norm from its running statistics, the features evaluate() and the predictions see), and
refit_head() trains a fresh head that way."""
import numpy as np
import pytest

import fflib
from fflib import models, recipes, reference


def tiny_bn_model():
    # FF_tiny: every block BatchNorm -> Conv -> ReLU, the head on the last two blocks
    return models.build("ff_tiny", "cifar10", seed=3)


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 3, 32, 32), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)


def xent(model, x, y):
    model.eval()
    z = model.features(x).astype(np.float64) @ model.head_weight.T.astype(np.float64) + model.head_bias
    return reference.softmax_xent(z, y)[0]


def test_head_only_epochs_see_inference_features():
    x, y = data()
    m = tiny_bn_model()
    fflib.fit(m, x, y, epochs=1, batch_size=8, progress=False)     # running statistics now differ from a batch's
    want = xent(m, x, y)
    m.train()
    train_mode = m.features(x).astype(np.float64)
    m.eval()
    assert not np.allclose(train_mode, m.features(x), rtol=1e-2)   # so the two modes are told apart below
    blocks = {k: v for k, v in m.state_dict().items() if not k.startswith("head.")}
    # one minibatch: the epoch's head loss is the loss before the head's only update
    hist = fflib.fit(m, x, y, epochs=0, head_epochs=1, batch_size=len(y), progress=False)
    assert hist["epochs"][0]["active"] == [0] * m.num_blocks
    assert hist["epochs"][0]["head_loss"] == pytest.approx(want, rel=1e-4)
    after = m.state_dict()
    assert all(np.array_equal(v, after[k]) for k, v in blocks.items())     # weights and running statistics


def test_refit_head_trains_a_fresh_head_on_frozen_blocks():
    x, y = data(64)
    m = tiny_bn_model()
    fflib.fit(m, x, y, epochs=1, batch_size=16, progress=False)
    before = m.state_dict()
    hist = fflib.refit_head(m, x, y, epochs=1, lr=0.01, batch_size=len(y), progress=False, x_val=x[:16], y_val=y[:16])
    # reset: the first (only) minibatch's loss is that of a zero head, ln K
    assert hist["epochs"][0]["head_loss"] == pytest.approx(np.log(10), rel=1e-5)
    assert "val" in hist["epochs"][0] and len(hist["epochs"]) == 1
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before if not k.startswith("head."))
    assert not np.array_equal(before["head.weight"], after["head.weight"]) and np.abs(after["head.weight"]).max() > 0
    assert not m.training
    # reset=False continues from the current head
    loss = xent(m, x, y)
    hist = fflib.refit_head(m, x, y, epochs=1, lr=0.01, batch_size=len(y), reset=False, progress=False)
    assert hist["epochs"][0]["head_loss"] == pytest.approx(loss, rel=1e-4)


def test_refit_head_refuses_bad_arguments():
    x, y = data(16)
    m = tiny_bn_model()
    for kw, msg in ((dict(epochs=0), "epochs"), (dict(epochs=1.5), "epochs"), (dict(lr=0.0), "lr"),
                    (dict(lr=float("inf")), "lr"), (dict(lr="1"), "lr")):
        with pytest.raises(ValueError, match=msg):
            fflib.refit_head(m, x, y, progress=False, **kw)
    head = m.head_weight.copy()
    assert np.abs(head).max() > 0
    with pytest.raises(ValueError):
        fflib.refit_head(m, x, y[:8], progress=False)          # 16 images, 8 labels
    assert np.array_equal(m.head_weight, head)                  # untouched
    headless = fflib.FFModel(fflib.mlp([3072, 16, 8]), 3072, 10, head_blocks=None)
    with pytest.raises(ValueError, match="one-pass head"):
        fflib.refit_head(headless, x.reshape(16, -1), y, progress=False)
    with pytest.raises(TypeError, match="FFModel"):
        fflib.refit_head(object(), x, y, progress=False)


def test_refit_head_starts_a_fresh_adam_whatever_training_left(tmp_path):
    """The refit's Adam starts from zero moments and step 0: a trained model saved with its
    optimiser state and one saved without it refit to the same head (before, the first carried
    training's moments and step into the refit)."""
    x, y = data(48)
    m = tiny_bn_model()
    fflib.fit(m, x, y, epochs=2, batch_size=16, progress=False)
    m.save(tmp_path / "with.npz")
    m.save(tmp_path / "without.npz", optimizer=False)
    a, b = fflib.FFModel.load(tmp_path / "with.npz"), fflib.FFModel.load(tmp_path / "without.npz")
    assert a._net.get_step(-1) > 0 and b._net.get_step(-1) == 0
    for model in (a, b):
        fflib.refit_head(model, x, y, epochs=2, lr=0.01, batch_size=16, progress=False)
    assert np.array_equal(a.head_weight, b.head_weight) and np.array_equal(a.head_bias, b.head_bias)
    assert a._net.get_step(-1) == b._net.get_step(-1) == 6


@pytest.mark.parametrize("kw", [dict(augment="bogus"), dict(x_val="x"), dict(random_state="a"),
                                dict(callback=3), dict(lr=1e38)])
def test_a_refit_that_raises_leaves_the_model_as_it_was(kw):
    """A bad argument fit() refuses, or a loss that is not finite, after the head was zeroed:
    the head, its optimiser state and the attached optimiser are put back."""
    x, y = data(32)
    m = tiny_bn_model()
    opt = fflib.Adam(m, lr=0.01)
    fflib.fit(m, x, y, epochs=1, batch_size=8, optimizer=opt, progress=False)
    before, step, setting = m.optimizer_state(), m._net.get_step(-1), m._net.get_opt(-1)
    weights = m.state_dict()
    if kw.get("x_val") == "x":
        kw = dict(x_val=x)                                       # x_val without y_val
    with pytest.raises(Exception) as e:
        fflib.refit_head(m, x, y, epochs=1, batch_size=8, progress=False, **kw)
    assert isinstance(e.value, (ValueError, TypeError, ArithmeticError)), repr(e.value)
    after = m.state_dict()
    assert all(np.array_equal(v, after[k]) for k, v in weights.items())
    assert m._net.get_step(-1) == step and m._net.get_opt(-1) == setting and m.optimizer is opt
    now = m.optimizer_state()
    assert any(k.startswith("head.") for k in before)
    assert all(np.array_equal(v, now[k]) for k, v in before.items() if k.startswith("head."))


@pytest.mark.parametrize("name,dataset", [(n, d) for n, ds in recipes.DATASETS.items() for d in ds])
def test_refit_head_on_every_zoo_model_survives_save_and_load(name, dataset, tmp_path):
    """Every zoo model on every dataset it runs on: refit_head trains its head only (the blocks'
    weights and running statistics untouched) and the refitted model saves and loads with the
    same predictions (the lesson of save/load breaking on CwComp only)."""
    m = models.build(name, dataset, seed=1)
    shape = tuple(m.input_shape)
    rng = np.random.default_rng(2)
    x = rng.random((12,) + shape, dtype=np.float32)
    y = rng.integers(0, 10, 12).astype(np.int64)
    fflib.fit(m, x, y, epochs=1, batch_size=6, progress=False)
    before = m.state_dict()
    hist = fflib.refit_head(m, x, y, epochs=1, lr=0.01, batch_size=6, progress=False)
    assert len(hist["epochs"]) == 1 and np.isfinite(hist["epochs"][0]["head_loss"])
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before if not k.startswith("head."))
    assert not np.array_equal(before["head.weight"], after["head.weight"])
    p = m.predict_onepass(x)
    m.save(tmp_path / "m.npz")
    back = fflib.FFModel.load(tmp_path / "m.npz")
    assert np.array_equal(back.predict_onepass(x), p)
    assert np.array_equal(back.predict_multipass(x), m.predict_multipass(x))
