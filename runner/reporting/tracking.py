"""MLflow: a run logged from its files once it has ended, never from live training.

What a run directory holds (report.json, metrics.jsonl, spec.toml, the documents, plots, an exported
model) becomes one MLflow run: the resolved spec as params, tags, per-epoch metrics (step = epoch), the
loss scale and skipped steps per training step, the test metrics and throughput, and the files as
artifacts. A sweep is a parent run with one nested run per variant. Only MlflowClient's batch calls:
`mlflow.tensorflow.autolog` would log the LossScaleOptimizer wrapper's config and double-log with
runner's own telemetry.

Logging is idempotent: `tracking.json` in the run directory names the MLflow run (per tracking URI)
and a digest of the report it logged, so `runner mlflow-sync` logs a run once, and again only after it
changed (a resumed run replaces its earlier MLflow run). MLflow is an optional extra, imported here,
inside functions, only when tracking is asked for.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import __version__, runs
from runner.events import EventSink, Note
from runner.reporting.report import Epoch, LossScaleSummary, RunReport, load_comparison, load_report
from runner.spec import BadInput, experiment_fields, flatten_table

MARKER = "tracking.json"
INSTALL = "pip install -e '.[mlflow]'"
# A run's files worth keeping beside its metrics (model.keras and saved_model/: an [export] step's).
ARTIFACT_FILES = (
    "report.json",
    "report.md",
    "report.html",
    "spec.toml",
    "environment.json",
    "metrics.jsonl",
    "error.txt",
    "model.keras",
)
ARTIFACT_DIRS = ("plots", "saved_model")
SWEEP_ARTIFACTS = ("comparison.json", "comparison.md", "comparison.html")
# A pruned trial ended as its study asked: MLflow has no such state, KILLED is the nearest (its `status`
# tag says pruned).
MLFLOW_STATUS = {
    "completed": "FINISHED",
    "failed": "FAILED",
    "diverged": "FAILED",
    "interrupted": "KILLED",
    "pruned": "KILLED",
}
# MLflow's HTTP client retries with backoff for minutes by default: an unreachable server must cost
# seconds. Set for the call only (the user's own values win); measured in docs/tracking.md.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
# A database store (SQLite, PostgreSQL…) MLflow retries 10 times over ~100 s when it cannot open it
# (an unwritable folder, a server down): 3 tries, 0.4 s of waiting, are enough for a locked SQLite.
SQL_TRIES = 3
LOG_LOCK = ".tracking.lock"  # in a run (or sweep) directory while it is being logged
LOG_LOCK_WAIT_S = 300.0  # one run's logging takes seconds; a store that hangs is bounded by the above
PARAM_VALUE_LIMIT = 6000  # MLflow's MAX_PARAM_VAL_LENGTH: a longer value is refused
SWEEP_DIR_NAME = re.compile(r"^(?P<group>.+)-\d{8}T\d{6}Z-[0-9a-f]{8}(?:-\d+)?$")  # runs.create_run_dir's
EPOCH_SERIES_SKIPPED = {"epoch", "loss_scale"}  # loss_scale: its per-step series says more


class TrackingUnavailable(BadInput):
    """MLflow asked for where the optional extra is not installed."""


def require_mlflow() -> None:
    """Bad input, before anything runs: tracking asked for without the extra."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise TrackingUnavailable(
            f"tracking.mlflow: MLflow is not installed here; it is an optional extra: {INSTALL}"
        ) from None


# ---------------------------------------------------------------- what is logged (pure)


def params_of(spec: Mapping[str, Any]) -> dict[str, str]:
    """The resolved spec flattened to dotted keys (`precision.policy`), values as TOML-like text
    (`true`, `0.01`, `[16, 8]`; strings as they are), cut to MLflow's length limit."""
    flat = flatten_table(experiment_fields(spec))
    text = {key: value if isinstance(value, str) else json.dumps(value) for key, value in flat.items()}
    return {key: value[:PARAM_VALUE_LIMIT] for key, value in text.items()}


def tags_of(report: RunReport, environment: Mapping[str, Any]) -> dict[str, str]:
    """What a run is, for filtering in MLflow's UI (`tags.policy = "mixed_float16"`)."""
    env = report.environment
    tags = {
        "policy": report.precision.policy,
        "status": report.status,
        "spec_hash": report.spec_hash,
        "tensorflow": env.tensorflow,
        "keras": env.keras,
        "device": env.device,
        "runner_version": __version__,
        "runner.run_dir": report.run_dir,
        "mlflow.source.git.commit": environment.get("git_commit"),
        "mlflow.note.content": report.error,
        **(_trial_tags(report) if report.trial is not None else {}),
    }
    return {key: str(value) for key, value in tags.items() if value is not None}


