"""Unsupervised FF with autoencoder cells (loss="ae", method="uff"; Hwang et al. 2024, arXiv
2404.14664): the float64 NumPy reference of the reconstruction loss against finite differences,
the C training step against the reference and against PyTorch autograd (fflib.torch), the
core's directional gradient check over a block and its decoder, the decoders through the
optimiser, save/load and resumption, bad inputs, fit(method="uff") and the CLI, and on a real
MNIST subset the linear probe on UFF features against the probe on the untrained network."""
import json

import numpy as np
import pytest

import fflib
from fflib import _core
from fflib import reference as ref
from fflib.nn import FFModel, mlp, Linear, ReLU, Conv2d, Flatten
from fflib.optim import Adam, SGD
from fflib.uff import fit_uff, uff_model

from conftest import fd_grad, fflib_one_thread  # noqa: F401

P = _core.PARAM_KINDS


# fflib on one thread (a fixed summation order; the PyTorch tests set torch's too)
single_thread = pytest.fixture(scope="module", autouse=True)(fflib_one_thread)


def batch(rng, B, D):
    return rng.random((B, D), dtype=np.float32)


# ---------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("B, O, I", [(1, 1, 1), (3, 5, 2), (4, 3, 7), (6, 8, 5)])
def test_reference_matches_finite_differences(rng, B, O, I):
    y, x = rng.normal(size=(B, O)), rng.normal(size=(B, I))
    W, b = rng.normal(size=(I, O)), rng.normal(size=I)
    L, dy, dW, db = ref.ae_loss(y, x, W, b)
    np.testing.assert_allclose(dy, fd_grad(lambda z: ref.ae_loss(z, x, W, b)[0], y), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dW, fd_grad(lambda z: ref.ae_loss(y, x, z, b)[0], W), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(db, fd_grad(lambda z: ref.ae_loss(y, x, W, z)[0], b), rtol=1e-6, atol=1e-9)
    # the definition written out
    assert L == pytest.approx(np.mean((y @ W.T + b - x) ** 2), rel=1e-12)
    # without a bias: the same with b = 0
    L0, dy0, dW0, _ = ref.ae_loss(y, x, W)
    Lz, dyz, dWz, _ = ref.ae_loss(y, x, W, np.zeros(I))
    assert L0 == Lz
    np.testing.assert_array_equal(dy0, dyz)
    np.testing.assert_array_equal(dW0, dWz)


def test_reference_perfect_reconstruction_has_zero_loss_and_gradient(rng):
    y = rng.normal(size=(4, 3))
    W = rng.normal(size=(5, 3))
    x = y @ W.T + 0.5
    L, dy, dW, db = ref.ae_loss(y, x, W, np.full(5, 0.5))
    assert L == pytest.approx(0.0, abs=1e-24)
    assert np.abs(dy).max() < 1e-12 and np.abs(dW).max() < 1e-12 and np.abs(db).max() < 1e-12


def test_reference_rejects_bad_shapes(rng):
    y, x, W = rng.normal(size=(3, 4)), rng.normal(size=(3, 5)), rng.normal(size=(5, 4))
    with pytest.raises(ValueError, match="weight"):
        ref.ae_loss(y, x, W.T)
    with pytest.raises(ValueError, match="weight"):
        ref.ae_loss(y, x[:2], W)
    with pytest.raises(ValueError, match="bias"):
        ref.ae_loss(y, x, W, np.zeros(4))


# ---------------------------------------------------------------------------- the C step

def one_cell(D=7, H=5, seed=3):
    """A single cell without LenNorm: encoder Linear(D, H) -> ReLU, decoder Linear(H, D)."""
    return FFModel([Linear(D, H), ReLU()], (D, 1, 1), 3, loss="ae", label_encoding="none", head_blocks=None,
                   seed=seed)


@pytest.mark.parametrize("B, D, H", [(1, 3, 2), (5, 7, 5), (9, 11, 4)])
def test_c_step_matches_the_reference(rng, B, D, H):
    m = one_cell(D, H)
    x = rng.normal(size=(B, D)).astype(np.float32)
    W, b = m.layers[0].weight.astype(np.float64), m.layers[0].bias.astype(np.float64)
    Wd, bd = (a.astype(np.float64) for a in m.decoders[0])
    losses = m.compute_grads(x, None)
    z = ref.linear_forward(x, W, b)
    y = ref.relu_forward(z)
    L, dy, dWd, dbd = ref.ae_loss(y, x, Wd, bd)
    _, dW, db = ref.linear_backward(ref.relu_backward(dy, y), x, W)
    assert losses[0] == pytest.approx(L, rel=1e-5, abs=1e-7)
    net = m._net
    np.testing.assert_allclose(net.param(_core.DECODER, P["grad_weight"]), dWd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.param(_core.DECODER, P["grad_bias"]), dbd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.param(0, P["grad_weight"]), dW, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.param(0, P["grad_bias"]), db, rtol=1e-4, atol=1e-6)


def test_fused_step_equals_compute_grads_then_step(rng):
    """train_step (lean: each block and its decoder step right after its backward) equals
    compute_grads + optimiser.step (the full gradient arena)."""
    x = batch(rng, 8, 20)
    a, b = uff_model([20, 16, 12], 3, seed=5), uff_model([20, 16, 12], 3, seed=5)
    oa, ob = Adam(a, lr=1e-2), Adam(b, lr=1e-2)
    for _ in range(3):
        la = a.train_step(x, None, train_head=False)
        lb = b.compute_grads(x, None, train_head=False)
        ob.step()
        np.testing.assert_array_equal(la, lb)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k], err_msg=k)
    assert oa.lr == ob.lr


