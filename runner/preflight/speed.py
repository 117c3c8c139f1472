"""Measured, not assumed: how fast a training step is here, per policy, with XLA and without.

Every automatic choice about speed (`training.jit_compile = "auto"`, `precision.policy = "auto"`)
and every statement runner prints about speed comes from training steps timed on this machine.
CPU flags explain a figure; they never stand in for one. The case that taught it: an Intel Xeon
with AVX-512 FP16 and AMX runs float16 forward passes as fast as float32 but TensorFlow's float16
convolution *gradients* ~280x slower, which no rule read off the flags got right.

- `time_candidate`: one (policy, XLA) candidate on a freshly built model, timed as a run trains it
  (executions of several steps through the engine) in bounded time: a candidate already far
  behind the best one measured stops after one timed step.
- `measure`: several candidates in turn within a time budget, each cached per machine and model
  (`cache_dir()`): a sweep, a resume or the next run of the same model does not time it again.
- `machine_speed`: `runner env`'s figures, a small convolutional network in every policy both ways.
- `verdict`: what the timings say about a choice: the ratio to float32 and the fastest policy.

Importing this module imports no TensorFlow; the functions that time do.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1  # of the cached records: a change to how candidates are timed makes old ones unused
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
CUTOFF = 10.0  # a candidate one step of which takes this many times the best step stops there
STEPS = 8  # steps per timed execution: an execution's own overhead is then under 1 ms a step
EXECUTION_S = 0.25  # fewer steps when `steps` of them would take longer than this
BUDGET_S = 60.0  # a run's or a check's timing: candidates left past it are not timed
EXECUTIONS = 3  # the fastest of this many timed executions
SLOWER_WARNING = 2.0  # `run` warns when its policy is measured this many times slower than float32


@dataclass(frozen=True)
class Timing:
    """One candidate's training step as timed here. `step_ms` is None when it was not timed (`note`
    says why: XLA cannot compile the model, the budget was spent)."""

    policy: str
    xla: bool
    step_ms: float | None
    first_ms: float | None = None  # before the first clean step: tracing, readying, XLA's compile
    steps: int = 0  # steps per timed execution
    executions: int = 0  # timed executions (1: stopped after one step, far behind the best)
    note: str = ""
    measured_at: str = ""  # UTC, when it was timed (a cached figure keeps its own)
    cached: bool = False  # read from the cache, not timed by this process
    seconds: float = 0.0  # what timing it cost here, its model's build included

    @property
    def label(self) -> str:
        return f"{self.policy}{' + XLA' if self.xla else ''}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timing:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def best(timings: Iterable[Timing], policy: str | None = None) -> Timing | None:
    """The fastest timed candidate (of `policy`, if given)."""
    timed = [t for t in timings if t.step_ms is not None and (policy is None or t.policy == policy)]
    return min(timed, key=lambda t: t.step_ms or 0.0, default=None)


# ---- timing one candidate -------------------------------------------------------------------------


def time_candidate(
    model: Any, x: Any, y: Any, *, xla: bool, steps: int, best_s: float | None = None
) -> tuple[float, float, int, int]:
    """(seconds per step, seconds before the first clean step, steps per timed execution,
    executions) of training `model` (built, compiled, ready to train) on the batch (x, y), as a run
    trains it: executions of several steps in one call of runner's engine, XLA or not.

    An execution of no steps traces and readies the step; with XLA one step then compiles it. One
    step is timed, and a candidate already CUTOFF times slower than `best_s` stops there (a float16
    convolution gradient ~300x float32's costs one step, not a dozen). Otherwise EXECUTIONS
    executions of `steps` steps (fewer where they would take over EXECUTION_S) are timed, and the
    fastest counts. The model's
    weights change: time a throwaway copy."""
    from runner import compat
    from runner.training.engine import Engine  # imports TensorFlow

    tf = compat.tensorflow()
    engine = Engine(model, tf.distribute.get_strategy(), jit_compile=xla)
    batches = iter(engine.distribute(tf.data.Dataset.from_tensors((x, y)).repeat()))
    rate = float(compat.learning_rate(model.optimizer))

    def execution(n: int) -> float:
        start = time.perf_counter()
        engine.train(batches, np.full(n, rate, np.float32))
        return time.perf_counter() - start

    first_s = execution(0)
    one_s = execution(1)
    if xla:  # that step compiled the step
        first_s, one_s = first_s + one_s, execution(1)
    if best_s is not None and one_s > CUTOFF * best_s:
        return one_s, first_s, 1, 1
    n = max(1, min(steps, int(EXECUTION_S // max(one_s, 1e-6))))
    # The fastest of the executions, as timeit takes it: a slower one measured something else too
    # (a busy moment on a shared machine, a process still warming up its thread pools).
    return min(execution(n) / n for _ in range(EXECUTIONS)), first_s, n, EXECUTIONS


@dataclass
class Candidates:
    """What `measure` needs to time candidates of one model: `build(policy)` returns a fresh,
    compiled model ready to train (the caller's scope: device, seeds kept), `batch` one real batch
    (x, y), `key` what makes this model's timings comparable (the cache's key, with the machine's),
    `steps` the most steps per timed execution."""

    build: Callable[[str], Any]
    batch: tuple[Any, Any]
    key: dict[str, Any]
    steps: int = STEPS
    budget_s: float | None = None  # None: no limit
    cache: bool = True
    on_timed: Callable[[Timing], None] = field(default=lambda timing: None)
    # Asked once, before the first candidate is timed: a reason not to time any (a model that
    # fails its audit will not train: nothing to choose), or None.
    vet: Callable[[], str | None] = field(default=lambda: None)


def measure(
    wanted: list[tuple[str, bool]], candidates: Candidates, known: list[Timing] | None = None
) -> list[Timing]:
    """Each (policy, xla) of `wanted`, in that order (the reference first lets a hopeless candidate
    stop after one step), from the cache when this machine already timed it for this model. A
    candidate XLA cannot compile is recorded as such (not timed), and once the budget is spent the
    rest are recorded as not timed. `known`: timings this process already took (reused, and
    counted by the cutoff)."""
    results: list[Timing] = []
    known = known or []
    taken = {(t.policy, t.xla): t for t in known if t.step_ms is not None}
    started, refused = time.perf_counter(), None
    for policy, xla in wanted:
        key = candidate_key(candidates.key, policy, xla, candidates.steps)
        found = taken.get((policy, xla)) or (_read_cache(key) if candidates.cache else None)
        if found is None and refused is None:  # about to time the first: is there a point?
            refused = candidates.vet() or ""
        if found is not None:
            timing = found if found in known else replace(found, cached=True)
        elif refused:
            timing = Timing(policy, xla, None, note=refused)
        elif over_budget(candidates.budget_s, time.perf_counter() - started, results, xla):
            timing = Timing(
                policy, xla, None, note=f"not timed: the {candidates.budget_s:g} s budget was spent"
            )
        else:
            timing = _time_one(policy, xla, candidates, best([*known, *results]))
            if timing.step_ms is not None and candidates.cache:
                _write_cache(key, timing)
        results.append(timing)
        candidates.on_timed(timing)
    gc.collect()  # the candidates' models, optimizers and compiled steps: not the run's memory
    return results


def over_budget(budget_s: float | None, elapsed: float, done: list[Timing], xla: bool) -> bool:
    """Would the next candidate likely end past the budget, `elapsed` seconds into it? The costliest
    candidate of the same kind (with XLA or without: its compile, or its tracing) timed so far
    stands for it."""
    if budget_s is None:
        return False
    alike = [t.seconds for t in done if t.xla == xla and not t.cached]
    return elapsed + max(alike, default=0.0) > budget_s


def _time_one(policy: str, xla: bool, candidates: Candidates, best_so_far: Timing | None) -> Timing:
    from runner import compat

    errors, started = compat.tensorflow().errors, time.perf_counter()
    model = candidates.build(policy)
    best_s = best_so_far.step_ms / 1000 if best_so_far and best_so_far.step_ms else None
    try:
        step_s, first_s, steps, executions = time_candidate(
            model, *candidates.batch, xla=xla, steps=candidates.steps, best_s=best_s
        )
    except errors.OpError as exc:
        if not xla:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        note = f"XLA cannot compile this model ({first})"
        return Timing(policy, xla, None, note=note, measured_at=_now(), seconds=time.perf_counter() - started)
    finally:
        del model
    note = (
        f"stopped after one step: over {CUTOFF:g}x the best ({best_so_far.label})"
        if best_so_far and executions == 1
        else ""
    )
    return Timing(
        policy,
        xla,
        round(step_s * 1000, 3),
        round(first_s * 1000, 1),
        steps,
        executions,
        note,
        _now(),
        seconds=round(time.perf_counter() - started, 3),
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---- what the timings say -------------------------------------------------------------------------


def ratio_text(ratio: float) -> str:
    """ "2.8× slower" / "1.4× faster" / "about as fast" for a step-time ratio to float32."""
    if ratio > 1.05:
        return f"{ratio:.3g}× slower"
    if ratio < 0.95:
        return f"{1 / ratio:.3g}× faster"
    return "about as fast"


@dataclass(frozen=True)
class Verdict:
    """How the chosen (policy, xla) compares with float32 and with the other policies here."""

    chosen: Timing | None
    float32: Timing | None  # float32's fastest timed candidate
    fastest: Timing | None  # the fastest of every timed candidate
    ratio: float | None  # chosen step / float32's best step (> 1: slower)

    @property
    def slow(self) -> bool:
        return self.ratio is not None and self.ratio > SLOWER_WARNING

    def statement(self, where: str) -> str | None:
        """One sentence with the figures, or None when there is nothing measured to say."""
        if self.chosen is None or self.float32 is None or self.ratio is None:
            return None
        chosen, reference = self.chosen, self.float32
        if chosen.policy == "float32":
            return f"float32 step: {chosen.step_ms:.1f} ms {_with(chosen)} on {where}"
        text = (
            f"{chosen.policy} is {ratio_text(self.ratio)} than float32 on {where}"
            if self.ratio and abs(self.ratio - 1) > 0.05
            else f"{chosen.policy} is about as fast as float32 on {where}"
        )
        mine, theirs = (
            f"{chosen.step_ms:.1f} ms {_with(chosen)}",
            f"{reference.step_ms:.1f} ms {_with(reference)}",
        )
        text += f" ({mine} vs {theirs} per step)"
        fastest = self.fastest
        if self.slow and fastest is not None and fastest.policy != chosen.policy and fastest.step_ms:
            ratio = fastest.step_ms / (reference.step_ms or fastest.step_ms)
            named = f"{fastest.policy} ({_with(fastest)}) is {ratio_text(ratio)} than float32 here"
            text += "; float32 is the fastest measured here" if fastest.policy == "float32" else f"; {named}"
            text += "" if fastest.policy == "float32" else ", the fastest measured"
        return text


def _with(timing: Timing) -> str:
    return "with XLA" if timing.xla else "without XLA"


def verdict(timings: list[Timing], chosen: tuple[str, bool] | None) -> Verdict:
    """The chosen candidate (None: the fastest of its policy) against float32's fastest."""
    picked = next((t for t in timings if chosen and (t.policy, t.xla) == chosen and t.step_ms), None)
    reference = best(timings, "float32")
    ratio = None
    if picked is not None and reference is not None and picked.step_ms and reference.step_ms:
        ratio = round(picked.step_ms / reference.step_ms, 3)
    return Verdict(picked, reference, best(timings), ratio)


# ---- the cache ------------------------------------------------------------------------------------

CACHE_VARIABLE = "RUNNER_CACHE_DIR"


def cache_dir() -> Path:
    """Where measurements are kept: $RUNNER_CACHE_DIR, else $XDG_CACHE_HOME/runner, else
    ~/.cache/runner (the user's cache directory on Linux; the same place on other systems)."""
    given = os.environ.get(CACHE_VARIABLE)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "runner"


def machine_key(device_facts: dict[str, Any], threads: Any = None) -> dict[str, Any]:
    """What makes timings of one machine comparable: the CPU's model and every flag (a VM may hide
    some), its cores, the GPU, the Python, TensorFlow, Keras and runner versions, and the threads a
    run was given (a parallel sweep's share of the cores). Imports TensorFlow."""
    from runner import __version__, compat, runs

    _, flags = runs.cpu_model_and_flags()
    return {
        "format": FORMAT,
        "cpu": device_facts.get("cpu"),
        "cpu_flags": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
        "cpu_count": device_facts.get("cpu_count"),
        "gpu": device_facts.get("gpu"),
        "python": platform.python_version(),
        "tensorflow": compat.tensorflow().__version__,
        "keras": compat.keras_version(),
        "runner": __version__,
        "threads": threads,
    }


def candidate_key(model_key: dict[str, Any], policy: str, xla: bool, steps: int) -> str:
    text = json.dumps(
        {**model_key, "policy": policy, "xla": xla, "steps": steps}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_cache(key: str) -> Timing | None:
    path = cache_dir() / "timings" / f"{key}.json"
    try:
        return Timing.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError):
        return None  # none yet, or unreadable: time it again


def _write_cache(key: str, timing: Timing) -> None:
    """Atomically (temp file + rename): parallel sweep variants may time the same model. A cache
    that cannot be written (a read-only home) only means timing again next time."""
    folder = cache_dir() / "timings"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{key}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(timing.as_dict()), encoding="utf-8")
        temporary.replace(folder / f"{key}.json")
    except OSError:
        return


def forget() -> int:
    """Remove every cached measurement (`runner env --refresh`); how many files went."""
    removed = 0
    for path in (cache_dir() / "timings").glob("*.json"):
        try:
            path.unlink()
            removed += 1
        except OSError:
            continue
    machine = cache_dir() / "machine.json"
    if machine.exists():
        machine.unlink(missing_ok=True)
        removed += 1
    return removed


# ---- a spec's choices -----------------------------------------------------------------------------


def xla_options(setting: bool | str, runtime: Any, strategy: str) -> tuple[list[bool], str | None]:
    """The XLA settings a run may use, and when they are not measured, the rule that decided:
    the spec's own true or false; with deterministic ops XLA cannot compile a MaxPool gradient
    (TensorFlow: "do not yet have a deterministic XLA implementation"); under a strategy XLA
    cannot hold the replicas' gradient sum in the step. `runtime` is the spec's [runtime]."""
    if setting is True or setting is False:
        return [setting], f"training.jit_compile = {str(setting).lower()}"
    if runtime.deterministic:
        return [
            False
        ], "auto: no XLA, by rule: runtime.deterministic (XLA has no deterministic MaxPool gradient)"
    if strategy != "none":
        return [False], (
            f'auto: no XLA, by rule: distribution.strategy = "{strategy}" (XLA cannot compile the '
            "replicas' gradient sum into the step)"
        )
    return [False, True], None


def wanted(
    policies: list[str], options: list[bool], reference: list[bool] | None = None
) -> list[tuple[str, bool]]:
    """The order candidates are timed in: float32 first (the reference every ratio is to, and the
    best a hopeless candidate is stopped against: its cheapest setting), then each other policy
    with XLA and without, and float32's other setting last (the first a spent budget leaves out).
    `reference`: float32's settings when they are not `options` (a run's statement compares with
    float32 as TensorFlow runs it by default, without XLA, and so does not compile it)."""
    mine = reference if reference is not None and "float32" not in policies else options
    first = ("float32", min(mine))  # False before True: without XLA where allowed
    others = [(p, xla) for p in policies if p != "float32" for xla in sorted(options, reverse=True)]
    last = [("float32", xla) for xla in mine if ("float32", xla) != first]
    return [first, *others, *last]


XLA_PAYBACK_S = 10.0  # a run whose steps take less than this without XLA is not timed with it


def too_short_for_xla(timings: list[Timing], policies: list[str], steps: int) -> str | None:
    """Why XLA is not worth timing for a run of `steps` steps, or None: the fastest of `policies`
    without XLA would train the whole run in under XLA_PAYBACK_S, and XLA's compile alone takes
    seconds (2-3 s for the tutorial's CNN on a 2-core CPU), so it cannot pay for itself, nor
    would timing it."""
    fastest = min(
        (t for t in timings if t.policy in policies and not t.xla and t.step_ms), key=_step, default=None
    )
    if fastest is None or fastest.step_ms is None:
        return None
    seconds = fastest.step_ms / 1000 * steps
    if seconds >= XLA_PAYBACK_S:
        return None
    return (
        f"auto: no XLA: this run's {steps} steps take about {seconds:.1f} s without it, less than "
        f"the {XLA_PAYBACK_S:g} s in which an XLA compile could pay for itself (XLA not timed)"
    )


def _step(timing: Timing) -> float:
    return timing.step_ms or 0.0


def xla_choice(timings: list[Timing], policy: str, options: list[bool], rule: str | None) -> tuple[bool, str]:
    """Whether `policy`'s run compiles with XLA, and why: the rule's or the spec's single option,
    else the faster of the two as timed here (without XLA when XLA could not be timed)."""
    if len(options) == 1:
        return options[0], rule or ""
    mine = {t.xla: t for t in timings if t.policy == policy}
    with_xla, without = mine.get(True), mine.get(False)
    if with_xla is None or with_xla.step_ms is None:
        why = with_xla.note if with_xla is not None else "XLA not timed"
        return False, f"auto: no XLA ({why})"
    if without is None or without.step_ms is None:
        return True, f"auto: XLA, {with_xla.step_ms:.1f} ms per step (without it: not timed)"
    faster = with_xla.step_ms < without.step_ms
    ratio = (without.step_ms / with_xla.step_ms) if faster else (with_xla.step_ms / without.step_ms)
    measured = f"{with_xla.step_ms:.1f} ms per step with XLA, {without.step_ms:.1f} ms without"
    if faster:
        return True, f"auto: XLA, measured {ratio:.2g}× faster here ({measured})"
    return False, f"auto: no XLA, measured {ratio:.2g}× slower here ({measured})"


def model_key(
    spec: Any, input_shape: tuple[int, ...], classes: int, machine: dict[str, Any]
) -> dict[str, Any]:
    """What a step's time depends on beyond the policy and XLA: this machine, the model, the
    optimizer and loss, the batch and its shape, the device, deterministic ops."""
    precision = spec.precision.model_dump(mode="json", exclude={"policy"})
    return {
        **machine,
        "model": spec.model.model_dump(mode="json"),
        "precision": precision,
        "optimizer": spec.training.optimizer.model_dump(mode="json"),
        "label_smoothing": spec.training.label_smoothing,
        "batch": spec.data.batch_size,
        "input_shape": list(input_shape),
        "classes": classes,
        "device": spec.runtime.device,
        "deterministic": spec.runtime.deterministic,
    }


def spec_candidates(spec: Any, splits: Any, key: dict[str, Any], steps: int) -> Candidates:
    """Candidates of the spec's own model on its first real batch. Call inside the run's device
    scope, not a distributed strategy's (a candidate is timed on one device)."""
    batch = splits.first_batch(spec.data.batch_size)
    build = _builder(spec, splits.input_shape, splits.num_classes, splits.first_batch(1))
    return Candidates(build, batch, key, steps)


def _builder(
    spec: Any, input_shape: tuple[int, ...], classes: int, one: tuple[Any, Any]
) -> Callable[[str], Any]:
    """`build(policy)`: the spec's model under `policy`, compiled and ready to train on the example
    `one`, built fresh and aside from the run (its random state and layer names untouched)."""
    from runner.precision import policy as precision
    from runner.preflight.gate import with_policy
    from runner.training import loop

    def build(policy: str) -> Any:
        with precision.policy_scope(policy), precision.built_aside():
            model, _ = loop.build_for_training(with_policy(spec, policy), input_shape, classes)
            loop.ready_to_train(model, *one)
        return model

    return build


# ---- runner env: this machine ---------------------------------------------------------------------

MACHINE_BUDGET_S = 15.0  # runner env's measurement, TensorFlow's import aside
# The quickstart's model and batch: `runner env`'s ratios are those a run of it measures. (Batch 16
# was cheaper but its casts made mixed_bfloat16 1.1x slower than float32 where batch 64 is 1.4x
# faster, on an AMD EPYC.)
MACHINE_BATCH = 64
MACHINE_SHAPE = (32, 32, 3)
MACHINE_MODEL = {"kind": "seed_cnn", "filters": [32, 64, 64], "dense_units": 64}  # the tutorial's CNN


@dataclass
class MachineSpeed:
    """`runner env`'s measurement: a small convolutional and dense network (MACHINE_MODEL, the
    tutorial's CNN, as in the quickstart) trained in every policy, with and without XLA."""

    key: dict[str, Any]
    timings: list[Timing]
    seconds: float
    measured_at: str
    cached: bool = False
    batch: int = MACHINE_BATCH
    model: str = "the tutorial's CNN (seed_cnn) on 32×32×3 images"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "timings": [t.as_dict() for t in self.timings]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachineSpeed:
        timings = [Timing.from_dict(t) for t in data["timings"]]
        return cls(**{**data, "timings": timings})

    def ratios(self) -> dict[str, float | None]:
        """Each policy's fastest step against float32's fastest (< 1: faster than float32)."""
        reference = best(self.timings, "float32")
        found: dict[str, float | None] = {}
        for policy in POLICIES:
            fastest = best(self.timings, policy)
            usable = reference is not None and fastest is not None and reference.step_ms
            found[policy] = round(fastest.step_ms / reference.step_ms, 3) if usable else None  # type: ignore[union-attr,operator]
        return found


def machine_speed(
    device_facts: dict[str, Any], refresh: bool = False, on_timed: Callable[[Timing], None] | None = None
) -> MachineSpeed:
    """This machine's figures: from the cache when it holds this machine's (same CPU, flags, GPU
    and versions) and `refresh` is not asked, else measured now (at most MACHINE_BUDGET_S, each
    candidate reported to `on_timed` as it is done) and cached."""
    key = machine_key(device_facts)
    path = cache_dir() / "machine.json"
    if not refresh:
        try:
            found = MachineSpeed.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError):
            found = None
        if found is not None and found.key == key:
            found.cached = True
            return found
    started = time.perf_counter()
    timings = _time_machine(key, on_timed or (lambda timing: None))
    measured = MachineSpeed(key, timings, round(time.perf_counter() - started, 2), _now())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".machine.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(measured.as_dict()), encoding="utf-8")
        temporary.replace(path)
    except OSError:
        pass  # measured again next time
    return measured


def _time_machine(key: dict[str, Any], on_timed: Callable[[Timing], None]) -> list[Timing]:
    from runner.spec import ExperimentSpec

    spec = ExperimentSpec.model_validate({"name": "machine", "model": MACHINE_MODEL})
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (MACHINE_BATCH, *MACHINE_SHAPE), dtype=np.uint8)  # (64, 32, 32, 3) uint8
    y = rng.integers(0, 10, MACHINE_BATCH).astype(np.int64)
    build = _builder(spec, MACHINE_SHAPE, 10, (x[:1], y[:1]))
    candidates = Candidates(
        build, (x, y), key, STEPS, budget_s=MACHINE_BUDGET_S, cache=False, on_timed=on_timed
    )
    return measure(wanted(list(POLICIES), [False, True]), candidates)
