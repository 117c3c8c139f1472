"""MNIST (Keras' mnist.npz) and Fashion-MNIST (the four gzip'd IDX files), read without Keras, each
bounded before it is unpacked.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from pathlib import Path

import numpy as np

from runner.data.files import MB, DataError, check_unpacked, existing_folder, megabytes, regular_file

MNIST_DESCRIPTION = "mnist.npz (11 MB)"


FASHION_DESCRIPTION = "the folder fashion-mnist/ with the four *-ubyte.gz files (30 MB)"


MNIST_NPZ_MAX = 200 * MB  # 11 MB packed, 55 MB unpacked; bounds both


FASHION_FILE_MAX = 200 * MB  # the largest unpacks to 47 MB


def read_mnist_npz(path: Path) -> tuple[tuple, tuple, int]:
    regular_file(path, MNIST_NPZ_MAX, MNIST_DESCRIPTION)
    try:
        check_unpacked(path, MNIST_NPZ_MAX, MNIST_DESCRIPTION)
        with np.load(path, allow_pickle=False) as f:
            x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(
            f'"{path}" is not a readable mnist.npz ({exc}); expected {MNIST_DESCRIPTION}'
        ) from None
    return (x_train[..., None], y_train), (x_test[..., None], y_test), 10


FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def _read_idx(file: Path, header: int) -> np.ndarray:
    """One gzip'd IDX file → its uint8 payload after the `header` bytes; unpacks at most FASHION_FILE_MAX."""
    regular_file(file, FASHION_FILE_MAX, "a gzip'd IDX file")
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
