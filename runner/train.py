"""compile + fit: the optimizer from the spec, and the callbacks that watch training.

`Telemetry` measures throughput (without the first step's tracing), reads the loss scale, and stops
on a non-finite loss. `RichProgress` replaces Keras' console output. Both do O(1) Python work per
step and read tensors from the device at most a few times a second (the loss scale once per step
under mixed_float16: one scalar, needed to count skipped steps faithfully).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import compat
from runner.spec import TrainingSpec

UI_INTERVAL_S = 0.2  # refresh the progress bar's metrics at most 5 times a second


def make_optimizer(training: TrainingSpec) -> Any:
    optimizers = compat.keras().optimizers
    opt = training.optimizer
    lr = training.learning_rate
    if opt.kind == "adam":
        return optimizers.Adam(lr, beta_1=opt.beta_1, beta_2=opt.beta_2, epsilon=opt.epsilon)
    if opt.kind == "adamw":
        return optimizers.AdamW(
            lr,
            weight_decay=opt.weight_decay,
            beta_1=opt.beta_1,
            beta_2=opt.beta_2,
            epsilon=opt.epsilon,
        )
    if opt.kind == "sgd":
        return optimizers.SGD(lr, momentum=opt.momentum, nesterov=opt.nesterov)
    return optimizers.RMSprop(lr, rho=opt.rho, momentum=opt.momentum, epsilon=opt.epsilon)


def compile_model(model: Any, optimizer: Any, training: TrainingSpec, steps_per_execution: int = 1) -> None:
    """Compile with the spec's settings; `steps_per_execution` is the resolved one (see below)."""
    if training.steps_per_execution != "auto":
        steps_per_execution = training.steps_per_execution
    compat.compile_model(
        model,
        optimizer,
        loss=compat.keras().losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
        jit_compile=training.jit_compile,
    )


AUTO_EXECUTION_S = 1.0  # "auto": about this much time per execution, timed on the eager probe step
AUTO_MAX_STEPS = 32  # measured: float32 gains nothing past 32 here (1.47x the tutorial at 32 and 128)


