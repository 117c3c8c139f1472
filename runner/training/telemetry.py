"""What training observes and how it is asked to stop: per-epoch records, the loss-scale history, the
whole run's log (which checkpoints carry), where a `fit` stands, and the stop request a signal sets.

Plain Python: no TensorFlow, so the report, a resume and the tests read it without loading Keras.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from runner.training.schedules import EarlyStoppingState, PlateauState


class EpochRecord(BaseModel):
    """One epoch's metrics, as metrics.jsonl and report.json's `metrics.epochs` hold them (None: not
    measured, or not finite)."""

    model_config = ConfigDict(extra="forbid")

    epoch: int
    loss: float | None = None
    accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    seconds: float = 0.0
    images_per_second: float | None = None
    loss_scale: float | None = None
    learning_rate: float | None = None  # the optimizer's rate at the epoch's last step

    def as_dict(self) -> dict[str, Any]:
        return {k: _finite_or_none(v) for k, v in self.model_dump().items()}


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class LossScaleTracker:
    """The loss scale over training, from one observation per Keras call (step, scale, applied steps).

    The history is stored as change points (step, scale), which is exact and small: the scale only
    moves on a skipped step or after `growth_interval` finite ones. Skipped steps are counted exactly
    from the optimizer's own counter (a LossScaleOptimizer applies only finite steps). Past
    `max_points` the history is thinned; counts stay exact. With steps_per_execution > 1 Keras calls
    once per execution: the scale (history, min) is seen at those boundaries, the counts stay exact.
    """

    initial: float
    max_points: int = 10_000
    history: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    applied: int = 0
    min: float = math.inf
    consecutive_skipped: int = 0
    thinned: bool = False

    def __post_init__(self) -> None:
        self.history = [(0, self.initial)]
        self.min = self.initial

    @property
    def skipped(self) -> int:
        return self.steps - self.applied

    @property
    def current(self) -> float:
        return self.history[-1][1]

    def observe(self, step: int, scale: float, applied: int) -> None:
        new_steps, new_applied = step - self.steps, applied - self.applied
        # Within one call of several steps their order is unknown: a call that applied any step ends
        # the run of skipped ones.
        self.consecutive_skipped = self.consecutive_skipped + new_steps if new_applied == 0 else 0
        self.steps, self.applied = step, applied
        self.min = min(self.min, scale)
        if scale != self.current:
            self.history.append((step, scale))
            if len(self.history) > self.max_points:
                self.history = self.history[:1] + self.history[1:-1:2] + self.history[-1:]
                self.thinned = True

    def scale_at(self, step: int) -> float:
        """The scale after `step` steps, from the change points (exact unless the history was thinned)."""
        index = bisect.bisect_right(self.history, (step, math.inf)) - 1
        return self.history[max(index, 0)][1]

    def collapse(self, max_consecutive: int) -> str | None:
        """A diagnosis if the scale has collapsed, else None: below 1 (Keras 3 halves without bound), or
        `max_consecutive` skipped steps in a row (Keras 2 stops halving at 1)."""
        if self.current >= 1 and self.consecutive_skipped < max_consecutive:
            return None
        return (
            f"loss scale collapsed to {self.current:g} after {self.consecutive_skipped} consecutive "
            f"skipped steps (step {self.steps}): the gradients are non-finite even unscaled (NaN or "
            "inf in the data, the loss or the model), so loss scaling cannot help"
        )

    def summary(self) -> dict[str, Any]:
        return {
            "initial": self.initial,
            "final": self.current,
            "min": self.min,
            "overflow_steps": self.skipped,
            "steps": self.steps,
            "history": [[step, scale] for step, scale in self.history],
            "history_thinned": self.thinned,
        }


@dataclass
class TrainingLog:
    """What Telemetry saw: per-epoch records, throughput, loss-scale history, divergence. Checkpoints
    carry it (`to_state`), so a resumed run reports as if it had never stopped."""

    epochs: list[EpochRecord] = field(default_factory=list)
    steps: int = 0
    timed_images: int = 0
    timed_seconds: float = 0.0
    loss_scale: LossScaleTracker | None = None  # under a LossScaleOptimizer only
    diverged_at_step: int | None = None
    divergence: str | None = None
    # Whether this process has run a training step yet (the first call traces): not saved.
    traced: bool = False
    # What training compiled with, and why: a resume keeps it, so Keras calls back at the same steps.
    steps_per_execution: tuple[int, str] | None = None
    # What watches the epochs (schedules.py): checkpointed, so a resume rates and stops the same.
    plateau: PlateauState = field(default_factory=PlateauState)
    early_stopping: EarlyStoppingState = field(default_factory=EarlyStoppingState)

    @property
    def images_per_second(self) -> float | None:
        return self.timed_images / self.timed_seconds if self.timed_seconds > 0 else None

    def to_state(self) -> dict[str, Any]:
        tracker = self.loss_scale
        return {
            "epochs": [e.as_dict() for e in self.epochs],
            "steps": self.steps,
            "timed_images": self.timed_images,
            "timed_seconds": self.timed_seconds,
            "steps_per_execution": self.steps_per_execution,
            "loss_scale": None if tracker is None else {**tracker.__dict__, "history": tracker.history},
            "plateau": self.plateau.to_state(),
            "early_stopping": self.early_stopping.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TrainingLog:
        log = cls(
            epochs=[EpochRecord(**e) for e in state["epochs"]],
            steps=state["steps"],
            timed_images=state["timed_images"],
            timed_seconds=state["timed_seconds"],
            steps_per_execution=tuple(state["steps_per_execution"])
            if state.get("steps_per_execution")
            else None,
            plateau=PlateauState(**state.get("plateau", {})),
            early_stopping=EarlyStoppingState(**state.get("early_stopping", {})),
        )
        if state.get("loss_scale"):
            saved = state["loss_scale"]
            tracker = LossScaleTracker(saved["initial"])
            tracker.__dict__.update({**saved, "history": [tuple(p) for p in saved["history"]]})
            log.loss_scale = tracker
        return log


class StopTraining(Exception):
    """Raised from a callback to leave `fit` at once, after a checkpoint: a SIGINT or SIGTERM."""


@dataclass
class StopRequest:
    """Set by a signal handler, or planned `after_steps` (runner.testing's resume check); the
    checkpoint callback acts on it after the current step (an execution's last)."""

    signal: str | None = None
    after_steps: int | None = None
    started: bool = False  # training has begun: from now a stop saves a checkpoint first

    def due(self, steps: int) -> bool:
        """Whether training stops now, `steps` steps in: a planned stop becomes a request here."""
        if self.signal is None and self.after_steps is not None and steps >= self.after_steps:
            self.signal = f"a stop planned after {self.after_steps} steps"
        return self.signal is not None


@dataclass(frozen=True)
class Segment:
    """One `fit` call: epochs [first, stop), the first of which starts `skip` steps in (a resume).
    `steps` is an epoch's length: Keras names an execution's last step past it when the epoch's
    steps are not a multiple of steps_per_execution."""

    first: int
    stop: int
    skip: int = 0
    steps: int | None = None


class Cursor:
    """Where a callback stands in the run: epoch in progress and steps done in it, from Keras' calls."""

    def __init__(self, segment: Segment, log: TrainingLog):
        self.segment, self.log = segment, log
        self.epoch, self.step, self._base, self._steps_before = segment.first, segment.skip, 0, 0

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._base = self.segment.skip if epoch == self.segment.first else 0
        self.step, self._steps_before = self._base, self.log.steps

    def end_batch(self, batch: int) -> None:
        # With steps_per_execution > 1 Keras calls once per execution, `batch` being its last step
        # (or where it would be: an epoch's last execution may run fewer steps).
        done = batch + 1
        if self.segment.steps is not None:
            done = min(done, self.segment.steps - self._base)
        self.step = self._base + done
        self.log.steps = self._steps_before + done


@contextlib.contextmanager
def stop_on_signals(request: StopRequest) -> Iterator[None]:
    """SIGINT or SIGTERM asks training to stop after the current step (the checkpoint callback
    saves and leaves `fit`); a second one stops at once (KeyboardInterrupt). Before training has
    started (`request.started`: the model being built, preflighted, timed) there is nothing to save:
    the first one stops at once, whatever is being built (a scheduler's SIGKILL follows within
    ~30 s)."""

    def handler(signum: int, frame: Any) -> None:
        if request.signal is not None or not request.started:
            request.signal = request.signal or signal.Signals(signum).name
            raise KeyboardInterrupt
        request.signal = signal.Signals(signum).name

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave the signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# A signal's Python handler runs only when the main thread is back in Python: a TensorFlow call
# (a timed execution of a large model, a graph's compile) can hold it for tens of seconds, while a
# scheduler's SIGKILL follows SIGTERM by about 30. While there is nothing to save (a run before its
# training starts, `runner check`) the CLI also watches for signals from a thread and, when the main
# thread has not moved on within HARD_STOP_S of one, ends the process itself (exit 130). A sweep's
# or a launch's own process never sets it: it waits for its children to checkpoint.
HARD_STOP_S = 6.0
HARD_STOP_MESSAGE = (
    f"\nerror: interrupted before training started; TensorFlow did not return within {HARD_STOP_S:.0f} s, "
    "so the process was stopped there (nothing had trained)\n"
).encode()
NOTHING_TO_SAVE = threading.Event()


@contextlib.contextmanager
def nothing_to_save() -> Iterator[None]:
    """Mark the block as one a signal may end at once (see HARD_STOP_S); training clears it."""
    NOTHING_TO_SAVE.set()
    try:
        yield
    finally:
        NOTHING_TO_SAVE.clear()


def watch_signals() -> None:
    """For the CLI's process (never a library caller's, whom it would end): a thread told of every
    signal through Python's wakeup fd, the moment it arrives."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        return
    terminal = os.dup(2)  # the real stderr: a run sends fd 2 to its tensorflow.log
    thread = threading.Thread(
        target=_watch, args=(read_end, terminal), name="runner-signal-watch", daemon=True
    )
    thread.start()


def _watch(read_end: int, terminal: int) -> None:
    wanted = {int(signal.SIGINT), int(signal.SIGTERM)}
    while True:
        received = os.read(read_end, 64)
        if not NOTHING_TO_SAVE.is_set() or not wanted & set(received):
            continue
        deadline = time.monotonic() + HARD_STOP_S
        while NOTHING_TO_SAVE.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)  # the main thread handles it, or training starts: either clears it
        if NOTHING_TO_SAVE.is_set():
            os.write(terminal, HARD_STOP_MESSAGE)
            os._exit(130)
