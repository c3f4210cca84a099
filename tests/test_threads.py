"""fflib's own worker threads (csrc/ff_thread.c): results do not depend on the thread count
beyond float summation order, runs are deterministic at any count, and the pool survives
fork() and concurrent Python threads."""
import multiprocessing as mp
import threading

import numpy as np
import pytest

import fflib
from fflib import _core, models


@pytest.fixture
def threads():
    old = fflib.get_num_threads()
    yield fflib.set_num_threads
    fflib.set_num_threads(old)


@pytest.mark.parametrize("bad", [0, 65, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_bad_counts(bad):
    with pytest.raises((ValueError, TypeError), match="n must be"):
        fflib.set_num_threads(bad)


def conv_case(rng, n=37, c=6, h=13, w=11, oc=12, k=3, groups=2):
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((oc, c // groups, k, k), dtype=np.float32)
    b = rng.standard_normal(oc, dtype=np.float32)
    dout = rng.standard_normal((n, oc, h, w), dtype=np.float32)
    return x, wt, b, dout


@pytest.mark.parametrize("shape", [dict(), dict(h=40, w=40, c=3, groups=1), dict(n=1), dict(n=5, k=1, groups=1)])
def test_conv_is_the_same_on_1_2_and_3_threads(threads, rng, shape):
    x, w, b, dout = conv_case(rng, **shape)
    k = w.shape[-1]
    res = []
    for t in (1, 2, 3):
        threads(t)
        out = np.zeros_like(dout)
        _core.conv2d_forward(out, x, w, b, 1, k // 2, x.shape[1] // w.shape[1])
        di, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
        _core.conv2d_backward(di, dw, db, dout, x, w, 1, k // 2, x.shape[1] // w.shape[1])
        res.append((out, di, dw, db))
    for out, di, dw, db in res[1:]:
        # images never mix in the forward and input gradient: identical; the weight gradient
        # sums per-thread partials, so only the summation order differs
        assert np.array_equal(out, res[0][0]) and np.array_equal(di, res[0][1])
        np.testing.assert_allclose(dw, res[0][2], rtol=1e-5, atol=1e-4)
        assert np.array_equal(db, res[0][3])


def test_large_gemms_split_into_panels_agree(threads, rng):
    x = rng.standard_normal((300, 500), dtype=np.float32)
    w = rng.standard_normal((400, 500), dtype=np.float32)
    b = rng.standard_normal(400, dtype=np.float32)
    outs = []
    for t in (1, 2, 4):
        threads(t)
        out = np.zeros((300, 400), np.float32)
        _core.linear_forward(out, x, w, b)
        outs.append(out)
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
    for out in outs:
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)


def train_small_cnn(seed=0, steps=6):
    x, y = fflib.datasets.load_sample(True)
    m = models.build("cwcomp", "mnist", channels=(10, 20, 20, 40), seed=seed)
    fflib.Adam(m, lr=0.01)   # attaches itself to m: train_step steps it
    for s in range(steps):
        m.train_step(x[s * 64:(s + 1) * 64].reshape(64, -1), y[s * 64:(s + 1) * 64])
    return m.state_dict()


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_training_on_two_threads_is_deterministic(threads):
    threads(2)
    assert_same_state(train_small_cnn(), train_small_cnn())


def test_concurrent_python_threads_each_get_their_own_result(threads):
    threads(2)
    ref = [train_small_cnn(seed=s) for s in (1, 2)]
    got = [None, None]

    def work(i):
        got[i] = train_small_cnn(seed=i + 1)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    for r, g in zip(ref, got):
        assert g is not None
        assert_same_state(r, g)


def _child(q):
    fflib.set_num_threads(2)
    rng = np.random.default_rng(0)
    x, w, b, dout = conv_case(rng)
    out = np.zeros_like(dout)
    _core.conv2d_forward(out, x, w, b, 1, 1, 2)
    q.put(float(np.abs(out).sum()))


def test_worker_pool_survives_fork(threads, rng):
    threads(2)
    x, w, b, dout = conv_case(np.random.default_rng(0))
    out = np.zeros_like(dout)
    _core.conv2d_forward(out, x, w, b, 1, 1, 2)       # the parent's workers exist now
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(timeout=120)
    assert p.exitcode == 0, "the forked child hung or crashed"
    assert q.get(timeout=5) == pytest.approx(float(np.abs(out).sum()), rel=1e-6)


def test_elementwise_kernels_are_bitwise_the_same_on_any_thread_count(threads, rng):
    """ReLU, max pooling and batch norm split over elements, planes and channels: nothing is
    summed across threads, so the results are identical."""
    x = rng.standard_normal((64, 24, 18, 18), dtype=np.float32)
    x[0, 0, 0, :3] = np.nan                                       # NaN handling too
    g = rng.standard_normal(x.shape, dtype=np.float32)
    gamma, beta = rng.standard_normal(24, dtype=np.float32), rng.standard_normal(24, dtype=np.float32)
    res = []
    for t in (1, 2, 3):
        threads(t)
        r = {}
        r["relu"] = np.empty_like(x)
        _core.relu_forward(r["relu"], x)
        r["drelu"] = np.zeros_like(x)
        _core.relu_backward(r["drelu"], g, r["relu"])
        for k in (2, 3):
            oh = (18 - k) // k + 1
            out, am = np.empty((64, 24, oh, oh), np.float32), np.empty((64, 24, oh, oh), np.int32)
            _core.maxpool2d_forward(out, am, x, k, k)
            dx = np.zeros_like(x)
            _core.maxpool2d_backward(dx, np.ascontiguousarray(g[:, :, :oh, :oh]), am)
            r[f"pool{k}"], r[f"argmax{k}"], r[f"dpool{k}"] = out, am, dx
        xb = np.nan_to_num(x)
        y, mean, rstd = np.empty_like(xb), np.empty(24, np.float32), np.empty(24, np.float32)
        rm, rv = np.zeros(24, np.float32), np.ones(24, np.float32)
        _core.batchnorm2d_forward_train(y, mean, rstd, rm, rv, xb, gamma, beta, 1e-5, 0.1)
        dx, dg, db = np.zeros_like(xb), np.zeros(24, np.float32), np.zeros(24, np.float32)
        _core.batchnorm2d_backward(dx, dg, db, g, xb, mean, rstd, gamma)
        r.update(bn=y, mean=mean, rstd=rstd, rm=rm, rv=rv, dbn=dx, dgamma=dg, dbeta=db)
        res.append(r)
    for r in res[1:]:
        for k, v in r.items():
            assert np.array_equal(v, res[0][k], equal_nan=True), k


def test_changing_the_thread_count_between_steps_regrows_the_workspace(threads):
    x, y = fflib.datasets.load_sample(True)
    x = x[:192].reshape(192, -1)
    m = models.build("cwcomp", "mnist", channels=(10, 20, 20, 40))
    threads(1)
    m.train_step(x[:64], y[:64])
    ws1 = m._net.info()["workspace_bytes"]
    threads(3)                                  # room for three groups of images now
    m.train_step(x[64:128], y[64:128])
    assert m._net.info()["workspace_bytes"] > ws1
    threads(1)
    losses = m.train_step(x[128:], y[128:128 + 64])
    assert np.isfinite(losses).all()
    m.eval()
    assert (m.predict_onepass(x[:64]) >= 0).all()
