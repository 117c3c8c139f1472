"""What watches a run as the training loop (loop.py) drives it: telemetry (throughput, loss scale,
divergence), checkpoints, TensorBoard summaries and progress events. The loop calls them at each
epoch's start and end and after each execution (steps_per_execution steps), with the metrics read
across replicas and each step's loss scale: O(n) Python work per execution of n steps, and no
tensor read from the device of their own except at an epoch's end.

Hooks are named as Keras' callbacks' (`on_epoch_begin`, `on_train_batch_end`, ...), whose places
they take; they are plain objects (no Keras base class).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from runner import compat
from runner.events import EpochEnded, EpochStarted, EventSink, StepsDone, ignore
from runner.spec import ReduceOnPlateau, TrainingSpec
from runner.training import checkpoints
from runner.training.engine import StepRecord
from runner.training.telemetry import (
    Cursor,
    EpochRecord,
    LossScaleTracker,
    Segment,
    StopRequest,
    StopTraining,
    TrainingLog,
)

UI_INTERVAL_S = 0.2  # progress events: at most 5 times a second


class Observer:
    """A no-op for every hook the loop calls; subclasses override what they watch."""

    model: Any = None

    def set_model(self, model: Any) -> None:
        self.model = model

    def on_train_begin(self) -> None:
        pass

    def on_epoch_begin(self, epoch: int) -> None:
        pass

    def on_train_batch_end(self, batch: int, logs: dict[str, float], steps: StepRecord | None = None) -> None:
        """After an execution; `batch` is the index of its last step in this epoch's `fit`-like count
        (from the resumed step in a resumed epoch), `steps` each step's loss scale."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        pass


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def append_line(path: Path, line: str) -> None:
    """One whole line per write, flushed: a reader never sees half a record but maybe a torn tail."""
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


