"""Data registry: spec `source` → uint8 images and integer labels, then tf.data pipelines.

Images stay uint8 end to end (50 000 CIFAR images are 150 MB, not the tutorial's 1.2 GB of float64);
the model scales them. TensorFlow is imported only by `pipelines`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import secrets
import shutil
import stat
import tarfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.memory import aligned_empty, as_aligned, shared_tensor
from runner.spec import AugmentationSpec, DataSpec, SpecValueError

SHAPE_CLASSES = (
    "disk",
    "square",
    "triangle",
    "ring",
    "plus",
    "cross",
    "diamond",
    "hbar",
    "vbar",
    "frame",
)
SHAPES_TRAIN, SHAPES_TEST = 10_000, 2_000
DOWNLOAD_TIMEOUT_S = 10


class DataError(SpecValueError):
    """Data that cannot be found or read: one message saying where it was looked for and what to do."""


@dataclass(frozen=True)
class Splits:
    source: str
    x_train: np.ndarray  # (n, H, W, C) uint8
    y_train: np.ndarray  # (n,) int32
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    notes: tuple[str, ...] = ()  # what loading changed, in words (float images made uint8)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of "train", "validation" or "test"."""
        return {
            "train": (self.x_train, self.y_train),
            "validation": (self.x_val, self.y_val),
            "test": (self.x_test, self.y_test),
        }[split]

    def count(self, split: str) -> int:
        return len(self.arrays(split)[1])

    def first_batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first `n` training images and labels: the probe's and the metrics' batch."""
        return self.x_train[:n], self.y_train[:n]

    def train_dataset(
        self,
        batch_size: int,
        shuffle_seed: int,
        epochs: range,
        skip: int = 0,
        augmentation: AugmentationSpec | None = None,
    ) -> Any:
        return train_pipeline(
            self.x_train, self.y_train, batch_size, shuffle_seed, epochs, skip, augmentation
        )

    def eval_dataset(self, split: str, batch_size: int) -> Any:
        return pipeline(*self.arrays(split), batch_size)

    def explain(self, exc: Exception) -> str | None:
        """What a crash says about the data (arrays in memory: nothing)."""
        return None

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "train": len(self.y_train),
            "validation": len(self.y_val),
            "test": len(self.y_test),
        } | ({"notes": list(self.notes)} if self.notes else {})


# ---------------------------------------------------------------- shapes (procedural, offline)


def _shape_mask(label: int, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Boolean mask of one class's shape; dx, dy are pixel offsets in units of the shape's size."""
    ax, ay = np.abs(dx), np.abs(dy)
    if label in (0, 3):
        radius = np.sqrt(dx * dx + dy * dy)
        return radius <= 1.0 if label == 0 else (radius <= 1.0) & (radius >= 0.55)  # disk, ring
    box = np.maximum(ax, ay)
    if label == 1:
        return box <= 0.8  # square
    if label == 2:
        return (ay <= 0.85) & (ax <= (dy + 0.85) / 1.7)  # triangle, apex up
    if label == 4:
        return ((ax <= 0.28) | (ay <= 0.28)) & (box <= 1.0)  # plus
    if label == 5:
        return (np.abs(ax - ay) <= 0.3) & (box <= 1.0)  # diagonal cross
    if label == 6:
        return ax + ay <= 1.0  # diamond
    if label == 7:
        return (ax <= 1.0) & (ay <= 0.3)  # horizontal bar
    if label == 8:
        return (ay <= 1.0) & (ax <= 0.3)  # vertical bar
    return (box <= 0.95) & (box >= 0.6)  # hollow square


