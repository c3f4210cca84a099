"""The command line: ``python -m fflib train ...``, ``python -m fflib models`` and ``python -m fflib recipes``.

``train`` without a flag runs the recipe of its model on its dataset (:mod:`fflib.recipes`):
each flag left out takes the recipe's setting, each flag given overrides that one setting.

Contract (other tools depend on it): ``train`` prints one-pass and multi-pass test error and,
with ``--out FILE.json``, writes config (the resolved settings, the actual thread count and
parameter counts), test_error/train_error {one_pass, multi_pass} in percent, epochs (per-block
mean loss and seconds), train_seconds, peak_rss_mb, fflib_version and schema_version, and a
per-epoch CSV log beside it (FILE.csv).  ``--checkpoint DIR`` keeps the run's state there after
every epoch and ``--resume`` continues from it, ending bit-identical to an uninterrupted run.
A bad argument (output paths included, checked before training) exits with status 2 and a
one-line message (under ``mpirun``, from rank 0 alone); Ctrl-C stops after the current minibatch
and still writes what it has.
"""
import argparse
import csv
import json
import os
import resource
import sys
import time

import numpy as np

from . import datasets
from . import models as zoo
from . import recipes
from .export import add_export_parser, run_export
from .nn import GROUP_LOSSES, default_threshold


def _core_tables():
    """(losses, label encodings) as the C core names them."""
    from .nn import LOSSES, LABEL_ENCODINGS
    return LOSSES, LABEL_ENCODINGS


#: the variables MPI launchers set to a process's rank (Open MPI, PMIx, MPICH/Hydra, MVAPICH)
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")


def launcher_rank():
    """This process's rank as an MPI launcher (``mpirun -n N``) numbered it, read from the
    environment before MPI is initialised; 0 when not launched so."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


# how long a rank other than 0 waits before exiting on a usage error (see _usage_error)
_USAGE_ERROR_GRACE_SECONDS = 30.0


def _usage_error(message):
    """Exit 2 with ``message`` on one line.  Under ``mpirun`` every rank parses the same arguments
    and checks the same paths, so only rank 0 prints it (each rank still exits 2).  The other ranks
    wait before exiting: the launcher ends the whole job when the first rank exits non-zero, and a
    rank 1 that reached the error first would otherwise take rank 0 down before it printed.  Rank 0's
    exit ends the job (and the wait) at once; if only this rank fails (a path one node lacks), the
    job still ends after the wait, with the message printed here."""
    rank = launcher_rank()
    if rank == 0:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    else:
        time.sleep(_USAGE_ERROR_GRACE_SECONDS)
        sys.stderr.write(f"[rank {rank}] {message}\n")
    sys.exit(2)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        _usage_error(f"{self.prog}: error: {message}")


def _bad(message):
    _usage_error(f"python -m fflib: error: {message}")


def mpi_world(a, bad):
    """(MPI.COMM_WORLD, this rank) for a train command with --distributed, else (None, 0)."""
    if not getattr(a, "distributed", None):
        return None, 0
    try:
        from mpi4py import MPI
    except ImportError:
        bad("--distributed needs mpi4py and an MPI library: pip install 'fflib-core[mpi]'")
    return MPI.COMM_WORLD, MPI.COMM_WORLD.Get_rank()


def _int_list(text):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) <= 0 or max(vals) >= 2 ** 31:
        raise argparse.ArgumentTypeError(f"expected positive integers below 2**31, got {text!r}")
    return vals


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (v > 0) or (kind is float and not np.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        if kind is int and v >= 2 ** 31:
            raise argparse.ArgumentTypeError(f"must be below 2**31, got {text!r}")
        if kind is float and v > float(np.finfo(np.float32).max):
            raise argparse.ArgumentTypeError(f"must be within float32's range, got {text!r}")
        return v
    return parse


def _finite(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return v


def _finite_list(text):
    """Comma-separated finite numbers, e.g. 4,1."""
    vals = [v for v in text.split(",") if v.strip()]
    if not vals:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 4,1, got {text!r}")
    return [_finite(v) for v in vals]


def _threads(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if not 1 <= v <= 64:
        raise argparse.ArgumentTypeError(f"must be in [1, 64], got {text!r}")
    return v


def _increasing(text):
    vals = _int_list(text)
    if vals != sorted(set(vals)):
        raise argparse.ArgumentTypeError(f"expected increasing epochs, got {text!r}")
    return vals


def _seed(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if not 0 <= v < 2 ** 63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {text!r}")
    return v


def _fraction(text):
    v = _finite(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return v


def _nonnegative(text):
    v = _finite(text)
    if v < 0 or v > float(np.finfo(np.float32).max):
        raise argparse.ArgumentTypeError(f"must be >= 0 and within float32's range, got {text!r}")
    return v


def _block_list(text):
    """Comma-separated block indices, negative ones counting from the end (-1: the last)."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices, e.g. -2,-1, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError(f"expected at least one block index, got {text!r}")
    return vals


def _head_blocks(text):
    """auto, none, or block indices."""
    if text in ("auto", "none"):
        return text
    return _block_list(text)


def _windows(text):
    """Per-block epoch windows START:END (epochs START..END-1), comma-separated, one per block."""
    out = []
    for part in text.split(","):
        try:
            a, b = (int(v) for v in part.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected START:END per block, comma-separated (e.g. 0:4,2:6), "
                                             f"got {text!r}") from None
        if not 0 <= a < b < 2 ** 31:
            raise argparse.ArgumentTypeError(f"each window START:END needs 0 <= START < END, got {part!r}")
        out.append((a, b))
    return out


#: --early-exit-drop's default: percentage points of validation accuracy early exit may cost
EARLY_EXIT_DROP = 0.2

SCHEMA_VERSION = 3      # 2: fflib_version, schema_version, config.threads is the actual count, one num_params;
                        # 3: epochs with a validation split carry val_block_accuracy


def _check_output(flag, path, directory=False):
    """Fail at once (exit 2) if ``path`` cannot be written: its parent directory must exist."""
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        _bad(f"{flag} {path}: directory {parent} does not exist")
    if directory:
        if os.path.exists(path) and not os.path.isdir(path):
            _bad(f"{flag} {path}: exists and is not a directory")
    elif os.path.isdir(path):
        _bad(f"{flag} {path}: is a directory")
    if not os.access(parent, os.W_OK):
        _bad(f"{flag} {path}: directory {parent} is not writable")
    if directory:
        try:        # made now, so a place that cannot hold it fails before the training
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            _bad(f"{flag} {path}: cannot create the directory ({e.strerror or e})")


def csv_path(out):
    """The per-epoch CSV log beside the JSON ``out``: its name with .csv for .json."""
    root, ext = os.path.splitext(out)
    return (root if ext.lower() == ".json" else out) + ".csv"