def test_gradient_check_covers_the_decoder(rng):
    m = uff_model([10, 8, 6], 3, seed=2)
    x = batch(rng, 6, 10)
    y = np.zeros(6, np.int64)       # check_grad wants labels; the ae loss ignores them
    for blk in range(2):
        fd, an, rel = m._net.check_grad(x, y, None, blk, 1e-3, 11 + blk)
        assert rel < 2e-2, (blk, fd, an)
        assert abs(an) > 1e-6


def test_training_reduces_the_reconstruction_error(rng):
    m = uff_model([20, 16, 12], 3, seed=1)
    Adam(m, lr=1e-2)
    x = batch(rng, 32, 20)
    first = m.train_step(x, None, train_head=False)
    for _ in range(60):
        last = m.train_step(x, None, train_head=False)
    assert last[0] < 0.5 * first[0] and last[1] < first[1]
    assert last[2] == 0.0     # no head trained


def test_decoders_of_inactive_blocks_do_not_move(rng):
    m = uff_model([20, 16, 12], 3, seed=1)
    Adam(m, lr=1e-2)
    before = [w.copy() for w, _ in m.decoders]
    m.train_step(batch(rng, 8, 20), None, active=np.array([0, 1], np.uint8), train_head=False)
    np.testing.assert_array_equal(m.decoders[0][0], before[0])
    assert not np.array_equal(m.decoders[1][0], before[1])


# ---------------------------------------------------------------------------- PyTorch autograd

