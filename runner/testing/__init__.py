"""Assertions for your own models and experiments: the invariants `runner check` proves, in your tests.

    with policy_scope(policy):  # the policy in force before any layer is built, restored after
        model = my_factory(input_shape=(32, 32, 3), num_classes=10)
    assert_mixed_precision_invariants(model, policy)

Each assertion raises AssertionError listing the failed findings, with the audit's own messages
(layer names and fixes). Errors and warnings fail; hints do not. Importing this module imports no
TensorFlow: each assertion loads it when called. Hypothesis strategies: `strategies`
(`runner.testing.strategies`).

Imports: spec, precision, training, reporting, session.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from runner.precision import checks
from runner.reporting.report import RunReport, parse_report
from runner.spec import ExperimentSpec, ExportSpec, PrecisionSpec, load_spec

__all__ = [
    "assert_finite_first_step",
    "assert_mixed_precision_invariants",
    "assert_resume_is_exact",
    "invariant_findings",
    "policy_scope",
    "resume_differences",
]


@contextlib.contextmanager
def policy_scope(policy: str) -> Iterator[None]:
    """Keras' global dtype policy set to `policy` for the block, the previous one restored after."""
    from runner.precision import policy as precision

    with precision.policy_scope(policy):
        yield


def _policy_name(policy: Any) -> str:
    """ "mixed_float16", or a Keras DTypePolicy's name."""
    return str(getattr(policy, "name", policy))


def invariant_findings(model: Any, policy: Any, float32_layers: Sequence[str] = ()) -> list[checks.Finding]:
    """The audit's findings on a built model: compute dtype of the layers with weights, float32
    variables, the final activation in float32, and (once compiled) a LossScaleOptimizer exactly
    under mixed_float16."""
    from runner.precision import policy as precision

    name = _policy_name(policy)
    optimizer = getattr(model, "optimizer", None)
    audit = precision.audit_model(model, optimizer)
    found = [
        checks.check_compute_dtype(audit, name, float32_layers),
        checks.check_variable_dtype(audit),
        checks.check_output_dtype(audit, name, "float32"),
    ]
    if optimizer is not None:
        found.append(checks.check_optimizer(audit, PrecisionSpec(policy=name)))  # type: ignore[arg-type]
    return found


def _require(findings: Sequence[checks.Finding], what: str) -> None:
    __tracebackhide__ = True  # pytest shows the assertion, not runner's frames
    if any(checks.fails_a_test(f) for f in findings):
        raise AssertionError(checks.describe_failures(findings, what))


def assert_mixed_precision_invariants(model: Any, policy: Any, float32_layers: Sequence[str] = ()) -> None:
    """The model keeps the mixed-precision rules under `policy` (invariants 1-3 of runner's design).
    `float32_layers`: layers meant to compute in float32 (as [checks] float32_layers in a spec)."""
    __tracebackhide__ = True
    _require(invariant_findings(model, policy, float32_layers), f"mixed-precision invariants under {policy}")


def assert_finite_first_step(model: Any, batch: tuple[Any, Any]) -> None:
    """One training step's loss and gradients on `batch` (x, y) are finite, unscaled and, under a
    LossScaleOptimizer, scaled by its loss scale; nothing is applied (the model stays as it was).
    The model must be compiled (its loss and optimizer are the step's)."""
    __tracebackhide__ = True
    from runner.precision import policy as precision

    if getattr(model, "optimizer", None) is None:
        raise AssertionError(
            "expected a compiled model (model.compile(optimizer=..., loss=...)); got one without an "
            "optimizer: the first step needs its loss and optimizer"
        )
    probe = precision.first_step_probe(model, *batch)
    _require(checks.first_step_findings(probe), "the first training step")


# What only the clock decides: never compared.
TIMING = {"seconds", "images_per_second"}


