"""Fourier labels with per-class modes (Scodellaro et al. 2023, spatially extended labels): the
C core's patterns against a float64 NumPy reference of the formula, the encoding in the goodness,
save/load of the mode table (and older files without one), bad tables rejected with clear
errors, label sharing unaffected, the CLI flag, and the first conv block of the survey's MNIST
CNN learning with modes fitted to the data (chance with the default plane waves)."""
import io
import json

import numpy as np
import pytest

import fflib
from fflib import _core, labels, models


def reference_patterns(modes, H, W):
    """p_k(h, w) = sum_m a cos(2 pi (h cos theta + w sin theta) / lambda + phi), float64."""
    modes = np.asarray(modes, np.float64).reshape(len(modes), -1, 4)
    out = np.zeros((len(modes), H, W))
    for k, rows in enumerate(modes):
        for lam, theta, a, phi in rows:
            for h in range(H):
                for w in range(W):
                    out[k, h, w] += a * np.cos(2 * np.pi * (h * np.cos(theta) + w * np.sin(theta)) / lam + phi)
    return out.reshape(len(modes), H * W)


def random_table(rng, K, M):
    return np.stack([rng.uniform(2.0, 40.0, (K, M)), rng.uniform(-np.pi, 2 * np.pi, (K, M)),
                     rng.uniform(-2.0, 2.0, (K, M)), rng.uniform(-7.0, 7.0, (K, M))], axis=2)


def fourier_model(shape=(2, 7, 9), K=4, modes=None, **kw):
    C, H, W = shape
    layers = [fflib.Conv2d(C, 3, 3), fflib.ReLU()]
    return fflib.FFModel(layers, shape, K, label_encoding="fourier", fourier_modes=modes, head_blocks=None,
                         **kw)


@pytest.mark.parametrize("K, M, shape", [(3, 1, (1, 5, 5)), (4, 3, (2, 7, 9)), (11, 2, (3, 13, 6))])
def test_c_patterns_match_the_float64_reference(rng, K, M, shape):
    modes = random_table(rng, K, M)
    m = fourier_model(shape, K, modes)
    np.testing.assert_array_equal(m.fourier_modes, modes)              # stored as given, float64
    ref = reference_patterns(modes, shape[1], shape[2])
    np.testing.assert_allclose(m.label_patterns, ref, rtol=0, atol=2e-6 * np.abs(modes[:, :, 2]).sum())
    np.testing.assert_allclose(labels.fourier_patterns(modes, shape), ref, rtol=0, atol=1e-12)
    # a (K, 4) table is one mode per class, a 3-column one has phase 0
    one = fourier_model(shape, K, modes[:, 0, :])
    np.testing.assert_allclose(one.label_patterns, reference_patterns(modes[:, :1], *shape[1:]), atol=1e-5)
    three = fourier_model(shape, K, modes[:, 0, :3])
    assert (three.fourier_modes[:, :, 3] == 0).all()
    np.testing.assert_allclose(three.label_patterns,
                               reference_patterns(np.concatenate([modes[:, :1, :3], np.zeros((K, 1, 1))], 2),
                                                  *shape[1:]), atol=1e-5)


def test_default_scheme_is_fflibs_original_mapping():
    K, H, W = 10, 28, 28
    m = fourier_model((1, H, W), K)
    k = np.arange(K)
    want = np.stack([28.0 / (2 + k % 3), np.pi * k / K, np.ones(K), np.zeros(K)], axis=1)[:, None, :]
    np.testing.assert_allclose(m.fourier_modes, want, rtol=1e-15)
    np.testing.assert_array_equal(m.fourier_modes, fourier_model((1, H, W), K, "fflib").fourier_modes)
    np.testing.assert_allclose(m.label_patterns, reference_patterns(want, H, W), atol=2e-6)
    assert fflib.FFModel(fflib.mlp([784, 10]), (1, 28, 28), 10).fourier_modes is None     # one-hot


