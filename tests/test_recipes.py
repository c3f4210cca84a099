"""Recipes (issue 15): every zoo model has one per dataset, `train` without flags runs it, the
reported results are those of the runs' JSON files, reproduce.py resumes an interrupted run
bit-identically, and the results tables are generated from the JSON files."""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fflib
from fflib import cli, models, recipes

from conftest import child_env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"_{name}", REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def train_dests():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    return {a.dest for a in sub._actions} | set(sub._defaults)


def test_every_zoo_model_has_a_recipe_on_every_dataset_it_runs_on():
    assert set(recipes.DATASETS) == set(models.ZOO)
    dests = train_dests()
    for name in models.ZOO:
        for ds in recipes.DATASETS[name]:
            r = recipes.lookup(name, ds)
            assert r is not None and r.model == name and r.dataset == ds and r.default, (name, ds)
        assert recipes.lookup(name, "sample") is (recipes.lookup(name, "mnist"))
    assert recipes.lookup("ff_tiny", "mnist") is None
    for r in recipes.RECIPES.values():
        assert r.dataset in recipes.DATASETS[r.model], r.name
        assert r.status in ("measured", "partial", "reported", "stopped", "untuned"), r.name
        assert (r.result is None) == (r.status in ("untuned", "stopped")), r.name
        assert (r.source is not None) == (r.status in ("measured", "partial")), r.name
        assert bool(r.evidence) == (r.status in ("reported", "stopped")), r.name
        if r.status == "stopped":   # its log is in the repository
            assert (Path(__file__).resolve().parents[1] / r.evidence).is_file(), r.name
        assert r.settings["epochs"] > 0 and r.tuned_on and r.row
        # every setting is a train option (the optimiser is Adam, the command's only one, unless
        # a --optimizer flag exists)
        assert set(r.settings) - {"optimizer"} <= dests, r.name
        assert r.settings.get("optimizer", "adam") == "adam"
        # a recipe tuned on a validation split holds it out, or its notes say that its final run
        # trains on every training image (the split included, once the settings were chosen)
        final_on_all = re.search(r"trains on all [\d,]+ images", r.notes) is not None
        assert r.tuned_on.startswith("validation split") <= (r.settings["val_size"] > 0 or final_on_all), r.name
        assert not (final_on_all and r.settings["val_size"] > 0), r.name
    # one default per (model, dataset)
    keys = [(r.model, r.dataset) for r in recipes.RECIPES.values() if r.default]
    assert len(keys) == len(set(keys))
    with pytest.raises(ValueError, match="recipe must be one of"):
        recipes.get("mnist-resnet")


def test_reported_results_are_those_of_the_runs_json():
    for r in recipes.RECIPES.values():
        if r.source is None:
            continue
        run = json.loads((REPO / r.source).read_text())
        te = run["test_error"]
        assert {k: round(v, 2) for k, v in te.items()} == r.result, r.name
        cfg = run["config"]
        assert cfg["model"] == r.model and cfg["dataset"] == r.dataset, r.name
        assert not run["interrupted"] if "interrupted" in run else True
        trained = [e for e in run["epochs"] if e.get("phase") != "probe"]   # a label-free run's probe follows
        # a labelled run's head-only epochs (--head-epochs) follow its blocks' epochs
        head_only = 0 if len(trained) < len(run["epochs"]) else (cfg.get("head_epochs") or 0)
        windows = cfg.get("windows")
        if windows:   # per-block windows: the blocks' epochs end with the last window
            assert len(trained) == max(e for _, e in windows) + head_only, r.name
            assert r.settings["epochs"] == max(e for _, e in windows), r.name
        else:
            assert len(trained) == cfg["epochs"] + head_only and cfg["epochs"] == r.settings["epochs"], r.name
        assert cfg.get("recipe", r.name) == r.name and not cfg.get("subset")
        for key, want in r.settings.items():
            if key == "optimizer" or (key not in cfg) or (key == "epochs" and windows):
                continue
            got = cfg[key]
            if key == "layers":
                got = got[1:]                     # the JSON includes the input width
            if got is None and key in ("label_encoding", "head_blocks") and "recipe" not in cfg:
                continue                          # runs of the command before it recorded them resolved
            assert got == want, (r.name, key, got, want)


