"""Data: the procedural shapes generator, the real-archive readers (on tiny archives of the
original formats made here), safe unpickling, clear errors for missing or broken data."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import io
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

from runner.data import archives, cifar, mnist
from runner.data.archives import ARCHIVES, keras_cache, locate
from runner.data.cifar import CIFAR_BATCHES, read_cifar10, read_cifar_batch
from runner.data.files import DataError
from runner.data.mnist import read_fashion_mnist, read_mnist_npz
from runner.data.shapes import SHAPE_CLASSES, make_shapes
from runner.data.sources import load_splits
from runner.spec import DataSpec


def _cifar_batch_bytes(rng: np.random.Generator, n: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A batch as the original archive stores it: a protocol-2 pickle, bytes keys, (n, 3072) rows."""
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # channels-first, as in the archive
    blob = pickle.dumps(
        {b"batch_label": b"x", b"labels": [int(v) for v in labels], b"data": rows}, protocol=2
    )
    return blob, images, labels


def make_fashion_folder(folder, n: int = 6, seed: int = 0, images=None):
    """fashion-mnist/ as Keras caches it: four gzip'd IDX files (train = test); returns (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) if images is None else images
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(
                b"\x00\x00\x08\x03" + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + images.tobytes()
            )
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x01" + n.to_bytes(4, "big") + labels.tobytes())
    return images, labels


def make_cifar_archive(path, n: int = 4, seed: int = 0):
    """cifar-10-python.tar.gz in the original layout; returns the expected (train, test) arrays."""
    rng = np.random.default_rng(seed)
    expected = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in CIFAR_BATCHES:
            blob, images, labels = _cifar_batch_bytes(rng, n)
            expected[name] = (images, labels)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    train_x = np.concatenate([expected[b][0] for b in CIFAR_BATCHES[:-1]])
    train_y = np.concatenate([expected[b][1] for b in CIFAR_BATCHES[:-1]])
    return (train_x, train_y), expected["test_batch"]


def _cifar_with_label_99(path):
    """A CIFAR archive whose test batch has a label outside 0..9."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name in CIFAR_BATCHES:
            blob, _, _ = _cifar_batch_bytes(rng, 4)
            if name == "test_batch":
                batch = pickle.loads(blob)
                batch[b"labels"] = [0, 1, 2, 99]
                blob = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


# ---------------------------------------------------------------- shapes


