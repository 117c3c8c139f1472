"""One experiment end to end: plan → preflight checks → fit → evaluate → post checks → write.

This is the only module that knows the order of the steps (of a run and of a resume). Each step is a
function of the resolved spec and the run directory, and lives in its room: the data and the
worker's setup (training/workers.py), the automatic choices and the gate (preflight/), the loop
(training/), the record and its documents (reporting/), the export (export/). `runner check` is
preflight/check.py, `runner export RUN_DIR` export/finished_run.py; both entry points are still
importable from here (`runner.session.check_experiment`, `export_experiment`), their path before.
"""

from __future__ import annotations

import contextlib
import json
import os
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from runner import compat, exits, runs
from runner.data.pipeline import TrainingBatches
from runner.data.sources import Source
from runner.events import EventSink, Note, RunFinished, RunStarted, ignore
from runner.export import conversions
from runner.export.finished_run import export_experiment as export_experiment
from runner.precision import checks
from runner.preflight import choices
from runner.preflight.check import check_experiment as check_experiment
from runner.preflight.gate import build, compiled_as, preflight, ready_to_train, training_scope
from runner.reporting import documents, tracking
from runner.reporting.record import RunState, make_report, memory_figures, performance, write_report
from runner.reporting.report import Performance, RunReport, load_report
from runner.spec import (
    BadInput,
    ExperimentSpec,
    load_spec,
)
from runner.training import checkpoints, loop, schedules, workers
from runner.training.distribution import Role
from runner.training.telemetry import (
    NOTHING_TO_SAVE,
    StopRequest,
    StopTraining,
    TrainingLog,
    nothing_to_save,
    stop_on_signals,
)
from runner.training.workers import Setup

PREFLIGHT_FAILED = "preflight check failed: not training (see the failed checks)"


@dataclass
class RunOutcome:
    status: str
    exit_code: int
    run_dir: Path
    record: RunReport  # what report.json holds, typed

    @property
    def report(self) -> dict[str, Any]:
        """report.json's content as JSON types (what the file holds)."""
        return self.record.to_json()


def _observers(
    state: RunState, segment: Any, n_train: int, emit: EventSink, restore_metrics: Any
) -> list[Any]:
    from runner.training import callbacks, trial  # import TensorFlow: only when training

    spec, run_dir, chief = state.spec, state.run_dir, state.role.is_chief
    batch = spec.data.batch_size
    max_skipped = spec.checks.max_consecutive_skipped_steps
    metrics_path = run_dir / "metrics.jsonl" if chief else None
    return [
        callbacks.Telemetry(state.log, batch, n_train, segment, metrics_path, max_skipped, emit),
        callbacks.EpochWatch(state.log, spec.training),  # before the epoch's checkpoint: it saves the state
        callbacks.Checkpoints(
            run_dir,
            state.log,
            segment,
            state.stop,
            spec.runtime.checkpoint_every_steps,
            restore_metrics,
            write=chief,
        ),
        callbacks.ProgressEvents(emit, spec.training.epochs, segment.steps, batch, segment),
        *([trial.TrialReports(state.trial_link)] if state.trial_link else []),  # after the checkpoint
    ]


def _summaries(state: RunState) -> list[Any]:
    from runner.training import callbacks

    wanted = state.spec.runtime.tensorboard and state.role.is_chief
    return [callbacks.EpochSummaries(state.log, state.run_dir / "tensorboard")] if wanted else []


def _agreement(engine: Any, state: RunState) -> Any:
    """What the workers settle at each execution boundary: a stop asked on any worker stops all at
    the same step, and all run the chief's number of steps next."""
    role = state.role

    def agree(plan: loop.ExecutionPlan) -> None:
        if role.workers == 1:
            return
        stop, plan.current = engine.agree(state.stop.signal is not None, plan.current, role.is_chief)
        if stop and state.stop.signal is None:
            state.stop.signal = "a stop request on another worker"

    return agree


