"""FF CNNs: a few training steps of fflib's C network against the same network written with
PyTorch autograd (same weights, batches and negatives), the label encodings, and the survey's
CNN builders."""
import numpy as np
import pytest

import fflib
from fflib import models

torch = pytest.importorskip("torch")
F = torch.nn.functional


def small_cnn(batchnorm=True):
    layers = models.conv_block(2, 6, 3, padding=1, pool=2, batchnorm=batchnorm, norm="rms")
    layers += models.conv_block(6, 8, 3, padding=0, batchnorm=batchnorm, groups=2, norm="rms")
    layers += [fflib.Flatten(), fflib.LenNorm("rms"), fflib.Linear(8 * 2 * 2, 9), fflib.ReLU()]
    return layers


def encode(x, y, K, enc, value, model):
    """The label encodings, written independently of the C code."""
    x = x.copy()
    N, C, H, W = x.shape
    if enc == "onehot":
        flat = x.reshape(N, C, H * W)
        flat[:, :, :K] = 0.0
        flat[np.arange(N), :, y] = value
        return x
    if enc == "fourier":
        hh, ww = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
        k = np.arange(K)[:, None, None]
        phi, lam = np.pi * k / K, max(H, W) / (2 + k % 3)
        pat = np.cos(2 * np.pi * (hh * np.cos(phi) + ww * np.sin(phi)) / lam)
        return x + value * pat[y][:, None].astype(np.float32)
    raise ValueError(enc)


class TorchFFCNN:
    """The same FF CNN with torch autograd: per block, detached input, forward, goodness of
    the block output, FF loss over positive then negative rows."""

    def __init__(self, model):
        self.model = model
        self.params = {}
        for i, layer in enumerate(model.layers):
            for name in ("weight", "bias"):
                a = getattr(layer, name, None) if layer.kind in ("linear", "conv2d", "batchnorm2d") else None
                if a is not None:
                    self.params[(i, name)] = torch.tensor(a.copy(), requires_grad=True)
        self.rm = {i: torch.tensor(l.running_mean.copy()) for i, l in enumerate(model.layers) if l.kind == "batchnorm2d"}
        self.rv = {i: torch.tensor(l.running_var.copy()) for i, l in enumerate(model.layers) if l.kind == "batchnorm2d"}

    def run_layer(self, i, h):
        layer = self.model.layers[i]
        p = lambda n: self.params.get((i, n))
        if layer.kind == "conv2d":
            return F.conv2d(h, p("weight"), p("bias"), layer.stride, layer.padding, 1, layer.groups)
        if layer.kind == "batchnorm2d":
            return F.batch_norm(h, self.rm[i], self.rv[i], p("weight"), p("bias"), training=True,
                                momentum=layer.momentum, eps=layer.eps)
        if layer.kind == "relu":
            return F.relu(h)
        if layer.kind == "maxpool2d":
            return F.max_pool2d(h, layer.kernel_size, layer.stride)
        if layer.kind == "flatten":
            return h.reshape(h.shape[0], -1)
        if layer.kind == "lennorm":
            flat = h.reshape(h.shape[0], -1)
            assert layer.norm == "rms"
            return (flat / torch.sqrt((flat ** 2).mean(1, keepdim=True) + layer.eps)).reshape(h.shape)
        if layer.kind == "linear":
            return F.linear(h.reshape(h.shape[0], -1), p("weight"), p("bias"))
        raise ValueError(layer.kind)

    def losses(self, xin):
        cfg = self.model.config
        B = xin.shape[0] // 2
        h = torch.tensor(xin)
        out = []
        for first, last in self.model.blocks:
            h = h.detach()
            for i in range(first, last):
                h = self.run_layer(i, h)
            g = (h.reshape(h.shape[0], -1) ** 2).mean(1)
            theta = cfg["threshold"]
            out.append((F.softplus(theta - g[:B]) + F.softplus(g[B:] - theta)).mean())
        return out


