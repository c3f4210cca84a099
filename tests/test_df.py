"""The Distance-Forward loss (loss="df"; Wu et al. 2024, arXiv:2408.14925): the float64 NumPy
reference against finite differences, the C kernel and the training step against it, the
PyTorch twin (autograd) against fflib, the core's directional gradient check (also with the
overlapping two-unit blocks of DF-O), bad inputs, the Python entry points, and DF against the FF
loss on a real MNIST subset."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fflib
from fflib import _core, models
from fflib import reference as ref

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import child_env, fd_grad, fflib_one_thread, shared_data_dir  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]


# fflib on one thread (a fixed summation order; the PyTorch tests set torch's too)
single_thread = pytest.fixture(scope="module", autouse=True)(fflib_one_thread)


# ---------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("B, N", [(1, 1), (3, 1), (5, 9), (7, 4)])
def test_reference_matches_finite_differences(rng, B, N):
    gp, gn, m = rng.normal(0, 2, B), rng.normal(0, 2, (N, B)), 0.7
    L, dgp, dgn = ref.df_loss(gp, gn, m)
    np.testing.assert_allclose(dgp, fd_grad(lambda z: ref.df_loss(z, gn, m)[0], gp), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dgn, fd_grad(lambda z: ref.df_loss(gp, z, m)[0], gn), rtol=1e-6, atol=1e-9)
    # the definition written out
    direct = np.mean(np.log1p(np.sum(np.exp(gn - gp[None, :] + m), axis=0)))
    assert L == pytest.approx(direct, rel=1e-12)


def test_reference_one_negative_is_symba_with_a_margin(rng):
    """N = 1: log(1 + e^(g- - g+ + m)) is SymBa (alpha 1) with g+ lowered by m."""
    gp, gn = rng.normal(size=6), rng.normal(size=6)
    L, dgp, dgn = ref.df_loss(gp, gn[None, :], 1.5)
    Ls, dsp, dsn = ref.symba_loss(gp - 1.5, gn, 1.0)
    assert L == pytest.approx(Ls, rel=1e-12)
    np.testing.assert_allclose(dgp, dsp, rtol=1e-12)
    np.testing.assert_allclose(dgn[0], dsn, rtol=1e-12)


def test_reference_is_stable_for_huge_goodness():
    big = 1e30
    L, dgp, dgn = ref.df_loss([big], [[-big], [-big]], 1.0)          # right by a huge margin
    assert L == 0.0 and dgp[0] == 0.0 and np.all(dgn == 0.0)
    L, dgp, dgn = ref.df_loss([-big], [[big], [-big]], 1.0)          # wrong by a huge margin
    assert np.isfinite(L) and dgp[0] == pytest.approx(-1.0) and dgn[:, 0] == pytest.approx([1.0, 0.0])


# ---------------------------------------------------------------------------- the C kernel

@pytest.mark.parametrize("B, N", [(1, 1), (5, 9), (33, 3)])
def test_c_kernel_matches_reference(rng, B, N):
    gp = rng.normal(0, 3, B).astype(np.float32)
    gn = rng.normal(0, 3, (N, B)).astype(np.float32)
    dgp, dgn = np.empty(B, np.float32), np.empty((N, B), np.float32)
    L = _core.df_loss(dgp, dgn, gp, gn, 0.5)
    Lr, dpr, dnr = ref.df_loss(gp, gn, 0.5)
    assert L == pytest.approx(Lr, rel=1e-5)
    np.testing.assert_allclose(dgp, dpr, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(dgn, dnr, rtol=1e-5, atol=1e-8)
    assert _core.df_loss(None, None, gp, gn, 0.5) == L


def test_c_kernel_bad_inputs():
    gp, gn = np.zeros(3, np.float32), np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="margin must be finite and >= 0"):
        _core.df_loss(None, None, gp, gn, -1.0)
    with pytest.raises(ValueError, match="margin must be finite and >= 0"):
        _core.df_loss(None, None, gp, gn, float("nan"))
    with pytest.raises(ValueError, match="gneg"):
        _core.df_loss(None, None, gp, np.zeros((2, 4), np.float32), 1.0)
    with pytest.raises(ValueError, match="gneg"):
        _core.df_loss(None, None, gp, np.zeros(3, np.float32), 1.0)
    with pytest.raises(ValueError, match="dgneg"):
        _core.df_loss(None, np.zeros((3, 3), np.float32), gp, gn, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        _core.df_loss(None, None, np.zeros(0, np.float32), np.zeros((2, 0), np.float32), 1.0)


# ---------------------------------------------------------------------------- the training step

def _mlp(seed=1, **kw):
    return fflib.FFModel(fflib.mlp([20, 16, 12, 8]), 20, 4, loss="df", seed=seed, head_blocks=None, **kw)


def test_step_loss_is_the_reference_on_every_label(rng):
    """A compute-only step's block losses equal the reference DF loss on the model's own
    goodness of each sample under its true label and the K - 1 others; negative labels given
    to the step are not used."""
    m = _mlp(margin=0.8)
    x, y = rng.random((9, 20), dtype=np.float32), rng.integers(0, 4, 9)
    G = m.goodness(x).astype(np.float64)                    # (B, K, blocks)
    rows = np.arange(9)
    for b in range(m.num_blocks):
        gp = G[rows, y, b]
        gn = np.stack([G[rows, np.where(y <= j, j + 1, j), b] for j in range(3)])
        expect = ref.df_loss(gp, gn, 0.8)[0]
        got = m.compute_grads(x, y)[b]
        assert got == pytest.approx(expect, rel=1e-4), b
    l1 = m.compute_grads(x, y, (y + 1) % 4)
    l2 = m.compute_grads(x, y, (y + 2) % 4)
    np.testing.assert_array_equal(l1, l2)


@pytest.mark.parametrize("name", ["mlp_head", "df_o_overlap", "cnn_embedding"])
def test_core_directional_gradient_check(rng, name):
    if name == "mlp_head":
        m = fflib.FFModel(fflib.mlp([20, 16, 12, 8]), 20, 4, loss="df", seed=1)
        x = rng.random((12, 20), dtype=np.float32)
    elif name == "df_o_overlap":   # DF-O: blocks of two units, each sharing a unit with the next
        m = _mlp()
        m.set_block_ranges(fflib.routines.block_ranges(m, "overlapping", 2))
        assert m.blocks == [(0, 6), (3, 9)]
        x = rng.random((12, 20), dtype=np.float32)
    else:
        layers = models.conv_block(2, 6, 3, padding=1, pool=2) + models.conv_block(6, 8, 3, padding=1)
        m = fflib.FFModel(layers, (1, 8, 8), 4, loss="df", label_encoding="embedding", seed=2)
        x = rng.random((12, 64), dtype=np.float32)
    y = rng.integers(0, 4, 12).astype(np.int64)
    for b in range(m.num_blocks + (1 if m.has_head else 0)):
        fd, an, rel = m._net.check_grad(x, y, None, b, 1e-3, 7 + b)     # DF needs no negative labels
        assert abs(an) > 1e-6, f"{name} block {b}: the direction must move the loss"
        assert rel < 1e-2, f"{name} block {b}: directional derivative {an:.6g} against {fd:.6g} ({rel:.3g})"


def test_margin_setting_and_bad_values():
    m = _mlp()
    assert m.config["margin"] == 1.0 and m._net.get_config()["margin"] == 1.0
    m.set_config(margin=2.5)
    assert m.config["margin"] == 2.5 and m._net.get_config()["margin"] == 2.5
    with pytest.raises(ValueError, match="margin"):
        m.set_config(margin=-0.1)
    with pytest.raises(ValueError, match="margin"):
        m.set_config(margin=float("inf"))
    with pytest.raises(TypeError, match="margin must be a real number"):
        fflib.FFModel(fflib.mlp([20, 8]), 20, 4, loss="df", margin="1")
    with pytest.raises(ValueError, match="margin must be finite and >= 0"):
        m._net.set_config(margin=-1.0)
    assert m.config["margin"] == 2.5
    with pytest.raises(ValueError, match="loss 'df' compares each sample's goodness under every label, but label_encoding is 'none'"):
        fflib.FFModel(models.conv_block(1, 8, 3), (1, 6, 6), 4, loss="df", label_encoding="none")


def test_save_load_keeps_loss_and_margin(tmp_path, rng):
    m = _mlp(margin=0.3)
    x, y = rng.random((5, 20), dtype=np.float32), rng.integers(0, 4, 5)
    m.train_step(x, y)
    m2 = fflib.FFModel.load(m.save(tmp_path / "m"))
    assert m2.config["loss"] == "df" and m2.config["margin"] == pytest.approx(0.3)
    np.testing.assert_array_equal(m2.compute_grads(x, y), m.compute_grads(x, y))


def test_pipelined_training_equals_sequential(rng):
    """The pipelined schedule builds the same K rows per sample: the weights equal sequential
    training's bit for bit (as tests/test_pipeline.py asserts for the other losses)."""
    x, y = rng.random((40, 20), dtype=np.float32), rng.integers(0, 4, 40)
    a, b = _mlp(seed=5), _mlp(seed=5)
    fflib.Adam(a, lr=3e-3)
    fflib.Adam(b, lr=3e-3)
    b.pipeline_begin(8)
    for s in range(0, 40, 8):
        a.train_step(x[s:s + 8], y[s:s + 8])
        b.pipeline_step(x[s:s + 8], y[s:s + 8])
    b.pipeline_flush()
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v, err_msg=k)