def _train(state: RunState, engine: Any, splits: Source, emit: EventSink) -> None:
    """Train from the start or from the checkpoint being resumed, then evaluate on the test split."""
    spec = state.spec
    batch, n_train = spec.data.batch_size, splits.count("train")
    steps = loop.steps_per_epoch(n_train, batch)
    start = (
        checkpoints.Position(**state.resume_from[1]["position"])
        if state.resume_from
        else checkpoints.Position()
    )
    val = engine.distribute(splits.eval_dataset("validation", batch)) if splits.count("validation") else None
    plan = loop.ExecutionPlan(spec.training.steps_per_execution, spec.runtime.checkpoint_every_steps)
    agree, summaries = _agreement(engine, state), _summaries(state)
    timing = schedules.Timing(steps, spec.training.epochs)
    training = spec.training

    def rates_for(first: int, n: int) -> np.ndarray:
        scale = state.log.plateau.scale
        return schedules.rates(training.schedule, training.learning_rate, first, n, timing, scale)

    try:
        for segment in loop.segments(start, spec.training.epochs, steps):
            _fine_tune(state, engine, segment.first, emit)
            epochs = range(segment.first, segment.stop)
            order = TrainingBatches(
                batch, spec.data.shuffle_seed, epochs, segment.skip, spec.data.augmentation
            )
            train_ds = splits.train_dataset(order)
            restore_metrics = partial(_restore_metrics, state, splits) if segment.skip else None
            observers = [*_observers(state, segment, n_train, emit, restore_metrics), *summaries]
            phase = "first epoch" if segment.first == start.epoch else "later epochs"
            with state.memory.phase(phase):
                data = (train_ds, val)
                loop.train_segment(engine, data, segment, state.log, plan, observers, agree, rates_for)
            if state.log.diverged_at_step is not None:
                state.status, state.error = "diverged", state.log.divergence
                return
            if state.trial_link is not None and state.trial_link.pruned_at_epoch is not None:
                link = state.trial_link
                state.status = "pruned"
                value = link.reported[str(link.pruned_at_epoch)]
                state.error = (
                    f"pruned by the study's {link.pruning.get('kind')} pruner after epoch "
                    f"{link.pruned_at_epoch} ({link.metric} {value:.4g}); checkpoint written"
                )
                return
            if state.log.early_stopping.stopped_at_epoch is not None:
                break
    finally:
        state.log.steps_per_execution = plan.describe()
        for summary in summaries:
            summary.close()
    with state.memory.phase("evaluation"):
        _restore_best(state, engine.model)
        state.test_metrics = _test_metrics(engine, splits, batch)
    state.status = "completed"
    state.findings.append(_replicas_in_sync(engine, state))


def _fine_tune(state: RunState, engine: Any, epoch: int, emit: EventSink) -> None:
    """A base frozen for its first epochs (model.freeze_base_epochs) trains from this one on: the
    step is traced again (it would not see the new variables), and the report says where."""
    changed = loop.unfreeze(engine.model, epoch)
    if not changed:
        return
    engine.retrace()  # only ever unfrozen: a base is frozen when built, and trains from its epoch on
    state.fine_tuning = {"base": changed[0], "unfrozen_at_epoch": epoch + 1}
    emit(Note(f"epoch {epoch + 1}: {changed[0]} unfrozen, fine-tuned from now on (model.freeze_base_epochs)"))


def _test_metrics(engine: Any, splits: Source, batch: int) -> dict[str, float | None]:
    if not splits.count("test"):  # a mean over no images is not 0: there are none (data.test_fraction = 0)
        return {"test_loss": None, "test_accuracy": None}
    results = engine.evaluate(engine.distribute(splits.eval_dataset("test", batch)))
    return {"test_loss": results["loss"], "test_accuracy": results["accuracy"]}