def test_encoding_adds_label_value_times_the_pattern_to_every_channel(rng):
    """Goodness of Linear(identity) -> ReLU on inputs offset to stay positive is ||x + v p_k||^2."""
    C, H, W, K, v = 2, 4, 5, 3, 0.37
    D = C * H * W
    modes = random_table(rng, K, 2)
    m = fflib.FFModel([fflib.Flatten(), fflib.Linear(D, D), fflib.ReLU()], (C, H, W), K, label_encoding="fourier",
                      fourier_modes=modes, label_value=v, head_blocks=None)
    m.layers[1].weight[...] = np.eye(D, dtype=np.float32)
    m.layers[1].bias[...] = 0
    x = (rng.random((6, D)) + 20.0).astype(np.float32)
    P = reference_patterns(modes, H, W)
    want = np.stack([((x.astype(np.float64) + v * np.tile(P[k], C)) ** 2).sum(1) for k in range(K)], axis=1)
    np.testing.assert_allclose(m.goodness(x)[:, :, 0], want, rtol=1e-5)
    # changing the table after construction recomputes the patterns the core adds
    m._net.set_fourier_modes(np.ascontiguousarray(modes[:, :1]))
    P1 = reference_patterns(modes[:, :1], H, W)
    want1 = np.stack([((x.astype(np.float64) + v * np.tile(P1[k], C)) ** 2).sum(1) for k in range(K)], axis=1)
    np.testing.assert_allclose(m.goodness(x)[:, :, 0], want1, rtol=1e-5)


def test_save_load_round_trip_keeps_the_table(rng, tmp_path):
    modes = random_table(rng, 4, 3)
    m = fourier_model(modes=modes, label_value=0.3, seed=3)
    x = rng.random((5, 126), dtype=np.float32)
    y = rng.integers(0, 4, 5)
    m.train_step(x, y, (y + 1) % 4)
    back = fflib.FFModel.load(m.save(tmp_path / "f.npz"))
    np.testing.assert_array_equal(back.fourier_modes, modes)
    np.testing.assert_array_equal(back.label_patterns, m.label_patterns)
    np.testing.assert_array_equal(back.goodness(x), m.goodness(x))
    assert json.loads(json.dumps(m.architecture()))["fourier_modes"] == modes.tolist()
    # a file from before the table existed (no fourier_modes field) loads with the original mapping
    old = fourier_model(seed=3)
    data = dict(np.load(old.save(tmp_path / "old.npz")))
    meta = json.loads(str(data["__meta__"]))
    del meta["architecture"]["fourier_modes"]
    data["__meta__"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, **data)
    buf.seek(0)
    legacy = fflib.FFModel.load(buf)
    np.testing.assert_array_equal(legacy.fourier_modes, old.fourier_modes)
    np.testing.assert_array_equal(legacy.goodness(x), old.goodness(x))
    # a corrupt table in a file is refused, naming the field
    meta["architecture"]["fourier_modes"] = [[[1.0, 0.0, 1.0, 0.0]]] * 4
    data["__meta__"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, **data)
    buf.seek(0)
    with pytest.raises(ValueError, match=r"fourier_modes.*aliases onto a longer wave"):
        fflib.FFModel.load(buf)


@pytest.mark.parametrize("modes, exc, msg", [
    (np.ones((3, 4)) * 4, ValueError, r"shape \(4, 4\) or \(4, M, 4\).*got shape \(3, 4\)"),
    (np.ones((4, 5)) * 4, ValueError, r"got shape \(4, 5\)"),
    (np.ones(4) * 4, ValueError, r"got shape \(4,\)"),
    (np.ones((4, 0, 4)), ValueError, r"1 <= M"),
    ([[4.0, 0, 1, 0]] * 3 + [[4.0, np.nan, 1, 0]], ValueError, r"finite: class 3 mode 0 orientation is nan"),
    ([[4.0, 0, 1, 0]] * 3 + [[np.inf, 0, 1, 0]], ValueError, r"finite: class 3 mode 0 wavelength is inf"),
    ([[4.0, 0, 1, 0]] * 3 + [[0.0, 0, 1, 0]], ValueError, r"positive \(in pixels\): class 3 mode 0 has 0.0"),
    ([[4.0, 0, 1, 0]] * 2 + [[-3.0, 0, 1, 0]] * 2, ValueError, r"must be positive.*class 2 mode 0 has -3.0"),
    ([[1.5, 0, 1, 0]] * 4, ValueError, r"class 0 mode 0 \(wavelength 1.5, orientation 0.0\).*aliases"),
    ([[4.0, 0, 1, 0]] * 3 + [[1.3, np.pi / 4, 1, 0]], ValueError, r"class 3 mode 0 .*aliases"),
    (np.array([["a", "b", "c", "d"]] * 4), TypeError, r"real numbers, got dtype <U1"),
    (np.ones((4, 4), bool), TypeError, r"real numbers, got dtype bool"),
    ([[4.0, 0, 1], [4.0, 0]], TypeError, r"array of shape"),
    ("scodellaro", ValueError, r"one of \['fflib'\], got 'scodellaro'"),
])
def test_bad_tables_are_rejected(modes, exc, msg):
    with pytest.raises(exc, match=msg):
        fourier_model(modes=modes)


