"""FF CNNs: a few training steps of fflib's C network against its PyTorch twin (fflib.torch:
autograd, same weights, batches and negatives), the label encodings, and the survey's CNN
builders."""
import sys
from pathlib import Path

import numpy as np
import pytest

import fflib
from fflib import models

torch = pytest.importorskip("torch")
F = torch.nn.functional
from fflib.torch import TorchFF  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oracle_torch import fflib_grads, rel_err, torch_grads  # noqa: E402


def small_cnn(batchnorm=True):
    layers = models.conv_block(2, 6, 3, padding=1, pool=2, batchnorm=batchnorm, norm="rms")
    layers += models.conv_block(6, 8, 3, padding=0, batchnorm=batchnorm, groups=2, norm="rms")
    layers += [fflib.Flatten(), fflib.LenNorm("rms"), fflib.Linear(8 * 2 * 2, 9), fflib.ReLU()]
    return layers


def encode(x, y, K, enc, value):
    """The label encodings, written independently of the C code and of fflib.torch."""
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


def assert_grads_match(model, twin, rtol=1e-4):
    gf, gt = fflib_grads(model), torch_grads(twin.net)
    assert set(gf) == set(gt)
    for k in sorted(gf):
        np.testing.assert_allclose(gf[k], gt[k], rtol=rtol, atol=1e-6 * float(np.abs(gt[k]).max() + 1), err_msg=k)