def test_matches_pytorch_autograd_and_adam(rng, torch_one_thread):
    """Two cells (LenNorm -> Linear -> ReLU, decoder back to the block's input, the next block
    reading the detached output) in PyTorch through fflib.torch's twin and its ae_loss:
    losses and every gradient of a compute-only step, then three Adam steps."""
    torch = torch_one_thread
    from fflib.torch import to_module, ae_loss
    m = uff_model([13, 9, 6], 3, seed=4)
    net = to_module(m).double()
    x = batch(rng, 7, 13)
    xt = torch.from_numpy(x.astype(np.float64))

    def torch_losses():
        losses, h = [], xt
        for b, (f, l) in enumerate(net.blocks):
            out = net.run(h, f, l)
            dec = net.decoders[b]
            losses.append(ae_loss(out, h, dec.weight, dec.bias))
            h = out.detach()
        return losses

    lt = torch_losses()
    sum(lt).backward()
    lc = m.compute_grads(x, None, train_head=False)
    np.testing.assert_allclose(lc[:2], [v.item() for v in lt], rtol=1e-5)
    n = m._net
    for i, p in ((1, net.layers[1]), (4, net.layers[4]), (_core.DECODER, net.decoders[0]),
                 (_core.DECODER - 1, net.decoders[1])):
        np.testing.assert_allclose(n.param(i, P["grad_weight"]), p.weight.grad.numpy(), rtol=2e-4, atol=1e-7)
        np.testing.assert_allclose(n.param(i, P["grad_bias"]), p.bias.grad.numpy(), rtol=2e-4, atol=1e-7)
    # three Adam steps on every layer and decoder
    m.zero_grad()
    Adam(m, lr=1e-2)
    params = [p for layer in net.layers for p in layer.parameters()] + list(net.decoders.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        sum(torch_losses()).backward()
        opt.step()
        m.train_step(x, None, train_head=False)
    sd = m.state_dict()
    for k, v in net.state_dict().items():
        np.testing.assert_allclose(sd[k], v.numpy(), rtol=1e-4, atol=1e-6, err_msg=k)


def test_matches_the_torch_training_twin(rng, torch_one_thread):
    """fflib.torch.TorchFF (the shared twin of FFModel.train_step) on an ae model: three steps
    of the cells without labels, then two probe steps (frozen cells, the head on labels)."""
    from fflib.torch import TorchFF
    m = uff_model([13, 9, 6], 3, seed=6)
    opt = Adam(m, lr=1e-2, head_lr=0.05)
    twin = TorchFF(m, optimizer=opt)
    x, y = batch(rng, 8, 13), np.arange(8, dtype=np.int64) % 3
    for _ in range(3):
        np.testing.assert_allclose(m.train_step(x, None, train_head=False),
                                   twin.step(x, None, train_head=False), rtol=1e-5, atol=1e-7)
    off = np.zeros(2, np.uint8)
    for _ in range(2):
        np.testing.assert_allclose(m.train_step(x, y, active=off, train_head=True),
                                   twin.step(x, y, active=off, train_head=True), rtol=1e-5, atol=1e-6)
    sd = m.state_dict()
    for k, v in twin.net.state_dict().items():
        np.testing.assert_allclose(sd[k], v.numpy(), rtol=1e-4, atol=1e-6, err_msg=k)


# ---------------------------------------------------------------------------- the model's state

def test_decoders_are_saved_loaded_and_stepped_by_the_optimisers(rng, tmp_path):
    m = uff_model([20, 16, 12], 3, seed=0)
    assert m.trainable_layers() == [1, 4, _core.DECODER, _core.DECODER - 1, -1]
    assert [(w.shape, b.shape) for w, b in m.decoders] == [((20, 16), (20,)), ((16, 12), (16,))]
    assert {k for k in m.state_dict() if k.startswith("decoders.")} == \
        {"decoders.0.weight", "decoders.0.bias", "decoders.1.weight", "decoders.1.bias"}
    opt = SGD(m, lr=0.05, momentum=0.9)
    assert m._net.get_opt(_core.DECODER - 1)["lr"] == pytest.approx(0.05)
    x = batch(rng, 10, 20)
    for _ in range(2):
        m.train_step(x, None, train_head=False)
    assert m._net.get_step(_core.DECODER) == 2
    p = tmp_path / "uff.npz"
    m.save(str(p))
    m2 = FFModel.load(str(p))
    assert m2.config["loss"] == "ae" and len(m2.decoders) == 2
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, m2.state_dict()[k], err_msg=k)
    assert "decoders.1.m_weight" in m2.optimizer_state()
    # resuming: the same next steps, bit for bit
    for _ in range(2):
        np.testing.assert_array_equal(m.train_step(x, None, train_head=False),
                                      m2.train_step(x, None, train_head=False))
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, m2.state_dict()[k], err_msg=k)
    assert type(m2.optimizer) is type(opt)