def make_shapes(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """`n` CIFAR-shaped images of 10 geometric shapes: random place, size, colours and noise.

    Deterministic in `seed`; vectorised (about 0.3 s for 10 000 images on one core). The noise is
    one draw (a draw in parts would give other numbers), the rest is made SHAPES_CHUNK images at a
    time: the run's peak memory is not this function's (50 000 images: its peak was 0.8 GB at once,
    0.5 GB in parts, 0.15 GB of which the result).
    Returns (n, size, size, 3) uint8 images, their buffer aligned for TensorFlow, and (n,) int32 labels.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPE_CLASSES), n).astype(np.int32)
    half = rng.uniform(0.17, 0.36, n).astype(np.float32) * size  # half-size in pixels
    cx = half + rng.random(n, dtype=np.float32) * (size - 2 * half)
    cy = half + rng.random(n, dtype=np.float32) * (size - 2 * half)
    background = rng.integers(0, 256, (n, 3), dtype=np.int16)
    # Each channel differs from the background by 80..175 (mod 256): the shape always shows.
    foreground = (background + rng.integers(80, 176, (n, 3), dtype=np.int16)) % 256
    noise = rng.integers(-24, 25, (n, size, size, 3), dtype=np.int16)  # sensor-like noise
    images = aligned_empty((n, size, size, 3), np.uint8)
    grid = np.arange(size, dtype=np.float32) + 0.5
    for first in range(0, n, SHAPES_CHUNK):
        part = slice(first, first + SHAPES_CHUNK)
        mask = np.zeros((len(labels[part]), size, size), dtype=bool)
        for label in range(len(SHAPE_CLASSES)):
            idx = np.flatnonzero(labels[part] == label)
            at = idx + first
            dx = (grid[None, None, :] - cx[at, None, None]) / half[at, None, None]
            dy = (grid[None, :, None] - cy[at, None, None]) / half[at, None, None]
            mask[idx] = _shape_mask(label, dx, dy)
        colour = np.where(mask[..., None], foreground[part, None, None, :], background[part, None, None, :])
        colour += noise[part]
        np.clip(colour, 0, 255, out=colour)
        images[part] = colour
    return images, labels


SHAPES_CHUNK = 4096  # images made at once by make_shapes (about 50 MB of temporaries)


def _load_shapes(spec: DataSpec, seed: int) -> tuple[tuple, tuple, int]:
    train_seed, test_seed = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2))
    train = make_shapes(spec.train_size or SHAPES_TRAIN, train_seed)
    test = make_shapes(spec.test_size or SHAPES_TEST, test_seed)
    return train, test, len(SHAPE_CLASSES)


# ---------------------------------------------------------------- the real archives

CIFAR_DESCRIPTION = "cifar-10-python.tar.gz (163 MB)"
CIFAR100_DESCRIPTION = "cifar-100-python.tar.gz (161 MB)"
CIFAR100_CLASSES = {"fine": 100, "coarse": 20}
MNIST_DESCRIPTION = "mnist.npz (11 MB)"
FASHION_DESCRIPTION = "the folder fashion-mnist/ with the four *-ubyte.gz files (30 MB)"

# What a reader will touch, at most: far above the real files (a re-packed archive still passes), far below
# what would stall a run. A bigger file is the wrong file; refusing it costs one stat, reading it minutes.
MB = 1_000_000
CIFAR_ARCHIVE_MAX = 1_000 * MB  # the real archive: 170 MB
CIFAR_UNPACKED_MAX = 1_000 * MB  # its entries unpack to 178 MB
CIFAR_ENTRIES_MAX = 100  # it has 9 entries: the folder, 6 batches, batches.meta, readme.html
CIFAR_BATCH_MAX = 200 * MB  # one batch: 31 MB
MNIST_NPZ_MAX = 200 * MB  # 11 MB packed, 55 MB unpacked; bounds both
FASHION_FILE_MAX = 200 * MB  # the largest unpacks to 47 MB

_SPECIAL_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def path_kind(mode: int) -> str:
    """What a stat mode says a path is, in words for an error message."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for is_kind, name in _SPECIAL_KINDS if is_kind(mode)), "neither a file nor a folder")


def megabytes(size: int) -> str:
    return f"{size / MB:,.0f} MB" if size >= MB else f"{size:,} bytes"


def _stat(path: Path, expected: str) -> os.stat_result:
    """`path`'s stat (following links). Only stat: a FIFO or a device is judged without being opened,
    since opening a FIFO blocks until a writer comes and /dev/zero never ends."""
    try:
        return path.stat()
    except OSError as exc:
        raise DataError(f'"{path}" {unreachable(exc)}; expected {expected}') from None


def unreachable(exc: OSError) -> str:
    return "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be inspected ({exc.strerror})"


def _regular_file(path: Path, limit: int, expected: str) -> Path:
    """`path` if it is a regular file of at most `limit` bytes, judged before any byte is read."""
    info = _stat(path, expected)
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f'"{path}" is {path_kind(info.st_mode)}; expected {expected}')
    if info.st_size > limit:
        raise DataError(
            f'"{path}" is {megabytes(info.st_size)}; expected {expected}, at most {megabytes(limit)}'
        )
    return path


def existing_folder(path: Path, expected: str) -> Path:
    mode = _stat(path, expected).st_mode
    if not stat.S_ISDIR(mode):
        raise DataError(f'"{path}" is {path_kind(mode)}; expected {expected}')
    return path


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR's python archives are pickles: allow only what numpy arrays need, so a crafted one cannot
    run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(
    blob: bytes, where: str, labels_key: str = "labels", kind: str = "CIFAR-10 python batch"
) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch → (n, 32, 32, 3) uint8 images, (n,) int32 labels. CIFAR-10's batches
    keep them under "labels", CIFAR-100's files under "fine_labels" and "coarse_labels"."""
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[labels_key], dtype=np.int32)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # stored channels-first
    except Exception as exc:  # noqa: BLE001 - any malformed content is the same user error
        raise DataError(f"{where} is not a {kind} ({type(exc).__name__}: {exc})") from None
    if len(images) != len(labels):
        raise DataError(f"{where} has {len(images)} images but {len(labels)} labels; expected one label each")
    return np.ascontiguousarray(images), labels


CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@dataclass(frozen=True)
class CifarLayout:
    """What one CIFAR python archive holds: the folder it unpacks to and the pickles runner reads."""

    folder: str
    members: tuple[str, ...]
    description: str
    member_description: str  # one pickle, in words
    contents: str  # the real archive's entries and unpacked size, in words


CIFAR10_LAYOUT = CifarLayout(
    "cifar-10-batches-py",
    tuple(CIFAR_BATCHES),
    CIFAR_DESCRIPTION,
    "a CIFAR-10 python batch file (31 MB)",
    "9 entries, 178 MB unpacked",
)
CIFAR100_LAYOUT = CifarLayout(
    "cifar-100-python",
    ("train", "test"),
    CIFAR100_DESCRIPTION,
    "a CIFAR-100 python file (155 MB train, 31 MB test)",
    "5 entries, about 190 MB unpacked",
)


def _cifar_folder(path: Path, layout: CifarLayout = CIFAR10_LAYOUT) -> Path:
    """The folder holding the batches: `path` itself or the folder the archive unpacks to."""
    return path / layout.folder if (path / layout.folder).is_dir() else path


def _cifar_members(path: Path, layout: CifarLayout = CIFAR10_LAYOUT) -> dict[str, bytes]:
    """The pickles `layout` names, from its .tar.gz or from its extracted folder."""
    if path.is_dir():
        folder = _cifar_folder(path, layout)
        missing = [b for b in layout.members if not (folder / b).exists()]
        if missing:
            raise DataError(
                f'"{folder}" lacks {", ".join(missing)}; expected {layout.description} '
                "or its extracted folder"
            )
        expected = layout.member_description
        return {b: _regular_file(folder / b, CIFAR_BATCH_MAX, expected).read_bytes() for b in layout.members}
    _regular_file(path, CIFAR_ARCHIVE_MAX, layout.description)
    try:
        with tarfile.open(path, "r:*") as tar:
            found = _tar_batches(tar, path, layout)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        reason = str(exc).splitlines()[0].rstrip(":")  # Python 3.12 adds one line per method it tried
        raise DataError(
            f'"{path}" is not a readable archive ({reason}); expected {layout.description}'
        ) from None
    missing = [b for b in layout.members if b not in found]
    if missing:
        raise DataError(f'"{path}" lacks {", ".join(missing)}; expected {layout.description}')
    return found


def _tar_batches(tar: tarfile.TarFile, path: Path, layout: CifarLayout) -> dict[str, bytes]:
    """The pickles among the archive's entries, stopping once all are in. A gzip stream can unpack
    to far more than its own size, so entries and unpacked bytes are counted before each is read."""
    found: dict[str, bytes] = {}
    unpacked = 0
    for count, member in enumerate(tar, start=1):
        unpacked += member.size
        if count > CIFAR_ENTRIES_MAX or unpacked > CIFAR_UNPACKED_MAX:
            raise DataError(
                f'"{path}" has more than {CIFAR_ENTRIES_MAX} entries or {megabytes(CIFAR_UNPACKED_MAX)} '
                f"unpacked; expected {layout.description}: {layout.contents}"
            )
        if member.isfile() and Path(member.name).name in layout.members:
            found[Path(member.name).name] = tar.extractfile(member).read()  # type: ignore[union-attr]
        if len(found) == len(layout.members):
            break
    return found


def read_cifar10(path: Path) -> tuple[tuple, tuple, int]:
    members = _cifar_members(path)
    train = [read_cifar_batch(members[b], f'"{path}": {b}') for b in CIFAR_BATCHES[:-1]]
    test = read_cifar_batch(members["test_batch"], f'"{path}": test_batch')
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return (x_train, y_train), test, 10


def read_cifar100(path: Path, label_mode: str = "fine") -> tuple[tuple, tuple, int]:
    """CIFAR-100: 50 000 train and 10 000 test images; 100 fine classes or 20 coarse superclasses."""
    members = _cifar_members(path, CIFAR100_LAYOUT)
    key, kind = f"{label_mode}_labels", "CIFAR-100 python file"
    train = read_cifar_batch(members["train"], f'"{path}": train', key, kind)
    test = read_cifar_batch(members["test"], f'"{path}": test', key, kind)
    return train, test, CIFAR100_CLASSES[label_mode]


def _check_unpacked(path: Path, limit: int, description: str) -> None:
    """An npz (a zip; np.load would also take a bare .npy) whose members unpack to at most `limit`
    bytes; zipfile's own errors are the caller's to word."""
    with zipfile.ZipFile(path) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > limit:
            raise DataError(
                f'"{path}" unpacks to {megabytes(unpacked)}; expected {description}, '
                f"at most {megabytes(limit)} unpacked"
            )
        for info in archive.infolist():
            if info.filename.endswith(".npy"):
                _check_declared(archive, info, f'"{path}": {info.filename[:-4]}', limit)