def test_shapes_are_cifar_shaped_uint8_with_all_classes():
    x, y = make_shapes(2000, seed=1)
    assert x.shape == (2000, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int32 and set(np.unique(y)) == set(range(len(SHAPE_CLASSES)))
    assert np.bincount(y).min() > 150  # roughly balanced
    assert x.std() > 30  # not blank images


def test_shapes_are_deterministic_by_seed():
    a, la = make_shapes(500, seed=3)
    b, lb = make_shapes(500, seed=3)
    c, _ = make_shapes(500, seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_shapes_classes_differ_in_shape_not_colour():
    """The mean image of each class is the class's silhouette; colour averages out."""
    x, y = make_shapes(3000, seed=0)
    means = np.stack([x[y == k].astype(np.float32).mean(axis=(0, 3)) for k in range(10)])
    distances = np.abs(means[:, None] - means[None]).mean(axis=(2, 3))
    off_diagonal = distances[~np.eye(10, dtype=bool)]
    assert off_diagonal.min() > 0.3


def test_load_data_splits_and_limits():
    spec = DataSpec(source="shapes", train_size=1000, test_size=200, validation_fraction=0.2, batch_size=10)
    splits = load_splits(spec, seed=5)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (800, 200, 200)
    assert splits.input_shape == (32, 32, 3) and splits.num_classes == 10
    again = load_splits(spec, seed=5)
    assert np.array_equal(splits.x_test, again.x_test)


def test_too_small_training_split_is_a_data_error():
    with pytest.raises(DataError, match="at least one batch"):
        load_splits(DataSpec(source="shapes", train_size=20, batch_size=64), seed=0)


# ---------------------------------------------------------------- CIFAR-10 archive


def test_cifar_archive_reader_round_trips_the_original_format(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    (train_x, train_y), (test_x, test_y) = make_cifar_archive(archive, n=4)
    (x, y), (tx, ty), classes = read_cifar10(archive)
    assert classes == 10 and x.shape == (20, 32, 32, 3) and x.dtype == np.uint8
    assert np.array_equal(x, train_x) and np.array_equal(y, train_y)
    assert np.array_equal(tx, test_x) and np.array_equal(ty, test_y)


def unpack(archive: Path, folder: Path) -> None:
    """Extract a test's archive with tarfile's "data" filter where this Python has it (3.10.12,
    3.11.4, 3.12 and later; Debian's 3.11.2 does not): no link or device leaves the folder."""
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(folder, filter="data")
        else:
            tar.extractall(folder)  # an archive this test made: regular files only


def test_cifar_reader_accepts_the_extracted_folder(tmp_path):
    archive = tmp_path / "a.tar.gz"
    (train_x, _), _ = make_cifar_archive(archive)
    unpack(archive, tmp_path / "out")
    (x, _), _, _ = read_cifar10(tmp_path / "out")
    assert np.array_equal(x, train_x)


def test_cifar_found_in_keras_cache_and_via_data_path(tmp_path):
    cache = keras_cache()
    cache.mkdir(parents=True, exist_ok=True)
    make_cifar_archive(cache / "cifar-10-python.tar.gz")
    splits = load_splits(DataSpec(source="cifar10", batch_size=4, validation_fraction=0.25), seed=0)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (15, 5, 4)
    other = tmp_path / "elsewhere.tar.gz"
    make_cifar_archive(other, n=8)
    splits = load_splits(DataSpec(source="cifar10", path=str(other), batch_size=4), seed=0)
    assert len(splits.y_test) == 8


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}, protocol=2)
    with pytest.raises(DataError, match="forbidden global"):
        read_cifar_batch(blob, "evil")
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage",
    ["truncated", "not_gzip", "missing_batch"],
)
def test_broken_cifar_archives_are_data_errors(tmp_path, damage):
    archive = tmp_path / "c.tar.gz"
    make_cifar_archive(archive)
    if damage == "truncated":
        archive.write_bytes(archive.read_bytes()[:200])
    elif damage == "not_gzip":
        archive.write_bytes(b"hello, I am not an archive")
    else:
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
            tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataError):
        read_cifar10(archive)


def test_labels_out_of_range_are_a_data_error(tmp_path):
    _cifar_with_label_99(tmp_path / "c.tar.gz")
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9"):
        load_splits(DataSpec(source="cifar10", path=str(tmp_path / "c.tar.gz"), batch_size=2), seed=0)


# ---------------------------------------------------------------- MNIST and Fashion-MNIST


def test_mnist_npz_reader(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 12, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 5, dtype=np.uint8),
    }
    np.savez(tmp_path / "mnist.npz", **arrays)
    (x, y), (tx, _), _ = read_mnist_npz(tmp_path / "mnist.npz")
    assert x.shape == (12, 28, 28, 1) and tx.shape == (5, 28, 28, 1)
    assert np.array_equal(x[..., 0], arrays["x_train"]) and np.array_equal(y, arrays["y_train"])


def test_fashion_mnist_idx_reader(tmp_path):
    images, labels = make_fashion_folder(tmp_path)
    (x, y), _, _ = read_fashion_mnist(tmp_path)
    assert np.array_equal(x[..., 0], images) and np.array_equal(y, labels)


# ---------------------------------------------------------------- missing data


@pytest.mark.parametrize("source", ["cifar10", "mnist", "fashion_mnist"])
def test_missing_data_says_where_to_put_it_and_how_to_use_shapes(source):
    with pytest.raises(DataError) as info:
        locate(source, None)
    message = str(info.value)
    assert str(keras_cache()) in message
    assert "data.path" in message and "data.source=shapes" in message


def test_explicit_path_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match=r'data.path: ".*nope.tar.gz" does not exist'):
        locate("cifar10", str(tmp_path / "nope.tar.gz"))


def test_a_failed_download_is_a_data_error(monkeypatch):
    """The real download path, against a local port where nothing listens: a DataError naming the
    URL, and nothing left in the cache. (How long it takes is a benchmark's question, not a test's.)"""
    monkeypatch.delenv("RUNNER_OFFLINE")
    monkeypatch.setitem(
        archives.ARCHIVES,
        "mnist",
        dataclasses.replace(archives.ARCHIVES["mnist"], url="http://127.0.0.1:9/mnist.npz"),
    )
    with pytest.raises(DataError, match="download from http://127.0.0.1:9/mnist.npz failed"):
        locate("mnist", None)
    assert not (keras_cache() / "mnist.npz").exists()


