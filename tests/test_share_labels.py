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


def _rel_close(a, b, tol=1e-5, what=""):
    """Equal within tol relative to the array's largest magnitude (the scale float rounding works at)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


EMBED_CASES = {
    "mnist_cnn": lambda: __import__("fflib.models").models.build("cnn", "mnist", seed=6),
    # a padded conv without a LenNorm in front, and a block boundary right after the conv
    "padded_no_norm": lambda: fflib.FFModel(
        [fflib.Conv2d(2, 12, 3, padding=1), fflib.ReLU(), fflib.MaxPool2d(2), fflib.Flatten(),
         fflib.Linear(12 * 7 * 7, 20), fflib.ReLU()], (1, 14, 14), 4, label_encoding="embedding",
        blocks=[3, 6], seed=7),
}


@pytest.mark.parametrize("name", list(EMBED_CASES))
def test_shared_embedding_conv_equals_unshared(name, rng):
    """The label embedding's channel through the first conv: the image part once per sample, the
    label part once per label; training gradients (conv, later layers, the embedding itself),
    the multi-pass goodness and the one-pass head equal the row-by-row path within 1e-5."""
    shared, plain = _pair(EMBED_CASES[name])
    D, K = int(np.prod(shared.input_shape)), shared.num_classes
    x = rng.random((16, D), dtype=np.float32)
    y = rng.integers(0, K, 16)
    neg = (y + 1 + rng.integers(0, K - 1, 16)) % K
    for m in (shared, plain):
        m.compute_grads(x, y, neg)
    for i, (ls, lp) in enumerate(zip(shared.layers, plain.layers)):
        for g in ("grad_weight", "grad_bias"):
            if getattr(lp, g, None) is not None:
                _rel_close(getattr(ls, g), getattr(lp, g), what=f"layer {i} {g}")
    emb = fflib._core.EMBEDDING
    _rel_close(shared._net.param(emb, fflib._core.PARAM_KINDS["grad_weight"]),
               plain._net.param(emb, fflib._core.PARAM_KINDS["grad_weight"]), what="embedding gradient")
    _rel_close(shared.goodness(x), plain.goodness(x), what="multi-pass goodness")
    _rel_close(shared.goodness(x[:1]), plain.goodness(x[:1]), what="multi-pass goodness, one image")
    if shared.has_head:
        _rel_close(shared.predict_proba(x), plain.predict_proba(x), what="one-pass")
    # explicit negatives (rows of different samples) take the plain conv: identical
    a, b = EMBED_CASES[name](), EMBED_CASES[name]()
    b._net.set_share_labels(False)
    np.testing.assert_array_equal(a.train_step(x, y, neg, x_neg=x[::-1].copy()),
                                  b.train_step(x, y, neg, x_neg=x[::-1].copy()))
    # and a pipelined run through the shared step equals the sequential one bit for bit (the
    # sequential step at one thread: the pipeline runs each block on one)
    c, d = EMBED_CASES[name](), EMBED_CASES[name]()
    threads = fflib.get_num_threads()
    fflib.set_num_threads(1)
    try:
        c.pipeline_begin(8)
        for s in range(2):
            c.pipeline_step(x[s * 8:(s + 1) * 8], y[s * 8:(s + 1) * 8], neg[s * 8:(s + 1) * 8])
            d.train_step(x[s * 8:(s + 1) * 8], y[s * 8:(s + 1) * 8], neg[s * 8:(s + 1) * 8])
        c.pipeline_flush()
        c.pipeline_end()
    finally:
        fflib.set_num_threads(threads)
    for p, q in zip(c.parameters(), d.parameters()):
        np.testing.assert_array_equal(p, q)


def test_shared_embedding_conv_gradient_check(rng):
    """The directional check through the shared conv with a LenNorm in front (its row scales
    enter the shared product); tests/test_core_blocks.py checks it without one."""
    from fflib import models
    layers = models.conv_block(2, 6, 3, padding=1, pool=2, norm="rms") + models.conv_block(6, 8, 3, padding=1)
    m = fflib.FFModel(layers, (1, 8, 8), 4, loss="symba", label_encoding="embedding", seed=2)
    x, y = rng.random((6, 64), dtype=np.float32), rng.integers(0, 4, 6)
    for b in range(m.num_blocks + 1):
        fd, an, rel = m._net.check_grad(x, y, (y + 1) % 4, b, 1e-3, 7 + b)
        assert abs(an) > 1e-6 and rel < 1e-2, (b, fd, an)
