#!/usr/bin/env python3
"""Build fflib/data/mnist_sample.npz, the small MNIST subset shipped with fflib.

Takes 1,000 images per class from the MNIST training set (10,000 in all) and
200 per class from the test set (2,000), chosen with
numpy.random.default_rng(0) so the result is the same on every run. The npz
holds, for each split, the uint8 images (N, 28, 28), uint8 labels (N,) and the
int64 indices into the original MNIST file (sorted, so the original order is
kept and every image can be traced back).

Usage: python scripts/make_sample.py [--root DIR] [--out PATH]
"""

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PER_CLASS = {"train": 1000, "test": 200}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_datasets_module():
    # Load fflib/datasets.py by path: importing the fflib package would pull
    # in the compiled core, which this script does not need.
    spec = importlib.util.spec_from_file_location("fflib_datasets", REPO / "fflib" / "datasets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find(root, name):
    """root/name[.gz] or root/mnist/name[.gz]."""
    for directory in (root, root / "mnist"):
        for candidate in (directory / name, directory / (name + ".gz")):
            if candidate.is_file():
                return candidate
    sys.exit(f"make_sample: {name}[.gz] not found in {root} or {root / 'mnist'}")


def stratified_indices(labels, per_class, rng):
    """per_class random indices of each label 0..9, returned sorted."""
    picks = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        picks.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picks)).astype(np.int64)


def main(argv=None):
    default_root = os.environ.get("FFLIB_DATA") or REPO.parent / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(default_root),
                        help="directory with the MNIST IDX files, directly or in mnist/ "
                             "(default: $FFLIB_DATA or ../shared/data)")
    parser.add_argument("--out", type=Path, default=REPO / "fflib" / "data" / "mnist_sample.npz",
                        help="output file (default: fflib/data/mnist_sample.npz)")
    args = parser.parse_args(argv)

    datasets = load_datasets_module()
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "test"):  # fixed order: the rng stream depends on it
        image_name, label_name = FILES[split]
        images = datasets.read_idx(find(args.root, image_name), ndim=3)
        labels = datasets.read_idx(find(args.root, label_name), ndim=1)
        assert images.shape[1:] == (28, 28) and len(images) == len(labels), (images.shape, labels.shape)
        idx = stratified_indices(labels, PER_CLASS[split], rng)
        arrays[f"x_{split}"] = images[idx]
        arrays[f"y_{split}"] = labels[idx]
        arrays[f"idx_{split}"] = idx

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes): "
          f"{len(arrays['x_train'])} train, {len(arrays['x_test'])} test images")


if __name__ == "__main__":
    main()
