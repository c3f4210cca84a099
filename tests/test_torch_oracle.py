"""fflib against the same FF training written in plain PyTorch (fflib.torch, the oracle).

Whole-network checks: the same initial weights, batches and negative labels give the same
per-block losses every step and the same weights after 20 steps (Adam and SGD, sum and mean
goodness, with and without the one-pass head, FF and SymBa losses), the same gradients from
``compute_grads``, and the same multi-pass goodness and one-pass probabilities.  Kernel
checks: fflib._core's kernels against torch autograd / torch.optim on odd shapes.

Everything runs single-threaded (fflib and torch) so that results are reproducible.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fflib  # noqa: E402
from fflib import _core  # noqa: E402
from fflib.torch import TorchFF  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oracle_torch  # noqa: E402
from oracle_torch import assert_close, fflib_grads, rel_err, torch_grads  # noqa: E402

STEPS = 20
BATCH = 64
REL = 1e-4          # norm-wise relative tolerance of whole-network results


single_thread = pytest.fixture(scope="module", autouse=True)(oracle_torch.single_thread)


@pytest.fixture(scope="module")
def mnist():
    x, y = fflib.datasets.load_sample()
    xt, yt = fflib.datasets.load_sample(train=False)
    return x.reshape(len(x), -1), y, xt.reshape(len(xt), -1)[:300], yt[:300]


def batches(x, y, n, batch=BATCH, seed=0, K=10):
    """n (x, y, neg) minibatches with explicit negative labels (each != y)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        idx = rng.choice(len(y), batch, replace=False)
        yb = np.ascontiguousarray(y[idx])
        neg = ((yb + rng.integers(1, K, batch)) % K).astype(np.int64)
        out.append((np.ascontiguousarray(x[idx]), yb, neg))
    return out


ADAM_LR = 3e-3
# Elementwise slack for Adam-trained weights.  Adam scales each update by 1/sqrt(v): an element
# whose gradient is tiny (a unit that has just come alive) moves by ~lr whatever the gradient's
# magnitude, so float32 rounding noise in that gradient (1e-6 relative, norm-wise) can show as
# ~1e-5 = 0.4% of lr in single elements (seen: 1.3e-5 with the closed-form torch gradient).
ADAM_ATOL = 0.02 * ADAM_LR

OPTIMIZERS = {
    "adam": lambda m: fflib.Adam(m, lr=ADAM_LR),
    "adamw": lambda m: fflib.AdamW(m, lr=ADAM_LR, weight_decay=0.5),
    "sgd": lambda m: fflib.SGD(m, lr=0.05, momentum=0.9, weight_decay=1e-4),
}


def make_pair(sizes, goodness="sum", head=True, opt="adam", seed=3, grad="autograd", double=False, **cfg):
    """An fflib FFModel with an optimiser and its PyTorch twin (same weights and settings); with
    ``double`` the twin computes in float64 (the reference where float32 rounding is amplified)."""
    model = fflib.FFModel(fflib.mlp(sizes), sizes[0], 10, goodness=goodness,
                          head_blocks="auto" if head else None, seed=seed, **cfg)
    ff_opt = OPTIMIZERS[opt](model)
    net = fflib.torch.to_module(model)
    return model, ff_opt, TorchFF(net.double() if double else net, ff_opt, grad=grad)


def compare_weights(model, twin, w0=None, atol="auto"):
    """All weights (and the head) within REL; with w0 also the changes since w0."""
    mine, theirs = model.state_dict(), twin.net.fflib_state_dict()
    assert set(mine) == set(theirs)
    if atol == "auto":
        atol = ADAM_ATOL if isinstance(twin.optimizer, (torch.optim.Adam, torch.optim.AdamW)) else None
    for k in sorted(mine):
        assert_close(mine[k], theirs[k], atol=atol, what=k)
        if w0 is not None and k in w0:
            # the update itself must agree too (a stricter test than the weights)
            assert rel_err(mine[k] - w0[k], theirs[k] - w0[k]) < 1e-3, f"{k} change"


def train_both(model, twin, data, train_head):
    """Run both trainings over data; per-step losses must agree."""
    for step, (xb, yb, neg) in enumerate(data):
        lf = model.train_step(xb, yb, neg, train_head=train_head)
        lt = twin.step(xb, yb, neg, train_head=train_head)
        assert lf.shape == lt.shape
        np.testing.assert_allclose(lf, lt, rtol=REL, atol=1e-6, err_msg=f"losses at step {step}")
    return lf


