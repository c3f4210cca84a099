"""Run fflib's recipes (``python -m fflib recipes``) on the full data and keep each result.

    python benchmarks/reproduce.py --list                    # the recipes and their state here
    python benchmarks/reproduce.py --only mnist-cnn          # one recipe (also: NAME [NAME ...])
    python benchmarks/reproduce.py --all                     # every recipe, in listing order
    python benchmarks/reproduce.py --only cifar10-ff_deep --epochs 1 --subset 2000   # smoke run

A run is ``python -m fflib train --recipe NAME --checkpoint DIR --resume`` in a child process,
with its state checkpointed after every epoch in ``results/reproduce/checkpoints/NAME/``: stopped
at any moment (Ctrl-C, a kill, a reboot), the same command resumes it where its last checkpoint
left it, and it ends bit-identical to an uninterrupted run on the same thread count.  Ctrl-C
stops the child after its current minibatch and writes nothing final; ``kill PID`` (SIGTERM) to
this script alone, as a job scheduler or ``timeout`` sends it, stops the child at once (its last
epoch's checkpoint stays) instead of leaving it training with no one to write its result.  A
finished run writes
``results/reproduce/NAME.json``: the resolved config, the full per-epoch history, one-pass and
multi-pass test errors, training seconds (summed over the epochs of every session), the child's
CPU seconds, peak RSS (the largest of the sessions'), the fflib version and the git commit.  A
finished recipe is skipped when run again (``--fresh`` starts it over).  Runs with ``--epochs``,
``--subset`` or ``--sample`` overrides go to ``results/reproduce/smoke/`` (never taken for a
result).  ``scripts/results_table.py`` turns the JSON files into ``results/reproduce.md`` and the
README's table.
"""
import argparse
import datetime
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT_DIR = HERE / "results" / "reproduce"

try:
    import fflib
except ImportError:  # a development checkout run as a script: the in-place build
    sys.path.insert(0, str(REPO))
    import fflib
from fflib import recipes  # noqa: E402

SCHEMA = 1


def git_commit():
    """(commit, dirty) of the checkout holding this script, dirty meaning tracked changes outside
    benchmarks/results/; (None, None) outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(REPO), capture_output=True,
                              text=True, timeout=30)
        if head.returncode:
            return None, None
        # results files (other runs' JSON) do not change what a run does: not counted as dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=str(REPO),
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def tag_of(name, epochs, subset, sample=False):
    """The file name of a run: the recipe's name, with its overrides for smoke runs."""
    return name + (f".e{epochs}" if epochs else "") + (f".s{subset}" if subset else "") + \
        (".sample" if sample else "")


def train_args(name, epochs=None, subset=None, threads=1, sample=False):
    """The ``train`` arguments of a run (without checkpoint and output paths)."""
    args = ["--recipe", name, "--threads", str(threads)]
    if sample:
        args += ["--dataset", "sample"]
    if epochs:
        args += ["--epochs", str(epochs)]
    if subset:
        args += ["--subset", str(subset)]
    return args


