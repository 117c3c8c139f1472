"""The training loop: the optimizer and compile from the spec, how many steps each execution runs,
the epochs of a run (a segment per epoch) driven through the engine (engine.py: runner's own
strategy-aware step, one path for every tf.distribute strategy). How fast a step is: speed.py.
Observers watch it (callbacks.py); the session puts them together.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from runner import compat
from runner.spec import ExperimentSpec, TrainingSpec
from runner.training.checkpoints import Position
from runner.training.telemetry import Segment, TrainingLog


def make_optimizer(training: TrainingSpec) -> Any:
    """The spec's optimizer, clipping included. Wrapped in a LossScaleOptimizer (precision.py), it
    receives unscaled gradients and clips those: clipping the scaled ones would clip at scale × norm."""
    optimizers = compat.keras().optimizers
    opt = training.optimizer
    lr = training.learning_rate  # the loop sets each step's rate from the schedule (schedules.py)
    clip = {
        key: value
        for key, value in (
            ("clipnorm", training.clip_norm),
            ("global_clipnorm", training.clip_global_norm),
            ("clipvalue", training.clip_value),
        )
        if value is not None
    }
    if opt.kind == "adam":
        return optimizers.Adam(lr, beta_1=opt.beta_1, beta_2=opt.beta_2, epsilon=opt.epsilon, **clip)
    if opt.kind == "adamw":
        return optimizers.AdamW(
            lr,
            weight_decay=opt.weight_decay,
            beta_1=opt.beta_1,
            beta_2=opt.beta_2,
            epsilon=opt.epsilon,
            **clip,
        )
    if opt.kind == "sgd":
        return optimizers.SGD(lr, momentum=opt.momentum, nesterov=opt.nesterov, **clip)
    return optimizers.RMSprop(lr, rho=opt.rho, momentum=opt.momentum, epsilon=opt.epsilon, **clip)


def make_loss(training: TrainingSpec) -> Any:
    """Sparse categorical cross-entropy on the model's probabilities; with label smoothing, the
    same on smoothed one-hot targets (Keras' sparse loss has no smoothing of its own)."""
    keras = compat.keras()
    if not training.label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy()
    return compat.smoothed_sparse_crossentropy(training.label_smoothing)


def build_for_training(
    spec: ExperimentSpec, input_shape: tuple[int, ...], num_classes: int
) -> tuple[Any, Any]:
    """The spec's model, its optimizer (under mixed_float16 wrapped for loss scaling) and compile:
    call inside the policy scope (precision.policy_scope), under the strategy's scope."""
    from runner.models import build_model
    from runner.precision import policy as precision
    from runner.precision.layers import apply_layer_policies

    output_dtype = "float32" if spec.precision.output_dtype == "float32" else None
    model = build_model(spec.model, input_shape, num_classes, output_dtype)
    apply_layer_policies(model, spec.precision.layers)
    optimizer = precision.wrap_optimizer(make_optimizer(spec.training), spec.precision)
    compile_model(model, optimizer, spec.training)
    return model, optimizer


def unfreeze(model: Any, epoch: int) -> list[str]:
    """Set each frozen base trainable from its epoch on (`epoch` 0-based, as the segments count);
    the names of those whose setting changed (the training step must then be traced again)."""
    changed = []
    for base in compat.frozen_bases(model):
        trainable = epoch >= base.runner_frozen_epochs
        if base.trainable != trainable:
            base.trainable = trainable
            changed.append(base.name)
    return changed


def ready_to_train(model: Any, x: Any, y: Any) -> None:
    """Create the optimizer's and the metrics' variables now, under the strategy's scope (a
    compiled step cannot create them on its replicas), and leave the metrics at zero. (x, y): one
    example, which the metrics are built on."""
    compat.build_optimizer(model.optimizer, compat.variables_to_train(model))
    compat.build_metrics(model, x, y)
    model.reset_metrics()


def compile_model(model: Any, optimizer: Any, training: TrainingSpec) -> None:
    """Compile with the spec's loss, metrics and optimizer (the engine runs the steps, not `fit`)."""
    compat.compile_model(
        model,
        optimizer,
        loss=make_loss(training),
        metrics=["accuracy"],
        jit_compile=training.jit_compile is True,  # "auto" is resolved before (precision.xla_choice)
    )


AUTO_EXECUTION_S = 1.0  # "auto": executions of about this long (responsive progress and Ctrl-C)
AUTO_MAX_STEPS = 32  # measured: float32 gains nothing past 32 here (1.47x the tutorial at 32 and 128)


@dataclass
class ExecutionPlan:
    """How many steps each execution runs. A number from the spec is used as it is. "auto" starts at
    one step and doubles while an execution takes under half of AUTO_EXECUTION_S (halves past twice
    it), up to AUTO_MAX_STEPS: a busy moment costs a few short executions, not a whole run at the
    wrong setting. Executions also end at an epoch's end and at every `every_steps` multiple, so a
    checkpoint's position never depends on the setting; nor do the numbers (the loss scale is
    recorded at every step)."""

    setting: int | str
    every_steps: int | None = None
    current: int = 1
    largest: int = 1

    def __post_init__(self) -> None:
        if self.setting != "auto":
            self.current = self.largest = int(self.setting)

    def next(self, remaining: int, global_step: int) -> int:
        steps = min(self.current, remaining)
        if self.every_steps:
            steps = min(steps, self.every_steps - global_step % self.every_steps)
        return max(steps, 1)

    def timed(self, steps: int, seconds: float) -> None:
        if self.setting != "auto" or steps < self.current:  # a short execution says little
            return
        if seconds < AUTO_EXECUTION_S / 2:
            self.current = min(self.current * 2, AUTO_MAX_STEPS)
        elif seconds > AUTO_EXECUTION_S * 2:
            self.current = max(self.current // 2, 1)
        self.largest = max(self.largest, self.current)

    def describe(self) -> tuple[int, str]:
        if self.setting != "auto":
            return self.current, "set by the spec"
        return self.largest, (
            f"auto: doubled from 1 while an execution took under {AUTO_EXECUTION_S / 2:g} s, "
            f"up to {AUTO_MAX_STEPS}; reached {self.largest}"
        )


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    return -(-train_images // batch_size)


def train_segment(
    engine: Any,
    data: tuple[Any, Any],
    segment: Segment,
    log: TrainingLog,
    plan: ExecutionPlan,
    observers: list[Any],
    agree: Any,
    rates_for: Any,
) -> None:
    """Train `segment`'s epochs from `data` (its training dataset, and the validation one already
    distributed, or None), calling the observers where Keras calls callbacks. `agree(plan)` runs at
    each execution boundary: on several workers it makes a stop request and the next execution's
    steps the same everywhere (peers that disagree would wait on each other in a collective).
    `rates_for(first_step, n)`: the learning rates of the next n steps (schedules.rates)."""
    model, (train_ds, val_ds) = engine.model, data
    for observer in observers:
        observer.set_model(model)
        observer.on_train_begin()
    model.stop_training = False
    iterator = iter(engine.distribute(train_ds))
    for epoch in range(segment.first, segment.stop):
        model.reset_metrics()
        for observer in observers:
            observer.on_epoch_begin(epoch)
        logs = _train_epoch(engine, iterator, segment, epoch, log, plan, observers, (agree, rates_for))
        if not model.stop_training and val_ds is not None:
            logs.update({f"val_{k}": v for k, v in engine.evaluate(val_ds).items()})
        for observer in observers:
            observer.on_epoch_end(epoch, logs)
        if model.stop_training:
            return


def _train_epoch(
    engine: Any,
    iterator: Any,
    segment: Segment,
    epoch: int,
    log: TrainingLog,
    plan: ExecutionPlan,
    observers: list[Any],
    hooks: tuple[Any, Any],
) -> dict[str, float]:
    (agree, rates_for), model, steps = hooks, engine.model, segment.steps or 0
    base = segment.skip if epoch == segment.first else 0
    done, logs = base, {}
    while done < steps and not model.stop_training:
        n = plan.next(steps - done, log.steps)
        started = time.perf_counter()
        record = engine.train(iterator, rates_for(log.steps, n))
        logs = engine.metrics()
        plan.timed(n, time.perf_counter() - started)
        agree(plan)  # with peers: the same stop and the same next execution on every worker
        done += n
        for observer in observers:
            observer.on_train_batch_end(done - base - 1, logs, record)
    return logs


def segments(start: Position, epochs: int, steps: int) -> Iterator[Segment]:
    """The segments from `start`, one per epoch (the first may be the rest of an interrupted one),
    made one at a time: nothing is planned ahead, so `epochs = 10**9` costs nothing until it runs.
    Each has its own dataset (the epoch's shuffle, from the resumed step)."""
    for epoch in range(start.epoch, epochs):
        yield Segment(epoch, epoch + 1, start.step if epoch == start.epoch else 0, steps)
