"""Input standardisation as a model property (``FFModel(input_norm=(mean, std))``): the core
applies ``x * (1/std) - mean/std`` where it encodes every sample, so a model with it must equal
the same weights fed the standardised data, in training and in every inference, for every
label encoding and zoo model; it is saved and loaded, checked, and reachable from the CLI."""
import json
import subprocess
import sys

import numpy as np
import pytest

import fflib
from fflib import models
from fflib.nn import FFModel

from conftest import child_env


def _pair(make, norm):
    """The model built by make() with input_norm and a twin with the same weights without it."""
    a = make()
    a.set_input_norm(*norm)
    b = FFModel.from_architecture({k: v for k, v in a.architecture().items() if k != "input_norm"})
    b.load_state_dict(a.state_dict())
    assert b.input_norm is None
    return a, b


def _standardised(model, x):
    scale, shift = model.input_affine
    return (x.reshape(len(x), -1) * scale + shift).astype(np.float32)


def _mlp():
    return FFModel(fflib.mlp([48, 20, 12], norm="rms"), 48, 4, loss="symba", goodness="mean", norm="rms")


def _mlp_append():
    return FFModel(fflib.mlp([48, 20, 12], norm="rms"), 48, 4, loss="symba", goodness="mean", norm="rms",
                   label_placement="append")


def _cnn(encoding):
    def make():
        layers = models.conv_block(4 if encoding == "embedding" else 3, 6, 3, padding=1, pool=2, norm="rms") + \
            models.conv_block(6, 8, 3, padding=1, pool=2, norm="rms")
        return FFModel(layers, (3, 8, 8), 4, loss="symba", goodness="mean", threshold=1.0, norm="rms",
                       label_encoding=encoding, head_blocks=[0, 1])
    return make


def _cwc():
    layers = models.conv_block(3, 8, 3, padding=1, pool=2, batchnorm=True) + \
        models.conv_block(8, 8, 3, padding=1, batchnorm=True, groups=4)
    return FFModel(layers, (3, 8, 8), 4, loss="cwc", label_encoding="none", head_blocks=[0, 1])


PER_CHANNEL = (np.array([0.2, 0.5, 0.7]), np.array([0.3, 0.1, 2.0]))
CASES = [("mlp-onehot", _mlp, (0.4, 0.25)), ("mlp-append", _mlp_append, (np.linspace(0, 1, 48), np.full(48, 0.3))),
         ("cnn-onehot", _cnn("onehot"), PER_CHANNEL), ("cnn-fourier", _cnn("fourier"), PER_CHANNEL),
         ("cnn-embedding", _cnn("embedding"), PER_CHANNEL), ("cwc", _cwc, PER_CHANNEL)]


@pytest.mark.parametrize("name, make, norm", CASES, ids=[c[0] for c in CASES])
def test_a_standardising_model_equals_its_twin_on_standardised_data(name, make, norm):
    """Training steps, every inference and the features: bit for bit, since both paths compute
    x * scale + shift in float32 once and the rest is the same arithmetic."""
    rng = np.random.default_rng(0)
    a, b = _pair(make, norm)
    D = int(np.prod(a.input_shape))
    for _ in range(3):
        x = rng.random((16, D), dtype=np.float32)
        y = rng.integers(0, 4, 16)
        la = a.train_step(x, y)
        lb = b.train_step(_standardised(a, x), y)
        np.testing.assert_array_equal(la, lb)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k], err_msg=k)
    a.eval()
    b.eval()
    x = rng.random((10, D), dtype=np.float32)
    xs = _standardised(a, x)
    np.testing.assert_array_equal(a.goodness(x), b.goodness(xs))
    np.testing.assert_array_equal(a.predict_multipass(x), b.predict_multipass(xs))
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(xs))
    np.testing.assert_array_equal(a.features(x), b.features(xs))
    # and it does change what the model computes
    assert not np.array_equal(a.goodness(x), b.goodness(x))


def test_fit_with_augmentation_standardises_after_the_shift():
    """fit() shifts the raw images (zero padding is black, as without standardisation) and the
    core standardises them: the same run as on standardised data is not expected (the padding
    differs), but training works and the affine map is the one asked for."""
    rng = np.random.default_rng(1)
    x = rng.random((64, 3, 8, 8), dtype=np.float32)
    y = rng.integers(0, 4, 64)
    model = _cnn("embedding")()
    model.set_input_norm(*fflib.channel_stats(x, (3, 8, 8)))
    hist = fflib.fit(model, x.reshape(64, -1), y, epochs=2, batch_size=16, augment="crop1", progress=False)
    assert all(np.isfinite(r["block_loss"]).all() for r in hist["epochs"])
    scale, shift = model.input_affine
    mean, std = model.input_norm
    np.testing.assert_allclose(scale.reshape(3, 64)[:, 0], 1 / std, rtol=1e-6)
    np.testing.assert_allclose(shift.reshape(3, 64)[:, 0], -mean / std, rtol=1e-6)


