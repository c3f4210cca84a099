"""Tests for fflib.datasets: real data where present, synthetic broken files in tmp_path.

Nothing here touches the network: downloads are exercised with urlopen
monkeypatched to fail, to return wrong bytes, or to serve local files.
"""

import gzip
import hashlib
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

try:
    from fflib import datasets as ds
except ImportError:
    # fflib/__init__.py imports the compiled core; the dataset layer does not
    # need it, so load the module straight from its file.
    _spec = importlib.util.spec_from_file_location("fflib_datasets", REPO / "fflib" / "datasets.py")
    ds = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(ds)

# The repo is cloned next to shared/; FFLIB_DATA overrides.
DATA = Path(os.environ.get("FFLIB_DATA") or REPO.parent / "shared" / "data")

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _dir_with(candidates, name):
    """First candidate directory holding name or name.gz, else None."""
    for d in candidates:
        if (d / name).is_file() or (d / (name + ".gz")).is_file():
            return d
    return None


MNIST_DIR = _dir_with([DATA, DATA / "mnist"], "t10k-images-idx3-ubyte")
CIFAR_DIR = _dir_with(
    [DATA, DATA / "cifar-10-batches-bin", DATA / "cifar10" / "cifar-10-batches-bin"],
    "test_batch.bin",
)
FASHION_DIR = _dir_with(
    [DATA / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")],
    "t10k-images-idx3-ubyte",
)

needs_mnist = pytest.mark.skipif(MNIST_DIR is None, reason=f"MNIST files not found under {DATA}")
needs_cifar = pytest.mark.skipif(CIFAR_DIR is None, reason=f"CIFAR-10 files not found under {DATA}")
needs_fashion = pytest.mark.skipif(
    FASHION_DIR is None,
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


def _raw(directory, name):
    """Decompressed bytes of directory/name[.gz]."""
    plain = directory / name
    if plain.is_file():
        return plain.read_bytes()
    return gzip.decompress((directory / (name + ".gz")).read_bytes())


def _idx_bytes(array, magic=None):
    """Serialise a uint8 array as IDX (optionally with a forced magic)."""
    array = np.asarray(array, np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _write_test_split(directory, images, labels):
    """Write plain t10k IDX files into directory; return (image_path, label_path)."""
    directory.mkdir(parents=True, exist_ok=True)
    ip = directory / "t10k-images-idx3-ubyte"
    lp = directory / "t10k-labels-idx1-ubyte"
    ip.write_bytes(images if isinstance(images, bytes) else _idx_bytes(images))
    lp.write_bytes(labels if isinstance(labels, bytes) else _idx_bytes(labels))
    return ip, lp


def _valid_labels(n=10_000):
    return np.arange(n) % 10


def _cifar_bytes(n, label=lambda i: i % 10):
    records = np.zeros((n, ds._CIFAR_RECORD), np.uint8)
    records[:, 0] = [label(i) for i in range(n)]
    records[:, 1:] = (np.arange(3072) % 251).astype(np.uint8)
    return records.tobytes()


@pytest.fixture(scope="module")
def mnist_test():
    return ds.load_mnist(MNIST_DIR, train=False)


@pytest.fixture(scope="module")
def mnist_train():
    return ds.load_mnist(MNIST_DIR, train=True)


# --- real data --------------------------------------------------------------

def _check_format(X, y, shape):
    assert X.shape == shape and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.shape == (shape[0],) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    # Flattening must be a view, not a copy.
    assert np.shares_memory(X.reshape(len(X), -1), X)


@needs_mnist
def test_mnist_train(mnist_train):
    X, y = mnist_train
    _check_format(X, y, (60_000, 1, 28, 28))
    assert np.bincount(y).tolist() == MNIST_TRAIN_COUNTS


@needs_mnist
def test_mnist_test(mnist_test):
    X, y = mnist_test
    _check_format(X, y, (10_000, 1, 28, 28))
    assert np.bincount(y).tolist() == MNIST_TEST_COUNTS
    # Scaling is exactly value / 255 of the stored bytes.
    raw = ds.read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz", ndim=3)
    np.testing.assert_array_equal(X[:, 0], raw.astype(np.float32) / 255)


@needs_mnist
def test_mnist_root_layouts_and_load(mnist_test):
    # The shared data dir holds mnist/ as a subdirectory; both spellings work.
    for root in (DATA, MNIST_DIR):
        X, y = ds.load("mnist", root=root, train=False)
        np.testing.assert_array_equal(X, mnist_test[0])
        np.testing.assert_array_equal(y, mnist_test[1])


@needs_mnist
def test_mnist_plain_files_preferred_over_gz(tmp_path, mnist_test):
    for name in ds._IDX_NAMES[False]:
        (tmp_path / name).write_bytes(_raw(MNIST_DIR, name))
        # A broken .gz next to the plain file must be ignored.
        (tmp_path / (name + ".gz")).write_bytes(b"not gzip at all")
    X, y = ds.load_mnist(tmp_path, train=False)
    np.testing.assert_array_equal(X, mnist_test[0])
    np.testing.assert_array_equal(y, mnist_test[1])


@needs_mnist
def test_read_idx_header_dims():
    labels = ds.read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10_000,) and labels.dtype == np.uint8
    labels[0] = 0  # writable


@needs_cifar
def test_cifar_test_set():
    X, y = ds.load_cifar10(CIFAR_DIR, train=False)
    _check_format(X, y, (10_000, 3, 32, 32))
    assert np.bincount(y).tolist() == [1000] * 10
    # Channel planes exactly as stored: record 0 is label, 1024 R, 1024 G, 1024 B.
    record = np.frombuffer(_raw(CIFAR_DIR, "test_batch.bin")[: ds._CIFAR_RECORD], np.uint8)
    assert y[0] == record[0]
    np.testing.assert_array_equal(X[0, 0].ravel(), record[1:1025] / np.float32(255))
    np.testing.assert_array_equal(X[0, 2].ravel(), record[2049:] / np.float32(255))


@needs_cifar
def test_cifar_train_set():
    X, y = ds.load_cifar10(CIFAR_DIR, train=True)
    _check_format(X, y, (50_000, 3, 32, 32))
    assert np.bincount(y).tolist() == [5000] * 10


@needs_cifar
def test_cifar_root_layouts_and_plain_bin(tmp_path):
    X_ref, y_ref = ds.load_cifar10(CIFAR_DIR, train=False)
    # <root>/cifar10/cifar-10-batches-bin/ as in the shared data dir.
    X, y = ds.load("cifar10", root=DATA, train=False)
    np.testing.assert_array_equal(y, y_ref)
    # An uncompressed .bin, as shipped in the official archive.
    target = tmp_path / "cifar-10-batches-bin"
    target.mkdir()
    (target / "test_batch.bin").write_bytes(_raw(CIFAR_DIR, "test_batch.bin"))
    X, y = ds.load_cifar10(tmp_path, train=False)
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(y, y_ref)


@needs_fashion
def test_fashion_mnist():
    X, y = ds.load_fashion_mnist(FASHION_DIR, train=False)
    _check_format(X, y, (10_000, 1, 28, 28))
    assert np.bincount(y).tolist() == [1000] * 10
    if MNIST_DIR is not None:  # really a different data set
        assert not np.array_equal(X, ds.load_mnist(MNIST_DIR, train=False)[0])
    X, y = ds.load_fashion_mnist(FASHION_DIR, train=True)
    _check_format(X, y, (60_000, 1, 28, 28))
    assert np.bincount(y).tolist() == [6000] * 10


@pytest.mark.skipif(not ds._FASHION_SYSTEM_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_system_fallback(tmp_path):
    # An empty root still finds the Debian package's files.
    X, y = ds.load("fashion-mnist", root=tmp_path, train=False)
    assert X.shape == (10_000, 1, 28, 28)


def test_class_names():
    assert ds.class_names("mnist") == [str(i) for i in range(10)]
    assert ds.class_names("sample") == ds.class_names("mnist")
    assert ds.class_names("fashion-mnist")[0] == "T-shirt/top"
    assert ds.class_names("fashion-mnist")[9] == "Ankle boot"
    assert ds.class_names("cifar10") == [
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ]
    meta = CIFAR_DIR and CIFAR_DIR / "batches.meta.txt"
    if meta and meta.is_file():
        assert meta.read_text().split() == ds.class_names("cifar10")


def test_unknown_name():
    with pytest.raises(ValueError, match="valid names.*'sample'.*'mnist'.*'fashion-mnist'.*'cifar10'"):
        ds.load("bogus")
    with pytest.raises(ValueError, match="bogus"):
        ds.class_names("bogus")


# --- the bundled sample -----------------------------------------------------

def test_sample_format():
    assert ds._SAMPLE_PATH.stat().st_size < 3_000_000
    X, y = ds.load_sample()
    _check_format(X, y, (10_000, 1, 28, 28))
    assert np.bincount(y).tolist() == [1000] * 10
    X, y = ds.load("sample", train=False)
    _check_format(X, y, (2_000, 1, 28, 28))
    assert np.bincount(y).tolist() == [200] * 10


@needs_mnist
@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_sample_matches_real_mnist(train, request):
    X_full, y_full = request.getfixturevalue("mnist_train" if train else "mnist_test")
    split = "train" if train else "test"
    with np.load(ds._SAMPLE_PATH) as npz:
        idx = npz[f"idx_{split}"]
        x_raw, y_raw = npz[f"x_{split}"], npz[f"y_{split}"]
    assert x_raw.dtype == np.uint8 and y_raw.dtype == np.uint8
    assert len(np.unique(idx)) == len(idx)
    X, y = ds.load_sample(train=train)
    np.testing.assert_array_equal(X, X_full[idx])
    np.testing.assert_array_equal(y, y_full[idx])


@needs_mnist
def test_make_sample_script_is_deterministic(tmp_path):
    out = tmp_path / "sample.npz"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_sample.py"), "--root", str(MNIST_DIR), "--out", str(out)],
        check=True, capture_output=True, timeout=120,
    )
    with np.load(out) as new, np.load(ds._SAMPLE_PATH) as shipped:
        assert sorted(new.files) == sorted(shipped.files)
        for key in new.files:
            np.testing.assert_array_equal(new[key], shipped[key], err_msg=key)


# --- broken files -----------------------------------------------------------

def _raises_naming(path, func, *args, match=None, **kwargs):
    with pytest.raises(ds.DatasetError, match=match) as info:
        func(*args, **kwargs)
    assert path.name in str(info.value)
    return info.value


def test_bad_magic(tmp_path):
    images = np.zeros((10_000, 28, 28), np.uint8)
    # Labels file carrying the images magic.
    _, lp = _write_test_split(tmp_path, images, _idx_bytes(_valid_labels(), magic=0x0803))
    _raises_naming(lp, ds.load_mnist, tmp_path, train=False, match="magic 0x00000803, expected 0x00000801")
    _raises_naming(lp, ds.read_idx, lp, ndim=1, match="magic")
    junk = tmp_path / "junk.idx"
    junk.write_bytes(b"PK\x03\x04" + bytes(20))
    _raises_naming(junk, ds.read_idx, junk, match="magic")


def test_truncated_and_trailing(tmp_path):
    good = _idx_bytes(np.zeros((10_000, 28, 28), np.uint8))
    ip, _ = _write_test_split(tmp_path, good[:-100], _valid_labels())
    _raises_naming(ip, ds.load_mnist, tmp_path, train=False, match="truncated")
    ip.write_bytes(good[:10])  # cut inside the header
    _raises_naming(ip, ds.read_idx, ip, match="truncated")
    ip.write_bytes(good + b"extra")
    _raises_naming(ip, ds.load_mnist, tmp_path, train=False, match="trailing")


@needs_mnist
@pytest.mark.parametrize("damage", ["cut", "flipped", "bad-block", "not-gzip"])
def test_corrupt_gzip(tmp_path, damage):
    name = "t10k-labels-idx1-ubyte.gz"
    data = bytearray((MNIST_DIR / name).read_bytes())
    if damage == "cut":
        data = data[: len(data) // 2]          # EOFError inside gzip
    elif damage == "flipped":
        data[len(data) // 2] ^= 0xFF           # zlib.error or CRC error
    elif damage == "bad-block":
        # First deflate byte (after the header's NUL-ended file name) set to a
        # reserved block type: zlib.error.
        data[data.index(b"\0", 10) + 1] = 0xFF
    else:
        data = bytearray(b"this is not gzip data")  # BadGzipFile (OSError)
    (tmp_path / name).write_bytes(bytes(data))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(
        (MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    _raises_naming(tmp_path / name, ds.load_mnist, tmp_path, train=False, match="gzip")


def test_label_out_of_range(tmp_path):
    labels = _valid_labels()
    labels[1234] = 10
    _, lp = _write_test_split(tmp_path, np.zeros((10_000, 28, 28), np.uint8), labels)
    err = _raises_naming(lp, ds.load_mnist, tmp_path, train=False, match="out of range")
    assert "1234" in str(err)


def test_count_mismatch(tmp_path):
    ip, lp = _write_test_split(tmp_path, np.zeros((10_000, 28, 28), np.uint8), _valid_labels(9_999))
    err = _raises_naming(ip, ds.load_mnist, tmp_path, train=False, match="10000 images.*9999 labels")
    assert lp.name in str(err)


def test_unexpected_count_and_dims(tmp_path):
    ip, _ = _write_test_split(tmp_path, np.zeros((5, 28, 28), np.uint8), _valid_labels(5))
    _raises_naming(ip, ds.load_mnist, tmp_path, train=False, match="expected 10,000")
    _write_test_split(tmp_path, np.zeros((10_000, 28, 27), np.uint8), _valid_labels())
    _raises_naming(ip, ds.load_mnist, tmp_path, train=False, match="28x28")


def test_cifar_wrong_size(tmp_path):
    path = tmp_path / "test_batch.bin"
    path.write_bytes(_cifar_bytes(3) + b"xx")
    _raises_naming(path, ds.load_cifar10, tmp_path, train=False, match="3073")
    _raises_naming(path, ds.read_cifar_bin, path, match="3073")
    path.write_bytes(_cifar_bytes(5))
    _raises_naming(path, ds.load_cifar10, tmp_path, train=False, match="expected 10,000")
    path.write_bytes(_cifar_bytes(5, label=lambda i: 42 if i == 3 else 0))
    _raises_naming(path, ds.read_cifar_bin, path, match="label 42 at index 3")


def test_cifar_gz_corrupt(tmp_path):
    path = tmp_path / "test_batch.bin.gz"
    path.write_bytes(gzip.compress(_cifar_bytes(4))[:-30])
    _raises_naming(path, ds.read_cifar_bin, path, match="gzip")


def test_read_cifar_bin_layout(tmp_path):
    path = tmp_path / "batch.bin"
    path.write_bytes(_cifar_bytes(4))
    images, labels = ds.read_cifar_bin(path)
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.uint8 and images.flags.c_contiguous
    assert labels.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(images[1].ravel(), np.arange(3072) % 251)


# --- locating files ---------------------------------------------------------

@pytest.mark.parametrize("loader, subdir", [
    (ds.load_mnist, "mnist"),
    (ds.load_cifar10, "cifar-10-batches-bin"),
])
def test_missing_root(tmp_path, loader, subdir):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        loader(root, train=False)
    msg = str(info.value)
    for expected in (str(root), str(root / subdir), "root=", "FFLIB_DATA", "download=True"):
        assert expected in msg


def test_fflib_data_env_var(tmp_path, monkeypatch):
    _write_test_split(tmp_path / "mnist", np.zeros((10_000, 28, 28), np.uint8), _valid_labels())
    monkeypatch.setenv("FFLIB_DATA", str(tmp_path))
    X, y = ds.load_mnist(train=False)
    assert X.shape == (10_000, 1, 28, 28) and y[:3].tolist() == [0, 1, 2]
    empty = tmp_path / "empty"
    monkeypatch.setenv("FFLIB_DATA", str(empty))
    with pytest.raises(FileNotFoundError, match=str(empty)):
        ds.load("mnist", train=False)


# --- downloads (network never used) -----------------------------------------

def _no_network(*args, **kwargs):
    raise urllib.error.URLError("network unreachable (test)")


@pytest.mark.parametrize("name, url", [
    ("mnist", ds._MNIST_URL),
    ("fashion-mnist", ds._FASHION_URL),
    ("cifar10", ds._CIFAR_URL),
])
def test_download_offline(tmp_path, monkeypatch, name, url):
    monkeypatch.setattr(ds, "_FASHION_SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    with pytest.raises(ds.DownloadError) as info:
        ds.load(name, root=tmp_path, train=False, download=True)
    msg = str(info.value)
    assert "failed" in msg and url in msg and "by hand" in msg and "network unreachable" in msg
    assert not list(tmp_path.rglob("*.part"))


def test_download_md5_mismatch(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"not the file"))
    with pytest.raises(ds.DownloadError, match="MD5") as info:
        ds.load_mnist(tmp_path, train=False, download=True)
    assert ds._MNIST_URL in str(info.value)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing left behind


@needs_mnist
def test_download_success_from_local_copy(tmp_path, monkeypatch, mnist_test):
    # The shared .gz files are byte-identical to the canonical ones, so a fake
    # urlopen serving them exercises the real download + MD5 path.
    requested = []

    def serve(url, timeout=None):
        requested.append(url)
        assert timeout is not None
        return io.BytesIO((MNIST_DIR / url.rsplit("/", 1)[-1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    X, y = ds.load_mnist(tmp_path, train=False, download=True)
    np.testing.assert_array_equal(X, mnist_test[0])
    assert sorted(requested) == sorted(ds._MNIST_URL + n + ".gz" for n in ds._IDX_NAMES[False])
    assert (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    # Files present: no second download.
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    ds.load_mnist(tmp_path, train=False, download=True)
    ds.load_mnist(MNIST_DIR, train=False, download=True)


def test_download_cifar_unpacks_archive(tmp_path, monkeypatch):
    # A stand-in archive (with its own MD5) holding only the test batch.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name, data in [("cifar-10-batches-bin/test_batch.bin", _cifar_bytes(10_000)),
                           ("cifar-10-batches-bin/readme.html", b"ignored")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buf.getvalue()
    monkeypatch.setattr(ds, "_CIFAR_MD5", hashlib.md5(archive).hexdigest())
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(archive))
    X, y = ds.load_cifar10(tmp_path, train=False, download=True)
    assert X.shape == (10_000, 3, 32, 32) and np.bincount(y).tolist() == [1000] * 10
    unpacked = tmp_path / "cifar10" / "cifar-10-batches-bin"
    assert sorted(p.name for p in unpacked.iterdir()) == ["test_batch.bin"]
    assert not (tmp_path / "cifar10" / "cifar-10-binary.tar.gz").exists()