def write_epoch_csv(path, epochs):
    """One row per epoch: epoch, seconds, lr, head_loss, block_loss_<b>..., (with --alternate)
    block_loss_shifted_<b>..., val_one_pass, val_multi_pass; a label-free run's (records with a
    ``phase``: ``--method scff|hybrid|uff``) has ``phase`` after ``epoch`` and ``val_probe`` (the
    linear probe's validation error) for the two, with the block losses empty in probe epochs and
    the head's in label-free ones."""
    label_free = any("phase" in r for r in epochs)
    nb = max((len(r["block_loss"]) for r in epochs if r.get("block_loss") is not None), default=0)
    ns = max((len(r["block_loss_shifted"]) for r in epochs if r.get("block_loss_shifted") is not None), default=0)
    cols = (["epoch"] + (["phase"] if label_free else []) + ["seconds", "lr", "head_loss"]
            + [f"block_loss_{b}" for b in range(nb)] + [f"block_loss_shifted_{b}" for b in range(ns)]
            + (["val_probe"] if label_free else ["val_one_pass", "val_multi_pass"]))
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in epochs:
            blocks = list(r.get("block_loss") or [])
            shifted = list(r.get("block_loss_shifted") or [])
            if label_free:
                v = r.get("val_error")
                vals = ["" if v is None else v]
            else:
                val = r.get("val") or r.get("val_error") or {}
                vals = [val.get("one_pass", ""), val.get("multi_pass", "")]
            w.writerow([r["epoch"]] + ([r.get("phase", "")] if label_free else [])
                       + [r["seconds"], r["lr"], "" if r.get("head_loss") is None else r["head_loss"]]
                       + blocks + [""] * (nb - len(blocks)) + shifted + [""] * (ns - len(shifted)) + vals)
    os.replace(tmp, path)


