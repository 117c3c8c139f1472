"""One experiment end to end: plan → preflight checks → fit → evaluate → post checks → write.

This is the only module that knows the order of the steps. Each step is a function of the resolved
spec and the run directory.
"""

from __future__ import annotations

import contextlib
import resource
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from runner import checks, compat, precision, report, runs, train
from runner.data import Splits, load_data, pipeline
from runner.models import build_model
from runner.spec import ExperimentSpec, SpecError, spec_hash, spec_to_toml

EXIT = {"completed": 0, "check_failed": 1, "diverged": 3, "failed": 3, "interrupted": 130}


@dataclass
class RunOutcome:
    status: str
    exit_code: int
    run_dir: Path
    report: dict[str, Any]


@dataclass
class RunState:
    """What a run has learnt so far; whatever happens, it becomes report.json."""

    spec: ExperimentSpec
    run_dir: Path
    environment: dict[str, Any]
    data: dict[str, Any]
    status: str = "failed"
    audit: dict[str, Any] | None = None
    findings: list[checks.Finding] = field(default_factory=list)
    log: train.TrainingLog = field(default_factory=train.TrainingLog)
    test_metrics: dict[str, float] = field(default_factory=dict)
    loss_scale: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    advice: dict[str, Any] = field(default_factory=dict)  # will the policy be faster here?


@contextlib.contextmanager
def device_scope(device: str) -> Iterator[Any]:
    """Place the run on the spec's device and enter a tf.distribute strategy scope.

    The default strategy today; mirrored or multi-worker training becomes a spec field, not a rewrite.
    """
    tf = compat.tensorflow()
    placement = tf.device("/CPU:0") if device == "cpu" else contextlib.nullcontext()
    strategy = tf.distribute.get_strategy()
    with placement, strategy.scope():
        yield strategy


def require_device(device: str) -> None:
    """Bad input, before anything is written: a spec asking for a GPU this machine does not have."""
    if device == "gpu" and not compat.tensorflow().config.list_physical_devices("GPU"):
        raise SpecError(
            'runtime.device: expected a visible GPU for device = "gpu"; found none '
            "(use --set runtime.device=auto to run on the CPU)"
        )


def _build(spec: ExperimentSpec, splits: Splits) -> tuple[Any, Any]:
    """Model, optimizer and compile: call inside the policy scope."""
    output_dtype = "float32" if spec.precision.output_dtype == "float32" else None
    model = build_model(spec.model, splits.input_shape, splits.num_classes, output_dtype)
    optimizer = precision.wrap_optimizer(train.make_optimizer(spec.training), spec.precision)
    train.compile_model(model, optimizer, spec.training)
    return model, optimizer


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[metrics]}"),
        console=console,
    )


def _train(state: RunState, model: Any, splits: Splits, console: Console) -> None:
    spec = state.spec
    batch = spec.data.batch_size
    train_ds = pipeline(splits.x_train, splits.y_train, batch, spec.data.shuffle_seed)
    val_ds = pipeline(splits.x_val, splits.y_val, batch, None) if len(splits.y_val) else None
    telemetry = train.make_telemetry_callback(
        state.log,
        batch,
        len(splits.y_train),
        spec.training.steps_per_execution,
        state.run_dir / "metrics.jsonl",
    )
    steps = train.steps_per_epoch(len(splits.y_train), batch)
    with _progress(console) as progress:
        bar = train.make_progress_callback(progress, spec.training.epochs, steps, batch)
        train.fit(model, train_ds, val_ds, spec, [telemetry, bar])
    if state.log.diverged_at_step is not None:
        state.status = "diverged"
        state.error = f"non-finite loss at step {state.log.diverged_at_step}"
        return
    test_ds = pipeline(splits.x_test, splits.y_test, batch, None)
    results = model.evaluate(test_ds, verbose=0, return_dict=True)
    state.test_metrics = {
        "test_loss": float(results["loss"]),
        "test_accuracy": float(results["accuracy"]),
    }
    state.status = "completed"


def _loss_scale_summary(state: RunState, optimizer: Any) -> dict[str, Any]:
    if not compat.is_loss_scale_optimizer(optimizer):
        return {"initial": None, "final": None, "min": None, "overflow_steps": 0, "history": []}
    history = state.log.loss_scales
    scales = [s for _, s in history] or [state.spec.precision.initial_scale]
    return {
        "initial": state.spec.precision.initial_scale,
        "final": compat.current_loss_scale(optimizer),
        "min": min(scales),
        # The LossScaleOptimizer applies only finite steps; every other step was skipped.
        "overflow_steps": state.log.steps - compat.applied_steps(optimizer),
        "history": [[step, scale] for step, scale in history],
    }