# ---------------------------------------------------------------- special files and sizes


def _fifo(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    return tmp_path / "fifo"


SPECIAL_FILES = {
    "dev-zero": (lambda tmp_path: Path("/dev/zero"), "a character device"),
    "fifo": (_fifo, "a FIFO (named pipe)"),
}


@pytest.mark.parametrize("source", ["cifar10", "mnist", "fashion_mnist"])
@pytest.mark.parametrize("special", SPECIAL_FILES)
def test_a_special_file_as_data_path_is_refused_without_opening_it(tmp_path, special, source):
    """/dev/zero spun the archive probe forever and opening a FIFO waits for a writer: stat alone refuses
    both, so the error comes before anything is opened."""
    make, kind = SPECIAL_FILES[special]
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        load_splits(DataSpec(source=source, path=str(path), batch_size=2), seed=0)
    expected = ARCHIVES[source].description
    assert (
        str(info.value) == f'data.path: "{path}" is {kind}; expected {expected} for data.source = "{source}"'
    )


def _cifar_folder_with_fifo(tmp_path):
    make_cifar_archive(tmp_path / "c.tar.gz")
    unpack(tmp_path / "c.tar.gz", tmp_path / "cifar")
    batch = tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_3"
    batch.unlink()
    os.mkfifo(batch)
    return (
        "cifar10",
        tmp_path / "cifar",
        r'data_batch_3" is a FIFO \(named pipe\); expected a CIFAR-10 python batch',
    )


def _fashion_folder_with_dev_zero(tmp_path):
    make_fashion_folder(tmp_path / "fashion")
    labels = tmp_path / "fashion" / "t10k-labels-idx1-ubyte.gz"
    labels.unlink()
    labels.symlink_to("/dev/zero")
    return "fashion_mnist", tmp_path / "fashion", r'idx1-ubyte.gz" is a character device; expected a gzip'


@pytest.mark.parametrize(
    "make", [_cifar_folder_with_fifo, _fashion_folder_with_dev_zero], ids=["cifar", "fashion"]
)
def test_a_special_file_inside_a_data_folder_is_refused(tmp_path, make):
    source, folder, message = make(tmp_path)
    with pytest.raises(DataError, match=message):
        load_splits(DataSpec(source=source, path=str(folder), batch_size=2), seed=0)


@pytest.mark.parametrize(("source", "name"), [("cifar10", "c.tar.gz"), ("mnist", "mnist.npz")])
def test_a_file_far_larger_than_the_archive_is_refused_before_reading(tmp_path, source, name):
    big = tmp_path / name
    with big.open("wb") as f:
        f.truncate(2_000_000_000)  # sparse: no disk and no time spent, but stat says 2 GB
    with pytest.raises(DataError, match=r"is 2,000 MB; expected .*, at most [0-9,]+ MB"):
        load_splits(DataSpec(source=source, path=str(big), batch_size=2), seed=0)


def _cifar_with_more_entries_than_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "CIFAR_ENTRIES_MAX", 3)
    make_cifar_archive(tmp_path / "c.tar.gz")
    return "cifar10", tmp_path / "c.tar.gz", "more than 3 entries"


def _cifar_unpacking_to_more_than_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "CIFAR_UNPACKED_MAX", 20_000)  # a 4-image batch is 12 kB
    make_cifar_archive(tmp_path / "c.tar.gz")
    return "cifar10", tmp_path / "c.tar.gz", "or 20,000 bytes unpacked"


def _fashion_unpacking_to_more_than_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "FASHION_FILE_MAX", 1_000)  # blank images pack to less, unpack to 4.7 kB
    make_fashion_folder(tmp_path / "fashion", images=np.zeros((6, 28, 28), np.uint8))
    return "fashion_mnist", tmp_path / "fashion", "unpacks to more than 1,000 bytes"


