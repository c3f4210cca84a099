"""Tests of fflib/reference.py, the float64 NumPy oracle of the C kernels.

Every backward is checked against central finite differences of phi(x) = sum(R * f(x)) for
a random upstream gradient R: per element on small odd shapes, and along a random direction
on a medium shape.  Forwards are checked against direct loops written here and, when torch
is importable, against torch in float64.

The reference is loaded by file path so these tests run without the compiled extension.
"""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "fflib_reference", Path(__file__).resolve().parents[1] / "fflib" / "reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

H_FD = 1e-6      # finite-difference step
RTOL = 1e-6      # relative tolerance against finite differences


# ---------------------------------------------------------------------------- helpers

def numeric_grad(phi, x, h=H_FD):
    """Central differences of the scalar phi at x, one element at a time."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = phi(x)
        flat[i] = old - h
        fm = phi(x)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g


def check_grad(f, x, analytic, R, rng, full=True, rtol=RTOL):
    """Compare analytic (= d/dx sum(R * f(x))) with finite differences.

    full: per-element differences; always: one random-direction derivative (kann style).
    """
    x = np.asarray(x, dtype=np.float64)
    analytic = np.asarray(analytic, dtype=np.float64)
    assert analytic.shape == x.shape

    def phi(z):
        return float(np.sum(R * f(z)))

    scale = max(1.0, float(np.max(np.abs(analytic))))
    if full:
        num = numeric_grad(phi, x)
        np.testing.assert_allclose(analytic, num, rtol=rtol, atol=rtol * scale)
    u = rng.standard_normal(x.shape)
    u /= np.linalg.norm(u)
    num_dir = (phi(x + H_FD * u) - phi(x - H_FD * u)) / (2 * H_FD)
    ana_dir = float(np.sum(analytic * u))
    assert abs(ana_dir - num_dir) <= rtol * max(1.0, float(np.linalg.norm(analytic)))


def randn(rng, *shape):
    return rng.standard_normal(shape)


def away_from_zero(rng, *shape, margin=0.1):
    """Random values with |x| >= margin, so kinks (relu) stay out of the FD stencil."""
    x = rng.standard_normal(shape)
    return np.sign(x) * (np.abs(x) + margin)


def distinct(rng, *shape):
    """Values that differ pairwise by at least 0.01, in random order (unique maxima)."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.01 - 0.005 * n).reshape(shape)


# ---------------------------------------------------------------------------- linear, relu

@pytest.mark.parametrize("B,I,O,full", [(1, 5, 3, True), (3, 7, 5, True), (13, 29, 17, False)])
def test_linear_grad(B, I, O, full):
    rng = np.random.default_rng(1)
    x, w, b = randn(rng, B, I), randn(rng, O, I), randn(rng, O)
    R = randn(rng, B, O)
    dx, dw, db = ref.linear_backward(R, x, w)
    check_grad(lambda z: ref.linear_forward(z, w, b), x, dx, R, rng, full)
    check_grad(lambda z: ref.linear_forward(x, z, b), w, dw, R, rng, full)
    check_grad(lambda z: ref.linear_forward(x, w, z), b, db, R, rng, full)


def test_linear_forward_no_bias():
    rng = np.random.default_rng(2)
    x, w = randn(rng, 3, 5), randn(rng, 7, 5)
    expect = np.array([[sum(x[b, i] * w[o, i] for i in range(5)) for o in range(7)]
                       for b in range(3)])
    np.testing.assert_allclose(ref.linear_forward(x, w), expect, rtol=1e-13)
    # float32 input is accepted and computed in float64
    assert ref.linear_forward(x.astype(np.float32), w).dtype == np.float64


@pytest.mark.parametrize("shape,full", [((1, 5), True), ((3, 7), True), ((13, 37), False)])
def test_relu_grad(shape, full):
    rng = np.random.default_rng(3)
    x = away_from_zero(rng, *shape)
    R = randn(rng, *shape)
    out = ref.relu_forward(x)
    assert np.all(out >= 0) and np.array_equal(out, np.where(x > 0, x, 0.0))
    check_grad(ref.relu_forward, x, ref.relu_backward(R, out), R, rng, full)


# ---------------------------------------------------------------------------- length normalisation

