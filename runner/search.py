"""A [sweep]'s points: the grid (every combination of the lists) or a random search (distributions
sampled with the spec's seed), and the options that say which, and what the comparison ranks by.

    [sweep]
    method = "random"                                   # or "grid" (the default)
    samples = 8
    objective = "test_accuracy"                         # the comparison marks the best variant
    "training.learning_rate" = { log_uniform = [1e-4, 1e-2] }
    "training.optimizer.kind" = ["adam", "sgd"]         # a list: every value (grid), one of them (random)

Plain Python and NumPy: `runner validate` prints the variants without TensorFlow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

OPTIONS = ("method", "samples", "objective", "mode")
DISTRIBUTIONS = ("log_uniform", "uniform", "int_uniform", "choice")
# What the comparison can rank by (a row's field) and the direction that is better.
OBJECTIVES = {
    "test_accuracy": "max",
    "test_loss": "min",
    "val_accuracy": "max",
    "val_loss": "min",
    "images_per_second": "max",
    "step_time_ms": "min",
    "peak_host_memory_mb": "min",
}
DEFAULT_OBJECTIVE = "test_accuracy"  # a random search's, when it names none
MAX_TRIES_PER_SAMPLE = 100  # draws per wanted sample before a search is declared too narrow


class SweepError(ValueError):
    """A [sweep] that cannot be planned: the message names the file and the entry (spec.load_plan
    turns it into a SpecError; this module imports nothing of runner's)."""


@dataclass(frozen=True)
class SweepOptions:
    method: str = "grid"
    samples: int | None = None
    objective: tuple[str, str] | None = None  # (metric, "max" | "min")


def _is_distribution(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def _axes(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted field paths → a list or a distribution table (tables nest field paths, as in a spec)."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not _is_distribution(value):
            flat.update(_axes(value, path + "."))
        else:
            flat[path] = value
    return flat


def read_sweep(sweep: Any, source: str) -> tuple[SweepOptions, dict[str, Any]]:
    """The options and the axes of a [sweep] table; anything malformed is one SpecError naming it."""
    if not isinstance(sweep, dict) or not sweep:
        raise SweepError(
            f"{source}: sweep: expected a table of field paths to lists of values; got {_show(sweep)}"
        )
    sweep = dict(sweep)
    options = _options({k: sweep.pop(k) for k in OPTIONS if k in sweep}, source)
    axes: dict[str, Any] = json.loads(json.dumps(_axes(sweep), default=str))  # TOML dates → strings
    if not axes:
        raise SweepError(
            f"{source}: sweep: expected at least one field path to sweep; got only {list(OPTIONS)}"
        )
    for key, value in axes.items():
        _check_axis(key, value, options.method, source)
    return options, axes


def _options(given: dict[str, Any], source: str) -> SweepOptions:
    method = given.get("method", "grid")
    if method not in ("grid", "random"):
        raise SweepError(f'{source}: sweep.method: expected "grid" or "random"; got {_show(method)}')
    samples = given.get("samples")
    if method == "random" and (type(samples) is not int or samples < 1):
        raise SweepError(
            f'{source}: sweep.samples: expected a positive integer with method = "random"; '
            f"got {_show(samples)}"
        )
    if method == "grid" and samples is not None:
        raise SweepError(
            f'{source}: sweep.samples: expected only with method = "random"; got {_show(samples)}'
        )
    objective = given.get("objective")
    if objective is None:
        if "mode" in given:
            raise SweepError(
                f"{source}: sweep.mode: expected only with sweep.objective; got {_show(given['mode'])}"
            )
        if method == "random":  # a search is for the best: its comparison is ranked, best first
            return SweepOptions(method, samples, (DEFAULT_OBJECTIVE, OBJECTIVES[DEFAULT_OBJECTIVE]))
        return SweepOptions(method, samples)
    if objective not in OBJECTIVES:
        raise SweepError(
            f"{source}: sweep.objective: expected one of {', '.join(OBJECTIVES)}; got {_show(objective)}"
        )
    mode = given.get("mode", OBJECTIVES[objective])
    if mode not in ("max", "min"):
        raise SweepError(f'{source}: sweep.mode: expected "max" or "min"; got {_show(mode)}')
    return SweepOptions(method, samples, (objective, mode))


def _check_axis(key: str, value: Any, method: str, source: str) -> None:
    where = f'{source}: sweep."{key}"'
    if isinstance(value, list):
        if not value:
            raise SweepError(f"{where}: expected a non-empty list of values; got []")
        shown = [json.dumps(v, sort_keys=True) for v in value]
        repeated = [v for i, v in enumerate(shown) if v in shown[:i]]
        if method == "grid" and repeated:  # two variants of the same experiment, one run dir's results
            raise SweepError(
                f"{where}: expected distinct values (each is one experiment); got {repeated[0]} more than "
                f"once in {_show(value)[:200]}"
            )
        return
    if not _is_distribution(value):
        raise SweepError(
            f"{where}: expected a non-empty list of values or a table "
            f"{{ {' | '.join(DISTRIBUTIONS)} = [...] }}; got {_show(value)}"
        )
    if method == "grid":
        raise SweepError(f'{where}: a distribution is sampled: expected sweep.method = "random"; got "grid"')
    ((kind, bounds),) = value.items()
    if kind == "choice":
        if not isinstance(bounds, list) or not bounds:
            raise SweepError(f"{where}.choice: expected a non-empty list of values; got {_show(bounds)}")
        return
    numbers = isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b) for b in bounds)
    ordered = numbers and (bounds[0] <= bounds[1] if kind == "int_uniform" else bounds[0] < bounds[1])
    if not ordered:
        relation = "low <= high" if kind == "int_uniform" else "low < high"
        raise SweepError(f"{where}.{kind}: expected [low, high] with {relation}; got {_show(bounds)}")
    if kind == "int_uniform" and not all(type(b) is int for b in bounds):
        raise SweepError(f"{where}.int_uniform: expected two integers [low, high]; got {_show(bounds)}")
    if kind == "log_uniform" and bounds[0] <= 0:
        raise SweepError(f"{where}.log_uniform: expected a positive low bound; got {_show(bounds)}")


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def plan_size(options: SweepOptions, axes: dict[str, Any]) -> int:
    """How many variants `points` gives, counted without making them (a grid: the product of its
    lists' lengths)."""
    if options.method == "random":
        assert options.samples is not None  # read_sweep requires it for random
        return options.samples
    return math.prod(len(values) for values in axes.values())


def points(options: SweepOptions, axes: dict[str, Any], seed: int, source: str) -> list[dict[str, Any]]:
    """The variants' settings (field path → value), in order."""
    if options.method == "grid":
        combos: list[dict[str, Any]] = [{}]
        for key, values in axes.items():
            combos = [{**c, key: v} for c in combos for v in values]
        return combos
    assert options.samples is not None  # read_sweep requires it for random
    return sample(axes, options.samples, seed, source)


def draw(value: Any, rng: np.random.Generator) -> Any:
    """One value of an axis: a list or `choice` picks one; the ranges draw a number."""
    kind, bounds = next(iter(value.items())) if isinstance(value, dict) else ("choice", value)
    if kind == "choice":
        return bounds[int(rng.integers(len(bounds)))]
    low, high = bounds
    if kind == "int_uniform":
        return int(rng.integers(low, high + 1))
    if kind == "log_uniform":
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))


def sample(axes: dict[str, Any], samples: int, seed: int, source: str) -> list[dict[str, Any]]:
    """`samples` distinct points drawn with `seed`: the same spec gives the same variants."""
    rng = np.random.default_rng(seed)
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(samples * MAX_TRIES_PER_SAMPLE):
        point = {key: draw(value, rng) for key, value in axes.items()}
        key = json.dumps(point, sort_keys=True)
        if key not in seen:
            seen.add(key)
            found.append(point)
            if len(found) == samples:
                return found
    raise SweepError(
        f"{source}: sweep.samples: expected {samples} distinct variants; the sweep's values give only "
        f"{len(found)} (widen the ranges or lower samples)"
    )


def _show(value: Any) -> str:
    return json.dumps(value, default=str)
