#!/usr/bin/env python
"""fflib against plain PyTorch on the same FF MLP training (MNIST).

For each batch size, each framework's training runs in its own subprocess (this script
re-invoked with ``--worker NAME --batch-size B``), so that one framework's memory never
inflates the other's peak and a crash stays contained.  The runs alternate between the
frameworks, batch size by batch size, and the whole alternation repeats ``--repeats`` times
(the order reversed every other round); medians are reported.

Measured per framework and batch size:
  * training samples/s: ``--steps`` timed steps (default: enough for ``--seconds``) after
    ``--warmup`` steps;
  * peak RSS of training: the peak resident memory (VmHWM, reset after the imports and the
    data load) minus the resident memory at that point; without /proc/self/clear_refs,
    ru_maxrss minus the same baseline;
  * the fraction of the OpenBLAS sgemm rate that the training step achieves: the useful
    FLOPs of an FF step (per layer of I inputs and O outputs with R = 2B rows, 3B with the
    head: forward 2 R I O, weight gradient 2 (2B) I O; the head: 2 (2B) F K) divided by the
    step time, against the same FLOPs divided by the time ``fflib._core.sgemm`` takes at
    those shapes.
And once per framework: the test error (one-pass and multi-pass) after a short fixed
training budget (``--epochs`` at ``--acc-batch-size``, same initial weights, same order of
samples, same negative labels).

Frameworks: ``fflib``; ``torch``: the PyTorch twin of fflib.torch (``TorchFF``) with autograd
and torch.optim.Adam (what a PyTorch user would write); ``torch_manual``: the same with the
closed-form local gradient (``grad="manual"``: only the 2B positive/negative rows enter the
weight gradient, as in fflib) and ``fused=True`` Adam.  Both torch variants stack the positive,
negative and neutral rows into one matmul per layer; with autograd the weight gradient then runs
over all 3B rows (the neutral rows' zero gradients included), one reason for the manual variant.
The speed runs start torch from PyTorch's default initialisation (``fflib.torch.to_module`` of
the architecture alone, so that no fflib model sits in the torch worker's memory); the
test-error runs start both from fflib's initial weights.

Writes <out-dir>/bench_mlp.json and <out-dir>/bench_mlp.md.
"""
import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchutil import cpu_name, hwm_mb, median, reset_peak_rss, rss_mb  # noqa: E402  (beside this script)

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("fflib", "torch", "torch_manual")
DESCRIPTION = {
    "fflib": "fflib (C core, OpenBLAS)",
    "torch": "PyTorch, autograd + torch.optim.Adam",
    "torch_manual": "PyTorch, closed-form local gradients + fused Adam",
}
K = 10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="784,2000,2000,2000,2000", help="layer sizes, input first")
    p.add_argument("--batch-sizes", default="64,128,256,512,1024")
    p.add_argument("--steps", type=int, default=0,
                   help="timed steps per measurement (default 0: as many as fit in --seconds, at least 2)")
    p.add_argument("--seconds", type=float, default=2.5, help="target length of one timed measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the fflib/torch alternation")
    p.add_argument("--threads", type=int, default=2, help="BLAS/intra-op threads of every framework")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--data-dir", default=os.environ.get("FFLIB_DATA") or str(REPO.parent / "shared" / "data"))
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    # the FF configuration
    p.add_argument("--goodness", default="sum", choices=("sum", "mean"))
    p.add_argument("--threshold", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (every layer and the head)")
    p.add_argument("--no-head", action="store_true", help="train without the one-pass head")
    p.add_argument("--seed", type=int, default=0)
    # the accuracy run
    p.add_argument("--epochs", type=int, default=1, help="training budget of the test-error run")
    p.add_argument("--acc-batch-size", type=int, default=256)
    p.add_argument("--train-samples", type=int, default=60000, help="training samples used by the test-error run")
    p.add_argument("--eval-samples", type=int, default=10000, help="test samples evaluated")
    p.add_argument("--no-accuracy", action="store_true", help="skip the test-error run")
    # worker mode (internal)
    p.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--task", choices=("speed", "accuracy"), default="speed", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size_list = [int(s) for s in args.sizes.split(",")]
    args.batch_list = [int(b) for b in args.batch_sizes.split(",")]
    args.framework_list = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    bad = [f for f in args.framework_list if f not in FRAMEWORKS]
    if bad:
        p.error(f"unknown frameworks {bad}; choose from {FRAMEWORKS}")
    if len(args.size_list) < 2 or args.size_list[0] < K:
        p.error("--sizes needs an input size >= 10 and at least one layer")
    return args


# ---------------------------------------------------------------------------- shared helpers

def head_features(sizes, head):
    """Width of the one-pass head's input: blocks 2..L (or the only block)."""
    if not head:
        return 0
    return sum(sizes[2:]) if len(sizes) > 2 else sizes[1]


def step_flops(sizes, B, head):
    """Useful FLOPs of one FF training step (forward of every row, weight gradients of the
    2B positive/negative rows, the head)."""
    R = 3 * B if head else 2 * B
    flops = 0
    for I, O in zip(sizes[:-1], sizes[1:]):
        flops += 2 * R * I * O + 2 * (2 * B) * I * O
    if head:
        F = head_features(sizes, head)
        flops += 2 * B * F * K * 2
    return flops


def gemm_shapes(sizes, B, head):
    """(M, Kd, N) of the GEMMs of one step, as C (M, N) = A (M, Kd) @ B (Kd, N)."""
    R = 3 * B if head else 2 * B
    shapes = []
    for I, O in zip(sizes[:-1], sizes[1:]):
        shapes.append(("forward", R, I, O))
        shapes.append(("weight grad", O, 2 * B, I))
    if head:
        F = head_features(sizes, head)
        shapes.append(("head forward", B, F, K))
        shapes.append(("head weight grad", K, B, F))
    return shapes




def load_mnist(data_dir, train, n=None):
    import fflib
    x, y = fflib.datasets.load_mnist(root=data_dir, train=train)
    x = x.reshape(len(x), -1)
    if n is not None:
        x, y = x[:n], y[:n]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def wrong_labels(y, rng):
    """One negative label per sample, uniform over the K-1 wrong classes."""
    return ((y + rng.integers(1, K, len(y))) % K).astype(np.int64)


# ---------------------------------------------------------------------------- worker

class Trainer:
    """One framework's model behind a common step(x, y, neg) / errors(x, y)."""

    def __init__(self, framework, args, same_init_as_fflib, arch=None):
        import fflib
        self.framework = framework
        head = not args.no_head
        fflib.set_num_threads(args.threads)
        if framework != "fflib":
            import torch
            from fflib.torch import TorchFF, to_module
            torch.set_num_threads(args.threads)
            opt = dict(optimizer="adam", lr=args.lr)
            if framework == "torch_manual":
                opt.update(grad="manual", fused=True)
            if same_init_as_fflib:
                model = self._fflib_model(args, head)
                self.twin = TorchFF(model, **opt)
                del model
            else:   # PyTorch's default initialisation of the same architecture
                torch.manual_seed(args.seed)
                self.twin = TorchFF(to_module(arch), **opt)
        else:
            self.model = self._fflib_model(args, head)
            fflib.Adam(self.model, lr=args.lr)

    @staticmethod
    def _fflib_model(args, head):
        import fflib
        return fflib.FFModel(fflib.mlp(args.size_list), args.size_list[0], K, goodness=args.goodness,
                             threshold=args.threshold, head_blocks="auto" if head else None, seed=args.seed)

    def step(self, x, y, neg):
        if self.framework == "fflib":
            return self.model.train_step(x, y, neg)
        return self.twin.step(x, y, neg)

    def errors(self, x, y):
        """Test error in percent: multi-pass (goodness summed over all blocks), one-pass."""
        if self.framework == "fflib":
            import fflib
            r = fflib.evaluate(self.model, x, y)
        else:
            r = self.twin.evaluate(x, y)
        return {"multi_pass": r["multi_pass"], "one_pass": r.get("one_pass")}


def worker_speed(args):
    B = args.batch_size
    rng = np.random.default_rng(args.seed)
    x, y = load_mnist(args.data_dir, True)
    perm = rng.permutation(len(y))
    x, y = np.ascontiguousarray(x[perm]), np.ascontiguousarray(y[perm])  # batches: contiguous slices
    neg = wrong_labels(y, rng)
    arch = None
    if args.worker != "fflib":
        import torch  # noqa: F401  (imports belong to the baseline)
        import fflib.torch  # noqa: F401
        # the architecture only; the fflib model is freed before the memory baseline
        arch = Trainer._fflib_model(args, not args.no_head).architecture()
    import fflib  # noqa: F401
    peak_reset = reset_peak_rss()
    base = rss_mb()
    base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    trainer = Trainer(args.worker, args, same_init_as_fflib=False, arch=arch)
    nbatches = len(y) // B
    pos = 0

    step_times, step_cpu = [], []

    def run(n):
        nonlocal pos
        for _ in range(n):
            s = (pos % nbatches) * B
            t0, c0 = time.perf_counter(), time.process_time()
            losses = trainer.step(x[s:s + B], y[s:s + B], neg[s:s + B])
            step_times.append(time.perf_counter() - t0)
            step_cpu.append(time.process_time() - c0)
            pos += 1
        return losses

    run(max(args.warmup, 1))
    t_warm = list(step_times)
    step_times.clear()
    step_cpu.clear()
    n = args.steps if args.steps > 0 else max(2, math.ceil(args.seconds / t_warm[-1]))
    t0, c0 = time.perf_counter(), time.process_time()
    losses = run(n)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    end_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    peak = (hwm_mb() if peak_reset else end_maxrss) - base
    out = {"framework": args.worker, "batch_size": B, "steps": n, "seconds": elapsed,
           "step_s": elapsed / n, "step_s_min": min(step_times), "step_times": step_times,
           "samples_per_s": n * B / elapsed, "warmup_s": t_warm,
           "cpu_s": cpu, "step_cpu_s": cpu / n, "step_cpu_s_min": min(step_cpu),
           "samples_per_cpu_s": n * B / cpu,
           "peak_mb": peak, "maxrss_minus_base_mb": end_maxrss - base,
           "maxrss_before_training_mb": base_maxrss, "base_rss_mb": base, "peak_reset": peak_reset,
           "final_losses": [float(v) for v in losses], "threads": args.threads}
    if args.worker != "fflib":
        import torch
        out["torch"] = torch.__version__
    return out


def worker_accuracy(args):
    rng = np.random.default_rng(args.seed)
    x, y = load_mnist(args.data_dir, True, args.train_samples)
    xt, yt = load_mnist(args.data_dir, False, args.eval_samples)
    trainer = Trainer(args.worker, args, same_init_as_fflib=True)
    B = args.acc_batch_size
    t0 = time.perf_counter()
    steps, loss_sum = 0, 0.0
    for _ in range(args.epochs):
        perm = rng.permutation(len(y))
        neg = wrong_labels(y[perm], rng)
        for s in range(0, len(y), B):
            idx = perm[s:s + B]
            losses = trainer.step(np.ascontiguousarray(x[idx]), np.ascontiguousarray(y[idx]),
                                  np.ascontiguousarray(neg[s:s + B]))
            loss_sum += float(np.sum(losses[:-1]))
            steps += 1
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    err = trainer.errors(xt, yt)
    return {"framework": args.worker, "epochs": args.epochs, "batch_size": B, "train_samples": len(y),
            "eval_samples": len(yt), "steps": steps, "train_s": train_s,
            "eval_s": time.perf_counter() - t1, "last_losses": [float(v) for v in losses],
            **{f"{k}_error": v for k, v in err.items()}}


# ---------------------------------------------------------------------------- parent: BLAS and fflib breakdown

def bench_clock(threads):
    """CPU time of this process when single-threaded (immune to being descheduled by other jobs
    on a shared machine), else wall time (a spinning BLAS thread pool would inflate CPU time)."""
    return time.process_time if threads == 1 else time.perf_counter


def time_call(fn, clock=time.perf_counter, min_time=0.25, min_calls=3):
    """Best (minimum) seconds of one call of fn by ``clock``, after one warm-up call: on a shared
    machine the minimum is the least disturbed estimate of what the work itself costs."""
    fn()  # warm up (page faults, BLAS buffers)
    best, n, t_start = float("inf"), 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - t_start < min_time:
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
        n += 1
    return best


def measure_sgemm(sizes, B, head, threads):
    """Seconds per step of the GEMMs at the step's shapes through fflib._core.sgemm."""
    import fflib
    from fflib import _core
    fflib.set_num_threads(threads)
    rng = np.random.default_rng(1)
    rows, total = [], 0.0
    for name, M, Kd, N in gemm_shapes(sizes, B, head):
        A = rng.random((M, Kd), dtype=np.float32)
        Bm = rng.random((Kd, N), dtype=np.float32)
        C = np.empty((M, N), np.float32)
        t = time_call(lambda: _core.sgemm(C, A, Bm), bench_clock(threads), min_time=0.2, min_calls=2)
        rows.append({"gemm": name, "M": M, "K": Kd, "N": N, "s": t, "gflops": 2 * M * Kd * N / t / 1e9})
        total += t
    return total, rows


def measure_square_sgemm(threads, n=2048):
    import fflib
    from fflib import _core
    fflib.set_num_threads(threads)
    rng = np.random.default_rng(2)
    A, Bm = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    C = np.empty((n, n), np.float32)
    t = time_call(lambda: _core.sgemm(C, A, Bm), bench_clock(threads), min_time=0.5, min_calls=2)
    return 2 * n ** 3 / t / 1e9


def fflib_breakdown(sizes, B, head, threads):
    """Seconds per step of each kind of work an fflib training step does, timed with the core's
    own kernels at the step's shapes (the GEMMs with fflib's real transposed layouts)."""
    import fflib
    from fflib import _core
    fflib.set_num_threads(threads)
    clock = bench_clock(threads)

    def tc(fn):
        return time_call(fn, clock)
    rng = np.random.default_rng(3)
    R, T = (3 * B if head else 2 * B), 2 * B
    parts = {"linear forward (GEMM + bias)": 0.0, "linear weight grad (GEMM + bias grad)": 0.0,
             "relu fwd+bwd": 0.0, "goodness fwd+bwd, loss": 0.0, "length norm": 0.0,
             "label overlay": 0.0, "Adam": 0.0, "head (linear, softmax, Adam)": 0.0}
    D0 = sizes[0]
    x = rng.random((R, D0), dtype=np.float32)
    labels = rng.integers(0, K, R).astype(np.int64)
    xo = np.empty_like(x)
    parts["label overlay"] += tc(lambda: _core.overlay_labels(xo, x, labels, K, 1.0))
    sc = np.empty(R, np.float32)
    parts["length norm"] += tc(lambda: _core.lennorm_forward(xo, sc, x, 1, 1e-4))
    nl = len(sizes) - 1
    nparams = 0
    for li, (I, O) in enumerate(zip(sizes[:-1], sizes[1:])):
        inp = rng.random((R, I), dtype=np.float32)
        W = (rng.random((O, I), dtype=np.float32) - 0.5) * 0.05
        b = np.zeros(O, np.float32)
        out = np.empty((R, O), np.float32)
        parts["linear forward (GEMM + bias)"] += tc(lambda: _core.linear_forward(out, inp, W, b))
        act = out
        parts["relu fwd+bwd"] += tc(lambda: _core.relu_forward(act, act))
        dW, db = np.zeros_like(W), np.zeros_like(b)
        dout = rng.standard_normal((T, O)).astype(np.float32)
        inpT = np.ascontiguousarray(inp[:T])
        parts["linear weight grad (GEMM + bias grad)"] += tc(
            lambda: _core.linear_backward(None, dW, db, dout, inpT, W))
        actT = np.ascontiguousarray(act[:T])
        dact = np.zeros_like(actT)
        parts["relu fwd+bwd"] += tc(lambda: _core.relu_backward(dact, dout, actT))
        g, dg = np.empty(T, np.float32), np.empty(T, np.float32)

        def goodness_work():
            _core.goodness_forward(g, actT, 0)
            _core.ff_loss(dg[:B], dg[B:], g[:B], g[B:], 2.0)
            _core.goodness_backward(dact, dg, actT, 0)
        parts["goodness fwd+bwd, loss"] += tc(goodness_work)
        if li + 1 < nl:
            sc = np.empty(R, np.float32)
            parts["length norm"] += tc(lambda: _core.lennorm_forward(out, sc, out, 1, 1e-4))
        nparams += O * I + O
    if head:
        F = head_features(sizes, head)
        feat = rng.random((B, F), dtype=np.float32)
        Wh = np.zeros((K, F), np.float32)
        bh = np.zeros(K, np.float32)
        logits, dl, probs = np.empty((B, K), np.float32), np.empty((B, K), np.float32), np.empty((B, K), np.float32)
        yb = labels[:B].copy()
        dWh, dbh = np.zeros_like(Wh), np.zeros_like(bh)
        mh, vh = np.zeros_like(Wh), np.zeros_like(Wh)

        def head_work():
            _core.linear_forward(logits, feat, Wh, bh)
            _core.softmax_xent(dl, probs, logits, yb)
            _core.linear_backward(None, dWh, dbh, dl, feat, Wh)
            _core.adam_step(Wh, mh, vh, dWh, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
        parts["head (linear, softmax, Adam)"] += tc(head_work)
    p = np.zeros(nparams, np.float32)
    m, v, gr = np.zeros_like(p), np.zeros_like(p), np.full_like(p, 1e-3)
    parts["Adam"] += tc(lambda: _core.adam_step(p, m, v, gr, 1e-3, 0.9, 0.999, 1e-8, 0.0, 5))
    if not head:
        del parts["head (linear, softmax, Adam)"]
    return parts


# ---------------------------------------------------------------------------- parent: orchestration

def worker_command(args, framework, task, batch_size=None):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", framework, "--task", task,
           "--sizes", args.sizes, "--threads", str(args.threads), "--data-dir", args.data_dir,
           "--goodness", args.goodness, "--threshold", repr(args.threshold), "--lr", repr(args.lr),
           "--seed", str(args.seed), "--steps", str(args.steps), "--seconds", repr(args.seconds),
           "--warmup", str(args.warmup), "--epochs", str(args.epochs),
           "--acc-batch-size", str(args.acc_batch_size), "--train-samples", str(args.train_samples),
           "--eval-samples", str(args.eval_samples)]
    if args.no_head:
        cmd.append("--no-head")
    if batch_size is not None:
        cmd += ["--batch-size", str(batch_size)]
    return cmd


def run_worker(args, framework, task, batch_size=None):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    proc = subprocess.run(worker_command(args, framework, task, batch_size), capture_output=True,
                          text=True, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {framework} {task} B={batch_size} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info(args):
    import fflib
    cpu = cpu_name()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "fflib_blas": fflib.blas_name(), "threads": args.threads,
            "load_average_at_start": list(os.getloadavg())}


def fmt(v, spec=".0f"):
    return "-" if v is None else format(v, spec)


def write_markdown(path, res):
    cfg, fws = res["config"], res["config"]["frameworks"]
    L = ["# FF MLP training: fflib vs PyTorch", ""]
    L.append(f"Net {'-'.join(map(str, cfg['sizes']))}, {cfg['goodness']} goodness, threshold "
             f"{cfg['threshold']}, Adam lr {cfg['lr']}, one-pass head: {cfg['head']}; "
             f"{cfg['threads']} threads; MNIST. CPU: {res['machine']['cpu']} ({res['machine']['cores']} cores, "
             f"shared: load average {', '.join(f'{v:.1f}' for v in res['machine']['load_average_at_start'])} "
             f"at start). Medians of {cfg['repeats']} alternating rounds; each measurement in its own "
             "process.")
    L.append("")
    for fw in fws:
        L.append(f"* `{fw}`: {DESCRIPTION[fw]}")
    L.append("")
    head = ["batch"] + [f"{fw} samples/s" for fw in fws]
    head += [f"speed fflib/{fw}" for fw in fws if fw != "fflib"]
    head += [f"{fw} peak MB" for fw in fws]
    head += [f"memory {fw}/fflib" for fw in fws if fw != "fflib"]
    head += [f"{fw} % of sgemm" for fw in fws]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    for row in res["summary"]:
        s = row["frameworks"]
        cells = [str(row["batch_size"])]
        cells += [fmt(s[fw]["samples_per_s"]) for fw in fws]
        cells += [fmt(row.get(f"speed_fflib_over_{fw}"), ".2f") for fw in fws if fw != "fflib"]
        cells += [fmt(s[fw]["peak_mb"]) for fw in fws]
        cells += [fmt(row.get(f"memory_{fw}_over_fflib"), ".2f") for fw in fws if fw != "fflib"]
        cells += [fmt(s[fw]["pct_of_sgemm"], ".0f") + "%" for fw in fws]
        L.append("| " + " | ".join(cells) + " |")
    if cfg["threads"] == 1:
        L += ["", "The same runs by CPU time (samples per CPU-second of the process: single-threaded, "
              "this is immune to being descheduled by the other jobs on the machine):", ""]
        head2 = ["batch"] + [f"{fw} samples/CPU-s" for fw in fws]
        head2 += [f"fflib/{fw}" for fw in fws if fw != "fflib"]
        L.append("| " + " | ".join(head2) + " |")
        L.append("|" + "---|" * len(head2))
        for row in res["summary"]:
            s = row["frameworks"]
            cells = [str(row["batch_size"])] + [fmt(s[fw]["samples_per_cpu_s"]) for fw in fws]
            cells += [fmt(row.get(f"cpu_speed_fflib_over_{fw}"), ".2f") for fw in fws if fw != "fflib"]
            L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append(f"sgemm rate at the step's shapes (fflib._core.sgemm, OpenBLAS, {cfg['threads']} thread(s)): " + ", ".join(
        f"B={row['batch_size']}: {row['sgemm_gflops_at_shapes']:.0f} GFLOP/s" for row in res["summary"])
        + f"; square 2048^3: {res['sgemm_square_gflops']:.0f} GFLOP/s. "
        "% of sgemm = (useful FLOPs / median step time) / (the same FLOPs / best time of the GEMMs "
        "alone), both by CPU time when single-threaded; the FLOPs per step: " + ", ".join(
            f"B={row['batch_size']}: {row['step_gflop']:.1f} GFLOP" for row in res["summary"]) + ".")
    L.append("")
    L.append("Peak MB: peak resident memory during training minus the resident memory after the "
             "imports and the data load (the model, optimiser state, activations).")
    if res.get("accuracy"):
        a = res["accuracy"]
        first = next(iter(a.values()))
        L += ["", f"## Test error after {first['epochs']} epoch(s) at batch {first['batch_size']} "
              f"({first['train_samples']} training samples, {first['eval_samples']} test samples, "
              "same initial weights, order and negative labels)", "",
              "| framework | one-pass error % | multi-pass error % | train s | eval s |", "|---|---|---|---|---|"]
        for fw, r in a.items():
            L.append(f"| {fw} | {fmt(r['one_pass_error'], '.2f')} | {fmt(r['multi_pass_error'], '.2f')} | "
                     f"{r['train_s']:.1f} | {r['eval_s']:.1f} |")
    if res.get("fflib_breakdown"):
        L += ["", "## Where an fflib step's time goes", "",
              "Each kernel timed alone with fflib._core at the step's shapes (best of several calls), "
              "against the best measured training step (CPU time when single-threaded).  'GEMMs alone' is plain sgemm at the same "
              "shapes; the linear rows include fflib's transposed layouts, the bias and its gradient.", "",
              "| batch | " + " | ".join(next(iter(res["fflib_breakdown"].values()))["parts"]) +
              " | sum | GEMMs alone | best step | not accounted |"]
        L.append("|" + "---|" * (len(next(iter(res["fflib_breakdown"].values()))["parts"]) + 5))
        for B, bd in res["fflib_breakdown"].items():
            cells = [str(B)] + [f"{1e3 * v:.1f} ms" for v in bd["parts"].values()]
            cells += [f"{1e3 * bd['sum_s']:.1f} ms", f"{1e3 * bd['gemm_only_s']:.1f} ms",
                      f"{1e3 * bd['step_s']:.1f} ms", f"{1e3 * bd['other_s']:.1f} ms"]
            L.append("| " + " | ".join(cells) + " |")
    Path(path).write_text("\n".join(L) + "\n")


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        result = worker_speed(args) if args.task == "speed" else worker_accuracy(args)
        print(json.dumps(result))
        return
    head = not args.no_head
    fws = args.framework_list
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"bench_mlp: net {args.sizes}, batches {args.batch_list}, frameworks {fws}, "
          f"{args.threads} threads, {args.repeats} rounds", flush=True)
    t_start = time.perf_counter()
    machine = machine_info(args)
    runs, sgemm = [], {B: [] for B in args.batch_list}
    square = []
    for rnd in range(args.repeats):
        order = fws if rnd % 2 == 0 else fws[::-1]
        for B in args.batch_list:
            for fw in order:
                r = run_worker(args, fw, "speed", B)
                r["round"] = rnd
                runs.append(r)
                print(f"  round {rnd} B={B:5d} {fw:13s} {r['samples_per_s']:9.0f} samples/s "
                      f"({r['steps']} steps, {1e3 * r['step_s']:.0f} ms/step)  peak {r['peak_mb']:.0f} MB",
                      flush=True)
            t, rows = measure_sgemm(args.size_list, B, head, args.threads)
            sgemm[B].append((t, rows))
        square.append(measure_square_sgemm(args.threads))
    summary = []
    for B in args.batch_list:
        flops = step_flops(args.size_list, B, head)
        gemm_s = min(t for t, _ in sgemm[B])     # the best-case GEMM time: the BLAS peak
        row = {"batch_size": B, "step_gflop": flops / 1e9, "sgemm_s_per_step": gemm_s,
               "sgemm_gflops_at_shapes": flops / gemm_s / 1e9,
               "sgemm_shapes": min(sgemm[B], key=lambda tr: tr[0])[1], "frameworks": {}}
        for fw in fws:
            mine = [r for r in runs if r["framework"] == fw and r["batch_size"] == B]
            sps = [r["samples_per_s"] for r in mine]
            step_s = median([r["step_s"] for r in mine])
            step_cpu_s = median([r["step_cpu_s"] for r in mine])
            # the sgemm peak was timed by CPU time when single-threaded: compare like with like
            step_for_pct = step_cpu_s if args.threads == 1 else step_s
            row["frameworks"][fw] = {
                "samples_per_s": median(sps), "samples_per_s_min": min(sps), "samples_per_s_max": max(sps),
                "step_s": step_s, "step_s_best": min(r["step_s_min"] for r in mine),
                "samples_per_cpu_s": median([r["samples_per_cpu_s"] for r in mine]),
                "step_cpu_s": step_cpu_s, "step_cpu_s_best": min(r["step_cpu_s_min"] for r in mine),
                "gflops": flops / step_s / 1e9,
                "pct_of_sgemm": 100.0 * gemm_s / step_for_pct,
                "peak_mb": median([r["peak_mb"] for r in mine]),
                "peak_mb_max": max(r["peak_mb"] for r in mine)}
        for fw in fws:
            if fw != "fflib" and "fflib" in fws:
                row[f"speed_fflib_over_{fw}"] = (row["frameworks"]["fflib"]["samples_per_s"] /
                                                 row["frameworks"][fw]["samples_per_s"])
                row[f"memory_{fw}_over_fflib"] = (row["frameworks"][fw]["peak_mb"] /
                                                  max(row["frameworks"]["fflib"]["peak_mb"], 1e-9))
                row[f"cpu_speed_fflib_over_{fw}"] = (row["frameworks"]["fflib"]["samples_per_cpu_s"] /
                                                     row["frameworks"][fw]["samples_per_cpu_s"])
        summary.append(row)
    breakdown = {}
    if "fflib" in fws:
        print("fflib time breakdown (kernels timed alone at the step's shapes):", flush=True)
        for row in summary:
            B = row["batch_size"]
            parts = fflib_breakdown(args.size_list, B, head, args.threads)
            # best cases on both sides, by the same clock
            step_s = row["frameworks"]["fflib"]["step_cpu_s_best" if args.threads == 1 else "step_s_best"]
            total = sum(parts.values())
            breakdown[B] = {"parts": parts, "sum_s": total, "step_s": step_s, "other_s": step_s - total,
                            "gemm_only_s": row["sgemm_s_per_step"]}
            print(f"  B={B}: best step {1e3 * step_s:.1f} ms; GEMMs alone (sgemm at these shapes) "
                  f"{1e3 * row['sgemm_s_per_step']:.1f} ms = {100 * row['sgemm_s_per_step'] / step_s:.0f}%", flush=True)
            for name, v in parts.items():
                print(f"      {name:40s} {1e3 * v:8.1f} ms  {100 * v / step_s:5.1f}%")
            print(f"      {'not accounted':40s} {1e3 * (step_s - total):8.1f} ms  "
                  f"{100 * (step_s - total) / step_s:5.1f}%", flush=True)
    accuracy = {}
    if not args.no_accuracy:
        for fw in [f for f in ("fflib", "torch", "torch_manual") if f in fws][:2]:
            r = run_worker(args, fw, "accuracy")
            accuracy[fw] = r
            print(f"  accuracy {fw}: one-pass {fmt(r['one_pass_error'], '.2f')}%  multi-pass "
                  f"{fmt(r['multi_pass_error'], '.2f')}%  (train {r['train_s']:.0f} s, eval {r['eval_s']:.0f} s)",
                  flush=True)
    torch_version = next((r["torch"] for r in runs if "torch" in r), None)
    res = {"config": {"sizes": args.size_list, "batch_sizes": args.batch_list, "frameworks": fws,
                      "threads": args.threads, "repeats": args.repeats, "steps": args.steps,
                      "seconds": args.seconds, "warmup": args.warmup, "goodness": args.goodness,
                      "threshold": args.threshold, "lr": args.lr, "head": head, "seed": args.seed,
                      "epochs": args.epochs, "acc_batch_size": args.acc_batch_size,
                      "train_samples": args.train_samples, "eval_samples": args.eval_samples,
                      "data_dir": args.data_dir},
           "machine": {**machine, "torch": torch_version},
           "sgemm_square_gflops": max(square), "summary": summary, "runs": runs,
           "fflib_breakdown": {str(k): v for k, v in breakdown.items()}, "accuracy": accuracy,
           "wall_s": time.perf_counter() - t_start}
    (out_dir / "bench_mlp.json").write_text(json.dumps(res, indent=1))
    write_markdown(out_dir / "bench_mlp.md", res)
    print((out_dir / "bench_mlp.md").read_text())
    print(f"wrote {out_dir / 'bench_mlp.json'} and {out_dir / 'bench_mlp.md'} in {res['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