@pytest.mark.parametrize("kind", ["none", "l2", "rms"])
@pytest.mark.parametrize("eps", [1e-4, 0.5])
@pytest.mark.parametrize("shape,full", [((1, 5), True), ((3, 7), True), ((13, 37), False)])
def test_lennorm_grad(kind, eps, shape, full):
    rng = np.random.default_rng(4)
    x = randn(rng, *shape)
    R = randn(rng, *shape)
    dx = ref.lennorm_backward(R, x, kind, eps)
    check_grad(lambda z: ref.lennorm_forward(z, kind, eps)[0], x, dx, R, rng, full)


def test_lennorm_forward_values():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]])
    out, s = ref.lennorm_forward(x, "l2", 0.5)
    np.testing.assert_allclose(s, [1 / 5.5, 1 / 0.5, 1 / (math.sqrt(2) + 0.5)], rtol=1e-15)
    np.testing.assert_allclose(out, x * s[:, None], rtol=1e-15)
    out, s = ref.lennorm_forward(x, "rms", 0.5)
    np.testing.assert_allclose(s, [1 / math.sqrt(12.5 + 0.5), 1 / math.sqrt(0.5), 1 / math.sqrt(1.5)],
                               rtol=1e-15)
    out, s = ref.lennorm_forward(x, "none", 0.5)
    assert np.array_equal(out, x) and np.array_equal(s, np.ones(3))
    # A zero row has a finite gradient (eps keeps the scale finite).
    d = ref.lennorm_backward(np.ones((3, 2)), x, "l2", 1e-4)
    assert np.all(np.isfinite(d))
    with pytest.raises(ValueError):
        ref.lennorm_forward(x, "l1", 0.5)


# ---------------------------------------------------------------------------- goodness

@pytest.mark.parametrize("kind", ["sum", "mean", "neg-sum", "neg-mean"])
@pytest.mark.parametrize("shape,full", [((1, 5), True), ((3, 7), True), ((13, 37), False)])
def test_goodness_grad(kind, shape, full):
    rng = np.random.default_rng(5)
    x = randn(rng, *shape)
    R = randn(rng, shape[0])
    g = ref.goodness_forward(x, kind)
    expect = (x ** 2).sum(1) / (shape[1] if kind.endswith("mean") else 1) * (-1 if kind.startswith("neg-") else 1)
    np.testing.assert_allclose(g, expect, rtol=1e-14)
    check_grad(lambda z: ref.goodness_forward(z, kind), x, ref.goodness_backward(R, x, kind), R,
               rng, full)


@pytest.mark.parametrize("shape,J,full", [
    ((1, 5, 1, 1), 5, True), ((3, 6, 3, 5), 3, True), ((2, 7, 3), 1, True),
    ((5, 15, 7, 5), 5, False)])
def test_group_goodness_grad(shape, J, full):
    rng = np.random.default_rng(6)
    x = randn(rng, *shape)
    R = randn(rng, shape[0], J)
    G = ref.group_goodness_forward(x, J)
    # direct: group j is channels j*S .. j*S+S-1
    S = shape[1] // J
    expect = np.array([[np.mean(x[b, j * S:(j + 1) * S] ** 2) for j in range(J)]
                       for b in range(shape[0])])
    np.testing.assert_allclose(G, expect, rtol=1e-14)
    dx = ref.group_goodness_backward(R, x, J)
    assert dx.shape == x.shape
    check_grad(lambda z: ref.group_goodness_forward(z, J), x, dx, R, rng, full)


# ---------------------------------------------------------------------------- softplus, sigmoid

def test_softplus_sigmoid_exact_moderate():
    for z in np.linspace(-30, 30, 241):
        z = float(z)
        sp = math.log1p(math.exp(z))
        sg = 1.0 / (1.0 + math.exp(-z))
        assert abs(float(ref.softplus(z)) - sp) <= 4e-16 * max(sp, 1e-300)
        assert abs(float(ref.sigmoid(z)) - sg) <= 4e-16 * sg


