"""Augmentation: stateless draws keyed by (seed, epoch, batch), so a resumed epoch is augmented as the
uninterrupted one was; each op does what it says on small images checked by brute force."""

from __future__ import annotations

import numpy as np
import pytest

from runner import compat
from runner.data.augment import augment
from runner.data.pipeline import TrainingBatches, train_pipeline
from runner.spec import AugmentationSpec, spec_from_dict

tf = compat.tensorflow()
RNG = np.random.default_rng(3)
IMAGES = RNG.integers(0, 256, size=(64, 6, 5, 3), dtype=np.uint8)
LABELS = np.arange(64, dtype=np.int32) % 4


def run(spec: AugmentationSpec, key=(1, 0, 0), images=IMAGES) -> np.ndarray:
    return augment(tf.constant(images), tf.constant(key, tf.int64), spec).numpy()


def test_the_same_key_gives_the_same_images_and_another_key_others():
    spec = AugmentationSpec(horizontal_flip=True, pad_crop=2, brightness=0.2, contrast=0.3)
    assert np.array_equal(run(spec), run(spec))
    for other in ((2, 0, 0), (1, 1, 0), (1, 0, 1)):  # seed, epoch, batch
        assert not np.array_equal(run(spec), run(spec, other)), other


def test_a_flip_mirrors_some_images_and_leaves_the_others():
    out = run(AugmentationSpec(horizontal_flip=True))
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, IMAGES, strict=True)]
    kept = [np.array_equal(o, i) for o, i in zip(out, IMAGES, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_pad_and_crop_is_a_shift_with_zeros_filling_in():
    out = run(AugmentationSpec(pad_crop=2))
    padded = np.pad(IMAGES, [(0, 0), (2, 2), (2, 2), (0, 0)])
    shifts = set()
    for o, p in zip(out, padded, strict=True):
        found = [
            (dy, dx) for dy in range(5) for dx in range(5) if np.array_equal(o, p[dy : dy + 6, dx : dx + 5])
        ]
        assert found, "not a window of the padded image"
        shifts.add(found[0])
    assert len(shifts) > 5  # offsets are drawn per image


def test_flip_then_pad_and_crop_is_a_window_of_the_padded_image_or_of_its_mirror():
    """The two moves are one gather of pixels: each output is what flipping, then padding and
    cropping, would give, with the flip drawn as for a flip alone."""
    out = run(AugmentationSpec(horizontal_flip=True, pad_crop=2))
    flipped = run(AugmentationSpec(horizontal_flip=True))  # the same flip draws (stream 0)
    for o, f in zip(out, flipped, strict=True):
        p = np.pad(f, [(2, 2), (2, 2), (0, 0)])
        assert any(np.array_equal(o, p[dy : dy + 6, dx : dx + 5]) for dy in range(5) for dx in range(5))
    assert len({o.tobytes() for o in out}) > 32


def test_brightness_and_contrast_stay_uint8_and_change_the_images():
    out = run(AugmentationSpec(brightness=0.5, contrast=0.5))
    assert out.dtype == np.uint8 and out.shape == IMAGES.shape
    assert not np.array_equal(out, IMAGES)
    assert out.min() == 0 and out.max() == 255  # clipped, not wrapped


def test_nothing_asked_is_nothing_done():
    spec = AugmentationSpec()
    assert spec.describe() == []
    plain = train_pipeline(IMAGES, LABELS, TrainingBatches(16, 0, range(0, 1)))
    same = train_pipeline(IMAGES, LABELS, TrainingBatches(16, 0, range(0, 1), augmentation=spec))
    for (a, _), (b, _) in zip(plain, same, strict=True):
        assert np.array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("skip", [1, 3])
def test_a_resumed_epoch_sees_the_same_augmented_batches(skip):
    spec = AugmentationSpec(horizontal_flip=True, pad_crop=1, translate=0.2, brightness=0.1, contrast=0.1)
    whole = [
        b[0].numpy()
        for b in train_pipeline(IMAGES, LABELS, TrainingBatches(16, 5, range(1, 2), augmentation=spec))
    ]
    resumed = [
        b[0].numpy() for b in train_pipeline(IMAGES, LABELS, TrainingBatches(16, 5, range(1, 2), skip, spec))
    ]
    assert len(resumed) == len(whole) - skip
    assert all(np.array_equal(a, b) for a, b in zip(resumed, whole[skip:], strict=True))
    plain = [b[0].numpy() for b in train_pipeline(IMAGES, LABELS, TrainingBatches(16, 5, range(1, 2)))]
    assert not any(np.array_equal(a, b) for a, b in zip(whole, plain, strict=True))


def test_the_spec_says_what_runs_and_refuses_what_cannot():
    spec = spec_from_dict({"name": "a", "data": {"augmentation": {"horizontal_flip": True, "pad_crop": 4}}})
    assert spec.data.augmentation.describe() == ["horizontal flip", "pad 4 and random crop"]
    with pytest.raises(Exception, match="translate"):
        spec_from_dict({"name": "a", "data": {"augmentation": {"translate": 0.7}}})
