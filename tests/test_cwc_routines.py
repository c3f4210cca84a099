"""Channel-wise competitive learning (CwC and PvN losses on channel-group goodness) and the
training routines (greedy, chunked, overlapping, backprop, alternating), against the float64
reference and PyTorch autograd (the twin of fflib.torch)."""
import sys
from pathlib import Path

import numpy as np
import pytest

import fflib
from fflib import models, reference as ref, routines

torch = pytest.importorskip("torch")
F = torch.nn.functional
from fflib.torch import TorchFF  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oracle_torch import fflib_grads, rel_err, torch_grads  # noqa: E402
from conftest import fd_grad  # noqa: E402


def tiny_cwc(loss="cwc", pvn_weight=0.0, seed=0, head_blocks=None, margin=0.7):
    """Four units of BN -> Conv(3x3, pad 1) -> ReLU (-> pool), 4 or 8 channels for K=4 classes."""
    layers = models.conv_block(2, 4, 3, padding=1, batchnorm=True)
    layers += models.conv_block(4, 8, 3, padding=1, pool=2, batchnorm=True, groups=4)
    layers += models.conv_block(8, 8, 3, padding=1, batchnorm=True)
    layers += models.conv_block(8, 4, 3, padding=1, batchnorm=True)
    return fflib.FFModel(layers, (2, 8, 8), 4, loss=loss, pvn_weight=pvn_weight, threshold=2.0,
                         label_encoding="none", norm="none", head_blocks=head_blocks, seed=seed, margin=margin)


def batch(rng, n=6):
    return rng.random((n, 2, 8, 8), dtype=np.float32), rng.integers(0, 4, n)