def test_table_needs_fourier_encoding_and_core_checks_its_own_inputs():
    with pytest.raises(ValueError, match="fourier_modes needs label_encoding 'fourier', got label_encoding 'onehot'"):
        fflib.FFModel([fflib.Conv2d(1, 2, 3), fflib.ReLU()], (1, 6, 6), 3, fourier_modes=np.ones((3, 4)) * 3)
    net = fourier_model()._net
    with pytest.raises(TypeError, match="float64, got numpy.float32"):
        net.set_fourier_modes(np.ones((4, 1, 4), np.float32))
    with pytest.raises(ValueError, match=r"shape \(4, M, 4\).*got \(4, 4\)"):
        net.set_fourier_modes(np.ones((4, 4)))
    bad = np.ones((4, 2, 4)) * 3
    bad[2, 1, 0] = -1.0                      # the core's own check (the Python layer asks for >= 2)
    before = net.label_patterns()
    with pytest.raises(ValueError, match=r"fourier_modes\[2, 1\] wavelength must be > 0 pixels, got -1"):
        net.set_fourier_modes(bad)
    np.testing.assert_array_equal(net.label_patterns(), before)       # nothing changed
    onehot = _core.Net((1, 5, 5), 3, 0)
    with pytest.raises(RuntimeError, match="need label_encoding fourier, this net's is onehot"):
        onehot.set_fourier_modes(None)


def test_label_sharing_does_not_change_fourier_training(rng):
    """Label sharing only takes the flat one-hot path: a Fourier net trains bit for bit the same with
    it on or off."""
    modes = labels.fit_fourier_modes(rng.random((40, 1, 28, 28)), np.arange(40) % 10, 10, 4)
    a, b = (models.build("cnn", "mnist", seed=5, label_encoding="fourier", fourier_modes=modes,
                         label_value=0.1) for _ in range(2))
    b._net.set_share_labels(False)
    x, y = rng.random((6, 784), dtype=np.float32), rng.integers(0, 10, 6)
    for _ in range(2):
        np.testing.assert_array_equal(a.train_step(x, y, (y + 3) % 10), b.train_step(x, y, (y + 3) % 10))
    np.testing.assert_array_equal(a.goodness(x), b.goodness(x))


def test_fit_fourier_modes_reproduces_the_class_templates(rng):
    K, H, W = 3, 7, 9                        # odd sizes: no Nyquist modes
    x = rng.random((30, 1, H, W))
    y = np.arange(30) % K
    full = labels.fit_fourier_modes(x, y, K, modes_per_class=(H * W - 1) // 2)   # every mode but the constant
    T = np.stack([x[y == k, 0].mean(0) - x[:, 0].mean(0) for k in range(K)]).reshape(K, -1)
    T -= T.mean(1, keepdims=True)            # the constant term is left out
    T /= np.sqrt((T ** 2).mean(1, keepdims=True))
    P = reference_patterns(full, H, W)
    np.testing.assert_allclose(P, T, rtol=0, atol=1e-9)     # the Fourier series of T_k, exactly
    np.testing.assert_allclose(np.sqrt((P ** 2).mean(1)), 1.0, rtol=1e-9)
    few = labels.fit_fourier_modes(x.reshape(30, -1), y, K, 3, input_shape=(1, H, W))
    assert few.shape == (K, 3, 4)
    assert (labels.check_fourier_modes(full, K) == full).all()               # valid waves of the grid
    np.testing.assert_allclose(fourier_model((1, H, W), K, full).label_patterns, P, atol=1e-5)
    with pytest.raises(ValueError, match=r"classes \[2\] have none"):
        labels.fit_fourier_modes(x[y < 2], y[y < 2], K, 3)
    with pytest.raises(ValueError, match="modes_per_class must be in"):
        labels.fit_fourier_modes(x, y, K, 0)


def test_cli_fourier_modes_errors(monkeypatch, capsys, tmp_path):
    from fflib import cli
    for args, msg in [(["--fourier-modes", "fit:4"], "--fourier-modes needs --label-encoding fourier"),
                      (["--label-encoding", "fourier", "--fourier-modes", "fit:x"], "fit:M needs an int M"),
                      (["--label-encoding", "fourier", "--fourier-modes", str(tmp_path / "none.npy")],
                       "cannot read"),
                      (["--label-encoding", "fourier", "--fourier-modes", "fit:0"], "modes_per_class must be")]:
        with pytest.raises(SystemExit):
            cli.main(["train", "--model", "cnn", "--epochs", "1", "--no-progress"] + args)
        assert msg in capsys.readouterr().err, args
    np.save(tmp_path / "bad.npy", np.ones((10, 4)))      # wavelength 1 < 2
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "cnn", "--label-encoding", "fourier", "--fourier-modes",
                  str(tmp_path / "bad.npy"), "--epochs", "1", "--no-progress"])
    assert "aliases onto a longer wave" in capsys.readouterr().err