def _restore_best(state: RunState, model: Any) -> None:
    """With early stopping's restore_best: the best epoch's weights (its checkpoint, which every
    worker reads) unless the run ended on it; the test metrics are then of these weights."""
    stopping = state.spec.training.early_stopping
    best = checkpoints.best(state.run_dir)
    last = state.log.epochs[-1].epoch if state.log.epochs else None
    if stopping is None or not stopping.restore_best or best is None or best[1]["position"]["epoch"] == last:
        return
    checkpoints.restore(state.run_dir, *best, model, groups=("model",))
    state.restored_epoch = best[1]["position"]["epoch"]


def _replicas_in_sync(engine: Any, state: RunState) -> checks.Finding:
    """Every worker's final weights (a SHA-256 each, gathered over the cluster) and every device's copy."""
    from runner.training.engine import all_sum, replicas_differing, weights_digest

    digest = weights_digest(engine.model)
    table = np.zeros((state.role.workers, 32))
    table[state.role.rank] = np.frombuffer(bytes.fromhex(digest), np.uint8)
    gathered = all_sum(engine.strategy, table, state.role.workers).round().astype(np.uint8)
    state.weights_sha256 = digest
    digests = [row.tobytes().hex() for row in gathered]
    return checks.check_replicas_in_sync(digests, replicas_differing(engine.model))


def _restore_metrics(state: RunState, splits: Source, model: Any) -> None:
    """Put back the running means of the epoch a resume starts in the middle of (the loop has just
    reset them). Every worker does (see compat.assign_summed)."""
    assert state.resume_from is not None  # only a resume has metrics to put back
    name, meta = state.resume_from
    checkpoints.restore(state.run_dir, name, meta, model, groups=("metrics",))


def _loss_scale_summary(state: RunState, optimizer: Any) -> dict[str, Any]:
    if state.log.loss_scale is not None:
        summary = state.log.loss_scale.summary()
        interval = state.spec.precision.growth_interval
        summary["skipped_per_interval"] = checks.skipped_per_interval(
            summary["history"], summary["steps"], interval
        )
        return summary
    scale = compat.current_loss_scale(optimizer)  # None without loss scaling; initial if never trained
    return {"initial": scale, "final": scale, "min": scale, "overflow_steps": 0, "steps": 0, "history": []}


def _choose(state: RunState, splits: Source, emit: EventSink) -> None:
    """XLA as measured (or as a rule says), recorded with the policy's choice in speed.json and the
    report, and a warning when the policy is measured much slower than float32 here. A resume
    keeps what its run chose at the start; on several workers the chief measures (a rule decides
    XLA for every worker)."""
    kept = runs.read_json(state.run_dir / choices.SPEED_FILE) if state.resumes else None
    if kept is not None and isinstance(kept.get("xla"), dict):
        state.speed = {**kept, "kept": "chosen when the run started (speed.json)"}
        state.xla = (bool(kept["xla"]["used"]), str(kept["xla"]["why"]))
        return
    steps = choices.timing_steps(state.spec, splits.count("train")) if state.role.is_chief else None
    xla, why, measured = choices.measure_spec(state.spec, splits, state.environment, steps, state.timed)
    state.xla = (xla, why)
    if measured is None:
        return
    state.speed = {**measured, **({"policy": state.policy_choice} if state.policy_choice else {})}
    if state.role.is_chief:
        runs.write_json_atomic(state.run_dir / choices.SPEED_FILE, state.speed)
    if state.speed["slow"] and state.speed["statement"]:
        emit(Note(state.speed["statement"], "warning"))


