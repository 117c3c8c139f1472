"""The `runner` command line: thin commands that call one library function and render the result.

TensorFlow is imported only inside the commands that train or inspect devices (`run`, `env`), so
`runner --help`, `runner validate` and `runner schema` answer at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax

from runner import exits
from runner.reporting.report import resume_command
from runner.spec import (
    BadInput,
    ExperimentSpec,
    SpecError,
    SpecValueError,
    Variant,
    json_schema,
    load_plan,
    load_spec,
    load_study,
    plan_size,
    spec_hash,
    spec_to_toml,
)

T = TypeVar("T")

app = typer.Typer(
    name="runner",
    help="Declarative, test-first experiment runner for mixed-precision training with Keras.",
    no_args_is_help=True,
    add_completion=False,
    # Help texts are rich markup on every typer version (before 0.20.1 the default did not parse it), so
    # a literal "[" is written "\[" everywhere: rich takes a bare "[sweep]" for a style tag and drops it.
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)

CONFIRM_ABOVE = 32  # experiments in one plan: a sweep of this many runs for hours on a CPU
SHOWN_VARIANTS = CONFIRM_ABOVE  # `runner validate` prints this many resolved specs in full

SpecPaths = Annotated[list[Path], typer.Argument(help="Experiment spec file(s) (TOML).", show_default=False)]
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a spec field: --set precision.policy=float32 (repeatable).",
        show_default=False,
    ),
]


Patches = Annotated[
    list[Path] | None,
    typer.Option(
        "--patch",
        help="A TOML file merged into the spec (what `runner check --fix` writes; repeatable).",
        show_default=False,
    ),
]


def _stdout() -> Console:
    return Console(highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


@contextlib.contextmanager
def _terminal_events() -> Iterator[Any]:
    """The sink that shows a run's events: notes on stderr, progress bars on a copy of file descriptor
    2 made now, before a run sends fd 2 (TensorFlow's C++ logging) to its tensorflow.log."""
    from runner.reporting.views import TerminalEvents

    terminal = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace")
    live = Console(file=terminal, force_terminal=terminal.isatty() or None)
    # Notes go where stderr is now: on the real file descriptor 2 (a terminal, a pipe), through the
    # copy, or a warning while a run trains would land in its tensorflow.log.
    notes = Console(file=terminal, stderr=True, highlight=False) if _is_fd_2(sys.stderr) else _stderr()
    events = TerminalEvents(notes, live)
    try:
        yield events
    finally:
        events.close()
        terminal.close()


def _is_fd_2(stream: Any) -> bool:
    try:
        return bool(stream.fileno() == 2)
    except (AttributeError, OSError, ValueError):  # a captured stream (a test's) has no descriptor
        return False


def _interruptible(command: Callable[..., None]) -> Callable[..., None]:
    """Ctrl-C or SIGTERM (main() makes it one) outside a run's own handling: exit 130 with one line,
    not click's "Aborted!" and exit 1 (a run itself reports and exits 130 on its own)."""

    @functools.wraps(command)
    def interruptible(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt:
            raise _fail("interrupted", exits.INTERRUPTED) from None

    return interruptible


def _fail(message: str, code: int = exits.BAD_INPUT) -> typer.Exit:
    # Escaped: messages quote "[sweep …]" and "[checks]", which rich would take for markup and drop.
    _stderr().print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def _load_all(
    paths: list[Path], overrides: list[str] | None, patches: list[Path] | None = None
) -> list[ExperimentSpec]:
    """Single experiments (no [sweep]): every file's errors at once, then exit 2."""
    return _collect(paths, lambda path: [load_spec(path, overrides or (), patches or ())])


def _load_plans(
    paths: list[Path], overrides: list[str] | None, patches: list[Path] | None = None
) -> list[Variant]:
    """Every experiment the files ask for, sweeps expanded: every file's errors at once, then exit 2."""
    return _collect(paths, lambda path: load_plan(path, overrides or (), patches or ()))


def _collect(paths: list[Path], load: Callable[[Path], list[T]]) -> list[T]:
    loaded: list[T] = []
    errors = []
    for path in paths:
        try:
            loaded += load(path)
        except SpecError as exc:
            errors.append(str(exc))
    if errors:
        raise _fail("\n".join(errors))
    return loaded


FailFast = Annotated[
    bool, typer.Option("--fail-fast", help="A sweep: stop at the first variant that does not pass.")
]
Parallel = Annotated[
    int,
    typer.Option(
        "--parallel", min=1, help="A sweep: run N variants at once (one GPU each, or a share of the cores)."
    ),
]


@contextlib.contextmanager
def _bad_input_exits(spec_file: Path) -> Iterator[None]:
    """Bad input met while a command works, as exit 2: a spec value refused (`spec_file` named
    first), or any other BadInput as it words itself."""
    try:
        yield
    except SpecValueError as exc:
        raise _fail(f"{spec_file}: {exc}") from None
    except BadInput as exc:
        raise _fail(str(exc)) from None


@app.command()
@_interruptible
def validate(
    paths: SpecPaths,
    overrides: Overrides = None,
    data: Annotated[
        bool,
        typer.Option(
            "--data", help="Also read the data each spec names and decode every image (no training)."
        ),
    ] = False,
) -> None:
    """Check spec files against the schema; print resolved specs and sweep variants (no TensorFlow
    unless --data: then each spec's data is read, and every file that does not decode is named)."""
    out = _stdout()
    studies = _collect(paths, lambda path: [load_study(path, overrides or ())])
    if any(studies):
        _print_studies([s for s in studies if s is not None])
        paths = [p for p, s in zip(paths, studies, strict=True) if s is None]
        if not paths:
            return
    variants = _load_plans(paths, overrides)
    for variant in variants[:SHOWN_VARIANTS]:
        spec = variant.spec
        settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in variant.settings.items())
        out.rule(f"{spec.name} · hash {spec_hash(spec)}" + (f" · {settings}" if settings else ""))
        out.print(Syntax(spec_to_toml(spec), "toml", theme="ansi_dark", background_color="default"))
    if len(variants) > SHOWN_VARIANTS:
        out.rule(f"… and {len(variants) - SHOWN_VARIANTS:,} more experiments, each validated (not shown)")
    swept = sum(1 for v in variants if v.settings)
    planned = f" ({swept} sweep variant(s))" if swept else ""
    out.print(f"[green]✓[/] {len(paths)} spec file(s) valid: {len(variants)} experiment(s) planned{planned}")
    if data:
        _validate_data(variants)


def _print_studies(studies: list[Any]) -> None:
    """What `runner validate` says of a study: its points are chosen as it runs, so its search space."""
    out = _stdout()
    for study in studies:
        options = study.options
        out.rule(
            f"{study.group} · a study: {options.trials} trials, method {options.method}, seed {study.seed}"
        )
        for key, axis in study.axes.items():
            out.print(f"  {key}: {escape(json.dumps(axis))}")
        metric, mode = options.objective
        pruning = options.pruning
        pruned = f"{pruning.kind} pruning"
        if pruning.kind == "median":
            pruned += f" (after {pruning.startup_trials} trials, from epoch {pruning.warmup_epochs + 1})"
        out.print(f"  objective {metric} ({mode}) · {pruned} · storage {options.storage or 'sqlite'}")
        out.print(
            f"[green]✓[/] {study.source} valid: a study of {options.trials} trials (each value of the search "
            "space tried against the spec); Optuna chooses each trial's point as the study runs"
        )


def _validate_data(variants: list[Variant]) -> None:
    """Each distinct [data] of the plan read as a run would; every undecodable file named, exit 2."""
    from runner.data.image_folder import UndecodableFiles
    from runner.data.sources import scan_data

    out, seen, bad_files = _stdout(), set(), []
    for variant in variants:
        key = (json.dumps(variant.spec.data.model_dump(), sort_keys=True), variant.spec.seed)
        if key in seen:
            continue
        seen.add(key)
        try:
            summary, bad = scan_data(variant.spec.data, variant.spec.seed)
        except BadInput as exc:
            raise _fail(f"{variant.source}: {exc}") from None
        counts = ", ".join(f"{summary[s]} {s}" for s in ("train", "validation", "test"))
        out.print(f"[green]✓[/] data {summary['source']}: {summary['num_classes']} classes, {counts}")
        bad_files += bad
    if bad_files:
        raise _fail(str(UndecodableFiles(bad_files)))


@app.command()
def schema(
    report: Annotated[bool, typer.Option("--report", help="report.json's schema instead.")] = False,
    comparison: Annotated[bool, typer.Option("--comparison", help="comparison.json's instead.")] = False,
    sweep: Annotated[bool, typer.Option("--sweep", help="A sweep directory's sweep.json's instead.")] = False,
    study: Annotated[bool, typer.Option("--study", help="A study's study.json's instead.")] = False,
    export: Annotated[bool, typer.Option("--export", help="export/export.json's instead.")] = False,
) -> None:
    """Print the JSON Schema of an experiment spec (or of a file runner writes, with its schema_version)."""
    flags = {"report": report, "comparison": comparison, "sweep": sweep, "study": study, "export": export}
    chosen = [name for name, on in flags.items() if on]
    if len(chosen) > 1:
        shown = ", ".join(f"--{name}" for name in flags)
        raise _fail(f"expected at most one of {shown}; got {len(chosen)}")
    if not chosen:
        typer.echo(json.dumps(json_schema(), indent=2))
        return
    from runner.reporting.report import json_schema as file_schema

    typer.echo(json.dumps(file_schema(chosen[0]), indent=2))


@app.command()
def run(
    paths: SpecPaths,
    overrides: Overrides = None,
    patches: Patches = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where run directories go.")] = Path(
        "reports"
    ),
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help=f"Run a plan of more than {CONFIRM_ABOVE} experiments.")
    ] = False,
    fail_fast: FailFast = False,
    parallel: Parallel = 1,
    mlflow: Annotated[
        bool,
        typer.Option("--mlflow", help="Log each run to MLflow when it ends (as \\[tracking] mlflow = true)."),
    ] = False,
) -> None:
    r"""Validate, preflight, train, evaluate, check and report experiments (a \[sweep]: a comparison).

    A sweep or several specs run each in its own process (one after another, or --parallel N at once)
    and end in a comparison table; a failed variant does not stop the others (--fail-fast does).

    Exit codes: 0 all passed · 1 a check failed · 2 bad input · 3 run failed · 130 interrupted
    (a sweep: the worst of its variants').
    """
    from runner.sweeps import run_plan

    settings = [*(overrides or []), *(["tracking.mlflow=true"] if mlflow else [])]
    size = sum(_collect(paths, lambda path: [plan_size(path, settings, patches or ())]))  # before made
    if size > CONFIRM_ABOVE and not yes:
        raise _fail(
            f"{size:,} experiments planned (more than {CONFIRM_ABOVE}): check the [sweep] lists, "
            "then run them with --yes"
        )
    studies = _collect(paths, lambda path: [load_study(path, settings, patches or ())])
    if any(studies):
        _run_study(paths, studies, output, fail_fast, parallel)
    variants = _load_plans(paths, settings, patches)
    if len(variants) > 1:
        how = f"{parallel} at a time" if parallel > 1 else "one after another"
        _stderr().print(f"{len(variants)} experiments planned, run {how}")
    try:
        with _terminal_events() as events:
            plan = run_plan(variants, output, events, fail_fast=fail_fast, parallel=parallel)
    except BadInput as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:  # before training started: nothing to save
        raise _fail("interrupted before training started", exits.INTERRUPTED) from None
    _print_plan(plan)