# ---------------------------------------------------------------------------- PyTorch

def test_torch_df_loss_autograd_matches_reference(rng, torch_one_thread):
    torch = torch_one_thread
    import fflib.torch as ft
    gp = torch.tensor(rng.normal(0, 2, 7), requires_grad=True)
    gn = torch.tensor(rng.normal(0, 2, (9, 7)), requires_grad=True)
    L = ft.df_loss(gp, gn, 0.6)
    L.backward()
    Lr, dpr, dnr = ref.df_loss(gp.detach().numpy(), gn.detach().numpy(), 0.6)
    assert float(L.detach()) == pytest.approx(Lr, rel=1e-12)
    np.testing.assert_allclose(gp.grad.numpy(), dpr, rtol=1e-10)
    np.testing.assert_allclose(gn.grad.numpy(), dnr, rtol=1e-10)


@pytest.mark.parametrize("grad", ["autograd", "manual"])
def test_torch_twin_trains_like_fflib(rng, grad, torch_one_thread):
    """Three SGD steps of the PyTorch oracle (fflib.torch.TorchFF) and of fflib's C on the same
    DF network with its head, then the gradients and weights."""
    import fflib.torch as ft
    from oracle_torch import fflib_grads, rel_err, torch_grads  # noqa: E402
    model = fflib.FFModel(fflib.mlp([30, 24, 16]), 30, 5, loss="df", goodness="mean", margin=0.5, seed=4)
    twin = ft.TorchFF(model, fflib.SGD(model, lr=0.05, momentum=0.9), grad=grad)
    for _ in range(3):
        x, y = rng.random((6, 30), dtype=np.float32), rng.integers(0, 5, 6)
        np.testing.assert_allclose(model.train_step(x, y), twin.step(x, y), rtol=1e-4, atol=1e-6)
    x, y = rng.random((6, 30), dtype=np.float32), rng.integers(0, 5, 6)
    np.testing.assert_allclose(model.compute_grads(x, y), twin.step(x, y, update=False), rtol=1e-4, atol=1e-6)
    gf, gt = fflib_grads(model), torch_grads(twin.net)
    assert set(gf) == set(gt)
    for k in sorted(gf):
        np.testing.assert_allclose(gf[k], gt[k], rtol=2e-4, atol=1e-6 * (1 + float(np.abs(gt[k]).max())), err_msg=k)
    mine, theirs = model.state_dict(), twin.net.fflib_state_dict()
    for k in sorted(mine):
        assert rel_err(mine[k], theirs[k]) < 1e-4, k


