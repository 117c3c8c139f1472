"""How a run is shown in a terminal: rich renderables of a report.json, a check, an environment and a
comparison, and the sink that turns the core's events into progress bars. Only the CLI imports it.

Renderables are built by pure functions and printed elsewhere, so tests render them into a
fixed-width, colourless console.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from runner.events import EpochStarted, Event, Note, RunFinished, RunStarted, StepsDone, VariantStarted
from runner.precision.checks import DTYPE_MAX, NON_COMPUTING, Finding, describe_variables, is_blocking, mark
from runner.preflight.speed import ratio_text
from runner.reporting.compare import objective_note
from runner.reporting.report import (
    TERMINAL_COLUMNS,
    CheckResult,
    Comparison,
    ComparisonRow,
    Distribution,
    EarlyStopping,
    Metrics,
    Performance,
    RunReport,
    export_caption,
    export_rows,
)
from runner.spec import COMPUTE_DTYPE

if TYPE_CHECKING:
    from runner.preflight.check import CheckOutcome
    from runner.preflight.fix import FixOutcome

STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "diverged": "red",
    "interrupted": "yellow",
    "pruned": "yellow",
}


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def audit_summary(audit: dict[str, Any] | None, policy: str | None = None) -> Table:
    """Layers per compute dtype, and by name the layers with weights that compute off the policy's
    dtype (the full per-layer table is in report.md / report.html and `runner check`)."""
    table = Table(title="Audit", show_header=True, header_style="bold", expand=False)
    table.add_column("compute dtype")
    table.add_column("layers", justify="right")
    table.add_column("with weights", justify="right")
    table.add_column("off-policy layers with weights", overflow="fold")
    if not audit:
        return table
    computing = [x for x in audit["layers"] if x["class"] not in NON_COMPUTING and not x.get("container")]
    expected = COMPUTE_DTYPE.get(policy or "")
    for dtype in sorted({x["compute_dtype"] for x in computing}):
        layers = [x for x in computing if x["compute_dtype"] == dtype]
        weighted = [x["name"] for x in layers if x["weights"]]
        off = ", ".join(weighted[:6]) + (f" (+{len(weighted) - 6})" if len(weighted) > 6 else "")
        table.add_row(
            dtype, str(len(layers)), str(len(weighted)), off if expected and dtype != expected else ""
        )
    declared = [x for x in audit["layers"] if x.get("declared")]
    table.caption = (
        f"output {audit['output_dtype']} ({', '.join(audit['output_layers'])}) · "
        f"optimizer {audit['optimizer']}"
        + (f" · {len(declared)} layer(s) as [precision.layers] declares" if declared else "")
    )
    return table


STYLE = {"passed": "green", "error": "red", "warning": "yellow", "hint": "cyan"}


def checks_table(findings: Sequence[Finding | CheckResult]) -> Table:
    table = Table(title="Checks", show_header=True, header_style="bold")
    table.add_column("", width=1)
    table.add_column("check")
    table.add_column("detail", overflow="fold")
    for f in findings:
        style = STYLE["passed" if f.passed else f.severity]
        name_style = "" if f.passed else style
        table.add_row(Text(mark(f), style=style), Text(f.name, style=name_style), Text(f.detail))
    return table


def audit_table(audit: dict[str, Any]) -> Table:
    """Every layer: class, compute dtype, variable dtypes as they really are, output dtype."""
    table = Table(title="Audit: every layer", show_header=True, header_style="bold")
    for column in ("layer", "class", "compute", "variables", "output"):
        table.add_column(column, overflow="fold")
    for x in audit["layers"]:
        compute = Text(x["compute_dtype"], style="yellow" if x["compute_dtype"] == "float32" else "")
        if x.get("declared"):
            compute.append(" (declared)", style="cyan")
        table.add_row(
            x.get("path", x["name"]), x["class"], compute, describe_variables(x), x["output_dtype"] or "—"
        )
    table.caption = (
        f"model output {audit['output_dtype']}{_output_note(audit)} · optimizer {audit['optimizer']}"
    )
    return table


def _output_note(audit: dict[str, Any]) -> str:
    """Where the output's float32 comes from: runner's appended activation or cast, and the layer
    that computes it last (a cast after a float16 softmax is float32 too late)."""
    final = audit.get("final_activation")
    notes = []
    if audit.get("output_activation_appended"):
        notes.append(f"{final['activation'] if final else 'activation'} in float32 appended by runner")
    elif audit.get("output_cast_appended"):
        notes.append("float32 cast appended by runner")
    if final and not audit.get("output_activation_appended"):
        notes.append(f"final activation {final['name']} ({final['activation']}) in {final['compute_dtype']}")
    return f" ({'; '.join(notes)})" if notes else ""


def speed_table(record: dict[str, Any]) -> Table:
    """Every candidate timed for a run or a check: policy, XLA, step time, against float32."""
    table = Table(title="Speed, measured here", show_header=True, header_style="bold")
    for column in ("policy", "XLA", "step", "× float32", "first execution", "note"):
        table.add_column(
            column, justify="right" if column in ("step", "× float32", "first execution") else "left"
        )
    timed = [t for t in record["timings"] if t.get("step_ms") is not None and t["policy"] == "float32"]
    reference = min((t["step_ms"] for t in timed), default=None)
    for t in record["timings"]:
        step = t.get("step_ms")
        ratio = "—" if step is None or not reference else f"{step / reference:.2f}"
        first = "—" if t.get("first_ms") is None else f"{t['first_ms'] / 1000:.1f} s"
        note = t.get("note") or ("cached" if t.get("cached") else "")
        table.add_row(
            t["policy"],
            "yes" if t["xla"] else "no",
            _fmt(step, ".1f") + (" ms" if step else ""),
            ratio,
            first,
            note,
        )
    return table


def render_check(audit: dict[str, Any], findings: Sequence[Finding], speed: dict | None) -> Group:
    counts = Counter(f.severity for f in findings if not f.passed)
    summary = ", ".join(f"{counts.get(k, 0)} {k}(s)" for k in ("error", "warning", "hint"))
    style = "red" if counts.get("error") else "green"
    parts: list[RenderableType] = [audit_table(audit), checks_table(findings)]
    if audit.get("numerics"):
        parts.append(Text(numerics_statement(audit["numerics"])))
    if speed is not None:
        parts.append(speed_table(speed))
        if speed.get("policy"):
            parts.append(Text(f"policy: {speed['policy']['why']}"))
        parts.append(Text(f"XLA: {speed['xla']['why']}"))
        if speed.get("statement"):
            parts.append(Text(speed["statement"], style="bold yellow" if speed.get("slow") else "bold"))
    parts.append(Text(f"{'FAILED' if counts.get('error') else 'OK'}: {summary}", style=f"bold {style}"))
    return Group(*parts)


def numerics_statement(numerics: dict[str, Any]) -> str:
    """One paragraph of what the policy did to the first step's numbers (fidelity.numerics_probe)."""
    probe = f"first step probed {numerics.get('probe_compiled', 'eager')}"
    if "skipped" in numerics:
        return f"{probe}; gradient fidelity not measured: {numerics['skipped']}"
    rows = [r for r in numerics["layers"] if r["finite"]]
    overall = numerics["overall"]
    parts = [f"{probe}; gradients of {len(numerics['layers'])} layers against a float32 copy"]
    if overall["finite"]:
        parts.append(f"cosine {overall['cosine']:.5f}, relative error {overall['relative_error']:.3g}")
    if rows:
        cosine = min(rows, key=lambda r: r["cosine"])
        error = max(rows, key=lambda r: r["relative_error"])
        parts.append(
            f"worst layer cosine {cosine['cosine']:.5f} ({cosine['layer']}), worst layer relative error "
            f"{error['relative_error']:.3g} ({error['layer']})"
        )
    underflow = max(numerics["layers"], key=lambda r: r["underflow"], default=None)
    if underflow is not None:
        parts.append(f"most underflow {underflow['underflow']:.3%} ({underflow['layer']})")
    if numerics["activations"]:
        top = max(numerics["activations"], key=lambda r: r["max_abs"])
        parts.append(f"largest activation {top['max_abs']:.4g} ({top['layer']}, {top['dtype']})")
    return "Numerics: " + "; ".join(parts) + f" ({numerics['seconds']:.2f} s)"