def test_cnn_local_gradients_match_torch(rng):
    model = fflib.FFModel(small_cnn(), (2, 8, 8), 4, goodness="mean", threshold=1.0, norm="rms",
                          head_blocks=None, seed=3)
    x = rng.random((5, 2, 8, 8), dtype=np.float32)
    y = rng.integers(0, 4, 5)
    neg = (y + 1 + rng.integers(0, 3, 5)) % 4
    tmodel = TorchFFCNN(model)
    losses = model.compute_grads(x.reshape(5, -1), y, neg)
    xin = np.concatenate([encode(x, y, 4, "onehot", 1.0, model), encode(x, neg, 4, "onehot", 1.0, model)])
    tl = tmodel.losses(xin)
    sum(tl).backward()
    np.testing.assert_allclose(losses[:3], [float(v.detach()) for v in tl], rtol=1e-5)
    for (i, name), p in tmodel.params.items():
        got = getattr(model.layers[i], "grad_" + name)
        np.testing.assert_allclose(got, p.grad.numpy(), rtol=1e-4, atol=1e-6 * float(np.abs(p.grad.numpy()).max() + 1))
    for i in tmodel.rm:   # running statistics from the positive+negative rows
        np.testing.assert_allclose(model.layers[i].running_mean, tmodel.rm[i].numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(model.layers[i].running_var, tmodel.rv[i].numpy(), rtol=1e-5)


@pytest.mark.parametrize("B", [1, 40], ids=["one-chunk", "several-chunks"])
@pytest.mark.parametrize("one_block", [False, True], ids=["layerwise", "one-block"])
def test_conv_relu_pool_run_in_row_chunks_matches_torch(rng, B, one_block):
    """Conv -> ReLU -> MaxPool inside a block keeps only the pooled output and runs in chunks of
    rows (64 rows of this 16x64x64 conv output per chunk): losses, gradients and running
    statistics equal autograd's, with the conv first in its block (block 1: no input gradient),
    after other layers (block 0), and with the pooled output feeding more layers of the same
    block (one block: the ReLU mask then matters).  Autograd runs in float64 here: at these sizes
    float32 autograd itself strays 1e-4 from the exact gradient."""
    layers = models.conv_block(2, 16, 3, padding=1, pool=2, batchnorm=True, norm="rms")
    layers += models.conv_block(16, 8, 3, padding=1, pool=4)
    model = fflib.FFModel(layers, (2, 64, 64), 4, goodness="mean", threshold=1.0, norm="rms",
                          head_blocks=None, seed=5, blocks=[len(layers)] if one_block else None)
    nb = len(model.blocks)
    x = rng.random((B, 2, 64, 64), dtype=np.float32)
    y = rng.integers(0, 4, B)
    neg = (y + 1 + rng.integers(0, 3, B)) % 4
    tmodel = TorchFFCNN(model)
    for k in tmodel.params:
        tmodel.params[k] = tmodel.params[k].detach().double().requires_grad_(True)
    for i in tmodel.rm:
        tmodel.rm[i], tmodel.rv[i] = tmodel.rm[i].double(), tmodel.rv[i].double()
    losses = model.compute_grads(x.reshape(B, -1), y, neg)
    xin = np.concatenate([encode(x, y, 4, "onehot", 1.0, model), encode(x, neg, 4, "onehot", 1.0, model)])
    tl = tmodel.losses(xin.astype(np.float64))
    sum(tl).backward()
    np.testing.assert_allclose(losses[:nb], [float(v.detach()) for v in tl], rtol=1e-5)
    for (i, name), p in tmodel.params.items():
        got, want = getattr(model.layers[i], "grad_" + name), p.grad.numpy()
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want), (i, name)
    for i in tmodel.rm:
        np.testing.assert_allclose(model.layers[i].running_mean, tmodel.rm[i].numpy(), rtol=1e-5, atol=1e-7)
    model.eval()
    n = min(B, 3)
    scores = model.goodness(x[:n].reshape(n, -1))    # inference runs the same chunked path
    with torch.no_grad():
        for k in range(4):
            h = torch.tensor(encode(x[:n], np.full(n, k), 4, "onehot", 1.0, model).astype(np.float64))
            for b, (first, last) in enumerate(model.blocks):
                for i in range(first, last):
                    h = tmodel.run_layer(i, h) if model.layers[i].kind != "batchnorm2d" else F.batch_norm(
                        h, tmodel.rm[i], tmodel.rv[i], tmodel.params[(i, "weight")], tmodel.params[(i, "bias")],
                        training=False, eps=model.layers[i].eps)
                np.testing.assert_allclose(scores[:, k, b], (h.reshape(n, -1) ** 2).mean(1).numpy(), rtol=1e-4)


