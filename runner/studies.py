"""A study: a [sweep] with `trials = N`, run by Optuna. runner keeps the TOML search space and its
rules (every trial is a run directory of its own, checked like any run); Optuna chooses each
trial's point from the trials that ended, prunes, and keeps the study in its storage.

    [sweep]
    method = "tpe"                      # "random", "grid", "tpe", "cmaes" (Optuna's samplers)
    trials = 12
    seed = 3                            # the sampler's (default: the spec's)
    storage = "sqlite"                  # default: study.db in the sweep directory; "journal";
                                        # "journal:PATH"; or an RDB URL (postgresql://, mysql://)
    "training.learning_rate" = { log_uniform = [1e-4, 1e-1] }
    "precision.policy" = ["float32", "mixed_bfloat16"]
    [sweep.pruning]
    kind = "median"                     # "hyperband", "none"

The sweep directory holds study.json (the study's definition: what `runner sweep-worker` and
`runner resume` read), the storage (unless it is a URL), one run directory per trial and the
comparison. Each driver (`runner run`, each `runner sweep-worker`, `runner resume`) claims its
next trial under a file lock in the sweep directory, so N drivers never make more than `trials`
trials between them, and runs it in a fresh process (`runner run`, or `runner resume` of its
directory) that reports the objective's per-epoch value to the trial and stops at the epoch the
pruner says (runner/training/trial.py). How each run ended becomes the trial's state: completed
(its objective told), pruned, or failed with the reason (a diverged run, a failed invariant, a
crash), which the samplers learn from (LearningView).

Each trial's sampler is seeded from the study's seed and the trial's number: a study run by one
driver gives the same points from the same seed and the same results, and drivers that start
together do not draw the same point.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runner import exits, runs, search, tuning
from runner.events import EventSink, Note, ignore
from runner.export import conversions
from runner.reporting import compare, documents, tracking
from runner.reporting.report import (
    Comparison,
    RunDirError,
    RunReport,
    StudyFile,
    field_error,
    load_report,
)
from runner.spec import SpecValueError, StudyDefinition, Variant, first_point, spec_hash, trial_spec

STUDY_FILE = "study.json"
LOCK_FILE = "study.lock"
LOCK_TIMEOUT_S = 120  # a driver waits this long for another to finish claiming its trial
TRIAL_VARIABLE = "RUNNER_TRIAL"  # a trial's process: the study, the trial and its pruner (JSON)


def trial_seed(seed: int, number: int) -> int:
    """Trial `number`'s sampler seed: the same for the same study seed, whichever driver asks."""
    return (seed * 1_000_003 + number * 7_919 + 17) % 2**32


