"""The C kernels (through fflib._core) against the float64 NumPy reference on odd shapes."""
import numpy as np
import pytest

import fflib
from fflib import _core
from fflib import reference as ref

SHAPES = [(1, 1), (1, 7), (3, 5), (13, 33), (9, 100)]


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * max(1.0, float(np.max(np.abs(b)))))


@pytest.mark.parametrize("B, I", SHAPES)
@pytest.mark.parametrize("O", [1, 6, 17])
def test_linear(rng, B, I, O):
    x, w, b, dout = f32(rng, B, I), f32(rng, O, I), f32(rng, O), f32(rng, B, O)
    out = np.zeros((B, O), np.float32)
    _core.linear_forward(out, x, w, b)
    close(out, ref.linear_forward(x, w, b))
    dx, dw, db = np.ones_like(x), np.ones_like(w), np.ones_like(b)   # backward adds
    _core.linear_backward(dx, dw, db, dout, x, w)
    rdx, rdw, rdb = ref.linear_backward(dout, x, w)
    close(dx - 1, rdx)
    close(dw - 1, rdw)
    close(db - 1, rdb)


@pytest.mark.parametrize("B, D", SHAPES)
def test_relu(rng, B, D):
    x, dout = f32(rng, B, D), f32(rng, B, D)
    out = np.zeros_like(x)
    _core.relu_forward(out, x)
    close(out, ref.relu_forward(x))
    dx = np.zeros_like(x)
    _core.relu_backward(dx, dout, out)
    close(dx, ref.relu_backward(dout, out))
    d = dout.copy()                     # the same array as dinp and dout: masked in place
    _core.relu_backward(d, d, out)
    close(d, ref.relu_backward(dout, out))
    nan = np.array([[np.nan, -1.0, 2.0]], np.float32)   # NaN is not hidden by the ReLU
    o = np.zeros_like(nan)
    _core.relu_forward(o, nan)
    assert np.isnan(o[0, 0]) and o[0, 1] == 0 and o[0, 2] == 2