def _check_declared(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, limit: int) -> None:
    """An array's header declares its shape, and numpy allocates that much before reading a byte: a
    tiny member claiming (10^6, 1000, 1000, 3) would ask for terabytes. The declared size must fit
    both the limit and the member's own bytes."""
    from numpy.lib import format as npy

    with archive.open(info) as member:
        try:
            read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(
                npy.read_magic(member)
            )
            if read is None:
                return  # another format version: np.load reads it, or words its error
            shape, _, dtype = read(member)
        except (ValueError, EOFError, OSError, SyntaxError):
            return  # not an array header numpy reads: np.load words the error
        header = member.tell()
    if dtype.hasobject:
        return  # allow_pickle=False refuses it, with its own message
    declared = math.prod(shape) * dtype.itemsize
    if declared > limit or declared > info.file_size - header:
        raise DataError(
            f"{where}: its header declares shape {tuple(shape)} of {dtype} ({megabytes(declared)}); "
            f"expected an array whose data is in the file ({megabytes(info.file_size - header)} there, "
            f"at most {megabytes(limit)})"
        )


def read_mnist_npz(path: Path) -> tuple[tuple, tuple, int]:
    _regular_file(path, MNIST_NPZ_MAX, MNIST_DESCRIPTION)
    try:
        _check_unpacked(path, MNIST_NPZ_MAX, MNIST_DESCRIPTION)
        with np.load(path, allow_pickle=False) as f:
            x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(
            f'"{path}" is not a readable mnist.npz ({exc}); expected {MNIST_DESCRIPTION}'
        ) from None
    return (x_train[..., None], y_train), (x_test[..., None], y_test), 10


# ---------------------------------------------------------------- npz: the user's own arrays

NPZ_DESCRIPTION = "an .npz file with x_train, y_train (and optionally x_test, y_test)"
NPZ_MAX = 4_000 * MB  # packed and unpacked: the arrays are held in memory, like CIFAR's
NPZ_TEST_FRACTION = 0.1  # held out of x_train as the test split when the file has no x_test
NPZ_MAX_CLASSES = 10_000  # a label above this is a mistake, not a class: the output layer would be huge
NPZ_IMAGES = "(n, H, W) or (n, H, W, C) images, uint8 or floats in [0, 1]"


def _npz_arrays(path: Path) -> dict[str, Any]:
    """x_train, y_train and, if present, x_test, y_test of a bounded npz; no pickle is ever loaded."""
    _regular_file(path, NPZ_MAX, NPZ_DESCRIPTION)
    try:
        _check_unpacked(path, NPZ_MAX, NPZ_DESCRIPTION)
        with np.load(path, allow_pickle=False) as f:
            names = [k for k in ("x_train", "y_train", "x_test", "y_test") if k in f.files]
            return {key: _npz_array(f, key, path) for key in names} | {"files": f.files}
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, ValueError) as exc:
        raise DataError(f'"{path}" is not a readable .npz ({exc}); expected {NPZ_DESCRIPTION}') from None


def _npz_array(f: Any, key: str, path: Path) -> Any:
    try:
        return f[key]
    except ValueError as exc:  # allow_pickle=False refusing an object array, or a damaged header
        raise DataError(
            f'"{path}": {key}: expected a numeric array saved without pickle; got one numpy cannot load '
            f"that way ({exc})"
        ) from None


def _npz_images(x: Any, where: str) -> tuple[np.ndarray, str | None]:
    """(n, H, W, C) uint8 images, and a note when floats in [0, 1] were made uint8."""
    if not isinstance(x, np.ndarray):  # a zip member that is not a .npy comes back as bytes
        raise DataError(f"{where}: expected {NPZ_IMAGES}; got {type(x).__name__}, not a .npy array")
    if x.ndim not in (3, 4) or 0 in x.shape:
        raise DataError(f"{where}: expected {NPZ_IMAGES}; got shape {x.shape}")
    note = None
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise DataError(f"{where}: expected {NPZ_IMAGES}; got {x.dtype} with NaN or infinite values")
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise DataError(f"{where}: expected {NPZ_IMAGES}; got {x.dtype} values in {low:g}..{high:g}")
        note = f"{where}: {x.dtype} images in [0, 1] converted to uint8 (x × 255, rounded)"
        x = np.rint(x.astype(np.float32) * 255).astype(np.uint8)
    elif x.dtype != np.uint8:
        raise DataError(f"{where}: expected {NPZ_IMAGES}; got {x.dtype}")
    return (x[..., None] if x.ndim == 3 else x), note


def _npz_labels(y: Any, n: int, where: str) -> np.ndarray:
    """(n,) int32 labels ((n, 1) accepted, as Keras' datasets store them) in 0..NPZ_MAX_CLASSES - 1."""
    expected = f"{n} integer labels, shape ({n},) or ({n}, 1), one per image"
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu":
        found = y.dtype if isinstance(y, np.ndarray) else f"{type(y).__name__}, not a .npy array"
        raise DataError(f"{where}: expected {expected}; got {found}")
    if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] != 1) or len(y) != n:
        raise DataError(f"{where}: expected {expected}; got shape {y.shape}")
    y = y.reshape(-1)
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= NPZ_MAX_CLASSES:
        raise DataError(
            f"{where}: expected labels in 0..{NPZ_MAX_CLASSES - 1} (class numbers); found {low}..{high}"
        )
    return y.astype(np.int32)