def test_channel_stats_against_numpy():
    rng = np.random.default_rng(2)
    x = (rng.random((50, 3, 5, 4)) * [[[2.0]], [[0.5]], [[1.0]]] + [[[1.0]], [[0.0]], [[-3.0]]]).astype(np.float32)
    mean, std = fflib.channel_stats(x, (3, 5, 4), chunk=7)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, x64.std(axis=(0, 2, 3)), rtol=1e-9)
    mean2, std2 = fflib.channel_stats(x.reshape(50, -1), (3, 5, 4))
    np.testing.assert_allclose(mean2, mean, rtol=1e-12)
    far = (x64 + 1e6).astype(np.float64)        # a large offset: no cancellation in the variance
    np.testing.assert_allclose(fflib.channel_stats(far, (3, 5, 4), chunk=7)[1], x64.std(axis=(0, 2, 3)), rtol=1e-6)
    with pytest.raises(ValueError, match="constant"):
        fflib.channel_stats(np.ones((4, 3, 2, 2), np.float32), (3, 2, 2))
    with pytest.raises(ValueError, match="finite"):
        fflib.channel_stats(np.full((4, 12), np.nan, np.float32), (3, 2, 2))
    with pytest.raises(ValueError, match="12 values per sample"):
        fflib.channel_stats(np.ones((4, 10), np.float32), (3, 2, 2))


def test_saved_and_loaded_and_rebuilt(tmp_path):
    rng = np.random.default_rng(3)
    model = _cnn("onehot")()
    model.set_input_norm(*PER_CHANNEL)
    x = rng.random((8, 192), dtype=np.float32)
    model.train_step(x, rng.integers(0, 4, 8))
    model.eval()
    loaded = FFModel.load(model.save(tmp_path / "m"))
    for got, want in zip(loaded.input_norm, PER_CHANNEL):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loaded.goodness(x), model.goodness(x))
    arch = json.loads(json.dumps(model.architecture()))     # JSON-able
    assert arch["input_norm"] == {"mean": PER_CHANNEL[0].tolist(), "std": PER_CHANNEL[1].tolist()}
    rebuilt = FFModel.from_architecture(arch)
    np.testing.assert_array_equal(rebuilt.input_affine[0], model.input_affine[0])
    model.set_input_norm(None)
    assert model.input_norm is None and model.input_affine is None and "input_norm" not in model.architecture()


@pytest.mark.parametrize("norm, err, match", [
    ((0.5, 0.0), ValueError, r"std must be > 0, got 0\.0"),
    ((0.5, -1.0), ValueError, "std must be > 0"),
    ((np.nan, 1.0), ValueError, "mean must be finite, got nan"),
    ((0.0, np.inf), ValueError, "std must be finite"),
    (([0.1, 0.2], 1.0), ValueError, r"3 per-channel values or 192 values .* got shape \(2,\)"),
    (("a", 1.0), TypeError, "mean must be a number"),
    ((0.1,), ValueError, r"\(mean, std\) pair"),
    ({"mean": 0.1}, ValueError, "keys 'mean' and 'std'"),
])
def test_bad_input_norm_is_named(norm, err, match):
    with pytest.raises(err, match=match):
        FFModel(models.conv_block(3, 4, 3), (3, 8, 8), 4, loss="symba", label_encoding="onehot", input_norm=norm)


def test_core_refuses_wrong_affine_arrays():
    net = _mlp()._net
    with pytest.raises(TypeError, match="scale must be a numpy.ndarray of float32"):
        net.set_input_affine(np.ones(48), np.zeros(48, np.float32))
    with pytest.raises(ValueError, match="shift must hold 48 values"):
        net.set_input_affine(np.ones(48, np.float32), np.zeros(47, np.float32))
    with pytest.raises(ValueError, match="both scale and shift"):
        net.set_input_affine(np.ones(48, np.float32), None)
    bad = np.ones(48, np.float32)
    bad[5] = np.inf
    with pytest.raises(ValueError, match=r"scale\[5\] must be finite"):
        net.set_input_affine(bad, np.zeros(48, np.float32))
    assert net.input_affine() is None


def test_cli_input_norm_channel_uses_the_training_split(tmp_path):
    """--input-norm channel takes the statistics of the training images only (the validation
    split held out), records it in the JSON, and the saved model carries them."""
    out, saved = tmp_path / "r.json", tmp_path / "m.npz"
    subprocess.run([sys.executable, "-m", "fflib", "train", "--epochs", "1", "--subset", "3000", "--val-size", "1000",
                    "--input-norm", "channel", "--no-progress", "--out", str(out), "--save", str(saved)],
                   check=True, env=child_env(), capture_output=True, cwd=tmp_path)
    res = json.loads(out.read_text())
    assert res["config"]["input_norm"] == "channel"
    assert res["test_error"]["one_pass"] < 50
    x, _ = fflib.datasets.load_sample(True)
    mean, std = fflib.channel_stats(x[:3000], (1, 28, 28))      # the first 3,000 of the 9,000 kept
    model = FFModel.load(saved)
    np.testing.assert_allclose(model.input_norm[0], np.repeat(mean, 784), rtol=1e-12)
    np.testing.assert_allclose(model.input_norm[1], np.repeat(std, 784), rtol=1e-12)
    bad = subprocess.run([sys.executable, "-m", "fflib", "train", "--method", "scff", "--epochs", "1",
                          "--input-norm", "channel"], env=child_env(), capture_output=True, text=True,
                         cwd=tmp_path)
    assert bad.returncode == 2 and "--input-norm does not apply to --method scff" in bad.stderr


def test_channel_stats_on_a_flat_model_says_why():
    """fflib.channel_stats(x, (3, 32, 32)) gives 3 values; a flat 3072-input MLP takes 1 or 3072
    (the message offered "3072 per-channel values or 3072 values")."""
    x = np.random.default_rng(0).random((20, 3072), dtype=np.float32)
    with pytest.raises(ValueError, match=r"3072 values, one per feature \(a flat model.*image-shaped model"):
        FFModel(fflib.mlp([3072, 8]), 3072, 10, input_norm=fflib.channel_stats(x, (3, 32, 32)))
