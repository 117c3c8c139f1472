"""A [sweep]'s points: the grid (every combination of the lists) or a random search (distributions
sampled with the spec's seed), and the options that say which, and what the comparison ranks by.

    [sweep]
    method = "random"                                   # or "grid" (the default)
    samples = 8
    objective = "test_accuracy"                         # the comparison marks the best variant
    "training.learning_rate" = { log_uniform = [1e-4, 1e-2] }
    "training.optimizer.kind" = ["adam", "sgd"]         # a list: every value (grid), one of them (random)

A sweep with `trials = N` (or `method = "tpe" | "cmaes"`, which need it) is a *study* instead: Optuna
chooses each trial's point as the earlier trials end (runner/studies.py), with the options of
STUDY_OPTIONS (`seed` as an integer is the sampler's seed; as a list it is the spec's seed, swept).

Plain Python and NumPy: `runner validate` prints the variants without TensorFlow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

OPTIONS = ("method", "samples", "objective", "mode", "trials", "storage", "pruning", "seeds")
MAX_SEEDS = 100  # repeats of each point: parity needs a few, not thousands
STUDY_OPTIONS = ("trials", "storage", "pruning", "seed")  # a study's alone (`seed`: when an integer)
METHODS = ("grid", "random", "tpe", "cmaes")
STUDY_METHODS = ("tpe", "cmaes")  # adaptive: only a study can run them
PRUNERS = ("median", "hyperband", "none")
PRUNING_OPTIONS = ("kind", "startup_trials", "warmup_epochs")
# What pruning can watch each epoch, for each objective: the validation metric (the training one
# where the data has no validation split, said in the report). Speed and memory are not per epoch.
PRUNABLE = {"test_accuracy": "accuracy", "val_accuracy": "accuracy", "test_loss": "loss", "val_loss": "loss"}
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
class Pruning:
    """[sweep.pruning]: Optuna's pruner and when it may start to prune."""

    kind: str = "none"
    startup_trials: int = 4  # trials that run to the end before any is pruned (median)
    warmup_epochs: int = 1  # epochs of each trial that are never pruned (median)


@dataclass(frozen=True)
class SweepOptions:
    method: str = "grid"
    samples: int | None = None
    objective: tuple[str, str] | None = None  # (metric, "max" | "min")
    trials: int | None = None  # a study's size: None for a plan fixed in advance
    seed: int | None = None  # a study's sampler seed; None: the spec's
    storage: str | None = None  # a study's Optuna storage; None: SQLite in the sweep directory
    pruning: Pruning = Pruning()
    seeds: int = 1  # each point run with the seeds seed, seed + 1, ... (parity over seeds)
    front: tuple[tuple[str, str], ...] = ()  # several objectives: the comparison marks their Pareto front

    @property
    def is_study(self) -> bool:
        return self.trials is not None


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
    given = {k: sweep.pop(k) for k in OPTIONS if k in sweep}
    if "seed" in sweep and type(sweep["seed"]) is int:  # the sampler's seed; a list is the spec's, swept
        given["seed"] = sweep.pop("seed")
    options = _options(given, source)
    axes: dict[str, Any] = json.loads(json.dumps(_axes(sweep), default=str))  # TOML dates → strings
    if not axes:
        raise SweepError(
            f"{source}: sweep: expected at least one field path to sweep; got only {list(OPTIONS)}"
        )
    for key, value in axes.items():
        _check_axis(key, value, options.method, source)
    if options.seeds > 1 and "seed" in axes:
        raise SweepError(
            f'{source}: sweep.seeds: repeats each point with seeds of its own; expected no "seed" axis '
            f"beside it; got both"
        )
    if options.is_study and options.method == "grid":
        size = math.prod(len(values) for values in axes.values())
        if options.trials is not None and options.trials > size:
            raise SweepError(
                f"{source}: sweep.trials: a grid study runs each point once; expected at most {size} (the "
                f"grid's points); got {options.trials}"
            )
    return options, axes


def _options(given: dict[str, Any], source: str) -> SweepOptions:
    method = given.get("method", "grid")
    if method not in METHODS:
        shown = " or ".join(f'"{m}"' for m in METHODS)
        raise SweepError(f"{source}: sweep.method: expected {shown}; got {_show(method)}")
    if method in STUDY_METHODS or "trials" in given:
        return _study_options(given, method, source)
    seeds = given.get("seeds", 1)
    if type(seeds) is not int or not 1 <= seeds <= MAX_SEEDS:
        raise SweepError(
            f"{source}: sweep.seeds: expected an integer 1..{MAX_SEEDS} (each point's runs, with the seeds "
            f"seed, seed + 1, ...); got {_show(seeds)}"
        )
    extra = [k for k in STUDY_OPTIONS if k in given]
    if extra:
        raise SweepError(
            f"{source}: sweep.{extra[0]}: expected only in a study (sweep.trials = N, which Optuna runs); "
            f"got {_show(given[extra[0]])} in a sweep without trials"
        )
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
    default = DEFAULT_OBJECTIVE if method == "random" else None  # a search is for the best: ranked
    found = _objectives(given, source, default)
    front = found if len(found) > 1 else ()
    return SweepOptions(method, samples, found[0] if found else None, seeds=seeds, front=front)


def _objective(given: dict[str, Any], source: str, default: str | None) -> tuple[str, str] | None:
    """The objective the comparison ranks by: the first of a list."""
    found = _objectives(given, source, default)
    return found[0] if found else None


