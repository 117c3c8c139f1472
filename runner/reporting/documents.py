"""report.md / report.html of a run and comparison.md / comparison.html of several.

Both formats render the same sections (a title, paragraphs, tables, preformatted text). The HTML is
self-contained: inline CSS, plots as inline SVG, no external URL. Markdown links the SVG files
written next to it.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from runner.precision.checks import MARKS, describe_variables, mark
from runner.reporting import plots
from runner.reporting.compare import objective_note
from runner.reporting.report import (
    EXPORT_COLUMNS,
    Comparison,
    ComparisonRow,
    RunReport,
    export_caption,
    export_rows,
)
from runner.runs import write_text_atomic

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:72rem;margin:2rem auto;
padding:0 1rem;color:#1b1b1b}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}th,td{border:1px solid #ccc;padding:.25rem .6rem;
text-align:left;font-size:.9rem}th{background:#f3f3f3}pre{background:#f6f6f6;padding:.8rem;overflow:auto}
.ok{color:#1a7f37}.error{color:#cf222e;font-weight:600}.warning{color:#9a6700}.hint{color:#0969da}
figure{display:inline-block;margin:0 1rem 1rem 0}svg{max-width:100%;height:auto}
"""


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    pre: str | None = None
    plots: dict[str, str] = field(default_factory=dict)  # file stem → SVG


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e9 or abs(value) < 1e-4):
            return f"{value:.4g}"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------- a run


def run_summary(report: RunReport) -> list[str]:
    """The paragraphs that open a run's document: status, dtypes, speed, memory, test metrics, loss scale."""
    p, perf, metrics = report.precision, report.performance, report.metrics
    audit = report.audit or {"output_dtype": None, "optimizer": None}
    device_memory = perf.peak_device_memory_mb
    summary = [
        f"Status: {report.status}" + (f" — {report.error}" if report.error else ""),
        f"Policy {p.policy}: compute {p.compute_dtype}, variables {p.variable_dtype}, "
        f"output {audit['output_dtype']}, optimizer {audit['optimizer']}.",
        f"{_cell(perf.images_per_second)} images/s, {_cell(perf.step_time_ms)} ms per step, "
        f"peak host memory {_cell(perf.peak_host_memory_mb)} MB"
        + (f", peak device memory {_cell(device_memory)} MB." if device_memory else "."),
        f"Test loss {_cell(metrics.test_loss)}, test accuracy {_cell(metrics.test_accuracy)}.",
    ]
    if p.layers_per_dtype:
        counts = ", ".join(f"{n} in {dtype}" for dtype, n in p.layers_per_dtype.items())
        summary.append(f"Layers that compute: {counts}.")
    if p.declared_layers:
        shown = ", ".join(f"{x.path} ({x.compute_dtype})" for x in p.declared_layers[:8])
        more = f" and {len(p.declared_layers) - 8} more" if len(p.declared_layers) > 8 else ""
        summary.append(f"Declared in [precision.layers]: {shown}{more}.")
    scale = p.loss_scale.described(of_steps=True) if p.loss_scale else None
    if scale:
        summary.append(f"Loss scale {scale}.")
    measured = report.speed or {}
    if measured.get("statement"):
        xla = (measured.get("xla") or {}).get("why")
        summary.append(measured["statement"] + (f"; XLA: {xla}." if xla else "."))
    distribution = report.distribution
    if distribution is not None and distribution.strategy != "none":
        summary.append(
            f"Distribution {distribution.strategy}: {distribution.workers} worker(s), "
            f"{distribution.replicas} replicas, global batch {distribution.global_batch} "
            f"({distribution.per_replica_batch} per replica)."
        )
    return summary


EPOCH_COLUMNS = [
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "images_per_second",
    "seconds",
]


def run_sections(report: RunReport) -> list[Section]:
    audit = report.audit or {"layers": []}
    layers = [
        [x.get("path", x["name"]), x["class"], x["compute_dtype"], describe_variables(x), x["output_dtype"]]
        for x in audit["layers"]
    ]
    environment = report.environment.model_dump(exclude_none=True)
    return [
        Section(f"{report.name} — runner report", paragraphs=run_summary(report)),
        Section(
            "Checks",
            headers=["", "check", "severity", "detail"],
            rows=[[mark(c), c.name, c.severity, c.detail] for c in report.checks],
        ),
        Section(
            "Metrics per epoch",
            headers=[c.replace("images_per_second", "images/s") for c in EPOCH_COLUMNS],
            rows=[[getattr(e, c) for c in EPOCH_COLUMNS] for e in report.metrics.epochs],
        ),
        Section("Plots", plots=run_plots(report)),
        *_export_sections(report),
        Section(
            "Audit: every layer", headers=["layer", "class", "compute", "variables", "output"], rows=layers
        ),
        Section("Environment", headers=["", ""], rows=[[k, v] for k, v in environment.items()]),
        Section("Spec", paragraphs=[f"spec hash {report.spec_hash}"], pre=tomli_w.dumps(report.spec)),
    ]


