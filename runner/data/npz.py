"""`source = "npz"`: the user's own arrays, x_train and y_train (and optionally x_test, y_test) in an
.npz, bounded and checked before use; float images in [0, 1] are made uint8; without x_test a
seeded part of x_train is held out as the test split.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from runner.data.arrays import Splits, split_arrays
from runner.data.files import MB, DataError, check_unpacked, regular_file
from runner.spec import DataSpec

NPZ_DESCRIPTION = "an .npz file with x_train, y_train (and optionally x_test, y_test)"


NPZ_MAX = 4_000 * MB  # packed and unpacked: the arrays are held in memory, like CIFAR's


NPZ_TEST_FRACTION = 0.1  # held out of x_train as the test split when the file has no x_test


NPZ_MAX_CLASSES = 10_000  # a label above this is a mistake, not a class: the output layer would be huge


NPZ_IMAGES = "(n, H, W) or (n, H, W, C) images, uint8 or floats in [0, 1]"


def _npz_arrays(path: Path) -> dict[str, Any]:
    """x_train, y_train and, if present, x_test, y_test of a bounded npz; no pickle is ever loaded."""
    regular_file(path, NPZ_MAX, NPZ_DESCRIPTION)
    try:
        check_unpacked(path, NPZ_MAX, NPZ_DESCRIPTION)
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


def load(spec: DataSpec, seed: int) -> Splits:
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
    return split_arrays(spec, train, test, num_classes, notes)