def peak_rss_mb():
    """Peak resident memory of this process in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_parser():
    from . import __version__
    p = _Parser(prog="python -m fflib", description="Forward-Forward training (fflib).")
    p.add_argument("--version", action="version", version=f"fflib {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    t = sub.add_parser("train", help="train an FF model and report test error")
    t.add_argument("--dataset", default=None, choices=datasets.DATASET_NAMES,
                   help="sample (embedded MNIST subset, the default), mnist, fashion-mnist, cifar10")
    t.add_argument("--recipe", default=None, choices=list(recipes.RECIPES), metavar="NAME",
                   help="run a named recipe (python -m fflib recipes lists them); default: the recipe "
                        "of --model on --dataset.  Every other flag overrides one of its settings")
    t.add_argument("--data-dir", default=None, help="dataset directory (default: $FFLIB_DATA)")
    t.add_argument("--model", default=None, choices=zoo.ZOO,
                   help="mlp (the survey's FF MLP), cnn (the survey's FF CNN for the dataset), "
                        "cwcomp, ff_tiny .. ff_deep (channel-wise competitive CNNs)")
    t.add_argument("--layers", type=_int_list, default=None, help="MLP hidden sizes, e.g. 500,100")
    t.add_argument("--channels", type=_int_list, default=None,
                   help="the blocks' widths of cwcomp and ff_tiny .. ff_deep, one per block (default: their "
                        "paper's, e.g. 20,80,240,480 for cwcomp), rounded up to multiples of 10 (one channel "
                        "group per class) for cwcomp and under the channel-group losses")
    t.add_argument("--epochs", type=_positive(int), default=None, help="epochs (default: the recipe's)")
    t.add_argument("--batch-size", type=_positive(int), default=None, help="default: the recipe's (100; 128 for CwC models)")
    t.add_argument("--lr", type=_positive(float), default=None, help="Adam learning rate")
    t.add_argument("--head-lr", type=_positive(float), default=None,
                   help="learning rate of the one-pass head (default: the recipe's; without one --lr, "
                        "a tenth of it for the CwC models)")
    t.add_argument("--threshold", type=_finite, default=None, help="FF / PvN loss threshold theta")
    t.add_argument("--block-thresholds", type=_finite_list, default=None, metavar="T0,T1,...",
                   help="one FF / PvN threshold per block instead of --threshold, e.g. 4,1")
    t.add_argument("--goodness", choices=["sum", "mean", "neg-sum", "neg-mean"], default=None,
                   help="sum or mean of squared activities, or minus it (Hinton's 'min ssq': positive data "
                        "trained to low activity; the default threshold is then negative)")
    t.add_argument("--norm", choices=["l2", "rms", "none"], default=None,
                   help="length normalisation between MLP layers and of the one-pass head input (the CwC "
                        "models: of the head input only; default: the model's, none for cwcomp, rms for ff_*)")
    t.add_argument("--loss", choices=list(_core_tables()[0]), default=None,
                   help="the blocks' local loss (default: symba for mlp/cnn, cwc for the CwC models); df is "
                        "the distance-forward N-pair margin loss (--margin) over every label, df-cwc the same loss over "
                        "the CwC models' channel groups (one pass per sample); xent is softmax cross-entropy on "
                        "a 10-wide last layer (the backprop baseline)")
    t.add_argument("--label-encoding", choices=list(_core_tables()[1]), default=None,
                   help="how the label enters the input (default: onehot for mlp, embedding for cnn; none "
                        "for losses that read the class from the output: cwc, pvn, df-cwc, xent)")
    t.add_argument("--fourier-modes", default=None, metavar="FILE.npy|fflib|fit[:M]",
                   help="with --label-encoding fourier: the per-class waves, a (K, 4) or (K, M, 4) table "
                        "(wavelength, orientation, amplitude, phase) in a .npy file, the scheme fflib "
                        "(the default), or fit[:M] (M modes per class fitted to the training images, "
                        "default 16; see fflib.labels)")
    t.add_argument("--label-value", type=_finite, default=None,
                   help="one-hot value / Fourier amplitude / embedding initial scale (default 1, "
                        "0.1 with --fourier-modes fit)")
    t.add_argument("--routine", choices=["greedy", "chunked", "overlapping", "backprop"], default=None)
    t.add_argument("--chunk-size", type=_positive(int), default=None, help="units per chunk")
    t.add_argument("--alternate", action="store_true", default=None, help="shift the chunks every iteration")
    t.add_argument("--pipeline", action="store_true",
                   help="pipelined blocks: block k on minibatch t-k, the blocks at once on the threads "
                        "(same weights as sequential training)")
    t.add_argument("--method", choices=["ff", "scff", "hybrid", "uff"], default=None,
                   help="default: the recipe's (ff). ff (labels in the input); scff or hybrid: train the MLP without labels on "
                        "self-contrastive pairs or hybrid images for --epochs, then a linear probe "
                        "(the one-pass head on every block) for --head-epochs (default as many); scff's defaults are its "
                        "recipe (fflib.unsupervised.scff_mlp: threshold 4, first layer x2, --lr 3e-3, "
                        "--head-lr 1e-3); uff: autoencoder cells (each block reconstructs its input "
                        "through its own decoder) for --epochs (default 5), then the linear probe for --head-epochs "
                        "(default 10); the schedule (--milestones, or the cooldown unless --no-cooldown) spans "
                        "both phases")
    t.add_argument("--order", choices=["simultaneous", "layerwise"], default=None,
                   help="every block on every minibatch (default), or each block alone in turn for --epochs "
                        "epochs (the blocks' phase lasts --epochs times the number of blocks)")
    t.add_argument("--negatives", choices=["uniform", "hard"], default=None)
    t.add_argument("--augment", default=None,
                   help="image augmentation of training batches: flip, cropN (random shift by up to N "
                        "pixels), joined by +, e.g. crop4+flip for CIFAR-10, crop2 for MNIST")
    t.add_argument("--input-norm", choices=("none", "channel"), default=None,
                   help="standardise the inputs: channel (each image channel to mean 0 and std 1 by the "
                        "training split's statistics, saved with the model and applied in every "
                        "inference and export) or none (the default)")
    t.add_argument("--milestones", type=_increasing, default=None, help="MultiStepLR epochs, e.g. 30,45")
    t.add_argument("--gamma", type=_positive(float), default=None)
    t.add_argument("--no-cooldown", dest="cooldown", action="store_const", const=False, default=None,
                   help="constant learning rate (default: linear cooldown over the second half, "
                        "unless --milestones are given)")
    t.add_argument("--block-decay", type=_positive(float), default=None, metavar="G",
                   help="label-free runs (--method scff|hybrid|uff): multiply the blocks' rate by G after every "
                        "label-free epoch (the SCFF authors anneal x0.9 every 1,000 minibatches: 0.944 at 550 an "
                        "epoch), then start the probe at its full rate and cool it linearly to 0; in (0, 1], "
                        "default 1 (no decay, the cooldown over the second half)")
    t.add_argument("--val-size", type=int, default=None,
                   help="hold out the last N training samples as a validation set, evaluated every "
                        "epoch (tune on it, never on the test set)")
    t.add_argument("--head-dropout", type=_finite, default=None, metavar="P",
                   help="dropout probability on the one-pass head's input while it trains, in [0, 1) "
                        "(the SCFF authors' probe; default 0)")
    t.add_argument("--head-epochs", type=_positive(int), default=None, metavar="N",
                   help="epochs training only the one-pass head on the frozen blocks after the blocks' "
                        "epochs (default: none with labels; the linear probe of --method scff/hybrid/uff: "
                        "as many as --epochs, 10 for uff)")
    t.add_argument("--head-refit", type=_positive(int), default=None, metavar="N",
                   help="after training, zero the one-pass head and train it again for N epochs on the "
                        "frozen blocks in inference mode, without augmentation (fflib.refit_head); the "
                        "checkpoint keeps the model before it, --save and the test error are after it; with "
                        "--distributed rank 0 refits alone after the distributed training")
    t.add_argument("--head-refit-lr", type=_finite, default=None, metavar="LR",
                   help="the refitted head's Adam rate (default 1e-4)")
    t.add_argument("--seed", type=_seed, default=None)
    t.add_argument("--subset", type=_positive(int), default=None, metavar="N",
                   help="smoke runs: only the first N training, validation and test images each")
    t.add_argument("--threads", type=_threads, default=None, help="threads of the C core, 1..64")
    t.add_argument("--out", default=None, help="write results as JSON to this file (and a per-epoch CSV "
                                               "log beside it, .csv for .json)")
    t.add_argument("--save", default=None, help="save the trained model (.npz)")
    t.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="keep the run's whole state in DIR/checkpoint.npz after every epoch")
    t.add_argument("--checkpoint-every", type=_positive(int), default=1, metavar="N",
                   help="checkpoint every N epochs (and after the last)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --checkpoint DIR (start afresh if there is none); "
                        "give the same arguments as the interrupted run")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    # the Python API's options (FFModel, the optimisers, fit, evaluate), one flag each
    t.add_argument("--pvn-weight", type=_fraction, default=None,
                   help="with --loss cwc: (1-w) CwC + w PvN, w in [0, 1] (default 0: pure CwC)")
    t.add_argument("--alpha", type=_positive(float), default=None, help="SymBa's scale (default 4); --loss symba")
    t.add_argument("--margin", type=_nonnegative, default=None,
                   help="the DF losses' margin m >= 0 (default 1); --loss df or df-cwc")
    t.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default=None,
                   help="default: the recipe's (adam); adamw: Adam with decoupled weight decay")
    t.add_argument("--momentum", type=_nonnegative, default=None, help="SGD momentum (default 0); --optimizer sgd")
    t.add_argument("--block-lr", type=_finite_list, default=None, metavar="LR0,LR1,...",
                   help="each block's own learning rate (its layers' parameter group), one per block; "
                        "the schedule scales them as --lr (default: every block at --lr)")
    t.add_argument("--weight-decay", type=_nonnegative, default=None,
                   help="weight decay: L2 in the gradient for adam and sgd (default 0), decoupled for adamw "
                        "(default 0.01, as torch.optim.AdamW)")
    t.add_argument("--head-blocks", type=_head_blocks, default=None,
                   help="blocks feeding the one-pass head: auto (all but the first), none (no head), or "
                        "indices, e.g. --head-blocks=-2,-1 (default: the model's)")
    t.add_argument("--multipass-blocks", type=_block_list, default=None,
                   help="blocks whose goodness multi-pass test/train error sums, e.g. --multipass-blocks=-2,-1 "
                        "(default: fflib.evaluate's)")
    t.add_argument("--windows", type=_windows, default=None, metavar="S:E,...",
                   help="per-block epoch windows, one START:END per block (block b trains in epochs "
                        "START..END-1; CwComp's interleaved layer training, e.g. 0:4,2:6,4:8); "
                        "overrides --order and sets the run's length to the largest END")
    t.add_argument("--early-exit", nargs="?", const="softmax", choices=["softmax", "lightff"], default=None,
                   help="also report early-exit inference (LightFF) on the test set: thresholds calibrated "
                        "on the --val-size split; the rule: softmax (default) or lightff")
    t.add_argument("--early-exit-drop", type=_nonnegative, default=None, metavar="POINTS",
                   help="largest validation accuracy loss early exit may cost, in percentage points (default "
                        "0.2): the validation samples it gets wrong that prediction without it gets right")
    t.add_argument("--distributed", choices=["data", "pipeline"], default=None,
                   help="train across the ranks of an MPI job (mpirun -n N python -m fflib train --distributed "
                        "...; needs pip install 'fflib-core[mpi]'): data = each rank a shard of every minibatch, "
                        "gradients all-reduced; pipeline = each rank a range of blocks, activations passed on "
                        "(the one-pass head then trains one more, head-only epoch); --method scff|hybrid|uff "
                        "train data-parallel; only rank 0 prints and writes files")
    sub.add_parser("models", help="list the model zoo with parameter counts")
    r = sub.add_parser("recipes", help="list the recipes (settings per model and dataset) with their "
                                       "reported test errors")
    r.add_argument("--json", action="store_true", help="print them as JSON")
    add_export_parser(sub)
    e = sub.add_parser("eval", help="evaluate a saved model on a dataset's test split")
    e.add_argument("model", help="a model file written by train --save or FFModel.save")
    e.add_argument("--dataset", default="sample", choices=datasets.DATASET_NAMES,
                   help="whose test split (default: the embedded sample)")
    e.add_argument("--data-dir", default=None, help="dataset directory (default: $FFLIB_DATA)")
    e.add_argument("--threads", type=_positive(int), default=None, help="threads of the C core")
    e.add_argument("--multipass-blocks", type=_block_list, default=None,
                   help="blocks whose goodness multi-pass sums, e.g. --multipass-blocks=-2,-1 (default: "
                        "fflib.evaluate's)")
    e.add_argument("--early-exit", nargs="?", const="softmax", choices=["softmax", "lightff"], default=None,
                   help="also report early-exit inference (LightFF): thresholds calibrated on the last "
                        "--val-size samples of the training split; the rule: softmax (default) or lightff")
    e.add_argument("--early-exit-drop", type=_nonnegative, default=None, metavar="POINTS",
                   help="largest validation accuracy loss early exit may cost, in percentage points (default "
                        "0.2): the validation samples it gets wrong that prediction without it gets right")
    e.add_argument("--val-size", type=_positive(int), default=5000,
                   help="with --early-exit: calibration samples from the end of the training split (default 5000)")
    e.add_argument("--out", default=None, help="write the result as JSON here")
    from .plot import add_plot_parser
    add_plot_parser(sub)
    return p


def _fourier_modes_arg(spec, x, y, image_shape):
    """--fourier-modes: a scheme name, fit[:M] (fitted to the training data) or a .npy table."""
    from . import labels
    if spec in labels.FOURIER_SCHEMES:
        return spec
    if spec == "fit" or spec.startswith("fit:"):
        try:
            m = int(spec[4:]) if spec.startswith("fit:") else 16
        except ValueError:
            _bad(f"--fourier-modes fit:M needs an int M, got {spec!r}")
        try:
            return labels.fit_fourier_modes(x, y, 10, m, input_shape=image_shape)
        except ValueError as e:
            _bad(f"--fourier-modes {spec}: {e}")
    try:
        table = np.load(spec, allow_pickle=False)
    except (OSError, ValueError) as e:
        _bad(f"--fourier-modes must be {', '.join(labels.FOURIER_SCHEMES)}, fit[:M] or a .npy file "
             f"holding a (K, 4) or (K, M, 4) table; cannot read {spec!r}: {e}")
    return table


TRAIN_ERROR_SAMPLES = 10000
HEAD_REFIT_LR = 1e-4      # --head-refit-lr default: the rate of the FF_optimal head study
DEFAULTS = {"lr": 0.003, "lr_cwc": 0.01, "epochs": 10, "epochs_sample": 10}
CWC_MODELS = ("cwcomp",) + tuple(zoo.LIGHT_MODELS)


def _check_api_flags(a, cwc, given=()):
    """Exit 2 on a flag of the Python API's that does not apply to this run (``given``: the
    settings given on the command line, not by a recipe or a default)."""
    loss = a.loss or ("cwc" if cwc else "symba")
    if loss == "ae":
        _bad("--loss ae is the UFF autoencoder cells' reconstruction loss: train them with --method uff")
    threshold_loss = loss in ("ff", "pvn") or (loss == "cwc" and a.pvn_weight)
    if "threshold" in given and not threshold_loss:
        _bad(f"--threshold is the FF and PvN losses' theta; it does not apply to --loss {loss}")
    if "threshold" in given and a.block_thresholds is not None:
        _bad("--threshold and --block-thresholds both set the thresholds: give one")
    if "chunk_size" in given and a.routine not in ("chunked", "overlapping"):
        _bad(f"--chunk-size sets the units per chunk of --routine chunked or overlapping; it does not apply to "
             f"--routine {a.routine}")
    if "gamma" in given and not a.milestones:
        _bad("--gamma is the factor of the --milestones steps; give --milestones")
    _take_early_exit_drop(a)
    if a.pvn_weight is not None and loss != "cwc":
        _bad(f"--pvn-weight mixes PvN into the cwc loss; it does not apply to --loss {loss}")
    if a.alpha is not None and loss != "symba":
        _bad(f"--alpha is SymBa's scale; it does not apply to --loss {loss}")
    if a.margin is not None and loss not in ("df", "df-cwc"):
        _bad(f"--margin is the DF losses' margin; it does not apply to --loss {loss}")
    if a.block_thresholds is not None and loss not in ("ff", "pvn") and not (loss == "cwc" and a.pvn_weight):
        _bad(f"--block-thresholds are the FF and PvN losses' thresholds; they do not apply to --loss {loss}")
    if a.momentum is not None and a.optimizer != "sgd":
        _bad(f"--momentum is SGD's; give --optimizer sgd (got --optimizer {a.optimizer})")
    if a.windows is not None and (a.order != "simultaneous" or a.alternate or a.pipeline):
        _bad("--windows sets each block's epochs itself: it cannot be combined with --order layerwise, "
             "--alternate or --pipeline")
    if a.early_exit and not a.val_size:
        _bad("--early-exit calibrates its thresholds on a validation split: give --val-size N")


def _take_early_exit_drop(a):
    """--early-exit-drop only with --early-exit (exit 2 otherwise); its default when not given."""
    if a.early_exit_drop is not None and not a.early_exit:
        _bad("--early-exit-drop is the accuracy --early-exit may lose; give --early-exit")
    a.early_exit_drop = EARLY_EXIT_DROP if a.early_exit_drop is None else a.early_exit_drop


def _model_flags(a):
    """FFModel keyword arguments from the API flags that were given."""
    kw = {}
    if a.pvn_weight is not None:
        kw["pvn_weight"] = a.pvn_weight
    if a.alpha is not None:
        kw["alpha"] = a.alpha
    if a.margin is not None:
        kw["margin"] = a.margin
    if a.head_blocks is not None:
        kw["head_blocks"] = None if a.head_blocks == "none" else a.head_blocks
    if a.block_thresholds is not None:
        kw["block_thresholds"] = a.block_thresholds
    if a.head_dropout is not None:
        kw["head_dropout"] = a.head_dropout
    return kw


def _weight_decay(a):
    """--weight-decay, or its default for the optimiser (AdamW's 0.01 as in PyTorch, else 0)."""
    if a.weight_decay is not None:
        return a.weight_decay
    return 0.01 if a.optimizer == "adamw" else 0.0


def _layer_lr(a, model):
    """--block-lr as the optimiser's layer_lr: each block's trainable layers at its rate."""
    rates = getattr(a, "block_lr", None)
    if rates is None:
        return None
    blocks = model.blocks
    if len(rates) != len(blocks):
        raise ValueError(f"--block-lr gives {len(rates)} rates for the model's {len(blocks)} blocks")
    if any(not r > 0 for r in rates):
        raise ValueError(f"--block-lr rates must be > 0, got {rates}")
    trainable = set(model.trainable_layers())
    return {i: float(r) for (first, end), r in zip(blocks, rates) for i in range(first, end) if i in trainable}


def _make_optimizer(a, model, lr, head_lr, adam):
    from . import SGD, AdamW
    kw = dict(lr=lr, weight_decay=_weight_decay(a), head_lr=head_lr, layer_lr=_layer_lr(a, model))
    if a.optimizer == "sgd":
        return SGD(model, momentum=a.momentum or 0.0, **kw)
    if a.optimizer == "adamw":
        return AdamW(model, **kw)
    return adam(model, **kw)


def _epochs_text(n):
    return f"{n} epoch" + ("" if n == 1 else "s")


def _run_epochs(a, epochs, model):
    """Epochs the run lasts: the largest window end, or epochs (per block when layerwise)."""
    if a.windows is not None:
        return max(e for _, e in a.windows)
    return epochs if a.order == "simultaneous" else epochs * model.num_blocks


def _block_widths(model):
    """The output channels of each block of a zoo CNN: its last convolution's."""
    widths = []
    for first, end in model.blocks:
        convs = [layer for layer in model.layers[first:end] if layer.kind == "conv2d"]
        if convs:
            widths.append(convs[-1].out_channels)
    return widths


def _api_config(a, model):
    return {"alpha": model.config["alpha"], "pvn_weight": model.config["pvn_weight"],
            "block_thresholds": model.config["block_thresholds"], "head_dropout": model.config["head_dropout"],
            "margin": model.config["margin"], "optimizer": a.optimizer,
            "momentum": a.momentum or 0.0, "weight_decay": _weight_decay(a), "block_lr": a.block_lr,
            "head_blocks": a.head_blocks, "multipass_blocks": a.multipass_blocks,
            "windows": None if a.windows is None else [list(w) for w in a.windows],
            "early_exit": a.early_exit, "early_exit_drop": a.early_exit_drop if a.early_exit else None}


def early_exit_report(model, xv, yv, xt, yt, rule, drop_points):
    """Calibrate early exit (``rule``) on (xv, yv) allowing ``drop_points`` percentage points of
    validation accuracy, then print and return, per inference (multi-pass, and one-pass when the
    model has a head), the test accuracy with and without early exit, the mean blocks used and
    the MACs saved per image."""
    out = {}
    modes = ["multipass"] + (["onepass"] if model.has_head else [])
    for mode in modes:
        try:
            ee = model.calibrate_early_exit(xv, yv, mode=mode, rule=rule, max_drop=drop_points / 100.0)
            r = model.predict_early_exit(xt, ee, mode)
            full = model.predict_early_exit(xt, float("inf"), mode)
        except ValueError as e:
            _bad(f"--early-exit: {e}")
        s = r.summary(yt)
        rec = {"rule": rule, "thresholds": [float(v) for v in ee.thresholds], "calibration": ee.info,
               "test_accuracy": 100.0 * s["accuracy"], "test_accuracy_full": 100.0 * float((full.pred == yt).mean()),
               "mean_blocks": s["mean_blocks"], "max_blocks": s["max_blocks"],
               "macs_per_image": s["macs_per_image"], "full_macs_per_image": s["full_macs_per_image"],
               "macs_saved_per_image": s["macs_saved_per_image"]}
        out[mode] = rec
        print(f"early exit ({mode}, {rule}): accuracy {rec['test_accuracy']:.2f}% (without {rec['test_accuracy_full']:.2f}%)  "
              f"mean blocks used {rec['mean_blocks']:.3f} of {rec['max_blocks']}  "
              f"MACs saved per image {rec['macs_saved_per_image']:,.0f} of {rec['full_macs_per_image']:,.0f} "
              f"({100.0 * s['macs_saved_fraction']:.1f}%)", flush=True)
    return out


def load_train_test(a, bad):
    """The training and test split of ``--dataset`` (``--data-dir``) as arrays; ``bad(message)``
    exits with a usage error when they cannot be read."""
    try:
        if a.dataset == "sample":
            if a.data_dir:
                bad("--data-dir is not used with --dataset sample (it is embedded)")
            (x, y), (xt, yt) = datasets.load_sample(True), datasets.load_sample(False)
        else:
            x, y = datasets.load(a.dataset, root=a.data_dir, train=True)
            xt, yt = datasets.load(a.dataset, root=a.data_dir, train=False)
    except (FileNotFoundError, datasets.DatasetError) as e:
        bad(str(e).replace("\n", " "))
    return x, y, xt, yt


def split_validation(a, x, y, xt, yt, bad):
    """The train command's data split: the last ``--val-size`` training samples held out as the
    validation set (None, None without it), then ``--subset`` N of each.  Returns
    (x, y, x_val, y_val, x_test, y_test)."""
    val_size = a.val_size or 0
    if not 0 <= val_size < len(x):
        bad(f"--val-size must be in [0, {len(x)}), got {val_size}")
    xv = yv = None
    if val_size:
        x, xv, y, yv = x[:-val_size], x[-val_size:], y[:-val_size], y[-val_size:]
    if a.subset:
        x, y, xt, yt = x[:a.subset], y[:a.subset], xt[:a.subset], yt[:a.subset]
        if xv is not None:
            xv, yv = xv[:a.subset], yv[:a.subset]
    return x, y, xv, yv, xt, yt


def _errors_text(errors):
    """evaluate()'s errors as one-pass / multi-pass percentages, or the multi-pass alone for a
    model without a one-pass head (--head-blocks none)."""
    if errors.get("one_pass") is None:
        return f"{errors['multi_pass']:.2f}% multi-pass"
    return f"{errors['one_pass']:.2f}% / {errors['multi_pass']:.2f}%"


def train_command(a):
    from . import FFModel, mlp, Adam, MultiStepLR, LinearCooldown, fit, evaluate, refit_head, set_num_threads, get_num_threads
    from . import __version__
    norm_given = a.norm is not None    # by a flag: before the recipe and the defaults fill it
    given = {key for key, value in vars(a).items() if value is not None}
    # a recipe names its training method (a label-free one: fflib.unsupervised); the default is FF
    recipe_method = recipes.get(a.recipe).settings.get("method", "ff") if a.recipe is not None else None
    if a.method is None:
        a.method = recipe_method or "ff"
    elif recipe_method is not None and a.method != recipe_method:
        _bad(f"--method {a.method} contradicts the recipe {a.recipe} (its method is {recipe_method})")
    if a.method == "uff":   # autoencoder cells: their own defaults (fflib.uff)
        from .uff import train_command_uff
        return train_command_uff(a, _bad)
    layers_given = a.layers is not None
    if a.method != "ff":
        # label-free training: its recipe's settings if one is named, then its own defaults
        if a.recipe is not None:
            try:
                recipes.resolve(a, a.recipe)
            except ValueError as e:
                _bad(str(e))
        for key, value in recipes.BASE.items():
            if getattr(a, key, None) is None:
                setattr(a, key, value)
    # unset flags take the recipe's settings (python -m fflib recipes), then the base defaults
    try:
        recipe, supplied = recipes.resolve(a, a.recipe) if a.method == "ff" else (None, {})
    except ValueError as e:
        _bad(str(e))
    norm_given = norm_given or "norm" in supplied    # a recipe that names its norm gives it too
    if a.channels is not None and a.model not in zoo.GROUP_MODELS:
        _bad(f"--channels sets the widths of {', '.join(zoo.GROUP_MODELS)}; --model {a.model} has "
             + ("its hidden sizes in --layers" if a.model == "mlp" else "the survey's fixed widths"))
    _check_output("--out", a.out)
    _check_output("--save", a.save)
    _check_output("--checkpoint", a.checkpoint, directory=True)
    if a.method != "ff":
        for flag, given in (("--early-exit", a.early_exit), ("--margin", a.margin is not None)):
            if given:
                _bad(f"{flag} does not apply to --method {a.method} (label-free FF loss; its probe is reported)")
        from .unsupervised import train_command_label_free
        return train_command_label_free(a, _bad, layers_given)
    if a.block_decay is not None:
        _bad("--block-decay anneals the blocks of a label-free run (--method scff|hybrid|uff); a labelled run "
             "schedules every epoch with --milestones or the cooldown")
    if a.resume and not a.checkpoint:
        _bad("--resume needs --checkpoint DIR (where the interrupted run kept its state)")
    if a.distributed and a.pipeline:
        _bad("--pipeline (one process's pipelined blocks) is not supported with --distributed; "
             "--distributed pipeline spreads the blocks over the ranks")
    comm, rank = mpi_world(a, _bad)
    if a.threads:
        set_num_threads(a.threads)
    x, y, xt, yt = load_train_test(a, _bad)
    image_shape = tuple(x.shape[1:])
    x = x.reshape(len(x), -1)
    xt = xt.reshape(len(xt), -1)
    if a.dataset == "sample" and supplied.get("val_size"):
        # an MNIST recipe's validation split (5,000 of 60,000 images) would take half the embedded
        # sample's 10,000; the sample holds out a tenth of its images instead
        a.val_size = len(x) // 10
    x, y, xv, yv, xt, yt = split_validation(a, x, y, xt, yt, _bad)
    # a light model under a loss that reads the label from the input takes a label channel
    labelled_light = a.model in zoo.LIGHT_MODELS and a.loss in zoo.LABEL_LOSSES
    cwc = a.model in CWC_MODELS and not labelled_light
    _check_api_flags(a, cwc, given)
    if cwc and a.label_encoding not in (None, "none"):
        _bad(f"--label-encoding does not apply to {a.model} (channel-wise competitive models take no label in the input)")
    loss = a.loss or ("cwc" if cwc else "symba")
    # a recipe's hard negatives where a flag changed what they apply to: the DF, cross-entropy and
    # group losses take no sampled wrong label, and no pipeline rank holds the whole model to draw
    # one; there the run takes uniform negatives (--negatives hard asks for them and is refused)
    if supplied.get("negatives") == "hard" and (loss not in ("ff", "symba") or a.distributed == "pipeline"):
        a.negatives = "uniform"
    # and a recipe's label encoding gives way to cross-entropy's (it reads the class from its output)
    if loss == "xent" and "label_encoding" in supplied:
        a.label_encoding = None
    if cwc and loss in zoo.LABEL_LOSSES:     # cwcomp: the light models take a label channel for these
        _bad(f"--loss {loss} reads the label from the input, and {a.model} takes no label in its input: use --loss "
             f"cwc, pvn or df-cwc (the light models ff_tiny .. ff_deep take a label channel for {loss})")
    if loss == "xent" and a.model != "mlp":
        _bad(f"--loss xent is softmax cross-entropy on a 10-wide last layer (the backprop baseline): an MLP "
             f"ending in 10 units (--model mlp --layers ...,10); {a.model}'s blocks end in feature maps, not logits")
    if loss == "xent" and a.layers[-1] != 10:
        _bad(f"--loss xent reads 10 logits from the MLP's last layer: end --layers with 10 (e.g. "
             f"{','.join(map(str, a.layers))},10), got {','.join(map(str, a.layers))}")
    if not cwc and loss in GROUP_LOSSES and a.model == "mlp":
        _bad(f"--loss {loss} needs a convolutional model with one channel group per class (cwcomp, ff_tiny, ...)")
    epochs = a.epochs or (DEFAULTS["epochs_sample"] if a.dataset == "sample" else DEFAULTS["epochs"])
    lr = a.lr or (DEFAULTS["lr_cwc"] if cwc else DEFAULTS["lr"])
    # the CwC models' heads read thousands of features: at the blocks' rate they diverge (measured)
    head_lr = a.head_lr or (lr / 10 if cwc else lr)
    batch_size = a.batch_size or (128 if cwc else 100)
    threshold = a.threshold
    if threshold is None:
        threshold = 2.0 if loss == "pvn" else default_threshold(a.goodness or "sum", a.layers[0])
    kw = dict(loss=loss, threshold=threshold, seed=a.seed)
    kw.update(_model_flags(a))
    if a.fourier_modes is not None:
        if a.label_encoding != "fourier":
            _bad("--fourier-modes needs --label-encoding fourier")
        kw["fourier_modes"] = _fourier_modes_arg(a.fourier_modes, x, y, image_shape)
    if a.label_value is not None or (a.fourier_modes or "").startswith("fit"):
        kw["label_value"] = 0.1 if a.label_value is None else a.label_value
    if cwc and norm_given:   # a CwC model's --norm is its one-pass head's input normalisation
        kw["norm"] = a.norm
    if not cwc:
        kw.update(goodness=a.goodness, norm=a.norm,
                  label_encoding=a.label_encoding or ("none" if loss == "xent" else
                                                      "embedding" if labelled_light else "onehot"))
    try:
        if a.model == "mlp":
            sizes = [x.shape[1]] + a.layers
            net_layers = mlp(sizes, norm=a.norm)
            if loss == "xent":   # cross-entropy reads the last layer's logits: the net is one block
                kw["blocks"] = [len(net_layers)]
            # augmentation shifts and mirrors images: the MLP then takes them as images (its
            # first LenNorm and Linear read them flattened; a one-hot label goes into the first
            # K pixels of every channel plane, for MNIST the same pixels as without)
            model = FFModel(net_layers, image_shape if a.augment else x.shape[1], 10, **kw)
        elif a.model == "cnn":
            kw["label_encoding"] = a.label_encoding or ("none" if loss == "xent" else "embedding")
            layers, shape = zoo.survey_cnn(a.dataset, norm=None if a.norm == "none" else a.norm,
                                           label_encoding=kw["label_encoding"])
            if shape != image_shape:
                _bad(f"the survey CNN for {a.dataset} expects images {shape}, got {image_shape}")
            model = FFModel(layers, shape, 10, **kw)
        else:
            if a.model in zoo.LIGHT_MODELS and image_shape != (3, 32, 32):
                _bad(f"{a.model} is a CIFAR-10 model (3x32x32 images); use --dataset cifar10")
            if a.channels is not None:
                kw["channels"] = a.channels
            model = zoo.build(a.model, a.dataset, **kw)
    except ValueError as e:
        _bad(str(e))
    if a.multipass_blocks is not None:     # checked now, not after the training
        try:
            model._block_selection(a.multipass_blocks)
        except ValueError as e:
            _bad(f"--multipass-blocks: {e}")
    if a.input_norm == "channel":   # statistics of the training split only (not validation, not test)
        from .nn import channel_stats
        try:
            mean, std = channel_stats(x, image_shape)
        except ValueError as e:
            _bad(f"--input-norm channel: {e}")
        if tuple(model.input_shape) != tuple(image_shape):   # a flat MLP: one value per pixel
            per = int(np.prod(image_shape[1:]))
            mean, std = np.repeat(mean, per), np.repeat(std, per)
        model.set_input_norm(mean, std)
    if supplied.get("head_refit") and not model.has_head:
        a.head_refit = None     # a recipe's refit gives way to --head-blocks none
    if supplied.get("head_epochs") and not model.has_head:
        a.head_epochs = None    # and its head-only epochs to --head-blocks none
    config = {"recipe": None if recipe is None else recipe.name, "subset": a.subset,
              "dataset": a.dataset, "data_dir": a.data_dir, "model": a.model,
              "layers": [x.shape[1]] + a.layers if a.model == "mlp" else None,
              # the blocks' widths the model has (a zoo CNN's, after rounding to channel groups)
              "channels": _block_widths(model) if a.model in zoo.GROUP_MODELS else None,
              # with --windows the blocks' epochs end with the last window (--epochs is not used)
              "epochs": epochs if a.windows is None else max(e for _, e in a.windows),
              "batch_size": batch_size, "lr": lr, "head_lr": head_lr,
              # the settings the model runs with (a CwC model ignores --goodness, and --norm unless given)
              "threshold": model.config["threshold"], "goodness": model.config["goodness"],
              "norm": model.config["norm"], "loss": model.config["loss"], "label_encoding": model.label_encoding,
              "fourier_modes": a.fourier_modes, "label_value": model.config["label_value"],
              "routine": a.routine, "chunk_size": a.chunk_size, "alternate": a.alternate, "pipeline": a.pipeline,
              "order": a.order, "negatives": a.negatives, "milestones": a.milestones, "gamma": a.gamma,
              "cooldown": a.cooldown, "augment": a.augment, "input_norm": a.input_norm or "none",
              "seed": a.seed, "threads": get_num_threads(),
              "checkpoint": a.checkpoint, "checkpoint_every": a.checkpoint_every, "resume": a.resume,
              "num_train": int(len(y)), "num_test": int(len(yt)), "val_size": a.val_size,
              "head_epochs": a.head_epochs or 0, "head_refit": a.head_refit or 0,
              "head_refit_lr": (a.head_refit_lr or HEAD_REFIT_LR) if a.head_refit else None,
              "num_params": model.num_parameters(), "num_params_with_head": model.num_parameters(head=True),
              "distributed": a.distributed, "ranks": 1 if comm is None else comm.Get_size(),
              **_api_config(a, model)}
    # a pipeline across ranks trains the head after the blocks (see fflib.distributed)
    head_epochs = a.head_epochs or (1 if a.distributed == "pipeline" and model.has_head else 0)
    if a.head_epochs and not model.has_head:
        _bad("--head-epochs trains the one-pass head: the model needs one (--head-blocks)")
    if a.head_refit and not model.has_head:
        _bad("--head-refit trains the one-pass head: the model needs one (--head-blocks)")
    if a.head_refit_lr is not None and not a.head_refit:
        _bad("--head-refit-lr is the rate of --head-refit N; give both")
    if a.head_refit_lr is not None and a.head_refit_lr <= 0:
        _bad(f"--head-refit-lr must be > 0, got {a.head_refit_lr}")
    try:
        opt = _make_optimizer(a, model, lr, head_lr, Adam)
        sched = None
        if a.milestones:
            sched = MultiStepLR(opt, a.milestones, a.gamma)
        elif a.cooldown:
            sched = LinearCooldown(opt, _run_epochs(a, epochs, model) + head_epochs)
    except (ValueError, TypeError) as e:
        _bad(str(e))
    if rank == 0:
        print(f"fflib: training {a.model} ({model.num_parameters()} parameters, {loss} loss, {a.routine}) "
              f"on {a.dataset} ({len(y)} train / {len(yt)} test), "
              f"{_epochs_text(_run_epochs(a, epochs, model) + head_epochs)}"
              + (f" ({_run_epochs(a, epochs, model)} + {head_epochs} head-only"
                 + (", the recipe's" if supplied.get("head_epochs") else "") + ")" if head_epochs else "")
              + (f", {a.distributed}-parallel on {comm.Get_size()} ranks" if comm is not None else ""), flush=True)

    def report(rec):
        val = rec.get("val")
        head_only = rec.get("active") is not None and not any(rec["active"])
        print(f"epoch {rec['epoch']:3d}  " + ("head only" if head_only else "block losses "
              + " ".join(f"{v:.4f}" for v in rec["block_loss"]))
              + (f"  head {rec['head_loss']:.4f}" if rec["head_loss"] is not None else "")
              + (f"  val {_errors_text(val)}" if val else "")
              + f"  {rec['seconds']:.1f}s", flush=True)

    if (a.negatives == "hard" or a.order != "simultaneous") and loss in GROUP_LOSSES + ("xent",):
        _bad("--negatives hard and --order layerwise apply to the ff and symba losses only")
    try:
        hist = fit(model, x, y, epochs=epochs, batch_size=batch_size, optimizer=opt, scheduler=sched,
                   order=a.order, negatives=a.negatives, routine=a.routine, chunk_size=a.chunk_size,
                   alternate=a.alternate, augment=a.augment, random_state=a.seed, x_val=xv, y_val=yv,
                   progress=not a.no_progress and sys.stderr.isatty(), callback=report,
                   checkpoint=a.checkpoint, checkpoint_every=a.checkpoint_every, resume=a.resume,
                   pipeline=a.pipeline, windows=a.windows, head_epochs=head_epochs,
                   **({} if comm is None else dict(comm=comm, distributed=a.distributed)))
    except (ValueError, TypeError, OSError) as e:
        _bad(str(e).replace("\n", " "))
    if rank != 0:       # rank 0 evaluates and writes; the others hold the same model
        return 0
    refit = None
    if a.head_refit and not hist["interrupted"]:
        lr_refit = a.head_refit_lr or HEAD_REFIT_LR
        print(f"fflib: refitting the one-pass head for {_epochs_text(a.head_refit)} at {lr_refit:g} on the "
              f"frozen blocks", flush=True)
        refit = refit_head(model, x, y, epochs=a.head_refit, lr=lr_refit, batch_size=batch_size,
                           random_state=a.seed, x_val=xv, y_val=yv, callback=report,
                           progress=not a.no_progress and sys.stderr.isatty())
        hist["interrupted"] = refit["interrupted"]
        hist["train_seconds"] += refit["train_seconds"]
    if hist["interrupted"]:
        print("fflib: interrupted; evaluating the model as it is", flush=True)
    t0 = time.perf_counter()
    try:
        test = evaluate(model, xt, yt, multipass_blocks=a.multipass_blocks)
    except ValueError as e:
        _bad(str(e).replace("\n", " "))
    eval_seconds = time.perf_counter() - t0
    # the training error on a fixed random subset: a full pass of multi-pass inference over a big
    # training set costs more than an epoch of training
    n_tr = min(len(y), TRAIN_ERROR_SAMPLES)
    sub = np.random.default_rng(0).choice(len(y), n_tr, replace=False) if n_tr < len(y) else slice(None)
    train = evaluate(model, x[sub], y[sub], multipass_blocks=a.multipass_blocks)
    result = {
        "config": config,
        # one_pass is null for a model without a head (--head-blocks none)
        "test_error": {"one_pass": test.get("one_pass"), "multi_pass": test["multi_pass"]},
        "train_error": {"one_pass": train.get("one_pass"), "multi_pass": train["multi_pass"]},
        "train_error_samples": n_tr,
        "block_accuracy_test": test["block_accuracy"],
        "epochs": [{"epoch": r["epoch"], "block_loss": r["block_loss"], "head_loss": r["head_loss"],
                    "active": r["active"], "lr": r["lr"], "seconds": r["seconds"],
                    # --alternate: the shifted cut's block losses
                    **({"block_loss_shifted": r["block_loss_shifted"]} if "block_loss_shifted" in r else {}),
                    **({"val_error": {k: r["val"][k] for k in ("one_pass", "multi_pass") if k in r["val"]},
                        # each FF layer's accuracy alone on the validation split (fractions)
                        "val_block_accuracy": r["val"]["block_accuracy"]}
                       if "val" in r else {})} for r in hist["epochs"]],
        # the head refitted after training (--head-refit): its epochs, numbered from 1
        "head_refit": None if refit is None else [
            {"epoch": r["epoch"], "head_loss": r["head_loss"], "lr": r["lr"], "seconds": r["seconds"],
             **({"val_error": {k: r["val"][k] for k in ("one_pass", "multi_pass") if k in r["val"]}}
                if "val" in r else {})} for r in refit["epochs"]],
        "train_seconds": hist["train_seconds"], "test_eval_seconds": eval_seconds,
        "interrupted": hist["interrupted"], "peak_rss_mb": peak_rss_mb(),
        "blas": __import__("fflib").blas_name(), "fflib_version": __version__,
        "schema_version": SCHEMA_VERSION,
    }
    print((f"test error: one-pass {test['one_pass']:.2f}%  multi-pass {test['multi_pass']:.2f}%  "
           if test.get("one_pass") is not None else
           f"test error: multi-pass {test['multi_pass']:.2f}% (no one-pass head)  ")
          + f"(train {_errors_text(train)})  "
          f"train {hist['train_seconds']:.1f}s  peak RSS {result['peak_rss_mb']:.0f} MB")
    if a.early_exit:
        result["early_exit"] = early_exit_report(model, xv, yv, xt, yt, a.early_exit, a.early_exit_drop)
    if a.save:
        model.save(a.save)
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, a.out)
        write_epoch_csv(csv_path(a.out), result["epochs"])
    return 130 if hist["interrupted"] else 0


