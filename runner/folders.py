"""`source = "image_folder"`: one subfolder per class, images streamed from disk through tf.data.

The scan is plain Python (no TensorFlow) and follows Keras' `image_dataset_from_directory`: classes are
the subfolders sorted as Python sorts strings, dot-folders left out; each class's files are found by a
walk that does not follow linked folders (so a link loop cannot trap it), sorted by folder then name,
kept when their name ends, in any case, in one of Keras' image extensions. Every file is stat'ed, never
opened, during the scan: a FIFO or a device named `x.png` is refused before tf.data would block on it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.data import DataError, _folder, _kind, _unreachable

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # Keras' ALLOWLIST_FORMATS
EXPECTED_LAYOUT = (
    "a folder with one subfolder per class (at least 2), each holding .bmp/.gif/.jpeg/.jpg/.png images"
)


@dataclass(frozen=True)
class FolderIndex:
    """The images of one folder: paths relative to `root` ("class/…/name.png"), sizes, labels."""

    root: Path
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    sizes: tuple[int, ...]
    labels: tuple[int, ...]

    def counts(self) -> dict[str, int]:
        return {name: self.labels.count(label) for label, name in enumerate(self.class_names)}

    def fingerprint(self) -> str:
        """SHA-256 of the sorted relative file list with sizes: equal for two runs that saw the same files."""
        lines = sorted(f"{file}\t{size}\n" for file, size in zip(self.files, self.sizes, strict=True))
        return hashlib.sha256("".join(lines).encode()).hexdigest()


def class_folders(root: Path, field: str) -> list[str]:
    """The class subfolders of `root`, sorted (Keras' rule: Python's string order, dot-folders left out)."""
    _in_field(field, lambda: _folder(root, EXPECTED_LAYOUT))
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        raise DataError(f'{field}: "{root}" {_unreachable(exc)}; expected {EXPECTED_LAYOUT}') from None
    found = [n for n in names if not n.startswith(".") and (root / n).is_dir()]
    if len(found) < 2:
        listed = f" ({', '.join(found)})" if found else ""
        raise DataError(
            f'{field}: "{root}" has {len(found)} class subfolder{"" if len(found) == 1 else "s"}{listed}; '
            f"expected {EXPECTED_LAYOUT}"
        )
    return found


def _in_field(field: str, check: Callable[[], object]) -> None:
    try:
        check()
    except DataError as exc:
        raise DataError(f"{field}: {exc}") from None


def _image_file(path: Path, field: str) -> int:
    """The size of `path` if it (or what its link points to) is a regular file; judged by stat alone."""
    try:
        info = path.stat()
    except OSError as exc:
        raise DataError(f'{field}: "{path}" {_unreachable(exc)}; expected an image file') from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f'{field}: "{path}" is {_kind(info.st_mode)}; expected an image file')
    return info.st_size


def class_files(root: Path, name: str, field: str) -> list[tuple[str, int]]:
    """(path relative to root, size) of every image under root/name, in Keras' order."""
    found: list[tuple[str, int]] = []
    others = 0
    walk = sorted(os.walk(root / name, followlinks=False), key=lambda entry: entry[0])
    for folder, _, files in walk:
        for file in sorted(files):
            path = Path(folder) / file
            if not file.lower().endswith(IMAGE_EXTENSIONS):
                others += 1
                continue
            found.append((path.relative_to(root).as_posix(), _image_file(path, field)))
    if not found:
        raise DataError(
            f'{field}: "{root / name}" holds no images ({others} other files); expected '
            ".bmp, .gif, .jpeg, .jpg or .png files in every class subfolder"
        )
    return found


def _named_classes(found: list[str], given: list[str] | None, root: Path) -> list[str]:
    """The label order: the sorted subfolders, or `data.class_names` if it names exactly those."""
    if given is None:
        return found
    if sorted(given) != found:
        missing, extra = sorted(set(found) - set(given)), sorted(set(given) - set(found))
        duplicated = sorted({n for n in given if given.count(n) > 1})
        detail = "; ".join(
            f"{what}: {', '.join(names)}"
            for what, names in (("not given", missing), ("no such subfolder", extra), ("twice", duplicated))
            if names
        )
        raise DataError(
            f'data.class_names: expected the subfolders of "{root}", each once: {found}; '
            f"got {given} ({detail})"
        )
    return given


def scan_folder(root: Path, field: str, class_names: list[str] | None = None) -> FolderIndex:
    """Every image under `root`, labelled by its class subfolder; each failure is one DataError."""
    root = Path(root).expanduser()
    names = _named_classes(class_folders(root, field), class_names, root)
    files: list[str] = []
    sizes: list[int] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        for file, size in class_files(root, name, field):
            files.append(file)
            sizes.append(size)
            labels.append(label)
    return FolderIndex(root, tuple(names), tuple(files), tuple(sizes), tuple(labels))


def scan_test_folder(root: Path, class_names: tuple[str, ...]) -> FolderIndex:
    """data.test_path: the same layout and the same classes as data.path, labelled in their order."""
    found = class_folders(Path(root).expanduser(), "data.test_path")
    if sorted(found) != sorted(class_names):
        raise DataError(
            f'data.test_path: "{root}" has the classes {found}; expected those of data.path: '
            f"{sorted(class_names)}"
        )
    return scan_folder(root, "data.test_path", list(class_names))