class Telemetry(Observer):
    """Fills `log` (epochs, throughput, loss scale, divergence), appends each epoch to metrics.jsonl
    and emits it. Throughput leaves out the process's first call, which traces and compiles."""

    def __init__(
        self,
        log: TrainingLog,
        batch_size: int,
        train_images: int,
        segment: Segment,
        metrics_path: Path | None,
        max_consecutive_skipped: int = 50,
        emit: EventSink = ignore,
    ):
        self.log, self.segment, self.metrics_path, self.emit = log, segment, metrics_path, emit
        self.batch_size, self.train_images, self.max_skipped = (
            batch_size,
            train_images,
            max_consecutive_skipped,
        )

    def _images(self, step_from: int, step_to: int) -> int:
        cap, batch = self.train_images, self.batch_size
        return min(step_to * batch, cap) - min(step_from * batch, cap)

    def on_train_begin(self):
        self.cursor = Cursor(self.segment, self.log)
        self._scaled = compat.is_loss_scale_optimizer(self.model.optimizer)
        if self._scaled and self.log.loss_scale is None:
            self.log.loss_scale = LossScaleTracker(float(self.model.optimizer.initial_scale))

    def on_epoch_begin(self, epoch):
        self.cursor.begin_epoch(epoch)
        self._epoch_start = self._last_check = time.perf_counter()
        self._rate: float | None = None
        self._mark = (self._epoch_start, self.cursor.step) if self.log.traced else None

    def on_train_batch_end(self, batch, logs, steps=None):
        now = time.perf_counter()
        first_step = self.log.steps
        self.cursor.end_batch(batch)
        if self._mark is None:
            self._mark, self.log.traced = (now, self.cursor.step), True
        self._train_end = now
        if steps is not None and len(steps):
            self._rate = float(steps.rates[-1])
        tracker = self.log.loss_scale
        if self._scaled and tracker is not None and steps is not None:
            # Every step of the execution, in order: a skipped step is placed where it happened.
            for i, (scale, applied) in enumerate(zip(steps.scales, steps.applied, strict=True)):
                tracker.observe(first_step + i + 1, float(scale), int(applied))
                diagnosis = tracker.collapse(self.max_skipped)
                if diagnosis is not None:
                    self._diverge(diagnosis)
                    break
        self._guard(logs)  # every execution: each worker decides on the same numbers

    def _guard(self, logs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._diverge(f"non-finite loss ({float(loss)}) at step {self.log.steps}")

    def _diverge(self, diagnosis):
        if self.log.diverged_at_step is None:
            self.log.diverged_at_step, self.log.divergence = self.log.steps, diagnosis
        self.model.stop_training = True

    def on_epoch_end(self, epoch, logs):
        self._guard(logs)
        if self.log.diverged_at_step is not None:
            return  # a partial epoch's means would mislead: the report names the last good one
        started_at, started_step = self._mark or (self._train_end, self.cursor.step)
        images, seconds = self._images(started_step, self.cursor.step), self._train_end - started_at
        if seconds > 0 and images > 0:
            self.log.timed_images += images
            self.log.timed_seconds += seconds
        record = EpochRecord(
            epoch=epoch + 1,
            loss=_float(logs.get("loss")),
            accuracy=_float(logs.get("accuracy")),
            val_loss=_float(logs.get("val_loss")),
            val_accuracy=_float(logs.get("val_accuracy")),
            seconds=round(time.perf_counter() - self._epoch_start, 3),
            images_per_second=round(images / seconds, 1) if seconds > 0 and images > 0 else None,
            loss_scale=compat.current_loss_scale(self.model.optimizer),
            learning_rate=self._rate,
        )
        self.log.epochs.append(record)
        if self.metrics_path is not None:
            append_line(self.metrics_path, json.dumps(record.as_dict()))
        self.emit(EpochEnded(epoch + 1, record.as_dict()))


class EpochWatch(Observer):
    """At each epoch's end, before its checkpoint: a plateau schedule and early stopping take the
    epoch's monitored value (their state is in the log, so the checkpoint carries it); early
    stopping ends training after this epoch."""

    def __init__(self, log: TrainingLog, training: TrainingSpec):
        self.log, self.training = log, training

    def on_epoch_end(self, epoch, logs):
        if self.log.diverged_at_step is not None:
            return
        schedule, stopping = self.training.schedule, self.training.early_stopping
        if isinstance(schedule, ReduceOnPlateau):
            self.log.plateau.observe(
                _float(logs.get(schedule.monitor)), schedule, self.training.learning_rate
            )
        if stopping is not None and self.log.early_stopping.observe(
            epoch + 1, _float(logs.get(stopping.monitor)), stopping
        ):
            self.model.stop_training = True


class Checkpoints(Observer):
    """Checkpoints at each epoch's end and every `every_steps` steps; on a stop request, one after the
    current step and out of `fit`. `restore_metrics` (a resume in mid-epoch) puts back the running
    means Keras resets when the epoch begins."""

    def __init__(
        self,
        run_dir: Path,
        log: TrainingLog,
        segment: Segment,
        stop: StopRequest,
        every_steps: int | None,
        restore_metrics: Any = None,
        write: bool = True,
    ):
        self.run_dir, self.log, self.segment, self.stop = run_dir, log, segment, stop
        self.every_steps, self.restore_metrics, self.write = every_steps, restore_metrics, write

    def on_train_begin(self):
        self.cursor = Cursor(self.segment, self.log)
        self._saved_at = self.log.steps // self.every_steps if self.every_steps else 0

    def on_epoch_begin(self, epoch):
        self.cursor.begin_epoch(epoch)
        if self.restore_metrics is not None and epoch == self.segment.first and self.segment.skip:
            self.restore_metrics(self.model)

    def _save(self, epoch, step):
        position = checkpoints.Position(epoch, step, self.log.steps)
        state = self.log.to_state()
        return checkpoints.save(self.run_dir, self.model, position, state, write=self.write)

    def on_train_batch_end(self, batch, logs, steps=None):
        self.cursor.end_batch(batch)
        if self.stop.due(self.log.steps):
            name = self._save(self.cursor.epoch, self.cursor.step)
            raise StopTraining(
                f"{self.stop.signal} at epoch {self.cursor.epoch + 1}, step {self.cursor.step}: "
                f"checkpoint {name}"
            )
        # The loop ends an execution on every multiple (loop.ExecutionPlan).
        if self.every_steps and self.log.steps // self.every_steps > self._saved_at:
            self._saved_at = self.log.steps // self.every_steps
            self._save(self.cursor.epoch, self.cursor.step)

    def on_epoch_end(self, epoch, logs):
        if self.log.diverged_at_step is not None:
            found = checkpoints.latest(self.run_dir)
            if found is not None and self.write:
                checkpoints.pin(self.run_dir, found[0])
            return
        name = self._save(epoch + 1, 0)
        if self.log.early_stopping.best_epoch == epoch + 1 and self.write:
            checkpoints.mark_best(self.run_dir, name)


class EpochSummaries(Observer):
    """TensorBoard event files in Keras' layout (train/ and validation/: epoch_loss, epoch_accuracy,
    epoch_learning_rate) plus precision/loss_scale for every step (a run with loss scaling only),
    all written at each epoch's end: no per-step hook, so no per-step cost (Keras' own TensorBoard
    callback has one). The values are scalar summaries (`simple_value`), which TensorBoard's scalar
    dashboard and its `EventAccumulator` both read (tf.summary.scalar's tensor summaries the
    latter does not). One instance serves every `fit` of a run (one event file per writer); `close`
    it at the end."""

    def __init__(self, log: TrainingLog, log_dir: Path):
        self.tf, self.log = compat.tensorflow(), log
        writer = self.tf.summary.create_file_writer
        self._writers = {name: writer(str(log_dir / name)) for name in ("train", "validation")}
        self._scale_dir = log_dir / "precision"
        self._scale_writer: Any = None  # made with the first loss scale: a float32 run has none
        self._written = log.steps  # a resumed run wrote the steps before it

    def _scalar(self, tag: str, value: float, step: int) -> None:
        v1 = self.tf.compat.v1
        summary = v1.Summary(value=[v1.Summary.Value(tag=tag, simple_value=float(value))])
        self.tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)

    def on_epoch_end(self, epoch, logs):
        train_values = {k: v for k, v in logs.items() if not k.startswith("val_")}
        rate = self.log.epochs[-1].learning_rate if self.log.epochs else None  # Telemetry's record
        if rate is not None:
            train_values["learning_rate"] = rate
        values = {
            "train": train_values,
            "validation": {k[4:]: v for k, v in logs.items() if k.startswith("val_")},
        }
        for name, scalars in values.items():
            with self._writers[name].as_default():
                for key, value in scalars.items():
                    self._scalar(f"epoch_{key}", float(value), epoch)
            self._writers[name].flush()
        self._write_loss_scale()

    def _write_loss_scale(self):
        tracker = self.log.loss_scale
        if tracker is None or tracker.steps <= self._written:
            return
        if self._scale_writer is None:
            self._scale_writer = self.tf.summary.create_file_writer(str(self._scale_dir))
        with self._scale_writer.as_default():
            for step in range(self._written + 1, tracker.steps + 1):
                self._scalar("loss_scale", tracker.scale_at(step), step)
        self._scale_writer.flush()
        self._written = tracker.steps

    def close(self):
        for writer in (*self._writers.values(), self._scale_writer):
            if writer is not None:
                writer.close()


