#!/usr/bin/env python
"""Issue 11's benchmark: fflib's sequential and pipelined training against PyTorch and NumPy,
measured side by side in one run.

  a. 784-2000-2000-2000-2000 MLP, FF loss, Adam, no head, batch 64 / 256 / 1024, 2 threads:
     fflib sequential (``train_step``), fflib pipelined (``pipeline_step``: block k on minibatch
     t - k, the blocks on fflib's threads at once), PyTorch autograd (``fflib.torch.TorchFF``,
     what a PyTorch user writes) and PyTorch with the closed-form local gradient and fused Adam;
     samples/s, fflib's best against each, and the machine's limit: the OpenBLAS sgemm rate at the
     step's GEMM shapes (``fflib._core.sgemm``, split over 2 threads, and 2 x the 1-thread rate:
     what two blocks' GEMMs at once can reach) with the fraction of it each run reaches; fflib's
     time per kind of work (each kernel timed alone at the step's shapes).
  b. 784-500-100 at batch 100, 1 and 2 threads: one MNIST epoch of fflib against a plain NumPy
     float32 implementation of the same step (``NumpyFF`` below, checked against fflib's step), and
     multi-pass inference (every label, every block, 10,000 test images) against PyTorch.
  c. FF_tiny (the zoo's CwC CNN, CIFAR-10) at batch 128: pipelined against sequential, same threads.
  d. Distributed (2 ranks x 1 thread against 1 rank x 2 threads, bytes per step, a modelled 1..16
     node table): measured by the distributed benchmark, which writes
     ``results/bench_distributed.json``; this script includes that file when it exists
     (:func:`distributed_section`).

Every measurement runs in its own subprocess (this script with ``--worker``), so no framework's
thread pool or memory touches another's.  The machine is shared: variants alternate within each
round, the order reversed every other round, each run reports its median step (a step slowed by
another job does not count) and the tables give the median over rounds.

    python benchmarks/bench_parallel.py                 # everything, ~10 minutes on 2 cores
    python benchmarks/bench_parallel.py --parts a --repeats 1

Writes <out-dir>/bench_parallel.json and bench_parallel.md.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

K = 10
BIG = [784, 2000, 2000, 2000, 2000]
SMALL = [784, 500, 100]
MLP_VARIANTS = ("fflib_seq", "fflib_pipe", "torch", "torch_manual")
DESCRIPTION = {
    "fflib_seq": "fflib, sequential blocks (train_step; each GEMM split over the threads)",
    "fflib_pipe": "fflib, pipelined blocks (pipeline_step; each block on one thread, the blocks at once)",
    "torch": "PyTorch 2 threads, autograd + torch.optim.Adam (fflib.torch.TorchFF)",
    "torch_manual": "PyTorch 2 threads, closed-form local gradients + fused Adam (TorchFF grad='manual')",
}
TARGETS = {64: 2.5, 256: 2.0, 1024: 1.2}     # issue 11: best fflib over PyTorch (autograd)
EPOCH_TARGET, INFER_TARGET = 5.0, 4.0


# ---------------------------------------------------------------------------- data

def mnist(data_dir, train=True):
    """MNIST as float32 (N, 784) and int64 labels; the shipped 10k sample if the files are missing."""
    import fflib
    try:
        x, y = fflib.datasets.load_mnist(root=data_dir, train=train)
    except (OSError, ValueError, RuntimeError):
        x, y = fflib.datasets.load_sample(train=train)
    return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)


def cifar10(data_dir, n):
    import fflib
    try:
        x, y = fflib.datasets.load_cifar10(root=data_dir, train=True)
        x, y = x[:n], y[:n]
    except (OSError, ValueError, RuntimeError):   # same shapes, random pixels: the speed is the same
        rng = np.random.default_rng(0)
        x, y = rng.random((n, 3, 32, 32), dtype=np.float32), rng.integers(0, K, n)
    return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)


def wrong_labels(y, rng):
    """One negative label per sample, uniform over the K - 1 wrong classes."""
    return ((y + rng.integers(1, K, len(y))) % K).astype(np.int64)


# ---------------------------------------------------------------------------- the NumPy twin

class NumpyFF:
    """A plain NumPy float32 FF MLP step, as a NumPy user would write it: every block is
    LenNorm (L2) -> Linear -> ReLU with the FF loss on the sum goodness, the input's first K
    values overwritten by the one-hot label (positive rows, then negative rows), the closed-form
    local gradient (dL/dz = 2 a dL/dg) and Adam, the same step as ``FFModel.train_step`` without
    a head.  The weights start as a copy of ``model``'s."""

    def __init__(self, model, lr, theta=2.0, eps=1e-4, b1=0.9, b2=0.999, adam_eps=1e-8):
        from fflib.nn import Linear
        lin = [layer for layer in model.layers if isinstance(layer, Linear)]
        self.W = [np.array(layer.weight, dtype=np.float32) for layer in lin]
        self.b = [np.array(layer.bias, dtype=np.float32) for layer in lin]
        self.m = [np.zeros_like(p) for p in self.W + self.b]
        self.v = [np.zeros_like(p) for p in self.W + self.b]
        self.lr, self.theta, self.eps, self.b1, self.b2, self.adam_eps = lr, theta, eps, b1, b2, adam_eps
        self.t = 0

    def _adam(self, i, p, g):
        m, v = self.m[i], self.v[i]
        m *= self.b1
        m += (1 - self.b1) * g
        v *= self.b2
        v += (1 - self.b2) * (g * g)
        step = np.float32(self.lr / (1 - self.b1 ** self.t))
        sbc2 = np.float32(np.sqrt(1 - self.b2 ** self.t))
        p -= step * m / (np.sqrt(v) / sbc2 + np.float32(self.adam_eps))

    def step(self, x, y, neg):
        B = len(y)
        h = np.concatenate([x, x])
        h[:, :K] = 0.0
        h[np.arange(B), y] = 1.0
        h[B + np.arange(B), neg] = 1.0
        self.t += 1
        nW = len(self.W)
        losses = np.empty(nW, np.float32)
        for i, (W, b) in enumerate(zip(self.W, self.b)):
            h = h * (1.0 / (np.sqrt(np.einsum("ij,ij->i", h, h)) + np.float32(self.eps)))[:, None]
            a = h @ W.T
            a += b
            np.maximum(a, 0.0, out=a)
            g = np.einsum("ij,ij->i", a, a)
            zp, zn = self.theta - g[:B], g[B:] - self.theta
            losses[i] = np.mean(np.logaddexp(0.0, zp) + np.logaddexp(0.0, zn))
            dg = np.concatenate([-1.0 / (1.0 + np.exp(-zp)), 1.0 / (1.0 + np.exp(-zn))]).astype(np.float32) / B
            dz = a * (2.0 * dg)[:, None]           # relu' is implied: a == 0 where z <= 0
            gW, gb = dz.T @ h, dz.sum(axis=0)
            self._adam(i, W, gW)                   # the output a was computed before the update
            self._adam(nW + i, b, gb)
            h = a
        return losses


