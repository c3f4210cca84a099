"""The command-line contract: python -m fflib train ... (JSON keys, exit codes, interrupts)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import child_env  # noqa: E402


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fflib", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO + "/tests", env=child_env())


def test_train_on_the_sample_writes_the_json_contract(tmp_path):
    out = tmp_path / "r.json"
    res = run("train", "--epochs", "1", "--seed", "3", "--threads", "1", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "test error: one-pass" in res.stdout and "multi-pass" in res.stdout
    r = json.loads(out.read_text())
    for key in ("config", "test_error", "train_error", "epochs", "train_seconds", "peak_rss_mb"):
        assert key in r
    for part in ("test_error", "train_error"):
        assert set(r[part]) == {"one_pass", "multi_pass"}
        assert all(0.0 <= v <= 100.0 for v in r[part].values())
    assert r["test_error"]["multi_pass"] < 60.0          # one epoch on 10,000 real images learns
    assert len(r["epochs"]) == 1 and len(r["epochs"][0]["block_loss"]) == 2
    assert r["epochs"][0]["seconds"] > 0 and r["peak_rss_mb"] > 0
    assert r["config"]["dataset"] == "sample" and r["config"]["seed"] == 3
    assert r["train_error_samples"] == min(10000, r["config"]["num_train"])
    import fflib
    assert r["fflib_version"] == fflib.__version__ and r["schema_version"] == 3
    assert r["config"]["threads"] == 1
    assert r["config"]["label_encoding"] == "onehot" and r["config"]["loss"] == "symba"   # resolved defaults
    text = out.read_text()
    for key in ("num_params", "num_params_with_head", "threads", "fflib_version"):
        assert text.count(f'"{key}"') == 1, key          # each setting once
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,seconds,lr,head_loss,block_loss_0,block_loss_1")
    assert len(rows) == 2 and rows[1].startswith("1,")


@pytest.mark.parametrize("args, msg", [
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--batch-size", "-4"], "--batch-size"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--layers", "500,x"], "--layers"),
    (["train", "--dataset", "imagenet"], "--dataset"),
    (["train", "--model", "resnet"], "--model"),
    (["train", "--threshold", "inf"], "--threshold"),
    (["train", "--dataset", "mnist", "--data-dir", "/nonexistent/dir"], "not found"),
    (["train", "--model", "ff_tiny"], "CIFAR-10 model"),
    (["train", "--bogus"], "unrecognized"),
    (["train", "--model", "cnn", "--augment", "rotate15"], "unknown part 'rotate15'"),
    (["train", "--milestones", "5,3"], "--milestones"),
    (["train", "--epochs", "3000000000"], "--epochs"),
    (["train", "--lr", "1e39"], "--lr"),
    (["train", "--threads", "999"], "--threads"),
    (["train", "--threads", "0"], "--threads"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train", "--out", "/nonexistent/dir/r.json"], "--out /nonexistent/dir/r.json: directory"),
    (["train", "--save", "/nonexistent/dir/m.npz"], "--save"),
    (["train", "--checkpoint", "/nonexistent/dir/ck"], "--checkpoint"),
    (["train", "--checkpoint", "/proc/ck"], "--checkpoint /proc/ck: cannot create the directory"),
    (["train", "--dataset", "mnist", "--data-dir", "/nonexistent/dir"], "--data-dir DIR on the command line"),
    (["train", "--out", "."], "is a directory"),
    (["train", "--resume"], "--resume needs --checkpoint"),
    # checked before the training, not after it (the whole run was lost)
    (["train", "--multipass-blocks=-3"], "--multipass-blocks: blocks must be block indices in [-2, 2)"),
    (["train", "--multipass-blocks=0,0"], "--multipass-blocks: blocks must be distinct"),
    # flags that did nothing where they do not apply (silently), now refused like --alpha and --margin
    (["train", "--threshold", "5"], "--threshold is the FF and PvN losses' theta; it does not apply to --loss symba"),
    (["train", "--loss", "ff", "--threshold", "5", "--block-thresholds", "1,2"], "give one"),
    (["train", "--chunk-size", "3"], "does not apply to --routine greedy"),
    (["train", "--gamma", "0.5"], "--gamma is the factor of the --milestones steps"),
    (["train", "--loss", "ae"], "train them with --method uff"),
    (["train", "--early-exit-drop", "0.5"], "give --early-exit"),
    (["eval", "m.npz", "--early-exit-drop", "0.5"], "give --early-exit"),
    (["bogus"], "invalid choice"),
    # cross-entropy reads logits from a 10-wide last layer (the core's message named blocks and layers)
    (["train", "--loss", "xent"], "end --layers with 10 (e.g. 500,100,10), got 500,100"),
    (["train", "--model", "cwcomp", "--loss", "xent"], "cwcomp's blocks end in feature maps, not logits"),
    (["train", "--model", "cnn", "--loss", "xent"], "an MLP ending in 10 units"),
    (["train", "--model", "cwcomp", "--loss", "symba"], "use --loss cwc, pvn or df-cwc (the light models"),
])
def test_bad_arguments_exit_2_with_one_line(args, msg):
    res = run(*args)
    assert res.returncode == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and msg.lower() in lines[0].lower(), res.stderr


@pytest.mark.parametrize("variable", ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"])
@pytest.mark.parametrize("args", [["train", "--epochs", "0"], ["train", "--out", "/nonexistent/dir/r.json"]])
def test_under_mpirun_only_rank_0_prints_a_usage_error(variable, args, monkeypatch, capsys):
    """`mpirun -n N python -m fflib train <bad flag>`: rank 0 prints the message and exits 2 at once;
    another rank prints nothing while it waits for the launcher to end the job (CI once saw rank 1
    exit first and the launcher kill rank 0 before it printed), then exits 2 with the message."""
    env = child_env()
    env[variable] = "0"
    res = subprocess.run([sys.executable, "-m", "fflib"] + args, capture_output=True, text=True,
                         timeout=120, cwd=REPO + "/tests", env=env)
    assert res.returncode == 2
    assert len([l for l in res.stderr.splitlines() if l.strip()]) == 1, res.stderr
    from fflib import cli
    for name in cli._RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "3")
    slept = []
    monkeypatch.setattr(cli.time, "sleep", lambda s: (slept.append(s), print("WAITED", file=sys.stderr)))
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2 and slept == [cli._USAGE_ERROR_GRACE_SECONDS] and slept[0] >= 10
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "WAITED" and len(err) == 2 and err[1].startswith("[rank 3] "), err


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`python -m fflib recipes | head -8` printed a BrokenPipeError traceback."""
    p = subprocess.Popen([sys.executable, "-m", "fflib", "recipes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=REPO + "/tests", env=child_env())
    p.stdout.close()               # before the command writes anything
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err, err


def test_bare_command_prints_help_and_version():
    res = run()
    assert res.returncode == 0 and "usage:" in res.stdout and "train" in res.stdout
    import fflib
    res = run("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"fflib {fflib.__version__}"


def test_models_lists_the_zoo():
    res = run("models")
    assert res.returncode == 0
    for name in ("mlp", "cnn", "cwcomp", "ff_tiny", "ff_small", "ff_medium", "ff_optimal", "ff_deep"):
        assert name in res.stdout
    assert "164,706" in res.stdout          # the survey's count, shown beside ours


def test_ctrl_c_stops_cleanly_and_still_writes(tmp_path):
    out = tmp_path / "r.json"
    # the child starts with SIGINT at its default action: a test run launched in the background
    # (`cmd &`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    # (the signal was lost and the run went on to its last epoch)
    proc = subprocess.Popen([sys.executable, "-m", "fflib", "train", "--epochs", "5000", "--threads", "1",
                             "--out", str(out), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(tmp_path), env=child_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # wait until the first epoch has been reported, then interrupt
    t0 = time.time()
    line = ""
    while not line.startswith("epoch") and time.time() - t0 < 120:
        line = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stdout
    r = json.loads(out.read_text())
    assert r["interrupted"] is True and 1 <= len(r["epochs"]) < 5000


def test_eval_reports_a_saved_model(tmp_path):
    model, out, ev = tmp_path / "m.npz", tmp_path / "train.json", tmp_path / "eval.json"
    res = run("train", "--epochs", "1", "--layers", "64,32", "--threads", "1", "--no-progress",
              "--save", str(model), "--out", str(out))
    assert res.returncode == 0, res.stderr
    res = run("eval", str(model), "--threads", "1", "--out", str(ev))
    assert res.returncode == 0, res.stderr
    assert "test error: one-pass" in res.stdout
    trained, evaluated = json.loads(out.read_text()), json.loads(ev.read_text())
    assert evaluated["test_error"] == trained["test_error"]      # the same model, the same test split
    assert len(evaluated["block_accuracy"]) == 2
    bad = run("eval", str(tmp_path / "missing.npz"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    bad = run("eval", str(model), "--dataset", "cifar10", "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
