"""The `runner` command line: thin commands that call one library function and render the result.

TensorFlow is imported only inside the commands that train or inspect devices (`run`, `env`), so
`runner --help`, `runner validate` and `runner schema` answer at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.syntax import Syntax

from runner.spec import BadInput, ExperimentSpec, SpecError, json_schema, load_spec, spec_hash, spec_to_toml

app = typer.Typer(
    name="runner",
    help="Declarative, test-first experiment runner for mixed-precision training with Keras.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

SpecPaths = Annotated[list[Path], typer.Argument(help="Experiment spec file(s) (TOML).", show_default=False)]
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a spec field: --set precision.policy=float32 (repeatable).",
        show_default=False,
    ),
]


def _stdout() -> Console:
    return Console(highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    _stderr().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def _load_all(paths: list[Path], overrides: list[str] | None) -> list[ExperimentSpec]:
    specs, errors = [], []
    for path in paths:
        try:
            specs.append(load_spec(path, overrides or ()))
        except SpecError as exc:
            errors.append(str(exc))
    if errors:
        raise _fail("\n".join(errors))
    return specs


@app.command()
def validate(paths: SpecPaths, overrides: Overrides = None) -> None:
    """Check spec files against the schema and print the resolved specs (no TensorFlow)."""
    out = _stdout()
    for path, spec in zip(paths, _load_all(paths, overrides), strict=True):
        out.rule(f"{path} · {spec.name} · hash {spec_hash(spec)}")
        out.print(Syntax(spec_to_toml(spec), "toml", theme="ansi_dark", background_color="default"))
    out.print(f"[green]✓[/] {len(paths)} spec(s) valid")


@app.command()
def schema() -> None:
    """Print the JSON Schema of an experiment spec."""
    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def run(
    paths: SpecPaths,
    overrides: Overrides = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where run directories go.")] = Path(
        "reports"
    ),
) -> None:
    """Validate, preflight, train, evaluate, check and report one or more experiments.

    Exit codes: 0 all passed · 1 a check failed · 2 bad input · 3 run failed · 130 interrupted.
    """
    from runner.report import render_run
    from runner.session import run_experiment

    specs = _load_all(paths, overrides)
    out, err = _stdout(), _stderr()
    worst = 0
    for spec in specs:
        try:
            outcome = run_experiment(spec, output, err)
        except BadInput as exc:
            _fail(str(exc))
            worst = max(worst, EXIT_BAD_INPUT)
            continue
        except KeyboardInterrupt:  # before training started: nothing to save
            raise _fail(f"{spec.name}: interrupted before training started", EXIT_INTERRUPTED) from None
        out.print(render_run(outcome.report))
        worst = max(worst, outcome.exit_code)
        if outcome.exit_code == EXIT_INTERRUPTED:
            break
    raise typer.Exit(worst)


@app.command()
def check(
    path: Annotated[Path, typer.Argument(help="Experiment spec file (TOML).", show_default=False)],
    overrides: Overrides = None,
    steps: Annotated[int, typer.Option(help="Timed steps per precision (0: no timing).", min=0)] = 5,
) -> None:
    """Preflight without training: build under the policy, audit every layer, probe one step, time it.

    Exit codes: 0 no errors · 1 an invariant failed · 2 bad input.
    """
    from runner.report import render_check
    from runner.session import check_experiment

    (spec,) = _load_all([path], overrides)
    try:
        outcome = check_experiment(spec, steps)
    except BadInput as exc:
        raise _fail(str(exc)) from None
    findings = [f.as_dict() for f in outcome.findings]
    _stdout().print(render_check(outcome.audit, findings, outcome.timing, outcome.environment["device"]))
    raise typer.Exit(outcome.exit_code)


@app.command()
def env() -> None:
    """TensorFlow, Keras and Python versions, devices, and what mixed precision will do here."""
    from runner.precision import mixed_precision_advice
    from runner.report import render_environment
    from runner.runs import environment_info

    info = environment_info()
    advice = [
        (p, *mixed_precision_advice(p, info["device_facts"])) for p in ("mixed_float16", "mixed_bfloat16")
    ]
    _stdout().print(render_environment(info, advice))


def main() -> None:
    app()
