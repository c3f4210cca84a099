"""The one-pass head's dropout (``head_dropout``, the SCFF authors' probe regularisation):
the C step against a float64 NumPy reference of one SGD step of a softmax head on the masked
features, the mask's rate, inference untouched, checks, save/load and the CLI."""
import json

import numpy as np
import pytest

import fflib


def _probe_model(p, seed=0):
    # label-free blocks read by the head: the step below trains the head alone (a linear probe)
    return fflib.FFModel(fflib.mlp([30, 64, 64], norm="rms"), 30, 5, loss="ff", goodness="mean", norm="rms",
                         label_encoding="none", head_blocks=[0, 1], seed=seed, head_dropout=p)


def _softmax(z):
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


@pytest.mark.parametrize("p", [0.0, 0.3, 0.7])
def test_head_step_is_sgd_on_the_masked_features(p):
    """One sample per step (B = 1), SGD lr 0.01: the head's update is -lr * (softmax(W m + b) -
    onehot) (x) m with m = f * mask / (1 - p), f the features.  The mask is read off the update
    (a kept feature's column moves, a dropped one's does not) and the whole update checked
    against the float64 reference with it; over the steps about p of the features drop."""
    rng = np.random.default_rng(1)
    m = _probe_model(p)
    fflib.SGD(m, lr=0.01)
    off = np.zeros(m.num_blocks, np.uint8)
    dropped = kept = 0
    for _ in range(12):
        x = rng.random((1, 30), dtype=np.float32)
        y = rng.integers(0, 5, 1)
        f = m.features(x)[0].astype(np.float64)
        W, b = m.head_weight.astype(np.float64), m.head_bias.astype(np.float64)
        m.train_step(x, y, active=off, train_head=True, x_neg=x)
        dW = m.head_weight.astype(np.float64) - W
        # the mask as the update shows it; a zero (or float32-tiny) feature moves nothing either
        # way, so the reference agrees for it whatever its mask
        mask = (np.abs(dW).max(axis=0) > 0).astype(np.float64)
        live = np.abs(f) > 1e-3
        if p == 0.0:
            assert mask[live].all()
        dropped += int((live & (mask == 0)).sum())
        kept += int((live & (mask == 1)).sum())
        mf = f * mask / (1.0 - p)
        g = _softmax(W @ mf + b)
        g[y[0]] -= 1.0
        np.testing.assert_allclose(dW, -0.01 * np.outer(g, mf), rtol=1e-3, atol=2e-7)
        np.testing.assert_allclose(m.head_bias - b, -0.01 * g, rtol=1e-3, atol=2e-7)
    rate = dropped / (dropped + kept)
    assert abs(rate - p) < 0.08, rate      # about 1,000 live features: the binomial's sd is < 0.016


def test_inference_never_drops_and_the_setting_round_trips(tmp_path):
    x = np.random.default_rng(0).random((20, 30), dtype=np.float32)
    a, b = _probe_model(0.0), _probe_model(0.5)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))    # the same weights, no masks
    m = fflib.FFModel.load(b.save(tmp_path / "m.npz"))
    assert m.config["head_dropout"] == 0.5
    b.set_config(head_dropout=0.0)
    assert b._net.get_config()["head_dropout"] == 0.0
    for bad in (1.0, -0.1, float("nan"), "0.5"):
        with pytest.raises((ValueError, TypeError), match="head_dropout"):
            _probe_model(bad)


def test_refused_where_its_masks_cannot_follow():
    pytest.importorskip("torch")
    import fflib.torch as ft
    with pytest.raises(ValueError, match="head_dropout"):
        ft.TorchFF(_probe_model(0.2))
    m = fflib.FFModel(fflib.mlp([30, 16, 16]), 30, 5, head_dropout=0.2)
    x = np.random.default_rng(0).random((40, 30), dtype=np.float32)
    with pytest.raises(ValueError, match="head's dropout is not pipelined"):
        fflib.fit(m, x, np.arange(40) % 5, epochs=1, batch_size=10, pipeline=True)


def test_cli_head_dropout_reaches_the_probe(tmp_path):
    from fflib.cli import main
    out = tmp_path / "r.json"
    assert main(["train", "--method", "scff", "--layers", "40", "--epochs", "1", "--subset", "500", "--no-progress",
                 "--head-dropout", "0.2", "--out", str(out), "--save", str(tmp_path / "m.npz")]) == 0
    assert json.loads(out.read_text())["config"]["head_dropout"] == 0.2
    assert fflib.FFModel.load(str(tmp_path / "m.npz")).config["head_dropout"] == 0.2
    assert main(["train", "--epochs", "1", "--layers", "24", "--no-progress", "--head-dropout", "0.1",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["head_dropout"] == 0.1
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "1", "--head-dropout", "1"])