def _train_checked(state: RunState, splits: Source, emit: EventSink, strategy: Any) -> None:
    """Measure and choose, build, preflight, stop on a failed invariant, else train and evaluate:
    inside the policy scope."""
    with state.memory.phase("speed"):
        _choose(state, splits, emit)
    spec = compiled_as(state.spec, state.xla[0])
    with training_scope(spec, strategy):
        with state.memory.phase("model"):
            model, optimizer = build(spec, splits)
        with state.memory.phase("preflight"):
            auto = state.spec.training.jit_compile == "auto"
            state.audit, state.findings, probe = preflight(model, optimizer, spec, splits, xla_auto=auto)
        if probe.get("xla_refused"):
            state.xla = (False, f"auto: no XLA, which cannot compile this model ({probe['xla_refused']})")
        if checks.blocking(state.findings):
            state.status, state.error = "failed", PREFLIGHT_FAILED
            return
        with state.memory.phase("model"):
            ready_to_train(model, splits)
            if state.resume_from is not None:
                name, meta = state.resume_from
                checkpoints.restore(state.run_dir, name, meta, model, groups=("model", "optimizer"))
        from runner.training.engine import Engine  # imports TensorFlow: only when training

        strategy = compat.tensorflow().distribute.get_strategy()
        engine = Engine(model, strategy, jit_compile=state.xla[0], workers=state.role.workers)
        state.stop.started = True  # a signal from now on checkpoints first
        NOTHING_TO_SAVE.clear()
        try:
            _train(state, engine, splits, emit)
        finally:
            state.loss_scale = _loss_scale_summary(state, optimizer)
    if state.status == "completed" and state.role.is_chief:
        with state.memory.phase("export"):
            _export(state, model, splits)  # outside the strategy: the chief alone builds the float32 copy


def _export(state: RunState, model: Any, splits: Source) -> None:
    """[export]: the files, reloaded in a fresh process (the `export_roundtrip` check)."""
    from runner.export import artifacts as export

    formats = list(state.spec.export.formats)
    if export.skipped_by_environment():
        state.export = {"formats": [], "skipped": f"{export.SKIP_ENV} is set"}
        return
    if formats:
        found, state.export = export.export_model(
            state.run_dir, model, state.spec, export.fixed_batch(splits), formats, splits=splits
        )
        state.findings.extend(found)


def _post_findings(state: RunState, policy_before: str) -> list[checks.Finding]:
    found = [checks.check_policy_restored(policy_before, compat.global_policy_name())]
    final_scale = state.loss_scale.get("final")
    if final_scale is not None:
        found.append(checks.check_loss_scale(final_scale, "after training", "final_loss_scale"))
    if state.log.epochs:
        found.append(_schedule_followed(state))
    limit = state.spec.checks.max_steps_at_min_scale
    if state.loss_scale.get("history") and limit is not None:
        found.append(checks.check_steps_at_min_scale(state.loss_scale, limit))
    if state.status == "completed":
        if state.data.get("test"):
            found.append(checks.check_finite_metrics(state.test_metrics))
        else:  # a declared test-metric check below still fails: nothing shows it was met
            found.append(
                checks.Finding("finite_metrics", True, "no test split: no test metrics to check", "hint")
            )
        skipped, steps = state.loss_scale.get("overflow_steps", 0), state.log.steps
        found += checks.declared_findings(state.spec.checks, state.test_metrics, skipped, steps)
    return found


def _schedule_followed(state: RunState) -> checks.Finding:
    """The rates the optimizer reported, epoch by epoch, against the schedule replayed from scratch."""
    spec, records = state.spec, [e.as_dict() for e in state.log.epochs]
    steps = loop.steps_per_epoch(state.data["train"], spec.data.batch_size)
    timing = schedules.Timing(steps, spec.training.epochs)
    base = spec.training.learning_rate
    expected = schedules.expected_epoch_rates(spec.training.schedule, base, timing, records)
    return checks.check_learning_rates([r["learning_rate"] for r in records], expected)


def _exit_code(state: RunState) -> int:
    if state.status == "completed":
        return exits.CHECK_FAILED if checks.blocking(state.findings) else exits.COMPLETED
    if state.status == "failed" and state.error == PREFLIGHT_FAILED:
        return exits.CHECK_FAILED
    return exits.BY_STATUS[state.status]


def _new_state(spec: ExperimentSpec, run_dir: Path, setup: Setup) -> RunState:
    environment = setup.environment
    data = {**setup.splits.summary(), "augmentation": spec.data.augmentation.describe()}
    state = RunState(spec, run_dir, environment, data)
    state.memory = setup.memory
    state.role, state.distribution = setup.role, workers.distribution_record(spec, setup)
    return state