def metrics_table(metrics: Metrics) -> Table:
    table = Table(title="Metrics", show_header=True, header_style="bold")
    # The rate column only when it moved: a constant rate is in the spec already.
    moving = len({e.learning_rate for e in metrics.epochs}) > 1
    columns = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", *(("lr",) if moving else ()))
    for col in (*columns, "images/s", "seconds"):
        table.add_column(col, justify="right")
    for e in metrics.epochs:
        table.add_row(
            str(e.epoch),
            _fmt(e.loss),
            _fmt(e.accuracy),
            _fmt(e.val_loss),
            _fmt(e.val_accuracy),
            *((_fmt(e.learning_rate, ".3g"),) if moving else ()),
            _fmt(e.images_per_second, ",.0f"),
            _fmt(e.seconds, ".1f"),
        )
    table.caption = f"test loss {_fmt(metrics.test_loss)} · test accuracy {_fmt(metrics.test_accuracy)}"
    return table


def _headline(report: RunReport) -> Text:
    style = STATUS_STYLE.get(report.status, "red")
    failed = [c for c in report.checks if is_blocking(c)]
    status = report.status + (f", {len(failed)} check(s) failed" if failed else "")
    p = report.precision
    text = Text.assemble(
        (f"{report.name}  ", "bold"),
        (status, f"bold {style}"),
        f"\npolicy {p.policy} · compute {p.compute_dtype} · variables {p.variable_dtype}",
    )
    scale = p.loss_scale.described() if p.loss_scale else None
    if scale:
        text.append(f"\nloss scale {scale}")
    _performance_lines(text, report.performance)
    text.append(f"\n{report.environment.device}")
    augmentation = report.data.augmentation if report.data else []
    lines = [
        f"augmentation: {', '.join(augmentation)}" if augmentation else None,
        distribution_line(report.distribution),
        early_stopping_line(report.early_stopping),
    ]
    for line in lines:
        if line:
            text.append(f"\n{line}")
    measured = report.speed or {}
    if measured.get("policy"):
        text.append(f"\npolicy chosen: {measured['policy']['why']}")
    if measured.get("statement"):
        text.append(f"\n{measured['statement']}", style="yellow" if measured.get("slow") else "")
    if report.error:
        text.append(f"\n{report.error}", style=style)
    return text