def assert_running_stats_match(model, net):
    for i, layer in enumerate(model.layers):
        if layer.kind == "batchnorm2d":   # running statistics from the positive+negative rows
            np.testing.assert_allclose(layer.running_mean, net.layers[i].running_mean.numpy(), rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(layer.running_var, net.layers[i].running_var.numpy(), rtol=1e-5)


def test_cnn_local_gradients_match_torch(rng):
    model = fflib.FFModel(small_cnn(), (2, 8, 8), 4, goodness="mean", threshold=1.0, norm="rms",
                          head_blocks=None, seed=3)
    x = rng.random((5, 2, 8, 8), dtype=np.float32)
    y = rng.integers(0, 4, 5)
    neg = (y + 1 + rng.integers(0, 3, 5)) % 4
    twin = TorchFF(model)
    np.testing.assert_array_equal(twin.net.encode(x, torch.tensor(y)).numpy(), encode(x, y, 4, "onehot", 1.0))
    losses = model.compute_grads(x.reshape(5, -1), y, neg)
    tl = twin.step(x, y, neg, update=False)
    np.testing.assert_allclose(losses[:3], tl[:3], rtol=1e-5)
    assert_grads_match(model, twin)
    assert_running_stats_match(model, twin.net)


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
    twin = TorchFF(model)
    twin.net.double()
    losses = model.compute_grads(x.reshape(B, -1), y, neg)
    tl = twin.step(x, y, neg, update=False)
    np.testing.assert_allclose(losses[:nb], tl[:nb], rtol=1e-5)
    gf, gt = fflib_grads(model), torch_grads(twin.net)
    assert set(gf) == set(gt)
    for k in gf:
        assert rel_err(gf[k], gt[k]) <= 1e-5, k
    for i, layer in enumerate(model.layers):
        if layer.kind == "batchnorm2d":
            np.testing.assert_allclose(layer.running_mean, twin.net.layers[i].running_mean.numpy(), rtol=1e-5, atol=1e-7)
    model.eval()
    twin.net.eval()
    n = min(B, 3)
    scores = model.goodness(x[:n].reshape(n, -1))    # inference runs the same chunked path
    np.testing.assert_allclose(scores, twin.net.goodness(x[:n]).numpy(), rtol=1e-4)


def test_cnn_adam_steps_match_torch(rng):
    model = fflib.FFModel(small_cnn(), (2, 8, 8), 4, goodness="mean", threshold=1.0, norm="rms",
                          head_blocks=None, seed=4)
    twin = TorchFF(model, fflib.Adam(model, lr=0.01))
    fflib.set_num_threads(1)
    try:
        for step in range(5):
            x = rng.random((6, 2, 8, 8), dtype=np.float32)
            y = rng.integers(0, 4, 6)
            neg = (y + 1 + rng.integers(0, 3, 6)) % 4
            losses = model.train_step(x.reshape(6, -1), y, neg)
            tl = twin.step(x, y, neg)
            np.testing.assert_allclose(losses[:3], tl[:3], rtol=1e-4)
    finally:
        fflib.set_num_threads(2)
    mine, theirs = model.state_dict(), twin.net.fflib_state_dict()
    for k in mine:
        assert rel_err(mine[k], theirs[k]) <= 1e-4, k


def test_fourier_encoding_matches_documented_pattern(rng):
    model = fflib.FFModel(small_cnn(False), (2, 8, 8), 4, goodness="mean", threshold=1.0, norm="rms",
                          label_encoding="fourier", label_value=0.5, head_blocks=None, seed=5)
    x = rng.random((3, 2, 8, 8), dtype=np.float32)
    y = np.array([0, 3, 1])
    neg = np.array([2, 0, 3])
    losses = model.compute_grads(x.reshape(3, -1), y, neg)
    twin = TorchFF(model)
    np.testing.assert_allclose(twin.net.encode(x, torch.tensor(y)).numpy(), encode(x, y, 4, "fourier", 0.5),
                               rtol=1e-6, atol=1e-6)
    tl = twin.step(x, y, neg, update=False)
    np.testing.assert_allclose(losses[:3], tl[:3], rtol=1e-5)
    assert_grads_match(model, twin)


def test_label_embedding_is_trained_by_the_first_block(rng):
    model = fflib.FFModel([fflib.LenNorm("rms"), fflib.Conv2d(3, 6, 3, padding=1), fflib.ReLU(),
                           fflib.LenNorm("rms"), fflib.Conv2d(6, 4, 3), fflib.ReLU()], (2, 6, 6), 4, goodness="mean",
                          threshold=1.0, norm="rms", label_encoding="embedding", head_blocks=None, seed=6)
    emb = model.label_embedding
    assert emb.shape == (4, 36)
    x = rng.random((5, 2, 6, 6), dtype=np.float32)
    y = rng.integers(0, 4, 5)
    neg = (y + 1) % 4
    twin = TorchFF(model, fflib.Adam(model, lr=0.01))
    model.compute_grads(x.reshape(5, -1), y, neg)
    # torch: the embedding map of the label is the third input channel, a leaf with a gradient
    twin.step(x, y, neg, update=False)
    np.testing.assert_allclose(fflib_grads(model)["label_embedding.weight"],
                               torch_grads(twin.net)["label_embedding.weight"], rtol=1e-4, atol=1e-7)
    assert_grads_match(model, twin)
    before = emb.copy()
    model.train_step(x.reshape(5, -1), y, neg, active=[1, 0])
    twin.step(x, y, neg, active=[1, 0])
    assert not np.array_equal(emb, before)          # block 0 trains the embedding ...
    np.testing.assert_allclose(emb, twin.net.label_embedding.weight.detach().numpy(), rtol=1e-4, atol=1e-6)
    before = emb.copy()
    model.train_step(x.reshape(5, -1), y, neg, active=[0, 1])
    twin.step(x, y, neg, active=[0, 1])
    assert np.array_equal(emb, before)              # ... block 1 does not
    np.testing.assert_allclose(emb, twin.net.label_embedding.weight.detach().numpy(), rtol=1e-4, atol=1e-6)


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


@pytest.mark.parametrize("name, dataset, match", [
    ("mlp", "fashion", "dataset must be one of mnist, fashion-mnist, sample, cifar10"),   # was a CIFAR-10 MLP
    ("cnn", None, "dataset must be one of"),
    ("ff_tiny", "mnist", "ff_tiny is a CIFAR-10 network"),
    ("ff_deep", "sample", "ff_deep is a CIFAR-10 network"),
    ("resnet", "mnist", "unknown model 'resnet'"),
])
def test_zoo_build_refuses_unknown_datasets_and_mismatched_images(name, dataset, match):
    with pytest.raises(ValueError, match=match):
        models.build(name, dataset)


def test_cifar10_survey_cnn_normalises_blocks_by_batchnorm():
    # the CIFAR-10 CNN's blocks open with BatchNorm2d, not a LenNorm (which divides out the
    # previous block's goodness: benchmarks/cifar10_cnn_study.py); the 28x28 CNN keeps LenNorm
    kinds = [l.kind for l in models.survey_cnn("cifar10")[0]]
    assert kinds == ["batchnorm2d", "conv2d", "relu", "maxpool2d"] * 4
    assert models.survey_cnn("cifar10")[0][0].num_features == 4       # image + label channel
    kinds = [l.kind for l in models.survey_cnn("cifar10", batchnorm=False)[0]]
    assert kinds == ["lennorm", "conv2d", "relu", "maxpool2d"] * 4
    assert [l.kind for l in models.survey_cnn("mnist")[0]][:2] == ["lennorm", "conv2d"]
    assert "batchnorm2d" not in [l.kind for l in models.survey_cnn("mnist")[0]]
    m = models.build("cnn", "cifar10")
    assert [l.kind for l in m.layers].count("batchnorm2d") == 4 and m.num_blocks == 4


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
