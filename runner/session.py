"""One experiment end to end: plan → preflight checks → fit → evaluate → post checks → write.

This is the only module that knows the order of the steps. Each step is a function of the resolved
spec and the run directory.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from runner import checkpoints, checks, compare, compat, documents, exits, loop, precision, runs
from runner.data import Splits, load_data, pipeline, train_pipeline
from runner.events import EventSink, Note, RunFinished, RunStarted, ignore
from runner.models import build_model
from runner.record import RunState, make_report, performance
from runner.spec import (
    BadInput,
    ExperimentSpec,
    PrecisionSpec,
    SpecValueError,
    load_spec,
    spec_hash,
    spec_to_toml,
)
from runner.telemetry import StopTraining, TrainingLog, stop_on_signals

PREFLIGHT_FAILED = "preflight check failed: not training (see the failed checks)"


@dataclass
class RunOutcome:
    status: str
    exit_code: int
    run_dir: Path
    report: dict[str, Any]


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
        raise SpecValueError(
            'runtime.device: expected a visible GPU for device = "gpu"; found none '
            "(use --set runtime.device=auto to run on the CPU)"
        )


def _build(spec: ExperimentSpec, splits: Splits) -> tuple[Any, Any]:
    """Model, optimizer and compile: call inside the policy scope."""
    output_dtype = "float32" if spec.precision.output_dtype == "float32" else None
    model = build_model(spec.model, splits.input_shape, splits.num_classes, output_dtype)
    optimizer = precision.wrap_optimizer(loop.make_optimizer(spec.training), spec.precision)
    loop.compile_model(model, optimizer, spec.training)
    return model, optimizer


def _callbacks(
    state: RunState, segment: Any, n_train: int, emit: EventSink, restore_metrics: Any
) -> list[Any]:
    from runner import callbacks  # imports Keras: only when training

    spec, run_dir = state.spec, state.run_dir
    batch = spec.data.batch_size
    max_skipped = spec.checks.max_consecutive_skipped_steps
    return [
        callbacks.Telemetry(state.log, batch, n_train, segment, run_dir / "metrics.jsonl", max_skipped, emit),
        callbacks.Checkpoints(
            run_dir, state.log, segment, state.stop, spec.runtime.checkpoint_every_steps, restore_metrics
        ),
        callbacks.ProgressEvents(emit, spec.training.epochs, segment.steps, batch, segment),
    ]


def _summaries(state: RunState) -> list[Any]:
    from runner import callbacks

    return (
        [callbacks.EpochSummaries(state.log, state.run_dir / "tensorboard")]
        if state.spec.runtime.tensorboard
        else []
    )


def _train(state: RunState, model: Any, splits: Splits, emit: EventSink) -> None:
    """fit from the start or from the checkpoint being resumed, then evaluate on the test split."""
    spec = state.spec
    batch, n_train = spec.data.batch_size, len(splits.y_train)
    steps = loop.steps_per_epoch(n_train, batch)
    start = (
        checkpoints.Position(**state.resume_from[1]["position"])
        if state.resume_from
        else checkpoints.Position()
    )
    val_ds = pipeline(splits.x_val, splits.y_val, batch) if len(splits.y_val) else None
    summaries = _summaries(state)
    try:
        for segment in loop.segments(start, spec.training.epochs, steps):
            epochs = range(segment.first, segment.stop)
            train_ds = train_pipeline(
                splits.x_train, splits.y_train, batch, spec.data.shuffle_seed, epochs, segment.skip
            )
            restore_metrics = partial(_restore_metrics, state, splits) if segment.skip else None
            callbacks = _callbacks(state, segment, n_train, emit, restore_metrics)
            loop.fit(model, train_ds, val_ds, segment, steps, [*callbacks, *summaries])
            if state.log.diverged_at_step is not None:
                state.status, state.error = "diverged", state.log.divergence
                return
    finally:
        for summary in summaries:
            summary.close()
    results = model.evaluate(pipeline(splits.x_test, splits.y_test, batch), verbose=0, return_dict=True)
    state.test_metrics = {"test_loss": float(results["loss"]), "test_accuracy": float(results["accuracy"])}
    state.status = "completed"


def _restore_metrics(state: RunState, splits: Splits, model: Any) -> None:
    """Put back the running means of the epoch a resume starts in the middle of (Keras has just reset
    them). The compiled metrics are built lazily, so one inference call on a batch builds them first."""
    assert state.resume_from is not None  # only a resume has metrics to put back
    compat.build_metrics(model, splits.x_train[:1], splits.y_train[:1])
    name, meta = state.resume_from
    checkpoints.restore(state.run_dir, name, meta, model, groups=("metrics",))


def _loss_scale_summary(state: RunState, optimizer: Any) -> dict[str, Any]:
    if state.log.loss_scale is not None:
        return state.log.loss_scale.summary()
    scale = compat.current_loss_scale(optimizer)  # None without loss scaling; initial if never trained
    return {"initial": scale, "final": scale, "min": scale, "overflow_steps": 0, "steps": 0, "history": []}


def preflight(
    model: Any, optimizer: Any, spec: ExperimentSpec, splits: Splits
) -> tuple[dict, list, dict[str, Any]]:
    """Audit the built model and probe one training step on a real batch: the run's gate.
    Returns the audit, the findings, and the probe (loss, gradients, its time)."""
    audit = precision.audit_model(model, optimizer)
    found = checks.preflight_findings(audit, spec.precision, spec.checks, spec.data.batch_size)
    batch = spec.data.batch_size
    probe = precision.first_step_probe(model, splits.x_train[:batch], splits.y_train[:batch])
    return audit, found + checks.first_step_findings(probe), probe


@contextlib.contextmanager
def training_scope(spec: ExperimentSpec) -> Iterator[None]:
    """Everything a model is built and trained inside, the same for run, resume and check: the device
    and strategy, the dtype policy (restored after), the seeds, and deterministic ops if asked."""
    with (
        device_scope(spec.runtime.device),
        precision.policy_scope(spec.precision.policy),
        precision.seeded(spec.seed),
        compat.op_determinism(spec.runtime.deterministic),
    ):
        yield


def _train_checked(state: RunState, splits: Splits, emit: EventSink) -> None:
    """Build, preflight, stop on a failed invariant, else train and evaluate: inside the policy scope."""
    spec = state.spec
    with training_scope(spec):
        model, optimizer = _build(spec, splits)
        state.audit, state.findings, probe = preflight(model, optimizer, spec, splits)
        if checks.blocking(state.findings):
            state.status, state.error = "failed", PREFLIGHT_FAILED
            return
        setting = spec.training.steps_per_execution
        if state.log.steps_per_execution is None or setting != "auto":  # a resume keeps its "auto"
            steps = loop.steps_per_epoch(len(splits.y_train), spec.data.batch_size)
            state.log.steps_per_execution = loop.resolve_steps_per_execution(setting, probe["seconds"], steps)
        if setting == "auto":  # compiled with 1 until now
            loop.compile_model(model, optimizer, spec.training, state.log.steps_per_execution[0])
        if state.resume_from is not None:
            name, meta = state.resume_from
            checkpoints.restore(state.run_dir, name, meta, model, groups=("model", "optimizer"))
        try:
            _train(state, model, splits, emit)
        finally:
            state.loss_scale = _loss_scale_summary(state, optimizer)


def _post_findings(state: RunState, policy_before: str) -> list[checks.Finding]:
    found = [checks.check_policy_restored(policy_before, compat.global_policy_name())]
    final_scale = state.loss_scale.get("final")
    if final_scale is not None:
        found.append(checks.check_loss_scale(final_scale, "after training", "final_loss_scale"))
    if state.status == "completed":
        found.append(checks.check_finite_metrics(state.test_metrics))
        skipped, steps = state.loss_scale.get("overflow_steps", 0), state.log.steps
        found += checks.declared_findings(state.spec.checks, state.test_metrics, skipped, steps)
    return found


def _exit_code(state: RunState) -> int:
    if state.status == "completed":
        return exits.CHECK_FAILED if checks.blocking(state.findings) else exits.COMPLETED
    if state.status == "failed" and state.error == PREFLIGHT_FAILED:
        return exits.CHECK_FAILED
    return exits.BY_STATUS[state.status]


def _release_previous_run() -> None:
    """Free what an earlier run in this process held and restart the peak-memory measurements."""
    if "keras" in sys.modules:
        compat.keras().backend.clear_session()
        tf = compat.tensorflow()
        for device in tf.config.list_logical_devices("GPU"):
            tf.config.experimental.reset_memory_stats(device.name)
    gc.collect()
    runs.reset_peak_host_memory()


def _prepare(spec: ExperimentSpec) -> tuple[Splits, dict[str, Any]]:
    """What a run or a resume needs before touching its directory: the data (a DataError leaves
    nothing behind), TensorFlow, the device, and the environment."""
    _release_previous_run()
    splits = load_data(spec.data, spec.seed)
    compat.keras()  # the slow import: after the data (a missing archive fails fast), before the bars
    require_device(spec.runtime.device)
    return splits, runs.environment_info()


def _new_state(spec: ExperimentSpec, run_dir: Path, environment: dict[str, Any], splits: Splits) -> RunState:
    fast, why = precision.mixed_precision_advice(spec.precision.policy, environment["device_facts"])
    return RunState(spec, run_dir, environment, splits.summary(), advice={"faster": fast, "detail": why})


@contextlib.contextmanager
def _new_run_dir(spec: ExperimentSpec, output: Path, environment: dict[str, Any]) -> Iterator[Path]:
    """A fresh run directory, locked while the block runs and seeded with the spec and environment.
    Bad input found inside (a model that cannot be built, a disk too full for spec.toml) removes it
    again: nothing trained, nothing to keep, no `failed` run left to puzzle over."""
    run_dir = runs.create_run_dir(output, spec.name, spec_hash(spec))
    with runs.run_lock(run_dir):
        try:
            runs.write_text_atomic(run_dir / "spec.toml", spec_to_toml(spec))
            runs.write_json_atomic(run_dir / "environment.json", environment)
        except OSError as exc:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise runs.OutputError(
                f"--output {output}: cannot write the run directory ({exc.strerror})"
            ) from None
        try:
            yield run_dir
        except BadInput:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise


def run_experiment(spec: ExperimentSpec, output: Path, emit: EventSink = ignore) -> RunOutcome:
    """Run one experiment; bad input raises BadInput (and leaves no run directory), everything else
    ends in a report."""
    runs.require_writable(output)  # before the data and TensorFlow take their seconds
    splits, environment = _prepare(spec)
    with _new_run_dir(spec, output, environment) as run_dir:
        return _execute(_new_state(spec, run_dir, environment, splits), splits, emit)


def resume_experiment(run_dir: Path, emit: EventSink = ignore) -> RunOutcome:
    """Continue an unfinished run from its newest checkpoint that reads back whole (from the start if
    it has none). The run directory is locked first: a run still training in it is not joined."""
    spec = load_spec(run_dir / "spec.toml")
    with runs.run_lock(run_dir):
        previous = compare.load_report(run_dir) if (run_dir / "report.json").exists() else {}
        if previous.get("status") == "completed":
            raise BadInput(f"{run_dir}: this run completed; nothing to resume")
        splits, environment = _prepare(spec)
        found, skipped = checkpoints.latest_restorable(run_dir)
        for reason in skipped:
            emit(Note(f"checkpoint skipped, {reason}", "warning"))
        state = _new_state(spec, run_dir, environment, splits)
        state.started_at = previous.get("started_at", state.started_at)
        state.resume_from = found
        state.resumes = [
            *previous.get("resumes", []),
            {"at": runs.utc_now(), "from": found[0] if found else None, "skipped": skipped},
        ]
        if found is not None:
            state.log = TrainingLog.from_state(found[1]["state"])
        # Epochs after the checkpoint will run again: their lines (a kill can leave one) go.
        done = found[1]["position"]["epoch"] if found else 0
        kept = [r for r in runs.read_jsonl(run_dir / "metrics.jsonl") if r.get("epoch", 0) <= done]
        runs.write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
        return _execute(state, splits, emit)


def _execute(state: RunState, splits: Splits, emit: EventSink) -> RunOutcome:
    policy_before = compat.global_policy_name()
    bad_input: BadInput | None = None
    emit(RunStarted(state.run_dir, state.spec.name, state.advice["faster"], state.advice["detail"]))
    with compat.native_stderr_to(state.run_dir / "tensorflow.log"), stop_on_signals(state.stop):
        try:
            _train_checked(state, splits, emit)
        except StopTraining as exc:
            state.status, state.error = "interrupted", f"interrupted by {exc}"
        except KeyboardInterrupt:
            state.status, state.error = (
                "interrupted",
                "interrupted at once (second signal): the last checkpoint stands",
            )
        except BadInput as exc:  # a model the spec names but that cannot be built
            state.status, state.error, bad_input = "failed", str(exc), exc
        except Exception as exc:  # noqa: BLE001 - a crash still writes its report
            state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
            runs.write_text_atomic(state.run_dir / "error.txt", traceback.format_exc())
    if state.status == "completed":  # a crash an earlier attempt left is not this run's error
        (state.run_dir / "error.txt").unlink(missing_ok=True)
    state.findings = state.findings + _post_findings(state, policy_before)
    data = make_report(state, performance(state.log, state.spec.data.batch_size))
    runs.write_json_atomic(state.run_dir / "report.json", data)
    _write_documents(state.run_dir, data, emit)
    if bad_input is not None:
        raise bad_input
    outcome = RunOutcome(state.status, _exit_code(state), state.run_dir, data)
    emit(RunFinished(outcome.run_dir, outcome.status, outcome.exit_code))
    return outcome


STRICT_DOCUMENTS = (
    "RUNNER_STRICT_DOCUMENTS"  # tests set it: a bug in the documents must not pass as a warning
)


def _write_documents(run_dir: Path, data: dict[str, Any], emit: EventSink) -> None:
    """report.md and report.html; report.json is already safe, so a failure here only warns (a
    finished run is never lost to a plotting problem), except under STRICT_DOCUMENTS."""
    try:
        documents.write_run_documents(run_dir, data)
    except Exception as exc:
        if os.environ.get(STRICT_DOCUMENTS):
            raise
        emit(Note(f"report.md/report.html not written: {type(exc).__name__}: {exc}", "warning"))


@dataclass
class CheckOutcome:
    exit_code: int
    audit: dict[str, Any]
    findings: list[checks.Finding]
    timing: dict[str, Any] | None
    environment: dict[str, Any]


def _time_against_float32(spec: ExperimentSpec, splits: Splits, model: Any, steps: int) -> dict[str, Any]:
    """Median step time of the spec's model and of the same model in float32, on one real batch."""
    x, y = splits.x_train[: spec.data.batch_size], splits.y_train[: spec.data.batch_size]
    policy_s = loop.time_steps(model, x, y, steps)
    float32_s = policy_s
    if spec.precision.policy != "float32":
        reference = spec.model_copy(update={"precision": PrecisionSpec(policy="float32")})
        with precision.policy_scope("float32"):
            float32_model, _ = _build(reference, splits)
            float32_s = loop.time_steps(float32_model, x, y, steps)
    return {
        "policy": spec.precision.policy,
        "steps": steps,
        "batch_size": spec.data.batch_size,
        "policy_step_ms": round(policy_s * 1000, 3),
        "float32_step_ms": round(float32_s * 1000, 3),
        "ratio": round(policy_s / float32_s, 3),
    }


def check_experiment(spec: ExperimentSpec, timing_steps: int = 5) -> CheckOutcome:
    """Build under the policy, audit every layer, probe one step, time policy against float32."""
    splits, environment = _prepare(spec)
    policy_before = compat.global_policy_name()
    timing = None
    with compat.native_stderr_to(os.devnull), training_scope(spec):
        model, optimizer = _build(spec, splits)
        audit, findings, _ = preflight(model, optimizer, spec, splits)
        if timing_steps and not checks.blocking(findings):
            timing = _time_against_float32(spec, splits, model, timing_steps)
    findings.append(checks.check_policy_restored(policy_before, compat.global_policy_name()))
    code = exits.CHECK_FAILED if checks.blocking(findings) else exits.COMPLETED
    return CheckOutcome(code, audit, findings, timing, environment)
