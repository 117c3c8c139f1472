"""`source = "tfds"`: a TensorFlow Datasets dataset, prepared in a data_dir, read into uint8 arrays.

TensorFlow Datasets is the optional extra `pip install -e '.[tfds]'`, imported here only, and only for
this source. Loading reads and checks the dataset's metadata from its data_dir alone (no dataset code is
needed, and nothing is downloaded unless `data.download = true`): the features (an Image and a
ClassLabel), the splits, the class names. That neither imports TensorFlow nor starts its runtime, so a
strategy made next can still configure devices and collectives. The images are read at first use into
the same uint8 arrays as the other array sources (data.Splits): the stateless shuffle, augmentation,
exact resume, validation_fraction, train_size and test_size apply unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from runner.data.arrays import Splits, enough_to_train, split_arrays
from runner.data.files import DataError, megabytes
from runner.data.npz import NPZ_MAX
from runner.data.pipeline import TrainingBatches
from runner.memory import aligned_empty
from runner.spec import DataSpec

EXTRA = "pip install -e '.[tfds]'"
SPLIT_FIELDS = {"train": "data.train_split", "test": "data.test_split"}
HELD_MAX = NPZ_MAX  # uint8 bytes held in memory, as for an npz
READ_BATCH = 1024  # images decoded per step while reading a split
LISTED = 10  # prepared datasets named when the one asked for is not among them


def tensorflow_datasets() -> ModuleType:
    """The tensorflow_datasets module, or one DataError saying how to install it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:
        raise DataError(
            f'data.source = "tfds": expected the tensorflow-datasets package (the optional extra: {EXTRA}); '
            f"got it not importable ({exc})"
        ) from None
    return tfds


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """TFDS' absl warnings held back (a variant folder "has no dataset_info.json" for a dataset that is
    simply absent; its own deprecated calls): what went wrong is said once, in a DataError."""
    from absl import logging

    before = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(before)


