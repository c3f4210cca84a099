"""Checkpoint and resume (issue 10): a run stopped anywhere and resumed ends bit-identical to an
uninterrupted one, in fit and on the command line (SIGKILL mid-epoch)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fflib
from fflib.optim import CosineAnnealingLR, StepLR
from test_reliability import data, same_params, zoo_model

from conftest import child_env  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Killed(KeyboardInterrupt):
    pass


def make_run(name, sgd):
    m = zoo_model(name, seed=4)
    opt = fflib.SGD(m, lr=0.02, momentum=0.9) if sgd else fflib.Adam(m, lr=3e-3, head_lr=1e-3)
    sched = CosineAnnealingLR(opt, T_max=4, eta_min=1e-4) if sgd else StepLR(opt, 2, 0.5)
    return m, opt, sched


@pytest.mark.parametrize("name, sgd", [("mlp", True), ("cnn", False), ("cwcomp", True), ("ff_tiny", False)])
def test_resumed_fit_ends_bit_identical(name, sgd, tmp_path):
    kw = dict(epochs=4, batch_size=8, progress=False, random_state=11,
              negatives="hard" if name == "mlp" else "uniform",
              augment="crop2+flip" if name in ("cnn", "ff_tiny") else None)
    m, opt, sched = make_run(name, sgd)
    x, y = data(m, n=24, seed=1)
    full = fflib.fit(m, x, y, optimizer=opt, scheduler=sched, **kw)

    # the same run, stopped in the middle of epoch 3 (two checkpoints written)...
    m1, opt1, sched1 = make_run(name, sgd)
    calls = []
    step = m1.train_step

    def dying_step(*a, **k):
        calls.append(1)
        if len(calls) == 8:              # epoch 3, step 2 of 3
            raise Killed()
        return step(*a, **k)

    m1.train_step = dying_step
    h1 = fflib.fit(m1, x, y, optimizer=opt1, scheduler=sched1, checkpoint=tmp_path / "ck", **kw)
    assert h1["interrupted"] and len(h1["epochs"]) == 2
    # ... and resumed by a new process: a fresh model, optimiser and schedule
    m2, opt2, sched2 = make_run(name, sgd)
    h2 = fflib.fit(m2, x, y, optimizer=opt2, scheduler=sched2, checkpoint=tmp_path / "ck", resume=True, **kw)
    assert not h2["interrupted"] and [r["epoch"] for r in h2["epochs"]] == [1, 2, 3, 4]
    assert [r["block_loss"] for r in h2["epochs"]] == [r["block_loss"] for r in full["epochs"]]
    assert same_params(m, m2)
    a, b = m.optimizer_state(), m2.optimizer_state()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert opt2.lr == opt.lr and sched2.last_epoch == sched.last_epoch == 4


def make_label_free(method):
    from fflib.uff import uff_model
    from fflib.unsupervised import scff_mlp
    if method == "uff":
        m = uff_model([64, 16, 12], 3, (1, 8, 8), seed=4)
    elif method == "scff":
        m = scff_mlp((16, 12), (1, 8, 8), seed=4)
    else:
        m = fflib.FFModel(fflib.mlp([64, 16, 12], norm="rms"), (1, 8, 8), 3, loss="ff", label_encoding="none",
                          head_blocks=[0, 1], seed=4)
    opt = fflib.Adam(m, lr=3e-3, head_lr=1e-3)
    return m, opt, StepLR(opt, 2, 0.5)


@pytest.mark.parametrize("method", ["scff", "hybrid", "uff"])
def test_resumed_label_free_fit_ends_bit_identical(method, tmp_path):
    """method scff/hybrid/uff: 3 label-free epochs and 2 probe epochs, stopped in the probe's
    first epoch and resumed by a fresh model, optimiser and schedule, end bit-identical."""
    rng = np.random.default_rng(3)
    x = rng.random((24, 64), dtype=np.float32)
    y = rng.integers(0, 3, 24)
    kw = dict(method=method, epochs=3, head_epochs=2, batch_size=8, progress=False, random_state=11,
              augment="crop2" if method == "scff" else None)
    m, opt, sched = make_label_free(method)
    full = fflib.fit(m, x, y, optimizer=opt, scheduler=sched, **kw)
    m1, opt1, sched1 = make_label_free(method)
    calls, step = [], m1.train_step

    def dying_step(*a, **k):
        calls.append(1)
        if len(calls) == 11:             # the probe's first epoch, step 2 of 3
            raise Killed()
        return step(*a, **k)

    m1.train_step = dying_step
    h1 = fflib.fit(m1, x, y, optimizer=opt1, scheduler=sched1, checkpoint=tmp_path / "ck", **kw)
    assert h1["interrupted"] and len(h1["epochs"]) == 3
    m2, opt2, sched2 = make_label_free(method)
    h2 = fflib.fit(m2, x, y, optimizer=opt2, scheduler=sched2, checkpoint=tmp_path / "ck", resume=True, **kw)
    assert not h2["interrupted"] and [r["epoch"] for r in h2["epochs"]] == [1, 2, 3, 4, 5]
    assert [r["head_loss"] for r in h2["epochs"]] == [r["head_loss"] for r in full["epochs"]]
    assert [r["block_loss"] for r in h2["epochs"]] == [r["block_loss"] for r in full["epochs"]]
    assert same_params(m, m2)
    assert opt2.lr == opt.lr and sched2.last_epoch == sched.last_epoch == 5
    m3, opt3, sched3 = make_label_free(method)
    with pytest.raises(ValueError, match="the checkpoint was written by a run with"):
        fflib.fit(m3, x, y, optimizer=opt3, scheduler=sched3, checkpoint=tmp_path / "ck", resume=True,
                  **dict(kw, head_epochs=3))


def test_resume_without_optimizer_restores_the_saved_kind(tmp_path):
    kw = dict(epochs=3, batch_size=8, progress=False, random_state=2)
    m, opt, sched = make_run("mlp", sgd=True)
    x, y = data(m, n=16)
    fflib.fit(m, x, y, optimizer=opt, scheduler=sched, **kw)
    m1, opt1, sched1 = make_run("mlp", sgd=True)
    fflib.fit(m1, x, y, optimizer=opt1, scheduler=sched1, checkpoint=tmp_path / "ck", **dict(kw, epochs=2))
    m2 = zoo_model("mlp", seed=4)          # no optimizer=, no scheduler=: both come from the checkpoint
    fflib.fit(m2, x, y, checkpoint=tmp_path / "ck", resume=True, **kw)
    assert isinstance(m2.optimizer, fflib.SGD) and m2.optimizer.momentum == pytest.approx(0.9)
    assert isinstance(m2.scheduler, CosineAnnealingLR)
    assert same_params(m, m2)


def test_resume_into_the_models_own_optimizer(tmp_path):
    """The common script: the optimiser attached to the model (fflib.Adam(m)), a schedule of it,
    and no optimizer= to fit.  The resumed run restores into that optimiser, which the schedule
    drives (it had built a second one: "scheduler must be a schedule of the optimiser")."""
    kw = dict(epochs=3, batch_size=8, progress=False, random_state=2)

    def run(**k):
        m, opt, _ = make_run("mlp", sgd=False)
        sched = fflib.MultiStepLR(opt, [2], 0.5)
        return m, sched, fflib.fit(m, *data(m, n=16), scheduler=sched, **kw, **k)
    full, sched, _ = run()
    run(checkpoint=tmp_path / "ck", callback=lambda rec: rec["epoch"] == 1 and shutil.copytree(
        tmp_path / "ck", tmp_path / "at1"))
    m2, sched2, h2 = run(checkpoint=tmp_path / "at1", resume=True)
    assert sched2.optimizer is m2.optimizer and m2.optimizer.lr == full.optimizer.lr == pytest.approx(1.5e-3)
    assert [r["epoch"] for r in h2["epochs"]] == [1, 2, 3] and same_params(full, m2)


def test_a_cooldown_run_resumes_only_at_its_planned_length(tmp_path):
    """The README's "epochs may grow" holds for a constant rate or milestones; a linear
    cooldown is planned for the run's length, so a longer resume is refused saying so."""
    m, opt, _ = make_run("mlp", sgd=False)
    x, y = data(m, n=16)
    fflib.fit(m, x, y, epochs=2, batch_size=8, scheduler=fflib.LinearCooldown(opt, 2), progress=False,
              checkpoint=tmp_path / "ck")
    m2, opt2, _ = make_run("mlp", sgd=False)
    with pytest.raises(ValueError, match="linear cooldown was planned for 2 epochs .* this run's for 3"):
        fflib.fit(m2, x, y, epochs=3, batch_size=8, optimizer=opt2, scheduler=fflib.LinearCooldown(opt2, 3),
                  progress=False, checkpoint=tmp_path / "ck", resume=True)


