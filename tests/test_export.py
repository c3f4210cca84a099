"""fflib.export: the exported C99 file compiles with the host gcc (-std=c99 -Wall -Wextra -Werror
-pedantic), computes what Python computes, and builds for a Cortex-M4.

Float32: identical classes; goodness (FFModel.goodness, every block and label) within 1e-5 of
the largest |goodness| of the same sample and block (values of a block that are tiny next to
its largest carry float32 cancellation noise of either side, so the tolerance is relative to
the block's scale).  int8: accuracy on the sample's 2,000-image test split within 0.3 points
of float Python, for the MLP and the MNIST CNN.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fflib
from fflib import export, models
from fflib.nn import FFModel, BatchNorm2d, Conv2d, Flatten, LenNorm, Linear, MaxPool2d, ReLU

from conftest import child_env, shared_data_dir

HAVE_GCC = shutil.which("gcc") is not None
HAVE_ARM = shutil.which("arm-none-eabi-gcc") is not None and shutil.which("arm-none-eabi-size") is not None
needs_gcc = pytest.mark.skipif(not HAVE_GCC, reason="no host gcc to compile the exported C")
GOODNESS_TOL = 1e-5


@pytest.fixture(scope="module")
def sample():
    x, y = fflib.datasets.load_sample(True)
    xt, yt = fflib.datasets.load_sample(False)
    return x.reshape(len(x), -1), y, xt.reshape(len(xt), -1), yt


@pytest.fixture(scope="module")
def cifar():
    """A few CIFAR-10 images when the real data is there, else uniform noise images (the
    exported code must match Python on any input)."""
    try:
        x, y = fflib.datasets.load("cifar10", root=shared_data_dir(), train=True)
        x, y = x[:384].reshape(384, -1), y[:384]
    except Exception:
        rng = np.random.default_rng(0)
        x, y = rng.random((384, 3072), dtype=np.float32), rng.integers(0, 10, 384)
    return x[:256], y[:256], x[256:], y[256:]


def _train(model, x, y, epochs=1, lr=0.003, batch_size=100):
    fflib.fit(model, x, y, epochs=epochs, batch_size=batch_size, optimizer=fflib.Adam(model, lr=lr),
              progress=False, random_state=0)
    return model.eval()


@pytest.fixture(scope="module")
def zoo(sample, cifar):
    """Each zoo model trained briefly: the MLP and CNN long enough for a meaningful int8
    accuracy (about 88 % and 74 % one-pass), the CwC models a few steps.  cwcomp is built at a
    quarter of its channels: 4 M weights take 9 s of gcc parsing alone (the full model is
    exported and checked by benchmarks/export_report.py)."""
    x, y, _, _ = sample
    cx, cy, _, _ = cifar
    return {
        "mlp": _train(models.build("mlp", "sample"), x, y, epochs=2),
        "cnn": _train(models.build("cnn", "sample"), x[:2000], y[:2000]),
        "cwcomp": _train(models.build("cwcomp", "sample", channels=(10, 20, 60, 120)), x[:256], y[:256],
                         lr=0.01, batch_size=128),
        "ff_tiny": _train(models.build("ff_tiny", "cifar10"), cx, cy, lr=0.01, batch_size=128),
        "ff_small": _train(models.build("ff_small", "cifar10"), cx, cy, lr=0.01, batch_size=128),
    }


def _goodness_error(g, gp):
    scale = np.abs(gp).max(axis=1, keepdims=True)
    return float((np.abs(g - gp) / np.maximum(scale, 1e-30)).max())


# (model, number of test samples checked): the CNN and CwC models run many MACs per sample
CASES = [("mlp", 2000), ("cnn", 200), ("cwcomp", 60), ("ff_tiny", 128), ("ff_small", 128)]


@needs_gcc
@pytest.mark.parametrize("name,n", CASES)
def test_float_export_matches_python(zoo, sample, cifar, tmp_path, name, n):
    model = zoo[name]
    xt = (sample[2] if name in ("mlp", "cnn", "cwcomp") else cifar[2])[:n]
    info = export.export_c(model, tmp_path, inference="onepass", name=f"m_{name}")
    exe = export.build_host(info)
    # one-pass: probabilities and classes
    p = export.run_host(exe, info, xt, "proba")
    pp = model.predict_proba(xt)
    np.testing.assert_allclose(p, pp, atol=1e-4)   # float32 noise of the logits, ~1e-5 relative
    cls, used, scores = export.run_host(exe, info, xt, "predict")
    np.testing.assert_array_equal(cls, model.predict_onepass(xt))
    assert (used == info["head_stop"]).all()
    # multi-pass: every block's class scores, and the classes they give
    m = min(n, 200 if name == "mlp" else 40)
    g = export.run_host(exe, info, xt[:m], "goodness")
    gp = model.goodness(xt[:m])
    assert g.shape == gp.shape
    assert _goodness_error(g, gp) < GOODNESS_TOL
    sel = info["multipass_blocks"]
    np.testing.assert_array_equal(g[:, :, sel].sum(axis=2).argmax(axis=1),
                                  model.predict_multipass(xt[:m], blocks=sel))
    # the header states the scratch the code runs in; a model with a 28x28 input needs more
    # than its input and less than all its activations at once
    with open(info["h_path"]) as f:
        assert f"#define M_{name.upper()}_SCRATCH_FLOATS {info['scratch_floats']}" in f.read()
    assert info["scratch_floats"] >= info["input_size"]


@needs_gcc
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_int8_accuracy_within_0p3_points(zoo, sample, tmp_path, name):
    model = zoo[name]
    x, _, xt, yt = sample
    info = export.export_c(model, tmp_path, int8=True, calibration=x[-200:], name=f"q_{name}")
    f32 = export.export_c(model, tmp_path / "f", name=f"f_{name}")
    assert info["weight_bytes"] < 0.35 * f32["weight_bytes"]   # biases, label maps stay float
    assert info["scratch_floats"] <= f32["scratch_floats"]    # a layer's int8 input takes a quarter
    exe = export.build_host(info)
    cls, _, _ = export.run_host(exe, info, xt, "predict")
    acc_q = (cls == yt).mean()
    acc_f = (model.predict_onepass(xt) == yt).mean()
    assert acc_f > 0.7   # trained enough for the comparison to mean something
    assert acc_q >= acc_f - 0.003, (acc_q, acc_f)
    # and the int8 code is a real quantisation: answers are close but not identical scores
    p = export.run_host(exe, info, xt[:200], "proba")
    assert 0 < np.abs(p - model.predict_proba(xt[:200])).mean() < 0.02


@needs_gcc
def test_multipass_and_early_exit(zoo, sample, cifar, tmp_path):
    """predict with multi-pass and early exit gives what reference_predict derives from the
    Python model: FF/SymBa block-major over labels (the CNN), CwC one-pass and multi-pass."""
    checks = [("cnn", sample[2][:20], "multipass", None), ("cnn", sample[2][:20], "multipass", 0.11),
              ("ff_tiny", cifar[2][:64], "onepass", 0.2), ("ff_tiny", cifar[2][:64], "multipass", 0.2)]
    exits = 0
    for i, (name, xt, inference, T) in enumerate(checks):
        model = zoo[name]
        info = export.export_c(model, tmp_path / str(i), inference=inference, early_exit=T, name="ee")
        exe = export.build_host(info)
        cls, used, _ = export.run_host(exe, info, xt, "predict")
        ref_cls, ref_used = export.reference_predict(model, xt, info)
        np.testing.assert_array_equal(cls, ref_cls)
        np.testing.assert_array_equal(used, ref_used)
        if T is not None:
            exits += int((used < info["num_blocks"]).sum())
    assert exits > 0   # the thresholds above do make some samples stop early


@needs_gcc
def test_batchnorm_folding_is_exact_enough(sample, tmp_path):
    """BatchNorm2d before a conv without padding and after a conv whose output nothing else
    reads are folded into the conv; the result still matches Python."""
    x, y, xt, _ = sample
    layers = [BatchNorm2d(1), Conv2d(1, 8, 3), BatchNorm2d(8), ReLU(), MaxPool2d(2), Flatten(),
              LenNorm("rms"), Linear(8 * 13 * 13, 50), ReLU()]
    model = FFModel(layers, (1, 28, 28), 10, loss="symba", goodness="mean", threshold=1.0, norm="rms",
                    head_blocks=[0, 1])
    _train(model, x[:1000], y[:1000])   # moves the running statistics and affine parameters
    assert not np.allclose(model.layers[2].running_mean, 0)
    info = export.export_c(model, tmp_path, inference="multipass")
    assert info["folded_batchnorms"] == 2
    with open(info["c_path"]) as f:
        assert "k_affine" not in f.read()
    exe = export.build_host(info)
    g = export.run_host(exe, info, xt[:100], "goodness")
    assert _goodness_error(g, model.goodness(xt[:100])) < 1e-4
    cls, _, _ = export.run_host(exe, info, xt[:300], "predict")
    np.testing.assert_array_equal(cls, model.predict_multipass(xt[:300]))
    np.testing.assert_allclose(export.run_host(exe, info, xt[:300], "proba"), model.predict_proba(xt[:300]),
                               atol=1e-5)


def test_arm_cortex_m4_build(zoo, tmp_path):
    if not HAVE_ARM:
        pytest.skip("arm-none-eabi-gcc not installed (apt-get install gcc-arm-none-eabi): the "
                    "Cortex-M4 build is not checked")
    model = zoo["ff_tiny"]
    f32 = export.arm_size(export.export_c(model, tmp_path / "f", name="tiny"))
    q = export.arm_size(export.export_c(model, tmp_path / "q", int8=True,
                                        calibration=np.random.default_rng(0).random((64, 3072)), name="tiny"))
    n_weights = sum(p.size for p in model.parameters())
    # flash holds every weight once (4 bytes float, 1 byte int8) plus code
    assert 4 * n_weights < f32["flash"] < 4 * n_weights + 64 * 1024
    assert n_weights < q["flash"] < 0.4 * f32["flash"]


def test_bad_arguments(zoo, tmp_path):
    model = zoo["mlp"]
    with pytest.raises(TypeError, match="model must be an fflib.FFModel"):
        export.export_c("model.npz", tmp_path)
    with pytest.raises(ValueError, match="inference must be"):
        export.export_c(model, tmp_path, inference="twopass")
    with pytest.raises(ValueError, match="early_exit must be"):
        export.export_c(model, tmp_path, inference="multipass", early_exit=1.5)
    with pytest.raises(ValueError, match="early_exit with inference='onepass'"):
        export.export_c(model, tmp_path, early_exit=0.9)
    with pytest.raises(ValueError, match="needs calibration"):
        export.export_c(model, tmp_path, int8=True)
    with pytest.raises(ValueError, match="calibration must have 784 values"):
        export.export_c(model, tmp_path, int8=True, calibration=np.zeros((5, 100)))
    with pytest.raises(ValueError, match="calibration is only used with int8"):
        export.export_c(model, tmp_path, calibration=np.zeros((5, 784)))
    with pytest.raises(ValueError, match="name must be a C identifier"):
        export.export_c(model, tmp_path, name="my-model")
    headless = FFModel(fflib.mlp([784, 20]), 784, 10, head_blocks=None)
    with pytest.raises(ValueError, match="needs a model with a one-pass head"):
        export.export_c(headless, tmp_path)
    with pytest.raises(ValueError, match="blocks must be block indices"):
        export.export_c(model, tmp_path, multipass_blocks=[5])


@needs_gcc
def test_cli_export_verify(tmp_path):
    """python -m fflib export MODEL.npz --out DIR --verify: exit 0 and an agreement line;
    bad arguments exit 2 with one line."""
    x, y = fflib.datasets.load_sample(True)
    model = FFModel(fflib.mlp([784, 30, 20], norm="rms"), 784, 10, loss="symba", goodness="mean",
                    threshold=1.0, norm="rms")
    _train(model, x.reshape(len(x), -1)[:2000], y[:2000])
    path = str(tmp_path / "m.npz")
    model.save(path)
    env = dict(child_env(), FFLIB_NUM_THREADS="1")
    run = [sys.executable, "-m", "fflib", "export", path]
    # from tmp_path: the repository root would shadow the installed package with the unbuilt sources
    root = str(tmp_path)
    r = subprocess.run(run + ["--out", str(tmp_path / "c"), "--verify", "--int8", "--calibration", "100"],
                       capture_output=True, text=True, env=env, cwd=root)
    assert r.returncode == 0, r.stderr
    assert "agreement with Python" in r.stdout and "verify: OK" in r.stdout
    assert os.path.exists(tmp_path / "c" / "ffmodel.c") and os.path.exists(tmp_path / "c" / "ffmodel.h")
    r = subprocess.run(run + ["--out", str(tmp_path / "d"), "--calibration", "5"], capture_output=True,
                       text=True, env=env, cwd=root)
    assert r.returncode == 2 and "--calibration needs --int8" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # a float32 verify of the first 300 test samples in 3 harness processes
    r = subprocess.run(run + ["--out", str(tmp_path / "e"), "--verify", "--verify-samples", "300",
                              "--threads", "3"], capture_output=True, text=True, env=env, cwd=root)
    assert r.returncode == 0, r.stderr
    assert "test (300 samples): agreement with Python 100.00%" in r.stdout and "verify: OK" in r.stdout
    for extra, msg in ((["--verify-samples", "10"], "--verify-samples needs --verify"),
                       (["--threads", "2"], "--threads needs --verify"),
                       (["--verify", "--verify-samples", "0"], "--verify-samples must be a positive number"),
                       (["--verify", "--threads", "-1"], "--threads must be a positive number"),
                       (["--verify", "--threads", "65"], "--threads must be at most 64")):
        r = subprocess.run(run + ["--out", str(tmp_path / "f"), *extra], capture_output=True, text=True,
                           env=env, cwd=root)
        assert r.returncode == 2 and msg in r.stderr, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


@needs_gcc
def test_run_host_splits_samples_over_processes(zoo, sample, tmp_path):
    """run_host(jobs=J) cuts the samples into J chunks run by J harness processes at once: every
    mode gives the same arrays as one process, whatever J (more than the 64-sample chunks allow
    is capped), and bad jobs are refused."""
    model = zoo["mlp"]
    xt = sample[2][:200]
    info = export.export_c(model, tmp_path, inference="onepass", name="m_jobs")
    exe = export.build_host(info)
    for mode in ("predict", "goodness", "proba"):
        one = export.run_host(exe, info, xt, mode, jobs=1)
        for jobs in (2, 3, 50):
            many = export.run_host(exe, info, xt, mode, jobs=jobs)
            for a, b in zip(one if mode == "predict" else [one], many if mode == "predict" else [many]):
                np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(export.run_host(exe, info, xt[:5], "proba", jobs=4),
                                  export.run_host(exe, info, xt, "proba", jobs=1)[:5])
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="jobs must be a positive int"):
            export.run_host(exe, info, xt, "predict", jobs=bad)
    with pytest.raises(ValueError, match="mode must be"):
        export.run_host(exe, info, xt, "logits")


@needs_gcc
@pytest.mark.parametrize("case", ["fourier", "onehot_image", "xent", "neg_goodness"])
def test_other_label_encodings_and_losses(sample, tmp_path, case):
    """Fourier waves and one-hot pixels in every channel plane of an image; the softmax
    cross-entropy loss (K-wide output, one block, no head); minus the sum of squares as
    goodness (multi-pass then picks the least active label)."""
    x, y, xt, _ = sample
    if case == "fourier":
        model = FFModel(fflib.mlp([784, 50, 30], norm="l2"), (1, 28, 28), 10, label_encoding="fourier",
                        loss="ff", goodness="sum", threshold=2.0)
    elif case == "onehot_image":
        layers = models.conv_block(1, 8, 5, pool=2, norm="rms") + models.conv_block(8, 16, 5, pool=4, norm="rms")
        model = FFModel(layers, (1, 28, 28), 10, label_encoding="onehot", loss="symba", goodness="mean",
                        threshold=1.0, norm="rms", head_blocks=[0, 1])
    elif case == "neg_goodness":
        model = FFModel(fflib.mlp([784, 50, 30], norm="rms"), (1, 28, 28), 10, loss="ff", goodness="neg-sum",
                        threshold=-50.0, norm="rms")
    else:
        model = FFModel(fflib.mlp([784, 40, 10]), 784, 10, loss="xent", label_encoding="none",
                        head_blocks=None, blocks=[6])
    _train(model, x[:500], y[:500])
    info = export.export_c(model, tmp_path, inference="multipass")
    exe = export.build_host(info)
    g = export.run_host(exe, info, xt[:50], "goodness")
    assert _goodness_error(g, model.goodness(xt[:50])) < GOODNESS_TOL
    cls, _, _ = export.run_host(exe, info, xt[:50], "predict")
    np.testing.assert_array_equal(cls, model.predict_multipass(xt[:50], blocks=info["multipass_blocks"]))
    if model.has_head:
        np.testing.assert_allclose(export.run_host(exe, info, xt[:50], "proba"), model.predict_proba(xt[:50]),
                                   atol=1e-5)


@needs_gcc
def test_input_norm_is_exported(sample, tmp_path):
    """A model that standardises its input (FFModel.input_norm): the C applies the same
    x * scale + shift before the label goes in."""
    x, y, xt, _ = sample
    model = FFModel(fflib.mlp([784, 50, 30], norm="rms"), (1, 28, 28), 10, loss="symba", goodness="mean",
                    threshold=1.0, norm="rms", input_norm=(0.13, 0.31))
    _train(model, x[:500], y[:500])
    info = export.export_c(model, tmp_path, inference="multipass")
    with open(info["c_path"]) as f:
        assert "input_scale" in f.read()
    exe = export.build_host(info)
    g = export.run_host(exe, info, xt[:50], "goodness")
    assert _goodness_error(g, model.goodness(xt[:50])) < GOODNESS_TOL
    np.testing.assert_allclose(export.run_host(exe, info, xt[:50], "proba"), model.predict_proba(xt[:50]), atol=1e-5)
    # the plan's NumPy encoder (int8 calibration feeds it) standardises before the label goes in
    x5 = xt[:5].reshape(5, -1)
    scale, shift = model.input_affine
    want = x5 * scale + shift
    want[:, :10] = np.eye(10, dtype=np.float32)[3]
    np.testing.assert_array_equal(export._Plan(model, None).encode(x5, 3), want)
