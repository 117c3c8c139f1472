"""Splits held in memory as uint8 arrays (shapes, the archives, npz, tfds once read): the checks every
array split passes, the sizes the spec asks for, the validation split taken from the end of train.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.data.files import DataError
from runner.data.pipeline import TrainingBatches, pipeline, train_pipeline
from runner.memory import as_aligned
from runner.spec import DataSpec


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

    def train_dataset(self, order: TrainingBatches) -> Any:
        return train_pipeline(self.x_train, self.y_train, order)

    def eval_dataset(self, split: str, batch_size: int) -> Any:
        return pipeline(*self.arrays(split), batch_size)

    def explain(self, exc: Exception) -> str | None:
        """What a crash says about the data (arrays in memory: nothing)."""
        return None

    def undecodable(self) -> Iterator[tuple[str, str]]:
        """Nothing: arrays are checked whole as they load."""
        return iter(())

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "train": len(self.y_train),
            "validation": len(self.y_val),
            "test": len(self.y_test),
        } | ({"notes": list(self.notes)} if self.notes else {})


def checked_split(
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
