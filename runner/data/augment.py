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

STREAMS = 5  # flip, crop row, crop column, brightness, contrast: one kind of draw each


def _seeds(tf: Any, key: Any) -> Any:
    """(STREAMS, 2): the stateless seed of each kind of draw on one batch, (seed and epoch, batch and
    stream); made once per batch, since every op in the input pipeline costs its own dispatch."""
    batch_streams = key[2] * 16 + tf.range(STREAMS, dtype=tf.int64)
    return tf.stack([tf.fill([STREAMS], key[0] * 1_000_003 + key[1]), batch_streams], axis=1)


def _moved(tf: Any, images: Any, spec: AugmentationSpec, seeds: Any) -> Any:
    """The flip, then the zero-pad and random crop, as one gather of the uint8 pixels: output pixel
    (b, i, j) is input pixel (b, rows[b, i], cols[b, j]), or a zero where that lies in the padding.
    Moves only, so the pixels are exactly those of flipping, padding and cropping in turn, at a
    fraction of the cost and with no padded copy of the batch (P7, docs/performance.md)."""
    height, width, channels = (int(d) for d in images.shape[1:])
    py = max(spec.pad_crop, round(spec.translate * height))
    px = max(spec.pad_crop, round(spec.translate * width))
    count = tf.shape(images)[0]

    def shifts(stream: int, pad: int) -> Any:  # (batch, 1): the crop's corner in the padded image, less pad
        drawn = tf.random.stateless_uniform([count], seeds[stream], 0, 2 * pad + 1, dtype=tf.int32)
        return drawn[:, None] - pad

    rows = tf.range(height)[None, :] + shifts(1, py)  # (batch, height)
    cols = tf.range(width)[None, :] + shifts(2, px)  # (batch, width)
    if spec.horizontal_flip:  # flipped first: column c of the flipped image is column width - 1 - c
        flipped = tf.random.stateless_uniform([count], seeds[0], 0.0, 1.0) < 0.5
        cols = tf.where(flipped[:, None], width - 1 - cols, cols)
    zero = count * height * width  # the index of a zero pixel put after the batch's pixels
    row_at = tf.where((rows >= 0) & (rows < height), (tf.range(count)[:, None] * height + rows) * width, zero)
    col_at = tf.where((cols >= 0) & (cols < width), cols, zero)
    flat = tf.minimum(row_at[:, :, None] + col_at[:, None, :], zero)  # (batch, height, width)
    pixels = tf.concat([tf.reshape(images, [-1, channels]), tf.zeros([1, channels], images.dtype)], 0)
    return tf.gather(pixels, flat)  # (batch, height, width, channels)


def augment(images: Any, key: Any, spec: AugmentationSpec) -> Any:
    """`images` (a uint8 NHWC batch) changed as `spec` says, by draws keyed by `key` = (seed, epoch,
    batch) (int64)."""
    tf = compat.tensorflow()
    seeds = _seeds(tf, key)
    if spec.horizontal_flip or spec.pad_crop or spec.translate:
        images = _moved(tf, images, spec, seeds)
    if not (spec.brightness or spec.contrast):
        return images  # moved pixels are still whole uint8 values: nothing to round or clip
    x = tf.cast(images, tf.float32)
    count = tf.shape(x)[0]

    def uniform(stream: int, low: float, high: float) -> Any:
        return tf.random.stateless_uniform([count], seeds[stream], low, high)[:, None, None, None]

    if spec.brightness:
        x = x + 255.0 * uniform(3, -spec.brightness, spec.brightness)
    if spec.contrast:
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        x = (x - mean) * uniform(4, 1.0 - spec.contrast, 1.0 + spec.contrast) + mean
    # One ClipByValue pass (tf.clip_by_value makes two: minimum, then maximum; the same values).
    return tf.cast(tf.raw_ops.ClipByValue(t=tf.round(x), clip_value_min=0.0, clip_value_max=255.0), tf.uint8)