def data_dir(spec: DataSpec) -> Path:
    """data.data_dir, else TFDS' own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    chosen = spec.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(chosen).expanduser()


def _first_line(exc: BaseException) -> str:
    """The first line of an error's text, TensorFlow's function-node and op decorations left out."""
    text = re.sub(r"\{\{.*?\}\}\s*", "", str(exc)).split(" [Op:")[0].strip()
    return text.splitlines()[0] if text else type(exc).__name__


def prepared(root: Path) -> list[str]:
    """The datasets prepared under `root`, as TFDS names them: "name/version" or "name/config/version"."""
    found = {p.parent for p in root.glob("*/*/dataset_info.json")}
    found |= {p.parent for p in root.glob("*/*/*/dataset_info.json")}
    return sorted(p.relative_to(root).as_posix() for p in found)


def _holds(root: Path) -> str:
    names = prepared(root) if root.is_dir() else []
    if not names:
        return "no prepared dataset" if root.is_dir() else "no such folder"
    more = f", … ({len(names)} in all)" if len(names) > LISTED else ""
    return "it holds " + ", ".join(names[:LISTED]) + more


def _how_to_prepare(name: str, root: Path) -> str:
    return (
        f"  Fix: on a machine with internet, `tfds build {name.split(':')[0]} --data_dir {root}` (or "
        f'tfds.builder("{name}", data_dir=...).download_and_prepare()), then copy the folder here;\n'
        "  or let runner download it: --set data.download=true"
    )


def _builder(tfds: ModuleType, spec: DataSpec, root: Path) -> Any:
    """The dataset's builder: read from its files in `root` (its code is not needed), prepared first
    only when data.download allows it."""
    assert spec.name is not None  # the spec requires it for tfds
    try:
        with quiet_tfds():
            builder = tfds.builder(spec.name, data_dir=str(root))
            if builder.is_prepared():
                return builder
    except Exception as exc:  # DatasetNotFoundError, or a config/version TFDS cannot resolve
        raise DataError(
            f'data.name: "{spec.name}" is not a dataset in data_dir "{root}" ({_holds(root)}; TFDS says: '
            f"{_first_line(exc)})\n{_how_to_prepare(spec.name, root)}"
        ) from None
    if not spec.download:
        raise DataError(
            f'data.name: "{spec.name}" is not prepared in data_dir "{root}" ({_holds(root)}) and '
            f"data.download is false, so nothing was downloaded\n{_how_to_prepare(spec.name, root)}"
        )
    if os.environ.get("RUNNER_OFFLINE", "") not in ("", "0"):
        raise DataError(
            f'data.download: "{spec.name}" is not prepared in data_dir "{root}" and downloads are '
            "disabled by RUNNER_OFFLINE"
        )
    try:
        builder.download_and_prepare()
    except Exception as exc:  # the network, a checksum, a manual download TFDS cannot do
        raise DataError(
            f'data.download: preparing "{spec.name}" in "{root}" failed ({_first_line(exc)})'
        ) from None
    return builder


def _described(features: Any) -> str:
    return ", ".join(f"{key} ({type(feature).__name__})" for key, feature in features.items())


def _keys(info: Any, spec: DataSpec) -> tuple[str, str]:
    """(image feature, label feature): the spec's, else the dataset's supervised_keys."""
    if spec.image_key is not None and spec.label_key is not None:
        return spec.image_key, spec.label_key
    keys = info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return keys[0], keys[1]
    raise DataError(
        f'data.image_key: "{spec.name}" has no (image, label) supervised_keys; expected data.image_key and '
        f"data.label_key naming two of its features: {_described(info.features)}"
    )


def _feature(tfds: ModuleType, info: Any, key: str, field: str, kind: str) -> Any:
    """The top-level feature `key`, if it is a tfds.features.`kind`."""
    features = info.features
    if key not in features:
        raise DataError(
            f'{field}: "{key}" is not a feature of "{info.full_name}"; expected one of: '
            f"{_described(features)}"
        )
    feature = features[key]
    if not isinstance(feature, getattr(tfds.features, kind)):
        raise DataError(
            f'{field}: "{key}" of "{info.full_name}" is {type(feature).__name__}; expected {kind} '
            f"(its features: {_described(features)})"
        )
    return feature


def _image_shape(feature: Any, field: str, spec: DataSpec, name: str) -> tuple[int, int, int]:
    """The (height, width, channels) the images are held at: data.image_size, else their own, fixed size."""
    if feature.np_dtype != np.uint8:
        raise DataError(f'{field}: "{name}" images are {feature.np_dtype}; expected uint8 images')
    height, width, channels = feature.shape
    if channels is None:
        raise DataError(f'{field}: "{name}" images have no fixed channel count; expected 1 or 3 channels')
    if spec.image_size is not None:
        return spec.image_size[0], spec.image_size[1], channels
    if height is None or width is None:
        raise DataError(
            f'data.image_size: "{name}" images vary in size (shape {feature.shape}); expected '
            "data.image_size = [height, width] to resize them to"
        )
    return height, width, channels


def _count(info: Any, split: str, field: str, limit: int | None) -> int:
    """The examples read from `split`: all of it, or its first `limit` (train_size, test_size)."""
    try:
        n = int(info.splits[split].num_examples)
    except (KeyError, ValueError) as exc:
        raise DataError(
            f'{field}: "{split}" is not a split of "{info.full_name}" ({_first_line(exc)}); expected one of '
            f'{", ".join(info.splits.keys())}, or a TFDS slice of them such as "train[:90%]"'
        ) from None
    if n == 0:
        raise DataError(f'{field}: "{split}" of "{info.full_name}" has no examples; expected at least one')
    return min(n, limit or n)


@dataclass(frozen=True)
class TfdsDataset:
    """A prepared dataset's metadata, checked: what its images and labels will be, and how many."""

    builder: Any  # tfds.core.DatasetBuilder, read from data_dir
    image_key: str
    label_key: str
    class_names: tuple[str, ...]
    image_shape: tuple[int | None, ...]  # the feature's: None where images vary
    input_shape: tuple[int, int, int]  # as held: (height, width, channels)
    splits: dict[str, str]  # "train", "test" → the TFDS split read for it
    counts: dict[str, int]  # "train", "test" → examples read

    @property
    def resized(self) -> bool:
        return self.image_shape != self.input_shape

    def describe(self) -> dict[str, Any]:
        """Where the data came from, for report.json."""
        return {
            "name": self.builder.info.full_name,
            "data_dir": str(self.builder.data_dir),
            "splits": self.splits,
            "features": {"image": self.image_key, "label": self.label_key},
        }


def open_dataset(spec: DataSpec) -> TfdsDataset:
    """The dataset data.name in data.data_dir, its metadata checked; no image read, no TensorFlow."""
    tfds = tensorflow_datasets()
    root = data_dir(spec)
    builder = _builder(tfds, spec, root)
    info = builder.info
    image_key, label_key = _keys(info, spec)
    given = spec.image_key is not None
    image_field = "data.image_key" if given else "data.name"
    image = _feature(tfds, info, image_key, image_field, "Image")
    label = _feature(tfds, info, label_key, "data.label_key" if given else "data.name", "ClassLabel")
    if label.num_classes < 2:
        raise DataError(
            f'data.label_key: "{label_key}" of "{info.full_name}" has {label.num_classes} class; expected '
            "at least two"
        )
    shape = _image_shape(image, image_field, spec, info.full_name)
    splits = {"train": spec.train_split or "train", "test": spec.test_split or "test"}
    limits = {"train": spec.train_size, "test": spec.test_size}
    counts = {k: _count(info, split, SPLIT_FIELDS[k], limits[k]) for k, split in splits.items()}
    held = sum(counts.values()) * int(np.prod(shape))
    if held > HELD_MAX:
        raise DataError(
            f'data.name: "{info.full_name}": {sum(counts.values())} images of {shape} are {megabytes(held)} '
            f"in memory; expected at most {megabytes(HELD_MAX)}: read fewer with data.train_size, "
            'data.test_size or a split slice such as "train[:10%]"'
        )
    return TfdsDataset(
        builder, image_key, label_key, tuple(label.names), tuple(image.shape), shape, splits, counts
    )


