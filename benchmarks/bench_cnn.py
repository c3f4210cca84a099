#!/usr/bin/env python
"""fflib against plain PyTorch on FF CNNs: per-layer kernels and whole training steps.

Every measurement runs in its own subprocess (this script re-invoked with ``--worker ...``),
so that one framework's memory never inflates the other's peak and a crash stays contained.
The frameworks alternate (fflib, torch, then torch, fflib in the next round, ...) and the
whole alternation repeats; medians over the rounds are reported.

1. Kernel throughput at batch ``--kernel-batch`` (128): Conv2d forward and backward (weight
   and input gradient, plus the bias gradient where the layer has a bias), BatchNorm2d
   training-mode forward and backward, MaxPool2d forward and backward, at the layer shapes of
   the survey networks (MNIST CNN, CIFAR-10 CNN, FF_tiny, and the grouped convolutions of
   CwComp), taken from the models themselves.  fflib: ``fflib._core`` kernels; torch: the
   ATen operators behind ``torch.nn.functional`` (``aten.convolution_backward`` etc., so no
   autograd overhead is timed).  Images/s, GFLOP/s for convolutions (forward 2 N OC OH OW
   (C/groups) k^2; backward twice that), GB/s of minimum memory traffic for batch norm and
   pooling (see the markdown), the ratio fflib/torch.

2. Training throughput (images/s over ``--*-steps`` timed steps after warm-up) and the peak
   resident memory of training (peak RSS after the imports, the data load and the reset of
   the kernel's high-water mark, minus the RSS at that point; ru_maxrss minus the same
   baseline if the mark cannot be reset) for
     * the survey MNIST CNN (``models.build("cnn", "mnist")``: SymBa loss, mean goodness,
       RMS LenNorm, label encoding ``--mnist-encoding``, default "fourier") on MNIST,
     * the survey CIFAR-10 CNN (the same settings, ``--cifar-encoding``) on CIFAR-10,
     * FF_tiny (``models.build("ff_tiny")``: CwC loss, greedy routine) on CIFAR-10,
   fflib against its PyTorch twin, ``fflib.torch.TorchFF`` (same weights, same batches, same
   negative labels, fused torch.optim.Adam, same thread count).  Wall time and CPU time
   (process_time of the worker) per step are recorded.

3. Before timing: a self-test (:func:`self_test`) that one step of each network gives the
   same per-block losses in both frameworks on a real batch (rtol 1e-4).

4. Where fflib's time goes (FF_tiny and the MNIST CNN at the largest batch size): every
   kernel of an fflib step timed alone at the step's shapes (best of several calls), summed
   by layer kind, against the best measured training step; and torch's step by kind from
   torch.profiler (self CPU time per operator).

Writes <out-dir>/bench_cnn.json and <out-dir>/bench_cnn.md.
"""
import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from benchutil import cpu_name, hwm_mb, median, reset_peak_rss, rss_mb  # noqa: E402  (beside this script)

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
K = 10
MODELS = ("mnist_cnn", "cifar_cnn", "ff_tiny")
DATASET = {"mnist_cnn": "mnist", "cifar_cnn": "cifar10", "ff_tiny": "cifar10"}
TITLE = {"mnist_cnn": "MNIST CNN (SymBa)", "cifar_cnn": "CIFAR-10 CNN (SymBa)", "ff_tiny": "FF_tiny (CwC, greedy)"}
WORKERS = ("fflib", "torch", "check", "kernels_fflib", "kernels_torch", "breakdown", "profile")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch-sizes", default="64,128")
    p.add_argument("--threads", default="2",
                   help="BLAS / intra-op threads of both frameworks; a list (e.g. 2,1) runs the suite once per value")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the fflib/torch alternation (training)")
    p.add_argument("--cifar-repeats", type=int, default=2, help="rounds for the (big) CIFAR-10 CNN")
    p.add_argument("--mnist-steps", type=int, default=6, help="timed steps, MNIST CNN")
    p.add_argument("--cifar-steps", type=int, default=2, help="timed steps, CIFAR-10 CNN")
    p.add_argument("--tiny-steps", type=int, default=4, help="timed steps, FF_tiny")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (1 for the CIFAR-10 CNN)")
    p.add_argument("--kernel-batch", type=int, default=128)
    p.add_argument("--kernel-repeats", type=int, default=2, help="rounds of the kernel alternation")
    p.add_argument("--kernel-min-time", type=float, default=0.3, help="seconds of calls per kernel (at least 2 calls)")
    p.add_argument("--kernel-nets", default="MNIST CNN,CIFAR CNN,FF_tiny,CwComp",
                   help="networks whose layer shapes the kernel section times")
    p.add_argument("--skip-kernels", action="store_true")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--skip-check", action="store_true")
    p.add_argument("--skip-breakdown", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run: 1 round, fewer steps, kernels at batch 32")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (all blocks and the head)")
    p.add_argument("--mnist-encoding", default="fourier", choices=("onehot", "fourier", "embedding"))
    p.add_argument("--cifar-encoding", default="fourier", choices=("onehot", "fourier", "embedding"))
    p.add_argument("--torch-neutral", default="stacked", choices=("stacked",),
                   help="torch: neutral rows stacked with the training rows (one batch, as fflib; the "
                        "only way fflib.torch runs them)")
    p.add_argument("--torch-channels-last", action="store_true", help="torch: channels-last convolutions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.environ.get("FFLIB_DATA") or str(REPO.parent / "shared" / "data"))
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    # worker mode (internal)
    p.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    p.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick and not args.worker:
        args.repeats = args.cifar_repeats = args.kernel_repeats = 1
        args.mnist_steps, args.cifar_steps, args.tiny_steps = 3, 1, 2
        args.warmup = 1
        args.kernel_batch = 32
        args.kernel_min_time = 0.1
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.model_list if m not in MODELS]
    if bad:
        p.error(f"unknown models {bad}; choose from {MODELS}")
    args.batch_list = [int(b) for b in args.batch_sizes.split(",")]
    args.thread_list = [int(t) for t in str(args.threads).split(",") if t.strip()]
    if args.worker:
        args.threads = args.thread_list[0]
    return args


# ---------------------------------------------------------------------------- shared helpers

def build_model(name, args):
    """The fflib model of a benchmark network (fresh weights from --seed)."""
    from fflib import models, routines
    if name == "mnist_cnn":
        return models.build("cnn", dataset="mnist", label_encoding=args.mnist_encoding, seed=args.seed)
    if name == "cifar_cnn":
        return models.build("cnn", dataset="cifar10", label_encoding=args.cifar_encoding, seed=args.seed)
    if name == "ff_tiny":
        m = models.build("ff_tiny", seed=args.seed)
        m.set_block_ranges(routines.block_ranges(m, "greedy"))
        return m
    raise ValueError(name)


def label_free(model):
    from fflib.nn import GROUP_LOSSES
    return model.config["loss"] in GROUP_LOSSES + ("xent",)


def steps_of(name, args):
    return {"mnist_cnn": args.mnist_steps, "cifar_cnn": args.cifar_steps, "ff_tiny": args.tiny_steps}[name]


def warmup_of(name, args):
    return 1 if name == "cifar_cnn" else max(args.warmup, 1)




