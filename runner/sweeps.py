"""A plan of experiments (several specs, or a [sweep]): one in this process, several each in a fresh
process of their own, into one sweep directory that ends in a comparison.

The sweep directory holds sweep.json (every variant's resolved spec, in order), one run directory per
variant, and the comparison. A failed or diverged variant does not stop the others (`fail_fast`
does); the plan's exit code is the worst of its variants'. Bad input stops it (the runs so far kept),
and so does an interruption: Ctrl-C or SIGTERM is passed to each running variant once (it
checkpoints and exits 130, resumable), the comparison is written for what finished, and the plan
exits 130. `resume_plan` continues it: what completed is kept untouched, what was interrupted
resumes, what never started starts. With `parallel` > 1, that many variants run at once, each with
its own GPU, or on a CPU its share of the cores for TensorFlow's threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runner import exits, processes, runs
from runner.events import EventSink, VariantStarted, ignore
from runner.export import conversions
from runner.reporting import compare, documents, tracking
from runner.reporting.report import (
    Comparison,
    PlannedVariant,
    RunDirError,
    RunReport,
    SweepPlan,
    field_error,
    load_report,
    migrate_plan,
)
from runner.session import RunOutcome, run_experiment
from runner.spec import (
    ExperimentSpec,
    SpecError,
    SpecValueError,
    Variant,
    load_spec,
    spec_from_dict,
    spec_hash,
    spec_to_dict,
    spec_to_toml,
)
from runner.training.workers import THREADS_VARIABLE

SPEC_SOURCE_VARIABLE = "RUNNER_SPEC_SOURCE"  # a sweep's child process: the spec file it stands for
CHILD_STOP_TIMEOUT_S = 300  # a variant asked to stop checkpoints first; past this it is killed


@dataclass
class PlanOutcome:
    outcomes: list[RunOutcome]
    exit_code: int
    group_dir: Path | None = None
    comparison: Comparison | None = None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's stop) is handled like Ctrl-C while a sweep waits for a variant."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


SWEEP_FILE = "sweep.json"  # the plan of a sweep directory: what `runner resume SWEEP_DIR` continues


@dataclass(frozen=True)
class Task:
    """One variant's next process: a new run, or `runner resume` of its directory."""

    index: int  # 0-based, in the plan
    variant: Variant
    run_dir: Path | None  # None: not started yet
    env: dict[str, str] = field(default_factory=dict)  # for its process (a study's trial: which)


def _start(task: Task, output: Path, tmp: Path, env: dict[str, str]) -> processes.Child:
    """The variant's process (`runner resume` of its directory, or `runner run` of its spec written
    to `tmp`), in a session of its own (a terminal's Ctrl-C reaches only the sweep), started warm
    (runner/processes.py: forked from a server that imported TensorFlow once for the sweep)."""
    if task.run_dir is not None:
        target = task.run_dir
        args = ["resume", str(target)]
    else:
        target = tmp / f"{task.index:03d}-{task.variant.spec.name}.toml"
        target.write_text(spec_to_toml(task.variant.spec), encoding="utf-8")
        args = ["run", str(target), "--output", str(output)]
    return processes.start(
        args,
        {
            **os.environ,
            SPEC_SOURCE_VARIABLE: task.variant.source or str(target),
            **task.env,
            **env,
        },  # errors name the real file
        stdout=subprocess.DEVNULL,  # the child's report panel goes nowhere: the sweep prints them all
    )


def find_run_dir(group_dir: Path, spec: ExperimentSpec) -> Path | None:
    """The variant's run directory in the sweep directory: the one whose spec.toml is this spec
    (a spec's hash covers its name, so variants never share one). Newest first, should there be two."""
    wanted = spec_hash(spec)
    for candidate in sorted(group_dir.glob(f"*-{wanted}*"), reverse=True):  # <name>-<stamp>-<hash>[-n]
        if (candidate / "spec.toml").is_file():
            with contextlib.suppress(SpecError, OSError):
                if spec_hash(load_spec(candidate / "spec.toml")) == wanted:
                    return candidate
    return None


def _status(run_dir: Path | None) -> str | None:
    """report.json's status; "unfinished" for a directory without a readable report (killed)."""
    if run_dir is None:
        return None
    try:
        return load_report(run_dir).status
    except RunDirError:
        return "unfinished"