def _run_study(paths: list[Path], studies: list[Any], output: Path, fail_fast: bool, parallel: int) -> None:
    """`runner run` of a spec file whose [sweep] is a study (alone): make it, drive it, report it."""
    from runner import studies as engine

    if len(paths) > 1:
        study = next(p for p, s in zip(paths, studies, strict=True) if s is not None)
        raise _fail(f"{study}: a study runs alone; expected one spec file; got {len(paths)}")
    if fail_fast or parallel > 1:
        raise _fail(
            f"{paths[0]}: --fail-fast and --parallel are a plan's: a study goes on past a failed trial (its "
            "sampler learns from it); run more trials at once with `runner sweep-worker SWEEP_DIR` in more "
            "processes (docs/studies.md)"
        )
    try:
        with _bad_input_exits(paths[0]), _terminal_events() as events:
            outcome = engine.run_study(studies[0], output, events)
    except KeyboardInterrupt:
        raise _fail("interrupted before a trial started", exits.INTERRUPTED) from None
    _print_study(outcome)


def _print_study(outcome: Any) -> None:
    """A study's comparison, its trials' states, where it is; exit with the study's code."""
    from collections import Counter

    from runner.reporting.views import comparison_table

    out = _stdout()
    if outcome.comparison is not None:
        out.print(comparison_table(outcome.comparison))
    counts = Counter(outcome.states.values())
    shown = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    best = outcome.comparison.objective.best if outcome.comparison and outcome.comparison.objective else None
    found = f" · best: {best.label} ({best.value:.4g})" if best else ""
    out.print(f"{len(outcome.states)} trials: {shown}{found}", soft_wrap=True)
    out.print(f"[dim]sweep directory[/] {outcome.sweep_dir}", soft_wrap=True)
    if outcome.exit_code == exits.INTERRUPTED:
        _stderr().print(f"resume the study with: [bold]runner resume {outcome.sweep_dir}[/]", soft_wrap=True)
    raise typer.Exit(outcome.exit_code)