def test_resume_refuses_another_run(tmp_path):
    m, opt, sched = make_run("mlp", sgd=True)
    x, y = data(m, n=16)
    fflib.fit(m, x, y, epochs=1, batch_size=8, optimizer=opt, scheduler=sched, progress=False,
              checkpoint=tmp_path / "ck")
    for change, msg in [(dict(batch_size=4), "batch_size=8"), (dict(x=x + 1), "training data"),
                        (dict(negatives="hard"), "negatives")]:
        m2, opt2, sched2 = make_run("mlp", sgd=True)
        kw = dict(x=x, y=y, epochs=2, batch_size=8, optimizer=opt2, scheduler=sched2, progress=False,
                  checkpoint=tmp_path / "ck", resume=True)
        kw.update(change)
        with pytest.raises(ValueError, match=msg):
            fflib.fit(m2, **kw)
    other = zoo_model("cwcomp")
    xo, yo = data(other, n=16)
    with pytest.raises(ValueError, match="differs in layers"):
        fflib.fit(other, xo, yo, epochs=2, batch_size=8, progress=False, checkpoint=tmp_path / "ck", resume=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        fflib.fit(m, x, y, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fflib.fit(m, x, y, progress=False, checkpoint=tmp_path / "no" / "dir")


def test_checkpoint_is_a_loadable_model_file_and_replaced_atomically(tmp_path):
    m, opt, sched = make_run("mlp", sgd=False)
    x, y = data(m, n=16)
    seen = []
    fflib.fit(m, x, y, epochs=3, batch_size=8, optimizer=opt, scheduler=sched, progress=False,
              checkpoint=tmp_path / "ck", callback=lambda rec: seen.append(sorted(os.listdir(tmp_path / "ck"))))
    assert seen == [["checkpoint.npz"]] * 3         # one file, never a temporary left behind
    m2 = fflib.FFModel.load(tmp_path / "ck" / "checkpoint.npz")
    assert same_params(m, m2) and isinstance(m2.scheduler, StepLR)


# ----------------------------------------------------------------------------- the CLI
def cli(*args):
    return [sys.executable, "-m", "fflib", "train", "--layers", "300,100", "--epochs", "4", "--threads", "1",
            "--no-progress", "--seed", "5", *args]




def test_cli_run_killed_mid_epoch_resumes_bit_identical(tmp_path):
    env = child_env()
    ref = subprocess.run(cli("--save", str(tmp_path / "ref.npz")), capture_output=True, text=True,
                         timeout=300, env=env, cwd=str(tmp_path))
    assert ref.returncode == 0, ref.stderr
    ck = tmp_path / "ck"
    # SIGINT at its default action in the child (see test_cli.py); SIGKILL cannot be caught anyway
    proc = subprocess.Popen(cli("--checkpoint", str(ck), "--save", str(tmp_path / "run.npz")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(tmp_path), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    t0 = time.time()
    while time.time() - t0 < 120:       # the first epoch line comes after its checkpoint is written
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("epoch   1"):
            break
    seconds = float(lines[-1].split()[-1].rstrip("s"))
    time.sleep(min(0.5, seconds / 2))   # into epoch 2
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (ck / "checkpoint.npz").exists() and not (tmp_path / "run.npz").exists()
    done = json.loads(str(np.load(ck / "checkpoint.npz")["__meta__"]))["checkpoint"]["epoch"]
    assert 1 <= done < 4
    res = subprocess.run(cli("--checkpoint", str(ck), "--resume", "--save", str(tmp_path / "run.npz"),
                             "--out", str(tmp_path / "r.json")), capture_output=True, text=True,
                         timeout=300, env=env, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert f"epoch   {done + 1}" in res.stdout and f"epoch   {done}  " not in res.stdout
    a, b = fflib.FFModel.load(tmp_path / "ref.npz"), fflib.FFModel.load(tmp_path / "run.npz")
    assert same_params(a, b)
    r = json.loads((tmp_path / "r.json").read_text())
    assert [e["epoch"] for e in r["epochs"]] == [1, 2, 3, 4]
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 5
