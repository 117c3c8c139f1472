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
CORE = ("session", "sweeps", "record", "events", "loop", "telemetry", "callbacks", "checks", "precision")


def runner_imports(tree: ast.Module) -> set[str]:
    """The runner modules a module imports, at any depth (lazy imports inside functions count too)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "runner":
            parts = node.module.split(".")
            found |= {_known(parts[1:])} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {_known(a.name.split(".")[1:]) for a in node.names if a.name.startswith("runner.")}
    return found & set(MODULES)


def _known(parts: list[str]) -> str:
    """The module of MODULES an import names: testing.strategies itself, else its package."""
    dotted = ".".join(parts)
    return dotted if dotted in MODULES else parts[0]


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
        if name in {"compat", "fresh_reload"}:
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
    tree = MODULES["fresh_reload"]
    imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] == "runner"}
