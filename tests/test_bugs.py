"""Regression tests for the Python-side bugs of issue 9 ("Bugs to fix on the way")."""
import json
import numpy as np
import pytest

import fflib
from fflib import cli, models, routines
from fflib.nn import Flatten, Linear, ReLU


def zoo_model(name):
    return models.build(name, "mnist" if name in ("mlp", "cnn", "cwcomp") else "cifar10")


def small_sample(n):
    """A stand-in for datasets.load_sample: its first n images (the CLI path stays real)."""
    real = fflib.datasets.load_sample

    def load(train=True):
        x, y = real(train)
        return x[:n], y[:n]
    return load


# --------------------------------------------- chunked + alternate, every model and chunk size
@pytest.mark.parametrize("name", models.ZOO)
def test_alternating_chunks_train_every_zoo_model_and_chunk_size(name, rng):
    """Alternating chunkings once had to have the same block count, which held only when the
    unit count modulo the chunk size was 1 (cwcomp with chunk 2 exited 2 on the CLI)."""
    m = zoo_model(name)
    n_units = len(routines.unit_ranges(m))
    x = rng.random((4,) + m.input_shape, dtype=np.float32).reshape(4, -1)
    y = np.arange(4)
    for size in range(1, n_units + 2):
        before = [p.copy() for p in m.parameters()]
        hist = fflib.fit(m, x, y, epochs=1, batch_size=2, routine="chunked", chunk_size=size, alternate=True,
                         progress=False)
        rec = hist["epochs"][0]
        cut, shifted = (routines.block_ranges(m, "chunked", size, s) for s in (0, 1))
        assert m.blocks == cut                                   # left as the first chunking
        assert np.isfinite(rec["block_loss"]).all() and len(rec["block_loss"]) == len(cut)
        if shifted != cut:                                       # both chunkings ran, one step each
            assert len(rec["block_loss_shifted"]) == len(shifted)
            assert np.isfinite(rec["block_loss_shifted"]).all() and min(rec["block_loss_shifted"]) > 0
        assert all(not np.array_equal(a, b) for a, b in zip(before, m.parameters())
                   if a.ndim > 1), f"{name}, chunk {size}: a weight was not trained"


def test_alternating_chunks_with_other_block_counts_need_simultaneous_order(rng):
    m = zoo_model("cwcomp")                 # 4 units: chunks of 2 give 2 and 3 blocks
    x = rng.random((4, 784), dtype=np.float32)
    with pytest.raises(ValueError, match="2 and 3 blocks, so the .layerwise. order cannot follow them"):
        fflib.fit(m, x, np.arange(4), epochs=1, routine="chunked", chunk_size=2, alternate=True,
                  order="layerwise", progress=False)