def _computed(report: RunReport) -> dict[str, Any]:
    """What training computed, by name: each epoch's metrics and loss scale, the test metrics, the
    skipped steps, the final loss scale and the final weights (SHA-256)."""
    scale = report.precision.loss_scale
    epochs = [e.model_dump(exclude=TIMING | {"epoch"}) | {"epoch": e.epoch} for e in report.metrics.epochs]
    return {
        **{f"epoch {e['epoch']} {k}": v for e in epochs for k, v in e.items() if k != "epoch"},
        "epochs": len(epochs),
        "test_loss": report.metrics.test_loss,
        "test_accuracy": report.metrics.test_accuracy,
        "skipped steps": scale.overflow_steps if scale else None,
        "final loss scale": scale.final if scale else None,
        "final weights SHA-256": report.weights_sha256,
    }


def resume_differences(
    resumed: RunReport | dict[str, Any], uninterrupted: RunReport | dict[str, Any]
) -> list[str]:
    """Where two reports (report.json's content, or the model) differ in what training computed
    (empty: none)."""
    a, b = (
        _computed(r if isinstance(r, RunReport) else parse_report(r, "report"))
        for r in (resumed, uninterrupted)
    )
    keys = dict.fromkeys([*b, *a])
    return [
        f"{key}: {a.get(key)!r} resumed, {b.get(key)!r} uninterrupted"
        for key in keys
        if a.get(key) != b.get(key)
    ]


def _as_spec(spec: ExperimentSpec | str | Path) -> ExperimentSpec:
    return spec if isinstance(spec, ExperimentSpec) else load_spec(spec)


def _for_resume(spec: ExperimentSpec) -> ExperimentSpec:
    """Deterministic ops (else two runs differ anyway), no TensorBoard files, no export: the same run."""
    runtime = spec.runtime.model_copy(update={"deterministic": True, "tensorboard": False})
    return spec.model_copy(update={"runtime": runtime, "export": ExportSpec(formats=[])})


def _ended(outcome: Any, expected: str, what: str) -> RunReport:
    __tracebackhide__ = True  # pytest shows the assertion, not runner's frames
    report: RunReport = outcome.record
    if outcome.status != expected:
        found = [checks.Finding(**f.model_dump()) for f in report.checks]
        failed = any(map(checks.fails_a_test, found))
        raise AssertionError(
            f"{what}: expected {expected}; it ended {outcome.status}"
            + (f" ({report.error})" if report.error else "")
            + f"; run directory: {outcome.run_dir}"
            + (f"\n{checks.describe_failures(found, 'its checks')}" if failed else "")
        )
    return report


def assert_resume_is_exact(spec: ExperimentSpec | str | Path, steps: int, output: Path | None = None) -> None:
    """Run the spec whole; run it again, stopped in-process after `steps` steps (at the first
    execution boundary from there, as Ctrl-C would), resume it, and compare what the two computed:
    each epoch's metrics and loss scale, the test metrics, skipped steps, the final weights.

    Both runs use deterministic ops, no TensorBoard and no export. The run directories go to
    `output`, else to a temporary folder, removed if the assertion holds. `steps` must be fewer
    than the run's.
    """
    __tracebackhide__ = True
    from runner.session import resume_experiment, run_experiment
    from runner.training.telemetry import StopRequest

    spec = _for_resume(_as_spec(spec))
    folder = output or Path(tempfile.mkdtemp(prefix="runner-resume-"))
    whole = _ended(run_experiment(spec, folder / "uninterrupted"), "completed", "the uninterrupted run")
    stopped = run_experiment(spec, folder / "interrupted", stop=StopRequest(after_steps=steps))
    _ended(stopped, "interrupted", f"the run stopped after {steps} steps")
    resumed = _ended(resume_experiment(stopped.run_dir), "completed", "the resumed run")
    differences = resume_differences(resumed, whole)
    if differences:
        raise AssertionError(
            f"expected the run resumed after {steps} steps to equal the uninterrupted one; "
            f"{len(differences)} difference(s) ({stopped.run_dir} against {whole.run_dir}):\n  "
            + "\n  ".join(differences[:10])
        )
    if output is None:
        shutil.rmtree(folder, ignore_errors=True)