def _print_plan(plan: Any) -> None:
    """Every run's report, then a sweep's comparison and where it is; exit with the plan's code."""
    from runner.reporting.views import comparison_table, parity_lines, render_run

    out = _stdout()
    for outcome in plan.outcomes:
        out.print(render_run(outcome.record))
        if outcome.status == "interrupted":
            _stderr().print(
                f"resume with: [bold]{escape(resume_command(outcome.run_dir))}[/]", soft_wrap=True
            )
    if plan.comparison is not None:
        out.print(comparison_table(plan.comparison))
        for line in parity_lines(plan.comparison):
            out.print(line, soft_wrap=True)
        out.print(f"[dim]sweep directory[/] {plan.group_dir}", soft_wrap=True)
        if plan.exit_code == exits.INTERRUPTED:
            _stderr().print(f"resume the sweep with: [bold]runner resume {plan.group_dir}[/]", soft_wrap=True)
    raise typer.Exit(plan.exit_code)


@app.command()
@_interruptible
def resume(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="An interrupted (or killed) run directory, or a sweep directory.", show_default=False
        ),
    ],
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="A sweep: resume its failed and diverged variants too.")
    ] = False,
    fail_fast: FailFast = False,
    parallel: Parallel = 1,
    mlflow: Annotated[bool, typer.Option("--mlflow", help="Log the run to MLflow when it ends.")] = False,
) -> None:
    """Continue an interrupted run from its newest checkpoint; or a sweep: its completed variants
    kept, the interrupted one resumed, the rest run. Exit codes as `run`."""
    from runner import studies
    from runner.reporting.views import render_run
    from runner.session import resume_experiment
    from runner.sweeps import SWEEP_FILE, resume_plan

    if studies.is_study_dir(run_dir):
        if fail_fast or parallel > 1 or retry_failed:
            raise _fail(
                f"{run_dir}: a study resumes its interrupted trials and runs the rest; --retry-failed, "
                "--fail-fast and --parallel are a plan's (more at once: `runner sweep-worker`)"
            )
        try:
            with _terminal_events() as events:
                resumed = studies.drive(run_dir, events, adopt=True)
        except BadInput as exc:
            raise _fail(str(exc)) from None
        _print_study(resumed)
    if (run_dir / SWEEP_FILE).is_file():
        try:
            with _terminal_events() as events:
                plan = resume_plan(
                    run_dir, events, retry_failed=retry_failed, fail_fast=fail_fast, parallel=parallel
                )
        except BadInput as exc:
            raise _fail(str(exc)) from None
        _print_plan(plan)
    if not (run_dir / "spec.toml").is_file():
        raise _fail(f"{run_dir}: not a run directory (no spec.toml) nor a sweep directory (no {SWEEP_FILE})")
    command = resume_command(run_dir)
    if command.startswith("runner launch") and not os.environ.get("TF_CONFIG"):
        raise _fail(
            f"{run_dir}: a multi_worker run resumes on all its workers at once: `{command}` on this machine, "
            "or your cluster manager's job with TF_CONFIG set for each worker"
        )
    with _bad_input_exits(run_dir / "spec.toml"), _terminal_events() as events:
        outcome = resume_experiment(run_dir, events, mlflow)
    _stdout().print(render_run(outcome.record))
    if outcome.status == "interrupted":
        _stderr().print(f"resume with: [bold]{escape(resume_command(outcome.run_dir))}[/]", soft_wrap=True)
    raise typer.Exit(outcome.exit_code)