def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_threads(n, torch_too):
    import fflib
    fflib.set_num_threads(n)
    if torch_too:
        import torch
        torch.set_num_threads(n)


def time_calls(fn, min_time, min_calls=2):
    """Per-call wall and CPU seconds of fn after one warm-up call: (median wall, best wall,
    median CPU, number of calls)."""
    fn()
    walls, cpus = [], []
    t_start = time.perf_counter()
    while len(walls) < min_calls or time.perf_counter() - t_start < min_time:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), min(walls), statistics.median(cpus), len(walls)


def negatives(y, rng):
    """One wrong label per sample, uniform over the K-1 wrong classes."""
    return ((y + rng.integers(1, K, len(y))) % K).astype(np.int64)


# ---------------------------------------------------------------------------- kernel specs

def conv_layers(model):
    """(C, H, W, OC, k, stride, pad, groups, bias) of every Conv2d of a model."""
    out = []
    shape = tuple(model.input_shape)
    if model.label_encoding == "embedding":
        shape = (shape[0] + 1,) + shape[1:]
    for i, layer in enumerate(model.layers):
        if layer.kind == "conv2d":
            out.append(("conv", shape, layer))
        elif layer.kind == "batchnorm2d":
            out.append(("bn", shape, layer))
        elif layer.kind == "maxpool2d":
            out.append(("pool", shape, layer))
        shape = tuple(model._net.layer_shape(i))
    return out


def kernel_specs(args):
    """The layer shapes of the survey networks: a list of dicts, duplicates removed."""
    from fflib import models
    nets = [("MNIST CNN", models.build("cnn", dataset="mnist", label_encoding="fourier")),
            ("CIFAR CNN", models.build("cnn", dataset="cifar10", label_encoding="fourier")),
            ("FF_tiny", models.build("ff_tiny")),
            ("CwComp", models.build("cwcomp", dataset="mnist"))]
    wanted = {n.strip() for n in args.kernel_nets.split(",")}
    specs, seen = [], set()
    for net, m in nets:
        if net not in wanted:
            continue
        for kind, (C, H, W), layer in conv_layers(m):
            if kind == "conv":
                if net == "CwComp" and layer.groups == 1:
                    continue   # CwComp: its grouped convolutions only
                key = (kind, C, H, W, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                       layer.groups, layer.use_bias)
                name = (f"{net} conv {C}->{layer.out_channels} k{layer.kernel_size}"
                        f"{f' p{layer.padding}' if layer.padding else ''}"
                        f"{f' g{layer.groups}' if layer.groups > 1 else ''} on {H}x{W}")
                spec = dict(kind=kind, C=C, H=H, W=W, OC=layer.out_channels, k=layer.kernel_size,
                            stride=layer.stride, pad=layer.padding, groups=layer.groups,
                            bias=layer.use_bias)
            elif kind == "bn":
                key = (kind, C, H, W)
                name = f"{net} batchnorm {C}x{H}x{W}"
                spec = dict(kind=kind, C=C, H=H, W=W, eps=layer.eps, momentum=layer.momentum)
            else:
                key = (kind, C, H, W, layer.kernel_size, layer.stride)
                name = f"{net} maxpool k{layer.kernel_size} {C}x{H}x{W}"
                spec = dict(kind=kind, C=C, H=H, W=W, k=layer.kernel_size, stride=layer.stride)
            if key in seen:
                continue
            seen.add(key)
            spec["name"] = name
            spec["net"] = net
            specs.append(spec)
    return specs


def conv_out(spec):
    OH = (spec["H"] + 2 * spec["pad"] - spec["k"]) // spec["stride"] + 1
    OW = (spec["W"] + 2 * spec["pad"] - spec["k"]) // spec["stride"] + 1
    return OH, OW