def main(argv=None):
    """Entry point of ``python -m fflib`` and the ``fflib`` script."""
    try:
        status = _main(argv)
        sys.stdout.flush()
        return status
    except BrokenPipeError:   # `fflib recipes | head`: the reader left; no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141            # as a shell reports SIGPIPE


def _main(argv):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help()
        return 0
    a = parser.parse_args(argv)
    if a.command == "train":
        try:
            return train_command(a)
        except KeyboardInterrupt:  # during loading or evaluation: nothing to save
            sys.stderr.write("fflib: interrupted\n")
            return 130
    if a.command == "models":
        return models_command()
    if a.command == "recipes":
        return recipes_command(a)
    if a.command == "export":
        return run_export(a)
    if a.command == "eval":
        return eval_command(a)
    if a.command == "plot":
        from .plot import run_plot
        return run_plot(a)
    parser.print_help()
    return 2


def _eval_label_free(a, model, xt, yt):
    """``eval`` of a model trained without labels (``--method scff|hybrid|uff``: no label in its
    input and a loss without class scores): its linear probe's test error."""
    from . import __version__
    from .unsupervised import probe_error
    for flag, given in (("--multipass-blocks", a.multipass_blocks is not None), ("--early-exit", a.early_exit)):
        if given:
            _bad(f"{flag} needs class scores; {a.model} was trained without labels (its {model.config['loss']} "
                 f"loss scores no label): it is evaluated by its linear probe")
    if not model.has_head:
        _bad(f"{a.model} was trained without labels and has no one-pass head (linear probe) to classify with")
    err = probe_error(model, xt, yt)
    print(f"test error (linear probe): {err:.2f}%")
    if a.out is not None:
        with open(a.out, "w") as f:
            json.dump({"fflib_version": __version__, "model": os.path.abspath(a.model), "dataset": a.dataset,
                       "test_samples": int(len(yt)), "test_error": {"probe": err}}, f, indent=1)
    return 0