# ---------------------------------------------------------------------------- bad inputs

def test_bad_models_are_refused_clearly():
    with pytest.raises(ValueError, match="label_encoding='none'"):
        FFModel(mlp([20, 8]), (20, 1, 1), 3, loss="ae")
    with pytest.raises(ValueError, match="MLP blocks"):
        FFModel([Conv2d(1, 4, 3), ReLU(), Flatten(), Linear(4 * 4 * 4, 8), ReLU()], (1, 6, 6), 3, loss="ae",
                label_encoding="none")
    plain = FFModel(mlp([20, 8]), (20, 1, 1), 3, loss="ff", label_encoding="none")
    with pytest.raises(ValueError, match="decoder"):
        plain.set_config(loss="ae")
    assert plain.config["loss"] == "ff"
    m = uff_model([20, 16, 12], 3)
    with pytest.raises(ValueError, match="another cut"):
        m.set_blocks([len(m.layers)])
    assert m.blocks == [(0, 3), (3, 6)]
    with pytest.raises(ValueError, match="label_encoding='none'"):
        FFModel(mlp([20, 8]), (20, 1, 1), 3, loss="ae", label_encoding="onehot")


def test_ae_models_refuse_what_they_cannot_do(rng):
    m = uff_model([20, 16, 12], 3)
    x = batch(rng, 4, 20)
    with pytest.raises(ValueError, match="no class scores"):
        m.goodness(x)
    with pytest.raises(ValueError, match="no class scores"):
        m.predict_multipass(x)
    with pytest.raises(ValueError, match="not pipelined"):
        m.pipeline_begin(4, train_head=False)
    with pytest.raises(ValueError, match="labels are required"):
        m.train_step(x, None, train_head=True)       # the head learns from labels
    with pytest.raises((TypeError, ValueError), match="x_neg"):
        FFModel(mlp([20, 8]), (20, 1, 1), 3).train_step(x, None)   # other losses still need labels
    mixed = uff_model([20, 15, 12], 3)     # one block on a loss that reads labels
    mixed._net.set_block_loss(1, fflib.nn.LOSSES["cwc"], 0, 2.0, 4.0, 0.0)
    with pytest.raises(ValueError, match="block 1 trains by the cwc loss"):
        mixed.train_step(x, None, train_head=False)
    assert mixed.train_step(x, None, active=np.array([1, 0], np.uint8), train_head=False)[0] > 0
    with pytest.raises(ValueError, match="NaN"):
        m.train_step(np.full((4, 20), np.nan, np.float32), None, train_head=False)