def kernel_work(spec, N):
    """{op: (flops, bytes)} of each timed operation of a layer at batch N."""
    C, H, W = spec["C"], spec["H"], spec["W"]
    if spec["kind"] == "conv":
        OH, OW = conv_out(spec)
        f = 2.0 * N * spec["OC"] * OH * OW * (C // spec["groups"]) * spec["k"] ** 2
        return {"forward": (f, None), "backward": (2 * f, None)}
    n = N * C * H * W
    if spec["kind"] == "bn":
        # minimum traffic: forward reads x, writes y; backward reads dout and x, writes dx
        return {"forward": (None, 8.0 * n), "backward": (None, 12.0 * n)}
    OH = (H - spec["k"]) // spec["stride"] + 1
    OW = (W - spec["k"]) // spec["stride"] + 1
    m = N * C * OH * OW
    # forward reads x, writes y; backward reads dout, writes dx (the whole input plane)
    return {"forward": (None, 4.0 * n + 4.0 * m), "backward": (None, 4.0 * m + 4.0 * n)}


def make_kernel(fw, spec, op, N, rng):
    """A zero-argument callable running one kernel of layer spec (op forward/backward) on
    preallocated data, for framework fw."""
    C, H, W = spec["C"], spec["H"], spec["W"]
    x = rng.random((N, C, H, W), dtype=np.float32)
    if fw == "fflib":
        from fflib import _core
        if spec["kind"] == "conv":
            OH, OW = conv_out(spec)
            OC, g, k = spec["OC"], spec["groups"], spec["k"]
            w = ((rng.random((OC, C // g, k, k), dtype=np.float32) - 0.5) * 0.1)
            b = np.zeros(OC, np.float32) if spec["bias"] else None
            s, p = spec["stride"], spec["pad"]
            if op == "forward":
                out = np.empty((N, OC, OH, OW), np.float32)
                return lambda: _core.conv2d_forward(out, x, w, b, s, p, g)
            dout = rng.standard_normal((N, OC, OH, OW)).astype(np.float32)
            dx, dw = np.zeros_like(x), np.zeros_like(w)
            db = np.zeros(OC, np.float32) if spec["bias"] else None

            def conv_bwd():
                dx.fill(0.0)   # the network zeroes the input gradient before each backward
                _core.conv2d_backward(dx, dw, db, dout, x, w, s, p, g)
            return conv_bwd
        if spec["kind"] == "bn":
            gamma, beta = np.ones(C, np.float32), np.zeros(C, np.float32)
            rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
            mean, rstd = np.empty(C, np.float32), np.empty(C, np.float32)
            out = np.empty_like(x)
            fwd = lambda: _core.batchnorm2d_forward_train(out, mean, rstd, rm, rv, x, gamma, beta,
                                                          spec["eps"], spec["momentum"])
            if op == "forward":
                return fwd
            fwd()
            dout = rng.standard_normal(x.shape).astype(np.float32)
            dx, dg, dbt = np.zeros_like(x), np.zeros(C, np.float32), np.zeros(C, np.float32)

            def bn_bwd():
                dx.fill(0.0)
                _core.batchnorm2d_backward(dx, dg, dbt, dout, x, mean, rstd, gamma)
            return bn_bwd
        k, s = spec["k"], spec["stride"]
        OH, OW = (H - k) // s + 1, (W - k) // s + 1
        out = np.empty((N, C, OH, OW), np.float32)
        am = np.empty((N, C, OH, OW), np.int32)
        fwd = lambda: _core.maxpool2d_forward(out, am, x, k, s)
        if op == "forward":
            return fwd
        fwd()
        dout = rng.standard_normal(out.shape).astype(np.float32)
        dx = np.zeros_like(x)

        def pool_bwd():
            dx.fill(0.0)
            _core.maxpool2d_backward(dx, dout, am)
        return pool_bwd

    import torch
    aten = torch.ops.aten
    xt = torch.from_numpy(x)
    if spec["kind"] == "conv":
        OH, OW = conv_out(spec)
        OC, g, k = spec["OC"], spec["groups"], spec["k"]
        w = torch.from_numpy((rng.random((OC, C // g, k, k), dtype=np.float32) - 0.5) * 0.1)
        b = torch.zeros(OC) if spec["bias"] else None
        s, p = spec["stride"], spec["pad"]
        if op == "forward":
            return lambda: aten.convolution(xt, w, b, [s, s], [p, p], [1, 1], False, [0, 0], g)
        dout = torch.from_numpy(rng.standard_normal((N, OC, OH, OW)).astype(np.float32))
        mask = [True, True, bool(spec["bias"])]
        return lambda: aten.convolution_backward(dout, xt, w, [OC] if spec["bias"] else None, [s, s], [p, p],
                                                 [1, 1], False, [0, 0], g, mask)
    if spec["kind"] == "bn":
        gamma, beta = torch.ones(C), torch.zeros(C)
        rm, rv = torch.zeros(C), torch.ones(C)
        eps, mom = spec["eps"], spec["momentum"]
        fwd = lambda: aten.native_batch_norm(xt, gamma, beta, rm, rv, True, mom, eps)
        if op == "forward":
            return fwd
        _, smean, sinv = fwd()
        dout = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
        return lambda: aten.native_batch_norm_backward(dout, xt, gamma, rm, rv, smean, sinv, True, eps,
                                                       [True, True, True])
    k, s = spec["k"], spec["stride"]
    fwd = lambda: aten.max_pool2d_with_indices(xt, [k, k], [s, s])
    if op == "forward":
        return fwd
    out, idx = fwd()
    dout = torch.from_numpy(rng.standard_normal(tuple(out.shape)).astype(np.float32))
    return lambda: aten.max_pool2d_with_indices_backward(dout, xt, [k, k], [s, s], [0, 0], [1, 1], False, idx)


def worker_kernels(args):
    fw = args.worker.split("_", 1)[1]
    set_threads(args.threads, fw == "torch")
    if fw == "torch":
        import torch
        ctx = torch.no_grad()
        ctx.__enter__()
    N = args.kernel_batch
    rows = []
    for spec in kernel_specs(args):
        work = kernel_work(spec, N)
        for op in ("forward", "backward"):
            rng = np.random.default_rng(7)
            fn = make_kernel(fw, spec, op, N, rng)
            wall, best, cpu, calls = time_calls(fn, args.kernel_min_time)
            del fn
            gc.collect()
            flops, nbytes = work[op]
            rows.append({"name": spec["name"], "net": spec["net"], "kind": spec["kind"], "op": op,
                         "spec": {k: v for k, v in spec.items() if k not in ("name", "net")},
                         "s": wall, "s_best": best, "cpu_s": cpu, "calls": calls,
                         "flops": flops, "bytes": nbytes})
    return {"framework": fw, "batch": N, "threads": args.threads, "rows": rows}


# ---------------------------------------------------------------------------- training workers

def worker_train(args):
    fw, name, B = args.worker, args.model, args.batch_size
    with np.load(args.data_file) as d:
        x, y = np.ascontiguousarray(d["x"]), np.ascontiguousarray(d["y"])
    rng = np.random.default_rng(args.seed + 1)
    neg = negatives(y, rng)
    if fw == "torch":
        import torch  # noqa: F401  (imports belong to the baseline)
        import fflib.torch  # noqa: F401
    import fflib  # noqa: F401
    from fflib import models, routines  # noqa: F401
    set_threads(args.threads, fw == "torch")
    gc.collect()
    peak_reset = reset_peak_rss()
    base, base_maxrss = rss_mb(), maxrss_mb()
    model = build_model(name, args)
    free = label_free(model)
    opt = fflib.Adam(model, lr=args.lr)
    if fw == "torch":
        net = fflib.torch.TorchFF(model, opt, fused=True, channels_last=args.torch_channels_last)
        del model, opt
        gc.collect()
        step = lambda xb, yb, nb: net.step(xb, yb, None if free else nb)
    else:
        D = int(np.prod(x.shape[1:]))
        step = lambda xb, yb, nb: model.train_step(xb.reshape(len(xb), D), yb, None if free else nb)
    n_batches = len(y) // B
    pos = 0
    walls, cpus = [], []

    def run(n):
        nonlocal pos
        losses = None
        for _ in range(n):
            s = (pos % n_batches) * B
            t0, c0 = time.perf_counter(), time.process_time()
            losses = step(x[s:s + B], y[s:s + B], neg[s:s + B])
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            pos += 1
        return losses

    run(warmup_of(name, args))
    warm = list(walls)
    walls.clear()
    cpus.clear()
    n = args.steps
    t0, c0 = time.perf_counter(), time.process_time()
    losses = run(n)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    end_maxrss = maxrss_mb()
    peak = (hwm_mb() if peak_reset else end_maxrss) - base
    out = {"framework": fw, "model": name, "batch_size": B, "steps": n, "seconds": elapsed,
           "images_per_s": n * B / elapsed, "step_s": elapsed / n, "step_s_min": min(walls),
           "step_times": walls, "warmup_s": warm, "cpu_s": cpu, "step_cpu_s": cpu / n,
           "images_per_cpu_s": n * B / cpu, "cpu_per_wall": cpu / elapsed,
           "peak_mb": peak, "maxrss_minus_base_mb": end_maxrss - base, "base_rss_mb": base,
           "maxrss_at_base_mb": base_maxrss, "peak_reset": peak_reset,
           "final_losses": [float(v) for v in losses], "threads": args.threads,
           "load_average_at_end": list(os.getloadavg())}
    if fw == "torch":
        out["torch"] = torch.__version__
    return out


def self_test(model, x, y, neg=None, steps=2, lr=1e-3, rtol=1e-4, channels_last=False):
    """Train ``model`` (fflib, fresh) and its fflib.torch twin for ``steps`` steps on the same
    batch; returns the per-step losses of both and the largest relative difference per step.
    Raises AssertionError if the first step's losses (a pure forward of the same weights)
    differ by more than rtol, or a later step's by more than 10 rtol (after Adam updates,
    float32 rounding of near-zero gradients is amplified)."""
    import fflib
    import fflib.torch
    twin = fflib.torch.TorchFF(model, fflib.Adam(model, lr=lr), fused=True, channels_last=channels_last)
    x = np.ascontiguousarray(x, dtype=np.float32)
    flat = x.reshape(len(x), -1)
    out = {"fflib": [], "torch": [], "max_rel_diff": []}
    for s in range(steps):
        lf = np.asarray(model.train_step(flat, y, neg), dtype=np.float64)
        lt = twin.step(x, y, neg).astype(np.float64)
        n = len(lf) if model.has_head else len(lf) - 1
        rel = np.abs(lf[:n] - lt[:n]) / np.maximum(np.abs(lf[:n]), 1e-12)
        out["fflib"].append(lf[:n].tolist())
        out["torch"].append(lt[:n].tolist())
        out["max_rel_diff"].append(float(rel.max()))
        tol = rtol if s == 0 else 10 * rtol
        assert np.allclose(lt[:n], lf[:n], rtol=tol, atol=1e-6), (
            f"step {s}: fflib losses {lf[:n]} vs torch {lt[:n]} (max rel diff {rel.max():.2e})")
    return out


def worker_check(args):
    """One step of each network in both frameworks on a real batch: same per-block losses."""
    set_threads(args.threads, True)
    res = {}
    for name in args.model_list:
        with np.load(os.path.join(args.data_file, DATASET[name] + ".npz")) as d:
            B = 16
            x, y = np.ascontiguousarray(d["x"][:B]), np.ascontiguousarray(d["y"][:B])
        neg = negatives(y, np.random.default_rng(args.seed + 2))
        model = build_model(name, args)
        t0 = time.perf_counter()
        try:
            r = self_test(model, x, y, None if label_free(model) else neg, steps=2, lr=args.lr,
                          channels_last=args.torch_channels_last)
            r["ok"] = True
        except AssertionError as e:
            r = {"ok": False, "error": str(e)}
        r["batch"] = B
        r["seconds"] = time.perf_counter() - t0
        res[name] = r
    return res


# ---------------------------------------------------------------------------- where fflib's time goes

def worker_breakdown(args):
    """Seconds per step of each kind of work in an fflib training step of args.model at
    batch B, each kernel timed alone (best of several calls) at the step's shapes, following
    the core's block forward/backward (csrc/ff_net.c): forward of all R rows, backward of the
    T training rows, input gradients only where something trainable lies below in the block."""
    import fflib
    from fflib import _core
    from fflib.nn import GOODNESS, NORMS
    set_threads(args.threads, False)
    B = args.batch_size
    model = build_model(args.model, args)
    cfg = model.config
    free = label_free(model)
    head = model.has_head
    T = B if free else 2 * B
    R = T if (free or not head) else 3 * B
    rng = np.random.default_rng(5)
    parts = OrderedDict((k, 0.0) for k in (
        "conv forward", "conv backward", "batchnorm fwd+bwd", "relu fwd+bwd", "maxpool fwd+bwd",
        "lennorm fwd+bwd", "linear fwd+bwd", "goodness + loss", "head", "Adam"))

    def tc(fn):
        return time_calls(fn, 0.15, 3)[1]   # best of the calls

    shape = tuple(model.input_shape)
    if model.label_encoding == "embedding":
        shape = (shape[0] + 1,) + shape[1:]
    nparams = 0
    for first, last in model.blocks:
        ins, outs, saved = [], [], []
        h = rng.random((R,) + shape, dtype=np.float32)
        for i in range(first, last):     # forward, R rows
            layer = model.layers[i]
            oshape = tuple(model._net.layer_shape(i))
            ins.append(h)
            if layer.kind == "conv2d":
                out = np.empty((R,) + oshape, np.float32)
                w, b = np.array(layer.weight), (None if layer.bias is None else np.array(layer.bias))
                parts["conv forward"] += tc(lambda: _core.conv2d_forward(out, h, w, b, layer.stride, layer.padding,
                                                                         layer.groups))
                saved.append((w, b))
                nparams += w.size + (0 if b is None else b.size)
            elif layer.kind == "batchnorm2d":
                out = np.empty_like(h)
                C = shape[0]
                mean, rstd = np.empty(C, np.float32), np.empty(C, np.float32)
                rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
                gm, bt = np.ones(C, np.float32), np.zeros(C, np.float32)
                hT, oT = h[:T], out[:T]
                parts["batchnorm fwd+bwd"] += tc(lambda: _core.batchnorm2d_forward_train(
                    oT, mean, rstd, rm, rv, hT, gm, bt, layer.eps, layer.momentum))
                saved.append((mean, rstd, gm))
                nparams += 2 * C
            elif layer.kind == "relu":
                out = np.empty_like(h)
                parts["relu fwd+bwd"] += tc(lambda: _core.relu_forward(out, h))
                saved.append(None)
            elif layer.kind == "maxpool2d":
                out = np.empty((R,) + oshape, np.float32)
                am = np.empty(out.shape, np.int32)
                parts["maxpool fwd+bwd"] += tc(lambda: _core.maxpool2d_forward(out, am, h, layer.kernel_size,
                                                                               layer.stride))
                saved.append(am)
            elif layer.kind == "lennorm":
                flat = h.reshape(R, -1)
                out = np.empty_like(flat)
                sc = np.empty(R, np.float32)
                kind = NORMS[layer.norm]
                parts["lennorm fwd+bwd"] += tc(lambda: _core.lennorm_forward(out, sc, flat, kind, layer.eps))
                out = out.reshape(h.shape)
                saved.append(sc)
            elif layer.kind == "flatten":
                out = h.reshape(R, -1)
                saved.append(None)
            elif layer.kind == "linear":
                flat = h.reshape(R, -1)
                out = np.empty((R, layer.weight.shape[0]), np.float32)
                w, b = np.array(layer.weight), (None if layer.bias is None else np.array(layer.bias))
                parts["linear fwd+bwd"] += tc(lambda: _core.linear_forward(out, flat, w, b))
                saved.append((w, b))
                nparams += w.size + (0 if b is None else b.size)
            else:
                raise ValueError(layer.kind)
            outs.append(out)
            h = out
            shape = oshape
        # the block's loss on the T training rows
        act = np.ascontiguousarray(outs[-1][:T])
        dact = np.zeros_like(act)
        if free:
            G, dG = np.empty((B, K), np.float32), np.empty((B, K), np.float32)
            yb = rng.integers(0, K, B).astype(np.int64)

            def loss_work():
                _core.group_goodness_forward(G, act, K)
                _core.softmax_xent(dG, None, G, yb)
                _core.group_goodness_backward(dact, dG, act, K)
        else:
            a2, d2 = act.reshape(T, -1), dact.reshape(T, -1)
            g, dg = np.empty(T, np.float32), np.empty(T, np.float32)
            gk = GOODNESS[cfg["goodness"]]

            def loss_work():
                _core.goodness_forward(g, a2, gk)
                if cfg["loss"] == "symba":
                    _core.symba_loss(dg[:B], dg[B:], g[:B], g[B:], cfg["alpha"])
                else:
                    _core.ff_loss(dg[:B], dg[B:], g[:B], g[B:], cfg["threshold"])
                _core.goodness_backward(d2, dg, a2, gk)
        parts["goodness + loss"] += tc(loss_work)
        # backward, T rows
        dcur = dact
        for j in range(last - 1, first - 1, -1):
            layer = model.layers[j]
            k = j - first
            below = any(model.layers[t].kind in ("conv2d", "linear", "batchnorm2d") for t in range(first, j))
            below = below or (j == 0 and model.label_encoding == "embedding")
            xin = np.ascontiguousarray(ins[k][:T])
            dx = np.zeros_like(xin) if below else None
            dz = (lambda: dx.fill(0.0)) if below else (lambda: None)
            yout = outs[k][:T]
            if layer.kind == "conv2d":
                w, b = saved[k]
                dw, db = np.zeros_like(w), (None if b is None else np.zeros_like(b))
                dc = dcur.reshape((T,) + outs[k].shape[1:])
                parts["conv backward"] += tc(lambda: (dz(), _core.conv2d_backward(
                    dx, dw, db, dc, xin, w, layer.stride, layer.padding, layer.groups)))
            elif layer.kind == "batchnorm2d":
                mean, rstd, gm = saved[k]
                dgm, dbt = np.zeros_like(gm), np.zeros_like(gm)
                dc = dcur.reshape(xin.shape)
                parts["batchnorm fwd+bwd"] += tc(lambda: (dz(), _core.batchnorm2d_backward(
                    dx, dgm, dbt, dc, xin, mean, rstd, gm)))
            elif layer.kind == "relu" and below:
                yc, dc = np.ascontiguousarray(yout), dcur.reshape(yout.shape)
                parts["relu fwd+bwd"] += tc(lambda: (dz(), _core.relu_backward(dx, dc, yc)))
            elif layer.kind == "maxpool2d" and below:
                am = np.ascontiguousarray(saved[k][:T])
                dc = dcur.reshape(am.shape)
                parts["maxpool fwd+bwd"] += tc(lambda: (dz(), _core.maxpool2d_backward(dx, dc, am)))
            elif layer.kind == "lennorm" and below:
                x2, d2, dx2 = xin.reshape(T, -1), dcur.reshape(T, -1), dx.reshape(T, -1)
                sc = saved[k][:T].copy()
                parts["lennorm fwd+bwd"] += tc(lambda: (dz(), _core.lennorm_backward(
                    dx2, d2, x2, sc, NORMS[layer.norm], layer.eps)))
            elif layer.kind == "linear":
                w, b = saved[k]
                dw, db = np.zeros_like(w), (None if b is None else np.zeros_like(b))
                x2, d2 = xin.reshape(T, -1), dcur.reshape(T, -1)
                dx2 = None if dx is None else dx.reshape(T, -1)
                parts["linear fwd+bwd"] += tc(lambda: (dz(), _core.linear_backward(dx2, dw, db, d2, x2, w)))
            if dx is None:
                break
            dcur = dx
    if head:
        F_ = model.head_weight.shape[1]
        feat = rng.random((B, F_), dtype=np.float32)
        Wh, bh = np.array(model.head_weight), np.array(model.head_bias)
        logits, dl = np.empty((B, K), np.float32), np.empty((B, K), np.float32)
        dWh, dbh = np.zeros_like(Wh), np.zeros_like(bh)
        yb = rng.integers(0, K, B).astype(np.int64)
        fn_ = np.empty_like(feat)
        sc = np.empty(B, np.float32)

        def head_work():
            _core.lennorm_forward(fn_, sc, feat, NORMS[cfg["norm"]], cfg["norm_eps"])
            _core.linear_forward(logits, fn_, Wh, bh)
            _core.softmax_xent(dl, None, logits, yb)
            _core.linear_backward(None, dWh, dbh, dl, fn_, Wh)
        parts["head"] += tc(head_work)
        nparams += Wh.size + bh.size
    p = np.zeros(nparams, np.float32)
    m_, v_, gr = np.zeros_like(p), np.zeros_like(p), np.full_like(p, 1e-3)
    parts["Adam"] += tc(lambda: _core.adam_step(p, m_, v_, gr, 1e-3, 0.9, 0.999, 1e-8, 0.0, 5))
    return {"model": args.model, "batch_size": B, "rows_forward": R, "rows_backward": T,
            "parts": parts, "sum_s": sum(parts.values())}


# torch.profiler operator names (lower case, no underscores) -> kind, first match wins
TORCH_KINDS = (
    ("conv backward", lambda nm: "conv" in nm and "backward" in nm),
    ("conv forward", lambda nm: "conv" in nm),
    ("batchnorm fwd+bwd", lambda nm: "batchnorm" in nm),
    ("relu fwd+bwd", lambda nm: "relu" in nm or "thresholdbackward" in nm),
    ("maxpool fwd+bwd", lambda nm: "maxpool" in nm),
    ("Adam", lambda nm: "adam" in nm),
)


def worker_profile(args):
    """torch's training step by operator kind: torch.profiler self CPU time per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    import fflib
    import fflib.torch
    set_threads(args.threads, True)
    B = args.batch_size
    with np.load(args.data_file) as d:
        x, y = np.ascontiguousarray(d["x"][:3 * B]), np.ascontiguousarray(d["y"][:3 * B])
    neg = negatives(y, np.random.default_rng(args.seed + 1))
    model = build_model(args.model, args)
    free = label_free(model)
    net = fflib.torch.TorchFF(model, fflib.Adam(model, lr=args.lr), fused=True,
                              channels_last=args.torch_channels_last)
    step = lambda s: net.step(x[s:s + B], y[s:s + B], None if free else neg[s:s + B])
    step(0)
    n = 2
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for i in range(n):
            step(((i + 1) % 3) * B)
        wall = (time.perf_counter() - t0) / n
    kinds = OrderedDict((k, 0.0) for k in (
        "conv forward", "conv backward", "batchnorm fwd+bwd", "relu fwd+bwd", "maxpool fwd+bwd",
        "Adam", "other (elementwise, reductions, copies, autograd)"))
    for ev in prof.key_averages():
        nm = ev.key.lower().replace("_", "")   # aten::convolution_backward, ConvolutionBackward0, ...
        t = ev.self_cpu_time_total / 1e6 / n
        kind = next((k for k, test in TORCH_KINDS if test(nm)), "other (elementwise, reductions, copies, autograd)")
        kinds[kind] += t
    return {"model": args.model, "batch_size": B, "profiled_step_s": wall, "kinds": kinds}


# ---------------------------------------------------------------------------- parent

def run_worker(args, worker, extra=()):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--threads", str(args.threads),
           "--seed", str(args.seed), "--lr", repr(args.lr), "--warmup", str(args.warmup),
           "--kernel-batch", str(args.kernel_batch), "--kernel-min-time", repr(args.kernel_min_time),
           "--mnist-encoding", args.mnist_encoding, "--cifar-encoding", args.cifar_encoding,
           "--torch-neutral", args.torch_neutral, "--models", args.models, "--kernel-nets", args.kernel_nets,
           "--data-dir", args.data_dir] + (["--torch-channels-last"] if args.torch_channels_last else []) + list(extra)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {worker} {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_data(args, tmp):
    """Shuffled subsets of the real training sets (as many images as the runs need), saved
    once as .npz so that the workers do not each decompress the whole dataset."""
    import fflib
    need = {"mnist": 16, "cifar10": 16}
    for name in args.model_list:
        steps = max(steps_of(name, args) + warmup_of(name, args), 3)
        need[DATASET[name]] = max(need[DATASET[name]], steps * max(args.batch_list))
    files = {}
    for ds, n in need.items():
        if ds not in {DATASET[m] for m in args.model_list}:
            continue
        t0 = time.perf_counter()
        loader = fflib.datasets.load_mnist if ds == "mnist" else fflib.datasets.load_cifar10
        x, y = loader(root=args.data_dir, train=True)
        idx = np.random.default_rng(args.seed).permutation(len(y))[:n]
        path = os.path.join(tmp, f"{ds}.npz")
        np.savez(path, x=np.ascontiguousarray(x[idx], dtype=np.float32), y=y[idx].astype(np.int64))
        files[ds] = path
        print(f"  data: {ds}: {n} of {len(y)} training images ({time.perf_counter() - t0:.1f} s)", flush=True)
    return files


def machine_info(args):
    import fflib
    cpu = cpu_name()
    load = list(os.getloadavg())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "fflib_blas": fflib.blas_name(), "threads": args.thread_list,
            "load_average_at_start": load, "loaded": load[0] > 1.5,
            "fflib_core_mtime": time.ctime(os.path.getmtime(fflib._core.__file__)),
            "git_head": git_head(), "csrc_modified": csrc_modified(),
            "sgemm_50x450x512_s_per_call_at_start": blas_probe(max(args.thread_list))}


def blas_probe(threads):
    """Seconds per call of a small sgemm (50x450 @ 450x512, a conv GEMM of FF_tiny) through
    fflib's OpenBLAS at 1 and at `threads` threads: on an oversubscribed machine a threaded
    BLAS call can cost a scheduler time slice, which dominates fflib's many-GEMM convolutions."""
    import fflib
    from fflib import _core
    rng = np.random.default_rng(0)
    A = rng.random((50, 450), dtype=np.float32)
    Bm = rng.random((450, 512), dtype=np.float32)
    C = np.empty((50, 512), np.float32)
    out = {}
    for t in sorted({1, threads}):
        fflib.set_num_threads(t)
        _core.sgemm(C, A, Bm)
        n, t0 = 0, time.perf_counter()
        while n < 5 or time.perf_counter() - t0 < 0.3:
            _core.sgemm(C, A, Bm)
            n += 1
        out[str(t)] = (time.perf_counter() - t0) / n
    fflib.set_num_threads(threads)
    return out


def git_head():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=str(REPO)).stdout.strip()
    except OSError:
        return None


def csrc_modified():
    """C sources with uncommitted changes (the core under test may not be the committed one)."""
    try:
        out = subprocess.run(["git", "status", "--short", "--", "csrc"], capture_output=True, text=True,
                             cwd=str(REPO)).stdout
        return [line[3:] for line in out.splitlines() if line.strip()]
    except OSError:
        return None


def fmt(v, spec=".0f"):
    return "-" if v is None else format(v, spec)


def summarize_kernels(runs):
    """Median over rounds per (layer, op, framework)."""
    table = OrderedDict()
    for r in runs:
        fw = r["framework"]
        for row in r["rows"]:
            key = (row["name"], row["op"])
            e = table.setdefault(key, {"name": row["name"], "net": row["net"], "kind": row["kind"], "op": row["op"],
                                       "flops": row["flops"], "bytes": row["bytes"], "batch": r["batch"],
                                       "s": {}, "cpu_s": {}, "s_best": {}})
            e["s"].setdefault(fw, []).append(row["s"])
            e["cpu_s"].setdefault(fw, []).append(row["cpu_s"])
            e["s_best"].setdefault(fw, []).append(row["s_best"])
    out = []
    for e in table.values():
        N = e["batch"]
        res = {k: e[k] for k in ("name", "net", "kind", "op", "flops", "bytes", "batch")}
        for fw in ("fflib", "torch"):
            if fw not in e["s"]:
                continue
            # per round: the best call (least disturbed by other jobs) and the median call
            best, med = median(e["s_best"][fw]), median(e["s"][fw])
            res[fw] = {"s": best, "s_median_call": med, "cpu_s": median(e["cpu_s"][fw]),
                       "images_per_s": N / best,
                       "gflops": e["flops"] / best / 1e9 if e["flops"] else None,
                       "gbytes_per_s": e["bytes"] / best / 1e9 if e["bytes"] else None}
        if "fflib" in res and "torch" in res:
            res["speed_fflib_over_torch"] = res["torch"]["s"] / res["fflib"]["s"]
            res["speed_fflib_over_torch_median_call"] = res["torch"]["s_median_call"] / res["fflib"]["s_median_call"]
            res["cpu_speed_fflib_over_torch"] = res["torch"]["cpu_s"] / res["fflib"]["cpu_s"]
        out.append(res)
    return out


def summarize_training(runs, args):
    out = []
    for name in args.model_list:
        for B in args.batch_list:
            row = {"model": name, "batch_size": B, "frameworks": {}}
            for fw in ("fflib", "torch"):
                mine = [r for r in runs if r["model"] == name and r["batch_size"] == B and r["framework"] == fw]
                if not mine:
                    continue
                row["frameworks"][fw] = {
                    "images_per_s": median([r["images_per_s"] for r in mine]),
                    "images_per_s_all": [r["images_per_s"] for r in mine],
                    "step_s": median([r["step_s"] for r in mine]),
                    "step_s_best": min(r["step_s_min"] for r in mine),
                    "images_per_cpu_s": median([r["images_per_cpu_s"] for r in mine]),
                    "cpu_per_wall": median([r["cpu_per_wall"] for r in mine]),
                    "peak_mb": median([r["peak_mb"] for r in mine]),
                    "peak_mb_max": max(r["peak_mb"] for r in mine),
                    "maxrss_minus_base_mb": median([r["maxrss_minus_base_mb"] for r in mine]),
                    "steps": mine[0]["steps"], "rounds": len(mine)}
            f, t = row["frameworks"].get("fflib"), row["frameworks"].get("torch")
            if f and t:
                row["speed_fflib_over_torch"] = f["images_per_s"] / t["images_per_s"]
                row["cpu_speed_fflib_over_torch"] = f["images_per_cpu_s"] / t["images_per_cpu_s"]
                row["memory_torch_over_fflib"] = t["peak_mb"] / max(f["peak_mb"], 1e-9)
            out.append(row)
    return out


def write_suite(L, suite, cfg):
    """The markdown sections of one thread count."""
    L += [f"## {suite['threads']} thread(s) per framework", "",
          "Load average at the start / end of this part: " +
          " / ".join(", ".join(f"{v:.1f}" for v in suite[k]) for k in ("load_average_at_start", "load_average_at_end"))
          + ".", ""]
    if suite.get("kernels"):
        kb = suite["kernels"][0]["batch"]
        L += [f"### Kernels at batch {kb}", "",
              "fflib: `fflib._core` kernels (conv = im2col + OpenBLAS sgemm); torch: the ATen operators "
              "(`convolution`, `convolution_backward`, `native_batch_norm(_backward)`, "
              "`max_pool2d_with_indices(_backward)`).  Conv backward = weight + input (+ bias) gradient. "
              "Time per call: the best call of a worker (the least disturbed by the other jobs on the machine; "
              "median over the rounds); the throughput columns use it.  Throughput: GFLOP/s for convolutions "
              "(forward 2 N OC OH OW (C/groups) k^2, backward twice that); for batch norm and pooling GB/s of "
              "minimum memory traffic (BN forward: read x + write y, backward: read dout, x + write dx; pool "
              "forward: read x + write y, backward: read dout + write dx).  speed = torch time / fflib time "
              "(> 1: fflib faster), by the best call, by the median call, and by the median call's CPU time "
              "(all threads of the process).", "",
              "| layer | op | fflib ms | torch ms | fflib img/s | torch img/s | fflib GFLOP/s or GB/s | "
              "torch GFLOP/s or GB/s | speed fflib/torch | (median call) | (CPU time) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in suite["kernels"]:
            f, t = e.get("fflib"), e.get("torch")
            unit = "gflops" if e["kind"] == "conv" else "gbytes_per_s"
            sfx = "" if e["kind"] == "conv" else " GB/s"
            L.append(f"| {e['name']} | {e['op']} | {fmt(f and 1e3 * f['s'], '.2f')} | {fmt(t and 1e3 * t['s'], '.2f')} | "
                     f"{fmt(f and f['images_per_s'])} | {fmt(t and t['images_per_s'])} | "
                     f"{fmt(f and f[unit], '.1f')}{sfx} | {fmt(t and t[unit], '.1f')}{sfx} | "
                     f"**{fmt(e.get('speed_fflib_over_torch'), '.2f')}** | "
                     f"{fmt(e.get('speed_fflib_over_torch_median_call'), '.2f')} | "
                     f"{fmt(e.get('cpu_speed_fflib_over_torch'), '.2f')} |")
        L.append("")
    if suite.get("training"):
        L += ["### Training throughput and memory", "",
              f"Images/s over a fixed number of timed steps after warm-up (a step = positive + negative "
              f"(+ neutral) rows for the SymBa CNNs, B rows for CwC), same weights, batches and negative labels. "
              f"MNIST CNN / CIFAR CNN label encoding: {cfg['mnist_encoding']} / {cfg['cifar_encoding']}; torch neutral "
              f"rows: {cfg['torch_neutral']}{'; torch channels-last' if cfg['torch_channels_last'] else ''}. "
              "Peak MB: peak RSS during training minus the RSS after the imports and the data load "
              "(model, optimiser state, activations, workspaces). speed = fflib/torch images/s; "
              "memory = torch/fflib peak MB (> 1: fflib leaner).  CPU-s: images per CPU-second of the worker "
              "(all its threads).", "",
              "| network | batch | fflib img/s | torch img/s | speed fflib/torch | fflib img/CPU-s | torch img/CPU-s | "
              "CPU speed fflib/torch | fflib peak MB | torch peak MB | memory torch/fflib | steps x rounds |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in suite["training"]:
            f, t = row["frameworks"].get("fflib"), row["frameworks"].get("torch")
            L.append(f"| {TITLE[row['model']]} | {row['batch_size']} | {fmt(f and f['images_per_s'], '.1f')} | "
                     f"{fmt(t and t['images_per_s'], '.1f')} | {fmt(row.get('speed_fflib_over_torch'), '.2f')} | "
                     f"{fmt(f and f['images_per_cpu_s'], '.1f')} | {fmt(t and t['images_per_cpu_s'], '.1f')} | "
                     f"{fmt(row.get('cpu_speed_fflib_over_torch'), '.2f')} | {fmt(f and f['peak_mb'])} | "
                     f"{fmt(t and t['peak_mb'])} | {fmt(row.get('memory_torch_over_fflib'), '.2f')} | "
                     f"{(f or t)['steps']} x {(f or t)['rounds']} |")
        L.append("")
    for key, bd in (suite.get("breakdown") or {}).items():
        prof = (suite.get("torch_profile") or {}).get(key)
        L += [f"### Where the time goes: {TITLE[bd['model']]}, batch {bd['batch_size']}", "",
              f"fflib: each kernel of the step timed alone with `fflib._core` at the step's shapes (forward "
              f"{bd['rows_forward']} rows, backward {bd['rows_backward']} rows; best of several calls), against "
              f"the best measured fflib step.  torch: torch.profiler self CPU time per operator over "
              f"{'a profiled step' if prof else '-'}, against the profiled step's wall time.", "",
              "| kind | fflib ms | fflib % of step | torch ms | torch % of step |", "|---|---|---|---|---|"]
        step = bd.get("step_s") or bd["sum_s"]
        pk = prof["kinds"] if prof else {}
        pstep = prof["profiled_step_s"] if prof else None
        for kname, v in bd["parts"].items():
            tv = pk.get(kname)
            has = tv is not None
            L.append(f"| {kname} | {1e3 * v:.1f} | {100 * v / step:.0f}% | {fmt(1e3 * tv if has else None, '.1f')} | "
                     f"{fmt(100 * tv / pstep if has else None, '.0f')}{'%' if has else ''} |")
        for kname, tv in pk.items():
            if kname not in bd["parts"]:
                L.append(f"| {kname} | - | - | {1e3 * tv:.1f} | {100 * tv / pstep:.0f}% |")
        L.append(f"| sum of the kernels | {1e3 * bd['sum_s']:.1f} | {100 * bd['sum_s'] / step:.0f}% | "
                 f"{fmt(pk and 1e3 * sum(pk.values()), '.1f')} | |")
        L.append(f"| measured step (best fflib / profiled torch) | {1e3 * step:.1f} | 100% | {fmt(pstep and 1e3 * pstep, '.1f')} | 100% |")
        L.append("")


def write_markdown(path, res):
    cfg, mach = res["config"], res["machine"]
    L = ["# FF CNN training: fflib vs PyTorch", ""]
    if not res.get("complete", True):
        L += ["**Partial results: the run has not finished (or was interrupted).**", ""]
    for note in res.get("notes", []):
        L += [f"Note: {note}", ""]
    load = ", ".join(f"{v:.1f}" for v in mach["load_average_at_start"])
    L.append(f"CPU: {mach['cpu']} ({mach['cores']} cores, shared with other jobs: load average {load} at start"
             f"{' -- LOADED (> 1.5): timings are noisy, compare ratios within a round' if mach['loaded'] else ''}). "
             f"{', '.join(map(str, cfg['thread_list']))} thread(s) in both frameworks; fflib BLAS: {mach['fflib_blas']}; torch "
             f"{mach.get('torch') or '-'} (oneDNN convolutions), float32. Every measurement in its own process, "
             "fflib and torch alternating; medians over the rounds.")
    if res.get("command"):
        L += ["", f"Command: `{res['command'].strip()}` (git {mach.get('git_head') or '-'}"
              f"{', uncommitted C changes: ' + ', '.join(mach['csrc_modified']) if mach.get('csrc_modified') else ''}; "
              f"compiled core built {mach.get('fflib_core_mtime')}); {res['wall_s']:.0f} s."]
    L.append("")
    for when in ("start", "end"):
        pr = mach.get(f"sgemm_50x450x512_s_per_call_at_{when}")
        if pr:
            L.append(f"BLAS probe at the {when} (one 50x450 @ 450x512 sgemm, a GEMM of FF_tiny's convolutions, "
                     "through fflib's OpenBLAS): " + ", ".join(f"{k} thread(s) {1e3 * v:.2f} ms/call" for k, v in pr.items())
                     + ".  (A threaded call far slower than the single-threaded one means the machine is "
                     "oversubscribed and every threaded GEMM waits for a time slice: fflib's convolutions, "
                     "which issue many GEMMs per layer, then measure the machine, not the code.)")
    L.append("")
    chk = res.get("check")
    if chk:
        L += ["## Same algorithm check", "",
              "One fflib step and one torch step from the same weights on a real batch of 16, then a second "
              "step after each framework's own Adam update: the per-block losses (and the head loss) agree to:", ""]
        for name, r in chk.items():
            if r.get("ok"):
                L.append(f"* {TITLE[name]}: max relative difference {r['max_rel_diff'][0]:.1e} (step 1), "
                         f"{r['max_rel_diff'][1]:.1e} (step 2)")
            else:
                L.append(f"* {TITLE[name]}: **MISMATCH**: {r.get('error')}")
        L.append("")
    for suite in res.get("suites", []):
        write_suite(L, suite, cfg)
    Path(path).write_text("\n".join(L) + "\n")


def run_suite(args, files, suite, save):
    """Kernels, training and the time breakdown at args.threads threads, into the dict suite;
    save() after each part (a killed run keeps what it measured)."""
    suite.update({"threads": args.threads, "load_average_at_start": list(os.getloadavg())})
    kernel_runs = []
    if not args.skip_kernels:
        for rnd in range(args.kernel_repeats):
            order = ("fflib", "torch") if rnd % 2 == 0 else ("torch", "fflib")
            for fw in order:
                t0 = time.perf_counter()
                r = run_worker(args, f"kernels_{fw}")
                r["round"] = rnd
                kernel_runs.append(r)
                print(f"  kernels round {rnd} {fw}: {time.perf_counter() - t0:.0f} s", flush=True)
        suite["kernels"] = summarize_kernels(kernel_runs)
        suite["kernel_runs"] = kernel_runs
        suite["load_average_at_end"] = list(os.getloadavg())
        save()
    train_runs = []
    if not args.skip_training:
        for name in args.model_list:
            rounds = args.cifar_repeats if name == "cifar_cnn" else args.repeats
            for rnd in range(rounds):
                order = ("fflib", "torch") if rnd % 2 == 0 else ("torch", "fflib")
                for B in args.batch_list:
                    for fw in order:
                        r = run_worker(args, fw, ["--model", name, "--batch-size", str(B), "--steps",
                                                  str(steps_of(name, args)), "--data-file", files[DATASET[name]]])
                        r["round"] = rnd
                        train_runs.append(r)
                        print(f"  {name:9s} round {rnd} B={B:4d} {fw:6s} {r['images_per_s']:8.1f} img/s "
                              f"({1e3 * r['step_s']:.0f} ms/step, CPU {r['cpu_per_wall']:.2f}x wall)  "
                              f"peak {r['peak_mb']:.0f} MB", flush=True)
        suite["training"] = summarize_training(train_runs, args)
        suite["training_runs"] = train_runs
        suite["load_average_at_end"] = list(os.getloadavg())
        save()
    if not args.skip_breakdown:
        suite["breakdown"], suite["torch_profile"] = {}, {}
        B = max(args.batch_list)
        for name in [m for m in ("ff_tiny", "mnist_cnn") if m in args.model_list]:
            bd = run_worker(args, "breakdown", ["--model", name, "--batch-size", str(B)])
            best = [r["step_s_min"] for r in train_runs if r["model"] == name and r["batch_size"] == B
                    and r["framework"] == "fflib"]
            bd["step_s"] = min(best) if best else None
            key = f"{name}@{B}"
            suite["breakdown"][key] = bd
            prof = run_worker(args, "profile", ["--model", name, "--batch-size", str(B),
                                                "--data-file", files[DATASET[name]]])
            suite["torch_profile"][key] = prof
            step = bd["step_s"] or bd["sum_s"]
            print(f"  where fflib's time goes, {name} B={B}: best step {1e3 * step:.0f} ms "
                  f"(torch profiled step {1e3 * prof['profiled_step_s']:.0f} ms)", flush=True)
            for kname, v in bd["parts"].items():
                tv = prof["kinds"].get(kname)
                print(f"      {kname:22s} fflib {1e3 * v:8.1f} ms {100 * v / step:5.1f}%   torch "
                      f"{fmt(None if tv is None else 1e3 * tv, '8.1f')} ms", flush=True)
            print(f"      {'not accounted':22s} fflib {1e3 * (step - bd['sum_s']):8.1f} ms", flush=True)
    suite["load_average_at_end"] = list(os.getloadavg())
    save()


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        w = args.worker
        if w in ("fflib", "torch"):
            result = worker_train(args)
        elif w == "check":
            result = worker_check(args)
        elif w.startswith("kernels_"):
            result = worker_kernels(args)
        elif w == "breakdown":
            result = worker_breakdown(args)
        else:
            result = worker_profile(args)
        print(json.dumps(result))
        return
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(args)
    load = machine["load_average_at_start"]
    print(f"bench_cnn: models {args.model_list}, batches {args.batch_list}, {args.threads} threads; "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          f"{'  ** LOADED MACHINE (> 1.5): timings are noisy **' if machine['loaded'] else ''}", flush=True)
    t_start = time.perf_counter()
    machine["torch"] = installed_torch_version()
    res = {"config": {k: v for k, v in vars(args).items() if k not in ("worker", "model", "batch_size", "steps",
                                                                       "data_file")},
           "machine": machine, "command": "python benchmarks/bench_cnn.py " + " ".join(sys.argv[1:]),
           "complete": False, "suites": []}

    def save():
        res["wall_s"] = time.perf_counter() - t_start
        (out_dir / "bench_cnn.json").write_text(json.dumps(res, indent=1))
        write_markdown(out_dir / "bench_cnn.md", res)

    with tempfile.TemporaryDirectory(prefix="bench_cnn_") as tmp:
        files = prepare_data(args, tmp)
        if not args.skip_check:
            chk = run_worker(args, "check", ["--data-file", tmp])
            res["check"] = chk
            for name, r in chk.items():
                if r.get("ok"):
                    print(f"  check {name}: same losses (max rel diff {max(r['max_rel_diff']):.1e})", flush=True)
                else:
                    print(f"  check {name}: MISMATCH {r.get('error')}", flush=True)
            save()
        for threads in args.thread_list:
            args.threads = threads
            print(f"-- {threads} thread(s)", flush=True)
            suite = {}
            res["suites"].append(suite)
            run_suite(args, files, suite, save)
        args.threads = args.thread_list[0]
    res["machine"]["load_average_at_end"] = list(os.getloadavg())
    res["machine"]["sgemm_50x450x512_s_per_call_at_end"] = blas_probe(max(args.thread_list))
    import fflib
    res["machine"]["fflib_core_mtime_at_end"] = time.ctime(os.path.getmtime(fflib._core.__file__))
    if res["machine"]["fflib_core_mtime_at_end"] != machine["fflib_core_mtime"]:
        print("WARNING: fflib's compiled core changed during the run; rerun the benchmark", flush=True)
    res["complete"] = True
    save()
    print((out_dir / "bench_cnn.md").read_text())
    print(f"wrote {out_dir / 'bench_cnn.json'} and {out_dir / 'bench_cnn.md'} in {res['wall_s']:.0f} s")


def installed_torch_version():
    try:
        import importlib.metadata as md
        return md.version("torch")
    except Exception:
        return None


if __name__ == "__main__":
    main()