def _trial_tags(report: RunReport) -> dict[str, Any]:
    """A study's trial (nested under the study's parent run): its number, and its state as the
    study records it: pruned, failed (it did not complete, or a check failed), else completed."""
    from runner.precision.checks import is_blocking

    assert report.trial is not None
    if report.status == "pruned":
        state = "pruned"
    elif report.status != "completed" or any(is_blocking(c) for c in report.checks):
        state = "failed"
    else:
        state = "completed"
    return {"study": report.trial.study, "trial": report.trial.number, "trial_state": state}


def epoch_metrics(records: list[Epoch]) -> list[tuple[str, float, int]]:
    """(key, value, step = epoch) for each number of each epoch's record (loss, val_accuracy,
    learning_rate, images_per_second, seconds, ...)."""
    return [
        (key, float(value), record.epoch)
        for record in records
        for key, value in record.model_dump().items()
        if key not in EPOCH_SERIES_SKIPPED and isinstance(value, int | float) and not isinstance(value, bool)
    ]


def loss_scale_series(loss_scale: LossScaleSummary | None) -> list[tuple[str, float, int]]:
    """The loss scale per training step, from report.json's change points ([step, scale]) and the last
    step, and `skipped_steps` (cumulative): one per halving at the change points (a step with
    non-finite gradients halves the scale), and the optimizer's exact count at the last step."""
    if loss_scale is None or not loss_scale.history:
        return []
    series: list[tuple[str, float, int]] = []
    skipped, previous = 0, None
    for step, scale in loss_scale.history:
        if previous is not None and scale < previous:
            skipped += max(round(_log2(previous / scale)), 1)
        series += [("loss_scale", float(scale), int(step)), ("skipped_steps", float(skipped), int(step))]
        previous = scale
    last = loss_scale.steps or 0
    if last > series[-1][2] and loss_scale.final is not None:
        series.append(("loss_scale", float(loss_scale.final), last))
    series.append(("skipped_steps", float(loss_scale.overflow_steps), max(last, series[-1][2])))
    return series


def _log2(ratio: float) -> float:
    import math

    return math.log2(ratio)


def summary_metrics(report: RunReport) -> dict[str, float]:
    """One value each: test metrics, throughput, memory, the loss scale's end."""
    metrics, perf, scale = report.metrics, report.performance, report.precision.loss_scale
    found = {
        "test_loss": metrics.test_loss,
        "test_accuracy": metrics.test_accuracy,
        "throughput_images_per_second": perf.images_per_second,
        "step_time_ms": perf.step_time_ms,
        "peak_host_memory_mb": perf.peak_host_memory_mb,
        "peak_device_memory_mb": perf.peak_device_memory_mb,
        "overflow_steps": scale.overflow_steps if scale else None,
        "final_loss_scale": scale.final if scale else None,
        "min_loss_scale": scale.min if scale else None,
    }
    return {key: float(value) for key, value in found.items() if isinstance(value, int | float)}


