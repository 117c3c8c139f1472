"""tf.data pipelines of arrays and of batch indices. A training epoch's order is a stateless shuffle
seeded by (shuffle_seed, epoch), so a run resumed mid-epoch sees the very batches the uninterrupted
run saw; augmentation draws are keyed the same way. TensorFlow is imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.memory import shared_tensor
from runner.spec import AugmentationSpec


def _gathered(tf: Any, indices: Any, x: np.ndarray, y: np.ndarray) -> Any:
    """Batches of indices → (uint8 images, int32 labels) batches, one gather per batch (not one slice
    per image: that keeps the input pipeline far ahead of a 2-core CPU's training step)."""
    images, labels = shared_tensor(tf, x), shared_tensor(tf, y)
    batches = indices.map(
        lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return lean(tf, batches.prefetch(tf.data.AUTOTUNE))


def lean(tf: Any, dataset: Any) -> Any:
    """An array pipeline's options (measured on 2 cores, 50 000 CIFAR-shaped images, seed CNN):
    - no default graph rewrites: they serialize the pipeline with the arrays it captures, a copy of
      the whole split that outlives the iterator (+150 MB), for rewrites that change nothing here
      (the map is parallel and prefetched already);
    - one thread per op (a batch's gather): the training step's kernels keep the cores (+4 % images/s)."""
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def pipeline(x: np.ndarray, y: np.ndarray, batch_size: int) -> Any:
    """Validation and test batches, in order."""
    from runner import compat

    tf = compat.tensorflow()
    return _gathered(tf, tf.data.Dataset.range(len(x)).batch(batch_size), x, y)


@dataclass(frozen=True)
class TrainingBatches:
    """Which training batches a run reads: `epochs`, each in its own order, then the next one's.

    The order of epoch e is a stateless shuffle seeded by (shuffle_seed, e): a pure function of the
    spec, so a run resumed at epoch e, step s (`skip` = s batches of epoch e already done) sees the
    very batches the uninterrupted run saw. Batches never straddle two epochs. `augmentation`'s
    draws are keyed by (shuffle_seed, epoch, batch), so resumed batches are augmented alike.
    """

    batch_size: int
    shuffle_seed: int
    epochs: range
    skip: int = 0
    augmentation: AugmentationSpec | None = None


def train_pipeline(x: np.ndarray, y: np.ndarray, order: TrainingBatches) -> Any:
    """The training batches `order` names, of images `x` and labels `y` held in memory."""
    from runner import compat

    tf = compat.tensorflow()
    images, labels = shared_tensor(tf, x), shared_tensor(tf, y)  # no copy of the data per epoch
    keyed = epoch_indices(tf, len(x), order)
    batches = loaded(
        tf, keyed, lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)), order.augmentation
    )
    return lean(tf, batches)


def epoch_indices(tf: Any, n: int, order: TrainingBatches) -> Any:
    """Batches of int64 indices into a split of `n` for `order.epochs`, `order.skip` batches of the first
    left out, each with its key (shuffle_seed, epoch, batch): the order of epoch e is the stateless
    shuffle seeded by (shuffle_seed, e), whatever the source."""
    batch_size, shuffle_seed = order.batch_size, order.shuffle_seed

    def epoch_batches(epoch: Any) -> Any:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(shuffle_seed, tf.int64), epoch])
        )
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate()
        return batches.map(lambda i, idx: (idx, tf.stack([tf.constant(shuffle_seed, tf.int64), epoch, i])))

    return (
        tf.data.Dataset.range(order.epochs.start, order.epochs.stop).flat_map(epoch_batches).skip(order.skip)
    )


def loaded(tf: Any, keyed: Any, load: Any, augmentation: AugmentationSpec | None) -> Any:
    """(indices, key) batches → (uint8 images, labels) batches by `load(indices)`, in a parallel map,
    augmented by draws keyed by `key` when `augmentation` asks for anything."""
    if augmentation is None or not augmentation.describe():
        batches = keyed.map(lambda idx, key: load(idx), num_parallel_calls=tf.data.AUTOTUNE)
        return batches.prefetch(tf.data.AUTOTUNE)
    from runner.data.augment import augment

    def batch(idx: Any, key: Any) -> Any:
        images, labels = load(idx)
        return augment(images, key, augmentation), labels

    return keyed.map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
