"""Training-image augmentation in the input pipeline: flips, pad-and-crop, translation, brightness,
contrast on a batch of uint8 images, with stateless random ops keyed by (seed, epoch, batch). The
same key gives the same images, so a resumed run (which sees the same batches, data.py) sees the
same augmented images as the uninterrupted one. Images stay uint8 in and out: the model's input is
what it is for unaugmented data.
"""

from __future__ import annotations

from typing import Any

from runner import compat
from runner.spec import AugmentationSpec


def _seed(tf: Any, key: Any, stream: int) -> Any:
    """A stateless seed for one kind of draw on one batch: (seed and epoch, batch and stream)."""
    return tf.stack([key[0] * 1_000_003 + key[1], key[2] * 16 + stream])


def _shifted(tf: Any, images: Any, pixels: Any, key: Any) -> Any:
    """Each image zero-padded by `pixels` (per axis) and cropped back at a random offset."""
    height, width = images.shape[1], images.shape[2]
    py, px = pixels
    padded = tf.pad(images, [[0, 0], [py, py], [px, px], [0, 0]])
    count = tf.shape(images)[0]
    oy = tf.random.stateless_uniform([count], _seed(tf, key, 1), 0, 2 * py + 1, dtype=tf.int32)
    ox = tf.random.stateless_uniform([count], _seed(tf, key, 2), 0, 2 * px + 1, dtype=tf.int32)
    return tf.map_fn(
        lambda a: tf.slice(a[0], tf.stack([a[1], a[2], 0]), [height, width, -1]),
        (padded, oy, ox),
        fn_output_signature=padded.dtype,
    )


def augment(images: Any, key: Any, spec: AugmentationSpec) -> Any:
    """`images` (a uint8 NHWC batch) changed as `spec` says, by draws keyed by `key` = (seed, epoch,
    batch) (int64)."""
    tf = compat.tensorflow()
    x = tf.cast(images, tf.float32)
    count = tf.shape(x)[0]

    def uniform(stream: int, low: float, high: float) -> Any:
        return tf.random.stateless_uniform([count], _seed(tf, key, stream), low, high)[:, None, None, None]

    if spec.horizontal_flip:
        x = tf.where(uniform(0, 0.0, 1.0) < 0.5, tf.reverse(x, axis=[2]), x)
    pad_y = max(spec.pad_crop, round(spec.translate * int(images.shape[1])))
    pad_x = max(spec.pad_crop, round(spec.translate * int(images.shape[2])))
    if pad_y or pad_x:
        x = _shifted(tf, x, (pad_y, pad_x), key)
    if spec.brightness:
        x = x + 255.0 * uniform(3, -spec.brightness, spec.brightness)
    if spec.contrast:
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        x = (x - mean) * uniform(4, 1.0 - spec.contrast, 1.0 + spec.contrast) + mean
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
