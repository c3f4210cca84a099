"""Label sharing: a one-hot net's first [LenNorm ->] Linear computed once per sample (not once
per positive / negative / neutral row, or per candidate label in multi-pass inference) equals
the row-by-row computation up to float rounding."""
import numpy as np
import pytest

import fflib


def _pair(make):
    a, b = make(), make()
    b._net.set_share_labels(False)
    return a, b


def _close(x, y, rtol=1e-5, atol=1e-6, what=""):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=what)


CASES = {
    "l2_ff_head": lambda: fflib.FFModel(fflib.mlp([40, 24, 16], norm="l2"), 40, 5, seed=1),
    "rms_symba_mean": lambda: fflib.FFModel(fflib.mlp([40, 24, 16], norm="rms"), 40, 5, loss="symba",
                                            goodness="mean", norm="rms", label_value=0.7, seed=2),
    "no_input_norm": lambda: fflib.FFModel(fflib.mlp([40, 24, 16], normalize_input=False), 40, 5, seed=3),
    "cwc_onehot": lambda: fflib.FFModel(fflib.mlp([40, 20, 10]), 40, 5, loss="cwc", seed=4),
}


@pytest.mark.parametrize("name", list(CASES))
def test_shared_first_layer_equals_unshared(name, rng):
    shared, plain = _pair(CASES[name])
    x = rng.random((24, 40), dtype=np.float32)
    y = rng.integers(0, 5, 24)
    neg = (y + 1 + rng.integers(0, 4, 24)) % 5
    for m in (shared, plain):
        fflib.Adam(m, lr=3e-3)
    for step in range(5):
        sl = shared.train_step(x[step * 4:step * 4 + 12], y[step * 4:step * 4 + 12], neg[step * 4:step * 4 + 12])
        pl = plain.train_step(x[step * 4:step * 4 + 12], y[step * 4:step * 4 + 12], neg[step * 4:step * 4 + 12])
        _close(sl, pl, what=f"losses, step {step}")
    for k, v in plain.state_dict().items():
        if v is not None:
            _close(shared.state_dict()[k], v, rtol=1e-4, atol=1e-6, what=k)
    _close(shared.goodness(x), plain.goodness(x), rtol=1e-5, atol=1e-6, what="multi-pass goodness")
    if shared.has_head:
        _close(shared.predict_proba(x), plain.predict_proba(x), what="one-pass")
    shared.compute_grads(x[:8], y[:8], neg[:8])
    plain.compute_grads(x[:8], y[:8], neg[:8])
    first = next(i for i, l in enumerate(plain.layers) if l.kind == "linear")
    _close(shared.layers[first].grad_weight, plain.layers[first].grad_weight, rtol=1e-4, atol=1e-7,
           what="first-layer dW")


def test_shared_step_gradient_check(rng):
    m = CASES["l2_ff_head"]()
    x, y = rng.random((8, 40), dtype=np.float32), rng.integers(0, 5, 8)
    for b in range(m.num_blocks + 1):
        fd, an, rel = m._net.check_grad(x, y, (y + 2) % 5, b, 1e-3, 3)
        assert rel < 1e-2, (b, fd, an)


def test_sharing_only_where_it_applies(rng):
    # fourier / embedding / image inputs keep the row-by-row path: still trains, same as off
    from fflib import models
    a, b = _pair(lambda: models.build("cnn", "mnist", seed=5, label_encoding="onehot"))
    x, y = rng.random((6, 784), dtype=np.float32), rng.integers(0, 10, 6)
    neg = (y + 1) % 10
    np.testing.assert_array_equal(a.train_step(x, y, neg), b.train_step(x, y, neg))
