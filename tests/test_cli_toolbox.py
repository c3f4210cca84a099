"""The survey's toolbox on the command line: the DF loss's --margin, --method and --early-exit
reach the model and are refused where they do not apply (tiny in-process runs on the sample)."""
import json

import pytest

import fflib
from fflib import cli

TINY = ["--epochs", "1", "--layers", "48,32", "--threads", "1", "--no-progress", "--seed", "1", "--subset", "2000"]


def fails(capsys, *args):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", *TINY, *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_df_margin_reaches_the_model(tmp_path, capsys):
    out, save = tmp_path / "r.json", tmp_path / "m.npz"
    assert cli.main(["train", *TINY, "--loss", "df", "--margin", "2.5", "--out", str(out), "--save", str(save)]) == 0
    r, m = json.loads(out.read_text()), fflib.FFModel.load(save)
    assert m.config["loss"] == "df" and m.config["margin"] == 2.5
    assert r["config"]["loss"] == "df" and r["config"]["margin"] == 2.5
    assert "does not apply to --loss symba" in fails(capsys, "--margin", "2")
    assert "--margin" in fails(capsys, "--loss", "df", "--margin", "-1")


def test_label_free_methods_refuse_what_they_do_not_use(capsys):
    assert "--early-exit does not apply to --method scff" in fails(capsys, "--method", "scff", "--early-exit",
                                                                   "--val-size", "100")
    assert "--margin does not apply to --method hybrid" in fails(capsys, "--method", "hybrid", "--margin", "1")


def test_help_documents_the_toolbox(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--margin", "--method {ff,scff,hybrid,uff}", "--early-exit", "--early-exit-drop", "distance-forward",
                 "self-contrastive pairs", "hybrid images"):
        assert flag in text, flag