def test_fit_uff_rejects_bad_arguments(rng):
    x, y = batch(rng, 20, 20), np.arange(20) % 3
    m = uff_model([20, 8], 3)
    plain = FFModel(mlp([20, 8]), (20, 1, 1), 3, label_encoding="none")
    with pytest.raises(ValueError, match="loss='ae'"):
        fit_uff(plain, x, y)
    with pytest.raises(TypeError, match="FFModel"):
        fit_uff("model", x, y)
    with pytest.raises(ValueError, match="order"):
        fit_uff(m, x, y, order="backwards")
    with pytest.raises(ValueError, match="epochs"):
        fit_uff(m, x, y, epochs=-1)
    with pytest.raises(ValueError, match="pass y"):
        fit_uff(m, x, None, head_epochs=2)
    with pytest.raises(ValueError, match="x_val and y_val"):
        fit_uff(m, x, y, x_val=x)
    with pytest.raises(ValueError, match="does not apply to method 'uff'"):
        fflib.fit(m, x, y, method="uff", routine="chunked", progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        fit_uff(m, x, y, optimizer=Adam(uff_model([20, 8], 3)))
    with pytest.raises(ValueError, match="method='uff'"):
        fflib.fit(m, x, y, progress=False)


def test_fit_method_uff_and_orders(rng):
    x, y = batch(rng, 40, 20), np.arange(40) % 3
    m = uff_model([20, 8, 6], 3, seed=1)
    h = fflib.fit(m, x, y, method="uff", epochs=2, head_epochs=1, batch_size=10, order="layerwise",
                  progress=False, x_val=x, y_val=y)
    assert h["method"] == "uff" and h["order"] == "sequential"
    assert [r["phase"] for r in h["epochs"]] == ["uff"] * 4 + ["probe"]
    assert [r["active"] for r in h["epochs"][:4]] == [[0], [0], [1], [1]]
    assert 0.0 <= h["epochs"][-1]["val_error"] <= 100.0
    h2 = fit_uff(uff_model([20, 8, 6], 3, seed=1), x, None, epochs=2, head_epochs=0, batch_size=10)
    assert [r["active"] for r in h2["epochs"]] == [None, None]
    assert all(len(r["block_loss"]) == 2 and r["head_loss"] is None for r in h2["epochs"])


def test_cli_method_uff(tmp_path, capsys):
    from fflib.cli import main
    out = tmp_path / "uff.json"
    assert main(["train", "--method", "uff", "--layers", "32", "--epochs", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["method"] == "uff" and res["config"]["layers"][1:] == [32]
    assert 0.0 < res["test_error"]["probe"] < 90.0
    assert "test error (linear probe)" in capsys.readouterr().out
    assert main(["train", "--method", "uff", "--layers", "32", "--epochs", "1", "--head-epochs", "2",
                 "--val-size", "500", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert (res["config"]["probe_epochs"], res["config"]["val_size"]) == (2, 500)
    assert res["config"]["schedule"] == {"kind": "LinearCooldown", "total": 3, "start": 1}
    assert main(["train", "--method", "uff", "--layers", "32", "--epochs", "1", "--head-epochs", "2",
                 "--milestones", "1", "--gamma", "0.5", "--out", str(out)]) == 0
    assert [e["lr"] for e in json.loads(out.read_text())["epochs"]] == pytest.approx([3e-3, 1.5e-3, 1.5e-3])
    assert [e["phase"] for e in res["epochs"]] == ["uff", "probe", "probe"]
    assert all(0 < e["val_error"] < 90 for e in res["epochs"][1:])
    for flag in (["--threshold", "2"], ["--goodness", "sum"], ["--head-blocks", "0"], ["--pvn-weight", "0.1"]):
        with pytest.raises(SystemExit):
            main(["train", "--method", "uff", *flag])
        assert "does not apply to --method uff" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--method", "uff", "--augment", "crop2"])
    assert "does not apply to --method uff" in capsys.readouterr().err


# ---------------------------------------------------------------------------- real data

def test_uff_features_beat_the_untrained_network_on_mnist(mnist):
    """Autoencoder cells (784-128-128, 5 epochs on 10,000 unlabelled images) against the same
    network untrained, both read by the same linear probe (10 epochs on the same 10,000
    labelled images, head lr 0.1), test error on 2,000 test images.  Measured (1 thread, seeds
    0/1/2): untrained 17.2 / 16.2 / 16.45 %, UFF 12.6 / 12.15 / 12.4 %."""
    x, y, xt, yt = mnist
    x, y, xt, yt = x[:10000], y[:10000], xt[:2000], yt[:2000]
    from fflib.unsupervised import probe_error
    errors = {}
    for epochs in (0, 5):
        m = uff_model([784, 128, 128], 10, seed=0)
        fit_uff(m, x, y, epochs=epochs, head_epochs=10, optimizer=Adam(m, lr=3e-3, head_lr=0.1), random_state=0)
        errors[epochs] = probe_error(m, xt, yt)
    assert errors[5] < 14.0, errors
    assert errors[5] < errors[0] - 2.5, errors
