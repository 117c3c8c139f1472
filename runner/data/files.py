"""Checked paths for every source: a path is stat'ed (never opened) before it is read, so a FIFO or a
device is refused by name instead of blocking; sizes are bounded before a byte is read; an npz's
members are bounded by their declared sizes before numpy allocates them. Every failure is one
DataError: where it was looked for, what was expected, what was found.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from pathlib import Path

from runner.spec import SpecValueError


class DataError(SpecValueError):
    """Data that cannot be found or read: one message saying where it was looked for and what to do."""


# What a reader will touch, at most: far above the real files (a re-packed archive still passes), far below
# what would stall a run. A bigger file is the wrong file; refusing it costs one stat, reading it minutes.
MB = 1_000_000


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


def regular_file(path: Path, limit: int, expected: str) -> Path:
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


def check_unpacked(path: Path, limit: int, description: str) -> None:
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
