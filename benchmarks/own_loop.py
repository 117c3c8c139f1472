"""Keras' `fit` against a strategy-aware training loop of runner's own, on the quickstart's model and data:
the measurement issue 17 needs before it replaces `fit` (Keras 3's `fit` cannot train with
MultiWorkerMirroredStrategy; a loop that calls `strategy.run(model.train_step, ...)` can).

    python benchmarks/own_loop.py [--policy float32] [--steps-per-execution 32] [--epochs 3] [--images 8000]

Both train the same model (same seed, same batches) for the same epochs; the first epoch of each
traces and is not timed. Prints images/s of each, their ratio, and the final losses (equal to a
tolerance when both loops do the same arithmetic).
"""

from __future__ import annotations

import argparse
import time

from runner import compat
from runner.data.pipeline import TrainingBatches, train_pipeline
from runner.data.sources import load_splits
from runner.preflight.gate import build, training_scope
from runner.spec import spec_from_dict
from runner.training import loop


def make_execution(model, strategy):
    """`n` steps inside one tf.function call (a tf.range loop), each step Keras' own `train_step` run
    on every replica by `strategy.run`; made once per model, so an epoch does not retrace it."""
    tf = compat.tensorflow()

    @tf.function
    def execution(iterator, n):
        logs = strategy.run(model.train_step, args=(next(iterator),))  # fixes the loop's structure
        for _ in tf.range(n - 1):
            logs = strategy.run(model.train_step, args=(next(iterator),))
        return logs

    return execution


def own_loop_epoch(execution, dataset, steps: int, per_execution: int, strategy) -> dict:
    tf = compat.tensorflow()
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    logs, done = {}, 0
    while done < steps:
        n = min(per_execution, steps - done)
        logs = execution(iterator, tf.constant(n))
        done += n
    return {k: float(strategy.reduce("MEAN", v, axis=None)) for k, v in logs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="float32")
    parser.add_argument("--steps-per-execution", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=8000)
    args = parser.parse_args()
    spec = spec_from_dict(
        {
            "name": "own-loop",
            "precision": {"policy": args.policy},
            "data": {"source": "shapes", "train_size": args.images, "validation_fraction": 0.0},
            "training": {"steps_per_execution": args.steps_per_execution},
        }
    )
    splits = load_splits(spec.data, 0)
    steps = loop.steps_per_epoch(len(splits.y_train), spec.data.batch_size)
    speeds, losses = {}, {}
    for name in ("fit", "own"):
        with training_scope(spec):
            model, _ = build(spec, splits)
            strategy = compat.tensorflow().distribute.get_strategy()
            execution = make_execution(model, strategy)
            seconds, images = 0.0, 0
            for epoch in range(args.epochs):
                data = train_pipeline(
                    splits.x_train, splits.y_train, TrainingBatches(32, 0, range(epoch, epoch + 1))
                )
                start = time.perf_counter()
                model.reset_metrics()  # as fit does at each epoch's start
                if name == "fit":
                    history = model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
                    logs = {k: v[-1] for k, v in history.history.items()}
                else:
                    logs = own_loop_epoch(execution, data, steps, args.steps_per_execution, strategy)
                if epoch:  # the first epoch traces
                    seconds += time.perf_counter() - start
                    images += len(splits.y_train)
            speeds[name], losses[name] = images / seconds, logs.get("loss")
        compat.keras().backend.clear_session()
    print(f"policy {args.policy}, {args.steps_per_execution} steps per execution, {steps} steps per epoch")
    for name in speeds:
        print(f"{name:>4}: {speeds[name]:8.0f} images/s   last epoch's loss {losses[name]:.4f}")
    print(f"own/fit: {speeds['own'] / speeds['fit']:.2f}x")


if __name__ == "__main__":
    main()