@app.command("sweep-worker")
@_interruptible
def sweep_worker(
    sweep_dir: Annotated[
        Path,
        typer.Argument(
            help="A study's sweep directory (`runner sweep-create` or `runner run` made it).",
            show_default=False,
        ),
    ],
) -> None:
    r"""Run a study's trials until it has them all, beside any other worker: each trial is claimed
    from the shared study (its storage, and a lock in the sweep directory), so N workers (a Slurm job
    array, a Kubernetes indexed Job, N processes here) never run one twice. docs/studies.md.

    Exit codes as `run` (0: the study has its trials and one completed).
    """
    from runner import studies

    if not studies.is_study_dir(sweep_dir):
        raise _fail(f"{sweep_dir}: no {studies.STUDY_FILE}; expected a study's sweep directory")
    try:
        with _terminal_events() as events:
            outcome = studies.drive(sweep_dir, events)
    except BadInput as exc:
        raise _fail(str(exc)) from None
    _print_study(outcome)


@app.command("sweep-create")
def sweep_create(
    path: Annotated[
        Path, typer.Argument(help="A spec file whose \\[sweep] is a study (trials = N).", show_default=False)
    ],
    overrides: Overrides = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the sweep directory goes.")] = Path(
        "reports"
    ),
) -> None:
    r"""Make a study's sweep directory and its storage without running a trial, and print its path:
    then start `runner sweep-worker SWEEP_DIR` as many times as you like (docs/studies.md)."""
    from runner import studies

    found = _collect([path], lambda p: [load_study(p, overrides or ())])[0]
    if found is None:
        raise _fail(
            f"{path}: sweep: expected a study ([sweep] trials = N); got no [sweep] or a plan without trials"
        )
    with _bad_input_exits(path):
        sweep_dir = studies.create(found, output)
    typer.echo(str(sweep_dir))


