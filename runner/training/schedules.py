"""The learning rate of every training step, and what watches the epochs (a plateau, early stopping).

Plain Python, no TensorFlow: the loop asks for the rates of the steps it is about to run and hands
them to the compiled execution, which sets the optimizer's rate before each step. The rate is a pure
function of the step (counted over the run, a skipped step included) and of the plateau's state, so a
resume at any step gets the same rates, whatever the steps per execution; the check after training
recomputes them from here and compares them with the rates the optimizer reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from runner.spec import Cosine, EarlyStoppingSpec, Exponential, ReduceOnPlateau, ScheduleSpec, Step


def mode_of(metric: str) -> str:
    """ "max" for an accuracy, "min" for a loss (Keras' `mode="auto"` rule)."""
    return "max" if metric.endswith("accuracy") else "min"


def improved(value: float, best: float | None, metric: str, min_delta: float) -> bool:
    """Whether `value` beats `best` by more than min_delta in the metric's direction."""
    if best is None:
        return math.isfinite(value)
    return value > best + min_delta if mode_of(metric) == "max" else value < best - min_delta


@dataclass(frozen=True)
class Timing:
    """A run's length in steps: what turns a schedule's epochs into steps."""

    steps_per_epoch: int
    epochs: int

    @property
    def total(self) -> int:
        return self.steps_per_epoch * self.epochs


def rate_at(
    schedule: ScheduleSpec, base: float, step: int, timing: Timing, plateau_scale: float = 1.0
) -> float:
    """The learning rate of 0-based training step `step`: the warmup's ramp (linear, reaching
    `base` on its last step) times the schedule's decay, counted from the warmup's end."""
    warmup = round(schedule.warmup_epochs * timing.steps_per_epoch)
    ramp = (step + 1) / warmup if step < warmup else 1.0
    after = max(step - warmup, 0)  # steps since the warmup
    epoch = step / timing.steps_per_epoch  # epochs since the start (fractional)
    if isinstance(schedule, Cosine):
        span = max(timing.total - warmup - 1, 1)  # the last step reaches alpha × base
        decay = schedule.alpha + (1 - schedule.alpha) * 0.5 * (1 + math.cos(math.pi * min(after / span, 1.0)))
    elif isinstance(schedule, Step):
        passed = sum(1 for b in schedule.boundaries_epochs if epoch >= b)
        decay = schedule.factors[passed - 1] if passed else 1.0
    elif isinstance(schedule, Exponential):
        exponent = after / timing.steps_per_epoch / schedule.decay_epochs
        decay = schedule.decay_rate ** (math.floor(exponent) if schedule.staircase else exponent)
    elif isinstance(schedule, ReduceOnPlateau):
        return ramp * max(base * plateau_scale, schedule.min_lr) if plateau_scale < 1 else ramp * base
    else:
        decay = 1.0
    return ramp * base * decay


def rates(
    schedule: ScheduleSpec, base: float, first: int, n: int, timing: Timing, plateau_scale: float = 1.0
) -> np.ndarray:
    """(n,) float32: the rates of steps first .. first + n - 1, as the execution sets them."""
    return np.array(
        [rate_at(schedule, base, s, timing, plateau_scale) for s in range(first, first + n)], np.float32
    )


@dataclass
class PlateauState:
    """Keras' ReduceLROnPlateau, epoch by epoch: the best value, epochs without improvement, the
    cooldown left, and the factor the rate is multiplied by so far."""

    best: float | None = None
    wait: int = 0
    cooldown: int = 0
    scale: float = 1.0
    reductions: int = 0

    def observe(self, value: float | None, spec: ReduceOnPlateau, base: float) -> None:
        if value is None or not math.isfinite(value):
            return
        if self.cooldown > 0:
            self.cooldown -= 1
            self.wait = 0
        if improved(value, self.best, spec.monitor, spec.min_delta):
            self.best, self.wait = value, 0
            return
        if self.cooldown > 0:
            return
        self.wait += 1
        if self.wait >= spec.patience and base * self.scale > spec.min_lr:
            self.scale *= spec.factor
            self.reductions += 1
            self.cooldown, self.wait = spec.cooldown, 0

    def to_state(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EarlyStoppingState:
    """The best epoch so far (1-based) and its value, epochs since, and where the run stopped."""

    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped_at_epoch: int | None = None

    def observe(self, epoch: int, value: float | None, spec: EarlyStoppingSpec) -> bool:
        """Take epoch `epoch`'s monitored value; True when training should stop after it."""
        if value is not None and improved(value, self.best, spec.monitor, spec.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return False
        self.wait += 1
        if self.wait >= spec.patience:
            self.stopped_at_epoch = epoch
            return True
        return False

    def to_state(self) -> dict[str, Any]:
        return asdict(self)


def expected_epoch_rates(
    schedule: ScheduleSpec, base: float, timing: Timing, records: list[dict[str, Any]]
) -> list[float]:
    """The rate of each recorded epoch's last step, replayed from the schedule and (for a plateau)
    from the monitored values the epochs recorded: what the optimizer must have reported."""
    plateau, expected = PlateauState(), []
    for record in records:
        epoch = record["epoch"]  # 1-based
        expected.append(rate_at(schedule, base, epoch * timing.steps_per_epoch - 1, timing, plateau.scale))
        if isinstance(schedule, ReduceOnPlateau):
            plateau.observe(record.get(schedule.monitor), schedule, base)
    return expected
