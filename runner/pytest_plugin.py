"""runner's pytest plugin: experiment specs as test items (docs/testing.md).

Inert unless used. A `*.toml` becomes a test only when it is named on the command line
(`pytest specs/quickstart.toml`), lies directly in a directory named there and looks like an
experiment (`pytest specs/bugs/`), or lies anywhere under `--runner-specs DIR`; `pyproject.toml`
never does. An item runs the preflight of `runner check` (build under the policy, audit, one-step
probe) and fails with its failed findings; with `[checks] run_in_tests = true`, or `--runner-train`,
it trains into pytest's temporary directory and asserts the run's checks as well.

Nothing here imports TensorFlow, nor the spec's loader until a spec is collected.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

# Top-level tables one of which a TOML in a named directory must have to be taken for a spec.
SPEC_TABLES = ("precision", "model", "data", "training", "checks", "sweep")
ROOTS = pytest.StashKey[dict[str, list[Path]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("runner", "runner experiment specs (docs/testing.md)")
    group.addoption(
        "--runner-specs",
        action="append",
        default=[],
        metavar="DIR",
        help="collect every experiment spec (*.toml) under DIR as a test item (repeatable)",
    )
    group.addoption(
        "--runner-train",
        action="store_true",
        help="train every collected spec and assert its [checks] (default: the preflight only, "
        "unless the spec sets [checks] run_in_tests = true)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "runner_spec: an experiment spec collected by runner's plugin")
    config.addinivalue_line("markers", "runner_train: a spec item that trains (run_in_tests, --runner-train)")
    here = config.invocation_params.dir
    named = [] if config.args_source != pytest.Config.ArgsSource.ARGS else config.args
    explicit = [(here / arg.split("::")[0]).resolve() for arg in named]
    trees = [(here / d).resolve() for d in config.getoption("runner_specs")]
    for tree in trees:
        if not tree.is_dir():
            raise pytest.UsageError(f"--runner-specs {tree}: expected a directory of experiment specs")
        if not any(tree.is_relative_to(p) for p in [*explicit, *(here / a for a in config.args)]):
            config.args.append(str(tree))  # collected as if named: the rest of the run stays as it was
    config.stash[ROOTS] = {"explicit": explicit, "trees": trees}


def _looks_like_spec(path: Path) -> bool:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return False
    return isinstance(document.get("name"), str) and any(t in document for t in SPEC_TABLES)


def is_collected(path: Path, roots: dict[str, list[Path]]) -> bool:
    """Named itself, under a --runner-specs tree, or directly in a named directory and spec-like."""
    if path.suffix != ".toml" or path.name == "pyproject.toml":
        return False
    path = path.resolve()
    if path in roots["explicit"] or any(path.is_relative_to(tree) for tree in roots["trees"]):
        return True
    return path.parent in roots["explicit"] and _looks_like_spec(path)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    roots = parent.config.stash.get(ROOTS, None)
    if roots is None or not is_collected(file_path, roots):
        return None
    return SpecFile.from_parent(parent, path=file_path)


class SpecFailed(AssertionError):
    """A spec item's failure: its message is the whole report (no traceback into runner)."""


def variant_id(group: str, name: str) -> str:
    """A sweep variant's item name: the spec's name with what differs in brackets (compare[float32])."""
    suffix = name[len(group) + 1 :] if name.startswith(f"{group}-") else name
    return f"{group}[{suffix}]"


class SpecFile(pytest.File):
    """One spec file: one item, or one per variant of its [sweep]."""

    def collect(self) -> list[SpecItem]:
        from runner.spec import SpecError, load_plan

        here = self.config.invocation_params.dir
        shown = self.path.relative_to(here) if self.path.is_relative_to(here) else self.path
        try:
            variants = load_plan(shown)
        except SpecError as exc:  # one readable message, as `runner validate` prints it
            raise self.CollectError(str(exc)) from None
        train_all = self.config.getoption("runner_train")
        items = []
        for variant in variants:
            name = variant_id(variant.group, variant.spec.name) if variant.settings else variant.spec.name
            item = SpecItem.from_parent(self, name=name, variant=variant)
            item.train = train_all or variant.spec.checks.run_in_tests
            item.add_marker("runner_spec")
            if item.train:
                item.add_marker("runner_train")
            items.append(item)
        return items


class SpecItem(pytest.Item):
    def __init__(self, *, variant: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.variant, self.train = variant, False

    def runtest(self) -> None:
        from runner.spec import BadInput

        try:
            self._train() if self.train else self._preflight()
        except BadInput as exc:  # data unavailable, a factory that does not import: the spec's fault
            raise SpecFailed(f"{self.variant.source}: {exc}") from None

    def _preflight(self) -> None:
        from runner.precision import checks
        from runner.preflight.check import check_experiment

        outcome = check_experiment(self.variant.spec, timing_steps=0)
        if any(map(checks.fails_a_test, outcome.findings)):
            raise SpecFailed(
                checks.describe_failures(outcome.findings, f"{self.variant.source}: runner check")
            )

    def _train(self) -> None:
        from runner.precision import checks
        from runner.session import run_experiment

        factory: pytest.TempPathFactory = self.config._tmp_path_factory  # type: ignore[attr-defined]
        outcome = run_experiment(self.variant.spec, factory.mktemp(self.variant.spec.name))
        self.user_properties.append(("run_dir", str(outcome.run_dir)))
        found = [checks.Finding(**f.model_dump()) for f in outcome.record.checks]
        failed = any(map(checks.fails_a_test, found))
        if outcome.status != "completed" or failed:
            error = outcome.record.error
            ended = f"the run ended {outcome.status}: {error}" if outcome.status != "completed" else ""
            described = (
                checks.describe_failures(found, f"{self.variant.source}: runner run") if failed else ""
            )
            raise SpecFailed("\n".join(filter(None, [ended, described, f"run directory: {outcome.run_dir}"])))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, SpecFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.name} ({'run' if self.train else 'runner check'})"
