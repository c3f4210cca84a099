"""Conv2d, BatchNorm2d and MaxPool2d kernels of the C core against the float64 NumPy reference
(fflib/reference.py, itself checked by finite differences) and against torch.nn.functional."""
import numpy as np
import pytest

from fflib import _core
from fflib import reference as ref

CONV_CASES = [  # N, C, H, W, OC, k, stride, pad, groups
    (1, 1, 7, 7, 1, 1, 1, 0, 1),
    (2, 3, 9, 9, 5, 3, 1, 1, 1),
    (1, 3, 8, 11, 6, 3, 2, 1, 3),
    (3, 4, 13, 13, 6, 5, 1, 2, 2),
    (2, 4, 9, 9, 4, 3, 1, 1, 4),      # depthwise
    (2, 6, 10, 10, 12, 4, 2, 0, 3),
    (1, 5, 7, 9, 7, 2, 3, 1, 1),
    (2, 10, 6, 6, 20, 3, 1, 1, 10),   # one group per class, as in CwComp
    (1, 3, 3, 3, 2, 5, 1, 1, 1),      # kernel larger than the input, padding makes it fit
]


def conv_arrays(rng, N, C, H, W, OC, k, s, p, g):
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((OC, C // g, k, k)).astype(np.float32) * 0.3
    b = rng.standard_normal(OC).astype(np.float32)
    OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    return x, w, b, (N, OC, OH, OW)


def close(a, b, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_against_reference(rng, case):
    N, C, H, W, OC, k, s, p, g = case
    x, w, b, oshape = conv_arrays(rng, *case)
    out = np.zeros(oshape, np.float32)
    _core.conv2d_forward(out, x, w, b, s, p, g)
    close(out, ref.conv2d_forward(x, w, b, s, p, g))
    dout = rng.standard_normal(oshape).astype(np.float32)
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    _core.conv2d_backward(dx, dw, db, dout, x, w, s, p, g)
    rdx, rdw, rdb = ref.conv2d_backward(dout, x, w, s, p, g)
    close(dx, rdx)
    close(dw, rdw)
    close(db, rdb)
    # backward adds into what is there
    _core.conv2d_backward(dx, dw, db, dout, x, w, s, p, g)
    close(dw, 2 * rdw)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_against_torch(rng, case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    N, C, H, W, OC, k, s, p, g = case
    x, w, b, oshape = conv_arrays(rng, *case)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tout = F.conv2d(tx, tw, tb, stride=s, padding=p, groups=g)
    dout = rng.standard_normal(oshape).astype(np.float32)
    tout.backward(torch.tensor(dout))
    out = np.zeros(oshape, np.float32)
    _core.conv2d_forward(out, x, w, b, s, p, g)
    close(out, tout.detach().numpy(), rtol=1e-4)
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    _core.conv2d_backward(dx, dw, db, dout, x, w, s, p, g)
    close(dx, tx.grad.numpy(), rtol=1e-4)
    close(dw, tw.grad.numpy(), rtol=1e-4)
    close(db, tb.grad.numpy(), rtol=1e-4)


def test_conv2d_optional_outputs_and_no_bias(rng):
    x, w, b, oshape = conv_arrays(rng, 2, 3, 9, 9, 5, 3, 1, 1, 1)
    out = np.zeros(oshape, np.float32)
    _core.conv2d_forward(out, x, w, None, 1, 1, 1)
    close(out, ref.conv2d_forward(x, w, None, 1, 1, 1))
    dout = rng.standard_normal(oshape).astype(np.float32)
    dw = np.zeros_like(w)
    _core.conv2d_backward(None, dw, None, dout, x, w, 1, 1, 1)
    close(dw, ref.conv2d_backward(dout, x, w, 1, 1, 1)[1])


@pytest.mark.parametrize("args, err, msg", [
    (dict(C=4, g=3), ValueError, "groups=3 must divide"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(k=9), ValueError, "larger than the padded input"),
    (dict(wc=2), ValueError, "wrong channel count"),
    (dict(pad=-1), ValueError, "padding must be >= 0"),
])
def test_conv2d_bad_arguments(rng, args, err, msg):
    C, g, k = args.get("C", 4), args.get("g", 1), args.get("k", 3)
    x = rng.standard_normal((2, C, 5, 5)).astype(np.float32)
    w = rng.standard_normal((6, args.get("wc", C // g if C % g == 0 else 1), k, k)).astype(np.float32)
    out = np.zeros((2, 6, 5, 5), np.float32)
    with pytest.raises(err, match=msg):
        _core.conv2d_forward(out, x, w, None, args.get("stride", 1), args.get("pad", 1), g)


@pytest.mark.parametrize("shape", [(1, 1, 5, 5), (4, 3, 7, 9), (2, 6, 1, 1), (5, 2, 3, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm2d_train_eval_backward(rng, shape, affine):
    N, C, H, W = shape
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    gamma = rng.standard_normal(C).astype(np.float32) if affine else None
    beta = rng.standard_normal(C).astype(np.float32) if affine else None
    rm, rv = rng.standard_normal(C).astype(np.float32), rng.random(C).astype(np.float32) + 0.5
    out, mean, rstd = np.zeros_like(x), np.zeros(C, np.float32), np.zeros(C, np.float32)
    rm_c, rv_c = rm.copy(), rv.copy()
    _core.batchnorm2d_forward_train(out, mean, rstd, rm_c, rv_c, x, gamma, beta, 1e-5, 0.1)
    r_out, r_mean, r_rstd, r_rm, r_rv = ref.batchnorm2d_forward_train(x, gamma, beta, 1e-5, rm, rv, 0.1)
    close(out, r_out, rtol=1e-4)
    close(mean, r_mean)
    close(rstd, r_rstd, rtol=1e-4)
    close(rm_c, r_rm)
    close(rv_c, r_rv, rtol=1e-4)
    dout = rng.standard_normal(shape).astype(np.float32)
    dx = np.zeros_like(x)
    dg = np.zeros(C, np.float32) if affine else None
    db = np.zeros(C, np.float32) if affine else None
    _core.batchnorm2d_backward(dx, dg, db, dout, x, mean, rstd, gamma)
    rdx, rdg, rdb = ref.batchnorm2d_backward(dout, x, r_mean, r_rstd, gamma)
    close(dx, rdx, rtol=1e-3, atol=1e-4)
    if affine:
        close(dg, rdg, rtol=1e-4)
        close(db, rdb)
    ev = np.zeros_like(x)
    _core.batchnorm2d_forward_eval(ev, x, rm, rv, gamma, beta, 1e-5)
    close(ev, ref.batchnorm2d_forward_eval(x, rm, rv, gamma, beta, 1e-5), rtol=1e-4)


def test_batchnorm2d_against_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal((6, 5, 7, 7)).astype(np.float32)
    gamma, beta = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    tout = F.batch_norm(tx, trm, trv, tg, tb, training=True, momentum=0.1, eps=1e-5)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    tout.backward(torch.tensor(dout))
    out, mean, rstd = np.zeros_like(x), np.zeros(5, np.float32), np.zeros(5, np.float32)
    _core.batchnorm2d_forward_train(out, mean, rstd, rm, rv, x, gamma, beta, 1e-5, 0.1)
    close(out, tout.detach().numpy(), rtol=1e-4)
    close(rm, trm.numpy())
    close(rv, trv.numpy(), rtol=1e-4)
    dx, dg, db = np.zeros_like(x), np.zeros(5, np.float32), np.zeros(5, np.float32)
    _core.batchnorm2d_backward(dx, dg, db, dout, x, mean, rstd, gamma)
    close(dx, tx.grad.numpy(), rtol=1e-3, atol=1e-4)
    close(dg, tg.grad.numpy(), rtol=1e-4)
    close(db, tb.grad.numpy(), rtol=1e-4)
    ev = np.zeros_like(x)
    _core.batchnorm2d_forward_eval(ev, x, rm, rv, gamma, beta, 1e-5)
    close(ev, F.batch_norm(torch.tensor(x), trm, trv, tg.detach(), tb.detach(), training=False).numpy(), rtol=1e-4)


@pytest.mark.parametrize("shape, k, s", [((1, 1, 4, 4), 2, 2), ((2, 3, 9, 7), 3, 2), ((2, 4, 8, 8), 4, 4),
                                         ((1, 2, 5, 5), 2, 1), ((3, 5, 13, 13), 3, 3)])
def test_maxpool2d_against_reference_and_torch(rng, shape, k, s):
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32)   # distinct values
    N, C, H, W = shape
    OH, OW = (H - k) // s + 1, (W - k) // s + 1
    out, am = np.zeros((N, C, OH, OW), np.float32), np.zeros((N, C, OH, OW), np.int32)
    _core.maxpool2d_forward(out, am, x, k, s)
    r_out, r_am = ref.maxpool2d_forward(x, k, s)
    np.testing.assert_array_equal(out, r_out)
    np.testing.assert_array_equal(am, r_am)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = np.zeros_like(x)
    _core.maxpool2d_backward(dx, dout, am)
    close(dx, ref.maxpool2d_backward(dout, r_am, H, W))
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, requires_grad=True)
    tout, tidx = torch.nn.functional.max_pool2d(tx, k, s, return_indices=True)
    tout.backward(torch.tensor(dout))
    np.testing.assert_array_equal(out, tout.detach().numpy())
    np.testing.assert_array_equal(am, tidx.numpy())
    close(dx, tx.grad.numpy())


def test_maxpool2d_bad_arguments(rng):
    x = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="larger than the input"):
        _core.maxpool2d_forward(np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.int32), x, 4, 1)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        _core.maxpool2d_forward(np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.int32), x, 2, 0)
    with pytest.raises(ValueError, match="outside the input plane"):
        _core.maxpool2d_backward(np.zeros((1, 1, 3, 3), np.float32), np.ones((1, 1, 1, 1), np.float32),
                                 np.full((1, 1, 1, 1), 99, np.int32))
