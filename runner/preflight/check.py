"""`runner check`: what a run would do before it trains, and nothing after: the policy timed against
float32 (and XLA both ways where "auto"), the model built under the policy, every layer audited, one
step probed as the run would compile it. Nothing is written."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from runner import compat, exits
from runner.data.image_folder import UndecodableFiles
from runner.data.sources import bad_files
from runner.precision import checks
from runner.preflight import choices
from runner.preflight.gate import build, compiled_as, preflight, training_scope
from runner.spec import (
    DistributionSpec,
    ExperimentSpec,
)
from runner.training.distribution import Role
from runner.training.telemetry import (
    nothing_to_save,
)
from runner.training.workers import prepare


@dataclass
class CheckOutcome:
    exit_code: int
    audit: dict[str, Any]
    findings: list[checks.Finding]
    speed: dict[str, Any] | None  # the measured candidates and what they say (None: --steps 0)
    environment: dict[str, Any]


def check_experiment(spec: ExperimentSpec, timing_steps: int = 5) -> CheckOutcome:
    """Time the policy against float32 (and XLA both ways where "auto"), build under the policy,
    audit every layer, probe one step as the run would compile it. `timing_steps` 0: nothing
    timed, and "auto" XLA probes without it (a choice not measured is not made); a policy of
    "auto" is chosen by timing whatever `timing_steps` says (it cannot be chosen otherwise)."""
    # On one device, whatever the spec's strategy: a distributed run checks its own in its preflight.
    spec = spec.model_copy(update={"distribution": DistributionSpec()})
    with nothing_to_save():
        return _check(spec, timing_steps)


def _check(spec: ExperimentSpec, timing_steps: int) -> CheckOutcome:
    setup = prepare(spec, Role())
    splits, environment = setup.splits, setup.environment
    # Every image decoded once, as the run will: each bad one named (skip_bad_files has left them out).
    undecodable = [] if spec.data.skip_bad_files else bad_files(splits)
    if undecodable:
        raise UndecodableFiles(undecodable)
    policy_before = compat.global_policy_name()
    with compat.native_stderr_to(os.devnull):
        spec, choice, known = choices.policy_for_run(spec, setup)
        xla, why, timed = choices.measure_spec(spec, splits, environment, timing_steps or None, known)
        if choice is not None:  # what was timed to choose it, whatever else was
            timed = timed or {"timings": [t.as_dict() for t in known], "xla": {"used": xla, "why": why}}
            timed["policy"] = choice
        auto, spec = spec.training.jit_compile == "auto", compiled_as(spec, xla)
        with training_scope(spec):
            model, optimizer = build(spec, splits)
            audit, findings, _ = preflight(model, optimizer, spec, splits, xla_auto=auto)
    findings.append(checks.check_policy_restored(policy_before, compat.global_policy_name()))
    code = exits.CHECK_FAILED if checks.blocking(findings) else exits.COMPLETED
    return CheckOutcome(code, audit, findings, timed, environment)