def read_npz(path: Path) -> tuple[tuple, tuple | None, int, tuple[str, ...]]:
    """The train split, the test split (None: the file has none), the classes (train's largest label + 1),
    and notes on what was converted."""
    arrays = _npz_arrays(path)
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing or ("x_test" in arrays) != ("y_test" in arrays):
        missing = missing or [k for k in ("x_test", "y_test") if k not in arrays]
        raise DataError(
            f'"{path}": {", ".join(missing)}: missing; expected {NPZ_DESCRIPTION} '
            f"(x_test and y_test together); found {', '.join(arrays['files']) or 'no arrays'}"
        )
    splits, notes = [], []
    for split in ("train", "test") if "x_test" in arrays else ("train",):
        x, note = _npz_images(arrays[f"x_{split}"], f'"{path}": x_{split}')
        y = _npz_labels(arrays[f"y_{split}"], len(x), f'"{path}": y_{split}')
        splits.append((x, y))
        notes += [note] if note else []
    num_classes = int(splits[0][1].max()) + 1
    if num_classes < 2:
        raise DataError(f'"{path}": y_train: expected at least two classes; found only label 0')
    test = splits[1] if len(splits) > 1 else None
    if test is not None and test[0].shape[1:] != splits[0][0].shape[1:]:  # the model takes one image shape
        raise DataError(
            f'"{path}": x_test: expected images of x_train\'s shape {splits[0][0].shape[1:]} '
            f"(height, width, channels); got {test[0].shape[1:]}"
        )
    if test is not None and test[1].max() >= num_classes:
        raise DataError(
            f'"{path}": y_test: expected labels in 0..{num_classes - 1}, the classes of y_train; '
            f"found {test[1].max()}"
        )
    return splits[0], test, num_classes, tuple(notes)


def _held_out_test(train: tuple, spec: DataSpec, seed: int, where: str) -> tuple[tuple, tuple]:
    """An npz without x_test: `test_size` images (else NPZ_TEST_FRACTION of x_train) drawn at random
    with the experiment's seed become the test split; the rest stay in file order for training."""
    x, y = train
    n_test = spec.test_size or max(1, round(len(y) * NPZ_TEST_FRACTION))
    if n_test >= len(y):
        raise DataError(
            f"{where}: x_train has {len(y)} images and no x_test; expected more than the {n_test} held out "
            "as the test split (data.test_size)"
        )
    test = np.zeros(len(y), dtype=bool)
    test[np.random.default_rng(seed).choice(len(y), n_test, replace=False)] = True
    return (x[~test], y[~test]), (x[test], y[test])


def _load_npz(spec: DataSpec, seed: int) -> tuple[tuple, tuple, int, tuple[str, ...]]:
    """`data.path`'s arrays; every error starts with data.path, the field that named the file."""
    if spec.path is None:
        raise DataError(
            f'data.path: required with data.source = "npz"; expected the path to {NPZ_DESCRIPTION}'
        )
    path = Path(spec.path).expanduser()
    try:
        train, test, num_classes, notes = read_npz(path)
        if test is None:
            train, test = _held_out_test(train, spec, seed, f'"{path}"')
            notes += (f'"{path}" has no x_test: {len(test[1])} images of x_train held out as the test split',)
    except DataError as exc:
        raise DataError(f"data.path: {exc}") from None
    return train, test, num_classes, notes


FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def _read_idx(file: Path, header: int) -> np.ndarray:
    """One gzip'd IDX file → its uint8 payload after the `header` bytes; unpacks at most FASHION_FILE_MAX."""
    _regular_file(file, FASHION_FILE_MAX, "a gzip'd IDX file")
    try:
        with gzip.open(file, "rb") as f:
            raw = f.read(FASHION_FILE_MAX + 1)
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a damaged stream inside a valid header
        raise DataError(
            f'"{file}" is not a readable gzip file ({exc}); expected a gzip\'d IDX file'
        ) from None
    if len(raw) > FASHION_FILE_MAX:
        raise DataError(
            f'"{file}" unpacks to more than {megabytes(FASHION_FILE_MAX)}; expected a gzip\'d IDX file'
            " (the largest real one unpacks to 47 MB)"
        )
    if len(raw) < header:
        raise DataError(
            f'"{file}" unpacks to {len(raw)} bytes; expected an IDX header of {header} bytes, then data'
        )
    return np.frombuffer(raw, np.uint8, offset=header)