def test_softplus_sigmoid_extreme():
    z = np.array([-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        sp, sg = ref.softplus(z), ref.sigmoid(z)
    assert np.all(np.isfinite(sp)) and np.all(np.isfinite(sg))
    assert sp[0] == 0.0 and sp[-1] == 1e4 and sp[3] == math.log(2.0)
    assert sg[0] == 0.0 and sg[-1] == 1.0 and sg[3] == 0.5
    np.testing.assert_allclose(sp[2], math.exp(-50.0), rtol=1e-15)   # log1p(e^-50) ~ e^-50
    np.testing.assert_allclose(sg[2], math.exp(-50.0), rtol=1e-15)


# ---------------------------------------------------------------------------- losses

@pytest.mark.parametrize("B,full", [(1, True), (7, True), (61, False)])
def test_ff_loss_grad(B, full):
    rng = np.random.default_rng(7)
    gp, gn = 2 + 2 * randn(rng, B), 2 + 2 * randn(rng, B)
    theta = 1.7
    L, dgp, dgn = ref.ff_loss(gp, gn, theta)
    expect = np.mean([math.log1p(math.exp(theta - a)) + math.log1p(math.exp(b - theta))
                      for a, b in zip(gp, gn)])
    assert abs(L - expect) <= 1e-14 * expect
    check_grad(lambda z: ref.ff_loss(z, gn, theta)[0], gp, dgp, 1.0, rng, full)
    check_grad(lambda z: ref.ff_loss(gp, z, theta)[0], gn, dgn, 1.0, rng, full)


@pytest.mark.parametrize("B,full", [(1, True), (7, True), (61, False)])
def test_symba_loss_grad(B, full):
    rng = np.random.default_rng(8)
    gp, gn = 2 + randn(rng, B), 2 + randn(rng, B)
    alpha = 4.0
    L, dgp, dgn = ref.symba_loss(gp, gn, alpha)
    expect = np.mean([math.log1p(math.exp(-alpha * (a - b))) for a, b in zip(gp, gn)])
    assert abs(L - expect) <= 1e-14 * expect
    check_grad(lambda z: ref.symba_loss(z, gn, alpha)[0], gp, dgp, 1.0, rng, full)
    check_grad(lambda z: ref.symba_loss(gp, z, alpha)[0], gn, dgn, 1.0, rng, full)


def test_loss_stability():
    big = 1e4
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        L, dp, dn = ref.ff_loss([big], [-big], 2.0)           # perfect: loss ~ 0
        assert L == 0.0 and abs(dp[0]) < 1e-300 and abs(dn[0]) < 1e-300
        L, dp, dn = ref.ff_loss([-big], [-big], 2.0)          # positive badly wrong
        assert L == pytest.approx(big + 2, rel=1e-15) and dp[0] == -1.0 and abs(dn[0]) < 1e-300
        L, dp, dn = ref.ff_loss([-big, big], [big, -big], 2.0)  # mean over a batch of 2
        assert L == pytest.approx(((big + 2) + (big - 2)) / 2, rel=1e-15)
        assert dp[0] == -0.5 and dn[0] == 0.5 and abs(dp[1]) < 1e-300 and abs(dn[1]) < 1e-300

        L, dp, dn = ref.symba_loss([big], [-big], 4.0)        # right by a huge margin
        assert L == 0.0 and abs(dp[0]) < 1e-300 and abs(dn[0]) < 1e-300
        L, dp, dn = ref.symba_loss([-big], [big], 4.0)        # wrong by a huge margin
        assert L == pytest.approx(8 * big, rel=1e-15) and dp[0] == -4.0 and dn[0] == 4.0

        L, probs, d = ref.softmax_xent([[big, -big, 0.0]], [1])
        assert L == pytest.approx(2 * big, rel=1e-15)
        assert np.all(np.isfinite(probs)) and np.all(np.isfinite(d))
        np.testing.assert_allclose(d, [[1.0, -1.0, 0.0]], atol=1e-300)


@pytest.mark.parametrize("B,K,full", [(1, 3, True), (5, 7, True), (13, 10, False)])
def test_softmax_xent_grad(B, K, full):
    rng = np.random.default_rng(9)
    z = 3 * randn(rng, B, K)
    y = rng.integers(0, K, B)
    L, probs, dz = ref.softmax_xent(z, y)
    # direct: -mean log(exp(z_y) / sum exp(z))
    expect = -np.mean([z[b, y[b]] - math.log(sum(math.exp(v) for v in z[b])) for b in range(B)])
    assert abs(L - expect) <= 1e-13 * max(1.0, abs(expect))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-15)
    check_grad(lambda t: ref.softmax_xent(t, y)[0], z, dz, 1.0, rng, full)
    with pytest.raises(ValueError):
        ref.softmax_xent(z, np.full(B, K))


@pytest.mark.parametrize("B,J,full", [(1, 3, True), (5, 7, True), (13, 10, False)])
def test_cwc_loss_grad(B, J, full):
    rng = np.random.default_rng(10)
    G = np.abs(randn(rng, B, J))
    y = rng.integers(0, J, B)
    L, dG = ref.cwc_loss(G, y)
    L2, _, dG2 = ref.softmax_xent(G, y)
    assert L == L2 and np.array_equal(dG, dG2)
    check_grad(lambda t: ref.cwc_loss(t, y)[0], G, dG, 1.0, rng, full)


@pytest.mark.parametrize("B,J,full", [(1, 2, True), (1, 3, True), (5, 7, True), (13, 10, False)])
def test_pvn_loss_grad(B, J, full):
    rng = np.random.default_rng(11)
    G = 2 * np.abs(randn(rng, B, J))
    y = rng.integers(0, J, B)
    theta = 1.3
    L, dG = ref.pvn_loss(G, y, theta)
    gpos = np.array([G[b, y[b]] for b in range(B)])
    gneg = np.array([np.mean([G[b, j] for j in range(J) if j != y[b]]) for b in range(B)])
    assert L == pytest.approx(ref.ff_loss(gpos, gneg, theta)[0], rel=1e-14)
    check_grad(lambda t: ref.pvn_loss(t, y, theta)[0], G, dG, 1.0, rng, full)


# ---------------------------------------------------------------------------- optimisers

def test_adam_three_steps_by_hand():
    lr, b1, b2, eps, wd = 0.01, 0.8, 0.95, 1e-3, 0.1
    p0 = np.array([0.5, -1.5, 2.0])
    grads = [np.array([0.3, -0.2, 0.1]), np.array([-0.4, 0.5, 0.0]), np.array([0.2, 0.2, -0.7])]
    p, m, v = p0.copy(), np.zeros(3), np.zeros(3)
    for t, g in enumerate(grads, start=1):
        p, m, v = ref.adam_step(p, m, v, g, lr, b1, b2, eps, wd, t)

    # the same three steps, unrolled
    g1 = grads[0] + wd * p0
    m1 = (1 - b1) * g1
    v1 = (1 - b2) * g1 ** 2
    p1 = p0 - lr / (1 - b1) * m1 / (np.sqrt(v1) / np.sqrt(1 - b2) + eps)
    g2 = grads[1] + wd * p1
    m2 = b1 * m1 + (1 - b1) * g2
    v2 = b2 * v1 + (1 - b2) * g2 ** 2
    p2 = p1 - lr / (1 - b1 ** 2) * m2 / (np.sqrt(v2) / np.sqrt(1 - b2 ** 2) + eps)
    g3 = grads[2] + wd * p2
    m3 = b1 * m2 + (1 - b1) * g3
    v3 = b2 * v2 + (1 - b2) * g3 ** 2
    p3 = p2 - lr / (1 - b1 ** 3) * m3 / (np.sqrt(v3) / np.sqrt(1 - b2 ** 3) + eps)
    np.testing.assert_allclose(p, p3, rtol=1e-15)
    np.testing.assert_allclose(m, m3, rtol=1e-15)
    np.testing.assert_allclose(v, v3, rtol=1e-15)


@pytest.mark.parametrize("momentum,dampening,nesterov,wd", [
    (0.0, 0.0, False, 0.0), (0.0, 0.0, False, 0.1), (0.9, 0.0, False, 0.0),
    (0.9, 0.3, False, 0.05), (0.9, 0.0, True, 0.05)])
def test_sgd_three_steps_by_hand(momentum, dampening, nesterov, wd):
    lr = 0.1
    p0 = np.array([0.5, -1.5, 2.0])
    grads = [np.array([0.3, -0.2, 0.1]), np.array([-0.4, 0.5, 0.0]), np.array([0.2, 0.2, -0.7])]
    p, buf = p0.copy(), None
    for t, g in enumerate(grads, start=1):
        p, buf = ref.sgd_step(p, buf, g, lr, momentum, dampening, wd, nesterov, t)

    mu = momentum
    d1 = grads[0] + wd * p0
    b1 = d1                                          # the buffer starts at the first gradient
    p1 = p0 - lr * ((d1 + mu * b1) if nesterov else (b1 if mu else d1))
    d2 = grads[1] + wd * p1
    b2 = mu * b1 + (1 - dampening) * d2
    p2 = p1 - lr * ((d2 + mu * b2) if nesterov else (b2 if mu else d2))
    d3 = grads[2] + wd * p2
    b3 = mu * b2 + (1 - dampening) * d3
    p3 = p2 - lr * ((d3 + mu * b3) if nesterov else (b3 if mu else d3))
    np.testing.assert_allclose(p, p3, rtol=1e-15)
    if mu:
        np.testing.assert_allclose(buf, b3, rtol=1e-15)
    else:
        assert buf is None


def test_optimisers_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    p0 = randn(rng, 7)
    grads = [randn(rng, 7) for _ in range(5)]

    def run_torch(make_opt):
        tp = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
        opt = make_opt([tp])
        for g in grads:
            tp.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
        return tp.detach().numpy()

    for wd in (0.0, 0.1):
        for b1, b2, eps in ((0.9, 0.999, 1e-8), (0.5, 0.9, 1e-2)):
            p, m, v = p0.copy(), np.zeros(7), np.zeros(7)
            for t, g in enumerate(grads, start=1):
                p, m, v = ref.adam_step(p, m, v, g, 0.01, b1, b2, eps, wd, t)
            expect = run_torch(lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(b1, b2), eps=eps,
                                                           weight_decay=wd, foreach=False))
            np.testing.assert_allclose(p, expect, rtol=1e-12, atol=1e-14)

    for momentum, dampening, nesterov, wd in [(0.0, 0.0, False, 0.0), (0.0, 0.0, False, 0.1),
                                              (0.9, 0.0, False, 0.0), (0.9, 0.3, False, 0.05),
                                              (0.8, 0.0, True, 0.05)]:
        p, buf = p0.copy(), np.zeros(7)
        for t, g in enumerate(grads, start=1):
            p, buf = ref.sgd_step(p, buf, g, 0.05, momentum, dampening, wd, nesterov, t)
        expect = run_torch(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=momentum,
                                                      dampening=dampening, weight_decay=wd,
                                                      nesterov=nesterov, foreach=False))
        np.testing.assert_allclose(p, expect, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- conv2d

# (N, C, H, W, OC, K, stride, pad, groups)
CONV_CASES = [
    (1, 3, 5, 5, 2, 1, 1, 0, 1),      # 1x1
    (2, 3, 7, 6, 5, 3, 1, 1, 1),      # non-square input
    (1, 3, 8, 7, 2, 3, 2, 0, 1),      # stride 2 leaves the last row/column unused
    (1, 4, 7, 7, 6, 3, 2, 1, 2),      # two groups
    (2, 3, 6, 7, 3, 3, 1, 1, 3),      # depthwise
    (1, 3, 5, 5, 6, 3, 1, 2, 3),      # depthwise with channel multiplier 2, pad 2
    (1, 2, 9, 8, 3, 4, 2, 2, 1),      # even kernel, pad 2
    (1, 2, 5, 5, 4, 4, 1, 0, 2),      # even kernel, groups 2
    (1, 3, 7, 7, 5, 5, 1, 2, 1),      # 5x5 "same"
    (1, 5, 8, 7, 5, 5, 2, 0, 5),      # depthwise 5x5 stride 2
]


def _conv_params(rng, case):
    N, C, H, W, OC, K, stride, pad, groups = case
    x = randn(rng, N, C, H, W)
    w = randn(rng, OC, C // groups, K, K)
    b = randn(rng, OC)
    return x, w, b, stride, pad, groups


def conv2d_loops(x, w, b, stride, pad, groups):
    """The textbook definition: seven nested loops."""
    N, C, H, W = x.shape
    OC, Cg, KH, KW = w.shape
    OH, OW = (H + 2 * pad - KH) // stride + 1, (W + 2 * pad - KW) // stride + 1
    OCg = OC // groups
    out = np.zeros((N, OC, OH, OW))
    for n in range(N):
        for o in range(OC):
            g = o // OCg
            for oh in range(OH):
                for ow in range(OW):
                    acc = 0.0 if b is None else b[o]
                    for c in range(Cg):
                        for kh in range(KH):
                            for kw in range(KW):
                                h, w_ = oh * stride + kh - pad, ow * stride + kw - pad
                                if 0 <= h < H and 0 <= w_ < W:
                                    acc += w[o, c, kh, kw] * x[n, g * Cg + c, h, w_]
                    out[n, o, oh, ow] = acc
    return out


@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (1, 2, 3, 5, 6)])
def test_conv2d_forward_loops(case):
    rng = np.random.default_rng(13)
    x, w, b, stride, pad, groups = _conv_params(rng, case)
    out = ref.conv2d_forward(x, w, b, stride, pad, groups)
    np.testing.assert_allclose(out, conv2d_loops(x, w, b, stride, pad, groups), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(ref.conv2d_forward(x, w, None, stride, pad, groups),
                               conv2d_loops(x, w, None, stride, pad, groups), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_grad(case):
    rng = np.random.default_rng(14)
    x, w, b, stride, pad, groups = _conv_params(rng, case)
    out = ref.conv2d_forward(x, w, b, stride, pad, groups)
    R = randn(rng, *out.shape)
    dx, dw, db = ref.conv2d_backward(R, x, w, stride, pad, groups)
    check_grad(lambda z: ref.conv2d_forward(z, w, b, stride, pad, groups), x, dx, R, rng)
    check_grad(lambda z: ref.conv2d_forward(x, z, b, stride, pad, groups), w, dw, R, rng)
    check_grad(lambda z: ref.conv2d_forward(x, w, z, stride, pad, groups), b, db, R, rng)


def test_conv2d_grad_medium_directional():
    rng = np.random.default_rng(15)
    for case in [(3, 6, 13, 11, 9, 3, 2, 1, 3), (2, 4, 9, 9, 6, 3, 1, 1, 1)]:
        x, w, b, stride, pad, groups = _conv_params(rng, case)
        R = randn(rng, *ref.conv2d_forward(x, w, b, stride, pad, groups).shape)
        dx, dw, db = ref.conv2d_backward(R, x, w, stride, pad, groups)
        check_grad(lambda z: ref.conv2d_forward(z, w, b, stride, pad, groups), x, dx, R, rng,
                   full=False)
        check_grad(lambda z: ref.conv2d_forward(x, z, b, stride, pad, groups), w, dw, R, rng,
                   full=False)


def test_conv2d_against_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(16)
    for case in CONV_CASES + [(3, 6, 13, 11, 9, 3, 2, 1, 3)]:
        x, w, b, stride, pad, groups = _conv_params(rng, case)
        out = ref.conv2d_forward(x, w, b, stride, pad, groups)
        R = randn(rng, *out.shape)
        dx, dw, db = ref.conv2d_backward(R, x, w, stride, pad, groups)
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        tout = F.conv2d(tx, tw, tb, stride=stride, padding=pad, groups=groups)
        tout.backward(torch.tensor(R))
        np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_conv2d_speed_and_shapes():
    import time
    rng = np.random.default_rng(17)
    x, w = randn(rng, 2, 4, 9, 9), randn(rng, 6, 4, 3, 3)
    t0 = time.perf_counter()
    out = ref.conv2d_forward(x, w, None, 1, 1, 1)
    ref.conv2d_backward(out, x, w, 1, 1, 1)
    assert time.perf_counter() - t0 < 0.5
    assert out.shape == (2, 6, 9, 9)
    with pytest.raises(ValueError):
        ref.conv2d_forward(x, randn(rng, 6, 3, 3, 3), None, 1, 1, 2)   # 4 channels vs 2 groups of 3


# ---------------------------------------------------------------------------- batchnorm2d

def batchnorm_loops(x, gamma, beta, eps):
    """Per channel, by loops: mean, biased var, normalise, affine."""
    N, C, H, W = x.shape
    out = np.zeros_like(x)
    means, vars_ = np.zeros(C), np.zeros(C)
    for c in range(C):
        vals = [x[n, c, h, w] for n in range(N) for h in range(H) for w in range(W)]
        mu = sum(vals) / len(vals)
        var = sum((v - mu) ** 2 for v in vals) / len(vals)
        means[c], vars_[c] = mu, var
        for n in range(N):
            for h in range(H):
                for w in range(W):
                    y = (x[n, c, h, w] - mu) / math.sqrt(var + eps)
                    out[n, c, h, w] = y * (1.0 if gamma is None else gamma[c]) + (
                        0.0 if beta is None else beta[c])
    return out, means, vars_


@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_forward_loops(affine):
    rng = np.random.default_rng(18)
    x = 1.5 + 2 * randn(rng, 3, 4, 3, 5)
    gamma, beta = (randn(rng, 4), randn(rng, 4)) if affine else (None, None)
    rm, rv = randn(rng, 4), 1 + np.abs(randn(rng, 4))
    eps, mom = 1e-3, 0.2
    out, mean, rstd, nrm, nrv = ref.batchnorm2d_forward_train(x, gamma, beta, eps, rm, rv, mom)
    expect, mu, var = batchnorm_loops(x, gamma, beta, eps)
    n = 3 * 3 * 5
    np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, mu, rtol=1e-13)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(var + eps), rtol=1e-13)
    np.testing.assert_allclose(nrm, 0.8 * rm + 0.2 * mu, rtol=1e-13)
    np.testing.assert_allclose(nrv, 0.8 * rv + 0.2 * var * n / (n - 1), rtol=1e-13)
    # eval mode with the batch's own statistics reproduces the training output
    np.testing.assert_allclose(ref.batchnorm2d_forward_eval(x, mu, var, gamma, beta, eps), expect,
                               rtol=1e-12, atol=1e-12)
    # (N, C, HW) layout gives the same numbers
    out3 = ref.batchnorm2d_forward_train(x.reshape(3, 4, 15), gamma, beta, eps)[0]
    np.testing.assert_allclose(out3.reshape(x.shape), out, rtol=1e-15)


