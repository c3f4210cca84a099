#!/usr/bin/env python
"""Flash, RAM and MACs of the zoo models exported to C for a Cortex-M4 (issue 14), and one
end-to-end result.

``python benchmarks/export_report.py table`` exports the MNIST MLP 784-500-100, the survey's
MNIST CNN, CwComp (MNIST), FF_tiny and FF_small (CIFAR-10), float32 and int8 (one-pass
inference), compiles each with ``arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -mfloat-abi=hard
-mfpu=fpv4-sp-d16 -Os -c`` and reads flash (text + data) from ``arm-none-eabi-size``.  RAM is
the header's scratch constant plus the input sample (4 bytes per value); the few hundred bytes
of stack (scores, logits) are not counted.  MACs: multiply-accumulates of the Linear/Conv2d
layers and the head per inference, one-pass and multi-pass.  Fits: flash <= 1 MiB and RAM <=
256 KiB.  The weights are those of a briefly trained model (sizes do not depend on them); each
export is also compiled on the host and its classes compared with Python on a few test
samples (float32: identical; int8: the agreement rate).  Writes benchmarks/results/export.md
and export.json.

``python benchmarks/export_report.py e2e`` trains the MNIST MLP 784-500-100 (``--model cnn``:
the MNIST CNN, about 4 minutes an epoch on one thread) on the full MNIST with the CLI (10
epochs, 1 thread), exports float32 and int8 (500 calibration images from the training set),
runs the full 10,000 test images through the host build of both, and writes
benchmarks/results/export_e2e.json (the CNN: export_e2e_cnn.json).
"""
import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("FFLIB_NUM_THREADS", "1")

import fflib  # noqa: E402
from fflib import export, models  # noqa: E402

RESULTS = os.path.join(HERE, "results")
FLASH_LIMIT, RAM_LIMIT = 1 << 20, 256 << 10
MODELS = [("mlp", "MLP 784-500-100", "mnist"), ("cnn", "MNIST CNN (survey)", "mnist"),
          ("cwcomp", "CwComp", "mnist"), ("ff_tiny", "FF_tiny", "cifar10"),
          ("ff_small", "FF_small", "cifar10")]


def data_root():
    return os.environ.get("FFLIB_DATA") or os.path.join(os.path.dirname(ROOT), "shared", "data")


def load(dataset, n_train, n_test):
    root = data_root()
    if dataset == "mnist":
        x, y = fflib.datasets.load("mnist", root=root, train=True)
        xt, yt = fflib.datasets.load("mnist", root=root, train=False)
    else:
        x, y = fflib.datasets.load("cifar10", root=root, train=True)
        xt, yt = fflib.datasets.load("cifar10", root=root, train=False)
    return (x[:n_train].reshape(n_train, -1), y[:n_train], xt[:n_test].reshape(n_test, -1), yt[:n_test])