def child_env():
    """The child's environment: it imports the fflib this script imported."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fflib.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _read_json(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _write_json(path, data):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _checkpoint_epoch(ckdir):
    """The epoch the checkpoint in ``ckdir`` holds (0 if none)."""
    path = ckdir / "checkpoint.npz"
    if not path.exists():
        return 0
    try:
        import numpy as np
        with np.load(path) as z:
            return int(json.loads(str(z["__meta__"]))["checkpoint"]["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _relative(path):
    """``path`` relative to the repository when inside it (results do not name this machine's paths)."""
    if not path:
        return path
    rel = os.path.relpath(os.path.abspath(path), str(REPO))
    return path if rel.startswith("..") else rel


def _fold_session(ckdir):
    """Move a train.json this script did not record (a session of the ``train`` command run by hand
    with the same checkpoint) into sessions.json: its peak RSS and times."""
    last = ckdir / "train.json"
    if not last.exists():
        return
    r = _read_json(last, None)
    sessions = _read_json(ckdir / "sessions.json", [])
    if r is not None:
        sessions.append({"peak_rss_mb": r.get("peak_rss_mb"), "train_seconds": r.get("train_seconds"),
                         "epochs_done": len(r.get("epochs", [])), "interrupted": r.get("interrupted"),
                         "threads": r.get("config", {}).get("threads")})
        _write_json(ckdir / "sessions.json", sessions)
    last.unlink()


class _Terminated(Exception):
    """SIGTERM reached this process while a run's child was training."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def total_epochs(recipe, epochs=None):
    """The number of "epoch" lines a run of ``recipe`` prints (``epochs`` overrides the recipe's):
    the blocks' epochs (a label-free method's, then as many of its linear probe), the head-only
    epochs after them and the head refit's."""
    settings = recipe.settings
    total = epochs or settings["epochs"]
    if settings.get("method", "ff") in ("scff", "hybrid"):
        return total + (settings.get("head_epochs") or total)     # the probe: head_epochs, else as many
    return total + (settings.get("head_epochs") or 0) + (settings.get("head_refit") or 0)


def run(name, *, epochs=None, subset=None, threads=1, out_dir=None, fresh=False, progress=None, sample=False):
    """Run (or resume) one recipe; returns the process exit status (0 done, 130 interrupted)."""
    recipe = recipes.get(name)
    smoke = bool(epochs or subset or sample)
    out_dir = Path(out_dir) if out_dir else (OUT_DIR / "smoke" if smoke else OUT_DIR)
    tag = tag_of(name, epochs, subset, sample)
    out = out_dir / f"{tag}.json"
    ckdir = out_dir / "checkpoints" / tag
    if fresh:
        shutil.rmtree(ckdir, ignore_errors=True)
        if out.exists():
            out.unlink()
    if out.exists():
        print(f"{tag}: done ({out}); --fresh runs it again", flush=True)
        return 0
    ckdir.mkdir(parents=True, exist_ok=True)
    _fold_session(ckdir)
    total = total_epochs(recipe, epochs)
    start = _checkpoint_epoch(ckdir)
    args = train_args(name, epochs, subset, threads, sample)
    cmd = [sys.executable, "-m", "fflib", "train", *args, "--checkpoint", str(ckdir), "--resume",
           "--out", str(ckdir / "train.json"), "--no-progress"]
    print(f"{tag}: {'resuming after epoch ' + str(start) if start else 'starting'} "
          f"({total} epochs): python -m fflib train {' '.join(args)}", flush=True)
    if progress is None:
        progress = sys.stderr.isatty()
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, initial=start, desc=tag, unit="epoch")
        except ImportError:
            bar = None
    t0 = time.time()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # the child takes Ctrl-C itself (stops after its minibatch, keeps its last checkpoint); a
    # child of a backgrounded shell inherits SIGINT ignored, so give it the default action back
    # SIGTERM to this process alone (kill PID, a scheduler, timeout) would end it and leave the
    # child training with no one to write its result: pass it on to the child instead
    try:
        old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:                                # not the main thread: leave SIGTERM alone
        old_term = None
    interrupted = False
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=child_env(), cwd=str(ckdir),
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        with open(ckdir / "log.txt", "a") as log:
            while True:
                try:
                    line = proc.stdout.readline()
                    if not line:
                        break
                    log.write(line)
                    log.flush()
                    if bar is not None:
                        if line.startswith("epoch"):
                            bar.update(1)
                        bar.write(line.rstrip())
                    else:
                        print(f"{tag}: {line.rstrip()}", flush=True)
                except KeyboardInterrupt:
                    interrupted = True
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGINT)   # a no-op if the terminal already sent it
                except _Terminated:
                    interrupted = True
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)  # at once: its last checkpoint stays
            while True:
                try:
                    rc = proc.wait()
                    break
                except (KeyboardInterrupt, _Terminated):
                    interrupted = True
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if bar is not None:
        bar.close()
    wall = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the child (user + system): unlike wall time, not inflated by other load
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    r = _read_json(ckdir / "train.json", None)
    session = {"wall_seconds": wall, "cpu_seconds": cpu, "exit": rc}
    if r is not None:
        session.update(peak_rss_mb=r.get("peak_rss_mb"), train_seconds=r.get("train_seconds"),
                       epochs_done=len(r.get("epochs", [])), interrupted=r.get("interrupted"),
                       threads=r.get("config", {}).get("threads"))
        (ckdir / "train.json").unlink()
    sessions = _read_json(ckdir / "sessions.json", []) + [session]
    _write_json(ckdir / "sessions.json", sessions)
    if rc != 0 or interrupted:
        done = _checkpoint_epoch(ckdir)
        if interrupted or rc in (130, -signal.SIGINT, -signal.SIGKILL, -signal.SIGTERM):
            print(f"{tag}: stopped (exit {rc}) after {wall:.0f}s with {done}/{total} epochs checkpointed; "
                  f"run the same command to resume", flush=True)
            return 130
        print(f"{tag}: failed (exit {rc}); its output is in {ckdir / 'log.txt'}", flush=True)
        return rc
    if r is None or r.get("interrupted"):
        print(f"{tag}: the run wrote no complete result", flush=True)
        return 1
    commit, dirty = git_commit()
    result = {
        "name": name, "schema": SCHEMA, "smoke": smoke,
        "command": recipes.command(recipe) if not smoke else "python -m fflib train " + " ".join(args),
        "reproduce_command": f"python benchmarks/reproduce.py --only {name}"
                             + (f" --epochs {epochs}" if epochs else "") + (f" --subset {subset}" if subset else "")
                             + (" --sample" if sample else ""),
        "recipe": recipe.to_dict(),
        "config": dict(r["config"], checkpoint=_relative(r["config"].get("checkpoint"))),
        # a label-free run (--method scff/hybrid) reports its linear probe's error only
        "test_error": r["test_error"], "train_error": r.get("train_error"),
        "block_accuracy_test": r.get("block_accuracy_test"),
        "epochs": r["epochs"],
        # the one-pass head refitted after training (--head-refit), or None
        "head_refit": r.get("head_refit"),
        # the sum over every session's epochs: a resumed run's own train_seconds covers only its part
        "train_seconds": sum(e["seconds"] for e in r["epochs"] + (r.get("head_refit") or [])),
        "test_eval_seconds": r.get("test_eval_seconds"),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in sessions if s.get("peak_rss_mb") is not None),
        # CPU seconds of every session run by this script (loading, training, evaluation)
        "cpu_seconds": sum(s.get("cpu_seconds", 0.0) for s in sessions),
        "sessions": sessions,
        "fflib_version": r["fflib_version"], "blas": r.get("blas"),
        "git_commit": commit, "git_dirty": dirty,
        "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out, result)
    te = r["test_error"]
    what = (f"linear probe {te['probe']:.2f}%" if "probe" in te else
            f"one-pass {te['one_pass']:.2f}%  multi-pass {te['multi_pass']:.2f}%")
    print(f"{tag}: test error {what}  ({result['train_seconds'] / 60:.1f} min of training) -> {out}", flush=True)
    return 0


