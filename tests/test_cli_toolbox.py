"""The survey's toolbox on the command line: the DF loss's --margin, --method and --early-exit
reach the model and are refused where they do not apply (tiny in-process runs on the sample)."""
import json

import pytest

import fflib
from fflib import cli

from test_cli_flags import TINY as FLAGS_TINY, fails as flags_fails

TINY = FLAGS_TINY + ["--subset", "2000"]


def fails(capsys, *args):
    """The exit-2 message of a tiny run (test_cli_flags's) on 2,000 sample images."""
    return flags_fails(capsys, "--subset", "2000", *args)


def test_df_margin_reaches_the_model(tmp_path, capsys):
    out, save = tmp_path / "r.json", tmp_path / "m.npz"
    assert cli.main(["train", *TINY, "--loss", "df", "--margin", "2.5", "--out", str(out), "--save", str(save)]) == 0
    r, m = json.loads(out.read_text()), fflib.FFModel.load(save)
    assert m.config["loss"] == "df" and m.config["margin"] == 2.5
    assert r["config"]["loss"] == "df" and r["config"]["margin"] == 2.5
    assert "does not apply to --loss symba" in fails(capsys, "--margin", "2")
    assert "--margin" in fails(capsys, "--loss", "df", "--margin", "-1")


def test_df_cwc_on_a_channel_group_model(tmp_path, capsys):
    """--loss df-cwc (DF's margin loss on channel-group goodness) on CwComp: the margin reaches
    the model, no label channel is added; an MLP (no channel groups) is refused."""
    out, save = tmp_path / "r.json", tmp_path / "m.npz"
    assert cli.main(["train", "--model", "cwcomp", "--loss", "df-cwc", "--margin", "0.5", "--subset", "300",
                     "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(out), "--save", str(save)]) == 0
    r, m = json.loads(out.read_text()), fflib.FFModel.load(save)
    assert m.config["loss"] == "df-cwc" and m.config["margin"] == 0.5 and m.label_encoding == "none"
    assert r["config"]["loss"] == "df-cwc"
    assert "--loss df-cwc needs a convolutional model" in fails(capsys, "--loss", "df-cwc")


def test_label_free_methods_refuse_what_they_do_not_use(capsys):
    assert "--early-exit does not apply to --method scff" in fails(capsys, "--method", "scff", "--early-exit",
                                                                   "--val-size", "100")
    assert "--margin does not apply to --method hybrid" in fails(capsys, "--method", "hybrid", "--margin", "1")


def test_help_documents_the_toolbox(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    # argparse wraps lines at hyphens too ("self-" / "contrastive"): join such breaks back
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    for flag in ("--margin", "--method {ff,scff,hybrid,uff}", "--early-exit", "--early-exit-drop", "distance-forward",
                 "self-contrastive pairs", "hybrid images"):
        assert flag in text, flag


def test_label_free_recipe_runs_and_resumes(tmp_path, capsys):
    """--recipe mnist-mlp-scff (method scff) on the sample with a checkpoint: the run's JSON names
    the recipe and its method; run again with --resume it continues from the finished checkpoint
    (nothing left to train) and reports the same probe error."""
    args = ["train", "--recipe", "mnist-mlp-scff", "--dataset", "sample", "--layers", "48,32", "--epochs", "1",
            "--subset", "1000", "--threads", "1", "--no-progress", "--checkpoint", str(tmp_path / "ck")]
    assert cli.main(args + ["--out", str(tmp_path / "a.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["config"]["method"] == "scff" and a["config"]["recipe"] == "mnist-mlp-scff"
    assert a["config"]["subset"] == 1000 and a["config"]["first_scale"] == 2.0
    assert [e["phase"] for e in a["epochs"]] == ["scff", "probe"]
    assert cli.main(args + ["--resume", "--out", str(tmp_path / "b.json")]) == 0
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["test_error"] == a["test_error"] and b["epochs"] == a["epochs"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(args + ["--method", "hybrid"])
    assert "contradicts the recipe mnist-mlp-scff" in capsys.readouterr().err
