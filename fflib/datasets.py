"""Dataset loaders: MNIST, Fashion-MNIST, CIFAR-10 and a bundled MNIST sample.

Every loader returns ``(X, y)`` where ``X`` is a C-contiguous float32 array of
images in NCHW layout scaled to [0, 1] and ``y`` is an int64 label vector:

======================  =====================  ===============
dataset                 X shape                y shape
======================  =====================  ===============
MNIST / Fashion-MNIST   (N, 1, 28, 28)         (N,)
CIFAR-10                (N, 3, 32, 32)         (N,)
======================  =====================  ===============

Flatten with ``X.reshape(len(X), -1)``; since ``X`` is C-contiguous that is a
view, not a copy.

Where the files are looked for
------------------------------
The base directory is the ``root`` argument, else the ``FFLIB_DATA``
environment variable, else ``~/.cache/fflib``. Each loader looks in the base
directory itself and in a per-dataset subdirectory (see the loader's
docstring), accepting each file both plain and gzipped (``name`` or
``name.gz``; the plain file wins when both exist). With ``download=True``
missing files are fetched from the usual public mirrors into that per-dataset
subdirectory and checked against their canonical MD5 sums.

This module is pure numpy + standard library on purpose: it must not import
the compiled core, so that scripts and tests can load it by file path.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import tarfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetError",
    "DownloadError",
    "DATASET_NAMES",
    "class_names",
    "load",
    "load_cifar10",
    "load_fashion_mnist",
    "load_mnist",
    "load_sample",
    "read_cifar_bin",
    "read_idx",
]


class DatasetError(ValueError):
    """A dataset file exists but its contents are not valid.

    Raised for a wrong IDX magic number, a truncated file, trailing bytes, a
    corrupt gzip stream, mismatched image/label counts, labels outside 0..9,
    a CIFAR-10 file whose size is not a whole number of 10,000 records, or an
    unexpected number of images. The message always names the offending file.
    """


class DownloadError(RuntimeError):
    """Fetching a dataset failed (no network, HTTP error or MD5 mismatch).

    The message names the URL, the directory the file was meant for and how
    to supply the files by hand instead.
    """


#: Names accepted by :func:`load` and :func:`class_names`.
DATASET_NAMES = ("sample", "mnist", "fashion-mnist", "cifar10")

# --- constants --------------------------------------------------------------

_IDX_NAMES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_COUNTS = {True: 60_000, False: 10_000}

_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# The S3 "website" endpoint only speaks plain http.
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# Debian's dataset-fashion-mnist package installs the four IDX .gz files here.
_FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_CIFAR_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = ("test_batch.bin",)
_CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then R, G and B planes
_CIFAR_PER_FILE = 10_000

_DOWNLOAD_TIMEOUT = 30  # seconds per blocking socket operation

_SAMPLE_PATH = Path(__file__).resolve().parent / "data" / "mnist_sample.npz"

_CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    # Order of batches.meta.txt in the binary CIFAR-10 release.
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
}
_CLASS_NAMES["sample"] = _CLASS_NAMES["mnist"]


# --- low-level readers ------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    """Return the (decompressed, for ``.gz``) contents of ``path``."""
    raw = path.read_bytes()  # a missing/unreadable file is an OSError, not ours
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        # BadGzipFile is an OSError, a cut-off stream an EOFError, a damaged
        # deflate block a zlib.error: all mean the same thing to the user.
        raise DatasetError(
            f"{path}: corrupt gzip data ({exc}); delete the file and fetch it again"
        ) from exc


def read_idx(path, ndim=None):
    """Read an unsigned-byte IDX file (the MNIST format), gzipped or not.

    Parameters
    ----------
    path : str or os.PathLike
        The file; a name ending in ``.gz`` is decompressed first.
    ndim : int, optional
        Number of dimensions the file must have. When given, the magic number
        must be exactly ``0x00000800 | ndim`` (``0x00000803`` for image
        files, ``0x00000801`` for label files).

    Returns
    -------
    numpy.ndarray
        A writable uint8 array whose shape is the dimensions in the header.

    Raises
    ------
    DatasetError
        On a wrong magic number, a non-uint8 element type, a truncated file,
        trailing bytes after the data, or corrupt gzip data.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated: {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if ndim is not None:
        expected = 0x0800 | ndim
        if magic != expected:
            raise DatasetError(
                f"{path}: bad IDX magic 0x{magic:08x}, expected 0x{expected:08x} "
                f"(uint8 data with {ndim} dimension{'s' if ndim != 1 else ''})"
            )
    elif data[0] or data[1] or data[2] != 0x08 or data[3] == 0:
        raise DatasetError(
            f"{path}: bad IDX magic 0x{magic:08x}; only unsigned-byte IDX files "
            "(0x000008NN) are supported"
        )
    nd = data[3]
    header = 4 + 4 * nd
    if len(data) < header:
        raise DatasetError(
            f"{path}: truncated: {len(data)} bytes, the IDX header alone needs {header}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd))
    size = math.prod(dims)
    if len(data) < header + size:
        raise DatasetError(
            f"{path}: truncated: header promises dims {dims} ({header + size} bytes), "
            f"file has {len(data)}"
        )
    if len(data) > header + size:
        raise DatasetError(
            f"{path}: {len(data) - header - size} bytes of trailing garbage after "
            f"the data for dims {dims}"
        )
    # frombuffer over bytes is read-only; copy so callers get a normal array.
    return np.frombuffer(data, np.uint8, count=size, offset=header).reshape(dims).copy()


def read_cifar_bin(path):
    """Read one CIFAR-10 binary batch (``*.bin`` or ``*.bin.gz``).

    Each record is one label byte followed by 1024 red, 1024 green and 1024
    blue bytes, each plane row-major 32x32.

    Parameters
    ----------
    path : str or os.PathLike
        The batch file; a name ending in ``.gz`` is decompressed first.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape (N, 3, 32, 32), C-contiguous, channel planes as stored.
    labels : numpy.ndarray
        uint8, shape (N,).

    Raises
    ------
    DatasetError
        If the size is not a positive multiple of 3073 bytes, a label is
        greater than 9, or the gzip data is corrupt.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise DatasetError(
            f"{path}: size {len(data)} bytes is not a whole number of "
            f"{_CIFAR_RECORD}-byte CIFAR-10 records"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].copy()
    _check_labels(labels, path)
    images = np.ascontiguousarray(records[:, 1:]).reshape(-1, 3, 32, 32)
    return images, labels


def _check_labels(labels, path):
    if labels.size and int(labels.max()) > 9:
        bad = int(np.argmax(labels > 9))
        raise DatasetError(
            f"{path}: label {int(labels[bad])} at index {bad} is out of range 0..9"
        )


# --- locating files ---------------------------------------------------------

def _base_dir(root):
    """The explicit root, else $FFLIB_DATA, else the download cache."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("FFLIB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fflib"


def _find_file(directory, name):
    """``directory/name`` or ``directory/name.gz``, preferring the plain file."""
    for candidate in (directory / name, directory / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _find_set(dirs, names):
    """Paths of all ``names`` from the first directory that holds every one."""
    for directory in dirs:
        found = [_find_file(directory, n) for n in names]
        if all(found):
            return found
    return None


def _locate(title, names, dirs, download, fetch):
    """Find ``names`` in ``dirs``, calling ``fetch()`` first if allowed and needed."""
    found = _find_set(dirs, names)
    if found is None and download:
        fetch()
        found = _find_set(dirs, names)
    if found is None:
        searched = "\n".join(f"  {d}" for d in dirs)
        wanted = ", ".join(f"{n}[.gz]" for n in names)
        raise FileNotFoundError(
            f"{title} files not found: need {wanted}.\nSearched:\n{searched}\n"
            "Fix: pass root=DIR (--data-dir DIR on the command line), a directory "
            "holding these files, or set the FFLIB_DATA environment variable to "
            "such a directory; in Python, download=True fetches them."
        )
    return found


# --- downloading ------------------------------------------------------------

def _download(url, dest, md5, manual=None):
    """Fetch ``url`` to ``dest`` via a ``.part`` file, verifying its MD5.

    ``manual`` tells the user how to supply the file by hand if this fails.
    """
    if manual is None:
        manual = f"fetch {url} elsewhere and put it in {dest.parent}"
    manual = (
        f"To supply the files by hand, {manual}; or pass root=/set FFLIB_DATA "
        "to a directory that already holds the dataset files."
    )
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response, \
                open(part, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # URLError, HTTPError and timeouts are all OSErrors.
        part.unlink(missing_ok=True)
        raise DownloadError(f"Download of {url} failed: {exc}. {manual}") from exc
    if digest.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"Download of {url} is corrupt: MD5 {digest.hexdigest()}, expected {md5}. {manual}"
        )
    os.replace(part, dest)


def _fetch_idx(base_url, md5s, names, directory):
    """Download whichever of the IDX ``names`` are missing from ``directory``."""
    for name in names:
        if _find_file(directory, name) is None:
            gz = name + ".gz"
            _download(base_url + gz, directory / gz, md5s[gz])


def _fetch_cifar(directory):
    """Download the binary CIFAR-10 archive and unpack it under ``directory``."""
    archive = directory / "cifar-10-binary.tar.gz"
    target = directory / "cifar-10-batches-bin"
    _download(_CIFAR_URL, archive, _CIFAR_MD5,
              manual=f"fetch {_CIFAR_URL} elsewhere and unpack it so the .bin files are in {target}")
    wanted = set(_CIFAR_TRAIN + _CIFAR_TEST + ("batches.meta.txt",))
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                # Only known file names, written by base name: an odd archive
                # cannot place files anywhere else.
                base = member.name.rsplit("/", 1)[-1]
                if not (member.isfile() and base in wanted):
                    continue
                part = target / (base + ".part")
                with tar.extractfile(member) as src, open(part, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                os.replace(part, target / base)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DownloadError(
            f"Unpacking {archive} (from {_CIFAR_URL}) failed: {exc}. Unpack it by "
            f"hand so that the .bin files end up in {target}."
        ) from exc
    finally:
        archive.unlink(missing_ok=True)


# --- loaders ----------------------------------------------------------------

def _to_float(images):
    """uint8 images -> C-contiguous float32 in [0, 1]."""
    x = images.astype(np.float32)  # a fresh C-contiguous copy
    x /= 255.0
    return x


def _load_idx_dataset(title, paths, train):
    image_path, label_path = paths
    images = read_idx(image_path, ndim=3)
    labels = read_idx(label_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise DatasetError(
            f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28"
        )
    if len(images) != len(labels):
        raise DatasetError(
            f"{image_path} holds {len(images)} images but {label_path} holds "
            f"{len(labels)} labels"
        )
    _check_labels(labels, label_path)
    expected = _IDX_COUNTS[bool(train)]
    if len(images) != expected:
        raise DatasetError(
            f"{image_path}: {len(images)} images, expected {expected:,} for the "
            f"{title} {'training' if train else 'test'} set"
        )
    return _to_float(images.reshape(-1, 1, 28, 28)), labels.astype(np.int64)


def load_mnist(root=None, train=True, download=False):
    """Load MNIST (60,000 training or 10,000 test handwritten digits).

    Parameters
    ----------
    root : str or os.PathLike, optional
        Directory holding the IDX files (``train-images-idx3-ubyte[.gz]`` and
        friends) directly or in a ``mnist/`` subdirectory. Defaults to
        ``$FFLIB_DATA``, else ``~/.cache/fflib``.
    train : bool, default True
        Training split if true, test split otherwise.
    download : bool, default False
        Fetch the missing ``.gz`` files into ``<root>/mnist/`` (MD5-checked).

    Returns
    -------
    X : numpy.ndarray
        float32, shape (N, 1, 28, 28), C-contiguous, values in [0, 1].
    y : numpy.ndarray
        int64, shape (N,), values 0..9.

    Raises
    ------
    FileNotFoundError
        If the files are not found (and not downloaded); lists every path searched.
    DatasetError
        If a file is malformed.
    DownloadError
        If ``download=True`` and fetching fails.
    """
    base = _base_dir(root)
    names = _IDX_NAMES[bool(train)]
    paths = _locate(
        "MNIST", names, [base, base / "mnist"], download,
        lambda: _fetch_idx(_MNIST_URL, _MNIST_MD5, names, base / "mnist"),
    )
    return _load_idx_dataset("MNIST", paths, train)


def load_fashion_mnist(root=None, train=True, download=False):
    """Load Fashion-MNIST (60,000 training or 10,000 test clothing images).

    Parameters
    ----------
    root : str or os.PathLike, optional
        Directory holding the IDX files directly or in a ``fashion-mnist/``
        subdirectory. Defaults to ``$FFLIB_DATA``, else ``~/.cache/fflib``.
        ``/usr/share/datasets/fashion-mnist`` (Debian's
        ``dataset-fashion-mnist`` package) is tried last. Note the file names
        are the same as MNIST's, so do not point ``root`` at an MNIST folder.
    train : bool, default True
        Training split if true, test split otherwise.
    download : bool, default False
        Fetch the missing ``.gz`` files into ``<root>/fashion-mnist/``
        (MD5-checked).

    Returns
    -------
    X : numpy.ndarray
        float32, shape (N, 1, 28, 28), C-contiguous, values in [0, 1].
    y : numpy.ndarray
        int64, shape (N,), values 0..9 (see :func:`class_names`).

    Raises
    ------
    FileNotFoundError, DatasetError, DownloadError
        As for :func:`load_mnist`.
    """
    base = _base_dir(root)
    names = _IDX_NAMES[bool(train)]
    dirs = [base, base / "fashion-mnist"]
    if _FASHION_SYSTEM_DIR.is_dir():
        dirs.append(_FASHION_SYSTEM_DIR)
    paths = _locate(
        "Fashion-MNIST", names, dirs, download,
        lambda: _fetch_idx(_FASHION_URL, _FASHION_MD5, names, base / "fashion-mnist"),
    )
    return _load_idx_dataset("Fashion-MNIST", paths, train)


def load_cifar10(root=None, train=True, download=False):
    """Load CIFAR-10 (50,000 training or 10,000 test 32x32 colour images).

    Parameters
    ----------
    root : str or os.PathLike, optional
        Directory holding the binary batches (``data_batch_1.bin`` ..
        ``data_batch_5.bin``, ``test_batch.bin``, each optionally ``.gz``)
        directly, in ``cifar-10-batches-bin/`` or in
        ``cifar10/cifar-10-batches-bin/``. Defaults to ``$FFLIB_DATA``, else
        ``~/.cache/fflib``.
    train : bool, default True
        Training split (the five data batches, in order) if true, test
        split otherwise.
    download : bool, default False
        Fetch ``cifar-10-binary.tar.gz`` (about 160 MB, MD5-checked) and
        unpack it into ``<root>/cifar10/cifar-10-batches-bin/``.

    Returns
    -------
    X : numpy.ndarray
        float32, shape (N, 3, 32, 32), C-contiguous, values in [0, 1]; the
        channels are the R, G, B planes exactly as stored.
    y : numpy.ndarray
        int64, shape (N,), values 0..9 (see :func:`class_names`).

    Raises
    ------
    FileNotFoundError, DatasetError, DownloadError
        As for :func:`load_mnist`; :class:`DatasetError` also when a batch
        does not hold exactly 10,000 records.
    """
    base = _base_dir(root)
    names = _CIFAR_TRAIN if train else _CIFAR_TEST
    dirs = [base, base / "cifar-10-batches-bin", base / "cifar10" / "cifar-10-batches-bin"]
    paths = _locate("CIFAR-10", names, dirs, download, lambda: _fetch_cifar(base / "cifar10"))
    # Fill one preallocated array instead of concatenating, to keep peak memory low.
    n = _CIFAR_PER_FILE
    X = np.empty((n * len(paths), 3, 32, 32), np.float32)
    y = np.empty(n * len(paths), np.int64)
    for i, path in enumerate(paths):
        images, labels = read_cifar_bin(path)
        if len(images) != n:
            raise DatasetError(f"{path}: {len(images)} records, expected {n:,}")
        X[i * n:(i + 1) * n] = images
        y[i * n:(i + 1) * n] = labels
    X /= 255.0
    return X, y


def load_sample(train=True):
    """Load the small MNIST subset shipped with fflib (no files needed).

    The sample holds 10,000 images of the MNIST training set and 2,000 of
    the test set, 1,000 and 200 per class, chosen deterministically
    (``numpy.random.default_rng(0)``) by ``scripts/make_sample.py``; the npz
    also stores the source indices (``idx_train``, ``idx_test``).

    Parameters
    ----------
    train : bool, default True
        The 10,000-image training part if true, the 2,000-image test part
        otherwise.

    Returns
    -------
    X : numpy.ndarray
        float32, shape (N, 1, 28, 28), C-contiguous, values in [0, 1].
    y : numpy.ndarray
        int64, shape (N,).

    Raises
    ------
    FileNotFoundError
        If the package was installed without its data file.
    """
    if not _SAMPLE_PATH.is_file():
        raise FileNotFoundError(
            f"bundled MNIST sample {_SAMPLE_PATH} is missing; reinstall fflib or "
            "rebuild it with scripts/make_sample.py"
        )
    split = "train" if train else "test"
    with np.load(_SAMPLE_PATH) as npz:
        images = npz[f"x_{split}"]
        labels = npz[f"y_{split}"]
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DatasetError(f"{_SAMPLE_PATH}: unexpected array shapes {images.shape}, {labels.shape}")
    return _to_float(images.reshape(-1, 1, 28, 28)), labels.astype(np.int64)


_LOADERS = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
}


def _check_name(name):
    if name not in DATASET_NAMES:
        valid = ", ".join(repr(n) for n in DATASET_NAMES)
        raise ValueError(f"unknown dataset {name!r}; valid names: {valid}")


def load(name, root=None, train=True, download=False):
    """Load a dataset by name.

    Parameters
    ----------
    name : {"sample", "mnist", "fashion-mnist", "cifar10"}
        Which dataset. ``"sample"`` ignores ``root`` and ``download``.
    root, train, download
        Passed on to the matching ``load_*`` function.

    Returns
    -------
    X, y : numpy.ndarray
        As returned by the matching ``load_*`` function.

    Raises
    ------
    ValueError
        If ``name`` is not one of the valid names (the message lists them).
    """
    _check_name(name)
    if name == "sample":
        return load_sample(train=train)
    return _LOADERS[name](root=root, train=train, download=download)


def class_names(name):
    """Return the 10 class names of a dataset, indexed by label.

    Parameters
    ----------
    name : {"sample", "mnist", "fashion-mnist", "cifar10"}

    Returns
    -------
    list of str
        ``"0"``..``"9"`` for MNIST and the sample; the Fashion-MNIST names
        (``"T-shirt/top"`` .. ``"Ankle boot"``); the CIFAR-10 names in
        ``batches.meta.txt`` order (``"airplane"`` .. ``"truck"``).

    Raises
    ------
    ValueError
        If ``name`` is not one of the valid names.
    """
    _check_name(name)
    return list(_CLASS_NAMES[name])
