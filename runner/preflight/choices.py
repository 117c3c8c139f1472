"""What runner chooses for a run by measuring, not by assuming: XLA for `training.jit_compile =
"auto"`, the policy for `precision.policy = "auto"`, and whether to warn that the policy is slow
here. Each choice times the spec's own model (speed.py) on one device, aside from the run (its
random state and layer names untouched), and is recorded with its figures in the run directory's
speed.json, which a resume keeps.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any

from runner import runs
from runner.data.sources import Source
from runner.memory import give_back_freed
from runner.precision import checks
from runner.precision import policy as precision
from runner.preflight import speed
from runner.preflight.gate import build, compiled_as, preflight, training_scope, with_policy
from runner.spec import BadInput, DistributionSpec, ExperimentSpec
from runner.training import loop
from runner.training.workers import Setup

SPEED_FILE = "speed.json"  # the run's measured choices, written when made: a resume keeps them


def measure_spec(
    spec: ExperimentSpec,
    splits: Source,
    environment: dict[str, Any],
    steps: int | None,
    known: list[speed.Timing] | None = None,
) -> tuple[bool, str, dict[str, Any] | None]:
    """Time the spec's own model where a choice or a statement needs it (speed.py): its policy with
    every XLA setting the spec allows, float32 as TensorFlow runs it by default (without XLA where
    allowed), and when the policy is measured more than speed.SLOWER_WARNING times slower than
    float32, the other policy the same way (to name the fastest).
    Returns XLA's choice, why, and the record (None when `steps` is None: nothing timed). `known`:
    timings already taken (resolve_policy's). Call outside a distributed strategy: candidates are
    timed on one device."""
    policy, started = spec.precision.policy, time.perf_counter()
    options, rule = speed.xla_options(spec.training.jit_compile, spec.runtime, spec.distribution.strategy)
    if steps is None:
        return (
            (options[0], rule, None) if rule else (False, "auto: no XLA (not measured: no timed steps)", None)
        )
    key = _model_key(spec, splits, environment)
    with training_scope(spec.model_copy(update={"distribution": DistributionSpec()})):
        candidates = speed.spec_candidates(spec, splits, key, steps)
        candidates.budget_s, candidates.vet = speed.BUDGET_S, partial(fails_its_audit, spec, splits)
        order = speed.wanted([policy], options, reference=[min(options)])
        timings, options, rule = _without_xla_first(
            order, options, rule, candidates, known, run_steps(spec, splits), [policy]
        )
        xla, why = speed.xla_choice(timings, policy, options, rule)
        if speed.verdict(timings, (policy, xla)).slow:  # which policy is fastest here? (not compiled)
            others = [(p, min(options)) for p in speed.POLICIES if p not in {policy, "float32"}]
            timings += speed.measure(others, candidates, known=[*(known or []), *timings])
        taken = {(t.policy, t.xla) for t in timings}
        timings += [t for t in known or [] if (t.policy, t.xla) not in taken]  # the policy's choice
    give_back_freed()
    verdict = speed.verdict(timings, (policy, xla))
    where = "this GPU" if str(environment.get("device", "")).startswith("GPU") else "this CPU"
    statement = verdict.statement(where)
    if statement and verdict.slow and rule and len(options) == 1 and not xla:
        statement += f" (without XLA: {rule})"
    record = {
        "timings": [t.as_dict() for t in timings],
        "xla": {"setting": spec.training.jit_compile, "used": xla, "why": why},
        "ratio_to_float32": verdict.ratio,
        "slow": verdict.slow,
        "statement": statement,
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return xla, why, record


def run_steps(spec: ExperimentSpec, splits: Source) -> int:
    """The training steps of the whole run (every epoch)."""
    return loop.steps_per_epoch(splits.count("train"), spec.data.batch_size) * spec.training.epochs


def _without_xla_first(
    order: list[tuple[str, bool]],
    options: list[bool],
    rule: str | None,
    candidates: speed.Candidates,
    known: list[speed.Timing] | None,
    steps: int,
    policies: list[str],
) -> tuple[list[speed.Timing], list[bool], str | None]:
    """The candidates of `order`: with one XLA setting (the spec's, a rule's) all of them; with
    both, those without XLA first, and those with XLA only if the run (`steps` steps) is long
    enough for XLA's compile to pay back (speed.too_short_for_xla on `policies`). Returns the
    timings, the XLA options left and why XLA was left out (else the rule as given)."""
    if options != [False, True]:
        return speed.measure(order, candidates, known=known), options, rule
    timings = speed.measure([c for c in order if not c[1]], candidates, known=known)
    short = speed.too_short_for_xla(timings, policies, steps)
    if short is not None:
        return timings, [False], short
    timings += speed.measure([c for c in order if c[1]], candidates, known=[*(known or []), *timings])
    return timings, options, rule


def fails_its_audit(spec: ExperimentSpec, splits: Source) -> str | None:
    """Why not to time a model: it fails its audit (a float16 variable, a float16 output...), so the
    run will stop at its preflight and there is nothing to choose. Built aside from the run."""
    with precision.policy_scope(spec.precision.policy), precision.built_aside():
        model, optimizer = build(spec, splits)
        audit = precision.audit_model(model, optimizer, spec.precision.layers)
    found = checks.preflight_findings(audit, spec.precision, spec.checks, spec.data.batch_size)
    return "not timed: the model fails its audit (see the checks)" if checks.blocking(found) else None


def timing_steps(spec: ExperimentSpec, n_train: int) -> int:
    """Steps per timed execution: the spec's steps per execution, else speed.STEPS (past a few
    steps an execution's own cost per step is negligible), never more than an epoch has."""
    setting = spec.training.steps_per_execution
    most = setting if isinstance(setting, int) else speed.STEPS
    return max(1, min(most, loop.steps_per_epoch(n_train, spec.data.batch_size)))


def resolve_policy(
    spec: ExperimentSpec, splits: Source, environment: dict[str, Any], steps: int
) -> tuple[ExperimentSpec, dict[str, Any] | None, list[speed.Timing]]:
    """`precision.policy = "auto"`: the fastest of float32, mixed_bfloat16 and mixed_float16 as
    timed on this model here (each with the XLA setting it would train with), whose preflight
    passes: the policies are preflighted fastest first, and the first to pass runs. Returns the
    spec with that policy, the choice's record (None for a named policy) and the timings taken.
    When none passes, the fastest runs, and its own preflight stops it with its findings."""
    if spec.precision.policy != "auto":
        return spec, None, []
    started = time.perf_counter()
    options, rule = speed.xla_options(spec.training.jit_compile, spec.runtime, spec.distribution.strategy)
    one_device = with_policy(spec, "float32").model_copy(update={"distribution": DistributionSpec()})
    with training_scope(one_device):
        candidates = speed.spec_candidates(spec, splits, _model_key(spec, splits, environment), steps)
        candidates.budget_s = speed.BUDGET_S
        order = speed.wanted(list(speed.POLICIES), options)
        steps_of_run = run_steps(spec, splits)
        timings, options, rule = _without_xla_first(
            order, options, rule, candidates, None, steps_of_run, list(speed.POLICIES)
        )
        rows = _preflighted(spec, splits, timings, options, rule)
    give_back_freed()
    passed = [row for row in rows if row["preflight"] == "passed"]
    timed = [row for row in rows if row["step_ms"] is not None]
    if not timed:
        raise BadInput('precision.policy = "auto": no policy could be timed here (see runner check)')
    chosen = (passed or timed)[0]
    figures = ", ".join(f"{r['policy']} {r['step_ms']:.1f} ms" for r in timed)
    verdict = "whose preflight passed" if passed else "(no policy passed its preflight)"
    why = f"auto: {chosen['policy']}, the fastest measured here {verdict} ({figures} per step)"
    record = {
        "setting": "auto",
        "used": chosen["policy"],
        "why": why,
        "candidates": rows,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return with_policy(spec, chosen["policy"]), record, timings


def _preflighted(
    spec: ExperimentSpec,
    splits: Source,
    timings: list[speed.Timing],
    options: list[bool],
    rule: str | None,
) -> list[dict[str, Any]]:
    """One row per policy, fastest first: its best step, the XLA setting it would train with, and
    its preflight's verdict, run until one passes (the slower ones are then not checked)."""
    rows: list[dict[str, Any]] = []
    ranked = sorted(
        speed.POLICIES, key=lambda p: getattr(speed.best(timings, p), "step_ms", None) or math.inf
    )
    for policy in ranked:
        fastest = speed.best(timings, policy)
        row: dict[str, Any] = {"policy": policy, "step_ms": fastest.step_ms if fastest else None, "xla": None}
        if fastest is None:
            row["preflight"] = "not checked: not timed"
        elif any(r["preflight"] == "passed" for r in rows):
            row["preflight"] = "not checked: a faster policy passed"
        else:
            row["xla"] = speed.xla_choice(timings, policy, options, rule)[0]
            failed = _preflight_failures(compiled_as(with_policy(spec, policy), row["xla"]), splits)
            row["preflight"] = "passed" if not failed else f"failed: {', '.join(failed)}"
        rows.append(row)
    return rows


def _preflight_failures(spec: ExperimentSpec, splits: Source) -> list[str]:
    """The names of the blocking findings of the spec's preflight, on a model built aside."""
    with precision.policy_scope(spec.precision.policy), precision.built_aside():
        model, optimizer = build(spec, splits)
        _, found, _ = preflight(model, optimizer, spec, splits, xla_auto=True)
    return [f.name for f in checks.blocking(found)]


def _model_key(spec: ExperimentSpec, splits: Source, environment: dict[str, Any]) -> dict[str, Any]:
    threads = (environment.get("threads") or {}).get("intra_op")
    machine = speed.machine_key(environment["device_facts"], threads)
    return speed.model_key(spec, splits.input_shape, splits.num_classes, machine)


def kept_policy(run_dir: Path, spec: ExperimentSpec) -> tuple[ExperimentSpec, dict[str, Any] | None]:
    """A run's spec (spec.toml keeps "auto" as written) with the policy its run chose at the start
    (speed.json): a resume or an export trains or rebuilds what ran. None: nothing was chosen yet."""
    if spec.precision.policy != "auto":
        return spec, None
    kept = runs.read_json(run_dir / SPEED_FILE) or {}
    choice = kept.get("policy")
    if not isinstance(choice, dict) or choice.get("used") not in speed.POLICIES:
        return spec, None
    return with_policy(spec, choice["used"]), choice


def policy_for_run(spec: ExperimentSpec, setup: Setup) -> tuple[ExperimentSpec, dict | None, list]:
    """precision.policy = "auto" measured and chosen (resolve_policy), before the run
    directory exists; any other policy as it is."""
    if spec.precision.policy != "auto":
        return spec, None, []
    steps = timing_steps(spec, setup.splits.count("train"))
    with setup.memory.phase("policy"):
        return resolve_policy(spec, setup.splits, setup.environment, steps)