def _export_sections(report: RunReport) -> list[Section]:
    """The exported files and their measured figures (none when nothing was exported)."""
    record = report.export or {}
    if not record.get("files"):
        return []
    caption = export_caption(record)
    return [
        Section(
            "Exported",
            paragraphs=[caption] if caption else [],
            headers=EXPORT_COLUMNS,
            rows=[list(row) for row in export_rows(record)],
        )
    ]


def run_plots(report: RunReport) -> dict[str, str]:
    records = report.metrics.epochs
    found: dict[str, str] = {}
    if records:
        runs = {report.name: records}
        found["loss"] = plots.metric_curves(runs, "loss", "Loss per epoch")
        found["accuracy"] = plots.metric_curves(runs, "accuracy", "Accuracy per epoch")
        per_epoch = {str(r.epoch): r.images_per_second for r in records}
        found["throughput"] = plots.throughput_bars(per_epoch, "Throughput per epoch", "epoch")
        if len({r.learning_rate for r in records}) > 1:  # a schedule that moved the rate
            found["learning_rate"] = plots.learning_rate_curve(records)
    scale = report.precision.loss_scale
    if scale is not None and scale.history:
        found["loss_scale"] = plots.loss_scale_plot(scale.history, scale.steps or 0)
    return found


# ---------------------------------------------------------------- a comparison


def comparison_sections(comparison: Comparison, reports: list[RunReport]) -> list[Section]:
    fields = comparison.differing_fields
    objective = comparison.objective
    headers = [
        *(["rank"] if objective else []),
        "run",
        *fields,
        "status",
        "images/s",
        "× baseline",
        "step ms",
        "host MB",
        "device MB",
        "test acc",
        "Δ acc",
        "scale final",
        "scale min",
        "skipped",
        "checks",
    ]
    rows = [[*([r.rank] if objective else []), *_comparison_cells(r, fields)] for r in comparison.rows]
    sections = [
        Section(
            "Comparison",
            paragraphs=[(comparison.baseline.note or "") + objective_note(objective)],
            headers=headers,
            rows=rows,
        ),
        *_seed_sections(comparison),
        Section("Plots", plots=comparison_plots(comparison, reports)),
    ]
    return sections


def _seed_sections(comparison: Comparison) -> list[Section]:
    """With seeds: each point's mean test accuracy and its 95 % interval; the parity verdicts."""
    found = []
    if comparison.points:
        found.append(
            Section(
                "Over seeds",
                paragraphs=["Test accuracy per point: the mean over its seeds and its 95 % t interval."],
                headers=["point", "runs", "completed", "mean test acc", "95 % interval"],
                rows=[
                    [
                        ", ".join(f"{k}={v}" for k, v in p.settings.items()) or p.policy,
                        p.runs,
                        p.seeds,
                        p.mean_test_accuracy,
                        f"[{p.ci_low:.4f}, {p.ci_high:.4f}]"
                        if p.ci_low is not None and p.ci_high is not None
                        else "—",
                    ]
                    for p in comparison.points
                ],
            )
        )
    if comparison.front:
        shown = " and ".join(f"{m} ({d})" for m, d in comparison.front)
        on = [r.label for r in comparison.rows if r.pareto]
        found.append(
            Section(
                "Pareto front",
                paragraphs=[
                    f"The runs no other run beats in every one of {shown}: {', '.join(on) or 'none'}. "
                    "The plot below draws them against the rest."
                ],
            )
        )
    if comparison.parity:
        found.append(
            Section(
                "Parity",
                paragraphs=[
                    "Each policy against the baseline policy with the same other settings, the test "
                    "accuracies paired by seed: the mean difference and its 95 % t interval. Within: the "
                    "interval's lower bound is above -drop ([checks] max_accuracy_drop_vs)."
                ],
                headers=["verdict", "statement"],
                rows=[
                    [{"pass": "✓ within", "fail": "✗ fails", "none": "no verdict"}[v.verdict], v.statement]
                    for v in comparison.parity
                ],
            )
        )
    return found