# ---------------------------------------------------------------------------- entry points

def test_classifier_and_fit_with_df():
    x, y = fflib.datasets.load_sample()
    x = x.reshape(len(x), -1)[:1200]
    y = y[:1200]
    clf = fflib.FFClassifier(hidden=(64,), loss="df", goodness="sum", epochs=2, random_state=0)
    clf.fit(x[:1000], y[:1000])
    assert clf.model_.config["loss"] == "df"
    assert clf.score(x[1000:], y[1000:]) > 0.5


def test_cli_loss_df(tmp_path):
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, "-m", "fflib", "train", "--loss", "df", "--goodness", "sum",
                          "--layers", "64", "--epochs", "1", "--threads", "1", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=300, cwd=str(REPO / "tests"), env=child_env())
    assert res.returncode == 0, res.stderr
    r = json.loads(out.read_text())
    assert r["config"]["loss"] == "df"
    assert r["test_error"]["multi_pass"] < 30.0


def test_light_model_with_df_takes_a_label_channel(rng):
    """A light model under a loss that reads the label from the input (df, ff, symba) is built
    with a learned label map as an extra input channel of its first block; under cwc it is not."""
    m = models.build("ff_tiny", "cifar10", loss="df", margin=0.5)
    cwc = models.build("ff_tiny", "cifar10")
    first = lambda model: next(l for l in model.layers if l.kind == "conv2d")  # noqa: E731
    assert first(m).in_channels == 4 and first(cwc).in_channels == 3
    assert m.label_encoding == "embedding" and cwc.label_encoding == "none"
    assert m.config["loss"] == "df" and m.config["margin"] == 0.5
    x = rng.random((8, 3 * 32 * 32), dtype=np.float32)
    y = np.arange(8) % 10
    fflib.Adam(m, lr=1e-3)
    assert np.all(np.isfinite(m.train_step(x, y)))
    with pytest.raises(ValueError, match="needs the label in the input"):
        models.build("ff_tiny", "cifar10", loss="df", label_encoding="none")