def _idx_images(pixels: np.ndarray, labels: np.ndarray, where: Path) -> np.ndarray:
    """(n, 28, 28, 1) images for n labels; each image is 28 × 28 bytes after the header."""
    if pixels.size != len(labels) * 28 * 28:
        raise DataError(
            f'"{where}" holds {pixels.size / (28 * 28):g} images of 28 × 28 but {len(labels)} labels; '
            "expected one label each"
        )
    return pixels.reshape(len(labels), 28, 28, 1)


def read_fashion_mnist(path: Path) -> tuple[tuple, tuple, int]:
    existing_folder(path, FASHION_DESCRIPTION)
    # idx header: magic, count (, rows, cols)
    arrays = {
        key: _read_idx(path / name, 16 if key.startswith("x") else 8) for key, name in FASHION_FILES.items()
    }
    x_train = _idx_images(arrays["x_train"], arrays["y_train"], path / FASHION_FILES["x_train"])
    x_test = _idx_images(arrays["x_test"], arrays["y_test"], path / FASHION_FILES["x_test"])
    return (x_train, arrays["y_train"]), (x_test, arrays["y_test"]), 10


@dataclass(frozen=True)
class Archive:
    """Where Keras keeps a dataset, and how to fetch and read it."""

    reader: Callable[[Path], tuple[tuple, tuple, int]]
    cache_names: tuple[str, ...]  # relative to the Keras datasets cache, first = download target
    url: str
    sha256: str | None
    description: str
    max_bytes: int  # the most one downloaded file may have: a server cannot stream without end


ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive(
        read_cifar10,
        (
            "cifar-10-python.tar.gz",
            "cifar-10-batches-py-target_archive",  # Keras >= 3.6 get_file layout
            "cifar-10-batches-py-target/cifar-10-batches-py",
            "cifar-10-batches-py.tar.gz",  # older Keras layouts
            "cifar-10-batches-py",
        ),
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        CIFAR_DESCRIPTION,
        CIFAR_ARCHIVE_MAX,
    ),
    "cifar100": Archive(
        read_cifar100,  # fine labels; _reader hands it the spec's label_mode
        (
            "cifar-100-python.tar.gz",
            "cifar-100-python-target_archive",  # Keras >= 3.6 get_file layout
            "cifar-100-python-target/cifar-100-python",
            "cifar-100-python",  # older Keras layouts
        ),
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        CIFAR100_DESCRIPTION,
        CIFAR_ARCHIVE_MAX,
    ),
    "mnist": Archive(
        read_mnist_npz,
        ("mnist.npz",),
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
        "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
        MNIST_DESCRIPTION,
        MNIST_NPZ_MAX,
    ),
    "fashion_mnist": Archive(
        read_fashion_mnist,
        ("fashion-mnist",),
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        None,
        FASHION_DESCRIPTION,
        FASHION_FILE_MAX,
    ),
}


def keras_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "datasets"


# The files a cached folder must hold, each non-empty, to count as a finished download.
CACHED_FOLDER_FILES: dict[str, tuple[str, ...]] = {
    "cifar10": tuple(CIFAR_BATCHES),
    "cifar100": CIFAR100_LAYOUT.members,
    "fashion_mnist": tuple(FASHION_FILES.values()),
}


def _non_empty_file(path: Path) -> bool:
    try:
        info = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size > 0


def _complete(entry: Path, source: str) -> bool:
    """Whether a cache entry is what a finished download leaves: a non-empty regular file, or a folder with
    every file its reader needs. An empty folder or a zero-byte file is a download that died midway
    (Keras and older runners wrote in place): it counts as missing, so the next run fetches it again."""
    if not entry.is_dir():
        return _non_empty_file(entry)
    names = CACHED_FOLDER_FILES.get(source)
    layouts = {"cifar10": CIFAR10_LAYOUT, "cifar100": CIFAR100_LAYOUT}
    folder = _cifar_folder(entry, layouts[source]) if source in layouts else entry
    return names is not None and all(_non_empty_file(folder / name) for name in names)


def _discard(entry: Path) -> None:
    """Remove a partial cache entry; a link is removed itself, never followed."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    elif os.path.lexists(entry):
        entry.unlink()


def _copy(response: Any, out: Any, limit: int) -> str:
    """The response body into `out`, refusing more than `limit` bytes; returns its sha256."""
    digest, size = hashlib.sha256(), 0
    while chunk := response.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise OSError(f"the server sent more than {megabytes(limit)}")
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()


def _temporary_sibling(path: Path) -> Path:
    """A name beside `path` no other run picks, so concurrent downloads never write into one file. Not
    tempfile's: its 0600/0700 modes would stick to the cache entry; this one is created with the umask."""
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")


