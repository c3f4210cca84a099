"""Small helpers of the tests that compare fflib with its PyTorch twin (fflib.torch)."""
import numpy as np


def rel_err(a, b):
    """||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def assert_close(a, b, rel=1e-4, atol=None, what=""):
    """Norm-wise relative error below rel, and elementwise |a - b| <= atol + rel |b| with atol
    a fraction of the array's scale (default rel * max|b|)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    e = rel_err(a, b)
    assert e < rel, f"{what}: norm-wise relative error {e:.3g} >= {rel:g}"
    if atol is None:
        atol = rel * float(np.max(np.abs(b))) if b.size else 0.0
    np.testing.assert_allclose(a, b, rtol=rel, atol=atol, err_msg=what)


def fflib_grads(model):
    """fflib's gradients, keyed like the parameters of ``model.state_dict()``."""
    out = {}
    for key in model.state_dict():
        prefix, name = key.rsplit(".", 1)
        if name not in ("weight", "bias"):
            continue
        i = {"head": -1, "label_embedding": -2}.get(prefix)
        i = int(prefix.split(".")[1]) if i is None else i
        g = model._net.param(i, 4 if name == "weight" else 5)
        if g is not None:
            out[key] = g.copy()
    return out


def torch_grads(net):
    """The twin's gradients by parameter name (parameters without a gradient left out)."""
    return {k: p.grad.detach().numpy().copy() for k, p in net.named_parameters() if p.grad is not None}


def assert_params_close(model, net, rel=1e-4, atol=None, keys=None, buffers=True):
    """Every parameter (and batch-norm buffer) of the fflib model against the twin's."""
    mine, theirs = model.state_dict(), net.fflib_state_dict()
    assert set(mine) == set(theirs), (sorted(mine), sorted(theirs))
    for k in keys or sorted(mine):
        if not buffers and k.endswith(("running_mean", "running_var")):
            continue
        assert_close(mine[k], theirs[k], rel=rel, atol=atol, what=k)


def single_thread():
    """Fixture body (module scope, autouse in the comparing modules): fflib and torch on one
    thread, so that both sides sum in a fixed order."""
    import fflib
    import torch
    old_ff, old_torch = fflib.get_num_threads(), torch.get_num_threads()
    fflib.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    fflib.set_num_threads(old_ff)
    torch.set_num_threads(old_torch)