def test_cli_cwcomp_chunked_alternate_exits_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli.datasets, "load_sample", small_sample(128))
    code = cli.main(["train", "--model", "cwcomp", "--routine", "chunked", "--alternate", "--epochs", "1",
                     "--dataset", "sample", "--no-progress", "--threads", "1", "--out", str(tmp_path / "r.json")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "test error: one-pass" in out.out
    # the shifted cut's losses (3 blocks: units 1, 2-3, 4) reach the JSON and the CSV
    rec = json.loads((tmp_path / "r.json").read_text())["epochs"][0]
    assert len(rec["block_loss"]) == 2 and len(rec["block_loss_shifted"]) == 3
    header = (tmp_path / "r.csv").read_text().splitlines()[0].split(",")
    assert header[4:9] == ["block_loss_0", "block_loss_1", "block_loss_shifted_0", "block_loss_shifted_1",
                           "block_loss_shifted_2"]


# --------------------------------------------- the classifier's head rate follows the schedule
@pytest.mark.parametrize("schedule, factor", [({"cooldown": True}, 0.0),
                                              ({"milestones": [2], "gamma": 0.1}, 0.1)])
def test_classifier_head_lr_follows_the_schedule(schedule, factor, rng):
    x = rng.random((60, 8), dtype=np.float32)
    y = rng.integers(0, 3, 60)
    clf = fflib.FFClassifier(hidden=(8, 8), epochs=4, batch_size=30, lr=0.002, head_lr=0.02,
                             random_state=0, **schedule).fit(x, y)
    net = clf.model_._net
    assert net.get_opt(-1)["lr"] == pytest.approx(0.02 * factor, abs=1e-9)   # once stayed at 0.02
    assert net.get_opt(1)["lr"] == pytest.approx(0.002 * factor, abs=1e-9)


# --------------------------------------------- Fourier labels on a flat input
def test_fourier_labels_on_a_flat_input_say_why():
    with pytest.raises(ValueError, match="label_encoding 'fourier' needs an image input") as e:
        fflib.FFModel(fflib.mlp([784, 10]), 784, 10, label_encoding="fourier")
    assert "label encoding 1" not in str(e.value)


def test_cli_fourier_on_the_mlp_is_a_clear_one_line_error(monkeypatch, capsys):
    monkeypatch.setattr(cli.datasets, "load_sample", small_sample(32))
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--label-encoding", "fourier", "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "needs an image input" in err and "label encoding 1" not in err


# --------------------------------------------- head_blocks with negative indices
def test_head_blocks_accept_negative_indices():
    make = lambda hb: fflib.FFModel(fflib.mlp([12, 8, 8, 8]), 12, 3, head_blocks=hb)  # noqa: E731
    assert make([-2, -1])._head_layers == make([1, 2])._head_layers
    assert make(-1)._head_layers == make([2])._head_layers
    for bad in ([3], [-4], [0, -3], []):
        with pytest.raises(ValueError, match=r"head_blocks must be distinct block indices in \[-3, 3\)"):
            make(bad)
    m = make([-1])
    m2 = fflib.FFModel.from_architecture(m.architecture())
    assert m2._head_layers == m._head_layers


# --------------------------------------------- multi-pass after backprop: only trained blocks
def test_multipass_after_backprop_uses_only_the_trained_output(rng):
    """routine="backprop" trains one block whose loss reads the last layer only; the hidden
    layers' goodness was never trained, so evaluate() must not add it."""
    x = rng.random((200, 10), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64) + (x[:, 1] > 0.5)
    m = fflib.FFModel(fflib.mlp([10, 16, 16, 16]), 10, 3, head_blocks=None)
    fflib.fit(m, x, y, epochs=2, batch_size=50, routine="backprop", progress=False)
    assert m.num_blocks == 1
    res = fflib.evaluate(m, x, y)
    g = m.goodness(x)                                     # (B, K, 1): the trained output only
    assert res["multi_pass"] == pytest.approx(100.0 * np.mean(g[:, :, 0].argmax(1) != y))
    assert res["multi_pass"] == pytest.approx(100.0 * (1 - res["block_accuracy"][-1]))
    assert len(res["block_accuracy"]) == 3                # every unit is still diagnosed
    # chunked: the chunk ends; greedy: every unit (unchanged)
    m.set_block_ranges(routines.block_ranges(m, "chunked", 2))
    units = m.goodness(x)
    m.set_block_ranges(routines.unit_ranges(m))
    g = m.goodness(x)
    assert units.shape[2] == 2
    assert fflib.evaluate(m, x, y)["multi_pass"] == pytest.approx(100.0 * np.mean(g.sum(2).argmax(1) != y))
    m.set_block_ranges(routines.block_ranges(m, "chunked", 2))
    assert fflib.evaluate(m, x, y)["multi_pass"] == pytest.approx(
        100.0 * np.mean(g[:, :, [1, 2]].sum(2).argmax(1) != y))


# --------------------------------------------- one-hot labels on images: every channel plane
def test_onehot_label_on_images_fills_the_first_k_pixels_of_every_plane():
    """What the docstrings say (FFModel, fflib.h): one-hot in the first K pixels of EVERY
    channel plane of an image.  A Linear layer with weight diag(1..D) and sum goodness reads
    the encoded input back from the goodness of an all-zero image."""
    C, H, W, K, v = 3, 3, 3, 4, 0.5
    D = C * H * W
    m = fflib.FFModel([Flatten(), Linear(D, D, bias=False), ReLU()], (C, H, W), K, goodness="sum",
                      label_value=v, head_blocks=None)
    m.layers[1].weight[...] = np.diag(np.arange(1, D + 1, dtype=np.float32))
    g = m.goodness(np.zeros((1, D), np.float32))[0, :, 0]
    for k in range(K):
        every_plane = [c * H * W + k for c in range(C)]
        assert g[k] == pytest.approx(sum(((j + 1) * v) ** 2 for j in every_plane), rel=1e-6)


# --------------------------------------------- error percentages read as the fraction they are
def test_error_percentages_are_the_float_nearest_wrong_over_n(rng):
    """evaluate() computed 100 * mean(wrong), so a JSON could read 46.300000000000004 for 463
    wrong of 1,000; every error is now 100 * wrong / n, the float nearest the exact fraction (the
    PyTorch twin's and the label-free probe's too)."""
    from fflib.train import error_percent
    y = np.zeros(1000, dtype=np.int64)
    for wrong in range(1001):
        pred = np.r_[np.ones(wrong, np.int64), np.zeros(1000 - wrong, np.int64)]
        v = error_percent(pred, y)
        assert v == wrong / 10 and repr(v) == repr(round(wrong / 10, 1))
    assert 100.0 * np.mean(np.r_[np.ones(463), np.zeros(537)] != 0) != 46.3     # what it was
    x = rng.random((1000, 10), dtype=np.float32)
    yy = rng.integers(0, 3, 1000)
    m = fflib.FFModel(fflib.mlp([10, 16, 16]), 10, 3)
    fflib.fit(m, x[:200], yy[:200], epochs=1, batch_size=50, progress=False)
    res = fflib.evaluate(m, x, yy)
    g = m.goodness(x)
    for key, pred in (("multi_pass", g.sum(2).argmax(1)), ("one_pass", m.predict_onepass(x))):
        wrong = int(np.count_nonzero(pred != yy))
        assert res[key] == 100.0 * wrong / 1000 and len(repr(res[key]).split(".")[1]) == 1, (key, res[key])
