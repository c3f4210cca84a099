"""How inputs reach the core: the appended label (label_placement), torch tensors and other
DLPack producers (zero-copy where the layout allows), and pickling of FFModel."""
import copy
import pickle

import numpy as np
import pytest

import fflib
from fflib import models
from fflib.nn import as_array


def appended(seed=3, D=5, K=4, placement="append"):
    return fflib.FFModel(fflib.mlp([D, 16, 8]), D, K, label_placement=placement, seed=seed)


# ---------------------------------------------------------------- label_placement="append"
def test_append_keeps_every_feature_behind_k_label_slots(rng):
    D, K = 5, 4
    m = appended(D=D, K=K)
    assert m.layers[1].in_features == D and m.layers[1].weight.shape == (16, K + D)
    assert m.input_shape == (D, 1, 1)
    # the same network seeing (B, K + D) rows, label overwriting the first K: identical numbers
    wide = fflib.FFModel(fflib.mlp([K + D, 16, 8]), K + D, K, seed=3)
    wide.load_state_dict(m.state_dict())
    x = rng.standard_normal((7, D)).astype(np.float32)
    xw = np.concatenate([rng.standard_normal((7, K)).astype(np.float32), x], axis=1)   # K junk values
    y = rng.integers(0, K, 7)
    np.testing.assert_array_equal(m.goodness(x), wide.goodness(xw))
    np.testing.assert_array_equal(m.predict_proba(x), wide.predict_proba(xw))
    np.testing.assert_array_equal(m.features(x), wide.features(xw))
    np.testing.assert_array_equal(m.train_step(x, y), wide.train_step(xw, y))
    np.testing.assert_array_equal(m.layers[1].weight, wide.layers[1].weight)
    # the features change the goodness: none was overwritten (every column of x matters)
    for j in range(D):
        x2 = x.copy()
        x2[:, j] += 1.0
        assert not np.allclose(m.goodness(x2), m.goodness(x))


