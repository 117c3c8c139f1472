"""`runner export RUN_DIR`: a finished (or interrupted) run's model rebuilt from its spec.toml, a
checkpoint's weights restored (by default those the report describes), exported and checked like a
run's own export, beside what the run holds: never over it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runner import compat, exits, runs
from runner.precision import checks
from runner.preflight import choices
from runner.preflight.gate import build, training_scope
from runner.reporting.report import load_report
from runner.spec import (
    BadInput,
    DistributionSpec,
    ExportSpec,
    load_spec,
)
from runner.training import checkpoints
from runner.training.distribution import Role
from runner.training.workers import prepare


@dataclass
class ExportOutcome:
    exit_code: int
    findings: list[checks.Finding]
    record: dict[str, Any]
    written_to: Path  # the run directory, or exports/<checkpoint>/ beside what it already holds


def _checkpoint_to_export(run_dir: Path, which: str) -> tuple[str, dict[str, Any]]:
    if which == "best":
        try:
            found = checkpoints.best(run_dir)
        except checkpoints.CheckpointError as exc:
            raise BadInput(str(exc)) from None
        if found is None:
            raise BadInput(
                f"{run_dir}: no best checkpoint (checkpoints/best.json): the run had no "
                "[training.early_stopping]; use --checkpoint latest"
            )
        return found
    latest, skipped = checkpoints.latest_restorable(run_dir)
    if latest is None:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise BadInput(
            f"{run_dir}: no checkpoint to export{why}; expected checkpoints/step-*.npz from training"
        )
    return latest


def reported_weights(run_dir: Path) -> str:
    """The checkpoint a finished run's report describes: early stopping's best epoch when the run
    restored it, else the latest (an interrupted run has no report: its latest checkpoint)."""
    try:
        stopping = load_report(run_dir).early_stopping
    except BadInput:
        return "latest"
    return "best" if stopping is not None and stopping.restored_epoch is not None else "latest"


def export_target(run_dir: Path, checkpoint: str) -> Path:
    """Where `runner export` writes: the run directory while it holds no export yet; beside what it
    holds otherwise (`exports/<checkpoint>/`, `-2`, `-3`… when taken): a run's artifacts are never
    overwritten."""
    from runner.export import artifacts as export

    taken = [export.EXPORT_DIR, *export.every_artifact_path()]
    if not any((run_dir / path).exists() for path in taken):
        return run_dir
    base = run_dir / "exports" / checkpoint
    target, n = base, 1
    while target.exists():
        n += 1
        target = base.with_name(f"{checkpoint}-{n}")
    return target


def asked_export(spec: ExportSpec, formats: list[str] | None, quantize: list[str] | None) -> ExportSpec:
    """The [export] `runner export` does: the spec's, or what --format/--quantize name instead (formats
    given on the command line come without the spec's quantizations unless --quantize names some),
    validated as the spec's is."""
    if not formats and quantize is None:
        chosen = spec if spec.formats else spec.model_copy(update={"formats": ["keras"]})
        return chosen
    fields = spec.model_dump()
    fields["formats"] = formats or list(spec.formats) or ["keras"]
    fields["quantize"] = quantize or []
    try:
        return ExportSpec.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadInput(f"--format/--quantize: {first['msg'].removeprefix('Value error, ')}") from None


def export_experiment(
    run_dir: Path, formats: list[str] | None, which: str | None = None, quantize: list[str] | None = None
) -> ExportOutcome:
    """`runner export`: rebuild the run's model from its spec.toml, restore a checkpoint's model
    variables (by default the weights the run reported), export it, run each file by its runtime and
    measure it on the test split; for any finished or interrupted run, never over what the run (or an
    earlier export) wrote."""
    from runner.export import artifacts as export
    from runner.export import conversions

    spec, _ = choices.kept_policy(run_dir, load_spec(run_dir / "spec.toml"))
    if spec.precision.policy == "auto":
        raise BadInput(f"{run_dir}: its policy was never chosen (no speed.json): nothing was trained")
    asked = asked_export(spec.export, formats, quantize)
    conversions.require_extra(asked.formats, "--format")
    spec = spec.model_copy(update={"distribution": DistributionSpec(), "export": asked})  # one device
    chosen = list(asked.formats)
    with runs.run_lock(run_dir):
        name, meta = _checkpoint_to_export(run_dir, which or reported_weights(run_dir))
        target = export_target(run_dir, name)
        target.mkdir(parents=True, exist_ok=True)
        setup = prepare(spec, Role())
        with compat.native_stderr_to(run_dir / "tensorflow.log"):
            with training_scope(spec):
                model, _ = build(spec, setup.splits)
                try:
                    checkpoints.restore(run_dir, name, meta, model, groups=("model",))
                except checkpoints.CheckpointError as exc:
                    raise BadInput(f"{run_dir}: {exc}") from None
            batch = export.fixed_batch(setup.splits)
            findings, record = export.export_model(
                target, model, spec, batch, chosen, checkpoint=name, splits=setup.splits
            )
    code = exits.CHECK_FAILED if checks.blocking(findings) else exits.COMPLETED
    return ExportOutcome(code, findings, record, target)