def _performance_lines(text: Text, perf: Performance) -> None:
    text.append(
        f"\n{_fmt(perf.images_per_second, ',.0f')} images/s · step {_fmt(perf.step_time_ms, '.1f')} ms"
        f" · peak host memory {_fmt(perf.peak_host_memory_mb, ',.0f')} MB"
    )
    if perf.peak_device_memory_mb is not None:
        text.append(f" · peak device memory {perf.peak_device_memory_mb:,.0f} MB")
    if perf.steps_per_execution is not None:
        text.append(f"\n{perf.steps_per_execution} steps per execution ({perf.steps_per_execution_why})")
    if perf.xla is not None and perf.xla.why:
        text.append(f"\n{'compiled by XLA' if perf.xla.used else 'no XLA'} ({perf.xla.why})")


def early_stopping_line(stopping: EarlyStopping | None) -> str | None:
    """Where early stopping ended the run and which weights it ended with (None without it)."""
    if stopping is None or stopping.best_epoch is None:
        return None
    where = (
        f"stopped after epoch {stopping.stopped_at_epoch}" if stopping.stopped_at_epoch else "ran every epoch"
    )
    best = f"best epoch {stopping.best_epoch} ({stopping.monitor} {_fmt(stopping.best_value, '.4g')})"
    weights = (
        "its weights restored for the test" if stopping.restored_epoch else "the last epoch's weights kept"
    )
    return f"early stopping: {where}, {best}, {weights}"


def distribution_line(distribution: Distribution | None) -> str | None:
    """Where the replicas were, for a run that was not on one device (older reports have none)."""
    if distribution is None or distribution.strategy == "none":
        return None
    where = f"{distribution.workers} workers, " if distribution.workers > 1 else ""
    return (
        f"{distribution.strategy}: {where}{distribution.replicas} replicas · global batch "
        f"{distribution.global_batch}, {distribution.per_replica_batch} per replica"
    )