# ---------------------------------------------------------------------------- training

@pytest.mark.parametrize("sizes", [[784, 31, 17], [784, 500, 100]], ids=["784-31-17", "784-500-100"])
@pytest.mark.parametrize("opt", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("goodness", ["sum", "mean", "neg-mean"])
@pytest.mark.parametrize("head", [True, False], ids=["head", "nohead"])
def test_training_matches_torch(mnist, sizes, opt, goodness, head):
    x, y, _, _ = mnist
    # minus the goodness: positive rows are pushed above a negative threshold (Hinton's "min ssq")
    model, _, twin = make_pair(sizes, goodness, head, opt, **({"threshold": -1.0} if goodness == "neg-mean" else {}))
    w0 = {k: v for k, v in model.state_dict().items() if k.startswith("layers")}
    last = train_both(model, twin, batches(x, y, STEPS), train_head=head)
    assert np.all(np.isfinite(last))
    compare_weights(model, twin, w0)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_layer_lr_matches_torch_parameter_groups(mnist, opt):
    """Per-layer rates (fflib's layer_lr, torch's parameter groups) under a schedule."""
    x, y, _, _ = mnist
    model = fflib.FFModel(fflib.mlp([784, 31, 17]), 784, 10, head_blocks="auto", seed=3)
    first, second = model.trainable_layers()[:2]
    kw = dict(lr=0.05, momentum=0.9) if opt == "sgd" else dict(lr=ADAM_LR)
    o = (fflib.SGD if opt == "sgd" else fflib.Adam)(model, layer_lr={second: 4 * kw["lr"]}, **kw)
    fflib.MultiStepLR(o, [1], gamma=0.5).step()
    twin = TorchFF(model, o)
    assert [g["lr"] for g in twin.optimizer.param_groups] == pytest.approx([kw["lr"] / 2, 2 * kw["lr"], kw["lr"] / 2])
    w0 = {k: v for k, v in model.state_dict().items() if k.startswith("layers")}
    train_both(model, twin, batches(x, y, STEPS), train_head=True)
    compare_weights(model, twin, w0)


@pytest.mark.parametrize("goodness", ["sum", "neg-mean"])
def test_training_matches_torch_manual_gradients(mnist, goodness):
    """The benchmark's closed-form-gradient variant of the torch baseline is the same training."""
    x, y, _, _ = mnist
    neg = {"threshold": -1.0} if goodness == "neg-mean" else {}
    model, _, twin = make_pair([784, 500, 100], goodness, True, "adam", grad="manual", **neg)
    train_both(model, twin, batches(x, y, STEPS), train_head=True)
    compare_weights(model, twin)


def test_training_other_settings(mnist):
    """RMS normalisation, no input normalisation, label value 2, a 3-block net with a head on
    blocks 2 and 3 (concatenated features), Nesterov SGD with dampening 0."""
    x, y, _, _ = mnist
    model = fflib.FFModel(fflib.mlp([784, 40, 30, 20], norm="rms", normalize_input=False), 784, 10,
                          goodness="mean", norm="rms", label_value=2.0, threshold=1.5, seed=5)
    twin = TorchFF(model, fflib.SGD(model, lr=0.02, momentum=0.8, nesterov=True))
    assert twin.net.head_layers == [4, 7] and twin.net.head.in_features == 50
    assert twin.optimizer.defaults["nesterov"] and twin.net.config["norm"] == "rms"
    train_both(model, twin, batches(x, y, 10, seed=4), train_head=True)
    compare_weights(model, twin)


@pytest.mark.parametrize("sizes", [[784, 31, 17], [784, 500, 100]], ids=["784-31-17", "784-500-100"])
@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_symba_matches_torch(mnist, sizes, opt):
    x, y, _, _ = mnist
    model, _, twin = make_pair(sizes, "sum", True, opt, loss="symba", alpha=4.0, double=True)
    assert twin.net.config["loss"] == "symba" and twin.net.config["alpha"] == 4.0
    train_both(model, twin, batches(x, y, 5, seed=1), train_head=True)
    # SymBa's gradient is a difference of nearly equal positive and negative terms (the two rows
    # differ only in the label pixels), so float32 rounding is amplified: a float32 PyTorch
    # twin's first-layer gradient is ~2e-5 away (norm-wise) from the float64 value and its
    # weights after 5 Adam steps up to ~4e-4 (it depends on torch's thread count), fflib's
    # (label sharing: the pair's common image part cancels exactly) ~3e-6.  So the reference is
    # the float64 twin.  Adam turns the remaining rounding into up to ~5% of lr in single tiny-
    # gradient elements, so the elementwise slack is wider; the norm-wise bound stays 1e-4.
    compare_weights(model, twin, atol=0.25 * ADAM_LR if opt == "adam" else None)


def test_train_step_without_head_training(mnist):
    """A model with a head, stepped with train_head=False: the head does not move."""
    x, y, _, _ = mnist
    model, _, twin = make_pair([784, 31, 17], "sum", True, "adam")
    h0 = model.head_weight.copy()
    train_both(model, twin, batches(x, y, 5, seed=2), train_head=False)
    np.testing.assert_array_equal(model.head_weight, h0)
    compare_weights(model, twin)


# ---------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("goodness", ["sum", "mean", "neg-sum", "neg-mean"])
@pytest.mark.parametrize("loss", ["ff", "symba"])
def test_compute_grads_equal_autograd(mnist, goodness, loss):
    x, y, _, _ = mnist
    # SymBa on sum goodness amplifies float32 rounding (see test_symba_matches_torch): float64 twin
    neg = {"threshold": -2.0} if goodness.startswith("neg-") else {}
    model, ff_opt, twin = make_pair([784, 31, 17], goodness, True, "adam", loss=loss,
                                    double=loss == "symba" and goodness.endswith("sum"), **neg)
    # take a couple of steps first so the gradients are not those of the initialisation only
    train_both(model, twin, batches(x, y, 2, seed=7), train_head=True)
    (xb, yb, neg), = batches(x, y, 1, seed=8)
    lf = model.compute_grads(xb, yb, neg)
    lt = twin.step(xb, yb, neg, update=False)
    np.testing.assert_allclose(lf, lt, rtol=REL, atol=1e-6)
    gf, gt = fflib_grads(model), torch_grads(twin.net)
    assert set(gf) == set(gt) == {"layers.1.weight", "layers.1.bias", "layers.4.weight", "layers.4.bias",
                                  "head.weight", "head.bias"}
    for k in sorted(gf):
        tight = k.startswith("layers") and k.endswith("weight") and goodness == "sum"
        assert_close(gf[k], gt[k], rel=1e-5 if tight else REL, what=f"d {k}")
    # applying them: fflib's optimiser step == torch's
    ff_opt.step()
    twin.apply_update()
    compare_weights(model, twin)


# ---------------------------------------------------------------------------- inference

@pytest.mark.parametrize("sizes", [[784, 31, 17], [784, 500, 100]], ids=["784-31-17", "784-500-100"])
def test_inference_matches_torch(mnist, sizes):
    x, y, xt, yt = mnist
    model, _, twin = make_pair(sizes, "sum", True, "adam")
    net = twin.net
    train_both(model, twin, batches(x, y, STEPS, seed=11), train_head=True)
    gf, gt = model.goodness(xt), net.goodness(xt).numpy()
    assert gf.shape == gt.shape == (len(xt), 10, 2)
    assert_close(gf, gt, what="multi-pass goodness")
    pf, pt = model.predict_proba(xt), net.predict_proba(xt).numpy()
    assert pf.shape == pt.shape == (len(xt), 10)
    np.testing.assert_allclose(pf, pt, rtol=1e-4, atol=1e-6)
    assert_close(model.features(xt), net.features(xt).numpy(), what="head features")
    # the predictions themselves (ties are impossible at this precision in practice)
    assert np.mean(model.predict_multipass(xt) == net.predict_multipass(xt).numpy()) >= 0.99
    assert np.mean(model.predict_onepass(xt) == net.predict_onepass(xt).numpy()) >= 0.99


# ---------------------------------------------------------------------------- kernels

KRTOL = 1e-5
SHAPES = [(1, 3, 7), (7, 13, 3), (13, 33, 7), (33, 7, 13)]   # (B, I, O)


def t32(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float32), requires_grad=grad)