def _comparison_cells(r: ComparisonRow, fields: list[str]) -> list[Any]:
    return [
        r.label,
        *(r.settings[f] for f in fields),
        r.status + (f": {r.error}" if r.error and r.status != "completed" else ""),
        r.images_per_second,
        r.speed_ratio,
        r.step_time_ms,
        r.peak_host_memory_mb,
        r.peak_device_memory_mb,
        r.test_accuracy,
        r.accuracy_delta,
        r.loss_scale_final,
        r.loss_scale_min,
        r.skipped_steps,
        f"{r.checks_passed}/{r.checks_total}"
        + (f" ✗ {', '.join(r.failed_checks)}" if r.failed_checks else ""),
    ]


def comparison_plots(comparison: Comparison, reports: list[RunReport]) -> dict[str, str]:
    """Curves and bars keyed by the rows' labels, which are distinct where names need not be."""
    rows = comparison.rows  # one per report, in the same order
    runs = {row.label: r.metrics.epochs for row, r in zip(rows, reports, strict=True) if r.metrics.epochs}
    found: dict[str, str] = {}
    if runs:
        found["loss"] = plots.metric_curves(runs, "loss", "Loss per epoch")
        found["accuracy"] = plots.metric_curves(runs, "accuracy", "Accuracy per epoch")
    throughput = {row.label: row.images_per_second for row in rows}
    found["throughput"] = plots.throughput_bars(throughput, "Throughput", "run", per_run=True)
    if len(comparison.front) >= 2:  # the first two objectives: x the second, y the first
        (y_metric, _), (x_metric, _) = comparison.front[:2]
        points = {
            row.label: (
                float(row.figure(x_metric) or 0.0),
                float(row.figure(y_metric) or 0.0),
                bool(row.pareto),
            )
            for row in rows
            if row.pareto is not None
        }
        if points:
            found["pareto"] = plots.pareto_plot(points, x_metric, y_metric)
    return found


# ---------------------------------------------------------------- rendering


def _md_escape(value: Any) -> str:
    return _cell(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(sections: list[Section], plot_dir: str = "plots") -> str:
    lines: list[str] = []
    for i, section in enumerate(sections):
        lines += [f"{'#' if i == 0 else '##'} {section.title}", ""]
        lines += [f"{p}  " for p in section.paragraphs] + ([""] if section.paragraphs else [])
        if section.headers:
            lines.append("| " + " | ".join(section.headers) + " |")
            lines.append("|" + "---|" * len(section.headers))
            lines += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in section.rows]
            lines.append("")
        if section.pre is not None:
            lines += ["```toml", section.pre.rstrip(), "```", ""]
        lines += [f"![{name}]({plot_dir}/{name}.svg)" for name in section.plots]
        lines += [""] if section.plots else []
    return "\n".join(lines)


CSS_CLASS = {MARKS[kind]: "ok" if kind == "passed" else kind for kind in MARKS}  # ✓ → ok, ✗ → error…


def _html_row(row: list[Any], tag: str = "td") -> str:
    cells = []
    for value in row:
        text = _cell(value)
        css = CSS_CLASS.get(text)
        cells.append(f"<{tag}{f' class={css}' if css else ''}>{html.escape(text)}</{tag}>")
    return "<tr>" + "".join(cells) + "</tr>"


def to_html(sections: list[Section]) -> str:
    body: list[str] = []
    for i, section in enumerate(sections):
        body.append(f"<h{1 if i == 0 else 2}>{html.escape(section.title)}</h{1 if i == 0 else 2}>")
        body += [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
        if section.headers:
            body.append("<table><thead>" + _html_row(section.headers, "th") + "</thead><tbody>")
            body += [_html_row(row) for row in section.rows]
            body.append("</tbody></table>")
        if section.pre is not None:
            body.append(f"<pre>{html.escape(section.pre)}</pre>")
        body += [
            f'<figure id="plot-{name}">{plots.inline_svg(svg)}</figure>'
            for name, svg in section.plots.items()
        ]
    title = html.escape(sections[0].title)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_documents(folder: Path, stem: str, sections: list[Section]) -> None:
    """`stem`.md and `stem`.html in `folder`, plus the SVG files the Markdown links, written atomically."""
    plot_dir = folder / "plots"
    for section in sections:
        for name, svg in section.plots.items():
            plot_dir.mkdir(exist_ok=True)
            write_text_atomic(plot_dir / f"{name}.svg", svg)
    write_text_atomic(folder / f"{stem}.md", to_markdown(sections))
    write_text_atomic(folder / f"{stem}.html", to_html(sections))


def write_run_documents(run_dir: Path, report: RunReport) -> None:
    write_documents(run_dir, "report", run_sections(report))


def write_comparison_documents(folder: Path, comparison: Comparison, reports: list[RunReport]) -> None:
    write_documents(folder, "comparison", comparison_sections(comparison, reports))
