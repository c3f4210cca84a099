"""Pipelined training (Pipeline Forward-Forward): block k trains on the minibatch fed k ticks
earlier, the blocks of a tick at once on fflib's threads.  Its schedule feeds every block the
same input as the sequential step (block k-1's output before block k-1's update on that
minibatch), so the weights must equal sequential training's bit for bit, on any thread count."""
import numpy as np
import pytest

import fflib
from fflib import models


def _mlp():
    return fflib.FFModel(fflib.mlp([784, 48, 40, 32]), 784, 10, loss="symba", goodness="mean", seed=3)


FACTORIES = {
    "mlp": (_mlp, (784,)),
    "cnn_embedding": (lambda: models.build("cnn", "mnist", seed=5), (1, 28, 28)),
    "cwcomp": (lambda: models.build("cwcomp", "mnist", seed=7, channels=(20, 40, 60, 80)), (1, 28, 28)),
    "ff_tiny": (lambda: models.build("ff_tiny", "cifar10", seed=11), (3, 32, 32)),
}


@pytest.fixture
def threads():
    n = fflib.get_num_threads()
    yield fflib.set_num_threads
    fflib.set_num_threads(n)


def _data(shape, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, int(np.prod(shape))), dtype=np.float32), rng.integers(0, 10, n)


def _train(factory, x, y, sizes, pipeline, neg=None, active=None):
    m = factory()
    fflib.Adam(m, lr=3e-3)
    losses = []
    if pipeline:
        m.pipeline_begin(max(sizes), active=active)
    s = 0
    for b in sizes:
        nb = None if neg is None else neg[s:s + b]
        if pipeline:
            losses.append(m.pipeline_step(x[s:s + b], y[s:s + b], nb))
        else:
            losses.append(m.train_step(x[s:s + b], y[s:s + b], neg_labels=nb, active=active))
        s += b
    if pipeline:
        losses += m.pipeline_flush()
        assert m.pipeline_in_flight == 0
    return m, losses


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("n_threads", [1, 2])
def test_pipelined_equals_sequential_bitwise(name, n_threads, threads):
    factory, shape = FACTORIES[name]
    sizes = [12, 12, 12, 12, 7]              # a short last minibatch too
    x, y = _data(shape, sum(sizes))
    threads(1)
    seq, seq_losses = _train(factory, x, y, sizes, False)
    threads(n_threads)
    pipe, pipe_losses = _train(factory, x, y, sizes, True)
    a, b = seq.state_dict(), pipe.state_dict()
    oa, ob = seq.optimizer_state(), pipe.optimizer_state()
    assert a.keys() == b.keys()
    # Bitwise on 1 thread.  On 2, a block's GEMMs may be split across the threads, and some
    # CPUs' OpenBLAS kernels round a split GEMM differently (on Zen 5, sequential training on 2
    # threads already differs from 1 thread for the conv models); then the weights agree to
    # 2e-4 of each array's largest value (measured), where a scheduling error (a block fed the
    # wrong minibatch) moves them by Adam's steps, percents of it.
    exact = n_threads == 1 or all(np.array_equal(a[k], b[k]) for k in a)
    for k in a:
        if exact:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-3 * float(np.abs(a[k]).max()), err_msg=k)
    for k in oa:
        if exact:
            np.testing.assert_array_equal(oa[k], ob[k], err_msg=k)
    # the losses of minibatch m by block k come out at tick m + k
    nb = seq.num_blocks
    for m_i, row in enumerate(seq_losses):
        for k in range(nb):
            assert pipe_losses[m_i + k][k] == (row[k] if exact else pytest.approx(row[k], rel=1e-3))
    assert np.isnan(pipe_losses[0][1:nb]).all()    # the pipeline filling up


def test_pipeline_with_negatives_and_windows(threads):
    x, y = _data((784,), 48)
    neg = (y + 1 + np.arange(48) % 9) % 10
    active = np.array([1, 0, 1], np.uint8)
    threads(2)
    seq, _ = _train(_mlp, x, y, [16, 16, 16], False, neg=neg, active=active)
    pipe, _ = _train(_mlp, x, y, [16, 16, 16], True, neg=neg, active=active)
    for k, v in seq.state_dict().items():
        np.testing.assert_array_equal(v, pipe.state_dict()[k], err_msg=k)


def test_pipeline_errors():
    m = _mlp()
    x, y = _data((784,), 20)
    with pytest.raises(RuntimeError, match="no pipeline"):
        m.pipeline_step(x[:4], y[:4])
    m.pipeline_begin(8)
    with pytest.raises(ValueError, match=r"batch size must be in \[1, 8\]"):
        m.pipeline_step(x[:9], y[:9])
    m.pipeline_step(x[:8], y[:8])
    with pytest.raises(RuntimeError, match="still in the pipeline"):
        m.pipeline_begin(8)
    m.pipeline_flush()
    m.pipeline_begin(8)                    # empty again: a new begin is fine
    m.pipeline_end()
    o = fflib.FFModel(fflib.mlp([784, 32, 32, 32]), 784, 10)
    o.set_block_ranges([(0, 6), (3, 9)])
    with pytest.raises(ValueError, match="non-overlapping blocks"):
        o.pipeline_begin(8)


def test_fit_pipelined_equals_fit_sequential(threads):
    x, y = _data((784,), 120, seed=4)
    threads(2)
    runs = []
    for pipeline in (False, True):
        m = _mlp()
        opt = fflib.Adam(m, lr=3e-3)
        h = fflib.fit(m, x, y, epochs=2, batch_size=25, optimizer=opt, negatives="hard",
                      random_state=1, progress=False, pipeline=pipeline)
        runs.append((m, h))
    (a, ha), (b, hb) = runs
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k], err_msg=k)
    for ea, eb in zip(ha["epochs"], hb["epochs"]):
        np.testing.assert_allclose(ea["block_loss"], eb["block_loss"], rtol=1e-6)
        assert ea["head_loss"] == pytest.approx(eb["head_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="alternate"):
        fflib.fit(_mlp(), x, y, epochs=1, routine="chunked", alternate=True, pipeline=True, progress=False)


def test_cli_pipeline_gives_the_sequential_result(tmp_path):
    import json
    import os
    import subprocess
    import sys
    where = os.path.dirname(os.path.dirname(os.path.abspath(fflib.__file__)))   # the fflib imported here
    env = dict(os.environ, PYTHONPATH=where + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = {}
    for flag in ("", "--pipeline"):
        path = tmp_path / f"r{flag}.json"
        cmd = [sys.executable, "-m", "fflib", "train", "--epochs", "1", "--layers", "64,32", "--threads", "2",
               "--no-progress", "--out", str(path)] + ([flag] if flag else [])
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
        assert res.returncode == 0, res.stderr
        out[flag] = json.loads(path.read_text())
    assert out["--pipeline"]["test_error"] == out[""]["test_error"]
    assert out["--pipeline"]["config"]["pipeline"] is True