@pytest.mark.parametrize("loss, w", [("cwc", 0.0), ("pvn", 0.0), ("cwc", 0.3)])
def test_group_losses_against_reference(rng, loss, w):
    G = rng.random((7, 4)).astype(np.float32) * 3
    y = rng.integers(0, 4, 7)
    L_ce, dG_ce = ref.cwc_loss(G, y)
    L_pvn, dG_pvn = ref.pvn_loss(G, y, 2.0)
    wt = 1.0 if loss == "pvn" else w
    want_L = (1 - wt) * L_ce + wt * L_pvn
    # through a one-unit network whose output *is* the activation: compare via torch instead
    t = torch.tensor(G, dtype=torch.float64, requires_grad=True)
    gpos = t.gather(1, torch.tensor(y)[:, None])[:, 0]
    gneg = (t.sum(1) - gpos) / 3
    tl = (1 - wt) * F.cross_entropy(t, torch.tensor(y)) + wt * (F.softplus(2 - gpos) + F.softplus(gneg - 2)).mean()
    tl.backward()
    assert float(tl.detach()) == pytest.approx(want_L, rel=1e-10)
    np.testing.assert_allclose((1 - wt) * dG_ce + wt * dG_pvn, t.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("margin", [0.0, 0.8, 3.0])
def test_df_cwc_loss_reference(rng, margin):
    """DF's N-pair margin loss on group goodness: the float64 reference against finite
    differences, against CwC's eq. 3 at margin 0, and against PyTorch's cross-entropy of the
    logits with every wrong group raised by the margin (a different formula for the same loss)."""
    G = rng.standard_normal((7, 5)) * 2
    y = rng.integers(0, 5, 7)
    L, dG = ref.df_cwc_loss(G, y, margin)
    np.testing.assert_allclose(dG, fd_grad(lambda g: ref.df_cwc_loss(g, y, margin)[0], G), rtol=1e-6, atol=1e-9)
    if margin == 0.0:
        L0, dG0 = ref.cwc_loss(G, y)
        assert L == pytest.approx(L0, rel=1e-12)
        np.testing.assert_allclose(dG, dG0, atol=1e-14)
    t = torch.tensor(G, requires_grad=True)
    yt = torch.tensor(y)
    tl = F.cross_entropy(t + margin * (1 - F.one_hot(yt, 5).double()), yt)
    tl.backward()
    assert float(tl.detach()) == pytest.approx(L, rel=1e-12)
    np.testing.assert_allclose(dG, t.grad.numpy(), rtol=1e-10, atol=1e-14)
    assert L > ref.cwc_loss(G, y)[0] or margin == 0.0     # the margin only adds to the loss


def test_group_goodness_kernel(rng):
    act = rng.standard_normal((3, 8, 5, 5)).astype(np.float32)
    G = np.zeros((3, 4), np.float32)
    fflib._core.group_goodness_forward(G, act, 4)
    np.testing.assert_allclose(G, ref.group_goodness_forward(act, 4), rtol=1e-5)
    dG = rng.standard_normal((3, 4)).astype(np.float32)
    da = np.zeros_like(act)
    fflib._core.group_goodness_backward(da, dG, act, 4)
    np.testing.assert_allclose(da, ref.group_goodness_backward(dG, act, 4), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="must divide"):
        fflib._core.group_goodness_forward(np.zeros((3, 3), np.float32), act, 3)


@pytest.mark.parametrize("loss, w", [("cwc", 0.0), ("pvn", 0.0), ("cwc", 0.28), ("df-cwc", 0.0)])
@pytest.mark.parametrize("routine", ["greedy", "chunked", "overlapping", "backprop"])
def test_routines_gradients_match_torch(rng, loss, w, routine):
    m = tiny_cwc(loss, w)
    ranges = routines.block_ranges(m, routine, 2)
    m.set_block_ranges(ranges)
    x, y = batch(rng)
    twin = TorchFF(m)
    assert twin.net.blocks == ranges
    got = m.compute_grads(x.reshape(6, -1), y)
    tl = twin.step(x, y, update=False)
    np.testing.assert_allclose(got[:len(ranges)], tl[:len(ranges)], rtol=1e-5)
    gf, gt = fflib_grads(m), torch_grads(twin.net)
    assert set(gf) == set(gt)
    for k in sorted(gf):
        np.testing.assert_allclose(gf[k], gt[k], rtol=2e-4, atol=1e-6 * (1 + float(np.abs(gt[k]).max())),
                                   err_msg=f"{routine} {k}")
    for i, layer in enumerate(m.layers):   # each layer's running statistics move once
        if layer.kind == "batchnorm2d":
            np.testing.assert_allclose(layer.running_var, twin.net.layers[i].running_var.numpy(), rtol=1e-5)


def test_no_gradient_crosses_a_chunk(rng):
    """Each chunk's loss alone: only that chunk's layers receive gradient."""
    m = tiny_cwc()
    ranges = routines.block_ranges(m, "chunked", 2)
    m.set_block_ranges(ranges)
    x, y = batch(rng)
    for b, (first, last) in enumerate(ranges):
        active = [int(j == b) for j in range(len(ranges))]
        m.compute_grads(x.reshape(6, -1), y, active=active)
        for i, layer in enumerate(m.layers):
            if layer.kind in ("conv2d", "batchnorm2d"):
                g = np.abs(layer.grad_weight).max()
                assert (g > 0) == (first <= i < last), (b, i)


def test_inactive_chunks_keep_their_weights(rng):
    m = tiny_cwc()
    fflib.Adam(m, lr=0.01)
    ranges = routines.block_ranges(m, "chunked", 2)
    m.set_block_ranges(ranges)
    x, y = batch(rng)
    w_first = [l.weight.copy() for l in m.layers[:ranges[0][1]] if l.kind == "conv2d"]
    m.train_step(x.reshape(6, -1), y, active=[0, 1])
    assert all(np.array_equal(a, l.weight) for a, l in zip(w_first, [l for l in m.layers[:ranges[0][1]] if l.kind == "conv2d"]))


def test_backprop_equals_torch_autograd_over_steps(rng):
    # SGD, not Adam: Adam moves a weight with a near-zero gradient by ~lr whatever its sign, so
    # float32 rounding differences would be amplified; the gradients themselves are compared above
    m = tiny_cwc("cwc", seed=3)
    m.set_block_ranges(routines.block_ranges(m, "backprop"))
    twin = TorchFF(m, fflib.SGD(m, lr=0.05, momentum=0.9))
    fflib.set_num_threads(1)
    try:
        for _ in range(4):
            x, y = batch(rng)
            m.train_step(x.reshape(6, -1), y)
            twin.step(x, y)
    finally:
        fflib.set_num_threads(2)
    mine, theirs = m.state_dict(), twin.net.fflib_state_dict()
    for k in mine:
        assert rel_err(mine[k], theirs[k]) <= 1e-4, k


def test_alternating_chunks_and_windows(rng):
    m = tiny_cwc(head_blocks=[2, 3])
    x = rng.random((40, 2, 8, 8), dtype=np.float32)
    y = rng.integers(0, 4, 40)
    ranges_a = routines.block_ranges(m, "chunked", 2, 0)
    ranges_b = routines.block_ranges(m, "chunked", 2, 1)
    assert ranges_a != ranges_b and ranges_a[0][0] == ranges_b[0][0] == 0
    # 2 and 3 blocks: alternating chunkings with different block counts train (issue 9)
    hist = fflib.fit(m, x, y, epochs=1, routine="chunked", chunk_size=2, alternate=True, progress=False)
    assert m.blocks == ranges_a and len(hist["epochs"][0]["block_loss_shifted"]) == len(ranges_b)
    hist = fflib.fit(m, x, y, epochs=1, routine="chunked", chunk_size=4, progress=False)
    assert m.blocks == [(0, len(m.layers))] and np.isfinite(hist["epochs"][0]["block_loss"]).all()
    m.set_block_ranges(routines.block_ranges(m, "greedy"))
    hist = fflib.fit(m, x, y, epochs=3, batch_size=20, windows=[(0, 1), (0, 2), (1, 3), (2, 3)], progress=False)
    assert [e["active"] for e in hist["epochs"]] == [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    res = fflib.evaluate(m, x, y)
    assert set(res) == {"multi_pass", "one_pass", "block_accuracy"} and len(res["block_accuracy"]) == 4


def test_cwc_class_scores_are_group_goodness(rng):
    m = tiny_cwc()
    x, _ = batch(rng)
    m.eval()
    g = m.goodness(x.reshape(6, -1))
    assert g.shape == (6, 4, 4)
    # the last unit's output, computed by the reference from the model's own weights
    h = x.astype(np.float64)
    for l in m.layers:
        if l.kind == "batchnorm2d":
            h = ref.batchnorm2d_forward_eval(h, l.running_mean, l.running_var, l.weight, l.bias, l.eps)
        elif l.kind == "conv2d":
            h = ref.conv2d_forward(h, l.weight, l.bias, l.stride, l.padding, l.groups)
        elif l.kind == "relu":
            h = ref.relu_forward(h)
        elif l.kind == "maxpool2d":
            h = ref.maxpool2d_forward(h, l.kernel_size, l.stride)[0]
    np.testing.assert_allclose(g[:, :, 3], ref.group_goodness_forward(h, 4), rtol=1e-4)


def test_bad_cwc_setups(rng):
    layers = models.conv_block(2, 6, 3, padding=1)
    with pytest.raises(ValueError, match="6 channels"):    # 6 channels do not split into 4 groups
        fflib.FFModel(layers, (2, 8, 8), 4, loss="cwc", label_encoding="none", head_blocks=None)
    with pytest.raises(ValueError, match="pvn_weight"):
        tiny_cwc(pvn_weight=1.5)
    with pytest.raises(ValueError, match="routine must be one of"):
        routines.block_ranges(tiny_cwc(), "random")
    with pytest.raises(ValueError, match="overlapping chunks need chunk_size >= 2"):
        routines.block_ranges(tiny_cwc(), "overlapping", 1)


def test_head_gradient_independent_of_earlier_batch_sizes(rng):
    """Regression: the head's training probabilities once overran into its gradient buffer when
    a label-free model saw a batch smaller than the workspace."""
    x = rng.random((16, 2, 8, 8), dtype=np.float32).reshape(16, -1)
    y = rng.integers(0, 4, 16)
    fresh, used = tiny_cwc(head_blocks=[2, 3], seed=5), tiny_cwc(head_blocks=[2, 3], seed=5)
    used.compute_grads(x, y)                  # a larger batch first sizes the workspace
    fresh.compute_grads(x[:3], y[:3])
    used.compute_grads(x[:3], y[:3])
    gw_f, gw_u = fresh._net.param(-1, 4), used._net.param(-1, 4)
    np.testing.assert_allclose(gw_u, gw_f, rtol=1e-6, atol=1e-9)
    # and against a direct computation from the head's features
    feats = fresh.features(x[:3]).astype(np.float64)
    W, b = fresh.head_weight.astype(np.float64), fresh.head_bias.astype(np.float64)
    fresh.eval()
    _, _, dlogits = ref.softmax_xent(feats @ W.T + b, y[:3])
    np.testing.assert_allclose(gw_f, dlogits.T @ feats, rtol=1e-4, atol=1e-7)
