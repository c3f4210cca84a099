"""fflib.torch, the public PyTorch twin: an FFModel as a torch.nn.Module with fflib's names and
weights, its FF training in PyTorch against fflib's C for every layer kind, label encoding, loss
and training routine, inference, compare(), bad inputs, and the README example."""
import subprocess
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import fflib
from fflib import routines

torch = pytest.importorskip("torch")
import fflib.torch as ft  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oracle_torch  # noqa: E402
from oracle_torch import assert_close, fflib_grads, rel_err, torch_grads  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
K = 4


single_thread = pytest.fixture(scope="module", autouse=True)(oracle_torch.single_thread)


def every_layer_cnn(loss="symba", encoding="onehot", head_blocks="auto", seed=0, **cfg):
    """Every layer kind: LenNorm (rms, l2), Conv2d with padding, stride, groups and no bias,
    BatchNorm2d with and without affine, ReLU, MaxPool2d with a stride != kernel, Flatten, Linear."""
    layers = [fflib.LenNorm("rms"), fflib.BatchNorm2d(), fflib.Conv2d(None, 8, 3, padding=1), fflib.ReLU(),
              fflib.MaxPool2d(2),                                                          # 8 x 5 x 5
              fflib.BatchNorm2d(affine=False), fflib.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False),
              fflib.ReLU(), fflib.MaxPool2d(2, stride=1),                                  # 8 x 2 x 2
              fflib.Flatten(), fflib.LenNorm("l2"), fflib.Linear(32, 12), fflib.ReLU()]
    return fflib.FFModel(layers, (3, 10, 10), K, loss=loss, goodness="mean", threshold=1.0, norm="rms",
                         label_encoding=encoding, head_blocks=head_blocks, seed=seed, **cfg)


def data(rng, n=6):
    x = rng.random((n, 3, 10, 10), dtype=np.float32)
    y = rng.integers(0, K, n)
    return x, y, ((y + rng.integers(1, K, n)) % K).astype(np.int64)


def assert_same_grads(model, twin, rtol=2e-4):
    gf, gt = fflib_grads(model), torch_grads(twin.net)
    assert set(gf) == set(gt), (sorted(gf), sorted(gt))
    for k in sorted(gf):
        np.testing.assert_allclose(gf[k], gt[k], rtol=rtol, atol=1e-6 * (1 + float(np.abs(gt[k]).max())), err_msg=k)


def assert_same_state(model, twin, rel=1e-4):
    mine, theirs = model.state_dict(), twin.net.fflib_state_dict()
    assert set(mine) == set(theirs)
    for k in sorted(mine):
        assert rel_err(mine[k], theirs[k]) < rel, k


# ---------------------------------------------------------------------------- the module