def list_recipes(out_dir=OUT_DIR):
    for name, r in recipes.RECIPES.items():
        path = Path(out_dir) / f"{name}.json"
        ck = _checkpoint_epoch(Path(out_dir) / "checkpoints" / name)
        state = "done" if path.exists() else (f"{ck}/{r.settings['epochs']} epochs checkpointed" if ck
                                              else "not run here")
        res = r.result
        got = "untuned" if res is None else f"{res['one_pass']:.2f} / {res['multi_pass']:.2f}"
        print(f"{name:20s} {r.status:9s} {got:>13s}  {state}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="recipes to run")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run this recipe (repeatable)")
    p.add_argument("--all", action="store_true", help="run every recipe")
    p.add_argument("--list", action="store_true", help="list the recipes and their runs here")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (smoke runs)")
    p.add_argument("--subset", type=int, default=None,
                   help="only the first N training/validation/test images (smoke runs)")
    p.add_argument("--sample", action="store_true",
                   help="train and test on the embedded 10,000-image MNIST sample (MNIST recipes; smoke runs)")
    p.add_argument("--threads", type=int, default=1, help="threads of the C core (default 1; a resumed run "
                                                           "is bit-identical only on the same count)")
    p.add_argument("--out-dir", default=None, help=f"where results go (default {OUT_DIR}, smoke runs in smoke/)")
    p.add_argument("--fresh", action="store_true", help="discard a finished result or checkpoint and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.list:
        list_recipes(a.out_dir or OUT_DIR)
        return 0
    names = list(recipes.RECIPES) if a.all else a.names + a.only
    if not names:
        p.error("name recipes to run (NAME, --only NAME or --all); --list shows them")
    unknown = [n for n in names if n not in recipes.RECIPES]
    if unknown:
        p.error(f"unknown recipes {unknown}; choose from {', '.join(recipes.RECIPES)}")
    if a.sample and any(recipes.get(n).dataset != "mnist" for n in names):
        p.error("--sample takes MNIST recipes only (the sample is MNIST)")
    for flag, v in (("--epochs", a.epochs), ("--subset", a.subset), ("--threads", a.threads)):
        if v is not None and v <= 0:
            p.error(f"{flag} must be a positive int, got {v}")
    status = 0
    for name in names:
        rc = run(name, epochs=a.epochs, subset=a.subset, threads=a.threads, out_dir=a.out_dir,
                 fresh=a.fresh, progress=False if a.no_progress else None, sample=a.sample)
        if rc == 130:
            return 130
        status = status or rc
    return status


if __name__ == "__main__":
    sys.exit(main())
