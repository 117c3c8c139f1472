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
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.data.files import DataError, existing_folder, path_kind, unreachable
from runner.data.pipeline import TrainingBatches, epoch_indices, loaded
from runner.spec import DataSpec

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # Keras' ALLOWLIST_FORMATS
KERAS_IMAGE_SIZE = (256, 256)  # image_dataset_from_directory's default
TEST_FRACTION = 0.2  # held out when the spec names no test folder
SPLITS = ("train", "validation", "test")
SKIPPED_LISTED = 20  # report.json names this many skipped files, and counts them all
# The first bytes of what tf.io.decode_image reads: anything else is refused by name before it is decoded.
MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM")
# Each magic as (mask, value) on a file's first 4 bytes read as one little-endian int32 (zero-padded when
# shorter): the file starts with it iff head & mask == value. No magic holds a zero byte, so the padding
# never matches. Four ops per file instead of eleven on strings (P7, docs/performance.md).
MAGIC_MASKS = np.array(
    [int.from_bytes(b"\xff" * len(m) + bytes(4 - len(m)), "little") for m in MAGIC], np.uint32
)
MAGIC_VALUES = np.array([int.from_bytes(m.ljust(4, b"\0"), "little") for m in MAGIC], np.uint32)
UNDECODABLE = "image_folder: not a BMP, GIF, JPEG or PNG image:"
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
        # surrogateescape: a name that is not UTF-8 (b"bad\xff.png") hashes as the bytes on disk
        return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def class_folders(root: Path, field: str) -> list[str]:
    """The class subfolders of `root`, sorted (Keras' rule: Python's string order, dot-folders left out)."""
    _in_field(field, lambda: existing_folder(root, EXPECTED_LAYOUT))
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        raise DataError(f'{field}: "{root}" {unreachable(exc)}; expected {EXPECTED_LAYOUT}') from None
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
        raise DataError(f'{field}: "{path}" {unreachable(exc)}; expected an image file') from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f'{field}: "{path}" is {path_kind(info.st_mode)}; expected an image file')
    return info.st_size


def class_files(root: Path, name: str, field: str) -> list[tuple[str, int]]:
    """(path relative to root, size) of every image under root/name, in Keras' order."""
    found: list[tuple[str, int]] = []
    others = 0

    def unreadable(exc: OSError) -> None:  # os.walk would skip a folder it cannot list, silently
        raise DataError(
            f'{field}: "{exc.filename}" cannot be listed ({exc.strerror}); '
            "expected a readable folder of images"
        )

    walk = sorted(os.walk(root / name, onerror=unreadable, followlinks=False), key=lambda entry: entry[0])
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


# ---------------------------------------------------------------- splits and the file pipeline


class UndecodableFiles(DataError):
    """Files of an image folder that do not decode: every one named, with TensorFlow's reason."""

    def __init__(self, bad: Sequence[tuple[str, str]]) -> None:
        named = "".join(f"\n  cannot decode {shown(path)}: {reason}" for path, reason in bad)
        super().__init__(
            f"data: {len(bad)} file(s) cannot be decoded; expected BMP, GIF, JPEG or PNG images (fix or "
            f"remove them, or set data.skip_bad_files = true to leave them out):{named}"
        )
        self.bad = list(bad)