def test_cli_light_model_with_df(tmp_path):
    cifar10_dir = shared_data_dir() / "cifar10"
    if not cifar10_dir.is_dir():
        pytest.skip(f"real CIFAR-10 not found under {cifar10_dir} (set FFLIB_DATA)")
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, "-m", "fflib", "train", "--recipe", "cifar10-ff_small-df",
                          "--data-dir", str(cifar10_dir), "--subset", "100", "--epochs", "1", "--val-size", "0",
                          "--threads", "1", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=300, cwd=str(REPO / "tests"), env=child_env())
    assert res.returncode == 0, res.stderr
    r = json.loads(out.read_text())
    assert r["config"]["loss"] == "df" and r["config"]["label_encoding"] == "embedding"
    assert r["config"]["recipe"] == "cifar10-ff_small-df"


# ---------------------------------------------------------------------------- real MNIST

@pytest.mark.slow
def test_df_beats_the_ff_loss_on_mnist(mnist):
    """The same 784-256-256 MLP (RMS norm), 3 epochs on the first 6,000 training images, Adam
    3e-3 with a linear cool-down, tested on the first 5,000 test images.  Measured (1 thread):
    DF (sum goodness, margin 1) 7.86 / 7.72 % one-pass / multi-pass; the FF loss (eq. 1) at its
    best of the settings tried (mean goodness, theta 1) 12.48 / 14.08 % (sum goodness with theta
    256 or 1000: 18-38 %)."""
    x, y, xt, yt = mnist
    x, y, xt, yt = x[:6000], y[:6000], xt[:5000], yt[:5000]

    def run(**kw):
        m = fflib.FFModel(fflib.mlp([784, 256, 256], norm="rms"), 784, 10, norm="rms", seed=0, **kw)
        opt = fflib.Adam(m, lr=0.003)
        fflib.fit(m, x, y, epochs=3, batch_size=100, optimizer=opt, scheduler=fflib.LinearCooldown(opt, 3),
                  random_state=0, progress=False)
        return fflib.evaluate(m, xt, yt)

    df = run(loss="df", goodness="sum", margin=1.0)
    ff = run(loss="ff", goodness="mean", threshold=1.0)
    print(f"\nDF {df['one_pass']:.2f} / {df['multi_pass']:.2f} %, FF {ff['one_pass']:.2f} / {ff['multi_pass']:.2f} %")
    assert df["multi_pass"] <= 10.0 and df["one_pass"] <= 10.0
    assert df["multi_pass"] <= ff["multi_pass"] - 3.0 and df["one_pass"] <= ff["one_pass"] - 2.0


def test_fit_refuses_hard_negatives_for_df():
    m = _mlp()
    x, y = np.zeros((4, 20), np.float32), np.arange(4)
    with pytest.raises(ValueError, match="negatives='hard' does not apply to loss 'df'"):
        fflib.fit(m, x, y, epochs=1, negatives="hard", progress=False)


def test_cli_df_cwc_margin_study_runs_and_resumes(tmp_path):
    """benchmarks/df_cwc_margin.py (how the df-cwc recipe's margin was chosen; train commands in child
    processes, hence "cli" in the name, which the sanitizer job skips) on 200 images: one
    train run per margin, its table from the runs' JSON, and a second call reruns nothing."""
    cifar10_dir = shared_data_dir() / "cifar10"
    if not cifar10_dir.is_dir():
        pytest.skip(f"real CIFAR-10 not found under {cifar10_dir} (set FFLIB_DATA)")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "df_cwc_margin.py"
    args = [sys.executable, str(script), "--model", "ff_tiny", "--margins", "0", "0.5", "--subset", "200",
            "--epochs", "1", "--data-dir", str(cifar10_dir), "--out-dir", str(tmp_path)]
    res = subprocess.run(args, capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    runs = sorted(p.name for p in tmp_path.glob("*.json"))
    assert runs == ["ff_tiny_m0.5_n200_e1.json", "ff_tiny_m0_n200_e1.json", "summary.json"]
    assert json.loads((tmp_path / runs[0]).read_text())["config"]["loss"] == "df-cwc"
    assert json.loads((tmp_path / runs[1]).read_text())["config"]["loss"] == "cwc"
    assert "margin 0 (cwc):" in res.stdout and "margin 0.5:" in res.stdout
    again = subprocess.run(args, capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and "fflib train" not in again.stdout and "margin 0.5:" in again.stdout