def numpy_twin_check(sizes=SMALL, B=32, steps=3, seed=0):
    """Max relative difference of NumpyFF's losses and weights from fflib's after ``steps``
    identical steps (the same initial weights, minibatches and negative labels)."""
    import fflib
    rng = np.random.default_rng(seed)
    model = fflib.FFModel(fflib.mlp(sizes), sizes[0], K, head_blocks=None, seed=seed)
    fflib.Adam(model, lr=1e-3)
    twin = NumpyFF(model, lr=1e-3)
    loss_d = 0.0
    for _ in range(steps):
        x = rng.random((B, sizes[0]), dtype=np.float32)
        y = rng.integers(0, K, B).astype(np.int64)
        neg = wrong_labels(y, rng)
        lf = model.train_step(x, y, neg)[:-1]
        ln = twin.step(x, y, neg)
        loss_d = max(loss_d, float(np.max(np.abs(lf - ln) / np.maximum(np.abs(lf), 1e-6))))
    from fflib.nn import Linear
    lin = [layer for layer in model.layers if isinstance(layer, Linear)]
    w_d = max(float(np.max(np.abs(np.asarray(layer.weight) - W)) / np.max(np.abs(W)))
              for layer, W in zip(lin, twin.W))
    return {"loss_rel_diff": loss_d, "weight_rel_diff": w_d, "steps": steps, "batch": B}


# ---------------------------------------------------------------------------- worker: one measurement

def _time_steps(model, batch, B, pipelined, train_head, spec):
    """Per-step seconds of fflib training on minibatches batch(i): pipelined (the pipeline filled
    first) or sequential, after ``spec['warmup']`` steps, for about ``spec['seconds']``."""
    if pipelined:
        model.pipeline_begin(B, train_head=train_head)
        fill = model.num_blocks - 1 + spec["warmup"]      # fill the pipeline, then warm up
        for i in range(fill):
            model.pipeline_step(*batch(i))
        times = _timed(lambda i: model.pipeline_step(*batch(i + fill)), spec["seconds"])
        model.pipeline_flush()
        model.pipeline_end()
        return times
    for i in range(spec["warmup"]):
        model.train_step(*batch(i), train_head=train_head)
    return _timed(lambda i: model.train_step(*batch(i + spec["warmup"]), train_head=train_head), spec["seconds"])