def _child_env():
    """A child imports the fflib this process imports (installed in CI, in place in development)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(fflib.__file__))) + os.pathsep + \
        env.get("PYTHONPATH", "")
    return env


def test_import_fflib_does_not_import_torch():
    code = "import sys, fflib; assert 'torch' not in sys.modules, 'fflib imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(REPO / "tests"), env=_child_env())


def test_missing_torch_gives_a_clear_import_error():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import fflib.torch\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=str(REPO / "tests"), capture_output=True,
                         text=True, env=_child_env())
    assert "fflib.torch needs PyTorch" in out.stdout and "fflib-core[torch]" in out.stdout


def test_to_module_names_weights_and_modes():
    model = every_layer_cnn()
    net = ft.to_module(model)
    assert isinstance(net, torch.nn.Module)
    names = dict(net.named_parameters())
    assert set(net.state_dict()) == set(model.state_dict())
    assert set(names) == {k for k in model.state_dict() if not k.endswith(("running_mean", "running_var"))}
    assert "layers.6.weight" in names and "layers.6.bias" not in names and "layers.5.weight" not in names
    assert "layers.1.running_mean" in net.state_dict() and "layers.2.bias" in names
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(net.state_dict()[k].numpy(), v)
    assert net.blocks == model.blocks and net.head_layers == model.architecture()["head_layers"]
    assert net.training and not ft.to_module(model.eval()).training
    assert isinstance(net.layers[6], torch.nn.Conv2d) and net.layers[6].groups == 2 and net.layers[6].stride == (2, 2)
    # the weights go back into fflib by name
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    model.load_state_dict(net.fflib_state_dict())
    np.testing.assert_array_equal(model.layers[11].weight, net.layers[11].weight.detach().numpy())
    # the architecture alone: PyTorch's initialisation, the same names and shapes
    fresh = ft.to_module(model.architecture())
    assert {k: tuple(v.shape) for k, v in fresh.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- training against the C

CASES = [("symba", "onehot", {}), ("ff", "fourier", {}), ("ff", "embedding", {}),
         ("cwc", "none", {}), ("pvn", "none", {}), ("cwc", "none", {"pvn_weight": 0.3}),
         ("df-cwc", "none", {"margin": 0.5}), ("ff", "onehot", {"block_thresholds": [0.3, 2.0, 0.8]}),
         ("pvn", "none", {"block_thresholds": [1.0, 3.0, 0.5]}),
         ("ff", "embedding", {"input_norm": ([0.5, 0.2, -0.1], [0.3, 1.5, 0.7])}),
         ("cwc", "none", {"input_norm": (0.45, 0.25)})]


@pytest.mark.parametrize("loss, encoding, cfg", CASES, ids=["symba-onehot", "ff-fourier", "ff-embedding",
                                                            "cwc", "pvn", "cwc+pvn", "df-cwc", "ff-block-thresholds",
                                                            "pvn-block-thresholds", "ff-embedding-input-norm",
                                                            "cwc-input-norm"])
def test_training_every_layer_kind_matches_fflib(rng, loss, encoding, cfg):
    """Three SGD steps with the head (its neutral rows go through batch norm with the training
    rows' statistics), then gradients, weights, running statistics and both inferences.  (SGD:
    Adam would move weights whose gradient is float32 noise by ~lr, in either direction.)"""
    model = every_layer_cnn(loss, encoding, **cfg)
    twin = ft.TorchFF(model, fflib.SGD(model, lr=0.05, momentum=0.9))
    for _ in range(3):
        x, y, neg = data(rng)
        lf = model.train_step(x.reshape(len(x), -1), y, neg)
        lt = twin.step(x, y, neg)
        np.testing.assert_allclose(lf, lt, rtol=1e-4, atol=1e-6)
    x, y, neg = data(rng)
    np.testing.assert_allclose(model.compute_grads(x.reshape(len(x), -1), y, neg),
                               twin.step(x, y, neg, update=False), rtol=1e-4, atol=1e-6)
    assert_same_grads(model, twin)
    assert_same_state(model, twin)
    model.eval()
    twin.net.eval()
    assert_close(model.goodness(x), twin.net.goodness(x).numpy(), rel=1e-4, what="goodness")
    np.testing.assert_allclose(model.predict_proba(x), twin.net.predict_proba(x).numpy(), rtol=1e-4, atol=1e-6)
    res_f, res_t = fflib.evaluate(model, x, y), twin.evaluate(x, y)
    assert res_f == res_t


def test_xent_loss_and_batchnorm_training_mode_inference(rng):
    """The xent loss (a K-wide output, the backprop baseline) with SGD; goodness in training
    mode (batch statistics of the whole call) as well as in eval mode."""
    layers = [fflib.Linear(20, 16), fflib.ReLU(), fflib.Linear(16, K)]
    model = fflib.FFModel(layers, 20, K, loss="xent", label_encoding="none", blocks=[3], head_blocks=None, seed=2)
    twin = ft.TorchFF(model, fflib.SGD(model, lr=0.1, momentum=0.9))
    x = rng.random((8, 20), dtype=np.float32)
    y = rng.integers(0, K, 8)
    for _ in range(3):
        np.testing.assert_allclose(model.train_step(x, y), twin.step(x, y), rtol=1e-5)
    assert_same_state(model, twin)
    assert_close(model.goodness(x), twin.net.goodness(x).numpy(), what="logits")
    cnn = every_layer_cnn()
    net = ft.to_module(cnn)
    x3, _, _ = data(rng, 3)
    assert cnn.training and net.training
    assert_close(cnn.goodness(x3), net.goodness(x3).numpy(), what="training-mode goodness")


@pytest.mark.parametrize("routine", ["greedy", "chunked", "overlapping", "backprop"])
def test_routines_match_fflib(rng, routine):
    """FF (SymBa) with batch norm and the head: a layer in two overlapping blocks is trained by
    both, its running statistics move once."""
    model = every_layer_cnn()
    model.set_block_ranges(routines.block_ranges(model, routine, 2))
    twin = ft.TorchFF(model, fflib.SGD(model, lr=0.05, momentum=0.9))
    for _ in range(2):
        x, y, neg = data(rng)
        np.testing.assert_allclose(model.train_step(x.reshape(len(x), -1), y, neg), twin.step(x, y, neg),
                                   rtol=1e-4, atol=1e-6)
    x, y, neg = data(rng)
    model.compute_grads(x.reshape(len(x), -1), y, neg)
    twin.step(x, y, neg, update=False)
    assert_same_grads(model, twin)
    assert_same_state(model, twin)


def test_channels_last_twin(rng):
    """The benchmark's channels-last variant is the same training."""
    model = every_layer_cnn()
    twin = ft.TorchFF(model, fflib.SGD(model, lr=0.05, momentum=0.9), channels_last=True)
    assert twin.net.layers[2].weight.is_contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        x, y, neg = data(rng)
        np.testing.assert_allclose(model.train_step(x.reshape(len(x), -1), y, neg), twin.step(x, y, neg),
                                   rtol=1e-4, atol=1e-6)
    assert_same_state(model, twin)


