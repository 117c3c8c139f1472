"""P4 and P10: what runner's loop and observers cost per step, against Keras' own `model.fit`.

    python benchmarks/overhead.py '{"kind": "resnet", "depth": 20}' --images 2048 --rounds 5

One process, one compiled model, one tf.data pipeline (runner's, `Splits.train_dataset`), and three
ways to train an epoch on it, taking turns (the order rotates each round; the first round traces
and is not timed):

- `fit`: `model.fit` on the epoch's dataset (Keras' defaults: one step per call, its callbacks).
- `runner`: runner's loop (`loop.train_segment` through the `Engine`) with every observer a run
  has: telemetry and metrics.jsonl, early-stopping watch, the epoch's checkpoint, progress events,
  TensorBoard summaries; "auto" steps per execution, as `runner run` trains.
- `bare`: runner's loop with no observer at all.
- `ceiling` (only when asked, `--sides ceiling`): runner's engine on one batch held in memory,
  repeated (no input pipeline), 32 steps per execution, compiled as a run compiles it (XLA or
  not, as "auto" chooses): what the model's arithmetic allows on this machine, the most any loop
  can reach.

Each epoch is timed whole, from the call to its return, so an epoch's checkpoint and summaries
count. P10 is fit's images/s over runner's, minus one (runner's step-time overhead over `fit`); P4
is bare's over runner's, minus one (what the observers cost). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from runner import compat, runs, session
from runner.data.pipeline import TrainingBatches
from runner.data.sources import load_splits
from runner.events import ignore
from runner.preflight import choices, speed
from runner.preflight import gate as preflight
from runner.reporting.record import RunState
from runner.spec import spec_from_dict
from runner.training import callbacks as _  # noqa: F401  (imports TensorFlow now, not inside a timed epoch)
from runner.training import loop, schedules
from runner.training.telemetry import Segment, TrainingLog


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the spec's [model] table as JSON")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5, help="the first traces and is not timed")
    parser.add_argument("--policy", default="float32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sides", default="fit,runner,bare", help="some of fit, runner, bare, ceiling")
    args = parser.parse_args()
    spec = spec_from_dict(
        {
            "name": "overhead",
            "precision": {"policy": args.policy},
            "model": json.loads(args.model),
            "data": {
                "source": "shapes",
                "batch_size": args.batch,
                "train_size": args.images,
                "test_size": args.batch,
                "validation_fraction": 0.0,
            },
            "training": {"epochs": 10**6},
        }
    )
    splits = load_splits(spec.data, spec.seed)
    steps = loop.steps_per_epoch(len(splits.y_train), args.batch)
    names = [s.strip() for s in args.sides.split(",") if s.strip()]
    rates: dict[str, list[float]] = {name: [] for name in names}
    # The ceiling compiles with XLA as the run would: as measured here (choices.measure_spec).
    xla = choices.measure_spec(spec, splits, runs.environment_info(), speed.STEPS)[0]
    with tempfile.TemporaryDirectory() as tmp, preflight.training_scope(spec):
        model, _ = preflight.build(spec, splits)
        preflight.ready_to_train(model, splits)
        from runner.training.engine import Engine

        strategy = compat.tensorflow().distribute.get_strategy()
        engine = Engine(model, strategy)
        state = RunState(spec, Path(tmp), {}, {})
        timing = schedules.Timing(steps, spec.training.epochs)
        every = {
            "fit": lambda: _fit_epoch(model, steps),
            "runner": lambda: _runner_epoch(engine, state, steps, timing, observed=True),
            "bare": lambda: _runner_epoch(
                engine, RunState(spec, Path(tmp), {}, {}), steps, timing, observed=False
            ),
            "ceiling": lambda: _ceiling_epoch(
                Engine(model, strategy, jit_compile=xla), splits, steps, args.batch
            ),
        }
        sides = {name: every[name]() for name in names}
        for round_ in range(args.rounds):
            turn = round_ % len(names)
            order = names[turn:] + names[:turn]
            for name in order:
                dataset = splits.train_dataset(
                    TrainingBatches(args.batch, spec.data.shuffle_seed, range(round_, round_ + 1))
                )
                start = time.perf_counter()
                sides[name](dataset)
                if round_:
                    rates[name].append(steps * args.batch / (time.perf_counter() - start))
    print(json.dumps(rates))
    return 0


def _ceiling_epoch(engine, splits, steps: int, batch: int):
    """An epoch's steps on one batch held in memory, in executions of 32 steps."""
    import numpy as np

    tf = compat.tensorflow()
    batches = iter(engine.distribute(tf.data.Dataset.from_tensors(splits.first_batch(batch)).repeat()))
    rates = np.full(32, 1e-3, np.float32)

    def epoch(dataset):
        for _execution in range(steps // 32):
            engine.train(batches, rates)
        engine.metrics()

    return epoch


def _fit_epoch(model, steps):
    def epoch(dataset):
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)

    return epoch


def _runner_epoch(engine, state: RunState, steps: int, timing, observed: bool):
    """One epoch through runner's loop, each call the run's next epoch (its own checkpoint)."""
    plan = loop.ExecutionPlan(
        state.spec.training.steps_per_execution, state.spec.runtime.checkpoint_every_steps
    )
    state.log = TrainingLog()
    training, calls = state.spec.training, [0]
    summaries = session._summaries(state) if observed else []

    def rates_for(first: int, n: int):
        return schedules.rates(
            training.schedule, training.learning_rate, first, n, timing, state.log.plateau.scale
        )

    def epoch(dataset):
        segment = Segment(calls[0], calls[0] + 1, 0, steps)
        calls[0] += 1
        observers = [
            *session._observers(state, segment, steps * state.spec.data.batch_size, ignore, None),
            *summaries,
        ]
        loop.train_segment(
            engine,
            (dataset, None),
            segment,
            state.log,
            plan,
            observers if observed else [],
            lambda plan: None,
            rates_for,
        )

    return epoch


if __name__ == "__main__":
    sys.exit(main())