def run_train(argv, tmp_path):
    out = tmp_path / "r.json"
    threads = fflib.get_num_threads()
    try:
        rc = cli.main(["train", "--threads", "1", "--no-progress", "--out", str(out)] + argv)
    finally:
        fflib.set_num_threads(threads)
    assert rc == 0
    return json.loads(out.read_text())["config"]


def test_train_without_flags_runs_the_recipe(tmp_path, capsys):
    # the model's name alone gives the CNN recipe (20 epochs, shifts, head on all blocks at 6e-3);
    # epochs and subset overridden so it runs in seconds
    cfg = run_train(["--model", "cnn", "--epochs", "1", "--subset", "100"], tmp_path)
    want = recipes.get("mnist-cnn").settings
    assert cfg["recipe"] == "mnist-cnn" and cfg["dataset"] == "sample" and cfg["epochs"] == 1
    assert cfg["num_train"] == cfg["num_test"] == 100 and cfg["subset"] == 100
    for key in ("batch_size", "lr", "head_lr", "head_blocks", "augment", "cooldown", "loss", "label_encoding"):
        assert cfg[key] == want[key], key
    assert cfg["num_params_with_head"] == models.build("cnn", "mnist").num_parameters(head=True)
    # no flag at all: the MLP recipe on the embedded sample (as before the recipes); a flag
    # overrides that one setting only
    cfg = run_train(["--epochs", "1", "--subset", "200", "--lr", "0.001"], tmp_path)
    mlp = recipes.get("mnist-mlp").settings
    assert cfg["recipe"] == "mnist-mlp" and cfg["layers"] == [784, 500, 100] and cfg["loss"] == "symba"
    assert cfg["lr"] == 0.001 and cfg["head_lr"] == mlp["head_lr"] and cfg["batch_size"] == mlp["batch_size"]
    # a named variant
    cfg = run_train(["--recipe", "mnist-mlp-ff", "--dataset", "sample", "--epochs", "1", "--subset", "200"], tmp_path)
    assert cfg["loss"] == "ff" and cfg["goodness"] == "sum" and cfg["threshold"] == 2000.0
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--recipe", "mnist-cnn", "--model", "mlp"])
    assert e.value.code == 2 and "contradicts the recipe mnist-cnn" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--recipe", "cifar10-cnn", "--dataset", "sample"])
    assert e.value.code == 2 and "its dataset is cifar10" in capsys.readouterr().err