def test_append_with_fewer_features_than_classes_and_bad_settings(rng):
    m = appended(D=1, K=6)
    x = rng.standard_normal((10, 1)).astype(np.float32)
    assert np.isfinite(m.train_step(x, rng.integers(0, 6, 10))).all()
    with pytest.raises(ValueError, match="label_placement must be one of"):
        appended(placement="prepend")
    with pytest.raises(ValueError, match="'append' needs label_encoding 'onehot' and a flat input"):
        fflib.FFModel(models.conv_block(1, 4, 3), (1, 6, 6), 3, label_placement="append")
    with pytest.raises(ValueError, match="'append' needs label_encoding 'onehot'"):
        fflib.FFModel(fflib.mlp([5, 8]), 5, 3, label_placement="append", label_encoding="none", loss="xent")
    with pytest.raises(ValueError, match=r"x must have 5 values per sample .* got shape \(3, 9\)"):
        m5 = appended()
        m5.train_step(np.zeros((3, 9), np.float32), np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        m5.train_step(np.zeros((3, 5)), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        m5.train_step(np.zeros((5, 3), np.float32).T, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="x must have 5 values per sample"):
        m5.goodness(np.zeros((3, 9)))


def test_append_is_saved_loaded_and_pickled(tmp_path, rng):
    m = appended()
    x = rng.standard_normal((20, 5)).astype(np.float32)
    fflib.fit(m, x, rng.integers(0, 4, 20), epochs=2, batch_size=10, progress=False)
    m.save(tmp_path / "m.npz")
    for twin in (fflib.FFModel.load(tmp_path / "m.npz"), pickle.loads(pickle.dumps(m))):
        assert twin.label_placement == "append"
        np.testing.assert_array_equal(twin.goodness(x), m.goodness(x))


def test_pickle_and_deepcopy_train_on_bit_identically(rng):
    m = fflib.FFModel(fflib.mlp([12, 16, 8]), 12, 3, seed=1)
    x = rng.random((30, 12), dtype=np.float32)
    y = rng.integers(0, 3, 30)
    fflib.fit(m, x, y, epochs=1, batch_size=10, optimizer=fflib.Adam(m, lr=0.01), progress=False)
    m.train()
    for duplicate in (lambda a: pickle.loads(pickle.dumps(a)), copy.deepcopy):
        twin = duplicate(m)
        assert twin.training and twin.layers[1]._model is twin
        np.testing.assert_array_equal(twin.train_step(x, y), m.train_step(x, y))   # same rng, moments
        for a, b in zip(twin.parameters(), m.parameters()):
            np.testing.assert_array_equal(a, b)
        twin.layers[1].weight[...] = 0        # a copy, not a view of the original
        assert m.layers[1].weight.any()


# ---------------------------------------------------------------- torch tensors and DLPack
class Producer:
    """A bare DLPack producer (no __array__): only the protocol."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kw):
        return self.a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


class Broken:
    """A producer whose export fails (as a GPU tensor's does on a CPU-only NumPy)."""

    def __dlpack__(self, **kw):
        raise BufferError("device not supported")

    def __dlpack_device__(self):
        return (2, 0)


def test_tensors_and_dlpack_producers_are_read_without_a_copy(rng):
    torch = pytest.importorskip("torch")
    t = torch.rand(6, 12)
    assert np.shares_memory(as_array(t, "x"), t.numpy())
    assert np.shares_memory(fflib.nn.as_float32_batch(t, "x", 12), t.numpy())
    a = rng.random((6, 12), dtype=np.float32)
    assert np.shares_memory(as_array(Producer(a), "x"), a)
    g = torch.rand(3, 4, requires_grad=True)          # torch refuses to export it: detached view
    assert np.shares_memory(as_array(g, "x"), g.detach().numpy())
    with pytest.raises(TypeError, match="x: cannot read this Broken through DLPack"):
        as_array(Broken(), "x")


def test_every_entry_point_takes_tensors(rng):
    torch = pytest.importorskip("torch")
    x = rng.random((30, 12), dtype=np.float32)
    y = rng.integers(0, 3, 30)
    a, b = (fflib.FFModel(fflib.mlp([12, 16, 8]), 12, 3, seed=2) for _ in range(2))
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(a.train_step(t, y), b.train_step(x, y))
    np.testing.assert_array_equal(a.compute_grads(Producer(x), y), b.compute_grads(x, y))
    np.testing.assert_array_equal(a.goodness(t.double()), b.goodness(x))        # converted when needed
    np.testing.assert_array_equal(a.predict_proba(t.requires_grad_()), b.predict_proba(x))
    np.testing.assert_array_equal(a.features(Producer(x)), b.features(x))
    np.testing.assert_array_equal(a.predict_multipass(t.T.contiguous().T), b.predict_multipass(x))
    ha = fflib.fit(a, t, torch.from_numpy(y), epochs=1, batch_size=10, progress=False, random_state=0)
    hb = fflib.fit(b, x, y, epochs=1, batch_size=10, progress=False, random_state=0)
    assert ha["epochs"][0]["block_loss"] == hb["epochs"][0]["block_loss"]
    assert fflib.evaluate(a, t, y) == fflib.evaluate(b, x, y)
    # the training step never copies: dtype and layout are the caller's, as for arrays
    with pytest.raises(TypeError, match="x must have dtype float32"):
        a.train_step(t.double(), y)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        a.train_step(torch.from_numpy(np.ascontiguousarray(x.T)).T, y)
    with pytest.raises(TypeError, match="x must be numeric"):
        a.goodness(torch.zeros(2, 12, dtype=torch.complex64))


@pytest.mark.parametrize("kw, err, msg", [
    (dict(x_val="x"), ValueError, "x_val and y_val go together"),
    (dict(x_val="x3", y_val="y2"), ValueError, "y_val has 2 labels for 3 samples"),
    (dict(x_val="narrow", y_val="y"), ValueError, "x_val must have"),
    (dict(x_val="x", y_val="y+10"), ValueError, "y_val must be in"),
    (dict(callback=3), TypeError, "callback must be callable"),
])
def test_fit_refuses_a_bad_validation_pair_or_callback_before_training(kw, err, msg, rng):
    """A bad x_val / y_val or callback is refused before the first epoch (it used to surface at
    the first epoch's end, after a whole epoch of training), and the model is left as it was."""
    m = fflib.FFModel(fflib.mlp([12, 16, 8]), 12, 4, seed=0)
    x = rng.random((8, 12), dtype=np.float32)
    y = np.arange(8) % 4
    vals = {"x": x, "x3": x[:3], "y2": y[:2], "narrow": x[:, :6], "y": y, "y+10": y + 10}
    kw = {k: vals.get(v, v) if isinstance(v, str) else v for k, v in kw.items()}
    before = m.state_dict()
    with pytest.raises(err, match=msg):
        fflib.fit(m, x, y, epochs=1, batch_size=4, progress=False, **kw)
    assert all(np.array_equal(v, m.state_dict()[k]) for k, v in before.items())