def startup_trials(trials: int) -> int:
    """Random trials before TPE or CMA-ES model the results: a third of the study, 2 to 10 (Optuna's
    TPE default is 10, which would leave a 12-trial study two modelled trials)."""
    return max(2, min(10, trials // 3))


class LearningView:
    """The study as a sampler sees it: a trial that failed for a reason the search can learn from
    (it diverged, an invariant failed, it crashed: runner's `learn` attribute) is shown as pruned
    with nothing reported, which TPE ranks below every completed and pruned trial, so it samples
    away from it. Optuna's own samplers skip failed trials, so without this a learning rate that
    diverges would be proposed again. Everything else is the study itself."""

    def __init__(self, study: Any):
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[Any]:
        from optuna.trial import TrialState

        wanted = None if states is None else tuple(states)
        if wanted is None or TrialState.PRUNED not in wanted:
            return self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        trials = self._study._get_trials(
            deepcopy=False, states=(*wanted, TrialState.FAIL), use_cache=use_cache
        )
        shown = []
        for trial in trials:
            if trial.state == TrialState.FAIL:
                if not trial.user_attrs.get("learn"):
                    continue
                trial = copy.copy(trial)
                trial.state, trial.intermediate_values = TrialState.PRUNED, {}
            shown.append(copy.deepcopy(trial) if deepcopy else trial)
        return sorted(shown, key=lambda t: t.number)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[Any]:
        return self._get_trials(deepcopy=deepcopy, states=states, use_cache=False)


def make_sampler(method: str, seed: int, trials: int, grid: dict[str, list[Any]] | None) -> Any:
    """A sampler that builds, for each trial, Optuna's sampler of `method` seeded for that trial."""
    optuna = tuning.load_optuna()

    def inner(number: int) -> Any:
        seeded = trial_seed(seed, number)
        if method == "tpe":
            return optuna.samplers.TPESampler(seed=seeded, n_startup_trials=startup_trials(trials))
        if method == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seeded, n_startup_trials=startup_trials(trials))
        if method == "grid":
            return optuna.samplers.GridSampler(grid or {}, seed=seed)  # the order: the study's seed
        return optuna.samplers.RandomSampler(seed=seeded)

    base: Any = optuna.samplers.BaseSampler

    class PerTrial(base):
        def __init__(self) -> None:
            self._made: dict[int, Any] = {}

        def _for(self, trial: Any) -> Any:
            if trial.number not in self._made:
                self._made = {trial.number: inner(trial.number)}  # one at a time: each trial's own
            return self._made[trial.number]

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self._for(trial).infer_relative_search_space(LearningView(study), trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self._for(trial).sample_relative(LearningView(study), trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
            return self._for(trial).sample_independent(LearningView(study), trial, name, distribution)

        def before_trial(self, study: Any, trial: Any) -> None:
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            if method != "grid":  # the grid's would call study.stop(), which ask-and-tell refuses
                self._for(trial).after_trial(study, trial, state, values)

    return PerTrial()


# ---------------------------------------------------------------- the search space


def _choice_values(axis: Any) -> list[Any]:
    return list(axis["choice"] if isinstance(axis, dict) else axis)


def _encoded(value: Any) -> Any:
    """A choice as Optuna stores it: None, bool, int, float and str as they are; a list or a table
    (e.g. hidden_units = [64, 32]) as its JSON text."""
    return value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)


def distributions(axes: dict[str, Any]) -> dict[str, Any]:
    """[sweep]'s axes as Optuna's distributions: log_uniform and uniform → FloatDistribution (log or
    not), int_uniform → IntDistribution, a list or choice → CategoricalDistribution."""
    optuna = tuning.load_optuna()
    made = {}
    for key, axis in axes.items():
        kind, bounds = next(iter(axis.items())) if isinstance(axis, dict) else ("choice", axis)
        if kind == "choice":
            made[key] = optuna.distributions.CategoricalDistribution([_encoded(v) for v in bounds])
        elif kind == "int_uniform":
            made[key] = optuna.distributions.IntDistribution(bounds[0], bounds[1])
        else:
            made[key] = optuna.distributions.FloatDistribution(
                float(bounds[0]), float(bounds[1]), log=kind == "log_uniform"
            )
    return made


def decoded(params: dict[str, Any], axes: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters as the spec's values, in the axes' order."""
    values = {}
    for key, axis in axes.items():
        value = params[key]
        if not isinstance(axis, dict) or "choice" in axis:
            value = next(v for v in _choice_values(axis) if _encoded(v) == value)
        values[key] = value
    return values


def grid_of(definition_axes: dict[str, Any]) -> dict[str, list[Any]]:
    return {key: [_encoded(v) for v in _choice_values(axis)] for key, axis in definition_axes.items()}


# ---------------------------------------------------------------- the study's definition


@dataclass
class Study:
    """An open study: its definition, the sweep directory, Optuna's study and its storage."""

    definition: StudyDefinition
    file: StudyFile
    sweep_dir: Path
    optuna_study: Any
    storage: Any
    url: str

    @property
    def objective(self) -> tuple[str, str]:
        metric, mode = self.file.objective
        return metric, mode

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """Every objective, in order: one, or a multi-objective study's several."""
        return [(m, d) for m, d in self.file.front] or [self.objective]


def _definition(file: StudyFile) -> StudyDefinition:
    options = search.SweepOptions(
        file.method,
        None,
        file.objective,
        file.trials,
        file.seed,
        file.storage,
        search.Pruning(**file.pruning),
        front=tuple((m, d) for m, d in file.front),
    )
    return StudyDefinition(file.base, options, file.axes, file.source, file.group, file.seed)


def create(definition: StudyDefinition, output: Path) -> Path:
    """The sweep directory of a new study: study.json, and the study in its storage."""
    tuning.require_optuna()
    options = definition.options
    conversions.require_extra(list(definition.base.get("export", {}).get("formats", [])))
    runs.require_writable(output)
    probe = trial_spec(definition, first_point(definition.axes), 0)
    if probe.tracking.mlflow:
        tracking.require_mlflow()
    if probe.distribution.strategy == "multi_worker":
        raise SpecValueError(
            f"{definition.source}: distribution.strategy: a study's trials run in processes of their own; "
            'expected "none" or "mirrored"; got "multi_worker"'
        )
    sweep_dir = runs.create_run_dir(output, definition.group, spec_hash(probe))
    file = StudyFile(
        study_name=sweep_dir.name,
        source=definition.source,
        group=definition.group,
        base=definition.base,
        axes=definition.axes,
        method=options.method,
        trials=options.trials,
        seed=definition.seed,
        objective=options.objective,
        front=list(options.front),
        pruning=options.pruning.__dict__,
        storage=options.storage,
        created_at=runs.utc_now(),
    )
    try:
        _open(file, sweep_dir, create=True)
    except BaseException:
        with contextlib.suppress(OSError):
            for leftover in sweep_dir.iterdir():
                leftover.unlink()
            sweep_dir.rmdir()
        raise
    runs.write_json_atomic(sweep_dir / STUDY_FILE, file.to_json())
    return sweep_dir


def is_study_dir(path: Path) -> bool:
    return (path / STUDY_FILE).is_file()


def read_file(sweep_dir: Path) -> StudyFile:
    path = sweep_dir / STUDY_FILE
    try:
        return StudyFile.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise RunDirError(f"{sweep_dir}: no {STUDY_FILE}; expected a study's sweep directory") from None
    except ValidationError as exc:
        raise field_error(exc, f"{path} (a study)") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path}: unreadable study ({type(exc).__name__}: {exc})") from None


def open_study(sweep_dir: Path) -> Study:
    file = read_file(sweep_dir)
    return _open(file, sweep_dir, create=False)


def _open(file: StudyFile, sweep_dir: Path, create: bool) -> Study:
    optuna = tuning.load_optuna()
    url = tuning.storage_url(file.storage, sweep_dir)
    storage = tuning.open_storage(url)
    metric, mode = file.objective
    directions = ["maximize" if d == "max" else "minimize" for _, d in (file.front or [file.objective])]
    sampler = make_sampler(
        file.method, file.seed, file.trials, grid_of(file.axes) if file.method == "grid" else None
    )
    try:
        if create:
            study = optuna.create_study(
                study_name=file.study_name,
                storage=storage,
                sampler=sampler,
                pruner=tuning.make_pruner(file.pruning),
                directions=directions,
            )
            study.set_user_attr("runner.objectives", [list(o) for o in file.front or [file.objective]])
        else:
            study = optuna.load_study(
                study_name=file.study_name,
                storage=storage,
                sampler=sampler,
                pruner=tuning.make_pruner(file.pruning),
            )
    except KeyError:
        raise tuning.StudyError(
            f"{sweep_dir / STUDY_FILE}: study {file.study_name!r} is not in its storage {url}; expected the "
            "storage the study was made in"
        ) from None
    except optuna.exceptions.DuplicatedStudyError:
        raise tuning.StudyError(
            f"sweep.storage: {url} already holds a study named {file.study_name!r}; expected a new one"
        ) from None
    return Study(_definition(file), file, sweep_dir, study, storage, url)


# ---------------------------------------------------------------- claiming and running trials


@contextlib.contextmanager
def claim_lock(sweep_dir: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """The sweep directory's lock, held while a driver counts the trials and claims the next one
    (fcntl's record lock: NFS-safe, released if the driver dies). Waited for at most `timeout_s`."""
    import fcntl

    fd = os.open(sweep_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise tuning.StudyError(
                        f"{sweep_dir / LOCK_FILE}: another driver has held the study's lock for "
                        f"{timeout_s:.0f} s; expected it within that (is a process stuck on it?)"
                    ) from None
                time.sleep(0.005)  # a claim takes milliseconds
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def worker_id() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(worker: Any) -> bool:
    """Whether the driver that claimed a trial still runs (known only on this host: elsewhere, no)."""
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return False
    pid = worker.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Claimed:
    number: int
    trial_id: int
    params: dict[str, Any]  # as the spec's values


def claim(study: Study, adopt: bool = False) -> Claimed | None:
    """The next trial this driver runs: with `adopt`, one a dead driver left running first; else a
    new one while the study has fewer than `trials`. None when there is nothing left."""
    from optuna.trial import TrialState

    optuna_study, axes = study.optuna_study, study.file.axes
    with claim_lock(study.sweep_dir):
        trials = optuna_study.get_trials(deepcopy=False)
        if adopt:
            for trial in trials:
                if trial.state == TrialState.RUNNING and not _alive(trial.user_attrs.get("worker")):
                    study.storage.set_trial_user_attr(trial._trial_id, "worker", worker_id())
                    return Claimed(trial.number, trial._trial_id, decoded(trial.params, axes))
        if len(trials) >= study.file.trials:
            return None
        trial = optuna_study.ask(fixed_distributions=distributions(axes))
        trial.set_user_attr("worker", worker_id())
        return Claimed(trial.number, trial._trial_id, decoded(trial.params, axes))


def trial_environment(study: Study, claimed: Claimed) -> dict[str, str]:
    """What a trial's process needs to report to its trial and ask its pruner (training/trial.py)."""
    metric, mode = study.objective
    return {
        TRIAL_VARIABLE: json.dumps(
            {
                "storage": study.url,
                "study": study.file.study_name,
                "trial_id": claimed.trial_id,
                "number": claimed.number,
                "objective": metric,
                "mode": mode,
                "pruning": study.file.pruning,
            }
        )
    }


def _variant(study: Study, claimed: Claimed) -> Variant:
    spec = trial_spec(study.definition, claimed.params, claimed.number)
    where = f"{study.file.source} [trial {claimed.number}]"
    front = tuple(study.objectives) if len(study.objectives) > 1 else ()
    return Variant(spec, claimed.params, study.file.group, where, study.objective, front)


def _wait_unlocked(run_dir: Path, timeout_s: float) -> None:
    """A trial's directory that a process (orphaned by a killed driver) still holds: wait for it to
    checkpoint and let go, at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with runs.run_lock(run_dir):
                return
        except runs.RunDirBusy:
            time.sleep(0.5)
    raise tuning.StudyError(
        f"{run_dir}: still training after {timeout_s:.0f} s; stop it, then resume the study"
    )


def run_trial(study: Study, claimed: Claimed, emit: EventSink) -> tuple[int, Path | None]:
    """The trial's process, to its end: a new run, or the resume of its directory (an adopted
    trial). Returns its exit code and run directory (None: it made none, bad input)."""
    from runner import sweeps
    from runner.events import VariantStarted

    variant = _variant(study, claimed)
    run_dir = sweeps.find_run_dir(study.sweep_dir, variant.spec)
    if run_dir is not None:
        _wait_unlocked(run_dir, sweeps.CHILD_STOP_TIMEOUT_S)
        with contextlib.suppress(RunDirError):
            if load_report(run_dir).status in ("completed", "pruned", "failed", "diverged"):
                return exits.COMPLETED, run_dir  # it ended while no driver watched: told as it is
    emit(VariantStarted(variant.spec.name, variant.settings, claimed.number + 1, study.file.trials))
    task = sweeps.Task(claimed.number, variant, run_dir, trial_environment(study, claimed))
    # run_tasks' own VariantStarted is dropped: the one above numbers the trial as the study does
    codes, stop = sweeps.run_tasks([task], study.sweep_dir, study.file.trials, ignore, False, 1)
    return (stop or codes.get(claimed.number, exits.RUN_FAILED)), sweeps.find_run_dir(
        study.sweep_dir, variant.spec
    )


def tell(study: Study, claimed: Claimed, code: int, run_dir: Path | None) -> str:
    """How the trial's run ended, as its state in the study; returns that state (or "interrupted":
    the trial stays running, to be resumed)."""
    from optuna.trial import TrialState

    optuna_study, storage, trial_id = study.optuna_study, study.storage, claimed.trial_id
    report = None
    if run_dir is not None:
        with contextlib.suppress(RunDirError):
            report = load_report(run_dir)
    if report is None or report.status == "interrupted":
        if code == exits.INTERRUPTED or (report is not None and report.status == "interrupted"):
            return "interrupted"
        why = f"no report: the trial's process exited {code} before it trained (bad input?)"
        _attrs(storage, trial_id, "failed", why, learn=False, run_dir=run_dir)
        optuna_study.tell(claimed.number, state=TrialState.FAIL)
        return "failed"
    metrics = [metric for metric, _ in study.objectives]
    reason = None if report.status == "pruned" else _failure(report, metrics)
    if reason is not None:  # a failure the sampler learns from (LearningView)
        _attrs(storage, trial_id, "failed", reason, learn=True, run_dir=run_dir)
        optuna_study.tell(claimed.number, state=TrialState.FAIL)
        return "failed"
    _attrs(storage, trial_id, report.status, report.error, learn=False, run_dir=run_dir)
    if report.status == "pruned":
        optuna_study.tell(claimed.number, state=TrialState.PRUNED)
        return "pruned"
    values = [_objective_value(report, metric) for metric in metrics]
    assert all(v is not None for v in values)  # _failure said they were measured
    optuna_study.tell(claimed.number, values if len(values) > 1 else values[0])
    return "completed"


def _attrs(
    storage: Any, trial_id: int, status: str, reason: str | None, learn: bool, run_dir: Path | None
) -> None:
    storage.set_trial_user_attr(trial_id, "status", status)
    storage.set_trial_user_attr(trial_id, "learn", learn)
    if reason:
        storage.set_trial_user_attr(trial_id, "reason", reason)
    if run_dir is not None:
        storage.set_trial_user_attr(trial_id, "run_dir", run_dir.name)


def _objective_value(report: RunReport, metric: str) -> float | None:
    row = compare.comparison_row(report, report, [], "")
    value = row.figure(metric)
    return None if value is None or value != value else value  # NaN: not a measurement


def _failure(report: RunReport, metrics: list[str]) -> str | None:
    """Why a run that did not complete cleanly fails its trial: None for a completed run with its
    objective measured and every invariant and declared check passed."""
    from runner.precision.checks import is_blocking

    if report.status != "completed":
        return f"{report.status}: {report.error or 'no reason recorded'}"
    failed = [c for c in report.checks if is_blocking(c)]
    if failed:
        return "failed checks: " + "; ".join(f"{c.name} ({c.detail})"[:200] for c in failed)
    missing = [metric for metric in metrics if _objective_value(report, metric) is None]
    if missing:
        return f"completed without a {missing[0]} to tell the study (no test or validation split?)"
    return None


# ---------------------------------------------------------------- drivers


@dataclass
class StudyOutcome:
    exit_code: int
    sweep_dir: Path
    comparison: Comparison | None
    reports: list[RunReport]
    states: dict[int, str]


def run_study(definition: StudyDefinition, output: Path, emit: EventSink = ignore) -> StudyOutcome:
    """`runner run` of a study: make it, then drive it until it has its trials."""
    sweep_dir = create(definition, output)
    emit(
        Note(
            f"study {sweep_dir.name}: {definition.options.trials} trials, {definition.options.method}, "
            f"stored in {tuning.storage_url(definition.options.storage, sweep_dir)}"
        )
    )
    return drive(sweep_dir, emit)


def drive(sweep_dir: Path, emit: EventSink = ignore, adopt: bool = False) -> StudyOutcome:
    """Claim and run trials until the study has its `trials` (a sweep-worker; `runner run`; with
    `adopt`, `runner resume`, which first takes over the trials dead drivers left running), then
    write the comparison of every trial so far."""
    from runner import sweeps

    study = open_study(sweep_dir)
    probe = trial_spec(study.definition, first_point(study.file.axes), 0)
    if probe.tracking.mlflow:
        tracking.require_mlflow()
    conversions.require_extra(list(probe.export.formats))
    tracking.open_sweep(probe, sweep_dir, emit)
    stop = exits.COMPLETED
    with sweeps.sigterm_as_interrupt():
        while stop == exits.COMPLETED:
            claimed = claim(study, adopt=adopt)
            if claimed is None:
                break
            code, run_dir = run_trial(study, claimed, emit)
            state = tell(study, claimed, code, run_dir)
            emit(_trial_note(study, claimed.number, state))
            if state == "interrupted":
                stop = exits.INTERRUPTED
            elif run_dir is None and code == exits.BAD_INPUT:
                stop = exits.BAD_INPUT  # every trial would fail the same way: said once, on stderr
    return finish(study, stop, emit)


def _trial_note(study: Study, number: int, state: str) -> Note:
    """`trial 3: completed (test_accuracy 0.91)`, `trial 4: pruned by ...`, `trial 5: failed (why)`."""
    trial = study.optuna_study.trials[number]
    reason = str(trial.user_attrs.get("reason") or "")
    if state == "completed" and trial.values:
        shown = ", ".join(f"{m} {v:.4g}" for (m, _), v in zip(study.objectives, trial.values, strict=True))
        return Note(f"trial {number}: completed ({shown})")
    if reason.startswith(state):
        return Note(f"trial {number}: {reason}", "warning" if state == "failed" else "note")
    shown = f"trial {number}: {state}" + (f" ({reason})" if reason else "")
    return Note(shown, "warning" if state == "failed" else "note")


def trial_reports(study: Study) -> tuple[list[RunReport], list[int], dict[int, str]]:
    """Every trial's report that exists, in trial order, their numbers, and each trial's state."""
    reports, numbers, states = [], [], {}
    for trial in study.optuna_study.get_trials(deepcopy=False):
        states[trial.number] = str(trial.user_attrs.get("status") or trial.state.name.lower())
        name = trial.user_attrs.get("run_dir")
        if not name:
            continue
        with contextlib.suppress(RunDirError):
            reports.append(load_report(study.sweep_dir / name))
            numbers.append(trial.number)
    return reports, numbers, states


def finish(study: Study, stop: int, emit: EventSink) -> StudyOutcome:
    """The comparison of the trials so far (best marked), and the study's exit code: `stop` if it
    was stopped; else 0 when a trial completed, 3 when none did (failed and pruned trials are the
    study's results, not its failure)."""
    reports, numbers, states = trial_reports(study)
    comparison = None
    if reports:
        front = study.objectives if len(study.objectives) > 1 else []
        comparison = compare.compare(reports, study.objective, trials=numbers, front=front)
        runs.write_json_atomic(study.sweep_dir / "comparison.json", comparison.to_json())
        documents.write_comparison_documents(study.sweep_dir, comparison, reports)
    tracking.close_sweep(study.sweep_dir, emit)
    if stop != exits.COMPLETED:
        code = stop
    else:
        code = exits.COMPLETED if "completed" in states.values() else exits.RUN_FAILED
    return StudyOutcome(code, study.sweep_dir, comparison, reports, states)
