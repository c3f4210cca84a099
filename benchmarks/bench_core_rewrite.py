#!/usr/bin/env python
"""The block-based C core against the core before it, side by side in one run.

Each measurement runs in its own subprocess with one build's source tree first on sys.path
(``--old`` and ``--new`` are repository roots with a built ``fflib/_core*.so``), so the two
builds never share a process and one's memory never inflates the other's peak.  The builds
alternate config by config, the order reversed every round, and medians are reported:
training samples/s of fflib's fused train_step (after warm-up steps) and the peak RSS of
training (VmHWM after the imports and the data, minus the resident memory then).

    git worktree add /tmp/old-core <commit>; (cd /tmp/old-core && python setup.py build_ext --inplace)
    python benchmarks/bench_core_rewrite.py --old /tmp/old-core --new .

Writes <out-dir>/bench_core_rewrite_<threads>t.json and .md.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {
    # name: (model, batch, timed steps)
    "mlp_2000x4_b64": ("mlp4", 64, 60),
    "mlp_2000x4_b256": ("mlp4", 256, 24),
    "mlp_2000x4_b1024": ("mlp4", 1024, 8),
    "mnist_cnn_b64": ("cnn_mnist", 64, 16),
    "cwcomp_b64": ("cwcomp", 64, 8),
    "ff_tiny_b128": ("ff_tiny", 128, 12),
    "cifar10_cnn_b64": ("cnn_cifar10", 64, 3),
}


def worker(args):
    sys.path.insert(0, args.root)
    sys.path.insert(0, str(HERE))
    import numpy as np

    import fflib
    from benchutil import hwm_mb, reset_peak_rss, rss_mb
    from fflib import models

    assert Path(fflib.__file__).resolve().parents[1] == Path(args.root).resolve(), fflib.__file__
    fflib.set_num_threads(args.threads)
    model_name, batch, steps = CONFIGS[args.config]
    rng = np.random.default_rng(0)
    if model_name == "mlp4":
        model = fflib.FFModel(fflib.mlp([784, 2000, 2000, 2000, 2000]), 784, 10, seed=0)
        shape = (784,)
    elif model_name.startswith("cnn"):
        ds = model_name.split("_")[1]
        model = models.build("cnn", ds, seed=0)
        shape = (1, 28, 28) if ds == "mnist" else (3, 32, 32)
    else:
        ds = "mnist" if model_name == "cwcomp" else "cifar10"
        model = models.build(model_name, ds, seed=0)
        shape = (1, 28, 28) if ds == "mnist" else (3, 32, 32)
    fflib.Adam(model, lr=1e-3)
    n = batch * 4
    x = rng.random((n, int(np.prod(shape))), dtype=np.float32)
    y = rng.integers(0, 10, n)
    base = rss_mb()
    reset_peak_rss()
    head = model.has_head
    for s in range(2):
        model.train_step(x[s * batch % n:][:batch], y[s * batch % n:][:batch], train_head=head)
    times = []
    for s in range(steps):
        i = (s * batch) % n
        t0 = time.perf_counter()
        model.train_step(x[i:i + batch], y[i:i + batch], train_head=head)
        times.append(time.perf_counter() - t0)
    # the median step: a step the machine's other load slowed does not count
    print(json.dumps({"samples_per_s": batch / sorted(times)[len(times) // 2], "peak_mb": hwm_mb() - base}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", help="repository root of the build to compare against (required)")
    ap.add_argument("--new", default=str(HERE.parent))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.old:
        ap.error("--old is required")
    builds = {"old": str(Path(args.old).resolve()), "new": str(Path(args.new).resolve())}
    res = {c: {b: [] for b in builds} for c in args.configs.split(",")}
    for r in range(args.repeats):
        for c in res:
            order = list(builds) if r % 2 == 0 else list(builds)[::-1]
            for b in order:
                env = dict(os.environ, FFLIB_NUM_THREADS=str(args.threads))
                out = subprocess.run([sys.executable, __file__, "--worker", "--root", builds[b], "--config", c,
                                      "--threads", str(args.threads)], capture_output=True, text=True, env=env,
                                     cwd="/", timeout=1800)
                if out.returncode:
                    raise SystemExit(f"{c} on {b} failed:\n{out.stderr}")
                res[c][b].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(c, b, res[c][b][-1], flush=True)
    rows, table = [], []
    for c, per in res.items():
        med = {b: {k: statistics.median(m[k] for m in per[b]) for k in ("samples_per_s", "peak_mb")} for b in per}
        rows.append({"config": c, **{f"{b}_{k}": v for b in med for k, v in med[b].items()},
                     "speed_ratio": med["new"]["samples_per_s"] / med["old"]["samples_per_s"],
                     "memory_ratio": med["new"]["peak_mb"] / max(med["old"]["peak_mb"], 1e-9)})
        table.append(f"| {c} | {med['old']['samples_per_s']:.0f} | {med['new']['samples_per_s']:.0f} | "
                     f"{rows[-1]['speed_ratio']:.3f} | {med['old']['peak_mb']:.0f} | {med['new']['peak_mb']:.0f} | "
                     f"{rows[-1]['memory_ratio']:.3f} |")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"threads": args.threads, "repeats": args.repeats, "old": builds["old"], "new": builds["new"],
            "load_average": os.getloadavg()}
    stem = f"bench_core_rewrite_{args.threads}t"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = ["# Block-based core against the previous core (fflib train_step: the median step of each run, medians over runs)", "",
          f"{args.threads} threads, {args.repeats} alternating rounds; load average at the end "
          f"{meta['load_average'][0]:.1f}.", "",
          "| config | old samples/s | new samples/s | new/old | old peak MB | new peak MB | new/old |",
          "|---|---|---|---|---|---|---|", *table, ""]
    (out / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
