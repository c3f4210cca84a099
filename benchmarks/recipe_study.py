"""Compare variants of a training run on a validation split, never on the test set: each variant
is ``python -m fflib train`` with the study's base flags plus its own, holding out the last
--val-size training images (``--val-size``) and reading the last epoch's validation error.

    python benchmarks/recipe_study.py mnist-mlp --base "--recipe mnist-mlp" \\
        --variant base= --variant lr5="--lr 0.005 --head-lr 0.005" --variant crop1="--augment crop1"

Each run's JSON (the train command's: config, per-epoch history with validation error, and the
test error, which a study must not choose by) goes to benchmarks/results/recipe_study/STUDY/NAME.json;
a variant whose JSON exists is not rerun, so a study resumes where it stopped.  The table printed
at the end (and written as STUDY/summary.json) lists the variants by mean validation error of
one-pass and multi-pass (a label-free run, ``--method scff``: its linear probe's).  Variants run by
an earlier call of the same study and not named again stay in the summary (each row keeps the base
flags it ran with), so a study grows one call at a time.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "recipe_study"


def run(study, base, variants, val_size=5000, threads=1, out_dir=OUT):
    """Run every (name, flags) of ``variants`` not yet run; return the summary rows, best first:
    name, base flags, flags, final validation error (one-pass, multi-pass, probe), training
    seconds; with them the rows of earlier calls' variants not named here."""
    out = Path(out_dir) / study
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    names = {name for name, _ in variants}
    earlier = []
    if (out / "summary.json").exists():   # variants of earlier calls, kept unless rerun here
        old = json.loads((out / "summary.json").read_text())
        earlier = [dict(r, base=r.get("base", old.get("base", ""))) for r in old.get("variants", [])
                   if r.get("name") not in names and (out / f"{r.get('name')}.json").exists()]
    for name, flags in variants:
        path = out / f"{name}.json"
        if not path.exists():
            cmd = [sys.executable, "-m", "fflib", "train", *base, *flags, "--val-size", str(val_size),
                   "--threads", str(threads), "--no-progress", "--out", str(path)]
            print(" ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True, env=dict(os.environ))
        res = json.loads(path.read_text())
        val = res["epochs"][-1]["val_error"]
        if not isinstance(val, dict):   # a label-free run (--method scff, ...): its linear probe's error
            val = {"probe": val}
        rows.append({"name": name, "base": " ".join(base), "flags": " ".join(flags),
                     "val_one_pass": val.get("one_pass"), "val_multi_pass": val.get("multi_pass"),
                     "val_probe": val.get("probe"), "train_seconds": res["train_seconds"]})
    rows += earlier
    rows.sort(key=_mean)
    (out / "summary.json").write_text(json.dumps({"study": study, "base": " ".join(base), "val_size": val_size,
                                                  "variants": rows}, indent=1) + "\n")
    return rows


def _mean(r):
    vals = [v for v in (r["val_one_pass"], r["val_multi_pass"], r.get("val_probe")) if v is not None]
    return sum(vals) / len(vals)


def print_table(study, rows):
    print(f"{study}: final validation error % (one-pass / multi-pass, or the linear probe's), best first")
    for r in rows:
        if r.get("val_probe") is not None:
            err = f"{r['val_probe']:.2f} (probe)"
        else:
            one = "-" if r["val_one_pass"] is None else f"{r['val_one_pass']:.2f}"
            err = f"{one} / {r['val_multi_pass']:.2f}"
        print(f"  {r['name']:16s} {err}   {r['train_seconds']:.0f} s   {r['flags']}")


def _variant(text):
    name, sep, flags = text.partition("=")
    if not sep or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"a variant is NAME=FLAGS (FLAGS may be empty), got {text!r}")
    return name, shlex.split(flags)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", help="the study's name (its directory under --out-dir)")
    p.add_argument("--base", default="", help="the train flags every variant shares, e.g. \"--recipe mnist-mlp\"")
    p.add_argument("--variant", type=_variant, action="append", required=True, metavar="NAME=FLAGS")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default=str(OUT))
    a = p.parse_args(argv)
    rows = run(a.study, shlex.split(a.base), a.variant, a.val_size, a.threads, a.out_dir)
    print_table(a.study, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