@dataclass(frozen=True)
class FolderSplits:
    """The files of each split (absolute paths) and their labels; images are decoded batch by batch."""

    source: str
    files: dict[str, tuple[str, ...]]
    labels: dict[str, np.ndarray]  # (n,) int32 per split
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]  # (height, width, channels)
    fingerprints: dict[str, str]  # "path" (and "test_path"): FolderIndex.fingerprint
    skipped: tuple[str, ...] = ()  # files left out by data.skip_bad_files

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def count(self, split: str) -> int:
        return len(self.labels[split])

    def summary(self) -> dict[str, Any]:
        counts = {
            split: {name: int((self.labels[split] == i).sum()) for i, name in enumerate(self.class_names)}
            for split in SPLITS
        }
        sizes = {split: self.count(split) for split in SPLITS}
        return {
            "source": self.source,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            **sizes,
            "class_names": list(self.class_names),
            "counts": counts,
            "fingerprint": self.fingerprints,
            "skipped_files": {
                "count": len(self.skipped),
                "first": [shown(f) for f in self.skipped[:SKIPPED_LISTED]],
            },
        }

    def train_dataset(self, order: TrainingBatches) -> Any:
        """As `pipeline.train_pipeline`: the same index order per epoch (and the same augmentation
        keys), so a resume sees the same batches."""
        from runner import compat

        tf = compat.tensorflow()
        keyed = epoch_indices(tf, self.count("train"), order)
        return loaded(tf, keyed, self._loader(tf, "train"), order.augmentation)

    def eval_dataset(self, split: str, batch_size: int) -> Any:
        from runner import compat

        tf = compat.tensorflow()
        return self._decoded(tf, tf.data.Dataset.range(self.count(split)).batch(batch_size), split)

    def first_batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = next(iter(self.eval_dataset("train", n)))
        return x.numpy(), y.numpy()

    def _loader(self, tf: Any, split: str) -> Any:
        """Indices → (uint8 images, int32 labels): the files read and decoded in the pipeline's
        parallel map, so no more than a few batches are ever in memory."""
        # dtypes given: an empty split (test_fraction = 0) would otherwise be float32 and fail in ReadFile
        paths = tf.constant(tf_paths(self.files[split]), tf.string)
        labels = tf.constant(self.labels[split], tf.int32)
        signature = tf.TensorSpec(self.input_shape, tf.uint8)

        def batch(idx: Any) -> tuple[Any, Any]:
            decode = partial_decoder(tf, self.input_shape)
            images = tf.map_fn(decode, tf.gather(paths, idx), fn_output_signature=signature)
            return images, tf.gather(labels, idx)

        return batch

    def _decoded(self, tf: Any, indices: Any, split: str) -> Any:
        batches = indices.map(self._loader(tf, split), num_parallel_calls=tf.data.AUTOTUNE)
        return batches.prefetch(tf.data.AUTOTUNE)

    def explain(self, exc: Exception) -> str | None:
        """The file a decoding error came from, in words; None for any other crash."""
        named = re.search(re.escape(UNDECODABLE) + r"\] \[(.*?)\]", str(exc))
        if named:
            return f'data: cannot decode "{named.group(1)}"; expected a BMP, GIF, JPEG or PNG image'
        if type(exc).__name__ != "InvalidArgumentError":
            return None
        bad = self.first_undecodable()
        return (
            None
            if bad is None
            else f'data: cannot decode "{shown(bad[0])}" ({bad[1]}); expected a whole image'
        )

    def first_undecodable(self) -> tuple[str, str] | None:
        """The first file of any split that does not decode (a damaged image behind a valid header)."""
        return next(self.undecodable(), None)

    def undecodable(self) -> Iterator[tuple[str, str]]:
        """Every file of every split that does not decode, with TensorFlow's reason, in order."""
        for split in SPLITS:
            yield from undecodable_files(self.files[split], self.input_shape)


def undecodable_files(paths: Sequence[str], shape: tuple[int, int, int]) -> list[tuple[str, str]]:
    """(path, TensorFlow's reason) of each file that does not decode, in order. Every file is decoded
    once in tf.data's parallel map, as a run would; only the few that fail are decoded again, eagerly,
    for their reason (a folder of 40 000 images is scanned at the pipeline's speed, not one by one)."""
    from runner import compat

    tf = compat.tensorflow()
    # libjpeg's own notices ("Premature end of JPEG data") are for the files this names: not the terminal's
    with compat.native_stderr_to(os.devnull):
        return _undecodable(tf, paths, shape)