def _objectives(given: dict[str, Any], source: str, default: str | None) -> tuple[tuple[str, str], ...]:
    """`objective = "test_accuracy"` or a list of them (a Pareto front), each with its mode: `mode`
    (a string for one objective, a list for several) or the metric's own direction."""
    objective = given.get("objective", default)
    if objective is None:
        if "mode" in given:
            raise SweepError(
                f"{source}: sweep.mode: expected only with sweep.objective; got {_show(given['mode'])}"
            )
        return ()
    names = objective if isinstance(objective, list) else [objective]
    if not names or len(set(map(str, names))) != len(names) or any(n not in OBJECTIVES for n in names):
        raise SweepError(
            f"{source}: sweep.objective: expected one of {', '.join(OBJECTIVES)}, or a list of distinct ones "
            f"(a Pareto front); got {_show(objective)}"
        )
    modes = given.get("mode", [OBJECTIVES[n] for n in names])
    modes = modes if isinstance(modes, list) else [modes]
    if len(modes) != len(names) or any(m not in ("max", "min") for m in modes):
        raise SweepError(
            f'{source}: sweep.mode: expected "max" or "min" for each objective ({len(names)}); '
            f"got {_show(given.get('mode'))}"
        )
    return tuple(zip(names, modes, strict=True))


def _study_options(given: dict[str, Any], method: str, source: str) -> SweepOptions:
    """A study's options: its size, the sampler's seed, where it is stored, its pruner."""
    trials = given.get("trials")
    if type(trials) is not int or trials < 1:
        raise SweepError(
            f'{source}: sweep.trials: expected a positive integer (a study of method = "{method}" '
            f"runs that many trials); got {_show(trials)}"
        )
    if "seeds" in given:
        raise SweepError(
            f"{source}: sweep.seeds: repeats the points of a plan (grid or random) for a parity verdict; "
            f"expected no seeds in a study (trials = N); got {_show(given['seeds'])}"
        )
    if "samples" in given:
        raise SweepError(
            f"{source}: sweep.samples: a study's size is sweep.trials; expected no samples; "
            f"got {_show(given['samples'])}"
        )
    seed = given.get("seed")
    if seed is not None and (type(seed) is not int or seed < 0):
        raise SweepError(f"{source}: sweep.seed: expected a non-negative integer; got {_show(seed)}")
    storage = given.get("storage")
    if storage is not None and (not isinstance(storage, str) or not storage.strip()):
        raise SweepError(
            f'{source}: sweep.storage: expected "sqlite" (the default), "journal", an Optuna RDB URL '
            f'(e.g. "postgresql://host/db") or "journal:PATH"; got {_show(storage)}'
        )
    objectives = _objectives(given, source, DEFAULT_OBJECTIVE)
    front = objectives if len(objectives) > 1 else ()
    if front and method == "cmaes":
        raise SweepError(
            f'{source}: sweep.method: CMA-ES optimizes one objective; expected "tpe", "random" or "grid" '
            f'for {len(front)} objectives; got "cmaes"'
        )
    pruning = _pruning(given.get("pruning"), objectives[0][0], source)
    if front and pruning.kind != "none":
        raise SweepError(
            f'{source}: sweep.pruning: Optuna prunes on one objective; expected kind = "none" with '
            f"{len(front)} objectives; got {_show(pruning.kind)}"
        )
    return SweepOptions(method, None, objectives[0], trials, seed, storage, pruning, front=front)


def _pruning(table: Any, objective: str, source: str) -> Pruning:
    if table is None:
        return Pruning()
    if not isinstance(table, dict):
        raise SweepError(f"{source}: sweep.pruning: expected a table {{ kind = ... }}; got {_show(table)}")
    unknown = sorted(set(table) - set(PRUNING_OPTIONS))
    if unknown:
        raise SweepError(
            f"{source}: sweep.pruning.{unknown[0]}: expected one of {', '.join(PRUNING_OPTIONS)}; "
            f"got {_show(table[unknown[0]])}"
        )
    kind = table.get("kind", "median")
    if kind not in PRUNERS:
        shown = " or ".join(f'"{p}"' for p in PRUNERS)
        raise SweepError(f"{source}: sweep.pruning.kind: expected {shown}; got {_show(kind)}")
    numbers = {}
    for key, low in (("startup_trials", 0), ("warmup_epochs", 0)):
        value = table.get(key, getattr(Pruning, key))
        if type(value) is not int or value < low:
            raise SweepError(
                f"{source}: sweep.pruning.{key}: expected an integer >= {low}; got {_show(value)}"
            )
        numbers[key] = value
    if kind != "none" and objective not in PRUNABLE:
        raise SweepError(
            f"{source}: sweep.pruning: pruning watches the objective each epoch; expected an objective "
            f'measured per epoch ({", ".join(PRUNABLE)}); got {_show(objective)} (set kind = "none")'
        )
    return Pruning(kind, **numbers)


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
        raise SweepError(
            f'{where}: a distribution is sampled: expected sweep.method = "random", "tpe" or "cmaes"; '
            'got "grid"'
        )
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
    if options.trials is not None:
        return options.trials
    if options.method == "random":
        assert options.samples is not None  # read_sweep requires it for random
        return options.samples * options.seeds
    return options.seeds * math.prod(len(values) for values in axes.values())


def points(options: SweepOptions, axes: dict[str, Any], seed: int, source: str) -> list[dict[str, Any]]:
    """The variants' settings (field path → value), in order; with `seeds`, each point's runs one
    after another, with `"seed"` = seed, seed + 1, ..."""
    if options.method == "grid":
        combos: list[dict[str, Any]] = [{}]
        for key, values in axes.items():
            combos = [{**c, key: v} for c in combos for v in values]
    else:
        assert options.samples is not None  # read_sweep requires it for random
        combos = sample(axes, options.samples, seed, source)
    if options.seeds == 1:
        return combos
    return [{**c, "seed": seed + k} for c in combos for k in range(options.seeds)]


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
