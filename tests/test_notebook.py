"""The quick-start notebook runs as written (its code cells, on the embedded sample, 1 epoch)."""
import json
import os
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [("".join(c["source"])) for c in cells if c["cell_type"] == "code"]
    assert len(code) >= 4
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FFLIB_NOTEBOOK_EPOCHS", "1")
    monkeypatch.delenv("FFLIB_DATA", raising=False)
    env = {}
    for src in code:
        exec(compile(src, str(NOTEBOOK), "exec"), env)
    assert (tmp_path / "quickstart_results.json").exists()
    assert env["res"]["multi_pass"] < 50.0
    assert os.path.exists(tmp_path / "quickstart_model.npz")