@app.command()
def launch(
    target: Annotated[
        Path,
        typer.Argument(help="A spec (TOML), or a multi-worker run directory to resume.", show_default=False),
    ],
    workers: Annotated[int, typer.Option("--workers", "-n", help="Worker processes to start.")] = 2,
    overrides: Overrides = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where run directories go.")] = Path(
        "reports"
    ),
) -> None:
    """Train one spec on N worker processes on this machine (127.0.0.1), as a cluster would
    (multi_worker, each with its TF_CONFIG). For trying and testing: real clusters set TF_CONFIG
    themselves. Exit code: the chief's (as `run`)."""
    from runner.cluster.launch import launch as launch_workers

    if workers < 1:
        raise _fail(f"--workers: expected at least 1; got {workers}")
    try:
        code = launch_workers(target, workers, output, overrides or [])
    except BadInput as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(code)


@app.command()
def compare(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run directories (or sweep directories).", show_default=False)
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write comparison.{json,md,html} here.")
    ] = None,
) -> None:
    """Side-by-side table of finished runs: speed and memory against float32, accuracy, loss scale, checks.
    Runs over seeds with [checks] max_accuracy_drop_vs: the parity verdict (exit 1 when it fails)."""
    from runner.reporting import compare as comparing
    from runner.reporting.report import load_report

    try:
        reports = [load_report(d) for d in comparing.expand_run_dirs(run_dirs)]
        comparison = comparing.compare(reports)
    except BadInput as exc:
        raise _fail(str(exc)) from None
    from runner.reporting.views import comparison_table, parity_lines

    _stdout().print(comparison_table(comparison))
    for line in parity_lines(comparison):
        _stdout().print(line, soft_wrap=True)
    if output is not None:
        from runner.reporting.documents import write_comparison_documents
        from runner.runs import require_writable, write_json_atomic

        try:
            require_writable(output)
            output.mkdir(parents=True, exist_ok=True)
            write_json_atomic(output / "comparison.json", comparison.to_json())
            write_comparison_documents(output, comparison, reports)
        except BadInput as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:  # a disk that fills up between the probe and the writes
            raise _fail(f"--output {output}: cannot write the comparison ({exc.strerror})") from None
        _stdout().print(f"[dim]written[/] {output}/comparison.json, comparison.md, comparison.html")
    if any(v.verdict == "fail" for v in comparison.parity):
        raise typer.Exit(exits.CHECK_FAILED)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.", show_default=False)],
    format: Annotated[str, typer.Option("--format", "-f", help="terminal, md, html or json.")] = "terminal",
) -> None:
    """Re-render a finished run: terminal, rewrite report.md / report.html, or print report.json."""
    from runner.reporting.report import load_report

    if format not in {"terminal", "md", "html", "json"}:
        raise _fail(f'--format: expected one of terminal, md, html, json; got "{format}"')
    try:
        data = load_report(run_dir)
    except BadInput as exc:
        raise _fail(str(exc)) from None
    if format == "json":
        typer.echo(json.dumps(data.to_json(), indent=2))
    elif format == "terminal":
        from runner.reporting.views import render_run

        _stdout().print(render_run(data))
    else:
        from runner.reporting.documents import write_run_documents

        write_run_documents(run_dir, data)
        path = run_dir / f"report.{format}"
        typer.echo(path.read_text(encoding="utf-8") if format == "md" else str(path))