def _download(url: str, target: Path, sha256: str | None, limit: int) -> None:
    """Fetch `url` to `target`, verifying its hash. The bytes go to a temporary sibling that is renamed
    into place only when complete, so a failure leaves nothing a later run would take for the archive.
    Raises OSError or http.client.HTTPException on any failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = _temporary_sibling(target)
    try:
        with (
            partial.open("xb") as out,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            digest = _copy(response, out, limit)
        if sha256 and digest != sha256:
            raise OSError(f"checksum mismatch for {url}")
        os.replace(partial, target)  # also over a zero-byte file a failed download left
    finally:
        partial.unlink(missing_ok=True)


def _fetch_fashion_mnist(archive: Archive, folder: Path) -> None:
    """The four files into a temporary sibling folder, renamed into place once all four are in."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = _temporary_sibling(folder)
    partial.mkdir()
    try:
        for name in FASHION_FILES.values():
            _download(archive.url + name, partial / name, None, archive.max_bytes)
        if not _complete(folder, "fashion_mnist"):  # else a concurrent run finished first: keep its folder
            _discard(folder)  # the partial entry locate skipped: a rename cannot replace a non-empty folder
            os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _explicit_path(source: str, path: str) -> Path:
    """`data.path` if it is a regular file or a folder; the reader checks which one the source needs."""
    explicit = Path(path).expanduser()
    expected = f'{ARCHIVES[source].description} for data.source = "{source}"'
    try:
        mode = explicit.stat().st_mode  # only stat: nothing is opened before the kind is known
    except OSError as exc:
        raise DataError(f'data.path: "{path}" {unreachable(exc)}; expected {expected}') from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataError(f'data.path: "{path}" is {path_kind(mode)}; expected {expected}')
    return explicit


def locate(source: str, path: str | None) -> Path:
    """The archive to read: `data.path`, else Keras' cache, else a download into the cache."""
    archive = ARCHIVES[source]
    if path is not None:
        return _explicit_path(source, path)
    cache = keras_cache()
    for name in archive.cache_names:
        if _complete(cache / name, source):
            return cache / name
    target = cache / archive.cache_names[0]
    try:
        if os.environ.get("RUNNER_OFFLINE", "") not in ("", "0"):
            raise OSError("downloads disabled by RUNNER_OFFLINE")
        if source == "fashion_mnist":
            _fetch_fashion_mnist(archive, target)
        else:
            _download(archive.url, target, archive.sha256, archive.max_bytes)
    except (OSError, http.client.HTTPException) as exc:  # a dropped connection can be either
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f'data.source = "{source}": not in Keras\' cache ({cache}) and the download from '
            f"{archive.url} failed ({reason}).\n"
            f"  Fix: fetch {archive.description} on a machine with internet and put it at {target},\n"
            f'  or point the spec at it: --set data.path="/path/to/{archive.cache_names[0]}".\n'
            "  To run offline without it, use the procedural dataset: --set data.source=shapes"
        ) from None
    return target


# ---------------------------------------------------------------- splits and pipelines