@pytest.mark.parametrize("B, D", SHAPES)
@pytest.mark.parametrize("kind, code", [("none", 0), ("l2", 1), ("rms", 2)])
@pytest.mark.parametrize("eps", [1e-4, 0.5])
def test_lennorm(rng, B, D, kind, code, eps):
    x, dout = f32(rng, B, D, scale=3.0), f32(rng, B, D)
    out, scale = np.zeros_like(x), np.zeros(B, np.float32)
    _core.lennorm_forward(out, scale, x, code, eps)
    r_out, r_scale = ref.lennorm_forward(x, kind, eps)
    close(out, r_out)
    close(scale, r_scale)
    dx = np.zeros_like(x)
    _core.lennorm_backward(dx, dout, x, scale, code, eps)
    close(dx, ref.lennorm_backward(dout, x, kind, eps), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("B, D", SHAPES)
@pytest.mark.parametrize("kind, code", [("sum", 0), ("mean", 1), ("neg-sum", 2), ("neg-mean", 3)])
def test_goodness(rng, B, D, kind, code):
    a, dg = f32(rng, B, D), f32(rng, B)
    g = np.zeros(B, np.float32)
    _core.goodness_forward(g, a, code)
    close(g, ref.goodness_forward(a, kind))
    da = np.zeros_like(a)
    _core.goodness_backward(da, dg, a, code)
    close(da, ref.goodness_backward(dg, a, kind))


@pytest.mark.parametrize("B", [1, 5, 64])
def test_ff_and_symba_losses(rng, B):
    gp, gn = np.abs(f32(rng, B, scale=3)), np.abs(f32(rng, B, scale=3))
    for fn, rfn, arg in ((_core.ff_loss, ref.ff_loss, 2.0), (_core.symba_loss, ref.symba_loss, 4.0)):
        dp, dn = np.zeros(B, np.float32), np.zeros(B, np.float32)
        L = fn(dp, dn, gp, gn, arg)
        rL, rdp, rdn = rfn(gp, gn, arg)
        assert L == pytest.approx(rL, rel=1e-5)
        close(dp, rdp)
        close(dn, rdn)


def test_losses_are_stable_for_huge_goodness():
    big = np.array([1e4, -1e4, 0.0, 3e38], np.float32)
    for fn, arg in ((_core.ff_loss, 2.0), (_core.symba_loss, 4.0)):
        dp, dn = np.zeros(4, np.float32), np.zeros(4, np.float32)
        L = fn(dp, dn, big, big[::-1].copy(), arg)
        assert np.isfinite(L) and np.isfinite(dp).all() and np.isfinite(dn).all()
    dp, dn = np.zeros(1, np.float32), np.zeros(1, np.float32)
    assert _core.ff_loss(dp, dn, np.array([1e4], np.float32), np.array([-1e4], np.float32), 2.0) == 0.0
    assert _core.ff_loss(dp, dn, np.array([-1e4], np.float32), np.array([1e4], np.float32), 2.0) == \
        pytest.approx(2e4, rel=1e-6)
    assert dp[0] == pytest.approx(-1.0) and dn[0] == pytest.approx(1.0)


@pytest.mark.parametrize("B, K", [(1, 2), (7, 10), (33, 3)])
def test_softmax_xent(rng, B, K):
    z, y = f32(rng, B, K, scale=5), rng.integers(0, K, B)
    dz, p = np.zeros_like(z), np.zeros_like(z)
    L = _core.softmax_xent(dz, p, z, y)
    rL, rp, rdz = ref.softmax_xent(z, y)
    assert L == pytest.approx(rL, rel=1e-5)
    close(p, rp)
    close(dz, rdz)
    assert np.isfinite(_core.softmax_xent(None, None, np.array([[1e4, -1e4]], np.float32), np.array([1])))


@pytest.mark.parametrize("n", [1, 7, 1000, 300_001])   # the last is split over the threads
@pytest.mark.parametrize("wd", [0.0, 0.01, 0.1])
@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_adam_steps(rng, n, wd, kind):
    p, g = f32(rng, n), f32(rng, n)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    rp, rm, rv = p.astype(np.float64), np.zeros(n), np.zeros(n)
    step, ref_step = getattr(_core, kind + "_step"), getattr(ref, kind + "_step")
    for t in range(1, 6):
        g = f32(rng, n)
        step(p, m, v, g, 1e-2, 0.9, 0.999, 1e-8, wd, t)
        rp, rm, rv = ref_step(rp, rm, rv, g, 1e-2, 0.9, 0.999, 1e-8, wd, t)
    close(p, rp, rtol=1e-5, atol=1e-6)
    close(m, rm)
    close(v, rv)


def test_adamw_decay_is_decoupled(rng):
    """A zero gradient leaves Adam's moments at zero: AdamW then only shrinks the weights by
    1 - lr wd per step, while Adam's L2 decay goes through the moments (a step of about lr)."""
    p0 = f32(rng, 100)
    p, m, v = p0.copy(), np.zeros(100, np.float32), np.zeros(100, np.float32)
    for t in range(1, 4):
        _core.adamw_step(p, m, v, np.zeros(100, np.float32), 0.1, 0.9, 0.999, 1e-8, 0.5, t)
    np.testing.assert_allclose(p, p0 * np.float32(1 - 0.05) ** 3, rtol=1e-6)
    assert not m.any() and not v.any()
    q, m, v = p0.copy(), np.zeros(100, np.float32), np.zeros(100, np.float32)
    _core.adam_step(q, m, v, np.zeros(100, np.float32), 0.1, 0.9, 0.999, 1e-8, 0.5, 1)
    np.testing.assert_allclose(np.abs(p0 - q), 0.1, rtol=1e-3)   # Adam's first step: lr * sign


@pytest.mark.parametrize("momentum, dampening, nesterov", [(0.0, 0.0, False), (0.9, 0.0, False),
                                                           (0.9, 0.1, False), (0.9, 0.0, True)])
def test_sgd_steps(rng, momentum, dampening, nesterov):
    n = 13
    p, buf = f32(rng, n), np.zeros(n, np.float32)
    rp, rbuf = p.astype(np.float64), np.zeros(n)
    for t in range(1, 5):
        g = f32(rng, n)
        _core.sgd_step(p, buf, g, 0.1, momentum, dampening, 1e-3, nesterov, t)
        rp, rbuf = ref.sgd_step(rp, rbuf, g, 0.1, momentum, dampening, 1e-3, nesterov, t)
    close(p, rp)


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_optimiser_steps_do_not_depend_on_the_thread_count(rng, kind):
    # a tensor of 300,001 parameters is split over the threads (at least 65,536 each): every
    # element gets the same arithmetic, so 1, 2 and 3 threads give the same bits
    n = 300_001
    p0, g = f32(rng, n), f32(rng, n)
    outs = []
    before = fflib.get_num_threads()
    try:
        for threads in (1, 2, 3):
            fflib.set_num_threads(threads)
            p, a, b = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
            for t in range(1, 4):
                if kind in ("adam", "adamw"):
                    getattr(_core, kind + "_step")(p, a, b, g * t, 1e-2, 0.9, 0.999, 1e-8, 0.01, t)
                else:
                    _core.sgd_step(p, a, g * t, 0.1, 0.9, 0.1, 1e-3, True, t)
            outs.append((p, a, b))
    finally:
        fflib.set_num_threads(before)
    for o in outs[1:]:
        for x, y in zip(outs[0], o):
            assert np.array_equal(x, y)


@pytest.mark.parametrize("B, D, K", [(1, 12, 10), (5, 784, 10), (3, 4, 4)])
def test_overlay_labels(rng, B, D, K):
    x = rng.random((B, D), dtype=np.float32)
    y = rng.integers(-1, K, B)
    out = np.zeros_like(x)
    _core.overlay_labels(out, x, y, K, 1.5)
    close(out, ref.overlay_labels(x, y, K, 1.5))
    with pytest.raises(ValueError, match="must be in"):
        _core.overlay_labels(out, x, np.full(B, K, np.int64), K, 1.0)