def _train_checked(state: RunState, splits: Splits, console: Console) -> None:
    """Build, audit, stop on a failed invariant, else train and evaluate: inside the policy scope."""
    spec = state.spec
    p = spec.precision
    with device_scope(spec.runtime.device), precision.policy_scope(p.policy), precision.seeded(spec.seed):
        model, optimizer = _build(spec, splits)
        state.audit = precision.audit_model(model, optimizer)
        state.findings = checks.preflight_findings(state.audit, p.policy, p.loss_scale, p.output_dtype)
        if checks.blocking(state.findings):
            state.status, state.error = "failed", "preflight invariant check failed"
            return
        try:
            _train(state, model, splits, console)
        finally:
            state.loss_scale = _loss_scale_summary(state, optimizer)


def _post_findings(state: RunState, policy_before: str) -> list[checks.Finding]:
    found = [checks.check_policy_restored(policy_before, compat.global_policy_name())]
    if state.loss_scale.get("final") is not None:
        found.append(checks.check_loss_scale(state.loss_scale["final"], "after training", "final_loss_scale"))
    if state.status == "completed":
        found.append(checks.check_finite_metrics(state.test_metrics))
    return found


def _exit_code(state: RunState) -> int:
    if state.status == "completed":
        return EXIT["check_failed"] if checks.blocking(state.findings) else EXIT["completed"]
    if state.status == "failed" and state.error == "preflight invariant check failed":
        return EXIT["check_failed"]
    return EXIT[state.status]


def performance(log: train.TrainingLog, batch_size: int) -> dict[str, Any]:
    ips = log.images_per_second
    peak_device = None
    tf = compat.tensorflow()
    if tf.config.list_logical_devices("GPU"):
        peak_device = round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
    return {
        "images_per_second": round(ips, 1) if ips else None,
        "step_time_ms": round(1000 * batch_size / ips, 3) if ips else None,
        "peak_host_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_device_memory_mb": peak_device,
    }


def start_run(spec: ExperimentSpec, output: Path) -> tuple[RunState, Splits]:
    """Load the data (a DataError leaves nothing behind), then create and seed the run directory."""
    splits = load_data(spec.data, spec.seed)
    compat.keras()  # the slow import: after the data (a missing archive fails fast), before the bars
    require_device(spec.runtime.device)
    run_dir = runs.create_run_dir(output, spec.name, spec_hash(spec))
    environment = runs.environment_info()
    runs.write_text_atomic(run_dir / "spec.toml", spec_to_toml(spec))
    runs.write_json_atomic(run_dir / "environment.json", environment)
    fast, why = precision.mixed_precision_advice(spec.precision.policy, environment["device_facts"])
    state = RunState(spec, run_dir, environment, splits.summary(), advice={"faster": fast, "detail": why})
    return state, splits


def run_experiment(spec: ExperimentSpec, output: Path, console: Console) -> RunOutcome:
    """Run one experiment; bad input raises SpecError/DataError, everything else ends in a report."""
    state, splits = start_run(spec, output)
    policy_before = compat.global_policy_name()
    console.print(f"[dim]run directory[/] {state.run_dir}")
    if not state.advice["faster"]:
        console.print(f"[yellow]note:[/] {state.advice['detail']}")
    with compat.native_stderr_to(state.run_dir / "tensorflow.log") as terminal:
        progress_console = Console(file=terminal, force_terminal=console.is_terminal)
        try:
            _train_checked(state, splits, progress_console)
        except KeyboardInterrupt:
            state.status, state.error = "interrupted", "interrupted by the user (SIGINT)"
        except Exception as exc:  # noqa: BLE001 - a crash still writes its report
            state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
            runs.write_text_atomic(state.run_dir / "error.txt", traceback.format_exc())
    state.findings = state.findings + _post_findings(state, policy_before)
    perf = performance(state.log, spec.data.batch_size)
    data = report.make_report(state, perf)
    runs.write_json_atomic(state.run_dir / "report.json", data)
    return RunOutcome(state.status, _exit_code(state), state.run_dir, data)
