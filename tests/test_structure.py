"""The house rules of DESIGN.md, checked on the source: imports point down (no circle), TensorFlow
only through compat, no rich in the core a worker or a notebook calls, functions a reader can hold."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "runner"


def module_name(path) -> str:
    """runner/session.py → "session", runner/testing/__init__.py → "testing", and so on."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): ast.parse(path.read_text(encoding="utf-8")) for path in PACKAGE.rglob("*.py")}
MAX_FUNCTION_LINES = 60
# What a worker process, a notebook or a cluster job calls: it must run without a terminal.
CORE = (
    "session",
    "sweeps",
    "reporting.record",
    "events",
    "training.loop",
    "training.telemetry",
    "training.callbacks",
    "precision.checks",
    "precision.policy",
)


def runner_imports(tree: ast.Module) -> set[str]:
    """The runner modules a module imports, at any depth (lazy imports inside functions count too):
    `from runner.data import shapes` is data.shapes, `from runner.data.shapes import load` too."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "runner":
            base = node.module.split(".")[1:]
            found |= {_known([*base, alias.name]) for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {_known(a.name.split(".")[1:]) for a in node.names if a.name.startswith("runner.")}
    return found & set(MODULES)


def _known(parts: list[str]) -> str:
    """The module of MODULES an import names: the longest dotted prefix that is one."""
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return ".".join(parts)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return [*path[path.index(dep) :], dep] if dep in path else [node, dep]
            if dep not in state and (cycle := visit(dep, [*path, dep])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_module_import_graph_has_no_cycle():
    graph = {name: runner_imports(tree) - {name} for name, tree in MODULES.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_find_cycle_finds_one():
    """The checker itself can fail: a → b → c → a is a cycle, a → b → c is not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("name", CORE)
def test_the_core_imports_no_rich(name):
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(MODULES[name])
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert "rich" not in imported


def test_the_library_entry_points_load_no_rich():
    code = "import sys, runner.session, runner.sweeps; print('rich' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "False", result.stderr


def long_functions(tree: ast.Module, limit: int) -> list[str]:
    return [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > limit
    ]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_function_is_longer_than_60_lines(name):
    assert long_functions(MODULES[name], MAX_FUNCTION_LINES) == []


def test_long_functions_are_found():
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    assert long_functions(ast.parse(f"def f():\n{body}\n"), MAX_FUNCTION_LINES) == ["f (62 lines)"]


def test_tensorflow_and_keras_are_imported_only_by_compat():
    for name, tree in MODULES.items():
        # fresh_reload.py is a user's process, run as a script with runner unimportable: it loads
        # exports with plain Keras, so it cannot go through compat (it never imports runner).
        if name in {"compat", "export.fresh_reload"}:
            continue
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] in {"tensorflow", "keras", "tf_keras"} for n in names), name


def test_the_reload_script_imports_no_runner():
    """It proves an export loads without runner: importing any of runner would void the proof."""
    tree = MODULES["export.fresh_reload"]
    imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] == "runner"}


# ---------------------------------------------------------------- the rooms (subpackages)

PACKAGES = sorted(path.parent.name for path in PACKAGE.glob("*/__init__.py"))


def room(module: str) -> str:
    """The room a module lives in: its subpackage, or itself for a module at the top of runner/."""
    return module.split(".")[0]


def room_imports(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Room → the other rooms its modules import."""
    graph: dict[str, set[str]] = {room(name): set() for name in modules}
    for name, tree in modules.items():
        graph[room(name)] |= {room(dep) for dep in runner_imports(tree)} - {room(name), ""}
    return graph


def declared_imports(package: str) -> set[str]:
    """The rooms a package's docstring says it may import (its `Imports:` line)."""
    doc = ast.get_docstring(MODULES[package]) or ""
    lines = [line for line in doc.splitlines() if line.startswith("Imports:")]
    assert len(lines) == 1, (
        f"runner/{package}/__init__.py: expected one 'Imports: a, b.' line in its docstring"
    )
    return {name.strip(" .") for name in lines[0].removeprefix("Imports:").split(",") if name.strip(" .")}


def test_the_rooms_import_graph_has_no_cycle():
    """Imports point down between rooms too: no package imports one that imports it back."""
    graph = room_imports(MODULES)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_a_room_cycle_is_found():
    """The room graph can fail: precision.policy → models and models → precision.checks is a circle
    of rooms (precision ↔ models) though no module imports itself back."""
    modules = {
        "precision.policy": ast.parse("from runner import models"),
        "precision.checks": ast.parse(""),
        "models": ast.parse("from runner.precision.checks import is_blocking"),
    }
    global MODULES
    saved, MODULES = MODULES, {**MODULES, **modules}
    try:
        graph = room_imports(modules)
    finally:
        MODULES = saved
    assert find_cycle(graph) in (["models", "precision", "models"], ["precision", "models", "precision"])


@pytest.mark.parametrize("package", PACKAGES)
def test_every_room_says_what_lives_there_and_imports_only_what_it_declares(package):
    """A newcomer finds the room for a change in one guess: the package's docstring names each of its
    modules (`name.py` or `name`) with what it owns, and lists the rooms it may import."""
    doc = ast.get_docstring(MODULES[package]) or ""
    modules = sorted(n.split(".")[1] for n in MODULES if room(n) == package and "." in n)
    unnamed = [m for m in modules if f"`{m}.py`" not in doc and f"`{m}`" not in doc]
    assert unnamed == [], f"runner/{package}/__init__.py does not say what {unnamed} hold"
    inside = {name: tree for name, tree in MODULES.items() if room(name) == package}
    imported = room_imports(inside)[package]
    assert imported <= declared_imports(package), (
        f"runner/{package} imports {imported - declared_imports(package)}"
    )


def private_imports(name: str, tree: ast.Module) -> list[str]:
    """Private names (`_x`) a module takes from another runner module: imported by name, or read as an
    attribute of a runner module it imported."""
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "runner":
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{node.module}.{alias.name}")
                if _known([*node.module.split(".")[1:], alias.name]) != name:
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_takes_another_modules_private_names(name):
    assert private_imports(name, MODULES[name]) == []


def test_private_imports_are_found():
    by_name = ast.parse("from runner.data.files import _stat")
    by_attribute = ast.parse("from runner.data import archives\narchives._complete(1)")
    assert private_imports("x", by_name) == ["runner.data.files._stat"]
    assert private_imports("x", by_attribute) == ["archives._complete"]


PUBLIC_API = (
    "from runner.session import RunOutcome, run_experiment, resume_experiment, check_experiment, "
    "export_experiment; from runner.sweeps import run_plan; from runner.testing import "
    "assert_mixed_precision_invariants, assert_resume_is_exact, resume_differences; "
    "import runner.pytest_plugin, runner.cli, runner.testing.strategies"
)


def test_the_public_api_keeps_its_import_paths():
    """What users import (README, docs/testing.md) loads from the paths it always had, whatever room
    its code lives in now."""
    result = subprocess.run(
        [sys.executable, "-c", PUBLIC_API], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