def _checked_split(
    x: np.ndarray, y: np.ndarray, num_classes: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """(images, (n,) int32 labels) if they are what a model takes, else one DataError saying what differs."""
    if x.dtype != np.uint8 or x.ndim != 4:
        raise DataError(f"{where}: expected (n, H, W, C) uint8 images; got {x.dtype} {x.shape}")
    if y.dtype.kind not in "iu":  # checked before the cast: text labels would not convert, floats would round
        raise DataError(f"{where}: expected integer labels; got {y.dtype}")
    y = y.reshape(-1)
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{where}: labels must lie in 0..{num_classes - 1}; found {y.min()}..{y.max()}")
    return x, y.astype(np.int32)


def _read_archive(spec: DataSpec) -> tuple[tuple, tuple, int]:
    """The checked arrays of the archive the spec names. Each error starts with the field that chose the
    file: its path alone does not say whether the user's data.path or Keras' cache supplied it."""
    found = locate(spec.source, spec.path)
    reader = ARCHIVES[spec.source].reader
    if spec.source == "cifar100":
        reader = functools.partial(read_cifar100, label_mode=spec.label_mode)
    try:
        (x_train, y_train), (x_test, y_test), num_classes = reader(found)
        x_train, y_train = _checked_split(x_train, y_train, num_classes, f'"{found}" (train split)')
        x_test, y_test = _checked_split(x_test, y_test, num_classes, f'"{found}" (test split)')
    except DataError as exc:
        if spec.path is not None:
            raise DataError(f"data.path: {exc}") from None
        raise DataError(
            f'data.source = "{spec.source}": {exc}.\n  Fix: delete it from Keras\' cache so the next run '
            f'downloads it again, or point the spec at another copy: --set data.path="/path/to/'
            f'{ARCHIVES[spec.source].cache_names[0]}"'
        ) from None
    return (x_train, y_train), (x_test, y_test), num_classes


def load_data(spec: DataSpec, seed: int) -> Splits:
    """Load and split the data the spec names; every failure is one DataError."""
    notes: tuple[str, ...] = ()
    if spec.source == "shapes":
        train, test, num_classes = _load_shapes(spec, seed)
    elif spec.source == "npz":
        train, test, num_classes, notes = _load_npz(spec, seed)
    else:
        train, test, num_classes = _read_archive(spec)
    return split_arrays(spec, train, test, num_classes, notes)


def enough_to_train(n: int, spec: DataSpec) -> int:
    """The training images left of `n` once validation_fraction is taken, if they make one batch."""
    n_val = int(n * spec.validation_fraction)
    if n - n_val < spec.batch_size:
        raise DataError(
            f"data: {n - n_val} training images after the validation split; expected at "
            f"least one batch (batch_size = {spec.batch_size})"
        )
    return n - n_val


def split_arrays(
    spec: DataSpec, train: tuple, test: tuple, num_classes: int, notes: tuple[str, ...] = ()
) -> Splits:
    """(images, labels) of train and test → Splits: train_size and test_size applied, then
    validation_fraction taken from the end of the training images."""
    (x_train, y_train), (x_test, y_test) = train, test
    x_train, y_train = x_train[: spec.train_size], y_train[: spec.train_size]
    x_test, y_test = x_test[: spec.test_size], y_test[: spec.test_size]
    cut = enough_to_train(len(x_train), spec)
    # Aligned once here, so that every epoch's pipeline reads these buffers in place (shared_tensor).
    return Splits(
        spec.source,
        as_aligned(x_train[:cut]),
        as_aligned(y_train[:cut]),
        as_aligned(x_train[cut:]),
        as_aligned(y_train[cut:]),
        as_aligned(x_test),
        as_aligned(y_test),
        num_classes,
        notes,
    )


def _gathered(tf: Any, indices: Any, x: np.ndarray, y: np.ndarray) -> Any:
    """Batches of indices → (uint8 images, int32 labels) batches, one gather per batch (not one slice
    per image: that keeps the input pipeline far ahead of a 2-core CPU's training step)."""
    images, labels = shared_tensor(tf, x), shared_tensor(tf, y)
    batches = indices.map(
        lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return lean(tf, batches.prefetch(tf.data.AUTOTUNE))


def lean(tf: Any, dataset: Any) -> Any:
    """An array pipeline's options (measured on 2 cores, 50 000 CIFAR-shaped images, seed CNN):
    - no default graph rewrites: they serialize the pipeline with the arrays it captures, a copy of
      the whole split that outlives the iterator (+150 MB), for rewrites that change nothing here
      (the map is parallel and prefetched already);
    - one thread per op (a batch's gather): the training step's kernels keep the cores (+4 % images/s)."""
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def pipeline(x: np.ndarray, y: np.ndarray, batch_size: int) -> Any:
    """Validation and test batches, in order."""
    from runner import compat

    tf = compat.tensorflow()
    return _gathered(tf, tf.data.Dataset.range(len(x)).batch(batch_size), x, y)


def train_pipeline(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle_seed: int,
    epochs: range,
    skip: int = 0,
    augmentation: AugmentationSpec | None = None,
) -> Any:
    """Training batches for `epochs`, each epoch in its own order, then the next one's.

    The order of epoch e is a stateless shuffle seeded by (shuffle_seed, e): a pure function of the
    spec, so a run resumed at epoch e, step s (`skip` = s batches of epoch e already done) sees the
    very batches the uninterrupted run saw. Batches never straddle two epochs. `augmentation`'s
    draws are keyed by (shuffle_seed, epoch, batch), so resumed batches are augmented alike.
    """
    from runner import compat

    tf = compat.tensorflow()
    images, labels = shared_tensor(tf, x), shared_tensor(tf, y)  # no copy of the data per epoch
    keyed = epoch_indices(tf, len(x), batch_size, shuffle_seed, epochs, skip)
    batches = loaded(tf, keyed, lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)), augmentation)
    return lean(tf, batches)


def epoch_indices(tf: Any, n: int, batch_size: int, shuffle_seed: int, epochs: range, skip: int = 0) -> Any:
    """Batches of int64 indices into a split of `n` for `epochs`, `skip` batches of the first left out,
    each with its key (shuffle_seed, epoch, batch): the order of epoch e is the stateless shuffle
    seeded by (shuffle_seed, e), whatever the source."""

    def epoch_batches(epoch: Any) -> Any:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(shuffle_seed, tf.int64), epoch])
        )
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate()
        return batches.map(lambda i, idx: (idx, tf.stack([tf.constant(shuffle_seed, tf.int64), epoch, i])))

    return tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(epoch_batches).skip(skip)


def loaded(tf: Any, keyed: Any, load: Any, augmentation: AugmentationSpec | None) -> Any:
    """(indices, key) batches → (uint8 images, labels) batches by `load(indices)`, in a parallel map,
    augmented by draws keyed by `key` when `augmentation` asks for anything."""
    if augmentation is None or not augmentation.describe():
        batches = keyed.map(lambda idx, key: load(idx), num_parallel_calls=tf.data.AUTOTUNE)
        return batches.prefetch(tf.data.AUTOTUNE)
    from runner.augment import augment

    def batch(idx: Any, key: Any) -> Any:
        images, labels = load(idx)
        return augment(images, key, augmentation), labels

    return keyed.map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
