"""The quick-start notebook runs in a Jupyter kernel (nbclient, on the embedded sample, 1 epoch)
and produces its figures: every plotting cell has a PNG output, and plot_result writes its PNGs."""
import base64
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_quickstart_notebook_runs_and_draws(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    monkeypatch.setenv("FFLIB_NOTEBOOK_EPOCHS", "1")
    monkeypatch.delenv("FFLIB_DATA", raising=False)
    # the kernel imports the fflib these tests import (an in-place build of this tree, or the installed one)
    import fflib
    where = str(Path(fflib.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([where] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    plotting = [c for c in code if "fflib.plot." in c.source and "plot_result" not in c.source]
    assert len(plotting) == 4, [c.source for c in plotting]
    for cell in plotting:
        pngs = [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(pngs) == 1, f"no figure from {cell.source!r}: {cell.outputs}"
        assert base64.b64decode(pngs[0]).startswith(PNG_MAGIC)
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors

    saved = json.loads((tmp_path / "quickstart_results.json").read_text())
    assert saved["test"]["multi_pass"] < 50.0 and len(saved["history"]["epochs"]) == 1
    assert (tmp_path / "quickstart_model.npz").exists()
    for name in ("loss_curves", "layer_accuracy", "inference", "goodness"):
        png = tmp_path / "quickstart_plots" / f"{name}.png"
        assert png.read_bytes().startswith(PNG_MAGIC), png


def _cli_result():
    """The shape of a `python -m fflib train --out` result (two blocks, two epochs, validation)."""
    return {"config": {"dataset": "sample"},
            "test_error": {"one_pass": 9.5, "multi_pass": 8.25},
            "train_error": {"one_pass": 7.0, "multi_pass": 6.5},
            "block_accuracy_test": [0.88, 0.91],
            "epochs": [{"epoch": 1, "block_loss": [0.7, 0.8], "head_loss": 1.2, "lr": 3e-3, "seconds": 1.0,
                        "val_error": {"one_pass": 12.0, "multi_pass": 10.0}},
                       {"epoch": 2, "block_loss": [0.5, 0.6], "head_loss": 0.9, "lr": 1e-3, "seconds": 1.0,
                        "val_error": {"one_pass": 10.0, "multi_pass": 9.0}}]}


def test_plot_command_writes_pngs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import argparse
    from fflib.plot import add_plot_parser, run_plot
    res = tmp_path / "result.json"
    res.write_text(json.dumps(_cli_result()))
    parser = argparse.ArgumentParser()
    add_plot_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "new" / "dir"                      # created by the command
    assert run_plot(parser.parse_args(["plot", str(res), "--out", str(out)])) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["inference.png", "layer_accuracy.png", "loss_curves.png"]
    for p in out.iterdir():
        assert p.read_bytes().startswith(PNG_MAGIC)
    assert capsys.readouterr().out.split() == [str(out / n) for n in ("loss_curves.png", "layer_accuracy.png",
                                                                        "inference.png")]
    # bad inputs: one line, exit status 2
    assert run_plot(parser.parse_args(["plot", str(tmp_path / "missing.json")])) == 2
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert run_plot(parser.parse_args(["plot", str(tmp_path / "bad.json")])) == 2
    (tmp_path / "empty.json").write_text("{}")
    assert run_plot(parser.parse_args(["plot", str(tmp_path / "empty.json"), "--out", str(tmp_path)])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("python -m fflib plot: error: ") for e in err), err


def test_plot_functions_check_their_inputs(tmp_path):
    pytest.importorskip("matplotlib")
    import fflib.plot as fp
    from matplotlib.figure import Figure
    r = _cli_result()
    fig = fp.loss_curves(r, path=tmp_path / "l.png")
    assert isinstance(fig, Figure) and (tmp_path / "l.png").exists()
    assert len(fig.axes[0].lines) == 3                  # two blocks and the head
    # a head-only epoch (fit's "active" mask all 0, or a loss of exactly 0 in an older result
    # without "active") has no block points; the head's curve goes on
    for head_only in ({"active": [0, 0]}, {}):
        r2 = _cli_result()
        r2["epochs"].append(dict({"epoch": 3, "block_loss": [0.0, 0.0], "head_loss": 0.5, "lr": 1e-4,
                                  "seconds": 1.0}, **head_only))
        r2["epochs"][1]["active"] = [0, 1]               # block 1 frozen in epoch 2
        lines = fp.loss_curves(r2).axes[0].lines
        assert [list(ln.get_xdata()) for ln in lines] == [[1], [1, 2], [1, 2, 3]]
    assert isinstance(fp.layer_accuracy({"block_accuracy": [0.5], "multi_pass": 40.0}), Figure)
    with pytest.raises(ValueError, match="history"):
        fp.loss_curves({"foo": 1})
    with pytest.raises(ValueError, match="no epochs"):
        fp.loss_curves([])
    with pytest.raises(TypeError, match="result must be a dict"):
        fp.layer_accuracy([0.5])
    with pytest.raises(ValueError, match="block_accuracy"):
        fp.layer_accuracy({"multi_pass": 3.0})
    with pytest.raises(ValueError, match="neither"):
        fp.inference_comparison({"x": 1})
    with pytest.raises(FileNotFoundError, match="path"):
        fp.loss_curves(r, path=tmp_path / "missing" / "l.png")


def test_layer_curves_from_a_result_and_from_fit_history(tmp_path):
    """Each layer's validation accuracy per epoch: from a train --out result's
    val_block_accuracy, from fit()'s history (evaluate's dict as "val"), and written by
    plot_result only when the run had a validation split."""
    pytest.importorskip("matplotlib")
    import fflib.plot as fp
    r = _cli_result()
    assert fp.plot_result(r, tmp_path) == [str(tmp_path / n) for n in ("loss_curves.png", "layer_accuracy.png",
                                                                         "inference.png")]
    with pytest.raises(ValueError, match="no per-layer validation accuracy"):
        fp.layer_curves(r)
    for e, acc in zip(r["epochs"], ([0.5, 0.6], [0.7, 0.9])):
        e["val_block_accuracy"] = acc
    lines = fp.layer_curves(r, path=tmp_path / "c.png").axes[0].lines
    assert [list(ln.get_ydata()) for ln in lines] == [[50.0, 70.0], [60.0, 90.0]]
    assert (tmp_path / "c.png").read_bytes().startswith(PNG_MAGIC)
    assert str(tmp_path / "layer_curves.png") in fp.plot_result(r, tmp_path)
    hist = {"epochs": [{"epoch": 1, "block_loss": [0.7], "val": {"multi_pass": 9.0, "block_accuracy": [0.25]}},
                       {"epoch": 2, "block_loss": [0.5]}]}        # an epoch without validation: no point
    lines = fp.layer_curves(hist).axes[0].lines
    assert [list(ln.get_xdata()) for ln in lines] == [[1]] and list(lines[0].get_ydata()) == [25.0]


def test_against_pytorch_notebook_runs_and_draws(tmp_path, monkeypatch):
    """notebooks/against_pytorch.ipynb: fflib and its PyTorch twin on the same networks (1 epoch
    on 2,000 sample images here), with a figure of time, memory and error."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    nb = nbformat.read(str(ROOT / "notebooks" / "against_pytorch.ipynb"), as_version=4)
    monkeypatch.setenv("FFLIB_NOTEBOOK_EPOCHS", "1")
    pngs = _execute(nb, tmp_path, monkeypatch)
    assert len(pngs) == 1 and base64.b64decode(pngs[0]).startswith(PNG_MAGIC)
    saved = json.loads((tmp_path / "against_pytorch_results.json").read_text())
    for name, r in saved["results"].items():
        # the same training: the two sides' accuracies agree, and fflib learned something
        assert abs(r["fflib"]["one_pass"] - r["torch"]["one_pass"]) <= 0.01, name
        assert r["fflib"]["one_pass"] > 0.5, name


def _execute(nb, tmp_path, monkeypatch):
    """Run a notebook against the fflib under test and return its PNG figures."""
    import fflib
    nbclient = pytest.importorskip("nbclient")
    where = str(Path(fflib.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([where] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    pngs = [o["data"]["image/png"] for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    return pngs


def test_fourier_labels_notebook_runs_and_draws(tmp_path, monkeypatch):
    """notebooks/fourier_labels.ipynb: why the survey CNN's first block stays at chance with one-hot
    and plane-wave labels, and fitted per-class Fourier modes that train it (energies, first-order
    class evidence, block 1 at initialisation and after 2 epochs recomputed; the whole CNN's curves
    from benchmarks/results/fourier_labels.json)."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(str(ROOT / "notebooks" / "fourier_labels.ipynb"), as_version=4)
    monkeypatch.delenv("FFLIB_NOTEBOOK_RECOMPUTE", raising=False)
    monkeypatch.setenv("FFLIB_REPO", str(ROOT))      # its cached benchmark results (fflib may be installed)
    pngs = _execute(nb, tmp_path, monkeypatch)
    assert len(pngs) == 5 and all(base64.b64decode(p).startswith(PNG_MAGIC) for p in pngs)
    r = json.loads((tmp_path / "fourier_labels_results.json").read_text())
    # the default waves carry no first-order class evidence, the fitted modes do
    assert r["template_accuracy"]["waves (default, amplitude 1)"] < 0.2 < r["template_accuracy"]["fitted modes, 0.1"]
    # the first LenNorm turns it around at initialisation; normalising first keeps it
    assert r["block1_accuracy_at_init"]["fitted 0.1, LenNorm(x + l)"] < 0.1
    assert r["block1_accuracy_at_init"]["fitted 1.0, LenNorm(x) + l"] > 0.4
    t = r["block1_training"]
    assert t["one-hot"]["accuracy"][-1] < 0.2 and t["waves (default, amplitude 1)"]["accuracy"][-1] < 0.2
    assert t["fitted 0.1, LenNorm(x + l)"]["accuracy"][-1] > 0.35
    assert t["fitted 1.0, LenNorm(x) + l"]["accuracy"][-1] > 0.4


def test_losses_notebook_runs_and_draws(tmp_path, monkeypatch):
    """notebooks/losses.ipynb: FF, SymBa, DF, CwC and df-cwc on one MLP and the embedded sample (2 epochs
    here), with its three figures (error per epoch, per-layer accuracy, goodness histograms)."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(str(ROOT / "notebooks" / "losses.ipynb"), as_version=4)
    monkeypatch.setenv("FFLIB_NOTEBOOK_EPOCHS", "2")
    pngs = _execute(nb, tmp_path, monkeypatch)
    assert len(pngs) == 2 and all(base64.b64decode(p).startswith(PNG_MAGIC) for p in pngs)
    saved = json.loads((tmp_path / "losses_results.json").read_text())
    assert saved["epochs"] == 2 and set(saved["results"]) == {"ff", "symba", "df", "cwc", "df-cwc"}
    for name, r in saved["results"].items():
        assert len(r["test_error_per_epoch"]) == 2 and len(r["block_accuracy"]) == 2, name
        assert r["multi_pass"] < 20.0, name                  # measured 6.0 (df) to 11.9 (symba)
    # measured: DF 6.00 %, FF 10.30 % multi-pass after 2 epochs
    assert saved["results"]["df"]["multi_pass"] < saved["results"]["ff"]["multi_pass"]


def test_cifar10_cnn_study_notebook_runs_and_draws(tmp_path, monkeypatch):
    """notebooks/cifar10_cnn_study.ipynb: the CIFAR-10 CNN study's per-block accuracy and loss
    curves per variant, from benchmarks/results/cifar10_cnn_study.json (no training here)."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(str(ROOT / "notebooks" / "cifar10_cnn_study.ipynb"), as_version=4)
    monkeypatch.setenv("FFLIB_REPO", str(ROOT))      # its cached study results (fflib may be installed)
    pngs = _execute(nb, tmp_path, monkeypatch)
    assert len(pngs) == 4 and all(base64.b64decode(p).startswith(PNG_MAGIC) for p in pngs)
    rows = {r["run"]: r for r in json.loads((tmp_path / "cifar10_cnn_study_summary.json").read_text())}
    # the full network trained by the recipe: every block's validation curve (10 epochs), the deeper
    # blocks level with the first or ahead of it after the last epoch, both test errors under 42
    full = json.loads((tmp_path / "cifar10_cnn_full_run.json").read_text())
    assert full["epochs"] == 10 and len(full["val_block_accuracy"]) == 4
    assert min(full["val_block_accuracy"][1:]) > full["val_block_accuracy"][0]
    assert max(full["test_error"].values()) < 42
    study = json.loads((ROOT / "benchmarks" / "results" / "cifar10_cnn_study.json").read_text())
    assert set(rows) == set(study)
    # the finding the notebook states: with LenNorm between blocks every deeper block is worse
    # than block 1; with BatchNorm2d instead every deeper block is better, and both errors fall
    base, bn = rows["baseline"], rows["batchnorm_only"]
    assert max(base["block_accuracy"][1:]) < base["block_accuracy"][0]
    assert min(bn["block_accuracy"][1:]) > bn["block_accuracy"][0]
    assert bn["multi_pass"] < base["multi_pass"] - 5 and bn["one_pass"] < base["one_pass"] - 10