def report_digest(report: RunReport) -> str:
    """What was logged, to see whether a run changed since (its `tracking` section left out)."""
    logged = {key: value for key, value in report.to_json().items() if key != "tracking"}
    return hashlib.sha256(json.dumps(logged, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- where


def default_uri(reports_dir: Path) -> str:
    """A SQLite store beside the run directories (MLflow is retiring its plain file store)."""
    return f"sqlite:///{(reports_dir / 'mlflow.db').resolve()}"


def resolve_uri(configured: str | None, reports_dir: Path) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(reports_dir)


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store beside its database (MLflow's default is ./mlruns where you are)."""
    if not uri.startswith("sqlite:///"):
        return None  # a server decides its own
    return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()


def is_sweep_dir(path: Path) -> bool:
    if (path / "spec.toml").exists():
        return False
    return (path / "comparison.json").exists() or any(r.get("sweep") for r in read_marker(path).values())


def reports_dir(run_dir: Path) -> Path:
    """Where the run directories are: a sweep's variants count as its own (one store for the sweep)."""
    return run_dir.parent.parent if is_sweep_dir(run_dir.parent) else run_dir.parent


def read_marker(folder: Path) -> dict[str, dict[str, Any]]:
    """tracking.json: tracking URI → what was logged there (experiment_id, run_id, state, digest)."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_marker(folder: Path, uri: str, record: dict[str, Any] | None) -> None:
    marker = read_marker(folder)
    if record is None:
        marker.pop(uri, None)
    else:
        marker[uri] = record
    if marker:
        runs.write_json_atomic(folder / MARKER, marker)
    else:
        (folder / MARKER).unlink(missing_ok=True)


def bounded_http() -> contextlib.AbstractContextManager[None]:
    """MLflow's HTTP limits for the block only (the user's own values win), the environment restored."""
    return runs.environment_set({k: v for k, v in HTTP_LIMITS.items() if k not in os.environ})


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=_artifact_root(uri)))
    except MlflowException:  # made meanwhile by another process (a parallel sweep's variant)
        return str(client.get_experiment_by_name(name).experiment_id)


def _millis(iso: str | None) -> int:
    when = dt.datetime.fromisoformat(iso) if iso else dt.datetime.now(dt.timezone.utc)
    return int(when.timestamp() * 1000)


def short_error(exc: BaseException) -> str:
    """An exception in one line (MLflow's connection errors run to pages)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}{'…' if len(text) > 300 else ''}"


@contextlib.contextmanager
def mlflow_call() -> Iterator[None]:
    """Around every call into MLflow: bounded HTTP, and its INFO chatter (creating tables, migrations)
    kept off the terminal; both restored after."""
    import logging

    from mlflow.store.db import utils as db_utils

    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    tries = db_utils.MAX_RETRY_COUNT
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    db_utils.MAX_RETRY_COUNT = min(tries, SQL_TRIES)  # read by each engine creation: bounded here
    try:
        with bounded_http():
            yield
    finally:
        db_utils.MAX_RETRY_COUNT = tries
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# ---------------------------------------------------------------- one run


@dataclass(frozen=True)
class Target:
    """Where a run is logged: the store, the experiment, and a sweep's parent run (its record)."""

    uri: str
    experiment: str
    parent: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Logged:
    path: Path
    uri: str
    experiment_id: str
    run_id: str
    new: bool  # False: it was logged already, and nothing was done

    def as_dict(self) -> dict[str, Any]:
        return {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}


def target_for(
    run_dir: Path, report: RunReport, uri: str | None = None, experiment: str | None = None
) -> Target:
    """The run's own [tracking] unless overridden; nested under its sweep's parent run if it has one."""
    tracking = report.spec.get("tracking") or {}
    uri = uri or resolve_uri(tracking.get("tracking_uri"), reports_dir(run_dir))
    parent = read_marker(run_dir.parent).get(uri) if is_sweep_dir(run_dir.parent) else None
    name = experiment or tracking.get("experiment") or report.name
    return Target(uri, name, parent)


def log_run(run_dir: Path, target: Target) -> Logged:
    """Log a finished run from its files, once: again only if its report changed since (a resume),
    and then in place of the earlier MLflow run, never beside it. Two processes logging the same
    run at once (two `runner mlflow-sync`) take turns: the second finds it logged."""
    with runs.waiting_lock(
        run_dir / LOG_LOCK, LOG_LOCK_WAIT_S, "another process is logging this run to MLflow"
    ):
        return _log_run(run_dir, target)


def _log_run(run_dir: Path, target: Target) -> Logged:
    report = load_report(run_dir)
    digest = report_digest(report)
    old = read_marker(run_dir).get(target.uri, {})
    if old.get("state") == "logged" and old.get("digest") == digest:
        return Logged(run_dir, target.uri, old["experiment_id"], old["run_id"], new=False)
    client = _client(target.uri)
    if old.get("run_id"):  # a log cut short, or of the run before it was resumed
        with contextlib.suppress(Exception):
            client.delete_run(old["run_id"])
    parent = target.parent if target.parent and target.parent.get("run_id") else None
    experiment_id = (
        parent["experiment_id"] if parent else _experiment_id(client, target.experiment, target.uri)
    )
    tags = tags_of(report, _environment(run_dir))
    if parent:
        tags["mlflow.parentRunId"] = parent["run_id"]
    start = _millis(report.started_at)
    run_id = client.create_run(experiment_id, start_time=start, tags=tags, run_name=report.name).info.run_id
    record = {"experiment_id": experiment_id, "run_id": run_id, "state": "logging", "digest": digest}
    _write_marker(run_dir, target.uri, record)
    client.log_batch(run_id, metrics=_metrics(report, start), params=_params(report))
    _log_files(client, run_id, run_dir, ARTIFACT_FILES, ARTIFACT_DIRS)
    client.set_terminated(run_id, MLFLOW_STATUS.get(report.status, "FAILED"))
    _write_marker(run_dir, target.uri, {**record, "state": "logged", "logged_at": runs.utc_now()})
    return Logged(run_dir, target.uri, experiment_id, run_id, new=True)


def _environment(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / "environment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _params(report: RunReport) -> list[Any]:
    from mlflow.entities import Param

    return [Param(key, value) for key, value in params_of(report.spec).items()]


def _metrics(report: RunReport, start: int) -> list[Any]:
    """Epochs at their time in the run (start + the seconds so far), everything else at its end."""
    from mlflow.entities import Metric

    epochs = report.metrics.epochs
    elapsed, at = 0.0, {}
    for record in epochs:
        elapsed += record.seconds or 0.0
        at[record.epoch] = start + int(elapsed * 1000)
    end = start + int(elapsed * 1000)
    found = [Metric(key, value, at[step], step) for key, value, step in epoch_metrics(epochs)]
    found += [
        Metric(key, value, end, step) for key, value, step in loss_scale_series(report.precision.loss_scale)
    ]
    found += [Metric(key, value, end, 0) for key, value in summary_metrics(report).items()]
    return found


def _log_files(client: Any, run_id: str, folder: Path, files: tuple[str, ...], dirs: tuple[str, ...]) -> None:
    for name in files:
        if (folder / name).is_file():
            client.log_artifact(run_id, str(folder / name))
    for name in dirs:
        if (folder / name).is_dir():
            client.log_artifacts(run_id, str(folder / name), artifact_path=name)


def track_run(run_dir: Path, emit: EventSink) -> dict[str, Any]:
    """At a run's end, its report.json written: log it, or warn once and go on. Never raises.
    Returns report.json's `tracking` section (where it was logged, or why not)."""

    uri = None
    try:
        target = target_for(run_dir, load_report(run_dir))
        uri = target.uri
        if target.parent is not None and target.parent.get("state") == "failed":
            return {"tracking_uri": uri, "skipped": "the sweep's parent run could not be made (warned once)"}
        with mlflow_call():
            logged = log_run(run_dir, target)
    except Exception as exc:  # noqa: BLE001 - tracking never fails a run
        error = short_error(exc)
        emit(
            Note(
                f"MLflow: run not logged to {uri} ({error}); training is unaffected; log it later "
                f"with: runner mlflow-sync {run_dir}",
                "warning",
            )
        )
        return {"tracking_uri": uri, "error": error}
    emit(Note(f"logged to MLflow: {uri} (experiment {logged.experiment_id}, run {logged.run_id})"))
    return logged.as_dict()


# ---------------------------------------------------------------- a sweep


def sweep_group(sweep_dir: Path) -> str:
    """The name a sweep directory was made for (`<name>-<UTC stamp>-<hash>`)."""
    match = SWEEP_DIR_NAME.match(sweep_dir.name)
    return match["group"] if match else sweep_dir.name


def open_sweep(spec: Any, sweep_dir: Path, emit: EventSink) -> None:
    """Before a sweep's variants: its parent run, which each variant's process finds in the sweep
    directory's tracking.json and logs itself under. Never raises: a failure warns once, and the
    variants skip logging (`runner mlflow-sync SWEEP_DIR` logs them all later)."""
    if not spec.tracking.mlflow:
        return
    uri = resolve_uri(spec.tracking.tracking_uri, sweep_dir.parent)
    try:
        with mlflow_call():
            _open_parent(sweep_dir, uri, spec.tracking.experiment or sweep_group(sweep_dir))
    except Exception as exc:  # noqa: BLE001 - tracking never fails a sweep
        error = short_error(exc)
        _write_marker(sweep_dir, uri, {"sweep": True, "state": "failed", "error": error})
        emit(
            Note(
                f"MLflow: sweep not logged to {uri} ({error}); training is unaffected; log it later "
                f"with: runner mlflow-sync {sweep_dir}",
                "warning",
            )
        )


def _open_parent(sweep_dir: Path, uri: str, experiment: str, running: bool = True) -> dict[str, Any]:
    """The sweep's parent run: the one tracking.json names (a resumed sweep: running again), else a
    new one (made once however many processes ask at the same time)."""
    with runs.waiting_lock(
        sweep_dir / LOG_LOCK, LOG_LOCK_WAIT_S, "another process is logging this sweep to MLflow"
    ):
        return _opened_parent(sweep_dir, uri, experiment, running)


def _opened_parent(sweep_dir: Path, uri: str, experiment: str, running: bool) -> dict[str, Any]:
    record = read_marker(sweep_dir).get(uri, {})
    client = _client(uri)
    if record.get("run_id"):
        if running:
            client.update_run(record["run_id"], status="RUNNING")
        return record
    experiment_id = _experiment_id(client, experiment, uri)
    tags = {"runner.sweep": "true", "runner.run_dir": str(sweep_dir), "runner_version": __version__}
    run = client.create_run(experiment_id, tags=tags, run_name=sweep_dir.name)
    record = {"sweep": True, "experiment_id": experiment_id, "run_id": run.info.run_id, "state": "open"}
    _write_marker(sweep_dir, uri, record)
    return record


def close_sweep(sweep_dir: Path, emit: EventSink) -> None:
    """After the variants: the parent run's status, and the comparison as its artifacts. A sweep that
    ran nothing (its directory about to go) loses its parent run and tracking.json. Never raises."""
    ran = (sweep_dir / "comparison.json").exists()
    for uri, record in read_marker(sweep_dir).items():
        if not record.get("sweep") or (ran and not record.get("run_id")):  # not opened: warned then
            continue
        try:
            with mlflow_call():
                if ran:
                    _close_parent(sweep_dir, uri, record)
                else:
                    _write_marker(sweep_dir, uri, None)
                    if record.get("run_id"):
                        _client(uri).delete_run(record["run_id"])
        except Exception as exc:  # noqa: BLE001 - tracking never fails a sweep
            emit(Note(f"MLflow: sweep's parent run not finished ({short_error(exc)})", "warning"))


def _close_parent(sweep_dir: Path, uri: str, record: Mapping[str, Any]) -> Logged:
    from mlflow.entities import RunTag

    comparison = load_comparison(sweep_dir)
    digest = hashlib.sha256(json.dumps(comparison.to_json(), sort_keys=True).encode()).hexdigest()[:16]
    new = not (record.get("state") == "logged" and record.get("digest") == digest)
    if new:
        client = _client(uri)
        statuses = [row.status for row in comparison.rows]
        status = sweep_status(statuses)
        tags = [RunTag("status", status.lower()), RunTag("variants", str(len(statuses)))]
        client.log_batch(record["run_id"], tags=tags)
        _log_files(client, record["run_id"], sweep_dir, SWEEP_ARTIFACTS, ())
        client.set_terminated(record["run_id"], status)
        _write_marker(sweep_dir, uri, {**record, "state": "logged", "digest": digest})
    return Logged(sweep_dir, uri, record["experiment_id"], record["run_id"], new)


def sweep_status(statuses: Sequence[str]) -> str:
    """The parent run's MLflow status: the worst of its variants' (a study's pruned trial is one of
    its results, not a stop)."""
    mapped = {MLFLOW_STATUS.get(s, "FAILED") for s in statuses if s != "pruned"}
    return next((s for s in ("KILLED", "FAILED") if s in mapped), "FINISHED")


# ---------------------------------------------------------------- runner mlflow-sync


class SyncFailed(BadInput):
    """MLflow refused or could not be reached: nothing to train again, the files stand."""


def sync(paths: list[Path], uri: str | None = None, experiment: str | None = None) -> list[Logged]:
    """Log finished runs and sweeps (a parent run, its variants nested) that were not logged, or
    changed since; each once. Bad input (not a run, MLflow unreachable) raises BadInput."""
    require_mlflow()
    from runner.reporting.compare import expand_run_dirs

    done: list[Logged] = []
    for path in paths:
        variants = expand_run_dirs([path])  # a run, or a sweep's variants; else RunDirError
        target_uri = uri
        try:
            with mlflow_call():
                if variants == [path]:
                    target = target_for(path, load_report(path), uri, experiment)
                    target_uri = target.uri
                    done.append(log_run(path, target))
                else:
                    target_uri = uri or target_for(variants[0], load_report(variants[0])).uri
                    done += _sync_sweep(path, variants, target_uri, experiment)
        except BadInput:
            raise
        except Exception as exc:
            raise SyncFailed(f"{path}: not logged to MLflow at {target_uri}: {short_error(exc)}") from None
    return done


def _sync_sweep(sweep_dir: Path, variants: list[Path], uri: str, experiment: str | None) -> list[Logged]:

    tracking = load_report(variants[0]).spec.get("tracking") or {}
    name = experiment or tracking.get("experiment") or sweep_group(sweep_dir)
    parent = _open_parent(sweep_dir, uri, name, running=False)
    done = [log_run(v, Target(uri, "", parent)) for v in variants]
    if (sweep_dir / "comparison.json").exists():
        return [_close_parent(sweep_dir, uri, read_marker(sweep_dir)[uri]), *done]
    _client(uri).set_terminated(parent["run_id"], sweep_status([load_report(v).status for v in variants]))
    return done