def core_shares(parallel: int) -> dict[int, dict[str, str]]:
    """What each of `parallel` concurrent variants gets: on a machine with GPUs one GPU each (round
    robin), else its share of the CPU cores for TensorFlow's threads. Keyed by slot."""
    if parallel <= 1:
        return {0: {}}
    gpus = visible_gpus()
    if gpus:
        return {slot: {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} for slot in range(parallel)}
    threads = max((os.cpu_count() or 1) // parallel, 1)
    return {slot: {THREADS_VARIABLE: str(threads)} for slot in range(parallel)}


def visible_gpus() -> list[str]:
    """The GPUs a child may be given, without importing TensorFlow: CUDA_VISIBLE_DEVICES if set,
    else nvidia-smi's list (bounded: a wedged driver must not hang the sweep), else none."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g for g in given.split(",") if g.strip() and g.strip() != "-1"]
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(listed.stdout.splitlines()) if line.startswith("GPU ")]


def run_plan(
    variants: list[Variant],
    output: Path,
    emit: EventSink = ignore,
    *,
    fail_fast: bool = False,
    parallel: int = 1,
) -> PlanOutcome:
    """Run every variant (see the module's docstring); one alone runs in this process."""
    if len(variants) == 1:
        try:
            outcome = run_experiment(variants[0].spec, output, emit)
        except SpecValueError as exc:  # the file it is in: a sweep's child names its parent's file
            source = os.environ.get(SPEC_SOURCE_VARIABLE) or variants[0].source
            raise SpecValueError(f"{source}: {exc}") from None
        return PlanOutcome([outcome], outcome.exit_code)
    distributed = [v for v in variants if v.spec.distribution.strategy == "multi_worker"]
    if distributed:
        raise SpecValueError(
            f"{distributed[0].source}: distribution.strategy: a plan of {len(variants)} experiments runs "
            'them in processes of their own; expected "none" or "mirrored" there; got '
            '"multi_worker" (run each variant as its own multi-worker job)'
        )
    if any(v.spec.tracking.mlflow for v in variants):
        tracking.require_mlflow()
    conversions.require_extra(sorted({f for v in variants for f in v.spec.export.formats}))
    runs.require_writable(output)
    groups = {v.group for v in variants}
    group_dir = runs.create_run_dir(
        output, groups.pop() if len(groups) == 1 else "comparison", spec_hash(variants[0].spec)
    )
    write_plan(group_dir, variants)
    # [tracking] mlflow: a parent run, named in the sweep directory's tracking.json, the variants nest under
    tracking.open_sweep(variants[0].spec, group_dir, emit)
    planned = _execute(group_dir, variants, emit, retry_failed=False, fail_fast=fail_fast, parallel=parallel)
    if not planned.outcomes and planned.exit_code == exits.BAD_INPUT:  # nothing ran: no sweep to keep
        tracking.close_sweep(group_dir, emit)
        with contextlib.suppress(OSError):
            (group_dir / SWEEP_FILE).unlink()
            group_dir.rmdir()
        return PlanOutcome([], planned.exit_code, None)
    return planned


def write_plan(group_dir: Path, variants: list[Variant]) -> None:
    """sweep.json: every variant's resolved spec, in order, so a resume needs no spec file."""
    plan = SweepPlan(
        variants=[
            PlannedVariant(
                name=v.spec.name,
                settings=v.settings,
                group=v.group,
                source=v.source,
                spec_hash=spec_hash(v.spec),
                spec=spec_to_dict(v.spec),
            )
            for v in variants
        ],
        objective=variants[0].objective,
        front=[(m, "max" if d == "max" else "min") for m, d in variants[0].front],
        created_at=runs.utc_now(),
    )
    runs.write_json_atomic(group_dir / SWEEP_FILE, plan.to_json())


def read_plan(group_dir: Path) -> list[Variant]:
    """The variants sweep.json holds; a missing or damaged plan is bad input naming the file."""
    path = group_dir / SWEEP_FILE
    try:
        plan = SweepPlan.model_validate(migrate_plan(json.loads(path.read_text(encoding="utf-8"))))
        return [
            Variant(
                spec_from_dict(v.spec, source=f"{path} [{v.name}]"),
                v.settings,
                v.group,
                v.source,
                plan.objective,
                tuple((m, d) for m, d in plan.front),
            )
            for v in plan.variants
        ]
    except FileNotFoundError:
        raise RunDirError(
            f"{group_dir}: no {SWEEP_FILE}; expected a sweep directory made by `runner run` (sweeps made "
            "before runner could resume them have none: resume their runs one by one)"
        ) from None
    except ValidationError as exc:
        raise field_error(exc, f"{path} (a sweep plan)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{path}: unreadable sweep plan ({type(exc).__name__}: {exc})") from None


def resume_plan(
    group_dir: Path,
    emit: EventSink = ignore,
    *,
    retry_failed: bool = False,
    fail_fast: bool = False,
    parallel: int = 1,
) -> PlanOutcome:
    """Continue a sweep: completed variants are kept as they are, an interrupted (or killed) one
    resumes from its checkpoint, the ones not started start; failed and diverged ones are kept
    unless `retry_failed` (then they resume too). Nothing is overwritten."""
    variants = read_plan(group_dir)
    if any(v.spec.tracking.mlflow for v in variants):
        tracking.require_mlflow()
    conversions.require_extra(sorted({f for v in variants for f in v.spec.export.formats}))
    tracking.open_sweep(variants[0].spec, group_dir, emit)  # the parent run again, if it had one
    return _execute(
        group_dir, variants, emit, retry_failed=retry_failed, fail_fast=fail_fast, parallel=parallel
    )


def _tasks(
    group_dir: Path, variants: list[Variant], retry_failed: bool
) -> tuple[list[Task], dict[int, Path]]:
    """What is left to do, and the variants already done (index → run directory)."""
    tasks, done = [], {}
    for index, variant in enumerate(variants):
        run_dir = find_run_dir(group_dir, variant.spec)
        status = _status(run_dir)
        if run_dir is not None and (status == "completed" or (status in FAILED and not retry_failed)):
            done[index] = run_dir
        else:
            tasks.append(Task(index, variant, run_dir))
    return tasks, done


FAILED = ("failed", "diverged")


def _execute(
    group_dir: Path,
    variants: list[Variant],
    emit: EventSink,
    *,
    retry_failed: bool,
    fail_fast: bool,
    parallel: int,
) -> PlanOutcome:
    """Run what is left of the plan, then compare every variant that has a report, in plan order
    (those kept from before included): the exit code is the worst of theirs and of what stopped it."""
    tasks, done = _tasks(group_dir, variants, retry_failed)
    codes, stop = run_tasks(tasks, group_dir, len(variants), emit, fail_fast, parallel)
    finished = dict(done)
    for task in tasks:
        run_dir = find_run_dir(group_dir, task.variant.spec)
        if run_dir is not None:
            finished[task.index] = run_dir
    outcomes = []
    for index in sorted(finished):
        with contextlib.suppress(RunDirError):
            report = load_report(finished[index])
            code = codes.get(index, _exit_code_of(report))
            outcomes.append(RunOutcome(report.status, code, finished[index], report))
    code = max([stop, *(o.exit_code for o in outcomes)])
    if not outcomes:
        return PlanOutcome(outcomes, code, group_dir)
    reports = [o.record for o in outcomes]
    comparison = compare.compare(reports, variants[0].objective, front=variants[0].front)
    if any(v.verdict == "fail" for v in comparison.parity):  # a policy's drop not ruled out: exit 1
        code = max(code, exits.CHECK_FAILED)
    runs.write_json_atomic(group_dir / "comparison.json", comparison.to_json())
    documents.write_comparison_documents(group_dir, comparison, reports)
    tracking.close_sweep(group_dir, emit)
    return PlanOutcome(outcomes, code, group_dir, comparison)


def _exit_code_of(report: RunReport) -> int:
    """A kept variant's exit code, from its report (as its run ended)."""
    from runner.precision.checks import is_blocking

    code = exits.BY_STATUS.get(report.status, exits.RUN_FAILED)
    if code == exits.COMPLETED and any(is_blocking(c) for c in report.checks):
        return exits.CHECK_FAILED
    return code


def run_tasks(
    tasks: list[Task], group_dir: Path, count: int, emit: EventSink, fail_fast: bool, parallel: int
) -> tuple[dict[int, int], int]:
    """Run the tasks, `parallel` at a time, in order. Returns each task's exit code and the code that
    stopped the plan early (bad input, an interruption, --fail-fast), or 0."""
    codes: dict[int, int] = {}
    shares = core_shares(parallel)
    pending = list(tasks)
    running: dict[int, tuple[Task, processes.Child]] = {}  # slot → (task, its process)
    finished: queue.Queue[tuple[int, int]] = queue.Queue()
    stop = exits.COMPLETED
    with tempfile.TemporaryDirectory(prefix="runner-sweep-") as tmp, sigterm_as_interrupt():
        while pending or running:
            while pending and len(running) < parallel and stop == exits.COMPLETED:
                slot = min(set(range(parallel)) - set(running))
                task = pending.pop(0)
                emit(VariantStarted(task.variant.spec.name, task.variant.settings, task.index + 1, count))
                child = _start(task, group_dir, Path(tmp), shares.get(slot, {}))
                running[slot] = (task, child)
                threading.Thread(
                    target=lambda s=slot, c=child: finished.put((s, c.wait())), daemon=True
                ).start()
            if not running:
                break
            try:
                slot, code = finished.get()
            except KeyboardInterrupt:
                stop = exits.INTERRUPTED
                _stop_all([c for _, c in running.values()])
                continue
            task, _ = running.pop(slot)
            codes[task.index] = code
            if code == exits.INTERRUPTED:
                stop = exits.INTERRUPTED
            elif find_run_dir(group_dir, task.variant.spec) is None and code != exits.COMPLETED:
                stop = max(stop, code or exits.BAD_INPUT)  # bad input: no report, said on stderr
            elif fail_fast and code != exits.COMPLETED:
                stop = max(stop, code)
            if stop != exits.COMPLETED and running and code != exits.INTERRUPTED:
                _stop_all([c for _, c in running.values()])
    return codes, stop


def _stop_all(children: list[processes.Child]) -> None:
    """Ask each running variant to stop once (it checkpoints and exits 130); one that has not
    within CHILD_STOP_TIMEOUT_S of the request is killed by its watchdog."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            watchdog = threading.Timer(CHILD_STOP_TIMEOUT_S, _kill_if_running, args=(child,))
            watchdog.daemon = True  # it must not keep the sweep alive once every variant has exited
            watchdog.start()


def _kill_if_running(child: processes.Child) -> None:
    if child.poll() is None:
        child.kill()
