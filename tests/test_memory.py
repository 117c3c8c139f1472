"""runner/memory.py: memory per phase, and data TensorFlow reads in place (no copy per epoch)."""

from __future__ import annotations

import numpy as np
import pytest

from runner import compat, memory
from runner.data import pipeline, shapes

MB = 2**20


@pytest.fixture
def tf():
    return compat.tensorflow()


def _touched(megabytes: int) -> np.ndarray:
    """An array whose every page is resident (np.ones writes each byte)."""
    return np.ones(megabytes * MB, np.uint8)


def test_each_phase_has_its_own_peak_and_the_run_has_the_largest():
    phases = memory.MemoryPhases.from_now()
    assert phases.per_phase  # Linux: the peak can be reset, so each phase measures its own
    with phases.phase("large"):
        block = _touched(200)
        del block
    with phases.phase("small"):
        block = _touched(20)
        del block
    large, small = phases.rows["large"], phases.rows["small"]
    assert large["peak_mb"] - large["start_mb"] >= 190  # the 200 MB it held at once
    assert large["end_mb"] - large["start_mb"] < 50  # ... and gave back
    # Without the reset at each phase's start, "small" would report the 200 MB block as its peak.
    assert small["peak_mb"] < large["peak_mb"] - 100
    assert phases.peak() >= large["peak_mb"]
    assert [row["phase"] for row in phases.table()] == ["start", "large", "small"]


def test_what_runs_between_phases_still_counts_in_the_peak():
    phases = memory.MemoryPhases.from_now()
    with phases.phase("before"):
        pass
    block = _touched(150)  # outside any phase
    del block
    with phases.phase("after"):
        pass
    assert phases.peak() >= phases.rows["before"]["end_mb"] + 140


def test_a_phase_entered_again_keeps_its_highest_peak():
    phases = memory.MemoryPhases.from_now()
    with phases.phase("epoch"):
        block = _touched(120)
        del block
    first = phases.rows["epoch"]["peak_mb"]
    with phases.phase("epoch"):
        pass
    assert phases.rows["epoch"]["peak_mb"] == first and len(phases.table()) == 2


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((1,), np.uint8), ((7, 5, 3), np.uint8), ((3, 28, 28, 1), np.float32), ((5,), np.int32)],
)
def test_aligned_empty_starts_on_tensorflows_boundary(shape, dtype):
    array = memory.aligned_empty(shape, dtype)
    assert array.shape == shape and array.dtype == dtype and memory.is_aligned(array)


def test_a_shared_tensor_reads_the_arrays_own_buffer(tf):
    array = memory.aligned_empty((4, 3), np.uint8)
    array[...] = 1
    tensor = memory.shared_tensor(tf, array)
    array[0, 0] = 9  # written after the tensor was made: the tensor sees it, so nothing was copied
    assert int(tensor[0, 0]) == 9 and tensor.dtype == tf.uint8


def test_an_unaligned_or_read_only_array_is_copied_once_with_equal_values(tf):
    base = np.arange(4 * 3 + 1, dtype=np.uint8)
    unaligned = base[1:].reshape(4, 3)  # one byte past an aligned start
    assert not memory.is_aligned(unaligned)
    assert np.array_equal(memory.shared_tensor(tf, unaligned).numpy(), unaligned)
    frozen = memory.aligned_empty((2, 2), np.int32)
    frozen[...] = 5
    frozen.flags.writeable = False
    assert np.array_equal(memory.shared_tensor(tf, frozen).numpy(), frozen)
    assert memory.shared_tensor(tf, np.zeros((0, 3), np.uint8)).shape == (0, 3)


def test_make_shapes_in_parts_equals_one_part(monkeypatch):
    n = 2 * shapes.SHAPES_CHUNK + 37  # two whole parts and a short one
    parts = shapes.make_shapes(n, seed=5)
    monkeypatch.setattr(shapes, "SHAPES_CHUNK", n)
    whole = shapes.make_shapes(n, seed=5)
    assert np.array_equal(parts[0], whole[0]) and np.array_equal(parts[1], whole[1])
    assert memory.is_aligned(parts[0])


@pytest.mark.slow
def test_an_epochs_pipeline_does_not_copy_the_split(tf):
    """The pipeline over 100 MB of images adds far less than 100 MB: no `tf.constant` copy (it made
    two) and no copy by tf.data's graph rewrites (one, kept after the iterator)."""
    x = memory.aligned_empty((34_000, 32, 32, 3), np.uint8)
    x[...] = 7
    y = np.zeros(len(x), np.int32)
    tf.constant(1)  # the runtime's own start is not the pipeline's
    memory.reset_peak()
    before = memory.resident_mb()
    for epoch in range(2):
        for _ in pipeline.train_pipeline(x, y, pipeline.TrainingBatches(256, 0, range(epoch, epoch + 1))):
            pass
    assert memory.peak_mb() - before < 50
