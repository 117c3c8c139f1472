"""The CIFAR-10 and CIFAR-100 python archives (or their extracted folders), read without Keras: entries
and unpacked bytes counted before each is read, pickles allowed to hold numpy arrays only.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.data.files import MB, DataError, megabytes, regular_file

CIFAR_DESCRIPTION = "cifar-10-python.tar.gz (163 MB)"


CIFAR100_DESCRIPTION = "cifar-100-python.tar.gz (161 MB)"


CIFAR100_CLASSES = {"fine": 100, "coarse": 20}


CIFAR_ARCHIVE_MAX = 1_000 * MB  # the real archive: 170 MB


CIFAR_UNPACKED_MAX = 1_000 * MB  # its entries unpack to 178 MB


CIFAR_ENTRIES_MAX = 100  # it has 9 entries: the folder, 6 batches, batches.meta, readme.html


CIFAR_BATCH_MAX = 200 * MB  # one batch: 31 MB


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


def cifar_folder(path: Path, layout: CifarLayout = CIFAR10_LAYOUT) -> Path:
    """The folder holding the batches: `path` itself or the folder the archive unpacks to."""
    return path / layout.folder if (path / layout.folder).is_dir() else path


def _cifar_members(path: Path, layout: CifarLayout = CIFAR10_LAYOUT) -> dict[str, bytes]:
    """The pickles `layout` names, from its .tar.gz or from its extracted folder."""
    if path.is_dir():
        folder = cifar_folder(path, layout)
        missing = [b for b in layout.members if not (folder / b).exists()]
        if missing:
            raise DataError(
                f'"{folder}" lacks {", ".join(missing)}; expected {layout.description} '
                "or its extracted folder"
            )
        expected = layout.member_description
        return {b: regular_file(folder / b, CIFAR_BATCH_MAX, expected).read_bytes() for b in layout.members}
    regular_file(path, CIFAR_ARCHIVE_MAX, layout.description)
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