def eval_command(a):
    """Load a model file and report its test error (one-pass and multi-pass, in percent) and
    every block's multi-pass accuracy on a dataset's test split; optionally as JSON."""
    from . import __version__
    from .nn import FFModel
    from .train import evaluate
    if a.out is not None:
        parent = os.path.dirname(os.path.abspath(a.out))
        if not os.path.isdir(parent):
            _bad(f"--out {a.out}: the directory {parent} does not exist")
    _take_early_exit_drop(a)
    if a.threads is not None:
        if a.threads > 64:
            _bad(f"--threads must be in [1, 64], got {a.threads}")
        from . import set_num_threads
        set_num_threads(a.threads)
    try:
        model = FFModel.load(a.model)
    except (OSError, ValueError, TypeError) as e:
        _bad(str(e).replace("\n", " "))
    try:
        if a.dataset == "sample":
            if a.data_dir is not None:
                _bad("--data-dir is not used with --dataset sample (it is embedded)")
            xt, yt = datasets.load_sample(False)
        else:
            xt, yt = datasets.load(a.dataset, root=a.data_dir, train=False)
    except (FileNotFoundError, datasets.DatasetError) as e:
        _bad(str(e).replace("\n", " "))
    xt = xt.reshape(len(xt), -1)
    need = int(np.prod(model.input_shape))
    if xt.shape[1] != need:
        _bad(f"{a.model} takes {need} values per sample; the {a.dataset} test split has {xt.shape[1]}")
    if model.label_encoding == "none" and model.config["loss"] not in GROUP_LOSSES:
        return _eval_label_free(a, model, xt, yt)
    try:
        r = evaluate(model, xt, yt, multipass_blocks=a.multipass_blocks)
    except ValueError as e:
        _bad(str(e).replace("\n", " "))
    one = r.get("one_pass")
    print(f"test error: one-pass {one:.2f}%  multi-pass {r['multi_pass']:.2f}%" if one is not None
          else f"test error: multi-pass {r['multi_pass']:.2f}% (no one-pass head)")
    print("block accuracy: " + " ".join(f"{100 * v:.2f}%" for v in r["block_accuracy"]))
    ee = None
    if a.early_exit:
        try:
            if a.dataset == "sample":
                xv, yv = datasets.load_sample(True)
            else:
                xv, yv = datasets.load(a.dataset, root=a.data_dir, train=True)
        except (FileNotFoundError, datasets.DatasetError) as e:
            _bad(str(e).replace("\n", " "))
        if a.val_size > len(yv):
            _bad(f"--val-size must be at most the training split's {len(yv)} samples, got {a.val_size}")
        xv, yv = xv.reshape(len(xv), -1)[-a.val_size:], yv[-a.val_size:]
        ee = early_exit_report(model, xv, yv, xt, yt, a.early_exit, a.early_exit_drop)
    if a.out is not None:
        with open(a.out, "w") as f:
            json.dump({"fflib_version": __version__, "model": os.path.abspath(a.model), "dataset": a.dataset,
                       "test_samples": int(len(yt)), "test_error": {"one_pass": one, "multi_pass": r["multi_pass"]},
                       "block_accuracy": r["block_accuracy"],
                       **({"early_exit": ee} if ee is not None else {})}, f, indent=1)
    return 0