def run_experiment(
    spec: ExperimentSpec, output: Path, emit: EventSink = ignore, stop: StopRequest | None = None
) -> RunOutcome:
    """Run one experiment; bad input raises BadInput (and leaves no run directory), everything else
    ends in a report. On several workers every one calls this; the chief's outcome is the run's.
    `stop`: a request the caller holds (a planned stop: runner.testing's resume check)."""
    role = workers.role_of(spec)  # a bad TF_CONFIG is bad input before anything loads
    if spec.tracking.mlflow:
        tracking.require_mlflow()
    conversions.require_extra(spec.export.formats)
    runs.require_writable(output)  # before the data and TensorFlow take their seconds
    with nothing_to_save():  # until training starts (the CLI may then end it at once on a signal)
        return _run(spec, output, role, emit, stop)


def _run(
    spec: ExperimentSpec, output: Path, role: Role, emit: EventSink, stop: StopRequest | None
) -> RunOutcome:
    setup = workers.prepare(spec, role)
    chosen, choice, timed = choices.policy_for_run(spec, setup)
    with workers.run_directory(spec, output, setup) as run_dir:  # named, and spec.toml written, as given
        state = _new_state(chosen, run_dir, setup)
        state.policy_choice, state.timed = choice, timed
        if choice is not None:  # written now: a resume of a run killed before it trains keeps it
            runs.write_json_atomic(run_dir / choices.SPEED_FILE, {"policy": choice})
        state.stop = stop or state.stop
        return _execute(state, setup, emit)


def resume_experiment(run_dir: Path, emit: EventSink = ignore, mlflow: bool = False) -> RunOutcome:
    """Continue an unfinished run from its newest checkpoint that reads back whole (from the start if
    it has none). The run directory is locked first: a run still training in it is not joined.
    On several workers each runs this with the same directory; the chief alone locks and writes.
    `mlflow`: log it to MLflow at its end, whatever its [tracking] says."""
    spec = load_spec(run_dir / "spec.toml")
    if mlflow:
        spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"mlflow": True})})
    if spec.tracking.mlflow:
        tracking.require_mlflow()
    conversions.require_extra(spec.export.formats)
    role = workers.role_of(spec)
    with nothing_to_save(), runs.run_lock(run_dir) if role.is_chief else contextlib.nullcontext():
        previous = load_report(run_dir) if (run_dir / "report.json").exists() else None
        if previous is not None and previous.status in ("completed", "pruned"):
            raise BadInput(f"{run_dir}: this run {previous.status}; nothing to resume")
        setup = workers.prepare(spec, role)
        found, skipped = checkpoints.latest_restorable(run_dir)
        for reason in skipped:
            emit(Note(f"checkpoint skipped, {reason}", "warning"))
        chosen, choice = choices.kept_policy(run_dir, spec)
        timed: list = []
        if spec.precision.policy == "auto" and choice is None:  # killed before it chose: choose now
            chosen, choice, timed = choices.policy_for_run(spec, setup)
        state = _new_state(chosen, run_dir, setup)
        state.policy_choice, state.timed = choice, timed
        state.started_at = (previous and previous.started_at) or state.started_at
        state.resume_from = found
        state.resumes = [
            *(r.model_dump(by_alias=True) for r in (previous.resumes if previous else [])),
            {"at": runs.utc_now(), "from": found[0] if found else None, "skipped": skipped},
        ]
        if found is not None:
            state.log = TrainingLog.from_state(found[1]["state"])
        if role.is_chief:  # epochs after the checkpoint will run again: their lines (a kill can leave one) go
            done = found[1]["position"]["epoch"] if found else 0
            kept = [r for r in runs.read_jsonl(run_dir / "metrics.jsonl") if r.get("epoch", 0) <= done]
            runs.write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
        return _execute(state, setup, emit)