def test_alternating_chunks_and_active_blocks(rng):
    model = every_layer_cnn()
    twin = ft.TorchFF(model, fflib.SGD(model, lr=0.05, momentum=0.9, head_lr=0.1))
    assert [g["lr"] for g in twin.optimizer.param_groups] == [0.05, 0.1]
    for s in range(4):                       # the chunking shifts by one unit every step
        cut = routines.block_ranges(model, "chunked", 2, s % 2)
        model.set_block_ranges(cut)
        twin.net.set_routine("chunked", 2, s % 2)
        assert twin.net.blocks == cut
        x, y, neg = data(rng)
        active = [1, 0] if s == 3 else None
        np.testing.assert_allclose(model.train_step(x.reshape(len(x), -1), y, neg, active=active),
                                   twin.step(x, y, neg, active=active), rtol=1e-4, atol=1e-6)
    assert_same_state(model, twin)


def test_multipass_block_selection(rng):
    model = fflib.FFModel(fflib.mlp([30, 12, 10, 8]), 30, K, seed=1)
    net = ft.to_module(model)
    x = rng.random((9, 30), dtype=np.float32)
    for blocks in (None, [-2, -1], 0):
        np.testing.assert_array_equal(model.predict_multipass(x, blocks), net.predict_multipass(x, blocks).numpy())
    np.testing.assert_array_equal(model.predict_onepass(x), net.predict_onepass(x).numpy())
    assert_close(model.features(x), net.features(x).numpy(), what="features")
    out = net(torch.from_numpy(x))                      # forward: the neutral label, the last layer
    assert out.shape == (9, 8)


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
def test_schedulers_follow_fflib():
    model = fflib.FFModel(fflib.mlp([30, 12, 10]), 30, K, seed=1)
    for make in (lambda o: fflib.MultiStepLR(o, [2, 3], gamma=0.5), lambda o: fflib.LinearCooldown(o, 6)):
        opt = fflib.SGD(model, lr=0.1, head_lr=0.4)
        sched = make(opt)
        twin = ft.TorchFF(model, opt)
        tsched = ft.torch_scheduler(make(opt), twin)
        for _ in range(5):
            sched.step()
            tsched.step()
            lrs = [g["lr"] for g in twin.optimizer.param_groups]
            assert lrs == pytest.approx([opt.lr, 0.4 * opt.lr / 0.1])
    with pytest.raises(TypeError, match="scheduler must be an fflib scheduler"):
        ft.torch_scheduler(object(), twin)


# ---------------------------------------------------------------------------- compare

def test_compare_mlp_on_mnist_sample():
    """In one process (isolate=False), with a schedule: the same training on both sides."""
    x, y = fflib.datasets.load_sample()
    x, y = x[:1200].reshape(1200, -1), y[:1200]
    xt, yt = fflib.datasets.load_sample(train=False)
    model = fflib.FFModel(fflib.mlp([784, 64, 32]), 784, 10, seed=0)
    w0 = model.layers[1].weight.copy()
    opt = fflib.Adam(model, lr=3e-3)
    res = ft.compare(model, x, y, epochs=2, batch_size=100, optimizer=opt, isolate=False,
                     scheduler=fflib.MultiStepLR(opt, [1], gamma=0.5), X_test=xt[:500], y_test=yt[:500])
    assert {"fflib", "torch", "epochs", "batch_size", "threads", "samples", "isolated", "torch_version"} <= set(res)
    assert res["samples"] == 1200 and res["epochs"] == 2 and not res["isolated"] and opt.lr == 3e-3
    for side in ("fflib", "torch"):
        r = res[side]
        assert r["train_seconds"] > 0 and (r["peak_mb"] is None or r["peak_mb"] >= 0)
        assert 0 <= r["multi_pass"] <= 1 and 0 <= r["one_pass"] <= 1 and len(r["block_accuracy"]) == 2
    # the same training: the same last-epoch losses and (nearly) the same accuracy
    np.testing.assert_allclose(res["fflib"]["losses"], res["torch"]["losses"], rtol=1e-3)
    assert abs(res["fflib"]["multi_pass"] - res["torch"]["multi_pass"]) <= 0.01
    assert abs(res["fflib"]["one_pass"] - res["torch"]["one_pass"]) <= 0.01
    assert not model.training and not np.array_equal(model.layers[1].weight, w0)   # trained by fflib