def _undecodable(tf: Any, paths: Sequence[str], shape: tuple[int, int, int]) -> list[tuple[str, str]]:
    decode = partial_decoder(tf, shape)

    def decoded(i: Any, path: Any) -> tuple[Any, Any]:
        # A value computed from the pixels: tf.data prunes a decode that only a control edge needs.
        return i, tf.reduce_max(decode(path))

    files = tf.data.Dataset.from_tensor_slices(tf.constant(tf_paths(paths), tf.string)).enumerate()
    good = files.map(decoded, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    passed = {int(i) for i, _ in good.as_numpy_iterator()}
    bad = []
    for i, path in enumerate(paths):
        if i in passed:
            continue
        try:
            decode(tf.constant(os.fsencode(path)))
            bad.append((path, "decodes alone but not in the pipeline"))  # never seen; said, not hidden
        except tf.errors.OpError as exc:
            bad.append((path, op_message(exc.message)))
    return bad


def tf_paths(paths: Sequence[str]) -> list[bytes]:
    """File names as TensorFlow's string tensors take them: the bytes on disk (a name that is not
    UTF-8 is a str with surrogates in Python, which tf.constant refuses to encode)."""
    return [os.fsencode(path) for path in paths]


def shown(path: str | Path) -> str:
    """A file name fit to print: bytes that are not UTF-8 as \\xff escapes, not lone surrogates
    (which no terminal encodes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def op_message(message: str) -> str:
    """TensorFlow's error text without its function-node and op decorations (and our own format
    check's assertion as the words it stands for, not `Expected 'tf.Tensor(False…)' to be true`)."""
    if UNDECODABLE in message:
        return "not a BMP, GIF, JPEG or PNG image (by its first bytes)"
    return re.sub(r"\{\{.*?\}\}\s*", "", message).split(" [Op:")[0].strip()


def known_format(tf: Any, raw: Any) -> Any:
    """Whether the bytes `raw` (a scalar string) start with one of MAGIC: a scalar bool."""
    head = tf.io.decode_raw(raw, tf.int32, fixed_length=4)  # (1,) the first 4 bytes, zero-padded
    masked = tf.bitwise.bitwise_and(head, MAGIC_MASKS.view(np.int32))
    return tf.reduce_any(masked == MAGIC_VALUES.view(np.int32))


def partial_decoder(tf: Any, shape: tuple[int, int, int]) -> Any:
    """path → (height, width, channels) uint8: decoded (channels converted), resized bilinearly without
    cropping (Keras' defaults), rounded back to uint8 as the array sources give them."""
    height, width, channels = shape

    def decode(path: Any) -> Any:
        raw = tf.io.read_file(path)
        with tf.control_dependencies([tf.debugging.Assert(known_format(tf, raw), [UNDECODABLE, path])]):
            image = tf.io.decode_image(raw, channels=channels, expand_animations=False)
        resized = tf.image.resize(image, (height, width), method="bilinear")
        # Bilinear weights are convex: values stay in [0, 255] up to float error, which round()
        # removes, so a plain cast is saturate_cast's result without its two clamping ops.
        return tf.ensure_shape(tf.cast(tf.round(resized), tf.uint8), shape)

    return decode


def _split_indices(n: int, spec: DataSpec, seed: int, held_out: bool) -> dict[str, np.ndarray]:
    """Indices of train, validation and (unless a test folder is given) test, drawn with the seed."""
    order = np.random.default_rng(seed).permutation(n)
    fraction = TEST_FRACTION if spec.test_fraction is None else spec.test_fraction
    n_test = int(n * fraction) if held_out else 0
    test, rest = order[:n_test][: spec.test_size], order[n_test:][: spec.train_size]
    cut = len(rest) - int(len(rest) * spec.validation_fraction)
    return {"train": np.sort(rest[:cut]), "validation": np.sort(rest[cut:]), "test": np.sort(test)}


def load_folder(spec: DataSpec, seed: int) -> FolderSplits:
    """Scan data.path (and data.test_path), then split; every failure is one DataError."""
    assert spec.path is not None  # the spec requires it for image_folder
    height, width = spec.image_size or KERAS_IMAGE_SIZE
    shape = (height, width, spec.channels or 3)
    index = scan_folder(Path(spec.path), "data.path", spec.class_names)
    test = scan_test_folder(Path(spec.test_path), index.class_names) if spec.test_path else None
    fingerprints = {"path": index.fingerprint()}  # of what is on disk, skipped files included
    if test is not None:
        fingerprints["test_path"] = test.fingerprint()
    skipped: list[str] = []
    if spec.skip_bad_files:
        index = _without_undecodable(index, shape, skipped)
        test = None if test is None else _without_undecodable(test, shape, skipped)
    files, labels = _split_files(index, test, spec, seed)
    return FolderSplits("image_folder", files, labels, index.class_names, shape, fingerprints, tuple(skipped))


def _split_files(
    index: FolderIndex, test: FolderIndex | None, spec: DataSpec, seed: int
) -> tuple[dict[str, tuple[str, ...]], dict[str, np.ndarray]]:
    """Each split's absolute paths and labels: test from data.test_path or held out of data.path."""
    chosen = _split_indices(len(index.files), spec, seed, held_out=test is None)
    if len(chosen["train"]) < spec.batch_size:
        raise DataError(
            f"data: {len(chosen['train'])} training images after the validation and test splits; expected "
            f"at least one batch (batch_size = {spec.batch_size})"
        )
    paths = np.array([str(index.root / f) for f in index.files])
    files = {split: tuple(paths[chosen[split]]) for split in SPLITS}
    labels = {split: np.array(index.labels, np.int32)[chosen[split]] for split in SPLITS}
    if test is not None:
        files["test"] = tuple(str(test.root / f) for f in test.files)[: spec.test_size]
        labels["test"] = np.array(test.labels, np.int32)[: spec.test_size]
    return files, labels


def _without_undecodable(index: FolderIndex, shape: tuple[int, int, int], skipped: list[str]) -> FolderIndex:
    """`index` less the files that do not decode (their paths appended to `skipped`): each file is decoded
    once, before training, so which ones are left out never changes between a run and its resume."""
    paths = [str(index.root / file) for file in index.files]
    bad = {path for path, _ in undecodable_files(paths, shape)}
    skipped += [path for path in paths if path in bad]
    keep = [i for i, path in enumerate(paths) if path not in bad]
    return FolderIndex(
        index.root,
        index.class_names,
        tuple(index.files[i] for i in keep),
        tuple(index.sizes[i] for i in keep),
        tuple(index.labels[i] for i in keep),
    )