def render_run(report: RunReport) -> RenderableType:
    """The end-of-run report: headline, audit summary, checks, metrics, where the files are."""
    parts: list[RenderableType] = [_headline(report), audit_summary(report.audit, report.precision.policy)]
    parts.append(checks_table(report.checks))
    if report.metrics.epochs:
        parts.append(metrics_table(report.metrics))
    exported = (report.export or {}).get("files", [])
    if any(line.get("accuracy") is not None for line in exported):
        parts.append(export_table(report.export or {}))
    if exported:
        names = ", ".join(line["path"] for line in exported if not line.get("skipped"))
        parts.append(Text(f"exported: {names} · runner predict RUN_DIR[/FILE] IMAGES...", style="dim"))
    parts.append(Text(f"run directory: {report.run_dir}", style="dim"))
    return Panel(Group(*parts), title="runner report", border_style=STATUS_STYLE.get(report.status, "red"))


def render_environment(env: dict[str, Any], machine: dict[str, Any] | None) -> RenderableType:
    """Versions and devices, then each policy's measured training step (speed.MachineSpeed; None:
    not measured, in an environment that cannot train)."""
    table = Table(title="Environment", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key in ("python", "tensorflow", "keras", "numpy", "runner", "platform", "device"):
        table.add_row(key, str(env.get(key)))
    support = env.get("supported") or {}
    if support:
        table.add_row("supported", Text(support["detail"], style="green" if support["ok"] else "red"))
    facts = env.get("device_facts", {})
    table.add_row("cpu features", ", ".join(facts.get("cpu_flags", [])) or "none of note")
    gpu = facts.get("gpu")
    table.add_row("gpu", f"{gpu['name']} (compute capability {gpu['compute_capability']})" if gpu else "none")
    if machine is None:
        return Group(table, Text("Mixed precision here: not measured (see supported above)", style="yellow"))
    return Group(table, machine_table(machine, facts))


def machine_table(machine: dict[str, Any], facts: dict[str, Any]) -> Table:
    """One row per policy: its step without and with XLA, its fastest against float32's, and what
    the device's features say (the why beside the figure, never instead of it)."""
    from runner.precision.policy import hardware_note

    timings = machine["timings"]
    table = Table(title="Mixed precision here, measured", show_header=True, header_style="bold")
    for column in ("policy", "without XLA", "with XLA", "against float32", "why"):
        table.add_column(column, overflow="fold", justify="right" if "XLA" in column else "left")
    reference = min(
        (t["step_ms"] for t in timings if t["policy"] == "float32" and t["step_ms"]), default=None
    )
    for policy in ("float32", "mixed_bfloat16", "mixed_float16"):
        mine = {t["xla"]: t for t in timings if t["policy"] == policy}
        cells = [_step_cell(mine.get(False)), _step_cell(mine.get(True))]
        steps = [t["step_ms"] for t in mine.values() if t.get("step_ms")]
        verdict = Text("—")
        if steps and reference:
            ratio = min(steps) / reference
            words = "the reference" if policy == "float32" else ratio_text(ratio)
            style = "green" if ratio < 0.95 else ("yellow" if ratio > 1.05 else "")
            verdict = Text(words, style=style)
        table.add_row(policy, *cells, verdict, hardware_note(policy, facts))
    where = "cached" if machine.get("cached") else "measured now"
    table.caption = (
        f"a training step of {machine['model']}, batch {machine['batch']}; {where} "
        f"({machine['measured_at']}, {machine['seconds']:.1f} s) · runner env --refresh measures again"
    )
    return table


def _step_cell(timing: dict[str, Any] | None) -> Text:
    if timing is None:
        return Text("—")
    if timing.get("step_ms") is None:
        return Text(timing.get("note") or "not timed", style="dim")
    return Text(f"{timing['step_ms']:.1f} ms")


@contextlib.contextmanager
def candidate_progress(console: Console, total: int, description: str) -> Iterator[Any]:
    """A progress bar of timed candidates; yields the callback speed.measure reports each one to.
    A bar that is never advanced (every figure cached) is removed without a trace."""
    progress = Progress(
        TextColumn(f"[bold]{escape(description)}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[label]}"),
        console=console,
        transient=True,
    )
    task = progress.add_task(description, total=total, label="")

    def on_timed(timing: Any) -> None:
        progress.start()
        progress.update(task, advance=1, label=f"{timing.label} {_fmt(timing.step_ms, '.1f')} ms")

    try:
        yield on_timed
    finally:
        progress.stop()


def _ratio_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _result_text(row: ComparisonRow) -> Text:
    failed = row.failed_checks
    if row.status == "completed" and not failed:
        return Text(f"✓ {row.checks_passed}/{row.checks_total}", style="green")
    if row.status == "completed":
        return Text("✗ " + ", ".join(failed), style="red")
    reason = row.error  # why it failed, diverged, was interrupted or pruned
    return Text(row.status + (f": {reason}" if reason else ""), style=STATUS_STYLE.get(row.status, "red"))


def _scale_text(row: ComparisonRow) -> str:
    scale = _fmt(row.loss_scale_final, "g")
    if row.loss_scale_min not in (None, row.loss_scale_final):
        scale += f" (min {row.loss_scale_min:g})"
    return scale


def setting_texts(values: list[Any]) -> list[str]:
    """A column of swept values as short as keeps them apart: floats to the fewest significant
    figures (3 at least) at which distinct values stay distinct (a random search's
    0.004217892109349711 → 0.00422), everything else as written."""
    floats = [v for v in values if isinstance(v, float)]
    for figures in range(3, 18):
        shown = {v: f"{v:.{figures}g}" for v in floats}
        if len(set(shown.values())) == len(set(floats)):
            break
    return [shown[v] if isinstance(v, float) else str(v) for v in values]


def comparison_table(comparison: Comparison) -> Table:
    """One row per run, narrow enough for 80 columns: the spec fields that differ (and the run's label
    where they do not tell the runs apart), speed and memory against the baseline, accuracy, loss
    scale, result. With an objective (a random search has test_accuracy by default), ranked best first.
    Step times and device memory are in comparison.json/.md/.html."""
    fields = comparison.differing_fields
    rows = comparison.rows
    objective = comparison.objective
    columns = [setting_texts([r.settings[f] for r in rows]) for f in fields]
    settings = list(zip(*columns, strict=True)) if fields else [() for _ in rows]
    run_column = ["run"] if not fields or len(set(settings)) < len(settings) else []
    table = Table(
        title="Comparison",
        header_style="bold",
        caption=(comparison.baseline.note or "") + objective_note(objective) + _front_note(comparison),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    ranked = ["#"] if objective else []
    trials = ["trial"] if any(r.trial is not None for r in rows) else []  # a study's
    trials += ["front"] if comparison.front else []  # several objectives: ★ on their Pareto front
    for name in ranked + trials + run_column + fields:
        table.add_column(
            name.split(".")[-1], no_wrap=True, min_width=1 if name in ("#", "trial", "front") else 7
        )
    for name in ("img/s", "×base", "MB", "acc", "Δacc", "scale", "skip"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("result", overflow="fold", min_width=12)
    order = list(range(len(rows)))
    if objective:  # best first; unranked rows (failed, no metric) last, in their order
        order.sort(key=lambda i: (rows[i].rank is None, rows[i].rank or 0))
    for i in order:
        r, values = rows[i], settings[i]
        table.add_row(
            *([_fmt(r.rank, "d")] if ranked else []),
            *([_fmt(r.trial, "d")] if "trial" in trials else []),
            *([("★" if r.pareto else "")] if "front" in trials else []),
            *([r.label] if run_column else []),
            *values,
            _fmt(r.images_per_second, ",.0f"),
            _ratio_text(r.speed_ratio),
            _fmt(r.peak_host_memory_mb, ",.0f"),
            _fmt(r.test_accuracy, ".3f"),
            _fmt(r.accuracy_delta, "+.3f"),
            _scale_text(r),
            str(r.skipped_steps),
            _result_text(r),
        )
    return table


def _front_note(comparison: Comparison) -> str:
    if not comparison.front:
        return ""
    return " · ★ Pareto front of " + " and ".join(f"{m} ({d})" for m, d in comparison.front)


def parity_lines(comparison: Comparison) -> list[Text]:
    """Under a comparison with seeds: each point's mean ± interval, and each parity verdict."""
    lines = []
    for point in comparison.points:
        shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.settings.items()) or point.policy
        interval = (
            f" [{point.ci_low:.4f}, {point.ci_high:.4f}]"
            if point.ci_low is not None and point.ci_high is not None
            else ""
        )
        mean = "—" if point.mean_test_accuracy is None else f"{point.mean_test_accuracy:.4f}"
        lines.append(Text(f"{shown}: test accuracy {mean}{interval} over {point.seeds} seed(s)"))
    style = {"pass": ("✓ ", "green"), "fail": ("✗ ", "red"), "none": ("· ", "yellow")}
    for verdict in comparison.parity:
        mark, color = style[verdict.verdict]
        lines.append(Text(mark + verdict.statement, style=color))
    return lines


SHOWN_EPOCHS = 10  # bars on screen: the newest epochs (the report lists every epoch's metrics)


class TerminalEvents:
    """The core's events as a terminal shows them: the run directory and notes on `console`, one
    progress bar per epoch on `live` (a console on the real terminal: while a run trains, file
    descriptor 2 goes to its tensorflow.log). Call it with each event; `close` when done."""

    def __init__(self, console: Console, live: Console):
        self.console = console
        self._task: TaskID | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=live,
        )

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.console.print(f"[dim]run directory[/] {escape(str(event.run_dir))}", soft_wrap=True)
        elif isinstance(event, Note):
            style = "yellow" if event.level == "warning" else "dim"
            self.console.print(f"[{style}]{event.level}:[/] {escape(event.message)}", soft_wrap=True)
        elif isinstance(event, VariantStarted):
            settings = ", ".join(f"{k}={v}" for k, v in event.settings.items())
            self.console.print(f"[bold]{escape(event.name)}[/] {escape(settings)}", soft_wrap=True)
        elif isinstance(event, EpochStarted):
            self.progress.start()
            if len(self.progress.task_ids) >= SHOWN_EPOCHS:  # bounded: a run may have 10**9 epochs
                self.progress.remove_task(self.progress.task_ids[0])
            description = f"epoch {event.epoch}/{event.epochs}"
            self._task = self.progress.add_task(
                description, total=event.steps, completed=event.completed, metrics=""
            )
        elif isinstance(event, StepsDone) and self._task is not None:
            self.progress.update(self._task, completed=event.completed, metrics=progress_text(event))
        elif isinstance(event, RunFinished):
            self.close()

    def close(self) -> None:
        self.progress.stop()


def progress_text(event: StepsDone) -> str:
    """ "loss 0.4321  acc 0.8765  1,234 img/s" from a progress event's running means."""
    labels = {"loss": "loss", "accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}
    parts = [f"{label} {event.metrics[key]:.4f}" for key, label in labels.items() if key in event.metrics]
    if event.images_per_second:
        parts.append(f"{event.images_per_second:,.0f} img/s")
    return "  ".join(parts)


def _megabytes(size: int | None) -> str:
    return "—" if size is None else f"{size / 2**20:.2f} MB"


def export_table(record: dict[str, Any]) -> Table:
    """Each exported file: its runtime, precision, size, accuracy against the run's, latency, round trip."""
    table = Table(title="Exported", show_header=True, header_style="bold", caption=export_caption(record))
    table.box, table.padding, table.pad_edge = box.SIMPLE_HEAD, (0, 1), False
    for i, header in TERMINAL_COLUMNS.items():
        right = i >= 3
        table.add_column(header, overflow="fold", justify="right" if right else "left", no_wrap=right)
    for row in export_rows(record):
        table.add_row(*(escape(row[i].removesuffix(" MB")) for i in TERMINAL_COLUMNS))
    return table


def render_export(run_dir: Any, findings: Sequence[Finding], record: dict[str, Any]) -> RenderableType:
    """`runner export`: the files written and measured, the checks, where they are."""
    checkpoint = record.get("checkpoint")
    parts: list[RenderableType] = [export_table(record), checks_table(list(findings))]
    parts.append(Text(f"from checkpoint {checkpoint} · written to {run_dir}", style="dim"))
    return Group(*parts)


def predictions_table(found: list[dict[str, Any]]) -> Table:
    """`runner predict`: each image's most probable classes."""
    table = Table(title="Predictions", show_header=True, header_style="bold")
    table.add_column("image", overflow="fold")
    table.add_column("class")
    table.add_column("probability", justify="right")
    table.add_column("next", overflow="fold")
    for item in found:
        first, *rest = item["top"]
        others = ", ".join(f"{x['class']} {x['probability']:.3f}" for x in rest)
        table.add_row(
            escape(item["file"]), escape(first["class"]), f"{first['probability']:.3f}", escape(others)
        )
    return table


INVARIANTS = (
    "compute_dtype",
    "variable_dtype",
    "output_dtype",
    "loss_scale_optimizer",
    "loss_scale",
    "policy_in_force",
)


def _fix_column(outcome: CheckOutcome | None, policy: str) -> list[str]:
    """One column of the --fix table: exit, first overflow, invariants, fidelity, step time."""
    from runner.preflight.fix import first_overflow, step_ms

    if outcome is None:
        return ["—"] * 6
    failed = [f.name for f in outcome.findings if is_blocking(f)]
    overflow = first_overflow(outcome)
    where = "none"
    if overflow is not None:
        measured = "inf/NaN" if overflow["nonfinite"] else f"max |x| {overflow['max_abs']:.4g}"
        limit = DTYPE_MAX.get(overflow["dtype"], 0)
        where = f"{overflow['layer']}: {overflow['tensor']} {measured} ({overflow['dtype']} max {limit:,.0f})"
    invariants = [f for f in outcome.findings if f.name in INVARIANTS]
    held = sum(f.passed for f in invariants)
    overall = (outcome.audit.get("numerics") or {}).get("overall") or {}
    fidelity = (
        f"cosine {overall['cosine']:.4f}, error {overall['relative_error']:.3g}"
        if overall.get("finite")
        else "not finite"
        if overall
        else "not measured"
    )
    step, reference = step_ms(outcome, policy), step_ms(outcome, "float32")
    timed = (
        "not timed"
        if step is None
        else f"{step:.1f} ms" + (f" ({step / reference:.2f}× float32)" if reference else "")
    )
    return [
        f"{outcome.exit_code}" + (f" ({', '.join(failed)})" if failed else ""),
        where,
        f"{held} of {len(invariants)} hold",
        fidelity,
        timed,
        mark_of(outcome),
    ]


def mark_of(outcome: CheckOutcome) -> str:
    attention = next((f for f in outcome.findings if f.name == "attention_headroom"), None)
    return (
        "—"
        if attention is None
        else f"{mark(attention)} {attention.severity if not attention.passed else 'passed'}"
    )


def render_fix(outcome: FixOutcome, spec_path: Path, policy: str) -> Group:
    """`runner check --fix`: the spec as written, patched, and under mixed_bfloat16, side by side."""
    table = Table(
        title="--fix: the spec as written, with the patch, and under mixed_bfloat16", header_style="bold"
    )
    table.add_column("")
    table.add_column(f"as written ({policy})", overflow="fold")
    table.add_column("patched", overflow="fold")
    table.add_column("mixed_bfloat16 (unpatched)", overflow="fold")
    columns = [
        _fix_column(outcome.before, policy),
        _fix_column(outcome.after, policy),
        _fix_column(outcome.bfloat16, "mixed_bfloat16"),
    ]
    names = [
        "exit code",
        "first overflow",
        "invariants",
        "gradient vs float32",
        "step time",
        "attention headroom",
    ]
    for i, name in enumerate(names):
        table.add_row(name, *(column[i] for column in columns))
    parts: list[RenderableType] = [table]
    for proposal, code in outcome.tried:
        tried = ", ".join(f'"{k}" = "{v}"' for k, v in proposal.items())
        parts.append(Text(f"tried {tried}: exit {code}{' ✓' if proposal == outcome.patch else ''}"))
    if outcome.patch_file is not None:
        parts.append(
            Text(f"patch written: {outcome.patch_file} (the spec is not edited)", style="bold green")
        )
        parts.append(Text(f"apply it: runner run {spec_path} --patch {outcome.patch_file}"))
    if outcome.reason:
        parts.append(Text(outcome.reason, style="bold yellow"))
    from runner.preflight.fix import bfloat16_verdict

    verdict = bfloat16_verdict(outcome, policy)
    if verdict:
        parts.append(Text(verdict, style="bold"))
    return Group(*parts)