@pytest.mark.parametrize("shape,full", [((2, 3, 3, 5), True), ((1, 2, 1, 3), True),
                                        ((5, 7, 5, 3), False)])
def test_batchnorm_grad(shape, full):
    rng = np.random.default_rng(19)
    C = shape[1]
    x = randn(rng, *shape)
    gamma, beta = randn(rng, C), randn(rng, C)
    eps = 1e-3
    R = randn(rng, *shape)
    _, mean, rstd, _, _ = ref.batchnorm2d_forward_train(x, gamma, beta, eps)
    dx, dgamma, dbeta = ref.batchnorm2d_backward(R, x, mean, rstd, gamma)

    def fwd(xx, gg, bb):
        return ref.batchnorm2d_forward_train(xx, gg, bb, eps)[0]

    check_grad(lambda z: fwd(z, gamma, beta), x, dx, R, rng, full)
    check_grad(lambda z: fwd(x, z, beta), gamma, dgamma, R, rng, full)
    check_grad(lambda z: fwd(x, gamma, z), beta, dbeta, R, rng, full)
    # no affine
    _, mean, rstd, _, _ = ref.batchnorm2d_forward_train(x, None, None, eps)
    dx0, dg0, db0 = ref.batchnorm2d_backward(R, x, mean, rstd, None)
    assert dg0 is None and db0 is None
    check_grad(lambda z: fwd(z, None, None), x, dx0, R, rng, full)