def models_command():
    """Print the model zoo with trainable parameter counts (ours and the survey's)."""
    print(f"{'model':12s} {'input':10s} {'blocks':>6s} {'params':>10s} {'+ head':>10s} {'survey':>10s}")
    for name in zoo.ZOO:
        ds = "mnist" if name in ("mlp", "cnn", "cwcomp") else "cifar10"
        m = zoo.build(name, ds)
        shape = "x".join(map(str, m.input_shape)) if m.input_shape[1] > 1 else str(m.input_shape[0])
        survey = zoo.SURVEY_PARAMS.get(name)
        print(f"{name:12s} {shape:10s} {m.num_blocks:6d} {m.num_parameters():10,d} "
              f"{m.num_parameters(head=True):10,d} {'-' if survey is None else format(survey, ','):>10s}")
    print("\nparams: the FF layers; + head: with the one-pass softmax head.  The survey's counts for the\n"
          "light models also include a 10x32x32 label embedding its code creates but does not use and\n"
          "2F affine parameters normalising the head's F inputs: ours + 2F + 10,240 = the survey's.")
    return 0


def recipes_command(a):
    """Print every recipe with its status, reported test error (one-pass / multi-pass, %), the
    survey's figure and target, and the command that runs it; ``--json``: the full records."""
    rows = [r.to_dict() for r in recipes.RECIPES.values()]
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["name"]) for r in rows)
    got = [("-" if r["status"] == "stopped" else "untuned") if r["result"] is None
           else recipes.format_result(r["result"]) for r in rows]
    wgot = max(13, max(len(g) for g in got))
    print(f"{'recipe':{width}s} {'status':9s} {'fflib %':>{wgot}s} {'survey':>11s} {'target':>8s}  command")
    for r, g in zip(rows, got):
        print(f"{r['name']:{width}s} {r['status']:9s} {g:>{wgot}s} {r['survey'] or '-':>11s} "
              f"{r['target'] or '-':>8s}  {r['command']}")
    print("\nfflib %: test error one-pass / multi-pass (a label-free recipe: its linear probe's) on the full\n"
          "test set, from the run in each recipe's "
          "source (--json shows it, the settings and how they were tuned); untuned: no run with these\n"
          "settings yet; stopped: a run stopped before its end (its validation curve is in --json's notes).\n"
          "Flags given to train override single settings of the recipe.")
    return 0
