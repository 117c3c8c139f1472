"""The datasets Keras ships (cifar10, cifar100, mnist, fashion_mnist): where Keras caches them, the
download into that cache when missing (bounded in time and size, verified, renamed into place only
when whole, so a failed or concurrent download never leaves a file a later run would trust), and the
checked splits of the archive a spec names (`data.path`, else the cache, else a download).
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import secrets
import shutil
import stat
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.data.arrays import Splits, checked_split, split_arrays
from runner.data.cifar import (
    CIFAR10_LAYOUT,
    CIFAR100_DESCRIPTION,
    CIFAR100_LAYOUT,
    CIFAR_ARCHIVE_MAX,
    CIFAR_BATCHES,
    CIFAR_DESCRIPTION,
    cifar_folder,
    read_cifar10,
    read_cifar100,
)
from runner.data.files import DataError, megabytes, path_kind, unreachable
from runner.data.mnist import (
    FASHION_DESCRIPTION,
    FASHION_FILE_MAX,
    FASHION_FILES,
    MNIST_DESCRIPTION,
    MNIST_NPZ_MAX,
    read_fashion_mnist,
    read_mnist_npz,
)
from runner.spec import DataSpec

DOWNLOAD_TIMEOUT_S = 10


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
    folder = cifar_folder(entry, layouts[source]) if source in layouts else entry
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


def read_archive(spec: DataSpec) -> tuple[tuple, tuple, int]:
    """The checked arrays of the archive the spec names. Each error starts with the field that chose the
    file: its path alone does not say whether the user's data.path or Keras' cache supplied it."""
    found = locate(spec.source, spec.path)
    reader = ARCHIVES[spec.source].reader
    if spec.source == "cifar100":
        reader = functools.partial(read_cifar100, label_mode=spec.label_mode)
    try:
        (x_train, y_train), (x_test, y_test), num_classes = reader(found)
        x_train, y_train = checked_split(x_train, y_train, num_classes, f'"{found}" (train split)')
        x_test, y_test = checked_split(x_test, y_test, num_classes, f'"{found}" (test split)')
    except DataError as exc:
        if spec.path is not None:
            raise DataError(f"data.path: {exc}") from None
        raise DataError(
            f'data.source = "{spec.source}": {exc}.\n  Fix: delete it from Keras\' cache so the next run '
            f'downloads it again, or point the spec at another copy: --set data.path="/path/to/'
            f'{ARCHIVES[spec.source].cache_names[0]}"'
        ) from None
    return (x_train, y_train), (x_test, y_test), num_classes


def load(spec: DataSpec, seed: int) -> Splits:
    """The archive the spec names, split; every failure is one DataError. (The archives have their own
    test split, so the seed is not used.)"""
    train, test, num_classes = read_archive(spec)
    return split_arrays(spec, train, test, num_classes)