def kclose(a, b, what=""):
    assert_close(a, b, rel=KRTOL, atol=KRTOL * max(1.0, float(np.max(np.abs(np.asarray(b))))) * 0.1,
                 what=what)


def rnd(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("B,I,O", SHAPES)
def test_kernel_linear(B, I, O):
    rng = np.random.default_rng(B * 100 + I)
    x, W, b, dout = rnd(rng, B, I), rnd(rng, O, I), rnd(rng, O), rnd(rng, B, O)
    for bias in (b, None):
        out = np.empty((B, O), np.float32)
        _core.linear_forward(out, x, W, bias)
        tx, tW = t32(x, True), t32(W, True)
        tb = t32(b, True) if bias is not None else None
        ref = torch.nn.functional.linear(tx, tW, tb)
        kclose(out, ref.detach().numpy(), "linear forward")
        ref.backward(t32(dout))
        # backward adds into what is there
        pre_i, pre_w, pre_b = rnd(rng, B, I), rnd(rng, O, I), rnd(rng, O)
        di, dw, db = pre_i.copy(), pre_w.copy(), pre_b.copy()
        _core.linear_backward(di, dw, db, dout, x, W)
        kclose(di - pre_i, tx.grad.numpy(), "linear dinp")
        kclose(dw - pre_w, tW.grad.numpy(), "linear dweight")
        kclose(db - pre_b, dout.sum(axis=0), "linear dbias")
    # NULL gradients are skipped
    dw = np.zeros((O, I), np.float32)
    _core.linear_backward(None, dw, None, dout, x, W)
    kclose(dw, dout.T.astype(np.float64) @ x, "linear dweight alone")


@pytest.mark.parametrize("n", [1, 3, 7, 13, 33])
def test_kernel_relu(n):
    rng = np.random.default_rng(n)
    x, dout = rnd(rng, n, 5), rnd(rng, n, 5)
    out = np.empty_like(x)
    _core.relu_forward(out, x)
    tx = t32(x, True)
    ref = torch.relu(tx)
    np.testing.assert_array_equal(out, ref.detach().numpy())
    ref.backward(t32(dout))
    pre = rnd(rng, n, 5)
    dinp = pre.copy()
    _core.relu_backward(dinp, dout, out)
    np.testing.assert_allclose(dinp - pre, tx.grad.numpy(), rtol=KRTOL, atol=1e-6)


@pytest.mark.parametrize("B,D", [(1, 3), (7, 13), (13, 33), (3, 7)])
@pytest.mark.parametrize("kind", [1, 2], ids=["l2", "rms"])
@pytest.mark.parametrize("eps", [1e-4, 0.5])
def test_kernel_lennorm(B, D, kind, eps):
    rng = np.random.default_rng(B * 10 + D)
    x, dout = rnd(rng, B, D), rnd(rng, B, D)
    out, scale = np.empty_like(x), np.empty(B, np.float32)
    _core.lennorm_forward(out, scale, x, kind, eps)
    tx = t32(x, True)
    if kind == 1:
        ref = tx / (torch.linalg.vector_norm(tx, dim=1, keepdim=True) + eps)
    else:
        ref = tx / torch.sqrt(tx.square().mean(dim=1, keepdim=True) + eps)
    kclose(out, ref.detach().numpy(), "lennorm forward")
    kclose(out, x * scale[:, None], "lennorm scale")
    ref.backward(t32(dout))
    pre = rnd(rng, B, D)
    dinp = pre.copy()
    _core.lennorm_backward(dinp, dout, x, scale, kind, eps)
    kclose(dinp - pre, tx.grad.numpy(), "lennorm backward")


@pytest.mark.parametrize("B,D", [(1, 3), (7, 13), (13, 33)])
@pytest.mark.parametrize("kind", [0, 1, 2, 3], ids=["sum", "mean", "neg-sum", "neg-mean"])
def test_kernel_goodness(B, D, kind):
    rng = np.random.default_rng(D)
    a, dg = rnd(rng, B, D), rnd(rng, B)
    g = np.empty(B, np.float32)
    _core.goodness_forward(g, a, kind)
    ta = t32(a, True)
    ref = ta.square().sum(1) if kind in (0, 2) else ta.square().mean(1)
    if kind >= 2:
        ref = -ref
    kclose(g, ref.detach().numpy(), "goodness forward")
    ref.backward(t32(dg))
    pre = rnd(rng, B, D)
    dact = pre.copy()
    _core.goodness_backward(dact, dg, a, kind)
    kclose(dact - pre, ta.grad.numpy(), "goodness backward")


@pytest.mark.parametrize("B", [1, 3, 7, 13, 33])
def test_kernel_ff_and_symba_loss(B):
    rng = np.random.default_rng(B)
    # goodness values spread over the softplus' whole range, including far tails
    gpos = (rng.standard_normal(B) * 8 + 2).astype(np.float32)
    gneg = (rng.standard_normal(B) * 8 + 2).astype(np.float32)
    for name, fn, param in (("ff", _core.ff_loss, 2.0), ("symba", _core.symba_loss, 4.0)):
        dp, dn = np.empty(B, np.float32), np.empty(B, np.float32)
        L = fn(dp, dn, gpos, gneg, param)
        tp, tn = t32(gpos, True), t32(gneg, True)
        if name == "ff":
            ref = (torch.nn.functional.softplus(param - tp) + torch.nn.functional.softplus(tn - param)).mean()
        else:
            ref = torch.nn.functional.softplus(-param * (tp - tn)).mean()
        ref.backward()
        assert L == pytest.approx(float(ref.detach()), rel=KRTOL, abs=1e-7), name
        np.testing.assert_allclose(dp, tp.grad.numpy(), rtol=KRTOL, atol=1e-8, err_msg=name)
        np.testing.assert_allclose(dn, tn.grad.numpy(), rtol=KRTOL, atol=1e-8, err_msg=name)
        # NULL gradients are allowed
        assert fn(None, None, gpos, gneg, param) == L


@pytest.mark.parametrize("B,K", [(1, 3), (7, 13), (13, 7), (33, 10)])
def test_kernel_softmax_xent(B, K):
    rng = np.random.default_rng(B + K)
    logits = (rnd(rng, B, K) * 5).astype(np.float32)
    labels = rng.integers(0, K, B).astype(np.int64)
    dl, probs = np.empty((B, K), np.float32), np.empty((B, K), np.float32)
    L = _core.softmax_xent(dl, probs, logits, labels)
    tl = t32(logits, True)
    ref = torch.nn.functional.cross_entropy(tl, torch.from_numpy(labels))
    ref.backward()
    # the loss value against float64 (a confident sample's loss lse - z_y cancels in float32)
    ref64 = torch.nn.functional.cross_entropy(tl.detach().double(), torch.from_numpy(labels))
    assert L == pytest.approx(float(ref64), rel=KRTOL)
    np.testing.assert_allclose(probs, torch.softmax(tl, 1).detach().numpy(), rtol=KRTOL, atol=1e-7)
    np.testing.assert_allclose(dl, tl.grad.numpy(), rtol=KRTOL, atol=1e-7)


def _torch_opt_run(make, p0, grads):
    p = t32(p0, True)
    opt = make([p])
    for g in grads:
        p.grad = t32(g)
        opt.step()
    return p.detach().numpy(), opt.state[p]


@pytest.mark.parametrize("n", [1, 3, 7, 13, 33])
@pytest.mark.parametrize("wd", [0.0, 0.01, 0.3])
@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_kernel_adam_step(n, wd, kind):
    rng = np.random.default_rng(n)
    p0 = rnd(rng, n)
    grads = [rnd(rng, n) * s for s in (1.0, 0.1, 3.0, 1e-3, 0.5, 2.0, 0.01)]
    lr, b1, b2, eps = 0.0625, 0.8, 0.95, 1e-6   # lr exact in float32, as the core holds it
    p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    for t, g in enumerate(grads, start=1):
        getattr(_core, kind + "_step")(p, m, v, g, lr, b1, b2, eps, wd, t)
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    ref, state = _torch_opt_run(lambda ps: cls(ps, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), p0, grads)
    kclose(p, ref, f"{kind} p")
    kclose(m, state["exp_avg"].numpy(), f"{kind} m")
    kclose(v, state["exp_avg_sq"].numpy(), f"{kind} v")


@pytest.mark.parametrize("n", [1, 3, 7, 13, 33])
@pytest.mark.parametrize("momentum,dampening,wd,nesterov", [
    (0.0, 0.0, 0.0, False), (0.9, 0.0, 1e-4, False), (0.9, 0.3, 0.01, False), (0.8, 0.0, 0.01, True)])
def test_kernel_sgd_step(n, momentum, dampening, wd, nesterov):
    rng = np.random.default_rng(n + 1)
    p0 = rnd(rng, n)
    grads = [rnd(rng, n) * s for s in (1.0, 0.1, 3.0, 0.5, 2.0)]
    lr = 0.05
    p, buf = p0.copy(), np.zeros(n, np.float32)
    for t, g in enumerate(grads, start=1):
        _core.sgd_step(p, buf, g, lr, momentum, dampening, wd, nesterov, t)
    ref, state = _torch_opt_run(
        lambda ps: torch.optim.SGD(ps, lr=lr, momentum=momentum, dampening=dampening, weight_decay=wd,
                                   nesterov=nesterov), p0, grads)
    kclose(p, ref, "sgd p")
    if momentum:
        kclose(buf, state["momentum_buffer"].numpy(), "sgd momentum buffer")