def load(spec: DataSpec, seed: int) -> TfdsSplits:
    """The dataset the spec names, checked now (every failure one DataError), read at first use. (Its
    splits are the dataset's own, so the seed is not used.)"""
    dataset = open_dataset(spec)
    enough_to_train(dataset.counts["train"], spec)
    return TfdsSplits(dataset, spec)


def _read(dataset: TfdsDataset, which: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's (n, H, W, C) uint8 images and (n,) int32 labels, in the order of its files."""
    from runner import compat

    tf = compat.tensorflow()
    tfds = tensorflow_datasets()
    n, size = dataset.counts[which], dataset.input_shape[:2]

    def pair(example: Any) -> tuple[Any, Any]:
        image = example[dataset.image_key]
        if dataset.resized:  # bilinear, no crop, rounded back to uint8: as image_folder resizes
            image = tf.saturate_cast(tf.round(tf.image.resize(image, size, method="bilinear")), tf.uint8)
        return image, example[dataset.label_key]

    wanted = tfds.decode.PartialDecoding({dataset.image_key: True, dataset.label_key: True})
    # One file after another: the first n examples of the split, as "train[:n]" would read them.
    config = tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False)
    x, y, done = aligned_empty((n, *dataset.input_shape), np.uint8), aligned_empty((n,), np.int32), 0
    try:
        with quiet_tfds():
            found = dataset.builder.as_dataset(
                split=dataset.splits[which], shuffle_files=False, decoders=wanted, read_config=config
            )
        batches = found.take(n).map(pair, num_parallel_calls=tf.data.AUTOTUNE).batch(READ_BATCH)
        for images, labels in batches.prefetch(2).as_numpy_iterator():
            x[done : done + len(labels)], y[done : done + len(labels)] = images, labels
            done += len(labels)
    except (tf.errors.OpError, ValueError) as exc:  # a damaged record file, an image that does not decode
        raise DataError(
            f'{SPLIT_FIELDS[which]}: "{dataset.splits[which]}" of "{dataset.builder.info.full_name}" in '
            f'"{dataset.builder.data_dir}" cannot be read ({_first_line(exc)}); expected the files TFDS '
            "prepared there: prepare it again"
        ) from None
    if done != n:
        raise DataError(
            f'{SPLIT_FIELDS[which]}: "{dataset.splits[which]}" of "{dataset.builder.info.full_name}" holds '
            f"{done} examples; expected {n}, as its dataset_info.json says: prepare it again"
        )
    return x, y


@dataclass(frozen=True)
class TfdsSplits:
    """The Splits of a TFDS dataset, read on first use (after the strategy is made: reading starts
    TensorFlow's runtime); every split, count and summary is that of the arrays then held."""

    dataset: TfdsDataset
    spec: DataSpec
    source = "tfds"

    @functools.cached_property
    def held(self) -> Splits:
        """The arrays, read once."""
        notes: tuple[str, ...] = ()
        if self.dataset.resized:
            (height, width), (h, w, _) = self.dataset.image_shape[:2], self.dataset.input_shape
            notes = (f"images resized from {height or '?'}×{width or '?'} to {h}×{w} (bilinear, no crop)",)
        train, test = _read(self.dataset, "train"), _read(self.dataset, "test")
        return split_arrays(self.spec, train, test, len(self.dataset.class_names), notes)

    @property
    def num_classes(self) -> int:
        return len(self.dataset.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.dataset.input_shape

    def count(self, split: str) -> int:
        return self.held.count(split)

    def first_batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.held.first_batch(n)

    def train_dataset(self, order: TrainingBatches) -> Any:
        """Splits.train_dataset of the arrays read: the same stateless shuffle and augmentation."""
        return self.held.train_dataset(order)

    def eval_dataset(self, split: str, batch_size: int) -> Any:
        return self.held.eval_dataset(split, batch_size)

    def explain(self, exc: Exception) -> str | None:
        return None

    def undecodable(self) -> Iterator[tuple[str, str]]:
        """Nothing: the arrays were decoded and checked as they were read."""
        return iter(())

    def summary(self) -> dict[str, Any]:
        names = self.dataset.class_names
        counts = {
            split: dict(zip(names, np.bincount(labels, minlength=len(names)).tolist(), strict=True))
            for split, labels in ((s, self.held.arrays(s)[1]) for s in ("train", "validation", "test"))
        }
        return self.held.summary() | {
            "class_names": list(names),
            "counts": counts,
            "tfds": self.dataset.describe(),
        }
