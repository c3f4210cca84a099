"""The general training step (ff_net_train): explicit negatives (x_neg), the last block's output
for the next process of a pipeline (out), and the gradient-progress counter that a data-parallel
caller reads to exchange each layer's gradients as soon as they are final."""
import threading

import numpy as np
import pytest

import fflib
from fflib import nn, reference as ref



def _batch(B=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((B, 784), dtype=np.float32)
    y = rng.integers(0, 10, B)
    yn = (y + 1 + rng.integers(0, 9, B)) % 10
    return x, y, yn


def _mlp(seed=3, **kw):
    return fflib.FFModel(nn.mlp([784, 60, 40]), input_shape=(1, 28, 28), seed=seed, **kw)


@pytest.mark.parametrize("share", [True, False])
def test_x_neg_equal_to_x_is_the_ordinary_step(share):
    """Negatives given as the same images with the wrong labels are the ordinary step, bit for bit."""
    x, y, yn = _batch()
    a, b = _mlp(), _mlp()
    a._net.set_share_labels(share)
    b._net.set_share_labels(share)
    for _ in range(3):
        la = a.train_step(x, y, yn)
        lb = b.train_step(x, y, yn, x_neg=x)
        np.testing.assert_array_equal(la, lb)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q)


def test_out_is_the_last_block_output_before_its_update():
    x, y, yn = _batch()
    m = _mlp()
    W = [np.array(l.weight, dtype=np.float64) for l in m.layers if isinstance(l, nn.Linear)]
    bias = [np.array(l.bias, dtype=np.float64) for l in m.layers if isinstance(l, nn.Linear)]
    out = np.zeros((2 * len(x), m.train_out_size()), np.float32)
    m.train_step(x, y, yn, out=out)
    rows = np.concatenate([x, x]).astype(np.float64)
    labs = np.concatenate([y, yn])
    rows[:, :10] = 0.0
    rows[np.arange(len(rows)), labs] = m.config["label_value"]
    h = rows
    for Wi, bi in zip(W, bias):
        h = ref.relu_forward(ref.linear_forward(ref.lennorm_forward(h)[0], Wi, bi))
    np.testing.assert_allclose(out, h, rtol=2e-4, atol=2e-6)
    assert m.train_out_size(active=np.array([1, 0], np.uint8)) == 60


def test_label_free_pairs_train_and_refuse_what_they_cannot_do():
    x, _, _ = _batch()
    m = fflib.FFModel(nn.mlp([784, 50, 50]), input_shape=(1, 28, 28), label_encoding="none", seed=1)
    neg = np.ascontiguousarray(x[::-1])
    first = m.train_step(x, None, x_neg=neg)
    for _ in range(30):
        last = m.train_step(x, None, x_neg=neg)
    assert last[:2].sum() < first[:2].sum()        # the pairs are learnt
    with pytest.raises(TypeError, match="labels"):
        m.train_step(x, None)
    with pytest.raises(ValueError, match="explicit negatives"):
        m.train_step(x, np.zeros(len(x), np.int64))
    with pytest.raises(ValueError, match="x_neg must have as many samples"):
        m.train_step(x, None, x_neg=x[:3].copy())
    with pytest.raises(TypeError, match="x_neg must have dtype float32"):
        m.train_step(x, None, x_neg=x.astype(np.float64))
    with pytest.raises(ValueError, match="x_neg.*not finite|x_neg.*NaN"):
        bad = neg.copy(); bad[0, 0] = np.nan
        m.train_step(x, None, x_neg=bad)
    with pytest.raises(ValueError, match="label_encoding is none"):
        m.predict_multipass(x)
    with pytest.raises(ValueError, match="x_neg"):
        m.pipeline_begin(len(x))
    assert m.features(x).shape == (len(x), 50)
    with pytest.raises(ValueError, match="out"):
        m.train_step(x, None, x_neg=neg, out=np.zeros((len(x), 50), np.float32))


def test_x_neg_refused_by_a_label_free_loss():
    x, y, _ = _batch()
    m = fflib.FFModel(nn.mlp([784, 40, 40]), input_shape=(1, 28, 28), loss="cwc", num_classes=10,
                      label_encoding="none", seed=0)
    with pytest.raises(ValueError, match="x_neg: the cwc loss"):
        m.train_step(x, y, x_neg=x)


def test_progress_counts_final_layers_while_compute_grads_runs():
    x, y, yn = _batch(B=512)
    m = fflib.FFModel(nn.mlp([784, 400, 400, 400]), input_shape=(1, 28, 28), seed=0)
    assert m.progress() == 0
    seen = []
    t = threading.Thread(target=m.compute_grads, args=(x, y, yn))
    t.start()
    while t.is_alive():
        seen.append(m.progress())
    t.join()
    seen.append(m.progress())
    assert seen == sorted(seen)                           # never goes back
    assert seen[-1] == len(m.layers) + 1
    ends = [last for _, last in m.blocks]
    assert set(seen) <= {0, *ends, len(m.layers) + 1}    # only block boundaries
