"""A plan of experiments (several specs, or a [sweep]): one in this process, several each in a fresh
process of their own, into one sweep directory that ends in a comparison.

A sweep stops on bad input (the runs so far kept) and on an interruption: Ctrl-C or SIGTERM is passed
to the running variant once (it checkpoints and exits 130, resumable), the comparison is written for
what finished, and the plan exits 130.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import compare, documents, exits, runs, tracking
from runner.events import EventSink, VariantStarted, ignore
from runner.session import RunOutcome, run_experiment
from runner.spec import ExperimentSpec, SpecValueError, Variant, spec_hash, spec_to_toml

SPEC_SOURCE_VARIABLE = "RUNNER_SPEC_SOURCE"  # a sweep's child process: the spec file it stands for
CHILD_STOP_TIMEOUT_S = 300  # a variant asked to stop checkpoints first; past this it is killed


@dataclass
class PlanOutcome:
    outcomes: list[RunOutcome]
    exit_code: int
    group_dir: Path | None = None
    comparison: dict[str, Any] | None = None


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


def _wait(child: subprocess.Popen[bytes]) -> tuple[int, bool]:
    """The child's exit code, and whether we asked it to stop. The child runs in a session of its own,
    so a terminal's Ctrl-C reaches only us: we pass on exactly one SIGINT per one we get (the first
    makes it checkpoint and stop after its step; a second stops it at once), and never wait unbounded
    once it has been asked."""
    stopping = False
    with sigterm_as_interrupt():
        while True:
            try:
                return child.wait(timeout=CHILD_STOP_TIMEOUT_S if stopping else None), stopping
            except KeyboardInterrupt:
                stopping = True
                child.send_signal(signal.SIGINT)
            except subprocess.TimeoutExpired:
                child.kill()
                return child.wait(), stopping


def run_isolated(spec: ExperimentSpec, output: Path, source: str = "") -> tuple[RunOutcome | None, int, bool]:
    """Run one experiment in a fresh Python process: its peak memory is its own, not the sweep's so
    far, and no state (TensorFlow's, Keras') carries over between variants. Returns its outcome (None
    when it wrote no report: bad input, said on stderr, or stopped before training), its exit code,
    and whether it was asked to stop."""
    with tempfile.TemporaryDirectory(prefix="runner-variant-") as tmp:
        spec_file = Path(tmp) / f"{spec.name}.toml"
        spec_file.write_text(spec_to_toml(spec), encoding="utf-8")
        before = set(output.iterdir())
        # The child's report panel goes nowhere: the parent prints every report at the end.
        child = subprocess.Popen(
            [sys.executable, "-m", "runner", "run", str(spec_file), "--output", str(output)],
            stdout=subprocess.DEVNULL,
            env={**os.environ, SPEC_SOURCE_VARIABLE: source or str(spec_file)},  # errors name the real file
            start_new_session=True,
        )
        code, stopped = _wait(child)
    made = [p for p in set(output.iterdir()) - before if (p / "report.json").exists()]
    if not made:
        return None, code, stopped
    data = compare.load_report(made[0])
    return RunOutcome(data["status"], code, made[0], data), code, stopped


def run_plan(variants: list[Variant], output: Path, emit: EventSink = ignore) -> PlanOutcome:
    """Run every variant in order (see the module's docstring)."""
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
            'them one after another in processes of its own; expected "none" or "mirrored" there; got '
            '"multi_worker" (run each variant as its own multi-worker job)'
        )
    if any(v.spec.tracking.mlflow for v in variants):
        tracking.require_mlflow()
    runs.require_writable(output)
    groups = {v.group for v in variants}
    group_dir = runs.create_run_dir(
        output, groups.pop() if len(groups) == 1 else "comparison", spec_hash(variants[0].spec)
    )
    # [tracking] mlflow: a parent run, named in the sweep directory's tracking.json, the variants nest under
    tracking.open_sweep(variants[0].spec, group_dir, emit)
    outcomes, code = _run_variants(variants, group_dir, emit)
    if not outcomes:  # the first variant was bad input or stopped early: no sweep directory to keep
        tracking.close_sweep(group_dir, emit)
        with contextlib.suppress(OSError):
            group_dir.rmdir()
        return PlanOutcome(outcomes, code, None)
    reports = [o.report for o in outcomes]
    comparison = compare.compare(reports)
    runs.write_json_atomic(group_dir / "comparison.json", comparison)
    documents.write_comparison_documents(group_dir, comparison, reports)
    tracking.close_sweep(group_dir, emit)
    return PlanOutcome(outcomes, code, group_dir, comparison)


def _run_variants(variants: list[Variant], group_dir: Path, emit: EventSink) -> tuple[list[RunOutcome], int]:
    outcomes: list[RunOutcome] = []
    code = exits.COMPLETED
    for index, variant in enumerate(variants, 1):
        emit(VariantStarted(variant.spec.name, variant.settings, index, len(variants)))
        outcome, child_code, stopped = run_isolated(variant.spec, group_dir, variant.source)
        if outcome is not None:
            outcomes.append(outcome)
        if stopped or child_code == exits.INTERRUPTED:
            return outcomes, exits.INTERRUPTED
        if outcome is None:
            return outcomes, child_code or exits.BAD_INPUT
        code = max(code, outcome.exit_code)
    return outcomes, code