class ProgressEvents(Observer):
    """Emits an epoch's start and its progress (running loss and accuracy, images per second), at
    most every UI_INTERVAL_S: the terminal's bars, a notebook's widget or a log are the sink's."""

    def __init__(self, emit: EventSink, epochs: int, steps_per_epoch: int, batch_size: int, segment: Segment):
        self.emit, self.epochs, self.steps = emit, epochs, steps_per_epoch
        self.batch_size, self.segment = batch_size, segment

    def on_epoch_begin(self, epoch):
        self._epoch = epoch + 1
        self._base = self.segment.skip if epoch == self.segment.first else 0
        self._start, self._last, self._done = time.perf_counter(), 0.0, 0
        self.emit(EpochStarted(epoch + 1, self.epochs, self.steps, self._base))

    def on_train_batch_end(self, batch, logs, steps=None):
        self._done = min(batch + 1, self.steps - self._base)  # see Segment
        now = time.perf_counter()
        if now - self._last >= UI_INTERVAL_S:
            self._last = now
            self._progress(logs, now - self._start, self._base + self._done)

    def on_epoch_end(self, epoch, logs):
        self._progress(logs, time.perf_counter() - self._start, self.steps)

    def _progress(self, logs, elapsed, completed):
        metrics = {k: float(v) for k, v in (logs or {}).items() if v is not None}
        speed = self._done * self.batch_size / elapsed if elapsed > 0 else None
        self.emit(StepsDone(self._epoch, completed, self.steps, metrics, speed))