def test_compare_adamw_in_isolated_processes():
    """An AdamW travels to both worker processes as AdamW (fflib.AdamW / torch.optim.AdamW)."""
    x, y = fflib.datasets.load_sample()
    x, y = x[:600].reshape(600, -1), y[:600]
    model = fflib.FFModel(fflib.mlp([784, 32, 16]), 784, 10, seed=0)
    opt = fflib.AdamW(model, lr=3e-3, weight_decay=0.5)
    res = ft.compare(model, x, y, epochs=1, batch_size=100, optimizer=opt, threads=1)
    assert res["isolated"]
    np.testing.assert_allclose(res["fflib"]["losses"], res["torch"]["losses"], rtol=1e-3)
    assert abs(res["fflib"]["one_pass"] - res["torch"]["one_pass"]) <= 0.01


def test_readme_example():
    """The example of the README section "Against PyTorch", as written there (isolated processes)."""
    readme = (REPO / "README.md").read_text()
    if "## Against PyTorch" in readme:
        text = readme.split("## Against PyTorch", 1)[1]
    else:   # the section's text before it joins the README
        text = (REPO / "notes_readme_torch.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    # keep the suite fast: fewer samples, one epoch, 500 test images
    code = code.replace("epochs=3", "epochs=1").replace("[:5000]", "[:1000]")
    code = code.replace("X_test=Xt, y_test=yt", "X_test=Xt[:500], y_test=yt[:500]")
    assert "X_test=Xt[:500]" in code and "epochs=1" in code
    scope = {}
    exec(compile(code, "README: Against PyTorch", "exec"), scope)
    res, model = scope["res"], scope["model"]
    assert res["isolated"] and not model.training
    np.testing.assert_allclose(res["fflib"]["losses"], res["torch"]["losses"], rtol=1e-3)
    assert abs(res["fflib"]["one_pass"] - res["torch"]["one_pass"]) <= 0.01
    # the model comes back trained by fflib
    assert res["fflib"]["one_pass"] == 1.0 - fflib.evaluate(model, scope["Xt"][:500], scope["yt"][:500])["one_pass"] / 100.0


# ---------------------------------------------------------------------------- bad inputs

def test_bad_inputs(rng):
    model = every_layer_cnn()
    with pytest.raises(TypeError, match="model must be an fflib.FFModel"):
        ft.to_module("net")
    with pytest.raises(ValueError, match="optimizer must be 'adam', 'adamw', 'sgd'"):
        ft.TorchFF(model, "rmsprop")
    with pytest.raises(ValueError, match="grad must be"):
        ft.TorchFF(model, grad="numeric")
    with pytest.raises(ValueError, match="grad='manual' needs blocks of LenNorm"):
        ft.TorchFF(model, grad="manual")
    twin = ft.TorchFF(model)
    x, y, neg = data(rng)
    with pytest.raises(ValueError, match="x must be a batch of samples with 300 values"):
        twin.step(x[:, :2], y, neg)
    with pytest.raises(ValueError, match="neg_labels must be 6 labels"):
        twin.step(x, y, y)
    with pytest.raises(ValueError, match=r"y must be in \[0, 4\)"):
        twin.step(x, y + 4, neg)
    with pytest.raises(TypeError, match="y must hold integer labels"):
        twin.step(x, y.astype(np.float32), neg)
    with pytest.raises(ValueError, match="active needs one flag per block"):
        twin.step(x, y, neg, active=[1])
    with pytest.raises(ValueError, match="ranges must be ordered"):
        twin.net.set_block_ranges([(0, 5), (6, 13)])
    with pytest.raises(ValueError, match="blocks must be block indices"):
        twin.net.predict_multipass(x, blocks=[7])
    with pytest.raises(ValueError, match="no one-pass head"):
        ft.to_module(every_layer_cnn(head_blocks=None)).features(x)
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        ft.compare(model, x, y, epochs=0)
    with pytest.raises(TypeError, match="scheduler must be an fflib scheduler"):
        ft.compare(model, x, y, scheduler=object())
    with pytest.raises(ValueError, match="not divisible by|needs a block output whose channels split"):
        bad = fflib.FFModel([fflib.Conv2d(3, 6, 3), fflib.ReLU()], (3, 10, 10), K, loss="cwc",
                            label_encoding="none", head_blocks=None)
        ft.TorchFF(bad).step(x, y)
