"""The training loop's pieces: the optimizer and compile from the spec, steps per execution, the
`fit` calls of a run (one per epoch) and timed steps. Callbacks watch it (callbacks.py); the session
puts them together.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from runner import compat
from runner.checkpoints import Position
from runner.spec import TrainingSpec
from runner.telemetry import Segment


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


def segments(start: Position, epochs: int, steps: int) -> Iterator[Segment]:
    """The `fit` calls from `start`, one per epoch (the first may be the rest of an interrupted one),
    made one at a time: nothing is planned ahead, so `epochs = 10**9` costs nothing until it runs.

    One epoch per `fit` because Keras 3, given steps_per_epoch, runs whole executions: 25 steps at
    3 per execution would run 27, two of them from the next epoch's batches. A `fit` over one
    epoch's batches ends where they do."""
    for epoch in range(start.epoch, epochs):
        yield Segment(epoch, epoch + 1, start.step if epoch == start.epoch else 0, steps)
