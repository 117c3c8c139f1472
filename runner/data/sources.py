"""The one interface every data source gives a run (`Source`), and the registry that picks the source
a spec names (`load_splits`).

A source is loaded and checked before anything is built (every failure one DataError naming the field
and the file); what a run then asks of it is the same whatever it is: its classes and image shape,
the size of each split, the first training batch (the probe's), tf.data pipelines of uint8 images and
int32 labels in the order a resume reproduces, a summary for report.json, and what a crash or an
undecodable file says about the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from runner.data import archives, image_folder, npz, shapes, tfds
from runner.data.pipeline import TrainingBatches
from runner.spec import DataSpec, SourceName


class Source(Protocol):
    """What a run reads from its data, whichever source it comes from (arrays held in memory, a
    folder of images streamed from disk, a TFDS dataset read at first use)."""

    @property
    def source(self) -> str:
        """The spec's data.source."""
        ...

    @property
    def num_classes(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def count(self, split: str) -> int:
        """Images in "train", "validation" or "test"."""
        ...

    def first_batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first `n` training images (uint8) and labels: the probe's and the metrics' batch."""
        ...

    def train_dataset(self, order: TrainingBatches) -> Any:
        """The training batches `order` names, in the order a resume reproduces."""
        ...

    def eval_dataset(self, split: str, batch_size: int) -> Any:
        """Batches of "validation" or "test", in order."""
        ...

    def explain(self, exc: Exception) -> str | None:
        """What a crash while training says about the data, in words; None when it says nothing."""
        ...

    def summary(self) -> dict[str, Any]:
        """What report.json's `data` holds: source, input shape, classes, split sizes (and what the
        source adds: class names, counts, a fingerprint, skipped files)."""
        ...

    def undecodable(self) -> Iterator[tuple[str, str]]:
        """Every file of every split that does not decode, with the reason (none for arrays: they are
        checked whole as they load)."""
        ...


Loader = Callable[[DataSpec, int], Source]

# Keyed by spec.SourceName's values (a test holds them equal): a spec that validated has a loader.
LOADERS: dict[SourceName, Loader] = {
    "shapes": shapes.load,
    "cifar10": archives.load,
    "cifar100": archives.load,
    "mnist": archives.load,
    "fashion_mnist": archives.load,
    "npz": npz.load,
    "image_folder": image_folder.load_folder,
    "tfds": tfds.load,
}


def load_splits(spec: DataSpec, seed: int) -> Source:
    """The data the spec names, loaded and checked (every failure one DataError)."""
    return LOADERS[spec.source](spec, seed)


def scan_data(spec: DataSpec, seed: int) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """What `runner validate --data` reports: the data's summary (classes, counts, fingerprint) and
    every file that does not decode. Arrays are checked whole as they load (a DataError); a folder's
    files are each decoded once, as a run would, without building a model."""
    splits = load_splits(spec, seed)
    return splits.summary(), bad_files(splits)


def bad_files(splits: Source) -> list[tuple[str, str]]:
    """The files of the splits that do not decode (none for arrays: they are checked as they load)."""
    return list(splits.undecodable())