@app.command("mlflow-sync")
def mlflow_sync(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="Finished run directories (or sweep directories).", show_default=False),
    ],
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="Default: the run's \\[tracking], MLFLOW_TRACKING_URI, sqlite beside the runs."),
    ] = None,
    experiment: Annotated[str | None, typer.Option(help="Default: the run's \\[tracking], its name.")] = None,
) -> None:
    """Log finished runs to MLflow from their files (a sweep: a parent run, its variants nested); a
    run already logged there is not logged twice. Exit codes: 0 · 2 (not a run, MLflow unavailable)."""
    from runner.reporting.tracking import sync

    try:
        logged = sync(run_dirs, tracking_uri, experiment)
    except BadInput as exc:
        raise _fail(str(exc)) from None
    out = _stdout()
    for item in logged:
        what = "logged" if item.new else "already logged, not again"
        out.print(f"{what}: {item.path} → {item.uri} (experiment {item.experiment_id}, run {item.run_id})")


@app.command()
@_interruptible
def check(
    path: Annotated[Path, typer.Argument(help="Experiment spec file (TOML).", show_default=False)],
    overrides: Overrides = None,
    patches: Patches = None,
    steps: Annotated[
        int, typer.Option(help="Most steps per timed execution (0: nothing timed, no XLA for auto).", min=0)
    ] = 5,
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="If a layer overflows inside (attention), write the smallest \\[precision.layers] override "
            "that removes it as SPEC.fix.toml, proven by checking again with it; mixed_bfloat16 beside it.",
        ),
    ] = False,
) -> None:
    """Preflight without training: build under the policy, audit every layer, probe one step, time it.

    Exit codes: 0 no errors (with --fix: the patched spec has none) · 1 an invariant failed · 2 bad input.
    """
    from runner.preflight.check import check_experiment
    from runner.reporting.views import render_check

    (spec,) = _load_all([path], overrides, patches)
    if fix:
        _check_and_fix(spec, path, steps)
    with _bad_input_exits(path):
        outcome = check_experiment(spec, steps)
    _stdout().print(render_check(outcome.audit, outcome.findings, outcome.speed))
    raise typer.Exit(outcome.exit_code)


def _check_and_fix(spec: ExperimentSpec, path: Path, steps: int) -> None:
    from runner.preflight.fix import fix_experiment
    from runner.reporting.views import render_check, render_fix

    with _bad_input_exits(path):
        outcome = fix_experiment(spec, path, steps)
    out = _stdout()
    before = outcome.before
    out.print(render_check(before.audit, before.findings, before.speed))
    out.print(render_fix(outcome, path, spec.precision.policy))
    raise typer.Exit(outcome.exit_code)


EXPORT_FORMATS = ("keras", "saved_model", "litert", "onnx")  # spec.ExportFormat's (tests hold them equal)
QUANTIZATIONS = ("float16", "int8_dynamic", "int8", "keras_int8")  # spec.Quantization's


