"""Side-by-side comparison of finished runs: pure functions from report.json dicts to rows.

The baseline is the first completed float32 run; without one, the first run, and the comparison
says so. Only the spec fields that differ between runs are shown, and each run is labelled by them:
runs of one spec file often share a name (`--set precision.policy=...`), so a name is no identity.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from runner.precision.checks import is_blocking
from runner.spec import BadInput, experiment_fields, flatten_table


class RunDirError(BadInput):
    """A directory that is not a finished run (no readable report.json)."""


def differing_fields(reports: list[dict[str, Any]]) -> list[str]:
    """Dotted spec fields whose values are not the same in every run (the name and [tracking] aside)."""
    flats = [flatten_table(experiment_fields(r["spec"])) for r in reports]
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


def _settings_label(report: dict[str, Any], fields: list[str], keys: dict[str, str]) -> str:
    flat = flatten_table(report["spec"])
    if len(fields) == 1:
        return _shown(flat[fields[0]]) if fields[0] in flat else "—"
    # A field this run lacks (another model kind's) is left out: kind= already says why.
    return ", ".join(f"{keys[f]}={_shown(flat[f])}" for f in fields if f in flat) or "—"


def _dir_name(report: dict[str, Any]) -> str:
    return Path(report["run_dir"]).name if report.get("run_dir") else str(report["name"])


def _distinct(labels: list[str], reports: list[dict[str, Any]]) -> list[str]:
    """A label shared by runs that are otherwise equal gets the run directory, then the position."""
    repeated = {label for label, n in Counter(labels).items() if n > 1}
    labels = [
        f"{label} ({_dir_name(r)})" if label in repeated and label != _dir_name(r) else label
        for label, r in zip(labels, reports, strict=True)
    ]
    repeated = {label for label, n in Counter(labels).items() if n > 1}  # the same directory twice
    return [f"{label} #{i + 1}" if label in repeated else label for i, label in enumerate(labels)]


def run_labels(reports: list[dict[str, Any]], fields: list[str]) -> list[str]:
    """One distinct label per run, by what differs between the runs: the values of the differing
    spec fields; else the names; else the run directories."""
    if fields:
        keys = _short_keys(fields)
        labels = [_settings_label(r, fields, keys) for r in reports]
    elif len({r["name"] for r in reports}) > 1:
        labels = [str(r["name"]) for r in reports]
    else:
        labels = [_dir_name(r) for r in reports]
    return _distinct(labels, reports)


def _baseline(reports: list[dict[str, Any]]) -> tuple[int, str]:
    for i, r in enumerate(reports):
        if r["precision"]["policy"] == "float32" and r["status"] == "completed":
            return i, f"ratios against the float32 run {r['name']}"
    return 0, f"no completed float32 run: ratios against the first run, {reports[0]['name']}"


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value and base else None


def _delta(value: float | None, base: float | None) -> float | None:
    return round(value - base, 4) if value is not None and base is not None else None


def comparison_row(report: dict[str, Any], base: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    flat = flatten_table(report["spec"])
    perf, metrics = report["performance"], report["metrics"]
    scale = report["precision"].get("loss_scale") or {}
    failed = [c["name"] for c in report["checks"] if is_blocking(c)]
    last = metrics["epochs"][-1] if metrics.get("epochs") else {}
    invariants = [c for c in report["checks"] if c["severity"] == "error"]
    return {
        "name": report["name"],
        "run_dir": report.get("run_dir"),
        "settings": {k: flat.get(k) for k in fields},
        "policy": report["precision"]["policy"],
        "status": report["status"],
        "images_per_second": perf.get("images_per_second"),
        "speed_ratio": _ratio(perf.get("images_per_second"), base["performance"].get("images_per_second")),
        "step_time_ms": perf.get("step_time_ms"),
        "peak_host_memory_mb": perf.get("peak_host_memory_mb"),
        "peak_device_memory_mb": perf.get("peak_device_memory_mb"),
        "error": report.get("error"),  # why a failed, diverged or interrupted variant ended
        "test_accuracy": metrics.get("test_accuracy"),
        "test_loss": metrics.get("test_loss"),
        "val_accuracy": last.get("val_accuracy"),
        "val_loss": last.get("val_loss"),
        "accuracy_delta": _delta(metrics.get("test_accuracy"), base["metrics"].get("test_accuracy")),
        "loss_scale_final": scale.get("final"),
        "loss_scale_min": scale.get("min"),
        "skipped_steps": scale.get("overflow_steps", 0),
        "checks_passed": len(invariants) - len(failed),
        "checks_total": len(invariants),
        "failed_checks": failed,
    }


def compare(reports: list[dict[str, Any]], objective: tuple[str, str] | None = None) -> dict[str, Any]:
    """comparison.json's content: the baseline, the fields that differ, one row per run, each with the
    label that tables and plots show for it, and (with an objective) each run's rank and the best."""
    if not reports:
        raise RunDirError("compare: expected at least one finished run; got none")
    index, note = _baseline(reports)
    fields = differing_fields(reports)
    labels = run_labels(reports, fields)
    rows = [
        {"label": label, **comparison_row(r, reports[index], fields)}
        for label, r in zip(labels, reports, strict=True)
    ]
    return {
        "baseline": {"name": reports[index]["name"], "label": labels[index], "index": index, "note": note},
        "differing_fields": fields,
        "objective": rank(rows, objective),
        "rows": rows,
    }


def rank(rows: list[dict[str, Any]], objective: tuple[str, str] | None) -> dict[str, Any] | None:
    """Number the completed rows by the objective (1 = best; ties share a rank; rows without the
    metric, or that did not complete, get none) and name the best; None without an objective."""
    if objective is None:
        return None
    metric, mode = objective
    ranked = [r for r in rows if r["status"] == "completed" and isinstance(r.get(metric), int | float)]
    ranked.sort(key=lambda r: -r[metric] if mode == "max" else r[metric])
    for row in rows:
        row["rank"] = None
    for row in ranked:
        row["rank"] = 1 + sum(
            1
            for other in ranked
            if (other[metric] > row[metric] if mode == "max" else other[metric] < row[metric])
        )
    best = ranked[0] if ranked else None
    return {
        "metric": metric,
        "mode": mode,
        "best": None
        if best is None
        else {"label": best["label"], "name": best["name"], "value": best[metric]},
    }


def objective_note(objective: dict[str, Any] | None) -> str:
    """' · best by test_accuracy (max): <label> 0.93' for a sweep with an objective."""
    if not objective:
        return ""
    best = objective["best"]
    found = f"{best['label']} ({best['value']:.4g})" if best else "no completed variant has it"
    return f" · # ranks by {objective['metric']} ({objective['mode']}), best: {found}"


def load_report(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if (run_dir / "spec.toml").is_file():  # a run that was killed (or is still training)
            raise RunDirError(
                f"{run_dir}: no report.json yet: the run was killed before it could write one, or is "
                f"still training; continue it with: runner resume {run_dir}"
            ) from None
        raise RunDirError(f"{run_dir}: not a run directory (no report.json)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: unreadable ({exc})") from None
    missing = {"name", "status", "spec", "precision", "metrics", "performance", "checks"} - set(report)
    if missing:
        raise RunDirError(f"{path}: expected a runner report; missing {', '.join(sorted(missing))}")
    return report


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
        found.extend(sorted(runs, key=lambda p: (load_report(p).get("started_at") or "", p.name)))
    return found
