"""Choose the margin of ``loss="df-cwc"`` (Distance-Forward's N-pair margin loss on CwComp's
channel-group goodness) for FF_small on CIFAR-10, on a validation split, never the test set.

Each run is ``python -m fflib train`` on the first --subset training images with the last 5,000
training images held out for validation (``--val-size 5000``), the light recipe's rates and
augmentation with its schedule compressed to --epochs; margin 0 is the CwC loss itself (the
baseline).  A run whose JSON exists is skipped, so the study resumes where it stopped:

    python benchmarks/df_cwc_margin.py                       # margins 0 0.5 1 2, 10,000 images, 8 epochs
    python benchmarks/df_cwc_margin.py --margins 0 1 --subset 2000 --epochs 2

Writes benchmarks/results/df_cwc/<model>_m<margin>_n<subset>_e<epochs>.json (the train command's
JSON: config, per-epoch history with validation error; through benchmarks/recipe_study.py, which
also writes summary.json) and prints a table of the final validation errors.
"""
import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from recipe_study import run  # noqa: E402


def run_name(model, margin, subset, epochs):
    return f"{model}_m{margin:g}_n{subset}_e{epochs}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ff_small")
    p.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    p.add_argument("--subset", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--milestones", type=int, nargs="*", default=None,
                   help="default: at 5/8 and 7/8 of the epochs (the light recipe's 25/35 of 50, compressed)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None, help="CIFAR-10's directory (default: the train command's search)")
    p.add_argument("--out-dir", default=str(HERE / "results" / "df_cwc"))
    a = p.parse_args(argv)
    milestones = a.milestones if a.milestones is not None else sorted({max(1, a.epochs * 5 // 8),
                                                                      max(1, a.epochs * 7 // 8)})
    base = ["--dataset", "cifar10", "--model", a.model, "--subset", str(a.subset), "--epochs", str(a.epochs),
            "--milestones", ",".join(map(str, milestones))] + (["--data-dir", a.data_dir] if a.data_dir else [])
    variants = [(run_name(a.model, m, a.subset, a.epochs),
                 ["--loss", "cwc"] if m == 0 else ["--loss", "df-cwc", "--margin", str(m)]) for m in a.margins]
    out = Path(a.out_dir)
    rows = {r["name"]: r for r in run(out.name, base, variants, 5000, a.threads, out.parent)}
    print(f"{a.model}, {a.subset} training images, {a.epochs} epochs, validation error % (one-pass / multi-pass):")
    for m, (name, _) in zip(a.margins, variants):
        r = rows[name]
        print(f"  margin {m:g}{' (cwc)' if m == 0 else ''}: {r['val_one_pass']:.2f} / {r['val_multi_pass']:.2f}   "
              f"{r['train_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