@app.command()
@_interruptible
def export(
    run_dir: Annotated[
        Path, typer.Argument(help="A finished or interrupted run directory.", show_default=False)
    ],
    formats: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            "-f",
            help="keras, saved_model, litert or onnx (repeatable); default: the spec's [export].",
            show_default=False,
        ),
    ] = None,
    quantize: Annotated[
        list[str] | None,
        typer.Option(
            "--quantize",
            "-q",
            help="float16, int8_dynamic, int8 (LiteRT, ONNX: int8_dynamic) or keras_int8 (repeatable).",
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            help="latest, or best (early stopping's best epoch); default: the weights the run reported.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Export a run's model from a checkpoint (model.keras, saved_model/, model.tflite, model.onnx, and
    quantized copies), each run by its own runtime in a fresh process on the test split; beside what
    the run already holds (exports/<checkpoint>/), never over it.
    Exit codes: 0 exported and checked · 1 a round trip or the accuracy budget failed · 2 bad input."""
    from runner.export.finished_run import export_experiment

    for given in formats or []:
        if given not in EXPORT_FORMATS:
            raise _fail(f'--format: expected one of {", ".join(EXPORT_FORMATS)}; got "{given}"')
    for given in quantize or []:
        if given not in QUANTIZATIONS:
            raise _fail(f'--quantize: expected one of {", ".join(QUANTIZATIONS)}; got "{given}"')
    if checkpoint not in {None, "latest", "best"}:
        raise _fail(f'--checkpoint: expected latest or best; got "{checkpoint}"')
    if not (run_dir / "spec.toml").is_file():
        raise _fail(f"{run_dir}: not a run directory (no spec.toml)")
    with _bad_input_exits(run_dir / "spec.toml"):
        outcome = export_experiment(
            run_dir,
            list(dict.fromkeys(formats or [])),
            checkpoint,
            list(dict.fromkeys(quantize)) if quantize else None,
        )
    from runner.reporting.views import render_export

    _stdout().print(render_export(outcome.written_to, outcome.findings, outcome.record))
    raise typer.Exit(outcome.exit_code)


@app.command()
@_interruptible
def predict(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run directory (its model.keras), or a file it exported: .keras, .tflite, .onnx, "
            "or a SavedModel folder.",
            show_default=False,
        ),
    ],
    images: Annotated[
        list[Path], typer.Argument(help="Image files, or folders of them.", show_default=False)
    ],
    top: Annotated[int, typer.Option(help="Classes shown per image, most probable first.", min=1)] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 2 when any file cannot be decoded (the rest still predicted)."),
    ] = False,
) -> None:
    """Class names and probabilities for images, from the run's exported model (run by its own runtime:
    Keras, TensorFlow, LiteRT or ONNX Runtime) and its preprocessing.

    A file that cannot be decoded is skipped and named on stderr; the others are predicted. Exit codes:
    0 predicted · 2 bad input (no file decodes; with --strict, any file that does not)."""
    from runner.export.predict import MAX_SKIPPED_SHOWN, predict_files

    try:
        predictions = predict_files(run_dir, images, top)
    except BadInput as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(predictions.found, indent=2))
    else:
        from runner.reporting.views import predictions_table

        _stdout().print(predictions_table(predictions.found))
    skipped = predictions.skipped
    if skipped:
        named = "".join(f"\n  {file}: {why}" for file, why in skipped[:MAX_SKIPPED_SHOWN])
        more = (
            f"\n  … and {len(skipped) - MAX_SKIPPED_SHOWN:,} more" if len(skipped) > MAX_SKIPPED_SHOWN else ""
        )
        message = (
            f"{len(skipped):,} of {len(skipped) + len(predictions.found):,} file(s) skipped: they cannot be "
            f"decoded as BMP, GIF, JPEG or PNG images:{named}{more}"
        )
        if strict:
            raise _fail(message)
        _stderr().print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


@app.command()
@_interruptible
def env(
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Measure again, forgetting every cached measurement.")
    ] = False,
) -> None:
    """Versions, devices, and each policy's training step measured here against float32.

    A small CNN is trained in float32, mixed_bfloat16 and mixed_float16, each with and without XLA
    (at most 15 s). The figures are cached per machine, with the timings run and check take of
    your models; --refresh measures again.
    """
    from runner.preflight import speed
    from runner.reporting.views import candidate_progress, render_environment
    from runner.runs import environment_info

    info = environment_info()
    if refresh:
        speed.forget()
    if not info["supported"]["ok"]:  # nothing can train here: the table says what to install
        _stdout().print(render_environment(info, None))
        return
    total = len(speed.POLICIES) * 2
    with candidate_progress(_stderr(), total, "measuring a training step") as on_timed:
        measured = speed.machine_speed(info["device_facts"], refresh=refresh, on_timed=on_timed)
    _stdout().print(render_environment(info, measured.as_dict()))


def main() -> None:
    # A file name that is not UTF-8 reaches messages as lone surrogates, which a strict UTF-8 stream
    # cannot write: printed as escapes, never a UnicodeEncodeError in place of the message.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    # SIGTERM (a scheduler's stop, `kill`) as Ctrl-C: a run checkpoints and reports; before training,
    # or any other command, stops at once with exit 130 instead of dying without a word.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from runner.training.telemetry import watch_signals

    watch_signals()  # a stop before training bounded even while TensorFlow holds the main thread
    app()