def resolve_steps_per_execution(
    setting: int | str, probe_seconds: float, steps_per_epoch: int
) -> tuple[int, str]:
    """The steps per execution to compile with, and why. "auto" fits as many steps as take about
    AUTO_EXECUTION_S by the preflight's eager probe step (slower than a compiled one, so the real
    execution is shorter): small models gain the fewer round trips, large ones keep a responsive
    progress bar and Ctrl-C. It depends on a timing, so where the loss-scale history must match
    step for step between runs, set a number (the model's numbers do not depend on it)."""
    if setting != "auto":
        return int(setting), "set by the spec"
    fit = int(AUTO_EXECUTION_S / max(probe_seconds, 1e-6))
    # A power of two: the same model on the same machine gets the same number run after run.
    chosen = max(1, min(AUTO_MAX_STEPS, steps_per_epoch, 2 ** max(fit, 1).bit_length() // 2))
    return chosen, (
        f"auto: the probe step took {probe_seconds * 1000:.0f} ms, so {chosen} "
        f"step{'s' if chosen > 1 else ''} per call (at most {AUTO_MAX_STEPS}, about {AUTO_EXECUTION_S:g} s)"
    )


@dataclass
class EpochRecord:
    epoch: int
    loss: float | None = None
    accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    seconds: float = 0.0
    images_per_second: float | None = None
    loss_scale: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: _finite_or_none(v) for k, v in self.__dict__.items()}


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
    """Set by a signal handler; the checkpoint callback acts on it after the current step."""

    signal: str | None = None


@dataclass(frozen=True)
class Segment:
    """One `fit` call: epochs [first, stop), the first of which starts `skip` steps in (a resume).
    `steps` is an epoch's length: Keras names an execution's last step past it when the epoch's
    steps are not a multiple of steps_per_execution."""

    first: int
    stop: int
    skip: int = 0
    steps: int | None = None


class _Cursor:
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


def make_telemetry_callback(
    log: TrainingLog,
    batch_size: int,
    train_images: int,
    segment: Segment,
    metrics_path: Path | None,
    max_consecutive_skipped: int = 50,
) -> Any:
    """A Keras callback filling `log` (and appending each epoch to metrics.jsonl)."""
    keras: Any = compat.keras()

    def images(step_from: int, step_to: int) -> int:
        return min(step_to * batch_size, train_images) - min(step_from * batch_size, train_images)

    class _Telemetry(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.cursor = _Cursor(segment, log)
            self._scaled = compat.is_loss_scale_optimizer(self.model.optimizer)
            if self._scaled and log.loss_scale is None:
                log.loss_scale = LossScaleTracker(float(self.model.optimizer.initial_scale))

        def on_epoch_begin(self, epoch, logs=None):
            self.cursor.begin_epoch(epoch)
            self._epoch_start = self._last_check = time.perf_counter()
            # Timing starts after the first training call of the process, which traces and compiles.
            self._mark = (self._epoch_start, self.cursor.step) if log.traced else None

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            self.cursor.end_batch(batch)
            if self._mark is None:
                self._mark, log.traced = (now, self.cursor.step), True
            self._train_end = now
            tracker = log.loss_scale
            if self._scaled and tracker is not None:
                opt = self.model.optimizer
                scale = compat.current_loss_scale(opt)
                assert scale is not None  # a LossScaleOptimizer has one
                tracker.observe(log.steps, scale, compat.applied_steps(opt))
                diagnosis = tracker.collapse(max_consecutive_skipped)
                if diagnosis is not None:
                    self._diverge(diagnosis)
            if now - self._last_check >= UI_INTERVAL_S:
                self._last_check = now
                self._guard(logs)

        def _guard(self, logs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self._diverge(f"non-finite loss ({float(loss)}) at step {log.steps}")

        def _diverge(self, diagnosis):
            if log.diverged_at_step is None:
                log.diverged_at_step, log.divergence = log.steps, diagnosis
            self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self._guard(logs)
            if log.diverged_at_step is not None:
                return  # a partial epoch's means would mislead: the report names the last good one
            started_at, started_step = self._mark or (self._train_end, self.cursor.step)
            timed_images = images(started_step, self.cursor.step)
            timed_seconds = self._train_end - started_at
            if timed_seconds > 0 and timed_images > 0:
                log.timed_images += timed_images
                log.timed_seconds += timed_seconds
            record = EpochRecord(
                epoch=epoch + 1,
                loss=_float(logs.get("loss")),
                accuracy=_float(logs.get("accuracy")),
                val_loss=_float(logs.get("val_loss")),
                val_accuracy=_float(logs.get("val_accuracy")),
                seconds=round(time.perf_counter() - self._epoch_start, 3),
                images_per_second=round(timed_images / timed_seconds, 1)
                if timed_seconds > 0 and timed_images > 0
                else None,
                loss_scale=compat.current_loss_scale(self.model.optimizer),
            )
            log.epochs.append(record)
            if metrics_path is not None:
                _append_line(metrics_path, json.dumps(record.as_dict()))

    return _Telemetry()


def make_checkpoint_callback(
    run_dir: Path,
    log: TrainingLog,
    segment: Segment,
    stop: StopRequest,
    every_steps: int | None,
    restore_metrics: Any = None,
) -> Any:
    """Checkpoints at each epoch's end and every `every_steps` steps; on a stop request, one after the
    current step and out of `fit`. `restore_metrics` (a resume in mid-epoch) puts back the running
    means Keras resets when the epoch begins."""
    from runner import checkpoints

    keras: Any = compat.keras()

    class _Checkpoints(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.cursor = _Cursor(segment, log)
            self._saved_at = log.steps // every_steps if every_steps else 0

        def on_epoch_begin(self, epoch, logs=None):
            self.cursor.begin_epoch(epoch)
            if restore_metrics is not None and epoch == segment.first and segment.skip:
                restore_metrics(self.model)

        def _save(self, epoch, step):
            position = checkpoints.Position(epoch, step, log.steps)
            return checkpoints.save(run_dir, self.model, position, log.to_state())

        def on_train_batch_end(self, batch, logs=None):
            self.cursor.end_batch(batch)
            if stop.signal is not None:
                name = self._save(self.cursor.epoch, self.cursor.step)
                raise StopTraining(
                    f"{stop.signal} at epoch {self.cursor.epoch + 1}, step {self.cursor.step}: "
                    f"checkpoint {name}"
                )
            # Keras calls once per execution (steps_per_execution steps): save on crossing a multiple.
            if every_steps and log.steps // every_steps > self._saved_at:
                self._saved_at = log.steps // every_steps
                self._save(self.cursor.epoch, self.cursor.step)

        def on_epoch_end(self, epoch, logs=None):
            if log.diverged_at_step is not None:
                found = checkpoints.latest(run_dir)
                if found is not None:
                    checkpoints.pin(run_dir, found[0])
                return
            self._save(epoch + 1, 0)

    return _Checkpoints()


def make_tensorboard_callbacks(log: TrainingLog, log_dir: Path) -> list[Any]:
    """TensorBoard event files in Keras' layout (train/ and validation/: epoch_loss, epoch_accuracy,
    epoch_learning_rate) plus precision/loss_scale for every step, all written at each epoch's end:
    no per-step hook, so no per-step cost (Keras' own TensorBoard callback has one)."""
    keras: Any = compat.keras()
    tf = compat.tensorflow()

    class _EpochSummaries(keras.callbacks.Callback):
        """Used for every `fit` of a run (one per epoch): one event file per writer; `close` at the end."""

        def __init__(self):
            super().__init__()
            self._writers = {
                n: tf.summary.create_file_writer(str(log_dir / n)) for n in ("train", "validation")
            }
            self._scale_writer = tf.summary.create_file_writer(str(log_dir / "precision"))
            self._written = log.steps  # a resumed run wrote the steps before it

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            train_values = {k: v for k, v in logs.items() if not k.startswith("val_")}
            train_values["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())
            values = {
                "train": train_values,
                "validation": {k[4:]: v for k, v in logs.items() if k.startswith("val_")},
            }
            for name, scalars in values.items():
                with self._writers[name].as_default():
                    for key, value in scalars.items():
                        tf.summary.scalar(f"epoch_{key}", float(value), step=epoch)
                self._writers[name].flush()
            self._write_loss_scale()

        def _write_loss_scale(self):
            tracker = log.loss_scale
            if tracker is None:
                return
            with self._scale_writer.as_default():
                for step in range(self._written + 1, tracker.steps + 1):
                    tf.summary.scalar("loss_scale", tracker.scale_at(step), step=step)
            self._scale_writer.flush()
            self._written = tracker.steps

        def close(self):
            for writer in (*self._writers.values(), self._scale_writer):
                writer.close()

    return [_EpochSummaries()]


def time_steps(model: Any, x: Any, y: Any, steps: int) -> float:
    """Median seconds of one training step on (x, y), after two untimed calls that trace and warm up."""
    for _ in range(2):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _append_line(path: Path, line: str) -> None:
    """One whole line per write, flushed: a reader never sees half a record but maybe a torn tail."""
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def make_progress_callback(
    progress: Any, epochs: int, steps_per_epoch: int, batch_size: int, segment: Segment
) -> Any:
    """A Keras callback driving a rich Progress: one bar per epoch, with loss, accuracy, images/s."""
    keras: Any = compat.keras()

    class _RichProgress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._base = segment.skip if epoch == segment.first else 0
            self._task = progress.add_task(
                f"epoch {epoch + 1}/{epochs}", total=steps_per_epoch, completed=self._base, metrics=""
            )
            self._start = time.perf_counter()
            self._last = 0.0
            self._done = 0

        def on_train_batch_end(self, batch, logs=None):
            self._done = min(batch + 1, steps_per_epoch - self._base)  # see Segment
            now = time.perf_counter()
            completed = self._base + self._done
            if now - self._last < UI_INTERVAL_S:
                progress.update(self._task, completed=completed)
                return
            self._last = now
            metrics = _describe(logs, self._done, batch_size, now - self._start)
            progress.update(self._task, completed=completed, metrics=metrics)

        def on_epoch_end(self, epoch, logs=None):
            elapsed = time.perf_counter() - self._start
            metrics = _describe(logs, self._done, batch_size, elapsed)
            progress.update(self._task, completed=steps_per_epoch, metrics=metrics)

    return _RichProgress()


@contextlib.contextmanager
def stop_on_signals(request: StopRequest) -> Iterator[None]:
    """SIGINT or SIGTERM asks training to stop after the current step (the checkpoint callback
    saves and leaves `fit`); a second one stops at once (KeyboardInterrupt)."""

    def handler(signum: int, frame: Any) -> None:
        if request.signal is not None:
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


def _describe(logs: dict | None, steps: int, batch_size: int, elapsed: float) -> str:
    logs = logs or {}
    parts = []
    for key, label in (
        ("loss", "loss"),
        ("accuracy", "acc"),
        ("val_loss", "val_loss"),
        ("val_accuracy", "val_acc"),
    ):
        if logs.get(key) is not None:
            parts.append(f"{label} {float(logs[key]):.4f}")
    if elapsed > 0:
        parts.append(f"{steps * batch_size / elapsed:,.0f} img/s")
    return "  ".join(parts)


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    return -(-train_images // batch_size)


def fit(
    model: Any, train_ds: Any, val_ds: Any, segment: Segment, steps_per_epoch: int, callbacks: list
) -> Any:
    """One `fit` over `segment`; a resumed first epoch has only its remaining steps."""
    return model.fit(
        train_ds,
        validation_data=val_ds,
        initial_epoch=segment.first,
        epochs=segment.stop,
        steps_per_epoch=steps_per_epoch - segment.skip if segment.skip else steps_per_epoch,
        callbacks=callbacks,
        verbose=0,
        shuffle=False,  # the pipeline shuffles, seeded by epoch
    )