def test_batchnorm_against_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(20)
    x = 0.5 + 3 * randn(rng, 3, 5, 4, 7)
    gamma, beta = randn(rng, 5), randn(rng, 5)
    rm, rv = randn(rng, 5), 1 + np.abs(randn(rng, 5))
    eps, mom = 1e-5, 0.1
    R = randn(rng, *x.shape)
    out, mean, rstd, nrm, nrv = ref.batchnorm2d_forward_train(x, gamma, beta, eps, rm, rv, mom)
    dx, dg, db = ref.batchnorm2d_backward(R, x, mean, rstd, gamma)

    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    tout = F.batch_norm(tx, trm, trv, tg, tb, training=True, momentum=mom, eps=eps)
    tout.backward(torch.tensor(R))
    tol = dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol)
    np.testing.assert_allclose(nrm, trm.numpy(), **tol)
    np.testing.assert_allclose(nrv, trv.numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(dg, tg.grad.numpy(), **tol)
    np.testing.assert_allclose(db, tb.grad.numpy(), **tol)
    ev = F.batch_norm(torch.tensor(x), torch.tensor(rm), torch.tensor(rv), torch.tensor(gamma),
                      torch.tensor(beta), training=False, eps=eps)
    np.testing.assert_allclose(ref.batchnorm2d_forward_eval(x, rm, rv, gamma, beta, eps),
                               ev.numpy(), **tol)


# ---------------------------------------------------------------------------- maxpool2d

def maxpool_loops(x, K, stride):
    N, C, H, W = x.shape
    OH, OW = (H - K) // stride + 1, (W - K) // stride + 1
    out = np.zeros((N, C, OH, OW))
    arg = np.zeros((N, C, OH, OW), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    best, bi = -math.inf, -1
                    for kh in range(K):              # rows, then columns; first max wins
                        for kw in range(K):
                            h, w = oh * stride + kh, ow * stride + kw
                            if x[n, c, h, w] > best:
                                best, bi = x[n, c, h, w], h * W + w
                    out[n, c, oh, ow], arg[n, c, oh, ow] = best, bi
    return out, arg


MAXPOOL_CASES = [((1, 1, 4, 4), 2, 2), ((2, 3, 7, 6), 2, 2), ((1, 2, 7, 7), 3, 2),
                 ((2, 2, 5, 6), 3, 1), ((1, 3, 5, 5), 1, 1)]


@pytest.mark.parametrize("shape,K,stride", MAXPOOL_CASES)
def test_maxpool_forward_loops(shape, K, stride):
    rng = np.random.default_rng(21)
    # small integers: many ties, to pin down the first-max rule
    x = rng.integers(0, 3, shape).astype(np.float64)
    out, arg = ref.maxpool2d_forward(x, K, stride)
    e_out, e_arg = maxpool_loops(x, K, stride)
    assert arg.dtype == np.int32
    np.testing.assert_array_equal(out, e_out)
    np.testing.assert_array_equal(arg, e_arg)
    # backward with ties: dout lands exactly on the argmax positions, summed on overlap
    dout = randn(rng, *out.shape)
    dx = ref.maxpool2d_backward(dout, arg, shape[2], shape[3])
    expect = np.zeros(shape)
    for idx in np.ndindex(*out.shape):
        h, w = divmod(int(arg[idx]), shape[3])
        expect[idx[0], idx[1], h, w] += dout[idx]
    np.testing.assert_allclose(dx, expect, rtol=1e-15)


@pytest.mark.parametrize("shape,K,stride", MAXPOOL_CASES + [((3, 4, 11, 13), 3, 2)])
def test_maxpool_grad(shape, K, stride):
    rng = np.random.default_rng(22)
    x = distinct(rng, *shape)
    out, arg = ref.maxpool2d_forward(x, K, stride)
    R = randn(rng, *out.shape)
    dx = ref.maxpool2d_backward(R, arg, shape[2], shape[3])
    full = int(np.prod(shape)) <= 200
    check_grad(lambda z: ref.maxpool2d_forward(z, K, stride)[0], x, dx, R, rng, full)


def test_maxpool_against_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(23)
    for shape, K, stride in MAXPOOL_CASES + [((3, 4, 11, 13), 3, 2)]:
        x = distinct(rng, *shape)
        out, arg = ref.maxpool2d_forward(x, K, stride)
        R = randn(rng, *out.shape)
        dx = ref.maxpool2d_backward(R, arg, shape[2], shape[3])
        tx = torch.tensor(x, requires_grad=True)
        tout, tidx = F.max_pool2d(tx, K, stride, return_indices=True)
        tout.backward(torch.tensor(R))
        np.testing.assert_array_equal(out, tout.detach().numpy())
        np.testing.assert_array_equal(arg, tidx.numpy())
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-15)


# ---------------------------------------------------------------------------- overlay_labels

def test_overlay_labels():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2) + 10
    out = ref.overlay_labels(x, [2, -1], 3, 0.5)
    assert out.shape == x.shape and out.dtype == np.float64
    rows, xr = out.reshape(2, -1), x.reshape(2, -1)
    np.testing.assert_array_equal(rows[0, :3], [0, 0, 0.5])
    np.testing.assert_allclose(rows[1, :3], [0.5 / 3] * 3, rtol=1e-15)
    np.testing.assert_array_equal(rows[:, 3:], xr[:, 3:])
    assert x[0, 0, 0, 0] == 10                        # the input is not modified
    with pytest.raises(ValueError):
        ref.overlay_labels(x, [3, 0], 3, 1.0)
    with pytest.raises(ValueError):
        ref.overlay_labels(x, [-2, 0], 3, 1.0)