def _first_block(**kw):
    """The survey MNIST CNN's first block alone (LenNorm(rms) -> Conv 5x5, 32 -> ReLU -> MaxPool 2), with
    the zoo's loss settings: FF trains each block on its own loss, so this is block 1 of models.build("cnn")."""
    return fflib.FFModel(models.conv_block(1, 32, 5, pool=2, norm="rms"), (1, 28, 28), 10, loss="symba",
                         goodness="mean", threshold=1.0, norm="rms", head_blocks=None, **kw)


def test_first_conv_block_learns_with_fitted_modes():
    """With the default plane waves (and one-hot) the first conv block stays at chance (loss ln 2); with
    16 modes per class fitted to the class templates at label_value 0.1 it learns.  Measured on the
    embedded MNIST sample (2,000 training images, 2 epochs, 1,000 test images): 0.509 block-1
    accuracy, loss 0.662 (default waves: 0.098, 0.693)."""
    x, y = fflib.datasets.load_sample(train=True)
    xt, yt = fflib.datasets.load_sample(train=False)
    x, y, xt, yt = x[:2000], y[:2000], xt[:1000], yt[:1000]
    table = labels.fit_fourier_modes(x, y, 10, 16)
    fitted = _first_block(label_encoding="fourier", fourier_modes=table, label_value=0.1)
    h = fflib.fit(fitted, x, y, epochs=2, batch_size=100, progress=False)
    acc = fitted.block_accuracy(xt, yt)[0]
    assert acc > 0.35, acc
    assert h["epochs"][-1]["block_loss"][0] < 0.68
    waves = _first_block(label_encoding="fourier")
    h = fflib.fit(waves, x, y, epochs=1, batch_size=100, progress=False)
    assert waves.block_accuracy(xt, yt)[0] < 0.2
    assert abs(h["epochs"][-1]["block_loss"][0] - np.log(2)) < 0.005


def test_pytorch_twin_and_export_use_the_models_table(rng):
    torch = pytest.importorskip("torch")
    from fflib.torch import to_module
    modes = random_table(rng, 4, 2)
    m = fourier_model(modes=modes, label_value=0.7, seed=2)
    x = rng.random((5, 2, 7, 9), dtype=np.float32)
    y = np.array([0, 3, 1, 2, 3])
    net = to_module(m)
    want = x.reshape(5, 2, -1) + 0.7 * m.label_patterns[y][:, None, :]
    np.testing.assert_allclose(net.encode(torch.from_numpy(x), torch.from_numpy(y)).numpy().reshape(5, 2, -1),
                               want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(net.goodness(torch.from_numpy(x)).detach().numpy(), m.goodness(x.reshape(5, -1)),
                               rtol=1e-4, atol=1e-5)


def test_exported_c_adds_the_models_fitted_patterns(tmp_path):
    """export_c writes the model's own label patterns (here fitted modes): the exported program's
    goodness equals the model's."""
    import shutil
    from fflib import export
    if shutil.which("gcc") is None:
        pytest.skip("no host gcc to compile the exported C")
    x, y = fflib.datasets.load_sample(True)
    x, y = x[:300], y[:300]
    table = labels.fit_fourier_modes(x, y, 10, 8)
    model = fflib.FFModel(fflib.mlp([784, 40, 20], norm="l2"), (1, 28, 28), 10, label_encoding="fourier",
                          fourier_modes=table, label_value=0.3, loss="ff", goodness="sum", threshold=2.0)
    fflib.fit(model, x, y, epochs=1, batch_size=100, progress=False)
    model.eval()
    info = export.export_c(model, tmp_path, inference="multipass")
    g = export.run_host(export.build_host(info), info, x[:20].reshape(20, -1), "goodness")
    gp = model.goodness(x[:20])
    assert np.abs(g - gp).max() <= 1e-5 * np.abs(gp).max()