def test_cnn_adam_steps_match_torch(rng):
    model = fflib.FFModel(small_cnn(), (2, 8, 8), 4, goodness="mean", threshold=1.0, norm="rms",
                          head_blocks=None, seed=4)
    fflib.Adam(model, lr=0.01)
    tmodel = TorchFFCNN(model)
    opt = torch.optim.Adam(list(tmodel.params.values()), lr=0.01)
    fflib.set_num_threads(1)
    try:
        for step in range(5):
            x = rng.random((6, 2, 8, 8), dtype=np.float32)
            y = rng.integers(0, 4, 6)
            neg = (y + 1 + rng.integers(0, 3, 6)) % 4
            losses = model.train_step(x.reshape(6, -1), y, neg)
            opt.zero_grad()
            xin = np.concatenate([encode(x, y, 4, "onehot", 1.0, model), encode(x, neg, 4, "onehot", 1.0, model)])
            tl = tmodel.losses(xin)
            sum(tl).backward()
            opt.step()
            np.testing.assert_allclose(losses[:3], [float(v.detach()) for v in tl], rtol=1e-4)
    finally:
        fflib.set_num_threads(2)
    for (i, name), p in tmodel.params.items():
        a, b = getattr(model.layers[i], name), p.detach().numpy()
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b), (i, name)


def test_fourier_encoding_matches_documented_pattern(rng):
    model = fflib.FFModel(small_cnn(False), (2, 8, 8), 4, goodness="mean", threshold=1.0, norm="rms",
                          label_encoding="fourier", label_value=0.5, head_blocks=None, seed=5)
    x = rng.random((3, 2, 8, 8), dtype=np.float32)
    y = np.array([0, 3, 1])
    neg = np.array([2, 0, 3])
    losses = model.compute_grads(x.reshape(3, -1), y, neg)
    xin = np.concatenate([encode(x, y, 4, "fourier", 0.5, model), encode(x, neg, 4, "fourier", 0.5, model)])
    tl = TorchFFCNN(model).losses(xin)
    np.testing.assert_allclose(losses[:3], [float(v.detach()) for v in tl], rtol=1e-5)


def test_label_embedding_is_trained_by_the_first_block(rng):
    model = fflib.FFModel([fflib.LenNorm("rms"), fflib.Conv2d(3, 6, 3, padding=1), fflib.ReLU(),
                           fflib.LenNorm("rms"), fflib.Conv2d(6, 4, 3), fflib.ReLU()], (2, 6, 6), 4, goodness="mean",
                          threshold=1.0, norm="rms", label_encoding="embedding", head_blocks=None, seed=6)
    emb = model.label_embedding
    assert emb.shape == (4, 36)
    x = rng.random((5, 2, 6, 6), dtype=np.float32)
    y = rng.integers(0, 4, 5)
    neg = (y + 1) % 4
    model.compute_grads(x.reshape(5, -1), y, neg)
    # torch: the embedding map of the label is the third input channel, a leaf with a gradient
    temb = torch.tensor(emb.copy(), requires_grad=True)
    w = torch.tensor(model.layers[1].weight.copy())
    b = torch.tensor(model.layers[1].bias.copy())
    lab = torch.tensor(np.concatenate([y, neg]))
    xin = torch.cat([torch.tensor(np.concatenate([x, x])), temb[lab].reshape(10, 1, 6, 6)], dim=1)
    flat = xin.reshape(10, -1)
    flat = flat / torch.sqrt((flat ** 2).mean(1, keepdim=True) + 1e-4)
    h = F.relu(F.conv2d(flat.reshape(10, 3, 6, 6), w, b, padding=1))
    g = (h.reshape(10, -1) ** 2).mean(1)
    loss = (F.softplus(1.0 - g[:5]) + F.softplus(g[5:] - 1.0)).mean()
    loss.backward()
    grad = model._net.param(-2, 4)
    np.testing.assert_allclose(grad, temb.grad.numpy(), rtol=1e-4, atol=1e-7)
    before = emb.copy()
    fflib.Adam(model, lr=0.01)
    model.train_step(x.reshape(5, -1), y, neg, active=[1, 0])
    assert not np.array_equal(emb, before)          # block 0 trains the embedding ...
    before = emb.copy()
    model.train_step(x.reshape(5, -1), y, neg, active=[0, 1])
    assert np.array_equal(emb, before)              # ... block 1 does not