def test_recipes_command_lists_them(capsys):
    assert cli.main(["recipes"]) == 0
    text = capsys.readouterr().out
    for r in recipes.RECIPES.values():
        line = next(l for l in text.splitlines() if l.startswith(r.name + " "))
        assert recipes.command(r) in line
        assert ("untuned" in line) == (r.status == "untuned")
        if r.result is not None:
            assert recipes.format_result(r.result) in line
    assert cli.main(["recipes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(recipes.RECIPES)
    assert rows[0]["settings"]["epochs"] == 10 and rows[0]["command"].startswith("python -m fflib train")


def reproduce(out_dir, *extra):
    return [sys.executable, str(REPO / "benchmarks" / "reproduce.py"), "--only", "mnist-mlp", "--epochs", "8",
            "--subset", "2500", "--sample", "--out-dir", str(out_dir), "--no-progress", *extra]


def test_reproduce_resumes_after_ctrl_c_bit_identically(tmp_path, capsys):
    env = child_env()
    tag = "mnist-mlp.e8.s2500.sample"
    full = subprocess.run(reproduce(tmp_path / "full"), capture_output=True, text=True, timeout=300,
                          env=env, cwd=str(tmp_path))
    assert full.returncode == 0, full.stdout + full.stderr
    # Ctrl-C at a terminal: SIGINT to the whole process group, here after the first epoch (seven
    # epochs before the end: the signal lands in the run even on a loaded machine)
    proc = subprocess.Popen(reproduce(tmp_path / "cut"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=str(tmp_path), start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0, line = time.time(), ""
    while "epoch   1" not in line and time.time() - t0 < 120:
        line = proc.stdout.readline()
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "run the same command to resume" in out and not (tmp_path / "cut" / f"{tag}.json").exists()
    again = subprocess.run(reproduce(tmp_path / "cut"), capture_output=True, text=True, timeout=300,
                           env=env, cwd=str(tmp_path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming after epoch" in again.stdout
    a = json.loads((tmp_path / "full" / f"{tag}.json").read_text())
    b = json.loads((tmp_path / "cut" / f"{tag}.json").read_text())
    assert [e["epoch"] for e in b["epochs"]] == list(range(1, 9)) and len(b["sessions"]) == 2
    assert [e["block_loss"] for e in b["epochs"]] == [e["block_loss"] for e in a["epochs"]]
    assert b["test_error"] == a["test_error"] and b["config"]["recipe"] == "mnist-mlp"
    for key in ("train_seconds", "cpu_seconds", "peak_rss_mb", "fflib_version", "git_commit", "command", "recipe"):
        assert key in b
    assert b["smoke"] and b["fflib_version"] == fflib.__version__
    # a finished run is not run again
    spec = importlib.util.spec_from_file_location("_reproduce", REPO / "benchmarks" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(reproduce(tmp_path / "cut")[2:]) == 0
    assert "done" in capsys.readouterr().out


def test_reproduce_counts_every_epoch_line_the_run_prints(capsys):
    """reproduce.py's progress total is the number of "epoch" lines the train command prints:
    the blocks' epochs, then the head-only epochs and the head refit's (each prints one)."""
    spec = importlib.util.spec_from_file_location("_reproduce", REPO / "benchmarks" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.total_epochs(recipes.get("cifar10-ff_optimal")) == 50 + 5
    assert mod.total_epochs(recipes.get("fashion-mnist-cwcomp")) == 23 + 7
    scff = recipes.get("mnist-mlp-scff").settings
    assert mod.total_epochs(recipes.get("mnist-mlp-scff")) == scff["epochs"] + (scff.get("head_epochs") or scff["epochs"])
    probe = recipes.Recipe("t", "mlp", "mnist", "t", dict(method="scff", epochs=2, head_epochs=5))
    assert mod.total_epochs(probe) == 7 and mod.total_epochs(probe, epochs=1) == 6
    assert mod.total_epochs(recipes.get("mnist-mlp"), epochs=3) == 3
    # the count against what the train command prints, on a recipe given head-only and refit epochs
    recipe = recipes.Recipe("t", "mlp", "mnist", "t", dict(epochs=2, head_epochs=1, head_refit=2))
    assert cli.main(["train", "--epochs", "2", "--head-epochs", "1",
                     "--head-refit", "2", "--subset", "500", "--no-progress"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(printed) == mod.total_epochs(recipe) == 5


def test_reproduce_stopped_by_sigterm_to_itself_stops_its_child(tmp_path):
    """kill PID (SIGTERM to reproduce.py alone, not its process group, as a scheduler or timeout
    sends it) stops the training child too, instead of leaving it training with no one to write
    its result; the same command then resumes from the last checkpoint."""
    env = child_env()
    proc = subprocess.Popen(reproduce(tmp_path / "term"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=str(tmp_path), start_new_session=True)
    t0, line = time.time(), ""
    while "epoch   1" not in line and time.time() - t0 < 120:
        line = proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "run the same command to resume" in out
    deadline = time.time() + 10
    while True:                      # the child shares the group: none of it may be left running
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.time() < deadline, "the training child outlived reproduce.py"
        time.sleep(0.1)
    again = subprocess.run(reproduce(tmp_path / "term"), capture_output=True, text=True, timeout=300,
                           env=env, cwd=str(tmp_path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming after epoch" in again.stdout
    b = json.loads((tmp_path / "term" / "mnist-mlp.e8.s2500.sample.json").read_text())
    assert [e["epoch"] for e in b["epochs"]] == list(range(1, 9)) and len(b["sessions"]) == 2


def test_results_tables_are_generated_from_the_json():
    table = _script("results_table")
    assert table.main(["--check"]) == 0, "run python scripts/results_table.py"
    text = (REPO / "README.md").read_text()
    block = text[text.index(table.BEGIN):text.index(table.END)]
    md = (REPO / "benchmarks" / "results" / "reproduce.md").read_text()
    for r in recipes.RECIPES.values():
        if r.source is not None:
            run = json.loads((REPO / r.source).read_text())
            pair = recipes.format_result(run["test_error"])
            assert pair in block and pair in md, r.name
        assert f"`{recipes.command(r)}`" in md


def test_recipe_study_compares_variants_on_the_validation_split(tmp_path):
    """benchmarks/recipe_study.py: one train run per variant with the shared flags and
    --val-size, the summary best first by validation error, nothing rerun on a second call, earlier
    variants kept by a call naming others, and a variant without NAME= refused."""
    script = REPO / "benchmarks" / "recipe_study.py"
    args = [sys.executable, str(script), "s", "--base", "--layers 24 --epochs 1 --subset 600", "--variant", "a=",
            "--variant", "b=--lr 0.02 --seed 3", "--val-size", "300", "--out-dir", str(tmp_path)]
    res = subprocess.run(args, capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    b = json.loads((tmp_path / "s" / "b.json").read_text())["config"]
    assert b["lr"] == 0.02 and b["seed"] == 3 and b["val_size"] == 300 and b["layers"] == [784, 24]
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert {v["name"] for v in summary["variants"]} == {"a", "b"} and summary["val_size"] == 300
    means = [(v["val_one_pass"] + v["val_multi_pass"]) / 2 for v in summary["variants"]]
    assert means == sorted(means)
    again = subprocess.run(args, capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and "fflib train" not in again.stdout
    # a later call naming only a new variant keeps the earlier ones in the summary
    more = subprocess.run(args[:5] + ["--variant", "c=--seed 4", "--val-size", "300", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=600)
    assert more.returncode == 0, more.stderr[-2000:]
    rows = json.loads((tmp_path / "s" / "summary.json").read_text())["variants"]
    assert {v["name"] for v in rows} == {"a", "b", "c"} and all(v["base"] == args[4] for v in rows)
    means = [v["val_one_pass"] + v["val_multi_pass"] for v in rows]
    assert means == sorted(means)
    bad = subprocess.run([sys.executable, str(script), "s", "--variant", "nameless"], capture_output=True,
                         text=True, env=child_env(), cwd=tmp_path, timeout=60)
    assert bad.returncode == 2 and "NAME=FLAGS" in bad.stderr


def test_cli_recipe_study_ranks_label_free_runs_by_their_probe(tmp_path):
    """A study of label-free runs (--method scff) ranks them by the linear probe's validation
    error, the only validation error they have."""
    script = REPO / "benchmarks" / "recipe_study.py"
    args = [sys.executable, str(script), "u", "--base", "--method scff --layers 24 --epochs 1 --subset 600",
            "--variant", "a=", "--variant", "b=--head-epochs 3", "--val-size", "300", "--out-dir", str(tmp_path)]
    res = subprocess.run(args, capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "u" / "summary.json").read_text())
    rows = {v["name"]: v for v in summary["variants"]}
    for name, probe_epochs in (("a", 1), ("b", 3)):
        run = json.loads((tmp_path / "u" / f"{name}.json").read_text())
        assert run["config"]["probe_epochs"] == probe_epochs
        assert rows[name]["val_probe"] == run["epochs"][-1]["val_error"]
        assert rows[name]["val_one_pass"] is None and rows[name]["val_multi_pass"] is None
    probes = [v["val_probe"] for v in summary["variants"]]
    assert probes == sorted(probes) and "(probe)" in res.stdout


def test_zca_screen_whitens_its_fitting_data():
    """benchmarks/zca_screen.py's map: symmetric, and the fitting data's covariance after it is
    s / (s + eps) on the eigenvectors (the identity as eps -> 0, for full-rank data)."""
    import numpy as np
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("_zca_screen", REPO / "benchmarks" / "zca_screen.py")
        zca_screen = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(zca_screen)
    finally:
        sys.path[:] = [p for p in sys.path if p != str(REPO / "benchmarks")]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4000, 12)) @ rng.standard_normal((12, 12)) + 3.0).astype(np.float32)
    s, u = np.linalg.eigh(np.cov(x.astype(np.float64).T, bias=True))
    for eps in (1e-9, 0.5):
        mu, w = zca_screen.zca(x, eps)
        np.testing.assert_allclose(w, w.T, atol=1e-9)
        np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), atol=1e-9)
        z = (x - mu) @ w
        np.testing.assert_allclose(z.T @ z / len(z), (u * (s / (s + eps))) @ u.T, atol=1e-6)