def table(args):
    rows = []
    for key, label, dataset in MODELS:
        x, y, xt, yt = load(dataset, 1000, args.check_samples)
        model = models.build(key, dataset)
        cwc = key not in ("mlp", "cnn")
        lr, bs = (0.01, 128) if cwc else (0.003, 100)
        fflib.fit(model, x[:args.train_samples], y[:args.train_samples], epochs=1, batch_size=bs,
                  optimizer=fflib.Adam(model, lr=lr, head_lr=lr / 10 if cwc else lr), progress=False)
        model.eval()
        for int8 in (False, True):
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                info = export.export_c(model, d, int8=int8, calibration=x[-500:] if int8 else None,
                                       name=key)
                sz = export.arm_size(info)
                if sz is None:
                    sys.exit("arm-none-eabi-gcc not found: apt-get install gcc-arm-none-eabi")
                exe = export.build_host(info)
                cls, _, _ = export.run_host(exe, info, xt, "predict")
                agree = float((cls == model.predict_onepass(xt)).mean())
                secs = time.perf_counter() - t0
            ram = info["scratch_bytes"] + 4 * info["input_size"]
            row = {"model": label, "key": key, "dataset": dataset, "precision": "int8" if int8 else "float32",
                   "params": model.num_parameters(head=True), "flash_bytes": sz["flash"], "text": sz["text"],
                   "data": sz["data"], "weight_bytes": info["weight_bytes"],
                   "scratch_bytes": info["scratch_bytes"], "ram_bytes": ram,
                   "macs_onepass": info["macs_onepass"], "macs_multipass": info["macs_multipass"],
                   "fits_flash": sz["flash"] <= FLASH_LIMIT, "fits_ram": ram <= RAM_LIMIT,
                   "host_check_samples": len(xt), "host_agreement": agree,
                   "folded_batchnorms": info["folded_batchnorms"], "seconds": round(secs, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    meta = {"arm_command": sz["command"].replace(info["c_path"], "MODEL.c"),
            "gcc": subprocess.run(["arm-none-eabi-gcc", "--version"], capture_output=True,
                                  text=True).stdout.splitlines()[0],
            "flash_limit": FLASH_LIMIT, "ram_limit": RAM_LIMIT, "inference": "onepass",
            "command": "python benchmarks/export_report.py table", "host": platform.node() and platform.machine()}
    with open(os.path.join(RESULTS, "export.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    write_md(rows, meta)


def kb(n):
    return f"{n / 1024:,.1f}"


def write_md(rows, meta):
    lines = ["# Exported C for a Cortex-M4: flash, RAM, MACs", "",
             f"`{meta['arm_command']}` ({meta['gcc']}); flash = text + data from `arm-none-eabi-size`; "
             "RAM = the header's scratch buffer + the input sample (float32); one-pass inference "
             "(MACs of multi-pass alongside).  Fits: flash <= 1 MiB, RAM <= 256 KiB.  "
             f"Produced by `{meta['command']}`.", "",
             "| model | precision | params (with head) | flash KiB | RAM KiB (scratch + input) | MACs one-pass | MACs multi-pass | fits 1 MiB / 256 KiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fit = "yes" if r["fits_flash"] and r["fits_ram"] else (
            "no: " + " and ".join(w for w, ok in (("flash", r["fits_flash"]), ("RAM", r["fits_ram"])) if not ok))
        lines.append(f"| {r['model']} | {r['precision']} | {r['params']:,} | {kb(r['flash_bytes'])} | "
                     f"{kb(r['ram_bytes'])} ({kb(r['scratch_bytes'])} + {kb(r['ram_bytes'] - r['scratch_bytes'])}) | "
                     f"{r['macs_onepass'] / 1e6:.2f} M | {r['macs_multipass'] / 1e6:.2f} M | {fit} |")
    lines += ["", "Host check (gcc, the same file): classes of the exported code against Python's "
              "`predict_onepass` on the first test images of each dataset:", ""]
    for r in rows:
        lines.append(f"- {r['model']} {r['precision']}: {100 * r['host_agreement']:.1f} % agreement "
                     f"on {r['host_check_samples']} images")
    with open(os.path.join(RESULTS, "export.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def e2e(args):
    with tempfile.TemporaryDirectory() as d:
        npz = os.path.join(d, "model.npz")
        train_json = os.path.join(d, "train.json")
        cmd = [sys.executable, "-m", "fflib", "train", "--dataset", "mnist", "--model", args.model,
               "--epochs", str(args.epochs), "--threads", "1", "--no-progress", "--save", npz, "--out", train_json]
        env = dict(os.environ, FFLIB_DATA=data_root(), PYTHONPATH=ROOT)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
        train_wall = time.perf_counter() - t0
        with open(train_json) as f:
            trained = json.load(f)
        model = fflib.FFModel.load(npz).eval()
        x, y, xt, yt = load("mnist", 60000, 10000)
        cal = x[np.random.default_rng(0).choice(len(x), 500, replace=False)]
        py_one = np.concatenate([model.predict_onepass(xt[s:s + 1000]) for s in range(0, 10000, 1000)])
        out = {"command": "python benchmarks/export_report.py e2e  (trains with: "
                          + " ".join(shlex.quote(c) for c in ["python"] + cmd[1:]).replace(d + "/", "") + ")",
               "model": {"mlp": "MNIST MLP 784-500-100 (one-hot label, SymBa, RMS norm, one-pass head on block 2)",
                         "cnn": "survey MNIST CNN (label embedding, SymBa, one-pass head on all 3 blocks)"}[args.model],
               "train_epochs": args.epochs, "train_seconds": trained["train_seconds"],
               "train_wall_seconds": round(train_wall, 1),
               "python_test_error": trained["test_error"], "inference": "onepass", "results": {}}
        for int8 in (False, True):
            ed = os.path.join(d, "q" if int8 else "f")
            info = export.export_c(model, ed, int8=int8, calibration=cal if int8 else None, name="mnist_" + args.model)
            sz = export.arm_size(info)
            exe = export.build_host(info)
            t0 = time.perf_counter()
            cls, _, _ = export.run_host(exe, info, xt, "predict")
            secs = time.perf_counter() - t0
            out["results"]["int8" if int8 else "float32"] = {
                "test_error_percent": float(100 * (cls != yt).mean()),
                "agreement_with_python_onepass": float((cls == py_one).mean()),
                "flash_bytes": sz["flash"] if sz else None, "scratch_bytes": info["scratch_bytes"],
                "ram_bytes": info["scratch_bytes"] + 4 * info["input_size"],
                "macs_onepass": info["macs_onepass"], "macs_multipass": info["macs_multipass"],
                "host_seconds_10000": round(secs, 1), "calibration_images": 500 if int8 else 0,
                "fits_1MiB_flash_256KiB_ram": bool(sz and sz["flash"] <= FLASH_LIMIT
                                                   and info["scratch_bytes"] + 4 * info["input_size"] <= RAM_LIMIT)}
            print(json.dumps(out["results"]["int8" if int8 else "float32"]), flush=True)
        out["python_onepass_test_error_percent"] = float(100 * (py_one != yt).mean())
    # the MLP's result and the CNN's side by side (the CNN's overwrote the MLP's before)
    with open(os.path.join(RESULTS, "export_e2e.json" if args.model == "mlp" else f"export_e2e_{args.model}.json"),
              "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("table")
    t.add_argument("--train-samples", type=int, default=512)
    t.add_argument("--check-samples", type=int, default=50)
    e = sub.add_parser("e2e")
    e.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    e.add_argument("--epochs", type=int, default=10)
    a = p.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    table(a) if a.what == "table" else e2e(a)


if __name__ == "__main__":
    main()