def _timed(fn, seconds, min_steps=3, max_steps=10_000):
    """Call fn(i) until ``seconds`` have passed (at least ``min_steps`` times); per-call seconds."""
    times, t_end = [], time.perf_counter() + seconds
    i = 0
    while (len(times) < min_steps or time.perf_counter() < t_end) and len(times) < max_steps:
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
        i += 1
    return times


def _summary(times, batch):
    med = statistics.median(times)
    return {"step_s": med, "step_s_min": min(times), "steps": len(times), "samples_per_s": batch / med}


def _fflib_mlp(sizes, seed=0, lr=1e-3):
    import fflib
    model = fflib.FFModel(fflib.mlp(sizes), sizes[0], K, head_blocks=None, seed=seed)
    fflib.Adam(model, lr=lr)
    return model


def worker_mlp(spec):
    """Training throughput of one variant on the MLP ``spec['sizes']`` at batch ``spec['batch']``."""
    import fflib
    threads, B = spec["threads"], spec["batch"]
    variant = spec.get("mode", spec["variant"])
    fflib.set_num_threads(threads)
    x, y = mnist(spec["data_dir"])
    n = (min(len(y), max(8 * B, 4096)) // B) * B
    rng = np.random.default_rng(0)
    x, y = np.ascontiguousarray(x[:n]), np.ascontiguousarray(y[:n])
    neg = wrong_labels(y, rng)
    nb = n // B

    def batch(i):
        s = (i % nb) * B
        return x[s:s + B], y[s:s + B], neg[s:s + B]

    out = {}
    if variant.startswith("fflib"):
        model = _fflib_mlp(spec["sizes"])
        times = _time_steps(model, batch, B, variant == "fflib_pipe", False, spec)
    else:
        import torch
        from fflib.torch import TorchFF
        torch.set_num_threads(threads)
        opt = {"grad": "manual", "fused": True} if variant == "torch_manual" else {}
        twin = TorchFF(_fflib_mlp(spec["sizes"]), optimizer="adam", lr=1e-3, **opt)
        for i in range(spec["warmup"]):
            twin.step(*batch(i))
        times = _timed(lambda i: twin.step(*batch(i + spec["warmup"])), spec["seconds"])
        out["torch"] = torch.__version__
    return {**out, **_summary(times, B)}


def worker_epoch(spec):
    """One MNIST epoch of 784-500-100 at batch 100: fflib or the NumPy twin."""
    import fflib
    threads, B, variant = spec["threads"], spec["batch"], spec["variant"]
    fflib.set_num_threads(threads)
    x, y = mnist(spec["data_dir"])
    if spec.get("epoch_samples"):
        x, y = x[:spec["epoch_samples"]], y[:spec["epoch_samples"]]
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    x, y = np.ascontiguousarray(x[perm]), np.ascontiguousarray(y[perm])   # minibatches: contiguous slices
    neg = wrong_labels(y, rng)
    model = _fflib_mlp(spec["sizes"])
    out = {}
    if variant == "numpy":
        out["twin_check"] = numpy_twin_check(spec["sizes"])
        step = NumpyFF(model, lr=1e-3).step
    else:
        step = model.train_step
    step(x[:B], y[:B], neg[:B])             # warm-up (page faults, BLAS buffers)
    times = []
    t0 = time.perf_counter()
    for s in range(0, len(y) - B + 1, B):
        t1 = time.perf_counter()
        step(x[s:s + B], y[s:s + B], neg[s:s + B])
        times.append(time.perf_counter() - t1)
    epoch_s = time.perf_counter() - t0
    return {**out, **_summary(times, B), "epoch_s": epoch_s, "epoch_samples": len(times) * B,
            # the epoch as the sum of median steps: what it costs when no other job interferes
            "epoch_s_median_steps": statistics.median(times) * len(times)}


def worker_infer(spec):
    """Multi-pass scores (every label, every block) of the MNIST test set: fflib or PyTorch."""
    import fflib
    threads = spec["threads"]
    fflib.set_num_threads(threads)
    x, _ = mnist(spec["data_dir"], train=False)
    x = x[:spec.get("infer_samples") or len(x)]
    model = _fflib_mlp(spec["sizes"])
    model.eval()
    out = {}
    if spec["variant"] == "torch":
        import torch
        from fflib.torch import to_module
        torch.set_num_threads(threads)
        net = to_module(model)
        net.eval()
        xt = torch.from_numpy(x)
        fn = lambda i: net.goodness(xt)          # noqa: E731
        out["torch"] = torch.__version__
    else:
        fn = lambda i: model.goodness(x)         # noqa: E731
    fn(-1)
    times = _timed(fn, spec["seconds"])
    return {**out, **_summary(times, len(x)), "samples": len(x)}


def worker_cnn(spec):
    """FF_tiny (zoo, CwC) training at batch ``spec['batch']``: sequential or pipelined."""
    import fflib
    from fflib import models
    threads, B = spec["threads"], spec["batch"]
    fflib.set_num_threads(threads)
    x, y = cifar10(spec["data_dir"], 8 * B)
    nb = len(y) // B
    model = models.build(spec["model"], "cifar10", seed=0)
    fflib.Adam(model, lr=1e-3)
    head = model.has_head

    def batch(i):
        s = (i % nb) * B
        return x[s:s + B], y[s:s + B]

    times = _time_steps(model, batch, B, spec["variant"] == "pipe", head, spec)
    return {**_summary(times, B), "head": head}


WORKERS = {"mlp": worker_mlp, "epoch": worker_epoch, "infer": worker_infer, "cnn": worker_cnn}


def run_worker(spec):
    """Run one measurement in a fresh process with ``spec['threads']`` threads everywhere."""
    env = dict(os.environ)
    for var in ("FFLIB_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(spec["threads"])
    root = spec.get("root", str(REPO))     # the fflib build to measure (--baseline: an older one)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- parent: the machine's limit

def gemm_shapes(sizes, B, shared_first=False):
    """(M, K, N) of the GEMMs of one headless FF step (2B rows: forward of every row, the weight
    gradient of every row), as C (M, N) = A (M, K) @ B (K, N).  ``shared_first``: the first
    layer's forward for the B images only (fflib's label sharing)."""
    out = []
    for i, (I, O) in enumerate(zip(sizes[:-1], sizes[1:])):
        out += [(B if shared_first and i == 0 else 2 * B, I, O), (O, 2 * B, I)]
    return out


def step_flops(sizes, B):
    """Useful FLOPs of one headless FF step: forward and weight gradient of 2B rows per layer
    (fflib's label sharing computes the first layer's forward for B rows only: not counted)."""
    return sum(2 * M * Kd * N for M, Kd, N in gemm_shapes(sizes, B))


def sgemm_seconds(sizes, B, threads, min_time=0.15, shared_first=False):
    """Best seconds of the step's GEMMs through fflib._core.sgemm on ``threads`` threads."""
    import fflib
    from fflib import _core
    fflib.set_num_threads(threads)
    rng = np.random.default_rng(1)
    total = 0.0
    for M, Kd, N in gemm_shapes(sizes, B, shared_first):
        A, Bm, C = rng.random((M, Kd), dtype=np.float32), rng.random((Kd, N), dtype=np.float32), np.empty((M, N), np.float32)
        _core.sgemm(C, A, Bm)
        best, t_end, n = float("inf"), time.perf_counter() + min_time, 0
        while n < 2 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            _core.sgemm(C, A, Bm)
            best = min(best, time.perf_counter() - t0)
            n += 1
        total += best
    return total


def breakdown(sizes, B, threads):
    """fflib's time per kind of work (bench_mlp.fflib_breakdown: each kernel timed alone at the
    step's shapes, headless)."""
    from bench_mlp import fflib_breakdown
    return fflib_breakdown(sizes, B, False, threads)


# ---------------------------------------------------------------------------- parent: the distributed part

def distributed_section(results_dir):
    """Markdown lines and data of the distributed benchmark's results (``bench_distributed.json``
    beside ours), or ([], None) when that file does not exist.

    The file is written by the distributed benchmark (fflib/distributed.py's runs: 2 ranks x 1
    thread against 1 rank x 2 threads, bytes each rank sends per step, the modelled 1..16-node
    speed-up on a 10 Gbit/s link for data-parallel and pipeline training).  Read: ``title``
    (str), ``notes`` (a str or a list of str, printed as paragraphs), ``tables`` (a list of
    {``title``, ``columns``, ``rows``: lists of cells}) and ``rows`` (a list of dicts, printed as
    one table with their keys as columns); other keys stay in the JSON only."""
    path = Path(results_dir) / "bench_distributed.json"
    if not path.exists():
        return [], None
    data = json.loads(path.read_text())
    L = [f"## d. {data.get('title', 'Distributed training')} (from {path.name})", ""]
    notes = data.get("notes", [])
    for note in [notes] if isinstance(notes, str) else notes:
        L += [str(note), ""]

    def table(columns, rows):
        out = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
        for r in rows:
            out.append("| " + " | ".join(_cell(c) for c in r) + " |")
        return out + [""]
    for t in data.get("tables", []):
        if t.get("title"):
            L += [f"### {t['title']}", ""]
        L += table(t["columns"], t["rows"])
    if data.get("rows"):
        cols = list(dict.fromkeys(k for r in data["rows"] for k in r))
        L += table(cols, [[r.get(c, "") for c in cols] for r in data["rows"]])
    md = path.with_suffix(".md")
    if len(L) == 2 and md.exists():   # no tables in the JSON: the distributed benchmark's own report
        L += [line for line in md.read_text().splitlines() if not line.startswith("# ")] + [""]
    return L, data


def _cell(v):
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


# ---------------------------------------------------------------------------- parent: orchestration

def rounds(args, specs, label):
    """Run every spec once per round, alternating, the order reversed every other round."""
    runs = {i: [] for i in range(len(specs))}
    for r in range(args.repeats):
        order = list(range(len(specs))) if r % 2 == 0 else list(range(len(specs)))[::-1]
        for i in order:
            res = run_worker(specs[i])
            runs[i].append(res)
            s = specs[i]
            print(f"  {label} round {r} {s['variant']:12s} B={s['batch']:<5d} {s['threads']}t "
                  f"{res['samples_per_s']:9.0f} samples/s  ({res['steps']} steps, median {1e3 * res['step_s']:.1f} ms)",
                  flush=True)
    return [(specs[i], runs[i]) for i in range(len(specs))]


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def part_a(args):
    threads, out = args.threads, []
    specs = []
    for B in args.batches:
        for v in args.variants:
            specs.append(dict(kind="mlp", variant=v, sizes=args.big, batch=B, threads=threads, seconds=args.seconds,
                              warmup=1, data_dir=args.data_dir))
            if args.baseline and v.startswith("fflib"):   # the same run on an older build, right after this one
                specs.append(dict(specs[-1], variant="base_" + v.split("_")[1], mode=v, root=args.baseline))
    results = rounds(args, specs, "a")
    for B in args.batches:
        row = {"batch": B, "variants": {}}
        for spec, runs in results:
            if spec["batch"] == B:
                row["variants"][spec["variant"]] = {"samples_per_s": med(runs, "samples_per_s"),
                                                    "step_s": med(runs, "step_s"),
                                                    "step_s_best": min(r["step_s_min"] for r in runs),
                                                    "samples_per_s_all": [r["samples_per_s"] for r in runs]}
        v = row["variants"]
        if args.baseline:
            for k in ("seq", "pipe"):
                row[f"{k}_over_base"] = v[f"fflib_{k}"]["samples_per_s"] / v[f"base_{k}"]["samples_per_s"]
        if args.baseline:
            for k in ("seq", "pipe"):
                row[f"{k}_best_step_over_base"] = v[f"base_{k}"]["step_s_best"] / v[f"fflib_{k}"]["step_s_best"]
        best = max(("fflib_seq", "fflib_pipe"), key=lambda k: v[k]["samples_per_s"])
        row["best_fflib"] = best
        if "torch" in v:
            for t in ("torch", "torch_manual"):
                row[f"best_over_{t}"] = v[best]["samples_per_s"] / v[t]["samples_per_s"]
        row["pipe_over_seq"] = v["fflib_pipe"]["samples_per_s"] / v["fflib_seq"]["samples_per_s"]
        flops = step_flops(args.big, B)
        s2 = min(sgemm_seconds(args.big, B, threads) for _ in range(2))
        s1 = min(sgemm_seconds(args.big, B, 1) for _ in range(2))
        row.update(step_gflop=flops / 1e9, sgemm_gflops_split=flops / s2 / 1e9,
                   sgemm_gflops_1t=flops / s1 / 1e9, sgemm_gflops_limit=threads * flops / s1 / 1e9)
        limit = max(row["sgemm_gflops_split"], row["sgemm_gflops_limit"])
        for k, r in v.items():
            r["gflops"] = flops / r["step_s"] / 1e9
            r["pct_of_limit"] = 100 * r["gflops"] / limit
        if not args.no_breakdown:
            row["breakdown_s"] = breakdown(args.big, B, threads)
        out.append(row)
        print(f"  a B={B}: best {best} {row.get('best_over_torch', 0):.2f}x torch, {row.get('best_over_torch_manual', 0):.2f}x "
              f"torch_manual; sgemm {row['sgemm_gflops_split']:.0f} GFLOP/s split, {row['sgemm_gflops_limit']:.0f} "
              f"2 x 1-thread", flush=True)
    return out


def part_b(args):
    specs = []
    for t in (1, 2):
        specs += [dict(kind="epoch", variant=v, sizes=SMALL, batch=100, threads=t, data_dir=args.data_dir,
                       epoch_samples=args.epoch_samples) for v in ("fflib", "numpy")]
        specs += [dict(kind="infer", variant=v, sizes=SMALL, batch=0, threads=t, seconds=args.seconds,
                       data_dir=args.data_dir, infer_samples=args.infer_samples) for v in ("fflib", "torch")]
    results = rounds(args, specs, "b")
    epoch, infer = [], []
    for t in (1, 2):
        got = {(s["kind"], s["variant"]): runs for s, runs in results if s["threads"] == t}
        f, n = got[("epoch", "fflib")], got[("epoch", "numpy")]
        epoch.append({"threads": t, "fflib_epoch_s": med(f, "epoch_s"), "numpy_epoch_s": med(n, "epoch_s"),
                      "speedup": med(n, "epoch_s") / med(f, "epoch_s"),
                      "speedup_median_steps": med(n, "epoch_s_median_steps") / med(f, "epoch_s_median_steps"),
                      "fflib_samples_per_s": med(f, "samples_per_s"), "numpy_samples_per_s": med(n, "samples_per_s"),
                      "epoch_samples": f[0]["epoch_samples"], "twin_check": n[0]["twin_check"]})
        # the floor: an epoch of nothing but fflib's GEMMs (label sharing included) at OpenBLAS's best
        steps = f[0]["epoch_samples"] // 100
        floor = steps * min(sgemm_seconds(SMALL, 100, t, shared_first=True) for _ in range(3))
        epoch[-1].update(gemm_floor_epoch_s=floor, numpy_over_floor=med(n, "epoch_s_median_steps") / floor)
        fi, ti = got[("infer", "fflib")], got[("infer", "torch")]
        infer.append({"threads": t, "fflib_images_per_s": med(fi, "samples_per_s"),
                      "torch_images_per_s": med(ti, "samples_per_s"),
                      "speedup": med(fi, "samples_per_s") / med(ti, "samples_per_s"), "samples": fi[0]["samples"]})
    return {"epoch": epoch, "infer": infer}


def part_c(args):
    specs = [dict(kind="cnn", model="ff_tiny", variant=v, batch=128, threads=t, seconds=args.seconds, warmup=1,
                  data_dir=args.data_dir) for t in args.cnn_threads for v in ("seq", "pipe")]
    results = rounds(args, specs, "c")
    out = []
    for t in args.cnn_threads:
        got = {s["variant"]: runs for s, runs in results if s["threads"] == t}
        out.append({"threads": t, "seq_samples_per_s": med(got["seq"], "samples_per_s"),
                    "pipe_samples_per_s": med(got["pipe"], "samples_per_s"),
                    "pipe_over_seq": med(got["pipe"], "samples_per_s") / med(got["seq"], "samples_per_s")})
    return out


def write_markdown(path, res):
    cfg, m = res["config"], res["machine"]
    L = ["# Parallel training: fflib sequential and pipelined against PyTorch and NumPy (issue 11)", "",
         f"CPU: {m['cpu']} ({m['cores']} cores, shared with other jobs: load average "
         f"{', '.join(f'{v:.1f}' for v in m['load_average_at_start'])} at the start, "
         f"{', '.join(f'{v:.1f}' for v in m['load_average_at_end'])} at the end); fflib BLAS {m['fflib_blas']}, "
         f"torch {m.get('torch')}, numpy {m['numpy']}.  Every measurement in its own process; the variants "
         f"alternate within each of {cfg['repeats']} rounds (order reversed every other round); each run "
         f"reports its median step over ~{cfg['seconds']} s after warm-up, the tables the median over rounds.  "
         f"Total wall time {res['wall_s']:.0f} s.", ""]
    if res.get("a"):
        variants = [k for k in MLP_VARIANTS if k in res["a"][0]["variants"]]
        torch_cols = "torch" in variants and "torch_manual" in variants
        L += [f"## a. {'-'.join(map(str, cfg['big']))} MLP, FF loss, Adam (lr 1e-3), no head, {cfg['threads']} threads, MNIST",
              ""] + [f"* `{k}`: {DESCRIPTION[k]}" for k in variants] + [""]
        L += ["| batch | " + " | ".join(f"{k} samples/s" for k in variants) + " | " +
              ("best fflib / torch (target) | best fflib / torch_manual | " if torch_cols else "") + "pipe / seq |",
              "|" + "---|" * (len(variants) + 2 + 2 * torch_cols)]
        for r in res["a"]:
            v = r["variants"]
            tgt = TARGETS.get(r["batch"])
            ratios = (f" | **{r['best_over_torch']:.2f}x** ({tgt}x: {'met' if tgt and r['best_over_torch'] >= tgt else 'missed'}) "
                      f"| {r['best_over_torch_manual']:.2f}x") if torch_cols else ""
            L.append(f"| {r['batch']} | " + " | ".join(f"{v[k]['samples_per_s']:.0f}" for k in variants) +
                     ratios + f" | {r['pipe_over_seq']:.2f} |")
        L += ["", "The machine's limit: the step's GEMMs alone through `fflib._core.sgemm` (OpenBLAS, best of "
              "several calls) split over the threads as fflib's sequential path splits them, and twice the "
              "1-thread rate (two blocks' GEMMs at once, what the pipeline can reach at best).  Useful FLOPs "
              "per step: forward and weight gradient of the 2B positive and negative rows of every layer.", "",
              "| batch | GFLOP/step | sgemm split GFLOP/s | 2 x 1-thread sgemm GFLOP/s | " +
              " | ".join(f"{k} GFLOP/s (% of limit)" for k in variants) + " |", "|" + "---|" * (4 + len(variants))]
        for r in res["a"]:
            v = r["variants"]
            L.append(f"| {r['batch']} | {r['step_gflop']:.2f} | {r['sgemm_gflops_split']:.0f} | {r['sgemm_gflops_limit']:.0f} | " +
                     " | ".join(f"{v[k]['gflops']:.0f} ({v[k]['pct_of_limit']:.0f}%)" for k in variants) + " |")
        if cfg.get("baseline"):
            L += ["", f"Before and after this build's C changes: the same fflib runs on the build "
                  f"{cfg.get('baseline_label') or cfg['baseline']} "
                  "(before), alternating with the others in the same rounds.", "",
                  "Samples/s of the median step (medians over rounds), and the best step's ratio.", "",
                  "| batch | seq before | seq after | after/before | best step | pipe before | pipe after | "
                  "after/before | best step |", "|---|---|---|---|---|---|---|---|---|"]
            for r in res["a"]:
                v = r["variants"]
                L.append(f"| {r['batch']} | {v['base_seq']['samples_per_s']:.0f} | {v['fflib_seq']['samples_per_s']:.0f} | "
                         f"{r['seq_over_base']:.2f} | {r.get('seq_best_step_over_base', float('nan')):.2f} | "
                         f"{v['base_pipe']['samples_per_s']:.0f} | {v['fflib_pipe']['samples_per_s']:.0f} | "
                         f"{r['pipe_over_base']:.2f} | {r.get('pipe_best_step_over_base', float('nan')):.2f} |")
        if res["a"][0].get("breakdown_s"):
            names = list(res["a"][0]["breakdown_s"])
            L += ["", f"Where fflib's sequential step spends its time: each kind of work timed alone with "
                  f"`fflib._core`'s kernels at the step's shapes, {cfg['threads']} threads (bench_mlp's breakdown; "
                  "the first layer's forward counted for all 2B rows, which label sharing halves), against "
                  "the median sequential step.", "",
                  "| batch | " + " | ".join(names) + " | sum | median step |", "|" + "---|" * (len(names) + 3)]
            for r in res["a"]:
                bd = r["breakdown_s"]
                L.append(f"| {r['batch']} | " + " | ".join(f"{1e3 * bd[n]:.1f} ms" for n in names) +
                         f" | {1e3 * sum(bd.values()):.1f} ms | {1e3 * r['variants']['fflib_seq']['step_s']:.1f} ms |")
        L.append("")
    if res.get("b"):
        b = res["b"]
        e0 = b["epoch"][0]
        L += [f"## b. {'-'.join(map(str, SMALL))} MLP at batch 100: an epoch against NumPy, multi-pass inference against PyTorch", "",
              f"One epoch = {e0['epoch_samples']} MNIST training samples (600 steps for the full set), FF loss, Adam, "
              "no head.  NumPy: `NumpyFF` in this file, the same step in plain NumPy float32 (its BLAS on the same "
              f"threads); against fflib's step after {e0['twin_check']['steps']} steps: losses within "
              f"{e0['twin_check']['loss_rel_diff']:.1e}, weights within {e0['twin_check']['weight_rel_diff']:.1e} (relative).  "
              "Epoch time is wall time of the whole epoch; 'by median steps' is the median step times the steps "
              "(what it costs when no other job interferes).", "",
              "The GEMM floor is the epoch's GEMMs alone (fflib's shapes, the first layer's forward for B "
              "images thanks to label sharing) through `fflib._core.sgemm` at their best: no implementation "
              "on OpenBLAS beats it, so NumPy's epoch over it bounds the ratio any such implementation can reach.", "",
              "| threads | fflib epoch s | NumPy epoch s | fflib / NumPy (target 5x) | by median steps | "
              "GEMM floor s | NumPy / floor (the reachable ratio) |", "|---|---|---|---|---|---|---|"]
        for e in b["epoch"]:
            L.append(f"| {e['threads']} | {e['fflib_epoch_s']:.2f} | {e['numpy_epoch_s']:.2f} | **{e['speedup']:.2f}x** "
                     f"({'met' if e['speedup'] >= EPOCH_TARGET else 'missed'}) | {e['speedup_median_steps']:.2f}x | "
                     f"{e['gemm_floor_epoch_s']:.2f} | {e['numpy_over_floor']:.2f}x |")
        i0 = b["infer"][0]
        L += ["", f"Multi-pass inference: every block's goodness for every one of the K = 10 labels, "
              f"{i0['samples']} MNIST test images (fflib `FFModel.goodness`; PyTorch `fflib.torch.FFNet.goodness`, "
              "no_grad, 1000 images per chunk).", "",
              "| threads | fflib images/s | PyTorch images/s | fflib / PyTorch (target 4x) |", "|---|---|---|---|"]
        for i in b["infer"]:
            L.append(f"| {i['threads']} | {i['fflib_images_per_s']:.0f} | {i['torch_images_per_s']:.0f} | "
                     f"**{i['speedup']:.2f}x** ({'met' if i['speedup'] >= INFER_TARGET else 'missed'}) |")
        L.append("")
    if res.get("c"):
        L += ["## c. FF_tiny (zoo, CwC loss, CIFAR-10) at batch 128: pipelined against sequential", "",
              "The one-pass head trains in both (the zoo model's default).", "",
              "| threads | sequential samples/s | pipelined samples/s | pipelined / sequential |", "|---|---|---|---|"]
        for r in res["c"]:
            L.append(f"| {r['threads']} | {r['seq_samples_per_s']:.0f} | {r['pipe_samples_per_s']:.0f} | {r['pipe_over_seq']:.2f} |")
        L.append("")
    if res.get("d_md"):
        L += res["d_md"]
    else:
        L += ["## d. Distributed training", "", "Not included: `benchmarks/results/bench_distributed.json` "
              "(written by the distributed benchmark) did not exist when this ran.", ""]
    Path(path).write_text("\n".join(L))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="a,b,c,d", help="which parts to run (d only reads the distributed results)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement (after warm-up)")
    p.add_argument("--threads", type=int, default=2, help="threads of part a")
    p.add_argument("--batches", default="64,256,1024", help="batch sizes of part a")
    p.add_argument("--big", default=",".join(map(str, BIG)), help="layer sizes of part a")
    p.add_argument("--cnn-threads", default="2", help="thread counts of part c")
    p.add_argument("--epoch-samples", type=int, default=0, help="part b's epoch length (0: all training samples)")
    p.add_argument("--infer-samples", type=int, default=0, help="part b's test images (0: all)")
    p.add_argument("--no-breakdown", action="store_true", help="skip part a's per-kernel breakdown")
    p.add_argument("--baseline", help="part a also runs fflib from this repository root (a built older checkout), "
                   "for a before/after table")
    p.add_argument("--baseline-label", help="how the tables name the --baseline build (default: its path)")
    p.add_argument("--variants", default=",".join(MLP_VARIANTS), help="part a's variants")
    p.add_argument("--name", default="bench_parallel", help="stem of the result files")
    p.add_argument("--data-dir", default=os.environ.get("FFLIB_DATA") or str(REPO.parent / "shared" / "data"))
    p.add_argument("--out-dir", default=str(HERE / "results"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.big = [int(s) for s in args.big.split(",")]
    args.cnn_threads = [int(t) for t in args.cnn_threads.split(",")]
    args.part_list = [s.strip() for s in args.parts.split(",") if s.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in MLP_VARIANTS]
    if bad or not {"fflib_seq", "fflib_pipe"} <= set(args.variants):
        p.error(f"--variants: fflib_seq and fflib_pipe and any of {MLP_VARIANTS[2:]}, got {args.variants}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec["kind"]](spec)))
        return
    import fflib
    from benchutil import cpu_name
    t0 = time.perf_counter()
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
               "numpy": np.__version__, "fflib_blas": fflib.blas_name(), "load_average_at_start": list(os.getloadavg())}
    res = {"config": {k: getattr(args, k) for k in ("parts", "repeats", "seconds", "threads", "batches", "big",
                                                     "cnn_threads", "epoch_samples", "infer_samples", "baseline",
                                                     "baseline_label", "variants")}}
    if "a" in args.part_list:
        res["a"] = part_a(args)
    if "b" in args.part_list:
        res["b"] = part_b(args)
    if "c" in args.part_list:
        res["c"] = part_c(args)
    if "d" in args.part_list:
        res["d_md"], res["d"] = distributed_section(args.out_dir)
    try:
        import torch
        machine["torch"] = torch.__version__
    except ImportError:
        machine["torch"] = None
    machine["load_average_at_end"] = list(os.getloadavg())
    res["machine"] = machine
    res["wall_s"] = time.perf_counter() - t0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    write_markdown(out / f"{args.name}.md", res)
    print((out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    sys.path[1:1] = [str(HERE), str(REPO)]   # run as a script: its helpers beside it, this checkout's fflib
    main()
