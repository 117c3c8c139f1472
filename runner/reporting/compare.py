"""Side-by-side comparison of finished runs: pure functions from reports (report.RunReport) to a
comparison (report.Comparison, what comparison.json holds).

The baseline is the first completed float32 run; without one, the first run, and the comparison
says so. Only the spec fields that differ between runs are shown, and each run is labelled by them:
runs of one spec file often share a name (`--set precision.policy=...`), so a name is no identity.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner.precision.checks import is_blocking
from runner.reporting import parity
from runner.reporting.report import (
    Baseline,
    Best,
    Comparison,
    ComparisonRow,
    Objective,
    RunDirError,
    RunReport,
    load_report,
)
from runner.spec import experiment_fields, flatten_table


def differing_fields(reports: list[RunReport]) -> list[str]:
    """Dotted spec fields whose values are not the same in every run (the name and [tracking] aside)."""
    flats = [flatten_table(experiment_fields(r.spec)) for r in reports]
    keys = sorted(set().union(*flats) - {"name", "description"})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def _shown(value: Any) -> str:
    # Strings bare (as the table prints them); anything else in JSON's spelling, TOML's too: true, [32, 64].
    return value if isinstance(value, str) else json.dumps(value)


def _short_keys(fields: list[str]) -> dict[str, str]:
    """`precision.policy` → `policy`, unless another differing field ends in the same word."""
    last = {f: f.rsplit(".", 1)[-1] for f in fields}
    ends = Counter(last.values())
    return {f: last[f] if ends[last[f]] == 1 else f for f in fields}


def _settings_label(report: RunReport, fields: list[str], keys: dict[str, str]) -> str:
    flat = flatten_table(report.spec)
    if len(fields) == 1:
        return _shown(flat[fields[0]]) if fields[0] in flat else "—"
    # A field this run lacks (another model kind's) is left out: kind= already says why.
    return ", ".join(f"{keys[f]}={_shown(flat[f])}" for f in fields if f in flat) or "—"


def _dir_name(report: RunReport) -> str:
    return Path(report.run_dir).name if report.run_dir else report.name


def _distinct(labels: list[str], reports: list[RunReport]) -> list[str]:
    """A label shared by runs that are otherwise equal gets the run directory, then the position."""
    repeated = {label for label, n in Counter(labels).items() if n > 1}
    labels = [
        f"{label} ({_dir_name(r)})" if label in repeated and label != _dir_name(r) else label
        for label, r in zip(labels, reports, strict=True)
    ]
    repeated = {label for label, n in Counter(labels).items() if n > 1}  # the same directory twice
    return [f"{label} #{i + 1}" if label in repeated else label for i, label in enumerate(labels)]


def run_labels(reports: list[RunReport], fields: list[str]) -> list[str]:
    """One distinct label per run, by what differs between the runs: the values of the differing
    spec fields; else the names; else the run directories."""
    if fields:
        keys = _short_keys(fields)
        labels = [_settings_label(r, fields, keys) for r in reports]
    elif len({r.name for r in reports}) > 1:
        labels = [r.name for r in reports]
    else:
        labels = [_dir_name(r) for r in reports]
    return _distinct(labels, reports)


def _baseline(reports: list[RunReport]) -> tuple[int, str]:
    for i, r in enumerate(reports):
        if r.precision.policy == "float32" and r.status == "completed":
            return i, f"ratios against the float32 run {r.name}"
    return 0, f"no completed float32 run: ratios against the first run, {reports[0].name}"


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value and base else None


def _delta(value: float | None, base: float | None) -> float | None:
    return round(value - base, 4) if value is not None and base is not None else None


def comparison_row(report: RunReport, base: RunReport, fields: list[str], label: str) -> ComparisonRow:
    flat = flatten_table(report.spec)
    perf, metrics = report.performance, report.metrics
    scale = report.precision.loss_scale
    failed = [c.name for c in report.checks if is_blocking(c)]
    last = metrics.epochs[-1] if metrics.epochs else None
    invariants = [c for c in report.checks if c.severity == "error"]
    return ComparisonRow(
        label=label,
        name=report.name,
        run_dir=report.run_dir,
        settings={k: flat.get(k) for k in fields},
        policy=report.precision.policy,
        status=report.status,
        images_per_second=perf.images_per_second,
        speed_ratio=_ratio(perf.images_per_second, base.performance.images_per_second),
        step_time_ms=perf.step_time_ms,
        peak_host_memory_mb=perf.peak_host_memory_mb,
        peak_device_memory_mb=perf.peak_device_memory_mb,
        error=report.error,
        test_accuracy=metrics.test_accuracy,
        test_loss=metrics.test_loss,
        val_accuracy=last.val_accuracy if last else None,
        val_loss=last.val_loss if last else None,
        accuracy_delta=_delta(metrics.test_accuracy, base.metrics.test_accuracy),
        loss_scale_final=scale.final if scale else None,
        loss_scale_min=scale.min if scale else None,
        skipped_steps=scale.overflow_steps if scale else 0,
        checks_passed=len(invariants) - len(failed),
        checks_total=len(invariants),
        failed_checks=failed,
    )


def compare(
    reports: list[RunReport],
    objective: tuple[str, str] | None = None,
    trials: list[int] | None = None,
    front: Sequence[tuple[str, str]] = (),
) -> Comparison:
    """comparison.json's content: the baseline, the fields that differ, one row per run, each with the
    label that tables and plots show for it, and (with an objective) each run's rank and the best.
    `trials`: a study's trial numbers, one per report: each label starts with its `#number`.
    `front`: several objectives: each completed row with them all says whether it is on their
    Pareto front (no other row at least as good in each and better in one)."""
    if not reports:
        raise RunDirError("compare: expected at least one finished run; got none")
    index, note = _baseline(reports)
    fields = differing_fields(reports)
    labels = run_labels(reports, fields)
    if trials is not None:
        labels = [f"#{n} {label}" for n, label in zip(trials, labels, strict=True)]
    rows = [
        comparison_row(r, reports[index], fields, label) for label, r in zip(labels, reports, strict=True)
    ]
    for row, number in zip(rows, trials or [], strict=False):
        row.trial = number
    mark_front(rows, front)
    wanted = reports[0].spec.get("checks", {}).get("max_accuracy_drop_vs")
    seeded = "seed" in fields
    return Comparison(
        baseline=Baseline(name=reports[index].name, label=labels[index], index=index, note=note),
        differing_fields=fields,
        objective=rank(rows, objective),
        rows=rows,
        points=parity.points(rows) if seeded else [],
        parity=parity.verdicts(rows, wanted),
        front=[(m, "max" if d == "max" else "min") for m, d in front],
    )


def mark_front(rows: list[ComparisonRow], front: Sequence[tuple[str, str]]) -> None:
    """Each completed row with every objective measured: on the Pareto front or not (None: not
    comparable, or a single objective)."""
    if len(front) < 2:
        return
    signs = [1.0 if mode == "max" else -1.0 for _, mode in front]
    scored = {}
    for i, row in enumerate(rows):
        values = [row.figure(metric) for metric, _ in front]
        if row.status == "completed" and all(v is not None for v in values):
            scored[i] = [s * (v or 0.0) for s, v in zip(signs, values, strict=True)]
    for i, mine in scored.items():
        dominated = any(
            all(o >= m for o, m in zip(other, mine, strict=True))
            and any(o > m for o, m in zip(other, mine, strict=True))
            for j, other in scored.items()
            if j != i
        )
        rows[i].pareto = not dominated


def rank(rows: list[ComparisonRow], objective: tuple[str, str] | None) -> Objective | None:
    """Number the completed rows by the objective (1 = best; ties share a rank; rows without the
    metric, or that did not complete, get none) and name the best; None without an objective."""
    if objective is None:
        return None
    metric, mode = objective
    sign = -1 if mode == "max" else 1
    values = {id(r): r.figure(metric) for r in rows}
    ranked = [r for r in rows if r.status == "completed" and values[id(r)] is not None]
    ranked.sort(key=lambda r: sign * (values[id(r)] or 0.0))
    for row in rows:
        row.rank = None
    for row in ranked:
        mine = sign * (values[id(row)] or 0.0)
        row.rank = 1 + sum(1 for other in ranked if sign * (values[id(other)] or 0.0) < mine)
    best = ranked[0] if ranked else None
    found = None if best is None else Best(label=best.label, name=best.name, value=values[id(best)] or 0.0)
    return Objective(metric=metric, mode="max" if mode == "max" else "min", best=found)


def objective_note(objective: Objective | None) -> str:
    """' · best by test_accuracy (max): <label> 0.93' for a sweep with an objective."""
    if not objective:
        return ""
    best = objective.best
    found = f"{best.label} ({best.value:.4g})" if best else "no completed variant has it"
    return f" · # ranks by {objective.metric} ({objective.mode}), best: {found}"


def expand_run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories as given; a sweep directory stands for the runs inside it, in the order run."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise RunDirError(f"{path}: not a directory; expected a run or sweep directory")
        if (path / "report.json").exists():
            found.append(path)
            continue
        runs = [p for p in path.iterdir() if (p / "report.json").exists()]
        if not runs:
            raise RunDirError(f"{path}: no report.json here or in its subdirectories")
        found.extend(sorted(runs, key=lambda p: (load_report(p).started_at or "", p.name)))
    return found