def test_survey_cnns_build_and_shapes():
    layers, shape = models.mnist_cnn()
    m = fflib.FFModel(layers, shape, 10)
    assert m.num_blocks == 3 and m._net.layer_shape(len(layers) - 1) == (100, 1, 1)
    assert m.blocks == [(0, 4), (4, 8), (8, 12)]
    assert m.layers[-2].weight.shape == (100, 256)   # the survey's 256x100 linear layer
    layers, shape = models.cifar10_cnn()
    m = fflib.FFModel(layers, shape, 10, head_blocks=None)
    assert m.num_blocks == 4
    assert [m.layers[i].weight.shape[0] for i in range(len(layers)) if layers[i].kind == "conv2d"] == [128, 264, 512, 1024]


def test_cnn_train_eval_mode_and_inference(rng):
    layers, shape = models.mnist_cnn(batchnorm=True)
    m = fflib.FFModel(layers, shape, 10, goodness="mean", threshold=1.0, norm="rms", seed=0)
    x = rng.random((20, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 20)
    fflib.fit(m, x, y, epochs=1, batch_size=10, progress=False)
    m.eval()
    a = m.goodness(x[:3])
    b = m.goodness(x[:3])
    assert a.shape == (3, 10, 3) and np.array_equal(a, b)
    np.testing.assert_allclose(m.goodness(x[:1])[0], a[0], rtol=1e-5)   # eval mode: rows do not interact
    m.train()
    assert not np.allclose(m.goodness(x[:2])[0], a[0])  # batch statistics in training mode
    p = m.eval().predict_proba(x)
    assert p.shape == (20, 10) and np.allclose(p.sum(1), 1, atol=1e-5)


def test_bad_cnn_configs():
    with pytest.raises(ValueError, match="groups must divide"):
        fflib.FFModel([fflib.Conv2d(3, 5, 3, groups=2), fflib.ReLU()], (3, 8, 8), 4)
    with pytest.raises(ValueError, match="kernel must fit"):
        fflib.FFModel([fflib.Conv2d(3, 4, 9), fflib.ReLU()], (3, 8, 8), 4)
    with pytest.raises(ValueError, match="receives 3 channels"):
        fflib.FFModel([fflib.Conv2d(1, 4, 3), fflib.ReLU()], (3, 8, 8), 4)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        fflib.Conv2d(3, 4, 3, stride=0)
    with pytest.raises(ValueError, match="larger than its input"):
        fflib.FFModel([fflib.Conv2d(3, 4, 3), fflib.ReLU(), fflib.MaxPool2d(8)], (3, 8, 8), 4)
    with pytest.raises(ValueError, match="label_encoding must be one of"):
        fflib.FFModel([fflib.Conv2d(3, 4, 3), fflib.ReLU()], (3, 8, 8), 4, label_encoding="qr")
    with pytest.raises(ValueError, match="needs an image"):
        fflib.FFModel(fflib.mlp([20, 5]), 20, 4, label_encoding="fourier")
