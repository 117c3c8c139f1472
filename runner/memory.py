"""Where a run's host memory goes, phase by phase, and arrays TensorFlow reads without a copy.

A phase records the process's resident memory (VmRSS) when it starts and ends and its peak while it
runs: Linux keeps the peak (VmHWM) and resets it when 5 is written to /proc/self/clear_refs, which
each phase does at its start. The peak of whatever ran between two phases is kept apart, so the
largest of all is the process's peak since the recorder started. Without /proc (not Linux) every
peak is the process's peak so far (getrusage), and the rows say so.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_mb(key: str) -> float | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def give_back_freed() -> None:
    """Return the heap memory freed so far to the system (glibc's malloc_trim; elsewhere nothing):
    what throwaway models used (speed.py's timed candidates, XLA's compiler) then stops counting
    in the resident memory of the run that follows (measured: 156 MB of 1,270 after timing the
    quickstart's CNN four ways)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return


def resident_mb() -> float:
    """Resident memory now (VmRSS); without /proc, the peak so far is the best there is."""
    now = _status_mb("VmRSS")
    return now if now is not None else peak_mb()


def peak_mb() -> float:
    """Peak resident memory since the last reset_peak (VmHWM), else since the process started."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Start a new peak measurement (Linux); False where the peak cannot be reset."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@dataclass
class MemoryPhases:
    """Resident memory per named phase (a phase entered again, like each later epoch, adds to its row)."""

    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    outside_mb: float = 0.0  # the peak of what ran between phases
    per_phase: bool = True  # False: the peaks are the process's so far (no reset possible)

    def __post_init__(self) -> None:
        now = resident_mb()
        self.rows.setdefault("start", {"start_mb": now, "peak_mb": now, "end_mb": now})

    @classmethod
    def from_now(cls) -> MemoryPhases:
        """A recorder whose peak starts now: what the process held before (an earlier run of a
        sweep in this process) is not this one's."""
        return cls(per_phase=reset_peak())

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.outside_mb = max(self.outside_mb, peak_mb())
        start = resident_mb()
        reset_peak()
        try:
            yield
        finally:
            peak, end = peak_mb(), resident_mb()
            row = self.rows.setdefault(name, {"start_mb": start, "peak_mb": peak, "end_mb": end})
            row["peak_mb"], row["end_mb"] = max(row["peak_mb"], peak), end
            reset_peak()

    def peak(self) -> float:
        """The process's peak since the recorder started (every phase's and what ran between)."""
        return max([self.outside_mb, peak_mb(), *(r["peak_mb"] for r in self.rows.values())])

    def table(self) -> list[dict[str, Any]]:
        """One row per phase, in the order they first ran: start, peak and end in MB, and how much
        the phase's peak rose above where it started (what the phase itself needed at most)."""
        return [
            {
                "phase": name,
                "start_mb": round(row["start_mb"], 1),
                "peak_mb": round(row["peak_mb"], 1),
                "end_mb": round(row["end_mb"], 1),
                "rise_mb": round(row["peak_mb"] - row["start_mb"], 1),
            }
            for name, row in self.rows.items()
        ]


TF_ALIGNMENT = 64  # bytes: TensorFlow's CPU kernels require it of a tensor's buffer (EIGEN_MAX_ALIGN_BYTES)


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array whose buffer starts on a TF_ALIGNMENT boundary."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = np.empty(size + TF_ALIGNMENT, np.uint8)
    offset = -buffer.ctypes.data % TF_ALIGNMENT
    return buffer[offset : offset + size].view(dtype).reshape(shape)


def is_aligned(array: np.ndarray) -> bool:
    return bool(array.flags.c_contiguous and array.ctypes.data % TF_ALIGNMENT == 0)


def as_aligned(array: np.ndarray) -> np.ndarray:
    """`array` itself when TensorFlow can read its buffer in place, else an aligned copy."""
    if is_aligned(array) and array.flags.writeable:
        return array
    copy = aligned_empty(array.shape, array.dtype)
    copy[...] = array
    return copy


def shared_tensor(tf: Any, array: np.ndarray) -> Any:
    """A tensor on the CPU that reads `array`'s own buffer through DLPack, where `tf.constant`
    copies it twice (measured, 50 000 CIFAR-shaped images: +300 MB resident while the tensor lives,
    +150 MB after). Only for arrays nothing writes to afterwards (runner's data splits); an
    unaligned array is copied once, into an aligned one."""
    if array.size == 0 or array.dtype == np.bool_:
        return tf.constant(array)
    return tf.experimental.dlpack.from_dlpack(as_aligned(array).__dlpack__())