def _mnist_unpacking_to_more_than_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "MNIST_NPZ_MAX", 10_000)  # blank images pack to less, unpack to 47 kB
    x, y = np.zeros((60, 28, 28), np.uint8), np.zeros(60, np.uint8)
    np.savez_compressed(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    return (
        "mnist",
        tmp_path / "mnist.npz",
        r"unpacks to [0-9,]+ bytes; expected mnist\.npz \(11 MB\), at most 10,000 bytes unpacked",
    )


@pytest.mark.parametrize(
    "make",
    [
        _cifar_with_more_entries_than_allowed,
        _cifar_unpacking_to_more_than_allowed,
        _fashion_unpacking_to_more_than_allowed,
        _mnist_unpacking_to_more_than_allowed,
    ],
    ids=["cifar-entries", "cifar-unpacked", "fashion-unpacked", "mnist-unpacked"],
)
def test_unpacking_is_bounded(tmp_path, monkeypatch, make):
    """A small gzip can unpack to gigabytes: readers count what they unpack, against bounds shrunk here."""
    source, path, message = make(tmp_path, monkeypatch)
    with pytest.raises(DataError, match=message):
        load_splits(DataSpec(source=source, path=str(path), batch_size=2), seed=0)


# ---------------------------------------------------------------- partial downloads


def _served_files(tmp_path, monkeypatch, source: str) -> tuple[dict[str, bytes], int]:
    """What a fake server hands out for `source` (by the last part of the URL), and its test split's size.
    The real hashes cannot match these tiny archives, so the registry gets theirs."""
    made = tmp_path / "served"
    if source == "fashion_mnist":
        make_fashion_folder(made, n=6)
        return {p.name: p.read_bytes() for p in sorted(made.iterdir())}, 6
    made.mkdir()
    if source == "cifar10":
        make_cifar_archive(made / "cifar-10-python.tar.gz", n=4)
    else:
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 10, 6, dtype=np.uint8)
        np.savez(made / "mnist.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    (file,) = made.iterdir()
    body = file.read_bytes()
    archive = dataclasses.replace(ARCHIVES[source], sha256=hashlib.sha256(body).hexdigest())
    monkeypatch.setitem(archives.ARCHIVES, source, archive)
    return {file.name: body}, 4 if source == "cifar10" else 6


class _FakeResponse:
    """What urlopen returns: the body in chunks, or with `error` half of it, then the error a dropped
    connection raises."""

    def __init__(self, body: bytes, error: Exception | None):
        self.parts: list = [body] if error is None else [body[: len(body) // 2], error]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None

    def read(self, size: int = -1) -> bytes:
        part = self.parts.pop(0) if self.parts else b""
        if isinstance(part, Exception):
            raise part
        return part


def _fake_urlopen(files: dict[str, bytes], broken: str | None = None, error: Exception | None = None):
    def urlopen(url: str, timeout: float) -> _FakeResponse:
        name = url.rsplit("/", 1)[-1]
        return _FakeResponse(files[name], error if name == broken else None)

    return urlopen


DROPPED_CONNECTIONS = {
    "reset": ConnectionResetError(104, "Connection reset by peer"),
    "incomplete-read": http.client.IncompleteRead(b"", 1000),  # an HTTPException, not an OSError
}


@pytest.mark.parametrize("dropped", DROPPED_CONNECTIONS)
@pytest.mark.parametrize("source", ["fashion_mnist", "mnist", "cifar10"])
def test_a_download_that_fails_midway_leaves_nothing_behind(tmp_path, monkeypatch, source, dropped):
    """A failure in the last file used to leave a folder (or file) that every later run took for the
    dataset and failed to read; now nothing stays, and the next download works."""
    monkeypatch.delenv("RUNNER_OFFLINE")
    files, n_test = _served_files(tmp_path, monkeypatch, source)
    last = sorted(files)[-1]
    monkeypatch.setattr(
        archives.urllib.request, "urlopen", _fake_urlopen(files, last, DROPPED_CONNECTIONS[dropped])
    )
    with pytest.raises(DataError, match=r"and the download from .* failed .*\n  Fix: "):
        load_splits(DataSpec(source=source, batch_size=2), seed=0)
    assert list(keras_cache().iterdir()) == []  # no entry, no temporary file or folder
    monkeypatch.setattr(archives.urllib.request, "urlopen", _fake_urlopen(files))
    assert len(load_splits(DataSpec(source=source, batch_size=2), seed=0).y_test) == n_test
    assert [p.name for p in keras_cache().iterdir()] == [ARCHIVES[source].cache_names[0]]


def _fashion_missing_a_file(cache):
    make_fashion_folder(cache / "fashion-mnist")
    (cache / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()


def _fashion_with_a_zero_byte_file(cache):
    make_fashion_folder(cache / "fashion-mnist")
    (cache / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")


PARTIAL_CACHE_ENTRIES = {
    "empty-fashion-folder": ("fashion_mnist", lambda cache: (cache / "fashion-mnist").mkdir()),
    "fashion-folder-missing-a-file": ("fashion_mnist", _fashion_missing_a_file),
    "fashion-zero-byte-file": ("fashion_mnist", _fashion_with_a_zero_byte_file),
    "zero-byte-mnist": ("mnist", lambda cache: (cache / "mnist.npz").write_bytes(b"")),
    "leftover-part": ("mnist", lambda cache: (cache / "mnist.npz.x1y2.part").write_bytes(b"PK\x03\x04")),
    "empty-cifar-folder": ("cifar10", lambda cache: (cache / "cifar-10-batches-py").mkdir()),
}


@pytest.mark.parametrize("entry", PARTIAL_CACHE_ENTRIES)
def test_a_partial_cache_entry_counts_as_missing(tmp_path, monkeypatch, entry):
    """Offline: the same error and fix as an empty cache, not "cannot read"; online: fetched again."""
    source, make = PARTIAL_CACHE_ENTRIES[entry]
    with pytest.raises(DataError) as missing:
        load_splits(DataSpec(source=source, batch_size=2), seed=0)
    keras_cache().mkdir(parents=True)
    make(keras_cache())
    with pytest.raises(DataError) as partial:
        load_splits(DataSpec(source=source, batch_size=2), seed=0)
    assert str(partial.value) == str(missing.value)
    assert "not in Keras' cache" in str(partial.value) and "Fix: " in str(partial.value)
    monkeypatch.delenv("RUNNER_OFFLINE")
    files, n_test = _served_files(tmp_path, monkeypatch, source)
    monkeypatch.setattr(archives.urllib.request, "urlopen", _fake_urlopen(files))
    assert len(load_splits(DataSpec(source=source, batch_size=2), seed=0).y_test) == n_test


def test_a_download_larger_than_the_archive_is_cut_off(tmp_path, monkeypatch):
    """A server that streams without end is cut off at the archive's bound (shrunk here), leaving nothing."""
    monkeypatch.delenv("RUNNER_OFFLINE")
    files, _ = _served_files(tmp_path, monkeypatch, "mnist")
    mnist_archive = dataclasses.replace(archives.ARCHIVES["mnist"], max_bytes=100)
    monkeypatch.setitem(archives.ARCHIVES, "mnist", mnist_archive)
    monkeypatch.setattr(archives.urllib.request, "urlopen", _fake_urlopen(files))
    with pytest.raises(DataError, match=r"failed \(the server sent more than 100 bytes\)"):
        load_splits(DataSpec(source="mnist", batch_size=2), seed=0)
    assert list(keras_cache().iterdir()) == []


# ---------------------------------------------------------------- messages name the field


def _fashion_without_test_labels(folder):
    make_fashion_folder(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()


BROKEN_DATA = {  # source, name, make, what the message says after the path
    "cifar-not-an-archive": (
        "cifar10",
        "cifar-10-python.tar.gz",
        lambda path: path.write_bytes(b"hello"),
        r" is not a readable archive \(.+\); expected cifar-10-python\.tar\.gz \(163 MB\)",
    ),
    "cifar-label-99": (
        "cifar10",
        "cifar-10-python.tar.gz",
        _cifar_with_label_99,
        r" \(test split\): labels must lie in 0\.\.9; found 0\.\.99",
    ),
    "mnist-not-an-npz": (
        "mnist",
        "mnist.npz",
        lambda path: path.write_bytes(b"hello"),
        r" is not a readable mnist\.npz \(.+\); expected mnist\.npz \(11 MB\)",
    ),
    "cifar-empty-folder": (
        "cifar10",
        "cifar",
        lambda path: path.mkdir(),
        r" lacks data_batch_1, .*, test_batch; expected cifar-10-python\.tar\.gz \(163 MB\) or its extracted",
    ),
    "fashion-missing-a-file": (
        "fashion_mnist",
        "fashion",
        _fashion_without_test_labels,
        r" does not exist; expected a gzip'd IDX file",  # the path: .../fashion/t10k-labels-idx1-ubyte.gz
    ),
}


@pytest.mark.parametrize("broken", BROKEN_DATA)
def test_a_data_path_error_starts_with_data_path(tmp_path, broken):
    """The CLI puts the spec file in front; the field, the path, what was found and what was expected
    follow, whichever reader or check failed."""
    source, name, make, rest = BROKEN_DATA[broken]
    make(tmp_path / name)
    with pytest.raises(DataError) as info:
        load_splits(DataSpec(source=source, path=str(tmp_path / name), batch_size=2), seed=0)
    assert re.fullmatch(
        f'data\\.path: "{re.escape(str(tmp_path / name))}[^"]*"' + rest + ".*", str(info.value)
    )


@pytest.mark.parametrize("broken", [b for b in BROKEN_DATA if BROKEN_DATA[b][1].endswith(("gz", "npz"))])
def test_a_broken_cache_entry_error_starts_with_data_source_and_says_how_to_fetch_again(broken):
    source, name, make, rest = BROKEN_DATA[broken]
    keras_cache().mkdir(parents=True)
    make(keras_cache() / name)
    with pytest.raises(DataError) as info:
        load_splits(DataSpec(source=source, batch_size=2), seed=0)
    start = f'data.source = "{source}": "{re.escape(str(keras_cache() / name))}"'
    assert re.match(start + rest, str(info.value))
    assert "Fix: delete it from Keras' cache so the next run downloads it again" in str(info.value)


# ---------------------------------------------------------------- damaged files


def _corrupt_deflate(path):
    """Keep the gzip header, scramble the compressed stream: zlib fails mid-read."""
    blob = path.read_bytes()
    path.write_bytes(blob[:20] + bytes(b ^ 0x55 for b in blob[20:-8]) + blob[-8:])


def _fashion_corrupt(folder):
    make_fashion_folder(folder)
    _corrupt_deflate(folder / "train-images-idx3-ubyte.gz")


def _fashion_images_without_labels(folder):
    make_fashion_folder(folder)
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(5 * 784))


def _fashion_short_header(folder):
    make_fashion_folder(folder)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08")


def _cifar_corrupt(path):
    make_cifar_archive(path)
    _corrupt_deflate(path)


def _mnist(path, **arrays):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 10, 6, dtype=np.uint8)
    np.savez(path, **{"x_train": x, "y_train": y, "x_test": x, "y_test": y, **arrays})


def _mnist_truncated(path):
    _mnist(path)
    path.write_bytes(path.read_bytes()[:100])


DAMAGED = {  # source, name, make, what the message says
    "fashion-corrupt-gzip": ("fashion_mnist", "f", _fashion_corrupt, "is not a readable gzip file"),
    "fashion-5-images-6-labels": (
        "fashion_mnist",
        "f",
        _fashion_images_without_labels,
        "5 images of 28 × 28 but 6 labels",
    ),
    "fashion-short-header": (
        "fashion_mnist",
        "f",
        _fashion_short_header,
        "expected an IDX header of 8 bytes",
    ),
    "cifar-corrupt-gzip": ("cifar10", "c.tar.gz", _cifar_corrupt, "is not a readable archive"),
    "mnist-truncated": ("mnist", "mnist.npz", _mnist_truncated, "is not a readable mnist.npz"),
    "mnist-a-bare-npy": ("mnist", "mnist.npz", lambda p: np.save(p.open("wb"), np.zeros(3)), "not a zip"),
    "mnist-text-labels": ("mnist", "mnist.npz", lambda p: _mnist(p, y_test=np.array(list("abcdef"))), "<U1"),
}


@pytest.mark.parametrize("damaged", DAMAGED)
def test_a_damaged_file_is_a_data_error_not_a_traceback(tmp_path, damaged):
    source, name, make, message = DAMAGED[damaged]
    make(tmp_path / name)
    with pytest.raises(DataError, match=f"^data\\.path: .*{re.escape(message)}"):
        load_splits(DataSpec(source=source, path=str(tmp_path / name), batch_size=2), seed=0)