def _attempt(state: RunState, setup: Setup, emit: EventSink) -> BadInput | None:
    """Build and train, turning every way it can end into the state's status and error."""
    try:
        _train_checked(state, setup.splits, emit, setup.strategy)
    except StopTraining as exc:
        state.status, state.error = "interrupted", f"interrupted by {exc}"
    except KeyboardInterrupt:
        state.status, state.error = (
            ("interrupted", "interrupted at once (second signal): the last checkpoint stands")
            if state.stop.started
            else ("interrupted", f"interrupted by {state.stop.signal or 'a signal'} before training started")
        )
    except BadInput as exc:  # a model the spec names but that cannot be built
        state.status, state.error = "failed", str(exc)
        return exc
    except Exception as exc:  # noqa: BLE001 - a crash still writes its report
        state.status, state.error = "failed", setup.splits.explain(exc) or workers.failure(exc, state.role)
        if state.xla[0] and state.spec.training.jit_compile == "auto" and "XLA" in str(exc):
            state.error += ' (XLA was chosen by training.jit_compile = "auto": set it to false)'
        if state.role.is_chief:
            runs.write_text_atomic(state.run_dir / "error.txt", traceback.format_exc())
    return None


def _execute(state: RunState, setup: Setup, emit: EventSink) -> RunOutcome:
    policy_before = compat.global_policy_name()
    chief = state.role.is_chief
    emit(RunStarted(state.run_dir, state.spec.name))
    native_log = (
        compat.native_stderr_to(state.run_dir / "tensorflow.log") if chief else contextlib.nullcontext()
    )
    from runner.training import trial

    state.trial_link = trial.from_environment()  # a study's trial: reports each epoch, may be pruned
    if state.trial_link is not None and state.resumes and (state.run_dir / "report.json").exists():
        with contextlib.suppress(Exception):  # what was reported before the interruption, kept
            before = load_report(state.run_dir).trial
            if before is not None:
                state.trial_link.reported.update(before.reported)
    with native_log, stop_on_signals(state.stop), trial.stop_with_parent(state.trial_link, state.stop):
        bad_input = _attempt(state, setup, emit)
    if state.trial_link is not None:
        state.trial = state.trial_link.record()
    if state.status == "completed" and chief:  # a crash an earlier attempt left is not this run's error
        (state.run_dir / "error.txt").unlink(missing_ok=True)
    state.findings = state.findings + _post_findings(state, policy_before)
    with state.memory.phase("report"):
        report = make_report(state, performance(state.log, state.spec.data.batch_size, state.memory))
        if state.role.workers > 1:
            ended = {"status": state.status, "error": state.error, "steps": state.log.steps}
            workers.write_worker_file(
                state.run_dir, state.role, ended | {"weights_sha256": state.weights_sha256}
            )
        if chief:
            write_report(report)
            _write_documents(state.run_dir, report, emit)
    if chief:  # the report's own memory (the plots) too, now that it is known
        figures = report.performance.model_dump() | memory_figures(state.memory)
        report.performance = Performance.model_validate(figures)
        write_report(report)
    if chief and state.spec.tracking.mlflow and bad_input is None:  # last: from the files above; never fails
        report.tracking = tracking.track_run(state.run_dir, emit)
        write_report(report)
    if bad_input is not None:
        raise bad_input
    outcome = RunOutcome(state.status, _exit_code(state), state.run_dir, report)
    emit(RunFinished(outcome.run_dir, outcome.status, outcome.exit_code))
    return outcome


STRICT_DOCUMENTS = (
    "RUNNER_STRICT_DOCUMENTS"  # tests set it: a bug in the documents must not pass as a warning
)


def _write_documents(run_dir: Path, report: RunReport, emit: EventSink) -> None:
    """report.md and report.html; report.json is already safe, so a failure here only warns (a
    finished run is never lost to a plotting problem), except under STRICT_DOCUMENTS."""
    try:
        documents.write_run_documents(run_dir, report)
    except Exception as exc:
        if os.environ.get(STRICT_DOCUMENTS):
            raise
        emit(Note(f"report.md/report.html not written: {type(exc).__name__}: {exc}", "warning"))
